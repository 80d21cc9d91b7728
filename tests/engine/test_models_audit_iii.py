"""Model store audit III, the items earlier audits left: a failed pull or import leaves no empty
model folder behind, ``models list`` says how much of a partial model is on disk, ``models
verify`` shows its hash's progress (and stops on a signal with it), a pack import checks the free
space of the folders it writes to before writing, and one into a model folder that links to
another disk works. Loopback servers only."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

from engine.errors import ChecksumMismatch, DownloadError, LocalDiskError
from engine.models import store as store_mod
from engine.models.download import DownloadProgress
from engine.models.packs import PackRefused, create_pack, import_pack
from engine.models.store import ModelStore, Presence
from tests.engine.test_models_audit_s18 import _cli
from tests.engine.test_models_s13 import MID, NAME, _blob
from tests.engine.test_packs import _tree, _Tty
from tests.model_helpers import LoopbackServer, install_test_model, served_store


def _jsons(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


# ---------------------------------------------------------------- 1. a failed pull
def test_a_pull_failing_its_hash_leaves_the_store_as_it_was(server, tmp_path, monkeypatch,
                                                            capsys):
    """Before: the download was deleted, but its (now empty) model folder stayed behind."""
    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(30_000, 1)})
    store.root.mkdir()
    server.files[f"/{MID}/{NAME}"] = _blob(30_000, 2)  # same size, other bytes
    with pytest.raises(ChecksumMismatch):
        store.pull(MID)
    assert list(store.root.iterdir()) == []
    # the same through the CLI (exit 1, the error said)
    assert _cli(monkeypatch, store, "models", "pull", MID, "--json") == 1
    [line] = _jsons(capsys.readouterr().out)
    assert "sha256 mismatch" in line["error"]
    assert list(store.root.iterdir()) == []
    assert store.disk_usage() == {"total": 0}


def test_a_failed_pull_keeps_what_it_installed_and_a_resumable_part(server, tmp_path):
    """A model of two files, the second in a sub-folder: its hash fails, the sub-folder made
    for it goes, the first file stays; a dropped connection keeps its .part (and folder)."""
    a, b = _blob(20_000, 3), _blob(40_000, 4)
    store = served_store(tmp_path / "s", server, MID, {NAME: a, "sub/extra.bin": b},
                         retries=0)
    server.files[f"/{MID}/sub/extra.bin"] = _blob(40_000, 5)
    with pytest.raises(ChecksumMismatch):
        store.pull(MID)
    folder = store.root / MID
    assert sorted(p.name for p in folder.iterdir()) == [".mend-state.json", NAME]
    # the host sends the right file, but the connection drops halfway: the bytes are kept
    server.files[f"/{MID}/sub/extra.bin"] = b
    server.drop_after[f"/{MID}/sub/extra.bin"] = 15_000
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        store.pull(MID)
    assert _tree(folder / "sub") == {"extra.bin.part": b[:15_000]}
    assert store.pull(MID) == "verified"


def test_a_failed_single_file_import_leaves_no_model_folder(tmp_path, monkeypatch):
    """Before: the copy failed (a full disk) and the new, empty model folder stayed."""
    src = tmp_path / "in" / NAME
    src.parent.mkdir()
    src.write_bytes(_blob(20_000, 6))
    store = install_test_model(tmp_path / "s", MID, {NAME: src})
    store.remove(MID)

    def full(a, b, *args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.shutil, "copyfile", full)
    assert _cli(monkeypatch, store, "models", "import", str(src)) == 1
    assert not (store.root / MID).exists()


# ---------------------------------------------------------------- 2. how partial is partial
def _partial_store(tmp_path: Path, server: LoopbackServer) -> ModelStore:
    """Three files, 4.4 MB: two downloaded, 100 kB of the third (a dropped connection)."""
    files = {NAME: _blob(400_000, 7), "b.bin": _blob(800_000, 8), "c.bin": _blob(3_200_000, 9)}
    store = served_store(tmp_path / "s", server, MID, files, retries=0)
    server.drop_after[f"/{MID}/c.bin"] = 100_000
    with pytest.raises(DownloadError):
        store.pull(MID)
    assert store.status(MID) == "partial"
    return store


def test_models_list_says_how_much_of_a_partial_model_is_there(server, tmp_path, monkeypatch,
                                                               capsys):
    """Before: only "partial"."""
    store = _partial_store(tmp_path, server)
    assert store.presence(MID) == Presence(2, 3, 1_300_000, 4_400_000)
    assert store.presence(MID).describe() == "2 of 3 files, 1.3 of 4.4 MB"
    assert _cli(monkeypatch, store, "models", "list", "--json") == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[MID]["status"] == "partial"
    assert rows[MID]["present"] == {"files_present": 2, "files": 3,
                                    "bytes_present": 1_300_000, "bytes": 4_400_000}
    assert all("present" not in r for m, r in rows.items() if m != MID)  # (none is partial)
    assert _cli(monkeypatch, store, "models", "list") == 0
    out = capsys.readouterr().out.splitlines()
    i = next(i for i, ln in enumerate(out) if ln.startswith(MID + " "))
    assert out[i].split()[1] == "partial"
    assert out[i + 1] == (f"  partial: 2 of 3 files, 1.3 of 4.4 MB on disk; finish it with: "
                          f"mend models pull {MID}")


def test_presence_in_gigabytes_and_of_one_file():
    assert Presence(2, 3, 1_234_000_000, 4_420_000_000).describe() == (
        "2 of 3 files, 1.2 of 4.4 GB")
    assert Presence(0, 1, 0, 2_000_000).describe() == "0 of 1 file, 0.0 of 2.0 MB"


# ---------------------------------------------------------------- 3. verify's progress
def _installed(tmp_path: Path, sizes: dict[str, int]) -> ModelStore:
    files = {}
    for i, (name, size) in enumerate(sizes.items()):
        p = tmp_path / "in" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_blob(size, 10 + i))
        files[name] = p
    return install_test_model(tmp_path / "s", MID, files)


def test_verify_reports_its_hash_progress_over_the_whole_model(tmp_path):
    """Before: ``verify`` took no progress for its hash (minutes for a multi-GB model)."""
    store = _installed(tmp_path, {NAME: 2_500_000, "b.bin": 1_500_000})
    seen: list[DownloadProgress] = []
    rep = store.verify(MID, hash_progress=seen.append)
    assert rep.status == "verified"
    assert [p.model_id for p in seen] == [MID] * len(seen)
    assert {p.total for p in seen} == {4_000_000}
    dones = [p.done for p in seen]
    assert dones == sorted(dones) and dones[-1] == 4_000_000
    assert [(p.file, p.file_index, p.file_count) for p in (seen[0], seen[-1])] == [
        (NAME, 0, 2), ("b.bin", 1, 2)]
    assert seen[-1].file_done == seen[-1].file_total == 1_500_000
    # a pinned file of the wrong size is damaged without a hash: not counted
    store.file_path(MID, "b.bin").write_bytes(b"short")
    seen.clear()
    assert store.verify(MID, hash_progress=seen.append).corrupt == ["b.bin"]
    assert seen[-1].done == seen[-1].total == 2_500_000


def test_models_verify_shows_a_progress_line_on_a_terminal(tmp_path, monkeypatch, capsys):
    store = _installed(tmp_path, {NAME: 3_000_000})
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert _cli(monkeypatch, store, "models", "verify", MID) == 0
    assert capsys.readouterr().out == f"{MID}: verified\n"
    assert tty.text.startswith(f"\r{MID}: checking ")
    last = tty.text.split("\r")[-1]
    assert last.startswith(f"{MID}: checking 100.0% of 3 MB (") and last.endswith(f"{NAME}\n")
    # --json: no progress line (pull shows none either), stdout the report alone
    tty.text = ""
    assert _cli(monkeypatch, store, "models", "verify", MID, "--json") == 0
    assert tty.text == ""
    assert _jsons(capsys.readouterr().out)[0]["status"] == "verified"


@pytest.mark.skipif(os.name != "posix", reason="sends a POSIX signal")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_the_middle_of_a_verify_stops_it_with_its_line_ended(tmp_path, monkeypatch,
                                                                         capsys, signum):
    """A real signal arrives while the file is hashed (after its first chunk): the hash stops
    there, the progress line is ended, then "mend: interrupted" / "stopped by SIGTERM" on a
    line of its own, exit 130 / 143, and with --json the model's line says so."""
    store = _installed(tmp_path, {NAME: 5_000_000})
    (store.root / MID / store_mod.STATE_FILE).unlink()  # (unrecorded: a later hash must run)
    chunks: list[int] = []
    real = store_mod.sha256_file

    def signalled(path, check_cancel=None, on_bytes=None):
        def on(done: int) -> None:
            chunks.append(done)
            if len(chunks) == 2:
                os.kill(os.getpid(), signum)
            if on_bytes is not None:
                on_bytes(done)
        return real(path, check_cancel, on)

    monkeypatch.setattr(store_mod, "sha256_file", signalled)
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    stop = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    assert _cli(monkeypatch, store, "models", "verify", MID) == 128 + signum
    assert len(chunks) == 2  # (5 MB: five chunks; stopped at the second)
    assert f"{NAME}\nmend: {stop}\n" in tty.text and tty.text.endswith(f"mend: {stop}\n")
    chunks.clear()
    tty.text = ""
    assert _cli(monkeypatch, store, "models", "verify", MID, "--json") == 128 + signum
    assert _jsons(capsys.readouterr().out) == [
        {"id": MID, "interrupted": True,
         "error": f"{stop} while it was checked; run the same command again"}]
    assert tty.text == f"mend: {stop}\n"


