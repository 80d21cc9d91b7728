"""The YuNet path (``yunet-2023mar`` through the real store + runtime + ``cv2.FaceDetectorYN``)
with tiny ONNX graphs of the real file's interface (tests/tiny_yunet.py). The real weights
cannot be downloaded here: what these show is that our code drives OpenCV's detector and maps
its output correctly, not how well YuNet finds faces."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.devices import select_device
from engine.errors import EngineError, ModelMissing
from engine.models.store import ModelStore
from engine.progress import Progress
from engine.restore import face as face_module
from engine.restore.face import (
    FFHQ_TEMPLATE_512,
    YUNET_ID,
    Face,
    box_matrix,
    detect_faces,
    detect_yunet,
    face_matrix,
    landmark_matrix,
    order_landmarks,
    paste_region,
    restore_faces,
    yunet_faces,
)
from engine.restore.registry import StepContext, get_step
from tests import tiny_yunet as ty
from tests.model_helpers import install_test_model, make_runtime

torch.set_num_threads(1)

GREY = 0.3


def _ctx(runtime):
    return StepContext(device=select_device("cpu"), progress=Progress(), runtime=runtime)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("yunet-build")
    return {"marker": ty.write_marker_yunet(d / "marker.onnx"),
            "random": {(std, seed): ty.write_random_yunet(d / f"random-{std}-{seed}.onnx",
                                                          seed=seed, weight_std=std)
                       for std in (0.5, 2.0) for seed in (0, 1, 2)}}


def _install(tmp_path, src):
    store = install_test_model(tmp_path / "store", YUNET_ID,
                               {"face_detection_yunet_2023mar.onnx": src})
    return make_runtime(store)


@pytest.fixture
def marker_rt(built, tmp_path):
    return _install(tmp_path, built["marker"])


def _marker_image(h, w, cells, k=1):
    """Grey image with white (k*8)-px squares on the stride-8 grid cells (r, c) of the view
    the detector sees after a 1/k downscale."""
    img = np.full((h, w, 3), GREY, np.float32)
    n = ty.MARKER_CELL * k
    for r, c in cells:
        img[r * n:(r + 1) * n, c * n:(c + 1) * n] = 1.0
    return img


def _expected(r, c, k=1):
    """Box (x0, y0, x1, y1) and landmarks (template order) the marker model reports for cell
    (r, c) of a view downscaled by k, in image pixels."""
    s = ty.MARKER_CELL
    cx, cy = (c + 0.5) * s, (r + 0.5) * s
    bw, bh = ty.MARKER_BOX
    box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]) * k
    lm = (ty.MARKER_LANDMARKS + [cx, cy]) * k
    return box, order_landmarks(lm)


# ------------------------------------------------------------------ the test models themselves

def test_tiny_yunet_files_have_the_2023mar_interface(built):
    """Checked independently of OpenCV, with onnxruntime: names, static declared shapes, and
    what the marker model outputs on a white cell."""
    import onnxruntime as ort

    for path in (built["marker"], built["random"][(0.5, 0)]):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (inp,) = sess.get_inputs()
        assert (inp.name, inp.shape) == ("input", [1, 3, 640, 640])
        outs = {o.name: o.shape for o in sess.get_outputs()}
        assert set(outs) == set(ty.OUTPUT_NAMES)
        for head, c in ty.HEADS:
            for s in ty.STRIDES:
                assert outs[f"{head}_{s}"] == [1, (640 // s) ** 2, c]
    sess = ort.InferenceSession(str(built["marker"]), providers=["CPUExecutionProvider"])
    x = np.full((1, 3, 640, 640), 76.0, np.float32)
    x[:, :, 5 * 8:6 * 8, 7 * 8:8 * 8] = 255.0  # stride-8 cell r=5, c=7
    res = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))
    idx = 5 * 80 + 7
    cls, obj = res["cls_8"][0, :, 0], res["obj_8"][0, :, 0]
    assert cls[idx] > 0.9999 and np.delete(cls, idx).max() < 1e-3
    assert res["cls_16"].max() < 1e-9 and res["cls_32"].max() < 1e-9
    np.testing.assert_allclose(obj, ty.MARKER_OBJ, rtol=1e-5)
    np.testing.assert_allclose(np.exp(res["bbox_8"][0, idx, 2:]) * 8, ty.MARKER_BOX, rtol=1e-5)


# ------------------------------------------------------------------ the marker model via the store

def test_yunet_through_the_store_reports_the_face_the_model_says(marker_rt):
    img = _marker_image(160, 200, [(8, 12)])
    warnings: list[str] = []
    faces, detector = detect_faces(img, marker_rt, warnings=warnings)
    assert detector == YUNET_ID and warnings == []
    assert len(faces) == 1
    (f,) = faces
    box, lm = _expected(8, 12)
    np.testing.assert_allclose(f.box, box, atol=1e-3)
    np.testing.assert_allclose(f.landmarks, lm, atol=1e-3)
    assert f.score == pytest.approx(ty.MARKER_SCORE, abs=1e-4)
    # two markers far apart: two faces (NMS keeps both)
    faces, _ = detect_faces(_marker_image(160, 400, [(8, 6), (8, 38)]), marker_rt)
    assert sorted(round(f.box[0]) for f in faces) == [4, 260]


def test_alignment_and_paste_back_run_on_a_yunet_face(marker_rt):
    img = _marker_image(192, 256, [(11, 15)])
    img[..., 1] = np.linspace(0.1, 0.6, 256, dtype=np.float32)[None, :]  # some texture
    img[88:96, 120:128] = 1.0  # the marker again over the gradient
    faces, detector = detect_faces(img, marker_rt)
    assert detector == YUNET_ID and len(faces) == 1
    face = faces[0]
    m = face_matrix(face)
    # landmark alignment, not the box fallback: the model's landmarks have the template's
    # proportions at 1/3 scale, so all five land on the template (to the 0.5 px rounding x 3)
    np.testing.assert_array_equal(m, landmark_matrix(face.landmarks))
    assert np.abs(m - box_matrix(face.box)).max() > 1.0
    assert abs(math.degrees(math.atan2(m[1, 0], m[0, 0]))) < 0.5
    assert math.hypot(m[0, 0], m[1, 0]) == pytest.approx(3.0, rel=0.02)
    mapped = np.c_[face.landmarks, np.ones(5)] @ m.T
    assert np.abs(mapped - FFHQ_TEMPLATE_512).max() < 4.0
    out = restore_faces(img, faces, lambda crop: crop + np.where(crop < 0.5, 0.12, -0.12))
    x0, y0, x1, y1 = paste_region(m, img.shape[:2])
    outside = np.ones(img.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert outside.any()
    np.testing.assert_array_equal(out[outside], img[outside])
    cx, cy = int(sum(face.landmarks[:, 0]) / 5), int(sum(face.landmarks[:, 1]) / 5)
    assert np.abs(out[cy, cx] - img[cy, cx]).max() > 0.05


def test_face_step_uses_yunet_and_then_needs_codeformer(marker_rt):
    img = _marker_image(160, 200, [(8, 12)])
    ctx = _ctx(marker_rt)
    with pytest.raises(ModelMissing):
        get_step("face_codeformer").fn(img, {}, ctx)
    box, _ = _expected(8, 12)
    assert ctx.artifacts["face_boxes"] == [[round(v) for v in box]]
    assert ctx.warnings == []


def test_yunet_input_size_is_set_per_image(marker_rt):
    """Sizes that are not multiples of 32 (OpenCV pads), one cached detector for all."""
    for (h, w), cell in (((160, 200), (8, 12)), ((250, 333), (20, 30)), ((97, 130), (4, 9)),
                         ((640, 640), (40, 40)), ((120, 200), (7, 3))):
        faces, _ = detect_faces(_marker_image(h, w, [cell]), marker_rt, min_size=1)
        assert len(faces) == 1, (h, w)
        np.testing.assert_allclose(faces[0].box, _expected(*cell)[0], atol=1e-3)
    keys = [k for k in marker_rt.cached_keys() if isinstance(k, tuple) and k[0] == "yunet"]
    assert len(keys) == 1


def test_large_images_are_downscaled_for_detection_and_boxes_scaled_back(marker_rt):
    # 2560 px wide -> detected at 1280 (max_side); the 16-px marker becomes one 8-px cell
    img = _marker_image(1280, 2560, [(30, 100)], k=2)
    faces, _ = detect_faces(img, marker_rt)
    assert len(faces) == 1
    box, lm = _expected(30, 100, k=2)
    np.testing.assert_allclose(faces[0].box, box, atol=1e-2)
    np.testing.assert_allclose(faces[0].landmarks, lm, atol=1e-2)
    # a 4x downscale with a non-square image and a smaller max_side, straight to detect_yunet
    path = marker_rt.file(YUNET_ID)
    img = _marker_image(640, 1024, [(10, 20)], k=4)
    (f,) = detect_yunet(img, str(path), runtime=marker_rt, max_side=256)
    np.testing.assert_allclose(f.box, _expected(10, 20, k=4)[0], atol=1e-2)
    # the cached detector ran at the downscaled size
    (key,) = [k for k in marker_rt.cached_keys() if isinstance(k, tuple) and k[0] == "yunet"]
    assert marker_rt.cached(key, lambda: None).getInputSize() == (256, 160)


def test_yunet_score_threshold(marker_rt):
    img = _marker_image(160, 200, [(8, 12)])
    assert len(detect_faces(img, marker_rt, score_threshold=ty.MARKER_SCORE - 0.02)[0]) == 1
    assert detect_faces(img, marker_rt, score_threshold=ty.MARKER_SCORE + 0.02)[0] == []
    # the cached detector takes each call's threshold, in both directions
    assert len(detect_faces(img, marker_rt, score_threshold=0.5)[0]) == 1
    ctx = _ctx(marker_rt)
    out = get_step("face_codeformer").fn(img, {"face_score": 0.95}, ctx)
    assert out.image is img and out.model == YUNET_ID and ctx.artifacts["face_boxes"] == []
    # the step can be told to use Haar although YuNet is installed (no face for Haar here)
    ctx = _ctx(marker_rt)
    out = get_step("face_codeformer").fn(img, {"face_detector": "haar"}, ctx)
    assert out.model == "builtin:haar" and ctx.artifacts["face_boxes"] == []


def test_min_face_applies_to_yunet_faces(marker_rt):
    img = _marker_image(160, 200, [(8, 12)])
    assert len(detect_faces(img, marker_rt, min_size=80)[0]) == 1  # the box is 96 x 80
    assert detect_faces(img, marker_rt, min_size=81)[0] == []


# ------------------------------------------------------------------ failures fall back to Haar

def test_a_yunet_that_fails_falls_back_to_haar_with_a_warning(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an ONNX graph" * 40)
    rt = _install(tmp_path, bad)  # verified: its hash is its own
    img = np.full((120, 160, 3), 0.5, np.float32)
    ctx = _ctx(rt)
    out = get_step("face_codeformer").fn(img, {}, ctx)
    assert out.model == "builtin:haar" and out.image is img
    assert len(ctx.warnings) == 1 and "YuNet" in ctx.warnings[0] and "Haar" in ctx.warnings[0]
    # asked for YuNet explicitly: a typed error, not a silent switch
    with pytest.raises(EngineError, match="YuNet"):
        detect_faces(img, rt, detector="yunet")


def test_a_yunet_with_another_interface_falls_back_to_haar(tmp_path):
    odd = ty.write_wrong_interface_onnx(tmp_path / "odd.onnx")
    rt = _install(tmp_path, odd)
    warnings: list[str] = []
    faces, detector = detect_faces(np.full((96, 128, 3), 0.5, np.float32), rt,
                                   warnings=warnings)
    assert detector == "builtin:haar" and faces == []
    assert len(warnings) == 1 and "YuNet" in warnings[0]


def test_a_damaged_yunet_file_falls_back_to_haar_with_a_warning(marker_rt):
    path = marker_rt.file(YUNET_ID)
    path.write_bytes(path.read_bytes()[:-10])
    warnings: list[str] = []
    _, detector = detect_faces(np.full((96, 128, 3), 0.5, np.float32), marker_rt,
                               warnings=warnings)
    assert detector == "builtin:haar"
    assert len(warnings) == 1 and "damaged" in warnings[0] and "--repair" in warnings[0]


def test_yunet_not_installed_uses_haar_silently_unless_asked_for(tmp_path):
    rt = make_runtime(ModelStore(tmp_path / "store"))
    img = np.full((96, 128, 3), 0.5, np.float32)
    warnings: list[str] = []
    assert detect_faces(img, rt, warnings=warnings) == ([], "builtin:haar")
    assert warnings == []
    with pytest.raises(ModelMissing):
        detect_faces(img, rt, detector="yunet")


# ------------------------------------------------------------------ arbitrary outputs

@pytest.mark.parametrize("std,seed", [(0.5, 0), (0.5, 1), (0.5, 2), (2.0, 0), (2.0, 1),
                                      (2.0, 2)])
def test_random_weight_yunet_does_not_crash(built, tmp_path, std, seed):
    import cv2

    rt = _install(tmp_path, built["random"][(std, seed)])
    rng = np.random.default_rng(seed)
    img = rng.random((150, 220, 3), dtype=np.float32)
    # what OpenCV itself returns here (huge, infinite, empty boxes at std 2)
    det = cv2.FaceDetectorYN.create(str(rt.file(YUNET_ID)), "", (220, 150), 0.7, 0.3, 5000)
    _, rows = det.detect(np.ascontiguousarray((img[..., ::-1] * 255).round().astype(np.uint8)))
    assert rows is not None and len(rows) > 0  # the model does produce detections
    warnings: list[str] = []
    faces, detector = detect_faces(img, rt, min_size=1, warnings=warnings)
    assert detector == YUNET_ID and warnings == []
    for f in faces:
        assert np.isfinite(f.box).all() and 0 <= f.score <= 1
        cx, cy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
        assert 0 <= cx < 220 and 0 <= cy < 150
        assert f.landmarks is None or np.isfinite(f.landmarks).all()
    out = restore_faces(img, faces, lambda crop: crop * 0.5, size=64)
    assert out.shape == img.shape and np.isfinite(out).all()
    touched = np.zeros(img.shape[:2], bool)
    for f in faces:
        x0, y0, x1, y1 = paste_region(face_matrix(f, 64), img.shape[:2], 64)
        touched[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(out[~touched], img[~touched])


def test_yunet_rows_a_sane_detector_never_gives_are_dropped():
    def row(x, y, w, h, lm=None, score=0.9):
        lm = lm if lm is not None else [[x + 0.3 * w, y + 0.4 * h], [x + 0.7 * w, y + 0.4 * h],
                                        [x + 0.5 * w, y + 0.6 * h], [x + 0.35 * w, y + 0.8 * h],
                                        [x + 0.65 * w, y + 0.8 * h]]
        return [x, y, w, h, *np.ravel(lm), score]

    rows = np.array([
        row(10, 10, 50, 60),                          # fine
        row(np.nan, 10, 50, 60),                      # non-finite
        row(10, 10, np.inf, 60),
        row(10, 10, 0, 60),                           # empty
        row(300, 10, 50, 60),                         # centre outside the 400-px image
        row(-2000, -2000, 4000, 4000),                # bigger than twice the image
        row(100, 50, 60, 60, lm=[[0, 0]] * 5),        # landmarks off the face -> box only
        row(100, 50, 60, 60, score=1.7),              # score clamped
    ], np.float32)
    faces = yunet_faces(rows, 0.5, 0.5, (400, 400))  # view was half size: boxes double
    assert [f.box for f in faces] == [(20, 20, 120, 140), (200, 100, 320, 220),
                                      (200, 100, 320, 220)]
    assert faces[0].landmarks is not None and faces[1].landmarks is None
    assert faces[2].score == 1.0
    assert yunet_faces(None, 1.0, 1.0, (10, 10)) == []


@pytest.mark.parametrize("landmarks", [
    np.full((5, 2), 70.0),                                           # one point
    np.array([[50, 60], [50, 60], [70, 80], [60, 100], [60, 100]]),  # eyes on one another
    np.array([[40, 60], [100, 60], [70, 600], [40, -400], [100, 900]]),  # not a face shape
])
def test_degenerate_landmarks_align_by_the_box(landmarks):
    box = (20, 30, 120, 130)
    with pytest.raises(ValueError):
        landmark_matrix(landmarks)
    m = face_matrix(Face(box, 0.9, np.asarray(landmarks, np.float32)))
    np.testing.assert_array_equal(m, box_matrix(box))


@pytest.mark.slow
def test_codeformer_on_a_yunet_face_through_the_step(built, tmp_path, monkeypatch):
    """The whole step: YuNet (marker model) + a random CodeFormer of the real architecture,
    both from one store. ~25 s on one loaded core (CodeFormer's 512 input), so MEND_SLOW=1.
    A random CodeFormer's face is no longer the face (PSNR 13 dB): the identity check keeps
    it as it was and says so; with the check's floors at 0 the same face is pasted."""
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    torch.manual_seed(0)
    net = CodeFormer(dim_embd=32, n_head=2, n_layers=1, codebook_size=16, latent_size=256,
                     connect_list=["32", "64", "128", "256"])
    cf = tmp_path / "codeformer.pth"
    torch.save({"params_ema": net.state_dict()}, cf)
    store = install_test_model(tmp_path / "store", YUNET_ID,
                               {"face_detection_yunet_2023mar.onnx": built["marker"]})
    store = install_test_model(tmp_path / "store", "codeformer", {"codeformer.pth": cf},
                               store=store)
    rt = make_runtime(store)
    img = _marker_image(192, 256, [(11, 15)])
    ctx = _ctx(rt)
    out = get_step("face_codeformer").fn(img, {"fidelity": 0.5}, ctx)
    assert out.model == "codeformer" and YUNET_ID in out.notes and ctx.warnings == []
    assert out.image.shape == img.shape and np.isfinite(out.image).all()
    (face,) = detect_faces(img, rt)[0]
    x0, y0, x1, y1 = paste_region(face_matrix(face), img.shape[:2])
    outside = np.ones(img.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(out.image[outside], img[outside])
    assert "1 kept as they were" in out.notes
    np.testing.assert_array_equal(out.image, img)
    monkeypatch.setattr(face_module, "FACE_MIN_PSNR", 0.0)
    monkeypatch.setattr(face_module, "FACE_MIN_SSIM", -1.0)
    out = get_step("face_codeformer").fn(img, {"fidelity": 0.5}, _ctx(rt))
    assert "kept as they were" not in out.notes
    np.testing.assert_array_equal(out.image[outside], img[outside])
    assert not np.array_equal(out.image[y0:y1, x0:x1], img[y0:y1, x0:x1])
