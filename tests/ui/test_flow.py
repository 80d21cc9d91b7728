"""The whole app with the real engine: open a folder → diagnose (builtin analyzer) → fix
(builtin profile) → compare → export; outputs on disk, originals unchanged; sidecars restore
the state on reopen; mask editor "Inpaint again" with the edited mask."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from engine.api import Degradation
from ui.browser.model import PathRole
from ui.editor.canvas import Compare
from ui.engine_client import EngineClient, JobKind, JobState
from ui.main_window import MainWindow
from ui.settings import AppSettings

from .conftest import opened, write_photo


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()



def test_open_diagnose_fix_compare_export(qtbot, window, folder, tmp_path):
    before = {p.name: _sha(p) for p in folder.iterdir()}
    win = window
    opened(qtbot, win, folder)
    assert win.model.total() == 3
    qtbot.waitUntil(lambda: win.model.ready_count() == 3, timeout=20000)

    win.diagnose_all()
    qtbot.waitUntil(win.client.is_idle, timeout=60000)
    diags = {it.path.name: it.diagnosis for it in win.model.items()}
    assert all(d is not None for d in diags.values()), diags
    assert all(abs(sum(d.scores.values()) - 1) < 1e-3 for d in diags.values())

    target = folder / "a_noisy.jpg"
    win.select_path(target)
    assert win.current == target
    assert win.panel.diagnosis is diags["a_noisy.jpg"]
    assert win.panel.plan is not None and win.panel.plan.profile == "builtin"
    # before anything runs, the plan shows what it will cost (reference figures on a CPU)
    qtbot.waitUntil(lambda: win.panel.estimate_label.text().startswith("Estimate:"),
                    timeout=10000)
    first = win.panel.estimate_label.text()
    assert "nothing to run" in first or ("MB" in first and "reference CPU" in first), first

    win.grid.selectAll()
    ids = win.fix_selected()
    assert len(ids) == 3
    assert win.model.item(target).job_state in (JobState.QUEUED, JobState.RUNNING)
    qtbot.waitUntil(win.client.is_idle, timeout=90000)
    failed = [j for j in win.client.jobs() if j.state is not JobState.DONE]
    assert not failed, failed
    for it in win.model.items():
        assert it.job_state is JobState.DONE and it.output is not None and it.output.exists()
        assert it.output.parent == tmp_path / "out" and it.output != it.path

    # after a run the estimate comes from this machine's own step timings
    if "nothing to run" not in first:
        win.select_path(folder / "b_clean.png")
        win.select_path(target)
        assert "from earlier runs here" in win.panel.estimate_label.text()

    # compare: the viewer loads the original and the result off the GUI thread
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(target)
    assert win.canvas.before is not None and win.canvas.after is not None
    assert win.canvas.mode is Compare.SPLIT
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    win.activateWindow()
    QTest.keyClick(win.canvas, Qt.Key.Key_Space)
    assert win.canvas.mode is Compare.BEFORE
    QTest.keyClick(win.canvas, Qt.Key.Key_Space)
    assert win.canvas.mode is Compare.SPLIT
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        QTest.keyClick(win.canvas, Qt.Key.Key_Right)  # next photo
    assert win.current == folder / "b_clean.png"
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        QTest.keyClick(win.canvas, Qt.Key.Key_Left)
    assert win.current == target
    win.set_compare(Compare.SIDE)
    assert win.canvas.mode is Compare.SIDE
    win.canvas.zoom_by(2.0)
    win.canvas.repaint()

    dest = tmp_path / "exported" / "final.jpg"
    with qtbot.waitSignal(win.exported, timeout=10000):
        win.export_current(dest)
    assert dest.exists() and _sha(dest) == _sha(win.model.item(target).output)
    # export never overwrites the original
    win.export_current(target)
    qtbot.wait(300)
    assert {p.name: _sha(p) for p in folder.iterdir() if p.is_file()} == before
    assert "never replaces the original" in win.status_label.text()

    # the sidecars restore diagnosis and outputs when the folder is opened again
    qtbot.waitUntil(lambda: (folder / ".mend" / "a_noisy.jpg.json").exists(), timeout=5000)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=5000)
    opened(qtbot, win, tmp_path)  # elsewhere
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: win.model.item(target).diagnosis is not None, timeout=10000)
    it = win.model.item(target)
    assert it.diagnosis.label == diags["a_noisy.jpg"].label and it.output.exists()
    assert it.job_state is JobState.DONE


def test_override_class_and_inpaint_again_with_edited_mask(qtbot, window, folder, tmp_path):
    win = window
    opened(qtbot, win, folder)
    target = folder / "b_clean.png"
    win.select_path(target)
    win.diagnose([target])
    qtbot.waitUntil(win.client.is_idle, timeout=60000)
    win.panel.set_override(Degradation.B)
    qtbot.waitUntil(lambda: win.panel.plan is not None
                    and win.panel.plan.label is Degradation.B, timeout=20000)
    assert [s.name for s in win.panel.plan.steps][-1].startswith("inpaint")

    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(target)
    win.show_mask_editor()
    doc = win.mask_doc
    assert doc is not None and doc.full.shape == (72, 96)
    assert win.mask_bar.isVisible() or not win.isVisible()
    assert not win.tool_actions["sam"].isEnabled()  # no SAM weights in the test store
    assert "sam-vit-base" in win.tool_actions["sam"].toolTip()
    doc.fill_polygon([(30, 20), (60, 20), (60, 50), (30, 50)])

    # keyboard: E eraser, B brush, ] bigger, Ctrl+Z / Ctrl+Shift+Z
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    win.activateWindow()
    win.canvas.setFocus()
    QTest.keyClick(win.canvas, Qt.Key.Key_E)
    assert win.canvas.tool == "erase"
    QTest.keyClick(win.canvas, Qt.Key.Key_B)
    assert win.canvas.tool == "brush"
    r0 = win.canvas.brush_radius
    QTest.keyClick(win.canvas, Qt.Key.Key_BracketRight)
    assert win.canvas.brush_radius > r0
    QTest.keyClick(win.canvas, Qt.Key.Key_BracketLeft)
    assert win.canvas.brush_radius < r0 * 1.25 + 1
    filled = doc.full.copy()
    QTest.keyClick(win.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert doc.full.max() == 0
    QTest.keyClick(win.canvas, Qt.Key.Key_Z,
                   Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert np.array_equal(doc.full, filled)
    with qtbot.waitSignal(win.fixed, timeout=90000):
        win.inpaint_again()
    st = win.states[target]
    assert st.mask_path is not None and st.mask_path.exists()
    saved = st.mask_path
    from ui.editor.mask import read_mask

    assert np.array_equal(read_mask(saved, (72, 96)) > 127, doc.full > 127)
    assert st.result.label is Degradation.B
    assert st.output is not None and st.output.exists()


def test_click_to_select_runs_in_the_engine_thread(qtbot, window, folder, monkeypatch):
    """The SAM wiring (the SAM model itself is tested by the engine): a click on the canvas
    becomes a job in the engine thread whose mask is added (or, Shift-click, removed)."""
    import threading

    from engine.restore import reflection

    calls = []

    def fake_sam(image, points, labels, runtime, check=None):
        calls.append((threading.get_ident(), points, labels, check))
        m = np.zeros(image.shape[:2], np.uint8)
        x, y = (round(float(v)) for v in points[0])
        m[max(0, y - 5):y + 5, max(0, x - 5):x + 5] = 255
        return m

    monkeypatch.setattr(reflection, "sam_mask_from_points", fake_sam)
    monkeypatch.setattr(MainWindow, "_sam_available", lambda self: True)
    win = window
    opened(qtbot, win, folder)
    target = folder / "b_clean.png"
    win.select_path(target)
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(target)
    win.show_mask_editor()
    # (SAM's weights are checked in the pool: the action follows a moment later)
    qtbot.waitUntil(win.tool_actions["sam"].isEnabled, timeout=10000)
    win.set_tool("sam")
    assert win.canvas.tool == "sam"
    doc = win.mask_doc
    win._sam_click(40.0, 30.0, 1)
    qtbot.waitUntil(lambda: doc.full[30, 40] == 255, timeout=20000)
    assert calls and calls[0][0] != threading.get_ident() and calls[0][2] == [1]
    assert callable(calls[0][3])  # (the job's cancel check: a cancel stops SAM's resizes)
    assert doc.undo.undoText() == "Click-select"
    win._sam_click(40.0, 30.0, 0)
    qtbot.waitUntil(lambda: doc.full[30, 40] == 0, timeout=20000)
    doc.undo.undo()
    assert doc.full[30, 40] == 255


def test_cancel_mid_job_leaves_the_sidecar_consistent(qtbot, window, tmp_path, held_steps):
    """Issue 7: a job cancelled while it runs changes neither the photo, its sidecar (still the
    last complete JSON) nor the outputs; the job says cancelled. (The second job's step is
    held until the cancel: ``held_steps``, instead of a 2 MP photo for a long denoise.)"""
    import json

    d = tmp_path / "card"
    photo = write_photo(d / "noisy.jpg", 320, 240, seed=4, kind="noisy")
    before = _sha(photo)
    win = window
    opened(qtbot, win, d)
    qtbot.waitUntil(lambda: win.model.ready_count() == 1, timeout=20000)
    win.select_path(photo)
    (first,) = win.fix_selected()  # a complete run writes the sidecar
    qtbot.waitUntil(win.client.is_idle, timeout=120000)
    assert win.client.job(first).state is JobState.DONE
    side = d / ".mend" / "noisy.jpg.json"
    qtbot.waitUntil(lambda: side.exists() and win.bg.pending() == 0, timeout=10000)
    saved = side.read_bytes()
    outputs = sorted((tmp_path / "out").iterdir())

    held_steps.on = True  # (the second job cannot end before the cancel reaches it)
    (second,) = win.fix_selected()
    qtbot.waitUntil(lambda: win.client.job(second).state is JobState.RUNNING, timeout=30000)
    win.client.cancel(second)
    qtbot.waitUntil(win.client.is_idle, timeout=30000)
    assert win.client.job(second).state is JobState.CANCELLED
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
    assert side.read_bytes() == saved and json.loads(saved)  # untouched, still valid JSON
    assert sorted((tmp_path / "out").iterdir()) == outputs  # nothing partial was written
    assert _sha(photo) == before


def test_plan_edits_update_the_estimate(qtbot, window, folder):
    win = window
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: win.model.ready_count() == 3, timeout=20000)
    target = folder / "a_noisy.jpg"
    win.select_path(target)
    win.diagnose_all()
    qtbot.waitUntil(win.client.is_idle, timeout=60000)
    win.select_path(target)
    win.panel.set_override(Degradation.A)  # builtin A: denoise (sharpening listed, off)
    qtbot.waitUntil(lambda: win.panel.plan is not None and win.panel.plan.label is Degradation.A
                    and len(win.panel.plan.steps) >= 1, timeout=20000)
    qtbot.waitUntil(lambda: "Estimate: ~" in win.panel.estimate_label.text(), timeout=10000)
    from PySide6.QtCore import Qt

    est = win.client.estimate(win.panel.plan, win._state(target).size)
    assert est is not None and est.seconds > 0
    assert win.panel.estimate_label.text() == f"Estimate: {est.describe()}"
    for i in range(win.panel.steps.count()):  # untick every step: nothing left to run
        win.panel.steps.item(i).setCheckState(Qt.CheckState.Unchecked)
    est_off = win.client.estimate(win.panel.plan, win._state(target).size)
    assert est_off.seconds == 0
    assert win.panel.estimate_label.text() == f"Estimate: {est_off.describe()}"



def test_a_closed_window_is_freed_at_once_without_the_garbage_collector(qtbot, folder, tmp_path):
    """The app's quit path: nobody deletes the window, it is just dropped. It must be freed at
    once, with its engine client, worker, panels and mask document, by reference counting: a
    lambda capturing the window, connected to a signal, kept it alive from C++ for good, and a
    window freed by the garbage collector has its C++ widgets deleted mid-collection."""
    import gc
    import weakref

    def open_edit_close() -> dict[str, weakref.ref]:
        client = EngineClient(journal=tmp_path / "ui-data" / "queue.json")
        win = MainWindow(client, AppSettings(backend="builtin", profile="builtin",
                                             out_dir=str(tmp_path / "out")), ask_resume=False)
        win.show()
        opened(qtbot, win, folder)
        qtbot.waitUntil(lambda: win.model.ready_count() == 3, timeout=20000)
        win.diagnose_all()
        qtbot.waitUntil(client.is_idle, timeout=60000)
        target = folder / "a_noisy.jpg"
        win.select_path(target)
        with qtbot.waitSignal(win.view_loaded, timeout=20000):
            win.show_viewer(target)
        win.show_mask_editor()
        doc = win.mask_doc
        assert doc is not None
        doc.fill_polygon([(10, 10), (40, 10), (40, 40)])  # an undoable edit
        qtbot.waitUntil(lambda: not doc.busy() and win.bg.pending() == 0, timeout=10000)
        # (not the engine worker: the process's first `import torch`, in the worker's thread,
        # keeps the importing frames alive, and with them the worker; its C++ side is deleted
        # with the thread)
        refs = {name: weakref.ref(o) for name, o in (
            ("MainWindow", win), ("EngineClient", client), ("DiagnosisPanel", win.panel),
            ("QueuePanel", win.queue), ("MaskCanvas", win.canvas),
            ("ThumbnailLoader", win.loader), ("MaskDocument", doc))}
        win.close()
        client.shutdown()
        return refs

    gc.collect()
    gc.disable()  # whatever is freed below is freed by reference counting
    try:
        refs = open_edit_close()
        alive = sorted(name for name, r in refs.items() if r() is not None)
    finally:
        gc.enable()
    assert alive == [], f"still alive once dropped (a reference cycle): {alive}"


def test_a_queued_sidecar_save_survives_a_folder_switch(qtbot, window, folder, tmp_path):
    """Switching folders drops the queued thumbnails. It used to clear the whole shared pool,
    so a sidecar save (or an export) still waiting there was silently lost. Thumbnails have
    their own pool now; the save runs."""
    import threading

    win = window
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: win.model.ready_count() == 3, timeout=20000)
    gate = threading.Event()
    started = threading.Event()

    def hold() -> None:  # occupy every thread of the pool the window's saves go to
        started.set()
        gate.wait(20)

    for _ in range(win.client.pool.maxThreadCount()):
        win.client.run_in_pool(hold)
    assert started.wait(10)
    photo = folder / "b_clean.png"
    win._save_sidecar(photo, warnings=["kept through the switch"])  # queued behind hold()
    other = tmp_path / "other"
    write_photo(other / "x.png", 64, 48, seed=5)
    store = win.sidecars
    win.open_folder(other)  # drops queued thumbnails only
    gate.set()
    qtbot.waitUntil(lambda: win.client.pool.activeThreadCount() == 0, timeout=20000)
    win.client.pool.waitForDone(10000)
    sc = store.load(photo)
    assert sc is not None and sc.warnings == ["kept through the switch"]


def test_a_folder_without_photos_says_where_they_are(qtbot, window, tmp_path):
    """Opening a folder whose photos are all in subfolders (a year folder of a shoot archive)
    says so instead of showing an empty grid without a word."""
    top = tmp_path / "archive"
    write_photo(top / "2024" / "a.png", 64, 48, seed=5)
    write_photo(top / "2025" / "b.png", 64, 48, seed=6)
    (tmp_path / "void").mkdir()
    win = window
    opened(qtbot, win, top)
    assert win.model.total() == 0
    qtbot.waitUntil(lambda: "subfolders hold 2" in win.status_label.text(), timeout=10000)
    assert win.grid.placeholder() == win.status_label.text()
    opened(qtbot, win, tmp_path / "void")
    assert win.status_label.text() == win.grid.placeholder() == "No photos in void"
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
    assert win.status_label.text() == "No photos in void"
    # a folder with photos: the grid's empty text is for a filter that hides them all
    opened(qtbot, win, top / "2024")
    assert win.model.total() == 1
    assert win.grid.placeholder() == "No photo matches this filter"
    win.filter.setCurrentIndex(win.filter.findText("B · Reflection"))
    assert win.proxy.rowCount() == 0  # not diagnosed: no B
    win.grid.grab()  # paints the placeholder (no exception from the paint path)


def test_a_folder_is_listed_off_the_gui_thread(qtbot, window, folder, monkeypatch):
    """A folder on a slow network drive must not freeze the window: open_folder returns at once,
    the grid says it is reading, and the listing arrives from a pool thread."""
    import threading
    import time

    import ui.main_window as mw

    threads = []
    real = mw.scan_folder

    def slow_scan(f):
        threads.append(threading.current_thread())
        time.sleep(0.5)
        return real(f)

    monkeypatch.setattr(mw, "scan_folder", slow_scan)
    win = window
    t0 = time.monotonic()
    win.open_folder(folder)
    assert time.monotonic() - t0 < 0.4 and win.folder_loading
    assert win.grid.placeholder() == f"Reading {folder.name}…" and win.model.total() == 0
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    assert win.model.total() == 3
    assert threads and threads[0] is not threading.main_thread()


def test_a_folder_that_cannot_be_read_says_so(qtbot, window, folder, monkeypatch):
    """An unreadable folder (permissions, a network drive gone) is not shown as 'no photos'."""
    import ui.main_window as mw

    def denied(f):
        raise PermissionError(13, "Permission denied", str(f))

    monkeypatch.setattr(mw, "scan_folder", denied)
    win = window
    opened(qtbot, win, folder)
    assert win.model.total() == 0
    assert win.grid.placeholder().startswith(f"Could not read {folder.name}: ")
    assert "Permission denied" in win.status_label.text()


def test_files_mend_wrote_are_badged_and_say_what_was_done(qtbot, window, folder, tmp_path):
    """A result (its record says what Mend did) and a saved mask are told apart from the
    photographer's originals: a chip in the grid, the record in the panel."""
    from engine.imageio import load_photo, save_mask, save_photo

    src = load_photo(folder / "b_clean.png")
    record = {"software": "Mend 0.1.0", "label": "A", "profile": "builtin",
              "steps": [{"name": "denoise", "model": "builtin-nlmeans", "seconds": 0.1}],
              "models": [], "kept_original": False}
    save_photo(src.pixels, folder / "b_clean_mend.png", like=src, record=record)
    save_mask(np.ones((72, 96), bool), folder / "b_clean_mask.png")
    win = window
    opened(qtbot, win, folder)
    kinds = lambda: {it.path.name: it.mend_kind for it in win.model.items()}
    qtbot.waitUntil(lambda: kinds()["b_clean_mend.png"] == "result", timeout=10000)
    assert kinds() == {"a_noisy.jpg": "", "b_clean.png": "", "b_clean_mask.png": "mask",
                       "b_clean_mend.png": "result", "c_smooth.jpg": ""}
    win.grid.viewport().grab()  # the chips paint

    win.select_path(folder / "b_clean_mend.png")
    qtbot.waitUntil(lambda: win.panel.history.isVisible(), timeout=10000)
    text = win.panel.history.text()
    assert text.startswith("A result written by Mend 0.1.0 as A · ") and \
        "denoise (builtin-nlmeans)" in text, text
    win.select_path(folder / "b_clean.png")  # an original: no record, nothing shown
    qtbot.wait(200)
    assert not win.panel.history.isVisible() and win.panel.history.text() == ""
    win.select_path(folder / "b_clean_mask.png")
    qtbot.waitUntil(lambda: win.panel.history.isVisible(), timeout=10000)
    assert win.panel.history.text() == "A reflection mask saved by Mend 0.1.0."


