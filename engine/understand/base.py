"""The one interface every degradation classifier implements, and its registry.

Cancel: a classifier created with ``cancel_check`` (a job's ``Progress.check``: raises
:class:`~engine.errors.Cancelled` once the job is cancelled) honours it inside its work - the
analyzer between its measurements, the model backends layer by layer inside the model
(``tiling.checking``) - and a cancel is raised for the whole batch, never kept as one photo's
error.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

from ..api import Diagnosis
from ..errors import BadImage, EngineError, UsageError


class Classifier(Protocol):
    name: str

    def available(self) -> bool:
        """True when everything it needs (weights, packages) is installed."""

    def classify(self, image: np.ndarray, photo: Any | None = None) -> Diagnosis:
        """``image``: float32 RGB in [0, 1], (H, W, 3) (grey, alpha and integer
        arrays are read as ``as_rgb`` reads them). ``photo``: the loaded Photo (metadata)."""

    def classify_batch(self, images: list[np.ndarray], photos: list[Any | None]
                       ) -> list[Diagnosis | EngineError]:
        """Several photos at once (VLM batches). One entry per photo, in order: its Diagnosis,
        or the EngineError that photo alone met (an unreadable VLM answer), so one photo never
        costs the others theirs. Errors that stop them all (a missing model, a cancel:
        ``Cancelled``) are raised. ``photos`` has one entry (or None) per image."""


def photos_for(images: list[np.ndarray], photos: list[Any | None] | None) -> list[Any | None]:
    """``photos`` checked against ``images``: one each (None for no metadata)."""
    if photos is None:
        return [None] * len(images)
    photos = list(photos)
    if len(photos) != len(images):
        raise UsageError(f"{len(images)} image(s) but {len(photos)} photo(s): give one photo "
                         "(or None) per image")
    return photos


def single(results: list[Diagnosis | EngineError]) -> Diagnosis:
    """The one diagnosis of a one-photo batch; that photo's error is raised."""
    (d,) = results
    if isinstance(d, EngineError):
        raise d
    return d


