"""The GUI audit of session 20 (what the audit before noticed and left alone): a job offered
again after a crash keeps its chip on the grid once its folder is listed (queued, or failed
meanwhile), F5 keeps the photos selected and the current one, Tab has no stop out of sight
or on a scroll area, and the "unchanged" chip comes back after a restart (from the results on
the disk); then what a photographer's session showed: a class filter chosen with thousands of
photos selected froze the window (Qt's selection update, quadratic)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import shiboken6
from PySide6.QtCore import QRect, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QAbstractScrollArea, QApplication

from engine.api import Degradation, Diagnosis, JobRequest
from engine.errors import BadImage
from ui.browser.model import PathRole
from ui.engine_client import EngineClient, JobState, request_to_json
from ui.main_window import MainWindow
from ui.settings import AppSettings, data_dir
from ui.sidecar import SidecarStore

from .conftest import opened, write_photo


def _settings(tmp_path: Path, **kw) -> AppSettings:
    return AppSettings(backend="builtin", profile="builtin", out_dir=str(tmp_path / "out"), **kw)


class _FailingEngine:
    """Every fix fails at once (the photo "cannot be read")."""

    device = None

    def run(self, request, progress):
        raise BadImage(request.path, "not a photo this engine can read")


class _HeldEngine:
    """A fix waits until it is cancelled."""

    device = None

    def run(self, request, progress):
        while True:
            progress.token.check()
            time.sleep(0.01)


def _crash_journal(tmp_path: Path, photos: list[Path]) -> Path:
    """The journal a Mend that crashed with fixes of ``photos`` queued leaves behind."""
    s = _settings(tmp_path)
    journal = data_dir() / "journals" / "queue-1-crashed.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    jobs = [dict(request_to_json(JobRequest(p, s.output_options(p), profile="builtin",
                                            backend="builtin")), queued_at=time.time() - 60)
            for p in photos]
    journal.write_text(json.dumps({"version": 1, "jobs": jobs}))
    return journal


def _chip(win: MainWindow, photo: Path) -> tuple[str | None, str]:
    """The state chip the grid draws on ``photo``'s cell (None: none) and its error."""
    from ui.browser.model import ErrorRole, JobStateRole

    ix = win.proxy.mapFromSource(win.model.index(win.model.row_of(photo)))
    return ix.data(JobStateRole), ix.data(ErrorRole) or ""


def _resumed_window(qtbot, tmp_path, engine, asked) -> MainWindow:
    client = EngineClient(engine, journal=tmp_path / "own.json")
    win = MainWindow(client, _settings(tmp_path), ask_resume=True)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: bool(asked), timeout=10000)
    return win


def _close(win: MainWindow) -> None:
    client = win.client
    client.cancel_all()
    if shiboken6.isValid(win):
        win.close()
    client.shutdown()


def test_a_resumed_fix_that_failed_shows_its_chip_when_its_folder_is_opened(
        qtbot, tmp_path, folder, answered_yes):
    """A fix offered again after a crash, queued before any folder was opened, and failed: its
    folder opened then showed the photo with no chip at all (nor its error in the tooltip),
    as if nothing had been tried; F5 dropped the chip of a fix that failed in the open folder
    the same way."""
    photo = folder / "a_noisy.jpg"
    _crash_journal(tmp_path, [photo])
    win = _resumed_window(qtbot, tmp_path, _FailingEngine, answered_yes)
    try:
        qtbot.waitUntil(lambda: [j.state for j in win.client.jobs()] == [JobState.FAILED],
                        timeout=10000)
        opened(qtbot, win, folder)
        qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
        state, error = _chip(win, photo)
        assert state == "failed" and "not a photo this engine can read" in error
        # failed in the open folder, then F5: still failed
        other = folder / "b_clean.png"
        win.fix(other)
        qtbot.waitUntil(lambda: _chip(win, other)[0] == "failed", timeout=10000)
        win.reload_folder()
        qtbot.waitUntil(lambda: not win.folder_loading and win.bg.pending() == 0,
                        timeout=10000)
        assert _chip(win, other)[0] == "failed" and _chip(win, photo)[0] == "failed"
        assert _chip(win, folder / "c_smooth.jpg") == (None, "")
    finally:
        _close(win)


