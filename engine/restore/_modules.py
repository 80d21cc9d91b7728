"""Imports every module that registers restoration steps (kept in one list)."""
from __future__ import annotations

# Each import registers its steps. Add new specialist modules here.
from . import (
    builtin,  # noqa: F401
    classical,  # noqa: F401
    deblur,  # noqa: F401
    face,  # noqa: F401
    invsr,  # noqa: F401
    reflection,  # noqa: F401
    sr,  # noqa: F401
    text,  # noqa: F401
)
