"""``load_preview_rgba``: the fast preview with the photo's transparency, reduced with its
alpha (what the app's thumbnails are made from; they decoded a transparent photo whole, in
float32, and a JPEG XL's alpha was never read)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from engine import imageio as mio

H, W = 90, 160


def _cutout() -> np.ndarray:
    """RGBA: the left half fully transparent over bright red, the right half opaque (a
    horizontal ramp of green over blue), a soft column between."""
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, W // 2:, 0] = 0
    rgba[:, W // 2:, 1] = np.linspace(0, 255, W // 2, dtype=np.uint8)[None]
    rgba[:, W // 2:, 2] = 200
    rgba[:, W // 2:, 3] = 255
    rgba[:, W // 2 - 4:W // 2, 3] = 128
    return rgba


def _save(rgba: np.ndarray, path: Path, kind: str) -> None:
    if kind == "rgba_png":
        Image.fromarray(rgba, "RGBA").save(path)
    elif kind == "la_png":
        Image.fromarray(rgba[..., [1, 3]], "LA").save(path)
    elif kind == "palette_png":  # a transparent palette entry: GIF-style transparency
        Image.fromarray(rgba, "RGBA").quantize(64, method=Image.Quantize.FASTOCTREE).save(path)
    elif kind == "webp":
        Image.fromarray(rgba, "RGBA").save(path, lossless=True)
    elif kind == "tiff":
        Image.fromarray(rgba, "RGBA").save(path, compression="tiff_deflate")


@pytest.mark.parametrize("kind,suffix", [("rgba_png", ".png"), ("la_png", ".png"),
                                         ("palette_png", ".png"), ("webp", ".webp"),
                                         ("tiff", ".tif")])
def test_the_preview_keeps_the_alpha_and_drops_what_is_under_it(tmp_path, kind, suffix):
    path = tmp_path / f"cutout_{kind}{suffix}"
    _save(_cutout(), path, kind)
    photo = mio.load_photo(path)
    rgb, alpha = mio.load_preview_rgba(path, 40)
    assert rgb.shape == (23, 40, 3) and rgb.dtype == np.uint8
    assert alpha is not None and alpha.shape == (23, 40) and alpha.dtype == np.uint8
    # the alpha is the photo's, reduced
    want = cv2.resize((photo.alpha * 255).astype(np.float32), (40, 23),
                      interpolation=cv2.INTER_AREA)
    assert np.abs(alpha.astype(np.float32) - want).max() <= 2
    clear, solid = want < 0.5, want > 254.5
    assert clear[:, :16].all() and solid[:, 24:].all()
    # nothing of the red stored under the transparent half is left: not in the transparent
    # pixels, not bled into the opaque ones
    assert (rgb[clear] == 0).all()
    px = (photo.pixels * 255 + 0.5).astype(np.uint8)
    opaque = cv2.resize(px[:, W // 2:], (20, 23), interpolation=cv2.INTER_AREA)
    assert np.abs(rgb[:, 21:].astype(int) - opaque[:, 1:]).max() <= 3
    # the preview without the alpha is as it was (the colours under it included)
    assert mio.load_preview(path, 40).shape == (23, 40, 3)


def test_an_opaque_photo_has_no_alpha(tmp_path):
    rgba = _cutout()
    rgba[..., 3] = 255
    path = tmp_path / "opaque.png"
    Image.fromarray(rgba, "RGBA").save(path)
    rgb, alpha = mio.load_preview_rgba(path, 40)
    assert alpha is None
    Image.fromarray(rgba[..., :3]).save(tmp_path / "plain.jpg", quality=95)
    rgb, alpha = mio.load_preview_rgba(tmp_path / "plain.jpg", 40)
    assert alpha is None and rgb.shape == (23, 40, 3)


def test_the_alpha_is_turned_upright_with_the_pixels(tmp_path):
    rgba = _cutout()
    exif = Image.Exif()
    exif[0x0112] = 6  # (turned 90 degrees clockwise to be shown upright)
    path = tmp_path / "turned.png"
    Image.fromarray(rgba, "RGBA").save(path, exif=exif)
    photo = mio.load_photo(path)
    assert photo.alpha.shape == (W, H)
    rgb, alpha = mio.load_preview_rgba(path, 40)
    assert rgb.shape[:2] == alpha.shape == (40, 23)
    want = cv2.resize((photo.alpha * 255).astype(np.float32), (23, 40),
                      interpolation=cv2.INTER_AREA)
    assert np.abs(alpha.astype(np.float32) - want).max() <= 2


def test_a_large_photo_is_reduced_in_bands_like_the_whole(tmp_path, monkeypatch):
    """Bands of rows (no premultiplied copy of the whole photo) give the reduction of the
    whole: the band height changes nothing."""
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (1100, 1700, 4), dtype=np.uint8)
    rgba[200:700, 300:900, 3] = 0
    path = tmp_path / "noisy.png"
    Image.fromarray(rgba, "RGBA").save(path, compress_level=1)
    whole = mio.load_preview_rgba(path, 100)
    monkeypatch.setattr(mio, "_PREVIEW_BAND_ROWS", 7)
    banded = mio.load_preview_rgba(path, 100)
    assert whole[0].shape == (65, 100, 3)
    assert np.array_equal(whole[0], banded[0]) and np.array_equal(whole[1], banded[1])
