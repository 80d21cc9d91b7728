"""text_fusion on lines at an angle (a page photographed askew: PP-OCR returns each line as a
rotated quadrilateral). Regions were built from each line's axis-aligned box, padded by a share
of the box's height. On the real page photo turned 25 degrees, its 22-29 px lines got boxes
86-187 px tall; the 7 regions each covered 21-89 % of the photo, the model ran on 4.5 x the
photo's pixels, and the legibility check read crops of several slanted lines (mean OCR
confidence 0.13). Now a line at an angle is handled as its rectangle: padding from its own
height, super-resolved cut out level and put back, its mask the padded rectangle's, read level;
and lines at an angle found in overlapping detection tiles are no longer taken for repeats of
their neighbours. A line that fits its box is fused exactly as before (that test, and those of
tone matching and cancel between slanted lines, pass on the code of before as well)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engine.devices import select_device
from engine.imageio import load_photo
from engine.progress import Progress
from engine.restore.registry import StepContext, get_step
from tests.model_helpers import install_test_model, make_runtime
from tests.tiny_models import write_compact

torch.set_num_threads(1)
PAGE = "text_clean_ocr/scikit-image__skimage__data__page.png"
LEVEL = 1 / 255


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("rotated")
    return install_test_model(root / "store", "realesr-general-x4v3",
                              write_compact(root, num_feat=16, num_conv=2, seed=0))


def line_quad(cx, cy, length, height, deg):
    """The corners (reading order from the top left, as PP-OCR gives them) of a line rising
    ``deg`` degrees to the right."""
    t = np.deg2rad(deg)
    u, v = np.array([np.cos(t), -np.sin(t)]), np.array([np.sin(t), np.cos(t)])
    c, a, b = np.array([cx, cy]), length / 2, height / 2
    return np.array([c - a * u - b * v, c + a * u - b * v, c + a * u + b * v, c - a * u + b * v],
                    np.float32)


def line_coords(quad, xs, ys):
    """(along, across) the line of ``quad`` (from its centre), and its half sizes."""
    q = np.asarray(quad, np.float64)
    u = (q[1] - q[0]) / np.linalg.norm(q[1] - q[0])
    c = q.mean(axis=0)
    dx, dy = xs - c[0], ys - c[1]
    return (dx * u[0] + dy * u[1], dy * u[0] - dx * u[1],
            np.linalg.norm(q[1] - q[0]) / 2, np.linalg.norm(q[3] - q[0]) / 2)


class _Lines:
    """Stands in for PP-OCR: the given quads; every crop read the same, and kept."""

    name = "fake"

    def __init__(self, quads, height):
        self.quads, self.height, self.crops = quads, height, []

    def detect(self, bgr):  # (the step looks for text with a margin around the photo)
        m = (bgr.shape[0] - self.height) // 2
        return [np.array(q, np.float32) + m for q in self.quads]

    def recognize_many(self, crops):
        self.crops += crops
        return [("text", 0.9) for _ in crops]


def _fuse(store, source, current, quads, token=None, alpha=None, **params):
    ocr = _Lines(quads, source.shape[0])
    runtime = make_runtime(store)
    runtime.cached(("ocr", "rapidocr"), lambda: ocr, 1)
    ctx = StepContext(device=select_device("cpu"), progress=Progress(token=token),
                      runtime=runtime, tile_size=128)
    ctx.artifacts["source"] = source
    if alpha is not None:
        ctx.artifacts["alpha"] = alpha
    p = {"model": "realesr-general-x4v3", "guard": False}
    p.update(params)
    return get_step("text_fusion").fn(current, p, ctx).image, ctx, ocr


def _halving(calls):
    """A region 'model' that halves every value (x ``scale``, nearest), recording its input."""

    def fn(crop, model_id, scale, ctx, progress=None):
        calls.append(crop.shape[:2])
        h, w = crop.shape[:2]
        return cv2.resize(crop * 0.5, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)

    return fn


@pytest.mark.parametrize("deg,scale", [(25, 1), (45, 2), (-10, 2)])
def test_a_line_at_an_angle_is_fused_in_its_own_padded_rectangle(tiny_store, monkeypatch,
                                                                 deg, scale):
    """A 160 x 16 line: full weight on the line, fading over 5 px (0.3 x its 16-px height)
    around it, nothing beyond. Before, its box was: at 25 degrees full weight over 148 x 82 px
    of which the line is a fifth, padded by 25 px (0.3 x the box's height), and the model ran
    on 4.4 x the pixels it runs on now."""
    import engine.restore.text as T

    calls: list = []
    monkeypatch.setattr(T, "realesrgan", _halving(calls))
    # (the blend's weights are read off a flat photo: the tone matching would undo the halving)
    monkeypatch.setattr(T, "match_tone", lambda sr, base, inner, min_ring=16: sr)
    img = np.full((240, 320, 3), 0.8, np.float32)
    quad = line_quad(160, 120, 160, 16, deg)
    current = cv2.resize(img, (320 * scale, 240 * scale), interpolation=cv2.INTER_NEAREST)
    out, ctx, _ = _fuse(tiny_store, img, current, [quad])
    weight = (0.8 - out[..., 0]) / 0.4  # the mask: the photo's 0.8, the model's 0.4
    ys, xs = np.mgrid[0:240 * scale, 0:320 * scale]
    a, b, hu, hv = line_coords(quad, (xs + 0.5) / scale, (ys + 0.5) / scale)
    pad = 5
    on_line = (np.abs(a) <= hu - 0.5) & (np.abs(b) <= hv - 0.5)
    beyond = (np.abs(a) >= hu + pad) | (np.abs(b) >= hv + pad)
    np.testing.assert_allclose(weight[on_line], 1.0, atol=1e-4)
    np.testing.assert_array_equal(out[beyond], current[beyond])
    assert weight.min() > -1e-4 and weight.max() < 1 + 1e-4
    # the padding fades across the line: half weight half way (cosine ramp)
    mid = (np.abs(np.abs(b) - hv - pad / 2) < 0.25) & (np.abs(a) < hu - pad)
    assert mid.any() and np.abs(weight[mid] - 0.5).max() < 0.1, weight[mid]
    # the model ran on the padded rectangle cut out level, not on its box
    (h, w), = calls
    assert abs(w - (160 + 2 * pad)) <= 1 and abs(h - (16 + 2 * pad)) <= 1, (w, h)
    region, = ctx.artifacts["ocr_regions"]
    x0, y0, x1, y1 = region["padded"]  # (the mask's box: nothing changed outside it)
    outside = np.ones(out.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(out[outside], current[outside])
    assert len(region["quad"]) == 4
    # the app draws the line as it lies: its corners in source px (its box would be 148 px wide)
    (got,) = ctx.artifacts["text_quads"]
    assert np.abs(np.sort(np.array(got), axis=0) - np.sort(np.array(quad, float), axis=0)
                  ).max() <= 1.0, (got, quad)


def test_a_line_at_an_angle_takes_the_photos_tone(tiny_store, monkeypatch):
    """The tone matching, over the rectangle's padding: a region model 0.06 darker leaves no
    band around a slanted line on a flat photo."""
    import engine.restore.text as T

    monkeypatch.setattr(T, "realesrgan", lambda crop, m, scale, ctx, progress=None: cv2.resize(
        crop - 0.06, (crop.shape[1] * scale, crop.shape[0] * scale)))
    img = np.full((200, 260, 3), 0.7, np.float32)
    out, _, _ = _fuse(tiny_store, img, img, [line_quad(130, 100, 150, 14, 30)])
    np.testing.assert_allclose(out, img, atol=1e-5)


def test_a_line_at_an_angle_is_read_level(tiny_store, monkeypatch):
    """The legibility check reads the line cut out level (as rapidocr cuts lines), at the
    result's scale: 160 x 16 px at x2 is a 320 x 32 crop with the line's stroke along it;
    before, the crop was the box (about 296 x 162 px at 25 degrees: the stroke crossing it
    diagonally, and the neighbouring lines of a page in it). A slanted column of vertical text
    is read turned, as rapidocr reads one."""
    import engine.restore.text as T

    monkeypatch.setattr(T, "realesrgan", _halving([]))
    img = np.full((240, 320, 3), 0.9, np.float32)
    quad = line_quad(160, 120, 160, 16, 25)
    cv2.line(img, tuple(int(v) for v in (quad[0] + quad[3]) / 2),
             tuple(int(v) for v in (quad[1] + quad[2]) / 2), (0.1, 0.1, 0.1), 4)
    current = cv2.resize(img, (640, 480), interpolation=cv2.INTER_CUBIC)
    _, _, ocr = _fuse(tiny_store, img, current, [quad])
    before, after = ocr.crops
    for crop in (before, after):
        assert crop.shape == (32, 320, 3) and crop.dtype == np.uint8
    rows = before[:, 20:-20, 1].astype(float)
    assert rows[12:20].mean(axis=0).max() < 110  # the stroke, level, all along the line
    assert rows[:4].min() > 180 and rows[-4:].min() > 180  # paper above and below it
    # a column of vertical text leaning 20 degrees (its first side is across it)
    col = np.roll(line_quad(160, 120, 150, 20, 20 - 90), 1, axis=0)
    _, _, ocr = _fuse(tiny_store, img, img, [col])
    assert all(c.shape[:2] == (20, 150) for c in ocr.crops), [c.shape for c in ocr.crops]


def test_a_line_at_an_angle_on_transparency_is_read_as_it_is_seen(tiny_store, monkeypatch):
    """A slanted line of dark glyphs on a transparent photo whose stored colour is black: read
    over a background (white), level; the result's transparency is another step's."""
    import engine.restore.text as T

    monkeypatch.setattr(T, "realesrgan", _halving([]))
    src = np.zeros((200, 300, 3), np.float32)
    alpha = np.zeros((200, 300), np.float32)
    quad = line_quad(150, 100, 160, 16, 25)
    cv2.fillPoly(alpha, [np.round(quad).astype(np.int32)], 1.0)  # the glyphs' line, opaque
    alpha = cv2.erode(alpha, np.ones((3, 9), np.uint8))  # (the line's outline transparent)
    _, _, ocr = _fuse(tiny_store, src, src, [quad], alpha=alpha)
    before, _ = ocr.crops
    assert before.shape == (16, 160, 3)
    assert before[:, 0].mean() > 200 and before[6:10, 20:-20].mean() < 30


def _old_fusion(source, current, quads, scale, pad=0.3):
    """The fusion of lines in their boxes, as it was before rotated lines (s14)."""
    import engine.restore.text as T
    from engine.restore.sr import resize_to

    out = current.copy()
    oh, ow = current.shape[:2]
    for quad in quads:
        (tx0, ty0, tx1, ty1), (px0, py0, px1, py1) = T.padded_box(quad, source.shape[:2], pad)
        ox0, oy0, ox1, oy1 = px0 * scale, py0 * scale, min(ow, px1 * scale), min(oh, py1 * scale)
        bx0, by0, bx1, by1 = tx0 * scale, ty0 * scale, tx1 * scale, ty1 * scale
        crop = source[py0:py1, px0:px1]
        sr = np.clip(resize_to(_cubic(crop, scale), ox1 - ox0, oy1 - oy0), 0.0, 1.0)
        region = current[oy0:oy1, ox0:ox1]
        sr = T.match_tone(sr, region, (slice(by0 - oy0, by1 - oy0), slice(bx0 - ox0, bx1 - ox0)))
        mask = T.feather_mask(oy1 - oy0, ox1 - ox0,
                              (max(1, (ty0 - py0) * scale), max(1, (py1 - ty1) * scale)),
                              (max(1, (tx0 - px0) * scale), max(1, (px1 - tx1) * scale)),
                              (oy0 > 0, oy1 < oh, ox0 > 0, ox1 < ow))[..., None]
        out[oy0:oy1, ox0:ox1] = out[oy0:oy1, ox0:ox1] * (1.0 - mask) + sr * mask
    return out


def _cubic(crop, scale, *_a, **_k):
    h, w = crop.shape[:2]
    return cv2.resize(crop, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)


def test_lines_that_fit_their_box_are_fused_exactly_as_before(tiny_store, monkeypatch):
    """Level lines, overlapping ones, one at the photo's edge and one 0.3 degrees off level
    (its box 1.1 x its area: within ``BOX_FIT``): bit for bit the fusion of before."""
    import engine.restore.text as T

    monkeypatch.setattr(T, "realesrgan", lambda crop, m, scale, ctx, progress=None:
                        _cubic(crop, scale))
    rng = np.random.default_rng(3)
    src = cv2.GaussianBlur(rng.random((120, 200, 3), np.float32), (0, 0), 2) * 0.6 + 0.2
    current = np.clip(cv2.resize(src, (400, 240), interpolation=cv2.INTER_LANCZOS4), 0, 1)
    quads = [np.array(q, np.float32) for q in (
        [(20, 30), (120, 30), (120, 50), (20, 50)], [(60, 40), (170, 40), (170, 60), (60, 60)],
        [(30, 0), (120, 0), (120, 22), (30, 22)], [(10, 80), (190, 81), (190, 95), (10, 94)])]
    out, _, _ = _fuse(tiny_store, src, current, quads)
    np.testing.assert_array_equal(out, _old_fusion(src, current, quads, 2))


def test_lines_at_an_angle_found_in_overlapping_tiles_are_all_kept():
    """A line found twice (whole, and a piece of it in the next tile) is kept once; but
    neighbouring lines at 25 degrees are not repeats of each other: each one's box lay mostly
    within its longer neighbour's, and 4 of these 6 were dropped (on a 1600-px page of 9-px
    text turned 25 degrees: 84 of 176 lines found; now all)."""
    import engine.restore.text as T

    lines = [line_quad(200 + 6 * i, 150 + 16 * i, 300 - 20 * i, 12, 25) for i in range(6)]
    piece = line_quad(200 - 150 * np.cos(np.deg2rad(25)) * 0.6, 150 + 150 * 0.6 *
                      np.sin(np.deg2rad(25)), 110, 12, 25)  # the first line's left part
    kept = T._drop_repeats(lines[:3] + [piece] + lines[3:])
    assert len(kept) == 6 and all(any(k is q for k in kept) for q in lines)
    # a large line on the reduced copy with small lines of the tiles around it, in its box
    # but not in it: all kept
    head = line_quad(300, 300, 400, 60, 25)
    small = [line_quad(200, 240, 160, 10, 25), line_quad(400, 360, 160, 10, 25)]
    merged = T._merge_passes([head], small, 40)
    assert len(merged) == 3


def test_text_line_geometry():
    import engine.restore.text as T

    q = line_quad(100, 50, 80, 10, 30)
    ln = T.text_line(q)
    assert np.allclose((ln.cx, ln.cy, ln.hu, ln.hv), (100, 50, 40, 5), atol=1e-4)
    assert np.allclose((ln.ux, ln.uy), (np.cos(np.pi / 6), -0.5), atol=1e-6)
    np.testing.assert_allclose(ln.corners(), q, atol=1e-4)
    assert ln.height == pytest.approx(10)
    assert not T.fits_its_box(ln)
    assert T.fits_its_box(T.text_line(np.array([(0, 0), (50, 0), (50, 9), (0, 9)])))
    assert T.fits_its_box(T.text_line(np.array([(9, 0), (9, 50), (0, 50), (0, 0)])))  # 90 deg
    assert T.fits_its_box(T.text_line(np.array([(10, 80), (190, 81), (190, 95), (10, 94)])))
    # a polygon of another number of points: its rectangle, left to right
    poly = np.concatenate([q[:2], [(q[1] + q[2]) / 2], q[2:]])
    ln6 = T.text_line(poly)
    assert np.allclose((ln6.cx, ln6.cy, ln6.hu, ln6.hv, ln6.ux), (100, 50, 40, 5, ln.ux),
                       atol=1e-2)
    # cut out level and put back: the same pixels (up to the two resamplings)
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.random((100, 200, 3), np.float32), (0, 0), 3)
    level = T._warp_rect(img, ln, 4.0, (88, 18), (1.0, 1.0), (0, 0))
    back = T._unwarp_rect(level, ln, 4.0, (40, 10, 160, 90), (1.0, 1.0))
    mask, _ = T.line_mask(ln, 4.0, (40, 10, 160, 90), (1.0, 1.0))
    inside = mask >= 1.0
    assert inside.sum() > 700
    assert np.abs(back[inside] - img[10:90, 40:160][inside]).max() < 0.02


def test_a_cancel_stops_between_lines_at_an_angle(tiny_store, monkeypatch):
    import engine.restore.text as T
    from engine.errors import Cancelled
    from engine.progress import CancelToken

    token, calls = CancelToken(), []

    def sr(crop, *a, **k):
        calls.append(crop.shape)
        token.cancel()
        return _halving([])(crop, *a, **k)

    monkeypatch.setattr(T, "realesrgan", sr)
    img = np.full((200, 300, 3), 0.8, np.float32)
    with pytest.raises(Cancelled):
        _fuse(tiny_store, img, img, [line_quad(150, 60 + 40 * i, 200, 14, 20) for i in range(3)],
              token=token)
    assert len(calls) == 1


def _turn(h, w, deg):
    """The affine matrix of :func:`_rotated` for an ``h`` x ``w`` photo, and its canvas (w, h)."""
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(w * c + h * s)), int(np.ceil(w * s + h * c))
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return m, (nw, nh)


def _rotated(img, deg):
    """``img`` turned ``deg`` degrees (counter-clockwise) on a canvas that holds it all, the
    corners filled with its median colour (a page photographed askew)."""
    m, (nw, nh) = _turn(*img.shape[:2], deg)
    bg = tuple(float(v) for v in np.median(img.reshape(-1, 3), axis=0))
    return np.clip(cv2.warpAffine(img, m, (nw, nh), flags=cv2.INTER_CUBIC,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=bg), 0.0, 1.0)


def test_a_page_photographed_at_25_degrees(shared_images, tiny_store, monkeypatch):
    """The real page photo turned 25 degrees, real PP-OCR, a tiny random Real-ESRGAN, x1: the
    lines are read level (mean confidence 0.985; their boxes: 0.13), the model runs on 0.65 x
    the photo's pixels (was 4.5 x), the 7 regions change 42 % of the photo (the boxes: 78 %),
    each at most 13 % (was 21-89 %), and where a region's mask ends the step is 0.85 levels of
    255 (the mask's outermost pixels, at a slant: up to sin^2(pi / 2p) of the change)."""
    pytest.importorskip("rapidocr", reason="rapidocr (PP-OCR ONNX models) is not installed")
    import engine.restore.text as T

    page = np.ascontiguousarray(load_photo(shared_images / PAGE).pixels[..., :3])
    src = _rotated(page, 25)
    h, w = src.shape[:2]
    pixels, real = [], T.realesrgan

    def counting(crop, *a, **k):
        pixels.append(crop.shape[0] * crop.shape[1])
        return real(crop, *a, **k)

    monkeypatch.setattr(T, "realesrgan", counting)
    masks, line_mask = [], T.line_mask

    def recording(line, grow, box, scale):
        mask, text = line_mask(line, grow, box, scale)
        masks.append((box, mask, line, grow))
        return mask, text

    monkeypatch.setattr(T, "line_mask", recording)
    ctx = StepContext(device=select_device("cpu"), progress=Progress(),
                      runtime=make_runtime(tiny_store), tile_size=128)
    ctx.artifacts["source"] = src
    out = get_step("text_fusion").fn(src, {"model": "realesr-general-x4v3", "guard": False},
                                     ctx).image
    regions = ctx.artifacts["ocr_regions"]
    assert len(regions) >= 5 and len(masks) == len(regions)  # every line at an angle
    conf = np.mean([r["confidence_before"] for r in regions])
    assert conf > 0.9, [(r["text_before"], r["confidence_before"]) for r in regions]
    assert sum(pixels) < 1.0 * h * w, sum(pixels) / (h * w)
    # each mask is not 0 on its line's padded rectangle only: padding 0.3 x the line's height
    area = np.zeros((h, w), bool)
    shares = []
    for (x0, y0, x1, y1), mask, line, grow in masks:
        assert grow == max(4, round(0.3 * line.height)) and line.height < 30
        mine = np.zeros((h, w), bool)
        mine[y0:y1, x0:x1] = mask > 0
        shares.append(mine.mean())
        assert mine.sum() < (2 * line.hu + 2 * grow + 2) * (2 * line.hv + 2 * grow + 2)
        area |= mine
    changed = np.abs(out - src).max(axis=-1) > 0
    assert not changed[~area].any()
    assert changed.mean() < 0.6 and max(shares) < 0.2, (changed.mean(), shares)
    # the step in the change across the edge of the regions (the photo untouched beyond it)
    change = np.abs(out - src).max(axis=-1) / LEVEL
    step = max(float(np.abs(np.diff(change, axis=ax))[np.diff(area, axis=ax)].max())
               for ax in (0, 1))
    print(f"confidence {conf:.3f}; model on {sum(pixels) / (h * w):.2f} x the photo; changed "
          f"{changed.mean():.2f} of it, each region <= {max(shares):.2f}; edge step {step:.2f}")
    assert step < 1.5, step


# --------------------------------------------------------------------------- detection tiles
def _iou(a, b):
    ha, hb = (cv2.convexHull(np.asarray(q, np.float32).reshape(-1, 1, 2)) for q in (a, b))
    inter, _ = cv2.intersectConvexConvex(ha, hb)
    return inter / (cv2.contourArea(ha) + cv2.contourArea(hb) - inter)


def test_a_page_at_25_degrees_is_found_line_by_line_in_tiles(shared_images):
    """The real page photo at x2 turned 25 degrees, looked at on a reduced copy and in 512-px
    tiles (as a 2128-px page is in 1280-px ones): its long lines cross the tiles' edges, and
    each was kept as 2-3 overlapping pieces of it (15 boxes for 7 lines, none matching a line
    better than IoU 0.8). Now a line a tile cut is taken whole from the reduced copy: each line
    the detector finds on the level page (whole, no tiles) is one box, turned with the page."""
    pytest.importorskip("rapidocr", reason="rapidocr (PP-OCR ONNX models) is not installed")
    import engine.restore.text as T

    page = np.ascontiguousarray(load_photo(shared_images / PAGE).pixels[..., :3])
    h, w = page.shape[:2]
    page = np.clip(cv2.resize(page, (2 * w, 2 * h), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    ocr = T.RapidOCRBackend(threads=1)
    ctx = StepContext(device=select_device("cpu"), progress=Progress(), runtime=None)
    level = T._detect_text(ocr, page, 4096, 0, ctx)  # (the whole page at once)
    assert len(level) == 7
    m, _ = _turn(2 * h, 2 * w, 25)
    lines = [np.c_[q, np.ones(len(q))] @ m.T for q in level]
    found = T._detect_text(ocr, _rotated(page, 25), 640, 512, ctx)
    ious = sorted(max(_iou(ln, q) for q in found) for ln in lines)
    assert len(found) == len(lines) and ious[0] > 0.7, (len(found), ious)  # (measured 0.81-0.96)


def test_lines_cut_by_the_tiles_edges_are_taken_whole_from_the_reduced_copy():
    """Merging the reduced copy's boxes with the tiles': a box of the copy with pieces of it
    in it that a tile's edge cut replaces them, whatever its height (before: only boxes at
    least ``big`` tall did); where no tile cut anything in it, or tiles found lines of under
    half its height in it (several lines blurred into one blob), the tiles' boxes stay, as
    before."""
    import engine.restore.text as T

    whole = line_quad(300, 200, 500, 20, 25)
    left = line_quad(300 - 150 * np.cos(np.deg2rad(25)), 200 + 150 * np.sin(np.deg2rad(25)),
                     200, 20, 25)
    right = line_quad(300 + 120 * np.cos(np.deg2rad(25)), 200 - 120 * np.sin(np.deg2rad(25)),
                      260, 20, 25)
    pieces = [left, right]
    merged = T._merge_passes([whole], pieces, 64, [True, False])
    assert len(merged) == 1 and merged[0] is whole
    # two words of a line, no tile edge near: the tiles' tighter boxes, as before
    merged = T._merge_passes([whole], pieces, 64, [False, False])
    assert len(merged) == 2 and all(any(p is q for q in merged) for p in pieces)
    assert len(T._merge_passes([whole], pieces, 64)) == 2
    # a blob of two lines on the copy, a tile cut one of them: the lines
    blob = line_quad(300, 200, 500, 50, 25)
    lines = [line_quad(300 + 13 * np.sin(np.deg2rad(25)), 200 + 13 * np.cos(np.deg2rad(25)),
                       480, 18, 25),
             line_quad(300 - 13 * np.sin(np.deg2rad(25)), 200 - 13 * np.cos(np.deg2rad(25)),
                       480, 18, 25)]
    merged = T._merge_passes([blob], lines, 64, [True, False])
    assert len(merged) == 2 and all(any(p is q for q in merged) for p in lines)
    # a tile box ending at a tile's edge inside the photo is cut; at the photo's edge it is not
    assert T._cut_by_tile((10, 40, 1279, 60), (0, 0, 1280, 1280), (2000, 1500))
    assert T._cut_by_tile((860, 40, 990, 60), (858, 0, 2128, 1280), (2128, 1594))
    assert not T._cut_by_tile((10, 40, 1279, 60), (0, 0, 1280, 1280), (1280, 1500))
    assert not T._cut_by_tile((10, 40, 1200, 60), (0, 0, 1280, 1280), (2000, 1500))
