"""The GUI audit on real photos (session 18): what the window shows matches what is on the disk
and the status line names the right photo."""
from __future__ import annotations

import os
import re
import time

import numpy as np
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


# -- what the audit left (fixed after it) -----------------------------------------------------
def _glare_photo(path, w: int = 240, h: int = 180):
    """A photo with a soft, near-white veil on a darker scene: what the built-in glare detector
    takes for a reflection (lossless: the same pixels however it is read)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.25 + 0.1 * np.sin(xx / 9), 0.35 + 0.1 * np.cos(yy / 7),
                    0.2 + 0.05 * np.sin((xx + yy) / 11)], -1) + rng.normal(0, 0.01, (h, w, 3))
    veil = np.exp(-((xx - 150) ** 2 + (yy - 70) ** 2) / (2 * 16 ** 2))[..., None]
    img = img * (1 - veil) + 0.95 * veil
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def _detected(photo, **params):
    """The mask the ``reflection_mask`` step finds in ``photo`` when a fix runs it (with the
    built-in detector, and ``params``)."""
    from engine.imageio import load_photo
    from engine.progress import Progress
    from engine.restore.registry import StepContext, get_step

    spec = get_step("reflection_mask")
    ctx = StepContext(device=None, progress=Progress(), runtime=None)
    spec.fn(load_photo(photo).pixels, {**spec.defaults, "detector": "builtin", **params}, ctx)
    return ctx.mask


def _in_editor(qtbot, win, photo):
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(photo)
    win.show_mask_editor()
    doc = win.mask_doc
    assert doc is not None and doc.undo.count() == 0 and not doc.full.any()
    return doc


def test_the_mask_editor_of_a_photo_never_fixed_starts_from_the_automatic_mask(
        qtbot, window, tmp_path, monkeypatch):
    """README: "The reflection mask editor starts from the automatic mask", which exists only
    after a fix: on a photo never fixed it started empty. The ``reflection_mask`` step's
    detector now looks in the engine thread, and its mask is laid in as an edit not saved
    (undoable); nothing is written beside the photo, and leaving the folder with it untouched
    does not make it the photo's mask."""
    import threading

    import engine.restore.reflection as R

    win = window
    folder = tmp_path / "glass"
    photo = _glare_photo(folder / "window.png")
    expected = _detected(photo)
    assert expected.any()
    threads = []
    glare = R.detect_glare

    def watched(*a, **k):
        threads.append(threading.current_thread())
        return glare(*a, **k)

    monkeypatch.setattr(R, "detect_glare", watched)
    opened(qtbot, win, folder)
    doc = _in_editor(qtbot, win, photo)  # (empty at first: the detector takes a moment)
    assert win.status_label.text() == ("Finding the reflections in window.png for its "
                                       "automatic mask…")
    (job,) = win.client.jobs()
    assert job.kind.value == "detect" and job.title == "Find reflections in window.png"
    qtbot.waitUntil(lambda: doc.undo.count() == 1, timeout=30000)
    doc.flush()
    assert np.array_equal(doc.full, expected)
    assert threads and threading.main_thread() not in threads  # (the engine thread's)
    share = (expected > 127).mean()
    assert win.status_label.text() == (f"Automatic mask of window.png: the built-in glare "
                                       f"detector marked {share:.1%} of the photo; check it "
                                       "(Undo takes it away)")
    assert not doc.undo.isClean()  # an edit not saved: "Fix" uses it (written first)
    assert win.has_own_mask(photo)
    doc.undo.undo()
    doc.flush()
    assert not doc.full.any() and doc.undo.isClean()
    doc.undo.redo()
    doc.flush()
    assert np.array_equal(doc.full, expected)
    qtbot.waitUntil(win.client.is_idle, timeout=10000)
    assert not (folder / ".mend").exists() or not list((folder / ".mend").glob("*mask*"))
    # leaving the folder writes an automatic mask nobody touched nowhere (it is proposed again)
    (tmp_path / "other").mkdir()
    opened(qtbot, win, tmp_path / "other")
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
    assert "mask edits" not in win.status_label.text()
    assert not (folder / ".mend").exists() or not list((folder / ".mend").glob("*mask*"))
    opened(qtbot, win, folder)
    doc = _in_editor(qtbot, win, photo)
    qtbot.waitUntil(lambda: doc.undo.count() == 1, timeout=30000)


