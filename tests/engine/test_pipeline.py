"""Engine.run end to end: tiny models through the real store, the guard, cancel, masks."""
from __future__ import annotations

import hashlib
import threading
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from engine.api import Degradation, Diagnosis, JobRequest, OutputOptions, Plan, Step
from engine.errors import Cancelled, ModelMissing
from engine.imageio import load_photo, read_record
from engine.pipeline import Engine
from engine.progress import CancelToken, Progress
from engine.understand import measure as M
from tests.model_helpers import install_stand_in, install_test_model
from tests.tiny_models import write_nafnet_gopro


def _photo(path, h=96, w=128, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx / w), (yy / h), 0.5 + 0.3 * np.sin(xx / 5.0)], -1)
    img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture()
def nafnet_store(tmp_path):
    """Chain C's laptop models: a tiny NAFNet and a stand-in CodeFormer (never loaded: the
    photos have no face), as a run needs every model of its plan installed."""
    store = install_test_model(tmp_path / "store", "nafnet-gopro-w64",
                               write_nafnet_gopro(tmp_path, seed=0))
    return install_stand_in(tmp_path / "store", "codeformer", store)


def test_chain_c_laptop_runs_the_stored_model_and_records_it(tmp_path, nafnet_store):
    src = _photo(tmp_path / "in.png")
    before = _sha(src)
    engine = Engine("cpu", nafnet_store, tile_size=64)
    seen = []
    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), label=Degradation.C,
                     profile="laptop", guard=False)
    res = engine.run(req, Progress(lambda f, m: seen.append(f)))
    assert [s.name for s in res.steps] == ["deblur_nafnet", "face_codeformer"]
    assert res.steps[0].model == "nafnet-gopro-w64" and res.models[0] == "nafnet-gopro-w64"
    assert all(s.seconds >= 0 for s in res.steps)
    assert seen == sorted(seen) and seen[-1] == 1.0  # monotonic progress to the end
    assert _sha(src) == before
    rec = read_record(res.output)
    assert rec["models"] == ["nafnet-gopro-w64"] and rec["profile"] == "laptop"
    assert load_photo(res.output).pixels.shape == (96, 128, 3)


def test_guard_keeps_the_original_when_a_result_is_worse(tmp_path, nafnet_store, monkeypatch):
    from engine.restore import guard

    src = _photo(tmp_path / "in.png")
    engine = Engine("cpu", nafnet_store, tile_size=64)
    monkeypatch.setattr(guard, "check", lambda b, a, mask=None, cancel_check=None, icc=None: guard.GuardVerdict(
        False, "it lost detail", {}))
    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), label=Degradation.C,
                     profile="laptop")
    res = engine.run(req)
    assert any("kept the original" in w and "lost detail" in w for w in res.warnings)
    # the original's bytes are what was written
    assert _sha(res.output) == _sha(src)


def test_cancel_mid_chain_writes_nothing(tmp_path, nafnet_store):
    src = _photo(tmp_path / "in.png", 200, 260)
    engine = Engine("cpu", nafnet_store, tile_size=64)
    token = CancelToken()

    def cb(fraction, message):
        if "deblur" in message or fraction > 0.3:
            token.cancel()

    out = tmp_path / "out"
    req = JobRequest(src, OutputOptions(out_dir=out), label=Degradation.C, profile="laptop")
    with pytest.raises(Cancelled):
        engine.run(req, Progress(cb, token))
    assert not out.exists() or not any(out.iterdir())


def test_missing_model_is_a_clear_error(tmp_path):
    src = _photo(tmp_path / "in.png")
    engine = Engine("cpu")
    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "o"), label=Degradation.C,
                     profile="laptop")
    with pytest.raises(ModelMissing, match="nafnet-gopro-w64"):
        engine.run(req)


# ------------------------------------------------------------------ models checked first
_DIAG = Diagnosis(Degradation.A, {"A": 0.7, "B": 0.1, "C": 0.1, "D": 0.1})


@pytest.fixture()
def marks(monkeypatch):
    """A step ``marks`` (no model) that records each run: put first in a plan, it says
    whether the job got as far as running its steps."""
    from engine.restore import registry
    from engine.restore.registry import StepOutput, StepSpec

    ran: list[tuple[int, int]] = []

    def fn(image, params, ctx):
        ran.append(image.shape[:2])
        return StepOutput(image, "test:marks")

    monkeypatch.setitem(registry.STEPS, "marks", StepSpec("marks", fn, (), "test step", {}))
    return ran


def _fails_before_the_steps(engine, src, out, plan, marks, region=None, error=ModelMissing):
    """The ModelMissing (or ``error``) the job raised, after checking that no step ran and
    nothing was written."""
    said: list[str] = []
    with pytest.raises(error) as e:
        engine.run(JobRequest(src, OutputOptions(out_dir=out), plan=plan, diagnosis=_DIAG,
                              profile=plan.profile, guard=False, region=region),
                   Progress(lambda f, m: said.append(m)))
    assert marks == [] and not [m for m in said if m.startswith("step ")], said
    assert not out.exists() or not any(out.iterdir())
    return e.value


