"""Off-GUI-thread photo work for the viewer: decode full images + display proxies, the removed
layer, export copies. Results come back through a signal carrying QImages / numpy arrays."""
from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from .imaging import (
    argb_to_qimage,
    load_full_rgba,
    premultiplied_argb,
    rgb_to_qimage,
    rgba_to_qimage,
)
from .messages import describe_error

PROXY_SIDE = 2048


@dataclass(frozen=True)
class ViewImages:
    path: Path
    before: QImage
    before_proxy: QImage | None
    after: QImage | None
    after_proxy: QImage | None
    removed: QImage | None
    before_rgb: np.ndarray  # uint8, for the mask editor's size and SAM
    mask: np.ndarray | None = None  # the reflection mask (uint8, photo size), if any


def _display(rgb: np.ndarray, alpha: np.ndarray | None = None
             ) -> tuple[QImage, QImage | None]:
    """The image the canvas draws and its display proxy (None: small enough); with an
    ``alpha``, both premultiplied ARGB (the canvas paints a checkerboard behind them)."""
    if alpha is None:
        return rgb_to_qimage(rgb), _proxy(rgb)
    argb = premultiplied_argb(rgb, alpha)
    return argb_to_qimage(argb), _proxy(argb)


def _proxy(px: np.ndarray) -> QImage | None:
    """Display proxy via OpenCV (releases the GIL; QImage.scaled would hold it and stall the
    GUI thread for a quarter of a second on a 12 MP photo). ``px``: uint8 RGB, or the
    premultiplied ARGB of a transparent photo (``premultiplied_argb``)."""
    h, w = px.shape[:2]
    if max(h, w) <= PROXY_SIDE:
        return None
    import cv2

    s = PROXY_SIDE / max(h, w)
    small = cv2.resize(px, (max(1, round(w * s)), max(1, round(h * s))),
                       interpolation=cv2.INTER_AREA)
    return argb_to_qimage(small) if small.shape[2] == 4 else rgb_to_qimage(small)


def removed_layer(before: np.ndarray, after: np.ndarray, gain: float = 3.0,
                  alpha: np.ndarray | None = None) -> np.ndarray:
    """|input − output| (after resized onto the input), amplified so faint layers show;
    ``alpha`` (the input's, uint8): weighted by it (what changed under transparent pixels was
    never part of the picture)."""
    import cv2

    if after.shape[:2] != before.shape[:2]:
        after = cv2.resize(after, (before.shape[1], before.shape[0]), interpolation=cv2.INTER_AREA)
    # uint8 all the way (no int16 / float32 copies of a 24 MP photo: 0.6 s -> 0.1 s); the
    # product saturates at 255 and is rounded (the same as truncating for a whole gain)
    diff = cv2.absdiff(np.ascontiguousarray(before), np.ascontiguousarray(after))
    out = cv2.convertScaleAbs(diff, alpha=float(gain))
    if alpha is not None:
        a = np.ascontiguousarray(alpha, dtype=np.uint8)
        out = cv2.multiply(out, cv2.merge([a, a, a]), scale=1 / 255)
    return out


def build_view(path: Path, output: Path | None, mask_path: Path | None = None,
               stale: Callable[[], bool] | None = None) -> ViewImages | None:
    """The viewer's images, or None when ``stale()`` says before a decode that they are no
    longer wanted (the photographer stepped on: the photo landed on is not kept waiting)."""
    if stale is not None and stale():
        return None
    before_rgb, before_alpha = load_full_rgba(path)
    mask = None
    if mask_path is not None and Path(mask_path).exists():
        from .editor.mask import read_mask

        mask = read_mask(Path(mask_path), before_rgb.shape[:2])
    before, before_proxy = _display(before_rgb, before_alpha)
    after = after_proxy = removed = None
    if output is not None and Path(output).exists():
        if stale is not None and stale():
            return None
        after_rgb, after_alpha = load_full_rgba(Path(output))
        after, after_proxy = _display(after_rgb, after_alpha)
        removed = rgb_to_qimage(removed_layer(before_rgb, after_rgb, alpha=before_alpha))
    return ViewImages(Path(path), before, before_proxy, after, after_proxy, removed,
                      before_rgb, mask)


def take_preview(path: Path) -> QImage:
    """The preview file the engine wrote (a fix of part of a photo, in the UI's cache) decoded
    for the viewer as the photo is (sRGB, ``load_full``), and deleted: a preview is shown,
    never kept. Off the GUI thread."""
    try:
        return rgba_to_qimage(*load_full_rgba(Path(path)))  # (with its alpha, if any)
    finally:
        remove_quietly(Path(path))


