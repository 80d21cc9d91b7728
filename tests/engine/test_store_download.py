"""Store downloads against a loopback HTTP server: resume, checksum, offline, host checks."""
from __future__ import annotations

import hashlib
import itertools
import os

import pytest

from engine.errors import ChecksumMismatch, DownloadError, OfflineError
from engine.models import download as dl
from engine.models.store import ModelStore, default_root
from tests.model_helpers import served_store

MID = "realesr-general-x4v3"
NAME = "realesr-general-x4v3.pth"


def _blob(n: int, seed: int = 1) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"x" * (n % 32)


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


def test_a_refused_puller_leaves_the_lock_to_its_holder(tmp_path):
    """B is refused while A downloads; B must not remove A's lock file on its way out, or a
    third process C would get a lock of its own and write into the same .part."""
    from engine.models.store import _part_lock

    part = tmp_path / "m" / (NAME + ".part")
    with _part_lock(part):  # A
        for _ in ("B", "C"):
            with pytest.raises(DownloadError, match="another Mend process"), _part_lock(part):
                pass
        assert part.with_name(NAME + ".part.lock").exists()
    assert not part.with_name(NAME + ".part.lock").exists()  # the holder cleans up


def test_a_lock_file_removed_under_a_new_locker_is_taken_again(tmp_path, monkeypatch):
    """B opens the lock file just before A finishes and removes it; B must not keep a lock on
    that removed file (C would then lock a new one at the same path)."""
    import contextlib

    from engine.models import store as store_mod

    part = tmp_path / "m" / (NAME + ".part")
    a = contextlib.ExitStack()
    a.enter_context(store_mod._part_lock(part))
    real_open = open

    def open_then_a_finishes(*args, **kwargs):
        fh = real_open(*args, **kwargs)
        a.close()  # A finishes right after B opened the lock file
        return fh

    monkeypatch.setattr(store_mod, "open", open_then_a_finishes, raising=False)
    with store_mod._part_lock(part):  # B
        monkeypatch.undo()
        with pytest.raises(DownloadError, match="another Mend process"), \
                store_mod._part_lock(part):  # C
            pass


def test_pull_installs_only_the_file_on_disk_it_verified(server, tmp_path):
    """Another writer changes the .part during the download: the hash of the bytes this process
    received still matches the pin, but the file on disk does not; it must not be installed."""
    data = _blob(30_000, 12)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    part = store.file_path(MID, NAME).with_name(NAME + ".part")

    def other_writer(ev):
        with open(part, "r+b") as f:
            f.write(b"!")

    with pytest.raises(DownloadError, match="changed on disk"):
        store.pull(MID, progress=other_writer)
    assert not store.file_path(MID, NAME).exists()
    assert store.status(MID) == "missing"
    assert store.pull(MID) == "verified"
    assert store.file_path(MID, NAME).read_bytes() == data


def test_host_ignoring_range_and_dropping_every_time_gives_up(server, tmp_path):
    """Each attempt restarts from byte 0 and drops at the same point: no new ground, so the
    retries run out instead of looping forever."""
    import threading

    class DropEveryTime(dict):
        def pop(self, key, default=None):
            return 40_000

    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(120_000, 13)}, retries=2)
    server.honour_range = False
    server.drop_after = DropEveryTime()
    out = {}

    def run():
        try:
            out["status"] = store.pull(MID)
        except DownloadError as e:
            out["error"] = str(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), f"still retrying after {len(server.requests)} requests"
    assert "after 3 attempts" in out["error"] and "does not resume" in out["error"]
    assert len(server.requests) == 3


class _FullDisk:
    """A file whose writes fail with ENOSPC once it would pass ``limit`` bytes."""

    def __init__(self, f, limit: int) -> None:
        self.f, self.limit = f, limit

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data: bytes) -> int:
        room = self.limit - self.f.tell()
        if len(data) > room:
            self.f.write(data[:max(room, 0)])
            self.f.flush()
            import errno

            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def close(self) -> None:
        self.f.close()


