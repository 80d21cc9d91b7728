"""The canvas with mask tools: brush, eraser, lasso fill (drag) / polygon (clicks), SAM click."""
from __future__ import annotations

import math

from PySide6.QtCore import QEvent, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen, QPolygonF

from .canvas import ImageCanvas
from .mask import MaskDocument

TOOLS = ("pan", "brush", "erase", "lasso", "sam")
# zoomed in past the proxy's resolution with at most this many photo pixels in view, the overlay
# is made from the full-resolution mask (one table lookup per pixel, ~8 ms at this size; cached
# with a margin until the mask changes or the view leaves it)
FULL_OVERLAY_MAX_PIXELS = 2_500_000


class MaskCanvas(ImageCanvas):
    sam_clicked = Signal(float, float, int)  # full-res x, y, 1 = include / 0 = exclude
    tool_changed = Signal(str)
    brush_changed = Signal(float, float)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.doc: MaskDocument | None = None
        self.tool = "pan"
        self.brush_radius = 24.0  # full-resolution pixels
        self.hardness = 0.7
        self._cursor: QPointF | None = None
        self._lasso: list[QPointF] = []  # source pixels
        self._polygon = False
        self._full_overlay: tuple[tuple[int, int, int, int], QImage] | None = None

    def set_document(self, doc: MaskDocument | None) -> None:
        if self.doc is not None:
            try:
                self.doc.changed.disconnect(self._on_doc_changed)
            except (RuntimeError, TypeError):
                pass
        self.doc = doc
        self._full_overlay = None
        if doc is not None:
            doc.changed.connect(self._on_doc_changed)
            self.mask_overlay = doc.overlay()
        else:
            self.mask_overlay = None
        self.update()

    def _on_doc_changed(self, _rect) -> None:
        self._full_overlay = None
        if self.doc is not None:
            self.mask_overlay = self.doc.overlay()
        self.update()

    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(tool)
        self.tool = tool
        self._lasso.clear()
        self._polygon = False  # (a polygon left open would turn the next lasso into clicks)
        self.setCursor(Qt.CursorShape.CrossCursor if tool != "pan"
                       else Qt.CursorShape.OpenHandCursor)
        self.tool_changed.emit(tool)
        self.update()

    def set_brush(self, radius: float | None = None, hardness: float | None = None) -> None:
        if radius is not None:
            self.brush_radius = max(1.0, min(2000.0, float(radius)))
        if hardness is not None:
            self.hardness = max(0.0, min(1.0, float(hardness)))
        self.brush_changed.emit(self.brush_radius, self.hardness)
        self.update()

    def _src(self, pos: QPointF) -> QPointF:
        """The source-pixel coordinate under a widget position, pixel i centred on i (as the
        mask's dabs and lasso take it). The canvas draws pixel i over [i, i + 1)."""
        q = self.scene_to_source(self.to_scene(pos))
        return QPointF(q.x() - 0.5, q.y() - 0.5)

    # -- mouse ----------------------------------------------------------------------------
    def mousePressEvent(self, e) -> None:
        if (self.doc is None or self.tool == "pan" or e.button() != Qt.MouseButton.LeftButton
                or self._near_split(e.position())):
            return super().mousePressEvent(e)
        p = self._src(e.position())
        alt = bool(e.modifiers() & (Qt.KeyboardModifier.AltModifier
                                    | Qt.KeyboardModifier.ShiftModifier))
        if self.tool in ("brush", "erase"):
            erase = (self.tool == "erase") != alt
            self.doc.begin_stroke(p.x(), p.y(), self.brush_radius, self.hardness, erase)
        elif self.tool == "lasso":
            if not self._polygon:
                self._lasso = [p]
            else:
                self._lasso.append(p)
        elif self.tool == "sam":
            self.sam_clicked.emit(p.x(), p.y(), 0 if alt else 1)
        e.accept()

    def mouseMoveEvent(self, e) -> None:
        self._cursor = e.position()
        if self.doc is not None and self.tool in ("brush", "erase") and self.doc.stroking():
            p = self._src(e.position())
            self.doc.extend_stroke(p.x(), p.y())
        elif self.tool == "lasso" and self._lasso and not self._polygon and (
                e.buttons() & Qt.MouseButton.LeftButton):
            self._lasso.append(self._src(e.position()))
            self.update()
        elif self.tool == "pan" or self._drag:
            return super().mouseMoveEvent(e)
        self.update()

    def mouseReleaseEvent(self, e) -> None:
        if self._drag:
            return super().mouseReleaseEvent(e)
        if self.doc is None:
            return
        if self.tool in ("brush", "erase") and self.doc.stroking():
            self.doc.end_stroke()
        elif self.tool == "lasso" and self._lasso and not self._polygon:
            if len(self._lasso) <= 2:  # a click, not a drag: start a polygon
                self._polygon = True
                self._lasso = self._lasso[:1]
            else:
                self._finish_lasso(e)
        self.update()

    def mouseDoubleClickEvent(self, e) -> None:
        if self.tool == "lasso" and self._polygon:
            self._finish_lasso(e)
            return
        if self.tool == "pan":
            super().mouseDoubleClickEvent(e)

    def _finish_lasso(self, e) -> None:
        erase = bool(e.modifiers() & (Qt.KeyboardModifier.AltModifier
                                      | Qt.KeyboardModifier.ShiftModifier))
        pts = [(p.x(), p.y()) for p in self._lasso]
        self._lasso.clear()
        self._polygon = False
        if self.doc is not None and len(pts) >= 3:
            self.doc.fill_polygon(pts, erase)
        self.update()

    def event(self, e) -> bool:
        # while a lasso / polygon is being drawn, Esc (cancel it) and Return/Enter (close it)
        # belong to the canvas, not to the window's shortcuts (Esc there leaves the editor)
        if e.type() == QEvent.Type.ShortcutOverride and self._keeps_key(e.key()):
            e.accept()
            return True
        return super().event(e)

    def _keeps_key(self, key: int) -> bool:
        if key == Qt.Key.Key_Escape:
            return bool(self._lasso) or self._polygon
        return key in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self._polygon

    def keyPressEvent(self, e) -> None:
        if e.key() == Qt.Key.Key_Escape and (self._lasso or self._polygon):
            self._lasso.clear()
            self._polygon = False
            self.update()
            return
        if e.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self._polygon:
            self._finish_lasso(e)
            return
        super().keyPressEvent(e)

    def leaveEvent(self, e) -> None:
        self._cursor = None
        self.update()
        super().leaveEvent(e)

    # -- painting -------------------------------------------------------------------------
    def _draw_overlays(self, p: QPainter, pane: QRectF) -> None:
        if not self._draw_full_overlay(p, pane):
            return super()._draw_overlays(p, pane)
        shown, self.show_mask = self.show_mask, False  # (drawn: the boxes only)
        try:
            super()._draw_overlays(p, pane)
        finally:
            self.show_mask = shown

    def _draw_full_overlay(self, p: QPainter, pane: QRectF) -> bool:
        """Zoomed in past the proxy's resolution, draw the overlay of the visible part of the
        full-resolution mask (the stretched proxy showed a thin erased gap as still selected).
        False: the proxy overlay is drawn as usual (zoomed out, a huge visible region, or the
        proxy holding what ``full`` does not yet: a stroke or an edit in progress)."""
        doc = self.doc
        if (doc is None or not self.show_mask or self.mask_overlay is None or doc.scale >= 1.0
                or not doc.settled()):
            return False
        k = self.source_scale()  # scene pixels per source pixel
        if self.zoom * self.devicePixelRatioF() * k <= doc.scale:
            return False
        vis = self._visible_scene(pane)
        if vis.isEmpty():
            return False
        H, W = doc.shape
        want = (max(0, math.floor(vis.left() / k)), max(0, math.floor(vis.top() / k)),
                min(W, math.ceil(vis.right() / k)), min(H, math.ceil(vis.bottom() / k)))
        if want[2] <= want[0] or want[3] <= want[1]:
            return False
        area = (want[2] - want[0]) * (want[3] - want[1])
        if area > FULL_OVERLAY_MAX_PIXELS:
            return False
        got = self._full_overlay
        if got is None or not (got[0][0] <= want[0] and got[0][1] <= want[1]
                               and got[0][2] >= want[2] and got[0][3] >= want[3]):
            box = want  # with a margin while the budget allows: a small pan reuses it
            mx, my = (want[2] - want[0]) // 4, (want[3] - want[1]) // 4
            wide = (max(0, want[0] - mx), max(0, want[1] - my),
                    min(W, want[2] + mx), min(H, want[3] + my))
            if (wide[2] - wide[0]) * (wide[3] - wide[1]) <= FULL_OVERLAY_MAX_PIXELS:
                box = wide
            got = self._full_overlay = (box, doc.overlay_region(box))
        (bx0, by0, _bx1, _by1), img = got
        src = QRectF(want[0] - bx0, want[1] - by0, want[2] - want[0], want[3] - want[1])
        dst = QRectF(self.to_widget(QPointF(want[0] * k, want[1] * k), pane),
                     self.to_widget(QPointF(want[2] * k, want[3] * k), pane))
        p.drawImage(dst, img, src)
        return True

    def paint_tool(self, p: QPainter) -> None:
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        if self._lasso:
            k = self.source_scale()
            poly = QPolygonF([self.to_widget(QPointF((q.x() + 0.5) * k, (q.y() + 0.5) * k))
                              for q in self._lasso])
            if self._polygon and self._cursor is not None:
                poly.append(self._cursor)
            p.setPen(QPen(QColor(255, 255, 255, 230), 1.5, Qt.PenStyle.DashLine))
            p.setBrush(QColor(255, 40, 90, 50))
            p.drawPolygon(poly)
        if self._cursor is not None and self.tool in ("brush", "erase"):
            r = self.brush_radius * self.source_scale() * self.zoom
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.setPen(QPen(QColor(0, 0, 0, 160), 3))
            p.drawEllipse(QRectF(self._cursor.x() - r, self._cursor.y() - r, 2 * r, 2 * r))
            p.setPen(QPen(QColor(255, 255, 255, 230), 1))
            p.drawEllipse(QRectF(self._cursor.x() - r, self._cursor.y() - r, 2 * r, 2 * r))
            if self.hardness < 0.95:
                ri = r * self.hardness
                p.setPen(QPen(QColor(255, 255, 255, 110), 1, Qt.PenStyle.DotLine))
                p.drawEllipse(QRectF(self._cursor.x() - ri, self._cursor.y() - ri, 2 * ri, 2 * ri))
