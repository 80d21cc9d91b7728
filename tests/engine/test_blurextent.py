"""The blur-extent estimator (engine/understand/blurextent.py) and the analyzer's C cross-check."""
from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from engine.understand import synthetic as S
from engine.understand.analyzer import MIN_MOTION_SMEAR, MOTION_MAX_ISOTROPY, smear_check
from engine.understand.blurextent import estimate_blur_extent
from engine.understand.measure import to_gray


def _scene(seed: int = 0, size: int = 384) -> np.ndarray:
    """Occluding rectangles and discs of random grey levels: sharp edges at every angle."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 0.5, np.float32)
    for _ in range(140):
        c = tuple(float(v) for v in rng.uniform(0.05, 0.95, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(6, 40))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), r, c, -1, cv2.LINE_AA)
        else:
            box = cv2.boxPoints(((x, y), (2 * r, r), float(rng.uniform(0, 180))))
            cv2.fillPoly(img, [box.astype(np.int32)], c, cv2.LINE_AA)
    return img


def _extent(img: np.ndarray) -> dict[str, float]:
    return estimate_blur_extent(to_gray(img))


def test_sharp_scene_reads_no_blur():
    r = _extent(_scene())
    assert r["blur_extent_edges"] > 0
    assert r["blur_extent"] < MIN_MOTION_SMEAR


@pytest.mark.parametrize("length", [6, 10, 14])
def test_line_blur_extent_and_angle(length):
    img = _scene(1)
    k = S.motion_kernel(length, 30.0)
    r = _extent(S.convolve(img, k))
    truth = S.kernel_extent(k)
    assert abs(r["blur_extent"] - truth) <= 0.3 * truth + 1.0, (r, truth)
    d = abs(r["blur_extent_angle"] - 30.0) % 180
    assert min(d, 180 - d) <= 22.5, r  # 15-degree orientation bins


def test_curved_shake_is_measured():
    """Hand shake is a curved, uneven path, not the straight line the cepstral estimator
    models; the edge measure reads its extent."""
    img = _scene(2)
    k = S.shake_kernel(12, np.random.default_rng(3))
    blurred = S.add_noise(S.convolve(img, k), 1.0, np.random.default_rng(4))
    truth = S.kernel_extent(k)
    r = _extent(blurred)
    assert abs(r["blur_extent"] - truth) <= 0.35 * truth + 1.0, (r, truth)
    assert r["blur_extent"] >= MIN_MOTION_SMEAR


def test_readings_grow_with_the_blur():
    img = _scene(5)
    reads = [_extent(S.convolve(img, S.motion_kernel(L, 120.0)))["blur_extent"]
             for L in (4, 9, 16, 26)]
    assert all(a < b for a, b in itertools.pairwise(reads)), reads


@pytest.mark.parametrize("sigma", [1.5, 3.0])
def test_defocus_reads_as_blur_of_its_width(sigma):
    """The extent is the blur in the worst direction whatever made it: a Gaussian of sigma s
    widens every edge to about 2.5 s."""
    r = _extent(cv2.GaussianBlur(_scene(6), (0, 0), sigma))
    assert abs(r["blur_extent"] - 2.5 * sigma) <= 0.3 * 2.5 * sigma + 1.0, r


@pytest.mark.parametrize("img", [np.full((200, 300), 0.4, np.float32),
                                 np.zeros((20, 20), np.float32),
                                 np.random.default_rng(0).random((64, 64)).astype(np.float32) * 0.01])
def test_featureless_or_tiny_inputs_read_nothing(img):
    r = estimate_blur_extent(img)
    assert r == {"blur_extent": 0.0, "blur_extent_angle": 0.0, "blur_extent_edges": 0.0,
                 "blur_isotropy": 1.0}


def test_smear_check_cuts_c_only_when_edges_show_no_blur():
    scores = {"A": 0.1, "B": 0.1, "C": 0.7, "D": 0.1}
    cut = smear_check(scores, {"blur_extent": 1.0, "blur_extent_edges": 2400.0})
    assert max(cut, key=cut.get) != "C"
    assert abs(sum(cut.values()) - 1.0) < 1e-9
    assert cut["A"] == pytest.approx(cut["B"]) == pytest.approx(cut["D"])
    # a measured smear, or no measurement at all (too few edges), leaves the scores alone
    assert smear_check(scores, {"blur_extent": 6.0, "blur_extent_edges": 2400.0}) == scores
    assert smear_check(scores, {"blur_extent": 0.0, "blur_extent_edges": 0.0}) == scores


@pytest.mark.parametrize("seed", [1, 2])
def test_isotropy_tells_motion_from_defocus(seed):
    """A straight or hand-shake smear is wide one way only; a Gaussian or disc blur of the same
    size is wide every way (MOTION_MAX_ISOTROPY sits between them)."""
    rng = np.random.default_rng(seed)
    img = _scene(seed)
    line = S.motion_kernel(14, float(rng.uniform(0, 180)))
    shake = S.shake_kernel(14, rng)
    g = cv2.getGaussianKernel(23, 3.5)
    gauss = (g @ g.T).astype(np.float32)
    yy, xx = np.mgrid[-7:8, -7:8]
    disc = ((xx * xx + yy * yy) <= 49).astype(np.float32)
    disc /= disc.sum()
    for k in (line, shake):
        r = _extent(S.convolve(img, k))
        assert r["blur_extent"] >= MIN_MOTION_SMEAR and r["blur_isotropy"] < MOTION_MAX_ISOTROPY
    for k in (gauss, disc):
        r = _extent(S.convolve(img, k))
        assert r["blur_extent"] >= MIN_MOTION_SMEAR and r["blur_isotropy"] >= MOTION_MAX_ISOTROPY


def test_smear_check_cuts_c_for_a_blur_as_wide_every_way():
    scores = {"A": 0.1, "B": 0.1, "C": 0.7, "D": 0.1}
    meas = {"blur_extent": 12.0, "blur_extent_edges": 2400.0}
    assert smear_check(scores, dict(meas, blur_isotropy=0.3)) == scores
    cut = smear_check(scores, dict(meas, blur_isotropy=MOTION_MAX_ISOTROPY + 0.1))
    assert max(cut, key=cut.get) != "C" and abs(sum(cut.values()) - 1.0) < 1e-9


def test_real_camera_shake_reads_more_than_its_sharp_frame(shared_images):
    """DeepDeblur's real GoPro pair: the blurred frame reads a blur, its sharp frame none."""
    from engine.imageio import load_photo
    from engine.understand.measure import _center

    d = shared_images / "motion_blur"
    blur = d / "DeepDeblur_release__images__Flower_blur1.png"
    sharp = d / "DeepDeblur_release__images__Flower_sharp1.png"
    if not (blur.is_file() and sharp.is_file()):
        pytest.skip("the DeepDeblur Flower pair is not in ../shared/images")
    rb = _extent(_center(load_photo(blur).pixels[..., :3], 768))
    rs = _extent(_center(load_photo(sharp).pixels[..., :3], 768))
    assert rs["blur_extent"] < MIN_MOTION_SMEAR <= rb["blur_extent"], (rb, rs)


def test_analyzer_reports_the_extent_in_estimates_and_rationale():
    from engine.understand.analyzer import analyze

    img = _scene(7, 512)
    k = S.shake_kernel(18, np.random.default_rng(8))
    d = analyze(S.convolve(img, k))
    assert d.estimates["blur_extent"] >= MIN_MOTION_SMEAR
    assert "blur_extent_angle" in d.estimates
    if "motion_blur" in d.flags and d.estimates["blur_length"] < 4.5:
        assert "blur extent" in d.rationale


def test_rationale_says_an_isotropic_blur_is_not_motion():
    from engine.understand.analyzer import analyze

    g = cv2.getGaussianKernel(31, 5.0)
    d = analyze(S.convolve(_scene(3, 512), (g @ g.T).astype(np.float32)))
    assert d.estimates["blur_isotropy"] >= MOTION_MAX_ISOTROPY
    assert d.label.value != "C"
    assert ("every direction" in d.rationale) == (d.label.value == "A"), d.rationale
