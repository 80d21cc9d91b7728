"""Before/after image canvas: fit / 100 % / wheel zoom around the cursor, pan, split slider,
side by side with synced zoom, and overlays (mask, removed layer, text and face boxes).

Scene coordinates are the pixels of the larger of the two images (the output after upscaling);
the smaller one is stretched onto the same rectangle so the comparison lines up.

A preview (a fix of part of the photo, ``set_preview``) is laid over the photo in the after pane
at its place, at whatever scale it came (an x4 chain's preview keeps its pixels when zoomed in),
outlined and labelled "Preview"; the after pane shows the photo around it, not an earlier result.

A transparent photo (an image with an alpha channel: ui/imaging.py) is drawn over a
checkerboard of fixed size on the screen, anchored at the photo's corner, as photo apps show
transparency.
"""
from __future__ import annotations

import enum
from collections.abc import Sequence

from PySide6.QtCore import QPointF, QRectF, QSizeF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPen, QPixmap, QPolygonF
from PySide6.QtWidgets import QSizePolicy, QWidget

PROXY_SIDE = 2048


def checker_brush(side: int | None = None) -> QBrush:
    """The checkerboard drawn behind transparent pixels (squares of ``side`` px, the same two
    greys as the thumbnails': ui.imaging)."""
    from ..imaging import CHECKER_DARK, CHECKER_LIGHT, CHECKER_SIDE

    side = side or CHECKER_SIDE
    tile = QPixmap(2 * side, 2 * side)
    tile.fill(QColor(CHECKER_LIGHT, CHECKER_LIGHT, CHECKER_LIGHT))
    q = QPainter(tile)
    dark = QColor(CHECKER_DARK, CHECKER_DARK, CHECKER_DARK)
    q.fillRect(side, 0, side, side, dark)
    q.fillRect(0, side, side, side, dark)
    q.end()
    return QBrush(tile)


class Compare(str, enum.Enum):
    AFTER = "after"
    BEFORE = "before"
    SPLIT = "split"
    SIDE = "side"


