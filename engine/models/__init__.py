"""Model manifest, store (download/verify/import), loaders and the loaded-model cache.

Public surface (the CLI, the UI and the engine's pipeline and steps call these):

* ``ModelStore`` (store.py): status / require / pull / verify / remove / import_path / disk_usage
* ``ModelRuntime`` (runtime.py): is_available / path / file / load_image_model / cached /
  cancellable (a load abandoned on a job's cancel) / evict / clear
* ``create_pack`` / ``import_pack`` / ``pull_profile`` (packs.py)
* ``models_table`` / ``doctor_models`` (info.py)
* ``Manifest`` / ``default_manifest`` / ``profile_model_ids`` (manifest.py)

Nothing here imports torch at import time.
"""
from __future__ import annotations

from .download import DownloadProgress, offline_mode
from .info import doctor_models, models_table
from .manifest import Manifest, ModelFile, ModelSpec, default_manifest, profile_model_ids
from .packs import PackRefused, create_pack, import_pack, pull_profile
from .store import (
    ImportReport,
    ModelFileCorrupt,
    ModelStore,
    UnexpectedModelFiles,
    VerifyReport,
)

__all__ = [
    "DownloadProgress", "ImportReport", "Manifest", "ModelFile", "ModelFileCorrupt", "ModelSpec",
    "ModelStore", "PackRefused", "UnexpectedModelFiles", "VerifyReport", "create_pack",
    "default_manifest", "doctor_models", "import_pack", "models_table", "offline_mode",
    "profile_model_ids", "pull_profile",
]
