"""Chain C motion deblurring: NAFNet (GoPro, width 64) tiled, or built-in deconvolution.

``deblur_nafnet`` runs the public NAFNet deblurring weights through spandrel, tile by tile
(tiles padded to multiples of 16, the network's down-sampling factor): its ``model`` param
chooses NAFNet-GoPro-width64 (the default), NAFNet-GoPro-width32 (the same training at half the
width: about 0.3x the time on a CPU, see ``engine.estimate.MODEL_COST_RATIO``) or
NAFNet-REDS-width64 (trained on REDS, whose blurred frames are also JPEG-compressed).
spandrel builds plain NAFNet (the width and blocks read from the weights); the releases were
evaluated with test-time local statistics (NAFNetLocal), which tiling approximates by keeping
the global pooling local to a tile.

``deblur_builtin`` needs no download. It deconvolves a linear motion kernel of the length and
angle the analyzer measured (``diagnosis.estimates["blur_length"]`` px and ``"blur_angle"``
degrees, 0 = horizontal, counter-clockwise) with a Wiener filter whose regularisation follows
a natural-image (1/f^2) prior and the measured noise sigma, after tapering the padded borders
toward the blurred image so the FFT's wrap-around does not ring.

It deconvolves only when the estimate is trustworthy: the analyzer's cepstral search bottoms
out at about 3.7 px (no line blur resolved), and real camera shake (GoPro) is neither linear nor
uniform, so it reads at that floor or with weak cepstral evidence. Deconvolving such photos
with a guessed line kernel lowered PSNR against the sharp ground truth (GoPro "Flower" pair:
25.11 -> 23.83 dB), while a mild unsharp mask raised it (25.20 dB). An unconfident estimate
therefore gets that mild sharpening instead.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .registry import StepContext, StepOutput, param_choice, register_step, step_tile

NAFNET_GOPRO = "nafnet-gopro-w64"
# the weights ``deblur_nafnet`` can run (its ``model``), the default first
DEBLUR_MODELS = (NAFNET_GOPRO, "nafnet-gopro-w32", "nafnet-reds-w64")
MIN_BLUR_LENGTH = 3.0  # px: below this a linear-kernel deconvolution does more harm than good
MAX_BLUR_LENGTH = 120.0
# the analyzer's cepstral search starts at 3 px and reports ~3.7 px when it resolved nothing;
# a length this close to the floor is not a measurement
CONFIDENT_LENGTH = 4.5
# cepstral evidence (peak depth / spread) a length needs to be trusted. Measured with
# engine.understand.measure on 400-1280 px photos: synthetic line blurs 7-25 px with noise
# sigma 0.5-5 read 5.1-30 (lengths within 0.5 px); sharp photos that read off the floor did so
# at 4.8-5.6 px with 5.5-8.7; a real, non-linear motion blur (skimage clock) read 36 px at 4.2.
MIN_EVIDENCE = 5.0
MIN_EVIDENCE_SHORT = 10.0  # below SHORT_LENGTH px a spurious off-floor reading is common
SHORT_LENGTH = 7.0
# regularisation: |K|^2 + A0 + (LAM0 + LAM_SIGMA * sigma^2) * |grad|^2 (Wiener filter with a
# 1/f^2 image prior). Chosen on 72 synthetic cases (6 real photos x 4 kernels 7-25 px x noise
# 0.5/2/5): mean gain +3.96 dB, worst +2.20 dB; the old constant-NSR filter: +2.66 / -3.89 dB.
A0 = 0.003
LAM0 = 0.001
LAM_SIGMA = 0.002
# the fallback for an unconfident estimate (same as the plan's "no measurable blur" sharpening)
FALLBACK_SHARPEN = (0.4, 1.5)


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


def _cos_ramp(n: int, lo: int, hi: int | None = None) -> np.ndarray:
    """1 in the middle, raised-cosine down to 0 over the first ``lo`` and the last ``hi``
    samples (``hi`` = ``lo`` when not given)."""
    w = np.ones(n, np.float32)
    for m, at_end in ((lo, False), (lo if hi is None else hi, True)):
        if m > 0:
            t = (np.arange(m, dtype=np.float32) + 0.5) / m
            r = 0.5 - 0.5 * np.cos(np.pi * t)
            if at_end:
                w[n - m:] = r[::-1]
            else:
                w[:m] = r
    return w


def fft_padding(n: int, p: int) -> tuple[int, int]:
    """(before, after) padding of an axis of ``n`` samples: at least ``p`` on each side, and
    together up to the next fast FFT length (``scipy.fft.next_fast_len``, 2-3-5-smooth), the
    extra split between the two sides (the taper spans each side's whole padding). At the bare
    padded sizes (often with a large prime factor: 4061 = 31 x 131) the deconvolution took
    1.2-3.1x as long (0.12-0.46 s/MP against 0.08-0.22 at 0.3-24 MP, 1 thread, 2026-12-07),
    and photos of one size differed 1.7-2.2x from one another. Its result moves only where the
    filter's tails wrap around, near the frame: on real photos within 1e-3 beyond twice the
    padding for a 9 px kernel."""
    from scipy import fft

    extra = fft.next_fast_len(n + 2 * p, real=True) - (n + 2 * p)
    return p + extra // 2, p + extra - extra // 2


def _grad_power(shape: tuple[int, int]) -> np.ndarray:
    """|Dx|^2 + |Dy|^2 of forward differences on the rfft2 grid of ``shape`` (float32: only
    the two axes are computed in float64, not the photo-sized grid)."""
    h, w = shape
    fy = (4.0 * np.sin(np.pi * np.fft.fftfreq(h)) ** 2).astype(np.float32)
    fx = (4.0 * np.sin(np.pi * np.fft.rfftfreq(w)) ** 2).astype(np.float32)
    return fy[:, None] + fx[None, :]


def regularisation(noise_sigma: float) -> tuple[float, float]:
    """(constant, gradient) regularisation weights for a noise sigma on the 0-255 scale."""
    s = float(np.clip(noise_sigma, 0.0, 30.0))
    return A0, LAM0 + LAM_SIGMA * s * s


def wiener_deconvolve(image: np.ndarray, psf: np.ndarray, nsr: float = 0.01,
                      progress: Any = None, grad_weight: float = 0.0,
                      workers: int = 1) -> np.ndarray:
    """Wiener deconvolution of an (H, W, C) float image by ``psf``.

    The filter is ``conj(K) / (|K|^2 + nsr + grad_weight * |grad|^2)``: ``nsr`` is a flat
    noise-to-signal ratio, ``grad_weight`` the weight of a gradient (1/f^2 image spectrum)
    prior that damps exactly the high frequencies where noise amplification and ringing live.
    The image is padded (reflect) by twice the kernel size and 8 px, and further to fast FFT
    lengths (``fft_padding``; the result is cropped back to the photo's pixels); the padding is
    cross-faded into its own circularly blurred copy (edge tapering), which makes the padded
    image consistent with the FFT's periodic model so the borders do not ring.

    A cancel (``progress``) is looked at between each two photo-sized operations: on a 12 MP
    photo a channel took 2.5-3 s between two looks, the set-up 1.6 s (a busy machine). Each
    channel is padded on its own (no padded copy of the whole photo); ``workers``: threads of
    each FFT (the same numbers with any count).
    """
    import cv2
    from scipy import fft

    def check() -> None:
        if progress is not None:
            progress.check()

    h, w = image.shape[:2]
    p = int(2 * max(psf.shape) + 8)
    img = image if image.ndim == 3 else image[..., None]
    nc = img.shape[2]
    top, bottom = fft_padding(h, p)
    left, right = fft_padding(w, p)
    ph, pw = h + top + bottom, w + left + right
    workers = max(1, int(workers))
    # (spectra in single precision and updated in place: a 24 MP photo peaked at 1.6 GB over
    # the photo with a photo-sized float64 grid and a new array per operation, ~1 GB now)
    otf = _psf_otf(psf, (ph, pw))
    check()
    den = np.abs(otf)
    np.square(den, out=den)
    den += np.float32(nsr)
    check()
    if grad_weight > 0:
        grad = _grad_power((ph, pw))
        grad *= np.float32(grad_weight)
        den += grad
        del grad
        check()
    wiener = np.conj(otf)
    wiener /= den
    del den
    check()
    taper = (_cos_ramp(ph, top, bottom)[:, None] * _cos_ramp(pw, left, right)[None, :])
    out = np.empty((h, w, nc), np.float32)
    for c in range(nc):
        if progress is not None:
            progress.update(c / nc, f"deconvolving channel {c + 1}")
        ch = cv2.copyMakeBorder(np.ascontiguousarray(img[..., c], dtype=np.float32),
                                top, bottom, left, right, cv2.BORDER_REFLECT)
        check()
        f = fft.rfft2(ch, workers=workers)
        check()
        f *= otf
        check()
        blurred = fft.irfft2(f, s=(ph, pw), workers=workers)
        del f
        check()
        # taper * ch + (1 - taper) * blurred
        mix = taper * ch
        blurred *= 1.0 - taper
        mix += blurred
        del blurred, ch
        check()
        f = fft.rfft2(mix, workers=workers)
        del mix
        check()
        f *= wiener
        check()
        res = fft.irfft2(f, s=(ph, pw), workers=workers)
        del f
        check()
        out[..., c] = res[top:top + h, left:left + w]
        del res
    return np.clip(out, 0.0, 1.0, out=out)


def fade_to_borders(before: np.ndarray, after: np.ndarray, width: float) -> np.ndarray:
    """``after`` in the interior, cross-faded (raised cosine) to ``before`` over the outer
    ``width`` px. Within a kernel length of the frame the blur mixed in scene content that is
    not in the photo, so nothing there can be deconvolved reliably (measured on a synthetic
    15 px blur: border error 0.00141 -> 0.00073, below the blurred input's 0.00093)."""
    h, w = before.shape[:2]

    def ramp(n: int) -> np.ndarray:  # along one axis: the raised cosine of the distance
        d = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float32)
        t = np.clip((d + 0.5) / max(1.0, width), 0.0, 1.0)
        return (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)

    # the ramp of the nearer border = the smaller of the two axes' ramps (it only grows): no
    # photo-sized int64 distance grid, one float32 weight map
    wt = np.minimum(ramp(h)[:, None], ramp(w)[None, :])
    out = np.subtract(after, before, dtype=np.float32)
    out *= wt[..., None]
    out += before
    return out


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def blur_confidence(length: float, evidence: float | None) -> tuple[bool, str]:
    """Is a measured line-blur estimate worth deconvolving? (ok, why-not)."""
    if length < CONFIDENT_LENGTH:
        return False, (f"the measured length {length:.1f} px is at the analyzer's floor "
                       "(no linear motion blur resolved)")
    if evidence is not None:
        need = MIN_EVIDENCE_SHORT if length < SHORT_LENGTH else MIN_EVIDENCE
        if evidence < need:
            return False, (f"weak evidence for a {length:.1f} px line blur "
                           f"({evidence:.1f} < {need:g})")
    return True, ""


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
    defaults={"length": None, "angle": None, "nsr": None, "strength": 1.0},
)
def deblur_builtin(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    from .classical import estimate_noise_sigma, unsharp_mask

    # (first: at strength 0 the step changes nothing, neither the mild sharpening it falls back
    # on when its blur estimate is not confident nor the deconvolution, and measures nothing)
    strength = float(np.clip(_num(params.get("strength", 1.0)) or 0.0, 0.0, 1.0))
    if strength <= 0:
        ctx.progress.update(1.0, "deblurring off")
        return StepOutput(image, "builtin:wiener", "skipped: strength 0")
    length, angle = _blur_estimate(params, ctx)
    if length is None or not math.isfinite(length) or length < MIN_BLUR_LENGTH:
        ctx.progress.update(1.0, "no measurable motion blur")
        what = "no blur estimate" if length is None else f"blur length {length:.1f} px"
        return StepOutput(image, "builtin:wiener",
                          f"skipped: {what} (deconvolution needs at least {MIN_BLUR_LENGTH:g} px)")
    est = ctx.diagnosis.estimates if ctx.diagnosis is not None else {}
    measured = _num(est.get("blur_length"))
    # the confidence test applies to the analyzer's own length; a length the user typed in
    # (different from the measured one) is taken as given
    if params.get("length") is None or (measured is not None and
                                        abs(measured - length) <= 0.5):
        ok, why = blur_confidence(length, _num(est.get("motion_evidence")))
        if not ok:
            amount, radius = FALLBACK_SHARPEN
            amount *= strength  # (the step's strength scales what it does, this too)
            ctx.progress.update(0.0, "blur estimate not confident: mild sharpening")
            out = unsharp_mask(image, amount, radius)
            ctx.progress.update(1.0, "sharpened")
            return StepOutput(out, "builtin:wiener",
                              f"no deconvolution: {why}; mild sharpening instead "
                              f"(unsharp {amount:g}, radius {radius:g})")
    if length > MAX_BLUR_LENGTH:
        ctx.warnings.append(f"motion blur of {length:.0f} px is too long for the built-in "
                            f"deblurring; limited to {MAX_BLUR_LENGTH:.0f} px")
        length = MAX_BLUR_LENGTH
    sigma = _num(est.get("noise_sigma"))
    if sigma is None:  # (a preview measures the whole photo's noise, as the whole fix does)
        seen = image if ctx.whole is None else ctx.whole.view(image, ctx.progress.check)
        sigma = estimate_noise_sigma(seen, ctx.progress.check)
    nsr, lam = regularisation(sigma)
    if params.get("nsr") is not None:
        nsr = float(params["nsr"])
    psf = motion_psf(length, angle)
    ctx.progress.update(0.0, f"deconvolving {length:.0f} px motion blur")
    out = wiener_deconvolve(image, psf, nsr, ctx.progress, grad_weight=lam,
                            workers=ctx.device.threads)
    ctx.progress.check()
    out = fade_to_borders(image, out, max(4.0, length))
    if strength < 1.0:
        ctx.progress.check()
        out = image + strength * (out - image)
    ctx.progress.update(1.0, "deblurred")
    return StepOutput(out, "builtin:wiener",
                      f"kernel {length:.1f} px at {angle:.0f} deg, noise sigma {sigma:.1f}, "
                      f"regularisation {nsr:.4f} + {lam:.4f}|grad|^2, strength {strength:g}")


@register_step(
    "deblur_nafnet",
    models=(NAFNET_GOPRO,),
    description="NAFNet motion deblurring, tiled (model: GoPro width 64, the lighter GoPro "
                "width 32, or REDS width 64).",
    defaults={"model": NAFNET_GOPRO, "tile": None},
    choices={"model": DEBLUR_MODELS},
)
def deblur_nafnet(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    from ..tiling import run_tiled, torch_fn

    model_id = param_choice("deblur_nafnet", params)
    tile = step_tile(params, ctx, "deblur_nafnet")
    ctx.progress.update(0.0, f"loading NAFNet ({model_id})")
    desc = ctx.runtime.load_image_model(model_id)
    dtype = next(desc.model.parameters()).dtype
    out = run_tiled(image, torch_fn(desc, ctx.device, dtype, check=ctx.progress.check),
                    tile=tile, overlap=32,
                    pad_multiple=16, balance=True,
                    progress=ctx.progress, device=ctx.device)
    return StepOutput(out, model_id, f"tiles of {tile} px")
