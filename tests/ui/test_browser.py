"""Thumbnail model: Qt model contract, lazy fetching, off-thread thumbnails, disk cache, filter."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PySide6.QtCore import QModelIndex, QThreadPool
from PySide6.QtGui import QPixmap
from PySide6.QtTest import QAbstractItemModelTester

from engine.api import Degradation, Diagnosis
from ui.browser import model as bm
from ui.browser.model import (
    ClassFilterProxy,
    DiagnosisRole,
    LabelRole,
    PathRole,
    ThumbnailModel,
    ThumbStateRole,
    scan_folder,
)
from ui.browser.thumbs import ThumbnailLoader, cache_key
from ui.engine_client import JobState

from .conftest import write_photo


def _drain(pool: QThreadPool, qtbot) -> None:
    """Let queued thumbnail work finish and deliver while the test's model and loader still
    exist: pytest-qt processes events at teardown, after the test's locals are gone, and a
    late delivery to a deleted model can crash the process."""
    pool.waitForDone(10000)
    qtbot.wait(60)


def _diag(label: str, conf: float = 0.7) -> Diagnosis:
    rest = (1 - conf) / 3
    return Diagnosis(Degradation(label), {c: (conf if c == label else rest) for c in "ABCD"})


def _load_all_thumbs(qtbot, model: ThumbnailModel) -> None:
    model.fetch_all()
    for r in range(model.rowCount()):
        model.index(r).data(bm.Qt.ItemDataRole.DecorationRole)
    qtbot.waitUntil(lambda: model.ready_count() + model.failed_count() == model.rowCount(),
                    timeout=20000)


def test_model_passes_qabstractitemmodeltester(qtbot, qtlog, pool, photo_folder, tmp_path):
    loader = ThumbnailLoader(pool, tmp_path / "cache")
    model = ThumbnailModel(loader)
    tester = QAbstractItemModelTester(
        model, QAbstractItemModelTester.FailureReportingMode.Warning)
    model.set_folder(photo_folder)
    assert model.total() == 7  # 6 photos + broken.jpg; notes.txt is not a photo
    _load_all_thumbs(qtbot, model)
    model.update_item(model.items()[0].path, diagnosis=_diag("B"), job_state=JobState.RUNNING)
    model.set_folder(None)
    model.set_folder(photo_folder)
    model.fetch_all()
    failures = [r.message for r in qtlog.records if "FAIL" in r.message]
    assert not failures, failures
    _drain(pool, qtbot)
    del tester


# Why the tester runs with setUseFetchMore(False) on a folder bigger than one batch:
# QAbstractItemModelTester (Qt 6.11.3) connects its generic runAllTests() slot to modelReset
# BEFORE its own modelReset() bookkeeping slot, and runAllTests() calls fetchMore(). So on every
# reset it calls fetchMore() while its own changeInFlight is still ModelReset; any rows the model
# then inserts make its rowsAboutToBeInserted/rowsInserted checks fail ("Actual (changeInFlight)
# 5, Expected (ChangeInFlight::None) 0" and "... Expected (ChangeInFlight::RowsInserted) 6"),
# although the model has finished its reset (endResetModel() emits modelReset last) and inserting
# rows then is legal - views do exactly that. Qt's own "Fetch More" example model (reset to zero
# rows, fetchMore() adds 100) fails the same way even with 50 rows. Our model shows the first
# BATCH rows in the reset itself, so up to BATCH photos the tester's fetchMore() inserts nothing
# and it passes. That is a limitation of the tester, not a model bug: canFetchMore() is exactly
# "rows loaded < photos", fetchMore() inserts one consistent batch outside any reset.
# So below: (1) the tester checks every change including resets with our own fetchMore() calls,
# (2) a second tester, created after the reset, drives fetchMore() itself through all batches.
def test_model_passes_qabstractitemmodeltester_beyond_one_batch(qtbot, qtlog, pool, tmp_path):
    d = tmp_path / "six_hundred"
    for i in range(600):
        write_photo(d / f"p{i:04d}.png", 8, 8, seed=i)
    loader = ThumbnailLoader(pool, tmp_path / "cache")
    model = ThumbnailModel(loader)
    tester = QAbstractItemModelTester(
        model, QAbstractItemModelTester.FailureReportingMode.Warning)
    tester.setUseFetchMore(False)
    model.set_folder(d)
    assert model.total() == 600 and model.rowCount() == bm.BATCH and model.canFetchMore()
    model.fetchMore()
    assert model.rowCount() == 2 * bm.BATCH
    model.fetch_all()
    assert model.rowCount() == 600 and not model.canFetchMore()
    for r in (0, 300, 599):  # thumbnails from three batches -> dataChanged
        model.index(r).data(bm.Qt.ItemDataRole.DecorationRole)
    qtbot.waitUntil(lambda: model.ready_count() == 3, timeout=20000)
    qtbot.wait(60)  # the 25 ms coalescing timer emits dataChanged
    model.update_item(model.items()[599].path, diagnosis=_diag("C"), job_state=JobState.DONE)
    model.set_folder(None)
    assert model.rowCount() == 0 and not model.canFetchMore()
    model.set_folder(d)
    model.fetch_all()
    assert model.rowCount() == 600

    model.set_folder(d)  # back to one batch; this tester fetches the rest itself
    driver = QAbstractItemModelTester(
        model, QAbstractItemModelTester.FailureReportingMode.Warning)
    for r in range(3):  # each change makes the tester call fetchMore() once more
        model.update_item(model.items()[r].path, job_state=JobState.QUEUED)
    assert model.rowCount() == 600 and not model.canFetchMore()
    failures = [r.message for r in qtlog.records if "FAIL" in r.message]
    assert not failures, failures[:4]
    _drain(pool, qtbot)
    del tester, driver


def test_fetch_more_in_batches(qtbot, pool, tmp_path, monkeypatch):
    monkeypatch.setattr(bm, "BATCH", 4)
    d = tmp_path / "many"
    for i in range(10):
        write_photo(d / f"p{i:02d}.png", 16, 12, seed=i)
    model = ThumbnailModel(ThumbnailLoader(pool, None))
    model.set_folder(d)
    assert model.rowCount() == 4 and model.canFetchMore()  # the first batch comes at once
    model.fetchMore()
    assert model.rowCount() == 8
    model.fetch_all()
    assert model.rowCount() == 10 and not model.canFetchMore()
    assert model.rowCount(model.index(0)) == 0  # a list: no children
    _drain(pool, qtbot)


def test_thumbnails_are_built_off_thread_and_cached_atomically(qtbot, pool, photo_folder,
                                                               tmp_path):
    cache = tmp_path / "cache"
    loader = ThumbnailLoader(pool, cache)
    model = ThumbnailModel(loader)
    model.set_folder(photo_folder)
    _load_all_thumbs(qtbot, model)
    assert loader.built == 6
    assert model.failed_count() == 1  # broken.jpg
    broken = next(i for i in model.items() if i.path.name == "broken.jpg")
    row = model.row_of(broken.path)
    assert model.index(row).data(ThumbStateRole) == "failed"
    ok = model.index(model.row_of(photo_folder / "photo_01.jpg"))
    assert isinstance(ok.data(bm.Qt.ItemDataRole.DecorationRole), QPixmap)
    jpgs = list(cache.rglob("*.jpg"))
    fails = list(cache.rglob("*.fail"))
    assert len(jpgs) == 6 and len(fails) == 1
    assert not list(cache.rglob("*.part"))  # atomic writes leave no temp files

    # a second session reads the cache: nothing decoded again, failures not retried
    loader2 = ThumbnailLoader(pool, cache)
    model2 = ThumbnailModel(loader2)
    model2.set_folder(photo_folder)
    _load_all_thumbs(qtbot, model2)
    assert loader2.built == 0 and model2.failed_count() == 1

    # a changed file (new mtime/size) gets a new key
    it = next(i for i in model2.items() if i.path.name == "photo_00.png")
    write_photo(it.path, 100, 70, seed=42)
    st = it.path.stat()
    assert cache_key(it.path, st.st_mtime_ns, st.st_size) != cache_key(it.path, it.mtime_ns,
                                                                      it.size)
    _drain(pool, qtbot)


def test_stale_results_dropped_when_folder_changes(qtbot, pool, photo_folder, tmp_path):
    loader = ThumbnailLoader(pool, None)
    model = ThumbnailModel(loader)
    model.set_folder(photo_folder)
    model.fetch_all()
    got = []
    loader.ready.connect(lambda g, p, img: got.append(p))
    for r in range(model.rowCount()):
        model.index(r).data(bm.Qt.ItemDataRole.DecorationRole)
    other = tmp_path / "other"
    write_photo(other / "x.png", seed=9)
    model.set_folder(other)  # new generation: queued work dropped, late results ignored
    model.fetch_all()
    model.index(0).data(bm.Qt.ItemDataRole.DecorationRole)
    qtbot.waitUntil(lambda: model.ready_count() == 1, timeout=10000)
    pool.waitForDone(10000)
    qtbot.wait(50)
    assert model.ready_count() == 1
    assert all(Path(p).parent == other for p in got[-1:])
    assert all(Path(p).parent in (other, photo_folder) for p in got)
    assert model.index(0).data(PathRole) == other / "x.png"
    _drain(pool, qtbot)


def test_filter_by_class_and_badge_roles(qtbot, pool, photo_folder):
    model = ThumbnailModel(ThumbnailLoader(pool, None))
    model.set_folder(photo_folder)
    model.fetch_all()
    items = model.items()
    model.update_item(items[0].path, diagnosis=_diag("B", 0.9))
    model.update_item(items[1].path, diagnosis=_diag("D"))
    model.update_item(items[2].path, job_state=JobState.FAILED, error="boom")
    proxy = ClassFilterProxy()
    proxy.setSourceModel(model)
    assert proxy.rowCount() == 7
    proxy.set_classes({"B"})
    assert proxy.rowCount() == 1
    ix = proxy.index(0, 0)
    assert ix.data(LabelRole) == "B" and ix.data(DiagnosisRole).confidence == pytest.approx(0.9)
    proxy.set_classes({"?"})
    assert proxy.rowCount() == 5
    proxy.set_classes(None)
    assert proxy.rowCount() == 7
    assert JobState(model.index(2).data(bm.JobStateRole)) is JobState.FAILED
    assert not model.index(0, 0, QModelIndex()).parent().isValid()
    _drain(pool, qtbot)


def test_scan_folder_is_fast(tmp_path):
    d = tmp_path / "big"
    d.mkdir()
    for i in range(1000):
        os.close(os.open(d / f"img_{i:05d}.jpg", os.O_CREAT | os.O_WRONLY))
    import time

    t, c = time.perf_counter(), time.thread_time()
    items = scan_folder(d)
    cpu, dt = time.thread_time() - c, time.perf_counter() - t
    assert len(items) == 1000 and items[0].path.name == "img_00000.jpg"
    # listing happens on the GUI thread: it must stay cheap. Its CPU time is what this code
    # costs; wall time only loosely (a loaded CI runner can preempt any thread)
    assert cpu < 0.25, cpu
    assert dt < 2.0, dt


def test_keeping_the_current_photo_refilters_only_when_it_matters(qtbot):
    """Moving between photos the filter shows anyway must not re-filter every row (an arrow
    key on a big folder would cost O(photos) on the GUI thread)."""
    from PySide6.QtGui import QStandardItemModel

    from ui.browser.model import ClassFilterProxy

    proxy = ClassFilterProxy()
    proxy.setSourceModel(QStandardItemModel())
    calls = []
    proxy.invalidateFilter = lambda: calls.append(1)
    proxy.sourceModel().item = lambda path: None  # every photo passes the filter on its own
    proxy._classes = {"A"}
    proxy.set_keep(Path("a.jpg"))
    proxy.set_keep(Path("b.jpg"))
    assert calls == []
    proxy.sourceModel().item = lambda path: type("I", (), {"diagnosis": None})()  # "?"
    proxy.set_keep(Path("c.jpg"))  # shown only because it is current
    assert calls == [1]
