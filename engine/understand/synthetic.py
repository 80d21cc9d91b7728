"""Known degradations applied to clean photos: for fitting the analyzer, tests and the benchmark.

All take/return float32 RGB in [0, 1]; outputs are quantised to 8 bits like a saved photo.
"""
from __future__ import annotations

import io
import math

import cv2
import numpy as np


def quantise(img: np.ndarray) -> np.ndarray:
    return (np.clip(np.round(img * 255.0), 0, 255) / 255.0).astype(np.float32)


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise, ``sigma`` on the 0-255 scale, independent per channel."""
    return quantise(img + rng.normal(0.0, sigma / 255.0, img.shape).astype(np.float32))


def jpeg(img: np.ndarray, quality: int) -> tuple[np.ndarray, dict[int, list[int]]]:
    """Encode with libjpeg at ``quality``; returns the decoded pixels and the tables."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(
        buf, "JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        tables = {int(k): list(v) for k, v in im.quantization.items()}
        out = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return out, tables


def motion_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A normalised line PSF ``length`` px long (support), direction ``angle_deg`` (0 =
    horizontal, counter-clockwise), drawn with bilinear splatting."""
    L = max(1.0, float(length))
    size = int(math.ceil(L)) + 4
    size += 1 - size % 2
    k = np.zeros((size, size), np.float64)
    c = (size - 1) / 2
    dx = math.cos(math.radians(angle_deg)) * (L - 1) / 2
    dy = -math.sin(math.radians(angle_deg)) * (L - 1) / 2
    for t in np.linspace(-1, 1, max(2, int(4 * L))):
        x, y = c + dx * t, c + dy * t
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        k[y0, x0] += (1 - fx) * (1 - fy)
        k[y0, x0 + 1] += fx * (1 - fy)
        k[y0 + 1, x0] += (1 - fx) * fy
        k[y0 + 1, x0 + 1] += fx * fy
    return (k / k.sum()).astype(np.float32)


def motion_blur(img: np.ndarray, length: float, angle_deg: float) -> np.ndarray:
    k = motion_kernel(length, angle_deg)
    return quantise(cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT))


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return quantise(cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT))


def down_up(img: np.ndarray, factor: float, upscale: bool = True) -> np.ndarray:
    """Bicubic downscale by ``factor`` (then back up to the original size if ``upscale``)."""
    h, w = img.shape[:2]
    nh, nw = max(8, round(h / factor)), max(8, round(w / factor))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    if not upscale:
        return quantise(small)
    return quantise(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))


def reflection(transmission: np.ndarray, reflected: np.ndarray, alpha: float,
               blur_sigma: float, ghost_shift: tuple[int, int] | None,
               ghost_gain: float = 0.5) -> np.ndarray:
    """Photo through glass: T + alpha * blurred R (optionally a shifted ghost copy of R), with
    the energy kept in range (the common synthetic model of reflection-removal papers)."""
    h, w = transmission.shape[:2]
    r = cv2.resize(reflected, (w, h), interpolation=cv2.INTER_AREA)
    if blur_sigma > 0:
        r = cv2.GaussianBlur(r, (0, 0), blur_sigma)
    if ghost_shift is not None:
        dy, dx = ghost_shift
        r = (r + ghost_gain * np.roll(r, (dy, dx), axis=(0, 1))) / (1 + ghost_gain)
    mix = transmission * (1 - 0.5 * alpha) + alpha * r
    return quantise(mix / max(1.0, float(np.percentile(mix, 99.5))))
