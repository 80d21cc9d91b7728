"""Windows and macOS behaviour that can be simulated honestly on Linux: a branch on the OS that is
plain Python, a locale whose encoding is not UTF-8, one folder reached by two spellings (what a
case-insensitive or normalising file system makes of ``Out`` and ``out``), an OpenSSL that finds
no CA certificates (a frozen app on macOS)."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import engine.imageio as mio
from engine.errors import SaveFailed

ROOT = Path(__file__).resolve().parents[2]


def _winerror(code: int) -> PermissionError:
    """The PermissionError Windows raises for ERROR_ACCESS_DENIED / SHARING_VIOLATION (both map
    to EACCES); ``winerror`` carries the Windows code, as it does there."""
    e = PermissionError(13, "The process cannot access the file because it is being used by "
                            "another process")
    e.winerror = code
    return e


# ------------------------------------------------------------------ leftover temp files, Windows


def test_sweep_never_signals_a_process_on_windows(monkeypatch, tmp_path):
    """os.kill(pid, 0) is no existence check on Windows: 0 is CTRL_C_EVENT there, and os.kill
    sends it to a console's processes (GenerateConsoleCtrlEvent) - possibly Mend's own batch.
    The Windows branch asks the process table instead."""
    dead, alive = 4242, 4343
    (tmp_path / f".a.jpg.mend-{dead}-0a1b2c3d.part").write_bytes(b"x")
    (tmp_path / f".b.jpg.mend-{alive}-0a1b2c3d.part").write_bytes(b"x")

    def kill(*_a):
        raise AssertionError("os.kill must not be used to probe a process on Windows")

    monkeypatch.setattr(mio, "_WINDOWS", True, raising=False)
    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(mio, "_pid_alive_nt", lambda pid: pid == alive,
                        raising=False)
    assert mio.sweep_partials(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".b.jpg.mend-{alive}-0a1b2c3d.part"]


# ------------------------------------------------------------------ os.replace on Windows


def _flaky_replace(monkeypatch, failures: int, code: int = 32) -> list:
    real = os.replace
    calls: list = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) <= failures:
            raise _winerror(code)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    return calls


def test_overwrite_waits_for_a_scanner_holding_the_file_on_windows(monkeypatch, tmp_path):
    """Windows (no O_TMPFILE: a named temp file, then os.replace) refuses to replace a file that
    another program - a virus scanner or the indexer looking at a file just written, a reader of
    the same cache file - has open: a moment later it works."""
    dest = tmp_path / "settings.json"
    dest.write_bytes(b"old")
    monkeypatch.setattr(mio, "_USE_O_TMPFILE", False)
    monkeypatch.setattr(mio, "_WINDOWS", True, raising=False)
    calls = _flaky_replace(monkeypatch, failures=2)
    assert mio.atomic_write_bytes(dest, b"new") == dest
    assert dest.read_bytes() == b"new" and len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]  # no temp left


def test_a_real_permission_error_is_not_retried(monkeypatch, tmp_path):
    dest = tmp_path / "settings.json"
    dest.write_bytes(b"old")
    monkeypatch.setattr(mio, "_USE_O_TMPFILE", False)
    monkeypatch.setattr(mio, "_WINDOWS", False, raising=False)  # elsewhere EACCES is final
    calls = _flaky_replace(monkeypatch, failures=1)
    with pytest.raises(SaveFailed, match="permission denied"):
        mio.atomic_write_bytes(dest, b"new")
    assert len(calls) == 1 and dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]


def test_replace_gives_up_after_a_while_on_windows(monkeypatch, tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    monkeypatch.setattr(mio, "_WINDOWS", True, raising=False)
    calls = _flaky_replace(monkeypatch, failures=10**6, code=5)
    with pytest.raises(PermissionError):
        mio.replace_file(tmp_path / "a", tmp_path / "b")
    assert len(calls) == len(mio._REPLACE_DELAYS) + 1


def test_model_file_rename_waits_for_a_scanner_on_windows(monkeypatch, tmp_path):
    """The model store renames a file it has just written and checked (a download's ``.part``,
    an imported copy) into place - the scanner's first look at it; on Windows one refusal
    failed the whole download or import."""
    import hashlib

    from engine.models.store import ModelStore

    src = tmp_path / "model_index.json"
    src.write_bytes(b'{"_class_name": "StableDiffusionPipeline"}')
    store = ModelStore(tmp_path / "store")
    monkeypatch.setattr(mio, "_WINDOWS", True, raising=False)
    calls = _flaky_replace(monkeypatch, failures=2)
    store.install_file("sd-turbo", "model_index.json", src,
                       sha256=hashlib.sha256(src.read_bytes()).hexdigest())
    assert store.file_path("sd-turbo", "model_index.json").read_bytes() == src.read_bytes()
    assert len(calls) >= 3


# ------------------------------------------------------------------ one folder, two spellings


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    photos = tmp_path / "Photos"
    (photos / "out").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"\xff\xd8a")
    (photos / "out" / "a_mend.jpg").write_bytes(b"\xff\xd8b")
    alias = tmp_path / "photos-alias"  # the other spelling ("photos/Out" on macOS)
    alias.symlink_to(photos, target_is_directory=True)
    return photos, alias / "out"


def test_recursive_walk_leaves_out_the_output_folder_however_it_is_spelt(tmp_path):
    """``mend restore -r Photos -o photos/Out`` on macOS: the same folder as Photos/out, but
    the paths differ (macOS paths are not normcased). It was read as input: its results were
    restored again. Here a symlinked parent is the second spelling."""
    photos, out = _tree(tmp_path)
    found = mio.iter_photos([photos], recursive=True, exclude=[out])
    assert found == [photos / "a.jpg"]
    # (and a folder only named, never walked into, changes nothing)
    assert mio.iter_photos([photos], recursive=True, exclude=[tmp_path / "nope"]) == [
        photos / "a.jpg", photos / "out" / "a_mend.jpg"]


# ------------------------------------------------------------------ TLS in a frozen app


def test_downloads_trust_certifi_where_openssl_finds_no_certificates(monkeypatch):
    """A PyInstaller bundle's OpenSSL looks for CA certificates where the build machine's Python
    kept them (on macOS a python.org path users' Macs lack): the store's opener must still
    verify servers, with certifi's bundle."""
    certifi = pytest.importorskip("certifi")
    from engine.models import download as dl

    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/cert.pem")
    monkeypatch.setenv("SSL_CERT_DIR", "/nonexistent/certs")
    opener, _ = dl._opener(frozenset({"huggingface.co"}), ())
    (https,) = [h for h in opener.handlers if isinstance(h, urllib.request.HTTPSHandler)]
    ctx = https._context
    assert ctx is not None and ctx.cert_store_stats()["x509_ca"] > 0
    assert ctx.verify_mode.name == "CERT_REQUIRED" and ctx.check_hostname
    assert Path(certifi.where()).is_file()


def test_downloads_keep_the_system_certificates_where_there_are_some(monkeypatch, tmp_path):
    """Where OpenSSL has a CA file (SSL_CERT_FILE: a company's own CA too) it is what counts."""
    pytest.importorskip("certifi")
    from engine.models import download as dl

    ca = tmp_path / "one.pem"
    import certifi

    text = Path(certifi.where()).read_text(encoding="ascii")
    first = text[text.index("-----BEGIN CERTIFICATE-----"):]
    ca.write_text(first[:first.index("-----END CERTIFICATE-----") + 25] + "\n", encoding="ascii")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "none"))
    opener, _ = dl._opener(frozenset({"huggingface.co"}), ())
    (https,) = [h for h in opener.handlers if isinstance(h, urllib.request.HTTPSHandler)]
    assert https._context.cert_store_stats()["x509_ca"] == 1


