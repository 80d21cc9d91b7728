"""Session 19: the model store's and ``mend models``' rough edges left by the earlier audits: a
``--json`` run stopped by Ctrl+C or SIGTERM ends with a line saying so, a pack that cannot fit
is refused before it is written, a killed single-file import's temp copy is swept, a model
folder deleted under a download is a clear error, the disk-space advice names what chose the
folder, a pull of several models checks their total first (and each file), and a broken
``ultralytics`` fails a YOLO plan before its steps. Loopback servers only."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.errors import EngineError, LocalDiskError, SaveFailed
from engine.models import packs
from engine.models import store as store_mod
from engine.models.download import DownloadProgress
from engine.models.packs import create_pack
from engine.models.store import ModelStore
from tests.engine.test_models_audit_s18 import _cli, _free
from tests.engine.test_models_s13 import MID, NAME, _blob
from tests.engine.test_packs import _tree
from tests.model_helpers import LoopbackServer, install_test_model, served_store

ROOT = Path(__file__).resolve().parents[2]


def _jsons(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


# ---------------------------------------------------------------- 1. --json and a signal
def test_a_json_pull_stopped_by_ctrl_c_ends_with_a_line_per_model(server, tmp_path,
                                                                  monkeypatch, capsys):
    """Before: the models pulled before it had their lines, then nothing on stdout - not the
    model that was stopped, nor those never started (only "mend: interrupted" on stderr)."""
    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(20_000, 1)})
    store = served_store(tmp_path / "s", server, "big-lama", {"big-lama.pt": _blob(20_000, 2)},
                         base=store.manifest)
    real_pull = store.pull

    def pull(model_id, *a, **k):
        if model_id == "big-lama":
            raise KeyboardInterrupt
        return real_pull(model_id, *a, **k)

    monkeypatch.setattr(store, "pull", pull)
    code = _cli(monkeypatch, store, "models", "pull", MID, "big-lama", "sam-vit-base", "--json")
    cap = capsys.readouterr()
    assert code == 130
    assert _jsons(cap.out) == [
        {"id": MID, "status": "verified"},
        {"id": "big-lama", "interrupted": True,
         "error": "interrupted; what was downloaded is kept: run the same command again to "
                  "resume"},
        {"id": "sam-vit-base", "error": "not pulled (interrupted)", "not_run": True}]
    assert cap.err.endswith("mend: interrupted\n")
    # verify and remove say so too
    monkeypatch.setattr(store, "verify", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert _cli(monkeypatch, store, "models", "verify", MID, "--json") == 130
    assert _jsons(capsys.readouterr().out) == [
        {"id": MID, "interrupted": True,
         "error": "interrupted while it was checked; run the same command again"}]


def test_a_json_import_or_pack_stopped_by_ctrl_c_says_so(tmp_path, monkeypatch, capsys):
    src = tmp_path / "in" / NAME
    src.parent.mkdir()
    src.write_bytes(_blob(20_000, 3))
    store = install_test_model(tmp_path / "s", MID, {NAME: src})
    store.manifest = type(store.manifest)([m for m in store.manifest if m.id in (MID, "pp-ocr")],
                                          tuple(store.manifest.hosts))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(packs.zipfile.ZipFile, "writestr", interrupted)
    out = tmp_path / "laptop.zip"
    assert _cli(monkeypatch, store, "models", "pack", "--profile", "laptop", "-o", str(out),
                "--json") == 130
    assert _jsons(capsys.readouterr().out) == [
        {"path": str(out), "error": "interrupted; no pack was written", "interrupted": True}]
    assert not out.exists() and not out.with_name(out.name + ".part").exists()
    store.remove(MID)
    monkeypatch.setattr(store_mod.shutil, "copyfile", interrupted)
    assert _cli(monkeypatch, store, "models", "import", str(src), "--json") == 130
    [line] = _jsons(capsys.readouterr().out)
    assert line["interrupted"] is True and line["path"] == str(src)
    assert line["error"].startswith("interrupted; the file being copied was not imported")


class _Holding(LoopbackServer):
    """Sends the headers and the first ``SENT`` bytes of a file, then holds the rest back until
    the server closes (``sent`` is set once those bytes are out)."""

    SENT = 1 << 20  # (one read of the download: written at once)

    def __init__(self) -> None:
        super().__init__()
        self.sent = threading.Event()

    def do_get(self, h) -> None:
        data = self.files[h.path]
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[:self.SENT])
        h.wfile.flush()
        self.sent.set()
        self.release.wait(30)


_PULL_CHILD = r"""
import dataclasses, sys
sys.path.insert(0, sys.argv[1])
from engine import cli
from engine.models.manifest import ModelFile, default_manifest
from engine.models.store import ModelStore
root, url, size, sha, model_id, name = sys.argv[2:8]
base = default_manifest()
spec = dataclasses.replace(base.get(model_id), slot=False, main_file=name, files=(
    ModelFile(name=name, url=url, size=int(size), sha256=sha, sha256_source="test"),))
