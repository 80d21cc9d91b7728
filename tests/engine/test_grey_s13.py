"""Session 13: a black-and-white photo in gives a black-and-white file out.

A grey source (L, LA, I;16, I, F, 1; a 16-bit grey + alpha PNG) whose result still has three
equal channels is written as one channel (8-bit L, 16-bit grey; with its alpha, LA), not as an
RGB file of three equal channels; WebP has no grey and stays RGB. Its colour: a grey ICC
profile's values, converted to sRGB on loading, are converted back and the profile is embedded
as it was (every level the restoration did not change comes back as it was stored); no profile
in, none out. Each test failed before (the results were RGB files).
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from engine import imageio as mio
from engine.api import Degradation, JobRequest, OutputOptions, Plan, Step

SHARED = Path(__file__).resolve().parents[3] / "shared" / "images"
WOLF = "lowres_noise_jpeg/Real-ESRGAN__inputs__wolf_gray.jpg"  # grey JPEG, Dot Gain 15%
PAGE = "text_clean_ocr/scikit-image__skimage__data__page.png"  # grey PNG, Dot Gain 20%


def _shared(rel: str) -> Path:
    p = SHARED / rel
    if not p.is_file():
        pytest.skip(f"{rel} not found in ../shared/images")
    return p


def _grey8(h: int = 37, w: int = 53, seed: int = 0) -> np.ndarray:
    """Every level (a ramp) and some noise: odd sizes for partial strips and MCUs."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 256, (h, w), dtype=np.uint8)
    g.ravel()[:256] = np.arange(256, dtype=np.uint8)
    return g


def _grey16(h: int = 37, w: int = 53, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    g.ravel()[:2] = (0, 65535)
    return g


def _png16(path: Path, a: np.ndarray, chunks: bytes = b"") -> Path:
    """A 16-bit PNG of (H, W, C) uint16 (C = 1 grey, 2 grey + alpha), written by hand (Pillow
    writes no 16-bit grey + alpha); ``chunks`` go before the image data."""
    h, w, c = a.shape

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    rows = b"".join(b"\0" + a[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4}[c], 0, 0, 0))
                     + chunks + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def _iccp(icc: bytes) -> bytes:
    d = b"grey\0\0" + zlib.compress(icc)
    return struct.pack(">I", len(d)) + b"iCCP" + d + struct.pack(">I", zlib.crc32(b"iCCP" + d))


def _stored(path: Path) -> tuple[str, np.ndarray, bytes | None]:
    """(Pillow's mode, the grey values as stored (OpenCV; 2-D), the embedded profile)."""
    with Image.open(path) as im:
        mode, icc = im.mode, im.info.get("icc_profile")
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a.ndim == 3:  # OpenCV expands grey + alpha to BGRA
        a = a[..., 0]
    return mode, a, icc


def _save(ph: mio.Photo, dest: Path, fmt: str | None = None, depth: int | None = None,
          notes: list[str] | None = None, pixels: np.ndarray | None = None) -> Path:
    return mio.save_photo(ph.pixels if pixels is None else pixels, dest, like=ph, alpha=ph.alpha,
                          options=OutputOptions(format=fmt, bit_depth=depth), notes=notes)


# ---------------------------------------------------------------------------- grey files


@pytest.mark.parametrize("fmt", ["png", "tiff", "jpeg"])
def test_an_8bit_grey_photo_gives_an_8bit_grey_file(tmp_path, fmt):
    g = _grey8()
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    ph = mio.load_photo(tmp_path / "g.png")
    assert ph.grey and ph.grey_icc is None
    out = _save(ph, tmp_path / "r", fmt)
    mode, stored, icc = _stored(out)
    assert mode == "L" and icc is None  # no profile in, none out
    if fmt != "jpeg":
        assert np.array_equal(stored, g)
    else:
        assert np.abs(stored.astype(int) - g).mean() < 3
    back = mio.load_photo(out)
    assert back.grey and back.pixels.shape == ph.pixels.shape
    if fmt != "jpeg":
        assert np.array_equal(back.pixels, ph.pixels)


