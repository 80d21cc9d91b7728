"""A cancel is honoured within a fraction of a second inside the long native calls of the
restoration steps (face detection, Telea inpainting, PP-OCR detection), abandoned calls never
overlap the next, and the steps' results stay as they were; NAFNet steps check their ``tile``."""
from __future__ import annotations

import threading
import time
import tracemalloc

import cv2
import numpy as np
import pytest

from engine.devices import select_device
from engine.errors import Cancelled, UsageError
from engine.progress import CancelToken, Progress
from engine.restore.registry import StepContext, call_cancellable, get_step

FACE_PHOTO = "faces/GFPGAN__inputs__whole_imgs__00.jpg"
DOG = "reflection/windowseat-reflection-re__example_images__dog.png"
PHARAOH = "reflection/windowseat-reflection-re__example_images__pharaoh.jpg"


class Recording(CancelToken):
    """A token that notes when it was looked at (each look is a point where a cancel stops)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def check(self) -> None:
        self.times.append(time.perf_counter())
        super().check()


def _ctx(token: CancelToken | None = None, **kw) -> StepContext:
    return StepContext(device=select_device("cpu"), progress=Progress(token=token), runtime=None,
                       **kw)


def _read(shared_images, rel: str, size: tuple[int, int] | None = None) -> np.ndarray:
    bgr = cv2.imread(str(shared_images / rel), cv2.IMREAD_COLOR)
    if size is not None:
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(bgr[..., ::-1]).astype(np.float32) / 255.0


def _cancel_after(token: CancelToken, delay: float, at: list[float],
                  started: threading.Event | None = None) -> threading.Thread:
    """A thread that cancels ``token`` ``delay`` s after its start (or after ``started`` is
    set), noting when in ``at``."""
    def run() -> None:
        if started is None or started.wait(10.0):
            time.sleep(delay)
        at.append(time.perf_counter())
        token.cancel()

    th = threading.Thread(target=run)
    th.start()
    return th


def _latency(fn, token: CancelToken, delay: float) -> float:
    """Seconds from a cancel ``delay`` s into ``fn()`` to its Cancelled."""
    at: list[float] = []
    th = _cancel_after(token, delay, at)
    try:
        with pytest.raises(Cancelled):
            fn()
        return time.perf_counter() - at[0]
    finally:
        th.join()


def _no_worker_left(prefix: str = "mend-", timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(t.name.startswith(prefix) for t in threading.enumerate()):
            return True
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------- the helper
def test_call_cancellable_returns_raises_and_runs_in_its_slot():
    slot = threading.Lock()
    assert call_cancellable(lambda: 41 + 1, CancelToken().check, slot=slot) == 42
    assert call_cancellable(lambda: "here", None, slot=slot) == "here"

    def boom():
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        call_cancellable(boom, CancelToken().check, slot=slot)
    assert not slot.locked()
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):  # a cancelled job does not start the call
        call_cancellable(lambda: pytest.fail("ran"), token.check, slot=slot)


def test_a_cancel_abandons_the_call_at_once_and_the_next_call_waits_for_it():
    """The job's thread returns at the cancel; the abandoned call asks to stop (``stop``),
    keeps its slot until it has ended, the next call of that slot starts only then (no CPU
    piled up across jobs), and no worker thread is left behind."""
    slot = threading.Lock()
    spans: list[tuple[float, float]] = []
    stopped = threading.Event()

    def native(seconds: float) -> str:
        t0 = time.perf_counter()
        stopped.wait(seconds)  # (a native call that ends early once asked to)
        time.sleep(0.2)  # ... at its next node
        spans.append((t0, time.perf_counter()))
        return "result"

    token = CancelToken()
    latency = _latency(lambda: call_cancellable(lambda: native(5.0), token.check, slot=slot,
                                                stop=stopped.set), token, 0.2)
    assert latency < 0.2, latency
    assert stopped.is_set() and slot.locked()  # still running, asked to stop
    assert call_cancellable(lambda: native(0.0), CancelToken().check, slot=slot) == "result"
    (a0, a1), (b0, _b1) = spans
    assert b0 >= a1  # the second started after the abandoned one had ended
    assert a1 - a0 < 1.0  # the abandoned one stopped early
    assert _no_worker_left() and not slot.locked()


def test_a_call_that_fails_because_its_job_was_cancelled_is_a_cancel():
    token = CancelToken()

    def stopped_run():
        token.cancel()  # (between two polls: the run then fails, as a terminated ONNX run)
        raise RuntimeError("Exiting due to terminate flag being set to true")

    with pytest.raises(Cancelled):
        call_cancellable(stopped_run, token.check, slot=threading.Lock(), poll=1.0)


# --------------------------------------------------------------------------- faces
def test_the_face_detection_view_is_the_same_bytes_with_one_small_copy(shared_images):
    """``_detection_view`` made three photo-sized float copies (two alive at once: 288 MB on a
    12 MP photo for a 36 MB result); now one uint8 copy, the same bytes (on all the real face
    photos at their size and at 12 MP the views' hashes, Haar boxes and YuNet boxes were
    unchanged)."""
    from engine.restore import face

    img = _read(shared_images, FACE_PHOTO, (3000, 2000))
    old = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)[..., ::-1]
    want = np.ascontiguousarray(cv2.resize(old, (1280, 853), interpolation=cv2.INTER_AREA))
    del old
    tracemalloc.start()
    try:
        view, sx, sy = face._detection_view(img, 1280)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(view, want) and view.flags.c_contiguous
    assert (sx, sy) == (1280 / 3000, 853 / 2000)
    u8_size = img.size  # one uint8 copy of the photo
    assert peak < 2 * u8_size, (peak / 1e6, u8_size / 1e6)  # it was 8x (two float copies)


class _SlowCascade:
    """The face cascade, as slow as it is on a busy machine's 12 MP photo (seconds, or until
    ``release`` is set: tests/conftest.py)."""

    def __init__(self, real, seconds: float, release: threading.Event) -> None:
        self.real, self.seconds, self.release = real, seconds, release

    def detectMultiScale3(self, *a, **kw):  # (OpenCV's name)
        self.release.wait(self.seconds)  # (no cancel can reach inside an OpenCV call)
        return self.real.detectMultiScale3(*a, **kw)


def test_a_cancel_during_face_detection_is_honoured_at_once(shared_images, monkeypatch,
                                                            release):
    """The face step looked at the cancel token before and after the detection only: ~1.2 s
    (0.8-2.5 s measured on a 12 MP photo) passed before a cancel stopped it."""
    from engine.restore import face

    real = face._cascade("face", str(cv2.data.haarcascades) + "/" + face.HAAR_FILE)
    monkeypatch.setitem(face._HAAR, "face", _SlowCascade(real, 1.5, release))
    img = _read(shared_images, FACE_PHOTO)
    token = CancelToken()
    ctx = _ctx(token)
    step = get_step("face_codeformer")
    latency = _latency(lambda: step.fn(img, {"face_detector": "haar"}, ctx), token, 0.3)
    assert latency < 0.3, latency
    release.set()  # (the abandoned detection ends now, not 1.2 s later)
    assert _no_worker_left()


def test_face_detection_on_a_12_mp_photo_looks_at_the_cancel_often(shared_images):
    from engine.restore import face

    img = _read(shared_images, FACE_PHOTO, (4000, 3000))
    token = Recording()
    t0 = time.perf_counter()
    _faces, name = face.detect_faces(img, None, check=token.check)
    t1 = time.perf_counter()
    gaps = np.diff([t0, *token.times, t1])
    assert name == "builtin:haar" and len(token.times) > 20
    assert gaps.max() < 0.5, gaps.max()  # (one gap was the whole detection, ~1.2 s)


@pytest.mark.parametrize("detector", ["glare", "face"])
def test_a_cancel_during_a_detectors_reduction_of_the_photo_stops_the_job_at_once(
        tmp_path, monkeypatch, release, detector):
    """The glare and face detectors begin with one resize of the whole photo to their working
    view (1024 / 1280 px), no cancel looked at during it: measured 0.29-0.34 s (glare, float)
    and 0.17-0.27 s (faces, uint8) at 120 MP on an idle 2-core machine, more on a busy one. Here
    that resize is made to take 1 s: the job ended ~0.95 s after the cancel; now it is
    abandoned at once (the job stops within a poll), runs out in its own slot, and the next
    job still runs."""
    from engine.api import Degradation, Diagnosis, JobRequest, OutputOptions, Plan, Step
    from engine.pipeline import Engine
    from engine.restore.reflection import DETECT_SIDE
    from tests.model_helpers import install_stand_in

    h, w = 1200, 1600  # (larger than both views: each detector reduces it)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 9.0)], -1)
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), (rgb[..., ::-1] * 255).astype(np.uint8))
    if detector == "glare":
        label, store, side, dtype = Degradation.B, None, DETECT_SIDE, np.float32
        plan = Plan(label, "builtin", (Step("reflection_mask", {"detector": "builtin"}),
                                       Step("inpaint_builtin")))
    else:  # (CodeFormer: a stand-in, never loaded: the photo has no face)
        label, side, dtype = Degradation.C, 1280, np.uint8
        store = install_stand_in(tmp_path / "store", "codeformer")
        plan = Plan(label, "laptop", (Step("face_codeformer", {"face_detector": "haar"}),))
    real, slow, started = cv2.resize, [True], threading.Event()

    def resize(image, dsize, *a, **kw):
        if slow[0] and dsize is not None and max(dsize) == side and image.dtype == dtype \
                and image.shape[:2] == (h, w):  # (the detector's reduction of the photo)
            started.set()
            release.wait(1.0)  # (no cancel reaches inside an OpenCV call)
        return real(image, dsize, *a, **kw)

    monkeypatch.setattr(cv2, "resize", resize)
    engine = Engine("cpu", store)
    out = tmp_path / "out"

    def request():
        return JobRequest(src, OutputOptions(out_dir=out), plan=plan, profile=plan.profile,
                          diagnosis=Diagnosis(label, {label.value: 1.0}), guard=False)

    token = CancelToken()
    at: list[float] = []
    th = _cancel_after(token, 0.05, at, started)
    try:
        with pytest.raises(Cancelled):
            engine.run(request(), Progress(token=token))
        latency = time.perf_counter() - at[0]
    finally:
        th.join()
    assert started.is_set() and latency < 0.3, latency
    release.set()  # (the abandoned resize ends now, not ~0.9 s later)
    assert not out.exists() or not any(out.iterdir())
    assert _no_worker_left()  # (the abandoned resize ended in its own time)
    slow[0] = False
    assert engine.run(request()).output.is_file()


# --------------------------------------------------------------------------- Telea
@pytest.mark.parametrize("rel", [DOG, PHARAOH])
def test_telea_in_tiles_matches_one_call_on_real_glare_masks(shared_images, rel):
    """Tiles with a margin of the mask's depth: as one cv2.inpaint call on >= 99.9 % of the
    filled pixels of these photos (measured: 7 of 111 890 differ on dog, 0 on pharaoh; on 12 MP
    versions with 15-20 % masks 0.2-0.4 %, PSNR against the photo under the mask equal to
    4 decimals), the rest within 3 levels."""
    from engine.restore import reflection as R
    from engine.restore.classical import to_uint8

    img = _read(shared_images, rel)
    hole = R.dilate_mask(R.detect_glare(img), R.PASTE_DILATE)
    assert max(img.shape[:2]) > R.TELEA_TILE and (hole > 0).mean() > 0.05
    u8 = to_uint8(img)
    one = cv2.inpaint(u8, hole, 5.0, cv2.INPAINT_TELEA)
    token = Recording()
    tiled = R.telea_inpaint(u8, hole, 5.0, token.check, tile=256)
    diff = np.abs(one.astype(int) - tiled.astype(int)).max(axis=2)
    assert diff.max() <= 3
    assert (diff > 0).sum() <= 0.001 * (hole > 0).sum()
    assert np.array_equal(one[hole == 0], tiled[hole == 0])
    assert len(token.times) > 4  # a cancel is looked at between the tiles
    small = np.ascontiguousarray(u8[:400, :400])
    assert np.array_equal(R.telea_inpaint(small, hole[:400, :400], 5.0),
                          cv2.inpaint(small, hole[:400, :400], 5.0, cv2.INPAINT_TELEA))


def test_a_cancel_inside_builtin_inpainting_is_honoured_within_a_tile(shared_images):
    """inpaint_builtin ran cv2.inpaint once on the whole masked region: a 12 MP photo with a
    19.5 % glare mask took 6-14 s that no cancel could stop."""
    from engine.restore import reflection as R

    img = _read(shared_images, PHARAOH, (1600, 2400))
    mask = R.detect_glare(img, sensitivity=1.6)
    assert (mask > 127).mean() > 0.15
    token = CancelToken()
    ctx = _ctx(token, mask=mask)
    step = get_step("inpaint_builtin")
    latency = _latency(lambda: step.fn(img, dict(step.defaults), ctx), token, 0.4)
    assert latency < 0.5, latency
    assert _no_worker_left()
    assert not R._TELEA_SLOT.locked()


def test_a_cancel_during_a_long_lama_layer_is_honoured_at_once(release):
    """LaMa looked at the cancel before each layer only: one layer of a 1024-px region took up
    to 1.7 s on a busy machine. The forward pass is abandoned at once and stops at its next
    layer; the next region waits for it."""
    import torch

    from engine.restore import reflection as R

    class SlowLayer(torch.nn.Module):
        def forward(self, x):
            release.wait(1.0)  # (one long layer: no cancel reaches inside it)
            return x

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.slow = SlowLayer()
            self.after = torch.nn.Identity()

        def forward(self, x, m):
            return self.after(self.slow(self.conv(x)))

    class Desc:
        def __init__(self):
            self.model = Net()

        def __call__(self, x, m):
            return self.model(x, m)

    desc = Desc()
    token = CancelToken()
    fn = R.lama_fn(desc, token.check)
    crop, mask = np.zeros((64, 64, 3), np.float32), np.ones((64, 64), np.float32)
    assert fn(crop, mask).shape == (64, 64, 3)
    latency = _latency(lambda: fn(crop, mask), token, 0.3)
    assert latency < 0.3, latency
    release.set()  # (the long layer ends now, not 0.7 s later)
    t0 = time.perf_counter()
    assert _no_worker_left() and not R._LAMA_SLOT.locked()
    assert time.perf_counter() - t0 < 1.5  # (it stopped at the layer after the long one)


def test_builtin_inpainting_of_a_real_photo_is_as_before(shared_images):
    """The result of the step on a real reflection photo (the mask's one region is inpainted
    in tiles; the blend is done on the changed pixels only) equals the one-call result."""
    from engine.restore import reflection as R
    from engine.restore.classical import to_uint8

    img = _read(shared_images, PHARAOH)
    mask = R.detect_glare(img)
    ctx = _ctx(Recording(), mask=mask)
    step = get_step("inpaint_builtin")
    out = step.fn(img, dict(step.defaults), ctx).image
    # the old step: one cv2.inpaint per region, blended over the whole crop
    ref = img.copy()
    hole = R.dilate_mask(mask, R.PASTE_DILATE)
    for x0, y0, x1, y1 in R.mask_regions(hole, context=0.5):
        filled = cv2.inpaint(to_uint8(img[y0:y1, x0:x1]), hole[y0:y1, x0:x1], 5.0,
                             cv2.INPAINT_TELEA).astype(np.float32) / 255.0
        a = R.paste_alpha(mask[y0:y1, x0:x1])[..., None]
        region = ref[y0:y1, x0:x1]
        sel = a[..., 0] > 0
        region[sel] = (region * (1.0 - a) + np.clip(filled, 0, 1) * a)[sel]
    assert np.array_equal(out, ref)
    assert len(ctx.progress.token.times) > 10


# --------------------------------------------------------------------------- PP-OCR
class _SlowSession:
    """rapidocr's detection session with one node as long as the longest measured on the
    reduced copy of a 12 MP page (~2.7 s under load): ``RunOptions.terminate`` only stops a
    run between nodes. Counts the runs in progress at once."""

    def __init__(self, real, seconds: float, release: threading.Event) -> None:
        self.real, self.seconds, self.release = real, seconds, release
        self.lock = threading.Lock()
        self.running = self.most = 0

    def run(self, output_names, input_feed, run_options=None):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            self.release.wait(self.seconds)  # the long node (tests/conftest.py: release)
            if run_options is not None and run_options.terminate:
                raise RuntimeError("Exiting due to terminate flag being set to true.")
            return self.real.run(output_names, input_feed, run_options)
        finally:
            with self.lock:
                self.running -= 1

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.fixture
def slow_ocr(monkeypatch, release):
    pytest.importorskip("rapidocr")
    import engine.restore.text as T

    ocr = T.RapidOCRBackend(threads=1)
    ocr.detect(np.full((64, 64, 3), 255, np.uint8))  # (loaded and routed)
    routed = ocr._engine.text_det.session.session
    assert isinstance(routed, T._RunOptionsSession)
    slow = _SlowSession(routed._session, 1.5, release)
    monkeypatch.setattr(routed, "_session", slow)
    return ocr, slow


def _page() -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    # (PP-OCR brings a photo's short side up to 736 px: a smaller page is not faster)
    img = Image.new("RGB", (736, 736), (245, 243, 238))
    ImageDraw.Draw(img).text((40, 300), "CANCEL ME", fill=(10, 10, 10),
                             font=ImageFont.load_default(size=72))
    return np.asarray(img, np.float32) / 255.0


def test_a_cancel_during_a_long_ocr_node_is_honoured_at_once(slow_ocr):
    """Cancel reached the ONNX run only between two nodes: 0.5-2.7 s after a cancel on the
    reduced copy of a 12 MP page (real rapidocr models). The run is now abandoned at once; it
    stops at its node's end, the next detection waits for it and finds the same text."""
    import engine.restore.text as T

    ocr, slow = slow_ocr
    page = _page()

    def detect(token: CancelToken) -> list[np.ndarray]:
        ctx = _ctx(token)
        return T._detect_text(ocr, page, 2048, 0, ctx)

    slow.seconds = 0.0
    reference = detect(CancelToken())
    assert reference
    slow.seconds = 1.5
    token = CancelToken()
    latency = _latency(lambda: detect(token), token, 0.3)
    assert latency < 0.3, latency
    slow.seconds = 0.0
    again = detect(CancelToken())  # (waits for the abandoned run: one at a time)
    assert [T._box(q) for q in again] == [T._box(q) for q in reference]
    assert slow.most == 1
    assert _no_worker_left() and not T._OCR_SLOT.locked()


