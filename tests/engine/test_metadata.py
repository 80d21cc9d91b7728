"""Metadata carried from a source to a result: the Mend record in XMP rewritten by other programs,
EXIF kept consistent with the result (resolution, orientation, size limits), colour of grey and
JPEG XL/HEIF sources."""
from __future__ import annotations

import html
import io
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import imageio as mio
from engine.api import OutputOptions
from tests.engine.test_imageio import _rgb

_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"


def _adobe_packet(record_xml: str, record_attr: str = "", extra: str = "") -> str:
    """An XMP packet as the Adobe XMP Toolkit (Lightroom, Bridge, Photoshop) writes it: one
    rdf:Description declaring every namespace, simple values as attributes."""
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000">\n'
            f' <rdf:RDF xmlns:rdf="{_RDF}">\n'
            '  <rdf:Description rdf:about=""\n'
            '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
            '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
            f'    xmlns:mend="{mio.MEND_XMP_NS}"\n'
            '    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"\n'
            f'   xmp:Rating="5"{record_attr}>\n'
            f'{record_xml}'
            f'{extra}'
            '   <dc:subject><rdf:Bag><rdf:li>grandma</rdf:li><rdf:li>1952</rdf:li></rdf:Bag>'
            '</dc:subject>\n'
            '   <dc:rights><rdf:Alt><rdf:li xml:lang="x-default">(c) Family archive</rdf:li>'
            '</rdf:Alt></dc:rights>\n'
            '  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end="w"?>')


def _parses(xmp: bytes) -> ET.Element:
    return ET.fromstring(xmp.decode("utf-8").lstrip("\ufeff"))


def _keeps_the_photographers_data(xmp: bytes) -> None:
    text = xmp.decode("utf-8")
    assert 'xmp:Rating="5"' in text and "<rdf:li>grandma</rdf:li>" in text
    assert "(c) Family archive" in text
    assert text.startswith("<?xpacket begin=") and text.endswith('<?xpacket end="w"?>')
    _parses(xmp)


# ------------------------------------------------------------- the Mend record in Adobe's XMP


def test_a_result_re_saved_by_adobe_keeps_keywords_rating_and_rights(tmp_path):
    first = mio.save_photo(_rgb(), tmp_path / "a_mend.jpg", record={"software": "Mend 1"})
    old = mio.load_photo(first).xmp.decode()
    rec = old.split("<mend:record>")[1].split("</mend:record>")[0]
    adobe = _adobe_packet(f"   <mend:record>{rec}</mend:record>\n")
    edited = tmp_path / "edited.jpg"
    Image.open(first).save(edited, quality=95, xmp=adobe.encode())
    ph = mio.load_photo(edited)
    out = mio.save_photo(ph.pixels, tmp_path / "again.jpg", like=ph,
                         record={"software": "Mend 2"})
    xmp = mio.load_photo(out).xmp
    _keeps_the_photographers_data(xmp)
    assert xmp.count(b"mend:record>") == 2  # one element: open and close tag
    assert mio.read_record(out) == {"software": "Mend 2"}


def test_a_nested_description_is_not_cut_in_half():
    struct_value = ('   <xmpMM:DerivedFrom><rdf:Description xmlns:stRef="http://ns.adobe.com/xap/'
                    '1.0/sType/ResourceRef#"><stRef:documentID>xmp.did:1</stRef:documentID>'
                    '</rdf:Description></xmpMM:DerivedFrom>\n')
    src = _adobe_packet('   <mend:record>{"software": "Mend 1"}</mend:record>\n',
                        extra=struct_value)
    merged = mio.xmp_with_record(src.encode(), {"software": "Mend 3"})
    _keeps_the_photographers_data(merged)
    assert b"<stRef:documentID>xmp.did:1</stRef:documentID>" in merged
    assert mio.record_from_xmp(merged) == {"software": "Mend 3"}
    assert merged.count(b"<mend:record>") == 1


