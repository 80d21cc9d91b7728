"""Session 18 audit of the model store as a photographer on a laptop meets it: a host whose
file is shorter than pinned, a download that cannot fit on the disk, a model removed while
another process downloads it, imports onto a full or read-only disk, a pack or weights file
cut short, the CLI's exit codes and progress lines, and a killed pack import's leftovers.
Loopback servers only; every socket is refused in the offline-load test."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from engine import cli
from engine.errors import ChecksumMismatch, DownloadError, LocalDiskError, SaveFailed
from engine.models import packs
from engine.models import store as store_mod
from engine.models.packs import create_pack, import_pack
from engine.models.store import ModelStore
from tests.engine.test_models_s13 import MID, NAME, _blob
from tests.engine.test_packs import _tree, _Tty
from tests.model_helpers import LoopbackServer, install_test_model, served_store


class _NoLength(LoopbackServer):
    """Sends a whole file with no Content-Length (the body ends with the connection, as many
    CDNs and proxies answer); a Range request is answered as LoopbackServer does (206/416)."""

    def do_get(self, h) -> None:
        if h.headers.get("Range"):
            super().do_get(h)
            return
        self.requests.append((h.path, None))
        h.send_response(200)
        h.send_header("Connection", "close")
        h.close_connection = True
        h.end_headers()
        h.wfile.write(self.files[h.path])


# ---------------------------------------------------------------- downloads
def test_a_host_whose_file_is_shorter_than_pinned_is_refused_at_its_416(tmp_path):
    """A body of unknown length ended short, the resume got 416 ``bytes */600000``: the host's
    file is 600000 bytes. Before: the .part was deleted and the whole file fetched again until
    the retries ran out (5 requests here, retries+1 whole files), then "run the same command
    again to resume" - which did the same again."""
    srv = _NoLength()
    try:
        data = _blob(100_000, 2)
        store = served_store(tmp_path / "s", srv, MID, {NAME: data}, retries=3)
        srv.files[f"/{MID}/{NAME}"] = data[:60_000]
        with pytest.raises(DownloadError, match="60000 bytes, not the 100000 bytes") as e:
            store.pull(MID)
        assert "attempts" not in str(e.value)
        assert srv.requests == [(f"/{MID}/{NAME}", None), (f"/{MID}/{NAME}", "bytes=60000-")]
        folder = store.root / MID
        assert not [p for p in folder.rglob("*") if p.name.startswith(NAME)]
    finally:
        srv.close()


def test_a_download_failing_its_hash_says_it_was_deleted_and_what_to_do(server, tmp_path):
    """Before: only "sha256 mismatch (expected …, got …)" - not that nothing was installed,
    that the download is gone, nor what to run."""
    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(30_000, 3)})
    server.files[f"/{MID}/{NAME}"] = _blob(30_000, 4)  # same size, other bytes
    with pytest.raises(ChecksumMismatch) as e:
        store.pull(MID)
    msg = str(e.value)
    assert "sha256 mismatch" in msg
    assert "deleted and nothing was installed" in msg and "run the same command again" in msg
    assert not store.file_path(MID, NAME).exists()
    assert not store.file_path(MID, NAME).with_name(NAME + ".part").exists()


def _free(monkeypatch, free: int) -> None:
    real = shutil.disk_usage

    def fake(path):
        u = real(path)
        return type(u)(u.total, u.total - free, free)

    monkeypatch.setattr(shutil, "disk_usage", fake)


def test_a_download_that_cannot_fit_on_the_disk_is_refused_before_it_starts(server, tmp_path,
                                                                            monkeypatch):
    """Before: the download filled the disk to its last byte (a laptop's system disk, every
    program on it then in trouble) and only then failed with "disk full"."""
    data = _blob(200_000, 5)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    _free(monkeypatch, 120_000)
    with pytest.raises(LocalDiskError, match=r"not enough disk space.*0\.2 MB to download, "
                                             r"0\.1 MB free"):
        store.pull(MID)
    assert server.requests == []
    assert _tree(store.root) == {}
    # what a .part already holds counts as done: 100000 bytes left fit in 120000
    part = store.file_path(MID, NAME).with_name(NAME + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data[:100_000])
    assert store.space_needed(MID) == 100_000
    assert store.pull(MID) == "verified"
    assert server.requests == [(f"/{MID}/{NAME}", "bytes=100000-")]