def test_a_missing_model_fails_the_job_before_any_step_runs(tmp_path, marks):
    """text_fusion's Real-ESRGAN on the laptop profile with an empty store: the steps before
    it ran (an audit saw ~60 s of PP-OCR detection, the text step's own first part) and only
    then did the job fail. Now the plan's models are checked first: the same error the step
    gives when it loads the model, before any step, for a fix and a preview; with the model
    installed (tiny) the same plan runs."""
    from engine.restore.registry import StepContext, get_step
    from tests.tiny_models import write_compact

    src = _photo(tmp_path / "in.png")
    out = tmp_path / "out"
    plan = Plan(Degradation.A, "laptop",
                (Step("marks"), Step("text_fusion", {"model": "realesr-general-x4v3"})))
    engine = Engine("cpu", tile_size=64)
    err = _fails_before_the_steps(engine, src, out, plan, marks)
    preview = _fails_before_the_steps(engine, src, out, plan, marks, region=(8, 8, 72, 64))
    # the step's own message (what sr_realesrgan raises when it loads that model)
    ctx = StepContext(device=engine.device, progress=Progress(), runtime=engine.runtime)
    with pytest.raises(ModelMissing) as by_step:
        get_step("sr_realesrgan").fn(np.zeros((8, 8, 3), np.float32),
                                     {"model": "realesr-general-x4v3"}, ctx)
    assert str(err) == str(preview) == str(by_step.value)
    assert err.model_ids == ("realesr-general-x4v3",)
    assert "mend models pull realesr-general-x4v3" in str(err)
    # (a dry run names it too: the text step's chosen model was not counted)
    prepared = engine.prepare(JobRequest(src, OutputOptions(out_dir=out), plan=plan,
                                         diagnosis=_DIAG, profile="laptop"))
    assert any("realesr-general-x4v3" in w and "not installed" in w for w in prepared.warnings)

    store = install_test_model(tmp_path / "store", "realesr-general-x4v3",
                               write_compact(tmp_path / "build", num_feat=8, num_conv=2))
    res = Engine("cpu", store, tile_size=64).run(
        JobRequest(src, OutputOptions(out_dir=out), plan=plan, diagnosis=_DIAG,
                   profile="laptop", guard=False))
    assert marks == [(96, 128)] and [s.name for s in res.steps] == ["marks", "text_fusion"]


def test_every_model_a_plan_lacks_is_named_before_any_step_runs(tmp_path, marks):
    """Chain B on the laptop profile, an empty store: the glare detector ran, LaMa held its
    unchecked mask, and NAFNet failed alone; LaMa's absence came out on the next fix. Now both
    are named at once, before the first step; the optional SAM and YOLO are not asked for, and
    an added model step counts whatever the plan's profile (an edited built-in plan)."""
    src = _photo(tmp_path / "in.png")
    out = tmp_path / "out"
    engine = Engine("cpu", tile_size=64)
    b = Plan(Degradation.B, "laptop", (Step("marks"), Step("reflection_mask", {"detector": "auto"}),
                                       Step("inpaint_lama"), Step("dereflect_nafnet")))
    err = _fails_before_the_steps(engine, src, out, b, marks)
    assert err.model_ids == ("big-lama", "nafnet-sidd-w64")
    assert "mend models pull big-lama nafnet-sidd-w64" in str(err)
    edited = Plan(Degradation.A, "builtin", (Step("marks"), Step("denoise_builtin"),
                                             Step("deblur_nafnet")))
    assert _fails_before_the_steps(engine, src, out, edited, marks).model_ids == (
        "nafnet-gopro-w64",)
    # a disabled step's model, and models a step does without (SAM, YOLO, YuNet), do not count
    ok = Plan(Degradation.B, "quality", (Step("marks"), Step("reflection_mask"),
                                         Step("inpaint_builtin"),
                                         Step("dereflect_nafnet", enabled=False)))
    res = engine.run(JobRequest(src, OutputOptions(out_dir=out), plan=ok, diagnosis=_DIAG,
                                profile="quality", guard=False))
    assert marks and [s.name for s in res.steps] == ["marks", "reflection_mask",
                                                     "inpaint_builtin"]


def test_a_damaged_model_is_reported_before_any_step_runs(tmp_path, nafnet_store, marks):
    """A model file damaged since it was installed: the store's own error (which says how to
    repair it), before the steps, as the step would raise it when loading."""
    from engine.errors import ChecksumMismatch

    weights = nafnet_store.file_path("nafnet-gopro-w64", "NAFNet-GoPro-width64.pth")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    src = _photo(tmp_path / "in.png")
    out = tmp_path / "out"
    plan = Plan(Degradation.C, "laptop", (Step("marks"), Step("deblur_nafnet")))
    with pytest.raises(ChecksumMismatch, match="nafnet-gopro-w64"):
        Engine("cpu", nafnet_store).run(JobRequest(src, OutputOptions(out_dir=out), plan=plan,
                                                   diagnosis=_DIAG, profile="laptop",
                                                   guard=False))
    assert marks == [] and (not out.exists() or not any(out.iterdir()))


