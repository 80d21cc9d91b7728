"""Security regressions in engine.imageio: XMP from an untrusted photo must be processed in time
linear in its length (no regex backtracking that is quadratic), and a JPEG XL whose size the
header pre-check cannot read must be refused before the plugin decodes it (pillow-jxl-plugin
decodes every pixel inside Image.open, so the pixel limit must be applied first).

Each ReDoS input below took seconds (3-20 s) with the former patterns and takes milliseconds
now; the bound asserted is generous (1 s)."""

from __future__ import annotations

import io
import re
import struct
import time

import numpy as np
import pytest
from PIL import Image

from engine import imageio as mio
from engine.errors import BadImage, ImageTooLarge

# ------------------------------------------------------------------------------------ XMP ReDoS

_HEAD = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
         '22-rdf-syntax-ns#"><rdf:Description rdf:about=""/>')
_TAIL = "</rdf:RDF></x:xmpmeta>"
_BOUND = 1.0  # seconds; every case runs in a few milliseconds


def _packet(body: str) -> bytes:
    return (_HEAD + body + _TAIL).encode()


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


# (name, XMP body); old timings (xmp_with_record / record_from_xmp / slim_xmp) in the comments
_CASES = [
    ("spaces", " " * 20_000),  # ~4 s per save (\s+ before the record attribute)
    ("tabs", "\t" * 20_000),  # ~4 s ([ \t]* before the record element)
    ("newlines", "\n" * 20_000),  # \s* before rdf:Description
    ("spaces before a description", "<rdf:Description" + " " * 20_000 + "/>"),  # ~4 s
    ("unclosed records", "<mend:record>" * 8_000),  # ~4 s ((.*?)</mend:record>)
    ("unclosed record tags", "<mend:record a" * 6_000 + ">"),  # ~3 s ([^>]* past a "<")
    ("unclosed descriptions", '<rdf:Description rdf:about="' * 4_000),
]


@pytest.mark.parametrize("name,body", _CASES, ids=[c[0] for c in _CASES])
def test_pathological_xmp_is_processed_in_linear_time(name, body):
    xmp = _packet(body)
    out, t = _timed(mio.xmp_with_record, xmp, {"software": "Mend t"})
    assert t < _BOUND, f"xmp_with_record took {t:.2f} s on {name}"
    _rec, t = _timed(mio.record_from_xmp, out)
    assert t < _BOUND, f"record_from_xmp took {t:.2f} s on {name}"
    _, t = _timed(mio.record_from_xmp, xmp)
    assert t < _BOUND, f"record_from_xmp took {t:.2f} s on {name}"
    _, t = _timed(mio.slim_xmp, xmp)
    assert t < _BOUND, f"slim_xmp took {t:.2f} s on {name}"


def test_whitespace_runs_still_go_with_the_record():
    """Anchoring a whitespace run at its start takes out the same text as before."""
    ns = mio.MEND_XMP_NS
    xmp = _packet(f'<rdf:Description rdf:about=""\n   \t xmlns:mend="{ns}"\n    mend:record='
                  '"{&quot;software&quot;: &quot;Mend old&quot;}"  xmlns:xmp="x" xmp:Rating="2"'
                  f'/>\n  \t <rdf:Description xmlns:mend="{ns}">\t  <mend:record>{{}}'
                  '</mend:record>\n</rdf:Description>')
    assert mio.record_from_xmp(xmp) == {}
    out = mio.xmp_with_record(xmp, {"software": "Mend new"}).decode()
    assert out.count("mend:record") == 2 and "Mend old" not in out
    assert 'xmlns:xmp="x" xmp:Rating="2"/>' in out  # the attribute's run of spaces went with it
    assert mio.record_from_xmp(out) == {"software": "Mend new"}


def test_many_mend_namespace_prefixes_are_capped():
    """Every prefix bound to Mend's namespace costs passes over the packet: at most 8."""
    ns = mio.MEND_XMP_NS
    body = "".join(f'<rdf:Description xmlns:p{i}="{ns}"/>' for i in range(2_000))
    xmp = _packet(body)
    assert len(mio._record_prefixes(xmp.decode())) <= mio._RECORD_PREFIXES_MAX
    _, t = _timed(mio.xmp_with_record, xmp, {"a": 1})
    assert t < _BOUND
    # a second prefix (the way another writer may name Mend's namespace) is still recognised
    two = _packet(f'<rdf:Description xmlns:m2="{ns}"><m2:record>{{"k": 2}}</m2:record>'
                  "</rdf:Description>")
    assert mio.record_from_xmp(two) == {"k": 2}
    assert b"m2:record" not in mio.xmp_with_record(two, {"k": 3})


