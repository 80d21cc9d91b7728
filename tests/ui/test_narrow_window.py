"""The window fits a 1024 px wide screen (it could not be narrower than 1222 px), the diagnosis
dock never scrolls sideways (a long name is cut, long text wraps) and "Fix this photo" stays in
view once a photo is diagnosed (it was below the fold of the dock at 1440 x 900)."""
from __future__ import annotations

from PySide6.QtCore import QPoint, QRect

from .conftest import opened, write_photo

LONG = "holiday_2024_" + "very_long_camera_export_name_" * 3 + "final_edit_v3.png"


def _in_view(widget, dock) -> bool:
    """Whether ``widget`` is shown whole: not clipped by a scroll area, inside the dock."""
    if not widget.isVisible():
        return False
    at = widget.mapTo(dock, QPoint(0, 0))
    return (widget.visibleRegion().boundingRect() == widget.rect()
            and dock.rect().contains(QRect(at, widget.size())))


def test_window_fits_1024_px_and_keeps_fix_in_view(qtbot, window, tmp_path):
    win = window
    photo = write_photo(tmp_path / "long" / LONG, 160, 120, seed=4, kind="noisy")
    assert win.minimumSizeHint().width() <= 1024
    win.resize(1440, 900)
    opened(qtbot, win, photo.parent)
    win.select_path(photo)
    with qtbot.waitSignal(win.diagnosed, timeout=60000):
        win.diagnose([photo])
    qtbot.waitUntil(lambda: win.panel.plan is not None and win.panel.est_form.rowCount() > 5,
                    timeout=10000)
    panel, dock, btn = win.panel, win.diag_dock, win.panel.run_btn
    assert panel.title.text() == LONG  # (the whole name; shown cut in the middle)
    qtbot.waitUntil(lambda: _in_view(btn, dock), timeout=5000)
    assert btn.isEnabled()

    # a diagnosed photo's panel does not make the window wider either
    assert win.minimumSizeHint().width() <= 1024
    win.resize(1024, 640)
    qtbot.waitUntil(lambda: win.width() == 1024, timeout=5000)
    qtbot.waitUntil(lambda: _in_view(btn, dock), timeout=5000)
    # no sideways scrolling: the panel is as wide as the dock shows it, the name on one line
    view = panel.scroll.viewport()
    assert not panel.scroll.horizontalScrollBar().isVisible()
    assert panel.body.width() <= view.width()
    assert panel.body.minimumSizeHint().width() <= view.width()
    assert panel.title.height() < 2 * panel.title.fontMetrics().height()
    assert panel.title.toolTip() == LONG  # (cut: the whole name in its tooltip)
