from __future__ import annotations

import pytest

from engine.api import Degradation, Diagnosis
from engine.devices import DeviceInfo
from engine.errors import UsageError
from engine.models.manifest import default_manifest
from engine.restore.profiles import PROFILES, build_plan, profile_models, recommend_profile
from engine.restore.registry import all_steps

# models a step may use when present but never needs (optional slot / refinement)
OPTIONAL = {"reflection-yolo", "sam-vit-base"}


def _diag(label="A", **est):
    return Diagnosis(Degradation(label), {label: 1.0}, estimates=est)


DIAGNOSES = [None, _diag(), _diag(noise_sigma=12.0, jpeg_quality=40, blur_length=9.0,
                                  blur_angle=30.0), _diag(noise_sigma=0.3, blur_length=1.0)]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("label", list(Degradation))
def test_plans_name_only_registered_steps(profile, label):
    steps = all_steps()
    for diag in DIAGNOSES:
        plan = build_plan(label, profile, diag)
        assert plan.label is label and plan.profile == profile and plan.steps
        for s in plan.steps:
            assert s.name in steps, f"{profile}/{label.value}: {s.name} is not registered"


def _models_of(step) -> set[str]:
    spec = all_steps()[step.name]
    if step.name in ("sr_realesrgan", "text_fusion"):  # one Real-ESRGAN model, by parameter
        return {step.params.get("model", spec.defaults.get("model"))} | (
            set(spec.models) & {"pp-ocr"})
    if step.name == "reflection_mask" and step.params.get("detector") == "builtin":
        return set()
    return set(spec.models) - OPTIONAL


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_models_cover_every_planned_step(profile):
    needed = set()
    for label in Degradation:
        for diag in DIAGNOSES:
            for s in build_plan(label, profile, diag).steps:
                needed |= _models_of(s)
    assert needed <= profile_models(profile), needed - profile_models(profile)
    if profile == "builtin":
        assert needed == set() and profile_models(profile) == set()


def test_profile_models_agree_with_the_manifest():
    manifest = default_manifest()
    for profile in PROFILES:
        listed = {m.id for m in manifest if profile in m.profiles}
        assert profile_models(profile) == listed, profile
        for mid in profile_models(profile):
            manifest.get(mid)  # every id exists


def test_parameters_follow_the_diagnosis():
    noisy = build_plan(Degradation.A, "builtin", _diag(noise_sigma=12.0))
    assert [s.name for s in noisy.steps] == ["denoise_builtin", "sharpen_builtin"]
    assert noisy.steps[0].params["sigma"] == 12.0
    assert noisy.steps[1].params["strength"] < 0.5  # gentler sharpening on noisy photos
    # ...when ticked: after a denoising pass it is listed but off
    assert noisy.steps[0].enabled and not noisy.steps[1].enabled
    clean = build_plan(Degradation.A, "builtin", _diag(noise_sigma=0.4))
    assert [s.name for s in clean.steps] == ["sharpen_builtin"]
    assert clean.steps[0].enabled
    # no measurement: the denoiser measures (and may skip), the sharpening stays on
    assert all(s.enabled for s in build_plan(Degradation.A, "builtin", _diag()).steps)
    jpeg = build_plan(Degradation.A, "builtin", _diag(noise_sigma=0.4, jpeg_quality=25))
    assert jpeg.steps[0].name == "denoise_builtin" and jpeg.steps[0].params["sigma"] > 5
    blur = build_plan(Degradation.C, "builtin", _diag("C", blur_length=11.2, blur_angle=30.0))
    assert blur.steps[0].name == "deblur_builtin"
    assert blur.steps[0].params == {"length": 11.2, "angle": 30.0}
    small = build_plan(Degradation.C, "builtin", _diag("C", blur_length=1.2))
    assert [s.name for s in small.steps] == ["sharpen_builtin"]
    # a length at the analyzer's floor, or with weak evidence, is not deconvolved
    floor = build_plan(Degradation.C, "builtin", _diag("C", blur_length=3.7, motion_evidence=20))
    assert [s.name for s in floor.steps] == ["sharpen_builtin"]
    weak = build_plan(Degradation.C, "builtin", _diag("C", blur_length=11.2, motion_evidence=2))
    assert [s.name for s in weak.steps] == ["sharpen_builtin"]
    sure = build_plan(Degradation.C, "builtin", _diag("C", blur_length=11.2, motion_evidence=9))
    assert sure.steps[0].name == "deblur_builtin"


