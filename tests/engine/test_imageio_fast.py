"""The fast decode paths give what the full ones give: a HEIF's embedded thumbnail for small
previews only, a 16-bit TIFF decoded once (by OpenCV), a plain JPEG's pixels decoded by OpenCV
for ``load_photo`` (metadata from Pillow's header) and straight to uint8 for the viewer, a
rotated photo converted to float in slabs: the same pixels and metadata as before."""
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
    assert a.pixels.flags.c_contiguous and b.pixels.flags.c_contiguous
    assert (a.alpha is None) == (b.alpha is None)
    if a.alpha is not None:
        assert np.array_equal(a.alpha, b.alpha)
    for k in ("path", "bit_depth", "format", "icc_profile", "exif", "xmp", "dpi", "iptc"):
        assert getattr(a, k) == getattr(b, k), k
    assert _info(a) == _info(b), "info"


def _info(photo: mio.Photo) -> dict:
    """``photo.info`` less the warning that libjpeg's "Corrupt JPEG data" became: only
    OpenCV's decode reports it (Pillow's decoder keeps libjpeg's warnings to itself)."""
    info = dict(photo.info)
    if "warnings" in info:
        info["warnings"] = [w for w in info["warnings"]
                            if not w.startswith("the decoder found damaged")]
    return info


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
    assert np.array_equal(a, _u8(_old_load(p)))  # Pillow's decode


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
        assert a is not None and np.array_equal(a, _u8(_old_load(f))), f.name
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
            ref = _u8(_old_load(f))  # Pillow's decode
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


# ------------------------------------------------------------------------------- JPEG load_photo


def _old_jpeg_path(monkeypatch) -> None:
    """The path every JPEG took before: Pillow decodes, the rotated view is converted whole."""
    monkeypatch.setattr(mio, "_jpeg_rgb8_cv2", lambda *a: None)
    monkeypatch.setattr(mio, "_to_float_upright",
                        lambda a, o, m: mio._to_float(mio._orient(a, o), m))


def _old_load(path: Path) -> mio.Photo:
    with pytest.MonkeyPatch.context() as m:
        _old_jpeg_path(m)
        return mio.load_photo(path)


def _spy_decoders(monkeypatch) -> dict[str, list]:
    """Which decoder load_photo used: OpenCV's (a result or None) and/or Pillow's load()."""
    seen: dict[str, list] = {"cv2": [], "pillow": []}
    real_cv2, real_pil = mio._jpeg_rgb8_cv2, mio._load_pixels
    monkeypatch.setattr(mio, "_jpeg_rgb8_cv2",
                        lambda *a: seen["cv2"].append(real_cv2(*a)) or seen["cv2"][-1])
    monkeypatch.setattr(mio, "_load_pixels",
                        lambda *a: seen["pillow"].append(1) or real_pil(*a))
    return seen


def _iptc_app13(caption: bytes) -> bytes:
    iim = b"\x1c\x02\x78" + struct.pack(">H", len(caption)) + caption
    res = mio._ps_resource(0x0404, iim) + mio._ps_resource(0x03ED, b"\x00" * 16)
    body = mio._PS_APP13 + res
    return b"\xff\xed" + struct.pack(">H", len(body) + 2) + body


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("grey", [False, True])
def test_jpeg_load_photo_decodes_with_opencv_and_keeps_everything(tmp_path, monkeypatch,
                                                                   orientation, grey):
    from PIL import ImageCms

    px = _photo(37, 53, seed=orientation)  # odd sizes: partial MCUs and slabs
    im = Image.fromarray(px[..., 1] if grey else px)
    kw = {} if grey else {"icc_profile": ImageCms.ImageCmsProfile(
        ImageCms.createProfile("sRGB")).tobytes()}
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    p = tmp_path / "o.jpg"
    im.save(p, quality=85, exif=_exif(orientation), xmp=xmp, dpi=(240, 240),
            comment=b"a comment", progressive=orientation % 2 == 0, **kw)
    raw = p.read_bytes()
    p.write_bytes(raw[:2] + _iptc_app13(b"a caption") + raw[2:])  # IPTC right after SOI
    seen = _spy_decoders(monkeypatch)
    new = mio.load_photo(p)
    assert seen["pillow"] == [] and len(seen["cv2"]) == 1 and seen["cv2"][0] is not None
    assert new.iptc and new.info.get("photoshop_resources") and new.xmp and new.exif
    assert new.dpi == (240.0, 240.0) and new.info["comment"] == b"a comment"
    assert new.info["jpeg_quantization"] and new.info["exif_orientation"] == orientation
    assert (new.icc_profile is None) == grey
    monkeypatch.undo()
    _same_photo(new, _old_load(p))


