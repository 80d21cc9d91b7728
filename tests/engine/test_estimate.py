"""Estimates of time and memory before a job runs; the history learned from finished steps;
`mend restore --dry-run`."""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.api import Degradation, JobRequest, OutputOptions, Plan, Step
from engine.estimate import (
    PROCESS_BYTES,
    REFERENCE_CPU_S_PER_MP,
    CostHistory,
    estimate_plan,
    finish_bytes,
    manifest_model_memory,
)
from engine.pipeline import Engine
from tests import warm_cli

ROOT = Path(__file__).resolve().parents[2]


def _plan(*steps: Step, label=Degradation.A, profile="builtin") -> Plan:
    return Plan(label, profile, tuple(steps))


def test_reference_cpu_estimate_scales_with_pixels_and_threads():
    plan = _plan(Step("denoise_builtin"), Step("sharpen_builtin"))
    one = estimate_plan(plan, (1000, 1000), device_kind="cpu", threads=1)
    ref = REFERENCE_CPU_S_PER_MP[("denoise_builtin", None)] + \
        REFERENCE_CPU_S_PER_MP[("sharpen_builtin", None)]
    assert one.seconds == pytest.approx(ref)
    assert one.basis == "reference" and "reference CPU" in one.describe()
    four = estimate_plan(plan, (2000, 2000), device_kind="cpu", threads=1)
    assert four.seconds == pytest.approx(4 * one.seconds)
    two_threads = estimate_plan(plan, (2000, 2000), device_kind="cpu", threads=2)
    assert two_threads.seconds == pytest.approx(2 * one.seconds)
    # the Real-ESRGAN model chosen matters: x4plus is far heavier than Compact
    compact = estimate_plan(_plan(Step("sr_realesrgan", {"model": "realesr-general-x4v3"})),
                            (1000, 1000), device_kind="cpu", threads=1)
    rrdb = estimate_plan(_plan(Step("sr_realesrgan", {"model": "realesrgan-x4plus"})),
                         (1000, 1000), device_kind="cpu", threads=1)
    assert rrdb.seconds > 5 * compact.seconds


def test_a_gpu_has_no_time_estimate_until_it_has_history(tmp_path):
    plan = _plan(Step("deblur_nafnet"), label=Degradation.C, profile="quality")
    est = estimate_plan(plan, (1000, 1000), device_kind="cuda", threads=1)
    assert est.seconds is None and est.basis == "unknown"
    assert "unknown" in est.describe()
    h = CostHistory(tmp_path / "costs.json")
    h.record("deblur_nafnet", None, "cuda", 1, megapixels=2.0, seconds=1.0)
    est = estimate_plan(plan, (1000, 1000), device_kind="cuda", threads=1, history=h)
    assert est.seconds == pytest.approx(0.5) and est.basis == "measured"


def test_disabled_steps_and_passthrough_cost_nothing():
    plan = _plan(Step("sr_realesrgan", enabled=False), Step("passthrough"), label=Degradation.D)
    est = estimate_plan(plan, (4000, 3000), device_kind="cpu", threads=1)
    assert est.seconds == 0 and est.nothing_to_run
    assert "nothing to run" in est.describe()


def test_a_plan_with_nothing_to_run_counts_the_engine_and_the_photo_alone():
    """Class D hands the photo on (its file copied): the passthrough was counted as a step
    with image buffers, 60 bytes a pixel (3.9 GB for a 64.5-megapixel JPEG whose run peaked
    at 1.37 GB, /usr/bin/time). Now the engine and the photo as loaded, 12 bytes a pixel."""
    from engine.estimate import PROCESS_BYTES

    d = _plan(Step("passthrough"), label=Degradation.D)
    est = estimate_plan(d, (9274, 6955), device_kind="cpu", threads=1)
    assert est.nothing_to_run and est.peak_bytes == PROCESS_BYTES + 9274 * 6955 * 12
    # (a step beside it: counted as before, the passthrough adding nothing)
    a = _plan(Step("sharpen_builtin"), label=Degradation.A)
    both = _plan(Step("passthrough"), Step("sharpen_builtin"), label=Degradation.A)
    assert estimate_plan(both, (3000, 4000), device_kind="cpu", threads=1).peak_bytes == \
        estimate_plan(a, (3000, 4000), device_kind="cpu", threads=1).peak_bytes