def test_a_resumed_fix_keeps_its_queued_chip_once_the_sidecars_are_read(
        qtbot, tmp_path, folder, answered_yes):
    """Fixes offered again after a crash, of photos diagnosed before it (their sidecars hold
    the diagnosis): the folder opened showed "running" and "queued" on them, then the sidecars
    read a moment later wiped those chips (no result recorded: no state)."""
    photos = [folder / "a_noisy.jpg", folder / "b_clean.png"]
    store = SidecarStore(folder, data_dir())
    d = Diagnosis(Degradation.A, {"A": 0.7, "B": 0.1, "C": 0.1, "D": 0.1})
    for p in photos:
        store.update(p, diagnosis=d)
    _crash_journal(tmp_path, photos)
    win = _resumed_window(qtbot, tmp_path, _HeldEngine, answered_yes)
    try:
        qtbot.waitUntil(lambda: win.client.running_id() is not None, timeout=10000)
        opened(qtbot, win, folder)
        qtbot.waitUntil(lambda: "Restored 2 photo(s)" in win.status_label.text(),
                        timeout=10000)
        assert win.model.item(photos[0]).diagnosis == d  # (the sidecars were read)
        assert [_chip(win, p)[0] for p in photos] == ["running", "queued"]
    finally:
        _close(win)


def _selected(win: MainWindow) -> list[str]:
    return [p.name for p in win.grid.selected_paths()]


def test_f5_keeps_the_selection_and_the_current_photo(qtbot, window, tmp_path):
    """Ctrl+A (or any photos picked with Ctrl/Shift-click), then F5: the folder listed again
    came back with one photo selected, the current one - "Fix selected" then fixed that one
    alone. The photos still there stay selected, also past the first rows fetched, and the
    current photo stays current."""
    win = window
    folder = tmp_path / "many"
    first = write_photo(folder / "p000.png", 32, 24)
    for i in range(1, 300):
        shutil.copyfile(first, folder / f"p{i:03d}.png")
    opened(qtbot, win, folder)
    win.activateWindow()
    win.select_path(folder / "p280.png")
    QTest.keyClick(win.grid, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    assert len(win.grid.selected_paths()) == 300 and win.current == folder / "p280.png"
    (folder / "p010.png").unlink()  # (deleted meanwhile: not selected again)
    QTest.keyClick(win.grid, Qt.Key.Key_F5)
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    assert win.model.total() == 299
    assert _selected(win) == [f"p{i:03d}.png" for i in range(300) if i != 10]
    assert win.current == folder / "p280.png"
    assert win.grid.currentIndex().data() == "p280.png"
    assert win.panel.selection_note.text().startswith("299 photos selected")
    # a few picked with Ctrl+click, the current one among them
    win.select_path(folder / "p002.png")
    for name in ("p005.png", "p007.png"):
        ix = win.proxy.mapFromSource(win.model.index(win.model.row_of(folder / name)))
        win.grid.selectionModel().select(ix, win.grid.selectionModel().SelectionFlag.Select)
    win.grid.selectionModel().setCurrentIndex(
        ix, win.grid.selectionModel().SelectionFlag.NoUpdate)
    assert _selected(win) == ["p002.png", "p005.png", "p007.png"]
    win.reload_folder()
    qtbot.waitUntil(lambda: not win.folder_loading, timeout=10000)
    assert _selected(win) == ["p002.png", "p005.png", "p007.png"]
    assert win.current == folder / "p007.png"


def _focus_chain(win: MainWindow, start, n: int = 40) -> list:
    """The widgets Tab goes through from ``start`` (as a photographer presses it)."""
    start.setFocus(Qt.FocusReason.TabFocusReason)
    chain = []
    for _ in range(n):
        w = QApplication.focusWidget()
        assert w is not None, f"the keyboard went nowhere after {chain}"
        chain.append(w)
        QTest.keyClick(w, Qt.Key.Key_Tab)
    return chain


def _in_sight(win: MainWindow, w) -> bool:
    top_left = w.mapTo(win, w.rect().topLeft())
    return win.rect().intersects(QRect(top_left, w.size()))


def _stops_unseen(win: MainWindow, chain: list) -> list[str]:
    """The Tab stops of ``chain`` out of the window's sight, or on a scroll area of their own
    (not the thumbnails, the plan's steps or the photo)."""
    return [f"{type(w).__name__} {w.objectName()}" for w in chain if not _in_sight(win, w)
            or (isinstance(w, QAbstractScrollArea)
                and type(w).__name__ not in ("ThumbnailGrid", "QListWidget", "MaskCanvas"))]


def test_tab_has_no_stop_out_of_sight_or_on_a_scroll_area(qtbot, window, folder):
    """Tab from the thumbnails (or the photo in the viewer) went to the Diagnosis panel's
    scroll area - a stop showing nothing - before the panel's first control; and, with the
    docks' layout restored at a start, from the docks' tab bar to a second tab bar Qt kept
    off the window (at -600, -530, shown), and its scroll arrow: three presses with the focus
    nowhere to be seen. Now every stop is a control in sight."""
    from PySide6.QtWidgets import QTabBar

    win = window
    # (the stray tab bar as Qt left it after restoring the layout - seen, not on every start)
    stray = QTabBar(win)
    stray.addTab("Diagnosis")
    stray.addTab("Queue")
    stray.setGeometry(-600, -530, 100, 30)
    stray.show()
    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow, timeout=5000)
    opened(qtbot, win, folder)
    photo = folder / "a_noisy.jpg"
    win.select_path(photo)
    chain = _focus_chain(win, win.grid)
    assert chain[1] is win.panel.override  # (straight on to the panel's first control)
    assert _stops_unseen(win, chain) == []
    assert chain[chain.index(win.fix_btn) + 1] is win.grid  # (the browser's controls lead to
    # the thumbnails)
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(photo)
    chain = _focus_chain(win, win.canvas)
    assert chain[1] is win.panel.override
    assert _stops_unseen(win, chain) == []


