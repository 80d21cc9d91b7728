"""A non-editable install (a built wheel) carries resources/ and the engine finds it there.

The wheel is built from a copy of the project's packaging inputs (pyproject.toml, README.md,
engine/, ui/, resources/) so the build never writes build/ or *.egg-info into the checkout other
tests are running from. It is installed with ``pip install --target`` and exercised in a
subprocess that has no site processing (so the venv's editable-install hook cannot point
``engine`` back at the checkout) and whose working directory is outside the repo.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from engine import resources as R

ROOT = Path(__file__).resolve().parents[2]
WHEEL_RES = "engine/_resources/"


def _tracked(*paths: str) -> list[str]:
    """Files git tracks under paths (relative, posix), else every file on disk there."""
    if shutil.which("git") and (ROOT / ".git").exists():
        r = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--", *paths],
                           capture_output=True, check=False)
        if r.returncode == 0:
            return sorted(p for p in r.stdout.decode().split("\0") if p)
    out = []
    for p in paths:
        for f in (ROOT / p).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts:
                out.append(f.relative_to(ROOT).as_posix())
    return sorted(out)


def _pip(*args: str, timeout: float = 120) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    r = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                       env=env, timeout=timeout, check=False)
    assert r.returncode == 0, (f"pip {' '.join(args)} failed:\n"
                               f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("engine", "ui", "resources"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src))
    wheels = list(out.glob("mend-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    _pip("install", "-q", "--no-deps", "--target", str(target), str(wheel))
    return target


def test_wheel_contains_every_tracked_resource(wheel):
    expected = _tracked("resources")
    assert "resources/models.json" in expected and "resources/analyzer_cnn.npz" in expected
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        missing = [p for p in expected if WHEEL_RES + p[len("resources/"):] not in names]
        assert not missing, f"the wheel lacks {missing}"
        for p in expected:  # byte for byte what is in the tree
            got = z.read(WHEEL_RES + p[len("resources/"):])
            assert hashlib.sha256(got).digest() == hashlib.sha256(
                (ROOT / p).read_bytes()).digest(), p
    # never a top-level "resources" package in site-packages
    assert not any(n.startswith("resources/") for n in names)


def test_wheel_contains_every_tracked_module(wheel):
    """pyproject lists the packages by hand: a new package under engine/ or ui/ that is not
    listed would silently drop out of the wheel."""
    code = [p for p in _tracked("engine", "ui") if p.endswith((".py", ".json", ".txt"))]
    assert "engine/resources.py" in code or (ROOT / "engine/resources.py").is_file()
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    missing = [p for p in code if p not in names]
    assert not missing, (f"the wheel lacks {missing}: add the package to [tool.setuptools] "
                         "packages in pyproject.toml")


_PROBE = r"""
import json, sys
from pathlib import Path
import numpy as np
import engine, engine.resources as R
from engine.models.manifest import DEFAULT_MANIFEST, default_manifest
from engine.understand import analyzer, clip, measure, vlm
from engine.understand.analyzer import analyze