def test_a_profile_that_cannot_fit_is_refused_before_its_first_model(server, tmp_path,
                                                                     monkeypatch):
    """Each model fits alone; the two together do not: nothing is downloaded (before: the
    first was, then the disk filled up during the second)."""
    from engine.models.packs import pull_profile

    a = served_store(tmp_path / "s", server, MID, {NAME: _blob(100_000, 6)})
    store = served_store(tmp_path / "s", server, "big-lama", {"big-lama.pt": _blob(100_000, 7)},
                         base=a.manifest)
    keep = {MID, "big-lama", "pp-ocr"}
    store.manifest = type(store.manifest)([m for m in store.manifest if m.id in keep],
                                          tuple(store.manifest.hosts))
    _free(monkeypatch, 150_000)
    with pytest.raises(LocalDiskError, match="the laptop profile"):
        pull_profile("laptop", store)
    assert server.requests == []


# ---------------------------------------------------------------- remove
def test_a_model_another_process_downloads_is_not_removed(server, tmp_path):
    """The download lock is held (as ``mend models pull`` or the app holds it while it writes
    the .part). Before: remove deleted the folder, .part included, under the download, which
    then ended in a traceback (FileNotFoundError) when it came to check the file."""
    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(50_000, 8)})
    part = store.file_path(MID, NAME).with_name(NAME + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1000)
    with store_mod._part_lock(part):
        with pytest.raises(SaveFailed, match=f"{NAME} is being downloaded by another Mend"):
            store.remove(MID)
        assert part.read_bytes() == b"x" * 1000
    # the download over (its lock released, even a lock file left by a killed one): removed
    part.with_name(part.name + ".lock").write_bytes(b"")
    assert store.remove(MID) == 1000
    assert not (store.root / MID).exists()


# ---------------------------------------------------------------- imports
def _cli(monkeypatch, store: ModelStore, *argv: str) -> int:
    monkeypatch.setattr(cli, "_store", lambda: store)
    return cli.main(list(argv))


def test_an_import_onto_a_full_disk_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """Before: a raw OSError out of ``mend models import`` (a traceback)."""
    src = tmp_path / "in" / NAME
    src.parent.mkdir()
    src.write_bytes(_blob(20_000, 9))
    store = install_test_model(tmp_path / "s", MID, {NAME: src})
    store.remove(MID)

    def full(a, b, *args, **kw):
        Path(b).write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.shutil, "copyfile", full)
    assert _cli(monkeypatch, store, "models", "import", str(src)) == 1
    err = capsys.readouterr().err
    assert err.startswith("mend: cannot import") and "No space left on device" in err
    assert "Traceback" not in err
    assert not (store.root / MID).exists()  # no temporary copy left, nor the folder made for it


def test_a_pack_import_onto_a_full_disk_is_a_clear_error_leaving_nothing(tmp_path, monkeypatch):
    """Before: a raw OSError (the temporary folder was removed, but the CLI printed a
    traceback); the same for a model folder on a read-only disk (EROFS from mkdtemp)."""
    src = tmp_path / "in" / NAME
    src.parent.mkdir()
    src.write_bytes(_blob(40_000, 10))
    source = install_test_model(tmp_path / "src", MID, {NAME: src})
    pack = create_pack([MID], tmp_path / "p.zip", source)
    dest = ModelStore(tmp_path / "dst", source.manifest)
    dest.root.mkdir()
    real_open = open

    class _Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return _Full(f) if mode == "wb" else f

    monkeypatch.setattr(packs, "open", full_disk_open, raising=False)
    with pytest.raises(SaveFailed, match="could not import the pack.*No space left"):
        import_pack(pack, dest)
    assert list(dest.root.iterdir()) == []
    monkeypatch.undo()

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(dest.root / ".import-pack-x"))

    monkeypatch.setattr(packs.tempfile, "mkdtemp", read_only)
    with pytest.raises(SaveFailed, match="could not import the pack.*Read-only file system"):
        import_pack(pack, dest)
    assert list(dest.root.iterdir()) == []


