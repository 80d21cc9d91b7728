"""Photo I/O gaps closed in session 11: libjpeg/libpng warnings kept off stderr (recorded as the
photo's warnings), JPEG extended XMP read and written (Adobe XMP Specification Part 3), the
EXIF maker note and Interop IFD kept in TIFF results, 32-bit floating-point RGB TIFF read,
animated JPEG XL refused before it is decoded, 16-bit PNG decoded once."""
from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import struct
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from engine import imageio as mio
from engine.errors import BadImage
from tests.engine.test_metadata import _segments

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None,
                                    reason="exiftool (Debian's libimage-exiftool-perl) is "
                                           "needed for this cross-check")


def _rgb(h=48, w=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, (x + y) / (w + h)], axis=2) * 200
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def _jpeg(rgb: np.ndarray | None = None, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb() if rgb is None else rgb).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


# ============================================================ 1. decoder warnings off stderr


def _cv2_rgb(data: bytes) -> np.ndarray:
    import cv2

    a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return a[..., ::-1]


def _damaged_jpegs() -> dict[str, bytes]:
    j = _jpeg()
    dqt = j.index(b"\xff\xdb")
    return {
        # a stray byte between two header segments (what Pillow's truncated_app14.jpg has)
        "extraneous": j[:dqt] + b"\x00" + j[dqt:],
        # the scan cut in half, the end marker kept: libjpeg fills the rest with grey
        "premature end": j[:len(j) * 2 // 3] + b"\xff\xd9",
    }


@pytest.mark.parametrize("name", list(_damaged_jpegs()))
def test_libjpeg_warnings_are_recorded_not_printed(tmp_path, capfd, name):
    data = _damaged_jpegs()[name]
    want = _cv2_rgb(data)  # what the photo decoded to before (OpenCV's decode)
    path = tmp_path / "d.jpg"
    path.write_bytes(data)
    capfd.readouterr()
    photo = mio.load_photo(path)
    fast = mio.load_jpeg_rgb8(path)
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    assert any("Corrupt JPEG data" in w for w in photo.info["warnings"]), photo.info
    assert np.array_equal(mio._quantise(photo.pixels, 8), want)
    assert np.array_equal(fast, want)


def test_shared_corrupt_jpegs_decode_quietly(shared_images, capfd):
    for name in ("Pillow__Tests__images__hopper_bad_exif.jpg",
                 "Pillow__Tests__images__truncated_app14.jpg"):
        path = shared_images / "odd_corrupt" / name
        capfd.readouterr()
        photo = mio.load_photo(path)
        mio.load_jpeg_rgb8(path)
        assert capfd.readouterr().err == "", name
        assert any("extraneous bytes" in w for w in photo.info["warnings"]), name


def test_libpng_warnings_of_a_16bit_png_are_recorded_not_printed(tmp_path, capfd):
    import cv2

    a = (np.random.default_rng(1).random((24, 32, 3)) * 65535).astype(np.uint16)
    png = cv2.imencode(".png", a)[1].tobytes()
    bad = b"key\x00\x01\x07\x00\x00text"  # an iTXt chunk with an unknown compression method
    chunk = struct.pack(">I", len(bad)) + b"iTXt" + bad + struct.pack(
        ">I", zlib.crc32(b"iTXt" + bad) & 0xFFFFFFFF)
    path = tmp_path / "w.png"
    path.write_bytes(png[:33] + chunk + png[33:])
    capfd.readouterr()
    photo = mio.load_photo(path)
    assert capfd.readouterr().err == ""
    assert photo.bit_depth == 16
    assert np.array_equal(mio._quantise(photo.pixels, 16), a[..., ::-1])
    assert any("libpng warning" in w for w in photo.info["warnings"]), photo.info


def test_the_capture_passes_other_output_through_and_restores_stderr(capfd):
    before = os.fstat(2)
    got: list[list[str]] = [[] for _ in range(4)]
    gate = threading.Barrier(4)

    def work(i: int) -> None:
        with mio._decoder_messages(got[i]):
            gate.wait()  # all four inside at once
            os.write(2, f"Corrupt JPEG data: {i} extraneous bytes before marker 0xd0\n".encode())
            os.write(2, f"line {i} from someone else\n".encode())
            gate.wait()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    err = capfd.readouterr().err
    assert sorted(err.splitlines()) == [f"line {i} from someone else" for i in range(4)]
    for i in range(4):  # each decode gets its own message (and those written meanwhile)
        assert f"Corrupt JPEG data: {i} extraneous bytes before marker 0xd0" in got[i]
    after = os.fstat(2)
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)
    assert mio._decoder_messages.users == 0 and mio._decoder_messages.sink is None


