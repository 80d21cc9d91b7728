"""numpy <-> QImage, and photo decoding for the UI (always called off the GUI thread).

What is shown is in sRGB: a photo's pixels stay in its own colour space in the engine (its ICC
profile rides along to the result), so the previews and thumbnails decoded here are converted
from that profile (``to_srgb``), as a colour-managed viewer shows the photo and its result.

A transparent photo is shown over a checkerboard, as photo apps show one: what a file stores
under its fully transparent pixels is no part of the picture (a PNG's transparent half showed
pastel rectangles). Thumbnails have it painted in (``load_thumbnail``, in the pool, from the
engine's reduced decode with the alpha: ``engine.imageio.load_preview_rgba``); the viewer
gets the photo with its alpha (``load_full_rgba``, ``rgba_to_qimage``: premultiplied, the
format Qt draws fastest) and paints the checkerboard behind it (ui/editor/canvas.py).
"""
from __future__ import annotations

import functools
import io
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtGui import QImage

log = logging.getLogger("mend.ui.imaging")

# the checkerboard behind transparent pixels: squares of CHECKER_SIDE px (on the screen in the
# viewer, in a thumbnail's pixels in the grid) in two mid greys, which stand apart from both
# the dark window and a photo's white or black
CHECKER_SIDE = 8
CHECKER_LIGHT = 153
CHECKER_DARK = 102
# a QImage's ARGB32 pixels in memory: B, G, R, A on a little-endian machine
_ARGB_ORDER = (2, 1, 0, 3) if sys.byteorder == "little" else (3, 0, 1, 2)


def rgb_to_qimage(arr: np.ndarray) -> QImage:
    """uint8 or float [0, 1] RGB (H, W, 3) -> an independent QImage (RGB888)."""
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    arr = np.ascontiguousarray(arr[..., :3])
    h, w = arr.shape[:2]
    return QImage(arr.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def rgba_to_qimage(rgb: np.ndarray, alpha: np.ndarray | None) -> QImage:
    """uint8 RGB (H, W, 3) and its uint8 alpha (H, W) -> an independent QImage with the alpha,
    premultiplied (ARGB32_Premultiplied: drawn by Qt without a conversion); without an alpha
    the RGB888 image ``rgb_to_qimage`` makes."""
    if alpha is None:
        return rgb_to_qimage(rgb)
    return argb_to_qimage(premultiplied_argb(rgb, alpha))


def premultiplied_argb(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8: ``rgb`` premultiplied by ``alpha`` (rounded) with the alpha, in the
    byte order of a QImage ARGB32 (``argb_to_qimage``). Averaging these (a reduction) is
    averaging the picture: the colours under transparent pixels count for nothing."""
    import cv2

    a = np.ascontiguousarray(alpha, dtype=np.uint8)
    pm = cv2.multiply(np.ascontiguousarray(rgb[..., :3]), cv2.merge([a, a, a]), scale=1 / 255)
    chans = [pm[..., 0], pm[..., 1], pm[..., 2], a]
    return cv2.merge([chans[i] for i in _ARGB_ORDER])


def argb_to_qimage(argb: np.ndarray) -> QImage:
    """(H, W, 4) uint8 from ``premultiplied_argb`` (or a reduction of it) -> a QImage."""
    argb = np.ascontiguousarray(argb)
    h, w = argb.shape[:2]
    return QImage(argb.data, w, h, 4 * w, QImage.Format.Format_ARGB32_Premultiplied).copy()


def checkerboard(h: int, w: int, side: int = CHECKER_SIDE) -> np.ndarray:
    """(h, w) uint8 greys: the checkerboard shown behind transparent pixels, its first square
    light at the top left."""
    y = (np.arange(h) // side)[:, None]
    x = (np.arange(w) // side)[None, :]
    return np.where((x + y) % 2 == 0, np.uint8(CHECKER_LIGHT), np.uint8(CHECKER_DARK))


def over_checkerboard(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """uint8 RGB (H, W, 3) with its uint8 alpha -> uint8 RGB: the photo laid over the
    checkerboard (a fully transparent pixel is the checkerboard's, an opaque one unchanged);
    ``rgb`` itself without an alpha."""
    if alpha is None:
        return rgb
    return _composite(premultiplied_argb(rgb, alpha))


def _composite(argb: np.ndarray) -> np.ndarray:
    """Premultiplied (H, W, 4) ARGB-ordered uint8 -> uint8 RGB over the checkerboard."""
    order = list(_ARGB_ORDER)
    pm = argb[..., [order.index(i) for i in range(3)]].astype(np.uint16)
    a = argb[..., order.index(3)].astype(np.uint16)
    board = checkerboard(*a.shape).astype(np.uint16)
    # pm + board * (1 - a): premultiplied "over", rounded (an opaque pixel is pm: unchanged)
    under = (board * (255 - a) + 127) // 255
    return np.minimum(pm + under[..., None], 255).astype(np.uint8)


def gray_to_qimage(arr: np.ndarray) -> QImage:
    arr = np.ascontiguousarray(arr.astype(np.uint8, copy=False))
    h, w = arr.shape
    return QImage(arr.data, w, h, w, QImage.Format.Format_Grayscale8).copy()


def qimage_to_rgb(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    buf = np.frombuffer(img.constBits(), dtype=np.uint8, count=h * bpl).reshape(h, bpl)
    return buf[:, : w * 3].reshape(h, w, 3).copy()


def load_thumbnail(path: Path, max_side: int) -> np.ndarray:
    """A thumbnail in sRGB: the engine's fast reduced decode (``load_preview``: a JPEG's draft,
    a HEIF's embedded thumbnail) with the photo's transparency (``load_preview_rgba``: reduced
    with its alpha, in bands, from one 8-bit decode) laid over the checkerboard."""
    from engine.imageio import load_preview_rgba, source_profile

    rgb, alpha = load_preview_rgba(path, max_side)
    return over_checkerboard(to_srgb(rgb, source_profile(path)), alpha)


def load_full(path: Path) -> np.ndarray:
    """Full-resolution uint8 sRGB, upright (for the viewer and the mask editor): a plain 8-bit
    JPEG straight to uint8 (the same bytes, no float copy: 24 MP 1.1-2.8 s and +620 MB ->
    ~0.4 s), anything else through the engine's float load."""
    return load_full_rgba(path)[0]


def load_full_rgba(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``load_full``'s pixels and the photo's uint8 alpha (None: opaque, or none)."""
    from engine.imageio import load_jpeg_rgb8, load_photo, source_profile

    rgb = load_jpeg_rgb8(path)
    if rgb is not None:  # (a JPEG has no alpha)
        return to_srgb(rgb, source_profile(path)), None
    photo = load_photo(path)
    alpha = None
    if photo.alpha is not None:
        alpha = float_to_uint8(photo.alpha)
        if int(alpha.min(initial=255)) == 255:
            alpha = None
    return to_srgb(float_to_uint8(photo.pixels), photo.icc_profile), alpha


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