def test_a_file_that_cannot_be_read_is_rejected_and_the_import_goes_on(tmp_path, monkeypatch):
    """Before: a PermissionError out of the whole folder import (nothing else imported)."""
    a, b = _blob(20_000, 11), _blob(30_000, 12)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / NAME).write_bytes(a)
    (folder / "big-lama.pt").write_bytes(b)
    store = install_test_model(tmp_path / "s", MID, {NAME: folder / NAME})
    store = install_test_model(tmp_path / "s", "big-lama", {"big-lama.pt": folder / "big-lama.pt"},
                               store=store)
    store.remove(MID)
    store.remove("big-lama")
    real = store_mod.sha256_file

    def locked(path, check_cancel=None):
        if Path(path).name == "big-lama.pt" and Path(path).parent == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, check_cancel)

    monkeypatch.setattr(store_mod, "sha256_file", locked)
    rep = store.import_path(folder)
    assert rep.imported == [(MID, NAME)]
    assert rep.rejected == [(str(folder / "big-lama.pt"),
                             f"cannot be read (Permission denied: {folder / 'big-lama.pt'})")]


def test_a_pack_cut_short_is_called_cut_short(tmp_path, monkeypatch, capsys):
    """A pack copied in part (a USB stick pulled out) is no readable ZIP any more. Before: "not
    a file of any model Mend knows …; pass the model id for unpinned files"."""
    src = tmp_path / "in" / NAME
    src.parent.mkdir()
    src.write_bytes(_blob(40_000, 13))
    source = install_test_model(tmp_path / "src", MID, {NAME: src})
    pack = create_pack([MID], tmp_path / "laptop.zip", source)
    cut = tmp_path / "copied.zip"
    cut.write_bytes(pack.read_bytes()[:25_000])
    dest = ModelStore(tmp_path / "dst", source.manifest)
    assert _cli(monkeypatch, dest, "models", "import", str(cut)) == 1
    out = capsys.readouterr().out
    assert "a ZIP archive that is cut short or damaged" in out and "copy it again" in out
    assert "pass the model id" not in out
    assert not dest.root.exists() or _tree(dest.root) == {}


def test_a_wrong_copy_of_a_model_file_says_how_it_differs(tmp_path):
    """A browser download cut short, or another version under the pinned name. Before: "not a
    file of any model Mend knows …; pass the model id for unpinned files" - also when the model
    id was passed."""
    good = _blob(50_000, 14)
    src = tmp_path / "build" / NAME
    src.parent.mkdir()
    src.write_bytes(good)
    store = install_test_model(tmp_path / "s", MID, {NAME: src})
    sam = tmp_path / "build" / "model.safetensors"
    sam.write_bytes(_blob(10_000, 15))
    cfg = tmp_path / "build" / "config.json"
    cfg.write_text('{"model_type": "sam"}')
    store = install_test_model(tmp_path / "s", "sam-vit-base",
                               {"config.json": cfg, "model.safetensors": sam}, store=store)
    store.remove(MID)
    pinned = hashlib.sha256(good).hexdigest()
    d = tmp_path / "downloads"
    d.mkdir()
    cut = d / NAME
    cut.write_bytes(good[:20_000])
    rep = store.import_path(cut)
    assert rep.rejected == [(str(cut), (
        f"not the file Mend pins for {MID}/{NAME}: it is 20,000 bytes, the pinned file 50,000 "
        "bytes (cut short: an interrupted download or copy?); get a complete copy, or "
        f"download it with: mend models pull {MID}"))]
    other = d / "renamed (1).pth"  # same size, other bytes, any name: the id says which model
    other.write_bytes(_blob(50_000, 16))
    rep = store.import_path(other, MID)
    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    assert rep.rejected[0][1].startswith(
        f"not the file Mend pins for {MID}/{NAME}: its sha256 {digest[:12]}… is not the pinned "
        f"{pinned[:12]}…")
    rep = store.import_path(other, "sam-vit-base")  # several files: which ones it has
    assert rep.rejected[0][1] == (f"not a file of sam-vit-base (sha256 {digest[:12]}…); its "
                                  "files are: config.json, model.safetensors")
    rep = store.import_path(other, "pp-ocr")  # (before: "… pass the model id")
    assert rep.rejected[0][1] == "pp-ocr takes no file: it comes with Mend (its Python package)"
    assert not store.file_path(MID, NAME).exists()


