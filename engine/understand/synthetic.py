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


# per-pixel variance of bilinear-demosaiced unit white mosaic noise, pooled over R, G, B: a red
# or blue pixel is a site (1/4 of them, variance 1), a mean of 2 sites (1/2, 1/2) or of 4 (1/4,
# 1/4): 9/16; a green one a site (1/2) or a mean of 4: 5/8; pooled (9/16 + 5/8 + 9/16) / 3
BAYER_NOISE_GAIN = math.sqrt(7.0 / 12.0)


def add_bayer_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A camera's noise: the photo sampled on a Bayer mosaic (R G / G B), white Gaussian noise
    added to each site, clipped like a sensor's data, then demosaiced bilinearly (OpenCV's
    ``COLOR_BayerBG2RGB`` on 16 bits). The noise is correlated between neighbouring pixels; its
    per-pixel sigma, pooled over the channels, is ``sigma`` (0-255 scale) before clipping (the
    sites' sigma is ``sigma / BAYER_NOISE_GAIN``). The noise-free result is the same call with
    ``sigma`` 0. An odd last row or column is left out."""
    mosaic = _mosaic(img, "add_bayer_noise")
    if sigma > 0:
        mosaic += rng.normal(0.0, sigma / BAYER_NOISE_GAIN / 255.0,
                             mosaic.shape).astype(np.float32)
    return quantise(_demosaic(mosaic))


def _mosaic(img: np.ndarray, who: str) -> np.ndarray:
    """The RGB photo ``img`` (0-1) sampled on a Bayer mosaic (R G / G B), float32; an odd last
    row or column left out. ``who`` names the caller in the error for a photo too small."""
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    if h == 0 or w == 0 or img.ndim != 3:
        raise ValueError(f"{who} needs an RGB photo of at least 2 x 2 pixels")
    rgb = img[:h, :w, :3]
    mosaic = np.empty((h, w), np.float32)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return mosaic


def _demosaic(mosaic: np.ndarray) -> np.ndarray:
    """A Bayer ``mosaic`` (0-1) clipped like a sensor's data and demosaiced bilinearly (OpenCV's
    ``COLOR_BayerBG2RGB`` on 16 bits): RGB float32, 0-1."""
    raw = np.round(np.clip(mosaic, 0.0, 1.0) * 65535.0).astype(np.uint16)
    return cv2.cvtColor(raw, cv2.COLOR_BayerBG2RGB).astype(np.float32) / 65535.0


def _srgb_decode(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _srgb_encode(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x,
                    1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055).astype(np.float32)


# read-noise variance of add_signal_dependent_noise, as a share of its shot-noise gain
READ_NOISE_SHARE = 0.01


def add_signal_dependent_noise(img: np.ndarray, strength: float, rng: np.random.Generator, *,
                               linear: bool = True, bayer: bool = False) -> np.ndarray:
    """A camera's signal-dependent (Poisson-Gaussian) noise: variance ``a * x + b`` at value
    ``x`` (the shot noise Gaussian-approximated; ``b = READ_NOISE_SHARE * a``), independent per
    channel, clipped to [0, 1], 8-bit quantised. ``linear``: added in linear light (the sRGB
    values decoded) and encoded again, as a camera's sensor data is: the encoded photo is then
    noisiest in the darks; otherwise added to the encoded values (raw-like, noisiest in the
    brights). ``bayer``: added to a Bayer mosaic's sites (R G / G B; site sigma /
    ``BAYER_NOISE_GAIN``) and demosaiced bilinearly on 16 bits (``add_bayer_noise``), before
    the encoding; its noise-free reference is the same call with ``strength`` 0 (an odd last row
    or column is left out). ``strength``: the per-pixel sigma (0-255) of the encoded result at
    mid-grey (0.5) before clipping, which sets ``a``."""
    c = np.asarray(img, np.float32)[..., :3] if img.ndim == 3 else np.asarray(img, np.float32)
    mid = 0.5
    s = strength / 255.0
    if linear:  # the encoded sigma at mid-grey is the linear one times the encoding's slope
        x0 = float(_srgb_decode(np.float32(mid)))
        s /= 1.055 / 2.4 * x0 ** (1 / 2.4 - 1)
        mid = x0
    a = s * s / (mid + READ_NOISE_SHARE)
    x = _srgb_decode(c) if linear else c
    if bayer:
        m = _mosaic(x, "add_signal_dependent_noise(bayer=True)")
        if strength > 0:
            sd = np.sqrt(a * np.maximum(m, 0.0) + READ_NOISE_SHARE * a) / BAYER_NOISE_GAIN
            m += (rng.normal(0.0, 1.0, m.shape) * sd).astype(np.float32)
        out = _demosaic(m)
    else:
        out = x.copy()
        if strength > 0:
            sd = np.sqrt(a * np.maximum(x, 0.0) + READ_NOISE_SHARE * a)
            out += (rng.normal(0.0, 1.0, x.shape) * sd).astype(np.float32)
        out = np.clip(out, 0.0, 1.0)
    return quantise(_srgb_encode(out) if linear else out)


def add_blurred_noise(img: np.ndarray, sigma: float, blur: float,
                      rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise, independent per channel, blurred by a Gaussian of ``blur`` px (in-
    camera smoothing) and rescaled to a per-pixel sigma of exactly ``sigma`` (0-255 scale,
    pooled over the noise field) before it is added."""
    noise = rng.normal(0.0, 1.0, img.shape).astype(np.float32)
    if noise.ndim == 2:
        noise = cv2.GaussianBlur(noise, (0, 0), blur, borderType=cv2.BORDER_REFLECT)
    else:
        noise = np.stack([cv2.GaussianBlur(np.ascontiguousarray(noise[..., c]), (0, 0), blur,
                                           borderType=cv2.BORDER_REFLECT)
                          for c in range(noise.shape[2])], axis=2)
    rms = float(np.sqrt(np.mean(np.square(noise, dtype=np.float64))))
    return quantise(img + noise * np.float32(sigma / 255.0 / max(rms, 1e-12)))


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


