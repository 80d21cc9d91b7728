"""Session 18's audit of `mend restore` on real photos, as a photographer runs it: a HEIC cut
short (decoded green where its data is missing, and written as a good result), other files cut
short called "not a photo format", AVIF files left out of folders, a dry run naming one result
for photos that the run writes under different names, and --skip-existing missing the result
of a photo whose extension is not its format. Then what that audit left: a dry run taking a name
for a photo whose run stops, ``-o`` naming a file, a TIFF without a resolution read as 1 dpi, and
an animated PNG cut in its frames read at 8 bits with warnings that were not true."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from engine import cli
from engine import imageio as mio
from engine.errors import BadImage

# a result written afresh (it carries Mend's record): the built-in chain, no guard
RECORD = ("--plan", "A", "--profile", "builtin", "--no-guard")


def _run(capsys, *args: str) -> tuple[int, list[dict]]:
    rc = cli.main([*args, "--json"])
    return rc, [json.loads(x) for x in capsys.readouterr().out.splitlines()]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _grid_heic(monkeypatch) -> tuple[bytes, np.ndarray]:
    """A 256-px HEIC stored as a 4 x 4 grid of 64-px tiles, as phones store theirs (512-px
    tiles), and its pixels: 16 grey levels, one a tile."""
    if not mio.heif_supported():
        pytest.skip("pillow-heif is not installed")
    import pillow_heif

    monkeypatch.setattr(pillow_heif.options, "GRID_TILE_SIZE", 64)
    px = np.kron(np.arange(16).reshape(4, 4) * 16, np.ones((64, 64))).astype(np.uint8)
    px = np.repeat(px[..., None], 3, axis=2)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="HEIF", quality=90)
    assert pillow_heif.open_heif(io.BytesIO(buf.getvalue())).info.get("tiling")
    return buf.getvalue(), px


def test_a_heic_cut_short_is_refused_not_decoded_with_green_tiles(tmp_path, monkeypatch,
                                                                 capsys):
    """libheif decodes a grid HEIC whose last tiles' data is missing without a word, those
    tiles green (an iPhone photo cut at 90 % came out with its lower third green, was called
    "D, nothing to fix" and written as a JPEG result)."""
    data, px = _grid_heic(monkeypatch)
    whole = tmp_path / "whole.heic"
    whole.write_bytes(data)
    got = mio.load_photo(whole).pixels
    assert np.abs(got * 255 - px).mean() < 3  # the whole file reads right

    shoot, out = tmp_path / "shoot", tmp_path / "out"
    shoot.mkdir()
    cut = shoot / "cut.heic"
    cut.write_bytes(data[: int(len(data) * 0.95)])
    before = _sha(cut)
    for read in (mio.load_photo, lambda p: mio.load_preview(p, 64), mio.image_size):
        with pytest.raises(BadImage) as e:
            read(cut)
        assert e.value.reason == "the file is truncated (incomplete download or copy?)"
    rc, lines = _run(capsys, "restore", str(shoot), "-o", str(out), "--profile", "builtin")
    assert rc == 1
    assert lines == [{"path": str(cut),
                      "error": f"{cut}: the file is truncated (incomplete download or copy?)"}]
    assert _files(out) == [] and _sha(cut) == before  # nothing written, the photo untouched


def test_a_real_iphone_heic_cut_short_is_refused(shared_images, tmp_path):
    if not mio.heif_supported():
        pytest.skip("pillow-heif is not installed")
    src = shared_images / "camera_heic" / "exif-samples__heic__IMG_5195.HEIC"
    data = src.read_bytes()
    mio.load_photo(src)  # whole: it reads
    for frac in (0.5, 0.9):  # (both decoded before, with green tiles)
        cut = tmp_path / f"cut_{frac}.heic"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(BadImage, match="truncated"):
            mio.load_photo(cut)


def _tiff_ifd_last(path: Path) -> bytes:
    """A small RGB TIFF whose IFD comes after its pixels (as many writers put it)."""
    rng = np.random.default_rng(3)
    px = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8).tobytes()
    n = 9
    ifd_at = 8 + len(px)
    entries = [(256, 3, 1, 50), (257, 3, 1, 40), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8), (277, 3, 1, 3), (278, 3, 1, 40), (279, 4, 1, len(px))]
    ifd = n.to_bytes(2, "little")
    for tag, typ, count, value in entries:  # (8 bits a sample: one SHORT is taken as 3 alike)
        ifd += (tag.to_bytes(2, "little") + typ.to_bytes(2, "little")
                + count.to_bytes(4, "little") + value.to_bytes(4, "little"))
    data = b"II*\x00" + ifd_at.to_bytes(4, "little") + px + ifd + b"\x00\x00\x00\x00"
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("kind", ["tiff", "webp"])
def test_a_tiff_or_webp_cut_short_is_called_truncated(tmp_path, kind):
    """A TIFF cut before its IFD (written last) was "not a photo format Mend can read" (that a
    damaged IFD offset looks the same, the message says), a WebP cut short "damaged or
    unsupported (OSError: could not create decoder object)"."""
    whole = tmp_path / f"whole.{kind}"
    if kind == "tiff":
        data = _tiff_ifd_last(whole)
    else:
        rng = np.random.default_rng(4)
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(whole,
                                                                                quality=90)
        data = whole.read_bytes()
    assert mio.load_photo(whole).pixels.shape == ((40, 50, 3) if kind == "tiff" else (64, 80, 3))
    for n in (64, len(data) // 2, len(data) - 120):  # (the TIFF's IFD: its last 114 bytes)
        cut = tmp_path / f"cut{n}.{kind}"
        cut.write_bytes(data[:n])
        with pytest.raises(BadImage) as e:
            mio.load_photo(cut)
        assert e.value.reason == (
            "the file is truncated (incomplete download or copy?)" if kind == "webp" else
            "the file is truncated or damaged (its TIFF directory lies past the end of the file)")


def test_avif_photos_in_a_folder_are_listed_and_exported_as_jpeg(tmp_path, capsys):
    """Pillow reads AVIF and a named .avif file was restored, but a folder's AVIF photos were
    left out ("no photos in this folder")."""
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    (shoot / "a.avif").write_bytes(b"")  # (listing goes by name; content is judged later)
    assert [p.name for p in mio.iter_photos([shoot])] == ["a.avif"]
    assert mio.output_path_for(shoot / "a.avif", source_format=None).name == "a_mend.jpg"
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(shoot / "a.avif")
    out = tmp_path / "out"
    rc, lines = _run(capsys, "restore", str(shoot), "-o", str(out), *RECORD)
    assert rc == 0 and [Path(o["output"]).name for o in lines] == ["a_mend.jpg"]
    rc, lines = _run(capsys, "restore", str(shoot), "-o", str(out), *RECORD, "--skip-existing")
    assert rc == 0 and lines[0]["skipped"] == "already restored"


def _photos(folder: Path, names: list[tuple[str, str]]) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, fmt in names:
        p = folder / name
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(p, format=fmt)
        out.append(p)
    return out


def test_a_dry_run_names_the_results_the_run_writes_for_a_shared_name(tmp_path, capsys):
    """a.bmp and a.png both export as PNG, a.jpg, a.jpeg and a.heic... as JPEG: the run writes
    ``a_mend.png`` and ``a_mend_1.png``, but the dry run said ``a_mend.png`` for both (and an
    output folder already holding ``a_mend.png`` moved both to ``a_mend_1.png``)."""
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    _photos(shoot, [("a.bmp", "BMP"), ("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.jpeg", "JPEG"),
                    ("b.png", "PNG")])
    for earlier in ([], ["a_mend.png", "a_mend_1.jpg"]):
        for name in earlier:  # (the photographer's own files of those names)
            (out / name).write_bytes(b"not mend's")
        rc, planned = _run(capsys, "restore", str(shoot), "-o", str(out), *RECORD, "--dry-run")
        assert rc == 0
        dry = {o["path"]: o["output"] for o in planned}
        assert len(set(dry.values())) == 5, dry
        if not earlier:
            assert not out.exists()
            assert sorted(Path(o).name for o in dry.values()) == [
                "a_mend.jpg", "a_mend.png", "a_mend_1.jpg", "a_mend_1.png", "b_mend.png"]
        rc, done = _run(capsys, "restore", str(shoot), "-o", str(out), *RECORD)
        assert rc == 0
        assert {o["path"]: o["output"] for o in done} == dry
        for o in done:
            Path(o["output"]).unlink()


def test_skip_existing_finds_the_result_of_a_photo_misnamed_by_its_extension(tmp_path,
                                                                             capsys):
    """A PNG named ``.jpg`` (a JPEG named ``.png``) exports as ``.png`` (``.jpg``), but
    --skip-existing looked for the name its extension gives, so every resumed run restored it
    again, as ``_1``, ``_2``..."""
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    _photos(shoot, [("png_named.jpg", "PNG"), ("jpeg_named.png", "JPEG"), ("ok.png", "PNG")])
    rc, first = _run(capsys, "restore", str(shoot), "-o", str(out), *RECORD)
    assert rc == 0 and _files(out) == ["jpeg_named_mend.jpg", "ok_mend.png", "png_named_mend.png"]
    before = {p.name: _sha(p) for p in out.iterdir()}
    for dry in ((), ("--dry-run",)):
        rc, got = _run(capsys, "restore", str(shoot), "-o", str(out), *RECORD, "--skip-existing",
                       *dry)
        assert rc == 0
        assert [(Path(o["path"]).name, o.get("skipped"), o["output"]) for o in got] == [
            (Path(o["path"]).name, "already restored", o["output"]) for o in first]
    assert {p.name: _sha(p) for p in out.iterdir()} == before  # no _1, nothing rewritten


def _checker(path: Path, size: int = 128) -> None:
    """A photo the analyzer calls D (clean): big flat squares, sharp edges."""
    y, x = np.mgrid[0:size, 0:size]
    g = ((x // 16 + y // 16) % 2 * 180 + 40).astype(np.uint8)
    Image.fromarray(np.dstack([g, g // 2 + 60, 255 - g])).save(path)


def test_a_dry_run_takes_no_name_for_a_photo_whose_run_would_stop(tmp_path, capsys):
    """a.bmp needs a model that is not installed (its run stops, writing nothing) and a.png
    has nothing to fix: the run writes a_mend.png for a.png, but the dry run gave a.bmp
    a_mend.png and a.png a_mend_1.png."""
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    _photos(shoot, [("a.bmp", "BMP")])  # (noise: class A, laptop's Real-ESRGAN)
    _checker(shoot / "a.png")
    rc, planned = _run(capsys, "restore", str(shoot), "-o", str(out), "--profile", "laptop",
                       "--dry-run")
    # (it exits as the run does: test_cli_s19)
    assert rc == 1 and [o["label"] for o in planned] == ["A", "D"]
    assert "needs models that are not installed" in planned[0]["warnings"][0]
    assert planned[0]["output"] is None  # (nothing written: no name taken)
    assert planned[1]["output"] == str(out / "a_mend.png")
    rc, done = _run(capsys, "restore", str(shoot), "-o", str(out), "--profile", "laptop")
    assert rc == 1 and "is not installed" in done[0]["error"]
    assert done[1]["output"] == planned[1]["output"] and _files(out) == ["a_mend.png"]
    capsys.readouterr()
    assert cli.main(["restore", str(shoot), "-o", str(out / "x"), "--profile", "laptop",
                     "--dry-run"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("→ nothing written (the run would stop)")
    assert lines[2].endswith(f"→ {out / 'x' / 'a_mend.png'}")


@pytest.mark.parametrize("dry", [False, True])
def test_an_output_folder_that_is_a_file_is_a_usage_error(tmp_path, capsys, dry):
    """``-o`` naming a file said "cannot create the output folder X: File exists"."""
    shoot = tmp_path / "shoot"
    _photos(shoot, [("a.png", "PNG")])
    afile = tmp_path / "results.png"
    afile.write_bytes(b"the photographer's")
    extra = ["--dry-run"] if dry else []
    for out in (afile, afile / "sub"):
        rc = cli.main(["restore", str(shoot), "-o", str(out), *extra])
        err = capsys.readouterr()
        assert rc == 2 and err.out == ""  # (no photo looked at)
        where = "" if out == afile else f" (in the output folder's path {out})"
        assert err.err == (f"mend: {afile} is a file, not a folder{where}: choose a folder for "
                           "the results with -o\n")
    assert afile.read_bytes() == b"the photographer's" and _files(shoot) == ["a.png"]


def _tiff_tags(path: Path) -> dict:
    with Image.open(path) as im:
        return {t: im.tag_v2.get(t) for t in (282, 283, 296)} | {"dpi": im.info.get("dpi")}


def test_a_tiff_without_a_resolution_says_none_as_jpeg_and_png_do(tmp_path, capsys):
    """--no-metadata drops the resolution (the README and --help say so): a JPEG's JFIF says
    square pixels, no unit, a PNG has no pHYs - Pillow reads no dpi - but a TIFF had no
    resolution tags at all, which Pillow reads as 1 dpi (a print metres wide), and Mend read
    such a TIFF as a 1-dpi photo."""
    src = tmp_path / "a.jpg"
    _checker(src)
    with Image.open(src) as im:
        im.save(src, dpi=(300, 300), quality=95)
    for fmt in ("jpeg", "png", "tiff"):
        rc, (o,) = _run(capsys, "restore", str(src), "-o", str(tmp_path / fmt), *RECORD,
                        "--no-metadata", "--format", fmt)
        assert rc == 0
        with Image.open(o["output"]) as im:
            assert "dpi" not in im.info, (fmt, im.info.get("dpi"))
        assert mio.load_photo(o["output"]).dpi is None
    assert _tiff_tags(Path(o["output"])) == {282: 1.0, 283: 1.0, 296: 1, "dpi": None}
    # with the metadata, the resolution is written as it was
    rc, (o,) = _run(capsys, "restore", str(src), "-o", str(tmp_path / "kept"), *RECORD,
                    "--format", "tiff")
    assert rc == 0 and _tiff_tags(Path(o["output"])) == {282: 300.0, 283: 300.0, 296: 2,
                                                         "dpi": (300.0, 300.0)}
    # a TIFF with no resolution tags (Pillow writes none without dpi) is no 1-dpi photo
    bare = tmp_path / "bare.tif"
    _checker(bare)
    with Image.open(bare) as im:
        im.save(bare)
    assert _tiff_tags(bare) == {282: None, 283: None, 296: None, "dpi": (1, 1)}
    assert mio.load_photo(bare).dpi is None
    rc, (o,) = _run(capsys, "restore", str(bare), "-o", str(tmp_path / "bare"), *RECORD,
                    "--format", "jpeg")
    with Image.open(o["output"]) as im:
        assert rc == 0 and "dpi" not in im.info


def _png_chunk(ctype: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return (struct.pack(">I", len(data)) + ctype + data
            + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF))


def _apng16(w: int = 48, h: int = 32, frames: int = 2) -> tuple[bytes, np.ndarray]:
    """A 16-bit RGB animated PNG whose still image (IDAT) is not part of its animation (as
    Pillow's test file apng/mode_16bit.png), and that still image."""
    import struct
    import zlib

    rng = np.random.default_rng(9)

    def idat(px: np.ndarray) -> bytes:
        rows = px.astype(">u2").reshape(h, w * 3).view(np.uint8)
        return zlib.compress(b"".join(b"\x00" + r.tobytes() for r in rows))

    still = (np.kron(rng.integers(0, 16, (h // 8, w // 8, 3)), np.ones((8, 8, 1))) * 4369
             + rng.integers(0, 16, (h, w, 3))).astype(np.uint16)  # (16-bit levels)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0,
                                                                   0, 0))
    data += _png_chunk(b"acTL", struct.pack(">II", frames, 0)) + _png_chunk(b"IDAT", idat(still))
    seq = 0
    for _ in range(frames):
        frame = rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)
        data += _png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 1, 10, 0, 0))
        data += _png_chunk(b"fdAT", struct.pack(">I", seq + 1) + idat(frame))
        seq += 2
    return data + _png_chunk(b"IEND", b""), still


def test_a_16bit_apng_cut_in_its_frames_is_read_whole_at_16_bits(tmp_path, capsys):
    """Cut inside its animation frames, its still image whole: the 16-bit decoder was handed
    the cut chunk, failed, and the photo was read at 8 bits with two warnings that were not
    true - "damaged ... a grey or smeared band is possible" and "decoded with 8 bits, the
    extra precision is lost" - while the result, the file copied as it was, lost nothing. Now
    it is read at 16 bits and the warning says what is wrong: frames are missing."""
    data, still = _apng16()
    whole = tmp_path / "whole.png"
    whole.write_bytes(data)
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    for n, cut in ((len(data) - 300, "in a frame's data"), (len(data) - 12, "before IEND")):
        photo = shoot / "a.png"
        photo.write_bytes(data[:n])
        for p, warnings in ((whole, []), (photo, [mio.APNG_CUT])):
            got = mio.load_photo(p)
            assert got.bit_depth == 16 and got.info["warnings"] == warnings, cut
            assert np.array_equal(np.round(got.pixels * 65535).astype(np.uint16), still), cut
    rc, (o,) = _run(capsys, "restore", str(photo), "-o", str(tmp_path / "out"), "--plan", "D")
    assert rc == 0 and o["warnings"] == [mio.APNG_CUT]
    assert Path(o["output"]).read_bytes() == photo.read_bytes()  # (copied as it is)


def test_an_8bit_apng_cut_in_its_frames_says_so_too(tmp_path):
    frames = [Image.fromarray(np.full((24, 32, 3), v, np.uint8)) for v in (40, 120, 200)]
    whole = tmp_path / "anim.png"
    frames[0].save(whole, save_all=True, append_images=frames[1:], duration=100)
    data = whole.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[:-20])
    assert mio.load_photo(whole).info["warnings"] == []
    got = mio.load_photo(cut)
    assert got.info["warnings"] == [mio.APNG_CUT]
    assert np.allclose(got.pixels * 255, 40)
