"""Photo I/O: load upright float RGB with metadata; save atomically with metadata kept.

(Initial version; hardened by the photo-I/O work: ICC/EXIF/XMP/16-bit/alpha/CMYK/bombs.)
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadImage

PHOTO_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".heic", ".heif"}


@dataclass
class Photo:
    """A decoded photo: ``pixels`` float32 RGB in [0, 1], (H, W, 3), already upright."""

    path: Path
    pixels: np.ndarray
    alpha: np.ndarray | None = None  # float32 (H, W) in [0, 1]
    bit_depth: int = 8
    format: str = "PNG"  # PIL format name of the source
    icc_profile: bytes | None = None
    exif: bytes | None = None  # raw EXIF of the source (orientation is reset on save)
    xmp: bytes | None = None
    dpi: tuple[float, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)  # e.g. jpeg quantization tables

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def is_photo_path(path: Path) -> bool:
    return path.suffix.lower() in PHOTO_EXTENSIONS


def load_photo(path: str | os.PathLike[str]) -> Photo:
    from PIL import Image, ImageOps

    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            fmt = im.format or "PNG"
            icc = im.info.get("icc_profile")
            exif = im.info.get("exif")
            im = ImageOps.exif_transpose(im)
            alpha = None
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                alpha = np.asarray(rgba, dtype=np.float32)[..., 3] / 255.0
                im = rgba.convert("RGB")
            elif im.mode != "RGB":
                im = im.convert("RGB")
            pixels = np.asarray(im, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise BadImage(p, "file not found") from None
    except Exception as e:  # PIL raises many types for broken files
        raise BadImage(p, f"cannot read image ({e})") from None
    return Photo(p, pixels, alpha, 8, fmt, icc, exif)


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Write to a temp file in the target folder, fsync, then ``os.replace``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
