"""The built-in analyzer: physical measurements + a small calibrated model (no download).

The scores come from a small patch CNN (``resources/analyzer_cnn.npz``: three seeds of one
recipe, their log-probabilities averaged; trained by ``scripts/train_analyzer_cnn.py`` on
synthetic degradations only, run in numpy). ``resources/analyzer_model.json`` (written by
``scripts/fit_analyzer.py``) is a linear layer over features; the shipped one is of kind
``cnn-scores``: the CNN's four scores with identity weights, so no real photo decides a label,
and a temperature fitted on the labelled photos that is applied last (confidence only: a power
of the scores keeps their order). The feature model the file format also holds (a logistic
regression over the measurements) learnt the files rather than the degradations and is not
shipped (docs/ANALYZER.md).

Two physical checks follow the CNN, on its untempered scores. The first: a photo whose edges show less than
``MIN_MOTION_SMEAR`` px of blur in any direction (``blurextent.estimate_blur_extent``) is not a
motion-blur photo, so class C's score is cut before the label is chosen. 3 px is a physical
floor, not a fitted figure: the cepstral line estimator's own floor is 3.7 px, and a blur that
small is not what the C chain is for (real camera shake in ../shared/images reads 4-34 px).
The same check cuts C when the blur is about as wide in every direction (``blur_isotropy`` at
least ``MOTION_MAX_ISOTROPY``): that is defocus or softness (class A), not motion, which smears
one way more than the others. 0.5 about minimises the errors on synthetic 6-24 px blurs of
clean photos that are not evaluation photos (``scripts/blur_isotropy_threshold.py``: straight
and hand-shake paths median 0.33, 14.8 % at or above 0.5; Gaussian and disc blurs median 0.65,
7.9 % below it).

A second one covers what the CNN cannot see: it looks at a copy reduced to at most 1024 px, so on
a larger photo noise and JPEG blocks are averaged away. When the full-resolution noise or JPEG
measurement passes its flag's physical threshold there, most of D's score moves to A
(``full_resolution_check``).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..api import BLUR_LINE_RESOLVED_MIN, CLASSES, Degradation, Diagnosis
from ..errors import Cancelled, EngineError
from ..resources import resource
from . import measure as M
from .base import photos_for, register_classifier

MODEL_PATH = resource("analyzer_model.json")

# feature name -> how to read it from measure() output
FEATURES: tuple[str, ...] = (
    "noise", "jpeg_badness", "blockiness", "motion_evidence",
    # spectrum and sharpness across scales
    "cutoff", "band_slope_0", "band_slope_1", "band_slope_2", "band_slope_3", "lap_ratio",
    "lp_r01", "lp_r12", "lp_r23", "edge_steep", "edge_steep_med",
    # direction (motion blur is anisotropic, defocus/upscaling are not)
    "aniso_1", "aniso_2", "view_motion_evidence", "view_blur_length", "spec_aniso_mid",
    "spec_aniso_mid_std", "spec_aniso_high", "spec_aniso_high_std",
    # natural-scene statistics (BRISQUE-style MSCN moments, paired products) at two scales
    "nss0_var", "nss0_rho", "nss0_kurt", "nss0_pp_h", "nss0_pp_v", "nss0_pp_d",
    "nss1_var", "nss1_rho", "nss1_kurt", "nss1_pp_h", "nss1_pp_v", "nss1_pp_d",
    # layers, glare, colour
    "ghosting", "dyn_range", "median_luma", "local_contrast", "dark_channel", "saturation",
    "specular", "black_level", "black_level_med", "flat_frac", "contrast_p90", "sat_p90",
    "colorful", "chroma_sharpness", "chroma_sharp_rel",
    # mean patch log-probabilities of the small CNN trained only on synthetic degradations
    # (measure.cnn_features, resources/analyzer_cnn.npz, scripts/train_analyzer_cnn.py)
    "cnn_A", "cnn_B", "cnn_C", "cnn_D",
)
# The image's pixel count is deliberately NOT a feature: in the fitting photos size tracks
# the source repository (motion-blur and reflection sets are large, low-quality sets small),
# a shortcut that would push every 12-24 MP user photo towards B/C.


_DERIVED = ("noise", "jpeg_badness", "blockiness", "motion_evidence")


def feature_vector(meas: Mapping[str, Any], names: tuple[str, ...] = FEATURES) -> np.ndarray:
    vf = meas["features"]
    jpeg_bad = 0.0
    if meas.get("jpeg_source") == "tables" or meas.get("jpeg_evidence", 0.0) >= M.JPEG_EVIDENCE:
        jpeg_bad = (100.0 - float(meas["jpeg_quality"])) / 100.0
    derived = {
        "noise": math.log1p(float(meas["noise_sigma"])),
        "jpeg_badness": jpeg_bad,
        "blockiness": min(float(meas["blockiness"]), 4.0),
        "motion_evidence": float(meas["motion_evidence"]),
    }
    out = []
    for n in names:
        if n not in derived and n not in vf:
            if n.startswith("cnn_"):
                raise EngineError(f"the analyzer's network file is missing ({M.CNN_PATH}); "
                                  "reinstall Mend")
            raise EngineError(f"the analyzer's model needs a measurement it lacks ({n})")
        v = derived[n] if n in derived else float(vf[n])
        out.append(v if math.isfinite(v) else 0.0)
    return np.asarray(out, dtype=np.float64)


class LogisticModel:
    """Standardise -> linear -> softmax. Parameters from JSON."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.features = tuple(params["features"])
        self.classes = tuple(params["classes"])
        self.mean = np.asarray(params["mean"], dtype=np.float64)
        self.scale = np.asarray(params["scale"], dtype=np.float64)
        self.W = np.asarray(params["W"], dtype=np.float64)
        self.b = np.asarray(params["b"], dtype=np.float64)
        self.temperature = float(params.get("temperature", 1.0))
        self.meta = dict(params.get("fit", {}))
        if self.W.shape != (len(self.classes), len(self.features)):
            raise ValueError("analyzer model: weight shape does not match features/classes")

    def proba(self, x: np.ndarray, tempered: bool = True) -> np.ndarray:
        """Class probabilities; ``tempered=False``: before the temperature (the analyzer
        applies it last, after its physical checks, so that it sets the confidence only)."""
        z = ((np.atleast_2d(x) - self.mean) / self.scale) @ self.W.T + self.b
        if tempered:
            z = z / self.temperature
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


