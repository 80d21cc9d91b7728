"""Imports every classifier backend so that it registers."""
from __future__ import annotations

from . import (
    analyzer,  # noqa: F401  ("builtin")
    auto,  # noqa: F401  ("auto")
    clip,  # noqa: F401  ("clip")
    vlm,  # noqa: F401  ("vlm")
)
