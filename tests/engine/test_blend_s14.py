"""Seams where restored regions go back into the photo: text regions (text_fusion) and faces
(CodeFormer paste-back), measured on the real photos of ../shared/images.

A seam is a property of the blend, not of the models: the region "models" here are tiny random
Real-ESRGANs through the store, or stand-ins that change the tone as another model would, and
the face "restorers" stand-ins that the identity check lets through."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engine.devices import select_device
from engine.imageio import load_photo
from engine.progress import Progress
from engine.restore.face import (
    Face,
    detect_faces,
    face_mask,
    face_matrix,
    paste_region,
    restore_faces,
)
from engine.restore.registry import StepContext, get_step
from engine.restore.text import match_tone
from tests.model_helpers import install_test_model, make_runtime
from tests.tiny_models import write_compact

torch.set_num_threads(1)

TEXT = "text_clean_ocr/RapidOCR__python__tests__test_files__ch_en_num.jpg"
PAGE = "text_clean_ocr/scikit-image__skimage__data__page.png"
COUPLE = "defocus_blur/Restormer__demo__degraded__couple.jpg"  # two faces cheek to cheek
ONE_FACE = "faces/CodeFormer__inputs__whole_imgs__03.jpg"
LEVEL = 1 / 255


# ------------------------------------------------------------------------------ text
@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    """(region, base): two different tiny random Real-ESRGAN Compacts, each in its own store
    under the real manifest id (one for the text regions, one for the whole photo)."""
    pytest.importorskip("rapidocr", reason="rapidocr (PP-OCR ONNX models) is not installed")
    root = tmp_path_factory.mktemp("blend")
    out = []
    for seed in (0, 1):
        store = install_test_model(root / f"store{seed}", "realesr-general-x4v3",
                                   write_compact(root / f"m{seed}", num_feat=16, num_conv=2,
                                                 seed=seed))
        out.append(make_runtime(store))
    return tuple(out)


def _ctx(runtime, source=None):
    ctx = StepContext(device=select_device("cpu"), progress=Progress(), runtime=runtime,
                      tile_size=128)
    if source is not None:
        ctx.artifacts["source"] = source
    return ctx


def _load(shared_images, rel, max_side=320, rows=1.0):
    px = load_photo(shared_images / rel).pixels[..., :3]
    px = px[: max(16, int(px.shape[0] * rows))]
    h, w = px.shape[:2]
    f = min(1.0, max_side / max(h, w))
    if f < 1:
        px = cv2.resize(px, (int(w * f), int(h * f)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(px, dtype=np.float32)


def _fuse(runtime, source, current):
    ctx = _ctx(runtime, source)
    out = get_step("text_fusion").fn(current, {"model": "realesr-general-x4v3", "guard": False},
                                     ctx)
    return out.image, ctx.artifacts["ocr_regions"]


def _box_tone_steps(out, current, regions, min_px=1000):
    """Per fused region: the median change (result - photo) over its padding, outside every
    text box (the background around the line, where the blend fades), largest channel, in
    levels of 255. A box of another tone around a line shows as a step here. (Regions with
    under ``min_px`` such pixels are left out: lines packed so tightly that their padding is
    other lines' text, and only slivers at the photo's edges are left.)"""
    tight = np.zeros(current.shape[:2], bool)
    for r in regions:
        x0, y0, x1, y1 = r["box"]
        tight[y0:y1, x0:x1] = True
    steps = []
    for r in regions:
        x0, y0, x1, y1 = r["padded"]
        ring = np.zeros(current.shape[:2], bool)
        ring[y0:y1, x0:x1] = True
        ring &= ~tight
        if r["fused"] and ring.sum() >= min_px:
            steps.append(float(np.abs(np.median((out - current)[ring], axis=0)).max()) / LEVEL)
    assert steps
    return np.array(steps)


def test_text_regions_take_the_photos_background_tone(shared_images, runtimes, monkeypatch):
    """A region model whose output is 0.06 darker than the whole-photo result (the built-in
    Lanczos x2 here) drew a darker box around every text line: the padding's median step was
    8.5-13.8 levels of 255. The region is now brought to the photo's background tone (median
    over its padding), its glyphs kept: 0.02-0.06."""
    import engine.restore.text as T

    def darker(crop, model_id, scale, ctx, progress=None):
        h, w = crop.shape[:2]
        return np.clip(cv2.resize(crop, (w * scale, h * scale),
                                  interpolation=cv2.INTER_CUBIC) - 0.06, 0.0, 1.0)

    monkeypatch.setattr(T, "realesrgan", darker)
    source = _load(shared_images, TEXT, rows=0.5)
    current = get_step("upscale_builtin").fn(source, {"scale": 2}, _ctx(runtimes[0])).image
    out, regions = _fuse(runtimes[0], source, current)
    steps = _box_tone_steps(out, current, regions)
    print(f"box tone step (levels): mean {steps.mean():.2f} max {steps.max():.2f}")
    assert steps.max() < 1.5, steps
    # inside the boxes the region model's text is there (not the photo's)
    inside = np.zeros(current.shape[:2], bool)
    for r in regions:
        x0, y0, x1, y1 = r["box"]
        inside[y0:y1, x0:x1] = True
    assert np.abs(out[inside] - current[inside]).mean() > 0.5 * LEVEL


def test_text_regions_from_two_different_models_leave_no_box(shared_images, runtimes):
    """Two different (random) Real-ESRGANs through the store, one for the whole photo and one
    for the text regions, on a real scanned page: the region model's other tone made a box of
    1.6-3.2 levels around the lines (mean 2.4); now 0.0-0.2 (mean 0.08). The blend's own edge
    stays smooth, before and after: where the padded box ends, the change is under 0.5
    levels."""
    region_rt, base_rt = runtimes
    source = _load(shared_images, PAGE, max_side=300)
    current = get_step("sr_realesrgan").fn(source, {"scale": 2}, _ctx(base_rt)).image
    out, regions = _fuse(region_rt, source, current)
    steps = _box_tone_steps(out, current, regions)
    print(f"box tone step (levels): mean {steps.mean():.2f} max {steps.max():.2f}")
    assert steps.mean() < 1.0 and steps.max() < 1.5, steps
    # the outer edge of each padded box: the change just inside it, where just outside it the
    # photo is untouched (no other region there)
    d = np.abs(out - current).max(axis=-1) / LEVEL
    oh, ow = current.shape[:2]
    for r in regions:
        x0, y0, x1, y1 = r["padded"]
        edges = [(d[y0, x0:x1], d[y0 - 1, x0:x1]) if y0 > 0 else None,
                 (d[y1 - 1, x0:x1], d[y1, x0:x1]) if y1 < oh else None,
                 (d[y0:y1, x0], d[y0:y1, x0 - 1]) if x0 > 0 else None,
                 (d[y0:y1, x1 - 1], d[y0:y1, x1]) if x1 < ow else None]
        for e in edges:
            if e is not None and (e[1] == 0).any():
                assert e[0][e[1] == 0].max() < 0.5, (r["padded"], e[0][e[1] == 0].max())


def test_match_tone_keeps_the_glyphs_contrast():
    base = np.full((20, 40, 3), 0.8, np.float32)
    base[8:12, 10:30] = 0.3  # soft text
    sr = np.full((20, 40, 3), 0.74, np.float32)  # the region model: darker paper ...
    sr[8:12, 10:30] = 0.1  # ... and blacker glyphs
    inner = (slice(6, 14), slice(8, 32))
    out = match_tone(sr, base, inner)
    np.testing.assert_allclose(out[0, 0], 0.8, atol=1e-6)  # the photo's paper
    np.testing.assert_allclose(out[10, 20], 0.16, atol=1e-6)  # the model's contrast (0.64)
    # no padding to measure on (a box that fills the photo): as it was
    assert match_tone(sr, base, (slice(0, 20), slice(0, 40))) is sr



class _Lines:
    """Stands in for PP-OCR: the given text boxes, read the same before and after."""

    name = "fake"

    def __init__(self, boxes, height):
        self.boxes, self.height = boxes, height

    def detect(self, bgr):  # (the step looks for text with a margin around the photo)
        m = (bgr.shape[0] - self.height) // 2
        return [np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], np.float32) + m
                for x0, y0, x1, y1 in self.boxes]

    def recognize_many(self, crops):
        return [("text", 0.9) for _ in crops]


def test_overlapping_lines_a_uniform_tone_change_leaves_no_box(runtimes, monkeypatch):
    """Two overlapping lines and one clipped by the photo's top, with a stand-in region model
    that halves every value on a flat grey photo: before, each line sat in a box 0.4 darker
    than the photo (102 levels); now the region's tone is the photo's. The blend's weights are
    those of before (full weight inside every box, each edge fading over its own padding):
    with the tone matching left out, the result is the old one."""
    import engine.restore.text as T

    monkeypatch.setattr(T, "realesrgan", lambda crop, *a, **k: cv2.resize(
        crop * 0.5, (crop.shape[1] * 4, crop.shape[0] * 4), interpolation=cv2.INTER_NEAREST))
    img = np.full((120, 200, 3), 0.8, np.float32)

    def fuse(boxes):
        runtime = make_runtime(runtimes[0].store)
        runtime.cached(("ocr", "rapidocr"), lambda: _Lines(boxes, img.shape[0]), 1)
        return _fuse(runtime, img, img)[0]

    boxes = [(20, 30, 120, 50), (60, 40, 170, 60), (30, 0, 120, 30)]
    np.testing.assert_allclose(fuse(boxes), img, atol=1e-6)  # no box
    monkeypatch.setattr(T, "match_tone", lambda sr, base, inner, min_ring=16: sr)
    res = fuse(boxes[:2])
    for x0, y0, x1, y1 in boxes[:2]:
        assert np.allclose(res[y0:y1, x0:x1], 0.4, atol=1e-3), (x0, y0)
    col = fuse(boxes[2:])[:, 75, 0]
    assert np.allclose(col[:30], 0.4, atol=1e-3) and np.allclose(col[40:], 0.8, atol=1e-3)
    assert np.abs(np.diff(col[28:42])).max() < 0.1, col[28:42]


# ------------------------------------------------------------------------------ faces
def _read(path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return np.ascontiguousarray(img[..., ::-1], dtype=np.float32) / 255.0


def _faces(img):
    faces, _ = detect_faces(img, None)  # the built-in Haar detector: deterministic
    faces.sort(key=lambda f: f.size, reverse=True)
    return faces


def _only(j, delta=0.1):
    """A restorer that brightens face ``j`` (by call order) by ``delta``, the others not."""
    calls = iter(range(1000))
    return lambda crop: crop + (delta if next(calls) == j else 0.0)


def _centre(face, frac=0.5):
    """The middle ``frac`` of the face's box (the face itself, whatever its neighbours)."""
    x0, y0, x1, y1 = face.box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, frac * (x1 - x0) / 2, frac * (y1 - y0) / 2
    return slice(round(cy - hh), round(cy + hh)), slice(round(cx - hw), round(cx + hw))


