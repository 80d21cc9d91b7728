"""Degradation understanding: built-in analyzer, CLIP zero-shot, Qwen2.5-VL.

``diagnose(image, photo=None, backend="auto", runtime=None) -> Diagnosis`` is the entry point;
backends ("builtin", "clip", "vlm", "auto") are registered in ``base.CLASSIFIERS``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..api import Diagnosis
from ..errors import EngineError
from .base import CLASSIFIERS, get_classifier, photos_for, register_classifier, single

__all__ = ["CLASSIFIERS", "diagnose", "diagnose_many", "get_classifier", "register_classifier"]


def diagnose(image: np.ndarray, photo: Any | None = None, backend: str = "auto",
             runtime: Any | None = None, *, cancel_check: Callable[[], None] | None = None,
             **options: Any) -> Diagnosis:
    """What is wrong with ``image`` (float32 RGB in [0, 1], (H, W, 3); grey (H, W) or
    (H, W, 1), alpha and integer arrays are read as that too: ``base.as_rgb``).

    ``photo`` (the loaded Photo) gives metadata such as the JPEG quantisation tables.
    ``backend``: "builtin" (no download), "clip", "vlm" (Qwen2.5-VL, ``mode="paper"`` or
    ``"structured"``) or "auto" (the VLM on a GPU when installed, else the analyzer).
    The analyzer's physical estimates are in ``Diagnosis.estimates`` for every backend.
    ``cancel_check`` (a job's ``Progress.check``) is called inside the work - between the
    analyzer's measurements, before every layer of a model - and its
    :class:`~engine.errors.Cancelled` stops the diagnosis there.
    """
    return single(diagnose_many([image], [photo], backend, runtime, cancel_check=cancel_check,
                                **options))


def diagnose_many(images: list[np.ndarray], photos: list[Any | None] | None = None,
                  backend: str = "auto", runtime: Any | None = None, *,
                  cancel_check: Callable[[], None] | None = None,
                  **options: Any) -> list[Diagnosis | EngineError]:
    """Several photos at once (the VLM batches them). ``photos``: one per image (or None),
    else UsageError. One entry per image: its Diagnosis, or the EngineError of that photo
    alone (see ``Classifier.classify_batch``); a cancel (``cancel_check``, see ``diagnose``)
    raises :class:`~engine.errors.Cancelled` for them all."""
    images = list(images)
    photos = photos_for(images, photos)
    if cancel_check is not None:
        cancel_check()
        options["cancel_check"] = cancel_check  # (only then: a backend may not take it)
    clf = get_classifier(backend, runtime=runtime, **options)
    return clf.classify_batch(images, photos)
