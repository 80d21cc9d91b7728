from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engine.api import Degradation, Diagnosis
from engine.devices import select_device
from engine.errors import Cancelled, ModelMissing
from engine.models.store import ModelStore
from engine.progress import Progress
from engine.restore.deblur import motion_psf
from engine.restore.registry import StepContext, get_step
from tests.model_helpers import install_test_model, make_runtime

torch.set_num_threads(1)


def _ctx(runtime=None, diagnosis=None, progress=None, tile=64):
    return StepContext(device=select_device("cpu"), progress=progress or Progress(),
                       runtime=runtime, diagnosis=diagnosis, tile_size=tile)


def _diag(**est):
    return Diagnosis(Degradation.C, {"A": 0, "B": 0, "C": 1.0, "D": 0}, estimates=est)


def _scene(h=128, w=160, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 0.5, np.float32)
    for _ in range(25):
        y0, x0 = rng.integers(0, h - 12), rng.integers(0, w - 12)
        hh, ww = rng.integers(4, 24), rng.integers(4, 24)
        img[y0:y0 + hh, x0:x0 + ww] = rng.uniform(0.05, 0.95, 3)
    return cv2.GaussianBlur(img, (0, 0), 0.7)


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a - b) ** 2))


def test_motion_psf_is_normalised_and_oriented():
    k0 = motion_psf(9, 0)
    k90 = motion_psf(9, 90)
    assert k0.sum() == pytest.approx(1.0, abs=1e-5)
    c = k0.shape[0] // 2
    assert k0[c].sum() > 0.95  # horizontal: one row
    assert k90[:, c].sum() > 0.95  # vertical: one column
    k45 = motion_psf(9, 45)  # counter-clockwise on screen: up-right to down-left
    assert k45[:c, c + 1:].sum() > 0.3 and k45[:c, :c].sum() < 0.01


@pytest.mark.parametrize("length,angle", [(11.0, 0.0), (15.0, 120.0)])
def test_deblur_builtin_improves_psnr_with_known_kernel(length, angle):
    sharp = _scene()
    blurred = cv2.filter2D(sharp, -1, motion_psf(length, angle), borderType=cv2.BORDER_REFLECT)
    rng = np.random.default_rng(1)
    blurred = np.clip(blurred + rng.normal(0, 1 / 255, blurred.shape), 0, 1).astype(np.float32)
    out = get_step("deblur_builtin").fn(
        blurred, {}, _ctx(diagnosis=_diag(blur_length=length, blur_angle=angle, noise_sigma=1.0)))
    assert out.model == "builtin:wiener"
    gain = _psnr(out.image, sharp) - _psnr(blurred, sharp)
    assert gain > 2.0, f"PSNR gain {gain:.2f} dB"
    # edge taper: no wrap-around ringing along the borders
    border = np.ones(sharp.shape[:2], bool)
    border[12:-12, 12:-12] = False
    assert np.mean((out.image - sharp)[border] ** 2) < 1.5 * np.mean(
        (blurred - sharp)[border] ** 2)


def test_deblur_builtin_does_nothing_without_a_measurable_blur():
    img = _scene()
    for diag in (_diag(blur_length=1.5, blur_angle=0.0), _diag(), None):
        out = get_step("deblur_builtin").fn(img, {}, _ctx(diagnosis=diag))
        assert out.image is img
        assert out.notes.startswith("skipped")


def _tiny_nafnet(path):
    from spandrel.architectures.NAFNet import NAFNet

    torch.manual_seed(0)
    net = NAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1],
                 dec_blk_nums=[1, 1])
    torch.save({"params": net.state_dict()}, path)
    return net


