"""The GUI thread never waits for the settings file: every setting is read back at once and
written in the pool, in the order it was set, without holding Python's GIL, and is on the disk
once the window has quit. The Models dialog checks its models' statuses in the pool (a file
the store has not recorded yet is hashed there), a stale check's answer dropped. A fix ending
while the window quits is recorded, not shown; the first-run Models dialog does not open then."""
from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from PySide6.QtCore import QPointF, QSettings, QThreadPool
from PySide6.QtWidgets import QFileDialog

from engine.api import Degradation, Diagnosis, JobResult, Plan, Step
from ui import main_window as mw
from ui import settings as settings_mod
from ui.dialogs.models import ModelManagerDialog
from ui.engine_client import EngineClient, start_in
from ui.main_window import MainWindow
from ui.settings import AppSettings, load_settings, recent_folders, write_settings
from ui.sidecar import SidecarStore

from . import test_crash_safety as cs
from .conftest import opened
from .test_engine_client_robust import FakeStore

asked = cs.asked  # (every question answered Yes; not a first run)
MAIN = threading.main_thread()


def _gui_settings_writes(monkeypatch) -> list[str]:
    """The QSettings writes (setValue, sync) made on the GUI thread, as they happen."""
    on_gui: list[str] = []
    real_sync, real_set = QSettings.sync, QSettings.setValue

    def sync(self):
        if threading.current_thread() is MAIN:
            on_gui.append("sync")
        return real_sync(self)

    def set_value(self, key, value):
        if threading.current_thread() is MAIN:
            on_gui.append(key)
        return real_set(self, key, value)

    monkeypatch.setattr(QSettings, "sync", sync)
    monkeypatch.setattr(QSettings, "setValue", set_value)
    return on_gui


def _big_ini(path: Path, keys: int = 60000) -> Path:
    """A settings file of ~3 MB: every write of it takes ~0.1 s here."""
    with path.open("w") as f:
        f.write("[filler]\n")
        f.writelines(f"key{i:06d}={'x' * 40}\n" for i in range(keys))
    return path


# -- 1. settings -----------------------------------------------------------------------------
def test_every_setting_is_written_off_the_gui_thread_and_read_back_at_once(
        qtbot, tmp_path, folder, monkeypatch):
    """The subfolders toggle (synced), the settings dialog's save (synced), the recent folders,
    the export folder and "first run done" (written back by Qt on the GUI thread after their
    setValue) were all written on the GUI thread. Now none is, each reads back its new value at
    once, and all are on the disk once the window has quit."""
    monkeypatch.setattr(MainWindow, "show_models", lambda self, first_run=False: None)
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(
        lambda *a, **k: (str(tmp_path / "exports" / "final.png"), "")))
    (tmp_path / "exports").mkdir()
    on_gui = _gui_settings_writes(monkeypatch)
    client = EngineClient(lambda: None)
    win = MainWindow(client, cs._settings(tmp_path), ask_resume=False)
    qtbot.addWidget(win)
    try:
        win.set_include_subfolders(True)
        assert load_settings(win.qs).include_subfolders is True
        win.apply_settings(replace(win.settings, quality=77, suffix="_fixed"))
        assert (load_settings(win.qs).quality, load_settings(win.qs).suffix) == (77, "_fixed")
        opened(qtbot, win, folder)
        assert recent_folders(win.qs)[0] == str(folder)
        result = folder / "b_clean.png"
        with qtbot.waitSignal(win.exported, timeout=10000):
            win._export(result, result, None)
        assert win.qs.value("export/folder") == str(tmp_path / "exports")
        win._ask_resume({"found": [], "n": 0, "jobs": [], "gone": [], "bad": 0,
                         "unreadable": []})
        assert win.qs.value("firstRunDone") is True
        win.close()
    finally:
        client.shutdown()  # (waits for the pool: the settings are on the disk)
    assert on_gui == []
    text = Path(os.environ["MEND_UI_SETTINGS"]).read_text()
    for line in ("include_subfolders=true", "quality=77", "suffix=_fixed", "firstRunDone=true",
                 f"folder={tmp_path / 'exports'}", f"folders={folder}", "geometry="):
        assert line in text, line


