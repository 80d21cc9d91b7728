"""Previews of part of a photo (``JobRequest.region``) on real photos with the builtin steps:
the photo is diagnosed whole, the steps run on the region and a margin of context, and the
region's result equals that part of a whole-photo run; SR scale, alpha and the reflection mask
follow; the region is checked; the original is never touched and a preview never takes or
replaces a result's name."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine import pipeline
from engine.api import Degradation, JobRequest, OutputOptions, Plan, Step
from engine.errors import UsageError
from engine.imageio import load_photo, read_record, save_mask
from engine.pipeline import Engine, check_region, context_box
from tests import warm_cli

ROOT = Path(__file__).resolve().parents[2]
# upright 1800 x 1200 (stored 1200 x 1800 with EXIF orientation 6): regions are upright pixels
ROTATED = "exif_orientation/exif-orientation-example__Landscape_6.jpg"
ASTRONAUT = "clean/scikit-image__skimage__data__astronaut.png"  # 512 x 512
DOG = "reflection/windowseat-reflection-re__example_images__dog.png"  # RGBA, 1032 x 1032
SHARPEN = Plan(Degradation.A, "builtin", (Step("sharpen_builtin", {"strength": 0.8,
                                                                   "radius": 1.5}),))
X2 = Plan(Degradation.A, "builtin", (Step("upscale_builtin", {"scale": 2}),
                                     Step("sharpen_builtin", {"strength": 0.6})))


def _photo(shared_images: Path, rel: str) -> Path:
    p = shared_images / rel
    if not p.is_file():
        pytest.skip(f"{rel} is not in {shared_images} (see its manifest.tsv)")
    return p


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu")


def _run(engine: Engine, src: Path, out: Path, plan: Plan, region=None, **kw):
    opts = OutputOptions(out_dir=out, format="png")
    return engine.run(JobRequest(src, opts, plan=plan, profile="builtin", backend="builtin",
                                 region=region, **kw))


def test_a_region_is_that_part_of_the_whole_photo_run(shared_images, engine, tmp_path,
                                                       monkeypatch):
    """Sharpening is local (a ~10-px reach): with the margin of context the preview equals the
    whole run's pixels over the whole region (the photo's own edge included), in the upright
    photo's pixels of an EXIF-rotated JPEG; without the margin, its border would not."""
    src = _photo(shared_images, ROTATED)
    before = _sha(src)
    whole = _run(engine, src, tmp_path, SHARPEN, guard=False)
    full = load_photo(whole.output).pixels
    assert full.shape == (1200, 1800, 3)
    for region in ((701, 303, 1500, 1000), (0, 900, 400, 1200)):  # inside; at a corner
        prev = _run(engine, src, tmp_path, SHARPEN, region=region, guard=False)
        assert prev.region == region
        assert prev.output.stem.startswith(f"{src.stem}_mend_preview")
        got = load_photo(prev.output).pixels
        x0, y0, x1, y1 = region
        assert got.shape == (y1 - y0, x1 - x0, 3)
        diff = np.abs(got - full[y0:y1, x0:x1])
        assert diff.max() <= 1.5 / 255, diff.max() * 255  # (8-bit rounding at most)
        assert diff.mean() < 1e-4
    # the margin is what makes it so: run on the bare region, its edges are sharpened against
    # a mirrored border, not the photo's pixels
    monkeypatch.setattr(pipeline, "PREVIEW_MARGIN", 0)
    bare = load_photo(_run(engine, src, tmp_path, SHARPEN, region=(701, 303, 1500, 1000),
                           guard=False).output).pixels
    edge = np.abs(bare[:, :3] - full[303:1000, 701:704])
    assert edge.max() > 3 / 255
    assert _sha(src) == before


def test_an_upscaling_chain_trims_its_margin_at_the_output_scale(shared_images, engine,
                                                                 tmp_path):
    src = _photo(shared_images, ASTRONAUT)
    whole = load_photo(_run(engine, src, tmp_path, X2, guard=False).output).pixels
    assert whole.shape == (1024, 1024, 3)
    region = (101, 53, 400, 350)  # odd corners: the x2 crop starts at 202, 106
    prev = _run(engine, src, tmp_path, X2, region=region, guard=False)
    got = load_photo(prev.output).pixels
    assert got.shape == (2 * 297, 2 * 299, 3)
    diff = np.abs(got - whole[106:700, 202:800])
    assert diff.max() <= 1.5 / 255, diff.max() * 255
    rec = read_record(prev.output)
    assert rec["preview"] is True and rec["region"] == list(region)