def remove_quietly(path: Path) -> None:
    """Delete ``path`` if it is there (a preview nobody will show). Off the GUI thread."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass


def prune_previews(folder: Path, max_age: float = 86400.0) -> int:
    """Delete the preview files in ``folder`` older than ``max_age`` seconds (a Mend that
    crashed or was killed before showing them; a running one's are seconds old). Off the GUI
    thread; returns how many went."""
    import time

    n = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    now = time.time()
    for e in entries:
        try:
            if e.is_file(follow_symlinks=False) and now - e.stat().st_mtime > max_age:
                os.unlink(e.path)
                n += 1
        except OSError:
            continue
    return n


# extensions that name the same format (a result keeps its own format when exported)
_SAME_FORMAT = ({".jpg", ".jpeg", ".jpe"}, {".tif", ".tiff"})


def export_name(src: Path, dest: Path) -> Path:
    """``dest`` with the extension of the result ``src`` it is a byte copy of: a name typed
    without one gets it (a file without an extension opens nowhere), and one naming another
    format is replaced ("final.jpg" for a PNG result would be a PNG misnamed as a JPEG)."""
    want = Path(src).suffix
    have = dest.suffix.lower()
    if have == want.lower() or any(have in s and want.lower() in s for s in _SAME_FORMAT):
        return dest
    from engine.imageio import is_photo_path

    if is_photo_path(dest):  # another format's extension: replaced
        return dest.with_suffix(want)
    return dest.with_name(dest.name.rstrip(".") + want)  # none ("final"), or "shot.v2"


def export_copy(src: Path, dest: Path, original: Path) -> Path:
    """Copy a result to ``dest`` (with the result's extension, see ``export_name``)
    atomically; refuses to overwrite the original photo or the result itself."""
    from engine.imageio import atomic_write_bytes

    asked = Path(dest)
    dest = export_name(Path(src), asked)
    if _same_file(dest, Path(original)):
        raise OSError(f"refusing to overwrite {dest}: export never replaces the original")
    if _same_file(dest, Path(src)):
        raise OSError(f"{dest} is the result itself: choose another name or folder")
    # only the name the photographer confirmed may replace a file; a name changed here that
    # clashes gets a _1, _2... suffix (nobody was asked about replacing that file)
    return atomic_write_bytes(dest, Path(src).read_bytes(), overwrite=dest == asked)


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` names the file ``b``: by the file's identity where both exist - on macOS
    and Windows "IMG_1.jpg" is the file "IMG_1.JPG" (names ignore case; on macOS Unicode
    normalisation too) while the two paths differ, and resolve() does not make them equal on
    macOS - else by their resolved paths."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except (OSError, ValueError):
        pass
    return a.resolve() == b.resolve()


class Background(QObject):
    """``run(fn, on_done, on_error)`` in a pool; callbacks are called on the GUI thread."""

    _done = Signal(int, object)
    _fail = Signal(int, str)

    def __init__(self, start: Callable[[Callable[[], None]], None], parent=None) -> None:
        super().__init__(parent)
        self._start = start
        self._ids = itertools.count(1)
        self._callbacks: dict[int, tuple[Callable[[Any], None], Callable[[str], None] | None]] = {}
        self._done.connect(self._on_done)
        self._fail.connect(self._on_fail)

    def run(self, fn: Callable[[], Any], on_done: Callable[[Any], None],
            on_error: Callable[[str], None] | None = None) -> int:
        tid = next(self._ids)
        self._callbacks[tid] = (on_done, on_error)
        done, fail = self._done, self._fail

        def work() -> None:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001
                report, args = fail, (tid, describe_error(e))
            else:
                report, args = done, (tid, result)
            try:
                report.emit(*args)
            except RuntimeError:  # Signal source has been deleted: its owner (a window closed
                pass  # meanwhile) is gone; the work is done, nobody waits for its report

        self._start(work)
        return tid

    def pending(self) -> int:
        return len(self._callbacks)

    def forget_pending(self) -> None:
        """Let go of the callbacks of work that has not reported back (the work itself still
        runs). For an owner that is closing: the callbacks are closures over it and would keep
        it alive (in a reference cycle, freed only by the garbage collector)."""
        self._callbacks.clear()

    def _on_done(self, tid: int, result: Any) -> None:
        cb = self._callbacks.pop(tid, None)
        if cb is not None:
            cb[0](result)

    def _on_fail(self, tid: int, msg: str) -> None:
        cb = self._callbacks.pop(tid, None)
        if cb is not None and cb[1] is not None:
            cb[1](msg)