def test_settings_set_in_a_row_reach_the_disk_in_that_order(qtbot, tmp_path, monkeypatch):
    """Two pool threads write: the first write is slow (a disk waking up) and the second runs
    beside it. The value set last is the one read back at every moment and the one left on the
    disk (each write takes the newest values, one write at a time)."""
    from ui.settings import SettingsFile

    ini = tmp_path / "order.ini"
    real = settings_mod.write_settings
    writes: list[dict] = []

    def slow_first(where, values):
        writes.append(dict(values))
        if len(writes) == 1:
            time.sleep(0.3)
        real(where, values)

    monkeypatch.setattr(settings_mod, "write_settings", slow_first)
    pool = QThreadPool()
    pool.setMaxThreadCount(2)
    sf = SettingsFile(lambda fn: start_in(pool, fn),
                      QSettings(str(ini), QSettings.Format.IniFormat))
    try:
        for i in range(1, 6):
            sf.set({"a/n": i, f"b/k{i}": i})
            assert sf.value("a/n") == i  # (read back at once, written or not)
            time.sleep(0.02)
    finally:
        pool.waitForDone(10000)
    assert sf.value("a/n") == 5
    text = ini.read_text()
    assert "n=5" in text and all(f"k{i}={i}" in text for i in range(1, 6))
    order = [w["a/n"] for w in writes if "a/n" in w]
    assert order == sorted(order) and order[-1] == 5  # (none set an older value after)


def test_a_settings_write_does_not_hold_the_gil(tmp_path):
    """QSettings.sync() holds Python's GIL for the whole write: from a pool thread it froze
    the GUI thread as long (~0.15 s for a 3 MB file). write_settings leaves it free. (The best
    of three: another process may take this thread's core for a moment.)"""
    where = (str(_big_ini(tmp_path / "big.ini")), QSettings.Format.IniFormat)
    keep = QSettings(*where)  # (the window's, holding the file's contents in memory)

    def stall(n: int) -> tuple[float, float]:
        done = threading.Event()

        def work() -> None:
            write_settings(where, {"a/b": n})
            done.set()

        longest, t0 = 0.0, time.perf_counter()
        threading.Thread(target=work).start()
        last = t0
        while not done.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            longest, last = max(longest, now - last), now
        return longest, time.perf_counter() - t0

    runs = [stall(n) for n in range(3)]
    print("longest GUI-thread stall / write (ms):",
          [f"{a * 1000:.0f}/{b * 1000:.0f}" for a, b in runs])
    assert min(a / b for a, b in runs) < 0.5, runs
    assert keep.value("a/b") in (2, "2")


# -- 2. the Models dialog's statuses -----------------------------------------------------------
def test_refresh_checks_the_statuses_in_the_pool(qtbot, tmp_path, monkeypatch):
    """A model file the store has not recorded yet is hashed by its status: on the GUI thread,
    in refresh() (0.1 s for 64 MB, seconds for GB files). Now in the pool; the table shows
    "checking…" until the status arrives."""
    from engine.models import store as store_mod
    from tests.model_helpers import install_test_model

    monkeypatch.setattr(ModelManagerDialog, "_start_recommendation", lambda self: None)
    weights = tmp_path / "w.pth"
    weights.write_bytes(os.urandom(1 << 20))
    store = install_test_model(tmp_path / "store", "codeformer", {"codeformer.pth": weights})
    (store.model_dir("codeformer") / store_mod.STATE_FILE).unlink()  # (not recorded)
    hashed: list[threading.Thread] = []
    real = store_mod.sha256_file
    monkeypatch.setattr(store_mod, "sha256_file", lambda *a, **k: (
        hashed.append(threading.current_thread()), real(*a, **k))[1])
    client = EngineClient(lambda: None)
    try:
        dlg = ModelManagerDialog(client, store)
        qtbot.addWidget(dlg)
        row = dlg.row_of("codeformer")
        qtbot.waitUntil(lambda: dlg.table.item(row, 4).text() == "verified", timeout=10000)
        assert hashed and MAIN not in hashed
        hashed.clear()
        dlg.refresh()  # (recorded now: not hashed again)
        assert dlg.table.item(row, 4).text() == "verified"  # (as last known, meanwhile)
        dlg.close()
    finally:
        client.shutdown()
    assert hashed == []


