"""The thumbnail cache is pruned (other kinds' and versions' entries, then the least recently
used past a cap), the app log is rotated at start-up only (two Mend windows share it), and the
diagnosis panel's estimate follows the step-cost history read again after a fix."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PySide6.QtGui import QColor, QImage

from engine.api import Degradation
from ui.browser import thumbs
from ui.browser.thumbs import THUMB_KIND, ThumbnailCache

from . import test_gui_thread_io as gio
from .conftest import opened

gui_disk = gio.gui_disk  # (the fixture recording the GUI thread's filesystem calls)
settle = gio.settle

ROOT = Path(__file__).resolve().parents[2]
DAY = 86400


def _key(i: int) -> str:
    return hashlib.sha1(str(i).encode()).hexdigest()


def _img(colour: str = "#808080") -> QImage:
    img = QImage(64, 48, QImage.Format.Format_RGB888)
    img.fill(QColor(colour))
    return img


def _aged(path: Path, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(path, (t, t))


def _files(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*") if p.is_file()}


# -- 1. the thumbnail cache is pruned ---------------------------------------------------------
def test_thumbnail_cache_prune_removes_other_kinds_and_versions_only(tmp_path):
    """(Once unused for OTHERS_KEPT_FOR: see test_ui_s13.) Entries were never removed: every photo ever browsed, and every entry orphaned by a
    change of THUMB_KIND (the key was bumped twice), stayed on the disk for ever. Orphans could
    not even be told apart (the kind is hashed into the key); each kind has a folder now, and
    failure markers carry their version. Temp files being written (.part) and files that are
    not the cache's are left alone."""
    base = tmp_path / "thumbs"
    cache = ThumbnailCache.for_kind(base)
    assert cache.root == base / THUMB_KIND
    cur, fail_cur = _key(1), _key(2)
    cache.put(cur, _img())
    cache.put_failure(fail_cur, "Cannot read this photo: damaged.")
    k3, k4, k5, k6 = _key(3), _key(4), _key(5), _key(6)
    flat = base / k3[:2] / f"{k3}.jpg"  # before kinds had folders
    flat_fail = base / k4[:2] / f"{k4}.fail"
    other_kind = base / "srgb" / k4[:2] / f"{k4}.jpg"
    old_fail = cache.root / k5[:2] / f"{k5}.fail"  # another version's marker
    part = f".{k6}.jpg.mend-{os.getpid()}-abcd1234.part"
    parts = [base / k6[:2] / part, cache.root / k6[:2] / part]
    foreign = [base / "notes.txt", base / k3[:2] / "readme.jpg", cache.root / "ab" / "x.jpg"]
    for f in (flat, flat_fail, other_kind, old_fail, *parts, *foreign):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 100)
    old_fail.write_text("mend-thumb-fail 0.0.1 -\nCannot read this photo.")
    for f in (flat, flat_fail, other_kind, old_fail):  # (unused for longer than they are kept)
        _aged(f, thumbs.OTHERS_KEPT_FOR / DAY + 1)
    before = _files(base)
    assert len(before) == 10

    removed, left = cache.prune()

    assert removed == 4
    assert _files(base) == before - {flat.name, flat_fail.name, other_kind.name, old_fail.name}
    assert not (base / "srgb").exists() and not flat_fail.parent.exists()  # (emptied)
    assert isinstance(cache.get(cur), QImage)
    assert cache.get(fail_cur) == "Cannot read this photo: damaged."
    assert left == sum(p.stat().st_size for p in cache.root.rglob("*")
                       if p.name in (f"{cur}.jpg", f"{fail_cur}.fail"))


