"""Session 13 audit of the model store: downloads that must not corrupt or destroy a ``.part``
(a 206 from the wrong offset, a login page answering a resume, a 416 for a smaller file), local
disk errors that are not network errors, a Stop while a big ``.part`` is hashed, an offline
pack whose index is a memory bomb, and the installer scripts' errors. Loopback servers only."""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import importlib.util
import io
import sys
import zipfile
from pathlib import Path

import pytest

from engine.errors import Cancelled, DownloadError, EngineError
from engine.models import download as dl
from engine.models import store as store_mod
from engine.models.packs import PackRefused, import_pack
from engine.models.store import ModelStore
from engine.progress import CancelToken
from tests.model_helpers import LoopbackServer, served_store

MID = "realesr-general-x4v3"
NAME = "realesr-general-x4v3.pth"
ROOT = Path(__file__).resolve().parents[2]


def _blob(n: int, seed: int = 1) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"x" * (n % 32)


def _part(store: ModelStore, mid: str = MID, name: str = NAME) -> Path:
    p = store.file_path(mid, name)
    return p.with_name(p.name + ".part")


def _unpinned_inexact(store: ModelStore, mid: str, estimate: int) -> ModelStore:
    """``mid``'s only file made like a hub config file: no pinned hash, size an estimate."""
    spec = store.manifest.get(mid)
    f = dataclasses.replace(spec.files[0], sha256=None, sha256_source=None, size_exact=False,
                            size=estimate)
    store.manifest = store.manifest.with_model(dataclasses.replace(spec, files=(f,)))
    return store


class _WrongOffset206(LoopbackServer):
    """Answers a Range request with 206 but the whole file from byte 0 (Content-Range 0-)."""

    def do_get(self, h) -> None:
        rng = h.headers.get("Range")
        self.requests.append((h.path, rng))
        data = self.files[h.path]
        h.send_response(206 if rng else 200)
        if rng:
            h.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


class _LoginPage(LoopbackServer):
    """While ``portal`` is set, answers everything with 200 and a small HTML page (hotel wifi)."""

    portal = False
    with_length = True  # False: no Content-Length, the page ends with the connection
    PAGE = b"<html><body>Please log in to use the wifi</body></html>"

    def do_get(self, h) -> None:
        if not self.portal:
            super().do_get(h)
            return
        self.requests.append((h.path, h.headers.get("Range")))
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        if self.with_length:
            h.send_header("Content-Length", str(len(self.PAGE)))
        else:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        h.wfile.write(self.PAGE)


# ---------------------------------------------------------------- answers that are not the file
def test_a_206_from_the_wrong_offset_never_corrupts_an_unpinned_file(tmp_path):
    """Before: the host's bytes from 0 were appended after the 1000 resumed ones and the
    4000-byte result was recorded as the (unpinned) file."""
    srv = _WrongOffset206()
    try:
        data = _blob(3000, 2)
        mid, name = "sd-turbo", "model_index.json"
        store = _unpinned_inexact(
            served_store(tmp_path / "s", srv, mid, {name: data}, pinned=False), mid, 600)
        part = _part(store, mid, name)
        part.parent.mkdir(parents=True)
        part.write_bytes(data[:1000])
        assert store.pull(mid) == "unpinned"
        assert store.file_path(mid, name).read_bytes() == data
        assert srv.requests[0][1] == "bytes=1000-"
    finally:
        srv.close()


def test_a_206_from_byte_0_restarts_a_pinned_file_instead_of_failing_its_hash(tmp_path):
    srv = _WrongOffset206()
    try:
        data = _blob(50_000, 3)
        store = served_store(tmp_path / "s", srv, MID, {NAME: data})
        part = _part(store)
        part.parent.mkdir(parents=True)
        part.write_bytes(data[:20_000])
        assert store.pull(MID) == "verified"  # (before: ChecksumMismatch, the .part deleted)
        assert store.file_path(MID, NAME).read_bytes() == data
    finally:
        srv.close()


@pytest.mark.parametrize("with_length", [True, False])
def test_a_login_page_answering_a_resume_keeps_the_part(tmp_path, with_length):
    """A 200 to a Range request whose length is not the pinned size - or unknown: no
    Content-Length, as captive portals often send - is not known to be the file: the ``.part``
    stays (before: truncated to the page, then deleted as a checksum mismatch)."""
    srv = _LoginPage()
    srv.with_length = with_length
    try:
        data = _blob(400_000, 4)
        store = served_store(tmp_path / "s", srv, MID, {NAME: data})
        part = _part(store)
        part.parent.mkdir(parents=True)
        part.write_bytes(data[:300_000])
        srv.portal = True
        with pytest.raises(DownloadError, match="login page") as e:
            store.pull(MID)
        assert "kept" in str(e.value)
        assert part.read_bytes() == data[:300_000]
        assert store.status(MID) == "partial"
        srv.portal = False  # logged in: the next pull resumes where it was
        assert store.pull(MID) == "verified"
        assert srv.requests[-1][1] == "bytes=300000-"
        assert store.file_path(MID, NAME).read_bytes() == data
    finally:
        srv.close()


