"""Thumbnails built off the GUI thread, with an atomic disk cache keyed by path + mtime + size.

QImages are made in the pool; the model turns them into QPixmaps on the GUI thread. Failures are
cached too (a ``.fail`` marker) so a broken file is not decoded again and again. When the folder
changes, ``new_generation()`` drops queued work and results of the old generation are ignored.
Each THUMB_KIND has a folder of its own. The cache is pruned in the pool (at start-up, and
when this process's writes may have taken it past its cap): the least recently used entries of
every kind past the cap, and other kinds' entries and other versions' failure markers once
unused for OTHERS_KEPT_FOR (another Mend used side by side keeps its thumbnails).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import os
import re
import stat
import threading
import time
from pathlib import Path

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QObject, QRunnable, QThreadPool, Signal
from PySide6.QtGui import QImage

from ..imaging import load_thumbnail, rgb_to_qimage
from ..messages import describe_error

log = logging.getLogger("mend.ui.thumbs")

THUMB_SIDE = 256
# what the cached thumbnails are; another kind's are never read (keyed apart). "srgb": converted
# from the photo's colour profile (earlier ones, keyed without a kind, were the stored values);
# "srgb.2": grey (and CMYK) profiles applied as well (were shown as if untagged: a grey JPEG
# with a dot-gain profile was ~21 levels too dark on average); "srgb.3": JPEG XL and float TIFF
# previews converted from their profiles too (a P3 JPEG XL was ~10 levels off on average);
# "srgb.4": transparent photos over a checkerboard (were the colours stored under their
# transparent pixels); "srgb.5": a transparent JPEG XL's too (its alpha was not read), and
# transparent photos reduced before their colour profile is applied, as opaque ones are
THUMB_KIND = "srgb.5"
# the disk cache's cap. A 256 px thumbnail is 10-17 KB (9.8 KB mean over 235 test photos,
# 12-17 KB for full-size camera ones), so 512 MB keeps the last ~30,000-50,000 photos browsed,
# many big folders' worth, yet little beside the photos themselves. Past it the least recently
# used go, down to CACHE_PRUNE_TO of the cap (not scanned again after every few writes)
CACHE_MAX_BYTES = 512 << 20
CACHE_PRUNE_TO = 0.8
# an entry read is marked used (its mtime set to now) when its mark is older than this: the
# order the cap removes in, for one write per entry and day at most
TOUCH_AFTER = 24 * 3600.0
# other kinds' entries (a Mend of another version used side by side, or the flat layout from
# before kinds had folders) and other versions' failure markers: counted in the cap with this
# kind's own, least recently used first, and removed anyway once unused for this long (an
# abandoned kind does not sit in the cap for ever). Their last use is their mtime, or their
# access time where the system keeps one: Mends from before kinds had folders never marked a
# read. (Removed at once, an older Mend used beside this one rebuilt its thumbnails every time)
OTHERS_KEPT_FOR = 30 * 24 * 3600.0
# what the cache holds: <key>.jpg thumbnails, <key>.fail markers (their version inside); nothing
# else (temp .part files being written, files that are not the cache's) is ever removed
_ENTRY_RE = re.compile(r"^[0-9a-f]{40}\.(jpg|fail)$")
_SUBDIR_RE = re.compile(r"^[0-9a-f]{2}$")


def cache_key(path: Path, mtime_ns: int, size: int, side: int = THUMB_SIDE) -> str:
    h = hashlib.sha1(f"{os.fspath(path)}\0{mtime_ns}\0{size}\0{side}\0{THUMB_KIND}".encode(
        "utf-8", "surrogatepass"))
    return h.hexdigest()


def encode_jpeg(img: QImage, quality: int = 85) -> bytes:
    ba = QByteArray()
    buf = QBuffer(ba)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    img.save(buf, "JPG", quality)
    buf.close()
    return bytes(ba.data())


class ThumbnailCache:
    """``<root>/<k[:2]>/<k>.jpg`` for thumbnails, ``<k>.fail`` for files that could not be read."""

    def __init__(self, root: Path | None, max_bytes: int = CACHE_MAX_BYTES) -> None:
        self.root = root
        self.base: Path | None = None  # (for_kind: where the other kinds' caches are)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pruning = threading.Lock()  # one prune at a time in this process
        self._known: int | None = None  # bytes kept by the last prune (None: none yet)
        self._written = 0  # bytes this process wrote since

    @classmethod
    def for_kind(cls, base: Path | None, max_bytes: int = CACHE_MAX_BYTES) -> ThumbnailCache:
        """The cache of this THUMB_KIND, ``<base>/<THUMB_KIND>``; ``prune`` removes the other
        kinds' beside it (and the entries from before kinds had folders, flat in ``base``). The
        key has the kind too, but cannot be read back: without the folder another kind's entries
        could not be told from this one's."""
        cache = cls(None if base is None else base / THUMB_KIND, max_bytes)
        cache.base = base
        return cache

    def _base(self, key: str) -> Path | None:
        return None if self.root is None else self.root / key[:2] / key

    def get(self, key: str) -> QImage | str | None:
        """A QImage, an error message (cached failure) or None (not cached)."""
        base = self._base(key)
        if base is None:
            return None
        jpg = base.with_suffix(".jpg")
        if _used(jpg):
            img = QImage(str(jpg))
            if not img.isNull():
                return img
        fail = base.with_suffix(".fail")
        if _used(fail):
            try:
                tag, _, msg = fail.read_text(encoding="utf-8", errors="replace").partition("\n")
            except OSError:
                return "cannot read this file"
            if tag == _fail_tag():  # (else another version's, or before a decoder was added)
                return msg or "cannot read this file"
        return None

    def put(self, key: str, img: QImage) -> None:
        base = self._base(key)
        if base is None:
            return
        from engine.errors import EngineError
        from engine.imageio import atomic_write_bytes

        data = encode_jpeg(img)
        try:
            atomic_write_bytes(base.with_suffix(".jpg"), data)
        except (OSError, EngineError) as e:  # (SaveFailed: a full disk, a read-only cache)
            log.debug("thumbnail cache write failed: %s", e)
            return
        with self._lock:
            self._written += len(data)
            due = self._known is not None and self._known + self._written > self.max_bytes
        if due and self._pruning.acquire(blocking=False):  # (else another thread prunes now)
            try:
                self._prune()
            except Exception:  # (the thumbnail is written: it is shown all the same)
                log.exception("thumbnail cache prune failed")
            finally:
                self._pruning.release()

    def put_failure(self, key: str, message: str) -> None:
        base = self._base(key)
        if base is None:
            return
        from engine.errors import EngineError
        from engine.imageio import atomic_write_bytes

        try:
            atomic_write_bytes(base.with_suffix(".fail"), f"{_fail_tag()}\n{message}".encode())
        except (OSError, EngineError) as e:
            log.debug("thumbnail failure marker write failed: %s", e)

    def prune(self) -> tuple[int, int]:
        """While the cache (every kind's entries, see ``for_kind``) is over ``max_bytes``,
        remove the least recently used entries of any kind (down to CACHE_PRUNE_TO of it);
        other kinds' entries and other versions' failure markers also go once unused for
        OTHERS_KEPT_FOR. Returns (files removed, bytes left). One stat per file (and a read per
        failure marker of this kind): in the pool."""
        with self._pruning:
            return self._prune()

    def _prune(self) -> tuple[int, int]:
        if self.root is None:
            return 0, 0
        t0 = time.perf_counter()
        stale_before = time.time_ns() - int(OTHERS_KEPT_FOR * 1e9)
        others, tops = ([], []) if self.base is None else _other_kinds(self.base, self.root)
        tag: bytes | None = None  # (asked at the first marker: most caches have few)
        # (last used ns, size, path, mtime ns) of the entries kept, every kind's
        kept: list[tuple[int, int, str, int]] = []
        total = removed = 0
        for d, own in [(d, True) for d in _subdirs(self.root)] + [(d, False) for d in others]:
            try:
                with os.scandir(d) as it:
                    entries = [e for e in it if _ENTRY_RE.match(e.name)]
            except OSError:
                continue
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:  # (removed meanwhile)
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                used, current = st.st_mtime_ns, own
                if not own:  # (a stat: the scan itself changes no access time)
                    used = max(used, st.st_atime_ns)
                elif e.name.endswith(".fail"):
                    tag = tag or _fail_tag().encode()
                    current = _marker_tag(e.path) == tag
                if not current and used < stale_before:
                    removed += _remove(e.path, st.st_mtime_ns)
                    continue
                kept.append((used, st.st_size, e.path, st.st_mtime_ns))
                total += st.st_size
        stale, n = removed, len(kept)
        if total > self.max_bytes:
            kept.sort()  # least recently used first, whatever its kind
            target = self.max_bytes * CACHE_PRUNE_TO
            for _used_ns, size, path, mtime_ns in kept:
                if total <= target:
                    break
                if _remove(path, mtime_ns):
                    total -= size
                    removed += 1
                    n -= 1
        for d in [*others, *tops]:  # the folders emptied go (not one with a .part, a foreign file)
            with contextlib.suppress(OSError):
                os.rmdir(d)
        with self._lock:
            self._known, self._written = total, 0
        log.info("thumbnail cache: %d stale and %d least used files removed, %d kept (%d MB) "
                 "in %.2f s", stale, removed - stale, n, total >> 20, time.perf_counter() - t0)
        return removed, total


