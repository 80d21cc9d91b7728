"""File and folder names photographers and operating systems produce: Unicode (NFC and NFD),
names that are not valid UTF-8 (Linux), tabs and newlines, leading dashes, names near the
255-byte limit, odd extensions, links. The CLI's JSON stays valid JSON whatever the terminal's
encoding, output names always fit, and the same photo reached by two names is restored once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import imageio as mio
from engine.api import OutputOptions
from tests import warm_cli

ROOT = Path(__file__).resolve().parents[2]
needs_bytes_names = pytest.mark.skipif(sys.platform in ("win32", "darwin"),
                                       reason="names that are not UTF-8 exist on Linux only")


def mend(*args: str, cwd: Path | None = None, env: dict | None = None,
         timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m engine.cli ARGS`` in its own process (bytes out), started warm where its
    environment allows (tests/warm_cli.py): this process's environment (``env`` added), so
    the runs that add nothing but ``cwd`` fork from the zygotes the other CLI tests use; those
    of another encoding or locale are one-offs, started cold."""
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.update(env or {})
    return warm_cli.run(args, env=e, cwd=cwd or ROOT, timeout=timeout, text=False)


def write(p: Path, seed: int = 0, size: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p, "JPEG")
    return p


def odd_names() -> list[str]:
    names = ["é café.jpg", unicodedata.normalize("NFD", "Été.JPG"), "日本語🙂.jpeg",
             "שלום.TIF", "tab\tand\nnewline.jpg", "-photo.jpg", "x.jpg.png", "IMG_0001.HEIC",
             "z" * 250 + ".jpg"]
    if sys.platform not in ("win32", "darwin"):
        names.append(os.fsdecode(b"\xff\xfe bytes.jpg"))
    return names


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("odd")
    for i, n in enumerate(odd_names()):
        write(d / n, seed=i)  # (a JPEG named .TIF/.HEIC/.png: read as what it is)
    write(d / "noext", seed=50)  # no extension: not a photo in a folder
    write(d / ".hidden.jpg", seed=51)  # hidden: skipped
    (d / "folder.jpg").mkdir()  # a folder named like a photo: not a photo
    write(d / "folder.jpg" / "inner.jpg", seed=52)
    (d / "link.jpg").symlink_to(d / "noext")  # a link to a photo is the photo
    (d / "dangling.jpg").symlink_to(d / "missing.jpg")  # a broken link: nothing
    return d


def _json_lines(raw: bytes, encoding: str) -> list[dict]:
    return [json.loads(x) for x in raw.decode(encoding).splitlines() if x.strip()]


def _expected(folder: Path) -> set[str]:
    return {str(folder / n) for n in odd_names()} | {str(folder / "link.jpg")}


@pytest.mark.parametrize("encoding", ["ascii", "cp1252", "utf-8"])
def test_classify_json_is_valid_json_whatever_the_stdout_encoding(odd_folder, encoding):
    """``PYTHONIOENCODING=ascii`` (or a cp1252 console): "é" was printed as ``\\xe9`` and an
    emoji as ``\\U0001f642``, neither of which is JSON: the line could not be parsed."""
    r = mend("classify", str(odd_folder), "--backend", "builtin", "--json",
             env={"PYTHONIOENCODING": encoding})
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    out = _json_lines(r.stdout, encoding)  # every line parses
    assert {o["path"] for o in out} == _expected(odd_folder)  # names come back exactly
    assert all(o["label"] in "ABCD" for o in out)


def test_human_output_on_an_ascii_or_c_locale_terminal_does_not_crash(odd_folder):
    for env in ({"PYTHONIOENCODING": "ascii"}, {"LANG": "C", "LC_ALL": "C"}):
        r = mend("classify", str(odd_folder), "--backend", "builtin", env=env)
        assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
        assert f"{len(_expected(odd_folder))} photo(s)".encode() in r.stdout


