"""api types, progress/cancel, devices: the contracts every other part relies on."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from engine.api import Degradation, Diagnosis, JobResult, Plan, Step, StepRecord, normalise_scores
from engine.devices import cpu_threads, select_device
from engine.errors import BadImage, Cancelled, DeviceUnavailable
from engine.progress import CancelToken, Progress


def test_degradation_names_and_parse():
    assert [d.value for d in Degradation] == ["A", "B", "C", "D"]
    assert Degradation.parse(" b ") is Degradation.B
    assert "Reflection" in Degradation.B.display_name
    with pytest.raises(ValueError, match="unknown degradation"):
        Degradation.parse("E")


def test_scores_normalise_and_runner_up():
    s = normalise_scores({"A": 2, "B": 1, "C": 1, "D": 0, "X": 5})
    assert set(s) == {"A", "B", "C", "D"}
    assert sum(s.values()) == pytest.approx(1.0)
    assert normalise_scores({}) == {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}
    d = Diagnosis(Degradation.A, s, ("noise",), {"noise_sigma": 12.5})
    assert d.confidence == pytest.approx(0.5)
    assert d.runner_up in (Degradation.B, Degradation.C)
    back = Diagnosis.from_json(json.loads(json.dumps(d.to_json())))
    assert back.label is Degradation.A and back.estimates["noise_sigma"] == 12.5
    over = d.with_label(Degradation.C)
    assert over.label is Degradation.C and "overridden" in over.rationale


def test_plan_round_trip_and_edit():
    plan = Plan(Degradation.C, "laptop", (Step("deblur_nafnet"), Step("face_codeformer", {"fidelity": 0.7})))
    edited = plan.replace_step(1, Step("face_codeformer", {"fidelity": 0.3}, enabled=False))
    assert plan.steps[1].params["fidelity"] == 0.7  # frozen: the original is untouched
    back = Plan.from_json(json.loads(json.dumps(edited.to_json())))
    assert back == edited


def test_job_result_json_contract(tmp_path):
    d = Diagnosis(Degradation.D, normalise_scores({"D": 1}))
    r = JobResult(tmp_path / "a.jpg", tmp_path / "o.jpg", Degradation.D, d,
                  Plan(Degradation.D, "builtin", (Step("passthrough"),)),
                  (StepRecord("passthrough", "builtin:passthrough", 0.00123),), ("w",))
    j = r.to_json()
    assert set(j) == {"path", "output", "label", "steps", "warnings"}
    assert j["steps"] == [{"name": "passthrough", "model": "builtin:passthrough", "seconds": 0.001}]


def test_progress_sub_ranges_are_monotonic():
    seen = []
    p = Progress(lambda f, m: seen.append((round(f, 3), m)))
    a = p.sub(0.0, 0.5)
    b = p.sub(0.5, 0.5)
    a.update(0.5, "first")
    a.sub(0.5, 0.5).update(1.0, "inner")
    b.update(0.5, "second")
    assert [f for f, _ in seen] == [0.25, 0.5, 0.75]
    assert seen[-1][1] == "second"


def test_a_finished_progress_is_freed_without_the_garbage_collector():
    """Every job makes a Progress tree; the root must not refer to itself (a cycle would leave
    each one, and what its callback holds, to the collector)."""
    import gc
    import weakref

    gc.disable()
    try:
        root = Progress(lambda f, m: None)
        child = root.sub(0.5, 0.5)
        child.update(1.0, "done")
        assert root.last_fraction == 1.0 and child.eta_seconds() is not None
        ref = weakref.ref(root)
        del root, child
        assert ref() is None
    finally:
        gc.enable()


def test_cancel_from_another_thread_stops_next_check():
    token = CancelToken()
    p = Progress(token=token)
    t = threading.Thread(target=token.cancel)
    t.start()
    t.join()
    with pytest.raises(Cancelled):
        p.sub(0.2, 0.1).update(0.5)


def test_device_policy_on_this_machine(monkeypatch):
    dev = select_device("cpu")
    assert dev.kind == "cpu" and dev.threads >= 1 and 0 < dev.memory_budget <= dev.total_memory
    import torch

    assert dev.dtype_for(True, True) == torch.float32  # fp32 on CPU, always
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="CUDA"):
            select_device("cuda")
    with pytest.raises(DeviceUnavailable):
        select_device("tpu")
    monkeypatch.setenv("MEND_THREADS", "3")
    assert cpu_threads() == 3


def test_bad_image_message_names_file():
    e = BadImage("/x/y.jpg", "truncated")
    assert str(e) == "/x/y.jpg: truncated"


def test_engine_never_imports_qt():
    code = ("import sys, engine.api, engine.pipeline, engine.cli, engine.imageio, engine.devices;"
            "bad=[m for m in sys.modules if m.startswith(('PySide6','qasync','shiboken'))];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_precision_setting_narrows_gpu_dtypes(monkeypatch):
    import dataclasses

    import torch

    gpu = dataclasses.replace(select_device("cpu"), kind="cuda", supports_half=True,
                              supports_bf16=True)
    assert gpu.dtype_for(True, True) == torch.float16
    monkeypatch.setenv("MEND_PRECISION", "fp32")
    assert gpu.dtype_for(True, True) == torch.float32
    monkeypatch.setenv("MEND_PRECISION", "bf16")
    assert gpu.dtype_for(True, True) == torch.bfloat16
    assert gpu.dtype_for(True, False) == torch.float32  # the model cannot run bf16
    monkeypatch.setenv("MEND_PRECISION", "fp16")
    assert select_device("cpu").dtype_for(True, True) == torch.float32  # never half on CPU
