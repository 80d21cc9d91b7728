"""The queue and click-select (session 18).

* A click-select job (``EngineClient.sam_select``) gave SAM no cancel check: on a large photo
  its whole-photo resizes ran to the end after a cancel, and SAM's model after them. It gives
  SAM the job's check now: a cancel stops it at once.
* A Retry waiting for its reflection mask to be written (``RETRY_LATER``) was shown in the
  Queue panel as the job it retries, cancelled or failed, with nothing saying it would run;
  "Clear finished" then dropped it, and its retry with it. A fix asked while its photo's mask
  was being written was not in the panel at all. Both are shown waiting now, until they are
  queued or dropped (the mask deleted, its write failed, "Cancel all").
"""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PySide6.QtCore import Qt

from tests.ui.conftest import opened, write_photo
from tests.ui.test_masks_s17 import (
    _cancelled_masked_fix,
    _paint_elsewhere,
    _repainted_mask_held,
    _settled,
)
from ui.engine_client import EngineClient, JobState

SAVED = "runs once its reflection mask is saved"


# -- 1. a click-select job stops on a cancel ----------------------------------------------------
@pytest.fixture(scope="module")
def sam_runtime(tmp_path_factory):
    from tests.model_helpers import install_test_model, make_runtime
    from tests.tiny_models import write_sam

    d = tmp_path_factory.mktemp("sam")
    return make_runtime(install_test_model(d / "store", "sam-vit-base", write_sam(d / "sam")))


def test_a_cancelled_click_select_stops_at_once(qtbot, tmp_path, monkeypatch, sam_runtime,
                                                 release):
    """SAM looks at a photo over 2048 px reduced to that size: a whole-photo resize (0.4 s at
    120 MP) that only the job's cancel check can abandon. Made to take 1 s here, a click-select
    job cancelled during it ran on to its next progress update, 1.07 s after the cancel (the
    check was not passed on); now it ends at once."""
    from engine.restore import reflection as R

    h, w = 1000, 2400
    photo = write_photo(tmp_path / "wide.png", w, h, seed=4)
    view = (2048, round(h * 2048 / w))  # (w, h) of SAM's view of it
    real = cv2.resize
    started, slow = threading.Event(), [True]

    def resize(image, dsize, *a, **kw):
        if slow[0] and image.dtype == np.float32 and image.shape[:2] == (h, w) \
                and tuple(dsize) == view:
            started.set()
            release.wait(1.0)  # (tests/conftest.py)
        return real(image, dsize, *a, **kw)

    monkeypatch.setattr(cv2, "resize", resize)
    engine = SimpleNamespace(runtime=sam_runtime, device=None)
    client = EngineClient(lambda: engine)
    ended: dict[int, tuple[float, object]] = {}
    client.finished.connect(lambda jid, res: ended.setdefault(jid, (time.perf_counter(), res)))
    client.failed.connect(lambda jid, msg: ended.setdefault(jid, (time.perf_counter(), msg)))
    try:
        jid = client.sam_select(photo, [(1200.0, 500.0, 1)])
        qtbot.waitUntil(started.is_set, timeout=60000)
        time.sleep(0.05)
        at = time.perf_counter()
        client.cancel(jid)
        qtbot.waitUntil(lambda: jid in ended, timeout=30000)
        when, what = ended[jid]
        assert client.job(jid).state is JobState.CANCELLED, what
        assert what == "Cancelled." and when - at < 0.3, (what, when - at)
        print(f"click-select stopped {when - at:.3f} s after the cancel")
        release.set()  # (the abandoned resize ends now, not ~0.95 s later)
        # (the abandoned resize ends in its own time, in its slot)
        qtbot.waitUntil(lambda: not R._REDUCE_SLOT.locked(), timeout=10000)
        slow[0] = False
        again = client.sam_select(photo, [(1200.0, 500.0, 1)])
        qtbot.waitUntil(lambda: again in ended, timeout=60000)
        mask = ended[again][1]
        assert isinstance(mask, np.ndarray) and mask.shape == (h, w), mask
    finally:
        client.shutdown()


# -- 2. work waiting for a mask write in the Queue panel --------------------------------------
def _lines(win) -> list[str]:
    lst = win.queue.list
    return [lst.item(i).text() for i in range(lst.count())]


def _shown(qtbot, win, line: str, present: bool = True) -> None:
    qtbot.waitUntil(lambda: (line in _lines(win)) is present, timeout=20000)


def _runs_after(win, target, job: int) -> list:
    return [j for j in win.client.jobs() if j.path == target and j.id > job
            and j.kind.value == "run"]


