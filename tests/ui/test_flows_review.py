"""Review of the session-11 main-window flows: each defect found, reproduced through the real
MainWindow on the real builtin engine (quit prompt, Cancel all and fixes waiting for their mask,
a diagnosis made again over an edited chain, a "Fix as" choice left before its plan arrived, a
step added while the chosen class is planned, two writes of one mask side by side), and the
sidecars of an older version loading cleanly."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMessageBox

from engine.api import Degradation
from ui.engine_client import JobKind, JobState
from ui.main_window import MainWindow
from ui.settings import AppSettings

from .conftest import opened, write_photo
from .test_flows_s11 import _diagnosed, _mask_is_back, _other_class, _paint_in_editor, settle


# -- quitting -------------------------------------------------------------------------------
class _Asked(list):
    """The questions the window asked; each is answered with ``answer`` (No: it stays open)."""

    answer = QMessageBox.StandardButton.No


@pytest.fixture
def asked(monkeypatch) -> _Asked:
    questions = _Asked()

    def question(_parent, _title, text, *_a, **_kw):
        questions.append(text)
        return questions.answer

    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    return questions


def _own_window(qtbot, tmp_path) -> MainWindow:
    """A window with its own engine client, as the app makes it (the quit prompt is only
    asked then; the engine warms up at once)."""
    win = MainWindow(None, AppSettings(backend="builtin", profile="builtin",
                                       out_dir=str(tmp_path / "out")), ask_resume=False)
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    return win


def _quit(win: MainWindow, asked: _Asked) -> None:
    asked.answer = QMessageBox.StandardButton.Yes
    win.close()


def test_quit_does_not_ask_about_the_engine_warm_up_or_a_re_plan(qtbot, tmp_path, folder,
                                                                 asked):
    """"Jobs are still running. Stop them and quit?" right after starting the app (the engine's
    warm-up) or just after a "Fix as" choice (its re-plan): nothing of the photographer's to
    lose, the choice is kept in the sidecar."""
    win = _own_window(qtbot, tmp_path)
    assert not win.client.is_idle()  # the engine's warm-up
    assert win.close()
    assert asked == []

    win = _own_window(qtbot, tmp_path)
    try:
        opened(qtbot, win, folder)
        target = folder / "b_clean.png"
        win.select_path(target)
        win.diagnose([target])
        assert not win.close()  # a diagnosis asked for: asked
        assert len(asked) == 1
        settle(qtbot, win)
        win.panel.set_override(Degradation.C)
        job = win.client.job(win.states[target].plan_job)
        assert job is not None and job.kind is JobKind.CALL and not job.state.finished
        assert win.close()  # only the re-plan: not asked
        assert len(asked) == 1
    finally:
        _quit(win, asked)


def test_quit_asks_about_a_fix_waiting_for_its_mask_and_keeps_it(qtbot, tmp_path, folder,
                                                                 asked):
    """A fix clicked with mask edits not yet written waits for the write, outside the engine's
    queue: quitting then did not ask, and the fix was dropped without a word."""
    win = _own_window(qtbot, tmp_path)
    try:
        opened(qtbot, win, folder)
        settle(qtbot, win)  # (the warm-up is done: the queue is idle)
        target = folder / "b_clean.png"
        painted = _paint_in_editor(qtbot, win, target)
        assert win.fix(target, label=Degradation.B) is None  # waits for the mask
        # (not in the engine's queue: only the search for the automatic mask the editor asked
        # for as it opened, which is nobody's work to lose)
        assert [j.kind for j in win.client.jobs() if not j.state.finished] in (
            [], [JobKind.DETECT])
        assert not win.close()
        assert len(asked) == 1 and "still running" in asked[0]
        qtbot.waitUntil(lambda: win.states[target].result is not None, timeout=90000)
        settle(qtbot, win)
        st = win.states[target]
        assert st.result.label is Degradation.B
        from ui.editor.mask import read_mask

        used = read_mask(st.result.artifacts["mask_path"], painted.shape)
        assert np.array_equal(used > 127, painted > 127)
        assert win.close()  # nothing left: not asked again
        assert len(asked) == 1
    finally:
        _quit(win, asked)


def test_the_engine_warm_up_succeeds(qtbot, tmp_path, asked):
    """The warm-up asked its cancel token ``cancelled()`` (a property: a bool): it failed at
    every start, the queue listed "Start the engine" as failed and the status bar said
    "Job: ..."; the common path's imports were left to the first photo."""
    win = _own_window(qtbot, tmp_path)
    try:
        (warm,) = [j for j in win.client.jobs() if j.title == "Start the engine"]
        qtbot.waitUntil(win.client.is_idle, timeout=120000)
        assert win.client.job(warm.id).state is JobState.DONE, win.client.job(warm.id).error
        assert not win.status_label.text().startswith("Job:")
    finally:
        _quit(win, asked)


