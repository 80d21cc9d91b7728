from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engine.api import Degradation, Diagnosis
from engine.devices import select_device
from engine.errors import Cancelled, ModelMissing
from engine.models.store import ModelStore
from engine.progress import Progress
from engine.restore.deblur import motion_psf
from engine.restore.registry import StepContext, get_step
from tests.model_helpers import install_test_model, make_runtime

torch.set_num_threads(1)


def _ctx(runtime=None, diagnosis=None, progress=None, tile=64):
    return StepContext(device=select_device("cpu"), progress=progress or Progress(),
                       runtime=runtime, diagnosis=diagnosis, tile_size=tile)


def _diag(**est):
    return Diagnosis(Degradation.C, {"A": 0, "B": 0, "C": 1.0, "D": 0}, estimates=est)


def _scene(h=128, w=160, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 0.5, np.float32)
    for _ in range(25):
        y0, x0 = rng.integers(0, h - 12), rng.integers(0, w - 12)
        hh, ww = rng.integers(4, 24), rng.integers(4, 24)
        img[y0:y0 + hh, x0:x0 + ww] = rng.uniform(0.05, 0.95, 3)
    return cv2.GaussianBlur(img, (0, 0), 0.7)


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a - b) ** 2))


def test_motion_psf_is_normalised_and_oriented():
    k0 = motion_psf(9, 0)
    k90 = motion_psf(9, 90)
    assert k0.sum() == pytest.approx(1.0, abs=1e-5)
    c = k0.shape[0] // 2
    assert k0[c].sum() > 0.95  # horizontal: one row
    assert k90[:, c].sum() > 0.95  # vertical: one column
    k45 = motion_psf(9, 45)  # counter-clockwise on screen: up-right to down-left
    assert k45[:c, c + 1:].sum() > 0.3 and k45[:c, :c].sum() < 0.01


@pytest.mark.parametrize("length,angle", [(11.0, 0.0), (15.0, 120.0)])
def test_deblur_builtin_improves_psnr_with_known_kernel(length, angle):
    sharp = _scene()
    blurred = cv2.filter2D(sharp, -1, motion_psf(length, angle), borderType=cv2.BORDER_REFLECT)
    rng = np.random.default_rng(1)
    blurred = np.clip(blurred + rng.normal(0, 1 / 255, blurred.shape), 0, 1).astype(np.float32)
    out = get_step("deblur_builtin").fn(
        blurred, {}, _ctx(diagnosis=_diag(blur_length=length, blur_angle=angle, noise_sigma=1.0)))
    assert out.model == "builtin:wiener"
    gain = _psnr(out.image, sharp) - _psnr(blurred, sharp)
    assert gain > 2.0, f"PSNR gain {gain:.2f} dB"
    # edge taper: no wrap-around ringing along the borders
    border = np.ones(sharp.shape[:2], bool)
    border[12:-12, 12:-12] = False
    assert np.mean((out.image - sharp)[border] ** 2) < 1.5 * np.mean(
        (blurred - sharp)[border] ** 2)


def test_deblur_builtin_does_nothing_without_a_measurable_blur():
    img = _scene()
    for diag in (_diag(blur_length=1.5, blur_angle=0.0), _diag(), None):
        out = get_step("deblur_builtin").fn(img, {}, _ctx(diagnosis=diag))
        assert out.image is img
        assert out.notes.startswith("skipped")


def _tiny_nafnet(path):
    from spandrel.architectures.NAFNet import NAFNet

    torch.manual_seed(0)
    net = NAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1],
                 dec_blk_nums=[1, 1])
    torch.save({"params": net.state_dict()}, path)
    return net