def test_chains_per_profile():
    names = {p: {lab: [s.name for s in build_plan(lab, p).steps] for lab in Degradation}
             for p in PROFILES}
    assert names["quality"][Degradation.A] == ["sr_invsr", "text_fusion"]
    assert names["laptop"][Degradation.A] == ["sr_realesrgan", "text_fusion"]
    for p in ("quality", "laptop"):
        assert names[p][Degradation.B] == ["reflection_mask", "inpaint_lama", "dereflect_nafnet"]
        assert names[p][Degradation.C] == ["deblur_nafnet", "face_codeformer"]
    assert names["builtin"][Degradation.B] == ["reflection_mask", "inpaint_builtin"]
    assert all(names[p][Degradation.D] == ["passthrough"] for p in PROFILES)
    assert build_plan(Degradation.A, "quality").steps[0].params["scale"] == 1  # keeps the size


def test_recommendation_and_unknown_profile():
    gpu = DeviceInfo("cuda", "gpu", 1, 1 << 30, 1 << 30, True, True)
    cpu = DeviceInfo("cpu", "cpu", 1, 1 << 30, 1 << 30, False, False)
    assert recommend_profile(gpu) == "quality" and recommend_profile(cpu) == "laptop"
    with pytest.raises(UsageError):
        build_plan(Degradation.A, "fastest")
    with pytest.raises(UsageError):
        profile_models("fastest")


def _run_enabled(plan, image, diagnosis):
    from engine.devices import select_device
    from engine.progress import Progress
    from engine.restore.registry import StepContext, get_step

    ctx = StepContext(device=select_device("cpu"), progress=Progress(), runtime=None,
                      diagnosis=diagnosis, tile_size=512)
    for s in plan.steps:
        if s.enabled:
            spec = get_step(s.name)
            image = spec.fn(image, {**spec.defaults, **s.params}, ctx).image
    return image


@pytest.mark.parametrize("kind", ["white5", "correlated10"])
def test_builtin_a_chain_improves_a_lightly_noisy_real_photo(shared_images, kind):
    """A clean real photo with light noise (white sigma 5, or sigma 10 correlated over a pixel
    as a camera's demosaicking leaves it), its sigma read by the analyzer and the built-in A
    plan run as planned: the result is closer to the clean photo than the noisy one. The
    unsharp mask the plan used to add after NLM made it worse than no fix (measured on
    astronaut: white 5: 34.53 dB noisy, 31.45 with the mask, 36.03 without; correlated 10:
    28.58, 27.58, 29.45)."""
    import cv2
    import numpy as np

    from engine.imageio import load_photo
    from engine.understand.measure import estimate_noise

    path = shared_images / "clean" / "scikit-image__skimage__data__astronaut.png"
    if not path.is_file():
        pytest.skip("the astronaut photo is not in the shared photos")
    clean = np.clip(load_photo(path).pixels, 0, 1).astype(np.float32)
    noise = np.random.default_rng(7).normal(0, 1, clean.shape).astype(np.float32)
    sigma = 5.0
    if kind == "correlated10":
        noise = cv2.GaussianBlur(noise, (0, 0), 0.7)
        noise /= noise.std()
        sigma = 10.0
    noisy = np.clip(clean + noise * sigma / 255, 0, 1).astype(np.float32)
    diag = _diag(noise_sigma=estimate_noise(noisy), jpeg_quality=100)
    plan = build_plan(Degradation.A, "builtin", diag)
    assert plan.steps[0].name == "denoise_builtin"
    out = _run_enabled(plan, noisy, diag)

    def psnr(a):
        return 10 * np.log10(1 / np.mean((np.clip(a, 0, 1) - clean) ** 2))

    assert psnr(out) > psnr(noisy) + 0.5, (psnr(out), psnr(noisy))
