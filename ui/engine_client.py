"""The UI's one door to the engine.

``EngineClient`` owns one ``QThread`` in which a single ``engine.pipeline.Engine`` lives (with its
loaded models), a queue of jobs that the GUI can reorder / cancel / retry, a separate thread pool for
thumbnails and photo decoding, and one more single-thread pool for model-store work (downloads).
The engine emits no Qt: its progress callbacks and results are turned into signals here, carrying
frozen dataclasses, numpy arrays or QImages. Nothing here blocks the GUI thread.
"""
from __future__ import annotations

import enum
import filecmp
import functools
import itertools
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QCoreApplication,
    QEventLoop,
    QObject,
    QRunnable,
    QThread,
    QThreadPool,
    QTimer,
    Signal,
    Slot,
)

from engine.api import Degradation, Diagnosis, JobProgress, JobRequest, OutputOptions, Plan
from engine.errors import Cancelled, EngineError
from engine.progress import CancelToken, Progress

from .messages import describe_error

log = logging.getLogger("mend.ui.engine")

EngineFactory = Callable[[], Any]


class JobKind(str, enum.Enum):
    DIAGNOSE = "diagnose"
    RUN = "run"
    SAM = "sam"
    CALL = "call"
    # a run of part of a photo (``JobRequest.region``): no result of the photo, so not in the
    # crash journal (offered again after a crash it would be nobody's) nor the grid's badges
    PREVIEW = "preview"
    # the reflection mask the ``reflection_mask`` step's detector finds in a photo, proposed
    # in the mask editor (``EngineClient.detect_mask``): nothing is written
    DETECT = "detect"


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobInfo:
    """A snapshot of one job for the queue panel and the thumbnail badges."""

    id: int
    kind: JobKind
    path: Path | None
    state: JobState
    fraction: float = 0.0
    message: str = ""
    eta_seconds: float | None = None
    error: str = ""
    title: str = ""
    # a finished job that will run again once something happens (``EngineClient.set_waiting``:
    # a Retry waiting for its reflection mask to be written), and what: "" when none
    waiting: str = ""


@dataclass(frozen=True)
class DiagnoseOutcome:
    diagnosis: Diagnosis
    plan: Plan | None
    plan_error: str = ""
    size: tuple[int, int] | None = None  # (height, width) of the upright photo


@dataclass(frozen=True)
class ProposedMask:
    """What the ``reflection_mask`` step's detection found in a photo (``_do_detect``)."""

    mask: Any  # uint8 (H, W) of the upright photo, 255 = reflection to remove
    detector: str  # what found it, as the step records it ("builtin:glare", "reflection-yolo")
    share: float  # the part of the photo the mask covers (0-1)
    warnings: tuple[str, ...] = ()
    # the mask at the mask editor's proxy size (``editor.mask.mask_proxy``; None: its size)
    proxy: Any = None


@dataclass
class _Job:
    info: JobInfo
    payload: Any
    token: CancelToken = field(default_factory=CancelToken)
    started: float = 0.0
    retried: bool = False  # a retry was queued already: a second click adds nothing
    heard: float = 0.0  # when the engine last reported on it (started, progress)
    stall_said: float = 0.0  # when the watchdog last logged it as silent
    # when it was queued (wall clock, in the crash journal): a result of its photo written
    # since then is its own (``result_since``)
    queued_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class _Ticket:
    id: int
    kind: JobKind
    payload: Any
    token: CancelToken


def _default_factory(device: str = "auto", tile_size: int = 512) -> EngineFactory:
    def make() -> Any:
        from engine.pipeline import Engine

        return Engine(device=device, tile_size=tile_size)

    return make


class _Worker(QObject):
    """Lives in the engine thread; everything it does may be slow."""

    done = Signal(int, object)
    error = Signal(int, object)
    progressed = Signal(int, float, str, object)
    engine_ready = Signal(object)
    # CostHistory as read here, model memory figures, the optional models installed
    history = Signal(object, object, object)

    def __init__(self, factory: EngineFactory, throttle: float = 0.05) -> None:
        super().__init__()
        self._factory = factory
        self._engine: Any = None
        self._throttle = throttle
        # what the engine thread does, for the client's stall watchdog (read on the GUI
        # thread: one attribute read each): the job it runs (None between jobs), its thread
        self.current: int | None = None
        self.thread_id: int | None = None

    def engine(self) -> Any:
        if self._engine is None:
            self._engine = self._factory()
            self._read_history()  # (first: the estimates are ready when the engine is)
            self.engine_ready.emit(getattr(self._engine, "device", None))
        return self._engine

    def _read_history(self) -> None:
        """Send the step-cost history as it is on the disk now (and the models' memory figures)
        to the client, whose estimates (asked on the GUI thread, on every plan shown or edited
        and every progress update of a queue) then read no disk. Read here, where the engine's
        modules are imported: importing them in another thread at the same time failed (a
        partially initialised module)."""
        try:
            from engine.estimate import CostHistory, manifest_model_memory

            history = CostHistory.default().snapshot()  # (read now; never reads the disk again)
            memory = manifest_model_memory()
        except Exception as e:  # noqa: BLE001 - an estimate is never worth a failure
            log.warning("could not read the step-cost history: %s", str(e))
            return
        # (SAM and the YOLO slot: the mask step runs them only when installed; None, not
        # known, counts them as installed)
        installed = None
        finder = getattr(self._engine, "optional_installed", None)
        if callable(finder):
            try:
                installed = finder()
            except Exception as e:  # noqa: BLE001 - as above
                log.warning("could not tell which optional models are installed: %s", str(e))
        self.history.emit(history, memory, installed)

    @Slot(object)
    def execute(self, ticket: _Ticket) -> None:
        self.thread_id = threading.get_ident()
        self.current = ticket.id
        try:
            self._execute(ticket)
        finally:
            self.current = None

    def _execute(self, ticket: _Ticket) -> None:
        last = [0.0]
        holder: dict[str, Progress] = {}
        # weakly: the Progress (and so this callback) is handed to the engine, which may keep it
        # after the job; it must not keep this QObject alive
        me = weakref.ref(self)

        def callback(fraction: float, message: str) -> None:
            worker = me()
            if worker is None:
                return
            now = time.monotonic()
            if now - last[0] < worker._throttle and fraction < 1.0:
                return
            last[0] = now
            p = holder.get("p")
            worker.progressed.emit(ticket.id, fraction, message, p.eta_seconds() if p else None)

        progress = Progress(callback, ticket.token)
        holder["p"] = progress
        ran = False
        try:
            ticket.token.check()
            engine = self.engine()
            ran = True
            # a handler that returned has finished (a result may be on disk): a cancel that
            # came too late does not turn it into a cancelled job
            result = _HANDLERS[ticket.kind](engine, ticket.payload, progress)
        except BaseException as e:
            if not isinstance(e, Exception):
                raise
            if ran and ticket.kind in _RUNS:
                self._read_history()  # (the steps it finished recorded their times)
            self.error.emit(ticket.id, e)
            return
        if ticket.kind in _RUNS:
            self._read_history()  # (the run recorded its steps' times)
        self.done.emit(ticket.id, result)


_WARMUP_SETTLE = 0.3  # seconds the warm-up's tiny job waits for the window to settle
# a running job silent this long (no progress report) is logged with what the engine thread
# is doing then, and again after as long again: a diagnostic only, the job is left alone
STALL_SECONDS = 300.0
STALL_CHECK_MS = 30_000


