"""A RAW's thumbnail (its embedded JPEG preview) is shown in sRGB, like LibRaw's full decode.

A camera set to Adobe RGB writes its embedded preview in Adobe RGB: an ICC profile in the JPEG,
EXIF ColorSpace 0xFFFF with the interoperability index R03 in the JPEG, or only in the RAW's own
Exif IFD. ``source_profile`` stays None for a RAW (the full decode is sRGB), so ``load_preview``
converts the JPEG itself. Before: the Adobe RGB values were shown as sRGB, up to 31 levels off on
these patches (red of the green one); after: 0 levels from LittleCMS, <= 2 from the matrices.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from engine import imageio as mio
from tests.engine.test_colour import _exif
from tests.engine.test_imageio_raw_jxl import XYZ_TO_SRGB, H, W, _jpeg, make_dng

pytest.importorskip("rawpy", reason="the optional 'raw' extra (rawpy) is not installed")

# stored Adobe RGB values, one per quadrant; all inside the sRGB gamut once converted
COLOURS = np.array([[[150, 100, 80], [110, 160, 110]], [[70, 90, 170], [128, 128, 128]]],
                   np.uint8)
ADOBE_TO_XYZ = np.array([[0.5767309, 0.1855540, 0.1881852],
                         [0.2973769, 0.6273491, 0.0752741],
                         [0.0270343, 0.0706872, 0.9911085]])  # D65


def _stored() -> np.ndarray:
    rgb = np.empty((H, W, 3), np.uint8)
    for i in range(2):
        for j in range(2):
            rgb[i * H // 2:(i + 1) * H // 2, j * W // 2:(j + 1) * W // 2] = COLOURS[i, j]
    return rgb


def _jpeg_with(rgb: np.ndarray, *, jfif: bool = True, **save) -> bytes:
    """JPEG bytes; ``jfif=False`` drops Pillow's JFIF APP0 segment, so that the EXIF comes
    first as in a camera's preview (LibRaw puts an EXIF of its own before a JFIF preview's)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, **save)
    data = buf.getvalue()
    if not jfif and data[2:4] == b"\xff\xe0":
        data = data[:2] + data[4 + struct.unpack(">H", data[4:6])[0]:]
    return data


def _centres(px: np.ndarray) -> np.ndarray:
    h, w = px.shape[:2]
    return np.array([[px[i * h // 2 + h // 8:(i + 1) * h // 2 - h // 8,
                         j * w // 2 + w // 8:(j + 1) * w // 2 - w // 8].reshape(-1, 3).mean(0)
                      for j in range(2)] for i in range(2)])


def _adobe_to_srgb8(v: np.ndarray) -> np.ndarray:
    """Adobe RGB (1998) 8-bit -> sRGB 8-bit by the published matrices (no LittleCMS)."""
    lin = (v / 255.0) ** (563 / 256)
    x = np.clip(lin @ ADOBE_TO_XYZ.T @ XYZ_TO_SRGB.T, 0, 1)
    s = np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)
    return s * 255.0


def _adobe_in_raw_exif(dng: bytes) -> bytes:
    """``dng`` with its Exif IFD saying Adobe RGB as cameras write it: ISO (0x8827) becomes
    ColorSpace 0xFFFF and DateTimeOriginal (0x9003, 20 bytes out of line) an Interop pointer to
    an Interop IFD written over those bytes (InteropIndex "R03"); the tags stay in order."""
    out = bytearray(dng)
    ifd0 = struct.unpack_from("<I", out, 4)[0]
    exif = next(struct.unpack_from("<I", out, ifd0 + 2 + 12 * k + 8)[0]
                for k in range(struct.unpack_from("<H", out, ifd0)[0])
                if struct.unpack_from("<H", out, ifd0 + 2 + 12 * k)[0] == 34665)
    for k in range(struct.unpack_from("<H", out, exif)[0]):
        e = exif + 2 + 12 * k
        tag = struct.unpack_from("<H", out, e)[0]
        if tag == 0x8827:
            struct.pack_into("<HHIHH", out, e, 0xA001, 3, 1, 0xFFFF, 0)
        elif tag == 0x9003:
            at = struct.unpack_from("<I", out, e + 8)[0]
            struct.pack_into("<HHII", out, e, 0xA005, 4, 1, at)
            struct.pack_into("<HHHI4sI", out, at, 1, 1, 2, 4, b"R03\0", 0)
    return bytes(out)


def _dng(tmp_path: Path, name: str, jpeg: bytes, *, raw_exif_adobe: bool = False) -> Path:
    data = make_dng(1, preview=jpeg)
    p = tmp_path / name
    p.write_bytes(_adobe_in_raw_exif(data) if raw_exif_adobe else data)
    return p


ADOBE_CASES = {
    "icc": lambda rgb: (_jpeg_with(rgb, icc_profile=mio._adobe_rgb_icc()), False),
    "jpeg-exif-r03": lambda rgb: (_jpeg_with(rgb, exif=_exif(0xFFFF, b"R03")), False),
    "jpeg-exif-r03-camera": lambda rgb: (_jpeg_with(rgb, jfif=False, exif=_exif(0xFFFF, b"R03")),
                                         False),
    "raw-exif-r03": lambda rgb: (_jpeg(rgb), True),
}


@pytest.mark.parametrize("case", list(ADOBE_CASES))
def test_an_adobe_rgb_preview_is_shown_in_srgb(tmp_path, case):
    stored = _stored()
    jpeg, in_raw = ADOBE_CASES[case](stored)
    p = _dng(tmp_path, f"{case}.dng", jpeg, raw_exif_adobe=in_raw)
    if in_raw:  # what the camera's preview alone does not say
        with Image.open(io.BytesIO(jpeg)) as im:
            assert mio._exif_colour_space(im.info.get("exif")) is None
    small = mio.load_preview(p, W)
    assert small.shape == (H, W, 3) and small.dtype == np.uint8
    # the same as LittleCMS converting the decoded JPEG (what the UI does for an Adobe RGB JPEG)
    with Image.open(io.BytesIO(jpeg)) as im:
        decoded = im.convert("RGB")
    ref = np.asarray(ImageCms.profileToProfile(
        decoded, ImageCms.ImageCmsProfile(mio._bytes_io(mio._adobe_rgb_icc())),
        ImageCms.createProfile("sRGB"), outputMode="RGB"))
    assert int(np.abs(small.astype(int) - ref).max()) <= 1
    # and as the published matrices convert the decoded colours
    before = _centres(np.asarray(decoded))  # what was shown: Adobe RGB values taken as sRGB
    got, want = _centres(small), _adobe_to_srgb8(before)
    assert np.abs(got - want).max() <= 2.0, (got, want)
    assert np.abs(before - want).max() > 10
    # the UI's contract: the preview is in the space source_profile names (sRGB for a RAW)
    assert mio.source_profile(p) is None and mio.load_photo(p).icc_profile is None


@pytest.mark.parametrize("icc", [False, True], ids=["untagged", "srgb-icc"])
def test_an_srgb_preview_is_unchanged(tmp_path, icc):
    stored = _stored()
    save = {"icc_profile": ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()} \
        if icc else {}
    jpeg = _jpeg_with(stored, **save)
    small = mio.load_preview(_dng(tmp_path, "srgb.dng", jpeg), W)
    with Image.open(io.BytesIO(jpeg)) as im:
        decoded = np.asarray(im.convert("RGB"))
    diff = int(np.abs(small.astype(int) - decoded).max())
    assert diff == 0 if not icc else diff <= 1
