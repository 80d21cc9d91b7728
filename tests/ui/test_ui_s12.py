"""Defects left open by the last audit: the GUI thread reading the step-cost history and the
app icon, a cancelled "Plan" job that Retry could not bring back, a crash journal that cannot
be written (said once), two processes updating one sidecar (no update lost), and previews and
thumbnails of wide-gamut photos shown as if they were sRGB."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms
from PySide6.QtCore import QThreadPool
from PySide6.QtGui import QImage

from engine.api import Degradation
from tests.engine.test_colour import ADOBE, P3, PROPHOTO, _exif, _png_chunk, _png_with
from ui.imaging import qimage_to_rgb

from . import test_gui_thread_io as gio
from .conftest import opened

gui_disk = gio.gui_disk  # (the fixture recording the GUI thread's filesystem calls)
settle = gio.settle

REPO = Path(__file__).resolve().parents[2]


# -- 1. the GUI thread reads no disk: the step-cost history, the app icon --------------------
def test_estimates_read_the_cost_history_off_the_gui_thread(qtbot, window, folder, tmp_path,
                                                            gui_disk, monkeypatch):
    """The plan's estimate is asked on the GUI thread (every plan shown or edited, every
    progress update of a queue): the history it uses is read in the engine thread, once when the
    engine starts and again after every fix (which records its steps' times there)."""
    hist = tmp_path / "costs" / "step_costs.json"
    monkeypatch.setenv("MEND_COST_HISTORY", str(hist))
    win = window
    opened(qtbot, win, folder)
    a = folder / "b_clean.png"
    with gui_disk:
        win.select_path(a)
        with qtbot.waitSignal(win.diagnosed, timeout=90000):
            win._diagnose_current()  # (starts the engine)
        settle(qtbot, win)
        st = win.states[a]
        plan = st.plan
        assert plan is not None and st.size is not None
        before = win.client.estimate(plan, st.size)
        assert before is not None
        assert win.panel.estimate_label.text().startswith("Estimate:")
        with qtbot.waitSignal(win.fixed, timeout=90000):
            win.fix(a, plan=plan)
        settle(qtbot, win)
        # the times the fix recorded reach the estimate (read again in the engine thread)
        qtbot.waitUntil(lambda: any(s.basis == "measured" for s in
                                    win.client.estimate(plan, st.size).steps), timeout=10000)
        win._show_state(a)  # the panel asks again
    assert not any(s.basis == "measured" for s in before.steps)
    found = gui_disk.under(hist.parent)
    assert found == [], "\n".join(map(str, found))


def test_the_starting_splash_reads_no_disk(qapp, gui_disk):
    """The app icon is read once, by create_app (before the event loop), not checked again on
    the GUI thread: the splash draws the icon the application has."""
    from engine.resources import RESOURCES
    from ui import app as ui_app

    ui_app.load_app_icon(qapp)  # (what create_app does)
    assert not qapp.windowIcon().isNull()
    with gui_disk:
        splash = ui_app.starting_splash("Starting Mend… loading the engine")
    try:
        found = gui_disk.under(RESOURCES)
        assert found == [], found
        # the icon is drawn (left of the text): not the bare background
        img = splash.pixmap().toImage()
        left = qimage_to_rgb(img.copy(24, 34, 72, 72))
        assert float(np.abs(left.astype(int) - (0x1e, 0x20, 0x24)).max()) > 40
    finally:
        splash.close()
        splash.deleteLater()


def _diagnosed_a(qtbot, win, folder):
    """The folder open, a_noisy.jpg diagnosed and current: (a, c_smooth.jpg, a's state)."""
    opened(qtbot, win, folder)
    a, c = folder / "a_noisy.jpg", folder / "c_smooth.jpg"
    win.select_path(a)
    with qtbot.waitSignal(win.diagnosed, timeout=90000):
        win._diagnose_current()
    settle(qtbot, win)
    return a, c, win.states[a]


# -- 2. a cancelled "Plan" job is retried from the queue panel ------------------------------
def test_a_cancelled_plan_job_is_retried_from_the_queue_panel(qtbot, window, folder):
    win = window
    _a, c, st = _diagnosed_a(qtbot, win, folder)
    win.fix(c)  # the engine is busy: the plan job waits behind it
    win._override(Degradation.C)  # "Fix as C": the plan is made again, in the engine thread
    jid = st.plan_job
    assert jid is not None and st.plan is None
    win.client.cancel(jid)
    assert st.plan_job is None and st.plan is None and "Cancelled" in st.plan_note
    panel = win.queue
    panel.refresh()
    panel.list.clearSelection()
    panel._items[jid].setSelected(True)
    panel.retry.click()  # Retry in the queue panel
    settle(qtbot, win)
    assert st.plan is not None and st.plan.label is Degradation.C
    assert st.plan_job is None and st.plan_note == ""
    assert win.panel.plan == st.plan  # (the photo is the current one: its plan is shown)
    sidecar = folder / ".mend" / "a_noisy.jpg.json"
    qtbot.waitUntil(lambda: json.loads(sidecar.read_text()).get("plan") is not None,
                    timeout=10000)
    assert json.loads(sidecar.read_text())["plan"]["label"] == "C"


def test_a_plan_job_retried_after_another_choice_does_not_replace_its_plan(qtbot, window,
                                                                          folder):
    """Cancelled, then another class chosen (its plan made), then the first job retried: the
    photo keeps the plan of the class chosen last."""
    win = window
    _a, c, st = _diagnosed_a(qtbot, win, folder)
    win.fix(c)
    win._override(Degradation.C)
    first = st.plan_job
    win.client.cancel(first)
    win._override(Degradation.A)
    settle(qtbot, win)
    assert st.plan is not None and st.plan.label is Degradation.A
    assert win.client.retry(first) is not None
    settle(qtbot, win)
    assert st.plan.label is Degradation.A and st.override is Degradation.A


# -- 3. a crash journal that cannot be written is said once ----------------------------------
def test_a_crash_journal_that_cannot_be_written_is_said_once(qtbot, folder, tmp_path,
                                                             monkeypatch):
    from ui.engine_client import EngineClient
    from ui.main_window import MainWindow
    from ui.settings import AppSettings

    said: list[str] = []
    real = MainWindow.set_status

    def set_status(self, text: str, **about) -> None:
        said.append(text)
        real(self, text, **about)

    monkeypatch.setattr(MainWindow, "set_status", set_status)
    blocker = tmp_path / "ui-data" / "journals"  # a file where the journals' folder goes
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    client = EngineClient(journal=blocker / "queue-1.json")
    problems: list[str] = []
    client.journal_problem.connect(problems.append)
    settings = AppSettings(backend="builtin", profile="builtin", out_dir=str(tmp_path / "out"))
    win = MainWindow(client, settings, ask_resume=False)
    qtbot.addWidget(win)
    try:
        opened(qtbot, win, folder)
        gate = threading.Event()
        client.call(lambda _e, _p: gate.wait(20), "hold")  # (the fixes wait in the journal)
        try:
            for p in sorted(folder.glob("*.*")):  # three fixes: journal writes, all failing
                win.fix(p, label=Degradation.A)
                qtbot.wait(250)  # (each its own write)
            qtbot.waitUntil(lambda: bool(problems), timeout=10000)
            for jid in client.queued_ids()[1:]:  # more writes (failing)
                client.move(jid, -1)
                qtbot.wait(250)
        finally:
            gate.set()
        settle(qtbot, win)
        assert len(problems) == 1 and problems[0]
        told = [t for t in said if "crash" in t]
        assert len(told) == 1, said
        assert "Unfinished jobs will not survive a crash" in told[0]
        assert win.journal_label.isVisible() or not win.isVisible()
        assert not win.journal_label.isHidden()
        # the folder can be written again: the next write says so, the warning goes
        blocker.unlink()
        gate.clear()
        client.call(lambda _e, _p: gate.wait(20), "hold")  # (the fix stays in the journal)
        win.fix(folder / "b_clean.png", label=Degradation.A)
        try:
            qtbot.waitUntil(lambda: len(problems) == 2, timeout=10000)
        finally:
            gate.set()
        assert problems[1] == "" and win.journal_label.isHidden()
        settle(qtbot, win)
    finally:
        win.close()
        client.shutdown()
    assert len([t for t in said if "crash" in t]) == 1


# -- 4. two processes updating one sidecar -----------------------------------------------------
_HAMMER = """
import sys, time
from pathlib import Path
from ui.sidecar import SidecarStore
folder, data, tag, n, go = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), \\
    Path(sys.argv[5])
store = SidecarStore(folder, data)
photo = folder / "a.jpg"
while not go.exists():
    time.sleep(0.005)
for i in range(n):
    edit = {"override": "C"} if tag == "A" and i == 0 else {}
    if tag == "B" and i == 0:
        edit = {"warnings": ["from B"]}
    store.update(photo, add_outputs=[f"{tag}-{i}"], **edit)
"""


def test_two_processes_updating_one_sidecar_lose_no_update(tmp_path):
    from ui.sidecar import SidecarStore

    folder = tmp_path / "shoot"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8 not decoded here")
    go, n = tmp_path / "go", 150
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _HAMMER, str(folder), str(tmp_path / "data"),
                               tag, str(n), str(go)], cwd=REPO, env=env,
                              stderr=subprocess.PIPE)
             for tag in ("A", "B")]
    time.sleep(1.0)  # (both imported and waiting)
    go.touch()
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode(errors="replace")
    sc = SidecarStore(folder, tmp_path / "data").load(folder / "a.jpg")
    assert sc is not None
    want = {f"{t}-{i}" for t in "AB" for i in range(n)}
    lost = want - set(sc.outputs)
    assert not lost, f"{len(lost)} of {2 * n} updates lost"
    assert len(sc.outputs) == 2 * n
    assert sc.override == "C" and sc.warnings == ["from B"]  # each one's own edit stays


