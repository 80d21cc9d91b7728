"""Offline model packs: carry models to a machine with no network.

Format: a ZIP archive (ZIP64, stored uncompressed — weights do not compress) holding

* ``mend-pack.json`` — ``{"format": "mend-model-pack", "version": 1, "created", "profile",
  "models": [manifest entries], "entries": [{"path", "model", "name", "size", "sha256",
  "pinned"}]}``
* ``models/<model id>/<file name>`` — one member per model file.

Import trusts nothing in the archive: every member must be listed in the index under a model id
and file name the local manifest knows, with a safe relative path (no ``..``, no absolute path,
no backslash, no symlink); pinned files must carry the manifest's own hash. A member that
unpacks to more than ``MAX_RATIO`` times its stored bytes (a decompression bomb: a few hundred kB
that unpack to gigabytes, under an unpinned file's name) is refused before anything is written;
Mend writes packs uncompressed. A pack never carries
a slot's file (``reflection-yolo``: the user's own weights, which nobody can pin a hash for);
such a pack is refused, the slot is filled only by ``mend models import FILE --id ID``.
Everything is extracted into a temporary folder inside the store root and hashed there; only
when every file checks out are they moved into place. On any refusal nothing is left in the
store. A damaged archive (bad CRC, truncated) is refused the same way. The temporary folder of
an import that was killed is deleted by the next import (:func:`sweep_stale_imports`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import ChecksumMismatch, EngineError, ModelMissing, SaveFailed, UsageError
from . import download as dl
from .manifest import PROFILES, ManifestError, safe_relpath
from .store import (
    PART_SUFFIX,
    UNPINNED,
    VERIFIED,
    ImportReport,
    ModelStore,
    _file_size,
    _mb,
    _try_lock,
    short_of_space,
)

PACK_INDEX = "mend-pack.json"
PACK_FORMAT = "mend-model-pack"
PACK_VERSION = 1
CHUNK = 1 << 20
# the index lists files and manifest entries: a few kB per model. A bigger one is refused unread
# (a 1.5 MB pack whose deflated index held 1.5 GB of spaces took 4.5 GB of memory to parse)
MAX_INDEX_BYTES = 16 << 20
# a member unpacking to more than this many times its stored bytes is refused (beyond a first MB):
# Mend stores members as they are; configs and tokenizers deflate 3-10 times, deflate's limit is
# about 1030 (a 300 KB member under an unpinned file's name unpacked to 300 MB, installed)
MAX_RATIO = 100
# an import extracts into a hidden folder of the store root, locked by IMPORT_LOCK inside it
IMPORT_PREFIX = ".import-pack-"
IMPORT_LOCK = ".lock"
STALE_AFTER = 60.0  # seconds

PackProgress = Callable[[int, int, str], None]  # (bytes done, bytes total, current file)


class PackRefused(EngineError):
    """An offline pack failed a check; nothing was written to the model store."""

    def __init__(self, path: object, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: refused ({reason}); nothing was imported")


def is_pack(path: str | Path) -> bool:
    p = Path(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    try:
        with zipfile.ZipFile(p) as z:
            return PACK_INDEX in z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def _resolve_ids(profile_or_ids: str | Iterable[str], store: ModelStore) -> tuple[list[str], str]:
    if isinstance(profile_or_ids, str):
        if profile_or_ids in PROFILES:
            return [m.id for m in store.manifest.for_profile(profile_or_ids)], profile_or_ids
        ids = [profile_or_ids]
    else:
        ids = list(profile_or_ids)
    for i in ids:
        store.spec(i)
    return ids, ""


def _without_urls(entry: dict[str, Any]) -> dict[str, Any]:
    """A manifest entry for a pack's index, without its files' download URLs: a pack carries
    the files themselves, and an organisation mirror's URLs may hold access tokens that must
    not travel with the pack."""
    out = dict(entry)
    out["files"] = [{k: v for k, v in f.items() if k != "url"} for f in entry.get("files", [])]
    return out


def create_pack(profile_or_ids: str | Iterable[str], dest: str | Path, store: ModelStore,
                progress: PackProgress | None = None) -> Path:
    """Write the models of a profile (or the given ids) into one pack at ``dest``.

    Bundled models are skipped (they ship with Mend); a profile that needs nothing (builtin)
    gives a pack with an empty index. Slots (the user's own weights) never go into a pack: a
    slot named explicitly raises UsageError. Every file is re-hashed while it is written; a
    missing or damaged model raises before the pack is renamed into place. ``dest`` must be
    a file name (UsageError for an existing folder); a place that cannot be written raises
    :class:`SaveFailed`, and so does a disk with less free space than the pack takes, before
    anything is written.
    """
    ids, profile = _resolve_ids(profile_or_ids, store)
    plan: list[tuple[str, str, Path, str | None, bool]] = []
    missing = []
    specs = []
    for mid in ids:
        spec = store.spec(mid)
        if spec.bundled:
            continue
        if spec.slot:
            if not profile:
                raise UsageError(f"{mid} holds your own weights and cannot go into a pack; copy "
                                 f"the file and import it with: mend models import FILE --id {mid}")
            continue
        try:
            folder = store.require(mid)
        except ModelMissing:
            missing.append(mid)
            continue
        for f in spec.files:
            plan.append((mid, f.name, folder / f.name, store.expected_sha(mid, f), f.pinned))
        specs.append(spec)
    if missing:
        pull = f"--profile {profile}" if profile else " ".join(missing)
        raise ModelMissing(missing, f"install them first (mend models pull {pull}) to put "
                                    f"them in a pack")
    dest = Path(dest).expanduser()
    if dest.is_dir():
        raise UsageError(f"{dest} is a folder: give the pack a file name, e.g. "
                         f"{dest / ((profile or 'models') + '.mendpack.zip')}")
    part = dest.with_name(dest.name + PART_SUFFIX)
    total = sum(src.stat().st_size for _m, _n, src, _s, _p in plan)
    size = _pack_size(plan, specs, total)
    # (a .part an earlier attempt left is written over: its bytes are free for this one)
    free = short_of_space(dest.parent, size - _file_size(part))
    if free is not None:
        raise SaveFailed(f"not enough disk space to write the pack {dest}: {_mb(size)} needed, "
                         f"{_mb(free)} free on its disk; free some space or write the pack to "
                         "another disk, then run the same command again")
    done = 0
    entries = []
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            for mid, name, src, expected, pinned in plan:
                arc = f"models/{mid}/{name}"
                h = hashlib.sha256()
                info = zipfile.ZipInfo(arc, date_time=time.localtime(src.stat().st_mtime)[:6])
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                size = 0
                with open(src, "rb") as fin, z.open(info, "w", force_zip64=True) as fout:
                    while chunk := fin.read(CHUNK):
                        h.update(chunk)
                        fout.write(chunk)
                        size += len(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total, f"{mid}/{name}")
                digest = h.hexdigest()
                if expected and digest != expected:
                    raise ChecksumMismatch(f"{mid}/{name}", expected, digest)
                entries.append({"path": arc, "model": mid, "name": name, "size": size,
                                "sha256": digest, "pinned": pinned})
            index = {"format": PACK_FORMAT, "version": PACK_VERSION,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "profile": profile,
                     "models": [_without_urls(s.to_json()) for s in specs],
                     "entries": entries}
            z.writestr(PACK_INDEX, json.dumps(index, indent=1))
        from ..imageio import replace_file

        replace_file(part, dest)  # (retried while a scanner holds the new file, Windows)
    except OSError as e:
        with contextlib.suppress(OSError):
            part.unlink(missing_ok=True)
        detail = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else str(e)
        raise SaveFailed(f"could not write the pack {dest} ({detail})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink(missing_ok=True)
        raise
    return dest


def _pack_size(plan: list[tuple[str, str, Path, str | None, bool]], specs: list[Any],
               total: int) -> int:
    """Bytes a pack of ``plan`` (``total`` bytes of files) takes, rounded up: each member's
    ZIP headers (local, ZIP64, data descriptor, central directory: under 200 bytes, and its
    name twice) and index entry (under 300 bytes, and its name twice), the manifest entries
    and a few kB for the rest of the index and the archive's end records."""
    names = sum(len(f"models/{mid}/{name}".encode()) for mid, name, *_ in plan)
    models = len(json.dumps([_without_urls(s.to_json()) for s in specs], indent=1).encode())
    return total + 500 * len(plan) + 4 * names + models + 4096


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _read_index(p: Path, z: zipfile.ZipFile) -> dict[str, Any]:
    try:
        size = z.getinfo(PACK_INDEX).file_size
        if size > MAX_INDEX_BYTES:  # (zipfile never unpacks more than the size it states)
            raise PackRefused(p, f"its {PACK_INDEX} is {size >> 20} MB, far more than an index "
                                 "of model files needs: not a Mend model pack")
        raw = z.read(PACK_INDEX)
        index = json.loads(raw.decode("utf-8"))
    except KeyError:
        raise PackRefused(p, f"no {PACK_INDEX} inside: not a Mend model pack") from None
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile) as e:
        raise PackRefused(p, f"unreadable {PACK_INDEX} ({e})") from None
    except RecursionError:  # (JSON nested deeper than Python's stack: no index of Mend's)
        raise PackRefused(p, f"unreadable {PACK_INDEX} (nested too deeply)") from None
    if not isinstance(index, dict) or index.get("format") != PACK_FORMAT:
        raise PackRefused(p, "not a Mend model pack")
    version = index.get("version")
    if version != PACK_VERSION:
        why = f"pack version {version!r} is not supported (this Mend reads version {PACK_VERSION}"
        if type(version) is int and version > PACK_VERSION:
            why += "; the pack was made by a newer Mend: update Mend to import it"
        raise PackRefused(p, why + ")")
    if not isinstance(index.get("entries"), list):
        raise PackRefused(p, "the pack index has no entry list")
    return index


