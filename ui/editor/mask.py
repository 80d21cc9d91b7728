"""The reflection mask: full-resolution uint8 data, a display-resolution proxy for painting,
and every edit as a QUndoCommand.

Brush strokes are painted on the proxy as the mouse moves (cheap, immediate) and recorded as dabs;
when the stroke ends the same dabs are applied to the full-resolution mask inside the stroke's
bounding box only (in the worker when the box is big), and the proxy is rebuilt from it.
Coordinates are pixel-centred: pixel i is centred on i (the canvas, which draws pixel i over
[i, i + 1), converts); a full-resolution u is (u + 0.5) * scale - 0.5 on the proxy. Global edits
(grow, shrink, feather, invert, clear, fill, load) keep compressed snapshots for undo.

Whole-mask edits never block the GUI thread on a large mask: the edit is previewed on the proxy at
once, and the full-resolution work (the operation itself, the undo snapshots, the proxy rebuild)
runs in a one-thread pool. Every change to the full-resolution mask (edits, undo, redo, brush
patches) goes through one ordered queue, so consecutive edits stay in order, an edit made while
another is computing is applied after it, and undo/redo of a command whose result is not ready yet
is queued behind it. The undo command holds the exact full-resolution before/after once computed.
``busy()`` tells whether work is pending; ``when_idle(fn)`` runs ``fn`` once the full-resolution
mask is final; ``flush()`` waits (tests, shutdown).
"""
from __future__ import annotations

import itertools
import weakref
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PySide6.QtCore import QObject, QRect, QThreadPool, Signal
from PySide6.QtGui import QColor, QImage, QUndoCommand, QUndoStack

PROXY_SIDE = 2048
ASYNC_MIN_PIXELS = 2_000_000  # below this, whole-mask work is quick enough to run inline


def proxy_size_for(height: int, width: int, proxy_side: int = PROXY_SIDE) -> tuple[int, int]:
    """(w, h) of the proxy a ``MaskDocument`` of ``height`` x ``width`` paints on."""
    s = min(1.0, proxy_side / max(height, width))
    return max(1, round(width * s)), max(1, round(height * s))


def mask_proxy(mask: np.ndarray, proxy_side: int = PROXY_SIDE) -> np.ndarray | None:
    """A uint8 ``mask`` at the proxy size of a ``MaskDocument`` of its size, as that document
    reduces it (None: the proxy is the mask's size): made off the GUI thread, handed to
    ``set_mask`` (``proxy``), whose preview then costs no reduction (12 ms at 12 MP)."""
    h, w = mask.shape[:2]
    size = proxy_size_for(h, w, proxy_side)
    if size == (w, h):
        return None
    return cv2.resize(np.ascontiguousarray(mask, np.uint8), size, interpolation=cv2.INTER_AREA)


