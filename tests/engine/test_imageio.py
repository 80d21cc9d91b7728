"""Photo I/O on synthetic files: formats, modes, metadata, limits, bad input, atomic saves."""
from __future__ import annotations

import errno
import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import imageio as mio
from engine.api import OutputOptions
from engine.errors import BadImage, ImageTooLarge, SaveFailed


def _rgb(h=48, w=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, (x + y) / (w + h)], axis=2)
    return np.clip(base + rng.normal(0, 0.02, base.shape), 0, 1).astype(np.float32)


def _exif_bytes(orientation=1, make="MendCam", with_thumb=False) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    ex[0x010F] = make
    ex[0x8769] = {0x9003: "2024:01:02 03:04:05", 0xA002: 64, 0xA003: 48}
    data = ex.tobytes()
    if not with_thumb:
        return data
    # append IFD1 with a tiny "thumbnail" at the end of the blob
    body = bytearray(data[6:])
    t = mio._Tiff(body)
    ptr = t.next_ifd_ptr(t.u32(4))
    ifd1 = len(body)
    thumb = b"\xff\xd8THUMBNAIL-BYTES\xff\xd9"
    bo = t.bo
    ifd = struct.pack(bo + "H", 2)
    ifd += struct.pack(bo + "HHII", 0x0201, 4, 1, ifd1 + 2 + 24 + 4)
    ifd += struct.pack(bo + "HHII", 0x0202, 4, 1, len(thumb))
    ifd += struct.pack(bo + "I", 0)
    struct.pack_into(bo + "I", body, ptr, ifd1)
    return b"Exif\x00\x00" + bytes(body) + ifd + thumb


def _save_pil(path: Path, im: Image.Image, fmt: str | None = None, **kw) -> Path:
    im.save(path, fmt, **kw)
    return path


# ---------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("fmt,ext", [("JPEG", ".jpg"), ("PNG", ".png"), ("TIFF", ".tif"),
                                     ("WEBP", ".webp"), ("BMP", ".bmp")])
def test_load_formats(tmp_path, fmt, ext):
    src = (_rgb() * 255).astype(np.uint8)
    kw = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    p = _save_pil(tmp_path / f"a{ext}", Image.fromarray(src), fmt, **kw)
    ph = mio.load_photo(p)
    assert ph.pixels.dtype == np.float32 and ph.pixels.shape == (48, 64, 3)
    assert ph.pixels.flags.c_contiguous
    assert ph.format == fmt and ph.bit_depth == 8
    tol = 0.06 if fmt in ("JPEG", "WEBP") else 1e-6
    assert np.abs(ph.pixels - src / 255.0).mean() < tol


def test_jpeg_quantization_tables(tmp_path):
    p = _save_pil(tmp_path / "q.jpg", Image.fromarray((_rgb() * 255).astype(np.uint8)),
                  quality=50)
    ph = mio.load_photo(p)
    q = ph.info["jpeg_quantization"]
    assert set(q) >= {0, 1} and all(len(v) == 64 for v in q.values())
    assert all(isinstance(x, int) for x in q[0])
    # quality 50 with the standard libjpeg luminance table: DC entry 16
    assert q[0][0] == 16


def test_wrong_extension_is_sniffed(tmp_path):
    p = _save_pil(tmp_path / "really_png.jpg", Image.fromarray((_rgb() * 255).astype(np.uint8)),
                  "PNG")
    ph = mio.load_photo(p)
    assert ph.format == "PNG"


def test_non_ascii_path(tmp_path):
    d = tmp_path / "фото 写真 é"
    d.mkdir()
    p = _save_pil(d / "ünï cødé 😀.png", Image.fromarray((_rgb() * 255).astype(np.uint8)))
    assert mio.load_photo(p).pixels.shape == (48, 64, 3)
    out = mio.save_photo(_rgb(), d / "résultat.png", like=mio.load_photo(p))
    assert out.exists() and mio.load_photo(out).width == 64


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "1", "I;16", "I", "F", "RGBA"])
def test_modes_convert(tmp_path, mode):
    g = np.linspace(0, 1, 64, dtype=np.float32)[None, :].repeat(32, 0)
    if mode == "I;16":
        im = Image.fromarray((g * 65535).astype(np.uint16))
        assert im.mode == "I;16"
    elif mode == "I":
        im = Image.fromarray((g * 65535).astype(np.int32), "I")
    elif mode == "F":
        im = Image.fromarray(g, "F")
    else:
        im = Image.fromarray((g * 255).astype(np.uint8), "L").convert(mode)
        if mode in ("LA", "PA", "RGBA"):
            im.putalpha(128)
    ext = ".tif" if mode in ("I", "F", "PA") else ".png"
    p = _save_pil(tmp_path / f"m{ext}", im)
    ph = mio.load_photo(p)
    assert ph.pixels.shape == (32, 64, 3)
    if mode != "1":
        assert np.allclose(ph.pixels[..., 0], ph.pixels[..., 2])
        assert np.abs(ph.pixels[..., 1] - g).max() < 0.02, mode
    if mode in ("I;16", "I", "F"):
        assert ph.bit_depth == 16
    if mode in ("LA", "PA", "RGBA"):
        assert ph.alpha is not None and abs(float(ph.alpha.mean()) - 128 / 255) < 0.01
    else:
        assert ph.alpha is None


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (8, 8), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((0, 0), 0)
    p = _save_pil(tmp_path / "t.png", im, transparency=0)
    ph = mio.load_photo(p)
    assert ph.alpha is not None and ph.alpha[0, 0] == 0 and ph.alpha[1, 1] == 1
    assert np.allclose(ph.pixels[1, 1], [1, 0, 0])