def test_the_region_is_checked_against_the_photo(shared_images, engine, tmp_path):
    src = _photo(shared_images, ROTATED)
    size = (1200, 1800)
    assert check_region((10, 20, 30, 40), size) == ((10, 20, 30, 40), False)
    assert check_region((-5, 1100, 30.5, 1300), size) == ((0, 1100, 31, 1200), True)
    for bad, says in (((10, 10, 10, 50), "empty"), ((50, 10, 40, 60), "empty"),
                      ((1800, 0, 1900, 100), "outside the 1800 x 1200"),
                      ((-100, -100, -1, -1), "outside"), ((1, 2, 3), "four numbers"),
                      (("a", 0, 1, 1), "four numbers"), ((0, 0, float("inf"), 5), "finite"),
                      ((True, 0, 5, 5), "four numbers")):
        with pytest.raises(UsageError, match=says):
            check_region(bad, size)
    # the run refuses it before any work (nothing is written) and clips what reaches out
    with pytest.raises(UsageError, match="outside"):
        _run(engine, src, tmp_path / "none", SHARPEN, region=(2000, 0, 2100, 50))
    with pytest.raises(UsageError, match="empty"):
        _run(engine, src, tmp_path / "none", SHARPEN, region=(100, 100, 100, 200))
    assert not (tmp_path / "none").exists()
    r = _run(engine, src, tmp_path, SHARPEN, region=(1700, 1150, 1900, 1300), guard=False)
    assert r.region == (1700, 1150, 1800, 1200)
    assert any("clipped to 1700,1150,1800,1200" in w for w in r.warnings)
    assert load_photo(r.output).pixels.shape == (50, 100, 3)
    assert context_box(r.region, size) == (1700 - pipeline.PREVIEW_MARGIN,
                                           1150 - pipeline.PREVIEW_MARGIN, 1800, 1200)


def test_a_preview_never_takes_a_results_name_nor_touches_the_original(shared_images, engine,
                                                                      tmp_path):
    """A preview goes to NAME_mend_preview.EXT (then _1, ...): never NAME_mend.EXT, never over
    a file; a photo with nothing to fix is written afresh (its region), not copied."""
    src = _photo(shared_images, ROTATED)
    before = _sha(src)
    out = tmp_path / "out"
    real = engine.run(JobRequest(src, OutputOptions(out_dir=out), plan=SHARPEN,
                                 profile="builtin", guard=False))
    assert real.output.name == f"{src.stem}_mend.jpg" and real.region is None
    kept = _sha(real.output)
    p1 = engine.run(JobRequest(src, OutputOptions(out_dir=out), plan=SHARPEN, guard=False,
                               region=(0, 0, 300, 200)))
    p2 = engine.run(JobRequest(src, OutputOptions(out_dir=out), label=Degradation.D,
                               region=(0, 0, 300, 200)))
    assert p1.output.name == f"{src.stem}_mend_preview.jpg"
    assert p2.output.name == f"{src.stem}_mend_preview_1.jpg"
    assert [s.name for s in p2.steps] == ["passthrough"]
    with_d = load_photo(p2.output)
    assert with_d.pixels.shape == (200, 300, 3)  # the region, not the photo's bytes
    assert np.abs(with_d.pixels - load_photo(src).pixels[:200, :300]).max() < 8 / 255
    assert _sha(real.output) == kept and _sha(src) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [real.output.name, p1.output.name, p2.output.name])
    assert read_record(p1.output)["region"] == [0, 0, 300, 200]
    assert "region" not in (read_record(real.output) or {})
    # the result names its photo (--skip-existing); a preview, which no resume looks for, not
    # (its photo is not read again to hash it)
    assert read_record(real.output)["source"]["sha256"] == _sha(src)
    assert "source" not in read_record(p1.output)
    assert p1.to_json()["region"] == [0, 0, 300, 200] and "region" not in real.to_json()
    # what the run would do, without running: the estimate is that of the region's part
    prep = engine.prepare(JobRequest(src, OutputOptions(out_dir=out), plan=SHARPEN,
                                     region=(0, 0, 300, 200)))
    whole = engine.prepare(JobRequest(src, OutputOptions(out_dir=out), plan=SHARPEN))
    assert prep.region == (0, 0, 300, 200) and prep.size == whole.size == (1200, 1800)
    assert prep.output.name == f"{src.stem}_mend_preview_2.jpg"
    assert prep.estimate.peak_bytes <= whole.estimate.peak_bytes
    assert json.loads(json.dumps(prep.to_json()))["region"] == [0, 0, 300, 200]


