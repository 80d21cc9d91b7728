"""Profiles (builtin / laptop / quality) and the plan each one builds for a diagnosis."""
from __future__ import annotations

from ..api import Degradation, Diagnosis, Plan, Step
from ..devices import DeviceInfo
from ..errors import UsageError

PROFILES = ("builtin", "laptop", "quality")


def recommend_profile(device: DeviceInfo) -> str:
    """quality on a GPU, laptop on a CPU."""
    return "quality" if device.kind in ("cuda", "mps") else "laptop"


def build_plan(label: Degradation, profile: str, diagnosis: Diagnosis | None = None) -> Plan:
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r} (builtin, laptop or quality)")
    if label is Degradation.D:
        return Plan(label, profile, (Step("passthrough"),))
    raise UsageError(f"no chain for class {label.value} in profile {profile!r} yet")
