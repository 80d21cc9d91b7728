"""Photo I/O defects closed in session 12: TIFFs over 2/4 GB (a 16-bit or float one is decoded
from its path, not read whole and refused; a TIFF result over 4 GB is refused with a clear
message before anything is written), libtiff's lines (through OpenCV's logger and Pillow's
libtiff) kept off stderr and made the photo's warnings, the copy fallback of an unlinkable
O_TMPFILE, and a CMYK photo converted through its embedded CMYK profile in the preview too.

Files over 2 GB are sparse: their pixels sit after a hole, so they take a few KB of disk."""
from __future__ import annotations

import errno
import io
import os
import struct
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from engine import imageio as mio
from engine.api import OutputOptions
from engine.errors import BadImage, SaveFailed

GiB = 1 << 30


def _tiff(path: Path, px: np.ndarray, *, data_at: int = 0, big: bool = False,
          extra: dict | None = None, strip_bytes: int | None = None) -> Path:
    """A little-endian, one-strip, uncompressed RGB TIFF (BigTIFF with ``big``) of ``px``
    (uint16 or float32), its pixels at ``data_at`` when that is past the header (the file is
    then sparse); ``extra``: more tags, {tag: (type, values)}; ``strip_bytes``: the
    StripByteCounts to write instead of the right one."""
    h, w, c = px.shape
    raw = px.astype(px.dtype.newbyteorder("<")).tobytes()
    off_type, slot = (16, 8) if big else (4, 4)  # LONG8 / LONG; bytes a value holds in place
    fmt = {2: "s", 3: "H", 4: "I", 16: "Q"}
    tags = {256: (4, [w]), 257: (4, [h]), 258: (3, [px.dtype.itemsize * 8] * c), 259: (3, [1]),
            262: (3, [2]), 273: (off_type, [0]), 277: (3, [c]), 278: (4, [h]),
            279: (off_type, [len(raw) if strip_bytes is None else strip_bytes]),
            284: (3, [1]), 339: (3, [3 if px.dtype.kind == "f" else 1] * c), **(extra or {})}
    head = 16 if big else 8
    ifd_size = (8 + 20 * len(tags) + 8) if big else (2 + 12 * len(tags) + 4)
    payloads = {t: (v if typ == 2 else struct.pack("<" + fmt[typ] * len(v), *v))
                for t, (typ, v) in tags.items()}
    over = sum(len(p) + (len(p) & 1) for p in payloads.values() if len(p) > slot)
    start = max(data_at, head + ifd_size + over)
    payloads[273] = struct.pack("<" + fmt[off_type], start)
    table, overflow = bytearray(), bytearray()
    table += struct.pack("<Q" if big else "<H", len(tags))
    for t in sorted(tags):
        typ, v = tags[t]
        p = payloads[t]
        count = len(p) if typ == 2 else len(v)
        entry = struct.pack("<HHQ" if big else "<HHI", t, typ, count)
        if len(p) <= slot:
            table += entry + p.ljust(slot, b"\0")
        else:
            where = head + ifd_size + len(overflow)
            table += entry + struct.pack("<Q" if big else "<I", where)
            overflow += p + b"\0" * (len(p) & 1)
    table += bytes(slot)  # no next IFD
    header = (b"II+\0" + struct.pack("<HHQ", 8, 0, head) if big
              else b"II*\0" + struct.pack("<I", head))
    with open(path, "wb") as f:
        f.write(header + table + overflow)
        f.seek(start)
        f.write(raw)
    return path


def _px16(h=32, w=48, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 65535).astype(np.uint16)


def _sparse_or_skip(path: Path) -> None:
    if os.stat(path).st_blocks * 512 > 64 << 20:
        os.remove(path)
        pytest.skip("the temporary folder's filesystem does not make sparse files")


# ============================================================ 1. TIFFs over 2 / 4 GB


@pytest.fixture
def no_whole_file_reads(monkeypatch):
    """np.fromfile of anything over 100 MB fails the test: such a file must not be read whole
    (the old path read a 3 GB TIFF into memory for 16 s, then got an error from OpenCV)."""
    real = np.fromfile

    def fromfile(file, *a, **kw):
        assert os.path.getsize(file) < 100 << 20, f"{file} read whole"
        return real(file, *a, **kw)

    monkeypatch.setattr(mio.np, "fromfile", fromfile)


@pytest.mark.parametrize("where,big", [(3 * GiB, False), (5 * GiB, True)],
                         ids=["3GB-classic", "5GB-BigTIFF"])
