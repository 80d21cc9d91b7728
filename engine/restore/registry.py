"""Registry of restoration steps. Each specialist module registers its steps with a decorator.

A step is ``fn(image, params, ctx) -> StepOutput`` where ``image`` is float32 RGB in [0, 1],
shape (H, W, 3). Steps report progress through ``ctx.progress`` (0..1 of their own slice) and
must call ``ctx.progress.check()`` (or ``update``) at least once per tile. A native call that
cannot stop part-way and may take longer than a fraction of a second (a face cascade, an ONNX
Runtime run, OpenCV inpainting) goes through :func:`call_cancellable`.
"""
from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..api import Diagnosis
from ..devices import DeviceInfo
from ..errors import UsageError
from ..progress import Progress

log = logging.getLogger(__name__)
T = TypeVar("T")

# how often a step waiting on a native call looks at the job's cancel token (s)
CANCEL_POLL = 0.02


_VIEW_BAND_ROWS = 512  # rows of the whole photo copied at a time (WholePhoto.view)


# a preview's fill of the photo's transparent pixels: (box | None, check) -> that part of the
# photo filled (None: all of it), as ``pipeline.TransparentFill`` makes it
Fill = Callable[[tuple[int, int, int, int] | None, Callable[[], None] | None], np.ndarray]


