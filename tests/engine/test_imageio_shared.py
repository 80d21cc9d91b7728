"""Photo I/O over the real test photos in ../shared/images (skipped when absent)."""
from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import imageio as mio
from engine.api import OutputOptions
from engine.errors import BadImage, ImageTooLarge
from tests.conftest import SHARED_IMAGES

pytestmark = pytest.mark.shared


def _files(folder: str) -> list[str]:
    d = SHARED_IMAGES / folder
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def _small(px: np.ndarray, size=(48, 48)) -> np.ndarray:
    im = Image.fromarray((np.clip(px, 0, 1) * 255).astype(np.uint8))
    return np.asarray(im.resize(size, Image.Resampling.BOX), dtype=np.float32) / 255.0


def _reference(name: str) -> str | None:
    """The upright (orientation 1 / no tag) counterpart of an exif_orientation sample."""
    if name.startswith("Pillow__Tests__images__hopper_orientation_"):
        return "../odd_corrupt/Pillow__Tests__images__hopper.png"
    m = re.match(r"exif-orientation-example__(Landscape|Portrait)_(\d)\.jpg", name)
    if m:
        return f"exif-orientation-example__{m.group(1)}_0.jpg"
    m = re.match(r"exif-samples__jpg__orientation__(landscape|portrait)_(\d)\.jpg", name)
    if m:
        return f"exif-samples__jpg__orientation__{m.group(1)}_1.jpg"
    return None


@pytest.mark.parametrize("name", _files("exif_orientation"))
def test_orientation_upright(shared_images, tmp_path, name):
    ref_name = _reference(name)
    assert ref_name, f"no reference rule for {name}"
    folder = shared_images / "exif_orientation"
    ph = mio.load_photo(folder / name)
    ref_shape, want = _reference_small(str(folder / ref_name))
    assert ph.pixels.shape == ref_shape, "not upright: shape differs from reference"
    got = _small(ph.pixels)
    err = float(np.abs(got - want).mean())
    # the wrong answers (mirrored / upside-down reference) must be clearly worse; the
    # transposing orientations already fail the shape check above for non-square pictures
    wrong = [float(np.abs(mio._orient(want, o) - got).mean()) for o in (2, 3, 4)]
    assert err < 0.08, f"{name}: mean difference {err:.3f} to the upright reference"
    assert err < min(wrong), f"{name}: an un-applied/wrong orientation matches better"
    assert mio.exif_orientation(ph.exif) == 1
    out = mio.save_photo(ph.pixels[:96, :128], tmp_path / "o.jpg", like=ph)
    with Image.open(out) as im:
        assert im.getexif().get(0x0112, 1) == 1
    assert mio.load_photo(out).pixels.shape == (96, 128, 3)


@functools.cache
def _reference_small(path: str):
    ref = mio.load_photo(path)
    return ref.pixels.shape, _small(ref.pixels)


def _exif_summary(path: Path) -> dict:
    with Image.open(path) as im:
        ex = im.getexif()
        sub = ex.get_ifd(0x8769)
    return {"make": ex.get(0x010F), "model": ex.get(0x0110),
            "taken": sub.get(0x9003), "exposure": sub.get(0x829A)}


@pytest.mark.parametrize("name", [n for n in _files("camera_jpeg_exif") if n.endswith(".jpg")])
def test_camera_jpegs_load_and_keep_exif(shared_images, tmp_path, name):
    src = shared_images / "camera_jpeg_exif" / name
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    ph = mio.load_photo(src)
    assert np.isfinite(ph.pixels).all() and ph.pixels.min() >= 0 and ph.pixels.max() <= 1
    assert ph.info["jpeg_quantization"]
    out = mio.save_photo(ph.pixels[:256, :256], tmp_path / "o.jpg", like=ph, record={"t": name})
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    assert mio.read_record(out) == {"t": name}
    if ph.exif is not None:
        want = _exif_summary(src)
        got = _exif_summary(out)
        assert got == want
    if ph.icc_profile:
        assert mio.load_photo(out).icc_profile == ph.icc_profile


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff", "webp"])
def test_icc_and_exif_roundtrip_every_format(shared_images, tmp_path, fmt):
    src = shared_images / "camera_jpeg_exif" / "exif-samples__jpg__Canon_40D.jpg"
    ph = mio.load_photo(src)
    assert ph.icc_profile and ph.exif
    out = mio.save_photo(ph.pixels, tmp_path / "o", like=ph, options=OutputOptions(format=fmt))
    back = mio.load_photo(out)
    assert back.icc_profile == ph.icc_profile
    assert _exif_summary(out) == _exif_summary(src)


