"""Colour management end to end: a photo's pixels stay in its own colour space and its profile
rides along, so a result shows as its source did. Colours are compared colour-managed: both
images go to CIELAB through their own profiles (LittleCMS), never as raw pixel values.

Profiles for Adobe RGB, ProPhoto, Display P3 and linear sRGB are written here as minimal ICC v2
matrix/TRC profiles (rXYZ/gXYZ/bXYZ, r/g/bTRC, wtpt), independently of the engine's own builder
(Pillow's ImageCms.createProfile makes only sRGB, LAB and XYZ)."""
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
from engine.pipeline import Engine

SHARED = Path(__file__).resolve().parents[3] / "shared" / "images"

# ------------------------------------------------------------------ profiles written by hand
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367],
                      [0.0389, -0.0685, 1.0296]])
_D50 = np.array([0.9642, 1.0, 0.8249])
_D65 = (0.3127, 0.3290)


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _xyz_tag(v) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(c) for c in v)


def _gamma_curve(g: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(g * 256)) + b"\0\0"


def _srgb_curve() -> bytes:
    x = np.linspace(0, 1, 1024)
    y = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    return b"curv\0\0\0\0" + struct.pack(">I", x.size) + np.round(y * 65535).astype(">u2").tobytes()


def _chroma(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1 - x - y) / y])


def _profile(desc: str, prims, white, trc: bytes) -> bytes:
    cols = np.stack([_chroma(*p) for p in prims], axis=1)
    w = _chroma(*white)
    m = cols * np.linalg.solve(cols, w)
    m = np.linalg.inv(_BRADFORD) @ np.diag((_BRADFORD @ _D50) / (_BRADFORD @ w)) @ _BRADFORD @ m
    name = desc.encode()
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(name) + 1) + name + b"\0" * 79),
            (b"wtpt", _xyz_tag(_D50)), (b"cprt", b"text\0\0\0\0none\0"),
            (b"rXYZ", _xyz_tag(m[:, 0])), (b"gXYZ", _xyz_tag(m[:, 1])),
            (b"bXYZ", _xyz_tag(m[:, 2])), (b"rTRC", trc), (b"gTRC", trc), (b"bTRC", trc)]
    start = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for sig, blob in tags:
        data += b"\0" * (-(start + len(data)) % 4)
        table += sig + struct.pack(">II", start + len(data), len(blob))
        data += blob
    body = table + data
    header = (struct.pack(">I", 128 + len(body)) + b"none" + struct.pack(">I", 0x02100000)
              + b"mntr" + b"RGB " + b"XYZ " + b"\0" * 12 + b"acsp" + b"\0" * 28
              + b"".join(_s15(v) for v in _D50) + b"\0" * 48)
    return header + body


ADOBE = _profile("Adobe RGB (test)", [(0.64, 0.33), (0.21, 0.71), (0.15, 0.06)], _D65,
                 _gamma_curve(563 / 256))
PROPHOTO = _profile("ProPhoto RGB (test)", [(0.7347, 0.2653), (0.1596, 0.8404),
                                             (0.0366, 0.0001)], (0.3457, 0.3585),
                    _gamma_curve(1.8))
P3 = _profile("Display P3 (test)", [(0.68, 0.32), (0.265, 0.69), (0.15, 0.06)], _D65,
              _srgb_curve())
LINEAR = _profile("linear sRGB (test)", [(0.64, 0.33), (0.30, 0.60), (0.15, 0.06)], _D65,
                  _gamma_curve(1.0))
PROFILES = {"adobe": ADOBE, "prophoto": PROPHOTO, "p3": P3, "linear": LINEAR}


