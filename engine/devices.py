"""The only place that decides device, dtype, thread count and memory budget."""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from functools import lru_cache

from .errors import DeviceUnavailable

log = logging.getLogger(__name__)

MPS_FALLBACK = "PYTORCH_ENABLE_MPS_FALLBACK"


def enable_mps_fallback() -> bool:
    """On macOS, let PyTorch run an op that has no MPS kernel on the CPU instead of failing
    (``PYTORCH_ENABLE_MPS_FALLBACK=1`` unless the user set it). PyTorch reads the variable once,
    when it is imported (``getenv`` in the registration of its MPS fallback kernel): set later,
    it does nothing. So this runs when this module is imported - before the engine imports
    torch - and returns whether the fallback is in effect (False when torch was imported first
    without it, or the user turned it off)."""
    if sys.platform != "darwin":
        return False
    had = MPS_FALLBACK in os.environ
    if not had and "torch" in sys.modules:
        return False  # too late to have an effect: select_device says so
    os.environ.setdefault(MPS_FALLBACK, "1")
    return os.environ[MPS_FALLBACK].strip() not in ("", "0")


_MPS_FALLBACK_ON = enable_mps_fallback()


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" | "mps" | "cpu"
    name: str
    threads: int
    memory_budget: int  # bytes the engine may use for models + activations on this device
    total_memory: int  # bytes of the device (system RAM for cpu/mps)
    supports_half: bool
    supports_bf16: bool
    note: str = ""  # why ``auto`` did not pick a GPU torch reports (it failed its probe)

    @property
    def torch_device(self) -> str:
        return "cuda:0" if self.kind == "cuda" else self.kind

    def dtype_for(self, model_supports_half: bool = True, model_supports_bf16: bool = False):
        """fp16/bf16 on GPUs where the model allows, fp32 on CPU.

        ``MEND_PRECISION`` (fp32 | fp16 | bf16 | auto, the app's precision setting) narrows the
        choice: fp32 forces full precision; fp16/bf16 are used only where device and model allow.
        """
        import torch

        want = precision()
        if self.kind == "cpu" or want == "fp32":
            return torch.float32
        if want == "bf16":
            return torch.bfloat16 if (model_supports_bf16 and self.supports_bf16) else torch.float32
        if want == "fp16":
            return torch.float16 if (model_supports_half and self.supports_half) else torch.float32
        if model_supports_half and self.supports_half:
            return torch.float16
        if model_supports_bf16 and self.supports_bf16:
            return torch.bfloat16
        return torch.float32

    def to_json(self) -> dict:
        d = {"kind": self.kind, "name": self.name, "threads": self.threads,
             "memory_budget": self.memory_budget, "total_memory": self.total_memory,
             "supports_half": self.supports_half, "supports_bf16": self.supports_bf16}
        if self.note:
            d["note"] = self.note
        return d


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def precision() -> str:
    """The precision setting, ``MEND_PRECISION`` (auto | fp32 | fp16 | bf16; else auto). Read
    at every load: the app changes it while running."""
    want = os.environ.get("MEND_PRECISION", "auto").strip().lower()
    return want if want in PRECISIONS else "auto"


def system_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - psutil missing or failing (any error): use sysconf
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 8 << 30


def available_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or failing (any error): assume half free
        return system_memory() // 2


def max_threads() -> int:
    """The most threads ``MEND_THREADS`` may ask for: 4 x the logical CPUs, at least 8 (any
    count a user would pick on a real machine is below). More only starts threads that wait
    for a core: with 99999, OpenCV started ~32000 threads (the system's limit) and took 44 s
    for a 4 MP blur, and torch's OpenMP failed to create its threads."""
    return max(8, 4 * (os.cpu_count() or 1))


@lru_cache(maxsize=8)
def _warn_capped(asked: int, cap: int) -> None:
    # (once per value: the thread count is read each time an engine or a decoder sets up)
    log.warning("MEND_THREADS=%d is more than this machine can use; using %d threads "
                "(4 x its %d logical CPUs, at least 8)", asked, cap, os.cpu_count() or 1)


