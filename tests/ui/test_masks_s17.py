"""Masks and sidecars in the app (session 17).

* Sidecars kept only in the user data folder (``SidecarStore(beside_photos=False)``, the
  window's ``sidecars_beside_photos=False``) ignored a ``.mend`` already beside the photos: the
  photographer's masks, chosen classes and results recorded there were not read (and the first
  record made in the user data folder, being newer, hid them even once sidecars went beside the
  photos again). Now that ``.mend`` is read and never written; records made in the user data
  folder override it, as for a read-only ``.mend``.
* "Delete mask…" was only in the mask editor: it is in the Photo menu and the thumbnails'
  context menu too, for the current photo when it has a mask of the photographer's.
* The Retry of a fix whose mask was painted again since was queued at once: it read the mask
  written before, while the new one was still being written (or not written at all: edits not
  saved). It waits for that write, as a first Fix does, and reads where it went.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QItemSelectionModel
from PySide6.QtGui import QContextMenuEvent
from PySide6.QtWidgets import QApplication, QMenu, QMessageBox

from engine.api import Degradation
from tests.ui.conftest import built_window, diagnosed, masked_folder, opened, painted

KEPT = "Mend writes nothing in the photos' folder"


def _files(d: Path) -> dict[str, tuple[str, int]]:
    """Every file in ``d``: name -> (sha256, mtime in ns)."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), os.stat(p).st_mtime_ns)
            for p in sorted(d.iterdir())}


def _settled(qtbot, win, timeout=60000):
    qtbot.waitUntil(lambda: win.bg.pending() == 0 and win.client.is_idle()
                    and not win._mask_waiters, timeout=timeout)


# -- 1. sidecars kept only in the user data folder -------------------------------------------
def test_user_data_sidecars_read_an_existing_mend_and_write_nothing_there(tmp_path):
    """The ``.mend`` beside the photos (a mask, a class chosen, a result) was not read at all:
    the photo came back with nothing. It is read; what is recorded goes to the user data folder
    and overrides it; "Delete mask" leaves its mask file there, unused; not a byte of ``.mend``
    changes, and sidecars beside the photos again still see the records made meanwhile."""
    from ui.settings import data_dir
    from ui.sidecar import SidecarStore

    folder, photo, mask = masked_folder(tmp_path)
    SidecarStore(folder, data_dir()).update(photo, override="C", outputs=["/o/p_mend.jpg"])
    beside = _files(folder / ".mend")

    store = SidecarStore(folder, data_dir(), beside_photos=False)
    assert str(store.root).startswith(str(data_dir() / "sidecars"))
    sc = store.load(photo)
    assert sc is not None and sc.mask == str(mask) and sc.override == "C"
    assert sc.outputs == ["/o/p_mend.jpg"]
    store.update(photo, outputs=["/o/p_mend_2.jpg"])
    again = SidecarStore(folder, data_dir(), beside_photos=False).load(photo)
    assert again.outputs == ["/o/p_mend_2.jpg"] and again.mask == str(mask)
    assert again.override == "C"  # (what .mend held is carried over, not lost)
    assert store.path_for(photo).is_file() and store.mask_path_for(photo).parent == store.root

    kept: list = []
    assert store.forget_mask(photo, also=mask, kept=kept) == []
    assert kept == [(mask, KEPT)] and mask.is_file()
    assert SidecarStore(folder, data_dir(), beside_photos=False).load(photo).mask is None
    assert _files(folder / ".mend") == beside
    # beside the photos again: the records made meanwhile are the newer ones
    sc = SidecarStore(folder, data_dir()).load(photo)
    assert sc.mask is None and sc.outputs == ["/o/p_mend_2.jpg"] and sc.override == "C"


def test_user_data_sidecars_never_read_another_folder_s_mend(tmp_path):
    """A ``.mend`` that is a link to another folder's: not this folder's sidecars, not read."""
    from ui.settings import data_dir
    from ui.sidecar import SidecarStore

    victim, photo, _mask = masked_folder(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / ".mend").symlink_to(victim / ".mend", target_is_directory=True)
    twin = shared / photo.name
    twin.write_bytes(photo.read_bytes())
    os.utime(twin, ns=(os.stat(photo).st_atime_ns, os.stat(photo).st_mtime_ns))
    assert SidecarStore(shared, data_dir(), beside_photos=False).load(twin) is None


