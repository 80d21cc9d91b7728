"""Where Mend's ``resources/`` folder is (model manifest, analyzer files, prompts, style, icons,
samples), however Mend was installed.

Looked for in this order; the first folder that holds ``models.json`` wins:

1. ``MEND_RESOURCES`` (a folder), for a custom or patched set of resources;
2. the source tree / bootstrap layout: ``resources/`` next to the ``engine/`` package (a git
   checkout, ``pip install -e .``, the installer's app folder);
3. the PyInstaller layout: ``sys._MEIPASS / "resources"`` when frozen (installer/mend.spec puts
   the folder there, i.e. ``_internal/resources``);
4. an installed wheel: the data-only package ``engine/_resources`` (pyproject.toml maps the
   repo-root ``resources/`` folder to it).

Never raises: when nothing is found ``RESOURCES`` is the source-tree location, so the callers'
own "file is missing" errors name a sensible path.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_VAR = "MEND_RESOURCES"
MARKER = "models.json"
_ENGINE = Path(__file__).resolve().parent


def candidates() -> list[tuple[str, Path]]:
    """(layout, folder) pairs in the order they are tried."""
    out: list[tuple[str, Path]] = []
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        out.append(("env", Path(env).expanduser()))
    out.append(("source", _ENGINE.parent / "resources"))
    meipass = getattr(sys, "_MEIPASS", None)
    if getattr(sys, "frozen", False) and meipass:
        out.append(("frozen", Path(meipass) / "resources"))
    out.append(("wheel", _ENGINE / "_resources"))
    return out


def find_resources() -> tuple[str, Path]:
    """The first candidate folder that holds ``models.json``, as (layout, folder). A folder named
    by ``MEND_RESOURCES`` that does not exist (or lacks the marker) falls through to the next."""
    found = candidates()
    for layout, folder in found:
        try:
            if (folder / MARKER).is_file():
                return layout, folder
        except OSError:
            continue
    return "missing", _ENGINE.parent / "resources"


LAYOUT, RESOURCES = find_resources()


def resource(*parts: str) -> Path:
    """A path inside the resources folder (not checked: callers report a missing file)."""
    return RESOURCES.joinpath(*parts)
