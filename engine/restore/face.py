"""Face restoration for chain C: detect, align to the FFHQ template, CodeFormer (or GFPGAN),
paste back.

* Detection: OpenCV YuNet (``cv2.FaceDetectorYN``) with the store's ``yunet-2023mar`` ONNX
  gives boxes and five landmarks; without it, OpenCV's bundled Haar cascade (no download)
  gives boxes only. A YuNet that fails (damaged file, an OpenCV error) falls back to Haar
  with a warning rather than failing the job; step params ``face_detector``
  (auto | yunet | haar) and ``face_score`` (YuNet's score threshold).
* Alignment: a similarity transform (rotation, uniform scale, shift) maps the five landmarks
  onto the 512x512 FFHQ template used by facexlib / GFPGAN / CodeFormer; with boxes only,
  the box is mapped onto the template's face area.
* Restoration: CodeFormer (``spandrel_extra_arches``) on the aligned crop with the fidelity
  weight ``w`` (0 = most enhancement, 1 = most faithful to the input), or, with the step's
  ``model`` ``gfpgan-v1.4``, GFPGAN v1.4 (spandrel's GFPGANv1Clean) on the same crop, which
  has no fidelity weight: ``fidelity`` is then not used (the step's notes say so).
* Identity check: a restored face whose content (luma at 64 px) no longer matches the input
  face (the regression guard's PSNR/SSIM floors) is not pasted: that face stays as it was.
* Paste-back: the restored crop is warped back with the inverse transform and blended with a
  feathered mask over the face (:func:`face_mask`), not the whole square crop; where faces'
  masks overlap each pixel goes mostly to the face whose centre it is nearer
  (:func:`_composite`). Pixels outside each face's warped crop are left bit-identical.
* Faces larger than the crop (a portrait at 12-24 MP): the crop is area-averaged, not sampled
  (no moire), and what is pasted is the model's change at the crop's resolution, added to the
  photo's own finer detail (:func:`_warp_back`): an unchanged 1500-px face comes back
  unchanged, not as a 3x enlargement of 512 px.
* Previews (``ctx.whole``): faces are looked for in the whole photo (the part as the steps
  before left it), and those that reach the part are restored from all their pixels
  (:func:`_faces_for_part`), as the whole fix restores them; after an upscale, from the
  upscaled part, which the pipeline grows to hold them whole (:func:`preview_face_box`).
Faces smaller than ``min_face`` pixels are skipped (too little to restore, and CodeFormer would
invent a face).
"""
from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import Cancelled, EngineError, UsageError
from .classical import to_uint8
from .registry import StepContext, StepOutput, call_cancellable, param_choice, register_step

FACE_SIZE = 512
# FFHQ five-point template at 512x512 (facexlib's ``face_template``): image-left eye,
# image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
FFHQ_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.19360], [256.63416, 314.01935],
     [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float32)

# Box-only alignment (Haar): where a frontal-face box lands in the template. A Haar box is
# about twice the eye distance wide with the eyes ~38% down; the template's eye distance is
# ~126 px with the eyes at y = 240.
_BOX_WIDTH_IN_TEMPLATE = 2.0 * 125.9
_BOX_CENTER_IN_TEMPLATE = (256.0, 240.0 + (0.5 - 0.38) * _BOX_WIDTH_IN_TEMPLATE)

YUNET_ID = "yunet-2023mar"
CODEFORMER_ID = "codeformer"
GFPGAN_ID = "gfpgan-v1.4"
# the face models ``face_codeformer`` can run (its ``model``), the default first; both take
# the 512 x 512 FFHQ-aligned crop in [-1, 1] (and both are non-commercial: see the manifest)
FACE_MODELS = (CODEFORMER_ID, GFPGAN_ID)
HAAR_FILE = "haarcascade_frontalface_default.xml"

RestoreFn = Callable[[np.ndarray], np.ndarray]
Check = Callable[[], None]
log = logging.getLogger(__name__)
# one face detection (YuNet or the Haar cascade, ~0.5 s on a 1280-px view) runs at a time: a
# cancelled job's detection is abandoned (call_cancellable) and may not overlap the next one
_DETECT_SLOT = threading.Lock()
# one reduction of a whole photo to the detection view at a time (a cancelled job's is
# abandoned: see _detection_view)
_VIEW_SLOT = threading.Lock()


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    score: float
    landmarks: np.ndarray | None  # (5, 2) in template order, or None (box only)

    @property
    def size(self) -> float:
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"box": [round(v) for v in self.box],
                             "score": round(float(self.score), 3)}
        if self.landmarks is not None:
            d["landmarks"] = [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks]
        return d


# ------------------------------------------------------------------------------ detection

def order_landmarks(points: np.ndarray) -> np.ndarray:
    """Put 5 landmarks (2 eyes, nose, 2 mouth corners, any left/right convention) in template
    order: image-left eye, image-right eye, nose, image-left mouth, image-right mouth.

    "Left" is decided along the face's own horizontal axis (perpendicular to the eyes-to-mouth
    direction), so a tilted face is ordered correctly.
    """
    p = np.asarray(points, dtype=np.float32).reshape(5, 2)
    eyes, nose, mouth = p[0:2], p[2], p[3:5]
    down = mouth.mean(axis=0) - eyes.mean(axis=0)
    right = np.array([down[1], -down[0]], dtype=np.float32)  # image x axis for an upright face
    if eyes[0] @ right > eyes[1] @ right:
        eyes = eyes[::-1]
    if mouth[0] @ right > mouth[1] @ right:
        mouth = mouth[::-1]
    return np.stack([eyes[0], eyes[1], nose, mouth[0], mouth[1]]).astype(np.float32)


