"""The built-in reflection fill (Telea) runs only on a mask someone has checked.

The built-in glare detector cannot tell glare from sky or white things (its mask covers about
as much of clean photos as of reflection photos), and Telea smears the surroundings over what it
fills: with class B and the built-in profile, a session-15 audit saw a tree smeared over an
overcast sky on this real camera photo, and green painted over white flower centres. Now the
detected mask is left for the photographer to check; the photo is kept byte for byte, the mask
is saved beside it, and that mask given back (checked) is filled."""
from __future__ import annotations

import hashlib

import numpy as np

from engine.api import Degradation, JobRequest, OutputOptions
from engine.imageio import load_mask, load_photo
from engine.pipeline import Engine

STREET = "camera_jpeg_exif/exif-samples__jpg__gps__DSCN0027.jpg"  # overcast sky, trees


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_a_detected_mask_is_not_filled_until_checked(shared_images, tmp_path):
    src = shared_images / STREET
    before = _sha(src)
    engine = Engine("cpu")
    res = engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "a"), label=Degradation.B,
                                profile="builtin"))
    assert [s.name for s in res.steps] == ["reflection_mask", "inpaint_builtin"]
    assert res.steps[0].model == "builtin:glare"
    assert res.steps[1].notes.startswith("skipped")
    said = [w for w in res.warnings if w.startswith("reflections: the built-in detector")]
    assert len(said) == 1 and "nothing was filled" in said[0]
    assert _sha(res.output) == before  # kept: the original's bytes (it was smeared before)
    mask = load_mask(res.artifacts["mask_path"])
    assert (mask > 127).mean() > 0.001  # the detector did find bright regions to show
    assert _sha(src) == before

    # the photographer checked that mask (here: as it is) and fixes again: it is filled
    res2 = engine.run(JobRequest(src, OutputOptions(out_dir=tmp_path / "b"),
                                 label=Degradation.B, profile="builtin",
                                 mask_path=res.artifacts["mask_path"], guard=False))
    assert res2.steps[0].model == "user:mask"
    assert not any(w.startswith("reflections: the built-in detector") for w in res2.warnings)
    a, b = load_photo(src).pixels, load_photo(res2.output).pixels
    assert np.abs(a - b)[mask > 127].mean() > 0.01
    assert _sha(src) == before