def test_disk_full_stops_at_once_and_keeps_the_part(server, tmp_path, monkeypatch):
    data = _blob(200_000, 14)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    real_open = open

    def full_disk_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return _FullDisk(f, 50_000) if mode in ("wb", "ab") else f

    monkeypatch.setattr(dl, "open", full_disk_open, raising=False)
    with pytest.raises(DownloadError, match="disk full"):
        store.pull(MID)
    assert len(server.requests) == 1  # not retried like a network error
    part = store.file_path(MID, NAME).with_name(NAME + ".part")
    assert part.stat().st_size == 50_000
    monkeypatch.undo()  # space freed: the next pull resumes
    assert store.pull(MID) == "verified"
    assert server.requests[-1][1] == "bytes=50000-"
    assert store.file_path(MID, NAME).read_bytes() == data


def test_body_bigger_than_the_pinned_size_is_not_downloaded(server, tmp_path):
    data = _blob(20_000, 15)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    server.files[f"/{MID}/{NAME}"] = data + b"\0" * 500_000
    with pytest.raises(DownloadError, match="more than the 20000 bytes"):
        store.pull(MID)
    folder = store.root / MID
    assert not [p for p in folder.rglob("*") if p.name.startswith(NAME)]
    assert len(server.requests) == 1


def test_offline_pull_keeps_a_damaged_file(server, tmp_path, monkeypatch):
    data = _blob(30_000, 16)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    store.pull(MID)
    f = store.file_path(MID, NAME)
    f.write_bytes(data[:-1] + b"?")
    monkeypatch.setenv("MEND_OFFLINE", "1")
    n = len(server.requests)
    with pytest.raises(OfflineError, match="damaged.*kept"):
        store.pull(MID)
    assert len(server.requests) == n
    assert f.read_bytes() == data[:-1] + b"?"  # the only copy here: not deleted
    assert store.status(MID) == "corrupt"


def test_models_dir_that_is_a_file_is_a_clear_error(server, tmp_path):
    from engine.errors import SaveFailed

    (tmp_path / "notadir").write_text("")
    store = served_store(tmp_path / "notadir", server, MID, {NAME: _blob(1000)})
    with pytest.raises(SaveFailed, match="not a folder"):
        store.pull(MID)
    assert server.requests == []


def test_remove_a_symlinked_model_folder_removes_only_the_link(server, tmp_path):
    data = _blob(10_000, 17)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    store.pull(MID)
    elsewhere = tmp_path / "other-disk"
    (store.root / MID).rename(elsewhere)
    (store.root / MID).symlink_to(elsewhere, target_is_directory=True)
    assert store.status(MID) == "verified"
    assert store.remove(MID) == 0
    assert not (store.root / MID).exists() and not (store.root / MID).is_symlink()
    assert (elsewhere / NAME).read_bytes() == data  # the target is left alone
    assert store.status(MID) == "missing"


def test_verify_keeps_an_unpinned_file_found_damaged_corrupt(server, tmp_path):
    """Same size, mtime restored: only the full hash sees it; the file then stays corrupt (its
    recorded hash is kept, never replaced by the damaged file's) until repaired."""
    data = _blob(20_000, 17)
    store = served_store(tmp_path / "s", server, MID, {NAME: data}, pinned=False)
    store.pull(MID)
    spec = store.spec(MID)
    recorded = store.expected_sha(MID, spec.files[0])
    f = store.file_path(MID, NAME)
    st = f.stat()
    f.write_bytes(data[:-1] + b"!")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.status(MID) == "unpinned"  # the cheap check cannot tell
    rep = store.verify(MID)
    assert rep.status == "corrupt" and rep.corrupt == [NAME]
    assert store.status(MID) == "corrupt"
    assert ModelStore(store.root, store.manifest).status(MID) == "corrupt"
    assert store.expected_sha(MID, spec.files[0]) == recorded
    with pytest.raises(ChecksumMismatch):
        store.require(MID)
    rep = store.verify(MID, repair=True)
    assert rep.repaired == [NAME] and rep.status == "unpinned"
    assert f.read_bytes() == data


