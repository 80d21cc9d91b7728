from __future__ import annotations

import cv2
import numpy as np

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
