"""Opening a photo in the viewer shows its grid thumbnail at once, while the full image decodes
in the pool (a 24 MP photo took seconds of "Loading…" or of the previous photo)."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from .conftest import write_photo


@pytest.fixture
def big_folder(tmp_path) -> Path:
    d = tmp_path / "big"
    write_photo(d / "a.jpg", 600, 400, seed=1)
    write_photo(d / "b.png", 600, 400, seed=2)
    return d


def _opened(qtbot, win, folder: Path) -> None:
    win.open_folder(folder)
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    qtbot.waitUntil(lambda: win.model.ready_count() == 2, timeout=20000)


def _busy_pool(win) -> threading.Event:
    """Every decode thread held until the returned event is set: decodes queue up."""
    gate = threading.Event()
    for _ in range(win.client.pool.maxThreadCount()):
        win.client.run_in_pool(lambda: gate.wait(10))
    return gate


def test_the_thumbnail_shows_while_the_photo_decodes(qtbot, window, big_folder):
    win = window
    _opened(qtbot, win, big_folder)
    a, b = sorted(big_folder.iterdir())
    gate = _busy_pool(win)
    try:
        win.show_viewer(a)
        thumb = win.canvas.before
        assert thumb is not None and not thumb.isNull()  # before any decode ran
        assert max(thumb.width(), thumb.height()) <= 256 and thumb.width() > thumb.height()
        assert win.canvas.fit_mode
    finally:
        gate.set()
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        pass
    assert (win.canvas.before.width(), win.canvas.before.height()) == (600, 400)
    assert win._view is not None and win._view.path == a

    # stepping on: the next photo's thumbnail replaces the previous photo at once
    gate = _busy_pool(win)
    try:
        win.step_photo(1)
        assert win.current == b
        assert win.canvas.before.width() <= 256 and win._view is None
    finally:
        gate.set()
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        pass
    assert win.canvas.before.width() == 600 and win._view.path == b


def test_reloading_the_photo_shown_keeps_it_until_the_new_decode(qtbot, window, big_folder):
    """A fix finishing reloads the photo on screen: no thumbnail flashes over it."""
    win = window
    _opened(qtbot, win, big_folder)
    a = min(big_folder.iterdir())
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(a)
    gate = _busy_pool(win)
    try:
        win.load_view(a)
        assert win.canvas.before.width() == 600 and win._view is not None
    finally:
        gate.set()
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        pass


def test_zoomed_in_the_previous_photo_stays_until_the_decode(qtbot, window, big_folder):
    win = window
    _opened(qtbot, win, big_folder)
    a, b = sorted(big_folder.iterdir())
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(a)
    win.canvas.actual_size()  # 100 %: a thumbnail would be a blur
    gate = _busy_pool(win)
    try:
        win.step_photo(1)
        assert win.current == b and win.canvas.before.width() == 600
    finally:
        gate.set()
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        pass
    assert win._view.path == b
