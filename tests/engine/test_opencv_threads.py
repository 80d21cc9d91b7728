"""OpenCV follows the engine's thread count (``devices.configure_opencv``): it ran its
parallel loops on every core (2 here) with ``MEND_THREADS=1``, beside torch's 1 thread."""
from __future__ import annotations

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