def test_record_element_body_is_its_escaped_text():
    rec = {"software": "Mend", "note": "a<b & c > d </mend:record>"}
    xmp = mio.xmp_with_record(None, rec)
    assert mio.record_from_xmp(xmp) == rec
    assert mio.record_from_xmp(mio.xmp_with_record(xmp, {"n": 2})) == {"n": 2}


# slim_xmp: the former single regex, kept here as the reference on ordinary packets
_OLD_BULK = re.compile(
    r"<(photoshop:DocumentAncestors|xmpMM:History|xmp:Thumbnails|crs:[A-Za-z0-9]+"
    r"|darktable:(?:history|masks_history))\b[^>]*?(?:/>|>.*?</\1\s*>)", re.DOTALL)
_OLD_ATTRS = re.compile(r'\s+(?:crs|darktable):[A-Za-z0-9_]+="[^"]*"')

_SLIM_PACKETS = [
    ('<rdf:Description rdf:about="" xmlns:crs="c" crs:Exposure2012="+0.5" crs:Tint="3"\n'
     '   xmp:Rating="4"><crs:ToneCurve><rdf:Seq><rdf:li>0, 0</rdf:li></rdf:Seq></crs:ToneCurve>'
     '<crs:Look crs:Name="x"/><xmpMM:History><rdf:Seq><rdf:li stEvt:action="saved"/>'
     "</rdf:Seq></xmpMM:History><dc:subject><rdf:Bag><rdf:li>cat</rdf:li></rdf:Bag>"
     "</dc:subject></rdf:Description>"),
    ('<rdf:Description darktable:xmp_version="5" darktable:colorlabels="x">'
     "<darktable:history><rdf:Seq><rdf:li darktable:operation=\"exposure\"/></rdf:Seq>"
     "</darktable:history><darktable:masks_history/><darktable:colorlabels><rdf:Seq>"
     "<rdf:li>0</rdf:li></rdf:Seq></darktable:colorlabels></rdf:Description>"),
    ("<photoshop:DocumentAncestors><rdf:Bag><rdf:li>a</rdf:li></rdf:Bag>"
     "</photoshop:DocumentAncestors ><xmp:Thumbnails>x</xmp:Thumbnails>"
     "<xmp:ThumbnailsX>kept</xmp:ThumbnailsX><crs:Open>never closed <crs:Done/>"),
    "<crs:A><crs:A>nested</crs:A></crs:A><crs:B a='1/2'>b</crs:B ><crs:C/>",
]


@pytest.mark.parametrize("body", _SLIM_PACKETS)
def test_slim_xmp_takes_out_what_it_did(body):
    xmp = _packet(body)
    want = _OLD_ATTRS.sub("", _OLD_BULK.sub("", xmp.decode())).encode()
    assert mio.slim_xmp(xmp) == want


def test_slim_xmp_with_thousands_of_open_history_elements():
    body = "".join(f"<crs:A{i}>" for i in range(6_000)) + "<crs:A " * 5_000  # ~1.5 s, ~1 s
    body += "<xmpMM:History>x</xmpMM:History>" + " " * 15_000 + ' crs:T="1"'  # ~1 s
    xmp = _packet(body)
    out, t = _timed(mio.slim_xmp, xmp)
    assert t < _BOUND
    assert b"xmpMM:History" not in out and b"crs:T" not in out and out.count(b"<crs:A") == 11_000


def test_crafted_png_xmp_loads_saves_and_is_checked_quickly(tmp_path):
    """The audit's file: a tiny PNG whose compressed iTXt inflates to a long whitespace run
    (1 MB of spaces: hours per save before; the 30 000 here: ~7 s). Loading, saving with a
    record and mend_output_kind stay fast."""
    import zlib

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    data = b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + zlib.compress(_packet(" " * 30_000), 9)
    chunk = (struct.pack(">I", len(data)) + b"iTXt" + data
             + struct.pack(">I", zlib.crc32(b"iTXt" + data)))
    src = tmp_path / "ws.png"
    src.write_bytes(png[:33] + chunk + png[33:])
    t = time.perf_counter()
    assert mio.mend_output_kind(src) is None
    ph = mio.load_photo(src)
    out = mio.save_photo(ph.pixels, tmp_path / "out", like=ph, record={"software": "Mend t"})
    assert mio.mend_output_kind(out) == "result"
    assert time.perf_counter() - t < 2 * _BOUND


# ---------------------------------------------------------------------- JPEG XL pixel limit

_SIG = b"\x00\x00\x00\x0cJXL \r\n\x87\n"


def _need_jxl():
    if not mio.jxl_supported():
        pytest.skip("the optional 'jxl' extra (pillow-jxl-plugin) is not installed")


def _box(btype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), btype) + payload


def _codestream(h: int = 20, w: int = 30) -> tuple[bytes, np.ndarray]:
    a = np.random.default_rng(7).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JXL", lossless=True, effort=1, num_threads=1)
    code = buf.getvalue()
    assert code[:2] == b"\xff\x0a"  # no metadata: a bare codestream
    return code, a