def test_the_record_as_an_attribute_is_read_and_replaced(tmp_path):
    rec = {"kept_original": False, "software": "Mend 0.9.0", "steps": []}
    attr = html.escape(mio.json.dumps(rec), quote=True)
    adobe = _adobe_packet("", record_attr=f'\n   mend:record="{attr}"')
    p = tmp_path / "photo_mend.jpg"
    Image.fromarray((_rgb() * 255).astype(np.uint8)).save(p, quality=95, xmp=adobe.encode())
    assert mio.read_record(p) == rec
    assert mio.mend_output_kind(p) == "result"
    ph = mio.load_photo(p)
    out = mio.save_photo(ph.pixels, tmp_path / "again.jpg", like=ph,
                         record={"software": "Mend 1.0"})
    xmp = mio.load_photo(out).xmp
    _keeps_the_photographers_data(xmp)
    assert b"mend:record=" not in xmp and xmp.count(b"<mend:record>") == 1
    assert mio.read_record(out) == {"software": "Mend 1.0"}


def test_repeated_runs_leave_one_record_and_no_empty_descriptions():
    xmp = None
    for run in range(3):
        xmp = mio.xmp_with_record(xmp, {"run": run})
    assert xmp.count(b"<rdf:Description") == 1 and mio.record_from_xmp(xmp) == {"run": 2}
    _parses(xmp)


# ------------------------------------------------------------------- EXIF kept consistent


def _exif_with_resolution(res: float, unit: int) -> bytes:
    ex = Image.Exif()
    ex[0x010F] = "MendCam"
    ex[0x011A] = ex[0x011B] = res
    ex[0x0128] = unit
    return ex.tobytes()


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "tiff"])
@pytest.mark.parametrize("res,unit,expected", [(300.0, 2, 600.0), (118.11, 3, 236.22)])
def test_an_upscaled_result_says_one_resolution(tmp_path, fmt, res, unit, expected):
    src = tmp_path / "src.jpg"
    Image.fromarray((_rgb() * 255).astype(np.uint8)).save(
        src, quality=95, dpi=(300, 300), exif=_exif_with_resolution(res, unit))
    ph = mio.load_photo(src)
    up = np.repeat(np.repeat(ph.pixels, 2, 0), 2, 1)
    out = mio.save_photo(up, tmp_path / "x2", like=ph, options=OutputOptions(format=fmt))
    with Image.open(out) as im:
        exif = im.getexif()
        if fmt == "tiff":  # the TIFF writer writes its own resolution tags, in inches
            expected, unit = 600.0, 2
        assert float(exif[0x011A]) == pytest.approx(expected, rel=1e-3)
        assert float(exif[0x011B]) == pytest.approx(expected, rel=1e-3)
        assert exif.get(0x0128, 2) == unit
        assert exif[0x010F] == "MendCam"
        if fmt != "webp":  # Pillow reads no density of a WebP
            assert im.info["dpi"][0] == pytest.approx(600.0, rel=1e-3)


# -------------------------------------------------------------------------- colour of grey


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_grey_with_a_grey_profile_gets_the_tones_8bit_grey_gets(tmp_path, ext):
    icc = mio._grey_icc(1.8)  # 0.5 stored = 0.5 ** 1.8 of white = 0.573 in sRGB
    Image.fromarray(np.full((16, 16), 128, np.uint8), "L").save(tmp_path / "g8.png",
                                                                icc_profile=icc)
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    ramp[0, 0] = 32768
    Image.fromarray(ramp).save(tmp_path / f"g16{ext}", icc_profile=icc)
    g8 = mio.load_photo(tmp_path / "g8.png")
    g16 = mio.load_photo(tmp_path / f"g16{ext}")
    assert g16.bit_depth == 16 and g16.info["icc_converted"] == "grey profile -> sRGB"
    assert not g16.info["warnings"] and g16.icc_profile is None
    lin = 0.5 ** 1.8
    assert g16.pixels[0, 0, 0] == pytest.approx(1.055 * lin ** (1 / 2.4) - 0.055, abs=2e-3)
    assert abs(float(g16.pixels[0, 0, 0]) - float(g8.pixels[0, 0, 0])) < 1.5 / 255
    v = g16.pixels[..., 0].ravel()[1:]
    assert np.all(np.diff(v) >= 0) and len(np.unique(np.round(v * 65535))) > 250


# ---------------------------------------------------------------------------- EXIF size


def _big_exif() -> bytes:
    ex = Image.Exif()
    ex[0x010F] = "Canon"
    ex.get_ifd(0x8769)[0x9286] = b"ASCII\0\0\0" + b"x" * 70000  # a 70 KB UserComment
    ex.get_ifd(0x8825)[1] = "N"
    return ex.tobytes()


