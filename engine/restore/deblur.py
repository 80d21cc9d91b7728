"""Chain C motion deblurring: NAFNet (GoPro, width 64) tiled, or built-in Wiener deconvolution.

``deblur_nafnet`` runs the public NAFNet-GoPro-width64 weights through spandrel, tile by tile
(tiles padded to multiples of 16, the network's down-sampling factor). spandrel builds plain
NAFNet; the GoPro release was evaluated with test-time local statistics (NAFNetLocal), which
tiling approximates by keeping the global pooling local to a tile.

``deblur_builtin`` needs no download: it deconvolves a linear motion kernel of the length and
angle the analyzer measured (``diagnosis.estimates["blur_length"]`` px and ``"blur_angle"``
degrees, 0 = horizontal, counter-clockwise) with a Wiener filter, after tapering the padded
borders toward the blurred image so the FFT's wrap-around does not ring.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .registry import StepContext, StepOutput, register_step

NAFNET_GOPRO = "nafnet-gopro-w64"
MIN_BLUR_LENGTH = 3.0  # px: below this a linear-kernel deconvolution does more harm than good
MAX_BLUR_LENGTH = 120.0


def motion_psf(length: float, angle: float, *, supersample: int = 8) -> np.ndarray:
    """Normalised linear motion kernel of ``length`` px at ``angle`` degrees (0 = horizontal,
    counter-clockwise in the displayed image, where y grows downwards), anti-aliased."""
    length = max(1.0, float(length))
    size = math.ceil(length) + 2
    size += 1 - size % 2  # odd, centred
    c = size // 2
    th = math.radians(angle)
    dx, dy = math.cos(th), -math.sin(th)
    n = max(2, math.ceil(length * supersample))
    t = (np.arange(n) + 0.5) / n - 0.5
    xs = c + t * (length - 1.0) * dx
    ys = c + t * (length - 1.0) * dy
    k = np.zeros((size, size), np.float64)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for ox, oy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                       (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(k, (np.clip(y0 + oy, 0, size - 1), np.clip(x0 + ox, 0, size - 1)), wt)
    return (k / k.sum()).astype(np.float32)


def _psf_otf(psf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Optical transfer function of ``psf`` for an image of ``shape`` (centre moved to 0,0)."""
    from scipy import fft

    pad = np.zeros(shape, np.float32)
    kh, kw = psf.shape
    pad[:kh, :kw] = psf
    pad = np.roll(pad, (-(kh // 2), -(kw // 2)), axis=(0, 1))
    return fft.rfft2(pad)


def _cos_ramp(n: int, p: int) -> np.ndarray:
    """1 in the middle, raised-cosine down to 0 over the outer ``p`` samples on both ends."""
    w = np.ones(n, np.float32)
    if p > 0:
        t = (np.arange(p, dtype=np.float32) + 0.5) / p
        r = 0.5 - 0.5 * np.cos(np.pi * t)
        w[:p] = r
        w[n - p:] = r[::-1]
    return w


def wiener_deconvolve(image: np.ndarray, psf: np.ndarray, nsr: float = 0.01,
                      progress: Any = None) -> np.ndarray:
    """Wiener deconvolution of an (H, W, C) float image by ``psf``.

    The image is padded (reflect) by twice the kernel size; the padding is cross-faded into
    its own circularly blurred copy (edge tapering), which makes the padded image consistent
    with the FFT's periodic model so the borders do not ring. ``nsr`` is the noise-to-signal
    power ratio regularising frequencies the kernel wipes out.
    """
    import cv2
    from scipy import fft

    h, w = image.shape[:2]
    p = int(2 * max(psf.shape) + 8)
    padded = cv2.copyMakeBorder(image.astype(np.float32), p, p, p, p, cv2.BORDER_REFLECT)
    if padded.ndim == 2:
        padded = padded[..., None]
    ph, pw = padded.shape[:2]
    otf = _psf_otf(psf, (ph, pw))
    wiener = (np.conj(otf) / (np.abs(otf) ** 2 + nsr)).astype(np.complex64)
    taper = (_cos_ramp(ph, p)[:, None] * _cos_ramp(pw, p)[None, :])
    out = np.empty((h, w, padded.shape[2]), np.float32)
    for c in range(padded.shape[2]):
        if progress is not None:
            progress.update(c / padded.shape[2], f"deconvolving channel {c + 1}")
        ch = padded[..., c]
        f = fft.rfft2(ch)
        blurred = fft.irfft2(f * otf, s=(ph, pw)).astype(np.float32)
        ch = taper * ch + (1.0 - taper) * blurred
        res = fft.irfft2(fft.rfft2(ch) * wiener, s=(ph, pw))
        out[..., c] = res[p:p + h, p:p + w]
    return np.clip(out, 0.0, 1.0)


def _blur_estimate(params: Mapping[str, Any], ctx: StepContext) -> tuple[float | None, float]:
    length = params.get("length")
    angle = params.get("angle")
    est = ctx.diagnosis.estimates if ctx.diagnosis is not None else {}
    if length is None:
        length = est.get("blur_length")
    if angle is None:
        angle = est.get("blur_angle", 0.0)
    try:
        return (None if length is None else float(length)), float(angle or 0.0)
    except (TypeError, ValueError):
        return None, 0.0


@register_step(
    "deblur_builtin",
    description="Wiener deconvolution of the measured linear motion blur (no download).",
    defaults={"length": None, "angle": None, "nsr": None},
)
def deblur_builtin(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    length, angle = _blur_estimate(params, ctx)
    if length is None or not math.isfinite(length) or length < MIN_BLUR_LENGTH:
        ctx.progress.update(1.0, "no measurable motion blur")
        what = "no blur estimate" if length is None else f"blur length {length:.1f} px"
        return StepOutput(image, "builtin:wiener",
                          f"skipped: {what} (deconvolution needs at least {MIN_BLUR_LENGTH:g} px)")
    if length > MAX_BLUR_LENGTH:
        ctx.warnings.append(f"motion blur of {length:.0f} px is too long for the built-in "
                            f"deblurring; limited to {MAX_BLUR_LENGTH:.0f} px")
        length = MAX_BLUR_LENGTH
    nsr = params.get("nsr")
    if nsr is None:
        # stronger regularisation for noisier photos and longer kernels
        sigma = 0.0
        if ctx.diagnosis is not None:
            try:
                sigma = float(ctx.diagnosis.estimates.get("noise_sigma", 0.0) or 0.0)
            except (TypeError, ValueError):
                sigma = 0.0
        # (best fixed value on McMaster with 9-21 px synthetic kernels and sigma 1 was ~0.01)
        nsr = 0.008 + 0.0003 * sigma ** 2 + 0.0001 * length
    nsr = float(nsr)
    psf = motion_psf(length, angle)
    ctx.progress.update(0.0, f"deconvolving {length:.0f} px motion blur")
    out = wiener_deconvolve(image, psf, nsr, ctx.progress)
    ctx.progress.update(1.0, "deblurred")
    return StepOutput(out, "builtin:wiener",
                      f"kernel {length:.1f} px at {angle:.0f} deg, nsr {nsr:.4f}")


@register_step(
    "deblur_nafnet",
    models=(NAFNET_GOPRO,),
    description="NAFNet motion deblurring (GoPro, width 64), tiled.",
    defaults={"tile": None},
)
def deblur_nafnet(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    from ..tiling import run_tiled, torch_fn

    ctx.progress.update(0.0, "loading NAFNet")
    desc = ctx.runtime.load_image_model(NAFNET_GOPRO)
    tile = int(params.get("tile") or ctx.tile_size)
    dtype = next(desc.model.parameters()).dtype
    out = run_tiled(image, torch_fn(desc, ctx.device, dtype), tile=tile, overlap=32,
                    pad_multiple=16,
                    progress=ctx.progress, device=ctx.device)
    return StepOutput(out, NAFNET_GOPRO, f"tiles of {tile} px")