def _planes(image: Any) -> np.ndarray:
    """The photo's colour planes as a view: (H, W, 3) for RGB/RGBA, (H, W) for grey
    ((H, W), (H, W, 1) or grey + alpha). A shape that is no photo is BadImage."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] in (1, 2):
        a = a[..., 0]
    elif a.ndim == 3 and a.shape[2] >= 3:
        a = a[..., :3]
    if a.ndim not in (2, 3) or a.size == 0 or a.dtype.kind not in "biuf":
        raise BadImage("<array>", f"not a photo: an array of shape {np.shape(image)} and type "
                                  f"{np.asarray(image).dtype}")
    return a


_DEPTH_SCALES = (255.0, 65535.0, float(2 ** 32 - 1))  # 8, 16 and 32 bits


def _unit_scale(a: np.ndarray) -> float:
    """What 1.0 is in the samples of ``a``: uint8 and uint16 (the photo types) by their type,
    255 and 65535; floats and booleans as they are (1.0). Any other integer type says nothing
    of the photo's bit depth (an 8-bit photo's ``astype(int)``; Pillow's 32-bit "I" mode,
    which holds 16-bit PNG and TIFF samples): its samples are read on the smallest of the 8-,
    16- and 32-bit scales that holds their largest value (``imageio`` reads "I" data as 16-bit
    the same way unless a sample is beyond 65535) - its type's own maximum (int32: 2**31 - 1)
    made such a photo black. So an all-but-black 16-bit photo (every sample at most 255) held
    in such a type reads as 8-bit: give it as uint16. Negative samples are read as 0."""
    if a.dtype.kind not in "iu":
        return 1.0
    if a.dtype in (np.uint8, np.uint16):
        return float(np.iinfo(a.dtype).max)
    top = int(a.max())
    return next((s for s in _DEPTH_SCALES if top <= s), _DEPTH_SCALES[-1])


def as_rgb(image: Any) -> np.ndarray:
    """``image`` as the classifiers' float32 RGB, (H, W, 3), on the scale [0, 1]: the contract's
    float RGB is returned as it is (a view, no copy); grey ((H, W), (H, W, 1)) is repeated into
    three channels, alpha dropped, integer samples scaled to [0, 1] (uint8 by 255, uint16 by
    65535, other integer types by the bit depth their values need: ``_unit_scale``).
    Non-finite values are left for the caller (``measure`` re-measures a cleaned copy)."""
    a = _planes(image)
    scale = _unit_scale(a)
    a = a.astype(np.float32, copy=False)
    if scale != 1.0:
        a = np.maximum(a / np.float32(scale), np.float32(0.0))
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return a


def model_rgb8(image: Any, max_pixels: int, min_side: int = 0, min_size: int = 1) -> np.ndarray:
    """The photo as 8-bit RGB for a model's image processor, (H, W, 3) uint8, reduced (area
    average, before anything is converted) to about ``2 * max_pixels`` when larger - the
    processor resizes again, so the full-resolution copies (a 60 MP photo: 1.4 GB, 10 s) are
    never made - but keeping the short side at ``min_side`` or the photo's own, and each side
    at least ``min_size``. Grey, alpha and integer photos are read as ``as_rgb``
    reads them; NaN is 0 and values are clipped into [0, 1]."""
    a = _planes(image)
    scale = _unit_scale(a)
    h, w = a.shape[:2]
    if h * w > 2 * max_pixels:
        f = math.sqrt(2 * max_pixels / (h * w))
        if min_side:
            f = max(f, min(1.0, min_side / min(h, w)))
        if f < 1.0:
            import cv2

            if a.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
                a = a.astype(np.float32)
            size = (max(min_size, int(w * f)), max(min_size, int(h * f)))
            a = cv2.resize(np.ascontiguousarray(a), size, interpolation=cv2.INTER_AREA)
    a = a.astype(np.float32)
    if scale != 1.0:
        a /= np.float32(scale)
    np.nan_to_num(a, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    out = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return out


ClassifierFactory = Callable[..., Classifier]
CLASSIFIERS: dict[str, ClassifierFactory] = {}


def register_classifier(name: str) -> Callable[[ClassifierFactory], ClassifierFactory]:
    def deco(factory: ClassifierFactory) -> ClassifierFactory:
        CLASSIFIERS[name] = factory
        return factory

    return deco


def get_classifier(name: str, **kwargs: Any) -> Classifier:
    from . import _modules  # noqa: F401  (registers every backend)

    if name not in CLASSIFIERS:
        raise UsageError(f"unknown classifier backend {name!r}; known: {', '.join(sorted(CLASSIFIERS))}")
    return CLASSIFIERS[name](**kwargs)


CancelCheck = Callable[[], None]


class StoredModelClassifier:
    """Shared plumbing of the backends whose weights come from the model store (CLIP, VLM):
    the runtime, the model choice, availability, the cancel check, and the analyzer's
    measurements merged in."""

    name = "model"

    def __init__(self, runtime: Any | None = None, model_id: str | None = None,
                 with_measurements: bool = True,
                 cancel_check: CancelCheck | None = None) -> None:
        self.runtime = runtime
        self.model_id = model_id
        self.with_measurements = with_measurements
        self.cancel_check = cancel_check

    def _check(self) -> None:
        if self.cancel_check is not None:
            self.cancel_check()

    @contextlib.contextmanager
    def _checking(self, model: Any) -> Iterator[None]:
        """While open, the cancel check runs before every layer that runs in this thread
        (one global forward pre-hook, removed on leaving: ``tiling.checking``), so a cancel
        stops a forward pass or a ``generate`` within a layer."""
        from ..tiling import checking

        with checking(model, self.cancel_check):
            yield

    def _rt(self) -> Any:
        if self.runtime is None:
            from .runtime_default import default_runtime

            self.runtime = default_runtime()
        return self.runtime

    def pick_model(self) -> str:  # pragma: no cover - each backend chooses its own
        raise NotImplementedError

    def _runs(self, model_id: str) -> str:
        """``model_id``, once PyTorch, which every stored classifier runs on, is found
        importable: else :class:`TorchMissing` (the frozen app without the environment the
        installer makes), before a photo is decoded for it."""
        check = getattr(self._rt(), "torch_missing", None)
        err = check([model_id]) if check is not None else None
        if err is not None:
            raise err
        return model_id

    def _not_installed(self, model_ids: tuple[str, ...], missing: EngineError) -> EngineError:
        """The error when none of ``model_ids`` can be used: a damaged or partly installed
        one's own (ModelFileCorrupt naming the file, "N of its files are missing", unlisted
        weights in its folder), which says what to repair; ``missing`` when none is there."""
        rt = self._rt()
        status = getattr(getattr(rt, "store", None), "status", None)
        for mid in model_ids:
            try:
                state = status(mid) if status is not None else None
            except (EngineError, KeyError):  # (an id the manifest does not know)
                continue
            if state not in ("corrupt", "partial"):
                continue
            try:
                rt.path(mid)
            except EngineError as e:
                return e
        return missing

    def available(self) -> bool:
        try:
            self.pick_model()
            return True
        except EngineError:
            return False

    def classify(self, image: np.ndarray, photo: Any | None = None) -> Diagnosis:
        return single(self.classify_batch([image], [photo]))

    def classify_batch(self, images: list[np.ndarray], photos: list[Any | None]
                       ) -> list[Diagnosis | EngineError]:  # pragma: no cover
        raise NotImplementedError

    def _measured(self, image: np.ndarray, photo: Any | None, extra: dict[str, Any],
                  scores: dict[str, float], label: Any | None = None
                  ) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The analyzer's estimates merged with ``extra``, and flags from ``scores`` and the
        ``label`` (a Degradation)."""
        from .vlm import _merge_estimates, class_flags

        if self.with_measurements:
            base, est = _merge_estimates(image, photo, extra, self.cancel_check)
            return est, class_flags(base.flags, scores, label)
        return extra, class_flags((), scores, label)