# ============================================================ 2. JPEG extended XMP

_NS = ('xmlns:x="adobe:ns:meta/"', 'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"')
_EXT_SIG = b"http://ns.adobe.com/xmp/extension/\x00"


def _std_packet(body: str, guid: str | None) -> bytes:
    note = ("" if guid is None else
            '<rdf:Description rdf:about="" xmlns:xmpNote="http://ns.adobe.com/xmp/note/">'
            f"<xmpNote:HasExtendedXMP>{guid}</xmpNote:HasExtendedXMP></rdf:Description>")
    return ("<?xpacket begin=\"\ufeff\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>"
            f"<x:xmpmeta {_NS[0]}><rdf:RDF {_NS[1]}>{note}{body}</rdf:RDF></x:xmpmeta>"
            '<?xpacket end="w"?>').encode()


def _history(n: int) -> str:
    return ("<xmpMM:History><rdf:Seq>" + "".join(
        f'<rdf:li stEvt:action="saved" stEvt:instanceID="xmp.iid:{i:032x}" '
        f'stEvt:when="2024-01-01T10:00:00" stEvt:softwareAgent="Adobe Photoshop 25.0"/>'
        for i in range(n)) + "</rdf:Seq></xmpMM:History>")


def _ext_packet(n: int) -> bytes:
    """An ExtendedXMP as ExifTool and Photoshop write it: x:xmpmeta, no packet wrapper, the
    namespaces declared on the rdf:RDF (the merge must carry them over)."""
    return (f'<x:xmpmeta {_NS[0]}><rdf:RDF {_NS[1]} xmlns:xmpMM="http://ns.adobe.com/xap/1.0/'
            'mm/" xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#">'
            f'<rdf:Description rdf:about="">{_history(n)}</rdf:Description>'
            "</rdf:RDF></x:xmpmeta>").encode()


def _with_extended(standard: bytes, ext: bytes, guid: str | None = None,
                   chunk: int = 65458, drop: int | None = None) -> bytes:
    """A JPEG whose XMP is ``standard`` plus ``ext`` in extension segments (spec layout)."""
    guid = guid or hashlib.md5(ext).hexdigest().upper()
    segs = b""
    for i, off in enumerate(range(0, len(ext), chunk)):
        if i == drop:
            continue
        payload = (_EXT_SIG + guid.encode() + struct.pack(">II", len(ext), off)
                   + ext[off:off + chunk])
        segs += b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return mio._jpeg_insert(_jpeg(xmp=standard), segs)


_KEYWORDS = ('<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
             'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4"><dc:subject><rdf:Bag>'
             "<rdf:li>harbour</rdf:li></rdf:Bag></dc:subject></rdf:Description>")


def test_extended_xmp_is_read_and_merged(tmp_path):
    ext = _ext_packet(1200)
    assert len(ext) > 2 * 65458  # three segments
    guid = hashlib.md5(ext).hexdigest().upper()
    path = tmp_path / "lr.jpg"
    path.write_bytes(_with_extended(_std_packet(_KEYWORDS, guid), ext))
    photo = mio.load_photo(path)
    text = photo.xmp.decode()
    assert text.count('stEvt:action="saved"') == 1200  # the extended part is there
    assert 'xmp:Rating="4"' in text and "<rdf:li>harbour</rdf:li>" in text
    assert "HasExtendedXMP" not in text  # a packet in one piece names no other part
    ET.fromstring(text[text.index("<x:xmpmeta"):text.index("</x:xmpmeta>") + 12])
    assert photo.info["warnings"] == []
    # a PNG result holds it all in one packet
    out = mio.save_photo(photo.pixels, tmp_path / "o.png", like=photo)
    assert mio.load_photo(out).xmp.decode().count('stEvt:action="saved"') == 1200


@pytest.mark.parametrize("damage", ["md5", "missing part", "no segments"])
def test_damaged_extended_xmp_keeps_the_standard_part_and_says_so(tmp_path, damage):
    ext = _ext_packet(1200)
    guid = hashlib.md5(ext).hexdigest().upper()
    if damage == "md5":
        data = _with_extended(_std_packet(_KEYWORDS, guid), ext.replace(b"saved", b"SAVED", 1),
                              guid=guid)
    elif damage == "missing part":
        data = _with_extended(_std_packet(_KEYWORDS, guid), ext, drop=1)
    else:
        data = _jpeg(xmp=_std_packet(_KEYWORDS, guid))
    path = tmp_path / "d.jpg"
    path.write_bytes(data)
    photo = mio.load_photo(path)
    text = photo.xmp.decode()
    assert "<rdf:li>harbour</rdf:li>" in text and "stEvt:action" not in text
    assert "HasExtendedXMP" not in text
    assert any("extended XMP" in w for w in photo.info["warnings"]), photo.info