def cpu_threads() -> int:
    """cores - 1 (at least 1): torch on all cores collapses when another process holds one.
    ``MEND_THREADS`` (a positive whole number) sets it instead, capped at :func:`max_threads`
    (with a warning in the log)."""
    env = os.environ.get("MEND_THREADS", "").strip()
    if env.isascii() and env.isdigit() and int(env) > 0:
        asked, cap = int(env), max_threads()
        if asked > cap:
            _warn_capped(asked, cap)
            return cap
        return asked
    n = os.cpu_count() or 1
    return max(1, n - 1)


def _probe(device: str) -> None:
    """A tiny allocation and computation on ``device``: raises when the GPU torch reports
    does not actually work (no driver, a busy or broken GPU, a CUDA build for another card)."""
    import torch

    x = torch.ones(8, device=device)
    if float((x + x).sum().item()) != 16.0:
        raise RuntimeError(f"a test computation on {device} gave a wrong result")


def _cuda_info(threads: int) -> DeviceInfo:
    import torch

    props = torch.cuda.get_device_properties(0)
    total = int(props.total_memory)
    bf16 = bool(torch.cuda.is_bf16_supported())
    _probe("cuda:0")
    return DeviceInfo("cuda", props.name, threads, int(total * 0.85), total, True, bf16)


def _mps_info(threads: int) -> DeviceInfo:
    _probe("mps")
    total = system_memory()
    # unified memory: leave room for the OS and the UI
    return DeviceInfo("mps", "Apple GPU (MPS)", threads, int(total * 0.5), total, True, False)


def _cpu_info(threads: int) -> DeviceInfo:
    total = system_memory()
    budget = int(min(total * 0.6, max(available_memory() * 0.8, 1 << 30)))
    return DeviceInfo("cpu", f"CPU ({os.cpu_count()} cores)", threads, budget, total, False, False)


def torch_missing_reason() -> str | None:
    """Why PyTorch cannot be imported here (the end of a sentence: "... PyTorch, which {it}"),
    else None. Looked up without importing it (~2 s): a torch that is there but broken fails
    later, when it is imported, with its own error. The frozen lean app loads PyTorch from the
    environment the installer makes (installer/pyinstaller/rth_mend_env.py), which left
    ``MEND_RUNTIME_ENV_ERROR`` saying why it used none."""
    import importlib.util

    if "torch" in sys.modules:
        if sys.modules["torch"] is not None:
            return None
    else:
        try:
            if importlib.util.find_spec("torch") is not None:
                return None
        except (ImportError, ValueError):
            pass
    if getattr(sys, "frozen", False):
        why = os.environ.get("MEND_RUNTIME_ENV_ERROR") or "no environment was found"
        return ("this app loads from the environment Mend's installer makes and could not "
                f"({why}): run installer/bootstrap.py, or set MEND_ENV to that environment")
    return (f"is not installed in this Python ({sys.executable}): install Mend's "
            "requirements (pip install -r requirements.lock) or use installer/bootstrap.py")


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401

        return True
    except Exception:  # noqa: BLE001 - a broken torch fails with any error; CPU built-ins still run
        return False


def _failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


