"""Offline model packs (zip archives). Full create/import comes in the next commit."""
from __future__ import annotations

import zipfile
from pathlib import Path

PACK_INDEX = "mend-pack.json"


def is_pack(path: Path) -> bool:
    p = Path(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        return PACK_INDEX in z.namelist()


def import_pack(path, store):  # pragma: no cover - replaced in the next commit
    raise NotImplementedError("offline packs: not implemented yet")
