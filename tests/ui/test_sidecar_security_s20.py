"""Security audit (session 21): a sidecar beside photos in a shared folder (``.mend/``) is
anyone's. One that is a FIFO blocked the pool thread reading it for good, one nested past
Python's stack raised RecursionError out of ``load`` (the folder's sidecars were all lost to
the view), and the mask path it names was read as the photo's mask whatever file it named.
Each test failed before its fix."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from engine.imageio import save_mask
from ui.sidecar import SidecarStore


@pytest.fixture
def shared(tmp_path) -> tuple[Path, Path, SidecarStore]:
    folder = tmp_path / "shared"
    (folder / ".mend").mkdir(parents=True)
    photo = folder / "a.jpg"
    photo.write_bytes(b"a photo")
    return folder, photo, SidecarStore(folder, tmp_path / "data")


def _load_within(store: SidecarStore, photo: Path, seconds: float = 10.0):
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("sc", store.load(photo)), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "reading the sidecar never ended"
    return out["sc"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_sidecar_that_is_a_fifo_is_ignored_at_once(shared):
    folder, photo, store = shared
    fifo = folder / ".mend" / "a.jpg.json"
    os.mkfifo(fifo)
    try:
        assert _load_within(store, photo) is None
    finally:
        # (a reader left blocked on it before the fix: a writer's open lets it go)
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK) if _has_reader(fifo) else None
        if fd is not None:
            os.close(fd)


def _has_reader(fifo: Path) -> bool:
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        return True
    except OSError:
        return False


def test_a_huge_or_deeply_nested_sidecar_is_ignored(shared):
    folder, photo, store = shared
    side = folder / ".mend" / "a.jpg.json"
    side.write_text("[" * 200_000 + "]" * 200_000)
    assert store.load(photo) is None
    side.write_text(json.dumps({"version": 1, "warnings": ["x" * (16 << 20)]}))  # (cap: 8 MB)
    assert store.load(photo) is None
    side.write_text(json.dumps({"version": 1, "warnings": ["fine"]}))
    assert store.load(photo).warnings == ["fine"]


def test_a_sidecars_mask_must_be_mends_own_mask_file(shared, tmp_path):
    """A mask path pointing anywhere else (another user's image, a photo) is not the photo's
    mask; the mask file Mend writes for the photo is."""
    folder, photo, store = shared
    elsewhere = save_mask(np.full((8, 8), 255, np.uint8), tmp_path / "private.png")
    side = folder / ".mend" / "a.jpg.json"
    side.write_text(json.dumps({"version": 1, "mask": str(elsewhere)}))
    assert store.load(photo).mask is None
    own = save_mask(np.full((8, 8), 255, np.uint8), store.mask_path_for(photo))
    side.write_text(json.dumps({"version": 1, "mask": str(own)}))
    assert store.load(photo).mask == str(own)
    # a folder copied elsewhere: its sidecar names the first folder's mask; its own is taken
    side.write_text(json.dumps({"version": 1, "mask": str(tmp_path / "old" / "a.jpg.mask.png")}))
    assert store.load(photo).mask == str(own)
    own.unlink()
    side.write_text(json.dumps({"version": 1, "mask": str(elsewhere)}))
    assert store.load(photo).mask is None