def _container(*boxes: bytes) -> bytes:
    return _SIG + _box(b"ftyp", b"jxl \x00\x00\x00\x00jxl ") + b"".join(boxes)


@pytest.fixture
def no_decode(monkeypatch):
    """Image.open must not be reached (the JXL plugin decodes everything in it)."""
    def refuse(*_a, **_k):
        raise AssertionError("Image.open was called: the JPEG XL would have been decoded")

    monkeypatch.setattr(mio._pil(), "open", refuse)


def test_jxl_codestream_after_many_boxes_is_found_and_loads(tmp_path):
    _need_jxl()
    code, a = _codestream()
    p = tmp_path / "padded.jxl"
    p.write_bytes(_container(*[_box(b"free", b"")] * 200, _box(b"jxlc", code)))
    assert mio._jxl_header(p) == (30, 20, 1)
    ph = mio.load_photo(p)
    assert np.array_equal(np.round(ph.pixels * 255).astype(np.uint8), a)
    assert mio.image_size(p) == (20, 30) and mio.load_preview(p, 30).shape == (20, 30, 3)
    with pytest.raises(ImageTooLarge):
        mio.load_photo(p, max_pixels=20 * 30 - 1)


def test_jxl_split_codestream_header_is_read_across_jxlp_boxes(tmp_path):
    _need_jxl()
    code, a = _codestream()
    p = tmp_path / "split.jxl"
    p.write_bytes(_container(_box(b"jxlp", struct.pack(">I", 0) + code[:3]),
                             _box(b"free", b"x" * 5),
                             _box(b"jxlp", struct.pack(">I", 0x80000001) + code[3:])))
    assert mio._jxl_header(p) == (30, 20, 1)
    assert np.array_equal(np.round(mio.load_photo(p).pixels * 255).astype(np.uint8), a)


@pytest.mark.parametrize("kind", ["too many boxes", "no codestream", "truncated codestream",
                                  "near signature", "empty jxlp"])
def test_jxl_of_unknown_size_is_refused_before_decoding(tmp_path, no_decode, kind):
    """A JPEG XL whose size cannot be read from its header is BadImage and never opened: the
    plugin would decode it whatever its size (32768 x 32768: 2.1 GB, or the process aborted)."""
    _need_jxl()
    code, _ = _codestream()
    data = {
        "too many boxes": _container(*[_box(b"free", b"")] * (mio._JXL_MAX_BOXES + 10),
                                     _box(b"jxlc", code)),
        "no codestream": _container(_box(b"free", b"abc")),
        "truncated codestream": _container(_box(b"jxlc", code[:3])),
        "near signature": b"\x00\x00\x00\x0dJXL \r\n\x87\n\x00" + code,  # the plugin accepts it
        "empty jxlp": _container(_box(b"jxlp", b"\x00\x00"), _box(b"jxlc", code)),
    }[kind]
    p = tmp_path / "x.jxl"
    p.write_bytes(data)
    h = mio._jxl_header(p)
    assert h is not None and h[0] * h[1] == 0
    for fn in (mio.load_photo, mio.image_size, lambda q: mio.load_preview(q, 64),
               mio.load_mask):
        with pytest.raises(BadImage) as e:
            fn(p)
        assert not isinstance(e.value, ImageTooLarge)
    assert mio.mend_output_kind(p) is None


def test_jxl_header_scan_reads_box_headers_only(tmp_path, monkeypatch):
    """Thousands of boxes cost one small read each (bodies are skipped, never read)."""
    _need_jxl()
    code, _ = _codestream()
    body = b"\x00" * 1024
    p = tmp_path / "big_boxes.jxl"
    p.write_bytes(_container(*[_box(b"free", body)] * 1000, _box(b"jxlc", code)))
    reads: list[int] = []

    class Counting(io.FileIO):
        def read(self, n=-1):
            reads.append(n)
            return super().read(n)

    monkeypatch.setattr(mio, "open", lambda file, mode="r": Counting(file, mode), raising=False)
    assert mio._jxl_header(p) == (30, 20, 1)
    assert all(0 <= n <= 66 for n in reads) and len(reads) < 1100


def test_jxl_read_record_does_not_decode(tmp_path, no_decode):
    """mend_output_kind (thumbnails of a folder) reads a JPEG XL's XMP box, not its pixels."""
    _need_jxl()
    code, _ = _codestream()
    xmp = mio.xmp_with_record(None, {"software": "Mend t"})
    p = tmp_path / "r.jxl"
    p.write_bytes(_container(_box(b"xml ", xmp), _box(b"jxlc", code)))
    assert mio.read_record(p) == {"software": "Mend t"}
    assert mio.mend_output_kind(p) == "result"
