"""A job's result keeps the photo's diagnosis as Mend made it (``JobResult.diagnosed``) apart
from the class that ran (session 17): ``JobResult.diagnosis`` carries the class chosen, or B for
a reflection mask, and the app took it for the photo's diagnosis, so "Automatic" planned the
class of the last fix."""
from __future__ import annotations

import numpy as np
from PIL import Image

from engine.api import Degradation, JobRequest, OutputOptions
from engine.imageio import save_mask
from engine.pipeline import Engine


def _photo(path):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:72, 0:96].astype(np.float32)
    img = np.stack([xx / 96, yy / 72, 0.5 + 0.4 * np.sin(xx / 7)], -1)
    img = img + rng.normal(0, 0.08, img.shape)
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def test_the_result_keeps_the_diagnosis_made_apart_from_the_class_that_ran(tmp_path):
    src = _photo(tmp_path / "p.png")
    eng = Engine("cpu")
    made = eng.diagnose(src, "builtin")
    out = OutputOptions(out_dir=tmp_path / "out")
    chosen = Degradation.C if made.label is not Degradation.C else Degradation.A
    # a class chosen, the engine diagnosing the photo itself
    res = eng.run(JobRequest(src, out, label=chosen, profile="builtin", backend="builtin"))
    assert res.label is chosen and res.diagnosis.label is chosen
    assert res.diagnosed is not None and res.diagnosed.label is made.label
    assert res.diagnosed.scores == res.diagnosis.scores
    assert "overridden" not in res.diagnosed.rationale
    # a reflection mask and no class chosen: B ran, the diagnosis given comes back as it was
    mask = np.zeros((72, 96), bool)
    mask[20:40, 30:60] = True
    m = save_mask(mask, tmp_path / "m.png")
    res = eng.run(JobRequest(src, out, profile="builtin", mask_path=m, diagnosis=made))
    assert res.label is Degradation.B and res.diagnosis.label is Degradation.B
    assert res.diagnosed == made
    # nothing chosen: the same diagnosis
    res = eng.run(JobRequest(src, out, profile="builtin", diagnosis=made))
    assert res.diagnosed == made == res.diagnosis
