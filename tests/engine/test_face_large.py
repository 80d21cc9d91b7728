"""Faces larger than CodeFormer's 512-px crop (a portrait at 12-24 MP: faces of 700-2000 px).

The crop a model sees is area-averaged, not sampled, and what goes back into the photo is the
model's change at the crop's resolution, added to the photo's own finer detail: the enlarged
crop itself used to replace a large face's detail (an unchanged face came back blurred). The
"restorers" here are stand-ins (identity, a tone change): the paste-back is what is tested."""
from __future__ import annotations

import cv2
import numpy as np

from engine.restore.face import (
    FACE_SIZE,
    detect_faces,
    face_matrix,
    paste_face,
    restore_faces,
    warp_face,
)

FACE = "faces/CodeFormer__inputs__cropped_faces__0345.png"  # a real face, 512 x 512


def _read(path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return np.ascontiguousarray(img[..., ::-1], dtype=np.float32) / 255.0


def _big_faces(shared_images, k=3):
    """A real face enlarged ``k`` times (~1100 px between brow and chin at k = 3) with fine
    detail laid over it (a fixed grain of 1-2 px, standing in for pores and hair), in a
    photo around it; its faces as the built-in Haar detector finds them."""
    face = cv2.resize(_read(shared_images / FACE), None, fx=k, fy=k,
                      interpolation=cv2.INTER_CUBIC)
    grain = np.random.default_rng(7).normal(0.0, 0.05, face.shape[:2]).astype(np.float32)
    face = np.clip(face + cv2.GaussianBlur(grain, (0, 0), 0.7)[..., None], 0.0, 1.0)
    img = np.ascontiguousarray(np.pad(face, ((160, 160), (240, 240), (0, 0)), mode="reflect"))
    faces, _ = detect_faces(img, None)  # deterministic
    faces.sort(key=lambda f: f.size, reverse=True)
    assert faces
    faces = faces[:1]
    m = face_matrix(faces[0])  # the face spans over 2.5 photo px per crop px
    assert 1 / np.sqrt(abs(np.linalg.det(m[:, :2]))) > 2.5
    return img, faces


def _middle(face, frac=0.4):
    x0, y0, x1, y1 = face.box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, frac * (x1 - x0) / 2, frac * (y1 - y0) / 2
    return slice(round(cy - hh), round(cy + hh)), slice(round(cx - hw), round(cx + hw))


def _detail(a):
    """Standard deviation of the luma finer than a 2-px Gaussian (pores, lashes, hair)."""
    g = a[..., 1]
    return float(np.std(g - cv2.GaussianBlur(g, (0, 0), 2.0)))


def test_an_unchanged_large_face_comes_back_unchanged(shared_images):
    """A model that changes nothing changes nothing (before, the face came back blurred: up
    to 0.11 of full scale, 3.9 levels of 255 on average over its middle)."""
    img, faces = _big_faces(shared_images)
    out = restore_faces(img, faces, lambda crop: crop)
    print("largest change", np.abs(out - img).max(), "mean over the face",
          np.abs(out - img)[_middle(faces[0])].mean())
    assert np.abs(out - img).max() < 1e-5
    one = paste_face(img.copy(), warp_face(img, face_matrix(faces[0])), face_matrix(faces[0]))
    assert np.abs(one - img).max() < 1e-5


def test_a_large_face_keeps_the_photos_detail(shared_images):
    """A model that brightens the face: the face is brighter by that much and keeps the
    photo's fine detail (the enlarged crop kept 0.45 of it before)."""
    img, faces = _big_faces(shared_images)
    out = restore_faces(img, faces, lambda crop: np.clip(crop + 0.1, 0.0, 1.0))
    mid = _middle(faces[0])
    change = out[mid] - img[mid]
    kept = _detail(out[mid]) / _detail(img[mid])
    print("mean change", change.mean(), "detail kept", kept)
    assert abs(float(change.mean()) - 0.1) < 0.01
    assert 0.97 < kept < 1.03, kept


def test_the_crop_of_a_large_face_is_area_averaged():
    """Detail finer than the crop can hold is averaged away, not folded back in as moire: a
    grating of 2.2 px period seen 3x reduced kept its full contrast (std 0.28) as an alias
    before."""
    k = 3
    xx = np.mgrid[:FACE_SIZE * k, :FACE_SIZE * k][1].astype(np.float32)
    photo = np.repeat((0.5 + 0.4 * np.sin(2 * np.pi * xx / 2.2))[..., None], 3, axis=2)
    crop = warp_face(photo, np.array([[1 / k, 0, 0], [0, 1 / k, 0]]))
    assert crop.shape == (FACE_SIZE, FACE_SIZE, 3)
    assert crop[64:-64, 64:-64].std() < 0.35 * photo.std()
    # a smooth photo is the same either way: the area crop is centred where sampling was
    ramp = np.repeat((xx / xx.max())[..., None], 3, axis=2)
    crop = warp_face(ramp, np.array([[1 / k, 0, 0], [0, 1 / k, 0]]))
    expect = np.arange(FACE_SIZE) * k / xx.max()
    assert np.abs(crop[FACE_SIZE // 2, 8:-8, 0] - expect[8:-8]).max() < 1e-4
