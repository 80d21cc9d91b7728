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
    assert "mend models pull realesr-general-x4v3" in str(ei.value)
    assert store.status("realesr-general-x4v3") == "corrupt"
    # a touched but unchanged file passes (re-hashed once, then cheap again)
    import os

    store.verify("realesr-general-x4v3", repair=False)
    f.write_bytes(src.read_bytes())
    os.utime(f, ns=(1, 1))
    assert rt.path("realesr-general-x4v3") == store.root / "realesr-general-x4v3"


def test_lru_evicts_least_recently_used_within_budget(tmp_path):
    rt = make_runtime(ModelStore(tmp_path), budget=1000)
    built = []

    def factory(name):
        def f():
            built.append(name)
            return object()
        return f

    a = rt.cached("a", factory("a"), 400)
    rt.cached("b", factory("b"), 400)
    assert rt.cached("a", factory("a"), 400) is a  # hit, and now most recent
    rt.cached("c", factory("c"), 400)  # 1200 > 1000: evict the LRU one, "b"
    assert rt.cached_keys() == ["a", "c"]
    assert rt.cached_bytes == 800
    rt.cached("b", factory("b"), 400)
    assert built == ["a", "b", "c", "b"]
    assert "a" not in rt.cached_keys()
    rt.clear()
    assert rt.cached_keys() == [] and rt.cached_bytes == 0


def test_loaded_image_models_counted_by_parameter_bytes(tmp_path):
    src1 = tmp_path / "realesr-general-x4v3.pth"
    _save_compact(src1)
    src2 = tmp_path / "RealESRGAN_x4plus.pth"
    _save_rrdb(src2)
    st = install_test_model(tmp_path / "s", "realesr-general-x4v3",
                            {"realesr-general-x4v3.pth": src1})
    st = install_test_model(tmp_path / "s", "realesrgan-x4plus", {"RealESRGAN_x4plus.pth": src2},
                            store=st)
    from engine.models.loader import param_bytes

    probe = make_runtime(st)
    b1 = param_bytes(probe.load_image_model("realesr-general-x4v3"))
    b2 = param_bytes(probe.load_image_model("realesrgan-x4plus"))
    assert probe.cached_bytes == b1 + b2
    rt = make_runtime(st, budget=max(b1, b2) + 1)  # room for one at a time
    rt.load_image_model("realesr-general-x4v3")
    rt.load_image_model("realesrgan-x4plus")
    assert [k[1] for k in rt.cached_keys()] == ["realesrgan-x4plus"]


def test_torchscript_pt_goes_through_jit(tmp_path):
    # big-lama ships as TorchScript .pt: the loader must jit-load it, not unpickle it
    from spandrel.architectures.Compact import Compact

    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).eval()
    src = tmp_path / "model.pt"
    torch.jit.trace(net, torch.rand(1, 3, 8, 8)).save(str(src))
    from engine.models.loader import load_spandrel

    desc = load_spandrel(src)
    assert desc.scale == 2
    x = torch.rand(1, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(desc(x), net(x).clamp(0, 1))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickles_with_code_are_refused(tmp_path):
    from engine.models.loader import UnsupportedModel, load_spandrel, load_state_dict

    p = tmp_path / "evil.pth"
    torch.save({"params": {"w": torch.zeros(1)}, "x": _Evil()}, p)
    with pytest.raises(UnsupportedModel):
        load_state_dict(p)
    with pytest.raises(UnsupportedModel):
        load_spandrel(p)


def test_raw_state_dicts_safetensors_and_pth(tmp_path):
    from safetensors.torch import save_file

    from engine.models.loader import UnsupportedModel, load_state_dict

    sd = {"a.weight": torch.arange(6.0).reshape(2, 3)}
    save_file(sd, tmp_path / "w.safetensors")
    torch.save(sd, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        torch.testing.assert_close(load_state_dict(tmp_path / name)["a.weight"], sd["a.weight"])
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(UnsupportedModel):
        load_state_dict(tmp_path / "w.txt")
    # through the runtime, for a torch-state-dict model
    st = install_test_model(tmp_path / "s", "invsr-noise-predictor-v5",
                            {"noise_predictor_sd_turbo_v5.pth": tmp_path / "w.pth"})
    got = make_runtime(st).load_state_dict("invsr-noise-predictor-v5")
    torch.testing.assert_close(got["a.weight"], sd["a.weight"])


def test_extra_arches_register_codeformer_once():
    from spandrel import MAIN_REGISTRY

    from engine.models.loader import install_extra_arches

    assert install_extra_arches() is True
    assert install_extra_arches() is True  # idempotent
    assert MAIN_REGISTRY.get("CodeFormer") is not None


def test_non_image_model_is_refused_by_load_image_model(tmp_path):
    rt = make_runtime(ModelStore(tmp_path))
    from engine.errors import UsageError

    with pytest.raises(UsageError):
        rt.load_image_model("sam-vit-base")
