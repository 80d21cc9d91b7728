""""Include subfolders" in the photo grid: the listing of a whole tree (sorted by relative path,
hidden and output folders left out, no symlink loop, bounded, stoppable), the toggle (kept in the
settings, re-lists off the GUI thread, a stale listing dropped), and photos of the same name in
two subfolders kept apart (sidecars, results, masks, states)."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

import ui.browser.model as bm
from ui.browser.model import TreeScan, scan_folder, scan_tree
from ui.engine_client import JobState
from ui.main_window import MainWindow
from ui.settings import AppSettings, load_settings

from .conftest import write_photo


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
    return p


def _rels(items) -> list[str]:
    return [it.display_name.replace(os.sep, "/") for it in items]


@pytest.fixture
def card(tmp_path) -> Path:
    """A memory card / shoot: photos in subfolders, Mend's outputs and sidecars among them."""
    top = tmp_path / "card"
    for rel in ("top.jpg", "DCIM/100CANON/IMG_0001.JPG", "DCIM/100CANON/img_0002.jpg",
                "DCIM/101CANON/IMG_0001.JPG", "day2/b.png", "Day1/a.png", "Day1/sub/deep.tif",
                # left out: hidden, Mend's outputs (default and configured), sidecars
                ".thumbs/x.jpg", "mended/top_mend.jpg", "Day1/mended/a_mend.png",
                "results/top_mend.jpg", "DCIM/100CANON/.mend/IMG_0001.JPG.mask.png",
                ".hidden.jpg", "notes.txt"):
        _touch(top / rel)
    return top


def test_scan_tree_lists_the_subfolders_sorted_by_relative_path(card):
    assert _rels(scan_folder(card)) == ["top.jpg"]  # off: the folder itself only
    items = scan_tree(card, exclude=(card / "results",))
    assert _rels(items) == ["Day1/a.png", "Day1/sub/deep.tif", "day2/b.png",  # (any case)
                            "DCIM/100CANON/IMG_0001.JPG", "DCIM/100CANON/img_0002.jpg",
                            "DCIM/101CANON/IMG_0001.JPG", "top.jpg"]
    assert items[-1].rel == "" and items[-1].path == card / "top.jpg"  # its own: just the name
    assert items[3].path == card / "DCIM" / "100CANON" / "IMG_0001.JPG"
    assert all(it.size == 0 and it.mtime_ns > 0 for it in items)
    # the configured output folder is left out however it is named (through a link here)
    link = card.parent / "link-to-card"
    link.symlink_to(card, target_is_directory=True)
    assert "results/top_mend.jpg" not in _rels(scan_tree(card, exclude=(link / "results",)))
    # a configured output folder outside the tree changes nothing; "results" is then listed
    assert "results/top_mend.jpg" in _rels(scan_tree(card, exclude=(card.parent / "out",)))


def test_scan_tree_leaves_out_a_subfolder_it_cannot_read(card, monkeypatch):
    real = os.scandir
    locked = card / "DCIM" / "101CANON"

    def scandir(p):
        if Path(p) == locked:
            raise PermissionError(13, "Permission denied", str(p))
        return real(p)

    monkeypatch.setattr(bm.os, "scandir", scandir)
    got = _rels(scan_tree(card))
    assert "DCIM/101CANON/IMG_0001.JPG" not in got and "DCIM/100CANON/IMG_0001.JPG" in got
    monkeypatch.setattr(bm.os, "scandir", lambda p: scandir(locked))
    with pytest.raises(OSError):  # the opened folder itself: the window says so
        scan_tree(card)


def test_a_symlink_loop_ends_and_nothing_is_listed_twice(tmp_path):
    top = tmp_path / "loop"
    _touch(top / "a" / "x.jpg")
    (top / "a" / "back").symlink_to(top, target_is_directory=True)  # a/back/a/back/...
    (top / "a" / "here").symlink_to(top / "a", target_is_directory=True)
    (top / "link.jpg").symlink_to(top / "a" / "x.jpg")  # a linked photo is a photo
    assert _rels(scan_tree(top)) == ["a/x.jpg", "link.jpg"]


def test_a_folder_reached_twice_is_read_once(tmp_path, monkeypatch):
    """A bind mount (or a Windows junction) of a parent looks like a plain folder: the walk
    knows the folders it has read by device and inode."""
    top = tmp_path / "t"
    _touch(top / "a" / "x.jpg")
    (top / "a" / "again").mkdir()
    real = os.stat

    def stat(p, *a, **kw):  # "again" is the same folder as "a"
        return real(top / "a" if Path(p) == top / "a" / "again" else p, *a, **kw)

    monkeypatch.setattr(bm.os, "stat", stat)
    assert _rels(scan_tree(top)) == ["a/x.jpg"]


