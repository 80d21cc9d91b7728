"""Bounded fuzzing of the loader: mutated JPEG/PNG/TIFF bytes give a Photo or BadImage, nothing else."""
from __future__ import annotations

import io
import os
import tempfile
import time
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine import imageio as mio
from engine.errors import BadImage


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    img = Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8))
    ex = Image.Exif()
    ex[0x0112] = 6
    ex[0x010F] = "Fuzz"
    out = {}
    for name, fmt, kw in [
        ("jpeg", "JPEG", {"quality": 80, "exif": ex.tobytes()}),
        ("jpeg_prog", "JPEG", {"progressive": True}),
        ("png", "PNG", {"exif": ex.tobytes()}),
        ("png_rgba", "PNG", {}),
        ("tiff_raw", "TIFF", {}),
        ("tiff_deflate", "TIFF", {"compression": "tiff_deflate"}),
    ]:
        b = io.BytesIO()
        (img.convert("RGBA") if name == "png_rgba" else img).save(b, fmt, **kw)
        out[name] = b.getvalue()
    return out


SEEDS = _seeds()
_DIR = tempfile.mkdtemp(prefix="mend-fuzz-")
_START: list[float] = []

mutation = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("big"), st.integers(0, 10_000), st.sampled_from([0xFF, 0x7F, 0x80])),
)


def _mutate(data: bytes, muts) -> bytes:
    b = bytearray(data)
    for kind, pos, val in muts:
        if not b:
            break
        pos %= len(b)
        if kind == "set":
            b[pos] = val
        elif kind == "cut":
            del b[pos:]
        elif kind == "insert":
            b[pos:pos] = bytes([val]) * 4
        else:  # push a size/offset field towards huge values
            b[pos:pos + 4] = bytes([val]) * 4
    return bytes(b)


@settings(max_examples=200, deadline=timedelta(seconds=2), derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(sorted(SEEDS)), muts=st.lists(mutation, min_size=1, max_size=6))
def test_loader_only_raises_bad_image(seed, muts):
    if not _START:
        _START.append(time.perf_counter())
    data = _mutate(SEEDS[seed], muts)
    path = os.path.join(_DIR, "fuzz.img")
    with open(path, "wb") as f:
        f.write(data)
    try:
        ph = mio.load_photo(path, max_pixels=2_000_000)
    except BadImage as e:
        assert e.reason
    else:
        assert ph.pixels.ndim == 3 and ph.pixels.shape[2] == 3
        assert ph.pixels.dtype == np.float32
        assert np.isfinite(ph.pixels).all()
        assert ph.pixels.min() >= 0.0 and ph.pixels.max() <= 1.0
    try:
        mio.load_preview(path, 16)
    except BadImage:
        pass


def test_fuzz_budget():
    """Runs after the fuzz test in file order: the whole fuzz run stays bounded."""
    if not _START:
        pytest.skip("fuzz test did not run")
    assert time.perf_counter() - _START[0] < 20.0
