from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest
import torch

from engine.api import Degradation, Diagnosis
from engine.devices import select_device
from engine.errors import EngineError
from engine.models.store import ModelStore
from engine.progress import Progress
from engine.restore.reflection import (
    PASTE_DILATE,
    detect_glare,
    dilate_mask,
    inpaint_regions,
    mask_regions,
    paste_alpha,
    sam_mask_from_points,
)
from engine.restore.registry import StepContext, get_step
from tests.model_helpers import install_test_model, make_runtime
from tests.tiny_models import write_big_lama, write_nafnet_sidd, write_sam

torch.set_num_threads(1)


def _ctx(runtime=None, mask=None, progress=None, tile=64):
    diag = Diagnosis(Degradation.B, {"A": 0, "B": 1.0, "C": 0, "D": 0})
    return StepContext(device=select_device("cpu"), progress=progress or Progress(),
                       runtime=runtime, diagnosis=diag, mask=mask, tile_size=tile)


def _textured(h=120, w=160, seed=0):
    """A mid-tone, coloured, textured scene (no highlights)."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 3)
    base = (base - base.min()) / (base.max() - base.min())
    img = 0.15 + 0.45 * base
    img[..., 0] *= 0.9
    return img.astype(np.float32)


def _with_glare(img, cy, cx, r):
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (r / 2) ** 2))).astype(np.float32)
    return np.clip(img + 1.2 * blob[..., None], 0, 1).astype(np.float32), blob > 0.5


def test_builtin_glare_detector_finds_a_synthetic_highlight():
    img, truth = _with_glare(_textured(), 50, 100, 14)
    mask = detect_glare(img)
    assert mask.dtype == np.uint8 and mask.shape == img.shape[:2]
    found = mask > 0
    assert found[truth].mean() > 0.9  # the highlight core is covered
    assert found.mean() < 0.1  # and not much else
    ys, xs = np.nonzero(found)
    assert abs(ys.mean() - 50) < 6 and abs(xs.mean() - 100) < 6
    assert not detect_glare(_textured(seed=3)).any()


def test_reflection_mask_step_builtin_and_user_mask():
    img, _ = _with_glare(_textured(), 60, 60, 12)
    ctx = _ctx()
    out = get_step("reflection_mask").fn(img, {"detector": "builtin"}, ctx)
    assert out.image is img and out.model == "builtin:glare"
    assert ctx.mask is not None and ctx.mask.any()
    assert ctx.artifacts["mask"] is ctx.mask
    user = np.zeros(img.shape[:2], np.uint8)
    user[5:10, 5:10] = 255
    ctx = _ctx(mask=user)
    out = get_step("reflection_mask").fn(img, {"detector": "builtin"}, ctx)
    assert out.model == "user:mask"
    np.testing.assert_array_equal(ctx.mask, user)  # never replaced


def test_regions_and_paste_alpha():
    m = np.zeros((100, 100), np.uint8)
    m[10:20, 10:20] = 255
    m[15:25, 22:30] = 255  # overlaps the first crop: merged
    m[80:90, 80:90] = 255
    rects = mask_regions(m, context=1.0, min_context=8)
    assert len(rects) == 2
    a = paste_alpha(m)
    assert (a[m > 0] == 1).all()
    assert (a[dilate_mask(m, PASTE_DILATE) == 0] == 0).all()
    assert ((a > 0) & (a < 1)).any()  # feathered band


def _two_hole_mask(shape):
    """Two reflections far enough apart to be inpainted as separate crops (width >= 200)."""
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, (30, 40), 9, 255, -1)
    cv2.rectangle(m, (165, 50), (180, 70), 255, -1)
    return m


def test_inpaint_builtin_changes_only_the_dilated_mask():
    img = _textured(100, 210)
    mask = _two_hole_mask(img.shape[:2])
    hole = img.copy()
    hole[mask > 0] = 1.0  # a burnt-out reflection to remove
    ctx = _ctx(mask=mask)
    out = get_step("inpaint_builtin").fn(hole, {}, ctx).image
    outside = dilate_mask(mask, PASTE_DILATE) == 0
    np.testing.assert_array_equal(out[outside], hole[outside])
    assert np.abs(out[mask > 0] - img[mask > 0]).mean() < 0.25  # filled from the surroundings
    assert out[mask > 0].mean() < 0.8


@pytest.mark.parametrize("kind", ["0/1 labels", "true/false"])
def test_label_and_boolean_masks_mark_what_to_remove(kind):
    """A 0/1 label PNG (what labelling tools export) or a boolean mask used to read as empty
    (compared with 127): nothing was removed and the step said "the mask is empty"."""
    img = _textured(100, 210)
    mask = _two_hole_mask(img.shape[:2])
    given = (mask > 0).astype(np.uint8) if kind == "0/1 labels" else mask > 0
    hole = img.copy()
    hole[mask > 0] = 1.0
    out = get_step("inpaint_builtin").fn(hole, {}, _ctx(mask=given))
    assert not out.notes.startswith("skipped")
    assert out.image[mask > 0].mean() < 0.8  # filled from the surroundings
    ctx = _ctx(mask=given)
    get_step("reflection_mask").fn(img, {}, ctx)
    assert (ctx.mask > 0).sum() == (mask > 0).sum()


def test_inpaint_steps_skip_an_empty_mask():
    img = _textured()
    for name in ("inpaint_builtin", "inpaint_lama"):
        out = get_step(name).fn(img, {}, _ctx(mask=np.zeros(img.shape[:2], np.uint8)))
        assert out.image is img and out.notes.startswith("skipped")


def test_inpaint_regions_crops_and_pads():
    img = _textured(90, 210)
    mask = _two_hole_mask(img.shape[:2])
    seen = []

    def fake(crop, m):
        seen.append((crop.shape, m.shape))
        assert crop.shape[0] % 8 == 0 and crop.shape[1] % 8 == 0
        return np.zeros_like(crop)

    out = inpaint_regions(img, mask, fake)
    assert len(seen) == 2  # one crop per region, not the whole photo
    assert all(s[0][0] * s[0][1] < img.shape[0] * img.shape[1] for s in seen)
    assert (out[mask > 0] == 0).all()


@pytest.fixture(scope="module")
def lama_runtime(tmp_path_factory):
    """big-lama at its real architecture (random weights, fp16 on disk to halve the file),
    installed under the real id and loaded through store + runtime + spandrel."""
    d = tmp_path_factory.mktemp("lama")
    files = write_big_lama(d)
    return make_runtime(install_test_model(d / "store", "big-lama", files))


def test_inpaint_lama_only_changes_pixels_inside_the_dilated_mask(lama_runtime):
    img = _textured(96, 210)
    mask = _two_hole_mask(img.shape[:2])
    ctx = _ctx(lama_runtime, mask=mask)
    out = get_step("inpaint_lama").fn(img, {}, ctx)
    assert out.model == "big-lama" and "2 region(s)" in out.notes
    res = out.image
    assert res.shape == img.shape and np.isfinite(res).all()
    outside = dilate_mask(mask, PASTE_DILATE) == 0
    np.testing.assert_array_equal(res[outside], img[outside])
    assert np.abs(res[mask > 0] - img[mask > 0]).max() > 1e-3  # the holes were repainted


@pytest.mark.parametrize("source,filled", [
    ("builtin:glare", False), ("builtin:glare+sam-vit-base", False),  # no one has checked it
    ("user:mask", True), ("reflection-yolo", True)])
def test_inpaint_lama_holds_back_a_mask_the_glare_detector_found_alone(lama_runtime, source,
                                                                         filled):
    """LaMa's fill is plausible, but a white wall the glare detector took for glare would still
    be repainted, unseen by the regression guard: such a mask waits for the photographer's
    check, as with the built-in fill; a checked or a trained detector's mask is filled."""
    img = _textured(96, 210)
    mask = _two_hole_mask(img.shape[:2])
    ctx = _ctx(lama_runtime, mask=mask)
    ctx.artifacts["mask_source"] = source
    out = get_step("inpaint_lama").fn(img, {}, ctx)
    said = [w for w in ctx.warnings if w.startswith("reflections: the built-in detector")]
    if filled:
        assert not said and "2 region(s)" in out.notes
        assert np.abs(out.image - img)[mask > 0].max() > 1e-3
    else:
        assert out.image is img and out.notes.startswith("skipped")
        assert len(said) == 1 and "LaMa filled nothing" in said[0] and "--mask" in said[0]
        # the step's own switch fills it (what the mask editor's checked mask amounts to)
        ctx2 = _ctx(lama_runtime, mask=mask)
        ctx2.artifacts["mask_source"] = source
        again = get_step("inpaint_lama").fn(img, {"fill_detected": True}, ctx2)
        assert not ctx2.warnings and np.abs(again.image - img)[mask > 0].max() > 1e-3


