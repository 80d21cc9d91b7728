"""The thumbnail cache keeps what another Mend used side by side still uses (least recently used
across every kind past the cap; other kinds' entries removed only once unused for a month), and
shutting down touches no disk on the GUI thread: the crash journal's last snapshot is written
(and deleted, at a normal quit) in the pool while the window's event loop keeps running, and it
is on the disk when shutdown returns. The mask editor opened before its photo decoded, or
on a photo that cannot be read."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QObject, QThreadPool, QTimer
from PySide6.QtGui import QImage

from engine.api import JobRequest, OutputOptions
from ui.browser import thumbs
from ui.browser.thumbs import THUMB_KIND, ThumbnailCache
from ui.engine_client import JOURNALS, EngineClient, read_journal, start_in
from ui.main_window import MainWindow
from ui.settings import data_dir

from . import test_crash_safety as cs
from . import test_gui_thread_io as gio
from .conftest import opened
from .test_ui_s12b import DAY, _aged, _img, _key

gui_disk = gio.gui_disk  # (the fixture recording the GUI thread's filesystem calls)
asked = cs.asked  # (every question answered Yes)


# -- 1. the thumbnail cache and another Mend's thumbnails ---------------------------------------
def _older_mend_cache(monkeypatch, base: Path, kind: str) -> ThumbnailCache:
    """The cache an older Mend, whose THUMB_KIND was ``kind``, uses in ``base``."""
    monkeypatch.setattr(thumbs, "THUMB_KIND", kind)
    try:
        return ThumbnailCache.for_kind(base)
    finally:
        monkeypatch.setattr(thumbs, "THUMB_KIND", THUMB_KIND)


def _flat(base: Path, key: str) -> Path:
    """An entry from before kinds had folders (flat in ``base``), written now."""
    p = base / key[:2] / f"{key}.jpg"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x" * 500)
    return p


def test_an_older_mend_used_side_by_side_keeps_its_thumbnails(tmp_path, monkeypatch):
    """Every start of this Mend removed the other kinds' thumbnails however recently they were
    used: an older Mend used beside it rebuilt its whole cache each time. Under the cap, the
    ones it used lately stay (and it reads them), whatever the kind; only those unused for
    OTHERS_KEPT_FOR go, and their folders once emptied."""
    base = tmp_path / "thumbs"
    older = _older_mend_cache(monkeypatch, base, "srgb")
    assert older.root == base / "srgb"
    recent, unused = _key(1), _key(2)
    older.put(recent, _img("#204060"))
    older.put(unused, _img("#604020"))
    _aged(older.root / unused[:2] / f"{unused}.jpg", thumbs.OTHERS_KEPT_FOR / DAY + 2)
    flat_recent = _flat(base, _key(3))
    flat_unused = _flat(base, _key(4))
    _aged(flat_unused, thumbs.OTHERS_KEPT_FOR / DAY + 2)
    gone_kind = base / "srgb.0"  # a kind nobody uses any more: emptied, its folder goes
    old = gone_kind / _key(5)[:2] / f"{_key(5)}.jpg"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x" * 500)
    _aged(old, thumbs.OTHERS_KEPT_FOR / DAY + 2)
    cache = ThumbnailCache.for_kind(base)
    cache.put(_key(6), _img())

    removed, left = cache.prune()

    assert removed == 3
    assert isinstance(older.get(recent), QImage)  # the older Mend reads it, not rebuilds it
    assert older.get(unused) is None
    assert flat_recent.exists() and not flat_unused.exists()
    assert not gone_kind.exists()
    assert isinstance(cache.get(_key(6)), QImage)
    assert left == sum(p.stat().st_size for p in base.rglob("*") if p.is_file())


def test_the_cap_removes_the_least_recently_used_of_every_kind(tmp_path, monkeypatch):
    """Past the cap, other kinds' entries are counted and removed in one least-recently-used
    order with this kind's own: an older Mend's thumbnail used an hour ago outlives this
    Mend's untouched for a week, and an older one goes before both. Reads an older Mend never
    marked count through the access time where the system keeps it."""
    base = tmp_path / "thumbs"
    older = _older_mend_cache(monkeypatch, base, "srgb")
    cache = ThumbnailCache.for_kind(base)
    own = [_key(i) for i in range(10)]
    for k in own:
        cache.put(k, _img())
    for i, k in enumerate(own):
        _aged(cache.root / k[:2] / f"{k}.jpg", 5 + i / 10)  # 5.0 .. 5.9 days
    theirs_used, theirs_old, theirs_read = _key(100), _key(101), _key(102)
    for k in (theirs_used, theirs_old, theirs_read):
        older.put(k, _img())
    _aged(older.root / theirs_used[:2] / f"{theirs_used}.jpg", 1 / 24)
    _aged(older.root / theirs_old[:2] / f"{theirs_old}.jpg", 20)
    read = older.root / theirs_read[:2] / f"{theirs_read}.jpg"  # written 20 days ago, read now
    os.utime(read, (time.time(), time.time() - 20 * DAY))
    sizes = {p: p.stat().st_size for p in base.rglob("*.jpg")}
    cache.max_bytes = sum(sizes.values()) * 7 // 10  # (all 13 over it: pruned to 56 %)

    removed, left = cache.prune()

    kept = {p for p in sizes if p.exists()}
    assert left == sum(sizes[p] for p in kept) <= cache.max_bytes * thumbs.CACHE_PRUNE_TO
    assert removed == len(sizes) - len(kept) >= 5
    assert not (older.root / theirs_old[:2] / f"{theirs_old}.jpg").exists()  # the oldest
    assert (older.root / theirs_used[:2] / f"{theirs_used}.jpg") in kept
    assert read in kept
    own_kept = [i for i, k in enumerate(own) if (cache.root / k[:2] / f"{k}.jpg") in kept]
    assert own_kept == list(range(len(own_kept)))  # this kind's newest stay


# -- 2. shutting down touches no disk on the GUI thread --------------------------------------
class _SlowToStop(cs._BlockingEngine):
    """A job that sees its cancel only every 0.4 s (a long tile); the warm-up's tiny job (no
    progress object) returns at once."""

    check_every = 0.4

    def run(self, request, progress):
        if progress is None:
            return None
        return super().run(request, progress)


def _ticking() -> tuple[QTimer, list[float]]:
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()
    return timer, ticks


def test_shutdown_writes_the_last_journal_in_the_pool_and_keeps_the_window_alive(
        qtbot, tmp_path, gui_disk, monkeypatch):
    """Jobs queued right before the quit (the journal's debounced write not yet done): the last
    snapshot was written by flush_journal on the GUI thread, and the engine thread and the pool
    were waited for with the event loop stopped. Now the write happens in the pool, the event
    loop keeps running through a slow disk and a job slow to stop, and the journal (both
    unfinished jobs) is on the disk, its lock released, when shutdown returns."""
    from engine import imageio

    write = imageio.atomic_write_bytes

    def slow_write(dest, data, **kw):  # (a disk asleep, a network folder)
        time.sleep(0.5)
        return write(dest, data, **kw)

    monkeypatch.setattr(imageio, "atomic_write_bytes", slow_write)
    journal = tmp_path / "ui-data" / JOURNALS / "mine.json"
    client = EngineClient(lambda: _SlowToStop(), journal=journal)
    for n in "ab":
        client.submit(JobRequest(tmp_path / f"{n}.jpg", OutputOptions(out_dir=tmp_path / "o")))
    qtbot.waitUntil(lambda: client.running_id() is not None, timeout=5000)
    timer, ticks = _ticking()
    try:
        with gui_disk:
            t0 = time.monotonic()
            client.shutdown()
            took = time.monotonic() - t0
    finally:
        timer.stop()
    assert gui_disk.under(tmp_path) == []
    assert [r.path.name for r in read_journal(journal)] == ["a.jpg", "b.jpg"]
    assert not Path(f"{journal}.lock").exists()
    during = [t for t in ticks if t0 <= t <= t0 + took]
    print(f"shutdown {took:.2f} s, {len(during)} GUI timer ticks during it")
    assert took >= 0.5  # (it waited for the write)
    assert len(during) >= 10, (took, len(during))  # (frozen before: none)


def test_a_normal_quit_deletes_the_journal_off_the_gui_thread(
        qtbot, tmp_path, gui_disk, asked, monkeypatch):
    """The window's own client (a real quit): Stop and quit deletes its journal, which was
    unlinked on the GUI thread; now in the pool, and gone (with its lock) once closed."""
    from ui import engine_client

    monkeypatch.setattr(engine_client, "_default_factory",
                        lambda *a, **kw: (lambda: _SlowToStop()))
    win = MainWindow(None, cs._settings(tmp_path), ask_resume=False)
    qtbot.addWidget(win)
    client = win.client
    journal = client.journal_path
    assert journal is not None and journal.parent == data_dir() / JOURNALS
    win._submit(tmp_path / "a.jpg", None, None, None)
    qtbot.waitUntil(lambda: len(read_journal(journal)) == 1, timeout=10000)
    with gui_disk:
        assert win.close()
    assert asked == [("Jobs are still running (1 queued or running). Stop them and quit? "
                      "They are not offered again when Mend starts next.")]
    assert gui_disk.under(journal.parent) == []
    assert not journal.exists() and not Path(f"{journal}.lock").exists()
    assert not client._thread.isRunning()


@pytest.mark.parametrize("cleared", [False, True], ids=["kept", "cleared"])
def test_a_write_queued_before_shutdown_never_brings_the_journal_back(qtbot, tmp_path, cleared):
    """The last snapshot goes first in the pool: writes queued before it (older) are skipped,
    so a quit's deleted journal is not written again, nor a kept one replaced by an older."""
    journal = tmp_path / "q.json"
    client = EngineClient(lambda: _SlowToStop(), journal=journal, thumbnail_threads=1)
    gate = threading.Event()
    client.run_in_pool(lambda: gate.wait(10))  # (the pool's one thread is busy)
    client.submit(JobRequest(tmp_path / "a.jpg"))
    client._write_journal()  # an older snapshot: one job
    client.submit(JobRequest(tmp_path / "b.jpg"))
    if cleared:
        client.clear_journal()
    QTimer.singleShot(100, gate.set)
    client.shutdown()
    if cleared:
        assert not journal.exists()
    else:
        assert [r.path.name for r in read_journal(journal)] == ["a.jpg", "b.jpg"]


# -- 3. the mask editor around a photo still decoding, or that cannot be read ----------------
def test_the_mask_editor_opened_before_the_photo_decodes_gets_its_brush(qtbot, window, folder):
    """M right after opening a photo (its decode still in the pool): show_mask_editor and
    set_tool called each other until RecursionError, and the editor was left on "pan" once
    the mask opened. Now the brush picked is taken as soon as the photo's mask opens."""
    win = window
    opened(qtbot, win, folder)
    a = folder / "b_clean.png"
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(a)
        assert win._view is None  # (still decoding)
        win.show_mask_editor()
        assert win.mask_action.isChecked() and win.canvas.tool == "pan"
    assert win.mask_doc is not None and win._mask_doc_path == a
    assert win.canvas.tool == "brush"
    win.set_tool("pan")
    win.set_tool("lasso")
    assert win.canvas.tool == "lasso"


def test_a_photo_that_cannot_be_read_leaves_the_previous_mask_alone(qtbot, window, folder):
    """In the mask editor, from a photo with mask edits to one that cannot be decoded: the
    previous photo's mask stayed the editor's (and the canvas's) document over an empty
    canvas, so undo, clear and the brush changed it unseen; opening the editor made the
    broken photo a mask of the previous one's size, saved as its own. Now the editor holds
    nothing until a photo decodes, and the edits wait for their photo."""
    win = window
    broken = folder / "d_broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    opened(qtbot, win, folder)
    a = folder / "b_clean.png"
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(a)
    win.show_mask_editor()
    doc = win.mask_doc
    doc.fill_polygon([(10, 10), (40, 10), (40, 40)])
    painted = doc.full.copy()
    win.show_viewer(broken)
    qtbot.waitUntil(lambda: "Cannot read" in win.status_label.text(), timeout=20000)
    assert win.mask_doc is None and win.canvas.doc is None and win._view is None
    win.undo_action.trigger()  # (Ctrl+Z on the empty canvas)
    win.show_mask_editor()
    assert win._state(broken).mask_doc is None  # (no mask of b_clean's size for it)
    assert doc.undo.count() == 1 and np.array_equal(doc.full, painted)
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(a)
    assert win.mask_doc is doc and np.array_equal(win.mask_doc.full, painted)


def test_background_work_finishing_after_its_owner_was_deleted_reports_nothing(qtbot):
    """A window's pool work (a mask or sidecar save queued as it closed) that ends after the
    window was deleted raised "Signal source has been deleted" in the pool thread; the work is
    done, its report goes nowhere, quietly."""
    import shiboken6

    from ui.photo_io import Background

    pool = QThreadPool()
    owner = QObject()
    bg = Background(lambda fn: start_in(pool, fn), owner)
    gate, ran = threading.Event(), []
    bg.run(lambda: (gate.wait(10), ran.append(1)), lambda _r: ran.append("reported"))
    bg.run(lambda: (gate.wait(10), 1 / 0), lambda _r: None, lambda _m: ran.append("failed"))
    shiboken6.delete(owner)  # (the window, and its Background with it)
    gate.set()
    assert pool.waitForDone(10000)
    qtbot.wait(50)
    assert ran == [1]