def test_cmyk_jpeg_adobe_inverted(tmp_path):
    im = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # pure red in CMYK
    p = _save_pil(tmp_path / "c.jpg", im, quality=95)
    assert Image.open(p).info.get("adobe") is not None  # Pillow writes inverted Adobe CMYK
    ph = mio.load_photo(p)
    assert ph.info["converted_from"] == "CMYK" and ph.icc_profile is None
    r, g, b = ph.pixels[4, 8]
    assert r > 0.9 and g < 0.1 and b < 0.1


def test_cmyk_with_unusable_icc_falls_back(tmp_path):
    fake_icc = bytearray(200)
    fake_icc[16:20] = b"CMYK"
    im = Image.new("CMYK", (8, 8), (0, 0, 0, 0))
    p = _save_pil(tmp_path / "c.jpg", im, icc_profile=bytes(fake_icc))
    ph = mio.load_photo(p)
    assert ph.icc_profile is None  # never embed a CMYK profile with RGB pixels
    assert ph.pixels.min() > 0.9  # white


def test_multiframe_takes_first(tmp_path):
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    ph = mio.load_photo(p)
    assert ph.info["frames"] == 2
    assert ph.pixels[5, 5, 0] > 0.9 and ph.pixels[5, 5, 1] < 0.1


def test_tiff_multipage_first(tmp_path):
    frames = [Image.new("RGB", (10, 10), c) for c in ((0, 0, 255), (0, 255, 0))]
    p = tmp_path / "multi.tif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    ph = mio.load_photo(p)
    assert ph.pixels[0, 0, 2] > 0.9


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_orientations_upright(tmp_path, orientation):
    upright = (_rgb(30, 50) * 255).astype(np.uint8)
    # store the pixels so that applying ``orientation`` gives the upright picture back
    inverse = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}[orientation]
    stored = np.ascontiguousarray(mio._orient(upright, inverse))
    p = _save_pil(tmp_path / "o.png", Image.fromarray(stored),
                  exif=_exif_bytes(orientation))
    ph = mio.load_photo(p)
    assert ph.pixels.shape == (30, 50, 3)
    assert np.abs(ph.pixels - upright / 255.0).max() < 1e-6
    assert mio.exif_orientation(ph.exif) == 1
    assert ph.info["exif_orientation"] == orientation
    out = mio.save_photo(ph.pixels, tmp_path / "out.jpg", like=ph)
    assert Image.open(out).getexif().get(0x0112) == 1
    again = mio.load_photo(out)
    assert again.pixels.shape == (30, 50, 3)


def test_exif_thumbnail_dropped_and_tags_kept(tmp_path):
    ex = _exif_bytes(6, with_thumb=True)
    assert b"THUMBNAIL" in ex
    p = _save_pil(tmp_path / "t.jpg", Image.fromarray((_rgb() * 255).astype(np.uint8)), exif=ex)
    ph = mio.load_photo(p)
    assert b"THUMBNAIL" not in ph.exif
    out = mio.save_photo(ph.pixels, tmp_path / "o.jpg", like=ph)
    got = Image.open(out).getexif()
    assert got[0x0112] == 1 and got[0x010F] == "MendCam"
    sub = got.get_ifd(0x8769)
    assert sub[0x9003] == "2024:01:02 03:04:05"
    assert (sub[0xA002], sub[0xA003]) == (48, 64)  # rotated: pixel size follows the output


def test_clean_exif_rejects_garbage():
    assert mio.clean_exif(b"Exif\x00\x00garbage") is None
    assert mio.clean_exif(b"Exif\x00\x00II*\x00\xff\xff\x00\x00") is None
    assert mio.exif_orientation(b"\x00" * 10) == 1


