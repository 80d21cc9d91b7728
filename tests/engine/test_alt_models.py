"""The manifest's alternative models as choices of their steps: NAFNet GoPro w32 / REDS w64 for
``deblur_nafnet``, NAFNet SIDD w32 for ``dereflect_nafnet``, GFPGAN v1.4 for the face step,
SlimSAM-50 for the reflection mask's SAM. Tiny random models in the real release layouts go
through the real store, runtime and loaders (only the chosen model installed: the default
cannot have been loaded instead); the output of random weights means nothing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engine.api import Degradation, Diagnosis, JobRequest, OutputOptions, Plan, Step
from engine.devices import select_device
from engine.errors import EngineError, ModelMissing, UsageError
from engine.imageio import read_record
from engine.models.store import ModelStore
from engine.pipeline import Engine, plan_models
from engine.progress import Progress
from engine.restore.registry import StepContext, get_step
from tests.engine import test_pipeline
from tests.engine.test_pipeline import _DIAG, _fails_before_the_steps, _photo
from tests.model_helpers import install_test_model, make_runtime
from tests.tiny_models import (
    write_nafnet,
    write_nafnet_gopro,
    write_nafnet_gopro_w32,
    write_nafnet_reds,
    write_nafnet_sidd_w32,
    write_sam,
    write_slimsam,
)

torch.set_num_threads(1)

marks = test_pipeline.marks  # (the fixture: a step that says whether a job's steps ran)

FACE_PHOTO = "faces/CodeFormer__inputs__whole_imgs__03.jpg"  # one face (Haar finds it)

# (step, param, its choices, an alternative, the default)
CHOICES = [
    ("deblur_nafnet", "model", ("nafnet-gopro-w64", "nafnet-gopro-w32", "nafnet-reds-w64"),
     "nafnet-gopro-w32", "nafnet-gopro-w64"),
    ("dereflect_nafnet", "model", ("nafnet-sidd-w64", "nafnet-sidd-w32"), "nafnet-sidd-w32",
     "nafnet-sidd-w64"),
    ("face_codeformer", "model", ("codeformer", "gfpgan-v1.4"), "gfpgan-v1.4", "codeformer"),
    ("reflection_mask", "sam_model", ("sam-vit-base", "slimsam-50"), "slimsam-50",
     "sam-vit-base"),
]


def _ctx(runtime, tile=64):
    return StepContext(device=select_device("cpu"), progress=Progress(), runtime=runtime,
                       tile_size=tile)


def _run(engine, src, out, plan, **kw):
    return engine.run(JobRequest(src, OutputOptions(out_dir=out), plan=plan, diagnosis=_DIAG,
                                 profile=plan.profile, guard=False, **kw))


# ------------------------------------------------------------------ the choices themselves
@pytest.mark.parametrize("step,key,choices,alt,default", CHOICES)
def test_each_step_offers_its_models_with_the_old_one_as_default(step, key, choices, alt,
                                                                default):
    spec = get_step(step)
    assert spec.choices[key] == choices and spec.defaults[key] == default
    assert default in spec.models and alt not in spec.models  # (packs: the defaults)


@pytest.mark.parametrize("step,key,choices,alt,default", CHOICES)
@pytest.mark.parametrize("bad", ["nafnet-gopro-w16", "GFPGAN", "", 3])
def test_an_unknown_choice_is_a_usage_error_naming_the_choices(tmp_path, marks, step, key,
                                                              choices, alt, default, bad):
    """Before the step loads anything (an empty store) and before any step of the job runs:
    a plan is data the user may edit."""
    params = {key: bad, "detector": "sam"} if step == "reflection_mask" else {key: bad}
    said = f"step {step}: unknown {key} {bad!r}; choose one of {', '.join(choices)}"
    rt = make_runtime(ModelStore(tmp_path / "store"))
    img = np.full((64, 64, 3), 0.5, np.float32)
    with pytest.raises(UsageError) as by_step:
        get_step(step).fn(img, params, _ctx(rt))
    assert str(by_step.value) == said
    plan = Plan(Degradation.C, "laptop", (Step("marks"), Step(step, params)))
    with pytest.raises(UsageError) as up_front:
        plan_models(plan)
    assert str(up_front.value) == said
    err = _fails_before_the_steps(Engine("cpu", tile_size=64), _photo(tmp_path / "in.png"),
                                  tmp_path / "out", plan, marks, error=UsageError)
    assert str(err) == said


def test_sr_realesrgan_checks_its_model_the_same_way():
    """(Real-ESRGAN's choice was the first: it now uses the same check, and the plan editor
    offers all four of its models, not two.)"""
    spec = get_step("sr_realesrgan")
    assert spec.choices["model"] == ("realesr-general-x4v3", "realesrgan-x4plus",
                                     "realesrgan-x2plus", "realesrgan-x4plus-anime-6b")
    plan = Plan(Degradation.A, "laptop", (Step("sr_realesrgan", {"model": "x4"}),))
    with pytest.raises(UsageError, match="step sr_realesrgan: unknown model 'x4'; choose one "
                                         "of realesr-general-x4v3, realesrgan-x4plus"):
        plan_models(plan)
    ok = Plan(Degradation.A, "laptop", (Step("sr_realesrgan", {"model": "realesrgan-x2plus"}),))
    assert plan_models(ok) == ["realesrgan-x2plus"]


@pytest.mark.parametrize("step,key,choices,alt,default", CHOICES)
def test_the_plan_needs_the_chosen_model_not_the_default(step, key, choices, alt, default):
    params = {key: alt, "detector": "sam"} if step == "reflection_mask" else {key: alt}
    assert plan_models(Plan(Degradation.C, "laptop", (Step(step, params),))) == [alt]
    dflt = {"detector": "sam"} if step == "reflection_mask" else {}
    assert plan_models(Plan(Degradation.C, "laptop", (Step(step, dflt),))) == [default]


@pytest.mark.parametrize("step,key,choices,alt,default", CHOICES)
def test_a_missing_chosen_model_fails_the_job_before_any_step(tmp_path, marks, step, key,
                                                             choices, alt, default):
    """With the default installed and the alternative chosen: the usual ModelMissing naming
    the chosen one, with its ``mend models pull`` hint, the same error the step's load raises,
    before any step runs (the default being there does not count)."""
    builders = {"nafnet-gopro-w64": write_nafnet_gopro,
                "nafnet-sidd-w64": lambda d: write_nafnet(d, "NAFNet-SIDD-width64.pth"),
                "sam-vit-base": write_sam}
    store = (install_test_model(tmp_path / "store", default, builders[default](tmp_path / "b"))
             if default in builders else ModelStore(tmp_path / "store"))
    engine = Engine("cpu", store, tile_size=64)
    params = {key: alt, "detector": "sam"} if step == "reflection_mask" else {key: alt}
    plan = Plan(Degradation.C, "laptop", (Step("marks"), Step(step, params)))
    err = _fails_before_the_steps(engine, _photo(tmp_path / "in.png"), tmp_path / "out", plan,
                                  marks)
    assert err.model_ids == (alt,) and f"mend models pull {alt}" in str(err)
    with pytest.raises(ModelMissing) as by_load:
        engine.runtime.path(alt)
    assert str(err) == str(by_load.value)
    prepared = engine.prepare(JobRequest(_photo(tmp_path / "in.png"),
                                         OutputOptions(out_dir=tmp_path / "out"), plan=plan,
                                         diagnosis=_DIAG, profile="laptop"))
    assert any(alt in w and "not installed" in w for w in prepared.warnings)


# ------------------------------------------------------------------ NAFNet alternatives
@pytest.mark.parametrize("step,model_id,build", [
    ("deblur_nafnet", "nafnet-gopro-w32", write_nafnet_gopro_w32),
    ("deblur_nafnet", "nafnet-reds-w64", write_nafnet_reds),
    ("dereflect_nafnet", "nafnet-sidd-w32", write_nafnet_sidd_w32),
])
def test_a_nafnet_alternative_runs_through_the_store_and_is_recorded(tmp_path, step, model_id,
                                                                     build):
    """Only the alternative is installed (tiny, in its release file name): the job runs it,
    its record and the result's ``models`` name it, and the runtime loaded it."""
    files = build(tmp_path / "build", seed=2, enc_blk_nums=(1,), dec_blk_nums=(1,))
    store = install_test_model(tmp_path / "store", model_id, files)
    engine = Engine("cpu", store, tile_size=64)
    src = _photo(tmp_path / "in.png")
    plan = Plan(Degradation.C, "laptop", (Step(step, {"model": model_id}),))
    res = _run(engine, src, tmp_path / "out", plan)
    assert [s.model for s in res.steps] == [model_id] and res.models == (model_id,)
    assert not res.kept_original
    rec = read_record(res.output)
    assert rec["models"] == [model_id] and rec["steps"][0]["model"] == model_id
    assert any(model_id in str(k) for k in engine.runtime.cached_keys())
    # the same step with its default: that model is not installed
    with pytest.raises(ModelMissing):
        _run(engine, src, tmp_path / "out2", Plan(Degradation.C, "laptop", (Step(step),)))


