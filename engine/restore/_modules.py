"""Imports every module that registers restoration steps (kept in one list)."""
from __future__ import annotations

# Each import registers its steps. Add new specialist modules here.
from . import builtin  # noqa: F401
from . import classical  # noqa: F401
from . import deblur  # noqa: F401
from . import face  # noqa: F401
from . import sr  # noqa: F401
from . import invsr  # noqa: F401
from . import reflection  # noqa: F401
from . import text  # noqa: F401
