"""UI test fixtures: offscreen Qt, isolated settings/data/cache folders, small photo folders,
and a guard that FAILS any test leaving a QThread (or a pool thread) running, or leaving a
MainWindow / EngineClient / MaskDocument it built alive once the test's references are gone
(a reference cycle: freed only by the garbage collector, or not at all). The keys and mouse
buttons QTest leaves held in the application's input state are released after each test."""
from __future__ import annotations

import contextlib
import gc
import os
import weakref
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QCoreApplication, QEvent, Qt, QThread, QThreadPool
from PySide6.QtGui import QGuiApplication
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QMessageBox, QWidget

from ui.editor.mask import MaskDocument
from ui.engine_client import EngineClient
from ui.main_window import MainWindow

_threads: weakref.WeakSet[QThread] = weakref.WeakSet()
_pools: weakref.WeakSet[QThreadPool] = weakref.WeakSet()
_orig_thread_start = QThread.start
_orig_pool_start = QThreadPool.start


def _tracked_thread_start(self, *a, **kw):
    _threads.add(self)
    return _orig_thread_start(self, *a, **kw)


def _tracked_pool_start(self, *a, **kw):
    _pools.add(self)
    return _orig_pool_start(self, *a, **kw)


QThread.start = _tracked_thread_start  # type: ignore[method-assign]
QThreadPool.start = _tracked_pool_start  # type: ignore[method-assign]

# every MainWindow / EngineClient / MaskDocument built (weakly). Once dropped (and, for widgets,
# closed and deleteLater()'d) each must be freed at once, by reference counting. One kept alive
# from C++ (a lambda capturing self connected to a signal) is never freed; one in a plain Python
# cycle is freed by the garbage collector, whose clearing of the cycle deletes C++ objects (an
# undo stack and its commands) under the collector's feet: the end-of-run segfault.
_owners: weakref.WeakSet = weakref.WeakSet()


def _track_construction(cls: type) -> None:
    init = cls.__init__

    def tracked_init(self, *a, **kw):
        init(self, *a, **kw)
        _owners.add(self)

    cls.__init__ = tracked_init  # type: ignore[method-assign]


_track_construction(MainWindow)
_track_construction(EngineClient)
_track_construction(MaskDocument)


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_CALL_FAILED] = True
    return report


def _leftover_owners() -> tuple[list[str], list[str]]:
    """(alive once deleteLater() has run, still alive after gc.collect()) by type name."""
    if not _owners:
        return [], []
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)  # qtbot's deleteLater()
    cyclic = sorted(type(o).__name__ for o in list(_owners))
    if not cyclic:
        return [], []
    gc.collect()
    return cyclic, sorted(type(o).__name__ for o in list(_owners))


def _pool_name(pool: QThreadPool) -> str:
    """Which pool: its owner's attribute (``EngineClient.pool``), and whether that client was
    shut down already (work started after its ``shutdown()``, which nobody waits for)."""
    owner = pool.parent()
    found = getattr(owner, "__dict__", {}).items() if owner is not None else ()
    attr = next((k for k, v in found if v is pool), None)
    name = f"{type(owner).__name__}.{attr or '?'}" if owner is not None else repr(pool)
    if getattr(owner, "_closed", False):
        name += " (started after its client's shutdown())"
    return name


_BUTTONS = (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton, Qt.MouseButton.MiddleButton,
            Qt.MouseButton.BackButton, Qt.MouseButton.ForwardButton)


def _held_input() -> tuple[Qt.KeyboardModifier, Qt.MouseButton]:
    return QGuiApplication.keyboardModifiers(), QGuiApplication.mouseButtons()


def _release_held_input() -> None:
    """Release the modifiers and mouse buttons the application believes held.

    Qt takes them from the last event QTest sends (QApplication::notify records a synthetic
    event's modifiers and buttons as the application's): ``keyClick(w, key, Ctrl | Shift)`` ends
    on Shift's release, which QTest sends carrying Shift, so Shift stays "held" for
    every later test until some test sends another key or mouse event (Alt and Meta alike; a
    ``mousePress`` without its release leaves its button). A table's ``selectRow`` with Shift
    held extends a selection from an anchor there is none of, and selects nothing: a Models
    dialog's Stop, acting on the selected rows, then stopped no verify (test_ui_s13b's
    ``test_stop_stops_a_verify`` timed out after test_flow's Ctrl+Shift+Z)."""
    mods, buttons = _held_input()
    if mods == Qt.KeyboardModifier.NoModifier and buttons == Qt.MouseButton.NoButton:
        return
    sink = QWidget()  # (never shown: what these events reach does nothing with them)
    if mods != Qt.KeyboardModifier.NoModifier:
        QTest.keyRelease(sink, Qt.Key.Key_Shift)  # (its modifiers: none)
    for b in _BUTTONS:
        if buttons & b:
            QTest.mouseRelease(sink, b)
    del sink


