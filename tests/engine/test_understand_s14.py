"""Understanding and estimates, session 14 audit: a structured VLM answer cut off mid-object says
so; a thin strip costs the analyzer what a photo of its size does; integer photos of any type
are read on their bit depth's scale; a step's one-time set-up is not learnt per megapixel."""
from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from engine.api import Degradation, Diagnosis, JobRequest, OutputOptions, Plan, Step
from engine.estimate import (
    COLD_RUN_S,
    REFERENCE_CPU_S_PER_MP,
    WARM_FIXED_S,
    CostHistory,
    estimate_plan,
)
from engine.understand import measure as M
from engine.understand import vlm
from engine.understand.analyzer import analyze
from engine.understand.base import as_rgb, model_rgb8
from engine.understand.vlm import VLMAnswerError, VLMClassifier, parse_structured

# ------------------------------------------------------------------ 1. truncated structured JSON

FULL = ('Sure: {"class": "A", "degradations": [{"type": "noise", "severity": 0.6, "params": '
        '{"noise_sigma": -12.5e-1}}, {"type": "jpeg", "severity": 0.4, "params": '
        '{"jpeg_quality": 35}}], "note": "o\\"k", "flag": true, "f": false, "x": null, '
        '"e": "\\u00e9z"}')


def test_a_structured_answer_cut_off_anywhere_says_it_was_cut_off():
    """Cut off after an inner object was whole ('... "params": {"noise_sigma": 12}}, {"ty'),
    the inner object was taken for the answer: "did not answer with a class or a list of
    degradations". Every cut inside the object now says the JSON was cut off."""
    assert parse_structured(FULL)["class"] == "A"
    start = FULL.index("{")
    for n in range(start + 1, len(FULL)):
        with pytest.raises(VLMAnswerError) as e:
            parse_structured(FULL[:n])
        assert e.value.truncated, (n, str(e.value))
        assert "complete JSON object" in str(e.value) and "cut off" in str(e.value)
    inner_whole = FULL[:FULL.index('{"type": "jpeg"') + 4]
    with pytest.raises(VLMAnswerError, match="cut off"):
        parse_structured(inner_whole)


@pytest.mark.parametrize("text,cls", [
    ('{oops} then {"class": "C"}', "C"),  # a brace that is not JSON, then the answer
    ('{ is a brace. {"class": "A"}', "A"),
    ('Here: {"class": "B", "degradations": []} and also {"note": 1', "B"),  # the 2nd cut off
    ('{"class": "D", "degradations": {"type": "noise", "severity": 0.4}}', "D"),
])
def test_the_tolerant_parsing_is_kept(text, cls):
    assert parse_structured(text)["class"] == cls


@pytest.mark.parametrize("text", ["no json here", "{not json}", "{}", '{"degradations": 1}'])
def test_answers_that_are_not_cut_off_are_not_called_cut_off(text):
    with pytest.raises(VLMAnswerError) as e:
        parse_structured(text)
    assert not e.value.truncated and "cut off" not in str(e.value)


def test_the_classifier_names_the_token_limit_of_a_cut_off_answer(monkeypatch):
    """Through classify_batch: the photo's error (the others keep their diagnoses) names the
    limit it ran into."""
    cut = FULL[:120]
    answers = iter([cut, '{"class": "B", "degradations": []}'])
    monkeypatch.setattr(vlm, "load_vlm", lambda rt, mid: vlm._Loaded(None, None, {}, mid))
    clf = VLMClassifier(runtime=SimpleNamespace(device=SimpleNamespace(kind="cpu")),
                        model_id="qwen2.5-vl-3b", mode="structured", max_new_tokens=48,
                        with_measurements=False)
    monkeypatch.setattr(clf, "_answers",
                        lambda loaded, pils, prompt: [(None, next(answers), None) for _ in pils])
    img = np.full((40, 40, 3), 0.5, np.float32)
    bad, good = clf.classify_batch([img, img], [None, None])
    assert isinstance(bad, VLMAnswerError) and bad.truncated and bad.answer == cut
    assert "cut off" in str(bad) and "max_new_tokens=48" in str(bad)
    assert good.label is Degradation.B


# ------------------------------------------------------------------ 2. a thin strip's analysis

def _cpu_seconds(img: np.ndarray) -> float:
    analyze(img)
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        analyze(img)
        best = min(best, time.process_time() - t)
    return best


