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