store = ModelStore(root, base.with_model(spec), allow_http_hosts=("127.0.0.1",), retries=0,
                   timeout=30.0)
cli._store = lambda: store
sys.exit(cli.main(["models", "pull", model_id, "--json"]))
"""


@pytest.mark.skipif(os.name != "posix", reason="sends POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_real_download_ends_the_json_output_with_a_line(tmp_path, signum):
    """A real ``mend models pull --json`` process, in the middle of a download. Before: SIGINT
    printed "mend: interrupted" and no JSON line; SIGTERM ended the process on the spot (no
    line at all, the download's lock file left behind)."""
    srv = _Holding()
    try:
        data = _blob(3_000_000, 4)
        srv.files[f"/{MID}/{NAME}"] = data
        root = tmp_path / "s"
        proc = subprocess.Popen(
            [sys.executable, "-c", _PULL_CHILD, str(ROOT), str(root), f"{srv.url}/{MID}/{NAME}",
             str(len(data)), hashlib.sha256(data).hexdigest(), MID, NAME],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert srv.sent.wait(60), "the download never started"
            part = root / MID / (NAME + ".part")
            deadline = time.monotonic() + 10
            while _size(part) < _Holding.SENT and time.monotonic() < deadline:
                time.sleep(0.02)  # (the bytes sent reach the .part)
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=60)  # (generous: a loaded CI machine)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        srv.close()
    assert proc.returncode == 128 + signum, err
    stop = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    assert _jsons(out) == [{"id": MID, "interrupted": True, "error": (
        f"{stop}; what was downloaded is kept: run the same command again to resume")}]
    assert err.endswith(f"mend: {stop}\n") and "Traceback" not in err
    # the bytes that came are kept for a resume; the download's lock is released and gone
    assert sorted(p.name for p in (root / MID).iterdir()) == [NAME + ".part"]
    assert (root / MID / (NAME + ".part")).read_bytes() == data[:_Holding.SENT]


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------- 2. a pack that cannot fit
def test_a_pack_that_cannot_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch,
                                                                      capsys):
    """Before: the pack was written until the disk was full (a USB stick, the system disk of a
    laptop with every program on it then in trouble), and only then failed."""
    src = tmp_path / "in" / NAME
    src.parent.mkdir()
    src.write_bytes(_blob(300_000, 5))
    store = install_test_model(tmp_path / "s", MID, {NAME: src})
    size = create_pack([MID], tmp_path / "real.zip", store).stat().st_size
    out = tmp_path / "stick" / "laptop.zip"
    _free(monkeypatch, size - 1)
    with pytest.raises(SaveFailed, match=r"not enough disk space to write the pack .*laptop\.zip: "
                                         r"0\.3 MB needed, 0\.3 MB free on its disk"):
        create_pack([MID], out, store)
    assert not out.parent.exists()
    # what the check counts is at least what the pack takes, and not much more
    plan = [(MID, NAME, store.file_path(MID, NAME), None, True)]
    need = packs._pack_size(plan, [store.spec(MID)], 300_000)
    assert size <= need <= size + 16_000
    _free(monkeypatch, need - 1)
    # the CLI: one JSON line, exit 1
    store.manifest = type(store.manifest)([m for m in store.manifest if m.id in (MID, "pp-ocr")],
                                          tuple(store.manifest.hosts))
    assert _cli(monkeypatch, store, "models", "pack", "--profile", "laptop", "-o", str(out),
                "--json") == 1
    [line] = _jsons(capsys.readouterr().out)
    assert line["path"] == str(out) and "not enough disk space" in line["error"]
    # a .part an earlier attempt left is written over: its bytes count as free (10 > 1)
    out.parent.mkdir()
    out.with_name(out.name + ".part").write_bytes(b"x" * 10)
    assert create_pack([MID], out, store) == out
    assert not out.with_name(out.name + ".part").exists()


