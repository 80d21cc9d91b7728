"""The GUI thread never waits for a disk (a network drive, an external disk asleep: one stat can
take seconds), the grid's selection is read per range, and a fix finishing after its folder was
left adds its result to the sidecar's list instead of replacing it. Through the real MainWindow
on the real builtin engine."""
from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Self

import pytest
from PySide6.QtCore import QItemSelection, QItemSelectionModel, QThreadPool

from engine.api import Degradation
from ui.browser import model as bm
from ui.browser.model import ClassFilterProxy, PhotoItem, ThumbnailModel
from ui.browser.thumbs import ThumbnailLoader
from ui.browser.view import ThumbnailGrid
from ui.sidecar import SidecarStore

from .conftest import opened, write_photo


def settle(qtbot, win, ms: int = 90000) -> None:
    qtbot.waitUntil(win.client.is_idle, timeout=ms)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)


class DiskCalls:
    """Filesystem calls (reads and writes) made on the GUI (main) thread while recording:
    (call, path)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.on = False

    def __enter__(self) -> Self:
        self.on = True
        return self

    def __exit__(self, *exc) -> None:
        self.on = False

    def under(self, root: Path, allow: tuple[Path, ...] = ()) -> list[tuple[str, str]]:
        r, ok = os.fspath(root), {os.fspath(p) for p in allow}
        return [(c, p) for c, p in self.calls
                if (p == r or p.startswith(r + os.sep)) and p not in ok]


@pytest.fixture
def gui_disk(monkeypatch) -> DiskCalls:
    rec = DiskCalls()
    main = threading.main_thread()

    def wrap(mod, name: str) -> None:
        orig = getattr(mod, name)

        def call(*a, **kw):
            if rec.on and threading.current_thread() is main and a and isinstance(
                    a[0], (str, bytes, os.PathLike)):
                rec.calls.append((name, os.fsdecode(a[0])))
            return orig(*a, **kw)

        monkeypatch.setattr(mod, name, call)

    for name in ("stat", "lstat", "access", "scandir", "listdir", "readlink",
                 # writes: atomic_write_bytes (os.open of the folder or the temp file, replace),
                 # pathlib's unlink / mkdir / rmdir / touch, the cache's utime
                 "open", "unlink", "remove", "replace", "rename", "link", "mkdir", "rmdir",
                 "utime"):
        wrap(os, name)
    wrap(io, "open")  # (pathlib's read_text / read_bytes / open)
    return rec


# -- 1. filesystem access on the GUI thread -------------------------------------------------
def test_sidecar_store_and_mask_path_touch_no_disk_when_made(tmp_path, gui_disk):
    """Making a store (open_folder, _store_for) and asking where a mask goes (_write_mask) are
    done on the GUI thread: they must not stat, lstat, resolve or access the folder."""
    photos = tmp_path / "ph"
    photos.mkdir()
    with gui_disk:
        store = SidecarStore(photos, tmp_path / "data")
    assert gui_disk.under(tmp_path) == []
    # the disk is read where the store is first used (in the pool), as before
    assert store.root == photos / ".mend"
    assert store.mask_path_known(photos / "a.jpg") == photos / ".mend" / "a.jpg.mask.png"


def test_the_window_leaves_the_disk_to_its_pools(qtbot, window, folder, tmp_path, gui_disk,
                                                  monkeypatch):
    """Open a folder, view a photo, edit its mask, fix it, leave the folder before the fix
    finishes (the mask is written, the result recorded by a store made for the folder left),
    come back and export the result: nothing of it stats the photos', sidecars', output or
    models' folders on the GUI thread, except the one check of the folder just picked."""
    monkeypatch.setenv("MEND_MODELS_DIR", str(tmp_path / "models"))
    win = window
    other = tmp_path / "other"
    write_photo(other / "x.png", 40, 30)
    a = folder / "b_clean.png"
    with gui_disk:
        opened(qtbot, win, folder)
        qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
        win.select_path(a)
        with qtbot.waitSignal(win.view_loaded, timeout=20000):
            win.show_viewer(a)
        win.show_mask_editor()
        qtbot.waitUntil(lambda: win.mask_doc is not None, timeout=10000)
        win.mask_doc.fill_polygon([(30, 20), (60, 20), (60, 50), (30, 50)])
        with qtbot.waitSignal(win.fixed, timeout=90000):
            win.fix(a, label=Degradation.A)
            opened(qtbot, win, other)
        settle(qtbot, win)
        opened(qtbot, win, folder)
        qtbot.waitUntil(lambda: win.model.item(a).output is not None, timeout=10000)
        win.select_path(a)
        with qtbot.waitSignal(win.exported, timeout=10000):
            win.export_current(tmp_path / "exported" / "final.png")
        settle(qtbot, win)
    assert (folder / ".mend" / "b_clean.png.mask.png").is_file()
    assert (tmp_path / "exported" / "final.png").is_file()
    # (open_folder's is_dir of the folder just picked: one stat, the folder the user chose)
    found = gui_disk.under(tmp_path, allow=(folder, other))
    assert found == [], "\n".join(map(str, found))