# -- Cancel all -----------------------------------------------------------------------------
def test_cancel_all_also_cancels_a_fix_waiting_for_its_mask(qtbot, window, folder):
    """"Cancel all jobs" while a fix waited for its edited mask to be written: the fix was
    queued right after the cancel and ran."""
    win = window
    opened(qtbot, win, folder)
    target = folder / "b_clean.png"
    _paint_in_editor(qtbot, win, target)
    assert win.fix(target, label=Degradation.B) is None
    assert win.model.item(target).job_state is JobState.QUEUED
    cancel = next(a for a in win.findChildren(QAction) if a.text() == "Cancel all jobs")
    cancel.trigger()
    settle(qtbot, win)
    win.client.pool.waitForDone(10000)
    qtbot.wait(50)
    assert [j for j in win.client.jobs() if j.kind is JobKind.RUN] == []
    item = win.model.item(target)
    assert item.job_state is JobState.CANCELLED  # not left "queued"
    # the mask edits themselves are saved
    assert (folder / ".mend" / "b_clean.png.mask.png").is_file()
    assert win.mask_doc.undo.isClean()
    # and Fix works again
    (jid,) = win.fix_selected()
    settle(qtbot, win)
    assert win.client.job(jid).state is JobState.DONE
    assert win.model.item(target).job_state is JobState.DONE


