"""Non-destructive per-photo sidecars: diagnosis, plan, mask and outputs, restored on reopen.

Beside the photos in ``<folder>/.mend/<photo name>.json`` (masks as ``<photo name>.mask.png``);
when that folder is read-only, or sidecars are kept only in the user data folder
(``beside_photos=False``), in the user data folder under a hash of the photo folder (the
``.mend`` beside the photos is still read, never written; what is recorded in the user data
folder since overrides it).
A photo named near the file name limit gets its name shortened there, with a hash of the whole
name.

A sidecar beside photos in a shared folder is anyone's: it is read only when it is a regular file
of at most ``SIDECAR_MAX`` bytes (never a FIFO or device, which would block or never end), JSON
nested past Python's stack is unreadable like any damaged sidecar, and the mask it names is
taken only when it is one of the files Mend writes for that photo's mask (``_own_mask_files``),
never another file (a photo, another user's file) that a fix would read as the mask; for another
path the photo's own mask file is taken when there is one (a folder copied or moved).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.api import Diagnosis, Plan

log = logging.getLogger("mend.ui.sidecar")
VERSION = 1
SIDECAR_MAX = 8 << 20  # bytes: a sidecar holds a few kB
# seconds an update waits for another process's lock on the folder's sidecars, then goes ahead
# without it (a hung holder, a file system without locks: the exclusion is lost, not the update)
SIDECAR_LOCK_WAIT = 5.0


@dataclass
class Sidecar:
    diagnosis: Diagnosis | None = None
    plan: Plan | None = None
    mask: str | None = None  # path of the edited mask PNG
    outputs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    source_size: int | None = None
    source_mtime_ns: int | None = None
    override: str | None = None  # the class chosen in "Fix as" ("A".."D"), None: as diagnosed
    plan_edited: bool = False  # the plan is the photographer's edit, not the engine's own
    # what this version cannot read, written back as it was: a newer Mend's fields, and its form
    # of a diagnosis or plan (until this version records one of its own there)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = self._known_json()
        for k, v in self.extra.items():
            if d.get(k) is None:
                d[k] = v
        return d

    def _known_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "diagnosis": self.diagnosis.to_json() if self.diagnosis else None,
            "plan": self.plan.to_json() if self.plan else None,
            "mask": self.mask,
            "outputs": list(self.outputs),
            "warnings": list(self.warnings),
            "source": {"size": self.source_size, "mtime_ns": self.source_mtime_ns},
            "override": self.override,
            "plan_edited": self.plan_edited,
        }

    @classmethod
    def from_json(cls, d: Any) -> Sidecar:
        """Raises ValueError when ``d`` is not a sidecar at all; a field of the wrong type is
        left out, a diagnosis or plan this version cannot read is kept in ``extra``."""
        if not isinstance(d, dict):
            raise ValueError("not a Mend sidecar")  # noqa: TRY004 - read as damaged
        extra = {k: v for k, v in d.items() if k not in _KNOWN}

        def parse(key: str, fn: Any) -> Any:
            if not d.get(key):
                return None
            try:
                return fn(d[key])
            except Exception as e:  # noqa: BLE001 - another version's form: kept as it was
                log.warning("sidecar: cannot read its %s (%s); keeping it as it is", key,
                            str(e))
                extra[key] = d[key]
                return None

        def strings(v: Any) -> list[str]:
            return [str(x) for x in v] if isinstance(v, list) else []

        def number(v: Any) -> int | None:
            return v if isinstance(v, int) and not isinstance(v, bool) else None

        src = d.get("source") if isinstance(d.get("source"), dict) else {}
        return cls(
            diagnosis=parse("diagnosis", Diagnosis.from_json), plan=parse("plan", Plan.from_json),
            mask=d["mask"] if isinstance(d.get("mask"), str) and d["mask"] else None,
            outputs=strings(d.get("outputs")), warnings=strings(d.get("warnings")),
            source_size=number(src.get("size")), source_mtime_ns=number(src.get("mtime_ns")),
            override=str(d["override"]) if d.get("override") else None,
            plan_edited=bool(d.get("plan_edited", False)), extra=extra,
        )


_KNOWN = frozenset(Sidecar()._known_json())


class SidecarStore:
    def __init__(self, folder: Path, fallback_root: Path, *, beside_photos: bool = True) -> None:
        """``beside_photos`` False: nothing is written in ``folder`` (sidecars and masks go to
        the user data folder under ``fallback_root``); a ``.mend`` already there is read."""
        # (nothing is read from the disk here: a store is made on the GUI thread, when a folder
        # is opened or a job of another folder finishes; where its sidecars go is decided on its
        # first use, in the pool: on a network drive or a disk asleep a stat takes seconds)
        self.folder = Path(folder)
        self._beside_photos = beside_photos
        self._fallback = Path(fallback_root) / "sidecars"
        self._root: Path | None = None
        self._also: Path | None = None
        self._in_data: Path | None = None
        # one lock per folder, not per store: two stores of one folder (the folder opened
        # again while a save of the first one was queued; two windows) lost each other's updates
        self._lock = _folder_lock(self.folder)
        self._open_lock = threading.Lock()

    def _open(self) -> Path:
        """Decide where this folder's sidecars go (reads the disk, once)."""
        with self._open_lock:
            if self._root is not None:
                return self._root
            beside = self.folder / ".mend"
            # (fsencode: a folder name that is not UTF-8 has surrogate escapes, which .encode()
            # refuses; the bytes of a UTF-8 name are the same either way)
            h = hashlib.sha1(os.fsencode(self.folder.resolve())).hexdigest()[:16]
            in_data = self._fallback / h
            own = _own_folder(beside, self.folder)
            if self._beside_photos and not own:
                # a link (or junction) to another folder's .mend: writing there would replace
                # that folder's sidecars and hand-painted masks (photo names repeat across cards)
                log.warning("%s is a link to another folder; keeping this folder's sidecars in "
                            "%s instead", beside, in_data)
            if self._beside_photos and own and _writable(beside):
                root = beside
                # sidecars kept in the user data folder while this folder was read-only are
                # still read (while newer than this photo's sidecar beside it)
                self._also = in_data
            else:
                root = in_data
                # a .mend Mend does not write to - read-only (a card, a shared folder, one made
                # read-only since), or sidecars kept only in the user data folder - is still
                # read: what Mend records meanwhile goes to the user data folder, and overrides
                # it (``load`` reads the newer of the two). Never another folder's (a link).
                self._also = beside if own else None
            self._in_data = in_data
            self._root = root
            return root

    @property
    def root(self) -> Path:
        """The folder sidecars go to (decided on the store's first use)."""
        root = self._root
        return root if root is not None else self._open()

    def _here(self) -> Path:
        """The folder sidecars go to now: beside the photos, unless ``.mend`` was made a link
        to another folder since this store was opened (then the user-data folder)."""
        root = self.root
        if root != self._in_data and not _own_folder(root, self.folder):
            log.warning("%s became a link to another folder; keeping this folder's sidecars in "
                        "%s instead", root, self._in_data)
            self._root, self._also = self._in_data, None
            root = self._root
        also = self._also
        if also is not None and also != self._in_data and not _own_folder(also, self.folder):
            self._also = None  # (a read-only .mend made a link since: not this folder's)
        return root

    def path_for(self, photo: Path) -> Path:
        root = self._here()
        return root / side_name(root, Path(photo).name, ".json")

    def mask_path_for(self, photo: Path) -> Path:
        root = self._here()
        return root / side_name(root, Path(photo).name, ".mask.png")

    def mask_path_known(self, photo: Path) -> Path | None:
        """Where ``photo``'s mask goes as last decided, without reading the disk (for the GUI
        thread; None before the store's first use). A write asks ``mask_path_for`` again."""
        root = self._root
        return None if root is None else root / side_name(root, Path(photo).name, ".mask.png")

    def load(self, photo: Path) -> Sidecar | None:
        """The photo's sidecar: the one where sidecars go now, or the one in the other folder
        they may be in (the read-only ``.mend`` beside the photos, or the user data folder that
        kept them while this folder was read-only) when that one is newer."""
        from engine.rawio import _read_capped

        p = self._newest(self.path_for(photo))
        try:
            sc = Sidecar.from_json(json.loads(_read_capped(p, SIDECAR_MAX)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            # (the text only: a logged exception keeps its traceback's frames, and the
            # callers' through them)
            log.warning("ignoring unreadable sidecar %s: %s", p, str(e))
            return None
        own = self._own_mask_files(photo) if sc.mask is not None else []
        if sc.mask is not None and _key(Path(sc.mask)) not in {_key(q) for q in own}:
            # (planted, or the folder was copied or moved: then its own mask file is the one)
            found = next((q for q in own if q.is_file()), None)
            log.warning("sidecar %s: its mask %s is not a mask file Mend writes for %s; %s",
                        p, sc.mask, Path(photo).name,
                        f"taking {found} instead" if found else "ignoring it")
            sc.mask = str(found) if found else None
        try:  # the photo changed since (re-imported under the same name, edited elsewhere):
            # its diagnosis, plan, edited mask and results belonged to the old one
            st = Path(photo).stat()
            if sc.source_size is not None and (st.st_size != sc.source_size
                                               or st.st_mtime_ns != sc.source_mtime_ns):
                sc.diagnosis, sc.plan, sc.mask, sc.outputs, sc.warnings = None, None, None, [], []
                sc.override, sc.plan_edited = None, False
                sc.extra.pop("diagnosis", None)
                sc.extra.pop("plan", None)
        except OSError:
            pass
        return sc

    def _newest(self, p: Path) -> Path:
        """``p`` (a sidecar where sidecars go now), or its namesake in the other folder they
        may be in when that one was written later (or ``p`` is missing)."""
        also = self._also
        if also is None:
            return p
        q = also / p.name
        try:
            in_also = os.stat(q).st_mtime_ns
        except OSError:
            return p
        try:
            here = os.stat(p).st_mtime_ns
        except OSError:
            return q
        return q if in_also > here else p

    def save(self, photo: Path, sc: Sidecar) -> None:
        """Write ``sc`` where sidecars go now; a write that fails is logged, not raised."""
        try:
            self._write(photo, sc)
        except OSError as e:
            log.warning("could not write sidecar for %s: %s", photo, e)

    def _write(self, photo: Path, sc: Sidecar) -> None:
        """``save``, raising OSError when the sidecar cannot be written (nothing is written
        when the photo's folder is gone)."""
        from engine.imageio import atomic_write_bytes

        if not self.folder.is_dir():
            # the folder was moved, deleted or unmounted meanwhile (a job that finished after):
            # writing would create it again, holding nothing but a .mend folder
            log.warning("not writing the sidecar of %s: its folder is gone", photo)
            return
        try:
            st = Path(photo).stat()
            sc.source_size, sc.source_mtime_ns = st.st_size, st.st_mtime_ns
        except OSError:
            pass
        atomic_write_bytes(self.path_for(photo), json.dumps(sc.to_json(), indent=1).encode())

    def update(self, photo: Path, *, keep_edited_plan: bool = False,
               add_outputs: list[str] | None = None, **changes: Any) -> Sidecar:
        """Read-modify-write one sidecar (thread-safe; the UI calls it from its pool).
        ``keep_edited_plan``: a plan the photographer edited, recorded there, stays (the caller
        does not know the photo's plan: a job finishing after its folder was left).
        ``add_outputs``: results added (last) to the outputs recorded, which stay (the caller may
        not know them: a job finishing after its folder was left).
        Across processes too (a second Mend on the same folder): under an OS lock on the
        folder's sidecars (``lock_path``) the sidecar is read afresh, so neither loses the
        other's updates. A lock not had within ``SIDECAR_LOCK_WAIT`` seconds (a hung holder) or
        not available (a file system without locks) costs the exclusion, never the update."""
        from engine.estimate import file_lock  # (flock / msvcrt, as the cost history's)

        with self._lock:
            if not self.folder.is_dir():  # (save writes nothing; the lock would make .mend)
                return self._update(photo, keep_edited_plan, add_outputs, changes)
            with file_lock(self._here() / _LOCK_STEM, SIDECAR_LOCK_WAIT):
                return self._update(photo, keep_edited_plan, add_outputs, changes)

    def forget_mask(self, photo: Path, also: Path | None = None,
                    kept: list[tuple[Path, str]] | None = None) -> list[Path]:
        """Forget the reflection mask the photographer made for ``photo`` (thread-safe, under
        the same locks as ``update``): its sidecar records no mask, and the mask files Mend
        wrote for it (``<photo name>.mask.png`` in either folder its sidecars may be in) are
        deleted. The path the sidecar records, and ``also`` (one the caller knew), are deleted
        only when they are one of those files: a file anywhere else - a photo, a mask saved
        elsewhere and recorded by hand, a result's mask - never is, nor a folder standing at a
        mask file's name (a link there is deleted, not what it points to). Returns the files
        deleted.

        A mask file that cannot be deleted (one in a read-only ``.mend``), or is not to be (one
        in the ``.mend`` beside the photos when sidecars are kept only in the user data folder),
        stays, unused: the record of no mask is written where sidecars go now (the user data
        folder then), which overrides the one beside it; each such file and why it stays is
        added to ``kept``. Raises OSError when the record cannot be written and the mask
        file it names is still there (the photo keeps that mask)."""
        from engine.estimate import file_lock

        with self._lock:
            if not self.folder.is_dir():  # (nothing of it is left to forget)
                return []
            with file_lock(self._here() / _LOCK_STEM, SIDECAR_LOCK_WAIT):
                sc = self.load(photo)
                was = sc.mask if sc is not None else None
                unrecorded: OSError | None = None
                if sc is not None and (sc.mask is not None or "mask" in sc.extra):
                    sc.mask = None
                    sc.extra.pop("mask", None)
                    try:  # (first: a mask file that then stays is not the photo's any more)
                        self._write(photo, sc)
                    except OSError as e:
                        unrecorded = e
                own = {_key(p): p for p in self._own_mask_files(photo)}
                named = [*own.values(), was, also]
                removed, left = [], []
                for c in dict.fromkeys(_key(Path(n)) for n in named if n):
                    p = own.get(c)
                    if p is None or _key(p) == _key(Path(photo)) or _is_folder(p):
                        continue  # not a mask file Mend wrote for this photo: kept
                    if self._kept_beside(p):
                        if os.path.lexists(p):
                            left.append((p, "Mend writes nothing in the photos' folder"))
                        continue
                    try:
                        p.unlink()
                    except FileNotFoundError:
                        continue
                    except OSError as e:
                        left.append((p, e.strerror or str(e)))
                        continue
                    removed.append(p)
                if unrecorded is not None and was and os.path.lexists(was):
                    # the record still names a mask that is still there: nothing is forgotten
                    raise OSError(unrecorded.errno, "its sidecar cannot be written ("
                                  f"{unrecorded.strerror or unrecorded}), so the mask it "
                                  "records stays", unrecorded.filename)
                for p, why in left:
                    log.warning("the mask file %s of %s stays (%s); its sidecar records no "
                                "mask", p, photo, why)
                if kept is not None:
                    kept.extend(left)
                return removed

    def _kept_beside(self, path: Path) -> bool:
        """``path`` is in the ``.mend`` beside the photos and sidecars are kept only in the user
        data folder (``beside_photos=False``): read, never written, nor deleted."""
        also = self._also
        return not self._beside_photos and also is not None and also != self._in_data \
            and _key(path.parent) == _key(also)

    def _own_mask_files(self, photo: Path) -> list[Path]:
        """Where Mend writes ``photo``'s mask: beside the photos and in the user data folder."""
        here = self._here()
        roots = dict.fromkeys(r for r in (here, self._in_data, self._also) if r is not None)
        return [r / side_name(r, Path(photo).name, ".mask.png") for r in roots]

    def _update(self, photo: Path, keep_edited_plan: bool, add_outputs: list[str] | None,
                changes: dict[str, Any]) -> Sidecar:
        sc = self.load(photo) or Sidecar()
        if keep_edited_plan and sc.plan_edited:
            changes.pop("plan", None)
            changes.pop("plan_edited", None)
        for k, v in changes.items():
            setattr(sc, k, v)
            sc.extra.pop(k, None)  # (set here: another version's form of it is replaced)
        if add_outputs:
            sc.outputs = [o for o in sc.outputs if o not in add_outputs] + list(add_outputs)
        self.save(photo, sc)
        return sc


_LOCK_STEM = ".sidecars"  # the folder's lock file: <sidecar folder>/.sidecars.lock


def lock_path(root: Path) -> Path:
    """The file locked (by every Mend process) around a sidecar update in ``root``."""
    return Path(root) / f"{_LOCK_STEM}.lock"


def side_name(root: Path, name: str, ext: str) -> str:
    """The name of photo ``name``'s sidecar file ending in ``ext`` in ``root``:
    ``<name><ext>``, or when that is longer than a file name may be (255 bytes), or makes a path
    longer than Windows allows (``MAX_PATH_CHARS``), the start of ``name`` with a hash of all
    of it (``<start>~<16 hex><ext>``): still one file per photo, and still readable."""
    from engine.imageio import MAX_PATH_CHARS, NAME_MAX_BYTES

    def fits(n: str) -> bool:
        if len(os.fsencode(n)) > NAME_MAX_BYTES:
            return False
        if MAX_PATH_CHARS is None:
            return True
        path = os.path.join(os.path.abspath(root), n)  # (Windows counts UTF-16 units)
        return len(path.encode("utf-16-le", "surrogatepass")) // 2 <= MAX_PATH_CHARS

    whole = f"{name}{ext}"
    if fits(whole):
        return whole
    tail = f"~{hashlib.sha1(os.fsencode(name)).hexdigest()[:16]}{ext}"
    keep = name
    while keep and not fits(keep + tail):
        keep = keep[:-1]
    return keep + tail


def _is_folder(path: Path) -> bool:
    """A folder itself (not a link to one) stands where a mask file would: not Mend's file (a
    mask is a PNG; it may hold anything) - it stays, and the sidecar forgets it."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _key(path: Path) -> str:
    """A path compared as the OS compares it (links not followed: a link is itself)."""
    return os.path.normcase(os.path.abspath(path))


_FOLDER_LOCKS: dict[str, threading.Lock] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


def _folder_lock(folder: Path) -> threading.Lock:
    """The lock of every store of ``folder`` in this process (no disk access: the GUI thread
    makes stores)."""
    key = os.path.normcase(os.path.abspath(folder))
    with _FOLDER_LOCKS_GUARD:
        lock = _FOLDER_LOCKS.get(key)
        if lock is None:
            lock = _FOLDER_LOCKS[key] = threading.Lock()
        return lock


def _own_folder(d: Path, folder: Path) -> bool:
    """``d`` (``folder/.mend``) is missing or a real folder inside ``folder``: not a symbolic
    link (nor a junction or a link above it) leading somewhere else."""
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return False
    try:
        return d.resolve().parent == folder.resolve()
    except (OSError, RuntimeError):
        return False


def _writable(d: Path) -> bool:
    """Writable, and not marked read-only (root passes os.access on read-only folders, but a
    folder whose owner made it read-only is not ours to add files to)."""
    target = d if d.is_dir() else d.parent
    if not target.is_dir() or not os.access(target, os.W_OK):
        return False
    if os.name == "nt":
        # a folder's read-only attribute (which st_mode reports as no write bits) is set by
        # Explorer on Pictures and on every customised folder, and Windows does not honour it
        # on folders (files can be added): os.access above said whether they can
        return True
    try:
        return bool(target.stat().st_mode & 0o222)
    except OSError:
        return False