@pytest.fixture
def apart(qtbot, tmp_path):
    """A window that keeps sidecars only in the user data folder."""
    with built_window(qtbot, tmp_path, sidecars_beside_photos=False) as win:
        yield win


def _right_click(qtbot, win, photo: Path) -> QMenu:
    """Right-click ``photo``'s thumbnail: the context menu shown."""
    win.grid_menu.hide()
    ix = win.proxy.mapFromSource(win.model.index(win.model.row_of(photo)))
    qtbot.waitUntil(lambda: win.grid.visualRect(ix).isValid(), timeout=10000)
    at = win.grid.visualRect(ix).center()
    vp = win.grid.viewport()
    QApplication.sendEvent(vp, QContextMenuEvent(QContextMenuEvent.Reason.Mouse, at,
                                                 vp.mapToGlobal(at)))
    qtbot.waitUntil(win.grid_menu.isVisible, timeout=5000)
    return win.grid_menu


def _action(menu: QMenu, text: str):
    found = [a for a in menu.actions() if a.text().replace("&", "") == text]
    assert len(found) == 1, [a.text() for a in menu.actions()]
    return found[0]


def test_the_app_with_user_data_sidecars_shows_and_deletes_a_mend_mask(
        qtbot, apart, tmp_path, monkeypatch):
    """The window keeping sidecars in the user data folder restores the mask recorded in the
    photos' ``.mend`` (it did not: the photo had no mask); "Delete mask…" from the thumbnail's
    menu forgets it there, its file staying unused; the folder opened again does not bring it
    back, and ``.mend`` is as it was."""
    win = apart
    folder, photo, mask = masked_folder(tmp_path)
    beside = _files(folder / ".mend")
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: photo in win.states and win.states[photo].mask_path is not None,
                    timeout=10000)
    assert win.states[photo].mask_path == mask and win.plan_label(photo) is Degradation.B
    menu = _right_click(qtbot, win, photo)
    assert win.current == photo
    delete = _action(menu, "Delete mask…")
    assert delete.isEnabled()
    asked: list = []
    monkeypatch.setattr(QMessageBox, "question", lambda _p, title, text, *_a, **_k: (
        asked.append(text), QMessageBox.StandardButton.Yes)[1])
    delete.trigger()
    menu.hide()
    _settled(qtbot, win)
    assert asked and "p.jpg" in asked[0]
    assert f"{mask} stays ({KEPT}) but is no longer used" in win.status_label.text()
    assert win.states[photo].mask_path is None and not delete.isEnabled()
    win.open_folder(tmp_path)
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
    assert win.states.get(photo) is None or win.states[photo].mask_path is None
    assert _files(folder / ".mend") == beside


