"""Mend engine: diagnosis and restoration of photos. Never imports Qt; imports torch lazily."""
from __future__ import annotations

__version__ = "0.1.0"

# (first, before anything imports torch: on macOS it sets PyTorch's MPS CPU fallback, which
# PyTorch reads only when it is imported - see devices.enable_mps_fallback)
from . import devices as _devices  # noqa: F401