def test_thumbnail_cache_cap_removes_the_least_recently_used(tmp_path):
    """Past the cap the entries used longest ago go, down to CACHE_PRUNE_TO of it. Reading an
    entry marks it used (its mtime, at most once a day: atime is often not kept)."""
    root = tmp_path / "thumbs"
    cache = ThumbnailCache(root)
    keys = [_key(i) for i in range(10)]
    for i, k in enumerate(keys):
        cache.put(k, _img(f"#{i * 20:02x}4080"))
    paths = [root / k[:2] / f"{k}.jpg" for k in keys]
    sizes = [p.stat().st_size for p in paths]
    for i, p in enumerate(paths):
        _aged(p, 30 - i)  # keys[0] the oldest
    assert isinstance(cache.get(keys[0]), QImage)  # used now: the newest
    assert paths[0].stat().st_mtime > time.time() - 60
    assert isinstance(cache.get(keys[9]), QImage)  # used 21 days ago: marked again
    recent = paths[9].stat().st_mtime
    cache.max_bytes = sum(sizes) // 2
    removed, left = cache.prune()
    kept = [i for i, p in enumerate(paths) if p.exists()]
    assert left <= cache.max_bytes * thumbs.CACHE_PRUNE_TO
    assert left == sum(sizes[i] for i in kept)
    assert removed == 10 - len(kept)
    # the oldest went first; the one just read stayed
    assert 0 in kept and 9 in kept and 1 not in kept
    assert kept == [0] + list(range(10 - len(kept) + 1, 10)), kept
    # an entry read within the day is not written again
    assert isinstance(cache.get(keys[9]), QImage)
    assert paths[9].stat().st_mtime == recent


def test_thumbnail_cache_is_pruned_again_after_writes_past_the_cap(tmp_path):
    """Once the start-up prune has measured the cache, this process's writes are counted and
    the cache is pruned again (in the writing pool thread) when they take it past the cap."""
    root = tmp_path / "thumbs"
    cache = ThumbnailCache(root)
    cache.put(_key(0), _img())
    one = next(root.rglob("*.jpg")).stat().st_size
    cache.max_bytes = one * 5
    assert cache.prune() == (0, one)
    for i in range(1, 40):
        cache.put(_key(i), _img())
        assert len(_files(root)) <= 6
    assert f"{_key(39)}.jpg" in _files(root)  # (the newest is kept)


def test_thumbnail_cache_prune_spares_an_entry_rewritten_meanwhile(tmp_path):
    """Another Mend (or thread) writes or reads an entry between the prune's scan and its
    removal: its mtime changed, it stays. One the other process removed first counts as
    removed (two pruning at once would otherwise each remove more than needed)."""
    root = tmp_path / "thumbs"
    cache = ThumbnailCache(root)
    k = _key(1)
    cache.put(k, _img())
    p = root / k[:2] / f"{k}.jpg"
    _aged(p, 10)
    seen = p.stat().st_mtime_ns
    assert cache.get(k) is not None  # (the other process read it: marked used)
    assert not thumbs._remove(str(p), seen)
    assert p.exists()
    assert thumbs._remove(str(p), p.stat().st_mtime_ns)
    assert thumbs._remove(str(p), seen)  # (gone already)


