"""The bundled sample photos: small, readable, documented, reproducible."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from engine import imageio as mio
from tests.conftest import SHARED_IMAGES

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "resources" / "samples"


def _photos() -> list[Path]:
    return sorted(p for p in SAMPLES.iterdir() if p.name != "SOURCES" and not p.name.startswith("."))


def test_samples_small_documented_and_cover_all_classes():
    photos = _photos()
    assert 4 <= len(photos) <= 8
    sources = (SAMPLES / "SOURCES").read_text()
    assert "public domain" in sources
    total = 0
    for p in photos:
        size = p.stat().st_size
        assert size < 200_000, p.name
        total += size
        line = next((ln for ln in sources.splitlines() if ln.startswith(p.name)), None)
        assert line, f"{p.name} is not described in SOURCES"
        assert line.split()[1] == p.name[0]  # label column matches the file's class prefix
        ph = mio.load_photo(p)
        assert ph.pixels.shape[2] == 3 and min(ph.width, ph.height) >= 128
    assert total < 1_000_000
    assert {p.name[0] for p in photos} == {"A", "B", "C", "D"}


def test_samples_regenerate(shared_images):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_samples
    finally:
        sys.path.pop(0)
    built = make_samples.build(SHARED_IMAGES / "clean")
    assert sorted(built) == [p.name for p in _photos()]
    import io

    from PIL import Image

    for name, data in built.items():
        fresh = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32)
        shipped = np.asarray(Image.open(SAMPLES / name), dtype=np.float32)
        assert fresh.shape == shipped.shape
        assert np.abs(fresh - shipped).mean() < 1.0, name  # same up to JPEG library drift


def test_the_motion_blur_sample_is_the_blur_its_name_says_and_gets_deconvolved():
    """The C sample is a 21-px line at 30 degrees (one continuous exposure): the analyzer
    resolves that line, so the built-in chain deconvolves it rather than only sharpening."""
    from engine.pipeline import Engine
    from engine.restore.profiles import build_plan

    photo = mio.load_photo(SAMPLES / "C_astronaut_motion_blur_21px_30deg.jpg")
    d = Engine("cpu").diagnose(photo, "builtin")
    assert d.label.value == "C"
    assert abs(d.estimates["blur_length"] - 21) <= 2
    assert abs(d.estimates["blur_angle"] - 30) <= 5
    plan = build_plan(d.label, "builtin", d)
    assert [s.name for s in plan.steps] == ["deblur_builtin"]
    assert abs(plan.steps[0].params["length"] - 21) <= 2