def test_steps_turned_off_by_a_strength_of_0_cost_no_time_and_no_model_memory():
    memory = {"nafnet-sidd-w64": 400 << 20}
    on = _plan(Step("reflection_mask"), Step("dereflect_nafnet"), Step("denoise_builtin"),
               label=Degradation.B)
    off = _plan(Step("reflection_mask"), Step("dereflect_nafnet", {"strength": 0}),
                Step("denoise_builtin", {"strength": 0.0}), label=Degradation.B)
    e_on = estimate_plan(on, (3000, 4000), device_kind="cpu", threads=1, model_memory=memory)
    e_off = estimate_plan(off, (3000, 4000), device_kind="cpu", threads=1, model_memory=memory)
    by_name = {s.name: s for s in e_off.steps}
    assert by_name["dereflect_nafnet"].seconds == 0 and by_name["dereflect_nafnet"].basis == "off"
    assert by_name["denoise_builtin"].seconds == 0
    assert e_off.seconds == pytest.approx(
        next(s.seconds for s in e_on.steps if s.name == "reflection_mask"))
    assert e_off.seconds < e_on.seconds
    assert e_off.peak_bytes < e_on.peak_bytes  # (NAFNet's weights are not loaded)


def test_memory_counts_the_largest_model_and_the_upscaled_buffers():
    small = estimate_plan(_plan(Step("upscale_builtin", {"scale": 1})), (1000, 1000),
                          device_kind="cpu", threads=1)
    x4 = estimate_plan(_plan(Step("upscale_builtin", {"scale": 4})), (1000, 1000),
                       device_kind="cpu", threads=1)
    # output buffers grow with scale² (on top of the process itself)
    assert x4.peak_bytes - PROCESS_BYTES > 10 * (small.peak_bytes - PROCESS_BYTES)
    mem = {"nafnet-gopro-w64": 800 << 20}
    nafnet = _plan(Step("deblur_nafnet"), label=Degradation.C, profile="laptop")
    with_model = estimate_plan(nafnet, (1000, 1000), device_kind="cpu", threads=1,
                               model_memory=mem)
    assert with_model.peak_bytes >= PROCESS_BYTES + (800 << 20)
    assert with_model.peak_bytes < PROCESS_BYTES + (800 << 20) + 200_000_000
    # a step after an upscale works on the larger image
    chain = estimate_plan(_plan(Step("upscale_builtin", {"scale": 2}), Step("denoise_builtin")),
                          (1000, 1000), device_kind="cpu", threads=1)
    alone = estimate_plan(_plan(Step("denoise_builtin")), (1000, 1000), device_kind="cpu",
                          threads=1)
    assert chain.steps[1].seconds == pytest.approx(4 * alone.steps[0].seconds)


def test_memory_is_not_below_what_whole_jobs_measured_nor_far_above():
    """Peak resident memory of whole `mend restore --profile builtin` jobs (/usr/bin/time -f %M,
    one core, 2026-12-08; real photos resized to 12-64 MP: engine/estimate.py). The estimate
    was 1.3-1.4x the A and C jobs at 24-64 MP, 3.1-3.7x a B job whose detected mask is held
    back (the photo kept): it counted SAM's 1 GB and a whole-photo step for a detector that
    loads no model and hands its input on, and an inpainting step's buffers for a step that
    fills nothing."""
    memory = manifest_model_memory()
    a = _plan(Step("denoise_builtin", {"sigma": 5.75, "strength": 1.0}),
              Step("sharpen_builtin", {"strength": 0.35, "radius": 1.2}, enabled=False))
    c = _plan(Step("sharpen_builtin", {"strength": 0.4, "radius": 1.5}), label=Degradation.C)
    deblur = _plan(Step("deblur_builtin", {"length": 16.6, "angle": 0.0}), label=Degradation.C)
    b = _plan(Step("reflection_mask", {"detector": "builtin"}), Step("inpaint_builtin"),
              label=Degradation.B)
    d = _plan(Step("passthrough"), label=Degradation.D)
    for plan, (w, h), mask, measured in [
            (a, (4000, 3000), False, 1.190e9), (a, (5657, 4243), False, 1.720e9),
            (a, (9238, 6928), False, 3.479e9),
            (c, (4619, 2598), False, 1.165e9), (c, (6532, 3674), False, 1.694e9),
            (c, (10667, 6000), False, 3.453e9),
            (deblur, (5290, 2268), False, 1.245e9),
            (b, (4245, 2827), False, 0.813e9), (b, (6003, 3998), False, 0.969e9),
            (b, (9803, 6529), False, 1.507e9),
            # (the user's mask filled: the detector's 1.9 %, and one block of 30 % at 24 MP)
            (b, (4245, 2827), True, 1.297e9), (b, (6003, 3998), True, 2.357e9),
            (b, (9803, 6529), True, 4.167e9),
            (d, (4241, 2830), False, 0.739e9), (d, (9794, 6535), False, 1.365e9)]:
        est = estimate_plan(plan, (h, w), device_kind="cpu", threads=1, model_memory=memory,
                            installed=set(), mask=mask)
        assert est.peak_bytes >= 1.05 * measured, (plan, w, h, mask, est.peak_bytes)
        assert est.peak_bytes < 1.5 * measured, (plan, w, h, mask, est.peak_bytes)
        assert est.keeps_photo == (plan in (b, d) and not mask)
    # after the last step: the photo, the result and the guard's or the save's temporaries
    # (the guard weighs a filled mask too); an upscaled result is also brought back to the
    # photo's size for the guard
    px = 1_000_000
    assert finish_bytes(px, px) == 24 * px + 24 * px
    assert finish_bytes(px, px, mask=True) == 24 * px + 35 * px
    assert finish_bytes(px, 4 * px) == (1 + 4 + 1) * 12 * px + 24 * 4 * px


