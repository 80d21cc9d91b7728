"""``ModelStore.status`` hashes a file it has not recorded (or one changed since): seconds for
a multi-GB file, which nothing could stop. Its ``token`` now stops that hash between chunks,
as ``verify``'s does, and nothing is recorded for the file it stopped in."""
from __future__ import annotations

import os

import pytest

from engine.errors import Cancelled
from engine.models import store as store_mod
from engine.progress import CancelToken
from tests.model_helpers import counting_hash, install_test_model

CHUNKS = 8


class _CancelAfter(CancelToken):
    """Cancelled once ``n`` of its checks have passed (a Stop during the hash)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def check(self) -> None:
        if self.left <= 0:
            self.cancel()
        self.left -= 1
        super().check()


def test_a_stopped_status_ends_while_hashing_and_records_nothing(tmp_path, monkeypatch):
    weights = tmp_path / "w.pth"
    weights.write_bytes(os.urandom(CHUNKS * store_mod.dl.CHUNK))
    store = install_test_model(tmp_path / "store", "codeformer", {"codeformer.pth": weights})
    (store.model_dir("codeformer") / store_mod.STATE_FILE).unlink()  # (not recorded)
    chunks = counting_hash(monkeypatch)
    with pytest.raises(Cancelled):
        store.status("codeformer", token=_CancelAfter(2))
    assert len(chunks) == 3  # stopped at the third chunk of 8
    assert "codeformer.pth" not in store._read_state("codeformer")["files"]
    chunks.clear()
    assert store.status("codeformer", token=CancelToken()) == "verified"  # hashed, recorded
    assert len(chunks) == CHUNKS
    chunks.clear()
    stopped = CancelToken()
    stopped.cancel()
    # recorded now: no hash, so a cancelled token does not matter (nothing to stop)
    assert store.status("codeformer", token=stopped) == "verified"
    assert chunks == []


def test_a_stopped_status_of_a_slot_ends_while_hashing(tmp_path, monkeypatch):
    """A slot's file (the user's own weights) changed since its import is hashed again."""
    weights = tmp_path / "best.onnx"
    weights.write_bytes(os.urandom(CHUNKS * store_mod.dl.CHUNK))
    store = store_mod.ModelStore(tmp_path / "store")
    store.import_path(weights, "reflection-yolo")
    assert store.status("reflection-yolo") == "unpinned"
    p = store.slot_path("reflection-yolo")
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # (touched: hashed again)
    chunks = counting_hash(monkeypatch)
    with pytest.raises(Cancelled):
        store.status("reflection-yolo", token=_CancelAfter(1))
    assert len(chunks) == 2
    chunks.clear()
    assert store.status("reflection-yolo", token=CancelToken()) == "unpinned"
    assert len(chunks) == CHUNKS