# ------------------------------------------------------------------ Apple Silicon: MPS fallback

_ENV = {k: v for k, v in os.environ.items() if k != "PYTORCH_ENABLE_MPS_FALLBACK"}


def _py(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_ENV, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_mps_fallback_is_set_before_torch_is_imported():
    """PyTorch reads PYTORCH_ENABLE_MPS_FALLBACK once, when it is imported (MPSFallback.mm's
    registration): set by select_device - after ``import torch`` - it never took effect, and an
    op without an MPS kernel failed the job on a Mac. The engine sets it when engine.devices is
    imported, which the CLI does before torch. (sys.platform is what the branch reads.)"""
    out = _py("import sys; sys.platform = 'darwin'\n"
              "import os, engine.devices as d\n"
              "print(os.environ.get('PYTORCH_ENABLE_MPS_FALLBACK'), 'torch' in sys.modules, "
              "getattr(d, '_MPS_FALLBACK_ON', None))")
    assert out == "1 False True"
    # the user's own setting stands; elsewhere than macOS nothing is set
    assert _py("import sys, os; sys.platform = 'darwin'\n"
               "os.environ['PYTORCH_ENABLE_MPS_FALLBACK'] = '0'\n"
               "import engine.devices as d\n"
               "print(os.environ['PYTORCH_ENABLE_MPS_FALLBACK'], "
               "getattr(d, '_MPS_FALLBACK_ON', None))") == "0 False"
    assert _py("import os, engine.devices as d\n"
               "print(os.environ.get('PYTORCH_ENABLE_MPS_FALLBACK'), "
               "getattr(d, '_MPS_FALLBACK_ON', None))") == "None False"


def test_mps_fallback_too_late_is_not_pretended():
    """torch already imported without the variable: setting it now would change nothing, so it
    is not set, and select_device says so when it picks MPS."""
    out = _py("import sys, types; sys.platform = 'darwin'\n"
              "sys.modules['torch'] = types.ModuleType('torch')\n"
              "import os, engine.devices as d\n"
              "print(os.environ.get('PYTORCH_ENABLE_MPS_FALLBACK'), "
              "getattr(d, '_MPS_FALLBACK_ON', None))")
    assert out == "None False"


def test_the_cli_imports_the_device_policy_before_torch():
    """What the macOS CLI relies on: engine.devices (which sets the variable) is imported before
    torch on the way to any device."""
    pytest.importorskip("torch")
    out = _py("import sys\n"
              "order = []\n"
              "class F:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name in ('torch', 'engine.devices') and name not in order:\n"
              "            order.append(name)\n"
              "sys.meta_path.insert(0, F())\n"
              "from engine.cli import main\n"
              "main(['doctor', '--json'])\n"
              "print(' '.join(order))")
    assert out.splitlines()[-1] == "engine.devices torch"


def test_frozen_app_sets_the_mps_fallback_before_anything(monkeypatch):
    """The desktop app imports torch before any engine module: the bundle's runtime hook (run
    before the app's code) sets the variable, in both the lean and the full bundle."""
    from tests.test_installer import _exec_spec

    monkeypatch.delenv("PYTORCH_ENABLE_MPS_FALLBACK", raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    hook = ROOT / "installer" / "pyinstaller" / "rth_mend_mps.py"
    runpy.run_path(str(hook), run_name="__main__")
    assert os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] == "1"
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "0")
    runpy.run_path(str(hook), run_name="__main__")
    assert os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] == "0"
    monkeypatch.setattr(sys, "platform", "linux")
    made = _exec_spec(monkeypatch, "Darwin")  # (MEND_DIST_TORCH=bundle: no private env hook)
    assert str(hook) in made["Analysis"][0].kwargs["runtime_hooks"]
    assert any(a and a[0] == "certifi" for a, _k in made["collect_data_files"])


