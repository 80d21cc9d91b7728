"""The canvas with mask tools: brush, eraser, lasso fill (drag) / polygon (clicks), SAM click."""
from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPen, QPolygonF

from .canvas import ImageCanvas
from .mask import MaskDocument

TOOLS = ("pan", "brush", "erase", "lasso", "sam")


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

    def set_document(self, doc: MaskDocument | None) -> None:
        if self.doc is not None:
            try:
                self.doc.changed.disconnect(self._on_doc_changed)
            except (RuntimeError, TypeError):
                pass
        self.doc = doc
        if doc is not None:
            doc.changed.connect(self._on_doc_changed)
            self.mask_overlay = doc.overlay()
        else:
            self.mask_overlay = None
        self.update()

    def _on_doc_changed(self, _rect) -> None:
        if self.doc is not None:
            self.mask_overlay = self.doc.overlay()
        self.update()

    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(tool)
        self.tool = tool
        self._lasso.clear()
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
        return self.scene_to_source(self.to_scene(pos))

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

    def keyPressEvent(self, e) -> None:
        if e.key() == Qt.Key.Key_Escape and self._lasso:
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
    def paint_tool(self, p: QPainter) -> None:
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        if self._lasso:
            k = self.source_scale()
            poly = QPolygonF([self.to_widget(QPointF(q.x() * k, q.y() * k)) for q in self._lasso])
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
