"""Summaries of the model store for the CLI (``mend models list --json``, ``mend doctor``) and
the UI's model manager."""
from __future__ import annotations

import importlib.util
from typing import Any

from . import download as dl
from .manifest import PROFILES
from .store import BUNDLED, NOT_CONFIGURED, PARTIAL, UNPINNED, VERIFIED, ModelStore


def models_table(store: ModelStore | None = None) -> list[dict[str, Any]]:
    """One row per manifest model: ``{"id", "task", "license", "commercial_use", "status",
    "files": [{"name", "size", "sha256", "pinned"}]}``. ``sha256`` is the pinned hash, or the
    hash recorded at first download/import for an unpinned file (None until then). A partial
    model's row also says how much of it is on disk: ``"present": {"files_present", "files",
    "bytes_present", "bytes"}`` (:class:`~.store.Presence`)."""
    store = store or ModelStore()
    rows = []
    for spec in store.manifest:
        status = store.status(spec.id)
        if spec.slot:
            files = [{"name": fs.name, "size": fs.size, "sha256": store._read_state(spec.id)
                      ["files"].get(fs.name, {}).get("sha256"), "pinned": False}
                     for fs in store.file_statuses(spec.id)]
        else:
            files = [{"name": f.name, "size": f.size, "sha256": store.expected_sha(spec.id, f),
                      "pinned": f.pinned} for f in spec.files]
        row = {"id": spec.id, "task": spec.task, "license": spec.license,
               "commercial_use": spec.commercial_use, "status": status, "files": files}
        if status == PARTIAL:
            row["present"] = store.presence(spec.id).to_json()
        rows.append(row)
    return rows


def doctor_models(store: ModelStore | None = None) -> dict[str, Any]:
    """Store health for ``mend doctor --json``: root, offline mode, disk use and free space,
    status per model, problems (corrupt/partial) and how much of a partial model is on disk
    (``"present"``: id -> :class:`~.store.Presence`), and which profiles are ready. Where
    PyTorch cannot be imported (``devices.torch_missing_reason``), a profile whose models run
    on it is not ready (``"torch_missing": true``): ``Engine.resolve_profile`` would not use
    it."""
    from ..devices import torch_missing_reason
    from ..restore.profiles import OPTIONAL_MODELS, profile_models
    from .runtime import torch_model_ids

    store = store or ModelStore()
    statuses = {spec.id: store.status(spec.id) for spec in store.manifest}
    ok = {VERIFIED, UNPINNED, BUNDLED}
    no_torch = torch_missing_reason() is not None
    profiles = {}
    for p in PROFILES:
        need = [s.id for s in store.manifest.for_profile(p)]
        absent = [i for i in need if statuses[i] not in ok]
        missing = [i for i in absent if i not in OPTIONAL_MODELS]
        # (the models resolve_profile checks, as it checks them)
        blocked = no_torch and bool(torch_model_ids(store, sorted(profile_models(p))))
        # ready = what ``--profile auto`` judges: a step does without an optional model (YuNet
        # -> Haar faces, SAM -> the unrefined mask); pulling the profile fetches them all
        profiles[p] = {"ready": not missing and not blocked, "missing": missing,
                       "optional_missing": [i for i in absent if i in OPTIONAL_MODELS],
                       "download_bytes": sum(store.missing_bytes(i) for i in absent),
                       "torch_missing": blocked}
    usage = store.disk_usage()
    free = store.free_space()
    return {
        "root": str(store.root),
        "manifest": str(store.manifest.source) if store.manifest.source else None,
        "offline": dl.offline_mode(),
        "disk_usage_bytes": usage["total"],
        "free_bytes": free,
        "models": statuses,
        "installed": [i for i, s in statuses.items() if s in ok],
        "problems": {i: s for i, s in statuses.items() if s in ("corrupt", "partial")},
        "present": {i: store.presence(i).to_json() for i, s in statuses.items() if s == PARTIAL},
        "not_configured": [i for i, s in statuses.items() if s == NOT_CONFIGURED],
        "profiles": profiles,
        "extra_arches": _importable("spandrel_extra_arches"),
    }


def _importable(name: str) -> bool:
    """Whether module ``name`` can be found, without importing it (an import hook that hides
    it, or a broken package, may raise instead of answering None: then it cannot)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
