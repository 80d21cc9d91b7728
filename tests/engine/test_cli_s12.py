"""The batch CLI under what a photographer's machine does to it: the output disk fills up,
Ctrl+C and SIGTERM arrive mid-batch and mid-write, the output folder cannot be written, a
subfolder cannot be listed, a photo changes while it is restored, results are written next to
the originals. The standard: a clear error, the original never touched, no partial or temp
file left, an exit code and ``--json`` lines that say what happened to every input."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import cli
from engine.api import Degradation, JobRequest, OutputOptions
from engine.errors import OutOfMemory, SaveFailed
from engine.imageio import load_photo
from engine.pipeline import Engine

ROOT = Path(__file__).resolve().parents[2]


def _photos(folder: Path, names: list[str], size: tuple[int, int] = (48, 64),
            seed: int = 0) -> list[Path]:
    """Random-noise photos (incompressible: their PNG size is known in advance)."""
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _run(capsys, *args: str) -> tuple[int, list[str], str]:
    rc = cli.main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out.splitlines(), cap.err


def _json(lines: list[str]) -> list[dict]:
    return [json.loads(x) for x in lines]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


@pytest.fixture()
def small_disk(tmp_path):
    """A real small file system (tmpfs) for a real ENOSPC or EROFS: needs root and mount."""
    mounted: list[Path] = []

    def make(name: str, size: str, read_only: bool = False) -> Path:
        if os.name != "posix" or os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a small tmpfs (a real full or read-only disk) needs root")
        d = tmp_path / name
        d.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)],
                           capture_output=True, text=True, check=False)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", str(d)], capture_output=True, check=False)


# ------------------------------------------------------------------------------------------
# 1. the output disk fills up mid-batch


def test_a_full_output_disk_stops_the_batch_with_one_message(tmp_path, small_disk, capsys):
    """Real ENOSPC: 96 KB photos copied (class D) onto a 256 KB disk. It used to go on with
    every photo and print one 'disk is full' error each; now the photo that met it has its
    error, the rest are not run (one line each in JSON, one message on stderr), exit 1. The
    results written are complete, no temp file is left, the originals are untouched."""
    src = _photos(tmp_path / "shoot", [f"p{i}.png" for i in range(6)], size=(160, 200))
    before = {p: _sha(p) for p in src}
    disk = small_disk("disk", "256k")
    out = disk / "out"
    rc, lines, err = _run(capsys, "restore", str(tmp_path / "shoot"), "-o", str(out),
                          "--plan", "D", "--json")
    got = _json(lines)
    assert rc == 1, err
    assert [o["path"] for o in got] == [str(p) for p in src]  # every input: one line
    written = [o for o in got if "output" in o]
    failed = [o for o in got if "error" in o and not o.get("not_run")]
    not_run = [o for o in got if o.get("not_run")]
    assert written and not_run and len(failed) == 1, got
    assert "the disk is full" in failed[0]["error"]
    assert got.index(failed[0]) == len(written)  # written, then the one that failed, then rest
    assert all(o["error"] == "not restored (stopped: the output folder's disk is full)"
               for o in not_run)
    assert err.strip().splitlines() == [
        f"mend: stopped: the output folder's disk is full: {len(not_run)} photo(s) not restored"]
    assert _files(disk) == sorted(Path(o["output"]).name for o in written)  # nothing else
    for o in written:
        assert _sha(Path(o["output"])) == _sha(Path(o["path"]))
    assert {p: _sha(p) for p in src} == before
    # the same without --json: one error line, one tally
    shutil.rmtree(out)
    rc, lines, err = _run(capsys, "restore", str(tmp_path / "shoot"), "-o", str(out),
                          "--plan", "D")
    assert rc == 1
    assert sum(": error: " in x for x in lines) == 1, lines
    assert lines[-1] == (f"{len(written)} photo(s) written to {out}; 1 failed; "
                         f"{len(not_run)} not restored")
    assert err.count("mend: stopped") == 1


# ------------------------------------------------------------------------------------------
# 2. Ctrl+C and SIGTERM


_DRIVER = r"""
import dataclasses, os, signal, sys, types
import engine.imageio as mio
import engine.pipeline as pl
from engine import cli

