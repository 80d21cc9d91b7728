from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from engine.devices import select_device
from engine.errors import ModelMissing
from engine.models.store import ModelStore
from engine.progress import Progress
from engine.restore.face import (
    FFHQ_TEMPLATE_512,
    Face,
    detect_faces,
    face_matrix,
    landmark_matrix,
    order_landmarks,
    paste_region,
    restore_faces,
)
from engine.restore.registry import StepContext, get_step
from tests.model_helpers import install_test_model, make_runtime

torch.set_num_threads(1)

# Faces a person counts in the real test photos (whole images, not crops).
WHOLE = {
    "faces/CodeFormer__inputs__whole_imgs__01.jpg": 4,
    "faces/CodeFormer__inputs__whole_imgs__03.jpg": 1,
    "faces/CodeFormer__inputs__whole_imgs__06.png": 2,
    "faces/GFPGAN__inputs__whole_imgs__00.jpg": 2,
}


def _read(path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img[..., ::-1].astype(np.float32) / 255.0


def _ctx(runtime):
    return StepContext(device=select_device("cpu"), progress=Progress(), runtime=runtime)


@pytest.mark.parametrize("rel,count", sorted(WHOLE.items()))
def test_haar_fallback_finds_the_faces_in_real_photos(shared_images, rel, count):
    img = _read(shared_images / rel)
    faces, detector = detect_faces(img, None)
    assert detector == "builtin:haar"
    assert len(faces) == count
    for f in faces:
        x0, y0, x1, y1 = f.box
        assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]
        assert f.size >= 48


# photos with no face where OpenCV's face cascade alone finds one (flowers, a vase, foliage,
# mud, text): CodeFormer would paint a face there
NOT_FACES = (
    "camera_jpeg_exif/exif-samples__jpg__hdr__iphone_hdr_YES.jpg",
    "camera_jpeg_exif/exif-samples__jpg__exif-org__fujifilm-dx10.jpg",
    "motion_blur/DeepDeblur_release__images__Flower_blur1.png",
    "exif_orientation/exif-orientation-example__Portrait_0.jpg",
    "text_degraded/textbsr__testsets__PairedLRSR__LR__test2.jpg",
)


@pytest.mark.parametrize("rel", NOT_FACES)
def test_haar_boxes_without_an_eye_are_not_faces(shared_images, rel):
    from engine.restore.face import detect_haar

    matches = list(shared_images.glob(rel.split("/")[0] + "/*" + rel.split("/")[1][-30:]))
    assert matches, rel
    img = _read(matches[0])
    assert detect_haar(img, verify_eyes=False)  # the face cascade alone is fooled
    assert detect_haar(img) == []
    assert detect_faces(img, None)[0] == []


def test_landmarks_are_put_in_template_order_even_when_tilted():
    t = FFHQ_TEMPLATE_512.copy()
    th = math.radians(35)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], np.float32)
    tilted = (t - 256) @ rot.T + 300
    yunet_like = tilted[[1, 0, 2, 4, 3]]  # right/left swapped as some detectors report
    np.testing.assert_allclose(order_landmarks(yunet_like), tilted, atol=1e-4)
    m = landmark_matrix(tilted)
    mapped = np.c_[tilted, np.ones(5)] @ m.T
    np.testing.assert_allclose(mapped, t, atol=0.5)
    assert math.degrees(math.atan2(m[1, 0], m[0, 0])) == pytest.approx(-35, abs=0.5)


def test_box_alignment_puts_the_eyes_near_the_template(shared_images):
    img = _read(shared_images / "faces/CodeFormer__inputs__cropped_faces__0345.png")
    # the CodeFormer inputs are already FFHQ-aligned 512 crops: a Haar box maps back close
    faces, _ = detect_faces(img, None)
    m = face_matrix(faces[0])
    eyes = np.c_[FFHQ_TEMPLATE_512[:2], np.ones(2)] @ m.T
    assert np.abs(eyes - FFHQ_TEMPLATE_512[:2]).max() < 40


def test_paste_back_leaves_everything_outside_the_faces_identical(shared_images):
    img = _read(shared_images / "faces/CodeFormer__inputs__whole_imgs__01.jpg")
    faces, _ = detect_faces(img, None)
    assert faces
    # a stand-in "restorer": every pixel moves 0.12, the face stays the same face
    out = restore_faces(img, faces, lambda crop: crop + np.where(crop < 0.5, 0.12, -0.12))
    touched = np.zeros(img.shape[:2], bool)
    for f in faces:
        x0, y0, x1, y1 = paste_region(face_matrix(f), img.shape[:2])
        touched[y0:y1, x0:x1] = True
        # the paste region is the aligned crop: about 2x the face box on each side at most
        bx0, by0, bx1, by1 = f.box
        s = max(bx1 - bx0, by1 - by0)
        assert x0 >= bx0 - 1.2 * s - 2 and x1 <= bx1 + 1.2 * s + 2
        # the face itself was replaced
        cx, cy = int((bx0 + bx1) / 2), int((by0 + by1) / 2)
        assert np.abs(out[cy, cx] - img[cy, cx]).max() > 0.05
    assert touched.mean() < 1.0
    np.testing.assert_array_equal(out[~touched], img[~touched])


def test_face_step_without_faces_loads_no_model(tmp_path):
    rt = make_runtime(ModelStore(tmp_path / "store"))  # no CodeFormer installed
    img = np.full((120, 160, 3), 0.5, np.float32)
    ctx = _ctx(rt)
    out = get_step("face_codeformer").fn(img, {}, ctx)
    assert out.image is img and out.model == "builtin:haar"
    assert ctx.artifacts["face_boxes"] == []