def test_a_step_at_strength_0_needs_and_loads_no_model(tmp_path, marks):
    """dereflect_nafnet at strength 0 hands its input on untouched, but the plan still counted
    NAFNet: a photographer who turned the step down to 0 because the model is missing got
    "model 'nafnet-sidd-w64' is not installed" instead of a result. Now the job runs, the step
    says it was skipped, and NAFNet is neither loaded nor named among the result's models; at
    any strength above 0 it is still required before any step."""
    from engine.pipeline import plan_models

    src = _photo(tmp_path / "in.png")
    out = tmp_path / "out"
    engine = Engine("cpu", tile_size=64)  # (an empty store)

    def plan(strength):
        return Plan(Degradation.B, "laptop", (
            Step("marks"), Step("reflection_mask", {"detector": "builtin"}),
            Step("inpaint_builtin"), Step("sharpen_builtin", {"strength": 0.5}),
            Step("dereflect_nafnet", {"strength": strength})))

    for off in (0, 0.0, -0.5):  # (the step clips its strength to 0..1)
        assert plan_models(plan(off)) == []
        prepared = engine.prepare(JobRequest(src, OutputOptions(out_dir=out), plan=plan(off),
                                             diagnosis=_DIAG, profile="laptop"))
        assert not [w for w in prepared.warnings if "not installed" in w], prepared.warnings
    res = engine.run(JobRequest(src, OutputOptions(out_dir=out), plan=plan(0), diagnosis=_DIAG,
                                profile="laptop", guard=False))
    step = {s.name: s for s in res.steps}["dereflect_nafnet"]
    assert step.notes.startswith("skipped: strength 0") and step.model == "builtin:off"
    assert "nafnet-sidd-w64" not in res.models and not res.kept_original
    record = read_record(res.output)  # (what the file says was done: no NAFNet, no model)
    assert record["models"] == [] and record["steps"][-1]["model"] == "builtin:off"
    assert not [k for k in engine.runtime.cached_keys() if "nafnet-sidd-w64" in str(k)]
    marks.clear()
    for on in (0.05, 1.0, None):  # (None: the step's default, 1.0)
        p = plan(on) if on is not None else replace(
            plan(0), steps=plan(0).steps[:4] + (Step("dereflect_nafnet"),))
        assert plan_models(p) == ["nafnet-sidd-w64"]
        err = _fails_before_the_steps(engine, src, tmp_path / "none", p, marks)
        assert err.model_ids == ("nafnet-sidd-w64",)


def test_an_optional_model_chosen_explicitly_is_required_before_any_step(tmp_path, marks):
    """The glare detector's ``detector`` param set to "sam" or "yolo" (the plan editor's
    choice; no profile plans either), or the face step's ``face_detector`` to "yunet": those
    models were dropped from the plan's needs with the optional ones, so a job lacking the one
    its user chose ran the steps before it and then failed (or, SAM with no glare found,
    silently did without it). Now such a job fails before any step with the error the step
    gives when it loads the model; "auto" (the default) still falls back quietly, and a given
    mask, which the step uses instead of detecting, needs no detector."""
    from engine.imageio import save_mask
    from engine.pipeline import plan_models
    from engine.restore.registry import StepContext, get_step

    src = _photo(tmp_path / "in.png")
    out, none = tmp_path / "out", tmp_path / "none"  # (the jobs that run, those that fail)
    engine = Engine("cpu", tile_size=64)

    def glare(detector):
        return Plan(Degradation.B, "builtin", (Step("marks"),
                                               Step("reflection_mask", {"detector": detector}),
                                               Step("inpaint_builtin")))

    ctx = StepContext(device=engine.device, progress=Progress(), runtime=engine.runtime)
    # YOLO: the error the step raises when it loads the slot (which says how to fill it)
    with pytest.raises(ModelMissing) as by_step:
        get_step("reflection_mask").fn(np.zeros((8, 8, 3), np.float32), {"detector": "yolo"},
                                       ctx)
    for detector in ("yolo", "YOLO"):  # (the step reads it in any case)
        err = _fails_before_the_steps(engine, src, none, glare(detector), marks)
        assert err.model_ids == ("reflection-yolo",) and str(err) == str(by_step.value)
        assert "MEND_REFLECTION_YOLO" in str(err)
    # SAM: the store's error for it, as load_sam gets it
    with pytest.raises(ModelMissing) as by_load:
        engine.runtime.path("sam-vit-base")
    err = _fails_before_the_steps(engine, src, none, glare("sam"), marks)
    assert err.model_ids == ("sam-vit-base",) and str(err) == str(by_load.value)
    assert "mend models pull sam-vit-base" in str(err)
    # with a missing model after it: both named at once
    both = replace(glare("sam"), steps=glare("sam").steps + (Step("deblur_nafnet"),))
    err = _fails_before_the_steps(engine, src, none, both, marks)
    assert err.model_ids == ("sam-vit-base", "nafnet-gopro-w64")
    prepared = engine.prepare(JobRequest(src, OutputOptions(out_dir=out), plan=glare("sam"),
                                         diagnosis=_DIAG, profile="builtin"))
    assert any("sam-vit-base" in w and "not installed" in w for w in prepared.warnings)
    # the default preference: the built-in glare detector, quietly
    for detector in ("auto", "builtin"):
        assert plan_models(glare(detector)) == []
        res = engine.run(JobRequest(src, OutputOptions(out_dir=out), plan=glare(detector),
                                    diagnosis=_DIAG, profile="builtin", guard=False))
        assert marks and res.steps[1].model == "builtin:glare"
        marks.clear()
    # a mask given to the job: no detector runs, none is needed
    mask = np.zeros((96, 128), np.uint8)
    mask[30:50, 40:70] = 255
    res = engine.run(JobRequest(src, OutputOptions(out_dir=out), plan=glare("sam"),
                                diagnosis=_DIAG, profile="builtin", guard=False,
                                mask_path=save_mask(mask, tmp_path / "mask.png")))
    assert res.steps[1].model == "user:mask" and res.steps[2].notes == "masked regions filled"
    marks.clear()

    # YuNet chosen for the faces (CodeFormer installed: a stand-in, never loaded here)
    store = install_stand_in(tmp_path / "store", "codeformer")
    engine = Engine("cpu", store, tile_size=64)
    faces = Plan(Degradation.C, "laptop", (Step("marks"), Step(
        "face_codeformer", {"face_detector": "yunet"})))
    ctx = StepContext(device=engine.device, progress=Progress(), runtime=engine.runtime)
    with pytest.raises(ModelMissing) as by_step:
        get_step("face_codeformer").fn(np.zeros((8, 8, 3), np.float32),
                                       {"face_detector": "yunet"}, ctx)
    err = _fails_before_the_steps(engine, src, none, faces, marks)
    assert err.model_ids == ("yunet-2023mar",) and str(err) == str(by_step.value)
    auto = Plan(Degradation.C, "laptop", (Step("marks"), Step("face_codeformer")))
    assert plan_models(auto) == ["codeformer"]
    res = engine.run(JobRequest(src, OutputOptions(out_dir=out), plan=auto, diagnosis=_DIAG,
                                profile="laptop", guard=False))
    assert marks and res.steps[1].model == "builtin:haar"


