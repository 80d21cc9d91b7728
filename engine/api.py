"""The engine's public data types: what the CLI and the UI exchange with it.

All are plain frozen dataclasses or enums so they cross threads safely and serialise to JSON.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class Degradation(str, enum.Enum):
    """The paper's four classes."""

    A = "A"  # super-resolution degradation: low resolution, noise, blur, JPEG
    B = "B"  # reflection artifacts
    C = "C"  # motion blur
    D = "D"  # no visible degradation

    @property
    def display_name(self) -> str:
        return _DISPLAY[self]

    @property
    def short_name(self) -> str:
        return _SHORT[self]

    @classmethod
    def parse(cls, text: str) -> Degradation:
        try:
            return cls(text.strip().upper())
        except ValueError:
            raise ValueError(f"unknown degradation class {text!r} (expected A, B, C or D)") from None


_DISPLAY = {
    Degradation.A: "Super-resolution degradation (low resolution, noise, blur, JPEG)",
    Degradation.B: "Reflection artifacts",
    Degradation.C: "Motion blur",
    Degradation.D: "No visible degradation",
}
_SHORT = {
    Degradation.A: "Low quality",
    Degradation.B: "Reflection",
    Degradation.C: "Motion blur",
    Degradation.D: "Clean",
}

CLASSES: tuple[Degradation, ...] = (Degradation.A, Degradation.B, Degradation.C, Degradation.D)

# ``estimates["blur_length"]`` below this (px) means no straight-line blur was resolved: the
# built-in analyzer's cepstral search bottoms out at about 3.7 px
BLUR_LINE_RESOLVED_MIN = 4.5


@dataclass(frozen=True)
class Diagnosis:
    """What is wrong with a photo, how sure, and how bad.

    ``scores`` holds one probability per class (summing to 1). ``flags`` lists every
    degradation judged present (multi-label; may be empty for D). ``estimates`` holds physical
    measurements, e.g. ``noise_sigma`` (0-255 scale), ``jpeg_quality`` (1-100),
    ``blur_length`` (px, a straight-line fit; below ``BLUR_LINE_RESOLVED_MIN`` none was
    resolved), ``blur_angle`` (degrees), ``blur_extent`` (px,
    the blur in the worst direction, any cause), ``sharpness``, ``reflection_area`` (0-1).
    """

    label: Degradation
    scores: Mapping[str, float]
    flags: tuple[str, ...] = ()
    estimates: Mapping[str, Any] = field(default_factory=dict)
    rationale: str = ""
    backend: str = "builtin"

    @property
    def confidence(self) -> float:
        return float(self.scores.get(self.label.value, 0.0))

    @property
    def runner_up(self) -> Degradation | None:
        ranked = sorted(
            ((v, k) for k, v in self.scores.items() if k != self.label.value), reverse=True
        )
        return Degradation(ranked[0][1]) if ranked else None

    def with_label(self, label: Degradation, reason: str = "overridden by the user") -> Diagnosis:
        return Diagnosis(label, self.scores, self.flags, self.estimates,
                         f"{reason}; {self.rationale}".strip("; "), self.backend)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label.value,
            "scores": {k: round(float(v), 4) for k, v in self.scores.items()},
            "flags": list(self.flags),
            "estimates": _jsonable(dict(self.estimates)),
            "rationale": self.rationale,
            "backend": self.backend,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Diagnosis:
        return cls(Degradation(d["label"]), dict(d["scores"]), tuple(d.get("flags", ())),
                   dict(d.get("estimates", {})), d.get("rationale", ""), d.get("backend", "builtin"))


def normalise_scores(raw: Mapping[str, float]) -> dict[str, float]:
    """Clip to >= 0 and make the four class scores sum to 1 (uniform if all are 0)."""
    vals = {c.value: max(0.0, float(raw.get(c.value, 0.0))) for c in CLASSES}
    total = sum(vals.values())
    if total <= 0:
        return {k: 0.25 for k in vals}
    return {k: v / total for k, v in vals.items()}


