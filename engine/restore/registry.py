"""Registry of restoration steps. Each specialist module registers its steps with a decorator.

A step is ``fn(image, params, ctx) -> StepOutput`` where ``image`` is float32 RGB in [0, 1],
shape (H, W, 3). Steps report progress through ``ctx.progress`` (0..1 of their own slice) and
must call ``ctx.progress.check()`` (or ``update``) at least once per tile.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..api import Diagnosis
from ..devices import DeviceInfo
from ..errors import UsageError
from ..progress import Progress


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


@dataclass(frozen=True)
class StepOutput:
    image: np.ndarray
    model: str  # model id used, or "builtin:<method>"
    notes: str = ""


StepFn = Callable[[np.ndarray, Mapping[str, Any], StepContext], StepOutput]


@dataclass(frozen=True)
class StepSpec:
    name: str
    fn: StepFn
    models: tuple[str, ...]  # model ids it may need (for packs and "what will download")
    description: str
    defaults: Mapping[str, Any]


STEPS: dict[str, StepSpec] = {}


def register_step(
    name: str,
    *,
    models: tuple[str, ...] = (),
    description: str = "",
    defaults: Mapping[str, Any] | None = None,
) -> Callable[[StepFn], StepFn]:
    def deco(fn: StepFn) -> StepFn:
        if name in STEPS:
            raise RuntimeError(f"step {name!r} registered twice")
        STEPS[name] = StepSpec(name, fn, tuple(models), description or (fn.__doc__ or "").strip(),
                               dict(defaults or {}))
        return fn

    return deco


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
