"""Session 13: linear 16-bit photos encoded for the models and saved back linear, JPEG XL and
float TIFF previews through their profile, a JPEG with alpha flattened without full-size float
copies, 16-bit CMYK TIFF kept at 16 bits, an unusable resolution that no longer drops the EXIF.

Every file is made here (profiles by hand in test_colour, the CMYK press profile and its ink
model in test_imageio_s12, float TIFFs in test_imageio_s11)."""
from __future__ import annotations

import struct
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import imageio as mio
from engine.api import Degradation, JobRequest, OutputOptions, Plan, Step
from engine.pipeline import Engine
from tests.engine.test_colour import _D65, ADOBE, LINEAR, P3, _gamma_curve, _profile, _read
from tests.engine.test_imageio_s11 import _float_tiff, _linear_icc
from tests.engine.test_imageio_s12 import _cmyk_profile, _ink_to_linear_rgb, _quantise_whole, _srgb8

LINEAR_2020 = _profile("linear Rec.2020 (test)", [(0.708, 0.292), (0.170, 0.797),
                                                   (0.131, 0.046)], _D65, _gamma_curve(1.0))
# an identity tone curve written as "curv" with no entries (what some writers make of gamma 1)
LINEAR_EMPTY_CURV = _profile("linear, empty curv (test)", [(0.64, 0.33), (0.30, 0.60),
                                                           (0.15, 0.06)], _D65,
                             b"curv\0\0\0\0" + struct.pack(">I", 0))


def _oetf(lin: np.ndarray) -> np.ndarray:
    lin = np.clip(lin, 0, 1).astype(np.float64)
    return np.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)


def _eotf(enc: np.ndarray) -> np.ndarray:
    enc = np.asarray(enc, dtype=np.float64)
    return np.where(enc <= 0.04045, enc / 12.92, ((enc + 0.055) / 1.055) ** 2.4)


def _every_code(h: int = 256, w: int = 300) -> np.ndarray:
    """uint16 RGB of random codes, the first ones 0, 1, 2 ... (every 16-bit code when it is
    large enough: the default size)."""
    a = np.random.default_rng(4).integers(0, 65536, (h, w, 3)).astype(np.uint16)
    n = min(a.size, 65536)
    a.reshape(-1)[:n] = np.arange(n, dtype=np.uint16)
    return a


def _save16(path: Path, a: np.ndarray, icc: bytes | None) -> Path:
    """A 16-bit PNG/TIFF of the uint16 values ``a`` tagged with ``icc``."""
    like = mio.Photo(path=path.with_name("x"), pixels=a, bit_depth=16, format="PNG",
                     icc_profile=icc)
    return mio.save_photo(a, path, like=like, options=OutputOptions(bit_depth=16))


# ============================================================ 1. linear 16-bit photos


@pytest.mark.parametrize("ext", ["png", "tif"])
@pytest.mark.parametrize("icc", [LINEAR, LINEAR_2020, LINEAR_EMPTY_CURV],
                         ids=["linear-srgb", "linear-rec2020", "empty-curv"])
def test_a_16bit_linear_photo_is_encoded_for_the_models_and_saved_back_linear(tmp_path, ext,
                                                                              icc):
    """Before: the linear values went to the models as they were (which expect sRGB-encoded
    pixels: the built-in chain ended further from the scene, see below)."""
    a = _every_code()
    src = _save16(tmp_path / f"src.{ext}", a, icc)
    ph = mio.load_photo(src)
    assert ph.bit_depth == 16 and ph.linear_icc == icc and "linear_encoded" in ph.info
    assert np.abs(ph.pixels - _oetf(a / 65535.0)).max() < 1e-6  # the sRGB curve
    # icc_profile describes the pixels: the photo's primaries with the sRGB tone curve
    tags, own = mio._icc_tags(ph.icc_profile), mio._icc_tags(icc)
    assert all(tags[s][:20] == own[s][:20] for s in (b"rXYZ", b"gXYZ", b"bXYZ"))
    assert mio._trc_gamma(tags[b"gTRC"]) is None
    # saved as it came: its own profile byte for byte, its very values (no processing)
    rgb, ricc, bits = _read(mio.save_photo(ph.pixels, tmp_path / "res", like=ph))
    assert ricc == icc and bits == 16
    assert int(np.abs(np.round(rgb * 65535).astype(np.int64) - a).max()) == 0
    # the thumbnail path: the stored values and the profile that describes them
    assert mio.source_profile(src) == icc


