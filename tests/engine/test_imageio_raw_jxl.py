"""Camera RAW (real LibRaw through rawpy) and JPEG XL (pillow-jxl-plugin) input in engine.imageio.

No RAW file ships with the shared images, so the tests build small valid DNGs themselves: a
16-bit RGGB Bayer mosaic of four coloured squares (DNGVersion, CFA pattern, ColorMatrix1,
AsShotNeutral, Orientation, Make/Model/DateTime, an Exif IFD), optionally with the JPEG preview
in IFD0 and the mosaic in a SubIFD as cameras write it. Nothing in the decoders is mocked.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import imageio as mio
from engine.api import OutputOptions
from engine.errors import BadImage, ImageTooLarge
from tests import warm_cli

ROOT = Path(__file__).resolve().parents[2]
rawpy = pytest.importorskip("rawpy", reason="the optional 'raw' extra (rawpy) is not installed")

# ----------------------------------------------------------------------------- a synthetic DNG

XYZ_TO_SRGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                        [-0.9692660, 1.8760108, 0.0415560],
                        [0.0556434, -0.2040259, 1.0572252]])
PATCHES = {"red": (0.7, 0.04, 0.04), "green": (0.04, 0.5, 0.04), "blue": (0.04, 0.05, 0.7),
           "grey": (0.18, 0.18, 0.18)}  # linear sRGB
LAYOUT = (("red", "green"), ("blue", "grey"))  # quadrants as stored on the sensor
GAINS = (0.5, 1.0, 0.7)  # the synthetic camera's channel response relative to linear sRGB
H, W = 96, 128  # stored size (landscape)
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
       b'22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
       b'xmlns:xmp="http://ns.adobe.com/xap/1.0/" tiff:Orientation="%d" xmp:Rating="4"/>'
       b"</rdf:RDF></x:xmpmeta>")


def _srgb(x: float) -> float:
    return 12.92 * x if x <= 0.0031308 else 1.055 * x ** (1 / 2.4) - 0.055


def _mosaic(black: int, white: int) -> np.ndarray:
    lin = np.zeros((H, W, 3))
    for i, row in enumerate(LAYOUT):
        for j, name in enumerate(row):
            lin[i * H // 2:(i + 1) * H // 2, j * W // 2:(j + 1) * W // 2] = PATCHES[name]
    lin *= np.array(GAINS)
    cfa = np.empty((H, W))
    cfa[0::2, 0::2] = lin[0::2, 0::2, 0]  # R G
    cfa[0::2, 1::2] = lin[0::2, 1::2, 1]  # G B
    cfa[1::2, 0::2] = lin[1::2, 0::2, 1]
    cfa[1::2, 1::2] = lin[1::2, 1::2, 2]
    return np.round(black + cfa * (white - black)).astype("<u2")


_FMT = {1: "B", 3: "H", 4: "I", 5: "II", 10: "ii"}


def _ifd(entries: dict[int, tuple[int, object]], base: int) -> bytes:
    """One little-endian IFD at file offset ``base`` (values that do not fit follow it)."""
    table = struct.pack("<H", len(entries))
    extra = b""
    data_at = base + 2 + 12 * len(entries) + 4
    for tag in sorted(entries):
        typ, vals = entries[tag]
        if typ in (2, 7):
            payload, count = bytes(vals), len(vals)
        elif typ in (5, 10):
            payload = b"".join(struct.pack("<" + _FMT[typ], *v) for v in vals)
            count = len(vals)
        else:
            payload = b"".join(struct.pack("<" + _FMT[typ], v) for v in vals)
            count = len(vals)
        if len(payload) <= 4:
            table += struct.pack("<HHI", tag, typ, count) + payload.ljust(4, b"\0")
        else:
            table += struct.pack("<HHII", tag, typ, count, data_at + len(extra))
            extra += payload + (b"\0" if len(payload) % 2 else b"")
    return table + struct.pack("<I", 0) + extra


def _rat(x: float) -> tuple[int, int]:
    return (round(x * 10000), 10000)


def make_dng(orientation: int = 6, *, preview: bytes | None = None, size: tuple[int, int] | None
             = None, black: int = 64, white: int = 4095, xmp: bool = True,
             iptc: bytes | None = None) -> bytes:
    """A valid uncompressed DNG 1.4. With ``preview`` (JPEG bytes, W x H) IFD0 is that preview
    and the mosaic sits in a SubIFD, as cameras write them. ``size`` overrides the declared
    (width, height) of the mosaic (for the pixel-limit test: no data for it is written).
    ``xmp=False`` leaves the XMP (tag 700) out; ``iptc`` adds IIM bytes as tag 33723."""
    raw = _mosaic(black, white).tobytes()
    w, h = size or (W, H)
    cm = np.diag(GAINS) @ XYZ_TO_SRGB
    cfa_ifd: dict[int, tuple[int, object]] = {
        254: (4, [0]), 256: (4, [w]), 257: (4, [h]), 258: (3, [16]), 259: (3, [1]),
        262: (3, [32803]), 277: (3, [1]), 278: (4, [h]), 279: (4, [len(raw)]), 284: (3, [1]),
        33421: (3, [2, 2]), 33422: (1, [0, 1, 1, 2]), 50710: (1, [0, 1, 2]), 50711: (3, [1]),
        50714: (3, [black]), 50717: (3, [white]),
    }
    main: dict[int, tuple[int, object]] = {
        271: (2, b"MendCam\0"), 272: (2, b"Synthetic DNG 1\0"), 274: (3, [orientation]),
        305: (2, b"mend-test\0"), 306: (2, b"2024:05:06 07:08:09\0"),
        50706: (1, [1, 4, 0, 0]), 50707: (1, [1, 1, 0, 0]),
        50708: (2, b"MendCam Synthetic DNG 1\0"),
        50721: (10, [_rat(x) for x in cm.ravel()]), 50728: (5, [_rat(g) for g in GAINS]),
        50778: (3, [21]),  # D65
    }
    if xmp:
        main[700] = (1, list(XMP % orientation))
    if iptc:
        main[33723] = (7, iptc)
    exif = {33434: (5, [(1, 125)]), 34855: (3, [200]), 36867: (2, b"2024:05:06 07:08:09\0")}

    def assemble(data_at: int) -> bytes:
        out = bytearray(b"II*\0\0\0\0\0")
        cfa = {**cfa_ifd, 273: (4, [data_at])}
        ifd0 = dict(main)
        if preview is None:
            ifd0.update(cfa)
        else:
            sub_off = len(out)
            out += _ifd(cfa, sub_off)
            ifd0.update({254: (4, [1]), 256: (4, [W]), 257: (4, [H]), 258: (3, [8, 8, 8]),
                         259: (3, [7]), 262: (3, [6]), 273: (4, [data_at + len(raw)]),
                         277: (3, [3]), 278: (4, [H]), 279: (4, [len(preview)]),
                         284: (3, [1]), 330: (4, [sub_off])})
        exif_off = len(out)
        out += _ifd(exif, exif_off)
        ifd0[34665] = (4, [exif_off])
        ifd0_off = len(out)
        out += _ifd(ifd0, ifd0_off)
        struct.pack_into("<I", out, 4, ifd0_off)
        return bytes(out)

    head_len = len(assemble(0))
    return assemble(head_len) + raw + (preview or b"")


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _upright(layout, orientation: int):
    """The expected quadrant names after the display orientation is applied."""
    a = np.array(layout, dtype=object)
    return {1: a, 3: np.rot90(a, 2), 6: np.rot90(a, -1), 8: np.rot90(a, 1)}[orientation]


def _quadrant_means(px: np.ndarray) -> list[list[np.ndarray]]:
    h, w = px.shape[:2]
    return [[px[i * h // 2 + h // 8:(i + 1) * h // 2 - h // 8,
                j * w // 2 + w // 8:(j + 1) * w // 2 - w // 8].reshape(-1, 3).mean(0)
             for j in range(2)] for i in range(2)]


@pytest.fixture(scope="module")
def dng(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("raw") / "IMG_0001.DNG"
    p.write_bytes(make_dng(6))
    return p


# ----------------------------------------------------------------------------------- RAW tests


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_dng_decodes_upright_with_the_right_colours(tmp_path, orientation):
    p = tmp_path / "shot.dng"
    p.write_bytes(make_dng(orientation))
    ph = mio.load_photo(p)
    assert ph.format == "DNG" and ph.bit_depth == 16 and ph.info["decoder"] == "rawpy"
    assert ph.pixels.dtype == np.float32 and ph.pixels.flags.c_contiguous
    assert ph.pixels.shape == ((W, H, 3) if orientation in (6, 8) else (H, W, 3))
    assert ph.info["exif_orientation"] == orientation
    means = _quadrant_means(ph.pixels)
    expected = _upright(LAYOUT, orientation)
    for i in range(2):
        for j in range(2):
            name, m = expected[i][j], means[i][j]
            want = np.array([_srgb(v) for v in PATCHES[name]])
            # camera white balance + colour matrix + sRGB curve give the scene's sRGB back
            assert np.abs(m - want).max() < 0.03, (orientation, name, m, want)
            if name == "grey":
                assert np.ptp(m) < 0.01  # neutral: the camera's white balance was applied
            else:
                assert int(np.argmax(m)) == ["red", "green", "blue"].index(name)
    # 16-bit precision survives (values between the 8-bit steps exist)
    assert np.any(np.abs(ph.pixels * 255 - np.round(ph.pixels * 255)) > 0.05)


def test_dng_metadata_is_carried_with_orientation_reset(dng):
    ph = mio.load_photo(dng)
    assert ph.exif is not None and "exif_note" not in ph.info
    ex = Image.Exif()
    ex.load(ph.exif)
    assert ex[271] == "MendCam" and ex[272] == "Synthetic DNG 1"
    assert ex[306] == "2024:05:06 07:08:09" and ex[274] == 1  # LibRaw rotated: applied once
    sub = ex.get_ifd(0x8769)
    assert sub[34855] == 200 and float(sub[33434]) == pytest.approx(1 / 125)
    assert sub[36867] == "2024:05:06 07:08:09"
    assert ph.info["white_balance"] == "camera"
    assert b'xmp:Rating="4"' in ph.xmp and b'tiff:Orientation="1"' in ph.xmp


def test_dng_exports_as_16bit_tiff_and_source_untouched(dng, tmp_path):
    before = dng.read_bytes()
    ph = mio.load_photo(dng)
    dest = mio.output_path_for(dng, OutputOptions(out_dir=tmp_path))
    assert dest.suffix == ".tif"
    out = mio.save_photo(ph.pixels, tmp_path / "result", like=ph)  # format from the source
    assert out.suffix == ".tif"
    back = mio.load_photo(out)
    assert back.format == "TIFF" and back.bit_depth == 16
    assert np.abs(back.pixels - ph.pixels).max() < 1 / 65535 + 1e-6
    ex = Image.Exif()
    ex.load(back.exif)
    assert ex[271] == "MendCam" and ex.get_ifd(0x8769)[34855] == 200
    assert dng.read_bytes() == before


def test_dng_with_embedded_preview_loads_the_raw_and_previews_the_jpeg(tmp_path):
    # the preview differs from the RAW on purpose: magenta left half, yellow right half (stored)
    pv = np.zeros((H, W, 3), np.uint8)
    pv[:, :W // 2] = (230, 20, 230)
    pv[:, W // 2:] = (230, 230, 20)
    p = tmp_path / "cam.dng"
    p.write_bytes(make_dng(6, preview=_jpeg(pv)))
    ph = mio.load_photo(p)  # the mosaic from the SubIFD, not the JPEG in IFD0
    assert ph.format == "DNG" and ph.pixels.shape == (W, H, 3)
    assert int(np.argmax(_quadrant_means(ph.pixels)[0][1])) == 0  # red top right, as above
    t0 = time.perf_counter()
    small = mio.load_preview(p, 64)
    took = time.perf_counter() - t0
    assert small.dtype == np.uint8 and small.shape == (64, 48, 3)  # upright, fitted
    top, bottom = small[:16].reshape(-1, 3).mean(0), small[-16:].reshape(-1, 3).mean(0)
    assert top[1] < 80 and top[2] > 180  # magenta on top: the JPEG preview, rotated once
    assert bottom[2] < 80 and bottom[1] > 180
    assert took < 2.0


def test_dng_without_preview_gets_a_half_size_preview(dng):
    small = mio.load_preview(dng, 40)
    assert small.dtype == np.uint8 and small.shape == (40, 30, 3)
    tr = small[2:16, 17:28].reshape(-1, 3).mean(0)  # top right quadrant: red
    assert tr[0] > 150 and tr[1] < 110 and tr[2] < 110


def test_image_size_without_decoding(dng):
    assert mio.image_size(dng) == (W, H)  # (height, width) of the upright photo


def test_truncated_dng_is_bad_image(tmp_path):
    data = make_dng(1)
    p = tmp_path / "cut.dng"
    p.write_bytes(data[:len(data) - 2 * H * W // 3])  # cut inside the mosaic
    with pytest.raises(BadImage, match="truncated"):
        mio.load_photo(p)
    q = tmp_path / "header_only.dng"
    q.write_bytes(data[:40])
    with pytest.raises(BadImage):
        mio.load_photo(q)
    with pytest.raises(BadImage):
        mio.load_preview(q, 32)


def test_pixel_limit_stops_a_huge_dng_before_any_decoding(tmp_path):
    p = tmp_path / "bomb.dng"
    p.write_bytes(make_dng(1, size=(40000, 30000)))  # declares 1.2 gigapixels, holds 12 kB
    t0 = time.perf_counter()
    for call in (lambda: mio.load_photo(p), lambda: mio.load_preview(p, 64),
                 lambda: mio.image_size(p)):
        with pytest.raises(ImageTooLarge):  # not the "truncated" a decode would give
            call()
    assert time.perf_counter() - t0 < 2.0
    small = tmp_path / "small.dng"
    small.write_bytes(make_dng(1))
    with pytest.raises(ImageTooLarge):
        mio.load_photo(small, max_pixels=H * W - 1)
    assert mio.load_photo(small, max_pixels=H * W).pixels.shape == (H, W, 3)


def test_content_wins_over_the_extension(tmp_path, dng):
    fake = tmp_path / "really_png.dng"
    Image.fromarray(np.full((10, 12, 3), 200, np.uint8)).save(fake, "PNG")
    ph = mio.load_photo(fake)
    assert ph.format == "PNG" and ph.pixels.shape == (10, 12, 3) and ph.bit_depth == 8
    disguised = tmp_path / "holiday.jpg"
    disguised.write_bytes(dng.read_bytes())
    ph = mio.load_photo(disguised)
    assert ph.format == "DNG" and ph.bit_depth == 16
    garbage = tmp_path / "noise.nef"
    garbage.write_bytes(os.urandom(3000))
    with pytest.raises(BadImage):
        mio.load_photo(garbage)


def test_export_follows_the_content_not_the_extension(tmp_path, dng):
    """A PNG named .dng exports as PNG; a real DNG (whatever its name) as a 16-bit TIFF."""
    fake = tmp_path / "really_png.dng"
    Image.fromarray(np.full((10, 12, 3), 200, np.uint8)).save(fake, "PNG")
    ph = mio.load_photo(fake)
    dest = mio.output_path_for(fake, OutputOptions(), source_format=ph.format)
    assert dest.name == "really_png_mend.png"
    out = mio.save_photo(ph.pixels, dest, like=ph)
    assert out == dest and Image.open(out).format == "PNG"
    disguised = tmp_path / "holiday.png"
    disguised.write_bytes(dng.read_bytes())
    ph = mio.load_photo(disguised)
    dest = mio.output_path_for(disguised, OutputOptions(), source_format=ph.format)
    assert dest.name == "holiday_mend.tif"
    out = mio.save_photo(ph.pixels, dest, like=ph)
    back = mio.load_photo(out)
    assert out == dest and back.format == "TIFF" and back.bit_depth == 16
    assert mio.output_path_for(dng, source_format="DNG").suffix == ".tif"


def test_ordinary_tiff_is_not_taken_for_a_raw(tmp_path):
    p = tmp_path / "plain.tif"
    Image.fromarray(np.full((8, 9, 3), 90, np.uint8)).save(p, "TIFF")
    assert mio.load_photo(p).format == "TIFF"


def test_raw_and_jxl_extensions_are_photos(tmp_path):
    for name in ("a.DNG", "b.cr2", "c.CR3", "d.nef", "e.arw", "f.raf", "g.orf", "h.rw2",
                 "i.pef", "j.srw", "k.jxl"):
        (tmp_path / name).write_bytes(b"x")
        assert mio.is_photo_path(Path(name))
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in mio.iter_photos([tmp_path])] == [
        "a.DNG", "b.cr2", "c.CR3", "d.nef", "e.arw", "f.raf", "g.orf", "h.rw2", "i.pef",
        "j.srw", "k.jxl"]
    assert mio.output_path_for(tmp_path / "k.jxl").suffix == ".png"
    assert mio.output_path_for(tmp_path / "f.raf").suffix == ".tif"


# ------------------------------------------------------------------------------ XMP sidecars

LR_SIDECAR = ('<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0">\n'
              ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
              '  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
              '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
              '    xmlns:tiff="http://ns.adobe.com/tiff/1.0/"\n'
              '    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"\n'
              '   xmp:Rating="5" tiff:Orientation="6" crs:Exposure2012="+1.50"'
              ' crs:HasSettings="True">\n'
              '   <dc:subject><rdf:Bag><rdf:li>grandma</rdf:li></rdf:Bag></dc:subject>\n'
              '   <crs:ToneCurvePV2012><rdf:Seq><rdf:li>0, 0</rdf:li></rdf:Seq>'
              '</crs:ToneCurvePV2012>\n'
              '  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n')
DT_SIDECAR = ('<?xml version="1.0" encoding="UTF-8"?>\n'
              '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">\n'
              ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
              '  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
              '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
              '    xmlns:darktable="http://darktable.sf.net/"\n'
              '   xmp:Rating="3" darktable:xmp_version="5" darktable:history_end="1">\n'
              '   <darktable:colorlabels><rdf:Seq><rdf:li>0</rdf:li></rdf:Seq>'
              '</darktable:colorlabels>\n'
              '   <dc:subject><rdf:Bag><rdf:li>harvest fair</rdf:li></rdf:Bag></dc:subject>\n'
              '   <darktable:history><rdf:Seq><rdf:li darktable:operation="exposure"'
              ' darktable:params="0000"/></rdf:Seq></darktable:history>\n'
              '  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n')


def _result_xmp(ph, tmp_path) -> bytes:
    out = mio.save_photo(ph.pixels, tmp_path / "result", like=ph, record={"software": "Mend t"})
    back = mio.load_photo(out)
    assert mio.record_from_xmp(back.xmp) == {"software": "Mend t"}
    return back.xmp


def test_a_dng_without_xmp_takes_its_sidecar(tmp_path):
    p = tmp_path / "IMG_0001.DNG"
    p.write_bytes(make_dng(1, xmp=False))
    (tmp_path / "IMG_0001.xmp").write_text(LR_SIDECAR)
    ph = mio.load_photo(p)
    assert ph.info["xmp_source"] == "sidecar IMG_0001.xmp" and not ph.info["warnings"]
    xmp = _result_xmp(ph, tmp_path)
    assert b"<rdf:li>grandma</rdf:li>" in xmp and b'xmp:Rating="5"' in xmp
    assert b'tiff:Orientation="1"' in xmp  # LibRaw rotated the pixels: the sidecar's reset too
    assert b"crs:" not in xmp.replace(b"xmlns:crs", b"")  # develop settings stay behind
    assert xmp.startswith(b"<?xpacket begin=")


def test_a_dngs_embedded_xmp_wins_over_a_sidecar(tmp_path):
    p = tmp_path / "IMG_0001.DNG"
    p.write_bytes(make_dng(1))
    (tmp_path / "IMG_0001.xmp").write_text(LR_SIDECAR)
    ph = mio.load_photo(p)
    assert "xmp_source" not in ph.info and b'xmp:Rating="4"' in ph.xmp
    assert b"grandma" not in ph.xmp


@pytest.fixture
def nef(tmp_path, monkeypatch) -> Path:
    """A proprietary RAW: the synthetic DNG (with its embedded XMP) taken for a NEF."""
    from engine import rawio

    real = rawio.sniff
    monkeypatch.setattr(rawio, "sniff", lambda p: "NEF" if p.suffix == ".NEF" else real(p))
    p = tmp_path / "DSC_0001.NEF"
    p.write_bytes(make_dng(1))
    return p


def test_a_proprietary_raws_sidecar_is_authoritative(nef, tmp_path):
    (tmp_path / "DSC_0001.NEF.xmp").write_text(DT_SIDECAR)  # darktable's name
    ph = mio.load_photo(nef)
    assert ph.format == "NEF" and ph.info["xmp_source"] == "sidecar DSC_0001.NEF.xmp"
    xmp = _result_xmp(ph, tmp_path)
    assert b"<rdf:li>harvest fair</rdf:li>" in xmp and b'xmp:Rating="3"' in xmp
    assert b'xmp:Rating="4"' not in xmp  # the embedded XMP is replaced, not merged
    assert b"darktable:colorlabels" in xmp  # a colour label describes the photo
    assert b"darktable:history" not in xmp and b"darktable:xmp_version" not in xmp
    assert b"<?xml" not in xmp


def test_the_newer_of_two_sidecars_is_taken(nef, tmp_path):
    lr, dt = tmp_path / "DSC_0001.xmp", tmp_path / "DSC_0001.NEF.xmp"
    lr.write_text(LR_SIDECAR)
    dt.write_text(DT_SIDECAR)
    os.utime(dt, (time.time() - 3600, time.time() - 3600))
    assert mio.load_photo(nef).info["xmp_source"] == "sidecar DSC_0001.xmp"
    os.utime(lr, (time.time() - 7200, time.time() - 7200))
    assert mio.load_photo(nef).info["xmp_source"] == "sidecar DSC_0001.NEF.xmp"


@pytest.mark.parametrize("bad,reason", [
    (('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
      '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
      '22-rdf-syntax-ns#"><rdf:Description dc:title="&b;"/></rdf:RDF></x:xmpmeta>'), "DTD"),
    ("huge", "larger than 4 MB"),
    ("<html><body>not xmp</body></html>", "not XMP"),
    (LR_SIDECAR[:-40], "not well-formed"),
    (b"\xff\xfe<\x00x\x00", "not UTF-8"),
])
def test_a_bad_sidecar_is_ignored_with_a_warning(nef, tmp_path, caplog, bad, reason):
    side = tmp_path / "DSC_0001.xmp"
    if bad == "huge":  # a keyword list that never ends
        head = LR_SIDECAR.split("<rdf:li>grandma")[0].encode()
        with open(side, "wb") as f:
            f.write(head)
            f.write(b"<rdf:li>k</rdf:li>" * 250_000)
    else:
        side.write_bytes(bad if isinstance(bad, bytes) else bad.encode())
    ph = mio.load_photo(nef)
    assert "xmp_source" not in ph.info and b'xmp:Rating="4"' in ph.xmp  # the embedded XMP
    assert len(ph.info["warnings"]) == 1
    assert "ignored the XMP sidecar DSC_0001.xmp" in ph.info["warnings"][0]
    assert reason in ph.info["warnings"][0] and "DSC_0001.xmp" in caplog.text


def test_a_sidecar_that_is_not_a_file_is_not_read(nef, tmp_path):
    os.mkfifo(tmp_path / "DSC_0001.xmp")  # reading would block for ever
    ph = mio.load_photo(nef)
    assert "xmp_source" not in ph.info and "not a regular file" in ph.info["warnings"][0]


def test_a_raws_iptc_is_carried(tmp_path):
    iim = b"\x1c\x02\x19\x00\x06family\x1c\x02\x78\x00\x07Grandma"
    p = tmp_path / "IMG_0002.DNG"
    p.write_bytes(make_dng(1, iptc=iim))
    ph = mio.load_photo(p)
    assert ph.iptc == iim
    out = mio.save_photo(ph.pixels, tmp_path / "res", like=ph)
    assert mio.load_photo(out).iptc == iim


# ----------------------------------------------------------------------------------- JPEG XL


def _need_jxl():
    if not mio.jxl_supported():
        pytest.skip("the optional 'jxl' extra (pillow-jxl-plugin) is not installed")


def _icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_jxl_8bit_lossless_round_trip_with_exif_and_icc(tmp_path):
    _need_jxl()
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    ex = Image.Exif()
    ex[271] = "JxlCam"
    ex[306] = "2025:01:02 03:04:05"
    icc = _icc()
    p = tmp_path / "a.jxl"
    Image.fromarray(a).save(p, "JXL", lossless=True, effort=1, num_threads=1, exif=ex.tobytes(),
                            icc_profile=icc, use_original_profile=True)
    ph = mio.load_photo(p)
    assert ph.format == "JXL" and ph.bit_depth == 8 and ph.pixels.shape == (40, 56, 3)
    assert np.array_equal(np.round(ph.pixels * 255).astype(np.uint8), a)
    back = Image.Exif()
    back.load(ph.exif)
    assert back[271] == "JxlCam" and back[306] == "2025:01:02 03:04:05"
    assert ph.icc_profile and ph.icc_profile[16:20] == b"RGB "
    assert mio.image_size(p) == (40, 56)
    small = mio.load_preview(p, 28)
    assert small.shape == (20, 28, 3) and small.dtype == np.uint8
    out = mio.save_photo(ph.pixels, tmp_path / "out", like=ph)
    assert out.suffix == ".png"
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), a)


_JXL_XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
            b'02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/'
            b'xap/1.0/" xmp:Rating="3"/></rdf:RDF></x:xmpmeta>')


def _jxl_with_xmp(p: Path) -> Path:
    a = np.random.default_rng(5).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(a).save(p, "JXL", lossless=True, effort=1, num_threads=1, xmp=_JXL_XMP)
    return p


def _boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 12
    while pos < len(data):
        size, btype = struct.unpack_from(">I4s", data, pos)
        size = size or len(data) - pos
        out.append((btype, data[pos + 8:pos + size]))
        pos += size
    return out


def test_jxl_xmp_is_read_from_its_box_and_carried_to_the_result(tmp_path):
    _need_jxl()
    p = _jxl_with_xmp(tmp_path / "x.jxl")
    assert any(t == b"xml " for t, _ in _boxes(p.read_bytes()))
    ph = mio.load_photo(p)
    assert ph.xmp == _JXL_XMP and not ph.info["warnings"]
    out = mio.save_photo(ph.pixels, tmp_path / "o", like=ph, record={"software": "Mend t"})
    back = mio.load_photo(out).xmp
    assert b'xmp:Rating="3"' in back and mio.read_record(out) == {"software": "Mend t"}


def _brotli_stored(data: bytes) -> bytes:
    """A valid brotli stream holding ``data`` (at most 64 KB) uncompressed (RFC 7932: WBITS 16,
    one uncompressed meta-block, then an empty last one)."""
    head = ((len(data) - 1) << 4) | (1 << 20)  # MNIBBLES 4, MLEN - 1, ISUNCOMPRESSED
    return head.to_bytes(3, "little") + data + b"\x03"


class _StoredBrotli:
    """Stands in for the brotli package (not installed here): decodes ``_brotli_stored``."""

    def __init__(self):
        self.buf, self.sent = b"", 0

    def process(self, chunk: bytes) -> bytes:
        self.buf += chunk
        if len(self.buf) < 3:
            return b""
        n = ((int.from_bytes(self.buf[:3], "little") >> 4) & 0xFFFF) + 1
        got = self.buf[3:3 + n]
        out, self.sent = got[self.sent:], len(got)
        return out


def test_jxl_brotli_compressed_xmp_is_read_or_said_lost(tmp_path, monkeypatch):
    _need_jxl()
    data = _jxl_with_xmp(tmp_path / "x.jxl").read_bytes()
    brob = b"xml " + _brotli_stored(_JXL_XMP)
    body = b"".join(
        struct.pack(">I4s", 8 + len(brob), b"brob") + brob if t == b"xml "
        else struct.pack(">I4s", 8 + len(d), t) + d for t, d in _boxes(data))
    p = tmp_path / "brob.jxl"
    p.write_bytes(data[:12] + body)
    assert not any(t == b"xml " for t, _ in _boxes(p.read_bytes()))

    monkeypatch.setitem(sys.modules, "brotli", None)  # not installed: said, not silently lost
    ph = mio.load_photo(p)
    assert ph.xmp is None
    assert any("brotli" in w and "XMP" in w for w in ph.info["warnings"])

    fake = type(sys)("brotli")
    fake.Decompressor = _StoredBrotli
    monkeypatch.setitem(sys.modules, "brotli", fake)
    ph = mio.load_photo(p)
    assert ph.xmp == _JXL_XMP and not ph.info["warnings"]


def test_jxl_16bit_grey_keeps_16_bits_and_exports_16bit_png(tmp_path):
    _need_jxl()
    g = np.random.default_rng(4).integers(0, 65536, (30, 20), dtype=np.uint16)
    p = tmp_path / "g16.jxl"
    Image.fromarray(g).save(p, "JXL", lossless=True, effort=1, num_threads=1)
    ph = mio.load_photo(p)
    assert ph.bit_depth == 16 and ph.pixels.shape == (30, 20, 3)
    # the plugin tags 16-bit grey as linear (libjxl's "Gra_D65_Rel_Lin" profile): it is
    # converted to sRGB like any grey with a grey profile, in 16 bits
    assert ph.info["icc_converted"] == "grey profile -> sRGB"
    lin = g / 65535.0
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    assert np.abs(ph.pixels[..., 0] - srgb).max() < 3 / 65535
    got = np.round(ph.pixels[..., 0] * 65535).astype(np.uint16)
    out = mio.save_photo(ph.pixels, tmp_path / "o", like=ph)
    back = mio.load_photo(out)
    assert out.suffix == ".png" and back.bit_depth == 16
    assert np.array_equal(np.round(back.pixels[..., 0] * 65535).astype(np.uint16), got)


def _cjxl(src: Path, dst: Path) -> Path:
    """Lossless JXL by libjxl's own encoder: pillow-jxl-plugin cannot write 16-bit colour (its
    encoder takes RGB, RGBA, L, LA, I;16, F) nor 16-bit grey with alpha."""
    import shutil

    exe = shutil.which("cjxl")
    if exe is None:
        pytest.skip("cjxl (Debian's libjxl-tools) is needed to make a 16-bit colour JPEG XL")
    r = subprocess.run([exe, "-d", "0", "-e", "1", str(src), str(dst)], capture_output=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return dst


def _png16(path: Path, a: np.ndarray) -> Path:
    """A 16-bit PNG of (H, W, C) uint16 (C = 2: grey + alpha, 3: RGB), written by hand."""
    import zlib

    h, w, c = a.shape
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    rows = b"".join(b"\0" + a[y].astype(">u2").tobytes() for y in range(h))
    colour = {2: 4, 3: 2}[c]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour,
                     0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def test_jxl_header_bit_depth(tmp_path):
    _need_jxl()
    p8 = tmp_path / "c8.jxl"
    Image.fromarray(np.zeros((8, 24, 3), np.uint8)).save(p8, "JXL", lossless=True, effort=1)
    assert mio._jxl_bit_depth(p8) == 8
    g16 = tmp_path / "g16.jxl"
    Image.fromarray(np.zeros((8, 24), np.uint16)).save(g16, "JXL", lossless=True, effort=1)
    assert mio._jxl_bit_depth(g16) == 16
    c16 = _cjxl(_png16(tmp_path / "c16.png", np.zeros((8, 24, 3), np.uint16)),
                tmp_path / "c16.jxl")
    assert mio._jxl_bit_depth(c16) == 16 and mio._jxl_header(c16) == (24, 8, 1)
    assert mio._jxl_bit_depth(tmp_path / "c16.png") is None


def test_jxl_16bit_colour_is_8bit_from_the_plugin_and_says_so(tmp_path, caplog):
    """pillow-jxl-plugin (1.3.8) hands colour JXL out as 8 bits (``pixel >> 8``): Mend's
    bit_depth says 8, the source's 16 is recorded with a warning, the export is 8-bit."""
    _need_jxl()
    a = np.random.default_rng(5).integers(0, 65536, (12, 16, 3), dtype=np.uint16)
    p = _cjxl(_png16(tmp_path / "c16.png", a), tmp_path / "c16.jxl")
    with caplog.at_level("WARNING", logger="engine.imageio"):
        ph = mio.load_photo(p)
    assert ph.format == "JXL" and ph.bit_depth == 8
    assert ph.info["source_bit_depth"] == 16
    assert any("16-bit" in w and "8 bits" in w for w in ph.info["warnings"]), ph.info
    assert "8 bits" in caplog.text
    assert np.array_equal(np.round(ph.pixels * 255).astype(np.uint16), a >> 8)
    out = mio.save_photo(ph.pixels, tmp_path / "o", like=ph)
    assert out.suffix == ".png" and mio.load_photo(out).bit_depth == 8


