"""The model store: one folder per model id under the cache root, with a small state file
(``.mend-state.json``) recording, for every file, its sha256 and the size + mtime it had when it
was last verified.

* Cache root: ``MEND_MODELS_DIR`` if set, else ``platformdirs.user_data_dir("Mend")/models``.
* ``pull`` downloads to ``<file>.part`` (Range resume, retries) while holding
  ``<file>.part.lock`` (one writer per file across processes), then hashes the ``.part`` on disk
  — the very file that is renamed — BEFORE the rename; a mismatch deletes the ``.part`` and
  raises :class:`ChecksumMismatch`. A failed pull takes back the folders it made that it leaves
  empty (one holding a ``.part`` kept for a resume stays); so does a failed import.
* ``import`` copies a file to a hidden ``.import-<pid>-<hex>.part`` beside its place, hashes
  the copy and renames it; one an import killed midway left is deleted by the next import or
  pull of that model (once its process no longer runs).
* Pinned files are checked against the manifest hash; unpinned files get their hash recorded
  on first download/import and are checked against that record afterwards.
* ``require`` (used at load time) does a cheap check (size + mtime recorded at verification);
  when that changed it re-hashes, and a changed file raises :class:`ModelFileCorrupt`. A file
  found damaged (by any check, ``verify``'s full hash included) loses its size + mtime record,
  so no later cheap check passes it: until it is repaired it stays corrupt.
* A shard index (``*.index.json``, unpinned: its hash is only recorded) is corrupt when its
  ``weight_map`` names a file the manifest does not list for the model: transformers and
  diffusers load every file an index names, from anywhere (``/x.safetensors``,
  ``../other/x.safetensors``), never hash-checked.
* Only files the manifest lists are ever loaded: a model folder that also holds other
  weight-like files (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.onnx``,
  ``*.index.json``), which transformers/diffusers could pick instead of the verified ones, or
  Python code (``*.py``, which a config's ``auto_map`` names for transformers to run), is
  reported corrupt and ``require`` raises :class:`UnexpectedModelFiles`; ``verify --repair``
  and ``pull`` delete them.
* ``MEND_OFFLINE=1``: nothing here opens a socket; ``pull`` raises :class:`OfflineError` (and
  keeps a damaged file: repairing it needs the network or a good copy to import).
* Slots (``reflection-yolo``): the user's own weights, never downloaded and never taken from an
  offline pack. ``mend models import FILE --id reflection-yolo`` copies FILE into the slot's
  folder and records it as the slot's file; the last file imported that way is the one used,
  whatever else appears in the folder. Its hash, recorded at import, is checked like an
  unpinned file's.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import (
    ChecksumMismatch,
    DownloadError,
    EngineError,
    LocalDiskError,
    ModelMissing,
    OfflineError,
    SaveFailed,
    UsageError,
)
from . import download as dl
from .manifest import (
    Manifest,
    ManifestError,
    ModelFile,
    ModelSpec,
    check_model_id,
    default_manifest,
    safe_relpath,
)

STATE_FILE = ".mend-state.json"
PART_SUFFIX = ".part"
LOCK_SUFFIX = ".lock"
SLOT_KEY = "slot"  # state-file key of a slot model: the file chosen by the last explicit import
BAD_KEY = "bad"  # a file record's size + mtime of the content last found damaged
# a single file's import copies it to this hidden temp file, then renames it into place
IMPORT_TEMP = re.compile(r"\.import-(\d+)-[0-9a-f]+" + re.escape(PART_SUFFIX))
# files a loader may take weights from (transformers/diffusers look for these by name), or code:
# a config's ``auto_map`` names a ``.py`` of the model folder for transformers to import (Mend
# never trusts it, but no model Mend runs has one: it can only be planted there)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".index.json", ".py")
INDEX_SUFFIX = ".index.json"  # a sharded checkpoint's index: which file holds each tensor

# model / file statuses
MISSING = "missing"
PARTIAL = "partial"
VERIFIED = "verified"
UNPINNED = "unpinned"
CORRUPT = "corrupt"
BUNDLED = "bundled"
NOT_CONFIGURED = "not configured"
STATUSES = (MISSING, PARTIAL, VERIFIED, UNPINNED, CORRUPT, BUNDLED, NOT_CONFIGURED)


class ModelFileCorrupt(ChecksumMismatch):
    """A model file no longer has the hash it had when verified (or the pinned one)."""

    def __init__(self, model_id: str, name: str, expected: str, actual: str,
                 fix: str | None = None, why: str | None = None) -> None:
        super().__init__(f"{model_id}/{name}", expected, actual)
        self.model_id = model_id
        self.file = name
        if fix is None:
            fix = ("offline mode is on (MEND_OFFLINE=1): import a good copy with: "
                   "mend models import PATH" if dl.offline_mode() else
                   f"Repair it with: mend models pull {model_id} (or import a good copy)")
        why = why or (f"{name} changed since it was verified (sha256 expected "
                      f"{expected[:12]}…, got {actual[:12]}…)")
        self.args = (f"model '{model_id}' is damaged: {why}. {fix}",)


class UnexpectedModelFiles(EngineError):
    """The model's folder holds weight files the manifest does not list: never hash-checked,
    and a loader (transformers, diffusers) could take them instead of the verified ones."""

    def __init__(self, model_id: str, folder: Path, names: list[str]) -> None:
        self.model_id = model_id
        self.files = list(names)
        shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
        super().__init__(
            f"model '{model_id}' was not loaded: its folder {folder} holds weight or code "
            f"files that are not in Mend's model list and were never checked ({shown}); they "
            f"could be loaded instead of the verified files. Remove them with: "
            f"mend models verify --repair {model_id} (or delete them)")


def install_hint(model_id: str) -> str:
    """How to install a model: pull it, or (offline mode) import it."""
    if dl.offline_mode():
        return ("offline mode is on (MEND_OFFLINE=1): import it from a folder or an offline "
                "pack with: mend models import PATH")
    return (f"run: mend models pull {model_id}; without internet, import an offline pack: "
            "mend models import PACK")


def is_weight_file(name: str) -> bool:
    """A file name a model loader may take weights (or, a ``.py``, code) from."""
    return name.lower().endswith(WEIGHT_SUFFIXES)


def default_root() -> Path:
    env = os.environ.get("MEND_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("Mend", appauthor=False)) / "models"


# a hash's progress: (file name, bytes of it hashed so far, its size)
HashProgress = Callable[[str, int, int], None]


def sha256_file(path: Path, check_cancel: Callable[[], None] | None = None,
                on_bytes: Callable[[int], None] | None = None) -> str:
    """sha256 of ``path``; ``check_cancel`` runs before each chunk, ``on_bytes(done)`` after."""
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(dl.CHUNK):
            if check_cancel:
                check_cancel()
            h.update(chunk)
            done += len(chunk)
            if on_bytes:
                on_bytes(done)
    return h.hexdigest()


class _Rate:
    """Bytes per second of a download or a hash, smoothed (measured every 0.2 s or more)."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.d0: int | None = None
        self.speed = 0.0

    def update(self, done: int) -> float:
        now = time.monotonic()
        if self.d0 is None or done < self.d0:  # (the first report, or a new file's)
            self.t0, self.d0 = now, done
        elif now - self.t0 > 0.2:
            inst = (done - self.d0) / (now - self.t0)
            self.speed = inst if self.speed == 0 else 0.7 * self.speed + 0.3 * inst
            self.t0, self.d0 = now, done
        return self.speed