# ---------------------------------------------------------------- the CLI
def test_an_unknown_model_id_is_a_usage_error_and_nothing_is_pulled(server, tmp_path,
                                                                   monkeypatch, capsys):
    """Before: exit 1, after downloading the ids named before the typo."""
    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(20_000, 17)})
    assert _cli(monkeypatch, store, "models", "pull", MID, "realesr-genral-x4v3") == 2
    assert server.requests == []
    out = capsys.readouterr().out
    assert out == ("realesr-genral-x4v3: error: unknown model 'realesr-genral-x4v3' (see: mend "
                   "models list)\n")
    assert _cli(monkeypatch, store, "models", "verify", "nosuch", "--json") == 2
    assert json.loads(capsys.readouterr().out) == {
        "id": "nosuch", "error": "unknown model 'nosuch' (see: mend models list)"}
    assert _cli(monkeypatch, store, "models", "pull", MID) == 0  # (the store is fine)


def test_verify_repair_says_which_stray_files_it_removed(server, tmp_path, monkeypatch, capsys):
    """Before: "stray: extra.safetensors" was listed, and the status "verified" - but not that
    the file had been deleted."""
    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(20_000, 18)})
    store.pull(MID)
    (store.root / MID / "extra.safetensors").write_bytes(b"not ours")
    assert _cli(monkeypatch, store, "models", "verify", "--repair", MID) == 0
    out = capsys.readouterr().out
    assert out == (f"{MID}: verified\n  stray: extra.safetensors\n"
                   "  removed: extra.safetensors\n")
    assert not (store.root / MID / "extra.safetensors").exists()


def test_pull_names_a_non_commercial_licence_before_it_downloads(server, tmp_path, monkeypatch,
                                                                 capsys):
    """Before: ``mend models pull codeformer`` (or ``--profile laptop``) fetched a model a
    professional photographer may not use for paid work without a word about it."""
    store = served_store(tmp_path / "s", server, "codeformer", {"codeformer.pth": _blob(9_000)})
    assert not store.spec("codeformer").commercial_use
    assert _cli(monkeypatch, store, "models", "pull", "codeformer", "--json") == 0
    cap = capsys.readouterr()
    assert cap.err == ("codeformer: licence NTU S-Lab License 1.0 - not for commercial use\n")
    assert json.loads(cap.out) == {"id": "codeformer", "status": "verified"}
    assert _cli(monkeypatch, store, "models", "pull", "codeformer") == 0  # installed: no repeat
    assert capsys.readouterr().err == ""
    store = served_store(tmp_path / "s2", server, MID, {NAME: _blob(9_000)})
    assert _cli(monkeypatch, store, "models", "pull", MID) == 0  # BSD-3-Clause: nothing said
    assert capsys.readouterr().err == ""


def test_a_failed_download_ends_its_progress_line(server, tmp_path, monkeypatch, capsys):
    """On a terminal the progress line (stderr) was left open, so the error (stdout) or
    "mend: interrupted" was glued to it: "…% of 0 MB (0.0 MB/s) x.pthx: error: …"."""
    data = _blob(300_000, 19)
    store = served_store(tmp_path / "s", server, MID, {NAME: data}, retries=0)
    server.drop_after[f"/{MID}/{NAME}"] = 100_000
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert _cli(monkeypatch, store, "models", "pull", MID) == 1
    assert "download failed" in capsys.readouterr().out
    assert "\r" in tty.text and tty.text.endswith("\n")
    assert f"{NAME}\n" in tty.text  # the last progress line ended, then nothing else
    # Ctrl+C in the middle of a download: "mend: interrupted" on a line of its own
    tty.text = ""

    def interrupted(*a, **k):
        progress = k.get("progress")
        from engine.models.download import DownloadProgress

        progress(DownloadProgress(MID, NAME, 10, 100, 10, 100, 0.0))
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "pull", interrupted)
    assert _cli(monkeypatch, store, "models", "pull", MID) == 130
    assert tty.text.endswith(f"{NAME}\nmend: interrupted\n")


