"""Safe weight loading: safetensors, ``torch.load(weights_only=True)``, TorchScript for ``.pt``
image models (big-lama), and spandrel's architecture detection on the resulting state dict.

Pickled ``.pth``/``.ckpt`` files are never unpickled with arbitrary globals: ``weights_only=True``
only rebuilds tensors and plain containers. A TorchScript archive holds code that
``torch.jit.load`` runs (a scripted ``__setstate__``): its sha256 is checked right before it is
loaded (the store's load-time check is of size and time only, which a file swapped for another
of the same size, its time set back, passes).
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ChecksumMismatch, EngineError

_EXTRA_LOCK = threading.Lock()
_EXTRA_INSTALLED: bool | None = None


class UnsupportedModel(EngineError):
    """The weights file is not an architecture Mend can run."""


def _checkpoint_error(e: BaseException) -> bool:
    """An error a damaged or mismatched weights file raises while it is read or loaded into
    its module (truncated safetensors, tensor shape mismatches...), not a device OOM."""
    from ..devices import is_oom

    if is_oom(e):
        return False
    if isinstance(e, (RuntimeError, ValueError)):
        return True
    try:
        from safetensors import SafetensorError
    except ImportError:
        return False
    return isinstance(e, SafetensorError)


@contextlib.contextmanager
def checkpoint_errors(what: str) -> Iterator[None]:
    """Turn the errors of a bad checkpoint (a shape mismatch, a truncated or damaged
    safetensors file) raised inside the block into :class:`UnsupportedModel` naming ``what``
    (the file or model folder). Engine errors and out-of-memory errors pass unchanged."""
    try:
        yield
    except EngineError:
        raise
    except Exception as e:
        if not _checkpoint_error(e):
            raise
        lines = str(e).strip().splitlines()
        detail = " ".join(x.strip() for x in lines[:3])[:300] if lines else ""
        raise UnsupportedModel(
            f"{what}: these weights cannot be loaded, the file is damaged or does not match "
            f"the model ({type(e).__name__}: {detail})") from e


def refuse_remote_code() -> None:
    """Make transformers refuse a model folder's own Python code (a config's ``auto_map``) at
    once, wherever it looks for it. ``trust_remote_code=False`` does not reach every loader in
    transformers (5.23): ``AutoProcessor`` and ``SamProcessor`` load their image processor and
    tokenizer without it, and transformers then asks on the terminal whether to run the
    folder's code ("Do you wish to run the custom code? [y/N]", 15 s) - a "y" runs it. With
    that question's timeout at 0 it raises ValueError instead. Called before each load."""
    import transformers.dynamic_module_utils as dmu

    dmu.TIME_OUT_REMOTE_CODE = 0


def install_extra_arches() -> bool:
    """Register spandrel_extra_arches (CodeFormer, ... — non-commercial licences) once.

    Returns False when the package is not installed.
    """
    global _EXTRA_INSTALLED
    with _EXTRA_LOCK:
        if _EXTRA_INSTALLED is None:
            try:
                import spandrel_extra_arches
            except ImportError:
                _EXTRA_INSTALLED = False
            else:
                spandrel_extra_arches.install(ignore_duplicates=True)
                _EXTRA_INSTALLED = True
        return _EXTRA_INSTALLED


def load_state_dict(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """A raw state dict from ``.safetensors`` or a pickled ``.pth``/``.pt``/``.ckpt``/``.bin``
    (``weights_only=True``)."""
    import torch

    p = Path(path)
    ext = p.suffix.lower()
    if ext == ".safetensors":
        from safetensors.torch import load_file

        with checkpoint_errors(p.name):
            return dict(load_file(str(p), device=device))
    if ext in (".pth", ".pt", ".ckpt", ".bin"):
        try:
            obj = torch.load(str(p), map_location=device, weights_only=True)
        except Exception as e:  # a pickle that needs arbitrary globals, or a damaged file
            raise UnsupportedModel(
                f"{p.name}: cannot be read as plain weights ({type(e).__name__}: {e})") from e
        if not isinstance(obj, dict):
            raise UnsupportedModel(f"{p.name}: not a state dict")
        return obj
    raise UnsupportedModel(f"{p.name}: unsupported weights file type {ext!r}")


def _torchscript_state_dict(p: Path, device: str, sha256: str | None = None) -> dict[str, Any]:
    import torch

    from .store import sha256_file

    # TorchScript archives hold weights plus TorchScript code, which torch.jit.load runs (a
    # scripted __setstate__): with ``sha256`` the file is hashed right before it is loaded, so
    # one changed on disk since its verification - same size and time, which the store's cheap
    # check cannot tell - is refused, never run. (Hashed as a stream, then loaded from the
    # file: a 204 MB archive, 0.11-0.15 s -> 0.23-0.37 s; loaded from the bytes hashed, 0.9 s and
    # 580 MB more memory at its peak, for a swap timed into those 0.2 s only)
    if sha256 is not None:
        actual = sha256_file(p)
        if actual != sha256:
            raise ChecksumMismatch(
                p.name, sha256, actual, "it changed on disk since it was verified and was not "
                "loaded; repair it with: mend models verify --repair")
    module = torch.jit.load(str(p), map_location=device)
    return dict(module.state_dict())


def spandrel_state_dict(path: str | Path, sha256: str | None = None) -> dict[str, Any]:
    """The state dict spandrel's registry expects (release wrappers such as ``params_ema``
    unwrapped by spandrel's own canonicalisation). ``sha256``: the hash a TorchScript ``.pt``
    must have (checked on the bytes it is loaded from)."""
    from spandrel import canonicalize_state_dict

    p = Path(path)
    if p.suffix.lower() == ".pt":
        try:
            sd = _torchscript_state_dict(p, "cpu", sha256)
        except RuntimeError:
            sd = load_state_dict(p)
    else:
        sd = load_state_dict(p)
    return canonicalize_state_dict(sd)


def load_spandrel(path: str | Path, device: str = "cpu", dtype: Any = None,
                  extra_arches: bool = True, sha256: str | None = None):
    """A spandrel ``ModelDescriptor`` in eval mode on ``device`` (``dtype`` when given and the
    model supports it). ``sha256``: as for :func:`spandrel_state_dict`."""
    import torch
    from spandrel import ModelLoader, UnsupportedModelError

    if extra_arches:
        install_extra_arches()
    sd = spandrel_state_dict(path, sha256)
    try:
        with checkpoint_errors(Path(path).name):
            desc = ModelLoader("cpu").load_from_state_dict(sd)
    except UnsupportedModelError as e:
        raise UnsupportedModel(f"{Path(path).name}: not a supported image-model architecture") from e
    desc.eval()
    if dtype is not None and dtype != torch.float32:
        ok = (dtype == torch.float16 and desc.supports_half) or (
            dtype == torch.bfloat16 and desc.supports_bfloat16)
        if ok:
            desc.to(dtype)
    desc.to(torch.device(device))
    return desc


def param_bytes(model: Any) -> int:
    """Bytes of the parameters and buffers of an nn.Module or spandrel descriptor."""
    mod = getattr(model, "model", model)
    total = 0
    for attr in ("parameters", "buffers"):
        fn = getattr(mod, attr, None)
        if fn is None:
            continue
        for t in fn():
            total += t.numel() * t.element_size()
    return total