def test_export_of_a_result_deleted_meanwhile_says_so(qtbot, window, folder, tmp_path):
    """The result's existence is checked off the GUI thread. A result deleted (or moved)
    outside Mend is said to be gone, and where it was: "Nothing to export yet: fix the photo
    first" was said of a photo that was fixed."""
    win = window
    opened(qtbot, win, folder)
    a = folder / "b_clean.png"
    win.select_path(a)
    with qtbot.waitSignal(win.fixed, timeout=90000):
        win.fix(a, label=Degradation.A)
    settle(qtbot, win)
    out = win.states[a].output
    out.unlink()
    win.export_current(tmp_path / "exported" / "final.png")
    qtbot.waitUntil(lambda: "no longer on the disk" in win.status_label.text(), timeout=10000)
    text = win.status_label.text()
    assert text.startswith("The result of b_clean.png is no longer on the disk"), text
    assert str(out) in text and "fix the photo again" in text
    assert not (tmp_path / "exported").exists()


# -- 2. the selection's paths, per range ----------------------------------------------------
N_BIG = 100_000


def _big_grid(qtbot, n: int = N_BIG):
    grid = ThumbnailGrid()
    qtbot.addWidget(grid)
    loader = ThumbnailLoader(QThreadPool(grid), None, parent=grid)
    model = ThumbnailModel(loader, grid)
    proxy = ClassFilterProxy(grid)
    proxy.setSourceModel(model)
    items = [PhotoItem(Path(f"/nowhere/IMG_{i:06d}.jpg"), 0, 1) for i in range(n)]
    model.set_folder(Path("/nowhere"), items)
    grid.setModel(proxy)
    return grid, model, proxy, loader


def _per_index(grid) -> list[Path]:  # (what selected_paths did: one index at a time)
    rows = sorted(grid.selectionModel().selectedIndexes(), key=lambda ix: ix.row())
    return [ix.data(bm.PathRole) for ix in rows]


def test_selected_paths_of_100k_photos_is_read_per_range(qtbot, monkeypatch):
    grid, _model, _proxy, _loader = _big_grid(qtbot)
    grid.selectAll()
    asked = []
    orig = ThumbnailModel.data

    def data(self, index, role=0):
        if role == bm.PathRole:
            asked.append(index.row())
        return orig(self, index, role)

    monkeypatch.setattr(ThumbnailModel, "data", data)
    t = time.perf_counter()
    paths = grid.selected_paths()
    took = time.perf_counter() - t
    assert len(paths) == N_BIG and paths[0].name == "IMG_000000.jpg"
    assert paths[-1].name == f"IMG_{N_BIG - 1:06d}.jpg"
    assert len(asked) < 100, f"{len(asked)} per-index PathRole reads"
    assert took < 0.25, f"{took:.2f} s for {N_BIG} selected photos"


