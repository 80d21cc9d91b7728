""""Preview fix here" in the viewer, through the real MainWindow and the real engine thread: the
part of the photo in view becomes a queued preview job with the request "Fix" builds, shown
over the photo in the after pane at its place; the photo is not marked fixed (no badge,
result, output or sidecar entry, nothing in the journal); the preview goes when the plan changes
or a fix finishes. The chain is a test step that paints the photo red (so the after pane shows
unmistakably where the preview lies) or that waits for the test (a job held running)."""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QAction

from engine.api import Degradation, Plan, Step
from engine.restore import registry
from ui import main_window as mw
from ui.editor.canvas import Compare
from ui.engine_client import (
    JobKind,
    JobState,
    read_journal,
    request_from_json,
    request_to_json,
)

from .conftest import built_window, opened, write_photo
from .test_gui_thread_io import gui_disk  # noqa: F401 - a fixture

W, H = 640, 480
_GATE = threading.Event()


def _paint_red(image, params, ctx):
    out = np.zeros_like(image)
    out[..., 0] = 1.0
    ctx.progress.update(1.0, "painted")
    return registry.StepOutput(out, "builtin:test-red")


def _wait_for_test(image, params, ctx):
    while not _GATE.wait(0.02):
        ctx.progress.check()  # (a cancel stops it)
    return registry.StepOutput(image, "builtin:test-wait")


RED = Plan(Degradation.A, "builtin", (Step("test_paint_red"),))
HELD = Plan(Degradation.A, "builtin", (Step("test_wait"), Step("test_paint_red")))
OTHER = Plan(Degradation.A, "builtin", (Step("sharpen_builtin"),))


@pytest.fixture(autouse=True)
def test_steps(monkeypatch):
    registry._load_all()
    for name, fn in (("test_paint_red", _paint_red), ("test_wait", _wait_for_test)):
        monkeypatch.setitem(registry.STEPS, name, registry.StepSpec(name, fn, (), name, {}))
    _GATE.clear()
    yield
    _GATE.set()  # (a held job ends)


@pytest.fixture
def win(qtbot, tmp_path):
    """The conftest's window, with the regression guard off (a red photo is "worse")."""
    with built_window(qtbot, tmp_path, guard=False) as w:
        yield w
        _GATE.set()


@pytest.fixture
def photo(tmp_path) -> Path:
    return write_photo(tmp_path / "shoot" / "wide.png", W, H, seed=4)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _viewer(qtbot, win, photo: Path, plan: Plan | None = RED) -> None:
    opened(qtbot, win, photo.parent)
    win.select_path(photo)
    with qtbot.waitSignal(win.view_loaded, timeout=20000):
        win.show_viewer(photo)
    if plan is not None:
        win._on_plan_edited(plan)  # (the panel's edit: the photo's chain now)


def _shown(qtbot, win) -> None:
    qtbot.waitUntil(lambda: win.canvas.preview is not None, timeout=60000)


def _idle(qtbot, win) -> None:
    qtbot.waitUntil(win.client.is_idle, timeout=60000)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)


def _in_view(canvas) -> tuple[int, int, int, int]:
    """What the canvas shows of the photo, from its zoom and centre (source px)."""
    k = canvas.source_scale()
    hw, hh = canvas.width() / 2 / canvas.zoom, canvas.height() / 2 / canvas.zoom
    c = canvas.center
    return (max(0, round((c.x() - hw) / k)), max(0, round((c.y() - hh) / k)),
            min(W, round((c.x() + hw) / k)), min(H, round((c.y() + hh) / k)))


def _rendered(win, x: float, y: float) -> tuple[int, int, int]:
    """The after pane's colour at source pixel (x, y), as painted."""
    img = win.canvas.grab().toImage()
    k = win.canvas.source_scale()
    pt = win.canvas.to_widget(QPointF((x + 0.5) * k, (y + 0.5) * k))
    c = img.pixelColor(int(pt.x()), int(pt.y()))
    return c.red(), c.green(), c.blue()