def import_engine_modules() -> float:
    """Import torch, the engine facade, every restoration step and the builtin classifier in
    the calling thread; returns the seconds it took (about 0 once done). Thread-safe, never
    raises: a missing torch leaves the CPU built-ins, a broken module shows up at its first job.

    Importing torch holds the GIL through long C initialisers (~0.4 s at a time here), which
    stalls every other Python thread, the GUI thread included: main.py calls this before the
    window is shown; the engine thread's warm-up calls it again (a no-op by then).
    """
    t0 = time.perf_counter()
    try:
        import torch  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a broken torch fails with any error
        log.info("torch not importable (%s): CPU built-ins only", e)
    try:  # every specialist and classifier module: their imports (scipy, cv2...)
        import engine.pipeline
        from engine.restore.registry import all_steps
        from engine.understand.base import get_classifier

        all_steps()
        get_classifier("builtin")
        # what the first job imports lazily: the store and runtime, the plan and the guard,
        # Pillow's format plugins, and scipy's FFT (the analyzer's blur measure)
        import scipy.fft  # noqa: F401
        from PIL import Image

        import engine.models.runtime
        import engine.restore.guard
        import engine.restore.profiles  # noqa: F401

        Image.init()
    except Exception as e:  # noqa: BLE001 - a broken module shows up at its first job
        log.warning("engine modules: %s", e)
    return time.perf_counter() - t0


def _tiny_job(engine: Any) -> None:
    """Run one 64 x 48 photo through diagnose + the builtin chain in a temp folder."""
    import tempfile

    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="mend-warmup-") as tmp:
        src = Path(tmp) / "warmup.jpg"
        yy, xx = np.mgrid[0:48, 0:64]
        rgb = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)
        Image.fromarray(rgb).save(src, quality=80)
        engine.run(JobRequest(src, OutputOptions(out_dir=Path(tmp) / "out"), profile="builtin",
                              backend="builtin"), None)


def _takes_progress(fn: Any) -> bool:
    """Whether ``fn`` accepts a ``progress`` keyword (``Engine.diagnose`` does; stand-ins in
    tests and older engines may not)."""
    import inspect

    try:
        return "progress" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _do_diagnose(engine: Any, payload: dict, progress: Progress) -> DiagnoseOutcome:
    progress.update(0.05, "analysing")
    # the engine checks the job's cancel token between its stages and inside the classifier
    # (between the analyzer's measurements, before every layer of a model)
    extra = {"progress": progress.sub(0.05, 0.75)} if _takes_progress(engine.diagnose) else {}
    diagnosis = engine.diagnose(payload["path"], backend=payload.get("backend", "auto"), **extra)
    progress.update(0.8, "planning")
    plan, err = None, ""
    try:
        plan = engine.plan(diagnosis, payload.get("label"), payload.get("profile", "auto"))
    except Exception as e:  # noqa: BLE001 - a class without a chain still has a diagnosis
        err = describe_error(e)
    progress.update(1.0, "diagnosed")
    try:
        from engine.imageio import image_size

        size = image_size(payload["path"])  # header only: for the plan's estimate
    except Exception:  # noqa: BLE001 - the estimate is optional; the diagnosis stands
        size = None
    return DiagnoseOutcome(diagnosis, plan, err, size)


def _do_run(engine: Any, request: JobRequest, progress: Progress) -> Any:
    return engine.run(request, progress)


def _do_sam(engine: Any, payload: dict, progress: Progress) -> Any:
    from engine.restore import reflection  # provided by the reflection engineer

    fn = getattr(reflection, "sam_mask_from_points", None)
    if fn is None:
        raise RuntimeError("click-to-select is not available in this engine version")
    progress.update(0.1, "segmenting")
    from engine.imageio import load_photo

    photo = load_photo(payload["path"])
    pts = [(float(x), float(y)) for x, y, _ in payload["points"]]
    labels = [int(lab) for _, _, lab in payload["points"]]
    # (the job's cancel check: SAM's whole-photo resizes, 0.4 s and more at 120 MP, are
    # abandoned on a cancel, as in the reflection step)
    mask = fn(photo.pixels, pts, labels, engine.runtime, check=progress.check)
    progress.update(1.0, "selected")
    return mask


def _do_detect(engine: Any, payload: dict, progress: Progress) -> ProposedMask:
    """The ``reflection_mask`` step's detection alone, as a fix runs it (its params: the
    payload's ``step``, else the B chain of the payload's ``profile``; its detector, ``auto``:
    the YOLO slot when it holds an ONNX export, else the built-in glare detector, refined by
    SAM when installed) on the whole photo, transparent pixels filled as for a fix. Nothing is
    written; a model the detector's params choose and the store lacks fails it, as a fix."""
    from engine.errors import ModelMissing
    from engine.imageio import load_photo
    from engine.pipeline import fill_transparent
    from engine.restore.registry import StepContext, get_step

    progress.update(0.02, "loading")
    photo = load_photo(payload["path"])
    step = payload.get("step")
    if step is None:
        from engine.restore.profiles import build_plan

        profile, _notes = engine.resolve_profile(payload.get("profile", "auto"))
        step = next(s for s in build_plan(Degradation.B, profile).steps
                    if s.name == "reflection_mask")
    spec = get_step("reflection_mask")
    params = {**spec.defaults, **step.params}
    missing = engine.missing_models(Plan(Degradation.B, "", (step,)))
    if missing:
        raise ModelMissing(tuple(missing))
    if spec.requires is not None:
        spec.requires(params, False, engine.runtime)
    progress.update(0.15, "finding reflections")
    source = fill_transparent(photo.pixels, photo.alpha, progress.check)
    del photo
    ctx = StepContext(device=engine.device, progress=progress.sub(0.2, 0.8),
                      runtime=engine.runtime, tile_size=engine.tile_size)
    # (a model's loading is abandoned on a cancel, as in a fix's step)
    with engine.runtime.cancellable(progress.check):
        out = spec.fn(source, params, ctx)
    mask = ctx.mask
    share = float((mask > 127).mean()) if mask is not None and mask.size else 0.0
    from .editor.mask import mask_proxy

    # (reduced here for the editor's preview: not on the GUI thread)
    proxy = mask_proxy(mask) if mask is not None and mask.any() else None
    progress.update(1.0, f"mask covers {share:.1%}")
    return ProposedMask(mask, out.model, share, tuple(ctx.warnings), proxy)


def _do_call(engine: Any, fn: Callable[[Any, Progress], Any], progress: Progress) -> Any:
    return fn(engine, progress)


_HANDLERS: dict[JobKind, Callable[[Any, Any, Progress], Any]] = {
    JobKind.DIAGNOSE: _do_diagnose,
    JobKind.RUN: _do_run,
    JobKind.PREVIEW: _do_run,
    JobKind.SAM: _do_sam,
    JobKind.CALL: _do_call,
    JobKind.DETECT: _do_detect,
}


_RUNS = (JobKind.RUN, JobKind.PREVIEW)  # the kinds whose steps teach the cost history
# the kinds a preview runs before when they are queued (``EngineClient._queue_preview``): the
# long work of many photos, not the quick jobs the photographer waits to see
_BATCH = (JobKind.DIAGNOSE, JobKind.RUN)


def wait_responsive(done: Callable[[], bool], timeout_ms: int) -> bool:
    """Wait until ``done()`` (polled every few ms), at most ``timeout_ms``; True when done. On
    the GUI thread its pending events are processed meanwhile (timers, repaints, queued signals;
    user input is held back): a shutdown waiting for a disk or for a job slow to stop never
    freezes the window. Elsewhere, a plain poll. (No connection is made: see ``shutdown``.)"""
    deadline = time.monotonic() + max(0, timeout_ms) / 1000
    app = QCoreApplication.instance()
    gui = app is not None and QThread.currentThread() == app.thread()
    while not done():
        if time.monotonic() >= deadline:
            return False
        if gui:
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)
        time.sleep(0.004)  # (the GIL released: the threads waited for run)
    return True


