"""Crash safety of the app's own state: the crash journal (corrupt, another version's, two Mends
at once, a real kill -9), sidecars (wrong shapes, a newer version's fields, two stores of one
folder, a full disk), settings written by another version and the thumbnail cache's failure
markers. Through the real MainWindow where the flow matters."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from PySide6.QtWidgets import QMessageBox

from engine.api import Degradation, Diagnosis, JobRequest, OutputOptions, Plan, Step
from ui.engine_client import EngineClient, read_journal, request_to_json
from ui.main_window import MainWindow
from ui.settings import AppSettings, data_dir
from ui.sidecar import Sidecar, SidecarStore

from .conftest import opened

ROOT = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path) -> AppSettings:
    return AppSettings(backend="builtin", profile="builtin", out_dir=str(tmp_path / "out"))


@pytest.fixture
def asked(monkeypatch) -> list[str]:
    """The texts of the questions / notices shown; every question is answered Yes. (Not a
    first run: no models dialog.)"""
    from ui.settings import qsettings

    qs = qsettings()
    qs.setValue("firstRunDone", True)
    qs.sync()
    texts: list[str] = []

    def question(parent, title, text, *a, **kw):
        texts.append(text)
        return QMessageBox.StandardButton.Yes

    def information(parent, title, text, *a, **kw):
        texts.append(text)
        return QMessageBox.StandardButton.Ok

    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    monkeypatch.setattr(QMessageBox, "information", staticmethod(information))
    return texts


class _BlockingEngine:
    """Runs nothing: a job waits until it is cancelled (an unfinished job stays unfinished),
    which it sees within ``check_every`` seconds."""

    device = None
    check_every = 0.02

    def run(self, request, progress):
        while True:
            if progress is not None:
                progress.token.check()
            time.sleep(self.check_every)


def _window(qtbot, tmp_path, client: EngineClient, ask_resume: bool = True) -> MainWindow:
    win = MainWindow(client, _settings(tmp_path), ask_resume=ask_resume)
    qtbot.addWidget(win)
    return win


def _close(qtbot, win: MainWindow, client: EngineClient) -> None:
    client.cancel_all()
    qtbot.waitUntil(client.is_idle, timeout=20000)
    win.close()
    client.shutdown()


# -- the crash journal -------------------------------------------------------------------
@pytest.mark.parametrize("text", ['{"version": 1, "jobs": [{"path": "/x/a.jpg", "outp',
                                  "[]", "null", '{"jobs": 5}', "\0\0\0\0"],
                         ids=["truncated", "list", "null", "jobs-number", "zeros"])
def test_a_corrupt_journal_is_kept_aside_with_a_message_and_the_app_starts(
        qtbot, tmp_path, asked, text):
    """A journal cut short by a crash of the disk, or not a journal at all: the window starts,
    the status bar says the unfinished jobs could not be read, and the file is kept (renamed,
    so that the next start does not trip over it again). Before: `[]`, `null` and a list of
    strings raised in the pool (nothing said), a truncated one was dropped in silence."""
    journal = data_dir() / "queue.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(text)
    client = EngineClient(lambda: _BlockingEngine(), journal=tmp_path / "own" / "queue.json")
    win = _window(qtbot, tmp_path, client)
    try:
        qtbot.waitUntil(lambda: "could not be read" in win.status_label.text(), timeout=10000)
        assert asked == []
        kept = data_dir() / "queue.unreadable"
        assert kept.read_text() == text and not journal.exists()
        assert str(kept) in win.status_label.text()
    finally:
        _close(qtbot, win, client)


def test_a_journal_entry_another_version_wrote_does_not_drop_the_others(
        qtbot, tmp_path, folder, asked):
    """One entry this version cannot read (a class it does not know) used to drop the whole
    journal: the other unfinished jobs were never offered. Now they are, and the question says
    how many could not be read."""
    a = folder / "a_noisy.jpg"
    good = request_to_json(JobRequest(path=a, output=OutputOptions(out_dir=tmp_path / "out")))
    newer = dict(good, label="E")  # a class of a later version
    journal = data_dir() / "queue.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(json.dumps({"version": 2, "jobs": [newer, good]}))
    client = EngineClient(lambda: _BlockingEngine(), journal=tmp_path / "own" / "queue.json")
    win = _window(qtbot, tmp_path, client)
    try:
        qtbot.waitUntil(lambda: bool(asked), timeout=10000)
        assert "2 unfinished job(s)" in asked[0] and "1 could not be read" in asked[0]
        assert list(win._job_path.values()) == [a]
    finally:
        _close(qtbot, win, client)


def test_the_question_says_which_photos_are_gone(qtbot, tmp_path, folder, asked):
    """A journal naming only photos that were moved or deleted: said so (by name), nothing
    queued, no question to answer in vain; the journal is then let go."""
    out = OutputOptions(out_dir=tmp_path / "out")
    journal = data_dir() / "queue.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(json.dumps({"version": 1, "jobs": [
        request_to_json(JobRequest(path=tmp_path / "moved" / "IMG_1.jpg", output=out))]}))
    client = EngineClient(lambda: _BlockingEngine(), journal=tmp_path / "own" / "queue.json")
    win = _window(qtbot, tmp_path, client)
    try:
        qtbot.waitUntil(lambda: bool(asked), timeout=10000)
        assert "1 unfinished job(s)" in asked[0] and "IMG_1.jpg" in asked[0]
        assert "moved or deleted" in asked[0]
        assert win._job_path == {}
        qtbot.waitUntil(lambda: not journal.exists(), timeout=5000)
    finally:
        _close(qtbot, win, client)


_CHILD = textwrap.dedent("""
    import os, sys, time
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from pathlib import Path
    from PySide6.QtWidgets import QApplication
    app = QApplication([])
    import ui.engine_client as ec

    class Blocking:
        device = None
        def run(self, request, progress):
            while progress is not None:  # (the warm-up's tiny job: progress None)
                time.sleep(0.05)

    ec._default_factory = lambda device="auto", tile_size=512: (lambda: Blocking())
    ec.import_engine_modules = lambda: 0.0
    from engine.api import JobRequest, OutputOptions, Plan, Step, Degradation
    from ui.main_window import MainWindow
    from ui.settings import AppSettings
    photo, mask, out = (Path(a) for a in sys.argv[1:4])
    win = MainWindow(None, AppSettings(profile="builtin", backend="builtin"), ask_resume=False)
    plan = Plan(Degradation.B, "builtin", (Step("inpaint_classical", {"radius": 7}),))
    win.client.submit(JobRequest(path=photo, output=OutputOptions(out_dir=out), plan=plan,
                                 label=Degradation.B, profile="builtin", mask_path=mask))
    journal = win.client._journal  # (whatever this version calls it)
    deadline = time.monotonic() + 60
    while not (journal.exists() and journal.read_text().count('"path"')) \\
            and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.02)
    print("READY", journal, flush=True)
    while True:
        app.processEvents()
        time.sleep(0.05)