def test_dereflect_nafnet_runs_tiled_with_strength(tmp_path):
    files = write_nafnet_sidd(tmp_path, seed=1, enc_blk_nums=(1,), dec_blk_nums=(1,))
    rt = make_runtime(install_test_model(tmp_path / "store", "nafnet-sidd-w64", files))
    img = _textured(70, 90)
    full = get_step("dereflect_nafnet").fn(img, {"strength": 1.0}, _ctx(rt)).image
    half = get_step("dereflect_nafnet").fn(img, {"strength": 0.5}, _ctx(rt)).image
    assert full.shape == img.shape and np.isfinite(full).all()
    np.testing.assert_allclose(half, img + 0.5 * (full - img), atol=1e-5)


def test_sam_click_select_and_box_refinement_through_the_store(tmp_path):
    files = write_sam(tmp_path / "sam")
    rt = make_runtime(install_test_model(tmp_path / "store", "sam-vit-base", files))
    img, _ = _with_glare(_textured(90, 120), 40, 60, 12)
    m = sam_mask_from_points(img, [(60, 40), (10, 10)], [1, 0], rt)
    assert m.shape == img.shape[:2] and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
    ctx = _ctx(rt)
    out = get_step("reflection_mask").fn(img, {"detector": "auto"}, ctx)  # SAM installed
    assert out.model == "builtin:glare+sam-vit-base"
    assert ctx.mask.shape == img.shape[:2]
    glare = detect_glare(img)
    ys, xs = np.nonzero(glare)
    box = np.zeros_like(glare, bool)
    box[ys.min() - 4:ys.max() + 5, xs.min() - 4:xs.max() + 5] = True
    assert not ctx.mask[~box].any()  # SAM's masks are clipped to the proposal boxes


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is not None,
                    reason="ultralytics is installed: the missing-package message cannot show")