class _GatedStore(FakeStore):
    """Each status() waits for the test's go (a file being hashed), then answers from
    ``answers``; records how many ran at once."""

    def __init__(self, answers: list[str]) -> None:
        super().__init__()
        self.answers = answers
        self.go = threading.Semaphore(0)
        self.asked = threading.Semaphore(0)
        self.threads: list[threading.Thread] = []
        self.running = self.most = 0
        self.lock = threading.Lock()

    def status(self, model_id, token=None):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.append(threading.current_thread())
        self.asked.release()
        try:
            assert self.go.acquire(timeout=5)
            return self.answers.pop(0)
        finally:
            with self.lock:
                self.running -= 1


def test_a_stale_status_check_is_dropped_and_the_dialog_stays_responsive(
        qtbot, monkeypatch):
    """The dialog opens and refreshes at once while a status is checked (a hash); the answer
    of a check a newer refresh replaced, or of one the dialog's closing ended, is dropped; one
    check runs at a time (never two hashes of one file)."""
    monkeypatch.setattr(ModelManagerDialog, "_start_recommendation", lambda self: None)
    store = _GatedStore(["corrupt", "verified"])
    client = EngineClient(lambda: None)
    try:
        t0 = time.monotonic()
        dlg = ModelManagerDialog(client, store)  # (its status check waits for the go)
        qtbot.addWidget(dlg)
        assert time.monotonic() - t0 < 2
        row = dlg.row_of("m1")
        assert dlg.table.item(row, 4).text() == "checking…"
        shown: list[str] = []
        dlg.table.itemChanged.connect(
            lambda it: shown.append(it.text()) if it.column() == 4 else None)
        assert store.asked.acquire(timeout=5)  # the first check runs (the file changes now)
        dlg.refresh()  # a newer check: the first one's answer is stale
        checked = []
        dlg.statuses_checked.connect(lambda: checked.append(1))
        store.go.release()  # the first answers "corrupt": dropped
        assert store.asked.acquire(timeout=5)  # the newer check, by the same task
        qtbot.wait(50)
        assert "corrupt" not in shown
        store.go.release()
        qtbot.waitUntil(lambda: checked == [1], timeout=5000)
        assert dlg.table.item(row, 4).text() == "verified"
        assert "corrupt" not in shown
        assert store.most == 1 and MAIN not in store.threads  # one at a time, in the pool

        # closed while a check runs: its answer is dropped, nothing more is checked
        store.answers = ["partial", "partial"]
        dlg.refresh()
        assert store.asked.acquire(timeout=5)
        dlg.close()
        store.go.release()
        qtbot.waitUntil(lambda: client.pool.activeThreadCount() == 0, timeout=5000)
        qtbot.wait(50)
        assert dlg.table.item(row, 4).text() == "verified"
        assert store.answers == ["partial"]
    finally:
        client.shutdown()


# -- 3. what the waits of a closing window let through ---------------------------------------
class _EndsAsTheQuitCancels:
    """A fix whose last step ends as the quit cancels it (after its last cancel check): its
    result is written and returned. The warm-up's tiny job returns at once."""

    device = None

    def run(self, request, progress):
        if progress is None:
            return None
        while not progress.token.cancelled:
            time.sleep(0.01)
        out = Path(request.output.out_dir) / (Path(request.path).stem + "_mend.png")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(request.path, out)
        diag = Diagnosis(Degradation.A, {"A": 0.7, "B": 0.1, "C": 0.1, "D": 0.1})
        plan = Plan(Degradation.A, "builtin", (Step("denoise_nlm", {}),))
        return JobResult(Path(request.path), out, Degradation.A, diag, plan)


