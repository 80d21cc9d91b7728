"""The photographer's main flows, audited (session 11), each through the real MainWindow on the
real builtin engine: a big folder and Ctrl+A, thumbnails when their cache cannot be written,
"Fix as" (one photo, before its diagnosis, a multi-selection, right before Fix), plan edits,
the edited mask a fix uses, unsaved mask edits on leaving a folder or quitting, export names, and
a folder removed while a job runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from engine.api import Degradation
from ui.engine_client import EngineClient, JobState
from ui.main_window import MainWindow
from ui.settings import AppSettings

from .conftest import opened, write_photo


def settle(qtbot, win, ms: int = 90000) -> None:
    qtbot.waitUntil(win.client.is_idle, timeout=ms)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)


def _diagnosed(qtbot, win, folder: Path) -> dict[str, Degradation]:
    opened(qtbot, win, folder)
    win.diagnose_all()
    settle(qtbot, win)
    return {p.name: st.diagnosis.label for p, st in win.states.items() if st.diagnosis}


def _other_class(label: Degradation) -> Degradation:
    """A class the analyzer did not say, with a chain that writes something (not D)."""
    return Degradation.C if label is not Degradation.C else Degradation.A


# -- a big folder ---------------------------------------------------------------------------
def test_ctrl_a_selects_every_photo_of_a_big_folder(qtbot, window, tmp_path):
    """Rows arrive in batches of 256 as the grid scrolls: Ctrl+A selected (and "Fix selected"
    fixed) only the first 256 photos of a 300-photo folder."""
    d = tmp_path / "card"
    first = write_photo(d / "IMG_0000.png", 32, 24)
    for i in range(1, 300):
        shutil.copy(first, d / f"IMG_{i:04d}.png")
    (d / "notes.txt").write_text("not a photo")
    (d / "IMG_9999.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    win = window
    opened(qtbot, win, d)
    assert win.model.total() == 301
    win.grid.setFocus()
    QTest.keyClick(win.grid, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    selected = win.selected_paths()
    assert len(selected) == 301 and selected[-1].name == "IMG_9999.jpg"
    # the keyboard moves the current photo, and the panel follows it
    win.select_path(d / "IMG_0000.png")
    QTest.keyClick(win.grid, Qt.Key.Key_Right)
    assert win.current == d / "IMG_0001.png"
    assert win.panel.title.text() == "IMG_0001.png"


@pytest.fixture
def unwritable_cache(tmp_path, monkeypatch):
    """The thumbnail cache cannot be written (a full disk, a read-only home): here its folder
    is a file."""
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("")
    monkeypatch.setenv("MEND_UI_CACHE_DIR", str(blocked))
    return blocked


def test_thumbnails_show_when_their_cache_cannot_be_written(qtbot, unwritable_cache, window,
                                                            folder):
    """A failed cache write raised out of the thumbnail task (SaveFailed is no OSError): no
    thumbnail ever showed, every cell said "…"."""
    win = window
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: win.model.ready_count() == 3, timeout=20000)
    assert win.model.failed_count() == 0


# -- "Fix as" and the plan ------------------------------------------------------------------
def test_the_class_chosen_right_before_fix_is_the_class_that_runs(qtbot, window, folder,
                                                                 tmp_path):
    """Choosing "Fix as" queues a re-plan behind the jobs ahead; "Fix this photo" clicked before
    it arrived ran the previous class's plan (the request's plan wins over its label)."""
    win = window
    labels = _diagnosed(qtbot, win, folder)
    target = folder / "b_clean.png"
    chosen = _other_class(labels[target.name])
    win.select_path(target)
    win.panel.set_override(chosen)
    win.panel.run_btn.click()  # at once: the new plan is still on its way
    settle(qtbot, win)
    st = win.states[target]
    assert st.result is not None and st.result.label is chosen
    assert st.result.plan.label is chosen
    # what the export copies is that result
    with qtbot.waitSignal(win.exported, timeout=10000) as got:
        win.export_current(tmp_path / "exported" / "b_clean_final.png")
    assert Path(got.args[0]).read_bytes() == st.output.read_bytes()


def test_a_class_chosen_before_the_diagnosis_is_kept(qtbot, window, folder):
    """"Fix as" on a photo not diagnosed yet diagnosed it and then forgot the choice: the combo
    went back to Automatic and the plan was the analyzer's class."""
    win = window
    opened(qtbot, win, folder)
    target = folder / "b_clean.png"
    win.select_path(target)
    win.panel.set_override(Degradation.C)
    settle(qtbot, win)
    assert win.panel.override_label() is Degradation.C
    assert win.panel.plan is not None and win.panel.plan.label is Degradation.C
    # and it is still the choice when the photo is picked again
    win.select_path(folder / "a_noisy.jpg")
    assert win.panel.override_label() is None
    win.select_path(target)
    assert win.panel.override_label() is Degradation.C
    assert win.panel.plan.label is Degradation.C
    assert len(win.fix_selected()) == 1
    settle(qtbot, win)
    assert win.states[target].result.label is Degradation.C