# ------------------------------------------------------------------ Windows installer launchers


def test_windows_launchers_survive_a_non_ascii_user_folder(monkeypatch, tmp_path):
    """cmd.exe reads a batch file in the console's OEM code page, not UTF-8: an absolute path
    written into mend.cmd with "é" in it (C:\\Users\\José\\AppData\\Local\\Mend) named a folder
    that does not exist, and a "%" in it was read as a variable. The launchers name their
    targets from their own folder (%~dp0) and are plain ASCII."""
    from tests.test_installer import _simulate, bootstrap

    prefix = tmp_path / "José 100% Zoë"
    monkeypatch.setenv("APPDATA", str(tmp_path / "roaming"))
    _simulate(monkeypatch, "Windows", "AMD64")
    plan = bootstrap.make_plan(bootstrap.build_parser().parse_args(
        ["--prefix", str(prefix), "--no-desktop-entry"]), bootstrap.detect_hardware())
    prefix.mkdir()
    bootstrap._write_launchers(plan)
    cli, gui = (Path(p).read_bytes().decode("ascii") for p in plan.launchers)
    assert cli == '@echo off\r\n"%~dp0env\\Scripts\\python.exe" -m engine.cli %*\r\n'
    assert gui == ('@echo off\r\nstart "" "%~dp0env\\Scripts\\pythonw.exe" "%~dp0app\\main.py" '
                   '%*\r\n')


