"""The step-cost history under trouble: an unwritable file, two processes writing at once, and
InvSR's per-sampling-step figures."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import imageio
from engine.api import Degradation, Diagnosis, JobRequest, OutputOptions, Plan, Step
from engine.errors import SaveFailed
from engine.estimate import CostHistory, estimate_plan, step_work_units, work_units
from engine.pipeline import Engine

ROOT = Path(__file__).resolve().parents[2]


def _refuse(dest, data, **kw):
    raise SaveFailed(f"{dest}: no space left on device")


def test_an_unwritable_history_never_fails_a_job(tmp_path, monkeypatch):
    """atomic_write_bytes raises SaveFailed (an EngineError, not an OSError): a full disk or a
    read-only cache must cost the estimate its history, not every job after its first step."""
    h = CostHistory(tmp_path / "costs.json")
    monkeypatch.setattr(imageio, "atomic_write_bytes", _refuse)
    h.record("sharpen_builtin", None, "cpu", 1, 1.0, 1.0)  # logged, not raised
    assert h.get("sharpen_builtin", None, "cpu", 1) == pytest.approx(1.0)  # kept in memory
    monkeypatch.undo()

    src = tmp_path / "p.png"
    Image.fromarray((np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
                    ).save(src)
    engine = Engine("cpu", history=h)
    real_write = imageio.atomic_write_bytes

    def history_refused(dest, data, **kw):  # only the history file cannot be written
        if Path(dest).name == "costs.json":
            raise SaveFailed(f"{dest}: read-only file system")
        return real_write(dest, data, **kw)

    monkeypatch.setattr(imageio, "atomic_write_bytes", history_refused)
    plan = Plan(Degradation.A, "builtin", (Step("sharpen_builtin"), Step("upscale_builtin")))
    result = engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), plan=plan,
                                   diagnosis=Diagnosis(Degradation.A, {"A": .7, "B": .1, "C": .1,
                                                                       "D": .1}),
                                   profile="builtin", backend="builtin", guard=False))
    assert result.output.is_file() and len(result.steps) == 2


def test_two_writers_keep_each_others_entries(tmp_path, monkeypatch):
    """Two CostHistory objects (as two app instances) on one file: a write that starts while
    the other is mid-write waits for it and reads its entries first (OS file lock)."""
    path = tmp_path / "costs.json"
    first, second = CostHistory(path), CostHistory(path)
    in_write, gate = threading.Event(), threading.Event()
    real_write = imageio.atomic_write_bytes

    def slow_write(dest, data, **kw):
        if threading.current_thread().name == "writer-a":
            in_write.set()
            gate.wait(10)
        return real_write(dest, data, **kw)

    monkeypatch.setattr(imageio, "atomic_write_bytes", slow_write)
    a = threading.Thread(target=first.record, args=("step_a", None, "cpu", 1, 1.0, 1.0),
                         name="writer-a")
    b = threading.Thread(target=second.record, args=("step_b", None, "cpu", 1, 1.0, 2.0),
                         name="writer-b")
    a.start()
    assert in_write.wait(10)
    b.start()
    b.join(0.5)  # without the lock, b writes its file now (and a then overwrites it)
    gate.set()
    a.join(20)
    b.join(20)
    assert not a.is_alive() and not b.is_alive()
    steps = json.loads(path.read_text())["steps"]
    assert {k.split("|")[0] for k in steps} == {"step_a", "step_b"}
    assert CostHistory(path).get("step_a", None, "cpu", 1) == pytest.approx(1.0)
    assert CostHistory(path).get("step_b", None, "cpu", 1) == pytest.approx(2.0)


_WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from engine.estimate import CostHistory
h = CostHistory(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    h.record(f"step_{{sys.argv[2]}}_{{i}}", None, "cpu", 1, 1.0, 1.0)
"""


def test_two_processes_recording_at_once_lose_nothing(tmp_path):
    path = tmp_path / "costs.json"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(root=str(ROOT)))
    n = 60
    procs = [subprocess.Popen([sys.executable, str(script), str(path), tag, str(n)])
             for tag in "AB"]
    for p in procs:
        assert p.wait(120) == 0
    steps = json.loads(path.read_text())["steps"]
    assert sum(k.startswith("step_A") for k in steps) == n
    assert sum(k.startswith("step_B") for k in steps) == n


def test_a_lock_held_too_long_delays_a_write_but_never_drops_it(tmp_path, monkeypatch):
    import engine.estimate as est

    path = tmp_path / "costs.json"
    monkeypatch.setattr(est, "LOCK_WAIT", 0.2)
    with est.file_lock(path):  # another holder that never lets go (in time)
        done = threading.Event()
        t = threading.Thread(target=lambda: (CostHistory(path).record("s", None, "cpu", 1,
                                                                       1.0, 1.0), done.set()))
        t.start()
        assert done.wait(10)
    t.join(5)
    assert CostHistory(path).get("s", None, "cpu", 1) == pytest.approx(1.0)