src, out = sys.argv[1], sys.argv[2]
mio._USE_O_TMPFILE = False  # named temp files, as on exFAT, SMB...: one could be left behind
real_write, real_get_step = mio._atomic_write, pl.get_step


def while_writing(sig, times):
    def aw(dest, write, **kw):
        def w(f):
            for _ in range(times):  # the first is held back, a second stops at once
                os.kill(os.getpid(), sig)
            write(f)
        return real_write(dest, w, **kw)
    mio._atomic_write, pl.get_step = aw, real_get_step


def in_a_step(sig):
    def get_step(name):
        spec = real_get_step(name)
        def fn(image, params, ctx):
            os.kill(os.getpid(), sig)
            return spec.fn(image, params, ctx)
        return dataclasses.replace(spec, fn=fn)
    mio._atomic_write, pl.get_step = real_write, get_step


runs = [("write-term", lambda: while_writing(signal.SIGTERM, 1), ["--format", "png"]),
        ("write-term-twice", lambda: while_writing(signal.SIGTERM, 2), ["--format", "png"]),
        ("step-int", lambda: in_a_step(signal.SIGINT), ["--plan", "C", "--profile", "builtin"]),
        ("write-int-ignored", lambda: while_writing(signal.SIGINT, 1), [])]
for name, setup, extra in runs:
    setup()
    if name.endswith("ignored"):  # as `nohup mend ...` or `mend ... &` in a script start it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    rc = cli.main(["restore", src, "-o", os.path.join(out, name), "--plan", "D", "--json",
                   *extra])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("@@", name, rc, flush=True)
