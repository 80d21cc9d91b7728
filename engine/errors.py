"""Typed engine errors. Every error carries a message fit to show a photographer."""
from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose (user-facing message in ``str(e)``)."""


class BadImage(EngineError):
    """A file that cannot be read as a photo (corrupt, truncated, unsupported, too large)."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class BadMask(BadImage):
    """A reflection mask given with a job (``JobRequest.mask_path``) that cannot be read: gone
    (deleted since), corrupt or unsupported. ``path`` is the mask's, not the photo's."""


class ImageTooLarge(BadImage):
    """Over the pixel limit, or a decompression bomb."""


class SaveFailed(EngineError):
    """An output could not be written (disk full, permissions...). Nothing partial is left."""


class ModelMissing(EngineError):
    """A model the chain needs is not in the store (and offline mode / no network)."""

    def __init__(self, model_id: str | tuple[str, ...] | list[str], hint: str = "") -> None:
        ids = (model_id,) if isinstance(model_id, str) else tuple(model_id)
        self.model_ids = ids
        self.model_id = ", ".join(ids)
        if len(ids) == 1:
            msg = f"model '{ids[0]}' is not installed"
        else:
            quoted = [f"'{m}'" for m in ids]
            msg = f"models {', '.join(quoted[:-1])} and {quoted[-1]} are not installed"
        if hint:
            msg += f": {hint}"
        else:
            msg += (f" (run: mend models pull {' '.join(ids)}; without internet, import an "
                    "offline pack: mend models import PACK)")
        super().__init__(msg)


class PackageMissing(ModelMissing):
    """A model's files are installed but a Python package it needs to run is not (SigLIP's
    tokenizer without ``sentencepiece``: ``engine.understand.clip``). A ModelMissing, so that
    a backend falls back as for a model that is not there; ``package`` names what to install
    (downloading the model again does not help)."""

    def __init__(self, model_id: str, package: str) -> None:
        super().__init__(model_id)
        self.package = package
        Exception.__init__(self, f"model '{model_id}' is installed but cannot be used: its "
                                 f"tokenizer needs the '{package}' package, which is not "
                                 f"installed (pip install {package}); or use the built-in "
                                 "analyzer")


class ChecksumMismatch(EngineError):
    def __init__(self, name: str, expected: str, actual: str, hint: str = "") -> None:
        self.name, self.expected, self.actual = name, expected, actual
        super().__init__(f"{name}: sha256 mismatch (expected {expected[:12]}…, got {actual[:12]}…)"
                         + (f"; {hint}" if hint else ""))


class DownloadError(EngineError):
    pass


class OfflineError(DownloadError):
    """A download was needed while offline mode (MEND_OFFLINE=1) is on."""


class LocalDiskError(DownloadError):
    """A download could not be written to this machine's disk (full, read-only, no permission):
    retrying the network cannot help. The ``.part`` file is kept for a resume."""


class DeviceUnavailable(EngineError):
    pass


class TorchMissing(EngineError):
    """Models that run on PyTorch were asked for where PyTorch cannot be imported: the frozen
    app without the environment the installer makes, or a Python without it. ``reason``
    says why and what to do."""

    def __init__(self, model_ids: str | tuple[str, ...] | list[str], reason: str) -> None:
        ids = (model_ids,) if isinstance(model_ids, str) else tuple(model_ids)
        self.model_ids, self.reason = ids, reason
        what = (f"model '{ids[0]}' runs" if len(ids) == 1 else
                "models " + ", ".join(f"'{m}'" for m in ids) + " run")
        super().__init__(f"{what} on PyTorch, which {reason}; the built-in methods need no "
                         "PyTorch (profile builtin, the built-in analyzer)")


class OutOfMemory(EngineError):
    pass


class Cancelled(EngineError):
    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)


class UsageError(EngineError):
    """Bad arguments or an impossible request (CLI exit code 2)."""