def test_invsr_history_is_per_sampling_step(tmp_path):
    """A run of 3 sampling steps records its seconds per step: the estimate multiplies by the
    plan's steps once (not the learned rate, which already covered all 3, times 3 again)."""
    h = CostHistory(tmp_path / "h.json")
    plan3 = Plan(Degradation.A, "quality", (Step("sr_invsr", {"scale": 1, "steps": 3}),))
    plan1 = Plan(Degradation.A, "quality", (Step("sr_invsr", {"scale": 1, "steps": 1}),))
    ref3 = estimate_plan(plan3, (1000, 1000), device_kind="cpu", threads=1)
    ref1 = estimate_plan(plan1, (1000, 1000), device_kind="cpu", threads=1)
    assert ref3.seconds == pytest.approx(3 * ref1.seconds)
    # what Engine._run_steps records for a 1 MP run of 3 sampling steps that took 300 s
    h.record("sr_invsr", None, "cuda", 8, step_work_units("sr_invsr", {"steps": 3}, 10**6), 300.0)
    e3 = estimate_plan(plan3, (1000, 1000), device_kind="cuda", threads=8, history=h)
    e1 = estimate_plan(plan1, (1000, 1000), device_kind="cuda", threads=8, history=h)
    assert e3.seconds == pytest.approx(300.0) and e3.basis == "measured"
    assert e1.seconds == pytest.approx(100.0)
    assert step_work_units("denoise_builtin", {"steps": 3}, 10**6) == work_units(
        "denoise_builtin", 10**6)


def test_an_old_whole_step_invsr_figure_is_not_read_as_per_step(tmp_path):
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"version": 1, "steps": {
        "sr_invsr||cuda|8": {"s_per_mp": 300.0, "n": 1.0}}}))
    plan = Plan(Degradation.A, "quality", (Step("sr_invsr", {"scale": 1, "steps": 3}),))
    e = estimate_plan(plan, (1000, 1000), device_kind="cuda", threads=8,
                      history=CostHistory(path))
    assert e.seconds is None  # unknown until a run here, not 900 s


def test_the_engine_records_invsr_per_sampling_step(tmp_path, monkeypatch):
    from engine.restore import registry
    from engine.restore.registry import StepOutput, StepSpec, get_step

    real = get_step("sr_invsr")
    calls = []

    def fake_invsr(image, params, ctx):
        calls.append(dict(params))
        return StepOutput(image, "invsr-fake", "")

    monkeypatch.setitem(registry.STEPS, "sr_invsr",
                        StepSpec("sr_invsr", fake_invsr, (), real.description,  # (no model)
                                 {**real.defaults, "steps": 4}))
    recorded = []
    h = CostHistory(tmp_path / "h.json")
    monkeypatch.setattr(h, "record", lambda *a: recorded.append(a))
    engine = Engine("cpu", history=h)
    monkeypatch.setattr(engine, "_check_memory", lambda *a, **k: None)
    src = tmp_path / "p.png"
    Image.fromarray(np.full((100, 200, 3), 128, np.uint8)).save(src)
    plan = Plan(Degradation.A, "quality", (Step("sr_invsr", {"scale": 1}),))  # default steps
    engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), plan=plan,
                          diagnosis=Diagnosis(Degradation.A, {"A": .7, "B": .1, "C": .1,
                                                              "D": .1}),
                          profile="quality", backend="builtin", guard=False))
    assert calls and calls[0]["steps"] == 4
    (name, _model, _kind, _threads, units, _seconds), = recorded
    assert name == "sr_invsr" and units == pytest.approx(4 * 100 * 200 / 1e6)


def test_a_snapshot_keeps_the_figures_as_read_and_never_reads_the_disk_again(tmp_path,
                                                                               monkeypatch):
    path = tmp_path / "costs.json"
    CostHistory(path).record("s", None, "cpu", 1, 1.0, 2.0)
    snap = CostHistory(path).snapshot()
    CostHistory(path).record("s", None, "cpu", 1, 1.0, 10.0)  # the engine records meanwhile
    touched: list = []
    for name in ("stat", "is_file", "read_text"):
        orig = getattr(Path, name)
        monkeypatch.setattr(Path, name, lambda self, *a, _o=orig, **k: (touched.append(self),
                                                                       _o(self, *a, **k))[1])
    assert snap.get("s", None, "cpu", 1) == pytest.approx(2.0)
    assert snap.get("t", None, "cpu", 1) is None
    assert touched == [] and snap.path is None
    snap.record("s", None, "cpu", 1, 1.0, 4.0)  # (no path: kept in memory only)
    monkeypatch.undo()
    assert CostHistory(path).get("s", None, "cpu", 1) == pytest.approx(6.0)