def _detection_view(image: np.ndarray, max_side: int, check: Check | None = None
                    ) -> tuple[np.ndarray, float, float]:
    """BGR uint8 view of ``image`` with its longer side at most ``max_side``; returns
    (view, sx, sy): view pixel = image pixel * (sx, sy) (exact per axis after rounding).

    The same bytes as ``resize(to_uint8(image)[..., ::-1])``, with one photo-sized uint8
    copy: ``to_uint8`` works in bands (it made three photo-sized float copies: 288 MB alive at
    once on a 12 MP photo), and the resize (per channel) runs on the RGB copy, so only the
    small view is put in BGR order. ``check`` is called between the bands, and the resize (one
    OpenCV call that cannot stop part-way: 0.17-0.27 s at 120 MP on an idle 2-core machine) is
    abandoned on a cancel (:func:`call_cancellable`; a 12 MP photo took 0.3-0.45 s to get
    here)."""
    import cv2

    rgb = to_uint8(image, check)
    h, w = rgb.shape[:2]
    s = min(1.0, max_side / max(h, w))
    if s < 1.0:
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        rgb = call_cancellable(lambda rgb=rgb: cv2.resize(rgb, (nw, nh),
                                                          interpolation=cv2.INTER_AREA),
                               check, slot=_VIEW_SLOT, name="mend-face-view")
        return np.ascontiguousarray(rgb[..., ::-1]), nw / w, nh / h
    return np.ascontiguousarray(rgb[..., ::-1]), 1.0, 1.0


def _cached(runtime: Any, key: Any, factory: Callable[[], Any], size: int) -> Any:
    if runtime is not None and hasattr(runtime, "cached"):
        return runtime.cached(key, factory, size)
    return factory()


