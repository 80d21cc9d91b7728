"""The "auto" backend: the paper's VLM on a GPU when its weights are installed, else the
built-in analyzer. Measurements always ride along (every backend merges them)."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..api import Diagnosis
from ..errors import EngineError
from .base import register_classifier

log = logging.getLogger(__name__)


@register_classifier("auto")
class AutoClassifier:
    name = "auto"

    def __init__(self, runtime: Any | None = None, **kwargs: Any) -> None:
        self.runtime = runtime
        self._kwargs = kwargs
        self._chosen: Any = None

    def choose(self) -> Any:
        if self._chosen is not None:
            return self._chosen
        from .analyzer import BuiltinAnalyzer
        from .vlm import VLMClassifier

        chosen: Any = BuiltinAnalyzer()
        rt = self.runtime
        if rt is not None and getattr(rt.device, "kind", "cpu") in ("cuda", "mps"):
            vlm = VLMClassifier(runtime=rt, **self._kwargs)
            if vlm.available():
                chosen = vlm
        self._chosen = chosen
        return chosen

    def available(self) -> bool:
        return True

    def classify(self, image: np.ndarray, photo: Any | None = None) -> Diagnosis:
        return self.classify_batch([image], [photo])[0]

    def classify_batch(self, images: list[np.ndarray], photos: list[Any | None]) -> list[Diagnosis]:
        c = self.choose()
        try:
            return c.classify_batch(images, photos)
        except EngineError as e:
            if c.name == "builtin":
                raise
            # the VLM failed (unreadable answer, out of memory...): fall back, say why
            log.warning("VLM diagnosis failed (%s); using the built-in analyzer", e)
            from dataclasses import replace

            from .analyzer import BuiltinAnalyzer

            out = BuiltinAnalyzer().classify_batch(images, photos)
            return [replace(d, rationale=f"{d.rationale}; VLM unavailable: {e}") for d in out]
