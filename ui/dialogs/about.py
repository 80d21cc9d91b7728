"""About box with the versions of everything that matters for a bug report."""
from __future__ import annotations

import platform
import sys
from importlib import metadata

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import qVersion
from PySide6.QtWidgets import QMessageBox, QWidget


def versions() -> dict[str, str]:
    out = {"Mend": _v("mend"), "Python": platform.python_version(),
           "Qt": qVersion(), "PySide6": pyside_version}
    for pkg in ("torch", "torchvision", "spandrel", "transformers", "diffusers", "onnxruntime",
                "rapidocr", "opencv-python-headless", "numpy", "pillow"):
        out[pkg] = _v(pkg)
    out["System"] = f"{platform.system()} {platform.release()} ({platform.machine()})"
    return out


def _v(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def show_about(parent: QWidget | None, device: object | None = None) -> None:
    rows = "".join(f"<tr><td>{k}</td><td>&nbsp;{v}</td></tr>" for k, v in versions().items())
    dev = f"<p>Device: {getattr(device, 'name', device)}</p>" if device else ""
    QMessageBox.about(parent, "About Mend",
                      "<h3>Mend</h3><p>Diagnoses what is wrong with a photo and fixes it with "
                      "the right specialist model — offline, on your computer.</p>"
                      f"{dev}<table>{rows}</table><p>Python {sys.version.split()[0]}</p>")