def test_selected_paths_per_range_match_the_selection(qtbot):
    """Several ranges (Ctrl-click), selected in any order, and a class filter that hides
    photos: the same paths, in grid order, as one index at a time."""
    grid, model, proxy, _loader = _big_grid(qtbot, 2000)
    from engine.api import Diagnosis

    diag = Diagnosis(Degradation.A, {"A": 0.7, "B": 0.1, "C": 0.1, "D": 0.1})
    model.fetch_all()
    for i in range(0, 2000, 3):
        model.update_item(Path(f"/nowhere/IMG_{i:06d}.jpg"), diagnosis=diag)
    sm = grid.selectionModel()
    for classes in (None, {"?"}, {"A"}):
        proxy.set_classes(classes)
        sm.clearSelection()
        n = proxy.rowCount()
        sel = QItemSelection()
        for top, bottom in ((n - 40, n - 1), (5, 9), (100, 300), (12, 12)):
            sel.select(proxy.index(top, 0), proxy.index(bottom, 0))
        sm.select(sel, QItemSelectionModel.SelectionFlag.Select)
        got = grid.selected_paths()
        assert got == _per_index(grid) and len(got) == 40 + 5 + 201 + 1


# -- 3. outputs of a fix finishing after its folder was left --------------------------------
def test_a_fix_finishing_after_its_folder_was_left_adds_to_the_sidecars_outputs(
        qtbot, window, folder, tmp_path):
    win = window
    other = tmp_path / "other"
    other.mkdir()
    a = folder / "b_clean.png"
    opened(qtbot, win, folder)
    with qtbot.waitSignal(win.fixed, timeout=90000):
        win.fix(a, label=Degradation.A)
    settle(qtbot, win)
    first = win.states[a].output
    sidecar = folder / ".mend" / "b_clean.png.json"
    assert json.loads(sidecar.read_text())["outputs"] == [str(first)]
    win.fix(a, label=Degradation.A)  # again, and the folder left before it finishes
    opened(qtbot, win, other)
    settle(qtbot, win)
    outputs = json.loads(sidecar.read_text())["outputs"]
    assert len(outputs) == 2 and outputs[0] == str(first) and outputs[1] != str(first)
    assert all(Path(o).is_file() for o in outputs)
    # and they come back when the folder is opened again: the latest is the photo's result
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: win.model.item(a).output is not None, timeout=10000)
    assert win.states[a].outputs == outputs and str(win.states[a].output) == outputs[1]


def test_unfinished_jobs_are_read_off_the_gui_thread(qtbot, folder, tmp_path, gui_disk,
                                                     monkeypatch):
    """The crash journal and the photos it names (maybe on a disk that is asleep, or gone) are
    read in the pool; the question counts every unfinished job, the photos still there run."""
    from PySide6.QtWidgets import QMessageBox

    from engine.api import JobRequest, OutputOptions
    from ui.engine_client import EngineClient, request_to_json
    from ui.main_window import MainWindow
    from ui.settings import AppSettings

    a = folder / "b_clean.png"
    out = OutputOptions(out_dir=tmp_path / "out")
    journal = tmp_path / "ui-data" / "queue.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(json.dumps({"jobs": [
        request_to_json(JobRequest(path=a, output=out, label=Degradation.A)),
        request_to_json(JobRequest(path=tmp_path / "gone" / "x.jpg", output=out))]}))
    asked = []

    def question(parent, title, text, *a, **kw):
        asked.append(text)
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    # (the journal a crash left: this Mend keeps its own, see engine_client.orphan_journals)
    client = EngineClient(journal=tmp_path / "ui-data" / "journals" / "mine.json")
    settings = AppSettings(backend="builtin", profile="builtin", out_dir=str(tmp_path / "out"))
    with gui_disk:
        win = MainWindow(client, settings, ask_resume=True)
        qtbot.addWidget(win)
        qtbot.waitUntil(lambda: bool(asked), timeout=10000)
    try:
        assert "2 unfinished job(s)" in asked[0]
        assert list(win._job_path.values()) == [a]
        settle(qtbot, win)
    finally:
        win.close()
        client.shutdown()
    assert gui_disk.under(tmp_path) == []