def test_a_16bit_tiff_over_2gb_keeps_its_16_bits(tmp_path, capfd, no_whole_file_reads,
                                                  where, big):
    """Before: cv2.imdecode took no buffer over 2^31 - 1 bytes: a 3 GB TIFF gave
    BadImage("... (error: OpenCV(4.14.0) :-1: error: (-5:Bad argument) in function
    'imdecode' ...)"), a 5 GB BigTIFF three libtiff lines on stderr and Pillow's 8 bits,
    silently - after reading the whole file (16 s and 33 s here)."""
    px = _px16()
    path = _tiff(tmp_path / "big.tif", px, data_at=where, big=big)
    _sparse_or_skip(path)
    assert os.path.getsize(path) > where
    capfd.readouterr()
    photo = mio.load_photo(path)
    assert capfd.readouterr().err == ""
    assert photo.bit_depth == 16 and photo.info["decoder"] == "opencv"
    assert photo.info["warnings"] == []
    assert np.array_equal(mio._quantise(photo.pixels, 16), px)
    assert mio.image_size(path) == (32, 48)
    assert mio.load_preview(path, 16).shape == (11, 16, 3)


def test_a_float_tiff_over_2gb_is_decoded(tmp_path, no_whole_file_reads):
    """Before: BadImage "this floating-point TIFF could not be decoded (... or the file is
    damaged)" for a sound file, OpenCV's cv2.error caught."""
    f = np.random.default_rng(1).random((24, 40, 3)).astype(np.float32)
    path = _tiff(tmp_path / "hdr.tif", f, data_at=3 * GiB)
    _sparse_or_skip(path)
    photo = mio.load_photo(path)
    assert photo.bit_depth == 16 and photo.info["source_sample_format"] == "float"
    assert np.abs(photo.pixels - mio._srgb_encode(f.copy())).max() < 1e-6


def test_the_opencv_buffer_limit_is_where_opencv_has_it(tmp_path):
    """cv2.imdecode decodes a buffer of 2^31 - 1 bytes and refuses one of 2^31 (measured with
    OpenCV 4.14): ``_CV2_BUFFER_MAX`` is that size, checked on the running OpenCV."""
    import cv2

    path = _tiff(tmp_path / "edge.tif", _px16(8, 8), data_at=GiB)
    _sparse_or_skip(path)
    results = []
    for size in (mio._CV2_BUFFER_MAX, mio._CV2_BUFFER_MAX + 1):
        with open(path, "r+b") as f:
            f.truncate(size)
        mm = np.memmap(path, dtype=np.uint8, mode="r")  # no read of the hole
        try:
            img = cv2.imdecode(mm, cv2.IMREAD_UNCHANGED)
            results.append(img is not None and img.shape == (8, 8, 3))
        except cv2.error:
            results.append(False)
        del mm
    assert results == [True, False]


class _Big(bytes):
    """Compressed strip data said to be 1.5 GB long: the sizes a TIFF result over 4 GB has,
    laid out by the real writer without the memory."""

    def __len__(self) -> int:
        return 3 * GiB // 2


def _huge_strips(monkeypatch) -> list[int]:
    calls: list[int] = []

    def compress(data, level=-1):
        calls.append(1)
        return _Big(zlib.compress(data, level))

    monkeypatch.setattr(mio, "zlib", types.SimpleNamespace(compress=compress, crc32=zlib.crc32))
    return calls


def _exif_with_ifd() -> bytes:
    ex = Image.Exif()
    ex[0x010F] = "Camera"
    ex.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"
    blob = b"Exif\0\0" + ex.tobytes()
    assert mio._exif_block(blob) is not None  # the source's EXIF goes first, as it is
    return blob


@pytest.mark.parametrize("exif", [False, True], ids=["laid-out", "source-exif-first"])
def test_a_tiff_result_over_4gb_is_refused_clearly_before_anything_is_written(
        tmp_path, monkeypatch, exif):
    """Before: SaveFailed("...: could not encode the image (error: 'I' format requires 0 <=
    number <= 4294967295)"), a raw struct.error from packing the fourth strip's offset, after
    every strip was compressed."""
    calls = _huge_strips(monkeypatch)
    px = np.random.default_rng(2).random((850, 1024, 3)).astype(np.float32)  # 10 strips
    like = mio.Photo(path=tmp_path / "src.tif", pixels=px, bit_depth=8, format="TIFF",
                     exif=_exif_with_ifd() if exif else None)
    out = tmp_path / "out"
    with pytest.raises(SaveFailed) as e:
        mio.save_photo(px, out / "r.tif", like=like)
    msg = str(e.value)
    assert "too large for a TIFF" in msg and "4 GB" in msg and "r.tif" in msg
    assert "struct" not in msg and "error:" not in msg
    assert len(calls) == 3  # stopped as soon as the data passed 4 GB
    assert not out.exists() or list(out.iterdir()) == []