"""


def test_signals_while_writing_and_in_a_step(tmp_path):
    """Deterministic: the process signals itself at a chosen point of the first photo.
    While its result is written, a SIGTERM is held back: the photo finishes, is reported and
    the batch stops (143). A second one stops at once: the temp file is removed, nothing is
    reported written. Ctrl+C in a step stops the job: nothing written (130). A SIGINT
    ignored when Mend started stays ignored."""
    src = _photos(tmp_path / "shoot", ["a.png", "b.png", "c.png"])
    before = {p: _sha(p) for p in src}
    r = subprocess.run([sys.executable, "-c", _DRIVER, str(tmp_path / "shoot"),
                        str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    runs: dict[str, tuple[int, list[dict]]] = {}
    chunk: list[dict] = []
    for line in r.stdout.splitlines():
        if line.startswith("@@ "):
            _, name, rc = line.split()
            runs[name] = (int(rc), chunk)
            chunk = []
        else:
            chunk.append(json.loads(line))  # every line is whole JSON
    names = [str(p) for p in src]

    rc, got = runs["write-term"]
    assert rc == 143 and [o["path"] for o in got] == names
    assert got[0]["output"] == str(tmp_path / "out/write-term/a_mend.png")
    assert [o.get("not_run") for o in got[1:]] == [True, True]
    assert got[1]["error"] == "not restored (stopped by SIGTERM)"
    assert _files(tmp_path / "out/write-term") == ["a_mend.png"]
    assert np.array_equal(load_photo(got[0]["output"]).pixels, load_photo(src[0]).pixels)

    rc, got = runs["write-term-twice"]
    assert rc == 143 and [o["path"] for o in got] == names
    assert all(o.get("not_run") for o in got)
    assert _files(tmp_path / "out/write-term-twice") == []  # no .part, no result

    rc, got = runs["step-int"]
    assert rc == 130 and [o["path"] for o in got] == names
    assert all(o["error"] == "not restored (interrupted)" for o in got)
    assert _files(tmp_path / "out/step-int") == []

    rc, got = runs["write-int-ignored"]
    assert rc == 0 and [Path(o["output"]).name for o in got] == [
        "a_mend.png", "b_mend.png", "c_mend.png"]
    assert r.stderr.count("mend: stopped by SIGTERM: 2 photo(s) not restored") == 1
    assert r.stderr.count("mend: stopped by SIGTERM: 3 photo(s) not restored") == 1
    assert r.stderr.count("mend: interrupted: 3 photo(s) not restored") == 1
    assert {p: _sha(p) for p in src} == before


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM from another process: POSIX")
def test_a_real_sigterm_mid_batch(tmp_path):
    """`kill` (SIGTERM) from outside while a batch runs: it used to end the process on the
    spot (no message, no line for the photos left). Now: exit 143, one message, every input
    has one valid JSON line, the results written are whole, nothing else is left."""
    src = _photos(tmp_path / "shoot", [f"p{i}.png" for i in range(8)], size=(300, 400))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "restore",
                             str(tmp_path / "shoot"), "-o", str(out), "--plan", "A",
                             "--profile", "builtin", "--no-guard", "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=120)
    got = _json([first, *rest.splitlines()])
    assert proc.returncode == 143, err
    assert [o["path"] for o in got] == [str(p) for p in src]
    not_run = [o for o in got if o.get("not_run")]
    written = [Path(o["output"]) for o in got if "output" in o]
    assert not_run and len(written) + len(not_run) == len(src)
    assert err.strip().splitlines()[-1] == \
        f"mend: stopped by SIGTERM: {len(not_run)} photo(s) not restored"
    assert _files(out) == sorted(p.name for p in written)
    for p in written:
        with Image.open(p) as im:
            im.load()
            assert im.size == (400, 300)


# ------------------------------------------------------------------------------------------
# 3. the output folder


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, small_disk, capsys):
    """A read-only disk as -o: each photo used to be restored in full and then fail to save
    (8 photos: 8 errors, 26 s); now one message and exit 2 before any photo is opened."""
    _photos(tmp_path / "shoot", ["a.png", "b.png"])
    ro = small_disk("ro", "1M", read_only=True)
    rc, lines, err = _run(capsys, "restore", str(tmp_path / "shoot"), "-o", str(ro),
                          "--plan", "D", "--json")
    assert (rc, lines) == (2, [])
    assert err.strip() == f"mend: cannot write to the output folder {ro}: Read-only file system"


def test_results_copied_next_to_the_originals_are_not_restored_again(tmp_path, capsys):
    """-o = the input folder: a photo with nothing to fix is copied byte for byte (no record
    in it). A second run restored each copy again (x_mend_mend...): the folder doubled at
    every run. A copy is now recognised by its name and its original's bytes beside it; a
    photo only named like a result is still restored."""
    shoot = tmp_path / "shoot"
    a, _ = _photos(shoot, ["a.png", "b.png"])
    _photos(shoot, ["c_mend.png"], seed=1)  # its own photo, not a copy of c.png
    shutil.copy(a, shoot / "c.png")
    args = ("restore", str(shoot), "-o", str(shoot), "--plan", "D", "--json")
    rc, lines, _ = _run(capsys, *args)
    assert rc == 0 and len(_json(lines)) == 4
    rc, lines, _ = _run(capsys, *args)
    got = _json(lines)
    assert rc == 0
    assert {Path(o["path"]).name: o["skipped"] for o in got if "skipped" in o} == {
        "a_mend.png": "mend result", "b_mend.png": "mend result", "c_mend_1.png": "mend result",
        "c_mend_mend.png": "mend result"}
    assert sorted(Path(o["output"]).name for o in got if "output" in o) == [
        "a_mend_1.png", "b_mend_1.png", "c_mend_2.png", "c_mend_mend_1.png"]


# ------------------------------------------------------------------------------------------
# 4. unreadable subfolders


def refuse_listing(monkeypatch, folder: Path) -> None:
    """os.scandir refuses ``folder`` (PermissionError), as for a user without the right."""
    import engine.imageio as mio

    real = os.scandir

    def scandir(p="."):
        if Path(p) == folder:
            raise PermissionError(13, "Permission denied", str(p))
        return real(p)

    monkeypatch.setattr(mio.os, "scandir", scandir)


@pytest.mark.parametrize("command", ["classify", "restore"])
def test_an_unreadable_subfolder_is_an_error_not_a_log_line(tmp_path, monkeypatch, capsys,
                                                             command):
    """-r over a tree with a subfolder Mend may not list: it was a WARNING log line on stderr,
    with no JSON line and exit 0 - its photos silently left out. Now it is that folder's
    error line and exit 1; the other photos are done."""

    shoot = tmp_path / "shoot"
    _photos(shoot, ["a.png", "locked/b.png", "sub/c.png"])
    locked = shoot / "locked"
    if os.geteuid() != 0:
        locked.chmod(0)
    else:  # root reads any folder: refuse it as the file system would
        refuse_listing(monkeypatch, locked)
    try:
        extra = (["--backend", "builtin"] if command == "classify"
                 else ["-o", str(tmp_path / "out"), "--plan", "D"])
        rc, lines, err = _run(capsys, command, str(shoot), "-r", "--json", *extra)
    finally:
        locked.chmod(0o755)
    got = _json(lines)
    assert rc == 1 and "WARNING" not in err, err
    assert got[0] == {"path": str(locked), "error": "cannot list this folder (Permission "
                                                    "denied): the photos in it were not read"}
    assert [Path(o["path"]).name for o in got[1:]] == ["a.png", "c.png"]
    assert all("error" not in o for o in got[1:])


# ------------------------------------------------------------------------------------------
# the pipeline: a source that changes, a mask that cannot be saved, memory


def _src(tmp_path: Path, name: str = "in.png", seed: int = 0) -> Path:
    return _photos(tmp_path, [name], size=(60, 80), seed=seed)[0]


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_a_kept_original_that_changed_after_loading_is_written_from_what_was_read(
        tmp_path, monkeypatch, change):
    """A kept original is a copy of the source file, read again when the result is written
    (minutes later after a long chain the guard rejected). Deleted meanwhile, the job failed
    with 'internal error: FileNotFoundError'; replaced, the result held the other photo's
    bytes under this job's report. Now it is written from the pixels that were read."""
    import engine.pipeline as pl

    src = _src(tmp_path)
    other = _src(tmp_path, "other.png", seed=5)
    real_load = pl.load_photo
    loaded = {}

    def load(p, **kw):
        photo = loaded["photo"] = real_load(p, **kw)
        if change == "deleted":
            os.unlink(p)
        else:  # as an editor saves: a new file renamed over it
            shutil.copy(other, tmp_path / "new.png")
            os.replace(tmp_path / "new.png", p)
        return photo

    monkeypatch.setattr(pl, "load_photo", load)
    res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"),
                                       label=Degradation.D))
    assert np.array_equal(load_photo(res.output).pixels, loaded["photo"].pixels)
    assert any("changed or went away" in w for w in res.warnings), res.warnings