def test_jxl_16bit_grey_with_alpha_keeps_its_16_bits(tmp_path):
    """The plugin hands 16-bit grey + alpha out as 16-bit samples under Pillow's 8-bit "LA"
    mode (Pillow alone would read garbage): Mend reads the 16-bit buffer itself."""
    _need_jxl()
    ga = np.random.default_rng(6).integers(0, 65536, (10, 14, 2), dtype=np.uint16)
    # cjxl 0.7 keeps this alpha at 8-bit precision (54891 comes back as 54998 = 214 * 257, from
    # PNG or PAM input alike): alpha values it can keep, to check where Mend finds them
    ga[..., 1] = (ga[..., 1] >> 8) * 257
    p = _cjxl(_png16(tmp_path / "ga16.png", ga), tmp_path / "ga16.jxl")
    ph = mio.load_photo(p)
    assert ph.bit_depth == 16 and ph.pixels.shape == (10, 14, 3)
    assert np.array_equal(np.round(ph.pixels[..., 0] * 65535).astype(np.uint16), ga[..., 0])
    assert np.array_equal(np.round(ph.pixels[..., 2] * 65535).astype(np.uint16), ga[..., 0])
    assert ph.alpha is not None
    assert np.array_equal(np.round(ph.alpha * 65535).astype(np.uint16), ga[..., 1])
    assert ph.info["decoder"].startswith("pillow-jxl-plugin")
    small = mio.load_preview(p, 14)
    assert small.shape == (10, 14, 3)
    assert np.abs(small[..., 1].astype(int) - ga[..., 0] / 257.0).max() <= 1.0
    assert "source_bit_depth" not in ph.info
    assert not any("bit" in w for w in ph.info["warnings"]), ph.info