def test_a_one_pixel_wide_strip_costs_what_a_photo_of_its_size_does():
    """A 1 x 100000 px strip (0.1 MP) is padded to 32 px wide and its view is not reduced:
    per-pixel reductions over 3 channels, padding the whole view for the CNN patches and
    numpy's edge pad took 2.2-2.7x the CPU time of a 316 x 316 photo (0.1 MP); 0.8-1.2x now.
    (OpenCV on one thread: 0.60 s -> 0.16 s against 0.14 s.)"""
    import cv2

    rng = np.random.default_rng(0)
    photo = rng.random((316, 316, 3), dtype=np.float32)
    strip = rng.random((100000, 1, 3), dtype=np.float32)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        ratio = _cpu_seconds(strip) / _cpu_seconds(photo)
    finally:
        cv2.setNumThreads(threads)
    assert ratio < 1.8, ratio


@pytest.mark.parametrize("shape", [(1, 3000), (3000, 1), (5, 70), (20, 20), (40, 9000)])
def test_a_sliver_is_measured_as_its_edge_padded_copy(shape):
    """The padding to 32 px (OpenCV's replicate border now) and the CNN's patches (each one
    clipped and padded on its own now) measure exactly what numpy's edge pad of the whole image
    and of the whole view measured."""
    rng = np.random.default_rng(1)
    img = rng.random(shape + (3,), dtype=np.float32) * 1.2 - 0.1
    h, w = shape
    ph, pw = max(0, M.MIN_SIDE - h), max(0, M.MIN_SIDE - w)
    padded = np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="edge")
    a, b = M.measure(img), M.measure(padded)
    for k in ("width", "height"):
        a.pop(k), b.pop(k)
    assert a == b
    view, _k = M.view_of(padded)
    p = 64
    v = np.pad(np.clip(view, 0, 1), ((max(0, p - view.shape[0]) // 2,
                                      max(0, p - view.shape[0]) - max(0, p - view.shape[0]) // 2),
                                     (max(0, p - view.shape[1]) // 2,
                                      max(0, p - view.shape[1]) - max(0, p - view.shape[1]) // 2),
                                     (0, 0)), mode="edge")
    ys = np.unique(np.linspace(0, v.shape[0] - p, M.CNN_GRID).astype(int))
    xs = np.unique(np.linspace(0, v.shape[1] - p, M.CNN_GRID).astype(int))
    whole = np.stack([v[y:y + p, x:x + p] for y in ys for x in xs])
    sd = whole[:, ::4, ::4].std(axis=(1, 2, 3))
    keep = np.nonzero(sd > M.CNN_MIN_STD)[0]
    if keep.size < 3:
        keep = np.argsort(-sd)[:min(3, sd.size)]
    assert np.array_equal(M.cnn_patches(view, p), whole[keep])
    assert np.array_equal(M.channel_min(view), view.min(axis=2))
    assert np.array_equal(M.channel_max(view), view.max(axis=2))


# ------------------------------------------------------------------ 3. integer sample types

def _photo8() -> np.ndarray:
    rng = np.random.default_rng(2)
    import cv2

    img = cv2.GaussianBlur(rng.random((96, 128, 3)).astype(np.float32), (0, 0), 2.0)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint32, np.uint64])
def test_8_bit_samples_in_a_wider_integer_type_read_as_8_bit(dtype):
    """int32 (or an ``astype(int)``) holding 0..255 read as black: divided by 2**31 - 1."""
    u8 = _photo8()
    want = as_rgb(u8)
    assert np.array_equal(as_rgb(u8.astype(dtype)), want)
    assert np.array_equal(model_rgb8(u8.astype(dtype), 10**6), model_rgb8(u8, 10**6))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32])
def test_16_bit_samples_in_a_wider_integer_type_read_as_16_bit(dtype):
    """Pillow's "I" mode (int32) holds 16-bit PNG/TIFF samples: read on 65535, as uint16."""
    u16 = (_photo8().astype(np.uint16) * 257) // 2 + 1000  # (above 255: a 16-bit photo)
    assert np.array_equal(as_rgb(u16.astype(dtype)), as_rgb(u16))
    assert np.array_equal(model_rgb8(u16.astype(dtype), 10**6), model_rgb8(u16, 10**6))
    d32, d16 = analyze(u16.astype(dtype)), analyze(u16)
    assert d32.label == d16.label and d32.scores == d16.scores