def test_an_unchanged_kept_original_is_still_a_byte_copy(tmp_path):
    src = _src(tmp_path)
    res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"),
                                       label=Degradation.D))
    assert res.output.read_bytes() == src.read_bytes() and res.warnings == ()


def test_a_mask_that_cannot_be_saved_does_not_fail_a_written_result(tmp_path, monkeypatch):
    """Chain B writes its result, then the mask beside it; a full disk at the mask failed the
    job although its result was on disk (a re-run made _1 copies). Now the job succeeds and
    says the mask was not saved."""
    import engine.imageio as mio

    src = _src(tmp_path)
    mask = tmp_path / "mask.png"
    m = np.zeros((60, 80), np.uint8)
    m[20:30, 30:50] = 255
    Image.fromarray(m).save(mask)

    def full(*_a, **_k):
        raise SaveFailed("x_mend_mask.png: the disk is full; nothing was written")

    monkeypatch.setattr(mio, "save_mask", full)
    res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"),
                                       label=Degradation.B, profile="builtin", mask_path=mask,
                                       guard=False))
    assert res.output.is_file() and "mask_path" not in res.artifacts
    assert any(w.startswith("the reflection mask could not be saved: ") for w in res.warnings)


def test_a_kept_photo_written_afresh_has_its_memory_checked(tmp_path, monkeypatch):
    """Nothing to run skipped the memory check, also when the photo is written afresh
    (another format): at 60 MP that save peaked at 3.6 GB, a 200 MP one would be killed by the
    system on a small machine. A plain copy needs nothing more and is not refused."""
    import engine.devices as dev
    from engine.estimate import PROCESS_BYTES

    src = _src(tmp_path)
    monkeypatch.setattr(dev, "system_memory", lambda: PROCESS_BYTES + 100_000)
    engine = Engine("cpu")
    with pytest.raises(OutOfMemory, match="more than this machine's"):
        engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "a", format="jpeg"),
                              label=Degradation.D))
    assert not (tmp_path / "a").exists() or _files(tmp_path / "a") == []
    res = engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "b"), label=Degradation.D))
    assert res.output.read_bytes() == src.read_bytes()


