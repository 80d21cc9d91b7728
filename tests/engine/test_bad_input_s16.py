"""Odd inputs against session 16's new paths: a TIFF turned by its orientation tag (thumbnail
and photo), the whole-photo work of a preview (the transparent fill, the glare detector's mask,
the memory check) on large photos."""
from __future__ import annotations

import hashlib
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from engine import imageio as mio
from engine.api import Degradation, JobRequest, OutputOptions, Plan, Step
from engine.errors import BadImage, Cancelled, ImageTooLarge, OutOfMemory
from engine.pipeline import Engine, TransparentFill, context_box, fill_transparent

H, W = 30, 40


def _rgba() -> np.ndarray:
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    rgba[:, : W // 3, 3] = 0
    return rgba


def _upright(a: np.ndarray, orientation: int) -> np.ndarray:
    return np.rot90(a, -1) if orientation == 6 else np.rot90(a, 1)


@pytest.mark.parametrize("orientation", [6, 8])
@pytest.mark.parametrize("mode", ["RGBA", "L", "RGB"])
def test_an_uncompressed_tiff_turned_by_its_tag_is_upright_not_garbled(tmp_path, mode,
                                                                       orientation):
    """Pillow's memory-mapped read of an uncompressed grey or RGBA TIFF whose orientation tag
    turns it (5-8) laid the stored rows out at the upright size: the photo, its thumbnail
    (``load_preview_rgba``) and a mask saved so came out as stripes."""
    rgba = _rgba()
    arr = {"RGBA": rgba, "L": rgba[..., 0], "RGB": rgba[..., :3]}[mode]
    exif = Image.Exif()
    exif[274] = orientation
    path = tmp_path / "turned.tif"
    Image.fromarray(np.ascontiguousarray(arr), mode).save(path, exif=exif)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    want = _upright(arr, orientation)

    photo = mio.load_photo(path)
    got = np.round(photo.pixels * 255).astype(np.uint8)
    if mode == "L":
        got = got[..., 0]
    elif mode == "RGBA":
        got = np.dstack([got, np.round(photo.alpha * 255).astype(np.uint8)])
    assert np.array_equal(got, want)

    rgb, alpha = mio.load_preview_rgba(path, 256)  # (smaller than 256: not reduced)
    assert rgb.shape[:2] == want.shape[:2] == (W, H)
    if mode == "RGBA":
        assert alpha is not None and np.array_equal(alpha, want[..., 3])
        visible = want[..., 3] == 255
        assert np.array_equal(rgb[visible], want[..., :3][visible])
    else:
        assert alpha is None
        assert np.array_equal(rgb, want if mode == "RGB" else np.dstack([want] * 3))
    if mode == "L":  # a mask saved as such a TIFF
        assert np.array_equal(mio.load_mask(path), want)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def _push_pull(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The push-pull fill made level by level, whole (what ``fill_transparent`` computes)."""
    import cv2

    hole = alpha <= 0.5 / 255.0
    weight = (~hole).astype(np.float32)
    levels = [(rgb * weight[..., None], weight)]
    while max(levels[-1][1].shape) > 1:
        col, w = levels[-1]
        size = (max(1, (w.shape[1] + 1) // 2), max(1, (w.shape[0] + 1) // 2))
        levels.append((cv2.resize(col, size, interpolation=cv2.INTER_AREA).reshape(
            size[1], size[0], 3), cv2.resize(w, size, interpolation=cv2.INTER_AREA).reshape(
            size[1], size[0])))
    fill = None
    for col, w in reversed(levels):
        own = col / np.maximum(w, 1e-6)[..., None]
        if fill is not None:
            up = cv2.resize(fill, (w.shape[1], w.shape[0]), interpolation=cv2.INTER_LINEAR)
            a = np.minimum(w, 1.0)[..., None]
            own = own * a + up.reshape(own.shape) * (1.0 - a)
        fill = own
    return np.where(hole[..., None], np.clip(fill, 0.0, 1.0), rgb).astype(np.float32)


@pytest.mark.parametrize("shape", [(2, 1), (7, 1), (1, 9), (101, 77), (999, 1001)])
def test_the_fill_is_the_push_pull_fill(shape):
    rng = np.random.default_rng(3)
    rgb = rng.random((*shape, 3), dtype=np.float32)
    alpha = (rng.random(shape) > 0.6).astype(np.float32)
    alpha[: shape[0] // 2, : shape[1] // 2] = 0
    alpha.flat[0], alpha.flat[-1] = 0.0, 1.0
    got = fill_transparent(rgb, alpha)
    visible = alpha > 0
    assert got.dtype == np.float32 and np.array_equal(got[visible], rgb[visible])
    assert np.abs(got - _push_pull(rgb, alpha)).max() < 1e-4


@pytest.mark.parametrize("shape", [(101, 77), (100, 77), (101, 78), (515, 300), (2, 1),
                                   (600, 513)])
def test_a_part_of_the_fill_is_that_part_of_the_whole_fill(shape):
    """A preview fills only its part when no step looks at the whole photo: the same pixels
    as the whole fill's there, to the bit (whichever side of the photo is odd), single rows
    at the photo's edge included; the whole made after parts of the same fill is the whole
    fill."""
    rng = np.random.default_rng(11)
    h, w = shape
    rgb = rng.random((h, w, 3), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    alpha = (((yy - h / 2) / (0.4 * h + 1)) ** 2 + ((xx - w / 2) / (0.4 * w + 1)) ** 2 < 1)
    alpha = np.where(rng.random(shape) > 0.9, 0.5, alpha).astype(np.float32)
    alpha.flat[0], alpha.flat[-1] = 0.0, 1.0
    whole = fill_transparent(rgb, alpha)
    boxes = [(0, 0, w, h), (0, h - 1, w, h), (w // 2, h - 1, w, h), (0, 0, 1, 1),
             (w // 3, h // 4, w - w // 5, h - h // 3)]
    boxes += [(int(x0), int(y0), int(rng.integers(x0 + 1, w + 1)),
               int(rng.integers(y0 + 1, h + 1)))
              for x0, y0 in zip(rng.integers(0, w, 6), rng.integers(0, h, 6), strict=True)]
    fill = TransparentFill(rgb, alpha)
    for x0, y0, x1, y1 in boxes:
        part = fill((x0, y0, x1, y1))
        assert part.dtype == np.float32 and part.shape == (y1 - y0, x1 - x0, 3)
        assert np.array_equal(part, whole[y0:y1, x0:x1]), (x0, y0, x1, y1)
        assert np.array_equal(fill_transparent(rgb, alpha, box=(x0, y0, x1, y1)), part)
    assert np.array_equal(fill(), whole)


def test_the_fill_of_a_large_photo_makes_no_whole_size_levels_and_can_be_cancelled():
    """A preview fills the whole photo's transparent pixels (the whole fix too): made level by
    level in full, a 120-megapixel RGBA PNG took 40 s and 8.4 GB more than the photo (81 bytes
    a pixel here), and a cancel waited for all of it."""
    h, w = 2000, 3000
    rng = np.random.default_rng(5)
    rgb = rng.random((h, w, 3), dtype=np.float32)
    alpha = np.ones((h, w), np.float32)
    alpha[:, : w // 3] = 0.0
    alpha[h // 2:, w // 2:] = 0.5
    tracemalloc.start()
    try:
        out = fill_transparent(rgb, alpha)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / (h * w) < 30  # the result itself is 12 bytes a pixel
    assert np.array_equal(out[:, w // 3:], rgb[:, w // 3:])

    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise Cancelled()

    with pytest.raises(Cancelled):
        fill_transparent(rgb, alpha, check)
    assert len(calls) == 3


def test_the_glare_detector_makes_no_int64_copy_of_the_whole_mask():
    """The detector works on a reduced view and brings its mask back to the photo's size: a
    preview runs it on the whole photo. ``(m > 127) * 255`` made an 8-byte-a-pixel copy of
    it (960 MB for 120 MP)."""
    from engine.restore.reflection import detect_glare

    h, w = 3000, 4000
    rng = np.random.default_rng(1)
    img = np.full((h, w, 3), 0.35, np.float32)
    img += rng.random((h, w, 1), dtype=np.float32) * 0.02
    tracemalloc.start()
    try:
        mask = detect_glare(img)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert mask.shape == (h, w) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= {0, 255}
    assert peak / (h * w) < 7


def test_a_preview_s_whole_photo_copies_can_be_cancelled():
    """A preview's detectors see a whole-photo copy (``WholePhoto.view``; the text step lays a
    transparent photo over a background first): at 120 MP those took 3.3 s and 10 s that no
    cancel could stop. Made in bands with a cancel check between them, the same pixels."""
    from engine.restore.registry import WholePhoto
    from engine.restore.text import _over_background

    h, w = 2100, 300
    rng = np.random.default_rng(2)
    px = rng.random((h, w, 3), dtype=np.float32)
    alpha = rng.random((h, w)).astype(np.float32)
    alpha[: h // 3] = 0.0
    whole = WholePhoto(px, alpha, (10, 20, 110, 220))
    changed = whole.part + np.float32(0.25)
    calls = []

    def count() -> None:
        calls.append(1)

    seen = whole.view(changed, count)
    assert np.array_equal(seen[20:220, 10:110], changed)
    seen[20:220, 10:110] = px[20:220, 10:110]
    assert np.array_equal(seen, px) and len(calls) >= h // 512
    assert whole.view(whole.part, count) is px  # (unchanged: the photo itself, no copy)

    a = np.clip(alpha, 0.0, 1.0)[..., None]
    light = float(px[alpha > 0.5].mean()) > 0.6
    want = px * a + (0.0 if light else 1.0) * (1.0 - a)
    calls.clear()
    assert np.array_equal(_over_background(px, alpha, count), want) and len(calls) >= 2

    def cancel_at_2() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise Cancelled()

    for make in (lambda: whole.view(changed, cancel_at_2),
                 lambda: _over_background(px, alpha, cancel_at_2)):
        calls.clear()
        with pytest.raises(Cancelled):
            make()


SHARPEN = Plan(Degradation.A, "builtin", (Step("sharpen_builtin", {"strength": 0.5}),))
GLARE = Plan(Degradation.B, "builtin", (Step("sharpen_builtin", {"strength": 0.5}),
                                        Step("reflection_mask", {"detector": "builtin"}),
                                        Step("inpaint_builtin", {"fill_detected": True})))


@pytest.mark.parametrize("plan", [SHARPEN, GLARE], ids=["sharpen", "glare"])
def test_a_preview_counts_the_whole_photo_it_holds_and_looks_at(tmp_path, monkeypatch, plan):
    """A preview's memory check counted the part alone, while the job holds the whole photo,
    fills its transparent pixels whole and gives its detectors a whole-photo copy: on a
    machine that can hold the part but not that, the preview is refused with the reason
    (the dry run says it too), before that work; the original is not touched."""
    from engine import devices

    h, w = 900, 1200
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    rgba[..., 3] = 255
    rgba[:, : w // 4, 3] = 0
    src = tmp_path / "cut.png"
    Image.fromarray(rgba, "RGBA").save(src)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    region = (w - 200, h - 200, w, h)  # (a corner)
    eng = Engine("cpu")
    x0, y0, x1, y1 = context_box(region, (h, w))
    part_need = eng.estimate(plan, (y1 - y0, x1 - x0)).peak_bytes
    whole = h * w * (12 + 4 + 24)  # at least: the photo and its alpha held, the fill
    monkeypatch.setattr(devices, "system_memory", lambda: part_need + whole // 2)
    monkeypatch.setattr(devices, "available_memory", lambda: 1 << 40)
    filled = []
    real_fill = TransparentFill.__call__  # (every fill: a part's, the whole's)

    def spy(self, *a, **k):
        filled.append(1)
        return real_fill(self, *a, **k)

    monkeypatch.setattr(TransparentFill, "__call__", spy)
    out = tmp_path / "out"
    req = JobRequest(src, OutputOptions(out_dir=out, format="png"), plan=plan,
                     profile="builtin", backend="builtin", region=region)
    with pytest.raises(OutOfMemory, match=r"this preview needs about .* for this 1-megapixel"):
        eng.run(req)
    assert not filled
    assert not out.exists() or not any(out.iterdir())
    prepared = eng.prepare(req)
    assert any(m.startswith("the run would stop: this preview needs") for m in prepared.warnings)
    assert prepared.estimate.peak_bytes >= part_need + whole  # (what --dry-run shows)

    monkeypatch.setattr(devices, "system_memory", lambda: part_need + 4 * whole)
    res = eng.run(req)
    assert res.output.is_file() and filled
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


def test_a_photo_over_the_pixel_limit_is_refused_by_the_thumbnail_decode(tmp_path,
                                                                        monkeypatch):
    """The transparent thumbnail decode enforces the pixel limit ``load_photo`` does (a PNG
    header is read, nothing decoded)."""
    src = tmp_path / "big.png"
    Image.new("RGBA", (2000, 1000), (255, 0, 0, 0)).save(src)
    monkeypatch.setenv("MEND_MAX_MEGAPIXELS", "1")
    for load in (mio.load_preview_rgba, mio.load_preview):
        with pytest.raises(ImageTooLarge, match="too large"):
            load(src, 256)
    with pytest.raises(ImageTooLarge):
        mio.load_photo(src)


def test_shared_odd_files_give_a_thumbnail_or_a_clear_error(shared_images):
    """Every file of odd_corrupt (truncated, broken, bombs, bad EXIF, 16-bit, animated) through
    the transparent thumbnail decode: an image no larger than asked, or a BadImage naming the
    file - never another exception."""
    folder = shared_images / "odd_corrupt"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    seen = 0
    for p in sorted(folder.iterdir()):
        seen += 1
        try:
            rgb, alpha = mio.load_preview_rgba(p, 128)
        except BadImage as e:
            assert str(p) in str(e)
            continue
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and max(rgb.shape[:2]) <= 128
        assert alpha is None or alpha.shape == rgb.shape[:2]
    assert seen >= 30


def _cutout_photo(path, h: int = 600, w: int = 800) -> None:
    """An RGBA cut-out: an ellipse of texture, black under the transparent pixels around it."""
    rng = np.random.default_rng(3)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = rng.integers(40, 220, (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2 < 1
    rgba[..., 3] = np.where(inside, 255, 0)
    rgba[~inside, :3] = 0
    Image.fromarray(rgba, "RGBA").save(path)


@pytest.mark.parametrize("plan", [SHARPEN, GLARE], ids=["sharpen", "glare"])
def test_a_preview_fills_the_whole_photo_only_for_a_step_that_looks_at_it(tmp_path,
                                                                          monkeypatch, plan):
    """A transparent photo's preview filled the whole photo (a 120-megapixel one: 17 s of its
    27 s, and a whole-photo copy held through the steps) when no step looked beyond its part
    (a sharpening): now only the part is filled, the same pixels; a step that looks at the
    whole photo (the glare detector) still has it filled. The preview is the whole fix's
    pixels there."""
    from engine import pipeline

    src = tmp_path / "cut.png"
    _cutout_photo(src)
    region = (60, 200, 360, 420)  # (across the ellipse's left edge)
    box = context_box(region, (600, 800))
    made = []

    def spy(real):
        def fill(*a, **k):
            out = real(*a, **k)
            made.append(out.shape[:2])
            return out
        return fill

    # (the old code's whole fill too: fill_transparent, as the pipeline called it)
    monkeypatch.setattr(pipeline, "fill_transparent", spy(pipeline.fill_transparent))
    monkeypatch.setattr(TransparentFill, "__call__", spy(TransparentFill.__call__),
                        raising=False)
    eng = Engine("cpu")
    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "out", format="png"), plan=plan,
                     profile="builtin", backend="builtin", region=region, guard=False)
    prev = eng.run(req)
    part = (box[3] - box[1], box[2] - box[0])
    if plan is SHARPEN:
        assert made == [part]
    else:
        assert (600, 800) in made
    whole = eng.run(replace(req, region=None, output=OutputOptions(out_dir=tmp_path / "whole",
                                                                   format="png")))
    x0, y0, x1, y1 = region
    got, want = mio.load_photo(prev.output), mio.load_photo(whole.output)
    assert np.array_equal(got.pixels, want.pixels[y0:y1, x0:x1])
    assert np.array_equal(got.alpha, want.alpha[y0:y1, x0:x1])