def test_offline_pull_deletes_nothing(server, tmp_path, monkeypatch):
    """A pull that cannot happen (offline, files to fetch) leaves the folder as it was: stray
    weights included. Online, the same pull deletes them first, as documented."""
    data = _blob(5_000, 18)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    stray = store.root / MID / "other.safetensors"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"someone's weights")
    monkeypatch.setenv("MEND_OFFLINE", "1")
    with pytest.raises(OfflineError, match="not installed"):
        store.pull(MID)
    assert stray.read_bytes() == b"someone's weights"
    assert server.requests == []
    monkeypatch.delenv("MEND_OFFLINE")
    assert store.pull(MID) == "verified"
    assert not stray.exists()


def test_removing_strays_never_leaves_the_model_folder(server, tmp_path):
    from engine.errors import SaveFailed

    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(1000, 19)})
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.pth").write_bytes(b"keep")
    (store.root / MID).mkdir(parents=True)
    (store.root / MID / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SaveFailed, match="not inside"):
        store._remove_strays(MID, ["sub/x.pth"])
    assert (outside / "x.pth").read_bytes() == b"keep"


SECRET = "hf_SECRETSECRET"
SIG = "SECRET_SIGNATURE_abc123"


def _no_secret(text: str) -> None:
    for s in (SECRET, SIG, "hunter2", "token=", "X-Amz", "user:"):
        assert s not in text, text


def test_display_url_keeps_scheme_host_port_and_path_only():
    assert dl.display_url("https://user:hunter2@Mirror.example.org:8443/m/w.pth?token=x#f") == (
        "https://mirror.example.org:8443/m/w.pth?…")
    assert dl.display_url("https://mirror.example.org/m/w.pth") == (
        "https://mirror.example.org/m/w.pth")
    assert dl.display_url("http://[::1]:8080/a?b") == "http://[::1]:8080/a?…"
    assert dl.display_url("https://h:notaport/a?token=x") == "<unreadable URL>"


def test_download_errors_never_show_url_secrets(server, tmp_path):
    """Mirror URLs carry tokens (query, userinfo) and signed redirects carry signatures: error
    messages (CLI JSON, the UI, logs) show scheme://host:port/path only."""
    allowed = {"allowed_hosts": {"127.0.0.1", "mirror.example.org"},
               "allow_http_hosts": ("127.0.0.1",), "retries": 0, "backoff": 0.0, "timeout": 5.0}
    # an HTTP error status
    url = f"{server.url}/models/w.pth?X-Amz-Signature={SIG}&token={SECRET}"
    with pytest.raises(DownloadError) as e:
        dl.fetch(url, tmp_path / "a.part", **allowed)
    assert f"{server.url}/models/w.pth" in str(e.value)
    _no_secret(str(e.value))
    # a redirect to a signed URL that then fails
    server.redirects["/models/r.pth"] = f"{server.url}/signed/r.pth?X-Amz-Signature={SIG}"
    with pytest.raises(DownloadError) as e:
        dl.fetch(f"{server.url}/models/r.pth?token={SECRET}", tmp_path / "b.part", **allowed)
    _no_secret(str(e.value))
    # a redirect off HTTPS, and a refused URL with userinfo
    server.redirects["/models/s.pth"] = f"http://u:hunter2@mirror.example.org/s?token={SECRET}"
    with pytest.raises(DownloadError, match="non-HTTPS") as e:
        dl.fetch(f"{server.url}/models/s.pth", tmp_path / "c.part", **allowed)
    _no_secret(str(e.value))
    with pytest.raises(DownloadError, match="non-HTTPS") as e:
        dl.check_url(f"http://user:hunter2@mirror.example.org/x?token={SECRET}",
                     {"mirror.example.org"})
    _no_secret(str(e.value))
    # a network failure whose own message quotes the request (http.client's InvalidURL)
    with pytest.raises(DownloadError, match="after 1 attempts") as e:
        dl.fetch(f"{server.url}/models/w.pth?token={SECRET} x", tmp_path / "d.part", **allowed)
    _no_secret(str(e.value))
    # a body bigger than pinned
    server.files[f"/models/big.pth?token={SECRET}"] = b"x" * 100  # (paths include the query)
    with pytest.raises(DownloadError, match="more than") as e:
        dl.fetch(f"{server.url}/models/big.pth?token={SECRET}", tmp_path / "e.part",
                 expected_size=10, **allowed)
    _no_secret(str(e.value))
