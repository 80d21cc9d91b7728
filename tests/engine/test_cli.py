"""The `mend` CLI contract, end to end on real photos (subprocesses, like a user runs it; most
start warm: tests/warm_cli.py)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import warm_cli

ROOT = Path(__file__).resolve().parents[2]


def mend(*args: str, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m engine.cli ARGS`` in its own process, started warm (tests/warm_cli.py)."""
    e = dict(os.environ)
    e.update(env or {})
    return warm_cli.run(args, env=e, timeout=timeout, cwd=ROOT)


def lines(out: str) -> list[dict]:
    return [json.loads(x) for x in out.splitlines() if x.strip()]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def picks(shared_images: Path) -> dict[str, Path]:
    return {
        "A": shared_images / "lowres_noise_jpeg" / "NAFNet__demo__noisy.png",
        "B": shared_images / "reflection" / "perceptual-reflection-re__test_images__real__23.jpg",
        "C": shared_images / "motion_blur" / "NAFNet__demo__blurry.jpg",
        "D": shared_images / "clean" / "Pillow__Tests__images__hopper.jpg",
        "corrupt": shared_images / "odd_corrupt" / "Pillow__Tests__images__broken.png",
    }


def test_classify_json_contract_and_failures(picks):
    good = [picks[k] for k in "ABCD"]
    r = mend("classify", *map(str, good), str(picks["corrupt"]), "/nonexistent/x.jpg",
             "--backend", "builtin", "--json")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    out = {o["path"]: o for o in lines(r.stdout)}
    assert len(out) == 6
    for p in good:
        o = out[str(p)]
        assert set(o) == {"path", "label", "scores", "estimates", "backend"}
        assert o["label"] in "ABCD" and set(o["scores"]) == set("ABCD")
        assert sum(o["scores"].values()) == pytest.approx(1.0, abs=1e-3)
        assert o["backend"] == "builtin" and isinstance(o["estimates"], dict)
    assert set(out[str(picks["corrupt"])]) == {"path", "error"}
    assert "broken.png" in out[str(picks["corrupt"])]["error"]
    assert "no such file" in out["/nonexistent/x.jpg"]["error"]


def test_classify_human_line_names_the_runner_up_with_its_score(picks):
    r = mend("classify", str(picks["D"]), "--backend", "builtin")
    j = mend("classify", str(picks["D"]), "--backend", "builtin", "--json")
    assert r.returncode == 0 and j.returncode == 0, r.stderr + j.stderr
    scores = lines(j.stdout)[0]["scores"]
    ru = sorted(scores, key=scores.get)[-2]
    names = {"A": "Low quality", "B": "Reflection", "C": "Motion blur", "D": "Clean"}
    assert f"runner-up {ru} {names[ru]} ({scores[ru]:.0%})" in r.stdout, r.stdout


def test_classify_folder_expands_to_photos(shared_images):
    folder = shared_images / "defocus_blur"
    r = mend("classify", str(folder), "--backend", "builtin", "--json")
    assert r.returncode == 0, r.stderr
    got = sorted(Path(o["path"]).name for o in lines(r.stdout))
    assert got == sorted(p.name for p in folder.iterdir())