""")


def test_a_second_mend_leaves_a_running_ones_jobs_alone_and_offers_them_after_kill_9(
        qtbot, tmp_path, folder, asked):
    """Two Mends on one user data folder used to share one journal: the second offered the
    first one's running jobs again (run twice) and wrote over them (lost if the first then
    crashed), and its normal quit deleted them. Each now keeps its own journal, locked while it
    runs: a running Mend's jobs are not offered; once it is killed (-9, a real process) they
    are, with their edited plan and mask, and its journal goes once they are in this one's."""
    photo = folder / "a_noisy.jpg"
    mask = tmp_path / "masks" / "a_noisy.jpg.mask.png"
    mask.parent.mkdir()
    mask.write_bytes(b"\x89PNG\r\n\x1a\n")  # (only its path travels)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(photo), str(mask),
                             str(tmp_path / "out")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    client = win = None
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), line
        theirs = Path(line.split(" ", 1)[1].strip())
        expected = read_journal(theirs)
        assert len(expected) == 1 and expected[0].plan is not None

        client = EngineClient(lambda: _BlockingEngine(),
                              journal=tmp_path / "ui-data" / "mine.json")
        win = _window(qtbot, tmp_path, client)
        qtbot.wait(300)
        qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
        assert asked == []  # the other Mend is running: its jobs are its own
        assert read_journal(theirs) == expected

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        win._offer_resume()  # (as at the next start)
        qtbot.waitUntil(lambda: bool(asked), timeout=10000)
        assert "1 unfinished job(s)" in asked[0]
        (jid,) = win._job_path
        assert client._jobs[jid].payload == expected[0]  # its plan and mask came back
        qtbot.waitUntil(lambda: not theirs.exists(), timeout=10000)
        assert read_journal(client.journal_path) == expected
    finally:
        if win is not None:
            _close(qtbot, win, client)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()