def test_two_caches_pruning_one_folder_while_it_is_written(tmp_path):
    """Two Mend processes share the cache: both prune it at start-up while thumbnails are
    written. Nothing fails, and no thumbnail written meanwhile is removed (only entries seen,
    unchanged since, go)."""
    base = tmp_path / "thumbs"
    writer = ThumbnailCache.for_kind(base)
    for i in range(300):
        writer.put(_key(i), _img())
    for f in writer.root.rglob("*.jpg"):
        _aged(f, 10)
    one = f.stat().st_size
    a, b = (ThumbnailCache.for_kind(base, max_bytes=one * 250) for _ in range(2))
    errors: list[BaseException] = []

    def run(fn):
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    new = [_key(1000 + i) for i in range(100)]
    threads = [threading.Thread(target=run, args=(c.prune,)) for c in (a, b)]
    threads.append(threading.Thread(target=run, args=(
        lambda: [writer.put(k, _img()) for k in new],)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    names = _files(base)
    assert all(f"{k}.jpg" in names for k in new)
    assert 100 <= len(names) - len(new) <= 250 * 0.8  # (the least recently used went)


def test_thumbnail_cache_prune_cost_on_a_big_cache(tmp_path):
    """Cheap enough for every start: 20,000 entries (sparse files, as many stats) scanned in
    well under a second; measured ~0.2 s for 50,000 on the dev box (2 cores)."""
    root = tmp_path / "thumbs"
    for i in range(20000):
        k = _key(i)
        p = root / k[:2] / f"{k}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            f.truncate(10000)
    cache = ThumbnailCache(root)
    t0 = time.perf_counter()
    assert cache.prune() == (0, 20000 * 10000)
    assert time.perf_counter() - t0 < 2.0


def test_the_window_prunes_the_cache_at_start_up_off_the_gui_thread(qtbot, tmp_path, gui_disk):
    from ui.engine_client import EngineClient
    from ui.main_window import MainWindow
    from ui.settings import AppSettings, cache_dir

    root = cache_dir() / "thumbs"
    stale = root / "ab" / ("ab" + "0" * 38 + ".jpg")  # (an earlier version's)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\xff\xd8 an earlier kind's thumbnail")
    _aged(stale, thumbs.OTHERS_KEPT_FOR / DAY + 1)  # (and unused since: see test_ui_s13)
    client = EngineClient(journal=tmp_path / "ui-data" / "queue.json")
    with gui_disk:
        win = MainWindow(client, AppSettings(backend="builtin", profile="builtin"),
                         ask_resume=False)
        qtbot.addWidget(win)
    try:
        # (the file goes first, its emptied folder a moment later in the same pass)
        qtbot.waitUntil(lambda: not stale.parent.exists(), timeout=10000)
        assert not stale.exists()
        assert gui_disk.under(root) == []
    finally:
        win.close()
        client.shutdown()


# -- 2. the log is rotated at start-up, never by a running process ---------------------------
_LOG_CODE = """
import json, logging, logging.handlers, os, sys
from ui import app
if sys.argv[2] == "locked":  # as on Windows while another Mend holds the file
    def rotate(self, source, dest):
        raise PermissionError(13, "The process cannot access the file because it is being "
                                  "used by another process", source, 32)
    logging.handlers.RotatingFileHandler.rotate = rotate
path = app.setup_logging()
print(path)
print(json.dumps(sorted(os.listdir(path.parent))))
log = logging.getLogger("mend.test")
for i in range(int(sys.argv[1])):
    log.info("record %06d %s", i, "x" * 200)
for h in logging.getLogger("mend").handlers:
    h.flush()
"""


def _run_logging(tmp_path: Path, records: int, mode: str) -> tuple[Path, list[str], str]:
    env = dict(os.environ, MEND_UI_DATA_DIR=str(tmp_path / "data"))
    r = subprocess.run([sys.executable, "-c", _LOG_CODE, str(records), mode], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    path, listing = r.stdout.strip().splitlines()[:2]
    return Path(path), json.loads(listing), r.stderr


def _big_log(tmp_path: Path) -> Path:
    from ui import app

    log = tmp_path / "data" / "logs" / "mend.log"
    log.parent.mkdir(parents=True)
    limit = getattr(app, "LOG_MAX_BYTES", 2 << 20)
    log.write_bytes(b"an earlier session's line\n" * (limit // 26 + 10))
    return log


def test_the_log_is_rotated_once_at_start_up_not_while_running(tmp_path):
    """A running process renaming the shared log failed on Windows (the other window's handle,
    WinError 32) and every record after the limit was lost. The log is rotated before the
    first record when it is over the limit, and never by the handler after that."""
    log = _big_log(tmp_path)
    old = log.stat().st_size
    # ~2.4 MB of records: past the limit while running
    path, listing, err = _run_logging(tmp_path, 11000, "ok")
    assert path == log
    assert listing == ["mend.log", "mend.log.1"]  # rotated at start-up, before any record
    assert (log.parent / "mend.log.1").stat().st_size == old
    assert sorted(os.listdir(log.parent)) == ["mend.log", "mend.log.1"]  # and not again
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 11000 and "record 000000" in lines[0] and "record 010999" in lines[-1]
    assert "Logging error" not in err
    # that one, over the limit now, is rotated at the next start; a small one is kept
    _run_logging(tmp_path, 1, "ok")
    assert sorted(os.listdir(log.parent)) == ["mend.log", "mend.log.1", "mend.log.2"]
    assert len((log.parent / "mend.log.1").read_text(encoding="utf-8").splitlines()) == 11000
    _run_logging(tmp_path, 1, "ok")
    assert sorted(os.listdir(log.parent)) == ["mend.log", "mend.log.1", "mend.log.2"]
    assert len(log.read_text(encoding="utf-8").splitlines()) == 2


def test_a_failed_start_up_rotation_does_not_stop_logging(tmp_path):
    """Another Mend has the log open (Windows): the rotation fails; this one appends to the
    same file (and says why it was not rotated) instead of losing its records."""
    log = _big_log(tmp_path)
    old = log.read_bytes()
    _path, listing, err = _run_logging(tmp_path, 3000, "locked")
    assert listing == ["mend.log"]
    data = log.read_bytes()
    assert data.startswith(old)
    lines = data[len(old):].decode("utf-8").splitlines()
    assert "was not rotated" in lines[0] and "WinError 32" not in err
    assert len(lines) == 3001 and "record 002999" in lines[-1]
    assert "Logging error" not in err


# -- 3. the estimate follows the history read again after a fix ------------------------------
def test_the_estimate_shown_follows_the_history_read_after_a_fix(qtbot, window, folder,
                                                                 tmp_path, monkeypatch):
    """The history is read again (in the engine thread) after every fix; the panel's estimate
    line was only asked again when a plan was next shown, so the photo on screen while another
    was fixed kept its reference-CPU guess. It is asked again as the new history arrives."""
    monkeypatch.setenv("MEND_COST_HISTORY", str(tmp_path / "costs" / "step_costs.json"))
    win = window
    opened(qtbot, win, folder)
    a, b = folder / "a_noisy.jpg", folder / "b_clean.png"
    win.diagnose_all()
    settle(qtbot, win)
    win.select_path(b)
    win.panel.set_override(Degradation.A)  # builtin A: denoise (sharpening listed, off)
    qtbot.waitUntil(lambda: win.panel.plan is not None and win.panel.plan.label is Degradation.A
                    and len(win.panel.plan.steps) >= 1, timeout=20000)
    plan = win.panel.plan
    qtbot.waitUntil(lambda: "reference CPU" in win.panel.estimate_label.text(), timeout=10000)
    shown = win.panel.estimate_label.text()
    with qtbot.waitSignal(win.fixed, timeout=90000):
        win.fix(a, plan=plan)  # (the same steps: their times are what b's estimate uses)
    settle(qtbot, win)
    assert win.current == b and win.panel.plan is plan
    est = win.client.estimate(plan, win._state(b).size)
    assert est.basis == "measured"
    qtbot.waitUntil(lambda: win.panel.estimate_label.text() == f"Estimate: {est.describe()}",
                    timeout=5000)
    assert win.panel.estimate_label.text() != shown


@pytest.fixture
def panel(qtbot):
    from ui.panels.diagnosis import DiagnosisPanel

    p = DiagnosisPanel()
    qtbot.addWidget(p)
    return p


def test_the_panel_asks_its_estimator_again_on_refresh(panel):
    from engine.api import Plan, Step

    answers = iter(["~5 s", "~2 s"])
    panel.set_plan(Plan(Degradation.A, "builtin", (Step("denoise", {}),)))
    panel.set_estimator(lambda plan: next(answers))
    assert panel.estimate_label.text() == "Estimate: ~5 s"
    panel.refresh_estimate()
    assert panel.estimate_label.text() == "Estimate: ~2 s"
