"""How far a photo is smeared, whatever the cause and the path (curved hand shake included),
from its edges.

The cepstral estimator in ``measure.estimate_motion_blur`` finds the length of a *straight* line
blur very precisely, but real camera shake is a curved, uneven path: its spectrum has no regular
zeros, so on every real motion-blurred photo in ../shared/images the line estimate sits at its
floor. This module measures the blur's extent directly instead:

- pick the strongest edges in each of 12 orientations (non-maximum along the gradient);
- sample each edge's intensity profile across it and measure its width as contrast / peak slope
  (a step blurred by a box of L px has width L; a Gaussian of sigma s, 2.5 s);
- a blur kernel makes every edge at least as wide as the kernel's projection on the edge's
  normal, so a high percentile of the widths per orientation follows that projection;
- the extent is the widest orientation's width with a camera-sharp edge's own width
  (``SHARP_WIDTH``) removed in quadrature, and its angle is that orientation.

It is the blur in the worst direction whatever made it: motion (straight or curved) and defocus
alike, so it says how bad the blur is, not what caused it (the classifier says that). Long blurs
are also measured on a 2x-reduced copy so the profile window still spans them. ``blur_isotropy``
is the narrowest orientation's blur over the widest's (near 1: as wide every way, defocus or
softness; low: one way, motion). Units: px at the
resolution of the image passed in; 0 = no blur beyond a sharp edge. For a straight line of L px
it reads about L. Accuracy (bench/classify.py --synthetic: line and hand-shake kernels on the
benchmark photos, whose own softness adds in): see the README; real sharp photos read 0-5 px,
real camera shake in ../shared/images 4-34 px.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

BINS = 12  # orientations, 15 degrees apart
PER_BIN = 200  # strongest edges kept per orientation
WINDOW = 40  # profile half-length (px) at the scale measured
PERCENTILE = 85  # of the edge widths per orientation
MIN_CONTRAST = 0.06  # an edge's rise (0-1) to count
MIN_EDGES = 15  # per orientation
RESCALE_ABOVE = 12.0  # widths beyond this are also measured on a 2x-reduced copy
# a camera-sharp edge's own width by this measure (the real GoPro sharp frame reads 2.6-2.9 px
# at the 85th percentile in every orientation, an ideal rendered step about 2.1)
SHARP_WIDTH = 2.5


def _sample(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples at float coordinates of any count (remap's maps are limited to 32k
    columns, so the points go in rows of 4096)."""
    shape = x.shape
    x = x.astype(np.float32).ravel()
    y = y.astype(np.float32).ravel()
    n = x.size
    c = 4096
    pad = (-n) % c
    xm = np.pad(x, (0, pad)).reshape(-1, c)
    ym = np.pad(y, (0, pad)).reshape(-1, c)
    out = np.concatenate([cv2.remap(img, xm[i:i + 4096], ym[i:i + 4096], cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT).ravel()
                          for i in range(0, xm.shape[0], 4096)])
    return out[:n].reshape(shape)