def test_alpha_and_the_reflection_mask_are_cut_like_the_photo(shared_images, engine,
                                                             tmp_path):
    src = _photo(shared_images, DOG)
    photo = load_photo(src)
    assert photo.alpha is not None and photo.alpha.min() < 1.0
    mask = np.zeros(photo.pixels.shape[:2], np.uint8)
    mask[400:520, 380:470] = 255  # crosses the region's left edge
    mask_path = save_mask(mask, tmp_path / "mask.png")
    plan = Plan(Degradation.B, "builtin", (Step("reflection_mask", {"detector": "builtin"}),
                                           Step("inpaint_builtin")))
    region = (420, 380, 1032, 700)
    r = engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out", format="png"),
                              plan=plan, mask_path=mask_path, region=region, guard=False))
    x0, y0, x1, y1 = r.region
    assert r.region == (420, 380, 1032, 700)
    assert np.array_equal(r.artifacts["mask"], mask[y0:y1, x0:x1])
    assert "mask_path" not in r.artifacts  # (no mask file beside a preview)
    got = load_photo(r.output)
    assert got.pixels.shape == (y1 - y0, x1 - x0, 3)
    assert got.alpha is not None
    assert np.abs(got.alpha - photo.alpha[y0:y1, x0:x1]).max() <= 1 / 255
    # the masked pixels changed, those far from the mask did not
    changed = np.abs(got.pixels - photo.pixels[y0:y1, x0:x1]).max(-1) > 2 / 255
    visible = photo.alpha[y0:y1, x0:x1] > 0.99
    assert changed[30:130, 5:45][visible[30:130, 5:45]].mean() > 0.2
    assert not changed[250:, 300:][visible[250:, 300:]].any()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{src.stem}_mend_preview.png"]