def test_extension_segments_no_standard_xmp_names_are_ignored(tmp_path):
    ext = _ext_packet(50)
    path = tmp_path / "stale.jpg"
    path.write_bytes(_with_extended(_std_packet(_KEYWORDS, None), ext))
    photo = mio.load_photo(path)
    assert "stEvt:action" not in photo.xmp.decode() and photo.info["warnings"] == []


def _extended_of(jpeg: bytes) -> tuple[bytes, bytes]:
    """(StandardXMP, ExtendedXMP) of a JPEG, checked against the spec's layout."""
    std = [s for m, s in _segments(jpeg) if m == 0xE1
           and s.startswith(b"http://ns.adobe.com/xap/1.0/\x00")]
    ext = [s for m, s in _segments(jpeg) if m == 0xE1 and s.startswith(_EXT_SIG)]
    assert len(std) == 1 and ext
    standard = std[0][29:]
    guid = ext[0][35:67]
    full = struct.unpack_from(">I", ext[0], 67)[0]
    data = bytearray(full)
    covered = 0
    for s in ext:
        assert s[35:67] == guid and struct.unpack_from(">I", s, 67)[0] == full
        off = struct.unpack_from(">I", s, 71)[0]
        part = s[75:]
        assert len(part) <= 65458
        data[off:off + len(part)] = part
        covered += len(part)
    assert covered == full
    assert hashlib.md5(bytes(data)).hexdigest().upper().encode() == guid
    assert f"<xmpNote:HasExtendedXMP>{guid.decode()}</xmpNote:HasExtendedXMP>".encode() \
        in standard
    return standard, bytes(data)


def test_a_large_xmp_is_written_as_standard_plus_extended_xmp(tmp_path):
    """The editing history goes to the extended part; keywords, rating and Mend's record stay
    in the main segment that every reader sees; read back, nothing is missing."""
    body = ('<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:xmpMM="http://ns.adobe.com/xap/1.0/'
            'mm/" xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#" '
            'xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/" xmp:Rating="4" '
            'crs:Exposure2012="+0.50"><dc:subject><rdf:Bag><rdf:li>harbour</rdf:li></rdf:Bag>'
            f"</dc:subject>{_history(700)}</rdf:Description>")
    xmp = _std_packet(body, None)
    assert len(xmp) > 100_000
    src = mio.Photo(path=tmp_path / "src.png", pixels=_rgb() / 255.0, xmp=xmp)
    notes: list[str] = []
    out = mio.save_photo(src.pixels, tmp_path / "o.jpg", like=src, notes=notes,
                         record={"software": "Mend t"})
    assert notes == []
    standard, ext = _extended_of(out.read_bytes())
    assert len(standard) <= mio.JPEG_XMP_MAX
    assert b'xmp:Rating="4"' in standard and b"<rdf:li>harbour</rdf:li>" in standard
    assert b"xmpMM:History" not in standard and b"crs:Exposure2012" not in standard
    assert b"<?xpacket" not in ext and ext.startswith(b"<x:xmpmeta")
    ET.fromstring(ext)
    back = mio.load_photo(out)
    text = back.xmp.decode()
    assert text.count('stEvt:action="saved"') == 700 and 'crs:Exposure2012="+0.50"' in text
    assert 'xmp:Rating="4"' in text and mio.read_record(out) == {"software": "Mend t"}
    assert back.info["warnings"] == []


def test_xmp_too_large_even_without_its_history_goes_to_the_extended_part(tmp_path):
    """4000 keywords: nothing bulky to move; all but the record goes to the extended part (a
    note says which readers see it) instead of being dropped."""
    body = ('<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
            "<dc:subject><rdf:Bag>" + "".join(f"<rdf:li>keyword{i}</rdf:li>"
                                              for i in range(4000))
            + "</rdf:Bag></dc:subject></rdf:Description>")
    src = mio.Photo(path=tmp_path / "src.png", pixels=_rgb() / 255.0,
                    xmp=_std_packet(body, None))
    notes: list[str] = []
    out = mio.save_photo(src.pixels, tmp_path / "o.jpg", like=src, notes=notes,
                         record={"software": "Mend t"})
    standard, _ext = _extended_of(out.read_bytes())
    assert b"keyword" not in standard and mio.record_from_xmp(standard) == {"software": "Mend t"}
    assert any("extended XMP" in n and "too large for a JPEG" in n for n in notes), notes
    text = mio.load_photo(out).xmp.decode()
    assert all(f"<rdf:li>keyword{i}</rdf:li>" in text for i in (0, 1999, 3999))
    assert text.count("mend:record") == 2  # one record: its start and end tags


