"""Chain B, reflections: find them (mask), inpaint the strong ones, soften the weak ones.

Mask proposal, ``reflection_mask`` (params ``detector``: auto | yolo | sam | builtin):

1. **YOLO-seg** (ultralytics) when the ``reflection-yolo`` slot holds your weights. No public
   reflection detector exists (the paper's is unpublished). To train one: label photos with
   polygons around strong reflections / glare (CVAT, Label Studio, Roboflow... exported in the
   YOLO segmentation format, one class ``reflection``), write a ``data.yaml`` listing the train
   and val folders, run ``yolo segment train model=yolo11n-seg.pt data=data.yaml imgsz=1024
   epochs=100`` (``pip install ultralytics``, AGPL-3.0), export it to ONNX (``yolo export
   model=runs/segment/train/weights/best.pt format=onnx``), then give Mend ``best.onnx`` with
   ``MEND_REFLECTION_YOLO=/path/best.onnx`` or ``mend models import best.onnx --id
   reflection-yolo``. Only ONNX: a ``.pt`` is a Python pickle, which runs code when loaded (and
   ultralytics loads it with ``weights_only=False``); Mend never loads one.
2. **SAM** (transformers ``SamModel``: ``sam-vit-base``, or the pruned ``slimsam-50`` chosen by
   the step's ``sam_model`` param) turns boxes (from YOLO or the built-in detector) into pixel
   masks, and powers click-to-select in the mask editor (:func:`sam_mask_from_points`). It
   replaces the paper's YOSO: promptable, maintained and in transformers.
3. A **built-in glare detector** (no download, :func:`detect_glare`): very bright,
   low-saturation blobs (specular highlights) and bright, washed-out, low-texture patches that
   stand out from their surroundings (veiling glare).

The mask is uint8 (H, W), 255 = remove; a mask the user gave (``ctx.mask``) is never replaced.

Removal: ``inpaint_lama`` (big-lama through spandrel) inpaints each connected masked region
on a crop with context around it, never the whole photo; ``inpaint_builtin`` does the same
with OpenCV's Telea inpainting (in tiles a cancel can stop between, :func:`telea_inpaint`).
Both change pixels only inside the slightly dilated, feathered mask. ``dereflect_nafnet`` then
runs NAFNet over the photo for weak reflections.
"""
from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from ..errors import EngineError
from .classical import luminance, to_uint8
from .registry import (
    StepContext,
    StepOutput,
    call_cancellable,
    param_choice,
    register_step,
    step_tile,
    turned_off,
)

YOLO_ID = "reflection-yolo"
SAM_ID = "sam-vit-base"
# the SAM checkpoints ``reflection_mask`` can refine with (its ``sam_model``), the default
# first: SlimSAM-50 is SAM ViT-B pruned to about a third of its size (nielsr/slimsam-50-uniform,
# a transformers SamModel of the same interface)
SAM_MODELS = (SAM_ID, "slimsam-50")
LAMA_ID = "big-lama"
NAFNET_SIDD = "nafnet-sidd-w64"
# the weights ``dereflect_nafnet`` can run (its ``model``), the default first: NAFNet-SIDD at
# width 64 or 32 (the same training at half the width, about 0.3x the time on a CPU: see
# ``engine.estimate.MODEL_COST_RATIO``)
DEREFLECT_MODELS = (NAFNET_SIDD, "nafnet-sidd-w32")

PASTE_DILATE = 4  # px the inpainted area extends past the mask (covers halos); feathered
DETECT_SIDE = 1024  # the glare detector works on a view at most this large
# out of memory while inpainting a region: the region is retried at half the working size, down
# to this many px on its longer side (below, an OutOfMemory)
MIN_INPAINT_SIDE = 128

# Telea inpainting works in tiles of this many px (plus a margin, see telea_inpaint): on the
# glare masks of 12 MP photos one call took 0.4 s at most (one call for the whole mask: 4-9 s
# that a cancel could not stop)
TELEA_TILE = 512

InpaintFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
Check = Callable[[], None]
log = logging.getLogger(__name__)
# one cv2.inpaint call, one LaMa forward pass at a time: a cancelled job's call is abandoned
# (call_cancellable) and ends before the next starts
_TELEA_SLOT = threading.Lock()
_LAMA_SLOT = threading.Lock()
# one whole-photo resize of a detector at a time - the glare detector's view of the photo and
# its mask brought back to full size, SAM's view and its masks (a cancelled job's is abandoned:
# see detect_glare, _sam_run)
_REDUCE_SLOT = threading.Lock()
# one SAM forward pass at a time (a cancelled job's is abandoned and stops at its next layer:
# see _sam_run)
_SAM_SLOT = threading.Lock()


# ------------------------------------------------------------------------- mask helpers

def _ellipse(r: int) -> np.ndarray:
    import cv2

    r = max(0, int(r))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def dilate_mask(mask: np.ndarray, r: int) -> np.ndarray:
    import cv2

    m = (mask > 127).astype(np.uint8) * 255
    return cv2.dilate(m, _ellipse(r)) if r > 0 else m


def paste_alpha(mask: np.ndarray, dilate: int = PASTE_DILATE,
                check: Check | None = None) -> np.ndarray:
    """Blend weight for pasting an inpainted result: 1 on the mask, fading to 0 across a
    ``dilate``-px band around it, exactly 0 outside ``dilate_mask(mask, dilate)``.
    ``check`` is called between its stages (each ~0.1 s on a 12 MP mask)."""
    import cv2

    def step() -> None:
        if check is not None:
            check()

    inner = mask > 127
    if dilate <= 0:
        return inner.astype(np.float32)
    dil = dilate_mask(mask, dilate)
    step()
    dist = cv2.distanceTransform((dil > 0).astype(np.uint8), cv2.DIST_L2, 3)
    step()
    alpha = np.clip(dist / float(dilate + 1), 0.0, 1.0).astype(np.float32)
    del dist
    step()
    alpha[inner] = 1.0
    alpha[dil == 0] = 0.0
    return alpha


def mask_regions(mask: np.ndarray, context: float = 1.0, min_context: int = 32,
                 merge: bool = True) -> list[tuple[int, int, int, int]]:
    """Crops (x0, y0, x1, y1) around each connected masked region, grown by ``context`` x the
    region's size (at least ``min_context`` px) on every side; overlapping crops are merged."""
    import cv2

    h, w = mask.shape[:2]
    n, _, stats, _ = cv2.connectedComponentsWithStats((mask > 127).astype(np.uint8), 8)
    rects = []
    for i in range(1, n):
        x, y, bw, bh, _ = stats[i]
        m = max(min_context, int(context * max(bw, bh)))
        rects.append([max(0, x - m), max(0, y - m), min(w, x + bw + m), min(h, y + bh + m)])
    if merge:
        changed = True
        while changed and len(rects) > 1:
            changed = False
            out: list[list[int]] = []
            for r in rects:
                for o in out:
                    if r[0] < o[2] and o[0] < r[2] and r[1] < o[3] and o[1] < r[3]:
                        o[0], o[1] = min(o[0], r[0]), min(o[1], r[1])
                        o[2], o[3] = max(o[2], r[2]), max(o[3], r[3])
                        changed = True
                        break
                else:
                    out.append(list(r))
            rects = out
    return [tuple(int(v) for v in r) for r in rects]