_HASH_LOCKS: dict[str, threading.Lock] = {}
_HASH_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _hash_lock(path: Path, check_cancel: Callable[[], None] | None = None):
    """Hold the process-wide lock of one file's hash; while another thread holds it, wait
    with ``check_cancel`` called every 50 ms (a cancelled wait raises like a cancelled hash)."""
    key = os.path.normcase(os.path.abspath(path))
    with _HASH_LOCKS_GUARD:
        lock = _HASH_LOCKS.setdefault(key, threading.Lock())
    while not lock.acquire(timeout=0.05):
        if check_cancel is not None:
            check_cancel()
    try:
        yield
    finally:
        lock.release()


def _atomic_write_json(path: Path, data: Any) -> None:
    from ..imageio import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))


@dataclass
class FileStatus:
    name: str
    status: str  # missing / partial / verified / unpinned / corrupt
    size: int  # bytes on disk (the .part's size when partial)
    expected_size: int
    sha256: str | None  # pinned hash, else the recorded one
    pinned: bool


@dataclass(frozen=True)
class Presence:
    """How much of a model is on disk: its whole files, and its bytes (those of its whole
    files and of its ``.part`` files) out of all it takes."""

    files_present: int
    files: int
    bytes_present: int
    bytes: int

    def describe(self) -> str:
        """E.g. ``2 of 3 files, 1.2 of 4.4 GB``."""
        unit, div = ("GB", 1e9) if self.bytes >= 1e9 else ("MB", 1e6)
        return (f"{self.files_present} of {self.files} file{'' if self.files == 1 else 's'}, "
                f"{self.bytes_present / div:,.1f} of {self.bytes / div:,.1f} {unit}")

    def to_json(self) -> dict[str, int]:
        return {"files_present": self.files_present, "files": self.files,
                "bytes_present": self.bytes_present, "bytes": self.bytes}


@dataclass
class VerifyReport:
    model_id: str
    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)  # weight files the manifest does not list
    removed: list[str] = field(default_factory=list)  # stray files deleted by a repair
    status: str = MISSING

    def to_json(self) -> dict[str, Any]:
        return {"id": self.model_id, "status": self.status, "ok": self.ok,
                "missing": self.missing, "corrupt": self.corrupt, "repaired": self.repaired,
                "stray": self.stray, "removed": self.removed}


@dataclass
class ImportReport:
    imported: list[tuple[str, str]] = field(default_factory=list)  # (model id, file name)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # already in the store
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def to_json(self) -> dict[str, Any]:
        return {"imported": [f"{m}/{n}" for m, n in self.imported],
                "skipped": [f"{m}/{n}" for m, n in self.skipped],
                "rejected": [{"path": p, "reason": r} for p, r in self.rejected]}


