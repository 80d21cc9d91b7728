"""Weights that cannot be loaded are not read again for every photo: the app diagnoses one
photo at a time, and a damaged Qwen2.5-VL (which the store's cheap size + time check cannot
see) was read whole - ~15 GB for the 7B - before failing again, for every photo. The runtime
remembers the failure until the model's files change (a repair, a pull)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.models import loader
from engine.models.loader import UnsupportedModel
from tests.model_helpers import install_test_model, make_runtime


def _damage_keeping_size_and_time(path: Path) -> bytes:
    st = path.stat()
    good = path.read_bytes()
    bad = bytearray(good)
    bad[:16] = b"\xff" * 16
    path.write_bytes(bytes(bad))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return good


def _counting(monkeypatch, module, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(module, name)

    def wrapper(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_damaged_weights_are_not_read_again_until_the_files_change(tmp_path, monkeypatch):
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    src = tmp_path / "realesr-general-x4v3.pth"
    torch.save({"params": Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2,
                                  upscale=4).state_dict()}, src)
    store = install_test_model(tmp_path / "store", "realesr-general-x4v3",
                               {"realesr-general-x4v3.pth": src})
    rt = make_runtime(store)
    weights = store.model_dir("realesr-general-x4v3") / "realesr-general-x4v3.pth"
    good = _damage_keeping_size_and_time(weights)
    calls = _counting(monkeypatch, loader, "load_spandrel")
    for _ in range(3):
        with pytest.raises(UnsupportedModel, match="cannot be read"):
            rt.load_image_model("realesr-general-x4v3")
    assert len(calls) == 1  # read once, the same error twice more
    weights.write_bytes(good)  # repaired: the file's time changes
    desc = rt.load_image_model("realesr-general-x4v3")
    assert desc.scale == 4 and len(calls) == 2


def test_a_damaged_vlm_is_read_once_for_many_one_photo_diagnoses(tmp_path, monkeypatch):
    """``diagnose`` (what ``Engine.diagnose`` calls for each photo the app shows) builds a
    classifier per photo: with ``auto`` on a GPU and a damaged VLM each photo falls back to
    the analyzer, and the VLM's files are read only once."""
    import transformers

    from engine.models.runtime import ModelRuntime
    from engine.understand import diagnose
    from tests.engine.test_vlm import build_tiny_qwen
    from tests.model_helpers import fake_gpu

    src = build_tiny_qwen(tmp_path / "src", rig=("B", "C"))
    files = {p.name: p for p in sorted(src.iterdir()) if p.is_file()}
    store = install_test_model(tmp_path / "store", "qwen2.5-vl-3b", files)
    _damage_keeping_size_and_time(store.model_dir("qwen2.5-vl-3b") / "config.json")
    calls = _counting(monkeypatch, transformers.AutoProcessor, "from_pretrained")
    gpu = ModelRuntime(fake_gpu(20 << 30), store)
    rng = np.random.default_rng(0)
    for _ in range(3):
        photo = _photo(rng)
        d = diagnose(photo.pixels, photo, backend="auto", runtime=gpu)
        assert d.backend == "builtin" and "VLM unavailable" in d.rationale
    assert len(calls) == 1


def _photo(rng):
    from engine.imageio import Photo

    return Photo(path=None, pixels=rng.random((48, 64, 3), dtype=np.float32), alpha=None,
                 bit_depth=8, format="PNG", icc_profile=None, exif=None, xmp=None, dpi=None,
                 info={"warnings": []})


class _Big(np.ndarray):
    pass


def test_a_remembered_failure_holds_no_weights_or_photo(tmp_path):
    """The memo kept the exception, and with it its traceback's frames: the half-read weights
    and the caller's photo stayed in memory until the model's files changed."""
    import gc
    import weakref

    src = tmp_path / "realesr-general-x4v3.pth"
    src.write_bytes(b"not weights")
    store = install_test_model(tmp_path / "store", "realesr-general-x4v3",
                               {"realesr-general-x4v3.pth": src})
    rt = make_runtime(store)
    refs = []

    def step(photo):
        def factory():
            weights = np.ones(1 << 20, np.uint8).view(_Big)
            refs.append(weakref.ref(weights))
            raise UnsupportedModel("these weights cannot be loaded")
        return rt.cached(("k",), factory, 1, model_id="realesr-general-x4v3")

    photo = np.zeros((100, 100, 3), np.float32).view(_Big)
    refs.append(weakref.ref(photo))
    with pytest.raises(UnsupportedModel):
        step(photo)
    del photo
    gc.collect()
    assert [r() is None for r in refs] == [True, True]
    with pytest.raises(UnsupportedModel, match="these weights cannot be loaded"):
        step(None)  # remembered: the factory is not called again
    assert len(refs) == 2