@lru_cache(maxsize=2)
def load_model(path: str | None = None) -> LogisticModel:
    p = Path(path) if path else MODEL_PATH
    try:
        return LogisticModel(json.loads(p.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise EngineError(f"the analyzer's model file is missing ({p}); reinstall Mend") from None
    except (ValueError, KeyError) as e:
        raise EngineError(f"the analyzer's model file is damaged ({p}): {e}") from None


# thresholds for the multi-label flags (physical units)
NOISE_FLAG = 6.0  # sigma on 0-255
JPEG_FLAG = 60.0  # quality below
BLUR_SHARPNESS_FLAG = 0.35
LOWRES_PIXELS = 0.3e6
UPSCALED_CUTOFF = 0.6
# class flags: the label, or any class at least this likely (the scores are calibrated on
# held-out repositories, so they are soft: 0.25 is chance)
CLASS_FLAG = 0.4
# C needs a measured blur extent of at least this many px (original resolution) ...
MIN_MOTION_SMEAR = 3.0
# ... and a blur at least this isotropic (narrowest direction / widest) is not motion ...
MOTION_MAX_ISOTROPY = 0.5
# ... else its probability is multiplied by this before renormalising
NO_SMEAR_C_FACTOR = 0.1
# share of D's probability kept when full-resolution damage hides from the CNN's reduced view
# (the rest moves to A; see full_resolution_check)
HIDDEN_DAMAGE_D_FACTOR = 0.1
# the straight-line (cepstral) estimate is shown when it is off its ~3.7 px floor
LINE_FLOOR = BLUR_LINE_RESOLVED_MIN


def estimates_from(meas: Mapping[str, Any]) -> dict[str, Any]:
    """The physical estimates every Diagnosis carries (units in the keys' docs)."""
    vf = meas["features"]
    cutoff = float(vf.get("cutoff", 1.0))
    return {
        "noise_sigma": round(float(meas["noise_sigma"]), 2),  # 0-255, per channel
        "jpeg_quality": round(float(meas["jpeg_quality"])),  # IJG 1-100 (100 = none seen)
        "jpeg_source": meas.get("jpeg_source", "pixels"),  # "tables" (exact) | "pixels"
        "blur_length": round(float(meas["blur_length"]), 2),  # px, original resolution
        "blur_angle": round(float(meas["blur_angle"]), 1),  # degrees, 0 = horizontal, ccw
        # blur in the worst direction, any cause or path (curved shake too), from edge widths
        "blur_extent": round(float(meas.get("blur_extent", 0.0)), 1),  # px, original resolution
        "blur_extent_angle": round(float(meas.get("blur_extent_angle", 0.0)), 1),
        # the narrowest direction's blur over the widest's: ~1 defocus / soft, low = motion
        "blur_isotropy": round(float(meas.get("blur_isotropy", 1.0)), 2),
        "motion_evidence": round(float(meas["motion_evidence"]), 2),
        "sharpness": round(float(meas["sharpness"]), 3),  # 0 (blurred) .. 1 (crisp), on view
        "upscale_factor": round(1.0 / max(cutoff, 0.1), 2),  # ~1 native, k = upscaled k times
        "reflection_area": round(float(meas.get("reflection_area", 0.0)), 3),  # 0-1 of frame
        "specular_area": round(float(vf.get("specular", 0.0)), 4),
        "width": int(meas["width"]),
        "height": int(meas["height"]),
        "units": "px at original resolution; noise_sigma on 0-255; view features on a copy "
                 f"downscaled {float(meas.get('view_scale', 1.0)):.2f}x",
    }


def flags_from(meas: Mapping[str, Any], scores: Mapping[str, float]) -> tuple[str, ...]:
    est = estimates_from(meas)
    flags = []
    if est["noise_sigma"] >= NOISE_FLAG:
        flags.append("noise")
    if est["jpeg_quality"] < JPEG_FLAG:
        flags.append("jpeg")
    if est["width"] * est["height"] < LOWRES_PIXELS:
        flags.append("low_resolution")
    if est["upscale_factor"] >= 1 / UPSCALED_CUTOFF:
        flags.append("upscaled")
    if est["sharpness"] < BLUR_SHARPNESS_FLAG and scores.get("C", 0) < 0.5:
        flags.append("blur")
    top = max(scores, key=scores.get) if scores else None
    if scores.get("C", 0) >= CLASS_FLAG or top == "C":
        flags.append("motion_blur")
    if scores.get("B", 0) >= CLASS_FLAG or top == "B":
        flags.append("reflection")
    return tuple(flags)


def analyze(image: np.ndarray, photo: Any | None = None,
            model: LogisticModel | None = None,
            cancel_check: Callable[[], None] | None = None) -> Diagnosis:
    """Measure, score and explain one photo with the built-in analyzer. ``cancel_check`` (a
    job's ``Progress.check``) is called between the measurements (``measure.measure``)."""
    model = model or load_model()
    # the extra view cues are measured only when the model reads them
    meas = M.measure(image, photo, extra=not all(n.startswith("cnn_") or n in _DERIVED
                                                 for n in model.features),
                     cancel_check=cancel_check)
    x = feature_vector(meas, model.features)
    p = model.proba(x, tempered=False)[0]
    scores = smear_check({c: float(p[model.classes.index(c)]) for c in (d.value for d in CLASSES)},
                         meas)
    scores = full_resolution_check(scores, meas)
    # the temperature last: it keeps the order of the scores, so it sets the confidence and
    # never the label (applied before the checks, it could: they compare probabilities)
    scores = temper(scores, model.temperature)
    label = Degradation(max(scores, key=scores.get))
    refl = scores["B"] >= CLASS_FLAG or label == Degradation.B
    meas["reflection_area"] = meas["features"].get("veil_area", 0.0) if refl else 0.0
    est = estimates_from(meas)
    flags = flags_from(meas, scores)
    return Diagnosis(label, scores, flags, est, _rationale(label, scores, est, flags), "builtin")


def temper(scores: dict[str, float], temperature: float) -> dict[str, float]:
    """Scores raised to 1/``temperature`` and renormalised (= a softmax temperature on their
    logarithms): the order, so the label, is kept."""
    if temperature == 1.0 or not scores:
        return dict(scores)
    logs = {k: np.log(max(v, 1e-300)) / temperature for k, v in scores.items()}
    top = max(logs.values())
    e = {k: float(np.exp(v - top)) for k, v in logs.items()}
    total = sum(e.values())
    return {k: v / total for k, v in e.items()}


def smear_check(scores: dict[str, float], meas: Mapping[str, Any]) -> dict[str, float]:
    """Cut class C when the edges show no blur worth the name, or a blur as wide in every
    direction as in the worst one (see the module docstring). A photo with too few clean edges
    to measure (``blur_extent_edges`` 0) is left alone."""
    if float(meas.get("blur_extent_edges", 0.0)) <= 0 or "C" not in scores:
        return scores
    smeared = float(meas.get("blur_extent", 0.0)) >= MIN_MOTION_SMEAR
    one_way = float(meas.get("blur_isotropy", 0.0)) < MOTION_MAX_ISOTROPY
    if smeared and one_way:
        return scores
    out = dict(scores)
    out["C"] *= NO_SMEAR_C_FACTOR
    total = sum(out.values())
    return {k: v / total for k, v in out.items()} if total > 0 else scores


def full_resolution_check(scores: dict[str, float], meas: Mapping[str, Any]) -> dict[str, float]:
    """D means "nothing to fix". On a photo larger than the CNN's view (reduced k >= 2 times)
    the CNN cannot see damage at the pixel level: a k-times box reduction divides the noise by
    k and averages JPEG blocks away (a 12 MP photo with noise sigma 15 or JPEG quality 30 read D).
    There the full-resolution measurements speak: with noise at or above the ``noise`` flag
    (``NOISE_FLAG``) or JPEG quality below the ``jpeg`` flag (``JPEG_FLAG``), what the CNN
    called clean is class A's damage, so most of D's score moves to A (B and C, which the CNN
    could see, keep theirs). Photos the CNN saw at their own resolution (k = 1) are left to it."""
    if float(meas.get("view_scale", 1.0)) < 2 or "D" not in scores:
        return scores
    jpeg_measured = meas.get("jpeg_source") == "tables" or \
        float(meas.get("jpeg_evidence", 0.0)) >= M.JPEG_EVIDENCE
    noisy = float(meas.get("noise_sigma", 0.0)) >= NOISE_FLAG
    compressed = jpeg_measured and float(meas.get("jpeg_quality", 100.0)) < JPEG_FLAG
    if not (noisy or compressed):
        return scores
    out = dict(scores)
    moved = out["D"] * (1.0 - HIDDEN_DAMAGE_D_FACTOR)
    out["D"] -= moved
    out["A"] = out.get("A", 0.0) + moved
    return out


def _rationale(label: Degradation, scores: Mapping[str, float], est: Mapping[str, Any],
               flags: tuple[str, ...]) -> str:
    parts = [f"{label.short_name} ({scores[label.value]:.0%})"]
    if "noise" in flags:
        parts.append(f"noise σ≈{est['noise_sigma']:.0f}")
    if "jpeg" in flags:
        parts.append(f"JPEG quality≈{est['jpeg_quality']}")
    if "motion_blur" in flags:
        if est["blur_length"] >= LINE_FLOOR:  # a straight line was resolved: its exact length
            parts.append(f"motion blur ≈{est['blur_length']:.0f}px line at "
                         f"{est['blur_angle']:.0f}°")
        elif est.get("blur_extent", 0) > 0:
            parts.append(f"motion blur, blur extent ≈{est['blur_extent']:.0f}px at "
                         f"{est['blur_extent_angle']:.0f}°")
        else:
            parts.append("motion blur (extent not measurable)")
    elif label == Degradation.A and est.get("blur_extent", 0) >= MIN_MOTION_SMEAR and \
            est.get("blur_isotropy", 0) >= MOTION_MAX_ISOTROPY:
        # (only where it explains the label: a sharp phone photo's edges read a few px too)
        parts.append(f"blurred ≈{est['blur_extent']:.0f}px, about as much in every direction "
                     "(defocus or softness, not motion)")
    if "upscaled" in flags:
        parts.append(f"looks upscaled ≈{est['upscale_factor']:.1f}×")
    if "low_resolution" in flags:
        if label == Degradation.D:  # small but undamaged: say so, not "low resolution" beside "Clean"
            parts.append(f"only {est['width']}×{est['height']} px, no damage seen "
                         "(choose A to enlarge it)")
        else:
            parts.append(f"low resolution {est['width']}×{est['height']}")
    if "reflection" in flags:
        parts.append("reflection cues")
    return "; ".join(parts)


@register_classifier("builtin")
class BuiltinAnalyzer:
    """Always available: measurements + calibrated logistic model."""

    name = "builtin"

    def __init__(self, runtime: Any | None = None, model_path: str | None = None,
                 cancel_check: Callable[[], None] | None = None, **_: Any):
        self._model_path = model_path
        self.cancel_check = cancel_check

    def available(self) -> bool:
        return True

    def classify(self, image: np.ndarray, photo: Any | None = None) -> Diagnosis:
        return analyze(image, photo, load_model(self._model_path), self.cancel_check)

    def classify_batch(self, images: list[np.ndarray], photos: list[Any | None]
                       ) -> list[Diagnosis | EngineError]:
        out: list[Diagnosis | EngineError] = []
        for image, photo in zip(images, photos_for(images, photos)):
            try:
                out.append(self.classify(image, photo))
            except Cancelled:  # the job's, not this photo's: it stops them all
                raise
            except EngineError as e:  # that photo's own error; the others keep theirs
                out.append(e)
        return out
