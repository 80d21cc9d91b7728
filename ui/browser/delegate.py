"""Paints one thumbnail cell: the picture, its name, the class badge and the job-state chip."""
from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPixmap
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from ..engine_client import JobState
from .model import DiagnosisRole, JobStateRole, ThumbStateRole

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
STATE_TEXT = {
    JobState.QUEUED: "queued", JobState.RUNNING: "running", JobState.DONE: "done",
    JobState.FAILED: "failed", JobState.CANCELLED: "cancelled",
}


class ThumbnailDelegate(QStyledItemDelegate):
    def __init__(self, cell: int = 176, parent=None) -> None:
        super().__init__(parent)
        self.cell = cell

    def sizeHint(self, option: QStyleOptionViewItem,
                 index: QModelIndex | QPersistentModelIndex) -> QSize:
        return QSize(self.cell, self.cell + 22)

    def paint(self, p: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        p.save()
        r = option.rect.adjusted(4, 4, -4, -4)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        pal = option.palette
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(pal.highlight().color() if selected else QColor(255, 255, 255, 14))
        p.drawRoundedRect(QRectF(r), 6, 6)

        pic = QRect(r.x() + 6, r.y() + 6, r.width() - 12, r.height() - 34)
        pm = index.data(Qt.ItemDataRole.DecorationRole)
        if isinstance(pm, QPixmap) and not pm.isNull():
            dpr = pm.devicePixelRatio() or 1.0
            size = QSize(int(pm.width() / dpr), int(pm.height() / dpr)).scaled(
                pic.size(), Qt.AspectRatioMode.KeepAspectRatio)
            target = QRect(0, 0, size.width(), size.height())
            target.moveCenter(pic.center())
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            p.drawPixmap(target, pm)
        else:
            state = index.data(ThumbStateRole)
            p.setPen(QColor("#e05a4f") if state == "failed" else pal.mid().color())
            p.drawText(pic, Qt.AlignmentFlag.AlignCenter,
                       "cannot read" if state == "failed" else "…")

        # name
        p.setPen(pal.highlightedText().color() if selected else pal.text().color())
        name_rect = QRect(r.x() + 6, r.bottom() - 24, r.width() - 12, 20)
        name = p.fontMetrics().elidedText(str(index.data() or ""),
                                          Qt.TextElideMode.ElideMiddle, name_rect.width())
        p.drawText(name_rect, Qt.AlignmentFlag.AlignCenter, name)

        small = QFont(option.font)
        small.setPointSizeF(max(6.5, option.font.pointSizeF() * 0.82))
        small.setBold(True)
        p.setFont(small)
        fm = p.fontMetrics()
        # class badge (top-left): letter + confidence
        diag = index.data(DiagnosisRole)
        if diag is not None:
            text = f"{diag.label.value} {diag.confidence:.0%}"
            w = fm.horizontalAdvance(text) + 10
            badge = QRectF(pic.x() + 2, pic.y() + 2, w, fm.height() + 4)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(CLASS_COLOURS.get(diag.label.value, QColor("#888")))
            p.drawRoundedRect(badge, 4, 4)
            p.setPen(QColor("white"))
            p.drawText(badge, Qt.AlignmentFlag.AlignCenter, text)
        # job state chip (top-right)
        state = index.data(JobStateRole)
        if state:
            state = JobState(state)
            text = STATE_TEXT[state]
            w = fm.horizontalAdvance(text) + 10
            chip = QRectF(pic.right() - w - 2, pic.y() + 2, w, fm.height() + 4)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(STATE_COLOURS[state])
            p.drawRoundedRect(chip, 4, 4)
            p.setPen(QColor("white"))
            p.drawText(chip, Qt.AlignmentFlag.AlignCenter, text)
        p.restore()