def test_yolo_slot_takes_onnx_only_never_a_pickle(tmp_path, monkeypatch):
    """A .pt is a pickle (ultralytics loads it with weights_only=False): refused before any
    package is imported or byte is read; auto falls back to the built-in detector."""
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"not really weights")
    monkeypatch.setenv("MEND_REFLECTION_YOLO", str(weights))
    rt = make_runtime(ModelStore(tmp_path / "store"))
    img = _textured()
    with pytest.raises(EngineError, match="ONNX export only"):
        get_step("reflection_mask").fn(img, {"detector": "yolo"}, _ctx(rt))
    monkeypatch.setattr("engine.restore.reflection._ultralytics_installed", lambda: True)
    ctx = _ctx(rt)
    out = get_step("reflection_mask").fn(img, {"detector": "auto"}, ctx)
    assert out.model == "builtin:glare"
    # not silently: the job's warnings say why the photographer's detector was not used
    assert len(ctx.warnings) == 1 and "not an ONNX export" in ctx.warnings[0]


def test_yolo_slot_without_ultralytics_explains(tmp_path, monkeypatch):
    weights = tmp_path / "best.onnx"
    weights.write_bytes(b"not really weights")
    monkeypatch.setenv("MEND_REFLECTION_YOLO", str(weights))
    rt = make_runtime(ModelStore(tmp_path / "store"))
    assert rt.is_available("reflection-yolo")
    img = _textured()
    with pytest.raises(EngineError, match="ultralytics"):
        get_step("reflection_mask").fn(img, {"detector": "yolo"}, _ctx(rt))
    # auto falls back to the built-in detector, and says why
    ctx = _ctx(rt)
    out = get_step("reflection_mask").fn(img, {"detector": "auto"}, ctx)
    assert out.model == "builtin:glare"
    assert len(ctx.warnings) == 1 and "ultralytics is not installed" in ctx.warnings[0]


def test_builtin_glare_detector_skips_crisp_lights_and_white_objects():
    """A burnt-out lamp / white object has a crisp edge; a glare veil a soft one."""
    img = _textured(seed=5)
    lamp = img.copy()
    lamp[30:50, 40:70] = 1.0  # compact, saturated, crisp-edged
    lamp[70:100, 100:140] = 0.97  # a white object
    assert not detect_glare(lamp).any()
    soft, truth = _with_glare(img, 60, 80, 16)
    soft[30:50, 10:30] = 1.0  # plus a lamp beside the glare
    found = detect_glare(soft) > 0
    assert found[truth].mean() > 0.9
    assert not found[30:50, 10:30].any()