def test_face_step_with_a_face_needs_codeformer(shared_images, tmp_path):
    rt = make_runtime(ModelStore(tmp_path / "store"))
    img = _read(shared_images / "faces/CodeFormer__inputs__whole_imgs__03.jpg")
    ctx = _ctx(rt)
    with pytest.raises(ModelMissing):
        get_step("face_codeformer").fn(img, {}, ctx)
    assert len(ctx.artifacts["face_boxes"]) == 1


def test_face_boxes_are_recorded_in_source_pixels(shared_images, tmp_path):
    """After an x2 upscale the step finds the face in the larger image; the box is recorded in
    the source's pixels, as text boxes are (the viewer drew it twice as far and large)."""
    import cv2

    rt = make_runtime(ModelStore(tmp_path / "store"))
    src = _read(shared_images / "faces/CodeFormer__inputs__whole_imgs__03.jpg")
    ctx = _ctx(rt)
    with pytest.raises(ModelMissing):
        get_step("face_codeformer").fn(src, {}, ctx)
    (at_source,) = ctx.artifacts["face_boxes"]
    up = cv2.resize(src, (src.shape[1] * 2, src.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    ctx = _ctx(rt)
    ctx.artifacts["source"] = src
    with pytest.raises(ModelMissing):
        get_step("face_codeformer").fn(up, {}, ctx)
    (after_x2,) = ctx.artifacts["face_boxes"]
    side = at_source[2] - at_source[0]
    assert all(abs(a - b) <= 0.1 * side for a, b in zip(after_x2, at_source, strict=True)), \
        (after_x2, at_source)


def test_tiny_faces_are_skipped():
    f = Face((10, 10, 40, 40), 5.0, None)
    assert f.size < 48


@pytest.mark.slow
def test_codeformer_real_architecture_through_the_store(shared_images, tmp_path):
    """CodeFormer's encoder/decoder cannot be made small (fixed 512 input); one face takes
    ~25 s on one loaded CPU core, so this runs with MEND_SLOW=1."""
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    torch.manual_seed(0)
    net = CodeFormer(dim_embd=32, n_head=2, n_layers=1, codebook_size=16, latent_size=256,
                     connect_list=["32", "64", "128", "256"])
    src = tmp_path / "codeformer.pth"
    torch.save({"params_ema": net.state_dict()}, src)
    rt = make_runtime(install_test_model(tmp_path / "store", "codeformer",
                                         {"codeformer.pth": src}))
    img = _read(shared_images / "faces/CodeFormer__inputs__whole_imgs__03.jpg")
    ctx = _ctx(rt)
    out = get_step("face_codeformer").fn(img, {"fidelity": 0.5}, ctx)
    assert out.model == "codeformer"
    assert out.image.shape == img.shape and np.isfinite(out.image).all()
    faces, _ = detect_faces(img, None)
    x0, y0, x1, y1 = paste_region(face_matrix(faces[0]), img.shape[:2])
    outside = np.ones(img.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(out.image[outside], img[outside])


def test_a_restored_face_that_is_no_longer_the_same_face_is_not_pasted(shared_images):
    """Per-face identity check: a 'restoration' that turns the face into its negative (or
    noise, as a broken model does) keeps the original face; a plausible one is pasted."""
    from engine.restore.face import face_kept

    img = _read(shared_images / "faces/CodeFormer__inputs__whole_imgs__01.jpg")
    faces, _ = detect_faces(img, None)
    assert faces
    kept: list[int] = []
    out = restore_faces(img, faces, lambda crop: 1.0 - crop, kept_original=kept)
    assert kept == list(range(len(faces))) and np.array_equal(out, img)
    rng = np.random.default_rng(0)
    out = restore_faces(img, faces, lambda crop: rng.random(crop.shape).astype(np.float32),
                        kept_original=(kept := []))
    assert kept == list(range(len(faces))) and np.array_equal(out, img)
    crop = np.clip(img[:128, :128], 0, 1)
    assert face_kept(crop, cv2.GaussianBlur(crop, (0, 0), 1.0))[0]  # softer/sharper: same face


def test_a_grey_photo_keeps_grey_faces(shared_images):
    img = _read(shared_images / "faces/CodeFormer__inputs__whole_imgs__01.jpg")
    grey = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2).astype(np.float32)
    faces, _ = detect_faces(grey, None)
    assert faces
    tint = np.array([0.08, -0.04, -0.04], np.float32)  # a model that colours the face
    out = restore_faces(grey, faces, lambda crop: np.clip(crop + tint, 0, 1))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_a_small_face_is_pasted_back_where_it_was(shared_images):
    """Faces under ~110 px are shrunk before the paste; the shrink's pixel centres must be
    accounted for (they were pasted ~0.12 px up and left)."""
    img = _read(shared_images / "faces/CodeFormer__inputs__whole_imgs__01.jpg")
    faces, _ = detect_faces(img, None)
    small = [f for f in faces if f.size < 100]
    assert small
    out = restore_faces(img, small, lambda crop: crop)  # an identity "restorer"
    for f in small:
        x0, y0, x1, y1 = (int(v) for v in f.box)
        a = cv2.cvtColor(img[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY).astype(np.float64)
        b = cv2.cvtColor(out[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY).astype(np.float64)
        (dx, dy), _ = cv2.phaseCorrelate(a, b)
        assert abs(dx) < 0.06 and abs(dy) < 0.06, (dx, dy)
