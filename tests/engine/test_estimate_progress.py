"""Each step's slice of a job's progress follows its estimated seconds, and the job's ETA is
extrapolated from the steps' speed, not from the fixed slices of loading and diagnosing."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine import progress as progress_mod
from engine.api import Degradation, Diagnosis, JobRequest, OutputOptions, Plan, Step
from engine.estimate import Estimate, StepEstimate
from engine.pipeline import Engine, step_shares
from engine.progress import Progress


def _est(*seconds):
    return Estimate(None, 0, tuple(StepEstimate(f"s{i}", None, s, "reference")
                                   for i, s in enumerate(seconds)))


def test_step_shares_follow_the_estimated_seconds():
    assert step_shares(_est(1.0, 3.0), 2) == pytest.approx([0.25, 0.75])
    assert step_shares(_est(None, None), 2) == pytest.approx([0.5, 0.5])  # nothing known
    assert step_shares(None, 4) == pytest.approx([0.25] * 4)
    assert step_shares(_est(2.0, None, 4.0), 3) == pytest.approx([2 / 9, 3 / 9, 4 / 9])
    tiny = step_shares(_est(0.0, 10.0), 2)  # a free step keeps a sliver, never nothing
    assert tiny[0] > 0 and sum(tiny) == pytest.approx(1.0)
    assert step_shares(_est(1.0), 2) == pytest.approx([0.5, 0.5])  # mismatch: equal shares


def test_a_fast_step_before_a_slow_one_gets_a_small_slice(tmp_path):
    from engine.estimate import CostHistory

    src = tmp_path / "p.png"
    Image.fromarray((np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
                    ).save(src)
    plan = Plan(Degradation.A, "builtin", (Step("sharpen_builtin"), Step("denoise_builtin")))
    seen: list[tuple[float, str]] = []
    engine = Engine("cpu", history=CostHistory(None))  # reference figures: 0.15 vs 3.0 s/MP
    engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), plan=plan,
                          diagnosis=Diagnosis(Degradation.A, {"A": .7, "B": .1, "C": .1,
                                                              "D": .1}),
                          profile="builtin", backend="builtin", guard=False),
               Progress(lambda f, m: seen.append((f, m))))
    start_denoise = next(f for f, m in seen if m.startswith("step 2/2"))
    # loading + diagnosing are 10% of the bar; sharpening ~5% of the steps' 85%
    assert start_denoise < 0.2, seen


def test_the_eta_is_measured_from_restart_eta(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: now[0])
    p = Progress()
    now[0] = 101.0
    p.update(0.1, "loaded and diagnosed")  # 1 s for a fixed 10% slice
    p.restart_eta()
    assert p.eta_seconds() is None  # the steps have not moved yet
    now[0] = 111.0
    p.sub(0.1, 0.9).update(0.25, "step")  # 10 s for a quarter of the steps
    assert p.eta_seconds() == pytest.approx(30.0)  # not 1 + 10 s for 32.5% -> ~23 s
