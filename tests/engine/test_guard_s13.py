"""A photo one pixel tall (a strip, a line scan): the regression guard measured its 2-D
gradients with an empty array and OpenCV raised, so the job failed with "internal error"
whatever its chain. Every built-in chain now writes its result, the guard on."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.api import Degradation, JobRequest, OutputOptions
from engine.pipeline import Engine
from engine.restore.guard import check, gradient_density


@pytest.mark.parametrize("shape", [(1, 40), (40, 1), (1, 1), (2, 60)])
def test_the_guard_judges_photos_one_pixel_wide_or_tall(shape):
    a = np.random.default_rng(0).random((*shape, 3), dtype=np.float32)
    assert check(a, a * 0.98).ok
    assert gradient_density(a) >= 0.0


@pytest.mark.parametrize("label", ["A", "B", "C"])
def test_a_one_pixel_tall_photo_is_restored_with_the_guard_on(tmp_path, label):
    src = tmp_path / "strip.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (1, 40, 3), np.uint8)).save(src)
    res = Engine("cpu").run(JobRequest(src, OutputOptions(out_dir=tmp_path / "out"),
                                       label=Degradation(label), profile="builtin",
                                       backend="builtin"))
    with Image.open(res.output) as im:
        assert im.size == (40, 1)
