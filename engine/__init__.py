"""Mend engine: diagnosis and restoration of photos. Never imports Qt; imports torch lazily."""
from __future__ import annotations

__version__ = "0.1.0"