# ---------------------------------------------------------------- 4. a pack that cannot fit
def _pack(tmp_path: Path, size: int) -> tuple[Path, ModelStore]:
    src = tmp_path / "in" / NAME
    src.parent.mkdir()
    src.write_bytes(_blob(size, 20))
    source = install_test_model(tmp_path / "src", MID, {NAME: src})
    return create_pack([MID], tmp_path / "p.zip", source), source


def _free_where(monkeypatch, free: dict[str, int]) -> None:
    """The disk of a path under one of ``free``'s folders has that many bytes free."""
    real = shutil.disk_usage

    def fake(path):
        u = real(path)
        for folder, n in free.items():
            if str(Path(path).resolve()).startswith(folder):
                return type(u)(u.total, u.total - n, n)
        return u

    monkeypatch.setattr(shutil, "disk_usage", fake)


def test_a_pack_import_that_cannot_fit_names_the_folder_and_writes_nothing(tmp_path,
                                                                           monkeypatch, capsys):
    """Before: "not enough disk space (0 MB needed, 0 MB free)" - which folder, how much
    (``>> 20``: a pack under 1 MiB said 0 MB) - after the store's folder was made."""
    pack, source = _pack(tmp_path, 300_000)
    dest = ModelStore(tmp_path / "dst", source.manifest)
    _free_where(monkeypatch, {str(tmp_path.resolve()): 120_000})
    made: list[Path] = []
    real_mkdir = Path.mkdir
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: (made.append(self),
                                                               real_mkdir(self, *a, **k))[1])
    with pytest.raises(PackRefused) as e:
        import_pack(pack, dest)
    assert (f"not enough disk space: its files take 0.3 MB, 0.1 MB free on the disk of "
            f"{dest.root}; free some space") in str(e.value)
    assert made == [] and not dest.root.exists()
    assert _cli(monkeypatch, dest, "models", "import", str(pack)) == 1
    assert "not enough disk space: its files take 0.3 MB" in capsys.readouterr().err
    assert made == [] and not dest.root.exists()