def test_fix_as_applies_to_every_selected_photo(qtbot, window, folder):
    """Select several photos, choose "Fix as": only the current one was re-planned, and "Fix
    selected" fixed the others as diagnosed."""
    win = window
    _diagnosed(qtbot, win, folder)
    win.select_path(folder / "a_noisy.jpg")
    assert not win.panel.selection_note.isVisibleTo(win.panel)
    win.grid.selectAll()
    assert win.panel.selection_note.text().startswith("3 photos selected")  # said beforehand
    assert win.panel.selection_note.isVisibleTo(win.panel)
    win.panel.set_override(Degradation.C)
    assert "3 selected photos" in win.status_label.text()
    settle(qtbot, win)
    assert {p.name: st.plan.label for p, st in win.states.items()} == dict.fromkeys(
        ("a_noisy.jpg", "b_clean.png", "c_smooth.jpg"), Degradation.C)
    ids = win.fix_selected()
    assert len(ids) == 3
    settle(qtbot, win)
    assert {p.name: st.result.label for p, st in win.states.items()} == dict.fromkeys(
        ("a_noisy.jpg", "b_clean.png", "c_smooth.jpg"), Degradation.C)


def test_plan_edits_are_what_fix_selected_runs_and_stay_with_the_photo(qtbot, window, folder):
    """A step unticked in the panel was run anyway by "Fix selected" (Ctrl+R), and forgotten
    when another photo was picked and this one again."""
    win = window
    _diagnosed(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    win.select_path(target)
    win.panel.set_override(Degradation.A)  # builtin A: denoise (sharpening listed, off)
    settle(qtbot, win)
    names = [s.name for s in win.panel.plan.steps]
    assert len(names) >= 2, names
    # the edit: sharpening instead of denoising
    win.panel.steps.item(0).setCheckState(Qt.CheckState.Unchecked)
    win.panel.steps.item(1).setCheckState(Qt.CheckState.Checked)
    win.select_path(folder / "b_clean.png")
    win.select_path(target)
    assert win.panel.steps.item(0).checkState() == Qt.CheckState.Unchecked
    assert not win.panel.plan.steps[0].enabled
    assert len(win.fix_selected()) == 1
    settle(qtbot, win)
    ran = [s.name for s in win.states[target].result.steps]
    assert names[0] not in ran and names[1] in ran, ran
    # and the next day: the folder opened again keeps the choice and the edited chain
    opened(qtbot, win, folder.parent)
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: win.model.item(target).diagnosis is not None, timeout=10000)
    win.select_path(target)
    assert win.panel.override_label() is Degradation.A
    assert [s.enabled for s in win.panel.plan.steps][:2] == [False, True]


# -- masks ----------------------------------------------------------------------------------
def _paint_in_editor(qtbot, win, photo: Path) -> np.ndarray:
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(photo)
    win.show_mask_editor()
    doc = win.mask_doc
    doc.clear()
    doc.fill_polygon([(30, 20), (60, 20), (60, 50), (30, 50)])
    doc.flush()
    return doc.full.copy()


def _mask_is_back(qtbot, win, folder: Path, photo: Path, painted: np.ndarray) -> None:
    """Open ``folder`` again: ``photo``'s mask in the editor is the one painted."""
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(photo)
    win.show_mask_editor()
    assert np.array_equal(win.mask_doc.full > 127, painted > 127)


def test_fix_this_photo_uses_the_mask_as_edited(qtbot, window, folder, tmp_path):
    """Edit the reflection mask, then "Fix this photo" (not "Inpaint again"): the run used the
    automatic mask and ignored the edits on screen."""
    from ui.editor.mask import read_mask

    win = window
    _diagnosed(qtbot, win, folder)
    target = folder / "b_clean.png"
    win.select_path(target)
    win.panel.set_override(Degradation.B)
    settle(qtbot, win)
    painted = _paint_in_editor(qtbot, win, target)
    win.leave_mask_editor()
    win.panel.run_btn.click()
    win.panel.run_btn.click()  # twice: the second waits for the mask too, not reading it early
    qtbot.waitUntil(lambda: len([j for j in win.client.jobs() if j.state.finished
                                 and j.kind.value == "run"]) == 2, timeout=90000)
    settle(qtbot, win)
    assert all(j.state is JobState.DONE for j in win.client.jobs()), win.client.jobs()
    st = win.states[target]
    assert st.result.label is Degradation.B
    used = sorted((tmp_path / "out").glob("b_clean_mend*_mask.png"))
    assert len(used) == 2 and st.result.artifacts["mask_path"] in used
    for m in used:
        assert np.array_equal(read_mask(m, painted.shape) > 127, painted > 127)
    assert st.mask_path is not None and st.mask_path.parent == folder / ".mend"


