"""Store downloads against a loopback HTTP server: resume, checksum, offline, host checks."""
from __future__ import annotations

import hashlib
import itertools
import os
import socket

import pytest

from engine.errors import ChecksumMismatch, DownloadError, OfflineError
from engine.models import download as dl
from engine.models.store import ModelStore, default_root
from tests.model_helpers import LoopbackServer, served_store

MID = "realesr-general-x4v3"
NAME = "realesr-general-x4v3.pth"


@pytest.fixture
def server():
    s = LoopbackServer()
    yield s
    s.close()


def _blob(n: int, seed: int = 1) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"x" * (n % 32)


@pytest.fixture
def no_socket(monkeypatch):
    """Fail the test if anything opens a socket."""
    def boom(*a, **k):
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket, "socket", boom)
    monkeypatch.setattr(socket, "create_connection", boom)


def test_interrupted_download_resumes_from_part(server, tmp_path):
    data = _blob(300_000)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    server.drop_after[f"/{MID}/{NAME}"] = 100_000
    events = []
    assert store.pull(MID, progress=events.append) == "verified"
    assert store.file_path(MID, NAME).read_bytes() == data
    assert not (store.file_path(MID, NAME).parent / (NAME + ".part")).exists()
    # the second request asked for the rest only
    assert len(server.requests) == 2
    assert server.requests[0][1] is None
    start = int(server.requests[1][1].split("=")[1].rstrip("-"))
    assert 0 < start <= 100_000
    assert events[-1].done == events[-1].total == len(data)
    assert all(b.done >= a.done for a, b in itertools.pairwise(events))


def test_resume_across_calls_after_giving_up(server, tmp_path):
    data = _blob(200_000, 2)
    store = served_store(tmp_path / "s", server, MID, {NAME: data}, retries=0)
    server.drop_after[f"/{MID}/{NAME}"] = 50_000
    with pytest.raises(DownloadError):
        store.pull(MID)
    part = store.file_path(MID, NAME).with_name(NAME + ".part")
    assert part.is_file() and 0 < part.stat().st_size <= 50_000
    assert store.status(MID) == "partial"
    have = part.stat().st_size
    assert store.pull(MID) == "verified"
    assert server.requests[-1][1] == f"bytes={have}-"
    assert store.file_path(MID, NAME).read_bytes() == data


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = _blob(120_000, 3)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    server.honour_range = False
    server.drop_after[f"/{MID}/{NAME}"] = 40_000
    assert store.pull(MID) == "verified"
    assert store.file_path(MID, NAME).read_bytes() == data


def test_checksum_mismatch_deletes_part_and_raises(server, tmp_path):
    data = _blob(50_000, 4)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    server.files[f"/{MID}/{NAME}"] = _blob(50_000, 5)  # the host now serves other bytes
    with pytest.raises(ChecksumMismatch):
        store.pull(MID)
    folder = store.root / MID
    assert not store.file_path(MID, NAME).exists()
    assert not any(p.name.endswith(".part") for p in folder.rglob("*"))
    assert store.status(MID) == "missing"


def test_offline_mode_opens_no_socket(server, tmp_path, monkeypatch, no_socket):
    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(1000)})
    monkeypatch.setenv("MEND_OFFLINE", "1")
    with pytest.raises(OfflineError):
        store.pull(MID)
    with pytest.raises(OfflineError):
        dl.fetch(f"{server.url}/x", tmp_path / "x.part", allowed_hosts={"127.0.0.1"},
                 allow_http_hosts=("127.0.0.1",))
    assert store.status(MID) == "missing"  # status/verify work offline
    assert server.requests == []


def test_https_only_by_default(server, tmp_path, no_socket):
    data = _blob(1000)
    s = served_store(tmp_path / "s", server, MID, {NAME: data})
    default = ModelStore(tmp_path / "d", s.manifest)  # no allow_http_hosts
    with pytest.raises(DownloadError, match="non-HTTPS"):
        default.pull(MID)


def test_only_manifest_hosts():
    with pytest.raises(DownloadError, match="not a host"):
        dl.check_url("https://evil.example.com/x.pth", frozenset({"github.com"}))
    dl.check_url("https://github.com/x.pth", frozenset({"github.com"}))
    with pytest.raises(DownloadError):  # http to a non-loopback host even if "allowed"
        dl.check_url("http://10.0.0.1/x", frozenset({"10.0.0.1"}), ("10.0.0.1",))


