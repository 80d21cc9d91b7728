"""Mend's main window: browser, viewer / mask editor, diagnosis panel, queue."""
from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import (
    QByteArray,
    QEvent,
    QItemSelectionModel,
    QObject,
    Qt,
    QThreadPool,
    QTimer,
    Signal,
)
from PySide6.QtGui import QAction, QActionGroup, QImage, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractSlider,
    QApplication,
    QColorDialog,
    QComboBox,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPushButton,
    QSlider,
    QSpinBox,
    QStackedWidget,
    QTabBar,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.api import Degradation, Diagnosis, JobRequest, JobResult, OutputOptions, Plan
from engine.progress import CancelToken

from .app import weak_slot
from .browser.model import (
    ClassFilterProxy,
    PathRole,
    ThumbnailModel,
    TreeScan,
    scan_folder,
    scan_tree,
)
from .browser.thumbs import ThumbnailLoader
from .browser.view import ThumbnailGrid
from .editor.canvas import Compare
from .editor.mask import MaskDocument
from .editor.mask_canvas import MaskCanvas
from .engine_client import (
    RETRY_LATER,
    DiagnoseOutcome,
    EngineClient,
    JobInfo,
    JobKind,
    JobState,
    ProposedMask,
    result_kept_original,
    run_title,
    start_in,
    wait_responsive,
)
from .panels.diagnosis import DiagnosisPanel
from .panels.queue import QueuePanel, format_eta
from .photo_io import (
    Background,
    ViewImages,
    build_view,
    export_copy,
    prune_previews,
    remove_quietly,
    take_preview,
)
from .settings import (
    AppSettings,
    SettingsFile,
    add_recent_folder,
    cache_dir,
    data_dir,
    load_settings,
    qsettings,
    recent_folders,
    save_settings,
)
from .sidecar import Sidecar, SidecarStore
from .widgets import ElidedLabel, show_overflow_button

log = logging.getLogger("mend.ui")

_ENGINE_START = "engine start"  # the status line's operation while the engine starts
_PICK_A_PHOTO = "pick a photo"  # "Fix selected" with none selected: said until one is picked
_CANCELS = "cancelled jobs"  # the status line's jobs cancelled together (_say_cancelled)
# seconds between two jobs' cancels said together: the running job's ends at its next cancel
# check (a tile, a model layer: well under a second), after the queued ones'
CANCELS_TOGETHER = 5.0
# "Preview fix here" runs on the part of the photo in view, at most this many source px a side
# (the square at the view's centre): a preview is meant to take seconds, not the photo's time
PREVIEW_SIDE = 1024
PREVIEWS = "previews"  # (in the user cache folder) where the engine writes them for the viewer
# the keys of the viewer's shortcuts (space: before/after; left, right: the photos) that a control
# reached with Tab uses itself - space presses a button, ticks a step, opens a list; left and
# right move a tab bar's tab (the docks': Diagnosis / Queue) or a slider: see _ControlKeys
_CONTROL_KEYS: dict[int, tuple[type, ...]] = {
    Qt.Key.Key_Space: (QAbstractButton, QComboBox, QAbstractItemView),
    Qt.Key.Key_Left: (QTabBar, QAbstractSlider),
    Qt.Key.Key_Right: (QTabBar, QAbstractSlider),
}


def _delete_when_idle(doc: MaskDocument) -> None:
    """``deleteLater()`` once the document's full-resolution work is done (deleting it earlier
    would wait for its worker on the GUI thread). Held weakly meanwhile: no cycle."""
    if doc.busy():
        doc.when_idle(weak_slot(doc, lambda d: d.dispose()))
    else:
        doc.deleteLater()


def _detector_name(model: str) -> str:
    """Who found a reflection mask, from the ``reflection_mask`` step's record of it."""
    first, _, refined = model.partition("+")
    who = {"builtin:glare": "the built-in glare detector",
           "reflection-yolo": "your YOLO reflection detector"}.get(
        first, f"the reflection detector ({first})")
    return f"{who}, refined by SAM" if refined else who


def _only_proposal(doc: MaskDocument) -> bool:
    """``doc``'s one edit is the automatic mask laid in (``MainWindow._on_proposal``), as it
    was found: the photographer has neither changed it nor undone it."""
    return doc.proposed and doc.undo.count() == 1 and doc.undo.index() == 1


def _reads_mask(request: JobRequest) -> bool:
    """The engine reads the request's mask file: its plan inpaints (with no plan: the class
    it runs is B's, as a mask with no class chosen makes it)."""
    if request.mask_path is None:
        return False
    if request.plan is not None:
        from engine.pipeline import uses_mask

        return uses_mask(request.plan)
    return request.label in (None, Degradation.B)


@dataclass
class PhotoState:
    diagnosis: Diagnosis | None = None
    plan: Plan | None = None
    plan_note: str = ""
    result: JobResult | None = None
    output: Path | None = None
    mask_path: Path | None = None
    outputs: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (height, width), known once diagnosed
    record: dict | None = None  # the Mend record in the file itself (a result Mend wrote)
    record_read: bool = False
    size_read: bool = False  # its size was asked of the file's header (_read_size)
    mask_doc: Any = None  # the mask as edited in the editor (kept while the folder is open)
    # the photographer deleted their mask ("Delete mask"): the last result's mask (theirs, when
    # the fix used it) is neither shown nor edited until a new mask or fix comes
    mask_deleted: bool = False
    override: Degradation | None = None  # "Fix as": the class the photographer chose
    plan_job: int | None = None  # the job bringing the plan for that choice (older ones: stale)
    retry_plan_job: int | None = None  # that job, cancelled or failed: its retry brings the plan
    # the plan was edited in the panel: it runs as it is. The engine's own plan is not sent with
    # a fix: it is made again then, for the settings of then (another profile, models installed)
    plan_edited: bool = False
    plan_stale: bool = False  # made for other settings: made again when the photo is shown
    # the automatic mask was looked for (the editor opened on the photo with no mask: see
    # ``_propose_mask``) and found, found empty or not laid in: not looked for again
    auto_mask: bool = False
    # the result file found gone from the disk when the photo was shown (``_check_output``)
    output_gone: Path | None = None
    # a result found on the disk to be the original as it was (``result_kept_original``: one
    # another session made, recorded in the sidecar or the crash journal)
    kept_output: Path | None = None


def _kept_original(st: PhotoState) -> bool:
    """The photo's latest result is the original as it was (nothing to fix or to fill, or
    the regression guard kept it): a fix made here says so, or the file on the disk did."""
    if st.output is None:
        return False
    if st.result is not None and st.result.output == st.output:
        return st.result.kept_original
    return st.kept_output == st.output


@dataclass(frozen=True)
class RegionPreview:
    """A fix of part of a photo, shown over it in the viewer's after pane (never saved)."""

    path: Path
    region: tuple[int, int, int, int]  # x0, y0, x1, y1: upright source px
    image: QImage  # sRGB, at the chain's output scale
    job: int  # the job that made it (a fix or a plan asked after it does not make it stale)


class _ControlKeys(QObject):
    """The window's filter of the keys its shortcuts take: a control the photographer reached
    with Tab keeps the keys it uses (``MainWindow._control_keeps``) - space on "Fix this photo"
    or "Diagnose" toggled before/after instead of pressing it, and left / right on the docks'
    tab bar changed the photo (the Queue panel could not be reached from the keyboard). A
    control clicked with the mouse leaves them to the viewer, as before (space after clicking
    Fix compares). (A filter, not the window's own ``event``: a Python ``event`` of the window
    kept it alive once deleted.)"""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self._window = weakref.ref(window)

    def eventFilter(self, obj: QObject, e: QEvent) -> bool:
        if e.type() == QEvent.Type.ShortcutOverride:
            win = self._window()
            if win is not None and win._control_keeps(e):
                e.accept()
                return True
        return False


def _centred(lo: int, hi: int, side: int) -> tuple[int, int]:
    """[lo, hi) cut to at most ``side`` around its centre."""
    if hi - lo <= side:
        return lo, hi
    start = min(max(lo, round((lo + hi - side) / 2)), hi - side)
    return start, start + side


@dataclass(frozen=True)
class _StatusOwner:
    """What the status line's message is about: it goes when that is over (see ``set_status``).
    None everywhere: a message of its own, which stays until another replaces it."""

    photo: Path | None = None
    folder: Path | None = None
    op: object = None


def _class_or_none(value: Any) -> Degradation | None:
    try:
        return Degradation(value) if value else None
    except ValueError:
        return None


