from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import ModelMissing
from engine.models.store import ModelFileCorrupt, ModelStore
from tests.model_helpers import install_test_model, make_runtime

torch.set_num_threads(1)


def _save_compact(path, scale=4):
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=scale)
    torch.save({"params": net.state_dict()}, path)
    return net


def _save_rrdb(path, scale=4):
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    torch.save({"params_ema": net.state_dict()}, path)
    return net


def test_tiny_compact_loads_through_store_and_runtime(tmp_path):
    src = tmp_path / "realesr-general-x4v3.pth"
    net = _save_compact(src)
    store = install_test_model(tmp_path / "store", "realesr-general-x4v3",
                               {"realesr-general-x4v3.pth": src})
    rt = make_runtime(store)
    assert rt.is_available("realesr-general-x4v3")
    assert not rt.is_available("realesrgan-x4plus")
    assert rt.file("realesr-general-x4v3").name == "realesr-general-x4v3.pth"
    desc = rt.load_image_model("realesr-general-x4v3")
    assert desc.scale == 4
    assert not desc.model.training
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        y = desc(x)
        ref = net.eval()(x).clamp(0, 1)  # spandrel descriptors clamp to [0, 1]
    assert y.shape == (1, 3, 32, 32)
    torch.testing.assert_close(y, ref)
    # cached: the same object comes back
    assert rt.load_image_model("realesr-general-x4v3") is desc


def test_tiny_rrdb_params_ema_loads(tmp_path):
    src = tmp_path / "RealESRGAN_x4plus.pth"
    _save_rrdb(src)
    store = install_test_model(tmp_path / "store", "realesrgan-x4plus",
                               {"RealESRGAN_x4plus.pth": src})
    desc = make_runtime(store).load_image_model("realesrgan-x4plus")
    assert desc.architecture.name == "ESRGAN"
    assert desc.scale == 4
    out = desc(torch.rand(1, 3, 6, 6))
    assert out.shape == (1, 3, 24, 24)
    assert np.isfinite(out.detach().numpy()).all()


def test_missing_model_raises_model_missing(tmp_path):
    rt = make_runtime(ModelStore(tmp_path))
    with pytest.raises(ModelMissing):
        rt.path("big-lama")
    with pytest.raises(ModelMissing):
        rt.load_image_model("realesrgan-x4plus")


def test_corrupted_after_verify_is_caught_at_load(tmp_path):
    src = tmp_path / "realesr-general-x4v3.pth"
    _save_compact(src)
    store = install_test_model(tmp_path / "store", "realesr-general-x4v3",
                               {"realesr-general-x4v3.pth": src})
    f = store.file_path("realesr-general-x4v3", "realesr-general-x4v3.pth")
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))  # same size, new mtime
    rt = make_runtime(store)
    with pytest.raises(ModelFileCorrupt) as ei:
        rt.load_image_model("realesr-general-x4v3")
    assert "mend models verify realesr-general-x4v3 --repair" in str(ei.value)
    assert store.status("realesr-general-x4v3") == "corrupt"