def test_other_integer_samples_are_on_the_32_bit_scale_and_negatives_are_0():
    a = np.array([[[0, 70000, 2 ** 32 - 1], [-5, 2 ** 31, 65536]]], dtype=np.int64)
    got = as_rgb(a)
    want = np.maximum(a, 0).astype(np.float32) / np.float32(2 ** 32 - 1)
    assert np.array_equal(got, want)
    assert as_rgb(np.array([[-3, 100]], np.int16)).tolist() == \
        [[[0.0] * 3, [np.float32(100) / np.float32(255)] * 3]]
    # the photo types keep their types' scales, a dark uint16 photo stays dark
    assert as_rgb(np.full((2, 2), 200, np.uint16)).max() == np.float32(200) / np.float32(65535)
    assert as_rgb(np.full((2, 2), 200, np.uint8)).max() == np.float32(200) / np.float32(255)
    assert as_rgb(np.ones((2, 2), bool)).max() == 1.0


# ------------------------------------------------------------------ 4. one-time set-up, estimates

DENOISE = Plan(Degradation.A, "builtin", (Step("denoise_builtin", {"sigma": 20.0}),))
TINY = 100 * 75 / 1e6
BIG = (4000, 6000)  # 24 MP


def _est(h: CostHistory, size=BIG):
    return estimate_plan(DENOISE, size, device_kind="cpu", threads=1, history=h)


def test_a_cold_tiny_run_counts_its_seconds_once_not_per_megapixel(tmp_path):
    """One 100 x 75 px first run (0.065 s, most of it OpenCV's set-up) made the 24 MP estimate
    0.065 / 0.0075 MP x 24 MP = 208 s; a 24 MP photo takes 31 s here. Its seconds now count once
    and the rest of the photo at the lower of its rate and the reference (72 s, said to be
    rough); for its own size it is still what the run took."""
    h = CostHistory(tmp_path / "c.json")
    h.record("denoise_builtin", None, "cpu", 1, TINY, 0.065)
    assert h.get("denoise_builtin", None, "cpu", 1) == pytest.approx(0.065 / TINY)
    big = _est(h)
    ref = REFERENCE_CPU_S_PER_MP[("denoise_builtin", None)]
    assert big.seconds == pytest.approx(0.065 + ref * (24.0 - TINY))  # (208 s before)
    assert big.basis == "reference"
    assert _est(h, (75, 100)).seconds == pytest.approx(0.065)
    assert _est(h, (75, 100)).basis == "measured"
    # (read back from the file, the cold figure keeps its work)
    assert _est(CostHistory(tmp_path / "c.json")).seconds == pytest.approx(big.seconds)
    # on a device with no reference figure, its own rate is all there is
    h.record("denoise_builtin", None, "cuda", 1, TINY, 0.065)
    cuda = estimate_plan(DENOISE, BIG, device_kind="cuda", threads=1, history=h)
    assert cuda.seconds == pytest.approx(0.065 / TINY * 24.0) and cuda.basis == "measured"


def test_the_next_warm_run_replaces_a_cold_figure_and_cold_runs_never_dilute_a_warm_one(
        tmp_path):
    path = tmp_path / "c.json"
    h = CostHistory(path)
    h.record("denoise_builtin", None, "cpu", 1, TINY, 0.065)  # cold: the set-up in it
    h.record("denoise_builtin", None, "cpu", 1, TINY, 0.016)
    assert h.get("denoise_builtin", None, "cpu", 1) == pytest.approx(0.016 / TINY)  # (avg before)
    assert "cold_units" not in json.loads(path.read_text())["steps"]["denoise_builtin||cpu|1"]
    h.record("denoise_builtin", None, "cpu", 1, 1.0, 1.5)
    warm = h.get("denoise_builtin", None, "cpu", 1)
    assert warm == pytest.approx((0.016 / TINY + 1.5) / 2)
    # a new engine's (history's) first photo is tiny: its set-up is not averaged in
    later = CostHistory(path)
    later.record("denoise_builtin", None, "cpu", 1, TINY, 0.065)
    assert later.get("denoise_builtin", None, "cpu", 1) == pytest.approx(warm)
    later.record("denoise_builtin", None, "cpu", 1, TINY, 0.02)  # its next run counts
    assert later.get("denoise_builtin", None, "cpu", 1) == pytest.approx(
        warm + (0.02 / TINY - warm) / 3)
    # a first run long enough for any set-up to be small is an ordinary run
    before = later.get("denoise_builtin", None, "cpu", 1)
    other = CostHistory(path)
    other.record("denoise_builtin", None, "cpu", 1, 2.0, COLD_RUN_S * 2)
    assert other.get("denoise_builtin", None, "cpu", 1) == pytest.approx(
        before + (COLD_RUN_S - before) / 4)


