"""Profiles (builtin / laptop / quality) and the plan each one builds for a diagnosis.

* ``quality`` (CUDA/MPS): the paper's chains - A: InvSR + text fusion; B: reflection mask
  (YOLO when configured, SAM refinement) + LaMa + NAFNet; C: NAFNet + CodeFormer.
* ``laptop`` (CPU): Real-ESRGAN general-x4v3 instead of InvSR; B and C as in quality, tiled.
* ``builtin``: no downloads - non-local means + unsharp mask (A), glare detector + OpenCV
  inpainting (B), Wiener deconvolution of a confidently measured line blur, else gentle
  sharpening (C).
* D: the photo passes through untouched.

Parameters follow the diagnosis' measurements: denoising strength from the noise sigma (and
JPEG quality; the denoising step measures itself how noisy the colour is next to the
brightness), deconvolution only above a measurable blur length; after a denoising pass the
sharpening is listed but switched off (measured against clean originals, it brought the
noise back).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api import Degradation, Diagnosis, Plan, Step
from ..devices import DeviceInfo
from ..errors import UsageError

PROFILES = ("builtin", "laptop", "quality")

# Model ids each profile needs (kept equal to the manifest's per-model "profiles" lists; a
# test checks both directions). Optional models used when present (the reflection-yolo slot,
# SAM on the laptop profile) are not listed.
_COMMON_GPU_CPU = {"pp-ocr", "nafnet-gopro-w64", "nafnet-sidd-w64", "big-lama", "codeformer",
                   "yunet-2023mar"}
PROFILE_MODELS: dict[str, frozenset[str]] = {
    "builtin": frozenset(),
    # laptop: the light Compact model for the whole photo and for its text regions
    "laptop": frozenset(_COMMON_GPU_CPU | {"realesr-general-x4v3"}),
    "quality": frozenset(_COMMON_GPU_CPU | {"realesrgan-x4plus", "invsr-noise-predictor-v5",
                                            "sd-turbo", "sam-vit-base"}),
}

# Models a step uses when installed and does without otherwise (YuNet -> Haar faces, SAM and
# YOLO -> the built-in reflection detector): never reported as missing for a plan.
OPTIONAL_MODELS = frozenset({"yunet-2023mar", "sam-vit-base", "reflection-yolo"})

MIN_NOISE_SIGMA = 1.5  # below: no denoising pass
# Not raised, measured (22 clean photos, seeded noise, sigma read by the analyzer): NLM at white
# noise sigma 3 scores below the noisy photo (38.30 vs 38.69 dB mean), but the photos it makes
# worse are those whose texture the analyzer reads as more noise (read 3.4-6.4), while those
# read 3.1-3.3 gain; a threshold of 2.0 changes none of these photos, 2.5-4.0 cost correlated
# noise sigma 5 (read 2.2-4.1) 0.2-0.5 dB even with no fix in its place, and in its place the
# plan sharpens, 6-7 dB below NLM at reads 2-4.
# Sharpening after the built-in denoising is planned switched off (listed, so that it can be
# ticked). Measured against the clean originals (16 photos: 8 McMaster, 5 DF2K patches,
# astronaut, Set5 head and woman; Gaussian noise, white or correlated over ~1 px; sigma read
# by the analyzer, NLM as planned), mean PSNR / SSIM of NLM alone vs NLM + the unsharp mask
# the plan added:
#   white  5: 33.62/0.905 vs 30.37/0.881 (the noisy photo itself: 34.32/0.936)
#   white 10: 28.41/0.811 vs 28.16/0.806    white 15: 26.47/0.755 vs 26.46/0.754
#   white 25: 24.23/0.686 vs 24.39/0.692    corr. 10: 29.00/0.867 vs 27.03/0.816
#   corr. 20: 25.94/0.745 vs 25.33/0.723
# The mask sharpens the noise NLM leaves (and the isolated specks it cannot average away) as
# much as the detail; at light noise it made the photo worse than no fix at all.
MIN_BLUR_LENGTH = 3.0  # px; below: no deconvolution (a mild sharpening instead)
FACE_FIDELITY = 0.7  # CodeFormer w: keeps identity, still repairs


def recommend_profile(device: DeviceInfo) -> str:
    """quality on a GPU, laptop on a CPU."""
    return "quality" if device.kind in ("cuda", "mps") else "laptop"


def profile_models(profile: str) -> set[str]:
    """Model ids the profile's chains need (what ``mend models pull --profile`` fetches)."""
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r} (builtin, laptop or quality)")
    return set(PROFILE_MODELS[profile])