@needs_exiftool
def test_extended_xmp_agrees_with_exiftool(tmp_path):
    """ExifTool writes extended XMP when a packet is too large: Mend reads what it wrote, and
    ExifTool reads (and validates) what Mend writes."""
    src = tmp_path / "et.jpg"
    src.write_bytes(_jpeg())
    (tmp_path / "long.txt").write_text("x" * 90_000)
    desc = f"-XMP-dc:Description<={tmp_path / 'long.txt'}"
    subprocess.run([EXIFTOOL, "-q", "-overwrite_original", desc, "-XMP-dc:Subject=alpha",
                    "-XMP-xmp:Rating=3", str(src)], check=True)
    assert any(s.startswith(_EXT_SIG) for m, s in _segments(src.read_bytes()) if m == 0xE1)
    photo = mio.load_photo(src)
    assert photo.xmp.count(b"x" * 1000) == 90 and b"alpha" in photo.xmp
    out = mio.save_photo(photo.pixels, tmp_path / "o.jpg", like=photo,
                         record={"software": "Mend t"})
    _extended_of(out.read_bytes())
    res = subprocess.run([EXIFTOOL, "-validate", "-warning", "-a", "-s3", "-XMP-dc:Description",
                          "-XMP-dc:Subject", "-XMP-xmp:Rating", str(out)],
                         capture_output=True, text=True, check=True)
    lines = res.stdout.splitlines()
    assert lines[0] == "OK", res.stdout  # -validate: no warning at all
    assert "x" * 90_000 in lines and "alpha" in lines and "3" in lines


@pytest.mark.parametrize("body", [" " * 20_000, "<xmpNote:HasExtendedXMP>" * 8_000,
                                  "<rdf:Description rdf:about=\"" * 4_000,
                                  'xmlns:a="' * 8_000, "<rdf:RDF" * 8_000])
def test_pathological_xmp_is_split_and_merged_in_linear_time(body):
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
           '22-rdf-syntax-ns#">' + body + "</rdf:RDF></x:xmpmeta>")
    for fn, args in ((mio._xmp_extended_guid, (xmp,)), (mio._xmp_split, (xmp.encode(), [])),
                     (mio._xmp_merge, (xmp, xmp)), (mio._xmp_declarations, (xmp,))):
        t = time.perf_counter()
        fn(*args)
        assert time.perf_counter() - t < 1.0, fn.__name__


# ============================================================ 3. maker note in TIFF results


def _exif_with_maker_note(bo: str = "<", broken: bool = False) -> tuple[bytes, bytes, bytes]:
    """(EXIF blob, maker note bytes, the string its entry points to): a Canon-style maker note,
    an IFD whose entry's value sits at an offset from the TIFF header, plus an Interop IFD."""
    secret = b"Serial 0123456789 (maker data)\x00"
    # layout (offsets from the TIFF header): header 8, IFD0 at 8 (2 entries), Exif IFD at 38
    # (3 entries), Interop IFD at 80 (1 entry), maker note at 98 (1-entry IFD), its string at 116
    ifd0 = struct.pack(bo + "H", 2) + struct.pack(bo + "HHI", 0x010F, 2, 4) + b"Cam\x00" \
        + struct.pack(bo + "HHII", 0x8769, 4, 1, 38) + struct.pack(bo + "I", 0)
    note = struct.pack(bo + "H", 1) + struct.pack(bo + "HHII", 0x000C, 2, len(secret),
                                                  9999 if broken else 116) \
        + struct.pack(bo + "I", 0)
    exif_ifd = struct.pack(bo + "H", 3) + struct.pack(bo + "HHI", 0x9000, 7, 4) + b"0231" \
        + struct.pack(bo + "HHII", 0x927C, 7, len(note), 98) \
        + struct.pack(bo + "HHII", 0xA005, 4, 1, 80) + struct.pack(bo + "I", 0)
    interop = struct.pack(bo + "H", 1) + struct.pack(bo + "HHI", 0x0001, 2, 4) + b"R98\x00" \
        + struct.pack(bo + "I", 0)
    body = ((b"II*\x00" if bo == "<" else b"MM\x00*") + struct.pack(bo + "I", 8) + ifd0)
    assert len(body) == 38
    body += exif_ifd
    assert len(body) == 80
    body += interop
    assert len(body) == 98
    body += note
    assert len(body) == 116
    body += secret
    return b"Exif\x00\x00" + body, note, secret