def test_cancelled_ocr_runs_never_pile_up(slow_ocr):
    """Three jobs cancelled one after the other while their detection runs: at most one run is
    ever in progress, and every worker ends."""
    import engine.restore.text as T

    ocr, slow = slow_ocr
    page = T.to_u8_bgr(_page())
    for _ in range(3):
        token = CancelToken()
        ctx = _ctx(token)

        def job(ctx=ctx):
            with T._cancellable(ocr, ctx):
                ocr.detect(page)

        assert _latency(job, token, 0.5) < 0.3
    slow.release.set()  # (the last abandoned run ends now, not ~1 s later)
    assert _no_worker_left()
    assert slow.most == 1


# --------------------------------------------------------------------------- other steps
def test_a_cancel_inside_a_non_local_means_tile_is_honoured_at_once(monkeypatch, release):
    """denoise_builtin looked at the cancel between its tiles only: one 608-px tile of OpenCV's
    NLM took up to 1.7 s on a busy machine (12 MP photo, 25 s run: max gap 1.67 s)."""
    from engine.restore import classical

    real = classical.nlm_denoise

    def slow(*a, **kw):
        release.wait(1.5)  # (as a tile on a busy machine: no cancel reaches inside OpenCV)
        return real(*a, **kw)

    monkeypatch.setattr(classical, "nlm_denoise", slow)
    token = CancelToken()
    ctx = _ctx(token)
    img = np.random.default_rng(0).random((300, 300, 3)).astype(np.float32)
    step = get_step("denoise_builtin")
    latency = _latency(lambda: step.fn(img, {"sigma": 10.0}, ctx), token, 0.3)
    assert latency < 0.3, latency
    release.set()  # (the abandoned tile ends now, not 1.2 s later)
    assert _no_worker_left() and not classical._NLM_SLOT.locked()