def edge_widths(gray: np.ndarray, window: int = WINDOW, per_bin: int = PER_BIN,
                bins: int = BINS) -> tuple[np.ndarray, np.ndarray] | None:
    """(widths px, orientation bin) of the strongest clean edges; None when there are too few.

    ``gray`` is float in [0, 1]. Orientation bin i holds edge normals at i * 180/bins degrees
    (0 = horizontal, counter-clockwise with y pointing up, as ``blur_angle``)."""
    gray = np.ascontiguousarray(gray, dtype=np.float32)
    h, w = gray.shape
    r = min(window, (min(h, w) - 8) // 2)
    if r < 8:
        return None
    g = cv2.GaussianBlur(gray, (0, 0), 1.0)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    mag = np.hypot(gx, gy)
    inner = mag[r:h - r, r:w - r]
    # candidates: the top ~15 % of gradients (a subsampled percentile keeps this cheap)
    floor = max(0.004, float(np.percentile(inner[::3, ::3], 85)))
    ys, xs = np.nonzero(inner > floor)
    if ys.size < 100:
        return None
    ys += r
    xs += r
    m = mag[ys, xs]
    nx, ny = gx[ys, xs] / m, gy[ys, xs] / m
    # thin out to the local maxima across the edge
    keep = (m >= _sample(mag, xs + 1.5 * nx, ys + 1.5 * ny)) & \
           (m >= _sample(mag, xs - 1.5 * nx, ys - 1.5 * ny))
    ys, xs, nx, ny, m = ys[keep], xs[keep], nx[keep], ny[keep], m[keep]
    step = 180.0 / bins
    ang = np.degrees(np.arctan2(-ny, nx)) % 180.0
    b = np.floor((ang + step / 2) / step).astype(np.int64) % bins
    chosen = []
    for i in range(bins):
        idx = np.nonzero(b == i)[0]
        if idx.size:
            chosen.append(idx[np.argsort(-m[idx], kind="stable")[:per_bin]])
    if not chosen:
        return None
    sel = np.concatenate(chosen)
    ys, xs, nx, ny, b = ys[sel], xs[sel], nx[sel], ny[sel], b[sel]
    t = np.arange(-r, r + 1, dtype=np.float32)
    prof = _sample(gray, xs[:, None] + t[None] * nx[:, None], ys[:, None] + t[None] * ny[:, None])
    d = np.diff(prof, axis=1)  # slope between samples k and k+1
    d = (d + np.roll(d, 1, axis=1) * 0.5 + np.roll(d, -1, axis=1) * 0.5) / 2.0  # tame noise
    n = len(prof)
    rows = np.arange(n)
    peak = np.maximum(d[:, r - 1:r + 1].max(axis=1), 1e-6)
    # the ramp runs from the centre outwards until the slope falls to 12 % of its peak
    stop = d < 0.12 * peak[:, None]
    rs = stop[:, r:]
    right = np.where(rs.any(axis=1), rs.argmax(axis=1), rs.shape[1]) + r
    ls = stop[:, :r][:, ::-1]
    left = r - np.where(ls.any(axis=1), ls.argmax(axis=1), ls.shape[1])
    contrast = prof[rows, right] - prof[rows, left]
    k = np.arange(d.shape[1])[None]
    inrun = (k >= left[:, None]) & (k < right[:, None])
    dmax = np.where(inrun, d, -np.inf).max(axis=1)
    ok = (contrast > MIN_CONTRAST) & (left > 0) & (right < 2 * r) & np.isfinite(dmax) & \
         (dmax > 0)
    if ok.sum() < MIN_EDGES * 3:
        return None
    return contrast[ok] / dmax[ok], b[ok]


def _raw(gray: np.ndarray) -> tuple[float, float, int, float] | None:
    """(widest orientation's edge width px, its angle deg, edges measured, isotropy) or None.
    Isotropy: the narrowest orientation's blur beyond a sharp edge over the widest's."""
    res = edge_widths(gray)
    if res is None:
        return None
    wid, b = res
    q = np.full(BINS, np.nan)
    for i in range(BINS):
        wi = wid[b == i]
        if wi.size >= MIN_EDGES:
            q[i] = float(np.percentile(wi, PERCENTILE))
    if np.isnan(q).sum() > BINS // 3:  # too few orientations seen to judge
        return None
    imax = int(np.nanargmax(q))
    beyond = np.sqrt(np.maximum(q * q - SHARP_WIDTH * SHARP_WIDTH, 0.0))
    widest = float(np.nanmax(beyond))
    iso = float(np.nanmin(beyond)) / widest if widest > 0 else 1.0
    return float(q[imax]), imax * 180.0 / BINS, int(wid.size), iso


def _beyond_sharp(width: float) -> float:
    return math.sqrt(max(width * width - SHARP_WIDTH * SHARP_WIDTH, 0.0))


def estimate_blur_extent(gray: np.ndarray) -> dict[str, float]:
    """Blur extent in the worst direction of a luma image in [0, 1] (px at its resolution).

    Returns ``blur_extent`` (0 = nothing beyond a sharp edge, or not measurable),
    ``blur_extent_angle`` (degrees, the direction of the widest blur, 0 = horizontal,
    counter-clockwise, in 15-degree steps) and ``blur_extent_edges`` (how many edges were
    measured; 0 when the photo has too few clean edges to say)."""
    none = {"blur_extent": 0.0, "blur_extent_angle": 0.0, "blur_extent_edges": 0.0,
            "blur_isotropy": 1.0}
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2 or min(gray.shape) < 32:
        return none
    res = raw_extent(gray)
    if res is None:
        return none
    extent, angle, edges, iso = res
    return {"blur_extent": float(extent), "blur_extent_angle": float(angle),
            "blur_extent_edges": float(edges), "blur_isotropy": round(float(iso), 3)}


def raw_extent(gray: np.ndarray) -> tuple[float, float, int, float] | None:
    """(extent px, angle deg, edges measured, isotropy). A long smear's ramps outgrow the profile
    window and get cut by neighbouring structures, so beyond RESCALE_ABOVE the photo is also
    measured at half size and the larger reading is kept. The isotropy always comes from the
    full-size measurement: at half size a sharp edge's own width weighs relatively more in the
    narrow directions, which lifts the isotropy of long motion blurs towards a defocus's."""
    res = _raw(gray)
    if res is None:
        return None
    best = (_beyond_sharp(res[0]), res[1], res[2], res[3])
    if best[0] > RESCALE_ABOVE and min(gray.shape) >= 192:
        half = cv2.resize(gray, (gray.shape[1] // 2, gray.shape[0] // 2),
                          interpolation=cv2.INTER_AREA)
        res2 = _raw(half)
        if res2 is not None and 2.0 * _beyond_sharp(res2[0]) > best[0]:
            best = (2.0 * _beyond_sharp(res2[0]), res2[1], res2[2], best[3])
    return best