def _pool_idle(pool: QThreadPool) -> bool:
    """Nothing running or queued in ``pool`` (queued work keeps a thread active)."""
    return pool.activeThreadCount() == 0


def _pools_idle(pools: tuple[QThreadPool, ...]) -> bool:
    return all(_pool_idle(p) for p in pools)


def _deliver_reports() -> bool:
    """On the GUI thread, deliver the events posted to it (what pool work reported before it
    ended: a queued signal is posted before its task ends); True there, else False."""
    app = QCoreApplication.instance()
    if app is None or QThread.currentThread() != app.thread():
        return False
    QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)
    return True


def start_in(pool: QThreadPool, fn: Callable[[], None]) -> None:
    """Run ``fn`` in ``pool`` (as a runnable that lets go of it once run, see ``_Task``)."""
    pool.start(_Task(fn))


class _Task(QRunnable):
    """A function for a thread pool; it lets go of the function once run. The Python side of a
    runnable whose C++ object the pool had deleted was seen (rarely, in the UI test suite) to
    stay alive; it must not keep what the function refers to (an engine client, a window)
    alive with it."""

    def __init__(self, fn: Callable[[], None]) -> None:
        super().__init__()
        self._fn: Callable[[], None] | None = fn
        self.setAutoDelete(True)

    def run(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()


class _ModelSignals(QObject):
    progress = Signal(str, float, str)
    done = Signal(str, object, bool)  # model id, result, was a download
    failed = Signal(str, str, bool)


class _JournalSignals(QObject):
    """What the crash journal's writes (in the pool) report back to the GUI thread."""

    journal = Signal(str)  # why the crash journal cannot be written ("": it can again)


def _emit(signal_owner: QObject, name: str, *args: Any) -> bool:
    """Emit ``signal_owner.<name>(*args)`` from a pool thread; False once the owner's C++
    object is gone (a task that outlived the client's shutdown: nobody is listening)."""
    try:
        getattr(signal_owner, name).emit(*args)
    except RuntimeError:  # Internal C++ object already deleted
        return False
    return True


# what a retry hook returns for a job to be retried later, not now (``EngineClient.retry``)
RETRY_LATER: Any = object()


def run_title(path: Path, region: tuple[int, int, int, int] | None = None,
              name: str | None = None) -> str:
    """How the queue names a fix of ``path`` (``region``: a preview of that part of it);
    ``name``: the photo's as the window's grid shows it ("100CANON/IMG_0001.JPG": two
    subfolders hold an IMG_0001.JPG), else its file name."""
    name = name or Path(path).name
    if region is None:
        return f"Fix {name}"
    x0, y0, x1, y1 = region
    return f"Preview {name} ({x1 - x0} × {y1 - y0} px)"


# engine threads that did not stop within shutdown()'s timeout: kept referenced until they end,
# so that the client's destruction does not destroy a running QThread (which aborts the app)
_STRAGGLERS: list[tuple[QThread, QObject]] = []


def _prune_stragglers() -> int:
    """Drop the stragglers whose thread has ended; returns how many still run. "Ended" is
    ``wait(0)``: ``isRunning()`` turns False as soon as the thread begins to finish, before it
    has deleted its worker (``deleteLater``); dropping the last references then (the app's
    exit) deleted the same objects from two threads at once (a crash, 1 run in 40 under load)."""
    keep = []
    for thread, worker in _STRAGGLERS:
        try:
            if not thread.wait(0):
                keep.append((thread, worker))
        except RuntimeError:  # already deleted
            continue
    _STRAGGLERS[:] = keep
    return len(keep)


def wait_for_stragglers(grace: float) -> int:
    """Wait up to ``grace`` s for the engine threads a timed-out ``shutdown`` left running (a
    job between two cancel checks: a model load, a native call) to end; returns how many still
    run. At the app's end, one still running must not meet Python's exit, which destroys its
    QThread and so aborts the process (main.py leaves with ``os._exit`` then)."""
    end = time.monotonic() + grace
    while _prune_stragglers() and time.monotonic() < end:
        time.sleep(0.01)
    return _prune_stragglers()


class EngineClient(QObject):
    """Submit / cancel / reorder / retry engine jobs; every result arrives as a signal."""

    progress = Signal(object)  # JobProgress
    finished = Signal(int, object)  # job id, DiagnoseOutcome | JobResult | np.ndarray | any
    failed = Signal(int, str)  # job id, readable message ("Cancelled." when cancelled)
    resubmitted = Signal(int, int)  # old job id, the new job id of its retry
    job_changed = Signal(object)  # JobInfo
    queue_changed = Signal()
    overall_progress = Signal(float, object)  # fraction of the current batch, eta seconds | None
    model_progress = Signal(str, float, str)  # model id, fraction, message
    model_finished = Signal(str, object)
    model_failed = Signal(str, str)
    engine_ready = Signal(object)  # DeviceInfo
    journal_problem = Signal(str)  # why unfinished jobs would not survive a crash ("": they would)
    history_changed = Signal()  # the step-cost history was read again: estimates may differ
    _dispatch = Signal(object)

    def __init__(self, factory: EngineFactory | None = None, *, journal: Path | None = None,
                 parent: QObject | None = None, thumbnail_threads: int = 2) -> None:
        super().__init__(parent)
        self._factory = factory or _default_factory()
        self._journal = journal
        self._ids = itertools.count(1)
        self._jobs: dict[int, _Job] = {}
        self._order: list[int] = []  # queued job ids in run order
        self._running: int | None = None
        self._batch_total = 0
        self._batch_done = 0
        self._durations: dict[JobKind, list[float]] = {}  # seconds of finished jobs, per kind
        # plan and size of each photo diagnosed here: what a queued run of it will cost
        self._planned: dict[Path, tuple[Plan, tuple[int, int]]] = {}
        # the faces a preview of a photo looked for (engine.pipeline.preview_face_search) and
        # found (its result's ``preview_faces``): a queued preview of it is costed with them
        self._preview_faces: dict[Path, tuple[dict[str, Any], list[list[int]]]] = {}
        self._thread = QThread()
        self._thread.setObjectName("mend-engine")
        self._worker = _Worker(self._factory)
        self._worker.moveToThread(self._thread)
        self._dispatch.connect(self._worker.execute)
        self._worker.done.connect(self._on_done)
        self._worker.error.connect(self._on_error)
        self._worker.progressed.connect(self._on_progress)
        self._worker.engine_ready.connect(self._on_engine_ready)
        self._worker.history.connect(self._on_history)
        self.device: Any = None  # DeviceInfo once the engine has started
        # engine.estimate.CostHistory as last read in the engine thread (_Worker._read_history)
        self._history: Any = None
        # what a retry sends (``set_retry_hook``); None: the same request again
        self._retry_hook: Callable[[JobInfo, Any], Any] | None = None
        self._model_memory: dict[str, int] | None = None
        self._installed: set[str] | None = None  # (the optional models: see _read_history)
        self._thread.finished.connect(self._worker.deleteLater)
        self._thread.start()
        # photo decoding and thumbnails: never on the engine thread, never on the GUI thread
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max(1, thumbnail_threads))
        # model downloads / verification: one at a time, beside the engine
        self.model_pool = QThreadPool(self)
        self.model_pool.setMaxThreadCount(1)
        self._model_signals = _ModelSignals()
        self._model_signals.progress.connect(self._on_model_progress)
        self._model_signals.done.connect(self._on_model_done)
        self._model_signals.failed.connect(self._on_model_failed)
        self._journal_signals = _JournalSignals()
        self._journal_signals.journal.connect(self.journal_problem)
        # every running / queued model task's token per id (a download and a verify of one
        # model, or a double click, are two tasks): Stop cancels them all; each task drops its
        # own when it ends (in the pool thread, hence the lock)
        self._model_tokens: dict[str, list[CancelToken]] = {}
        self._model_tokens_lock = threading.Lock()
        # downloads running or queued: model id -> [tasks, last fraction, last message]; a
        # model dialog opened meanwhile shows them
        self._downloads: dict[str, list[Any]] = {}
        self._closed = False
        # shutdown() has waited for the pools: work started in them now would never be waited
        # for (run_in_pool refuses it; model_task refuses from the shutdown's start)
        self._pools_closed = False
        self._journal_cleared = False  # a normal quit: the journal offers nothing (clear_journal)
        self._journal_seq = 0
        self._journal_written = [0]  # newest snapshot on disk (shared with the pool's writers)
        self._journal_lock = threading.Lock()
        # the QLockFile held on the journal while this client runs (taken at the first write,
        # in the pool; a crashed process's lock goes stale: see orphan_journals)
        self._journal_owner: list[Any] = []
        # [True] while the journal cannot be written (journal_problem said so once)
        self._journal_failing: list[bool] = []
        self._journal_timer = QTimer(self)
        self._journal_timer.setSingleShot(True)
        self._journal_timer.setInterval(150)
        self._journal_timer.timeout.connect(self._write_journal)
        self._watchdog = QTimer(self)  # logs a running job that stays silent (_check_stall)
        self._watchdog.setInterval(STALL_CHECK_MS)
        self._watchdog.timeout.connect(self._check_stall)
        self._watchdog.start()

    def _on_engine_ready(self, device: Any) -> None:
        self.device = device
        self.engine_ready.emit(device)

    def _on_history(self, history: Any, memory: dict[str, int], installed: Any) -> None:
        self._history, self._model_memory, self._installed = history, memory, installed
        self.history_changed.emit()

    def estimate(self, plan: Plan, size: tuple[int, int], mask: bool = False) -> Any:
        """``engine.estimate.Estimate`` of ``plan`` on a photo of ``size``, or None before the
        engine has started (``mask``: the job gives a reflection mask). Reads no disk (the
        history was read in the engine thread): fine on the GUI thread."""
        if self.device is None:
            return None
        from engine.estimate import estimate_plan

        return estimate_plan(plan, size, device_kind=self.device.kind,
                             threads=self.device.threads, history=self._history,
                             model_memory=self._model_memory, installed=self._installed,
                             mask=mask)

    # -- submitting -----------------------------------------------------------------------
    def submit(self, request: JobRequest, *, name: str | None = None) -> int:
        """Queue a restoration; returns the job id. A request with a ``region`` is a preview
        (``JobKind.PREVIEW``): queued ahead of the diagnoses and fixes (``_queue_preview``),
        cancelled and retried as any job, never journaled. ``name``: the photo's in the job's
        title (``run_title``; the window's grid names a subfolder's photo with its folder)."""
        region = getattr(request, "region", None)
        title = run_title(Path(request.path), region, name)
        if region is not None:
            return self._add(JobKind.PREVIEW, Path(request.path), request, title)
        return self._add(JobKind.RUN, Path(request.path), request, title)

    def diagnose(self, path: Path, *, backend: str = "auto", profile: str = "auto",
                 label: Degradation | None = None, name: str | None = None) -> int:
        payload = {"path": Path(path), "backend": backend, "profile": profile, "label": label}
        return self._add(JobKind.DIAGNOSE, Path(path), payload,
                         f"Diagnose {name or Path(path).name}")

    def sam_select(self, path: Path, points: list[tuple[float, float, int]], *,
                   name: str | None = None) -> int:
        """Click-to-select: points are (x, y, 1=include/0=exclude) in full-resolution pixels."""
        return self._add(JobKind.SAM, Path(path), {"path": Path(path), "points": points},
                         f"Select in {name or Path(path).name}")

    def detect_mask(self, path: Path, *, step: Any = None, profile: str = "auto",
                    name: str | None = None) -> int:
        """Find the reflections in ``path`` as a fix's ``reflection_mask`` step does (``step``:
        that step of the photo's plan, else the one of the B chain of ``profile``), for the
        mask editor; the job's result is a ``ProposedMask``. A quick job the photographer
        waits for: queued as a preview is, ahead of the diagnoses and fixes (``_queue_preview``).
        """
        payload = {"path": Path(path), "step": step, "profile": profile}
        return self._add(JobKind.DETECT, Path(path), payload,
                         f"Find reflections in {name or Path(path).name}")

    def call(self, fn: Callable[[Any, Progress], Any], title: str = "engine task", *,
             path: Path | None = None) -> int:
        """Run ``fn(engine, progress)`` in the engine thread (e.g. a re-plan); ``path``: the
        photo it is for (its retry is that photo's too, see ``resubmitted``)."""
        return self._add(JobKind.CALL, Path(path) if path is not None else None, fn, title)

    def warm_up(self) -> int:
        """Create the engine in the engine thread now, not at the first job.

        Its imports (torch above all) are best done by ``import_engine_modules`` before the
        window is shown (main.py does): importing torch holds Python's GIL for up to half a
        second at a time inside its C initialisers, which froze the shown window however the
        threads were laid out. Whatever is not imported yet is imported here, so that it stays
        out of the user's work.
        """
        def start(engine: Any, progress: Progress) -> Any:
            import_engine_modules()
            # the window's first paints run more Python than any later frame; the tiny job's
            # numpy work beside them, competing for the GIL, stretched one to ~0.2 s (measured)
            if not progress.token.cancelled:  # (a property)
                time.sleep(_WARMUP_SETTLE)
            try:
                _tiny_job(engine)  # the common path's lazy imports (PIL plugins, codecs...)
            except Exception as e:  # noqa: BLE001 - a broken module shows up at its first job
                log.warning("engine warm-up: %s", e)
            return getattr(engine, "device", None)

        return self.call(start, "Start the engine")

    def _add(self, kind: JobKind, path: Path | None, payload: Any, title: str) -> int:
        if self._closed:
            raise RuntimeError("the engine client is shut down")
        job_id = next(self._ids)
        info = JobInfo(job_id, kind, path, JobState.QUEUED, title=title)
        self._jobs[job_id] = _Job(info, payload)
        if kind in (JobKind.PREVIEW, JobKind.DETECT):
            self._queue_preview(job_id, path if kind is JobKind.PREVIEW else None)
        else:
            self._order.append(job_id)
        self._batch_total += 1
        self.job_changed.emit(info)
        self._changed()
        self._pump()
        return job_id

    def _queue_preview(self, job_id: int, path: Path | None) -> None:
        """Queue a preview where the photographer expects it: it is quick feedback on the
        part of the photo in view, so it runs next, before the diagnoses and fixes queued
        (``_BATCH``: "Diagnose all" over a folder, "Fix selected"), which it would otherwise
        wait for, behind the quick jobs asked before it (another preview, a click-select, a
        re-plan). A diagnosis of its own photo queued meanwhile is what it needs: it goes
        along, just before it, and the preview is given the diagnosis it makes
        (``_give_diagnosis``) instead of diagnosing the photo again."""
        order = self._order
        at = next((i for i, jid in enumerate(order) if self._jobs[jid].info.kind in _BATCH),
                  len(order))
        # (after the previews queued before it, and the diagnoses that went along with them)
        at = max([at] + [i + 1 for i, jid in enumerate(order)
                         if self._jobs[jid].info.kind is JobKind.PREVIEW])
        own = [jid for jid in order[at:] if self._jobs[jid].info.kind is JobKind.DIAGNOSE
               and path is not None and self._jobs[jid].info.path == path]
        for jid in own:
            order.remove(jid)
        order[at:at] = [*own, job_id]

    def _give_diagnosis(self, diagnosed: int, path: Path, diagnosis: Diagnosis) -> None:
        """The previews of ``path`` asked after the diagnosis job ``diagnosed`` was queued and
        still queued are given the diagnosis it made (what the window now sends for that
        photo): the engine neither diagnoses the photo again for them nor plans them from the
        diagnosis the photo had before."""
        for jid in self._order:
            job = self._jobs[jid]
            if jid > diagnosed and job.info.kind is JobKind.PREVIEW and job.info.path == path \
                    and isinstance(job.payload, JobRequest):
                job.payload = replace(job.payload, diagnosis=diagnosis)

    # -- queue control --------------------------------------------------------------------
    def cancel(self, job_id: int) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.info.state.finished:
            return
        job.token.cancel()
        if job_id in self._order:  # not started: drop it now
            self._order.remove(job_id)
            self._finish(job_id, JobState.CANCELLED, "Cancelled.")
            self.failed.emit(job_id, "Cancelled.")
            self._pump()
        # a running job stops at its next tile / step check (see _on_error)

    def cancel_all(self) -> None:
        for jid in list(self._order):
            self.cancel(jid)
        if self._running is not None:
            self.cancel(self._running)

    def set_retry_hook(self, hook: Callable[[JobInfo, Any], Any] | None) -> None:
        """``hook(info, payload)`` of a job retried gives what its retry sends (None: the same
        payload; ``RETRY_LATER``: nothing yet, the hook's owner retries it again once it can
        run): the window's, which leaves out a reflection mask deleted since, and retries a fix
        once the mask painted since is written."""
        self._retry_hook = hook

    def retry(self, job_id: int) -> int | None:
        """Queue a cancelled or failed job again (once): its payload, or what the retry hook
        makes of it. Returns the new job's id (None: not retried, or not yet: the hook said
        ``RETRY_LATER``)."""
        job = self._jobs.get(job_id)
        if job is None or not job.info.state.finished or job.info.state is JobState.DONE \
                or job.retried:
            return None
        payload = job.payload
        if self._retry_hook is not None:
            revised = self._retry_hook(job.info, payload)
            if revised is RETRY_LATER:
                return None
            payload = payload if revised is None else revised
        new_id = self._add(job.info.kind, job.info.path, payload, job.info.title)
        job.retried = True
        if job.info.waiting:  # (it waited for this: the new job is what is shown now)
            self.set_waiting(job_id, None)
        self.resubmitted.emit(job_id, new_id)
        return new_id

    def set_waiting(self, job_id: int, reason: str | None) -> None:
        """Mark a cancelled or failed job as waiting to run again, with ``reason`` (what it
        waits for: the queue panel shows it), or (None) not any more. A retry the retry hook
        answered ``RETRY_LATER`` is marked so by the hook's owner, and unmarked by it when it
        drops the retry; its retry unmarks it here. "Clear finished" keeps a waiting job (its
        retry would be lost)."""
        job = self._jobs.get(job_id)
        if job is None or not job.info.state.finished or job.info.state is JobState.DONE \
                or (reason and job.retried):
            return
        waiting = reason or ""
        if waiting != job.info.waiting:
            # (no job_changed: its state is as it was, and a thumbnail shows a job's state;
            # the queue panel is rebuilt, listing waiting jobs after the queued ones)
            job.info = replace(job.info, waiting=waiting)
            self.queue_changed.emit()

    def move(self, job_id: int, delta: int) -> None:
        """Move a queued job ``delta`` places (negative: earlier)."""
        if job_id not in self._order:
            return
        i = self._order.index(job_id)
        j = max(0, min(len(self._order) - 1, i + delta))
        self._order.insert(j, self._order.pop(i))
        self._changed()

    def jobs(self) -> list[JobInfo]:
        return [j.info for j in self._jobs.values()]

    def job(self, job_id: int) -> JobInfo | None:
        j = self._jobs.get(job_id)
        return j.info if j else None

    def request(self, job_id: int) -> JobRequest | None:
        """The request a fix or preview job sends the engine (None for other jobs)."""
        j = self._jobs.get(job_id)
        return j.payload if j is not None and isinstance(j.payload, JobRequest) else None

    def queued_ids(self) -> list[int]:
        return list(self._order)

    def running_id(self) -> int | None:
        return self._running

    def is_idle(self) -> bool:
        return self._running is None and not self._order

    def clear_finished(self) -> None:
        for jid in [j for j, job in self._jobs.items() if job.info.state.finished
                    and not job.info.waiting]:
            del self._jobs[jid]
        self._changed()

    # -- engine thread plumbing -----------------------------------------------------------
    def _pump(self) -> None:
        if self._running is not None or not self._order or self._closed:
            if self._running is None and not self._order:
                self._batch_total = self._batch_done = 0
            return
        job_id = self._order.pop(0)
        job = self._jobs[job_id]
        self._running = job_id
        job.started = job.heard = time.monotonic()
        self._update(job_id, state=JobState.RUNNING, message="starting")
        self._dispatch.emit(_Ticket(job_id, job.info.kind, job.payload, job.token))
        self._changed()

    @Slot(int, float, str, object)
    def _on_progress(self, job_id: int, fraction: float, message: str, eta: Any) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.info.state is not JobState.RUNNING:
            return
        job.heard = time.monotonic()
        self._update(job_id, fraction=fraction, message=message, eta_seconds=eta)
        self.progress.emit(JobProgress(job_id, fraction, message, eta))
        self._emit_overall()

    @Slot(int, object)
    def _on_done(self, job_id: int, result: Any) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            runs = self._durations.setdefault(job.info.kind, [])
            runs.append(time.monotonic() - job.started)
            del runs[:-10]
            if isinstance(result, DiagnoseOutcome) and result.plan is not None \
                    and result.size is not None and job.info.path is not None:
                self._planned.pop(job.info.path, None)
                self._planned[job.info.path] = (result.plan, result.size)
                while len(self._planned) > 5000:  # (oldest first)
                    self._planned.pop(next(iter(self._planned)))
            if isinstance(result, DiagnoseOutcome) and job.info.path is not None:
                self._give_diagnosis(job_id, job.info.path, result.diagnosis)
            self._keep_preview_faces(job, result)
        self._running = None
        self._finish(job_id, JobState.DONE, "done", fraction=1.0)
        self.finished.emit(job_id, result)
        self._pump()

    def _keep_preview_faces(self, job: _Job, result: Any) -> None:
        """Keep the faces a finished preview found in its photo (``_preview_faces``)."""
        faces = getattr(result, "artifacts", {}).get("preview_faces") \
            if job.info.kind is JobKind.PREVIEW and job.info.path is not None else None
        if faces is None:
            return
        try:
            from engine.pipeline import preview_face_search

            search = preview_face_search(result.plan)
        except Exception as e:  # noqa: BLE001 - an estimate is never worth a failure
            log.debug("preview faces of %s not kept: %s", job.info.path, e)
            return
        if search is not None:
            self._preview_faces.pop(job.info.path, None)
            self._preview_faces[job.info.path] = (search, faces)
            while len(self._preview_faces) > 500:  # (oldest first)
                self._preview_faces.pop(next(iter(self._preview_faces)))

    @Slot(int, object)
    def _on_error(self, job_id: int, exc: BaseException) -> None:
        cancelled = isinstance(exc, Cancelled)
        msg = describe_error(exc)
        self._running = None
        self._finish(job_id, JobState.CANCELLED if cancelled else JobState.FAILED, msg)
        self.failed.emit(job_id, msg)
        self._pump()

    def _check_stall(self) -> None:
        """Log the running job when the engine has said nothing of it for ``STALL_SECONDS``
        (again after as long again), with the engine thread's stack: where a job that seems
        to hang is. Its end having been lost (the engine thread runs no job, or another) is an
        error. Nothing is cancelled or changed: a long native call (one model pass on a big
        tile) is silent too."""
        jid = self._running
        job = self._jobs.get(jid) if jid is not None else None
        if job is None:
            return
        now = time.monotonic()
        silent = now - job.heard
        if silent < STALL_SECONDS or (job.stall_said and now - job.stall_said < STALL_SECONDS):
            return
        job.stall_said = now
        worker = self._worker
        frame = sys._current_frames().get(worker.thread_id) if worker.thread_id else None
        where = "".join(traceback.format_stack(frame)) if frame is not None else "(not known)\n"
        busy = worker.current
        if busy == jid:
            log.warning("job %d (%s) has reported nothing for %.0f s (running %.0f s); the "
                        "engine thread is at:\n%s", jid, job.info.title, silent,
                        now - job.started, where.rstrip())
        else:
            log.error("job %d (%s) is shown running for %.0f s but the engine thread runs %s: "
                      "its end was lost; the engine thread is at:\n%s", jid, job.info.title,
                      now - job.started, "no job" if busy is None else f"job {busy}",
                      where.rstrip())

    def _finish(self, job_id: int, state: JobState, message: str, fraction: float | None = None
                ) -> None:
        kw: dict[str, Any] = {"state": state, "message": message, "eta_seconds": None}
        if state is not JobState.DONE:
            kw["error"] = message
        if fraction is not None:
            kw["fraction"] = fraction
        self._update(job_id, **kw)
        self._batch_done += 1
        self._emit_overall()
        self._changed()

    def _update(self, job_id: int, **kw: Any) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return
        job.info = replace(job.info, **kw)
        self.job_changed.emit(job.info)

    def _emit_overall(self) -> None:
        total = max(1, self._batch_total)
        cur = 0.0
        eta: float | None = None
        if self._running is not None:
            info = self._jobs[self._running].info
            cur = info.fraction
            eta = info.eta_seconds
        frac = min(1.0, (self._batch_done + cur) / total)
        if self._order:
            queued = 0.0
            for jid in self._order:
                cost = self._expected_seconds(self._jobs[jid])
                if cost is None:
                    queued = None
                    break
                queued += cost
            eta = None if queued is None else (eta or 0.0) + queued
        self.overall_progress.emit(frac, eta)

    def _expected_seconds(self, job: _Job) -> float | None:
        """What a queued job will take: a run of a photo whose plan and size are known, its
        plan's estimate (engine.estimate: history here, else reference figures); else the
        average of the last jobs of the same kind (a diagnosis costs nothing like a run)."""
        if job.info.kind in _RUNS and self.device is not None:
            req = job.payload
            planned = self._planned.get(Path(req.path))
            plan = req.plan or (planned[0] if planned else None)
            if plan is not None and planned is not None:
                size = planned[1]
                try:
                    if job.info.kind is JobKind.PREVIEW:
                        size = self._preview_size(req.path, plan, req.region, size)
                    est = self.estimate(plan, size, req.mask_path is not None)
                except Exception as e:  # noqa: BLE001 - an estimate is never worth a failure
                    log.debug("no estimate for %s: %s", req.path, e)
                    est = None
                if est is not None and est.seconds is not None:
                    return float(est.seconds)
        runs = self._durations.get(job.info.kind)
        return sum(runs) / len(runs) if runs else None

    def _preview_size(self, path: Path, plan: Plan, region: Any, size: tuple[int, int]
                      ) -> tuple[int, int]:
        """(height, width) of the part a preview of ``region`` of the photo ``path`` (of
        ``size``) will run its steps on: its region and margin, grown to hold the faces reaching
        the region for a plan that upscales before its face step (``pipeline.preview_part``).
        The faces are only known by looking for them, which the engine does when the preview
        runs (not here, on the GUI thread): they are counted when an earlier preview of the
        photo, looking for them alike, reported them; else the part counted is the region and
        its margin (less than the run may process)."""
        from engine.pipeline import check_region, preview_face_search, preview_part

        known = self._preview_faces.get(Path(path))
        faces = known[1] if known is not None and known[0] == preview_face_search(plan) \
            else None
        x0, y0, x1, y1 = preview_part(check_region(region, size)[0], size, faces)
        return y1 - y0, x1 - x0

    def _changed(self) -> None:
        self.queue_changed.emit()
        if not self._closed and self._journal is not None and not self._journal_timer.isActive():
            self._journal_timer.start()  # coalesce: one write for a burst of queue changes

    @property
    def journal_path(self) -> Path | None:
        """This client's crash journal (None: none kept)."""
        return self._journal

    def clear_journal(self) -> None:
        """A normal quit: nothing to offer again on the next start (the jobs queued now are
        not journaled any more). The journal is deleted in the pool, never on the GUI thread;
        ``shutdown`` waits for it."""
        self._journal_cleared = True
        self._journal_timer.stop()
        self._write_journal()

    # -- crash journal --------------------------------------------------------------------
    def _write_journal(self, wait: bool = False, then: Callable[[], None] | None = None,
                       priority: int = 0) -> None:
        """Snapshot the unfinished RUN jobs here; write (with fsync) in the pool, then call
        ``then`` there (also when there is no journal or the write failed). ``wait``: write
        in this thread instead (never the GUI thread's way: see ``shutdown``)."""
        journal = self._journal
        if journal is None:
            if then is not None:
                self.pool.start(_Task(then), priority)
            return
        pending = [] if self._journal_cleared else [
            self._jobs[i] for i in ([self._running] if self._running else []) + self._order
            if i in self._jobs]
        entries = [dict(request_to_json(j.payload), queued_at=j.queued_at) for j in pending
                   if j.info.kind is JobKind.RUN]
        data = json.dumps({"version": 1, "jobs": entries}, indent=1).encode() if entries else None
        self._journal_seq += 1
        seq = self._journal_seq
        lock = self._journal_lock
        written = self._journal_written  # (not self: a queued write never holds the client)
        owner = self._journal_owner
        failing, sig = self._journal_failing, self._journal_signals

        def write() -> None:
            try:
                _write_locked()
            finally:
                if then is not None:
                    then()

        def _write_locked() -> None:
            with lock:
                if seq < written[0]:
                    return  # a newer snapshot is already on disk
                written[0] = seq
                try:
                    from engine.imageio import atomic_write_bytes

                    if data is None:
                        journal.unlink(missing_ok=True)
                    else:
                        # first the journal's lock: another Mend running meanwhile (same user
                        # data folder) sees that this journal's jobs are not a crash's (taken
                        # again once its folder can be made: a failed first try held none)
                        if not owner or owner[0] is None:
                            owner[:] = [_lock_journal(journal)]
                        atomic_write_bytes(journal, data)
                except (OSError, EngineError) as e:  # atomic_write_bytes raises SaveFailed
                    # (the text only: the exception's traceback reaches the client's frames)
                    log.warning("could not write the queue journal %s: %s", journal, str(e))
                    if data is not None and not failing:  # said once, not at every write
                        failing.append(True)
                        _emit(sig, "journal", str(e) or type(e).__name__)
                    return
                if data is not None and failing:  # written again
                    failing.clear()
                    _emit(sig, "journal", "")

        if wait:
            write()
        else:
            self.pool.start(_Task(write), priority)

    def flush_journal(self) -> None:
        """Write the journal now, synchronously in the calling thread (a disk wait: not for
        the GUI thread; ``shutdown`` writes its last snapshot in the pool)."""
        self._journal_timer.stop()
        self._write_journal(wait=True)

    def write_journal_then(self, fn: Callable[[], None]) -> None:
        """Write the journal in the pool now, then run ``fn`` there (e.g. delete the journal of
        a crash whose jobs were just queued here again: never before they are in this one)."""
        self._journal_timer.stop()
        self._write_journal(then=fn)

    # -- model store (downloads never run on the engine thread or the GUI thread) -----------
    def model_task(self, model_id: str, fn: Callable[[Callable[[float, str], None], CancelToken],
                                                     Any], *, download: bool = False) -> None:
        """Run ``fn(report, token)`` in the model pool; ``report(fraction, message)``.
        ``download``: the task downloads ``model_id`` (listed by ``model_downloads`` until it
        ends, with its last progress). Refused (``RuntimeError``) once ``shutdown`` has begun:
        it cancels the model tasks, and one queued after would run on (a whole download)
        while the shutdown waits, or never."""
        if self._closed:
            raise RuntimeError(f"the engine client is shut down: the model task for "
                               f"{model_id!r} was not started")
        token = CancelToken()
        tokens, lock = self._model_tokens, self._model_tokens_lock
        with lock:
            tokens.setdefault(model_id, []).append(token)
        if download:
            entry = self._downloads.setdefault(model_id, [0, 0.0, ""])
            entry[0] += 1
        sig = self._model_signals  # (not self: a queued task never holds the client)

        def report(fraction: float, message: str = "") -> None:
            _emit(sig, "progress", model_id, float(fraction), message)

        def work() -> None:
            try:
                try:
                    result = fn(report, token)
                finally:
                    with lock:
                        mine = tokens.get(model_id, [])
                        if token in mine:
                            mine.remove(token)
                        if not mine:
                            tokens.pop(model_id, None)
            except Exception as e:  # noqa: BLE001
                _emit(sig, "failed", model_id, describe_error(e), download)
                return
            _emit(sig, "done", model_id, result, download)

        self.model_pool.start(_Task(work))

    def cancel_model_task(self, model_id: str) -> None:
        """Stop every task of ``model_id`` (a download, a verify...)."""
        with self._model_tokens_lock:
            toks = list(self._model_tokens.get(model_id, ()))
        for tok in toks:
            tok.cancel()

    def model_downloads(self) -> dict[str, tuple[float, str]]:
        """Downloads running or queued now: model id -> (last fraction, last message)."""
        return {mid: (e[1], e[2]) for mid, e in self._downloads.items()}

    def _on_model_progress(self, model_id: str, fraction: float, message: str) -> None:
        entry = self._downloads.get(model_id)
        if entry is not None:
            entry[1], entry[2] = fraction, message
        self.model_progress.emit(model_id, fraction, message)

    def _model_ended(self, model_id: str, download: bool) -> None:
        entry = self._downloads.get(model_id) if download else None
        if entry is not None:
            entry[0] -= 1
            if entry[0] <= 0:
                del self._downloads[model_id]

    def _on_model_done(self, model_id: str, result: Any, download: bool) -> None:
        self._model_ended(model_id, download)
        self.model_finished.emit(model_id, result)

    def _on_model_failed(self, model_id: str, message: str, download: bool) -> None:
        self._model_ended(model_id, download)
        self.model_failed.emit(model_id, message)

    def run_in_pool(self, fn: Callable[[], None]) -> None:
        """Decode / save work off the GUI thread (the thumbnail pool). Work started while
        ``shutdown`` waits (a finished job's sidecar) is waited for; once it has waited for the
        pools it is refused (``RuntimeError``): nothing would wait for it (a save cut short by
        the program's exit) and the pool goes with the client."""
        if self._pools_closed:
            raise RuntimeError("the engine client is shut down: no more work can be run in "
                               "its pool")
        self.pool.start(_Task(fn))

    # -- shutdown -------------------------------------------------------------------------
    def shutdown(self, timeout_ms: int = 30000) -> None:
        """Cancel everything, stop the engine thread and wait for the pools. Idempotent.

        The journal's last snapshot (the unfinished jobs, as they were before this cancelled
        them; none after ``clear_journal``) is written in the pool, after every write queued
        before it, and its lock released there. The waits here (for the running job to stop,
        for the pools, so for that write too) keep the GUI thread's events processed
        (``wait_responsive``; only the end of the idle engine thread is waited for plainly, an
        instant): no disk is touched on this thread, the window does not freeze, and the
        journal is on the disk (fsync'd) when this returns, unless a wait took longer than
        ``timeout_ms``."""
        if self._closed:
            return
        self._journal_timer.stop()
        self._watchdog.stop()
        lock, owner = self._journal_lock, self._journal_owner

        def release() -> None:  # (in the pool: QLockFile.unlock deletes the lock file)
            with lock:  # (the journal stays when jobs were left: a later start's)
                for lf in owner:
                    if lf is not None:
                        lf.unlock()
                owner.clear()

        # (first in the queue: writes queued before it that have not run are older, skipped)
        self._write_journal(then=release, priority=3_000_000)
        journal, self._journal = self._journal, None  # keep unfinished jobs in the journal
        self.cancel_all()
        self._journal = journal
        self._closed = True
        with self._model_tokens_lock:
            toks = [t for ts in self._model_tokens.values() for t in ts]
        for tok in toks:
            tok.cancel()
        # queued pool work is NOT dropped: it is the windows' sidecar / mask saves, exports and
        # journal writes (short), and dropping one loses what the photographer did
        self.model_pool.clear()
        # the running job stops at its next cancel check (a tile may take seconds): waited for
        # with the event loop running. Then the engine thread, idle, ends at once: that end is
        # waited for with the GIL released and no Python run here, as the thread deletes the
        # worker holding Qt's locks of the objects connected to it while it takes the GIL (an
        # emit or a connect here meanwhile, holding the GIL, could wait for one: a deadlock)
        idle = wait_responsive(lambda: self._running is None, timeout_ms)
        self._thread.quit()
        _prune_stragglers()
        if not self._thread.wait(timeout_ms if idle else 0):
            log.error("the engine thread did not stop within %d ms", timeout_ms)
            # destroying a running QThread aborts the process: keep it (and its worker) until
            # it ends; the engine drops the job at its next cancel check
            _STRAGGLERS.append((self._thread, self._worker))
        # (both at once, and again when what their tasks reported before they ended - queued
        # signals, delivered here - queues more, e.g. a save once a model task has ended: that
        # is waited for too; from here on no work is taken)
        pools = (self.pool, self.model_pool)
        deadline = time.monotonic() + timeout_ms / 1000

        def left_ms() -> int:
            return max(0, round((deadline - time.monotonic()) * 1000))

        idle = wait_responsive(functools.partial(_pools_idle, pools), timeout_ms)
        while idle and _deliver_reports() and not _pools_idle(pools):
            idle = wait_responsive(functools.partial(_pools_idle, pools), left_ms())
        self._pools_closed = True
        for pool in pools:
            if idle:
                pool.waitForDone(timeout_ms)  # (idle: joins its threads at once)
            elif not _pool_idle(pool):
                log.error("the engine client's pool did not finish within %d ms", timeout_ms)


