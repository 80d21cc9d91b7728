"""Session 13 audit of the restoration chains, the tiler and the pipeline: what a photographer
hit, each test failing before its fix.

* a cancel (or any error) in a built-in tiled step imported torch to classify it (3.5 s, 0.5 GB);
* text regions were super-resolved and held at x4 even when the result is x1 (2.2 GB for one
  big line of a 24 MP photo, 0.8 GB at x1);
* out of memory outside the tiler (a LaMa region, a face, SAM) reached the UI as a device's own
  error ("Unexpected error"), not OutOfMemory; LaMa never tried a smaller region;
* a missing model was reported alone: the next run failed on the plan's next missing model;
* a black-and-white photo came back tinted by a model;
* a step's first run, loading its model, taught the time estimate that load per pixel: one
  small photo multiplied the estimate of the next large one;
* the built-in deblurring made needless photo-sized copies (a float64 grid among them).
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import pipeline
from engine.api import Degradation, Diagnosis, JobRequest, OutputOptions, Plan, Step
from engine.errors import Cancelled, ModelMissing, OutOfMemory
from engine.estimate import CostHistory
from engine.imageio import load_photo
from engine.pipeline import Engine
from engine.restore import registry
from engine.restore.registry import StepContext, StepOutput, StepSpec

ROOT = Path(__file__).resolve().parents[2]
DIAG = Diagnosis(Degradation.A, {"A": 0.7, "B": 0.1, "C": 0.1, "D": 0.1})


def _save(path: Path, img: np.ndarray) -> Path:
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def _texture(h: int, w: int, seed: int = 0, grey: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 5.0)], -1)
    img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1).astype(np.float32)
    if grey:
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    return img


def _with_step(monkeypatch, name: str, fn) -> None:
    monkeypatch.setitem(registry.STEPS, name, StepSpec(name, fn, (), "test step", {}))


def _run(engine: Engine, src: Path, out: Path, steps: tuple[Step, ...], **kw):
    plan = Plan(Degradation.A, "builtin", steps)
    return engine.run(JobRequest(src, OutputOptions(out_dir=out), plan=plan, diagnosis=DIAG,
                                 profile="builtin", backend="builtin", guard=False, **kw))


# ------------------------------------------------------------------ cancel without torch
_NO_TORCH = r"""
import sys, time
import numpy as np
from engine.errors import Cancelled
from engine.progress import Progress
from engine.tiling import run_tiled

assert "torch" not in sys.modules
p = Progress()
img = np.zeros((300, 300, 3), np.float32)

def cancel(tile):
    p.token.cancel()  # the user cancels while the first tile runs
    return tile

t = time.perf_counter()
try:
    run_tiled(img, cancel, tile=128, overlap=16, progress=p)
except Cancelled:
    pass
seconds = time.perf_counter() - t

def small(tile):  # a classical op out of memory on big tiles: retried smaller, still no torch
    if max(tile.shape[:2]) > 64:
        raise MemoryError()
    return tile

ok = np.array_equal(run_tiled(img, small, tile=128, overlap=16), img)
print(round(seconds, 3), "torch" in sys.modules, ok)
"""


def test_a_cancel_in_a_builtin_tiled_step_does_not_import_torch():
    """The tiler asked devices.is_oom whether a Cancelled was out-of-memory, and is_oom imports
    torch to look for its CUDA type: 3.5 s and 0.5 GB before a built-in job stopped."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", _NO_TORCH], cwd=ROOT, env=env, check=False,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    seconds, torch_loaded, retried = res.stdout.split()
    assert torch_loaded == "False" and retried == "True"
    assert float(seconds) < 1.0


# ------------------------------------------------------------------ text regions at x1
class _OneLine:
    """An OCR backend that finds one wide line of text in the middle of the photo."""

    name = "fake"

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w

    def detect(self, bgr):
        m = (bgr.shape[0] - self.h) // 2  # the margin _detect_whole adds
        y0, y1, x0, x1 = m + 0.4 * self.h, m + 0.6 * self.h, m + 0.1 * self.w, m + 0.9 * self.w
        return [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)]

    def recognize_many(self, crops):
        return [("TEXT", 0.5) for _ in crops]