class WholePhoto:
    """A preview's whole photo (``JobRequest.region``): the steps run on the part ``box``
    (x0, y0, x1, y1, source px) of it, and a step whose detector looks at the whole photo in a
    whole-photo run (the glare mask, faces, text lines) looks at it here too, through
    :meth:`view`, and cuts what it found to the part (:meth:`to_part`), so that a face or a
    line the part's edge cuts, or a threshold that follows the whole photo's statistics, is
    found as the real fix finds it.

    ``pixels``: float32 RGB (H, W, 3), the chain's input (transparent pixels filled); with
    ``fill``, the photo as loaded, whose transparent pixels ``fill`` fills as the whole fix
    does, when asked: the part for the steps (:meth:`filled_part`), the whole only for a step
    that looks at it (:meth:`filled`). A 120-megapixel transparent photo's whole fill took
    17 s of a preview whose steps never looked beyond the part. ``region``: the part the
    preview shows (within ``box``, which adds the context around it; None: all of ``box``);
    ``context``: the region and its margin of context, when ``box`` was grown beyond them to
    hold whole the faces a face step restores after an upscale (None: ``box``); ``faces``:
    the faces found in the whole photo to grow it (``face.FaceSearch``), which the face step
    restores without looking for them again (None: it looks)."""

    def __init__(self, pixels: np.ndarray, alpha: np.ndarray | None,
                 box: tuple[int, int, int, int],
                 region: tuple[int, int, int, int] | None = None,
                 fill: Fill | None = None,
                 context: tuple[int, int, int, int] | None = None,
                 faces: Any = None) -> None:
        self.alpha = alpha  # float (H, W) or None
        self.box = tuple(int(v) for v in box)
        self.region = region
        self.context = context
        self.faces = faces
        self._fill = fill
        self._photo: np.ndarray | None = pixels if fill is not None else None
        self._whole: np.ndarray | None = None if fill is not None else pixels
        self._part: np.ndarray | None = None

    def filled(self, check: Callable[[], None] | None = None) -> np.ndarray:
        """The whole photo as the chain's input (transparent pixels filled): filled at the
        first call (``check`` between its bands), after which the photo as loaded is let go."""
        if self._whole is None:
            self._whole = self._fill(None, check)
            self._photo = self._fill = None
        return self._whole

    @property
    def pixels(self) -> np.ndarray:
        """:meth:`filled` (a step that looks at the whole photo should call that, with its
        progress's ``check``: a large photo's fill takes seconds)."""
        return self.filled()

    def filled_part(self, check: Callable[[], None] | None = None) -> np.ndarray:
        """The part ``box`` of :meth:`filled` (the same pixels), filled alone when the whole
        has not been (always the same array)."""
        if self._part is None:
            x0, y0, x1, y1 = self.box
            if self._whole is not None:
                self._part = self._whole[y0:y1, x0:x1]
            else:
                self._part = self._fill(self.box, check)
        return self._part

    @property
    def part(self) -> np.ndarray:
        return self.filled_part()

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the whole photo (nothing filled for it)."""
        held = self._whole if self._whole is not None else self._photo
        return held.shape[:2]

    def scale_of(self, image: np.ndarray) -> tuple[float, float]:
        """(sx, sy): ``image`` px per source px (a chain's x2 / x4 result)."""
        x0, y0, x1, y1 = self.box
        return image.shape[1] / (x1 - x0), image.shape[0] / (y1 - y0)

    def view(self, image: np.ndarray, check: Callable[[], None] | None = None) -> np.ndarray:
        """The whole photo (source px) as a step that gets ``image`` (the part, as the steps
        before it left it, at any scale) would see it in a whole-photo run: the photo itself
        where the steps before changed nothing (no copy), else a copy with ``image`` (brought
        to source scale) in place of its part; outside the part the photo is as it was (the
        steps before did not run there: a detector near the part's edge sees unprocessed
        pixels beyond it). The copy is made in bands of rows with ``check`` (a progress's
        ``check``) between them: a 120-megapixel photo's took 3.3 s no cancel could stop."""
        part = self.filled_part(check)
        whole = self.filled(check)
        if image is part or (image.shape == part.shape and np.array_equal(image, part)):
            return whole
        x0, y0, x1, y1 = self.box
        if image.shape[:2] != part.shape[:2]:
            import cv2

            image = cv2.resize(np.ascontiguousarray(image, np.float32), (x1 - x0, y1 - y0),
                               interpolation=cv2.INTER_AREA)
        out = np.empty_like(whole)
        for r0 in range(0, out.shape[0], _VIEW_BAND_ROWS):
            if check is not None:
                check()
            out[r0:r0 + _VIEW_BAND_ROWS] = whole[r0:r0 + _VIEW_BAND_ROWS]
        out[y0:y1, x0:x1] = image
        return out

    def to_part(self, arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """``arr`` (a whole-photo map at source scale, e.g. a mask) cut to the part and brought
        to ``shape`` (h, w: the step's image, nearest neighbour)."""
        x0, y0, x1, y1 = self.box
        cut = np.ascontiguousarray(arr[y0:y1, x0:x1])
        if cut.shape[:2] != tuple(shape):
            import cv2

            cut = cv2.resize(cut, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        return cut


@dataclass
class StepContext:
    device: DeviceInfo
    progress: Progress
    runtime: Any  # engine.models.runtime.ModelRuntime: store + loaded-model cache
    diagnosis: Diagnosis | None = None
    mask: np.ndarray | None = None  # uint8 (H, W), 255 = reflection to remove
    tile_size: int = 512
    warnings: list[str] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)  # boxes, masks, OCR scores for the UI
    # a preview's whole photo (None in a whole-photo run): detectors look at it, see WholePhoto
    whole: WholePhoto | None = None


@dataclass(frozen=True)
class StepOutput:
    image: np.ndarray
    # the id of the store's model it used ("+"-joined when several), else what made the result:
    # "builtin:<method>" (a built-in method), "user:mask" (the mask the user gave), "<OCR
    # backend>:pp-ocr"; only the ids go into the job's ``models`` (``pipeline.used_models``)
    model: str
    notes: str = ""


StepFn = Callable[[np.ndarray, Mapping[str, Any], StepContext], StepOutput]
# (params with the step's defaults merged in, whether the job gives a reflection mask) -> the
# model ids the step loads, in the order it loads them
LoadsFn = Callable[[Mapping[str, Any], bool], tuple[str, ...]]
# (the same params, the same mask flag, the engine's model runtime) -> None, or raises what the
# step would raise when it starts (``StepSpec.requires``)
RequiresFn = Callable[[Mapping[str, Any], bool, Any], None]


@dataclass(frozen=True)
class StepSpec:
    name: str
    fn: StepFn
    # model ids it may need with its default params (for packs and "what will download"); the
    # other models a param may choose are its ``choices``
    models: tuple[str, ...]
    description: str
    defaults: Mapping[str, Any]
    # the models the step loads with these params (``pipeline.plan_models``: a job lacking one
    # fails before any step runs), for a step whose params decide that: an explicit choice of
    # a model it otherwise uses only when installed (a detector), none at a strength that
    # changes nothing. None: every id of ``models`` but the optional ones
    # (``profiles.OPTIONAL_MODELS``), the ``model`` param's choice (``choices``) in place of
    # the ids among its choices
    loads: LoadsFn | None = None
    # ``requires(params, mask, runtime)`` raises, before any step runs, what the step would
    # raise when it starts for what its params need beyond the store's models being installed
    # (a Python package: the PaddleOCR backend, ultralytics for an explicit YOLO detector; the
    # kind of file a slot holds: an ONNX export for YOLO); ``mask``: the job gives a reflection
    # mask; ``runtime``: the engine's (its store). None: nothing beyond its models
    requires: RequiresFn | None = None
    # the values a param may take when it chooses among a fixed few, a model among its
    # alternatives above all (``model``: the Real-ESRGAN, NAFNet or face model; ``sam_model``):
    # ``param_choice`` checks them, ``pipeline.plan_models`` and the estimate follow the
    # chosen model, the app's plan editor offers them. ``models`` lists only the defaults
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


STEPS: dict[str, StepSpec] = {}


def register_step(
    name: str,
    *,
    models: tuple[str, ...] = (),
    description: str = "",
    defaults: Mapping[str, Any] | None = None,
    loads: LoadsFn | None = None,
    requires: RequiresFn | None = None,
    choices: Mapping[str, tuple[Any, ...]] | None = None,
) -> Callable[[StepFn], StepFn]:
    def deco(fn: StepFn) -> StepFn:
        if name in STEPS:
            raise RuntimeError(f"step {name!r} registered twice")
        STEPS[name] = StepSpec(name, fn, tuple(models), description or (fn.__doc__ or "").strip(),
                               dict(defaults or {}), loads, requires,
                               {k: tuple(v) for k, v in (choices or {}).items()})
        return fn

    return deco


def turned_off(params: Mapping[str, Any]) -> bool:
    """Whether a step with a ``strength`` (``params``: its defaults merged in) is turned off
    by it (0 or below): every such step (``denoise_builtin``, ``sharpen_builtin``,
    ``deblur_builtin``, ``dereflect_nafnet``) then hands its input on untouched, loading and
    measuring nothing. A strength that cannot be read is not "off": the step says what is
    wrong with it."""
    try:
        return float(params.get("strength", 1.0)) <= 0
    except (TypeError, ValueError):
        return False


def param_choice(name: str, params: Mapping[str, Any], key: str = "model") -> Any:
    """Step ``name``'s param ``key`` (its default when absent or None), one of the values the
    step's ``choices`` allow for it. A plan is data the user may edit: another value is a
    :class:`UsageError` naming the choices (before any step runs: ``pipeline.plan_models``
    asks the same of the ``model`` a step loads)."""
    spec = STEPS[name]
    allowed = spec.choices[key]
    value = params.get(key)
    if value is None:
        value = spec.defaults.get(key)
    if value in allowed:
        return value
    raise UsageError(f"step {name}: unknown {key} {value!r}; choose one of "
                     f"{', '.join(str(v) for v in allowed)}")


def get_step(name: str) -> StepSpec:
    _load_all()
    try:
        return STEPS[name]
    except KeyError:
        raise UsageError(f"unknown step {name!r}; known: {', '.join(sorted(STEPS))}") from None


def all_steps() -> dict[str, StepSpec]:
    _load_all()
    return dict(STEPS)


def _load_all() -> None:
    """Import every specialist module so that its steps register."""
    from . import _modules  # noqa: F401


# ------------------------------------------------------------------------- step helpers

def step_tile(params: Mapping[str, Any], ctx: StepContext, step: str) -> int:
    """The tile size (px) of a tiled model step: its own ``tile`` param, or the engine's tile
    size when the param is absent or None. A plan is data the user may edit: a tile outside
    the engine's bounds (``engine.pipeline.MIN_TILE`` .. ``MAX_TILE``, as for ``--tile``) or
    not a whole number is a :class:`UsageError` (a 1-px tile would mean one model call per
    pixel, a 10^6-px one a photo-sized model call)."""
    from ..pipeline import MAX_TILE, MIN_TILE  # (here: engine.pipeline imports this module)

    value = params.get("tile")
    if value is None:
        return int(ctx.tile_size)
    try:
        tile = int(value)
        whole = not isinstance(value, bool) and float(value) == tile
    except (TypeError, ValueError, OverflowError):
        tile, whole = 0, False
    if not whole or not MIN_TILE <= tile <= MAX_TILE:
        raise UsageError(f"step {step}: tile must be a whole number of px between {MIN_TILE} "
                         f"and {MAX_TILE} (got {value!r}); leave it out to use the engine's "
                         f"tile size ({ctx.tile_size} px)")
    return tile


def call_cancellable(fn: Callable[[], T], check: Callable[[], None] | None, *,
                     slot: Any, stop: Callable[[], None] | None = None,
                     name: str = "mend-native", poll: float = CANCEL_POLL) -> T:
    """``fn()``, one native call that cannot stop part-way (a Haar cascade, an ONNX Runtime
    run, ``cv2.inpaint``, a model's loading), run in a worker thread while this thread looks at
    ``check`` (a progress's ``check``) every ``poll`` s. On a cancel ``Cancelled`` is raised
    here at once: ``stop()`` asks the call to end early where it can (``RunOptions.terminate``),
    and the call is abandoned (its result or error is dropped when it ends). A
    ``KeyboardInterrupt`` (the CLI's Ctrl+C or SIGTERM) or ``SystemExit`` raised here while
    waiting abandons it the same way.

    ``slot`` (a ``threading.Lock`` shared by the calls of one kind) is taken before the call
    starts (waiting for it polls ``check`` too) and released by the worker when the call has
    ended, abandoned or not: at most one such call runs at a time, so calls that cancelled
    jobs left behind never pile up CPU or memory across jobs. Without ``check`` ``fn`` runs in
    this thread (still in its slot). A failed call whose job was cancelled meanwhile raises
    ``Cancelled`` (a stopped ONNX run fails).

    The worker is not a daemon thread (a daemon thread inside OpenCV or torch when the
    interpreter finalizes is killed there, and the process aborts: "terminate called without
    an active exception"), so a normal exit waits for an abandoned call: a program that knows
    its exit code leaves without waiting through :func:`exit_leaving_abandoned_calls`."""
    if check is None:
        with slot:
            return fn()
    check()
    while not slot.acquire(timeout=poll):
        check()
    box: dict[str, Any] = {}
    lock = threading.Lock()
    done = threading.Event()

    def work() -> None:
        try:
            value = fn()
            with lock:
                if not box.get("abandoned"):
                    box["value"] = value
        except BaseException as e:  # noqa: BLE001 - handed to the caller, raised there
            with lock:
                if not box.get("abandoned"):
                    box["error"] = e
        finally:
            slot.release()
            done.set()
            with _ABANDONED_LOCK:
                _ABANDONED.discard(done)

    try:
        threading.Thread(target=work, name=name, daemon=False).start()
    except BaseException:
        slot.release()
        raise
    try:
        while not done.wait(poll):
            check()
        if "error" in box:
            check()  # a run stopped by a cancel fails: that is the cancel
    except BaseException:  # a cancel, or the program quitting (Ctrl+C, SIGTERM)
        with lock:
            box.clear()
            box["abandoned"] = True
        with _ABANDONED_LOCK:
            if not done.is_set():  # (else its worker has ended already)
                _ABANDONED.add(done)
        if stop is not None:
            try:
                stop()
            except Exception:  # the cancel stands; the call then just runs to its end
                log.debug("could not stop an abandoned %s call", name, exc_info=True)
        raise
    if "error" in box:
        err = box.pop("error")
        try:
            raise err
        finally:
            del err
    return box.pop("value")


# the calls abandoned while still running (their ``done`` events; a worker removes its own
# when it ends)
_ABANDONED: set[threading.Event] = set()
_ABANDONED_LOCK = threading.Lock()


def abandoned_calls() -> int:
    """How many abandoned calls (a cancelled job's model load or native call) still run."""
    with _ABANDONED_LOCK:
        return sum(not d.is_set() for d in _ABANDONED)


def exit_leaving_abandoned_calls(code: int, grace: float = 0.2) -> None:
    """At the end of a program that has finished its work (the CLI's ``mend``, the app once
    its window has shut down): when abandoned calls still run after ``grace`` s - a cancelled
    model load that would take seconds to a minute more, a native call nothing can stop -
    leave now with ``code`` instead of having Python's exit wait for their threads: the
    standard streams and the log are flushed, then ``os._exit``. Nothing is lost: their results
    were dropped already, and Mend writes its files atomically (an unfinished temporary file
    is never a result). Returns, for the normal exit, when none are left."""
    import time

    end = time.monotonic() + grace
    while abandoned_calls() and time.monotonic() < end:
        time.sleep(0.01)
    if not abandoned_calls():
        return
    log.info("leaving %d abandoned call(s) running at exit", abandoned_calls())
    exit_now(code)


def exit_now(code: int) -> None:
    """Leave the process with ``code`` at once (``os._exit``) once the log and the standard
    streams are flushed: for a program whose work is done but whose threads cannot be stopped
    or waited for (``exit_leaving_abandoned_calls``; the app's engine thread left running)."""
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # (a closed pipe: nothing more can be said there)
            pass
    os._exit(code)