def test_usage_errors_exit_2_without_traceback(tmp_path):
    for args in (["restore", "x.jpg"], ["classify"], ["restore", "x.jpg", "-o", str(tmp_path),
                                                      "--plan", "E"], ["frobnicate"]):
        r = mend(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and "usage" in r.stderr.lower()
    r = mend("classify", "x.jpg", "--device", "mps")  # asked for what this machine lacks
    assert r.returncode == 2 and "MPS" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = mend("restore", "x.jpg", "-o", str(tmp_path), "--tile", "0")  # a model call per pixel
    assert r.returncode == 2 and "--tile must be between 64 and 8192" in r.stderr, r.stderr


@pytest.mark.parametrize("cls", ["A", "B", "C"])
def test_restore_builtin_chain_on_real_photo(picks, tmp_path, cls):
    src = picks[cls]
    before = sha(src)
    r = mend("restore", str(src), "-o", str(tmp_path), "--plan", cls, "--profile", "builtin",
             "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    (o,) = lines(r.stdout)
    # (a B result's mask is written beside it, and its path given)
    assert set(o) == {"path", "output", "label", "steps", "warnings"} | (
        {"mask"} if cls == "B" else set())
    assert o["label"] == cls and o["steps"], o
    if cls == "B":
        assert Path(o["mask"]) == Path(o["output"]).with_name(
            Path(o["output"]).stem + "_mask.png") and Path(o["mask"]).is_file()
    for s in o["steps"]:
        assert set(s) >= {"name", "model", "seconds"} and s["model"].startswith("builtin")
    out = Path(o["output"])
    assert out.is_file() and out.parent == tmp_path
    assert sha(src) == before  # the original is never written
    from engine.imageio import load_photo, read_record

    assert load_photo(out).pixels.shape == load_photo(src).pixels.shape
    rec = read_record(out)
    kept = any("kept the original" in w for w in o["warnings"])
    # the built-in fill leaves a mask only its detector found unfilled: the original's bytes
    unfilled = any(w.startswith("reflections: the built-in detector") for w in o["warnings"])
    # (or found nothing to fill: no step changed a pixel, so the original's bytes are written)
    nothing = cls == "B" and o["steps"][-1].get("notes", "").startswith("skipped")
    assert not unfilled or (cls == "B" and nothing)
    if nothing:
        assert sha(out) == before
    elif not kept:  # a written result carries the record of what was done
        assert rec and rec["label"] == cls and [s["name"] for s in rec["steps"]] == [
            s["name"] for s in o["steps"]]


def test_restore_plan_d_is_byte_identical_and_unique_names(picks, tmp_path):
    src = picks["D"]
    outs = []
    for _ in range(2):
        r = mend("restore", str(src), "-o", str(tmp_path), "--plan", "D", "--json")
        assert r.returncode == 0, r.stderr
        (o,) = lines(r.stdout)
        outs.append(Path(o["output"]))
        assert [s["name"] for s in o["steps"]] == ["passthrough"]
    assert outs[0] != outs[1]  # a name clash gets a suffix, nothing is overwritten
    assert sha(outs[0]) == sha(outs[1]) == sha(src)


def test_restore_png_plan_d_pixels_identical_when_reencoded(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    src = tmp_path / "in.png"
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(src)
    r = mend("restore", str(src), "-o", str(tmp_path / "o"), "--plan", "D", "--format", "tiff",
             "--json")
    assert r.returncode == 0, r.stderr
    (o,) = lines(r.stdout)
    a = np.asarray(Image.open(src).convert("RGB"))
    b = np.asarray(Image.open(o["output"]).convert("RGB"))
    assert np.array_equal(a, b)


def test_restore_missing_models_names_the_pull_command(picks, tmp_path):
    r = mend("restore", str(picks["C"]), "-o", str(tmp_path), "--plan", "C", "--profile", "laptop",
             "--json")
    assert r.returncode == 1
    (o,) = lines(r.stdout)
    assert "error" in o and "mend models pull" in o["error"], o


def test_restore_auto_profile_falls_back_to_builtin_with_a_warning(picks, tmp_path):
    r = mend("restore", str(picks["A"]), "-o", str(tmp_path), "--plan", "A", "--json")
    assert r.returncode == 0, r.stderr
    (o,) = lines(r.stdout)
    assert any("built-in" in w for w in o["warnings"]), o
    assert all(s["model"].startswith("builtin") for s in o["steps"])


def test_a_warning_every_photo_repeats_is_printed_in_full_once(tmp_path):
    """Human output of a batch: the 'models not installed' fallback warning comes once in full,
    then as a short reference; --json keeps every photo's own full list."""
    src = tmp_path / "in"
    _tiny_photos(src, ["a.png", "b.png", "c.png"])
    r = mend("restore", str(src), "-o", str(tmp_path / "out"), "--plan", "A")
    assert r.returncode == 0, r.stderr
    warns = [ln.strip() for ln in r.stdout.splitlines()
             if ln.strip().startswith("warning:") and "profile's models" in ln]
    assert len(warns) == 3 and "mend models pull --profile" in warns[0], r.stdout
    assert all(w.startswith("warning: (as above) ") and len(w) < 100 for w in warns[1:]), warns
    r = mend("restore", str(src), "-o", str(tmp_path / "out2"), "--plan", "A", "--json")
    full = warns[0].removeprefix("warning: ")
    assert [full in o["warnings"] for o in lines(r.stdout)] == [True] * 3

def test_restore_bad_inputs_go_on(picks, tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    r = mend("restore", str(empty), str(picks["corrupt"]), str(picks["D"]), "-o",
             str(tmp_path / "out"), "--plan", "D", "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    res = lines(r.stdout)
    assert [("error" in o) for o in res] == [True, True, False]


def test_models_list_and_doctor_json():
    r = mend("models", "list", "--json")
    assert r.returncode == 0, r.stderr
    table = json.loads(r.stdout)
    assert isinstance(table, list) and table
    for m in table:
        assert set(m) >= {"id", "task", "license", "commercial_use", "status", "files"}
        for f in m["files"]:
            assert set(f) >= {"name", "size", "sha256", "pinned"}
    ids = {m["id"] for m in table}
    assert {"realesr-general-x4v3", "nafnet-gopro-w64", "big-lama", "codeformer"} <= ids
    r = mend("doctor", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["devices"]["selected"]["kind"] in ("cpu", "cuda", "mps")
    assert {"memory", "models", "offline", "recommended_profile"} <= set(d)


def test_offline_pull_fails_clearly_without_network():
    r = mend("models", "pull", "realesr-general-x4v3", "--json", env={"MEND_OFFLINE": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (o,) = lines(r.stdout)
    assert "offline" in o["error"].lower()


def test_a_broken_mirror_manifest_is_one_error_line(tmp_path):
    """MEND_MANIFEST naming a manifest with an unsafe model id (or any other flaw): exit 1 with
    one line naming the problem, not a traceback."""
    bad = json.loads((ROOT / "resources" / "models.json").read_text(encoding="utf-8"))
    bad["models"][0]["id"] = "../victim"
    (tmp_path / "m.json").write_text(json.dumps(bad), encoding="utf-8")
    r = mend("models", "list", env={"MEND_MANIFEST": str(tmp_path / "m.json"),
                                    "MEND_MODELS_DIR": str(tmp_path / "store")})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "manifest" in r.stderr and "../victim" in r.stderr


def test_models_verify_exits_1_with_the_file_report_when_damaged_or_missing(tmp_path):
    root = tmp_path / "models"
    (root / "realesr-general-x4v3").mkdir(parents=True)
    (root / "realesr-general-x4v3" / "realesr-general-x4v3.pth").write_bytes(b"damaged")
    env = {"MEND_MODELS_DIR": str(root), "MEND_OFFLINE": "1"}
    r = mend("models", "verify", "realesr-general-x4v3", "big-lama", "--json", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    esr, lama = lines(r.stdout)
    assert esr["status"] == "corrupt" and esr["corrupt"] == ["realesr-general-x4v3.pth"]
    assert esr["ok"] == [] and esr["missing"] == []
    assert lama["status"] == "missing" and lama["missing"] == ["big-lama.pt"]
    r = mend("models", "verify", "realesr-general-x4v3", env=env)
    assert r.returncode == 1 and "corrupt: realesr-general-x4v3.pth" in r.stdout


def test_models_pull_that_ends_damaged_exits_1(tmp_path, monkeypatch, capsys):
    from engine import cli
    from engine.models.store import ModelStore

    store = ModelStore(tmp_path / "models")

    def pull(model_id, progress=None, token=None):  # the download ends with a damaged file
        f = store.file_path(model_id, "realesr-general-x4v3.pth")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"damaged")
        return store.status(model_id)

    monkeypatch.setattr(store, "pull", pull)
    monkeypatch.setattr(cli, "_store", lambda: store)
    assert cli.main(["models", "pull", "realesr-general-x4v3", "--json"]) == 1
    (o,) = lines(capsys.readouterr().out)
    assert o["status"] == "corrupt" and "verify --repair" in o["error"]


def test_models_import_and_pack_errors_exit_codes_and_json(tmp_path):
    env = {"MEND_MODELS_DIR": str(tmp_path / "models"), "MEND_OFFLINE": "1"}
    # a folder where one file is refused: exit 1, naming it
    d = tmp_path / "sam-vit-base"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "sam"}')
    (d / "model.safetensors").write_bytes(b"not the weights")
    r = mend("models", "import", str(d), "--json", env=env)
    assert r.returncode == 1, r.stderr
    (o,) = lines(r.stdout)
    assert o["imported"] == ["sam-vit-base/config.json"]
    assert o["rejected"][0]["path"].endswith("model.safetensors")
    # --json errors are a JSON object on stdout, with the usual exit code, no traceback
    folder = tmp_path / "packs"
    folder.mkdir()
    r = mend("models", "pack", "--profile", "builtin", "-o", str(folder), "--json", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    (o,) = lines(r.stdout)
    assert "is a folder" in o["error"]
    r = mend("models", "pack", "--profile", "laptop", "-o", str(folder / "l.zip"), "--json",
             env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    (o,) = lines(r.stdout)
    assert "not installed" in o["error"]
    r = mend("models", "pack", "--profile", "builtin", "-o", str(folder), env=env)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("mend: ")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc to spot the export")
def test_kill_9_during_export_leaves_no_partial_file(tmp_path):
    """A real `mend restore` is killed with SIGKILL while it holds a file open in the output
    folder (i.e. during export): nothing partial may be left and the original is untouched.
    The three attempts (each its own process and output folder) run at once."""
    import signal
    import time
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    rng = np.random.default_rng(1)
    src = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 256, (2400, 3200, 3), dtype=np.uint8)).save(
        src, compress_level=1)
    before = sha(src)

    def attempt(n: int) -> bool:
        """Whether attempt ``n`` killed its process during the export."""
        out = tmp_path / f"out{n}"
        out.mkdir()
        killed = False
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "restore", str(src), "-o",
                                 str(out), "--plan", "D", "--format", "png", "--json"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                targets = [os.readlink(f"/proc/{proc.pid}/fd/{fd}")
                           for fd in os.listdir(f"/proc/{proc.pid}/fd")]
            except OSError:
                targets = []
            if any(t.startswith(str(out)) for t in targets):
                time.sleep(0.05 * n)  # a little later into the write each time
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
        for f in out.iterdir():  # only complete, valid images may exist
            assert not f.name.startswith(".") and not f.name.endswith(".part"), f
            with Image.open(f) as im:
                im.load()
                assert im.size == (3200, 2400)
        return killed

    with ThreadPoolExecutor(max_workers=3) as pool:
        killed_during_export = sum(pool.map(attempt, range(3)))
    assert killed_during_export >= 1, "never caught the process during export"
    assert sha(src) == before


def _tiny_photos(folder: Path, rels: list[str]) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    for rel in rels:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / rel)


def test_recursive_restore_mirrors_subfolders_and_skips_its_own_output(tmp_path):
    src = tmp_path / "shoot"
    _tiny_photos(src, ["top.png", "2024/jan/a.png", "2025/a.png"])
    before = {p: sha(p) for p in src.rglob("*.png")}
    out = src / "mended"  # inside the input tree: a second run must not restore the results
    for _run in range(2):
        r = mend("restore", str(src), "-r", "-o", str(out), "--plan", "D", "--json")
        assert r.returncode == 0, r.stderr
        got = {o["path"]: o["output"] for o in lines(r.stdout)}
        assert got == {str(src / "top.png"): str(out / "top_mend.png"),
                       str(src / "2024/jan/a.png"): str(out / "2024/jan/a_mend.png"),
                       str(src / "2025/a.png"): str(out / "2025/a_mend.png")}
        for f in got.values():
            Path(f).unlink()  # the next run writes the same names again (no _1 clash suffix)
    assert {p: sha(p) for p in before} == before
    # a dry run says where each result would go, and writes nothing
    r = mend("restore", str(src), "-r", "-o", str(out), "--plan", "D", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert {o["path"]: o["output"] for o in lines(r.stdout)} == got
    assert not any(out.rglob("*.png"))
    # without -r: the folder's own photo only
    r = mend("classify", str(src), "--backend", "builtin", "--json")
    assert [o["path"] for o in lines(r.stdout)] == [str(src / "top.png")]


def test_files_mend_wrote_are_skipped_in_folders_but_taken_when_named(tmp_path):
    """The app exports to <shoot>/mended; a later `restore -r shoot -o elsewhere` must not
    restore those results (or a saved mask) a second time. Recognised by Mend's record."""
    from engine.imageio import read_record, save_mask

    src = tmp_path / "shoot"
    _tiny_photos(src, ["top.png", "sub/a.png"])
    first = src / "mended"
    r = mend("restore", str(src), "-r", "-o", str(first), "--plan", "A", "--profile", "builtin",
             "--no-guard", "--json")  # no guard: noise photos would be kept as byte copies
    assert r.returncode == 0, r.stderr
    results = sorted(Path(o["output"]) for o in lines(r.stdout))
    assert results == [first / "sub/a_mend.png", first / "top_mend.png"]
    assert all(read_record(f)["label"] == "A" for f in results)  # a real restore, not a copy
    mask = save_mask(np.ones((48, 64), bool), src / "top_mask.png")
    other = tmp_path / "elsewhere"
    r = mend("restore", str(src), "-r", "-o", str(other), "--plan", "A", "--profile", "builtin",
             "--json")
    assert r.returncode == 0, r.stderr
    got = lines(r.stdout)
    assert {o["path"] for o in got if "output" in o} == {str(src / "top.png"),
                                                          str(src / "sub/a.png")}
    assert {o["path"]: o["skipped"] for o in got if "skipped" in o} == {
        str(first / "sub/a_mend.png"): "mend result", str(first / "top_mend.png"): "mend result",
        str(mask): "mend mask"}
    assert not list(other.rglob("*_mend_mend*")) and not list(other.rglob("*mask*"))
    # the dry run skips them too; the human tally counts them
    r = mend("restore", str(src / "mended"), "--dry-run", "--plan", "A", "--json")
    assert r.returncode == 0 and [o.get("skipped") for o in lines(r.stdout)] == ["mend result"]
    r = mend("restore", str(src), "-r", "-o", str(tmp_path / "third"), "--plan", "D")
    assert f"{first / 'top_mend.png'}: skipped: a Mend result" in r.stdout
    assert r.stdout.splitlines()[-1] == (f"2 photo(s) written to {tmp_path / 'third'}; "
                                         "3 file(s) Mend wrote skipped"), r.stdout
    # named on the command line, a result is restored as asked
    r = mend("restore", str(first / "top_mend.png"), "-o", str(other), "--plan", "D", "--json")
    assert r.returncode == 0 and lines(r.stdout)[0]["output"] == str(other / "top_mend_mend.png")


def test_a_folder_without_photos_is_an_error_with_a_hint(tmp_path):
    _tiny_photos(tmp_path / "nested", ["sub/a.png", "sub/b.png"])
    (tmp_path / "void").mkdir()
    r = mend("classify", str(tmp_path / "nested"), str(tmp_path / "void"), "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    out = {o["path"]: o for o in lines(r.stdout)}
    assert out[str(tmp_path / "nested")]["error"] == \
        "no photos in this folder (2 in its subfolders: add --recursive)"
    assert out[str(tmp_path / "void")]["error"] == "no photos in this folder"
    r = mend("classify", str(tmp_path / "nested"), "-r", "--backend", "builtin", "--json")
    assert r.returncode == 0 and len(lines(r.stdout)) == 2
    # human output of a batch ends with its tally (JSON output has none: one object per photo)
    r = mend("classify", str(tmp_path / "nested"), str(tmp_path / "void"), "-r",
             "--backend", "builtin")
    last = r.stdout.splitlines()[-1]
    assert last.startswith("2 photo(s): A ") and last.endswith("; 1 failed"), r.stdout
    counts = [int(x.split()[-1]) for x in last.split(":", 1)[1].split(";")[0].split("·")]
    assert sum(counts) == 2
    r = mend("restore", str(tmp_path / "nested"), "-r", "-o", str(tmp_path / "out"),
             "--plan", "D")
    assert r.stdout.splitlines()[-1] == f"2 photo(s) written to {tmp_path / 'out'}", r.stdout


def test_a_closed_pipe_stops_the_run_quietly(tmp_path):
    """`mend classify FOLDER | head -1`: no traceback, the exit status of a SIGPIPE'd program."""
    _tiny_photos(tmp_path, [f"p{i:02d}.png" for i in range(40)])
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "classify", str(tmp_path),
                             "--backend", "builtin", "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert json.loads(first)["label"] in "ABCD"
    assert "Traceback" not in err and "Broken pipe" not in err, err


ROBUSTNESS_FOLDERS = ("odd_corrupt", "camera_jpeg_exif", "camera_heic", "exif_orientation")


@pytest.mark.parametrize("command", ["classify", "restore"])
def test_every_odd_and_camera_file_gives_a_result_or_one_clear_message(shared_images, tmp_path,
                                                                        command):
    """Issue 7: strange files never crash a batch: one line each, exit 1 when some failed."""
    from engine.imageio import iter_photos

    folders = [shared_images / f for f in ROBUSTNESS_FOLDERS]
    expected = {str(p) for p in iter_photos(folders)}
    args = [command, *map(str, folders), "--json"]
    if command == "classify":
        args += ["--backend", "builtin"]
    else:  # class D: exercises load + save of every file without minutes of filtering
        args += ["-o", str(tmp_path / "out"), "--plan", "D"]
    r = mend(*args, timeout=600)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    out = lines(r.stdout)
    assert {o["path"] for o in out} == expected and len(out) == len(expected)
    failed = [o for o in out if "error" in o]
    assert failed and r.returncode == 1  # odd_corrupt holds truly broken files
    for o in failed:
        assert Path(o["path"]).name in o["error"] and "internal error" not in o["error"], o
    ok = [o for o in out if "error" not in o]
    assert len(ok) >= len(expected) - 12  # the camera and orientation files all load
    for o in ok:
        assert Path(o["path"]).parent.name in ROBUSTNESS_FOLDERS
        if command == "restore":
            assert Path(o["output"]).is_file()


def test_a_damaged_file_gives_one_error_line_and_no_library_warnings(tmp_path):
    """A TIFF header followed by garbage makes Pillow warn "Corrupt EXIF data" while it tries;
    the photographer sees Mend's one error line, not the library's warning (``--debug`` shows
    it)."""
    bad = tmp_path / "damaged.dng"
    bad.write_bytes(b"II*\x00garbage")
    r = mend("classify", str(bad), "--backend", "builtin")
    assert r.returncode == 1
    assert r.stdout.strip().splitlines() == [
        (f"{bad}: error: the file is truncated or damaged (its TIFF directory lies past the end "
         "of the file)")], r.stdout
    assert r.stderr == "", r.stderr
    dbg = mend("--debug", "classify", str(bad), "--backend", "builtin")
    assert dbg.returncode == 1 and "Corrupt EXIF data" in dbg.stderr


def test_output_folder_equal_to_or_inside_the_input(tmp_path):
    shoot = tmp_path / "shoot"
    _tiny_photos(shoot, ["a.png", "b.png", "2024/c.png"])
    args = ("--plan", "A", "--profile", "builtin", "--no-guard", "--json")
    # results next to the originals: the originals are read, Mend's results are not (2nd run)
    for run in range(2):
        r = mend("restore", str(shoot), "-o", str(shoot), *args)
        assert r.returncode == 0, r.stderr
        got = lines(r.stdout)
        assert sorted(Path(o["path"]).name for o in got if "output" in o) == ["a.png", "b.png"]
        assert len([o for o in got if "skipped" in o]) == 2 * run
    # -o below the input with -r: that folder is left out, and its own photos are announced
    r = mend("restore", str(shoot), "-r", "-o", str(shoot / "2024"), *args)
    assert r.returncode == 0, r.stderr
    got = lines(r.stdout)
    note = [o for o in got if o.get("skipped") == "output folder"]
    assert note == [{"path": str(shoot / "2024"), "skipped": "output folder", "photos": 1}]
    assert not any(o["path"] == str(shoot / "2024" / "c.png") for o in got)


def test_one_photo_named_twice_is_restored_once(tmp_path):
    _tiny_photos(tmp_path / "d", ["a.png"])
    (tmp_path / "link.png").symlink_to(tmp_path / "d" / "a.png")
    r = mend("restore", str(tmp_path / "d" / "a.png"), str(tmp_path / "d" / ".." / "d" / "a.png"),
             str(tmp_path / "d"), str(tmp_path / "link.png"), "-o", str(tmp_path / "o"),
             "--plan", "D", "--json")
    assert r.returncode == 0, r.stderr
    assert [Path(o["output"]).name for o in lines(r.stdout)] == ["a_mend.png"]


def test_names_that_are_not_utf8_and_errors_print_cleanly(tmp_path):
    """A file name with invalid UTF-8 bytes on a strict UTF-8 console: no traceback, valid
    JSON, the batch goes on; an error names its file once."""
    _tiny_photos(tmp_path / "u", ["ok.png"])
    bad = os.fsdecode(b"bad\xff\xfename.png")
    (tmp_path / "u" / "ok.png").rename(tmp_path / "u" / bad)
    _tiny_photos(tmp_path / "u", ["z.png"])
    (tmp_path / "u" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    env = {"PYTHONIOENCODING": "utf-8:strict"}
    r = mend("classify", str(tmp_path / "u"), "--backend", "builtin", "--json", env=env)
    assert "Traceback" not in r.stderr and r.returncode == 1, r.stderr
    out = lines(r.stdout)
    assert [Path(o["path"]).name for o in out] == ["bad\udcff\udcfename.png", "broken.png",
                                                   "z.png"]
    assert os.path.exists(out[0]["path"]) and out[0]["label"] in "ABCD"
    r = mend("classify", str(tmp_path / "u"), "--backend", "builtin", env=env)
    assert "Traceback" not in r.stderr and "bad\\udcff\\udcfename.png: " in r.stdout
    assert f"broken.png: error: {tmp_path}" not in r.stdout