def _tiff_exif_ifd(data: bytes) -> tuple[str, dict[int, tuple[int, int, int]]]:
    """(byte order, Exif IFD entries tag -> (type, count, value offset)) of a TIFF file."""
    t = mio._Tiff(data)
    exif = next(t.u32(e + 8) for e, tag, *_ in t.entries(t.u32(4)) if tag == 0x8769)
    return t.bo, {tag: (typ, count, voff) for _e, tag, typ, count, voff, _n
                  in t.entries(exif)}


@pytest.mark.parametrize("bo", ["<", ">"])
def test_a_tiff_result_keeps_the_maker_note_and_interop_ifd(tmp_path, bo):
    exif, note, secret = _exif_with_maker_note(bo)
    src = mio.Photo(path=tmp_path / "src.jpg", pixels=_rgb() / 255.0, exif=exif,
                    format="JPEG")
    out = mio.save_photo(src.pixels, tmp_path / "o.tif", like=src)
    data = out.read_bytes()
    order, entries = _tiff_exif_ifd(data)
    assert order == bo
    _typ, count, voff = entries[0x927C]
    assert data[voff:voff + count] == note  # byte for byte
    t = mio._Tiff(data)
    (_e, tag, _typ, n, at, _nb), = list(t.entries(voff))  # the maker note's own IFD
    assert tag == 0x000C and data[at:at + n] == secret  # its offset still points right
    with Image.open(out) as im:
        ex = im.getexif()
        assert ex.get_ifd(0x8769)[0x927C] == note
        assert ex.get_ifd(0xA005)[0x0001] == "R98"
        assert ex[0x010F] == "Cam"
        assert np.array_equal(np.asarray(im.convert("RGB")), mio._quantise(src.pixels, 8))


def test_a_damaged_exif_block_falls_back_to_a_tiff_without_the_maker_note(tmp_path):
    exif, _note, _secret = _exif_with_maker_note()
    raw = bytearray(exif)
    body = raw[6:]
    t = mio._Tiff(bytes(body))
    for e, tag, *_ in t.entries(38):
        if tag == 0x927C:  # the maker note entry now runs past the end of the EXIF
            struct.pack_into("<I", raw, 6 + e + 4, 100_000)
    src = mio.Photo(path=tmp_path / "src.jpg", pixels=_rgb() / 255.0, exif=bytes(raw),
                    format="JPEG")
    out = mio.save_photo(src.pixels, tmp_path / "o.tif", like=src)
    _bo, entries = _tiff_exif_ifd(out.read_bytes())
    assert 0x927C not in entries and 0xA005 not in entries and 0x9000 in entries
    with Image.open(out) as im:
        assert im.getexif()[0x010F] == "Cam" and im.size == (64, 48)


_MAKER_NOTE_JPEGS = ("exif-samples__jpg__Canon_DIGITAL_IXUS_400.jpg",
                     "exif-samples__jpg__Fujifilm_FinePix_E500.jpg",
                     "exif-samples__jpg__Nikon_COOLPIX_P1.jpg",
                     "exif-samples__jpg__Panasonic_DMC-FZ30.jpg",
                     "exif-samples__jpg__hdr__iphone_hdr_YES.jpg")


@pytest.mark.parametrize("name", _MAKER_NOTE_JPEGS)
def test_camera_maker_notes_survive_a_tiff_result(shared_images, tmp_path, name):
    photo = mio.load_photo(shared_images / "camera_jpeg_exif" / name)
    small = photo.pixels[:64, :96]
    h, w = small.shape[:2]
    out = mio.save_photo(small, tmp_path / "o.tif", like=photo)
    with Image.open(shared_images / "camera_jpeg_exif" / name) as im:
        want = im.getexif().get_ifd(0x8769)
    with Image.open(out) as im:
        ex = im.getexif()
        got = ex.get_ifd(0x8769)
        assert im.size == (w, h)
    assert got[0x927C] == want[0x927C]
    assert (got.get(0xA002), got.get(0xA003)) in ((w, h), (None, None))
    assert ex.get(0x0112, 1) == 1
    if EXIFTOOL:
        def maker(path: Path) -> list[str]:
            res = subprocess.run([EXIFTOOL, "-G1", "-a", "-s", "-MakerNotes:all", str(path)],
                                 capture_output=True, text=True, check=True)
            return [line for line in res.stdout.splitlines() if "NEFBitDepth" not in line]

        assert maker(out) == maker(shared_images / "camera_jpeg_exif" / name)


