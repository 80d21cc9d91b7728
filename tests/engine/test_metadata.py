"""Metadata carried from a source to a result: the Mend record in XMP rewritten by other programs,
EXIF kept consistent with the result (resolution, orientation, size limits), colour of grey and
JPEG XL/HEIF sources."""
from __future__ import annotations

import html
import io
import struct
import xml.etree.ElementTree as ET
import zlib

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