def test_dereflect_at_strength_0_still_checks_its_model_but_needs_none():
    plan = Plan(Degradation.B, "laptop",
                (Step("dereflect_nafnet", {"model": "nafnet-sidd-w32", "strength": 0}),))
    assert plan_models(plan) == []
    bad = Plan(Degradation.B, "laptop",
               (Step("dereflect_nafnet", {"model": "w32", "strength": 0}),))
    with pytest.raises(UsageError, match="nafnet-sidd-w64, nafnet-sidd-w32"):
        plan_models(bad)


# ------------------------------------------------------------------ SlimSAM
def _glare_scene(h=90, w=120):
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 3)
    img = 0.15 + 0.45 * (base - base.min()) / (base.max() - base.min())
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((yy - 40) ** 2 + (xx - 60) ** 2) / (2 * 6.0 ** 2))).astype(np.float32)
    return np.clip(img + 1.2 * blob[..., None], 0, 1).astype(np.float32)


def test_slimsam_refines_the_mask_and_selects_clicks_when_chosen(tmp_path):
    """SlimSAM-50 alone installed: the ``sam`` detector with ``sam_model`` slimsam-50 refines
    the glare boxes with it (and the job's models name it); ``auto`` uses it because it is
    installed; click-to-select takes it too."""
    from engine.restore.reflection import sam_mask_from_points

    store = install_test_model(tmp_path / "store", "slimsam-50",
                               write_slimsam(tmp_path / "slim"))
    engine = Engine("cpu", store, tile_size=64)
    img = _glare_scene()
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), np.round(img[..., ::-1] * 255).astype(np.uint8))
    diag = Diagnosis(Degradation.B, {"A": 0, "B": 1.0, "C": 0, "D": 0})
    plan = Plan(Degradation.B, "builtin", (
        Step("reflection_mask", {"detector": "sam", "sam_model": "slimsam-50"}),
        Step("inpaint_builtin", {"fill_detected": True})))
    res = engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), plan=plan,
                                diagnosis=diag, profile="builtin", guard=False))
    assert res.steps[0].model == "builtin:glare+slimsam-50"
    assert res.models == ("slimsam-50",)
    assert read_record(res.output)["models"] == ["slimsam-50"]
    keys = [k for k in engine.runtime.cached_keys() if k[0] == "sam"]
    assert keys and all(k[1] == "slimsam-50" for k in keys)

    ctx = _ctx(engine.runtime)
    out = get_step("reflection_mask").fn(img, {"sam_model": "slimsam-50"}, ctx)  # auto
    assert out.model == "builtin:glare+slimsam-50"
    # auto with the default SAM, which is not installed: the glare detector alone
    out = get_step("reflection_mask").fn(img, {}, _ctx(engine.runtime))
    assert out.model == "builtin:glare"

    m = sam_mask_from_points(img, [(60, 40)], [1], engine.runtime, model_id="slimsam-50")
    assert m.shape == img.shape[:2] and m.dtype == np.uint8
    with pytest.raises(ModelMissing, match="sam-vit-base"):  # (the default: not installed)
        sam_mask_from_points(img, [(60, 40)], [1], engine.runtime)