def test_the_automatic_mask_is_not_laid_over_what_the_photographer_painted(
        qtbot, window, tmp_path):
    """The photographer paints while the detector looks: their strokes stay, the automatic
    mask is left out and the status line says so (and it is not looked for again)."""
    win = window
    folder = tmp_path / "glass"
    photo = _glare_photo(folder / "window.png")
    opened(qtbot, win, folder)
    doc = _in_editor(qtbot, win, photo)
    doc.fill_polygon([(10, 10), (40, 10), (40, 40), (10, 40)])
    doc.flush()
    painted = doc.full.copy()
    qtbot.waitUntil(win.client.is_idle, timeout=30000)
    assert win.status_label.text() == ("The automatic mask of window.png was not laid in: you "
                                       "edited the mask while it was looked for, and your edits "
                                       "stay")
    doc.flush()
    assert doc.undo.count() == 1 and np.array_equal(doc.full, painted)
    assert [j.kind.value for j in win.client.jobs()] == ["detect"]
    win.show_browser()
    win.show_mask_editor()  # (the same document: looked for once)
    assert [j.kind.value for j in win.client.jobs()] == ["detect"]


def test_looking_for_the_automatic_mask_is_cancellable_and_shows_its_progress(
        qtbot, window, tmp_path, monkeypatch):
    """The search runs as a job of the Queue panel: its progress is in the status line,
    Cancel stops it (the editor stays empty, nothing said as a failure), and the next time the
    editor opens on the photo it is asked again."""
    import threading

    import engine.restore.reflection as R

    win = window
    folder = tmp_path / "glass"
    photo = _glare_photo(folder / "window.png")
    write_photo(folder / "z_plain.png", 96, 72, seed=2)
    gate, inside = threading.Event(), threading.Event()
    glare = R.detect_glare

    def held(image, *, check=None, **k):
        inside.set()
        while not gate.is_set():
            check()
            gate.wait(0.01)
        return glare(image, check=check, **k)

    monkeypatch.setattr(R, "detect_glare", held)
    opened(qtbot, win, folder)
    doc = _in_editor(qtbot, win, photo)
    qtbot.waitUntil(inside.is_set, timeout=30000)
    qtbot.waitUntil(lambda: win.status_label.text().endswith("%"), timeout=10000)
    assert re.fullmatch(r"Finding the reflections in window\.png for its automatic mask… "
                        r"\d+%", win.status_label.text()), win.status_label.text()
    (job,) = win.client.jobs()
    qtbot.waitUntil(lambda: win.queue.list.count() == 1, timeout=10000)
    assert re.match(r"\[running \d+%\] Find reflections in window\.png — ",
                    win.queue.list.item(0).text())
    win.queue.list.setCurrentRow(0)
    win.queue.list.item(0).setSelected(True)
    win.queue.cancel.click()
    qtbot.waitUntil(win.client.is_idle, timeout=10000)
    assert win.client.job(job.id).state.value == "cancelled"
    assert win.status_label.text() == ""
    assert doc.undo.count() == 0 and not doc.full.any()
    gate.set()
    # another photo and back (its empty document let go meanwhile): looked for again
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.step_photo(1)
    assert win.current == folder / "z_plain.png"
    qtbot.waitUntil(win.client.is_idle, timeout=30000)
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.step_photo(-1)
    doc = win.mask_doc
    assert win.current == photo and doc.undo.count() == 0
    qtbot.waitUntil(lambda: doc.undo.count() == 1, timeout=30000)
    assert [j.path.name for j in win.client.jobs()].count("window.png") == 2