def _paddleocr_module(installed: bool):
    """What ``import paddleocr`` finds: nothing, or a PaddleOCR that finds no text."""
    import importlib.machinery
    import types

    if not installed:
        return None  # (sys.modules[name] = None: the import fails, find_spec finds nothing)

    class PaddleOCR:
        def predict(self, bgr):
            return []

    mod = types.ModuleType("paddleocr")
    mod.__spec__ = importlib.machinery.ModuleSpec("paddleocr", None)
    mod.PaddleOCR = PaddleOCR
    return mod


def test_the_text_step_needs_the_models_of_the_ocr_backend_it_uses(tmp_path, marks,
                                                                    monkeypatch):
    """The text step's ``ocr`` param "paddleocr": the plan required ``pp-ocr`` (rapidocr's
    bundled models, which that backend never loads) and not PaddleOCR, so a job without
    PaddleOCR ran the steps before it and then failed, and one with PaddleOCR but without
    rapidocr failed on a model it does not use. Now the backend's own needs count: rapidocr's
    ``pp-ocr``, or the paddleocr package, checked before any step with the step's own error;
    an unknown backend is refused before any step too."""
    import sys

    from engine.errors import UsageError
    from engine.models import store as store_mod
    from engine.pipeline import plan_models
    from engine.restore.text import PaddleOCRBackend
    from tests.tiny_models import write_compact

    src = _photo(tmp_path / "in.png")
    out, none = tmp_path / "out", tmp_path / "none"  # (the jobs that run, those that fail)
    store = install_test_model(tmp_path / "store", "realesr-general-x4v3",
                               write_compact(tmp_path / "build", num_feat=8, num_conv=2))
    engine = Engine("cpu", store, tile_size=64)

    def text(ocr):
        return Plan(Degradation.A, "laptop", (Step("marks"), Step(
            "text_fusion", {"ocr": ocr, "model": "realesr-general-x4v3"})))

    for ocr in ("auto", "rapidocr", "RapidOCR"):
        assert plan_models(text(ocr)) == ["pp-ocr", "realesr-general-x4v3"]
    for ocr in ("paddleocr", "PaddleOCR"):
        assert plan_models(text(ocr)) == ["realesr-general-x4v3"]

    # PaddleOCR not installed: the step's own error, before any step
    monkeypatch.setitem(sys.modules, "paddleocr", _paddleocr_module(False))
    with pytest.raises(ModelMissing) as by_step:
        PaddleOCRBackend()
    err = _fails_before_the_steps(engine, src, none, text("paddleocr"), marks)
    assert str(err) == str(by_step.value) and "pip install paddleocr" in str(err)
    prepared = engine.prepare(JobRequest(src, OutputOptions(out_dir=out),
                                         plan=text("paddleocr"), diagnosis=_DIAG,
                                         profile="laptop"))
    assert any("the run would stop" in w and "paddleocr is not installed" in w
               for w in prepared.warnings), prepared.warnings
    err = _fails_before_the_steps(engine, src, none, text("tesseract"), marks, error=UsageError)
    assert "unknown OCR backend 'tesseract'" in str(err)

    # PaddleOCR installed, rapidocr not: the job runs (pp-ocr is not asked for)
    monkeypatch.setitem(sys.modules, "paddleocr", _paddleocr_module(True))
    monkeypatch.setattr(store_mod, "_package_present",
                        lambda spec: spec.extra.get("package") != "rapidocr")
    assert not engine.runtime.is_available("pp-ocr")
    res = engine.run(JobRequest(src, OutputOptions(out_dir=out), plan=text("paddleocr"),
                                diagnosis=_DIAG, profile="laptop", guard=False))
    assert marks and res.steps[1].model == "paddleocr:pp-ocr"
    assert res.steps[1].notes == "no text found"
    marks.clear()
    # (rapidocr's plan does need it)
    assert _fails_before_the_steps(engine, src, none, text("auto"), marks).model_ids == ("pp-ocr",)