# ------------------------------------------------------------------ GFPGAN
def _read(path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img[..., ::-1].astype(np.float32) / 255.0


def _tiny_gfpgan():
    """GFPGANv1Clean at 1/16 of its width (spandrel's own loader builds only the full size:
    this one is called directly, not loaded from a file)."""
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(0)
    net = GFPGAN(out_size=512, num_style_feat=16, channel_multiplier=1, decoder_load_path=None,
                 fix_decoder=False, num_mlp=1, input_is_latent=True, different_w=True,
                 narrow=1 / 16, sft_half=True).eval()
    with torch.no_grad():  # (its noise injection starts at 0, as a trained one is not)
        for name, p in net.named_parameters():
            if name.endswith(".weight") and p.shape == (1,):
                p.fill_(0.5)
    return net


def test_gfpgan_restores_a_crop_in_its_range_and_the_same_every_time():
    """GFPGAN's own inference draws its decoder's noise afresh at each call: the same face
    came out differently each time (a preview unlike its fix). The stored noise is used."""
    from engine.restore.face import gfpgan_fn

    net = _tiny_gfpgan()
    seen = []
    net.register_forward_pre_hook(lambda m, a: seen.append(float(a[0].min())))
    fn = gfpgan_fn(net, None)
    crop = np.random.default_rng(0).random((512, 512, 3)).astype(np.float32)
    a, b = fn(crop), fn(crop)
    assert a.shape == crop.shape and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert seen and min(seen) < -0.9  # the crop went in as [-1, 1]
    # (the library's default, randomize_noise=True, is not: what the fixed call avoids)
    x = torch.from_numpy(crop.transpose(2, 0, 1))[None] * 2 - 1
    with torch.inference_mode():
        r1, r2 = net(x, return_rgb=False)[0], net(x, return_rgb=False)[0]
    assert not torch.equal(r1, r2)


def test_the_face_step_runs_the_gfpgan_it_loads_and_says_fidelity_is_not_used(
        shared_images, monkeypatch):
    """The face step with ``model`` gfpgan-v1.4 loads that id, calls GFPGAN (not CodeFormer's
    ``weight``), and its record names it; the fidelity it was given is said to be unused.
    (The load is the tiny GFPGAN in a spandrel descriptor: spandrel builds only the full-size
    GFPGAN from a file - that path is the slow test below.)"""
    from spandrel import ImageModelDescriptor
    from spandrel.architectures.GFPGAN import GFPGANArch

    from engine.restore import face

    net = _tiny_gfpgan()
    desc = ImageModelDescriptor(net, net.state_dict(), architecture=GFPGANArch(),
                                purpose="FaceSR", tags=[], supports_half=False,
                                supports_bfloat16=True, scale=1, input_channels=3,
                                output_channels=3, call_fn=lambda m, x: m(x)[0])
    calls = []
    net.register_forward_hook(lambda m, a, k, out: calls.append(sorted(k)), with_kwargs=True)

    class Runtime:
        def __init__(self):
            self.asked = []

        def load_image_model(self, model_id):
            self.asked.append(model_id)
            return desc

        def is_available(self, model_id):
            return False

    monkeypatch.setattr(face, "codeformer_fn", None)  # (never called for GFPGAN)
    rt = Runtime()
    img = _read(shared_images / FACE_PHOTO)
    out = get_step("face_codeformer").fn(img, {"model": "gfpgan-v1.4", "fidelity": 0.3},
                                         _ctx(rt))
    assert rt.asked == ["gfpgan-v1.4"] and calls == [["randomize_noise", "return_rgb"]]
    assert out.model == "gfpgan-v1.4"
    assert "1 face(s)" in out.notes
    assert "restored by gfpgan-v1.4 (fidelity 0.3 not used: it is CodeFormer's)" in out.notes


def test_face_weights_of_the_other_architecture_are_refused():
    """A GFPGAN file under the codeformer id (or the reverse) would be called with the other
    model's call: said instead."""
    from spandrel.architectures.GFPGAN import GFPGANArch

    from engine.restore.face import face_model_fn

    class Desc:
        architecture = GFPGANArch()
        model = _tiny_gfpgan()

    with pytest.raises(EngineError, match="codeformer: its weights are a GFPGAN model, not "
                                          "CodeFormer"):
        face_model_fn(Desc(), "codeformer", None, 0.7)
    assert callable(face_model_fn(Desc(), "gfpgan-v1.4", None, 0.7))


def test_a_face_step_choosing_gfpgan_without_it_fails_on_a_face(shared_images, tmp_path):
    rt = make_runtime(ModelStore(tmp_path / "store"))
    img = _read(shared_images / FACE_PHOTO)
    with pytest.raises(ModelMissing, match="gfpgan-v1.4"):
        get_step("face_codeformer").fn(img, {"model": "gfpgan-v1.4"}, _ctx(rt))


@pytest.mark.slow
def test_gfpgan_v14_real_architecture_through_the_store(shared_images, tmp_path):
    """spandrel builds GFPGAN v1.4 at its full size whatever the file holds (no size is read
    from the weights), so it cannot be made tiny: random weights at the real size (87 M
    parameters, fp16 on disk as big-lama's, ~170 MB), saved as the release's
    ``{"params_ema": ...}`` and loaded by the real store, runtime and spandrel; one face takes
    ~6-8 s on one loaded CPU core, so this runs with MEND_SLOW=1."""
    from spandrel.architectures.GFPGAN import GFPGAN

    from engine.restore.face import detect_faces, face_matrix, paste_region

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GFPGAN().state_dict().items()}
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(s, generator=g) * 0.02).half() for k, s in shapes.items()}
    src = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": sd}, src)
    rt = make_runtime(install_test_model(tmp_path / "store", "gfpgan-v1.4",
                                         {"GFPGANv1.4.pth": src}))
    img = _read(shared_images / FACE_PHOTO)
    out = get_step("face_codeformer").fn(img, {"model": "gfpgan-v1.4"}, _ctx(rt))
    assert out.model == "gfpgan-v1.4" and "fidelity 0.7 not used" in out.notes
    assert out.image.shape == img.shape and np.isfinite(out.image).all()
    assert rt.load_image_model("gfpgan-v1.4").architecture.id == "GFPGAN"
    faces, _ = detect_faces(img, None)
    x0, y0, x1, y1 = paste_region(face_matrix(faces[0]), img.shape[:2])
    outside = np.ones(img.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(out.image[outside], img[outside])


# ------------------------------------------------------------------ the estimate
def test_the_estimate_follows_the_chosen_model(tmp_path):
    """Memory: the chosen model's manifest ``memory_mb``; time: the default's reference times
    the chosen model's measured share (``MODEL_COST_RATIO``); each model keyed on its own in
    the step history."""
    from engine.estimate import (
        MODEL_COST_RATIO,
        REFERENCE_CPU_S_PER_MP,
        REFERENCE_CPU_S_PER_PHOTO,
        estimate_plan,
        manifest_model_memory,
        step_model,
    )

    memory = manifest_model_memory()

    def est(step, params, size=(1000, 1000)):
        return estimate_plan(Plan(Degradation.C, "laptop", (Step(step, params),)), size,
                             device_kind="cpu", threads=1, model_memory=memory)

    w64, w32 = est("deblur_nafnet", {}), est("deblur_nafnet", {"model": "nafnet-gopro-w32"})
    assert w64.steps[0].model == "nafnet-gopro-w64" and w32.steps[0].model == "nafnet-gopro-w32"
    assert w64.seconds == pytest.approx(REFERENCE_CPU_S_PER_MP[("deblur_nafnet", None)])
    assert w32.seconds == pytest.approx(w64.seconds * MODEL_COST_RATIO["nafnet-gopro-w32"])
    assert 0.2 < MODEL_COST_RATIO["nafnet-gopro-w32"] < 0.6
    assert w64.peak_bytes - w32.peak_bytes == memory["nafnet-gopro-w64"] - \
        memory["nafnet-gopro-w32"]  # (manifest memory_mb)
    assert est("deblur_nafnet", {"model": "nafnet-reds-w64"}).seconds == w64.seconds
    sidd = est("dereflect_nafnet", {}), est("dereflect_nafnet", {"model": "nafnet-sidd-w32"})
    assert sidd[0].peak_bytes - sidd[1].peak_bytes == memory["nafnet-sidd-w64"] - \
        memory["nafnet-sidd-w32"]
    assert sidd[1].seconds < 0.5 * sidd[0].seconds
    cf, gf = est("face_codeformer", {}), est("face_codeformer", {"model": "gfpgan-v1.4"})
    assert cf.seconds == REFERENCE_CPU_S_PER_PHOTO["face_codeformer"]
    assert gf.seconds == pytest.approx(cf.seconds * MODEL_COST_RATIO["gfpgan-v1.4"])
    sam, slim = (est("reflection_mask", {"detector": "sam"}),
                 est("reflection_mask", {"detector": "sam", "sam_model": "slimsam-50"}))
    assert sam.peak_bytes - slim.peak_bytes == (1000 - 400) << 20
    # (an unknown model is no error here: the estimate is shown while a plan is edited)
    assert step_model(Step("deblur_nafnet", {"model": "nope"})) == "nope"
    assert est("deblur_nafnet", {"model": "nope"}).seconds == w64.seconds


def test_the_history_learns_each_model_apart_and_keeps_the_defaults_old_runs(tmp_path):
    """Runs recorded before the step had a model choice (no model in their key) are the
    default's; a chosen model with no runs here is the default's measured figure times its
    share ("reference": derived); once it has run, its own figure."""
    from engine.estimate import MODEL_COST_RATIO, CostHistory, estimate_plan

    hist = CostHistory(tmp_path / "costs.json")
    for _ in range(3):  # (warm runs of the default, as written before the choice existed)
        hist.record("deblur_nafnet", None, "cpu", 1, 1.0, 30.0)

    def est(params):
        return estimate_plan(Plan(Degradation.C, "laptop", (Step("deblur_nafnet", params),)),
                             (1000, 1000), device_kind="cpu", threads=1, history=hist).steps[0]

    w64 = est({})
    assert (w64.seconds, w64.basis) == (pytest.approx(30.0), "measured")
    w32 = est({"model": "nafnet-gopro-w32"})
    assert w32.seconds == pytest.approx(30.0 * MODEL_COST_RATIO["nafnet-gopro-w32"])
    assert w32.basis == "reference"
    for _ in range(3):
        hist.record("deblur_nafnet", "nafnet-gopro-w32", "cpu", 1, 1.0, 12.0)
    assert (est({"model": "nafnet-gopro-w32"}).seconds, est({}).seconds) == (
        pytest.approx(12.0), pytest.approx(30.0))
    for _ in range(3):  # the default's own runs now: they, not the old ones
        hist.record("deblur_nafnet", "nafnet-gopro-w64", "cpu", 1, 1.0, 20.0)
    assert est({}).seconds == pytest.approx(20.0)


def test_a_run_records_its_time_under_the_model_that_ran(tmp_path):
    from engine.estimate import CostHistory

    files = write_nafnet_gopro_w32(tmp_path / "build", enc_blk_nums=(1,), dec_blk_nums=(1,))
    store = install_test_model(tmp_path / "store", "nafnet-gopro-w32", files)
    engine = Engine("cpu", store, tile_size=64)
    engine.history = CostHistory(tmp_path / "costs.json")
    src = _photo(tmp_path / "in.png")
    plan = Plan(Degradation.C, "laptop", (Step("deblur_nafnet", {"model": "nafnet-gopro-w32"}),))
    for i in range(2):  # (the first run loads the model: not recorded)
        _run(engine, src, tmp_path / f"out{i}", plan)
    assert engine.history.get("deblur_nafnet", "nafnet-gopro-w32", "cpu",
                              engine.device.threads) is not None
    assert engine.history.get("deblur_nafnet", None, "cpu", engine.device.threads) is None