# ------------------------------------------------------------------ colour-managed comparison
def lab(rgb: np.ndarray, icc: bytes | None) -> np.ndarray:
    """Float RGB [0, 1] (H, W, 3) in the space of ``icc`` (None: sRGB) -> CIELAB (D50)."""
    prof = ImageCms.ImageCmsProfile(io.BytesIO(icc)) if icc else ImageCms.createProfile("sRGB")
    t = ImageCms.buildTransform(prof, ImageCms.createProfile("LAB"), "RGB", "LAB",
                                renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    im = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")
    v = np.asarray(ImageCms.applyTransform(im, t))
    return np.dstack([v[..., 0].astype(np.float32) * (100 / 255),
                      v[..., 1].view(np.int8).astype(np.float32),
                      v[..., 2].view(np.int8).astype(np.float32)])


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a - b) ** 2).sum(-1))


def _read(path: Path) -> tuple[np.ndarray, bytes | None, int]:
    """(float RGB, ICC profile, bits per channel) of a written result, read independently."""
    with Image.open(path) as im:
        icc = im.info.get("icc_profile")
        rgb8 = np.asarray(im.convert("RGB"))
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is not None and a.dtype == np.uint16:
        return a[..., 2::-1].astype(np.float32) / 65535, icc, 16
    return rgb8.astype(np.float32) / 255, icc, 8


def _scene(h: int = 48, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    x, y = xx / (w - 1), yy / (h - 1)
    return (np.dstack([x, y, 1 - x * y]) * 0.9 + 0.05).astype(np.float32)


def _png_chunk(ctype: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + ctype + data
            + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF))


def _png_with(path: Path, rgb8: np.ndarray, *chunks: bytes) -> Path:
    buf = io.BytesIO()
    Image.fromarray(rgb8).save(buf, "PNG")
    png = buf.getvalue()
    path.write_bytes(png[:33] + b"".join(chunks) + png[33:])  # right after IHDR
    return path


# ------------------------------------------------------------------ the profile rides along
@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize("fmt,bits", [("png", 16), ("tiff", 16), ("jpeg", 8), ("webp", 8)])
def test_a_wide_gamut_photo_keeps_its_profile_bits_and_colours(tmp_path, name, fmt, bits):
    icc = PROFILES[name]
    img = _scene()
    like = mio.Photo(path=tmp_path / "x", pixels=img, bit_depth=bits, format=fmt.upper(),
                     icc_profile=icc)
    src = mio.save_photo(img, tmp_path / f"src.{fmt}", like=like,
                         options=OutputOptions(bit_depth=bits, quality=100))
    ph = mio.load_photo(src)
    # linear pixels (8 or 16 bits) are encoded with the sRGB curve for the models:
    # ``icc_profile`` then says so and the photo's own profile rides along in ``linear_icc``
    assert (ph.linear_icc or ph.icc_profile) == icc and ph.bit_depth == bits
    assert (ph.linear_icc is not None) == (name == "linear")
    out = mio.save_photo(ph.pixels, tmp_path / "res", like=ph)
    rgb, ricc, rbits = _read(out)
    # (an 8-bit linear result keeps the sRGB curve and the profile saying so)
    assert ricc == (ph.icc_profile if bits == 8 and ph.linear_icc else icc) and rbits == bits
    e = delta_e(lab(ph.pixels, ph.icc_profile), lab(rgb, ricc))
    if bits == 16:  # lossless: the source's very values (a linear one's converted back)
        assert np.array_equal(rgb, _read(src)[0])
        if ph.linear_icc is None:  # (8-bit Lab of linear values is too coarse to compare)
            assert float(e.max()) <= 0.6, float(e.max())
    else:  # JPEG / WebP at quality 95 (the default): compression, no colour shift
        assert float(e.mean()) < 2.0 and float(e.max()) < 8.0, float(e.max())


