"""The one place that turns engine (and other) errors into a message for the photographer."""
from __future__ import annotations

import logging

from engine import errors

log = logging.getLogger("mend.ui")


def describe_error(exc: BaseException) -> str:
    """A short, readable sentence for ``exc``; unexpected errors are logged with a traceback."""
    if isinstance(exc, errors.Cancelled):
        return "Cancelled."
    if isinstance(exc, errors.ModelMissing):
        ids = getattr(exc, "model_ids", (exc.model_id,))
        what = (f"The model '{ids[0]}' is not installed" if len(ids) == 1 else
                "The models " + ", ".join(f"'{m}'" for m in ids) + " are not installed")
        return (f"{what}. Open Models… to download {'it' if len(ids) == 1 else 'them'} or "
                "import an offline pack, or choose the built-in profile.")
    if isinstance(exc, errors.OutOfMemory):
        return (f"Not enough memory for this photo ({exc}). Try a smaller tile size in Settings, "
                "or the CPU device.")
    if isinstance(exc, errors.ImageTooLarge):
        return f"This photo is too large to open safely: {exc.reason}."
    if isinstance(exc, errors.BadImage):
        return f"Cannot read this photo: {exc.reason}."
    if isinstance(exc, errors.SaveFailed):
        return f"Could not save the result: {exc}"
    if isinstance(exc, errors.OfflineError):
        return f"Offline mode is on, so nothing can be downloaded: {exc}"
    if isinstance(exc, errors.ChecksumMismatch):
        return f"A model file is damaged ({exc}). Verify or re-download it in Models…"
    if isinstance(exc, errors.DeviceUnavailable):
        return f"{exc}. Choose another device in Settings."
    if isinstance(exc, errors.EngineError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError):
        return "Not enough memory for this photo. Try a smaller tile size in Settings."
    if isinstance(exc, OSError):
        return f"File error: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
    log.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
    return f"Unexpected error ({type(exc).__name__}: {exc}). Details are in the log file."