# -- sidecars ----------------------------------------------------------------------------
def test_one_wrong_sidecar_does_not_stop_the_others_from_coming_back(qtbot, window, folder):
    """A sidecar that is JSON but not a sidecar (`null`, a list, a mask that is a number) raised
    AttributeError / TypeError in the pool, and none of the folder's photos came back."""
    store = SidecarStore(folder, data_dir())
    diag = Diagnosis(Degradation.A, {"A": 0.7, "B": 0.1, "C": 0.1, "D": 0.1})
    store.update(folder / "a_noisy.jpg", diagnosis=diag)
    store.update(folder / "c_smooth.jpg", diagnosis=diag)
    (folder / ".mend" / "b_clean.png.json").write_text('{"mask": 5, "source": 3}')
    opened(qtbot, window, folder)
    qtbot.waitUntil(lambda: "Restored 3 photo(s)" in window.status_label.text(), timeout=10000)
    assert window.states[folder / "a_noisy.jpg"].diagnosis == diag
    assert window.states[folder / "c_smooth.jpg"].diagnosis == diag
    (folder / ".mend" / "b_clean.png.json").write_text("null")
    assert store.load(folder / "b_clean.png") is None
    qtbot.waitUntil(lambda: window.bg.pending() == 0 and window.folder_bg.pending() == 0,
                    timeout=10000)


def test_a_newer_versions_sidecar_keeps_what_this_version_cannot_read(tmp_path):
    """A sidecar written by a newer Mend (fields this one does not know, a diagnosis of a class
    it does not know): reading it keeps the rest (outputs, mask), and writing it back keeps
    those fields as they were until this version records its own."""
    photos = tmp_path / "ph"
    photos.mkdir()
    photo = photos / "a.jpg"
    photo.write_bytes(b"x")
    store = SidecarStore(photos, tmp_path / "data")
    newer_diag = {"label": "E", "scores": {"E": 1.0}}
    (photos / ".mend").mkdir()
    (photos / ".mend" / "a.jpg.json").write_text(json.dumps({
        "version": 3, "diagnosis": newer_diag, "outputs": [str(tmp_path / "a_mend.jpg")],
        "mask": str(photos / ".mend" / "a.jpg.mask.png"), "albums": ["summer"], "rating": 4}))
    sc = store.load(photo)
    assert sc is not None and sc.outputs == [str(tmp_path / "a_mend.jpg")]
    assert sc.mask == str(photos / ".mend" / "a.jpg.mask.png") and sc.diagnosis is None
    store.update(photo, override="A")
    d = json.loads((photos / ".mend" / "a.jpg.json").read_text())
    assert d["albums"] == ["summer"] and d["rating"] == 4 and d["diagnosis"] == newer_diag
    assert d["override"] == "A" and d["outputs"] == [str(tmp_path / "a_mend.jpg")]
    diag = Diagnosis(Degradation.A, {"A": 0.7, "B": 0.1, "C": 0.1, "D": 0.1})
    store.update(photo, diagnosis=diag)  # this version's own diagnosis replaces it
    assert Sidecar.from_json(json.loads(
        (photos / ".mend" / "a.jpg.json").read_text())).diagnosis == diag


def test_two_stores_of_one_folder_lose_no_update(tmp_path, monkeypatch):
    """The folder opened again (or a second window) while a save of the first store was still
    queued: two stores of one folder, each with its own lock, lost each other's updates (read,
    modify, write side by side)."""
    from engine import imageio

    photos = tmp_path / "ph"
    photos.mkdir()
    photo = photos / "a.jpg"
    photo.write_bytes(b"x")
    write = imageio.atomic_write_bytes

    def slow_write(*a, **kw):  # (widens the window between the read and the write)
        time.sleep(0.005)
        return write(*a, **kw)

    monkeypatch.setattr(imageio, "atomic_write_bytes", slow_write)
    stores = [SidecarStore(photos, tmp_path / "data") for _ in range(2)]

    def add(store: SidecarStore, k: int) -> None:
        for i in range(15):
            store.update(photo, add_outputs=[f"out-{k}-{i}.jpg"])

    threads = [threading.Thread(target=add, args=(s, k)) for k, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stores[0].load(photo).outputs) == 30