def test_jpeg_load_photo_falls_back_to_pillow_with_the_same_result(tmp_path, monkeypatch):
    grey_icc = tmp_path / "grey_icc.jpg"  # a grey profile: converted to sRGB
    Image.fromarray(_photo()[..., 0]).save(grey_icc, icc_profile=mio._grey_icc(1.8))
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(_photo()).convert("CMYK").save(cmyk, exif=_exif(6))
    good = tmp_path / "good.jpg"
    Image.fromarray(_photo()).save(good, quality=90, exif=_exif(3))
    trailer = tmp_path / "trailer.jpg"  # data after the image: Pillow decodes it
    trailer.write_bytes(good.read_bytes() + b"SAMSUNG-TRAILER")
    for f, cv2_tried in ((grey_icc, False), (cmyk, False), (trailer, True)):
        with monkeypatch.context() as m:
            seen = _spy_decoders(m)
            new = mio.load_photo(f)
        assert seen["pillow"] == [1] and seen["cv2"] == ([None] if cv2_tried else []), f.name
        _same_photo(new, _old_load(f))
    assert mio.load_photo(grey_icc).info["icc_converted"] == "grey profile -> sRGB"
    assert mio.load_photo(cmyk).info["converted_from"] == "CMYK"


def test_a_truncated_or_broken_jpeg_gives_the_same_error_as_before(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(_photo(200, 300)).save(good, quality=90)
    raw = good.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(raw[:-2000])
    cut_eoi = tmp_path / "cut_eoi.jpg"  # an end marker, no image data: OpenCV refuses it
    sos = raw.index(b"\xff\xda")
    cut_eoi.write_bytes(raw[:sos] + b"\xff\xd9")
    for f in (cut, cut_eoi):
        with pytest.raises(BadImage) as new:
            mio.load_photo(f)
        with pytest.raises(BadImage) as old, pytest.MonkeyPatch.context() as m:
            _old_jpeg_path(m)
            mio.load_photo(f)
        assert str(new.value) == str(old.value), f.name
    assert "truncated" in str(new.value) or "damaged" in str(new.value)


def test_the_pixel_limit_is_checked_before_opencv_decodes(tmp_path, monkeypatch):
    p = tmp_path / "big.jpg"
    Image.fromarray(_photo(100, 100)).save(p)
    seen = _spy_decoders(monkeypatch)
    with pytest.raises(mio.ImageTooLarge):
        mio.load_photo(p, max_pixels=5000)
    assert seen == {"cv2": [], "pillow": []}


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (37, 53), (256, 256), (257, 513), (600, 7)])
def test_float_conversion_in_slabs_is_bit_identical(shape):
    a = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    a[0, 0] = [0, 255, 128]
    for o in range(1, 9):
        want = mio._to_float(mio._orient(a, o), 255.0)
        got = mio._to_float_upright(a, o, 255.0)
        assert got.dtype == np.float32 and got.shape == want.shape and got.flags.c_contiguous
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), o
    every = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    for o in (3, 6, 8):  # all 256 values, through the slab path
        assert np.array_equal(mio._to_float_upright(every, o, 255.0).view(np.uint32),
                              mio._to_float(mio._orient(every, o), 255.0).view(np.uint32))
    u16 = a.astype(np.uint16) * 257  # other types: the plain path
    assert np.array_equal(mio._to_float_upright(u16, 6, 65535.0),
                          mio._to_float(mio._orient(u16, 6), 65535.0))


@pytest.mark.shared
def test_shared_jpegs_load_photo_is_unchanged(shared_images, monkeypatch):
    """Every shared JPEG (and the audit's 24 MP photos when present): the same Photo, field by
    field, as Pillow's decode and the whole-view float conversion gave."""
    files = sorted({*shared_images.glob("*/*.jp*g"), *shared_images.glob("*/*.JP*G")})
    perf = Path("/work/data/s10/perf")
    files += sorted(perf.glob("jpeg24/p0[0-1].jpg")) + sorted(perf.glob("jpeg24_o6/*.jpg"))
    fast = fallback = 0
    for f in files:
        try:
            with monkeypatch.context() as m:
                seen = _spy_decoders(m)
                new = mio.load_photo(f)
        except BadImage as e:
            with pytest.raises(BadImage) as old:
                _old_load(f)
            assert str(old.value) == str(e), f.name
            continue
        if seen["cv2"] and seen["cv2"][0] is not None:
            fast += 1
            assert seen["pillow"] == [], f.name
        else:
            fallback += 1
        _same_photo(new, _old_load(f))
    assert fast >= 0.9 * (fast + fallback), (fast, fallback)
