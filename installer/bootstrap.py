"""Install Mend into a private environment with the PyTorch build that fits this machine.

    python bootstrap.py --dry-run            # say what would happen, change nothing
    python bootstrap.py                      # install (needs the network, or --wheelhouse)
    python bootstrap.py --download-wheels D  # fetch every wheel into D for an offline install

Standard library only; runs with any Python >= 3.11 (the interpreter it runs with becomes the
environment's Python). It detects the hardware (an NVIDIA driver via nvidia-smi or the Linux driver
files, Apple Silicon, otherwise CPU), picks the lock file in installer/locks/, creates a virtual
environment under the prefix (default: the user data folder), installs the locked packages, copies
Mend's code next to it and writes launchers. Exit codes: 0 done, 1 a step failed, 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

APP_NAME = "Mend"
HERE = Path(__file__).resolve().parent
LOCK_DIR = HERE / "locks"
LOCKS = ("linux-cuda", "windows-cuda", "macos-arm64", "cpu")
TESTED_PYTHON = (3, 11)
# The operating systems (--target-os) each lock is for.
LOCK_OS = {"linux-cuda": ("linux",), "windows-cuda": ("windows",), "macos-arm64": ("macos",),
           "cpu": ("linux", "windows")}
OS_NAMES = {"linux": "Linux", "windows": "Windows", "macos": "macOS"}
# CUDA 13.0 (the build every CUDA lock uses) needs at least these NVIDIA drivers.
MIN_CUDA_DRIVER = {"Linux": (580, 65), "Windows": (580, 88)}
# ... and a Turing (GTX 16xx / RTX 20xx) or newer GPU: CUDA 13 dropped Maxwell, Pascal, Volta.
MIN_COMPUTE_CAPABILITY = (7, 5)
# Older than Turing by the model name alone, for when nothing reports the compute capability
# (no nvidia-smi: the Linux driver files only give the name). Conservative: names that only
# pre-Turing GPUs carry; anything else is assumed new enough, with a warning.
PRE_TURING_NAME = re.compile(
    r"\bGTX\s*(?:TITAN\b|[4-9]\d\d(?!\d)|10[5-8]0(?!\d))"  # GTX 4xx-9xx, GTX 1050-1080 (Ti)
    r"|\bGT\s*(?:[1-9]\d\d|10[1-3]0)(?!\d)"  # GT 7xx, GT 1030
    r"|\bTITAN\s+(?:X|XP|V|BLACK|Z)\b"  # not TITAN RTX (Turing)
    r"|\bMX\s*[1-3]\d\d\b"  # MX110-MX350 (MX450 and up are Turing or newer)
    r"|\bGEFORCE\s+[6-9]\d0MX?\b"  # GeForce 940MX, 840M, ...
    r"|\b(?:TESLA|QUADRO)\s+(?:[KMPV]\d|G[PV]\d)"  # Tesla K80/P100/V100, Quadro P2000/GV100
    r"|\bGRID\s+[KM]\d|\bNVS\s*\d", re.IGNORECASE)
# What is copied from the source tree into <prefix>/app.
APP_ITEMS = ("engine", "ui", "resources", "main.py", "pyproject.toml", "README.md", "LICENSE",
             "ARCHITECTURE.md")
RECEIPT = "mend-install.json"
APP_MARKER = ".mend-app"


class BootstrapError(Exception):
    """A problem the user can act on; printed as one line."""


# ---------------------------------------------------------------- hardware detection


@dataclass
class Gpu:
    name: str
    driver: str
    memory_mb: int | None = None
    compute_capability: str | None = None  # "8.9"; None where the driver does not say


@dataclass
class Hardware:
    kind: str  # "nvidia" | "apple" | "cpu"
    system: str  # platform.system(): Linux, Windows, Darwin
    machine: str  # normalised: x86_64, arm64, aarch64
    gpus: list[Gpu] = field(default_factory=list)
    driver: str | None = None
    detected_by: str = ""
    notes: list[str] = field(default_factory=list)


def _machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "arm64", "aarch64": "aarch64"}.get(m, m)


def _nvidia_smi_candidates() -> list[str]:
    found = shutil.which("nvidia-smi")
    out = [found] if found else []
    if platform.system() == "Windows":
        for base in (os.environ.get("SystemRoot", r"C:\Windows") + r"\System32",
                     os.environ.get("ProgramFiles", r"C:\Program Files")
                     + r"\NVIDIA Corporation\NVSMI"):
            out.append(os.path.join(base, "nvidia-smi.exe"))
    else:
        out.append("/usr/lib/wsl/lib/nvidia-smi")  # WSL 2
    return [p for p in dict.fromkeys(out) if p and os.path.isfile(p)]


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Lines of ``nvidia-smi --query-gpu=name,driver_version,memory.total[,compute_cap]
    --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not parts[0] or not re.match(r"^\d+(\.\d+)+$", parts[1]):
            continue
        mem = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
        cc = parts[3] if len(parts) > 3 and re.fullmatch(r"\d+\.\d+", parts[3]) else None
        gpus.append(Gpu(parts[0], parts[1], mem, cc))
    return gpus


def _nvidia_from_smi() -> tuple[list[Gpu], str] | None:
    for exe in _nvidia_smi_candidates():
        # compute_cap is known to drivers from 2021 on; older ones reject the whole query
        for fields in ("name,driver_version,memory.total,compute_cap",
                       "name,driver_version,memory.total"):
            try:
                r = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                                   capture_output=True, text=True, timeout=15, check=False)
            except (OSError, subprocess.SubprocessError):
                break
            gpus = parse_nvidia_smi(r.stdout) if r.returncode == 0 else []
            if gpus:
                return gpus, exe
    return None


def parse_proc_driver_version(text: str) -> str | None:
    """The driver version from /proc/driver/nvidia/version or /sys/module/nvidia/version."""
    m = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*(\d+\.\d+(?:\.\d+)?)\s*", text)
    return m.group(1) if m else None


def _nvidia_from_driver_files(root: Path = Path("/")) -> tuple[list[Gpu], str] | None:
    """Linux only: the kernel driver is loaded even where nvidia-smi is not installed."""
    for rel in ("proc/driver/nvidia/version", "sys/module/nvidia/version"):
        f = root / rel
        try:
            version = parse_proc_driver_version(f.read_text(errors="replace"))
        except OSError:
            continue
        if not version:
            continue
        gpus = []
        for info in sorted((root / "proc/driver/nvidia/gpus").glob("*/information")):
            try:
                m = re.search(r"^Model:\s*(.+)$", info.read_text(errors="replace"), re.MULTILINE)
            except OSError:
                continue
            gpus.append(Gpu(m.group(1).strip() if m else "NVIDIA GPU", version))
        return gpus or [Gpu("NVIDIA GPU", version)], "/" + rel
    return None


def detect_nvidia() -> tuple[list[Gpu], str] | None:
    """(GPUs, how they were found) when an NVIDIA driver is present, else None."""
    found = _nvidia_from_smi()
    if found is None and platform.system() == "Linux":
        found = _nvidia_from_driver_files()
    return found


def detect_apple_silicon() -> dict | None:
    """{"translated": bool} on an Apple Silicon Mac (also under Rosetta), else None."""
    if platform.system() != "Darwin":
        return None
    if platform.machine().lower() == "arm64":
        return {"translated": False}
    try:
        r = subprocess.run(["sysctl", "-n", "sysctl.proc_translated"], capture_output=True,
                           text=True, timeout=5, check=False)
        if r.stdout.strip() == "1":
            return {"translated": True}
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def detect_hardware() -> Hardware:
    system, machine = platform.system(), _machine()
    apple = detect_apple_silicon()
    if apple is not None:
        hw = Hardware("apple", system, "arm64", detected_by="platform")
        if apple["translated"]:
            hw.notes.append("this Python runs under Rosetta (x86_64): use an arm64 Python so "
                            "PyTorch can use the Apple GPU")
        return hw
    nv = detect_nvidia()
    if nv is not None:
        gpus, how = nv
        return Hardware("nvidia", system, machine, gpus, gpus[0].driver, how)
    return Hardware("cpu", system, machine, detected_by="no NVIDIA driver, not an Apple Silicon Mac")


# ---------------------------------------------------------------- choosing the lock


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def is_pre_turing(gpu: Gpu) -> bool:
    """Older than CUDA 13.0 supports: by the compute capability, or by the model name where
    the capability is not known."""
    if gpu.compute_capability:
        return _version_tuple(gpu.compute_capability) < MIN_COMPUTE_CAPABILITY
    return bool(PRE_TURING_NAME.search(gpu.name))


def choose_lock(hw: Hardware) -> tuple[str, list[str]]:
    """(lock name, reasons). Raises BootstrapError where no PyTorch build fits."""
    if hw.kind == "apple":
        if hw.notes:
            raise BootstrapError(hw.notes[0])
        return "macos-arm64", ["Apple Silicon: PyTorch with the Metal (MPS) backend"]
    if hw.system == "Darwin":
        raise BootstrapError("PyTorch no longer publishes builds for Intel Macs; Mend needs a Mac "
                             "with Apple Silicon (M1 or newer)")
    if hw.system not in ("Linux", "Windows"):
        raise BootstrapError(f"unsupported operating system: {hw.system}")
    if hw.kind == "nvidia":
        names = ", ".join(g.name for g in hw.gpus)
        if hw.machine != "x86_64":
            return "cpu", [(f"NVIDIA GPU found ({names}) but there is no CUDA lock for "
                            f"{hw.system} {hw.machine}: using the CPU build")]
        need = MIN_CUDA_DRIVER[hw.system]
        if hw.driver and _version_tuple(hw.driver)[:2] < need:
            return "cpu", [(f"NVIDIA driver {hw.driver} is older than CUDA 13.0 needs "
                            f"({need[0]}.{need[1]} or newer): using the CPU build. Update the "
                            "driver and run the installer again to use the GPU")]
        old = [g for g in hw.gpus if is_pre_turing(g)]
        if old and len(old) == len(hw.gpus):
            how = (f"compute capability {old[0].compute_capability}" if old[0].compute_capability
                   else "judged by its name; the compute capability is not known")
            return "cpu", [(f"{old[0].name} ({how}) is older than the Turing generation that "
                            "CUDA 13.0 builds of PyTorch support: using the CPU build")]
        lock = "linux-cuda" if hw.system == "Linux" else "windows-cuda"
        return lock, [f"NVIDIA GPU ({names}, driver {hw.driver}): PyTorch with CUDA 13.0"]
    return "cpu", [(f"no NVIDIA GPU found on {hw.system} {hw.machine} ({hw.detected_by}): "
                    "the CPU build of PyTorch")]


def choose_lock_for_target(hw: Hardware, target_os: str) -> tuple[str, list[str]]:
    """The lock for ``--download-wheels --target-os``: this machine's choice where it is a build
    for that OS, else the build that runs on any machine of that OS."""
    try:
        name, reasons = choose_lock(hw)
    except BootstrapError:  # an Intel Mac can still fetch wheels for a Windows machine
        name, reasons = "", []
    if target_os in LOCK_OS.get(name, ()):
        return name, reasons
    if target_os == "macos":
        return "macos-arm64", [("--target-os macos: PyTorch with the Metal (MPS) backend, for "
                                "a Mac with Apple Silicon")]
    return "cpu", [(f"--target-os {target_os}: the CPU build of PyTorch, which runs on any "
                    f"{OS_NAMES[target_os]} machine (for one with a recent NVIDIA GPU use "
                    f"--lock {target_os}-cuda)")]


def lock_file(name: str) -> Path:
    if name not in LOCKS:
        raise BootstrapError(f"unknown lock {name!r} (one of {', '.join(LOCKS)})")
    return LOCK_DIR / f"{name}.txt"


def read_lock(path: Path) -> tuple[dict[str, str], list[str]]:
    """({canonical name: version}, pip options such as --extra-index-url) of a lock file."""
    pins: dict[str, str] = {}
    options: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            options += shlex.split(line)
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)\s*(;.*)?", line)
        if not m:
            raise BootstrapError(f"{path.name}: not a pinned requirement: {raw!r}")
        pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins, options


# ---------------------------------------------------------------- locations


def user_data_dir(system: str | None = None) -> Path:
    """Mend's per-user data folder (the same place platformdirs.user_data_dir("Mend") gives)."""
    system = system or platform.system()
    home = Path.home()
    if system == "Windows":
        base = os.environ.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return Path(base) / APP_NAME
    if system == "Darwin":
        return home / "Library" / "Application Support" / APP_NAME
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / APP_NAME