def test_a_neighbours_crop_does_not_paint_over_a_restored_face(shared_images):
    """Two faces cheek to cheek (a real photo): each face's crop is about twice the face, so the
    second face's square crop, pasted last at full weight, covered the first face with its own
    off-centre copy of it: in the middle of the first face's box, the neighbour's share was
    0.75 and the face's own 0.24. Now each pixel goes mostly to the face whose centre it is
    nearer, whatever the order: 0.002 and 0.99."""
    img = _read(shared_images / COUPLE)
    faces = _faces(img)
    assert len(faces) == 2
    same = restore_faces(img, faces, lambda crop: crop)
    for i in (0, 1):
        other = 1 - i
        # the share of face ``other``'s restoration in the middle of face ``i``
        share = (restore_faces(img, faces, _only(other)) - same)[_centre(faces[i])] / 0.1
        own = (restore_faces(img, faces, _only(i)) - same)[_centre(faces[i])] / 0.1
        print(f"face {i}: neighbour's share {share.mean():.3f}, own {own.mean():.3f}")
        assert share.mean() < 0.05 and (share > 0.5).mean() < 0.02, share.mean()
        assert own.mean() > 0.9
    # the order of the faces does not matter
    a = restore_faces(img, faces, lambda crop: np.clip(crop * 0.9 + 0.08, 0, 1))
    b = restore_faces(img, faces[::-1], lambda crop: np.clip(crop * 0.9 + 0.08, 0, 1))
    assert np.abs(a - b).max() < 1e-5