def test_a_host_serving_a_smaller_file_is_refused_before_it_is_downloaded(server, tmp_path):
    data = _blob(60_000, 5)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    server.files[f"/{MID}/{NAME}"] = data[:45_000]
    with pytest.raises(DownloadError, match="the host's file is 45000 bytes, not the 60000"):
        store.pull(MID)
    assert not _part(store).exists() and not store.file_path(MID, NAME).exists()
    assert len(server.requests) == 1


def test_a_416_for_a_part_bigger_than_the_file_restarts_an_unpinned_download(server, tmp_path):
    """``Content-Range: bytes */N`` with N below the ``.part``'s size: the part is not the file
    (before: it was taken as complete and recorded, junk and all)."""
    data = _blob(5000, 6)
    mid, name = "sd-turbo", "model_index.json"
    store = _unpinned_inexact(
        served_store(tmp_path / "s", server, mid, {name: data}, pinned=False), mid, 600)
    part = _part(store, mid, name)
    part.parent.mkdir(parents=True)
    part.write_bytes(data + b"junk that is not part of the file")
    assert store.pull(mid) == "unpinned"
    assert store.file_path(mid, name).read_bytes() == data
    assert [r[1] for r in server.requests] == [f"bytes={len(data) + 33}-", None]


# ---------------------------------------------------------------- this machine's disk
def test_a_model_folder_that_cannot_be_written_is_one_clear_error(server, tmp_path, monkeypatch):
    """Before: a raw PermissionError out of the lock file (a traceback from ``mend models pull``
    and from prefetch.py)."""
    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(10_000, 7)})
    store.model_dir(MID).mkdir(parents=True)
    _deny_lock_files(monkeypatch)
    with pytest.raises(DownloadError, match="cannot be written.*Permission denied"):
        store.pull(MID)
    assert server.requests == []


def test_a_part_that_cannot_be_written_is_not_retried_as_a_network_error(server, tmp_path,
                                                                          monkeypatch):
    """Before: EROFS was retried like a dropped connection (4 requests, the back-off, then
    "download failed after 4 attempts")."""
    real_open = open

    def read_only(path, mode="r", *a, **k):
        if mode in ("wb", "ab"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, mode, *a, **k)

    server.files["/f.bin"] = _blob(20_000, 8)
    monkeypatch.setattr(dl, "open", read_only, raising=False)
    with pytest.raises(DownloadError, match="cannot write the download.*Read-only") as e:
        dl.fetch(f"{server.url}/f.bin", tmp_path / "f.bin.part", allowed_hosts={"127.0.0.1"},
                 allow_http_hosts=("127.0.0.1",), retries=3, backoff=0.0)
    assert "attempts" not in str(e.value)
    assert len(server.requests) == 1


class _CountingReads:
    def __init__(self, f, counter: list[int]) -> None:
        self.f, self.counter = f, counter

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.counter[0] += len(b)
        return b


