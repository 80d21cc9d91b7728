"""The one place that turns engine (and other) errors into a message for the photographer."""
from __future__ import annotations

import logging

from engine import errors
from engine.api import JobResult

log = logging.getLogger("mend.ui")


def describe_error(exc: BaseException) -> str:
    """A short, readable sentence for ``exc``; unexpected errors are logged with a traceback."""
    if isinstance(exc, errors.Cancelled):
        return "Cancelled."
    if isinstance(exc, errors.PackageMissing):  # (the model is there: not a download)
        return (f"The model '{exc.model_id}' is installed, but the Python package "
                f"'{exc.package}' it needs is missing. Install it into the Python environment "
                f"Mend runs in (pip install {exc.package}), or choose the built-in analyzer "
                "(Settings, Diagnosis).")
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
    if isinstance(exc, errors.BadMask):
        return (f"Cannot read the reflection mask {exc.path}: {exc.reason}. Edit the mask again, "
                "or choose a class in \u201cFix as\u201d to fix the photo without it.")
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


def describe_result(name: str, result: JobResult) -> str:
    """The status line for a finished fix of the photo ``name``, leading with what happened.
    A result that is the original kept as it was (``kept_original``) says so first - nothing to
    fix, the fix dropped by the regression guard, nothing filled (an inpainting step skipped its
    mask), or nothing changed - then why (the last warning: the steps' own warnings come last;
    else the skipped steps' notes); a fix that changed the photo gives its time and its first
    warning."""
    secs = f"{result.seconds:.1f} s"
    warnings = list(result.warnings)
    if not result.kept_original:
        return f"Fixed {name} in {secs}" + (f" — {warnings[0]}" if warnings else "")
    if all(s.name == "passthrough" for s in result.plan.steps if s.enabled):
        return (f"Nothing to fix in {name}: the original is kept as it is ({secs})"
                + (f" — {warnings[0]}" if warnings else ""))
    guard = "kept the original: "
    verdict = next((w for w in warnings if w.startswith(guard)), None)
    if verdict is not None:
        return f"Kept the original of {name} ({secs}): {verdict[len(guard):]}"
    from engine.pipeline import MASK_STEPS

    skipped = [s for s in result.steps if s.notes.startswith("skipped")]
    why = warnings[-1] if warnings else "; ".join(f"{s.name} {s.notes}" for s in skipped)
    what = "was filled" if any(s.name in MASK_STEPS for s in skipped) else "changed"
    return (f"Nothing {what} in {name}: the original is kept as it was ({secs})"
            + (f" — {why}" if why else ""))