def test_installer_app_folder_rename_waits_for_a_scanner_on_windows(monkeypatch, tmp_path):
    """The freshly copied app folder is renamed into place while a scanner may still read its
    files: Windows refuses to rename a folder with a file open in it, for a moment."""
    from tests.test_installer import _simulate, bootstrap

    src = tmp_path / "src"
    (src / "engine").mkdir(parents=True)
    (src / "engine" / "__init__.py").write_text("", encoding="utf-8")
    _simulate(monkeypatch, "Windows", "AMD64")
    calls = _flaky_replace(monkeypatch, failures=2, code=5)
    bootstrap._copy_app(src, tmp_path / "app")
    assert (tmp_path / "app" / "engine" / "__init__.py").is_file() and len(calls) == 3
    _simulate(monkeypatch, "Linux", "x86_64")  # elsewhere a refusal is final
    calls = _flaky_replace(monkeypatch, failures=1, code=5)
    with pytest.raises(PermissionError):
        bootstrap._copy_app(src, tmp_path / "app2")
    assert len(calls) == 1


# ------------------------------------------------------------------ Windows junctions


class _AsOnWindows:
    """A real folder entry as Python 3.11's scandir reports it on Windows: a junction (a folder
    link, ``mklink /J``) is a folder to ``is_dir(follow_symlinks=False)``, not a symlink, and
    only the reparse tag of its own stat tells; there is no ``DirEntry.is_junction`` (3.12)."""

    def __init__(self, entry, junction: bool) -> None:
        self._e, self._junction = entry, junction
        self.name, self.path = entry.name, entry.path

    def is_dir(self, follow_symlinks=True):
        return self._e.is_dir(follow_symlinks=True) if self._junction else \
            self._e.is_dir(follow_symlinks=follow_symlinks)

    def is_file(self, follow_symlinks=True):
        return self._e.is_file(follow_symlinks=follow_symlinks)

    def is_symlink(self):
        return False if self._junction else self._e.is_symlink()

    def stat(self, follow_symlinks=True):
        st = self._e.stat(follow_symlinks=follow_symlinks)
        tag = 0xA0000003 if self._junction and not follow_symlinks else 0
        return type("St", (), {"st_reparse_tag": tag, "st_mode": st.st_mode,
                               "st_size": st.st_size, "st_mtime_ns": st.st_mtime_ns,
                               "st_ino": st.st_ino, "st_dev": st.st_dev})()