def _num(est: Mapping[str, Any], key: str) -> float | None:
    v = est.get(key)
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def effective_noise_sigma(diagnosis: Diagnosis | None) -> float | None:
    """Noise sigma (0-255) to denoise for: the measured sigma, raised for heavy JPEG
    compression (NLM also smooths blocking). None when nothing was measured."""
    if diagnosis is None:
        return None
    est = diagnosis.estimates
    sigma = _num(est, "noise_sigma")
    q = _num(est, "jpeg_quality")
    if q is not None and q < 75:
        jpeg_sigma = (75.0 - q) / 6.0  # q 50 -> ~4, q 20 -> ~9
        sigma = max(sigma or 0.0, jpeg_sigma)
    return sigma


def _chain_a(profile: str, diagnosis: Diagnosis | None) -> tuple[Step, ...]:
    if profile == "quality":
        return (Step("sr_invsr", {"scale": 1, "steps": 1}), Step("text_fusion"))
    if profile == "laptop":
        # on a CPU the text regions also use the light Compact model (x4plus: ~15x slower)
        return (Step("sr_realesrgan", {"model": "realesr-general-x4v3", "scale": 1}),
                Step("text_fusion", {"model": "realesr-general-x4v3"}))
    sigma = effective_noise_sigma(diagnosis)
    steps = []
    if sigma is None:
        steps.append(Step("denoise_builtin", {"strength": 1.0}))  # measures sigma itself
    elif sigma >= MIN_NOISE_SIGMA:
        steps.append(Step("denoise_builtin", {"sigma": round(sigma, 2), "strength": 1.0}))
    # gentler sharpening on noisy photos, when ticked (it brings residual noise back)
    amount = 0.6 if sigma is None or sigma < 8 else 0.35
    # after a planned denoising pass the sharpening is listed but off (see MIN_NOISE_SIGMA's
    # note: against the clean originals it undid the denoising)
    denoised = sigma is not None and sigma >= MIN_NOISE_SIGMA
    steps.append(Step("sharpen_builtin", {"strength": amount, "radius": 1.2},
                      enabled=not denoised))
    return tuple(steps)


def _chain_b(profile: str, diagnosis: Diagnosis | None) -> tuple[Step, ...]:
    if profile == "builtin":
        return (Step("reflection_mask", {"detector": "builtin"}), Step("inpaint_builtin"))
    return (Step("reflection_mask", {"detector": "auto"}), Step("inpaint_lama"),
            Step("dereflect_nafnet", {"strength": 1.0}))


def _chain_c(profile: str, diagnosis: Diagnosis | None) -> tuple[Step, ...]:
    if profile != "builtin":
        return (Step("deblur_nafnet"), Step("face_codeformer", {"fidelity": FACE_FIDELITY}))
    from .deblur import blur_confidence

    est = diagnosis.estimates if diagnosis is not None else {}
    length = _num(est, "blur_length")
    if length is not None and length >= MIN_BLUR_LENGTH and \
            blur_confidence(length, _num(est, "motion_evidence"))[0]:
        return (Step("deblur_builtin", {"length": round(length, 2),
                                        "angle": round(_num(est, "blur_angle") or 0.0, 1)}),)
    # no confidently measured straight-line blur (real camera shake rarely is one):
    # deconvolution would only ring; sharpen a little instead
    return (Step("sharpen_builtin", {"strength": 0.4, "radius": 1.5}),)


_CHAINS = {Degradation.A: _chain_a, Degradation.B: _chain_b, Degradation.C: _chain_c}


def build_plan(label: Degradation, profile: str, diagnosis: Diagnosis | None = None) -> Plan:
    """The ordered steps for ``label`` under ``profile``, tuned by ``diagnosis``."""
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r} (builtin, laptop or quality)")
    if label is Degradation.D:
        return Plan(label, profile, (Step("passthrough"),))
    return Plan(label, profile, _CHAINS[label](profile, diagnosis))
