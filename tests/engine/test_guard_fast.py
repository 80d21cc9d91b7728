"""The regression guard's faster measurements give the numbers and verdicts of the original ones.

The reference below is the guard's implementation before it was made faster (each measurement
took the RGB image and computed its own luma, ``estimate_noise_sigma`` copied the whole image
twice, percentiles and the gradient density went through full copies / float64). It lives only
here, as the yardstick: every measurement is compared on real photos (``../shared/images``,
skipped when absent) and on synthetic cases like test_guard.py's, and ``check`` must give the
same verdict and the same metrics (up to float rounding: the luma is bit for bit the same, the
gradient magnitude differs from ``np.hypot`` by at most an ulp).
"""
from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest

from engine.restore import classical
from engine.restore import guard as G
from engine.restore.classical import luminance, nlm_denoise, unsharp_mask
from tests.engine.test_guard import _photo  # (its synthetic photo)

# --------------------------------------------------------------------- the reference (old code)


def ref_estimate_noise_sigma(image: np.ndarray) -> float:
    img = image.astype(np.float32) * 255.0
    if img.ndim == 2:
        img = img[..., None]
    h, w = img.shape[:2]
    if h < 3 or w < 3:
        return 0.0
    y = luminance(img[..., :3]) if img.shape[2] >= 3 else img[..., 0]
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3)[1:-1, 1:-1]
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)[1:-1, 1:-1]
    g = np.hypot(gx, gy)
    keep = g <= np.percentile(g, 90)
    if keep.sum() < 16:
        keep = np.ones_like(keep)
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    sigmas = []
    for c in range(min(3, img.shape[2])):
        ch = np.ascontiguousarray(img[..., c])
        resp = np.abs(cv2.filter2D(ch, cv2.CV_32F, k, borderType=cv2.BORDER_REFLECT))
        sigmas.append(math.sqrt(math.pi / 2.0) * float(resp[1:-1, 1:-1][keep].mean()) / 6.0)
    return float(np.mean(sigmas))


def ref_blockiness(image: np.ndarray) -> float:
    y = luminance(image) * 255.0
    h, w = y.shape
    min_side = 8 * G.BLOCKINESS_MIN_BLOCKS

    def ratio(profile):
        phases = [float(np.median(profile[p::8])) for p in range(8)]
        inside = float(np.median(phases[:7]))
        return (phases[7] + 0.05) / (inside + 0.05)

    ratios = []
    if w >= min_side:
        ratios.append(ratio(np.abs(np.diff(y, axis=1)).mean(axis=0)))
    if h >= min_side:
        ratios.append(ratio(np.abs(np.diff(y, axis=0)).mean(axis=1)))
    return float(np.mean(ratios)) if ratios else 1.0


def ref_sharpness(image: np.ndarray) -> float:
    y = luminance(image) * 255.0
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)
    return float(np.percentile(np.hypot(gx, gy), 99))


def ref_overshoot(before, after, radius=G.RING_RADIUS, weight=None):
    yb, ya = luminance(before), luminance(after)
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    hi, lo = cv2.dilate(yb, k), cv2.erode(yb, k)
    ex = np.maximum(ya - hi, 0.0) + np.maximum(lo - ya, 0.0)
    rng = hi - lo
    if weight is not None and weight.sum() > 0:
        ex, rng = ex[weight > 0], rng[weight > 0]
    mean_ex = float(ex.mean())
    return mean_ex * 255.0, mean_ex / max(float(rng.mean()), 1e-3)


def ref_gradient_density(image, weight=None):
    y = luminance(image)
    g = np.hypot(np.diff(y, axis=1)[:-1], np.diff(y, axis=0)[:, :-1])
    if weight is not None and weight.sum() > 0:
        g = g[weight[:-1, :-1] > 0]
    l2 = float(np.sqrt((g.astype(np.float64) ** 2).mean()))
    return float(g.mean()) / l2 if l2 > 1e-9 else 0.0


def ref_tone_levels(image) -> int:
    y = np.clip(np.round(luminance(image) * 255.0), 0, 255).astype(np.int64)
    counts = np.bincount(y.ravel(), minlength=256)
    return int((counts >= max(1.0, 0.0002 * y.size)).sum())