@pytest.mark.parametrize("slot", ["best.pt", "best.onnx"])
def test_an_explicit_yolo_detector_it_cannot_run_fails_before_any_step(tmp_path, marks,
                                                                       monkeypatch, slot):
    """The glare detector's ``detector`` "yolo" with weights in its slot that it cannot run
    (a .pt pickle, which Mend never loads, or an ONNX export without the ultralytics package):
    the slot counted as installed, so the job ran the steps before it and failed in the mask
    step. Now it fails before any step with the step's own error (a dry run says the run would
    stop); "auto" still falls back to the built-in detector with a warning, and a given mask,
    which replaces the detector, needs neither."""
    import sys

    from engine.errors import EngineError
    from engine.imageio import save_mask
    from engine.models.store import ModelStore
    from engine.restore.registry import StepContext, get_step

    weights = tmp_path / slot
    weights.write_bytes(b"not really weights")
    monkeypatch.setenv("MEND_REFLECTION_YOLO", str(weights))
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # (not installed, whatever the venv)
    src = _photo(tmp_path / "in.png")
    out, none = tmp_path / "out", tmp_path / "none"  # (the jobs that run, those that fail)
    engine = Engine("cpu", ModelStore(tmp_path / "store"), tile_size=64)
    assert engine.runtime.is_available("reflection-yolo")
    said = "ONNX export only" if slot == "best.pt" else "'ultralytics' package"

    def glare(detector):
        return Plan(Degradation.B, "builtin", (Step("marks"),
                                               Step("reflection_mask", {"detector": detector}),
                                               Step("inpaint_builtin")))

    ctx = StepContext(device=engine.device, progress=Progress(), runtime=engine.runtime)
    with pytest.raises(EngineError, match=said) as by_step:
        get_step("reflection_mask").fn(np.zeros((8, 8, 3), np.float32), {"detector": "yolo"},
                                       ctx)
    for detector in ("yolo", "YOLO"):
        err = _fails_before_the_steps(engine, src, none, glare(detector), marks,
                                      error=EngineError)
        assert type(err) is type(by_step.value) and str(err) == str(by_step.value)
    prepared = engine.prepare(JobRequest(src, OutputOptions(out_dir=out), plan=glare("yolo"),
                                         diagnosis=_DIAG, profile="builtin"))
    assert f"the run would stop: {by_step.value}" in prepared.warnings, prepared.warnings
    # "auto": the built-in detector, and the job's warnings say why the slot was not used
    res = engine.run(JobRequest(src, OutputOptions(out_dir=out), plan=glare("auto"),
                                diagnosis=_DIAG, profile="builtin", guard=False))
    why = "not an ONNX export" if slot == "best.pt" else "ultralytics is not installed"
    assert marks and res.steps[1].model == "builtin:glare"
    assert [w for w in res.warnings if "reflection-yolo" in w and why in w], res.warnings
    marks.clear()
    # a mask given to the job: no detector runs
    mask = np.zeros((96, 128), np.uint8)
    mask[30:50, 40:70] = 255
    request = JobRequest(src, OutputOptions(out_dir=out), plan=glare("yolo"), diagnosis=_DIAG,
                         profile="builtin", guard=False,
                         mask_path=save_mask(mask, tmp_path / "mask.png"))
    assert not [w for w in engine.prepare(request).warnings if "would stop" in w]
    res = engine.run(request)
    assert marks and res.steps[2].notes == "masked regions filled"


def test_user_mask_drives_chain_b_and_is_saved_with_the_job(tmp_path):
    from engine.imageio import load_mask, save_mask

    src = _photo(tmp_path / "in.png")
    mask = np.zeros((96, 128), np.uint8)
    mask[30:50, 40:70] = 255
    mpath = save_mask(mask, tmp_path / "mask.png")
    engine = Engine("cpu")
    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), label=Degradation.B,
                     profile="builtin", mask_path=mpath, guard=False)
    res = engine.run(req)
    assert [s.name for s in res.steps] == ["reflection_mask", "inpaint_builtin"]
    saved = load_mask(res.artifacts["mask_path"])
    assert np.array_equal(saved, mask)
    a, b = load_photo(src).pixels, load_photo(res.output).pixels
    outside = np.ones_like(mask, bool)
    outside[24:56, 34:76] = False  # the mask plus its feathered border
    assert np.abs(a - b)[outside].max() <= 1 / 255 + 1e-6
    assert np.abs(a - b)[mask > 0].max() > 0


def test_edited_plan_runs_as_given(tmp_path):
    src = _photo(tmp_path / "in.png")
    plan = Plan(Degradation.A, "builtin", (Step("denoise_builtin", {"strength": 1.0}),
                                            Step("sharpen_builtin", enabled=False)))
    res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path / "o"), plan=plan,
                                       guard=False))
    assert [s.name for s in res.steps] == ["denoise_builtin"]
    assert res.label is Degradation.A and res.diagnosis.label is Degradation.A