def test_redirect_to_unlisted_host_is_refused(server, tmp_path):
    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(1000)})
    port = server.httpd.server_address[1]
    server.redirects[f"/{MID}/{NAME}"] = f"http://localhost:{port}/{MID}/{NAME}"
    with pytest.raises(DownloadError, match="refusing"):
        store.pull(MID)
    assert len(server.requests) == 1  # the redirect target was never contacted


def test_unpinned_hash_recorded_then_verified(server, tmp_path):
    data = _blob(10_000, 6)
    store = served_store(tmp_path / "s", server, MID, {NAME: data}, pinned=False)
    assert store.pull(MID) == "unpinned"
    spec = store.spec(MID)
    assert store.expected_sha(MID, spec.files[0]) == hashlib.sha256(data).hexdigest()
    assert store.verify(MID).status == "unpinned"
    f = store.file_path(MID, NAME)
    f.write_bytes(data[:-1] + b"!")
    rep = store.verify(MID)
    assert rep.corrupt == [NAME] and rep.status == "corrupt"


def test_verify_repair_downloads_again(server, tmp_path):
    data = _blob(30_000, 7)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    store.pull(MID)
    store.file_path(MID, NAME).write_bytes(b"garbage")
    rep = store.verify(MID, repair=True)
    assert rep.repaired == [NAME] and rep.status == "verified"
    assert store.file_path(MID, NAME).read_bytes() == data


def test_multi_file_model_progress_and_subfolders(server, tmp_path):
    files = {"config.json": b'{"a": 1}', "unet/diffusion_pytorch_model.safetensors": _blob(70_000)}
    store = served_store(tmp_path / "s", server, "sd-turbo", files,
                         pinned={"config.json": False})
    events = []
    assert store.pull("sd-turbo", progress=events.append) == "unpinned"
    assert (store.root / "sd-turbo" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert {e.file for e in events} == set(files)
    assert events[-1].done == events[-1].total == sum(len(v) for v in files.values())
    assert store.require("sd-turbo") == store.root / "sd-turbo"
    assert store.disk_usage()["sd-turbo"] >= 70_000
    freed = store.remove("sd-turbo")
    assert freed >= 70_000 and store.status("sd-turbo") == "missing"


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("MEND_MODELS_DIR", str(tmp_path / "m"))
    assert default_root() == tmp_path / "m"
    monkeypatch.delenv("MEND_MODELS_DIR")
    r = default_root()
    assert r.name == "models" and "mend" in str(r).lower()
    assert os.path.isabs(r)


def test_pull_profile_fetches_every_model_with_one_progress(server, tmp_path, monkeypatch):
    from engine.models.packs import pull_profile
    from tests.model_helpers import served_store as ss

    store = ss(tmp_path / "s", server, MID, {NAME: _blob(20_000, 8)})
    store = ss(tmp_path / "s", server, "big-lama", {"big-lama.pt": _blob(30_000, 9)},
               base=store.manifest)
    # a tiny "laptop" profile: only these two models (plus the bundled OCR)
    import dataclasses

    m = store.manifest
    for spec in list(m):
        if "laptop" in spec.profiles and spec.id not in (MID, "big-lama", "pp-ocr"):
            m = m.with_model(dataclasses.replace(
                spec, profiles=tuple(p for p in spec.profiles if p != "laptop")))
    store.manifest = m
    server.drop_after["/big-lama/big-lama.pt"] = 10_000
    events = []
    out = pull_profile("laptop", store, progress=events.append)
    assert out == {MID: "verified", "big-lama": "verified", "pp-ocr": "bundled"}
    assert events[-1].done == events[-1].total == 50_000
    assert all(b.done >= a.done for a, b in itertools.pairwise(events))
    # nothing left to do: a second pull opens no connection
    n = len(server.requests)
    assert pull_profile("laptop", store) == out
    assert len(server.requests) == n
    monkeypatch.setenv("MEND_OFFLINE", "1")
    assert pull_profile("laptop", store) == out  # all installed: fine offline too


def test_pull_repairs_a_file_damaged_after_verification(server, tmp_path):
    data = _blob(30_000, 10)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    store.pull(MID)
    f = store.file_path(MID, NAME)
    f.write_bytes(data[:-1] + b"?")  # same size, new content
    assert store.status(MID) == "corrupt"
    assert store.pull(MID) == "verified"
    assert f.read_bytes() == data


def test_two_writers_never_share_a_part_file(server, tmp_path):
    from engine.models.store import _part_lock

    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(5_000, 11)})
    part = store.file_path(MID, NAME).with_name(NAME + ".part")
    with _part_lock(part), pytest.raises(DownloadError, match="another Mend process"):
        store.pull(MID)
    assert server.requests == []
    assert store.pull(MID) == "verified"
    assert not list((store.root / MID).glob("*.lock"))