def check_pack(path: str | Path, store: ModelStore) -> list[dict[str, Any]]:
    """Validate a pack's structure against the local manifest without extracting anything.
    Returns the index entries; raises :class:`PackRefused`."""
    p = Path(path).expanduser()
    try:
        z = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise PackRefused(p, f"not a readable zip archive ({e})") from None
    with z:
        index = _read_index(p, z)
        infos: dict[str, zipfile.ZipInfo] = {}
        for info in z.infolist():
            name = info.filename
            if name in infos:
                raise PackRefused(p, f"duplicate entry {name!r}")
            if name.startswith("/") or "\\" in name or ".." in name.split("/") or (
                    len(name) > 1 and name[1] == ":"):
                raise PackRefused(p, f"unsafe path {name!r} (path traversal)")
            if _is_symlink(info):
                raise PackRefused(p, f"{name!r} is a symbolic link")
            if info.file_size > max(1 << 20, MAX_RATIO * info.compress_size):
                raise PackRefused(p, f"{name!r} unpacks to {info.file_size:,} bytes from "
                                     f"{info.compress_size:,} (a decompression bomb?)")
            infos[name] = info
        listed: dict[str, dict[str, Any]] = {}
        for e in index["entries"]:
            if not isinstance(e, dict):
                raise PackRefused(p, "malformed entry in the pack index")
            arc, mid, name = str(e.get("path", "")), str(e.get("model", "")), str(e.get("name", ""))
            try:
                safe_relpath(name)
            except ManifestError:
                raise PackRefused(p, f"unsafe file name {name!r} (path traversal)") from None
            if arc != f"models/{mid}/{name}":
                raise PackRefused(p, f"entry {arc!r} does not match its model/name")
            if mid not in store.manifest:
                raise PackRefused(p, f"unknown model {mid!r} (not in this Mend's model list: a "
                                     "pack made by a newer Mend? update Mend to import it)")
            spec = store.manifest.get(mid)
            sha = str(e.get("sha256", "")).lower()
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise PackRefused(p, f"{arc}: malformed sha256")
            if spec.bundled:
                raise PackRefused(p, f"{mid} ships with Mend and cannot come from a pack")
            if spec.slot:
                raise PackRefused(p, f"{arc}: {mid} takes your own weights, never a file from a "
                                     f"pack; import a file you trust with: "
                                     f"mend models import FILE --id {mid}")
            try:
                f = spec.get_file(name)
            except KeyError:
                raise PackRefused(p, f"unknown file {name!r} for model {mid}") from None
            if f.sha256 and sha != f.sha256:
                raise PackRefused(p, f"{arc}: its hash is not the one Mend's model list pins")
            if f.pinned and f.size_exact and int(e.get("size", -1)) != f.size:
                raise PackRefused(p, f"{arc}: wrong size for this model file")
            if arc not in infos:
                raise PackRefused(p, f"{arc} is listed but missing from the archive")
            if infos[arc].file_size != int(e.get("size", -1)):
                raise PackRefused(p, f"{arc}: size differs from the pack index")
            if arc in listed:
                raise PackRefused(p, f"{arc} listed twice")
            listed[arc] = {**e, "sha256": sha}
        for name, info in infos.items():
            if name == PACK_INDEX or name in listed:
                continue
            raise PackRefused(p, f"unknown entry {name!r} (not in the pack index)")
        return list(listed.values())


