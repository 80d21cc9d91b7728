"""Session 14: 8-bit photos with a linear profile encoded for the models like 16-bit ones,
``keep_grey`` a slab at a time (in place in the pipeline), 16-bit grey + alpha TIFF written as
grey + alpha and read by Mend itself (Pillow cannot open it).

Profiles are the hand-written ones of test_colour / test_imageio_s13; every file is made here
(the 16-bit grey + alpha TIFFs by a small writer below, independent of Mend's); one check reads
a real photo from ../shared/images and skips without it."""
from __future__ import annotations

import ctypes
import ctypes.util
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import imageio as mio
from engine import pipeline
from engine.api import Degradation, JobRequest, OutputOptions, Plan, Step
from engine.errors import BadImage
from engine.pipeline import Engine
from engine.restore.classical import luminance
from tests.engine.test_colour import LINEAR, _read
from tests.engine.test_grey_s13 import _grey16, _iccp, _png16
from tests.engine.test_imageio_s13 import LINEAR_2020, _chain_scene, _eotf, _lab, _oetf

SHARED = Path(__file__).resolve().parents[3] / "shared" / "images"
ASTRONAUT = "clean/scikit-image__skimage__data__astronaut.png"


def _levels(h: int = 40, w: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 RGB with every level (the first 256 values of each channel) and noise."""
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)
    for c in range(3):
        a[..., c].reshape(-1)[:256] = np.arange(256, dtype=np.uint8)
    return a


def _save8(path: Path, a: np.ndarray, icc: bytes | None) -> Path:
    extra = {"quality": 100} if path.suffix == ".jpg" else {}
    Image.fromarray(a).save(path, icc_profile=icc, **extra)
    return path


# ============================================================ 1. 8-bit photos, linear profile


@pytest.mark.parametrize("ext", ["png", "tif", "jpg"])
@pytest.mark.parametrize("icc", [LINEAR, LINEAR_2020], ids=["linear-srgb", "linear-rec2020"])
def test_an_8bit_linear_photo_reaches_the_models_encoded_with_the_srgb_curve(tmp_path, ext, icc):
    """Before: an 8-bit photo's linear levels went to the models as they were (a 16-bit one's
    were encoded): its shadows were a few near-black values to them."""
    src = _save8(tmp_path / f"src.{ext}", _levels(), icc)
    with Image.open(src) as im:
        stored = np.asarray(im.convert("RGB"))  # (a JPEG: its decoded values)
    ph = mio.load_photo(src)
    assert ph.bit_depth == 8 and ph.linear_icc == icc and "linear_encoded" in ph.info
    assert np.abs(ph.pixels - _oetf(stored / 255.0)).max() < 1e-6
    # ``icc_profile`` describes the pixels: the photo's primaries with the sRGB curve
    tags, own = mio._icc_tags(ph.icc_profile), mio._icc_tags(icc)
    assert all(tags[s][:20] == own[s][:20] for s in (b"rXYZ", b"gXYZ", b"bXYZ"))
    assert mio._trc_gamma(tags[b"gTRC"]) is None
    # the viewer's and the thumbnails' path: the stored values with the photo's own profile
    assert mio.source_profile(src) == icc
    if ext == "jpg":
        assert np.array_equal(mio.load_jpeg_rgb8(src), stored)


def test_an_8bit_result_keeps_the_look_with_the_profile_saying_so(tmp_path):
    """8 bits of sRGB-curve values with a profile saying so (the photo's primaries): the
    source's colours to that curve's 8-bit steps (mean dE 0.21, max 0.62 here), a note saying
    why; 16 bits asked for: the photo's own profile and its very levels."""
    a = _levels()
    ph = mio.load_photo(_save8(tmp_path / "src.png", a, LINEAR))
    notes: list[str] = []
    rgb, ricc, bits = _read(mio.save_photo(ph.pixels, tmp_path / "r8", like=ph, notes=notes))
    assert bits == 8 and ricc == ph.icc_profile != LINEAR
    assert any("linear tone curve" in n for n in notes)
    # the colours (both sRGB primaries): Lab of the source's linear levels against the
    # result's values through its curve
    e = np.sqrt(((_lab(a / 255.0) - _lab(_eotf(rgb))) ** 2).sum(-1))
    assert float(e.mean()) < 0.3 and float(e.max()) < 1.0, (float(e.mean()), float(e.max()))
    rgb16, ricc16, bits16 = _read(mio.save_photo(ph.pixels, tmp_path / "r16", like=ph,
                                                 options=OutputOptions(bit_depth=16)))
    assert bits16 == 16 and ricc16 == LINEAR
    assert np.array_equal(np.round(rgb16 * 65535).astype(np.int64), a.astype(np.int64) * 257)


def _chain_error(tmp_path: Path, clean: np.ndarray) -> dict[str, float]:
    """Mean dE (Lab) against ``clean`` of the built-in denoise + sharpen chain's results for
    the same noisy photo stored as 8-bit linear (linear sRGB profile) and 8-bit sRGB PNG."""
    noisy = np.clip(clean + np.random.default_rng(1).normal(0, 6 / 255, clean.shape), 0, 1)
    plan = Plan(Degradation.A, "builtin", (Step("denoise_builtin", {"sigma": 6.0}),
                                           Step("sharpen_builtin")))
    err = {}
    for kind, px, icc in (("linear", _eotf(noisy), LINEAR), ("srgb", noisy, None)):
        src = _save8(tmp_path / f"{kind}.png", np.round(px * 255).astype(np.uint8), icc)
        res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path / kind),
                                           plan=plan, guard=False))
        rgb, ricc, bits = _read(res.output)
        assert bits == 8 and ricc == (mio.load_photo(src).icc_profile if icc else None)
        e = np.sqrt(((_lab(_eotf(rgb)) - _lab(_eotf(clean))) ** 2).sum(-1))[8:-8, 8:-8]
        err[kind] = float(e.mean())
    return err


