"""'Delete mask…' with odd sidecar states: a folder or a link standing at the mask file's name,
and a deletion made while the folder is being listed again (its sidecars read meanwhile)."""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np

from tests.ui.conftest import opened, painted, write_photo


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_a_folder_at_the_mask_s_name_stays_and_the_record_goes(tmp_path):
    """A sidecar recording ``.mend/<photo>.mask.png`` that is a folder (made by hand, a sync
    tool): deleting the mask failed as a whole ("Is a directory"), the sidecar kept recording
    it and Mend's mask in the user data folder stayed. The folder and what it holds stay."""
    from engine.imageio import save_mask
    from ui.settings import data_dir
    from ui.sidecar import SidecarStore

    folder = tmp_path / "shoot"
    photo = write_photo(folder / "p.jpg")
    store = SidecarStore(folder, data_dir())
    where = store.mask_path_for(photo)
    where.mkdir(parents=True)
    (where / "keep.txt").write_text("not Mend's")
    store.update(photo, mask=str(where))
    assert store.forget_mask(photo, also=where) == []
    assert (where / "keep.txt").read_text() == "not Mend's"
    assert store.load(photo).mask is None
    # the same with a mask Mend wrote in the user data folder (sidecars kept there once): it goes
    in_data = store._in_data / where.name
    save_mask(np.ones((64, 96), bool), in_data)
    store.update(photo, mask=str(where))
    assert store.forget_mask(photo, also=in_data) == [in_data] and not in_data.exists()
    assert where.is_dir() and store.load(photo).mask is None


def test_a_link_at_the_mask_s_name_is_deleted_not_what_it_points_to(tmp_path):
    """A link to the photo (or to a folder) standing where the mask goes: the link goes, the
    photo and the folder stay."""
    from ui.settings import data_dir
    from ui.sidecar import SidecarStore

    folder = tmp_path / "shoot"
    photo = write_photo(folder / "p.jpg")
    before = _sha(photo)
    store = SidecarStore(folder, data_dir())
    where = store.mask_path_for(photo)
    where.parent.mkdir(parents=True, exist_ok=True)
    for target in (photo, folder):
        os.symlink(target, where)
        store.update(photo, mask=str(where))
        assert store.forget_mask(photo) == [where]
        assert not os.path.lexists(where) and store.load(photo).mask is None
    assert _sha(photo) == before and folder.is_dir()


def test_a_mask_deleted_while_the_folder_is_listed_again_does_not_come_back(
        qtbot, window, folder, monkeypatch):
    """F5 lists the folder again and reads the photos' sidecars in the pool; 'Delete mask'
    meanwhile. The sidecar read before the deletion still named the mask (and its file was
    there then): applied after it, it gave the photo its deleted mask back (a Fix then read a
    file that is gone, or fixed the photo as B)."""
    from ui.sidecar import SidecarStore

    win = window
    opened(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    win._write_mask(target, painted(qtbot, win, target))
    qtbot.waitUntil(lambda: win.bg.pending() == 0 and win.client.is_idle(), timeout=30000)
    st = win.states[target]
    saved = st.mask_path
    assert saved is not None and saved.is_file() and st.diagnosis is None

    # the sidecar read of the listing holds on at the next photo (the target's mask seen)
    # until the deletion has been made: the order a busy disk gives
    real_load, real_forget = SidecarStore.load, SidecarStore.forget_mask
    forgetting = threading.local()
    reading_next, forgotten = threading.Event(), threading.Event()

    def load(self, photo):
        sc = real_load(self, photo)
        if Path(photo).name == "b_clean.png" and not getattr(forgetting, "on", False):
            reading_next.set()
            forgotten.wait(20)
        return sc

    def forget_mask(self, photo, also=None, **kw):
        forgetting.on = True
        try:
            return real_forget(self, photo, also, **kw)
        finally:
            forgetting.on = False
            forgotten.set()

    monkeypatch.setattr(SidecarStore, "load", load)
    monkeypatch.setattr(SidecarStore, "forget_mask", forget_mask)
    win.show_browser()
    win.reload_folder()
    qtbot.waitUntil(reading_next.is_set, timeout=20000)
    win.delete_mask(target)
    qtbot.waitUntil(forgotten.is_set, timeout=20000)
    qtbot.waitUntil(lambda: win.bg.pending() == 0 and win.client.is_idle()
                    and not win.folder_loading and not win._mask_waiters, timeout=30000)
    assert not saved.exists()
    assert st.mask_path is None and win.states[target].mask_path is None
    assert win.sidecars.load(target).mask is None