def test_bad_exif_dropped_on_save(tmp_path):
    ph = mio.Photo(tmp_path / "src.jpg", _rgb(), exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff")
    out = mio.save_photo(ph.pixels, tmp_path / "o.jpg", like=ph)
    assert mio.load_photo(out).exif is None


def test_load_preview_upright_and_small(tmp_path):
    upright = (_rgb(300, 500) * 255).astype(np.uint8)
    stored = np.ascontiguousarray(mio._orient(upright, 8))  # orientation 6 undoes it
    p = _save_pil(tmp_path / "p.jpg", Image.fromarray(stored), quality=95,
                  exif=_exif_bytes(6))
    pv = mio.load_preview(p, 100)
    assert pv.dtype == np.uint8 and pv.ndim == 3 and pv.shape[2] == 3
    assert max(pv.shape[:2]) <= 100 and pv.shape[1] > pv.shape[0]  # landscape like upright
    ref = np.asarray(Image.fromarray(upright).resize((pv.shape[1], pv.shape[0]))) / 255.0
    assert np.abs(pv / 255.0 - ref).mean() < 0.05


def test_preview_16bit(tmp_path):
    a = (np.linspace(0, 1, 40)[None, :].repeat(20, 0) * 65535).astype(np.uint16)
    p = _save_pil(tmp_path / "g.png", Image.fromarray(a))
    pv = mio.load_preview(p, 16)
    assert pv.dtype == np.uint8 and pv[..., 0].max() > 200


# ------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(BadImage, match="not found") as ei:
        mio.load_photo(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(ei.value)


def test_zero_byte(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(BadImage, match="empty"):
        mio.load_photo(p)


def test_directory_named_like_photo(tmp_path):
    d = tmp_path / "folder.jpg"
    d.mkdir()
    with pytest.raises(BadImage, match="folder"):
        mio.load_photo(d)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root ignores file permissions")
def test_unreadable_permissions(tmp_path):
    p = _save_pil(tmp_path / "x.png", Image.new("RGB", (4, 4)))
    p.chmod(0)
    try:
        with pytest.raises(BadImage, match="permission"):
            mio.load_photo(p)
    finally:
        p.chmod(0o644)


def test_unreadable_permissions_simulated(tmp_path, monkeypatch):
    """Root ignores modes, so also check the mapping with a PermissionError from open()."""
    p = _save_pil(tmp_path / "x.png", Image.new("RGB", (4, 4)))
    real = Image.open

    def deny(fp, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(fp))

    monkeypatch.setattr(Image, "open", deny)
    with pytest.raises(BadImage, match="permission") as ei:
        mio.load_photo(p)
    assert type(ei.value) is BadImage
    monkeypatch.setattr(Image, "open", real)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("hello, I am text\n" * 20)
    with pytest.raises(BadImage, match="not a photo format"):
        mio.load_photo(p)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_truncated(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray((_rgb(200, 200) * 255).astype(np.uint8)).save(buf, fmt)
    data = buf.getvalue()
    p = tmp_path / f"t.{fmt.lower()}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage) as ei:
        mio.load_photo(p)
    assert str(p) in str(ei.value)


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\x00" * 100)
    return (b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", len(idat)) + b"IDAT" + idat
            + struct.pack(">I", zlib.crc32(b"IDAT" + idat)))


def test_huge_png_header_refused_fast(tmp_path):
    import resource

    p = tmp_path / "huge.png"
    p.write_bytes(_png_header(20000, 10050))  # 201 megapixels, default limit 200
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="megapixels"):
        mio.load_photo(p)
    with pytest.raises(ImageTooLarge):
        mio.load_preview(p, 256)
    assert time.perf_counter() - t < 1.0
    # nothing near the 600 MB of pixels was allocated (ru_maxrss is in KiB on Linux)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 100_000


def test_pixel_limit_configurable(tmp_path, monkeypatch):
    p = _save_pil(tmp_path / "a.png", Image.new("RGB", (1500, 1000)))  # 1.5 MP
    monkeypatch.setenv("MEND_MAX_MEGAPIXELS", "1")
    with pytest.raises(ImageTooLarge, match="limit is 1 megapixels"):
        mio.load_photo(p)
    assert mio.load_photo(p, max_pixels=2_000_000).width == 1500
    monkeypatch.setenv("MEND_MAX_MEGAPIXELS", "2")
    assert mio.load_photo(p).width == 1500
    # below 10 MP the message keeps the digits that matter (it read "0 megapixels; the limit is
    # 0 megapixels")
    monkeypatch.setenv("MEND_MAX_MEGAPIXELS", "0.1")
    with pytest.raises(ImageTooLarge, match=r"\(1\.5 megapixels; the limit is 0\.1 megapixels"):
        mio.load_photo(p)


def test_pillow_bomb_threshold_below_our_limit(tmp_path):
    """Above Pillow's own bomb limit but under ours: Mend's (configurable) limit decides."""
    p = tmp_path / "big.png"
    p.write_bytes(_png_header(10, 10))
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 20  # Pillow errors above 2x this
    try:
        with pytest.raises(BadImage) as ei:  # opens fine, then the data is short: BadImage
            mio.load_photo(p)
        assert not isinstance(ei.value, ImageTooLarge)
        with pytest.raises(ImageTooLarge):
            mio.load_photo(p, max_pixels=50)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_load_12mp_jpeg_fast(tmp_path):
    rng = np.random.default_rng(1)
    a = (rng.random((3000, 4000, 3), dtype=np.float32) * 60
         + np.linspace(0, 190, 4000, dtype=np.float32)[None, :, None]).astype(np.uint8)
    p = _save_pil(tmp_path / "big.jpg", Image.fromarray(a), quality=90)
    best = min(_timed(mio.load_photo, p) for _ in range(2))
    assert best < 1.5, f"12 MP JPEG took {best:.2f}s"


def _timed(fn, *a):
    t = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t


# ----------------------------------------------------------------------------------- saving


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff", "webp"])
def test_save_roundtrip_metadata(tmp_path, fmt):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
           b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
           b'rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="mine" '
           b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF>'
           b'</x:xmpmeta><?xpacket end="w"?>')
    src = (_rgb() * 255).astype(np.uint8)
    p = _save_pil(tmp_path / "src.jpg", Image.fromarray(src), quality=95, icc_profile=icc,
                  exif=_exif_bytes(1), dpi=(300, 300), xmp=xmp)
    before = p.read_bytes()
    ph = mio.load_photo(p)
    assert ph.icc_profile == icc and ph.dpi == (300.0, 300.0) and b"dc:format" in ph.xmp
    record = {"software": "Mend test", "steps": [{"name": "sr", "model": "x"}], "note": "a<b&c"}
    out = mio.save_photo(ph.pixels, tmp_path / "out", like=ph,
                         options=OutputOptions(format=fmt), record=record)
    assert out.suffix == {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "webp": ".webp"}[fmt]
    assert p.read_bytes() == before  # the source is never touched
    back = mio.load_photo(out)
    assert back.icc_profile == icc
    assert back.exif is not None
    got = Image.open(out).getexif()
    assert got[0x010F] == "MendCam" and got.get(0x0112, 1) == 1
    assert got.get_ifd(0x8769)[0x9003] == "2024:01:02 03:04:05"
    assert b'dc:format="mine"' in back.xmp and b'tiff:Orientation="1"' in back.xmp
    assert mio.read_record(out) == record
    if fmt != "webp":  # WebP has no resolution field
        assert back.dpi is not None and abs(back.dpi[0] - 300) < 1
    tol = 0.05 if fmt in ("jpeg", "webp") else 1 / 255
    assert np.abs(back.pixels - ph.pixels).mean() < tol


@pytest.mark.parametrize("fmt,pil_mode", [("png", "RGB"), ("tiff", "RGB"), ("png", "RGBA"),
                                          ("tiff", "RGBA")])
def test_16bit_stays_16bit(tmp_path, fmt, pil_mode):
    import cv2

    h, w = 20, 300
    ramp = np.linspace(0, 1, w, dtype=np.float64)[None, :].repeat(h, 0)
    rgb16 = np.stack([ramp, ramp[:, ::-1], ramp * 0.5], 2)
    a16 = (rgb16 * 65535).round().astype(np.uint16)
    chans = [a16[..., 2], a16[..., 1], a16[..., 0]]
    if pil_mode == "RGBA":
        chans.append(np.full((h, w), 30000, np.uint16))
    ext = ".png" if fmt == "png" else ".tif"
    src = tmp_path / f"src16{ext}"
    cv2.imwrite(str(src), np.dstack(chans))
    ph = mio.load_photo(src)
    assert ph.bit_depth == 16
    # finer than 8-bit steps survive
    assert np.abs(ph.pixels[..., 0] - ramp).max() < 1e-4
    out = mio.save_photo(ph.pixels, tmp_path / f"o{ext}", like=ph, alpha=ph.alpha)
    raw = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    assert np.array_equal(raw[..., 2], a16[..., 0]) and np.array_equal(raw[..., 0], a16[..., 2])
    back = mio.load_photo(out)
    assert back.bit_depth == 16
    if pil_mode == "RGBA":
        assert raw.shape[2] == 4 and np.all(raw[..., 3] == 30000)
        assert back.alpha is not None
    out8 = mio.save_photo(ph.pixels, tmp_path / f"o8{ext}", like=ph,
                          options=OutputOptions(bit_depth=8))
    assert cv2.imread(str(out8), cv2.IMREAD_UNCHANGED).dtype == np.uint8


def test_alpha_put_back(tmp_path):
    rgba = np.dstack([(_rgb() * 255).astype(np.uint8), np.tile(np.arange(64, dtype=np.uint8)
                                                               * 4, (48, 1))])
    p = _save_pil(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))
    ph = mio.load_photo(p)
    for fmt in ("png", "webp", "tiff"):
        out = mio.save_photo(ph.pixels, tmp_path / f"o.{fmt}", like=ph, alpha=ph.alpha,
                             options=OutputOptions(format=fmt, quality=100))
        back = mio.load_photo(out)
        assert back.alpha is not None, fmt
        assert np.abs(back.alpha - ph.alpha).max() < 2 / 255, fmt
    out = mio.save_photo(ph.pixels, tmp_path / "o.jpg", like=ph, alpha=ph.alpha)
    assert Image.open(out).mode == "RGB"


def test_a_file_where_the_output_folder_should_be_is_said_plainly(tmp_path):
    ph = mio.load_photo(_save_pil(tmp_path / "photo.png",
                                  Image.fromarray((_rgb() * 255).astype(np.uint8))))
    (tmp_path / "mended").write_bytes(b"a file, not a folder")
    for dest in (tmp_path / "mended" / "photo_mend.png",
                 tmp_path / "mended" / "sub" / "photo_mend.png"):
        with pytest.raises(SaveFailed, match="is a file; choose another output folder"):
            mio.save_photo(ph.pixels, dest, like=ph)
    assert (tmp_path / "mended").read_bytes() == b"a file, not a folder"


def test_name_clash_suffix_and_never_source(tmp_path):
    p = _save_pil(tmp_path / "photo.jpg", Image.fromarray((_rgb() * 255).astype(np.uint8)))
    ph = mio.load_photo(p)
    with pytest.raises(SaveFailed, match="original"):
        mio.save_photo(ph.pixels, p, like=ph)
    with pytest.raises(SaveFailed, match="original"):
        mio.save_photo(ph.pixels, tmp_path / "." / "photo.jpg", like=ph, overwrite=True)
    a = mio.save_photo(ph.pixels, tmp_path / "r.jpg", like=ph)
    b = mio.save_photo(ph.pixels, tmp_path / "r.jpg", like=ph)
    c = mio.save_photo(ph.pixels, tmp_path / "r.jpg", like=ph)
    assert [a.name, b.name, c.name] == ["r.jpg", "r_1.jpg", "r_2.jpg"]
    opts = OutputOptions(suffix="")
    dest = mio.output_path_for(p, opts)
    assert dest != p and dest.name == "photo_1.jpg"
    assert mio.output_path_for(p).name == "photo_mend.jpg"
    assert mio.output_path_for(p, OutputOptions(format="png", out_dir=tmp_path / "o")) == \
        tmp_path / "o" / "photo_mend.png"
    assert mio.output_path_for(tmp_path / "x.heic").suffix == ".jpg"


def test_misnamed_source_exports_as_what_it_really_is(tmp_path):
    """The export follows the decoded format, not the source's extension: a PNG named .dng is
    saved as a PNG called .png; the file name and the bytes written agree."""
    px = (_rgb() * 255).astype(np.uint8)
    cases = [("photo.dng", "PNG", ".png"), ("scan.NEF", "JPEG", ".jpg"),
             ("shot.png", "JPEG", ".jpg"), ("pic.heic", "PNG", ".png"),
             ("page.jpg", "TIFF", ".tif")]
    for name, real, want in cases:
        src = _save_pil(tmp_path / name, Image.fromarray(px), real)
        ph = mio.load_photo(src)
        assert ph.format == real
        dest = mio.output_path_for(src, OutputOptions(), source_format=ph.format)
        assert dest.name == Path(name).stem + "_mend" + want, name
        out = mio.save_photo(ph.pixels, dest, like=ph)
        assert out == dest  # save_photo kept the name output_path_for chose
        with Image.open(out) as im:
            assert im.format == real, name  # and wrote the bytes its extension says
        # a destination with an extension Mend never writes (.dng, .heic) goes by the content;
        # one Mend writes (.png, .jpg) is what the caller asked for: either way name == bytes
        out2 = mio.save_photo(ph.pixels, tmp_path / "o" / name, like=ph)
        writable = Path(name).suffix.lower() in (".png", ".jpg")
        assert out2.suffix == (Path(name).suffix if writable else want), name
        with Image.open(out2) as im:
            assert im.format == ({".png": "PNG", ".jpg": "JPEG"}[out2.suffix] if writable
                                 else real), name
    src = tmp_path / "photo.dng"
    # without the decoded format only the extension is known (the old call keeps working)
    assert mio.output_path_for(src).suffix == ".tif"
    # the user's explicit choice still wins
    assert mio.output_path_for(src, OutputOptions(format="webp"),
                               source_format="PNG").suffix == ".webp"
    assert mio.output_path_for(src, OutputOptions(), source_format="PNG").suffix == ".png"
    assert mio.output_path_for(tmp_path / "a.gif", source_format="GIF").suffix == ".png"


def test_engine_exports_a_misnamed_png_as_png(tmp_path):
    """Through Engine.run (the pipeline's call to output_path_for): nothing to fix, so the
    original PNG bytes are kept, under a .png name."""
    from engine.api import Degradation, JobRequest
    from engine.pipeline import Engine

    src = _save_pil(tmp_path / "photo.dng", Image.fromarray((_rgb() * 255).astype(np.uint8)),
                    "PNG")
    res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path / "o"),
                                       label=Degradation.D))
    assert res.output == tmp_path / "o" / "photo_mend.png"
    with Image.open(res.output) as im:
        assert im.format == "PNG"
    assert mio.load_photo(res.output).pixels.shape == mio.load_photo(src).pixels.shape