@pytest.mark.parametrize("keep_metadata", [True, False], ids=["copied", "written"])
def test_an_unchanged_result_still_says_so_after_a_restart(qtbot, tmp_path, folder,
                                                           keep_metadata):
    """A result that is the original as it was (nothing to fix: the photo's bytes copied, or
    written afresh without its metadata, the record saying so) showed "unchanged" only in the
    session that made it: after a restart the same photo said "done", like a real fix. Now
    it is read from the results on the disk."""
    settings = _settings(tmp_path, keep_metadata=keep_metadata)

    def session():
        client = EngineClient(journal=tmp_path / "ui-data" / "queue.json")
        win = MainWindow(client, settings, ask_resume=False)
        qtbot.addWidget(win)
        win.show()
        return win

    def chips(win) -> dict[str, str]:
        from ui.browser.model import KeptRole

        out = {}
        for row in range(win.proxy.rowCount()):
            ix = win.proxy.index(row, 0)
            state = win.model.item(ix.data(PathRole)).job_state
            out[ix.data()] = ("unchanged" if ix.data(KeptRole) else state.value) if state \
                else "-"
        return out

    expected = {"a_noisy.jpg": "done", "b_clean.png": "unchanged", "c_smooth.jpg": "-"}
    win = session()
    try:
        opened(qtbot, win, folder)
        win.fix(folder / "a_noisy.jpg", label=Degradation.A)
        win.fix(folder / "b_clean.png", label=Degradation.D)  # (nothing to fix)
        qtbot.waitUntil(win.client.is_idle, timeout=60000)
        assert chips(win) == expected
        qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)  # (sidecars written)
        # (the engine's own: the photo's bytes copied with no record, or written with one)
        from engine.imageio import mend_record

        record = mend_record(win.states[folder / "b_clean.png"].output)
        if keep_metadata:
            assert record is None
        else:
            assert record["kept_original"] is True
        assert mend_record(win.states[folder / "a_noisy.jpg"].output)["kept_original"] is False
    finally:
        _close(win)
    win = session()  # (Mend started again)
    try:
        opened(qtbot, win, folder)
        qtbot.waitUntil(lambda: "Restored 2 photo(s)" in win.status_label.text(),
                        timeout=10000)
        assert chips(win) == expected
        win.select_path(folder / "b_clean.png")
        assert "(the original, unchanged)" in win.panel.status.text()
        win.select_path(folder / "a_noisy.jpg")
        assert "(the original, unchanged)" not in win.panel.status.text()
    finally:
        _close(win)