def motion_kernel(length: float, angle_deg: float, frames: int | None = None) -> np.ndarray:
    """A normalised line PSF ``length`` px long (support), direction ``angle_deg`` (0 =
    horizontal, counter-clockwise), drawn with bilinear splatting. ``frames``: only that many
    evenly spaced points of the line, the blur of a few sharp frames averaged (how the GoPro
    deblurring sets are made) rather than one continuous exposure."""
    L = max(1.0, float(length))
    size = math.ceil(L) + 4
    size += 1 - size % 2
    k = np.zeros((size, size), np.float64)
    c = (size - 1) / 2
    dx = math.cos(math.radians(angle_deg)) * (L - 1) / 2
    dy = -math.sin(math.radians(angle_deg)) * (L - 1) / 2
    for t in np.linspace(-1, 1, frames or max(2, int(4 * L))):
        _splat(k, c + dx * t, c + dy * t)
    return (k / k.sum()).astype(np.float32)


def _splat(k: np.ndarray, x: float, y: float) -> None:
    """Add one unit at sub-pixel (x, y) to ``k`` with bilinear weights."""
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    k[y0, x0] += (1 - fx) * (1 - fy)
    k[y0, x0 + 1] += fx * (1 - fy)
    k[y0 + 1, x0] += (1 - fx) * fy
    k[y0 + 1, x0 + 1] += fx * fy


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