def test_a_16bit_adobe_rgb_tiff_through_the_builtin_chain_keeps_16_bits_and_colour(tmp_path):
    rng = np.random.default_rng(3)
    img = np.clip(_scene(96, 128) + rng.normal(0, 4 / 255, (96, 128, 3)), 0, 1).astype(
        np.float32)
    like = mio.Photo(path=tmp_path / "x", pixels=img, bit_depth=16, format="TIFF",
                     icc_profile=ADOBE)
    src = mio.save_photo(img, tmp_path / "in.tif", like=like, options=OutputOptions(bit_depth=16))
    plan = Plan(Degradation.A, "builtin", (Step("denoise_builtin", {"sigma": 4.0}),
                                           Step("sharpen_builtin")))
    res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path / "o"), plan=plan,
                                       guard=False))
    rgb, icc, bits = _read(res.output)
    assert icc == ADOBE and bits == 16
    # denoising and sharpening move single pixels, never the colour of an area
    e = delta_e(lab(cv2.blur(img, (9, 9)), ADOBE), lab(cv2.blur(rgb, (9, 9)), icc))
    assert float(e[8:-8, 8:-8].mean()) < 0.8 and float(e[8:-8, 8:-8].max()) < 2.5


# ------------------------------------------------------------------ PNG gAMA / cHRM
def test_a_png_described_only_by_gama_keeps_its_colours(tmp_path):
    """PNG spec 11.3.3: without iCCP or sRGB, gAMA (and cHRM) say what the colours are. A
    linear PNG (gAMA 1.0) was read as sRGB and its result had no colour description at all:
    every viewer honouring gAMA showed the source and the result differently."""
    img = _scene()
    rgb8 = np.round(img * 255).astype(np.uint8)
    src = _png_with(tmp_path / "linear.png", rgb8,
                    _png_chunk(b"gAMA", struct.pack(">I", 100000)))
    ph = mio.load_photo(src)
    assert ph.icc_profile is not None and "gamma 1" in ph.info["icc_from_png"]
    for fmt in ("png", "jpeg"):
        out = mio.save_photo(ph.pixels, tmp_path / f"res.{fmt}", like=ph,
                             options=OutputOptions(format=fmt, keep_metadata=False,
                                                   quality=100))
        rgb, icc, _ = _read(out)
        assert icc is not None
        e = delta_e(lab(rgb8 / 255.0, LINEAR), lab(rgb, icc))  # linear values, sRGB primaries
        assert float(e.mean()) < 1.0 and float(e.max()) < 6.0, (fmt, float(e.max()))


def test_a_png_with_gama_and_chrm_of_other_primaries_gets_a_matching_profile(tmp_path):
    img = _scene()
    rgb8 = np.round(img * 255).astype(np.uint8)
    # ProPhoto's primaries and white, gamma 1.8 (file gamma 1/1.8)
    chrm = struct.pack(">8I", 34570, 35850, 73470, 26530, 15960, 84040, 3660, 10)
    src = _png_with(tmp_path / "pro.png", rgb8, _png_chunk(b"gAMA", struct.pack(">I", 55556)),
                    _png_chunk(b"cHRM", chrm))
    ph = mio.load_photo(src)
    e = delta_e(lab(img, PROPHOTO), lab(ph.pixels, ph.icc_profile))
    assert float(e.max()) < 2.0, float(e.max())


def test_srgb_like_gama_or_an_srgb_chunk_adds_no_profile(tmp_path):
    rgb8 = np.round(_scene() * 255).astype(np.uint8)
    chrm = struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)
    gama = _png_chunk(b"gAMA", struct.pack(">I", 45455))
    for name, chunks in (("g.png", (gama,)), ("gc.png", (gama, _png_chunk(b"cHRM", chrm))),
                         ("s.png", (_png_chunk(b"sRGB", b"\0"),
                                    _png_chunk(b"gAMA", struct.pack(">I", 100000))))):
        ph = mio.load_photo(_png_with(tmp_path / name, rgb8, *chunks))
        assert ph.icc_profile is None and "icc_from_png" not in ph.info, name