def import_pack(path: str | Path, store: ModelStore,
                progress: PackProgress | None = None) -> ImportReport:
    """Import an offline pack into ``store``: every hash is verified before anything lands in
    the cache; files already installed are skipped; any problem raises :class:`PackRefused`
    (or ChecksumMismatch) and leaves the store exactly as it was."""
    p = Path(path).expanduser()
    entries = check_pack(p, store)
    rep = ImportReport()
    todo = []
    for e in entries:
        mid, name = e["model"], e["name"]
        f = store.spec(mid).get_file(name)  # check_pack refused slots and unknown files
        fs = store._check_file(mid, f, False, store._read_state(mid))
        if fs.status in (VERIFIED, UNPINNED) and (f.pinned or fs.sha256 == e["sha256"]):
            rep.skipped.append((mid, name))
            continue
        todo.append(e)
    if not todo:
        return rep
    need = sum(int(e["size"]) for e in todo)
    _check_import_space(p, store, todo, need)  # (before anything is written)
    root_existed = store.root.exists()
    store._make_dir(store.root)
    sweep_stale_imports(store.root)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=IMPORT_PREFIX, dir=store.root))
    except OSError as e:
        if not root_existed:
            _rmdir_quiet(store.root)
        raise _import_failed(p, store, e) from None
    held = None

    def clean_up() -> None:
        if held is not None:
            held.close()  # (before the folder goes: Windows deletes no open file)
        shutil.rmtree(tmp, ignore_errors=True)

    try:
        held = open(tmp / IMPORT_LOCK, "a+b")  # noqa: SIM115 - closed by clean_up
        _try_lock(held)  # (a new folder: nobody else has it) - see sweep_stale_imports
        done = 0
        staged = []
        with zipfile.ZipFile(p) as z:
            for i, e in enumerate(todo):
                out = tmp / f"{i:05d}"
                h = hashlib.sha256()
                try:
                    with z.open(e["path"]) as fin, open(out, "wb") as fout:
                        while chunk := fin.read(CHUNK):
                            h.update(chunk)
                            fout.write(chunk)
                            done += len(chunk)
                            if progress:
                                progress(done, need, f"{e['model']}/{e['name']}")
                except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                    raise PackRefused(p, f"{e['path']} is damaged in the archive ({err}); copy "
                                         "the pack again") from None
                digest = h.hexdigest()
                if digest != e["sha256"]:
                    raise ChecksumMismatch(f"{p.name}: {e['path']}", e["sha256"], digest)
                staged.append((e, out, digest))
        # every file checked: move them into place
        for e, out, digest in staged:
            store.install_file(e["model"], e["name"], out, sha256=digest, move=True)
            rep.imported.append((e["model"], e["name"]))
    except BaseException as e:
        clean_up()
        if not root_existed:
            shutil.rmtree(store.root, ignore_errors=True)
        if isinstance(e, OSError):  # a full or read-only disk, the pack's drive gone...
            raise _import_failed(p, store, e) from None
        raise
    clean_up()
    return rep