@pytest.fixture(autouse=True)
def no_held_keys(qapp):
    """Every test starts with no key nor mouse button held in Qt's input state (see
    ``_release_held_input``): what one test's QTest events leave changes what the next test's
    clicks and selections do."""
    yield
    _release_held_input()
    mods, buttons = _held_input()
    if mods != Qt.KeyboardModifier.NoModifier or buttons != Qt.MouseButton.NoButton:
        pytest.fail(f"could not release what the test left held: {mods}, {buttons}")


@pytest.fixture(autouse=True)
def no_leftover_threads(qapp, request):
    """Fail the test if it leaves a QThread running or a thread pool busy, or if a MainWindow /
    EngineClient / MaskDocument it built outlives the test's references to it."""
    _owners.clear()  # only what this test builds counts
    yield
    qapp.processEvents()
    running = []
    for t in list(_threads):
        try:
            if t.isRunning():
                running.append(t.objectName() or repr(t))
        except RuntimeError:  # C++ object already deleted: not running
            continue
    busy, named = [], []
    for p in list(_pools):
        try:
            if p.activeThreadCount() > 0:
                busy.append(p)
                named.append(_pool_name(p))
        except RuntimeError:
            continue
    if running or busy:
        for t in list(_threads):  # stop them so the next test starts clean
            try:
                t.quit()
                t.wait(5000)
            except RuntimeError:
                pass
        for p in busy:
            p.waitForDone(5000)
        pytest.fail(f"test left threads running: QThreads {running}, busy pools {named}")
    if request.node.stash.get(_CALL_FAILED, False):
        _owners.clear()  # the failure's traceback keeps the test's locals: no leak check
        return
    # the test's fixture values stay referenced from item.funcargs until pytest's own teardown
    # ends (pytest drops them right after): drop them now, so only a real leak keeps one alive
    if isinstance(getattr(request.node, "funcargs", None), dict):
        request.node.funcargs.clear()
    cyclic, alive = _leftover_owners()  # (after the threads: never collect a running QThread)
    _owners.clear()  # reported here, not again by the next test
    if alive:
        pytest.fail(f"test left {alive} alive even after gc.collect(): something (e.g. a lambda "
                    "capturing self, connected to a signal) keeps them; use ui.app.weak_slot")
    if cyclic:
        pytest.fail(f"test left {cyclic} in a reference cycle, freed only by the garbage "
                    "collector (which then deletes Qt objects mid-collection: a crash risk)")


@pytest.fixture(autouse=True)
def isolated_ui_dirs(tmp_path, monkeypatch):
    """Settings, data (journal, sidecar fallback, logs) and thumbnail cache in tmp."""
    monkeypatch.setenv("MEND_UI_SETTINGS", str(tmp_path / "ui-settings.ini"))
    monkeypatch.setenv("MEND_UI_DATA_DIR", str(tmp_path / "ui-data"))
    monkeypatch.setenv("MEND_UI_CACHE_DIR", str(tmp_path / "ui-cache"))
    yield tmp_path


