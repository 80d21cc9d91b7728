"""The GUI audit on real photos (session 18): what the window shows matches what is on the disk
and the status line names the right photo."""
from __future__ import annotations

import os

from PySide6.QtGui import QImage

from engine.api import Degradation
from ui.editor.canvas import Compare

from .conftest import diagnosed, opened, write_photo


def _canvas_pixels(win) -> QImage:
    win.canvas.repaint()
    return win.canvas.grab().toImage()


def test_split_view_of_a_photo_without_a_result_shows_the_whole_photo(qtbot, window, folder):
    """Stepping from a fixed photo (the viewer turns to Split) to one not fixed yet kept Split:
    only the left half of that photo was drawn, the right half was the empty background."""
    win = window
    opened(qtbot, win, folder)
    fixed, plain = folder / "a_noisy.jpg", folder / "b_clean.png"
    diagnosed(qtbot, win, fixed)
    with qtbot.waitSignal(win.fixed, timeout=60000):
        win.fix(fixed)
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(fixed)
    assert win.compare_mode() is Compare.SPLIT
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.step_photo(1)
    assert win.current == plain and win.canvas.after is None
    assert win.compare_mode() is Compare.SPLIT  # (the photographer's choice stays)
    split = _canvas_pixels(win)
    win.set_compare(Compare.BEFORE)
    whole = _canvas_pixels(win)
    # nothing to compare it with: the photo, whole, as in Before (was: its right half empty)
    assert split == whole, "Split without a result does not show the whole photo"


def test_reload_forgets_what_was_known_of_a_photo_replaced_on_the_disk(qtbot, window, folder):
    """F5 after a photo was replaced under its name (re-imported from the card, edited in
    another program): its old diagnosis, badge, class chosen and result stayed on the new
    picture ("D · Clean" on a blurred photo; Export copied the old photo's result), while
    opening the folder again dropped them (its sidecar knows the file changed)."""
    win = window
    opened(qtbot, win, folder)
    target, other = folder / "a_noisy.jpg", folder / "c_smooth.jpg"
    diagnosed(qtbot, win, other)
    st = diagnosed(qtbot, win, target)
    win.panel.set_override(Degradation.C)
    qtbot.waitUntil(win.client.is_idle, timeout=60000)
    with qtbot.waitSignal(win.fixed, timeout=60000):
        win.fix(target)
    assert st.output is not None and win.model.item(target).output is not None
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)  # (its sidecar written)
    stamp = target.stat()
    write_photo(target, 120, 90, seed=7)  # another picture, same name
    os.utime(target, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 5_000_000_000))
    win.reload_folder()
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)  # (its sidecar read too)
    assert win.current == target
    item, now = win.model.item(target), win.states.get(target)
    assert item.diagnosis is None and item.output is None and item.job_state is None
    assert now is None or (now.diagnosis is None and now.output is None
                           and now.override is None and now.plan is None)
    assert win.panel.label.text() == "Not diagnosed yet"
    assert win.panel.override_label() is None
    win.export_current(folder / "final.jpg")
    qtbot.waitUntil(lambda: "Nothing to export" in win.status_label.text(), timeout=5000)
    assert not (folder / "final.jpg").exists()
    # the photos that did not change keep what was done
    assert win.model.item(other).diagnosis is not None
    assert win.states[other].diagnosis is not None


def test_the_status_line_names_a_subfolder_photo_as_the_grid_does(qtbot, window, tmp_path):
    """With "Include subfolders", a card's 100CANON/IMG_0001.JPG and 101CANON/IMG_0001.JPG:
    the status line said "Fixed IMG_0001.JPG" / "IMG_0002.JPG: Cannot read this photo", which
    does not tell which photo it was about; it names the photo as the grid and the panel do."""
    win = window
    card = tmp_path / "card"
    write_photo(card / "DCIM" / "100CANON" / "IMG_0001.JPG", 96, 72, seed=1, kind="noisy")
    ok = write_photo(card / "DCIM" / "101CANON" / "IMG_0001.JPG", 96, 72, seed=2, kind="noisy")
    bad = card / "DCIM" / "101CANON" / "IMG_0002.JPG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    win.set_include_subfolders(True)
    opened(qtbot, win, card)
    shown = os.path.join("DCIM", "101CANON", "IMG_0001.JPG")
    assert win.display_name(ok) == shown
    win.select_path(ok)
    assert win.panel.title.text() == shown
    win.panel.run_btn.click()
    assert win.status_label.text() == f"Queued {shown}"
    with qtbot.waitSignal(win.fixed, timeout=60000):
        pass
    assert f" {shown} " in win.status_label.text(), win.status_label.text()
    win.select_path(bad)
    win.fix(bad)
    qtbot.waitUntil(lambda: "Cannot read" in win.status_label.text(), timeout=60000)
    bad_shown = os.path.join("DCIM", "101CANON", "IMG_0002.JPG")
    assert win.status_label.text().startswith(f"{bad_shown}: Cannot read this photo")


def test_a_photo_restored_from_its_sidecar_shows_its_plans_estimate(qtbot, window, folder,
                                                                   tmp_path):
    """The plan's time and memory estimate needs the photo's size, which only a diagnosis made
    in this window brought: every photo of a folder opened again (its diagnosis and plan
    restored from its sidecar) showed its plan with no estimate at all."""
    win = window
    opened(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    diagnosed(qtbot, win, target)
    qtbot.waitUntil(lambda: win.panel.estimate_label.text().startswith("Estimate:"),
                    timeout=10000)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)  # (its sidecar written)
    (tmp_path / "elsewhere").mkdir()
    opened(qtbot, win, tmp_path / "elsewhere")
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: win.model.item(target).diagnosis is not None, timeout=10000)
    win.select_path(target)
    assert win.panel.plan is not None  # (restored, with the diagnosis)
    qtbot.waitUntil(lambda: win.panel.estimate_label.text().startswith("Estimate:"),
                    timeout=10000)
    assert win.states[target].size == (72, 96)