def _fit_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.dtype == np.bool_ or (m.dtype.kind in "iu" and m.size and int(m.max()) == 1):
        # a true/false mask, or a 0/1 label image (what labelling tools export): 1 = remove
        m = (m > 0).astype(np.uint8) * 255
    elif m.dtype != np.uint8:
        m = ((m > (0.5 if m.dtype.kind == "f" and m.max() <= 1.0 else 127)) * 255).astype(
            np.uint8)
    if m.shape != tuple(shape):
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return m


def _clean_mask(mask: np.ndarray, min_area: int) -> np.ndarray:
    import cv2

    m = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _ellipse(1))
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, _ellipse(2))
    n, lab, stats, _ = cv2.connectedComponentsWithStats((m > 0).astype(np.uint8), 8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return (keep[lab] * 255).astype(np.uint8)


# ------------------------------------------------------------------ built-in glare detector

def detect_glare(image: np.ndarray, *, sensitivity: float = 1.0,
                 max_area: float = 0.35, check: Check | None = None) -> np.ndarray:
    """Strong highlights and veiling glare, no download. Returns uint8 (H, W), 255 = glare.

    * specular: near-white (max channel >= ~0.93), low saturation, clearly brighter than the
      local background;
    * veiling glare: bright, washed-out (low saturation) and low-texture patches lifted well
      above their surroundings (a reflection adds a smooth veil and flattens contrast).
    Tiny specks are dropped. Each remaining region must then look like a reflection rather
    than a light source or a bright white object (:func:`_reflection_like`): a reflection on
    glass is a veil with a soft boundary, while a lamp, the sun, a window or a white shirt
    is a compact bright region with a crisp edge against its surroundings. The kept regions
    are grown by 2 px to cover halos. When more than ``max_area`` of the frame is flagged,
    only the brightest regions up to that share are kept (a photo is not mostly
    reflection). ``sensitivity`` > 1 finds weaker glare. ``check`` (a progress's ``check``)
    is called between the stages (a 12 MP photo took 0.9 s without a look at the cancel), and
    the reduction of a large photo and the mask's return to its full size are abandoned on a
    cancel (:func:`call_cancellable`).
    """
    import cv2

    def step() -> None:
        if check is not None:
            check()

    h, w = image.shape[:2]
    s = min(1.0, DETECT_SIDE / max(h, w))
    # (one whole-photo resize that nothing can stop part-way - 0.29-0.34 s at 120 MP on an idle
    # 2-core machine, more on a busy one - is abandoned on a cancel)
    view = image if s >= 1.0 else call_cancellable(
        lambda: cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))),
                           interpolation=cv2.INTER_AREA),
        check, slot=_REDUCE_SLOT, name="mend-glare-view")
    step()
    view = np.clip(view.astype(np.float32), 0.0, 1.0)
    vh, vw = view.shape[:2]
    mx = view.max(axis=2)
    mn = view.min(axis=2)
    sat = (mx - mn) / np.maximum(mx, 1e-3)
    y = luminance(view)
    big = max(8.0, max(vh, vw) / 24.0)
    # background brightness: a wide blur of a median-filtered luma (ignores small blobs)
    k = min(255, max(3, int(big) | 1))
    bg = cv2.GaussianBlur(cv2.medianBlur(to_uint8(y), k).astype(np.float32) / 255.0,
                          (0, 0), big)
    step()
    lift = y - bg
    mean = cv2.blur(y, (9, 9))
    texture = np.sqrt(np.maximum(cv2.blur(y * y, (9, 9)) - mean * mean, 0.0))
    sens = float(np.clip(sensitivity, 0.25, 4.0))
    spec = (mx >= 1.0 - 0.07 * sens) & (sat <= 0.25 + 0.05 * sens) & (lift >= 0.10 / sens)
    veil = ((y >= 0.7 / sens ** 0.25) & (sat <= 0.12 * sens) & (lift >= 0.2 / sens)
            & (texture <= 0.03 * sens))
    raw = ((spec | veil) * 255).astype(np.uint8)
    min_area = max(6, int(0.00004 * vh * vw))
    step()
    m = _clean_mask(raw, min_area)
    step()
    if m.any():
        m = _reflection_like(m, view, y, sens)
        step()
    if m.any():
        m = cv2.dilate(m, _ellipse(2))
        m = _cap_area(m, lift, max_area)
        step()
    if s < 1.0:
        # (one whole-photo resize and threshold that nothing can stop part-way - 0.05-0.16 s
        # at 120 MP, 0.24-0.43 s on a busy 2-core machine - is abandoned on a cancel)
        m = call_cancellable(functools.partial(_full_size_glare, m, (w, h)), check,
                             slot=_REDUCE_SLOT, name="mend-glare-mask")
        step()
    return m