def _subdirs(folder: str | os.PathLike[str]) -> list[str]:
    """The ``<k[:2]>`` folders of a cache."""
    try:
        with os.scandir(folder) as it:
            return [e.path for e in it if _SUBDIR_RE.match(e.name)
                    and e.is_dir(follow_symlinks=False)]
    except OSError:  # no cache yet, or not readable
        return []


def _other_kinds(base: Path, keep: Path) -> tuple[list[str], list[str]]:
    """The entry folders in ``base`` that are not ``keep``'s: other kinds' ``<k[:2]>``
    folders, and those from before kinds had folders (flat in ``base``); and the other kinds'
    own folders (removed once emptied)."""
    try:
        with os.scandir(base) as it:
            folders = [e for e in it if e.is_dir(follow_symlinks=False) and e.name != keep.name]
    except OSError:
        return [], []
    dirs: list[str] = []
    tops: list[str] = []
    for folder in folders:
        if _SUBDIR_RE.match(folder.name):
            dirs.append(folder.path)
        else:
            dirs += _subdirs(folder.path)
            tops.append(folder.path)
    return dirs, tops


def _used(path: Path) -> bool:
    """Whether ``path`` exists; marks it used when its mark is older than TOUCH_AFTER."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if time.time() - st.st_mtime > TOUCH_AFTER:
        try:
            os.utime(path)
        except OSError:  # (a read-only cache: it is only pruned sooner)
            pass
    return True


def _marker_tag(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.readline(512).rstrip(b"\n")
    except OSError:
        return None


def _remove(path: str, mtime_ns: int) -> bool:
    """Delete a cache entry unless it was written or used again since it was looked at
    (another thread or Mend process); one held open elsewhere (Windows) stays. True when it is
    gone: one another process pruning too removed first counts (else both would remove more)."""
    try:
        if os.stat(path).st_mtime_ns != mtime_ns:
            return False
        os.unlink(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _fail_tag() -> str:
    """First line of a failure marker: the Mend version and its optional decoders. A file one
    version (or one without pillow-heif, rawpy...) could not read is tried again by another."""
    import engine
    from engine import imageio

    kinds = [name for name, ok in (("heif", imageio.heif_supported), ("jxl", imageio.jxl_supported),
                                   ("raw", imageio.raw_supported)) if _safe(ok)]
    return f"mend-thumb-fail {engine.__version__} {'+'.join(kinds) or '-'}"


def _safe(fn) -> bool:
    try:
        return bool(fn())
    except Exception:  # noqa: BLE001 - a broken plugin reads as absent
        return False


class _ThumbTask(QRunnable):
    def __init__(self, loader: ThumbnailLoader, gen: int, path: Path, key: str) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self.loader: ThumbnailLoader | None = loader
        self.gen, self.path, self.key = gen, path, key

    def run(self) -> None:
        ld, self.loader = self.loader, None  # see engine_client._Task: hold nothing once run
        if ld is None or ld.generation != self.gen:  # the folder changed: stale work
            return
        cached = ld.cache.get(self.key)
        if isinstance(cached, QImage):
            ld.signals.ready.emit(self.gen, self.path, ld.for_display(cached))
            return
        if isinstance(cached, str):
            ld.signals.failed.emit(self.gen, self.path, cached)
            return
        try:
            img = rgb_to_qimage(load_thumbnail(self.path, ld.side))
        except Exception as e:  # noqa: BLE001 - a broken photo is cached as a failure
            msg = describe_error(e)
            ld.cache.put_failure(self.key, msg)
            ld.signals.failed.emit(self.gen, self.path, msg)
            return
        ld.cache.put(self.key, img)
        ld.count_built()
        ld.signals.ready.emit(self.gen, self.path, ld.for_display(img))


class _PruneTask(QRunnable):
    def __init__(self, cache: ThumbnailCache) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self.cache: ThumbnailCache | None = cache

    def run(self) -> None:
        cache, self.cache = self.cache, None
        if cache is not None:
            try:
                cache.prune()
            except Exception:  # (a cache that cannot be pruned still works)
                log.exception("thumbnail cache prune failed")


# the path travels as a Python object (a Path): through a Qt string a file name that is not
# valid UTF-8 (surrogate escapes) loses those characters and names another photo, or none
class _Signals(QObject):
    ready = Signal(int, object, QImage)
    failed = Signal(int, object, str)


class ThumbnailLoader(QObject):
    """Request thumbnails; ``ready(generation, path, QImage)`` / ``failed(generation, path, msg)``
    (``path`` the ``Path`` requested)."""

    ready = Signal(int, object, QImage)
    failed = Signal(int, object, str)

    def __init__(self, pool: QThreadPool, cache_dir: Path | None, side: int = THUMB_SIDE,
                 parent: QObject | None = None, display_side: int | None = None) -> None:
        super().__init__(parent)
        self.pool = pool
        self.cache = ThumbnailCache.for_kind(cache_dir)
        self.side = side
        # pixels the grid shows a thumbnail at (device pixels); scaled here, in the pool, so
        # that painting a cell is a plain blit (a smooth-scaled drawPixmap costs ~2 ms a cell)
        self.display_side = display_side
        self.display_dpr = 1.0
        self.generation = 0
        self.built = 0
        self._lock = threading.Lock()
        self._priority = itertools.count()
        self.signals = _Signals()
        self.signals.ready.connect(self._on_ready)
        self.signals.failed.connect(self._on_failed)

    def set_display(self, logical_side: int, dpr: float) -> None:
        self.display_side = max(1, round(logical_side * dpr))
        self.display_dpr = dpr

    def for_display(self, img: QImage) -> QImage:
        side = self.display_side
        if not side or max(img.width(), img.height()) <= side:
            return img
        import cv2

        from ..imaging import qimage_to_rgb

        rgb = qimage_to_rgb(img)
        h, w = rgb.shape[:2]
        s = side / max(h, w)
        small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))),
                           interpolation=cv2.INTER_AREA)
        return rgb_to_qimage(small)

    def prune_cache(self) -> None:
        """Prune the disk cache in the pool (see ``ThumbnailCache.prune``), ahead of thumbnails."""
        if self.cache.root is not None:
            self.pool.start(_PruneTask(self.cache), 2_000_000)  # (thumbnails: < 1_000_000)

    def count_built(self) -> None:
        with self._lock:
            self.built += 1

    def new_generation(self) -> int:
        """Forget queued work (called when the folder changes)."""
        self.generation += 1
        self.pool.clear()
        return self.generation

    def request(self, path: Path, mtime_ns: int, size: int) -> None:
        key = cache_key(path, mtime_ns, size, self.side)
        # newest requests first: what is on screen now beats what scrolled past
        prio = next(self._priority) % 1_000_000
        self.pool.start(_ThumbTask(self, self.generation, path, key), prio)

    def _on_ready(self, gen: int, path: Path, img: QImage) -> None:
        if gen == self.generation:
            self.ready.emit(gen, path, img)

    def _on_failed(self, gen: int, path: Path, msg: str) -> None:
        if gen == self.generation:
            self.failed.emit(gen, path, msg)