def test_inpainting_a_detected_mask_no_one_checked_costs_nothing_and_keeps_the_photo():
    """Without a mask of the job's, the inpainting steps fill only what a trained detector (the
    YOLO slot) found, or the glare detector's mask with ``fill_detected``: otherwise they hand
    the photo on (``reflection._hold_unchecked``), and a `builtin` class B job keeps the photo.
    Its estimate was the fill's: 26 s and 5.2 GB at 64 MP for a job of 0.5 s and 1.4 GB."""
    memory = manifest_model_memory()

    def est(*steps, mask=False, installed=frozenset()):
        return estimate_plan(_plan(*steps, label=Degradation.B), (4000, 6000),
                             device_kind="cpu", threads=1, model_memory=memory,
                             installed=installed, mask=mask)

    glare = Step("reflection_mask", {"detector": "builtin"})
    held = est(glare, Step("inpaint_builtin"))
    assert held.keeps_photo and not held.nothing_to_run
    assert [s.basis for s in held.steps] == ["reference", "off"]
    assert held.seconds == pytest.approx(held.steps[0].seconds) and held.basis == "reference"
    assert held.peak_bytes < PROCESS_BYTES + 24_000_000 * 24
    lama = est(Step("reflection_mask"), Step("inpaint_lama"), Step("dereflect_nafnet"))
    assert lama.steps[1].basis == "off" and not lama.keeps_photo  # (NAFNet changes it)
    for filled in (est(glare, Step("inpaint_builtin"), mask=True),
                   est(glare, Step("inpaint_builtin", {"fill_detected": True})),
                   est(Step("reflection_mask"), Step("inpaint_builtin"),
                       installed={"reflection-yolo"}),
                   est(Step("reflection_mask"), Step("inpaint_lama"), installed=None)):
        assert filled.steps[1].basis == "reference" and filled.steps[1].seconds > 0
        assert not filled.keeps_photo and filled.peak_bytes > 2 * held.peak_bytes
    # the job's mask: the mask step hands it on (no detector, no model), the fill counts
    given = est(Step("reflection_mask", {"detector": "sam"}), Step("inpaint_lama"), mask=True)
    assert given.steps[0].seconds == 0 and given.steps[1].seconds > 0
    found = est(Step("reflection_mask", {"detector": "sam"}),
                Step("inpaint_lama", {"fill_detected": True}))
    assert found.steps[0].seconds > 10 and found.steps[1].seconds == given.steps[1].seconds
    # a mask given to a plan that inpaints nothing is not used: the detector runs
    alone = est(Step("reflection_mask", {"detector": "sam"}), mask=True)
    assert alone.steps[0].seconds > 10 and alone.keeps_photo
    # an inpainting step with no mask step before it and no mask finds nothing to fill
    assert est(Step("inpaint_builtin")).steps[0].basis == "off"