def _full_size_glare(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The glare detector's ``mask`` (uint8, at its view's size) at ``size`` (w, h): bilinear,
    thresholded at 127 to 0 / 255."""
    import cv2

    m = cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR)
    # (in place: (m > 127) * 255 made an int64 copy, 8 bytes a pixel of the whole photo)
    cv2.threshold(m, 127, 255, cv2.THRESH_BINARY, dst=m)
    return m


# a region's boundary sharpness: mean luma gradient (per px) on its boundary over its contrast
# with a ring around it, i.e. about 1 / the width in px of the transition. On the shared photos
# the detector's regions in real reflection photos (windowseat, CEILNet, perceptual,
# fast-reflection-removal) had a median of ~0.16, those in clean photos, camera JPEGs and faces
# (white clothes, lamps, sky patches) ~0.28. At 0.16 the mean mask share fell from 3.55 % to
# 2.47 % on 68 clean/camera/face photos and from 2.87 % to 2.24 % on 17 reflection photos: a
# weak preference only (no ground-truth masks exist to tune against).
MAX_EDGE_SHARPNESS = 0.16
# a region mostly burnt out (max channel >= 0.98) with a crisp edge is a light source
LIGHT_SATURATED = 0.3
LIGHT_EDGE = 0.18


def _reflection_like(mask: np.ndarray, view: np.ndarray, y: np.ndarray, sens: float
                     ) -> np.ndarray:
    """Keep the regions of ``mask`` with a soft boundary (veiling glare, reflections on glass);
    drop crisp-edged bright regions and burnt-out compact blobs (lamps, sun, white objects)."""
    import cv2

    ys = cv2.GaussianBlur(y, (0, 0), 1.0)
    grad = np.hypot(cv2.Sobel(ys, cv2.CV_32F, 1, 0), cv2.Sobel(ys, cv2.CV_32F, 0, 1)) / 8.0
    burnt = view.max(axis=2) >= 0.98
    n, lab, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), 8)
    keep = np.zeros(n, bool)
    edge_max = MAX_EDGE_SHARPNESS * sens
    for i in range(1, n):
        x, y0, w, h, _ = stats[i]
        pad = 8
        xa, ya = max(0, x - pad), max(0, y0 - pad)
        xb, yb = min(mask.shape[1], x + w + pad), min(mask.shape[0], y0 + h + pad)
        c = (lab[ya:yb, xa:xb] == i).astype(np.uint8)
        ring = (cv2.dilate(c, np.ones((11, 11), np.uint8)) > 0) & (c == 0)
        boundary = (c > 0) & (cv2.erode(c, np.ones((5, 5), np.uint8)) == 0)
        yc = y[ya:yb, xa:xb]
        if not ring.any() or not boundary.any():
            keep[i] = True
            continue
        contrast = float(yc[c > 0].mean() - yc[ring].mean())
        edge = float(grad[ya:yb, xa:xb][boundary].mean()) / max(contrast, 0.02)
        sat = float(burnt[ya:yb, xa:xb][c > 0].mean())
        light = sat >= LIGHT_SATURATED and edge >= LIGHT_EDGE * sens
        keep[i] = edge < edge_max and not light
    return (keep[lab] * 255).astype(np.uint8)


def _cap_area(mask: np.ndarray, strength: np.ndarray, max_area: float) -> np.ndarray:
    import cv2

    total = mask.size
    if (mask > 0).sum() <= max_area * total:
        return mask
    n, lab, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), 8)
    score = np.array([strength[lab == i].mean() if i else -1 for i in range(n)])
    keep = np.zeros(n, bool)
    used = 0
    for i in np.argsort(-score):
        if i == 0:
            continue
        a = stats[i, cv2.CC_STAT_AREA]
        if used + a > max_area * total:
            continue
        keep[i] = True
        used += a
    return (keep[lab] * 255).astype(np.uint8)


def mask_boxes(mask: np.ndarray, pad: int = 4) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x0, y0, x1, y1) of the mask's connected regions, padded."""
    return mask_regions(mask, context=0.0, min_context=pad, merge=False)


# ------------------------------------------------------------------------------ SAM

def load_sam(runtime: Any, model_id: str = SAM_ID) -> tuple[Any, Any]:
    """(SamModel, SamProcessor) from the store's folder of ``model_id`` (one of
    ``SAM_MODELS``), cached (per device and dtype: the precision setting can change while the
    app runs)."""
    import torch

    folder = runtime.path(model_id)
    dtype = runtime.dtype_for(model_id) if hasattr(runtime, "dtype_for") else torch.float32

    def build():
        from transformers import SamModel, SamProcessor

        from ..models.loader import checkpoint_errors, refuse_remote_code

        refuse_remote_code()
        with checkpoint_errors(f"{model_id} ({folder})"):
            model = SamModel.from_pretrained(str(folder), local_files_only=True,
                                             trust_remote_code=False)
        model = model.to(device=runtime.device.torch_device, dtype=dtype).eval()
        with checkpoint_errors(f"{model_id} ({folder})"):
            proc = SamProcessor.from_pretrained(str(folder), local_files_only=True,
                                                trust_remote_code=False)
        return model, proc

    estimate = runtime.estimate_bytes(model_id) if hasattr(runtime, "estimate_bytes") else None
    return runtime.cached(("sam", model_id, runtime.device.torch_device, str(dtype)), build,
                          None, estimate=estimate, model_id=model_id)


def _sam_run(image: np.ndarray, runtime: Any, *, boxes=None, points=None, labels=None,
             multimask: bool = False, max_side: int = 2048, check: Check | None = None,
             model_id: str = SAM_ID) -> tuple[np.ndarray, np.ndarray]:
    """Masks (N, K, h, w) bool and IoU scores (N, K) for N prompts, the masks at the size SAM
    looked at the image (at most ``max_side`` px: :func:`_full_size` brings one to the image's).
    ``check`` (a progress's ``check``): the model's loading (``runtime.cancellable``: the mask
    editor's click-to-select runs outside a step), the reduction of a larger image (0.4 s at
    120 MP) and the forward pass are abandoned on a cancel. The forward pass is one model call:
    sam-vit-base (random weights at its real size, a 12 MP photo) took 18-23 s on one thread
    of the 2-core AMD EPYC, 2.0-4.1 s of it between two layers (in each of its four
    global-attention blocks), and no cancel could stop it. It runs in a worker thread that a
    cancel abandons at once (:func:`~engine.restore.registry.call_cancellable`: the job
    returned 0.002-0.01 s after the cancel) and that stops before its next layer
    (:func:`~engine.tiling.checking`: it ended 0.02-2.8 s after the cancel). ``model_id``:
    the SAM checkpoint (``SAM_MODELS``)."""
    import contextlib

    import cv2
    import torch
    from PIL import Image

    from ..tiling import checking

    cancellable = getattr(runtime, "cancellable", None)
    with cancellable(check) if callable(cancellable) else contextlib.nullcontext():
        model, proc = load_sam(runtime, model_id)
    h, w = image.shape[:2]
    s = min(1.0, max_side / max(h, w))
    view = image if s >= 1.0 else call_cancellable(
        lambda: cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA),
        check, slot=_REDUCE_SLOT, name="mend-sam-view")
    kw: dict[str, Any] = {}
    if boxes is not None:
        kw["input_boxes"] = [[[float(v) * s for v in b] for b in boxes]]
    if points is not None:
        kw["input_points"] = [[[[float(x) * s, float(y) * s] for x, y in points]]]
        kw["input_labels"] = [[[int(v) for v in (labels if labels is not None
                                                 else [1] * len(points))]]]
    inputs = proc(images=Image.fromarray(to_uint8(view)), return_tensors="pt", **kw)
    param = next(model.parameters())
    inputs = {k: (v.to(param.device, dtype=param.dtype) if k == "pixel_values" else
                  v.to(param.device)) for k, v in inputs.items()}

    def run() -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), checking(model, check):  # (in this thread: the worker's)
            out = model(**inputs, multimask_output=multimask)
        masks = proc.image_processor.post_process_masks(
            out.pred_masks.float().cpu(), inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu())[0].numpy()
        return masks, out.iou_scores[0].float().cpu().numpy()

    masks, scores = call_cancellable(run, check, slot=_SAM_SLOT, name="mend-sam")
    return masks.astype(bool, copy=False), scores


