"""The GUI audit of a photographer's workflows (session 19): the keyboard in the viewer (space
and the arrows on a control reached with Tab, Tab past the panel behind the other tab, space on a
preview), Ctrl+A in a folder just opened, what the grid and the status line say after a batch
(results that are the original, jobs cancelled together), and a fix finished as Mend stopped
not offered again after the crash."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import shiboken6
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QTabBar

from engine.api import Degradation, Diagnosis, JobRequest, JobResult, Plan
from ui.editor.canvas import Compare
from ui.engine_client import EngineClient, read_journal
from ui.main_window import MainWindow
from ui.settings import AppSettings, data_dir

from .conftest import opened


def _in_viewer(qtbot, win, photo) -> None:
    """``photo`` in the viewer, the window active and the keyboard on the photo."""
    win.select_path(photo)
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(photo)
    win.activateWindow()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is win.canvas, timeout=5000)


def _tab_to(win, found, most: int = 40):
    """Press Tab (where the keyboard is, as a photographer does) until ``found(widget)``."""
    for _ in range(most):
        w = QApplication.focusWidget()
        if w is not None and found(w):
            return w
        QTest.keyClick(w, Qt.Key.Key_Tab)
    raise AssertionError(f"Tab never reached it (at {QApplication.focusWidget()!r})")


class _HeldEngine:
    """A fix waits until it is cancelled (a diagnosis fails at once: this engine has none)."""

    device = None

    def run(self, request, progress):
        while True:
            progress.token.check()
            time.sleep(0.01)


@pytest.fixture
def held_window(qtbot, tmp_path):
    """A window whose engine runs nothing (``_HeldEngine``); its jobs cancelled at the end."""
    client = EngineClient(_HeldEngine, journal=tmp_path / "ui-data" / "queue.json")
    win = MainWindow(client, AppSettings(backend="builtin", profile="builtin",
                                         out_dir=str(tmp_path / "out")), ask_resume=False)
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    try:
        yield win
    finally:
        client.cancel_all()
        if shiboken6.isValid(win):  # (pytest-qt closes and deletes it first)
            win.close()
        client.shutdown()  # (waits for the running job to stop)


def test_space_presses_the_control_reached_with_tab_in_the_viewer(qtbot, held_window, folder):
    """In the viewer, space on "Diagnose" (or "Fix this photo") reached with Tab toggled
    before/after and pressed nothing, and left / right on the docks' tab bar changed the photo:
    a photographer on the keyboard could neither press a panel button nor reach the Queue."""
    win = held_window
    opened(qtbot, win, folder)
    photo = folder / "a_noisy.jpg"
    _in_viewer(qtbot, win, photo)
    button = _tab_to(win, lambda w: w is win.panel.diagnose_btn)
    mode = win.compare_mode()
    QTest.keyClick(button, Qt.Key.Key_Space)
    assert [j.title for j in win.client.jobs()] == ["Diagnose a_noisy.jpg"]
    assert win.compare_mode() is mode
    tabs = _tab_to(win, lambda w: isinstance(w, QTabBar))
    assert tabs.tabText(tabs.currentIndex()) == "Diagnosis"
    QTest.keyClick(tabs, Qt.Key.Key_Right)
    assert tabs.tabText(tabs.currentIndex()) == "Queue" and win.current == photo
    # the photo's own keys stay the viewer's, and a button clicked with the mouse leaves them
    # to it (space after clicking Fix compares, as before: it does not fix the photo again)
    QTest.mouseClick(win.canvas, Qt.MouseButton.LeftButton)
    QTest.keyClick(win.canvas, Qt.Key.Key_Space)
    assert win.compare_mode() is Compare.BEFORE
    QTest.mouseClick(win.panel.run_btn, Qt.MouseButton.LeftButton)
    assert QApplication.focusWidget() is win.panel.run_btn
    n = len(win.client.jobs())
    QTest.keyClick(win.panel.run_btn, Qt.Key.Key_Space)
    assert win.compare_mode() is not Compare.BEFORE and len(win.client.jobs()) == n


def test_tab_passes_over_the_panel_behind_the_other_tab(qtbot, window, folder):
    """Tab from "Fix this photo" went into the Queue panel behind the Diagnosis tab (Qt keeps
    it shown, off the window): six presses with the focus out of sight, where space cancelled
    the selected jobs or cleared the queue unseen. The tab bar comes next now."""
    win = window
    opened(qtbot, win, folder)
    _in_viewer(qtbot, win, folder / "a_noisy.jpg")
    _tab_to(win, lambda w: w is win.panel.run_btn)
    QTest.keyClick(win.panel.run_btn, Qt.Key.Key_Tab)
    assert isinstance(QApplication.focusWidget(), QTabBar)
    for _ in range(30):  # once round the chain: never a control of the Queue panel
        QTest.keyClick(QApplication.focusWidget(), Qt.Key.Key_Tab)
        assert not win.queue_dock.isAncestorOf(QApplication.focusWidget())
    win.queue_dock.raise_()  # shown: its controls are reached
    assert _tab_to(win, lambda w: w is win.queue.cancel) is win.queue.cancel


def test_space_twice_brings_back_the_split_of_a_preview(qtbot, window, folder):
    """A preview of part of a photo not fixed yet, compared in Split: space, space went Split,
    Before, After (the preview alone over the photo), not back to Split."""
    win = window
    opened(qtbot, win, folder)
    _in_viewer(qtbot, win, folder / "a_noisy.jpg")
    part = QImage(40, 30, QImage.Format.Format_RGB32)
    part.fill(Qt.GlobalColor.red)
    win.canvas.set_preview(part, (10, 10, 50, 40))
    win.set_compare(Compare.SPLIT)
    QTest.keyClick(win.canvas, Qt.Key.Key_Space)
    assert win.compare_mode() is Compare.BEFORE
    QTest.keyClick(win.canvas, Qt.Key.Key_Space)
    assert win.compare_mode() is Compare.SPLIT


def test_cancelling_a_batch_says_how_many_were_cancelled(qtbot, held_window, folder):
    """"Fix selected", then the running and queued lines cancelled in the Queue panel: the
    status line said "a_noisy.jpg: Cancelled." - one photo, the running one, whose cancel comes
    last - for the whole batch."""
    win = held_window
    client = win.client
    opened(qtbot, win, folder)
    photos = sorted(folder.iterdir())
    for p in photos:
        win.fix(p)
    qtbot.waitUntil(lambda: client.running_id() is not None, timeout=10000)
    win.queue.refresh()
    win.queue.list.selectAll()
    win.queue.cancel.click()
    qtbot.waitUntil(client.is_idle, timeout=10000)
    text = win.status_label.text()
    assert text.startswith("Cancelled 3 jobs: "), text
    assert all(p.name in text for p in photos), text
    assert {win.model.item(p).job_state.value for p in photos} == {"cancelled"}
    # a job cancelled on its own later is said on its own
    win.fix(photos[0])
    qtbot.waitUntil(lambda: client.running_id() is not None, timeout=10000)
    win._cancelled_at -= 60  # (as if a minute had passed)
    client.cancel(client.running_id())
    qtbot.waitUntil(client.is_idle, timeout=10000)
    assert win.status_label.text() == f"{photos[0].name}: Cancelled."


def test_a_fix_finished_as_mend_stopped_is_not_run_again(qtbot, tmp_path, folder,
                                                        answered_yes):
    """The crash journal drops a finished fix a moment after its result is written: Mend
    stopping in between offered that fix again, and ran it twice (a_noisy_mend_1.jpg beside
    a_noisy_mend.jpg). A result of the photo written since the job was queued is its own: the
    fix is not offered, its result is recorded with the photo; one written before (an earlier
    fix of the photo) does not count."""
    from engine.imageio import load_photo, save_photo, source_record

    asked = answered_yes
    settings = AppSettings(backend="builtin", profile="builtin", out_dir=str(tmp_path / "out"))
    fixed, earlier, kept = folder / "a_noisy.jpg", folder / "b_clean.png", folder / "c_smooth.jpg"

    def result_of(photo):  # (what the engine writes: a result whose record names its photo)
        src = load_photo(photo)
        dest = settings.output_options(photo).out_dir / f"{photo.stem}_mend{photo.suffix}"
        record = {"software": "Mend 0.1.0", "label": "A", "steps": [], "models": [],
                  "kept_original": False, "source": source_record(photo)}
        return save_photo(src.pixels, dest, like=src, record=record)

    result_of(earlier)  # fixed before the jobs below were queued
    # the Mend that stops: its three fixes journaled, unfinished (its engine runs nothing)
    journal = data_dir() / "journals" / "queue-1-stopped.json"
    stopped = EngineClient(_HeldEngine, journal=journal)
    for p in (fixed, earlier, kept):
        stopped.submit(JobRequest(p, settings.output_options(p), label=Degradation.A,
                                  profile="builtin", backend="builtin"))
    qtbot.waitUntil(lambda: len(read_journal(journal)) == 3, timeout=10000)
    # two of them finished as it stopped: their results are on the disk, the journal says no
    # more than before (one is the photo's bytes: nothing to fix)
    written = result_of(fixed)
    copy = shutil.copyfile(kept, settings.output_options(kept).out_dir / "c_smooth_mend.jpg")
    stopped.shutdown()  # (its journal is left as a crash leaves it)
    assert len(json.loads(journal.read_text())["jobs"]) == 3
    client = EngineClient(_HeldEngine, journal=tmp_path / "own.json")
    win = MainWindow(client, settings, ask_resume=True)
    qtbot.addWidget(win)
    try:
        qtbot.waitUntil(lambda: bool(asked), timeout=10000)
        assert asked[0].startswith("Mend stopped with 1 unfinished job(s). 2 fixes had "
                                   "finished as Mend stopped (a_noisy.jpg, c_smooth.jpg)"), \
            asked[0]
        assert [j.path for j in client.jobs()] == [earlier]  # (run again: its result is older)
        qtbot.waitUntil(lambda: not journal.exists() and win.bg.pending() == 0, timeout=10000)
        store = win._store_for(fixed)
        assert store.load(fixed).outputs == [str(written)]
        assert store.load(kept).outputs == [str(copy)]
        assert sorted(p.name for p in written.parent.iterdir()) == [
            "a_noisy_mend.jpg", "b_clean_mend.png", "c_smooth_mend.jpg"]
    finally:
        client.cancel_all()
        if shiboken6.isValid(win):
            win.close()
        client.shutdown()


class _KeepingEngine:
    """A fix writes a copy of its photo: b_clean.png's is the original kept as it was
    (``kept_original``: nothing to fix), the others' are results."""

    device = None

    def run(self, request, progress):
        d = Diagnosis(Degradation.D, {"A": 0.1, "B": 0.1, "C": 0.1, "D": 0.7})
        photo = Path(request.path)
        out = Path(request.output.out_dir) / f"{photo.stem}_mend{photo.suffix}"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, out)
        return JobResult(photo, out, d.label, d, Plan(d.label, "builtin", ()),
                         kept_original=photo.name.startswith("b_"))