def test_a_damaged_cold_mark_is_read_as_a_warm_figure(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"version": 1, "steps": {
        "denoise_builtin||cpu|1": {"s_per_mp": 2.0, "n": 1, "cold_units": "nan"},
        "upscale_builtin||cpu|1": {"s_per_mp": 0.3, "n": 1, "cold_units": "x"},
        "sharpen_builtin||cpu|1": {"s_per_mp": 0.5, "n": 1, "cold_units": 0.01}}}))
    h = CostHistory(path)
    assert h.lookup("denoise_builtin", None, "cpu", 1) == (2.0, None)
    assert h.lookup("upscale_builtin", None, "cpu", 1) == (0.3, None)
    assert h.lookup("sharpen_builtin", None, "cpu", 1) == (0.5, 0.01)
    assert h.snapshot().lookup("sharpen_builtin", None, "cpu", 1) == (0.5, 0.01)


def test_the_engine_learns_a_tiny_first_photo_without_inflating_a_24_mp_estimate(tmp_path):
    """Measured through the engine: the first 100 x 75 px denoising in an engine took 0.05-0.10 s
    (OpenCV's first call), the next 0.016-0.037 s; per megapixel the first made the 24 MP
    estimate 160-340 s (a 24 MP photo: 31 s measured)."""
    from engine.pipeline import Engine

    rng = np.random.default_rng(3)
    src = tmp_path / "tiny.png"
    Image.fromarray(np.clip(128 + rng.normal(0, 20, (75, 100, 3)), 0, 255).astype(np.uint8)
                    ).save(src)
    hist = CostHistory(tmp_path / "costs.json")
    engine = Engine("cpu", history=hist)
    diag = Diagnosis(Degradation.A, {"A": .7, "B": .1, "C": .1, "D": .1})
    threads = engine.device.threads
    runs = []
    for _ in range(2):
        res = engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), plan=DENOISE,
                                    diagnosis=diag, profile="builtin", backend="builtin",
                                    guard=False))
        runs.append(res.steps[0].seconds)
        est = estimate_plan(DENOISE, BIG, device_kind="cpu", threads=threads, history=hist)
        if len(runs) == 1 and runs[0] < COLD_RUN_S:
            ref = REFERENCE_CPU_S_PER_MP[("denoise_builtin", None)] / threads
            assert est.seconds <= runs[0] + ref * 24.0 + 1e-6
            assert est.seconds < runs[0] / TINY * 24.0 or runs[0] / TINY <= ref
    # the second run, warm, is the figure (not the average with the first's set-up)
    want = runs[1] / TINY if runs[0] < COLD_RUN_S else (runs[0] + runs[1]) / 2 / TINY
    assert hist.get("denoise_builtin", None, "cpu", threads) == pytest.approx(want)
    # warm tiny runs alone (about half fixed: engine/estimate.py) do not set a 24 MP photo's rate
    # either: their seconds, then the lower of their rate and the reference, within the fixed
    # part a warm run may have (WARM_FIXED_S)
    ref = REFERENCE_CPU_S_PER_MP[("denoise_builtin", None)] / threads
    if want * TINY <= WARM_FIXED_S:
        assert est.seconds == pytest.approx(want * TINY + min(want, ref) * (24.0 - TINY))
        assert est.basis == ("reference" if ref < want else "measured")



def test_the_extra_view_cues_of_a_photo_with_nan_pixels_are_finite():
    """``measure(extra=True)`` (the feature model's cues, used by the fitting scripts) raised an
    IndexError on a photo with a NaN patch: the edge-steepness cue took a percentile of no
    pixels (NaN gradients were neither kept nor left out)."""
    from engine.understand.measure import measure

    img = np.random.default_rng(0).random((200, 300, 3)).astype(np.float32)
    img[50:60, 50:60] = np.nan
    out = measure(img, extra=True)
    feats = out["features"]
    assert {"edge_steep", "edge_steep_med"} <= set(feats)
    assert np.isfinite([float(v) for v in feats.values()]).all()
