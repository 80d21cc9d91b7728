"""Built-in steps that need no download (classical OpenCV / NumPy methods)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .registry import StepContext, StepOutput, register_step


@register_step("passthrough", description="Leave the photo untouched (class D).")
def passthrough(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    ctx.progress.update(1.0, "nothing to fix")
    return StepOutput(image, "builtin:passthrough")