def _check_import_space(p: Path, store: ModelStore, todo: list[dict[str, Any]],
                        need: int) -> None:
    """Refuse (:class:`PackRefused`) an import whose files do not fit: ``need`` bytes are
    unpacked into the store's folder first; a model folder that links to another disk needs
    room there too for its files, copied into it once checked."""
    free = short_of_space(store.root, need)
    if free is not None:
        raise PackRefused(p, (
            f"not enough disk space: its files take {_mb(need)}, {_mb(free)} free on the disk "
            f"of {store.root}; free some space (or {store.other_folder_hint()}), then import "
            "it again"))
    root_dev = _device(store.root)
    per_model: dict[str, int] = {}
    for e in todo:
        per_model[e["model"]] = per_model.get(e["model"], 0) + int(e["size"])
    for mid, size in per_model.items():
        folder = store.model_dir(mid)
        if _device(folder) in (None, root_dev):
            continue
        free = short_of_space(folder, size)
        if free is not None:
            raise PackRefused(p, (
                f"not enough disk space: {mid}'s files take {_mb(size)}, {_mb(free)} free on "
                f"the disk of its folder {folder.resolve()}; free some space there, then "
                "import it again"))


def _device(folder: Path) -> int | None:
    """The device of ``folder`` (of its nearest existing parent; through links), or None."""
    probe = Path(os.path.abspath(folder))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return probe.stat().st_dev
    except OSError:
        return None