def test_history_is_a_running_average_that_persists_and_survives_bad_files(tmp_path):
    path = tmp_path / "sub" / "costs.json"
    h = CostHistory(path)
    h.record("denoise_builtin", None, "cpu", 1, megapixels=1.0, seconds=2.0)
    h.record("denoise_builtin", None, "cpu", 1, megapixels=1.0, seconds=4.0)
    assert h.get("denoise_builtin", None, "cpu", 1) == pytest.approx(3.0)
    assert h.get("denoise_builtin", None, "cpu", 2) is None  # thread count is part of the key
    again = CostHistory(path)  # read back from the file
    assert again.get("denoise_builtin", None, "cpu", 1) == pytest.approx(3.0)
    # the average follows recent runs: old figures fade out
    for _ in range(40):
        again.record("denoise_builtin", None, "cpu", 1, megapixels=1.0, seconds=10.0)
    assert again.get("denoise_builtin", None, "cpu", 1) > 9.0
    path.write_text("{not json")
    broken = CostHistory(path)
    assert broken.get("denoise_builtin", None, "cpu", 1) is None
    broken.record("sharpen_builtin", None, "cpu", 1, megapixels=0.5, seconds=0.1)  # rewrites it
    assert json.loads(path.read_text())["steps"]
    # an unwritable location costs the history, never the job
    blocker = tmp_path / "file"
    blocker.write_text("x")
    CostHistory(blocker / "costs.json").record("sharpen_builtin", None, "cpu", 1, 1.0, 1.0)


def _photo(path: Path, h=120, w=160) -> Path:
    rng = np.random.default_rng(1)
    img = np.clip(0.5 + 0.1 * rng.standard_normal((h, w, 3)), 0, 1)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


def test_engine_learns_step_costs_from_runs_and_prepare_writes_nothing(tmp_path):
    src = _photo(tmp_path / "in.png")
    history = CostHistory(tmp_path / "costs.json")
    engine = Engine("cpu", history=history)
    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), label=Degradation.A,
                     profile="builtin", guard=False)
    prep = engine.prepare(req)
    assert not (tmp_path / "out").exists()
    assert prep.size == (120, 160) and prep.plan.label is Degradation.A
    assert prep.estimate.basis == "reference" and prep.estimate.seconds > 0
    result = engine.run(req)
    for rec in result.steps:
        rate = history.get(rec.name, None, "cpu", engine.device.threads)
        assert rate == pytest.approx(rec.seconds / (120 * 160 / 1e6), rel=1e-6)
    after = engine.prepare(req)
    assert after.estimate.basis == "measured"
    assert after.estimate.seconds == pytest.approx(sum(r.seconds for r in result.steps), rel=1e-6)


def test_prepare_names_the_models_a_forced_profile_lacks(tmp_path):
    src = _photo(tmp_path / "in.png")
    engine = Engine("cpu", history=CostHistory(None))
    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), label=Degradation.C,
                     profile="laptop")
    prep = engine.prepare(req)
    assert any("nafnet-gopro-w64" in w and "codeformer" in w for w in prep.warnings)
    assert not any("yunet" in w for w in prep.warnings)  # Haar stands in: optional
    data = prep.to_json()
    assert data["dry_run"] is True and data["plan"]["steps"][0]["name"] == "deblur_nafnet"
    assert data["estimate"]["steps"][0]["basis"] == "reference"


