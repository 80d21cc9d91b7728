"""The engine client and the model dialog under trouble: an unwritable journal, Stop with two
tasks of one model, a dialog reopened during a download, an engine thread that outlives
shutdown(), a diagnosis cancelled between stages, Retry clicked twice, and the overall ETA of
a queue that mixes diagnoses and runs."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.api import Degradation, Diagnosis, JobRequest, JobResult, Plan, Step
from engine.errors import BadImage, Cancelled, SaveFailed
from ui.dialogs.models import ModelManagerDialog
from ui.engine_client import EngineClient, JobKind, JobState

ROOT = Path(__file__).resolve().parents[2]


class Eng:
    """Fast diagnoses, runs of ``run_seconds``; paths named bad* fail."""

    device = None

    def __init__(self, run_seconds: float = 0.05) -> None:
        self.run_seconds = run_seconds
        self.runs: list[Path] = []
        self.fail = True

    def diagnose(self, path, backend="auto"):
        return Diagnosis(Degradation.A, {"A": 0.7, "B": 0.1, "C": 0.1, "D": 0.1})

    def plan(self, diagnosis, label=None, profile="auto"):
        return Plan(Degradation.A, "builtin", (Step("denoise_builtin"),))

    def run(self, request, progress):
        for i in range(5):
            time.sleep(self.run_seconds / 5)
            progress.update((i + 1) / 5, "tile")
        if self.fail and Path(request.path).name.startswith("bad"):
            raise BadImage(request.path, "truncated")
        self.runs.append(Path(request.path))
        d = self.diagnose(request.path)
        return JobResult(Path(request.path), None, d.label, d, self.plan(d))


@pytest.fixture
def client(qtbot):
    eng = Eng()
    c = EngineClient(lambda: eng)
    c.fake = eng
    yield c
    c.shutdown()


# -- 1. the crash journal on an unwritable location ---------------------------------------
def test_an_unwritable_journal_is_logged_not_raised(qtbot, tmp_path, monkeypatch):
    from engine import imageio

    def refuse(dest, data, **kw):
        raise SaveFailed(f"{dest}: read-only file system")

    monkeypatch.setattr(imageio, "atomic_write_bytes", refuse)
    c = EngineClient(lambda: Eng(run_seconds=2.0), journal=tmp_path / "queue.json")
    try:
        c.submit(JobRequest(Path("/x/a.jpg")))
        c.submit(JobRequest(Path("/x/b.jpg")))
        c.flush_journal()  # SaveFailed is an EngineError, not an OSError
        assert not (tmp_path / "queue.json").exists()
    finally:
        c.shutdown()


# -- 2. every task of a model is stopped by Stop ----------------------------------------------
def _wait_for_cancel(report, token):
    report(0.5, "half")
    end = time.monotonic() + 20
    while not token.cancelled and time.monotonic() < end:
        time.sleep(0.01)
    token.check()
    return "not cancelled"


def test_stop_cancels_every_task_of_a_model(qtbot, client):
    failed, done = [], []
    client.model_failed.connect(lambda m, e: failed.append((m, e)))
    client.model_finished.connect(lambda m, r: done.append((m, r)))
    started = threading.Event()

    def first(report, token):
        started.set()
        return _wait_for_cancel(report, token)

    client.model_task("m", first, download=True)
    client.model_task("m", _wait_for_cancel)  # a second task (Verify) queued behind it
    assert started.wait(10)
    client.cancel_model_task("m")
    qtbot.waitUntil(lambda: len(failed) == 2, timeout=10000)
    assert [m for m, _ in failed] == ["m", "m"] and not done
    assert all("ancel" in e for _, e in failed)
    assert client._model_tokens == {}  # each task dropped its token when it ended
    assert client.model_downloads() == {}


def test_a_finished_task_does_not_keep_its_token(qtbot, client):
    with qtbot.waitSignal(client.model_finished, timeout=5000):
        client.model_task("m", lambda report, token: "ok")
    assert client._model_tokens == {}


def test_a_task_outliving_its_signals_object_does_not_crash_the_pool_thread(qtbot):
    import shiboken6

    from ui.engine_client import _emit, _ModelSignals

    sig = _ModelSignals()
    got = []
    sig.progress.connect(lambda m, f, msg: got.append(m))
    assert _emit(sig, "progress", "m", 0.5, "")
    shiboken6.delete(sig)
    assert _emit(sig, "progress", "m", 0.5, "") is False
    assert _emit(sig, "done", "m", None, True) is False


class FakeStore:
    """One model; ``pull`` reports half-way, then waits for its token."""

    root = Path("/nowhere")

    def __init__(self) -> None:
        self.manifest = [SimpleNamespace(
            id="m1", name="Model one", task="sr", total_size=100, license="MIT",
            commercial_use=True, profiles=("quality",), description="", notes="",
            license_url="")]
        self.pulls = 0
        self.started = threading.Event()

    def status(self, model_id, token=None):
        return "missing"

    def pull(self, model_id, on_progress, token):
        self.pulls += 1
        self.started.set()
        on_progress(SimpleNamespace(done=50, total=100, file="m1.pth", speed=10.0))
        end = time.monotonic() + 20
        while not token.cancelled and time.monotonic() < end:
            time.sleep(0.01)
        token.check()
        return "verified"

    def verify(self, model_id, repair=False, progress=None, token=None, hash_progress=None):
        return SimpleNamespace(status="partial", corrupt=(), missing=())


@pytest.fixture
def dialog_factory(qtbot, monkeypatch):
    monkeypatch.setattr(ModelManagerDialog, "_start_recommendation", lambda self: None)

    def make(client, store):
        dlg = ModelManagerDialog(client, store)
        qtbot.addWidget(dlg)
        return dlg

    return make


def test_download_clicked_twice_is_one_download_that_stop_stops(qtbot, client, dialog_factory):
    store = FakeStore()
    dlg = dialog_factory(client, store)
    failed = []
    client.model_failed.connect(lambda m, e: failed.append(m))
    dlg.pull("m1")
    dlg.pull("m1")  # double click
    assert store.started.wait(10)
    client.cancel_model_task("m1")
    qtbot.waitUntil(lambda: failed == ["m1"], timeout=10000)
    qtbot.waitUntil(lambda: client.model_pool.activeThreadCount() == 0, timeout=10000)
    assert store.pulls == 1 and failed == ["m1"]
    assert dlg.progress.isHidden()


def test_stop_after_verify_of_a_downloading_model_stops_the_download(qtbot, client,
                                                                     dialog_factory):
    store = FakeStore()
    dlg = dialog_factory(client, store)
    failed, done = [], []
    client.model_failed.connect(lambda m, e: failed.append(m))
    client.model_finished.connect(lambda m, r: done.append(r))
    dlg.pull("m1")
    dlg.verify("m1")  # queued behind the download in the one-thread model pool
    assert store.started.wait(10)
    client.cancel_model_task("m1")
    qtbot.waitUntil(lambda: "m1" in failed, timeout=10000)  # the download stopped
    qtbot.waitUntil(lambda: client.model_pool.activeThreadCount() == 0, timeout=10000)
    assert not any(r == ("pull", "verified") for r in done)


def test_a_reopened_dialog_shows_the_running_download(qtbot, client, dialog_factory):
    store = FakeStore()
    first = dialog_factory(client, store)
    seen = []
    client.model_progress.connect(lambda m, f, msg: seen.append(f))
    first.pull("m1")
    qtbot.waitUntil(lambda: bool(seen), timeout=10000)
    first.close()
    assert client.model_downloads()["m1"][0] == pytest.approx(0.5)
    again = dialog_factory(client, store)
    assert not again.progress.isHidden()
    assert again.progress.value() == 500
    assert again.table.item(again.row_of("m1"), 4).text() == "downloading 50%"
    again.pull("m1")  # already running: not a second download
    again.table.selectRow(again.row_of("m1"))
    failed = []
    client.model_failed.connect(lambda m, e: failed.append(m))
    again.cancel_btn.click()
    qtbot.waitUntil(lambda: failed == ["m1"], timeout=10000)
    qtbot.waitUntil(lambda: client.model_pool.activeThreadCount() == 0, timeout=10000)
    assert store.pulls == 1
    assert again.progress.isHidden() and client.model_downloads() == {}
    # (checked again in the pool once the download ended)
    qtbot.waitUntil(lambda: again.table.item(again.row_of("m1"), 4).text() == "missing",
                    timeout=5000)


# -- 4. an engine thread that outlives shutdown() -----------------------------------------------
_STRAGGLER_SCRIPT = r"""
import gc, os, sys, threading, time
sys.path.insert(0, {root!r})
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from PySide6.QtWidgets import QApplication
app = QApplication([])
from ui import engine_client
from ui.engine_client import EngineClient

