"""Deleting the reflection mask in the app, and the photo's diagnosis kept apart from the class
a fix ran (session 16).

A mask saved beside the photo (``.mend/``) made it class B for good: nothing in the app took it
away. "Delete mask" (mask editor) removes Mend's own mask file, forgets it in the sidecar and
the photo's state, drops unsaved edits and brings the diagnosed class's plan back; a mask write
still on its way does not bring it back. A fix's result carried its class into the photo's
diagnosis (after "Fix as A", "Automatic" planned A; after a masked run, B), also in the sidecar.
And "+" with no plan yet built a plan of the diagnosed class (or D) with a mask there."""
from __future__ import annotations

import hashlib

import numpy as np
from PySide6.QtWidgets import QMessageBox

from engine.api import Degradation
from tests.ui.conftest import diagnosed as _diagnosed
from tests.ui.conftest import opened
from tests.ui.conftest import painted as _paint


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _settled(qtbot, win):
    qtbot.waitUntil(lambda: win.bg.pending() == 0 and win.client.is_idle()
                    and not win._mask_waiters, timeout=30000)


def _yes(monkeypatch, asked):
    def question(_parent, title, text, *_a, **_k):
        asked.append((title, text))
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", question)


def _reopened(qtbot, win, folder, target):
    """The folder left and opened again: what the photo's state is read back from its
    sidecar."""
    win.open_folder(folder.parent)
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: target in win.states
                    and win.states[target].diagnosis is not None, timeout=10000)
    return win.states[target]


