"""Sidecars and masks in a folder Mend cannot write (a card, a shared folder): a read-only
``.mend`` is read when the folder opens; "Delete mask" there forgets the mask in the user data
folder (its file stays, unused) or, when nothing can be recorded, keeps it whole; and the Retry
of a fix cancelled by a mask deletion runs without the mask.

Root ignores file permissions: a folder is made read-only with its mode bits (which the store's
writability check reads, as it does for root), and an unlink inside a folder with no write bits
fails with "Permission denied" as it does for anyone else (``_unlink_as_a_user``)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from engine.api import Degradation
from tests.ui.conftest import diagnosed, masked_folder, opened, painted


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _unlink_as_a_user(monkeypatch) -> None:
    real = Path.unlink

    def unlink(self, missing_ok=False):
        if not os.stat(self.parent).st_mode & 0o222:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)


@pytest.fixture
def read_only(monkeypatch):
    """``make(folder)``: chmod 555, with unlinks inside refused; writable again at the end."""
    made: list[Path] = []
    _unlink_as_a_user(monkeypatch)

    def make(d: Path) -> Path:
        d.chmod(0o555)
        made.append(d)
        return d

    yield make
    for d in made:
        d.chmod(0o755)


def test_a_read_only_mend_folder_is_read_and_overridden_in_user_data(tmp_path, read_only):
    """A read-only ``.mend`` was not read at all (its sidecars went unseen); now it is, and what
    Mend records meanwhile goes to the user data folder and wins over it, also once the folder
    is writable again."""
    from ui.settings import data_dir
    from ui.sidecar import SidecarStore

    folder, photo, mask = masked_folder(tmp_path)
    read_only(folder / ".mend")
    read_only(folder)
    beside = {p.name: _sha(p) for p in (folder / ".mend").iterdir()}
    store = SidecarStore(folder, data_dir())
    assert str(store.root).startswith(str(data_dir() / "sidecars"))
    sc = store.load(photo)
    assert sc is not None and sc.mask == str(mask)
    store.update(photo, outputs=["/o/p_mend.jpg"])
    again = SidecarStore(folder, data_dir()).load(photo)
    assert again.outputs == ["/o/p_mend.jpg"] and again.mask == str(mask)
    assert {p.name: _sha(p) for p in (folder / ".mend").iterdir()} == beside
    (folder / ".mend").chmod(0o755)
    folder.chmod(0o755)
    writable = SidecarStore(folder, data_dir())
    assert writable.root == folder / ".mend"
    assert writable.load(photo).outputs == ["/o/p_mend.jpg"]  # (the newer one)


def test_forget_mask_in_a_read_only_mend_records_it_where_mend_writes(tmp_path, read_only):
    """The mask file cannot be deleted: it stays (said in ``kept``), and the sidecar in the user
    data folder records no mask, so a store opened afresh does not give it back."""
    from ui.settings import data_dir
    from ui.sidecar import SidecarStore

    folder, photo, mask = masked_folder(tmp_path)
    before = _sha(mask)
    read_only(folder / ".mend")
    store = SidecarStore(folder, data_dir())
    assert store.load(photo).mask == str(mask)
    kept: list = []
    assert store.forget_mask(photo, also=mask, kept=kept) == []
    assert kept == [(mask, "Permission denied")]
    assert _sha(mask) == before
    assert SidecarStore(folder, data_dir()).load(photo).mask is None
    assert store.forget_mask(photo) == []  # (again: nothing to forget, no error)


def test_forget_mask_fails_whole_when_nothing_can_be_recorded(tmp_path, read_only, monkeypatch):
    """Neither the record nor the mask file can be changed: an error, and the record still names
    the mask (which is still there)."""
    import engine.imageio
    from ui.settings import data_dir
    from ui.sidecar import SidecarStore

    folder, photo, mask = masked_folder(tmp_path)
    read_only(folder / ".mend")

    def refused(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(engine.imageio, "atomic_write_bytes", refused)
    store = SidecarStore(folder, data_dir())
    with pytest.raises(OSError, match="the mask it records stays"):
        store.forget_mask(photo, also=mask)
    assert store.load(photo).mask == str(mask) and mask.is_file()


def _settled(qtbot, win):
    qtbot.waitUntil(lambda: win.bg.pending() == 0 and win.client.is_idle()
                    and not win._mask_waiters, timeout=60000)


def test_the_app_reads_a_read_only_mend_and_deletes_its_mask_for_good(
        qtbot, window, tmp_path, read_only):
    """Opened read-only, the photo's mask comes back from ``.mend``; "Delete mask" says its
    file stays unused, and the folder opened again does not bring the mask back."""
    win = window
    folder, photo, mask = masked_folder(tmp_path)
    before = _sha(mask)
    read_only(folder / ".mend")
    read_only(folder)
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: photo in win.states and win.states[photo].mask_path is not None,
                    timeout=10000)
    assert win.states[photo].mask_path == mask
    win.select_path(photo)
    win.delete_mask(photo)
    _settled(qtbot, win)
    status = win.status_label.text()
    assert "stays (Permission denied) but is no longer used" in status, status
    assert win.states[photo].mask_path is None and _sha(mask) == before
    win.open_folder(tmp_path)
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
    assert win.states.get(photo) is None or win.states[photo].mask_path is None
    assert not win.has_own_mask(photo)


def test_a_deletion_that_records_nothing_leaves_the_photo_its_mask(
        qtbot, window, folder, monkeypatch):
    """The deletion fails as a whole (no record written, file not deleted): the photo keeps its
    saved mask - its fix is still B's - instead of acting as if it were gone."""
    from ui.sidecar import SidecarStore

    win = window
    opened(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    st = diagnosed(qtbot, win, target)
    assert st.diagnosis.label is not Degradation.B
    win._write_mask(target, painted(qtbot, win, target))
    _settled(qtbot, win)
    saved = st.mask_path
    assert saved is not None and saved.is_file()

    def fails(self, photo, also=None, kept=None):
        raise PermissionError(13, "Permission denied", str(also))

    monkeypatch.setattr(SidecarStore, "forget_mask", fails)
    win.delete_mask(target)
    _settled(qtbot, win)
    assert "Could not delete the mask of a_noisy.jpg" in win.status_label.text()
    assert st.mask_path == saved and win.has_own_mask(target)
    assert win.plan_label(target) is Degradation.B
    qtbot.waitUntil(lambda: st.plan is not None and st.plan_job is None, timeout=30000)
    assert st.plan.label is Degradation.B


@pytest.mark.parametrize("where", ["writable", "read-only"])
def test_retry_of_a_fix_cancelled_by_the_mask_deletion_runs_without_it(
        qtbot, window, tmp_path, read_only, where):
    """Retry resent the request with the deleted mask: it failed on the missing file (or, with
    the file left in a read-only ``.mend``, removed what the photographer no longer wanted
    removed). It runs as a new fix would: as diagnosed, without the mask."""
    win = window
    folder, photo, mask = masked_folder(tmp_path)
    if where == "read-only":
        read_only(folder / ".mend")
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: photo in win.states and win.states[photo].mask_path is not None,
                    timeout=10000)
    st = diagnosed(qtbot, win, photo)
    assert st.diagnosis.label is not Degradation.B and st.mask_path == mask
    first = win.fix(folder / "q.jpg")  # (runs first: the masked fix waits behind it)
    masked = win.fix(photo)
    assert None not in (first, masked) and win.client.request(masked).mask_path == mask
    win.delete_mask(photo)
    _settled(qtbot, win)
    assert win.client.job(masked).state.value == "cancelled"
    assert mask.exists() is (where == "read-only")
    again = win.client.retry(masked)
    qtbot.waitUntil(lambda: win.client.job(again).state.finished, timeout=90000)
    _settled(qtbot, win)
    assert win.client.job(again).state.value == "done", win.client.job(again).error
    assert win.client.request(again).mask_path is None
    assert st.result.label is st.diagnosis.label and st.result.label is not Degradation.B


def test_a_retried_masked_fix_is_cancelled_by_a_later_deletion(qtbot, window, folder):
    """A retried fix that reads the mask is one of the photo's masked jobs again: a "Delete
    mask" after the retry cancels it (it was not: the retry was not counted)."""
    win = window
    opened(qtbot, win, folder)
    target, other = folder / "a_noisy.jpg", folder / "c_smooth.jpg"
    diagnosed(qtbot, win, target)
    win._write_mask(target, painted(qtbot, win, target))
    _settled(qtbot, win)
    masked = win.fix(target)
    win.client.cancel(masked)
    _settled(qtbot, win)
    win.fix(other)  # (runs first)
    again = win.client.retry(masked)
    assert win.client.request(again).mask_path is not None
    win.delete_mask(target)
    _settled(qtbot, win)
    assert win.client.job(again).state.value == "cancelled"