# -- JobRequest <-> JSON (the crash journal) -------------------------------------------------
def request_to_json(r: JobRequest) -> dict[str, Any]:
    o = r.output
    return {
        "path": str(r.path),
        "output": {"out_dir": str(o.out_dir) if o.out_dir else None, "format": o.format,
                   "quality": o.quality, "bit_depth": o.bit_depth,
                   "keep_metadata": o.keep_metadata, "suffix": o.suffix},
        "label": r.label.value if r.label else None,
        "plan": r.plan.to_json() if r.plan else None,
        "profile": r.profile, "device": r.device, "backend": r.backend,
        "mask_path": str(r.mask_path) if r.mask_path else None,
        "diagnosis": r.diagnosis.to_json() if r.diagnosis else None,
        "guard": r.guard,
        "region": list(r.region) if r.region is not None else None,
    }


def request_from_json(d: dict[str, Any]) -> JobRequest:
    o = d.get("output") or {}
    out = OutputOptions(out_dir=Path(o["out_dir"]) if o.get("out_dir") else None,
                        format=o.get("format"), quality=int(o.get("quality", 95)),
                        bit_depth=o.get("bit_depth"), keep_metadata=bool(o.get("keep_metadata", True)),
                        suffix=o.get("suffix", "_mend"))
    return JobRequest(
        path=Path(d["path"]), output=out,
        label=Degradation(d["label"]) if d.get("label") else None,
        plan=Plan.from_json(d["plan"]) if d.get("plan") else None,
        profile=d.get("profile", "auto"), device=d.get("device", "auto"),
        backend=d.get("backend", "auto"),
        mask_path=Path(d["mask_path"]) if d.get("mask_path") else None,
        diagnosis=Diagnosis.from_json(d["diagnosis"]) if d.get("diagnosis") else None,
        guard=bool(d.get("guard", True)),
        region=tuple(int(v) for v in d["region"]) if d.get("region") else None,
    )