def _photo_at(win, x: float, y: float) -> tuple[int, int, int]:
    c = win.canvas.before.pixelColor(int(x), int(y))
    return c.red(), c.green(), c.blue()


def _near(a, b, tol: int = 20) -> bool:
    return all(abs(u - v) <= tol for u, v in zip(a, b, strict=True))


def test_preview_runs_the_fix_on_the_part_in_view_and_shows_it_there(
        qtbot, win, photo, tmp_path, gui_disk):  # noqa: F811 - the fixture
    before = _sha(photo)
    fixed = []
    win.fixed.connect(fixed.append)
    _viewer(qtbot, win, photo)
    win.canvas.zoom_by(3.0)  # (about the pane's centre)
    win.canvas.center = QPointF(win.canvas.center.x() - 60, win.canvas.center.y() + 40)
    expect = _in_view(win.canvas)
    assert 0 < expect[2] - expect[0] < W and 0 < expect[3] - expect[1] < H
    with gui_disk:  # the GUI thread never waits for a disk: queue, decode, show
        jid = win.preview_here()
        _shown(qtbot, win)
    assert gui_disk.under(tmp_path) == []
    info = win.client.job(jid)
    assert info.kind is JobKind.PREVIEW and info.state is JobState.DONE
    req = win.client._jobs[jid].payload
    region = req.region
    assert all(abs(a - b) <= 1 for a, b in zip(region, expect, strict=True)), (region, expect)
    # the request "Fix" builds for this photo (its edited chain), with the region and the
    # preview's own output (the user cache, never the results' folder); the photo was not
    # diagnosed then (it keeps the diagnosis the preview made: see the last test)
    assert req.diagnosis is None
    assert replace(req, output=None, region=None) == replace(
        win.request_for(photo, RED, None), output=None, diagnosis=None)
    assert req.output.out_dir == tmp_path / "ui-cache" / "previews"
    x0, y0, x1, y1 = region
    assert win.canvas.preview_rect.getRect() == (x0, y0, x1 - x0, y1 - y0)
    assert (win.canvas.preview.width(), win.canvas.preview.height()) == (x1 - x0, y1 - y0)

    # in the after pane, at its place: red inside the region, the photo outside
    win.canvas.fit()
    win.set_compare(Compare.AFTER)
    inside = _rendered(win, (x0 + x1) / 2, (y0 + y1) / 2)
    assert inside[0] > 240 and inside[1] < 15 and inside[2] < 15, inside
    ox, oy = (x0 - 40, y0 + 20) if x0 >= 40 else (x1 + 40, y0 + 20)
    assert _near(_rendered(win, ox, oy), _photo_at(win, ox, oy))
    win.set_compare(Compare.BEFORE)  # the before pane is the photo there
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    assert _near(_rendered(win, cx, cy), _photo_at(win, cx, cy))

    # the photo is not fixed: no badge, result, output, sidecar entry or file
    _idle(qtbot, win)
    qtbot.waitUntil(lambda: (photo.parent / ".mend" / "wide.png.json").exists(), timeout=5000)
    st = win.states[photo]
    assert st.result is None and st.output is None and st.outputs == []
    item = win.model.item(photo)
    assert item.job_state is None and item.output is None
    assert json.loads((photo.parent / ".mend" / "wide.png.json").read_text()).get(
        "outputs", []) == []
    assert not fixed and not (tmp_path / "out").exists()
    assert not (photo.parent / "mended").exists()
    assert list((tmp_path / "ui-cache" / "previews").iterdir()) == []  # (decoded, deleted)
    assert _sha(photo) == before
    win.export_current(tmp_path / "exported.png")  # nothing to export: it was no fix
    qtbot.waitUntil(lambda: "Nothing to export" in win.status_label.text(), timeout=5000)