def test_a_16bit_png_with_gama_keeps_16_bits_and_gets_the_profile(tmp_path):
    a = np.round(_scene() * 65535).astype(np.uint16)
    _, buf = cv2.imencode(".png", np.ascontiguousarray(a[..., ::-1]))
    png = buf.tobytes()
    src = tmp_path / "g16.png"
    src.write_bytes(png[:33] + _png_chunk(b"gAMA", struct.pack(">I", 100000)) + png[33:])
    ph = mio.load_photo(src)
    assert ph.bit_depth == 16 and ph.linear_icc is not None  # (gamma 1.0: linear)
    rgb, icc, bits = _read(mio.save_photo(ph.pixels, tmp_path / "r", like=ph))
    assert bits == 16 and icc == ph.linear_icc  # the linear values, with their profile
    assert np.array_equal(np.round(rgb * 65535).astype(np.uint16), a)


# ------------------------------------------------------------------ EXIF ColorSpace
def _exif(colour_space: int, interop: bytes | None) -> bytes:
    """A little-endian EXIF blob: IFD0 -> Exif IFD (ColorSpace[, Interop pointer]) -> Interop
    IFD (InteropIndex)."""
    ifd0 = 8
    exif_ifd = ifd0 + 2 + 12 + 4
    n = 2 if interop else 1
    interop_ifd = exif_ifd + 2 + 12 * n + 4
    out = b"II*\0" + struct.pack("<I", ifd0)
    out += struct.pack("<H", 1) + struct.pack("<HHII", 0x8769, 4, 1, exif_ifd) + b"\0" * 4
    out += struct.pack("<H", n) + struct.pack("<HHIHH", 0xA001, 3, 1, colour_space, 0)
    if interop:
        out += struct.pack("<HHII", 0xA005, 4, 1, interop_ifd)
    out += b"\0" * 4
    if interop:
        out += struct.pack("<H", 1) + struct.pack("<HHI", 1, 2, 4) + interop + b"\0" + b"\0" * 4
    return b"Exif\0\0" + out


def test_an_adobe_rgb_camera_jpeg_without_a_profile_keeps_its_colours(tmp_path):
    """A camera set to Adobe RGB writes no ICC profile, only EXIF ColorSpace 0xFFFF and the
    DCF interoperability index R03. Its result with --no-metadata (EXIF dropped, "the colour
    profile kept") had lost that: Adobe RGB values shown as sRGB."""
    img = _scene()
    rgb8 = np.round(img * 255).astype(np.uint8)
    src = tmp_path / "r03.jpg"
    Image.fromarray(rgb8).save(src, exif=_exif(0xFFFF, b"R03"), quality=100)
    ph = mio.load_photo(src)
    assert ph.info["icc_from_exif"] == "Adobe RGB (1998)"
    assert ph.icc_profile is not None
    for keep in (True, False):
        out = mio.save_photo(ph.pixels, tmp_path / f"res{keep}.jpg", like=ph,
                             options=OutputOptions(keep_metadata=keep, quality=100))
        rgb, icc, _ = _read(out)
        e = delta_e(lab(rgb8 / 255.0, ADOBE), lab(rgb, icc))
        assert float(e.mean()) < 1.0 and float(e.max()) < 6.0, (keep, float(e.max()))
    # the profile Mend writes is Adobe RGB (1998): the same colours as the reference one
    e = delta_e(lab(img, ADOBE), lab(img, ph.icc_profile))
    assert float(e.max()) <= 1.0


@pytest.mark.parametrize("space,interop", [(1, b"R98"), (0xFFFF, b"R98"), (0xFFFF, None),
                                           (1, None)])
def test_srgb_or_unknown_exif_colour_spaces_add_no_profile(tmp_path, space, interop):
    src = tmp_path / "x.jpg"
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(src, exif=_exif(space, interop))
    ph = mio.load_photo(src)
    assert ph.icc_profile is None and "icc_from_exif" not in ph.info


def test_an_embedded_profile_wins_over_the_exif_colour_space(tmp_path):
    src = tmp_path / "p3.jpg"
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(src, exif=_exif(0xFFFF, b"R03"),
                                                             icc_profile=P3)
    assert mio.load_photo(src).icc_profile == P3