def test_an_8bit_linear_photo_through_the_builtin_chain_ends_as_close_as_an_srgb_one(tmp_path):
    """Before: mean dE 7.07 (linear) against 4.43 (sRGB) on this scene; now 4.52 / 4.43."""
    err = _chain_error(tmp_path, _chain_scene())
    assert err["linear"] - err["srgb"] < 0.4, err


def test_a_real_photo_stored_8bit_linear_through_the_builtin_chain(tmp_path):
    """A crop of a real photo: before 4.22 (linear) against 3.39 (sRGB); now 3.51 / 3.39."""
    p = SHARED / ASTRONAUT
    if not p.is_file():
        pytest.skip(f"{ASTRONAUT} not found in ../shared/images")
    with Image.open(p) as im:
        clean = np.asarray(im.convert("RGB"), dtype=np.float64)[64:256, 128:384] / 255
    err = _chain_error(tmp_path, clean)
    assert err["linear"] - err["srgb"] < 0.4, err


# ============================================================ 2. keep_grey in slabs


def _grey_and_tinted(h: int, w: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(5).random((h, w), dtype=np.float32)
    source = np.repeat(g[..., None], 3, axis=2)
    tinted = source * np.array([1.01, 1.0, 0.98], np.float32)
    return source, tinted.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keep_grey_in_slabs_gives_the_whole_image_values(monkeypatch, dtype):
    source, tinted = _grey_and_tinted(53, 37, dtype)
    want = np.repeat(luminance(tinted)[..., None], 3, axis=2)  # the formula, whole
    monkeypatch.setattr(pipeline, "_GREY_SLAB", 37 * 4)  # 4 rows a slab, a short last one
    got = pipeline.keep_grey(source, tinted)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert not np.array_equal(tinted, want)  # the step's result left as it was
    own = tinted.copy()
    got = pipeline.keep_grey(source, own, in_place=True)
    if dtype == np.float32:
        assert got is own and np.array_equal(own, want)
    else:  # (not float32: a new array)
        assert got is not own and np.array_equal(got, want)
    # a grey check that stops in a later slab: tinted in its last row only
    late = source.copy()
    late[-1, 0, 0] += np.float32(0.01)
    assert not np.array_equal(pipeline.keep_grey(source, late), late)
    assert pipeline.keep_grey(late, source) is source  # a source tinted in its last row


def test_keep_grey_in_place_never_writes_into_the_source_or_a_read_only_array():
    source, tinted = _grey_and_tinted(20, 30)
    both = np.concatenate([source, tinted], axis=1)  # the source is part of the image
    before = both.copy()
    out = pipeline.keep_grey(both[:, :30], both, in_place=True)
    assert out is not both and np.array_equal(both, before)
    frozen = tinted.copy()
    frozen.flags.writeable = False
    out = pipeline.keep_grey(source, frozen, in_place=True)
    assert out is not frozen and np.array_equal(frozen, tinted)


def test_keep_grey_memory_is_bounded():
    """24 MP (measured, tracemalloc): peak 366 MiB and 0.7-1.4 s before (a full-size luma and
    its three-channel copy); 277 MiB (the result) as a new array, 2 MiB and ~0.3 s in place.
    Here 6 MP (72 MB of float32): a slab at a time, the result written where it goes."""
    source, tinted = _grey_and_tinted(2000, 3000)
    tracemalloc.start()
    try:
        out = pipeline.keep_grey(source, tinted)
        copy_peak = tracemalloc.get_traced_memory()[1]
        del out
        tracemalloc.reset_peak()
        pipeline.keep_grey(source, tinted, in_place=True)
        own_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    mib = 1 << 20
    assert copy_peak < tinted.nbytes + 8 * mib, copy_peak / mib  # before: + a third of it
    assert own_peak < 8 * mib, own_peak / mib


# ============================================================ 3. 16-bit grey + alpha TIFF


def _la16_tiff(g: np.ndarray, a: np.ndarray, *, bo: str = "<", compression: int = 1,
               predictor: int = 1, planar: int = 1, photometric: int = 1, extra: int = 2,
               rows: int = 7, orientation: int = 1, icc: bytes | None = None,
               xmp: bytes | None = None, tiled: bool = False) -> bytes:
    """A 16-bit grey + alpha TIFF as libtiff lays it out: strips of ``rows`` rows (the last
    one shorter), chunky (planar 1) or one plane after the other (2); WhiteIsZero
    (``photometric`` 0) and associated alpha (``extra`` 1) stored as the TIFF spec says."""
    h, w = g.shape
    grey = (65535 - g) if photometric == 0 else g
    if extra == 1:
        grey = np.round(grey.astype(np.float64) * a / 65535)
    planes = [grey.astype(np.uint16), a.astype(np.uint16)]
    px = np.stack(planes, axis=0 if planar == 2 else 2)
    strips = []
    for plane in ([px[0], px[1]] if planar == 2 else [px]):
        for y in range(0, h, rows):
            s = plane[y:y + rows].astype(np.dtype(bo + "u2"))
            if predictor == 2:
                s[:, 1:] = s[:, 1:] - plane[y:y + rows, :-1]  # (wraps modulo 2^16)
            data = s.tobytes()
            strips.append(zlib.compress(data) if compression in (8, 32946) else data)
    entries = {256: (4, [w]), 257: (4, [h]), 258: (3, [16, 16]), 259: (3, [compression]),
               262: (3, [photometric]), 273: (4, [0] * len(strips)), 274: (3, [orientation]),
               277: (3, [2]), 278: (4, [rows]), 279: (4, [len(s) for s in strips]),
               284: (3, [planar]), 317: (3, [predictor]), 338: (3, [extra]),
               339: (3, [1, 1])}
    if tiled:  # (tile tags added; the strip tags stay, as some writers leave them)
        entries[322], entries[323] = (4, [16]), (4, [16])
    blobs = {tag: struct.pack(bo + {3: "H", 4: "I"}[typ] * len(v), *v)
             for tag, (typ, v) in entries.items()}
    for tag, blob in ((34675, icc), (700, xmp)):
        if blob:
            entries[tag] = (7 if tag == 34675 else 1, [])
            blobs[tag] = blob
    n = len(entries)
    extra_at = 8 + 2 + 12 * n + 4
    extra_len = sum(len(b) + (len(b) & 1) for b in blobs.values() if len(b) > 4)
    offsets, pos = [], extra_at + extra_len
    for s in strips:
        offsets.append(pos)
        pos += len(s)
    blobs[273] = struct.pack(bo + "I" * len(offsets), *offsets)
    table, out_of_line = bytearray(struct.pack(bo + "H", n)), bytearray()
    for tag in sorted(entries):
        typ, b = entries[tag][0], blobs[tag]
        count = len(b) if typ in (1, 7) else len(b) // (2 if typ == 3 else 4)
        if len(b) <= 4:
            field = b + b"\0" * (4 - len(b))
        else:
            field = struct.pack(bo + "I", extra_at + len(out_of_line))
            out_of_line += b + b"\0" * (len(b) & 1)
        table += struct.pack(bo + "HHI", tag, typ, count) + field
    table += b"\0\0\0\0"
    head = (b"II*\0" if bo == "<" else b"MM\0*") + struct.pack(bo + "I", 8)
    return bytes(head + table + out_of_line) + b"".join(strips)


def _ifd0(path: Path) -> dict[int, tuple[int, ...] | bytes]:
    """IFD0 of a TIFF: SHORT/LONG tags as tuples, others as bytes."""
    data = path.read_bytes()
    bo = "<" if data[:2] == b"II" else ">"
    at = struct.unpack_from(bo + "I", data, 4)[0]
    out: dict[int, tuple[int, ...] | bytes] = {}
    for i in range(struct.unpack_from(bo + "H", data, at)[0]):
        tag, typ, count = struct.unpack_from(bo + "HHI", data, at + 2 + 12 * i)
        size = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1}.get(typ, 1) * count
        voff = at + 2 + 12 * i + 8
        if size > 4:
            voff = struct.unpack_from(bo + "I", data, voff)[0]
        raw = data[voff:voff + size]
        out[tag] = struct.unpack(bo + {3: "H", 4: "I"}[typ] * count, raw) \
            if typ in (3, 4) else raw
    return out


