"""Thumbnails built off the GUI thread, with an atomic disk cache keyed by path + mtime + size.

QImages are made in the pool; the model turns them into QPixmaps on the GUI thread. Failures are
cached too (a ``.fail`` marker) so a broken file is not decoded again and again. When the folder
changes, ``new_generation()`` drops queued work and results of the old generation are ignored.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import threading
from pathlib import Path

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QObject, QRunnable, QThreadPool, Signal
from PySide6.QtGui import QImage

from ..imaging import load_preview, rgb_to_qimage
from ..messages import describe_error

log = logging.getLogger("mend.ui.thumbs")

THUMB_SIDE = 256
# what the cached thumbnails are; another kind's are never read (keyed apart). "srgb": converted
# from the photo's colour profile (earlier ones, keyed without a kind, were the stored values);
# "srgb.2": grey (and CMYK) profiles applied as well (were shown as if untagged: a grey JPEG
# with a dot-gain profile was ~21 levels too dark on average)
THUMB_KIND = "srgb.2"


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

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def _base(self, key: str) -> Path | None:
        return None if self.root is None else self.root / key[:2] / key

    def get(self, key: str) -> QImage | str | None:
        """A QImage, an error message (cached failure) or None (not cached)."""
        base = self._base(key)
        if base is None:
            return None
        jpg = base.with_suffix(".jpg")
        if jpg.exists():
            img = QImage(str(jpg))
            if not img.isNull():
                return img
        fail = base.with_suffix(".fail")
        if fail.exists():
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

        try:
            atomic_write_bytes(base.with_suffix(".jpg"), encode_jpeg(img))
        except (OSError, EngineError) as e:  # (SaveFailed: a full disk, a read-only cache)
            log.debug("thumbnail cache write failed: %s", e)

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
            img = rgb_to_qimage(load_preview(self.path, ld.side))
        except Exception as e:  # noqa: BLE001 - a broken photo is cached as a failure
            msg = describe_error(e)
            ld.cache.put_failure(self.key, msg)
            ld.signals.failed.emit(self.gen, self.path, msg)
            return
        ld.cache.put(self.key, img)
        ld.count_built()
        ld.signals.ready.emit(self.gen, self.path, ld.for_display(img))


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
        self.cache = ThumbnailCache(cache_dir)
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