def test_a_tiff_result_whose_header_takes_it_over_4gb_is_refused(tmp_path, monkeypatch):
    """The image data alone fits, with the header and metadata it does not."""
    class AlmostAll(bytes):
        def __len__(self) -> int:
            return (1 << 32) - 64

    monkeypatch.setattr(mio, "zlib", types.SimpleNamespace(
        compress=lambda d, level=-1: AlmostAll(zlib.compress(d, level)), crc32=zlib.crc32))
    px = np.random.default_rng(3).random((8, 8, 3)).astype(np.float32)  # one strip
    with pytest.raises(SaveFailed, match="too large for a TIFF"):
        mio.save_photo(px, tmp_path / "r.tif", options=OutputOptions(format="tiff"))
    assert list(tmp_path.iterdir()) == []


# ============================================================ 2. libtiff's lines off stderr


def test_libtiff_warnings_of_a_16bit_tiff_are_recorded_not_printed(tmp_path, capfd):
    """A StripByteCounts of 0: libtiff (inside OpenCV) warns and works it out. Before, OpenCV's
    logger printed "[ WARN:0@0.012] global grfmt_tiff.cpp:122 TIFF_Warning TIFFReadDirectory:
    Bogus "StripByteCounts" field, ..." on stderr and the photo had no warning."""
    px = _px16()
    path = _tiff(tmp_path / "bogus.tif", px, strip_bytes=0)
    capfd.readouterr()
    photo = mio.load_photo(path)
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    assert photo.bit_depth == 16 and np.array_equal(mio._quantise(photo.pixels, 16), px)
    assert len(photo.info["warnings"]) == 1
    assert 'libtiff: TIFFReadDirectory: Bogus "StripByteCounts" field' in \
        photo.info["warnings"][0]


def test_a_private_tag_libtiff_does_not_know_is_neither_printed_nor_a_warning(tmp_path, capfd):
    """Before: "[ WARN:...] ... TIFF_Warning TIFFReadDirectory: Unknown field with tag 65000
    (0xfde8) encountered" on stderr for every 16-bit TIFF with a private tag."""
    px = _px16()
    path = _tiff(tmp_path / "private.tif", px, extra={65000: (4, [7])})
    capfd.readouterr()
    photo = mio.load_photo(path)
    assert capfd.readouterr().err == ""
    assert photo.info["warnings"] == [] and photo.bit_depth == 16