def _grey_alpha(h: int = 37, w: int = 53) -> tuple[np.ndarray, np.ndarray]:
    return _grey16(h, w), _grey16(h, w, seed=2)


@pytest.mark.parametrize("bo,compression,predictor,planar", [
    ("<", 1, 1, 1), (">", 8, 2, 1), ("<", 32946, 2, 2), (">", 1, 1, 2), ("<", 8, 1, 2)])
def test_a_16bit_grey_alpha_tiff_is_read_at_16_bits_with_its_alpha(tmp_path, bo, compression,
                                                                   predictor, planar):
    """Before: "not a photo format Mend can read" (Pillow cannot open it; OpenCV reads 8-bit
    grey without the alpha)."""
    g, a = _grey_alpha()
    path = tmp_path / "la16.tif"
    path.write_bytes(_la16_tiff(g, a, bo=bo, compression=compression, predictor=predictor,
                                planar=planar, xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"))
    ph = mio.load_photo(path)
    assert ph.grey and ph.bit_depth == 16 and ph.format == "TIFF" and ph.alpha is not None
    assert np.array_equal(mio._quantise(ph.pixels, 16), np.repeat(g[..., None], 3, axis=2))
    assert np.array_equal(mio._quantise(ph.alpha, 16), a)
    assert ph.xmp is not None and b"xmpmeta" in ph.xmp
    assert mio.image_size(path) == (37, 53)
    small = mio.load_preview(path, 20)
    assert small.shape == (14, 20, 3) and np.array_equal(small[..., 0], small[..., 2])


def test_white_is_zero_associated_alpha_and_orientation(tmp_path):
    g, a = _grey_alpha()
    path = tmp_path / "odd.tif"
    path.write_bytes(_la16_tiff(g, a, photometric=0, orientation=6))
    ph = mio.load_photo(path)
    assert np.array_equal(mio._quantise(ph.pixels[..., 0], 16), np.rot90(g, -1))  # clockwise
    assert np.array_equal(mio._quantise(ph.alpha, 16), np.rot90(a, -1))
    assert mio.image_size(path) == (53, 37)
    # associated (premultiplied) alpha: the grey divided back out (coarse where faint, as in
    # any such file: kept opaque enough here to compare)
    a = np.maximum(a, 32768).astype(np.uint16)
    path.write_bytes(_la16_tiff(g, a, extra=1))
    ph = mio.load_photo(path)
    grey = mio._quantise(ph.pixels[..., 0], 16).astype(np.int64)
    assert np.abs(grey - g).max() <= 2 and np.array_equal(mio._quantise(ph.alpha, 16), a)
    # ExtraSamples 0 (unspecified): a second channel that is not transparency
    path.write_bytes(_la16_tiff(g, a, extra=0))
    ph = mio.load_photo(path)
    assert ph.alpha is None and np.array_equal(mio._quantise(ph.pixels[..., 0], 16), g)


@pytest.mark.parametrize("kind,words", [("lzw", "compression 5"), ("tiled", "tiled"),
                                        ("cut", "damaged")])
def test_what_mend_does_not_decode_is_refused_saying_why(tmp_path, kind, words):
    g, a = _grey_alpha()
    data = _la16_tiff(g, a, compression=5 if kind == "lzw" else 8, tiled=kind == "tiled")
    if kind == "cut":
        data = data[:-40]  # the last strip cut short
    path = tmp_path / "x.tif"  # (not named after what the message should say)
    path.write_bytes(data)
    with pytest.raises(BadImage, match=words):
        mio.load_photo(path)


def test_a_16bit_grey_alpha_result_is_a_16bit_grey_alpha_tiff(tmp_path):
    """Before: written as 16-bit RGBA (three equal channels), with no grey profile."""
    g, a = _grey_alpha()
    icc = mio._grey_icc(2.2)
    ph = mio.load_photo(_png16(tmp_path / "la16.png", np.dstack([g, a]), _iccp(icc)))
    out = mio.save_photo(ph.pixels, tmp_path / "r.tif", like=ph, alpha=ph.alpha,
                         record={"software": "Mend (test)"})
    tags = _ifd0(out)
    assert tags[277] == (2,) and tags[258] == (16, 16) and tags[262] == (1,)
    assert tags[338] == (2,) and tags[34675] == icc  # unassociated alpha, its grey profile
    back = mio.load_photo(out)
    assert back.grey and back.bit_depth == 16 and back.grey_icc == icc
    assert np.array_equal(back.pixels, ph.pixels) and np.array_equal(back.alpha, ph.alpha)
    assert mio.read_record(out) == {"software": "Mend (test)"}
    assert mio.mend_output_kind(out) == "result"  # (a folder run skips it)


def _libtiff():
    name = ctypes.util.find_library("tiff")
    if name is None:
        pytest.skip("libtiff not found: the cross-check with another reader is skipped")
    lib = ctypes.CDLL(name)
    lib.TIFFOpen.restype = ctypes.c_void_p
    lib.TIFFOpen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    lib.TIFFReadScanline.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32,
                                     ctypes.c_uint16]
    lib.TIFFClose.argtypes = [ctypes.c_void_p]
    return lib


def test_libtiff_reads_the_grey_alpha_result_as_written(tmp_path):
    g, a = _grey_alpha()
    ph = mio.load_photo(_png16(tmp_path / "la16.png", np.dstack([g, a])))
    out = mio.save_photo(ph.pixels, tmp_path / "r.tif", like=ph, alpha=ph.alpha)
    assert _ifd0(out)[277] == (2,)  # (the rows read below hold two samples a pixel)
    lib = _libtiff()
    t = lib.TIFFOpen(str(out).encode(), b"r")
    assert t
    try:
        rows = np.empty((37, 53, 2), np.uint16)
        for y in range(37):
            assert lib.TIFFReadScanline(t, rows[y].ctypes.data, y, 0) == 1
    finally:
        lib.TIFFClose(t)
    assert np.array_equal(rows[..., 0], g) and np.array_equal(rows[..., 1], a)


def test_a_16bit_grey_alpha_photo_through_the_pipeline_to_tiff(tmp_path):
    g, a = _grey_alpha(48, 64)
    src = _png16(tmp_path / "la16.png", np.dstack([g, a]))
    plan = Plan(Degradation.A, "builtin", (Step("denoise_builtin", {"sigma": 4.0}),))
    res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path / "o",
                                                          format="tiff"),
                                       plan=plan, guard=False))
    tags = _ifd0(res.output)
    assert tags[277] == (2,) and tags[258] == (16, 16)
    back = mio.load_photo(res.output)
    assert back.grey and back.bit_depth == 16
    assert np.array_equal(mio._quantise(back.alpha, 16), a)
    assert mio.mend_output_kind(res.output) == "result"