def test_jxl_exif_orientation_is_not_applied_over_the_codestream(tmp_path):
    """libjxl renders the codestream orientation itself; an EXIF tag must not rotate again."""
    _need_jxl()
    a = np.zeros((20, 30, 3), np.uint8)
    a[:, :10] = 255
    ex = Image.Exif()
    ex[0x0112] = 6
    p = tmp_path / "o.jxl"
    Image.fromarray(a).save(p, "JXL", lossless=True, effort=1, num_threads=1, exif=ex.tobytes())
    assert mio._jxl_header(p)[2] == 1
    ph = mio.load_photo(p)
    assert ph.pixels.shape == (20, 30, 3) and mio.image_size(p) == (20, 30)
    assert mio.load_preview(p, 30).shape == (20, 30, 3)


def test_jxl_limits_and_damage(tmp_path):
    _need_jxl()
    p = tmp_path / "big.jxl"
    Image.fromarray(np.zeros((64, 200, 3), np.uint8)).save(p, "JXL", lossless=True, effort=1)
    assert mio._jxl_header(p)[:2] == (200, 64)
    with pytest.raises(ImageTooLarge):
        mio.load_photo(p, max_pixels=64 * 200 - 1)
    cut = tmp_path / "cut.jxl"
    cut.write_bytes(p.read_bytes()[:20])
    with pytest.raises(BadImage):
        mio.load_photo(cut)
    fake = tmp_path / "png_really.jxl"
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(fake, "PNG")
    assert mio.load_photo(fake).format == "PNG"