def test_a_huge_tree_stops_at_the_limits_and_a_stopped_walk_ends(tmp_path):
    top = tmp_path / "huge"
    for i in range(30):
        _touch(top / f"f{i:02d}" / "p.jpg")
        _touch(top / f"f{i:02d}" / "q.jpg")
    scan = TreeScan()
    got = scan_tree(top, scan=scan, max_folders=11)
    assert not scan.complete and scan.folders == 11 and len(got) == 20 == scan.photos
    assert _rels(got)[:2] == ["f00/p.jpg", "f00/q.jpg"]  # the first folders, in order
    scan = TreeScan()
    assert len(scan_tree(top, scan=scan, max_photos=5)) == 5 and not scan.complete
    scan = TreeScan()
    assert len(scan_tree(top, scan=scan)) == 60 and scan.complete and scan.folders == 31
    scan = TreeScan()
    scan.stopped = True  # another folder was opened
    assert scan_tree(top, scan=scan) == []


# -- the window -------------------------------------------------------------------------------

def _opened(qtbot, win, folder: Path) -> None:
    win.open_folder(folder)
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)


def _settle(qtbot, win, ms=90000):
    qtbot.waitUntil(win.client.is_idle, timeout=ms)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)


@pytest.fixture
def shoot(tmp_path) -> Path:
    top = tmp_path / "shoot"
    write_photo(top / "DCIM" / "100CANON" / "IMG_0001.JPG", 96, 72, seed=1, kind="noisy")
    write_photo(top / "DCIM" / "101CANON" / "IMG_0001.JPG", 96, 72, seed=2)
    write_photo(top / "DCIM" / "101CANON" / "mended" / "IMG_0001_mend.JPG", 96, 72, seed=3)
    return top


def test_the_toggle_lists_the_subfolders_and_is_remembered(qtbot, window, shoot):
    win = window
    assert not win.subfolders_action.isChecked()
    _opened(qtbot, win, shoot)
    assert win.model.total() == 0
    # the empty folder points at the toggle (the output folder's photo is not counted)
    qtbot.waitUntil(lambda: "subfolders hold 2: turn on “Include subfolders”"
                    in win.status_label.text(), timeout=10000)
    assert win.grid.placeholder() == win.status_label.text()
    assert win.subfolders_action in win.menuBar().actions()[2].menu().actions()  # View menu

    win.subfolders_action.trigger()  # (the button beside the folder's name: the same action)
    assert win.folder_loading  # listed again, off the GUI thread
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    names = [win.model.index(r).data(Qt.ItemDataRole.DisplayRole)
             for r in range(win.model.rowCount())]
    assert [n.replace(os.sep, "/") for n in names] == ["DCIM/100CANON/IMG_0001.JPG",
                                                       "DCIM/101CANON/IMG_0001.JPG"]
    assert "2 photos with its subfolders" in win.folder_label.text()
    assert load_settings(win.qs).include_subfolders is True  # remembered
    assert win.settings.include_subfolders
    win.grid.viewport().grab()  # the cells paint their subfolder

    # the next window starts with it on
    other = MainWindow(win.client, load_settings(win.qs), ask_resume=False)
    assert other.subfolders_action.isChecked()
    other.close()
    other.deleteLater()
    del other

    # turned off while on a subfolder's photo: it is not listed any more, nor current
    win.select_path(shoot / "DCIM" / "100CANON" / "IMG_0001.JPG")
    assert win.panel.title.text().replace(os.sep, "/") == "DCIM/100CANON/IMG_0001.JPG"
    win.set_include_subfolders(False)
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    assert win.model.total() == 0 and win.current is None
    assert load_settings(win.qs).include_subfolders is False
    qtbot.waitUntil(lambda: "subfolders hold 2" in win.status_label.text(), timeout=10000)


def test_same_names_in_two_subfolders_stay_two_photos(qtbot, window, shoot, tmp_path):
    """100CANON/IMG_0001.JPG and 101CANON/IMG_0001.JPG: each its own diagnosis, result (in its
    own subfolder of the output folder), sidecar (in its own folder) and mask."""
    win = window
    win.set_include_subfolders(True)
    _opened(qtbot, win, shoot)
    a = shoot / "DCIM" / "100CANON" / "IMG_0001.JPG"
    b = shoot / "DCIM" / "101CANON" / "IMG_0001.JPG"
    assert [it.path for it in win.model.items()] == [a, b]
    qtbot.waitUntil(lambda: win.model.ready_count() == 2, timeout=20000)

    win.diagnose([b])
    _settle(qtbot, win)
    assert win.model.item(b).diagnosis is not None and win.model.item(a).diagnosis is None
    assert a not in win.states or win.states[a].diagnosis is None
    qtbot.waitUntil(lambda: (b.parent / ".mend" / "IMG_0001.JPG.json").exists(), timeout=5000)
    assert not (a.parent / ".mend" / "IMG_0001.JPG.json").exists()

    # the class filter, and the current photo kept while it is current
    win.filter.setCurrentIndex(win.filter.findText("Not diagnosed"))
    assert [win.proxy.index(r, 0).data(bm.PathRole) for r in range(win.proxy.rowCount())] == [a]
    win.filter.setCurrentIndex(0)

    win.grid.selectAll()
    assert win.grid.selected_paths() == [a, b]
    ids = win.fix_selected()
    assert len(ids) == 2
    _settle(qtbot, win)
    out_a, out_b = win.model.item(a).output, win.model.item(b).output
    assert out_a == tmp_path / "out" / "DCIM" / "100CANON" / "IMG_0001_mend.jpg", out_a
    assert out_b == tmp_path / "out" / "DCIM" / "101CANON" / "IMG_0001_mend.jpg", out_b
    assert out_a.is_file() and out_b.is_file()
    assert win.states[a].output == out_a and win.states[b].output == out_b
    assert all(win.model.item(p).job_state is JobState.DONE for p in (a, b))

    # the edited mask goes beside its own photo's sidecar
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(a)
    win.show_mask_editor()
    assert win._mask_doc_path == a
    assert win._store_for(a).mask_path_for(a).parent == a.parent / ".mend"
    assert win._store_for(b).mask_path_for(b).parent == b.parent / ".mend"
    win.show_browser()

    # reopened: each photo gets its own result back from its own sidecar
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
    (tmp_path / "elsewhere").mkdir()
    _opened(qtbot, win, tmp_path / "elsewhere")  # another folder, then back
    _opened(qtbot, win, shoot)
    qtbot.waitUntil(lambda: win.model.item(a).output is not None
                    and win.model.item(b).output is not None, timeout=10000)
    assert win.model.item(a).output == out_a and win.model.item(b).output == out_b
    assert win.model.item(a).diagnosis is not None  # (diagnosed by its fix)
    assert win.model.total() == 2  # 101CANON/mended (a result there) is still left out