# ============================================================ 4. float RGB TIFF


def _float_tiff(a: np.ndarray, compression: int = 1, predictor: int = 1, bo: str = "<",
                bits: int = 32, icc: bytes | None = None, orientation: int = 1) -> bytes:
    """A one-strip floating-point TIFF (SampleFormat 3) as libtiff lays it out; predictor 3 is
    the floating-point predictor of Adobe's TIFF Technical Note 3 (bytes of each row split by
    significance, then differenced)."""
    h, w, c = a.shape
    raw = a.astype(np.dtype(bo + ("f4" if bits == 32 else "f2")))
    if predictor == 3:
        rows = []
        for y in range(h):
            b = raw[y].reshape(-1).view(np.uint8).reshape(w * c, bits // 8)
            if bo == "<":
                b = b[:, ::-1]  # most significant byte first
            planes = b.T.reshape(-1).astype(np.int16)
            planes[c:] -= planes[:-c].copy()
            rows.append(planes.astype(np.uint8).tobytes())
        data = b"".join(rows)
    else:
        data = raw.tobytes()
    if compression == 8:
        data = zlib.compress(data)
    entries = {256: (4, [w]), 257: (4, [h]), 258: (3, [bits] * c), 259: (3, [compression]),
               262: (3, [2]), 273: (4, [0]), 274: (3, [orientation]), 277: (3, [c]),
               278: (4, [h]), 279: (4, [len(data)]), 284: (3, [1]), 339: (3, [3] * c)}
    if predictor != 1:
        entries[317] = (3, [predictor])
    if c == 4:
        entries[338] = (3, [2])
    blobs = {tag: struct.pack(bo + {3: "H", 4: "I"}[typ] * len(v), *v)
             for tag, (typ, v) in entries.items()}
    if icc:
        entries[34675] = (7, [])
        blobs[34675] = icc
    n = len(entries)
    extra_at = 8 + 2 + 12 * n + 4
    extra_len = sum(len(b) + (len(b) & 1) for b in blobs.values() if len(b) > 4)
    blobs[273] = struct.pack(bo + "I", extra_at + extra_len)
    table, extra = bytearray(struct.pack(bo + "H", n)), bytearray()
    for tag in sorted(entries):
        typ, b = entries[tag][0], blobs[tag]
        count = len(b) if typ == 7 else len(b) // (2 if typ == 3 else 4)
        if len(b) <= 4:
            table += struct.pack(bo + "HHI", tag, typ, count) + b.ljust(4, b"\x00")
        else:
            table += struct.pack(bo + "HHII", tag, typ, count, extra_at + len(extra))
            extra += b + b"\x00" * (len(b) & 1)
    table += struct.pack(bo + "I", 0)
    head = (b"II*\x00" if bo == "<" else b"MM\x00*") + struct.pack(bo + "I", 8)
    return head + bytes(table) + bytes(extra) + data


def _srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1).astype(np.float64)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def _hdr(h=20, w=30, c=3) -> np.ndarray:
    rng = np.random.default_rng(3)
    a = rng.random((h, w, c)).astype(np.float32) * 0.9
    a[:4, :5, :3] = 3.5  # HDR highlights (the sun)
    if c == 4:
        a[..., 3] = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    return a


@pytest.mark.parametrize("variant", [{}, {"compression": 8}, {"compression": 8, "predictor": 3},
                                     {"bo": ">"}, {"compression": 8, "predictor": 3, "bo": ">"}])
