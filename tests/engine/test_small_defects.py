"""Small defects the audits left: ``mend doctor`` where PyTorch cannot be imported says so and
what runs without it (it said the laptop profile was ready, recommended it, and blamed
spandrel_extra_arches), and says how much of a partial model is on disk; ``--debug`` shows the
traceback of a photo's internal error (it printed "NoneType: None"); the terminal progress line
of ``mend models pull/verify`` leaves no characters of a longer line before it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import cli
from engine.models.download import DownloadProgress
from tests.engine.test_models_audit_iii import _partial_store
from tests.engine.test_models_audit_s18 import _cli
from tests.engine.test_models_s13 import MID
from tests.engine.test_packs import _Tty
from tests.engine.test_torch_missing import _mend, laptop_store  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- 1. doctor without PyTorch
def test_doctor_without_pytorch_says_so_and_recommends_the_built_in_methods(laptop_store):  # noqa: F811
    """The laptop profile's models are installed but PyTorch cannot be imported: as
    ``Engine.resolve_profile`` (auto -> builtin), the profile is not ready and builtin is
    recommended; the reason is PyTorch's (TorchMissing's words), not spandrel_extra_arches'."""
    store, manifest = laptop_store
    r = _mend(["doctor"], store, manifest)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert ("  the models run on PyTorch, which is not installed in this Python "
            f"({sys.executable}): install Mend's requirements (pip install -r "
            "requirements.lock) or use installer/bootstrap.py") in lines, lines
    assert ("  without it the built-in methods run: profile builtin and the built-in analyzer "
            "(what auto uses here)") in lines
    assert not [x for x in lines if "spandrel_extra_arches" in x], lines
    assert "  builtin  ready" in lines
    laptop = next(x for x in lines if x.startswith("  laptop "))
    assert laptop.startswith("  laptop   not ready: its models run on PyTorch (see above)")
    assert lines[-1] == "recommended profile: builtin (without PyTorch)"
    r = _mend(["doctor", "--json"], store, manifest)
    info = json.loads(r.stdout)
    assert info["recommended_profile"] == "builtin"
    assert info["devices"]["torch"].startswith("unavailable")  # (the installer's smoke test)
    assert "is not installed in this Python" in info["devices"]["torch_missing"]
    prof = info["models"]["profiles"]
    assert [(p, prof[p]["ready"], prof[p]["torch_missing"]) for p in prof] == [
        ("builtin", True, False), ("laptop", False, True), ("quality", False, True)]
    # the frozen app: the installer's environment is what is missing
    r = _mend(["doctor"], store, manifest, frozen=True,
              MEND_RUNTIME_ENV_ERROR="no Mend environment at /nowhere/env")
    assert r.returncode == 0, r.stdout + r.stderr
    said = next(x for x in r.stdout.splitlines() if x.startswith("  the models run on PyTorch"))
    assert "(no Mend environment at /nowhere/env): run installer/bootstrap.py" in said


def test_doctor_with_pytorch_is_as_before(capsys):
    """Where torch imports, no PyTorch lines and the device's profile (laptop on the CPU)."""
    pytest.importorskip("torch")
    assert cli.main(["doctor", "--device", "cpu", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["devices"]["torch_missing"] is None
    assert info["recommended_profile"] == "laptop"
    assert not any(p["torch_missing"] for p in info["models"]["profiles"].values())
    assert cli.main(["doctor", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "recommended profile: laptop"
    assert not [x for x in lines if "runs on PyTorch" in x or "run on PyTorch" in x]


# ---------------------------------------------------------------- 6. doctor and a partial model
def test_doctor_says_how_much_of_a_partial_model_is_there(server, tmp_path, monkeypatch,
                                                          capsys):
    """Before: "partial: <id> (repair it: ...)" only; now as ``mend models list``."""
    store = _partial_store(tmp_path, server)
    assert _cli(monkeypatch, store, "doctor", "--device", "cpu") == 0
    lines = capsys.readouterr().out.splitlines()
    assert (f"  partial: {MID}, 2 of 3 files, 1.3 of 4.4 MB on disk (finish it with: "
            f"mend models pull {MID})") in lines, lines
    assert _cli(monkeypatch, store, "doctor", "--device", "cpu", "--json") == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert models["problems"] == {MID: "partial"}
    assert models["present"] == {MID: {"files_present": 2, "files": 3,
                                       "bytes_present": 1_300_000, "bytes": 4_400_000}}


# ---------------------------------------------------------------- 2. --debug's traceback
_FAILING = r"""
import sys
from engine import cli, pipeline
from engine.errors import EngineError

def run(self, req, progress=None):
    if req.path.name.startswith("a"):
        raise ValueError("a bug deep in a step")
    raise EngineError("a clear failure of the photo")

pipeline.Engine.run = run
sys.exit(cli.main(sys.argv[1:]))
"""


def test_debug_shows_the_traceback_of_a_photos_error(tmp_path):
    """A photo's internal error under ``--debug``: its traceback, once (before: "NoneType:
    None", twice, as the error was logged outside its ``except`` block); an EngineError's too;
    without ``--debug`` none."""
    from .test_cli_s12 import _photos

    _photos(tmp_path / "in", ["a.png", "b.png"])
    env = dict(os.environ, MEND_THREADS="1", PYTHONPATH=str(ROOT))

    def mend(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _FAILING, *args], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=300, check=False)

    r = mend("--debug", "restore", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
             "--profile", "builtin")
    assert r.returncode == 1, r.stdout + r.stderr
    err = "\n".join(x for x in r.stderr.splitlines() if not x.startswith("DEBUG "))
    assert "NoneType: None" not in err, err
    assert err.count("Traceback (most recent call last):") == 2, err
    assert f"unexpected error on {tmp_path / 'in' / 'a.png'}\nTraceback" in err, err
    # (each ends in the frame that raised it: ``run`` above)
    assert ", in run\nValueError: a bug deep in a step" in err, err
    assert ", in run\nengine.errors.EngineError: a clear failure of the photo" in err, err
    assert "internal error: ValueError: a bug deep in a step" in r.stdout
    r = mend("restore", str(tmp_path / "in"), "-o", str(tmp_path / "out2"),
             "--profile", "builtin")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "internal error: ValueError: a bug deep in a step" in r.stdout


# ---------------------------------------------------------------- 7. the progress line
def _screen(text: str) -> list[str]:
    """What a terminal shows of ``text``: "\\r" returns to the line's start, over-writing."""
    rows, col = [[]], 0
    for ch in text:
        if ch == "\n":
            rows.append([])
            col = 0
        elif ch == "\r":
            col = 0
        else:
            row = rows[-1]
            row[col:col + 1] = [ch]
            col += 1
    return ["".join(r).rstrip() for r in rows]


def test_a_shorter_progress_line_leaves_nothing_of_the_longer_one(monkeypatch):
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    line = cli._download_progress("big-model", min_interval=0.0)

    def at(done: int, file: str, speed: float) -> None:
        line(DownloadProgress("big-model", file, done, 100, done, 100, speed))

    at(10, "unet/diffusion_pytorch_model.fp16.safetensors", 12.5e6)
    at(40, "vae.bin", 1.5e6)  # a shorter name, a slower speed
    assert _screen(tty.text) == ["big-model:  40.0% of 0 MB (1.5 MB/s) vae.bin"]
    at(100, "vae.bin", 1.5e6)
    assert _screen(tty.text) == ["big-model: 100.0% of 0 MB (1.5 MB/s) vae.bin", ""]
    assert tty.text.endswith("vae.bin\n")  # (the last line is its own: no padding after it)