def test_cli_region_writes_a_preview_and_refuses_what_cannot_be_one(shared_images, tmp_path):
    src = _photo(shared_images, ROTATED)
    env = dict(os.environ)
    r = warm_cli.run(["restore", str(src), "-o", str(tmp_path), "--profile", "builtin",
                      "--plan", "A", "--region", "100,50,400,250", "--json"],
                     env=env, timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    (line,) = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    assert line["region"] == [100, 50, 400, 250]
    out = Path(line["output"])
    assert out.name == f"{src.stem}_mend_preview.jpg" and out.parent == tmp_path
    assert load_photo(out).pixels.shape == (200, 300, 3)
    for args, says in (([str(src.parent)], "single photo"),
                       ([str(src), "--skip-existing"], "--skip-existing"),
                       ([str(src), "--region", "5,5,5,9"], "empty")):
        extra = [] if "--region" in args else ["--region", "0,0,10,10"]
        bad = warm_cli.run(["restore", *args, *extra, "-o", str(tmp_path / "x")], env=env,
                           timeout=240, cwd=ROOT)
        assert bad.returncode == 2 and says in bad.stderr, bad.stderr


# -- detectors that look at the whole photo: a preview sees what the whole fix sees -----------
BAKERY = "reflection/windowseat-reflection-re__example_images__bakery.jpg"  # 1024 x 682
GROUP = "faces/GFPGAN__inputs__whole_imgs__00.jpg"  # 1297 x 1920, two faces
PAGE_LR = "text_degraded/textbsr__textbsr__testsets__OnlyLR__t1.png"  # 720 x 576, one line
GLARE_FILLED = Plan(Degradation.B, "builtin", (
    Step("reflection_mask", {"detector": "builtin"}),
    Step("inpaint_builtin", {"fill_detected": True})))


def test_a_previews_glare_mask_is_the_whole_photos_cut_to_the_part(shared_images, engine,
                                                                   tmp_path):
    """The built-in glare detector's view, background and thresholds follow the whole frame:
    on the part and its margin alone it drew another mask (1.7 % of the part instead of the
    photo's 1.9 %, and fills up to 81 levels apart). Now it looks at the whole photo and the
    mask is cut to the part: the same mask and the same filled pixels as the whole fix."""
    src = _photo(shared_images, BAKERY)
    before = _sha(src)
    whole = _run(engine, src, tmp_path, GLARE_FILLED, guard=False)
    region = (204, 260, 684, 682)  # its left edge cuts a glare region (166..242 x 456..544)
    prev = _run(engine, src, tmp_path, GLARE_FILLED, region=region, guard=False)
    x0, y0, x1, y1 = region
    assert (whole.artifacts["mask"][y0:y1, x0:x1] > 0).any()
    assert np.array_equal(prev.artifacts["mask"], whole.artifacts["mask"][y0:y1, x0:x1])
    full = load_photo(whole.output).pixels
    got = load_photo(prev.output).pixels
    assert np.abs(got - full[y0:y1, x0:x1]).max() <= 1.5 / 255
    assert "found on the whole photo" in prev.steps[0].notes
    assert prev.steps[0].notes.endswith(whole.steps[0].notes)  # (the photo's share)
    assert _sha(src) == before


def test_a_previews_unfilled_mask_warning_gives_the_whole_photos_share(shared_images, engine,
                                                                         tmp_path):
    """An unchecked glare mask is not filled; the warning says how much of the photo the
    detector marked, the same in a preview (it gave the previewed part's share: 1.7 % of the
    part against the photo's 1.9 %)."""
    src = _photo(shared_images, BAKERY)
    plan = Plan(Degradation.B, "builtin", (Step("reflection_mask", {"detector": "builtin"}),
                                           Step("inpaint_builtin")))
    whole = _run(engine, src, tmp_path, plan, guard=False)
    prev = _run(engine, src, tmp_path, plan, region=(204, 260, 684, 682), guard=False)

    def said(res):
        return [w for w in res.warnings if w.startswith("reflections: the built-in detector")]

    assert len(said(whole)) == 1 and said(prev) == said(whole)
    assert prev.steps[1].notes == whole.steps[1].notes


def _standin_faces(monkeypatch, engine, restore=None):
    """CodeFormer's weights are not here: each aligned face is restored by a fixed change
    (sharper, a little brighter; or ``restore``) that the identity check accepts; detection
    (OpenCV's Haar cascade), alignment and paste-back are the real ones."""
    import cv2

    from engine.restore import face

    def sharper(crop):
        blur = cv2.GaussianBlur(crop, (0, 0), 2.0)
        return np.clip(crop + 1.5 * (crop - blur) + 0.03, 0.0, 1.0)

    def fn(descriptor, device, fidelity, check=None):
        return restore or sharper

    monkeypatch.setattr(face, "codeformer_fn", fn)
    monkeypatch.setattr(engine.runtime, "load_image_model", lambda model_id: None)
    # (so CodeFormer counts as installed: a run checks its plan's models before any step)
    installed = engine.runtime.is_available
    monkeypatch.setattr(engine.runtime, "is_available",
                        lambda model_id: model_id == "codeformer" or installed(model_id))


def test_a_preview_finds_and_restores_faces_as_the_whole_fix(shared_images, engine, tmp_path,
                                                             monkeypatch):
    """Faces were looked for in the part and its margin, at another detection scale than the
    whole photo's (its 1280-px view): a face the part's edge cuts came out 186 px instead of
    191, the other face was not found, and the preview's pixels were up to 32 levels from the
    whole fix's. Now the faces are found in the whole photo and restored from all their
    pixels: the same pixels, and the face boxes in the photo's pixels."""
    _standin_faces(monkeypatch, engine)
    src = _photo(shared_images, GROUP)
    plan = Plan(Degradation.C, "laptop", (Step("face_codeformer", {"face_detector": "haar"}),))
    whole = _run(engine, src, tmp_path, plan, guard=False)
    assert len(whole.artifacts["face_boxes"]) == 2
    region = (850, 237, 1297, 717)  # its left edge cuts the larger face (754..946)
    prev = _run(engine, src, tmp_path, plan, region=region, guard=False)
    x0, y0, x1, y1 = region
    full = load_photo(whole.output).pixels
    got = load_photo(prev.output).pixels
    changed = np.abs(full[y0:y1, x0:x1] - load_photo(src).pixels[y0:y1, x0:x1]).max(-1)
    assert (changed > 4 / 255).mean() > 0.05  # (the faces were restored there)
    assert np.abs(got - full[y0:y1, x0:x1]).max() <= 1.5 / 255
    assert sorted(prev.artifacts["face_boxes"]) == sorted(whole.artifacts["face_boxes"])
    assert "in the previewed part (2 in the whole photo)" in prev.steps[0].notes


GROUP_FACES = ((754, 381, 946, 573), (504, 786, 672, 954))  # (Haar's boxes, source px)


def _fixed_faces(monkeypatch):
    """GROUP's two faces wherever a detector looks (at any scale of the photo: the whole fix
    after an x2 upscale looks at 2594 x 3840 px, a preview at the photo's own pixels), so
    that the whole fix and a preview align them alike: what differs is what they restore
    them from. Returns the scales looked at."""
    from engine.restore import face

    seen = []

    def detect(image, runtime=None, **kw):
        k = image.shape[1] / 1297
        seen.append(k)
        return [face.Face(tuple(v * k for v in b), 5.0, None) for b in GROUP_FACES], "fixed"

    monkeypatch.setattr(face, "detect_faces", detect)
    return seen


def _mixed(crop):
    """A stand-in model whose every output pixel depends on the whole crop, as CodeFormer's
    does (its transformer sees the whole face): a mirror of the crop blended in."""
    return np.clip(0.8 * crop + 0.2 * crop[::-1, ::-1], 0.0, 1.0)


X2_FACES = Plan(Degradation.A, "laptop", (Step("upscale_builtin", {"scale": 2}),
                                          Step("face_codeformer")))
CUT = (950, 237, 1297, 717)  # its margin's left edge (822) cuts the larger face (754..946)


def test_after_an_upscale_a_face_the_parts_edge_cuts_is_restored_from_all_of_it(
        shared_images, engine, tmp_path, monkeypatch):
    """After an upscale the face step runs on the upscaled part: a face the part's edge cut
    was aligned and restored from the part's pixels and a mirror of them (the crop's border),
    with no warning. The preview's part now holds whole the faces that reach the region
    (found before the steps), and the preview is the whole fix's pixels there."""
    _standin_faces(monkeypatch, engine, _mixed)
    scales = _fixed_faces(monkeypatch)
    src = _photo(shared_images, GROUP)
    whole = _run(engine, src, tmp_path, X2_FACES, guard=False)
    prev = _run(engine, src, tmp_path, X2_FACES, region=CUT, guard=False)
    assert 2.0 in scales and 1.0 in scales
    x0, y0, x1, y1 = CUT
    full = load_photo(whole.output).pixels
    got = load_photo(prev.output).pixels
    want = full[2 * y0:2 * y1, 2 * x0:2 * x1]
    up = load_photo(_run(engine, src, tmp_path, Plan(Degradation.A, "builtin", (
        Step("upscale_builtin", {"scale": 2}),)), region=CUT).output).pixels
    assert (np.abs(want - up).max(-1) > 4 / 255).sum() > 5000  # (the face changed there)
    assert np.abs(got - want).max() <= 1.5 / 255  # (up to 32 levels before)
    assert not prev.warnings
    # (the other face is beyond the region and its margin: not restored for the preview)
    assert prev.artifacts["face_boxes"] == [list(GROUP_FACES[0])]
    assert sorted(whole.artifacts["face_boxes"]) == sorted(map(list, GROUP_FACES))


def test_a_preview_that_upscales_first_looks_for_faces_in_the_whole_photo_once(
        shared_images, engine, tmp_path, monkeypatch):
    """A preview whose plan upscales before its face step looked for faces in the whole photo
    twice: before the steps (to grow its part to hold them) and again in the face step, on a
    whole-photo copy with the upscaled part put back (0.4 s each with Haar here). The face
    step now restores the faces found the first time: one detection, the same faces."""
    from engine.restore import face

    _standin_faces(monkeypatch, engine, _mixed)
    looked = []
    real = face.detect_faces
    monkeypatch.setattr(face, "detect_faces",
                        lambda image, *a, **k: looked.append(image.shape[:2]) or
                        real(image, *a, **k))
    src = _photo(shared_images, GROUP)
    prev = _run(engine, src, tmp_path, X2_FACES, region=CUT, guard=False)
    assert looked == [(1920, 1297)]  # (the whole photo, once)
    assert "found by builtin:haar in the previewed part (2 in the whole photo)" in \
        prev.steps[-1].notes and not prev.warnings
    # (the faces restored: those found to grow the part, the one that reaches the region)
    found = face.preview_faces(load_photo(src).pixels, pipeline.preview_face_search(X2_FACES),
                               engine.runtime)
    assert len(found.faces) == 2 and found.detector == "builtin:haar"
    assert prev.artifacts["preview_faces"] == [list(r) for r in found.rects]
    assert prev.artifacts["face_boxes"] == [[round(v) for v in found.faces[0].box]]


def test_a_face_the_upscaled_part_still_cuts_is_said(shared_images, engine, tmp_path,
                                                      monkeypatch):
    """A face the part's edge still cuts after the upscale (not found before the steps: the
    photo is looked at again after them) is restored from the part's pixels only: the
    preview says so."""
    _standin_faces(monkeypatch, engine, _mixed)
    _fixed_faces(monkeypatch)
    monkeypatch.setattr(Engine, "_preview_faces", lambda self, plan, photo, box, p: None)
    prev = _run(engine, _photo(shared_images, GROUP), tmp_path, X2_FACES, region=CUT,
                guard=False)
    assert any(w.startswith("1 face(s) the previewed part's edge cuts were restored from the "
                            "part's pixels only") for w in prev.warnings), prev.warnings


def test_a_dry_run_of_a_preview_counts_the_part_grown_for_faces(shared_images, engine,
                                                                  tmp_path, monkeypatch):
    """The run grows a preview's part to hold whole the faces that reach its region (an
    upscale before the face step); the dry run's time and memory estimate counted the region
    and its margin only (here 475 x 736 px, where the run processed more). It looks for the
    faces as the run does and counts the part the run processes; the run reports the faces
    it found (``preview_faces``: what the app's queue costs a later preview of the photo
    with)."""
    from engine.restore import face

    _standin_faces(monkeypatch, engine, _mixed)
    _fixed_faces(monkeypatch)
    src = _photo(shared_images, GROUP)
    crops = []  # (the parts the run cut from the photo: its steps' part first)
    real_crop = pipeline._crop_photo
    monkeypatch.setattr(pipeline, "_crop_photo",
                        lambda photo, box: crops.append(box) or real_crop(photo, box))
    searched = []
    real_faces = face.preview_faces
    monkeypatch.setattr(face, "preview_faces",
                        lambda *a, **k: searched.append(1) or real_faces(*a, **k))
    req = JobRequest(src, OutputOptions(out_dir=tmp_path, format="png"), plan=X2_FACES,
                     profile="builtin", backend="builtin", region=CUT, guard=False)
    run = engine.run(req)
    x0, y0, x1, y1 = crops[0]
    processed = (y1 - y0, x1 - x0)
    photo = load_photo(src)
    size = (photo.height, photo.width)
    cx0, cy0, cx1, cy1 = context_box(CUT, size)
    margin_only = (cy1 - cy0, cx1 - cx0)
    assert margin_only == (736, 475) and processed[0] >= 736 and processed[1] > 475, processed
    assert run.artifacts["preview_faces"] and crops[0] == pipeline.preview_part(
        CUT, size, run.artifacts["preview_faces"])
    searched.clear()
    prep = engine.prepare(req)
    held, work, _ = pipeline._preview_whole_bytes(X2_FACES, photo)
    want = engine.estimate(X2_FACES, processed)
    before = engine.estimate(X2_FACES, margin_only)  # (what the dry run counted)
    assert prep.estimate.seconds == pytest.approx(want.seconds)
    assert prep.estimate.peak_bytes == want.peak_bytes + held + work
    assert prep.estimate.seconds > before.seconds
    assert prep.estimate.peak_bytes > before.peak_bytes + held + work
    assert len(searched) == 1  # (looked for once, as the run does)
    # (a chain whose face step comes first grows no part: nothing is looked for)
    searched.clear()
    faces_first = Plan(Degradation.A, "laptop", (Step("face_codeformer"),
                                                 Step("upscale_builtin", {"scale": 2})))
    assert pipeline.preview_face_search(faces_first) is None
    plain = engine.prepare(replace(req, plan=faces_first))
    assert not searched and plain.estimate.seconds == pytest.approx(
        engine.estimate(faces_first, margin_only).seconds)


@pytest.fixture(scope="module")
def text_engine(tmp_path_factory):
    from tests.model_helpers import install_test_model
    from tests.tiny_models import write_compact

    root = tmp_path_factory.mktemp("text-preview")
    store = install_test_model(root / "store", "realesr-general-x4v3",
                               write_compact(root, num_feat=8, num_conv=2, seed=0))
    return Engine(device="cpu", store=store)


def test_a_previews_text_lines_and_ocr_regions_are_in_the_photos_pixels(shared_images,
                                                                        text_engine, tmp_path):
    """PP-OCR looks at the whole photo (a line the part's edge cuts is found whole), and the
    text step's ``ocr_regions`` come back in the whole result's pixels, as ``text_boxes`` do:
    they were in the working crop's (off by the part's corner less its margin)."""
    src = _photo(shared_images, PAGE_LR)
    plan = Plan(Degradation.A, "laptop", (Step("text_fusion", {"model": "realesr-general-x4v3"}),))
    whole = text_engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path, format="png"),
                                       plan=plan, guard=False))
    (line,) = whole.artifacts["ocr_regions"]
    (tb,) = whole.artifacts["text_boxes"]
    # a part that holds the line with room to spare: its region as in the whole fix
    region = (200, 300, 700, 576)
    prev = text_engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path, format="png"),
                                      plan=plan, guard=False, region=region))
    assert context_box(region, (576, 720))[0] > 0  # (the crop does not start at the corner)
    (got,) = prev.artifacts["ocr_regions"]
    assert got["box"] == line["box"] and got["padded"] == line["padded"]
    assert got["quad"] == line["quad"]
    # a part whose edge cuts the line (164..551): found whole, its box as the whole fix's
    cut = _run(text_engine, src, tmp_path, plan, region=(357, 238, 720, 576), guard=False)
    (cb,) = cut.artifacts["text_boxes"]
    x0 = context_box((357, 238, 720, 576), (576, 720))[0]
    assert cb[0] == max(tb[0], x0) and cb[1:] == tb[1:]


