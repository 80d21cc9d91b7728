"""What session 15's audit (F3-F8) found the CLI and the engine did silently: a mask ignored
unless the photo happened to be class B, pages and animation frames dropped without a word, a
16-bit animated PNG restored from another picture than the one shown, Mend's own byte copies
counted as foreign photos in an output folder, masks named ambiguously and missing from the
JSON, a Canon CIFF block dropped without a word."""
from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine import cli
from engine import imageio as mio
from engine.api import Degradation, JobRequest, OutputOptions, Plan, Step
from engine.imageio import load_mask, load_photo, read_record, save_mask
from engine.pipeline import Engine

DOG = Path("reflection") / "windowseat-reflection-re__example_images__dog.png"
FLOWER = Path("clean") / "Pillow__Tests__images__flower.jpg"
APNG16 = Path("odd_corrupt") / "Pillow__Tests__images__apng__mode_16bit.png"
CIFF = Path("camera_jpeg_exif") / "exif-samples__jpg__exif-org__sony-powershota5.jpg"


def _real(shared_images: Path, rel: Path) -> Path:
    p = shared_images / rel
    if not p.is_file():
        pytest.skip(f"real test photo {rel} not found in {shared_images}")
    return p


def _run(capsys, *args: str) -> tuple[int, list[dict], str]:
    rc = cli.main(list(args))
    cap = capsys.readouterr()
    return rc, [json.loads(x) for x in cap.out.splitlines() if x.startswith("{")], cap.err


def _noise(path: Path, size=(48, 64), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------- F3


def test_a_mask_with_the_class_left_to_mend_removes_what_it_covers(shared_images, tmp_path,
                                                                  capsys):
    """The dog photo is diagnosed D: with --mask it came back as a byte copy, exit 0, not a
    word. A mask says "remove what I painted": class B, the mask inpainted and written."""
    src = _real(shared_images, DOG)
    h, w = load_photo(src).pixels.shape[:2]
    m = Image.new("L", (w, h), 0)
    ImageDraw.Draw(m).ellipse([200, 100, 500, 400], fill=255)
    m.save(tmp_path / "dog_mask.png")
    rc, (o,), _ = _run(capsys, "restore", str(src), "--mask", str(tmp_path / "dog_mask.png"),
                       "--profile", "builtin", "-o", str(tmp_path / "out"), "--json")
    assert rc == 0 and o["label"] == "B", o
    assert [s["name"] for s in o["steps"]] == ["reflection_mask", "inpaint_builtin"]
    assert o["steps"][0]["model"] == "user:mask"
    assert not any("mask" in w for w in o["warnings"]), o["warnings"]
    out = Path(o["output"])
    assert out.read_bytes() != src.read_bytes()
    assert read_record(out)["label"] == "B"
    assert np.array_equal(load_mask(o["mask"]) > 127, np.asarray(m) > 127)
    before, after = load_photo(src).pixels, load_photo(out).pixels
    inside = np.asarray(m) > 127
    assert np.abs(before - after)[inside].max() > 0.05


def test_a_mask_the_forced_class_does_not_use_is_said_in_the_warnings(tmp_path):
    """The engine API (the app's "Fix as A" for a photo whose mask was edited before): the
    class asked for runs, without the mask, and the result and the dry run say so."""
    src = _noise(tmp_path / "in.png")
    mask = save_mask(np.ones((48, 64), bool), tmp_path / "m.png")
    eng = Engine("cpu")
    for label in (Degradation.A, Degradation.C, Degradation.D):
        req = JobRequest(src, OutputOptions(out_dir=tmp_path / label.value), label=label,
                         profile="builtin", mask_path=mask, guard=False)
        said = [w for w in eng.prepare(req).warnings if "mask" in w]
        res = eng.run(req)
        assert res.label is label and "mask_path" not in res.artifacts
        got = [w for w in res.warnings if "mask" in w]
        assert got == said == [
            (f"the reflection mask was not used: class {label.value} ({label.short_name}) has "
             "no inpainting step; to remove what the mask covers, fix the photo as class B "
             "(Reflection)")], got
        assert "mask" not in res.to_json()
    # an edited B plan with its inpainting turned off does not use it either
    plan = Plan(Degradation.B, "builtin", (Step("reflection_mask"),
                                           Step("inpaint_builtin", enabled=False)))
    res = eng.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "B"), plan=plan,
                             mask_path=mask, guard=False))
    assert [w for w in res.warnings if "mask was" in w] == [
        ("the reflection mask was not used: this plan's inpainting steps are off; turn one on "
         "to remove what the mask covers")]
    # with the class left to the engine, the mask makes it B (and is used: no warning)
    res = eng.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "auto"), profile="builtin",
                             mask_path=mask, guard=False))
    assert res.label is Degradation.B and not [w for w in res.warnings if "mask" in w]
    assert "a reflection mask was given" in res.diagnosis.rationale