def test_a_large_view_previews_the_square_at_its_centre_and_p_is_the_key(qtbot, win, photo,
                                                                      monkeypatch):
    monkeypatch.setattr(mw, "PREVIEW_SIDE", 200)  # (the photo stands for one over 1024 px)
    _viewer(qtbot, win, photo)
    assert win.canvas.fit_mode
    assert win.preview_region() == (220, 140, 420, 340)
    # the shortcut: P, taken by no other action of the window
    keys = [(a.text(), s.toString()) for a in win.findChildren(QAction) for s in a.shortcuts()]
    assert [t for t, k in keys if k == "P"] == ["Preview fix here"]
    from PySide6.QtTest import QTest

    win.activateWindow()
    win.canvas.setFocus()
    QTest.keyClick(win.canvas, Qt.Key.Key_P)
    _shown(qtbot, win)
    assert win.canvas.preview_rect.getRect() == (220, 140, 200, 200)
    assert win.compare_mode() is Compare.SPLIT  # (brought into view)
    # not in the browser, nor before the photo is shown
    win.show_browser()
    assert not win.preview_action.isEnabled()
    assert win.preview_here() is None and "viewer" in win.status_label.text()


def test_the_preview_goes_when_the_plan_changes(qtbot, win, photo):
    _viewer(qtbot, win, photo)
    win.preview_here()
    _shown(qtbot, win)
    assert win.discard_preview_action.isEnabled()
    win._on_plan_edited(OTHER)  # an edited chain
    assert win.canvas.preview is None and win._preview is None
    assert not win.discard_preview_action.isEnabled()

    # one still running when the plan changes is cancelled and never shown
    win._on_plan_edited(HELD)
    jid = win.preview_here()
    qtbot.waitUntil(lambda: win.client.job(jid).state is JobState.RUNNING, timeout=20000)
    win.panel.set_override(Degradation.C)  # "Fix as": another class, another plan
    qtbot.waitUntil(lambda: win.client.job(jid).state.finished, timeout=20000)
    assert win.client.job(jid).state is JobState.CANCELLED
    _idle(qtbot, win)
    assert win.canvas.preview is None and win._preview is None and not win._preview_jobs
    assert win.model.item(photo).job_state is None  # (no badge, not even "cancelled")


def test_the_preview_goes_when_a_fix_finishes_and_is_never_journaled(qtbot, win, photo,
                                                                    tmp_path):
    _viewer(qtbot, win, photo, plan=HELD)
    fix_id = win.fix(photo)  # held running
    qtbot.waitUntil(lambda: win.client.job(fix_id).state is JobState.RUNNING, timeout=20000)
    pre_id = win.preview_here()  # queued behind it
    assert win.client.job(pre_id).kind is JobKind.PREVIEW
    # the same request as the fix's, but for the region and the preview's output
    fix_req, pre_req = (win.client._jobs[j].payload for j in (fix_id, pre_id))
    assert replace(pre_req, output=fix_req.output, region=None) == fix_req
    # the crash journal offers fixes again, never a preview (it would run as a whole fix)
    win.client.flush_journal()
    jobs = read_journal(tmp_path / "ui-data" / "queue.json")
    assert [(Path(j.path), j.region) for j in jobs] == [(photo, None)]
    assert request_from_json(request_to_json(pre_req)) == pre_req  # (the region kept)
    _GATE.set()
    # the preview was asked after the fix was queued: it is still wanted when the fix ends
    with qtbot.waitSignal(win.fixed, timeout=60000):
        pass
    _shown(qtbot, win)
    _idle(qtbot, win)
    assert win._preview is not None and win._preview.job == pre_id
    st = win.states[photo]
    assert st.output is not None and st.outputs == [str(st.output)]
    assert win.model.item(photo).job_state is JobState.DONE

    # a fix asked after the preview, once done, takes it away: the after pane is the result
    win._on_plan_edited(RED)
    win.preview_here()
    _shown(qtbot, win)
    with qtbot.waitSignal(win.fixed, timeout=60000):
        win.fix(photo)
    assert win._preview is None and win.canvas.preview is None
    qtbot.waitUntil(lambda: win.canvas.after is not None and win._view is not None
                    and win._view.path == photo, timeout=20000)
    _idle(qtbot, win)
    assert win.canvas.preview is None
    assert len(win.states[photo].outputs) == 2