class ModelStore:
    """Models on disk: status, pull (download), verify/repair, remove, import, disk usage."""

    def __init__(self, root: str | Path | None = None, manifest: Manifest | None = None, *,
                 allow_http_hosts: tuple[str, ...] = (), retries: int = 4,
                 backoff: float = 1.0, timeout: float = 30.0,
                 root_option: str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        # what chose the folder, named where a message says how to choose another: the
        # caller's option for a ``root`` it was given (``--models-dir``), else MEND_MODELS_DIR
        self.root_option = root_option if root is not None else "MEND_MODELS_DIR"
        self.manifest = manifest if manifest is not None else default_manifest()
        # plain-HTTP loopback hosts for test servers only; empty (HTTPS only) by default
        self.allow_http_hosts = tuple(allow_http_hosts)
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- paths and state
    def spec(self, model_id: str) -> ModelSpec:
        return self.manifest.get(model_id)

    def model_dir(self, model_id: str) -> Path:
        self.spec(model_id)
        return self._dir(model_id)

    def _dir(self, model_id: str) -> Path:
        """``<root>/<model_id>``, refused (:class:`ManifestError`) unless it is a folder directly
        inside the store root: ids are checked when the manifest is read, this keeps a bad id
        (``..``, a path) from ever reaching a delete. Checked on the path itself, not through
        links: a model folder may be a symbolic link to another disk (see :meth:`remove`)."""
        check_model_id(model_id)
        root = Path(os.path.abspath(self.root))
        d = Path(os.path.normpath(root / model_id))
        if d.parent != root or d.name != model_id:
            raise ManifestError(f"model id {model_id!r} names a folder outside the model "
                                f"store {self.root}")
        return self.root / model_id

    def file_path(self, model_id: str, name: str) -> Path:
        return self.model_dir(model_id) / safe_relpath(name)

    def other_folder_hint(self) -> str:
        """How to choose another model folder, as this one was chosen (for messages): with
        MEND_MODELS_DIR, the caller's option (``--models-dir``), or in general terms when the
        caller gave the folder and no option."""
        if self.root_option:
            return f"choose another folder with {self.root_option}"
        return "choose another model folder"

    def _make_dir(self, d: Path) -> None:
        """Create a folder of the store; a clear :class:`SaveFailed` instead of an OSError
        (``MEND_MODELS_DIR`` naming a file, no permission...)."""
        try:
            d.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            check = f" (check {self.root_option})" if self.root_option else ""
            raise SaveFailed(f"cannot use the model folder {self.root}: {d} or a folder above it "
                             f"is a file, not a folder{check}") from None
        except OSError as e:
            raise SaveFailed(f"cannot create the model folder {d}: {e.strerror or e}") from None

    def _state_path(self, model_id: str) -> Path:
        return self._dir(model_id) / STATE_FILE

    def _read_state(self, model_id: str) -> dict[str, Any]:
        p = self._state_path(model_id)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("files"), dict):
                return data
        except (OSError, json.JSONDecodeError):
            pass
        return {"files": {}}

    def _record(self, model_id: str, name: str, sha: str, pinned: bool) -> None:
        with self._lock:
            st = (self._dir(model_id) / safe_relpath(name)).stat()
            state = self._read_state(model_id)
            state["files"][name] = {"sha256": sha, "size": st.st_size,
                                    "mtime_ns": st.st_mtime_ns, "pinned": pinned,
                                    "verified_at": time.time()}
            _atomic_write_json(self._state_path(model_id), state)

    def _try_record(self, model_id: str, name: str, sha: str, pinned: bool,
                    state: dict[str, Any]) -> None:
        """Record during a status check; a read-only store still answers (it just re-hashes
        next time)."""
        try:
            self._record(model_id, name, sha, pinned)
            state["files"][name] = self._read_state(model_id)["files"].get(name)
        except (OSError, SaveFailed):
            pass

    def _mark_bad(self, model_id: str, f: ModelFile, expected: str, st: os.stat_result,
                  state: dict[str, Any]) -> None:
        """A file found damaged: drop the size + mtime its good content had (no cheap check
        passes it any more) and note the damaged content's, so status checks need not re-hash
        it each time; the sha256 stays (an unpinned file must still match it)."""
        bad = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        rec = state["files"].get(f.name)
        if rec is not None and rec.get(BAD_KEY) == bad and "size" not in rec:
            return
        try:
            with self._lock:
                fresh = self._read_state(model_id)
                r = fresh["files"].setdefault(f.name, {"sha256": expected, "pinned": f.pinned})
                for k in ("size", "mtime_ns", "verified_at"):
                    r.pop(k, None)
                r[BAD_KEY] = bad
                _atomic_write_json(self._state_path(model_id), fresh)
            state["files"][f.name] = r
        except (OSError, SaveFailed):
            pass  # a read-only store: the next check re-hashes and finds it again

    def _forget(self, model_id: str, names: list[str] | None = None) -> None:
        with self._lock:
            p = self._state_path(model_id)
            if not p.exists():
                return
            state = self._read_state(model_id)
            for n in (names if names is not None else list(state["files"])):
                state["files"].pop(n, None)
            _atomic_write_json(p, state)

    def _slot_files(self, spec: ModelSpec) -> list[str]:
        """Files in a slot model's folder (user-supplied weights), by relative name."""
        d = self._dir(spec.id)
        if not d.is_dir():
            return []
        return sorted(str(p.relative_to(d).as_posix()) for p in d.rglob("*")
                      if p.is_file() and not p.name.startswith(".")
                      and not p.name.endswith((PART_SUFFIX, LOCK_SUFFIX)))

    def slot_path(self, model_id: str) -> Path | None:
        """The user-supplied weights of a slot model: the file the slot's env var names, else the
        file recorded by the last explicit import (``mend models import FILE --id ID``), else
        the folder's only file when it holds exactly one (weights put there by hand).

        A file that merely appears in the folder never changes the answer: with a recorded
        file it is ignored; with several unrecorded files (or a recorded file since deleted)
        there is no answer (None, the slot is not configured) rather than a guess.
        """
        spec = self.spec(model_id)
        if not spec.slot:
            return None
        if spec.env and os.environ.get(spec.env):
            p = Path(os.environ[spec.env]).expanduser()
            return p if p.is_file() else None
        d = self._dir(spec.id)
        chosen = self._read_state(model_id).get(SLOT_KEY)
        if isinstance(chosen, str):
            try:
                p = d / safe_relpath(chosen)
            except ManifestError:
                return None
            return p if p.is_file() else None
        files = self._slot_files(spec)
        return (d / files[0]) if len(files) == 1 else None

    def _slot_name(self, spec: ModelSpec, p: Path) -> str | None:
        """The store name (relative to the slot's folder) of the slot's file ``p``; None for
        a file the slot's env var names (the user's own file, outside the store)."""
        if spec.env and os.environ.get(spec.env):
            return None
        try:
            return p.relative_to(self._dir(spec.id)).as_posix()
        except ValueError:
            return None

    def stray_files(self, model_id: str) -> list[str]:
        """Weight-like files in the model's folder that its manifest entry does not list
        (relative names). A loader could take them instead of the verified files: transformers
        prefers ``model.safetensors`` over a sharded index, diffusers a plain file over a
        variant. Hidden files and Mend's ``.part``/``.lock`` files are not weights."""
        spec = self.spec(model_id)
        d = self._dir(spec.id)
        if spec.bundled or spec.slot or not d.is_dir():
            return []
        listed = {f.name for f in spec.files}
        out = []
        for q in d.rglob("*"):
            rel = q.relative_to(d)
            if any(part.startswith(".") for part in rel.parts) or not is_weight_file(q.name):
                continue
            if q.is_dir() and not q.is_symlink():
                continue
            if rel.as_posix() not in listed:
                out.append(rel.as_posix())
        return sorted(out)

    def _remove_strays(self, model_id: str, names: list[str]) -> None:
        d = self._dir(model_id)
        top = d.resolve()
        for name in names:
            p = d / safe_relpath(name)
            # (the file itself may be a link: unlink removes the link, never its target)
            if not p.parent.resolve().is_relative_to(top):
                raise SaveFailed(f"not deleting {p}: it is not inside the model's folder {d}")
            try:
                p.unlink(missing_ok=True)
            except OSError as e:
                raise SaveFailed(f"cannot delete {p}: {e.strerror or e}") from None

    def expected_sha(self, model_id: str, f: ModelFile) -> str | None:
        if f.sha256:
            return f.sha256
        rec = self._read_state(model_id)["files"].get(f.name)
        return rec.get("sha256") if rec else None

    # ---------------------------------------------------------------- status
    def _check_file(self, model_id: str, f: ModelFile, deep: bool,
                    state: dict[str, Any],
                    check_cancel: Callable[[], None] | None = None,
                    on_hash: HashProgress | None = None) -> FileStatus:
        fs = self._check_hash(model_id, f, deep, state, check_cancel, on_hash)
        if fs.status in (VERIFIED, UNPINNED) and f.name.endswith(INDEX_SUFFIX) \
                and self.unlisted_shards(model_id, f.name):
            path = self._dir(model_id) / safe_relpath(f.name)
            self._mark_bad(model_id, f, fs.sha256 or "", path.stat(), state)
            return replace(fs, status=CORRUPT)
        return fs

    def unlisted_shards(self, model_id: str, name: str) -> list[str]:
        """The files the shard index ``name`` of the model (``*.index.json``, as on disk) names
        in its ``weight_map`` that the manifest does not list for the model: ``["<unreadable>"]``
        for an index that is not one (transformers would not load it either)."""
        spec = self.spec(model_id)
        listed = {f.name for f in spec.files}
        folder = PurePosixPath(name).parent
        try:
            data = json.loads((self._dir(model_id) / safe_relpath(name)).read_bytes())
            shards = data["weight_map"].values()
        except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
            return ["<unreadable>"]
        bad = set()
        for shard in shards:
            try:
                if (folder / safe_relpath(shard)).as_posix() in listed:
                    continue
            except (ManifestError, TypeError):
                pass
            bad.add(str(shard))
        return sorted(bad)

    def _check_hash(self, model_id: str, f: ModelFile, deep: bool, state: dict[str, Any],
                    check_cancel: Callable[[], None] | None = None,
                    on_hash: HashProgress | None = None) -> FileStatus:
        path = self._dir(model_id) / safe_relpath(f.name)
        part = path.with_name(path.name + PART_SUFFIX)
        rec = state["files"].get(f.name)
        expected = f.sha256 or (rec or {}).get("sha256")
        if not path.is_file():
            if part.is_file():
                return FileStatus(f.name, PARTIAL, part.stat().st_size, f.size, expected,
                                  f.pinned)
            return FileStatus(f.name, MISSING, 0, f.size, expected, f.pinned)
        st = path.stat()
        good = VERIFIED if f.pinned else UNPINNED
        if f.pinned and f.size_exact and st.st_size != f.size:
            return FileStatus(f.name, CORRUPT, st.st_size, f.size, expected, f.pinned)
        known = None if deep else self._known(f, rec, st, good)
        if known is not None:
            return known
        # one hash of a file at a time in this process: a second caller (the Models dialog's
        # status check and its recommendation, two pools) waits, then reads what the first
        # recorded instead of hashing the same GB again
        with _hash_lock(path, check_cancel):
            if not deep:
                rec = self._read_state(model_id)["files"].get(f.name)
                expected = f.sha256 or (rec or {}).get("sha256")
                known = self._known(f, rec, st, good)
                if known is not None:
                    return known
            return self._hash_and_record(model_id, f, path, st, expected, good, state,
                                         check_cancel, on_hash)

    @staticmethod
    def _known(f: ModelFile, rec: dict[str, Any] | None, st: os.stat_result,
               good: str) -> FileStatus | None:
        """The file's status from its record when the record is of this very content (size
        and mtime): verified, or found damaged before; None when it must be hashed."""
        expected = f.sha256 or (rec or {}).get("sha256")
        if rec is None:
            return None
        if (rec.get("sha256") == expected and rec.get("size") == st.st_size
                and rec.get("mtime_ns") == st.st_mtime_ns):
            return FileStatus(f.name, good, st.st_size, f.size, expected, f.pinned)
        if rec.get(BAD_KEY) == {"size": st.st_size, "mtime_ns": st.st_mtime_ns}:
            # the very content found damaged before: no need to hash it again
            return FileStatus(f.name, CORRUPT, st.st_size, f.size, expected, f.pinned)
        return None

    def _hash_and_record(self, model_id: str, f: ModelFile, path: Path, st: os.stat_result,
                         expected: str | None, good: str, state: dict[str, Any],
                         check_cancel: Callable[[], None] | None,
                         on_hash: HashProgress | None = None) -> FileStatus:
        if on_hash is None:
            actual = sha256_file(path, check_cancel)
        else:
            on_hash(f.name, 0, st.st_size)
            actual = sha256_file(path, check_cancel,
                                 lambda done: on_hash(f.name, done, st.st_size))
        if expected is None:  # unpinned and never seen: record it now
            self._try_record(model_id, f.name, actual, False, state)
            return FileStatus(f.name, UNPINNED, st.st_size, f.size, actual, False)
        if actual != expected:
            self._mark_bad(model_id, f, expected, st, state)
            return FileStatus(f.name, CORRUPT, st.st_size, f.size, expected, f.pinned)
        self._try_record(model_id, f.name, actual, f.pinned, state)
        return FileStatus(f.name, good, st.st_size, f.size, expected, f.pinned)

    def file_statuses(self, model_id: str, deep: bool = False,
                      check_cancel: Callable[[], None] | None = None,
                      on_hash: HashProgress | None = None) -> list[FileStatus]:
        """Each file's status; ``deep`` hashes every file, else only one not recorded or
        changed since (``check_cancel`` runs between the chunks of a hash: a multi-GB file
        takes seconds; ``on_hash(name, done, size)`` reports a hash's progress)."""
        spec = self.spec(model_id)
        state = self._read_state(model_id)
        if spec.slot:
            p = self.slot_path(model_id)
            if p is None:
                return []
            size = p.stat().st_size
            name = self._slot_name(spec, p)
            if name is None:  # the env var's file: the user's own, outside the store
                return [FileStatus(p.name, UNPINNED, size, size, None, False)]
            # the hash recorded at import (or at first sight) is checked like an unpinned file's
            f = ModelFile(name=name, url=None, size=size, sha256=None, size_exact=False)
            return [self._check_file(model_id, f, deep, state, check_cancel, on_hash)]
        return [self._check_file(model_id, f, deep, state, check_cancel, on_hash)
                for f in spec.files]

    @staticmethod
    def _combine(statuses: list[str]) -> str:
        if not statuses:
            return MISSING
        if CORRUPT in statuses:
            return CORRUPT
        if all(s == MISSING for s in statuses):
            return MISSING
        if any(s in (MISSING, PARTIAL) for s in statuses):
            return PARTIAL
        return UNPINNED if UNPINNED in statuses else VERIFIED

    def status(self, model_id: str, token: Any = None) -> str:
        """missing / partial / verified / unpinned / corrupt / bundled / not configured.

        Cheap for a file verified before (its size + mtime are compared), but a file not
        recorded yet, or changed since, is hashed: seconds for a multi-GB file. ``token`` (a
        CancelToken) stops that hash between chunks (``Cancelled``; that file stays unrecorded)."""
        spec = self.spec(model_id)
        if spec.bundled:
            return BUNDLED if _package_present(spec) else MISSING
        check = token.check if token is not None else None
        if spec.slot:
            fss = self.file_statuses(model_id, check_cancel=check)
            return self._combine([fs.status for fs in fss]) if fss else NOT_CONFIGURED
        status = self._combine([fs.status
                                for fs in self.file_statuses(model_id, check_cancel=check)])
        if status in (VERIFIED, UNPINNED) and self.stray_files(model_id):
            return CORRUPT  # unlisted weights a loader could take: not loadable as it is
        return status

    def presence(self, model_id: str, token: Any = None) -> Presence:
        """How much of the model is on disk (what "partial" means for it), by the same cheap
        check as :meth:`status` (``token`` as there). A bundled model has no files."""
        spec = self.spec(model_id)
        fss = [] if spec.bundled else self.file_statuses(
            model_id, check_cancel=token.check if token is not None else None)
        whole = [fs for fs in fss if fs.status in (VERIFIED, UNPINNED)]
        # (a whole file's own size: an unpinned file's in the manifest is an estimate)
        return Presence(
            len(whole), len(fss), sum(fs.size for fs in fss if fs.status != CORRUPT),
            sum(fs.size if fs.status in (VERIFIED, UNPINNED) else max(fs.expected_size, fs.size)
                for fs in fss))

    def missing_bytes(self, model_id: str) -> int:
        """Bytes ``pull`` would still fetch for this model (whole files, before resume)."""
        spec = self.spec(model_id)
        if spec.bundled or spec.slot:
            return 0
        state = self._read_state(model_id)
        return sum(f.size for f in spec.files
                   if self._check_file(model_id, f, False, state).status not in (VERIFIED, UNPINNED))

    def is_installed(self, model_id: str) -> bool:
        return self.status(model_id) in (VERIFIED, UNPINNED, BUNDLED)

    # ---------------------------------------------------------------- load-time check
    def require(self, model_id: str) -> Path:
        """The model's folder, after a cheap integrity check. Raises ModelMissing /
        ModelFileCorrupt (a ChecksumMismatch) so the caller can offer a repair."""
        spec = self.spec(model_id)
        if spec.bundled:
            if not _package_present(spec):
                raise ModelMissing(model_id, f"it ships with the Python package "
                                             f"'{spec.extra.get('package')}', which is not installed")
            return self._dir(model_id)
        if spec.slot:
            p = self.slot_path(model_id)
            if p is None:
                hint = spec.notes or "this slot needs your own weights"
                raise ModelMissing(model_id, hint)
            for fs in self.file_statuses(model_id):
                if fs.status == CORRUPT:
                    raise ModelFileCorrupt(
                        model_id, fs.name, fs.sha256 or "", sha256_file(p),
                        f"Import your weights again with: mend models import FILE --id {model_id}")
            return p.parent
        state = self._read_state(model_id)
        missing = []
        for f in spec.files:
            fs = self._check_file(model_id, f, False, state)
            if fs.status in (MISSING, PARTIAL):
                missing.append(f.name)
            elif fs.status == CORRUPT:
                path = self.file_path(model_id, f.name)
                actual = sha256_file(path) if path.is_file() else ""
                bad = (self.unlisted_shards(model_id, f.name)
                       if actual and actual == fs.sha256 and f.name.endswith(INDEX_SUFFIX)
                       else [])
                why = (f"its shard index {f.name} names weight files that are not in Mend's "
                       f"model list and were never checked ({', '.join(bad[:3])})"
                       if bad else None)
                raise ModelFileCorrupt(model_id, f.name, fs.sha256 or "", actual or "size differs",
                                       why=why)
        if missing:
            fix = install_hint(model_id)
            if len(missing) == len(spec.files):
                raise ModelMissing(model_id, fix if dl.offline_mode() else "")
            raise ModelMissing(model_id, f"{len(missing)} of its files are missing ({fix})")
        strays = self.stray_files(model_id)
        if strays:
            raise UnexpectedModelFiles(model_id, self._dir(model_id), strays)
        return self._dir(model_id)

    # ---------------------------------------------------------------- download
    def pull(self, model_id: str, progress: dl.ProgressFn | None = None,
             token: Any = None) -> str:
        """Download whatever of the model is missing; returns the model's status afterwards.

        Weight files in the model's folder that the manifest does not list are deleted first
        (a loader could take them instead of the verified files; see :meth:`stray_files`) —
        unless the pull cannot happen: offline with files to fetch, it raises
        :class:`OfflineError` having deleted nothing, and with less free disk space than the
        files still need (less what their ``.part`` files hold), :class:`LocalDiskError`.
        ``progress(DownloadProgress)`` per chunk; ``token`` (a CancelToken) cancels between
        chunks (the ``.part`` stays for a later resume).
        """
        spec = self.spec(model_id)
        if spec.bundled:
            return BUNDLED
        if spec.slot:
            raise UsageError(f"'{model_id}' has no public weights: {spec.notes}")
        state = self._read_state(model_id)
        todo, corrupt = [], []
        for f in spec.files:
            fs = self._check_file(model_id, f, False, state)
            if fs.status in (VERIFIED, UNPINNED):
                continue
            if fs.status == CORRUPT:
                corrupt.append(f.name)
            todo.append(f)
        if todo and dl.offline_mode():  # nothing deleted: the damaged file (and any stray
            # weights) are all the user has here; a failed pull leaves the folder as it was
            if corrupt:
                raise OfflineError(
                    f"'{model_id}' is damaged ({', '.join(corrupt)}) and offline mode is on "
                    "(MEND_OFFLINE=1): it was kept as it is; repairing it needs the network, "
                    "or import a good copy (mend models import PATH)")
            raise OfflineError(
                f"'{model_id}' is not installed and offline mode is on (MEND_OFFLINE=1): "
                "import it from a folder or an offline pack (mend models import PATH)")
        if todo:  # (before anything is deleted: a refused pull leaves the folder as it was)
            _sweep_import_temps(self._dir(model_id), recursive=True)
            self.check_space(self._bytes_to_write(model_id, todo), f"'{model_id}'",
                             self._dir(model_id))
        self._remove_strays(model_id, self.stray_files(model_id))
        if not todo:
            return self.status(model_id)
        for name in corrupt:
            p = self.file_path(model_id, name)
            try:
                p.unlink(missing_ok=True)
            except OSError as e:
                raise SaveFailed(f"cannot delete the damaged {p}: {e.strerror or e}") from None
        if corrupt:
            self._forget(model_id, corrupt)
        total = sum(f.size for f in todo)
        base = 0
        check = token.check if token is not None else None
        # a pull that fails (a wrong hash, the network, a Stop) takes back the folders it made
        # that it leaves empty: a model folder with nothing in it is no trace to leave
        made = [d for f in todo for d in _new_folders(self._dir(model_id),
                                                      self.file_path(model_id, f.name).parent)]
        try:
            for i, f in enumerate(todo):
                if not f.url:
                    raise DownloadError(
                        f"{model_id}/{f.name} has no download address in the manifest")
                self._download_file(model_id, f, progress, check, base, total, i, len(todo))
                base += f.size
        except BaseException:
            _remove_empty(made)  # (one holding a .part kept for a resume stays)
            raise
        return self.status(model_id)

    def _bytes_to_write(self, model_id: str, files: list[ModelFile]) -> int:
        """Bytes a pull of ``files`` still adds to the disk: each file's size less what its
        ``.part`` holds, less a damaged copy's (deleted before its download)."""
        need = 0
        for f in files:
            dest = self.file_path(model_id, f.name)
            part = dest.with_name(dest.name + PART_SUFFIX)
            need += max(0, f.size - _file_size(part)) - _file_size(dest)
        return need

    def space_needed(self, model_id: str) -> int:
        """Bytes ``pull`` would still add to the disk for this model (resumed ``.part`` files
        counted as done); 0 when nothing is to be downloaded."""
        spec = self.spec(model_id)
        if spec.bundled or spec.slot:
            return 0
        state = self._read_state(model_id)
        todo = [f for f in spec.files
                if self._check_file(model_id, f, False, state).status not in (VERIFIED, UNPINNED)]
        return self._bytes_to_write(model_id, todo)

    def free_space(self) -> int | None:
        """Free bytes on the disk of the store's folder (of its nearest existing parent while
        it is not made yet); None when the system does not say."""
        return free_space(self.root)

    def check_space(self, need: int, what: str, folder: Path | None = None) -> None:
        """Raise :class:`LocalDiskError` when the store's disk has less free space than ``need``
        bytes (``what``: the model or profile, for the message): a download that cannot fit
        is refused before it starts, instead of filling the disk to its last byte and failing
        there (a laptop's system disk, full, troubles every program on it). ``folder``: the
        model folder the download goes to, whose disk is checked instead (it may be a link to
        another disk; until it is made, the store's disk)."""
        where = folder if folder is not None and os.path.lexists(folder) else self.root
        free = short_of_space(where, need)
        if free is not None:
            raise LocalDiskError(
                f"not enough disk space to download {what}: {_mb(need)} to download, "
                f"{_mb(free)} free on the disk of {where}; free some space (or "
                f"{self.other_folder_hint()}), then run the same command again")

    def _download_file(self, model_id: str, f: ModelFile, progress: dl.ProgressFn | None,
                       check: Callable[[], None] | None, base: int, total: int, index: int,
                       count: int) -> None:
        dest = self.file_path(model_id, f.name)
        part = dest.with_name(dest.name + PART_SUFFIX)
        # each file checked again: the disk may have filled up since the model's check
        self.check_space(self._bytes_to_write(model_id, [f]), f"{model_id}/{f.name}",
                         self._dir(model_id))
        self._make_dir(dest.parent)
        rate = _Rate()

        def on_bytes(done: int, ftotal: int | None) -> None:
            if not os.path.exists(part):  # its folder deleted: every further byte is lost
                raise _folder_gone(model_id, f.name, dest.parent)
            speed = rate.update(done)
            if progress:
                progress(dl.DownloadProgress(model_id, f.name, done, ftotal or f.size,
                                             base + done, total, speed, index, count))

        try:
            with _part_lock(part, self.other_folder_hint()):
                actual = dl.fetch(f.url or "", part, allowed_hosts=self.manifest.hosts,
                                  allow_http_hosts=self.allow_http_hosts,
                                  expected_size=f.size if f.size_exact else None,
                                  on_bytes=on_bytes, check_cancel=check, retries=self.retries,
                                  backoff=self.backoff, timeout=self.timeout)
                self._finish_download(model_id, f, part, dest, actual, check)
        except FileNotFoundError:  # (the .part, the folder: gone under the download)
            raise _folder_gone(model_id, f.name, dest.parent) from None

    def _finish_download(self, model_id: str, f: ModelFile, part: Path, dest: Path,
                         received: str, check: Callable[[], None] | None = None) -> None:
        """Check the ``.part`` on disk — the file that is renamed, not the bytes this process
        received — then rename it into place and record it. Called with the part lock held.
        ``check`` (cancel) runs while it is hashed: a stopped check keeps the complete ``.part``
        (the next pull only hashes it again)."""
        before = part.stat()
        actual = sha256_file(part, check)
        if actual != received:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{model_id}/{f.name}: the downloaded file changed on disk while "
                                "it was being written (another program?); deleted it, run the "
                                "same command again")
        if f.sha256 and actual != f.sha256:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"{model_id}/{f.name}", f.sha256, actual,
                "the download was deleted and nothing was installed; run the same command "
                "again to download it afresh (the same mismatch again: the host serves another "
                "file than the one Mend pins)")
        if f.size_exact and before.st_size != f.size:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{model_id}/{f.name}: got {before.st_size} bytes, "
                                f"expected {f.size}")
        from ..imageio import replace_file

        # (retried while a virus scanner still reads the file just downloaded: Windows refuses
        # to rename a file open without shared deletion)
        try:
            replace_file(part, dest)
        except OSError as e:
            raise LocalDiskError(f"{model_id}/{f.name}: cannot move the verified download into "
                                 f"place ({e.strerror or e}); it was kept as {part}") from None
        after = dest.stat()
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            dest.unlink(missing_ok=True)
            raise DownloadError(f"{model_id}/{f.name}: the downloaded file changed on disk while "
                                "it was being checked (another program?); deleted it, run the "
                                "same command again")
        self._record(model_id, f.name, actual, f.pinned)

    # ---------------------------------------------------------------- verify / remove
    def verify(self, model_id: str, repair: bool = False,
               progress: dl.ProgressFn | None = None, token: Any = None,
               hash_progress: dl.ProgressFn | None = None) -> VerifyReport:
        """Full sha256 of every file; the report's status is that of this full check (a file
        found damaged is "corrupt" and loses its verification record, so the next load
        re-hashes it and refuses it). Weight files the manifest does not list are reported in
        ``stray`` (status "corrupt": a loader could take them).

        ``repair=True`` deletes the stray files, then deletes damaged files and pulls them
        again (needs the network, or raises OfflineError after deleting no damaged file). A
        slot's file (the user's own weights) is checked against the hash recorded at import
        but never repaired: import it again. ``token`` (a CancelToken) stops the hashing
        between chunks (``Cancelled``) as well as a repair's download.

        ``hash_progress(DownloadProgress)`` after each chunk hashed: ``done``/``total`` are the
        bytes of the model's files hashed so far and in all, ``file_done``/``file_total`` those
        of the file being hashed (``progress`` is the repair's download's, as for :meth:`pull`).
        """
        spec = self.spec(model_id)
        rep = VerifyReport(model_id)
        if spec.bundled:
            rep.status = self.status(model_id)
            return rep
        statuses = self.file_statuses(
            model_id, deep=True, check_cancel=token.check if token is not None else None,
            on_hash=None if hash_progress is None else self._hash_reporter(model_id,
                                                                           hash_progress))
        for fs in statuses:
            if fs.status in (VERIFIED, UNPINNED):
                rep.ok.append(fs.name)
            elif fs.status == CORRUPT:
                rep.corrupt.append(fs.name)
            else:
                rep.missing.append(fs.name)
        status = self._combine([fs.status for fs in statuses])
        if spec.slot:
            rep.status = status if statuses else NOT_CONFIGURED
            return rep
        rep.stray = self.stray_files(model_id)
        if repair and rep.stray:
            self._remove_strays(model_id, rep.stray)
            rep.removed = list(rep.stray)
        if repair and (rep.corrupt or rep.missing):
            if dl.offline_mode():
                raise OfflineError(
                    f"cannot repair '{model_id}' in offline mode (MEND_OFFLINE=1): "
                    "import a good copy with: mend models import PATH")
            for name in rep.corrupt:
                path = self.file_path(model_id, name)
                try:
                    path.unlink(missing_ok=True)
                except OSError as e:  # a read-only disk, a file another user owns...
                    raise SaveFailed(f"cannot delete the damaged {path}: "
                                     f"{e.strerror or e}") from None
            self._forget(model_id, rep.corrupt)
            self.pull(model_id, progress, token)
            rep.repaired = rep.corrupt + rep.missing
        if repair:
            rep.status = self.status(model_id)
        elif status in (VERIFIED, UNPINNED) and rep.stray:
            rep.status = CORRUPT
        else:
            rep.status = status
        return rep

    def _hash_reporter(self, model_id: str, progress: dl.ProgressFn) -> HashProgress:
        """An ``on_hash`` for :meth:`file_statuses` (deep) that reports the hash of the whole
        model to ``progress``, as a download's progress is reported."""
        spec = self.spec(model_id)
        if spec.slot:
            p = self.slot_path(model_id)
            sizes = [_file_size(p)] if p is not None and self._slot_name(spec, p) else []
        else:  # (a pinned file of the wrong size is found damaged without being hashed)
            sizes = []
            for f in spec.files:
                q = self._dir(model_id) / safe_relpath(f.name)
                size = _file_size(q)
                if q.is_file() and not (f.pinned and f.size_exact and size != f.size):
                    sizes.append(size)
        total, count = sum(sizes), len(sizes)
        rate = _Rate()
        at = {"name": None, "index": -1, "base": 0, "size": 0}

        def on_hash(name: str, done: int, size: int) -> None:
            if name != at["name"]:  # the next file
                at["base"] += at["size"]
                at.update(name=name, index=at["index"] + 1, size=size)
            whole = at["base"] + done
            progress(dl.DownloadProgress(model_id, name, done, size, whole, max(total, whole),
                                         rate.update(whole), at["index"], max(count, 1)))

        return on_hash

    def remove(self, model_id: str) -> int:
        """Delete the model's folder; returns the bytes freed.

        A model folder that is a symbolic link (models kept on another disk) loses only the
        link: the folder it points to and its files are left in place (0 bytes freed), since
        they may be shared or outside what Mend manages. A model another Mend process is
        downloading is not removed (:class:`SaveFailed`): its ``.part`` would be deleted under
        that download.
        """
        spec = self.spec(model_id)
        d = self._dir(spec.id)
        try:
            if d.is_symlink():
                d.unlink()
                return 0
            if not d.exists():
                return 0
            if not d.resolve().is_relative_to(self.root.resolve()):  # (not a link: see _dir)
                raise SaveFailed(f"not removing {d}: it is not inside the model store")
            with _no_downloads_in(d, model_id):
                freed = _tree_size(d)
                shutil.rmtree(d)
        except OSError as e:
            raise SaveFailed(f"cannot remove {d}: {e.strerror or e}") from None
        return freed

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk per model id (including .part files) and ``"total"``."""
        out: dict[str, int] = {}
        if self.root.is_dir():
            for d in sorted(self.root.iterdir()):
                if d.is_dir() and d.name in self.manifest:
                    out[d.name] = _tree_size(d)
        out["total"] = sum(out.values())
        return out

    # ---------------------------------------------------------------- import
    def install_file(self, model_id: str, name: str, src: Path, *, sha256: str | None = None,
                     move: bool = False) -> None:
        """Put ``src`` into the store as ``model_id/name`` after checking its hash (pinned, or
        ``sha256`` for an unpinned file — recorded). Temp file + rename, never half a file."""
        spec = self.spec(model_id)
        if spec.slot:
            pinned = False
            expected = sha256
        else:
            f = spec.get_file(name)
            pinned = f.pinned
            expected = f.sha256 or sha256
        actual = sha256 if (sha256 and move) else sha256_file(src)
        if expected and actual != expected:
            raise ChecksumMismatch(f"{model_id}/{name}", expected, actual)
        dest = self.file_path(model_id, name)
        made = _new_folders(self._dir(model_id), dest.parent)
        try:
            self._make_dir(dest.parent)
            _sweep_import_temps(dest.parent)
            self._put_file(model_id, name, src, dest, actual, move)
        except BaseException:
            _remove_empty(made)  # (a failed import leaves no empty model folder behind)
            raise
        self._record(model_id, name, actual, pinned)
        if spec.slot:  # the file just imported is the slot's file from now on
            with self._lock:
                state = self._read_state(model_id)
                state[SLOT_KEY] = name
                _atomic_write_json(self._state_path(model_id), state)

    def _put_file(self, model_id: str, name: str, src: Path, dest: Path, actual: str,
                  move: bool) -> None:
        """Move (``move``) or copy ``src`` to ``dest``; a copy goes to a temporary file beside
        ``dest``, is hashed there (``actual`` expected) and renamed into place. A move to
        another disk (a model folder that links to one) is such a copy."""
        from ..imageio import replace_file

        try:
            if move:
                try:
                    replace_file(src, dest)
                    return
                except OSError as e:
                    if e.errno != errno.EXDEV:
                        raise
            # created like a download (0666 less the umask: readable by whoever the user
            # lets read their files), not mkstemp's owner-only 0600
            tmp = str(dest.parent / f".import-{os.getpid()}-{os.urandom(4).hex()}"
                                    f"{PART_SUFFIX}")
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            try:
                shutil.copyfile(src, tmp)
                if sha256_file(Path(tmp)) != actual:
                    raise ChecksumMismatch(f"{model_id}/{name}", actual,
                                           sha256_file(Path(tmp)))
                replace_file(tmp, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    Path(tmp).unlink(missing_ok=True)
                raise
            if move:
                with contextlib.suppress(OSError):
                    src.unlink()
        except OSError as e:  # a full or read-only disk, no permission, a source gone...
            raise SaveFailed(
                f"cannot import {src} as {model_id}/{name} ({_os_detail(e)}); free some space "
                f"or check that the model folder can be written (or "
                f"{self.other_folder_hint()}), then import it again") from None

    def import_path(self, path: str | Path, model_id: str | None = None) -> ImportReport:
        """Import model files from a folder, a single file, or an offline pack (.zip).

        Files are recognised by their sha256 (pinned files) or, inside a model's folder, by
        their name (unpinned files, e.g. a transformers config next to its pinned weights;
        a folder named like a model id or a copy of another store counts as that model's
        folder). ``model_id`` forces the target model (needed for unpinned files). A slot such
        as ``reflection-yolo`` is filled only by one file named with its id
        (``import_path(FILE, "reflection-yolo")``), stored under its own name made safe by
        :func:`slot_file_name`; a folder is never imported into a slot.
        """
        from . import packs

        p = Path(path).expanduser()
        if not p.exists():
            raise UsageError(f"{p}: no such file or folder")
        if p.is_file() and packs.is_pack(p):
            return packs.import_pack(p, self)
        if model_id is not None:
            self.spec(model_id)
        rep = ImportReport()
        if p.is_file():
            self._import_single(p, model_id, rep)
            return rep
        roots: dict[str, Path] = {}
        if model_id is not None:
            roots[model_id] = p
        elif p.name in self.manifest:
            roots[p.name] = p
        for sub in p.iterdir():
            if sub.is_dir() and sub.name in self.manifest and sub.name not in roots:
                roots[sub.name] = sub
        # pinned files anywhere below, found by size then hash
        by_size: dict[int, list[tuple[ModelSpec, ModelFile]]] = {}
        for spec in self.manifest:
            for f in spec.files:
                if f.pinned:
                    by_size.setdefault(f.size, []).append((spec, f))
        seen: set[tuple[str, str]] = set()
        for cand in sorted(q for q in p.rglob("*") if q.is_file() and not q.is_symlink()):
            if cand.name.startswith(".") or cand.name.endswith(PART_SUFFIX):
                continue
            matches = by_size.get(cand.stat().st_size)
            if not matches:
                continue
            digest = _source_sha(cand, rep)
            if digest is None:
                continue
            for spec, f in matches:
                if f.sha256 != digest or (spec.id, f.name) in seen:
                    continue
                seen.add((spec.id, f.name))
                self._import_one(spec.id, f.name, cand, digest, rep)
                rel = f.name.split("/")
                if cand.parts[-len(rel):] == tuple(rel) and spec.id not in roots:
                    roots[spec.id] = Path(*cand.parts[: len(cand.parts) - len(rel)])
        for mid, root in roots.items():
            spec = self.spec(mid)
            if spec.slot:  # a slot takes one file, named explicitly, never a whole folder
                rep.rejected.append((str(root), (
                    f"{mid} takes one weights file of your own; import that file with: "
                    f"mend models import FILE --id {mid}")))
                continue
            for f in spec.files:
                if (mid, f.name) in seen:
                    continue
                cand = root / safe_relpath(f.name)
                if cand.is_file() and not cand.is_symlink():
                    seen.add((mid, f.name))
                    self._import_one(mid, f.name, cand, None, rep)
        if not rep.imported and not rep.skipped and not rep.rejected:
            rep.rejected.append((str(p), "no file of a known model was found here"))
        return rep

    def _import_single(self, p: Path, model_id: str | None, rep: ImportReport) -> None:
        digest = _source_sha(p, rep)
        if digest is None:
            return
        for spec in ([self.spec(model_id)] if model_id else list(self.manifest)):
            if spec.slot and model_id:
                if spec.loader == "yolo" and p.suffix.lower() != ".onnx":
                    # a .pt is a pickle (it runs code when loaded): Mend only loads ONNX exports
                    rep.rejected.append((str(p), (
                        f"{spec.id} takes an ONNX export of your YOLO model, not "
                        f"{p.suffix or 'a file without an extension'}: run yolo export "
                        f"model={p.name} format=onnx, then import the .onnx file")))
                    return
                self._import_one(spec.id, slot_file_name(p.name), p, digest, rep)
                return
            for f in spec.files:
                if f.sha256 == digest or (model_id and not f.pinned and
                                          f.name.split("/")[-1] == p.name):
                    self._import_one(spec.id, f.name, p, digest, rep)
                    return
        rep.rejected.append((str(p), self._unknown_file_reason(p, model_id, digest)))

    def _unknown_file_reason(self, p: Path, model_id: str | None, digest: str) -> str:
        """Why a single file matched no model file: not the pinned file it is named like (or
        of the model named), with how it differs - a copy cut short is the usual case - else a
        ZIP archive cut short (an offline pack copied in part) or no known file at all."""
        size = p.stat().st_size
        specs = [self.spec(model_id)] if model_id else list(self.manifest)
        if model_id and not specs[0].files:
            return f"{model_id} takes no file: it comes with Mend (its Python package)"
        named = [(s, f) for s in specs for f in s.files
                 if f.pinned and f.name.split("/")[-1] == p.name]
        if not named and model_id and len(specs[0].files) == 1 and specs[0].files[0].pinned:
            named = [(specs[0], specs[0].files[0])]  # (a one-file model: a renamed copy)
        if len(named) == 1:
            spec, f = named[0]
            if f.size_exact and size != f.size:
                how = (f"it is {size:,} bytes, the pinned file {f.size:,} bytes"
                       + (" (cut short: an interrupted download or copy?)" if size < f.size
                          else ""))
            else:
                how = f"its sha256 {digest[:12]}… is not the pinned {(f.sha256 or '')[:12]}…"
            return (f"not the file Mend pins for {spec.id}/{f.name}: {how}; get a complete "
                    f"copy, or download it with: mend models pull {spec.id}")
        if _damaged_zip(p):
            return ("a ZIP archive that is cut short or damaged (an offline pack or a weights "
                    "file copied only in part?): copy it again")
        if model_id:
            return (f"not a file of {model_id} (sha256 {digest[:12]}…); its files are: "
                    + ", ".join(f.name for f in self.spec(model_id).files))
        return (f"not a file of any model Mend knows (sha256 {digest[:12]}…); pass the model "
                "id for unpinned files")

    def _import_one(self, model_id: str, name: str, src: Path, digest: str | None,
                    rep: ImportReport) -> None:
        spec = self.spec(model_id)
        state = self._read_state(model_id)
        if not spec.slot:
            f = spec.get_file(name)
            fs = self._check_file(model_id, f, False, state)
            if fs.status in (VERIFIED, UNPINNED):
                rep.skipped.append((model_id, name))
                return
        digest = digest or _source_sha(src, rep)
        if digest is None:
            return
        try:
            self.install_file(model_id, name, src, sha256=None if spec.slot else digest)
        except ChecksumMismatch as e:
            rep.rejected.append((str(src), str(e)))
            return
        rep.imported.append((model_id, name))


def slot_file_name(name: str) -> str:
    """The name a slot file gets in the store: its own name with ``:``, ``\\``, ``/`` and control
    characters replaced by ``_``, without leading dots (hidden names are Mend's own), and never
    ending like Mend's ``.part``/``.lock`` files."""
    safe = "".join("_" if c in ":\\/" or ord(c) < 32 else c for c in name).lstrip(".")
    if not safe:
        safe = "weights"
    if safe.endswith((PART_SUFFIX, LOCK_SUFFIX)):
        safe += "_"
    return safe


def _try_lock(fh: Any) -> bool:
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _same_file(fh: Any, path: Path) -> bool:
    try:
        a, b = os.fstat(fh.fileno()), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def _part_lock(part: Path, other_folder: str = "choose another folder with MEND_MODELS_DIR"):
    """One writer per ``.part`` file across processes (the app and ``mend models pull``).
    ``other_folder``: how to choose another model folder (:meth:`ModelStore.other_folder_hint`).

    The lock is an OS lock on ``<part>.lock``. Only its holder removes that file, and does so
    while it still holds the lock; a process that locked a lock file removed meanwhile (opened
    just before the holder finished) sees it is no longer the file at that path and takes the
    new one, so two processes never both hold the lock. A refused process leaves the file alone.
    """
    lock = part.with_name(part.name + LOCK_SUFFIX)
    name = part.name[:-len(PART_SUFFIX)]
    for _ in range(20):
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
            fh = open(lock, "a+b")  # noqa: SIM115 - held for the whole download
        except FileNotFoundError:  # its folder, new and empty, taken back meanwhile by a
            continue  # failed pull or import of another process (see _remove_empty): again
        except OSError as e:  # a read-only disk, a folder another user owns...
            raise LocalDiskError(
                f"cannot download {name}: the model folder {part.parent} cannot be written "
                f"({e.strerror or e}); check its permissions and free space, or "
                f"{other_folder}") from None
        if not _try_lock(fh):
            fh.close()  # another process holds it: never touch its lock file
            raise DownloadError(f"{name} is being downloaded by another Mend process; "
                                "wait for it to finish")
        if os.name == "nt" or _same_file(fh, lock):
            break
        fh.close()  # its holder removed this lock file while we opened it: take the new one
    else:
        raise DownloadError(f"{name}: could not take the download lock; try again")
    try:
        yield
    finally:
        if os.name == "nt":  # an open file cannot be removed there: release, then try
            fh.close()
            with contextlib.suppress(OSError):
                lock.unlink()
        else:
            with contextlib.suppress(OSError):
                lock.unlink()  # still locked by us: nobody else is using this file
            fh.close()


@contextlib.contextmanager
def _no_downloads_in(folder: Path, model_id: str):
    """Hold the download lock (see :func:`_part_lock`) of every ``.part`` in ``folder`` while
    the block runs, so that no Mend process writes one meanwhile; :class:`SaveFailed` naming
    the file when another process is downloading it. (Windows: each lock is only tested -
    a file another process holds open cannot be deleted there anyway.)"""
    held = []
    try:
        for lock in sorted(folder.rglob("*" + PART_SUFFIX + LOCK_SUFFIX)):
            try:
                fh = open(lock, "a+b")  # noqa: SIM115 - closed below
            except OSError:
                continue  # (the removal itself then says what is wrong with the folder)
            held.append(fh)
            if not _try_lock(fh):
                name = lock.name[:-len(PART_SUFFIX + LOCK_SUFFIX)]
                raise SaveFailed(
                    f"not removing '{model_id}': {name} is being downloaded by another Mend "
                    "process; stop that download or wait for it to end, then remove it")
            if os.name == "nt":
                held.pop().close()
        yield
    finally:
        for fh in held:
            fh.close()


def _package_present(spec: ModelSpec) -> bool:
    pkg = spec.extra.get("package")
    if not pkg:
        return True
    import importlib.util

    return importlib.util.find_spec(pkg) is not None


def _source_sha(p: Path, rep: ImportReport) -> str | None:
    """The sha256 of a file offered for import; None, and ``p`` rejected with the reason, when
    it cannot be read (no permission, a disk or network share gone...)."""
    try:
        return sha256_file(p)
    except OSError as e:
        rep.rejected.append((str(p), f"cannot be read ({_os_detail(e)})"))
        return None


def _damaged_zip(p: Path) -> bool:
    """``p`` starts like a ZIP archive (an offline pack, a PyTorch ``.pth``) but cannot be
    read as one: its end, with the archive's directory, is missing or damaged."""
    import zipfile

    try:
        with open(p, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return False
        return not zipfile.is_zipfile(p)
    except OSError:
        return False


def _os_detail(e: OSError) -> str:
    """An OSError as one short phrase: its reason and the file it names."""
    return f"{e.strerror}: {e.filename}" if e.strerror and e.filename else str(e)


def free_space(folder: Path) -> int | None:
    """Free bytes on the disk of ``folder`` (of its nearest existing parent while it is not
    made yet); None when the system does not say."""
    probe = Path(os.path.abspath(folder))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def short_of_space(folder: Path, need: int) -> int | None:
    """The free bytes on the disk of ``folder`` when they are fewer than ``need``, else None
    (it fits, or the system does not say: then a write's own disk-full error is the guard)."""
    if need <= 0:
        return None
    free = free_space(folder)
    return free if free is not None and need > free else None


def _sweep_import_temps(folder: Path, recursive: bool = False) -> None:
    """Delete the temporary copies that single-file imports killed midway (``kill``, a crash,
    the power) left in ``folder``: ``.import-<pid>-<hex>.part``, hidden, never resumed, counted
    in the model's disk use. Only those whose process no longer runs, as the photos' temp files
    (``imageio.sweep_partials``): a running import's copy is left alone."""
    from ..imageio import _pid_alive

    try:
        found = list(folder.rglob(".import-*") if recursive else folder.glob(".import-*"))
    except OSError:
        return
    for q in found:
        m = IMPORT_TEMP.fullmatch(q.name)
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            q.unlink()


def _folder_gone(model_id: str, name: str, folder: Path) -> LocalDiskError:
    """A download whose ``.part`` (with its folder, usually) was deleted or moved while it was
    being written: by a file manager, another program, the user."""
    return LocalDiskError(
        f"{model_id}/{name}: the download was deleted while it was being written (the model "
        f"folder {folder} deleted or moved?); nothing was installed: run the same command again")


def _new_folders(top: Path, leaf: Path) -> list[Path]:
    """The folders from ``leaf`` up to ``top`` (``leaf`` is ``top`` or inside it) that do not
    exist yet, deepest first: those that writing a file in ``leaf`` creates."""
    out = []
    d = leaf
    while not os.path.lexists(d):
        out.append(d)
        if d == top or d == d.parent:
            break
        d = d.parent
    return out


def _remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` that are empty, deepest first (a folder holding anything -
    a ``.part`` kept for a resume, another process's download - stays)."""
    for d in sorted(set(folders), key=lambda q: len(q.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()


def _file_size(p: Path) -> int:
    try:
        return p.stat().st_size if p.is_file() else 0
    except OSError:
        return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


def _tree_size(d: Path) -> int:
    total = 0
    for q in d.rglob("*"):
        try:
            if q.is_file() and not q.is_symlink():
                total += q.stat().st_size
        except OSError:
            pass
    return total