def test_reload_does_not_say_it_restored_photos_it_already_knew(qtbot, window, folder):
    """F5 read the photos' sidecars again and said "Restored 3 photo(s) from their sidecars"
    while every one of them was known already and kept as it was: nothing was restored."""
    win = window
    opened(qtbot, win, folder)
    for p in sorted(folder.iterdir()):
        diagnosed(qtbot, win, p)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)  # (the sidecars written)
    assert len(list((folder / ".mend").glob("*.json"))) == 3
    win.set_status("")
    win.reload_folder()
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
    assert "Restored" not in win.status_label.text(), win.status_label.text()
    # a photo the window did not know (copied in with its sidecar) is restored, and said so
    (folder / ".mend" / "a_noisy.jpg.json").rename(folder / ".mend" / "d_copy.jpg.json")
    (folder / "a_noisy.jpg").rename(folder / "d_copy.jpg")
    win.reload_folder()
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
    assert win.model.item(folder / "d_copy.jpg").diagnosis is not None
    assert win.status_label.text() == "Restored 1 photo(s) from their sidecars"


def test_a_disabled_fix_button_does_not_look_clickable(qtbot):
    """"Fix this photo" with no photo selected is disabled, yet the theme drew it as the bright
    blue button it is when enabled (its #primary rule outranked QPushButton:disabled)."""
    from PySide6.QtGui import QColor
    from PySide6.QtWidgets import QPushButton

    from ui.app import STYLE

    def background(enabled: bool) -> QColor:
        btn = QPushButton("Fix this photo")
        btn.setObjectName("primary")
        btn.setStyleSheet(STYLE.read_text())  # (the app's theme, on this button alone)
        btn.setEnabled(enabled)
        btn.resize(160, 30)
        qtbot.addWidget(btn)
        img = btn.grab().toImage()
        return img.pixelColor(6, img.height() // 2)  # (inside its border, left of its text)

    on, off = background(True), background(False)
    assert on.name() == "#2f74c0"  # the primary blue
    assert off.name() != on.name() and off.saturation() < 60, off.name()


def test_the_models_dialog_shows_each_models_status_without_scrolling(qtbot, tmp_path,
                                                                     monkeypatch):
    """Tools ▸ Models at its size: the licences (one reads "Apache-2.0 (with third-party
    parts)  ⚠ non-commercial") pushed the Status column - is the model installed? - out of
    view, behind a sideways scroll."""
    from engine.models.store import ModelStore
    from ui.dialogs.models import CHECKING, COLUMNS, ModelManagerDialog
    from ui.engine_client import EngineClient

    monkeypatch.setattr(ModelManagerDialog, "_start_recommendation", lambda self: None)
    client = EngineClient(lambda: None)
    try:
        dlg = ModelManagerDialog(client, ModelStore(tmp_path / "store"))
        qtbot.addWidget(dlg)
        dlg.show()
        qtbot.waitExposed(dlg)
        col = COLUMNS.index("Status")
        rows = range(dlg.table.rowCount())
        qtbot.waitUntil(lambda: all(dlg.table.item(r, col).text() != CHECKING
                                    for r in rows), timeout=10000)
        hh, view = dlg.table.horizontalHeader(), dlg.table.viewport()
        assert hh.sectionViewportPosition(col) >= 0
        assert hh.sectionViewportPosition(col) + hh.sectionSize(col) <= view.width()
        dlg.close()
    finally:
        client.shutdown()


def test_an_output_folder_typed_with_a_tilde_is_the_home_folder(qtbot, tmp_path, monkeypatch):
    """Settings ▸ Output folder typed as "~/Mend results": the results went to a folder
    literally named "~" inside whatever folder Mend was started from."""
    from pathlib import Path

    from ui.dialogs.settings import SettingsDialog
    from ui.settings import AppSettings

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    dlg = SettingsDialog(AppSettings())
    qtbot.addWidget(dlg)
    dlg.out_dir.setText(" ~/Mend results ")
    chosen = dlg.value()
    assert chosen.out_dir == str(tmp_path / "home" / "Mend results")
    out = chosen.output_options(tmp_path / "shoot" / "IMG_1.JPG").out_dir
    assert out == tmp_path / "home" / "Mend results" and "~" not in out.parts
    dlg.out_dir.setText("")  # (empty: beside each photo, in "mended")
    assert dlg.value().output_options(Path("/p/IMG_1.JPG")).out_dir == Path("/p/mended")


def test_fix_selected_with_no_photo_selected_says_what_to_do(qtbot, window, folder):
    """"Fix selected" (or Ctrl+R) in a folder just opened, no photo picked yet: nothing
    happened and nothing was said."""
    win = window
    opened(qtbot, win, folder)
    assert win.current is None and win.grid.selected_paths() == []
    win.fix_btn.click()
    assert win.client.jobs() == []
    assert win.status_label.text() == ("No photo selected: click a photo (Shift/Ctrl-click for "
                                       "more, Ctrl+A for all), then Fix selected")
    win.select_path(folder / "c_smooth.jpg")  # (one picked: the message goes, it is fixed)
    assert win.status_label.text() == ""
    assert len(win.fix_selected()) == 1
    qtbot.waitUntil(win.client.is_idle, timeout=60000)