def test_a_new_preview_replaces_one_still_on_its_way(qtbot, win, photo):
    _viewer(qtbot, win, photo, plan=HELD)
    first = win.preview_here()
    qtbot.waitUntil(lambda: win.client.job(first).state is JobState.RUNNING, timeout=20000)
    assert win.preview_region() == (0, 0, W, H)  # (fitted: all of it is in view)
    win.canvas.zoom_by(2.5)
    second = win.preview_here()
    qtbot.waitUntil(lambda: win.client.job(first).state.finished, timeout=20000)
    assert win.client.job(first).state is JobState.CANCELLED
    _GATE.set()
    _shown(qtbot, win)
    _idle(qtbot, win)
    assert win._preview.job == second and not win._preview_jobs
    x0, y0, x1, y1 = win._preview.region
    assert (x1 - x0) < W and (y1 - y0) < H
    assert "Cancelled" not in win.status_label.text()


def test_a_preview_of_a_photo_never_diagnosed_keeps_the_diagnosis_it_made(qtbot, win, photo):
    """The engine diagnoses a photo the app has no diagnosis of before it plans the preview:
    the photo keeps that diagnosis (badge, panel, sidecar), as a diagnosis job's, so that the
    next preview or fix is given it and does not diagnose the photo again."""
    _viewer(qtbot, win, photo)
    st = win.states[photo]
    assert st.diagnosis is None and win.model.item(photo).diagnosis is None
    jid = win.preview_here()
    assert win.client._jobs[jid].payload.diagnosis is None
    _shown(qtbot, win)
    _idle(qtbot, win)
    assert st.diagnosis is not None
    assert win.model.item(photo).diagnosis == st.diagnosis
    assert st.plan == RED and st.plan_edited  # (the edited chain stays the photo's)
    sidecar = photo.parent / ".mend" / "wide.png.json"
    qtbot.waitUntil(lambda: sidecar.exists()
                    and json.loads(sidecar.read_text()).get("diagnosis") is not None,
                    timeout=5000)
    assert json.loads(sidecar.read_text()).get("outputs", []) == []
    # the next preview (and a fix) is given it
    again = win.preview_here()
    assert win.client._jobs[again].payload.diagnosis == st.diagnosis
    assert win.request_for(photo).diagnosis == st.diagnosis
    _shown(qtbot, win)
    _idle(qtbot, win)


def test_a_preview_asked_during_diagnose_all_runs_next_and_is_shown(qtbot, win, tmp_path):
    """"Diagnose all" queues a diagnosis of every photo of the folder: a preview asked then
    waited for all of them, and once its own photo's diagnosis came it was cancelled (that
    diagnosis dropped the previews of the photo asked after it too): never shown. Now it runs
    right after its photo's diagnosis, before the others, with that diagnosis, and is shown."""
    first = write_photo(tmp_path / "shoot" / "a.png", W, H, seed=1)
    shown = write_photo(tmp_path / "shoot" / "b.png", W, H, seed=2)
    last = write_photo(tmp_path / "shoot" / "c.png", W, H, seed=3)
    _viewer(qtbot, win, shown, plan=None)
    started = []
    win.client.job_changed.connect(
        lambda i: started.append(i.id) if i.state is JobState.RUNNING else None)
    held = win.client.call(lambda engine, progress: _GATE.wait(30), "hold the engine")
    qtbot.waitUntil(lambda: win.client.running_id() == held, timeout=20000)
    diagnoses = {win._job_path[jid]: jid for jid in win.diagnose_all()}
    assert set(diagnoses) == {first, shown, last}
    assert win.states[shown].diagnosis is None
    jid = win.preview_here()
    _GATE.set()
    _shown(qtbot, win)
    _idle(qtbot, win)
    assert win.client.job(jid).state is JobState.DONE and win._preview.job == jid
    others = sorted(diagnoses[p] for p in (first, last))  # (in the order they were queued)
    assert list(dict.fromkeys(started)) == [held, diagnoses[shown], jid, *others]
    st = win.states[shown]
    assert st.diagnosis is not None
    assert win.client.request(jid).diagnosis == st.diagnosis  # (not diagnosed again)
    assert "Preview of b.png" in win.status_label.text()
