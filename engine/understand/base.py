"""The one interface every degradation classifier implements, and its registry."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ..api import Diagnosis
from ..errors import UsageError


class Classifier(Protocol):
    name: str

    def available(self) -> bool:
        """True when everything it needs (weights, packages) is installed."""

    def classify(self, image: np.ndarray, photo: Any | None = None) -> Diagnosis:
        """``image``: float32 RGB in [0, 1], (H, W, 3). ``photo``: the loaded Photo (metadata)."""

    def classify_batch(self, images: list[np.ndarray], photos: list[Any | None]) -> list[Diagnosis]:
        """Several photos at once (VLM batches); default loops over classify."""


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
