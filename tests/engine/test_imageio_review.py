"""Review of the session-11 image I/O changes: defects found in them, each reproduced here
before it was fixed (see the docstrings)."""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from engine import imageio as mio
from engine.errors import BadImage
from tests.engine.test_imageio_s11 import _ANIM_JXL, _box, _float_tiff, _hdr, _std_packet

REPO = Path(__file__).resolve().parents[2]


# ============================================================ JPEG XL: animation hidden by boxes


def test_an_animated_jxl_whose_header_is_split_past_the_box_limit_is_refused(tmp_path):
    """The header scan looks at the first ``_JXL_MAX_BOXES`` boxes. A container whose first
    codestream part holds just the size header, followed by that many boxes and then the rest,
    passed for a still image (``animated`` False) and the plugin then decoded every frame.
    Whether it is animated cannot be read: refused like a header whose size cannot be."""
    sig = b"\x00\x00\x00\x0cJXL \r\n\x87\n" + _box(b"ftyp", b"jxl \x00\x00\x00\x00jxl ")
    data = (sig + _box(b"jxlp", struct.pack(">I", 0) + _ANIM_JXL[:4])
            + _box(b"free", b"") * (mio._JXL_MAX_BOXES + 4)
            + _box(b"jxlp", struct.pack(">I", 0x80000001) + _ANIM_JXL[4:]))
    path = tmp_path / "hidden.jxl"
    path.write_bytes(data)
    head = mio._jxl_parse(path)
    assert head[:2] == (64, 64) and head[4] is None  # the size is read, the rest is not
    if not mio.jxl_supported():
        pytest.skip("the optional 'jxl' extra (pillow-jxl-plugin) is not installed")
    for fn in (mio.load_photo, lambda p: mio.load_preview(p, 32), mio.image_size):
        with pytest.raises(BadImage, match="animated"):
            fn(path)


def test_a_still_jxl_header_still_says_not_animated(tmp_path):
    """All-default and extra-fields-less headers say "not animated" without reading further."""
    if not mio.jxl_supported():
        pytest.skip("the optional 'jxl' extra (pillow-jxl-plugin) is not installed")
    from PIL import Image

    path = tmp_path / "still.jxl"
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(path, "JXL", lossless=True, effort=1)
    assert mio._jxl_parse(path)[4] is False
    assert mio.load_photo(path).pixels.shape == (8, 16, 3)


# ============================================================ stderr capture


@pytest.mark.parametrize("how", ["-X", "env"])
def test_a_crash_report_during_a_decode_reaches_stderr(how):
    """With faulthandler on (-X faulthandler, PYTHONFAULTHANDLER), a crash inside a decoder
    wrote its report into the capture's temporary file, deleted with the process: nothing
    came out. The capture now stays off then."""
    code = ("import faulthandler\n"
            "from engine import imageio as mio\n"
            "assert faulthandler.is_enabled()\n"
            "with mio._decoder_messages([]):\n"
            "    faulthandler._sigsegv()\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONFAULTHANDLER", None)
    args = [sys.executable, "-c", code]
    if how == "-X":
        args[1:1] = ["-X", "faulthandler"]
    else:
        env["PYTHONFAULTHANDLER"] = "1"
    res = subprocess.run(args, check=False, cwd=REPO, capture_output=True, timeout=120,
                         env=env)
    assert res.returncode != 0
    assert b"Fatal Python error" in res.stderr, res.stderr[-2000:]


