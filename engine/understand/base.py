"""The one interface every degradation classifier implements, and its registry.

Cancel: a classifier created with ``cancel_check`` (a job's ``Progress.check``: raises
:class:`~engine.errors.Cancelled` once the job is cancelled) honours it inside its work - the
analyzer between its measurements, the model backends layer by layer inside the model
(``tiling.checking``) - and a cancel is raised for the whole batch, never kept as one photo's
error.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

from ..api import Diagnosis
from ..errors import EngineError, UsageError


class Classifier(Protocol):
    name: str

    def available(self) -> bool:
        """True when everything it needs (weights, packages) is installed."""

    def classify(self, image: np.ndarray, photo: Any | None = None) -> Diagnosis:
        """``image``: float32 RGB in [0, 1], (H, W, 3). ``photo``: the loaded Photo (metadata)."""

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

    def available(self) -> bool:
        from ..errors import EngineError

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
                  scores: dict[str, float]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The analyzer's estimates merged with ``extra``, and flags from ``scores``."""
        from .vlm import _merge_estimates, class_flags

        if self.with_measurements:
            base, est = _merge_estimates(image, photo, extra, self.cancel_check)
            return est, class_flags(base.flags, scores)
        return extra, class_flags((), scores)