def test_a_face_kept_as_it_was_is_not_painted_over_by_its_neighbour(shared_images):
    """The identity check keeps a face as it was; its neighbour's restored crop covered it
    all the same (94 % of its middle changed by over 2 levels; now none)."""
    img = _read(shared_images / COUPLE)
    faces = _faces(img)
    calls = iter(range(10))

    def fn(crop):  # face 0: turned into its negative (kept as it was); face 1: restored
        return 1.0 - crop if next(calls) == 0 else np.clip(crop + 0.1, 0, 1)

    kept: list[int] = []
    out = restore_faces(img, faces, fn, kept_original=kept)
    assert kept == [0]
    mid = _centre(faces[0])
    changed = np.abs(out[mid] - img[mid]).max(axis=-1) > 2 * LEVEL
    assert changed.mean() < 0.02, changed.mean()
    mid1 = _centre(faces[1])
    assert np.abs(out[mid1] - img[mid1]).mean() > 0.05  # the other face was restored


def _contour_jump(change, area):
    """Largest step (levels) in ``change`` between neighbouring pixels across the edge of the
    pasted ``area`` (bool)."""
    out = [0.0]
    for ax in (0, 1):
        d, a = np.moveaxis(change, ax, 0), np.moveaxis(area, ax, 0)
        edge = a[1:] != a[:-1]
        if edge.any():
            out.append(float(np.abs(d[1:] - d[:-1]).max(axis=-1)[edge].max()))
    return max(out) / LEVEL


