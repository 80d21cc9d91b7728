"""The photo grid's model: lazy rows (fetchMore), thumbnails on demand, per-photo state badges."""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QImage, QPixmap

from engine.api import Diagnosis
from engine.imageio import folder_ids, is_junction, is_photo_path

from ..engine_client import JobState
from .thumbs import ThumbnailLoader

log = logging.getLogger("mend.ui.browser")

PathRole = Qt.ItemDataRole.UserRole + 1
DiagnosisRole = Qt.ItemDataRole.UserRole + 2
JobStateRole = Qt.ItemDataRole.UserRole + 3
LabelRole = Qt.ItemDataRole.UserRole + 4
OutputRole = Qt.ItemDataRole.UserRole + 5
ErrorRole = Qt.ItemDataRole.UserRole + 6
ThumbStateRole = Qt.ItemDataRole.UserRole + 7  # "loading" | "ready" | "failed"
MendKindRole = Qt.ItemDataRole.UserRole + 8  # "result" | "mask": a file Mend wrote, else ""
KeptRole = Qt.ItemDataRole.UserRole + 9  # bool: its result is the original, unchanged

BATCH = 256
_NO_PARENT = QModelIndex()  # the root: the default parent of the list model's API


@dataclass(frozen=True)
class PhotoItem:
    path: Path
    mtime_ns: int
    size: int
    diagnosis: Diagnosis | None = None
    job_state: JobState | None = None
    output: Path | None = None
    error: str = ""
    mend_kind: str = ""  # "result" / "mask" when Mend wrote the file (its record says so)
    rel: str = ""  # "100CANON/IMG_0001.JPG" for a photo in a subfolder of the opened folder
    # its result is the original as it was (nothing to fix or to fill, or the regression guard
    # kept it): its chip says "unchanged", not "done"
    kept: bool = False

    @property
    def display_name(self) -> str:
        return self.rel or self.path.name


OUTPUT_FOLDER = "mended"  # the default output folder, <photo folder>/mended (AppSettings)
MAX_TREE_PHOTOS = 100_000  # a listing with subfolders stops there (a home folder by mistake)
MAX_TREE_FOLDERS = 20_000


def _list_dir(folder: Path, photos: list[PhotoItem], subfolders: list[Path] | None,
              prefix: str = "") -> None:
    """Append ``folder``'s photos (``rel`` = ``prefix`` + name when a prefix is given) and, when
    ``subfolders`` is a list, its folders (not hidden, not symlinked), in directory order. A
    folder that cannot be listed raises ``OSError``; an entry that vanishes or cannot be read
    while listing is left out."""
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            try:
                if subfolders is not None and e.is_dir(follow_symlinks=False):
                    if not is_junction(e):  # (Windows' folder links)
                        subfolders.append(Path(e.path))
                    continue
                if not is_photo_path(Path(e.name)) or not e.is_file():
                    continue
                st = e.stat()
            except OSError:
                continue
            photos.append(PhotoItem(Path(e.path), st.st_mtime_ns, st.st_size,
                                    rel=prefix + e.name if prefix else ""))


def scan_folder(folder: Path) -> list[PhotoItem]:
    """The photos directly inside ``folder``, sorted by name (case-insensitive). A folder that
    cannot be listed raises ``OSError`` (the window says so instead of "no photos"); a file
    that vanishes or cannot be read while listing is left out."""
    items: list[PhotoItem] = []
    _list_dir(folder, items, None)
    items.sort(key=lambda p: p.path.name.lower())
    return items


def _scan_or_empty(folder: Path) -> list[PhotoItem]:
    try:
        return scan_folder(folder)
    except OSError:
        return []


class TreeScan:
    """One listing with subfolders: its counters, read by the GUI thread while it runs, and a
    stop flag the GUI thread sets when another folder is opened (the walk ends at the next
    folder; its partial result is discarded by the window's generation check)."""

    def __init__(self) -> None:
        self.photos = 0
        self.folders = 0
        self.stopped = False
        self.complete = True  # False: stopped at a limit, the listing is a part of the tree


