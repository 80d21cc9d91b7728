"""sr_realesrgan through the real store + runtime with tiny random models saved in the release
layouts (params_ema for RRDB x4plus, params for the Compact general-x4v3); upscale_builtin."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engine.devices import select_device
from engine.errors import Cancelled, ModelMissing, UsageError
from engine.progress import CancelToken, Progress
from engine.restore.registry import StepContext, get_step
from tests.model_helpers import install_test_model, make_runtime

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sr_store(tmp_path_factory):
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    root = tmp_path_factory.mktemp("sr")
    torch.manual_seed(0)
    rrdb = ESRGAN(num_filters=16, num_blocks=1, scale=4)  # the x4plus architecture, tiny
    compact = Compact(num_feat=16, num_conv=4, upscale=4)  # general-x4v3's, tiny
    # release key names: basicsr's RRDBNet (conv_first, body.N.rdbM...) under params_ema
    from spandrel import ModelLoader

    rrdb_sd = rrdb.state_dict()
    assert ModelLoader().load_from_state_dict(rrdb_sd).architecture.name == "ESRGAN"
    torch.save({"params_ema": rrdb_sd}, root / "RealESRGAN_x4plus.pth")
    torch.save({"params": compact.state_dict()}, root / "realesr-general-x4v3.pth")
    store = install_test_model(root / "store", "realesrgan-x4plus",
                               {"RealESRGAN_x4plus.pth": root / "RealESRGAN_x4plus.pth"})
    store = install_test_model(root / "store", "realesr-general-x4v3",
                               {"realesr-general-x4v3.pth": root / "realesr-general-x4v3.pth"},
                               store=store)
    return store


def _ctx(store, progress=None, tile=48):
    return StepContext(device=select_device("cpu"), progress=progress or Progress(),
                       runtime=make_runtime(store), tile_size=tile)


@pytest.mark.parametrize("model", ["realesr-general-x4v3", "realesrgan-x4plus"])
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_sr_realesrgan_scales(sr_store, model, scale):
    img = np.random.default_rng(0).random((37, 61, 3), dtype=np.float32)
    out = get_step("sr_realesrgan").fn(img, {"model": model, "scale": scale}, _ctx(sr_store))
    assert out.model == model
    assert out.image.shape == (37 * scale, 61 * scale, 3)
    assert out.image.dtype == np.float32
    assert 0.0 <= out.image.min() and out.image.max() <= 1.0


def test_scale_1_is_x4_then_area_downscale(sr_store):
    """Restore at the same size = the x4 result brought back with area averaging (per tile)."""
    img = np.random.default_rng(1).random((40, 52, 3), dtype=np.float32)
    ctx = _ctx(sr_store, tile=256)  # one tile: compare with the whole-image computation
    out1 = get_step("sr_realesrgan").fn(img, {"model": "realesr-general-x4v3", "scale": 1}, ctx)
    desc = ctx.runtime.load_image_model("realesr-general-x4v3")
    with torch.inference_mode():
        x4 = desc(torch.from_numpy(img.transpose(2, 0, 1).copy())[None])
    x4 = x4.clamp(0, 1)[0].permute(1, 2, 0).numpy()
    ref = cv2.resize(x4, (52, 40), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(out1.image, ref, atol=1e-5)
    # tiled (3 x 3 tiles of 24 px) stays close to it
    tiled = get_step("sr_realesrgan").fn(img, {"model": "realesr-general-x4v3", "scale": 1},
                                         _ctx(sr_store, tile=24)).image
    assert np.abs(tiled - ref).mean() < 5e-3


def test_sr_realesrgan_cancel_and_errors(sr_store, tmp_path, monkeypatch):
    img = np.random.default_rng(2).random((64, 64, 3), dtype=np.float32)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        get_step("sr_realesrgan").fn(img, {}, _ctx(sr_store, Progress(token=token), tile=32))
    with pytest.raises(UsageError):
        get_step("sr_realesrgan").fn(img, {"scale": 3}, _ctx(sr_store))
    with pytest.raises(UsageError):
        get_step("sr_realesrgan").fn(img, {"model": "nope"}, _ctx(sr_store))
    from engine.models.store import ModelStore

    empty = ModelStore(tmp_path / "empty")
    with pytest.raises(ModelMissing):
        get_step("sr_realesrgan").fn(img, {"model": "realesrgan-x4plus"}, _ctx(empty))


def test_upscale_builtin(sr_store):
    noise = np.random.default_rng(3).random((20, 30, 3), dtype=np.float32)
    img = cv2.GaussianBlur(noise, (0, 0), 1.5)  # photo-like (smooth), not white noise
    step = get_step("upscale_builtin")
    assert step.models == ()
    for scale, method in ((2, "lanczos"), (4, "cubic")):
        out = step.fn(img, {"scale": scale, "method": method}, _ctx(sr_store))
        assert out.image.shape == (20 * scale, 30 * scale, 3)
        assert out.model == f"builtin:{method}"
        assert 0 <= out.image.min() and out.image.max() <= 1
        # area-downscaling the upscaled image gives back (about) the original
        back = cv2.resize(out.image, (30, 20), interpolation=cv2.INTER_AREA)
        assert np.abs(back - img).mean() < 0.01
    same = step.fn(img, {"scale": 1}, _ctx(sr_store))
    assert same.image is img
    with pytest.raises(UsageError):
        step.fn(img, {"method": "sinc"}, _ctx(sr_store))


def test_sr_tiles_are_balanced(sr_store, monkeypatch):
    """The step asks for equal tiles just big enough (same model calls, fewer pixels than
    full-size tiles spread evenly): 100 px in 48 px tiles with 16 of overlap -> 3 tiles of
    44 px a side instead of 3 of 48 (16 % fewer pixels), and the result stays seamless."""
    from engine import tiling

    seen = []
    real_torch_fn = tiling.torch_fn

    def recording_torch_fn(*a, **kw):
        fn = real_torch_fn(*a, **kw)

        def rec(t):
            seen.append(t.shape[:2])
            return fn(t)

        return rec

    monkeypatch.setattr("engine.restore.sr.torch_fn", recording_torch_fn)
    img = np.full((100, 100, 3), 0.4, np.float32)
    img[:, 50:] = 0.6
    params = {"model": "realesr-general-x4v3", "scale": 4}
    out = get_step("sr_realesrgan").fn(img, params, _ctx(sr_store, tile=48)).image
    assert seen == [(44, 44)] * 9
    ctx = _ctx(sr_store, tile=256)
    whole = get_step("sr_realesrgan").fn(img, params, ctx).image
    assert np.abs(out - whole).max() < 2e-2
