"""Paints one thumbnail cell: the picture, its name, the class badge, the job-state chip and,
for a file Mend wrote, a "Mend result" / "Mend mask" chip.

Painting runs for every visible cell on every scroll step, in Python: badges are cached as
pixmaps and elided names per width, and the cell background is a plain fill, which keeps a
cell well under a millisecond.
"""
from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPixmap
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from ..engine_client import JobState
from .model import DiagnosisRole, JobStateRole, KeptRole, MendKindRole, ThumbStateRole

CLASS_COLOURS = {
    "A": QColor("#4f9dde"),  # low quality: blue
    "B": QColor("#c77dde"),  # reflection: violet
    "C": QColor("#e0a43a"),  # motion blur: amber
    "D": QColor("#4fb477"),  # clean: green
}
STATE_COLOURS = {
    JobState.QUEUED: QColor("#8a8f98"),
    JobState.RUNNING: QColor("#3a8ee6"),
    JobState.DONE: QColor("#3fb27f"),
    JobState.FAILED: QColor("#e05a4f"),
    JobState.CANCELLED: QColor("#8a8f98"),
}
MEND_COLOUR = QColor("#5b6370")  # a file Mend wrote: neutral slate, apart from class colours
KEPT_COLOUR = QColor("#8a7a4f")  # a result that is the original, unchanged: muted, not "done"
CELL_BG = QColor("#26292e")  # opaque: no blending per cell


def picture_side(cell: int) -> int:
    """Logical pixels available for the picture in a cell of ``cell`` (see paint())."""
    return cell - 20


class ThumbnailDelegate(QStyledItemDelegate):
    def __init__(self, cell: int = 176, parent=None) -> None:
        super().__init__(parent)
        self.cell = cell
        self._badges: dict[tuple[str, str, float], QPixmap] = {}
        self._names: dict[tuple[str, int], str] = {}
        self._font: QFont | None = None

    def sizeHint(self, option: QStyleOptionViewItem,
                 index: QModelIndex | QPersistentModelIndex) -> QSize:
        return QSize(self.cell, self.cell + 22)

    def _badge(self, text: str, colour: QColor, font: QFont, dpr: float) -> QPixmap:
        key = (text, colour.name(), dpr)
        pm = self._badges.get(key)
        if pm is None:
            fm = QFontMetrics(font)
            w, h = fm.horizontalAdvance(text) + 10, fm.height() + 4
            pm = QPixmap(int(w * dpr), int(h * dpr))
            pm.setDevicePixelRatio(dpr)
            pm.fill(Qt.GlobalColor.transparent)
            q = QPainter(pm)
            q.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            q.setPen(Qt.PenStyle.NoPen)
            q.setBrush(colour)
            q.drawRoundedRect(QRectF(0, 0, w, h), 4, 4)
            q.setFont(font)
            q.setPen(QColor("white"))
            q.drawText(QRectF(0, 0, w, h), Qt.AlignmentFlag.AlignCenter, text)
            q.end()
            if len(self._badges) > 512:
                self._badges.clear()
            self._badges[key] = pm
        return pm

    def paint(self, p: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        r = option.rect.adjusted(4, 4, -4, -4)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        pal = option.palette
        p.fillRect(r, pal.highlight().color() if selected else CELL_BG)

        pic = QRect(r.x() + 6, r.y() + 6, r.width() - 12, r.height() - 34)
        pm = index.data(Qt.ItemDataRole.DecorationRole)
        if isinstance(pm, QPixmap) and not pm.isNull():
            dpr = pm.devicePixelRatio() or 1.0
            natural = QSize(int(pm.width() / dpr), int(pm.height() / dpr))
            if natural.width() <= pic.width() and natural.height() <= pic.height():
                # already at display size (scaled in the pool): a plain blit
                p.drawPixmap(pic.x() + (pic.width() - natural.width()) // 2,
                             pic.y() + (pic.height() - natural.height()) // 2, pm)
            else:
                size = natural.scaled(pic.size(), Qt.AspectRatioMode.KeepAspectRatio)
                target = QRect(0, 0, size.width(), size.height())
                target.moveCenter(pic.center())
                p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
                p.drawPixmap(target, pm)
        else:
            state = index.data(ThumbStateRole)
            p.setPen(QColor("#e05a4f") if state == "failed" else pal.mid().color())
            p.drawText(pic, Qt.AlignmentFlag.AlignCenter,
                       "cannot read" if state == "failed" else "…")

        p.setPen(pal.highlightedText().color() if selected else pal.text().color())
        name_rect = QRect(r.x() + 6, r.bottom() - 24, r.width() - 12, 20)
        text = str(index.data() or "")
        key = (text, name_rect.width())
        name = self._names.get(key)
        if name is None:
            name = option.fontMetrics.elidedText(text, Qt.TextElideMode.ElideMiddle,
                                                 name_rect.width())
            if len(self._names) > 20000:
                self._names.clear()
            self._names[key] = name
        p.drawText(name_rect, Qt.AlignmentFlag.AlignCenter, name)

        if self._font is None:
            self._font = QFont(option.font)
            self._font.setPointSizeF(max(6.5, option.font.pointSizeF() * 0.82))
            self._font.setBold(True)
        dpr = p.device().devicePixelRatioF() if p.device() else 1.0
        diag = index.data(DiagnosisRole)
        if diag is not None:  # class badge, top-left: letter + confidence
            b = self._badge(f"{diag.label.value} {diag.confidence:.0%}",
                            CLASS_COLOURS.get(diag.label.value, QColor("#888")), self._font, dpr)
            p.drawPixmap(pic.x() + 2, pic.y() + 2, b)
        kind = index.data(MendKindRole)
        if kind:  # a file Mend wrote (a result or a mask), bottom-left: not an original
            b = self._badge("Mend result" if kind == "result" else "Mend mask", MEND_COLOUR,
                            self._font, dpr)
            p.drawPixmap(pic.x() + 2, pic.bottom() - int(b.height() / b.devicePixelRatio()) - 2, b)
        state = index.data(JobStateRole)
        if state:  # job state chip, top-right
            st = JobState(state)
            # (a result that is the original as it was: not a fix to look at, a photo to check)
            kept = st is JobState.DONE and bool(index.data(KeptRole))
            b = self._badge("unchanged" if kept else st.value,
                            KEPT_COLOUR if kept else STATE_COLOURS[st], self._font, dpr)
            p.drawPixmap(pic.right() - int(b.width() / b.devicePixelRatio()) - 2, pic.y() + 2, b)