def test_a_failed_pack_import_ends_its_progress_line(tmp_path, monkeypatch):
    src = tmp_path / "in" / NAME
    src.parent.mkdir()
    data = os.urandom(3_000_000)
    src.write_bytes(data)
    source = install_test_model(tmp_path / "src", MID, {NAME: src})
    pack = create_pack([MID], tmp_path / "p.zip", source)
    raw = bytearray(pack.read_bytes())
    i = raw.find(data[2_500_000:2_500_064])  # (stored uncompressed)
    assert i > 0
    raw[i] ^= 0xFF  # past the first chunk: progress is shown, then the bad CRC
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(raw))
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    dest = ModelStore(tmp_path / "dst", source.manifest)
    assert _cli(monkeypatch, dest, "models", "import", str(bad)) == 1
    lines = tty.text.split("\n")
    assert lines[0].split("\r")[-1].startswith("importing:")
    assert lines[1].startswith("mend: ") and "damaged" in lines[1]


# ---------------------------------------------------------------- a killed pack import
def test_a_killed_pack_imports_folder_is_deleted_by_the_next_import(tmp_path):
    """A pack import killed (or the app crashed, the power went) left its hidden temporary
    folder in the store for good: GBs that no command counted or removed. Before: still there
    after any number of imports."""
    src = tmp_path / "in" / NAME
    src.parent.mkdir()
    src.write_bytes(_blob(20_000, 21))
    source = install_test_model(tmp_path / "src", MID, {NAME: src})
    pack = create_pack([MID], tmp_path / "p.zip", source)
    dest = ModelStore(tmp_path / "dst", source.manifest)
    dest.root.mkdir()
    old = time.time() - 3600
    folders = {}
    for kind in ("killed", "killed-old-mend", "running", "just-made"):
        d = dest.root / f".import-pack-{kind}"
        d.mkdir()
        (d / "00000").write_bytes(b"checked bytes nobody will use" * 100)
        if kind != "killed-old-mend":
            (d / ".lock").write_bytes(b"")
        if kind != "just-made":
            os.utime(d, (old, old))
        folders[kind] = d
    running = open(folders["running"] / ".lock", "a+b")  # noqa: SIM115
    try:
        assert store_mod._try_lock(running)
        rep = import_pack(pack, dest)
        assert rep.imported == [(MID, NAME)]
        left = sorted(p.name for p in dest.root.iterdir() if p.name.startswith(".import"))
        assert left == [".import-pack-just-made", ".import-pack-running"]
    finally:
        running.close()


# ---------------------------------------------------------------- offline, after install
def test_installed_models_of_every_loader_load_with_every_socket_refused(tmp_path, monkeypatch):
    """A guard, not a fix (no defect found): spandrel weights, a transformers folder (SAM) and a
    diffusers pipeline (SD-Turbo + the InvSR predictor) load from the store with no socket
    allowed and no HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE set - the loaders' own
    ``local_files_only=True`` is what keeps them off the network."""
    import torch

    from engine.restore.invsr import InvSRPipeline
    from engine.restore.reflection import load_sam
    from tests.model_helpers import make_runtime
    from tests.tiny_models import install_models

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MEND_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty hub cache
    ids = ["realesr-general-x4v3", "big-lama", "sam-vit-base", "sd-turbo",
           "invsr-noise-predictor-v5"]
    store = install_models(tmp_path / "store", ids, tmp_path / "build")
    tried = []

    def refuse(*a, **k):
        tried.append(a)
        raise OSError("a socket was opened")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    rt = make_runtime(store)
    rt.load_image_model("realesr-general-x4v3")
    rt.load_image_model("big-lama")
    load_sam(rt)
    InvSRPipeline(rt.path("sd-turbo"), rt.file("invsr-noise-predictor-v5"), "cpu", torch.float32,
                  [f.name for f in store.spec("sd-turbo").files])
    assert tried == []
