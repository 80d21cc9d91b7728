"""numpy <-> QImage, and photo decoding for the UI (always called off the GUI thread).

What is shown is in sRGB: a photo's pixels stay in its own colour space in the engine (its ICC
profile rides along to the result), so the previews and thumbnails decoded here are converted
from that profile (``to_srgb``), as a colour-managed viewer shows the photo and its result.
"""
from __future__ import annotations

import functools
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtGui import QImage

log = logging.getLogger("mend.ui.imaging")


def rgb_to_qimage(arr: np.ndarray) -> QImage:
    """uint8 or float [0, 1] RGB (H, W, 3) -> an independent QImage (RGB888)."""
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    arr = np.ascontiguousarray(arr[..., :3])
    h, w = arr.shape[:2]
    return QImage(arr.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def gray_to_qimage(arr: np.ndarray) -> QImage:
    arr = np.ascontiguousarray(arr.astype(np.uint8, copy=False))
    h, w = arr.shape
    return QImage(arr.data, w, h, w, QImage.Format.Format_Grayscale8).copy()


def qimage_to_rgb(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    buf = np.frombuffer(img.constBits(), dtype=np.uint8, count=h * bpl).reshape(h, bpl)
    return buf[:, : w * 3].reshape(h, w, 3).copy()


def load_preview(path: Path, max_side: int) -> np.ndarray:
    """uint8 sRGB, upright, longest side <= max_side. Uses the engine's fast preview loader."""
    try:
        from engine.imageio import load_preview as engine_preview
    except ImportError:  # older engine: full decode, then shrink
        engine_preview = None
    if engine_preview is not None:
        from engine.imageio import source_profile

        return to_srgb(engine_preview(path, max_side), source_profile(path))
    from engine.imageio import load_photo

    photo = load_photo(path)
    return to_srgb(_shrink((photo.pixels * 255 + 0.5).astype(np.uint8), max_side),
                   photo.icc_profile)


def load_full(path: Path) -> np.ndarray:
    """Full-resolution uint8 sRGB, upright (for the viewer and the mask editor): a plain 8-bit
    JPEG straight to uint8 (the same bytes, no float copy: 24 MP 1.1-2.8 s and +620 MB ->
    ~0.4 s), anything else through the engine's float load."""
    from engine.imageio import load_jpeg_rgb8, load_photo, source_profile

    rgb = load_jpeg_rgb8(path)
    if rgb is not None:
        return to_srgb(rgb, source_profile(path))
    photo = load_photo(path)
    return to_srgb(float_to_uint8(photo.pixels), photo.icc_profile)


_STRIP_ROWS = 256  # rows converted at a time (a 24 MP photo: no second full-size copy)


def to_srgb(rgb: np.ndarray, icc: bytes | None) -> np.ndarray:
    """uint8 RGB (H, W, 3) in the space of the RGB profile ``icc`` -> sRGB, by LittleCMS (as
    the engine converts: perceptual intent, which matrix profiles take as relative
    colorimetric). Unchanged (the same array) without a profile, for an sRGB one and for one
    LittleCMS cannot use; else converted in place (a copy first when ``rgb`` is read-only).
    In a pool: LittleCMS runs without Python's lock (24 MP: ~0.36 s here)."""
    transform = _srgb_transform(icc) if icc else None
    if transform is None or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        return rgb
    from PIL import Image, ImageCms

    if not rgb.flags.writeable or not rgb.flags.c_contiguous:
        rgb = np.array(rgb, order="C")
    for y in range(0, rgb.shape[0], _STRIP_ROWS):
        strip = Image.fromarray(rgb[y:y + _STRIP_ROWS], "RGB")
        ImageCms.applyTransform(strip, transform, inPlace=True)
        rgb[y:y + _STRIP_ROWS] = np.asarray(strip)
    return rgb


@functools.lru_cache(maxsize=16)
def _srgb_transform(icc: bytes) -> Any:
    """The LittleCMS transform of ``icc`` -> sRGB; None when it changes no colour by more than
    one level (an sRGB profile, whatever its maker: nothing to do) or cannot be built."""
    from PIL import Image, ImageCms

    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if src.profile.xcolor_space != "RGB ":
            return None
        transform = ImageCms.buildTransform(src, ImageCms.createProfile("sRGB"), "RGB", "RGB")
        levels = np.linspace(0, 255, 18).round().astype(np.uint8)
        probe = np.stack(np.meshgrid(levels, levels, levels), -1).reshape(1, -1, 3)
        out = np.asarray(ImageCms.applyTransform(Image.fromarray(probe, "RGB"), transform))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as e:
        log.info("a colour profile LittleCMS cannot use (shown as sRGB): %s", e)
        return None
    if int(np.abs(out.astype(np.int16) - probe).max()) <= 1:
        return None
    return transform


def float_to_uint8(px: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8, rounded; the same as ``(clip(px, 0, 1) * 255 + 0.5).astype(uint8)``
    with one float temporary instead of three (a 24 MP photo: 2.7 s -> 0.3 s)."""
    tmp = np.multiply(px, np.float32(255.0), dtype=np.float32)
    np.add(tmp, np.float32(0.5), out=tmp)
    np.clip(tmp, 0.0, 255.0, out=tmp)
    return tmp.astype(np.uint8)


def _shrink(arr: np.ndarray, max_side: int) -> np.ndarray:
    h, w = arr.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return arr
    import cv2

    return cv2.resize(arr, (max(1, round(w * s)), max(1, round(h * s))),
                      interpolation=cv2.INTER_AREA)