def test_a_sidecar_lock_held_too_long_does_not_stop_the_update(tmp_path, monkeypatch, caplog):
    """A lock another process keeps (hung, or a file system where it never goes) costs the
    update its exclusion after SIDECAR_LOCK_WAIT, never the update."""
    from engine.estimate import try_file_lock
    from ui import sidecar as sc_mod

    folder = tmp_path / "shoot"
    folder.mkdir()
    store = sc_mod.SidecarStore(folder, tmp_path / "data")
    store.update(folder / "a.jpg", add_outputs=["first"])
    lock = sc_mod.lock_path(store.root)
    assert lock.parent == store.root
    monkeypatch.setattr(sc_mod, "SIDECAR_LOCK_WAIT", 0.3)
    with open(lock, "a+b") as held:
        assert try_file_lock(held) is True  # (a second open file: as another process)
        t = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="mend.estimate"):
            store.update(folder / "a.jpg", add_outputs=["second"])
        took = time.monotonic() - t
    assert 0.25 <= took < 3.0
    assert store.load(folder / "a.jpg").outputs == ["first", "second"]
    assert any("locked" in r.getMessage() for r in caplog.records)


# -- 5. previews and thumbnails of wide-gamut photos, in sRGB --------------------------------
_PATCHES = np.array([[230, 40, 40], [40, 200, 60], [40, 60, 220], [240, 220, 30],
                     [30, 220, 230], [220, 40, 210], [128, 128, 128], [250, 150, 60],
                     [90, 160, 110], [160, 90, 200], [20, 20, 20], [245, 245, 245]], np.uint8)
