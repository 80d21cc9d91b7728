"""The bundled sample photos: small, readable, documented, reproducible."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

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


def test_motion_kernel_is_a_normalised_line():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_samples
    finally:
        sys.path.pop(0)
    k = make_samples.motion_kernel(21, 30.0)
    assert k.shape == (21, 21) and abs(float(k.sum()) - 1) < 1e-6
    assert (k > 0).sum() >= 21 and k[10, 10] > 0
    pytest.importorskip("cv2")