def test_a_fix_finished_as_mend_stopped_shows_in_the_folder_open_at_the_start(
        qtbot, tmp_path, folder, answered_yes):
    """Mend started on a folder (``--open``) after a crash that came just as fixes of it had
    written their results: those were recorded in the sidecars, but the grid, listed already,
    showed nothing on the photos until the folder was opened again. Now "done" at once, and
    "unchanged" for the one whose result is its bytes copied (nothing to fix)."""
    from engine.imageio import load_photo, save_photo, source_record

    s = _settings(tmp_path)
    fixed, clean = folder / "a_noisy.jpg", folder / "b_clean.png"
    _crash_journal(tmp_path, [fixed, clean])
    src = load_photo(fixed)
    written = save_photo(src.pixels, s.output_options(fixed).out_dir / "a_noisy_mend.jpg",
                         like=src, record={"software": "Mend 0.1.0", "label": "A",
                                           "steps": [], "models": [], "kept_original": False,
                                           "source": source_record(fixed)})
    copy = shutil.copyfile(clean, s.output_options(clean).out_dir / "b_clean_mend.png")
    client = EngineClient(_HeldEngine, journal=tmp_path / "own.json")
    win = MainWindow(client, s, ask_resume=False)
    qtbot.addWidget(win)
    win.show()
    try:
        opened(qtbot, win, folder)
        qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
        assert _chip(win, fixed)[0] is None  # (nothing known of it yet)
        win._offer_resume()  # (as at the start)
        qtbot.waitUntil(lambda: "2 fixes had finished" in win.status_label.text(),
                        timeout=10000)
        assert answered_yes == [] and client.jobs() == []
        from ui.browser.model import KeptRole

        assert [_chip(win, p)[0] for p in (fixed, clean)] == ["done", "done"]
        assert [win.model.item(p).kept for p in (fixed, clean)] == [False, True]
        assert win.states[clean].output == Path(copy)
        assert win.states[fixed].output == written
        ix = win.proxy.mapFromSource(win.model.index(win.model.row_of(clean)))
        assert ix.data(KeptRole) is True
        win.select_path(clean)
        assert "(the original, unchanged)" in win.panel.status.text()
    finally:
        _close(win)


def test_a_class_filter_chosen_with_thousands_of_photos_selected_keeps_the_window_live(
        qtbot, window, tmp_path):
    """Ctrl+A in a big folder, half of it diagnosed, then "Show: A": Qt updated the selection
    row by row as the filter took the other half out - quadratic, the window frozen 10.5 s for
    16,000 photos (minutes for 100,000). The photos still shown stay selected, the current one
    current, at once."""
    from ui.browser.model import PhotoItem

    win = window
    n = 12_000
    d = Diagnosis(Degradation.A, {"A": 0.7, "B": 0.1, "C": 0.1, "D": 0.1})
    folder = tmp_path / "big"  # (listed as it would be: the grid's rows are what counts)
    items = [PhotoItem(folder / f"IMG_{i:05d}.jpg", 0, 1, diagnosis=d if i % 2 else None)
             for i in range(n)]
    win.model.set_folder(folder, items)
    win.select_path(items[101].path)
    win.grid.selectAll()
    assert len(win.grid.selected_paths()) == n
    t = time.perf_counter()
    win.filter.setCurrentIndex(1)  # ("A · …")
    assert win.filter.currentData() == {"A"}
    took = time.perf_counter() - t
    assert win.proxy.rowCount() == n // 2
    assert win.grid.selected_paths() == [it.path for it in items[1::2]]
    assert win.current == items[101].path == win.grid.currentIndex().data(PathRole)
    assert took < 1.5, f"{took:.1f} s with the window frozen"
    win.filter.setCurrentIndex(0)  # (all photos again: the same ones selected)
    assert win.proxy.rowCount() == n and len(win.grid.selected_paths()) == n // 2