c = EngineClient(lambda: object())
release = threading.Event()  # (set once the straggler is seen: it then ends at once)
def slow(engine, progress):
    release.wait(2.0)  # a model load: no cancel check inside
    progress.update(1.0, "x")
c.call(slow, "slow")
while c.running_id() is None:
    app.processEvents(); time.sleep(0.01)
time.sleep(0.2)
c.shutdown(timeout_ms=200)
del c
gc.collect()
print("client deleted", flush=True)
assert engine_client.wait_for_stragglers(0.0) == 1  # (its job sleeps on)
release.set()
end = time.monotonic() + 30
while engine_client.wait_for_stragglers(0.05) and time.monotonic() < end:
    app.processEvents()
assert not engine_client._STRAGGLERS
print("OK", flush=True)
"""


def test_deleting_a_client_whose_engine_thread_still_runs_does_not_abort(tmp_path):
    script = tmp_path / "straggler.py"
    script.write_text(_STRAGGLER_SCRIPT.format(root=str(ROOT)))
    r = subprocess.run([sys.executable, str(script)], check=False, capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "OK" in r.stdout


def test_a_straggler_still_finishing_is_kept_until_its_thread_has_ended(qtbot):
    """isRunning() turns False as soon as a thread begins to finish, before it has run its
    finished() handlers (the worker's deleteLater): the straggler must be kept till then, as
    dropping its last reference meanwhile deleted the objects from two threads (a crash)."""
    from PySide6.QtCore import QObject, Qt, QThread

    from ui import engine_client

    thread, worker = QThread(), QObject()
    finishing, release = threading.Event(), threading.Event()

    def slow_finish():  # (runs in the finishing thread: a worker being deleted)
        finishing.set()
        release.wait(10)

    thread.finished.connect(slow_finish, Qt.ConnectionType.DirectConnection)
    thread.start()
    engine_client._STRAGGLERS.append((thread, worker))
    try:
        thread.quit()
        assert finishing.wait(10)
        assert not thread.isRunning()  # (what the old check read as "ended")
        assert engine_client.wait_for_stragglers(0.05) == 1
        release.set()
        assert engine_client.wait_for_stragglers(10) == 0
        assert not engine_client._STRAGGLERS
    finally:
        release.set()
        thread.wait(10000)
        engine_client._STRAGGLERS[:] = [
            s for s in engine_client._STRAGGLERS if s[0] is not thread]


# -- 4b. a diagnosis gets the job's progress (and cancel token) --------------------------------
def test_diagnose_hands_the_jobs_progress_to_the_engine(qtbot):
    entered, go = threading.Event(), threading.Event()
    got = []

    class DiagEng(Eng):
        def diagnose(self, path, backend="auto", *, progress=None):
            got.append(progress)
            entered.set()
            go.wait(10)
            if progress is not None:
                progress.update(0.5, "classified")  # raises Cancelled once cancelled
            raise AssertionError("a cancelled diagnosis went on")

    c = EngineClient(lambda: DiagEng())
    try:
        jid = c.diagnose(Path("/x/a.jpg"))
        assert entered.wait(10)
        c.cancel(jid)
        go.set()
        qtbot.waitUntil(lambda: c.job(jid).state.finished, timeout=10000)
        assert c.job(jid).state is JobState.CANCELLED
        assert got and got[0] is not None
    finally:
        go.set()
        c.shutdown()


def test_engine_diagnose_checks_cancel_between_load_and_classifier(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from engine import understand
    from engine.pipeline import Engine
    from engine.progress import CancelToken, Progress

    src = tmp_path / "p.png"
    Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(src)
    calls = []
    monkeypatch.setattr(understand, "diagnose", lambda *a, **k: calls.append(a))
    token = CancelToken()
    engine = Engine("cpu")
    seen = []

    def cb(f, m):
        seen.append(m)
        if m == "loading":
            token.cancel()  # Stop while the photo is loading

    with pytest.raises(Cancelled):
        engine.diagnose(src, "builtin", progress=Progress(cb, token))
    assert not calls  # the classifier never started
    assert seen == ["loading"]


# -- 10. Retry clicked twice --------------------------------------------------------------------
def test_retry_twice_queues_one_retry(qtbot, client):
    bad = client.submit(JobRequest(Path("/x/bad.jpg")))
    qtbot.waitUntil(lambda: client.job(bad).state.finished, timeout=10000)
    assert client.job(bad).state is JobState.FAILED
    client.fake.fail = False
    first = client.retry(bad)
    second = client.retry(bad)
    assert first is not None and second is None
    qtbot.waitUntil(client.is_idle, timeout=10000)
    assert client.fake.runs.count(Path("/x/bad.jpg")) == 1
    # the retry itself can be retried once it fails or is cancelled
    assert client.retry(first) is None  # (it is done)


# -- 5. the overall ETA of a queue mixing diagnoses and runs -------------------------------------
def test_queued_runs_are_costed_like_runs_not_like_diagnoses(qtbot):
    eng = Eng(run_seconds=0.4)
    c = EngineClient(lambda: eng)
    try:
        for i in range(8):
            c.diagnose(Path(f"/x/p{i}.jpg"))
        qtbot.waitUntil(c.is_idle, timeout=20000)
        seen, ends = [], []
        c.overall_progress.connect(lambda f, eta: seen.append((time.monotonic(), eta)))
        c.finished.connect(lambda jid, r: ends.append(time.monotonic()))
        for i in range(3):
            c.submit(JobRequest(Path(f"/x/p{i}.jpg")))
        qtbot.waitUntil(c.is_idle, timeout=30000)
        # between the first run's end and the second's (one run still queued), the ETA costs
        # the queued run at least what a run took (>= 0.4 s), not the average of mostly
        # diagnoses (a few ms each)
        assert len(ends) == 3
        during = [eta for t, eta in seen if ends[0] < t < ends[1]]
        assert during, seen
        assert all(eta is not None and eta >= 0.35 for eta in during), during
    finally:
        c.shutdown()


def test_a_queued_run_of_a_diagnosed_photo_is_costed_by_its_plan(qtbot, tmp_path, monkeypatch):
    from PIL import Image

    from engine.estimate import REFERENCE_CPU_S_PER_MP
    from ui.engine_client import DiagnoseOutcome

    monkeypatch.setenv("MEND_COST_HISTORY", "")  # no history: the reference figures
    eng = Eng()
    c = EngineClient(lambda: eng)
    gate = threading.Event()
    try:
        photo = tmp_path / "p.png"
        Image.new("RGB", (1000, 500)).save(photo)
        with qtbot.waitSignal(c.finished, timeout=10000) as sig:
            c.diagnose(photo)
        assert isinstance(sig.args[1], DiagnoseOutcome) and sig.args[1].size == (500, 1000)
        c.device = SimpleNamespace(kind="cpu", threads=1)  # (the stand-in engine has none)
        c.call(lambda e, p: gate.wait(10), "hold")  # keeps the runs queued
        run = c.submit(JobRequest(photo))
        other = c.submit(JobRequest(tmp_path / "never-diagnosed.png"))
        expected = REFERENCE_CPU_S_PER_MP[("denoise_builtin", None)] * 0.5
        assert c._expected_seconds(c._jobs[run]) == pytest.approx(expected)
        assert c._expected_seconds(c._jobs[other]) is None  # no run has finished yet
        assert c._jobs[run].info.kind is JobKind.RUN
        gate.set()
        qtbot.waitUntil(c.is_idle, timeout=10000)
    finally:
        gate.set()
        c.shutdown()
