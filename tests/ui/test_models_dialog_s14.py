"""The window's Models dialog: shown beside the window (not modal), one at a time (asked again,
the open one is raised), deleted once closed (every one ever opened stayed alive as the
window's child, connected to the client's signals); a status arriving after its closing is
harmless. Its status check stops in the middle of a hash when it closes, or the window quits
(the hash of an unrecorded multi-GB file ran to its end first: ~1.5 s per GB), and so does
its recommendation's."""
from __future__ import annotations

import hashlib
import os
import threading
import time
import weakref
from types import SimpleNamespace

import pytest
from PySide6.QtCore import SIGNAL, QCoreApplication, QEvent, QTimer
from PySide6.QtWidgets import QApplication

from engine.errors import Cancelled
from engine.models import store as store_mod
from engine.progress import CancelToken
from ui.dialogs.models import ModelManagerDialog, profile_download
from ui.engine_client import EngineClient
from ui.main_window import MainWindow
from ui.settings import AppSettings

from .test_engine_client_robust import FakeStore

CLIENT_SIGNALS = ("model_progress(QString,double,QString)", "model_finished(QString,PyObject)",
                  "model_failed(QString,QString)")
CHUNKS = 24  # the unrecorded file's size in the store's hash chunks
CHUNK_S = 0.03  # each chunk's hash here: the whole file takes ~0.7 s


def _receivers(client: EngineClient) -> list[int]:
    return [client.receivers(SIGNAL(s)) for s in CLIENT_SIGNALS]


def _deleted_later() -> None:
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


def _open_dialogs() -> list[ModelManagerDialog]:
    return [w for w in QApplication.topLevelWidgets()
            if isinstance(w, ModelManagerDialog) and w.isVisible()]


def _show_models(win: MainWindow, first_run: bool = False) -> ModelManagerDialog:
    """``win.show_models()``, and the dialog it showed. A modal one (``exec()``: the window
    blocked until it closes) is closed at once, so that the test fails rather than hangs."""
    modal: list[ModelManagerDialog] = []

    def unblock() -> None:
        dlg = QApplication.activeModalWidget()
        if isinstance(dlg, ModelManagerDialog):
            modal.append(dlg)
            dlg.close()

    QTimer.singleShot(0, unblock)
    win.show_models(first_run=first_run)
    shown = _open_dialogs() + modal
    assert len(shown) == 1
    return shown[0]