def test_select_paths_selects_what_is_shown_of_them_under_any_filter(qtbot):
    """``ThumbnailGrid.select_paths`` (F5, a class filter chosen) against the photos picked one
    by one: runs whose ends the filter hides, photos hidden alone, runs that meet across
    hidden photos, rows not fetched yet; the current photo current."""
    import random

    from PySide6.QtCore import QThreadPool

    from ui.browser.model import ClassFilterProxy, PhotoItem, ThumbnailModel
    from ui.browser.thumbs import ThumbnailLoader
    from ui.browser.view import ThumbnailGrid

    grid = ThumbnailGrid()
    qtbot.addWidget(grid)
    loader = ThumbnailLoader(QThreadPool(grid), None, parent=grid)
    model = ThumbnailModel(loader, grid)
    proxy = ClassFilterProxy(grid)
    proxy.setSourceModel(model)
    grid.setModel(proxy)
    rng = random.Random(7)
    d = {c: Diagnosis(c, {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}) for c in Degradation}
    items = [PhotoItem(Path(f"/nowhere/IMG_{i:05d}.jpg"), 0, 1,
                       diagnosis=rng.choice([None, *d.values()])) for i in range(1500)]
    for classes in (None, {"A"}, {"?", "B"}, {"C", "D", "A"}):
        for _trial in range(3):
            model.set_folder(Path("/nowhere"), list(items))  # (256 rows fetched)
            proxy.set_classes(classes)
            picked = []
            for _ in range(rng.randint(1, 12)):  # runs of photos, some alone
                a = rng.randrange(1500)
                picked += [it.path for it in items[a:a + rng.choice([1, 2, 5, 40, 400])]]
            current = rng.choice(picked)
            grid.select_paths(picked, current)

            def shown(it, classes=classes) -> bool:
                label = it.diagnosis.label.value if it.diagnosis else "?"
                return classes is None or label in classes  # (no photo kept: no window)

            assert grid.selected_paths() == [it.path for it in items
                                             if it.path in set(picked) and shown(it)]
            assert grid.currentIndex().data(PathRole) == current \
                or not shown(model.item(current))


def test_a_result_found_at_the_start_keeps_the_sidecars_diagnosis(qtbot, window, folder):
    """The result of a fix finished as Mend stopped, recorded on the grid as the folder given
    at the start was listed, before its sidecars were read: the sidecar (diagnosed before the
    crash) was then passed over as "known here" - the photo lost its class badge, plan and
    chosen class for the session. Now both: the result found, the sidecar's diagnosis."""
    from engine.imageio import load_photo, save_photo, source_record

    win = window
    photo = folder / "a_noisy.jpg"
    d = Diagnosis(Degradation.C, {"A": 0.1, "B": 0.1, "C": 0.7, "D": 0.1})
    SidecarStore(folder, data_dir()).update(photo, diagnosis=d, override="A")
    src = load_photo(photo)
    out = win.settings.output_options(photo).out_dir / "a_noisy_mend.jpg"
    written = save_photo(src.pixels, out, like=src, record={
        "software": "Mend 0.1.0", "label": "A", "steps": [], "models": [],
        "kept_original": False, "source": source_record(photo)})
    offer = {"found": [], "n": 1, "jobs": [], "gone": [], "bad": 0, "unreadable": [],
             "done": [(photo, written, False)]}
    asked = []

    def listed():  # (the resume's answer arrives between the listing and the sidecars)
        if win.model.total() and not asked:
            asked.append(True)
            win._ask_resume(offer)

    win.model.modelReset.connect(listed)
    opened(qtbot, win, folder)
    assert asked and win.model.item(photo).output == written
    qtbot.waitUntil(lambda: "Restored" in win.status_label.text(), timeout=10000)
    item = win.model.item(photo)
    assert (item.diagnosis, item.job_state, item.output) == (d, JobState.DONE, written)
    assert win.states[photo].override is Degradation.A
    assert win.states[photo].outputs == [str(written)]