def ref_check(before, after, mask=None):
    """The old ``check``: the same decisions, with the old measurements (each given the luma
    ``check`` now passes computes the same luma again from it: ``luminance`` of a 2-D image
    is that image) and the old full clip of the result."""
    mp = pytest.MonkeyPatch()
    try:
        # (the guard hands its cancel check to these two now: the old ones took none)
        mp.setattr(G, "estimate_noise_sigma",
                   lambda img, check=None: ref_estimate_noise_sigma(img))
        mp.setattr(G, "blockiness", ref_blockiness)
        mp.setattr(G, "sharpness", ref_sharpness)
        mp.setattr(G, "overshoot", lambda b, a, radius, weight=None, check=None:
                   ref_overshoot(b, a, radius, weight))
        mp.setattr(G, "gradient_density", ref_gradient_density)
        mp.setattr(G, "tone_levels", ref_tone_levels)
        mp.setattr(G, "_clipped_at", lambda img, size: np.clip(G._resize(img, size), 0, 1))
        return G.check(before, after, mask=mask)
    finally:
        mp.undo()


# --------------------------------------------------------------------- comparisons

REL = 1e-6
# decimals check() rounds each metric to: a float-rounding difference may move the last one
_DECIMALS = {"overshoot_rel": 4, "density_before": 4, "density_after": 4, "std_before": 4,
             "std_after": 4, "mean_before": 4, "mean_after": 4, "mean_shift": 4,
             "ssim_small": 4}


def _close(a: float, b: float, tol: float = REL) -> bool:
    return abs(a - b) <= tol * max(abs(a), abs(b), 1e-3)


def assert_same_verdict(before, after, mask=None):
    new, old = G.check(before, after, mask=mask), ref_check(before, after, mask=mask)
    assert (new.ok, new.reason) == (old.ok, old.reason), (new, old)
    assert new.metrics.keys() == old.metrics.keys()
    for k, v in old.metrics.items():
        if isinstance(v, int):
            assert new.metrics[k] == v, k
        else:
            unit = 10.0 ** -_DECIMALS.get(k, 3)
            assert abs(new.metrics[k] - v) <= unit * 1.001, (k, new.metrics[k], v)
    return new


def assert_same_measurements(before, after, weight=None):
    after = np.clip(after, 0, 1).astype(np.float32)
    for img in (before, after):
        y = G.luma(img)
        assert np.array_equal(y, luminance(img))  # bit for bit
        assert classical.estimate_noise_sigma(img) == ref_estimate_noise_sigma(img)
        assert G.blockiness(y) == ref_blockiness(img)
        assert _close(G.sharpness(y), ref_sharpness(img))
        assert G.tone_levels(y) == ref_tone_levels(img)
        assert _close(G.gradient_density(y, weight), ref_gradient_density(img, weight))
    ov, rel = G.overshoot(G.luma(before), G.luma(after), G.RING_RADIUS, weight)
    ov0, rel0 = ref_overshoot(before, after, G.RING_RADIUS, weight)
    assert (ov, rel) == (ov0, rel0)


def _results(img: np.ndarray) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    noisy = img + rng.normal(0, 12 / 255, img.shape).astype(np.float32)
    return [
        ("identity", img),
        ("mild sharpen", unsharp_mask(img, 0.4, 1.5)),
        ("strong sharpen", unsharp_mask(img, 2.5, 1.0)),
        ("denoise", nlm_denoise(img, 10.0)),
        ("blur", cv2.GaussianBlur(img, (0, 0), 3)),
        ("added noise, unclipped", noisy),  # the result is clipped by check, not the caller
        ("posterised", np.round(img * 3) / 3),
        ("x2 upscale", cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)),
        ("brightened, out of range", img * 1.3 - 0.05),
    ]


_PHOTOS = ["clean/scikit-image__skimage__data__astronaut.png",
           "camera_jpeg_exif/exif-samples__jpg__Canon_40D.jpg",
           "lowres_noise_jpeg/NAFNet__demo__noisy.png",
           "motion_blur/DeepDeblur_release__images__Flower_blur1.png",
           "defocus_blur/Restormer__demo__degraded__couple.jpg",
           "faces/CodeFormer__inputs__cropped_faces__0345.png",
           "text_degraded/MARCONet__Testsets__LQs__real_lq01.png"]


def _load(shared_images, rel: str, side: int = 900) -> np.ndarray:
    from engine.imageio import load_photo

    p = shared_images / rel
    if not p.is_file():
        pytest.skip(f"{rel} is not in the shared photos")
    img = load_photo(p).pixels
    h, w = img.shape[:2]
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)  # a real crop, no resampling
    return np.ascontiguousarray(img[y0:y0 + side, x0:x0 + side])


@pytest.mark.parametrize("rel", _PHOTOS)
def test_same_measurements_and_verdicts_on_real_photos(shared_images, rel):
    img = _load(shared_images, rel)
    for name, after in _results(img):
        after = after.astype(np.float32)
        if after.shape == img.shape:
            assert_same_measurements(img, after)
        assert_same_verdict(img, after)


