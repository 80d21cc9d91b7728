"""Session 18's audit of `mend restore` on real photos, as a photographer runs it: a HEIC cut
short (decoded green where its data is missing, and written as a good result), other files cut
short called "not a photo format", AVIF files left out of folders, a dry run naming one result
for photos that the run writes under different names, and --skip-existing missing the result
of a photo whose extension is not its format."""
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