def default_prefix() -> Path:
    env = os.environ.get("MEND_PREFIX")
    return Path(env).expanduser() if env else user_data_dir()


def env_python(env_dir: Path, system: str | None = None, gui: bool = False) -> Path:
    if (system or platform.system()) == "Windows":
        return env_dir / "Scripts" / ("pythonw.exe" if gui else "python.exe")
    return env_dir / "bin" / "python"


def site_packages(env_dir: Path, version: tuple[int, int], system: str | None = None) -> Path:
    if (system or platform.system()) == "Windows":
        return env_dir / "Lib" / "site-packages"
    return env_dir / "lib" / f"python{version[0]}.{version[1]}" / "site-packages"


def venv_python_version(env_dir: Path) -> tuple[int, int] | None:
    """The Python version a virtual environment was made with (from its pyvenv.cfg)."""
    try:
        text = (env_dir / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r"^\s*version(?:_info)?\s*=\s*(\d+)\.(\d+)", text, re.MULTILINE)
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_env_site_packages(env_dir: Path | None = None) -> tuple[Path | None, str]:
    """The private environment's site-packages for this Python, or (None, why not).

    Used by the frozen app to load PyTorch from the environment this script installed.
    """
    env_dir = Path(os.environ["MEND_ENV"]) if env_dir is None and os.environ.get("MEND_ENV") \
        else env_dir or default_prefix() / "env"
    version = venv_python_version(env_dir)
    if version is None:
        return None, f"no Mend environment at {env_dir}"
    if version != sys.version_info[:2]:
        return None, (f"the Mend environment at {env_dir} is for Python {version[0]}.{version[1]},"
                      f" this app runs Python {sys.version_info[0]}.{sys.version_info[1]}")
    sp = site_packages(env_dir, version)
    if not sp.is_dir():
        return None, f"{sp} does not exist"
    return sp, "ok"