def read_journal_jobs(path: Path) -> tuple[list[tuple[JobRequest, float | None]], int]:
    """The jobs in a journal, each with when it was queued (None: not recorded, an earlier
    version's journal), and how many of its entries could not be read (another version's,
    damaged). Raises OSError (unreadable) or ValueError (not a journal: truncated, corrupt)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    jobs_json = data.get("jobs", []) if isinstance(data, dict) else None
    if not isinstance(jobs_json, list):
        raise ValueError("not a list of Mend jobs")  # noqa: TRY004 - read as damaged
    jobs, bad = [], 0
    for j in jobs_json:
        try:
            queued = j.get("queued_at")
            jobs.append((request_from_json(j),
                         float(queued) if isinstance(queued, (int, float)) else None))
        except Exception as e:  # noqa: BLE001 - one entry of another version: the others stand
            log.warning("journal %s: skipping an entry that cannot be read: %s", path, str(e))
            bad += 1
    return jobs, bad


def read_journal_entries(path: Path) -> tuple[list[JobRequest], int]:
    """The jobs in a journal and how many of its entries could not be read (another version's,
    damaged). Raises OSError (unreadable) or ValueError (not a journal: truncated, corrupt)."""
    jobs, bad = read_journal_jobs(path)
    return [request for request, _queued in jobs], bad


def result_since(request: JobRequest, since: float) -> Path | None:
    """The result of the fix ``request`` on the disk, written at ``since`` (when the job was
    queued: wall clock) or later - what a crash left unsaid: the journal drops a finished job
    a moment after the result is written, so a crash in between offered that fix again, and
    ran it twice (``IMG_mend_1.jpg``). A file of the request's output folder named as the
    engine names the photo's results (``<stem><suffix>``, then ``_1``, ``_2``... when taken;
    any format) that is Mend's result of this very photo (its record's source has the photo's
    size and SHA-256) or the photo's own bytes (nothing to fix, the original kept). None: none
    (or it cannot be told). Reads the disk: off the GUI thread."""
    from engine.imageio import file_sha256, mend_record

    photo = Path(request.path)
    options = request.output
    folder = Path(options.out_dir) if options.out_dir else photo.parent
    named = re.compile(re.escape(f"{photo.stem}{options.suffix}") + r"(_\d+)?\.[^.]+")
    digest: str | None = None
    try:
        size = photo.stat().st_size
        entries = sorted((e for e in os.scandir(folder) if named.fullmatch(e.name)),
                         key=lambda e: e.name)
        for e in entries:
            st = e.stat()
            if not e.is_file() or st.st_mtime < since:
                continue  # (written before the job was queued: an earlier fix's)
            record = mend_record(e.path)
            if record is None:  # (kept as it was: the photo's bytes)
                if st.st_size == size and filecmp.cmp(e.path, photo, shallow=False):
                    return Path(e.path)
                continue
            source = record.get("source")
            if record.get("kind") == "mask" or not isinstance(source, dict) \
                    or source.get("size") != size:
                continue
            digest = digest or file_sha256(photo)
            if source.get("sha256") == digest:
                return Path(e.path)
    except (OSError, ValueError):
        return None
    return None


UNCHANGED_PROBE = 64 * 1024  # the bytes compared of a result without a record and its photo


def result_kept_original(photo: Path, output: Path) -> bool:
    """Whether ``output``, a result Mend wrote of ``photo`` (its sidecar or the crash journal
    says so), is the photo as it was - nothing to fix, or the regression guard kept the
    original -, from the file itself, as another session sees it: its record says so
    (``kept_original``), or it carries none and holds the photo's bytes (Mend copies them then,
    with no record; any result it writes otherwise carries its record: the same size and first
    ``UNCHANGED_PROBE`` bytes tell that copy, without reading a big photo twice). False when it
    cannot be told. Reads the disk: off the GUI thread."""
    from engine.imageio import mend_record

    try:
        record = mend_record(output)
        if record is not None:
            return record.get("kind") != "mask" and record.get("kept_original") is True
        if os.path.getsize(output) != os.path.getsize(photo):
            return False
        with open(output, "rb") as a, open(photo, "rb") as b:
            return a.read(UNCHANGED_PROBE) == b.read(UNCHANGED_PROBE)
    except (OSError, ValueError):
        return False


def read_journal(path: Path) -> list[JobRequest]:
    """Unfinished jobs left by a crash (empty when none or unreadable)."""
    try:
        return read_journal_entries(path)[0]
    except (OSError, ValueError):
        return []


JOURNALS = "journals"  # (in the user data folder) one journal per running Mend
LEGACY_JOURNAL = "queue.json"  # the one journal of earlier versions


def new_journal_path(root: Path) -> Path:
    """A journal of this app instance's own, in ``root``: two Mends running at once (one user
    data folder) never write over each other's (nothing is written here)."""
    return Path(root) / JOURNALS / f"queue-{os.getpid()}-{secrets.token_hex(4)}.json"


