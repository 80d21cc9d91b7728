"""Physical measurements of a photo's degradations (numpy / OpenCV only, no download).

Every function takes float32 RGB in [0, 1] (H, W, 3) unless it says otherwise. Estimates are in
ORIGINAL pixel units and on the 0-255 intensity scale:

- ``noise_sigma``: std of additive noise per pixel and colour channel (0-255), from the finest
  diagonal Haar band of full-resolution crops (MAD over weakly textured blocks), or, when
  larger, from the band one octave coarser on colour-opponent channels, which reads noise
  that is correlated between neighbouring pixels (demosaiced sensor noise) at its per-pixel
  size where the finest band reads a third of it (``noise_sigma``).
- ``jpeg_quality``: IJG quality 1-100; exact from the file's quantisation tables when known,
  otherwise a blind estimate from the 8x8 DCT coefficient histograms of the pixels.
- ``blur_length`` / ``blur_angle``: length (px) and direction (degrees, 0 = horizontal,
  counter-clockwise) of a linear motion blur, from the cepstrum of full-resolution crops.
- the rest are dimensionless features used by the classifier (computed on a copy downscaled
  to at most ``VIEW_SIDE`` pixels on its long side, the "view").
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..resources import resource
from .base import as_rgb
from .blurextent import estimate_blur_extent

VIEW_SIDE = 1024
MIN_SIDE = 32  # smaller images are edge-padded to this before measuring

# IJG (libjpeg) base tables, natural (row-major) order: Annex K of the JPEG standard.
STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.float64)
STD_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
] + [99] * 32, dtype=np.float64)

# zig-zag scan order: ZIGZAG[k] = natural index of the k-th coefficient in scan order
ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
    20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58,
    59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
])


def ijg_table(quality: int, base: np.ndarray = STD_LUMA) -> np.ndarray:
    """The table libjpeg writes for ``quality`` (1-100), baseline (clipped to 1..255)."""
    q = min(100, max(1, int(quality)))
    scale = 5000 // q if q < 50 else 200 - 2 * q  # libjpeg's integer arithmetic
    return np.clip(np.floor((base * scale + 50) / 100), 1, 255)


_IJG_LUMA = np.stack([ijg_table(q) for q in range(1, 101)])  # (100, 64)
_IJG_CHROMA = np.stack([ijg_table(q, STD_CHROMA) for q in range(1, 101)])


# ----------------------------------------------------------------------------- helpers

def to_gray(rgb: np.ndarray) -> np.ndarray:
    """Rec.601 luma, same scale as the input."""
    if rgb.ndim == 2:
        return rgb.astype(np.float32, copy=False)
    return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2GRAY)


def channel_min(rgb: np.ndarray) -> np.ndarray:
    """``rgb.min(axis=2)``, the same values, as two element-wise minimums: a reduction over a
    last axis of 3 runs its inner loop per pixel (35 ms per MP; the whole view of a tall
    strip, which is not reduced, is 3 MP)."""
    return np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def channel_max(rgb: np.ndarray) -> np.ndarray:
    """``rgb.max(axis=2)``, the same values (see ``channel_min``)."""
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def view_of(image: np.ndarray, side: int = VIEW_SIDE) -> tuple[np.ndarray, float]:
    """Copy reduced by the smallest integer factor k (box filter, OpenCV's fast area path)
    that brings the long side to at most ``side``; returns (view, k). k = 1: the image."""
    h, w = image.shape[:2]
    k = math.ceil(max(h, w) / side)
    # a long thin strip (a 8 x 20000 panorama slice) is not reduced to a line of pixels: the
    # view keeps a short side of 32 px or the image's own
    k = min(k, max(1, min(h, w) // 32))
    if k <= 1:
        return image, 1.0
    nh, nw = max(1, h // k), max(1, w // k)
    return cv2.resize(image[:nh * k, :nw * k], (nw, nh), interpolation=cv2.INTER_AREA), float(k)


def _grid_crops(h: int, w: int, size: int, n: int) -> list[tuple[int, int, int, int]]:
    """Up to n x n crops of ``size`` spread evenly over the image, 8-px aligned."""
    if h <= size and w <= size:
        return [(0, 0, h, w)]
    ch, cw = min(size, h), min(size, w)
    ys = np.linspace(0, h - ch, n).astype(int) if h > ch else np.array([0])
    xs = np.linspace(0, w - cw, n).astype(int) if w > cw else np.array([0])
    out = []
    for y in np.unique(ys // 8 * 8):
        for x in np.unique(xs // 8 * 8):
            out.append((int(y), int(x), ch, cw))
    return out


# ----------------------------------------------------------------------------- noise

def is_grey(img: np.ndarray) -> bool:
    """All channels equal (checked on a sparse sample)."""
    if img.ndim == 2 or img.shape[2] == 1:
        return True
    h, w = img.shape[:2]
    sy, sx = max(1, h // 64), max(1, w // 64)
    s = img[::sy, ::sx]
    return bool(np.abs(s[..., 0] - s[..., 1]).max() < 1e-6 and
                np.abs(s[..., 1] - s[..., 2]).max() < 1e-6)


def _block_layout(h: int, w: int, block: int = 8) -> tuple[int, int, int]:
    """(block, rows, columns) that ``_haar_blocks`` reads of an h x w channel: blocks of
    ``block`` x ``block`` Haar coefficients (2 block px square), smaller on a tiny image."""
    if min(h, w) < 4 * block:  # tiny image: smaller blocks
        block = max(2, min(h, w) // 4)
    return block, (h // (2 * block)) * 2 * block, (w // (2 * block)) * 2 * block


def _haar_blocks(ch: np.ndarray, block: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one channel (0-255): per block of ``block`` x ``block`` Haar coefficients returns
    (HH coefficients (n, block*block), texture = mean LH^2 + HL^2, mean intensity)."""
    block, h2, w2 = _block_layout(*ch.shape[:2], block)
    if h2 == 0 or w2 == 0:
        e = np.zeros(0, np.float32)
        return e.reshape(0, 1), e, e
    c = ch[:h2, :w2].astype(np.float32)
    a, b, cc, d = c[0::2, 0::2], c[0::2, 1::2], c[1::2, 0::2], c[1::2, 1::2]
    hh = (a - b - cc + d) * 0.5
    lh = (a + b - cc - d) * 0.5
    hl = (a - b + cc - d) * 0.5
    ll = (a + b + cc + d) * 0.25
    bh, bw = h2 // 2 // block, w2 // 2 // block

    def blocks(x: np.ndarray) -> np.ndarray:
        return x.reshape(bh, block, bw, block).transpose(0, 2, 1, 3).reshape(bh * bw, -1)

    return blocks(hh), blocks(lh * lh + hl * hl).mean(axis=1), blocks(ll).mean(axis=1)


def estimate_noise(image: np.ndarray, crop: int = 256, grid: int = 3) -> float:
    """Noise sigma (0-255, per channel) on full-resolution crops.

    Haar bands are orthogonal, so under white noise the block texture measure (LH, HL) is
    independent of the HH band: selecting the least textured blocks does not bias the
    estimate, and excludes edges/texture that would inflate it. The estimate is the MAD of
    the HH coefficients pooled over the selected blocks. Blocks near black/white are skipped
    (clipping shrinks the noise there).
    """
    img = image if image.ndim == 3 else image[..., None]
    h, w = img.shape[:2]
    per_channel = []
    grey = img.shape[2] == 1 or is_grey(img)
    crops = _grid_crops(h, w, crop, grid)
    for c in range(img.shape[2]):
        parts = [_haar_blocks(img[y:y + ch, x:x + cw, c] * 255.0) for y, x, ch, cw in crops]
        parts = [p for p in parts if p[1].size]
        if not parts:
            return 0.0
        if len({p[0].shape[1] for p in parts}) > 1:
            parts = parts[:1]
        hh = np.concatenate([p[0] for p in parts])
        tex = np.concatenate([p[1] for p in parts])
        mean = np.concatenate([p[2] for p in parts])
        per_channel.append(_unclipped_mad(hh, tex, mean, mean))
        if grey:
            break  # grey image stored as RGB: one channel is enough
    return float(np.median(per_channel)) * NOISE_CALIBRATION


def _unclipped_mad(hh: np.ndarray, tex: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   scale: float = 1.0) -> float:
    """``scale`` x the MAD of the least textured blocks (``_select_mad``) whose mean intensity
    (lowest ``lo``, highest ``hi`` of the channels read) keeps 2.5 sigma away from 0 and 255:
    clipped blocks look clean."""
    est = _select_mad(hh, tex, (lo > 12) & (hi < 243)) * scale
    for _ in range(2):
        m = max(12.0, 2.5 * est)
        est = _select_mad(hh, tex, (lo > m) & (hi < 255 - m)) * scale
    return est


# colour-opponent channels, unit gain for noise independent in R, G and B with equal sigma:
# (R - G) / sqrt(2) and (R + G - 2 B) / sqrt(6)
_OPPONENTS = ((1 / math.sqrt(2), -1 / math.sqrt(2), 0.0),
              (1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)))


