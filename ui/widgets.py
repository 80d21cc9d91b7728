"""Small widgets shared by the window's parts."""
from __future__ import annotations

from PySide6.QtCore import QEvent, QPointF, QSize, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QLabel, QSizePolicy, QToolBar, QToolButton, QWidget

ZWSP = "\u200b"  # a zero-width space: where a long word may be broken across lines


def breakable(text: str, longer_than: int = 20) -> str:
    """``text`` with zero-width spaces after the separators (/ \\ _ - .) of its words longer
    than ``longer_than`` characters, so that a word-wrapped label can break a long path or file
    name across lines instead of asking for its whole width (a dock then grew a horizontal
    scroll bar). Shown the same; only for text that is not copied from the label."""
    out = []
    for word in text.split(" "):
        if len(word) > longer_than:
            for sep in ("/", "\\", "_", "-", "."):
                word = word.replace(sep, sep + ZWSP)
        out.append(word)
    return " ".join(out)


class ElidedLabel(QLabel):
    """A one-line label showing as much of its text as fits, the rest elided ("…", in the
    middle by default: a file name keeps its start and its extension), the whole text in its
    tooltip when cut. ``text()`` is the whole text. It asks for the whole text's width but needs
    only ``min_chars`` characters: a long name never makes its panel or window wider."""

    def __init__(self, text: str = "", parent: QWidget | None = None,
                 mode: Qt.TextElideMode = Qt.TextElideMode.ElideMiddle, min_chars: int = 6) -> None:
        super().__init__(parent)
        self._full = ""
        self._mode = mode
        self._min_chars = min_chars
        self._tip = ""  # a tooltip set from outside (kept when the text is not cut)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.setText(text)

    def setText(self, text: str) -> None:
        self._full = str(text or "")
        self._elide()

    def text(self) -> str:
        return self._full

    def setToolTip(self, tip: str) -> None:
        self._tip = tip
        self._elide()

    def full_width(self) -> int:
        """The width the whole text needs (contents, without margins)."""
        return self.fontMetrics().horizontalAdvance(self._full)

    def _margins(self) -> int:
        m = self.contentsMargins()
        return m.left() + m.right() + 2 * self.margin()

    def sizeHint(self) -> QSize:
        return QSize(self.full_width() + self._margins() + 2, super().sizeHint().height())

    def minimumSizeHint(self) -> QSize:
        w = self.fontMetrics().averageCharWidth() * self._min_chars + self._margins()
        return QSize(min(w, self.sizeHint().width()), super().minimumSizeHint().height())

    def resizeEvent(self, e) -> None:
        super().resizeEvent(e)
        self._elide()

    def changeEvent(self, e) -> None:
        super().changeEvent(e)
        if e.type() in (QEvent.Type.FontChange, QEvent.Type.StyleChange):
            self._elide()

    def _elide(self) -> None:
        width = self.contentsRect().width() - 2 * self.margin()
        shown = self._full
        if width > 0 and self.fontMetrics().horizontalAdvance(shown) > width:
            shown = self.fontMetrics().elidedText(self._full, self._mode, width)
        if QLabel.text(self) != shown:
            QLabel.setText(self, shown)
        cut = shown != self._full
        tip = self._full if cut and not self._tip else self._tip
        if cut and self._tip:
            tip = f"{self._full}\n{self._tip}"
        if QLabel.toolTip(self) != tip:
            QLabel.setToolTip(self, tip)


def show_overflow_button(bar: QToolBar, colour: str = "#d8dbe0") -> None:
    """Give ``bar``'s » button (the tools that do not fit, in a narrow window) an arrow in
    ``colour``: the style's own is drawn dark grey, unseen on the dark theme's toolbars."""
    for b in bar.findChildren(QToolButton, "qt_toolbar_ext_button"):
        b.setIcon(_chevrons(colour))


def _chevrons(colour: str, side: int = 16) -> QIcon:
    icon = QIcon()
    for dpr in (1.0, 2.0):
        pm = QPixmap(round(side * dpr), round(side * dpr))
        pm.setDevicePixelRatio(dpr)
        pm.fill(Qt.GlobalColor.transparent)
        q = QPainter(pm)
        q.setRenderHint(QPainter.RenderHint.Antialiasing)
        q.setPen(QPen(QColor(colour), 1.6))
        for x in (4.0, 9.0):
            q.drawPolyline([QPointF(x, 4.5), QPointF(x + 3.5, 8.0), QPointF(x, 11.5)])
        q.end()
        icon.addPixmap(pm)
    return icon