def test_symlink_to_source_refused(tmp_path):
    p = _save_pil(tmp_path / "photo.png", Image.fromarray((_rgb() * 255).astype(np.uint8)))
    link = tmp_path / "alias.png"
    link.symlink_to(p)
    ph = mio.load_photo(p)
    with pytest.raises(SaveFailed):
        mio.save_photo(ph.pixels, link, like=ph, overwrite=True)


@pytest.mark.parametrize("tmpfile", [True, False], ids=["o_tmpfile", "named_temp"])
def test_disk_full_leaves_nothing(tmp_path, monkeypatch, tmpfile):
    monkeypatch.setattr(mio, "_USE_O_TMPFILE", tmpfile and hasattr(os, "O_TMPFILE"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("x")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SaveFailed, match="disk is full"):
        mio.save_photo(_rgb(), out_dir / "r.png")
    with pytest.raises(SaveFailed, match="disk is full"):
        mio.atomic_write_bytes(out_dir / "d.bin", b"data")
    assert sorted(os.listdir(out_dir)) == ["keep.txt"]


def test_write_error_mid_stream_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(mio, "_USE_O_TMPFILE", False)

    def boom(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SaveFailed):
        mio._atomic_write(tmp_path / "x.png", boom, overwrite=False)
    assert os.listdir(tmp_path) == []


def test_atomic_write_bytes_replaces(tmp_path):
    d = tmp_path / "f.json"
    mio.atomic_write_bytes(d, b"one")
    assert mio.atomic_write_bytes(d, b"two") == d and d.read_bytes() == b"two"
    assert mio.atomic_write_bytes(d, b"3", overwrite=False).name == "f_1.json"
    assert sorted(os.listdir(tmp_path)) == ["f.json", "f_1.json"]


def test_named_temp_fallback_and_sweep(tmp_path, monkeypatch):
    monkeypatch.setattr(mio, "_USE_O_TMPFILE", False)
    out = mio.save_photo(_rgb(), tmp_path / "a.png")
    assert out.exists() and os.listdir(tmp_path) == ["a.png"]
    # a leftover of a dead process is swept; one of a live process is not
    dead = tmp_path / ".b.png.mend-999999999-abcd.part"
    alive = tmp_path / f".c.png.mend-{os.getppid()}-abcd.part"
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    mio.save_photo(_rgb(), tmp_path / "b.png")
    assert not dead.exists() and alive.exists()


def test_save_rejects_bad_shape(tmp_path):
    with pytest.raises(SaveFailed):
        mio.save_photo(np.zeros((4, 4, 5), np.float32), tmp_path / "x.png")


def test_save_without_like_and_nan(tmp_path):
    px = _rgb()
    px[0, 0] = np.nan
    out = mio.save_photo(px, tmp_path / "x.png", record={"a": 1})
    back = mio.load_photo(out)
    assert back.pixels[0, 0].tolist() == [0.0, 0.0, 0.0]
    assert mio.read_record(out) == {"a": 1}


def test_record_replaced_not_duplicated(tmp_path):
    out1 = mio.save_photo(_rgb(), tmp_path / "x.jpg", record={"run": 1})
    ph = mio.load_photo(out1)
    out2 = mio.save_photo(ph.pixels, tmp_path / "y.jpg", like=ph, record={"run": 2})
    assert mio.read_record(out2) == {"run": 2}
    assert mio.load_photo(out2).xmp.count(b"<mend:record>") == 1


def test_upscaled_output_keeps_print_size(tmp_path):
    p = _save_pil(tmp_path / "s.png", Image.fromarray((_rgb() * 255).astype(np.uint8)),
                  dpi=(100, 100))
    ph = mio.load_photo(p)
    big = np.repeat(np.repeat(ph.pixels, 2, 0), 2, 1)
    out = mio.save_photo(big, tmp_path / "b.png", like=ph)
    assert abs(mio.load_photo(out).dpi[0] - 200) < 1


# ---------------------------------------------------------------------------- folders/masks


def test_iter_photos(tmp_path):
    for n in ("b.JPG", "a.png", ".hidden.jpg", "notes.txt", "c.tiff"):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    got = mio.iter_photos([tmp_path])
    assert [p.name for p in got] == ["a.png", "b.JPG", "c.tiff"]
    explicit = tmp_path / "notes.txt"
    assert mio.iter_photos([explicit, tmp_path / "a.png", tmp_path]) [0] == explicit
    assert len(mio.iter_photos([tmp_path / "a.png", tmp_path])) == 3  # no duplicates
    with pytest.raises(BadImage, match="no such file"):
        mio.iter_photos([tmp_path / "missing.jpg"])
    assert mio.iter_photos([tmp_path / "missing.jpg"], on_missing="keep") == \
        [tmp_path / "missing.jpg"]



def test_iter_photos_recursive(tmp_path):
    """Subfolders only with recursive=True: a folder's own photos first, then each subfolder's
    (sorted); hidden folders, excluded folders and symlinked folders are not entered."""
    for rel in ("z.png", "b/x.jpg", "b/c/y.png", "a/w.png", ".hid/h.png", "out/o_mend.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    try:
        (tmp_path / "link").symlink_to(tmp_path / "b", target_is_directory=True)
    except OSError:
        pass  # no symlinks on this file system: the rest still holds
    assert [p.name for p in mio.iter_photos([tmp_path])] == ["z.png"]
    got = mio.iter_photos([tmp_path], recursive=True, exclude=[tmp_path / "out"])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == \
        ["z.png", "a/w.png", "b/x.jpg", "b/c/y.png"]
    # a/w, b/x, b/c/y, out/o; not .hid/h, not through the symlink
    assert mio.count_subfolder_photos(tmp_path) == (4, True)
    assert mio.count_subfolder_photos(tmp_path, limit=2) == (2, False)  # "2+"
    n, complete = mio.count_subfolder_photos(tmp_path, max_folders=1)  # a huge tree: stops early
    assert not complete and n <= 4


def test_files_mend_wrote_are_recognised_from_their_headers(tmp_path):
    assert mio.mend_output_kind(mio.save_mask(np.ones((8, 9), bool), tmp_path / "m.png")) == "mask"
    rec = {"software": "Mend 0.1.0", "label": "A"}
    for fmt in ("png", "jpg", "tiff", "webp"):
        assert mio.mend_output_kind(mio.save_photo(_rgb(), tmp_path / f"r.{fmt}", record=rec)) \
            == "result", fmt
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "plain.png")
    assert mio.mend_output_kind(tmp_path / "plain.png") is None
    assert mio.mend_output_kind(mio.save_photo(_rgb(), tmp_path / "x.png", record={"a": 1})) \
        is None  # a record that is not Mend's
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert mio.mend_output_kind(tmp_path / "broken.jpg") is None  # loading says what is wrong
    # another program's XMP after a PNG's image data: read in full, not from the header alone
    body = bytearray(mio.save_photo(_rgb(), tmp_path / "t.png", record=rec).read_bytes())
    i = body.index(b"iTXt") - 4
    (n,) = np.frombuffer(bytes(body[i:i + 4]), ">u4")
    chunk = bytes(body[i:i + 12 + int(n)])
    del body[i:i + 12 + int(n)]
    j = body.index(b"IEND") - 4
    (tmp_path / "late.png").write_bytes(bytes(body[:j]) + chunk + bytes(body[j:]))
    assert mio.read_record(tmp_path / "late.png") == rec
    assert mio.read_record(tmp_path / "late.png", header_only=True) is None


def test_masks_roundtrip_and_resize(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 5:20] = 255
    p = mio.save_mask(m, tmp_path / "m.png")
    assert Image.open(p).mode == "L"
    assert np.array_equal(mio.load_mask(p), m)
    big = mio.load_mask(p, (40, 60))
    assert big.shape == (40, 60) and set(np.unique(big)) == {0, 255}
    assert mio.save_mask(m > 0, tmp_path / "b.png").exists()
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = m
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    assert np.array_equal(mio.load_mask(tmp_path / "alpha.png"), m)
    # a 0/1 label image (labelling tools export these) is a mask too, not an empty one
    Image.fromarray((m > 0).astype(np.uint8), "L").save(tmp_path / "labels.png")
    assert np.array_equal(mio.load_mask(tmp_path / "labels.png"), m)


def test_a_source_named_near_the_length_limit_still_gets_a_result_name(tmp_path):
    for stem in ("x" * 250, "写" * 82):  # 250 bytes; 246 bytes of 3-byte characters
        name = stem + ".png"
        src = tmp_path / name
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(src)
        dest = mio.output_path_for(src, OutputOptions(out_dir=tmp_path / "o"))
        assert len(os.fsencode(dest.name)) <= 250 and dest.name.endswith("_mend.png")
        assert stem.startswith(dest.name[:-len("_mend.png")])
        ph = mio.load_photo(src)
        out = mio.save_photo(ph.pixels, dest, like=ph)
        assert out == dest and out.exists()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_header_size_of_an_oriented_tiff_matches_the_loaded_photo(tmp_path, orientation):
    """Pillow 13 reports an oriented TIFF's size already upright; it must not be turned twice
    (the app's cost estimate reads this size)."""
    ex = Image.Exif()
    ex[0x0112] = orientation
    Image.fromarray(np.zeros((40, 100, 3), np.uint8)).save(tmp_path / "o.tif", exif=ex.tobytes())
    assert mio.image_size(tmp_path / "o.tif") == mio.load_photo(tmp_path / "o.tif").pixels.shape[:2]


@pytest.mark.parametrize(("peak", "expected"), [(1.0, 1.0), (1.5, 1.0), (200.0, 200 / 255),
                                                (50000.0, 50000 / 65535)])
def test_grey_float_tiffs_are_read_on_their_own_scale(tmp_path, peak, expected):
    """0..1 data as it is; HDR highlights a little over 1 are clipped (and said), not taken
    for 0..255 data (which turned the whole photo almost black)."""
    a = np.linspace(0, peak, 64, dtype=np.float32)[None, :].repeat(8, 0)
    Image.fromarray(a, "F").save(tmp_path / "f.tif")
    ph = mio.load_photo(tmp_path / "f.tif")
    assert ph.pixels.max() == pytest.approx(min(1.0, expected), abs=1e-3)
    if 1.0 < peak <= 16.0:
        assert ph.pixels[0, 32, 0] == pytest.approx(min(1.0, 32 / 63 * peak), abs=1e-3)
        assert any("clipped" in w for w in ph.info["warnings"])


def test_a_large_xmp_keeps_keywords_and_rating_in_a_jpeg(tmp_path):
    """A Photoshop TIFF's XMP is often over the 64 KB a JPEG segment holds, mostly its list of
    document ancestors: that goes to the extended XMP (Adobe XMP part 3), the keywords and
    rating stay in the main segment where every program reads them; nothing is lost."""
    ancestors = "".join(f"<rdf:li>xmp.did:{i:032x}</rdf:li>" for i in range(3000))
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
           '22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap'
           '/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:photoshop="http://ns.adobe'
           '.com/photoshop/1.0/" xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/" '
           'xmp:Rating="5" crs:Exposure2012="+0.50"><dc:subject><rdf:Bag><rdf:li>harbour</rdf:li>'
           '</rdf:Bag></dc:subject><photoshop:DocumentAncestors><rdf:Bag>' + ancestors +
           '</rdf:Bag></photoshop:DocumentAncestors></rdf:Description></rdf:RDF></x:xmpmeta>')
    assert len(xmp) > 100_000
    src = mio.Photo(path=tmp_path / "src.tif", pixels=_rgb(), xmp=xmp.encode(), format="TIFF")
    notes: list[str] = []
    out = mio.save_photo(_rgb(), tmp_path / "o.jpg", like=src, record={"software": "Mend x"},
                         notes=notes)
    with Image.open(out) as im:
        main = im.info["xmp"].decode()  # the StandardXMP alone, as a plain reader sees it
    assert 'xmp:Rating="5"' in main and "<rdf:li>harbour</rdf:li>" in main
    assert "DocumentAncestors" not in main and "crs:Exposure2012" not in main
    assert len(main) <= mio.JPEG_XMP_MAX and "HasExtendedXMP" in main
    back = mio.load_photo(out).xmp.decode()  # with the ExtendedXMP merged in
    assert 'xmp:Rating="5"' in back and "<rdf:li>harbour</rdf:li>" in back
    assert back.count("<rdf:li>xmp.did:") == 3000 and 'crs:Exposure2012="+0.50"' in back
    assert "HasExtendedXMP" not in back
    assert mio.read_record(out) == {"software": "Mend x"}
    assert notes == []