def test_decoder_lines_are_still_captured_without_faulthandler(capfd):
    got: list[str] = []
    capfd.readouterr()
    with mio._decoder_messages(got):
        os.write(2, b"Corrupt JPEG data: 3 extraneous bytes before marker 0xd9\n")
    assert capfd.readouterr().err == ""
    assert got == ["Corrupt JPEG data: 3 extraneous bytes before marker 0xd9"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_child_forked_during_a_decode_gets_the_real_stderr(capfd):
    """A process forked (multiprocessing's default start method on Linux) while another thread
    decoded inherited fd 2 pointing at the parent's temporary file - for good: the child's
    stderr went nowhere, and its own decodes shared the parent's capture."""
    before = os.fstat(2)
    inside, leave = threading.Event(), threading.Event()

    def decode() -> None:
        with mio._decoder_messages([]):
            inside.set()
            leave.wait(30)

    t = threading.Thread(target=decode)
    t.start()
    try:
        assert inside.wait(30)
        assert (os.fstat(2).st_dev, os.fstat(2).st_ino) != (before.st_dev, before.st_ino)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report over the pipe, never return into pytest
            status = b"?"
            try:
                signal.alarm(20)
                st = os.fstat(2)
                same = (st.st_dev, st.st_ino) == (before.st_dev, before.st_ino)
                got: list[str] = []
                with mio._decoder_messages(got):
                    os.write(2, b"Corrupt JPEG data: child\n")
                st = os.fstat(2)
                back = (st.st_dev, st.st_ino) == (before.st_dev, before.st_ino)
                status = b"%d%d%d" % (same, got == ["Corrupt JPEG data: child"], back)
            finally:
                os.write(w, status)
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            status = f.read()
        os.waitpid(pid, 0)
    finally:
        leave.set()
        t.join()
    assert status == b"111", status  # real stderr in the child; its own capture works
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    assert mio._decoder_messages.users == 0 and mio._decoder_messages.sink is None


# ============================================================ float TIFF


def test_a_64bit_float_tiff_is_not_called_half_float(tmp_path):
    data = bytearray(_float_tiff(_hdr()))
    bps = struct.pack("<HHH", 32, 32, 32)
    i = data.index(bps)
    data[i:i + 6] = struct.pack("<HHH", 64, 64, 64)
    path = tmp_path / "double.tif"
    path.write_bytes(bytes(data))
    assert mio._float_tiff_layout(path).bits == 64
    with pytest.raises(BadImage) as e:
        mio.load_photo(path)
    assert "64-bit floating-point" in str(e.value) and "half" not in str(e.value)


# ============================================================ extended XMP: nested history

_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_MM = "{http://ns.adobe.com/xap/1.0/mm/}"


def _events(n: int, who: str) -> str:
    return ("<xmpMM:History><rdf:Seq>" + "".join(
        f'<rdf:li stEvt:action="saved" stEvt:instanceID="xmp.iid:{who}{i:028x}" '
        'stEvt:softwareAgent="Adobe Photoshop 25.0"/>' for i in range(n))
        + "</rdf:Seq></xmpMM:History>")


def _top_level(xmp: bytes) -> list[ET.Element]:
    text = xmp.decode()
    root = ET.fromstring(text[text.index("<x:xmpmeta"):text.index("</x:xmpmeta>") + 12])
    return [d for d in root.find(f"{_RDF}RDF") if d.tag == f"{_RDF}Description"]


def test_an_ingredients_history_is_not_made_the_photos_own(tmp_path):
    """Photoshop keeps each placed document's metadata (its own xmpMM:History, Camera Raw
    settings) in xmpMM:Pantry. Splitting a large packet moved every xmpMM:History and crs:
    property, however deeply nested, to the ExtendedXMP's top-level rdf:Description: read
    back, the photo had the ingredient's history and develop settings as its own."""
    ns = ('xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
          'xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/" '
          'xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#" '
          'xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"')
    body = (f'<rdf:Description rdf:about="" {ns} xmp:Rating="4">'
            "<dc:subject><rdf:Bag><rdf:li>harbour</rdf:li></rdf:Bag></dc:subject>"
            f"{_events(3, 'a')}<xmpMM:Pantry><rdf:Bag><rdf:li>"
            '<rdf:Description xmpMM:InstanceID="xmp.iid:ingredient" crs:Exposure2012="+1.00">'
            f"{_events(700, 'b')}</rdf:Description></rdf:li></rdf:Bag></xmpMM:Pantry>"
            "</rdf:Description>")
    xmp = _std_packet(body, None)
    assert len(xmp) > mio.JPEG_XMP_MAX + 20_000
    src = mio.Photo(path=tmp_path / "src.png", pixels=np.full((8, 8, 3), 0.5), xmp=xmp)
    out = mio.save_photo(src.pixels, tmp_path / "o.jpg", like=src, record={"software": "t"})
    back = mio.load_photo(out)
    assert back.info["warnings"] == []
    tops = _top_level(back.xmp)
    own = [h for d in tops for h in d.findall(f"{_MM}History")]
    assert len(own) == 1 and len(own[0].findall(f".//{_RDF}li")) == 3  # the photo's own only
    assert not any(d.get("{http://ns.adobe.com/camera-raw-settings/1.0/}Exposure2012")
                   for d in tops)
    pantry = [p for d in tops for p in d.findall(f"{_MM}Pantry")]
    assert len(pantry) == 1
    inner = pantry[0].find(f"{_RDF}Bag/{_RDF}li/{_RDF}Description")
    assert len(inner.findall(f"{_MM}History/{_RDF}Seq/{_RDF}li")) == 700
    assert inner.get("{http://ns.adobe.com/camera-raw-settings/1.0/}Exposure2012") == "+1.00"
    assert mio.read_record(out) == {"software": "t"}


def test_top_level_history_still_goes_alone_to_the_extended_part():
    ns = ('xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/" '
          'xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#" '
          'xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"')
    text = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
            f'02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" {ns} crs:Exposure2012="1">'
            f'{_events(2, "a")}<xmpMM:History/></rdf:Description></rdf:RDF></x:xmpmeta>')
    assert mio._bulk_only_at_top(text)
    nested = text.replace(_events(2, "a"), "<xmpMM:Pantry><rdf:Bag><rdf:li "
                          'rdf:parseType="Resource">' + _events(2, "a")
                          + "</rdf:li></rdf:Bag></xmpMM:Pantry>")
    assert not mio._bulk_only_at_top(nested)


# ============================================================ 16-bit PNG decoded once