def test_a_result_that_is_the_original_says_unchanged_in_the_grid(qtbot, tmp_path, folder):
    """After "Fix selected", every photo had the same green "done" chip - the fixed ones and
    those whose result is the original as it was (nothing to fix, a reflection nothing was
    filled in, the guard's choice), which the status line said only while its photo's turn
    lasted: which photos changed could not be told from the grid."""
    client = EngineClient(_KeepingEngine, journal=tmp_path / "ui-data" / "queue.json")
    win = MainWindow(client, AppSettings(backend="builtin", profile="builtin",
                                         out_dir=str(tmp_path / "out")), ask_resume=False)
    qtbot.addWidget(win)
    win.show()
    try:
        opened(qtbot, win, folder)
        for p in sorted(folder.iterdir()):
            win.fix(p)
        qtbot.waitUntil(client.is_idle, timeout=10000)

        def chips() -> dict[str, str]:
            win.grid.viewport().grab()  # (painted: the chips drawn now)
            out = {}
            for row in range(win.proxy.rowCount()):
                ix = win.proxy.index(row, 0)
                tip = ix.data(Qt.ItemDataRole.ToolTipRole)
                out[ix.data()] = "unchanged" if "the original, unchanged" in tip else "done"
            return out

        expected = {"a_noisy.jpg": "done", "b_clean.png": "unchanged", "c_smooth.jpg": "done"}
        assert chips() == expected
        drawn = {text for text, _colour, _dpr in win.grid.itemDelegate()._badges}
        assert {"unchanged", "done"} <= drawn
        win.reload_folder()  # (listed again: what was known is kept)
        qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
        assert chips() == expected
        win.select_path(folder / "b_clean.png")
        assert "(the original, unchanged)" in win.panel.status.text()
    finally:
        if shiboken6.isValid(win):
            win.close()
        client.shutdown()


