"""The frozen app starts: `mend --help` and `mend doctor --json` from the PyInstaller bundle.

Slow (a build takes ~2-4 min here): uses dist/Mend from `make dist` when it is there (or the
folder in MEND_DIST_DIR), otherwise builds a lean bundle into a temporary folder first.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _build_dist():
    spec = importlib.util.spec_from_file_location("mend_build_dist",
                                                  ROOT / "installer" / "build_dist.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    import os

    given = os.environ.get("MEND_DIST_DIR")
    for cand in ([Path(given)] if given else []) + [ROOT / "dist" / "Mend"]:
        if (cand / "BUILD-INFO.json").is_file():
            return cand
    pytest.importorskip("PyInstaller", reason="pip install -r installer/build-requirements.txt")
    out = tmp_path_factory.mktemp("dist")
    bd = _build_dist()
    bd.main(["--dist", str(out), "--work", str(out / "work")])
    assert (out / "Mend" / "BUILD-INFO.json").is_file(), "the build failed"
    return out / "Mend"


@pytest.mark.slow
def test_frozen_mend_help_and_doctor(bundle):
    bd = _build_dist()
    info = json.loads((bundle / "BUILD-INFO.json").read_text())
    plain = bd.smoke(bundle)
    assert plain["help"]["ok"], plain
    assert plain["doctor"]["ok"], plain
    assert plain["doctor"]["device"] == "cpu" or plain["doctor"]["device"] in ("cuda", "mps")
    if info["torch_mode"] == "external":
        # the lean bundle carries no torch of its own ...
        assert plain["doctor"]["torch"].startswith("unavailable"), plain
        # ... and loads this environment's torch when pointed at it
        with_env = bd.smoke(bundle, Path(sys.prefix))
        assert with_env["doctor"]["ok"], with_env
        found = with_env["doctor"]["torch"]  # torch.__version__, e.g. "2.14.1+cu130"
        assert found.split("+")[0] == importlib.metadata.version("torch").split("+")[0]
    else:
        assert not plain["doctor"]["torch"].startswith("unavailable"), plain
