"""The reflection mask: full-resolution uint8 data, a display-resolution proxy for painting,
and every edit as a QUndoCommand.

Brush strokes are painted on the proxy as the mouse moves (cheap, immediate) and recorded as dabs;
when the stroke ends the same dabs are applied to the full-resolution mask inside the stroke's
bounding box only, and the proxy is rebuilt from it. Global edits (grow, shrink, feather, invert,
clear, fill, load) keep compressed snapshots for undo.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PySide6.QtCore import QObject, QRect, Signal
from PySide6.QtGui import QColor, QImage, QUndoCommand, QUndoStack

PROXY_SIDE = 2048


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
    n = kernel.shape[0] // 2
    ix, iy = int(round(cx)), int(round(cy))
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


def interpolate(points: list[tuple[float, float]], spacing: float) -> list[tuple[float, float]]:
    """Dab centres every ``spacing`` pixels along the polyline."""
    if not points:
        return []
    out = [points[0]]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
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

    def __init__(self, height: int, width: int, proxy_side: int = PROXY_SIDE,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.full = np.zeros((height, width), np.uint8)
        s = min(1.0, proxy_side / max(height, width))
        self.scale = s  # proxy pixels per full pixel
        self.proxy_size = (max(1, round(width * s)), max(1, round(height * s)))  # (w, h)
        self.proxy = np.zeros((self.proxy_size[1], self.proxy_size[0]), np.uint8)
        self.undo = QUndoStack(self)
        self.undo.setUndoLimit(64)
        self.colour = QColor(255, 40, 90)
        self.opacity = 0.5
        self._overlay = np.zeros((self.proxy.shape[0], self.proxy.shape[1], 4), np.uint8)
        self._overlay_img: QImage | None = None
        self._stroke: _Stroke | None = None
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
        a = self.proxy[y0:y1, x0:x1].astype(np.float32) * self.opacity
        c = self.colour
        o = self._overlay[y0:y1, x0:x1]
        o[..., 0] = (a * c.blue() / 255.0 + 0.5).astype(np.uint8)  # premultiplied BGRA
        o[..., 1] = (a * c.green() / 255.0 + 0.5).astype(np.uint8)
        o[..., 2] = (a * c.red() / 255.0 + 0.5).astype(np.uint8)
        o[..., 3] = (a + 0.5).astype(np.uint8)
        if self._overlay_img is None:
            h, w = self.proxy.shape
            self._overlay_img = QImage(self._overlay.data, w, h, 4 * w,
                                       QImage.Format.Format_ARGB32_Premultiplied)

    def _proxy_from_full(self, box: tuple[int, int, int, int] | None = None) -> None:
        """Rebuild the proxy (all, or the proxy pixels covering full-res ``box``)."""
        if self.scale >= 1.0:
            if box is None:
                self.proxy[...] = self.full
            else:
                x0, y0, x1, y1 = box
                self.proxy[y0:y1, x0:x1] = self.full[y0:y1, x0:x1]
            pbox = box
        elif box is None:
            self.proxy[...] = cv2.resize(self.full, self.proxy_size, interpolation=cv2.INTER_AREA)
            pbox = None
        else:
            s = self.scale
            x0, y0, x1, y1 = box
            pw, ph = self.proxy_size
            px0, py0 = max(0, int(x0 * s)), max(0, int(y0 * s))
            px1, py1 = min(pw, int(np.ceil(x1 * s)) + 1), min(ph, int(np.ceil(y1 * s)) + 1)
            fx0, fy0 = int(px0 / s), int(py0 / s)
            fx1 = min(self.full.shape[1], int(np.ceil(px1 / s)))
            fy1 = min(self.full.shape[0], int(np.ceil(py1 / s)))
            if px1 > px0 and py1 > py0 and fx1 > fx0 and fy1 > fy0:
                self.proxy[py0:py1, px0:px1] = cv2.resize(
                    self.full[fy0:fy1, fx0:fx1], (px1 - px0, py1 - py0),
                    interpolation=cv2.INTER_AREA)
            pbox = (px0, py0, px1, py1)
        self._rebuild_overlay(pbox)
        if pbox is None:
            self.changed.emit(QRect(0, 0, *self.proxy_size))
        else:
            self.changed.emit(QRect(pbox[0], pbox[1], pbox[2] - pbox[0], pbox[3] - pbox[1]))

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
        dabs = interpolate([(x * s, y * s) for x, y in pts], max(0.5, r * 0.25))
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
        k = dab_kernel(st.radius, st.hardness)
        n = k.shape[0] // 2 + 1
        H, W = self.full.shape
        xs, ys = [d[0] for d in dabs], [d[1] for d in dabs]
        box = (max(0, int(min(xs)) - n), max(0, int(min(ys)) - n),
               min(W, int(max(xs)) + n + 1), min(H, int(max(ys)) + n + 1))
        if box[2] <= box[0] or box[3] <= box[1]:
            self._proxy_from_full()
            return
        x0, y0, x1, y1 = box
        before = self.full[y0:y1, x0:x1].copy()
        after = before.copy()
        for cx, cy in dabs:
            apply_dab(after, cx - x0, cy - y0, k, st.erase)
        self.undo.push(_PatchCommand(self, box, before, after,
                                     "Erase" if st.erase else "Brush"))

    def stroking(self) -> bool:
        return self._stroke is not None

    # -- global edits ---------------------------------------------------------------------
    def fill_polygon(self, points: list[tuple[float, float]], erase: bool = False) -> None:
        if len(points) < 3:
            return
        new = self.full.copy()
        pts = np.round(np.asarray(points, np.float64) * 16).astype(np.int32)
        cv2.fillPoly(new, [pts], 0 if erase else 255, lineType=cv2.LINE_AA, shift=4)
        self._commit(new, "Lasso erase" if erase else "Lasso fill")

    def grow(self, px: int) -> None:
        if px > 0:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
            self._commit(cv2.dilate(self.full, k), f"Grow {px}px")

    def shrink(self, px: int) -> None:
        if px > 0:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
            self._commit(cv2.erode(self.full, k), f"Shrink {px}px")

    def feather(self, px: float) -> None:
        if px > 0:
            self._commit(cv2.GaussianBlur(self.full, (0, 0), float(px)), f"Feather {px}px")

    def invert(self) -> None:
        self._commit(255 - self.full, "Invert")

    def clear(self) -> None:
        self._commit(np.zeros_like(self.full), "Clear")

    def set_mask(self, mask: np.ndarray, text: str = "Set mask", combine: str = "replace") -> None:
        """Replace (or ``add`` / ``subtract``) with a uint8 / bool / float mask of any size."""
        m = np.asarray(mask)
        if m.dtype == bool:
            m = m.astype(np.uint8) * 255
        elif m.dtype != np.uint8:
            m = (np.clip(m.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
        if m.ndim == 3:
            m = m[..., 0]
        if m.shape != self.full.shape:
            m = cv2.resize(m, (self.full.shape[1], self.full.shape[0]),
                           interpolation=cv2.INTER_LINEAR)
        if combine == "add":
            m = np.maximum(self.full, m)
        elif combine == "subtract":
            m = np.minimum(self.full, 255 - m)
        self._commit(m, text)

    def _commit(self, new: np.ndarray, text: str) -> None:
        self.undo.push(_SnapshotCommand(self, self.full, new, text))

    def _replace_full(self, new: np.ndarray) -> None:
        self.full[...] = new
        self._proxy_from_full()

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


class _PatchCommand(QUndoCommand):
    def __init__(self, doc: MaskDocument, box: tuple[int, int, int, int], before: np.ndarray,
                 after: np.ndarray, text: str) -> None:
        super().__init__(text)
        self.doc, self.box = doc, box
        self.before = zlib.compress(before.tobytes(), 1)
        self.after = zlib.compress(after.tobytes(), 1)
        self.shape = before.shape

    def _put(self, data: bytes) -> None:
        x0, y0, x1, y1 = self.box
        self.doc.full[y0:y1, x0:x1] = np.frombuffer(zlib.decompress(data), np.uint8).reshape(
            self.shape)
        self.doc._proxy_from_full(self.box)

    def redo(self) -> None:
        self._put(self.after)

    def undo(self) -> None:
        self._put(self.before)


class _SnapshotCommand(QUndoCommand):
    def __init__(self, doc: MaskDocument, before: np.ndarray, after: np.ndarray, text: str):
        super().__init__(text)
        self.doc = doc
        self.shape = before.shape
        self.before = zlib.compress(np.ascontiguousarray(before).tobytes(), 1)
        self.after = zlib.compress(np.ascontiguousarray(after).tobytes(), 1)

    def _put(self, data: bytes) -> None:
        self.doc._replace_full(np.frombuffer(zlib.decompress(data), np.uint8).reshape(self.shape))

    def redo(self) -> None:
        self._put(self.after)

    def undo(self) -> None:
        self._put(self.before)
