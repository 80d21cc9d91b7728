"""The frozen app starts: `mend --help` and `mend doctor --json` from the PyInstaller bundle,
and what it imports only at run time works from it: the image plugins (pillow-heif, rawpy,
pillow-jxl), rapidocr with its bundled ONNX models and, from the private environment, the
PyTorch stack (transformers' tokenizers, sentencepiece, tqdm.auto from the bundle's own tqdm).

Slow (a build takes ~2-4 min here): uses dist/Mend from `make dist` when it is there (or the
folder in MEND_DIST_DIR), otherwise builds a lean bundle into a temporary folder first.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "images"


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


def _frozen(bundle: Path, args: list[str], tmp: Path, env_dir: Path | None = None, **env: str
            ) -> subprocess.CompletedProcess:
    """The frozen ``mend ARGS``, offline; ``env_dir``: the environment it loads PyTorch from
    (None: none, as on a machine where only the frozen app was unpacked)."""
    bd = _build_dist()
    e = dict(os.environ, MEND_OFFLINE="1", MEND_THREADS="1", HF_HUB_OFFLINE="1",
             MEND_MODELS_DIR=str(tmp / "models"), **env)
    for k in ("MEND_ENV", "MEND_NO_ENV", "PYTHONPATH"):
        e.pop(k, None)
    if env_dir is None:
        e["MEND_NO_ENV"] = "1"
    else:
        e["MEND_ENV"] = str(env_dir)
    return subprocess.run([str(bd.executable(bundle, "mend")), *args], capture_output=True,
                          text=True, env=e, cwd=tmp, timeout=600, check=False)


def _lines(r: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]


@pytest.mark.slow
def test_frozen_app_reads_heic_raw_and_jxl_without_an_environment(bundle, tmp_path):
    """The optional image plugins are imported only when such a file is opened."""
    from tests.engine.test_imageio_raw_jxl import make_dng

    photos = tmp_path / "in"
    photos.mkdir()
    want = {}
    (photos / "cam.dng").write_bytes(make_dng())
    want["cam.dng"] = ".tif"
    if importlib.util.find_spec("pillow_jxl") is not None:
        import numpy as np
        import pillow_jxl  # noqa: F401 - registers the JXL saver
        from PIL import Image

        rng = np.random.default_rng(0)
        Image.fromarray((rng.random((64, 80, 3)) * 255).astype(np.uint8)).save(
            photos / "p.jxl", lossless=True)
        want["p.jxl"] = ".png"
    heic = sorted(SHARED.glob("camera_heic/*.HEIC"))[:1]
    for h in heic:
        (photos / h.name).write_bytes(h.read_bytes())
        want[h.name] = ".jpg"
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.iterdir()}
    r = _frozen(bundle, ["restore", "--profile", "builtin", "--plan", "D", str(photos), "-o",
                         str(tmp_path / "out"), "--json"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    got = {Path(d["path"]).name: Path(d["output"]) for d in _lines(r)}
    assert set(got) == set(want), r.stdout
    for name, suffix in want.items():
        assert got[name].suffix == suffix and got[name].stat().st_size > 0, got[name]
    assert before == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in photos.iterdir()}


@pytest.mark.slow
def test_frozen_app_without_torch_says_so_and_falls_back(bundle, tmp_path):
    """Only the frozen app, no environment, a torch profile's models imported: one clear
    error naming what to do (before: "internal error: ModuleNotFoundError"), and ``auto`` uses
    the built-in methods."""
    from tests.engine.test_torch_missing import LAPTOP
    from tests.model_helpers import install_stand_in
    from tests.tiny_models import write_manifest

    store = None
    for mid in LAPTOP:
        store = install_stand_in(tmp_path / "models", mid, store)
    manifest = write_manifest(store, tmp_path / "models.json")
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (120, 90, 60)).save(photo)
    r = _frozen(bundle, ["restore", "--profile", "laptop", "--plan", "C", str(photo), "-o",
                         str(tmp_path / "out"), "--json"], tmp_path,
                MEND_MANIFEST=str(manifest))
    assert r.returncode == 1
    (line,) = _lines(r)
    assert "run on PyTorch" in line["error"] and "installer/bootstrap.py" in line["error"], line
    assert "internal error" not in r.stdout + r.stderr
    r = _frozen(bundle, ["restore", "--plan", "C", str(photo), "-o", str(tmp_path / "out"),
                         "--json"], tmp_path, MEND_MANIFEST=str(manifest))
    assert r.returncode == 0, r.stdout + r.stderr
    (line,) = _lines(r)
    assert any("used the built-in methods" in w for w in line["warnings"]), line


@pytest.mark.slow
def test_frozen_app_runs_the_model_libraries_from_the_environment(bundle, tmp_path,
                                                                  shared_images):
    """With this environment as its private one: SigLIP (transformers, its tokenizer through
    sentencepiece, tqdm.auto from the bundle's tqdm) and the laptop chain A (Real-ESRGAN
    through spandrel, then PP-OCR through rapidocr's ONNX models inside the bundle)."""
    info = json.loads((bundle / "BUILD-INFO.json").read_text())
    if info["torch_mode"] != "external":
        pytest.skip("a bundle with PyTorch inside loads nothing from an environment")
    pytest.importorskip("sentencepiece")
    from tests.engine.test_clip import build_tiny_siglip
    from tests.model_helpers import install_test_model
    from tests.tiny_models import install_models, write_manifest

    src = build_tiny_siglip(tmp_path / "siglip")
    store = install_test_model(tmp_path / "models", "siglip-base-patch16-224",
                               {p.name: p for p in sorted(src.iterdir()) if p.is_file()})
    store = install_models(tmp_path / "models", ["realesr-general-x4v3"], tmp_path / "build",
                           store=store)
    manifest = str(write_manifest(store, tmp_path / "models.json"))
    text = shared_images / "text_clean_ocr" / \
        "RapidOCR__python__tests__test_files__black_font_color_transparent.png"
    if not text.is_file():
        pytest.skip(f"{text.name} is not among the shared photos")
    r = _frozen(bundle, ["classify", "--backend", "clip", "--json", str(text)], tmp_path,
                Path(sys.prefix), MEND_MANIFEST=manifest)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    (d,) = _lines(r)
    assert d["backend"] == "clip" and d["estimates"]["clip_model"] == "siglip-base-patch16-224"
    r = _frozen(bundle, ["restore", "--profile", "laptop", "--plan", "A", "--json", str(text),
                         "-o", str(tmp_path / "out")], tmp_path, Path(sys.prefix),
                MEND_MANIFEST=manifest)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    (d,) = _lines(r)
    steps = {s["name"]: s for s in d["steps"]}
    assert steps["sr_realesrgan"]["model"] == "realesr-general-x4v3"
    assert "text region(s) fused" in steps["text_fusion"].get("notes", ""), steps
