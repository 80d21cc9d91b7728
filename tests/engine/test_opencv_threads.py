"""OpenCV follows the engine's thread count (``devices.configure_opencv``): it ran its
parallel loops on every core (2 here) with ``MEND_THREADS=1``, beside torch's 1 thread."""
from __future__ import annotations

import os

import cv2
import pytest

from engine import devices
from engine.estimate import CostHistory
from engine.pipeline import Engine


@pytest.fixture
def opencv_threads(monkeypatch):
    """OpenCV's thread count put back after the test; ``select_device`` asked afresh (it is
    cached per process, with the thread count read when first asked)."""
    before = cv2.getNumThreads()
    devices.select_device.cache_clear()
    yield
    devices.select_device.cache_clear()
    cv2.setNumThreads(before)


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_opencv_uses_the_engines_thread_count(monkeypatch, tmp_path, opencv_threads, device):
    monkeypatch.setenv("MEND_THREADS", "1")
    cv2.setNumThreads(3)  # (what OpenCV has on a 3-core machine: not the setting)
    engine = Engine(device, history=CostHistory(None))
    # before the device is chosen (auto: at first use; the analyzer's OpenCV runs first)
    assert cv2.getNumThreads() == 1
    assert engine.device.threads == 1 and cv2.getNumThreads() == 1


def test_opencv_follows_the_device_when_it_is_chosen(monkeypatch, opencv_threads):
    monkeypatch.setenv("MEND_THREADS", "2")
    engine = Engine("auto", history=CostHistory(None))
    assert cv2.getNumThreads() == 2
    cv2.setNumThreads(5)  # (changed by something else meanwhile)
    assert engine.device.threads == 2
    assert cv2.getNumThreads() == 2


def test_a_thread_count_beyond_the_machine_is_capped(monkeypatch, opencv_threads, caplog):
    """``MEND_THREADS=99999`` was taken as it was: OpenCV tried to start 99999 threads (~32000
    started, the system's limit, and a 4 MP blur took 44 s) and torch's OpenMP failed. It is
    capped at 4 x the logical CPUs (at least 8), with a warning once; counts up to the cap,
    such as the 3 other tests use on this 2-core machine, are kept."""
    import logging

    cap = max(8, 4 * (os.cpu_count() or 1))
    if hasattr(devices, "_warn_capped"):
        devices._warn_capped.cache_clear()  # (warned once per value in a process)
    monkeypatch.setenv("MEND_THREADS", "99999")
    with caplog.at_level(logging.WARNING, logger="engine.devices"):
        assert devices.cpu_threads() == cap
        assert devices.max_threads() == cap
        assert devices.select_device("cpu").threads == cap
        devices.configure_opencv()
        assert cv2.getNumThreads() == cap
    warned = [r.getMessage() for r in caplog.records if "MEND_THREADS" in r.getMessage()]
    assert len(warned) == 1 and f"using {cap} threads" in warned[0], warned
    for kept in ("3", str(cap)):
        monkeypatch.setenv("MEND_THREADS", kept)
        assert devices.cpu_threads() == int(kept)
    assert devices.cpu_threads() == cap  # (no further warning for a count that is not capped)
    assert len([r for r in caplog.records if "MEND_THREADS" in r.getMessage()]) == 1
    # (a value that is not a plain positive number is ignored as before: cores - 1)
    for ignored in ("0", "-4", "²", "many"):
        monkeypatch.setenv("MEND_THREADS", ignored)
        assert devices.cpu_threads() == max(1, (os.cpu_count() or 1) - 1)