# -- the plan -------------------------------------------------------------------------------
def test_a_diagnosis_made_again_keeps_the_edited_chain(qtbot, window, folder):
    """A step unticked in the panel, then "Diagnose all" (a new photo copied in, say): every
    edited chain went back to the engine's plan, in the panel, for Fix and in the sidecar."""
    win = window
    _diagnosed(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    win.select_path(target)
    win.panel.set_override(Degradation.A)  # builtin A: denoise (sharpening listed, off)
    settle(qtbot, win)
    # the edit: sharpening instead of denoising
    win.panel.steps.item(0).setCheckState(Qt.CheckState.Unchecked)
    win.panel.steps.item(1).setCheckState(Qt.CheckState.Checked)
    assert win.states[target].plan_edited
    assert len(win.diagnose_all()) == 3
    settle(qtbot, win)
    assert win.states[target].diagnosis is not None
    assert not win.panel.plan.steps[0].enabled
    assert win.states[target].plan_edited and not win.states[target].plan.steps[0].enabled
    side = folder / ".mend" / "a_noisy.jpg.json"

    def recorded() -> bool:
        d = json.loads(side.read_text())
        return d["plan_edited"] is True and d["plan"]["steps"][0]["enabled"] is False

    qtbot.waitUntil(lambda: win.bg.pending() == 0 and recorded(), timeout=10000)
    assert len(win.fix_selected()) == 1
    settle(qtbot, win)
    ran = [s.name for s in win.states[target].result.steps]
    assert "denoise_builtin" not in ran and "sharpen_builtin" in ran, ran


def test_an_edited_chain_stays_when_its_diagnosis_finishes_after_the_folder_was_left(
        qtbot, window, folder, tmp_path):
    """A step unticked, "Diagnose all", another folder opened while the diagnoses were still
    queued: each one that finished then wrote the engine's plan over the edited chain in the
    sidecar, and the edits were gone when the folder was opened again."""
    win = window
    _diagnosed(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    win.select_path(target)
    win.panel.set_override(Degradation.A)
    settle(qtbot, win)
    win.panel.steps.item(0).setCheckState(Qt.CheckState.Unchecked)
    win.panel.steps.item(1).setCheckState(Qt.CheckState.Checked)  # (listed but off after NLM)
    assert len(win.diagnose_all()) == 3
    other = tmp_path / "other"
    write_photo(other / "x.png", 64, 48, seed=5)
    opened(qtbot, win, other)  # (the diagnoses finish after this)
    settle(qtbot, win)
    win.client.pool.waitForDone(10000)
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: win.model.item(target).diagnosis is not None, timeout=10000)
    win.select_path(target)
    assert win.panel.override_label() is Degradation.A
    assert [s.enabled for s in win.panel.plan.steps][:2] == [False, True]
    assert win.states[target].plan_edited


def test_an_edited_mask_stays_recorded_when_its_fix_finishes_after_the_folder_was_left(
        qtbot, window, folder, tmp_path):
    """Mask edited, "Fix this photo", another folder opened while the fix ran: the finished
    fix recorded "no mask" in the sidecar, and the edited mask did not come back with the
    folder."""
    win = window
    opened(qtbot, win, folder)
    target = folder / "b_clean.png"
    painted = _paint_in_editor(qtbot, win, target)
    assert win.fix(target, label=Degradation.B) is None
    other = tmp_path / "other"
    write_photo(other / "x.png", 64, 48, seed=5)
    qtbot.waitUntil(lambda: any(j.kind is JobKind.RUN for j in win.client.jobs()),
                    timeout=10000)  # the mask is written: the fix is queued
    opened(qtbot, win, other)
    settle(qtbot, win)
    win.client.pool.waitForDone(10000)
    assert all(j.state is JobState.DONE for j in win.client.jobs())
    side = json.loads((folder / ".mend" / "b_clean.png.json").read_text())
    assert side["mask"] and side["outputs"]
    _mask_is_back(qtbot, win, folder, target, painted)


def test_automatic_chosen_again_just_before_leaving_the_folder_is_what_runs(
        qtbot, window, folder, tmp_path):
    """"Fix as" C, then back to Automatic, and another folder opened before the new plan came:
    the sidecar kept C's plan beside "automatic", and back in the folder Fix ran C."""
    win = window
    labels = _diagnosed(qtbot, win, folder)
    target = folder / "b_clean.png"
    diagnosed = labels[target.name]
    chosen = _other_class(diagnosed)
    win.select_path(target)
    win.panel.set_override(chosen)
    settle(qtbot, win)  # C's plan arrived and was recorded
    assert win.panel.plan.label is chosen
    win.panel.set_override(None)  # back to automatic...
    other = tmp_path / "other"
    write_photo(other / "x.png", 64, 48, seed=5)
    opened(qtbot, win, other)  # ...and away before its plan arrives
    settle(qtbot, win)
    win.client.pool.waitForDone(10000)
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: win.model.item(target).diagnosis is not None, timeout=10000)
    win.select_path(target)
    assert win.panel.override_label() is None
    settle(qtbot, win)
    assert win.panel.plan is not None and win.panel.plan.label is diagnosed
    assert len(win.fix_selected()) == 1
    settle(qtbot, win)
    assert win.states[target].result.label is diagnosed