# ---------------------------------------------------------------- 3. a killed import's temp copy
_IMPORT_CHILD = r"""
import shutil, sys, time
sys.path.insert(0, sys.argv[1])
from engine.models import store as store_mod
from tests.model_helpers import manifest_with
from pathlib import Path

def slow_copy(src, dst, *a, **k):
    Path(dst).write_bytes(Path(src).read_bytes()[:1000])
    print("copying", flush=True)
    time.sleep(60)

store_mod.shutil.copyfile = slow_copy
src = Path(sys.argv[3])
store = store_mod.ModelStore(sys.argv[2], manifest_with(sys.argv[4], {sys.argv[5]: src}))
store.import_path(src)
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
def test_a_killed_single_file_imports_temp_copy_is_swept(server, tmp_path):
    """``mend models import FILE`` killed while it copies. Before: its hidden
    ``.import-<pid>-<hex>.part`` stayed in the model folder for good (counted in its size,
    never resumed, never deleted by another import or a pull). A running import's copy is left
    alone."""
    data = _blob(30_000, 6)
    src = tmp_path / "in" / NAME
    src.parent.mkdir()
    src.write_bytes(data)
    root = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", _IMPORT_CHILD, str(ROOT), str(root), str(src),
                             MID, NAME], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "copying", proc.stderr.read()
        proc.kill()
    finally:
        proc.communicate(timeout=20)
    [left] = [p.name for p in (root / MID).iterdir()]
    assert re.fullmatch(r"\.import-\d+-[0-9a-f]+\.part", left), left
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        busy = root / MID / f".import-{running.pid}-0123abcd.part"
        busy.write_bytes(b"an import still copying")
        store = served_store(root, server, MID, {NAME: data})
        assert store.import_path(src).imported == [(MID, NAME)]
        assert sorted(p.name for p in (root / MID).iterdir()) == sorted(
            [NAME, busy.name, ".mend-state.json"])
        # a pull sweeps them too (one left by a killed import, the model not installed)
        store.remove(MID)
        (root / MID).mkdir()
        killed = root / MID / left
        killed.write_bytes(b"x" * 1000)
        busy.write_bytes(b"an import still copying")
        assert store.pull(MID) == "verified"
        assert not killed.exists() and busy.exists()
    finally:
        running.kill()
        running.wait()


# ---------------------------------------------------------------- 4. the folder deleted
@pytest.mark.parametrize("when", ["midway", "at the end"])
def test_a_model_folder_deleted_during_its_download_is_a_clear_error(server, tmp_path,
                                                                    monkeypatch, capsys, when):
    """Before: a FileNotFoundError traceback (the .part's stat once the download was over),
    after the whole file had been downloaded into a deleted folder."""
    data = _blob(3_000_000, 7)
    store = served_store(tmp_path / "s", server, MID, {NAME: data})
    seen = []

    def delete(p: DownloadProgress) -> None:
        seen.append(p.file_done)
        if not (store.root / MID).exists():
            return
        if when == "midway" or p.file_done == p.file_total:
            shutil.rmtree(store.root / MID)

    with pytest.raises(LocalDiskError, match=(
            f"{MID}/{NAME}: the download was deleted while it was being written .*deleted or "
            "moved.*nothing was installed: run the same command again")):
        store.pull(MID, progress=delete)
    if when == "midway":  # stopped at its next piece, not after the whole file
        assert len(seen) == 1 and seen[0] < len(data)
    assert not (store.root / MID).exists()
    # the CLI: its line, no traceback
    real_pull = store.pull
    monkeypatch.setattr(store, "pull", lambda m, progress=None: real_pull(m, progress=delete))
    assert _cli(monkeypatch, store, "models", "pull", MID, "--json") == 1
    cap = capsys.readouterr()
    [line] = _jsons(cap.out)
    assert "the download was deleted while it was being written" in line["error"]
    assert "Traceback" not in cap.err


def test_a_folder_deleted_between_two_attempts_is_named(server, tmp_path, monkeypatch):
    """The connection drops, the folder goes meanwhile: the retry cannot write. Before: "check
    that the model folder can be written, then run the same command again to resume" - there
    is nothing to resume."""
    data = _blob(300_000, 8)
    store = served_store(tmp_path / "s", server, MID, {NAME: data}, retries=1)
    server.drop_after[f"/{MID}/{NAME}"] = 100_000
    real_sleep = store_mod.dl._sleep

    def sleep(seconds, check):  # the back-off before the retry
        shutil.rmtree(store.root / MID)
        real_sleep(seconds, check)

    monkeypatch.setattr(store_mod.dl, "_sleep", sleep)
    with pytest.raises(LocalDiskError, match="its folder was deleted or moved while it was "
                                             "being downloaded; run the same command again"):
        store.pull(MID)


# ---------------------------------------------------------------- 5. which folder option
def test_the_disk_space_advice_names_what_chose_the_folder(tmp_path, monkeypatch, no_socket,
                                                           capsys):
    """Before: "choose another folder with MEND_MODELS_DIR" also to whoever gave the folder with
    installer/prefetch.py's --models-dir (and the variable was not even set)."""
    from tests.test_installer import _load

    monkeypatch.delenv("MEND_MODELS_DIR")
    _free(monkeypatch, 1000)
    prefetch = _load("prefetch")
    assert prefetch.main(["--profile", "laptop", "--models-dir", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "not enough disk space" in err and "choose another folder with --models-dir" in err
    assert "MEND_MODELS_DIR" not in err
    # the variable, when it chose the folder (or the default folder: it is how to choose one)
    monkeypatch.setenv("MEND_MODELS_DIR", str(tmp_path / "env"))
    with pytest.raises(LocalDiskError, match="choose another folder with MEND_MODELS_DIR"):
        ModelStore().check_space(10_000, "x")
    # a folder a program gave, with no option named: no variable the user never used
    with pytest.raises(LocalDiskError, match=r"\(or choose another model folder\)"):
        ModelStore(tmp_path / "given").check_space(10_000, "x")
    given = ModelStore(tmp_path / "file", root_option="--models-dir")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(SaveFailed, match=r"is a file, not a folder \(check --models-dir\)"):
        given._make_dir(given.root / MID)


# ---------------------------------------------------------------- 6. the total, then each file
def test_a_pull_of_several_models_checks_their_total_first(server, tmp_path, monkeypatch,
                                                           capsys):
    """Each fits alone, not both. Before: ``mend models pull A B`` (or ``--profile``) fetched the
    first, then refused the second."""
    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(100_000, 9)})
    store = served_store(tmp_path / "s", server, "big-lama", {"big-lama.pt": _blob(100_000, 10)},
                         base=store.manifest)
    _free(monkeypatch, 120_000)
    assert _cli(monkeypatch, store, "models", "pull", MID, "big-lama", "--json") == 1
    lines = _jsons(capsys.readouterr().out)
    assert [line["id"] for line in lines] == [MID, "big-lama"]
    assert all(line["not_run"] and line["error"].startswith(
        "not enough disk space to download these models: 0.2 MB to download, 0.1 MB free")
        for line in lines)
    assert server.requests == [] and _tree(store.root) == {}
    assert _cli(monkeypatch, store, "models", "pull", MID, "big-lama") == 1  # (said once)
    assert capsys.readouterr().err.startswith("mend: not enough disk space to download these")
    # a profile names itself (its real models: refused before any download)
    monkeypatch.setattr(store_mod.dl, "fetch", lambda *a, **k: pytest.fail("downloaded"))
    assert _cli(monkeypatch, ModelStore(tmp_path / "p"), "models", "pull", "--profile",
                "laptop") == 1
    assert capsys.readouterr().err.startswith("mend: not enough disk space to download the "
                                              "laptop profile")
    # one model alone: its own check, its own line as before
    _free(monkeypatch, 50_000)
    assert _cli(monkeypatch, store, "models", "pull", MID, "--json") == 1
    [line] = _jsons(capsys.readouterr().out)
    assert "not_run" not in line and "not enough disk space to download" in line["error"]


def test_each_file_of_a_model_is_checked_before_its_download(server, tmp_path, monkeypatch):
    """The disk fills up (another program) while the first of two files downloads: the second
    is refused before it starts. Before: only the model's total was checked, at the start."""
    store = served_store(tmp_path / "s", server, "sam-vit-base",
                         {"config.json": b'{"model_type": "sam"}' * 100,
                          "model.safetensors": _blob(200_000, 11)})
    first = store.file_path("sam-vit-base", "config.json")
    real = shutil.disk_usage

    def usage(path):
        u = real(path)
        free = 100_000 if first.exists() else 10 ** 9
        return type(u)(u.total, u.total - free, free)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    with pytest.raises(LocalDiskError, match=r"not enough disk space to download "
                                             r"sam-vit-base/model\.safetensors"):
        store.pull("sam-vit-base")
    assert [p for p, _ in server.requests] == ["/sam-vit-base/config.json"]


# ---------------------------------------------------------------- 7. a broken ultralytics
@pytest.mark.parametrize("failure, said", [
    ("ImportError('libGL.so.1: cannot open shared object file')",
     "ImportError: libGL.so.1: cannot open"),
    ("ModuleNotFoundError(\"No module named 'torchvision'\", name='torchvision')",
     "ModuleNotFoundError: No module named 'torchvision'")])
def test_the_early_check_catches_a_broken_ultralytics(tmp_path, monkeypatch, failure, said):
    """The package is there (found) but its import fails (a dependency missing, a wrong numpy).
    Before: the early check (``StepSpec.requires``) only looked the package up, so a job with
    the YOLO detector ran its steps and failed in the mask step (the message said to install
    the package, or showed another error raw); "auto" chose YOLO and failed there too."""
    import numpy as np

    from engine.restore import reflection
    from engine.restore.registry import get_step

    pkg = tmp_path / "site" / "ultralytics"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"raise {failure}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "ultralytics", raising=False)
    weights = tmp_path / "best.onnx"
    weights.write_bytes(b"not really weights")
    monkeypatch.setenv("MEND_REFLECTION_YOLO", str(weights))
    from tests.model_helpers import make_runtime

    rt = make_runtime(ModelStore(tmp_path / "store"))
    with pytest.raises(EngineError, match="'ultralytics' package is installed but broken") as e:
        reflection._mask_requires({"detector": "yolo"}, False, rt)
    assert f"({said}" in str(e.value)
    # "auto": the built-in detector, and the warning says why the slot was not used
    from engine.progress import Progress
    from engine.restore.registry import StepContext

    ctx = StepContext(device=rt.device, progress=Progress(), runtime=rt)
    out = get_step("reflection_mask").fn(np.zeros((32, 32, 3), np.float32),
                                         {"detector": "auto"}, ctx)
    assert out.model == "builtin:glare"
    assert len(ctx.warnings) == 1 and "the installed ultralytics is broken" in ctx.warnings[0]


# ---------------------------------------------------------------- found by this session's audit
def test_verify_repair_on_a_read_only_folder_is_a_clear_error(server, tmp_path, monkeypatch,
                                                              capsys):
    """Found on a read-only tmpfs: ``mend models verify --repair`` of a damaged model ended in an
    OSError traceback (EROFS from deleting the damaged file); pull already said it clearly."""
    import errno

    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(20_000, 12)})
    store.pull(MID)
    damaged = store.file_path(MID, NAME)
    damaged.write_bytes(_blob(20_000, 13))
    real_unlink = Path.unlink

    def read_only(self, missing_ok=False):
        if self == damaged:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    assert _cli(monkeypatch, store, "models", "verify", "--repair", MID, "--json") == 1
    cap = capsys.readouterr()
    assert _jsons(cap.out) == [{"id": MID, "error": f"cannot delete the damaged {damaged}: "
                                                    "Read-only file system"}]
    assert "Traceback" not in cap.err and damaged.exists()