def test_select_all_in_a_folder_just_opened_shows_the_first_photo(qtbot, window, folder):
    """Ctrl+A in a folder just opened (no photo picked yet): every photo selected, and the panel
    beside them said "No photo selected", its "Fix this photo" disabled. The first selected
    photo is shown, with the note that "Fix as" applies to all of them."""
    win = window
    opened(qtbot, win, folder)
    assert win.current is None
    QTest.keyClick(win.grid, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    assert len(win.grid.selected_paths()) == 3
    assert win.current == folder / "a_noisy.jpg"
    assert win.panel.title.text() == "a_noisy.jpg" and win.panel.run_btn.isEnabled()
    assert win.panel.selection_note.text().startswith("3 photos selected")
    assert len(win.grid.selected_paths()) == 3  # (the selection stays whole)


def test_the_viewer_zooms_and_pans_from_the_keyboard(qtbot, window, folder):
    """No key zoomed or panned the viewer (Fit, 100 %, the wheel and a drag need the mouse), so
    a keyboard-only "Preview fix here" could only take the fitted view's centre. Ctrl+= / Ctrl+-
    zoom, Ctrl+0 fits, Ctrl+1 is 100 %, Shift+arrows pan; in the browser they are off (Shift+
    arrows extend the grid's selection there)."""
    win = window
    opened(qtbot, win, folder)
    assert not win.zoom_actions["Pan left"].isEnabled()  # (the browser: the grid's keys)
    _in_viewer(qtbot, win, folder / "a_noisy.jpg")
    c = win.canvas
    fitted = c.zoom
    QTest.keyClick(c, Qt.Key.Key_Equal, Qt.KeyboardModifier.ControlModifier)
    assert c.zoom == pytest.approx(fitted * 1.25) and not c.fit_mode
    centre = c.center
    QTest.keyClick(c, Qt.Key.Key_Right, Qt.KeyboardModifier.ShiftModifier)
    assert c.center.x() > centre.x() and c.center.y() == centre.y()
    assert win.current == folder / "a_noisy.jpg"  # (not the next photo)
    QTest.keyClick(c, Qt.Key.Key_Down, Qt.KeyboardModifier.ShiftModifier)
    assert c.center.y() > centre.y()
    QTest.keyClick(c, Qt.Key.Key_Minus, Qt.KeyboardModifier.ControlModifier)
    assert c.zoom == pytest.approx(fitted)
    QTest.keyClick(c, Qt.Key.Key_1, Qt.KeyboardModifier.ControlModifier)
    assert c.zoom == pytest.approx(1.0 / max(1.0, c.devicePixelRatioF()))
    QTest.keyClick(c, Qt.Key.Key_0, Qt.KeyboardModifier.ControlModifier)
    assert c.fit_mode and c.zoom == pytest.approx(fitted)
    win.show_browser()
    assert not any(a.isEnabled() for a in win.zoom_actions.values())