# ------------------------------------------------------------------ real photos
def _shared(rel: str) -> Path:
    p = SHARED / rel
    if not p.is_file():
        pytest.skip(f"{rel} not found in ../shared/images")
    return p


def test_real_16bit_adobe_rgb_png_with_alpha_through_builtin_chain(tmp_path):
    src = _shared("lowres_noise_jpeg/Real-ESRGAN__inputs__tree_alpha_16bit.png")
    with Image.open(src) as im:
        src_icc = im.info["icc_profile"]
    plan = Plan(Degradation.C, "builtin", (Step("sharpen_builtin"),))
    res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path), plan=plan,
                                       guard=False))
    rgb, icc, bits = _read(res.output)
    assert icc == src_icc and bits == 16
    a = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    before = a[..., 2::-1].astype(np.float32) / 65535
    visible = a[..., 3] > 0
    # what the engine wrote is the step's own work on the source's values (transparent
    # pixels filled first, as the engine does), in the source's space, to 16-bit rounding:
    # no colour conversion on the way in or out
    from engine.pipeline import fill_transparent
    from engine.restore.classical import unsharp_mask

    expected = unsharp_mask(fill_transparent(before, a[..., 3].astype(np.float32) / 65535))
    assert float(np.abs(rgb - expected)[visible].max()) < 2 / 65535
    # and load -> save alone is exact in 16 bits, colour-managed
    ph = mio.load_photo(src)
    rgb2, icc2, bits2 = _read(mio.save_photo(ph.pixels, tmp_path / "same", like=ph))
    assert icc2 == src_icc and bits2 == 16
    assert float(np.abs(rgb2 - before)[a[..., 3] > 0].max()) < 1 / 65535 * 1.01


def test_real_iphone_display_p3_heic_exports_a_jpeg_with_its_profile(tmp_path):
    if not mio.heif_supported():
        pytest.skip("the optional 'heif' extra (pillow-heif) is not installed")
    src = _shared("camera_heic/exif-samples__heic__IMG_5195.HEIC")
    ph = mio.load_photo(src, max_pixels=20_000_000)
    assert b"Display P3" in ph.icc_profile
    small = cv2.resize(ph.pixels, (320, 248), interpolation=cv2.INTER_AREA)
    out = mio.save_photo(small, tmp_path / "r", like=ph, options=OutputOptions(quality=100))
    rgb, icc, _ = _read(out)
    assert out.suffix == ".jpg" and icc == ph.icc_profile
    assert float(delta_e(lab(small, ph.icc_profile), lab(rgb, icc)).mean()) < 1.0


def test_real_grey_jpeg_with_a_dot_gain_profile_is_converted_not_reinterpreted(tmp_path):
    src = _shared("lowres_noise_jpeg/Real-ESRGAN__inputs__wolf_gray.jpg")
    ph = mio.load_photo(src)
    assert ph.info["icc_converted"] == "grey profile -> sRGB" and ph.icc_profile is None
    with Image.open(src) as im:
        t = ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"])),
                                    ImageCms.createProfile("LAB"), "L", "LAB")
        v = np.asarray(ImageCms.applyTransform(im, t))
        stored, src_icc = np.asarray(im), im.info["icc_profile"]
    ref_l = v[..., 0].astype(np.float32) * (100 / 255)
    assert float(np.abs(lab(ph.pixels, None)[..., 0] - ref_l).mean()) < 1.0  # its sRGB pixels
    # the result is grey again: converted back to the photo's own profile, which it carries
    # (session 13: it was RGB in sRGB, untagged), every level as it was stored
    out = mio.save_photo(ph.pixels, tmp_path / "r.png", like=ph)
    with Image.open(out) as r:
        assert r.mode == "L" and r.info.get("icc_profile") == src_icc
        assert np.array_equal(np.asarray(r), stored)