def test_a_step_result_is_clipped_without_a_photo_sized_copy_when_it_can_be():
    """Each step's result was copied by np.clip (12 bytes per pixel: 0.7 GB at 60 MP; the
    60 MP class D re-encode peaked at 4.3 GB, now 3.6 GB)."""
    from engine.pipeline import _clipped

    before = np.full((4, 5, 3), 0.5, np.float32)
    inside = np.full((4, 5, 3), 0.25, np.float32)
    assert _clipped(inside, before, 0.25, 0.25) is inside
    assert _clipped(before, before, 0.5, 0.5) is before  # a skipped step: its input back
    fresh = np.full((4, 5, 3), 1.5, np.float32)  # the step's own array: clipped in place
    out = _clipped(fresh, before, 1.5, 1.5)
    assert out is fresh and float(out.max()) == 1.0
    before[0, 0, 0] = 2.0
    view = before[:, :, :]  # a view of the step's input: never written in place
    res = _clipped(view, before, 0.5, 2.0)
    assert res is not view and float(before[0, 0, 0]) == 2.0 and float(res.max()) == 1.0


_TORCH_PROBE = """
import sys
from engine.cli import main
code = main(sys.argv[1:])
print("TORCH" if "torch" in sys.modules else "NO-TORCH", code)
"""


@pytest.mark.parametrize("backend", ["builtin", "auto"])
def test_classifying_without_a_vlm_never_imports_torch(tmp_path, backend):
    """The analyzer needs no device: choosing "auto" (which imports torch, ~2 s and ~0.6 GB)
    waits for a model that needs it. With no VLM installed, auto is the analyzer too."""
    _photos(tmp_path / "in", ["a.png"])
    env = dict(os.environ, MEND_MODELS_DIR=str(tmp_path / "models"), MEND_OFFLINE="1",
               PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", _TORCH_PROBE, "classify", str(tmp_path / "in"),
                        "--backend", backend, "--json"], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=120, check=False)
    out = r.stdout.splitlines()
    assert out[-1] == "NO-TORCH 0", r.stdout + r.stderr
    assert json.loads(out[0])["backend"] == "builtin"


def test_the_auto_device_is_chosen_at_first_use_and_a_named_one_at_once(monkeypatch):
    import engine.pipeline as pl
    from engine.devices import DeviceInfo

    chosen: list[str] = []
    real = pl.select_device

    def spy(pref="auto"):
        chosen.append(pref)
        return real("cpu")

    monkeypatch.setattr(pl, "select_device", spy)
    eng = Engine("auto")
    assert chosen == []
    rt = eng.runtime  # (a runtime alone chooses nothing either)
    assert chosen == [] and rt.store is not None
    assert isinstance(rt.device, DeviceInfo) and chosen == ["auto"]
    assert eng.device is rt.device and chosen == ["auto"]  # chosen once, shared
    Engine("cpu")
    assert chosen == ["auto", "cpu"]
