"""A process-wide default ModelRuntime for classifiers created without one."""
from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_runtime: Any = None


def default_runtime() -> Any:
    global _runtime
    with _lock:
        if _runtime is None:
            from ..devices import select_device
            from ..models.runtime import ModelRuntime

            _runtime = ModelRuntime(lambda: select_device("auto"))  # (chosen at first use)
        return _runtime