def write_photo(path: Path, w: int = 96, h: int = 64, seed: int = 0, kind: str = "smooth"
                ) -> Path:
    """A small synthetic photo (smooth gradients + shapes), saved with PIL."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w, yy / h, 0.5 + 0.4 * np.sin(xx / 7.0 + seed)], -1)
    cx, cy = rng.integers(w // 4, 3 * w // 4), rng.integers(h // 4, 3 * h // 4)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < (min(w, h) / 5) ** 2] = rng.random(3)
    if kind == "noisy":
        img = img + rng.normal(0, 0.08, img.shape)
    arr = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=92) if path.suffix.lower() in (".jpg", ".jpeg") \
        else Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    d = tmp_path / "photos"
    for i in range(6):
        write_photo(d / f"photo_{i:02d}.{'jpg' if i % 2 else 'png'}", seed=i,
                    kind="noisy" if i % 3 == 0 else "smooth")
    (d / "notes.txt").write_text("not a photo")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return d


@pytest.fixture
def pool():
    """A two-thread pool for a loader's thumbnails, emptied and finished at the test's end."""
    p = QThreadPool()
    p.setMaxThreadCount(2)
    yield p
    p.clear()
    p.waitForDone(10000)


@contextlib.contextmanager
def built_window(qtbot, tmp_path, *, sidecars_beside_photos: bool = True, **settings):
    """A main window on the built-in engine (analyzer + builtin profile), results in tmp/out,
    with ``settings`` (AppSettings fields) on top; closed, its engine shut down, on exit."""
    from ui.engine_client import EngineClient
    from ui.main_window import MainWindow
    from ui.settings import AppSettings

    client = EngineClient(journal=tmp_path / "ui-data" / "queue.json")
    chosen = AppSettings(backend="builtin", profile="builtin", out_dir=str(tmp_path / "out"),
                         **settings)
    win = MainWindow(client, chosen, ask_resume=False,
                     sidecars_beside_photos=sidecars_beside_photos)
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    try:
        yield win
    finally:
        win.close()
        client.shutdown()


@pytest.fixture
def window(qtbot, tmp_path):
    with built_window(qtbot, tmp_path) as win:
        yield win


@pytest.fixture
def answered_yes(monkeypatch) -> list[str]:
    """Every question is answered Yes (its text kept); not a first run (no Models dialog)."""
    from ui.settings import qsettings

    qs = qsettings()
    qs.setValue("firstRunDone", True)
    qs.sync()
    asked: list[str] = []

    def question(parent, title, text, *a, **kw):
        asked.append(text)
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    return asked


@pytest.fixture
def held_steps(monkeypatch, release):
    """Every restoration step wrapped: once ``held_steps.on`` is True, a step that starts sets
    ``held_steps.started`` and waits for ``release`` (tests/conftest.py), looking at its job's
    cancel meanwhile as a step does between its tiles, then runs as it is. A job so stays
    running until the test has done what it does mid-run (a cancel, a folder removed),
    however fast or slow the machine, instead of a photo made big enough to take seconds."""
    import dataclasses
    import threading
    import types

    from engine.restore import registry

    registry._load_all()
    state = types.SimpleNamespace(on=False, started=threading.Event())

    def held(fn):
        def step(image, params, ctx):
            if state.on:
                state.started.set()
                while not release.wait(0.02):
                    ctx.progress.check()  # (a cancel stops it)
            return fn(image, params, ctx)
        return step

    for name, spec in list(registry.STEPS.items()):
        monkeypatch.setitem(registry.STEPS, name, dataclasses.replace(spec, fn=held(spec.fn)))
    return state


def opened(qtbot, win, folder: Path) -> None:
    """Open a folder and wait for its listing, which arrives off the GUI thread."""
    win.open_folder(folder)
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)


def diagnosed(qtbot, win, target: Path):
    """Select ``target``, diagnose it and wait: its state, with a diagnosis and a plan."""
    win.select_path(target)
    win.diagnose([target])
    qtbot.waitUntil(win.client.is_idle, timeout=60000)
    st = win.states[target]
    assert st.diagnosis is not None and st.plan is not None
    return st


def painted(qtbot, win, target: Path):
    """``target`` in the viewer's mask editor with a square painted (not saved): its document."""
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(target)
    win.show_mask_editor()
    doc = win.mask_doc
    assert doc is not None
    doc.fill_polygon([(30, 20), (60, 20), (60, 50), (30, 50)])
    return doc


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three small photos: a noisy JPEG, a clean PNG, a smooth JPEG."""
    d = tmp_path / "shoot"
    write_photo(d / "a_noisy.jpg", 96, 72, seed=1, kind="noisy")
    write_photo(d / "b_clean.png", 96, 72, seed=2)
    write_photo(d / "c_smooth.jpg", 80, 60, seed=3)
    return d


def masked_folder(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A folder ``card`` of two photos whose ``.mend`` holds the first one's sidecar and mask
    (written when it could be): (folder, that photo, its mask file)."""
    from engine.imageio import save_mask
    from ui.settings import data_dir
    from ui.sidecar import SidecarStore

    folder = tmp_path / "card"
    photo = write_photo(folder / "p.jpg", 96, 72, seed=1, kind="noisy")
    write_photo(folder / "q.jpg", 80, 60, seed=3)
    store = SidecarStore(folder, data_dir())
    mask = np.zeros((72, 96), bool)
    mask[20:50, 30:60] = True
    where = save_mask(mask, store.mask_path_for(photo))
    store.update(photo, mask=str(where), outputs=[])
    assert where.parent == folder / ".mend"
    return folder, photo, Path(where)
