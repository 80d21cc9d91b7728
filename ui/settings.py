"""App settings (QSettings-backed) as one frozen dataclass, plus the user folders."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings

from engine.api import OutputOptions

ORG, APP = "Mend", "Mend"

log = logging.getLogger("mend.ui")


def data_dir() -> Path:
    env = os.environ.get("MEND_UI_DATA_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("mend", "Mend"))


def cache_dir() -> Path:
    env = os.environ.get("MEND_UI_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("mend", "Mend"))


@dataclass(frozen=True)
class AppSettings:
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    tile_size: int = 512
    threads: int = 0  # 0 = automatic (cores - 1)
    profile: str = "auto"  # auto | builtin | laptop | quality
    backend: str = "auto"  # classifier backend
    out_dir: str = ""  # "" = "<photo folder>/mended"
    suffix: str = "_mend"
    format: str = ""  # "" = same as source
    quality: int = 95
    bit_depth: int = 0  # 0 = same as source
    keep_metadata: bool = True
    offline: bool = False
    guard: bool = True
    include_subfolders: bool = False  # the photo grid lists the subfolders' photos too

    def output_options(self, photo: Path, root: Path | None = None) -> OutputOptions:
        """Where and how ``photo``'s result is written. By default in ``mended`` beside the
        photo; in the configured output folder, a photo of a subfolder of ``root`` (the folder
        opened with its subfolders) goes to the same subfolder there, as with the CLI's ``-r``
        (100CANON/IMG_0001.JPG and 101CANON/IMG_0001.JPG keep apart)."""
        if self.out_dir:
            out = Path(self.out_dir)
            if root is not None:
                try:
                    out = out / Path(photo).parent.relative_to(root)
                except ValueError:
                    pass
        else:
            out = Path(photo).parent / "mended"
        return OutputOptions(out_dir=out, format=self.format or None, quality=int(self.quality),
                             bit_depth=int(self.bit_depth) or None,
                             keep_metadata=bool(self.keep_metadata), suffix=self.suffix or "_mend")

    def apply_environment(self) -> None:
        """Settings the engine reads from the environment (threads, offline mode, precision).
        Turning one back to automatic / off restores what the environment held before the app
        set it (so unticking offline mode works without a restart)."""
        _set_env("MEND_THREADS", str(self.threads) if self.threads > 0 else None)
        _set_env("MEND_OFFLINE", "1" if self.offline else None)
        _set_env("HF_HUB_OFFLINE", "1" if self.offline else None)
        _set_env("MEND_PRECISION", self.precision if self.precision != "auto" else None)


# environment variables the app has set, with the value each had before (None: unset)
_ENV_BEFORE: dict[str, str | None] = {}


def _set_env(name: str, value: str | None) -> None:
    if name not in _ENV_BEFORE:
        if value is None:
            return  # never set by the app: leave the user's environment alone
        _ENV_BEFORE[name] = os.environ.get(name)
    if value is None:
        value = _ENV_BEFORE[name]
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def qsettings() -> QSettings:
    path = os.environ.get("MEND_UI_SETTINGS")
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings(ORG, APP)


def write_settings(where: tuple[str, QSettings.Format], values: Mapping[str, Any]) -> None:
    """Set ``values`` (key -> value) in the settings at ``where`` (a ``QSettings``'s
    ``(fileName(), format())``, the registry's path on Windows) and write them to the disk now,
    through a QSettings object of the calling thread's own: for a pool thread, never the GUI
    thread (the write is a file saved and fsync'd under a lock file another Mend may hold:
    5-23 ms here, far more on a network home). QSettings is reentrant: distinct objects in
    different threads may use one file at the same time, and what one sets is seen at once by
    the others of this process (the window's own included)."""
    qs = QSettings(*where)
    for key, value in values.items():
        qs.setValue(key, value)
    qs.sync()
    if qs.status() != QSettings.Status.NoError:
        log.warning("could not write the settings file %s (%s)", qs.fileName(), qs.status().name)


def load_settings(qs: QSettings | None = None) -> AppSettings:
    qs = qs or qsettings()
    kw: dict[str, Any] = {}
    for f in fields(AppSettings):
        v = qs.value(f"settings/{f.name}")
        if v is None:
            continue
        default = getattr(AppSettings, f.name)
        try:
            if isinstance(default, bool):
                kw[f.name] = v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                kw[f.name] = int(v)
            else:
                kw[f.name] = str(v)
        except (TypeError, ValueError):
            continue
    if "tile_size" in kw:  # a hand-edited value the engine would refuse: the dialog's range
        kw["tile_size"] = min(4096, max(64, kw["tile_size"]))
    for name, (lo, hi) in _RANGES.items():
        if name in kw:
            kw[name] = min(hi, max(lo, kw[name]))
    # a name another version wrote (a profile, device or backend renamed or gone) or a hand
    # edit: the default, as the settings dialog shows it; kept, it failed every job
    for name, allowed in CHOICES.items():
        if name in kw and kw[name] not in allowed:
            kw.pop(name)
    if "suffix" in kw:  # (a separator would write results outside the output folder)
        kw["suffix"] = "".join(c for c in kw["suffix"] if c not in "/\\:\0") or "_mend"
    return replace(AppSettings(), **kw)


# the values the settings dialog offers (the engine refuses others)
CHOICES: dict[str, tuple[Any, ...]] = {
    "device": ("auto", "cpu", "cuda", "mps"),
    "precision": ("auto", "fp32", "fp16", "bf16"),
    "profile": ("auto", "builtin", "laptop", "quality"),
    "backend": ("auto", "builtin", "clip", "vlm"),
    "format": ("", "jpeg", "png", "tiff", "webp"),
    "bit_depth": (0, 8, 16),
}
_RANGES = {"threads": (0, 256), "quality": (1, 100)}


def save_settings(s: AppSettings, qs: QSettings | None = None) -> None:
    qs = qs or qsettings()
    for f in fields(AppSettings):
        qs.setValue(f"settings/{f.name}", getattr(s, f.name))
    qs.sync()


def recent_folders(qs: QSettings | None = None) -> list[str]:
    qs = qs or qsettings()
    v = qs.value("recent/folders") or []
    if isinstance(v, str):
        v = [v]
    return [str(x) for x in v if x]


def add_recent_folder(folder: Path, qs: QSettings | None = None, limit: int = 10) -> list[str]:
    qs = qs or qsettings()
    items = [str(folder)] + [f for f in recent_folders(qs) if f != str(folder)]
    qs.setValue("recent/folders", items[:limit])
    return items[:limit]