def test_same_verdict_with_a_mask_on_a_real_photo(shared_images):
    img = _load(shared_images, _PHOTOS[0], 512)
    after = img.copy()
    after[100:300, 120:400] = after[100:300, 120:400][::-1, ::-1]
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[100:300, 120:400] = 255
    weight = np.ones(img.shape[:2], np.float32)
    weight[60:340, 80:440] = 0
    assert_same_measurements(img, after, weight)
    assert assert_same_verdict(img, after, mask=mask).ok


def test_same_measurements_and_verdicts_on_the_guard_tests_cases():
    import io

    from PIL import Image

    for shape in ((160, 200), (256, 256), (44, 40)):
        clean = _photo(*shape)
        rng = np.random.default_rng(1)
        noisy = np.clip(clean + rng.normal(0, 8 / 255, clean.shape), 0, 1).astype(np.float32)
        buf = io.BytesIO()
        Image.fromarray((clean * 255).astype(np.uint8)).save(buf, "JPEG", quality=10)
        blocky = np.asarray(Image.open(buf)).astype(np.float32) / 255
        cases = [(clean, clean), (noisy, nlm_denoise(noisy, 8.0)), (clean, blocky),
                 (clean, cv2.GaussianBlur(clean, (0, 0), 3)), (clean, noisy),
                 (clean, clean[:, ::-1].copy()), (clean, np.zeros_like(clean)),
                 (clean, np.full_like(clean, 0.5)), (clean, clean * 0.98),
                 (clean, cv2.resize(clean, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC))]
        for before, after in cases:
            if after.shape == before.shape:
                assert_same_measurements(before, after)
            assert_same_verdict(before, after)
    grey = _photo()[..., 0]
    assert classical.estimate_noise_sigma(grey) == ref_estimate_noise_sigma(grey)
    f64 = _photo().astype(np.float64)  # deblur may hand over float64
    assert classical.estimate_noise_sigma(f64) == ref_estimate_noise_sigma(f64)
    assert classical.estimate_noise_sigma(np.zeros((2, 5, 3), np.float32)) == 0.0


def test_percentile_is_numpys():
    rng = np.random.default_rng(1)
    for i in range(300):
        h, w = int(rng.integers(1, 700)), int(rng.integers(1, 700))
        x = (rng.random((h, w)) ** rng.choice([1, 3, 8]) * rng.choice([1, 255])).astype(
            np.float32)
        if i % 3 == 0:
            x = np.round(x * 4) / 4  # many ties
        if i % 5 == 0:
            x = x[1:-1, 1:-1]  # not contiguous, as in estimate_noise_sigma
        if x.size == 0:
            continue
        for q in (0, 1, 50, 90, 99, 100):
            assert classical.percentile(x, q) == float(np.percentile(x, q)), (x.shape, q)


def test_the_guard_looks_at_a_cancel_throughout_a_large_photo(monkeypatch):
    """A cancel during the guard of a 64.5-megapixel photo waited 5.6 s: its two noise
    readings went 6.2 s without a look at the job's cancel, each luma and the overshoot
    ~1 s. Now they look between their stages and the lumas are made in bands (of 2^18 px
    here, to show on a 3-megapixel photo what 2^22 do on a large one): no stretch without a
    look is a quarter of the check (half of it before). The banded luma is the same numbers."""
    rng = np.random.default_rng(0)
    h, w = 1500, 2000
    small = cv2.GaussianBlur(rng.random((h // 8, w // 8, 3)).astype(np.float32), (0, 0), 2)
    before = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    before = np.clip(0.2 + 0.6 * (before - before.min()) / np.ptp(before)
                     + rng.normal(0, 0.01, before.shape), 0, 1).astype(np.float32)
    after = np.clip(before + 0.3 * (before - cv2.GaussianBlur(before, (0, 0), 1.5)), 0,
                    1).astype(np.float32)
    monkeypatch.setattr(G, "_LUMA_BAND", 1 << 18, raising=False)
    times: list[float] = []
    shares = []
    for _ in range(3):  # (the first warms up; the best of the other two counts)
        times.clear()
        t0 = time.perf_counter()
        verdict = G.check(before, after, cancel_check=lambda: times.append(time.perf_counter()))
        t1 = time.perf_counter()
        assert verdict.ok
        shares.append(float(np.diff([t0, *times, t1]).max()) / (t1 - t0))
    assert min(shares[1:]) < 0.25, shares
    looks: list[int] = []
    assert np.array_equal(G.luma(before, lambda: looks.append(1)), G.luma(before))
    assert len(looks) >= h * w // (1 << 18)