@pytest.mark.parametrize("src", ["png", "tif"])
@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_a_16bit_grey_photo_gives_a_16bit_grey_file(tmp_path, src, fmt):
    g = _grey16()
    Image.fromarray(g).save(tmp_path / f"g.{src}")
    ph = mio.load_photo(tmp_path / f"g.{src}")
    assert ph.grey and ph.bit_depth == 16
    out = _save(ph, tmp_path / "r", fmt)
    mode, stored, icc = _stored(out)
    assert mode.startswith("I;16") and stored.dtype == np.uint16 and icc is None
    assert np.array_equal(stored, g)
    out8 = _save(ph, tmp_path / "r8", fmt, depth=8)
    mode8, stored8, _ = _stored(out8)
    assert mode8 == "L" and np.array_equal(stored8, ((g.astype(np.uint32) + 128) // 257))


def test_bilevel_float_and_jpeg_grey_sources_count_as_grey(tmp_path):
    Image.fromarray(_grey8() > 128).save(tmp_path / "b.png")
    Image.fromarray(_grey16().astype(np.float32) / 65535, "F").save(tmp_path / "f.tif")
    Image.fromarray(_grey8(), "L").save(tmp_path / "g.jpg", quality=90)
    for name, mode in (("b.png", "L"), ("f.tif", "I;16"), ("g.jpg", "L")):
        ph = mio.load_photo(tmp_path / name)
        assert ph.grey, name
        assert _stored(_save(ph, tmp_path / f"r_{name}", "png"))[0] == mode, name


def test_a_result_with_colour_or_a_colour_source_stays_rgb(tmp_path):
    Image.fromarray(_grey8(), "L").save(tmp_path / "g.png")
    ph = mio.load_photo(tmp_path / "g.png")
    tinted = ph.pixels.copy()
    tinted[0, 0, 0] = min(1.0, float(tinted[0, 0, 0]) + 0.1)  # one pixel off grey
    assert _stored(_save(ph, tmp_path / "t", "png", pixels=tinted))[0] == "RGB"
    # a colour file whose three channels happen to be equal is a colour photo: RGB
    Image.fromarray(np.repeat(_grey8()[..., None], 3, axis=2)).save(tmp_path / "rgb.png")
    rgb = mio.load_photo(tmp_path / "rgb.png")
    assert not rgb.grey and _stored(_save(rgb, tmp_path / "c", "png"))[0] == "RGB"
    # no source: as before
    out = mio.save_photo(ph.pixels, tmp_path / "none.png")
    assert _stored(out)[0] == "RGB"


def test_webp_has_no_grey_and_stays_rgb_without_a_word(tmp_path):
    Image.fromarray(_grey8(), "L").save(tmp_path / "g.png", icc_profile=mio._grey_icc(1.8))
    ph = mio.load_photo(tmp_path / "g.png")
    notes: list[str] = []
    out = _save(ph, tmp_path / "r", "webp", notes=notes)
    with Image.open(out) as im:
        assert im.mode == "RGB" and not im.info.get("icc_profile")  # sRGB, as before
    assert notes == []


# ---------------------------------------------------------------------------- alpha


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_grey_with_alpha_keeps_its_alpha(tmp_path, fmt):
    g, a = _grey8(), _grey8(seed=3)
    Image.fromarray(np.dstack([g, a]), "LA").save(tmp_path / "la.png")
    ph = mio.load_photo(tmp_path / "la.png")
    out = _save(ph, tmp_path / "r", fmt)
    with Image.open(out) as im:
        assert im.mode == "LA"
        assert np.array_equal(np.asarray(im), np.dstack([g, a]))
    back = mio.load_photo(out)
    assert back.grey and np.array_equal(back.alpha, ph.alpha)


def test_16bit_grey_with_alpha_keeps_16_bits_and_its_alpha(tmp_path):
    ga = np.dstack([_grey16(), _grey16(seed=2)])
    ph = mio.load_photo(_png16(tmp_path / "la16.png", ga))
    assert ph.grey and ph.bit_depth == 16  # Pillow opens it as RGBA
    out = _save(ph, tmp_path / "r", "png")
    with Image.open(out) as im:
        assert im.tile[0][3] == "LA;16B"  # colour type 4, 16 bits
    a = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(a[..., 0], ga[..., 0]) and np.array_equal(a[..., 3], ga[..., 1])
    back = mio.load_photo(out)
    assert back.grey and np.array_equal(back.pixels, ph.pixels)
    assert np.array_equal(back.alpha, ph.alpha)
    # a 16-bit grey + alpha TIFF (Pillow cannot open it; Mend reads it itself)
    tif = _save(ph, tmp_path / "r", "tiff")
    back = mio.load_photo(tif)
    assert back.info["source_mode"] == "LA;16" and back.grey
    assert np.array_equal(back.pixels, ph.pixels) and np.array_equal(back.alpha, ph.alpha)


def test_a_grey_png_with_a_transparent_level_keeps_it(tmp_path):
    g = _grey8()
    Image.fromarray(g, "L").save(tmp_path / "t.png", transparency=7)
    ph = mio.load_photo(tmp_path / "t.png")
    out = _save(ph, tmp_path / "r", "png")
    with Image.open(out) as im:
        assert im.mode == "LA"
        la = np.asarray(im)
    assert np.array_equal(la[..., 0], g) and np.array_equal(la[..., 1] == 0, g == 7)
    # with a grey profile too (its alpha was dropped before)
    Image.fromarray(g, "L").save(tmp_path / "ti.png", transparency=7,
                                 icc_profile=mio._grey_icc(1.8))
    ph = mio.load_photo(tmp_path / "ti.png")
    assert ph.alpha is not None and np.array_equal(ph.alpha == 0, g == 7)


def test_a_grey_jpeg_result_of_grey_with_alpha_is_flattened_onto_white(tmp_path):
    g = np.full((16, 16), 40, np.uint8)
    a = np.zeros((16, 16), np.uint8)
    a[:, :8] = 255
    Image.fromarray(np.dstack([g, a]), "LA").save(tmp_path / "la.png")
    ph = mio.load_photo(tmp_path / "la.png")
    notes: list[str] = []
    mode, stored, _ = _stored(_save(ph, tmp_path / "r", "jpeg", notes=notes))
    assert mode == "L" and any("white" in n for n in notes)
    assert abs(int(stored[8, 2]) - 40) <= 2 and int(stored[8, 13]) >= 253


# ---------------------------------------------------------------------------- colour


def _via_profile(stored: np.ndarray, icc: bytes) -> np.ndarray:
    """8-bit grey values in the grey profile ``icc`` -> L* (LittleCMS), to compare colours."""
    t = ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                ImageCms.createProfile("LAB"), "L", "LAB")
    v = np.asarray(ImageCms.applyTransform(Image.fromarray(stored, "L"), t))
    return v[..., 0].astype(np.float32) * (100 / 255)


@pytest.mark.parametrize("profile", ["wolf", "page", "1.8", "2.2"])
@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_8bit_grey_with_a_grey_profile_comes_back_as_stored_with_its_profile(tmp_path, profile,
                                                                             fmt):
    """Converted to sRGB on loading (at 16-bit precision now: LittleCMS's 8-bit transform
    merged levels and rounded), back to the photo's profile on saving: every level it was."""
    if profile in ("wolf", "page"):
        with Image.open(_shared(WOLF if profile == "wolf" else PAGE)) as im:
            icc = im.info["icc_profile"]
    else:
        icc = mio._grey_icc(float(profile))
    g = _grey8()
    Image.fromarray(g, "L").save(tmp_path / "g.png", icc_profile=icc)
    ph = mio.load_photo(tmp_path / "g.png")
    assert ph.grey and ph.grey_icc == icc and ph.icc_profile is None
    assert ph.info["icc_converted"] == "grey profile -> sRGB"
    mode, stored, out_icc = _stored(_save(ph, tmp_path / "r", fmt))
    assert mode == "L" and out_icc == icc  # the photo's own profile, byte for byte
    assert np.array_equal(stored, g)
    assert np.array_equal(mio.load_photo(tmp_path / f"r{'.png' if fmt == 'png' else '.tif'}")
                          .pixels, ph.pixels)


def test_a_real_grey_jpeg_with_a_dot_gain_profile_gives_a_grey_jpeg_with_it(tmp_path):
    src = _shared(WOLF)
    with Image.open(src) as im:
        icc, g = im.info["icc_profile"], np.asarray(im)
    ph = mio.load_photo(src)
    out = _save(ph, tmp_path / "r", None)
    mode, stored, out_icc = _stored(out)
    assert out.suffix == ".jpg" and mode == "L" and out_icc == icc
    # the same tones (JPEG: its compression): L* through the profile, as the source's
    assert float(np.abs(_via_profile(stored, icc) - _via_profile(g, icc)).mean()) < 0.5
    png = _save(ph, tmp_path / "r", "png")
    assert np.array_equal(_stored(png)[1], g)  # lossless: every level as stored


def test_16bit_grey_with_a_grey_profile_round_trips(tmp_path):
    g = _grey16()
    icc = mio._grey_icc(2.2)
    ph = mio.load_photo(_png16(tmp_path / "g16.png", g[..., None], _iccp(icc)))
    assert ph.grey and ph.bit_depth == 16 and ph.grey_icc == icc
    for fmt in ("png", "tiff"):
        out = _save(ph, tmp_path / "r", fmt)
        mode, stored, out_icc = _stored(out)
        assert mode.startswith("I;16") and out_icc == icc, fmt
        # a value the loading made of several (the deep shadows of gamma 2.2) goes back to
        # their middle: within 1/4 of an 8-bit level; loaded again, the same pixels
        assert np.abs(stored.astype(int) - g).max() <= 64, fmt
        assert np.array_equal(mio.load_photo(out).pixels, ph.pixels), fmt
    mode, stored8, out_icc = _stored(_save(ph, tmp_path / "r8", "png", depth=8))
    assert mode == "L" and out_icc == icc
    assert np.abs(stored8.astype(int) - (g.astype(np.int64) + 128) // 257).max() <= 1


def test_8bit_result_of_a_linear_grey_profile_keeps_the_srgb_curve_and_says_so(tmp_path):
    g = _grey16()
    lin = mio._grey_icc(1.0)
    ph = mio.load_photo(_png16(tmp_path / "lin.png", g[..., None], _iccp(lin)))
    notes: list[str] = []
    mode, stored, icc = _stored(_save(ph, tmp_path / "r8", "png", depth=8, notes=notes))
    assert mode == "L" and icc == mio._grey_srgb_icc() and any("linear" in n for n in notes)
    assert np.array_equal(stored, mio._quantise(ph.pixels[..., 0], 8))
    back = mio.load_photo(tmp_path / "r8.png")  # the profile says sRGB's curve: the same
    assert np.array_equal(mio._quantise(back.pixels, 8), mio._quantise(ph.pixels, 8))
    notes = []
    mode, stored, icc = _stored(_save(ph, tmp_path / "r16", "png", notes=notes))
    assert mode.startswith("I;16") and icc == lin and not notes  # 16 bits: its own profile
    assert np.abs(stored.astype(int) - g).max() <= 1


def test_the_grey_srgb_profile_is_srgbs_curve():
    """What the profile written with an 8-bit linear result says: its values are sRGB's (its
    curv table through LittleCMS: within 13 of 65535, 1/20 of an 8-bit level)."""
    lut = mio._grey16_lut(mio._grey_srgb_icc()).astype(int)
    assert np.abs(lut - np.arange(65536)).max() <= 13
    assert mio._icc_tags(mio._grey_srgb_icc())[b"kTRC"][:4] == b"curv"


def test_a_grey_png_with_a_gamma_chunk_gets_a_grey_profile_with_its_curve(tmp_path):
    """A gAMA chunk (1/1.8) made an RGB profile, which a grey file cannot carry: the grey
    profile of the same tone curve, the values as they were."""
    g = _grey16()
    gama = struct.pack(">I", 55556)
    chunk = struct.pack(">I", 4) + b"gAMA" + gama + struct.pack(">I", zlib.crc32(b"gAMA" + gama))
    ph = mio.load_photo(_png16(tmp_path / "g.png", g[..., None], chunk))
    assert ph.grey and ph.info.get("icc_from_png") and mio._icc_space(ph.icc_profile) == b"RGB "
    mode, stored, icc = _stored(_save(ph, tmp_path / "r", "png"))
    assert mode.startswith("I;16") and mio._icc_space(icc) == b"GRAY"
    assert np.array_equal(stored, g)
    assert abs(mio._trc_gamma(mio._icc_tags(icc)[b"kTRC"]) - 1.8) < 0.01
    # the same colours: R = G = B in the RGB profile is this grey
    rgb = ImageCms.ImageCmsProfile(io.BytesIO(ph.icc_profile))
    grey = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    lab = ImageCms.createProfile("LAB")
    a = np.asarray(ImageCms.applyTransform(
        Image.fromarray(np.repeat(ramp[..., None], 3, axis=2)),
        ImageCms.buildTransform(rgb, lab, "RGB", "LAB")))
    b = np.asarray(ImageCms.applyTransform(Image.fromarray(ramp, "L"),
                                           ImageCms.buildTransform(grey, lab, "L", "LAB")))
    assert np.abs(a[..., 0].astype(int) - b[..., 0]).max() <= 1


def test_an_rgb_profile_no_grey_can_say_keeps_the_result_rgb():
    assert mio._grey_twin(mio._adobe_rgb_icc()) is not None
    lut = mio._icc_build(b"RGB ", "a LUT profile", [(b"A2B0", b"mft2" + b"\0" * 50)])
    assert mio._grey_twin(lut) is None
    tags = dict(mio._rgb_matrix_tags(list(mio._SRGB_XY), (0, 2.2)))
    tags[b"bTRC"] = mio._curv((0, 1.8))
    assert mio._grey_twin(mio._icc_build(b"RGB ", "unequal curves", list(tags.items()))) is None


# ---------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff"])
def test_a_grey_result_keeps_the_metadata_an_rgb_one_keeps(tmp_path, fmt):
    ex = Image.Exif()
    ex[0x010F] = "MendCam"
    ex[0x0112] = 6
    ex.get_ifd(0x8825)[1] = "N"
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
           b'22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/">'
           b'<dc:title>Wolf</dc:title></rdf:Description></rdf:RDF></x:xmpmeta>')
    Image.fromarray(_grey8(), "L").save(tmp_path / "g.jpg", quality=95, exif=ex.tobytes(),
                                        xmp=xmp, dpi=(300, 300), icc_profile=mio._grey_icc(1.8))
    ph = mio.load_photo(tmp_path / "g.jpg")
    assert ph.grey and ph.pixels.shape[:2] == (53, 37)  # turned upright
    out = mio.save_photo(ph.pixels, tmp_path / "r", like=ph, record={"software": "Mend t"},
                         options=OutputOptions(format=fmt))
    with Image.open(out) as im:
        assert im.mode == "L" and im.size == (37, 53)
        e = im.getexif()
        assert e[0x010F] == "MendCam" and e.get(0x0112) == 1 and e.get_ifd(0x8825)[1] == "N"
        assert im.info["dpi"][0] == pytest.approx(300, abs=0.5)
        assert im.info.get("icc_profile") == mio._grey_icc(1.8)
    assert b"Wolf" in (mio.load_photo(out).xmp or b"")
    assert mio.read_record(out) == {"software": "Mend t"}


def test_the_png_grey_alpha_writer_reads_back_everywhere(tmp_path):
    for shape in ((1, 1), (1, 7), (5, 1), (300, 2000)):  # slabs of rows, a byte-wise filter
        for dt, top in ((np.uint8, 255), (np.uint16, 65535)):
            rng = np.random.default_rng(shape[1])
            g = rng.integers(0, top + 1, shape).astype(dt)
            a = rng.integers(0, top + 1, shape).astype(dt)
            p = tmp_path / "la.png"
            p.write_bytes(mio._png_grey_alpha(g, a))
            c = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(c[..., 0], g) and np.array_equal(c[..., 3], a), (shape, dt)
            if dt == np.uint8:
                with Image.open(p) as im:
                    assert im.mode == "LA" and np.array_equal(np.asarray(im)[..., 0], g)


# ---------------------------------------------------------------------------- the pipeline


def test_a_grey_photo_restored_with_the_builtin_chain_is_a_grey_file(tmp_path):
    from engine.pipeline import Engine

    g = cv2.GaussianBlur(_grey8(96, 128), (5, 5), 1.5)
    Image.fromarray(g, "L").save(tmp_path / "g.png", icc_profile=mio._grey_icc(1.8))
    plan = Plan(Degradation.C, "builtin", (Step("sharpen_builtin"),))
    res = Engine("cpu").run(JobRequest(tmp_path / "g.png", OutputOptions(out_dir=tmp_path / "o"),
                                       plan=plan, guard=False))
    mode, stored, icc = _stored(res.output)
    assert mode == "L" and icc == mio._grey_icc(1.8)
    assert not np.array_equal(stored, g)  # sharpened
    assert mio.read_record(res.output)["label"] == "C"


def test_a_grey_photo_passed_through_is_still_its_bytes(tmp_path):
    from engine.pipeline import Engine

    src = tmp_path / "g.png"
    Image.fromarray(_grey8(), "L").save(src, icc_profile=mio._grey_icc(1.8))
    res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path / "o"),
                                       label=Degradation.D))
    assert res.output.read_bytes() == src.read_bytes()
    # without metadata it is written afresh: grey, its profile kept (colours)
    res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path / "n",
                                                          keep_metadata=False),
                                       label=Degradation.D))
    mode, stored, icc = _stored(res.output)
    assert mode == "L" and icc == mio._grey_icc(1.8) and np.array_equal(stored, _grey8())


def test_a_grey_profile_thumbnail_is_load_photos_colours_without_a_full_size_float(tmp_path):
    """The preview of a grey photo with a grey profile went through the full-size float RGB
    ``load_photo`` makes (a 24 MP scan's thumbnail: 0.5 s, 97 MB before, 1.3 s, 409 MB
    then); its 256 levels now go through a table, with the same colours."""
    import tracemalloc

    icc = mio._grey_icc(1.8)
    g = np.tile(np.arange(256, dtype=np.uint8), (1200, 8))  # 1200 x 2048, every level
    Image.fromarray(g, "L").save(tmp_path / "scan.png", icc_profile=icc)
    full = mio.load_preview(tmp_path / "scan.png", 4096)
    assert np.array_equal(full, mio._quantise(mio.load_photo(tmp_path / "scan.png").pixels, 8))
    tracemalloc.start()
    try:
        mio.load_preview(tmp_path / "scan.png", 256)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * g.size  # a float32 RGB copy alone is 12 bytes a pixel