def scan_tree(folder: Path, *, exclude: tuple[Path, ...] = (), scan: TreeScan | None = None,
              max_photos: int = MAX_TREE_PHOTOS, max_folders: int = MAX_TREE_FOLDERS,
              exclude_beside: tuple[str, ...] = ()) -> list[PhotoItem]:
    """The photos in ``folder`` and all its subfolders, sorted by their path relative to
    ``folder`` (case-insensitive, folder by folder); a subfolder photo's ``rel`` is that path.

    Left out: hidden files and folders (``.mend`` sidecars), Mend's default output folders
    (``mended``), the folders in ``exclude`` (a configured output folder inside the tree) and
    those at the relative paths ``exclude_beside`` below every folder walked (a relative output
    folder chosen in Settings, "results": each photo's results are in its folder's),
    symlinked folders (never followed; a folder reached twice, e.g. through a bind mount, is read
    once: no loop), and subfolders that cannot be read. ``folder`` itself that cannot be listed
    raises ``OSError``. The walk stops after ``max_photos`` photos or ``max_folders`` folders
    (``scan.complete`` is then False), and when ``scan.stopped`` is set.

    (``engine.imageio.iter_photos(recursive=True)``, the CLI's ``-r``, walks alike but has no
    limit or stop, no sizes and dates, and reads the ``mended`` folders below the top.)"""
    scan = scan if scan is not None else TreeScan()
    root = Path(folder)
    skip = {os.path.normcase(os.path.abspath(p)) for p in exclude}
    for p in exclude:  # named another way (a link, "..") than the walk will reach it
        try:
            rel = Path(p).resolve().relative_to(root.resolve())
        except (OSError, ValueError):
            continue
        skip.add(os.path.normcase(os.path.abspath(root / rel)))
    # ... or spelt another way still: "Out" for "out" on macOS, where names ignore case and
    # Unicode normalisation but paths are not normcased (nor made canonical by resolve())
    skip_ids = folder_ids(exclude)
    items: list[PhotoItem] = []
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, str]] = [(root, "")]  # explicit: no recursion limit on a deep tree
    while stack:
        if scan.stopped:
            break
        if scan.folders >= max_folders or len(items) >= max_photos:
            scan.complete = False
            break
        d, prefix = stack.pop()
        subfolders: list[Path] = []
        try:
            st = os.stat(d)
            if st.st_ino:  # (0: a file system without inode numbers)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                if d is not root and (st.st_dev, st.st_ino) in skip_ids:
                    continue
                seen.add((st.st_dev, st.st_ino))
            _list_dir(d, items, subfolders, prefix)
        except OSError as e:
            if d is root:
                raise
            log.info("skipped unreadable folder %s: %s", d, e)
            continue
        scan.folders += 1
        scan.photos = len(items)
        for rel in exclude_beside:  # (below this folder: "results", "out/mend" below "out")
            skip.add(os.path.normcase(os.path.abspath(d / rel)))
        subfolders = [f for f in subfolders if f.name != OUTPUT_FOLDER
                      and os.path.normcase(os.path.abspath(f)) not in skip]
        # walked in name order: a listing cut at a limit holds the first folders
        subfolders.sort(key=lambda f: f.name.lower(), reverse=True)
        stack.extend((f, f"{prefix}{f.name}{os.sep}") for f in subfolders)
    if len(items) > max_photos:
        del items[max_photos:]
        scan.complete = False
    scan.photos = len(items)
    items.sort(key=lambda it: (it.rel or it.path.name).lower().split(os.sep))
    return items