def test_a_float_rgb_tiff_loads_as_a_16bit_photo(tmp_path, variant):
    a = _hdr()
    path = tmp_path / "hdr.tif"
    path.write_bytes(_float_tiff(a, **variant))
    photo = mio.load_photo(path)
    assert photo.bit_depth == 16 and photo.format == "TIFF" and photo.icc_profile is None
    assert photo.info["source_sample_format"] == "float"
    assert np.abs(photo.pixels - _srgb(a)).max() < 1e-5  # linear -> sRGB-encoded
    clipped = [w for w in photo.info["warnings"] if "brighter than white" in w]
    assert clipped and "3.5" in clipped[0] and "3.3%" in clipped[0]  # 20 of 600 pixels
    out = mio.save_photo(photo.pixels, tmp_path / "o", like=photo)
    assert out.suffix == ".tif"
    back = mio.load_photo(out)
    assert back.bit_depth == 16 and np.abs(back.pixels - photo.pixels).max() <= 1 / 65535
    assert mio.load_preview(path, 16).shape == (11, 16, 3)
    assert mio.image_size(path) == (20, 30)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_float_rgba_tiff_keeps_alpha_and_orientation(tmp_path, orientation):
    a = _hdr(c=4)
    path = tmp_path / "hdr.tif"
    path.write_bytes(_float_tiff(a, compression=8, orientation=orientation))
    photo = mio.load_photo(path)
    want = mio._orient(_srgb(a[..., :3]), orientation)
    assert photo.pixels.shape == want.shape and mio.image_size(path) == want.shape[:2]
    assert np.abs(photo.pixels - want).max() < 1e-5
    assert np.abs(photo.alpha - mio._orient(a[..., 3], orientation)).max() < 1e-6


def _linear_icc(gamma: float) -> bytes:
    """An RGB matrix profile (Adobe RGB-like colorants) with a plain ``gamma`` tone curve."""
    cols = [(0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446)]
    tags = [(sig, b"XYZ \0\0\0\0" + b"".join(mio._s15(v) for v in xyz))
            for sig, xyz in zip((b"rXYZ", b"gXYZ", b"bXYZ"), cols, strict=True)]
    curve = mio._curv((0, gamma))
    tags += [(b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    return mio._icc_build(b"RGB ", f"test gamma {gamma}", tags)


def test_a_linear_profile_gets_the_srgb_tone_curve_with_its_primaries(tmp_path):
    """Photoshop's 32-bit documents carry a linear profile: the values are encoded with the
    sRGB curve and the profile keeps its colorants with that curve, so colours stay put."""
    from PIL import ImageCms

    a = _hdr()
    a[:4, :5] = 0.5  # no clipping here: compare colours
    path = tmp_path / "ps.tif"
    icc = _linear_icc(1.0)
    path.write_bytes(_float_tiff(a, compression=8, predictor=3, icc=icc))
    photo = mio.load_photo(path)
    assert np.abs(photo.pixels - _srgb(a)).max() < 1e-5
    tags, old = mio._icc_tags(photo.icc_profile), mio._icc_tags(icc)
    assert all(tags[s][:20] == old[s][:20] for s in (b"rXYZ", b"gXYZ", b"bXYZ"))
    assert mio._trc_gamma(tags[b"rTRC"]) is None  # the sRGB curve, not a plain gamma
    # the same colours through both profiles (to Lab): the linear values with the linear
    # profile, the encoded ones with the new profile
    lab = ImageCms.createProfile("LAB")
    src8 = Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))
    res8 = Image.fromarray(mio._quantise(photo.pixels, 8))
    got = [np.asarray(ImageCms.applyTransform(im, ImageCms.buildTransform(
        ImageCms.ImageCmsProfile(io.BytesIO(prof)), lab, "RGB", "LAB")), dtype=np.float64)
        for im, prof in ((src8, icc), (res8, photo.icc_profile))]
    bright = a.mean(axis=2) > 0.2  # 8-bit linear values are coarse in the shadows
    assert np.abs(got[0] - got[1])[bright].mean() < 1.5
    # and not what the linear values would look like read as sRGB-encoded
    srgb = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), lab, "RGB", "LAB")
    wrong = np.asarray(ImageCms.applyTransform(src8, srgb), dtype=np.float64)
    assert np.abs(got[0] - wrong)[bright].mean() > 10


def test_a_float_tiff_with_an_encoded_profile_is_used_as_it_is(tmp_path):
    a = _hdr()
    path = tmp_path / "enc.tif"
    icc = _linear_icc(2.2)
    path.write_bytes(_float_tiff(a, icc=icc))
    photo = mio.load_photo(path)
    assert photo.icc_profile == icc
    assert np.abs(photo.pixels - np.clip(a, 0, 1)).max() < 1e-6


def test_half_float_tiff_is_refused_with_a_clear_reason(tmp_path):
    path = tmp_path / "half.tif"
    path.write_bytes(_float_tiff(_hdr(), bits=16))
    with pytest.raises(BadImage, match="half float"):
        mio.load_photo(path)


# ============================================================ 5. JPEG XL animation, 16-bit PNG