def test_cli_dry_run_prints_plans_and_estimates_and_writes_nothing(tmp_path):
    src = _photo(tmp_path / "in.png")
    out = tmp_path / "out"
    env = dict(os.environ, MEND_COST_HISTORY=str(tmp_path / "costs.json"))
    r = warm_cli.run(["restore", str(src), "--plan", "A", "--profile", "builtin", "--dry-run",
                      "-o", str(out), "--json"], env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert obj["dry_run"] and obj["label"] == "A" and obj["size"] == [120, 160]
    assert obj["estimate"]["seconds"] > 0 and obj["estimate"]["peak_bytes"] > 0
    assert not out.exists() and not (tmp_path / "costs.json").exists()


def test_face_and_inpainting_steps_cost_per_photo_not_per_megapixel(tmp_path):
    from engine.estimate import REFERENCE_CPU_S_PER_PHOTO

    plan = _plan(Step("deblur_nafnet"), Step("face_codeformer"), label=Degradation.C,
                 profile="laptop")
    small = estimate_plan(plan, (500, 500), device_kind="cpu", threads=1)
    big = estimate_plan(plan, (5000, 5000), device_kind="cpu", threads=1)
    assert small.steps[1].seconds == big.steps[1].seconds == \
        REFERENCE_CPU_S_PER_PHOTO["face_codeformer"]
    assert big.steps[0].seconds == pytest.approx(100 * small.steps[0].seconds)
    h = CostHistory(tmp_path / "c.json")
    h.record("face_codeformer", None, "cpu", 1, megapixels=1.0, seconds=3.0)
    again = estimate_plan(plan, (5000, 5000), device_kind="cpu", threads=1, history=h)
    assert again.steps[1].seconds == pytest.approx(3.0) and again.steps[1].basis == "measured"


# ------------------------------------------------------------- fixed + rate x megapixels (sizes)

TINY_MP = 100 * 75 / 1e6


def _denoise(h: CostHistory, size, device_kind="cpu"):
    return estimate_plan(_plan(Step("denoise_builtin")), size, device_kind=device_kind,
                         threads=1, history=h).steps[0]


def test_fast_small_runs_and_a_slow_big_run_predict_the_sizes_between_them(tmp_path):
    """Warm denoising in one engine on the quiet 2-core development machine (engine/estimate.py,
    2026-12-07): 100 x 75 px 0.017-0.028 s, 640 x 480 0.38-0.40 s, 2400 x 1800 (4.32 MP) 4.74 s,
    4000 x 3000 (12 MP) 12.8 s. As one running rate per megapixel, four small runs and the 12 MP
    one put the 4.32 MP photo at 10.1 s and the 12 MP photo itself at 28 s."""
    h = CostHistory(tmp_path / "c.json")
    for _ in range(5):  # (the first, short, is a cold run: replaced by the next)
        h.record("denoise_builtin", None, "cpu", 1, TINY_MP, 0.02)
    h.record("denoise_builtin", None, "cpu", 1, 12.0, 12.8)
    for h2 in (h, CostHistory(tmp_path / "c.json")):  # (and read back from the file)
        assert _denoise(h2, (3000, 4000)).seconds == pytest.approx(12.8, rel=0.01)
        # the line through both, fixed ~0.012 s + 1.07 s/MP, against what those sizes took
        assert _denoise(h2, (1800, 2400)).seconds == pytest.approx(4.74, rel=0.05)
        assert _denoise(h2, (480, 640)).seconds == pytest.approx(0.39, rel=0.15)
        assert _denoise(h2, (75, 100)).seconds == pytest.approx(0.02, rel=0.01)
        assert _denoise(h2, (1800, 2400)).basis == "measured"
    # beyond the largest size: on at its rate less the fixed part
    assert _denoise(h, (4000, 6000)).seconds == pytest.approx(25.6, rel=0.01)
    # a step's own average rate (what `get` says, and what older files hold) is kept
    assert h.get("denoise_builtin", None, "cpu", 1) == pytest.approx(
        0.02 / TINY_MP + (12.8 / 12.0 - 0.02 / TINY_MP) / 5)


def test_only_tiny_warm_runs_do_not_set_the_rate_of_a_large_photo(tmp_path):
    """A warm 100 x 75 px run is about half fixed (0.007-0.019 s of 0.017-0.028 s for
    denoising): with no other size, a 24 MP photo is its seconds once and the rest at the lower
    of its rate and the reference (160 s per megapixel below)."""
    h = CostHistory(tmp_path / "c.json")
    for _ in range(4):
        h.record("denoise_builtin", None, "cpu", 1, TINY_MP, 0.05)  # 6.7 s/MP
    ref = REFERENCE_CPU_S_PER_MP[("denoise_builtin", None)]
    big = _denoise(h, (4000, 6000))
    assert big.seconds == pytest.approx(0.05 + ref * (24.0 - TINY_MP))  # (160 s per MP)
    assert big.basis == "reference"
    assert _denoise(h, (75, 100)).seconds == pytest.approx(0.05)
    assert _denoise(h, (75, 100)).basis == "measured"
    # a tiny rate below the reference is the step's own (sharpening: ~0.07 s/MP here)
    for _ in range(3):
        h.record("sharpen_builtin", None, "cpu", 1, TINY_MP, 0.0005)
    sharpen = estimate_plan(_plan(Step("sharpen_builtin")), (4000, 6000), device_kind="cpu",
                            threads=1, history=h).steps[0]
    assert sharpen.seconds == pytest.approx(0.0005 / TINY_MP * 24.0)
    assert sharpen.basis == "measured"
    # with no reference (a GPU) its own rate is all there is
    for _ in range(3):
        h.record("denoise_builtin", None, "cuda", 1, TINY_MP, 0.05)
    assert _denoise(h, (4000, 6000), "cuda").seconds == pytest.approx(0.05 / TINY_MP * 24.0)


def test_one_size_of_long_runs_keeps_its_own_rate(tmp_path):
    """Long runs leave little room for a fixed part (``WARM_FIXED_S``): a machine slower than the
    reference keeps its own rate for larger photos, not the reference's."""
    h = CostHistory(tmp_path / "c.json")
    for _ in range(3):
        h.record("denoise_builtin", None, "cpu", 1, 12.0, 48.0)  # 4 s/MP; the reference: 3
    est = _denoise(h, (4000, 6000))
    assert est.seconds == pytest.approx(96.0, rel=0.002)
    assert est.seconds >= 96.0 - 2 * 0.1


def test_size_classes_stay_few_and_keep_the_smallest_and_largest(tmp_path):
    path = tmp_path / "c.json"
    h = CostHistory(path)
    h.record("s", None, "cpu", 1, 1.0, 1.01)
    h.record("s", None, "cpu", 1, 1.5, 1.51)  # (within 4x: one class, its averages)
    sizes = json.loads(path.read_text())["steps"]["s||cpu|1"]["sizes"]
    assert sizes == [[pytest.approx(1.25), pytest.approx(1.26), 2.0]]
    for mp in (0.001, 0.01, 0.05, 0.3, 3.0, 12.0, 50.0, 0.004, 7.0):
        h.record("s", None, "cpu", 1, mp, 0.01 + mp)
    sizes = json.loads(path.read_text())["steps"]["s||cpu|1"]["sizes"]
    assert len(sizes) <= CostHistory.MAX_SIZES
    assert all(b[0] / a[0] >= CostHistory.SIZE_RATIO for a, b in itertools.pairwise(sizes))
    assert sizes[0][0] < 0.01 and sizes[-1][0] > 20
    assert all(c[2] <= CostHistory.WINDOW for c in sizes)
    # (every run was on the line 0.01 s + 1 s/MP: merged classes stay on it)
    for mp in (0.002, 0.5, 24.0, 100.0):
        px = int(mp * 1e6)
        got = estimate_plan(_plan(Step("s")), (1, px), device_kind="cpu", threads=1,
                            history=CostHistory(path)).steps[0].seconds
        assert got == pytest.approx(0.01 + mp, rel=0.2), mp


def test_history_files_without_size_classes_still_estimate_and_stay_readable(tmp_path):
    """A file written before size classes (and one with damaged classes) estimates with its
    average rate; the entries written now keep ``s_per_mp`` and ``n``, all an older Mend reads."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"version": 1, "steps": {
        "denoise_builtin||cpu|1": {"s_per_mp": 2.0, "n": 3.0},
        "sharpen_builtin||cpu|1": {"s_per_mp": 0.1, "n": 1.0, "sizes": [[1.0, "x", 1.0]]},
        "upscale_builtin||cpu|1": {"s_per_mp": 0.2, "n": 1.0, "sizes": [[0.0, 1.0, 1.0]]},
        "deblur_builtin||cpu|1": {"s_per_mp": 0.3, "n": 1.0, "sizes": "many"}}}))
    h = CostHistory(path)
    assert _denoise(h, (4000, 6000)).seconds == pytest.approx(48.0)
    for name, rate in (("sharpen_builtin", 0.1), ("upscale_builtin", 0.2),
                       ("deblur_builtin", 0.3)):
        est = estimate_plan(_plan(Step(name, {"scale": 1})), (1000, 1000), device_kind="cpu",
                            threads=1, history=h)
        assert est.steps[0].seconds == pytest.approx(rate) and est.basis == "measured"
    h.record("denoise_builtin", None, "cpu", 1, TINY_MP, 0.02)  # (a cold run: not averaged)
    h.record("denoise_builtin", None, "cpu", 1, 12.0, 15.0)
    entry = json.loads(path.read_text())["steps"]["denoise_builtin||cpu|1"]
    assert entry["n"] == 4.0 and entry["s_per_mp"] == pytest.approx(2.0 + (1.25 - 2.0) / 4)
    assert entry["sizes"] == [[12.0, 15.0, 1.0]]
    assert _denoise(h, (4000, 6000)).seconds == pytest.approx(30.0, rel=0.01)


def test_a_history_without_a_file_keeps_every_step_it_recorded():
    """(``MEND_COST_HISTORY=""`` and snapshots: each record read "the file" afresh and lost
    every other entry.)"""
    h = CostHistory(None)
    h.record("denoise_builtin", None, "cpu", 1, 1.0, 2.0)
    h.record("sharpen_builtin", None, "cpu", 1, 1.0, 0.1)
    h.record("denoise_builtin", None, "cpu", 1, 2.0, 4.0)
    assert h.get("denoise_builtin", None, "cpu", 1) == pytest.approx(2.0)
    assert h.get("sharpen_builtin", None, "cpu", 1) == pytest.approx(0.1)
    snap = h.snapshot()
    snap.record("sharpen_builtin", None, "cpu", 1, 1.0, 0.3)
    assert snap.get("denoise_builtin", None, "cpu", 1) == pytest.approx(2.0)
    assert snap.get("sharpen_builtin", None, "cpu", 1) == pytest.approx(0.2)
    assert h.get("sharpen_builtin", None, "cpu", 1) == pytest.approx(0.1)  # (a copy)


def test_deblurring_far_beyond_its_largest_run_costs_at_least_the_reference_rate(tmp_path):
    """The built-in deblurring's seconds per megapixel grow with the photo (its whole-photo
    FFTs, at fast lengths): a real photo (HMD Nokia 8.3) resized to 671 x 447 px (0.3 MP)
    took 0.027-0.056 s (wall, 1 thread, warm), at 5290 x 2268 px (12 MP) 1.86-4.79 s, median
    2.41 (CPU; a machine shared with other work). Its small runs' rate (0.135 s/MP) put the
    12 MP photo at 1.6 s (0.67x); the reference rate beyond them, at 2.4 s."""
    h = CostHistory(tmp_path / "c.json")
    for s in (0.040, 0.039, 0.027, 0.056):  # (the first: cold, not averaged)
        h.record("deblur_builtin", None, "cpu", 1, 0.299937, s)
    ref = REFERENCE_CPU_S_PER_MP[("deblur_builtin", None)]
    plan = _plan(Step("deblur_builtin", {"length": 9.0, "angle": 20.0}), label=Degradation.C)
    big = estimate_plan(plan, (2268, 5290), device_kind="cpu", threads=1, history=h).steps[0]
    assert big.seconds >= ref * (2268 * 5290 / 1e6 - 0.299937)
    assert 0.85 <= big.seconds / 2.41 <= 1.3
    assert big.basis == "reference"
    # within four times the largest run its own rate stands (below the reference's here)
    near = estimate_plan(plan, (717, 1673), device_kind="cpu", threads=1, history=h).steps[0]
    assert near.seconds < ref * 717 * 1673 / 1e6
    assert near.basis == "measured"
    # with a run of the size itself, the runs tell it (no floor)
    for s in (2.41, 2.16, 2.49):
        h.record("deblur_builtin", None, "cpu", 1, 2268 * 5290 / 1e6, s)
    again = estimate_plan(plan, (2268, 5290), device_kind="cpu", threads=1, history=h).steps[0]
    assert again.seconds == pytest.approx(2.35, abs=0.15) and again.basis == "measured"


def test_sam_refining_the_mask_costs_its_pass_per_photo_when_the_step_will_run_it():
    """SAM's encoder sees every photo at 1024 px: its pass costs per photo
    (``SAM_PASS``), on top of the glare detector's per-megapixel figure, when the mask step
    will run it - chosen (``sam``), or for ``auto`` when installed - and none for the built-in
    detector, which loads no model either (its memory counted SAM's 1 GB before)."""
    from engine.estimate import MODEL_COST_RATIO, REFERENCE_CPU_S_PER_PHOTO, SAM_PASS

    memory = manifest_model_memory()
    glare = REFERENCE_CPU_S_PER_MP[("reflection_mask", None)]
    sam_s = REFERENCE_CPU_S_PER_PHOTO[SAM_PASS]

    def est(params, size=(1000, 1000), installed=None, threads=1, history=None):
        return estimate_plan(_plan(Step("reflection_mask", params), label=Degradation.B), size,
                             device_kind="cpu", threads=threads, model_memory=memory,
                             installed=installed, history=history)

    builtin = est({"detector": "builtin"})
    assert builtin.seconds == pytest.approx(glare)
    assert builtin.peak_bytes < PROCESS_BYTES + (200 << 20)  # (no model)
    sam = est({"detector": "sam"}, installed=set())  # (chosen: the job needs it installed)
    assert sam.seconds == pytest.approx(glare + sam_s) and sam.basis == "reference"
    assert sam.peak_bytes >= PROCESS_BYTES + (1000 << 20)
    # per photo: a 24 MP photo's pass costs what a 1 MP photo's does
    assert est({"detector": "sam"}, (4000, 6000)).seconds == pytest.approx(24 * glare + sam_s)
    assert est({"detector": "sam"}, threads=2).seconds == pytest.approx((glare + sam_s) / 2)
    slim = est({"detector": "sam", "sam_model": "slimsam-50"})
    assert slim.seconds == pytest.approx(glare + sam_s * MODEL_COST_RATIO["slimsam-50"])
    assert 0.3 < MODEL_COST_RATIO["slimsam-50"] < 0.8
    assert sam.peak_bytes - slim.peak_bytes == (1000 - 400) << 20
    # auto: SAM when installed (not known: counted); the YOLO slot likewise
    assert est({}, installed=set()).seconds == pytest.approx(glare)
    assert est({}, installed=set()).peak_bytes == builtin.peak_bytes
    assert est({}, installed={"sam-vit-base"}).seconds == pytest.approx(glare + sam_s)
    assert est({}).seconds == pytest.approx(glare + sam_s)
    assert est({}, installed={"slimsam-50"}).seconds == pytest.approx(glare)  # (not its SAM)
    assert est({"sam_model": "slimsam-50"}, installed={"slimsam-50"}).seconds == \
        pytest.approx(slim.seconds)
    yolo = est({}, installed={"reflection-yolo"})
    assert yolo.seconds == pytest.approx(glare) and yolo.peak_bytes > builtin.peak_bytes
    # from the runs here: the step's own seconds and SAM's pass, each its own entry; a SAM
    # that has not run here is ViT-B's measured pass times its share ("reference": derived)
    h = CostHistory(None)
    for _ in range(2):  # (the first of each a cold run; the second a warm one replacing it)
        h.record("reflection_mask", None, "cpu", 1, 1.0, 0.2)
        h.record(SAM_PASS, "sam-vit-base", "cpu", 1, 1.0, 12.0)
    measured = est({"detector": "sam"}, history=h)
    assert measured.seconds == pytest.approx(12.2) and measured.basis == "measured"
    derived = est({"detector": "sam", "sam_model": "slimsam-50"}, history=h)
    assert derived.seconds == pytest.approx(0.2 + 12.0 * MODEL_COST_RATIO["slimsam-50"])
    assert derived.basis == "reference"
    assert est({"detector": "builtin"}, history=h).seconds == pytest.approx(0.2)
    # a GPU: no figure until SAM has run there
    gpu = estimate_plan(_plan(Step("reflection_mask", {"detector": "sam"}),
                              label=Degradation.B), (1000, 1000), device_kind="cuda",
                        threads=1, history=h)
    assert gpu.seconds is None and gpu.basis == "unknown"


def test_the_laptop_chains_memory_is_not_below_what_their_jobs_measured():
    """`mend restore --profile laptop` of a 512 x 512 photo, the laptop's models at their real
    sizes with random weights (/usr/bin/time -f %M, one core, 2026-12-08): the estimates were
    0.70-0.83x the peaks - NAFNet, LaMa and CodeFormer's ``memory_mb`` were below what their
    steps add, and a model an earlier step loaded stays cached while the next one runs."""
    from engine.restore.profiles import build_plan

    memory = manifest_model_memory()
    for label, mask, measured in [(Degradation.A, False, 0.99), (Degradation.B, False, 2.46),
                                  (Degradation.B, True, 2.65), (Degradation.C, False, 2.43)]:
        est = estimate_plan(build_plan(label, "laptop", None), (512, 512), device_kind="cpu",
                            threads=1, model_memory=memory, installed=set(), mask=mask)
        assert 1.05 * measured < est.peak_bytes / 2**30 < 1.5 * measured, (label, mask, est)
    # the cached model: CodeFormer's step counts NAFNet's share beside its own memory
    c = _plan(Step("deblur_nafnet"), Step("face_codeformer"), label=Degradation.C)
    alone = _plan(Step("face_codeformer"), label=Degradation.C)
    both, one = (estimate_plan(p, (512, 512), device_kind="cpu", threads=1,
                               model_memory=memory) for p in (c, alone))
    assert both.peak_bytes - one.peak_bytes == memory["nafnet-gopro-w64"] // 2