def _import_failed(p: Path, store: ModelStore, e: OSError) -> SaveFailed:
    detail = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else str(e)
    return SaveFailed(f"could not import the pack {p} into {store.root} ({detail}); nothing was "
                      "imported: free some space, check that the model folder can be written "
                      f"(or {store.other_folder_hint()}) and that the pack can be read")


def sweep_stale_imports(root: Path) -> None:
    """Delete the temporary folders of pack imports that ended without cleaning up (killed,
    crashed, a power cut): hidden in the store, counted nowhere, they could hold GBs. A folder
    whose import still holds its lock is left alone, and so is one changed in the last
    ``STALE_AFTER`` seconds (an import just starting, before it has locked its folder)."""
    try:
        folders = [d for d in root.glob(IMPORT_PREFIX + "*")
                   if d.is_dir() and not d.is_symlink()]
    except OSError:
        return
    for d in folders:
        try:
            if time.time() - d.stat().st_mtime < STALE_AFTER:
                continue
            lock = d / IMPORT_LOCK
            if lock.is_file():
                with open(lock, "a+b") as fh:
                    if not _try_lock(fh):
                        continue  # an import running in another process
        except OSError:
            continue
        shutil.rmtree(d, ignore_errors=True)


def _rmdir_quiet(p: Path) -> None:
    try:
        p.rmdir()
    except OSError:
        pass


def pull_profile(profile: str, store: ModelStore, progress: dl.ProgressFn | None = None,
                 token: Any = None) -> dict[str, str]:
    """Download every model a profile needs, in one go, with resume; returns id -> status.

    ``progress`` gets :class:`DownloadProgress` whose ``done``/``total`` cover the whole
    profile (``file_done``/``file_total`` the current file). A profile that does not fit on
    the store's disk raises :class:`LocalDiskError` before any download.
    """
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r} (builtin, laptop or quality)")
    specs = [s for s in store.manifest.for_profile(profile) if not s.bundled and not s.slot]
    need = {s.id: store.missing_bytes(s.id) for s in specs}
    total = sum(need.values())
    if not dl.offline_mode():  # (offline, the first pull says why nothing can come)
        # the whole profile must fit, not only its first models (each pull checks its own)
        store.check_space(sum(store.space_needed(s.id) for s in specs), f"the {profile} profile")
    offset = 0
    out: dict[str, str] = {}
    for s in store.manifest.for_profile(profile):
        if s.bundled or s.slot:
            out[s.id] = store.status(s.id)
            continue

        def relay(ev: dl.DownloadProgress, _off: int = offset) -> None:
            if progress:
                progress(dl.DownloadProgress(ev.model_id, ev.file, ev.file_done, ev.file_total,
                                             _off + ev.done, total, ev.speed, ev.file_index,
                                             ev.file_count))

        out[s.id] = store.pull(s.id, relay if progress else None, token)
        offset += need[s.id]
    return out