def test_exif_over_64kb_is_kept_where_the_format_holds_it(tmp_path):
    Image.fromarray((_rgb() * 255).astype(np.uint8)).save(tmp_path / "big.png",
                                                          exif=_big_exif())
    ph = mio.load_photo(tmp_path / "big.png")
    assert ph.exif is not None and len(ph.exif) > 65536 and not ph.info["warnings"]
    for fmt in ("png", "tiff", "webp"):
        notes: list[str] = []
        out = mio.save_photo(ph.pixels, tmp_path / "res", like=ph, notes=notes,
                             options=OutputOptions(format=fmt))
        with Image.open(out) as im:
            ex = im.getexif()
            assert ex.get(0x010F) == "Canon" and ex.get_ifd(0x8825).get(1) == "N", fmt
            assert len(ex.get_ifd(0x8769).get(0x9286, b"")) > 70000, fmt
        assert not notes
    notes = []
    out = mio.save_photo(ph.pixels, tmp_path / "res", like=ph, notes=notes,
                         options=OutputOptions(format="jpeg"), record={"software": "Mend t"})
    assert any("EXIF" in n and "too large for a JPEG" in n for n in notes)
    assert mio.read_record(out) == {"software": "Mend t"}
    with Image.open(out) as im:
        assert "exif" not in im.info


def test_a_raws_exif_over_64kb_is_read(tmp_path):
    p = tmp_path / "big.tif"  # tiff_exif reads any TIFF-based file
    Image.fromarray((_rgb() * 255).astype(np.uint8)).save(
        p, tiffinfo={271: "MendCam", 270: "d" * 40000, 315: "a" * 40000})
    from engine import rawio

    exif = rawio.tiff_exif(p)
    assert exif is not None and len(exif) > 80000
    assert mio.clean_exif(exif) is not None


def test_an_orientation_stored_as_long_is_reset_too(tmp_path):
    for bo in ("<", ">"):
        body = ((b"II*\x00" if bo == "<" else b"MM\x00*") + struct.pack(bo + "IH", 8, 1)
                + struct.pack(bo + "HHII", 0x0112, 4, 1, 6) + struct.pack(bo + "I", 0))
        p = tmp_path / f"long6{bo == '<'}.jpg"
        Image.fromarray(np.zeros((30, 48, 3), np.uint8)).save(p, exif=b"Exif\x00\x00" + body)
        ph = mio.load_photo(p)
        assert ph.pixels.shape[:2] == (48, 30) and mio.exif_orientation(ph.exif) == 1
        out = mio.save_photo(ph.pixels, tmp_path / "res.jpg", like=ph)
        with Image.open(out) as im:
            assert im.size == (30, 48) and im.getexif().get(0x0112) == 1


def test_16bit_grey_and_alpha_with_a_grey_profile_is_converted_too(tmp_path):
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    a = np.zeros((8, 8, 2), np.uint16)
    a[..., 0], a[..., 1] = 32768, 40000
    rows = b"".join(b"\0" + a[y].astype(">u2").tobytes() for y in range(8))
    p = tmp_path / "la16.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n"
                  + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 16, 4, 0, 0, 0))
                  + chunk(b"iCCP", b"grey\0\0" + zlib.compress(mio._grey_icc(1.8)))
                  + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    ph = mio.load_photo(p)
    assert ph.bit_depth == 16 and not ph.info["warnings"] and ph.icc_profile is None
    assert ph.pixels[0, 0, 0] == pytest.approx(1.055 * (0.5 ** 1.8) ** (1 / 2.4) - 0.055,
                                               abs=2e-3)
    assert ph.alpha[0, 0] == pytest.approx(40000 / 65535, abs=1e-6)


# ------------------------------------------------------------------- HEIF colour from nclx

_SRGB_XY = {"color_primary_red_x": 0.64, "color_primary_red_y": 0.33,
            "color_primary_green_x": 0.30, "color_primary_green_y": 0.60,
            "color_primary_blue_x": 0.15, "color_primary_blue_y": 0.06,
            "color_primary_white_x": 0.3127, "color_primary_white_y": 0.3290}
_P3_XY = {**_SRGB_XY, "color_primary_red_x": 0.68, "color_primary_red_y": 0.32,
          "color_primary_green_x": 0.265, "color_primary_green_y": 0.69}