def test_remove_says_what_it_freed(server, tmp_path, monkeypatch, capsys):
    """Found using it: ``mend models remove X`` printed "X: missing" whether it deleted 2 GB,
    found nothing to delete, removed only a link to a folder elsewhere, or was asked to remove
    a model that comes with Mend (pp-ocr: "bundled", still there)."""
    store = served_store(tmp_path / "s", server, MID, {NAME: _blob(300_000, 14)})
    store.pull(MID)
    assert _cli(monkeypatch, store, "models", "remove", MID) == 0
    assert capsys.readouterr().out == f"{MID}: missing (removed: 0.3 MB freed)\n"
    assert _cli(monkeypatch, store, "models", "remove", MID, "--json") == 0
    assert _jsons(capsys.readouterr().out) == [{"id": MID, "freed": 0, "status": "missing"}]
    store.pull(MID)
    size = sum(len(b) for b in _tree(store.root / MID).values())  # (the state file's too)
    assert _cli(monkeypatch, store, "models", "remove", MID, "--json") == 0
    assert _jsons(capsys.readouterr().out) == [{"id": MID, "freed": size, "status": "missing"}]
    assert _cli(monkeypatch, store, "models", "remove", MID, "pp-ocr") == 0
    assert capsys.readouterr().out == (f"{MID}: missing (nothing to remove)\n"
                                       "pp-ocr: bundled (it comes with Mend: nothing to remove)\n")
    elsewhere = tmp_path / "other-disk" / MID
    elsewhere.mkdir(parents=True)
    (store.root / MID).symlink_to(elsewhere, target_is_directory=True)
    assert _cli(monkeypatch, store, "models", "remove", MID) == 0
    assert capsys.readouterr().out == (f"{MID}: missing (removed the link; the folder it named "
                                       "was left as it is)\n")
    assert elsewhere.is_dir() and not (store.root / MID).exists()