@dataclass(frozen=True)
class Step:
    """One restoration step: a registered step name and its parameters."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": _jsonable(dict(self.params)), "enabled": self.enabled}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Step:
        return cls(d["name"], dict(d.get("params", {})), bool(d.get("enabled", True)))


@dataclass(frozen=True)
class Plan:
    """Ordered, editable list of steps for one degradation class under one profile."""

    label: Degradation
    profile: str
    steps: tuple[Step, ...] = ()

    def replace_step(self, index: int, step: Step) -> Plan:
        steps = list(self.steps)
        steps[index] = step
        return Plan(self.label, self.profile, tuple(steps))

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label.value, "profile": self.profile,
                "steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Plan:
        return cls(Degradation(d["label"]), d["profile"],
                   tuple(Step.from_json(s) for s in d.get("steps", ())))


@dataclass(frozen=True)
class OutputOptions:
    """How the result is written. ``format`` None keeps the source format when it can be saved."""

    out_dir: Path | None = None
    format: str | None = None  # "jpeg" | "png" | "tiff" | "webp"
    quality: int = 95
    bit_depth: int | None = None  # 8 or 16; None keeps the source depth where the format allows
    # False drops EXIF (camera, GPS, dates), XMP, DPI and comments; the ICC profile is always
    # kept (it defines the pixels' colours) and so is Mend's own record of what was done
    keep_metadata: bool = True
    suffix: str = "_mend"


@dataclass(frozen=True)
class JobRequest:
    """Restore one photo. ``plan`` None means: diagnose, then build the plan for ``label``/auto."""

    path: Path
    output: OutputOptions = field(default_factory=OutputOptions)
    label: Degradation | None = None  # override the class; None = auto
    plan: Plan | None = None
    profile: str = "auto"  # builtin | laptop | quality | auto
    device: str = "auto"  # auto | cpu | cuda | mps
    backend: str = "auto"  # classifier backend
    mask_path: Path | None = None  # reflection mask (8-bit, white = remove)
    diagnosis: Diagnosis | None = None  # reuse an earlier diagnosis
    guard: bool = True  # regression guard
    # a preview of part of the photo: (x0, y0, x1, y1) in the upright photo's pixels, x1 and y1
    # excluded. The photo is diagnosed and planned whole, the steps run on this region plus a
    # margin of context, and the result of the region alone is written as ``<stem><suffix>
    # _preview.<ext>`` (never a result's name; a kept photo is written afresh, never copied)
    region: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class JobProgress:
    job_id: int
    fraction: float
    message: str
    eta_seconds: float | None = None


@dataclass(frozen=True)
class StepRecord:
    name: str
    model: str
    seconds: float
    notes: str = ""

    def to_json(self) -> dict[str, Any]:
        d = {"name": self.name, "model": self.model, "seconds": round(self.seconds, 3)}
        if self.notes:
            d["notes"] = self.notes
        return d


@dataclass(frozen=True)
class JobResult:
    path: Path
    output: Path | None
    label: Degradation
    diagnosis: Diagnosis  # with the class that ran (``label``) when one was chosen or a mask given
    plan: Plan
    steps: tuple[StepRecord, ...] = ()
    warnings: tuple[str, ...] = ()
    # the ids of the store's models the steps used (``pipeline.used_models``); what else made a
    # step's result (a built-in method, a mask the user gave) is in that step's ``model``
    models: tuple[str, ...] = ()
    seconds: float = 0.0
    artifacts: Mapping[str, Any] = field(default_factory=dict)  # e.g. mask path, face/text boxes
    # a preview's region (x0, y0, x1, y1, upright photo pixels, clipped to the photo): ``output``
    # then holds that part of the result only, and is no result of the photo
    region: tuple[int, int, int, int] | None = None
    # the result is the photo as it was (the record's ``kept_original``): nothing to fix (D),
    # no step changed a pixel (a built-in fill of a mask no one checked, an empty mask), or the
    # regression guard kept the original; ``warnings`` say why
    kept_original: bool = False
    # the photo's diagnosis as Mend made it, before a class chosen (or B, for a reflection
    # mask) took its place in ``diagnosis``: what "Automatic" plans. None: ``diagnosis``
    diagnosed: Diagnosis | None = None

    def to_json(self) -> dict[str, Any]:
        d = {
            "path": str(self.path),
            "output": str(self.output) if self.output else None,
            "label": self.label.value,
            "steps": [s.to_json() for s in self.steps],
            "warnings": list(self.warnings),
        }
        if self.artifacts.get("mask_path"):  # an inpainting plan's mask, written beside it
            d["mask"] = str(self.artifacts["mask_path"])
        if self.region is not None:
            d["region"] = list(self.region)
        return d


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples to plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    return _jsonable(asdict(obj))