def _to_srgb(icc: bytes, rgb8: np.ndarray) -> np.ndarray:
    from PIL import ImageCms

    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    im = ImageCms.profileToProfile(Image.fromarray(rgb8), src, ImageCms.createProfile("sRGB"),
                                   renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    return np.asarray(im).astype(float)


def _srgb_decode(v):
    v = np.asarray(v, float) / 255
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _srgb_encode(v):
    v = np.clip(v, 0, 1)
    return 255 * np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)


def test_an_nclx_colour_space_becomes_a_matching_icc_profile():
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    info: dict = {"warnings": []}
    same = mio._icc_from_nclx({"color_primaries": 99, "transfer_characteristics": 13,
                               **_SRGB_XY}, info)  # sRGB spelled out: must change nothing
    assert np.abs(_to_srgb(same, rgb) - rgb).max() <= 1.0
    p3 = mio._icc_from_nclx({"color_primaries": 12, "transfer_characteristics": 13, **_P3_XY},
                            info)
    assert info["icc_from_nclx"] == "Display P3, sRGB tone curve" and not info["warnings"]
    p3_to_srgb = np.array([[1.2249, -0.2247, 0.0], [-0.0420, 1.0419, 0.0],
                           [-0.0197, -0.0786, 1.0979]])
    inside = np.array([[[200, 60, 50], [90, 160, 120], [60, 70, 180], [128, 128, 128]]], np.uint8)
    expected = _srgb_encode(_srgb_decode(inside) @ p3_to_srgb.T)
    assert np.abs(_to_srgb(p3, inside) - expected).max() <= 1.5
    assert mio._icc_from_nclx({"color_primaries": 1, "transfer_characteristics": 13}, info) \
        is None  # plain sRGB: nothing to add


def test_a_heif_with_only_an_nclx_box_keeps_its_colours(tmp_path):
    if not mio.heif_supported():
        pytest.skip("the optional 'heif' extra (pillow-heif) is not installed")
    im = Image.fromarray(np.full((64, 64, 3), (200, 40, 40), np.uint8))
    im.save(tmp_path / "p3.heic", quality=-1, color_primaries=12, transfer_characteristics=13,
            matrix_coefficients=6, full_range_flag=1)
    ph = mio.load_photo(tmp_path / "p3.heic")
    assert ph.info["icc_from_nclx"] == "Display P3, sRGB tone curve"
    assert ph.icc_profile is not None and not ph.info["warnings"]
    out = mio.save_photo(ph.pixels, tmp_path / "res", like=ph)
    with Image.open(out) as res:
        assert res.info.get("icc_profile") == ph.icc_profile
    im.save(tmp_path / "pq.heic", quality=-1, color_primaries=9, transfer_characteristics=16,
            matrix_coefficients=6, full_range_flag=1)
    ph = mio.load_photo(tmp_path / "pq.heic")
    assert ph.icc_profile is None
    assert any("nclx" in w and "PQ" in w for w in ph.info["warnings"])


# ------------------------------------------------------------------ IPTC-IIM (Photoshop APP13)


def _dataset(rec: int, tag: int, value: bytes) -> bytes:
    return b"\x1c" + bytes([rec, tag]) + struct.pack(">H", len(value)) + value


# odd length on purpose: the 8BIM resource holding it needs its pad byte
_IIM = (_dataset(2, 120, b"Grandma at the 1952 harvest fair") + _dataset(2, 25, b"family")
        + _dataset(2, 25, b"1952") + _dataset(2, 116, b"(c) Smith archive"))
_IPTC_INFO = {(2, 120): b"Grandma at the 1952 harvest fair", (2, 25): [b"family", b"1952"],
              (2, 116): b"(c) Smith archive"}


