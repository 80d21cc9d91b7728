"""The thumbnail grid widget (QListView in icon mode over the filter proxy)."""
from __future__ import annotations

import bisect
from pathlib import Path

from PySide6.QtCore import (
    QItemSelection,
    QItemSelectionModel,
    QModelIndex,
    QSize,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QContextMenuEvent, QPainter, QPalette
from PySide6.QtWidgets import QAbstractItemView, QListView

from ..app import weak_slot
from .delegate import ThumbnailDelegate
from .model import PathRole


class ThumbnailGrid(QListView):
    activated_path = Signal(object)  # Path (double-click / Enter)
    current_path = Signal(object)  # Path | None
    folder_dropped = Signal(object)  # Path
    menu_requested = Signal(object, object)  # Path, QPoint (global): its context menu

    def __init__(self, parent=None, cell: int = 176) -> None:
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(True)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)
        self.setLayoutMode(QListView.LayoutMode.Batched)
        self.setBatchSize(200)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setSpacing(2)
        self.setGridSize(QSize(cell + 4, cell + 26))
        self.setItemDelegate(ThumbnailDelegate(cell, self))
        self.setAcceptDrops(True)
        self.setDragEnabled(False)
        self.doubleClicked.connect(
            weak_slot(self, lambda g, ix: g.activated_path.emit(ix.data(PathRole))))
        self._placeholder = ""

    def set_placeholder(self, text: str) -> None:
        """What the empty grid says (no folder yet, a folder without photos, a filter that
        hides every photo)."""
        self._placeholder = text
        self.viewport().update()

    def placeholder(self) -> str:
        return self._placeholder

    def paintEvent(self, e) -> None:
        super().paintEvent(e)
        m = self.model()
        # (rows that are still to be fetched are not "no photos")
        if self._placeholder and (m is None or (m.rowCount() == 0
                                                and not m.canFetchMore(QModelIndex()))):
            p = QPainter(self.viewport())
            p.setPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
            p.drawText(self.viewport().rect().adjusted(24, 24, -24, -24),
                       int(Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap),
                       self._placeholder)
            p.end()

    def setModel(self, model) -> None:
        super().setModel(model)
        self.selectionModel().currentChanged.connect(weak_slot(
            self, lambda g, cur, _prev: g.current_path.emit(
                cur.data(PathRole) if cur.isValid() else None)))

    def selectAll(self) -> None:
        """Ctrl+A selects every photo of the folder, also those whose rows are not fetched yet
        (rows arrive in batches as the grid scrolls: it selected the first 256 of 300)."""
        m = self.model()
        if m is not None:
            source = m.sourceModel() if hasattr(m, "sourceModel") else None
            if source is not None and hasattr(source, "fetch_all"):
                source.fetch_all()
            while m.canFetchMore(QModelIndex()):
                m.fetchMore(QModelIndex())
        super().selectAll()

    def selected_paths(self) -> list[Path]:
        """The selected photos, in grid order, read per selected range (one index at a time,
        Ctrl+A in a folder of 100,000 photos took 0.7 s): each range is one slice of the
        photo list, or a few where the class filter hides photos inside it."""
        sm, m = self.selectionModel(), self.model()
        if sm is None or m is None:
            return []
        source = m.sourceModel() if isinstance(m, QSortFilterProxyModel) else m
        if not hasattr(source, "paths") or (source is not m and m.sortColumn() >= 0):
            rows = sorted(sm.selectedIndexes(), key=lambda ix: ix.row())
            return [ix.data(PathRole) for ix in rows]
        runs: list[tuple[int, int]] = []
        for r in sm.selection():
            if r.isValid() and r.left() <= 0 <= r.right():
                if source is m:
                    runs.append((r.top(), r.bottom()))
                else:
                    _source_runs(m, r.top(), r.bottom(), runs)
        paths: list[Path] = []
        end = -1  # (ranges that overlap: each photo once)
        for top, bottom in sorted(runs):
            if bottom > end:
                paths += source.paths(max(top, end + 1), bottom)
                end = bottom
        return paths

    def select_paths(self, paths: list[Path], current: Path | None) -> None:
        """Select those of ``paths`` that are listed and shown (the folder listed again: F5),
        by ranges of consecutive rows (after Ctrl+A in a folder of 100,000 photos: one), with
        ``current`` the current photo (its ``current_path`` said first, then the selection).
        Rows not fetched yet are fetched as far as the last one selected."""
        m, sm = self.model(), self.selectionModel()
        source = m.sourceModel() if isinstance(m, QSortFilterProxyModel) else m
        if m is None or sm is None or not hasattr(source, "rows_of"):
            return
        rows = source.rows_of(paths)
        if rows:
            source.fetch_through(rows[-1])
        # (every row shown, not sorted: the grid's rows are the source's)
        same = m is source or (m.sortColumn() < 0 and m.rowCount() == source.rowCount())
        shown: list[list[int]] = []  # the grid's rows to select, as [first, last] ranges
        start = prev = None
        for r in [*rows, None]:  # (runs of consecutive source rows)
            if r is not None and prev is not None and r == prev + 1:
                prev = r
                continue
            if start is not None:
                for lo, hi in ([(start, prev)] if same else
                               _shown_rows(m, source, start, prev)):
                    if shown and shown[-1][0] <= lo <= shown[-1][1] + 1:  # (hidden between)
                        shown[-1][1] = max(shown[-1][1], hi)
                    else:
                        shown.append([lo, hi])
            start = prev = r
        selection = QItemSelection()
        for lo, hi in shown:
            selection.select(m.index(lo, 0), m.index(hi, 0))
        Flag = QItemSelectionModel.SelectionFlag
        cur = source.row_of(current) if current is not None else None
        ix = QModelIndex()
        if cur is not None:
            ix = source.index(cur) if source is m else m.mapFromSource(source.index(cur))
        if ix.isValid():
            sm.setCurrentIndex(ix, Flag.NoUpdate)
            self.scrollTo(ix)
        sm.select(selection, Flag.ClearAndSelect)

    def visible_paths(self) -> list[Path]:
        out = []
        m = self.model()
        if m is None:
            return out
        vp = self.viewport().rect()
        for row in range(m.rowCount()):
            ix = m.index(row, 0)
            if self.visualRect(ix).intersects(vp):
                out.append(ix.data(PathRole))
        return out

    def contextMenuEvent(self, e) -> None:
        """Right-click (or the menu key) on a photo: it becomes the current photo - the
        selection stays when the photo is in it ("Fix selected" still fixes them all), else it
        is selected alone - and ``menu_requested`` asks for its menu."""
        mouse = e.reason() is QContextMenuEvent.Reason.Mouse
        # (the menu key: the current photo's)
        ix = self.indexAt(e.pos()) if mouse else self.currentIndex()
        if not ix.isValid():
            e.ignore()
            return
        sm = self.selectionModel()
        if not sm.isSelected(ix):
            self.setCurrentIndex(ix)
        elif ix != self.currentIndex():
            sm.setCurrentIndex(ix, QItemSelectionModel.SelectionFlag.NoUpdate)
        pos = e.globalPos() if mouse else \
            self.viewport().mapToGlobal(self.visualRect(ix).center())
        self.menu_requested.emit(ix.data(PathRole), pos)
        e.accept()

    def keyPressEvent(self, e) -> None:
        if e.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.currentIndex().isValid():
            self.activated_path.emit(self.currentIndex().data(PathRole))
            return
        super().keyPressEvent(e)

    # drag and drop a folder (or photos: their folder) onto the grid
    def dragEnterEvent(self, e) -> None:
        if e.mimeData().hasUrls():
            e.acceptProposedAction()
        else:
            super().dragEnterEvent(e)

    def dragMoveEvent(self, e) -> None:
        if e.mimeData().hasUrls():
            e.acceptProposedAction()
        else:
            super().dragMoveEvent(e)

    def dropEvent(self, e) -> None:
        for url in e.mimeData().urls():
            p = Path(url.toLocalFile())
            if p.is_dir():
                self.folder_dropped.emit(p)
                break
            if p.is_file():
                self.folder_dropped.emit(p.parent)
                break
        e.acceptProposedAction()