class _HeldEngine:
    """A fix reports 45 % and then waits until it is cancelled (a diagnosis never runs)."""

    device = None

    def run(self, request, progress):
        progress.update(0.45, "step 2/3: denoise")
        while True:
            progress.token.check()
            time.sleep(0.01)


def test_the_queue_names_photos_as_the_grid_does_and_keeps_each_jobs_percentage_in_view(
        qtbot, tmp_path):
    """With "Include subfolders", the Queue panel said "Fix IMG_0001.JPG" twice for the photos
    of 100CANON and 101CANON; and in a narrow window a long name pushed each job's
    percentage off to the right, behind a sideways scroll."""
    from PySide6.QtWidgets import QStyleOptionViewItem

    from ui.engine_client import EngineClient
    from ui.main_window import MainWindow
    from ui.settings import AppSettings

    card = tmp_path / "card"
    sub = "DCIM", "100CANON_wedding_of_anna_and_bernard_ceremony"
    first = write_photo(card.joinpath(*sub, "IMG_0001.JPG"), seed=1)
    second = write_photo(card / "DCIM" / "101CANON" / "IMG_0001.JPG", seed=2)
    client = EngineClient(_HeldEngine, journal=tmp_path / "ui-data" / "queue.json")
    win = MainWindow(client, AppSettings(backend="builtin", profile="builtin",
                                         out_dir=str(tmp_path / "out"), include_subfolders=True),
                     ask_resume=False)
    qtbot.addWidget(win)
    win.resize(760, 600)
    win.show()
    try:
        opened(qtbot, win, card)
        win.fix(first)
        win.fix(second)
        win.diagnose([second])
        one, two = os.path.join(*sub, "IMG_0001.JPG"), os.path.join("DCIM", "101CANON",
                                                                     "IMG_0001.JPG")
        assert [j.title for j in client.jobs()] == [f"Fix {one}", f"Fix {two}",
                                                    f"Diagnose {two}"]
        win.queue_dock.raise_()
        lst = win.queue.list
        qtbot.waitUntil(lambda: lst.count() == 3 and lst.item(0).text().startswith(
            "[running 45%]"), timeout=10000)
        assert lst.item(0).text().startswith(f"[running 45%] Fix {one} — step 2/3: denoise")
        assert lst.item(1).text() == f"[queued] Fix {two}"
        win.queue.refresh()
        qtbot.wait(50)
        # the line is longer than the list is wide: cut in the list, never scrolled sideways
        assert lst.fontMetrics().horizontalAdvance(lst.item(0).text()) > lst.viewport().width()
        assert lst.horizontalScrollBar().maximum() == 0
        assert lst.item(0).toolTip().startswith(lst.item(0).text())  # (the whole line)
        # drawn: its state and percentage whole, the photo's name cut in its middle (its
        # folder's start and its file's name stay), within the list's width
        opt = QStyleOptionViewItem()
        opt.initFrom(lst)
        opt.rect = lst.visualItemRect(lst.item(0))
        lst.itemDelegate().initStyleOption(opt, lst.model().index(0, 0))
        shown = opt.text
        assert shown.startswith("[running 45%] Fix DCIM") and "…" in shown, shown
        assert "_0001.JPG — step" in shown, shown
        assert lst.fontMetrics().horizontalAdvance(shown) <= lst.viewport().width()
        win.grab().save(str(tmp_path / "narrow-queue.png"))  # (looked at when written)
    finally:
        client.cancel_all()
        qtbot.waitUntil(client.is_idle, timeout=20000)
        win.close()
        client.shutdown()