def _segments(jpeg: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of a JPEG's segments up to the scan."""
    out, pos = [], 2
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF and jpeg[pos + 1] != 0xDA:
        (n,) = struct.unpack_from(">H", jpeg, pos + 2)
        out.append((jpeg[pos + 1], jpeg[pos + 4:pos + 2 + n]))
        pos += 2 + n
    return out


def _app13s(path) -> list[bytes]:
    return [s for m, s in _segments(Path(path).read_bytes()) if m == 0xED]


def _iptc_jpeg(path, resources: bytes | None = None, **save) -> bytes:
    """A JPEG with an APP13 as Photoshop writes it (after the APP0/APP1 segments); returns
    that APP13's payload."""
    buf = io.BytesIO()
    Image.fromarray((_rgb() * 255).astype(np.uint8)).save(buf, "JPEG", quality=95, **save)
    j = buf.getvalue()
    payload = b"Photoshop 3.0\x00" + (resources if resources is not None
                                      else mio._ps_resource(0x0404, _IIM))
    seg = b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload
    Path(path).write_bytes(mio._jpeg_insert(j, seg))
    return payload


def _iptc(path) -> dict | None:
    from PIL import IptcImagePlugin

    with Image.open(path) as im:
        return IptcImagePlugin.getiptcinfo(im)


def test_a_jpegs_iptc_is_carried_verbatim_into_a_jpeg_after_its_app1(tmp_path):
    src = tmp_path / "iptc.jpg"
    payload = _iptc_jpeg(src, exif=_exif_with_resolution(300.0, 2), xmp=_adobe_packet("").encode())
    assert len(_IIM) % 2 == 1 and _iptc(src) == _IPTC_INFO
    ph = mio.load_photo(src)
    assert ph.iptc == _IIM and not ph.info["warnings"]
    notes: list[str] = []
    out = mio.save_photo(ph.pixels, tmp_path / "res.jpg", like=ph, notes=notes,
                         record={"software": "Mend t"})
    assert _app13s(out) == [payload] and _iptc(out) == _IPTC_INFO and not notes
    markers = [m for m, _s in _segments(out.read_bytes())]
    assert markers.index(0xED) > max(i for i, m in enumerate(markers) if m in (0xE0, 0xE1))
    assert mio.read_record(out) == {"software": "Mend t"}  # the XMP is still found
    with Image.open(out) as im:
        assert im.getexif()[0x010F] == "MendCam"


def test_a_stale_photoshop_thumbnail_is_not_carried_with_the_iptc(tmp_path):
    digest = mio._ps_resource(0x0425, bytes(16))
    thumb = mio._ps_resource(0x040C, b"\x00" * 301)  # the source's pixels, not the result's
    src = tmp_path / "thumb.jpg"
    _iptc_jpeg(src, resources=mio._ps_resource(0x0404, _IIM) + thumb + digest)
    ph = mio.load_photo(src)
    out = mio.save_photo(ph.pixels, tmp_path / "res.jpg", like=ph)
    assert _app13s(out) == [b"Photoshop 3.0\x00" + mio._ps_resource(0x0404, _IIM) + digest]
    assert _iptc(out) == _IPTC_INFO


def test_iptc_goes_into_a_tiff_and_from_a_tiff_back_into_a_jpeg(tmp_path):
    src = tmp_path / "iptc.jpg"
    _iptc_jpeg(src)
    ph = mio.load_photo(src)
    tif = mio.save_photo(ph.pixels, tmp_path / "res", like=ph, options=OutputOptions(format="tiff"))
    with Image.open(tif) as im:
        assert im.tag_v2.tagtype[33723] == 7 and im.tag_v2._tagdata[33723] == _IIM
    assert _iptc(tif) == _IPTC_INFO
    back = mio.load_photo(tif)
    assert back.iptc == _IIM and "photoshop_resources" not in back.info
    out = mio.save_photo(back.pixels, tmp_path / "again.jpg", like=back)
    # wrapped as Photoshop does: signature, one 8BIM 0x0404 resource, even-padded
    assert _app13s(out) == [b"Photoshop 3.0\x00" + b"8BIM\x04\x04\x00\x00"
                            + struct.pack(">I", len(_IIM)) + _IIM + b"\x00"]
    assert _iptc(out) == _IPTC_INFO


def _tiff_with(tag: int, typ: int, value: bytes) -> bytes:
    """A 2x2 grey-ish RGB TIFF (big-endian, as Photoshop on a Mac writes) with one more tag."""
    size = {1: 1, 4: 4, 7: 1}[typ]
    entries = [(256, 3, 1, 2), (257, 3, 1, 2), (258, 3, 3, None), (259, 3, 1, 1),
               (262, 3, 1, 2), (273, 4, 1, None), (277, 3, 1, 3), (278, 3, 1, 2),
               (279, 4, 1, 12), (tag, typ, len(value) // size, None)]
    table_end = 8 + 2 + 12 * len(entries) + 4
    bps_at, pix_at = table_end, table_end + 6
    val_at = pix_at + 12
    out = b"MM\x00*" + struct.pack(">IH", 8, len(entries))
    for t, ty, count, v in sorted(entries):
        if t == 258:
            out += struct.pack(">HHII", t, ty, count, bps_at)
        elif t == 273:
            out += struct.pack(">HHII", t, ty, count, pix_at)
        elif t == tag:
            out += struct.pack(">HHII", t, ty, count, val_at)
        else:
            out += struct.pack(">HHI", t, ty, count) + (struct.pack(">HH", v, 0) if ty == 3
                                                        else struct.pack(">I", v))
    return out + struct.pack(">I", 0) + struct.pack(">HHH", 8, 8, 8) + bytes(range(12)) + value


def test_a_photoshop_tiffs_iptc_resource_is_read_and_long_padding_cut(tmp_path):
    for tag, typ, value in ((34377, 1, mio._ps_resource(0x0404, _IIM)),
                            (33723, 4, _IIM + b"\x00" * (-len(_IIM) % 4))):  # LONG, padded
        p = tmp_path / f"ps{tag}.tif"
        p.write_bytes(_tiff_with(tag, typ, value))
        ph = mio.load_photo(p)
        assert ph.iptc == _IIM and ph.pixels.shape == (2, 2, 3), tag


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_png_and_webp_results_say_the_iptc_was_not_carried(tmp_path, fmt):
    src = tmp_path / "iptc.jpg"
    _iptc_jpeg(src)
    ph = mio.load_photo(src)
    notes: list[str] = []
    mio.save_photo(ph.pixels, tmp_path / "res", like=ph, notes=notes,
                   options=OutputOptions(format=fmt))
    assert notes == [mio.IPTC_NOT_CARRIED]
    plain = mio.load_photo(mio.save_photo(ph.pixels, tmp_path / "plain.jpg"))
    notes = []
    mio.save_photo(plain.pixels, tmp_path / "res2", like=plain, notes=notes,
                   options=OutputOptions(format=fmt))
    assert notes == []


def test_no_metadata_drops_the_iptc_and_keeps_the_icc(tmp_path):
    icc = mio._icc_build(b"RGB ", "test", [])  # any RGB profile: kept whatever the options
    src = tmp_path / "iptc.jpg"
    _iptc_jpeg(src, icc_profile=icc)
    ph = mio.load_photo(src)
    assert ph.iptc == _IIM and ph.icc_profile == icc
    for fmt in ("jpeg", "tiff", "png", "webp"):
        notes: list[str] = []
        out = mio.save_photo(ph.pixels, tmp_path / "res", like=ph, notes=notes,
                             options=OutputOptions(format=fmt, keep_metadata=False))
        assert not notes, fmt
        assert _iptc(out) is None, fmt
        with Image.open(out) as im:
            assert im.info.get("icc_profile") == icc, fmt
        if fmt == "jpeg":
            assert _app13s(out) == []


def test_iptc_too_large_for_a_jpeg_is_kept_in_a_tiff_and_said_lost_in_a_jpeg(tmp_path):
    big = b"".join(_dataset(2, 25, b"k%05d" % i + b"x" * 60) for i in range(1100))  # ~73 KB
    ph = mio.load_photo(mio.save_photo(_rgb(), tmp_path / "src.jpg"))
    ph.iptc = big
    tif = mio.save_photo(ph.pixels, tmp_path / "res", like=ph, options=OutputOptions(format="tiff"))
    assert mio.load_photo(tif).iptc == big
    notes: list[str] = []
    out = mio.save_photo(ph.pixels, tmp_path / "res.jpg", like=ph, notes=notes)
    assert _app13s(out) == [] and any("IPTC" in n and "too large" in n for n in notes)


def test_damaged_iptc_is_dropped_with_a_warning(tmp_path):
    src = tmp_path / "bad.jpg"
    _iptc_jpeg(src, resources=mio._ps_resource(0x0404, b"\x00garbage"))
    ph = mio.load_photo(src)
    assert ph.iptc is None and ph.info["warnings"] == ["dropped unreadable IPTC data"]
    src2 = tmp_path / "cut.jpg"  # a resource cut short: nothing read, nothing fails
    _iptc_jpeg(src2, resources=mio._ps_resource(0x0404, _IIM)[:-20])
    assert mio.load_photo(src2).iptc is None
    # an IIM whose last dataset runs past the end keeps the whole datasets before it
    assert mio._iim_clean(_IIM + _dataset(2, 25, b"cut")[:-1]) == _IIM
    ext = b"\x1c\x02\x19\x80\x02\x00\x03abc"  # extended length (2 bytes) form
    assert mio._iim_clean(ext + b"\x00\x00") == ext