def test_text_detection_near_a_part_looks_at_the_tiles_around_it_only():
    """Over ``det_max_side`` the whole fix looks at a reduced copy and at every full-resolution
    tile; a preview looks at the copy and the tiles that meet its part (or a line of the copy
    that meets it): the lines found there are the same."""
    from engine.progress import Progress
    from engine.restore.registry import StepContext
    from engine.restore.text import _detect_passes

    rng = np.random.default_rng(0)
    page = np.full((3000, 4000, 3), 0.9, np.float32)
    lines = [(x, y) for y in range(200, 2900, 400) for x in range(150, 3700, 900)]
    for x, y in lines:
        page[y:y + 24, x:x + 300] = rng.uniform(0.0, 0.3, (24, 300, 3))

    class Ink:
        """Stands in for PP-OCR's detector: the boxes of dark ink in what it is given."""

        def __init__(self):
            self.calls = []

        def detect(self, bgr):
            import cv2

            self.calls.append(bgr.shape[:2])
            dark = (bgr.max(-1) < 128).astype(np.uint8)
            _, _, stats, _ = cv2.connectedComponentsWithStats(dark, 8)
            return [np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float32)
                    for x, y, w, h, _ in stats[1:]]

    ctx = StepContext(device=None, progress=Progress(), runtime=None)
    every, near = Ink(), Ink()
    all_lines = _detect_passes(every, page, 2048, 1280, ctx)
    part = (1000, 1000, 1800, 1600)
    some = _detect_passes(near, page, 2048, 1280, ctx, near=part)
    assert len(near.calls) < len(every.calls)

    def meets(q):
        return q[:, 0].min() < part[2] and q[:, 0].max() > part[0] and \
            q[:, 1].min() < part[3] and q[:, 1].max() > part[1]

    want = sorted(q.round(1).tolist() for q in all_lines if meets(q))
    assert want and sorted(q.round(1).tolist() for q in some if meets(q)) == want