# ---------------------------------------------------------------- the plan


@dataclass
class Step:
    title: str
    argv: list[str] | None = None  # a command to run, or None for a file operation
    action: str = "run"  # run | copy_app | write_pth | launchers | receipt
    optional: bool = False


@dataclass
class Plan:
    hardware: Hardware
    lock: str
    lock_file: str
    reasons: list[str]
    prefix: str
    env_dir: str
    app_dir: str
    python: str
    python_version: str
    steps: list[Step]
    launchers: list[str]
    warnings: list[str]
    mode: str  # install | download-wheels
    source: str = ""  # the Mend source tree copied into app_dir

    def to_json(self) -> dict:
        return asdict(self)


def read_receipt(prefix: Path) -> dict:
    """What the last install into ``prefix`` recorded (its mend-install.json), or {}."""
    try:
        data = json.loads((prefix / RECEIPT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _python_version(python: str) -> tuple[int, int]:
    if Path(python).resolve() == Path(sys.executable).resolve():
        return sys.version_info[:2]
    try:
        r = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=30, check=False)
        major, minor = r.stdout.split()
        return int(major), int(minor)
    except (OSError, ValueError, subprocess.SubprocessError):
        raise BootstrapError(f"cannot run the Python at {python}") from None


def _wheel_platforms(lock: str, target_os: str) -> list[str]:
    if lock == "macos-arm64":
        return ["macosx_11_0_arm64"]  # pip expands to every newer macOS it knows
    if target_os == "windows" or lock == "windows-cuda":
        return ["win_amd64"]
    arch = "aarch64" if _machine() == "aarch64" and lock == "cpu" else "x86_64"
    return [f"manylinux_2_{v}_{arch}" for v in (28, 27, 26, 24, 17)] + [
        f"manylinux2014_{arch}", f"linux_{arch}"]


def _launcher_paths(prefix: Path, system: str, with_gui: bool) -> list[Path]:
    if system == "Windows":
        out = [prefix / "mend.cmd"]
        if with_gui:
            # not "Mend.cmd": Windows file names ignore case, it would overwrite mend.cmd
            out += [prefix / "mend-gui.cmd", Path(os.environ.get("APPDATA", prefix)) / "Microsoft"
                    / "Windows" / "Start Menu" / "Programs" / "Mend.lnk"]
        return out
    out = [prefix / "bin" / "mend"]
    if with_gui:
        out.append(prefix / "bin" / "mend-gui")
        if system == "Darwin":
            out.append(prefix / "Mend.app")
        elif system == "Linux":
            xdg = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
            out.append(xdg / "applications" / "mend.desktop")
    return out


def make_plan(args: argparse.Namespace, hw: Hardware | None = None) -> Plan:
    hw = hw or detect_hardware()
    warnings: list[str] = []
    if args.target_os and not args.download_wheels:
        raise BootstrapError("--target-os only goes with --download-wheels (it names the OS of "
                             "the offline machine the wheels are for)")
    if args.lock:
        name = args.lock
        reasons = [f"lock chosen with --lock (the hardware says {hw.kind})"]
        if args.target_os and args.target_os not in LOCK_OS[name]:
            fits = " or ".join(f"--lock {n}" for n in LOCKS if args.target_os in LOCK_OS[n])
            raise BootstrapError(f"the {name} lock is not for {OS_NAMES[args.target_os]}; with "
                                 f"--target-os {args.target_os} use {fits}")
    elif args.lock_file:
        name = "custom"
        reasons = ["lock file given with --lock-file"]
    elif args.download_wheels and args.target_os:
        name, reasons = choose_lock_for_target(hw, args.target_os)
    else:
        name, reasons = choose_lock(hw)
    if not (args.lock or args.lock_file) and name in ("linux-cuda", "windows-cuda"):
        unsure = [g.name for g in hw.gpus if not g.compute_capability and not is_pre_turing(g)]
        if unsure:
            warnings.append(f"the compute capability of {', '.join(unsure)} is not known "
                            f"({hw.detected_by} does not give it): assuming a Turing or newer "
                            "GPU. If it is older (GTX 10xx/9xx, TITAN X/Xp/V, Tesla or Quadro "
                            "K/M/P/V), run again with --lock cpu")
    lock_path = Path(args.lock_file).resolve() if args.lock_file else lock_file(name)
    if not lock_path.is_file():
        raise BootstrapError(f"lock file not found: {lock_path}")
    read_lock(lock_path)  # fails early on a malformed file
    if args.import_pack and not Path(args.import_pack).is_file():
        raise BootstrapError(f"model pack not found: {Path(args.import_pack).resolve()}")
    python = args.python or sys.executable
    version = _python_version(python)
    if version < (3, 11):
        raise BootstrapError(f"Mend needs Python 3.11 or newer; {python} is "
                             f"{version[0]}.{version[1]}")
    if version != TESTED_PYTHON:
        warnings.append(f"the lock files were tested with Python 3.11; this is "
                        f"{version[0]}.{version[1]}, so some pinned wheels may not exist for it")
    prefix = Path(args.prefix).expanduser().resolve() if args.prefix else default_prefix()
    env_dir, app_dir = prefix / "env", prefix / "app"
    source = Path(args.source).resolve() if args.source else HERE.parent
    system = hw.system
    py = str(env_python(env_dir, system))
    with_gui = (source / "main.py").is_file()
    if not with_gui:
        warnings.append(f"{source} has no main.py (the desktop app): only the mend command "
                        "will be installed")
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    if args.wheelhouse:
        pip += ["--no-index", "--find-links", str(Path(args.wheelhouse).resolve())]
    steps: list[Step] = []
    if args.download_wheels:
        dest = str(Path(args.download_wheels).resolve())
        target_os = args.target_os or {"windows-cuda": "windows", "linux-cuda": "linux",
                                       "macos-arm64": "macos"}.get(name) or {
            "Windows": "windows", "Darwin": "macos"}.get(system, "linux")
        cmd = [python, "-m", "pip", "download", "--disable-pip-version-check", "-r",
               str(lock_path), "-d", dest, "--only-binary=:all:", "--implementation", "cp",
               "--python-version", f"{version[0]}.{version[1]}"]
        for plat in _wheel_platforms(name, target_os):
            cmd += ["--platform", plat]
        steps.append(Step(f"download every wheel of {lock_path.name} into {dest}", cmd))
        if target_os == "windows" and system != "Windows" and name != "windows-cuda":
            # pip evaluates markers for this machine, not the target: add what Windows needs
            # (the windows-cuda lock pins it without a marker)
            steps.append(Step("download the Windows-only dependencies",
                              cmd[:5] + ["colorama==0.4.6"] + cmd[7:]))
        return Plan(hw, name, str(lock_path), reasons, str(prefix), str(env_dir), str(app_dir),
                    python, f"{version[0]}.{version[1]}", steps, [], warnings, "download-wheels",
                    str(source))
    has_env = (env_dir / "pyvenv.cfg").is_file()
    installed = read_receipt(prefix)
    old_lock = installed.get("lock") if has_env else None
    # pip keeps what satisfies a pin: torch 2.14.1+cpu stays for torch==2.14.1, so another lock
    # needs a fresh environment
    lock_changed = bool(old_lock) and (old_lock != name or (
        name == "custom" and installed.get("lock_file") != str(lock_path)))
    if lock_changed:
        warnings.append(f"the environment at {env_dir} was installed with the {old_lock} lock; "
                        f"it is rebuilt for {name}, because pip would keep the PyTorch build "
                        "already there")
    if has_env and not args.force and not lock_changed:
        old = venv_python_version(env_dir)
        if old != version:
            raise BootstrapError(f"{env_dir} was made with Python {old}; run again with --force "
                                 "to rebuild it")
        steps.append(Step(f"reuse the environment at {env_dir}", None, "reuse"))
    else:
        if args.force and env_dir.exists():
            steps.append(Step(f"delete the old environment at {env_dir}", None, "delete_env"))
        elif lock_changed:
            steps.append(Step(f"delete the old environment at {env_dir} (made with the "
                              f"{old_lock} lock)", None, "delete_env"))
        steps.append(Step(f"create a virtual environment at {env_dir}",
                          [python, "-m", "venv", str(env_dir)]))
    steps.append(Step(f"install the locked packages ({lock_path.name})",
                      pip + ["-r", str(lock_path)]))
    steps.append(Step(f"copy Mend from {source} to {app_dir}", None, "copy_app"))
    steps.append(Step("put Mend on the environment's import path (mend-app.pth)", None,
                      "write_pth"))
    launchers = [str(p) for p in _launcher_paths(prefix, system, with_gui)]
    if args.no_desktop_entry:
        launchers = [p for p in launchers if not p.endswith((".desktop", ".lnk"))]
    steps.append(Step("write the launchers", None, "launchers"))
    if args.models and args.models != "none":
        steps.append(Step(f"download the models of the {args.models} profile",
                          [py, "-m", "engine.cli", "models", "pull", "--profile", args.models]))
    if args.import_pack:
        steps.append(Step("import the offline model pack",
                          [py, "-m", "engine.cli", "models", "import",
                           str(Path(args.import_pack).resolve())]))
    if not args.no_verify:
        steps.append(Step("check the installation (mend doctor)",
                          [py, "-m", "engine.cli", "doctor", "--json"]))
    steps.append(Step(f"write {prefix / RECEIPT}", None, "receipt"))
    return Plan(hw, name, str(lock_path), reasons, str(prefix), str(env_dir), str(app_dir),
                python, f"{version[0]}.{version[1]}", steps, launchers, warnings, "install",
                str(source))


# ---------------------------------------------------------------- carrying it out


def _copy_app(source: Path, app_dir: Path) -> None:
    if not (source / "engine" / "__init__.py").is_file():
        raise BootstrapError(f"{source} is not a Mend source tree (no engine/ package)")
    if app_dir.exists() and not (app_dir / APP_MARKER).is_file():
        raise BootstrapError(f"{app_dir} exists and was not made by this installer; "
                             "choose another --prefix")
    tmp = app_dir.with_name(app_dir.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for item in APP_ITEMS:
        src = source / item
        if src.is_dir():
            shutil.copytree(src, tmp / item, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, tmp / item)
    (tmp / APP_MARKER).write_text("made by Mend's installer/bootstrap.py\n", encoding="utf-8")
    if app_dir.exists():
        shutil.rmtree(app_dir)
    _replace_dir(tmp, app_dir)


def _replace_dir(src: Path, dest: Path, delays=(0.1, 0.2, 0.5, 1.0, 2.0)) -> None:
    """``os.replace``, retried on Windows for a few seconds while the folder cannot be renamed:
    a virus scanner or the search indexer still has one of the files just copied into it open
    (ERROR_ACCESS_DENIED / ERROR_SHARING_VIOLATION; pip retries its renames alike)."""
    for delay in (*delays, None):
        try:
            os.replace(src, dest)
            return
        except PermissionError as e:
            if (delay is None or platform.system() != "Windows"
                    or getattr(e, "winerror", None) not in (5, 32)):
                raise
        time.sleep(delay)


def _posix_script(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(0o755)


def desktop_string(value: str) -> str:
    """A value of type string in a desktop entry (backslash escapes)."""
    return (value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
            .replace("\r", "\\r"))


def desktop_exec_arg(arg: str) -> str:
    """One argument of a desktop entry's Exec key, quoted as the Desktop Entry Specification
    says: inside double quotes `"`, backtick, `$` and backslash get a backslash; `%` is doubled
    (a field code otherwise); then the string-value escaping doubles every backslash again."""
    quoted = "".join("\\" + c if c in '"`$\\' else c for c in arg).replace("%", "%%")
    return desktop_string(f'"{quoted}"')


def _cmd_path(target: Path, launcher: Path) -> str:
    """``target`` as a batch file names it: ``%~dp0`` (the launcher's own folder, expanded by
    cmd.exe) + the path below that folder, so the file is plain ASCII. cmd.exe reads a batch
    file in the console's OEM code page (437, 850, 936...), not UTF-8: a path written into it
    with a non-ASCII character (C:\\Users\\José\\...) would name another, missing folder, and
    a ``%`` in it would be taken for a variable. Every target is in the prefix, where the
    launchers are."""
    try:
        rel = Path(target).relative_to(Path(launcher).parent)
    except ValueError:
        raise BootstrapError(f"{target} is not inside {Path(launcher).parent}") from None
    return "%~dp0" + "\\".join(rel.parts)


def _write_launchers(plan: Plan) -> None:
    env_dir, app_dir, prefix = Path(plan.env_dir), Path(plan.app_dir), Path(plan.prefix)
    system = plan.hardware.system
    q = shlex.quote
    for launcher in map(Path, plan.launchers):
        name = launcher.name
        if system == "Windows":
            py, pyw = env_python(env_dir, system), env_python(env_dir, system, gui=True)
            if name == "mend.cmd":
                cli = _cmd_path(py, launcher)
                launcher.write_text(f'@echo off\r\n"{cli}" -m engine.cli %*\r\n', encoding="ascii")
            elif name == "mend-gui.cmd":
                main_py = _cmd_path(app_dir / "main.py", launcher)
                launcher.write_text(f'@echo off\r\nstart "" "{_cmd_path(pyw, launcher)}" '
                                    f'"{main_py}" %*\r\n', encoding="ascii")
            elif name.endswith(".lnk"):
                launcher.parent.mkdir(parents=True, exist_ok=True)
                ps = ("$s=(New-Object -ComObject WScript.Shell).CreateShortcut($env:MEND_LNK);"
                      "$s.TargetPath=$env:MEND_PYW;$s.Arguments='\"'+$env:MEND_MAIN+'\"';"
                      "$s.IconLocation=$env:MEND_ICO;$s.Save()")
                env = dict(os.environ, MEND_LNK=str(launcher), MEND_PYW=str(pyw),
                           MEND_MAIN=str(app_dir / "main.py"),
                           MEND_ICO=str(app_dir / "resources" / "icons" / "mend-app.ico"))
                subprocess.run(["powershell", "-NoProfile", "-Command", ps], env=env, check=True)
            continue
        py = env_python(env_dir, system)
        if name == "mend":
            _posix_script(launcher, f"exec {q(str(py))} -m engine.cli \"$@\"\n")
        elif name == "mend-gui":
            _posix_script(launcher, f"exec {q(str(py))} {q(str(app_dir / 'main.py'))} \"$@\"\n")
        elif name == "mend.desktop":
            launcher.parent.mkdir(parents=True, exist_ok=True)
            icon = app_dir / "resources" / "icons" / "mend-app.png"
            launcher.write_text(
                "[Desktop Entry]\nType=Application\nName=Mend\n"
                "Comment=Diagnose and fix damaged photos, offline\n"
                f"Exec={desktop_exec_arg(str(prefix / 'bin' / 'mend-gui'))} %F\n"
                f"Icon={desktop_string(str(icon))}\nTerminal=false\n"
                "Categories=Graphics;Photography;\n"
                "MimeType=image/jpeg;image/png;image/tiff;image/webp;image/heic;\n",
                encoding="utf-8")
        elif name == "Mend.app":
            contents = launcher / "Contents"
            _posix_script(contents / "MacOS" / "Mend",
                          f"exec {q(str(py))} {q(str(app_dir / 'main.py'))} \"$@\"\n")
            (contents / "Resources").mkdir(parents=True, exist_ok=True)
            icns = app_dir / "resources" / "icons" / "mend-app.icns"
            if icns.is_file():
                shutil.copy2(icns, contents / "Resources" / "mend-app.icns")
            (contents / "Info.plist").write_text(_info_plist(app_dir), encoding="utf-8")


def _info_plist(app_dir: Path) -> str:
    version = "0"
    m = re.search(r'^version\s*=\s*"([^"]+)"', (app_dir / "pyproject.toml").read_text(
        encoding="utf-8") if (app_dir / "pyproject.toml").is_file() else "", re.MULTILINE)
    if m:
        version = m.group(1)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST '
            '1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n<plist version="1.0">'
            "<dict><key>CFBundleName</key><string>Mend</string><key>CFBundleIdentifier</key>"
            "<string>org.mend.Mend</string><key>CFBundleExecutable</key><string>Mend</string>"
            "<key>CFBundleIconFile</key><string>mend-app.icns</string>"
            f"<key>CFBundleShortVersionString</key><string>{version}</string>"
            "<key>CFBundlePackageType</key><string>APPL</string>"
            "<key>NSHighResolutionCapable</key><true/></dict></plist>\n")


def _run(argv: list[str], quiet: bool) -> str:
    r = subprocess.run(argv, capture_output=quiet, text=True, check=False)
    if r.returncode != 0:
        tail = ((r.stderr or "") + (r.stdout or "")).strip().splitlines()[-15:] if quiet else []
        raise BootstrapError(f"command failed ({r.returncode}): {shlex.join(argv)}"
                             + ("\n  " + "\n  ".join(tail) if tail else ""))
    return r.stdout or ""


def execute(plan: Plan, *, quiet: bool = False, log=print) -> dict:
    """Carry out the plan; returns the receipt."""
    env_dir, app_dir, prefix = Path(plan.env_dir), Path(plan.app_dir), Path(plan.prefix)
    version = tuple(int(x) for x in plan.python_version.split("."))
    started = time.time()
    timings: dict[str, float] = {}
    doctor: dict | None = None
    for i, step in enumerate(plan.steps, 1):
        log(f"[{i}/{len(plan.steps)}] {step.title}")
        t0 = time.perf_counter()
        if step.action == "run" and step.argv:
            out = _run(step.argv, quiet or "doctor" in step.argv)
            if "doctor" in step.argv:
                try:
                    doctor = json.loads(out.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    doctor = None
        elif step.action == "delete_env":
            if not (env_dir / "pyvenv.cfg").is_file():
                raise BootstrapError(f"{env_dir} is not a virtual environment; not deleting it")
            shutil.rmtree(env_dir)
        elif step.action == "copy_app":
            prefix.mkdir(parents=True, exist_ok=True)
            _copy_app(Path(plan.source), app_dir)
        elif step.action == "write_pth":
            sp = site_packages(env_dir, version, plan.hardware.system)  # type: ignore[arg-type]
            if not sp.is_dir():
                raise BootstrapError(f"the environment has no {sp}")
            (sp / "mend-app.pth").write_text(str(app_dir) + "\n", encoding="utf-8")
        elif step.action == "launchers":
            _write_launchers(plan)
        elif step.action == "receipt":
            receipt = {"app": APP_NAME, "lock": plan.lock, "lock_file": plan.lock_file,
                       "hardware": asdict(plan.hardware), "python": plan.python_version,
                       "prefix": plan.prefix, "env": plan.env_dir, "app_dir": plan.app_dir,
                       "launchers": plan.launchers, "installed_at": time.strftime("%Y-%m-%d %H:%M"),
                       "seconds": round(time.time() - started, 1), "timings": timings,
                       "doctor": doctor}
            (prefix / RECEIPT).write_text(json.dumps(receipt, indent=2), encoding="utf-8")
            return receipt
        timings[step.title] = round(time.perf_counter() - t0, 2)
    return {"timings": timings}


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bootstrap.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument("--json", action="store_true", help="print the plan (or result) as JSON")
    p.add_argument("--prefix", help=f"install folder (default: {default_prefix()})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--lock", choices=LOCKS, help="use this lock instead of detecting the hardware")
    g.add_argument("--lock-file", help="use this requirements file as the lock")
    p.add_argument("--python", help="the Python to build the environment with (default: this one)")
    p.add_argument("--source", help="the Mend source tree to install (default: this repository)")
    p.add_argument("--wheelhouse", help="install offline from this folder of wheels")
    p.add_argument("--download-wheels", metavar="DIR",
                   help="only download every wheel of the lock into DIR (for an offline install)")
    p.add_argument("--target-os", choices=["linux", "windows", "macos"],
                   help="with --download-wheels: the OS of the offline machine (a lock for it "
                        "is chosen: this machine's if it fits, else cpu or macos-arm64)")
    p.add_argument("--models", choices=["none", "builtin", "laptop", "quality"], default="none",
                   help="also download a model profile after installing")
    p.add_argument("--import-pack", help="also import an offline model pack (mend models pack)")
    p.add_argument("--force", action="store_true", help="rebuild the environment from scratch")
    p.add_argument("--no-verify", action="store_true", help="skip the final `mend doctor` check")
    p.add_argument("--no-desktop-entry", action="store_true",
                   help="no menu entry / Start Menu shortcut (launchers in the prefix only)")
    p.add_argument("-q", "--quiet", action="store_true", help="hide pip's output")
    return p


def _print_plan(plan: Plan) -> None:
    hw = plan.hardware
    gpus = "; ".join(f"{g.name} (driver {g.driver})" for g in hw.gpus) or "none"
    print(f"Hardware: {hw.kind} ({hw.system} {hw.machine}; GPUs: {gpus})")
    print(f"Lock:     {plan.lock} -> {plan.lock_file}")
    for r in plan.reasons:
        print(f"          {r}")
    print(f"Python:   {plan.python} ({plan.python_version})")
    print(f"Prefix:   {plan.prefix}")
    for w in plan.warnings:
        print(f"Warning:  {w}")
    print("Steps:")
    for i, s in enumerate(plan.steps, 1):
        print(f"  {i}. {s.title}")
        if s.argv:
            print(f"     $ {shlex.join(s.argv)}")
    if plan.launchers:
        print("Launchers:\n" + "\n".join(f"  {x}" for x in plan.launchers))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if sys.version_info < (3, 11):  # noqa: UP036 (a clear message on old Pythons)
        print("bootstrap.py: Mend needs Python 3.11 or newer", file=sys.stderr)
        return 2
    try:
        plan = make_plan(args)
    except BootstrapError as e:
        print(f"bootstrap.py: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a folder it must look into is a file
        print(f"bootstrap.py: {e}", file=sys.stderr)
        return 1
    if args.dry_run:
        if args.json:
            print(json.dumps({"dry_run": True, **plan.to_json()}, indent=2))
        else:
            _print_plan(plan)
            print("(dry run: nothing was changed)")
        return 0
    log = (lambda *_: None) if args.json else print
    try:
        if plan.mode == "download-wheels":
            for i, step in enumerate(plan.steps, 1):
                log(f"[{i}/{len(plan.steps)}] {step.title}")
                _run(step.argv or [], args.quiet)
            result: dict = {"downloaded_to": plan.steps[0].argv[plan.steps[0].argv.index("-d") + 1]}
        else:
            result = execute(plan, quiet=args.quiet, log=log)
    except (BootstrapError, OSError, subprocess.SubprocessError) as e:
        print(f"bootstrap.py: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if plan.mode == "install":
            print(f"Mend is installed in {plan.prefix}.")
            for x in plan.launchers:
                print(f"  {x}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