def windows_junction_tree(tmp_path, monkeypatch) -> Path:
    """``Photos/a.jpg`` and ``Photos/link`` -> ``Elsewhere`` (holding b.jpg), with os.scandir
    reporting ``link`` as Python 3.11's scandir reports a junction on Windows."""
    photos, elsewhere = tmp_path / "Photos", tmp_path / "Elsewhere"
    photos.mkdir()
    elsewhere.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8a")
    (elsewhere / "b.jpg").write_bytes(b"\xff\xd8b")
    (photos / "link").symlink_to(elsewhere, target_is_directory=True)
    real = os.scandir

    class _Listing:
        def __init__(self, folder):
            self._it = real(folder)

        def __iter__(self):
            return (_AsOnWindows(e, e.name == "link") for e in self._it)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._it.close()

    monkeypatch.setattr(os, "scandir", _Listing)
    return photos


def test_recursive_walk_does_not_follow_windows_junctions(monkeypatch, tmp_path):
    """``-r`` follows no folder link: a junction (to another drive, or to a folder above it, a
    loop) was walked as a folder on Windows, where Python 3.11 has no DirEntry.is_junction."""
    real = os.scandir
    photos = windows_junction_tree(tmp_path, monkeypatch)
    assert mio.iter_photos([photos], recursive=True) == [photos / "a.jpg"]
    assert not mio.is_junction(_AsOnWindows(next(iter(real(photos))), False))


def test_an_mps_buffer_too_large_backs_off_like_out_of_memory():
    """On Apple GPUs one buffer over the device's limit fails with "Invalid buffer size: N GB"
    (a RuntimeError, pytorch/pytorch#141909), not "MPS backend out of memory": the tiler must
    halve its tiles for it too instead of failing the photo."""
    import numpy as np

    from engine.devices import DeviceInfo, is_oom
    from engine.tiling import run_tiled

    assert is_oom(RuntimeError("Invalid buffer size: 19.45 GB"))
    seen = []

    def fn(tile):
        seen.append(tile.shape[0])
        if tile.shape[0] > 64:
            raise RuntimeError("Invalid buffer size: 8.21 GB")
        return tile

    img = np.random.default_rng(0).random((200, 200, 3), dtype=np.float32)
    dev = DeviceInfo("cpu", "CPU", 1, 1 << 30, 1 << 30, False, False)
    out = run_tiled(img, fn, tile=256, overlap=8, min_tile=32, device=dev)
    assert np.allclose(out, img, atol=1e-5) and max(seen[-4:]) <= 64


def test_importing_the_engine_sets_the_mps_fallback_before_torch_on_macos():
    """The GUI imports engine.api before torch: the package itself sets it (PyTorch reads it
    only at its own import)."""
    code = ("import os, sys; os.environ.pop('PYTORCH_ENABLE_MPS_FALLBACK', None); "
            "sys.platform = 'darwin'; import engine.api; "
            "print(os.environ.get('PYTORCH_ENABLE_MPS_FALLBACK'), 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=ROOT, check=False)
    assert r.stdout.split() == ["1", "False"], r.stdout + r.stderr


def test_a_closed_pipe_on_windows_stops_quietly_as_a_broken_pipe(monkeypatch):
    import errno
    import io

    from engine import cli

    class Gone(io.StringIO):
        def write(self, s):
            raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(sys, "stdout", Gone())
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(BrokenPipeError):
        cli._emit({"a": 1}, True, "")
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(OSError) as e:  # elsewhere EINVAL is a real error
        cli._emit({"a": 1}, True, "")
    assert not isinstance(e.value, BrokenPipeError)


def test_ctrl_break_is_named(monkeypatch):
    from engine import cli

    monkeypatch.setattr(cli, "_SIGBREAK", (21,))
    assert cli._interrupted_text(cli._Interrupted(21)) == "stopped by Ctrl+Break"
    assert cli._interrupted_text(cli._Interrupted(15)) == "stopped by SIGTERM"
    assert cli._interrupted_text(cli._Interrupted(2)) == "interrupted"
