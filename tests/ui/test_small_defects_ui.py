"""Small defects the audits left, in the app: a model whose Python package is missing is said as
such (it sent the user to download the model again), the model manager's Verify shows its hash's
progress (a busy bar only), and a 16-bit grey TIFF's thumbnail has the viewer's pixels (it
truncated them: one level darker in 43% of a dark scan's pixels; the scan really is dark)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtGui import QColor

from engine.models import store as store_mod
from ui.dialogs.models import STATUS_COLOURS, ModelManagerDialog
from ui.engine_client import EngineClient

MID = "realesr-general-x4v3"


# ---------------------------------------------------------------- 3. PackageMissing
def test_a_missing_package_is_said_as_such_not_as_a_model_to_download():
    from engine.errors import ModelMissing
    from engine.understand.clip import PackageMissing  # (where the CLIP backend raises it)
    from ui.messages import describe_error

    e = PackageMissing("siglip-base-patch16-224", "sentencepiece")
    assert isinstance(e, ModelMissing)  # (a backend still falls back as for a missing model)
    said = describe_error(e)
    assert said == ("The model 'siglip-base-patch16-224' is installed, but the Python package "
                    "'sentencepiece' it needs is missing. Install it into the Python "
                    "environment Mend runs in (pip install sentencepiece), or choose the "
                    "built-in analyzer (Settings, Diagnosis).")
    assert "not installed" not in said and "download" not in said
    # a model that is not there: as before
    assert describe_error(ModelMissing("big-lama")).startswith(
        "The model 'big-lama' is not installed. Open Models… to download it")


# ---------------------------------------------------------------- 5. Verify's progress
def test_verify_shows_its_hash_progress_in_the_bar_and_the_row(qtbot, tmp_path, monkeypatch):
    """A real store's verify of a 3 MB model (three 1 MB chunks), held after its first chunk:
    the bar shows 35% (1,048,576 of 3,000,000 bytes) and the file, the row "verifying 35%";
    the hash runs in the model pool, the GUI thread goes on (it shows the signal's progress
    while the hash waits); then "verified", the bar hidden. Before: a busy bar, no figure."""
    from tests.model_helpers import install_test_model

    src = tmp_path / "in" / f"{MID}.pth"
    src.parent.mkdir()
    src.write_bytes(np.random.default_rng(0).integers(0, 256, 3_000_000, np.uint8).tobytes())
    store = install_test_model(tmp_path / "store", MID, {src.name: src})
    monkeypatch.setattr(ModelManagerDialog, "_start_recommendation", lambda self: None)
    real = store_mod.sha256_file
    armed, go = threading.Event(), threading.Event()
    hashed_in: list[threading.Thread] = []

    def held(path, check_cancel=None, on_bytes=None):
        if not armed.is_set():
            return real(path, check_cancel, on_bytes)
        hashed_in.append(threading.current_thread())

        def on(done: int) -> None:
            if on_bytes is not None:
                on_bytes(done)
            if done == 1 << 20:  # after the first chunk
                assert go.wait(20)

        return real(path, check_cancel, on)

    monkeypatch.setattr(store_mod, "sha256_file", held)
    client = EngineClient(lambda: None)
    dlg = None
    try:
        dlg = ModelManagerDialog(client, store)
        qtbot.addWidget(dlg)
        row = dlg.row_of(MID)

        def cell() -> str:  # (a refresh makes the row's items again)
            return dlg.table.item(row, 4).text()

        qtbot.waitUntil(lambda: cell() == "verified", timeout=10000)
        armed.set()
        dlg.verify(MID)
        qtbot.waitUntil(lambda: cell() == "verifying 35%", timeout=10000)
        assert dlg.table.item(row, 4).foreground().color() == QColor(STATUS_COLOURS["verifying"])
        assert not dlg.progress.isHidden()
        assert (dlg.progress.minimum(), dlg.progress.maximum()) == (0, 1000)  # not busy
        assert dlg.progress.value() == 349
        assert dlg.progress.format() == f"{MID}: verifying 35% · {MID}.pth 1.0 MB / 2.9 MB"
        assert hashed_in and threading.main_thread() not in hashed_in
        go.set()
        qtbot.waitUntil(lambda: f"{MID}: verified" in dlg.note.text(), timeout=10000)
        assert dlg.progress.isHidden()
        qtbot.waitUntil(lambda: cell() == "verified", timeout=10000)
    finally:
        go.set()
        if dlg is not None:
            dlg.close()
        client.shutdown()


# ---------------------------------------------------------------- 4. a 16-bit grey TIFF
def _viewer_vs_thumbnail(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from engine.imageio import load_photo
    from ui.imaging import load_full, load_thumbnail

    viewer = load_full(path)
    assert np.array_equal(viewer, np.rint(load_photo(path).pixels * 255).astype(np.uint8))
    return viewer, load_thumbnail(path, 256)


def test_a_dark_16_bit_grey_tiffs_thumbnail_has_the_viewers_pixels(shared_images):
    """Pillow's 16bit.cropped.tif is dark: 291-694 of 65535, i.e. 1.1-2.7 of 255 (mean 1.5):
    a black thumbnail is right. It was truncated (floor: mean 1.01, max 2)."""
    path = shared_images / "odd_corrupt" / "Pillow__Tests__images__16bit.cropped.tif"
    raw = np.asarray(Image.open(path))
    assert raw.dtype == np.uint16 and (raw.min(), raw.max()) == (291, 694)
    viewer, thumb = _viewer_vs_thumbnail(path)
    assert (viewer.min(), viewer.max()) == (1, 3)
    assert np.array_equal(thumb, viewer)


def test_a_16_bit_grey_tiffs_thumbnail_is_scaled_from_16_bits(tmp_path):
    """Every 16-bit level once (0-65535 shuffled, 256 x 256: the thumbnail's own size): scaled
    by 255/65535 and rounded, as the viewer's; never clipped as if 8-bit."""
    g = np.random.default_rng(1).permutation(np.arange(65536, dtype=np.uint16)).reshape(256, 256)
    path = tmp_path / "grey16.tif"
    Image.fromarray(g).save(path)
    assert Image.open(path).mode == "I;16"
    viewer, thumb = _viewer_vs_thumbnail(path)
    want = ((g.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    assert np.array_equal(viewer[..., 0], want)
    assert np.array_equal(thumb, viewer)


# ---------------------------------------------------------------- first-run recommendation
def test_the_recommendation_without_pytorch_says_the_built_in_profile_is_used(
        qtbot, tmp_path, monkeypatch):
    """Where PyTorch cannot be imported (the frozen app without its environment), the model
    manager's first-run line said "Recommended: the laptop profile" as if its models could run;
    it says the built-in profile is what runs, and why, as ``mend doctor`` does."""
    from engine import devices

    reason = "is not installed in this Python (/x/python): install Mend's requirements"
    monkeypatch.setattr(devices, "torch_missing_reason", lambda: reason)
    client = EngineClient(lambda: None)
    try:
        dlg = ModelManagerDialog(client, store_mod.ModelStore(tmp_path / "store"))
        qtbot.addWidget(dlg)
        qtbot.waitUntil(lambda: "uses the" in dlg.recommend.text()
                        or "Recommended" in dlg.recommend.text(), timeout=30000)
        text = dlg.recommend.text()
        assert "uses the built-in profile" in text and "Recommended" not in text
        assert "run on PyTorch, which is not installed in this Python" in text
        assert "can be downloaded now" in text  # (an empty store: its models are missing)
        assert dlg.profile_btn.isEnabled()  # (they may be fetched before PyTorch is there)
    finally:
        client.shutdown()