def test_a_relative_output_folder_is_beside_each_photo(qtbot, window, tmp_path, monkeypatch):
    """Settings ▸ Output folder "results": the results went to a folder "results" in
    whatever folder Mend was started from (the process's working folder, which a photographer
    never sees). It is a folder beside each photo, as the default "mended" is, and a listing
    with subfolders leaves it out as it leaves "mended" out."""
    from dataclasses import replace

    from ui.settings import AppSettings

    started = tmp_path / "started-here"
    started.mkdir()
    monkeypatch.chdir(started)
    s = AppSettings(out_dir="results")
    card = tmp_path / "card"
    assert s.output_options(card / "a.jpg", card).out_dir == card / "results"
    assert s.output_options(card / "DCIM" / "b.jpg", card).out_dir == card / "DCIM" / "results"
    assert AppSettings(out_dir="out/mend").output_options(card / "a.jpg").out_dir \
        == card / "out" / "mend"
    # (an absolute one gathers them all, a subfolder's photos in the same subfolder there)
    assert AppSettings(out_dir=str(tmp_path / "all")).output_options(
        card / "DCIM" / "b.jpg", card).out_dir == tmp_path / "all" / "DCIM"
    win = window
    top = write_photo(card / "a.jpg", seed=1)
    below = write_photo(card / "DCIM" / "b.jpg", seed=2)
    win.apply_settings(replace(win.settings, out_dir="results"))
    win.set_include_subfolders(True)
    opened(qtbot, win, card)
    for p in (top, below):
        with qtbot.waitSignal(win.fixed, timeout=60000):
            win.fix(p)
        assert win.states[p].output.parent == p.parent / "results"
        assert win.states[p].output.is_file()
    assert not (started / "results").exists()
    win.reload_folder()  # (the results are not listed as photos)
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    assert sorted(it.path for it in win.model.items()) == sorted([top, below])


def test_the_panel_says_when_the_result_was_deleted_outside_mend(qtbot, window, folder):
    """The panel still said "Result: <path>" after that file was deleted in a file manager;
    shown again (or on F5), the photo's result is looked for off the GUI thread, and the panel
    says it is gone, as Export does."""
    from ui.widgets import ZWSP

    def panel() -> str:
        return win.panel.status.text().replace(ZWSP, "")

    win = window
    opened(qtbot, win, folder)
    target, other = folder / "a_noisy.jpg", folder / "c_smooth.jpg"
    win.select_path(target)
    with qtbot.waitSignal(win.fixed, timeout=60000):
        win.fix(target)
    output = win.states[target].output
    assert panel().startswith("Result") and str(output) in panel()
    output.unlink()
    win.select_path(other)
    win.select_path(target)  # shown again
    gone = (f"The result is no longer on the disk ({output}): it was deleted or moved outside "
            "Mend; fix the photo again to make it again")
    qtbot.waitUntil(lambda: panel() == gone, timeout=10000)
    win.export_current(folder / "copy.jpg")
    qtbot.waitUntil(lambda: "no longer on the disk" in win.status_label.text(), timeout=10000)
    assert win.status_label.text() == (f"The result of a_noisy.jpg is no longer on the disk "
                                       f"({output}): fix the photo again to export it")
    assert panel() == gone
    # F5 with the file back (restored from the bin): the panel names it again
    output.write_bytes(b"")
    win.reload_folder()
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    qtbot.waitUntil(lambda: panel() == f"Result: {output}", timeout=10000)
    output.unlink()  # ... and gone again: F5 says so
    win.reload_folder()
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    qtbot.waitUntil(lambda: panel() == gone, timeout=10000)


def test_a_fix_uses_the_automatic_mask_laid_in(qtbot, window, tmp_path):
    """The automatic mask laid in is the mask "Fix this photo" uses: written beside the photo
    first (only then), as painted edits are, and the fix removes what it covers (class B)."""
    from ui.editor.mask import read_mask

    win = window
    folder = tmp_path / "glass"
    photo = _glare_photo(folder / "window.png")
    expected = _detected(photo)
    opened(qtbot, win, folder)
    doc = _in_editor(qtbot, win, photo)
    qtbot.waitUntil(lambda: doc.undo.count() == 1, timeout=30000)
    assert not (folder / ".mend").exists()
    with qtbot.waitSignal(win.fixed, timeout=60000):
        assert win.fix(photo) is None  # (queued once the mask is written)
    st = win.states[photo]
    assert st.result.label is Degradation.B
    assert np.array_equal(read_mask(st.mask_path, expected.shape) > 127, expected > 127)
    assert doc.undo.isClean()