def _full_size(mask: np.ndarray, shape: tuple[int, int], check: Check | None) -> np.ndarray:
    """One of SAM's masks (bool, as :func:`_sam_run` gives it) at the image's ``shape`` (h, w),
    nearest neighbour. At 120 MP one took 0.08-0.5 s: abandoned on a cancel."""
    import cv2

    if mask.shape == tuple(shape):
        return mask
    h, w = shape
    return call_cancellable(
        lambda: cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0,
        check, slot=_REDUCE_SLOT, name="mend-sam-mask")


def sam_mask_from_boxes(image: np.ndarray, boxes: list[tuple[float, float, float, float]],
                        runtime: Any, check: Check | None = None,
                        model_id: str = SAM_ID) -> np.ndarray:
    """Union of SAM's masks for ``boxes`` (x0, y0, x1, y1), each clipped to its box.
    uint8 (H, W), 255 = selected. ``check`` (a progress's ``check``) is called between the
    boxes, and the whole-photo resizes are abandoned on a cancel (:func:`_sam_run`,
    :func:`_full_size`). ``model_id``: the SAM checkpoint (``SAM_MODELS``)."""
    h, w = image.shape[:2]
    out = np.zeros((h, w), np.uint8)
    if not boxes:
        return out
    masks, _ = _sam_run(image, runtime, boxes=boxes, check=check, model_id=model_id)
    for (x0, y0, x1, y1), mk in zip(boxes, masks):
        if check is not None:
            check()
        # (only the box is written: a box-sized mask of the whole photo and a whole-photo AND
        # with it per box did the same)
        box = (slice(max(0, int(y0)), math.ceil(y1)), slice(max(0, int(x0)), math.ceil(x1)))
        out[box][_full_size(mk[0], (h, w), check)[box]] = 255
    return out


def sam_mask_from_points(image: np.ndarray, points: list[tuple[float, float]],
                         labels: list[int] | None, runtime: Any,
                         check: Check | None = None, model_id: str = SAM_ID) -> np.ndarray:
    """Click-to-select for the mask editor: ``points`` (x, y) in image pixels, ``labels`` 1 =
    include / 0 = exclude. Returns SAM's best mask (highest predicted IoU) as uint8, 255 = in.
    ``check``, ``model_id``: as for :func:`sam_mask_from_boxes`."""
    if not points:
        return np.zeros(image.shape[:2], np.uint8)
    masks, scores = _sam_run(image, runtime, points=points, labels=labels,
                             multimask=len(points) == 1, check=check, model_id=model_id)
    best = int(np.argmax(scores[0]))
    # (only the best mask at full size; uint8 throughout: bool * 255 was an int64 copy)
    return np.where(_full_size(masks[0, best], image.shape[:2], check), np.uint8(255),
                    np.uint8(0))


# ------------------------------------------------------------------------------ YOLO

def _yolo_is_onnx(runtime: Any) -> bool:
    """Whether the slot holds an ONNX export (the only kind Mend loads: see yolo_detect)."""
    path = runtime.store.slot_path(YOLO_ID)
    return path is not None and path.suffix.lower() == ".onnx"


def _not_onnx(name: str) -> EngineError:
    """What the YOLO detector raises when its slot holds ``name``, no ONNX export."""
    return EngineError(
        f"the reflection detector slot holds {name}; it takes an ONNX export only "
        "(yolo export model=best.pt format=onnx, then give Mend best.onnx): a .pt file is a "
        "Python pickle that can run code when loaded, and Mend never loads one")


def _no_ultralytics(broken: str | None = None) -> EngineError:
    """What the YOLO detector raises without the ``ultralytics`` package, or with one that is
    installed but fails to import (``broken``: its error)."""
    if broken:
        return EngineError(
            f"the YOLO reflection detector cannot run: the 'ultralytics' package is installed "
            f"but broken ({broken}); reinstall it (pip install --force-reinstall ultralytics) "
            "or choose the built-in or SAM detector instead")
    return EngineError(
        "the YOLO reflection detector needs the optional 'ultralytics' package "
        "(pip install 'mend[yolo]' or pip install ultralytics); choose the built-in or "
        "SAM detector instead")


def yolo_detect(image: np.ndarray, runtime: Any, conf: float = 0.25
                ) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """Mask and boxes from the user's YOLO(-seg) reflection weights (``reflection-yolo``).

    A detection-only model gives boxes (the mask is then the filled boxes unless SAM refines
    them). Needs the optional ``ultralytics`` package (AGPL-3.0).
    """
    import cv2

    weights = runtime.file(YOLO_ID)  # checked against the hash recorded at import
    if weights.suffix.lower() != ".onnx":
        raise _not_onnx(weights.name)
    problem = _ultralytics_problem()
    if problem is not None:
        raise _no_ultralytics(problem or None)
    from ultralytics import YOLO
    st = weights.stat()
    # a re-imported file (same name, other weights) is a new model: its mtime/size differ
    key = ("yolo", str(weights), st.st_size, st.st_mtime_ns)
    for old in getattr(runtime, "cached_keys", list)():
        if isinstance(old, tuple) and old[:2] == key[:2] and old != key:
            runtime.evict(old)  # the weights it was built from are gone
    # (an ONNX model runs through onnxruntime; the task is given, ONNX files do not carry it
    # in a form every ultralytics version reads)
    model = runtime.cached(key, lambda: YOLO(str(weights), task="segment"), 300 << 20)
    h, w = image.shape[:2]
    dev = runtime.device.torch_device
    res = model.predict(np.ascontiguousarray(to_uint8(image)[..., ::-1]), conf=conf,
                        verbose=False, device=dev if dev != "cuda:0" else 0)[0]
    mask = np.zeros((h, w), np.uint8)
    boxes: list[tuple[float, float, float, float]] = []
    if res.boxes is not None and len(res.boxes):
        boxes = [tuple(float(v) for v in b) for b in res.boxes.xyxy.cpu().numpy()]
    if getattr(res, "masks", None) is not None and res.masks is not None:
        for poly in res.masks.xy:
            if len(poly) >= 3:
                cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 255)
    else:
        for x0, y0, x1, y1 in boxes:
            mask[int(y0):math.ceil(y1), int(x0):math.ceil(x1)] = 255
    return mask, boxes


# ------------------------------------------------------------------------------ steps

DETECTORS = ("auto", "yolo", "sam", "builtin")


def _detector(params: Mapping[str, Any]) -> str:
    """The ``detector`` param as ``reflection_mask`` reads it (any case)."""
    return str(params.get("detector", "auto")).lower()