def test_delete_mask_brings_the_diagnosed_class_back(qtbot, window, folder, monkeypatch):
    win = window
    opened(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    before = _sha(target)
    st = _diagnosed(qtbot, win, target)
    diagnosed = st.diagnosis.label
    assert diagnosed is not Degradation.B
    _paint(qtbot, win, target)
    with qtbot.waitSignal(win.fixed, timeout=90000):
        win.panel.run_btn.click()  # fixed as B: the mask is the photographer's
    _settled(qtbot, win)
    res = st.result
    assert res.label is Degradation.B
    mask_file = st.mask_path
    result_mask = res.artifacts["mask_path"]
    assert mask_file is not None and mask_file.is_file() and result_mask.is_file()
    assert mask_file.parent.name == ".mend"
    # the photo's diagnosis is still Mend's: the class that ran is the result's
    assert st.diagnosis.label is diagnosed
    assert win.model.item(target).diagnosis.label is diagnosed  # (the badge)
    assert win.sidecars.load(target).diagnosis.label is diagnosed
    assert win.panel.plan.label is Degradation.B
    assert win.mask_action.isChecked()  # (still in the mask editor)

    asked: list = []
    _yes(monkeypatch, asked)
    win.delete_mask_action.trigger()
    assert asked and "a_noisy.jpg" in asked[0][1]
    _settled(qtbot, win)
    qtbot.waitUntil(lambda: win.panel.plan is not None, timeout=20000)
    assert not mask_file.exists()  # Mend's own mask file, gone
    assert result_mask.is_file() and res.output.is_file()  # the result's are not touched
    assert st.mask_path is None and win._unsaved_mask(target) is None
    assert win.sidecars.load(target).mask is None
    assert win.plan_label(target) is None
    assert st.plan.label is diagnosed and win.panel.plan.label is diagnosed
    assert "mask" not in win.panel.profile_label.text()
    # the editor starts again from no mask (not from the result's, which was the deleted one)
    assert win.mask_doc is not None and win.mask_doc.full.max() == 0
    assert win.mask_doc.undo.isClean()
    assert "Deleted the reflection mask of a_noisy.jpg" in win.status_label.text()
    assert _sha(target) == before
    # a fix now runs the diagnosed class, without a mask
    with qtbot.waitSignal(win.fixed, timeout=90000):
        win.panel.run_btn.click()
    assert st.result.label is diagnosed, st.result.warnings
    assert not [w for w in st.result.warnings if "mask" in w], st.result.warnings
    # and the folder opened again says the same
    st = _reopened(qtbot, win, folder, target)
    assert st.mask_path is None and st.diagnosis.label is diagnosed
    assert st.plan.label is diagnosed
    assert _sha(target) == before


def test_delete_mask_asks_first_and_no_keeps_it(qtbot, window, folder, monkeypatch):
    win = window
    opened(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    st = _diagnosed(qtbot, win, target)
    doc = _paint(qtbot, win, target)
    win._write_mask(target, doc)
    _settled(qtbot, win)
    saved = st.mask_path
    assert saved is not None and saved.is_file()
    monkeypatch.setattr(QMessageBox, "question",
                        lambda *_a, **_k: QMessageBox.StandardButton.No)
    win.delete_mask_action.trigger()
    _settled(qtbot, win)
    assert saved.is_file() and st.mask_path == saved and win.plan_label(target) is Degradation.B
    assert win.sidecars.load(target).mask == str(saved)


def test_delete_mask_discards_unsaved_edits(qtbot, window, folder, monkeypatch):
    """Edits never written: nothing on the disk to remove; they go, and a Fix runs without
    them (it wrote them first and fixed the photo as B)."""
    win = window
    opened(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    st = _diagnosed(qtbot, win, target)
    diagnosed = st.diagnosis.label
    doc = _paint(qtbot, win, target)
    assert win._unsaved_mask(target) is doc and st.mask_path is None
    _yes(monkeypatch, [])
    win.delete_mask_action.trigger()
    _settled(qtbot, win)
    assert win._unsaved_mask(target) is None and st.mask_doc is not doc
    assert win.mask_doc is not doc and win.mask_doc.full.max() == 0
    with qtbot.waitSignal(win.fixed, timeout=90000):
        win.panel.run_btn.click()
    _settled(qtbot, win)
    assert st.result.label is diagnosed and st.mask_path is None
    assert not (folder / ".mend" / "a_noisy.jpg.mask.png").exists()


def test_a_mask_write_in_flight_does_not_bring_a_deleted_mask_back(qtbot, window, folder,
                                                                    monkeypatch):
    """The write waits for a whole-mask edit still computing (worker): Delete comes before it
    is written. Neither the file, the sidecar's record nor the photo's state come back, and the
    Fix that waited for that write does not run with it."""
    win = window
    opened(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    st = _diagnosed(qtbot, win, target)
    diagnosed = st.diagnosis.label
    doc = _paint(qtbot, win, target)
    win._write_mask(target, doc)
    _settled(qtbot, win)
    saved = st.mask_path
    assert saved.is_file()
    doc.async_min_pixels = 1  # the next whole-mask edit computes in the worker
    doc.grow(3)
    assert doc.busy()
    win.fix(target)  # waits for the mask as edited to be written
    assert win._mask_waiters.get(target)
    _yes(monkeypatch, [])
    win.delete_mask_action.trigger()
    _settled(qtbot, win)
    qtbot.waitUntil(lambda: win.panel.plan is not None, timeout=20000)
    assert not saved.exists() and st.mask_path is None
    assert win.sidecars.load(target).mask is None
    assert st.plan.label is diagnosed and win.plan_label(target) is None
    assert st.result is None  # the fix that waited for the deleted mask did not run
    assert win.model.item(target).job_state.value == "cancelled"


def test_fix_as_a_then_automatic_plans_the_class_diagnosed(qtbot, window, folder):
    """The result's class (what ran) is not the photo's diagnosis: "Automatic" after a "Fix as"
    run plans the class Mend diagnosed, also when the folder is opened again."""
    win = window
    opened(qtbot, win, folder)
    target = folder / "b_clean.png"
    st = _diagnosed(qtbot, win, target)
    diagnosed = st.diagnosis.label
    chosen = Degradation.C if diagnosed is Degradation.A else Degradation.A
    win.panel.set_override(chosen)
    qtbot.waitUntil(lambda: win.panel.plan is not None and win.panel.plan.label is chosen,
                    timeout=20000)
    with qtbot.waitSignal(win.fixed, timeout=90000):
        win.panel.run_btn.click()
    _settled(qtbot, win)
    assert st.result.label is chosen
    assert st.diagnosis.label is diagnosed and win.panel.diagnosis.label is diagnosed
    assert win.model.item(target).diagnosis.label is diagnosed
    win.panel.set_override(None)  # "Automatic"
    qtbot.waitUntil(lambda: win.panel.plan is not None
                    and win.panel.plan.label is not chosen, timeout=20000)
    assert win.panel.plan.label is diagnosed
    st = _reopened(qtbot, win, folder, target)
    assert st.diagnosis.label is diagnosed and st.override is None
    assert st.plan.label is diagnosed


def test_a_fix_of_a_photo_not_yet_diagnosed_keeps_mend_s_diagnosis(qtbot, window, folder):
    """"Fix selected" on a photo with a class chosen and no diagnosis yet: the engine diagnoses
    it and runs the chosen class; the photo keeps the diagnosis, not the chosen class."""
    win = window
    opened(qtbot, win, folder)
    target = folder / "b_clean.png"
    win.select_path(target)
    win._set_override(target, Degradation.A)
    qtbot.waitUntil(win.client.is_idle, timeout=60000)
    st = win.states[target]
    diagnosed = st.diagnosis.label  # (the re-plan diagnosed it first)
    assert diagnosed is not Degradation.A
    st.diagnosis = None  # (as a fix queued before any diagnosis finds it)
    with qtbot.waitSignal(win.fixed, timeout=90000):
        win.fix(target)
    _settled(qtbot, win)
    assert st.result.label is Degradation.A
    assert st.diagnosis is not None and st.diagnosis.label is diagnosed
    assert "overridden" not in st.diagnosis.rationale
    assert win.sidecars.load(target).diagnosis.label is diagnosed


def test_add_a_step_with_no_plan_yet_uses_the_mask_s_class(qtbot, window, folder):
    """A mask saved on a photo not diagnosed yet: no plan; "+" made a plan of class D (nothing
    diagnosed), which ran D's chain and dropped the mask; the mask's class (B) is what runs."""
    win = window
    opened(qtbot, win, folder)
    target = folder / "c_smooth.jpg"
    win.select_path(target)
    doc = _paint(qtbot, win, target)
    win._write_mask(target, doc)
    _settled(qtbot, win)
    st = win.states[target]
    assert st.mask_path is not None and st.plan is None and st.diagnosis is None
    assert win.panel.plan is None and win.plan_label(target) is Degradation.B
    p = win.panel
    p.add_combo.setCurrentText("inpaint_builtin")
    assert p.add_combo.currentText() == "inpaint_builtin"
    add = next(b for b in p._plan_edit if getattr(b, "text", lambda: "")() == "+")
    add.click()
    assert p.plan is not None and p.plan.label is Degradation.B
    assert st.plan is p.plan and st.plan_edited
    win.panel.set_override(Degradation.C)  # a class chosen: that one
    qtbot.waitUntil(lambda: win.panel.plan is not None
                    and win.panel.plan.label is Degradation.C, timeout=60000)
    _settled(qtbot, win)
    st.plan = None
    p.set_plan(None)
    add.click()
    assert p.plan.label is Degradation.C


def test_forget_mask_deletes_only_mend_s_own_mask_files(tmp_path):
    """A sidecar naming another file as the mask (the photo itself, a mask saved elsewhere, a
    result's mask): its record goes, the file stays. Mend's own mask file goes."""
    from engine.imageio import save_mask
    from tests.ui.conftest import write_photo
    from ui.settings import data_dir
    from ui.sidecar import SidecarStore

    folder = tmp_path / "shoot"
    photo = write_photo(folder / "p.jpg")
    other = write_photo(folder / "q.png")
    store = SidecarStore(folder, data_dir())
    elsewhere = save_mask(np.ones((64, 96), bool), tmp_path / "elsewhere_mask.png")
    for named in (photo, other, elsewhere):
        before = named.read_bytes()
        store.update(photo, mask=str(named))
        assert store.forget_mask(photo, also=named) == []
        assert named.read_bytes() == before
        assert store.load(photo).mask is None
    own = save_mask(np.ones((64, 96), bool), store.mask_path_for(photo))
    store.update(photo, mask=str(own))
    assert store.forget_mask(photo) == [own] and not own.exists()
    assert store.load(photo).mask is None and photo.is_file() and other.is_file()
    assert store.forget_mask(photo) == []  # (nothing left: no error)


def test_delete_mask_cancels_a_queued_fix_that_reads_it(qtbot, window, folder, monkeypatch):
    """A fix queued with the mask (behind another photo's) would read a file deleted under it
    and fail; it is cancelled, and a fix of a class whose chain reads no mask goes on."""
    win = window
    opened(qtbot, win, folder)
    target, other = folder / "a_noisy.jpg", folder / "c_smooth.jpg"
    st = _diagnosed(qtbot, win, target)
    doc = _paint(qtbot, win, target)
    win._write_mask(target, doc)
    _settled(qtbot, win)
    assert st.mask_path is not None
    first = win.fix(other)  # (runs first: the fixes of a_noisy.jpg wait behind it)
    masked = win.fix(target)
    as_c = win.fix(target, label=Degradation.C)
    assert None not in (first, masked, as_c)
    _yes(monkeypatch, [])
    win.delete_mask_action.trigger()
    _settled(qtbot, win)
    assert win.client.job(masked).state.value == "cancelled"
    assert win.client.job(as_c).state.value == "done" and win.client.job(first).state.value \
        == "done"
    assert st.result.label is Degradation.C and st.mask_path is None