def test_a_stop_while_a_big_part_is_hashed_for_a_resume_ends_it_early(server, tmp_path,
                                                                       monkeypatch):
    """Hashing a multi-GB ``.part`` before a resume takes many seconds: the Stop is checked
    between its chunks (before: only once the whole part was read)."""
    part = tmp_path / "f.bin.part"
    part.write_bytes(_blob(8 * dl.CHUNK, 9))
    read = [0]
    real_open = open

    def counting(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return _CountingReads(f, read) if mode == "rb" else f

    monkeypatch.setattr(dl, "open", counting, raising=False)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        dl.fetch(f"{server.url}/f.bin", part, allowed_hosts={"127.0.0.1"},
                 allow_http_hosts=("127.0.0.1",), check_cancel=token.check)
    assert read[0] <= dl.CHUNK
    assert server.requests == []
    assert part.stat().st_size == 8 * dl.CHUNK


def test_a_stop_while_the_download_is_checked_keeps_the_complete_part(server, tmp_path,
                                                                      monkeypatch):
    data = _blob(3 * dl.CHUNK, 10)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    token = CancelToken()
    real_fetch = dl.fetch

    def fetch_then_stop(*a, **k):
        sha = real_fetch(*a, **k)
        token.cancel()  # the Stop arrives while the .part on disk is being hashed
        return sha

    monkeypatch.setattr(dl, "fetch", fetch_then_stop)
    with pytest.raises(Cancelled):
        store.pull(MID, token=token)
    assert _part(store).read_bytes() == data and not store.file_path(MID, NAME).exists()
    monkeypatch.undo()
    n = len(server.requests)
    assert store.pull(MID) == "verified"
    assert len(server.requests) == n  # the complete .part was only hashed and moved


# ---------------------------------------------------------------- a missing model
def test_a_missing_model_names_the_download_and_the_offline_pack_route(tmp_path, monkeypatch,
                                                                      no_socket):
    from engine.errors import ModelMissing

    monkeypatch.delenv("MEND_OFFLINE", raising=False)
    store = ModelStore(tmp_path / "m")
    with pytest.raises(ModelMissing) as e:
        store.require("big-lama")
    msg = str(e.value)
    assert "mend models pull big-lama" in msg and "mend models import PACK" in msg
    assert "mend models import PACK" in str(ModelMissing(["big-lama", "codeformer"]))
    monkeypatch.setenv("MEND_OFFLINE", "1")  # (offline: only the import, as before)
    with pytest.raises(ModelMissing, match="mend models import PATH") as e:
        store.require("big-lama")
    assert "pull" not in str(e.value)


# ---------------------------------------------------------------- offline packs
def test_a_pack_whose_index_is_a_memory_bomb_is_refused_unread(tmp_path):
    """A deflated index of 20 MB of spaces (a ~20 kB pack) is refused without being read
    (1.5 GB of them took 4.5 GB of memory and 14 s to parse)."""
    p = tmp_path / "bomb.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z, \
            z.open("mend-pack.json", "w") as f:
        f.write(b'{"format": "mend-model-pack", "version": 1, "entries": [], "x": "')
        for _ in range(20):
            f.write(b" " * (1 << 20))
        f.write(b'"}')
    assert p.stat().st_size < 200_000
    store = ModelStore(tmp_path / "store")
    with pytest.raises(PackRefused, match="20 MB"):
        import_pack(p, store)
    with pytest.raises(PackRefused):
        store.import_path(p)
    assert not (tmp_path / "store").exists()


# ---------------------------------------------------------------- installer scripts
def _load_installer(name: str):
    spec = importlib.util.spec_from_file_location(f"mend_installer_s13_{name}",
                                                  ROOT / "installer" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_prefetch_stops_at_once_when_the_model_folder_cannot_be_written(tmp_path, monkeypatch,
                                                                        no_socket):
    """Before: a raw PermissionError; a full disk was retried for 5 passes (75 s of pauses)."""
    prefetch = _load_installer("prefetch")
    store = ModelStore(tmp_path / "m")
    for spec in store.manifest.for_profile("laptop"):
        if not spec.bundled:
            store.model_dir(spec.id).mkdir(parents=True)
    _deny_lock_files(monkeypatch)
    pauses: list[float] = []
    with pytest.raises(EngineError, match="cannot be written"):
        prefetch.prefetch("laptop", store, retries=5, backoff=5.0, sleep=pauses.append)
    assert pauses == []
    monkeypatch.setattr(prefetch, "ModelStore", lambda models_dir: store)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert prefetch.main(["--profile", "laptop"]) == 1
    assert "prefetch: cannot download" in err.getvalue()


def test_build_dist_smoke_only_without_a_bundle_is_a_clear_error(tmp_path, capsys):
    build_dist = _load_installer("build_dist")
    assert build_dist.main(["--smoke-only", "--dist", str(tmp_path / "dist")]) == 1
    assert "no frozen app" in capsys.readouterr().err
    out = build_dist.smoke(tmp_path / "dist" / "Mend")  # (called directly: no traceback either)
    assert out["help"]["ok"] is False and out["doctor"]["ok"] is False


def _deny_lock_files(monkeypatch) -> None:
    """The store cannot create its ``.lock`` files: a model folder it may not write."""
    real_open = open

    def deny_lock(path, *a, **k):
        if str(path).endswith(".lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(store_mod, "open", deny_lock, raising=False)


def test_a_stopped_verify_ends_while_hashing_and_condemns_nothing(tmp_path, monkeypatch):
    """The Models dialog's Stop reached ``verify`` only as the token of a repair's download:
    a multi-GB file was hashed to its end first (a 300 MB model: 0.84 s with the token
    already cancelled). Now the hashing stops between chunks, and no file is called damaged."""
    from tests.model_helpers import counting_hash, install_test_model

    big = tmp_path / "weights.safetensors"
    big.write_bytes(b"\0" * (8 << 20))
    store = install_test_model(tmp_path / "store", "realesr-general-x4v3",
                               {"realesr-general-x4v3.pth": big})
    chunks = counting_hash(monkeypatch)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        store.verify("realesr-general-x4v3", token=token)
    assert len(chunks) == 1  # stopped at the first chunk of 8
    assert store.verify("realesr-general-x4v3").status in ("verified", "unpinned")