# -- 2. "Delete mask…" in the browser --------------------------------------------------------
def test_delete_mask_in_the_photo_menu_and_the_thumbnail_menu(qtbot, window, folder,
                                                              monkeypatch):
    """Only for the current photo with a mask of the photographer's (saved, or edits not saved
    yet); right-clicking a photo makes it the current one; the same confirmation, and "No"
    keeps the mask; "Yes" deletes it as the mask editor's does."""
    win = window
    opened(qtbot, win, folder)
    target, other = folder / "a_noisy.jpg", folder / "c_smooth.jpg"
    st = diagnosed(qtbot, win, target)
    action = win.photo_delete_mask_action
    assert action in win.photo_menu.actions() and action in win.grid_menu.actions()
    assert not action.isEnabled()  # (no mask yet)
    doc = painted(qtbot, win, target)
    assert action.isEnabled()  # edits not saved are the photographer's mask too
    win._write_mask(target, doc)
    _settled(qtbot, win)
    saved = st.mask_path
    assert saved is not None and saved.is_file()
    win.show_browser()
    menu = _right_click(qtbot, win, other)
    assert win.current == other and not _action(menu, "Delete mask…").isEnabled()
    menu = _right_click(qtbot, win, target)
    assert win.current == target and action.isEnabled()
    assert win.selected_paths() == [target]  # (selected alone)
    # right-clicking a photo among those selected keeps them ("Fix selected" is in the menu)
    win.grid.selectionModel().select(win.proxy.mapFromSource(win.model.index(
        win.model.row_of(other))), QItemSelectionModel.SelectionFlag.Select)
    menu = _right_click(qtbot, win, other)
    assert win.current == other and set(win.selected_paths()) == {other, target}
    assert not action.isEnabled()
    menu.hide()
    for photo, enabled in ((other, False), (target, True)):  # the menu bar's Photo menu
        win.select_path(photo)
        win.photo_menu.popup(win.mapToGlobal(win.rect().center()))
        qtbot.waitUntil(win.photo_menu.isVisible, timeout=5000)
        assert _action(win.photo_menu, "Delete mask…").isEnabled() is enabled
        win.photo_menu.hide()

    asked: list = []

    def answer(reply):
        def question(_parent, title, text, *_a, **_k):
            asked.append((title, text))
            return reply
        return question

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.No))
    action.trigger()
    _settled(qtbot, win)
    assert asked[-1][0] == "Delete mask" and "a_noisy.jpg" in asked[-1][1]
    assert saved.is_file() and st.mask_path == saved and action.isEnabled()
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    menu = _right_click(qtbot, win, target)
    _action(menu, "Delete mask…").trigger()
    menu.hide()
    assert not action.isEnabled()  # (the deletion on its way is no mask)
    _settled(qtbot, win)
    assert len(asked) == 2
    assert not saved.exists() and st.mask_path is None
    assert win.sidecars.load(target).mask is None
    assert win.plan_label(target) is None
    assert "Deleted the reflection mask of a_noisy.jpg" in win.status_label.text()
    assert not action.isEnabled()


# -- 3. Retry after the mask was painted again ---------------------------------------------------
def _cancelled_masked_fix(qtbot, win, folder):
    """``a_noisy.jpg`` with a saved mask (the square x 30-60, y 20-50) and a fix of it reading
    that mask, cancelled while queued: (photo, its state, the job, the mask document)."""
    target, other = folder / "a_noisy.jpg", folder / "c_smooth.jpg"
    st = diagnosed(qtbot, win, target)
    doc = painted(qtbot, win, target)
    win._write_mask(target, doc)
    _settled(qtbot, win)
    assert st.mask_path is not None
    win.fix(other)  # (runs first)
    masked = win.fix(target)
    assert masked is not None and win.client.request(masked).mask_path == st.mask_path
    win.client.cancel(masked)
    _settled(qtbot, win)
    assert win.client.job(masked).state.value == "cancelled"
    return target, st, masked, doc


def _paint_elsewhere(doc) -> None:
    """The mask painted again: the square gone, another one at x 70-90, y 50-68."""
    doc.clear()
    doc.fill_polygon([(70, 50), (90, 50), (90, 68), (70, 68)])


def _mask_used(qtbot, win, target, after: int) -> np.ndarray:
    """The mask the first fix of ``target`` queued after job ``after`` ran with (its result's
    mask file), once it is done."""
    from PIL import Image

    def retried():
        return [j for j in win.client.jobs() if j.path == target and j.id > after
                and j.kind.value == "run"]

    qtbot.waitUntil(lambda: bool(retried()) and retried()[0].state.finished, timeout=90000)
    _settled(qtbot, win)
    job = retried()[0]
    assert job.state.value == "done", job.error
    res = win.states[target].result
    assert res is not None and res.label is Degradation.B
    return np.asarray(Image.open(res.artifacts["mask_path"]).convert("L"))


def _is_the_new_mask(m: np.ndarray) -> bool:
    return bool(m[59, 80] > 127 and m[35, 45] < 128)


def _repainted_mask_held(qtbot, win, folder, monkeypatch):
    """A cancelled fix of a masked photo whose mask is then painted again and written (as
    leaving the editor or a Fix of it does), the write held back in the pool until the returned
    gate is set. Returns (photo, its state, the cancelled job, the gate)."""
    import engine.imageio

    opened(qtbot, win, folder)
    target, st, masked, doc = _cancelled_masked_fix(qtbot, win, folder)
    _paint_elsewhere(doc)
    gate = threading.Event()
    real = engine.imageio.save_mask

    def held(*a, **k):
        gate.wait(60)
        return real(*a, **k)

    monkeypatch.setattr(engine.imageio, "save_mask", held)
    win._write_mask(target, doc)
    return target, st, masked, gate