def test_unsaved_mask_edits_are_kept_when_leaving_the_folder(qtbot, window, folder, tmp_path):
    """Mask edits were dropped without a word when another folder was opened."""
    win = window
    opened(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    painted = _paint_in_editor(qtbot, win, target)
    other = tmp_path / "other"
    write_photo(other / "x.png", 64, 48, seed=5)
    opened(qtbot, win, other)
    assert "mask edits of 1 photo" in win.status_label.text()
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
    win.client.pool.waitForDone(10000)
    side = json.loads((folder / ".mend" / "a_noisy.jpg.json").read_text())
    assert side["mask"] and Path(side["mask"]).is_file()
    _mask_is_back(qtbot, win, folder, target, painted)  # back: the edited mask is the photo's mask again
    assert win.mask_doc.undo.isClean()  # nothing unsaved: leaving again writes nothing
    opened(qtbot, win, other)
    assert "mask edits" not in win.status_label.text()


def test_unsaved_mask_edits_are_saved_on_quit(qtbot, folder, tmp_path):
    """Quitting with mask edits not yet used lost them."""
    from ui.editor.mask import read_mask

    client = EngineClient(journal=tmp_path / "ui-data" / "queue.json")
    win = MainWindow(client, AppSettings(backend="builtin", profile="builtin",
                                         out_dir=str(tmp_path / "out")), ask_resume=False)
    qtbot.addWidget(win)
    win.show()
    try:
        opened(qtbot, win, folder)
        painted = _paint_in_editor(qtbot, win, folder / "c_smooth.jpg")
    finally:
        win.close()
        client.shutdown()  # (waits for the pool's work)
    saved = folder / ".mend" / "c_smooth.jpg.mask.png"
    assert np.array_equal(read_mask(saved, painted.shape) > 127, painted > 127)
    side = json.loads((folder / ".mend" / "c_smooth.jpg.json").read_text())
    assert side["mask"] == str(saved)


# -- export ---------------------------------------------------------------------------------
def test_an_export_is_named_for_the_format_it_is(qtbot, window, folder, tmp_path):
    """The export is a byte copy of the result: a name typed without an extension gave a file
    without one, and "final.jpg" for a PNG result a PNG misnamed as a JPEG."""
    win = window
    opened(qtbot, win, folder)
    target = folder / "b_clean.png"
    win.select_path(target)
    win.fix(target, label=Degradation.A)
    settle(qtbot, win)
    out = win.states[target].output
    assert out.suffix == ".png"
    dest = tmp_path / "exported"
    for typed, written in (("final", "final.png"), ("final.jpg", "final_1.png"),
                           ("print.v2", "print.v2.png")):
        with qtbot.waitSignal(win.exported, timeout=10000) as got:
            win.export_current(dest / typed)
        exported = Path(got.args[0])
        assert exported == dest / written
        assert exported.read_bytes() == out.read_bytes()
        assert exported.read_bytes()[:4] == b"\x89PNG"
    # (final.jpg became final.png, which exists: nobody confirmed replacing that file)
    assert "named for its format" in win.status_label.text()
    assert sorted(p.name for p in dest.iterdir()) == ["final.png", "final_1.png", "print.v2.png"]
    # the name the file dialog confirmed replaces its file
    stale = dest / "final.png"
    stale.write_bytes(b"an older export")
    with qtbot.waitSignal(win.exported, timeout=10000):
        win.export_current(stale)
    assert stale.read_bytes() == out.read_bytes()
    # never the result itself
    win.export_current(out)
    qtbot.waitUntil(lambda: "Export failed" in win.status_label.text(), timeout=10000)
    assert "the result itself" in win.status_label.text()


# -- a folder that goes away ----------------------------------------------------------------
def test_a_job_finishing_after_its_folder_was_removed_does_not_create_it_again(
        qtbot, window, tmp_path, held_steps, release):
    """The card's folder is deleted (or the card ejected) while a fix runs: recording the
    result in the sidecar created the folder again, holding only .mend/noisy.jpg.json. (The
    fix's step is held while the folder goes: ``held_steps``, instead of a 2 MP photo.)"""
    d = tmp_path / "card"
    photo = write_photo(d / "noisy.jpg", 320, 240, seed=4, kind="noisy")
    win = window
    opened(qtbot, win, d)
    win.select_path(photo)
    held_steps.on = True
    (jid,) = win.fix_selected()
    qtbot.waitUntil(held_steps.started.is_set, timeout=60000)  # (the photo read, a step runs)
    shutil.rmtree(d)
    release.set()  # (the fix goes on to its end)
    settle(qtbot, win, 120000)
    win.client.pool.waitForDone(10000)
    assert win.client.job(jid).state is JobState.DONE
    assert win.states[photo].output.is_file()  # the result (in the output folder) is kept
    assert not d.exists()
    win.diagnose_all()  # the photos are gone: each says so
    settle(qtbot, win)
    assert "noisy.jpg: Cannot read this photo" in win.status_label.text()
    assert not d.exists()


def test_reload_lists_photos_added_meanwhile_and_keeps_the_work(qtbot, window, folder):
    """A folder that changes while open (a card still copying, a tethered folder): nothing but
    opening it again showed the new photos, which dropped what was known in memory."""
    win = window
    _diagnosed(qtbot, win, folder)
    target = folder / "b_clean.png"
    win.select_path(target)
    win.panel.set_override(Degradation.C)
    settle(qtbot, win)
    painted = _paint_in_editor(qtbot, win, target)
    write_photo(folder / "d_new.png", 64, 48, seed=9)
    (folder / "a_noisy.jpg").unlink()
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.reload_action.trigger()
        qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    assert sorted(it.path.name for it in win.model.items()) == [
        "b_clean.png", "c_smooth.jpg", "d_new.png"]
    assert win.current == target and win.panel.override_label() is Degradation.C
    assert win.mask_doc is not None and np.array_equal(win.mask_doc.full, painted)
    assert win.model.item(folder / "c_smooth.jpg").diagnosis is not None


def test_mask_edits_come_back_when_the_same_folder_is_opened_again_at_once(qtbot, window,
                                                                           folder):
    """Opening the folder again (Open recent) right after painting: the mask is written in the
    pool while the sidecars are read; the edited mask is still the photo's."""
    win = window
    opened(qtbot, win, folder)
    target = folder / "c_smooth.jpg"
    painted = _paint_in_editor(qtbot, win, target)
    _mask_is_back(qtbot, win, folder, target, painted)


def test_the_profile_chosen_in_settings_is_what_runs_for_photos_diagnosed_before(
        qtbot, window, folder):
    """"The model 'realesr-general-x4v3' is not installed … or choose the built-in profile":
    choosing it in Settings changed nothing for the photos already diagnosed, whose stored
    laptop plans were sent with every fix (and failed the same way)."""
    from dataclasses import replace

    win = window
    win.apply_settings(replace(win.settings, profile="laptop"))
    opened(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    win.select_path(target)
    win.diagnose([target])
    settle(qtbot, win)
    assert win.panel.plan.profile == "laptop"
    (first,) = win.fix_selected()
    settle(qtbot, win)
    assert win.client.job(first).state is JobState.FAILED
    assert "not installed" in win.client.job(first).error
    win.apply_settings(replace(win.settings, profile="builtin"))
    (second,) = win.fix_selected()
    settle(qtbot, win)
    assert win.client.job(second).state is JobState.DONE, win.client.job(second).error
    assert win.states[target].result.plan.profile == "builtin"
    assert win.panel.plan.profile == "builtin"  # and the panel shows the plan made again


def test_diagnose_all_twice_queues_each_photo_once(qtbot, window, folder):
    """Pressing "Diagnose all" again while the first pass is queued diagnosed every photo
    twice; a photo whose diagnosis finished can be diagnosed again."""
    win = window
    opened(qtbot, win, folder)
    first = win.diagnose_all()
    second = win.diagnose_all()
    assert len(first) == 3 and second == []
    settle(qtbot, win)
    assert len(win.diagnose_all()) == 3  # done: again on request
    settle(qtbot, win)


def test_several_missing_models_are_named_one_by_one():
    from engine.errors import ModelMissing
    from ui.messages import describe_error

    one = describe_error(ModelMissing("big-lama"))
    assert one.startswith("The model 'big-lama' is not installed. Open Models… to download it")
    two = describe_error(ModelMissing(["big-lama", "codeformer"]))
    assert two.startswith("The models 'big-lama', 'codeformer' are not installed. "
                          "Open Models… to download them")