@pytest.mark.parametrize("damage", ["crc", "filter"])
def test_a_damaged_16bit_png_prints_nothing(tmp_path, capfd, damage):
    """Since a 16-bit PNG goes to OpenCV first (decoded once), a damaged one made libpng print
    "libpng error: IDAT: CRC error" (or "bad adaptive filter value") on stderr before Pillow
    named the damage; before, Pillow refused it first and OpenCV never ran."""
    import zlib

    import cv2

    a = (np.random.default_rng(1).random((64, 64, 3)) * 65535).astype(np.uint16)
    png = bytearray(cv2.imencode(".png", a)[1].tobytes())
    i = png.index(b"IDAT")
    (n,) = struct.unpack(">I", png[i - 4:i])
    if damage == "crc":
        png[i + 4 + n // 2] ^= 0xFF
    else:  # half of the first IDAT's data left out, its CRC right: garbled rows follow
        data = bytes(png[i + 4:i + 4 + n // 2])
        chunk = (struct.pack(">I", len(data)) + b"IDAT" + data
                 + struct.pack(">I", zlib.crc32(b"IDAT" + data) & 0xFFFFFFFF))
        png = png[:i - 4] + chunk + png[i + 4 + n + 4:]
    path = tmp_path / "bad16.png"
    path.write_bytes(bytes(png))
    assert not mio._png_metadata_after_idat(path)  # the once-decoded path
    capfd.readouterr()
    with pytest.raises(BadImage):
        mio.load_photo(path)
    assert capfd.readouterr().err == ""


def test_nan_and_infinite_float_tiff_values_give_finite_pixels(tmp_path):
    """Checked, sound: NaN -> black, +inf -> white (clipped, reported), -inf and negative
    values -> black; NaN alpha -> opaque."""
    a = _hdr(c=4)
    a[0, 0, :3], a[0, 1, :3], a[0, 2, :3], a[0, 3, :3] = np.nan, np.inf, -np.inf, -0.5
    a[1, 0, 3] = np.nan
    path = tmp_path / "nan.tif"
    path.write_bytes(_float_tiff(a, compression=8, predictor=3))
    photo = mio.load_photo(path)
    assert np.isfinite(photo.pixels).all() and np.isfinite(photo.alpha).all()
    assert photo.pixels.min() >= 0.0 and photo.pixels.max() <= 1.0
    px = mio._quantise(photo.pixels, 16)
    assert px[0, 0].tolist() == [0, 0, 0] and px[0, 1].tolist() == [65535] * 3
    assert px[0, 2].tolist() == [0, 0, 0] and px[0, 3].tolist() == [0, 0, 0]
    assert photo.alpha[1, 0] == 1.0
    assert any("brighter than white" in w for w in photo.info["warnings"])


# ============================================================ checked, sound: hostile extended XMP


def _ext_segment(guid: bytes, total: int, off: int, part: bytes) -> bytes:
    payload = b"http://ns.adobe.com/xmp/extension/\x00" + guid + struct.pack(">II", total, off) + part
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


@pytest.mark.parametrize("kind", ["huge length", "overlap", "many guids", "gap"])
def test_hostile_extended_xmp_is_refused_quickly(tmp_path, kind):
    import hashlib
    import time

    from tests.engine.test_imageio_s11 import _KEYWORDS, _jpeg

    ext = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>" * 1500
    guid = hashlib.md5(ext).hexdigest().upper().encode()
    segs = {
        "huge length": [_ext_segment(guid, 0xFFFFFFFF, 0, ext[:60000])],
        "overlap": [_ext_segment(guid, len(ext), 0, ext[:50000]),
                    _ext_segment(guid, len(ext), 40000, ext[40000:])],
        "many guids": [_ext_segment(f"{i:032X}".encode(), 1 << 24, 0, b"x" * 100)
                       for i in range(3000)] + [_ext_segment(guid, len(ext), 0, ext[:100])],
        "gap": [_ext_segment(guid, len(ext), 0, ext[:100]),
                _ext_segment(guid, len(ext), 200, ext[200:])],
    }[kind]
    path = tmp_path / "h.jpg"
    path.write_bytes(mio._jpeg_insert(_jpeg(xmp=_std_packet(_KEYWORDS, guid.decode())),
                                      b"".join(segs)))
    t = time.perf_counter()
    photo = mio.load_photo(path)
    assert time.perf_counter() - t < 2.0
    assert "<rdf:li>harbour</rdf:li>" in photo.xmp.decode()
    assert "HasExtendedXMP" not in photo.xmp.decode()
    assert any("extended XMP" in w for w in photo.info["warnings"]), photo.info


def test_png_metadata_scan_of_a_truncated_png_falls_back_to_pillow(tmp_path):
    import cv2

    a = (np.random.default_rng(2).random((30, 40, 3)) * 65535).astype(np.uint16)
    png = cv2.imencode(".png", a)[1].tobytes()
    for cut in (10, 40, len(png) // 2, len(png) - 12):
        path = tmp_path / f"cut{cut}.png"
        path.write_bytes(png[:cut])
        assert mio._png_metadata_after_idat(path)  # no IEND reached: Pillow's way
    path.write_bytes(png[:33] + struct.pack(">I", 0xFFFFFFF0) + b"tEXt" + png[41:])
    assert mio._png_metadata_after_idat(path)  # a length past the end
