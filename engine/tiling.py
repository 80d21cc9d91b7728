"""Tiled inference: overlapping tiles, feathered blending, any integer scale, OOM back-off.

``run_tiled(image, fn, ...)`` cuts an (H, W, C) float32 image into overlapping tiles, calls
``fn`` on each (numpy in, numpy out, ``scale`` times larger), and blends the results with a
cosine ramp across the overlaps, so a model never sees more than one tile at a time and the
whole image never goes to the device. Progress and cancel are checked on every tile (and, with
``torch_fn(..., check=)``, inside the model's forward pass too). When the
device runs out of memory the cache is emptied, the tile is halved and the run starts again;
below ``min_tile`` an :class:`~engine.errors.OutOfMemory` is raised.

``torch_fn(model, device)`` wraps an ``nn.Module`` or a spandrel descriptor (NCHW in [0, 1])
as such a tile function; ``run_model_tiled`` does both, reading scale and size requirements
from a spandrel descriptor.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import math
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .devices import DeviceInfo, empty_cache, is_oom
from .errors import EngineError, OutOfMemory
from .progress import Progress

log = logging.getLogger(__name__)

TileFn = Callable[[np.ndarray], np.ndarray]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap``.

    Tiles are spread evenly; the first starts at 0 and the last ends at ``length``.
    """
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def balanced_tile(length: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """The smallest tile size (<= ``tile``, a multiple of ``multiple`` when ``tile`` is) that
    covers ``length`` with as few tiles as ``tile`` needs and at least ``overlap``.

    ``tile_starts`` spreads full-size tiles evenly, so the last ones overlap by much more than
    asked (e.g. 200 px in tiles of 144 with 16 of overlap: 2 tiles sharing 88 px); equal tiles
    just big enough do the same work on fewer pixels (2 tiles of 108).
    """
    if length <= tile:
        return length
    n = len(tile_starts(length, tile, overlap))
    size = math.ceil((length + overlap * (n - 1)) / n)
    multiple = max(1, int(multiple))
    size = math.ceil(size / multiple) * multiple
    return min(size, tile)


def _ramp(n: int, width: float) -> np.ndarray:
    """Weights for the first ``n`` pixels from a tile's inner edge: ~0 at the edge, 1 inside.

    The outer quarter of the overlap gets (almost) no weight, so the border effects of a
    convolutional model (padding inside the tile) do not reach the result; the middle half
    is a cosine ramp. Two tiles overlapping by exactly ``width`` get weights summing to 1.
    """
    d = np.arange(n, dtype=np.float64) + 0.5
    t = np.clip((d - width / 4.0) / max(width / 2.0, 1e-6), 0.0, 1.0)
    w = 0.5 - 0.5 * np.cos(np.pi * t)
    return np.maximum(w, 1e-4).astype(np.float32)


def _axis_weights(size: int, width: float, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    w = np.ones(size, dtype=np.float32)
    n = min(size, math.ceil(width))
    if n <= 0:
        return w
    r = _ramp(n, width)
    if ramp_start:
        w[:n] = np.minimum(w[:n], r)
    if ramp_end:
        w[size - n:] = np.minimum(w[size - n:], r[::-1])
    return w


def _pad_to_multiple(tile: np.ndarray, multiple: int) -> np.ndarray:
    if multiple <= 1:
        return tile
    h, w = tile.shape[:2]
    ph = (-h) % multiple
    pw = (-w) % multiple
    if not ph and not pw:
        return tile
    mode = "reflect" if (ph < h and pw < w) else "edge"
    return np.pad(tile, ((0, ph), (0, pw), (0, 0)), mode=mode)


def is_out_of_memory(exc: BaseException) -> bool:
    """``devices.is_oom`` without importing torch for it: a cancel or another engine error is
    never out-of-memory, and only torch raises its out-of-memory kinds, so while it is not
    loaded a ``MemoryError`` is the only one. (``is_oom`` imports torch to look for its CUDA
    type: a cancel in a built-in step took 3.5 s longer and loaded 0.5 GB for it.)"""
    if isinstance(exc, EngineError):
        return False
    if isinstance(exc, MemoryError):
        return True
    return "torch" in sys.modules and is_oom(exc)


def free_memory(device: DeviceInfo | None) -> None:
    """After an out-of-memory error: collect, and return the device's cached blocks."""
    if device is not None:
        empty_cache(device)
        return
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_tiled(
    image: np.ndarray,
    fn: TileFn,
    *,
    scale: int = 1,
    tile: int = 512,
    overlap: int = 32,
    pad_multiple: int = 1,
    progress: Progress | None = None,
    device: DeviceInfo | None = None,
    min_tile: int = 64,
    balance: bool = False,
) -> np.ndarray:
    """Run ``fn`` over ``image`` tile by tile and blend; returns (H*scale, W*scale, C_out).

    ``image`` is float32 (H, W, C) (or (H, W), returned as such); ``fn`` receives a contiguous
    float32 (h', w', C) tile, padded (reflect) so that h' and w' are multiples of
    ``pad_multiple``, and must return (h'*scale, w'*scale, C_out); the padding is cropped
    away. On out-of-memory the tile size is halved (cache emptied) and the run restarts;
    below ``min_tile`` it raises :class:`OutOfMemory`.

    ``balance=True`` shrinks the tiles of each axis to the smallest equal size that needs no
    more tiles (:func:`balanced_tile`): the same number of model calls on fewer pixels, for
    models whose cost grows with the tile's area and that do not need one fixed tile size.
    """
    if image.ndim == 2:
        out = run_tiled(image[..., None], fn, scale=scale, tile=tile, overlap=overlap,
                        pad_multiple=pad_multiple, progress=progress, device=device,
                        min_tile=min_tile, balance=balance)
        return out[..., 0] if out.shape[-1] == 1 else out
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {image.shape}")
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    min_tile = max(1, int(min_tile))
    tile = max(int(tile), 1)
    while True:
        try:
            return _run_once(image, fn, scale, tile, overlap, pad_multiple, progress, balance)
        except Exception as exc:  # only out-of-memory is handled here
            if not is_out_of_memory(exc):
                raise
            del exc
            free_memory(device)
            h, w = image.shape[:2]
            tile = min(tile, max(h, w)) // 2
            if tile < min_tile:
                raise OutOfMemory(
                    "not enough memory to process this photo, even in small tiles; "
                    "close other programs or choose a lighter profile"
                ) from None
            log.warning("out of memory: retrying with %d px tiles", tile)


def _run_once(image, fn, scale, tile, overlap, pad_multiple, progress, balance=False):
    h, w, _ = image.shape
    pad_multiple = max(1, int(pad_multiple))
    if pad_multiple > 1 and tile >= pad_multiple:
        tile -= tile % pad_multiple  # full tiles need no padding
    overlap = max(0, min(int(overlap), tile // 2))
    tile_h = tile_w = tile
    if balance:
        tile_h = balanced_tile(h, tile, overlap, pad_multiple)
        tile_w = balanced_tile(w, tile, overlap, pad_multiple)
    ys = tile_starts(h, tile_h, overlap)
    xs = tile_starts(w, tile_w, overlap)
    total = len(ys) * len(xs)
    out: np.ndarray | None = None
    wsum = np.zeros((h * scale, w * scale), dtype=np.float32)
    width = overlap * scale
    done = 0
    for y0 in ys:
        for x0 in xs:
            if progress is not None:
                progress.check()
            th, tw = min(tile_h, h), min(tile_w, w)
            src = np.ascontiguousarray(image[y0:y0 + th, x0:x0 + tw], dtype=np.float32)
            res = np.asarray(fn(_pad_to_multiple(src, pad_multiple)))
            if res.ndim == 2:
                res = res[..., None]
            if res.shape[0] < th * scale or res.shape[1] < tw * scale:
                raise ValueError(
                    f"tile function returned {res.shape[:2]} for a {th}x{tw} tile at "
                    f"scale {scale}"
                )
            res = res[: th * scale, : tw * scale]
            if out is None:
                out = np.zeros((h * scale, w * scale, res.shape[2]), dtype=np.float32)
            wy = _axis_weights(th * scale, width, y0 > 0, y0 + th < h)
            wx = _axis_weights(tw * scale, width, x0 > 0, x0 + tw < w)
            wt = wy[:, None] * wx[None, :]
            oy, ox = y0 * scale, x0 * scale
            out[oy:oy + th * scale, ox:ox + tw * scale] += res * wt[..., None]
            wsum[oy:oy + th * scale, ox:ox + tw * scale] += wt
            del res, src
            done += 1
            if progress is not None:
                progress.update(done / total, f"tile {done}/{total}")
    assert out is not None
    out /= wsum[..., None]
    return out


@contextlib.contextmanager
def checking(model: Any, check: Callable[[], None] | None) -> Iterator[None]:
    """While open, ``check()`` runs before the forward pass of every layer that runs in this
    thread (``model``, an ``nn.Module`` or a spandrel descriptor, is the one that does), so a
    cancel is honoured inside one model call: one 512-px NAFNet tile takes ~10 s on a CPU
    core, a LaMa region ~20 s. One global hook, whatever the model's size (hooking each of
    NAFNet's 446 layers cost 1.3 ms per tile); calls from other threads (another job's model)
    are not checked. The hook is removed on leaving."""
    module = getattr(model, "model", model)
    if check is None or not callable(getattr(module, "modules", None)):
        yield
        return
    from torch.nn.modules.module import register_module_forward_pre_hook

    owner = threading.get_ident()

    def hook(*_args: Any) -> None:
        if threading.get_ident() == owner:
            check()

    handle = register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def torch_fn(model: Any, device: DeviceInfo, dtype: Any = None, *, clamp: bool = True,
             channels_last: bool = False, check: Callable[[], None] | None = None) -> TileFn:
    """Wrap an ``nn.Module`` or spandrel descriptor (NCHW float in/out) as a numpy tile fn.

    Only the tile is moved to the device; the result comes back as float32 numpy.
    ``channels_last`` runs a plain conv net in NHWC memory layout (measured 5-9 % faster for
    Real-ESRGAN RRDB on this CPU); the module is converted in place, once. ``check`` (a
    progress's ``check``) is called inside the forward pass, layer by layer (:func:`checking`).
    """
    import torch

    if channels_last:
        module = getattr(model, "model", model)
        module.to(memory_format=torch.channels_last)

    if dtype is None:
        dtype = _model_dtype(model)
    if dtype is None:
        supports_half = bool(getattr(model, "supports_half", True))
        supports_bf16 = bool(getattr(model, "supports_bfloat16", False))
        dtype = device.dtype_for(supports_half, supports_bf16)
    dev = torch.device(device.torch_device)

    def fn(tile: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1)))[None]
        x = x.to(device=dev, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), checking(model, check):
            y = model(x)
            if clamp:
                y = y.clamp(0.0, 1.0)
            res = y[0].float().permute(1, 2, 0).cpu().numpy()
        del x, y
        return res

    return fn


def _model_dtype(model: Any) -> Any:
    """The dtype the model's weights are in (spandrel descriptor or nn.Module), else None."""
    import torch

    dt = getattr(model, "dtype", None)
    if isinstance(dt, torch.dtype):
        return dt
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.dtype
    return None


def model_tiling_hints(descriptor: Any) -> tuple[int, int]:
    """(scale, pad_multiple) of a spandrel descriptor (1, 1 for a plain module)."""
    scale = int(getattr(descriptor, "scale", 1) or 1)
    req = getattr(descriptor, "size_requirements", None)
    multiple = int(getattr(req, "multiple_of", 1) or 1) if req is not None else 1
    return scale, multiple


def run_model_tiled(
    image: np.ndarray,
    descriptor: Any,
    device: DeviceInfo,
    *,
    tile: int = 512,
    overlap: int = 32,
    progress: Progress | None = None,
    min_tile: int = 64,
    balance: bool = False,
) -> np.ndarray:
    """``run_tiled`` with ``torch_fn(descriptor)`` and the descriptor's scale / size needs."""
    scale, multiple = model_tiling_hints(descriptor)
    req = getattr(descriptor, "size_requirements", None)
    minimum = int(getattr(req, "minimum", 0) or 0) if req is not None else 0
    fn = torch_fn(descriptor, device, check=progress.check if progress is not None else None)
    return run_tiled(image, fn, scale=scale, tile=max(tile, minimum),
                     overlap=overlap, pad_multiple=multiple, progress=progress, device=device,
                     min_tile=max(min_tile, minimum, 1), balance=balance)