def test_builtin_deconvolution_looks_at_the_cancel_between_its_ffts(shared_images):
    """deblur_builtin looked at the cancel once per colour channel: 2.5-3 s apart on a 12 MP
    photo (and 1.3 s in the noise estimate before). Its result is unchanged, with any FFT
    thread count."""
    from engine.restore import deblur

    img = _read(shared_images, "motion_blur/SRN-Deblur__testing_set__07.png", (2000, 1500))
    token = Recording()
    ctx = _ctx(token)
    step = get_step("deblur_builtin")
    out = step.fn(img, {"length": 15.0, "angle": 0.0}, ctx).image
    assert len(token.times) > 25, len(token.times)  # (it was 5)
    psf = deblur.motion_psf(15.0, 0.0)
    one = deblur.wiener_deconvolve(img, psf, 0.01, grad_weight=0.02)
    assert np.array_equal(one, deblur.wiener_deconvolve(img, psf, 0.01, grad_weight=0.02,
                                                        workers=2))
    assert out.shape == img.shape and np.isfinite(out).all()


def test_the_glare_detector_and_the_noise_estimate_look_at_the_cancel(shared_images):
    from engine.restore import reflection as R
    from engine.restore.classical import estimate_noise_sigma

    img = _read(shared_images, PHARAOH, (1500, 2250))
    token = Recording()
    mask = R.detect_glare(img, check=token.check)
    assert len(token.times) >= 6 and np.array_equal(mask, R.detect_glare(img))
    token = Recording()
    assert estimate_noise_sigma(img, token.check) == estimate_noise_sigma(img)
    assert len(token.times) >= 6
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        R.detect_glare(img, check=token.check)