@pytest.mark.parametrize("name,icc,bits", [("Adobe RGB 8-bit", ADOBE, 8),
                                           ("Adobe RGB 16-bit", ADOBE, 16),
                                           ("Display P3 16-bit", P3, 16)])
def test_8bit_and_gamma_encoded_photos_are_left_as_they_are(tmp_path, name, icc, bits):
    a = _every_code(64, 80) if bits == 16 else \
        np.random.default_rng(1).integers(0, 256, (64, 80, 3)).astype(np.uint8)
    like = mio.Photo(path=tmp_path / "x", pixels=a, bit_depth=bits, format="PNG",
                     icc_profile=icc)
    src = mio.save_photo(a, tmp_path / "src.png", like=like)
    ph = mio.load_photo(src)
    assert ph.icc_profile == icc and ph.linear_icc is None and "linear_encoded" not in ph.info
    assert np.array_equal(mio._quantise(ph.pixels, bits), a), name
    out = mio.save_photo(ph.pixels, tmp_path / "res", like=ph)
    assert out.read_bytes() == src.read_bytes()  # the same encoder, the same bytes


def _chain_scene(h: int = 96, w: int = 128) -> np.ndarray:
    """An sRGB-encoded scene: gradients, hard edges and fine texture."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h - 1, w - 1])[:, None, None]
    rgb = np.dstack([0.15 + 0.7 * xx, 0.2 + 0.6 * yy, 0.5 + 0.3 * np.sin(9 * xx + 5 * yy)])
    rgb[(np.floor(xx * 6) + np.floor(yy * 4)) % 2 == 1] *= 0.45
    return np.clip(rgb, 0, 1)


def _lab(lin: np.ndarray) -> np.ndarray:
    """Linear BT.709/sRGB RGB -> CIELAB (D65), in float."""
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                  [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / m.sum(1)
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.dstack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                      200 * (f[..., 1] - f[..., 2])])


def test_a_linear_photo_through_the_builtin_chain_ends_as_close_to_the_scene_as_an_srgb_one(
        tmp_path):
    """The same noisy photo stored 16-bit linear (linear sRGB profile) and 16-bit sRGB: the
    built-in denoise + sharpen chain's results, in Lab against the clean scene. Before: mean
    dE 7.02 linear against 4.43 sRGB here (real photos, astronaut 4.50 / 3.49, flower
    4.37 / 2.84); now the same."""
    clean = _chain_scene()
    noisy = np.clip(clean + np.random.default_rng(1).normal(0, 6 / 255, clean.shape), 0, 1)
    plan = Plan(Degradation.A, "builtin", (Step("denoise_builtin", {"sigma": 6.0}),
                                           Step("sharpen_builtin")))
    err = {}
    for kind, px, icc in (("linear", _eotf(noisy), LINEAR), ("srgb", noisy, None)):
        src = _save16(tmp_path / f"{kind}.png", np.round(px * 65535).astype(np.uint16), icc)
        res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path / kind),
                                           plan=plan, guard=False))
        rgb, ricc, bits = _read(res.output)
        assert ricc == icc and bits == 16
        got = rgb if kind == "linear" else _eotf(rgb)
        e = np.sqrt(((_lab(got) - _lab(_eotf(clean))) ** 2).sum(-1))[8:-8, 8:-8]
        err[kind] = float(e.mean())
    assert abs(err["linear"] - err["srgb"]) < 0.05, err


def test_an_8bit_result_of_a_linear_photo_keeps_the_srgb_curve_and_says_so(tmp_path):
    """8 bits of linear light band in the shadows (0-25 % linear: max dE 1.76 and 65 levels,
    against 0.25 and 138 with the sRGB curve): a JPEG keeps the encoded pixels and a profile
    that says so (the photo's primaries, the sRGB curve)."""
    a = _every_code(64, 80)
    ph = mio.load_photo(_save16(tmp_path / "src.tif", a, LINEAR_2020))
    notes: list[str] = []
    out = mio.save_photo(ph.pixels, tmp_path / "res.png", like=ph, notes=notes,
                         options=OutputOptions(bit_depth=8))
    rgb, ricc, bits = _read(out)
    assert bits == 8 and ricc == ph.icc_profile != LINEAR_2020
    assert np.array_equal(np.round(rgb * 255).astype(np.uint8), mio._quantise(ph.pixels, 8))
    assert any("linear tone curve" in n for n in notes)


def test_a_float_tiff_with_a_linear_profile_is_saved_with_that_profile(tmp_path):
    """Before: its 16-bit result carried a profile Mend made (its primaries, the sRGB curve),
    not the photo's own."""
    f = np.random.default_rng(2).random((20, 30, 3)).astype(np.float32)
    icc = _linear_icc(1.0)
    path = tmp_path / "ps.tif"
    path.write_bytes(_float_tiff(f, compression=8, icc=icc))
    ph = mio.load_photo(path)
    assert ph.linear_icc == icc and np.abs(ph.pixels - _oetf(f)).max() < 1e-5
    rgb, ricc, bits = _read(mio.save_photo(ph.pixels, tmp_path / "res", like=ph))
    assert ricc == icc and bits == 16
    assert np.abs(rgb - f).max() <= 1 / 65535  # the linear values, to the 16-bit code


# ============================================================ 2. previews through the profile


def test_a_jpeg_xl_preview_is_converted_through_its_profile(tmp_path):
    """Before: the preview held the stored (Display P3) values and ``source_profile`` says
    None for a JPEG XL: thumbnails showed them as sRGB (10.1 levels off on average here)."""
    if not mio.jxl_supported():
        pytest.skip("the optional 'jxl' extra (pillow-jxl-plugin) is not installed")
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.dstack([x * 4, y * 5, 255 - x * 3]).astype(np.uint8)
    jpg = tmp_path / "p3.jpg"
    Image.fromarray(rgb).save(jpg, quality=95, icc_profile=P3)
    path = tmp_path / "p3.jxl"
    with pytest.warns(UserWarning, match="JPEG reconstruction"), mio._pil().open(jpg) as im:
        im.save(path, "JXL")  # (the plugin keeps a JPEG's ICC only this way)
    photo = mio.load_photo(path)
    assert photo.format == "JXL" and photo.icc_profile == P3
    stored = mio._quantise(photo.pixels, 8)
    want = np.asarray(mio.rgb_to_srgb(Image.fromarray(stored), P3)).astype(np.int16)
    got = mio.load_preview(path, 64).astype(np.int16)
    assert np.abs(got - want).max() <= 1
    assert np.abs(stored.astype(np.int16) - want).mean() > 5  # (what it showed before)
    assert mio.source_profile(path) is None  # nothing left for the UI to convert


def test_a_float_tiff_preview_is_converted_through_its_profile(tmp_path):
    """Before: the preview held the encoded values of the float TIFF's own primaries (here
    Adobe RGB-like) and ``source_profile`` says None for a float TIFF: shown as sRGB."""
    y, x = np.mgrid[0:40, 0:60] / 60.0
    f = np.dstack([x, y, 1 - x]).astype(np.float32) * 0.9
    path = tmp_path / "hdr.tif"
    path.write_bytes(_float_tiff(f, icc=_linear_icc(1.0)))
    photo = mio.load_photo(path)
    stored = mio._quantise(photo.pixels, 8)
    want = np.asarray(mio.rgb_to_srgb(Image.fromarray(stored), photo.icc_profile))
    got = mio.load_preview(path, 60).astype(np.int16)
    assert np.abs(got - want.astype(np.int16)).max() <= 1
    assert np.abs(stored.astype(np.int16) - want).max() > 20
    assert mio.source_profile(path) is None


# ============================================================ 3. JPEG with alpha: no float copies


def test_flattening_onto_white_gives_the_same_bytes_in_slabs(monkeypatch):
    rng = np.random.default_rng(7)
    px = rng.random((97, 61, 3)).astype(np.float32) * 1.2 - 0.1
    px.flat[rng.integers(0, px.size, 50)] = np.nan
    al = rng.random((97, 61)).astype(np.float32)
    monkeypatch.setattr(mio, "_QUANTISE_SLAB", 2000)  # many slabs, a last short one
    for arr in (px, px.astype(np.float64), mio._quantise(px, 8), mio._quantise(px, 16)):
        unit = arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else
                                         65535.0 if arr.dtype == np.uint16 else 1.0)
        unit = np.clip(np.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0), 0, 1)
        a3 = al[..., None]
        want = _quantise_whole(unit * a3 + (1.0 - a3), 8)  # the formula as it was, whole
        assert np.array_equal(mio._quantise(arr, 8, over_white=al), want), arr.dtype