@pytest.fixture(scope="module")
def compact_runtime(tmp_path_factory):
    from tests.model_helpers import make_runtime
    from tests.tiny_models import install_models

    root = tmp_path_factory.mktemp("compact")
    store = install_models(root / "store", ["realesr-general-x4v3"], root / "build")
    return make_runtime(store)


@pytest.mark.parametrize("scale", [1, 2])
def test_text_regions_are_never_held_larger_than_the_result(compact_runtime, monkeypatch,
                                                            scale):
    from engine.devices import select_device
    from engine.progress import Progress
    from engine.restore import text
    from engine.restore.sr import realesrgan, resize_to

    h, w = 120, 160
    source = _texture(h, w, seed=3)
    image = resize_to(source, w * scale, h * scale)
    calls = []

    def spy(crop, model_id, out_scale, ctx, progress=None):
        res = realesrgan(crop, model_id, out_scale, ctx, progress)
        calls.append((crop, res))
        return res

    monkeypatch.setattr(text, "realesrgan", spy)
    # (the region's pixels are compared with the model's: its tone matched to the photo's,
    # test_blend_s14.py, would shift them)
    monkeypatch.setattr(text, "match_tone", lambda sr, base, inner, min_ring=16: sr)
    compact_runtime.cached(("ocr", "rapidocr"), lambda: _OneLine(h, w), 1)
    ctx = StepContext(device=select_device("cpu"), progress=Progress(), runtime=compact_runtime,
                      tile_size=64, artifacts={"source": source})
    try:
        out = text.text_fusion(image, {"model": "realesr-general-x4v3"}, ctx)
    finally:
        compact_runtime.evict(("ocr", "rapidocr"))
    (crop, res), = calls
    assert res.shape[:2] == (crop.shape[0] * scale, crop.shape[1] * scale)  # (was x4)
    # the same fusion as x4 then shrunk: Real-ESRGAN runs at x4 inside each tile either way
    region, = ctx.artifacts["ocr_regions"]
    assert region["fused"]
    ox0, oy0, ox1, oy1 = region["padded"]
    bx0, by0, bx1, by1 = region["box"]  # where the region's feathered mask is 1
    ref = resize_to(realesrgan(crop, "realesr-general-x4v3", 4, replace(ctx, progress=Progress())),
                    ox1 - ox0, oy1 - oy0)
    got = out.image[by0:by1, bx0:bx1]
    want = np.clip(ref, 0, 1)[by0 - oy0:by1 - oy0, bx0 - ox0:bx1 - ox0]
    assert got.size and np.abs(got - want).max() < 1e-3


def test_region_scale_is_the_smallest_that_covers_the_result():
    from engine.restore.text import region_scale

    assert [region_scale(s, s) for s in (1.0, 1.5, 2.0, 3.0, 4.0, 8.0)] == [1, 2, 2, 4, 4, 4]
    assert region_scale(1.0, 2.0) == 2


# ------------------------------------------------------------------ out of memory
def _cuda_oom(*_a):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_lama_out_of_memory_retries_the_region_smaller():
    from engine.restore.reflection import inpaint_regions

    img = _texture(300, 400, seed=1)
    mask = np.zeros((300, 400), np.uint8)
    mask[100:200, 150:250] = 255
    sides = []

    def fn(crop, m):  # a GPU that holds regions of at most 200 px
        sides.append(max(crop.shape[:2]))
        if max(crop.shape[:2]) > 200:
            _cuda_oom()
        return np.where(m[..., None] > 0, 0.5, crop)

    out = inpaint_regions(img, mask, fn, max_side=1024)
    assert sides[0] > 200 and sides[-1] <= 200
    assert np.allclose(out[150, 200], 0.5) and np.array_equal(out[5, 5], img[5, 5])