def test_what_loading_gave_up_is_in_the_job_warnings(tmp_path):
    """A JPEG whose EXIF block cannot be parsed loads (the EXIF is dropped): the job result and
    the dry run say so, not only the log."""
    src = tmp_path / "in.jpg"
    arr = np.asarray(Image.open(_photo(tmp_path / "in.png")).convert("RGB"))
    Image.fromarray(arr).save(src, quality=95, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff")
    assert "dropped unreadable EXIF data" in load_photo(src).info["warnings"]
    eng = Engine("cpu")
    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "o"), label=Degradation.D)
    assert "dropped unreadable EXIF data" in eng.prepare(req).warnings
    res = eng.run(req)
    assert res.warnings.count("dropped unreadable EXIF data") == 1
    assert res.output.is_file() and load_photo(res.output).exif is None


def test_masks_of_two_results_with_one_stem_do_not_replace_each_other(tmp_path):
    """x.png and x.jpg (a RAW+JPEG-like pair) restored with chain B into one folder."""
    from engine.imageio import load_mask, save_mask

    png = _photo(tmp_path / "x.png")
    Image.open(png).convert("RGB").save(tmp_path / "x.jpg", quality=95)
    masks = []
    for i, src in enumerate((png, tmp_path / "x.jpg")):
        m = np.zeros((96, 128), np.uint8)
        m[10 + 40 * i:30 + 40 * i, 20:60] = 255
        masks.append(m)
        req = JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), label=Degradation.B,
                         profile="builtin", guard=False,
                         mask_path=save_mask(m, tmp_path / f"m{i}.png"))
        res = Engine("cpu").run(req)
        assert np.array_equal(load_mask(res.artifacts["mask_path"]), m)
        masks.append(res.artifacts["mask_path"])
    assert masks[1] != masks[3] and np.array_equal(load_mask(masks[1]), masks[0])


