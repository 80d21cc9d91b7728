"""Regression guard: is a restoration result worse than its input?

``check(before, after)`` compares a chain's result with the photo it started from:

* **validity** - NaN/inf, wrong shape, a changed aspect ratio;
* **fidelity on the downscaled content** - both images are reduced to the same small size
  (at most ``FIDELITY_SIDE`` px and at least 4x smaller, area averaging, so a legitimate x2/x4 result compares fairly) and
  compared with PSNR and SSIM on the luma; a result whose *content* changed that much is a
  failure, not a restoration. Blank/black outputs and a global colour cast (mean colour
  distance in CIELAB) are caught here too;
* **no-reference quality** at the input's resolution - noise (Immerkaer sigma over the whole
  image, and the analyzer's estimate on its least textured blocks, which detail brought back
  by a deblur does not raise; amplification must show in both), JPEG-style
  8x8 blockiness and edge sharpness of the result against the input. A result noticeably
  noisier, blockier, or blurrier without being cleaner, is rejected. Noise that more than
  doubles (``amp_ratio``) is rejected even when small in absolute terms: that is what a
  deconvolution with the wrong kernel does to real camera shake (fine ripples on smooth
  areas; GoPro "Flower": sigma 0.93 -> 4.13 while PSNR against the sharp frame fell 1.28 dB);
* **ringing / overshoot** - how far the result's luma leaves the input's own local range
  (min..max in a ``RING_RADIUS`` window), on average, absolutely and relative to that range.
  Deblurring legitimately leaves it (a blurred edge is lower than the sharp one), so only a
  large excursion counts: the sharp ground truth of 16 synthetic blurs (9-21 px) reached at
  most 7.2/255 (0.105 of the local range); deconvolutions with a wrong kernel 2.6-16.7/255;
* **banding** - the number of distinct luma tones: a posterised result (a broken half-precision
  path, a bad quantisation) keeps a fraction of the input's tones;
* **ripples** - gradient density, the L1/L2 ratio of the luma gradient magnitudes (natural
  photos have sparse gradients; blur spreads them, deblurring makes them sparser again, while
  ripples and ringing fill smooth areas with small gradients). On the same synthetic set the
  sharp ground truth lowered it (x0.64-0.97 of the blurred input), correct deconvolutions
  changed it x0.93-1.17, SR and denoise+sharpen results x0.42-1.03, and deconvolving an
  already sharp photo raised it x1.21-1.32.

``mask`` (uint8, 255 = pixels the chain was asked to replace, e.g. an inpainted reflection)
excludes those pixels from the fidelity and colour checks. The pipeline keeps the original
and reports ``reason`` when ``ok`` is False.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..understand.measure import estimate_noise
from .classical import estimate_noise_sigma, luminance, percentile

FIDELITY_SIDE = 256


@dataclass(frozen=True)
class GuardThresholds:
    min_psnr: float = 16.0  # dB on the downscaled content
    min_ssim: float = 0.45
    max_color_shift: float = 10.0  # CIELAB distance between the mean colours
    max_mean_shift: float = 0.2  # brightness (0-1) change of the mean
    noise_ratio: float = 1.6  # after sigma may be at most ratio * before + noise_margin
    noise_margin: float = 4.0
    blockiness_margin: float = 0.25
    min_sharpness_ratio: float = 0.55  # when the input was not noisy
    max_aspect_change: float = 0.03
    amp_ratio: float = 2.5  # after sigma may also be at most amp_ratio * before + amp_margin
    amp_margin: float = 1.25
    smooth_amp_ratio: float = 2.0  # ...and on the least textured blocks (see check)
    smooth_amp_margin: float = 0.5
    # posterisation (a broken fp16 path, a bad quantisation): distinct luma tones after /
    # before; heavy denoising of the test photos kept >= 0.42, 4 levels per channel <= 0.15
    min_tone_ratio: float = 0.2
    min_tones_checked: int = 64  # a photo with fewer tones (a drawing, a chart) is not judged
    max_overshoot: float = 8.0  # mean excursion outside the input's local range (0-255)...
    max_overshoot_rel: float = 0.08  # ...and relative to that range; both must be exceeded
    max_density_ratio: float = 1.2  # gradient density after / before


RING_RADIUS = 8  # px: the local-range window is (2r+1)^2 at the input's resolution


@dataclass(frozen=True)
class GuardVerdict:
    ok: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)


def _fail(reason: str, metrics: dict[str, Any]) -> GuardVerdict:
    return GuardVerdict(False, reason, metrics)


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if (img.shape[1], img.shape[0]) == size:
        return img.astype(np.float32, copy=False)
    return cv2.resize(img.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)


def _clipped_at(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``np.clip(_resize(img, size), 0, 1)`` without a full-size copy when neither is needed
    (a same-size result already in 0..1: the usual case) and clipped in place after a resize."""
    r = _resize(img, size)
    if r is not img:
        return np.clip(r, 0, 1, out=r)
    if float(r.min()) >= 0.0 and float(r.max()) <= 1.0:
        return r
    return np.clip(r, 0, 1)