@pytest.fixture
def win(qtbot, tmp_path, monkeypatch):
    """A window over a client without an engine; its Models dialogs over a store in tmp (no
    model installed: every status is cheap) and without the recommendation (torch)."""
    monkeypatch.setenv("MEND_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(ModelManagerDialog, "_start_recommendation", lambda self: None)
    client = EngineClient(lambda: None)
    w = MainWindow(client, AppSettings(backend="builtin", profile="builtin"), ask_resume=False)
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()
    client.shutdown()


class _SlowSha:
    """sha256 whose every chunk takes CHUNK_S (a big file on a slow disk); counts the chunks."""

    def __init__(self, chunks: list[int]) -> None:
        self._h = hashlib.sha256()
        self._chunks = chunks

    def update(self, data: bytes) -> None:
        self._chunks.append(len(data))
        time.sleep(CHUNK_S)
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@pytest.fixture
def unrecorded(tmp_path, monkeypatch):
    """A real store whose codeformer file (CHUNKS chunks) is not recorded: its status hashes
    it, slowly. Yields (store, the chunks hashed so far)."""
    from tests.model_helpers import install_test_model

    weights = tmp_path / "w.pth"
    weights.write_bytes(os.urandom(CHUNKS * store_mod.dl.CHUNK))
    store = install_test_model(tmp_path / "store", "codeformer", {"codeformer.pth": weights})
    (store.model_dir("codeformer") / store_mod.STATE_FILE).unlink()
    chunks: list[int] = []
    monkeypatch.setattr(store_mod, "hashlib", SimpleNamespace(sha256=lambda: _SlowSha(chunks)))
    return store, chunks


# -- 1. one dialog, deleted once closed --------------------------------------------------------
def test_models_dialogs_opened_and_closed_leave_nothing_behind(qtbot, win):
    """Every Models dialog ever opened stayed alive (the window's child), its table and its
    slots connected to the client's three model signals: 5 opened, 5 alive, 15 connections."""
    before = _receivers(win.client)
    gone = []
    for _ in range(5):
        dlg = _show_models(win)
        gone.append(weakref.ref(dlg))
        dlg.close()
        del dlg
        _deleted_later()
    assert win.findChildren(ModelManagerDialog) == []
    assert [r() for r in gone] == [None] * 5  # (freed at once: no reference cycle either)
    assert _receivers(win.client) == before
    qtbot.waitUntil(lambda: win.client.pool.activeThreadCount() == 0, timeout=5000)


def test_asked_again_while_open_the_models_dialog_is_raised_not_doubled(qtbot, win):
    """Shown beside the window, not modal (a download takes minutes: the photos stay at hand
    meanwhile, and it shows the download's progress); a second "Models…" (or the first-run
    timer) raises the open one."""
    first = _show_models(win)
    assert first.isVisible() and not first.isModal()
    assert QApplication.activeModalWidget() is None
    assert _show_models(win, first_run=True) is first
    assert len(win.findChildren(ModelManagerDialog)) == 1
    first.close()  # closed: the next one is a new one (the closed one is being deleted)
    again = _show_models(win)
    assert again is not first
    _deleted_later()
    assert win.findChildren(ModelManagerDialog) == [again]
    again.close()


class _GatedStore(FakeStore):
    """status() answers once the test says go (a hash under way); it takes no token."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = threading.Event()
        self.go = threading.Event()

    def status(self, model_id, token=None):
        self.asked.set()
        assert self.go.wait(5)
        return "verified"


def test_a_status_arriving_after_the_dialog_was_deleted_is_harmless(qtbot, win, monkeypatch):
    store = _GatedStore()
    monkeypatch.setattr(store_mod, "ModelStore", lambda *a, **k: store)
    try:
        dlg = _show_models(win)
        assert store.asked.wait(5)  # the check runs in the pool
        sig = dlg._status_signals  # (what the check reports through; the pool task holds it)
        ref = weakref.ref(dlg)
        dlg.close()
        del dlg
        _deleted_later()
        assert ref() is None  # deleted while its check runs
        assert sig.receivers(SIGNAL("status(int,QString,QString)")) == 0
    finally:
        store.go.set()  # the status arrives now, and the check's end
    qtbot.waitUntil(lambda: win.client.pool.activeThreadCount() == 0, timeout=5000)
    qtbot.wait(50)  # (delivered, or dropped: an exception in a slot fails the test)
    assert win.findChildren(ModelManagerDialog) == []


# -- 2. a status check stops mid-hash ----------------------------------------------------------
def test_closing_the_dialog_stops_its_status_check_in_the_middle_of_a_hash(
        qtbot, unrecorded, monkeypatch):
    """Closed, the dialog's check ran its hash to the end (0.5 s here; ~1.5 s per GB); it now
    stops at the next chunk, records nothing, and a dialog shown again checks again."""
    store, chunks = unrecorded
    monkeypatch.setattr(ModelManagerDialog, "_start_recommendation", lambda self: None)
    client = EngineClient(lambda: None)
    try:
        dlg = ModelManagerDialog(client, store)
        qtbot.addWidget(dlg)
        dlg.show()
        qtbot.waitUntil(lambda: len(chunks) >= 2, timeout=5000)
        t0, at_close = time.monotonic(), len(chunks)
        dlg.close()
        qtbot.waitUntil(lambda: client.pool.activeThreadCount() == 0, timeout=5000)
        stopped = time.monotonic() - t0
        assert len(chunks) - at_close <= 1  # (the chunk it was hashing)
        assert stopped < 0.3, stopped
        assert "codeformer" not in store._read_state("codeformer")["files"]  # (not recorded)
        row = dlg.row_of("codeformer")
        chunks.clear()
        dlg.show()  # shown again: checked again, to the end
        qtbot.waitUntil(lambda: dlg.table.item(row, 4).text() == "verified", timeout=10000)
        assert len(chunks) == CHUNKS
        dlg.close()
    finally:
        client.shutdown()


def test_closing_the_models_dialog_or_quitting_stops_its_hashes(qtbot, unrecorded,
                                                                monkeypatch):
    """The dialog closed, or the window quit with it open, during the hash of an unrecorded
    file by its status check (client pool) and by its recommendation (model pool, one thread:
    downloads wait behind it): neither hash runs to its end."""
    store, chunks = unrecorded
    monkeypatch.setattr(store_mod, "ModelStore", lambda *a, **k: store)
    monkeypatch.setattr("engine.devices.select_device",
                        lambda preference="auto": SimpleNamespace(name="CPU", kind="cpu"))
    client = EngineClient(lambda: None)
    w = MainWindow(client, AppSettings(backend="builtin", profile="builtin"), ask_resume=False)
    qtbot.addWidget(w)
    w.show()

    def both_hashing() -> None:  # (the laptop profile recommended here lists codeformer)
        chunks.clear()
        qtbot.waitUntil(lambda: client.pool.activeThreadCount() == 1
                        and client.model_pool.activeThreadCount() == 1
                        and len(chunks) >= 4, timeout=5000)

    try:
        dlg = _show_models(w)
        assert dlg.isVisible()
        both_hashing()
        t0, at_close = time.monotonic(), len(chunks)
        dlg.close()
        qtbot.waitUntil(lambda: client.pool.activeThreadCount() == 0
                        and client.model_pool.activeThreadCount() == 0, timeout=5000)
        closed_s = time.monotonic() - t0
        assert len(chunks) - at_close <= 2  # (each hash: the chunk it was at)

        assert _show_models(w).isVisible()  # a new one, checking again (nothing recorded)
        both_hashing()
        t0, at_quit = time.monotonic(), len(chunks)
        w.close()
        client.shutdown()
        quit_s = time.monotonic() - t0
        assert len(chunks) - at_quit <= 2
    finally:
        client.shutdown()
    assert closed_s < 0.3, closed_s
    assert quit_s < 0.5, quit_s


def test_a_stopped_recommendation_stops_in_a_status_hash(unrecorded):
    """``profile_download`` (the dialog's recommendation) took no token, and swallowed every
    error of a status: a stop would have been read as 'not installed'."""
    store, chunks = unrecorded
    token = CancelToken()
    with pytest.raises(Cancelled):
        profile_download(store, "laptop", _CancelAfter(token, 2))
    assert len(chunks) == 2
    chunks.clear()
    missing, _total = profile_download(store, "laptop", CancelToken())
    assert "codeformer" not in missing and len(chunks) == CHUNKS


class _CancelAfter:
    """A token cancelled once ``n`` of its checks have passed."""

    def __init__(self, token: CancelToken, n: int) -> None:
        self.token, self.left = token, n

    def check(self) -> None:
        if self.left <= 0:
            self.token.cancel()
        self.left -= 1
        self.token.check()


def test_quitting_stops_the_mask_editors_sam_check_in_its_hash(qtbot, win, monkeypatch):
    """The mask editor asks (in the pool) whether SAM is installed: a SAM file not recorded yet
    is hashed, and the quit waited for that hash (it waits for the pool)."""
    from engine.restore import reflection

    hashing, seen = threading.Event(), []

    class _HashingStore(FakeStore):
        def status(self, model_id, token=None):
            seen.append(model_id)
            hashing.set()
            end = time.monotonic() + 5.0  # (a 375 MB file on a slow disk)
            while time.monotonic() < end:
                if token is not None:
                    token.check()
                time.sleep(0.005)
            return "verified"

    monkeypatch.setattr(store_mod, "ModelStore", lambda *a, **k: _HashingStore())
    monkeypatch.setattr(reflection, "sam_mask_from_points", lambda *a, **k: None, raising=False)
    answer = []
    th = threading.Thread(target=lambda: answer.append(win._sam_available()))
    th.start()
    assert hashing.wait(5)
    t0 = time.monotonic()
    win.close()
    th.join(5)
    assert not th.is_alive() and time.monotonic() - t0 < 1.0
    assert seen == ["sam-vit-base"] and answer == [False]  # (stopped: not shown as available)