@lru_cache(maxsize=8)
def select_device(preference: str = "auto") -> DeviceInfo:
    """cuda -> mps -> cpu for ``auto``; an explicit choice that is absent raises.

    A GPU torch reports is probed (a tiny allocation and computation). Under ``auto`` a GPU
    that fails its probe is skipped with a logged warning and the reason in ``note`` (the CPU
    still runs everything); an explicit ``cuda``/``mps`` that fails raises DeviceUnavailable.
    """
    pref = (preference or "auto").lower()
    if pref not in ("auto", "cpu", "cuda", "mps"):
        raise DeviceUnavailable(f"unknown device {preference!r} (auto, cpu, cuda or mps)")
    threads = cpu_threads()
    if pref == "cpu" or not _torch_available():
        if pref in ("cuda", "mps"):
            raise DeviceUnavailable(f"{pref} requested but PyTorch is not installed")
        return _cpu_info(threads)
    import torch

    notes: list[str] = []
    if pref in ("auto", "cuda"):
        try:
            if torch.cuda.is_available():
                return _cuda_info(threads)
            reason = "no CUDA GPU is available"
        except Exception as e:  # noqa: BLE001 - a broken driver/GPU fails with any error
            reason = f"the CUDA GPU does not work ({_failure(e)})"
            notes.append(reason)
        if pref == "cuda":
            raise DeviceUnavailable(f"CUDA requested but {reason}")
    if pref in ("auto", "mps"):
        try:
            mps = getattr(torch.backends, "mps", None)
            if mps is not None and mps.is_available():
                if not _MPS_FALLBACK_ON:  # (see enable_mps_fallback)
                    log.warning("ops without an MPS kernel will fail instead of running on the "
                                "CPU: set %s=1 before starting Mend", MPS_FALLBACK)
                return _mps_info(threads)
            reason = "not available on this machine"
        except Exception as e:  # noqa: BLE001 - as for CUDA
            reason = f"it does not work ({_failure(e)})"
            notes.append(f"Apple MPS {reason}")
        if pref == "mps":
            raise DeviceUnavailable(f"Apple MPS requested but {reason}")
    info = _cpu_info(threads)
    if notes:
        note = "; ".join(notes) + ": using the CPU"
        log.warning("device auto: %s", note)
        info = dataclasses.replace(info, note=note)
    return info


def configure_torch(device: DeviceInfo) -> None:
    """Apply the thread policy once per process (torch, and OpenCV: ``configure_opencv``)."""
    import torch

    configure_opencv(device.threads)
    if torch.get_num_threads() != device.threads:
        torch.set_num_threads(device.threads)


def configure_opencv(threads: int | None = None) -> None:
    """OpenCV's thread count = the engine's (``threads``, else ``cpu_threads()``: what
    ``select_device`` gives every device). OpenCV otherwise runs its parallel loops (resize,
    non-local means, filters) on every core, also with ``MEND_THREADS=1``. Its pool is one per
    process: the app's thumbnail and viewer decodes follow the same count. Needs no torch: the
    engine applies it when it is made, before the device (``auto``: at first use) is chosen."""
    import cv2

    n = cpu_threads() if threads is None else max(1, int(threads))
    if cv2.getNumThreads() != n:
        cv2.setNumThreads(n)


def empty_cache(device: DeviceInfo) -> None:
    try:
        import torch

        if device.kind == "cuda":
            torch.cuda.empty_cache()
        elif device.kind == "mps":
            torch.mps.empty_cache()
    except Exception:  # noqa: BLE001, S110 - runs while recovering from an error, must not raise
        # returning cached GPU blocks is only an optimisation: if it fails nothing is lost, the
        # memory stays with torch's allocator for reuse, and gc.collect() below still runs
        pass
    import gc

    gc.collect()


def is_oom(exc: BaseException) -> bool:
    """True for a device out-of-memory error (typed where torch gives a type)."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except Exception:  # noqa: BLE001, S110 - classifying an error must not raise one of its own
        # no torch (or a broken one, failing with any error): there is no CUDA OOM type to match,
        # the generic checks below still apply
        pass
    if isinstance(exc, MemoryError):
        return True
    # MPS raises a RuntimeError with this text and has no dedicated type; so does the CPU
    # allocator when an allocation fails (Windows commits memory up front: it fails there first).
    # "Invalid buffer size: 19.45 GB" is MPS refusing one buffer larger than the GPU can hold
    # (pytorch/pytorch#141909): smaller tiles fix it as they fix running out of memory
    return isinstance(exc, RuntimeError) and any(
        t in str(exc) for t in ("MPS backend out of memory", "DefaultCPUAllocator: can't allocate",
                                "DefaultCPUAllocator: not enough memory", "Invalid buffer size:"))