class MainWindow(QMainWindow):
    view_loaded = Signal(object)  # Path (tests and screenshots wait on it)
    diagnosed = Signal(object)  # Path
    fixed = Signal(object)  # Path
    exported = Signal(object)  # Path of the exported copy

    def __init__(self, client: EngineClient | None = None, settings: AppSettings | None = None,
                 *, ask_resume: bool = True, sidecars_beside_photos: bool = True) -> None:
        super().__init__()
        self._sidecars_beside = sidecars_beside_photos
        # closing (closeEvent): what the waits there let through (a job ending, a timer) is
        # recorded, never shown (see load_view, _ask_resume)
        self._closing = False
        self._quit_token = CancelToken()  # cancelled when the window closes (its pool work)
        # the Models dialog while it is open (weakly: it is deleted once closed; show_models)
        self._models_dialog: weakref.ref[Any] | None = None
        self.setWindowTitle("Mend")
        read = qsettings()
        self.settings = settings or load_settings(read)
        self.settings.apply_environment()
        if client is None:
            from .engine_client import _default_factory, new_journal_path

            # (a journal of this instance's own: a second Mend never writes over it)
            client = EngineClient(_default_factory(self.settings.device, self.settings.tile_size),
                                  journal=new_journal_path(data_dir()))
            self._own_client = True
        else:
            self._own_client = False
        self.client = client
        # the settings: read from memory, written in the client's pool (never on this thread;
        # the client's shutdown waits for the writes)
        self.qs = SettingsFile(client.run_in_pool, read)
        self.states: dict[Path, PhotoState] = {}
        self.current: Path | None = None
        self.sidecars: SidecarStore | None = None
        self.folder_loading = False  # a folder's listing is on its way (open_folder)
        self._tree_scan: TreeScan | None = None  # the listing with subfolders under way
        self._listed_tree = False  # the grid shows the subfolders' photos too
        self._job_path: dict[int, Path] = {}
        # how the latest fix of a photo ended when it did not finish (failed, cancelled), with
        # its message, until another fix of it is queued or done: the grid's chip, shown again
        # when its folder is listed (opened after the fix failed - a fix offered again after a
        # crash, queued before any folder was -, F5), as the session shows it live
        self._fix_ends: dict[Path, tuple[JobState, str]] = {}
        self._other_stores: dict[Path, SidecarStore] = {}  # folders of jobs from other folders
        self._mask_doc_path: Path | None = None  # the photo self.mask_doc belongs to
        self._readonly_doc: MaskDocument | None = None  # the viewer's overlay of a saved mask
        # a mask tool picked while the photo's mask could not open yet (still decoding): taken
        # once it opens (load_view), the editor staying on "pan" meanwhile
        self._tool_wanted: str | None = None
        self._sam_include: dict[int, bool] = {}
        # the searches for a photo's automatic mask under way (``_propose_mask``): job id ->
        # (photo, the editor's document it is for, weakly), and those cancelled or failed,
        # which the Queue panel's Retry asks again for the same document
        self._detect_jobs: dict[int, tuple[Path, weakref.ref[MaskDocument]]] = {}
        self._detect_ended: dict[int, tuple[Path, weakref.ref[MaskDocument]]] = {}
        self._view: ViewImages | None = None
        self._view_token = 0
        # the latest view token, shared with the queued decodes: one superseded before it
        # starts is skipped (stepping through big photos decoded every photo passed over)
        self._view_latest = [0]
        self.device: Any = None
        self._sam_ok = False  # SAM's weights are installed (checked in the pool)
        self.bg = Background(self.client.run_in_pool, self)
        self._edited_plans: set[Path] = set()  # plans edited in the panel, not yet recorded
        # photos whose mask is being written: the fixes queued meanwhile wait for it
        self._mask_waiters: dict[Path, list[Callable[[Path | None], None]]] = {}
        self._mask_write_seq: dict[Path, int] = {}  # the latest write of each
        self._mask_write_ids = itertools.count(1)
        self._mask_write_locks: dict[Path, threading.Lock] = {}  # one write of each at a time
        self._mask_on_disk: dict[Path, int] = {}  # the write whose mask is on the disk
        self._mask_deleted_at: dict[Path, int] = {}  # the latest "Delete mask" (a write number)
        self._mask_jobs: dict[int, Path] = {}  # fixes and previews that read a mask file
        # Retries of fixes that read a mask, waiting for the mask painted since to be written
        # (job id -> its waiter in _mask_waiters, weakly: one dropped there is gone), and the
        # mask written for each (job id -> path)
        self._retries_waiting: dict[int, weakref.ref[Callable[[Path | None], None]]] = {}
        self._retry_masks: dict[int, Path] = {}
        # the fixes and previews in _mask_waiters (not retries), each with its queue title: the
        # Queue panel shows them (``_show_waiting``); one dropped there is gone from here
        self._fixes_waiting: weakref.WeakKeyDictionary[Callable[[Path | None], None], str] = \
            weakref.WeakKeyDictionary()
        # "Preview fix here": the preview shown (one at a time: up to 4096 px a side after an
        # x4 chain), and the preview jobs queued, running or being decoded (job id -> photo);
        # one dropped from here (the plan changed, a fix finished) is thrown away when it ends
        self._preview: RegionPreview | None = None
        self._preview_jobs: dict[int, Path] = {}
        self._plan_save_timer = QTimer(self)
        self._plan_save_timer.setSingleShot(True)
        self._plan_save_timer.setInterval(500)
        self._plan_save_timer.timeout.connect(self._save_edited_plans)
        self.client.resubmitted.connect(weak_slot(self, lambda w, old, new: w._on_resubmitted(
            old, new)))
        # (weakly: the client outlives nothing of the window through it)
        self.client.set_retry_hook(weak_slot(self, lambda w, info, payload: w._retry_request(
            info, payload)))

        # thumbnails get a pool of their own: a folder switch drops the queued ones, and that must
        # never drop the window's other pool work (sidecar and mask saves, exports, viewer
        # decodes), which also should not wait behind a big folder's thumbnails
        self.thumb_pool = QThreadPool(self)
        self.thumb_pool.setMaxThreadCount(self.client.pool.maxThreadCount())
        self.loader = ThumbnailLoader(self.thumb_pool, cache_dir() / "thumbs", parent=self)
        self.loader.prune_cache()  # (other versions' entries, and the least used past the cap)
        # per-folder header reads (which files Mend wrote) go with the thumbnails' work
        pool = self.thumb_pool  # (not self: the window would keep itself alive in a cycle)
        self.folder_bg = Background(lambda fn: start_in(pool, fn), self)
        self.model = ThumbnailModel(self.loader, self)
        self.proxy = ClassFilterProxy(self)
        self.proxy.setSourceModel(self.model)

        self._build_browser()
        self._build_editor()
        self.stack = QStackedWidget()
        self.stack.addWidget(self.browser_page)
        self.stack.addWidget(self.editor_page)
        self.setCentralWidget(self.stack)

        self.panel = DiagnosisPanel()  # (it scrolls itself, its Fix button kept in view)
        dock = QDockWidget("Diagnosis", self)
        dock.setObjectName("diagnosisDock")
        dock.setWidget(self.panel)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.queue = QueuePanel(self.client)
        qdock = QDockWidget("Queue", self)
        qdock.setObjectName("queueDock")
        qdock.setWidget(self.queue)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, qdock)
        self.tabifyDockWidget(dock, qdock)
        dock.raise_()
        self.diag_dock, self.queue_dock = dock, qdock

        self._build_menus()
        self.installEventFilter(_ControlKeys(self))  # (space, left, right: see _control_keeps)
        # mask tools and undo work from the keyboard even while their toolbar is hidden
        self.addActions([*self.tool_actions.values(), self.undo_action, self.redo_action])
        self.status_label = QLabel("")
        self.statusBar().addWidget(self.status_label, 1)
        self._status_owner = _StatusOwner()
        self._cancelled: list[str] = []  # the jobs the status line says were cancelled
        self._cancelled_at = 0.0  # (time.monotonic) when the last of them was
        self.eta_label = QLabel("")
        self.statusBar().addPermanentWidget(self.eta_label)
        # shown while the crash journal cannot be written (said once in the status line)
        self.journal_label = QLabel("⚠ Queue not crash-safe")
        self.journal_label.setObjectName("dim")
        self.journal_label.setVisible(False)
        self.statusBar().addPermanentWidget(self.journal_label)

        c = self.client
        c.finished.connect(self._on_finished)
        c.failed.connect(self._on_failed)
        c.job_changed.connect(self._on_job_changed)
        c.overall_progress.connect(self._on_overall)
        c.engine_ready.connect(self._on_engine_ready)
        # a fix recorded its steps' times: the current photo's estimate is asked again
        c.history_changed.connect(self.panel.refresh_estimate)
        c.queue_changed.connect(self._on_queue_changed)
        c.journal_problem.connect(self._on_journal_problem)
        p = self.panel
        p.run_requested.connect(self._run_current)
        p.override_requested.connect(self._override)
        p.plan_edited.connect(self._on_plan_edited)
        p.diagnose_requested.connect(self._diagnose_current)
        p.edit_mask_requested.connect(self.show_mask_editor)
        # (weakly: the panel is the window's child, a bound method would make a cycle)
        p.set_label_source(weak_slot(
            self, lambda w: w.plan_label(w.current) if w.current is not None else None))

        self.resize(1400, 880)
        self.resizeDocks([dock], [400], Qt.Orientation.Horizontal)
        self._restore_window()
        self.show_browser()
        if ask_resume:
            QTimer.singleShot(0, self._offer_resume)
        if self._own_client:
            self.set_status("Starting the engine…", op=_ENGINE_START)
            self.client.warm_up()
        # (previews a crashed Mend wrote and never showed)
        self.client.run_in_pool(functools.partial(prune_previews, cache_dir() / PREVIEWS))

    # -- layout ---------------------------------------------------------------------------
    def _build_browser(self) -> None:
        self.browser_page = QWidget()
        lay = QVBoxLayout(self.browser_page)
        lay.setContentsMargins(6, 6, 6, 6)
        bar = QHBoxLayout()
        # (cut in the middle to the room there is: the whole path set the window's minimum
        # width)
        self.folder_label = ElidedLabel("Drop a folder of photos here, or File ▸ Open folder…")
        self.folder_label.setObjectName("folderLabel")
        bar.addWidget(self.folder_label, 1)
        self.subfolders_action = QAction("Include subfolders", self)
        self.subfolders_action.setCheckable(True)
        self.subfolders_action.setChecked(self.settings.include_subfolders)
        self.subfolders_action.setToolTip(
            "Also show the photos in the folder's subfolders (a card's DCIM/100CANON, a shoot's "
            "day1, day2…); Mend's own output folders are left out")
        self.subfolders_action.toggled.connect(self.set_include_subfolders)
        subfolders_btn = QToolButton()
        subfolders_btn.setObjectName("subfoldersButton")
        subfolders_btn.setDefaultAction(self.subfolders_action)
        bar.addWidget(subfolders_btn)
        self._listing_timer = QTimer(self)  # "Reading… N photos so far" while a tree is walked
        self._listing_timer.setInterval(250)
        self._listing_timer.timeout.connect(self._show_listing_progress)
        bar.addWidget(QLabel("Show"))
        self.filter = QComboBox()
        self.filter.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.filter.setMinimumContentsLength(7)
        self.filter.addItem("All photos", None)
        for d in Degradation:
            self.filter.addItem(f"{d.value} · {d.short_name}", {d.value})
        self.filter.addItem("Not diagnosed", {"?"})
        self.filter.currentIndexChanged.connect(
            weak_slot(self, lambda w, _i: w.set_class_filter(w.filter.currentData())))
        bar.addWidget(self.filter)
        self.diagnose_all_btn = QPushButton("Diagnose all")
        self.diagnose_all_btn.clicked.connect(self.diagnose_all)
        bar.addWidget(self.diagnose_all_btn)
        self.fix_btn = QPushButton("Fix selected")
        self.fix_btn.setObjectName("primary")
        self.fix_btn.clicked.connect(self.fix_selected)
        bar.addWidget(self.fix_btn)
        lay.addLayout(bar)
        self.grid = ThumbnailGrid()
        self.grid.setModel(self.proxy)
        self.grid.current_path.connect(self._on_current)
        self.grid.selectionModel().selectionChanged.connect(
            weak_slot(self, lambda w, *_: w._on_selection_changed()))
        self.grid.activated_path.connect(self.show_viewer)
        self.grid.folder_dropped.connect(self.open_folder)
        self.grid.menu_requested.connect(
            weak_slot(self, lambda w, _path, pos: w._show_grid_menu(pos)))
        self.grid.set_placeholder("Drop a folder of photos here, or File ▸ Open folder…")
        lay.addWidget(self.grid, 1)
        self.model.rowsInserted.connect(weak_slot(self, lambda w, *_: w._update_count()))
        self.model.modelReset.connect(self._update_count)

    def _build_editor(self) -> None:
        self.editor_page = QWidget()
        lay = QVBoxLayout(self.editor_page)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        self.canvas = MaskCanvas()
        self.view_bar = QToolBar("View")
        back = self.view_bar.addAction("◀ Photos")
        back.setToolTip("Back to the thumbnails (Esc)")
        back.triggered.connect(self.show_browser)
        self.view_bar.addSeparator()
        self.view_bar.addAction("Fit").triggered.connect(weak_slot(self, lambda w: w.canvas.fit()))
        self.view_bar.addAction("100 %").triggered.connect(
            weak_slot(self, lambda w: w.canvas.actual_size()))
        self.compare = QComboBox()
        for text, mode in (("After", Compare.AFTER), ("Before", Compare.BEFORE),
                           ("Split", Compare.SPLIT), ("Side by side", Compare.SIDE)):
            self.compare.addItem(text, mode.value)
        self.compare.currentIndexChanged.connect(
            weak_slot(self, lambda w, _i: w.canvas.set_mode(w.compare_mode())))
        self.view_bar.addWidget(self.compare)
        self.toggle_mask = self.view_bar.addAction("Mask")
        self.toggle_removed = self.view_bar.addAction("Removed layer")
        self.toggle_boxes = self.view_bar.addAction("Text/face boxes")
        for a, attr in ((self.toggle_mask, "show_mask"), (self.toggle_removed, "show_removed"),
                        (self.toggle_boxes, "show_boxes")):
            a.setCheckable(True)
            a.toggled.connect(
                weak_slot(self, lambda w, on, attr=attr: w._set_canvas_flag(attr, on)))
        self.toggle_mask.setChecked(True)
        self.toggle_boxes.setChecked(True)
        self.view_bar.addSeparator()
        self.mask_action = self.view_bar.addAction("Edit mask")
        self.mask_action.setCheckable(True)
        self.mask_action.toggled.connect(weak_slot(
            self, lambda w, on: w.show_mask_editor() if on else w.leave_mask_editor()))
        self.view_bar.addSeparator()
        self.preview_action = QAction("Preview fix here", self)
        self.preview_action.setShortcut(QKeySequence("P"))
        self.preview_action.setToolTip(
            "Run the photo's fix on the part in view (at most 1024 × 1024 px at the centre) and "
            "show it over the photo in the after pane; nothing is saved (P)")
        self.preview_action.triggered.connect(self.preview_here)
        self.view_bar.addAction(self.preview_action)
        self.discard_preview_action = QAction("Discard preview", self)
        self.discard_preview_action.setEnabled(False)
        self.discard_preview_action.triggered.connect(
            weak_slot(self, lambda w: w._discard_preview(None)))
        self.export_action = self.view_bar.addAction("Export…")
        self.export_action.triggered.connect(weak_slot(self, lambda w: w.export_current()))
        lay.addWidget(self.view_bar)

        self.mask_bar = self._build_mask_bar()
        lay.addWidget(self.mask_bar)
        lay.addWidget(self.mask_bar2)
        self.mask_bar2.setVisible(False)
        self.canvas.sam_clicked.connect(self._sam_click)
        lay.addWidget(self.canvas, 1)
        self.mask_doc: MaskDocument | None = None
        self.mask_bar.setVisible(False)
        for bar in (self.view_bar, self.mask_bar, self.mask_bar2):
            show_overflow_button(bar)  # (a narrow window: the tools that do not fit are there)

    def _build_mask_bar(self) -> QToolBar:
        bar = QToolBar("Mask")
        first = bar
        group = QActionGroup(bar)
        self.tool_actions: dict[str, QAction] = {}
        for tool, text, key, tip in (
                ("pan", "Pan", "H", "Pan and zoom (H)"),
                ("brush", "Brush", "B", "Paint the reflection mask (B); Shift erases"),
                ("erase", "Eraser", "E", "Erase from the mask (E)"),
                ("lasso", "Lasso", "L", ("Drag to fill a shape, or click points and "
                                         "double-click (L); Shift subtracts")),
                ("sam", "Click-select", "S", "Click an object to select it with SAM (S)")):
            a = bar.addAction(text)
            a.setCheckable(True)
            a.setToolTip(tip)
            a.setShortcut(QKeySequence(key))
            a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            a.triggered.connect(weak_slot(self, lambda w, _c=False, t=tool: w.set_tool(t)))
            group.addAction(a)
            self.tool_actions[tool] = a
        self.tool_actions["pan"].setChecked(True)
        bar.addSeparator()
        bar.addWidget(QLabel(" Size "))
        self.size_slider = QSlider(Qt.Orientation.Horizontal)
        self.size_slider.setRange(1, 500)
        self.size_slider.setValue(int(self.canvas.brush_radius) if hasattr(self, "canvas")
                                  else 24)
        self.size_slider.setFixedWidth(110)
        self.size_slider.valueChanged.connect(
            weak_slot(self, lambda w, v: w.canvas.set_brush(radius=v)))
        bar.addWidget(self.size_slider)
        bar.addWidget(QLabel(" Hardness "))
        self.hard_slider = QSlider(Qt.Orientation.Horizontal)
        self.hard_slider.setRange(0, 100)
        self.hard_slider.setValue(70)
        self.hard_slider.setFixedWidth(80)
        self.hard_slider.valueChanged.connect(
            weak_slot(self, lambda w, v: w.canvas.set_brush(hardness=v / 100)))
        bar.addWidget(self.hard_slider)
        bar.addSeparator()
        self.undo_action = bar.addAction("Undo")
        self.undo_action.setShortcut(QKeySequence.StandardKey.Undo)
        self.undo_action.triggered.connect(
            weak_slot(self, lambda w: w.mask_doc and w.mask_doc.undo.undo()))
        self.redo_action = bar.addAction("Redo")
        self.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.redo_action.triggered.connect(
            weak_slot(self, lambda w: w.mask_doc and w.mask_doc.undo.redo()))
        bar2 = QToolBar("Mask 2")
        self.mask_bar2 = bar2
        bar = bar2
        self.morph_px = QSpinBox()
        self.morph_px.setRange(1, 200)
        self.morph_px.setValue(4)
        self.morph_px.setSuffix(" px")
        bar.addWidget(self.morph_px)
        for text, fn in (("Grow", lambda w: w.mask_doc and w.mask_doc.grow(
                              w.morph_px.value())),
                         ("Shrink", lambda w: w.mask_doc and w.mask_doc.shrink(
                             w.morph_px.value())),
                         ("Feather", lambda w: w.mask_doc and w.mask_doc.feather(
                             w.morph_px.value())),
                         ("Invert", lambda w: w.mask_doc and w.mask_doc.invert()),
                         ("Clear", lambda w: w.mask_doc and w.mask_doc.clear())):
            bar.addAction(text).triggered.connect(weak_slot(self, fn))
        bar.addSeparator()
        bar.addAction("Colour…").triggered.connect(self._pick_mask_colour)
        bar.addWidget(QLabel(" Opacity "))
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(50)
        self.opacity_slider.setFixedWidth(70)
        self.opacity_slider.valueChanged.connect(
            weak_slot(self, lambda w, v: w.mask_doc and w.mask_doc.set_style(opacity=v / 100)))
        bar.addWidget(self.opacity_slider)
        bar.addSeparator()
        bar.addAction("Save mask…").triggered.connect(self._save_mask_dialog)
        bar.addAction("Load mask…").triggered.connect(self._load_mask_dialog)
        self.delete_mask_action = bar.addAction("Delete mask…")
        self.delete_mask_action.setToolTip(
            "Delete the reflection mask you made for this photo (the saved one and edits not "
            "saved): Mend's diagnosis decides its class again")
        self.delete_mask_action.triggered.connect(self._delete_mask_dialog)
        self.inpaint_action = bar.addAction("Inpaint again")
        self.inpaint_action.setToolTip("Re-run the reflection chain with this mask")
        self.inpaint_action.triggered.connect(self.inpaint_again)
        return first

    def _build_menus(self) -> None:
        mb = self.menuBar()
        fm = mb.addMenu("&File")
        a = fm.addAction("&Open folder…")
        a.setShortcut(QKeySequence.StandardKey.Open)
        a.triggered.connect(self._open_dialog)
        self.recent_menu = fm.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        fm.addSeparator()
        fm.addAction("&Export result…").triggered.connect(
            weak_slot(self, lambda w: w.export_current()))
        fm.addSeparator()
        q = fm.addAction("&Quit")
        q.setShortcut(QKeySequence.StandardKey.Quit)
        q.triggered.connect(self.close)
        pm = mb.addMenu("&Photo")
        pm.addAction("&Diagnose all").triggered.connect(self.diagnose_all)
        fx = pm.addAction("&Fix selected")
        fx.setShortcut(QKeySequence("Ctrl+R"))
        fx.triggered.connect(self.fix_selected)
        pm.addAction(self.preview_action)
        pm.addAction(self.discard_preview_action)
        self.cancel_all_action = pm.addAction("Cancel all jobs")
        self.cancel_all_action.triggered.connect(self.cancel_all)
        pm.addSeparator()
        # "Delete mask…" of the mask editor, also where the photo is picked (the browser):
        # here and in the thumbnails' context menu, for the current photo when it has a mask
        # of the photographer's
        self.photo_delete_mask_action = pm.addAction("Delete &mask…")
        self.photo_delete_mask_action.setToolTip(self.delete_mask_action.toolTip())
        self.photo_delete_mask_action.triggered.connect(self._delete_mask_dialog)
        pm.aboutToShow.connect(self._update_mask_actions)
        self.photo_menu = pm
        # the thumbnails' context menu: the photo right-clicked (made the current one)
        self.grid_menu = QMenu(self)
        self.grid_menu.addAction("View").triggered.connect(
            weak_slot(self, lambda w: w.show_viewer()))
        self.grid_menu.addAction("Edit mask").triggered.connect(self.show_mask_editor)
        self.grid_menu.addAction(fx)
        self.grid_menu.addSeparator()
        self.grid_menu.addAction(self.photo_delete_mask_action)
        self._update_mask_actions()
        vm = mb.addMenu("&View")
        self.space_action = vm.addAction("Toggle before/after")
        self.space_action.setShortcut(QKeySequence(Qt.Key.Key_Space))
        self.space_action.triggered.connect(self.toggle_before_after)
        nxt = vm.addAction("Next photo")
        nxt.setShortcut(QKeySequence(Qt.Key.Key_Right))
        nxt.triggered.connect(weak_slot(self, lambda w: w.step_photo(1)))
        prv = vm.addAction("Previous photo")
        prv.setShortcut(QKeySequence(Qt.Key.Key_Left))
        prv.triggered.connect(weak_slot(self, lambda w: w.step_photo(-1)))
        # zoom and pan from the keyboard (the toolbar's Fit and 100 %, the wheel and a drag
        # need the mouse): so a keyboard-only "Preview fix here" can choose its part
        vm.addSeparator()
        zoom_keys = [
            ("Zoom in", ("Ctrl++", "Ctrl+="), lambda w: w.canvas.zoom_by(1.25)),
            ("Zoom out", ("Ctrl+-",), lambda w: w.canvas.zoom_by(0.8)),
            ("Fit", ("Ctrl+0",), lambda w: w.canvas.fit()),
            ("100 %", ("Ctrl+1",), lambda w: w.canvas.actual_size()),
            ("Pan left", ("Shift+Left",), lambda w: w.canvas.pan_by(-0.25, 0)),
            ("Pan right", ("Shift+Right",), lambda w: w.canvas.pan_by(0.25, 0)),
            ("Pan up", ("Shift+Up",), lambda w: w.canvas.pan_by(0, -0.25)),
            ("Pan down", ("Shift+Down",), lambda w: w.canvas.pan_by(0, 0.25)),
        ]
        self.zoom_actions: dict[str, QAction] = {}
        for text, keys, fn in zoom_keys:
            a = vm.addAction(text)
            a.setShortcuts([QKeySequence(k) for k in keys])
            a.triggered.connect(weak_slot(self, fn))
            self.zoom_actions[text] = a
        self._viewer_only = [self.space_action, nxt, prv, self.preview_action,
                             *self.zoom_actions.values()]
        bigger = vm.addAction("Bigger brush")
        bigger.setShortcut(QKeySequence("]"))
        bigger.triggered.connect(weak_slot(self, lambda w: w.size_slider.setValue(
            int(w.size_slider.value() * 1.25) + 1)))
        smaller = vm.addAction("Smaller brush")
        smaller.setShortcut(QKeySequence("["))
        smaller.triggered.connect(weak_slot(self, lambda w: w.size_slider.setValue(
            max(1, int(w.size_slider.value() / 1.25)))))
        back = vm.addAction("Back to photos")
        back.setShortcut(QKeySequence(Qt.Key.Key_Escape))
        back.triggered.connect(self.show_browser)
        vm.addSeparator()
        self.reload_action = vm.addAction("Reload folder")
        self.reload_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Refresh))
        self.reload_action.setToolTip("List the folder again: photos added, renamed or removed "
                                      "since it was opened (what was done to them is kept)")
        self.reload_action.triggered.connect(self.reload_folder)
        vm.addAction(self.subfolders_action)
        vm.addSeparator()
        vm.addAction(self.diag_dock.toggleViewAction())
        vm.addAction(self.queue_dock.toggleViewAction())
        tm = mb.addMenu("&Tools")
        tm.addAction("&Models…").triggered.connect(weak_slot(self, lambda w: w.show_models()))
        tm.addAction("&Settings…").triggered.connect(self.show_settings)
        hm = mb.addMenu("&Help")
        hm.addAction("&About Mend").triggered.connect(self.show_about)

    # -- folders --------------------------------------------------------------------------
    def _open_dialog(self) -> None:
        start = recent_folders(self.qs)[0] if recent_folders(self.qs) else str(Path.home())
        d = QFileDialog.getExistingDirectory(self, "Open a folder of photos", start)
        if d:
            self.open_folder(Path(d))

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for f in recent_folders(self.qs):
            self.recent_menu.addAction(f).triggered.connect(
                weak_slot(self, lambda w, _c=False, f=f: w.open_folder(Path(f))))
        if self.recent_menu.isEmpty():
            self.recent_menu.addAction("(none)").setEnabled(False)

    def open_folder(self, folder: Path) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            self.set_status(f"Not a folder: {folder}")
            return
        # what was said of the old folder and its photos (a photo too large, a mask edit under
        # way, a fix queued) is not about this one
        self._drop_status(photos=True, folders=True)
        saved = self._save_unsaved_masks()  # (before the documents go)
        self._save_edited_plans()
        self.leave_mask_editor()
        self.show_browser()
        self._set_canvas_doc(None)
        docs = {id(d): d for d in [self.mask_doc, *(st.mask_doc for st in self.states.values())]
                if d is not None}
        self.mask_doc, self._mask_doc_path = None, None
        for d in docs.values():  # the old folder's mask documents
            d.deleteLater()
        self._discard_preview(None)  # (nobody will look at the old folder's previews)
        self._cancel_proposals()
        self.states.clear()
        for p, mask in saved.items():  # the same folder again: its masks are on their way
            if folder in p.parents:
                self._state(p).mask_path = mask
        self.current = None
        self._update_mask_actions()
        self.proxy.set_keep(None)
        self._view = None
        self.canvas.set_images(None, None)
        self.panel.set_photo_name(None)
        self.panel.set_diagnosis(None)
        self.panel.set_plan(None)
        self.sidecars = SidecarStore(folder, data_dir(), beside_photos=self._sidecars_beside)
        add_recent_folder(folder, self.qs)
        self.setWindowTitle(f"Mend — {folder.name}")
        self._list_folder(folder)
        if saved:
            self.set_status(f"Saved the mask edits of {len(saved)} photo(s) beside them: they "
                            "come back when their folder is opened again")

    def reload_folder(self) -> None:
        """List the open folder again (photos copied in, renamed or deleted meanwhile), staying
        on the current photo with the photos selected that are still there; diagnoses,
        results, chosen classes and mask edits are kept."""
        if self.model.folder is not None:
            self._list_folder(self.model.folder, keep=self.current,
                              selected=self.grid.selected_paths())

    def set_include_subfolders(self, on: bool) -> None:
        """The "Include subfolders" toggle: remembered, and the open folder is listed again
        (what was done to its photos is kept: this is the same folder)."""
        on = bool(on)
        if self.subfolders_action.isChecked() != on:
            self.subfolders_action.setChecked(on)  # re-enters via the toggled signal
            return
        if self.settings.include_subfolders != on:
            self.settings = replace(self.settings, include_subfolders=on)
            self.qs.set({"settings/include_subfolders": on})
        if self.model.folder is not None and on != self._listed_tree:
            self._list_folder(self.model.folder, keep=self.current,
                              selected=self.grid.selected_paths())

    def _list_folder(self, folder: Path, keep: Path | None = None,
                     selected: list[Path] | None = None) -> None:
        """List ``folder`` (with its subfolders when the toggle is on) off the GUI thread; a
        listing that arrives after another folder was opened (or the toggle flipped) is dropped.
        ``keep``: the photo to stay on when it is listed again (a re-listing of the same folder),
        ``selected``: the photos to select again then (those still listed)."""
        # the same folder listed again: each photo's file as it was listed before (size, date)
        listed_before = ({it.path: (it.size, it.mtime_ns) for it in self.model.items()}
                         if self.model.folder == folder else {})
        # the listing runs off the GUI thread (a folder on a network drive answers slowly);
        # the grid is empty and says so until it arrives
        self.model.set_folder(folder, [])  # (drops the old listing's queued thumbnails)
        self._drop_status(folders=True)  # ("No photos in…": listed again now)
        self.folder_bg.forget_pending()  # and its header reads' callbacks: all about that folder
        if self._tree_scan is not None:
            self._tree_scan.stopped = True  # the walk of the previous listing ends at once
        self.folder_loading = True
        self.folder_label.setText(str(folder))
        self.grid.set_placeholder(f"Reading {folder.name}…")
        gen = self.loader.generation
        recursive = self.settings.include_subfolders
        self._listed_tree = recursive
        if recursive:
            scan = self._tree_scan = TreeScan()
            excl, beside = self.settings.excluded_folders()  # (the results' folders)
            self._listing_timer.start()

            def work() -> list:
                return scan_tree(folder, exclude=excl, scan=scan, exclude_beside=beside)
        else:
            scan = self._tree_scan = None

            def work() -> list:
                return scan_folder(folder)

        def listed(items: list) -> None:
            if gen != self.loader.generation:  # another folder was opened meanwhile
                return
            self._end_listing()
            for it in items:
                was = listed_before.get(it.path)
                if was is not None and was != (it.size, it.mtime_ns):
                    self._forget_replaced(it.path)
            self.model.set_folder(folder, items)
            self._show_known_states()
            self._restore_sidecars(folder)
            self._mark_mend_outputs(folder, items)
            cur = keep
            if keep is not None and self.model.item(keep) is None:
                # (turned off while on a subfolder's photo: it is not listed now)
                cur = None
                self.show_browser()
                self._on_current(None)
                self.panel.set_diagnosis(None)
                self.panel.set_plan(None)
            if selected:  # (F5 after Ctrl+A: "Fix selected" still fixes them all)
                self.grid.select_paths(selected, cur)
                if cur is not None and self.grid.currentIndex().data(PathRole) != cur:
                    self._on_current(cur)  # (hidden by the class filter: still the one shown)
            elif cur is not None:
                self.select_path(cur)
            if self.model.total() == 0:
                self._explain_empty(folder)
            else:
                self.grid.set_placeholder("No photo matches this filter")
                if scan is not None and not scan.complete:
                    self.set_status(
                        f"{folder.name} holds too many photos to list them all with its "
                        f"subfolders: the first {scan.photos} are shown (open a subfolder for "
                        "the others)", folder=folder)

        def failed(message: str) -> None:
            if gen == self.loader.generation:
                self._end_listing()
                self.grid.set_placeholder(f"Could not read {folder.name}: {message}")
                self.set_status(f"Could not read {folder}: {message}", folder=folder)

        self.bg.run(work, listed, failed)

    def _forget_replaced(self, path: Path) -> None:
        """``path``'s file changed since it was listed (re-imported under its name, edited in
        another program): it is another picture. What was known of the one before - its
        diagnosis, plan, class chosen, results, mask and preview - goes, as its sidecar drops
        it (``SidecarStore.load``); the sidecar is read again with the listing."""
        self._fix_ends.pop(Path(path), None)  # (a fix of the picture before failed)
        st = self.states.pop(Path(path), None)
        if st is None:
            return
        self._discard_preview(path)
        doc = st.mask_doc  # (the editor's, if open on it, goes when the new picture shows)
        if doc is not None and doc is not self.mask_doc and doc is not self.canvas.doc:
            _delete_when_idle(doc)

    def _end_listing(self) -> None:
        self.folder_loading = False
        self._tree_scan = None
        self._listing_timer.stop()

    def _show_listing_progress(self) -> None:
        scan, folder = self._tree_scan, self.model.folder
        if scan is None or folder is None or not self.folder_loading:
            self._listing_timer.stop()
            return
        if scan.folders > 1:
            self.grid.set_placeholder(f"Reading {folder.name} and its subfolders… "
                                      f"{scan.photos} photos in {scan.folders} folders so far")

    def _show_known_states(self) -> None:
        """What this window knows of the listed photos (results, diagnoses, jobs under way) on
        their cells: a re-listing of the same folder builds fresh items."""
        for p, st in self.states.items():
            if self.model.item(p) is not None and (st.diagnosis or st.output):
                self.model.update_item(p, diagnosis=st.diagnosis, output=st.output,
                                       job_state=JobState.DONE if st.output else None,
                                       kept=_kept_original(st))
        for p, (state, error) in self._fix_states().items():
            if self.model.item(p) is not None:
                self.model.update_item(p, job_state=state, error=error)

    def _fix_states(self) -> dict[Path, tuple[JobState, str]]:
        """The state of each photo's latest fix this window knows of, with its error: one
        queued or running, else how the latest one ended when it did not finish
        (``_fix_ends``). A photo left out has none (a result recorded says "done")."""
        states = dict(self._fix_ends)
        for jid, p in sorted(self._job_path.items()):
            info = self.client.job(jid)
            if info is not None and info.kind is JobKind.RUN and not info.state.finished:
                states[p] = (info.state, "")
        return states

    def _mark_mend_outputs(self, folder: Path, items: list) -> None:
        """Badge the files Mend wrote itself (results, masks: their record says so), read from
        the files' headers off the GUI thread; stops when another folder is opened."""
        from engine.imageio import mend_output_kind

        gen = self.loader.generation
        loader = self.loader

        def scan() -> list[tuple[Path, str]]:
            found = []
            for it in items:
                if loader.generation != gen:
                    break
                kind = mend_output_kind(it.path)
                if kind:
                    found.append((it.path, kind))
            return found

        def done(found: list[tuple[Path, str]]) -> None:
            if gen == self.loader.generation:
                for path, kind in found:
                    self.model.update_item(path, mend_kind=kind)

        self.folder_bg.run(scan, done, lambda _m: None)

    def _explain_empty(self, folder: Path) -> None:
        """A folder without photos says so, in the grid and the status bar, and whether its
        subfolders hold some, then offers the "Include subfolders" toggle (counted off the GUI
        thread the way that listing would walk: a deep tree on a network drive takes a while)."""
        if self._listed_tree:
            text = f"No photos in {folder.name} or its subfolders"
            self.set_status(text, folder=folder)
            self.grid.set_placeholder(text)
            return
        self.set_status(f"No photos in {folder.name}", folder=folder)
        self.grid.set_placeholder(f"No photos in {folder.name}")
        gen = self.loader.generation
        excl, beside = self.settings.excluded_folders()  # (the results' folders)

        def count() -> tuple[int, bool]:
            scan = TreeScan()
            n = len(scan_tree(folder, exclude=excl, scan=scan, max_photos=1000,
                              max_folders=5000, exclude_beside=beside))
            return n, scan.complete

        def done(counted: tuple[int, bool]) -> None:
            n, complete = counted
            if gen == self.loader.generation and n and not self._listed_tree:
                more = "" if complete else "+"
                text = (f"No photos in {folder.name} itself — its subfolders hold "
                        f"{n}{more}: turn on “Include subfolders” to see them")
                self.set_status(text, folder=folder)
                self.grid.set_placeholder(text)

        self.bg.run(count, done, lambda _m: None)

    def _restore_sidecars(self, folder: Path) -> None:
        """Read every photo's sidecar off the GUI thread, from the store of the photo's own
        folder (a subfolder's photos have theirs in that subfolder); stale if the folder changed
        since. What this window already knows of a photo (newer than its sidecar, whose write
        may still be queued) is kept."""
        paths = [it.path for it in self.model.items()]
        gen = self.loader.generation
        # (a "Delete mask" made while they are read: the sidecar read may be older than it)
        deleted_before = dict(self._mask_deleted_at)
        stores = dict(self._other_stores)
        if self.sidecars is not None:
            stores[self.sidecars.folder] = self.sidecars
        root, beside = data_dir(), self._sidecars_beside

        def read() -> tuple[list[tuple[Path, Sidecar, bool, list[str], bool]],
                            dict[Path, SidecarStore]]:
            out = []
            made: dict[Path, SidecarStore] = {}  # (a store checks its folder on the disk)
            for p in paths:
                store = stores.get(p.parent) or made.get(p.parent)
                if store is None:
                    store = made[p.parent] = SidecarStore(p.parent, root, beside_photos=beside)
                sc = store.load(p)
                if sc is not None:
                    has_mask = bool(sc.mask) and Path(sc.mask).exists()
                    existing = [o for o in sc.outputs if Path(o).exists()]
                    # (its latest result the original as it was: "unchanged" on the grid)
                    kept = bool(existing) and result_kept_original(p, Path(existing[-1]))
                    out.append((p, sc, has_mask, existing, kept))
            return out, made

        def apply(res: tuple[list[tuple[Path, Sidecar, bool, list[str], bool]],
                             dict[Path, SidecarStore]]) -> None:
            found, made = res
            for f, store in made.items():
                self._other_stores.setdefault(f, store)
            if gen != self.loader.generation:
                return
            restored = 0  # (those this window knew already are kept as they are: not these)
            fixes = self._fix_states()
            for p, sc, has_mask, existing, kept in found:
                known = self.states.get(p)
                if known is not None and known.diagnosis is not None:
                    continue
                restored += 1
                st = self._state(p)
                # (a result this window found and the sidecar read may not know of yet: one
                # of a fix finished as Mend stopped, ``_ask_resume``; its diagnosis is here)
                found_here, found_kept = st.output, st.kept_output
                st.diagnosis, st.plan, st.plan_edited = sc.diagnosis, sc.plan, sc.plan_edited
                st.override = _class_or_none(sc.override)
                # diagnosed, but its plan was still on its way when the folder was left (a
                # class chosen just before): made again when the photo is shown
                st.plan_stale = sc.diagnosis is not None and sc.plan is None
                # (a mask written as the folder was left may not be on disk yet: kept; one
                # deleted since the sidecar was read does not come back)
                deleted = self._mask_deleted_at.get(p) != deleted_before.get(p)
                st.mask_path = (Path(sc.mask) if has_mask and sc.mask and not deleted
                                else st.mask_path)
                st.outputs = sc.outputs
                st.output = Path(existing[-1]) if existing else None
                st.kept_output = st.output if kept else None
                if found_here is not None:
                    st.outputs = [o for o in st.outputs if o != str(found_here)] + [
                        str(found_here)]
                    st.output, st.kept_output = found_here, found_kept
                # (a fix queued, running or failed since - one offered again after a crash -
                # keeps its chip: the sidecar knows of the results only)
                job_state, error = fixes.get(p) or (JobState.DONE if st.output else None, "")
                self.model.update_item(p, diagnosis=sc.diagnosis, job_state=job_state,
                                       error=error, output=st.output,
                                       kept=_kept_original(st))
                if p == self.current:
                    self._show_state(p)
            if restored:
                self.set_status(f"Restored {restored} photo(s) from their sidecars",
                                folder=folder)

        self.bg.run(read, apply)

    def set_class_filter(self, classes: set[str] | None) -> None:
        """Show only the photos of ``classes`` (the "Show" list; None: all). The photos selected
        stay selected where they are still shown: taken off the grid first and selected again
        by ranges (``ThumbnailGrid.select_paths``) - Qt's own update of the selection, row by
        row as the filter took them out, froze the window for 10.5 s after Ctrl+A in 16,000
        photos, half of them diagnosed (quadratic: minutes for 100,000)."""
        sm = self.grid.selectionModel()
        if not sm.hasSelection():
            self.proxy.set_classes(classes)
            return
        selected = self.grid.selected_paths()
        sm.clearSelection()
        self.proxy.set_classes(classes)
        self.grid.select_paths(selected, self.current)

    def _update_count(self) -> None:
        if self.model.folder is not None:
            where = " with its subfolders" if self._listed_tree else ""
            self.folder_label.setText(
                f"{self.model.folder}  ·  {self.model.total()} photos{where}")

    def display_name(self, path: Path) -> str:
        """The photo's name as the grid shows it: with its subfolder ("100CANON/IMG_0001.JPG")
        when it lies below the opened folder."""
        item = self.model.item(path)
        return item.display_name if item is not None else Path(path).name

    # -- selection / viewer ---------------------------------------------------------------
    def _state(self, path: Path) -> PhotoState:
        return self.states.setdefault(Path(path), PhotoState())

    def _on_selection_changed(self) -> None:
        sm = self.grid.selectionModel()
        # (counted from the ranges: a list of every selected index, after Ctrl+A in a folder of
        # 100,000 photos, took 0.4 s on each selection change)
        n = sum(r.height() for r in sm.selection())
        cur = self.grid.currentIndex()
        if n and not cur.isValid():
            # (Ctrl+A with no photo picked yet - a folder just opened: the panel said "No photo
            # selected" beside every photo selected, its Fix disabled) the first one selected
            # is the one shown, as a click on it would make it; this is called again then
            first = min((r.topLeft() for r in sm.selection()), key=lambda ix: ix.row())
            sm.setCurrentIndex(first, QItemSelectionModel.SelectionFlag.NoUpdate)
            return
        # (the photo shown is among them: as _override_targets decides)
        self.panel.set_selected_count(n if n > 1 and cur.isValid() and sm.isSelected(cur)
                                      and cur.data(PathRole) == self.current else 0)

    def _on_current(self, path: Path | None) -> None:
        if self._status_owner.photo is not None and self._status_owner.photo != path:
            self.set_status("")  # (it was about the photo shown before)
        self.current = path
        self._cancel_proposals(keep=path)  # (the editor's document of another photo)
        if path is not None:
            self.end_status(_PICK_A_PHOTO)
        self.proxy.set_keep(path)
        self.panel.set_photo_name(self.display_name(path) if path else None)
        self._on_selection_changed()
        if path is not None:
            self._show_state(path)
            if self.stack.currentIndex() == 1:
                self.load_view(path)
        else:
            self._update_mask_actions()

    def _show_state(self, path: Path) -> None:
        st = self._state(path)
        self._update_mask_actions()
        self.panel.set_record(st.record)
        if not st.record_read:
            self._read_record(path)
        if st.size is None and not st.size_read:
            self._read_size(path)
        if st.plan_stale and st.diagnosis is not None and st.plan_job is None:
            self._replan(path)
        self._follow_mask(path)  # (a mask recorded in the sidecar, with an older plan)
        self.panel.set_diagnosis(st.diagnosis)
        self.panel.show_override(st.override)
        self.panel.set_plan(st.plan, st.plan_note, why=self._plan_why(path))
        self.panel.set_status(self._result_text(st))
        self._check_output(path)

    def _result_text(self, st: PhotoState) -> str:
        """What the panel says of the photo's result: where it is, or that it is gone."""
        if st.output is not None and st.output_gone == st.output:
            return (f"The result is no longer on the disk ({st.output}): it was deleted or "
                    "moved outside Mend; fix the photo again to make it again")
        msg = ""
        if st.output:
            kept = _kept_original(st)
            msg = f"Result{' (the original, unchanged)' if kept else ''}: {st.output}"
        if st.result and st.result.warnings:
            msg += "\n" + "\n".join(st.result.warnings)
        return msg

    def _check_output(self, path: Path) -> None:
        """Ask (in the pool: the disk may sleep, or be a network's) whether ``path``'s result
        is still on the disk, each time the photo is shown (F5 shows it again); the panel says
        so when it was deleted or moved outside Mend, as Export does (``_output_found``)."""
        st = self.states.get(Path(path))
        output = st.output if st is not None else None
        if output is None:
            return
        self.bg.run(output.exists,
                    weak_slot(self, lambda w, there: w._output_found(path, output, there)),
                    lambda _m: None)

    def _output_found(self, path: Path, output: Path, there: bool) -> None:
        """``path``'s result ``output`` is (``there``) or is not on the disk: the panel says
        so while the photo is shown and that result is still its latest."""
        st = self.states.get(Path(path))
        if st is None or st.output != output:
            return
        gone = None if there else output
        if st.output_gone != gone:
            st.output_gone = gone
            if self.current == path:
                self.panel.set_status(self._result_text(st))

    def _read_record(self, path: Path) -> None:
        """Whether the file is a result Mend wrote, and what was done (its header, off the GUI
        thread); shown in the panel while the photo is still the current one."""
        from engine.imageio import read_record

        st = self._state(path)
        st.record_read = True

        def done(record: dict | None) -> None:
            st.record = record
            if self.current == path:
                self.panel.set_record(record)

        self.bg.run(lambda: read_record(path, header_only=True), done, lambda _m: None)

    def _read_size(self, path: Path) -> None:
        """The photo's size, for its plan's estimate, when no diagnosis made here brought it
        (one restored from its sidecar, a photo fixed without one): read from the file's
        header off the GUI thread; the estimate is shown again while the photo is current."""
        from engine.imageio import image_size

        st = self._state(path)
        st.size_read = True

        def done(size: tuple[int, int]) -> None:
            st.size = st.size or tuple(size)
            if self.current == path:
                self.panel.refresh_estimate()

        self.bg.run(lambda: image_size(path), done, lambda _m: None)

    def select_path(self, path: Path) -> None:
        row = self.model.row_of(path)
        while row is None and self.model.canFetchMore():
            self.model.fetchMore()
            row = self.model.row_of(path)
        if row is None:
            return
        ix = self.proxy.mapFromSource(self.model.index(row))
        if ix.isValid():
            self.grid.setCurrentIndex(ix)
        else:
            self._on_current(Path(path))

    def show_browser(self) -> None:
        if self.mask_action.isChecked():
            self.mask_action.setChecked(False)
        self.stack.setCurrentIndex(0)
        for a in self._viewer_only if hasattr(self, "_viewer_only") else []:
            a.setEnabled(False)
        self.grid.setFocus()

    def show_viewer(self, path: Path | None = None) -> None:
        path = Path(path) if path else self.current
        if path is None:
            return
        if path != self.current:
            self.select_path(path)
        self.current = path
        self.stack.setCurrentIndex(1)
        for a in self._viewer_only:
            a.setEnabled(True)
        self.load_view(path)
        self.canvas.setFocus()

    def load_view(self, path: Path) -> None:
        """Decode the photo (and its result) in the pool; the canvas updates when ready."""
        if self._closing:
            # (a fix of the photo shown ending while the window closes: its full-size decode
            # for nobody held the quit, which waits for the pool: 2-3 s for 24 MP)
            return
        st = self._state(path)
        self._view_token += 1
        token = self._view_token
        latest = self._view_latest
        latest[0] = token
        self.canvas.message = f"Loading {path.name}…"
        output = st.output
        if self._view is None or self._view.path != Path(path):
            self._show_preview(path)

        def stale() -> bool:  # (in the pool)
            return latest[0] != token

        def done(v: ViewImages | None) -> None:
            if v is None or token != self._view_token:
                return  # another photo was picked meanwhile
            self._view = v
            self.canvas.set_images(v.before, v.after, v.before_proxy, v.after_proxy)
            self.canvas.removed = v.removed
            self._show_region_preview()  # (this photo's preview, if it has one)
            arts = st.result.artifacts if st.result else {}
            self.canvas.set_boxes(arts.get("text_boxes") or (), arts.get("face_boxes") or (),
                                  arts.get("text_quads"))
            if v.after is not None and self.compare_mode() is Compare.AFTER:
                self.set_compare(Compare.SPLIT)
            if self.mask_action.isChecked():
                self._open_mask_doc()
                if self._tool_wanted is not None and self.mask_doc is not None:
                    self.set_tool(self._tool_wanted)  # (picked while the photo decoded)
            else:
                self._show_result_mask()
            self.view_loaded.emit(path)

        def fail(msg: str) -> None:
            if token == self._view_token:
                # nothing of the photo shown before stays: its mask (the editor's document,
                # still on the canvas) took the brush, undo, clear... on an empty canvas, and
                # a mask of its size was made for this photo and saved as this one's
                self._view = None
                prev, prev_path = self.mask_doc, self._mask_doc_path
                self.mask_doc, self._mask_doc_path = None, None
                self._set_canvas_doc(None)
                self._release_unedited(prev, prev_path)
                self.canvas.set_boxes()
                self.canvas.set_images(None, None)
                self.canvas.message = msg
                self.canvas.update()
                self.set_status(msg, photo=path)

        mask_path = st.mask_path or (st.result.artifacts.get("mask_path")
                                     if st.result and not st.mask_deleted else None)
        self.bg.run(lambda: build_view(path, output, mask_path, stale), done, fail)

    def _show_preview(self, path: Path) -> bool:
        """The grid's thumbnail of another photo than the one shown, on the canvas while the
        photo decodes (the decode replaces it): no seconds of the previous photo or of
        "Loading…". Not when zoomed in (a thumbnail is a blur there: the previous photo stays
        until the decode, as before) nor in the mask editor (its document is the previous
        photo's until then); no thumbnail yet: as before."""
        if not self.canvas.fit_mode or self.mask_action.isChecked():
            return False
        row = self.model.row_of(Path(path))
        if row is None:
            return False
        pm = self.model.data(self.model.index(row), Qt.ItemDataRole.DecorationRole)
        if not isinstance(pm, QPixmap) or pm.isNull():
            return False
        self._view = None  # the canvas no longer shows it (its mask editor waits for the decode)
        self._set_canvas_doc(None)  # the previous photo's mask and boxes do not fit this one
        self.canvas.set_boxes()
        self.canvas.set_images(pm.toImage())  # a few hundred pixels: a copy, no decode
        return True

    def _show_result_mask(self) -> None:
        """Show the mask the engine used (or the edited one) as a read-only overlay."""
        st = self._state(self.current) if self.current else None
        has = self._view is not None and (self._view.mask is not None or (
            st is not None and (st.mask_doc is not None or (
                st.result is not None and "mask" in st.result.artifacts
                and not st.mask_deleted))))
        if not has:
            self._set_canvas_doc(None)
            return
        self._open_mask_doc(readonly=True)

    def _set_canvas_flag(self, attr: str, on: bool) -> None:
        setattr(self.canvas, attr, on)
        self.canvas.update()

    def toggle_before_after(self) -> None:
        if self.stack.currentIndex() != 1:
            return
        mode = self.compare_mode()
        if mode is not Compare.BEFORE:
            self._last_mode = mode
            self.set_compare(Compare.BEFORE)
        else:
            back = getattr(self, "_last_mode", Compare.SPLIT)
            # (a preview of part of the photo compares as a result does: split twice was
            # split, before, after)
            self.set_compare(back if self.canvas.has_after() else Compare.AFTER)

    def compare_mode(self) -> Compare:
        return Compare(self.compare.currentData())

    def set_compare(self, mode: Compare) -> None:
        self.compare.setCurrentIndex(self.compare.findData(Compare(mode).value))

    def step_photo(self, d: int) -> None:
        ix = self.grid.currentIndex()
        n = self.proxy.rowCount()
        if n == 0:
            return
        row = 0 if not ix.isValid() else max(0, min(n - 1, ix.row() + d))
        if row == n - 1 and self.proxy.canFetchMore(ix.parent()):
            self.proxy.fetchMore(ix.parent())
        self.grid.setCurrentIndex(self.proxy.index(row, 0))

    # -- diagnosis and runs ---------------------------------------------------------------
    def _diagnosis_pending(self) -> set[Path]:
        """The photos with a diagnosis queued or running."""
        pending = set()
        for jid, p in self._job_path.items():
            info = self.client.job(jid)
            if info is not None and info.kind is JobKind.DIAGNOSE and info.state in (
                    JobState.QUEUED, JobState.RUNNING):
                pending.add(p)
        return pending

    def diagnose(self, paths: list[Path]) -> list[int]:
        """Queue a diagnosis of each of ``paths`` that has none queued or running already
        ("Diagnose all" twice diagnosed every photo twice); returns the new jobs' ids."""
        ids = []
        s = self.settings
        pending = self._diagnosis_pending()
        for p in paths:
            if Path(p) in pending:
                continue
            pending.add(Path(p))
            # a class chosen for the photo stays chosen: its plan is built for that class (B
            # for a photo with a reflection mask and no class chosen)
            jid = self.client.diagnose(p, backend=s.backend, profile=s.profile,
                                       label=self.plan_label(p), name=self.display_name(p))
            self._job_path[jid] = Path(p)
            ids.append(jid)
        return ids

    def _diagnose_current(self) -> None:
        if self.current:
            self.diagnose([self.current])

    def diagnose_all(self) -> list[int]:
        return self.diagnose([it.path for it in self.model.items()])

    def selected_paths(self) -> list[Path]:
        paths = self.grid.selected_paths()
        if not paths and self.current:
            paths = [self.current]
        return paths

    def fix_selected(self) -> list[int]:
        """Queue every selected photo (each with its own chosen class and plan); returns the ids
        of the jobs queued now (a photo whose edited mask is written first follows a moment
        later)."""
        paths = self.selected_paths()
        if not paths:  # (a folder just opened: nothing picked yet)
            self.set_status("No photo selected: click a photo (Shift/Ctrl-click for more, "
                            "Ctrl+A for all), then Fix selected", op=_PICK_A_PHOTO)
        return [jid for p in paths if (jid := self.fix(p)) is not None]

    def request_for(self, path: Path, plan: Plan | None = None,
                    label: Degradation | None = None, mask_path: Path | None = None,
                    region: tuple[int, int, int, int] | None = None) -> JobRequest:
        """The engine's request for a fix of ``path`` (``region``: a preview of that part of
        it, written in the user cache for the viewer, never beside the results)."""
        st = self._state(path)
        s = self.settings
        output = s.output_options(Path(path), self.model.folder) if region is None else \
            self._preview_options()
        return JobRequest(
            path=Path(path), output=output,
            label=label,
            plan=plan, profile=s.profile, device=s.device, backend=s.backend,
            mask_path=mask_path or st.mask_path, diagnosis=st.diagnosis, guard=s.guard,
            region=region)

    def _preview_options(self) -> OutputOptions:
        """Where and how the engine writes a preview for the viewer: in the user cache (never
        in a folder of photos or results, whose listings and outputs it must not join) as
        a lossless PNG (what is shown is the chain's work, not a JPEG's), without the photo's
        EXIF, XMP and IPTC (nobody keeps it); the viewer decodes it and deletes it."""
        return OutputOptions(out_dir=cache_dir() / PREVIEWS, format="png", keep_metadata=False,
                             suffix=self.settings.suffix or "_mend")

    def fix(self, path: Path, plan: Plan | None = None, label: Degradation | None = None,
            mask_path: Path | None = None, region: tuple[int, int, int, int] | None = None
            ) -> int | None:
        """Queue a restoration of ``path`` with its chosen class (``label``, else the one chosen
        in the panel) and plan (``plan``, else the photo's, as edited). Returns the job id, or
        None when the photo's edited mask is written first (the job is queued once it is).
        ``region``: a preview of that part of the photo (``preview_here``), the same request
        otherwise; it is not the photo's result (no badge, sidecar or output)."""
        path = Path(path)
        st = self._state(path)
        label = label if label is not None else st.override
        plan = plan if plan is not None else st.plan
        if plan is not None and label is not None and plan.label is not label:
            # the plan of the class shown before the choice (its new plan is still on its way,
            # behind the jobs ahead in the queue): the chosen class is what runs
            plan = None
        if plan is not None and not st.plan_edited and plan == st.plan:
            # the engine's own plan, made when the photo was diagnosed: made again for this
            # run, with the settings of now (the profile chosen since, models installed since).
            # Its class is not sent: the engine tells a class the photographer chose (``label``)
            # from one Mend diagnosed, and with a reflection mask and no class chosen it fixes
            # the photo as B, as ``mend restore --mask`` does (the plan shown is B's then:
            # ``plan_label``)
            plan = None
        doc = self._unsaved_mask(path) if mask_path is None else None
        waiting = self._mask_waiters.get(path)
        if doc is not None or (waiting is not None and mask_path in (None, st.mask_path)):
            # mask edits not on disk yet: the mask as edited is what the run uses, so the job
            # is queued once it is written (never before: the engine would read an older mask)
            if region is None:
                self._fix_ends.pop(path, None)
                self.model.update_item(path, job_state=JobState.QUEUED, error="")

            def submit(dest: Path | None) -> None:  # (None: the mask was deleted)
                self._submit(path, plan, label, dest, region)

            self._fixes_waiting[submit] = run_title(path, region, self.display_name(path))
            if doc is not None:
                self._write_mask(path, doc, submit)
            else:
                waiting.append(submit)
            self._show_waiting()
            return None
        return self._submit(path, plan, label, mask_path, region)

    def cancel_all(self) -> None:
        """Cancel every job, and the fixes still waiting for their edited mask to be written
        (they would be queued once it is, after the cancel; the mask itself is still saved)."""
        for path, waiting in self._mask_waiters.items():
            if waiting:
                waiting.clear()  # (kept: a Fix clicked again meanwhile waits for that write)
                self._fix_ends[path] = (JobState.CANCELLED, "Cancelled.")
                self.model.update_item(path, job_state=JobState.CANCELLED, error="Cancelled.")
        self._show_waiting()
        self.client.cancel_all()

    def _work_to_lose(self) -> int:
        """The fixes and diagnoses queued or running, and the fixes waiting for their mask to
        be written: what quitting stops. (The engine's warm-up and the re-plans after a "Fix
        as" choice, which is kept in the sidecar, are nobody's work to lose.)"""
        jobs = sum(1 for j in self.client.jobs() if not j.state.finished
                   and j.kind in (JobKind.RUN, JobKind.DIAGNOSE))
        return jobs + sum(len(w) for w in self._mask_waiters.values())

    def _submit(self, path: Path, plan: Plan | None, label: Degradation | None,
                mask_path: Path | None, region: tuple[int, int, int, int] | None = None
                ) -> int:
        request = self.request_for(path, plan, label, mask_path, region)
        # (named in the Queue panel as the grid names it: two subfolders of a card hold an
        # IMG_0001.JPG)
        jid = self.client.submit(request, name=self.display_name(path))
        if _reads_mask(request):  # (cancelled when the photographer deletes the mask)
            self._mask_jobs[jid] = Path(path)
        if region is not None:  # a preview: the viewer's, not the photo's (no badge)
            self._preview_jobs[jid] = Path(path)
            return jid
        self._job_path[jid] = Path(path)
        self._fix_ends.pop(Path(path), None)
        self.model.update_item(path, job_state=JobState.QUEUED, error="")
        return jid

    def _run_current(self, plan: Plan | None) -> None:
        if self.current is None:
            return
        st = self._state(self.current)
        st.plan = plan or st.plan
        self.fix(self.current, st.plan, self.panel.override_label())
        self.set_status(f"Queued {self.display_name(self.current)}", photo=self.current)

    def _on_plan_edited(self, plan: Plan) -> None:
        """A step, a parameter or the order changed in the panel: that is the photo's chain now
        ("Fix selected" runs it too, and it is there when the photo is picked again)."""
        if self.current is not None:
            st = self._state(self.current)
            st.plan, st.plan_job, st.plan_note = plan, None, ""
            st.plan_edited, st.plan_stale, st.retry_plan_job = True, False, None
            self._edited_plans.add(self.current)
            self._discard_preview(self.current)  # (it showed another chain)
            self._plan_save_timer.start()  # (a burst of spin-box steps: one sidecar write)

    def _save_edited_plans(self) -> None:
        """Record the plans edited in the panel in their photos' sidecars."""
        self._plan_save_timer.stop()
        paths, self._edited_plans = self._edited_plans, set()
        for p in paths:
            st = self.states.get(p)
            if st is not None and st.plan is not None:
                self._save_sidecar(p, plan=st.plan, plan_edited=st.plan_edited)

    def plan_label(self, path: Path) -> Degradation | None:
        """The class ``path``'s plan is made for, as its fix will run it: the class chosen in
        "Fix as"; else B when the photographer made a reflection mask for it (saved from the
        mask editor: the engine fixes a photo with a mask and no class chosen as B, removing
        what the mask covers); else None, the class diagnosed."""
        st = self.states.get(Path(path))
        if st is None:
            return None
        if st.override is not None:
            return st.override
        return Degradation.B if st.mask_path is not None else None

    def _plan_why(self, path: Path) -> str:
        """Why the plan shown is not of the class diagnosed, when a mask decided it."""
        st = self.states.get(Path(path))
        if (st is None or st.override is not None or st.mask_path is None or st.plan is None
                or st.plan.label is not Degradation.B or st.plan_edited
                or (st.diagnosis is not None and st.diagnosis.label is Degradation.B)):
            return ""
        return ("your reflection mask is removed; choose another class in “Fix as” to fix the "
                "photo without it")

    def _follow_mask(self, path: Path) -> bool:
        """A reflection mask the photographer made, with no class chosen: the photo's plan is
        made again as B's (what its fix runs) unless it is B's already or was edited (an edited
        chain runs as it is). Returns whether it is made again."""
        st = self.states.get(Path(path))
        if (st is not None and not self._closing and st.mask_path is not None
                and st.override is None and not st.plan_edited and st.plan_job is None
                and st.plan is not None
                and st.plan.label is not Degradation.B):
            self._replan(path)
            return True
        return False

    def _override_targets(self, path: Path) -> list[Path]:
        """The photos a "Fix as" choice applies to: every selected photo when the current one
        is among several selected, else the current one."""
        selected = self.grid.selected_paths()
        return selected if len(selected) > 1 and path in selected else [path]

    def _override(self, label: Degradation | None) -> None:
        path = self.current
        if path is None:
            return
        paths = self._override_targets(path)
        for p in paths:
            self._set_override(p, label)
        if len(paths) > 1:
            what = f"{label.value} · {label.short_name}" if label else "automatic (as diagnosed)"
            self.set_status(f"Fix as {what}: {len(paths)} selected photos", photo=path)
        if self.current is not None:
            self._show_state(self.current)

    def _set_override(self, path: Path, label: Degradation | None) -> None:
        """Choose the class ``path`` is fixed as (None: as diagnosed): its plan is rebuilt for
        it in the engine thread (diagnosing the photo first when it is not yet); meanwhile the
        photo has no plan, so that a Fix runs the chosen class, never the previous plan."""
        st = self._state(path)
        st.override = label
        # (the plan of the previous choice goes with it: a folder left or the app quit before
        # the new plan arrives must not bring that plan back with the new choice)
        self._save_sidecar(path, override=label.value if label else None, plan=None,
                           plan_edited=False)
        self._replan(path)

    def _replan(self, path: Path) -> None:
        """Make ``path``'s plan again for its chosen class and the settings of now, in the
        engine thread (diagnosing the photo first when it is not yet); the photo has no plan
        meanwhile."""
        st = self._state(path)
        label = self.plan_label(path)
        st.plan, st.plan_edited, st.plan_stale = None, False, False
        self._discard_preview(path)  # (it showed the chain of before)
        st.retry_plan_job = None  # (a new choice: the retry of an earlier one brings nothing)
        what = f"{label.value} · {label.short_name}" if label else "diagnosed"
        if label is not None and st.override is None:
            what += " (your reflection mask)"
        s = self.settings
        if st.diagnosis is None:
            jid = self.client.diagnose(path, backend=s.backend, profile=s.profile, label=label,
                                       name=self.display_name(path))
            st.plan_note = f"Diagnosing, then planning as {what}…"
        else:
            diag, profile = st.diagnosis, s.profile

            def replan(engine, progress):
                return engine.plan(diag, label, profile)

            jid = self.client.call(replan, f"Plan {self.display_name(path)}", path=path)
            st.plan_note = f"Planning as {what}…"
        self._job_path[jid] = path
        st.plan_job = jid

    def _on_finished(self, job_id: int, result: Any) -> None:
        if job_id in self._detect_jobs:  # (the automatic mask for the editor)
            self._on_proposal(job_id, result)
            return
        info = self.client.job(job_id)
        self._mask_jobs.pop(job_id, None)
        if job_id in self._preview_jobs or (info is not None and info.kind is JobKind.PREVIEW) \
                or (isinstance(result, JobResult) and result.region is not None):
            # (a preview: nothing of the photo's changes, but for the diagnosis the engine made)
            self._keep_preview_diagnosis(result)
            self._on_preview_done(job_id, result)
            return
        path = self._job_path.pop(job_id, None)
        if path is None:
            return
        # (unknown here: a job of a folder left since, whose sidecar knows the photo better: an
        # edited chain recorded there stays)
        known = path in self.states
        st = self._state(path)
        if isinstance(result, DiagnoseOutcome):
            st.diagnosis = result.diagnosis
            # (else a newer choice's plan is on its way, or the photographer's edited chain
            # stays: a diagnosis made again does not undo the edits)
            if st.plan_job == job_id or (st.plan_job is None and not st.plan_edited):
                # a preview asked before it showed another diagnosis's chain; one asked while
                # the photo was being diagnosed runs after it and is given this diagnosis
                # (EngineClient._queue_preview): it shows this chain
                self._discard_preview(path, before=job_id)
                st.plan, st.plan_note, st.plan_job = result.plan, result.plan_error, None
                st.plan_edited = st.plan_stale = False
            st.size = result.size or st.size
            self.model.update_item(path, diagnosis=result.diagnosis)
            self._save_sidecar(path, diagnosis=result.diagnosis, plan=st.plan,
                               plan_edited=st.plan_edited, keep_edited_plan=not known)
            if path == self.current:
                self._show_state(path)
            self.diagnosed.emit(path)
        elif isinstance(result, JobResult):
            # the whole photo's result is there to compare: the preview of a part goes (one
            # asked after this fix was queued is still wanted)
            self._discard_preview(path, before=job_id)
            st.result, st.output, st.mask_deleted = result, result.output, False
            self._fix_ends.pop(path, None)
            st.output_gone = None  # (written again, maybe under the name of one deleted)
            # the photo's diagnosis stays Mend's: "Automatic" plans it, the badge shows it. The
            # class that ran (one chosen, or B for a reflection mask) is the result's
            # (``result.label``; ``result.diagnosis`` carries it)
            diagnosis = st.diagnosis = result.diagnosed or result.diagnosis
            if st.plan is None and st.plan_job is None:  # (the plan the engine built for it)
                st.plan = result.plan
            if result.output:
                st.outputs = [o for o in st.outputs if o != str(result.output)] + [
                    str(result.output)]
            self.model.update_item(path, job_state=JobState.DONE, output=result.output,
                                   diagnosis=diagnosis, kept=_kept_original(st))
            # (the mask recorded in the sidecar stays unless this window knows the photo's:
            # a fix finishing after its folder was left erased the edited mask's record)
            mask = {"mask": str(st.mask_path)} if st.mask_path else {}
            # (added to the outputs recorded: a fix finishing after its folder was left knows
            # none of the photo's earlier results, and replaced the list with its own)
            self._save_sidecar(path, diagnosis=diagnosis, plan=st.plan or result.plan,
                               plan_edited=st.plan_edited, keep_edited_plan=not known,
                               add_outputs=[str(result.output)] if result.output else [],
                               warnings=list(result.warnings), **mask)
            if path == self.current:
                self._show_state(path)
                if self.stack.currentIndex() == 1:
                    self.load_view(path)
            from .messages import describe_result

            self.set_status(describe_result(self.display_name(path), result), photo=path)
            self.fixed.emit(path)
        elif isinstance(result, Plan):
            if st.plan_job != job_id:
                return  # a plan for an earlier choice of class
            self._discard_preview(path, before=job_id)
            st.plan, st.plan_note, st.plan_job = result, "", None
            st.plan_edited = st.plan_stale = False
            self._save_sidecar(path, plan=result, plan_edited=False)
            if path == self.current:
                self.panel.set_plan(result, why=self._plan_why(path))
        elif result is not None and hasattr(result, "shape"):  # SAM mask
            include = self._sam_include.pop(job_id, True)
            self.end_status(("select", job_id))  # (also when the photo is not shown any more)
            doc = self._current_mask_doc()
            if doc is not None and path == self.current:
                doc.set_mask(result, "Click-select" if include else "Click-deselect",
                             combine="add" if include else "subtract")

    # -- previews of part of a photo -------------------------------------------------------
    def preview_region(self) -> tuple[int, int, int, int] | None:
        """The part of the photo in view in the viewer (x0, y0, x1, y1: upright source px),
        at most ``PREVIEW_SIDE`` px a side at the view's centre; None when no photo is shown
        (another view, still decoding) or none of it is in view."""
        v = self._view
        if (v is None or self.current is None or v.path != self.current
                or self.stack.currentIndex() != 1):
            return None
        r = self.canvas.visible_source_rect()
        w, h = v.before.width(), v.before.height()
        # (a hair of tolerance: the view's float edges at whole pixels)
        x0, y0 = max(0, math.floor(r.left() + 1e-6)), max(0, math.floor(r.top() + 1e-6))
        x1, y1 = min(w, math.ceil(r.right() - 1e-6)), min(h, math.ceil(r.bottom() - 1e-6))
        if x1 <= x0 or y1 <= y0:
            return None
        (x0, x1), (y0, y1) = _centred(x0, x1, PREVIEW_SIDE), _centred(y0, y1, PREVIEW_SIDE)
        return (x0, y0, x1, y1)

    def preview_here(self) -> int | None:
        """"Preview fix here": queue the fix the photo would get (its class and chain, as "Fix"
        builds it) on the part in view (``preview_region``), shown over the photo in the
        after pane when done. Returns the job id (None: no photo in view, said in the status
        line, or the photo's edited mask is written first and the job follows)."""
        path, region = self.current, self.preview_region()
        if path is None or region is None:
            self.set_status("Preview fix here: show a photo in the viewer first, with part of "
                            "it in view", photo=path)
            return None
        # (a preview of this photo still on its way is of another part: it would only replace
        # the new one on the screen; the one shown stays until the new one comes)
        self._discard_preview(path, shown=False)
        jid = self.fix(path, region=region)
        x0, y0, x1, y1 = region
        self.set_status(f"Previewing the fix of {self.display_name(path)} on {x1 - x0} × "
                        f"{y1 - y0} px at {x0},{y0}…", photo=path)
        return jid

    def _keep_preview_diagnosis(self, result: Any) -> None:
        """A preview of a photo not yet diagnosed diagnosed it whole (the engine plans the
        photo whole): the photo keeps that diagnosis, as a diagnosis job's - its badge, the
        panel, the sidecar and, when it has none, the plan the engine made - so that the next
        preview or fix does not diagnose it again. One that has a diagnosis keeps its own (the
        preview was given it), also when the preview was dropped meanwhile."""
        if not isinstance(result, JobResult) or result.diagnosis is None:
            return
        path = Path(result.path)
        st = self.states.get(path)
        if st is None or st.diagnosis is not None:
            return  # (a photo of a folder left since, or one diagnosed already)
        # (Mend's diagnosis, not the class the preview ran: see _on_finished)
        diagnosis = st.diagnosis = result.diagnosed or result.diagnosis
        if st.plan is None and st.plan_job is None and not st.plan_edited:
            st.plan = result.plan
        self.model.update_item(path, diagnosis=diagnosis)
        self._save_sidecar(path, diagnosis=diagnosis, plan=st.plan,
                           plan_edited=st.plan_edited)
        if path == self.current:
            self._show_state(path)
        self.diagnosed.emit(path)

    def _on_preview_done(self, job_id: int, result: Any) -> None:
        """A preview job ended: its file is decoded (and deleted) in the pool, then shown,
        unless it was dropped meanwhile (the plan changed, a fix finished, another folder)."""
        out = getattr(result, "output", None)
        out = Path(out) if out is not None else None
        path = self._preview_jobs.get(job_id)
        if path is None or out is None or self._closing or getattr(result, "region", None) is None:
            self._preview_jobs.pop(job_id, None)
            if out is not None:
                self.client.run_in_pool(functools.partial(remove_quietly, out))
            return
        region = tuple(int(v) for v in result.region)
        seconds, warnings = result.seconds, result.warnings

        def done(image: QImage) -> None:
            if self._preview_jobs.pop(job_id, None) is None:
                return  # dropped while it was decoded
            self._preview = RegionPreview(path, region, image, job_id)
            self._show_region_preview(arrived=True)
            x0, y0, x1, y1 = region
            self.set_status(f"Preview of {self.display_name(path)} ({x1 - x0} × {y1 - y0} px at "
                            f"{x0},{y0}) in {seconds:.1f} s: shown in the after pane, not saved "
                            "— Fix runs the whole photo"
                            + (f" — {warnings[0]}" if warnings else ""), photo=path)

        def fail(message: str) -> None:
            if self._preview_jobs.pop(job_id, None) is not None:
                self.set_status(f"Preview of {self.display_name(path)}: {message}", photo=path)

        self.bg.run(lambda: take_preview(out), done, fail)

    def _show_region_preview(self, arrived: bool = False) -> None:
        """The preview on the canvas when it is of the photo shown (else none). ``arrived``:
        it has just come, and is brought into view (split) unless the mask editor is open."""
        pv, v = self._preview, self._view
        self.discard_preview_action.setEnabled(pv is not None)
        if pv is None or v is None or v.path != pv.path:
            self.canvas.set_preview(None)
            return
        self.canvas.set_preview(pv.image, pv.region)
        if arrived and not self.mask_action.isChecked() and self.compare_mode() in (
                Compare.AFTER, Compare.BEFORE):
            self.set_compare(Compare.SPLIT)

    def _discard_preview(self, path: Path | None, before: int | None = None,
                         shown: bool = True) -> None:
        """Drop ``path``'s preview (None: any photo's): the one shown (unless not ``shown``)
        and the preview jobs queued, running or being decoded (cancelled; their file is
        deleted when they end). ``before``: only those asked before that job (a fix or a plan
        asked later)."""
        def stale(jid: int, p: Path) -> bool:
            return (path is None or p == Path(path)) and (before is None or jid < before)

        for jid, p in list(self._preview_jobs.items()):
            if stale(jid, p):
                del self._preview_jobs[jid]
                self.client.cancel(jid)  # (nothing for one that has ended: its decode is dropped)
        pv = self._preview
        if shown and pv is not None and stale(pv.job, pv.path):
            self._preview = None
            self._show_region_preview()

    def _store_for(self, path: Path) -> SidecarStore:
        """The sidecar store of the photo's own folder: a job that finishes after another folder
        was opened (or one resumed after a crash) is recorded beside its photo, never in the
        open folder under the same name. (Making one reads no disk: its first use, in the pool,
        decides where its sidecars go.)"""
        folder = Path(path).parent
        if self.sidecars is not None and self.sidecars.folder == folder:
            return self.sidecars
        store = self._other_stores.get(folder)
        if store is None:
            store = self._other_stores[folder] = SidecarStore(
                folder, data_dir(), beside_photos=self._sidecars_beside)
        return store

    def _save_sidecar(self, path: Path, **changes: Any) -> None:
        """Sidecar writes (fsync'd) go to the pool, never the GUI thread."""
        store = self._store_for(path)
        if store is not None:
            self.bg.run(lambda: store.update(path, **changes), lambda _sc: None,
                        lambda m: self.set_status(f"Could not save the sidecar: {m}",
                                                  photo=path))

    def _mask_gone(self, path: Path) -> bool:
        """The photographer deleted ``path``'s reflection mask ("Delete mask") and has made none
        since (saved, being written or edited): what a mask file of before would remove is
        no longer wanted."""
        path = Path(path)
        deleted = self._mask_deleted_at.get(path)
        if deleted is None:
            return False
        st = self.states.get(path)
        if st is not None and (st.mask_path is not None or self._unsaved_mask(path) is not None):
            return False
        pending = self._mask_write_seq.get(path)  # (the deletion itself, or a write after it)
        return (pending is None or pending == deleted) \
            and self._mask_on_disk.get(path, 0) <= deleted

    def _retry_request(self, info: JobInfo, payload: Any) -> Any:
        """What the queue panel's Retry of a fix or preview sends (``EngineClient.retry``),
        so that it runs as a new fix of the photo would: without its reflection mask when the
        photographer deleted it since (a fix cancelled by the deletion read a file that is
        gone, or removed what is no longer to be removed); with the photo's mask as painted
        since when it reads one: once that mask is written (``RETRY_LATER``: queued at once,
        it read the mask written before, as ``fix`` waits for it), and where it was written.
        None: as it was."""
        if not isinstance(payload, JobRequest) or payload.mask_path is None:
            return None
        path = Path(payload.path)
        if self._mask_gone(path):
            self._retry_masks.pop(info.id, None)
            if info.kind is JobKind.RUN:
                self.set_status(f"Retrying the fix of {path.name} without its reflection "
                                "mask, which you deleted", photo=path)
            return replace(payload, mask_path=None)
        if not _reads_mask(payload):
            return None  # (a class chosen whose chain reads no mask)
        written = self._retry_masks.pop(info.id, None)  # (the mask it waited for)
        if written is None:
            doc = self._unsaved_mask(path)
            if doc is not None or path in self._mask_waiters:
                self._retry_after_mask(info, path, doc)
                return RETRY_LATER
            st = self.states.get(path)
            written = st.mask_path if st is not None else None
        return None if written in (None, payload.mask_path) \
            else replace(payload, mask_path=written)

    def _retry_after_mask(self, info: JobInfo, path: Path, doc: MaskDocument | None) -> None:
        """Retry ``info``'s job once ``path``'s mask is written: ``doc``'s edits (written now),
        or the write (or deletion) on its way. The photo shows as queued meanwhile; a second
        Retry adds nothing; a deletion of the mask, a failed write or "Cancel all" drop it, as
        they drop the fixes waiting for the mask (``fix``)."""
        job_id = info.id
        ref = self._retries_waiting.get(job_id)
        waiting = ref() if ref is not None else None
        if waiting is not None and waiting in self._mask_waiters.get(path, ()):
            return

        def retry(dest: Path | None) -> None:
            self._retries_waiting.pop(job_id, None)
            if dest is not None:
                self._retry_masks[job_id] = dest
            if self.client.retry(job_id) is None:
                self._retry_masks.pop(job_id, None)

        self._retries_waiting = {i: r for i, r in self._retries_waiting.items()
                                 if r() is not None}  # (those dropped meanwhile)
        self._retries_waiting[job_id] = weakref.ref(retry)
        if info.kind is JobKind.RUN:
            self.model.update_item(path, job_state=JobState.QUEUED, error="")
            self.set_status(f"Retrying the fix of {path.name} once its reflection mask is "
                            "saved", photo=path)
        if doc is not None:
            self._write_mask(path, doc, retry)
        else:
            self._mask_waiters[path].append(retry)
        self._show_waiting()

    def _show_waiting(self) -> None:
        """Show in the Queue panel the work waiting for a photo's mask to be written (or
        deleted), which the engine client does not hold: each Retry held back
        (``_retry_after_mask``) marked on its job (``EngineClient.set_waiting``), the fixes and
        previews asked meanwhile (``fix``) as lines of their own. Called wherever
        ``_mask_waiters`` changes: what was dropped there since (the mask deleted, its write
        failed, "Cancel all") is no longer shown; a retry queued unmarks its job itself."""
        held = {id(fn): path for path, waiting in self._mask_waiters.items() for fn in waiting}
        for job_id, ref in list(self._retries_waiting.items()):
            fn = ref()
            path = held.get(id(fn)) if fn is not None else None
            if fn is None:
                del self._retries_waiting[job_id]
            self.client.set_waiting(job_id, None if path is None else self._wait_reason(path))
        self.queue.set_waiting_work([
            (title, self._wait_reason(path)) for path, waiting in self._mask_waiters.items()
            for fn in waiting if (title := self._fixes_waiting.get(fn)) is not None])

    def _wait_reason(self, path: Path) -> str:
        """What a job waiting in ``_mask_waiters[path]`` waits for, as the Queue panel says."""
        seq = self._mask_write_seq.get(path)
        if seq is not None and seq == self._mask_deleted_at.get(path):
            return "runs once its reflection mask is deleted, without it"
        return "runs once its reflection mask is saved"

    def _on_resubmitted(self, old_id: int, new_id: int) -> None:
        """A job retried from the queue panel: its result is this photo's, like the first's."""
        info = self.client.job(new_id)
        self._mask_jobs.pop(old_id, None)
        detect = self._detect_ended.pop(old_id, None)
        if detect is not None:  # (the automatic mask, looked for again for its document)
            self._detect_jobs[new_id] = detect
            self._say_detecting(new_id, detect[0])
            return
        request = self.client.request(new_id)
        if request is not None and _reads_mask(request):  # (cancelled by a "Delete mask")
            self._mask_jobs[new_id] = Path(request.path)
        if info is not None and info.kind is JobKind.PREVIEW:
            if info.path is not None:  # (asked again: shown when it ends)
                self._preview_jobs[new_id] = Path(info.path)
            return
        path = self._job_path.pop(old_id, None) or (info.path if info is not None else None)
        if path is None:
            return
        self._job_path[new_id] = Path(path)
        if info is not None and info.kind is JobKind.RUN:
            self._fix_ends.pop(Path(path), None)
            self.model.update_item(Path(path), job_state=JobState.QUEUED, error="")
        st = self.states.get(Path(path))
        if st is not None and st.retry_plan_job == old_id and st.plan_job is None:
            # the plan for the class chosen (cancelled or failed): the retry brings it
            st.plan_job, st.retry_plan_job, st.plan_note = new_id, None, "Planning…"
            if path == self.current:
                self.panel.set_plan(st.plan, st.plan_note)

    def _on_failed(self, job_id: int, message: str) -> None:
        if job_id in self._detect_jobs:
            self._proposal_failed(job_id, message)
            return
        info = self.client.job(job_id)
        self._mask_jobs.pop(job_id, None)
        if job_id in self._preview_jobs or (info is not None and info.kind is JobKind.PREVIEW):
            path = self._preview_jobs.pop(job_id, None)
            if path is not None and not self._closing:  # (else dropped: nobody asks for it)
                self.set_status(f"Preview of {self.display_name(path)}: {message}", photo=path)
            return
        path = self._job_path.pop(job_id, None)
        if path is not None and info is not None and info.kind is JobKind.RUN:
            # (a newer fix of it on its way shows first: ``_fix_states``)
            self._fix_ends[path] = (info.state, message)
            self.model.update_item(path, error=message)
        st = self.states.get(path) if path is not None else None
        if st is not None and st.plan_job == job_id:  # the plan for the chosen class
            st.plan_job, st.plan_note = None, f"No plan: {message}"
            st.retry_plan_job = job_id
            if path == self.current:
                self.panel.set_plan(st.plan, st.plan_note)
        self._sam_include.pop(job_id, None)
        # (a subfolder's photo as the grid names it: two folders of a card hold IMG_0001.JPG)
        name = self.display_name(path) if path else "Job"
        if info is not None and info.state is JobState.CANCELLED:
            self._say_cancelled(name, path)
        else:
            self.set_status(f"{name}: {message}", photo=path)
        if path == self.current:
            self.panel.set_status(message)

    def _say_cancelled(self, name: str, path: Path | None) -> None:
        """Say in the status line that the job of ``name`` was cancelled. Jobs cancelled
        together (a batch's lines cancelled in the Queue panel, "Cancel all": within a few
        seconds, nothing else said between them) are said together: the line named only the
        last one ("IMG_0010.JPG: Cancelled." for twelve fixes cancelled)."""
        now = time.monotonic()
        if self._status_owner.op != _CANCELS or now - self._cancelled_at > CANCELS_TOGETHER:
            self._cancelled = []
        self._cancelled.append(name)
        self._cancelled_at = now
        n = len(self._cancelled)
        if n == 1:
            self.set_status(f"{name}: Cancelled.", photo=path, op=_CANCELS)
            return
        names = ", ".join(self._cancelled[:3]) + (f" and {n - 3} more" if n > 3 else "")
        self.set_status(f"Cancelled {n} jobs: {names}", op=_CANCELS)

    def _on_job_changed(self, info: JobInfo) -> None:
        if info.id in self._detect_jobs and info.state is JobState.RUNNING \
                and info.path is not None:
            self._say_detecting(info.id, info.path, info.fraction)
        if info.kind is not JobKind.RUN or info.path is None:
            return
        self.model.update_item(info.path, job_state=info.state)

    def _on_journal_problem(self, reason: str) -> None:
        """The crash journal cannot be written (a full disk, a read-only data folder): said
        once, and marked in the status bar until it can be again (``reason`` "")."""
        if not reason:
            self.journal_label.setVisible(False)
            return
        text = (f"Unfinished jobs will not survive a crash: Mend cannot save its queue "
                f"({reason}).")
        self.journal_label.setToolTip(text)
        self.journal_label.setVisible(True)
        self.set_status(text)

    def _on_queue_changed(self) -> None:
        if self.client.is_idle():
            self.eta_label.setText("")

    def _on_overall(self, fraction: float, eta: Any) -> None:
        if self.client.is_idle():
            self.eta_label.setText("")
        else:
            self.eta_label.setText(f"{fraction:.0%} {format_eta(eta)}")

    def _estimate_text(self, plan: Plan) -> str | None:
        """The diagnosis panel's estimate line for the current photo (None: not known yet)."""
        if self.current is None:
            return None
        st = self._state(self.current)
        # (a mask of the photo's, saved or being edited, is what its fix would fill)
        mask = st.mask_path is not None or self._unsaved_mask(self.current) is not None
        est = self.client.estimate(plan, st.size, mask) if st.size else None
        return None if est is None else est.describe()

    def _on_engine_ready(self, device: Any) -> None:
        self.device = device
        # (weakly: the panel is the window's child, a bound method would make a cycle)
        self.panel.set_estimator(weak_slot(self, lambda w, plan: w._estimate_text(plan)))
        # said in place of "Starting the engine…" (or of nothing), never of another message:
        # a job that started the engine (the mask editor's automatic mask) says how it goes,
        # and "Saved the mask edits…" said as the folder was left stays
        if device is not None and (self._status_owner.op == _ENGINE_START
                                   or not self.status_label.text()):
            self.set_status(f"Engine ready on {device.name}")
        else:
            self.end_status(_ENGINE_START)

    # -- mask editor ----------------------------------------------------------------------
    def show_mask_editor(self) -> None:
        if self.current is None:
            return
        if self.stack.currentIndex() != 1:
            self.show_viewer(self.current)
        if not self.mask_action.isChecked():
            self.mask_action.setChecked(True)  # re-enters via the toggled signal
            return
        self.mask_bar.setVisible(True)
        self.mask_bar2.setVisible(True)
        if self.compare_mode() is not Compare.BEFORE:
            self._mode_before_mask = self.compare_mode()
            self.set_compare(Compare.BEFORE)  # the mask is drawn on the original
        # (the last answer meanwhile: checking the weights reads the models folder, maybe
        # hashing a file, in the pool)
        self._show_sam_available(self._sam_ok)
        self.bg.run(self._sam_available, self._show_sam_available, lambda _m: None)
        if self._view is not None:
            self._open_mask_doc()
        self.set_tool("brush")
        self.toggle_mask.setChecked(True)

    def leave_mask_editor(self) -> None:
        if not hasattr(self, "mask_bar"):
            return
        self.mask_bar.setVisible(False)
        self.mask_bar2.setVisible(False)
        self.set_tool("pan")
        back = getattr(self, "_mode_before_mask", None)
        if back is not None:
            self._mode_before_mask = None
            self.set_compare(back)
        if self.mask_action.isChecked():
            self.mask_action.setChecked(False)

    def _show_sam_available(self, ok: bool) -> None:
        self._sam_ok = bool(ok)
        a = self.tool_actions["sam"]
        a.setEnabled(self._sam_ok)
        a.setToolTip(
            "Click an object to select it with SAM (S)" if self._sam_ok else
            "Click-to-select needs the SAM model (sam-vit-base): install it in Tools ▸ Models")
        if not self._sam_ok and self.canvas.tool == "sam":
            self.set_tool("brush")

    def _sam_available(self) -> bool:  # (in the pool)
        try:
            from engine.models.store import ModelStore
            from engine.restore import reflection

            if not hasattr(reflection, "sam_mask_from_points"):
                return False
            # (the quit stops a hash of a SAM file not recorded yet: it waits for this pool)
            return ModelStore().status("sam-vit-base", token=self._quit_token) in (
                "verified", "unpinned")
        except Exception:  # noqa: BLE001 - Cancelled at quit too: the answer is not shown
            return False

    def _open_mask_doc(self, readonly: bool = False) -> None:
        v = self._view
        if v is None or self.current is None:
            return
        h, w = v.before_rgb.shape[:2]
        st = self._state(self.current)
        kept = st.mask_doc
        prev, prev_path = self.mask_doc, self._mask_doc_path
        if kept is not None and kept.full.shape == (h, w):
            # edits made earlier survive leaving the editor, another photo, or a fix of this
            # one finishing meanwhile (whose mask would otherwise replace them); the viewer
            # shows them too (read-only: outside the editor the tools are off), not the
            # saved mask they have not replaced yet
            if readonly:
                self.mask_doc, self._mask_doc_path = None, None
            else:
                self.mask_doc, self._mask_doc_path = kept, self.current
            self._set_canvas_doc(kept)
            self._release_unedited(prev, prev_path)
            return
        doc = MaskDocument(h, w, parent=self)
        arr = v.mask  # read in the pool with the photo
        if arr is None and st.result is not None and not st.mask_deleted:
            arr = st.result.artifacts.get("mask")
        try:
            if arr is not None and hasattr(arr, "shape"):
                doc.set_mask(arr, "Detected mask")
        except Exception as e:  # noqa: BLE001
            from .messages import describe_error

            self.set_status(f"Could not load the mask: {describe_error(e)}", photo=self.current)
        doc.undo.clear()  # the starting point is not an undoable edit
        # grow/feather/... on a big mask finish in a worker: said while they do, of this photo
        # (another photo shown, or the document gone with its folder, takes the message away)
        busy_op, photo = object(), self.current
        doc.busy_changed.connect(weak_slot(self, lambda w, b: w._on_mask_busy(busy_op, photo, b)))
        doc.failed.connect(weak_slot(self, lambda w, msg: w.set_status(msg, photo=photo)))
        # (edits not saved are a mask of the photographer's: "Delete mask…" in the Photo menu)
        doc.undo.cleanChanged.connect(weak_slot(self, lambda w, _c: w._update_mask_actions()))
        doc.set_style(opacity=self.opacity_slider.value() / 100)
        if not readonly:
            st.mask_doc = doc
        self.mask_doc = None if readonly else doc
        self._mask_doc_path = None if readonly else self.current
        self._set_canvas_doc(doc)
        if readonly:
            self._readonly_doc = doc  # released when the canvas shows another document
        self._release_unedited(prev, prev_path)
        if not readonly and arr is None and st.mask_path is None and not st.mask_deleted:
            # no mask of the photographer's nor of a result (a photo not fixed yet, or fixed
            # as another class): the editor starts from what the detector finds (after a
            # "Delete mask" it starts empty, as asked)
            self._propose_mask(self.current, doc)

    def _propose_mask(self, path: Path, doc: MaskDocument) -> int | None:
        """Look for the reflections in ``path`` for the editor's new, empty document ``doc``:
        the ``reflection_mask`` step's detection as the photo's fix would run it (that step of
        the photo's plan, else of the B chain of the profile in Settings), in the engine
        thread, a job of the Queue panel (cancellable there; its progress in the status line).
        Its mask is laid in once found, as an edit not saved (undoable), only if ``doc`` is
        still the photo's and holds no edit (``_on_proposal``). Once per photo while the folder
        is open; one cancelled or failed is asked again the next time the editor opens.
        Returns the job id (None: looked for already, or under way)."""
        st = self._state(path)
        for jid, (p, ref) in list(self._detect_jobs.items()):
            if p == path and ref() is doc:
                return None  # (under way for this document)
            if p == path:
                self.client.cancel(jid)  # (for a document let go since: cancelled already)
        if st.auto_mask:
            return None
        step = None
        if st.plan is not None:  # (an edited chain's detector and sensitivity too)
            step = next((s for s in st.plan.steps if s.name == "reflection_mask"
                         and s.enabled), None)
        name = self.display_name(path)
        jid = self.client.detect_mask(path, step=step, profile=self.settings.profile, name=name)
        self._detect_jobs[jid] = (Path(path), weakref.ref(doc))
        self._say_detecting(jid, path)
        return jid

    def _say_detecting(self, job_id: int, path: Path, fraction: float | None = None) -> None:
        """The status line while the automatic mask is looked for (unless another message
        took its place: it is not taken back)."""
        op = ("detect", job_id)
        if fraction is not None and self._status_owner.op != op:
            return
        if fraction is not None:
            where = f" {fraction:.0%}"
        elif self.client.running_id() in (None, job_id):
            where = ""
        else:  # (it goes before the fixes and diagnoses queued, not before that one)
            where = " (after the job running)"
        self.set_status(f"Finding the reflections in {self.display_name(path)} for its "
                        f"automatic mask…{where}", photo=path, op=op)

    def _cancel_proposals(self, keep: Path | None = None) -> None:
        """Cancel the searches for an automatic mask of every photo but ``keep``: their
        document is gone or not shown (another photo, another folder)."""
        for jid, (p, _ref) in list(self._detect_jobs.items()):
            if p != keep:
                self.client.cancel(jid)

    def _on_proposal(self, job_id: int, found: ProposedMask) -> None:
        """The automatic mask was found: laid into the document it was asked for, as an edit
        not saved (Undo takes it away; a fix writes it first and uses it, as painted edits;
        left untouched it is not written when the folder is left: ``_save_unsaved_masks``),
        unless the document is gone or the photographer edited it meanwhile (then it is left
        out, and said so)."""
        path, ref = self._detect_jobs.pop(job_id)
        op = ("detect", job_id)
        doc, st = ref(), self.states.get(path)
        if self._closing or doc is None or st is None or st.mask_doc is not doc:
            self.end_status(op)  # (another folder, the mask deleted, the document let go)
            return
        st.auto_mask = True
        name = self.display_name(path)
        if doc.undo.count() or doc.stroking():
            self.set_status(f"The automatic mask of {name} was not laid in: you edited the "
                            "mask while it was looked for, and your edits stay", photo=path)
            return
        if not found.mask.any():
            self.set_status(f"The reflection detector found nothing to remove in {name}: "
                            "paint what is to be removed", photo=path)
            return
        doc.set_mask(found.mask, "Automatic mask", proxy=found.proxy)
        doc.proposed = True
        warn = f" — {found.warnings[0]}" if found.warnings else ""
        self.set_status(f"Automatic mask of {name}: {_detector_name(found.detector)} marked "
                        f"{found.share:.1%} of the photo; check it (Undo takes it away)" + warn,
                        photo=path)
        self._update_mask_actions()

    def _proposal_failed(self, job_id: int, message: str) -> None:
        """The search for an automatic mask was cancelled or failed: the editor stays as it
        is (a Retry in the Queue panel looks again for the same document)."""
        entry = self._detect_jobs.pop(job_id)
        self._detect_ended[job_id] = entry
        while len(self._detect_ended) > 50:  # (oldest first)
            self._detect_ended.pop(next(iter(self._detect_ended)))
        path = entry[0]
        info = self.client.job(job_id)
        if self._closing or (info is not None and info.state is JobState.CANCELLED):
            self.end_status(("detect", job_id))
            return
        self.set_status(f"Could not find the reflections in {self.display_name(path)} for its "
                        f"automatic mask: {message}", photo=path)

    def _set_canvas_doc(self, doc: MaskDocument | None) -> None:
        """Show ``doc`` on the canvas, releasing the read-only document it replaces (one per
        photo viewed was kept until the window closed: ~38 MB each at 24 MP)."""
        old, self._readonly_doc = self._readonly_doc, None
        self.canvas.set_document(doc)
        if old is not None and old is not doc:
            _delete_when_idle(old)

    def _release_unedited(self, doc: MaskDocument | None, path: Path | None) -> None:
        """Forget another photo's mask document that holds no edit (it is rebuilt from disk
        when needed): only edited masks are kept in memory."""
        if (doc is None or path is None or doc is self.mask_doc or doc is self.canvas.doc
                or doc.undo.count()):
            return
        st = self.states.get(path)
        if st is not None and st.mask_doc is doc:
            st.mask_doc = None
        _delete_when_idle(doc)

    def set_tool(self, tool: str) -> None:
        if tool != "pan" and self.mask_doc is None:
            # (not from show_mask_editor itself: the editor is open, the photo still decoding;
            # calling it again recursed until RecursionError)
            if self.current is not None and self.stack.currentIndex() == 1 \
                    and not self.mask_action.isChecked():
                self.show_mask_editor()
            if self.mask_doc is None:
                self._tool_wanted = tool if self.mask_action.isChecked() else None
                tool = "pan"
            else:
                self._tool_wanted = None
        else:
            self._tool_wanted = None
        if tool == "sam" and not self.tool_actions["sam"].isEnabled():
            tool = "pan"
        self.canvas.set_tool(tool)
        self.tool_actions[tool].setChecked(True)

    def _pick_mask_colour(self) -> None:
        if self.mask_doc is None:
            return
        c = QColorDialog.getColor(self.mask_doc.colour, self, "Mask colour")
        if c.isValid():
            self.mask_doc.set_style(colour=c)

    def _save_mask_dialog(self) -> None:
        if self.mask_doc is None or self.current is None:
            return
        f, _ = QFileDialog.getSaveFileName(self, "Save mask", str(
            self.current.with_name(self.current.stem + "_mask.png")), "PNG (*.png)")
        if f:
            self.save_mask(Path(f))

    def save_mask(self, dest: Path, on_done=None) -> None:
        """Write the mask PNG in the pool (a 24 MP PNG takes a while)."""
        doc = self._current_mask_doc()
        if doc is None:
            return
        photo = self.current

        def write_when_final() -> None:  # after any grow/feather still computing
            data = doc.full.copy()
            shape = data.shape

            def write() -> Path:
                tmp = MaskDocument.__new__(MaskDocument)  # only .full is used by save()
                tmp.full = data
                return MaskDocument.save(tmp, dest)

            def done(p: Path) -> None:
                self.set_status(f"Mask saved: {p} ({shape[1]}×{shape[0]})", photo=photo)
                if on_done:
                    on_done(p)

            self.bg.run(write, done, lambda m: self.set_status(m, photo=photo))

        doc.when_idle(write_when_final)

    def _load_mask_dialog(self) -> None:
        if self.mask_doc is None:
            return
        f, _ = QFileDialog.getOpenFileName(self, "Load mask", str(self.current.parent)
                                           if self.current else "", "Images (*.png *.jpg *.tif)")
        if f:
            self.load_mask(Path(f))

    def load_mask(self, path: Path) -> None:
        doc = self.mask_doc
        if doc is None:
            return
        shape = doc.full.shape
        photo = self.current
        from .editor.mask import read_mask

        self.bg.run(lambda: read_mask(path, shape),
                    lambda m: doc.set_mask(m, f"Load {path.name}"),
                    lambda m: self.set_status(m, photo=photo))

    def _current_mask_doc(self) -> MaskDocument | None:
        """The mask being edited, if it is the current photo's (just after a switch it is still
        the previous photo's until the new one has loaded)."""
        if self.mask_doc is None or self.current is None or self._mask_doc_path != self.current:
            return None
        return self.mask_doc

    def _unsaved_mask(self, path: Path) -> MaskDocument | None:
        """``path``'s mask document when it holds edits not written anywhere yet."""
        st = self.states.get(Path(path))
        doc = st.mask_doc if st is not None else None
        return None if doc is None or doc.undo.isClean() else doc

    def _write_mask(self, path: Path, doc: MaskDocument,
                    on_done: Callable[[Path], None] | None = None, *, now: bool = False
                    ) -> Path | None:
        """Write ``doc`` (once its edits are applied; ``now``: at once, the document is about to
        go) where the photo's sidecar keeps its mask, and record it there, in one pool task (it
        runs even when the window closes meanwhile); then ``on_done(path written)``, with the
        fixes of this photo queued meanwhile (``fix``: they wait for the mask they will read).
        Returns where the store last put masks (None: not known yet): the write asks the disk
        again in the pool (``.mend`` may have become a link), never the GUI thread."""
        path = Path(path)
        store = self._store_for(path)
        dest = store.mask_path_known(path)
        self._state(path).mask_deleted = False
        if dest is not None:
            self._state(path).mask_path = dest
        waiters = self._mask_waiters.setdefault(path, [])  # fixes waiting for this write
        if on_done is not None:
            waiters.append(on_done)
        seq = self._mask_write_seq[path] = next(self._mask_write_ids)  # (the latest one)
        self._update_mask_actions()
        # (in the pool; not the window's attributes: a write never holds the window)
        lock = self._mask_write_locks.setdefault(path, threading.Lock())
        on_disk = self._mask_on_disk

        def write_final() -> None:
            data = doc.full.copy()
            doc.undo.setClean()  # (the edits so far are on their way to the disk)

            def write() -> Path:
                from engine.imageio import save_mask

                # two writes of the same mask run side by side in the pool (edits, Fix, more
                # edits, Fix): one at a time, and an older one after a newer one writes nothing
                # (it finished last and put the older mask on the disk)
                with lock:
                    if on_disk.get(path, 0) > seq:
                        return store.mask_path_for(path)
                    if not store.folder.is_dir():  # (saving would create it again)
                        raise OSError(f"{store.folder} is gone")
                    written = Path(save_mask(data, store.mask_path_for(path)))
                    store.update(path, mask=str(written))
                    on_disk[path] = seq
                    return written

            def written(p: Path) -> None:
                st = self.states.get(path)
                # (a "Delete mask" since: this write was skipped or its file deleted after it;
                # the mask is not the photo's again)
                gone = self._mask_deleted_at.get(path, 0) > seq
                if st is not None and st.mask_path in (None, dest) and not gone:
                    st.mask_path = p  # (where it went)
                # (its fix runs B now: the plan shown is made again to say so)
                if not gone and self._follow_mask(path) and path == self.current:
                    self.panel.set_plan(st.plan, st.plan_note)
                if seq != self._mask_write_seq.get(path):
                    return  # a later write of this photo's mask follows: they wait for it
                self._mask_write_seq.pop(path, None)
                self._update_mask_actions()
                for then in self._mask_waiters.pop(path, []):
                    then(p)
                self._show_waiting()

            def failed(msg: str) -> None:
                doc.undo.resetClean()  # not written: still unsaved
                self.set_status(f"Could not save the mask of {path.name}: {msg}", photo=path)
                if seq == self._mask_write_seq.get(path):
                    self._mask_write_seq.pop(path, None)
                    self._mask_waiters.pop(path, None)
                    self.model.update_item(path, job_state=JobState.FAILED,
                                           error=f"Could not save the mask: {msg}")
                    self._show_waiting()
                self._update_mask_actions()

            self.bg.run(write, written, failed)

        if now:
            doc.flush()
            write_final()
        else:
            doc.when_idle(write_final)
        return dest

    def _save_unsaved_masks(self) -> dict[Path, Path | None]:
        """Write every mask edited and not yet saved beside its photo's sidecar (leaving the
        folder or quitting): it comes back when the folder is opened again. Returns where each
        photo's mask goes (None: not known before the write, which records it)."""
        saved = {}
        for path in list(self.states):
            doc = self._unsaved_mask(path)
            # (the automatic mask untouched is nobody's choice: it is proposed again, never
            # made the photo's mask - which its fix would fill unchecked - by leaving)
            if doc is not None and not _only_proposal(doc):
                saved[path] = self._write_mask(path, doc, now=True)
        return saved

    def has_own_mask(self, path: Path) -> bool:
        """``path`` has a reflection mask the photographer made: saved (or being written)
        beside it, or edited and not saved yet (a "Delete mask" on its way is no mask)."""
        path = Path(path)
        st = self.states.get(path)
        writing = self._mask_write_seq.get(path)
        return st is not None and (
            st.mask_path is not None or self._unsaved_mask(path) is not None
            or (writing is not None and writing != self._mask_deleted_at.get(path)))

    def _update_mask_actions(self) -> None:
        """"Delete mask…" of the Photo menu and the thumbnails' menu: only for a current photo
        with a mask of the photographer's (asked again as those menus open)."""
        action = getattr(self, "photo_delete_mask_action", None)  # (None: being built)
        if action is not None:
            cur = self.current
            action.setEnabled(cur is not None and self.has_own_mask(cur))

    def _show_grid_menu(self, pos: Any) -> None:
        """The thumbnails' context menu, at ``pos`` (global), for the current photo (the grid
        made the photo right-clicked the current one)."""
        if self.current is None:
            return
        self._update_mask_actions()
        self.grid_menu.popup(pos)

    def _delete_mask_dialog(self) -> None:
        """"Delete mask…": asks first (a deleted mask cannot be brought back)."""
        path = self.current
        if path is None:
            return
        if not self.has_own_mask(path):
            self.set_status(f"{path.name} has no reflection mask of yours to delete (Clear "
                            "empties the mask shown)", photo=path)
            return
        r = QMessageBox.question(
            self, "Delete mask",
            f"Delete the reflection mask you made for {path.name}?\n\nThe saved mask and the "
            "edits not saved go, and Mend's diagnosis decides the photo's class again. This "
            "cannot be undone. (The results already written and their masks stay.)")
        if r == QMessageBox.StandardButton.Yes:
            self.delete_mask(path)

    def delete_mask(self, path: Path) -> None:
        """Forget the reflection mask the photographer made for ``path``: the mask files Mend
        wrote for it are deleted and its sidecar records none (in the pool,
        ``SidecarStore.forget_mask``; never a photo, a result or a mask saved elsewhere), the
        edits not saved are dropped, and its plan is made again for the class Mend diagnosed
        (unless a class is chosen in "Fix as" or the plan was edited: those stay). A write of
        the mask still on its way is superseded (it writes nothing, or its file is deleted
        after it); the fixes and previews waiting for it, or queued or running to read the
        mask file, are cancelled: they were to remove what the photographer no longer wants
        removed (a fix of a class chosen whose chain does not read it goes on); their Retry
        runs without the mask (``_retry_request``). Fixes asked meanwhile wait for the
        deletion, then run without a mask. A mask file that cannot be deleted (a read-only
        ``.mend``) stays, unused: the sidecar where Mend writes (the user data folder) records
        no mask, and the status says so. When even that record cannot be written, nothing is
        forgotten: the photo keeps its saved mask (and its plan is B's again), and says so."""
        path = Path(path)
        st = self._state(path)
        known, st.mask_path, st.mask_deleted = st.mask_path, None, True
        doc, st.mask_doc = st.mask_doc, None
        cancelled = 0
        waiting = self._mask_waiters.get(path)
        if waiting:
            cancelled += len(waiting)
            self.model.update_item(path, job_state=JobState.CANCELLED,
                                   error="Cancelled: its reflection mask was deleted.")
        for jid, p in list(self._mask_jobs.items()):
            info = self.client.job(jid)
            if p == path and info is not None and not info.state.finished:
                cancelled += 1
                self.client.cancel(jid)
        # this deletion is the latest "write" of the photo's mask: an earlier one still on its
        # way writes nothing once it is done (or is deleted here after it), and fixes asked
        # from now on wait for it (``fix``)
        seq = self._mask_write_seq[path] = next(self._mask_write_ids)
        self._mask_deleted_at[path] = seq
        self._mask_waiters[path] = []
        self._show_waiting()
        store = self._store_for(path)
        lock = self._mask_write_locks.setdefault(path, threading.Lock())
        on_disk = self._mask_on_disk

        deleted_before = self._mask_deleted_at.get(path)

        def work() -> list[tuple[Path, str]]:  # (in the pool; not the window's attributes)
            kept: list[tuple[Path, str]] = []
            with lock:
                store.forget_mask(path, also=known, kept=kept)
                on_disk[path] = max(on_disk.get(path, 0), seq)
                return kept

        def done(kept: list[tuple[Path, str]]) -> None:
            if kept:  # (a read-only .mend: the sidecar where Mend writes says "no mask")
                where, why = kept[0]
                self.set_status(f"Deleted the reflection mask of {path.name}; its file "
                                f"{where} stays ({why}) but is no longer used", photo=path)
            if seq != self._mask_write_seq.get(path):
                return  # a mask made since is being written: the fixes wait for it
            self._mask_write_seq.pop(path, None)
            self._update_mask_actions()
            for then in self._mask_waiters.pop(path, []):
                then(None)
            self._show_waiting()

        def failed(msg: str) -> None:
            # nothing was forgotten (its sidecar still records the mask, which is still there):
            # the photo keeps it, unless a mask was made since (its write supersedes this)
            latest = seq == self._mask_write_seq.get(path)
            now = self.states.get(path)
            keeps = latest and known is not None and now is not None and now.mask_path is None
            self.set_status(f"Could not delete the mask of {path.name}: {msg}"
                            + ("; the photo keeps its saved mask" if keeps else ""), photo=path)
            if not latest:
                return
            self._mask_write_seq.pop(path, None)
            if keeps:
                if deleted_before is None:
                    self._mask_deleted_at.pop(path, None)
                else:
                    self._mask_deleted_at[path] = deleted_before
                now.mask_path, now.mask_deleted = known, False
                if now.override is None and not now.plan_edited and not self._closing and (
                        now.plan is not None or now.plan_job is not None):
                    self._replan(path)  # (B's again: the mask decides it)
                if path == self.current:
                    self._show_state(path)
            if self._mask_waiters.pop(path, None):
                self.model.update_item(path, job_state=JobState.FAILED,
                                       error=f"Could not delete the mask: {msg}")
                self._show_waiting()
            self._update_mask_actions()

        self.bg.run(work, done, failed)
        # the editor and the viewer show no mask of this photo any more
        if doc is not None:
            if self.mask_doc is doc:
                self.mask_doc, self._mask_doc_path = None, None
            if self.canvas.doc is doc:
                self._set_canvas_doc(None)
        if self._view is not None and self._view.path == path:
            self._view = replace(self._view, mask=None)
            if path == self.current and self.stack.currentIndex() == 1:
                if self.mask_action.isChecked():
                    self._open_mask_doc()  # a new, empty mask to paint on
                else:
                    self._show_result_mask()
        if doc is not None:
            _delete_when_idle(doc)
        # its plan: the class diagnosed again (one chosen, or a chain edited, stays)
        if st.override is None and not st.plan_edited and (
                st.plan is not None or st.plan_job is not None) and not self._closing:
            self._replan(path)
        self._update_mask_actions()
        if path == self.current:
            self._show_state(path)
        diag = st.diagnosis
        what = f"{diag.label.value} · {diag.label.short_name}" if diag else "diagnosed"
        then = f"it is fixed as {what} again" if st.override is None and not st.plan_edited \
            else "its chosen class or edited plan stays"
        self.set_status(f"Deleted the reflection mask of {path.name}: {then}"
                        + (f" ({cancelled} fix(es) waiting for it cancelled)" if cancelled
                           else ""), photo=path)

    def inpaint_again(self) -> int | None:
        """Save the edited mask beside the photo's sidecar and re-run chain B with it."""
        path = self.current
        if path is None or self.mask_doc is None or self.sidecars is None:
            return None
        if self._current_mask_doc() is None:
            self.set_status(f"{path.name} is still loading: its mask is not there yet",
                            photo=path)
            return None
        st = self._state(path)
        plan = st.plan if st.plan is not None and st.plan.label is Degradation.B else None

        def submit(dest: Path) -> None:
            self.fix(path, plan, Degradation.B, dest)
            self.set_status(f"Inpainting {path.name} again with the edited mask", photo=path)

        self._write_mask(path, self.mask_doc, submit)
        return 0

    def _sam_click(self, x: float, y: float, include: int) -> None:
        if self.current is None:
            return
        # each click selects one object (a positive point); Shift/Alt-click removes it
        jid = self.client.sam_select(self.current, [(x, y, 1)],
                                     name=self.display_name(self.current))
        self._job_path[jid] = self.current
        self._sam_include[jid] = bool(include)
        self.set_status("Selecting…", photo=self.current, op=("select", jid))

    # -- export ---------------------------------------------------------------------------
    def export_current(self, dest: Path | None = None) -> None:
        path = self.current
        st = self._state(path) if path else None
        if path is None or st is None or st.output is None:
            self.set_status("Nothing to export yet: fix the photo first", photo=path)
            return
        output = st.output

        def checked(exists: bool) -> None:  # (asked in the pool: the result's disk may sleep)
            self._output_found(path, output, exists)  # (the panel says the same)
            if exists:
                self._export(path, output, dest)
            else:  # (deleted or moved outside Mend since it was written)
                self.set_status(f"The result of {self.display_name(path)} is no longer on the "
                                f"disk ({output}): fix the photo again to export it", photo=path)

        self.bg.run(output.exists, checked,
                    lambda m: self.set_status(f"Export failed: {m}", photo=path))

    def _export(self, path: Path, output: Path, dest: Path | None) -> None:
        """Export ``path``'s result ``output`` to ``dest`` (None: asked in a dialog)."""
        if dest is None:
            # (not the result itself, which the export is a copy of: the last export folder,
            # else the photo's own)
            folder = self.qs.value("export/folder") or str(path.parent)
            ext = output.suffix
            f, _ = QFileDialog.getSaveFileName(
                self, "Export result", str(Path(folder) / output.name),
                f"{ext[1:].upper()} (*{ext})")
            if not f:
                return
            dest = Path(f)
            self.qs.set({"export/folder": str(dest.parent)})
        asked = Path(dest)

        def done(p: Path) -> None:
            note = "" if p.name == asked.name else \
                f" (named for its format: the result is a {output.suffix[1:].upper()} file)"
            self.set_status(f"Exported {p}{note}", photo=path)
            self.exported.emit(p)

        self.bg.run(lambda: export_copy(output, asked, path), done,
                    lambda m: self.set_status(f"Export failed: {m}", photo=path))

    # -- dialogs --------------------------------------------------------------------------
    def show_models(self, first_run: bool = False) -> None:
        """The Models dialog, beside the window (a download takes minutes: the photos stay at
        hand meanwhile); asked again while it is open, that one is raised. Closed, it is
        deleted: its status check stops (mid-hash too), its connections to the client go."""
        dlg = self._open_models_dialog()
        if dlg is None:
            from .dialogs.models import ModelManagerDialog

            try:
                dlg = ModelManagerDialog(self.client, parent=self, first_run=first_run)
            except Exception as e:  # noqa: BLE001
                from .messages import describe_error

                QMessageBox.warning(self, "Models", describe_error(e))
                return
            dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            self._models_dialog = weakref.ref(dlg)
        dlg.show()
        dlg.raise_()
        dlg.activateWindow()

    def _open_models_dialog(self) -> Any:
        """The Models dialog if it is open (not one closed, its deletion pending), else None."""
        dlg = self._models_dialog() if self._models_dialog is not None else None
        if dlg is None or not shiboken6.isValid(dlg) or not dlg.isVisible():
            return None
        return dlg

    def show_settings(self) -> None:
        from .dialogs.settings import SettingsDialog

        dlg = SettingsDialog(self.settings, self)
        if dlg.exec():
            self.apply_settings(dlg.value())

    def apply_settings(self, new: AppSettings) -> None:
        """Settings chosen in the dialog: saved, and applied to what is open."""
        old = self.settings
        self.settings = new
        save_settings(self.settings, self.qs)
        self.settings.apply_environment()
        if old.profile != new.profile:
            self._plans_for_new_settings()
        # the engine chooses its device, tile size and thread count once, when it starts
        # (torch's and the OCR sessions' threads are set then: a new count reached only the
        # RAW decoder at once)
        later = [name for name, a, b in (("device", old.device, new.device),
                                         ("tile size", old.tile_size, new.tile_size),
                                         ("threads", old.threads, new.threads)) if a != b]
        if later:
            what = " and ".join([", ".join(later[:-1]), later[-1]] if len(later) > 1 else later)
            verb = "applies" if len(later) == 1 and later[0] != "threads" else "apply"
            self.set_status(f"{what[0].upper()}{what[1:]} {verb} after a restart of Mend")
        if (old.out_dir != self.settings.out_dir and self._listed_tree
                and self.model.folder is not None):  # (a new output folder is left out)
            self._list_folder(self.model.folder, keep=self.current)

    def _plans_for_new_settings(self) -> None:
        """Another profile: the plans the engine made for the old one are made again (a fix
        makes its plan at run time anyway; this is what the panel shows). Edited plans stay."""
        for st in self.states.values():
            if st.plan is not None and not st.plan_edited:
                st.plan_stale = True
        if self.current is not None:
            self._show_state(self.current)

    def show_about(self) -> None:
        from .dialogs.about import show_about

        show_about(self, self.device)

    # -- misc -----------------------------------------------------------------------------
    def _control_keeps(self, e: Any) -> bool:
        """Whether the key of the ShortcutOverride ``e`` goes to the focus widget rather than to
        the viewer's shortcuts (``_ControlKeys``): a control that uses it, focused from the
        keyboard (Qt marks the window so: the control shows its focus frame) - never the
        photo's canvas, whose keys the shortcuts are."""
        if e.modifiers() & ~Qt.KeyboardModifier.KeypadModifier:
            return False
        kinds = _CONTROL_KEYS.get(e.key())
        if kinds is None or not self.testAttribute(Qt.WidgetAttribute.WA_KeyboardFocusChange):
            return False
        w = QApplication.focusWidget()
        return w is not None and w is not self.canvas and isinstance(w, kinds) \
            and self.isAncestorOf(w)

    def focusNextPrevChild(self, next: bool) -> bool:
        """Tab / Shift+Tab: the next control on the screen. Qt's focus chain also holds the
        controls of a dock panel behind another's tab (Qt keeps it shown, moved off the
        window): Tab from "Fix this photo" went through the Queue panel's list and buttons out
        of sight, where space cancelled queued jobs or cleared the queue unseen; and a second
        tab bar of the docks Qt keeps off the window, with its scroll arrow. They are passed
        over (the tab bar below the panels shows the Queue)."""
        start = QApplication.focusWidget()
        for _ in range(1000):  # (the chain once round, at most)
            if not super().focusNextPrevChild(next):
                return False
            w = QApplication.focusWidget()
            if w is None or w is start or not self._behind_a_tab(w):
                return True
        return True

    def _behind_a_tab(self, w: QWidget) -> bool:
        """``w`` is out of the window's sight: in a part of the window Qt moved off it (a dock
        panel whose tab is not the one shown, a tab bar of the docks it does not use)."""
        while w is not None and not w.isWindow():  # (a floating dock is a window of its own)
            parent = w.parentWidget()
            if parent is self:
                return not self.rect().intersects(w.geometry())
            w = parent
        return False

    def set_status(self, text: str, *, photo: Path | None = None, folder: Path | None = None,
                   op: object = None) -> None:
        """Say ``text`` in the status line, in place of what it said. A message belongs to what
        it is about, and goes with it: ``photo``'s when another photo is shown or another folder
        opened; ``folder``'s when a folder is opened or listed again; ``op``'s (an operation
        under way) when ``end_status(op)`` says it ended, unless a newer message replaced it.
        Without any: it stays until the next message."""
        self._status_owner = _StatusOwner(Path(photo) if photo is not None else None,
                                          Path(folder) if folder is not None else None, op)
        self.status_label.setText(text)

    def end_status(self, op: object) -> None:
        """The operation ``op`` ended: its message goes, if it is still the one shown."""
        if op is not None and self._status_owner.op == op:
            self.set_status("")

    def _drop_status(self, *, photos: bool = False, folders: bool = False) -> None:
        """Take away a message about a photo (``photos``) or a folder (``folders``)."""
        owner = self._status_owner
        if (photos and owner.photo is not None) or (folders and owner.folder is not None):
            self.set_status("")

    def _on_mask_busy(self, op: object, photo: Path | None, busy: bool) -> None:
        if busy:
            self.set_status("Applying the mask edit at full resolution…", photo=photo, op=op)
        else:
            self.end_status(op)

    def _offer_resume(self) -> None:
        """Offer the jobs a crash left unfinished; the journals and the photos they name (on a
        disk that may be asleep, or gone) are read in the pool. Only the journals of Mends that
        are gone: another one running now keeps its own (see engine_client.orphan_journals)."""
        from .engine_client import orphan_journals, read_journal_jobs, result_since

        root, own = data_dir(), self.client.journal_path

        def read() -> dict[str, Any]:
            from .messages import describe_error

            found = orphan_journals(root, own)
            jobs: list[tuple[JobRequest, float | None]] = []
            bad, unreadable = 0, []
            for p, _lock in found:
                try:
                    js, nbad = read_journal_jobs(p)
                except (OSError, ValueError) as e:
                    # kept under another name (nothing deleted), not tripped over again
                    aside = p.with_name(p.stem + ".unreadable")
                    try:
                        os.replace(p, aside)
                    except OSError:
                        aside = p
                    why = (f"damaged or incomplete: {e}" if isinstance(e, ValueError)
                           else describe_error(e))
                    unreadable.append((aside, why))
                    continue
                jobs += js
                bad += nbad
            here, gone, done = [], [], []
            for req, queued in jobs:
                if not Path(req.path).exists():
                    gone.append(Path(req.path).name)
                    continue
                # (its result written as Mend stopped, before the journal said so: not run
                # twice)
                result = result_since(req, queued) if queued is not None else None
                if result is None:
                    here.append(req)
                else:
                    photo = Path(req.path)
                    done.append((photo, result, result_kept_original(photo, result)))
            return {"found": found, "n": len(jobs) + bad, "jobs": here, "gone": gone,
                    "bad": bad, "unreadable": unreadable, "done": done}

        self.bg.run(read, self._ask_resume, lambda _m: None)

    def _ask_resume(self, offer: dict[str, Any]) -> None:
        from .engine_client import release_journals

        found = offer["found"]
        n, jobs, gone, bad = offer["n"], offer["jobs"], offer["gone"], offer["bad"]
        done: list[tuple[Path, Path, bool]] = offer.get("done", [])
        for aside, why in offer["unreadable"]:
            self.set_status(f"The list of unfinished jobs could not be read ({why}); it was "
                            f"kept as {aside}")
        finished = ""
        if done:
            # (recorded with the photo, in case Mend stopped before its sidecar said so)
            for photo, result, kept in done:
                self._save_sidecar(photo, add_outputs=[str(result)])
                if self.model.item(photo) is not None:  # (its folder is open: --open)
                    st = self._state(photo)
                    st.output, st.kept_output = result, result if kept else None
                    st.outputs = [o for o in st.outputs if o != str(result)] + [str(result)]
                    self.model.update_item(photo, job_state=JobState.DONE, output=result,
                                           kept=kept)
            names = ", ".join(p.name for p, _r, _k in done[:5]) + ("…" if len(done) > 5 else "")
            finished = (f"The fix of {names} had finished as Mend stopped: its result is kept "
                        "and it is not run again." if len(done) == 1 else
                        f"{len(done)} fixes had finished as Mend stopped ({names}): their "
                        "results are kept and they are not run again.")
            n -= len(done)
            if not (n or gone or bad):
                self.set_status(finished)
                self.client.run_in_pool(lambda: release_journals(found, delete=True))
                return
        if not n:
            self.client.run_in_pool(lambda: release_journals(found, delete=True))
            if not self.qs.value("firstRunDone"):
                self.qs.set({"firstRunDone": True})
                # (weakly: a window closed meanwhile is neither kept nor shown a dialog)
                # (nor while it closes: the close waits for the engine's start with the event
                # loop running; the modal dialog shown then held the quit until dismissed)
                QTimer.singleShot(200, weak_slot(
                    self, lambda w: None if w._closing else w.show_models(first_run=True)))
            return
        text = f"Mend stopped with {n} unfinished job(s)." + (f" {finished}" if finished else "")
        if gone:
            names = ", ".join(gone[:5]) + ("…" if len(gone) > 5 else "")
            text += (f" {len(gone)} cannot run again: the photo was moved or deleted "
                     f"({names}).")
        if bad:
            text += f" {bad} could not be read (written by another version of Mend)."
        if not jobs:
            QMessageBox.information(self, "Unfinished jobs", text)
            self.client.run_in_pool(lambda: release_journals(found, delete=True))
            return
        r = QMessageBox.question(self, "Unfinished jobs", text + (
            " Queue them again?" if len(jobs) == n else f" Queue the other {len(jobs)} again?"))
        if r == QMessageBox.StandardButton.Yes:
            for req in jobs:  # (those whose photo is still there)
                jid = self.client.submit(req, name=self.display_name(Path(req.path)))
                self._job_path[jid] = Path(req.path)
                self._fix_ends.pop(Path(req.path), None)
            # the crash's journals go once these jobs are in this Mend's own (in the pool)
            self.client.write_journal_then(lambda: release_journals(found, delete=True))
        else:
            self.client.run_in_pool(lambda: release_journals(found, delete=True))

    def _restore_window(self) -> None:
        g = self.qs.value("window/geometry")
        s = self.qs.value("window/state")
        if isinstance(g, QByteArray):
            self.restoreGeometry(g)
        if isinstance(s, QByteArray):
            self.restoreState(s)

    def closeEvent(self, e) -> None:
        lose = self._work_to_lose() if self._own_client else 0
        if lose:
            # (what quitting does to them: a quit is not a crash, nothing is offered again -
            # the question said neither how many nor that)
            r = QMessageBox.question(
                self, "Quit Mend",
                f"Jobs are still running ({lose} queued or running). Stop them and quit? "
                "They are not offered again when Mend starts next.")
            if r != QMessageBox.StandardButton.Yes:
                e.ignore()
                return
        self._closing = True
        self._quit_token.cancel()
        models = self._open_models_dialog()
        if models is not None:  # (its status check stops: the shutdown below waits for it)
            models.close()
        self._save_unsaved_masks()  # (written in the pool, which finishes its work)
        self._save_edited_plans()
        # the layout is written in the pool too (as every setting); the shutdown below waits
        self.qs.set({"window/geometry": self.saveGeometry(), "window/state": self.saveState()})
        self.loader.new_generation()  # drops the queued thumbnails
        # the window's queued saves and exports still run (in the client's pool), but their
        # GUI callbacks are let go: they would keep the closed window alive
        self.bg.forget_pending()
        self.folder_bg.forget_pending()
        # (so are the fixes waiting for a mask write: closures over the window; a client
        # not the window's own shows the retries it held waiting no more)
        self._mask_waiters.clear()
        self._show_waiting()
        # (the running thumbnails finish: they write the cache; the window keeps painting. A
        # close asked again meanwhile is ignored by Qt: the widget is closing)
        pool = self.thumb_pool
        if wait_responsive(lambda: pool.activeThreadCount() == 0, 10000):
            pool.waitForDone(10000)  # (idle: joins its threads at once)
        if self._own_client:
            self.client.clear_journal()
            self.client.shutdown()
        # the waits above ran the window's slots: a job ending meanwhile was recorded (its
        # sidecar is written: the shutdown waited for it), and the callbacks of that work,
        # closures over the window, are let go as well
        self.bg.forget_pending()
        self.folder_bg.forget_pending()
        super().closeEvent(e)
