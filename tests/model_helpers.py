"""Helpers that put tiny models built by a test into a real ModelStore under the real manifest
id, so tests load them through the real store + runtime code path."""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

from engine.models.manifest import Manifest, ModelFile, default_manifest
from engine.models.runtime import ModelRuntime
from engine.models.store import ModelStore


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_with(model_id: str, files: dict[str, Path], base: Manifest | None = None,
                  url_base: str | None = None) -> Manifest:
    """The real manifest with ``model_id``'s files replaced by ``files`` (name -> built file),
    pinned to those files' own sizes and hashes. ``url_base`` gives them download URLs
    (e.g. a loopback test server)."""
    base = base or default_manifest()
    spec = base.get(model_id)
    new_files = []
    for name, src in files.items():
        src = Path(src)
        new_files.append(ModelFile(
            name=name, url=(f"{url_base.rstrip('/')}/{name}" if url_base else None),
            size=src.stat().st_size, sha256=sha256_of(src), sha256_source="test: built by the test",
        ))
    main = spec.main_file if spec.main_file in files else (
        next(iter(files)) if len(files) == 1 else spec.main_file)
    new = dataclasses.replace(spec, files=tuple(new_files), main_file=main, slot=False)
    return base.with_model(new)


def install_test_model(store_root: Path, model_id: str, files: dict[str, Path],
                       store: ModelStore | None = None) -> ModelStore:
    """Install ``files`` (name -> path of a file the test built, in the real release layout)
    into a store at ``store_root`` as model ``model_id``; returns the store. Pass ``store`` to
    add a further model to a store returned earlier (its manifest is extended)."""
    base = store.manifest if store is not None else None
    manifest = manifest_with(model_id, files, base)
    st = ModelStore(store_root, manifest)
    for name, src in files.items():
        dest = st.file_path(model_id, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    st.verify(model_id)
    assert st.status(model_id) == "verified", st.status(model_id)
    return st


def make_runtime(store: ModelStore, budget: int | None = None) -> ModelRuntime:
    """A ModelRuntime on the CPU over ``store``."""
    from engine.devices import select_device

    return ModelRuntime(select_device("cpu"), store, budget=budget)