def _other_disk(tmp_path: Path) -> Path:
    """A folder on another file system than ``tmp_path`` (a tmpfs), or a skip."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system to link a model folder to")
    return Path(tempfile.mkdtemp(dir=shm))


def test_a_pack_import_into_a_model_folder_on_another_disk(tmp_path, monkeypatch):
    """A model folder that is a link to another disk (``remove`` keeps such a folder's files).
    Before: "cannot import …/00000 … (Invalid cross-device link)": the checked file was only
    renamed into place, which cannot cross disks. Now it is copied there and checked again;
    and that disk's free space is checked first too."""
    pack, source = _pack(tmp_path, 300_000)
    other = _other_disk(tmp_path)
    try:
        dest = ModelStore(tmp_path / "dst", source.manifest)
        dest.root.mkdir()
        os.symlink(other, dest.root / MID)
        _free_where(monkeypatch, {str(other.resolve()): 100_000})
        with pytest.raises(PackRefused, match=(
                rf"{MID}'s files take 0\.3 MB, 0\.1 MB free on the disk of its folder "
                rf"{other.resolve()}")):
            import_pack(pack, dest)
        assert list(other.iterdir()) == [] and list(dest.root.iterdir()) == [dest.root / MID]
        monkeypatch.undo()
        rep = import_pack(pack, dest)
        assert rep.imported == [(MID, NAME)]
        assert dest.status(MID) == "verified" and dest.verify(MID).status == "verified"
        assert sorted(p.name for p in other.iterdir()) == [".mend-state.json", NAME]
        assert [p.name for p in dest.root.iterdir()] == [MID]  # (no temporary folder left)
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_a_pull_into_a_model_folder_on_another_disk_checks_that_disk(server, tmp_path,
                                                                     monkeypatch):
    """Before: the store's disk was checked, not the one the download is written to: a model
    folder linked to a fuller disk was downloaded until that disk was full."""
    data = _blob(300_000, 21)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    other = _other_disk(tmp_path)
    try:
        store.root.mkdir()
        os.symlink(other, store.root / MID)
        _free_where(monkeypatch, {str(other.resolve()): 100_000})
        with pytest.raises(LocalDiskError, match=(
                rf"0\.3 MB to download, 0\.1 MB free on the disk of {store.root / MID};")):
            store.pull(MID)
        assert server.requests == [] and list(other.iterdir()) == []
        monkeypatch.undo()
        assert store.pull(MID) == "verified"
        assert (other / NAME).read_bytes() == data
    finally:
        shutil.rmtree(other, ignore_errors=True)
