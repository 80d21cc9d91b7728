"""bench/classify.py's bookkeeping (the benchmark itself runs in `make bench`, not here)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_classify", ROOT / "bench" / "classify.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_camera_accuracy_is_split_into_full_size_photos_and_thumbnails(tmp_path):
    bench = _bench()
    rng = np.random.default_rng(7)
    rows = []
    for name, (h, w) in {"thumb.png": (75, 100), "big.png": (240, 320), "big2.png": (300, 300)}.items():
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / name)
        rows.append((tmp_path / name, "D", ""))
    m = bench.run_labelled(rows, "builtin", by_size=True)
    full = m["by_size"]["full_size (short side >= 200 px)"]
    thumbs = m["by_size"]["thumbnails (short side < 200 px)"]
    assert (full["n"], thumbs["n"]) == (2, 1)
    # the parts add up to the whole, whatever the analyzer said about random noise
    assert full["correct"] + thumbs["correct"] == round(m["accuracy"] * 3)
    assert {e["min_side"] for e in m["errors"]} <= {75, 240, 300}
    assert "by_size" not in bench.run_labelled(rows[:1], "builtin")


def test_a_failed_photo_is_counted_and_the_model_load_is_timed_apart(tmp_path, monkeypatch):
    """One unreadable VLM answer does not end the run; the first call (which loads the model)
    is not in the per-photo times; peak memory is the process's (torch's tensors included)."""
    import types

    import engine.understand as U
    from engine.api import Degradation, Diagnosis
    from engine.understand.vlm import VLMAnswerError

    bench = _bench()
    clock = [0.0]  # seconds: the fake model's load takes 5, each answer 0.01
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    rows = []
    for i in range(3):
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(tmp_path / f"p{i}.png")
        rows.append((tmp_path / f"p{i}.png", "B", ""))

    class Fake:  # loads a "model" on its first call, cannot read its answer on p1
        name = "fake"
        loaded = False

        def classify(self, image, photo=None):
            clock[0] += 0.01 if self.loaded else 5.01
            self.loaded = True
            if photo.path.name == "p1.png":
                raise VLMAnswerError("I cannot tell")
            return Diagnosis(Degradation.B, {"A": 0.1, "B": 0.7, "C": 0.1, "D": 0.1})

    monkeypatch.setattr(U, "get_classifier", lambda backend, runtime=None: Fake())
    m = bench.run_labelled(rows, "vlm")
    assert (m["photos"], m["diagnosed"], m["n"], m["accuracy"]) == (3, 2, 2, 1.0)
    assert m["accuracy_of_all_photos"] == round(2 / 3, 3)
    assert [f["file"] for f in m["failed"]] == ["p1.png"]
    assert "VLMAnswerError" in m["failed"][0]["error"] and m["errors"] == []
    assert m["load_ms"] == 5000.0 and m["ms_per_photo_mean"] == 10.0
    assert m["peak_rss_mb"] >= m["peak_rss_before_mb"] > 0 and "peak_traced_mb" not in m