@pytest.mark.parametrize("where", ["inside", "at the border"])
def test_no_seam_where_a_pasted_face_ends(shared_images, where):
    """The paste faded out over the whole square crop to ~2 % at its edge, then stopped, and
    the warp mixed black into the crop's outer pixels: a faint square outline, a step of 2.2
    levels on this photo with an identity restorer or one that changes the tone by 8 %. Now
    the mask is the face's, 0 well inside the crop: 0.03 and 0.19. Also with the face at the
    photo's edge (its crop partly outside the photo)."""
    img = _read(shared_images / ONE_FACE)
    faces = _faces(img)
    assert len(faces) == 1
    if where == "at the border":
        cut = int(faces[0].box[0] + 0.3 * faces[0].size)  # the face's left third cut off
        img = np.ascontiguousarray(img[:, cut:])
        bx0, by0, bx1, by1 = faces[0].box
        faces = [Face((bx0 - cut, by0, bx1 - cut, by1), 1.0, None)]
    x0, y0, x1, y1 = paste_region(face_matrix(faces[0]), img.shape[:2])
    outside = np.ones(img.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    # the pasted area: where a restorer that changes every pixel changes the photo
    area = restore_faces(np.full_like(img, 0.5), faces, lambda crop: crop * 0 + 0.6)[..., 0] > 0.5
    for name, fn in (("identity", lambda crop: crop),
                     ("tone", lambda crop: np.clip(crop * 0.9 + 0.08, 0, 1))):
        out = restore_faces(img, faces, fn)
        jump = _contour_jump(out - img, area)
        print(f"{where}, {name} restorer: largest step at the paste's edge {jump:.2f} levels")
        assert jump < 0.5, (name, jump)
        np.testing.assert_array_equal(out[outside], img[outside])
    # the face itself got the restorer's full weight
    mid = _centre(faces[0], 0.4)
    full = np.clip(img[mid] * 0.9 + 0.08, 0, 1)
    assert np.abs(out[mid] - full).mean() < 0.01  # (up to the resampling of the crop)


def test_face_mask_is_over_the_face_and_zero_at_the_crop_edge():
    m = face_mask(512)
    alpha, priority = m[..., 0], m[..., 1]
    edge = np.concatenate([alpha[:8].ravel(), alpha[-8:].ravel(), alpha[:, :8].ravel(),
                           alpha[:, -8:].ravel()])
    assert edge.max() == 0.0
    # full weight on the eyes, nose, mouth and chin of the FFHQ template
    for x, y in ((193, 240), (319, 240), (257, 314), (201, 371), (313, 371), (256, 440)):
        assert alpha[y, x] == 1.0 and priority[y, x] > 0
    assert ((priority > 0) == (alpha > 0)).all()
    small = face_mask(64)  # (the tests' small crops) the same shape
    np.testing.assert_allclose(small[..., 0], cv2.resize(alpha, (64, 64),
                                                         interpolation=cv2.INTER_AREA),
                               atol=0.08)


def test_face_box_larger_than_the_photo_and_tiny_faces(shared_images):
    """A box larger than the photo (a detector may give one up to twice its size) is pasted
    over the photo with no error and nothing outside it; a 48-px face (the smallest restored)
    keeps its place (phase correlation under 0.1 px with an identity restorer)."""
    img = _read(shared_images / ONE_FACE)
    h, w = img.shape[:2]
    big = Face((-0.3 * w, -0.3 * h, 1.3 * w, 1.3 * h), 0.9, None)
    out = restore_faces(img, [big], lambda crop: np.clip(crop * 0.9 + 0.08, 0, 1))
    assert out.shape == img.shape and np.isfinite(out).all()
    assert np.abs(out - img).max() > 0.05
    face = _faces(img)[0]
    f = 48 / face.size
    small = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
    tiny = _faces(small) or [Face(tuple(v * f for v in face.box), 1.0, None)]
    out = restore_faces(small, tiny, lambda crop: crop)
    x0, y0, x1, y1 = (int(v) for v in tiny[0].box)
    a = cv2.cvtColor(small[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY).astype(np.float64)
    b = cv2.cvtColor(out[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY).astype(np.float64)
    (dx, dy), _ = cv2.phaseCorrelate(a, b)
    assert abs(dx) < 0.1 and abs(dy) < 0.1, (dx, dy)
    px0, py0, px1, py1 = paste_region(face_matrix(tiny[0]), small.shape[:2])
    outside = np.ones(small.shape[:2], bool)
    outside[py0:py1, px0:px1] = False
    np.testing.assert_array_equal(out[outside], small[outside])