def _shown_rows(m, source, top: int, bottom: int) -> list[tuple[int, int]]:
    """The rows of the class filter ``m`` showing the source rows ``top``..``bottom``, as
    (first, last) ranges. A filter keeps the source's order (it does not sort): those it shows
    are consecutive, one range, from the first shown at or after ``top`` to the last shown at
    or before ``bottom`` (looked for by bisection when those ends are hidden)."""
    first = m.mapFromSource(source.index(top))
    if top == bottom:
        return [(first.row(), first.row())] if first.isValid() else []
    if m.sortColumn() >= 0:  # (sorted: row by row)
        return [(ix.row(), ix.row()) for r in range(top, bottom + 1)
                if (ix := m.mapFromSource(source.index(r))).isValid()]
    last = m.mapFromSource(source.index(bottom))

    def source_row(r: int) -> int:
        return m.mapToSource(m.index(r, 0)).row()

    n = m.rowCount()
    lo = first.row() if first.isValid() else bisect.bisect_left(range(n), top, key=source_row)
    hi = last.row() if last.isValid() else \
        bisect.bisect_right(range(n), bottom, key=source_row) - 1
    return [(lo, hi)] if lo <= hi else []


def _source_runs(proxy: QSortFilterProxyModel, top: int, bottom: int,
                 out: list[tuple[int, int]]) -> None:
    """The source rows of the proxy's rows ``top``..``bottom`` as runs of consecutive rows
    (an unsorted filter keeps the source's order: rows whose source rows are as far apart as
    they are are one run; else the range is halved), appended to ``out``."""
    first = proxy.mapToSource(proxy.index(top, 0)).row()
    last = proxy.mapToSource(proxy.index(bottom, 0)).row()
    if last - first == bottom - top:
        out.append((first, last))
        return
    mid = (top + bottom) // 2
    _source_runs(proxy, top, mid, out)
    _source_runs(proxy, mid + 1, bottom, out)
