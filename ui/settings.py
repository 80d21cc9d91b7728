"""App settings (QSettings-backed) as one frozen dataclass, plus the user folders."""
from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication, QEvent, QSettings

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
    # "" = "<photo folder>/mended"; a relative path ("results") is a folder beside each photo
    # too ("<photo folder>/results"), never one of the folder Mend was started from
    out_dir: str = ""
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
        photo, and in the output folder chosen in Settings when it is a relative path
        ("results": ``<photo folder>/results``, as ``mended``; a photographer never sees the
        folder Mend was started from, which a relative path meant before); in an absolute
        output folder, a photo of a subfolder of ``root`` (the folder opened with its
        subfolders) goes to the same subfolder there, as with the CLI's ``-r``
        (100CANON/IMG_0001.JPG and 101CANON/IMG_0001.JPG keep apart)."""
        beside = self.output_beside()
        if beside is not None:
            out = Path(photo).parent / beside
        else:
            out = Path(self.out_dir)
            if root is not None:
                try:
                    out = out / Path(photo).parent.relative_to(root)
                except ValueError:
                    pass
        return OutputOptions(out_dir=out, format=self.format or None, quality=int(self.quality),
                             bit_depth=int(self.bit_depth) or None,
                             keep_metadata=bool(self.keep_metadata), suffix=self.suffix or "_mend")

    def output_beside(self) -> str | None:
        """The results' folder beside each photo (``mended`` by default, or the relative
        output folder chosen), as a relative path; None: one folder for every photo (an
        absolute output folder)."""
        if not self.out_dir:
            return "mended"
        return None if Path(self.out_dir).is_absolute() else os.path.normpath(self.out_dir)

    def excluded_folders(self) -> tuple[tuple[Path, ...], tuple[str, ...]]:
        """What a listing with subfolders leaves out as Mend's output (``scan_tree``): the
        absolute output folder, and the folders of results beside each photo."""
        beside = self.output_beside()
        return ((), (beside,)) if beside is not None else ((Path(self.out_dir),), ())

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
    through a QSettings object of the calling thread's own, without holding Python's GIL
    meanwhile: for a pool thread, never the GUI thread (the write is a file saved and fsync'd
    under a lock file another Mend may hold: 5-23 ms here, far more on a network home).
    QSettings is reentrant: distinct objects in different threads may use one file at the same
    time, and what one sets is seen at once by the others of this process (the window's own
    included). The GUI thread writes through a ``SettingsFile``."""
    qs = QSettings(*where)
    for key, value in values.items():
        qs.setValue(key, value)
    # written as the event loop has it written (the update request its setValue posted): in
    # C++ with Python's GIL released. QSettings.sync() holds the GIL for the whole write and
    # its fsync (PySide 6.11: a 3 MB file froze the GUI thread for 150 ms from a pool thread;
    # this way 3 ms). The sync() after it writes only what that left (nothing: it finds the
    # file unchanged with one stat)
    QCoreApplication.sendEvent(qs, QEvent(QEvent.Type.UpdateRequest))
    qs.sync()
    if qs.status() != QSettings.Status.NoError:
        log.warning("could not write the settings file %s (%s)", qs.fileName(), qs.status().name)


class _Unwritten:
    """The values set at one settings location and not on its disk yet (key -> (order of
    setting, value)), shared by every ``SettingsFile`` of that location in this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # (values)
        self.values: dict[str, tuple[int, Any]] = {}
        self.writing = threading.Lock()  # one write at a time: an older one never lands last


# location -> its unwritten values, while a SettingsFile or a queued write refers to them
_UNWRITTEN: weakref.WeakValueDictionary[tuple[str, Any], _Unwritten] = \
    weakref.WeakValueDictionary()
_UNWRITTEN_LOCK = threading.Lock()
_ORDER = itertools.count(1)


def _write_unwritten(where: tuple[str, QSettings.Format], unwritten: _Unwritten) -> None:
    """Write the location's values set so far (in the pool). Each write takes every value set
    until it starts, under the location's writing lock: whatever order the pool runs the
    writes in, the last value set of a key is the one left on the disk."""
    with unwritten.writing:
        with unwritten.lock:
            batch = dict(unwritten.values)
        if not batch:
            return  # (an earlier write took them)
        try:
            write_settings(where, {key: value for key, (_n, value) in batch.items()})
        finally:
            # set in this process's memory now (read back through any QSettings of the
            # location), unless set again meanwhile: that value waits for the next write
            with unwritten.lock:
                for key, (n, _value) in batch.items():
                    if unwritten.values.get(key, (None,))[0] == n:
                        del unwritten.values[key]


class SettingsFile:
    """The settings as the GUI thread uses them: ``value`` reads memory only, and gives what
    was ``set`` last, on the disk yet or not; ``set`` writes in ``start``'s threads (a pool:
    whoever shuts it down waits for the write). A QSettings set on the GUI thread writes its
    file there (at once when synced, else from its own event or its destructor): through this,
    the GUI thread never waits for a settings file (a 3 MB one: 0.15-0.4 s per write here).
    Values set in a row reach the disk in that order (the last one of a key is the one kept)."""

    def __init__(self, start: Callable[[Callable[[], None]], None],
                 qs: QSettings | None = None) -> None:
        # (read through only: never set, it never writes)
        self._qs = qs if qs is not None else qsettings()
        self.where = (self._qs.fileName(), self._qs.format())
        self._start = start
        with _UNWRITTEN_LOCK:
            unwritten = _UNWRITTEN.get(self.where)
            if unwritten is None:
                unwritten = _UNWRITTEN[self.where] = _Unwritten()
        self._unwritten = unwritten

    def value(self, key: str, default: Any = None) -> Any:
        with self._unwritten.lock:
            if key in self._unwritten.values:
                return self._unwritten.values[key][1]
        return self._qs.value(key, default)

    def set(self, values: Mapping[str, Any]) -> None:
        """Set ``values`` (key -> value): read back at once, written in the pool."""
        unwritten, where = self._unwritten, self.where
        with unwritten.lock:
            for key, value in values.items():
                unwritten.values[key] = (next(_ORDER), value)
        self._start(lambda: _write_unwritten(where, unwritten))


def load_settings(qs: QSettings | SettingsFile | None = None) -> AppSettings:
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
    if "tile_size" in kw:  # a hand-edited value the engine would refuse: the engine's range
        from engine.pipeline import MAX_TILE, MIN_TILE

        kw["tile_size"] = min(MAX_TILE, max(MIN_TILE, kw["tile_size"]))
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


def save_settings(s: AppSettings, qs: QSettings | SettingsFile | None = None) -> None:
    """Store ``s``: through a ``SettingsFile``, written in its pool; else written now, in this
    thread (never the GUI thread's way)."""
    values = {f"settings/{f.name}": getattr(s, f.name) for f in fields(AppSettings)}
    if isinstance(qs, SettingsFile):
        qs.set(values)
        return
    qs = qs or qsettings()
    write_settings((qs.fileName(), qs.format()), values)


def recent_folders(qs: QSettings | SettingsFile | None = None) -> list[str]:
    qs = qs or qsettings()
    v = qs.value("recent/folders") or []
    if isinstance(v, str):
        v = [v]
    return [str(x) for x in v if x]


def add_recent_folder(folder: Path, settings: SettingsFile, limit: int = 10) -> list[str]:
    items = [str(folder)] + [f for f in recent_folders(settings) if f != str(folder)]
    settings.set({"recent/folders": items[:limit]})
    return items[:limit]