def _settle(qtbot, win, ms=60000):
    qtbot.waitUntil(win.client.is_idle, timeout=ms)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)


def test_a_job_finishing_after_a_folder_switch_is_recorded_beside_its_own_photo(
        qtbot, window, tmp_path):
    """Fix A/IMG_0001.jpg, open B (another IMG_0001.jpg) before the result arrives: the
    result belongs to A's photo, never to B's photo of the same name."""
    from .conftest import write_photo as wp

    a, b = tmp_path / "A", tmp_path / "B"
    wp(a / "IMG_0001.jpg", 96, 72, seed=1, kind="noisy")
    wp(b / "IMG_0001.jpg", 96, 72, seed=7)
    win = window
    opened(qtbot, win, a)
    win.fix(a / "IMG_0001.jpg")
    opened(qtbot, win, b)
    _settle(qtbot, win)
    assert not (b / ".mend" / "IMG_0001.jpg.json").exists()
    assert win.model.item(b / "IMG_0001.jpg").output is None
    opened(qtbot, win, a)  # A's photo got its result
    qtbot.waitUntil(lambda: win.model.item(a / "IMG_0001.jpg").output is not None, timeout=10000)


def test_mask_edits_survive_the_editor_another_photo_and_a_finished_fix(qtbot, window, folder):
    win = window
    opened(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(target)
    win.show_mask_editor()
    win.fix(target)  # queued earlier, finishes while the photographer paints
    win.mask_doc.fill_polygon([(30, 20), (60, 20), (60, 50), (30, 50)])
    painted = win.mask_doc.full.copy()
    with qtbot.waitSignal(win.view_loaded, timeout=60000):
        pass  # the finished fix reloads the view
    assert np.array_equal(win.mask_doc.full, painted)
    win.mask_action.setChecked(False)  # the editor off and on again
    win.mask_action.setChecked(True)
    assert np.array_equal(win.mask_doc.full, painted)
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.step_photo(1)  # another photo and back
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.step_photo(-1)
    assert win.current == target and np.array_equal(win.mask_doc.full, painted)
    assert win.mask_doc.undo.count() == 1  # and its undo history


def test_inpaint_again_waits_for_the_photo_switched_to(qtbot, window, folder):
    """Right after → the mask on screen is still the previous photo's: not used for this one."""
    win = window
    opened(qtbot, win, folder)
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(folder / "a_noisy.jpg")
    win.show_mask_editor()
    win.mask_doc.fill_polygon([(30, 20), (60, 20), (60, 50), (30, 50)])
    win.step_photo(1)  # b_clean.png, still decoding
    assert win.inpaint_again() is None and "still loading" in win.status_label.text()
    # no fix queued (only the searches for the automatic masks of the photos the editor opens
    # on: a_noisy.jpg's, cancelled as it is not shown any more, then b_clean.png's)
    qtbot.waitUntil(win.client.is_idle, timeout=20000)
    assert {j.kind for j in win.client.jobs()} == {JobKind.DETECT}


def test_a_job_retried_from_the_queue_is_recorded(qtbot, window, folder):
    win = window
    opened(qtbot, win, folder)
    p = folder / "a_noisy.jpg"
    win.fix(folder / "c_smooth.jpg")  # running first
    jid = win.fix(p)
    win.client.cancel(jid)  # cancelled while queued...
    _settle(qtbot, win)
    assert win.client.retry(jid) is not None  # ...then Retry in the queue panel
    _settle(qtbot, win)
    assert win.states[p].output is not None and win.states[p].output.is_file()
    assert win.model.item(p).job_state is JobState.DONE
    qtbot.waitUntil(lambda: (folder / ".mend" / "a_noisy.jpg.json").exists(), timeout=5000)


def test_the_current_photo_stays_when_its_diagnosis_moves_it_out_of_the_filter(
        qtbot, window, folder):
    win = window
    opened(qtbot, win, folder)
    win.filter.setCurrentIndex(win.filter.findText("Not diagnosed"))
    assert win.proxy.rowCount() == 3
    b = folder / "b_clean.png"
    win.select_path(b)
    win._diagnose_current()
    _settle(qtbot, win)
    assert win.model.item(b).diagnosis is not None
    assert win.current == b and win.grid.currentIndex().data(PathRole) == b
    assert win.proxy.rowCount() == 3  # shown while current...
    win.select_path(folder / "a_noisy.jpg")
    assert win.proxy.rowCount() == 2  # ...and filtered out once another photo is picked


def _with_saved_masks(win, folder: Path) -> list[Path]:
    """A saved mask beside each photo (as after "Inpaint again"), known to the window."""
    from engine.imageio import save_mask

    paths = sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
    for p in paths:
        h, w = (72, 96) if p.stem != "c_smooth" else (60, 80)
        m = np.zeros((h, w), np.uint8)
        m[10:40, 20:70] = 255
        dest = folder / f"{p.stem}_edited_mask.png"
        save_mask(m, dest)
        win._state(p).mask_path = dest
    return paths


def test_viewing_photos_keeps_one_read_only_mask_document(qtbot, window, folder):
    """The viewer's read-only overlay of a saved mask is a MaskDocument; each photo viewed built
    one that nothing released (~38 MB at 24 MP each). The one a photo replaces is released."""
    import weakref

    from PySide6.QtCore import QCoreApplication, QEvent

    from ui.editor.mask import MaskDocument

    win = window
    opened(qtbot, win, folder)
    paths = _with_saved_masks(win, folder)
    seen = []
    for _round in range(2):
        for p in paths:
            with qtbot.waitSignal(win.view_loaded, timeout=20000):
                win.show_viewer(p)
            assert win.canvas.doc is not None and win.canvas.doc.full[20, 40] == 255
            seen.append(weakref.ref(win.canvas.doc))
            QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
            assert len(win.findChildren(MaskDocument)) == 1
    assert sum(r() is not None for r in seen) == 1


def test_the_viewer_overlay_shows_unsaved_mask_edits_after_another_photo(qtbot, window, folder):
    """Leave the editor with an edit, view another photo and come back: the overlay is the
    edited mask (read-only), not the saved one the edit has not replaced yet."""
    win = window
    opened(qtbot, win, folder)
    paths = _with_saved_masks(win, folder)
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(paths[0])
    win.show_mask_editor()
    edited = win.mask_doc
    edited.fill_polygon([(2, 50), (15, 50), (15, 65), (2, 65)])  # outside the saved mask
    edited.flush()
    win.leave_mask_editor()
    for p in (paths[1], paths[0]):
        with qtbot.waitSignal(win.view_loaded, timeout=20000):
            win.show_viewer(p)
    assert win.canvas.doc is edited and win.canvas.doc.full[58, 8] == 255
    assert win.canvas.tool == "pan" and win.mask_doc is None  # read-only in the viewer
    win.show_mask_editor()
    assert win.mask_doc is edited and edited.undo.count() == 1


def test_stepping_through_photos_decodes_only_the_one_landed_on(qtbot, window, folder,
                                                                 monkeypatch):
    """Every view build queued while the pool was busy used to decode its photo before the
    photo landed on (seconds each at 24 MP); a superseded one now returns before decoding."""
    import threading

    from ui import photo_io

    win = window
    opened(qtbot, win, folder)
    paths = sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(paths[0])
    decoded: list[str] = []
    real = photo_io.load_full_rgba  # (the viewer's decode: the photo and its alpha)
    monkeypatch.setattr(photo_io, "load_full_rgba",
                        lambda p: decoded.append(Path(p).name) or real(p))
    gate = threading.Event()
    pool = win.client.pool
    for _ in range(pool.maxThreadCount()):  # every pool thread busy: the builds queue up
        win.client.run_in_pool(lambda: gate.wait(10))
    loaded: list[Path] = []
    win.view_loaded.connect(loaded.append)
    win.step_photo(1)
    win.step_photo(1)
    win.step_photo(-1)
    win.step_photo(1)
    landed = win.current
    assert landed == paths[2]
    gate.set()
    qtbot.waitUntil(lambda: landed in loaded, timeout=20000)
    pool.waitForDone(10000)
    assert decoded == [landed.name] and loaded == [landed]


def test_view_conversions_are_unchanged(qapp):
    """load_full's float -> uint8 and the removed layer, done with fewer temporaries, give the
    same bytes as the straightforward numpy expressions."""
    from ui.imaging import float_to_uint8
    from ui.photo_io import build_view, removed_layer

    rng = np.random.default_rng(0)
    px = rng.random((64, 48, 3), dtype=np.float32) * 1.2 - 0.1
    px[0, 0] = [0.5 / 255, 1.5 / 255, 254.5 / 255]  # rounding edges
    assert np.array_equal(float_to_uint8(px), (np.clip(px, 0, 1) * 255 + 0.5).astype(np.uint8))
    a = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    want = np.clip(np.abs(a.astype(np.int16) - b.astype(np.int16)).astype(np.float32) * 3.0,
                   0, 255).astype(np.uint8)
    assert np.array_equal(removed_layer(a, b), want)
    assert build_view(Path("nowhere.png"), None, stale=lambda: True) is None  # before decoding