def test_a_retry_waiting_for_its_mask_is_shown_waiting_until_it_is_queued(qtbot, window,
                                                                         folder, monkeypatch):
    """The Retry is held back while the mask painted since is written: its line says so (it
    said "[cancelled] Fix a_noisy.jpg — Cancelled."), "Clear finished" keeps it (it dropped it,
    and the retry was lost: nothing ran once the mask was written), and once the retry is
    queued the line is the cancelled job's again."""
    win = window
    target, _st, masked, gate = _repainted_mask_held(qtbot, win, folder, monkeypatch)
    waiting = f"[waiting] Fix a_noisy.jpg — {SAVED}"
    try:
        assert win.client.retry(masked) is None
        _shown(qtbot, win, waiting)
        assert win.client.job(masked).waiting == SAVED
        assert win.model.item(target).job_state.value == "queued"  # (the thumbnail's, as was)
        win.client.clear_finished()  # (the panel's "Clear finished")
        win.queue.refresh()
        assert waiting in _lines(win)
        win.queue.list.setCurrentRow(_lines(win).index(waiting))
        assert win.queue.detail.text() == f"{SAVED} (Cancelled.)"
    finally:
        gate.set()
    qtbot.waitUntil(lambda: bool(_runs_after(win, target, masked)), timeout=30000)
    _settled(qtbot, win)
    (run,) = _runs_after(win, target, masked)
    assert run.state is JobState.DONE, run.error
    assert win.client.request(run.id).mask_path is not None
    assert win.client.job(masked).waiting == ""
    win.queue.refresh()
    assert not [t for t in _lines(win) if t.startswith("[waiting]")]
    assert "[cancelled] Fix a_noisy.jpg — Cancelled." in _lines(win)


@pytest.mark.parametrize("drop", ["delete", "cancel all", "failed write"])
def test_waiting_work_dropped_is_shown_waiting_no_more(qtbot, window, folder, monkeypatch,
                                                       drop):
    """A Retry and a Fix waiting for the mask being written: both are in the panel (the fix
    was not at all), and neither is any more once dropped - the mask deleted, "Cancel all", or
    the write failed - and nothing of them runs."""
    import engine.imageio

    win = window
    if drop == "failed write":
        opened(qtbot, win, folder)
        target, _st, masked, doc = _cancelled_masked_fix(qtbot, win, folder)
        _paint_elsewhere(doc)
        gate = threading.Event()

        def failing(*a, **k):
            gate.wait(60)
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(engine.imageio, "save_mask", failing)
        win._write_mask(target, doc)
    else:
        target, _st, masked, gate = _repainted_mask_held(qtbot, win, folder, monkeypatch)
    line = f"[waiting] Fix a_noisy.jpg — {SAVED}"  # (the retry's and the fix's)
    try:
        assert win.client.retry(masked) is None
        assert win.fix(target) is None
        qtbot.waitUntil(lambda: _lines(win).count(line) == 2, timeout=20000)
        rows = [win.queue.list.item(i) for i, t in enumerate(_lines(win)) if t == line]
        # (the job retried can be selected; the fix held back is no job yet: it cannot)
        assert [bool(r.flags() & Qt.ItemFlag.ItemIsSelectable) for r in rows] == [True, False]
        if drop == "delete":
            win.delete_mask(target)
        elif drop == "cancel all":
            win.cancel_all()
    finally:
        gate.set()
    _settled(qtbot, win)
    _shown(qtbot, win, line, present=False)
    assert not [t for t in _lines(win) if t.startswith("[waiting]")]
    assert win.client.job(masked).waiting == ""
    assert not _runs_after(win, target, masked)
    assert win.model.item(target).job_state.value == (
        "failed" if drop == "failed write" else "cancelled")


def test_a_fix_waiting_for_its_mask_is_shown_until_it_is_queued(qtbot, window, folder,
                                                                monkeypatch):
    """A fix (and a preview) asked while the photo's mask is being written is held back by
    the window, not queued: the panel showed nothing of it. Its line shows it waiting, then
    it is queued and runs."""
    win = window
    target, _st, masked, gate = _repainted_mask_held(qtbot, win, folder, monkeypatch)
    fix = f"[waiting] Fix a_noisy.jpg — {SAVED}"
    try:
        assert win.fix(target) is None
        assert win.fix(target, region=(0, 0, 40, 30)) is None
        _shown(qtbot, win, fix)
        _shown(qtbot, win, f"[waiting] Preview a_noisy.jpg (40 × 30 px) — {SAVED}")
    finally:
        gate.set()
    qtbot.waitUntil(lambda: bool(_runs_after(win, target, masked)), timeout=30000)
    _settled(qtbot, win)
    assert [j.state for j in _runs_after(win, target, masked)] == [JobState.DONE]
    assert not [t for t in _lines(win) if t.startswith("[waiting]")]
    assert "[done] Fix a_noisy.jpg" in _lines(win)