def test_without_metadata_a_kept_original_is_written_afresh(tmp_path):
    """Nothing to fix normally copies the original's bytes; asked for no metadata, the camera
    and GPS EXIF must go (a privacy promise), while the ICC profile stays (colours)."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "gps.jpg"
    exif = Image.Exif()
    exif[0x010F] = "Camera Maker"
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0)}
    Image.open(_photo(tmp_path / "in.png")).convert("RGB").save(src, quality=95,
                                                               exif=exif.tobytes(), icc_profile=icc)
    engine = Engine("cpu")
    kept = engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "a"), label=Degradation.D))
    assert _sha(kept.output) == _sha(src)  # with metadata: the original's bytes
    res = engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "b", keep_metadata=False),
                                label=Degradation.D))
    out = Image.open(res.output)
    assert not out.getexif() and out.info.get("icc_profile") == icc
    assert np.abs(load_photo(res.output).pixels - load_photo(src).pixels).max() < 0.05


def test_a_cancel_that_arrives_while_saving_finishes_the_job(tmp_path):
    """Once the result is being written the job completes: never a file on disk behind a job
    reported as cancelled (the app would show 'cancelled' and a re-run would make _1 copies)."""
    src = _photo(tmp_path / "in.png")
    token = CancelToken()

    def cb(fraction, message):
        if message == "saving":
            token.cancel()

    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), label=Degradation.A,
                     profile="builtin", guard=False)
    res = Engine("cpu").run(req, Progress(cb, token))
    assert res.output.is_file() and list((tmp_path / "out").iterdir()) == [res.output]


def test_the_regression_guard_is_said_while_it_runs(tmp_path):
    """The guard measures the photo and the result (~9 s at 64.5 MP) with the bar at the
    steps' end and the last step's message ("denoised") standing; it says what it does."""
    src = _photo(tmp_path / "in.png")
    seen = []
    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), label=Degradation.C,
                     profile="builtin")
    Engine("cpu").run(req, Progress(lambda f, m: seen.append((f, m))))
    messages = [m for _, m in seen]
    assert messages.index("checking the result") == messages.index("saving") - 1
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)
    # (no guard asked for: not said)
    seen.clear()
    Engine("cpu").run(replace(req, guard=False), Progress(lambda f, m: seen.append((f, m))))
    assert "checking the result" not in [m for _, m in seen]


def test_a_mask_of_another_shape_is_refused(tmp_path):
    from engine.errors import BadImage
    from engine.imageio import save_mask

    src = _photo(tmp_path / "in.png")  # 128 x 96, landscape
    engine = Engine("cpu")
    for shape, ok in (((48, 64), True), ((97, 128), True), ((128, 96), False), ((20, 1000), False)):
        req = JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), label=Degradation.B,
                         profile="builtin", guard=False,
                         mask_path=save_mask(np.ones(shape, bool), tmp_path / "m.png"))
        if ok:
            assert engine.run(req).output.is_file()
        else:
            with pytest.raises(BadImage, match=f"the mask is {shape[1]}×{shape[0]} px but the "
                                               "photo is 128×96"):
                engine.run(req)


def test_a_step_that_skipped_its_work_does_not_teach_the_time_estimate(tmp_path):
    from engine.estimate import CostHistory

    hist = CostHistory(tmp_path / "history.json")
    src = _photo(tmp_path / "in.png")
    plan = Plan(Degradation.A, "builtin", (Step("denoise_builtin", {"strength": 1.0}),
                                            Step("sharpen_builtin", {"strength": 0.0})))
    res = Engine("cpu", history=hist).run(JobRequest(
        src, OutputOptions(out_dir=tmp_path / "o"), plan=plan, guard=False))
    notes = {s.name: s.notes for s in res.steps}
    assert notes["sharpen_builtin"].startswith("skipped")
    assert hist.get("sharpen_builtin", None, "cpu", Engine("cpu").device.threads) is None
    ran = not notes["denoise_builtin"].startswith("skipped")
    assert (hist.get("denoise_builtin", None, "cpu", Engine("cpu").device.threads) is not None) \
        == ran


def test_tile_sizes_that_would_never_finish_are_refused():
    from engine.errors import UsageError

    for bad in (0, -5, 8, 100_000):
        with pytest.raises(UsageError, match="tile size must be between 64 and 8192"):
            Engine("cpu", tile_size=bad)
    assert Engine("cpu", tile_size=64).tile_size == 64


def test_colour_hidden_under_transparent_pixels_does_not_leak_into_the_visible_edge(tmp_path):
    """An RGBA cut-out stores black under alpha 0; sharpening must not darken its rim."""
    from engine.pipeline import fill_transparent

    h, w = 96, 128
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (yy - 48) ** 2 + (xx - 64) ** 2 < 36 ** 2
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[inside] = (200, 180, 160, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    photo = load_photo(tmp_path / "cut.png")
    filled = fill_transparent(photo.pixels, photo.alpha)
    assert np.array_equal(filled[inside], photo.pixels[inside])  # visible pixels untouched
    assert np.abs(filled[~inside] - np.array([200, 180, 160]) / 255).max() < 2 / 255
    assert fill_transparent(photo.pixels, None) is photo.pixels
    plan = Plan(Degradation.A, "builtin", (Step("sharpen_builtin", {"strength": 1.0}),))
    res = Engine("cpu").run(JobRequest(tmp_path / "cut.png", OutputOptions(out_dir=tmp_path / "o"),
                                       plan=plan, guard=False))
    out = np.asarray(Image.open(res.output).convert("RGBA")).astype(int)
    assert np.array_equal(out[..., 3], rgba[..., 3])
    # a flat colour sharpened stays that colour, up to the rim
    assert np.abs(out[inside][:, :3] - (200, 180, 160)).max() <= 2


def test_what_the_output_format_cannot_hold_is_said_and_handled(tmp_path):
    """A WebP named .jpg asked for as JPEG is re-encoded, not copied; transparency in a JPEG is
    flattened onto white (with a warning); 16 bits asked of a JPEG is said; a JPEG kept as it
    is with --bit-depth 16 stays the original's bytes; XMP too large for a JPEG is said."""
    rgb = np.asarray(Image.open(_photo(tmp_path / "in.png")).convert("RGB"))
    Image.fromarray(rgb).save(tmp_path / "web.jpg", "WEBP", quality=90)  # misnamed
    engine = Engine("cpu")
    jpeg = OutputOptions(out_dir=tmp_path / "o", format="jpeg")
    res = engine.run(JobRequest(tmp_path / "web.jpg", jpeg, label=Degradation.D))
    assert Image.open(res.output).format == "JPEG"

    rgba = np.zeros((96, 128, 4), np.uint8)
    rgba[:, 64:] = (30, 60, 90, 255)  # the left half is transparent (black underneath)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    res = engine.run(JobRequest(tmp_path / "cut.png", replace(jpeg, bit_depth=16),
                                label=Degradation.D))
    out = np.asarray(Image.open(res.output).convert("RGB")).astype(int)
    assert out[:, :56].min() >= 250 and np.abs(out[:, 72:] - (30, 60, 90)).max() <= 3
    assert any("filled with white" in w for w in res.warnings), res.warnings
    assert any("JPEG holds 8 bits" in w for w in res.warnings), res.warnings

    Image.fromarray(rgb).save(tmp_path / "cam.jpg", quality=90)
    res = engine.run(JobRequest(tmp_path / "cam.jpg", OutputOptions(out_dir=tmp_path / "p",
                                                                    bit_depth=16),
                                label=Degradation.D))
    assert _sha(res.output) == _sha(tmp_path / "cam.jpg")

    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
           '02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/'
           'elements/1.1/"><dc:subject><rdf:Bag>'
           + "".join(f"<rdf:li>keyword{i}</rdf:li>" for i in range(4000))
           + "</rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>").encode()
    Image.fromarray(rgb).save(tmp_path / "tagged.png", pnginfo=_xmp_pnginfo(xmp))
    assert len(load_photo(tmp_path / "tagged.png").xmp) > 65000
    res = engine.run(JobRequest(tmp_path / "tagged.png", jpeg, label=Degradation.D))
    assert any("too large for a JPEG" in w for w in res.warnings), res.warnings


def _xmp_pnginfo(xmp: bytes):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    return info


