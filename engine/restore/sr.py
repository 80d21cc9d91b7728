"""Class A: Real-ESRGAN super-resolution (spandrel) and the built-in resampling upscaler.

``sr_realesrgan`` runs Real-ESRGAN x4plus (RRDB) or general-x4v3 (SRVGGNetCompact) tile by tile
and brings each tile to the requested output scale inside the tile function, so a photo is
never held at x4 when the user wants x1 ("restore at the same size": x4, then area-downscale)
or x2.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from ..errors import UsageError
from ..tiling import model_tiling_hints, run_tiled, torch_fn
from .registry import StepContext, StepOutput, param_choice, register_step

REALESRGAN_MODELS = ("realesr-general-x4v3", "realesrgan-x4plus", "realesrgan-x2plus",
                     "realesrgan-x4plus-anime-6b")
SCALES = (1, 2, 4)
OVERLAP = 16  # input px shared by neighbouring tiles (8 px of context each side of a cut)


def _check_scale(value: Any) -> int:
    try:
        scale = int(value)
    except (TypeError, ValueError):
        scale = -1
    if scale not in SCALES:
        raise UsageError(f"scale must be 1, 2 or 4 (got {value!r})")
    return scale


def resize_to(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area averaging when shrinking, bicubic when enlarging; float32, channels kept."""
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    interp = cv2.INTER_AREA if width <= w and height <= h else cv2.INTER_CUBIC
    out = cv2.resize(img, (width, height), interpolation=interp)
    if out.ndim == 2 and img.ndim == 3:
        out = out[..., None]
    return out


def scaled_tile_fn(fn, model_scale: int, out_scale: int):
    """Wrap a x``model_scale`` tile function so it returns x``out_scale`` tiles."""
    if model_scale == out_scale:
        return fn

    def wrapped(tile: np.ndarray) -> np.ndarray:
        h, w = tile.shape[:2]
        res = fn(tile)
        return np.clip(resize_to(res, w * out_scale, h * out_scale), 0.0, 1.0)

    return wrapped


def realesrgan(image: np.ndarray, model_id: str, scale: int, ctx: StepContext,
               progress=None) -> np.ndarray:
    """Real-ESRGAN ``model_id`` on ``image`` at output ``scale``, tiled (used by text fusion)."""
    desc = ctx.runtime.load_image_model(model_id)
    model_scale, multiple = model_tiling_hints(desc)
    prog = progress or ctx.progress
    fn = scaled_tile_fn(torch_fn(desc, ctx.device, channels_last=ctx.device.kind == "cpu",
                                 check=prog.check), model_scale, scale)
    return run_tiled(image, fn, scale=scale, tile=ctx.tile_size, overlap=OVERLAP,
                     pad_multiple=multiple, progress=prog,
                     device=ctx.device, min_tile=32, balance=True)


@register_step(
    "sr_realesrgan",
    models=("realesr-general-x4v3", "realesrgan-x4plus"),
    description="Real-ESRGAN super-resolution (x1 restores at the same size, x2, x4), tiled.",
    defaults={"model": "realesr-general-x4v3", "scale": 1},
    choices={"model": REALESRGAN_MODELS},
)
def sr_realesrgan(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    model_id = param_choice("sr_realesrgan", params)
    scale = _check_scale(params.get("scale", 1))
    ctx.progress.update(0.0, f"Real-ESRGAN ({model_id})")
    out = realesrgan(image, model_id, scale, ctx)
    ctx.progress.update(1.0, "super-resolution done")
    return StepOutput(out, model_id, notes=f"x{scale}")


@register_step(
    "upscale_builtin",
    description="Built-in resampling (Lanczos or bicubic), no download; x1 leaves the photo as is.",
    defaults={"scale": 2, "method": "lanczos"},
)
def upscale_builtin(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    scale = _check_scale(params.get("scale", 2))
    method = str(params.get("method", "lanczos")).lower()
    interp = {"lanczos": cv2.INTER_LANCZOS4, "cubic": cv2.INTER_CUBIC,
              "bicubic": cv2.INTER_CUBIC}.get(method)
    if interp is None:
        raise UsageError(f"unknown resampling method {method!r} (lanczos or cubic)")
    ctx.progress.check()
    if scale == 1:
        ctx.progress.update(1.0, "nothing to upscale")
        return StepOutput(image, f"builtin:{method}", notes="x1")
    h, w = image.shape[:2]
    out = cv2.resize(image, (w * scale, h * scale), interpolation=interp)
    if out.ndim == 2:
        out = out[..., None]
    np.clip(out, 0.0, 1.0, out=out)
    ctx.progress.update(1.0, "upscaled")
    return StepOutput(out.astype(np.float32, copy=False), f"builtin:{method}", notes=f"x{scale}")