def test_deblur_nafnet_runs_tiled_through_the_store(tmp_path):
    src = tmp_path / "NAFNet-GoPro-width64.pth"
    net = _tiny_nafnet(src).eval()
    store = install_test_model(tmp_path / "store", "nafnet-gopro-w64",
                               {"NAFNet-GoPro-width64.pth": src})
    rt = make_runtime(store)
    img = _scene(100, 150)
    msgs = []
    prog = Progress(lambda f, m: msgs.append(m))
    out = get_step("deblur_nafnet").fn(img, {}, _ctx(rt, progress=prog, tile=64))
    assert out.model == "nafnet-gopro-w64"
    assert out.image.shape == img.shape and np.isfinite(out.image).all()
    tiles = [m for m in msgs if m.startswith("tile ")]
    n = int(tiles[-1].split("/")[1])
    assert n > 1 and tiles[-1] == f"tile {n}/{n}", msgs
    # tiles agree with the whole-image network away from tile borders
    with torch.no_grad():
        x = torch.from_numpy(np.pad(img, ((0, 12), (0, 10), (0, 0)), mode="reflect")
                             .transpose(2, 0, 1))[None]
        ref = net(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()[:100, :150]
    assert np.abs(out.image - ref)[:20, :20].max() < 0.05


def test_deblur_nafnet_missing_model_and_cancel(tmp_path):
    img = _scene(64, 64)
    with pytest.raises(ModelMissing):
        get_step("deblur_nafnet").fn(img, {}, _ctx(make_runtime(ModelStore(tmp_path / "empty"))))
    src = tmp_path / "NAFNet-GoPro-width64.pth"
    _tiny_nafnet(src)
    rt = make_runtime(install_test_model(tmp_path / "store", "nafnet-gopro-w64",
                                         {"NAFNet-GoPro-width64.pth": src}))
    p = Progress()
    p.token.cancel()
    with pytest.raises(Cancelled):
        get_step("deblur_nafnet").fn(img, {}, _ctx(rt, progress=p))


def test_deblur_builtin_does_not_lower_psnr_on_real_gopro_blur(shared_images):
    """Real camera shake (GoPro 'Flower', sharp frame as ground truth) is not a line blur: the
    analyzer's estimate sits at its 3.7 px floor, so the step sharpens mildly instead of
    deconvolving. Measured: 25.11 dB blurred, 23.83 dB with the old Wiener, 25.20 dB now."""
    from engine.imageio import load_photo
    from engine.restore.guard import check

    d = shared_images / "motion_blur"
    blur_p, sharp_p = (d / "DeepDeblur_release__images__Flower_blur1.png",
                       d / "DeepDeblur_release__images__Flower_sharp1.png")
    if not (blur_p.is_file() and sharp_p.is_file()):
        pytest.skip("the GoPro Flower pair is not in the shared photos")
    blur, sharp = load_photo(blur_p).pixels, load_photo(sharp_p).pixels
    # the analyzer's reading of this photo (engine.understand.measure): floor length
    diag = _diag(blur_length=3.7, blur_angle=110.0, motion_evidence=10.36, noise_sigma=0.68)
    out = get_step("deblur_builtin").fn(blur, {"length": 3.7, "angle": 110.0}, _ctx(
        diagnosis=diag))
    assert out.notes.startswith("no deconvolution"), out.notes
    assert _psnr(out.image, sharp) >= _psnr(blur, sharp)
    assert check(blur, out.image).ok


def test_deblur_builtin_trusts_only_confident_estimates():
    sharp = _scene()
    blurred = cv2.filter2D(sharp, -1, motion_psf(11.0, 0.0), borderType=cv2.BORDER_REFLECT)
    step = get_step("deblur_builtin").fn
    # weak cepstral evidence for a short length: no deconvolution
    out = step(blurred, {}, _ctx(diagnosis=_diag(blur_length=5.2, blur_angle=0.0,
                                                 motion_evidence=7.0)))
    assert out.notes.startswith("no deconvolution") and "weak evidence" in out.notes
    # a length the user typed (not the measured one) is taken as given
    out = step(blurred, {"length": 11.0, "angle": 0.0},
               _ctx(diagnosis=_diag(blur_length=3.7, blur_angle=0.0, motion_evidence=5.0)))
    assert out.notes.startswith("kernel 11.0 px")
    assert _psnr(out.image, sharp) > _psnr(blurred, sharp) + 2.0
    # strength blends with the input
    half = step(blurred, {"length": 11.0, "angle": 0.0, "strength": 0.5}, _ctx())
    assert np.allclose(half.image, blurred + 0.5 * (out.image - blurred), atol=2e-3)


def test_deblur_builtin_at_strength_0_changes_nothing_even_where_it_would_sharpen():
    """Its fallback when the blur estimate is not confident (a mild unsharp mask) follows the
    strength too: at 0 the photo is handed on untouched, at 0.5 half the sharpening."""
    sharp = _scene()
    blurred = cv2.filter2D(sharp, -1, motion_psf(11.0, 0.0), borderType=cv2.BORDER_REFLECT)
    step = get_step("deblur_builtin").fn
    weak = {"blur_length": 5.2, "blur_angle": 0.0, "motion_evidence": 7.0}  # not confident
    full = step(blurred, {}, _ctx(diagnosis=_diag(**weak)))
    assert full.notes.startswith("no deconvolution")
    assert np.abs(full.image - blurred).max() > 0.01  # (it sharpens)
    off = step(blurred, {"strength": 0.0}, _ctx(diagnosis=_diag(**weak)))
    assert off.notes == "skipped: strength 0"
    assert np.array_equal(off.image, blurred)
    half = step(blurred, {"strength": 0.5}, _ctx(diagnosis=_diag(**weak)))
    # (an unsharp mask is linear in its amount)
    assert np.allclose(half.image, blurred + 0.5 * (full.image - blurred), atol=2e-3)


def _five_smooth(n: int) -> bool:
    for f in (2, 3, 5):
        while n % f == 0:
            n //= f
    return n == 1


@pytest.mark.parametrize("n,p", [(101, 30), (131, 30), (3001, 30), (4001, 62), (3456, 30),
                                 (5184, 62), (1, 30)])
def test_fft_padding_reaches_a_fast_length_with_at_least_the_border_on_each_side(n, p):
    from scipy import fft

    from engine.restore.deblur import fft_padding

    lo, hi = fft_padding(n, p)
    assert lo >= p and hi >= p and abs(lo - hi) <= 1
    assert n + lo + hi == fft.next_fast_len(n + 2 * p, real=True)
    assert _five_smooth(n + lo + hi)


def test_deconvolution_runs_its_ffts_at_fast_lengths(monkeypatch):
    """Padded by twice the kernel and 8 px alone, a 101 x 131 px photo's FFTs ran at 161 x 191
    (7 x 23 by a prime): whole-photo FFTs at such sizes took 1.5-2.5x as long, and unevenly
    from one photo size to the next. Every transform is at 2-3-5-smooth lengths now."""
    from scipy import fft

    from engine.restore import deblur

    shapes = []

    def recording(real):  # the real transform, noting the size it runs at
        def spy(x, *args, **kw):
            shapes.append(tuple(kw["s"]) if kw.get("s") is not None else x.shape)
            return real(x, *args, **kw)
        return spy

    for name in ("rfft2", "irfft2"):
        monkeypatch.setattr(fft, name, recording(getattr(fft, name)))
    img = _scene(101, 131)
    psf = motion_psf(9.0, 20.0)
    p = 2 * max(psf.shape) + 8
    out = deblur.wiener_deconvolve(img, psf, 0.003, grad_weight=0.003)
    assert out.shape == img.shape and np.isfinite(out).all()
    assert len(shapes) == 1 + 4 * 3  # (the kernel's transfer function, 4 per channel)
    assert len(set(shapes)) == 1, shapes
    (ph, pw), = set(shapes)
    assert ph >= 101 + 2 * p and pw >= 131 + 2 * p
    assert _five_smooth(ph) and _five_smooth(pw), (ph, pw)


def _wiener_at_bare_padding(img, psf, nsr, lam, p):
    """The deconvolution as it was before its FFT sizes were rounded up (float64): reflect
    padding of ``p`` on each side tapered into its circularly blurred copy, FFTs at that size."""
    h, w = img.shape[:2]
    ph, pw = h + 2 * p, w + 2 * p
    k = np.zeros((ph, pw))
    k[:psf.shape[0], :psf.shape[1]] = psf
    otf = np.fft.rfft2(np.roll(k, (-(psf.shape[0] // 2), -(psf.shape[1] // 2)), axis=(0, 1)))
    fy = 4 * np.sin(np.pi * np.fft.fftfreq(ph)) ** 2
    fx = 4 * np.sin(np.pi * np.fft.rfftfreq(pw)) ** 2
    wiener = np.conj(otf) / (np.abs(otf) ** 2 + nsr + lam * (fy[:, None] + fx[None, :]))

    def ramp(n):
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(p) + 0.5) / p)
        return np.concatenate([r, np.ones(n - 2 * p), r[::-1]])

    taper = ramp(ph)[:, None] * ramp(pw)[None, :]
    out = np.empty(img.shape)
    for c in range(img.shape[2]):
        ch = np.pad(img[..., c].astype(np.float64), p, mode="symmetric")  # (cv2's REFLECT)
        blurred = np.fft.irfft2(np.fft.rfft2(ch) * otf, s=(ph, pw))
        mix = taper * ch + (1 - taper) * blurred
        out[..., c] = np.fft.irfft2(np.fft.rfft2(mix) * wiener, s=(ph, pw))[p:p + h, p:p + w]
    return np.clip(out, 0, 1)


def test_fast_fft_sizes_leave_the_deconvolution_as_it_was_away_from_the_borders(shared_images):
    """The wider padding that reaches fast FFT lengths changes what the Wiener filter's long
    tails wrap into near the frame, not the photo's interior: on the sharp GoPro 'Flower'
    frame blurred by a 9 px line (odd size 1009 x 701, noise sigma 1), beyond twice the
    padding the result is within 1e-3 of the FFTs at the bare padded size (measured on the
    real motion-blurred photos of ../shared/images: 3.4e-4 - 9.3e-4), and its PSNR against the
    sharp frame within 0.05 dB (measured: 0.00-0.02 dB for 9-15 px kernels, at most 0.16 dB
    lower for 25 px ones, mean -0.02 dB over 48 synthetic cases)."""
    from engine.restore.deblur import regularisation, wiener_deconvolve

    path = shared_images / "motion_blur" / "DeepDeblur_release__images__Flower_sharp1.png"
    if not path.is_file():
        pytest.skip("the GoPro Flower sharp frame is not in the shared photos")
    bgr = cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), (1009, 701),
                     interpolation=cv2.INTER_AREA)
    sharp = np.ascontiguousarray(bgr[..., ::-1]).astype(np.float32) / 255.0
    psf = motion_psf(9.0, 20.0)
    rng = np.random.default_rng(0)
    blurred = cv2.filter2D(sharp, -1, psf, borderType=cv2.BORDER_REFLECT)
    blurred = np.clip(blurred + rng.normal(0, 1 / 255, blurred.shape), 0, 1).astype(np.float32)
    nsr, lam = regularisation(1.0)
    p = 2 * max(psf.shape) + 8
    ref = _wiener_at_bare_padding(blurred, psf, nsr, lam, p)
    out = wiener_deconvolve(blurred, psf, nsr, grad_weight=lam)
    inner = (slice(2 * p, -2 * p), slice(2 * p, -2 * p))
    assert np.abs(out - ref)[inner].max() < 1e-3
    assert np.abs(out - ref).mean() < 5e-4  # (measured 1.8e-4: the borders)
    assert _psnr(out, sharp) > _psnr(blurred, sharp) + 3.0
    assert _psnr(out, sharp) >= _psnr(ref, sharp) - 0.05