def test_a_plan_needing_more_memory_than_the_machine_has_is_refused_before_it_runs(
        tmp_path, monkeypatch):
    import engine.devices as dev
    from engine.errors import OutOfMemory

    src = _photo(tmp_path / "in.png")
    engine = Engine("cpu")
    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "o"), label=Degradation.A,
                     profile="builtin", guard=False)
    need = engine.prepare(req).estimate.peak_bytes
    monkeypatch.setattr(dev, "system_memory", lambda: need - 1)
    monkeypatch.setattr(dev, "available_memory", lambda: need - 1)
    with pytest.raises(OutOfMemory, match="needs about .* more than this machine's"):
        engine.run(req)
    assert not (tmp_path / "o").exists()
    assert any(w.startswith("the run would stop: this plan needs about")
               for w in engine.prepare(req).warnings)
    # nothing to run needs nothing more; enough RAM but not that much free: a warning
    d = engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "d"), label=Degradation.D))
    assert d.output.is_file()
    monkeypatch.setattr(dev, "system_memory", lambda: need * 10)
    from engine.estimate import PROCESS_BYTES

    # the estimate counts the running process itself: what must be free is the rest
    monkeypatch.setattr(dev, "available_memory", lambda: need - PROCESS_BYTES - 1)
    res = engine.run(req)
    assert res.output.is_file() and any("free now" in w for w in res.warnings), res.warnings
    monkeypatch.setattr(dev, "available_memory", lambda: need - PROCESS_BYTES + 1)
    res = engine.run(req)
    assert not any("free now" in w for w in res.warnings), res.warnings


def test_auto_profile_is_kept_when_only_optional_models_are_missing(tmp_path, monkeypatch):
    """The audit's case: YuNet (0.2 MB, a face detector the C chain replaces by OpenCV's Haar
    cascade) missing from an otherwise complete laptop install made ``auto`` drop to the
    built-in methods for every photo. Optional models do not decide the profile; required
    ones still do."""
    from engine.restore.profiles import OPTIONAL_MODELS, PROFILE_MODELS

    engine = Engine("cpu")
    installed = set(PROFILE_MODELS["laptop"]) - {"yunet-2023mar"}
    monkeypatch.setattr(type(engine.runtime), "is_available",
                        lambda self, mid: mid in installed)
    assert engine.resolve_profile("auto") == ("laptop", [])
    assert "yunet-2023mar" in OPTIONAL_MODELS
    installed.discard("big-lama")
    profile, warnings = engine.resolve_profile("auto")
    assert profile == "builtin" and "big-lama" in warnings[0]
    assert "yunet" not in warnings[0]


# -- a cancel reaches inside the diagnosis (Engine.diagnose, and Engine.run's own diagnosis) ---


def _cancel_in_jpeg(monkeypatch, token, ran):
    real = M.jpeg_estimate

    def jpeg(*a, **k):
        ran.append("jpeg")
        th = threading.Thread(target=token.cancel)
        th.start()
        th.join()
        return real(*a, **k)

    real_view = M.view_of
    monkeypatch.setattr(M, "jpeg_estimate", jpeg)
    monkeypatch.setattr(M, "view_of", lambda *a, **k: (ran.append("view"), real_view(*a, **k))[1])


@pytest.mark.parametrize("how", ["diagnose", "run"])
def test_engine_cancel_reaches_inside_the_analyzer(tmp_path, monkeypatch, how):
    src = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255)
                    .astype(np.uint8)).save(src)
    token, ran = CancelToken(), []
    _cancel_in_jpeg(monkeypatch, token, ran)
    engine = Engine("cpu")
    with pytest.raises(Cancelled):
        if how == "diagnose":
            engine.diagnose(src, "builtin", progress=Progress(token=token))
        else:
            engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), profile="builtin",
                                  backend="builtin"), Progress(token=token))
    assert ran == ["jpeg"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    monkeypatch.undo()
    engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), profile="builtin",
                          backend="builtin"), Progress())
    assert any((tmp_path / "out").iterdir())


def test_a_plan_that_keeps_the_photo_needs_its_estimate_unless_the_file_is_written_afresh(
        tmp_path, monkeypatch):
    """A `builtin` class B plan whose detected mask no one has checked changes nothing (the
    inpainting step holds it back): the photo is kept and its file copied. Its estimate is the
    photo and the detector's mask (it was the fill's); written afresh in another format, the
    save counts too, as for a class D photo."""
    import engine.devices as dev
    from engine.estimate import PROCESS_BYTES, finish_bytes

    src = _photo(tmp_path / "in.png")
    engine = Engine("cpu")
    plan = Plan(Degradation.B, "builtin", (Step("reflection_mask", {"detector": "builtin"}),
                                           Step("inpaint_builtin")))
    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "o"), plan=plan, profile="builtin")
    est = engine.prepare(req).estimate
    assert est.keeps_photo and not est.nothing_to_run
    assert est.peak_bytes < PROCESS_BYTES + finish_bytes(96 * 128, 96 * 128)
    monkeypatch.setattr(dev, "system_memory", lambda: est.peak_bytes)
    monkeypatch.setattr(dev, "available_memory", lambda: est.peak_bytes)
    assert not any("would stop" in w for w in engine.prepare(req).warnings)
    res = engine.run(req)
    assert res.kept_original and res.output.read_bytes() == src.read_bytes()  # (copied)
    afresh = JobRequest(src, OutputOptions(out_dir=tmp_path / "j", format="jpeg"), plan=plan,
                        profile="builtin")
    assert any(w.startswith("the run would stop: this plan needs about")
               for w in engine.prepare(afresh).warnings)