def _cut_tiff(path: Path, depth: int) -> Path:
    """Mend's own deflate TIFF (IFD first), cut two thirds of the way into its strips."""
    a = (np.random.default_rng(4).random((64, 80, 3)) * 255).astype(np.uint8)
    a = a if depth == 8 else a.astype(np.uint16) * 257
    t = mio._encode_tiff(a, None, mio._Meta(None, None, None, None), OutputOptions())
    path.write_bytes(t[:len(t) * 2 // 3])
    return path


@pytest.mark.parametrize("depth", [8, 16])
def test_a_damaged_compressed_tiff_prints_nothing_and_its_error_names_libtiffs_reason(
        tmp_path, capfd, depth):
    """8-bit: Pillow's libtiff printed "TIFFFillStrip: Read error on strip 0; got 10186 bytes,
    expected 15371." on stderr; 16-bit: OpenCV's three log lines (and a blank one) before that.
    Both were refused as "(OSError: decoder error -2)"."""
    path = _cut_tiff(tmp_path / f"cut{depth}.tif", depth)
    capfd.readouterr()
    with pytest.raises(BadImage) as e:
        mio.load_photo(path)
    with pytest.raises(BadImage):
        mio.load_preview(path, 32)
    assert capfd.readouterr().err == ""
    assert "libtiff: TIFFFillStrip: Read error on strip 0" in e.value.reason
    assert "decoder error" not in e.value.reason


def test_a_tiff_libtiff_refuses_to_decode_prints_nothing_and_says_why(tmp_path, capfd):
    """Predictor 0 (not a predictor): Pillow's libtiff printed "PredictorSetup: "Predictor"
    value 0 not supported." on stderr and the photo was refused as "(OSError: decoder error
    -2)"."""
    a = (np.random.default_rng(6).random((64, 80, 3)) * 255).astype(np.uint8)
    t = bytearray(mio._encode_tiff(a, None, mio._Meta(None, None, None, None), OutputOptions()))
    for i in range(struct.unpack_from("<H", t, 8)[0]):
        if struct.unpack_from("<H", t, 10 + 12 * i)[0] == 317:  # Predictor: 2 -> 0
            struct.pack_into("<H", t, 10 + 12 * i + 8, 0)
    path = tmp_path / "pred0.tif"
    path.write_bytes(bytes(t))
    capfd.readouterr()
    with pytest.raises(BadImage) as e:
        mio.load_photo(path)
    assert capfd.readouterr().err == ""
    assert e.value.reason == ('the file is damaged or unsupported (libtiff: PredictorSetup: '
                              '"Predictor" value 0 not supported)')


@pytest.mark.parametrize("line,want", [
    (b"[ WARN:0@0.012] global grfmt_tiff.cpp:122 TIFF_Warning TIFFReadDirectory: Bogus x",
     "libtiff: TIFFReadDirectory: Bogus x"),
    (b"[ERROR:0@0.013] global grfmt_tiff.cpp:116 TIFF_Error Using code not yet in table",
     "libtiff: Using code not yet in table"),
    # the form of OpenCV 4.5's logger
    ((b"[ WARN:0] global /io/opencv/modules/imgcodecs/src/grfmt_tiff.cpp (122) TIFF_Warning "
      b"TIFFFetchNormalTag: odd"), "libtiff: TIFFFetchNormalTag: odd"),
    (b"[ WARN:0@0.013] global grfmt_tiff.cpp:1033 readData OpenCV TIFF(line 1033): failed",
     None),
    (b"[ERROR:0@0.014] global loadsave.cpp:1409 imdecode_ imdecode_(''): can't read data",
     None),
    ((b"[ WARN:0@0.1] global grfmt_tiff.cpp:122 TIFF_Warning TIFFReadDirectory: Unknown field "
      b"with tag 65000 (0xfde8) encountered"), None),
    (b"ZIPDecode: Decoding error at scanline 0, invalid distance too far back.",
     "libtiff: ZIPDecode: Decoding error at scanline 0, invalid distance too far back"),
    (b"tempfile.tif: Using code not yet in table.", "libtiff: Using code not yet in table"),
    (b'MissingRequired: TIFF directory is missing required "StripOffsets" field.',
     'libtiff: MissingRequired: TIFF directory is missing required "StripOffsets" field'),
    (b'PredictorSetup: "Predictor" value 0 not supported.',
     'libtiff: PredictorSetup: "Predictor" value 0 not supported'),
    (b"libpng warning: iCCP: known incorrect sRGB profile",
     "libpng warning: iCCP: known incorrect sRGB profile"),
])
def test_decoder_lines_and_what_the_photo_is_told(line, want):
    assert mio._DECODER_LINE.match(line)
    assert mio._decoder_message(line) == want


def test_other_lines_written_during_a_decode_still_reach_stderr(capfd):
    """What another thread prints meanwhile: a Python exception's or warning's last line, Qt's
    messages, another OpenCV module's log - "Name: message" like libtiff's default handler."""
    lines = [b"UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff",
             b"DeprecationWarning: this is old", b"SystemExit: 2",
             b"QStandardPaths: XDG_RUNTIME_DIR not set", b"TIFF files are fine: a log line",
             b"warning: lower case", b"[ WARN:0@1.0] global dnn.cpp:10 forward some other module"]
    got: list[str] = []
    capfd.readouterr()
    with mio._decoder_messages(got):
        for line in lines:
            os.write(2, line + b"\n")
    assert capfd.readouterr().err == "".join(x.decode() + "\n" for x in lines)
    assert got == []


# ============================================================ 3. O_TMPFILE copy fallback


@pytest.mark.skipif(not mio._USE_O_TMPFILE, reason="no O_TMPFILE on this platform")
@pytest.mark.parametrize("overwrite", [True, False])
def test_an_o_tmpfile_that_cannot_be_linked_is_copied_to_its_name(tmp_path, monkeypatch,
                                                                   overwrite):
    """Without /proc (and without CAP_DAC_READ_SEARCH for linkat's AT_EMPTY_PATH) the unnamed
    file cannot be linked; its data is then copied to a named temp file. The copy read from a
    descriptor opened O_WRONLY: SaveFailed("...: could not write the file (Bad file
    descriptor)") every time."""
    used: list[int] = []
    real = mio._write_tmpfile

    def spy(fd, dest, write, ow):
        used.append(fd)
        return real(fd, dest, write, ow)

    def no_link(fd, dest):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/self/fd")

    monkeypatch.setattr(mio, "_write_tmpfile", spy)
    monkeypatch.setattr(mio, "_link_fd", no_link)
    data = os.urandom(3 << 20)  # more than one chunk of the copy
    (tmp_path / "x.bin").write_bytes(b"old")
    got = mio.atomic_write_bytes(tmp_path / "x.bin", data, overwrite=overwrite)
    assert used, "the O_TMPFILE path was not taken"
    assert got.name == ("x.bin" if overwrite else "x_1.bin")
    assert got.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        (["x.bin"] if overwrite else ["x.bin", "x_1.bin"])


# ============================================================ 4. CMYK with its profile

# sRGB's colourants adapted to D50 (those of the sRGB ICC profile)
_SRGB_D50 = np.array([[0.4360747, 0.3850649, 0.1430804],
                      [0.2225045, 0.7168786, 0.0606169],
                      [0.0139322, 0.0971045, 0.7141733]])


def _gain(c: np.ndarray) -> np.ndarray:
    return 1 - (1 - c) ** 1.6  # dot gain: 50 % coverage prints as 67 %


def _ink_to_linear_rgb(cmyk: np.ndarray) -> np.ndarray:
    """The printing process the profile below describes: each ink (after dot gain) takes its
    share of the light, black takes it from all three."""
    c = _gain(cmyk)
    return (1 - c[..., :3]) * (1 - c[..., 3:4])


def _cmyk_profile(grid: int = 17) -> bytes:
    """An ICC v2 output (prtr) profile, CMYK -> PCS XYZ, of ``_ink_to_linear_rgb`` as an A2B0
    lut16: dot gain in the input curves, the inks in a 17^4 CLUT (534 KB: like a press
    profile's, it takes 9 JPEG APP2 segments). No CMYK profile exists on this machine (no
    .icc/.icm file anywhere) and nothing may be downloaded; Pillow's ImageCms makes only
    sRGB, LAB and XYZ profiles."""
    g = np.linspace(0, 1, grid)
    ink = np.stack(np.meshgrid(g, g, g, g, indexing="ij"), -1)  # C slowest, K fastest
    xyz = ((1 - ink[..., :3]) * (1 - ink[..., 3:4])) @ _SRGB_D50.T
    clut = np.round(np.clip(xyz * 32768, 0, 65535)).astype(">u2")  # u1Fixed15
    curve = np.round(_gain(np.linspace(0, 1, 4096)) * 65535).astype(">u2").tobytes()
    line = np.array([0, 65535], ">u2").tobytes()
    ident = b"".join(mio._s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    mft2 = (b"mft2\0\0\0\0" + bytes([4, 3, grid, 0]) + ident + struct.pack(">HH", 4096, 2)
            + curve * 4 + clut.tobytes() + line * 3)
    icc = bytearray(mio._icc_build(b"CMYK", "CMYK test press (ink model, dot gain)",
                                   [(b"A2B0", mft2)]))
    icc[12:16] = b"prtr"
    return bytes(icc)


@pytest.fixture(scope="module")
def cmyk_icc() -> bytes:
    icc = _cmyk_profile()
    p = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    assert p.profile.xcolor_space.strip() == "CMYK"
    return icc


def _cmyk_pixels() -> np.ndarray:
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (48, 64, 4)).astype(np.uint8)
    a[:, :8] = (np.arange(48) * 255 // 47)[:, None, None]  # neutral ramps: C=M=Y=K
    a[:4] = 0  # paper white
    return a


def _srgb8(linear: np.ndarray) -> np.ndarray:
    v = np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)
    return v * 255


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_a_cmyk_photo_is_converted_through_its_embedded_profile(tmp_path, cmyk_icc, fmt):
    src = tmp_path / f"press.{fmt.lower()}"
    Image.fromarray(_cmyk_pixels(), "CMYK").save(src, fmt, icc_profile=cmyk_icc,
                                                 **({"quality": 100} if fmt == "JPEG" else {}))
    with Image.open(src) as im:
        assert im.mode == "CMYK" and im.info["icc_profile"] == cmyk_icc
        stored = np.asarray(im)  # the CMYK values as decoded (JPEG: after compression)
        naive = np.asarray(im.convert("RGB")).astype(np.float64)
    want = _srgb8(_ink_to_linear_rgb(stored / 255.0))
    photo = mio.load_photo(src)
    assert photo.info["icc_converted"] == "CMYK profile -> sRGB"
    assert photo.icc_profile is None  # sRGB now: a CMYK profile never rides with RGB pixels
    got = photo.pixels.astype(np.float64) * 255
    # the profile's printing process within its 17-point CLUT's precision (measured: mean
    # 0.48, max 3.72 levels), and nothing like Pillow's conversion without it (17.7 off)
    assert np.abs(got - want).mean() < 1.0 and np.abs(got - want).max() < 5.0
    assert np.abs(naive - want).mean() > 10.0
    # the preview (thumbnails, the browser) shows the same colours: before, it converted
    # without the profile (18.0 levels off on average, 31 at most)
    preview = mio.load_preview(src, 1024).astype(np.int16)
    assert np.abs(preview - mio._quantise(photo.pixels, 8)).max() <= 1
    # the result: these sRGB pixels, no profile (untagged is sRGB)
    out = mio.save_photo(photo.pixels, tmp_path / "res", like=photo,
                         options=OutputOptions(quality=100))
    with Image.open(out) as r:
        assert r.format == fmt and r.mode == "RGB" and not r.info.get("icc_profile")
        res = np.asarray(r).astype(np.int16)
    diff = np.abs(res - mio._quantise(photo.pixels, 8))
    assert diff.max() == 0 if fmt == "TIFF" else diff.mean() < 1.0  # JPEG: its compression


# ============================================================ session 12, second pass:
# one place decides a photo's profile (the UI asked seven private helpers), a SaveFailed
# carrying its errno, the subfolders a walk cannot list handed back (not only logged), the
# float -> integer conversion of a save in slabs, grey profiles applied in previews, and a
# 16-bit photo decoded with 8 bits said so

SHARED = Path(__file__).resolve().parents[3] / "shared" / "images"
WOLF = "lowres_noise_jpeg/Real-ESRGAN__inputs__wolf_gray.jpg"  # a grey JPEG, dot-gain profile


def _shared_or_skip(rel: str) -> Path:
    p = SHARED / rel
    if not p.is_file():
        pytest.skip(f"{rel} not found in ../shared/images")
    return p


def test_source_profile_is_the_profile_load_photo_gives_from_the_header_alone(
        tmp_path, cmyk_icc, monkeypatch):
    from tests.engine.test_colour import P3, _exif, _png_chunk, _png_with

    rgb = np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8)

    def jpg(name: str, a: np.ndarray, mode: str | None = None, **kw) -> Path:
        Image.fromarray(a, mode).save(tmp_path / name, quality=95, **kw)
        return tmp_path / name

    linear = _png_chunk(b"gAMA", struct.pack(">I", 100000))
    adobe_exif = _exif(0xFFFF, b"R03")
    cases = {  # file -> what source_profile says: P3, "made" (a profile Mend makes) or None
        jpg("p3.jpg", rgb, icc_profile=P3): P3,
        jpg("p3_and_exif.jpg", rgb, icc_profile=P3, exif=adobe_exif): P3,  # embedded first
        jpg("camera_adobe.jpg", rgb, exif=adobe_exif): "made",
        _png_with(tmp_path / "linear.png", rgb, linear): "made",
        _png_with(tmp_path / "linear_exif.png", rgb, linear,  # gAMA before EXIF
                  _png_chunk(b"eXIf", adobe_exif[6:])): "made",
        _png_with(tmp_path / "srgb.png", rgb, _png_chunk(b"sRGB", b"\0"), linear): None,
        jpg("grey.jpg", rgb[..., 0], icc_profile=mio._grey_icc(1.8)): None,  # made sRGB
        jpg("cmyk.jpg", np.dstack([rgb, rgb[..., :1]]), "CMYK", icc_profile=cmyk_icc): None,
        jpg("plain.jpg", rgb): None,
    }
    photos = {path: mio.load_photo(path) for path in cases}
    loaded = {path: ph.icc_profile for path, ph in photos.items()}
    for path, want in cases.items():
        if want == "made":
            assert loaded[path] is not None and loaded[path] != P3, path.name
        else:
            assert loaded[path] == want, path.name
    made = {p.name: icc for p, icc in loaded.items() if cases[p] == "made"}
    assert made["linear_exif.png"] == made["linear.png"] != made["camera_adobe.jpg"]
    # the same profiles from the header alone: no pixels decoded
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    for path in cases:
        # (the stored pixels' profile: a linear one's own, ``linear_icc``)
        assert mio.source_profile(path) == (photos[path].linear_icc or loaded[path]), path.name
    assert mio.source_profile(tmp_path / "missing.jpg") is None
    assert mio.source_profile(tmp_path) is None  # a folder


def test_source_profile_of_real_photos_is_load_photos(shared_images):
    """HEIF (an nclx box or an embedded profile), the grey JPEG: what load_photo gives."""
    names = [WOLF, "odd_corrupt/Pillow__Tests__images__hopper_gray.jpg"]
    if mio.heif_supported():
        names += [p.relative_to(shared_images).as_posix()
                  for p in sorted((shared_images / "camera_heic").glob("*"))]
    for rel in names:
        p = _shared_or_skip(rel)
        assert mio.source_profile(p) == mio.load_photo(p).icc_profile, rel


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EIO])
def test_a_save_failure_carries_the_errno_of_its_os_error(code):
    err = mio._save_error(Path("out/x.jpg"), OSError(code, os.strerror(code)))
    assert isinstance(err, SaveFailed) and err.errno == code
    assert str(err).startswith("out/x.jpg: ")