def test_a_listing_that_arrives_late_is_dropped(qtbot, window, shoot, tmp_path, monkeypatch):
    """A slow tree (a network drive) is still being walked when another folder is opened, or the
    toggle is turned off: its walk is told to stop and its listing, arriving late, is dropped."""
    import ui.main_window as mw

    gate = threading.Event()
    scans: list[TreeScan] = []
    real = mw.scan_tree

    def slow(folder, **kw):
        if "max_photos" in kw:  # the count for the empty folder's hint
            return real(folder, **kw)
        scans.append(kw["scan"])
        gate.wait(20)
        return real(folder, **kw)

    monkeypatch.setattr(mw, "scan_tree", slow)
    win = window
    win.set_include_subfolders(True)
    other = tmp_path / "other"
    write_photo(other / "x.png", 64, 48, seed=5)
    try:
        win.open_folder(shoot)
        qtbot.waitUntil(lambda: len(scans) == 1, timeout=5000)
        assert win.folder_loading and win.grid.placeholder() == "Reading shoot…"
        scans[0].folders, scans[0].photos = 3, 7  # the walk's counters, shown as it goes
        qtbot.waitUntil(lambda: win.grid.placeholder().endswith(
            "7 photos in 3 folders so far"), timeout=5000)
        win.set_include_subfolders(False)  # turned off mid-listing: the folder alone
        assert scans[0].stopped
        qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
        assert win.model.total() == 0
        win.set_include_subfolders(True)  # on again, then another folder opened
        qtbot.waitUntil(lambda: len(scans) == 2, timeout=5000)
        win.open_folder(other)
        assert scans[1].stopped and scans[0] is not scans[1]
    finally:
        gate.set()
    _settle(qtbot, win)
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    assert win.model.folder == other and [it.path for it in win.model.items()] == [
        other / "x.png"]
    qtbot.wait(100)  # the stale listings have all arrived by now: still the other folder's
    assert win.model.folder == other and win.model.total() == 1


def test_results_of_subfolder_photos_keep_their_subfolder_in_the_output_folder(tmp_path):
    top = tmp_path / "card"
    photo = top / "DCIM" / "100CANON" / "IMG_0001.JPG"
    s = AppSettings(out_dir=str(tmp_path / "out"))
    assert s.output_options(photo, top).out_dir == tmp_path / "out" / "DCIM" / "100CANON"
    assert s.output_options(top / "a.jpg", top).out_dir == tmp_path / "out"
    assert s.output_options(photo).out_dir == tmp_path / "out"  # (no folder open)
    assert s.output_options(tmp_path / "x.jpg", top).out_dir == tmp_path / "out"  # not below
    d = AppSettings().output_options(photo, top)  # by default beside each photo
    assert d.out_dir == photo.parent / "mended"


def test_turning_it_on_keeps_the_current_photo_and_what_was_done(qtbot, window, tmp_path):
    top = tmp_path / "shoot2"
    own = write_photo(top / "own.png", 64, 48, seed=4)
    write_photo(top / "day1" / "a.png", 64, 48, seed=5)
    win = window
    _opened(qtbot, win, top)
    win.select_path(own)
    win.diagnose([own])
    _settle(qtbot, win)
    diag = win.model.item(own).diagnosis
    assert diag is not None
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(own)
    win.set_include_subfolders(True)  # from the viewer (View menu)
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    assert win.model.total() == 2
    assert win.current == own and win.grid.currentIndex().data(bm.PathRole) == own
    assert win.model.item(own).diagnosis == diag and win.panel.diagnosis == diag
    _settle(qtbot, win)