def _glare_photo(h: int, w: int) -> np.ndarray:
    """A textured photo with one soft glare blob (the glare detector finds it)."""
    rng = np.random.default_rng(0)
    small = cv2.GaussianBlur(rng.random((h // 8, w // 8, 3)).astype(np.float32), (0, 0), 2)
    base = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    base = 0.15 + 0.45 * (base - base.min()) / (base.max() - base.min())
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((yy - h / 2) ** 2 + (xx - w / 3) ** 2) / (2 * (h / 16) ** 2)))
    return np.clip(base + 1.2 * blob[..., None], 0, 1).astype(np.float32)


@pytest.fixture
def slow_resize(monkeypatch, release):
    """``slow_resize(when)``: cv2.resize takes 1 s more (or until ``release`` is set:
    tests/conftest.py) for the calls ``when(image, dsize, interpolation)`` picks (no cancel
    reaches inside an OpenCV call); returns the event set when such a call starts and a
    switch (``[True]``) that turns the delay off."""
    real = cv2.resize

    def install(when):
        started, slow = threading.Event(), [True]

        def resize(image, dsize, *a, **kw):
            interp = kw.get("interpolation", a[2] if len(a) > 2 else None)
            if slow[0] and when(image, dsize, interp):
                started.set()
                release.wait(1.0)
            return real(image, dsize, *a, **kw)

        monkeypatch.setattr(cv2, "resize", resize)
        return started, slow

    return install


def _cancel_latency(fn, started: threading.Event) -> float:
    """Seconds from a cancel 0.05 s into the slowed call ``started`` says began, to
    ``fn(token)``'s Cancelled."""
    token = CancelToken()
    at: list[float] = []
    th = _cancel_after(token, 0.05, at, started)
    try:
        with pytest.raises(Cancelled):
            fn(token)
        return time.perf_counter() - at[0]
    finally:
        th.join()


def test_a_cancel_while_the_glare_mask_is_brought_to_full_size_stops_at_once(slow_resize,
                                                                             monkeypatch,
                                                                             release):
    """The glare detector's last stage, its mask brought back from its 1024-px view to the
    whole photo (0.05-0.16 s at 120 MP, more on a busy machine), was one call no cancel could
    stop: made to take 1 s here, the detector stopped 0.95 s after the cancel. Now it is
    abandoned at once and ends in its own slot; the mask is that of one whole resize of the
    view's mask, as before."""
    from engine.restore import reflection as R

    h, w = 1200, 1600
    img = _glare_photo(h, w)
    view = (round(h * R.DETECT_SIDE / w), R.DETECT_SIDE)
    started, slow = slow_resize(lambda image, dsize, interp: image.dtype == np.uint8
                                and image.shape[:2] == view and tuple(dsize) == (w, h))
    latency = _cancel_latency(lambda token: R.detect_glare(img, check=token.check), started)
    assert started.is_set() and latency < 0.3, latency
    release.set()  # (the abandoned resize ends now, not ~0.95 s later)
    assert _no_worker_left() and not R._REDUCE_SLOT.locked()
    slow[0] = False
    seen: list[np.ndarray] = []  # (the view's mask, its last stage before the resize)
    real_cap = R._cap_area

    def cap(mask, strength, max_area):
        seen.append(real_cap(mask, strength, max_area))
        return seen[-1]

    monkeypatch.setattr(R, "_cap_area", cap)
    mask = R.detect_glare(img, check=CancelToken().check)
    assert len(seen) == 1 and seen[0].shape == view and seen[0].any()
    # (the formula of before: one resize of the whole mask, then > 127)
    before = (cv2.resize(seen[0], (w, h), interpolation=cv2.INTER_LINEAR) > 127) * 255
    assert mask.dtype == np.uint8 and np.array_equal(mask, before.astype(np.uint8))
    assert np.array_equal(mask, R.detect_glare(img))  # (no check: in this thread)


@pytest.fixture(scope="module")
def sam_runtime(tmp_path_factory):
    from tests.model_helpers import install_test_model, make_runtime
    from tests.tiny_models import write_sam

    d = tmp_path_factory.mktemp("sam")
    return make_runtime(install_test_model(d / "store", "sam-vit-base", write_sam(d / "sam")))


@pytest.mark.parametrize("resize", ["view", "mask"])
def test_a_cancel_during_sams_resizes_stops_the_mask_step_at_once(slow_resize, sam_runtime,
                                                                   release, resize):
    """SAM looks at a photo larger than 2048 px at that size, and its masks are brought back
    to the photo's: whole-photo resizes (0.4 s and 0.08-0.5 s per mask at 120 MP) with no
    cancel looked at, nor between the boxes (SAM was given no ``check``). Made to take 1 s
    here, the mask step stopped 0.95-1.04 s after the cancel, at its next progress update; now
    at once, the resize abandoned in its slot."""
    from engine.restore import reflection as R

    h, w = 1000, 2400
    img = _glare_photo(h, w)
    sam_view = (round(h * 2048 / w), 2048)
    if resize == "view":
        def when(image, dsize, interp):
            return image.dtype == np.float32 and image.shape[:2] == (h, w) and \
                tuple(dsize) == sam_view[::-1]
    else:
        def when(image, dsize, interp):
            return image.dtype == np.uint8 and image.shape[:2] == sam_view and \
                tuple(dsize) == (w, h) and interp == cv2.INTER_NEAREST
    started, slow = slow_resize(when)

    def step(token):
        ctx = _ctx(token)
        ctx.runtime = sam_runtime
        return get_step("reflection_mask").fn(img, {"detector": "sam"}, ctx)

    latency = _cancel_latency(step, started)
    assert started.is_set() and latency < 0.3, latency
    release.set()  # (the abandoned resize ends now, not ~0.95 s later)
    assert _no_worker_left() and not R._REDUCE_SLOT.locked()
    slow[0] = False
    out = step(CancelToken())
    assert out.model == "builtin:glare+sam-vit-base"


def test_sams_masks_at_full_size_are_as_before(sam_runtime):
    """The union of SAM's masks, each brought to the photo's size and clipped to its box, and
    the best click-select mask: the same pixels as the whole-photo formulas of before."""
    import math

    from engine.restore import reflection as R

    h, w = 1000, 2400
    img = _glare_photo(h, w)
    boxes = [(700.0, 350.5, 1000.0, 640.0), (0, 0, 2400, 1000), (2300.2, 10.0, 2400.0, 90.7)]
    token = Recording()
    got = R.sam_mask_from_boxes(img, boxes, sam_runtime, check=token.check)
    assert len(token.times) >= len(boxes)
    masks, _ = R._sam_run(img, sam_runtime, boxes=boxes)
    assert masks.shape[-2:] == (round(h * 2048 / w), 2048)
    before = np.zeros((h, w), np.uint8)
    for (x0, y0, x1, y1), mk in zip(boxes, masks):
        full = cv2.resize(mk[0].astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        clip = np.zeros((h, w), bool)
        clip[max(0, int(y0)):math.ceil(y1), max(0, int(x0)):math.ceil(x1)] = True
        before[full & clip] = 255
    assert before.any() and np.array_equal(got, before)
    points = [(850.0, 500.0)]
    got = R.sam_mask_from_points(img, points, [1], sam_runtime, check=CancelToken().check)
    masks, scores = R._sam_run(img, sam_runtime, points=points, labels=[1], multimask=True)
    best = masks[0, int(np.argmax(scores[0]))]
    before = (cv2.resize(best.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0)
    assert got.dtype == np.uint8 and np.array_equal(got, (before * 255).astype(np.uint8))


@pytest.mark.parametrize("prompt", ["points", "boxes"])
def test_a_cancel_during_sams_forward_pass_stops_it_at_once(sam_runtime, monkeypatch, release,
                                                            prompt):
    """SAM's forward pass was one model call in the job's thread with no cancel looked at:
    sam-vit-base at its real size took 18-23 s on one thread, so a cancelled click-to-select
    or mask step ran to its end. Now it runs in a worker a cancel abandons at once, which
    stops before its next layer (here one layer is made to take 0.6 s: the mask decoder after
    it never runs)."""
    from engine.restore import reflection as R

    model, _ = R.load_sam(sam_runtime)
    layer, decoder = model.vision_encoder.layers[0], model.mask_decoder
    started, decoded = threading.Event(), []
    real_layer, real_decoder = layer.forward, decoder.forward

    def slow_layer(*a, **k):
        started.set()
        release.wait(0.6)
        return real_layer(*a, **k)

    monkeypatch.setattr(layer, "forward", slow_layer)
    monkeypatch.setattr(decoder, "forward",
                        lambda *a, **k: decoded.append(1) or real_decoder(*a, **k))
    img = _glare_photo(96, 128)

    def select(token):
        if prompt == "points":
            return R.sam_mask_from_points(img, [(40.0, 50.0)], [1], sam_runtime,
                                          check=token.check)
        return R.sam_mask_from_boxes(img, [(20.0, 30.0, 70.0, 80.0)], sam_runtime,
                                     check=token.check)

    latency = _cancel_latency(select, started)
    assert started.is_set() and latency < 0.3, latency
    release.set()  # (the long layer ends now, not ~0.55 s later)
    assert _no_worker_left() and not R._SAM_SLOT.locked()
    assert not decoded  # (the abandoned pass stopped at its next layer)
    monkeypatch.setattr(layer, "forward", real_layer)
    got = select(CancelToken())  # (the same masks as without a check: in this thread)
    want = (R.sam_mask_from_points(img, [(40.0, 50.0)], [1], sam_runtime) if prompt == "points"
            else R.sam_mask_from_boxes(img, [(20.0, 30.0, 70.0, 80.0)], sam_runtime))
    assert decoded and np.array_equal(got, want)


def test_a_cancel_while_click_to_select_loads_sam_is_honoured_at_once(tmp_path, monkeypatch,
                                                                      release):
    """The mask editor's click-to-select calls SAM outside a step (no ``runtime.cancellable``
    around it): its model's loading (seconds for the real 375 MB model) could not be
    cancelled. Here the load is made to take 1 s."""
    from transformers import SamModel

    from engine.restore import reflection as R
    from tests.model_helpers import install_test_model, make_runtime
    from tests.tiny_models import write_sam

    rt = make_runtime(install_test_model(tmp_path / "store", "sam-vit-base",
                                         write_sam(tmp_path / "sam")))
    started = threading.Event()
    real = SamModel.from_pretrained.__func__

    def slow_load(cls, *a, **k):
        started.set()
        release.wait(1.0)
        return real(cls, *a, **k)

    monkeypatch.setattr(SamModel, "from_pretrained", classmethod(slow_load))
    img = _glare_photo(96, 128)
    latency = _cancel_latency(
        lambda token: R.sam_mask_from_points(img, [(40.0, 50.0)], [1], rt, check=token.check),
        started)
    assert started.is_set() and latency < 0.3, latency
    release.set()  # (the abandoned load goes on now, not ~0.95 s later)
    assert _no_worker_left()  # (the abandoned load ended; its model is cached)
    assert R.sam_mask_from_points(img, [(40.0, 50.0)], [1], rt).shape == img.shape[:2]


@pytest.mark.parametrize("step, params", [("denoise_builtin", {}),
                                          ("denoise_builtin", {"sigma": 12.0}),
                                          ("deblur_builtin", {"length": 9.0, "angle": 0.0})],
                         ids=["denoise-sigma", "denoise-colour", "deblur-sigma"])
def test_a_cancel_while_a_previews_step_looks_at_the_whole_photo_stops_it_at_once(step,
                                                                                   params):
    """A preview's built-in denoising (the noise level, or how noisy the colour is, measured
    on the whole photo) and deblurring (the noise level) made their whole-photo view without
    the job's cancel check: for a transparent 120-megapixel photo that view is its fill
    (12-20 s) and a banded copy (3.3 s), which ran to their end. Here each of the view's
    bands takes 0.05 s (1 s in all)."""
    from engine.restore.registry import WholePhoto

    started = threading.Event()

    class SlowWhole(WholePhoto):
        def view(self, image, check=None):
            for _ in range(20):
                started.set()
                time.sleep(0.05)
                if check is not None:
                    check()
            return super().view(image, check)

    px = _glare_photo(128, 128)
    whole = SlowWhole(px, None, (32, 32, 96, 96))
    part = np.ascontiguousarray(px[32:96, 32:96])
    latency = _cancel_latency(lambda token: get_step(step).fn(part, params,
                                                              _ctx(token, whole=whole)),
                              started)
    assert started.is_set() and latency < 0.3, latency


# --------------------------------------------------------------------------- NAFNet tile
class _NoModels:
    def load_image_model(self, model_id):
        raise LookupError(f"would load {model_id}")


@pytest.mark.parametrize("step", ["deblur_nafnet", "dereflect_nafnet"])
@pytest.mark.parametrize("tile", [0, 1, 63, 8193, 10 ** 9, -512, 300.5, "big", True, [512]])
def test_nafnet_steps_refuse_a_tile_out_of_the_engines_bounds(step, tile):
    """A plan the user edited may say anything: a 1-px tile meant a model call per pixel (a
    12 MP photo would never end), a huge one a photo-sized model call; the engine's own tile
    size is checked (--tile 64-8192) but a step's ``tile`` param was taken as it came."""
    ctx = _ctx(CancelToken())
    ctx.runtime = _NoModels()
    img = np.zeros((32, 32, 3), np.float32)
    with pytest.raises(UsageError, match=rf"step {step}: tile must be a whole number of px "
                                         r"between 64 and 8192") as e:
        get_step(step).fn(img, {"tile": tile}, ctx)
    assert repr(tile) in str(e.value)


@pytest.mark.parametrize("step", ["deblur_nafnet", "dereflect_nafnet"])
@pytest.mark.parametrize("tile", [None, 64, 8192, 512.0, "256"])
def test_nafnet_steps_take_a_tile_within_the_bounds(step, tile):
    ctx = _ctx(CancelToken())
    ctx.runtime = _NoModels()
    with pytest.raises(LookupError, match="would load"):  # past the check, to the model
        get_step(step).fn(np.zeros((32, 32, 3), np.float32), {"tile": tile}, ctx)