def _mask_models(params: Mapping[str, Any], mask: bool) -> tuple[str, ...]:
    """The models ``reflection_mask`` loads (``StepSpec.loads``): none with a given mask (it is
    used as it is); the YOLO slot or SAM (its ``sam_model``: an unknown one is a
    ``UsageError``) when the ``detector`` param chooses it (the step fails without it), none
    for ``auto`` and ``builtin`` (``auto`` uses them only when installed; with YOLO, SAM
    refines its boxes only when installed)."""
    sam = param_choice("reflection_mask", params, "sam_model")
    if mask:
        return ()
    return {"yolo": (YOLO_ID,), "sam": (sam,)}.get(_detector(params), ())


def _mask_requires(params: Mapping[str, Any], mask: bool, runtime: Any) -> None:
    """What ``reflection_mask`` raises when it starts the YOLO detector its ``detector`` param
    chooses explicitly (``StepSpec.requires``): the error of a slot holding no ONNX export, then
    of a missing ``ultralytics`` (:func:`yolo_detect`). Nothing with a given mask (no detector
    runs) nor for ``auto`` (it falls back to the built-in detector with a warning). An empty
    slot is a missing model (``_mask_models``), which the pipeline reports before this."""
    if mask or _detector(params) != "yolo":
        return
    if runtime is not None and runtime.is_available(YOLO_ID):
        path = runtime.store.slot_path(YOLO_ID)
        if path is not None and path.suffix.lower() != ".onnx":
            raise _not_onnx(path.name)
    problem = _ultralytics_problem()
    if problem is not None:
        raise _no_ultralytics(problem or None)


def mask_models_run(params: Mapping[str, Any], mask: bool,
                    installed: Collection[str] | None) -> tuple[str, ...]:
    """The models ``reflection_mask`` with ``params`` (its defaults merged in) runs, as it
    decides when it starts, for what the estimate counts (``engine.estimate``): none with a
    given mask (``mask``) nor for the ``builtin`` detector; the YOLO slot for ``yolo``, and for
    ``auto`` when installed; SAM (its ``sam_model``) for ``sam``, and for ``auto`` and ``yolo``
    when installed (it refines the boxes of either detector). ``installed``: the ids of the
    models installed here; None (not known): the optional ones count as installed. SAM runs
    only on boxes: on a photo where the detector finds none it is not run after all (so is
    YOLO's, when ``auto`` finds ultralytics missing or the slot holding no ONNX export). An
    unknown ``sam_model`` is named as it is (the step refuses it when it starts)."""
    if mask:
        return ()
    detector = _detector(params)
    sam = str(params.get("sam_model") or SAM_ID)

    def have(model_id: str) -> bool:
        return installed is None or model_id in installed

    yolo = detector == "yolo" or (detector == "auto" and have(YOLO_ID))
    refine = detector == "sam" or (detector in ("auto", "yolo") and have(sam))
    return ((YOLO_ID,) if yolo else ()) + ((sam,) if refine else ())