@pytest.mark.parametrize("name", _files("camera_heic"))
def test_heic_loads(shared_images, name):
    if not mio.heif_supported():
        pytest.skip("pillow-heif is not installed")
    ph = mio.load_photo(shared_images / "camera_heic" / name)
    assert ph.format == "HEIF" and ph.pixels.ndim == 3 and np.isfinite(ph.pixels[::50, ::50]).all()
    if "iphone_13" in name:  # stored landscape with orientation 6: upright is portrait
        assert ph.height > ph.width and ph.info["exif_orientation"] == 6
    pv = mio.load_preview(shared_images / "camera_heic" / name, 128)
    assert max(pv.shape[:2]) <= 128
    assert (pv.shape[0] > pv.shape[1]) == (ph.height > ph.width)


@pytest.mark.parametrize("name", _files("odd_corrupt"))
def test_odd_corrupt_loads_or_one_bad_image(shared_images, tmp_path, name):
    path = shared_images / "odd_corrupt" / name
    for fn in (lambda: mio.load_photo(path), lambda: mio.load_preview(path, 64)):
        try:
            result = fn()
        except BadImage as e:
            assert name in str(e) and e.reason
            if "decompression_bomb" in name:
                assert isinstance(e, ImageTooLarge)
            continue
        except BaseException as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{name}: {type(e).__name__} escaped: {e}")
        px = result.pixels if isinstance(result, mio.Photo) else result / 255.0
        assert px.ndim == 3 and px.shape[2] == 3 and px.shape[0] > 0 and px.shape[1] > 0
        assert np.isfinite(px).all() and px.min() >= 0 and px.max() <= 1
        if isinstance(result, mio.Photo):  # a good load must also save
            crop = (slice(0, 256), slice(0, 256))
            alpha = result.alpha[crop] if result.alpha is not None else None
            out = mio.save_photo(result.pixels[crop], tmp_path / "o.png", like=result,
                                 alpha=alpha)
            assert mio.load_photo(out).pixels.shape == result.pixels[crop].shape
    if name.endswith("README") or name in ("Pillow__Tests__images__broken.png",):
        with pytest.raises(BadImage):
            mio.load_photo(path)


def test_16bit_sources_stay_16bit(shared_images, tmp_path):
    import cv2

    tif = mio.load_photo(shared_images / "odd_corrupt" / "Pillow__Tests__images__16bit.cropped.tif")
    png = mio.load_photo(shared_images / "lowres_noise_jpeg" /
                         "Real-ESRGAN__inputs__tree_alpha_16bit.png")
    assert tif.bit_depth == 16 and png.bit_depth == 16 and png.alpha is not None
    for ph in (tif, png):
        for fmt in ("png", "tiff"):
            out = mio.save_photo(ph.pixels, tmp_path / f"o.{fmt}", like=ph, alpha=ph.alpha,
                                 options=OutputOptions(format=fmt))
            raw = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
            assert raw.dtype == np.uint16, (ph.path.name, fmt)
            back = mio.load_photo(out)
            assert back.bit_depth == 16
            assert np.abs(back.pixels - ph.pixels).max() < 1 / 65535 + 1e-6


def test_image_size_reads_the_upright_size_from_the_header(shared_images):
    from engine.imageio import image_size, load_photo

    folder = shared_images / "exif_orientation"
    files = sorted(folder.iterdir())[:8]
    assert files
    for f in files:
        photo = load_photo(f)
        assert image_size(f) == (photo.height, photo.width), f.name
