"""Installer: hardware detection, lock choice, dry-run plans, lock files, a real (empty-lock)
install, the frozen app's environment lookup, and the profile prefetch."""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALLER = ROOT / "installer"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"mend_installer_{name}", INSTALLER / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


bootstrap = _load("bootstrap")
make_locks = _load("make_locks")


def _has_nvidia_driver() -> bool:
    return bool(shutil.which("nvidia-smi")) or Path("/proc/driver/nvidia/version").exists()


# ---------------------------------------------------------------- detection on this machine


def test_detects_cpu_on_this_machine():
    if _has_nvidia_driver() or platform.system() == "Darwin":
        pytest.skip("this machine has an NVIDIA driver or is a Mac")
    hw = bootstrap.detect_hardware()
    assert hw.kind == "cpu"
    assert hw.gpus == [] and hw.driver is None
    lock, reasons = bootstrap.choose_lock(hw)
    assert lock == "cpu"
    assert "no NVIDIA GPU" in reasons[0]


def test_dry_run_json_on_this_machine_changes_nothing(tmp_path):
    if _has_nvidia_driver() or platform.system() == "Darwin":
        pytest.skip("this machine has an NVIDIA driver or is a Mac")
    prefix = tmp_path / "prefix"
    r = subprocess.run([sys.executable, str(INSTALLER / "bootstrap.py"), "--dry-run", "--json",
                        "--prefix", str(prefix), "--no-desktop-entry"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["dry_run"] is True
    assert plan["hardware"]["kind"] == "cpu"
    assert plan["lock"] == "cpu"
    assert Path(plan["lock_file"]) == INSTALLER / "locks" / "cpu.txt"
    argvs = [s["argv"] for s in plan["steps"] if s["argv"]]
    assert argvs[0][1:3] == ["-m", "venv"] and argvs[0][3] == str(prefix / "env")
    pip = next(a for a in argvs if "pip" in a)
    assert pip[0] == str(prefix / "env" / "bin" / "python")
    assert pip[pip.index("-r") + 1] == str(INSTALLER / "locks" / "cpu.txt")
    assert [s["action"] for s in plan["steps"]][-1] == "receipt"
    assert not prefix.exists()


def test_dry_run_human_output(tmp_path):
    r = subprocess.run([sys.executable, str(INSTALLER / "bootstrap.py"), "--dry-run",
                        "--prefix", str(tmp_path / "p"), "--lock", "linux-cuda"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "Lock:     linux-cuda" in r.stdout and "nothing was changed" in r.stdout
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------- simulated hardware


def _args(tmp_path, *extra):
    return bootstrap.build_parser().parse_args(["--prefix", str(tmp_path / "p"), *extra])


def _simulate(monkeypatch, system, machine, nvidia=None, apple=None):
    monkeypatch.setattr(bootstrap.platform, "system", lambda: system)
    monkeypatch.setattr(bootstrap.platform, "machine", lambda: machine)
    monkeypatch.setattr(bootstrap, "detect_nvidia", lambda: nvidia)
    monkeypatch.setattr(bootstrap, "detect_apple_silicon", lambda: apple)


def _gpu(driver):
    return [bootstrap.Gpu("NVIDIA GeForce RTX 4070 Laptop GPU", driver, 8188)], "nvidia-smi"


@pytest.mark.parametrize("system,machine,driver,lock,python", [
    ("Linux", "x86_64", "580.95.05", "linux-cuda", "env/bin/python"),
    ("Windows", "AMD64", "581.57", "windows-cuda", "env/Scripts/python.exe"),
])
def test_plan_for_simulated_nvidia(monkeypatch, tmp_path, system, machine, driver, lock, python):
    _simulate(monkeypatch, system, machine, nvidia=_gpu(driver))
    hw = bootstrap.detect_hardware()
    assert (hw.kind, hw.driver, hw.machine) == ("nvidia", driver, "x86_64")
    plan = bootstrap.make_plan(_args(tmp_path, "--no-desktop-entry"), hw)
    assert plan.lock == lock
    assert Path(plan.lock_file).name == f"{lock}.txt"
    pip = next(s.argv for s in plan.steps if s.argv and "pip" in s.argv)
    assert pip[0] == str(tmp_path / "p" / python)
    assert pip[-2:] == ["-r", str(INSTALLER / "locks" / f"{lock}.txt")]
    assert "CUDA 13.0" in plan.reasons[0] and "RTX 4070" in plan.reasons[0]


def test_old_nvidia_driver_falls_back_to_cpu(monkeypatch, tmp_path):
    _simulate(monkeypatch, "Linux", "x86_64", nvidia=_gpu("535.104.05"))
    plan = bootstrap.make_plan(_args(tmp_path), bootstrap.detect_hardware())
    assert plan.hardware.kind == "nvidia"
    assert plan.lock == "cpu"
    assert "535.104.05 is older" in plan.reasons[0]


def test_pre_turing_gpu_falls_back_to_cpu(monkeypatch, tmp_path):
    gpu = bootstrap.Gpu("NVIDIA GeForce GTX 1060", "580.95.05", 6144, "6.1")
    _simulate(monkeypatch, "Windows", "AMD64", nvidia=([gpu], "nvidia-smi"))
    plan = bootstrap.make_plan(_args(tmp_path), bootstrap.detect_hardware())
    assert plan.lock == "cpu" and "compute capability 6.1" in plan.reasons[0]


def test_nvidia_on_arm_linux_uses_cpu_lock(monkeypatch, tmp_path):
    _simulate(monkeypatch, "Linux", "aarch64", nvidia=_gpu("580.95.05"))
    plan = bootstrap.make_plan(_args(tmp_path), bootstrap.detect_hardware())
    assert plan.lock == "cpu" and "no CUDA lock" in plan.reasons[0]


def test_plan_for_simulated_apple_silicon(monkeypatch, tmp_path):
    _simulate(monkeypatch, "Darwin", "arm64", apple={"translated": False})
    plan = bootstrap.make_plan(_args(tmp_path), bootstrap.detect_hardware())
    assert plan.hardware.kind == "apple"
    assert plan.lock == "macos-arm64"
    assert "MPS" in plan.reasons[0]


def test_rosetta_python_and_intel_mac_are_refused(monkeypatch, tmp_path):
    _simulate(monkeypatch, "Darwin", "x86_64", apple={"translated": True})
    with pytest.raises(bootstrap.BootstrapError, match="Rosetta"):
        bootstrap.make_plan(_args(tmp_path), bootstrap.detect_hardware())
    _simulate(monkeypatch, "Darwin", "x86_64", apple=None)
    with pytest.raises(bootstrap.BootstrapError, match="Intel Macs"):
        bootstrap.make_plan(_args(tmp_path), bootstrap.detect_hardware())


def test_simulated_cpu_windows_and_offline_wheelhouse(monkeypatch, tmp_path):
    _simulate(monkeypatch, "Windows", "AMD64")
    wh = tmp_path / "wheels"
    plan = bootstrap.make_plan(_args(tmp_path, "--wheelhouse", str(wh), "--models", "laptop"),
                               bootstrap.detect_hardware())
    assert plan.lock == "cpu"
    pip = next(s.argv for s in plan.steps if s.argv and "pip" in s.argv)
    assert pip[pip.index("--find-links") + 1] == str(wh) and "--no-index" in pip
    assert any(s.argv and s.argv[-3:] == ["pull", "--profile", "laptop"] for s in plan.steps)
    assert str(tmp_path / "p" / "mend.cmd") in plan.launchers


def test_download_wheels_plan(monkeypatch, tmp_path):
    _simulate(monkeypatch, "Linux", "x86_64")
    plan = bootstrap.make_plan(_args(tmp_path, "--lock", "windows-cuda", "--download-wheels",
                                     str(tmp_path / "wh")), bootstrap.detect_hardware())
    assert plan.mode == "download-wheels"
    cmd = plan.steps[0].argv
    assert cmd[2:4] == ["pip", "download"] and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--platform") + 1] == "win_amd64"
    assert cmd[cmd.index("-r") + 1].endswith("windows-cuda.txt")
    # the cpu lock's colorama has a win32 marker that pip judges by this machine: added apart
    plan = bootstrap.make_plan(_args(tmp_path, "--lock", "cpu", "--target-os", "windows",
                                     "--download-wheels", str(tmp_path / "wh")),
                               bootstrap.detect_hardware())
    assert plan.steps[0].argv[plan.steps[0].argv.index("--platform") + 1] == "win_amd64"
    assert any("colorama==0.4.6" in (s.argv or []) for s in plan.steps[1:])
    plan = bootstrap.make_plan(_args(tmp_path, "--lock", "cpu", "--download-wheels",
                                     str(tmp_path / "wh")), bootstrap.detect_hardware())
    assert "manylinux_2_28_x86_64" in plan.steps[0].argv and len(plan.steps) == 1


# ---------------------------------------------------------------- parsers


def test_parse_nvidia_smi():
    text = ("NVIDIA GeForce RTX 3060, 580.95.05, 12288, 8.6\n"
            "NVIDIA RTX A2000 Laptop GPU, 580.95.05, 4096\n"
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n")
    gpus = bootstrap.parse_nvidia_smi(text)
    assert [(g.name, g.driver, g.memory_mb, g.compute_capability) for g in gpus] == [
        ("NVIDIA GeForce RTX 3060", "580.95.05", 12288, "8.6"),
        ("NVIDIA RTX A2000 Laptop GPU", "580.95.05", 4096, None)]
    assert bootstrap.parse_nvidia_smi("No devices were found\n") == []


def test_linux_driver_files(tmp_path):
    proc = tmp_path / "proc" / "driver" / "nvidia"
    (proc / "gpus" / "0000:01:00.0").mkdir(parents=True)
    (proc / "version").write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  "
        "(dvs-builder@U16-I3-B03-4-3)  Tue Sep 23 09:38:22 UTC 2025\nGCC version:  gcc 12\n")
    (proc / "gpus" / "0000:01:00.0" / "information").write_text(
        "Model: \t\t NVIDIA GeForce RTX 4090\nIRQ:   \t\t 170\n")
    gpus, how = bootstrap._nvidia_from_driver_files(tmp_path)
    assert how == "/proc/driver/nvidia/version"
    assert (gpus[0].name, gpus[0].driver) == ("NVIDIA GeForce RTX 4090", "580.95.05")
    assert bootstrap.parse_proc_driver_version(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19") == "535.104.05"
    assert bootstrap.parse_proc_driver_version("580.65.06\n") == "580.65.06"
    assert bootstrap._nvidia_from_driver_files(tmp_path / "none") is None


# ---------------------------------------------------------------- lock files


def test_lock_files_parse_and_pin_the_right_torch():
    base = make_locks.read_pins()
    torch_v, tv_v = base["torch"][1], base["torchvision"][1]
    expect = {"linux-cuda": ("", None), "windows-cuda": ("+cu130", make_locks.TORCH_CU130_INDEX),
              "macos-arm64": ("", None), "cpu": ("+cpu", make_locks.TORCH_CPU_INDEX)}
    for name in bootstrap.LOCKS:
        pins, options = bootstrap.read_lock(bootstrap.lock_file(name))
        suffix, index = expect[name]
        assert pins["torch"] == torch_v + suffix, name
        assert pins["torchvision"] == tv_v + suffix, name
        assert (options == ["--extra-index-url", index]) if index else options == [], name
        cuda = {k for k in pins if k.startswith(("nvidia-", "cuda-")) or k == "triton"}
        assert bool(cuda) == (name == "linux-cuda"), name
        assert not set(pins) & make_locks.DEV_PACKAGES, name
        # every other package: exactly the tested version
        for key, version in pins.items():
            if key in base and key not in ("torch", "torchvision"):
                assert version == base[key][1], (name, key)
        for needed in ("numpy", "pyside6-essentials", "spandrel", "opencv-python-headless",
                       "onnxruntime", "rapidocr", "transformers", "diffusers"):
            assert needed in pins, (name, needed)
    assert "colorama" in bootstrap.read_lock(bootstrap.lock_file("windows-cuda"))[0]


def test_lock_files_are_current_with_requirements_lock():
    assert make_locks.main(["--check"]) == 0


def test_linux_cuda_lock_is_the_tested_set_minus_dev_tools():
    base = make_locks.read_pins()
    pins, _ = bootstrap.read_lock(bootstrap.lock_file("linux-cuda"))
    assert set(pins) == set(base) - make_locks.DEV_PACKAGES
    assert all(pins[k] == base[k][1] for k in pins)


# ---------------------------------------------------------------- a real install (empty lock)


def test_real_install_with_empty_lock(tmp_path, monkeypatch):
    """Runs every step for real, offline: an empty lock from an empty wheelhouse, so the only
    packages are the stdlib — enough for `mend --help` through the launcher."""
    lock = tmp_path / "empty.txt"
    lock.write_text("# nothing\n")
    (tmp_path / "wh").mkdir()
    prefix = tmp_path / "p"
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "xdg"))
    r = subprocess.run([sys.executable, str(INSTALLER / "bootstrap.py"), "--prefix", str(prefix),
                        "--lock-file", str(lock), "--wheelhouse", str(tmp_path / "wh"),
                        "--no-verify", "--quiet", "--json"],
                       capture_output=True, text=True, timeout=240, env=env, check=False)
    assert r.returncode == 0, r.stderr + r.stdout
    receipt = json.loads((prefix / "mend-install.json").read_text())
    assert receipt["lock"] == "custom" and receipt["env"] == str(prefix / "env")
    assert (prefix / "app" / "engine" / "cli.py").is_file()
    assert not list((prefix / "app").rglob("__pycache__"))
    ver = sys.version_info
    pth = prefix / "env" / "lib" / f"python{ver[0]}.{ver[1]}" / "site-packages" / "mend-app.pth"
    assert pth.read_text().strip() == str(prefix / "app")
    if platform.system() != "Windows":
        out = subprocess.run([str(prefix / "bin" / "mend"), "--help"], capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0 and "usage: mend" in out.stdout
        desktop = tmp_path / "xdg" / "applications" / "mend.desktop"
        if (ROOT / "main.py").is_file() and platform.system() == "Linux":
            assert f"Exec={prefix / 'bin' / 'mend-gui'}" in desktop.read_text()
    # a second run reuses the environment instead of making a new one
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    plan = bootstrap.make_plan(bootstrap.build_parser().parse_args(
        ["--prefix", str(prefix), "--lock-file", str(lock), "--dry-run"]))
    assert plan.steps[0].action == "reuse"


def test_app_dir_not_made_by_installer_is_left_alone(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "precious.txt").write_text("x")
    with pytest.raises(bootstrap.BootstrapError, match="not made by this installer"):
        bootstrap._copy_app(ROOT, tmp_path / "app")
    assert (tmp_path / "app" / "precious.txt").read_text() == "x"


# ---------------------------------------------------------------- frozen app: env lookup


def _fake_venv(d: Path, version: tuple[int, int]) -> Path:
    d.mkdir(parents=True)
    (d / "pyvenv.cfg").write_text(f"home = /usr/bin\nversion = {version[0]}.{version[1]}.3\n")
    sp = bootstrap.site_packages(d, version)
    sp.mkdir(parents=True)
    return sp


def test_frozen_app_finds_the_private_environment(tmp_path, monkeypatch):
    sp = _fake_venv(tmp_path / "env", sys.version_info[:2])
    assert bootstrap.find_env_site_packages(tmp_path / "env") == (sp, "ok")
    monkeypatch.setenv("MEND_ENV", str(tmp_path / "env"))
    assert bootstrap.find_env_site_packages()[0] == sp
    monkeypatch.delenv("MEND_ENV")
    monkeypatch.setenv("MEND_PREFIX", str(tmp_path))  # default: <prefix>/env
    assert bootstrap.find_env_site_packages()[0] == sp
    _fake_venv(tmp_path / "old", (3, 9))
    found, why = bootstrap.find_env_site_packages(tmp_path / "old")
    assert found is None and "Python 3.9" in why
    assert bootstrap.find_env_site_packages(tmp_path / "nothing")[0] is None


def test_user_data_dir_per_os(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert bootstrap.user_data_dir("Windows") == tmp_path / "local" / "Mend"
    assert bootstrap.user_data_dir("Linux") == tmp_path / "xdg" / "Mend"
    assert bootstrap.user_data_dir("Darwin").parts[-3:] == ("Library", "Application Support",
                                                            "Mend")


# ---------------------------------------------------------------- prefetch


def test_prefetch_resumes_a_profile_across_passes(tmp_path):
    import dataclasses
    import hashlib

    from engine.models.manifest import Manifest, default_manifest
    from tests.model_helpers import LoopbackServer, served_store

    prefetch = _load("prefetch")
    ids = ["realesr-general-x4v3", "yunet-2023mar"]
    base = default_manifest()
    small = Manifest([dataclasses.replace(base.get(i), profiles=("laptop",)) for i in ids])
    server = LoopbackServer()
    try:
        blobs = {i: hashlib.sha256(i.encode()).digest() * 4000 for i in ids}  # 128 kB each
        store = None
        for i in ids:
            store = served_store(tmp_path / "models", server, i, {f"{i}.bin": blobs[i]},
                                 retries=0, base=store.manifest if store else small)
        server.drop_after[f"/{ids[1]}/{ids[1]}.bin"] = 50_000  # the 2nd model breaks once
        events, pauses, logs = [], [], []
        result = prefetch.prefetch("laptop", store, retries=2, backoff=0.5,
                                   progress=events.append, sleep=pauses.append, log=logs.append)
    finally:
        server.close()
    assert result["complete"] and result["attempts"] == 2 and pauses == [0.5]
    assert result["models"] == {i: "verified" for i in ids}
    for i in ids:
        assert store.file_path(i, f"{i}.bin").read_bytes() == blobs[i]
    # the second pass asked only for the rest of the broken file
    ranges = [rng for path, rng in server.requests if path.endswith(f"{ids[1]}.bin")]
    assert ranges[0] is None and ranges[-1].startswith("bytes=") and ranges[-1] != "bytes=0-"
    assert events[-1].done == events[-1].total > 0  # the last pass finished its bytes
    assert "attempt 1 failed" in logs[0]


def test_prefetch_gives_up_and_says_so(tmp_path):
    import dataclasses

    from engine.models.manifest import Manifest, default_manifest
    from tests.model_helpers import LoopbackServer, served_store

    prefetch = _load("prefetch")
    mid = "realesr-general-x4v3"
    small = Manifest([dataclasses.replace(default_manifest().get(mid), profiles=("laptop",))])
    server = LoopbackServer()
    try:
        store = served_store(tmp_path / "m", server, mid, {"w.bin": b"x" * 100_000}, retries=0,
                             base=small)
        server.drop_after[f"/{mid}/w.bin"] = 0
        server.files[f"/{mid}/w.bin"] = b"y" * 100_000  # now the hash can never match
        result = prefetch.prefetch("laptop", store, retries=1, backoff=0, sleep=lambda s: None)
    finally:
        server.close()
    assert not result["complete"] and result["attempts"] == 2 and result["error"]


def test_prefetch_dry_run_lists_the_real_profile(tmp_path, capsys):
    prefetch = _load("prefetch")
    assert prefetch.main(["--profile", "laptop", "--dry-run", "--json",
                          "--models-dir", str(tmp_path / "m")]) == 0
    out = json.loads(capsys.readouterr().out)
    ids = {m["id"] for m in out["models"]}
    from engine.restore.profiles import profile_models

    assert ids == set(profile_models("laptop"))
    assert out["to_download"] > 0
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())
