"""Installer: hardware detection, lock choice, dry-run plans, lock files, a real (empty-lock)
install, the frozen app's environment lookup, and the profile prefetch."""
from __future__ import annotations

import argparse
import importlib.util
import json
import ntpath
import os
import platform
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import types
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


def test_target_os_chooses_a_lock_for_that_os(monkeypatch, tmp_path):
    # this machine: Linux with a recent NVIDIA GPU, which alone would pick linux-cuda
    _simulate(monkeypatch, "Linux", "x86_64", nvidia=_gpu("580.95.05"))
    hw = bootstrap.detect_hardware()
    wh = str(tmp_path / "wh")

    def plan(*extra):
        return bootstrap.make_plan(_args(tmp_path, "--download-wheels", wh, *extra), hw)

    p = plan("--target-os", "windows")
    assert p.lock == "cpu" and "--target-os windows" in p.reasons[0]
    assert p.steps[0].argv[p.steps[0].argv.index("--platform") + 1] == "win_amd64"
    assert p.steps[0].argv[p.steps[0].argv.index("-r") + 1].endswith("cpu.txt")
    assert any("colorama==0.4.6" in (s.argv or []) for s in p.steps[1:])
    p = plan("--target-os", "macos")
    assert p.lock == "macos-arm64" and "macosx_11_0_arm64" in p.steps[0].argv
    p = plan("--target-os", "linux")  # this machine's choice fits
    assert p.lock == "linux-cuda" and "manylinux_2_28_x86_64" in p.steps[0].argv
    assert plan("--lock", "windows-cuda", "--target-os", "windows").lock == "windows-cuda"
    with pytest.raises(bootstrap.BootstrapError, match="not for Windows.*--lock windows-cuda"):
        plan("--lock", "linux-cuda", "--target-os", "windows")
    with pytest.raises(bootstrap.BootstrapError, match="not for macOS"):
        plan("--lock", "cpu", "--target-os", "macos")
    with pytest.raises(bootstrap.BootstrapError, match="only goes with --download-wheels"):
        bootstrap.make_plan(_args(tmp_path, "--target-os", "windows"), hw)
    # an Intel Mac (no lock of its own) can still prepare a Windows machine
    _simulate(monkeypatch, "Darwin", "x86_64")
    assert bootstrap.make_plan(_args(tmp_path, "--download-wheels", wh, "--target-os", "windows"),
                               bootstrap.detect_hardware()).lock == "cpu"


def _driver_files_gpu(tmp_path, model: str):
    """What the Linux driver-file fallback (no nvidia-smi) finds for a GPU named ``model``."""
    proc = tmp_path / "root" / "proc" / "driver" / "nvidia"
    (proc / "gpus" / "0000:01:00.0").mkdir(parents=True, exist_ok=True)
    (proc / "version").write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  "
                                  "580.95.05  Release Build\n")
    (proc / "gpus" / "0000:01:00.0" / "information").write_text(f"Model: \t\t {model}\n")
    found = bootstrap._nvidia_from_driver_files(tmp_path / "root")
    assert found[0][0].compute_capability is None  # the driver files do not say
    return found


@pytest.mark.parametrize("model", [
    "NVIDIA GeForce GTX 1080 Ti", "NVIDIA GeForce GTX 1050", "NVIDIA GeForce GTX 980M",
    "NVIDIA GeForce GT 1030", "NVIDIA TITAN Xp", "NVIDIA TITAN X (Pascal)", "NVIDIA TITAN V",
    "Tesla V100-SXM2-16GB", "Tesla P100-PCIE-16GB", "Tesla K80", "Quadro P2000",
    "Quadro M4000", "Quadro GV100", "NVIDIA GeForce MX150", "NVIDIA GeForce 940MX"])
def test_pre_turing_gpu_by_name_without_nvidia_smi(monkeypatch, tmp_path, model):
    _simulate(monkeypatch, "Linux", "x86_64", nvidia=_driver_files_gpu(tmp_path, model))
    plan = bootstrap.make_plan(_args(tmp_path), bootstrap.detect_hardware())
    assert plan.lock == "cpu", model
    assert model in plan.reasons[0] and "older than the Turing" in plan.reasons[0]
    assert "judged by its name" in plan.reasons[0]


@pytest.mark.parametrize("model", [
    "NVIDIA GeForce RTX 3060", "NVIDIA GeForce GTX 1660 Ti", "NVIDIA GeForce GTX 1650",
    "NVIDIA TITAN RTX", "Tesla T4", "Quadro RTX 4000", "Quadro T1000", "NVIDIA GeForce MX450",
    "NVIDIA RTX A2000 Laptop GPU", "NVIDIA A100-SXM4-40GB", "NVIDIA GPU"])
