"""The fast decode paths give what the full ones give: a HEIF's embedded thumbnail for small
previews only, a 16-bit TIFF decoded once (by OpenCV), a plain JPEG straight to uint8 for the
viewer (the same bytes as ``load_photo``'s pixels)."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import imageio as mio
from engine.errors import BadImage
from tests.conftest import SHARED_IMAGES

HEIC_DIR = SHARED_IMAGES / "camera_heic"
IPHONE = HEIC_DIR / "exif-samples__heic__mobile__iphone_13_pro_max.HEIC"


def _u8(photo: mio.Photo) -> np.ndarray:
    return (np.clip(photo.pixels, 0, 1) * 255 + 0.5).astype(np.uint8)


def _same_photo(a: mio.Photo, b: mio.Photo) -> None:
    assert a.pixels.dtype == b.pixels.dtype and np.array_equal(a.pixels, b.pixels)
    assert (a.alpha is None) == (b.alpha is None)
    if a.alpha is not None:
        assert np.array_equal(a.alpha, b.alpha)
    for k in ("bit_depth", "format", "icc_profile", "exif", "xmp", "dpi", "info", "iptc"):
        assert getattr(a, k) == getattr(b, k), k


def _exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    ex[0x010F] = "MendCam"
    return ex.tobytes()


def _photo(h=40, w=60, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, (x + y) / (w + h)], axis=2) * 200
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------- HEIF


def _heic_files() -> list[Path]:
    if not HEIC_DIR.is_dir():
        return []
    return sorted(p for p in HEIC_DIR.iterdir() if p.suffix.lower() in (".heic", ".heif"))


@pytest.fixture
def heif_plugin():
    if not mio.heif_supported():
        pytest.skip("pillow-heif is not installed")
    import pillow_heif

    return pillow_heif


def test_heif_opener_lists_embedded_thumbnails(heif_plugin):
    assert heif_plugin.options.THUMBNAILS is True


@pytest.mark.shared
@pytest.mark.parametrize("path", _heic_files(), ids=lambda p: p.name)
def test_heif_full_loads_and_large_previews_ignore_the_thumbnails(heif_plugin, monkeypatch,
                                                                  path):
    """Listing the thumbnails changes nothing of a full decode, nor of a preview larger than
    any thumbnail (the image itself is decoded)."""
    full, big = mio.load_photo(path), mio.load_preview(path, 1024)
    monkeypatch.setattr(heif_plugin.options, "THUMBNAILS", False)
    _same_photo(full, mio.load_photo(path))
    assert np.array_equal(big, mio.load_preview(path, 1024))


@pytest.mark.shared
def test_heif_small_preview_decodes_the_embedded_thumbnail(heif_plugin, monkeypatch):
    if not IPHONE.is_file():
        pytest.skip(f"{IPHONE} is absent")
    from pillow_heif.as_plugin import HeifImageFile

    picked: list = []
    real = HeifImageFile.draft

    def spy(self, mode, size):
        r = real(self, mode, size)
        picked.append((size, r))
        return r

    monkeypatch.setattr(HeifImageFile, "draft", spy)
    small = mio.load_preview(IPHONE, 256)
    # the iPhone's 320x240 thumbnail (portrait: 240 wide), asked for with the image's aspect
    assert picked and picked[0][1] == ("RGB", (0, 0, 240, 320))
    monkeypatch.setattr(heif_plugin.options, "THUMBNAILS", False)
    ref = mio.load_preview(IPHONE, 256)  # decoded from the full image
    assert small.shape == ref.shape == (256, 192, 3)
    assert np.abs(small.astype(int) - ref.astype(int)).mean() < 12  # same picture, same way up
    # larger than the thumbnail: the image itself
    picked.clear()
    monkeypatch.setattr(heif_plugin.options, "THUMBNAILS", True)
    mio.load_preview(IPHONE, 400)
    assert picked and picked[0][1] is None


# ------------------------------------------------------------------------------- 16-bit TIFF


def _tiff16(path: Path, orientation: int = 1, alpha: bool = False) -> tuple[Path, np.ndarray]:
    """A 16-bit RGB(A) TIFF with ICC, EXIF, XMP, DPI and IPTC (Mend's own writer), its
    orientation tag patched in afterwards (the writer resets it to 1)."""
    rng = np.random.default_rng(3)
    px = rng.random((30, 50, 3), dtype=np.float32)
    a = rng.random((30, 50), dtype=np.float32) if alpha else None
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    like = mio.Photo(path.with_name("source.tif"), px, bit_depth=16, format="TIFF",
                     icc_profile=icc, exif=_exif(1),
                     xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>', dpi=(300.0, 300.0),
                     iptc=b"\x1c\x02\x78\x00\x05hello")
    out = mio.save_photo(px, path, like=like, alpha=a)
    raw = out.read_bytes()
    bo = {b"II": "<", b"MM": ">"}[raw[:2]]
    tag = struct.pack(bo + "HHIH", 274, 3, 1, 1)  # SHORT, 1 value: 1 (then 2 padding bytes)
    assert raw.count(tag) == 1
    out.write_bytes(raw.replace(tag, struct.pack(bo + "HHIH", 274, 3, 1, orientation)))
    return out, px


def _old_path(monkeypatch) -> None:
    """The path every TIFF took before: Pillow decodes (8 bits) before OpenCV decodes."""
    monkeypatch.setattr(mio, "_tiff_tag_orientation", lambda im: None)


@pytest.mark.parametrize("alpha", [False, True])
def test_16bit_tiff_is_decoded_once_with_the_same_pixels_and_metadata(tmp_path, monkeypatch,
                                                                      alpha):
    src, px = _tiff16(tmp_path / "s.tif", alpha=alpha)
    calls: list = []
    real = mio._load_pixels
    monkeypatch.setattr(mio, "_load_pixels", lambda *a: calls.append(a) or real(*a))
    new = mio.load_photo(src)
    assert calls == []  # Pillow never decoded it
    assert new.bit_depth == 16 and new.info["decoder"] == "opencv"
    assert np.abs(new.pixels - px).max() <= 0.5 / 65535 + 1e-7
    assert new.xmp and new.iptc and new.dpi == (300.0, 300.0) and new.exif and new.icc_profile
    _old_path(monkeypatch)
    _same_photo(new, mio.load_photo(src))


@pytest.mark.parametrize("orientation", range(2, 9))
def test_an_oriented_16bit_tiff_keeps_the_old_path(tmp_path, monkeypatch, orientation):
    src, px = _tiff16(tmp_path / "o.tif", orientation)
    new = mio.load_photo(src)
    want = mio._orient(px, orientation)
    assert new.bit_depth == 16 and new.pixels.shape == want.shape
    assert np.abs(new.pixels - want).max() <= 0.5 / 65535 + 1e-7
    _old_path(monkeypatch)
    _same_photo(new, mio.load_photo(src))


def test_a_16bit_tiff_opencv_cannot_read_falls_back_to_pillow(tmp_path, monkeypatch):
    src, px = _tiff16(tmp_path / "f.tif")
    monkeypatch.setattr(mio, "_decode16_cv2", lambda *a: None)
    ph = mio.load_photo(src)
    assert ph.bit_depth == 8 and np.abs(ph.pixels - px).max() < 1 / 255 + 1e-6


@pytest.mark.shared
def test_shared_16bit_tiffs_are_unchanged(shared_images, monkeypatch):
    files = [p for p in sorted(shared_images.glob("*/*.tif*"))
             if mio._is_16bit_colour(Image.open(p))]
    perf = Path("/work/data/s10/perf/p24_16.tif")  # 24 MP, the audit's photo (when present)
    files += [perf] if perf.is_file() else []
    for p in files:
        new = mio.load_photo(p)
        with monkeypatch.context() as m:
            _old_path(m)
            _same_photo(new, mio.load_photo(p))


# ------------------------------------------------------------------------------- JPEG -> uint8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_rgb8_is_load_photos_pixels(tmp_path, orientation):
    p = tmp_path / "o.jpg"
    Image.fromarray(_photo()).save(p, quality=90, exif=_exif(orientation))
    a = mio.load_jpeg_rgb8(p)
    assert a is not None and a.dtype == np.uint8 and a.flags.c_contiguous
    assert np.array_equal(a, _u8(mio.load_photo(p)))


def test_jpeg_rgb8_progressive_grey_and_xmp_orientation(tmp_path):
    p = tmp_path / "prog.jpg"
    Image.fromarray(_photo(seed=1)).save(p, quality=80, progressive=True, subsampling=2)
    g = tmp_path / "grey.jpg"
    Image.fromarray(_photo(seed=2)[..., 0]).save(g, quality=90)
    x = tmp_path / "xmp.jpg"
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
           b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/"'
           b' tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    Image.fromarray(_photo(seed=3)).save(x, quality=90, xmp=xmp)
    for f in (p, g, x):
        a = mio.load_jpeg_rgb8(f)
        assert a is not None and np.array_equal(a, _u8(mio.load_photo(f))), f.name
    assert mio.load_jpeg_rgb8(x).shape == (60, 40, 3)


def test_jpeg_rgb8_falls_back_where_load_photo_does_more(tmp_path):
    grey_icc = tmp_path / "grey_icc.jpg"  # a grey profile: load_photo converts to sRGB
    Image.fromarray(_photo()[..., 0]).save(grey_icc, icc_profile=mio._grey_icc(1.8))
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(_photo()).convert("CMYK").save(cmyk)
    png = tmp_path / "p.png"
    Image.fromarray(_photo()).save(png)
    good = tmp_path / "good.jpg"
    Image.fromarray(_photo()).save(good, quality=90)
    cut = tmp_path / "cut.jpg"  # truncated: Pillow's verdict (an error) is wanted
    cut.write_bytes(good.read_bytes()[:-200])
    trailer = tmp_path / "trailer.jpg"  # data after the image: left to load_photo
    trailer.write_bytes(good.read_bytes() + b"SAMSUNG-TRAILER")
    for f in (grey_icc, cmyk, png, cut, trailer):
        assert mio.load_jpeg_rgb8(f) is None, f.name
    assert mio.load_jpeg_rgb8(good) is not None
    with pytest.raises(BadImage):
        mio.load_jpeg_rgb8(tmp_path / "missing.jpg")
    with pytest.raises(BadImage):
        mio.load_photo(cut)


def test_viewer_load_full_uses_the_fast_path_only_when_it_applies(tmp_path, monkeypatch):
    pytest.importorskip("PySide6")
    from ui import imaging

    good = tmp_path / "good.jpg"
    Image.fromarray(_photo()).save(good, quality=90, exif=_exif(6))
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(_photo()).convert("CMYK").save(cmyk)
    loads: list[str] = []
    real = mio.load_photo
    monkeypatch.setattr(mio, "load_photo", lambda p, **k: loads.append(Path(p).name)
                        or real(p, **k))
    a = imaging.load_full(good)
    b = imaging.load_full(cmyk)
    assert loads == ["cmyk.jpg"]
    assert np.array_equal(a, _u8(real(good))) and np.array_equal(b, _u8(real(cmyk)))


@pytest.mark.shared
def test_shared_jpegs_rgb8_is_bit_identical_to_load_photo(shared_images):
    files = sorted({*shared_images.glob("*/*.jp*g"), *shared_images.glob("*/*.JP*G")})
    fast = fallback = 0
    for f in files:
        try:
            ref = _u8(mio.load_photo(f))
        except BadImage:  # the viewer goes on to load_photo and shows its error
            continue
        a = mio.load_jpeg_rgb8(f)
        if a is None:
            fallback += 1
            continue
        fast += 1
        assert np.array_equal(a, ref), f.name
    for grey in shared_images.glob("*/Real-ESRGAN__inputs__wolf_gray.jpg"):
        assert mio.load_jpeg_rgb8(grey) is None  # a grey ICC profile: load_photo converts it
    assert fast >= 0.9 * (fast + fallback), (fast, fallback)