def test_sam_cache_follows_the_precision_setting_and_makes_room_first(tmp_path, monkeypatch):
    import transformers

    from engine.models.runtime import ModelRuntime
    from engine.restore.reflection import load_sam
    from tests.model_helpers import fake_gpu

    store = install_test_model(tmp_path / "store", "sam-vit-base", write_sam(tmp_path / "sam"))
    rt = ModelRuntime(fake_gpu(), store, budget=store.spec("sam-vit-base").memory_mb << 20)
    rt.cached("another model", object, 1 << 20)
    resident_at_build = []
    real = transformers.SamModel.from_pretrained

    def spy(*a, **k):
        resident_at_build.append(rt.cached_keys())
        return real(*a, **k)

    monkeypatch.setattr(transformers.SamModel, "from_pretrained", spy)
    monkeypatch.setenv("MEND_PRECISION", "fp16")
    m16, _ = load_sam(rt)
    assert resident_at_build == [[]]  # SAM's estimate fills the budget: evicted before building
    assert next(m16.parameters()).dtype == torch.float16
    monkeypatch.setenv("MEND_PRECISION", "fp32")  # changed live in the app
    m32, _ = load_sam(rt)
    assert m32 is not m16 and next(m32.parameters()).dtype == torch.float32


def test_yolo_model_is_rebuilt_when_the_slot_file_is_imported_again(tmp_path, monkeypatch):
    import sys
    import types

    from engine.restore.reflection import yolo_detect

    built = []

    class FakeYOLO:
        def __init__(self, path, task=None):
            from pathlib import Path

            assert task == "segment"
            self.weights = Path(path).read_bytes()
            built.append(self.weights)

        def predict(self, *a, **k):
            return [types.SimpleNamespace(boxes=None, masks=None)]

    monkeypatch.setitem(sys.modules, "ultralytics", types.SimpleNamespace(YOLO=FakeYOLO))
    store = ModelStore(tmp_path / "store")
    rt = make_runtime(store)
    img = _textured(40, 40)
    for n, data in enumerate((b"first detector", b"second detector, same file name")):
        w = tmp_path / f"v{n}" / "best.onnx"
        w.parent.mkdir()
        w.write_bytes(data)
        store.import_path(w, "reflection-yolo")
        yolo_detect(img, rt)
        yolo_detect(img, rt)  # cached
    assert built == [b"first detector", b"second detector, same file name"]
    assert len([k for k in rt.cached_keys() if k[0] == "yolo"]) == 1  # the old one let go


def test_the_jobs_models_are_model_ids_and_its_record_says_the_mask_was_the_users(tmp_path):
    """``JobResult.models`` (the record's "models") listed each step's ``model`` that did not
    start with "builtin": a mask the user gave put "user:mask" there, no model; SAM refining
    the glare detector's boxes ("builtin:glare+sam-vit-base") was left out, and the step named
    SAM when no glare was found and SAM never ran. Now ``models`` holds the ids of the store's
    models the steps used, and each step's record still says what made its result (the
    user's mask: "user:mask", and its notes)."""
    from engine.api import JobRequest, OutputOptions, Plan, Step
    from engine.imageio import read_record, save_mask
    from engine.pipeline import Engine

    store = install_test_model(tmp_path / "store", "sam-vit-base", write_sam(tmp_path / "sam"))
    engine = Engine("cpu", store, tile_size=64)
    img, _ = _with_glare(_textured(90, 120), 40, 60, 12)
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), np.round(img[..., ::-1] * 255).astype(np.uint8))
    diag = Diagnosis(Degradation.B, {"A": 0, "B": 1.0, "C": 0, "D": 0})
    plan = Plan(Degradation.B, "builtin", (Step("reflection_mask", {"detector": "sam"}),
                                           Step("inpaint_builtin", {"fill_detected": True})))

    def run(**kw):
        return engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), plan=plan,
                                     diagnosis=diag, profile="builtin", guard=False, **kw))

    res = run()
    assert res.steps[0].model == "builtin:glare+sam-vit-base"
    assert res.models == ("sam-vit-base",) and not res.kept_original
    assert read_record(res.output)["models"] == ["sam-vit-base"]
    mask = np.zeros((90, 120), np.uint8)
    mask[20:40, 30:60] = 255
    res = run(mask_path=save_mask(mask, tmp_path / "mask.png"))
    assert res.models == () and not res.kept_original
    record = read_record(res.output)
    assert record["models"] == []
    assert record["steps"][0]["model"] == "user:mask"
    assert record["steps"][0]["notes"].startswith("mask given by the user")
    # no glare found: SAM (chosen) had nothing to refine, did not run and is not named
    ctx = _ctx(engine.runtime)
    out = get_step("reflection_mask").fn(_textured(seed=3), {"detector": "sam"}, ctx)
    assert out.model == "builtin:glare" and "no glare region" in out.notes
    assert not ctx.mask.any()