def test_missing_optional_packages_give_one_clear_message(tmp_path, dng):
    """A subprocess whose sitecustomize blocks rawpy and pillow_jxl: the real loaders run."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("rawpy", "pillow_jxl"):
                    raise ImportError(f"blocked for the test: {name}")
                return None
        sys.meta_path.insert(0, _Block())
    """))
    jxl = tmp_path / "a.jxl"
    jxl.write_bytes(b"\xff\x0a" + bytes(30))  # a JXL signature is enough to be told apart
    script = textwrap.dedent(f"""
        import json
        from engine import imageio as mio
        from engine.errors import BadImage
        out = {{"raw": mio.raw_supported(), "jxl": mio.jxl_supported()}}
        for key, path in (("dng", {str(dng)!r}), ("jxl", {str(jxl)!r})):
            for fn in ("load_photo", "load_preview", "image_size"):
                try:
                    f = getattr(mio, fn)
                    f(path, 32) if fn == "load_preview" else f(path)
                    out[key + "." + fn] = "loaded"
                except BadImage as e:
                    out[key + "." + fn] = str(e)
        print(json.dumps(out))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(block), str(ROOT)]))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=60, check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    o = json.loads(r.stdout)
    assert o["raw"] is False and o["jxl"] is False
    for fn in ("load_photo", "load_preview", "image_size"):
        assert "'raw' extra" in o["dng." + fn] and "DNG" in o["dng." + fn], o
        assert "'jxl' extra" in o["jxl." + fn], o


def _libraw_new_threads(dng: Path, mend_threads: str, preview: bool = False) -> dict:
    """In a fresh process (no OMP_NUM_THREADS): how many threads one RAW decode started, counted
    in the decoding thread (a worker thread, as in the app) from /proc."""
    script = textwrap.dedent(f"""
        import json, os, threading
        import rawpy  # noqa: F401 - imported (and its libraries loaded) before counting
        from engine import imageio as mio
        tasks = lambda: len(os.listdir("/proc/self/task"))
        res = {{}}
        def work():
            before = tasks()
            if {preview!r}:
                mio.load_preview({str(dng)!r}, 16)
                res["info"] = None
            else:
                res["info"] = mio.load_photo({str(dng)!r}).info.get("libraw_threads")
            res["new"] = tasks() - before
        t = threading.Thread(target=work)
        t.start()
        t.join()
        print(json.dumps(res))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    env.update(PYTHONPATH=str(ROOT), MEND_THREADS=mend_threads)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=60, check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_libraw_openmp_threads_follow_mends_thread_setting(tmp_path):
    """rawpy's LibRaw is built with OpenMP: uncapped, a decode starts a team of one thread per
    CPU whatever Mend's setting. Capped (omp_set_num_threads in the decoding thread), a setting
    of 1 starts no thread and a setting of 2 starts one (the control: the count sees them)."""
    if not rawpy.flags.get("OPENMP"):
        pytest.skip("this rawpy's LibRaw is built without OpenMP: it decodes on one thread")
    p = tmp_path / "t.dng"
    p.write_bytes(make_dng(1))
    two = _libraw_new_threads(p, "2")
    assert two == {"info": 2, "new": 1}, two
    one = _libraw_new_threads(p, "1")
    assert one == {"info": 1, "new": 0}, one
    assert _libraw_new_threads(p, "1", preview=True)["new"] == 0


# ------------------------------------------------------------------------------- CLI end to end


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _mend(*args: str) -> subprocess.CompletedProcess:
    """``python -m engine.cli ARGS`` in its own process, started warm (tests/warm_cli.py)."""
    return warm_cli.run(args, timeout=240, cwd=ROOT)


def test_cli_classify_and_restore_a_dng(dng, tmp_path):
    before = _sha(dng)
    r = _mend("classify", str(dng), "--backend", "builtin", "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    (o,) = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    assert "error" not in o and o.get("label") in ("A", "B", "C", "D"), o
    r = _mend("restore", str(dng), "-o", str(tmp_path), "--plan", "A", "--profile", "builtin",
              "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    (o,) = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    out = Path(o["output"])
    assert out.suffix == ".tif" and out.parent == tmp_path
    back = mio.load_photo(out)
    assert back.format == "TIFF" and back.bit_depth == 16
    assert back.pixels.shape[0] * H == back.pixels.shape[1] * W  # upright (portrait) kept
    assert _sha(dng) == before
