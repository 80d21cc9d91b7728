"""``main.py --screenshot`` on a folder of real photos: it waits for the folder's listing (which
arrives off the GUI thread) and shows the state asked for, says what it shows, removes its
private temp folder, and refuses a bad ``--size`` or a ``--photo`` the folder does not have."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageChops

ROOT = Path(__file__).resolve().parents[2]
# small real photos (70-342 px: diagnosed in well under a second each), one of them transparent
PHOTOS = ("clean/Pillow__Tests__images__hopper.jpg",
          "lowres_noise_jpeg/SwinIR__testsets__Set5__LR_bicubic__X4__headx4.png",
          "lowres_noise_jpeg/Real-ESRGAN__inputs__tree_alpha_16bit.png")
TREE = "Real-ESRGAN__inputs__tree_alpha_16bit.png"


def _folder(shared_images: Path, tmp_path: Path) -> Path:
    """The photos linked (never copied) into a folder of their own."""
    d = tmp_path / "photos"
    d.mkdir()
    for rel in PHOTOS:
        (d / Path(rel).name).symlink_to(shared_images / rel)
    return d


def _runs(*arg_lists: list[str], tmp: Path) -> list[subprocess.CompletedProcess]:
    """``main.py ARGS`` for each list, the processes (independent: each has its own private
    folder) started together; their results in the same order."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MEND_UI_SETTINGS", "MEND_UI_DATA_DIR", "MEND_UI_CACHE_DIR")}
    env["TMPDIR"] = str(tmp)  # (where its private folder goes: looked at afterwards)
    procs = [subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for args in arg_lists]
    done = []
    try:
        for args, proc in zip(arg_lists, procs, strict=True):
            out, err = proc.communicate(timeout=180)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return done


def test_screenshot_waits_for_the_listing_and_shows_the_state_asked(shared_images, tmp_path):
    folder = _folder(shared_images, tmp_path)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    browser, viewer = tmp_path / "browser.png", tmp_path / "viewer.png"

    r, v = _runs(["--screenshot", str(browser), "--open", str(folder), "--state", "browser",
                  "--size", "1024x640"],
                 ["--screenshot", str(viewer), "--open", str(folder), "--state", "viewer",
                  "--photo", TREE, "--size", "1024x640"], tmp=tmp)
    assert r.returncode == 0, r.stderr
    # every photo listed, its thumbnail made and diagnosed before the picture was taken (the
    # listing used to arrive after it: an empty grid, nothing diagnosed)
    assert "screenshot: browser: 3 photos listed" in r.stderr, r.stderr
    assert "3 diagnosed, 3 thumbnails" in r.stderr, r.stderr
    assert Image.open(browser).size == (1024, 640)

    r = v
    assert r.returncode == 0, r.stderr
    assert f"screenshot: viewer: {TREE} (diagnosed " in r.stderr, r.stderr
    assert "result none" not in r.stderr  # (fixed: the viewer compares it with the photo)
    # the viewer, not the browser again (it used to show the browser, silently)
    diff = ImageChops.difference(Image.open(browser).convert("RGB"),
                                 Image.open(viewer).convert("RGB"))
    assert diff.getbbox() is not None
    assert sum(diff.convert("L").histogram()[16:]) > 0.2 * 1024 * 640
    # its private settings, cache and results folder is gone
    assert not list(tmp.glob("mend-shot-*"))


def test_screenshot_refuses_what_it_cannot_show(shared_images, tmp_path):
    folder = _folder(shared_images, tmp_path)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    shot = tmp_path / "x.png"
    size, photo, mask = _runs(
        ["--screenshot", str(shot), "--open", str(folder), "--size", "big"],
        ["--screenshot", str(shot), "--open", str(folder), "--state", "viewer",
         "--photo", "not-there.jpg"],
        ["--screenshot", str(shot), "--state", "mask"], tmp=tmp)  # (no folder to show)
    r = size
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'big' is not a window size" in r.stderr
    r = photo
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "--photo not-there.jpg: no such photo" in r.stderr and not shot.exists()
    assert not list(tmp.glob("mend-shot-*"))
    r = mask
    assert r.returncode == 2 and "need a folder" in r.stderr and not shot.exists()