def test_a_jpeg_with_alpha_is_flattened_without_full_size_float_copies(tmp_path):
    """48 MP float32 + alpha to JPEG (measured, tracemalloc): peak 1968 MiB -> 257 MiB, peak
    RSS +1969 -> +443 MiB, 11.7 -> 2.3 s. Here (3 MP, 36 MB of float32 pixels): the uint8
    result (9 MB) and slabs, where four full-size float32 copies were made."""
    h, w = 1500, 2000
    px = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
    al = np.ones((h, w), np.float32)
    al[:, :50] = 0.25
    like = mio.Photo(path=tmp_path / "src.png", pixels=px, format="PNG")
    notes: list[str] = []
    tracemalloc.start()
    try:
        out = mio.save_photo(px, tmp_path / "o.jpg", like=like, alpha=al, notes=notes,
                             options=OutputOptions(format="jpeg", quality=90))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < px.nbytes, peak  # before: 129 MB, 3.6 x px.nbytes
    assert any("filled with white" in n for n in notes)
    got = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
    assert got[:, :50].min() >= 150 and abs(float(got[:, 100:].mean()) - 127.5) < 3


# ============================================================ 4. 16-bit CMYK TIFF


def _cmyk16_tiff(a: np.ndarray, bo: str = "<", compression: int = 1, predictor: int = 1,
                 orientation: int = 1, icc: bytes | None = None, rows: int | None = None
                 ) -> bytes:
    """A 16-bit CMYK TIFF (PhotometricInterpretation 5) of uint16 (H, W, 4) ``a``: raw or
    Deflate strips (compression 8), with horizontal differencing (predictor 2)."""
    h, w, _ = a.shape
    rows = rows or h
    strips = []
    for y in range(0, h, rows):
        blk = a[y:y + rows].astype(np.int64)
        if predictor == 2:
            blk[:, 1:] = (blk[:, 1:] - a[y:y + rows, :-1]) % 65536
        raw = blk.astype(np.dtype(bo + "u2")).tobytes()
        strips.append(zlib.compress(raw) if compression == 8 else raw)
    tags: dict[int, tuple[int, object]] = {
        256: (4, [w]), 257: (4, [h]), 258: (3, [16] * 4), 259: (3, [compression]),
        262: (3, [5]), 273: (4, [0] * len(strips)), 274: (3, [orientation]), 277: (3, [4]),
        278: (4, [rows]), 279: (4, [len(s) for s in strips]), 284: (3, [1]),
        317: (3, [predictor])}
    if icc:
        tags[34675] = (7, icc)

    def payload(typ: int, v) -> bytes:
        return v if typ == 7 else struct.pack(bo + ("H" if typ == 3 else "I") * len(v), *v)

    blobs = {t: payload(*tags[t]) for t in tags}
    extra_at = 8 + 2 + 12 * len(tags) + 4
    pos = extra_at + sum(len(b) + (len(b) & 1) for b in blobs.values() if len(b) > 4)
    offsets = []
    for s in strips:
        offsets.append(pos)
        pos += len(s)
    blobs[273] = payload(4, offsets)  # (as long as the placeholder)
    table, extra = bytearray(struct.pack(bo + "H", len(tags))), bytearray()
    for tag in sorted(tags):
        typ, b = tags[tag][0], blobs[tag]
        count = len(b) if typ == 7 else len(b) // (2 if typ == 3 else 4)
        if len(b) <= 4:
            table += struct.pack(bo + "HHI", tag, typ, count) + b.ljust(4, b"\0")
        else:
            table += struct.pack(bo + "HHII", tag, typ, count, extra_at + len(extra))
            extra += b + b"\0" * (len(b) & 1)
    table += struct.pack(bo + "I", 0)
    head = (b"II*\0" if bo == "<" else b"MM\0*") + struct.pack(bo + "I", 8)
    return head + bytes(table) + bytes(extra) + b"".join(strips)