# -- 3. a queued preview is costed with the part grown for faces, once they are known ----------
def test_a_queued_preview_is_costed_with_the_faces_a_preview_of_its_photo_found(
        qtbot, tmp_path, monkeypatch):
    """The queue's ETA costed a preview by its region and margin; the run grows the part to
    hold whole the faces reaching the region when the plan upscales before its face step.
    Those faces are only known once looked for (by the engine, when a preview runs; not on the
    GUI thread): a preview queued after one of the same photo has reported them is costed with
    the part grown for them, as the run will process it; before, by its region and margin."""
    from PIL import Image

    from engine.api import Degradation, Diagnosis, JobRequest, JobResult, Plan, Step
    from engine.pipeline import context_box, preview_part

    monkeypatch.setenv("MEND_COST_HISTORY", "")  # no history: the reference figures
    plan = Plan(Degradation.C, "laptop", (Step("upscale_builtin", {"scale": 2}),
                                          Step("face_codeformer")))
    faces = [[300, 200, 700, 600]]  # (a face's paste-back rectangle, as the engine reports it)

    class Eng:
        device = None

        def diagnose(self, path, backend="auto"):
            return Diagnosis(Degradation.C, {"A": 0.1, "B": 0.1, "C": 0.7, "D": 0.1})

        def plan(self, diagnosis, label=None, profile="auto"):
            return plan

        def run(self, request, progress):
            d = self.diagnose(request.path)
            return JobResult(request.path, None, d.label, d, plan, region=request.region,
                             artifacts={"preview_faces": faces})

    eng = Eng()
    client = EngineClient(lambda: eng)
    gate = threading.Event()
    try:
        photo = tmp_path / "p.png"
        Image.new("RGB", (2000, 1500)).save(photo)
        size = (1500, 2000)
        client.diagnose(photo)  # (its plan and size: what a queued run of it is costed by)
        qtbot.waitUntil(client.is_idle, timeout=10000)
        client.device = SimpleNamespace(kind="cpu", threads=1)  # (the stand-in has none)
        region = (650, 500, 1000, 800)  # (the face reaches it)

        def cost(part):
            x0, y0, x1, y1 = part
            return client.estimate(plan, (y1 - y0, x1 - x0)).seconds

        client.call(lambda e, p: gate.wait(10), "hold")  # keeps the previews queued
        first = client.submit(JobRequest(photo, region=region))
        margin_only = context_box(region, size)
        assert client._expected_seconds(client._jobs[first]) == pytest.approx(cost(margin_only))
        gate.set()
        qtbot.waitUntil(client.is_idle, timeout=10000)
        gate.clear()
        client.call(lambda e, p: gate.wait(10), "hold")
        again = client.submit(JobRequest(photo, region=region))
        grown = preview_part(region, size, faces)
        assert grown != margin_only and (grown[2] - grown[0]) * (grown[3] - grown[1]) > \
            (margin_only[2] - margin_only[0]) * (margin_only[3] - margin_only[1])
        assert client._expected_seconds(client._jobs[again]) == pytest.approx(cost(grown))
        assert cost(grown) > cost(margin_only)
        # (a region the face does not reach: its region and margin)
        far = client.submit(JobRequest(photo, region=(1500, 1100, 1900, 1400)))
        assert client._expected_seconds(client._jobs[far]) == pytest.approx(
            cost(context_box((1500, 1100, 1900, 1400), size)))
        gate.set()
        qtbot.waitUntil(client.is_idle, timeout=10000)
    finally:
        gate.set()
        client.shutdown()


def test_a_fix_waiting_for_its_mask_to_be_deleted_says_so(qtbot, window, folder, monkeypatch):
    """A fix asked while the photo's mask is being deleted waits for the deletion, then runs
    without the mask: its line says that is what it waits for."""
    from ui.sidecar import SidecarStore

    win = window
    opened(qtbot, win, folder)
    target, st, _masked, _doc = _cancelled_masked_fix(qtbot, win, folder)
    gate = threading.Event()
    real = SidecarStore.forget_mask

    def held(self, *a, **k):
        gate.wait(60)
        return real(self, *a, **k)

    monkeypatch.setattr(SidecarStore, "forget_mask", held)
    line = "[waiting] Fix a_noisy.jpg — runs once its reflection mask is deleted, without it"
    try:
        win.delete_mask(target)
        assert win.fix(target) is None
        _shown(qtbot, win, line)
    finally:
        gate.set()
    _settled(qtbot, win)
    _shown(qtbot, win, line, present=False)
    (run,) = [j for j in win.client.jobs() if j.path == target and j.state is JobState.DONE
              and j.kind.value == "run"]
    assert win.client.request(run.id).mask_path is None and st.mask_path is None
