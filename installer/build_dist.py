"""Build the frozen Mend for this machine (what `make dist` runs), measure it and smoke-test it.

    python installer/build_dist.py                    # lean bundle -> dist/Mend
    python installer/build_dist.py --torch bundle     # PyTorch inside (several GB with CUDA)
    python installer/build_dist.py --smoke-only       # only re-run the checks on dist/Mend

Writes dist/Mend/BUILD-INFO.json (version, platform, torch mode, seconds, bytes, smoke results),
and on Linux dist/Mend/install-menu-entry.sh. The checks: the frozen `mend --help` and
`mend doctor --json` (plain, and with MEND_ENV pointing at this Python's environment so torch
comes from there). Exit code 1 if the build or a check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPEC = HERE / "mend.spec"
BUILD_REQUIREMENTS = HERE / "build-requirements.txt"


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under path, symlinks not followed."""
    total = files = 0
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            p = Path(dirpath) / n
            if not p.is_symlink():
                total += p.stat().st_size
                files += 1
    return total, files


def ensure_pyinstaller() -> str:
    try:
        import PyInstaller
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                        "-q", "-r", str(BUILD_REQUIREMENTS)], check=True)
        import PyInstaller
    return PyInstaller.__version__


def executable(bundle: Path, name: str) -> Path:
    if platform.system() == "Darwin" and (bundle.parent / "Mend.app").is_dir():
        return bundle.parent / "Mend.app" / "Contents" / "MacOS" / name
    return bundle / (name + (".exe" if platform.system() == "Windows" else ""))


def smoke(bundle: Path, env_dir: Path | None = None, timeout: float = 300) -> dict:
    """Run the frozen `mend --help` and `mend doctor --json`; returns what happened."""
    exe = executable(bundle, "mend")
    out: dict = {"exe": str(exe)}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MEND_MODELS_DIR=str(Path(tmp) / "models"), MEND_OFFLINE="1")
        env.pop("MEND_ENV", None)
        if env_dir is None:
            env["MEND_NO_ENV"] = "1"
        else:
            env["MEND_ENV"] = str(env_dir)
        t0 = time.perf_counter()
        try:
            r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=env,
                               timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:  # missing, not runnable, hung
            out["help"] = out["doctor"] = {"ok": False, "error": str(e)}
            return out
        out["help"] = {"rc": r.returncode, "seconds": round(time.perf_counter() - t0, 2),
                       "ok": r.returncode == 0 and "usage: mend" in r.stdout}
        t0 = time.perf_counter()
        try:
            r = subprocess.run([str(exe), "doctor", "--json"], capture_output=True, text=True,
                               env=env, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            out["doctor"] = {"ok": False, "error": str(e)}
            return out
        doc: dict = {"rc": r.returncode, "seconds": round(time.perf_counter() - t0, 2)}
        try:
            info = json.loads(r.stdout.strip().splitlines()[-1])
            doc["torch"] = info.get("devices", {}).get("torch")
            doc["device"] = info.get("devices", {}).get("selected", {}).get("kind")
            doc["ok"] = r.returncode == 0 and "version" in info
        except (ValueError, IndexError, AttributeError):
            doc["ok"] = False
            doc["stderr"] = r.stderr.strip().splitlines()[-3:]
        out["doctor"] = doc
    return out


def write_desktop_entry(bundle: Path) -> None:
    """A script in the bundle that adds Mend to the Linux application menu wherever the folder
    was unpacked (.desktop files need absolute paths)."""
    script = bundle / "install-menu-entry.sh"
    script.write_text(
        "#!/bin/sh\n# Add Mend to the application menu (run again after moving this folder).\n"
        'here=$(cd "$(dirname "$0")" && pwd)\n'
        'apps="${XDG_DATA_HOME:-$HOME/.local/share}/applications"\n'
        'mkdir -p "$apps"\n'
        # the Desktop Entry Specification's quoting: inside "...", \ " ` $ get a backslash and
        # % is doubled; then every backslash is doubled again (string escaping)
        "exec_dir=$(printf '%s' \"$here\" | sed -e 's/\\\\/\\\\\\\\\\\\\\\\/g' "
        "-e 's/[\"`$]/\\\\\\\\&/g' -e 's/%/%%/g')\n"
        "icon_dir=$(printf '%s' \"$here\" | sed -e 's/\\\\/\\\\\\\\/g')\n"
        'cat > "$apps/mend.desktop" <<EOF\n'
        "[Desktop Entry]\nType=Application\nName=Mend\n"
        "Comment=Diagnose and fix damaged photos, offline\n"
        'Exec="$exec_dir/mend-gui" %F\nIcon=$icon_dir/_internal/resources/icons/mend-app.png\n'
        "Terminal=false\nCategories=Graphics;Photography;\n"
        "MimeType=image/jpeg;image/png;image/tiff;image/webp;image/heic;\nEOF\n"
        'echo "added $apps/mend.desktop"\n', encoding="utf-8")
    script.chmod(0o755)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch", choices=["external", "bundle"], default="external")
    ap.add_argument("--dist", type=Path, default=ROOT / "dist")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "pyinstaller")
    ap.add_argument("--smoke-only", action="store_true")
    ap.add_argument("--smoke-env", type=Path, default=Path(sys.prefix),
                    help="environment whose torch the second doctor check uses "
                         "(default: this Python's)")
    args = ap.parse_args(argv)
    bundle = args.dist / "Mend"
    if args.smoke_only and not executable(bundle, "mend").is_file():
        print(f"build_dist: no frozen app at {bundle} to check; build it first (make dist)",
              file=sys.stderr)
        return 1
    info: dict = {}
    if not args.smoke_only:
        version = ensure_pyinstaller()
        env = dict(os.environ, MEND_DIST_TORCH=args.torch)
        cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
               "--distpath", str(args.dist), "--workpath", str(args.work), str(SPEC)]
        print("$ " + " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, check=False)
        seconds = time.perf_counter() - t0
        if r.returncode != 0:
            print(f"build_dist: PyInstaller failed ({r.returncode})", file=sys.stderr)
            return 1
        if platform.system() == "Linux":
            write_desktop_entry(bundle)
        size, files = tree_size(bundle)
        info = {"version": _project_version(), "platform": platform.platform(),
                "machine": platform.machine(), "python": platform.python_version(),
                "pyinstaller": version, "torch_mode": args.torch,
                "build_seconds": round(seconds, 1), "bytes": size, "files": files,
                "gui": executable(bundle, "mend-gui").is_file()}
        print(f"built {bundle} in {seconds:.0f} s: {size / 1e6:,.0f} MB in {files} files",
              flush=True)
    info["smoke"] = {"no_env": smoke(bundle)}
    if args.torch == "external" and args.smoke_env:
        info["smoke"]["with_env"] = smoke(bundle, args.smoke_env)
    old = bundle / "BUILD-INFO.json"
    if args.smoke_only and old.is_file():
        info = {**json.loads(old.read_text(encoding="utf-8")), "smoke": info["smoke"]}
    old.write_text(json.dumps(info, indent=2), encoding="utf-8")
    print(json.dumps(info["smoke"], indent=2))
    ok = all(s["help"]["ok"] and s["doctor"]["ok"] for s in info["smoke"].values())
    return 0 if ok else 1


def _project_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"]


if __name__ == "__main__":
    sys.exit(main())