def _lock_journal(journal: Path) -> Any:
    """A QLockFile held on ``journal`` (``<journal>.lock``), or None when a running process
    holds it. The lock of a process that died (a crash, kill -9) is stale and taken over."""
    from PySide6.QtCore import QLockFile

    try:
        Path(journal).parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    lf = QLockFile(os.fspath(journal) + ".lock")
    lf.setStaleLockTime(0)  # stale only when its process is gone, however long it ran
    return lf if lf.tryLock(0) else None


def orphan_journals(root: Path, own: Path | None = None) -> list[tuple[Path, Any]]:
    """The journals in ``root`` left by Mend processes that are gone (not ``own``, nor one a
    running Mend holds), each with its lock, held now: release with ``release_journals``."""
    root = Path(root)
    try:
        found = sorted((root / JOURNALS).glob("queue-*.json"))
    except OSError:
        found = []
    found.insert(0, root / LEGACY_JOURNAL)
    out = []
    for p in found:
        if own is not None and os.path.abspath(p) == os.path.abspath(own):
            continue
        if not p.is_file():
            continue
        lf = _lock_journal(p)
        if lf is not None:
            out.append((p, lf))
    return out


def release_journals(found: list[tuple[Path, Any]], delete: bool) -> None:
    """Let go of journals found by ``orphan_journals`` (deleting them when ``delete``)."""
    for p, lf in found:
        if delete:
            try:
                p.unlink(missing_ok=True)
            except OSError as e:
                log.warning("could not delete the journal %s: %s", p, e)
        if lf is not None:
            lf.unlock()