@pytest.mark.parametrize("plan", ["A", "C", "D"])
def test_cli_refuses_a_mask_with_a_class_that_cannot_use_it(tmp_path, capsys, plan):
    src = _noise(tmp_path / "in.png")
    mask = save_mask(np.ones((48, 64), bool), tmp_path / "m.png")
    rc = cli.main(["restore", str(src), "--mask", str(mask), "--plan", plan,
                   "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == (f"mend: --mask is a reflection mask, which only class B's chain "
                           f"uses (it removes what the mask covers), not --plan {plan}'s: "
                           "leave out --plan or give --plan B")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ------------------------------------------------------------------------------------- F4


def test_pages_and_frames_after_the_first_are_said_to_be_left_out(shared_images, tmp_path,
                                                                   capsys):
    """A 2-page TIFF came back with one page, an animated GIF as a still PNG: "warnings": []."""
    flower = Image.open(_real(shared_images, FLOWER))
    flower.save(tmp_path / "mp.tif", save_all=True, append_images=[flower.rotate(180)])
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "green", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:],
                   lossless=True)
    frames[0].save(tmp_path / "stereo.mpo", format="MPO", save_all=True,
                   append_images=frames[1:2])
    names = ["mp.tif", "anim.gif", "anim.webp", "stereo.mpo"]
    rc, got, _ = _run(capsys, "restore", *(str(tmp_path / n) for n in names), "--plan", "A",
                      "--profile", "builtin", "--no-guard", "-o", str(tmp_path / "out"),
                      "--json")
    assert rc == 0
    warned = {Path(o["path"]).name: o["warnings"] for o in got}
    assert warned == {
        "mp.tif": [("this TIFF has 2 pages: the result holds the first page alone (the others "
                    "were not restored)")],
        "anim.gif": [("this GIF is animated (3 frames): the result is its first frame alone, a "
                      "still image")],
        "anim.webp": [("this WEBP is animated (3 frames): the result is its first frame alone, "
                       "a still image")],
        "stereo.mpo": [("this JPEG holds 2 images (an MPO: a stereo pair, a depth map...): the "
                        "result holds the first one alone")],
    }
    assert Image.open(tmp_path / "out" / "mp_mend.tif").n_frames == 1
    # nothing to fix: the file is copied whole (every page), and nothing is left out
    rc, got, _ = _run(capsys, "restore", str(tmp_path / "mp.tif"), "--plan", "D",
                      "-o", str(tmp_path / "kept"), "--json")
    assert rc == 0 and got[0]["warnings"] == []
    assert Image.open(got[0]["output"]).n_frames == 2
    # the dry run says it too (a GIF's result is a PNG: written afresh even when kept)
    rc, got, _ = _run(capsys, "restore", str(tmp_path / "anim.gif"), "--plan", "D",
                      "--dry-run", "--json")
    assert rc == 0 and got[0]["warnings"] == warned["anim.gif"]


# ------------------------------------------------------------------------------------- F5


