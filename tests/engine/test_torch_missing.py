"""Models that run on PyTorch where PyTorch cannot be imported: the frozen lean app (installer/
mend.spec) without the environment the installer makes, after a photographer imported an
offline pack. Before: every photo "internal error: ModuleNotFoundError: No module named
'torch'"; now one clear error before any step, naming what to do, and ``auto`` falls back to
the built-in methods.

The real command line runs in a subprocess whose import system cannot find torch and the model
libraries (as in the lean bundle without an environment); the models are stand-ins under their
release file names (never loaded: the check comes first).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.model_helpers import install_stand_in
from tests.tiny_models import write_manifest

ROOT = Path(__file__).resolve().parents[2]
NO_TORCH = ("torch", "torchvision", "spandrel", "spandrel_extra_arches", "transformers",
            "diffusers", "accelerate", "safetensors", "huggingface_hub", "tokenizers")
LAPTOP = ("realesr-general-x4v3", "nafnet-gopro-w64", "nafnet-sidd-w64", "big-lama",
          "codeformer")
# the CLI in a Python where the PyTorch stack cannot be found (as if not installed)
RUN = f"""
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NO_TORCH!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _NoTorch())
if len(sys.argv) > 1 and sys.argv[1] == "--frozen":
    sys.frozen = True
    del sys.argv[1]
from engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _mend(args: list[str], store: Path, manifest: Path, frozen: bool = False, **env: str
          ) -> subprocess.CompletedProcess:
    e = dict(os.environ, MEND_MODELS_DIR=str(store), MEND_MANIFEST=str(manifest),
             MEND_OFFLINE="1", MEND_THREADS="1",
             PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
             **env)
    return subprocess.run([sys.executable, "-c", RUN, *(["--frozen"] if frozen else []), *args],
                          capture_output=True, text=True, env=e, cwd=ROOT, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def laptop_store(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("no_torch")
    store = None
    for mid in (*LAPTOP, "siglip-base-patch16-224"):
        store = install_stand_in(d / "models", mid, store)
    return d / "models", write_manifest(store, d / "models.json")


def _photos(folder: Path, n: int = 2) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = folder / f"p{i}.png"
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(p)
        out.append(p)
    return out


def test_restore_with_a_torch_profile_says_pytorch_is_missing(laptop_store, tmp_path):
    store, manifest = laptop_store
    (photo,) = _photos(tmp_path, 1)
    r = _mend(["restore", str(photo), "--plan", "C", "--profile", "laptop", "-o",
               str(tmp_path / "out"), "--json"], store, manifest)
    assert r.returncode == 1, r.stderr
    err = json.loads(r.stdout.splitlines()[-1])["error"]
    assert "internal error" not in err and "unexpected error" not in r.stderr, (err, r.stderr)
    assert err.startswith("models 'nafnet-gopro-w64', 'codeformer' run on PyTorch, which is "
                          "not installed in this Python"), err
    assert "pip install -r requirements.lock" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # the dry run says the run would stop, and why
    r = _mend(["restore", str(photo), "--plan", "C", "--profile", "laptop", "--dry-run",
               "--json"], store, manifest)
    said = json.loads(r.stdout.splitlines()[-1])
    assert any("the run would stop" in w and "PyTorch" in w for w in said["warnings"]), said


def test_auto_profile_falls_back_to_the_built_in_methods(laptop_store, tmp_path):
    """The laptop profile's models are installed but cannot run: ``auto`` uses the built-in
    methods and says why (before, it chose laptop and failed)."""
    store, manifest = laptop_store
    (photo,) = _photos(tmp_path, 1)
    r = _mend(["restore", str(photo), "--plan", "C", "-o", str(tmp_path / "out"), "--json"],
              store, manifest)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout.splitlines()[-1])
    assert Path(res["output"]).is_file()
    assert any("used the built-in methods instead of the 'laptop' profile" in w
               and "PyTorch" in w for w in res["warnings"]), res["warnings"]


def test_frozen_app_says_to_run_the_installer(laptop_store, tmp_path):
    """In the frozen app the reason is the runtime hook's (no environment found), with what to
    do: the installer or MEND_ENV."""
    store, manifest = laptop_store
    (photo,) = _photos(tmp_path, 1)
    r = _mend(["restore", str(photo), "--plan", "A", "--profile", "laptop", "-o",
               str(tmp_path / "out")], store, manifest, frozen=True,
              MEND_RUNTIME_ENV_ERROR="no Mend environment at /nowhere/env")
    assert r.returncode == 1
    assert "no Mend environment at /nowhere/env" in r.stdout, r.stdout + r.stderr
    assert "installer/bootstrap.py" in r.stdout and "MEND_ENV" in r.stdout
    assert "internal error" not in r.stdout + r.stderr


def test_classify_with_a_stored_backend_stops_once(laptop_store, tmp_path):
    """`mend classify --backend clip`: the first photo's line says PyTorch is missing, the
    others are not run; ``auto`` uses the built-in analyzer."""
    store, manifest = laptop_store
    photos = [str(p) for p in _photos(tmp_path)]
    r = _mend(["classify", *photos, "--backend", "clip", "--json"], store, manifest)
    assert r.returncode == 1
    first, second = (json.loads(x) for x in r.stdout.splitlines())
    assert "'siglip-base-patch16-224' runs on PyTorch" in first["error"], first
    assert second.get("not_run") and "without PyTorch" in second["error"], second
    assert "internal error" not in r.stdout + r.stderr
    r = _mend(["classify", *photos, "--json"], store, manifest)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(json.loads(x)["backend"] == "builtin" for x in r.stdout.splitlines())