def dab_kernel(radius: float, hardness: float) -> np.ndarray:
    """float32 alpha in [0, 1] of a round dab: 1 inside hardness*radius, smooth fall-off to 0."""
    r = max(0.5, float(radius))
    n = int(np.ceil(r))
    y, x = np.mgrid[-n:n + 1, -n:n + 1].astype(np.float32)
    d = np.sqrt(x * x + y * y) / r
    h = float(np.clip(hardness, 0.0, 0.999))
    t = np.clip((1.0 - d) / (1.0 - h), 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def apply_dab(mask: np.ndarray, cx: float, cy: float, kernel: np.ndarray, erase: bool) -> None:
    """Stamp ``kernel`` centred on (cx, cy); pixel i is centred on coordinate i."""
    n = kernel.shape[0] // 2
    ix, iy = int(np.floor(float(cx) + 0.5)), int(np.floor(float(cy) + 0.5))  # nearest centre
    x0, y0, x1, y1 = ix - n, iy - n, ix + n + 1, iy + n + 1
    H, W = mask.shape
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    k = kernel[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    region = mask[cy0:cy1, cx0:cx1]
    if erase:
        np.minimum(region, (255.0 * (1.0 - k) + 0.5).astype(np.uint8), out=region)
    else:
        np.maximum(region, (255.0 * k + 0.5).astype(np.uint8), out=region)


def to_proxy(v: float, scale: float) -> float:
    """A full-resolution coordinate on the proxy (pixel i centred on i in both, as cv2.resize
    maps them)."""
    return (v + 0.5) * scale - 0.5


def polygon_coverage(points, shape: tuple[int, int], factor: int = 4
                     ) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """``((x0, y0, x1, y1), coverage)``: the uint8 coverage (0..255) of the pixels a polygon
    touches, inside that box. Pixel i is centred on coordinate i and covers [i - 0.5, i + 0.5);
    coverage is the share of its ``factor`` x ``factor`` sub-pixel centres inside the polygon
    (nonzero winding: a lasso crossing itself fills every loop). Exact where cv2.fillPoly is not:
    it fills every pixel an edge touches (half a pixel too far all round, see the tests). Cost
    follows the box's pixel count (one int16 pass, in bands) and the outline's length."""
    H, W = shape
    p = np.asarray(points, np.float64).reshape(-1, 2)
    if len(p) < 3 or not np.isfinite(p).all():
        return None
    x0 = max(0, int(np.floor(p[:, 0].min() + 0.5)))
    y0 = max(0, int(np.floor(p[:, 1].min() + 0.5)))
    x1 = min(W, int(np.floor(p[:, 0].max() + 0.5)) + 1)
    y1 = min(H, int(np.floor(p[:, 1].max() + 0.5)) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    F = max(1, int(factor))
    bw, bh = x1 - x0, y1 - y0
    sw = bw * F
    q = (p - (x0 - 0.5, y0 - 0.5)) * F - 0.5  # sub-pixel j (of the box) is centred on j
    a, b = q, np.roll(q, -1, axis=0)
    keep = a[:, 1] != b[:, 1]
    a, b = a[keep], b[keep]
    j0 = np.clip(np.ceil(np.minimum(a[:, 1], b[:, 1])), 0, bh * F).astype(np.int64)
    j1 = np.clip(np.ceil(np.maximum(a[:, 1], b[:, 1])), 0, bh * F).astype(np.int64)
    n = j1 - j0  # the sub-pixel rows j0 <= j < j1 cross this edge
    total = int(n.sum())
    cov = np.zeros((bh, bw), np.uint8)
    if total == 0:
        return (x0, y0, x1, y1), cov
    e = np.repeat(np.arange(len(a)), n)
    rows = np.repeat(j0 - np.cumsum(n) + n, n) + np.arange(total)
    t = (rows - a[e, 1]) / (b[e, 1] - a[e, 1])
    xs = a[e, 0] + t * (b[e, 0] - a[e, 0])
    wind = np.where(b[e, 1] > a[e, 1], 1, -1)
    order = np.lexsort((xs, rows))
    rows, xs, wind = rows[order], xs[order], wind[order]
    run = np.cumsum(wind)
    first = np.r_[True, rows[1:] != rows[:-1]]
    after = run - (run - wind)[first][np.cumsum(first) - 1]  # winding right of each crossing
    before = after - wind
    opens, closes = (before == 0) & (after != 0), (before != 0) & (after == 0)
    sa = np.clip(np.ceil(xs[opens]), 0, sw).astype(np.int64)  # spans [sa, sb) of sub-pixels
    sb = np.clip(np.ceil(xs[closes]), 0, sw).astype(np.int64)
    sr = rows[opens] // F  # (a closed outline: the k-th opening and closing share a row)
    ok = sb > sa
    sa, sb, sr = sa[ok], sb[ok], sr[ok]
    # per pixel, the sub-pixel centres of the spans: |[s, inf) & [cF, cF + F)| for each span
    # end as a difference array along the row, summed over the pixel's F sub-rows
    lut = ((np.arange(F * F + 1) * 255 + F * F // 2) // (F * F)).astype(np.uint8)
    step = max(1, (1 << 22) // (bw + 2))  # pixel rows per band (int16 temporaries ~8 MB)
    cuts = np.searchsorted(sr, np.arange(0, bh + step, step))
    for i, r0 in enumerate(range(0, bh, step)):
        k0, k1 = cuts[i], cuts[i + 1]
        if k0 == k1:
            continue
        rh = min(step, bh - r0)
        d = np.zeros((rh, bw + 2), np.int16)
        r = sr[k0:k1] - r0
        for s, sign in ((sa[k0:k1], 1), (sb[k0:k1], -1)):
            c = s // F
            part = (c + 1) * F - s
            np.add.at(d, (r, c), sign * part)
            np.add.at(d, (r, c + 1), sign * (F - part))
        cnt = np.cumsum(d[:, :bw], axis=1, dtype=np.int16)
        cov[r0:r0 + rh] = lut[np.clip(cnt, 0, F * F)]
    return (x0, y0, x1, y1), cov


def interpolate(points: list[tuple[float, float]], spacing: float) -> list[tuple[float, float]]:
    """Dab centres every ``spacing`` pixels along the polyline."""
    if not points:
        return []
    out = [points[0]]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        dist = float(np.hypot(x1 - x0, y1 - y0))
        n = int(dist // max(0.5, spacing))
        for i in range(1, n + 1):
            t = i * spacing / dist
            out.append((x0 + (x1 - x0) * t, y0 + (y1 - y0) * t))
        if not n or out[-1] != (x1, y1):
            out.append((x1, y1))
    return out


@dataclass
class _Stroke:
    erase: bool
    radius: float  # full-resolution pixels
    hardness: float
    points: list[tuple[float, float]]  # full-resolution pixels
    painted: int = 0  # points already painted on the proxy


class MaskDocument(QObject):
    """``changed(QRect)``: the proxy region (proxy pixels) that needs repainting."""

    changed = Signal(QRect)
    busy_changed = Signal(bool)  # full-resolution work pending / all done
    failed = Signal(str)  # a whole-mask edit could not be computed (the mask is unchanged)

    def __init__(self, height: int, width: int, proxy_side: int = PROXY_SIDE,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.full = np.zeros((height, width), np.uint8)
        self.scale = min(1.0, proxy_side / max(height, width))  # proxy pixels per full pixel
        self.proxy_size = proxy_size_for(height, width, proxy_side)  # (w, h)
        self.proxy = np.zeros((self.proxy_size[1], self.proxy_size[0]), np.uint8)
        self.undo = QUndoStack(self)
        self.undo.setUndoLimit(64)
        self.colour = QColor(255, 40, 90)
        self.opacity = 0.5
        self._overlay = np.zeros((self.proxy.shape[0], self.proxy.shape[1], 4), np.uint8)
        self._overlay_img: QImage | None = None
        self._stroke: _Stroke | None = None
        self.async_min_pixels = ASYNC_MIN_PIXELS
        # its first edit is the automatic mask the window laid in (``MainWindow._on_proposal``):
        # while it is the only one, the mask is nobody's choice yet
        self.proposed = False
        self._queue: deque[_Task] = deque()
        self._running: _Task | None = None
        self._job_seq = 0
        self._busy = False
        self._proxy_stale = False
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)  # one worker: full-resolution work stays ordered
        self._relay = _Relay()
        self._relay.done.connect(self._on_job_done)
        self._rebuild_overlay()

    @property
    def shape(self) -> tuple[int, int]:
        return self.full.shape  # type: ignore[return-value]

    # -- display --------------------------------------------------------------------------
    def overlay(self) -> QImage:
        """ARGB32 premultiplied proxy-sized overlay (shares memory with this document)."""
        assert self._overlay_img is not None
        return self._overlay_img

    def set_style(self, colour: QColor | None = None, opacity: float | None = None) -> None:
        if colour is not None:
            self.colour = QColor(colour)
        if opacity is not None:
            self.opacity = float(np.clip(opacity, 0.0, 1.0))
        self._rebuild_overlay()
        self.changed.emit(QRect(0, 0, *self.proxy_size))

    def _rebuild_overlay(self, box: tuple[int, int, int, int] | None = None) -> None:
        x0, y0, x1, y1 = box or (0, 0, self.proxy.shape[1], self.proxy.shape[0])
        # one table lookup per pixel (premultiplied BGRA as uint32): ~8 ms for a full proxy
        o32 = self._overlay.view(np.uint32)[..., 0]
        o32[y0:y1, x0:x1] = self._lut32()[self.proxy[y0:y1, x0:x1]]
        if self._overlay_img is None:
            h, w = self.proxy.shape
            self._overlay_img = QImage(self._overlay.data, w, h, 4 * w,
                                       QImage.Format.Format_ARGB32_Premultiplied)

    def _lut32(self) -> np.ndarray:
        """Mask value -> premultiplied BGRA pixel (uint32) in the overlay's colour."""
        a = np.arange(256, dtype=np.float32) * self.opacity
        c = self.colour
        lut = np.empty((256, 4), np.uint8)
        lut[:, 0] = (a * c.blue() / 255.0 + 0.5).astype(np.uint8)
        lut[:, 1] = (a * c.green() / 255.0 + 0.5).astype(np.uint8)
        lut[:, 2] = (a * c.red() / 255.0 + 0.5).astype(np.uint8)
        lut[:, 3] = (a + 0.5).astype(np.uint8)
        return lut.view(np.uint32)[:, 0]

    def settled(self) -> bool:
        """The proxy shows exactly ``full`` (no stroke being painted, no edit previewed)."""
        return self._stroke is None and not self.busy() and not self._proxy_stale

    def overlay_region(self, box: tuple[int, int, int, int]) -> QImage:
        """The overlay of the full-resolution pixels in ``box`` (x0, y0, x1, y1), for a view
        zoomed in further than the proxy's resolution. An independent ARGB32 premultiplied
        image; costs one table lookup per pixel of the box."""
        x0, y0, x1, y1 = box
        arr = np.ascontiguousarray(self._lut32()[self.full[y0:y1, x0:x1]])
        h, w = arr.shape
        return QImage(arr.data, w, h, 4 * w, QImage.Format.Format_ARGB32_Premultiplied).copy()

    def _proxy_from_full(self, box: tuple[int, int, int, int] | None = None) -> None:
        """Rebuild the proxy (all, or the proxy pixels covering full-res ``box``)."""
        if box is None:
            self._show_proxy(self._proxy_of(self.full))
        else:
            self._show_patch(*self._proxy_patch(self.full, box))

    def _proxy_patch(self, full: np.ndarray, box: tuple[int, int, int, int],
                     region: np.ndarray | None = None
                     ) -> tuple[tuple[int, int, int, int], np.ndarray | None]:
        """``(proxy box, its pixels)`` covering full-res ``box`` of ``full``, with ``region``
        (the new pixels of ``box``) in place of ``full``'s when given. Reads only: called in
        the worker too."""
        x0, y0, x1, y1 = box
        if self.scale >= 1.0:
            src = full[y0:y1, x0:x1] if region is None else region
            return box, np.array(src, np.uint8, copy=True)
        s = self.scale
        pw, ph = self.proxy_size
        px0, py0 = max(0, int(x0 * s)), max(0, int(y0 * s))
        px1, py1 = min(pw, int(np.ceil(x1 * s)) + 1), min(ph, int(np.ceil(y1 * s)) + 1)
        fx0, fy0 = int(px0 / s), int(py0 / s)
        fx1 = min(full.shape[1], int(np.ceil(px1 / s)))
        fy1 = min(full.shape[0], int(np.ceil(py1 / s)))
        pbox = (px0, py0, px1, py1)
        if not (px1 > px0 and py1 > py0 and fx1 > fx0 and fy1 > fy0):
            return pbox, None
        src = full[fy0:fy1, fx0:fx1]
        if region is not None:
            src = src.copy()
            ix0, iy0 = max(x0, fx0), max(y0, fy0)
            ix1, iy1 = min(x1, fx1), min(y1, fy1)
            if ix1 > ix0 and iy1 > iy0:
                src[iy0 - fy0:iy1 - fy0, ix0 - fx0:ix1 - fx0] = \
                    region[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
        return pbox, cv2.resize(src, (px1 - px0, py1 - py0), interpolation=cv2.INTER_AREA)

    def _show_patch(self, pbox: tuple[int, int, int, int], patch: np.ndarray | None) -> None:
        px0, py0, px1, py1 = pbox
        if patch is not None:
            self.proxy[py0:py1, px0:px1] = patch
        self._rebuild_overlay(pbox)
        self.changed.emit(QRect(px0, py0, px1 - px0, py1 - py0))

    # -- brush strokes --------------------------------------------------------------------
    def begin_stroke(self, x: float, y: float, radius: float, hardness: float = 0.7,
                     erase: bool = False) -> None:
        self._stroke = _Stroke(erase, max(0.5, radius), hardness, [(x, y)])
        self._paint_proxy()

    def extend_stroke(self, x: float, y: float) -> None:
        if self._stroke is not None:
            self._stroke.points.append((x, y))
            self._paint_proxy()

    def _paint_proxy(self) -> None:
        st = self._stroke
        assert st is not None
        s = self.scale
        r = st.radius * s
        pts = st.points[max(0, st.painted - 1):]
        dabs = interpolate([(to_proxy(x, s), to_proxy(y, s)) for x, y in pts],
                           max(0.5, r * 0.25))
        k = dab_kernel(r, st.hardness)
        for cx, cy in dabs:
            apply_dab(self.proxy, cx, cy, k, st.erase)
        st.painted = len(st.points)
        if dabs:
            xs, ys = [d[0] for d in dabs], [d[1] for d in dabs]
            n = k.shape[0] // 2 + 1
            pw, ph = self.proxy_size
            box = (max(0, int(min(xs)) - n), max(0, int(min(ys)) - n),
                   min(pw, int(max(xs)) + n + 1), min(ph, int(max(ys)) + n + 1))
            if box[2] > box[0] and box[3] > box[1]:
                self._rebuild_overlay(box)
                self.changed.emit(QRect(box[0], box[1], box[2] - box[0], box[3] - box[1]))

    def end_stroke(self) -> None:
        """Apply the stroke at full resolution (bounding box only) as one undoable command."""
        st, self._stroke = self._stroke, None
        if st is None:
            return
        dabs = interpolate(st.points, max(0.5, st.radius * 0.25))
        n = int(np.ceil(max(0.5, float(st.radius)))) + 1  # dab_kernel's half size + 1
        H, W = self.full.shape
        xs, ys = [d[0] for d in dabs], [d[1] for d in dabs]
        box = (max(0, int(min(xs)) - n), max(0, int(min(ys)) - n),
               min(W, int(max(xs)) + n + 1), min(H, int(max(ys)) + n + 1))
        if box[2] <= box[0] or box[3] <= box[1]:
            self._proxy_from_full()
            return
        x0, y0 = box[0], box[1]

        def paint(region: np.ndarray) -> None:  # in the stroke's turn (the worker if big)
            k = dab_kernel(st.radius, st.hardness)
            for cx, cy in dabs:
                apply_dab(region, cx - x0, cy - y0, k, st.erase)

        self.undo.push(_PatchCommand(self, box, paint, "Erase" if st.erase else "Brush"))

    def stroking(self) -> bool:
        return self._stroke is not None

    # -- global edits ---------------------------------------------------------------------
    def fill_polygon(self, points: list[tuple[float, float]], erase: bool = False) -> None:
        if len(points) < 3:
            return
        pts = np.asarray(points, np.float64)  # full-resolution pixels, pixel i centred on i

        def fill(m: np.ndarray, q: np.ndarray, factor: int) -> np.ndarray:
            out = m.copy()
            got = polygon_coverage(q, m.shape, factor)
            if got is not None:
                (x0, y0, x1, y1), cov = got
                region = out[y0:y1, x0:x1]
                if erase:
                    np.minimum(region, 255 - cov, out=region)
                else:
                    np.maximum(region, cov, out=region)
            return out

        def preview(p: np.ndarray) -> np.ndarray:
            q = to_proxy(pts, self.scale)
            span = q.max(axis=0) - q.min(axis=0)
            # (a preview: a coarser sub-grid keeps a frame-sized lasso cheap on the GUI thread)
            return fill(p, q, 4 if span[0] * span[1] <= 1_000_000 else 2)

        self._global("Lasso erase" if erase else "Lasso fill", lambda f: fill(f, pts, 4), preview)

    def grow(self, px: int) -> None:
        if px > 0:
            self._global(f"Grow {px}px", lambda f: _morph(f, px, cv2.dilate),
                         lambda p: _morph(p, round(px * self.scale), cv2.dilate))

    def shrink(self, px: int) -> None:
        if px > 0:
            self._global(f"Shrink {px}px", lambda f: _morph(f, px, cv2.erode),
                         lambda p: _morph(p, round(px * self.scale), cv2.erode))

    def feather(self, px: float) -> None:
        if px > 0:
            self._global(f"Feather {px}px", lambda f: _blur(f, float(px)),
                         lambda p: _blur(p, float(px) * self.scale))

    def invert(self) -> None:
        self._global("Invert", lambda f: 255 - f, lambda p: 255 - p)

    def clear(self) -> None:
        self._global("Clear", np.zeros_like, np.zeros_like)

    def set_mask(self, mask: np.ndarray, text: str = "Set mask", combine: str = "replace",
                 proxy: np.ndarray | None = None) -> None:
        """Replace (or ``add`` / ``subtract``) with a uint8 / bool / float mask of any size.
        ``proxy``: a uint8 mask of this document's size already reduced to its proxy
        (``mask_proxy``, off the GUI thread): the preview of a replacement is that, not the
        mask reduced here."""
        m = np.asarray(mask)
        if m.dtype == bool:
            m = m.astype(np.uint8) * 255
        elif m.dtype != np.uint8:
            m = (np.clip(m.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
        if m.ndim == 3:
            m = m[..., 0]

        def put(cur: np.ndarray, interpolation: int) -> np.ndarray:
            n = m
            if n.shape != cur.shape:
                n = cv2.resize(n, (cur.shape[1], cur.shape[0]), interpolation=interpolation)
            if combine == "add":
                return np.maximum(cur, n)
            if combine == "subtract":
                return np.minimum(cur, 255 - n)
            return np.array(n, np.uint8, copy=True)

        if (proxy is not None and combine == "replace" and m.shape == self.full.shape
                and proxy.shape == self.proxy.shape and proxy.dtype == np.uint8):
            reduced = proxy

            def preview(_p: np.ndarray) -> np.ndarray:
                return np.array(reduced, copy=True)
        else:
            def preview(p: np.ndarray) -> np.ndarray:
                return put(p, cv2.INTER_AREA)

        self._global(text, lambda f: put(f, cv2.INTER_LINEAR), preview)

    def _global(self, text: str, full_fn: Callable[[np.ndarray], np.ndarray],
                proxy_fn: Callable[[np.ndarray], np.ndarray]) -> None:
        """One undoable whole-mask edit: ``proxy_fn`` previews it now (GUI thread, proxy
        pixels), ``full_fn`` computes it at full resolution in its turn (worker on a large
        mask, so the GUI thread never waits for it)."""
        before = self.proxy.copy()
        self.undo.push(_GlobalCommand(self, full_fn, text, before, proxy_fn(before)))

    # -- the ordered full-resolution queue ------------------------------------------------
    def busy(self) -> bool:
        """Full-resolution work is pending (``full`` is not yet the final mask)."""
        return self._running is not None or bool(self._queue)

    def when_idle(self, fn: Callable[[], Any]) -> None:
        """Call ``fn`` on the GUI thread once every edit made so far is applied to ``full``."""
        self._enqueue(lambda _r: fn())

    def dispose(self) -> None:
        """``deleteLater()`` a document nobody shows or edits any more, without the exact
        proxy rebuilt first (for nobody: on a large mask that rebuild starts in the worker, and
        its task, holding the document, was never finished once it was deleted - a reference
        cycle). Called from ``when_idle`` it waits for the work queued before."""
        self._proxy_stale = False
        self.deleteLater()

    def flush(self) -> None:
        """Block until all pending full-resolution work is applied (tests, shutdown)."""
        saved = self.async_min_pixels
        try:
            while self.busy() or (self._proxy_stale and self._stroke is None):
                if self._running is not None:
                    self._pool.waitForDone()
                    task, self._running = self._running, None
                    self._finish(task)
                self.async_min_pixels = 1 << 62  # run the rest inline
                self._pump()
        finally:
            self.async_min_pixels = saved

    def _enqueue(self, apply: Callable[[Any], None],
                 work: Callable[[np.ndarray], Any] | None = None,
                 on_error: Callable[[BaseException], None] | None = None,
                 size: int | None = None) -> None:
        """``work(full)`` runs in the pool when it touches ``size`` (default: all of the
        mask's) pixels or more, else inline; ``apply(result)`` then runs on the GUI thread."""
        self._queue.append(_Task(apply, work, on_error, size=size))
        self._pump()

    def _pump(self) -> None:
        while self._running is None:
            if not self._queue:
                if not self._proxy_stale or self._stroke is not None:
                    break  # (a stroke being painted on the proxy: refresh after it ends)
                self._proxy_stale = False  # rebuild the exact proxy from the final mask
                self._queue.append(_Task(self._apply_proxy, self._proxy_of))
            task = self._queue.popleft()
            if task.work is None:
                task.apply(None)
            elif (self.full.size if task.size is None else task.size) \
                    < self.async_min_pixels:
                self._run_inline(task)
            else:
                self._running = task
                self._set_busy(True)
                self._job_seq += 1
                task.seq = self._job_seq
                def job(task: _Task = task, full: np.ndarray = self.full,
                        relay: _Relay = self._relay, seq: int = task.seq) -> None:
                    try:
                        task.result = task.work(full)  # type: ignore[misc]
                    except BaseException as e:  # noqa: BLE001 - reported on the GUI thread
                        task.error = e
                    relay.done.emit(seq)

                self._pool.start(job)
        self._set_busy(self.busy())

    def _run_inline(self, task: _Task) -> None:
        try:
            task.result = task.work(self.full)  # type: ignore[misc]
        except Exception as e:  # noqa: BLE001
            task.error = e
        self._finish(task)

    def _on_job_done(self, seq: int) -> None:
        task = self._running
        # a job that flush() already finished still signals later: its number is not the
        # running job's. (A sequence number, not id(task): a freed task's address is reused by
        # the next one, and the stale signal then "finished" a job still computing.)
        if task is None or task.seq != seq:
            return
        self._running = None
        self._finish(task)
        self._pump()

    def _finish(self, task: _Task) -> None:
        if task.error is not None:
            self._proxy_stale = True  # drop the preview: show the mask as it really is
            if task.on_error is not None:
                task.on_error(task.error)
            self.failed.emit(f"Could not change the mask: {task.error}")
            return
        task.apply(task.result)

    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self.busy_changed.emit(busy)

    def _proxy_of(self, full: np.ndarray) -> np.ndarray:
        """The proxy for a full-resolution mask (called in the worker too)."""
        if self.scale >= 1.0:
            return np.array(full, copy=True)
        return cv2.resize(full, self.proxy_size, interpolation=cv2.INTER_AREA)

    def _apply_proxy(self, proxy: np.ndarray | None) -> None:
        if proxy is None:
            return
        if self._queue or self._stroke is not None:  # later edits / the stroke being painted
            self._proxy_stale = True  # are previewed on the proxy: keep them on screen
        else:
            self._show_proxy(proxy)

    def _show_proxy(self, proxy: np.ndarray) -> None:
        self.proxy[...] = proxy
        self._rebuild_overlay()
        self.changed.emit(QRect(0, 0, *self.proxy_size))

    def _apply_full(self, payload: tuple[np.ndarray, np.ndarray] | None) -> None:
        if payload is None:  # an edit that failed: replace its preview by the real mask
            self._proxy_stale = True
            return
        full, proxy = payload
        self.full[...] = full
        self._apply_proxy(proxy)

    # -- files ----------------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        path = Path(path)
        try:
            from engine.imageio import save_mask
        except ImportError:
            save_mask = None
        if save_mask is not None:
            return Path(save_mask(self.full, path) or path)
        from engine.imageio import atomic_write_bytes

        ok, buf = cv2.imencode(".png", self.full)
        if not ok:
            raise OSError(f"could not encode {path}")
        atomic_write_bytes(path, buf.tobytes())
        return path

    def load(self, path: Path) -> None:
        self.set_mask(read_mask(Path(path), self.full.shape), f"Load {Path(path).name}")

    def coverage(self) -> float:
        return float((self.full > 127).mean())


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        from engine.imageio import load_mask
    except ImportError:
        load_mask = None
    if load_mask is not None:
        return np.asarray(load_mask(path, shape), np.uint8)
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        from engine.errors import BadImage

        raise BadImage(path, "cannot read this mask")
    if m.shape != tuple(shape):
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return m


def _morph(m: np.ndarray, px: int, op: Callable[..., np.ndarray]) -> np.ndarray:
    if px <= 0:
        return m.copy()
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return op(m, k)


def _blur(m: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.2:
        return m.copy()
    return cv2.GaussianBlur(m, (0, 0), sigma)


def _z(a: np.ndarray) -> bytes:
    return zlib.compress(memoryview(np.ascontiguousarray(a)).cast("B"), 1)  # no extra copy


def _unz(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))  # exact output size: one allocation, zlib runs without the GIL
    return np.frombuffer(zlib.decompress(data, 15, n), np.uint8).reshape(shape)


@dataclass(eq=False)
class _Task:
    apply: Callable[[Any], None]  # GUI thread, in queue order
    work: Callable[[np.ndarray], Any] | None = None  # worker (inline on a small mask)
    on_error: Callable[[BaseException], None] | None = None
    result: Any = None
    error: BaseException | None = None
    seq: int = 0  # the document's job number once started in the pool
    size: int | None = None  # pixels the work touches (None: the whole mask)


class _Relay(QObject):
    done = Signal(object)  # job number of the finished task (queued to the GUI thread)


class _DocCommand(QUndoCommand):
    """An undo command of a document's stack, holding its document weakly.

    The stack belongs to the document; a command referring back to it strongly makes a
    reference cycle, so a dropped document was freed by the garbage collector, whose clearing
    of the cycle deletes the C++ stack and its commands under the collector's feet: a
    segfault (a document with a redo branch, collected at the end of the UI tests). Without
    the cycle the document is freed the moment it is dropped."""

    def __init__(self, doc: MaskDocument, text: str) -> None:
        super().__init__(text)
        self._doc = weakref.ref(doc)

    @property
    def doc(self) -> MaskDocument:
        doc = self._doc()
        if doc is None:
            raise RuntimeError("the mask document is gone")
        return doc


class _PatchCommand(_DocCommand):
    """A brush stroke in its bounding box. In the stroke's turn of the document's queue (in the
    worker when the box is big, so ending a big stroke and its undo/redo never block the GUI
    thread) the dabs are painted on a copy of the box, before/after are compressed and the
    proxy pixels over the box computed; the GUI thread only copies them in."""

    def __init__(self, doc: MaskDocument, box: tuple[int, int, int, int],
                 paint: Callable[[np.ndarray], None], text: str) -> None:
        super().__init__(doc, text)
        self.box, self.paint = box, paint
        x0, y0, x1, y1 = box
        self.shape = (y1 - y0, x1 - x0)
        self.before: bytes | None = None
        self.after: bytes | None = None
        self.broken = False

    def _work(self, which: str, full: np.ndarray) -> Any:
        """(worker) The box's new pixels and the proxy patch over it."""
        if self.broken:
            return None
        x0, y0, x1, y1 = self.box
        if self.after is None:  # first redo, in the stroke's turn
            region = np.array(full[y0:y1, x0:x1], copy=True)
            self.before = _z(region)
            self.paint(region)
            self.after = _z(region)
            self.paint = None  # type: ignore[assignment]
        else:
            data = self.after if which == "after" else self.before
            region = _unz(data, self.shape)  # type: ignore[arg-type]
        return region, self.doc._proxy_patch(full, self.box, region)

    def _apply(self, result: Any) -> None:
        """(GUI thread) Copy the computed box in."""
        if result is None:
            return
        region, patch = result
        x0, y0, x1, y1 = self.box
        doc = self.doc
        doc.full[y0:y1, x0:x1] = region
        if doc._queue or doc._stroke is not None:  # later edits / a stroke being painted
            doc._proxy_stale = True  # are previewed on the proxy: keep them on screen
        else:
            doc._show_patch(*patch)

    def _fail(self, _e: BaseException) -> None:
        self.broken = True  # the mask is unchanged: undo/redo of this stroke do nothing

    def _enqueue(self, which: str) -> None:
        doc = self.doc
        doc._enqueue(self._apply, lambda f: self._work(which, f), self._fail,
                     size=self.shape[0] * self.shape[1])

    def redo(self) -> None:
        self._enqueue("after")

    def undo(self) -> None:
        self._enqueue("before")


class _GlobalCommand(_DocCommand):
    """A whole-mask edit. The proxy shows its preview (or, on undo, the proxy it replaced) at
    once; the full-resolution result and the compressed before/after snapshots are computed in
    the edit's turn of the document's queue; undo/redo restore the exact snapshots."""

    def __init__(self, doc: MaskDocument, fn: Callable[[np.ndarray], np.ndarray], text: str,
                 proxy_before: np.ndarray, proxy_after: np.ndarray) -> None:
        super().__init__(doc, text)
        self.fn, self.shape = fn, doc.full.shape
        self._p = {"before": proxy_before, "after": proxy_after}  # raw until compressed
        self._pz: dict[str, bytes] = {}
        self.before: bytes | None = None  # full resolution, zlib, once computed
        self.after: bytes | None = None
        self.broken = False

    def ready(self) -> bool:
        return self.after is not None

    def _preview(self, which: str) -> None:
        p = self._p.get(which)
        if p is None:
            p = _unz(self._pz[which], self.doc.proxy.shape)
        self.doc._show_proxy(p)

    def _restore(self, which: str, full: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray] | None:
        if self.broken:
            return None
        if self.after is None:  # first redo: compute (worker)
            new = self.fn(full)
            self.before, self.after = _z(full), _z(new)
            for w in ("before", "after"):  # the previews, compressed off the GUI thread
                self._pz[w] = _z(self._p[w])
            self._p = {}
            self.fn = None  # type: ignore[assignment]
            return new, self.doc._proxy_of(new)
        data = self.after if which == "after" else self.before
        arr = _unz(data, self.shape)  # type: ignore[arg-type]
        return arr, self.doc._proxy_of(arr)

    def _fail(self, _e: BaseException) -> None:
        self.broken = True  # nothing changed: undo/redo of this edit do nothing

    def redo(self) -> None:
        self._preview("after")
        self.doc._enqueue(self.doc._apply_full, lambda f: self._restore("after", f), self._fail)

    def undo(self) -> None:
        self._preview("before")
        self.doc._enqueue(self.doc._apply_full, lambda f: self._restore("before", f), self._fail)
