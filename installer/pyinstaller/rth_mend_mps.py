"""PyInstaller runtime hook (every bundle): on macOS, PYTORCH_ENABLE_MPS_FALLBACK=1 unless the
user set it, so that an op without an MPS kernel runs on the CPU instead of failing the job.

PyTorch reads the variable once, when it is imported (the ``getenv`` in the registration of its
MPS fallback kernel, aten/src/ATen/mps/MPSFallback.mm): set later it does nothing, and the desktop
app imports torch before any engine module (engine/devices.py sets it too, for runs from source,
but only where it is imported first).
"""


def _mend_mps_fallback() -> None:
    import os
    import sys

    if sys.platform == "darwin":
        os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")


_mend_mps_fallback()