def shake_kernel(length: float, rng: np.random.Generator, smooth: float = 0.7,
                 frames: int | None = None) -> np.ndarray:
    """A camera-shake PSF: a random smooth trajectory about ``length`` px long (its path),
    drawn with bilinear splatting and normalised (curved, uneven, like real hand shake).
    ``frames``: only that many evenly spaced points of the path (see ``motion_kernel``)."""
    n = max(8, int(4 * length))
    ang = float(rng.uniform(0, 2 * math.pi))
    turn = rng.normal(0, 1.0 - smooth, n).cumsum() * 0.15
    steps = np.stack([np.cos(ang + turn), np.sin(ang + turn)], axis=1)
    speed = np.clip(1 + rng.normal(0, 0.4, n).cumsum() * 0.05, 0.2, 2.0)
    steps *= (speed / speed.sum() * length)[:, None]
    pts = np.vstack([[0.0, 0.0], steps.cumsum(axis=0)])
    pts -= pts.mean(axis=0)
    size = math.ceil(float(np.abs(pts).max()) * 2) + 5
    size += 1 - size % 2
    k = np.zeros((size, size), np.float64)
    c = (size - 1) / 2
    if frames:
        pts = pts[np.linspace(0, len(pts) - 1, frames).round().astype(int)]
    for x, y in pts + c:
        _splat(k, x, y)
    return (k / k.sum()).astype(np.float32)


def kernel_extent(kernel: np.ndarray) -> float:
    """A blur kernel's extent as the engine reports it (``blur_extent``): sqrt(12) x its standard
    deviation along its major axis, i.e. the length of the straight line of the same spread."""
    k = np.asarray(kernel, np.float64)
    k = k / k.sum()
    yy, xx = np.mgrid[:k.shape[0], :k.shape[1]]
    mx, my = float((k * xx).sum()), float((k * yy).sum())
    cxx = float((k * (xx - mx) ** 2).sum())
    cyy = float((k * (yy - my) ** 2).sum())
    cxy = float((k * (xx - mx) * (yy - my)).sum())
    return math.sqrt(12.0 * float(np.linalg.eigvalsh([[cxx, cxy], [cxy, cyy]])[1]))


def convolve(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return quantise(cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT))


def soft_downscale(img: np.ndarray, factor: float, pre_blur: float) -> np.ndarray:
    """A soft low-resolution copy: Gaussian pre-blur (``pre_blur`` px at the small size)
    then area downscale by ``factor`` (what cheap cameras, web resizes and old scans give)."""
    if pre_blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), pre_blur * factor)
    return down_up(img, factor, upscale=False)


_WORDS = ("invoice", "total", "Mend", "photo", "receipt", "2026", "hello world", "station",
          "Gare du Nord", "No. 17", "exit", "menu", "price 4.50", "open daily", "OCR test",
          "quick brown fox", "AB-1234", "lorem ipsum", "page 12", "café")


def render_text(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A crisp synthetic text image (scanned page, sign or label): lines of words in
    OpenCV's Hershey fonts over a plain or gently shaded background."""
    bg = rng.uniform(0.75, 1.0, 3) if rng.random() < 0.8 else rng.uniform(0.0, 0.3, 3)
    fg = 1.0 - bg if rng.random() < 0.7 else rng.uniform(0, 1, 3)
    xx = np.mgrid[0:height, 0:width][1].astype(np.float32)
    shade = 1 + 0.08 * rng.uniform(-1, 1) * (xx / width - 0.5)
    img = (np.ones((height, width, 3), np.float32) * bg.astype(np.float32)) * shade[..., None]
    img = np.ascontiguousarray(np.clip(img, 0, 1))
    scale = float(rng.uniform(0.5, 1.6)) * max(0.4, min(height, 200) / 120)
    thick = max(1, round(scale * rng.uniform(1.0, 2.2)))
    font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX,
                           cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX]))
    line_h = max(8, int(30 * scale))
    y = int(line_h * 1.1)
    while y < height:
        x = int(rng.integers(2, max(3, width // 10)))
        while x < width:
            word = _WORDS[int(rng.integers(0, len(_WORDS)))]
            cv2.putText(img, word, (x, y), font, scale, tuple(float(v) for v in fg), thick,
                        cv2.LINE_AA)
            x += int(cv2.getTextSize(word, font, scale, thick)[0][0] + 15 * scale)
        y += int(line_h * rng.uniform(1.3, 2.2))
    return quantise(img)
