"""The engine client: jobs run in its QThread, progress/ETA signals, cancel within one tile,
reorder / cancel / retry, readable errors, the crash journal, model tasks."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from engine.api import Degradation, Diagnosis, JobRequest, JobResult, OutputOptions, Plan, Step
from engine.errors import BadImage, ModelMissing, OutOfMemory
from ui.engine_client import (
    DiagnoseOutcome,
    EngineClient,
    JobState,
    read_journal,
    request_from_json,
    request_to_json,
)
from ui.messages import describe_error


class TiledEngine:
    """Stands in for engine.pipeline.Engine to exercise the client: 'tiles' of fixed length,
    progress + cancel check per tile, like the real tiler."""

    def __init__(self, tiles: int = 10, tile_seconds: float = 0.02) -> None:
        self.tiles, self.tile_seconds = tiles, tile_seconds
        self.threads: set[int] = set()
        self.device = None
        self.runs: list[Path] = []
        self.requests: list[JobRequest] = []

    def diagnose(self, path, backend="auto"):
        self.threads.add(threading.get_ident())
        if Path(path).name.startswith("bad"):
            raise BadImage(path, "truncated file")
        return Diagnosis(Degradation.A, {"A": 0.7, "B": 0.1, "C": 0.1, "D": 0.1})

    def plan(self, diagnosis, label=None, profile="auto"):
        return Plan(label or diagnosis.label, "builtin", (Step("denoise_builtin"),))

    def run(self, request, progress):
        self.threads.add(threading.get_ident())
        if Path(request.path).name.startswith("missing"):
            raise ModelMissing("big-lama")
        for i in range(self.tiles):
            time.sleep(self.tile_seconds)
            progress.update((i + 1) / self.tiles, f"tile {i + 1}/{self.tiles}")
        self.runs.append(Path(request.path))
        self.requests.append(request)
        d = self.diagnose(request.path)
        return JobResult(Path(request.path), None, d.label, d, self.plan(d))


@pytest.fixture
def client(qtbot):
    eng = TiledEngine()
    c = EngineClient(lambda: eng)
    c.fake = eng
    yield c
    c.shutdown()


def test_jobs_run_in_the_engine_thread_with_progress(qtbot, client):
    progress = []
    client.progress.connect(progress.append)
    with qtbot.waitSignal(client.finished, timeout=5000) as sig:
        jid = client.diagnose(Path("/x/a.jpg"))
    assert sig.args[0] == jid and isinstance(sig.args[1], DiagnoseOutcome)
    assert sig.args[1].plan.steps[0].name == "denoise_builtin"
    assert threading.get_ident() not in client.fake.threads  # never on the GUI thread
    with qtbot.waitSignal(client.finished, timeout=5000) as sig:
        jid = client.submit(JobRequest(Path("/x/a.jpg")))
    assert isinstance(sig.args[1], JobResult)
    assert client.job(jid).state is JobState.DONE
    fr = [p.fraction for p in progress if p.job_id == jid]
    assert fr and fr[-1] == pytest.approx(1.0) and fr == sorted(fr)
    assert any(p.eta_seconds is not None for p in progress if p.job_id == jid)


def test_cancel_takes_effect_within_one_tile(qtbot, client):
    client.fake.tiles, client.fake.tile_seconds = 200, 0.02
    jid = client.submit(JobRequest(Path("/x/long.jpg")))
    qtbot.waitUntil(lambda: (client.job(jid).fraction or 0) > 0.02, timeout=5000)
    t = time.monotonic()
    with qtbot.waitSignal(client.failed, timeout=5000) as sig:
        client.cancel(jid)
    dt = time.monotonic() - t
    assert sig.args == [jid, "Cancelled."]
    assert client.job(jid).state is JobState.CANCELLED
    assert dt < 0.5, dt  # one tile is 20 ms; signal delivery adds a little
    assert client.is_idle()


def test_queue_reorder_cancel_retry(qtbot, client):
    client.fake.tiles, client.fake.tile_seconds = 5, 0.05
    done: list[int] = []
    client.finished.connect(lambda j, r: done.append(j))
    a = client.submit(JobRequest(Path("/x/a.jpg")))
    b = client.submit(JobRequest(Path("/x/b.jpg")))
    c = client.submit(JobRequest(Path("/x/c.jpg")))
    d = client.submit(JobRequest(Path("/x/d.jpg")))
    assert client.running_id() == a and client.queued_ids() == [b, c, d]
    client.move(d, -2)
    assert client.queued_ids() == [d, b, c]
    client.cancel(b)
    assert client.job(b).state is JobState.CANCELLED and client.queued_ids() == [d, c]
    qtbot.waitUntil(client.is_idle, timeout=10000)
    assert done == [a, d, c]
    assert [p.name for p in client.fake.runs] == ["a.jpg", "d.jpg", "c.jpg"]
    r = client.retry(b)
    assert r is not None and r != b
    qtbot.waitUntil(client.is_idle, timeout=10000)
    assert client.job(r).state is JobState.DONE
    assert client.retry(a) is None  # done jobs are not retried
    client.clear_finished()
    assert client.jobs() == []


def test_engine_errors_become_readable_messages(qtbot, client):
    with qtbot.waitSignal(client.failed, timeout=5000) as sig:
        client.diagnose(Path("/x/bad.jpg"))
    assert sig.args[1] == "Cannot read this photo: truncated file."
    with qtbot.waitSignal(client.failed, timeout=5000) as sig:
        jid = client.submit(JobRequest(Path("/x/missing.jpg")))
    assert "big-lama" in sig.args[1] and "Models" in sig.args[1]
    assert client.job(jid).state is JobState.FAILED


def test_describe_error_covers_the_engine_errors():
    assert "smaller tile" in describe_error(OutOfMemory("CUDA out of memory"))
    assert describe_error(OSError(2, "No such file", "/a")) == "File error: No such file (/a)"
    assert "Unexpected error (ValueError" in describe_error(ValueError("x"))


def test_overall_progress_and_eta(qtbot, client):
    client.fake.tiles, client.fake.tile_seconds = 5, 0.03
    seen = []
    client.overall_progress.connect(lambda f, eta: seen.append((f, eta)))
    for n in "abc":
        client.submit(JobRequest(Path(f"/x/{n}.jpg")))
    qtbot.waitUntil(client.is_idle, timeout=10000)
    fr = [f for f, _ in seen]
    assert fr[-1] == pytest.approx(1.0)
    assert any(0.3 < f < 0.7 for f in fr)
    assert any(eta is not None and eta > 0 for f, eta in seen if f < 0.9)


def test_crash_journal_keeps_unfinished_jobs(qtbot, tmp_path):
    eng = TiledEngine(tiles=100, tile_seconds=0.02)
    journal = tmp_path / "queue.json"
    c = EngineClient(lambda: eng, journal=journal)
    req = JobRequest(Path("/x/a.jpg"), OutputOptions(out_dir=tmp_path / "o", format="png",
                                                      bit_depth=16),
                     label=Degradation.B, mask_path=tmp_path / "m.png",
                     plan=Plan(Degradation.B, "builtin", (Step("inpaint_builtin", {"r": 3}),)))
    c.submit(req)
    c.submit(JobRequest(Path("/x/b.jpg")))
    qtbot.waitUntil(lambda: len(read_journal(journal)) == 2, timeout=5000)  # debounced write
    c.shutdown()  # like a crash: unfinished work stays in the journal
    back = read_journal(journal)
    assert [str(r.path) for r in back] == ["/x/a.jpg", "/x/b.jpg"]
    assert back[0] == req
    c2 = EngineClient(lambda: TiledEngine(tiles=1), journal=journal)
    with qtbot.waitSignal(c2.finished, timeout=5000):
        c2.submit(back[1])
    qtbot.waitUntil(c2.is_idle, timeout=5000)
    qtbot.waitUntil(lambda: not journal.exists(), timeout=5000)  # nothing left to offer
    c2.shutdown()


def test_request_json_round_trip():
    d = Diagnosis(Degradation.C, {"A": 0.1, "B": 0.1, "C": 0.7, "D": 0.1},
                  estimates={"blur_length": 12.5})
    r = JobRequest(Path("p.jpg"), diagnosis=d, profile="laptop", guard=False)
    assert request_from_json(request_to_json(r)) == r


def test_model_tasks_run_in_their_own_pool(qtbot, client):
    ids = []

    def work(report, token):
        ids.append(threading.get_ident())
        report(0.5, "half")
        return "ok"

    prog = []
    client.model_progress.connect(lambda m, f, msg: prog.append((m, f, msg)))
    with qtbot.waitSignal(client.model_finished, timeout=5000) as sig:
        client.model_task("x", work)
    assert sig.args == ["x", "ok"] and prog == [("x", 0.5, "half")]
    assert ids[0] != threading.get_ident()
    with qtbot.waitSignal(client.model_failed, timeout=5000) as sig:
        client.model_task("y", lambda r, t: (_ for _ in ()).throw(ModelMissing("y")))
    assert "'y' is not installed" in sig.args[1]


def test_shutdown_runs_the_pool_work_still_queued(qtbot, tmp_path):
    """Quitting must not drop a save waiting in the pool (a sidecar, a mask, an export): the
    queued work runs before shutdown() returns."""
    import threading

    eng = TiledEngine()
    c = EngineClient(lambda: eng)
    gate, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(20)

    for _ in range(c.pool.maxThreadCount()):
        c.run_in_pool(hold)
    assert started.wait(10)
    out = tmp_path / "saved.txt"
    c.run_in_pool(lambda: out.write_text("kept"))  # queued behind hold()
    threading.Timer(0.3, gate.set).start()
    c.shutdown()
    assert out.read_text() == "kept"


def test_after_shutdown_pool_work_and_model_tasks_are_refused(qtbot, tmp_path):
    """Work given to a client that has shut down was taken: a save in a pool nothing waits
    for any more (cut short when the program exits), a model task (a whole download) on a
    pool whose tasks were cancelled. Both are refused now, saying why; nothing starts."""
    c = EngineClient(lambda: TiledEngine())
    c.shutdown()
    ran = []
    with pytest.raises(RuntimeError, match="engine client is shut down"):
        c.run_in_pool(lambda: ran.append("save"))
    with pytest.raises(RuntimeError, match="engine client is shut down.*'x'"):
        c.model_task("x", lambda report, token: ran.append("download"), download=True)
    assert c.model_downloads() == {} and not c._model_tokens
    c.pool.waitForDone(2000)
    c.model_pool.waitForDone(2000)
    assert not ran


def test_pool_work_a_model_task_queues_while_shutdown_waits_is_waited_for(qtbot, tmp_path):
    """A save queued while ``shutdown`` waits (here by a model task's end, reported to the GUI
    thread) still runs before it returns: the pools are waited for together, so one queued in
    the first pool while the second was waited for is not left behind."""
    import weakref

    c = EngineClient(lambda: TiledEngine())
    ref = weakref.ref(c)
    out = tmp_path / "saved.txt"
    started = threading.Event()

    def verify(report, token):
        started.set()
        time.sleep(0.3)  # (a step it finishes after the cancel)
        return "ok"

    def save():
        time.sleep(0.1)
        out.write_text("kept")

    c.model_finished.connect(lambda *_: ref().run_in_pool(save))
    c.model_task("m", verify)
    assert started.wait(5)
    c.shutdown()
    assert out.read_text() == "kept"


def test_a_job_whose_engine_call_returned_is_done_even_if_cancelled_meanwhile(qtbot, client):
    """The engine finishes a job once it is saving (its file is on disk): a cancel arriving
    then must not report the job as cancelled (the app would forget the result)."""
    eng = client.fake
    saving = threading.Event()
    real_run = eng.run

    def run_then_save(request, progress):
        result = real_run(request, progress)
        saving.set()
        time.sleep(0.5)  # writing the result; Engine.run no longer checks for cancel here
        return result

    eng.run = run_then_save
    jid = client.submit(JobRequest(Path("/x/a.jpg")))
    qtbot.waitUntil(saving.is_set, timeout=5000)
    with qtbot.waitSignal(client.finished, timeout=5000):
        client.cancel(jid)
    assert client.job(jid).state is JobState.DONE


def test_a_preview_runs_before_the_queued_diagnoses_and_fixes_with_its_photos_diagnosis(
        qtbot, client):
    """A preview is quick feedback on the part of the photo in view: it waited behind every
    diagnosis "Diagnose all" had queued (and every fix). It runs next now, behind the quick
    jobs asked before it; a diagnosis of its own photo queued meanwhile runs just before it,
    and the preview is given that diagnosis (the engine does not diagnose the photo again)."""
    eng = client.fake
    eng.tiles, eng.tile_seconds = 1, 0.01
    made = Diagnosis(Degradation.C, {"A": 0.1, "B": 0.1, "C": 0.7, "D": 0.1},
                     estimates={"noise_sigma": 4.5})
    diagnose = eng.diagnose
    eng.diagnose = lambda path, backend="auto": made if Path(path).name == "c.jpg" \
        else diagnose(path, backend)
    gate = threading.Event()
    started = []
    client.job_changed.connect(
        lambda i: started.append(i.id) if i.state is JobState.RUNNING else None)
    held = client.call(lambda engine, progress: gate.wait(10), "hold the engine")
    qtbot.waitUntil(lambda: client.running_id() == held, timeout=5000)
    quick = client.call(lambda engine, progress: None, "Plan a.jpg", path=Path("/x/a.jpg"))
    diagnoses = [client.diagnose(Path(f"/x/{n}.jpg")) for n in "abcd"]
    fix = client.submit(JobRequest(Path("/x/e.jpg")))
    preview = client.submit(JobRequest(Path("/x/c.jpg"), region=(0, 0, 10, 10)))
    a, b, c, d = diagnoses
    assert client.queued_ids() == [quick, c, preview, a, b, d, fix]
    # a second preview follows the first; a re-plan asked now waits, as before, for the batch
    other = client.submit(JobRequest(Path("/x/f.jpg"), region=(5, 5, 20, 20)))
    replan = client.call(lambda engine, progress: None, "Plan b.jpg", path=Path("/x/b.jpg"))
    assert client.queued_ids() == [quick, c, preview, other, a, b, d, fix, replan]
    gate.set()
    qtbot.waitUntil(client.is_idle, timeout=10000)
    assert list(dict.fromkeys(started)) == [held, quick, c, preview, other, a, b, d, fix, replan]
    # the preview was given the diagnosis its photo's job made; the other one had none made
    by_path = {(r.path.name, r.region): r for r in eng.requests}
    assert by_path["c.jpg", (0, 0, 10, 10)].diagnosis == made
    assert by_path["f.jpg", (5, 5, 20, 20)].diagnosis is None
    assert client.request(preview).diagnosis == made
    assert all(client.job(j).state is JobState.DONE for j in started)
    assert len(eng.requests) == 3  # (the fix and the two previews: one run each)
