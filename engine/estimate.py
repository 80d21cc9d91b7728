"""How long a plan will take and how much memory it needs, before it runs.

Time comes from two sources, best first:

1. **Measured here**: every finished step records its seconds per input megapixel for its
   (step, model, device kind, thread count) in a small history file; the estimate uses the
   running average of those runs. A step's first short run in an engine carries one-time
   set-up (see ``COLD_RUN_S``): it is counted once, not per megapixel.
2. **Reference**: seconds per megapixel of each step measured by ``bench/restore.py`` on one core
   of the 2-core AMD EPYC development machine (docs/PERFORMANCE.md, 2026-11-22; model steps at
   the real architecture sizes with random weights: time only). They are divided by the thread
   count (an optimistic, ideal scaling) and exist for CPUs only: a GPU has no estimate until its
   first photo has run.

Memory is the process itself (``PROCESS_BYTES``) plus the largest of: each step's image buffers
(input, output at the step's scale and the tiler's accumulators) with the model it loads (the
manifest's ``memory_mb``: weights + working memory), and what follows the last step - the photo
and the result held while the regression guard measures them and the result is saved.

Pure Python: no torch import, cheap enough for the UI thread to call on every plan edit.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import Plan, Step

log = logging.getLogger("mend.estimate")

# seconds per input megapixel, 1 CPU thread (see the module docstring for where they come from;
# bench/restore.py on a 512² photo, 2026-11-22 09:56 UTC, load average ~1.5-2.5)
REFERENCE_CPU_S_PER_MP: dict[tuple[str, str | None], float] = {
    ("passthrough", None): 0.0,
    ("denoise_builtin", None): 3.0,
    ("sharpen_builtin", None): 0.15,
    ("upscale_builtin", None): 0.2,
    ("deblur_builtin", None): 1.5,
    ("reflection_mask", None): 0.4,
    ("inpaint_builtin", None): 0.4,
    ("sr_realesrgan", "realesr-general-x4v3"): 52.0,
    ("sr_realesrgan", "realesrgan-x4plus"): 510.0,  # untiled 160² crop: 12.98 s
    # OCR of the whole photo; text regions add to it (the tiled OCR pass checked at 24 MP,
    # docs/bench/restore.json laptop_a_24mp, Intel Xeon 2026-12-06: 177.7 s = 7.4 s/MP)
    ("text_fusion", None): 7.0,
    ("deblur_nafnet", None): 67.0,
    ("dereflect_nafnet", None): 85.0,
    # ~53 s per 128-px patch-step on one core, patches at stride 64: ~244 patches per LR MP
    ("sr_invsr", None): 12900.0,
}
# steps whose cost follows what they find (faces, masked regions), not the photo's size:
# seconds per photo (history records them the same way)
PER_PHOTO_STEPS = frozenset({"face_codeformer", "inpaint_lama"})
REFERENCE_CPU_S_PER_PHOTO: dict[str, float] = {
    "face_codeformer": 19.0,  # one face (CodeFormer at 512²); photos without faces cost ~0
    "inpaint_lama": 10.6,  # one masked region crop
}

# memory of the image buffers per output pixel: input + output + the tiler's sum and weights
_BYTES_PER_PIXEL = 3 * 4
_BUFFERS = 4
# Peak resident memory of whole `builtin` jobs on a 24 MP photo (6000x4000 JPEG, /usr/bin/time
# -f %M, 2026-12-06): A and C 2.16 GB (the peak is the save), B 3.06 GB (its inpainting step).
# - the engine process before any photo: Python, NumPy, OpenCV, torch and the analyzer loaded
#   (0.52-0.62 GB measured; a margin for the GUI's own share)
PROCESS_BYTES = 700 << 20
# - after the last step the photo and the result stay in memory (float32 RGB, 12 B per pixel
#   each; a result the steps scaled is also brought back to the photo's size for the guard) and
#   on top of them, one after the other:
#   the regression guard's temporaries per photo pixel: the two lumas (8 B) and at most ~3
#   float32 planes of one measurement (measured 0.48 GB at 24 MP: 20 B)
_GUARD_BYTES_PER_PIXEL = 24
#   saving, per result pixel: conversion to 8/16 bit and the encoder (measured 0.93 GB at 24 MP
#   for a JPEG: 39 B)
_SAVE_BYTES_PER_PIXEL = 40


def finish_bytes(pixels: int, out_pixels: int) -> int:
    """Memory after the last step, for a photo of ``pixels`` whose result has ``out_pixels``:
    the photo and the result, and the larger of the regression guard's and the save's
    temporaries (see the figures above)."""
    held = (pixels + out_pixels + (pixels if out_pixels != pixels else 0)) * _BYTES_PER_PIXEL
    return held + max(_GUARD_BYTES_PER_PIXEL * pixels, _SAVE_BYTES_PER_PIXEL * out_pixels)


@dataclass(frozen=True)
class StepEstimate:
    name: str
    model: str | None
    seconds: float | None
    basis: str  # "measured" | "reference" | "unknown"


@dataclass(frozen=True)
class Estimate:
    seconds: float | None  # None: at least one step has no figure on this device
    peak_bytes: int
    steps: tuple[StepEstimate, ...] = field(default_factory=tuple)

    @property
    def basis(self) -> str:
        bases = {s.basis for s in self.steps if s.name != "passthrough"}
        if not bases:
            return "measured"
        if "unknown" in bases:
            return "unknown"
        return "measured" if bases == {"measured"} else "reference"

    @property
    def nothing_to_run(self) -> bool:
        return all(s.name == "passthrough" for s in self.steps)

    def describe(self) -> str:
        """One line for people: '~2 min, ~1.4 GB (from earlier runs here)'."""
        if self.nothing_to_run:
            return "nothing to run: the photo is kept as it is"
        mem = f"~{format_bytes(self.peak_bytes)}"
        if self.seconds is None:
            return f"time unknown until a photo has run on this device, {mem}"
        how = {"measured": "from earlier runs here",
               "reference": "rough, from a reference CPU"}.get(self.basis, "")
        return f"~{format_seconds(self.seconds)}, {mem}" + (f" ({how})" if how else "")

    def to_json(self) -> dict[str, Any]:
        return {"seconds": None if self.seconds is None else round(self.seconds, 1),
                "peak_bytes": self.peak_bytes, "basis": self.basis,
                "steps": [{"name": s.name, "model": s.model,
                           "seconds": None if s.seconds is None else round(s.seconds, 2),
                           "basis": s.basis} for s in self.steps]}


def format_seconds(s: float) -> str:
    if s < 1:
        return "1 s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def format_bytes(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GB"
    return f"{max(1, round(n / (1 << 20)))} MB"


def step_model(step: Step) -> str | None:
    """The model a step will use, from its params (Real-ESRGAN's choice matters 15x)."""
    if step.name == "sr_realesrgan":
        return str(step.params.get("model", "realesr-general-x4v3"))
    return None


def step_scale(step: Step) -> int:
    if step.name in ("sr_realesrgan", "sr_invsr"):
        default = 1
    elif step.name == "upscale_builtin":
        default = 2
    else:
        return 1
    try:
        return max(1, int(step.params.get("scale", default)))
    except (TypeError, ValueError):
        return 1


def work_units(step_name: str, pixels: int) -> float:
    """What a step's cost is proportional to: megapixels, or 1 for per-photo steps."""
    return 1.0 if step_name in PER_PHOTO_STEPS else pixels / 1e6


# steps whose cost also follows a parameter: the history and the reference figures are per unit
# of that parameter (InvSR: per sampling step), the estimate multiplies by it
PER_PARAM_STEPS: dict[str, tuple[str, int]] = {"sr_invsr": ("steps", 1)}
# history keys of the steps above carry this mark: entries written before the rate was per unit
# (the whole step's seconds) are not read as per-unit rates
_PER_UNIT_MARK = "/unit"


def step_multiplier(name: str, params: Mapping[str, Any]) -> int:
    """How many units of its cost parameter a step runs (1 for most steps): InvSR's sampling
    steps. ``params`` as the step runs them (its defaults merged in)."""
    spec = PER_PARAM_STEPS.get(name)
    if spec is None:
        return 1
    key, default = spec
    try:
        return max(1, int(params.get(key, default)))
    except (TypeError, ValueError):
        return max(1, default)


def step_work_units(name: str, params: Mapping[str, Any], pixels: int) -> float:
    """What one run of a step costs in the history's units: ``work_units`` times
    ``step_multiplier`` (an InvSR run of 3 sampling steps is 3 units per megapixel)."""
    return work_units(name, pixels) * step_multiplier(name, params)


# A step's first run in an engine pays one-time set-up that its later runs do not: OpenCV's
# first call of an operation (a 100 x 75 px photo's non-local means: 0.05-0.10 s the first time,
# 0.016-0.037 s after), beside a model's first load (which the engine leaves out, its
# ``_loaded_once``). Such a run shorter than this (where the measured set-up, up to 0.2 s on a
# busy machine, is a fifth or more of it) is "cold": it is never averaged into a figure warm runs
# taught, a figure resting on cold runs alone is replaced by the step's next warm run, and for a
# larger photo its seconds count once, not per megapixel (``CostHistory.lookup``). Per megapixel,
# one cold 100 x 75 px run took a 24 MP photo's denoising estimate to 160-340 s (a 24 MP photo
# took 31-72 s on the loaded 2-core development machine; 72 s now, the reference's).
COLD_RUN_S = 1.0


def _positive(v: Any) -> float | None:
    """``v`` as a finite number above 0, else None."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def _key(name: str, model: str | None, device_kind: str, threads: int) -> str:
    mark = _PER_UNIT_MARK if name in PER_PARAM_STEPS else ""
    return f"{name}{mark}|{model or ''}|{device_kind}|{threads}"


class CostHistory:
    """Seconds per input megapixel (per photo for ``PER_PHOTO_STEPS``) of finished steps on this
    machine (a running average over
    the last runs), kept in a small JSON file. Safe to read from one thread while another
    records; a file that cannot be read or written only costs the estimate its history.

    One history per engine: the first run of each step it records is that step's first in the
    engine (after a model's first load, which the engine does not record), a cold run when
    short (``COLD_RUN_S``). An entry resting on cold runs alone keeps
    their work (``cold_units``: megapixels, or photos) beside its figure."""

    WINDOW = 8  # the average follows the last ~8 runs of a step

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, float]] | None = None
        self._mtime: int | None = None  # of the file as last read or written
        self._ran: set[str] = set()  # keys of the steps this history has seen run

    @classmethod
    def default(cls) -> CostHistory:
        """``MEND_COST_HISTORY`` (a file; empty = keep no history), else the user cache."""
        env = os.environ.get("MEND_COST_HISTORY")
        if env is not None:
            return cls(Path(env) if env else None)
        import platformdirs

        return cls(Path(platformdirs.user_cache_dir("Mend", appauthor=False)) / "step_costs.json")

    def _file_mtime(self) -> int | None:
        try:
            return None if self.path is None else self.path.stat().st_mtime_ns
        except OSError:
            return None

    def _load(self, fresh: bool = False) -> dict[str, dict[str, float]]:
        """The figures, read again when the file changed (or always with ``fresh``: under the
        file lock, where a same-timestamp write by another process must not be missed)."""
        mtime = self._file_mtime()
        if fresh or self._data is None or (mtime is not None and mtime != self._mtime):
            # first use, or another process/thread (the engine) has written newer figures
            self._mtime = mtime
            data: dict[str, dict[str, float]] = {}
            if self.path is not None and self.path.is_file():
                try:
                    raw = json.loads(self.path.read_text("utf-8"))
                    data = {str(k): {"s_per_mp": float(v["s_per_mp"]), "n": float(v["n"])}
                            for k, v in raw.get("steps", {}).items()
                            if math.isfinite(float(v["s_per_mp"])) and float(v["s_per_mp"]) >= 0}
                    for k, v in raw.get("steps", {}).items():
                        cold = _positive(v.get("cold_units")) if k in data else None
                        if cold is not None:  # (a damaged mark: a warm figure)
                            data[k]["cold_units"] = cold
                except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                    log.warning("ignoring the step-cost history %s: %s", self.path, e)
                    data = {}
            self._data = data
        return self._data

    def snapshot(self) -> CostHistory:
        """A copy of the figures as they are on the disk now, that never reads the disk again
        (no path): what a thread that must not touch the disk (the UI's) estimates with."""
        with self._lock:
            data = {k: dict(v) for k, v in self._load().items()}
        copy = CostHistory(None)
        copy._data = data
        return copy

    def get(self, name: str, model: str | None, device_kind: str, threads: int) -> float | None:
        with self._lock:
            entry = self._load().get(_key(name, model, device_kind, threads))
            return None if entry is None else entry["s_per_mp"]

    def lookup(self, name: str, model: str | None, device_kind: str, threads: int
               ) -> tuple[float, float | None] | None:
        """(seconds per unit, the work of the cold runs it rests on alone - None when warm
        runs taught it), or None with no figure."""
        with self._lock:
            entry = self._load().get(_key(name, model, device_kind, threads))
            return None if entry is None else (entry["s_per_mp"], entry.get("cold_units"))

    def record(self, name: str, model: str | None, device_kind: str, threads: int,
               megapixels: float, seconds: float) -> None:
        if megapixels <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        rate = seconds / megapixels
        k = _key(name, model, device_kind, threads)
        # the file lock: another Mend (a second window, `mend restore`) records into the same
        # file; read-modify-write under it, reading the file afresh, so neither loses entries
        with self._lock, file_lock(self.path):
            cold = k not in self._ran and seconds < COLD_RUN_S
            self._ran.add(k)
            data = self._load(fresh=True)
            old = data.get(k)
            was_cold = old is not None and "cold_units" in old
            if cold and old is not None and not was_cold:
                return  # (its set-up would inflate what warm runs taught)
            if old is None or was_cold != cold:  # (a warm run replaces cold runs' figure)
                data[k] = {"s_per_mp": rate, "n": 1.0}
                if cold:
                    data[k]["cold_units"] = megapixels
            else:
                n = min(old["n"] + 1.0, float(self.WINDOW))
                data[k] = {"s_per_mp": old["s_per_mp"] + (rate - old["s_per_mp"]) / n, "n": n}
                if cold:
                    data[k]["cold_units"] = old["cold_units"] + (megapixels
                                                                 - old["cold_units"]) / n
            self._save(data)

    def _save(self, data: dict[str, dict[str, float]]) -> None:
        if self.path is None:
            return
        from .errors import EngineError

        try:
            from .imageio import atomic_write_bytes

            self.path.parent.mkdir(parents=True, exist_ok=True)
            blob = json.dumps({"version": 1, "steps": data}, indent=1).encode("utf-8")
            atomic_write_bytes(self.path, blob, overwrite=True)
            self._mtime = self._file_mtime()
        except (OSError, EngineError) as e:  # atomic_write_bytes raises SaveFailed
            # (a full disk or a read-only cache costs the estimate its history, never a job)
            log.warning("could not save the step-cost history %s: %s", self.path, e)


LOCK_WAIT = 5.0  # seconds a history write waits for another process's lock, then writes anyway


@contextlib.contextmanager
def file_lock(path: Path | None, wait: float | None = None) -> Iterator[None]:
    """An OS lock on ``<path>.lock`` (flock / msvcrt, as the model store locks ``.part``
    files) for one read-modify-write of ``path``. A lock that cannot be had (a read-only
    folder, a file system without locks, a holder that keeps it past ``LOCK_WAIT``) only costs
    the exclusion: the write goes ahead, as it did before there was a lock. The lock file is
    left in place (removing it would race with a process about to lock it)."""
    if path is None:
        yield
        return
    wait = LOCK_WAIT if wait is None else wait
    fh = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115 - held below
    except OSError as e:
        log.debug("no lock for %s: %s", path, e)
    locked = False
    if fh is not None:
        deadline = time.monotonic() + wait
        while True:
            state = try_file_lock(fh)
            if state is not None:
                locked = state
                break
            if time.monotonic() >= deadline:
                log.warning("%s stayed locked for %.0f s; writing without the lock", path, wait)
                break
            time.sleep(0.02)
    try:
        yield
    finally:
        if fh is not None:
            if locked:
                with contextlib.suppress(OSError):
                    _unlock_file(fh)
            fh.close()


def try_file_lock(fh: Any) -> bool | None:
    """True: locked; None: another holder has it (try again); False: locks do not work here."""
    try:
        if os.name == "nt":
            import msvcrt

            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if isinstance(e, BlockingIOError) or e.errno in (errno.EAGAIN, errno.EACCES,
                                                          errno.EDEADLK):
            return None
        log.debug("file locks unavailable for %s: %s", getattr(fh, "name", fh), e)
        return False
    return True


def _unlock_file(fh: Any) -> None:
    if os.name == "nt":
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def estimate_plan(plan: Plan, size: tuple[int, int], *, device_kind: str, threads: int,
                  history: CostHistory | None = None,
                  model_memory: Mapping[str, int] | None = None) -> Estimate:
    """Seconds and peak bytes of running ``plan`` on a photo of ``size`` = (height, width).

    ``model_memory`` maps model ids to bytes (the manifest's estimates; see
    :func:`manifest_model_memory`); models absent from it count as 0.
    """
    h, w = size
    pixels = max(1, int(h) * int(w))
    photo_pixels = pixels
    threads = max(1, int(threads))
    model_memory = model_memory or {}
    steps: list[StepEstimate] = []
    total: float | None = 0.0
    peak = 0
    for step in plan.steps:
        if not step.enabled:
            continue
        model = step_model(step)
        from .errors import UsageError
        from .restore.registry import get_step

        try:
            spec = get_step(step.name)
            spec_models, defaults = spec.models, dict(spec.defaults)
        except UsageError:  # an unknown step fails when the plan runs, not here
            spec_models, defaults = (), {}
        # (history and reference figures are per unit: per InvSR sampling step)
        units = work_units(step.name, pixels) * step_multiplier(step.name,
                                                                {**defaults, **step.params})
        found = history.lookup(step.name, model, device_kind, threads) if history else None
        rate, cold_units = found if found is not None else (None, None)
        ref = None
        if device_kind == "cpu":
            if step.name in PER_PHOTO_STEPS:
                ref = REFERENCE_CPU_S_PER_PHOTO.get(step.name)
            else:
                ref = REFERENCE_CPU_S_PER_MP.get((step.name, model),
                                                 REFERENCE_CPU_S_PER_MP.get((step.name, None)))
            ref = None if ref is None else ref / threads
        basis = "measured"
        if rate is None and ref is not None:
            rate, basis = ref, "reference"
        if rate is None:
            seconds, basis = None, "unknown"
        elif cold_units is not None and units > cold_units:
            # cold runs only (set-up included): their seconds once, for the work they did; the
            # rest at the lower of their rate and the reference (their rate is an upper bound)
            more = rate if ref is None or ref >= rate else ref
            seconds = rate * cold_units + more * (units - cold_units)
            basis = "measured" if more == rate else "reference"
        else:
            seconds = rate * units
        steps.append(StepEstimate(step.name, model, seconds, basis))
        total = None if (total is None or seconds is None) else total + seconds
        scale = step_scale(step)
        out_pixels = pixels * scale * scale
        buffers = (pixels + _BUFFERS * out_pixels) * _BYTES_PER_PIXEL
        ids = [model] if model else list(spec_models)
        weights = max((int(model_memory.get(m, 0)) for m in ids), default=0)
        peak = max(peak, buffers + weights)
        pixels = out_pixels
    if any(s.name != "passthrough" for s in steps):  # (passthrough: the file is copied)
        peak = PROCESS_BYTES + max(peak, finish_bytes(photo_pixels, pixels))
    return Estimate(total, int(peak), tuple(steps))


def manifest_model_memory(manifest: Any = None) -> dict[str, int]:
    """Model id -> bytes (``memory_mb``) from ``manifest`` (the default manifest when None);
    empty when it cannot be read: a broken manifest never breaks a plan's display."""
    try:
        if manifest is None:
            from .models.manifest import default_manifest

            manifest = default_manifest()
        return {mid: int(spec.memory_mb) << 20 for mid, spec in manifest.models.items()}
    except (AttributeError, TypeError, ValueError, OSError) as e:
        log.warning("no model memory figures: %s", e)
        return {}