def test_deblur_nafnet_runs_tiled_through_the_store(tmp_path):
    src = tmp_path / "NAFNet-GoPro-width64.pth"
    net = _tiny_nafnet(src).eval()
    store = install_test_model(tmp_path / "store", "nafnet-gopro-w64",
                               {"NAFNet-GoPro-width64.pth": src})
    rt = make_runtime(store)
    img = _scene(100, 150)
    msgs = []
    prog = Progress(lambda f, m: msgs.append(m))
    out = get_step("deblur_nafnet").fn(img, {}, _ctx(rt, progress=prog, tile=64))
    assert out.model == "nafnet-gopro-w64"
    assert out.image.shape == img.shape and np.isfinite(out.image).all()
    tiles = [m for m in msgs if m.startswith("tile ")]
    n = int(tiles[-1].split("/")[1])
    assert n > 1 and tiles[-1] == f"tile {n}/{n}", msgs
    # tiles agree with the whole-image network away from tile borders
    with torch.no_grad():
        x = torch.from_numpy(np.pad(img, ((0, 12), (0, 10), (0, 0)), mode="reflect")
                             .transpose(2, 0, 1))[None]
        ref = net(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()[:100, :150]
    assert np.abs(out.image - ref)[:20, :20].max() < 0.05


def test_deblur_nafnet_missing_model_and_cancel(tmp_path):
    img = _scene(64, 64)
    with pytest.raises(ModelMissing):
        get_step("deblur_nafnet").fn(img, {}, _ctx(make_runtime(ModelStore(tmp_path / "empty"))))
    src = tmp_path / "NAFNet-GoPro-width64.pth"
    _tiny_nafnet(src)
    rt = make_runtime(install_test_model(tmp_path / "store", "nafnet-gopro-w64",
                                         {"NAFNet-GoPro-width64.pth": src}))
    p = Progress()
    p.token.cancel()
    with pytest.raises(Cancelled):
        get_step("deblur_nafnet").fn(img, {}, _ctx(rt, progress=p))


def test_deblur_builtin_does_not_lower_psnr_on_real_gopro_blur(shared_images):
    """Real camera shake (GoPro 'Flower', sharp frame as ground truth) is not a line blur: the
    analyzer's estimate sits at its 3.7 px floor, so the step sharpens mildly instead of
    deconvolving. Measured: 25.11 dB blurred, 23.83 dB with the old Wiener, 25.20 dB now."""
    from engine.imageio import load_photo
    from engine.restore.guard import check

    d = shared_images / "motion_blur"
    blur_p, sharp_p = (d / "DeepDeblur_release__images__Flower_blur1.png",
                       d / "DeepDeblur_release__images__Flower_sharp1.png")
    if not (blur_p.is_file() and sharp_p.is_file()):
        pytest.skip("the GoPro Flower pair is not in the shared photos")
    blur, sharp = load_photo(blur_p).pixels, load_photo(sharp_p).pixels
    # the analyzer's reading of this photo (engine.understand.measure): floor length
    diag = _diag(blur_length=3.7, blur_angle=110.0, motion_evidence=10.36, noise_sigma=0.68)
    out = get_step("deblur_builtin").fn(blur, {"length": 3.7, "angle": 110.0}, _ctx(
        diagnosis=diag))
    assert out.notes.startswith("no deconvolution"), out.notes
    assert _psnr(out.image, sharp) >= _psnr(blur, sharp)
    assert check(blur, out.image).ok


def test_deblur_builtin_trusts_only_confident_estimates():
    sharp = _scene()
    blurred = cv2.filter2D(sharp, -1, motion_psf(11.0, 0.0), borderType=cv2.BORDER_REFLECT)
    step = get_step("deblur_builtin").fn
    # weak cepstral evidence for a short length: no deconvolution
    out = step(blurred, {}, _ctx(diagnosis=_diag(blur_length=5.2, blur_angle=0.0,
                                                 motion_evidence=7.0)))
    assert out.notes.startswith("no deconvolution") and "weak evidence" in out.notes
    # a length the user typed (not the measured one) is taken as given
    out = step(blurred, {"length": 11.0, "angle": 0.0},
               _ctx(diagnosis=_diag(blur_length=3.7, blur_angle=0.0, motion_evidence=5.0)))
    assert out.notes.startswith("kernel 11.0 px")
    assert _psnr(out.image, sharp) > _psnr(blurred, sharp) + 2.0
    # strength blends with the input
    half = step(blurred, {"length": 11.0, "angle": 0.0, "strength": 0.5}, _ctx())
    assert np.allclose(half.image, blurred + 0.5 * (out.image - blurred), atol=2e-3)
