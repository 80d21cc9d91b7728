"""Safe weight loading: safetensors, ``torch.load(weights_only=True)``, TorchScript for ``.pt``
image models (big-lama), and spandrel's architecture detection on the resulting state dict.

Pickled ``.pth``/``.ckpt`` files are never unpickled with arbitrary globals: ``weights_only=True``
only rebuilds tensors and plain containers.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import EngineError

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


def _torchscript_state_dict(p: Path, device: str) -> dict[str, Any]:
    import torch

    # TorchScript archives hold weights plus TorchScript IR (no Python pickles of arbitrary
    # classes); the file is hash-checked by the store before we get here.
    module = torch.jit.load(str(p), map_location=device)
    return dict(module.state_dict())


def spandrel_state_dict(path: str | Path) -> dict[str, Any]:
    """The state dict spandrel's registry expects (release wrappers such as ``params_ema``
    unwrapped by spandrel's own canonicalisation)."""
    from spandrel import canonicalize_state_dict

    p = Path(path)
    if p.suffix.lower() == ".pt":
        try:
            sd = _torchscript_state_dict(p, "cpu")
        except RuntimeError:
            sd = load_state_dict(p)
    else:
        sd = load_state_dict(p)
    return canonicalize_state_dict(sd)


def load_spandrel(path: str | Path, device: str = "cpu", dtype: Any = None,
                  extra_arches: bool = True):
    """A spandrel ``ModelDescriptor`` in eval mode on ``device`` (``dtype`` when given and the
    model supports it)."""
    import torch
    from spandrel import ModelLoader, UnsupportedModelError

    if extra_arches:
        install_extra_arches()
    sd = spandrel_state_dict(path)
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
