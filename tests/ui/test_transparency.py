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
    # and an opaque part is the photo reduced, then shown in sRGB (its Adobe RGB profile
    # converted), as every thumbnail is made: its 8-bit pixels (Pillow's reading of the 16-bit
    # file) reduced, the small image converted (not the whole photo: a full-size conversion
    # and float copy made a 24 MP transparent photo's thumbnail cost 2.5 s and +732 MB)
    from PIL import Image

    from engine.imageio import source_profile
    from ui.imaging import to_srgb

    with Image.open(tree) as im:
        stored = np.asarray(im.convert("RGB"))
    small = to_srgb(cv2.resize(stored, (w, h), interpolation=cv2.INTER_AREA),
                    source_profile(tree))
    assert np.abs(thumb[solid].astype(int) - small[solid]).max() <= 1
    # (the whole photo converted first, then reduced: the same but where sRGB clips the
    # profile's saturated greens)
    full_first = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    assert np.abs(thumb[solid].astype(int) - full_first[solid]).mean() <= 1.5


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


def _thumbnail(qtbot, pool, cache: Path, path: Path) -> np.ndarray:
    loader = ThumbnailLoader(pool, cache)
    st = path.stat()
    with qtbot.waitSignal(loader.ready, timeout=30000) as sig:
        loader.request(path, st.st_mtime_ns, st.st_size)
    return qimage_to_rgb(sig.args[2])


def test_thumbnail_of_a_transparent_jpeg_xl_shows_the_checkerboard(qtbot, pool, tmp_path):
    """A JPEG XL was never looked at for transparency (its plugin decodes the photo to open
    it): its thumbnail showed the red stored under its fully transparent half."""
    from engine import imageio as mio

    if not mio.jxl_supported():
        pytest.skip("no JPEG XL support installed (the optional 'jxl' extra)")
    from PIL import Image

    h, w = 192, 384
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0] = 255  # red stored everywhere
    rgba[:, w // 2:, 1] = np.linspace(0, 255, w // 2, dtype=np.uint8)[None]
    rgba[:, w // 2:, 3] = 255  # the right half opaque, the left half alpha 0 over red
    path = tmp_path / "cutout.jxl"
    try:
        Image.fromarray(rgba, "RGBA").save(path, lossless=True)
    except (OSError, KeyError, ValueError) as e:
        pytest.skip(f"no JPEG XL encoder installed ({e})")
    thumb = _thumbnail(qtbot, pool, tmp_path / "thumbs", path)
    th, tw = thumb.shape[:2]
    assert (th, tw) == (h * THUMB_SIDE // w, THUMB_SIDE)
    board = np.repeat(checkerboard(th, tw)[..., None], 3, axis=2)
    clear = slice(0, tw // 2 - 2)  # (columns from transparent pixels only)
    assert np.abs(thumb[:, clear].astype(int) - board[:, clear]).max() <= 1
    solid = slice(tw // 2 + 2, tw)
    small = cv2.resize(np.ascontiguousarray(rgba[..., :3]), (tw, th),
                       interpolation=cv2.INTER_AREA)
    assert np.abs(thumb[:, solid].astype(int) - small[:, solid]).max() <= 3


_PEAK_PROBE = r"""
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from ui.imaging import load_thumbnail

Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(sys.argv[2])
load_thumbnail(Path(sys.argv[2]), 256)  # (decoders and their libraries loaded)

def status(key):
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith(key))

base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # (the peak is counted from here)
thumb = load_thumbnail(Path(sys.argv[1]), 256)
print(thumb.shape[1], thumb.shape[0], (status("VmHWM") - base) * 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                    reason="the peak memory is read from Linux's /proc")
def test_a_large_transparent_photos_thumbnail_costs_its_8_bit_decode_alone(tmp_path):
    """The thumbnail of a transparent photo was made from the whole photo in float32 (24 MP
    RGBA PNG: 2.5-3.1 s, +732 MB); now from one 8-bit decode, reduced in bands (1.2 s,
    +103 MB). 12 MP here: its decode is 48 MB, the old way took ~370 MB."""
    import subprocess
    import sys

    from PIL import Image

    h, w = 3000, 4000
    y, x = np.mgrid[0:h, 0:w]
    rgba = np.empty((h, w, 4), np.uint8)
    rgba[..., 0] = x * 255 // w
    rgba[..., 1] = y * 255 // h
    rgba[..., 2] = (x ^ y) & 255
    rgba[..., 3] = np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (h / 3) ** 2, 255, 0)
    del x, y
    path = tmp_path / "big.png"
    Image.fromarray(rgba, "RGBA").save(path, compress_level=1)
    del rgba
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", _PEAK_PROBE, str(path), str(tmp_path / "t.png")],
                       capture_output=True, text=True, cwd=root, timeout=300, check=False,
                       env={**__import__("os").environ, "PYTHONPATH": str(root)})
    if r.returncode != 0 and "clear_refs" in r.stderr:
        pytest.skip("this kernel does not let a process reset its peak memory")
    assert r.returncode == 0, r.stderr
    tw, th, peak = (int(v) for v in r.stdout.split())
    assert (tw, th) == (256, 192)
    decoded = h * w * 4
    assert peak < 1.5 * decoded, f"peak +{peak >> 20} MB for a {decoded >> 20} MB decode"