def test_restore_json_names_results_of_odd_names_and_writes_them_beside(odd_folder, tmp_path):
    out_dir = tmp_path / "out ünïcode"
    r = mend("restore", str(odd_folder), "-o", str(out_dir), "--plan", "D", "--profile",
             "builtin", "--json", env={"PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    out = _json_lines(r.stdout, "ascii")
    assert {o["path"] for o in out} == _expected(odd_folder)
    for o in out:
        res = Path(o["output"])
        assert res.parent == out_dir and res.exists()  # exactly in -o, under the name said
        src_stem = Path(o["path"]).stem
        assert res.stem.endswith("_mend") and src_stem.startswith(res.stem[:-len("_mend")])
    assert len(list(out_dir.iterdir())) == len(out)


def test_restore_json_with_a_non_utf8_name_round_trips_on_a_utf8_stdout(tmp_path):
    if sys.platform in ("win32", "darwin"):
        pytest.skip("names that are not UTF-8 exist on Linux only")
    src = write(tmp_path / os.fsdecode(b"caf\xe9 latin1.jpg"))
    r = mend("restore", str(src), "-o", str(tmp_path / "o"), "--plan", "D", "--profile",
             "builtin", "--json", env={"PYTHONIOENCODING": "utf-8"})
    assert r.returncode == 0, r.stderr
    (o,) = _json_lines(r.stdout, "utf-8")
    assert o["path"] == str(src)  # the escape decodes back to the name's surrogate escape
    assert os.path.exists(o["output"])  # ... and the path opens


def test_a_file_named_with_a_leading_dash(tmp_path):
    write(tmp_path / "-photo.jpg")
    r = mend("classify", "--backend", "builtin", "--json", "--", "-photo.jpg", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [o["path"] for o in _json_lines(r.stdout, "utf-8")] == ["-photo.jpg"]
    r = mend("restore", "--plan", "D", "--profile", "builtin", "--output=-out", "--",
             "-photo.jpg", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "-out" / "-photo_mend.jpg").exists()
    # without "--" argparse takes it for an option: the usage error says what to do
    r = mend("classify", "--backend", "builtin", "-photo.jpg", cwd=tmp_path)
    assert r.returncode == 2 and b"Traceback" not in r.stderr
    assert b"-- -photo.jpg" in r.stderr and b"./-photo.jpg" in r.stderr, r.stderr


def test_the_same_photo_by_two_names_is_restored_once(tmp_path):
    """A hard link (and, on macOS/Windows, IMG.JPG named as img.jpg) is the same file under
    another name; realpath does not see it: it was restored twice."""
    a = write(tmp_path / "in" / "a.jpg")
    b = tmp_path / "in" / "b.jpg"
    os.link(a, b)
    out = tmp_path / "out"
    r = mend("restore", str(a), str(b), str(tmp_path / "in" / "." / "a.jpg"), "-o", str(out),
             "--plan", "D", "--profile", "builtin", "--json")
    assert r.returncode == 0, r.stderr
    assert [o["path"] for o in _json_lines(r.stdout, "utf-8")] == [str(a)]
    assert [p.name for p in out.iterdir()] == ["a_mend.jpg"]


def test_a_b_result_of_a_name_near_the_limit_writes_its_mask_also_on_a_clash(tmp_path):
    """The result of a 250-byte name got ``..._mend_1.jpg`` (its first name taken); its mask
    ``..._mend_1_mask.png`` was 257 bytes: the save failed after the result was written."""
    src = write(tmp_path / ("w" * 250 + ".jpg"), size=64)
    out = tmp_path / "out"
    for run in (1, 2):
        r = mend("restore", str(src), "-o", str(out), "--plan", "B", "--profile", "builtin",
                 "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        (o,) = _json_lines(r.stdout, "utf-8")
        assert "error" not in o and Path(o["output"]).exists()
        assert Path(o["output"]).stem.endswith("_mend" if run == 1 else "_mend_1")
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 4 and sum(n.endswith("_mask.png") for n in names) == 2, names


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff", "webp"])
def test_every_name_derived_from_a_result_name_fits(tmp_path, fmt):
    """Result, its ``_N`` clash, its mask (``_mask.png``, or ``_<ext>_mask.png`` when another
    format's result took that) and the mask's own clash suffix all stay within 255 bytes, for
    ASCII, 3-byte and 4-byte characters."""
    for stem in ("x" * 251, "写" * 83, "🙂" * 62, "e\u0301" * 83):
        src = write(tmp_path / f"{stem}.jpg")
        dest = mio.output_path_for(src, OutputOptions(out_dir=tmp_path / "o", format=fmt))
        worst = dest.with_name(f"{dest.stem}_9999_webp_mask_9999.png")
        assert len(os.fsencode(worst.name)) <= mio.NAME_MAX_BYTES, (fmt, len(worst.name))
        assert stem.startswith(dest.stem[:-len("_mend")])
        src.unlink()


@pytest.mark.parametrize("o_tmpfile", [True, False])
@pytest.mark.parametrize("overwrite", [True, False])
def test_atomic_writes_of_names_near_the_limit(tmp_path, monkeypatch, o_tmpfile, overwrite):
    """The temp file was ``.<name>.mend-<pid>-<hex>.part``: 28 bytes longer than the name, so
    any name over ~227 bytes failed with "File name too long" where it is used (macOS and
    Windows always; Linux for a replaced file: sidecars, exports, the thumbnail cache)."""
    monkeypatch.setattr(mio, "_USE_O_TMPFILE", o_tmpfile and mio._USE_O_TMPFILE)
    for name in ("n" * 255, "写" * 85, "x.jpg", ".h", "é" * 100 + ".json"):
        got = mio.atomic_write_bytes(tmp_path / name, b"data", overwrite=overwrite)
        assert got == tmp_path / name and got.read_bytes() == b"data"
        tmp = mio._temp_name(tmp_path / name)
        assert len(os.fsencode(tmp.name)) <= mio.NAME_MAX_BYTES
        assert mio._PART_RE.match(tmp.name)  # still swept after a crash
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_windows_path_limit_is_kept_by_result_mask_and_temp_names(tmp_path, monkeypatch):
    """Windows (without long paths enabled) refuses paths over 259 characters: a result name
    is shortened so that the result, its clash suffix and its mask fit below the folder."""
    monkeypatch.setattr(mio, "MAX_PATH_CHARS", 259)
    folder = tmp_path / ("d" * max(1, 200 - len(str(tmp_path))))
    folder.mkdir()
    src = write(tmp_path / ("p" * 120 + ".jpg"))
    dest = mio.output_path_for(src, OutputOptions(out_dir=folder))
    assert dest.parent == folder and dest.stem.startswith("p") and dest.stem.endswith("_mend")
    worst = dest.with_name(f"{dest.stem}_9999_mask_9999.png")
    assert len(os.path.abspath(worst)) <= 259
    assert len(os.path.abspath(mio._temp_name(dest))) <= 259
    # a short name in a short folder is left as it is
    assert mio.output_path_for(src, OutputOptions(out_dir=tmp_path)).stem == "p" * 120 + "_mend"
    # off Windows (no such limit) the name is only held to 255 bytes
    monkeypatch.setattr(mio, "MAX_PATH_CHARS", None)
    assert mio.output_path_for(src, OutputOptions(out_dir=folder)).stem == "p" * 120 + "_mend"


def test_odd_extensions_and_folder_listing(odd_folder):
    got = {p.name for p in mio.iter_photos([odd_folder])}
    assert got == set(odd_names()) | {"link.jpg"}  # not noext/.hidden/folder.jpg/dangling
    assert mio.output_path_for(odd_folder / "IMG_0001.HEIC").name == "IMG_0001_mend.jpg"
    assert mio.output_path_for(odd_folder / "x.jpg.png").name == "x.jpg_mend.png"
    assert mio.output_path_for(odd_folder / "x.jpg.png", source_format="JPEG").name == \
        "x.jpg_mend.jpg"
    # the NFD name keeps its own (decomposed) characters: the result is found beside it
    nfd = unicodedata.normalize("NFD", "Été.JPG")
    assert mio.output_path_for(odd_folder / nfd).name == unicodedata.normalize("NFD",
                                                                              "Été_mend.jpg")


@needs_bytes_names
def test_classify_a_folder_whose_own_name_is_not_utf8(tmp_path):
    d = tmp_path / os.fsdecode(b"shoot \xe9t\xe9")
    write(d / "a.jpg")
    r = mend("classify", str(d), "--backend", "builtin", "--json",
             env={"PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0, r.stderr
    assert [o["path"] for o in _json_lines(r.stdout, "ascii")] == [str(d / "a.jpg")]
