"""``ModelStore.status`` hashes a file it has not recorded (or one changed since): seconds for
a multi-GB file, which nothing could stop. Its ``token`` now stops that hash between chunks,
as ``verify``'s does, and nothing is recorded for the file it stopped in. Two checks of one
unrecorded file at once hash it once (the second waits, stoppably, and reads the record)."""
from __future__ import annotations

import os
import threading

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


def _unrecorded(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(os.urandom(CHUNKS * store_mod.dl.CHUNK))
    store = install_test_model(tmp_path / "store", "codeformer", {"codeformer.pth": weights})
    (store.model_dir("codeformer") / store_mod.STATE_FILE).unlink()  # (not recorded)
    return store


def _held_hash(monkeypatch):
    """The store's hash, held at its first chunk until ``go`` is set (``started`` says it got
    there); every chunk is counted."""
    chunks: list[int] = []
    started, go = threading.Event(), threading.Event()
    real = store_mod.sha256_file

    def held(path, check_cancel=None):
        def check():
            chunks.append(1)
            started.set()
            assert go.wait(10)
            if check_cancel is not None:
                check_cancel()
        return real(path, check)

    monkeypatch.setattr(store_mod, "sha256_file", held)
    return chunks, started, go


def test_two_status_checks_of_one_unrecorded_file_hash_it_once(tmp_path, monkeypatch):
    """The Models dialog checks statuses and its recommendation in two pools, each with its own
    store: both hashed the same unrecorded file (2 x 8 chunks). The second now waits for the
    first and reads what it recorded."""
    store = _unrecorded(tmp_path)
    chunks, started, go = _held_hash(monkeypatch)
    out: dict[str, str] = {}
    first = threading.Thread(target=lambda: out.setdefault("a", store.status("codeformer")))
    first.start()
    assert started.wait(10)
    other = store_mod.ModelStore(store.root, store.manifest)
    second = threading.Thread(target=lambda: out.setdefault("b", other.status("codeformer")))
    second.start()
    second.join(0.3)
    assert second.is_alive()  # waiting for the first hash, not hashing
    go.set()
    first.join(10)
    second.join(10)
    assert out == {"a": "verified", "b": "verified"}
    assert len(chunks) == CHUNKS


def test_a_status_check_waiting_for_another_hash_can_be_stopped(tmp_path, monkeypatch):
    store = _unrecorded(tmp_path)
    chunks, started, go = _held_hash(monkeypatch)
    first = threading.Thread(target=store.status, args=("codeformer",))
    first.start()
    try:
        assert started.wait(10)
        stop = CancelToken()
        stop.cancel()
        with pytest.raises(Cancelled):
            store_mod.ModelStore(store.root, store.manifest).status("codeformer", token=stop)
        assert len(chunks) == 1  # only the first one's chunk: the stopped one hashed nothing
    finally:
        go.set()
        first.join(10)
    assert store.status("codeformer") == "verified"