_CELL = 64


def _patch_image() -> np.ndarray:
    """4 x 3 flat patches, ``_CELL`` px each (a thumbnail's patch centres stay unmixed)."""
    rows = [np.concatenate([np.full((_CELL, _CELL, 3), c, np.uint8) for c in _PATCHES[r:r + 4]],
                           axis=1) for r in range(0, 12, 4)]
    return np.concatenate(rows, axis=0)


def _srgb(rgb: np.ndarray, icc: bytes) -> np.ndarray:
    """The reference: ``rgb`` in ``icc``'s space -> sRGB by LittleCMS (the engine's intent)."""
    t = ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                ImageCms.createProfile("sRGB"), "RGB", "RGB")
    return np.asarray(ImageCms.applyTransform(Image.fromarray(rgb, "RGB"), t))


def _lab(rgb: np.ndarray) -> np.ndarray:
    t = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"),
                                "RGB", "LAB")
    v = np.asarray(ImageCms.applyTransform(Image.fromarray(np.ascontiguousarray(rgb), "RGB"), t))
    return np.dstack([v[..., 0] * (100 / 255), v[..., 1].view(np.int8).astype(np.float32),
                      v[..., 2].view(np.int8).astype(np.float32)])


def _delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((_lab(a) - _lab(b)) ** 2).sum(-1))


