"""``mend restore --skip-existing``: resuming a batch that stopped (full disk, Ctrl+C) restores
only the photos without a result, instead of writing ``NAME_mend_1`` copies of the finished
ones. A result counts when it is where this run would write it and is Mend's result of this
photo: it carries Mend's record, or it is the photo's own bytes (kept as it was)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from engine import cli
from engine.imageio import mend_output_kind

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


def test_a_name_two_photos_share_is_not_taken_as_either_ones(tmp_path, capsys):
    """a.png and a.jpg exported as PNG both aim at a_mend.png (the second gets _1): a record
    does not say which photo it came from, so neither is skipped - as without the flag."""
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    _photos(shoot, ["a.png", "a.jpg"])
    rc, _ = _restore(capsys, shoot, out, *RECORD, "--format", "png")
    assert rc == 0 and len(_files(out)) == 2
    rc, got = _restore(capsys, shoot, out, *RECORD, "--format", "png", "--skip-existing")
    assert rc == 0 and not any("skipped" in o for o in got) and len(_files(out)) == 4
