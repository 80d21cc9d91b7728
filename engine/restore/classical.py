"""Classical, no-download restoration methods (the ``builtin`` profile's chain A pieces).

Everything here is plain OpenCV / NumPy, so it runs on any machine without a model. Results are
labelled ``builtin:<method>`` so the user can tell them from the learned models' output.

The non-local-means denoiser smooths brightness (CIELAB L) and colour (a, b) with separate
strengths, both following the noise sigma continuously (:func:`nlm_factors`): up to sigma 8 the
colour gets half the brightness strength; from 8 to 10 it is blended into the full strength
unless the photo's colour channels are measured much less noisy than its brightness
(:func:`chroma_noise_ratio`), when the colour strength is lowered (see ``LOW_CHROMA_STRENGTH``).
Where NLM took away more than the noise (texture: fur, grass, foliage, gravel), a share of what
it took away is put back, pixel by pixel (:func:`recover_detail`).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .registry import StepContext, StepOutput, call_cancellable, register_step

# Noise below this sigma (0-255 scale) is not worth a denoising pass.
MIN_DENOISE_SIGMA = 1.5
# NLM's brightness strength h = factor x sigma, its colour strength a fraction of h
# (nlm_factors): NLM_LOW = (0.8, half) up to sigma NLM_RAMP[0], NLM_HIGH_FACTOR with
# chroma_strength from NLM_RAMP[1] up, linear in sigma between (factors first chosen by PSNR on
# McMaster, sigma 5..30). They jumped at sigma 8 (h 6.4 -> 8.4, colour 3.2 -> 8.4): the
# strength from 8 up smoothed photos read just above 8 too much. Measured (27 clean photos: the
# 12 of images/clean, 8 McMaster, Set5 head and woman, 5 Set12, middle 320-px crops; seeded
# Gaussian noise, white or in the brightness alone, sigma 5-12; NLM given the sigma the analyzer
# reads, as the plan does, or the true one; PSNR to the clean photo, mean over 27 per sigma):
# the blend over 8-10 loses nothing on average at any sigma in any of the four (the photos read
# below 8 are unchanged) and gains most at true sigma 7.5-9 (read 8.4-9.9): white noise read
# 30.48 -> 31.29 dB at sigma 8, 30.05 -> 30.78 at 8.5, 29.72 -> 30.21 at 9; brightness noise
# 30.42 -> 31.06, 29.90 -> 30.48, 29.54 -> 29.88; the true sigma 8: 31.07 -> 32.39 (white);
# mean over 5-12: 30.73 -> 31.03 (white), 30.53 -> 30.76 (brightness); single photos lost up
# to 0.82 dB (white noise, sigma 8-9). Not taken: a blend over 6-10 (the first idea) or 7-9,
# which cost the brightness-only noise 0.10-0.19 dB at sigma 7 and the true sigma 7.5
# 0.2-0.34 dB; 6-8 and 5-8 cost 0.15-0.67 dB at sigma 5-7.5. (8-10 was tried after those, on
# a new noise seed.)
NLM_LOW = (0.8, 0.5)
NLM_HIGH_FACTOR = 1.05
NLM_RAMP = (8.0, 10.0)
# Colour strength of NLM from sigma NLM_RAMP[1] up (blended in from NLM_RAMP[0]: nlm_factors): full
# (hColor = h) when the photo's chroma/luma noise ratio (chroma_noise_ratio) is at least
# CHROMA_NOISE_FULL, LOW_CHROMA_STRENGTH * h at or below CHROMA_NOISE_LOW, linear between. Measured
# (22 clean photos, 16 in colour, 320 px crops, seeded noise, sigma read by the analyzer; PSNR to
# the clean photo, mean over 22): noise in the brightness alone, sigma 10: 28.85 -> 29.39 dB (up to
# +2.2 dB on one photo), sigma 20: 25.06 -> 25.34; no photo lower (it read 0.00-0.32: one of 32 kept
# the full strength). White, correlated and half-resolution colour noise (sigma 10-30) read
# 0.46-0.97 and keep the full strength, so their results are unchanged: a fixed lower strength (0.75
# h) had left green/magenta specks on real sensor noise (NAFNet's noisy demo photo) and cost
# correlated noise 0.29 dB; the half-resolution measurement keeps colour noise coarser than a pixel
# (a 4:2:0 JPEG's), which the full-resolution one reads 0.08-0.23, from being left in dark areas.
CHROMA_NOISE_FULL = 0.3
CHROMA_NOISE_LOW = 0.2
LOW_CHROMA_STRENGTH = 0.6
# chroma_noise_ratio reads at most the middle square of this side
RATIO_SIDE = 2048
# one non-local-means tile at a time: a cancelled job's tile is abandoned (call_cancellable)
_NLM_SLOT = threading.Lock()

# Detail put back after NLM (recover_detail): what NLM took away, r = noisy - denoised, is the
# noise plus any texture it smoothed. Its local energy v (the mean over R, G, B of r^2, in a
# Gaussian window of DETAIL_WINDOW px) is about sigma^2 where r is noise and more where NLM took
# structure: a share w = max(0, v - DETAIL_NOISE_FACTOR * sigma^2) / v of r (a Wiener gain),
# smoothed by a Gaussian of DETAIL_GAIN_SMOOTH px, is added back. Judged by a rule written
# before it was measured (bench/denoise_detail.py; 15 clean photos that are no evaluation
# photos, from the pinned wheels: scikit-image, scikit-learn, matplotlib, PyWavelets; white
# noise sigma 5-30, Bayer and blurred noise 10-20, each denoised at the sigma the analyzer reads;
# constants tuned on the photos' other halves, three candidates each judged once): PSNR to the
# clean photo 30.06 -> 31.65 dB mean over 120 noisy cases (no case lower by more than 0.17 dB:
# flat photos at sigma 20-30), the 5 most textured photos 26.98 -> 29.34 (grass +2.1 to +4.4 dB),
# noise-free photos the analyzer reads noisy (7 of 15) 1.9 dB closer to themselves, none
# further; 12 MP, 1 thread: +2.8 % time. A lower threshold (0.8 sigma^2) put back more texture
# but lost up to 4.2 dB on a flat photo at sigma 30 (blotches of noise). Real sensor noise is
# not uniform: on NAFNet's noisy demo photo (sigma read 20.5) a third of the residual comes back
# (22 % of its energy): its text is sharper, a fine grain stays on the paper.
# Not taken (session 18, bench/denoise_detail.py sd-*, a rule written first; signal-dependent
# Poisson-Gaussian noise, sRGB-encoded, Bayer and raw-like, 15 x 8 cases): a noise level function
# per brightness (a variance-stabilising transform from it; NLM at its upper strength with a
# per-pixel recovery threshold; the threshold from NLM's own residual per brightness): +0.06 to
# +0.18 dB on such noise against +0.25 asked, the first two losing up to 4.6 dB on single cases.
DETAIL_WINDOW = 1.5
DETAIL_NOISE_FACTOR = 1.1
DETAIL_GAIN_SMOOTH = 1.0


# to_uint8 works on bands of about this many values: one band-sized float temporary
_U8_BAND = 1 << 20


def to_uint8(image: np.ndarray, check: Callable[[], None] | None = None) -> np.ndarray:
    """``(clip(image, 0, 1) * 255 + 0.5).astype(uint8)``, the same numbers, made in bands of
    rows: that expression made three photo-sized float copies (two alive at once: 288 MB on a
    12 MP photo, for a 36 MB result); a band's temporary is ~4 MB. ``check`` (a progress's
    ``check``) is called between bands (a 12 MP photo took 0.3-0.45 s)."""
    a = np.asarray(image)
    if a.dtype not in (np.float32, np.float64) or a.ndim < 2 or a.size <= _U8_BAND:
        return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    out = np.empty(a.shape, np.uint8)
    rows = max(1, _U8_BAND // max(1, a[0].size))
    for y in range(0, a.shape[0], rows):
        if check is not None:
            check()
        band = np.clip(a[y:y + rows], 0.0, 1.0)
        band *= 255.0
        band += 0.5
        out[y:y + rows] = band  # (the cast of astype: truncation)
    return out


def luminance(image: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of a float RGB image (same range as the input)."""
    if image.ndim == 2:
        return image.astype(np.float32)
    return (image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114).astype(
        np.float32)


def percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation), the same number, faster and
    without a full copy (tests/engine/test_guard_fast.py compares them).

    Only the one or two order statistics around rank ``(n - 1) * q / 100`` are needed. On a
    large array a sparse sample gives a lower bound a little below them; the values at or above
    it (a few percent for q = 90..99) are gathered and partitioned, and the ranks are offset
    by the count below. Should the bound miss (it is checked), the whole array is partitioned.
    """
    n = values.size
    vi = (n - 1) * (q / 100.0)
    lo = math.floor(vi)
    hi = min(lo + 1, n - 1)
    part, below = None, 0
    if n >= 1 << 16 and values.ndim == 2:
        step = max(1, int(math.sqrt(n / 4096) / 4))  # ~64k+ samples
        sample = values[::step, ::step].ravel()
        k = int(max(0.0, q / 100.0 - 0.01) * (sample.size - 1))
        bound = np.partition(sample, k)[k]
        sel = values >= bound
        below = n - int(np.count_nonzero(sel))
        if below <= lo:
            part = values[sel]
        del sel
    if part is None:
        part, below = values.flatten(), 0
    part.partition([lo - below, hi - below] if hi > lo else lo - below)
    a, b = part[lo - below], part[hi - below]  # numpy scalars: the arithmetic below stays in
    del part  # their dtype, as in numpy's own interpolation
    gamma = vi - lo
    diff = b - a
    return float(b - diff * (1.0 - gamma) if gamma >= 0.5 else a + diff * gamma)


def _channel255(img: np.ndarray, c: int) -> np.ndarray:
    """Channel ``c`` of an (h, w, n) image on the 0-255 scale: a new contiguous float32 array,
    the same numbers as ``img.astype(np.float32)[..., c] * 255``."""
    import cv2

    if img.dtype == np.float32 and 1 < img.shape[2] <= 4:
        ch = cv2.extractChannel(img, c)
        return np.multiply(ch, 255.0, out=ch)
    return np.multiply(img[..., c], 255.0, dtype=np.float32)


def estimate_noise_sigma(image: np.ndarray, check: Callable[[], None] | None = None) -> float:
    """Gaussian noise sigma per channel on the 0-255 scale (Immerkaer's fast estimator).

    A Laplacian-difference mask cancels smooth image structure; the mean absolute response
    of the remainder is proportional to sigma. Strong edges are excluded (they would read as
    noise) by ignoring the top 10% of luma gradient magnitudes. Colour images give the mean
    of the three channels' estimates (the convention of synthetic per-channel noise).

    Works one channel at a time (no full-size copy of the image). The luma is built from the
    0-255 channels, not taken as ``luminance(image) * 255``, and the gradient magnitude is
    ``np.hypot``'s: an ulp of difference there moves the 90 % threshold, and on a posterised
    image with thousands of equal gradients at that threshold it moved sigma by 4e-5.

    ``check`` (a progress's ``check``) is called between its photo-sized stages (a 12 MP photo
    took 1.3 s without a look at the cancel).
    """
    import cv2

    def step() -> None:
        if check is not None:
            check()

    img = image if image.ndim == 3 else image[..., None]
    h, w = img.shape[:2]
    if h < 3 or w < 3:
        return 0.0
    if img.shape[2] >= 3:  # luminance() of the 0-255 image, bit for bit
        y = None
        for c, wc in enumerate((0.299, 0.587, 0.114)):
            ch = _channel255(img, c)
            if y is None:
                y = np.multiply(ch, wc, out=ch)
            else:
                y += np.multiply(ch, wc, out=ch)
            del ch
            step()
    else:
        y = _channel255(img, 0)
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)
    del y
    step()
    g = np.hypot(gx, gy, out=gx)[1:-1, 1:-1]
    del gy
    step()
    keep = g <= percentile(g, 90)
    del g, gx
    step()
    if keep.sum() < 16:
        keep = np.ones_like(keep)
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    sigmas = []
    for c in range(min(3, img.shape[2])):
        step()
        ch = _channel255(img, c)
        resp = cv2.filter2D(ch, cv2.CV_32F, k, borderType=cv2.BORDER_REFLECT)
        del ch
        np.abs(resp, out=resp)
        sigmas.append(math.sqrt(math.pi / 2.0) * float(resp[1:-1, 1:-1][keep].mean()) / 6.0)
        del resp
    return float(np.mean(sigmas))


def chroma_noise_ratio(image: np.ndarray, check: Callable[[], None] | None = None) -> float:
    """How noisy a photo's colour is next to its brightness: the noise of the a and b channels
    of OpenCV's 8-bit CIELAB (what NLM smooths with its colour strength) over the noise of its
    L channel, each read by the analyzer's estimator (``understand.measure.estimate_noise``).
    The larger of the ratio at full resolution and on the photo reduced 2x (area average):
    colour noise coarser than a pixel (a 4:2:0 JPEG of a noisy photo) reads low at full
    resolution only. 0.0 for a grey photo, or when the L channel reads no noise. Read on at most
    the middle ``RATIO_SIDE`` px square (its cost and memory stay those of a 4 MP photo).

    On 16 colour photos with noise of sigma 10-30: noise in all three RGB channels (white,
    correlated, or colour at half resolution) read 0.46-0.97; noise in the brightness alone
    0.00-0.32.
    ``check`` (a progress's ``check``) is called between stages.
    """
    import cv2

    from ..understand.measure import estimate_noise

    if image.ndim != 3 or image.shape[2] < 3:
        return 0.0
    # (the noise is the photo's, not a place's: read on at most the middle RATIO_SIDE square,
    # so that a 100-200 MP photo costs no more than a 4 MP one - ~11 bytes a pixel read)
    h, w = image.shape[:2]
    y0, x0 = max(0, (h - RATIO_SIDE) // 2), max(0, (w - RATIO_SIDE) // 2)
    image = image[y0:y0 + RATIO_SIDE, x0:x0 + RATIO_SIDE]

    def ratio(rgb: np.ndarray) -> float:
        lab = cv2.cvtColor(to_uint8(rgb[..., :3], check), cv2.COLOR_RGB2LAB)
        noise = []
        for c in range(3):
            if check is not None:
                check()
            ch = lab[..., c].astype(np.float32)
            ch /= 255.0
            noise.append(estimate_noise(ch))
            del ch
        del lab
        return (noise[1] + noise[2]) / 2.0 / noise[0] if noise[0] > 0 else 0.0

    full = ratio(image)
    h, w = image.shape[:2]
    if h < 4 or w < 4:
        return full
    half = cv2.resize(np.ascontiguousarray(image[:h // 2 * 2, :w // 2 * 2, :3]),
                      (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return max(full, ratio(half))


def chroma_strength(chroma_ratio: float | None) -> float:
    """Colour strength of NLM from sigma ``NLM_RAMP[1]`` up (blended in from ``NLM_RAMP[0]``:
    :func:`nlm_factors`), as a fraction of the brightness strength, for a photo's
    :func:`chroma_noise_ratio` (None: not measured, full strength)."""
    if chroma_ratio is None:
        return 1.0
    return float(np.interp(chroma_ratio, [CHROMA_NOISE_LOW, CHROMA_NOISE_FULL],
                           [LOW_CHROMA_STRENGTH, 1.0]))


def nlm_factors(sigma: float, chroma_ratio: float | None = None) -> tuple[float, float]:
    """(brightness strength / sigma, colour strength / brightness strength) of NLM for noise
    ``sigma``: ``NLM_LOW`` up to ``NLM_RAMP[0]``, from ``NLM_RAMP[1]`` up ``NLM_HIGH_FACTOR``
    with :func:`chroma_strength` of ``chroma_ratio``, linear in sigma between them."""
    lo, hi = NLM_RAMP
    if sigma <= lo:
        return NLM_LOW
    colour = chroma_strength(chroma_ratio)
    if sigma >= hi:
        return NLM_HIGH_FACTOR, colour
    t = (sigma - lo) / (hi - lo)
    return (NLM_LOW[0] + t * (NLM_HIGH_FACTOR - NLM_LOW[0]),
            NLM_LOW[1] + t * (colour - NLM_LOW[1]))


def nlm_denoise(image: np.ndarray, sigma: float, strength: float = 1.0,
                chroma_ratio: float | None = None) -> np.ndarray:
    """Non-local means with the filter strength taken from the noise sigma (0-255 scale).

    Brightness strength ``h`` = factor x sigma x ``strength``, colour (CIELAB a, b) strength a
    fraction of ``h``, both from :func:`nlm_factors`: 0.8 sigma with half of it for the colour
    up to sigma ``NLM_RAMP[0]``; from ``NLM_RAMP[1]`` up 1.05 sigma with :func:`chroma_strength`
    of ``chroma_ratio`` (the photo's :func:`chroma_noise_ratio`; None: the colour as strong as
    the brightness); blended linearly in between.

    OpenCV's NLM works on 8-bit data; to keep the precision of 16-bit sources only the
    *change* NLM makes is applied to the float image.
    """
    import cv2

    factor, colour = nlm_factors(sigma, chroma_ratio)
    h = float(np.clip(factor * sigma * strength, 1.0, 40.0))
    h_color = colour * h
    u8 = to_uint8(image)
    den = cv2.fastNlMeansDenoisingColored(u8, None, h, h_color, 7, 21)
    delta = (den.astype(np.float32) - u8.astype(np.float32)) / 255.0
    return np.clip(image + delta, 0.0, 1.0).astype(np.float32)


def recover_detail(noisy: np.ndarray, denoised: np.ndarray, sigma: float) -> np.ndarray:
    """``denoised`` with a share of what the denoiser took away put back where that holds more
    than noise of ``sigma`` (0-255 scale): the share is a Wiener gain of the residual's local
    energy (see ``DETAIL_WINDOW``), 0 where the residual is noise, towards 1 where it is mostly
    texture. Each pixel lies between the denoised and the noisy value. Works on a tile: a few
    tile-sized float32 temporaries (one 3-channel, three 1-channel)."""
    import cv2

    if sigma <= 0:
        return denoised
    r = np.subtract(noisy, denoised, dtype=np.float32)
    e = r * np.float32(255.0)
    np.square(e, out=e)
    energy = e.mean(axis=2, dtype=np.float32) if e.ndim == 3 else e
    del e
    v = cv2.GaussianBlur(energy, (0, 0), DETAIL_WINDOW, borderType=cv2.BORDER_REFLECT)
    del energy
    w = np.subtract(v, np.float32(DETAIL_NOISE_FACTOR * sigma * sigma))
    np.maximum(w, 0.0, out=w)
    w /= np.maximum(v, np.float32(1e-6), out=v)
    del v
    w = cv2.GaussianBlur(w, (0, 0), DETAIL_GAIN_SMOOTH, borderType=cv2.BORDER_REFLECT_101)
    r *= w[..., None] if r.ndim == 3 else w
    r += denoised
    return np.clip(r, 0.0, 1.0, out=r)


def unsharp_mask(image: np.ndarray, amount: float = 0.6, radius: float = 1.2,
                 threshold: float = 0.004) -> np.ndarray:
    """Unsharp mask on the luma only (no colour fringes), with a small noise threshold.

    ``amount`` scales the detail layer, ``radius`` is the Gaussian sigma in pixels and
    details weaker than ``threshold`` (0-1 scale) are faded in softly instead of boosted.
    """
    import cv2

    y = luminance(image)
    blur = cv2.GaussianBlur(y, (0, 0), sigmaX=max(radius, 0.3), borderType=cv2.BORDER_REFLECT)
    detail = y - blur
    if threshold > 0:
        mag = np.abs(detail)
        detail = detail * np.clip(mag / (2.0 * threshold), 0.0, 1.0)
    out = image + amount * detail[..., None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _sigma_for(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> tuple[float, str]:
    if params.get("sigma") is not None:
        return float(params["sigma"]), "given"
    est = ctx.diagnosis.estimates.get("noise_sigma") if ctx.diagnosis is not None else None
    if est is not None:
        try:
            return float(est), "diagnosis"
        except (TypeError, ValueError):
            pass
    # (a preview measures the whole photo's noise, as the whole fix does). This reading
    # (Immerkaer) takes correlated camera noise for a fraction of its size (Bayer: ~0.2-0.4 of
    # it); measure.noise_sigma reads it at its size, but as this fallback it failed session 18's
    # rule (bench/denoise_detail.py sd-fallback: +2.87 dB mean, single cases -2.5 dB, and it
    # changes which noise-free photos are denoised), so it is kept.
    seen = image if ctx.whole is None else ctx.whole.view(image, ctx.progress.check)
    return estimate_noise_sigma(seen, ctx.progress.check), "measured"


def _tiled(image: np.ndarray, fn, ctx: StepContext, overlap: int = 32) -> np.ndarray:
    from ..tiling import run_tiled

    return run_tiled(image, fn, tile=max(ctx.tile_size, 128), overlap=overlap,
                     progress=ctx.progress, device=ctx.device)


@register_step(
    "denoise_builtin",
    description="Non-local-means denoising; strength follows the measured noise, texture it "
                "smoothed is put back (no download).",
    defaults={"strength": 1.0, "sigma": None},
)
def denoise_builtin(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    strength = float(params.get("strength", 1.0))
    if strength <= 0:  # (nothing to measure either)
        ctx.progress.update(1.0, "denoising off")
        return StepOutput(image, "builtin:nlm", "skipped: strength 0")
    sigma, source = _sigma_for(image, params, ctx)
    if sigma * strength < MIN_DENOISE_SIGMA:
        ctx.progress.update(1.0, "no visible noise")
        return StepOutput(image, "builtin:nlm",
                          f"skipped: noise sigma {sigma:.1f} ({source}) is below "
                          f"{MIN_DENOISE_SIGMA}")
    ctx.progress.update(0.0, f"denoising (sigma {sigma:.1f})")
    ratio = None
    colour = ""
    if sigma > NLM_RAMP[0]:  # (up to there the colour strength is half the brightness one)
        # measured once on the whole photo (a preview's too), not per tile
        seen = image if ctx.whole is None else ctx.whole.view(image, ctx.progress.check)
        ratio = chroma_noise_ratio(seen, ctx.progress.check)
        if chroma_strength(ratio) < 1.0:
            colour = (f", colour strength {nlm_factors(sigma, ratio)[1]:.2f} "
                      f"(colour/brightness noise {ratio:.2f})")

    def tile(t: np.ndarray) -> np.ndarray:
        # one tile of OpenCV's NLM took up to 1.7 s (608 px, a busy machine): it is abandoned
        # on a cancel. The detail put back is judged against the noise the strength assumes.
        return call_cancellable(
            lambda: recover_detail(t, nlm_denoise(t, sigma, strength, ratio), sigma * strength),
            ctx.progress.check, slot=_NLM_SLOT, name="mend-nlm")

    out = _tiled(image, tile, ctx, overlap=48)
    ctx.progress.update(1.0, "denoised")
    return StepOutput(out, "builtin:nlm",
                      f"sigma {sigma:.1f} ({source}), strength {strength:g}{colour}")


@register_step(
    "sharpen_builtin",
    description="Unsharp mask on the luminance (no download).",
    defaults={"strength": 0.6, "radius": 1.2},
)
def sharpen_builtin(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    amount = float(params.get("strength", 0.6))
    radius = float(params.get("radius", 1.2))
    if amount <= 0:
        ctx.progress.update(1.0, "sharpening off")
        return StepOutput(image, "builtin:unsharp", "skipped: strength 0")
    ctx.progress.update(0.0, "sharpening")
    pad = math.ceil(radius * 4) + 4
    out = _tiled(image, lambda t: unsharp_mask(t, amount, radius), ctx, overlap=2 * pad)
    ctx.progress.update(1.0, "sharpened")
    return StepOutput(out, "builtin:unsharp", f"strength {amount:g}, radius {radius:g}")