rng = np.random.default_rng(0)
y, x = np.mgrid[0:96, 0:128].astype(np.float32)
img = np.stack([x / 128, y / 96, 0.5 + 0.2 * np.sin(x / 7)], axis=-1)
img = np.clip(img + rng.normal(0, 0.08, img.shape), 0, 1).astype(np.float32)
d = analyze(img)
import ui.app
print(json.dumps({
    "sys_path": sys.path, "engine": engine.__file__, "layout": R.LAYOUT,
    "resources": str(R.RESOURCES),
    "paths": {k: str(v) for k, v in {"manifest": DEFAULT_MANIFEST, "model": analyzer.MODEL_PATH,
              "cnn": measure.CNN_PATH, "clip": clip.PROMPTS_FILE, "vlm": vlm.PROMPTS,
              "style": ui.app.STYLE}.items()},
    "n_models": len(default_manifest().models),
    "clip_classes": sorted(clip.load_prompts()),
    "cnn_loaded": measure.load_cnn() is not None,
    "label": d.label.value, "scores": d.scores, "backend": d.backend,
}))
"""


def _run_installed(installed: Path, cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    """This Python with no site processing; the installed wheel, then the venv's site-packages
    (numpy, cv2, scipy, PySide6) on the path."""
    paths = sysconfig.get_paths()
    site = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MEND_RESOURCES", "MEND_MANIFEST", "PYTHONSTARTUP")}
    env.update(PYTHONPATH=os.pathsep.join([str(installed), *site]), MEND_THREADS="1",
               OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", QT_QPA_PLATFORM="offscreen")
    # -S: no site processing, so the venv's editable-install finder (.pth) is not loaded
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_installed_wheel_finds_its_resources_and_analyzes(installed, tmp_path):
    r = _run_installed(installed, tmp_path, ["-c", _PROBE])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    inst = installed.resolve()
    for entry in out["sys_path"]:  # the checkout is not importable in that process
        where = (tmp_path / entry).resolve()  # "" (from -c) is the subprocess's cwd
        assert where != ROOT
        assert where == inst or not (where / "engine" / "__init__.py").is_file(), entry
    assert Path(out["engine"]).resolve().is_relative_to(inst)
    assert out["layout"] == "wheel"
    assert Path(out["resources"]) == inst / "engine" / "_resources"
    for name, p in out["paths"].items():
        assert Path(p).resolve().is_relative_to(inst), (name, p)
        assert Path(p).exists(), (name, p)
    assert out["n_models"] >= 20
    assert out["clip_classes"] == ["A", "B", "C", "D"]
    assert out["cnn_loaded"] is True
    assert out["backend"] == "builtin" and out["label"] in "ABCD"
    assert sum(out["scores"].values()) == pytest.approx(1.0, abs=1e-3)


def test_installed_wheel_mend_classify(installed, tmp_path):
    """`mend classify` (the console script's entry point) on a sample shipped in the wheel."""
    sample = (installed / "engine" / "_resources" / "samples"
              / "C_astronaut_motion_blur_21px_30deg.jpg")
    assert sample.is_file()
    r = _run_installed(installed, tmp_path, [
        "-c", "import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))",
        "classify", "--backend", "builtin", "--device", "cpu", "--json", str(sample)])
    assert r.returncode == 0, r.stderr[-3000:]
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    assert obj["backend"] == "builtin" and obj["label"] in "ABCD"
    assert obj["path"] == str(sample)


# ----------------------------------------------------------------------------- resolver order

def _layout(base: Path, *, source: bool, frozen: bool, wheel: bool) -> tuple[Path, Path]:
    """A fake install: base/app/engine (the package), base/app/resources, base/meipass/resources,
    base/app/engine/_resources; each with models.json only when asked."""
    eng = base / "app" / "engine"
    eng.mkdir(parents=True)
    meipass = base / "meipass"
    for on, folder in ((source, base / "app" / "resources"), (frozen, meipass / "resources"),
                       (wheel, eng / "_resources")):
        folder.mkdir(parents=True, exist_ok=True)
        if on:
            (folder / "models.json").write_text("{}", encoding="utf-8")
    return eng, meipass


@pytest.mark.parametrize("source,frozen,wheel,expected", [
    (True, True, True, "source"),
    (False, True, True, "frozen"),
    (False, False, True, "wheel"),
    (False, False, False, "missing"),
])
def test_resolver_order(tmp_path, monkeypatch, source, frozen, wheel, expected):
    eng, meipass = _layout(tmp_path, source=source, frozen=frozen, wheel=wheel)
    monkeypatch.delenv(R.ENV_VAR, raising=False)
    monkeypatch.setattr(R, "_ENGINE", eng)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(meipass), raising=False)
    layout, folder = R.find_resources()
    assert layout == expected
    want = {"source": eng.parent / "resources", "frozen": meipass / "resources",
            "wheel": eng / "_resources", "missing": eng.parent / "resources"}[expected]
    assert folder == want


def test_resolver_frozen_only_when_frozen(tmp_path, monkeypatch):
    eng, meipass = _layout(tmp_path, source=False, frozen=True, wheel=True)
    monkeypatch.delenv(R.ENV_VAR, raising=False)
    monkeypatch.setattr(R, "_ENGINE", eng)
    monkeypatch.setattr(sys, "_MEIPASS", str(meipass), raising=False)
    monkeypatch.delattr(sys, "frozen", raising=False)
    assert R.find_resources() == ("wheel", eng / "_resources")


def test_resolver_env_override_and_fall_through(tmp_path, monkeypatch):
    eng, _ = _layout(tmp_path, source=True, frozen=False, wheel=True)
    monkeypatch.setattr(R, "_ENGINE", eng)
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "models.json").write_text("{}", encoding="utf-8")
    monkeypatch.setenv(R.ENV_VAR, str(custom))
    assert R.find_resources() == ("env", custom)
    # a folder that does not exist, or without models.json, falls through to the next layout
    monkeypatch.setenv(R.ENV_VAR, str(tmp_path / "nowhere"))
    assert R.find_resources() == ("source", eng.parent / "resources")
    monkeypatch.setenv(R.ENV_VAR, str(tmp_path / "app"))  # exists, but no models.json
    assert R.find_resources() == ("source", eng.parent / "resources")
    monkeypatch.setenv(R.ENV_VAR, "  ")
    assert R.find_resources() == ("source", eng.parent / "resources")


def test_checkout_resolves_to_the_repo_resources():
    from engine.models.manifest import DEFAULT_MANIFEST
    from engine.understand import analyzer, clip, measure, vlm

    assert (R.LAYOUT, R.RESOURCES) == ("source", ROOT / "resources") or \
        os.environ.get(R.ENV_VAR)
    assert R.resource("style", "dark.qss") == R.RESOURCES / "style" / "dark.qss"
    for p in (DEFAULT_MANIFEST, analyzer.MODEL_PATH, measure.CNN_PATH, clip.PROMPTS_FILE,
              vlm.PROMPTS / "paper_classify.txt"):
        assert p.is_relative_to(R.RESOURCES) and p.exists(), p