def test_a_step_added_while_the_chosen_class_is_planned_runs(qtbot, window, folder):
    """A step added in the panel while the plan of the class just chosen is on its way (behind
    a batch, that is minutes): the chain was made for the diagnosed class, and Fix, which runs
    the chosen class, dropped it."""
    win = window
    labels = _diagnosed(qtbot, win, folder)
    target = folder / "b_clean.png"
    chosen = _other_class(labels[target.name])
    extra = "denoise_builtin" if chosen is Degradation.C else "deblur_builtin"
    win.select_path(target)
    win.panel.set_override(chosen)
    assert win.panel.plan is None  # its plan is on its way
    win.panel.add_combo.setCurrentText(extra)
    win.panel._add_step()
    assert win.panel.plan.label is chosen
    settle(qtbot, win)
    assert [s.name for s in win.panel.plan.steps] == [extra]  # the edit stays
    assert len(win.fix_selected()) == 1
    settle(qtbot, win)
    res = win.states[target].result
    assert res.label is chosen
    assert extra in [s.name for s in res.steps]


# -- masks ----------------------------------------------------------------------------------
def test_two_writes_of_one_mask_leave_the_newest_on_the_disk(qtbot, window, folder,
                                                             monkeypatch):
    """Edit, Fix, edit again, Fix: the two writes of the mask run side by side in the pool; the
    older one finishing last put the older mask on the disk (the editor said it was saved, so
    the newer edits were gone when the folder was opened again)."""
    import engine.imageio as eio
    from ui.editor.mask import read_mask

    real, calls = eio.save_mask, []

    def slow_first(data, dest, **kw):  # the first write is a slow one (a big mask, a slow disk)
        calls.append(dest)
        if len(calls) == 1:
            time.sleep(1.5)
        return real(data, dest, **kw)

    monkeypatch.setattr(eio, "save_mask", slow_first)
    win = window
    assert win.client.pool.maxThreadCount() >= 2
    opened(qtbot, win, folder)
    target = folder / "b_clean.png"
    _paint_in_editor(qtbot, win, target)
    assert win.fix(target, label=Degradation.B) is None
    doc = win.mask_doc
    doc.fill_polygon([(5, 5), (20, 5), (20, 15), (5, 15)])  # more edits
    doc.flush()
    newest = doc.full.copy()
    assert win.fix(target, label=Degradation.B) is None
    qtbot.waitUntil(lambda: len([j for j in win.client.jobs() if j.state.finished
                                 and j.kind is JobKind.RUN]) == 2, timeout=90000)
    settle(qtbot, win)
    win.client.pool.waitForDone(10000)
    assert len(calls) >= 2
    on_disk = read_mask(folder / ".mend" / "b_clean.png.mask.png", newest.shape)
    assert np.array_equal(on_disk > 127, newest > 127)
    assert doc.undo.isClean()


# -- sidecars of an older version -----------------------------------------------------------
def test_sidecars_without_the_new_fields_or_with_a_bad_class_load(qtbot, window, folder):
    """Sidecars written before "Fix as" was kept (no override, no plan_edited) or edited by
    hand (a class that does not exist, not a string): the diagnoses come back, the choice is
    automatic, Fix works."""
    win = window
    labels = _diagnosed(qtbot, win, folder)
    win.client.pool.waitForDone(10000)
    bad = {"a_noisy.jpg": None, "b_clean.png": "Z", "c_smooth.jpg": ["B"]}
    for name, override in bad.items():
        side = folder / ".mend" / f"{name}.json"
        d = json.loads(side.read_text())
        d.pop("plan_edited", None)
        d.pop("override", None)
        if override is not None:
            d["override"] = override
        side.write_text(json.dumps(d))
    opened(qtbot, win, folder.parent)
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: all(win.model.item(folder / n).diagnosis is not None
                                for n in bad), timeout=10000)
    for name in bad:
        p = folder / name
        win.select_path(p)
        assert win.panel.override_label() is None
        assert win.states[p].diagnosis.label is labels[name]
        assert not win.states[p].plan_edited
    win.grid.selectAll()
    assert len(win.fix_selected()) == 3
    settle(qtbot, win)
    assert {p.name: st.result.label for p, st in win.states.items() if st.result} == labels
