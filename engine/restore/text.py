"""Class A: text-region fusion.

PP-OCR text detection on the *source* photo (rapidocr's bundled PP-OCR ONNX models by default;
PaddleOCR only when the user asks for it and the package is installed — its constructor downloads
models), padded text regions, Real-ESRGAN on those crops of the source, resized to the current
image's scale, brought to its background tone (``match_tone``) and feathered into the current
(InvSR / Real-ESRGAN) result. OCR recognition confidence on the text regions is measured before
and after; a region whose confidence drops is left as it was (``guard``). A line that (nearly)
fits its axis-aligned box has that box as its region; a line at an angle (a page photographed
askew) is handled as the rotated rectangle it is: cut out level, super-resolved, put back under
a mask of its padded rectangle, and read level (``_line_region``).

Artifacts for the UI: ``text_boxes`` (x0, y0, x1, y1 in source pixels), ``text_quads`` (each
line's four corners in source pixels: a line at an angle drawn as it is), ``ocr_confidence_before``
/ ``ocr_confidence_after`` (mean over regions, 0-1), ``ocr_regions`` (per-region details: output
pixels; ``quad`` the line's corners, ``padded`` the box of its mask, ``sr_pixels`` the source
pixels the region model ran on). In a preview (``ctx.whole``) lines are looked for in the whole
photo (:func:`_detect_for_part`) and the pipeline moves these into the whole photo's pixels.

Cancel: checked between detection tiles and recognition batches, and, with rapidocr, during
each ONNX run too (``RapidOCRBackend.cancellable``): detection on the reduced copy is one run of
several seconds. The run is left to a worker thread while the job's thread watches the cancel
token: a cancel is honoured within 0.02 s, and ONNX Runtime's ``RunOptions.terminate`` stops
the abandoned run at its next node (one node took up to 2.7 s); one OCR run at a time.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..errors import ModelMissing, UsageError
from .registry import StepContext, StepOutput, call_cancellable, register_step
from .sr import REALESRGAN_MODELS, realesrgan, resize_to

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- OCR backends
# one OCR run (ONNX detection or recognition) at a time, whatever the backend instance: a
# cancelled job's run is abandoned while it stops, and the next one waits for it to end
_OCR_SLOT = threading.Lock()


class _RunOptionsSession:
    """Stands in for one of rapidocr's onnxruntime ``InferenceSession``s: ``run`` passes the
    ``RunOptions`` of the cancellable run this thread is doing (``RapidOCRBackend._run``;
    none outside one, as before); everything else is the session's own."""

    def __init__(self, session: Any, local: threading.local) -> None:
        self._session = session
        self._local = local

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        if run_options is None:
            run_options = getattr(self._local, "run_options", None)
        return self._session.run(output_names, input_feed, run_options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class RapidOCRBackend:
    """PP-OCR (det + rec) through rapidocr's bundled ONNX models: no download."""

    name = "rapidocr"
    # the store's model it loads: ``pp-ocr``, bundled with rapidocr (installed when it is)
    model_id: str | None = "pp-ocr"

    def __init__(self, threads: int | None = None) -> None:
        try:
            from rapidocr import RapidOCR
        except ImportError as e:
            raise ModelMissing("pp-ocr", "the rapidocr package is not installed "
                               "(pip install rapidocr onnxruntime)") from e
        params: dict[str, Any] = {"Global.log_level": "error"}
        if threads:  # the device policy's thread count, not every core
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = int(threads)
            params["EngineConfig.onnxruntime.inter_op_num_threads"] = 1
        self._engine = RapidOCR(params=params)
        # per thread: the cancel token (a job's thread, in ``cancellable``) and the RunOptions
        # (the worker thread doing that job's run)
        self._local = threading.local()
        self._routed: set[str] = set()
        self._route_lock = threading.Lock()

    # -- cancel inside an ONNX run
    def _route(self, model: str, loader: str) -> None:
        """Route the ONNX runs of rapidocr's ``model`` ("text_det" / "text_rec", loaded now by
        ``loader`` if it was not) through :class:`_RunOptionsSession`. Where rapidocr's
        layout is not the one known (another version), its runs stay as they were: cancel is
        then checked between them only."""
        with self._route_lock:
            if model in self._routed:
                return
            part = getattr(self._engine, model, None)
            if part is None and callable(getattr(self._engine, loader, None)):
                part = getattr(self._engine, loader)()
            # (only once loaded: a load that failed is tried, and routed, again next time)
            self._routed.add(model)
            infer = getattr(part, "session", None)  # rapidocr's OrtInferSession
            session = getattr(infer, "session", None)
            try:
                from onnxruntime import InferenceSession
            except ImportError:  # pragma: no cover - rapidocr's ONNX engine needs it
                return
            if isinstance(session, InferenceSession):
                infer.session = _RunOptionsSession(session, self._local)
            elif not isinstance(session, _RunOptionsSession):
                log.debug("rapidocr %s: no onnxruntime session found; its runs are not "
                          "cancellable inside", model)

    @contextlib.contextmanager
    def cancellable(self, token: Any) -> Iterator[None]:
        """While open, a cancel of ``token`` (a :class:`~engine.progress.CancelToken`) stops
        this thread's detection and recognition within ``CANCEL_POLL`` (0.02 s): each ONNX run is
        done in a worker thread while this one watches the token
        (:func:`~engine.restore.registry.call_cancellable`); on a cancel ``detect`` /
        ``recognize_many`` raise :class:`~engine.errors.Cancelled` at once, and the abandoned
        run gets ``RunOptions.terminate`` (ONNX Runtime's own way to stop a run from another
        thread: it ends at its next node, and the session stays usable). Stopping at a node
        alone waited for the node: up to 2.7 s on the reduced copy of a 12 MP page. One OCR
        run at a time (``_OCR_SLOT``), so abandoned runs never pile up. Runs in other threads
        are not affected."""
        previous = getattr(self._local, "token", None)
        self._local.token = token
        try:
            yield
        finally:
            self._local.token = previous

    def _run(self, model: str, loader: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with rapidocr's ``model`` routed (:meth:`_route`); inside
        :meth:`cancellable`, in a worker thread that a cancel abandons (the model's first load
        too), otherwise here. Either way in the OCR slot."""
        token = getattr(self._local, "token", None)
        if token is None:
            with _OCR_SLOT:
                self._route(model, loader)
                return fn(*args, **kwargs)
        from onnxruntime import RunOptions  # (rapidocr's ONNX engine needs it)

        ro = RunOptions()

        def job() -> Any:
            self._route(model, loader)
            self._local.run_options = ro  # (the worker thread's own)
            try:
                return fn(*args, **kwargs)
            finally:
                self._local.run_options = None

        def stop() -> None:
            ro.terminate = True

        return call_cancellable(job, token.check, slot=_OCR_SLOT, stop=stop, name="mend-ocr")

    def detect(self, bgr: np.ndarray) -> list[np.ndarray]:
        out = self._run("text_det", "_load_det_model", self._engine, bgr, use_det=True,
                        use_cls=False, use_rec=False)
        boxes = getattr(out, "boxes", None)
        return [] if boxes is None else [np.asarray(b, np.float32).reshape(-1, 2) for b in boxes]

    def recognize(self, bgr: np.ndarray) -> tuple[str, float]:
        out = self._run("text_rec", "_load_rec_model", self._engine, bgr, use_det=False,
                        use_cls=False, use_rec=True)
        txts = getattr(out, "txts", None) or ("",)
        scores = getattr(out, "scores", None) or (0.0,)
        return str(txts[0]), float(scores[0])

    def recognize_many(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """Recognition of many line crops in batches (one ONNX run per batch)."""
        if not crops:
            return []
        out = self._run("text_rec", "_load_rec_model", self._engine.recognize_txt, list(crops))
        return [(str(t), float(c)) for t, c in zip(out.txts, out.scores, strict=True)]


def _cancellable(ocr: Any, ctx: StepContext) -> contextlib.AbstractContextManager:
    """``ocr.cancellable`` with the job's cancel token, for a backend that has it."""
    fn = getattr(ocr, "cancellable", None)
    token = getattr(ctx.progress, "token", None)
    return fn(token) if callable(fn) and token is not None else contextlib.nullcontext()


class PaddleOCRBackend:
    """PaddleOCR itself (optional extra). Only used when configured: constructing it downloads
    its models unless they are already cached."""

    name = "paddleocr"
    # none of the store's: PaddleOCR's own models, which it fetches and keeps itself (rapidocr's
    # bundled ``pp-ocr`` is not used)
    model_id: str | None = None
    _MISSING = "paddleocr is not installed (pip install paddleocr)"

    def __init__(self) -> None:
        try:
            from paddleocr import PaddleOCR
        except ImportError as e:
            raise ModelMissing("pp-ocr", self._MISSING) from e
        self._ocr = PaddleOCR()

    @classmethod
    def require(cls) -> None:
        """Raise what making one would raise when paddleocr is not installed (without
        importing it)."""
        import importlib.util

        if importlib.util.find_spec("paddleocr") is None:
            raise ModelMissing("pp-ocr", cls._MISSING)

    def detect(self, bgr: np.ndarray) -> list[np.ndarray]:
        res = self._ocr.predict(bgr)
        boxes = []
        for page in res or []:
            for poly in (page.get("dt_polys") if hasattr(page, "get") else None) or []:
                boxes.append(np.asarray(poly, np.float32).reshape(-1, 2))
        return boxes

    def recognize(self, bgr: np.ndarray) -> tuple[str, float]:
        res = self._ocr.predict(bgr)
        for page in res or []:
            texts = page.get("rec_texts") if hasattr(page, "get") else None
            scores = page.get("rec_scores") if hasattr(page, "get") else None
            if texts:
                return str(texts[0]), float(scores[0])
        return "", 0.0

    def recognize_many(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        return [self.recognize(c) for c in crops]


BACKENDS = {"rapidocr": RapidOCRBackend, "paddleocr": PaddleOCRBackend}


def ocr_backend(backend: str = "auto") -> str:
    """The OCR backend a ``text_fusion`` ``ocr`` param names (any case): ``auto`` is rapidocr
    (PaddleOCR downloads at construction: only when chosen); an unknown name is a
    :class:`UsageError`."""
    backend = (backend or "auto").lower()
    if backend == "auto":
        backend = "rapidocr"
    if backend not in BACKENDS:
        raise UsageError(f"unknown OCR backend {backend!r} (auto, rapidocr or paddleocr)")
    return backend


def get_ocr(ctx: StepContext, backend: str = "auto"):
    backend = ocr_backend(backend)
    cls = BACKENDS[backend]

    def make():
        return cls(ctx.device.threads) if cls is RapidOCRBackend else cls()

    def build():
        # (rapidocr's set-up took 0.6 s: a cancel abandons it)
        return call_cancellable(make, getattr(ctx.progress, "check", None), slot=_OCR_SLOT,
                                name="mend-ocr")

    runtime = ctx.runtime
    if runtime is not None and hasattr(runtime, "cached"):
        return runtime.cached(("ocr", backend), build, 64 << 20)
    return build()


# --------------------------------------------------------------------------- geometry
def to_u8_bgr(rgb: np.ndarray) -> np.ndarray:
    u8 = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(u8[..., ::-1])


def padded_box(quad: np.ndarray, shape: tuple[int, int], pad: float,
               min_pad: int = 4) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(tight, padded) axis-aligned boxes (x0, y0, x1, y1) of a text quadrilateral; padding
    is ``pad`` x the text height on each side (at least ``min_pad`` px), clipped to the image."""
    h, w = shape
    x0, y0 = (int(v) for v in np.floor(quad.min(axis=0)))
    x1, y1 = (int(v) for v in np.ceil(quad.max(axis=0)))
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(w, max(x1, x0 + 1)), min(h, max(y1, y0 + 1))
    p = max(min_pad, round(pad * (y1 - y0)))
    return (x0, y0, x1, y1), (max(0, x0 - p), max(0, y0 - p), min(w, x1 + p), min(h, y1 + p))


def feather_mask(h: int, w: int, ramp_y: int | tuple[int, int], ramp_x: int | tuple[int, int],
                 edges: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """1 inside, cosine ramp to ~0 at the edges flagged (top, bottom, left, right); edges on
    the photo border stay at 1. ``ramp_y`` / ``ramp_x``: px, one for both ends or (start, end)
    each, so a box clipped by the photo on one side still fades over its full padding on the
    other."""

    def ramp(r: int) -> np.ndarray:
        return (0.5 - 0.5 * np.cos(np.pi * (np.arange(r) + 0.5) / r)).astype(np.float32)

    def axis(n, rs, start, end):
        r0, r1 = (rs, rs) if isinstance(rs, int) else rs
        a = np.ones(n, np.float32)
        r0, r1 = min(r0, n // 2), min(r1, n // 2)
        if start and r0 > 0:
            a[:r0] = ramp(r0)
        if end and r1 > 0:
            a[n - r1:] = np.minimum(a[n - r1:], ramp(r1)[::-1])
        return a

    top, bottom, left, right = edges
    return axis(h, ramp_y, top, bottom)[:, None] * axis(w, ramp_x, left, right)[None, :]


def match_tone(sr: np.ndarray, base: np.ndarray,
               inner: tuple[slice, slice] | np.ndarray, min_ring: int = 16) -> np.ndarray:
    """``sr`` (a text region from the region model) shifted, per channel, by the median of
    ``base - sr`` over the region's padding (outside the text box ``inner``, or, a boolean
    array, where ``inner`` is False: a slanted line's padding): there both show
    the background around the text, and the whole-photo model's tone is the one the rest of
    the photo has. An offset keeps the glyphs' own contrast. Without it the region model's
    background tone (another brightness or tint) showed as a faint box around each line: the
    median step over the padding, on five real text photos, was a mean of up to 4.7 levels of
    255 per photo with the official Real-ESRGAN x4plus on the text and animevideov3 on the
    photo (now up to 1.8), and up to 6.0 with two random models (now up to 1.4). Padding of
    under ``min_ring`` px (a box that fills the photo): ``sr`` as it is."""
    ring = np.ones(sr.shape[:2], bool)
    ring[inner] = False
    if int(ring.sum()) < min_ring:
        return sr
    offset = np.median(base[ring] - sr[ring], axis=0).astype(np.float32)
    return np.clip(sr + offset, 0.0, 1.0)


_BG_BAND_ROWS = 256  # rows laid over the background at a time (_over_background)


def _over_background(rgb: np.ndarray, alpha: np.ndarray,
                     check: Callable[[], None] | None = None) -> np.ndarray:
    """``rgb`` over white where transparent, or over black when what is visible is light.
    Made in bands of rows with ``check`` (a progress's ``check``) between them: a preview lays
    the whole photo over it, and a 120-megapixel photo took 10 s no cancel could stop (and
    photo-sized float copies of the alpha and the products)."""
    h = rgb.shape[0]
    total, count = 0.0, 0
    for y in range(0, h, _BG_BAND_ROWS):
        if check is not None:
            check()
        visible = np.asarray(alpha[y:y + _BG_BAND_ROWS]) > 0.5
        if visible.any():
            total += float(rgb[y:y + _BG_BAND_ROWS][visible].sum(dtype=np.float64))
            count += int(np.count_nonzero(visible)) * rgb.shape[2]
    bg = 0.0 if count and total / count > 0.6 else 1.0
    out = np.empty(rgb.shape, np.result_type(rgb.dtype, np.float32))
    for y in range(0, h, _BG_BAND_ROWS):
        if check is not None:
            check()
        a = np.clip(np.asarray(alpha[y:y + _BG_BAND_ROWS], np.float32), 0.0, 1.0)[..., None]
        band = out[y:y + _BG_BAND_ROWS]
        np.multiply(rgb[y:y + _BG_BAND_ROWS], a, out=band)
        band += bg * (1.0 - a)
    return out


def _read_all(ocr: Any, crops: list[np.ndarray], ctx: StepContext,
              batch: int = 16) -> list[tuple[str, float]]:
    """``ocr.recognize_many`` in batches, with a cancel check between them (hundreds of text
    regions take tens of seconds to read)."""
    out: list[tuple[str, float]] = []
    with _cancellable(ocr, ctx):
        for i in range(0, len(crops), batch):
            ctx.progress.check()
            out += ocr.recognize_many(crops[i:i + batch])
    return out


def _detect_whole(ocr: Any, rgb: np.ndarray) -> list[np.ndarray]:
    """Text quads of ``rgb`` (its pixels). PP-OCR's detector misses text that fills the frame
    (a crop of a sign, a scanned line): it is looked for with a margin of the photo's own edge
    pixels around it."""
    m = min(64, max(8, round(0.1 * max(rgb.shape[:2]))))
    bgr = cv2.copyMakeBorder(to_u8_bgr(rgb), m, m, m, m, cv2.BORDER_REPLICATE)
    return [q - m for q in ocr.detect(bgr)]


def _box(q: np.ndarray) -> tuple[float, float, float, float]:
    return (float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()),
            float(q[:, 1].max()))


def _inside(a: tuple[float, float, float, float], b: tuple[float, float, float, float],
            share: float = 0.7) -> bool:
    """Whether box ``a`` lies mostly (``share`` of its area) within box ``b``."""
    ov = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
          * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
    return ov >= share * max(1e-6, (a[2] - a[0]) * (a[3] - a[1]))


def _shape(q: np.ndarray) -> tuple[tuple[float, float, float, float], np.ndarray, float]:
    """(box, convex outline, area) of a quad, for :func:`_covers`."""
    hull = cv2.convexHull(np.asarray(q, np.float32).reshape(-1, 1, 2))
    return _box(q), hull, float(cv2.contourArea(hull))


def _covers(b: tuple[Any, np.ndarray, float], a: tuple[Any, np.ndarray, float],
            share: float = 0.7) -> bool:
    """Whether the quad of :func:`_shape` ``a`` lies mostly (``share`` of its area) within
    that of ``b``: as the shapes they are, not their boxes (on a page at 25 degrees each line's
    box lay mostly within its longer neighbour's, and half the lines were dropped)."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a[0], b[0]
    if ax0 >= bx1 or bx0 >= ax1 or ay0 >= by1 or by0 >= ay1:
        return False
    inter, _ = cv2.intersectConvexConvex(a[1], b[1])
    return inter >= share * max(1e-6, a[2])


def _kept_once(shapes: list[tuple[Any, np.ndarray, float]]) -> list[int]:
    """Indices of the quads (their :func:`_shape`) kept by :func:`_drop_repeats`, in order."""
    kept: list[int] = []
    for i in sorted(range(len(shapes)), key=lambda i: -shapes[i][2]):
        if not any(_covers(shapes[j], shapes[i]) for j in kept):
            kept.append(i)
    return sorted(kept)


def _drop_repeats(quads: list[np.ndarray]) -> list[np.ndarray]:
    """The quads, less those found twice: a quad that lies mostly within a larger kept one
    (a line found in two overlapping tiles). Order: as found."""
    return [quads[i] for i in _kept_once([_shape(q) for q in quads])]


def _text_height(q: np.ndarray) -> float:
    """The short side of a text quad (its line height, also for slanted lines)."""
    return float(min(np.linalg.norm(q[1] - q[0]), np.linalg.norm(q[2] - q[1])))


def _merge_passes(coarse: list[np.ndarray], fine: list[np.ndarray], big: float,
                  cut: list[bool] | None = None) -> list[np.ndarray]:
    """Text found on the reduced copy (``coarse``) and in full-resolution tiles (``fine``), each
    line once, in reading order. The tiles outline small text more tightly (on a reduced copy
    small lines merge into blobs spanning several of them), and see whole every line up to the
    tiles' overlap tall (``big``). So a reduced copy's box is kept as large text when it is at
    least ``big`` tall and no tile found lines of under half its height in it (tile boxes in it
    are then dropped: pieces of one line that tiles cut), and otherwise only where no tile found
    anything in it. A line a tile's edge cut (``cut``: per tile box, whether it ends at an edge
    of its tile inside the photo) is taken whole from the reduced copy the same way, at any
    height: a box there with a cut tile box in it and none of under half its height replaces
    the tile boxes in it (a long line at an angle crosses the tiles' edges: on a page turned 25
    degrees each of its long lines was kept as 2-3 overlapping pieces)."""
    cut = [False] * len(fine) if cut is None else cut
    once = _kept_once([_shape(q) for q in fine])
    fine, cut = [fine[i] for i in once], [cut[i] for i in once]
    fb = [(_shape(q), _text_height(q)) for q in fine]
    large: list[np.ndarray] = []
    small: list[np.ndarray] = []
    for q in coarse:
        shape, h = _shape(q), _text_height(q)
        inside = [k for k, (f, _) in enumerate(fb) if _covers(shape, f)]
        level = not any(fb[k][1] < h / 2 for k in inside)  # (no smaller lines in it)
        if level and (h >= big or any(cut[k] for k in inside)):
            large.append(q)
        elif not inside:
            small.append(q)
    ls = [_shape(q) for q in large]
    fine = [q for q, (f, _) in zip(fine, fb, strict=True) if not any(_covers(c, f) for c in ls)]
    return sorted(large + small + fine, key=lambda q: (_box(q)[1], _box(q)[0]))


# PP-OCR brings a photo's short side up to this many px (rapidocr's ``Det.limit_side_len``)
DET_MIN_SIDE = 736


def _tile_spans(n: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) of the detection tiles along an axis of ``n`` px: ``tile`` px each, every
    one ``tile - overlap`` px after the last, the last moved back to be at least
    ``DET_MIN_SIDE`` px long (or all of ``n``), overlapping the one before more. It was as
    thin as what was left (the last 442 px of a 1594-px page; of a 2479-px one, 175): PP-OCR
    enlarged it to 736 px (x1.7-4.2 each way), and a strip of the photo cost as much as a
    whole tile or more (442 x 1280 px: 2.0 s, a 1280-px tile 2.1 s), looked at at a scale no
    other tile has."""
    least = min(n, tile, DET_MIN_SIDE)
    spans = []
    for s in range(0, max(1, n - overlap), tile - overlap):
        e = min(n, s + tile)
        spans.append((min(s, e - least), e))
    return spans


def _cut_by_tile(box: tuple[float, float, float, float], tile: tuple[int, int, int, int],
                 size: tuple[int, int], near: float = 2.0) -> bool:
    """Whether a text box found in ``tile`` (x0, y0, x1, y1) ends at one of its edges that lie
    inside the photo (``size``: w, h): a line the tile cut (PP-OCR clips its boxes to the
    image)."""
    (bx0, by0, bx1, by1), (x0, y0, x1, y1), (w, h) = box, tile, size
    return ((x0 > 0 and bx0 <= x0 + near) or (x1 < w and bx1 >= x1 - 1 - near)
            or (y0 > 0 and by0 <= y0 + near) or (y1 < h and by1 >= y1 - 1 - near))


def _detect_text(ocr: Any, rgb: np.ndarray, det_max: int, det_tile: int,
                 ctx: StepContext) -> list[np.ndarray]:
    """Text quads in ``rgb``'s pixels. A photo larger than ``det_max`` is looked at twice: on a
    copy at most ``det_max`` px (PP-OCR keeps big photos at full size; large text, and text
    that fills the frame; rapidocr brings the copy and its margin to 2000 px), and at full
    resolution in ``det_tile`` px tiles that overlap (:func:`_tile_spans`), so that small text
    a reduced copy blurs away is found too (12-px lines on a 6000-px page: about half of them on
    the 2048-px copy; 10-px lines: none; lines of Pillow's 5-px font: 95 % in tiles, 67 % on a
    copy at 0.885, as a 2128-px page's is). A line a tile's edge cuts is taken whole from the
    copy (:func:`_merge_passes`). Cancel is checked between tiles, and inside each detection
    where the backend can (``RapidOCRBackend.cancellable``).

    Where the time goes (a real page photo turned 25 degrees, 2128 x 1594 px, one thread): the
    ONNX runs are 94 % of it, convolutions 70 % of those; the copy was 3.1 of the 8.7 MP the
    model looked at, the 4 tiles 5.6 (two of them strips PP-OCR enlarged) - now 4.5."""
    with _cancellable(ocr, ctx):
        return _detect_passes(ocr, rgb, det_max, det_tile, ctx)


def _detect_for_part(ocr: Any, whole: Any, det_max: int, det_tile: int,
                     ctx: StepContext) -> list[np.ndarray]:
    """A preview's text lines: looked for in the whole photo (``whole``, a
    :class:`~engine.restore.registry.WholePhoto`: the chain's input, as the whole fix's text
    step sees it), where the whole fix looks - its reduced copy, and of its full-resolution
    tiles those near the part (:func:`_detect_passes` ``near``) - and those that reach the
    part, in the part's source pixels (a line the part's edge cuts is found whole; its
    region is then cut by the part's edge)."""
    seen = whole.filled(ctx.progress.check)
    if whole.alpha is not None and float(np.min(whole.alpha)) < 1.0:
        seen = _over_background(seen, whole.alpha, ctx.progress.check)
    x0, y0, x1, y1 = whole.box
    with _cancellable(ocr, ctx):
        quads = _detect_passes(ocr, seen, det_max, det_tile, ctx, near=whole.box)
    out = []
    for q in quads:
        bx0, by0, bx1, by1 = _box(q)
        if bx0 < x1 and bx1 > x0 and by0 < y1 and by1 > y0:
            out.append((q - np.array([x0, y0], np.float32)).astype(np.float32))
    return out


def _detect_passes(ocr: Any, rgb: np.ndarray, det_max: int, det_tile: int,
                   ctx: StepContext, near: tuple[int, int, int, int] | None = None
                   ) -> list[np.ndarray]:
    """``near`` (x0, y0, x1, y1; a preview's part): of the full-resolution tiles, only those
    that meet it, or a line of the reduced copy that meets it, grown by the tiles' overlap,
    are looked at (the lines found elsewhere are not the part's; a long line the copy saw
    across the part is looked at in every tile it crosses, as :func:`_merge_passes` weighs
    them)."""
    h, w = rgb.shape[:2]
    f = min(1.0, det_max / max(h, w))
    if f >= 1.0:
        return _detect_whole(ocr, rgb)
    small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))),
                       interpolation=cv2.INTER_AREA)
    ctx.progress.check()
    coarse = [q / f for q in _detect_whole(ocr, small)]
    del small
    if det_tile <= 0 or min(h, w) < 128:
        # (a strip: PP-OCR scales a thin tile's short side up to 736 px, and a 5-px tile of a
        # 3000-px strip became a 138-MP image, 16 GB; the reduced copy, with its margin, covers
        # a strip's text)
        return coarse
    fine: list[np.ndarray] = []
    cut: list[bool] = []
    tile = max(256, det_tile)
    overlap = max(64, tile // 10)  # more than a small line's height: each is whole in a tile
    ys, xs = _tile_spans(h, tile, overlap), _tile_spans(w, tile, overlap)
    spans = [(y, x) for y in ys for x in xs]
    if near is not None:
        areas = [tuple(float(v) for v in near)] + [
            b for b in (_box(q) for q in coarse)
            if b[0] < near[2] and b[2] > near[0] and b[1] < near[3] and b[3] > near[1]]
        areas = [(a[0] - overlap, a[1] - overlap, a[2] + overlap, a[3] + overlap)
                 for a in areas]
        spans = [((y, y1), (x, x1)) for (y, y1), (x, x1) in spans
                 if any(x < a[2] and x1 > a[0] and y < a[3] and y1 > a[1] for a in areas)]
    n = len(spans)
    for k, ((y, y1), (x, x1)) in enumerate(spans):
        ctx.progress.check()
        ctx.progress.update(0.1 * k / n, f"finding small text, tile {k + 1} of {n}")
        found = ocr.detect(to_u8_bgr(rgb[y:y1, x:x1]))
        fine += [q + np.array([x, y], np.float32) for q in found]
        cut += [_cut_by_tile(_box(q), (x, y, x1, y1), (w, h)) for q in fine[len(cut):]]
    return _merge_passes(coarse, fine, overlap, cut)


def region_scale(sx: float, sy: float) -> int:
    """The Real-ESRGAN output scale (1, 2 or 4) for text regions of the source that go into
    an image ``sx`` x ``sy`` times its size: the smallest that is not below it (4 at most; the
    region is then resized to the exact size). The model runs at x4 whatever this is: a
    smaller scale only shrinks each tile before the tiles are blended (a 800 x 4000 px line
    of a 24 MP photo, x4 then shrunk: 2.2 GB at the peak; at x1: 0.8 GB)."""
    need = max(sx, sy)
    return next((s for s in (1, 2) if s >= need - 1e-6), 4)


# --------------------------------------------------------------------------- regions
# a line whose axis-aligned box is at most this many times its own area is fused in its box:
# a long line up to ~0.5 degrees off level, a word up to ~5 (the box's full weight is then on at
# most a quarter more than the line, and the line is not resampled). On the real page photo,
# its 7 lines are 0.3-2 degrees off level: the 5 at 0.3 (1.04-1.10) stay in their boxes.
BOX_FIT = 1.25


@dataclass(frozen=True)
class TextLine:
    """A text line as the rectangle it is, in source pixels (continuous coordinates: pixel
    (x, y) covers [x, x + 1) x [y, y + 1)): its centre, the unit vector ``u`` from the quad's
    first corner to its second (the reading direction; across the line is (-uy, ux)) and its
    half extents along (``hu``) and across (``hv``) it."""

    cx: float
    cy: float
    ux: float
    uy: float
    hu: float
    hv: float

    @property
    def height(self) -> float:
        """The short side (the line's height, also for a column of vertical text)."""
        return 2.0 * min(self.hu, self.hv)

    def frame(self, x: Any, y: Any) -> tuple[Any, Any]:
        """(along, across) the line: coordinates of the points (x, y) from its centre."""
        dx, dy = x - self.cx, y - self.cy
        return dx * self.ux + dy * self.uy, dy * self.ux - dx * self.uy

    def corners(self, grow: float = 0.0) -> np.ndarray:
        """The four corners, in the quad's order, of the rectangle grown by ``grow`` a side."""
        a, b = self.hu + grow, self.hv + grow
        c, u, v = (np.array(t) for t in ((self.cx, self.cy), (self.ux, self.uy),
                                         (-self.uy, self.ux)))
        return np.array([c - a * u - b * v, c + a * u - b * v, c + a * u + b * v,
                         c - a * u + b * v], np.float64)


def text_line(quad: np.ndarray) -> TextLine:
    """The rectangle of a text quad (PP-OCR's: corners in reading order from the top left;
    a polygon of another number of points: its smallest rotated rectangle, along its long
    side, left to right), as much larger than the quad as needed to hold all its points."""
    q = np.asarray(quad, np.float64).reshape(-1, 2)
    if len(q) == 4:
        d = (q[1] - q[0]) + (q[2] - q[3])
    else:
        (_, _), (rw, rh), deg = cv2.minAreaRect(q.astype(np.float32))
        t = np.deg2rad(deg)
        d = np.array([np.cos(t), np.sin(t)]) if rw >= rh else np.array([-np.sin(t), np.cos(t)])
        if d[0] < 0 or (d[0] == 0 and d[1] < 0):
            d = -d
    norm = float(np.hypot(d[0], d[1]))
    ux, uy = (float(d[0] / norm), float(d[1] / norm)) if norm > 1e-6 else (1.0, 0.0)
    a, b = q @ np.array([ux, uy]), q @ np.array([-uy, ux])
    ca, cb = (a.min() + a.max()) / 2, (b.min() + b.max()) / 2
    return TextLine(float(ca * ux - cb * uy), float(ca * uy + cb * ux), ux, uy,
                    float(a.max() - a.min()) / 2, float(b.max() - b.min()) / 2)


def fits_its_box(line: TextLine, limit: float = BOX_FIT) -> bool:
    """Whether the line's axis-aligned box stands for it well enough (at most ``limit`` x its
    area): the box is then its region, as before rotated lines were handled (and a line at
    0 or 90 degrees is fused exactly as then). A line at an angle needs its own region: the
    22-29 px lines of the real page photo turned 25 degrees had boxes 86-187 px tall
    (``_line_region``)."""
    c, s = abs(line.ux), abs(line.uy)
    bw, bh = 2 * (line.hu * c + line.hv * s), 2 * (line.hu * s + line.hv * c)
    return bw * bh <= limit * 4 * line.hu * line.hv + 1e-6


def _box_region(quad: np.ndarray, source: np.ndarray, image: np.ndarray, pad: float,
                model_id: str, ctx: StepContext, sub: Any) -> dict[str, Any] | None:
    """The region of a line that (nearly) fits its axis-aligned box: the padded box."""
    sh, sw = source.shape[:2]
    oh, ow = image.shape[:2]
    sy, sx = oh / sh, ow / sw
    (tx0, ty0, tx1, ty1), (px0, py0, px1, py1) = padded_box(quad, (sh, sw), pad)
    # the same regions in output pixels
    ox0, oy0 = round(px0 * sx), round(py0 * sy)
    ox1, oy1 = min(ow, round(px1 * sx)), min(oh, round(py1 * sy))
    bx0, by0 = round(tx0 * sx), round(ty0 * sy)
    bx1, by1 = min(ow, round(tx1 * sx)), min(oh, round(ty1 * sy))
    if ox1 - ox0 < 2 or oy1 - oy0 < 2 or bx1 <= bx0 or by1 <= by0:
        return None
    crop = np.ascontiguousarray(source[py0:py1, px0:px1])
    # x4 inside each tile, brought there to the output's scale (x1 after an x1 super-
    # resolution): a region is never held at x4 when the result is smaller
    sr = realesrgan(crop, model_id, region_scale(sx, sy), ctx, progress=sub)
    sr = np.clip(resize_to(sr, ox1 - ox0, oy1 - oy0), 0.0, 1.0)
    region = image[oy0:oy1, ox0:ox1]
    inner = (slice(by0 - oy0, by1 - oy0), slice(bx0 - ox0, bx1 - ox0))
    # the region model's background tone made the photo's (no box around the line)
    sr = match_tone(sr, region, inner)
    # each edge fades over its own padding (one clipped by the photo has less or none)
    ramp_y = (max(1, round((ty0 - py0) * sy)), max(1, round((py1 - ty1) * sy)))
    ramp_x = (max(1, round((tx0 - px0) * sx)), max(1, round((px1 - tx1) * sx)))
    mask = feather_mask(oy1 - oy0, ox1 - ox0, ramp_y, ramp_x,
                        (oy0 > 0, oy1 < oh, ox0 > 0, ox1 < ow))[..., None]
    return {"padded": (ox0, oy0, ox1, oy1), "box": (bx0, by0, bx1, by1),
            "source_box": (int(tx0), int(ty0), int(tx1), int(ty1)),
            "source_quad": [[float(tx0), float(ty0)], [float(tx1), float(ty0)],
                            [float(tx1), float(ty1)], [float(tx0), float(ty1)]],
            "quad": [[bx0, by0], [bx1, by0], [bx1, by1], [bx0, by1]],
            "sr": sr, "mask": mask, "sr_pixels": crop.shape[0] * crop.shape[1],
            "read": lambda img: to_u8_bgr(img[inner])}


def _warp_rect(img: np.ndarray, line: TextLine, grow: float, size: tuple[int, int],
               scale: tuple[float, float], origin: tuple[int, int],
               interp: int = cv2.INTER_LANCZOS4) -> np.ndarray:
    """The line's rectangle, grown by ``grow`` a side, cut out of ``img`` level (along the line
    left to right, as rapidocr cuts lines to read them) into ``size`` (w, h) px; ``img`` has
    ``scale`` (x, y) px per source px and its pixel (0, 0) at ``origin`` (x, y) of that grid.
    Edges replicated."""
    w, h = size
    ka, kb = 2 * (line.hu + grow) / w, 2 * (line.hv + grow) / h  # source px per crop px
    sx, sy = scale
    # crop pixel (j, i) -> the point c + a u + b v of the source -> a pixel index of img
    a0, b0 = (0.5 - w / 2) * ka, (0.5 - h / 2) * kb
    m = np.array([[line.ux * ka * sx, -line.uy * kb * sx,
                   (line.cx + a0 * line.ux - b0 * line.uy) * sx - origin[0] - 0.5],
                  [line.uy * ka * sy, line.ux * kb * sy,
                   (line.cy + a0 * line.uy + b0 * line.ux) * sy - origin[1] - 0.5]])
    out = cv2.warpAffine(img, m, (w, h), flags=interp | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    return out[..., None] if out.ndim == 2 and img.ndim == 3 else out


def _unwarp_rect(crop: np.ndarray, line: TextLine, grow: float, box: tuple[int, int, int, int],
                 scale: tuple[float, float]) -> np.ndarray:
    """``crop`` (a :func:`_warp_rect` of the rectangle grown by ``grow``, at any size) put
    back at its place: the pixels ``box`` (x0, y0, x1, y1) of a grid of ``scale`` (x, y) px per
    source px. Lanczos, edges replicated."""
    h, w = crop.shape[:2]
    ka, kb = w / (2 * (line.hu + grow)), h / (2 * (line.hv + grow))  # crop px per source px
    sx, sy = scale
    x0, y0, x1, y1 = box
    # pixel (j, i) of the box -> its source point -> (a, b) along / across the line -> crop
    px, py = (x0 + 0.5) / sx - line.cx, (y0 + 0.5) / sy - line.cy
    m = np.array([[line.ux * ka / sx, line.uy * ka / sy,
                   (px * line.ux + py * line.uy + line.hu + grow) * ka - 0.5],
                  [-line.uy * kb / sx, line.ux * kb / sy,
                   (py * line.ux - px * line.uy + line.hv + grow) * kb - 0.5]])
    out = cv2.warpAffine(crop, m, (x1 - x0, y1 - y0),
                         flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    return out[..., None] if out.ndim == 2 and crop.ndim == 3 else out


def line_mask(line: TextLine, grow: float, box: tuple[int, int, int, int],
              scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(mask, text) over the pixels ``box`` (x0, y0, x1, y1) of a grid of ``scale`` (x, y) px
    per source px: the mask is 1 on the line's rectangle and fades (cosine, as
    :func:`feather_mask`) to 0 over ``grow`` source px around it; ``text`` is True where the
    mask is not on that padding (on the line, and outside the grown rectangle)."""
    x0, y0, x1, y1 = box
    sx, sy = scale
    xs = ((np.arange(x0, x1, dtype=np.float32) + 0.5) / sx)[None, :]
    ys = ((np.arange(y0, y1, dtype=np.float32) + 0.5) / sy)[:, None]
    a, b = line.frame(xs, ys)
    da = (line.hu + grow) - np.abs(a)  # distance inside the grown rectangle's ends
    db = (line.hv + grow) - np.abs(b)  # ... and its sides

    def ramp(d: np.ndarray) -> np.ndarray:
        return 0.5 - 0.5 * np.cos(np.pi * np.clip(d / grow, 0.0, 1.0))

    mask = (ramp(da) * ramp(db)).astype(np.float32)
    text = ((da >= grow) & (db >= grow)) | (da <= 0) | (db <= 0)
    return mask, text


def _line_region(line: TextLine, source: np.ndarray, image: np.ndarray, pad: float,
                 model_id: str, ctx: StepContext, sub: Any,
                 min_pad: int = 4) -> dict[str, Any] | None:
    """The region of a line at an angle: its rectangle, padded by ``pad`` x its own height
    (the short side), cut out of the source level, super-resolved there and put back (Lanczos
    both ways); its mask is the padded rectangle's, 1 on the line, and the legibility check
    reads the line level, as rapidocr cuts lines to read them (bicubic).

    On the real page photo turned 10 / 25 / 45 degrees (7 lines, official animevideov3 on the
    text, x1): the model ran on 0.87 / 0.65 / 0.58 x the photo's pixels (the padded boxes:
    2.9 / 4.5 / 5.4 x), 1.7 / 1.8 / 1.8 s (3.2 / 6.6 / 9.0 s); each mask covers at most 18 /
    13 / 12 % of the photo (each box up to 58 / 89 / 100 %); mean OCR confidence 0.99 (the
    boxes: 0.50 / 0.13 / 0.04). Super-resolving the padded rectangle's box under the same
    mask, with no resampling, ran on 2.2 / 2.9 / 3.1 x the photo. The two resamplings' cost,
    against a page drawn at x2 (turned 10-45 degrees, shrunk x2 as the source; PSNR on the
    lines): 0.7-1.1 dB below that box with animevideov3, 0.2 dB above it with x4plus; no loss
    of sharpness (mean gradient 1.03 x the drawn page's; the box's 1.02; bicubic 0.85-0.87).
    The mask's edge, at a slant, has outermost pixels of up to sin^2(pi / 2 pad) (at 0.5 px
    from a level box's edge: sin^2(pi / 4 pad)): a step of 0.9-1.6 levels of 255 at x1, 0.2-0.6
    at x2 there (a level box: 0.2)."""
    sh, sw = source.shape[:2]
    oh, ow = image.shape[:2]
    sy, sx = oh / sh, ow / sw
    p = float(max(min_pad, round(pad * line.height)))

    def bounds(pts: np.ndarray) -> tuple[int, int, int, int]:
        x0, y0 = np.floor(pts.min(axis=0) * (sx, sy)).astype(int)
        x1, y1 = np.ceil(pts.max(axis=0) * (sx, sy)).astype(int)
        return max(0, int(x0)), max(0, int(y0)), min(ow, int(x1)), min(oh, int(y1))

    ox0, oy0, ox1, oy1 = bounds(line.corners(p))
    bx0, by0, bx1, by1 = bounds(line.corners())
    if ox1 - ox0 < 2 or oy1 - oy0 < 2 or bx1 <= bx0 or by1 <= by0:
        return None
    # the padded rectangle, level, at the source's resolution (edges beyond the photo
    # replicated, as the detector's margin): the model works on it alone
    size = (max(1, round(2 * (line.hu + p))), max(1, round(2 * (line.hv + p))))
    crop = np.clip(_warp_rect(source, line, p, size, (1.0, 1.0), (0, 0)), 0.0, 1.0)
    sr = realesrgan(np.ascontiguousarray(crop), model_id, region_scale(sx, sy), ctx,
                    progress=sub)
    s = float(np.sqrt(sx * sy))  # (the same scale both ways, up to rounding)
    sr = resize_to(sr, max(1, round(size[0] * s)), max(1, round(size[1] * s)))
    # put back over the box of the padded rectangle in output pixels: the mask is 0 beyond it
    box = (ox0, oy0, ox1, oy1)
    sr = np.clip(_unwarp_rect(sr, line, p, box, (sx, sy)), 0.0, 1.0)
    mask, text = line_mask(line, p, box, (sx, sy))
    sr = match_tone(sr, image[oy0:oy1, ox0:ox1], text)  # over the rectangle's padding
    tight = line.corners()
    tx0, ty0 = np.floor(np.clip(tight.min(axis=0), 0, None)).astype(int)
    tx1, ty1 = np.ceil(np.minimum(tight.max(axis=0), (sw, sh))).astype(int)
    read_size = (max(1, round(2 * line.hu * s)), max(1, round(2 * line.hv * s)))

    def read(img: np.ndarray) -> np.ndarray:
        level = to_u8_bgr(_warp_rect(img, line, 0.0, read_size, (sx, sy), (ox0, oy0),
                                     cv2.INTER_CUBIC))
        # (a column of vertical text is read turned, as rapidocr reads one)
        return np.ascontiguousarray(np.rot90(level)) if read_size[1] >= 1.5 * read_size[0] \
            else level

    return {"padded": box, "box": (bx0, by0, bx1, by1),
            "source_box": (int(tx0), int(ty0), int(tx1), int(ty1)),
            "source_quad": [[round(float(x), 1), round(float(y), 1)] for x, y in tight],
            "quad": [[round(float(x) * sx, 1), round(float(y) * sy, 1)] for x, y in tight],
            "sr": sr, "mask": mask[..., None], "sr_pixels": size[0] * size[1], "read": read}


# --------------------------------------------------------------------------- the step
def _text_models(params: Mapping[str, Any], mask: bool) -> tuple[str, ...]:
    """The models ``text_fusion`` loads (``StepSpec.loads``): its OCR backend's from the store
    (rapidocr's bundled ``pp-ocr``; none for PaddleOCR, see :func:`_text_requires`), then the
    Real-ESRGAN its ``model`` param names, for the text regions it finds."""
    try:
        ocr = BACKENDS[ocr_backend(str(params.get("ocr", "auto")))].model_id
    except UsageError:  # (said before any step runs: _text_requires)
        ocr = None
    return tuple(m for m in (ocr, str(params.get("model", "realesrgan-x4plus"))) if m)


def _text_requires(params: Mapping[str, Any], mask: bool = False, runtime: Any = None) -> None:
    """What ``text_fusion`` raises when it starts for its ``ocr`` param (``StepSpec.requires``):
    an unknown backend, or PaddleOCR chosen and not installed."""
    require = getattr(BACKENDS[ocr_backend(str(params.get("ocr", "auto")))], "require", None)
    if require is not None:
        require()


@register_step(
    "text_fusion",
    models=("pp-ocr", "realesrgan-x4plus"),
    description="Detect text (PP-OCR), super-resolve the text regions of the source with "
                "Real-ESRGAN and blend them into the result.",
    defaults={"ocr": "auto", "model": "realesrgan-x4plus", "pad": 0.3, "guard": True,
              "det_max_side": 2048, "det_tile": 1280},
    loads=_text_models,
    requires=_text_requires,
)
def text_fusion(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    model_id = str(params.get("model", "realesrgan-x4plus"))
    if model_id not in REALESRGAN_MODELS:
        raise UsageError(f"unknown Real-ESRGAN model {model_id!r} for text regions")
    pad = float(params.get("pad", 0.3))
    guard = bool(params.get("guard", True))
    source = ctx.artifacts.get("source")
    if source is None:
        source = image
    oh, ow = image.shape[:2]

    ctx.progress.update(0.0, "finding text")
    ocr = get_ocr(ctx, str(params.get("ocr", "auto")))
    # text is looked for and read as it is seen: over a background where transparent (the
    # colour stored under transparent pixels is not what anyone sees; a logo of black glyphs
    # on transparency would be black on black)
    alpha = ctx.artifacts.get("alpha")
    seen_src, seen_img = source, image
    if alpha is not None and float(np.min(alpha)) < 1.0:
        seen_src = _over_background(source, alpha, ctx.progress.check)
        seen_img = _over_background(image, resize_to(alpha[..., None], ow, oh)[..., 0]
                                    if alpha.shape[:2] != (oh, ow) else alpha,
                                    ctx.progress.check)
    det_max, det_tile = int(params.get("det_max_side", 2048)), int(params.get("det_tile", 1280))
    if ctx.whole is None:
        quads = _detect_text(ocr, seen_src, det_max, det_tile, ctx)
    else:
        quads = _detect_for_part(ocr, ctx.whole, det_max, det_tile, ctx)
    ctx.progress.update(0.1, f"{len(quads)} text region(s)")
    out = image.copy()
    cands: list[dict[str, Any]] = []
    n = max(1, len(quads))
    for i, quad in enumerate(quads):
        ctx.progress.check()
        sub = ctx.progress.sub(0.1 + 0.8 * i / n, 0.8 / n)
        line = text_line(quad)
        if fits_its_box(line):
            reg = _box_region(quad, source, image, pad, model_id, ctx, sub)
        else:
            reg = _line_region(line, source, image, pad, model_id, ctx, sub)
        if reg is None:
            continue
        ox0, oy0, ox1, oy1 = reg["padded"]
        region, mask = image[oy0:oy1, ox0:ox1], reg["mask"]
        fused = region * (1.0 - mask) + reg["sr"] * mask
        seen = seen_img[oy0:oy1, ox0:ox1]
        if seen_img is not image:  # the fused region as seen over the background too
            fused = seen + (fused - region)
        read = reg.pop("read")
        cands.append({**reg, "before_crop": read(seen), "after_crop": read(fused)})
        del fused
    ctx.progress.update(0.9, "reading the text before and after")
    rec_before = _read_all(ocr, [c["before_crop"] for c in cands], ctx)
    rec_after = _read_all(ocr, [c["after_crop"] for c in cands], ctx)
    regions: list[dict[str, Any]] = []
    boxes: list[list[int]] = []
    quads: list[list[list[float]]] = []
    for c, (text_before, conf_before), (text_after, conf_after) in zip(
            cands, rec_before, rec_after, strict=True):
        kept = not (guard and conf_after < conf_before - 0.02)
        ox0, oy0, ox1, oy1 = c["padded"]
        if kept:
            # laid over what is already there (an earlier overlapping region included): where
            # regions overlap the photo keeps weight prod(1 - mask), no restoration is undone
            m = c["mask"]
            out[oy0:oy1, ox0:ox1] = out[oy0:oy1, ox0:ox1] * (1.0 - m) + c["sr"] * m
        boxes.append(list(c["source_box"]))
        quads.append(c["source_quad"])
        regions.append({"box": list(c["box"]), "padded": list(c["padded"]), "quad": c["quad"],
                        "sr_pixels": c["sr_pixels"],
                        "text_before": text_before, "confidence_before": conf_before,
                        "text_after": text_after if kept else text_before,
                        "confidence_after": conf_after if kept else conf_before,
                        "fused": kept})
    before = float(np.mean([r["confidence_before"] for r in regions])) if regions else None
    after = float(np.mean([r["confidence_after"] for r in regions])) if regions else None
    ctx.artifacts["text_boxes"] = boxes
    ctx.artifacts["text_quads"] = quads  # (a line at an angle: its corners, source px)
    ctx.artifacts["ocr_confidence_before"] = before
    ctx.artifacts["ocr_confidence_after"] = after
    ctx.artifacts["ocr_regions"] = regions
    ctx.progress.update(1.0, "text regions done")
    fused_n = sum(r["fused"] for r in regions)
    if not regions:
        return StepOutput(image, f"{ocr.name}:pp-ocr", notes="no text found")
    notes = (f"{fused_n}/{len(regions)} text region(s) fused; OCR confidence "
             f"{before:.2f} -> {after:.2f}")
    return StepOutput(out, model_id, notes=notes)
