"""`make lint` is clean and stays clean: ruff (pinned in requirements.lock) over the same paths."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("engine", "ui", "tests", "bench", "scripts", "installer", "main.py")


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    exe = str(ruff) if ruff.is_file() else shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed (it comes with requirements.lock: make setup)")
    r = subprocess.run([exe, "check", "--output-format", "concise", *PATHS], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