def test_a_16bit_animated_png_is_restored_from_the_picture_every_reader_shows(shared_images,
                                                                              tmp_path):
    """Its default image (IDAT) is solid red, its first animation frame black: OpenCV's
    decode gave the black frame while Pillow, the thumbnails and the viewer showed red."""
    src = _real(shared_images, APNG16)
    with Image.open(src) as im:
        shown = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    photo = load_photo(src)
    assert photo.bit_depth == 16
    assert np.abs(photo.pixels - shown).max() <= 1 / 255 + 1e-6
    assert np.abs(mio.load_preview(src, 256).astype(np.float32) / 255.0
                  - shown).max() <= 1 / 255 + 1e-6
    res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path), label=Degradation.A,
                                       profile="builtin", guard=False))
    after = load_photo(res.output).pixels
    assert np.abs(after - photo.pixels).mean() < 0.02  # the same red picture, sharpened
    assert any(w.startswith("this PNG is animated (2 frames") for w in res.warnings)


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, i = [], 8
    while i < len(png):
        n, t = struct.unpack(">I4s", png[i:i + 8])
        out.append((t, png[i + 8:i + 8 + n]))
        i += 12 + n
    return out


def _chunk(t: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data))


def _apng16(path: Path, images: list[np.ndarray], default_in_animation: bool) -> Path:
    """A 16-bit RGB animated PNG (Pillow writes none): ``images[0]`` is the default image
    (IDAT), the rest animation frames (fdAT); with ``default_in_animation`` the default image
    is the animation's first frame too."""
    import cv2

    def parts(rgb: np.ndarray) -> tuple[bytes, bytes]:
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
        assert ok
        got = _chunks(buf.tobytes())
        return (next(d for t, d in got if t == b"IHDR"),
                b"".join(d for t, d in got if t == b"IDAT"))

    h, w = images[0].shape[:2]
    ihdr, idat = parts(images[0])
    frames = images[1:]
    seq = iter(range(100))

    def fctl() -> bytes:
        return _chunk(b"fcTL", struct.pack(">IIIIIHHBB", next(seq), w, h, 0, 0, 1, 10, 0, 0))

    body = _chunk(b"IHDR", ihdr)
    body += _chunk(b"acTL", struct.pack(">II", len(frames) + default_in_animation, 0))
    body += (fctl() if default_in_animation else b"") + _chunk(b"IDAT", idat)
    for f in frames:
        body += fctl()
        body += _chunk(b"fdAT", struct.pack(">I", next(seq)) + parts(f)[1])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("default_in_animation", [False, True])
def test_a_16bit_animated_png_is_read_as_its_default_image(tmp_path, default_in_animation):
    """Built here (the real file above is a Pillow test image): 16 bits kept, the default
    image read, whether or not it is the animation's first frame."""
    red, black, blue = (np.zeros((20, 30, 3), np.uint16) for _ in range(3))
    red[..., 0], blue[..., 2] = 40000, 50000
    src = _apng16(tmp_path / "a.png", [red, black, blue], default_in_animation)
    with Image.open(src) as im:
        assert im.n_frames == 3 and bool(im.info.get("default_image")) != default_in_animation
        assert im.convert("RGB").getpixel((0, 0)) == (156, 0, 0)
    photo = load_photo(src)
    assert photo.bit_depth == 16 and photo.info.get("decoder") == "opencv"
    assert np.array_equal(np.round(photo.pixels * 65535), red.astype(np.float64))
    note = photo.info["frames_note"]
    assert note.startswith("this PNG is animated (2 frames, and a still image" if not
                           default_in_animation else "this PNG is animated (3 frames)"), note


# ------------------------------------------------------------------------------------- F6


