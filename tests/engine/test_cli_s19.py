"""The ``mend`` CLI's rough edges (audit of session 19): a dry run exits as the run would, a
file where a ``-r`` subfolder's results go fails those photos clearly, ``--skip-existing``
notices a photo replaced by another of the same name and size, ``mend doctor`` reads as
lines, a signal once the work is done (or during a download) no longer ends the process without
a word, on a terminal a failed photo's error line is not written after its progress line, and
``classify`` leaves out the masks Mend saved and says a photo's class once."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import cli

from .test_cli_s12 import _files, _json, _photos, _run, _sha

ROOT = Path(__file__).resolve().parents[2]
RECORD = ("--plan", "A", "--profile", "builtin", "--no-guard")  # a result with Mend's record


def _checker(path: Path, size: int = 128) -> Path:
    """A photo the analyzer calls D (clean): big flat squares, sharp edges."""
    y, x = np.mgrid[0:size, 0:size]
    g = ((x // 16 + y // 16) % 2 * 180 + 40).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.dstack([g, g // 2 + 60, 255 - g])).save(path)
    return path


def _cut(path: Path) -> Path:
    """A PNG cut short: its header reads (it is listed as a photo), its pixels do not."""
    _photos(path.parent, [path.name])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ------------------------------------------------------------------------------------------
# 1. the dry run's exit code


def test_a_dry_run_exits_as_the_run_would_and_says_so(tmp_path, capsys):
    """A photo whose run would stop (a model its plan needs is not installed) made the run
    exit 1 but the dry run 0."""
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    _photos(shoot, ["a.png"])  # (noise: class A, laptop's Real-ESRGAN is not installed)
    _checker(shoot / "b.png")  # nothing to fix
    for o in ((), ("-o", str(out))):
        rc, lines, _ = _run(capsys, "restore", str(shoot), *o, "--profile", "laptop",
                            "--dry-run", "--json")
        got = _json(lines)
        assert rc == 1 and [g.get("would_fail") for g in got] == [True, None]
        assert got[0]["output"] is None
    rc, lines, _ = _run(capsys, "restore", str(shoot), "--profile", "laptop", "--dry-run")
    assert rc == 1 and lines[0].endswith("→ nothing written (the run would stop)")
    assert lines[-1] == ("1 photo(s) planned; 1 would fail (the run would stop) - the run "
                         "would exit with 1")
    rc, lines, _ = _run(capsys, "restore", str(shoot), "-o", str(out), "--profile", "laptop",
                        "--json")
    assert rc == 1 and "is not installed" in _json(lines)[0]["error"]
    # what the run can do, the dry run says so with 0
    rc, lines, _ = _run(capsys, "restore", str(shoot), "--profile", "builtin", "--dry-run")
    assert rc == 0 and lines[-1] == "2 photo(s) planned"


def test_a_dry_run_of_an_unreadable_photo_exits_1(tmp_path, capsys):
    shoot = tmp_path / "shoot"
    _checker(shoot / "a.png")
    _cut(shoot / "b.png")
    rc, lines, _ = _run(capsys, "restore", str(shoot), "--dry-run", "--profile", "builtin")
    assert rc == 1 and lines[1].startswith(f"{shoot / 'b.png'}: error: ")
    assert lines[-1] == "1 photo(s) planned; 1 failed - the run would exit with 1"


# ------------------------------------------------------------------------------------------
# 2. a file where a subfolder's results go


def test_a_file_named_like_a_subfolder_fails_its_photos_clearly(tmp_path, capsys):
    """OUT/DCIM is the photographer's file and the photos are in IN/DCIM/ (and below): each
    of those photos says which file is in the way ("File exists", "Not a directory" before),
    the file is left as it was, the other photos are restored; the dry run says the same."""
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    top, dcim, deep = _photos(shoot, ["top.png", "DCIM/a.png", "DCIM/2024/b.png"])
    out.mkdir()
    (out / "DCIM").write_bytes(b"my notes")
    before = {p: _sha(p) for p in (top, dcim, deep)}
    why = "not a folder (rename or move it to restore the photos of this subfolder there)"
    errors = [{"path": str(dcim), "error": f"the output folder {out / 'DCIM'} is a file, {why}"},
              {"path": str(deep), "error": f"cannot create the output folder "
                                           f"{out / 'DCIM' / '2024'}: {out / 'DCIM'} is a "
                                           f"file, {why}"}]
    for dry in (("--dry-run",), ()):
        rc, lines, err = _run(capsys, "restore", str(shoot), "-r", "-o", str(out), *RECORD,
                              "--json", *dry)
        got = {o["path"]: o for o in _json(lines)}
        assert rc == 1 and "Traceback" not in err
        assert [got[e["path"]] for e in errors] == errors
        assert "error" not in got[str(top)]
    assert _files(out) == ["DCIM", "top_mend.png"]
    assert (out / "DCIM").read_bytes() == b"my notes"
    assert {p: _sha(p) for p in before} == before


@pytest.mark.skipif(os.name != "posix", reason="a symbolic link")
def test_a_link_to_nothing_named_like_a_subfolder(tmp_path, capsys):
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    (a,) = _photos(shoot, ["DCIM/a.png"])
    out.mkdir()
    (out / "DCIM").symlink_to(tmp_path / "gone")
    rc, lines, _ = _run(capsys, "restore", str(shoot), "-r", "-o", str(out), *RECORD)
    assert rc == 1 and lines[0] == (
        f"{a}: error: the output folder {out / 'DCIM'} is a link to nothing, not a folder "
        "(rename or move it to restore the photos of this subfolder there)")
    assert os.path.islink(out / "DCIM") and not (tmp_path / "gone").exists()


# ------------------------------------------------------------------------------------------
# 3. --skip-existing and a photo replaced under its name


def test_a_photo_replaced_by_another_of_its_name_and_size_is_restored_again(
        tmp_path, capsys, monkeypatch):
    """a.bmp (uncompressed: any photo of its dimensions has its size) replaced by another
    photo after its result was written was skipped as already restored: the record's name and
    size matched, its SHA-256 was never looked at. Now a photo changed since its result was
    written (its inode's change time, which a copy keeping the old times still sets) is hashed;
    the photos that did not change are not, as before."""
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    a, _ = _photos(shoot, ["a.bmp", "b.bmp"])
    rc, _, _ = _run(capsys, "restore", str(shoot), "-o", str(out), *RECORD)
    assert rc == 0 and _files(out) == ["a_mend.png", "b_mend.png"]
    st = a.stat()
    (other,) = _photos(tmp_path / "elsewhere", ["a.bmp"], seed=9)
    assert other.stat().st_size == st.st_size and other.read_bytes() != a.read_bytes()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))  # (cp -p, rsync -a: the old times)
    os.replace(other, a)

    hashed: list[Path] = []
    real = cli._sha256
    monkeypatch.setattr(cli, "_sha256", lambda p: hashed.append(Path(p)) or real(p))
    rc, lines, _ = _run(capsys, "restore", str(shoot), "-o", str(out), *RECORD,
                        "--skip-existing", "--json")
    got = _json(lines)
    assert rc == 0 and hashed == [a]  # (b did not change: not read)
    assert [(Path(o["path"]).name, o.get("skipped"), Path(o["output"]).name) for o in got] == [
        ("a.bmp", None, "a_mend_1.png"), ("b.bmp", "already restored", "b_mend.png")]
    # the new a's result names it: found the next time
    hashed.clear()
    rc, lines, _ = _run(capsys, "restore", str(shoot), "-o", str(out), *RECORD,
                        "--skip-existing", "--json")
    assert rc == 0 and [o.get("skipped") for o in _json(lines)] == ["already restored"] * 2


# ------------------------------------------------------------------------------------------
# 4. mend doctor


def test_doctor_prints_lines_not_python_dicts(capsys, monkeypatch):
    from engine.models import info

    real = info.doctor_models

    def with_a_problem(store=None):
        got = real(store)
        got["problems"] = {"big-lama": "corrupt"}
        return got

    monkeypatch.setattr(info, "doctor_models", with_a_problem)
    assert cli.main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not [x for x in lines if "{" in x or "[" in x or "': " in x or "True" in x], lines
    assert lines[0].startswith("Mend ") and lines[-1].startswith("recommended profile: ")
    assert any(x.startswith("device: ") for x in lines)
    assert "  corrupt: big-lama (repair it: mend models verify --repair big-lama)" in lines
    assert "  builtin  ready" in lines
    laptop = next(x for x in lines if x.startswith("  laptop "))
    assert "not ready: " in laptop and "mend models pull --profile laptop" in laptop

    monkeypatch.setattr(info, "doctor_models", lambda store=None: (_ for _ in ()).throw(
        cli.EngineError("the model folder cannot be read")))
    assert cli.main(["doctor"]) == 0
    assert "models: error: the model folder cannot be read" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# 5. signals: once the work is done, and during a download


_LATE = r"""
import os, signal, sys, time
from engine import cli

when, sig, src, out = sys.argv[1], getattr(signal, sys.argv[2]), sys.argv[3], sys.argv[4]
sys.argv = ["mend", "restore", src, "-o", out, "--plan", "D"]
if when == "exit":  # while Python shuts down (torch's teardown alone took 0.4 s)
    import atexit
    atexit.register(lambda: (os.kill(os.getpid(), sig), time.sleep(0.5)))
code = cli.main()
if when == "after":  # the work done and said, before the process ends
    os.kill(os.getpid(), sig)
    time.sleep(0.5)
sys.exit(code)
"""


LATE_CASES = [("after", "SIGTERM"), ("exit", "SIGTERM"), ("exit", "SIGINT")]


@pytest.fixture(scope="module")
def late_signal_runs(tmp_path_factory):
    """The three processes of the test below (each its own, with its own photos and output
    folder: independent), started together on first use instead of one after the other.
    (when, sig) -> (its folder, its photos, its process)."""
    runs = {}
    for when, sig in LATE_CASES:
        d = tmp_path_factory.mktemp(f"late-{when}-{sig}")
        src = _photos(d / "shoot", ["a.png", "b.png"])
        runs[when, sig] = d, src, subprocess.Popen(
            [sys.executable, "-c", _LATE, when, sig, str(d / "shoot"), str(d / "out")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield runs
    for _d, _src, proc in runs.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.skipif(os.name != "posix", reason="signals a process sends itself")
@pytest.mark.parametrize(("when", "sig"), LATE_CASES)
def test_a_signal_once_the_work_is_done_leaves_with_its_exit_code(late_signal_runs, when, sig):
    """SIGTERM after the batch had finished killed the process without a word (exit -15: 143
    in a shell, "stopped by SIGTERM" for a batch that was not stopped), Ctrl+C there printed
    a traceback. Now the process leaves with the batch's own exit code, its output whole."""
    tmp_path, src, proc = late_signal_runs[when, sig]
    out, err = proc.communicate(timeout=120)
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.splitlines()[-1] == f"2 photo(s) written to {tmp_path / 'out'}"
    assert _files(tmp_path / "out") == ["a_mend.png", "b_mend.png"]
    assert [(tmp_path / "out" / f"{p.stem}_mend.png").read_bytes() for p in src] == \
        [p.read_bytes() for p in src]


_PULL = r"""
import os, signal, sys, time
from engine import cli
from engine.models.store import ModelStore

def pull(self, model_id, progress=None):  # a download under way
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    raise AssertionError("SIGTERM did not stop the download")

ModelStore.pull = pull
sys.argv = ["mend", "models", "pull", "realesr-general-x4v3"]
sys.exit(cli.main())
"""


@pytest.mark.skipif(os.name != "posix", reason="signals a process sends itself")
def test_sigterm_during_a_download_says_so(tmp_path):
    """Ctrl+C stopped a download with "mend: interrupted" (130); SIGTERM killed it silently."""
    env = {**os.environ, "MEND_MODELS_DIR": str(tmp_path / "models")}
    r = subprocess.run([sys.executable, "-c", _PULL], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=False, env=env)
    assert r.returncode == 143 and r.stderr.splitlines()[-1] == "mend: stopped by SIGTERM"
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------
# 6. on a terminal: the progress line, the error lines, the tally


class _Terminal(io.StringIO):
    """stdout and stderr of a terminal: one screen, both streams in order."""

    def isatty(self) -> bool:
        return True


def _screen(text: str) -> list[str]:
    """The lines a terminal shows: a carriage return goes back to the start of the line (what
    follows overwrites what was there; the lines written here wipe with spaces)."""
    shown = []
    for raw in text.split("\n"):
        line = ""
        for part in raw.split("\r"):
            line = part + line[len(part):]
        shown.append(line.rstrip())
    return shown[:-1] if shown and shown[-1] == "" else shown


def test_a_failed_last_photo_on_a_terminal_has_its_own_line_and_the_right_tally(
        tmp_path, monkeypatch):
    """A photo that failed while its progress line was open had its error line written after
    "b.png:   0% loading b.png" on the same line - the last photo's too, just before the
    tally."""
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    a = _checker(shoot / "a.png")
    b = _cut(shoot / "b.png")
    c = _cut(shoot / "c.png")
    cli.main(["restore", str(a), "-o", str(out), "--plan", "D"])  # (a: already restored)
    term = _Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    rc = cli.main(["restore", str(shoot), "-o", str(out), "--skip-existing", "--plan", "D"])
    shown = _screen(term.getvalue())
    assert rc == 1 and len(shown) == 4, shown
    assert shown[0] == f"{a}: skipped: already restored as {out / 'a_mend.png'}"
    assert shown[1].startswith(f"{b}: error: ") and shown[2].startswith(f"{c}: error: ")
    assert shown[3] == f"0 photo(s) written to {out}; 1 already restored; 2 failed"

    # the last photo skipped: written, failed and skipped counted, the skipped one named
    (out / "a_mend.png").unlink()
    cli.main(["restore", str(a), "-o", str(out), "--plan", "D"])
    term.seek(0)
    term.truncate()
    rc = cli.main(["restore", str(c), str(b), str(a), "-o", str(out), "--skip-existing",
                   "--plan", "D"])
    shown = _screen(term.getvalue())
    assert rc == 1 and [x.split(": ")[0] for x in shown[:3]] == [str(c), str(b), str(a)]
    assert shown[2:] == [f"{a}: skipped: already restored as {out / 'a_mend.png'}",
                         f"0 photo(s) written to {out}; 1 already restored; 2 failed"]


# ------------------------------------------------------------------------------------------
# 7. mend classify on a folder, as a photographer sees it


def test_classify_skips_the_masks_mend_saved_and_says_its_class_once(tmp_path, capsys):
    """A folder of results held the reflection masks Mend saved beside them: `classify -r`
    classified each mask as a photo ("D Clean (73%)") and counted it. And each line said its
    class twice: "D Clean (62%), runner-up ... — Clean (62%)"."""
    from engine.imageio import save_mask

    shoot = tmp_path / "shoot"
    a = _checker(shoot / "a.png")
    mask = save_mask(np.ones((128, 128), bool), shoot / "mended" / "a_mend_mask.png")
    rc, lines, _ = _run(capsys, "classify", str(shoot), "-r", "--backend", "builtin")
    assert rc == 0 and len(lines) == 3, lines
    assert lines[0] == f"{mask}: skipped: a mask Mend saved (name the file itself to classify it)"
    assert lines[1].startswith(f"{a}: D Clean (") and lines[1].count("Clean (") == 1, lines[1]
    assert lines[2] == ("1 photo(s): A Low quality 0 · B Reflection 0 · C Motion blur 0 · "
                        "D Clean 1; 1 mask(s) Mend saved skipped")
    rc, lines, _ = _run(capsys, "classify", str(shoot), "-r", "--json")
    assert rc == 0 and _json(lines)[0] == {"path": str(mask), "skipped": "mend mask"}
    rc, lines, _ = _run(capsys, "classify", str(mask), "--json")  # named itself: classified
    assert rc == 0 and _json(lines)[0]["label"] in "ABCD"


@pytest.mark.parametrize("backend", ["clip", "vlm"])
def test_classify_with_a_backend_whose_model_is_missing_stops_at_the_first_photo(
        tmp_path, capsys, monkeypatch, backend):
    """Before: each photo of a folder was decoded and got the same long "not installed" error,
    line after line. Now the first photo says it, the batch stops there (every later photo
    would fail the same way) and each other photo gets its not-run line; exit code 1."""
    from engine.imageio import load_photo

    monkeypatch.setenv("MEND_MODELS_DIR", str(tmp_path / "no-models"))
    photos = _photos(tmp_path / "in", ["a.png", "b.png", "c.png", "d.png", "e.png"])
    loaded = []
    monkeypatch.setattr("engine.imageio.load_photo",
                        lambda p, *a, **kw: loaded.append(p) or load_photo(p, *a, **kw))
    rc, out, err = _run(capsys, "classify", str(tmp_path / "in"), "--backend", backend,
                        "--json")
    lines = _json(out)
    assert rc == 1 and [Path(o["path"]).name for o in lines] == [p.name for p in photos]
    assert "is not installed" in lines[0]["error"] and "not_run" not in lines[0]
    assert all(o.get("not_run") and "model is not installed" in o["error"] for o in lines[1:])
    assert f"the {backend} backend's model is not installed" in err and "4 photo(s)" in err
    assert len(loaded) <= 4  # (at most the first chunk decoded, not all five)