class ThumbnailModel(QAbstractListModel):
    """Rows are photos of one folder; rows appear in batches via ``fetchMore``."""

    folder_changed = Signal(object)

    def __init__(self, loader: ThumbnailLoader, parent: QObject | None = None,
                 pixmap_cache: int = 800) -> None:
        super().__init__(parent)
        self.loader = loader
        self.folder: Path | None = None
        self._all: list[PhotoItem] = []
        self._loaded = 0
        self._row: dict[Path, int] = {}
        self._pixmaps: OrderedDict[Path, QPixmap] = OrderedDict()
        self._cap = pixmap_cache
        self._pending: set[Path] = set()
        self._failed: dict[Path, str] = {}
        self._dirty: set[int] = set()
        self._flush = QTimer(self)  # thumbnails arriving together -> one repaint
        self._flush.setSingleShot(True)
        self._flush.setInterval(25)
        self._flush.timeout.connect(self._flush_dirty)
        loader.ready.connect(self._on_ready)
        loader.failed.connect(self._on_failed)

    # -- folder ---------------------------------------------------------------------------
    def set_folder(self, folder: Path | None, items: list[PhotoItem] | None = None) -> None:
        self.loader.new_generation()
        self.beginResetModel()
        self.folder = folder
        self._all = items if items is not None else (_scan_or_empty(folder) if folder else [])
        self._row = {it.path: i for i, it in enumerate(self._all)}
        self._loaded = min(BATCH, len(self._all))  # the first screen is there at once
        self._pixmaps.clear()
        self._pending.clear()
        self._failed.clear()
        self._dirty.clear()
        self.endResetModel()
        self.folder_changed.emit(folder)

    def total(self) -> int:
        return len(self._all)

    def items(self) -> list[PhotoItem]:
        return list(self._all)

    def item_at(self, row: int) -> PhotoItem | None:
        """The photo of row ``row`` (fetched or not; None past the listing)."""
        return self._all[row] if 0 <= row < len(self._all) else None

    def item(self, path: Path) -> PhotoItem | None:
        i = self._row.get(Path(path))
        return None if i is None else self._all[i]

    def paths(self, top: int, bottom: int) -> list[Path]:
        """The paths of rows ``top``..``bottom`` (the grid's selection, read per range)."""
        return [it.path for it in self._all[top:min(bottom + 1, self._loaded)]]

    def row_of(self, path: Path) -> int | None:
        i = self._row.get(Path(path))
        return i if i is not None and i < self._loaded else None

    def rows_of(self, paths: list[Path]) -> list[int]:
        """The rows of those of ``paths`` that are listed, fetched or not, in row order."""
        row = self._row
        return sorted(i for p in paths
                      if (i := row.get(p if isinstance(p, Path) else Path(p))) is not None)

    def fetch_through(self, row: int) -> None:
        """The rows up to ``row`` fetched (at once: one insertion), and whole batches."""
        end = min(len(self._all), -(-(row + 1) // BATCH) * BATCH)
        if end <= self._loaded:
            return
        self.beginInsertRows(QModelIndex(), self._loaded, end - 1)
        self._loaded = end
        self.endInsertRows()

    # -- Qt model API ---------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = _NO_PARENT) -> int:
        return 0 if parent.isValid() else self._loaded

    def canFetchMore(self, parent: QModelIndex | QPersistentModelIndex = _NO_PARENT) -> bool:
        return not parent.isValid() and self._loaded < len(self._all)

    def fetchMore(self, parent: QModelIndex | QPersistentModelIndex = _NO_PARENT) -> None:
        if parent.isValid():
            return
        n = min(BATCH, len(self._all) - self._loaded)
        if n <= 0:
            return
        self.beginInsertRows(QModelIndex(), self._loaded, self._loaded + n - 1)
        self._loaded += n
        self.endInsertRows()

    def fetch_all(self) -> None:
        """Every row at once (one insertion, not one per batch)."""
        n = len(self._all) - self._loaded
        if n <= 0:
            return
        self.beginInsertRows(QModelIndex(), self._loaded, len(self._all) - 1)
        self._loaded = len(self._all)
        self.endInsertRows()

    def flags(self, index: QModelIndex | QPersistentModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def data(self, index: QModelIndex | QPersistentModelIndex,
             role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= self._loaded or index.column() != 0:
            return None
        it = self._all[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return it.rel or it.path.name
        if role == Qt.ItemDataRole.ToolTipRole:
            tip = str(it.path)
            if it.diagnosis is not None:
                d = it.diagnosis
                tip += f"\n{d.label.short_name} ({d.confidence:.0%})"
            if it.mend_kind:
                tip += ("\nA result Mend wrote" if it.mend_kind == "result"
                        else "\nA mask Mend saved")
            if it.error or it.path in self._failed:
                tip += f"\n{it.error or self._failed[it.path]}"
            if it.kept and it.job_state is JobState.DONE:
                tip += "\nIts result is the original, unchanged"
            return tip
        if role == Qt.ItemDataRole.DecorationRole:
            return self._pixmap(it)
        if role == PathRole:
            return it.path
        if role == DiagnosisRole:
            return it.diagnosis
        if role == LabelRole:
            return it.diagnosis.label.value if it.diagnosis else ""
        if role == JobStateRole:  # a plain string: QVariant turns str enums into str anyway
            return it.job_state.value if it.job_state else None
        if role == OutputRole:
            return it.output
        if role == MendKindRole:
            return it.mend_kind
        if role == KeptRole:
            return it.kept
        if role == ErrorRole:
            return it.error or self._failed.get(it.path, "")
        if role == ThumbStateRole:
            if it.path in self._pixmaps:
                return "ready"
            return "failed" if it.path in self._failed else "loading"
        return None

    # -- thumbnails -----------------------------------------------------------------------
    def _pixmap(self, it: PhotoItem) -> QPixmap | None:
        pm = self._pixmaps.get(it.path)
        if pm is not None:
            self._pixmaps.move_to_end(it.path)
            return pm
        if it.path not in self._pending and it.path not in self._failed:
            self._pending.add(it.path)
            self.loader.request(it.path, it.mtime_ns, it.size)
        return None

    def _on_ready(self, gen: int, path: Path, img: QImage) -> None:
        p = Path(path)
        self._pending.discard(p)
        row = self._row.get(p)
        if row is None:
            return
        pm = QPixmap.fromImage(img)  # GUI thread only
        pm.setDevicePixelRatio(self.loader.display_dpr)
        self._pixmaps[p] = pm
        while len(self._pixmaps) > self._cap:
            self._pixmaps.popitem(last=False)
        self._dirty.add(row)
        if not self._flush.isActive():
            self._flush.start()

    def _flush_dirty(self) -> None:
        rows = [r for r in self._dirty if r < self._loaded]
        self._dirty.clear()
        if rows:
            self.dataChanged.emit(self.index(min(rows)), self.index(max(rows)),
                                  [Qt.ItemDataRole.DecorationRole])

    def _on_failed(self, gen: int, path: Path, msg: str) -> None:
        p = Path(path)
        self._pending.discard(p)
        self._failed[p] = msg
        row = self._row.get(p)
        if row is not None:
            self._changed_row(row)

    def _changed_row(self, row: int) -> None:
        if row < self._loaded:
            ix = self.index(row)
            self.dataChanged.emit(ix, ix)

    def ready_count(self) -> int:
        return len(self._pixmaps)

    def failed_count(self) -> int:
        return len(self._failed)

    # -- per-photo state ------------------------------------------------------------------
    def update_item(self, path: Path, **changes: Any) -> None:
        row = self._row.get(Path(path))
        if row is None:
            return
        self._all[row] = replace(self._all[row], **changes)
        self._changed_row(row)


class ClassFilterProxy(QSortFilterProxyModel):
    """Show only photos diagnosed as one of ``classes`` ("?" = not diagnosed yet)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._classes: set[str] | None = None
        self._keep: Path | None = None
        self.setDynamicSortFilter(True)

    def set_classes(self, classes: set[str] | None) -> None:
        """Show only the photos of ``classes`` (None: all). Filtered again as one layout
        change: ``invalidateFilter`` took the rows out run by run, each a removal the grid
        laid itself out after (100,000 photos of mixed classes: ~1 s, now ~0.1 s). The
        selection is the caller's to keep (``MainWindow.set_class_filter``)."""
        self._classes = classes
        self.invalidate()

    def set_keep(self, path: Path | None) -> None:
        """The photo being worked on stays shown while it is current, even when a diagnosis
        or a fix moves it out of the filter (the view would otherwise jump to another photo,
        which the next Fix would then act on)."""
        if path == self._keep:
            return
        old, self._keep = self._keep, path
        # re-filtering every row on each arrow key would be O(photos) on the GUI thread: only
        # needed when the photo left or the one arrived is shown only because it is current
        if self._classes is not None and not (self._passes(old) and self._passes(path)):
            self.invalidateFilter()

    def _passes(self, path: Path | None) -> bool:
        """Whether ``path`` is shown by the class filter alone (None: nothing to keep)."""
        if path is None:
            return True
        item = self.sourceModel().item(path)
        if item is None:
            return True
        label = item.diagnosis.label.value if item.diagnosis is not None else "?"
        return self._classes is None or label in self._classes

    def filterAcceptsRow(self, source_row: int,
                         source_parent: QModelIndex | QPersistentModelIndex) -> bool:
        if self._classes is None:
            return True
        # (the source's item itself, not its data() twice: a filter chosen runs this for every
        # photo of the folder)
        it = self.sourceModel().item_at(source_row)
        if it is None:
            return False
        if self._keep is not None and it.path == self._keep:
            return True
        return (it.diagnosis.label.value if it.diagnosis is not None else "?") in self._classes
