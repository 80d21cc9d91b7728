"""Imports every classifier backend so that it registers."""
from __future__ import annotations

from . import analyzer  # noqa: F401  ("builtin")
from . import clip  # noqa: F401  ("clip")
from . import vlm  # noqa: F401  ("vlm")
from . import auto  # noqa: F401  ("auto")
