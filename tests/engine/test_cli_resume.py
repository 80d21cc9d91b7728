"""``mend restore --skip-existing``: resuming a batch that stopped (full disk, Ctrl+C) restores
only the photos without a result, instead of writing ``NAME_mend_1`` copies of the finished
ones. A result counts when it is where this run would write it and is Mend's result of this
photo: it carries Mend's record, or it is the photo's own bytes (kept as it was)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import cli
from engine import imageio as mio
from engine.imageio import mend_output_kind, read_record

# a result written afresh (it carries Mend's record): the built-in chain, no guard
RECORD = ("--plan", "A", "--profile", "builtin", "--no-guard")
COPY = ("--plan", "D")  # nothing to fix: the photo is copied byte for byte (no record)


def _photos(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def _run(capsys, *args: str) -> tuple[int, list[str]]:
    rc = cli.main(list(args))
    return rc, capsys.readouterr().out.splitlines()


def _json(lines: list[str]) -> list[dict]:
    return [json.loads(x) for x in lines]


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _restore(capsys, shoot: Path, out: Path, *extra: str) -> tuple[int, list[dict]]:
    rc, lines = _run(capsys, "restore", str(shoot), "-o", str(out), "--json", *extra)
    return rc, _json(lines)


def test_a_complete_run_is_skipped_whole(tmp_path, capsys):
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    _photos(shoot, ["a.png", "b.png", "c.png"])
    rc, first = _restore(capsys, shoot, out, *RECORD)
    assert rc == 0 and all(mend_output_kind(o["output"]) == "result" for o in first)
    before = {p: p.read_bytes() for p in out.iterdir()}

    rc, got = _restore(capsys, shoot, out, *RECORD, "--skip-existing")
    assert rc == 0
    assert got == [{"path": o["path"], "skipped": "already restored", "output": o["output"]}
                   for o in first]
    assert {p: p.read_bytes() for p in out.iterdir()} == before  # no _1, nothing rewritten

    rc, lines = _run(capsys, "restore", str(shoot), "-o", str(out), *RECORD, "--skip-existing")
    assert rc == 0 and len(lines) == 4
    assert lines[0] == f"{shoot / 'a.png'}: skipped: already restored as {out / 'a_mend.png'}"
    assert lines[-1] == f"0 photo(s) written to {out}; 3 already restored"


def test_a_partial_run_is_resumed(tmp_path, capsys):
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    _photos(shoot, ["a.png", "b.png", "c.png"])
    _restore(capsys, shoot, out, *RECORD)
    (out / "b_mend.png").unlink()  # the batch stopped before b (say)
    rc, got = _restore(capsys, shoot, out, *RECORD, "--skip-existing")
    assert rc == 0
    assert [(Path(o["path"]).name, o.get("skipped"), Path(o["output"]).name) for o in got] == [
        ("a.png", "already restored", "a_mend.png"), ("b.png", None, "b_mend.png"),
        ("c.png", "already restored", "c_mend.png")]
    assert _files(out) == ["a_mend.png", "b_mend.png", "c_mend.png"]
    # without the flag nothing changes: every photo is restored again, beside the old results
    rc, got = _restore(capsys, shoot, out, *RECORD)
    assert rc == 0 and [Path(o["output"]).name for o in got] == [
        "a_mend_1.png", "b_mend_1.png", "c_mend_1.png"]


def test_a_file_that_is_not_mends_is_no_reason_to_skip(tmp_path, capsys):
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    _photos(shoot, ["a.png"])
    (own,) = _photos(out, ["a_mend.png"], seed=7)  # the photographer's own file, that name
    kept = own.read_bytes()
    rc, got = _restore(capsys, shoot, out, *RECORD, "--skip-existing")
    assert rc == 0 and "skipped" not in got[0]
    assert Path(got[0]["output"]).name == "a_mend_1.png"
    assert own.read_bytes() == kept


def test_a_byte_copy_result_is_recognised(tmp_path, capsys):
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    a, _ = _photos(shoot, ["a.png", "b.png"])
    rc, _ = _restore(capsys, shoot, out, *COPY)
    assert rc == 0 and (out / "a_mend.png").read_bytes() == a.read_bytes()
    assert mend_output_kind(out / "a_mend.png") is None  # no record: its bytes say it
    rc, got = _restore(capsys, shoot, out, *COPY, "--skip-existing")
    assert rc == 0 and [o.get("skipped") for o in got] == ["already restored"] * 2
    assert _files(out) == ["a_mend.png", "b_mend.png"]


def test_mirrored_subfolders_are_checked_in_their_own_output_folder(tmp_path, capsys):
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    _photos(shoot, ["x/a.png", "y/a.png", "y/b.png"])  # one name in two subfolders
    rc, _ = _restore(capsys, shoot, out, "-r", *RECORD)
    assert rc == 0 and _files(out) == ["x/a_mend.png", "y/a_mend.png", "y/b_mend.png"]
    (out / "y" / "a_mend.png").unlink()
    rc, got = _restore(capsys, shoot, out, "-r", *RECORD, "--skip-existing")
    assert rc == 0
    assert [(Path(o["path"]).relative_to(shoot).as_posix(), "skipped" in o) for o in got] == [
        ("x/a.png", True), ("y/a.png", False), ("y/b.png", True)]
    assert _files(out) == ["x/a_mend.png", "y/a_mend.png", "y/b_mend.png"]


def test_a_dry_run_shows_what_would_be_skipped(tmp_path, capsys):
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    _photos(shoot, ["a.png", "b.png"])
    _restore(capsys, shoot, out, *RECORD)
    (out / "b_mend.png").unlink()
    before = _files(out)
    rc, got = _restore(capsys, shoot, out, *RECORD, "--skip-existing", "--dry-run")
    assert rc == 0 and _files(out) == before
    assert got[0] == {"path": str(shoot / "a.png"), "skipped": "already restored",
                      "output": str(out / "a_mend.png"), "dry_run": True}
    assert "skipped" not in got[1] and got[1]["output"] == str(out / "b_mend.png")
    # (it needs to know where the results are)
    assert cli.main(["restore", str(shoot), "--dry-run", "--skip-existing"]) == 2


def test_photos_sharing_a_name_each_find_their_own_result(tmp_path, capsys):
    """a.png and a.jpg exported as PNG both aim at a_mend.png (the second gets _1): each
    result's record names its photo, so each is found (before, neither was skipped: a record
    said nothing of its photo, and both were restored again, as _2 and _3, at every resume)."""
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    _photos(shoot, ["a.png", "a.jpg"])
    rc, first = _restore(capsys, shoot, out, *RECORD, "--format", "png")
    assert rc == 0 and _files(out) == ["a_mend.png", "a_mend_1.png"]
    made = {Path(o["path"]).name: Path(o["output"]).name for o in first}
    for o in first:  # (the record: the photo's name, size and SHA-256)
        src = Path(o["path"])
        assert read_record(o["output"])["source"] == {
            "name": src.name, "size": src.stat().st_size,
            "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    rc, got = _restore(capsys, shoot, out, *RECORD, "--format", "png", "--skip-existing")
    assert rc == 0 and {Path(o["path"]).name: Path(o["output"]).name for o in got} == made
    assert all(o.get("skipped") == "already restored" for o in got)
    assert _files(out) == ["a_mend.png", "a_mend_1.png"]
    # the first one's result gone (the batch stopped before it): that photo alone is restored
    gone = next(name for name, result in made.items() if result == "a_mend.png")
    (out / "a_mend.png").unlink()
    rc, got = _restore(capsys, shoot, out, *RECORD, "--format", "png", "--skip-existing")
    assert rc == 0
    assert {Path(o["path"]).name: o.get("skipped") for o in got} == {
        gone: None, next(n for n in made if n != gone): "already restored"}
    assert _files(out) == ["a_mend.png", "a_mend_1.png"]


@pytest.mark.parametrize("kept", [True, False])
def test_same_stem_photos_in_the_output_folder_are_not_restored_again(tmp_path, capsys, kept):
    """The audit's case: hopper.bmp and hopper.png restored into their own folder (-o the
    input folder), nothing to fix: hopper_mend.png (the BMP's, written afresh as PNG) and
    hopper_mend_1.png (the PNG's own bytes). Every --skip-existing run restored both again."""
    shoot = tmp_path / "shoot"
    _photos(shoot, ["hopper.bmp", "hopper.png", "other.png"])
    how = COPY if kept else RECORD
    rc, first = _restore(capsys, shoot, shoot, *how)
    assert rc == 0
    assert [Path(o["output"]).name for o in first] == [
        "hopper_mend.png", "hopper_mend_1.png", "other_mend.png"]
    if kept:  # (the PNG's result is its own bytes: no record)
        assert (shoot / "hopper_mend_1.png").read_bytes() == (shoot / "hopper.png").read_bytes()
    before = {p.name: p.read_bytes() for p in shoot.iterdir()}
    for _ in range(2):
        rc, got = _restore(capsys, shoot, shoot, *how, "--skip-existing")
        assert rc == 0
        done = [o for o in got if "path" in o and o.get("skipped") != "mend result"]
        assert [(Path(o["path"]).name, o.get("skipped"), o.get("output")) for o in done] == [
            (Path(o["path"]).name, "already restored", o["output"]) for o in first]
        assert {p.name: p.read_bytes() for p in shoot.iterdir()} == before


def test_a_result_naming_another_photo_is_not_this_ones(tmp_path, capsys):
    """a_mend.png made from a.jpg (--format png) is not a.png's result: before, a.png restored
    on its own was skipped, its name being taken by a file with Mend's record."""
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    jpg, png = _photos(shoot, ["a.jpg", "a.png"])
    rc, _ = _run(capsys, "restore", str(jpg), "-o", str(out), *RECORD, "--format", "png")
    assert rc == 0 and _files(out) == ["a_mend.png"]
    rc, lines = _run(capsys, "restore", str(png), "-o", str(out), *RECORD, "--skip-existing",
                     "--json")
    (got,) = _json(lines)
    assert rc == 0 and "skipped" not in got and Path(got["output"]).name == "a_mend_1.png"
    rc, lines = _run(capsys, "restore", str(jpg), str(png), "-o", str(out), *RECORD,
                     "--format", "png", "--skip-existing", "--json")
    assert rc == 0 and [Path(o["output"]).name for o in _json(lines)] == [
        "a_mend.png", "a_mend_1.png"]  # (both found: by their records)


def test_without_metadata_the_record_names_no_file_and_the_bytes_find_the_result(
        tmp_path, capsys):
    """--no-metadata drops names: the record's source is the photo's size and SHA-256 alone,
    and a resume finds each same-stem photo's result by its bytes."""
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    _photos(shoot, ["a.png", "a.jpg"])
    rc, first = _restore(capsys, shoot, out, *RECORD, "--format", "png", "--no-metadata")
    assert rc == 0 and _files(out) == ["a_mend.png", "a_mend_1.png"]
    for o in first:
        src = Path(o["path"])
        assert read_record(o["output"])["source"] == {
            "size": src.stat().st_size, "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    rc, got = _restore(capsys, shoot, out, *RECORD, "--format", "png", "--no-metadata",
                       "--skip-existing")
    assert rc == 0 and [o.get("skipped") for o in got] == ["already restored"] * 2
    assert {o["path"]: o["output"] for o in got} == {o["path"]: o["output"] for o in first}
    assert _files(out) == ["a_mend.png", "a_mend_1.png"]


def test_one_name_and_size_in_two_folders_is_told_apart_by_the_bytes(tmp_path, capsys):
    """x/a.bmp and y/a.bmp (same size: uncompressed) both go to OUT: a_mend.png and
    a_mend_1.png. Their records have one name and one size: the SHA-256 tells them apart."""
    (x,) = _photos(tmp_path / "x", ["a.bmp"], seed=1)
    (y,) = _photos(tmp_path / "y", ["a.bmp"], seed=2)
    assert x.stat().st_size == y.stat().st_size and x.read_bytes() != y.read_bytes()
    out = tmp_path / "out"
    rc, lines = _run(capsys, "restore", str(x), str(y), "-o", str(out), *RECORD, "--json")
    assert rc == 0 and [Path(o["output"]).name for o in _json(lines)] == [
        "a_mend.png", "a_mend_1.png"]
    (out / "a_mend.png").unlink()  # x's
    rc, lines = _run(capsys, "restore", str(x), str(y), "-o", str(out), *RECORD, "--json",
                     "--skip-existing")
    got = _json(lines)
    assert rc == 0 and [(o["path"], o.get("skipped"), Path(o["output"]).name) for o in got] == [
        (str(x), None, "a_mend.png"), (str(y), "already restored", "a_mend_1.png")]


def test_results_of_an_earlier_version_are_used_as_before_and_said(tmp_path, capsys,
                                                                   monkeypatch):
    """A record with no "source" (an earlier Mend's) counts, as it did, for a photo alone in
    having its name; photos sharing a name cannot tell theirs: restored again, said once."""
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    _photos(shoot, ["a.png", "a.jpg", "b.png"])
    with monkeypatch.context() as m:  # what an earlier version wrote: no source in the record
        m.setattr(mio, "source_record", lambda _path, **_kw: None)
        rc, _ = _restore(capsys, shoot, out, *RECORD, "--format", "png")
    assert rc == 0 and _files(out) == ["a_mend.png", "a_mend_1.png", "b_mend.png"]
    assert "source" not in read_record(out / "a_mend.png")
    rc, got = _restore(capsys, shoot, out, *RECORD, "--format", "png", "--skip-existing")
    assert rc == 0
    note, *rest = got
    assert note["path"] == str(out) and note["photos"] == [str(shoot / "a.jpg"),
                                                           str(shoot / "a.png")]
    assert note["note"].startswith("2 photo(s) restored again: the results under their names "
                                   "here were written by an earlier version of Mend")
    assert [(Path(o["path"]).name, o.get("skipped")) for o in rest] == [
        ("a.jpg", None), ("a.png", None), ("b.png", "already restored")]
    # restored again, they carry their source now: the next resume finds them, no note
    rc, got = _restore(capsys, shoot, out, *RECORD, "--format", "png", "--skip-existing")
    assert rc == 0 and [o.get("skipped") for o in got] == ["already restored"] * 3
    rc, lines = _run(capsys, "restore", str(shoot), "-o", str(out), *RECORD, "--format", "png",
                     "--skip-existing")
    assert rc == 0 and not any("note" in line for line in lines)