def test_a_fix_ending_as_the_window_quits_is_recorded_not_shown(
        qtbot, tmp_path, folder, asked, monkeypatch):
    """The quit waits for the running job with the event loop running: a fix of the photo in
    the viewer ending then was recorded (right: its sidecar is written before the quit ends)
    and also shown: its full-size decode started for nobody, and the quit waited for it
    (2-3 s for 24 MP), its callbacks left over the closed window."""
    from ui import engine_client

    monkeypatch.setattr(engine_client, "_default_factory",
                        lambda *a, **kw: (lambda: _EndsAsTheQuitCancels()))
    quitting, decoded_then = [False], []
    real = mw.build_view
    monkeypatch.setattr(mw, "build_view", lambda *a, **k: (
        decoded_then.append(quitting[0]), real(*a, **k))[1])
    win = MainWindow(None, cs._settings(tmp_path), ask_resume=False)
    qtbot.addWidget(win)
    win.show()
    opened(qtbot, win, folder)
    photo = folder / "b_clean.png"
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(photo)
    journal = win.client.journal_path
    jid = win.fix(photo)
    qtbot.waitUntil(lambda: win.client.running_id() == jid, timeout=10000)
    fixed = []
    win.fixed.connect(lambda p: fixed.append(p))
    quitting[0] = True
    assert win.close()
    assert fixed == [photo]  # (it ended during the close)
    assert True not in decoded_then  # no decode for the closing window
    assert win.bg.pending() == 0  # no callback over the closed window left
    sc = SidecarStore(folder, tmp_path / "ui-data").load(photo)
    assert sc is not None and sc.outputs == [str(tmp_path / "out" / "b_clean_mend.png")]
    assert not journal.exists()  # (a normal quit: not written again after)


def test_the_first_run_models_dialog_does_not_open_while_the_window_quits(
        qtbot, tmp_path, monkeypatch):
    """First run: the Models dialog opens 0.2 s after the start. A window closed meanwhile
    waits for the engine's start (not cancellable) with the event loop running: the modal
    dialog opened inside the quit, which waited until it was dismissed."""
    from ui import engine_client

    def slow_engine():
        time.sleep(0.6)  # (the engine's start: imports, no cancel check)
        return SimpleNamespace(device=None)

    monkeypatch.setattr(engine_client, "_default_factory", lambda *a, **kw: slow_engine)
    shown = []
    monkeypatch.setattr(MainWindow, "show_models",
                        lambda self, first_run=False: shown.append(first_run))
    win = MainWindow(None, AppSettings(backend="builtin", profile="builtin"), ask_resume=True)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: bool(win.qs.value("firstRunDone")), timeout=10000)
    win.close()
    qtbot.wait(300)
    assert shown == []


def test_a_text_line_at_an_angle_is_outlined_as_it_lies(qtbot):
    """The viewer drew each text line's axis-aligned box: a line at 30 degrees got a box 3x
    its height, over the words above and below it. The engine gives the line's corners
    (``text_quads``): the outline follows the line."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage

    from ui.editor.canvas import ImageCanvas

    canvas = ImageCanvas()
    qtbot.addWidget(canvas)
    canvas.resize(400, 400)
    canvas.show()
    qtbot.waitExposed(canvas)
    img = QImage(400, 400, QImage.Format.Format_RGB888)
    img.fill(Qt.GlobalColor.black)
    canvas.set_images(img)
    quad = [(100, 250), (300, 135), (310, 152), (110, 267)]  # ~200 x 20 px at 30 degrees
    box = (100, 135, 310, 267)
    canvas.set_boxes([box], (), [quad])
    shot = canvas.grab().toImage()

    def yellow_near(x: float, y: float) -> bool:
        pt = canvas.to_widget(QPointF(x * canvas.source_scale(), y * canvas.source_scale()))
        for dx in range(-2, 3):
            for dy in range(-2, 3):
                c = shot.pixelColor(int(pt.x()) + dx, int(pt.y()) + dy)
                if c.red() > 200 and c.green() > 150 and c.blue() < 120:
                    return True
        return False

    assert yellow_near(200, 192.5)  # the middle of the line's long lower edge...
    assert not yellow_near(100, 135) and not yellow_near(310, 267)  # ...not its box's corners
    canvas.set_boxes([box], ())  # (an older result without corners: its box)
    shot = canvas.grab().toImage()
    assert yellow_near(100, 135)