def test_mends_own_copies_in_the_output_folder_are_not_called_foreign(tmp_path, capsys):
    """Re-runs of `restore DIR -r -o DIR/sub` said "N photo(s) in it that are not Mend results
    were not restored", counting Mend's own byte copies (class D, or kept by the guard), and
    the count grew with every run."""
    shoot = tmp_path / "shoot"
    _noise(shoot / "a.png")
    _noise(shoot / "2024" / "c.png", seed=1)
    out = shoot / "mended"
    for run in range(3):
        rc, got, _ = _run(capsys, "restore", str(shoot), "-r", "-o", str(out), "--plan", "D",
                          "--json")
        assert rc == 0
        assert [o for o in got if o.get("skipped") == "output folder"] == [], (run, got)
        assert len([o for o in got if "output" in o]) == 2
    assert sorted(p.name for p in (out / "2024").iterdir()) == ["c_mend.png", "c_mend_1.png",
                                                                "c_mend_2.png"]
    # photos that are not Mend's are still counted: a foreign one, a copy named like a result
    # whose original is not there, a result-like name whose bytes differ from its original's
    _noise(out / "foreign.png", seed=5)
    (out / "x_mend.png").write_bytes((shoot / "a.png").read_bytes())
    _noise(out / "2024" / "c_mend_7.png", seed=6)
    rc, got, _ = _run(capsys, "restore", str(shoot), "-r", "-o", str(out), "--plan", "D",
                      "--json")
    assert rc == 0
    assert [o for o in got if o.get("skipped") == "output folder"] == [
        {"path": str(out), "skipped": "output folder", "photos": 3}]


# ------------------------------------------------------------------------------------- F7


def test_a_mask_is_named_after_its_own_result_and_given_in_the_json(tmp_path, capsys):
    """b.jpg and b.png restored as B into one folder: b_mend.png's mask was b_mend_mask_1.png,
    which reads as the mask of b_mend_1.*; and --json did not give the mask's path."""
    src = tmp_path / "in"
    _noise(src / "b.png", size=(60, 80))
    Image.open(src / "b.png").save(src / "b.jpg", quality=95)
    pairs = []
    for _run_no in range(2):
        rc, got, _ = _run(capsys, "restore", str(src), "-o", str(tmp_path / "out"), "--plan",
                          "B", "--profile", "builtin", "--no-guard", "--json")
        assert rc == 0
        pairs += [(Path(o["output"]), Path(o["mask"])) for o in got]
    assert len(pairs) == 4
    for result, mask in pairs:
        ext = result.suffix.lstrip(".")
        assert mask.parent == result.parent and mask.is_file()
        assert mask.name in (f"{result.stem}_mask.png", f"{result.stem}_{ext}_mask.png"), \
            (result.name, mask.name)
        assert not re.search(r"_mask_\d+\.png$", mask.name)
    assert len({m for _, m in pairs}) == 4
    # (the photo restored first gets the plain name, the other one's names its extension)
    second = "png" if pairs[0][0].suffix == ".jpg" else "jpg"
    assert sorted(m.name for _, m in pairs) == [
        "b_mend_1_mask.png", f"b_mend_1_{second}_mask.png", "b_mend_mask.png",
        f"b_mend_{second}_mask.png"]


def test_mask_path_for(tmp_path):
    r = tmp_path / "x_mend_1.jpg"
    assert mio.mask_path_for(r) == tmp_path / "x_mend_1_mask.png"
    (tmp_path / "x_mend_1_mask.png").write_bytes(b"")
    assert mio.mask_path_for(r) == tmp_path / "x_mend_1_jpg_mask.png"
    assert mio.mask_path_for(tmp_path / "x_mend_1.webp") == tmp_path / "x_mend_1_webp_mask.png"


# ------------------------------------------------------------------------------------- F8


def test_a_canon_ciff_block_that_is_not_carried_is_said(shared_images, tmp_path):
    """A PowerShot A5 JPEG keeps its camera, date and owner only in CIFF: they went without a
    word. A copy of the original keeps it (no warning); --no-metadata drops it on purpose."""
    src = _real(shared_images, CIFF)
    eng = Engine("cpu")
    res = eng.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "a"), label=Degradation.C,
                             profile="builtin", guard=False))
    assert mio.CIFF_NOT_CARRIED in res.warnings
    kept = eng.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "d"), label=Degradation.D))
    assert kept.output.read_bytes() == src.read_bytes() and mio.CIFF_NOT_CARRIED not in \
        kept.warnings
    bare = eng.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "n", keep_metadata=False),
                              label=Degradation.D))
    assert mio.CIFF_NOT_CARRIED not in bare.warnings
