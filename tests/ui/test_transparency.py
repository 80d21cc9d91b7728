"""A transparent photo is shown over a checkerboard - its thumbnail, both viewer panes and a
preview laid over the after pane - never with the colours its file stores under fully
transparent pixels (a real PNG: 48 % of it is alpha 0, over pastel rectangles and stripes)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PySide6.QtCore import QPointF
from PySide6.QtGui import QImage

from ui.browser.thumbs import THUMB_SIDE, ThumbnailLoader
from ui.editor.canvas import Compare, ImageCanvas
from ui.imaging import checkerboard, float_to_uint8, load_full, qimage_to_rgb
from ui.photo_io import build_view, take_preview

TREE = Path("lowres_noise_jpeg") / "Real-ESRGAN__inputs__tree_alpha_16bit.png"


@pytest.fixture
def tree(shared_images) -> Path:
    return shared_images / TREE


def _shown_and_alpha(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The photo's pixels as the viewer shows an opaque pixel (sRGB uint8) and its alpha."""
    from engine.imageio import load_photo

    alpha = float_to_uint8(load_photo(path).alpha)
    return load_full(path), alpha


def test_thumbnail_of_a_transparent_photo_shows_the_checkerboard(qtbot, pool, tmp_path, tree):
    rgb, alpha = _shown_and_alpha(tree)
    assert 0.4 < float((alpha == 0).mean()) < 0.6  # (the photo: 48 % fully transparent)
    loader = ThumbnailLoader(pool, tmp_path / "thumbs")
    st = tree.stat()
    with qtbot.waitSignal(loader.ready, timeout=30000) as sig:
        loader.request(tree, st.st_mtime_ns, st.st_size)
    thumb = qimage_to_rgb(sig.args[2])
    h, w = thumb.shape[:2]
    assert max(h, w) == THUMB_SIDE
    # which thumbnail pixels come from transparent pixels only, and which from opaque ones only
    a = cv2.resize(alpha.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    clear, solid = a == 0.0, a == 255.0
    assert clear.mean() > 0.3 and solid.mean() > 0.1
    board = np.repeat(checkerboard(h, w)[..., None], 3, axis=2)
    assert np.abs(thumb[clear].astype(int) - board[clear]).max() <= 1
    # and an opaque part is the photo reduced, as before
    small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    assert np.abs(thumb[solid].astype(int) - small[solid]).max() <= 2


def _canvas_at_100(qtbot, w: int, h: int) -> ImageCanvas:
    """A canvas showing the photo at 100 %, one photo pixel per canvas pixel."""
    canvas = ImageCanvas()
    qtbot.addWidget(canvas)
    canvas.resize(w, h)
    canvas.show()
    return canvas


def _grab_at_100(canvas: ImageCanvas, w: int, h: int) -> np.ndarray:
    canvas.actual_size()
    assert canvas.zoom == 1.0  # (offscreen: one device pixel per pixel)
    canvas.center = QPointF(w / 2, h / 2)
    shot = qimage_to_rgb(canvas.grab().toImage())
    assert shot.shape[:2] == (h, w)
    return shot


def _check(shot: np.ndarray, rgb: np.ndarray, alpha: np.ndarray) -> None:
    h, w = alpha.shape
    keep = np.zeros_like(alpha, dtype=bool)
    keep[40:] = True  # (below the pane's "Before" / "After" label)
    clear, solid = (alpha == 0) & keep, (alpha == 255) & keep
    assert clear.sum() > 0.3 * alpha.size and solid.sum() > 0.2 * alpha.size
    board = np.repeat(checkerboard(h, w)[..., None], 3, axis=2)
    assert np.array_equal(shot[clear], board[clear])  # the checkerboard, not what is stored
    assert np.array_equal(shot[solid], rgb[solid])  # opaque pixels: exactly the photo


def test_viewer_panes_show_a_transparent_photo_over_the_checkerboard(qtbot, tree):
    rgb, alpha = _shown_and_alpha(tree)
    h, w = alpha.shape
    # (the photo as its own result: the before and the after pane both have it)
    v = build_view(tree, tree)
    assert v.before.hasAlphaChannel() and v.after.hasAlphaChannel()
    assert np.array_equal(v.before_rgb, rgb)  # (the mask editor and SAM get the pixels)
    canvas = _canvas_at_100(qtbot, w, h)
    canvas.set_images(v.before, v.after, v.before_proxy, v.after_proxy)
    for mode in (Compare.BEFORE, Compare.AFTER):
        canvas.set_mode(mode)
        _check(_grab_at_100(canvas, w, h), rgb, alpha)


def test_a_preview_over_the_after_pane_keeps_its_transparency(qtbot, tmp_path, tree):
    """A preview (the engine's file, decoded and deleted by take_preview) keeps its alpha and
    is drawn over the checkerboard, not over the photo under it."""
    rgb, alpha = _shown_and_alpha(tree)
    h, w = alpha.shape
    link = tmp_path / "tree_mend_preview.png"
    link.symlink_to(tree)  # (take_preview deletes its file: a link to the photo)
    image = take_preview(link)
    assert not link.exists() and tree.exists()
    assert image.hasAlphaChannel()
    back = image.convertToFormat(QImage.Format.Format_RGBA8888)
    stored = np.frombuffer(back.constBits(), np.uint8).reshape(h, back.bytesPerLine())
    assert np.array_equal(stored[:, : 4 * w].reshape(h, w, 4)[..., 3], alpha)
    # laid over an opaque photo of another colour: the checkerboard shows where it is clear
    under = np.full((h, w, 3), (200, 30, 30), np.uint8)
    from ui.imaging import rgb_to_qimage

    canvas = _canvas_at_100(qtbot, w, h)
    canvas.set_images(rgb_to_qimage(under))
    canvas.set_preview(image, (0, 0, w, h))
    canvas.set_mode(Compare.AFTER)
    shot = _grab_at_100(canvas, w, h)
    inside = np.zeros_like(alpha, dtype=bool)
    inside[40:h - 3, 3:w - 3] = True  # (inside the preview's outline, below its label)
    _check(np.where(inside[..., None], shot, 0), np.where(inside[..., None], rgb, 0),
           np.where(inside, alpha, 1).astype(np.uint8))
