"""The status line says what belongs to what is shown: a photo's message goes when another photo
is shown or another folder opened, an operation's when it ends (and never takes a newer message
with it). A model's verify stops when Stop is clicked. Closing the window writes its layout
off the GUI thread. A running job the engine stays silent about is logged with where the
engine thread is (or, its end lost, as an error). What a test's QTest events leave held (Shift
after a Ctrl+Shift shortcut) is released before the next test: Stop found its row selected."""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from PySide6.QtCore import QPoint, QSettings, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QWidget

from engine.restore import reflection
from ui import engine_client
from ui.dialogs.models import ModelManagerDialog
from ui.engine_client import EngineClient, JobState
from ui.main_window import MainWindow
from ui.settings import AppSettings

from .conftest import opened, write_photo
from .test_engine_client_robust import FakeStore


def _idle(qtbot, win) -> None:
    qtbot.waitUntil(win.client.is_idle, timeout=60000)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)


# -- 1. the status line ----------------------------------------------------------------------
def test_a_photo_too_large_is_not_said_of_the_next_photo(qtbot, window, tmp_path, monkeypatch):
    monkeypatch.setenv("MEND_MAX_MEGAPIXELS", "0.004")  # 4,000 pixels
    d = tmp_path / "mixed"
    big = write_photo(d / "a_big.png", 96, 72, seed=1)  # 6,912 pixels: too large
    small = write_photo(d / "b_small.png", 40, 30, seed=2)
    win = window
    opened(qtbot, win, d)
    win.show_viewer(big)  # its decode fails: said on the canvas and in the status line
    qtbot.waitUntil(lambda: "too large" in win.status_label.text(), timeout=20000)
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(small)
    assert "too large" not in win.status_label.text()

    # a diagnosis of the big photo failing while the small one is shown: news, said; moving on
    # to another photo takes it away (staying on the photo it is about keeps it)
    win.diagnose([big])
    _idle(qtbot, win)
    assert "a_big.png: This photo is too large" in win.status_label.text()
    win.select_path(big)
    assert "too large" in win.status_label.text()
    win.select_path(small)
    assert win.status_label.text() == ""


def test_a_mask_edit_message_goes_with_its_edit_and_its_document(qtbot, window, folder,
                                                                 tmp_path):
    win = window
    opened(qtbot, win, folder)
    target = folder / "b_clean.png"
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(target)
    win.show_mask_editor()
    doc = win.mask_doc
    assert doc is not None
    applying = "Applying the mask edit at full resolution…"
    doc.busy_changed.emit(True)
    assert win.status_label.text() == applying
    doc.busy_changed.emit(False)
    assert win.status_label.text() == ""

    # something else said meanwhile is not taken away when the edit ends
    doc.busy_changed.emit(True)
    win.set_status("Exported somewhere")
    doc.busy_changed.emit(False)
    assert win.status_label.text() == "Exported somewhere"

    # the document goes with its folder while it computes: its message goes too
    doc.busy_changed.emit(True)
    assert win.status_label.text() == applying
    other = tmp_path / "other"
    write_photo(other / "x.png", 64, 48, seed=5)
    opened(qtbot, win, other)
    assert applying not in win.status_label.text()


def test_a_click_select_message_ends_with_its_job(qtbot, window, folder, monkeypatch):
    """"Selecting…" stayed when the selection came back while the mask editor was not open."""
    import numpy as np

    monkeypatch.setattr(reflection, "sam_mask_from_points",
                        lambda image, points, labels, runtime, check=None:
                        np.zeros(image.shape[:2], np.uint8))
    win = window
    opened(qtbot, win, folder)
    target = folder / "b_clean.png"
    win.diagnose([target])  # (the engine is started: its "ready" is said before the click)
    _idle(qtbot, win)
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(target)
    win._sam_click(10.0, 10.0, 1)
    assert win.status_label.text() == "Selecting…"
    _idle(qtbot, win)
    assert win.status_label.text() == ""


def test_folder_messages_go_when_it_is_listed_again(qtbot, window, tmp_path):
    top = tmp_path / "archive"
    write_photo(top / "2024" / "a.png", 64, 48, seed=5)
    win = window
    opened(qtbot, win, top)
    qtbot.waitUntil(lambda: "subfolders hold 1" in win.status_label.text(), timeout=10000)
    win.set_include_subfolders(True)
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    assert win.model.total() == 1
    _idle(qtbot, win)
    assert "subfolders hold" not in win.status_label.text()