def test_a_batch_stops_on_a_full_disk_from_the_errno_not_the_exception_chain(tmp_path,
                                                                               monkeypatch):
    """engine/cli.py's _stop_reason found the errno by walking __context__ (the SaveFailed is
    raised ``from None``): one wrapper that drops the chain and the batch went on failing."""
    from engine.cli import _stop_reason

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SaveFailed) as got:
        mio.save_photo(np.zeros((4, 4, 3), np.float32), tmp_path / "r.png")
    e = got.value
    assert e.errno == errno.ENOSPC
    e.__context__ = e.__cause__ = None
    assert _stop_reason(e) == "the output folder's disk is full"


def _locked_tree(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """shoot/{a.png, locked/b.png, sub/c.png}, ``locked`` refused as a listing (any user)."""
    shoot = tmp_path / "shoot"
    for rel in ("a.png", "locked/b.png", "sub/c.png"):
        (shoot / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(shoot / rel)
    locked = shoot / "locked"
    real = os.scandir

    def scandir(p="."):
        if Path(p) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        return real(p)

    monkeypatch.setattr(mio.os, "scandir", scandir)
    return shoot, locked


def test_subfolders_the_walk_cannot_list_are_handed_back(tmp_path, monkeypatch, caplog):
    """They were only logged ("skipped folder %s: %s"); the CLI filtered that log record to
    learn of them. A list given to iter_photos / count_subfolder_photos now receives them."""
    import logging

    shoot, locked = _locked_tree(tmp_path, monkeypatch)
    caplog.set_level(logging.DEBUG, logger="engine.imageio")
    unlisted: list[tuple[Path, str]] = []
    got = mio.iter_photos([shoot], recursive=True, unlisted=unlisted)
    assert [p.name for p in got] == ["a.png", "c.png"]
    assert unlisted == [(locked, "Permission denied")]
    counted: list[tuple[Path, str]] = []
    assert mio.count_subfolder_photos(shoot, unlisted=counted) == (1, True)
    assert counted == [(locked, "Permission denied")]
    assert not [r for r in caplog.records if "skipped folder" in r.getMessage()]
    # without a list: logged, as before
    assert mio.iter_photos([shoot], recursive=True) == got
    assert [r.getMessage() for r in caplog.records] == [
        f"skipped folder {locked}: Permission denied"]
    with pytest.raises(BadImage, match="cannot list this folder"):  # the folder given: raised
        mio.iter_photos([locked], unlisted=[])


def _quantise_whole(a: np.ndarray, depth: int) -> np.ndarray:
    """_quantise's float branch as it was: the whole array at once."""
    f = np.nan_to_num(np.asarray(a).astype(np.float32, copy=True), nan=0.0, posinf=1.0,
                      neginf=0.0)
    np.clip(f, 0.0, 1.0, out=f)
    f *= 255.0 if depth == 8 else 65535.0
    f += 0.5
    return f.astype(np.uint8 if depth == 8 else np.uint16)


@pytest.mark.parametrize("depth", [8, 16])
def test_quantising_in_slabs_gives_the_same_values(depth, monkeypatch):
    rng = np.random.default_rng(7)
    a = (rng.standard_normal((301, 203, 3)) * 0.7 + 0.5).astype(np.float32)
    for v in (np.nan, np.inf, -np.inf, 1.0, 0.0, -0.0, 2.0, -1.0, 0.5 / 255, 0.5 / 65535,
              np.nextafter(np.float32(0.5 / 255), np.float32(0)), 1e30, -1e30):
        a.flat[rng.integers(0, a.size, 500)] = v
    monkeypatch.setattr(mio, "_QUANTISE_SLAB", 5000)  # many slabs, a last short one
    with np.errstate(over="ignore"):  # (float16: 1e30 is inf)
        halves = a.astype(np.float16)
    for x in (a, a.astype(np.float64), halves, a[::-1, ::3], a[..., 1], a[:1], a[:0]):
        want, got = _quantise_whole(x, depth), mio._quantise(x, depth)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want), x.shape


@pytest.mark.parametrize("depth", [8, 16])
def test_quantising_a_large_float_photo_allocates_no_full_size_float_copy(depth):
    """60 MP float32 (measured): +2.34 GB at the peak for either depth, now +0.19 GB (8-bit)
    and +0.37 GB (16-bit): the result and one slab. Here (6 MP): 108 MB over the result
    (8-bit; 99 MB 16-bit), now 9.4 MB."""
    import tracemalloc

    a = np.random.default_rng(0).random((1500, 2000, 3), dtype=np.float32)  # 36 MB
    tracemalloc.start()
    try:
        out = mio._quantise(a, depth)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - out.nbytes < 3 * 4 * mio._QUANTISE_SLAB, peak  # ~2.25 slabs of float32
    assert np.array_equal(out, _quantise_whole(a, depth))


def _grey_profile_photos(folder: Path) -> dict[str, Path]:
    """Grey photos tagged with a gamma 1.0 grey profile (far from sRGB's curve): 8-bit JPEG,
    PNG and grey + alpha PNG, 16-bit PNG and TIFF."""
    folder.mkdir(exist_ok=True)
    icc = mio._grey_icc(1.0)
    y, x = np.mgrid[0:48, 0:64]
    g8 = ((x * 4 + y) % 256).astype(np.uint8)
    g16 = (g8.astype(np.uint16) * 257 + (y * 61).astype(np.uint16))
    out = {}
    for name, im in (("g8.jpg", Image.fromarray(g8, "L")), ("g8.png", Image.fromarray(g8, "L")),
                     ("la8.png", Image.merge("LA", [Image.fromarray(g8, "L"),
                                                    Image.new("L", (64, 48), 200)])),
                     ("g16.png", Image.fromarray(g16)), ("g16.tif", Image.fromarray(g16))):
        im.save(folder / name, icc_profile=icc, **({"quality": 95} if name.endswith("jpg")
                                                   else {}))
        out[name] = folder / name
    return out


def test_the_preview_applies_a_grey_profile_as_load_photo_does(tmp_path):
    """The preview (thumbnails, the browser) showed a grey photo's stored values as if they
    were sRGB: the real grey JPEG with a dot-gain profile was 20.89 levels too dark on average
    (35 at most) next to load_photo."""
    for name, path in _grey_profile_photos(tmp_path / "grey").items():
        photo = mio.load_photo(path)
        assert photo.info.get("icc_converted") == "grey profile -> sRGB", name
        want = mio._quantise(photo.pixels, 8).astype(np.int16)
        with Image.open(path) as im:  # the stored values: far from it
            stored = np.asarray(im, dtype=np.float32)
            stored = stored[..., 0] if stored.ndim == 3 else stored
            stored = stored / 257 if im.mode == "I;16" else stored
        got = mio.load_preview(path, 1024).astype(np.int16)
        assert got.shape == want.shape, name
        # 16-bit: the preview truncates to 8 bits, load_photo rounds
        assert np.abs(got - want).max() <= (0 if "8" in name else 1), name
        assert np.abs(want[..., 0] - stored).mean() > 20, name
        assert mio.source_profile(path) is None, name  # nothing left for the UI to convert


def test_the_preview_of_a_real_grey_photo_with_a_dot_gain_profile_is_load_photos():
    src = _shared_or_skip(WOLF)
    want = mio._quantise(mio.load_photo(src).pixels, 8)
    assert np.array_equal(mio.load_preview(src, 1024), want)
    small = mio.load_preview(src, 128)  # JPEG draft mode: a close, not an equal, picture
    ref = np.asarray(Image.fromarray(want).resize(small.shape[1::-1], Image.Resampling.BOX))
    assert abs(float(small.mean()) - float(ref.mean())) < 1.0


def _crc_damaged_16bit_png(path: Path) -> Path:
    """A 16-bit RGB PNG whose IDAT CRC is wrong: libpng (OpenCV) refuses it, Pillow reads it."""
    import cv2

    png = bytearray(cv2.imencode(".png", _px16())[1].tobytes())
    i = png.index(b"IDAT")
    (n,) = struct.unpack(">I", png[i - 4:i])
    png[i + 4 + n] ^= 0xFF  # the CRC's first byte
    path.write_bytes(bytes(png))
    return path


LOST_16 = "this photo holds 16-bit samples but the 16-bit decoder (OpenCV) could not read it"


def test_a_16bit_png_decoded_with_8_bits_says_so(tmp_path):
    """A 16-bit PNG OpenCV could not decode was read with Pillow's 8 bits and nothing said the
    precision was gone (only that the data was damaged)."""
    ph = mio.load_photo(_crc_damaged_16bit_png(tmp_path / "crc16.png"))
    assert ph.bit_depth == 8 and ph.info["source_bit_depth"] == 16
    assert any("IDAT: CRC error" in w for w in ph.info["warnings"])
    assert any(w.startswith(LOST_16) for w in ph.info["warnings"]), ph.info["warnings"]


@pytest.mark.parametrize("orientation", [1, 6], ids=["deferred", "decoded-first"])
def test_a_16bit_tiff_opencv_cannot_decode_says_it_lost_its_16_bits(tmp_path, monkeypatch,
                                                                      orientation):
    src = _tiff(tmp_path / "t16.tif", _px16(), extra={274: (3, [orientation])})
    sound = mio.load_photo(src)
    assert sound.bit_depth == 16 and "source_bit_depth" not in sound.info
    assert not any(w.startswith(LOST_16) for w in sound.info["warnings"])
    monkeypatch.setattr(mio, "_cv2_decode_file", lambda *a: None)  # OpenCV refuses it
    ph = mio.load_photo(src)
    assert ph.bit_depth == 8 and ph.info["source_bit_depth"] == 16
    assert [w for w in ph.info["warnings"] if w.startswith(LOST_16)] == [
        LOST_16 + ": it was decoded with 8 bits per channel, so the extra precision is lost"]