class ImageCanvas(QWidget):
    view_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMinimumSize(200, 150)
        self.before: QImage | None = None
        self.after: QImage | None = None
        self.before_proxy: QImage | None = None
        self.after_proxy: QImage | None = None
        self.removed: QImage | None = None
        self.mask_overlay: QImage | None = None  # ARGB, any size, stretched over the scene
        self.text_boxes: list[tuple[float, float, float, float]] = []  # x0, y0, x1, y1 source px
        self.text_quads: list[list[tuple[float, float]]] = []  # a line's corners, source px
        self.face_boxes: list[tuple[float, float, float, float]] = []
        # a fix of part of the photo, shown over it in the after pane at ``preview_rect``
        # (source px of the before image): see set_preview
        self.preview: QImage | None = None
        self.preview_rect: QRectF | None = None
        self.show_mask = True
        self.show_removed = False
        self.show_boxes = True
        self.mode = Compare.AFTER
        self.split = 0.5
        self.zoom = 1.0
        self.center = QPointF(0, 0)
        self.fit_mode = True
        self.message = "Open a folder and pick a photo"
        self._drag: str | None = None
        self._last = QPointF()
        self._checker: QBrush | None = None  # (made when a transparent photo is first drawn)

    # -- content --------------------------------------------------------------------------
    def set_images(self, before: QImage | None, after: QImage | None = None,
                   before_proxy: QImage | None = None, after_proxy: QImage | None = None) -> None:
        old = self.scene_size()
        self.before, self.after = before, after
        self.before_proxy = before_proxy  # made off the GUI thread by ui.photo_io
        self.after_proxy = after_proxy
        self.removed = None
        self.preview = self.preview_rect = None  # (of the photo shown before, if any)
        if self.scene_size() != old or self.fit_mode:
            self.fit()
        self.update()

    def set_boxes(self, text: Sequence = (), faces: Sequence = (),
                  text_quads: Sequence | None = None) -> None:
        """Boxes (x0, y0, x1, y1, source px) to draw over the photo; ``text_quads``: each text
        line's four corners (source px), drawn instead of its box (a line at an angle)."""
        self.text_boxes = [tuple(map(float, b[:4])) for b in text]
        self.face_boxes = [tuple(map(float, b[:4])) for b in faces]
        self.text_quads = [[(float(x), float(y)) for x, y in q[:4]] for q in text_quads or ()
                           if len(q) == 4]
        self.update()

    def set_preview(self, image: QImage | None, region: Sequence[float] | None = None) -> None:
        """Show ``image``, a fix of part of the photo (at any scale), over the photo in the
        after pane at ``region`` = (x0, y0, x1, y1, source px of the before image), outlined
        and labelled "Preview"; None takes it away. ``set_images`` takes it away too."""
        if image is None or image.isNull() or region is None:
            self.preview = self.preview_rect = None
        else:
            x0, y0, x1, y1 = (float(v) for v in region[:4])
            self.preview, self.preview_rect = image, QRectF(x0, y0, x1 - x0, y1 - y0)
        if self.mode is Compare.SIDE and self.fit_mode:
            self.fit()  # (a second pane may have come or gone)
        self.update()

    def has_after(self) -> bool:
        """Whether there is something to show in the after pane: a result or a preview."""
        return self.after is not None or self.preview is not None

    def visible_source_rect(self) -> QRectF:
        """The part of the photo (source px of the before image) that the after pane shows
        now - the only pane but side by side, where both show the same part; empty when none."""
        if self.before is None or self.before.isNull():
            return QRectF()
        vis = self._visible_scene(self._panes()[-1][0])
        k = self.source_scale()
        return QRectF(vis.x() / k, vis.y() / k, vis.width() / k, vis.height() / k)

    def _preview_scene(self) -> QRectF:
        r, k = self.preview_rect, self.source_scale()
        return QRectF(r.x() * k, r.y() * k, r.width() * k, r.height() * k)

    def set_mode(self, mode: Compare) -> None:
        self.mode = Compare(mode)
        if self.fit_mode:  # side by side halves the pane: the fitted photo must fit again
            self.fit()
        self.update()
        self.view_changed.emit()

    def scene_size(self) -> QSizeF:
        w = h = 0
        for img in (self.before, self.after):
            if img is not None and not img.isNull():
                w, h = max(w, img.width()), max(h, img.height())
        return QSizeF(w, h)

    def source_scale(self) -> float:
        """Scene pixels per pixel of the *before* image (boxes and masks are in its pixels)."""
        if self.before is None or self.before.isNull():
            return 1.0
        return self.scene_size().width() / self.before.width()

    # -- view -----------------------------------------------------------------------------
    def _panes(self) -> list[tuple[QRectF, str]]:
        r = QRectF(self.rect())
        if self.mode is Compare.SIDE and self.before is not None and self.has_after():
            half = r.width() / 2
            return [(QRectF(0, 0, half - 1, r.height()), "before"),
                    (QRectF(half + 1, 0, half - 1, r.height()), "after")]
        return [(r, "main")]

    def _pane_size(self) -> QSizeF:
        return self._panes()[0][0].size()

    def fit(self) -> None:
        s = self.scene_size()
        self.fit_mode = True
        if s.isEmpty():
            return
        pane = self._pane_size()
        self.zoom = max(1e-4, min(pane.width() / s.width(), pane.height() / s.height()) * 0.98)
        self.center = QPointF(s.width() / 2, s.height() / 2)
        self.update()
        self.view_changed.emit()

    def actual_size(self) -> None:
        """100 %: one image pixel per device pixel."""
        self.fit_mode = False
        self.zoom = 1.0 / max(1.0, self.devicePixelRatioF())
        self.update()
        self.view_changed.emit()

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        pane, _ = self._pane_at(anchor) if anchor is not None else self._panes()[0]
        anchor = anchor if anchor is not None else pane.center()
        before = self.to_scene(anchor, pane)
        self.zoom = max(0.01, min(32.0, self.zoom * factor))
        self.fit_mode = False
        # keep the scene point under the cursor fixed
        self.center = QPointF(before.x() - (anchor.x() - pane.center().x()) / self.zoom,
                              before.y() - (anchor.y() - pane.center().y()) / self.zoom)
        self.update()
        self.view_changed.emit()

    def pan_by(self, fx: float, fy: float) -> None:
        """Move the view by ``fx``, ``fy`` of the pane's width and height (the keyboard's pan:
        positive = right / down, as dragging the photo the other way)."""
        pane = self._panes()[0][0]
        self.center = QPointF(self.center.x() + fx * pane.width() / self.zoom,
                              self.center.y() + fy * pane.height() / self.zoom)
        self.fit_mode = False
        self.update()
        self.view_changed.emit()

    def _pane_at(self, pos: QPointF) -> tuple[QRectF, str]:
        for pane, name in self._panes():
            if pane.contains(pos):
                return pane, name
        return self._panes()[0]

    def to_scene(self, pos: QPointF, pane: QRectF | None = None) -> QPointF:
        pane = pane or self._pane_at(pos)[0]
        c = pane.center()
        return QPointF(self.center.x() + (pos.x() - c.x()) / self.zoom,
                       self.center.y() + (pos.y() - c.y()) / self.zoom)

    def to_widget(self, pt: QPointF, pane: QRectF | None = None) -> QPointF:
        pane = pane or self._panes()[0][0]
        c = pane.center()
        return QPointF(c.x() + (pt.x() - self.center.x()) * self.zoom,
                       c.y() + (pt.y() - self.center.y()) * self.zoom)

    def scene_to_source(self, pt: QPointF) -> QPointF:
        s = self.source_scale()
        return QPointF(pt.x() / s, pt.y() / s)

    # -- painting -------------------------------------------------------------------------
    def paintEvent(self, _e) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), self.palette().window().color().darker(125))
        s = self.scene_size()
        if s.isEmpty():
            p.setPen(self.palette().text().color())
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.message)
            return
        smooth = self.zoom < 1.0
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
        for pane, name in self._panes():
            p.save()
            p.setClipRect(pane)
            if name == "before":
                self._draw_photo(p, pane, self.before, self.before_proxy)
            elif name == "after":
                self._draw_after(p, pane)
            elif self.mode is Compare.SPLIT and self.before is not None and self.has_after():
                x = pane.left() + pane.width() * self.split
                p.setClipRect(QRectF(pane.left(), pane.top(), x - pane.left(), pane.height()))
                self._draw_photo(p, pane, self.before, self.before_proxy)
                p.setClipRect(QRectF(x, pane.top(), pane.right() - x, pane.height()))
                self._draw_after(p, pane)
                p.setClipRect(pane)
            elif self.mode is Compare.BEFORE or not self.has_after():
                # (Split too, with nothing on its after side: a photo not fixed, shown whole)
                self._draw_photo(p, pane, self.before, self.before_proxy)
            else:
                self._draw_after(p, pane)
            self._draw_overlays(p, pane)
            self._draw_preview_frame(p, pane, name)
            p.restore()
        after = "Preview" if self.preview is not None else "After"
        if self.mode is Compare.SPLIT and self.has_after():
            x = self.width() * self.split
            p.setPen(QPen(QColor(255, 255, 255, 220), 2))
            p.drawLine(QPointF(x, 0), QPointF(x, self.height()))
            p.setBrush(QColor(30, 30, 30, 200))
            p.drawEllipse(QPointF(x, self.height() / 2), 10, 10)
            self._label(p, QPointF(8, 8), "Before")
            right = 60 if self.preview is None else \
                16 + p.fontMetrics().horizontalAdvance(after)
            self._label(p, QPointF(self.width() - right, 8), after)
        elif self.mode is Compare.SIDE and self.has_after():
            self._label(p, QPointF(8, 8), "Before")
            self._label(p, QPointF(self.width() / 2 + 8, 8), after)
        elif self.has_after():
            removed = self.show_removed and self.removed and self.preview is None
            self._label(p, QPointF(8, 8), "Before" if self.mode is Compare.BEFORE else
                        ("Removed layer" if removed else after))
        self.paint_tool(p)

    def _draw_after(self, p: QPainter, pane: QRectF) -> None:
        """The after pane: the result (or its removed layer), or with a preview the photo with
        the preview laid over it at its place."""
        if self.preview is None:
            self._draw_photo(p, pane, *self._after_pair())
            return
        self._draw_photo(p, pane, self.before, self.before_proxy)
        r = self._preview_scene()
        dst = QRectF(self.to_widget(r.topLeft(), pane), self.to_widget(r.bottomRight(), pane))
        if self.preview.hasAlphaChannel():  # (the photo under it is not what it shows)
            self._fill_checker(p, pane, dst)
        p.drawImage(dst, self.preview, QRectF(self.preview.rect()))

    def _draw_preview_frame(self, p: QPainter, pane: QRectF, name: str) -> None:
        """The preview's outline (in every pane, so that the before side shows where it is)
        and its "Preview" label on the after side (right of a split), kept inside the pane."""
        if self.preview is None or self.preview_rect is None:
            return
        r = self._preview_scene()
        box = QRectF(self.to_widget(r.topLeft(), pane), self.to_widget(r.bottomRight(), pane))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.setPen(QPen(QColor(0, 0, 0, 150), 3))
        p.drawRect(box)
        p.setPen(QPen(QColor("#ffd54a"), 1.5, Qt.PenStyle.DashLine))
        p.drawRect(box)
        if name == "before" or (name == "main" and self.mode is Compare.BEFORE):
            return
        left = pane.left()
        if name == "main" and self.mode is Compare.SPLIT:
            left = max(left, pane.left() + pane.width() * self.split)
        at = QPointF(max(box.left(), left) + 4, max(box.top(), pane.top()) + 4)
        if box.contains(at):
            self._label(p, at, "Preview")

    def _after_pair(self) -> tuple[QImage | None, QImage | None]:
        if self.show_removed and self.removed is not None:
            return self.removed, None
        return self.after, self.after_proxy

    def _label(self, p: QPainter, at: QPointF, text: str) -> None:
        fm = p.fontMetrics()
        r = QRectF(at.x(), at.y(), fm.horizontalAdvance(text) + 12, fm.height() + 6)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(0, 0, 0, 150))
        p.drawRoundedRect(r, 4, 4)
        p.setPen(QColor("white"))
        p.drawText(r, Qt.AlignmentFlag.AlignCenter, text)

    def _visible_scene(self, pane: QRectF) -> QRectF:
        tl = self.to_scene(pane.topLeft(), pane)
        br = self.to_scene(pane.bottomRight(), pane)
        s = self.scene_size()
        return QRectF(tl, br).intersected(QRectF(0, 0, s.width(), s.height()))

    def _draw_photo(self, p: QPainter, pane: QRectF, img: QImage | None,
                    proxy: QImage | None = None) -> None:
        """``_draw_image`` for a photo: one with transparency over the checkerboard."""
        self._draw_image(p, pane, img, proxy, backdrop=True)

    def _fill_checker(self, p: QPainter, pane: QRectF, dst: QRectF) -> None:
        if self._checker is None:
            self._checker = checker_brush()
        p.save()
        p.setBrushOrigin(self.to_widget(QPointF(0, 0), pane))  # (it moves with the photo)
        p.fillRect(dst, self._checker)
        p.restore()

    def _draw_image(self, p: QPainter, pane: QRectF, img: QImage | None,
                    proxy: QImage | None = None, backdrop: bool = False) -> None:
        """``img`` (or its ``proxy`` when that has enough pixels) over the scene; with
        ``backdrop``, over the checkerboard where it has an alpha channel."""
        if img is None or img.isNull():
            return
        vis = self._visible_scene(pane)
        if vis.isEmpty():
            return
        s = self.scene_size()
        # the downscaled proxy when it has enough pixels for this zoom: no 24 MP resampling
        use = img
        dpr = self.devicePixelRatioF()
        if proxy is not None and proxy.width() >= s.width() * self.zoom * dpr:
            use = proxy
        kx, ky = use.width() / s.width(), use.height() / s.height()
        src = QRectF(vis.x() * kx, vis.y() * ky, vis.width() * kx, vis.height() * ky)
        dst = QRectF(self.to_widget(vis.topLeft(), pane), self.to_widget(vis.bottomRight(), pane))
        if backdrop and use.hasAlphaChannel():
            self._fill_checker(p, pane, dst)
        p.drawImage(dst, use, src)

    def _draw_overlays(self, p: QPainter, pane: QRectF) -> None:
        s = self.scene_size()
        if self.show_mask and self.mask_overlay is not None:
            self._draw_image(p, pane, self.mask_overlay)
        if self.show_boxes:
            k = self.source_scale()
            p.setBrush(Qt.BrushStyle.NoBrush)
            text = () if self.text_quads else self.text_boxes
            for boxes, colour in ((text, QColor("#ffd54a")),
                                  (self.face_boxes, QColor("#5ad1ff"))):
                p.setPen(QPen(colour, 2))
                for x0, y0, x1, y1 in boxes:  # engine artifacts: (x0, y0, x1, y1), source px
                    a = self.to_widget(QPointF(x0 * k, y0 * k), pane)
                    b = self.to_widget(QPointF(x1 * k, y1 * k), pane)
                    p.drawRect(QRectF(a, b))
            p.setPen(QPen(QColor("#ffd54a"), 2))
            for quad in self.text_quads:  # (a text line at an angle, drawn as it lies)
                p.drawPolygon(QPolygonF([self.to_widget(QPointF(x * k, y * k), pane)
                                         for x, y in quad]))
        del s

    def paint_tool(self, p: QPainter) -> None:
        """Hook for the mask editor's brush cursor and lasso."""

    # -- interaction ----------------------------------------------------------------------
    def _near_split(self, pos: QPointF) -> bool:
        return (self.mode is Compare.SPLIT and self.has_after()
                and abs(pos.x() - self.width() * self.split) < 12)

    def mousePressEvent(self, e) -> None:
        pos = e.position()
        if e.button() in (Qt.MouseButton.LeftButton, Qt.MouseButton.MiddleButton):
            self._drag = "split" if self._near_split(pos) else "pan"
            self._last = pos
            e.accept()

    def mouseMoveEvent(self, e) -> None:
        pos = e.position()
        if self._drag == "split":
            self.split = max(0.0, min(1.0, pos.x() / max(1, self.width())))
            self.update()
        elif self._drag == "pan":
            d = pos - self._last
            self._last = pos
            self.center = QPointF(self.center.x() - d.x() / self.zoom,
                                  self.center.y() - d.y() / self.zoom)
            self.fit_mode = False
            self.update()
            self.view_changed.emit()
        else:
            self.setCursor(Qt.CursorShape.SplitHCursor if self._near_split(pos)
                           else Qt.CursorShape.OpenHandCursor)

    def mouseReleaseEvent(self, e) -> None:
        self._drag = None

    def mouseDoubleClickEvent(self, e) -> None:
        if self.fit_mode:
            self.actual_size()
        else:
            self.fit()

    def wheelEvent(self, e) -> None:
        steps = e.angleDelta().y() / 120.0
        if steps:
            self.zoom_by(1.25 ** steps, e.position())
        e.accept()

    def resizeEvent(self, e) -> None:
        if self.fit_mode:
            self.fit()
        super().resizeEvent(e)