def test_unknown_capability_is_said_in_the_warnings(monkeypatch, tmp_path, model):
    _simulate(monkeypatch, "Linux", "x86_64", nvidia=_driver_files_gpu(tmp_path, model))
    plan = bootstrap.make_plan(_args(tmp_path), bootstrap.detect_hardware())
    assert plan.lock == "linux-cuda", model
    assert any("compute capability" in w and "not known" in w and model in w
               and "--lock cpu" in w for w in plan.warnings), plan.warnings
    # nvidia-smi's compute capability decides where it is given: no warning then
    gpu = bootstrap.Gpu(model, "580.95.05", 8192, "8.6")
    _simulate(monkeypatch, "Linux", "x86_64", nvidia=([gpu], "nvidia-smi"))
    plan = bootstrap.make_plan(_args(tmp_path), bootstrap.detect_hardware())
    assert plan.lock == "linux-cuda" and not any("compute capability" in w for w in plan.warnings)


def test_a_different_lock_rebuilds_the_environment(monkeypatch, tmp_path):
    """pip keeps torch 2.14.1+cpu for torch==2.14.1: going from the cpu lock to linux-cuda
    must not reuse the environment."""
    prefix = tmp_path / "p"
    _fake_venv(prefix / "env", sys.version_info[:2])
    (prefix / "mend-install.json").write_text(json.dumps(
        {"app": "Mend", "lock": "cpu", "lock_file": str(INSTALLER / "locks" / "cpu.txt")}))
    _simulate(monkeypatch, "Linux", "x86_64", nvidia=_gpu("580.95.05"))
    hw = bootstrap.detect_hardware()
    plan = bootstrap.make_plan(_args(tmp_path, "--dry-run"), hw)
    assert plan.lock == "linux-cuda"
    actions = [s.action for s in plan.steps]
    assert actions[:2] == ["delete_env", "run"] and "reuse" not in actions
    assert "cpu lock" in plan.steps[0].title
    assert plan.steps[1].argv[1:] == ["-m", "venv", str(prefix / "env")]
    assert any("installed with the cpu lock" in w and "rebuilt for linux-cuda" in w
               for w in plan.warnings), plan.warnings
    # the same lock again: reused
    plan = bootstrap.make_plan(_args(tmp_path, "--dry-run", "--lock", "cpu"), hw)
    assert plan.steps[0].action == "reuse" and not plan.warnings[1:]
    # the dry run says so, and changes nothing
    r = subprocess.run([sys.executable, str(INSTALLER / "bootstrap.py"), "--dry-run", "--prefix",
                        str(prefix), "--lock", "macos-arm64", "--no-desktop-entry"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "delete the old environment" in r.stdout and "installed with the cpu lock" in r.stdout
    assert (prefix / "env" / "pyvenv.cfg").is_file()


def test_missing_import_pack_is_refused_before_anything(monkeypatch, tmp_path):
    _simulate(monkeypatch, "Linux", "x86_64")
    with pytest.raises(bootstrap.BootstrapError, match="model pack not found"):
        bootstrap.make_plan(_args(tmp_path, "--import-pack", str(tmp_path / "nope.zip")),
                            bootstrap.detect_hardware())
    (tmp_path / "laptop.zip").write_bytes(b"PK")
    plan = bootstrap.make_plan(_args(tmp_path, "--import-pack", str(tmp_path / "laptop.zip")),
                               bootstrap.detect_hardware())
    assert any(s.argv and s.argv[-1] == str(tmp_path / "laptop.zip") for s in plan.steps)
    assert bootstrap.main(["--prefix", str(tmp_path / "q"), "--import-pack",
                           str(tmp_path / "nope.zip")]) == 2
    assert not (tmp_path / "q").exists()


# ---------------------------------------------------------------- launchers


def test_windows_launchers_have_distinct_names(monkeypatch, tmp_path):
    """Windows file names ignore case: mend.cmd and Mend.cmd would be one file."""
    monkeypatch.setenv("APPDATA", str(tmp_path / "roaming"))
    paths = bootstrap._launcher_paths(tmp_path / "p", "Windows", with_gui=True)
    assert len({ntpath.normcase(str(p)) for p in paths}) == len(paths) == 3
    _simulate(monkeypatch, "Windows", "AMD64")
    plan = bootstrap.make_plan(_args(tmp_path, "--no-desktop-entry"), bootstrap.detect_hardware())
    assert [Path(p).name for p in plan.launchers] == ["mend.cmd", "mend-gui.cmd"]
    (tmp_path / "p").mkdir()
    bootstrap._write_launchers(plan)
    cli, gui = (Path(p).read_text() for p in plan.launchers)
    assert "-m engine.cli %*" in cli and "pythonw.exe" not in cli
    assert "pythonw.exe" in gui and "main.py" in gui


def _desktop_string(value: str) -> str:
    r"""A desktop entry string value without its escapes (\s \n \t \r \\)."""
    return re.sub(r"\\(.)", lambda m: {"s": " ", "n": "\n", "t": "\t", "r": "\r"}.get(
        m.group(1), m.group(1)), value)


def _desktop_exec_argv(value: str) -> list[str]:
    """An Exec value read back the way the Desktop Entry Specification says: the string escapes,
    then the quoting (in double quotes a backslash escapes ", `, $ and itself), then %%."""
    s = _desktop_string(value)
    argv, cur, quoted, i = [], "", False, 0
    while i < len(s):
        c = s[i]
        if quoted and c == "\\" and s[i + 1] in '"`$\\':
            cur, i = cur + s[i + 1], i + 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == " " and not quoted:
            argv.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    return [a.replace("%%", "%") if a != "%F" else a for a in [*argv, cur]]


def test_desktop_entry_quotes_the_exec_path(monkeypatch, tmp_path):
    prefix = tmp_path / 'My Photos "best" $HOME `id` back\\slash 100% é'
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    _simulate(monkeypatch, "Linux", "x86_64")
    plan = bootstrap.make_plan(bootstrap.build_parser().parse_args(["--prefix", str(prefix)]),
                               bootstrap.detect_hardware())
    plan.launchers = [p for p in plan.launchers if p.endswith(".desktop")]
    bootstrap._write_launchers(plan)
    entry = dict(line.split("=", 1) for line in
                 Path(plan.launchers[0]).read_text(encoding="utf-8").splitlines()[1:])
    assert entry["Exec"].startswith('"')
    prefix = Path(plan.prefix)
    assert _desktop_exec_argv(entry["Exec"]) == [str(prefix / "bin" / "mend-gui"), "%F"]
    assert _desktop_string(entry["Icon"]) == str(prefix / "app" / "resources" / "icons"
                                                 / "mend-app.png")
    assert bootstrap.desktop_exec_arg("/opt/Mend 1/bin/mend-gui") == '"/opt/Mend 1/bin/mend-gui"'
    # the spec's own examples: a literal $ is \\$ and a literal backslash \\\\ in the file
    assert bootstrap.desktop_exec_arg('a"b$c`d\\e') == r'"a\\"b\\$c\\`d\\\\e"'


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
    assert (prefix / "app" / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()
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
            assert f'Exec="{prefix / "bin" / "mend-gui"}" %F' in desktop.read_text()
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


def test_os_errors_are_one_line_not_a_traceback(monkeypatch, tmp_path, capsys):
    """XDG_DATA_HOME pointing at a file: the menu entry cannot be written."""
    (tmp_path / "xdgfile").write_text("not a folder")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdgfile"))
    _simulate(monkeypatch, "Linux", "x86_64")
    real = bootstrap.make_plan

    def launchers_only(args, hw=None):  # the other steps need a real environment
        plan = real(args, hw)
        plan.steps = [s for s in plan.steps if s.action == "launchers"]
        return plan

    monkeypatch.setattr(bootstrap, "make_plan", launchers_only)
    assert bootstrap.main(["--prefix", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bootstrap.py: ") and "xdgfile" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- frozen app: mend.spec


def _exec_spec(monkeypatch, system: str, torch_mode: str = "bundle") -> dict[str, list]:
    """Run installer/mend.spec as PyInstaller would on ``system``, with PyInstaller's building
    blocks recorded instead of run; returns {"EXE": [...], "BUNDLE": [...], ...} and, under
    "collect_submodules", the packages whose submodules it asked for. ``torch_mode``
    "external" (the lean bundle) walks over the standard library (~1 s)."""
    made: dict[str, list] = {}

    def block(kind):
        def make(*args, **kwargs):
            obj = types.SimpleNamespace(args=args, kwargs=kwargs, pure=[], binaries=[],
                                        datas=kwargs.get("datas", []), scripts=[
                                            (Path(s).stem, s, "PYSOURCE")
                                            for s in (args[0] if kind == "Analysis" else [])])
            made.setdefault(kind, []).append(obj)
            return obj
        return make

    hooks = types.ModuleType("PyInstaller.utils.hooks")
    hooks.collect_data_files = lambda *a, **k: made.setdefault("collect_data_files", []).append(
        (a, k)) or []
    hooks.collect_submodules = lambda *a, **k: made.setdefault(
        "collect_submodules", []).append(a[0]) or []
    for name in ("PyInstaller", "PyInstaller.utils"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "PyInstaller.utils.hooks", hooks)
    monkeypatch.setenv("MEND_DIST_TORCH", torch_mode)  # (bundle skips the walk over the stdlib)
    monkeypatch.setattr(platform, "system", lambda: system)
    runpy.run_path(str(INSTALLER / "mend.spec"), run_name="__main__", init_globals={
        "SPECPATH": str(INSTALLER),
        **{k: block(k) for k in ("Analysis", "PYZ", "EXE", "COLLECT", "BUNDLE")}})
    return made


def test_spec_mac_bundle_starts_the_desktop_app(monkeypatch):
    made = _exec_spec(monkeypatch, "Darwin")
    exes = {e.kwargs["name"]: [s[0] for s in e.args[1]] for e in made["EXE"]}
    assert exes == {"mend": ["mend_cli"], "mend-gui": ["main"]}
    (bundle,) = made["BUNDLE"]
    # PyInstaller takes the first executable collected (the CLI) unless info_plist says
    first = made["EXE"][0].kwargs["name"]
    assert bundle.kwargs["info_plist"].get("CFBundleExecutable", first) == "mend-gui"
    assert (str(ROOT / "LICENSE"), ".") in made["Analysis"][0].kwargs["datas"]
    assert "BUNDLE" not in _exec_spec(monkeypatch, "Linux")


def test_spec_ships_the_haar_cascades_the_face_step_loads(monkeypatch):
    """PyInstaller's cv2 hook collects only OpenCV's loader config: without YuNet the frozen
    app's face step would find no Haar cascade (face, and the eye check) to load."""
    import cv2

    from engine.restore.face import HAAR_EYE_FILE, HAAR_FILE

    made = _exec_spec(monkeypatch, "Linux")
    cv2_files = [f for a, k in made["collect_data_files"] if a and a[0] == "cv2"
                 for f in k.get("includes", [])]
    for name in (HAAR_FILE, HAAR_EYE_FILE):
        assert f"data/{name}" in cv2_files, name
        assert (Path(cv2.data.haarcascades) / name).is_file()  # and cv2 has it there


def test_spec_bundles_whole_the_packages_it_shares_with_the_torch_stack(monkeypatch):
    """The lean bundle's own copy of a package wins over the private environment's, with only
    the submodules Mend reaches: transformers' ``from tqdm.auto import tqdm`` failed in the
    frozen app (its tqdm had no ``auto``), so SigLIP could not load. Packages both sides use
    are collected whole; the PyTorch stack itself stays out. The full bundle collects the
    tokenizer packages transformers imports only by name (sentencepiece for SigLIP)."""
    made = _exec_spec(monkeypatch, "Linux", "external")
    (analysis,) = made["Analysis"]
    whole = set(made["collect_submodules"])
    for name in ("tqdm", "packaging", "PIL", "numpy", "yaml", "requests"):
        assert name in whole, name
    excluded = set(analysis.kwargs["excludes"])
    assert {"torch", "transformers", "tokenizers", "huggingface_hub"} <= excluded
    assert not whole & excluded and "sentencepiece" not in whole
    made = _exec_spec(monkeypatch, "Linux", "bundle")
    whole = set(made["collect_submodules"])
    for name in ("sentencepiece", "tokenizers"):
        if importlib.util.find_spec(name) is not None:
            assert name in whole, name
    assert "tqdm" not in whole  # (nothing comes from outside this bundle)


# ---------------------------------------------------------------- licence, help text


def test_license_is_the_agpl_and_ships():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.split("\n")[:2] == ["                    GNU AFFERO GENERAL PUBLIC LICENSE",
                                    "                       Version 3, 19 November 2007"]
    assert len(text.splitlines()) == 661 and "END OF TERMS AND CONDITIONS" in text
    assert "13. Remote Network Interaction; Use with the GNU General Public License." in text
    assert "LICENSE" in bootstrap.APP_ITEMS


def test_main_help_names_real_mend_commands():
    spec = importlib.util.spec_from_file_location("mend_main_script", ROOT / "main.py")
    main_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main_py)
    from engine.cli import build_parser

    cli = build_parser()
    commands = next(a for a in cli._actions if isinstance(a, argparse._SubParsersAction)).choices
    text = main_py.__doc__ + " " + main_py._parser().epilog
    examples = re.findall(r"``(mend [^`]+)``", text) + re.findall(r"\bmend [^,()`]+", text)
    examples = [shlex.split(e)[1:] for e in examples]
    examples = [e for e in examples if e and not e[0].startswith("-")]
    assert {e[0] for e in examples} >= {"classify", "restore"}
    for argv in examples:
        assert argv[0] in commands, argv
        cli.parse_args(argv)  # exits (SystemExit) on an unknown option or a missing argument


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


def _builtin_only_store(tmp_path, *more: str):
    """A store whose laptop profile is a built-in model whose package is not installed (as
    pp-ocr is under a Python without rapidocr), and the models ``more``."""
    import dataclasses

    from engine.models.manifest import Manifest, default_manifest
    from engine.models.store import ModelStore

    base = default_manifest()
    spec = base.get("pp-ocr")
    spec = dataclasses.replace(spec, profiles=("laptop",),
                               extra={**spec.extra, "package": "mend_no_such_package"})
    return ModelStore(tmp_path / "m", Manifest(
        [spec] + [dataclasses.replace(base.get(m), profiles=("laptop",)) for m in more]))


def test_prefetch_does_not_wait_for_built_in_models(tmp_path, monkeypatch, capsys):
    prefetch = _load("prefetch")
    store = _builtin_only_store(tmp_path)
    assert store.status("pp-ocr") == "missing"
    logs: list[str] = []
    result = prefetch.prefetch("laptop", store, retries=0, log=logs.append)
    assert result["complete"] and result["not_ready"] == [] and result["error"] is None
    assert any("pp-ocr" in line for line in logs)
    monkeypatch.setattr(prefetch, "ModelStore", lambda models_dir: store)
    assert prefetch.main(["--profile", "laptop", "--retries", "0"]) == 0
    assert "ready" in capsys.readouterr().err


def test_prefetch_names_the_models_not_ready(tmp_path, monkeypatch, capsys):
    from engine.models import packs

    prefetch = _load("prefetch")
    store = _builtin_only_store(tmp_path, "yunet-2023mar")
    monkeypatch.setattr(prefetch, "ModelStore", lambda models_dir: store)
    monkeypatch.setattr(packs, "pull_profile",  # a pass that ends without an error, yet short
                        lambda profile, store, progress=None: {"pp-ocr": "missing",
                                                               "yunet-2023mar": "partial"})
    assert prefetch.main(["--profile", "laptop", "--retries", "0"]) == 1
    err = capsys.readouterr().err
    assert "not ready: yunet-2023mar (partial)" in err and "None" not in err
    assert "pp-ocr (missing)" not in err


def test_prefetch_under_a_python_without_mends_packages(monkeypatch, capsys):
    prefetch = _load("prefetch")

    def no_platformdirs(models_dir):
        raise ModuleNotFoundError("No module named 'platformdirs'")

    monkeypatch.setattr(prefetch, "ModelStore", no_platformdirs)
    assert prefetch.main(["--profile", "laptop", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "platformdirs" in err and "Mend's Python" in err and "Traceback" not in err


@pytest.mark.skipif(not shutil.which("sh") or not shutil.which("sed"), reason="needs sh and sed")
def test_frozen_bundle_menu_entry_script_quotes_its_folder(tmp_path):
    """The frozen bundle's install-menu-entry.sh writes the same quoting as the installer, for
    whatever folder the bundle was unpacked to (it used to write Exec="$here/mend-gui" as is)."""
    build_dist = _load("build_dist")
    bundle = tmp_path / 'Mend "best" $HOME `id` back\\slash 100% é'
    bundle.mkdir()
    build_dist.write_desktop_entry(bundle)
    xdg = tmp_path / "xdg"
    subprocess.run(["sh", str(bundle / "install-menu-entry.sh")], check=True,
                   capture_output=True, env={**os.environ, "XDG_DATA_HOME": str(xdg)})
    entry = dict(line.split("=", 1) for line in
                 (xdg / "applications" / "mend.desktop").read_text(encoding="utf-8")
                 .splitlines()[1:])
    assert _desktop_exec_argv(entry["Exec"]) == [str(bundle / "mend-gui"), "%F"]
    assert _desktop_string(entry["Icon"]) == str(bundle / "_internal" / "resources" / "icons"
                                                 / "mend-app.png")