def test_sams_pass_is_learned_apart_and_a_users_mask_teaches_the_mask_step_nothing(tmp_path):
    """The mask step's seconds with SAM were recorded as the step's, per megapixel: SAM's pass
    (its encoder sees the photo at 1024 px, ~19 s on a CPU core) then weighed on every later
    photo's glare detection, and a large photo's estimate grew with it. Now the step says
    what SAM took (``estimate.PART_SECONDS``) and the history keeps it apart, per photo
    (``estimate.SAM_PASS``); a run handing on the user's mask (no detection) is not recorded
    as one. The estimate counts SAM only where the step will run it (installed, for auto)."""
    from engine.api import JobRequest, OutputOptions, Plan, Step
    from engine.estimate import SAM_PASS, CostHistory
    from engine.imageio import save_mask
    from engine.pipeline import Engine

    store = install_test_model(tmp_path / "store", "sam-vit-base", write_sam(tmp_path / "sam"))
    history = CostHistory(tmp_path / "costs.json")
    engine = Engine("cpu", store, tile_size=64, history=history)
    threads = engine.device.threads
    assert engine.optional_installed() == {"sam-vit-base"}
    img, _ = _with_glare(_textured(90, 120), 40, 60, 12)
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), np.round(img[..., ::-1] * 255).astype(np.uint8))
    diag = Diagnosis(Degradation.B, {"A": 0, "B": 1.0, "C": 0, "D": 0})
    plan = Plan(Degradation.B, "builtin", (Step("reflection_mask"),  # (auto: SAM installed)
                                           Step("inpaint_builtin", {"fill_detected": True})))

    def run(**kw):
        return engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), plan=plan,
                                     diagnosis=diag, profile="builtin", guard=False, **kw))

    assert run().steps[0].model == "builtin:glare+sam-vit-base"  # (SAM's first load: not kept)
    assert history.get(SAM_PASS, "sam-vit-base", "cpu", threads) is None
    res = run()
    assert res.steps[0].model == "builtin:glare+sam-vit-base"
    sam = history.get(SAM_PASS, "sam-vit-base", "cpu", threads)  # (seconds per photo)
    own = history.get("reflection_mask", None, "cpu", threads)  # (per megapixel)
    assert sam is not None and own is not None and sam > 0 and own >= 0
    mp = 90 * 120 / 1e6
    assert sam + own * mp == pytest.approx(res.steps[0].seconds, rel=1e-6)
    est = engine.estimate(plan, (90, 120)).steps[0]
    assert est.basis == "measured" and est.seconds == pytest.approx(res.steps[0].seconds)
    # the user's mask: the step hands it on, detects nothing, and the history is unchanged
    mask = np.zeros((90, 120), np.uint8)
    mask[20:40, 30:60] = 255
    res = run(mask_path=save_mask(mask, tmp_path / "mask.png"))
    assert res.steps[0].model == "user:mask"
    assert history.get("reflection_mask", None, "cpu", threads) == own
    assert history.get(SAM_PASS, "sam-vit-base", "cpu", threads) == sam
    # without SAM installed, auto runs the glare detector alone: no SAM in its estimate
    bare = Engine("cpu", ModelStore(tmp_path / "empty"), tile_size=64, history=history)
    assert bare.optional_installed() == set()
    assert bare.estimate(plan, (90, 120)).steps[0].seconds == pytest.approx(own * mp)


@pytest.mark.parametrize("params", [{}, {"detector": "sam"}, {"detector": "builtin"},
                                    {"detector": "yolo"}])
@pytest.mark.parametrize("with_sam", [True, False])
def test_what_the_estimate_says_the_mask_step_runs_is_what_it_runs(tmp_path, params, with_sam):
    """``mask_models_run`` (what the estimate counts) against the step itself, with SAM
    installed or not (the YOLO slot empty: an explicit ``yolo`` is counted, and fails)."""
    from engine.errors import ModelMissing
    from engine.restore.reflection import mask_models_run

    store = (install_test_model(tmp_path / "store", "sam-vit-base",
                                write_sam(tmp_path / "sam")) if with_sam
             else ModelStore(tmp_path / "store"))
    rt = make_runtime(store)
    installed = {"sam-vit-base"} if with_sam else set()
    full = {**get_step("reflection_mask").defaults, **params}
    said = mask_models_run(full, False, installed)
    assert mask_models_run(full, True, installed) == ()
    img, _ = _with_glare(_textured(90, 120), 40, 60, 12)
    if "reflection-yolo" in said or (not with_sam and "sam-vit-base" in said):
        with pytest.raises((ModelMissing, EngineError)):  # (a chosen model missing)
            get_step("reflection_mask").fn(img, full, _ctx(rt))
        return
    out = get_step("reflection_mask").fn(img, full, _ctx(rt))
    assert ("sam-vit-base" in out.model) == ("sam-vit-base" in said), (out.model, said)
    assert out.model.startswith("builtin:glare")
