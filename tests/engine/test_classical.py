from __future__ import annotations

import numpy as np
import pytest

from engine.api import Degradation, Diagnosis
from engine.devices import select_device
from engine.errors import Cancelled
from engine.progress import Progress
from engine.restore.classical import estimate_noise_sigma
from engine.restore.registry import StepContext, get_step


def _ctx(diagnosis=None, progress=None):
    return StepContext(device=select_device("cpu"), progress=progress or Progress(), runtime=None,
                       diagnosis=diagnosis, tile_size=64)


def _scene(h=96, w=128, seed=0):
    """A clean synthetic photo: smooth gradients, flat patches and hard edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.3 + 0.4 * xx / w, 0.5 + 0.2 * np.sin(yy / 9), 0.4 + 0.3 * yy / h], -1)
    for _ in range(6):
        y0, x0 = rng.integers(0, h - 20), rng.integers(0, w - 20)
        img[y0:y0 + 18, x0:x0 + 18] = rng.uniform(0.05, 0.95, 3)
    return img.astype(np.float32)


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a - b) ** 2))


def _diag(**est):
    return Diagnosis(Degradation.A, {"A": 1.0, "B": 0, "C": 0, "D": 0}, estimates=est)


def test_noise_sigma_estimate_matches_synthetic_noise():
    rng = np.random.default_rng(1)
    flat = np.full((128, 128, 3), 0.5, np.float32)
    for sigma in (5.0, 10.0, 20.0):
        noisy = flat + rng.normal(0, sigma / 255, flat.shape).astype(np.float32)
        assert estimate_noise_sigma(noisy) == pytest.approx(sigma, rel=0.1)


def test_denoise_builtin_improves_psnr_and_is_labelled():
    clean = _scene()
    rng = np.random.default_rng(2)
    noisy = np.clip(clean + rng.normal(0, 12 / 255, clean.shape), 0, 1).astype(np.float32)
    out = get_step("denoise_builtin").fn(noisy, {"strength": 1.0}, _ctx(_diag(noise_sigma=12.0)))
    assert out.model == "builtin:nlm"
    assert "sigma 12.0 (diagnosis)" in out.notes
    assert out.image.shape == noisy.shape and out.image.dtype == np.float32
    gain = _psnr(out.image, clean) - _psnr(noisy, clean)
    assert gain > 3.0, gain


def test_denoise_builtin_skips_clean_photos():
    clean = _scene()
    out = get_step("denoise_builtin").fn(clean, {}, _ctx(_diag(noise_sigma=0.5)))
    assert out.image is clean
    assert out.notes.startswith("skipped")


def test_sharpen_builtin_raises_edge_strength_without_colour_shift():
    import cv2

    soft = cv2.GaussianBlur(_scene(), (0, 0), 1.2)
    out = get_step("sharpen_builtin").fn(soft, {"strength": 0.8}, _ctx())
    assert out.model == "builtin:unsharp"
    def detail(img):
        return cv2.Laplacian(img.mean(axis=2), cv2.CV_32F).var()

    assert detail(out.image) > 1.5 * detail(soft)
    assert np.abs(out.image.mean((0, 1)) - soft.mean((0, 1))).max() < 0.01


def test_builtin_steps_honour_cancel():
    p = Progress()
    p.token.cancel()
    with pytest.raises(Cancelled):
        get_step("sharpen_builtin").fn(_scene(), {"strength": 0.5}, _ctx(progress=p))
