"""A reflection mask given to a plan that inpaints, whatever the plan's class (session 16 audit).

A chain the photographer built by hand (class A's plan with an inpainting step added) removed
what the mask covers, but the mask was not written beside the result and the regression guard
judged the inpainted pixels, which are meant to change, as damage: it kept the original. What
decides both is whether the plan inpaints (``uses_mask``), not its label. Also: ``mend restore``'s
human-readable line names the mask it wrote (only ``--json`` did), and a job says whether its
result is the original kept as it was (``JobResult.kept_original``)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from engine import cli
from engine.api import Degradation, JobRequest, OutputOptions, Plan, Step
from engine.imageio import load_mask, load_photo, mask_path_for, read_record, save_mask
from engine.pipeline import Engine, uses_mask
from engine.restore import guard
from engine.restore.profiles import build_plan

STREET = "camera_jpeg_exif/exif-samples__jpg__gps__DSCN0027.jpg"  # overcast sky, trees


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _photo_with_a_red_block(path: Path) -> tuple[Path, np.ndarray]:
    """A blue-grey photo with dark discs and a large saturated red block, and the block's mask:
    filling the block with its surroundings shifts the photo's mean colour far past the guard's
    limit, while outside the block the photo keeps its own edges."""
    h, w = 96, 128
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.35 + 0.1 * xx / w, 0.45 + 0.1 * yy / h, 0.6 + 0.05 * xx / w], -1)
    for _ in range(12):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(3, 8)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.random(3) * 0.6
    block = np.zeros((h, w), bool)
    block[24:72, 32:96] = True
    img[block] = (0.9, 0.1, 0.1)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)
    return path, block


def test_a_hand_built_plan_of_another_class_that_inpaints_saves_its_mask_and_is_judged_outside_it(
        tmp_path):
    src, block = _photo_with_a_red_block(tmp_path / "red.png")
    before = _sha(src)
    mask = save_mask(block, tmp_path / "painted.png")
    plan_a = build_plan(Degradation.A, "builtin", None)
    plan = Plan(Degradation.A, "builtin", plan_a.steps + (Step("inpaint_builtin"),))
    assert uses_mask(plan)
    eng = Engine("cpu")
    res = eng.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), plan=plan,
                             mask_path=mask))
    assert res.label is Degradation.A
    assert not [w for w in res.warnings if "kept the original" in w], res.warnings
    assert not res.kept_original
    out = load_photo(res.output).pixels
    assert out[block][:, 0].mean() < 0.6  # the red block was filled from its surroundings
    # the mask is written beside the result, named after it, and given in the JSON
    assert res.artifacts["mask_path"] == res.output.with_name("red_mend_mask.png")
    assert np.array_equal(load_mask(res.artifacts["mask_path"]) > 127, block)
    assert res.to_json()["mask"] == str(res.artifacts["mask_path"])
    assert read_record(res.output)["label"] == "A"
    assert _sha(src) == before
    # (what made the difference: the same result judged over the masked pixels is refused)
    src_px = load_photo(src).pixels
    assert not guard.check(src_px, out).ok
    assert guard.check(src_px, out, mask=block.astype(np.uint8) * 255).ok


def test_a_plan_that_does_not_inpaint_writes_no_mask_and_is_judged_whole(tmp_path):
    """The other side: a B plan with its inpainting turned off finds reflections but removes
    none: no mask beside the result (it was not used), the warning says the mask was not used."""
    src, block = _photo_with_a_red_block(tmp_path / "red.png")
    mask = save_mask(block, tmp_path / "painted.png")
    plan = Plan(Degradation.B, "builtin", (Step("reflection_mask", {"detector": "builtin"}),
                                           Step("inpaint_builtin", enabled=False)))
    res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), plan=plan,
                                       mask_path=mask))
    assert "mask_path" not in res.artifacts and "mask" not in res.to_json()
    assert not mask_path_for(res.output).exists()
    assert any(w.startswith("the reflection mask was not used") for w in res.warnings)


def test_restore_names_the_mask_it_wrote_in_its_human_readable_line(tmp_path, capsys):
    src, block = _photo_with_a_red_block(tmp_path / "red.png")
    mask = save_mask(block, tmp_path / "painted.png")
    rc = cli.main(["restore", str(src), "--mask", str(mask), "--profile", "builtin",
                   "-o", str(tmp_path / "out")])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    written = tmp_path / "out" / "red_mend_mask.png"
    assert written.is_file()
    assert out[0].startswith(f"{src} -> {tmp_path / 'out' / 'red_mend.png'} (B: ")
    assert out[1] == f"  mask: {written}"
    # a result without a mask has no such line
    rc = cli.main(["restore", str(src), "--plan", "A", "--profile", "builtin", "--no-guard",
                   "-o", str(tmp_path / "a")])
    assert rc == 0 and "mask:" not in capsys.readouterr().out


def test_a_result_says_whether_it_is_the_original_kept(tmp_path):
    src, block = _photo_with_a_red_block(tmp_path / "red.png")
    eng = Engine("cpu")

    def run(name: str, **kw):
        return eng.run(JobRequest(src, OutputOptions(out_dir=tmp_path / name),
                                  profile="builtin", **kw))

    assert run("d", label=Degradation.D).kept_original  # nothing to fix
    # a checked mask that is empty: the fill has nothing to fill, no pixel changes
    empty = save_mask(np.zeros_like(block), tmp_path / "empty.png")
    res = run("empty", mask_path=empty)
    assert res.label is Degradation.B and res.kept_original
    assert _sha(res.output) == _sha(src)
    assert not run("filled", mask_path=save_mask(block, tmp_path / "m.png")).kept_original
    assert not run("a", label=Degradation.A, guard=False).kept_original


def test_the_built_in_fill_of_a_detected_mask_is_a_kept_original(shared_images, tmp_path):
    res = Engine("cpu").run(JobRequest(shared_images / STREET, OutputOptions(out_dir=tmp_path),
                                       label=Degradation.B, profile="builtin"))
    assert res.steps[1].notes.startswith("skipped") and res.kept_original
    assert res.artifacts["mask_path"].is_file()


def test_a_mask_that_cannot_be_read_is_named_as_the_mask(tmp_path):
    """A mask deleted (or damaged) after the job was asked for failed as "Cannot read this
    photo: file not found": the photo was fine. The error is the mask's (``BadMask``, its
    path), and the app says so."""
    from engine.errors import BadImage, BadMask
    from ui.messages import describe_error

    src, _ = _photo_with_a_red_block(tmp_path / "p.png")
    before = _sha(src)
    plan = Plan(Degradation.B, "builtin", (Step("reflection_mask", {"detector": "builtin"}),
                                           Step("inpaint_builtin")))
    for name, content in (("gone.png", None), ("broken.png", b"not a png")):
        mask = tmp_path / name
        if content is not None:
            mask.write_bytes(content)
        out = tmp_path / f"out_{name}"
        try:
            Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=out), plan=plan,
                                         mask_path=mask))
        except BadMask as e:
            err = e
        else:
            raise AssertionError("the job ran with a mask it could not read")
        assert isinstance(err, BadImage) and err.path == str(mask)
        said = describe_error(err)
        assert said.startswith(f"Cannot read the reflection mask {mask}") and "this photo" \
            not in said
        assert not out.exists() or not any(out.iterdir())
    assert _sha(src) == before