# three 64x64 frames, lossless (cjxl 0.7 from an APNG); pillow-jxl-plugin 1.3.8 decoded every
# frame inside Image.open and handed out the last one
_ANIM_JXL = base64.b64decode(
    "/wpPBAMIKC4JCAKSCQAAWABLGIsVANQbY9DGvUAEALKOWYzk1CMLCAKSCQAAaABLGIsVANQbY4xx4+4FIgAAIIC5AA"
    "GS78MtHwgCkgUAZABLGIsVANQfYzD2LxABACCRfgEAAdC2JkoQ")


def _box(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data) + 8) + kind + data


@pytest.mark.parametrize("container", [False, True])
def test_animated_jpeg_xl_is_refused_before_it_is_decoded(tmp_path, container):
    if not mio.jxl_supported():
        pytest.skip("the optional 'jxl' extra (pillow-jxl-plugin) is not installed")
    data = _ANIM_JXL
    if container:
        data = (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + _box(b"ftyp", b"jxl \x00\x00\x00\x00jxl ")
                + _box(b"jxlc", _ANIM_JXL))
    path = tmp_path / "anim.jxl"
    path.write_bytes(data)
    assert mio._jxl_parse(path)[:2] == (64, 64) and mio._jxl_parse(path)[4] is True
    for fn in (mio.load_photo, lambda p: mio.load_preview(p, 32), mio.image_size):
        with pytest.raises(BadImage, match="animated JPEG XL"):
            fn(path)


def _count_pillow_decodes(monkeypatch) -> list[str]:
    seen: list[str] = []
    orig = ImageFile.ImageFile.load

    def spy(self):
        if self.tile:
            seen.append(self.format)
        return orig(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return seen


def test_a_16bit_png_is_decoded_once(tmp_path, monkeypatch):
    import cv2

    rng = np.random.default_rng(5)
    a = (rng.random((40, 50, 4)) * 65535).astype(np.uint16)
    path = tmp_path / "p16.png"
    cv2.imwrite(str(path), a)
    seen = _count_pillow_decodes(monkeypatch)
    fast = mio.load_photo(path)
    assert seen == [] and fast.bit_depth == 16 and fast.info.get("decoder") == "opencv"
    with monkeypatch.context() as m:  # the former path: Pillow's decode, then OpenCV's
        m.setattr(mio, "_png_metadata_after_idat", lambda p: True)
        slow = mio.load_photo(path)
    assert seen == ["PNG"]
    assert np.array_equal(fast.pixels, slow.pixels) and np.array_equal(fast.alpha, slow.alpha)
    for k in ("bit_depth", "format", "icc_profile", "exif", "xmp", "dpi", "info", "iptc"):
        assert getattr(fast, k) == getattr(slow, k), k


def test_a_16bit_png_with_xmp_after_its_image_data_keeps_it(tmp_path, monkeypatch):
    import cv2

    a = (np.random.default_rng(6).random((20, 30, 3)) * 65535).astype(np.uint16)
    png = cv2.imencode(".png", a)[1].tobytes()
    xmp = mio.xmp_with_record(None, {"software": "Lightroom-ish"})
    chunk = mio._png_chunk(b"iTXt", mio._PNG_XMP_KEY + xmp)
    iend = png.rindex(b"IEND") - 4
    path = tmp_path / "late.png"
    path.write_bytes(png[:iend] + chunk + png[iend:])
    assert mio._png_metadata_after_idat(path)
    photo = mio.load_photo(path)
    assert mio.record_from_xmp(photo.xmp) == {"software": "Lightroom-ish"}
    assert photo.bit_depth == 16
    assert np.array_equal(mio._quantise(photo.pixels, 16), a[..., ::-1])


def test_shared_16bit_png_is_the_same_photo_decoded_once(shared_images, monkeypatch):
    path = shared_images / "lowres_noise_jpeg" / "Real-ESRGAN__inputs__tree_alpha_16bit.png"
    seen = _count_pillow_decodes(monkeypatch)
    fast = mio.load_photo(path)
    assert seen == []
    with monkeypatch.context() as m:
        m.setattr(mio, "_png_metadata_after_idat", lambda p: True)
        slow = mio.load_photo(path)
    assert np.array_equal(fast.pixels, slow.pixels) and np.array_equal(fast.alpha, slow.alpha)
    assert (fast.xmp, fast.exif, fast.icc_profile, fast.info) == \
        (slow.xmp, slow.exif, slow.icc_profile, slow.info)