def _plausible_landmarks(lm: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    """Five points inside the box (with a margin of a quarter of its size) and the eyes
    apart: otherwise the box alone is the better guide for alignment."""
    x0, y0, x1, y1 = box
    mx, my = 0.25 * (x1 - x0), 0.25 * (y1 - y0)
    inside = ((lm[:, 0] >= x0 - mx) & (lm[:, 0] <= x1 + mx)
              & (lm[:, 1] >= y0 - my) & (lm[:, 1] <= y1 + my))
    eye_gap = float(np.hypot(*(lm[1] - lm[0])))
    return bool(inside.all()) and eye_gap >= 0.1 * (x1 - x0)


def yunet_faces(rows: Any, sx: float, sy: float, shape: tuple[int, int]) -> list[Face]:
    """Faces from ``cv2.FaceDetectorYN.detect`` rows (x, y, w, h, 5 landmarks, score; in the
    detection view scaled by ``sx``, ``sy``), mapped to image pixels.

    Rows a sane detector never gives are dropped (non-finite values, empty boxes, a centre
    outside the image, a box over twice the image's longer side); landmarks off the face are
    dropped (the face is then aligned by its box).
    """
    faces: list[Face] = []
    if rows is None:
        return faces
    h, w = shape
    for r in np.asarray(rows, dtype=np.float64).reshape(-1, 15):
        if not np.isfinite(r).all():
            continue
        x, y, bw, bh = r[0] / sx, r[1] / sy, r[2] / sx, r[3] / sy
        cx, cy = x + bw / 2, y + bh / 2
        if bw <= 0 or bh <= 0 or max(bw, bh) > 2 * max(h, w):
            continue
        if not (0 <= cx < w and 0 <= cy < h):
            continue
        box = (float(x), float(y), float(x + bw), float(y + bh))
        lm: np.ndarray | None = order_landmarks(
            r[4:14].reshape(5, 2) / np.array([sx, sy]))
        if not _plausible_landmarks(lm, box):
            lm = None
        faces.append(Face(box, float(np.clip(r[14], 0.0, 1.0)), lm))
    return faces


def detect_yunet(image: np.ndarray, model_path: str, *, runtime: Any = None,
                 score_threshold: float = 0.7, nms_threshold: float = 0.3,
                 max_side: int = 1280, check: Check | None = None) -> list[Face]:
    """Faces with 5 landmarks from OpenCV YuNet (``model_path``: the ONNX file).

    The 2023mar file declares a static 1x3x640x640 input; OpenCV's DNN (4.x) re-shapes the
    graph to the size given by ``setInputSize`` (padded up to a multiple of 32), so each image
    is detected at its own size, downscaled first when its longer side exceeds ``max_side``.
    ``check``: a cancel is honoured while the view is made and during the detection (which
    is abandoned: :func:`~engine.restore.registry.call_cancellable`).
    """
    import os

    import cv2

    bgr, sx, sy = _detection_view(image, max_side, check)
    h, w = bgr.shape[:2]

    def make():
        return cv2.FaceDetectorYN.create(str(model_path), "", (w, h), score_threshold,
                                         nms_threshold, 5000)

    st = os.stat(model_path)  # a re-pulled file gets a fresh detector
    det = _cached(runtime, ("yunet", str(model_path), st.st_size, st.st_mtime_ns), make,
                  1 << 20)

    def run() -> Any:
        # (set up in the slot: an abandoned detection may still be using the cached detector)
        det.setInputSize((w, h))
        det.setScoreThreshold(float(score_threshold))
        det.setNMSThreshold(float(nms_threshold))
        return det.detect(bgr)[1]

    rows = call_cancellable(run, check, slot=_DETECT_SLOT, name="mend-face-detect")
    return yunet_faces(rows, sx, sy, image.shape[:2])


HAAR_EYE_FILE = "haarcascade_eye_tree_eyeglasses.xml"
_EYE_SIDE = 128  # the face box's upper part is scaled to this width to look for an eye
_EYE_PART = 0.7  # ... its upper 70 %


def _has_an_eye(gray: np.ndarray, box: tuple[int, int, int, int], cascade: Any) -> bool:
    """Whether OpenCV's eye cascade (with glasses) finds an eye in the upper part of ``box``
    (``gray``: the detection view before the global histogram equalisation; the part is
    equalised on its own)."""
    import cv2

    x, y, w, h = box
    top = gray[y:y + max(1, int(h * _EYE_PART)), x:x + w]
    if top.size == 0:
        return False
    s = _EYE_SIDE / top.shape[1]
    top = cv2.resize(top, None, fx=s, fy=s,
                     interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    eyes = cascade.detectMultiScale(cv2.equalizeHist(top), scaleFactor=1.1, minNeighbors=2,
                                    minSize=(_EYE_SIDE // 10,) * 2,
                                    maxSize=(_EYE_SIDE // 2,) * 2)
    return len(eyes) > 0


def detect_haar(image: np.ndarray, *, min_size: int = 48, max_side: int = 1280,
                min_score: float = 2.0, verify_eyes: bool = True,
                check: Check | None = None) -> list[Face]:
    """Faces (boxes only) from OpenCV's bundled frontal-face Haar cascade: no download.

    ``min_score`` is on the cascade's final-stage weight: on the real face photos in the
    test set true faces scored 2.5-13 and the one false hit (a chin) 1.15.

    ``verify_eyes``: a box is kept only when OpenCV's eye cascade finds an eye in its upper
    part. On the real photos of ../shared/images the face cascade alone also boxed vases,
    flowers, foliage, a pumpkin, mud and text (25 of its 88 boxes there were not faces, with
    scores 2.0-6.0, inside the true faces' 2.5-13), and CodeFormer would paint a face on
    each. With the check 0 of those 25 stay and 54 of the 63 true faces (the ones lost: tiny,
    blurred or profile faces, left as they were). The check's settings were chosen on those
    same photos (the best of 18 tried; the others kept 0-1 false and 40-56 true boxes).

    ``check``: a cancel is honoured while the view is made, during the cascade (abandoned:
    :func:`~engine.restore.registry.call_cancellable`) and between the eye checks.
    """
    import cv2

    data = getattr(cv2, "data", None)
    if data is None or not hasattr(cv2, "CascadeClassifier"):
        raise EngineError("this OpenCV build has no Haar cascades; install the YuNet face "
                          f"detector (mend models pull {YUNET_ID})")
    bgr, sx, sy = _detection_view(image, max_side, check)
    raw = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    gray = cv2.equalizeHist(raw)
    cascade = _cascade("face", str(data.haarcascades) + "/" + HAAR_FILE)
    ms = max(12, int(min_size * min(sx, sy)))
    rects, _, weights = call_cancellable(
        lambda: cascade.detectMultiScale3(gray, scaleFactor=1.1, minNeighbors=6,
                                          minSize=(ms, ms), outputRejectLevels=True),
        check, slot=_DETECT_SLOT, name="mend-face-detect")
    eye = _cascade("eye", str(data.haarcascades) + "/" + HAAR_EYE_FILE) if verify_eyes else None
    faces = []
    for (x, y, bw, bh), wt in zip(np.asarray(rects).reshape(-1, 4),
                                  np.asarray(weights).reshape(-1)):
        if float(wt) < min_score:
            continue
        if check is not None:
            check()
        if eye is not None and not _has_an_eye(raw, (int(x), int(y), int(bw), int(bh)), eye):
            continue
        faces.append(Face((x / sx, y / sy, (x + bw) / sx, (y + bh) / sy), float(wt), None))
    return faces


_HAAR: dict[str, Any] = {}


def _cascade(kind: str, path: str) -> Any:
    """OpenCV's bundled ``kind`` ("face", "eye") cascade, loaded once."""
    import cv2

    cascade = _HAAR.get(kind)
    if cascade is None:
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise EngineError(f"OpenCV's Haar {kind} cascade could not be loaded")
        _HAAR[kind] = cascade
    return cascade


def detect_faces(image: np.ndarray, runtime: Any = None, *, min_size: int = 48,
                 detector: str = "auto", score_threshold: float = 0.7,
                 warnings: list[str] | None = None,
                 check: Check | None = None) -> tuple[list[Face], str]:
    """Detect faces; returns (faces at least ``min_size`` px, detector name).

    ``detector``: ``auto`` (YuNet when installed, else Haar), ``yunet`` or ``haar``. In
    ``auto``, a YuNet that fails (damaged file, an OpenCV error) does not fail the job: the
    Haar cascade is used and the reason is appended to ``warnings``. ``check`` (a progress's
    ``check``): a cancel is honoured within a fraction of a second (it took ~1.2 s).
    """
    if detector not in ("auto", "yunet", "haar"):
        raise UsageError(f"unknown face detector {detector!r} (auto, yunet or haar)")
    use_yunet = detector == "yunet" or (
        detector == "auto" and runtime is not None and runtime.is_available(YUNET_ID))
    faces: list[Face] | None = None
    if use_yunet:
        import cv2

        if runtime is None:
            raise UsageError("the YuNet face detector needs the model store")
        try:
            path = runtime.file(YUNET_ID)
            faces = detect_yunet(image, str(path), runtime=runtime,
                                 score_threshold=score_threshold, check=check)
            name = YUNET_ID
        except Cancelled:
            raise
        except (cv2.error, EngineError, OSError, ValueError) as e:
            if detector == "yunet":
                if isinstance(e, EngineError):
                    raise
                raise EngineError(f"the YuNet face detector failed: {_short(e)}") from e
            _warn(warnings, f"the YuNet face detector failed ({_short(e)}); used the "
                            f"built-in Haar detector instead (landmark-free alignment). "
                            f"Check it with: mend models verify {YUNET_ID}")
    elif detector == "auto" and runtime is not None and _store_status(runtime) == "corrupt":
        _warn(warnings, f"the YuNet face detector's file is damaged; used the built-in Haar "
                        f"detector instead (landmark-free alignment). Repair it with: "
                        f"mend models verify --repair {YUNET_ID}")
    if faces is None:
        faces, name = detect_haar(image, min_size=min_size, check=check), "builtin:haar"
    return [f for f in faces if f.size >= min_size], name


def _store_status(runtime: Any) -> str | None:
    store = getattr(runtime, "store", None)
    try:
        return store.status(YUNET_ID) if store is not None else None
    except EngineError:
        return None


def _warn(warnings: list[str] | None, msg: str) -> None:
    log.warning(msg)
    if warnings is not None:
        warnings.append(msg)


def _short(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------ alignment

def landmark_matrix(landmarks: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """2x3 similarity transform (image -> aligned crop) fitting the FFHQ template."""
    import cv2

    dst = FFHQ_TEMPLATE_512 * (size / 512.0)
    src = np.asarray(landmarks, np.float32).reshape(5, 2)
    eye_gap = float(np.hypot(*(src[1] - src[0])))
    eyes_to_mouth = float(np.hypot(*(src[3:].mean(0) - src[:2].mean(0))))
    if not np.isfinite(src).all() or min(eye_gap, eyes_to_mouth) < 2.0:
        raise ValueError("the five landmarks do not define an alignment")
    m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    if m is None:  # LMEDS found no consensus: least squares on all points
        m = _similarity_lstsq(src, dst)
    if m is None or not np.isfinite(m).all() or abs(np.linalg.det(m[:, :2])) < 1e-12:
        raise ValueError("the five landmarks do not define an alignment")
    # a face's five points fit the template up to a fraction of the face's size; other
    # point sets are squeezed by the fit until the misfit dwarfs the face
    mapped = np.c_[src, np.ones(5)] @ np.asarray(m, np.float64).T
    misfit = float(np.sqrt(((mapped - dst) ** 2).sum(1).mean()))
    face_len = float(np.hypot(*(mapped[3:].mean(0) - mapped[:2].mean(0))))
    if misfit > 0.5 * face_len:
        raise ValueError("the five landmarks are not a face's")
    return np.asarray(m, dtype=np.float64)


def _similarity_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity [[a, -b, tx], [b, a, ty]] mapping ``src`` onto ``dst``."""
    x, y = src[:, 0].astype(np.float64), src[:, 1].astype(np.float64)
    one, zero = np.ones_like(x), np.zeros_like(x)
    a_mat = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
    rhs = np.concatenate([dst[:, 0], dst[:, 1]]).astype(np.float64)
    (a, b, tx, ty), *_ = np.linalg.lstsq(a_mat, rhs, rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def box_matrix(box: tuple[float, float, float, float], size: int = FACE_SIZE) -> np.ndarray:
    """2x3 similarity transform for a face known only by its box (no rotation)."""
    x0, y0, x1, y1 = box
    k = size / 512.0
    s = _BOX_WIDTH_IN_TEMPLATE * k / max(x1 - x0, 1e-3)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    tx = _BOX_CENTER_IN_TEMPLATE[0] * k - s * cx
    ty = _BOX_CENTER_IN_TEMPLATE[1] * k - s * cy
    return np.array([[s, 0.0, tx], [0.0, s, ty]], dtype=np.float64)


def face_matrix(face: Face, size: int = FACE_SIZE) -> np.ndarray:
    """Landmark alignment when the face has landmarks that define one, else box alignment."""
    if face.landmarks is not None:
        try:
            return landmark_matrix(face.landmarks, size)
        except ValueError:
            pass
    return box_matrix(face.box, size)


# a face more than this many times larger than the aligned crop is reduced by area averaging
# (warped at an integer multiple of the crop's size, then box-reduced), not sampled: bilinear
# sampling at 3x reduction folds detail finer than the crop holds back in as moire
# (facexlib's own crop samples; see test_face_large.py). At most 8x: a 4096-px crop.
AREA_REDUCE_ABOVE = 1.25
MAX_AREA_FACTOR = 8


def _shrink(matrix: np.ndarray) -> float:
    """How many photo pixels one crop pixel spans (> 1: the face is larger than the crop)."""
    return 1.0 / math.sqrt(max(abs(float(np.linalg.det(np.asarray(matrix)[:, :2]))), 1e-24))


def warp_face(image: np.ndarray, matrix: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """The aligned ``size`` x ``size`` crop of ``image`` (``matrix``: photo -> crop), area
    averaged where the face is larger than the crop (``AREA_REDUCE_ABOVE``)."""
    import cv2

    shrink = _shrink(matrix)
    k = min(MAX_AREA_FACTOR, math.ceil(shrink)) if shrink > AREA_REDUCE_ABOVE else 1
    if k == 1:
        return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)
    # crop pixel i is the mean of fine pixels k*i .. k*i + k-1, centred on k*i + (k-1)/2
    fine = np.array([[k, 0.0, (k - 1) / 2], [0.0, k, (k - 1) / 2]]) @ \
        np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]])
    big = cv2.warpAffine(image, fine, (size * k, size * k), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)


def paste_region(matrix: np.ndarray, shape: tuple[int, int],
                 size: int = FACE_SIZE) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the image rectangle the aligned crop maps back onto (clipped).

    Paste-back never touches a pixel outside this rectangle.
    """
    import cv2

    inv = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
    pts = corners @ inv.T
    h, w = shape
    x0 = int(np.clip(math.floor(pts[:, 0].min()), 0, w))
    y0 = int(np.clip(math.floor(pts[:, 1].min()), 0, h))
    x1 = int(np.clip(math.ceil(pts[:, 0].max()) + 1, 0, w))
    y1 = int(np.clip(math.ceil(pts[:, 1].max()) + 1, 0, h))
    return x0, y0, x1, y1


# the paste-back mask in the aligned crop (FFHQ 512 template; scaled with the crop): an
# ellipse over the face - brows to chin, cheek to cheek, with a margin for box-only (Haar)
# alignment - where the restored face has full weight, fading out (a cosine) to nothing at
# 1.2 x the ellipse, 8 px or more inside the crop's edge. Hair, neck and background stay the
# photo's: the whole square crop reached a neighbour's face (up to 62 % of it, at over half
# weight, on the real couple photo) and drew the crop's edge as a faint square.
FACE_MASK_CENTER = (256.0, 276.0)
FACE_MASK_AXES = (150.0, 190.0)
FACE_MASK_FADE = 0.2
# where two faces' masks overlap, each pixel goes mostly to the face it is nearer the centre
# of: weight = mask x exp(-FACE_PRIORITY x r^2), r = 1 on the ellipse (0.8 vs 1.05: 95 : 5)
FACE_PRIORITY = 6.0


def face_mask(size: int = FACE_SIZE) -> np.ndarray:
    """(size, size, 2) float32 in the aligned crop: the paste weight of the restored face
    (1 over the face, fading to 0) and its priority where faces overlap (see above)."""
    k = size / 512.0
    c = (np.arange(size, dtype=np.float32) + 0.5) / k  # crop px -> template px (centres)
    u = ((c - FACE_MASK_CENTER[0]) / FACE_MASK_AXES[0])[None, :]
    v = ((c - FACE_MASK_CENTER[1]) / FACE_MASK_AXES[1])[:, None]
    r2 = u * u + v * v
    t = np.clip((np.sqrt(r2) - 1.0) / FACE_MASK_FADE, 0.0, 1.0)
    alpha = 0.5 + 0.5 * np.cos(np.pi * t)
    alpha[t >= 1.0] = 0.0
    return np.stack([alpha, alpha * np.exp(-FACE_PRIORITY * r2)], axis=-1).astype(np.float32)


@dataclass
class _Warped:
    """One face's crop warped back into the photo: its :func:`paste_region` ``box``, paste
    weight ``alpha`` and overlap ``priority`` there, and ``delta`` = restored - photo (None for
    a face kept as it was: it still claims its pixels from its neighbours). For a face larger
    than the crop, ``delta`` is restored - crop, both warped back: what the model changed, at
    the crop's resolution (see :func:`_warp_back`)."""

    box: tuple[int, int, int, int]
    alpha: np.ndarray
    priority: np.ndarray
    delta: np.ndarray | None


def _warp_back(image: np.ndarray, restored: np.ndarray | None, matrix: np.ndarray,
               size: int, crop: np.ndarray | None = None) -> _Warped | None:
    """Warp one face's restored crop back into ``image``'s frame (see :class:`_Warped`).

    A face larger than the crop (CodeFormer's 512 px) keeps the photo's own detail finer than
    the crop could hold: what is pasted is the model's change (restored - ``crop``, the crop
    it was given; taken from ``image`` when None) enlarged, added to the photo. Pasting the
    enlarged crop itself replaced a 1500-px face's pores, lashes and hair by a 3x upscale of
    512 px (an unchanged face came back blurred). Smaller faces paste the restored crop."""
    import cv2

    x0, y0, x1, y1 = paste_region(matrix, image.shape[:2], size)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = face_mask(size)
    inv = cv2.invertAffineTransform(matrix)
    face = None if restored is None else restored.astype(np.float32)
    scale = math.sqrt(abs(np.linalg.det(inv[:, :2])))
    if scale < 0.5:  # shrink first with area averaging so a small face does not alias
        r = max(8, round(size * scale * 2))
        if face is not None:
            face = cv2.resize(face, (r, r), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (r, r), interpolation=cv2.INTER_AREA)
        # resized pixel j covers crop pixels [k*j, k*(j+1)): its centre is k*j + (k-1)/2
        # (without the offset a small face was pasted ~0.1 px up and left)
        k = size / r
        inv = inv @ np.array([[k, 0.0, (k - 1) / 2], [0.0, k, (k - 1) / 2], [0.0, 0.0, 1.0]])
    inv = inv.copy()
    inv[0, 2] -= x0
    inv[1, 2] -= y0
    dsize = (x1 - x0, y1 - y0)
    m = cv2.warpAffine(mask, inv, dsize, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha, priority = np.clip(m[..., 0], 0.0, 1.0), np.maximum(m[..., 1], 0.0)
    delta = None
    if face is not None:
        flags = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_LINEAR
        # (replicated edge: no black is interpolated into the crop's outer pixels)
        delta = cv2.warpAffine(face, inv, dsize, flags=flags, borderMode=cv2.BORDER_REPLICATE)
        np.clip(delta, 0.0, 1.0, out=delta)
        if scale > AREA_REDUCE_ABOVE:  # the model's change, enlarged (see above)
            given = warp_face(image, matrix, size) if crop is None else crop
            delta -= np.clip(cv2.warpAffine(given.astype(np.float32), inv, dsize, flags=flags,
                                            borderMode=cv2.BORDER_REPLICATE), 0.0, 1.0)
        else:
            delta -= image[y0:y1, x0:x1]
    return _Warped((x0, y0, x1, y1), alpha, priority, delta)


def _composite(image: np.ndarray, warped: list[_Warped]) -> None:
    """Blend the restored faces of ``warped`` into ``image`` in place: at each pixel
    ``image + (1 - prod(1 - alpha)) * sum(priority * delta) / sum(priority)`` over the faces
    whose region holds it (a kept face adds weight, no change), so no face's restoration is
    painted over by a neighbour's crop and the order does not matter. Only pixels where a
    restored face's mask is above 0 change."""
    for k, wk in enumerate(warped):
        if wk.delta is None:
            continue
        x0, y0, x1, y1 = wk.box
        keep = np.ones(wk.alpha.shape, np.float32)  # prod(1 - alpha)
        total = np.zeros(wk.alpha.shape, np.float32)  # sum(priority)
        change = np.zeros(wk.delta.shape, np.float32)  # sum(priority * delta)
        done = np.zeros(wk.alpha.shape, bool)  # pixels an earlier restored face has set
        for j, wj in enumerate(warped):
            a0, b0, a1, b1 = wj.box
            ix0, iy0, ix1, iy1 = max(x0, a0), max(y0, b0), min(x1, a1), min(y1, b1)
            if ix1 <= ix0 or iy1 <= iy0:
                continue
            here = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
            there = (slice(iy0 - b0, iy1 - b0), slice(ix0 - a0, ix1 - a0))
            keep[here] *= 1.0 - wj.alpha[there]
            total[here] += wj.priority[there]
            if wj.delta is not None:
                change[here] += wj.priority[there][..., None] * wj.delta[there]
                if j < k:
                    done[here] |= wj.alpha[there] > 0
        sel = (wk.alpha > 0) & (total > 0) & ~done
        region = image[y0:y1, x0:x1]
        region[sel] += ((1.0 - keep[sel]) / total[sel])[:, None] * change[sel]


def paste_face(image: np.ndarray, restored: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Blend ``restored`` (the aligned crop) back into ``image`` in place; returns ``image``.

    The face's mask (:func:`face_mask`) fades out well inside the crop, so no seam shows;
    only pixels inside :func:`paste_region` can change."""
    w = _warp_back(image, restored, matrix, restored.shape[0])
    if w is not None:
        _composite(image, [w])
    return image


FACE_CHECK_SIDE = 64  # px: the face's content (who it is), not its detail
FACE_MIN_PSNR, FACE_MIN_SSIM = 16.0, 0.45  # the regression guard's content floors, per face


def face_kept(crop: np.ndarray, restored: np.ndarray) -> tuple[bool, float, float]:
    """Whether a restored face still is the face it came from: PSNR (dB) and SSIM of their
    luma at ``FACE_CHECK_SIDE`` px against the regression guard's content floors. A face the
    model turned into another face, or into noise, fails; sharper detail does not count."""
    from .classical import luminance
    from .guard import _psnr, _resize, _ssim

    size = (FACE_CHECK_SIDE, FACE_CHECK_SIDE)
    a = luminance(np.clip(_resize(crop, size), 0, 1))
    b = luminance(np.clip(_resize(restored, size), 0, 1))
    psnr, ssim = _psnr(b, a), _ssim(b, a)
    return psnr >= FACE_MIN_PSNR and ssim >= FACE_MIN_SSIM, psnr, ssim


def restore_faces(image: np.ndarray, faces: list[Face], restore_fn: RestoreFn,
                  progress: Any = None, size: int = FACE_SIZE,
                  kept_original: list[int] | None = None) -> np.ndarray:
    """Align each face, run ``restore_fn`` on the crop, paste back; returns a new image.
    A restored face that is no longer the same face (``face_kept``) is not pasted: the
    original face stays, and its index goes to ``kept_original``. On a grey photo the
    restored face is made grey too (the model may colour it)."""
    out = image.astype(np.float32, copy=True)
    grey = image.ndim == 3 and bool(np.allclose(image[..., 0], image[..., 1]) and
                                    np.allclose(image[..., 1], image[..., 2]))
    warped: list[_Warped] = []
    for i, face in enumerate(faces):
        if progress is not None:
            progress.update(i / max(1, len(faces)), f"face {i + 1}/{len(faces)}")
        m = face_matrix(face, size)
        crop = warp_face(image, m, size)
        restored = np.asarray(restore_fn(crop), dtype=np.float32)
        if restored.shape != crop.shape or not np.isfinite(restored).all():
            raise EngineError("the face model returned an invalid image")
        if grey:
            from .classical import luminance

            restored = np.repeat(luminance(restored)[..., None], 3, axis=2)
        ok, psnr, ssim = face_kept(crop, restored)
        if not ok:
            log.info("face %d kept as it was (PSNR %.1f dB, SSIM %.2f)", i, psnr, ssim)
            if kept_original is not None:
                kept_original.append(i)
        # (``out`` is still the photo: the faces are blended in together, below)
        w = _warp_back(out, restored if ok else None, m, size, crop)
        if w is not None:
            warped.append(w)
    _composite(out, warped)
    if progress is not None:
        progress.update(1.0, f"{len(faces)} face(s) restored")
    return out


def codeformer_fn(descriptor: Any, device: Any, fidelity: float,
                  check: Callable[[], None] | None = None) -> RestoreFn:
    """CodeFormer on one aligned 512x512 crop (float RGB [0, 1] in and out).

    CodeFormer works on [-1, 1] tensors (its official inference normalises with mean 0.5,
    std 0.5) and takes the fidelity weight ``w`` as ``weight``; spandrel's generic call
    would use [0, 1] and w = 0.5, so the module is called directly.
    """
    import torch

    from ..tiling import checking

    model = getattr(descriptor, "model", descriptor)
    param = next(model.parameters())
    dev, dtype = param.device, param.dtype
    w = float(np.clip(fidelity, 0.0, 1.0))

    def fn(face: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(face.transpose(2, 0, 1)))[None]
        x = x.to(device=dev, dtype=dtype) * 2.0 - 1.0
        with torch.inference_mode(), checking(model, check):  # (a cancel inside one face)
            y = model(x, weight=w)
            y = y[0] if isinstance(y, (tuple, list)) else y
            y = (y.clamp(-1.0, 1.0) + 1.0) / 2.0
        return y[0].float().permute(1, 2, 0).cpu().numpy()

    return fn


def gfpgan_fn(descriptor: Any, device: Any, check: Callable[[], None] | None = None
              ) -> RestoreFn:
    """GFPGAN (v1.4: spandrel's GFPGANv1Clean) on one aligned 512x512 crop (float RGB [0, 1]
    in and out).

    Like CodeFormer it works on [-1, 1] tensors (GFPGAN's own inference normalises with mean
    0.5, std 0.5) and returns the restored face first. It has no fidelity weight. Its StyleGAN2
    decoder adds noise maps, which GFPGAN's own inference draws afresh at each call: here the
    checkpoint's stored maps are used (``randomize_noise=False``), so that a face comes out
    the same every time (a preview as the fix, a job run twice).
    """
    import torch

    from ..tiling import checking

    model = getattr(descriptor, "model", descriptor)
    param = next(model.parameters())
    dev, dtype = param.device, param.dtype

    def fn(face: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(face.transpose(2, 0, 1)))[None]
        x = x.to(device=dev, dtype=dtype) * 2.0 - 1.0
        with torch.inference_mode(), checking(model, check):  # (a cancel inside one face)
            y = model(x, return_rgb=False, randomize_noise=False)
            y = y[0] if isinstance(y, (tuple, list)) else y
            y = (y.clamp(-1.0, 1.0) + 1.0) / 2.0
        return y[0].float().permute(1, 2, 0).cpu().numpy()

    return fn


# the architecture spandrel finds in each face model's weights
_FACE_ARCHES = {CODEFORMER_ID: "CodeFormer", GFPGAN_ID: "GFPGAN"}


def face_model_fn(descriptor: Any, model_id: str, device: Any, fidelity: float,
                  check: Callable[[], None] | None = None) -> RestoreFn:
    """The restore function of ``model_id`` (one of ``FACE_MODELS``) as loaded
    (``descriptor``): CodeFormer with its ``fidelity`` weight, or GFPGAN, which has none.
    Weights spandrel found to be another architecture (a wrong file imported under the id)
    are an :class:`EngineError`, not run with the other model's call."""
    arch = getattr(getattr(descriptor, "architecture", None), "id", None)
    want = _FACE_ARCHES[model_id]
    if arch is not None and arch != want:
        raise EngineError(f"{model_id}: its weights are a {arch} model, not {want}; "
                          f"install the right file (mend models remove {model_id}, then "
                          f"mend models pull {model_id})")
    if model_id == GFPGAN_ID:
        return gfpgan_fn(descriptor, device, check)
    return codeformer_fn(descriptor, device, fidelity, check)


def _meets(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and a[2] > b[0] and a[1] < b[3] and a[3] > b[1]


@dataclass(frozen=True)
class FaceSearch:
    """The faces :func:`preview_faces` found in a whole photo (source px): ``faces``, all of
    at least ``min_face`` px, largest first; the ``detector`` that found them and what it
    warned of; ``rects``, the rectangles the largest ``max_faces`` of them are pasted back
    onto (x0, y0, x1, y1), which a preview's part is grown to hold whole."""

    faces: tuple[Face, ...]
    detector: str
    warnings: tuple[str, ...]
    rects: tuple[tuple[int, int, int, int], ...]


def preview_faces(pixels: np.ndarray, params: Mapping[str, Any], runtime: Any,
                  check: Check | None = None) -> FaceSearch:
    """The faces of a photo (``pixels``) a preview's part must hold whole, for a chain that
    upscales before its face step (``params``: that step's), whose faces are restored from the
    upscaled part alone (:func:`_faces_for_part`): a face the part's edge cut was aligned and
    restored from the part's pixels and a mirror of them. Looked for as the face step does
    (its detector, score, ``min_face``, largest ``max_faces``), in the photo before the steps
    (as loaded: a transparent photo's pixels unfilled); the face step restores these (given
    it through ``WholePhoto.faces``) instead of looking at the whole photo again after the
    steps before it (a second whole-photo detection: 0.4 s with Haar on a 1297 x 1920
    photo). The faces of the whole photo: :func:`preview_face_box` takes those of any region
    from their ``rects``."""
    warnings: list[str] = []
    faces, detector = detect_faces(pixels, runtime, min_size=int(params.get("min_face", 48)),
                                   detector=str(params.get("face_detector", "auto")),
                                   score_threshold=float(params.get("face_score", 0.7)),
                                   warnings=warnings, check=check)
    faces.sort(key=lambda f: f.size, reverse=True)
    shape = pixels.shape[:2]
    rects = tuple(paste_region(face_matrix(f), shape)
                  for f in faces[: int(params.get("max_faces", 32))])
    return FaceSearch(tuple(faces), detector, tuple(warnings), rects)


def preview_face_box(region: tuple[int, int, int, int], box: tuple[int, int, int, int],
                     faces: Sequence[Sequence[int]], size: tuple[int, int], margin: int
                     ) -> tuple[int, int, int, int]:
    """The part a preview's steps run on (``box``: the ``region`` shown and its margin of
    context, x0, y0, x1, y1 source px, in a photo of ``size`` = (h, w)) grown to hold whole,
    with ``margin`` px around it, every one of ``faces`` (:func:`preview_faces`) whose
    restoration reaches the region."""
    h, w = size
    x0, y0, x1, y1 = box
    for r in faces:
        if _meets(r, region):
            x0, y0 = min(x0, max(0, r[0] - margin)), min(y0, max(0, r[1] - margin))
            x1, y1 = max(x1, min(w, r[2] + margin)), max(y1, min(h, r[3] + margin))
    return x0, y0, x1, y1


def _faces_for_part(faces: list[Face], whole: Any, image: np.ndarray, seen: np.ndarray | None,
                    warnings: list[str] | None = None
                    ) -> tuple[list[Face], np.ndarray, tuple[int, int, int, int] | None]:
    """A preview's faces (found in ``seen``, the whole photo of ``whole.view``) that reach its
    part (their paste-back rectangle meets it; of a part grown to hold faces, the region and
    its margin: ``whole.context``), and where to restore them: (faces, work
    image, place). At source scale ``work`` is the whole photo around the part and those
    faces (a face the part's edge cuts is aligned from all of its pixels, as in the whole fix)
    with the faces in its pixels, and ``place`` the part within it (x0, y0, x1, y1); after an
    upscale (``image`` at another scale than the source) the faces are moved into ``image``
    itself (``place`` None): the pipeline grew the part to hold whole the faces that reach
    the previewed region (:func:`preview_face_box`); one the part's edge still cuts (not
    found before the steps) has only the part's pixels, which ``warnings`` says. ``seen``
    is looked at only at source scale (None: the faces were found before the steps)."""
    x0, y0, x1, y1 = whole.box
    h, w = whole.shape
    reach = []
    for f in faces:
        r = paste_region(face_matrix(f), (h, w))
        # (of the region and its margin: not the faces beyond, in a part grown for faces)
        if _meets(r, whole.context or whole.box):
            reach.append((f, r))

    def moved(f: Face, dx: float, dy: float, sx: float = 1.0, sy: float = 1.0) -> Face:
        b = f.box
        lm = None if f.landmarks is None else (f.landmarks - (dx, dy)) * (sx, sy)
        return Face(((b[0] - dx) * sx, (b[1] - dy) * sy, (b[2] - dx) * sx, (b[3] - dy) * sy),
                    f.score, lm)

    sx, sy = whole.scale_of(image)
    if abs(sx - 1.0) > 1e-6 or abs(sy - 1.0) > 1e-6:
        shown = whole.region or whole.box
        cut = [f for f, r in reach if _meets(r, shown)
               and (r[0] < x0 or r[1] < y0 or r[2] > x1 or r[3] > y1)]
        if cut and warnings is not None:
            warnings.append(f"{len(cut)} face(s) the previewed part's edge cuts were restored "
                            "from the part's pixels only (after the upscale): the fix may "
                            "restore them differently")
        return [moved(f, x0, y0, sx, sy) for f, _ in reach], image, None
    ex0 = min([x0] + [r[0] for _, r in reach])
    ey0 = min([y0] + [r[1] for _, r in reach])
    ex1 = max([x1] + [r[2] for _, r in reach])
    ey1 = max([y1] + [r[3] for _, r in reach])
    work = np.ascontiguousarray(seen[ey0:ey1, ex0:ex1])
    return ([moved(f, ex0, ey0) for f, _ in reach], work,
            (x0 - ex0, y0 - ey0, x1 - ex0, y1 - ey0))


def _face_models(params: Mapping[str, Any], mask: bool) -> tuple[str, ...]:
    """The models ``face_codeformer`` loads (``StepSpec.loads``): YuNet first when its
    ``face_detector`` param chooses it (the step fails without it; ``auto`` uses it only when
    installed, else the Haar cascade), then its ``model`` (CodeFormer or GFPGAN; an unknown one
    is a ``UsageError``) for the faces it finds."""
    model_id = param_choice("face_codeformer", params)
    explicit = str(params.get("face_detector", "auto")) == "yunet"  # (as detect_faces reads it)
    return ((YUNET_ID,) if explicit else ()) + (model_id,)


@register_step(
    "face_codeformer",
    models=(CODEFORMER_ID, YUNET_ID),
    description="Restore faces with CodeFormer or GFPGAN v1.4 (model; fidelity is CodeFormer's "
                "alone) after YuNet detection and FFHQ alignment, pasted back.",
    defaults={"model": CODEFORMER_ID, "fidelity": 0.7, "min_face": 48, "max_faces": 32,
              "face_detector": "auto", "face_score": 0.7},
    loads=_face_models,
    choices={"model": FACE_MODELS},
)
def face_codeformer(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    """Faces restored by the ``model`` param's model: CodeFormer (the default) with its
    ``fidelity`` weight, or GFPGAN v1.4, to which ``fidelity`` does not apply (it is accepted
    and not used; the step's notes say so). The step keeps its name whatever the model (saved
    plans and results' records name it)."""
    model_id = param_choice("face_codeformer", params)
    min_face = int(params.get("min_face", 48))
    ctx.progress.update(0.0, "looking for faces")
    whole = ctx.whole
    searched = whole.faces if whole is not None else None
    seen = None
    if searched is not None:
        # a preview that upscales first found them in the whole photo before its steps, to
        # grow its part to hold them (Engine._preview_faces): not looked for a second time
        faces, detector = list(searched.faces), searched.detector
        ctx.warnings += [w for w in searched.warnings if w not in ctx.warnings]
        sx, sy = whole.scale_of(image)
        if abs(sx - 1.0) <= 1e-6 and abs(sy - 1.0) <= 1e-6:  # (restored from its pixels)
            seen = whole.view(image, ctx.progress.check)
    else:
        # a preview looks for faces in the whole photo, as the whole fix does (the same
        # detection view and scale, the same largest max_faces; a face the part's edge cuts
        # is found whole)
        seen = image if whole is None else whole.view(image, ctx.progress.check)
        faces, detector = detect_faces(seen, ctx.runtime, min_size=min_face,
                                       detector=str(params.get("face_detector", "auto")),
                                       score_threshold=float(params.get("face_score", 0.7)),
                                       warnings=ctx.warnings, check=ctx.progress.check)
        faces.sort(key=lambda f: f.size, reverse=True)
    found = len(faces)
    faces = faces[: int(params.get("max_faces", 32))]
    in_photo = len(faces)
    work, place = image, None
    if whole is not None:
        faces, work, place = _faces_for_part(faces, whole, image, seen, ctx.warnings)
    # in source pixels, as text_boxes (the viewer lays both over the original; a face step
    # after an x2/x4 upscale finds them in the upscaled image)
    src = ctx.artifacts.get("source")
    fy, fx = ((src.shape[0] / image.shape[0], src.shape[1] / image.shape[1])
              if src is not None else (1.0, 1.0))
    if place is not None:  # (faces in the work area at source scale: from there to the part)
        fx = fy = 1.0
    ox, oy = place[:2] if place is not None else (0, 0)
    ctx.artifacts["face_boxes"] = [[round((x0 - ox) * fx), round((y0 - oy) * fy),
                                    round((x1 - ox) * fx), round((y1 - oy) * fy)]
                                   for x0, y0, x1, y1 in (f.box for f in faces)]
    where = "" if whole is None else f" in the previewed part ({in_photo} in the whole photo)"
    if not faces:
        ctx.progress.update(1.0, "no faces")
        return StepOutput(image, detector,
                          f"skipped: no face of at least {min_face} px found{where}")
    fidelity = float(params.get("fidelity", 0.7))
    ctx.progress.update(0.05, f"loading {model_id}")
    descriptor = ctx.runtime.load_image_model(model_id)
    fn = face_model_fn(descriptor, model_id, ctx.device, fidelity, ctx.progress.check)
    kept: list[int] = []
    out = restore_faces(work, faces, fn, ctx.progress.sub(0.1, 0.9), kept_original=kept)
    if place is not None:  # the part, out of the work area
        px0, py0, px1, py1 = place
        out = np.ascontiguousarray(out[py0:py1, px0:px1])
    ctx.artifacts["faces_kept_original"] = kept
    boxes = ", ".join(f"{int(f.size)} px" for f in faces)
    notes = f"{len(faces)} face(s) ({boxes}) found by {detector}{where}, " + (
        f"fidelity {fidelity:g}" if model_id == CODEFORMER_ID else
        f"restored by {model_id} (fidelity {fidelity:g} not used: it is CodeFormer's)")
    if found > in_photo:
        notes += f"; {found} found, the {in_photo} largest restored (max_faces)"
        ctx.warnings.append(f"{found} faces found: only the {in_photo} largest were restored "
                            "(raise the step's max_faces to restore more)")
    if kept:
        notes += (f"; {len(kept)} kept as they were (the restored face was no longer the "
                  "same face)")
    return StepOutput(out, model_id, notes)
