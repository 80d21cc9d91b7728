"""Settings the engine reads once, when it starts, say so when they change: the thread count
reached only the RAW decoder at once (torch's and the OCR sessions' threads are set when the
engine chooses its device), and the app said nothing of it."""
from __future__ import annotations

from dataclasses import replace

import pytest

from tests.ui.conftest import built_window


@pytest.mark.parametrize("change,said", [
    ({"threads": 3}, "Threads apply after a restart of Mend"),
    ({"tile_size": 384}, "Tile size applies after a restart of Mend"),
    ({"device": "cpu", "tile_size": 384, "threads": 1},
     "Device, tile size and threads apply after a restart of Mend"),
])
def test_a_setting_read_at_start_says_it_needs_a_restart(qtbot, tmp_path, monkeypatch, change,
                                                         said):
    # (the window sets MEND_THREADS from its settings: put back as it was afterwards)
    monkeypatch.setenv("MEND_THREADS", "1")
    with built_window(qtbot, tmp_path) as win:
        win.apply_settings(replace(win.settings, **change))
        assert win.status_label.text() == said


def test_other_settings_say_nothing_of_a_restart(qtbot, tmp_path):
    with built_window(qtbot, tmp_path) as win:
        win.apply_settings(replace(win.settings, quality=77))
        assert "restart" not in win.status_label.text()


def test_the_tile_size_setting_takes_what_the_engine_takes(qtbot):
    """The dialog offered 64-4096 px and a stored 8192 was cut to 4096, while the engine,
    `--tile` and a plan's `tile` take 64-8192."""
    from engine.pipeline import MAX_TILE, MIN_TILE
    from ui.dialogs.settings import SettingsDialog
    from ui.settings import AppSettings, load_settings, qsettings

    dlg = SettingsDialog(AppSettings())
    qtbot.addWidget(dlg)
    assert (dlg.tile.minimum(), dlg.tile.maximum()) == (MIN_TILE, MAX_TILE) == (64, 8192)
    qs = qsettings()
    for stored, read in (("8192", 8192), ("9000", 8192), ("10", 64)):
        qs.setValue("settings/tile_size", stored)
        qs.sync()
        assert load_settings().tile_size == read