def _cmyk16() -> np.ndarray:
    a = np.random.default_rng(5).integers(0, 65536, (40, 64, 4)).astype(np.uint16)
    a[:, :8] = (np.arange(40) * 65535 // 39)[:, None, None]  # neutral ramps
    a[:3] = 0  # paper white
    return a


@pytest.mark.parametrize("layout", [{}, {"bo": ">"}, {"compression": 8},
                                    {"compression": 8, "predictor": 2, "bo": ">", "rows": 7},
                                    {"rows": 9, "orientation": 6},
                                    {"compression": 8, "orientation": 8}],
                         ids=["raw", "raw-be", "deflate", "deflate-pred-be-strips",
                              "raw-strips-rot", "deflate-rot"])
def test_a_16bit_cmyk_tiff_without_a_profile_keeps_its_16_bits(tmp_path, layout):
    """Before: Pillow's 8 bits (each sample's high byte), silently."""
    a = _cmyk16()
    path = tmp_path / "c16.tif"
    path.write_bytes(_cmyk16_tiff(a, **layout))
    ph = mio.load_photo(path)
    assert ph.bit_depth == 16 and ph.info["converted_from"] == "CMYK" and ph.icc_profile is None
    assert not ph.info["warnings"]
    ink = mio._orient(a, layout.get("orientation", 1)) / 65535.0
    want = (1 - ink[..., :3]) * (1 - ink[..., 3:])  # Pillow's formula, at 16 bits
    assert np.abs(ph.pixels - want).max() < 1e-6
    out = mio.save_photo(ph.pixels, tmp_path / "res", like=ph)
    rgb, icc, bits = _read(out)
    assert out.suffix == ".tif" and bits == 16 and icc is None  # sRGB, 16 bits
    assert np.array_equal(np.round(rgb * 65535).astype(np.uint16), mio._quantise(ph.pixels, 16))


def test_a_16bit_cmyk_tiff_is_converted_through_its_profile_at_16_bits(tmp_path):
    icc = _cmyk_profile()
    a = _cmyk16()
    ramp = np.zeros((1, 4096, 4), np.uint16)
    ramp[0, :, 3] = np.arange(4096) * 16  # black 0 -> 100 %, 4096 levels
    ramp[0, :, 0] = np.arange(4096) * 8
    grid = np.random.default_rng(6).integers(0, 18, (8, 8, 4)).astype(np.uint16) * 3855
    for name, px in (("photo", a), ("ramp", ramp), ("grid", grid)):
        path = tmp_path / f"{name}.tif"
        path.write_bytes(_cmyk16_tiff(px, compression=8, icc=icc))
        ph = mio.load_photo(path)
        assert ph.bit_depth == 16 and ph.info["icc_converted"] == "CMYK profile -> sRGB"
        assert ph.icc_profile is None and not ph.info["warnings"]
        got = ph.pixels.astype(np.float64) * 255
        with Image.open(path) as im:  # the 8-bit path: Pillow's high bytes, LittleCMS
            im.info["icc_profile"] = icc
            eight = np.asarray(mio._cmyk_to_rgb(im)).astype(np.float64)
        want = _srgb8(_ink_to_linear_rgb(px / 65535.0))  # the press the profile describes
        if name == "photo":  # as close to the press as the 8-bit path, or closer
            # (measured: mean 0.505 / max 3.65 levels; the 8-bit path 0.54 / 3.85)
            assert np.abs(got - want).mean() <= np.abs(eight - want).mean()
            assert np.abs(got - want).max() < 4.0
        elif name == "ramp":  # a 16-bit ramp stays one: 4096 levels, not 8-bit steps
            assert len(np.unique(mio._quantise(ph.pixels, 16)[0, :, 0])) == 4096
            assert len(np.unique(eight[0, :, 0])) < 256
            assert np.abs(got - want).mean() < np.abs(eight - want).mean()
        else:  # at the table's points: LittleCMS's own 8-bit transform, exactly
            assert np.abs(got - eight).max() < 1e-3


def test_a_16bit_cmyk_tiff_that_cannot_keep_16_bits_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(mio, "_cmyk16_low", lambda *a, **k: None)
    path = tmp_path / "c16.tif"
    path.write_bytes(_cmyk16_tiff(_cmyk16()))
    ph = mio.load_photo(path)
    assert ph.bit_depth == 8 and ph.info["source_bit_depth"] == 16
    assert any("8 bits per channel" in w for w in ph.info["warnings"])


def test_the_cmyk_low_byte_rawmodes_are_the_other_byte_order():
    assert mio._CMYK16_SWAP["CMYK;16N"] == ("CMYK;16B" if sys.byteorder == "little"
                                            else "CMYK;16L")


# ============================================================ 5. an unusable resolution


def _exif_300dpi() -> bytes:
    ex = Image.Exif()
    ex[0x010F] = "Cam"  # Make
    ex[0x0112] = 6  # Orientation
    ex[0x011A] = 300.0
    ex[0x011B] = 300.0
    ex[0x0128] = 2  # inches
    return b"Exif\x00\x00" + ex.tobytes()


_ABSURD = [(float("nan"), float("nan")), (float("inf"), float("inf")), (0.0, 0.0),
           (-3.0, 72.0), (1e12, 1e12), (4.5e6 + 0.5, 300.0)]


@pytest.mark.parametrize("dpi", _ABSURD, ids=["nan", "inf", "zero", "negative", "huge",
                                              "over-rational"])
def test_clean_exif_keeps_the_exif_when_the_resolution_is_unusable(dpi):
    """Before: None (the whole EXIF dropped, silently) or OverflowError (inf)."""
    warnings: list[str] = []
    out = mio.clean_exif(_exif_300dpi(), 40, 30, dpi, warnings)
    assert out is not None and len(warnings) == 1 and "not a usable value" in warnings[0]
    ex = Image.Exif()
    ex.load(out[6:])
    assert ex[0x010F] == "Cam" and ex[0x0112] == 1
    assert float(ex[0x011A]) == 300.0 and float(ex[0x011B]) == 300.0  # its own, kept
    assert mio.clean_exif(_exif_300dpi(), dpi=(600.0, 600.0)) is not None  # usable: as before


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff", "webp"])
@pytest.mark.parametrize("dpi", _ABSURD[:2] + _ABSURD[4:5], ids=["nan", "inf", "huge"])
def test_a_photo_with_an_unusable_resolution_is_saved_with_its_exif_and_a_note(tmp_path, fmt,
                                                                                dpi):
    """Before: SaveFailed ("could not encode the image") or OverflowError, or no EXIF."""
    px = np.full((30, 40, 3), 0.5, np.float32)
    like = mio.Photo(path=tmp_path / "x.jpg", pixels=px, exif=_exif_300dpi(), dpi=dpi,
                     format="JPEG")
    notes: list[str] = []
    out = mio.save_photo(px, tmp_path / "res", like=like, notes=notes,
                         options=OutputOptions(format=fmt))
    assert sum("not a usable value" in n for n in notes) == 1, notes
    with Image.open(out) as im:
        assert im.getexif().get(0x010F) == "Cam"


def test_a_jpeg_header_never_wraps_a_resolution_over_65535_dpi(tmp_path):
    """JFIF's density is 16-bit: Pillow wrote 70000 dpi as 4464."""
    px = np.full((30, 40, 3), 0.5, np.float32)
    like = mio.Photo(path=tmp_path / "x.tif", pixels=px, exif=_exif_300dpi(),
                     dpi=(70000.0, 70000.0), format="TIFF")
    notes: list[str] = []
    out = mio.save_photo(px, tmp_path / "res.jpg", like=like, notes=notes)
    with Image.open(out) as im:
        assert im.info.get("dpi") in (None, (70000.0, 70000.0))  # (from the EXIF)
        assert float(im.getexif()[0x011A]) == 70000.0
    assert any("65535" in n for n in notes)
