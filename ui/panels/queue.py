"""The job queue: per-job progress, reorder, cancel, retry; overall progress with ETA."""
from __future__ import annotations

from PySide6.QtCore import QItemSelectionModel, QModelIndex, Qt, QTimer
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import (
    QGridLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from ..app import weak_slot
from ..engine_client import EngineClient, JobInfo, JobState

_DETAIL_ROLE = Qt.ItemDataRole.UserRole + 1  # what a line of work held back waits for
_PARTS_ROLE = Qt.ItemDataRole.UserRole + 2  # a line's (state, title, what follows)
_TEXT_MARGIN = 8  # px of an item's width its text does not get (the style's margins)


def fit_line(head: str, title: str, tail: str, fm: QFontMetrics, width: int) -> str:
    """``head + title + tail`` in ``width`` px: whole when it fits; else the head (the job's
    state and percentage) whole, the title (the photo's name) cut in its middle - its folder's
    start and its file name's end stay - to what is left once the tail (the job's message)
    has its share, and the tail cut at its end."""
    full = head + title + tail
    if fm.horizontalAdvance(full) <= width:
        return full
    room = width - fm.horizontalAdvance(head)
    if room <= fm.averageCharWidth() * 4:
        return fm.elidedText(full, Qt.TextElideMode.ElideRight, max(0, width))
    tail_w, title_w = fm.horizontalAdvance(tail), fm.horizontalAdvance(title)
    t_room = min(title_w, max(room - tail_w, room * 2 // 3))
    shown = title if title_w <= t_room else fm.elidedText(
        title, Qt.TextElideMode.ElideMiddle, t_room)
    rest = room - fm.horizontalAdvance(shown)
    return head + shown + (tail if tail_w <= rest else fm.elidedText(
        tail, Qt.TextElideMode.ElideRight, max(0, rest)))


class _LineDelegate(QStyledItemDelegate):
    """Draws a job's line of its parent (the list) cut to the list's width as ``fit_line``
    cuts it."""

    def initStyleOption(self, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        super().initStyleOption(option, index)
        parts = index.data(_PARTS_ROLE)
        view = self.parent()
        if not parts or not isinstance(view, QListWidget):
            return
        width = min(option.rect.width(), view.viewport().width()) - _TEXT_MARGIN
        option.text = fit_line(*parts, option.fontMetrics, width)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = round(float(seconds))
    if s < 60:
        return f"{s} s left"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s left"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min left"


class QueuePanel(QWidget):
    def __init__(self, client: EngineClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 8, 8, 8)
        self.overall = QProgressBar()
        self.overall.setRange(0, 1000)
        self.overall.setFormat("Idle")
        lay.addWidget(self.overall)
        self.list = QListWidget()
        self.list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        # a long line (a subfolder photo's name) is cut to the panel's width, never scrolled
        # sideways: each line starts with the job's state and percentage (``_parts``), which
        # stay whole, the photo's name is cut in its middle (``_LineDelegate``); the whole
        # line is in its tooltip
        self.list.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setItemDelegate(_LineDelegate(self.list))
        lay.addWidget(self.list, 1)
        # (two rows: five buttons in one made the dock, and the window, 380 px wide at least)
        rows = QGridLayout()
        self.up = QPushButton("Up")
        self.down = QPushButton("Down")
        self.cancel = QPushButton("Cancel")
        self.retry = QPushButton("Retry")
        self.clear = QPushButton("Clear finished")
        for i, b in enumerate((self.up, self.down, self.cancel, self.retry)):
            rows.addWidget(b, 0, i)
        rows.addWidget(self.clear, 1, 0, 1, 4)
        lay.addLayout(rows)
        self.detail = QLabel("")
        self.detail.setWordWrap(True)
        self.detail.setObjectName("dim")
        lay.addWidget(self.detail)
        self.up.clicked.connect(weak_slot(self, lambda p: p._move(-1)))
        self.down.clicked.connect(weak_slot(self, lambda p: p._move(1)))
        self.cancel.clicked.connect(self._cancel)
        self.retry.clicked.connect(self._retry)
        self.clear.clicked.connect(client.clear_finished)
        self.list.currentItemChanged.connect(weak_slot(self, lambda p, *_: p._show_detail()))
        self._refresh_timer = QTimer(self)  # a burst of 1,000 submits -> one rebuild
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(60)
        self._refresh_timer.timeout.connect(self.refresh)
        client.queue_changed.connect(self._refresh_timer.start)
        client.job_changed.connect(self._on_job)
        client.overall_progress.connect(self._on_overall)
        self._items: dict[int, QListWidgetItem] = {}
        # work the window holds back, not a job of the client yet (``set_waiting_work``)
        self._waiting_work: list[tuple[str, str]] = []
        self.refresh()

    def set_waiting_work(self, rows: list[tuple[str, str]]) -> None:
        """Show ``rows`` (title, what it waits for) after the queued jobs: work the window
        holds back until something happens (a fix asked while its reflection mask is being
        written is queued once it is). Not jobs yet: nothing to select, move, cancel or retry
        ("Cancel all" drops them)."""
        if rows != self._waiting_work:
            self._waiting_work = list(rows)
            self.refresh()

    def _selected(self) -> list[int]:
        return [it.data(Qt.ItemDataRole.UserRole) for it in self.list.selectedItems()]

    def _move(self, d: int) -> None:
        ids = self._selected()
        for jid in (ids if d < 0 else reversed(ids)):
            self.client.move(jid, d)
        self._reselect(ids)

    def _cancel(self) -> None:
        for jid in self._selected():
            self.client.cancel(jid)

    def _retry(self) -> None:
        for jid in self._selected():
            self.client.retry(jid)

    def _reselect(self, ids: list[int]) -> None:
        for jid in ids:
            it = self._items.get(jid)
            if it is not None:
                it.setSelected(True)

    def refresh(self) -> None:
        sel = self._selected()
        cur = self.list.currentItem()  # the job whose detail (e.g. why it failed) is shown
        cur_id = cur.data(Qt.ItemDataRole.UserRole) if cur is not None else None
        scroll = self.list.verticalScrollBar().value()
        self.list.clear()
        self._items.clear()
        infos = {j.id: j for j in self.client.jobs()}
        order: list[int] = []
        if self.client.running_id() is not None:
            order.append(self.client.running_id())
        order += self.client.queued_ids()
        # (then what will run once something happens: jobs to be retried, work held back)
        placed = set(order)
        waiting = sorted(i for i, j in infos.items() if j.waiting and i not in placed)
        placed.update(waiting)
        rest = sorted((i for i in infos if i not in placed), reverse=True)
        for jid in order + waiting:
            self._add_item(infos.get(jid))
        for title, reason in self._waiting_work:
            it = QListWidgetItem(f"[waiting] {title} — {reason}")
            it.setData(_PARTS_ROLE, ("[waiting] ", title, f" — {reason}"))
            it.setFlags(Qt.ItemFlag.ItemIsEnabled)  # (not selectable: no job to act on)
            it.setToolTip(it.text())  # (the whole line: cut in the list when long)
            it.setData(_DETAIL_ROLE, reason)
            self.list.addItem(it)
        for jid in rest:
            self._add_item(infos.get(jid))
        it = self._items.get(cur_id) if cur_id is not None else None
        if it is not None:  # (NoUpdate: the selection is restored as it was, just below)
            self.list.setCurrentItem(it, QItemSelectionModel.SelectionFlag.NoUpdate)
        self._reselect(sel)
        self.list.verticalScrollBar().setValue(scroll)
        if self.client.is_idle():
            self.overall.setValue(0)
            self.overall.setFormat("Idle")

    def _add_item(self, info: JobInfo | None) -> None:
        if info is None:
            return
        it = QListWidgetItem(self._text(info))
        it.setData(Qt.ItemDataRole.UserRole, info.id)
        it.setData(_PARTS_ROLE, self._parts(info))
        it.setToolTip(_tip(it.text(), info))
        self.list.addItem(it)
        self._items[info.id] = it

    def _text(self, j: JobInfo) -> str:
        return "".join(self._parts(j))

    def _parts(self, j: JobInfo) -> tuple[str, str, str]:
        """A job's line as (its state, its title, what follows): the list cuts a long one
        to its width keeping the state whole (``fit_line``)."""
        if j.waiting:  # (a cancelled or failed job whose retry waits: that is its news)
            return "[waiting] ", j.title, f" — {j.waiting}"
        if j.state is JobState.RUNNING:  # (its percentage first: a long name never hides it)
            extra = f"{j.message} {format_eta(j.eta_seconds)}".strip()
            return f"[running {j.fraction:.0%}] ", j.title, f" — {extra}" if extra else ""
        extra = ""
        if j.state in (JobState.FAILED, JobState.CANCELLED):
            extra = f" — {j.error}"
        return f"[{j.state.value}] ", j.title, extra

    def _on_job(self, info: JobInfo) -> None:
        it = self._items.get(info.id)
        if it is not None:
            it.setText(self._text(info))
            it.setData(_PARTS_ROLE, self._parts(info))
            it.setToolTip(_tip(it.text(), info))
        self._show_detail()

    def _on_overall(self, fraction: float, eta) -> None:
        self.overall.setValue(int(fraction * 1000))
        self.overall.setFormat(f"{fraction:.0%}  {format_eta(eta)}".strip())

    def _show_detail(self) -> None:
        it = self.list.currentItem()
        if it is None:
            self.detail.setText("")
            return
        jid = it.data(Qt.ItemDataRole.UserRole)
        info = self.client.job(jid) if jid is not None else None
        self.detail.setText(_detail(info) if info is not None else it.data(_DETAIL_ROLE))


def _tip(line: str, info: JobInfo) -> str:
    """A job's tooltip: its whole line (cut in the list when long) and its detail."""
    detail = _detail(info)
    return f"{line}\n{detail}" if detail and detail not in line else line


def _detail(info: JobInfo) -> str:
    """What the panel says of a job beside its line: what it waits for, why it failed or was
    cancelled, or its last message."""
    if info.waiting:
        return f"{info.waiting} ({info.error})" if info.error else info.waiting
    return info.error or info.message