@register_step(
    "reflection_mask",
    models=(YOLO_ID, SAM_ID),
    description="Find strong reflections / glare and build the editable removal mask "
                "(sam_model: the SAM that refines it, sam-vit-base or the lighter slimsam-50).",
    defaults={"detector": "auto", "sam_model": SAM_ID, "sensitivity": 1.0, "max_area": 0.35},
    loads=_mask_models,
    requires=_mask_requires,
    choices={"sam_model": SAM_MODELS},
)
def reflection_mask(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    given = image
    sam_id = param_choice("reflection_mask", params, "sam_model")
    if ctx.mask is not None:
        ctx.mask = _fit_mask(ctx.mask, image.shape[:2])
        ctx.artifacts["mask"] = ctx.mask
        ctx.artifacts[MASK_SOURCE] = "user"
        ctx.progress.update(1.0, "using your mask")
        share = float((ctx.mask > 127).mean())
        return StepOutput(image, "user:mask", f"mask given by the user ({share:.1%} of the photo)")
    detector = _detector(params)
    if detector not in DETECTORS:
        raise EngineError(f"unknown reflection detector {detector!r} (auto, yolo, sam, builtin)")
    rt = ctx.runtime
    have_yolo = rt is not None and rt.is_available(YOLO_ID)
    have_sam = rt is not None and rt.is_available(sam_id)
    if detector == "auto":  # YOLO (+SAM) when configured, else built-in (+SAM when installed)
        if have_yolo and _ultralytics_installed() and _yolo_is_onnx(rt):
            detector = "yolo"
        else:
            detector = "sam" if have_sam else "builtin"
            if have_yolo:  # your weights are there but cannot be used: say so, once per job
                problem = _ultralytics_problem() if _yolo_is_onnx(rt) else None
                why = ("it is not an ONNX export (yolo export model=best.pt format=onnx, then "
                       "give Mend best.onnx)" if not _yolo_is_onnx(rt) else
                       f"the installed ultralytics is broken ({problem})" if problem else
                       "ultralytics is not installed (pip install 'mend[yolo]')")
                ctx.warnings.append(f"your reflection detector ({YOLO_ID}) was not used: {why}; "
                                    f"the {'SAM-refined ' if have_sam else ''}built-in glare "
                                    "detector found the reflections instead")
    notes = []
    ctx.progress.update(0.0, f"finding reflections ({detector})")
    # a preview's detector looks at the whole photo, as in the whole fix (the glare detector's
    # view, background and area cap follow the whole frame), and the mask is cut to the part
    part_shape = image.shape[:2]
    if ctx.whole is not None:
        image = ctx.whole.view(image, ctx.progress.check)
    if detector == "yolo":
        mask, boxes = yolo_detect(image, rt)
        model = YOLO_ID
        notes.append(f"{len(boxes)} region(s) from YOLO")
        if have_sam and boxes:
            ctx.progress.update(0.5, "refining with SAM")
            refined = _timed_sam(ctx, sam_id, lambda: sam_mask_from_boxes(
                image, boxes, rt, check=ctx.progress.check, model_id=sam_id))
            if refined.any():
                mask = refined
                model = f"{YOLO_ID}+{sam_id}"
                notes.append("refined by SAM")
    else:
        mask = detect_glare(image, sensitivity=float(params.get("sensitivity", 1.0)),
                            max_area=float(params.get("max_area", 0.35)),
                            check=ctx.progress.check)
        model = "builtin:glare"
        if detector == "sam":
            boxes = mask_boxes(mask)
            if boxes:
                notes.append(f"{len(boxes)} glare region(s) refined by SAM")
                ctx.progress.update(0.5, "refining with SAM")
                mask = _timed_sam(ctx, sam_id, lambda: sam_mask_from_boxes(
                    image, boxes, rt, check=ctx.progress.check, model_id=sam_id))
                model = f"builtin:glare+{sam_id}"
            else:  # (SAM is given boxes only: not run, not named among the job's models)
                notes.append("no glare region for SAM to refine")
    share = float((mask > 127).mean())  # (of the whole photo, in a preview too)
    if ctx.whole is not None:
        mask = ctx.whole.to_part(mask, part_shape)
        notes.append("found on the whole photo, cut to the previewed part")
    ctx.mask = mask
    ctx.artifacts["mask"] = mask
    ctx.artifacts[MASK_SOURCE] = model
    ctx.artifacts[MASK_SHARE] = share
    ctx.progress.update(1.0, f"mask covers {share:.1%}")
    notes.append(f"mask covers {share:.1%} of the photo")
    return StepOutput(given, model, "; ".join(notes))  # (its input, handed on: the part)


def _timed_sam(ctx: StepContext, sam_id: str, run: Callable[[], np.ndarray]) -> np.ndarray:
    """``run()`` (SAM refining the boxes), its seconds put in ``ctx.artifacts`` for the
    engine's step-cost history (``estimate.PART_SECONDS``): SAM's pass costs per photo (its
    encoder sees the photo at 1024 px), the glare detector's little, and the history keeps
    them apart (``estimate.SAM_PASS``)."""
    from ..estimate import PART_SECONDS, SAM_PASS

    t0 = time.perf_counter()
    out = run()
    ctx.artifacts.setdefault(PART_SECONDS, []).append(
        (SAM_PASS, sam_id, 1.0, time.perf_counter() - t0))
    return out


def _ultralytics_installed() -> bool:
    """Whether the ``ultralytics`` package is there and imports what the YOLO detector uses."""
    return _ultralytics_problem() is None


def _ultralytics_problem() -> str | None:
    """None when ``from ultralytics import YOLO`` works; "" when the package is not installed;
    else the error of an install that is there but broken (a dependency missing or of the
    wrong version, a damaged file): finding the package is not enough, it is imported (once
    it works, Python keeps it: later calls cost nothing)."""
    try:
        from ultralytics import YOLO  # noqa: F401
    except Exception as e:  # noqa: BLE001 - whatever a broken install raises
        if isinstance(e, ModuleNotFoundError) and e.name == "ultralytics":
            return ""  # (not its dependency: the package itself)
        return f"{type(e).__name__}: {e}".strip()[:300]
    return None


def inpaint_regions(image: np.ndarray, mask: np.ndarray, fn: InpaintFn, *,
                    context: float = 1.0, max_side: int = 1024, pad_multiple: int = 8,
                    progress: Any = None, device: Any = None) -> np.ndarray:
    """Inpaint each masked region on a crop with context and paste it back in the mask only.

    ``fn(crop, crop_mask)`` gets float RGB (h, w, 3) and a float (h, w) mask of 0/1, with h
    and w multiples of ``pad_multiple``, and returns the filled (h, w, 3) crop. Crops larger
    than ``max_side`` are processed at that size and scaled back. Only pixels with
    :func:`paste_alpha` > 0 change. When ``fn`` runs out of memory (``device``'s cache is
    emptied) the region is tried again at half the size, down to ``MIN_INPAINT_SIDE`` px;
    below that it raises :class:`~engine.errors.OutOfMemory`.
    """
    def check() -> None:
        if progress is not None:
            progress.check()

    mask = _fit_mask(mask, image.shape[:2])
    out = _copy(image, check)
    hole = dilate_mask(mask, PASTE_DILATE)  # the model also refills the halo band
    check()
    rects = mask_regions(hole, context=context)
    for i, (x0, y0, x1, y1) in enumerate(rects):
        if progress is not None:
            progress.update(i / max(1, len(rects)), f"region {i + 1}/{len(rects)}")
        crop = _copy(image[y0:y1, x0:x1], check)
        cm = (hole[y0:y1, x0:x1] > 0).astype(np.float32)
        filled = _fill_region(crop, cm, fn, max_side, pad_multiple, device)
        del crop, cm
        check()
        a = paste_alpha(mask[y0:y1, x0:x1], check=check)
        # only the pixels that change are blended, in bands (the same numbers as blending the
        # whole crop, whose crop-sized float temporaries took 0.75 s that a cancel could not
        # stop on a 12 MP photo's one big region)
        region = out[y0:y1, x0:x1]
        rows = max(1, (1 << 20) // max(1, x1 - x0))
        for y in range(0, y1 - y0, rows):
            check()
            ab = a[y:y + rows]
            sel = ab > 0
            if not sel.any():
                continue
            rb, av = region[y:y + rows], ab[sel][:, None]
            rb[sel] = rb[sel] * (1.0 - av) + np.clip(filled[y:y + rows][sel], 0, 1) * av
        del filled, a
    if progress is not None:
        progress.update(1.0, f"{len(rects)} region(s) filled")
    return out


def _copy(image: np.ndarray, check: Check) -> np.ndarray:
    """``image.astype(np.float32)`` (a new array), in bands with ``check`` between them (a
    12 MP copy took up to 0.45 s on a busy machine)."""
    out = np.empty(image.shape, np.float32)
    rows = max(1, (1 << 21) // max(1, image[0].size))
    for y in range(0, image.shape[0], rows):
        check()
        out[y:y + rows] = image[y:y + rows]
    return out


def _fill_region(crop: np.ndarray, cm: np.ndarray, fn: InpaintFn, max_side: int,
                 pad_multiple: int, device: Any) -> np.ndarray:
    """``fn`` on one region's crop at most ``max_side`` px, back at the crop's size; halving
    that size on out-of-memory (a 1024-px LaMa region needs a few GB on a GPU)."""
    from ..errors import OutOfMemory
    from ..tiling import free_memory, is_out_of_memory

    side = int(max_side)
    while True:
        try:
            return _fill_once(crop, cm, fn, side, pad_multiple)
        except Exception as exc:  # only out-of-memory is handled here
            if not is_out_of_memory(exc):
                raise
        # (out of the handler: the failed call's tensors went with its frames)
        free_memory(device)
        side = min(side, max(crop.shape[:2])) // 2
        if side < MIN_INPAINT_SIDE:
            raise OutOfMemory("not enough memory to inpaint this reflection, even at a small "
                              "size; close other programs or use the CPU device")
        log.warning("out of memory: inpainting the region at %d px", side)


def _fill_once(crop: np.ndarray, cm: np.ndarray, fn: InpaintFn, max_side: int,
               pad_multiple: int) -> np.ndarray:
    import cv2

    ch, cw = crop.shape[:2]
    s = min(1.0, max_side / max(ch, cw))
    if s < 1.0:
        size = (max(8, round(cw * s)), max(8, round(ch * s)))
        work = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        wm = (cv2.resize(cm, size, interpolation=cv2.INTER_LINEAR) > 0).astype(np.float32)
    else:
        work, wm = crop, cm
    wh, ww = work.shape[:2]
    ph, pw = (-wh) % pad_multiple, (-ww) % pad_multiple
    if ph or pw:
        work = np.pad(work, ((0, ph), (0, pw), (0, 0)), mode="reflect" if
                      (ph < wh and pw < ww) else "edge")
        wm = np.pad(wm, ((0, ph), (0, pw)), mode="constant")
    filled = np.asarray(fn(np.ascontiguousarray(work), np.ascontiguousarray(wm)),
                        dtype=np.float32)[:wh, :ww]
    if not np.isfinite(filled).all():
        raise EngineError("the inpainting model returned an invalid image")
    if s < 1.0:
        filled = cv2.resize(filled, (cw, ch), interpolation=cv2.INTER_CUBIC)
    return filled


def lama_fn(descriptor: Any, check: Callable[[], None] | None = None) -> InpaintFn:
    """LaMa as an inpainting function; ``check`` runs inside its forward pass (one 1024-px
    region takes ~20 s on a CPU core), before each layer. One layer took up to 1.7 s on a
    busy machine, so the forward pass runs in a worker thread that a cancel abandons at once
    (:func:`~engine.restore.registry.call_cancellable`); it stops at its next layer."""
    import torch

    from ..tiling import checking

    param = next(descriptor.model.parameters())

    def fn(crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
        def run() -> np.ndarray:
            x = torch.from_numpy(crop.transpose(2, 0, 1))[None].to(param.device, param.dtype)
            m = torch.from_numpy(mask)[None, None].to(param.device, param.dtype)
            with torch.inference_mode(), checking(descriptor, check):  # (in this thread)
                y = descriptor(x, m)
            return y[0].float().permute(1, 2, 0).cpu().numpy()

        return call_cancellable(run, check, slot=_LAMA_SLOT, name="mend-lama")

    return fn


def telea_inpaint(u8: np.ndarray, mask: np.ndarray, radius: float, check: Check | None = None,
                  tile: int = TELEA_TILE) -> np.ndarray:
    """``cv2.inpaint(u8, mask, radius, cv2.INPAINT_TELEA)`` (``mask`` uint8, > 0 = fill), in
    tiles of ``tile`` px with ``check`` between them, each call cancellable on its own
    (:func:`~engine.restore.registry.call_cancellable`).

    Telea fills a pixel from the known and already filled pixels within ``radius`` of it, in the
    order of its distance from the mask's edge, so a pixel depends on the pixels between it and
    that edge. Each tile is inpainted with a margin of the deepest distance from the edge in it,
    plus twice the radius and 4 px; only its own pixels are kept. On the real glare masks (the
    reflection photos of ../shared/images, and two at 12 MP with 15-20 % masks) the result is
    that of one call on 99.4-100 % of the filled pixels, the rest within 3 levels of 255 (a
    pixel's fill also weighs, by ~1e-6, pixels along its own distance front).
    """
    import cv2

    h, w = mask.shape[:2]
    if max(h, w) <= tile:
        return call_cancellable(lambda: cv2.inpaint(u8, mask, float(radius), cv2.INPAINT_TELEA),
                                check, slot=_TELEA_SLOT, name="mend-telea")
    hole = (mask > 0).astype(np.uint8)
    if check is not None:
        check()
    depth = cv2.distanceTransform(hole, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    rng = min(100, max(1, round(float(radius))))  # cv2.inpaint's own range
    if check is not None:
        check()
    out = u8.copy()
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            if check is not None:
                check()
            y1, x1 = min(h, y + tile), min(w, x + tile)
            if not hole[y:y1, x:x1].any():
                continue
            m = math.ceil(float(depth[y:y1, x:x1].max())) + 2 * rng + 4
            ya, xa, yb, xb = max(0, y - m), max(0, x - m), min(h, y1 + m), min(w, x1 + m)
            part, pm = u8[ya:yb, xa:xb], mask[ya:yb, xa:xb]
            res = call_cancellable(
                lambda part=part, pm=pm: cv2.inpaint(part, pm, float(radius),
                                                     cv2.INPAINT_TELEA),
                check, slot=_TELEA_SLOT, name="mend-telea")
            out[y:y1, x:x1] = res[y - ya:y1 - ya, x - xa:x1 - xa]
    return out


def telea_fn(radius: float = 5.0, check: Check | None = None) -> InpaintFn:
    """OpenCV's Telea inpainting as an inpainting function; ``check`` (a progress's ``check``)
    is honoured between and during its tiles (:func:`telea_inpaint`)."""

    def fn(crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
        u8 = to_uint8(crop, check)
        if check is not None:
            check()
        m8 = (mask > 0).astype(np.uint8) * 255
        res = telea_inpaint(u8, m8, radius, check)
        del m8
        del u8
        out = np.empty(res.shape, np.float32)
        rows = max(1, (1 << 20) // max(1, res[0].size))
        for y in range(0, res.shape[0], rows):  # (as res.astype(float32) / 255, in bands)
            if check is not None:
                check()
            out[y:y + rows] = res[y:y + rows].astype(np.float32) / 255.0
        return out

    return fn


def _mask_or_skip(image: np.ndarray, ctx: StepContext) -> np.ndarray | None:
    if ctx.mask is None:
        return None
    m = _fit_mask(ctx.mask, image.shape[:2])
    return m if (m > 127).any() else None


@register_step(
    "inpaint_lama",
    models=(LAMA_ID,),
    description="LaMa inpainting of the masked reflections, region by region; a mask the "
                "built-in glare detector found alone is filled only with fill_detected.",
    defaults={"context": 1.0, "max_side": 1024, "fill_detected": False},
)
def inpaint_lama(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    """LaMa on each masked region. A mask the built-in glare detector found alone (SAM's
    refinement of its proposals too) is not filled, as with the built-in fill
    (:func:`inpaint_builtin`): LaMa's fill is plausible, but what the detector took for glare
    (a white wall, an overcast sky, white petals) is still repainted, and the regression guard
    does not judge masked pixels. A checked mask (the mask editor, ``--mask``) or a trained
    detector's (the ``reflection-yolo`` slot) is filled."""
    mask = _mask_or_skip(image, ctx)
    if mask is None:
        ctx.progress.update(1.0, "nothing to inpaint")
        return StepOutput(image, LAMA_ID, "skipped: the mask is empty")
    held = _hold_unchecked(mask, params, ctx, "LaMa filled nothing")
    if held is not None:
        return StepOutput(image, LAMA_ID, held)
    ctx.progress.update(0.0, "loading LaMa")
    desc = ctx.runtime.load_image_model(LAMA_ID)
    out = inpaint_regions(image, mask, lama_fn(desc, ctx.progress.check),
                          context=float(params.get("context", 1.0)),
                          max_side=int(params.get("max_side", 1024)), progress=ctx.progress,
                          device=ctx.device)
    return StepOutput(out, LAMA_ID, f"{len(mask_regions(dilate_mask(mask, PASTE_DILATE)))} "
                                    "region(s) inpainted")


# where ``reflection_mask`` says its mask came from: "user" (the request's mask: drawn or
# checked in the mask editor, or --mask) or the detector that found it ("builtin:glare", ...)
MASK_SOURCE = "mask_source"
# ... and the share of the photo its detector marked (of the whole photo in a preview too)
MASK_SHARE = "mask_share"


def _builtin_glare_mask(ctx: StepContext) -> bool:
    """Whether the mask is the built-in glare detector's, which no one has checked."""
    return str(ctx.artifacts.get(MASK_SOURCE, "")).startswith("builtin:glare")


def _hold_unchecked(mask: np.ndarray, params: Mapping[str, Any], ctx: StepContext,
                    what: str) -> str | None:
    """When ``mask`` is the built-in glare detector's and the step's ``fill_detected`` is off:
    the job's warning that says so (``what``: what the step did not do) and how to fill it,
    and the step's notes; else None (fill it)."""
    if not _builtin_glare_mask(ctx) or bool(params.get("fill_detected", False)):
        return None
    # (the detector's share of the whole photo: a preview's mask is the part's)
    share = float(ctx.artifacts.get(MASK_SHARE, (mask > 127).mean()))
    ctx.progress.update(1.0, "not filled: check the mask first")
    ctx.warnings.append(
        f"reflections: the built-in detector marked {share:.1%} of the photo, but it cannot "
        f"tell glare from sky or white things, so {what}; check the mask (Edit mask in the "
        "viewer, or mend restore --mask FILE) and fix again to fill it")
    return f"skipped: a detected mask ({share:.1%}) no one has checked is not filled"


@register_step(
    "inpaint_builtin",
    description="OpenCV Telea inpainting of the masked reflections (no download); a mask the "
                "built-in glare detector found alone is filled only with fill_detected.",
    defaults={"radius": 5.0, "context": 0.5, "fill_detected": False},
)
def inpaint_builtin(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    """Fill the masked reflections with OpenCV's Telea inpainting.

    The built-in glare detector cannot tell glare from white or bright things: its mask
    covered 2.5 % of clean and camera photos on average and 2.2 % of real reflection photos
    (see ``MAX_EDGE_SHARPNESS``), and Telea smears the surroundings over whatever it fills (a
    tree over an overcast sky, green over white flower centres, brown over a white wall: a
    session-15 audit of the shared camera photos, 8 of 25 of which the analyzer calls B). The
    regression guard does not judge masked pixels, which are meant to change. So a mask that
    detector found alone is not filled (``fill_detected`` True fills it): the step says how
    much it found, and the photographer checks it in the mask editor (or gives ``--mask``) and
    fixes again, which fills it. LaMa holds such a mask back too (:func:`inpaint_lama`)."""
    mask = _mask_or_skip(image, ctx)
    if mask is None:
        ctx.progress.update(1.0, "nothing to inpaint")
        return StepOutput(image, "builtin:telea", "skipped: the mask is empty")
    held = _hold_unchecked(mask, params, ctx, "nothing was filled")
    if held is not None:
        return StepOutput(image, "builtin:telea", held)
    out = inpaint_regions(image, mask, telea_fn(float(params.get("radius", 5.0)),
                                                ctx.progress.check),
                          context=float(params.get("context", 0.5)), max_side=4096,
                          pad_multiple=1, progress=ctx.progress)
    return StepOutput(out, "builtin:telea", "masked regions filled")


def _dereflect_strength(params: Mapping[str, Any]) -> float:
    """``dereflect_nafnet``'s ``strength``, clipped to 0..1 (as the step blends)."""
    return float(np.clip(params.get("strength", 1.0), 0.0, 1.0))


def _dereflect_models(params: Mapping[str, Any], mask: bool) -> tuple[str, ...]:
    """The NAFNet of its ``model`` param (an unknown one is a ``UsageError``), unless the
    strength turns the step off (``registry.turned_off``): it then hands its input on
    untouched and loads nothing (``StepSpec.loads``)."""
    model_id = param_choice("dereflect_nafnet", params)
    return () if turned_off(params) else (model_id,)


@register_step(
    "dereflect_nafnet",
    models=(NAFNET_SIDD,),
    description="NAFNet refinement for weak reflections (public SIDD weights, width 64 or the "
                "lighter 32: see notes).",
    defaults={"model": NAFNET_SIDD, "strength": 1.0, "tile": None},
    loads=_dereflect_models,
    choices={"model": DEREFLECT_MODELS},
)
def dereflect_nafnet(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext
                     ) -> StepOutput:
    """Weak-reflection refinement with NAFNet, tiled.

    Plainly: the paper's NAFNet weights for weak reflections are unpublished. The public
    substitute is ``nafnet-sidd-w64``, NAFNet width 64 trained on SIDD real camera-noise
    denoising (MIT), or with ``model`` ``nafnet-sidd-w32`` the same training at width 32
    (lighter). It suppresses faint, low-contrast residue such as noise and smooth
    ghosting left after inpainting; it was never trained to separate a reflection layer and
    will not remove a visible reflection. ``strength`` (0..1) blends it with its input; at 0
    the step changes nothing and loads nothing (nor does the job need NAFNet installed).
    """
    from ..tiling import run_tiled, torch_fn

    model_id = param_choice("dereflect_nafnet", params)
    tile = step_tile(params, ctx, "dereflect_nafnet")
    strength = _dereflect_strength(params)
    if strength <= 0:
        ctx.progress.update(1.0, "off")
        # (no model: the result's models do not name NAFNet, which may not be installed)
        return StepOutput(image, "builtin:off", "skipped: strength 0 (NAFNet not loaded)")
    ctx.progress.update(0.0, f"loading NAFNet ({model_id})")
    desc = ctx.runtime.load_image_model(model_id)
    dtype = next(desc.model.parameters()).dtype
    out = run_tiled(image, torch_fn(desc, ctx.device, dtype, check=ctx.progress.check),
                    tile=tile, overlap=32,
                    pad_multiple=16, balance=True, progress=ctx.progress, device=ctx.device)
    if strength < 1.0:
        out = image + strength * (out - image)
    return StepOutput(out, model_id,
                      f"SIDD denoising weights as the weak-reflection stand-in, strength "
                      f"{strength:g}")