def test_a_full_disk_while_saving_a_sidecar_says_so_and_loses_nothing(
        qtbot, window, folder, monkeypatch):
    """ENOSPC while a diagnosis is recorded: the status bar says the sidecar could not be
    saved, the window keeps the diagnosis, the old sidecar stays whole, and the next save
    (space freed) records it."""
    from engine import imageio

    a = folder / "a_noisy.jpg"
    store = SidecarStore(folder, data_dir())
    store.update(a, override="C")
    before = (folder / ".mend" / "a_noisy.jpg.json").read_bytes()
    write = imageio.atomic_write_bytes

    def full(dest, data, **kw):
        if ".mend" in Path(dest).parts:
            raise imageio._save_error(Path(dest), OSError(errno.ENOSPC, "No space left on device"))
        return write(dest, data, **kw)

    monkeypatch.setattr(imageio, "atomic_write_bytes", full)
    opened(qtbot, window, folder)
    window.diagnose([a])
    qtbot.waitUntil(lambda: "Could not save the sidecar" in window.status_label.text(),
                    timeout=60000)
    assert "space" in window.status_label.text().lower()
    assert window.states[a].diagnosis is not None
    assert (folder / ".mend" / "a_noisy.jpg.json").read_bytes() == before
    monkeypatch.setattr(imageio, "atomic_write_bytes", write)
    window._save_sidecar(a, diagnosis=window.states[a].diagnosis)
    qtbot.waitUntil(lambda: store.load(a).diagnosis is not None, timeout=10000)
    assert store.load(a).override == "C"


# -- settings ----------------------------------------------------------------------------
def test_settings_another_version_wrote_fall_back_and_the_window_starts(qtbot, tmp_path):
    """Names an older (or newer) Mend wrote, or a hand edit: an unknown device made the engine
    refuse every job, an unknown profile or backend failed every fix, a quality of 500 or a
    suffix with a separator reached the save. They fall back to what the dialog offers."""
    from ui.settings import load_settings, qsettings

    qs = qsettings()
    for k, v in {"device": "tpu", "precision": "fp8", "profile": "fast", "backend": "gpt",
                 "format": "gif", "bit_depth": "12", "quality": "500", "threads": "-3",
                 "tile_size": "abc", "suffix": "../up", "keep_metadata": "maybe",
                 "out_dir": str(tmp_path / "o")}.items():
        qs.setValue(f"settings/{k}", v)
    qs.setValue("window/geometry", "not bytes")
    qs.setValue("recent/folders", 5)
    qs.sync()
    s = load_settings()
    d = AppSettings()
    assert (s.device, s.precision, s.profile, s.backend, s.format, s.bit_depth) == (
        d.device, d.precision, d.profile, d.backend, d.format, d.bit_depth)
    assert s.quality == 100 and s.threads == 0 and s.tile_size == d.tile_size
    assert "/" not in s.suffix and s.out_dir == str(tmp_path / "o")
    client = EngineClient(lambda: _BlockingEngine(), journal=tmp_path / "own.json")
    win = MainWindow(client, None, ask_resume=False)
    qtbot.addWidget(win)
    try:
        assert win.settings.profile == "auto"
    finally:
        _close(qtbot, win, client)


# -- thumbnail cache ---------------------------------------------------------------------
def test_a_thumbnail_failure_cached_by_another_version_is_tried_again(tmp_path):
    """A failure marker is cached for as long as the file is unchanged: one written by another
    version (or before pillow-heif / rawpy was installed) kept a photo shown as unreadable for
    ever. Markers carry the version and decoders now; another's is not trusted."""
    from ui.browser.thumbs import ThumbnailCache

    cache = ThumbnailCache(tmp_path / "thumbs")
    key = "ab" + "0" * 38
    old = tmp_path / "thumbs" / "ab" / f"{key}.fail"
    old.parent.mkdir(parents=True)
    old.write_text("Cannot read this photo: unsupported format.")  # an earlier version's
    assert cache.get(key) is None
    cache.put_failure(key, "Cannot read this photo: damaged.")
    assert cache.get(key) == "Cannot read this photo: damaged."
    old.write_text("mend-thumb-fail 0.0.1 -\nCannot read this photo: unsupported format.")
    assert cache.get(key) is None
    old.write_bytes(b"\xff\xfe\0garbage")  # a damaged marker: decoded again
    assert cache.get(key) is None


def test_journal_round_trip_keeps_plan_mask_and_diagnosis(tmp_path):
    """(Checked sound.) A job with an edited plan, a mask and its diagnosis comes back whole."""
    from ui.engine_client import request_from_json

    diag = Diagnosis(Degradation.B, {"A": 0.1, "B": 0.7, "C": 0.1, "D": 0.1}, ("glare",),
                     {"glare": 0.2}, "bright", "builtin")
    req = JobRequest(path=tmp_path / "a.jpg",
                     output=OutputOptions(out_dir=tmp_path / "o", format="png", quality=80,
                                          bit_depth=16, keep_metadata=False, suffix="_x"),
                     label=Degradation.B, plan=Plan(Degradation.B, "builtin",
                                                    (Step("inpaint_classical", {"r": 3}),)),
                     profile="builtin", mask_path=tmp_path / "m.png", diagnosis=diag,
                     guard=False)
    assert request_from_json(json.loads(json.dumps(request_to_json(req)))) == req