def test_lama_out_of_memory_at_every_size_is_typed():
    from engine.restore.reflection import inpaint_regions

    img = _texture(300, 400, seed=1)
    mask = np.zeros((300, 400), np.uint8)
    mask[100:200, 150:250] = 255
    with pytest.raises(OutOfMemory, match="inpaint"):
        inpaint_regions(img, mask, _cuda_oom, max_side=1024)
    with pytest.raises(Cancelled):  # (anything else is not retried)
        inpaint_regions(img, mask, lambda *a: (_ for _ in ()).throw(Cancelled()))


def test_out_of_memory_escaping_a_step_is_out_of_memory(tmp_path, monkeypatch):
    """CodeFormer on a face, SAM, a model's loading: the device's own error reached the UI as
    "Unexpected error (OutOfMemoryError: CUDA out of memory...)"."""
    _with_step(monkeypatch, "oom_step", lambda image, params, ctx: _cuda_oom())
    src = _save(tmp_path / "in.png", _texture(48, 64))
    with pytest.raises(OutOfMemory, match="oom_step"):
        _run(Engine("cpu"), src, tmp_path / "out", (Step("oom_step"),))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ------------------------------------------------------------------ missing models
def test_a_missing_model_is_reported_with_every_other_the_plan_lacks(tmp_path):
    """Chain A on the quality profile lacked three models; it named sd-turbo alone (2.5 GB to
    download), and the next run failed on the noise predictor, the next on Real-ESRGAN."""
    src = _save(tmp_path / "in.png", _texture(48, 64))
    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), label=Degradation.A,
                     profile="quality", guard=False)
    with pytest.raises(ModelMissing) as e:
        Engine("cpu").run(req)
    assert set(e.value.model_ids) == {"sd-turbo", "invsr-noise-predictor-v5",
                                      "realesrgan-x4plus"}
    assert "mend models pull sd-turbo invsr-noise-predictor-v5 realesrgan-x4plus" in str(e.value)


def test_a_missing_model_alone_is_reported_as_it_was(tmp_path):
    src = _save(tmp_path / "in.png", _texture(48, 64))
    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), label=Degradation.A,
                     profile="laptop", guard=False)
    with pytest.raises(ModelMissing) as e:
        Engine("cpu").run(req)
    assert e.value.model_ids == ("realesr-general-x4v3",)


# ------------------------------------------------------------------ grey photos
def _tint(image, params, ctx):
    out = image.copy()
    out[..., 0] = np.clip(out[..., 0] * 1.1 + 0.02, 0, 1)  # what a colour model may do
    return StepOutput(out, "test:tint")


def test_a_black_and_white_photo_stays_black_and_white(tmp_path, monkeypatch):
    _with_step(monkeypatch, "tint", _tint)
    src = _save(tmp_path / "grey.png", _texture(48, 64, grey=True))
    res = _run(Engine("cpu"), src, tmp_path / "out", (Step("tint"),))
    px = load_photo(res.output).pixels
    assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1], px[..., 2])
    colour = _save(tmp_path / "colour.png", _texture(48, 64))
    px = load_photo(_run(Engine("cpu"), colour, tmp_path / "out", (Step("tint"),)).output).pixels
    assert not np.array_equal(px[..., 0], px[..., 1])  # a colour photo is left in colour


def test_keep_grey_leaves_what_it_need_not_touch():
    grey = np.repeat(_texture(8, 8)[..., :1], 3, axis=2)
    colour = _texture(8, 8)
    tinted = colour * 0.5
    assert pipeline.keep_grey(colour, tinted) is tinted  # a colour photo: as the steps left it
    same = grey * 0.9
    assert pipeline.keep_grey(grey, same) is same  # already grey: no copy
    assert pipeline.keep_grey(colour, colour) is colour