def estimate_colour_noise_coarse(image: np.ndarray, crop: int = 256, grid: int = 3) -> float:
    """Per-pixel sigma (0-255, per channel) of noise independent between R, G and B, read one
    octave coarser than ``estimate_noise``: the diagonal Haar band of the crops reduced 2x
    (2 x 2 means), times 2, on the colour-opponent channels (mean of the two). 0.0 for a grey
    photo.

    Camera noise is correlated between neighbouring pixels (demosaicing interpolates each colour
    from its neighbours; in-camera processing smooths): the finest band holds a small part of
    it (bilinear Bayer demosaicing: 0.33 of the per-pixel sigma; Gaussian-blurred noise, blur
    sigma 0.5 / 0.75 / 1 px: 0.74 / 0.37 / 0.22), the band one octave coarser, times 2, about
    all of it (1.15; 1.11 / 1.14 / 0.97; white noise: 1.00) (pure noise, 1024 px). Image
    structure is much stronger there than at the finest scale, but it is shared by the colour
    channels, which the opponent channels cancel; noise that is independent between the sensor's
    colour sites stays in them. Same crops, block selection and clipping rule as
    ``estimate_noise`` (a block is kept by the darkest and the brightest of its channels)."""
    img = image if image.ndim == 3 else image[..., None]
    if img.shape[2] < 3 or is_grey(img):
        return 0.0
    h, w = img.shape[:2]
    hh_l: list[list[np.ndarray]] = [[] for _ in _OPPONENTS]
    tex_l: list[list[np.ndarray]] = [[] for _ in _OPPONENTS]
    lo_l, hi_l = [], []
    for y, x, ch, cw in _grid_crops(h, w, crop, grid):
        hh2, hw2 = ch // 2, cw // 2
        block, rows, cols = _block_layout(hh2, hw2)
        if rows == 0 or cols == 0:
            continue
        c = np.ascontiguousarray(img[y:y + 2 * hh2, x:x + 2 * hw2, :3], dtype=np.float32)
        half = cv2.resize(c, (hw2, hh2), interpolation=cv2.INTER_AREA)  # 2 x 2 means
        half *= 255.0
        # each block's mean per channel (the blocks _haar_blocks reads below)
        side = 2 * block
        means = half[:rows, :cols].reshape(rows // side, side, cols // side, side, 3)
        means = means.mean(axis=(1, 3))
        lo_l.append(means.min(axis=2).ravel())
        hi_l.append(means.max(axis=2).ravel())
        for i, (wr, wg, wb) in enumerate(_OPPONENTS):
            opp = wr * half[..., 0] + wg * half[..., 1] + wb * half[..., 2]
            hh, tex, _ = _haar_blocks(opp)
            hh_l[i].append(hh)
            tex_l[i].append(tex)
    if not lo_l or len({p.shape[1] for p in hh_l[0]}) > 1:
        return 0.0
    lo, hi = np.concatenate(lo_l), np.concatenate(hi_l)
    ests = [_unclipped_mad(np.concatenate(hh_l[i]), np.concatenate(tex_l[i]), lo, hi, 2.0)
            for i in range(len(_OPPONENTS))]
    return float(np.mean(ests))


def noise_sigma(image: np.ndarray) -> float:
    """The analyzer's ``noise_sigma`` (0-255, per pixel and channel): the larger of the finest
    scale's reading (``estimate_noise``: white noise, and noise in the brightness alone) and the
    coarser colour-opponent one (``estimate_colour_noise_coarse``: noise correlated between
    neighbouring pixels, which the finest scale reads low).

    Judged by a rule written before it was measured (session 17, docs/ANALYZER.md): on Bayer-
    demosaiced and Gaussian-blurred (0.5-1 px) noise of per-pixel sigma 5-30 on 5 clean photos
    that are no evaluation photos, the mean absolute error fell from 10.85 (``estimate_noise``
    alone) to 2.19 (it reads such noise 0.87-1.58 times its size, median 1.14); white noise
    5-50 reads as before (``bench/classify.py --synthetic``: MAE 1.16); the 47 labelled clean
    photos' median moved 1.41 -> 1.48 and the 33 large clean photos' stayed 0.00, none newly at
    the ``noise`` flag; no diagnosis of the labelled, camera, face or large clean photos
    changed."""
    return max(estimate_noise(image), estimate_colour_noise_coarse(image))


def _select_mad(hh: np.ndarray, tex: np.ndarray, ok: np.ndarray) -> float:
    if ok.sum() >= 8:
        hh, tex = hh[ok], tex[ok]
    k = max(4, int(0.3 * tex.size))
    sel = np.argpartition(tex, k - 1)[:k] if k < tex.size else np.arange(tex.size)
    v = hh[sel].ravel()
    mad = float(np.median(np.abs(v))) / 0.6745
    if mad <= 0:
        return 0.0
    # the MAD of 8-bit data moves in steps of 0.74: refine with the 3-sigma-truncated RMS
    # (a truncated Gaussian keeps 97.33 % of its variance)
    t = v[np.abs(v) < 3.0 * mad]
    return float(np.sqrt(np.mean(t * t) / 0.9733)) if t.size else mad


# median of block MADs over the 30 % least textured blocks slightly under-reads pure noise;
# this factor was measured on pure Gaussian noise (see tests/engine/test_analyzer_estimates.py)
NOISE_CALIBRATION = 1.0


# ----------------------------------------------------------------------------- JPEG

def quality_from_tables(tables: Mapping[int, Any]) -> tuple[int, float]:
    """IJG quality that best explains the quantisation tables, and the mean abs table error.

    Matches both natural and zig-zag orderings (readers differ) and keeps the better fit;
    error 0 means the file was written by libjpeg at exactly that quality.
    """
    if not tables:
        raise ValueError("no quantisation tables")
    keys = sorted(int(k) for k in tables)
    luma = np.asarray(list(tables[keys[0]]), dtype=np.float64)[:64]
    chroma = np.asarray(list(tables[keys[1]]), dtype=np.float64)[:64] if len(keys) > 1 else None
    best = (50, math.inf)
    for order in (np.arange(64), ZIGZAG):
        err = np.abs(_IJG_LUMA[:, order] - luma[None, :]).mean(axis=1)
        if chroma is not None:
            err = 0.5 * (err + np.abs(_IJG_CHROMA[:, order] - chroma[None, :]).mean(axis=1))
        q = int(np.argmin(err))
        if err[q] < best[1]:
            best = (q + 1, float(err[q]))
    return best


_DCT8 = np.array([[math.sqrt((1 if k == 0 else 2) / 8) * math.cos(math.pi * (2 * n + 1) * k / 16)
                   for n in range(8)] for k in range(8)])  # orthonormal DCT-II basis (rows)


def _dct_blocks(gray255: np.ndarray, max_blocks: int = 3000) -> np.ndarray:
    """8x8 DCT coefficients (n, 64) of grid-aligned blocks of a 0-255 luma image."""
    h, w = gray255.shape
    bh, bw = h // 8, w // 8
    if bh == 0 or bw == 0:
        return np.zeros((0, 64))
    x = gray255[:bh * 8, :bw * 8].astype(np.float64) - 128.0
    blk = x.reshape(bh, 8, bw, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)
    if blk.shape[0] > max_blocks:
        idx = np.linspace(0, blk.shape[0] - 1, max_blocks).astype(int)
        blk = blk[idx]
    coef = _DCT8 @ blk @ _DCT8.T
    return coef.reshape(-1, 64)


def estimate_jpeg_blind(image: np.ndarray) -> dict[str, Any]:
    """Blind JPEG estimate from decoded pixels.

    For each of the first low-frequency coefficients the quantisation step is the largest
    step whose multiples the non-zero coefficients cluster on; the IJG quality whose table
    best matches those steps is returned. ``jpeg_evidence`` (0-1) says how clearly the
    coefficients cluster (about 0 for never-compressed photos), ``blockiness`` compares
    gradients across the 8-px grid with those inside blocks.

    The 8x8 grid is first assumed at (0, 0), where a JPEG decoded as is has it. A photo cropped
    after compression (most "real low-quality" test sets, screenshots of web images) has it
    elsewhere: when the aligned grid shows no clustering, the grid is looked for
    (``jpeg_grid_phase``) and the estimate repeated there; ``jpeg_grid`` is the (row, column)
    offset used.
    """
    h, w = image.shape[:2]
    out = _jpeg_blind_at(image, 0, 0)
    if out["jpeg_evidence"] >= JPEG_EVIDENCE or min(h, w) < 48:
        return out
    phase = jpeg_grid_phase(image)
    if phase is None or phase == (0, 0):
        return out
    moved = _jpeg_blind_at(image, *phase)
    return moved if moved["jpeg_evidence"] > out["jpeg_evidence"] else out


JPEG_EVIDENCE = 0.3  # clustering this clear means the photo went through JPEG
# a grid phase counts when its blocks' high frequencies are at most this share of the typical
# phase's (JPEG quantises them towards zero on its own grid only; uncompressed photos read
# 0.97-1.0, JPEGs of quality 20-95 cropped at any offset 0.4-0.9 on the benchmark photos)
GRID_PHASE_RATIO = 0.9


def jpeg_grid_phase(image: np.ndarray, side: int = 160) -> tuple[int, int] | None:
    """(row, column) offset of a JPEG's 8x8 block grid, from a central region: the phase whose
    blocks have the smallest high-frequency DCT energy, when clearly below the other phases'
    (``GRID_PHASE_RATIO``); None when no phase stands out (never compressed, or too small)."""
    h, w = image.shape[:2]
    sh, sw = min(h - 8, side) // 8 * 8, min(w - 8, side) // 8 * 8
    if sh < 32 or sw < 32:
        return None
    y0, x0 = (h - sh - 8) // 2, (w - sw - 8) // 2
    gray = to_gray(image[y0:y0 + sh + 8, x0:x0 + sw + 8]).astype(np.float32) * 255.0
    d8 = _DCT8.astype(np.float32)
    high = np.asarray(ZIGZAG[10:])
    energy = np.empty((8, 8))
    for dy in range(8):
        for dx in range(8):
            x = gray[dy:dy + sh, dx:dx + sw]
            blk = x.reshape(sh // 8, 8, sw // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)
            energy[dy, dx] = float(np.abs((d8 @ blk @ d8.T).reshape(-1, 64)[:, high]).mean())
    iy, ix = np.unravel_index(int(np.argmin(energy)), energy.shape)
    if energy[iy, ix] > GRID_PHASE_RATIO * float(np.median(energy)):
        return None
    return int((y0 + iy) % 8), int((x0 + ix) % 8)


def _jpeg_blind_at(image: np.ndarray, gy: int, gx: int) -> dict[str, Any]:
    """The clustering estimate with the block grid starting at row ``gy``, column ``gx``."""
    h, w = image.shape[:2]
    # a centred region of up to 768 x 768 at full resolution whose blocks sit on the grid
    ch, cw = min(h - gy, 768) // 8 * 8, min(w - gx, 768) // 8 * 8
    out = {"jpeg_quality": 100.0, "jpeg_evidence": 0.0, "blockiness": 1.0,
           "jpeg_grid": (gy, gx)}
    if ch < 8 or cw < 8:
        return out
    y0 = gy + ((h - gy - ch) // 2) // 8 * 8
    x0 = gx + ((w - gx - cw) // 2) // 8 * 8
    gray = to_gray(image[y0:y0 + ch, x0:x0 + cw]) * 255.0
    # JPEG's luma is computed before rounding: use the same weights (full-range YCbCr)
    coef = _dct_blocks(gray)
    out["blockiness"] = _blockiness(gray)
    if coef.shape[0] < 32:
        return out
    positions = ZIGZAG[1:10]
    qs = np.arange(2, 101, dtype=np.float64)
    steps, weights = [], []
    for pos in positions:
        c = coef[:, pos]
        c = c[np.abs(c) > 1.0]
        nz = np.abs(c)[:, None] > 0.5 * qs[None, :]  # (n, Q)
        n = nz.sum(axis=0)
        cs = np.where(nz, np.cos(2 * np.pi * c[:, None] / qs[None, :]), 0.0).sum(axis=0)
        score = np.where(n >= 30, cs / np.maximum(n, 1), 0.0)
        best_q, best_s = 1, 0.0
        for q, sc in zip(qs, score):
            # a larger step that still fits explains the data better than its divisors
            if sc > 0.55 and sc >= best_s * 0.8:
                best_q, best_s = int(q), float(sc)
        steps.append(best_q)
        weights.append(best_s)
    steps_a, w_a = np.asarray(steps, float), np.asarray(weights, float)
    evidence = float(w_a.mean())
    out["jpeg_evidence"] = evidence
    if evidence < JPEG_EVIDENCE or (w_a > 0).sum() < 3:
        return out
    use = w_a > 0
    tab = _IJG_LUMA[:, positions][:, use]
    err = np.abs(np.log(tab) - np.log(steps_a[use])[None, :]).mean(axis=1)
    out["jpeg_quality"] = float(np.argmin(err) + 1)
    return out


def _blockiness(gray255: np.ndarray) -> float:
    """Mean |horizontal+vertical step| across 8-px block borders over that inside blocks."""
    if min(gray255.shape) < 24:
        return 1.0
    dx = np.abs(np.diff(gray255, axis=1))
    dy = np.abs(np.diff(gray255, axis=0))
    bx = dx[:, 7::8].mean() + dy[7::8, :].mean()
    mx = np.delete(dx, np.s_[7::8], axis=1).mean() + np.delete(dy, np.s_[7::8], axis=0).mean()
    return float(bx / (mx + 1e-6))


def jpeg_estimate(image: np.ndarray, photo: Any | None) -> dict[str, Any]:
    """JPEG quality: exact from the photo's tables when it is a JPEG, else blind."""
    tables = _photo_tables(photo)
    if tables:
        try:
            q, err = quality_from_tables(tables)
            return {"jpeg_quality": float(q), "jpeg_table_error": err, "jpeg_source": "tables",
                    "jpeg_evidence": 1.0, "blockiness": _blockiness(_center_gray(image, 512))}
        except (ValueError, TypeError, IndexError):
            pass
    out = estimate_jpeg_blind(image)
    out["jpeg_source"] = "pixels"
    return out


def _photo_tables(photo: Any | None) -> Mapping[int, Any] | None:
    if photo is None:
        return None
    info = getattr(photo, "info", None) or {}
    tables = info.get("jpeg_quantization")
    if tables:
        return tables
    fmt = str(getattr(photo, "format", "") or "").upper()
    path = getattr(photo, "path", None)
    if fmt in ("JPEG", "MPO") and path is not None:
        try:  # header only: cheap
            from PIL import Image

            with Image.open(path) as im:
                q = getattr(im, "quantization", None)
                return dict(q) if q else None
        except (OSError, ValueError, SyntaxError):  # unreadable header: no tables
            return None
    return None


# ----------------------------------------------------------------------------- motion blur

def _log_spectrum(gray: np.ndarray, patch: int = 256, max_patches: int = 9) -> np.ndarray:
    """Welch-averaged log power spectrum (patch x patch, DC at the centre)."""
    from scipy import fft as sfft

    h, w = gray.shape
    p = min(patch, h, w)
    p = p - p % 2
    win = np.outer(np.hanning(p), np.hanning(p)).astype(np.float32)
    grid = math.ceil(math.sqrt(max_patches))
    tiles = np.stack([gray[y:y + p, x:x + p] for y, x, _, _ in
                      _grid_crops(h, w, p, grid)[:max_patches]]).astype(np.float32)
    tiles -= tiles.mean(axis=(1, 2), keepdims=True)
    tiles *= win
    f = sfft.fft2(tiles, axes=(1, 2), workers=1)
    acc = (f.real ** 2 + f.imag ** 2).mean(axis=0)
    return np.fft.fftshift(np.log(acc + 1e-6))


def _cepstrum_polar(logspec: np.ndarray, rmax: int, angles: np.ndarray) -> np.ndarray:
    """Real cepstrum sampled on rays: (len(angles), rmax + 1), baseline-free per radius."""
    ls = np.fft.ifftshift(logspec)
    cep = np.fft.fftshift(np.real(np.fft.ifft2(ls - ls.mean()))).astype(np.float32)
    p = cep.shape[0]
    c = p // 2
    r = np.arange(rmax + 1, dtype=np.float32)
    th = np.deg2rad(angles).astype(np.float32)[:, None]
    mx = (c + r[None, :] * np.cos(th)).astype(np.float32)
    my = (c - r[None, :] * np.sin(th)).astype(np.float32)  # image y grows downwards
    polar = cv2.remap(cep, mx, my, interpolation=cv2.INTER_LINEAR)
    return polar - polar.mean(axis=0, keepdims=True)


# the cepstral minimum of a line PSF with L px support sits at about L - 0.7 (measured on
# synthetic lines 5-30 px, see bench/classify.py --synthetic)
BLUR_LENGTH_OFFSET = 0.7


def estimate_motion_blur(gray: np.ndarray, max_len: int = 80,
                         logspec: np.ndarray | None = None) -> dict[str, float]:
    """Linear motion blur (length px, angle deg, evidence) from the cepstrum.

    A length-L line PSF zeroes the spectrum every 1/L along its direction, which puts a
    negative cepstral peak at distance L along that direction. Evidence is that peak's depth
    over the spread of the angle-normalised cepstrum. The search starts at 3 px: a length of
    about 3.7 (the floor) means no line blur longer than ~4 px was resolved.
    """
    h, w = gray.shape
    patch = 256 if min(h, w) >= 256 else max(32, min(h, w) // 2 * 2)
    rmax = min(max_len, patch // 2 - 2)
    if rmax < 6:
        return {"blur_length": 0.0, "blur_angle": 0.0, "motion_evidence": 0.0}
    ls = logspec if logspec is not None and logspec.shape[0] == patch else \
        _log_spectrum(gray, patch)
    angles = np.arange(0, 180, 1.0)
    pol = _cepstrum_polar(ls, rmax, angles)
    r0 = 3
    sub = pol[:, r0:]
    spread = float(sub.std()) + 1e-9
    i, j = np.unravel_index(int(np.argmin(sub)), sub.shape)
    depth = float(-sub[i, j] / spread)
    r = j + r0
    # sub-pixel refinement of the radius (parabola through the neighbours)
    if 0 < j < sub.shape[1] - 1:
        a, b, c = sub[i, j - 1], sub[i, j], sub[i, j + 1]
        den = a - 2 * b + c
        if den > 1e-12:
            r = r + 0.5 * (a - c) / den
    r = r + BLUR_LENGTH_OFFSET
    return {"blur_length": float(r), "blur_angle": float(angles[i]) % 180.0,
            "motion_evidence": depth}


# ----------------------------------------------------------------------------- view features

def _spectrum_patch(gray: np.ndarray) -> int:
    h, w = gray.shape
    return 256 if min(h, w) >= 256 else max(32, min(h, w) // 2 * 2)


def _band_energies(gray: np.ndarray, ls: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """log10 power in octave bands of radial frequency (Nyquist/32 .. Nyquist), 5 values."""
    if ls is None:
        ls = _log_spectrum(gray, _spectrum_patch(gray))
    p = ls.shape[0]
    yy, xx = np.mgrid[0:p, 0:p]
    rad = np.hypot(yy - p // 2, xx - p // 2) / (p / 2)  # 1 = Nyquist
    power = np.exp(ls)
    edges = [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0]
    out = []
    for lo, hi in itertools.pairwise(edges):
        m = (rad >= lo) & (rad < hi)
        out.append(np.log10(power[m].mean() + 1e-12) if m.any() else np.nan)
    out = list(_fill_nan(np.asarray(out)))
    return np.asarray(out), _cutoff(rad, power)


def _fill_nan(a: np.ndarray) -> np.ndarray:
    """Missing bands (tiny images) take the nearest known value."""
    ok = np.isfinite(a)
    if not ok.any():
        return np.zeros_like(a)
    idx = np.arange(a.size)
    return np.interp(idx, idx[ok], a[ok])


def _cutoff(rad: np.ndarray, power: np.ndarray) -> float:
    """Fraction of Nyquist where the radial spectrum first falls 2 decades under the power
    law fitted on the low frequencies (about 1 for full-resolution detail, 1/k for a photo
    upscaled k times or blurred to that extent)."""
    bins = np.linspace(0.02, 1.0, 50)
    idx = np.digitize(rad.ravel(), bins)
    pw = power.ravel()
    prof = np.array([pw[idx == i].mean() if np.any(idx == i) else np.nan
                     for i in range(1, len(bins))])
    fr = 0.5 * (bins[1:] + bins[:-1])
    ok = np.isfinite(prof) & (prof > 0)
    lo = ok & (fr < 0.15)
    if lo.sum() < 3:
        return 1.0
    a, b = np.polyfit(np.log10(fr[lo]), np.log10(prof[lo]), 1)
    drop = np.log10(np.where(ok, prof, 1e-30)) - (a * np.log10(fr) + b)
    below = np.nonzero((drop < -2.0) & (fr > 0.1))[0]
    return float(fr[below[0]]) if below.size else 1.0


def _directional(gray: np.ndarray) -> tuple[float, float]:
    """Anisotropy of gradient energy over 8 orientations (1 - min/max), at 2 scales."""
    res = []
    g = gray
    for _ in range(2):
        gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
        sxx, syy, sxy = float((gx * gx).mean()), float((gy * gy).mean()), float((gx * gy).mean())
        e = []
        for t in np.deg2rad(np.arange(0, 180, 22.5)):
            c, s = math.cos(t), math.sin(t)
            e.append(c * c * sxx + s * s * syy + 2 * c * s * sxy)
        e_a = np.asarray(e)
        res.append(float(1 - e_a.min() / (e_a.max() + 1e-12)))
        g = cv2.pyrDown(g)
        if min(g.shape) < 16:
            res.append(res[-1])
            break
    return res[0], res[1]


def _ghosting(gray: np.ndarray) -> float:
    """Secondary autocorrelation peak of the edge map at shifts 4-40 px (double edges)."""
    g = gray
    if max(g.shape) > 512:
        f = 512 / max(g.shape)
        g = cv2.resize(g, (max(1, int(g.shape[1] * f)), max(1, int(g.shape[0] * f))),
                       interpolation=cv2.INTER_AREA)
    lap = cv2.Laplacian(g, cv2.CV_32F, ksize=3)
    lap = lap - lap.mean()
    f = np.fft.fft2(lap)
    ac = np.fft.fftshift(np.real(np.fft.ifft2(f * np.conj(f))))
    ac /= ac.max() + 1e-12
    h, w = ac.shape
    yy, xx = np.mgrid[0:h, 0:w]
    rad = np.hypot(yy - h // 2, xx - w // 2)
    ring = (rad >= 4) & (rad <= 40)
    if not ring.any():
        return 0.0
    vals = ac[ring]
    return float((vals.max() - np.median(vals)) / (vals.std() + 1e-9))


def view_features(view: np.ndarray, extra: bool = True) -> dict[str, float]:
    """Dimensionless cues on the downscaled view (float RGB 0-1). ``extra=False`` leaves out
    the cues only the feature model reads (ghosting, NSS, edge, layer and chroma cues)."""
    gray = to_gray(view)
    h, w = gray.shape
    f: dict[str, float] = {}
    ls = _log_spectrum(gray, _spectrum_patch(gray)) if min(h, w) >= 8 else None
    bands, cutoff = _band_energies(gray, ls)
    f["cutoff"] = cutoff
    for i in range(4):
        f[f"band_slope_{i}"] = float(bands[i + 1] - bands[i])
    # gradient ratio across scales (sharp ~ high, blurred/upscaled ~ low)
    g1 = cv2.Laplacian(gray, cv2.CV_32F)
    half = cv2.pyrDown(gray) if min(h, w) >= 16 else gray
    g2 = cv2.Laplacian(half, cv2.CV_32F)
    f["lap_ratio"] = float(np.log((np.abs(g1).mean() + 1e-6) / (np.abs(g2).mean() + 1e-6)))
    an1, an2 = _directional(gray)
    f["aniso_1"], f["aniso_2"] = an1, an2
    mb = estimate_motion_blur(gray, max_len=60, logspec=ls)
    f["view_motion_evidence"] = mb["motion_evidence"]
    f["view_blur_length"] = float(np.log1p(mb["blur_length"]))
    if extra:
        f["ghosting"] = _ghosting(gray)
    # contrast / veiling glare
    p1, p50, p99 = np.percentile(gray[::2, ::2], [1, 50, 99])
    f["dyn_range"] = float(p99 - p1)
    f["median_luma"] = float(p50)
    small = cv2.resize(view, (128, max(1, int(128 * h / w)))) if w > 128 else view
    sg = to_gray(small)
    mu = cv2.blur(sg, (7, 7))
    sd = np.sqrt(np.maximum(cv2.blur(sg * sg, (7, 7)) - mu * mu, 0))
    f["local_contrast"] = float((sd / (mu + 0.05)).mean())
    mx, mn = channel_max(small), channel_min(small)
    dark = cv2.erode(mn, np.ones((7, 7), np.uint8))
    f["dark_channel"] = float(dark.mean())
    sat = (mx - mn) / (mx + 1e-6)
    f["saturation"] = float(sat.mean())
    f["specular"] = float(((mx > 0.96) & (sat < 0.12)).mean())
    f["veil_area"] = float((dark > 0.25).mean())  # raised dark channel: veiling glare
    f["log_pixels"] = float(math.log10(h * w))
    if extra:
        f.update(extra_view_features(view, gray, ls))
    return f


# ----------------------------------------------------------------------------- NSS / sharpness

def _mscn(gray: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (BRISQUE), gray on 0-1."""
    mu = cv2.GaussianBlur(gray, (7, 7), 7 / 6, borderType=cv2.BORDER_REFLECT)
    var = cv2.GaussianBlur(gray * gray, (7, 7), 7 / 6, borderType=cv2.BORDER_REFLECT) - mu * mu
    return (gray - mu) / (np.sqrt(np.maximum(var, 0)) + 1.0 / 255.0)


def _nss(gray: np.ndarray, prefix: str) -> dict[str, float]:
    """MSCN moments and paired-product statistics at one scale (dimensionless)."""
    m = _mscn(gray)
    f: dict[str, float] = {}
    v = float((m * m).mean())
    a = float(np.abs(m).mean())
    f[prefix + "var"] = v
    # GGD shape proxy: E|x|^2 / E[x^2] (0.64 Gaussian, lower = heavier tails)
    f[prefix + "rho"] = float(a * a / (v + 1e-9))
    f[prefix + "kurt"] = float(np.log((m ** 4).mean() / (v * v + 1e-12) + 1e-9))
    for name, (dy, dx) in (("h", (0, 1)), ("v", (1, 0)), ("d", (1, 1))):
        p = m[:m.shape[0] - dy, :m.shape[1] - dx] * m[dy:, dx:]
        f[prefix + "pp_" + name] = float(p.mean() / (v + 1e-9))
    return f


def _edge_sharpness(gray: np.ndarray) -> dict[str, float]:
    """How steep the strongest edges are relative to their local range: gradient magnitude
    over (max - min) in a 5x5 window, at the strongest 2 % of edge pixels (about 0.5 for a
    step edge at pixel scale, lower for edges spread over several pixels)."""
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    mag = np.sqrt(gx * gx + gy * gy)
    k = np.ones((5, 5), np.uint8)
    rng = cv2.dilate(gray, k) - cv2.erode(gray, k)
    ok = (rng > 0.08) & np.isfinite(mag)  # (a NaN pixel's neighbourhood has no edge)
    if ok.sum() < 50:
        return {"edge_steep": 0.25, "edge_steep_med": 0.2}
    r = mag[ok] / rng[ok]
    thr = np.percentile(mag[ok], 90)
    strong = r[mag[ok] >= thr]
    return {"edge_steep": float(np.percentile(strong, 80)),
            "edge_steep_med": float(np.median(strong))}


def _spectral_anisotropy(ls: np.ndarray) -> dict[str, float]:
    """Directional spread of the log power in two radial bands (motion blur removes high
    frequencies along one direction only; isotropic blur and upscaling remove them all)."""
    p = ls.shape[0]
    yy, xx = np.mgrid[0:p, 0:p]
    yy, xx = yy - p // 2, xx - p // 2
    rad = np.hypot(yy, xx) / (p / 2)
    ang = np.mod(np.arctan2(yy, xx), np.pi)
    sector = np.minimum((ang / (np.pi / 12)).astype(int), 11)
    out = {}
    for name, lo, hi in (("mid", 0.15, 0.35), ("high", 0.35, 0.7)):
        band = (rad >= lo) & (rad < hi)
        e = np.array([ls[band & (sector == s)].mean() for s in range(12)])
        out[f"spec_aniso_{name}"] = float(e.max() - e.min())
        out[f"spec_aniso_{name}_std"] = float(e.std())
    return out


def _reflection_cues(view: np.ndarray) -> dict[str, float]:
    """Layer and colour cues on a 256-px copy: a second weak layer lifts the local minimum
    (black level), flattens local contrast and washes out saturation; JPEG and cheap
    sensors smear colour edges relative to luma edges (chroma_sharpness)."""
    h, w = view.shape[:2]
    small = cv2.resize(view, (256, max(8, int(256 * h / w))), interpolation=cv2.INTER_AREA) \
        if w > 256 else view
    mn = channel_min(small)
    lo = cv2.erode(mn, np.ones((15, 15), np.uint8))
    f = {"black_level": float(np.percentile(lo, 5)),
         "black_level_med": float(np.median(lo))}
    sg = to_gray(small)
    mu = cv2.blur(sg, (9, 9))
    sd = np.sqrt(np.maximum(cv2.blur(sg * sg, (9, 9)) - mu * mu, 0))
    f["flat_frac"] = float((sd < 0.02).mean())
    f["contrast_p90"] = float(np.percentile(sd, 90))
    mx = channel_max(small)
    sat = (mx - mn) / (mx + 1e-3)
    f["sat_p90"] = float(np.percentile(sat, 90))
    f["colorful"] = float(np.std(small[..., 0] - small[..., 1]) + np.std(
        0.5 * (small[..., 0] + small[..., 1]) - small[..., 2]))
    return f


def _chroma_sharpness(view: np.ndarray, gray: np.ndarray) -> dict[str, float]:
    """Fine-scale chroma energy relative to fine-scale luma energy on the view (log): low
    when colour is smeared (JPEG 4:2:0, cheap sensors, old video) or the photo is grey."""
    c1 = view[..., 0] - view[..., 1]
    c2 = 0.5 * (view[..., 0] + view[..., 1]) - view[..., 2]

    def fine(x: np.ndarray) -> float:
        return float(np.abs(cv2.Laplacian(x, cv2.CV_32F)).mean())

    lf = fine(gray) + 1e-5
    chroma = fine(c1) + fine(c2)
    colour = float(np.abs(c1).mean() + np.abs(c2).mean())
    return {"chroma_sharpness": float(np.log((chroma + 1e-5) / lf)),
            "chroma_sharp_rel": float(np.log((chroma + 1e-5) / (colour + 1e-3)) -
                                      np.log(lf / (float(np.abs(gray - gray.mean()).mean())
                                                   + 1e-3)))}


def _scale_energy(gray: np.ndarray) -> dict[str, float]:
    """Fine-scale energy relative to coarser scales (Laplacian pyramid), log ratios."""
    g = gray
    e = []
    for _ in range(4):
        if min(g.shape) < 16:
            e.append(e[-1] if e else 1e-6)
            continue
        d = cv2.pyrDown(g)
        up = cv2.pyrUp(d, dstsize=(g.shape[1], g.shape[0]))
        e.append(float(((g - up) ** 2).mean()) + 1e-9)
        g = d
    e_a = np.log(np.asarray(e))
    return {"lp_r01": float(e_a[0] - e_a[1]), "lp_r12": float(e_a[1] - e_a[2]),
            "lp_r23": float(e_a[2] - e_a[3])}


def extra_view_features(view: np.ndarray, gray: np.ndarray, ls: np.ndarray | None
                        ) -> dict[str, float]:
    f: dict[str, float] = {}
    f.update(_nss(gray, "nss0_"))
    half = cv2.pyrDown(gray) if min(gray.shape) >= 16 else gray
    f.update(_nss(half, "nss1_"))
    f.update(_edge_sharpness(gray))
    if ls is not None:
        f.update(_spectral_anisotropy(ls))
    else:
        f.update({k: 0.0 for k in ("spec_aniso_mid", "spec_aniso_mid_std",
                                   "spec_aniso_high", "spec_aniso_high_std")})
    f.update(_reflection_cues(view))
    f.update(_chroma_sharpness(view, gray))
    f.update(_scale_energy(gray))
    return f


# ----------------------------------------------------------------------------- patch CNN

# A small CNN trained only on synthetic degradations (scripts/train_analyzer_cnn.py) that scores
# 64 x 64 patches of the view A/B/C/D. Optional: without its file the features are absent.
CNN_PATH = resource("analyzer_cnn.npz")
CNN_GRID = 4  # up to 4 x 4 patches over the view
CNN_MIN_STD = 0.04  # patches flatter than this show no degradation (unless all are flat)


class PatchCNN:
    """Numpy inference of the exported network: 3x3 convs (BatchNorm folded in) with ReLU,
    global average pooling, one linear layer. A file may hold several members trained the same
    way from different seeds (arrays prefixed ``m1_``, ``m2_``...; member 0 unprefixed):
    ``log_probs`` averages their patch log-probabilities."""

    def __init__(self, path: str | Path) -> None:
        with np.load(path) as d:
            self.members = []
            for k in range(int(d["n_members"]) if "n_members" in d else 1):
                pre = f"m{k}_" if k else ""
                convs = []
                i = 0
                while f"{pre}conv{i}_w" in d:
                    w = d[f"{pre}conv{i}_w"].astype(np.float32)  # (out, in, 3, 3)
                    wmat = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))
                    convs.append((wmat, d[f"{pre}conv{i}_b"].astype(np.float32),
                                  int(d[f"{pre}conv{i}_stride"])))
                    i += 1
                if not convs:
                    raise ValueError(f"member {k}: no convolution layers")
                self.members.append((convs, d[f"{pre}fc_w"].astype(np.float32),
                                     d[f"{pre}fc_b"].astype(np.float32)))
            self.meta = json.loads(str(d["meta"]))
        self.convs, self.fc_w, self.fc_b = self.members[0]
        self.patch = int(self.meta.get("patch", 64))

    @staticmethod
    def _cols(x: np.ndarray, s: int) -> tuple[np.ndarray, tuple[int, int, int]]:
        """im2col of a 3x3 conv with padding 1 and stride s: 9 shifted (strided) views side by
        side in (kh, kw, c) order -> (N * Ho * Wo, 9 C), (N, Ho, Wo)."""
        n, h, w, c = x.shape
        ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        cols = np.concatenate([xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]
                               for i in range(3) for j in range(3)], axis=3)
        return cols.reshape(n * ho * wo, 9 * c), (n, ho, wo)

    def _layers(self, x: np.ndarray, convs: list) -> np.ndarray:
        for wmat, b, s in convs:
            cols, shape = self._cols(x, s)
            y = cols @ wmat
            y += b
            x = np.maximum(y, 0.0, out=y).reshape(*shape, -1)
        return x.mean(axis=(1, 2))

    def embed(self, x: np.ndarray, member: int = 0) -> np.ndarray:
        """(N, P, P, 3) float in [0, 1] -> pooled features (N, C) of one member."""
        return self._layers(np.asarray(x, dtype=np.float32) - 0.5, self.members[member][0])

    def logits(self, x: np.ndarray, member: int = 0) -> np.ndarray:
        _convs, fc_w, fc_b = self.members[member]
        return self.embed(x, member) @ fc_w.T + fc_b

    def log_probs(self, x: np.ndarray) -> np.ndarray:
        """(N, 4) patch log-probabilities, averaged over the members. The members share their
        input, so the first layer's im2col (the costliest step, at full patch size) is built
        once and multiplied by all members' first-layer weights together."""
        x = np.asarray(x, dtype=np.float32) - 0.5
        first = [convs[0] for convs, _w, _b in self.members]
        s0 = first[0][2]
        if any(f[2] != s0 or f[0].shape[0] != first[0][0].shape[0] for f in first):
            lgs = [self.logits(x + 0.5, k) for k in range(len(self.members))]
        else:
            cols, shape = self._cols(x, s0)
            y = cols @ np.concatenate([f[0] for f in first], axis=1)
            y += np.concatenate([f[1] for f in first])
            y = np.maximum(y, 0.0, out=y).reshape(*shape, -1)
            lgs = []
            at = 0
            for convs, fc_w, fc_b in self.members:
                width = convs[0][0].shape[1]
                h = np.ascontiguousarray(y[..., at:at + width])
                at += width
                lgs.append(self._layers(h, convs[1:]) @ fc_w.T + fc_b)
        out = np.zeros((len(x), 4))
        for lg in lgs:
            lg = lg.astype(np.float64)
            lg -= lg.max(axis=1, keepdims=True)
            out += lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
        return out / len(self.members)


@lru_cache(maxsize=2)
def load_cnn(path: str | None = None) -> PatchCNN | None:
    p = Path(path) if path else CNN_PATH
    if not p.is_file():
        return None
    return PatchCNN(p)


def pad_to(img: np.ndarray, p: int) -> np.ndarray:
    """Edge-pad an image smaller than p x p (centred)."""
    h, w = img.shape[:2]
    ph, pw = max(0, p - h), max(0, p - w)
    if ph == 0 and pw == 0:
        return img
    return np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="edge")


def cnn_patches(view: np.ndarray, p: int = 64, grid: int = CNN_GRID) -> np.ndarray:
    """Up to grid x grid patches spread over the view (edge-padded to at least p x p),
    flat ones dropped (at least 3 kept)."""
    h, w = view.shape[:2]
    ys = np.unique(np.linspace(0, max(h, p) - p, grid).astype(int))
    xs = np.unique(np.linspace(0, max(w, p) - p, grid).astype(int))
    # each patch is clipped and padded on its own, the same pixels as patches of the whole
    # view padded (a side shorter than p holds one patch, padded the same): padding the
    # whole view of a 32 x 100000 strip took 0.07 s
    cs = np.stack([pad_to(np.clip(view[y:y + p, x:x + p], 0, 1), p) for y in ys for x in xs])
    sd = cs[:, ::4, ::4].std(axis=(1, 2, 3))
    keep = np.nonzero(sd > CNN_MIN_STD)[0]
    if keep.size < 3:
        keep = np.argsort(-sd)[:min(3, sd.size)]
    return cs[keep]


def cnn_features(view: np.ndarray, path: str | None = None) -> dict[str, float]:
    """Mean patch log-probabilities of the CNN (cnn_A..cnn_D); {} without the CNN file."""
    net = load_cnn(path)
    if net is None:
        return {}
    m = net.log_probs(cnn_patches(view, net.patch)).mean(axis=0)
    return {f"cnn_{c}": float(v) for c, v in zip("ABCD", m)}


# ----------------------------------------------------------------------------- all together

def _no_check() -> None:
    return None


def measure(image: np.ndarray, photo: Any | None = None, *, extra: bool = True,
            cancel_check: Callable[[], None] | None = None) -> dict[str, Any]:
    """Every measurement. Estimates in original-pixel units; features on the view.
    ``extra=False`` skips the view cues that only the feature model reads (faster).
    ``cancel_check`` (a job's ``Progress.check``) is called before each measurement: a cancel
    waits for one of them at most (each under 0.1 s on a 12 MP photo on one core).

    ``image``: float RGB in [0, 1]; grey, alpha and integer arrays are read as
    ``base.as_rgb`` reads them. A photo with non-finite pixels (NaN, inf: a float array that
    did not come through ``load_photo``) is measured again on a cleaned copy (NaN 0, clipped
    into [0, 1]) when any measurement came out non-finite, so no estimate is NaN; a finite
    photo costs nothing more."""
    check = cancel_check or _no_check
    check()
    image = as_rgb(image)
    out = _measure(image, photo, extra, check)
    if not _all_finite(out):
        clean = np.clip(np.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        out = _measure(clean, photo, extra, check)
    return out


def _all_finite(meas: Mapping[str, Any]) -> bool:
    values = [v for v in meas.values() if isinstance(v, float)]
    values += [float(v) for v in meas.get("features", {}).values()]
    return bool(np.isfinite(values).all())


def _measure(image: np.ndarray, photo: Any | None, extra: bool,
             check: Callable[[], None]) -> dict[str, Any]:
    h, w = image.shape[:2]
    out: dict[str, Any] = {"width": w, "height": h}
    if min(h, w) < MIN_SIDE:  # a sliver or a few pixels: edge-pad so every measure is defined
        ph, pw = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
        # (OpenCV's replicate border: numpy's edge pad of a 100000 x 1 strip took 0.04 s)
        image = cv2.copyMakeBorder(np.ascontiguousarray(image), ph // 2, ph - ph // 2,
                                   pw // 2, pw - pw // 2, cv2.BORDER_REPLICATE)
    out["noise_sigma"] = noise_sigma(image)
    check()
    out.update(jpeg_estimate(image, photo))
    check()
    # motion blur length on full-resolution crops (original pixels)
    gray_full_crop = to_gray(_center(image, 768))
    mb = estimate_motion_blur(gray_full_crop)
    out["blur_length"] = mb["blur_length"]
    out["blur_angle"] = mb["blur_angle"]
    out["motion_evidence"] = mb["motion_evidence"]
    check()
    # the blur in the worst direction, any cause or path (curved hand shake too), from edges
    out.update(estimate_blur_extent(gray_full_crop))
    check()
    view, factor = view_of(image)
    out["view_scale"] = factor
    check()
    vf = view_features(view, extra=extra)
    check()
    vf.update(cnn_features(view))
    out["features"] = vf
    # log Laplacian ratio across one octave: about -1 for Gaussian blur sigma 1.5-3.5 or a 3x
    # upscale, 0..0.7 for sharp photos (measured on the fitting set); mapped to 0..1
    out["sharpness"] = float(np.clip((vf["lap_ratio"] + 1.0) / 1.1, 0, 1))
    return out


def _center_gray(image: np.ndarray, size: int) -> np.ndarray:
    """Luma (0-255) of the centred crop, 8-px aligned."""
    h, w = image.shape[:2]
    ch, cw = max(8, min(h, size) // 8 * 8), max(8, min(w, size) // 8 * 8)
    y, x = ((h - ch) // 2) // 8 * 8, ((w - cw) // 2) // 8 * 8
    return to_gray(image[y:y + ch, x:x + cw]) * 255.0


def _center(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    ch, cw = min(h, size), min(w, size)
    y, x = (h - ch) // 2, (w - cw) // 2
    return a[y:y + ch, x:x + cw]