def _ssim(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Mean SSIM of two single-channel images in [0, 1] (Gaussian window, sigma 1.5)."""
    import cv2

    c1, c2 = (0.01) ** 2, (0.03) ** 2

    def blur(x):
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    if weight is not None and weight.sum() > 0:
        return float((s * weight).sum() / weight.sum())
    return float(s.mean())


def _psnr(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None = None) -> float:
    d = (a - b) ** 2
    if d.ndim == 3 and weight is not None:
        weight = weight[..., None] * np.ones_like(d)
    mse = float((d * weight).sum() / weight.sum()) if weight is not None and weight.sum() > 0 \
        else float(d.mean())
    return 99.0 if mse <= 1e-12 else 10.0 * math.log10(1.0 / mse)


BLOCKINESS_MIN_BLOCKS = 16  # per axis: 128 px


_LUMA_BAND = 1 << 22  # pixels of a luma made at a time when a cancel is looked at between


def luma(image: np.ndarray, check: Callable[[], None] | None = None) -> np.ndarray:
    """``classical.luminance`` (Rec. 601, float32), bit for bit, with one temporary instead of
    four: ``check`` computes each image's luma once and hands it to every measurement below
    (they all accept a 2-D luma in place of the RGB image). ``check`` (a cancel check): made in
    bands of rows with it called between them (one took 0.8-1.0 s at 64.5 MP)."""
    if image.ndim == 2:
        return image if image.dtype == np.float32 else image.astype(np.float32)
    if image.dtype != np.float32:
        return luminance(image)
    h, w = image.shape[:2]
    rows = max(1, _LUMA_BAND // max(1, w))
    if check is not None and h > rows:
        y = np.empty((h, w), np.float32)
        for r in range(0, h, rows):
            check()
            y[r:r + rows] = luma(image[r:r + rows])
        return y
    y = np.multiply(image[..., 0], np.float32(0.299), dtype=np.float32)
    t = np.multiply(image[..., 1], np.float32(0.587), dtype=np.float32)
    y += t
    y += np.multiply(image[..., 2], np.float32(0.114), out=t)
    return y


def blockiness(image: np.ndarray) -> float:
    """JPEG-style blocking: the luma jump across 8x8 block borders over the jump inside blocks.

    Per column (and row) the mean absolute step is taken; for each of the 8 grid phases the
    *median* over the image of those steps is used, so a few strong edges that happen to lie
    on the grid do not count, while real blocking (every border a little stronger) does.
    About 1 without blocking. An axis with fewer than ``BLOCKINESS_MIN_BLOCKS`` blocks is not
    measured (a median over a handful of borders is noise: a faithful Real-ESRGAN result on a
    72-px crop read 1.35); with no measurable axis the answer is 1. ``image``: RGB or its luma.
    """
    y = luma(image) * 255.0
    h, w = y.shape
    min_side = 8 * BLOCKINESS_MIN_BLOCKS

    def ratio(profile: np.ndarray) -> float:
        phases = [float(np.median(profile[p::8])) for p in range(8)]
        inside = float(np.median(phases[:7]))
        return (phases[7] + 0.05) / (inside + 0.05)

    def steps(axis: int) -> np.ndarray:
        d = np.diff(y, axis=axis)
        return np.abs(d, out=d)

    ratios = []
    if w >= min_side:
        ratios.append(ratio(steps(1).mean(axis=0)))
    if h >= min_side:
        ratios.append(ratio(steps(0).mean(axis=1)))
    return float(np.mean(ratios)) if ratios else 1.0


def sharpness(image: np.ndarray) -> float:
    """Edge strength: the 99th percentile of the luma gradient magnitude (0-255 scale).
    ``image``: RGB or its luma."""
    import cv2

    y = luma(image) * 255.0
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)
    del y
    return percentile(cv2.magnitude(gx, gy, gx), 99)  # np.hypot within an ulp


def overshoot(before: np.ndarray, after: np.ndarray, radius: int = RING_RADIUS,
              weight: np.ndarray | None = None, check: Callable[[], None] | None = None
              ) -> tuple[float, float]:
    """Ringing / halo measure: the mean amount (0-255) by which the luma of ``after`` (same
    size as ``before``) leaves the local min..max of ``before`` in a (2r+1)^2 window, and that
    amount relative to the mean local range. ``weight`` (0/1, same size) limits the average.
    ``before``/``after``: RGB or their lumas. ``check`` (a cancel check) is called between its
    stages (1.1 s in all at 64.5 MP)."""
    import cv2

    def step() -> None:
        if check is not None:
            check()

    yb, ya = luma(before, check), luma(after, check)
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    hi = cv2.dilate(yb, k)
    step()
    lo = cv2.erode(yb, k)
    step()
    # ex = max(ya - hi, 0) + max(lo - ya, 0) and rng = hi - lo in three planes
    ex = np.subtract(ya, hi)
    np.maximum(ex, 0.0, out=ex)
    rng = np.subtract(hi, lo, out=hi)
    step()
    ex += np.maximum(np.subtract(lo, ya, out=lo), 0.0, out=lo)
    del lo, hi
    step()
    if weight is not None and weight.sum() > 0:
        ex, rng = ex[weight > 0], rng[weight > 0]
    mean_ex = float(ex.mean())
    return mean_ex * 255.0, mean_ex / max(float(rng.mean()), 1e-3)


def gradient_density(image: np.ndarray, weight: np.ndarray | None = None) -> float:
    """L1/L2 ratio of the luma gradient magnitudes: low for sparse (sharp, clean) gradients,
    higher when small gradients are everywhere (blur, ripples, noise). ``image``: RGB or its
    luma."""
    import cv2

    y = luma(image)
    if min(y.shape[:2]) < 2:  # a photo 1 px wide or tall has no 2-D gradient
        return 0.0
    g = np.subtract(y[:-1, 1:], y[:-1, :-1])
    dy = np.subtract(y[1:, :-1], y[:-1, :-1])
    cv2.magnitude(g, dy, g)  # np.hypot within an ulp
    del dy
    if weight is not None and weight.sum() > 0:
        g = g[weight[:-1, :-1] > 0]
    if g.size == 0:  # (a photo 1 px wide or tall, a weight only on its last row/column)
        return 0.0
    l1 = float(g.mean())
    # the mean square in float64 without a float64 copy: float32 squares (relative error
    # < 6e-8 each), summed in float64 by numpy's buffered reduction
    l2 = math.sqrt(float(np.square(g, out=g).sum(dtype=np.float64)) / g.size) if g.size else 0.0
    return l1 / l2 if l2 > 1e-9 else 0.0


def tone_levels(image: np.ndarray) -> int:
    """How many of the 256 luma levels hold at least 0.02 % of the pixels. ``image``: RGB or
    its luma."""
    y = luma(image)
    counts = np.zeros(256, np.int64)
    rows = max(1, (1 << 20) // max(1, y.shape[1]))  # ~1 Mpx at a time: no full int64 copy
    for r in range(0, y.shape[0], rows):
        part = y[r:r + rows] * 255.0
        np.round(part, out=part)
        np.clip(part, 0, 255, out=part)
        counts += np.bincount(part.astype(np.int64).ravel(), minlength=256)
    return int((counts >= max(1.0, 0.0002 * y.size)).sum())


def _in_srgb(img: np.ndarray, icc: bytes | None) -> np.ndarray:
    """A small float RGB image in the profile ``icc``, in sRGB (8 bits are plenty for a mean
    colour); as it is without a profile. Else Lab would read a wide-gamut photo's values as
    sRGB ones: an Adobe RGB or ProPhoto colour change measured as another size than it is."""
    if not icc:
        return img
    from PIL import Image

    from ..imageio import rgb_to_srgb

    im = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    out = rgb_to_srgb(im, icc)
    if out is im:  # (not an RGB profile LittleCMS can use: the values as they are)
        return img
    return np.asarray(out, dtype=np.float32) / 255.0


def _mean_lab(img: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    import cv2

    lab = cv2.cvtColor(np.clip(img, 0, 1).astype(np.float32), cv2.COLOR_RGB2Lab)
    if weight is not None and weight.sum() > 0:
        return (lab * weight[..., None]).sum(axis=(0, 1)) / weight.sum()
    return lab.reshape(-1, 3).mean(axis=0)


def check(before: np.ndarray, after: np.ndarray, *, mask: np.ndarray | None = None,
          thresholds: GuardThresholds | None = None,
          cancel_check: Callable[[], None] | None = None,
          icc: bytes | None = None) -> GuardVerdict:
    """Compare a result with its input; ``after`` may be larger by an integer SR scale.
    ``cancel_check`` (raises to stop) is called between the measurements, each well under a
    second on a 12 MP photo. ``icc``: the RGB profile both are in (the photo's own; None:
    sRGB): the colour shift is measured in CIELAB from the colours it describes.

    Returns ``GuardVerdict(ok, reason, metrics)``; ``reason`` is a short sentence for the
    user when ``ok`` is False (and "" otherwise).
    """
    t = thresholds or GuardThresholds()
    m: dict[str, Any] = {}
    tick = cancel_check or (lambda: None)
    after = np.asarray(after)
    before = np.asarray(before, dtype=np.float32)
    if after.ndim != 3 or after.shape[2] != 3:
        return _fail(f"the result has an unexpected shape {tuple(after.shape)}", m)
    if not np.isfinite(after).all():
        return _fail("the result contains invalid (NaN/infinite) pixels", m)
    after = after.astype(np.float32, copy=False)
    bh, bw = before.shape[:2]
    ah, aw = after.shape[:2]
    m["scale"] = round(aw / bw, 3)
    if abs((ah / aw) / (bh / bw) - 1.0) > t.max_aspect_change or ah < bh // 2 or aw < bw // 2:
        return _fail(f"the result is {aw}x{ah}, which does not match the {bw}x{bh} input", m)

    # --- fidelity on the downscaled content -------------------------------------------------
    # at most FIDELITY_SIDE px and at least 4x smaller: content, not noise or fine texture
    s = min(0.25, FIDELITY_SIDE / max(bh, bw))
    size = (max(16, round(bw * s)), max(16, round(bh * s)))
    tick()  # (from here on each of these took 0.2-0.5 s at 64.5 MP)
    b_small = np.clip(_resize(before, size), 0, 1)
    tick()
    a_small = np.clip(_resize(after, size), 0, 1)
    weight = None
    if mask is not None and np.any(mask):
        tick()
        weight = (_resize((mask > 127).astype(np.float32), size) < 0.5).astype(np.float32)
        if weight.sum() < 0.05 * weight.size:
            weight = None  # almost everything was replaced: nothing left to compare
    by, ay = luminance(b_small), luminance(a_small)
    m["std_before"] = round(float(by.std()), 4)
    m["std_after"] = round(float(ay.std()), 4)
    m["mean_before"] = round(float(by.mean()), 4)
    m["mean_after"] = round(float(ay.mean()), 4)
    if m["std_after"] < 0.01 and m["std_before"] > 0.03:
        return _fail("the result is a blank, flat image", m)
    if m["mean_after"] < 0.02 and m["mean_before"] > 0.08:
        return _fail("the result is black", m)
    if m["mean_after"] > 0.98 and m["mean_before"] < 0.92:
        return _fail("the result is white", m)
    lab_b, lab_a = (_mean_lab(_in_srgb(b_small, icc), weight),
                    _mean_lab(_in_srgb(a_small, icc), weight))
    m["color_shift"] = round(float(np.linalg.norm(lab_a - lab_b)), 3)
    m["mean_shift"] = round(abs(m["mean_after"] - m["mean_before"]), 4)
    m["psnr_small"] = round(_psnr(a_small, b_small, weight), 3)
    m["ssim_small"] = round(_ssim(ay, by, weight), 4)
    if m["mean_shift"] > t.max_mean_shift:
        return _fail(f"the brightness changed too much ({m['mean_shift']:.2f})", m)
    if m["color_shift"] > t.max_color_shift:
        return _fail(f"the colours shifted (mean colour distance {m['color_shift']:.1f})", m)
    if m["psnr_small"] < t.min_psnr or m["ssim_small"] < t.min_ssim:
        return _fail(f"the picture content changed too much (PSNR {m['psnr_small']:.1f} dB, "
                     f"SSIM {m['ssim_small']:.2f} against the input, downscaled)", m)

    tick()
    # --- no-reference quality at the input's resolution ------------------------------------
    a_same = _clipped_at(after, (bw, bh))
    # each image's luma once, handed to every measurement below but the noise sigma's
    yb = luma(before, tick)
    ya = luma(a_same, tick)
    # (own 0-255 luma; ``tick`` between its stages: at 64.5 MP the two took 6.2 s, during
    # which a cancel waited)
    nb = estimate_noise_sigma(before, tick)
    na = estimate_noise_sigma(a_same, tick)
    tick()
    # the analyzer's estimator reads only the least textured blocks: detail a deblur brings
    # back does not count as noise there, ripples and grain on smooth areas do
    tick()
    rb, ra = estimate_noise(before), estimate_noise(a_same)
    tick()
    kb, ka = blockiness(yb), blockiness(ya)
    tick()
    sb, sa = sharpness(yb), sharpness(ya)
    m.update(noise_before=round(nb, 3), noise_after=round(na, 3), blockiness_before=round(kb, 3),
             blockiness_after=round(ka, 3), sharpness_before=round(sb, 3),
             sharpness_after=round(sa, 3))
    m["quality_before"] = round(_nr_quality(nb, kb, sb), 3)
    m["quality_after"] = round(_nr_quality(na, ka, sa), 3)
    m.update(smooth_noise_before=round(rb, 3), smooth_noise_after=round(ra, 3))
    gross = ra > t.noise_ratio * rb + t.noise_margin
    amplified = na > t.amp_ratio * nb + t.amp_margin and \
        ra > t.smooth_amp_ratio * rb + t.smooth_amp_margin
    if gross or amplified:
        return _fail(f"the result is noisier (noise {ra:.1f} vs {rb:.1f} on smooth areas)", m)
    keep = None
    if mask is not None and np.any(mask):
        import cv2

        mk = mask if mask.shape[:2] == (bh, bw) else cv2.resize(
            mask, (bw, bh), interpolation=cv2.INTER_NEAREST)
        # the replaced pixels and a ring-window around them are meant to change
        grown = cv2.dilate((mk > 127).astype(np.uint8), np.ones((2 * RING_RADIUS + 1,) * 2,
                                                                   np.uint8))
        keep = (grown == 0).astype(np.float32)
        if keep.sum() < 0.05 * keep.size:
            keep = None
    tick()
    ov, ov_rel = overshoot(yb, ya, RING_RADIUS, keep, tick)
    m.update(overshoot=round(ov, 3), overshoot_rel=round(ov_rel, 4))
    if ka > max(kb, 1.0) + t.blockiness_margin:
        return _fail(f"the result shows block artefacts (blockiness {ka:.2f} vs {kb:.2f})", m)
    if nb < 3.0 and sb > 1.0 and sa < t.min_sharpness_ratio * sb:
        return _fail(f"the result is blurrier (edge strength {sa:.0f} vs {sb:.0f})", m)
    if ov > t.max_overshoot and ov_rel > t.max_overshoot_rel:
        return _fail(f"the result shows ringing or halos around edges (overshoot {ov:.1f}, "
                     f"{ov_rel:.0%} of the local contrast)", m)
    tick()
    lb, la = tone_levels(yb), tone_levels(ya)
    m.update(tones_before=lb, tones_after=la)
    if lb >= t.min_tones_checked and la < t.min_tone_ratio * lb:
        return _fail(f"the result lost its smooth gradations (banding: {la} tones of grey "
                     f"against {lb})", m)
    tick()
    db, da = gradient_density(yb, keep), gradient_density(ya, keep)
    m.update(density_before=round(db, 4), density_after=round(da, 4))
    if db > 0 and da > t.max_density_ratio * db:
        return _fail(f"the result shows ripples on smooth areas (gradient density x{da / db:.2f})",
                     m)
    return GuardVerdict(True, "", m)


def _nr_quality(noise: float, block: float, sharp: float) -> float:
    """A single no-reference score for display: edge strength penalised by noise and blocks."""
    return sharp / (1.0 + 0.1 * noise) / max(1.0, block)