# ------------------------------------------------------------------ the time estimate
def test_a_step_that_loaded_its_model_does_not_teach_the_time_estimate(tmp_path, monkeypatch):
    """The seconds of a step that loaded its model (importing torch, starting OCR) are mostly
    that, once: per megapixel of a 100 x 75 px photo they took the next 24 MP photo's estimate
    from 27 min to 7.2 h (deblur_nafnet). The runs after, with the model cached, teach it - and
    so do runs that load it again (a memory budget that holds one model at a time evicts and
    reloads it for every photo: that is what its runs cost there)."""
    import time

    def step(image, params, ctx):
        ctx.runtime.cached(("test-model",), lambda: time.sleep(0.2) or object(), 1)
        return StepOutput(image * 0.99, "test-model")

    _with_step(monkeypatch, "with_model", step)
    hist = CostHistory(tmp_path / "costs.json")
    engine = Engine("cpu", history=hist)
    small = _save(tmp_path / "small.png", _texture(75, 100))

    def rate():
        return engine.history.get("with_model", None, "cpu", engine.device.threads)

    _run(engine, small, tmp_path / "out", (Step("with_model"),))
    assert rate() is None  # (was 27 s/MP)
    _run(engine, small, tmp_path / "out", (Step("with_model"),))
    assert rate() is not None and rate() < 5.0  # the step's own time, the model cached
    engine.history = CostHistory(tmp_path / "costs2.json")
    engine.runtime.evict(("test-model",))  # (another step's model took its place)
    _run(engine, small, tmp_path / "out", (Step("with_model"),))
    assert rate() is not None  # loaded again: counted


# ------------------------------------------------------------------ built-in deblurring memory
def _peak_over(fn, nbytes: int) -> tuple[object, float]:
    import tracemalloc

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        return result, (tracemalloc.get_traced_memory()[1] - base) / nbytes
    finally:
        tracemalloc.stop()


def test_builtin_deblurring_makes_no_needless_photo_sized_copies():
    """A 24 MP photo (0.29 GB) peaked 1.63 GB over it in the deconvolution (a photo-sized
    float64 grid, a new array per operation) and 0.77 GB in the border fade (an int64
    distance grid): 1.20 and 0.38 GB now, with the same result."""
    from engine.restore.deblur import fade_to_borders, motion_psf, wiener_deconvolve

    img = np.random.default_rng(0).random((1000, 1500, 3)).astype(np.float32)
    out, wiener_peak = _peak_over(
        lambda: wiener_deconvolve(img, motion_psf(15, 10), 0.003, grad_weight=0.01), img.nbytes)
    faded, fade_peak = _peak_over(lambda: fade_to_borders(img, out, 15.0), img.nbytes)
    assert wiener_peak < 6.0 and fade_peak < 1.6  # (6.85 and 2.67 photo sizes before)
    # the fade as it was written before, element for element
    h, w = img.shape[:2]
    dy = np.minimum(np.arange(h), np.arange(h)[::-1])[:, None]
    dx = np.minimum(np.arange(w), np.arange(w)[::-1])[None, :]
    t = np.clip((np.minimum(dy, dx).astype(np.float32) + 0.5) / 15.0, 0.0, 1.0)
    wt = (0.5 - 0.5 * np.cos(np.pi * t))[..., None]
    assert np.array_equal(faded, (img + wt * (out - img)).astype(np.float32))


def test_a_face_step_that_found_no_face_does_not_teach_the_time_estimate(tmp_path):
    """With no face, the face step only ran a detector (a fraction of a second): recorded, it
    told the next photo's estimate - one with faces, CodeFormer running on each - ~0 s."""
    from tests.model_helpers import install_stand_in

    hist = CostHistory(tmp_path / "costs.json")
    # (the plan needs CodeFormer installed; with no face it is never loaded)
    engine = Engine("cpu", install_stand_in(tmp_path / "store", "codeformer"), history=hist)
    src = _save(tmp_path / "no_face.png", _texture(120, 160))
    for _ in range(2):  # (the second run: any detector already loaded)
        res = _run(engine, src, tmp_path / "out", (Step("face_codeformer"),))
        assert res.steps[0].notes.startswith("skipped: no face")
    assert hist.get("face_codeformer", None, "cpu", engine.device.threads) is None