# -- 2. Stop stops a model's verify ------------------------------------------------------------
class _SlowVerifyStore(FakeStore):
    """One model whose verify hashes "forever" (20 s), checking its token as the store does."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[threading.Thread] = []

    def status(self, model_id, token=None):
        return "verified"

    def verify(self, model_id, repair=False, progress=None, token=None, hash_progress=None):
        self.threads.append(threading.current_thread())
        self.started.set()
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if token is not None:
                token.check()
            time.sleep(0.01)
        return SimpleNamespace(status="verified", corrupt=(), missing=())


def test_a_shortcut_with_shift_leaves_shift_held(qtbot):
    """(What the next test starts after) QTest's Ctrl+Shift+Z ends on Shift's release, which
    carries Shift: Qt's input state keeps Shift held (test_flow's redo did so before
    test_stop_stops_a_verify); a press without its release keeps its button. The conftest's
    ``no_held_keys`` releases them once this test ends."""
    w = QWidget()
    qtbot.addWidget(w)
    QTest.mousePress(w, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(1, 1))
    QTest.keyClick(w, Qt.Key.Key_Z,  # (after: a mouse event sets the modifiers it carries)
                   Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    # (should Qt stop leaving them held, this test and the conftest's release can go)
    assert QGuiApplication.keyboardModifiers() == Qt.KeyboardModifier.ShiftModifier
    assert QGuiApplication.mouseButtons() == Qt.MouseButton.LeftButton


def test_stop_stops_a_verify(qtbot, monkeypatch):
    # nothing held from the test before (a held Shift made selectRow select nothing)
    assert QGuiApplication.keyboardModifiers() == Qt.KeyboardModifier.NoModifier
    assert QGuiApplication.mouseButtons() == Qt.MouseButton.NoButton
    monkeypatch.setattr(ModelManagerDialog, "_start_recommendation", lambda self: None)
    client = EngineClient(lambda: None)
    dlg = None
    try:
        store = _SlowVerifyStore()
        dlg = ModelManagerDialog(client, store)
        qtbot.addWidget(dlg)
        row = dlg.row_of("m1")
        dlg.verify("m1")
        assert store.started.wait(10)
        assert store.threads[0] is not threading.main_thread()  # in the model pool
        shown = dlg.table.item(row, 4).text(), dlg.progress.isHidden()
        dlg.table.selectRow(row)
        assert dlg.selected() == ["m1"]  # what Stop stops
        t0 = time.monotonic()
        dlg.cancel_btn.click()
        qtbot.waitUntil(lambda: client.model_pool.activeThreadCount() == 0, timeout=5000)
        assert time.monotonic() - t0 < 5
        qtbot.waitUntil(lambda: "verification stopped" in dlg.note.text(), timeout=5000)
        assert shown == ("verifying…", False)  # said in its row, with a busy bar, while it ran
        assert dlg.progress.isHidden()
        # (checked again in the pool once the verify ended)
        qtbot.waitUntil(lambda: dlg.table.item(row, 4).text() == "verified", timeout=5000)
    finally:
        # (closed first, a failure too: the verify's end, heard after the shutdown, would have
        # the open dialog check its statuses in the shut-down client's pool)
        if dlg is not None:
            dlg.close()
        client.shutdown()


# -- 3. the window's layout is written off the GUI thread ---------------------------------------
def test_closing_writes_the_layout_off_the_gui_thread(qtbot, tmp_path, monkeypatch):
    main = threading.main_thread()
    on_gui: list[str] = []
    real_sync, real_set = QSettings.sync, QSettings.setValue

    def sync(self):
        if threading.current_thread() is main:
            on_gui.append("sync")
        return real_sync(self)

    def set_value(self, key, value):
        if threading.current_thread() is main and key.startswith("window/"):
            on_gui.append(key)
        return real_set(self, key, value)

    monkeypatch.setattr(QSettings, "sync", sync)
    monkeypatch.setattr(QSettings, "setValue", set_value)
    client = EngineClient(lambda: None)
    settings = AppSettings(backend="builtin", profile="builtin", out_dir=str(tmp_path / "out"))
    win = MainWindow(client, settings, ask_resume=False)
    qtbot.addWidget(win)
    win.resize(900, 600)
    win.show()
    try:
        win.close()
    finally:
        client.shutdown()  # (waits for the pool: the layout is on the disk)
    assert on_gui == []
    text = Path(os.environ["MEND_UI_SETTINGS"]).read_text()
    assert "geometry=" in text and "state=" in text
    # the next window gets it back
    again = QSettings(os.environ["MEND_UI_SETTINGS"], QSettings.Format.IniFormat)
    assert again.value("window/geometry") is not None


# -- 4. the stall watchdog ---------------------------------------------------------------------
def test_a_silent_job_is_logged_with_where_the_engine_thread_is(qtbot, monkeypatch, caplog):
    monkeypatch.setattr(engine_client, "STALL_SECONDS", 0.2)
    gate = threading.Event()

    def stuck_somewhere(engine, progress):
        gate.wait(20)
        return "ok"

    c = EngineClient(lambda: object())
    c._watchdog.setInterval(50)
    try:
        with caplog.at_level(logging.WARNING, logger="mend.ui.engine"):
            jid = c.call(stuck_somewhere, "hold")
            qtbot.waitUntil(lambda: "stuck_somewhere" in caplog.text, timeout=5000)
        assert f"job {jid} (hold) has reported nothing for" in caplog.text
        assert "gate.wait(20)" in caplog.text  # the very line it waits on
        assert c.job(jid).state is JobState.RUNNING  # left alone: a diagnostic only
    finally:
        gate.set()
        c.shutdown()
    assert c.job(jid).state is JobState.DONE


def test_a_job_whose_end_was_lost_is_logged_as_an_error(qtbot, monkeypatch, caplog):
    monkeypatch.setattr(engine_client, "STALL_SECONDS", 0.2)
    c = EngineClient(lambda: object())
    c._watchdog.setInterval(50)
    c._worker.done.disconnect(c._on_done)  # the end never reaches the client
    try:
        with caplog.at_level(logging.ERROR, logger="mend.ui.engine"):
            jid = c.call(lambda engine, progress: "ok", "quick")
            qtbot.waitUntil(lambda: "its end was lost" in caplog.text, timeout=5000)
        assert f"job {jid} (quick) is shown running" in caplog.text
        assert "runs no job" in caplog.text
    finally:
        c._on_done(jid, "ok")
        c.shutdown()