def test_the_automatic_mask_is_found_as_the_photos_chain_would_find_it(qtbot, window,
                                                                      tmp_path):
    """The detector's parameters are those of the photo's chain (an edited sensitivity), and
    a detector the chain chooses that is not installed (SAM) is said, not replaced."""
    from engine.api import Plan, Step

    win = window
    folder = tmp_path / "glass"
    photo = _glare_photo(folder / "window.png")
    other = _glare_photo(folder / "x_other.png")
    default, keener = _detected(photo), _detected(photo, sensitivity=3.0)
    assert (keener > 127).sum() > (default > 127).sum()
    opened(qtbot, win, folder)
    for p, params in ((photo, {"detector": "builtin", "sensitivity": 3.0}),
                      (other, {"detector": "sam"})):
        st = win._state(p)
        st.plan = Plan(Degradation.B, "builtin", (Step("reflection_mask", params),
                                                  Step("inpaint_builtin")))
        st.plan_edited = True
    doc = _in_editor(qtbot, win, photo)
    qtbot.waitUntil(lambda: doc.undo.count() == 1, timeout=30000)
    doc.flush()
    assert np.array_equal(doc.full, keener)
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.step_photo(1)
    assert win.current == other
    qtbot.waitUntil(lambda: "Could not find" in win.status_label.text(), timeout=30000)
    assert win.status_label.text() == (
        "Could not find the reflections in x_other.png for its automatic mask: The model "
        "'sam-vit-base' is not installed. Open Models… to download it or import an offline "
        "pack, or choose the built-in profile.")
    assert win.mask_doc.undo.count() == 0 and not win.mask_doc.full.any()


def test_the_automatic_mask_goes_before_the_fixes_queued(qtbot, tmp_path):
    """The search the mask editor waits for is queued as a preview is: ahead of the fixes
    and diagnoses of a "Fix selected" (behind them, it waited for the whole batch)."""
    from engine.api import JobRequest
    from ui.engine_client import EngineClient

    photos = [write_photo(tmp_path / f"p{i}.jpg", seed=i) for i in range(3)]
    client = EngineClient(_HeldEngine)
    try:
        fixes = [client.submit(JobRequest(p)) for p in photos]
        qtbot.waitUntil(lambda: client.running_id() == fixes[0], timeout=10000)
        diag = client.diagnose(photos[2])
        found = client.detect_mask(photos[1], name="sub/p1.jpg")
        assert client.queued_ids() == [found, fixes[1], fixes[2], diag]
        assert client.job(found).title == "Find reflections in sub/p1.jpg"
    finally:
        client.cancel_all()
        qtbot.waitUntil(client.is_idle, timeout=10000)
        client.shutdown()


def test_the_automatic_masks_preview_is_reduced_off_the_gui_thread(qtbot):
    """Laying a 12 MP mask in reduced it to the editor's proxy on the GUI thread (12 ms of the
    ~38 ms the lay-in took there): the search reduces it (``mask_proxy``), and the document
    shows the same preview, then the same mask, as when it reduces it itself."""
    from ui.editor.mask import MaskDocument, mask_proxy

    h, w = 3000, 2200
    mask = np.zeros((h, w), np.uint8)
    mask[500:1700, 300:1250] = 255
    mask[2000:2100, 100:2100] = 128
    proxy = mask_proxy(mask)
    assert proxy is not None and proxy.shape != mask.shape
    docs = []
    for given in (None, proxy):
        doc = MaskDocument(h, w)
        doc.set_mask(mask, "Automatic mask", proxy=given)
        docs.append((doc, doc.proxy.copy()))
    (mine, shown_mine), (handed, shown_handed) = docs
    assert np.array_equal(shown_mine, shown_handed)
    for doc, _ in docs:
        doc.flush()
    assert np.array_equal(mine.full, handed.full) and np.array_equal(mine.proxy, handed.proxy)
    assert mask_proxy(mask[:100, :100]) is None  # (small: the proxy is the mask)
    for doc, _ in docs:
        doc.deleteLater()
