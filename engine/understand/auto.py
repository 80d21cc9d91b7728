"""The "auto" backend: the paper's VLM on a GPU when its weights are installed, else the
built-in analyzer. Measurements always ride along (every backend merges them). Without a
runtime it looks at the process-wide default one (local files only, as the "vlm" backend does).
A photo the VLM fails on (an unreadable answer; the whole batch when it runs out of memory)
gets the analyzer's diagnosis, with the reason in its rationale. When the model itself cannot
be loaded (damaged files, too large for the device), the later batches of the same classifier
go to the analyzer at once (same rationale) instead of loading it again for each one. A cancel
(``cancel_check``) is not a failure: it is raised, never answered with the analyzer."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ..api import Diagnosis
from ..errors import Cancelled, EngineError
from .base import photos_for, register_classifier, single

log = logging.getLogger(__name__)
VLM_CHUNK = 4  # photos given to the VLM at once (its own batch size)


@register_classifier("auto")
class AutoClassifier:
    name = "auto"

    def __init__(self, runtime: Any | None = None, **kwargs: Any) -> None:
        self.runtime = runtime
        self._kwargs = kwargs
        self._chosen: Any = None
        self._load_error: EngineError | None = None  # the VLM's, when it could not be loaded

    def choose(self) -> Any:
        if self._chosen is not None:
            return self._chosen
        from .analyzer import BuiltinAnalyzer
        from .vlm import MODEL_IDS as VLM_MODEL_IDS
        from .vlm import VLMClassifier

        chosen: Any = BuiltinAnalyzer(cancel_check=self._kwargs.get("cancel_check"))
        rt = self.runtime
        if rt is None:
            from .runtime_default import default_runtime

            rt = self.runtime = default_runtime()
        # which models are installed first: without a VLM the device is never asked (choosing
        # it imports torch, ~2 s and ~0.6 GB the analyzer does not need)
        if _any_installed(rt, VLM_MODEL_IDS) and getattr(rt.device, "kind", "cpu") in ("cuda",
                                                                                        "mps"):
            vlm = VLMClassifier(runtime=rt, **self._kwargs)
            if vlm.available():
                chosen = vlm
        self._chosen = chosen
        return chosen

    def available(self) -> bool:
        return True

    def classify(self, image: np.ndarray, photo: Any | None = None) -> Diagnosis:
        return single(self.classify_batch([image], [photo]))

    def classify_batch(self, images: list[np.ndarray], photos: list[Any | None]
                       ) -> list[Diagnosis | EngineError]:
        """One entry per photo. The VLM gets ``VLM_CHUNK`` photos at a time, so a batch that
        fails (out of memory) costs only its own photos the VLM's answer, not those before."""
        photos = photos_for(images, photos)
        c = self.choose()
        if c.name == "builtin":
            return c.classify_batch(images, photos)
        out: list[Diagnosis | EngineError] = []
        for i in range(0, len(images), VLM_CHUNK):
            out += self._vlm_chunk(c, images[i:i + VLM_CHUNK], photos[i:i + VLM_CHUNK])
        return out

    def _vlm_chunk(self, c: Any, images: list[np.ndarray], photos: list[Any | None]
                   ) -> list[Diagnosis | EngineError]:
        check = self._kwargs.get("cancel_check")
        if self._load_error is not None:
            return _fallback(images, photos, [self._load_error] * len(images), check, warn=False)
        try:
            out = list(c.classify_batch(images, photos))
        except Cancelled:
            raise
        except EngineError as e:  # out of memory, a damaged model...: every photo falls back
            if not getattr(c, "model_loaded", True):
                self._load_error = e  # it would fail to load again: the analyzer from now on
            return _fallback(images, photos, [e] * len(images), check)
        failed = [i for i, d in enumerate(out) if isinstance(d, EngineError)]
        if failed:  # an unreadable answer: that photo alone falls back
            got = _fallback([images[i] for i in failed], [photos[i] for i in failed],
                            [out[i] for i in failed], check)
            for i, d in zip(failed, got):
                out[i] = d
        return out


def _fallback(images: list[np.ndarray], photos: list[Any | None],
              errors: list[EngineError], cancel_check: Callable[[], None] | None = None,
              warn: bool = True) -> list[Diagnosis | EngineError]:
    """The built-in analyzer's diagnoses of the photos the VLM failed on, saying why."""
    from dataclasses import replace

    from .analyzer import BuiltinAnalyzer

    if warn and images:
        log.warning("VLM diagnosis failed on %d photo(s) (%s); using the built-in analyzer",
                    len(images), errors[0])
    out = BuiltinAnalyzer(cancel_check=cancel_check).classify_batch(images, photos)
    return [d if isinstance(d, EngineError) else
            replace(d, rationale=f"{d.rationale}; VLM unavailable: {e}")
            for d, e in zip(out, errors)]


def _any_installed(rt: Any, model_ids: tuple[str, ...]) -> bool:
    is_available = getattr(rt, "is_available", None)
    if is_available is None:  # (a runtime that cannot say: ask the VLM itself)
        return True
    return any(is_available(m) for m in model_ids)