def _centres(rgb: np.ndarray) -> np.ndarray:
    """The colour at the centre of each of the 12 patches of a (scaled) patch image."""
    h, w = rgb.shape[:2]
    ys = [round((r + 0.5) * h / 3) for r in range(3)]
    xs = [round((c + 0.5) * w / 4) for c in range(4)]
    return np.array([[rgb[y, x] for x in xs] for y in ys], np.uint8).reshape(1, 12, 3)


def _write(path: Path, rgb: np.ndarray, icc: bytes | None = None, **kw) -> Path:
    extra = {"icc_profile": icc} if icc else {}
    if path.suffix == ".jpg":
        extra["quality"] = 100
    Image.fromarray(rgb).save(path, **extra, **kw)
    return path


CASES = {  # name -> (file, the profile the engine gives its pixels)
    "adobe.jpg": ADOBE, "p3.png": P3, "prophoto.tif": PROPHOTO, "p3.webp": P3,
}


def _wide_gamut_photos(folder: Path) -> dict[Path, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _patch_image()
    out = {_write(folder / name, rgb, icc): icc for name, icc in CASES.items()}
    # profiles the engine assigns: EXIF "Adobe RGB" (no profile), a PNG's gAMA 1.0 (linear)
    out[_write(folder / "camera_adobe.jpg", rgb, exif=_exif(0xFFFF, b"R03"))] = None
    out[_png_with(folder / "linear.png", rgb, _png_chunk(b"gAMA", (100000).to_bytes(4, "big")))
        ] = None
    return out


def test_the_profile_read_for_display_is_the_one_the_engine_gives(tmp_path):
    from engine.imageio import load_photo, source_profile

    photos = _wide_gamut_photos(tmp_path / "wide")
    plain = _write(tmp_path / "wide" / "plain.jpg", _patch_image())
    for path, icc in photos.items():
        ph = load_photo(path)
        want = ph.icc_profile
        assert want is not None and (icc is None or want == icc), path.name
        assert source_profile(path) == (ph.linear_icc or want), path.name
    assert source_profile(plain) is None and load_photo(plain).icc_profile is None
    assert source_profile(tmp_path / "missing.jpg") is None


def _thumbnail(qtbot, path: Path, cache: Path | None) -> tuple[np.ndarray, int]:
    from ui.browser.thumbs import ThumbnailLoader

    pool = QThreadPool()
    loader = ThumbnailLoader(pool, cache)
    got: list[QImage] = []
    loader.ready.connect(lambda _g, _p, img: got.append(img))
    loader.failed.connect(lambda _g, p, msg: pytest.fail(f"{p}: {msg}"))
    st = path.stat()
    loader.request(path, st.st_mtime_ns, st.st_size)
    qtbot.waitUntil(lambda: bool(got), timeout=20000)
    pool.waitForDone(10000)
    return qimage_to_rgb(got[0]), loader.built


def test_thumbnails_and_the_viewer_show_wide_gamut_photos_in_srgb(qtbot, tmp_path):
    from engine.imageio import load_photo
    from ui.photo_io import build_view

    photos = _wide_gamut_photos(tmp_path / "wide")
    report = []
    for path in photos:
        ph = load_photo(path)
        icc = ph.icc_profile
        stored = np.round(ph.pixels * 255).astype(np.uint8)  # the values as decoded
        ref = _srgb(stored, icc)  # what a colour-managed viewer shows
        # the viewer: every pixel
        view = build_view(path, None)
        shown = qimage_to_rgb(view.before)
        e = _delta_e(shown, ref)
        e_plain = _delta_e(stored, ref)  # (shown as if sRGB: what the viewer did)
        assert float(e.max()) < 1.5, (path.name, float(e.max()))
        # the browser: the thumbnail's patch centres
        thumb, _ = _thumbnail(qtbot, path, None)
        te = _delta_e(_centres(thumb), _centres(ref))
        # (a JPEG thumbnail is decoded in draft mode: a little chroma blur at patch centres)
        assert float(te.max()) < 3.0, (path.name, float(te.max()))
        report.append(f"{path.name}: as sRGB mean dE {e_plain.mean():.1f} max "
                      f"{e_plain.max():.1f}; now viewer max {e.max():.2f}, thumbnail max "
                      f"{te.max():.2f}")
    print("\n".join(report))


def test_an_srgb_photo_is_shown_as_it_was(qtbot, tmp_path):
    """No profile, or an sRGB one: the bytes the viewer showed before, unchanged."""
    from ui.imaging import load_full

    rgb = _patch_image()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for name, icc in (("plain.png", None), ("srgb.png", srgb), ("srgb.jpg", srgb)):
        path = _write(tmp_path / name, rgb, icc)
        from engine.imageio import load_photo

        want = np.round(load_photo(path).pixels * 255).astype(np.uint8)
        assert np.array_equal(load_full(path), want), name


def test_thumbnails_cached_before_colour_management_are_not_reused(qtbot, tmp_path):
    from ui.browser.thumbs import THUMB_SIDE, ThumbnailCache

    path = next(p for p in _wide_gamut_photos(tmp_path / "wide") if p.name == "p3.png")
    cache = tmp_path / "thumbs"
    st = path.stat()
    # what an earlier version cached for it: the pixels as stored, under its key
    old_key = hashlib.sha1(f"{os.fspath(path)}\0{st.st_mtime_ns}\0{st.st_size}\0{THUMB_SIDE}"
                           .encode("utf-8", "surrogatepass")).hexdigest()
    from ui.imaging import rgb_to_qimage

    stored = np.asarray(Image.open(path).convert("RGB"))
    ThumbnailCache(cache).put(old_key, rgb_to_qimage(stored))
    assert (cache / old_key[:2] / f"{old_key}.jpg").is_file()
    thumb, built = _thumbnail(qtbot, path, cache)
    assert built == 1  # decoded again, not the old cached one
    ref = _srgb(stored, P3)
    assert float(_delta_e(_centres(thumb), _centres(ref)).max()) < 3.0
    thumb2, built2 = _thumbnail(qtbot, path, cache)  # and the new one is cached
    assert built2 == 0
    assert float(np.abs(_centres(thumb2).astype(int) - _centres(thumb)).max()) <= 3


def test_thumbnails_of_a_grey_photo_with_a_grey_profile_show_its_converted_grey(qtbot,
                                                                                 tmp_path):
    """The engine's preview ignored a grey profile (load_photo applies it): a thumbnail of a
    grey photo tagged linear showed its stored values (here 47.9 levels off on average). One
    cached as "srgb" before that was fixed is not reused."""
    from engine.imageio import _grey_icc, load_photo
    from ui.browser.thumbs import THUMB_SIDE, ThumbnailCache
    from ui.imaging import rgb_to_qimage

    y, x = np.mgrid[0:48, 0:64]
    grey = ((x * 4 + y) % 256).astype(np.uint8)
    path = tmp_path / "linear_grey.png"
    Image.fromarray(grey, "L").save(path, icc_profile=_grey_icc(1.0))
    want = np.round(load_photo(path).pixels * 255).astype(np.int16)
    assert np.abs(want[..., 0] - grey).mean() > 40  # (what the thumbnail showed)
    thumb, _ = _thumbnail(qtbot, path, None)
    assert np.abs(thumb.astype(np.int16) - want).max() <= 1
    cache = tmp_path / "thumbs"
    st = path.stat()
    old_key = hashlib.sha1(f"{os.fspath(path)}\0{st.st_mtime_ns}\0{st.st_size}\0{THUMB_SIDE}"
                           "\0srgb".encode("utf-8", "surrogatepass")).hexdigest()
    ThumbnailCache(cache).put(old_key, rgb_to_qimage(np.repeat(grey[..., None], 3, axis=2)))
    thumb, built = _thumbnail(qtbot, path, cache)
    assert built == 1 and np.abs(thumb.astype(np.int16) - want).max() <= 1