def test_a_retry_waits_for_the_mask_being_written(qtbot, window, folder, monkeypatch):
    """The mask painted again is being written (in the pool: here held back until the retry, if
    queued at once, has run): the Retry is queued once it is written, and reads it."""
    win = window
    target, _st, masked, gate = _repainted_mask_held(qtbot, win, folder, monkeypatch)
    try:
        again = win.client.retry(masked)
        if again is not None:  # queued at once: it runs before the mask is written
            qtbot.waitUntil(lambda: win.client.job(again).state.finished, timeout=90000)
        shown = win.model.item(target).job_state.value
    finally:
        gate.set()
    used = _mask_used(qtbot, win, target, masked)
    assert _is_the_new_mask(used)
    assert shown == "queued"  # (the photo showed its fix waiting)
    assert win.client.job(masked).state.value == "cancelled"
    assert win.client.retry(masked) is None  # (retried once)


def test_a_retry_writes_mask_edits_not_saved_first(qtbot, window, folder):
    """Edits not saved yet: the retry writes them and then runs with them, as Fix does (it
    ran with the mask saved before)."""
    win = window
    opened(qtbot, win, folder)
    target, st, masked, doc = _cancelled_masked_fix(qtbot, win, folder)
    _paint_elsewhere(doc)
    assert win._unsaved_mask(target) is doc
    win.client.retry(masked)
    win.client.retry(masked)  # (a second click: one retry)
    used = _mask_used(qtbot, win, target, masked)
    assert _is_the_new_mask(used)
    assert win._unsaved_mask(target) is None and win.sidecars.load(target).mask == \
        str(st.mask_path)
    runs = [j for j in win.client.jobs() if j.path == target and j.id > masked
            and j.kind.value == "run"]
    assert len(runs) == 1


def test_a_retry_reads_the_mask_where_it_was_written_since(qtbot, window, folder):
    """The photo's mask was written elsewhere since the fix was queued (``.mend`` read-only
    now: the user data folder): the retry reads that one, not the old file it named."""
    win = window
    opened(qtbot, win, folder)
    target, st, masked, doc = _cancelled_masked_fix(qtbot, win, folder)
    old = st.mask_path
    mend = folder / ".mend"
    mend.chmod(0o555)
    try:
        opened(qtbot, win, folder)  # (opened again: where sidecars go is decided again)
        qtbot.waitUntil(lambda: target in win.states
                        and win.states[target].mask_path == old, timeout=10000)
        st = win.states[target]
        doc = painted(qtbot, win, target)
        _paint_elsewhere(doc)
        win._write_mask(target, doc)
        _settled(qtbot, win)
        assert st.mask_path is not None and st.mask_path != old and old.is_file()
        again = win.client.retry(masked)
        used = _mask_used(qtbot, win, target, masked)
        assert _is_the_new_mask(used)
        assert again is not None and win.client.request(again).mask_path == st.mask_path
    finally:
        mend.chmod(0o755)


def test_a_retry_with_nothing_painted_since_is_queued_at_once(qtbot, window, folder):
    """No mask written or edited since: the same request, queued at once."""
    win = window
    opened(qtbot, win, folder)
    _target, _st, masked, _doc = _cancelled_masked_fix(qtbot, win, folder)
    again = win.client.retry(masked)
    assert again is not None
    assert win.client.request(again) == win.client.request(masked)
    _settled(qtbot, win)
    assert win.client.job(again).state.value == "done"


def test_a_retry_waiting_for_its_mask_is_dropped_by_a_deletion(qtbot, window, folder,
                                                               monkeypatch):
    """The mask it waits for is deleted before it is written: the retry does not run (as the
    fixes waiting for that mask), and the photo shows it cancelled."""
    win = window
    target, st, masked, gate = _repainted_mask_held(qtbot, win, folder, monkeypatch)
    try:
        assert win.client.retry(masked) is None
        win.delete_mask(target)
    finally:
        gate.set()
    _settled(qtbot, win)
    assert not [j for j in win.client.jobs() if j.path == target and j.id > masked
                and j.kind.value == "run"]
    assert win.model.item(target).job_state.value == "cancelled"
    assert st.mask_path is None
