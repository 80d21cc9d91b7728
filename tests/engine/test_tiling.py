from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch

from engine.devices import select_device
from engine.errors import Cancelled, OutOfMemory
from engine.progress import CancelToken, Progress
from engine.tiling import balanced_tile, run_model_tiled, run_tiled, tile_starts, torch_fn

torch.set_num_threads(1)


def _rng_image(h, w, c=3, seed=0):
    return np.random.default_rng(seed).random((h, w, c), dtype=np.float32)


class _ConvSR(torch.nn.Module):
    """A small random conv net with a finite receptive field, x1/x2/x4 (pixel shuffle)."""

    def __init__(self, scale: int, channels: int = 3):
        super().__init__()
        torch.manual_seed(scale)
        self.scale = scale
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 8, 3, padding=1), torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(8, channels * scale * scale, 3, padding=1),
        )
        self.up = torch.nn.PixelShuffle(scale) if scale > 1 else torch.nn.Identity()

    def forward(self, x):
        return torch.sigmoid(self.up(self.body(x)))


CPU = select_device("cpu")


def test_tile_starts_cover_and_overlap():
    for length in (1, 63, 64, 65, 97, 300, 1031):
        for tile, ov in ((64, 16), (128, 32), (100, 0)):
            s = tile_starts(length, tile, ov)
            assert s[0] == 0
            assert min(length, s[-1] + tile) == length
            for a, b in itertools.pairwise(s):
                assert b > a and a + tile - b >= ov


@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize("size", [(97, 131), (64, 200), (150, 61)])
def test_tiled_equals_untiled(scale, size):
    model = _ConvSR(scale).eval()
    fn = torch_fn(model, CPU)
    img = _rng_image(*size, seed=scale)
    full = fn(img)
    tiled = run_tiled(img, fn, scale=scale, tile=48, overlap=16)
    assert tiled.shape == (size[0] * scale, size[1] * scale, 3)
    assert tiled.dtype == np.float32
    assert np.abs(tiled - full).max() < 2e-3
    # smaller overlap: still close, border effects only slightly mixed in
    tiled8 = run_tiled(img, fn, scale=scale, tile=40, overlap=8)
    assert np.abs(tiled8 - full).mean() < 2e-3


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_constant_image_has_no_seams(scale):
    img = np.full((123, 77, 3), 0.3, np.float32)

    def fn(t):
        h, w = t.shape[:2]
        up = cv2.resize(t, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)
        return up * 0.5 + 0.1

    out = run_tiled(img, fn, scale=scale, tile=32, overlap=12)
    assert out.shape == (123 * scale, 77 * scale, 3)
    assert np.abs(out - 0.25).max() < 1e-5


def test_single_channel_and_2d():
    model = _ConvSR(2, channels=1).eval()
    fn = torch_fn(model, CPU)
    img = _rng_image(70, 90, 1)
    full = fn(img)
    out = run_tiled(img, fn, scale=2, tile=32, overlap=12)
    assert out.shape == (140, 180, 1)
    assert np.abs(out - full).max() < 2e-3
    out2 = run_tiled(img[..., 0], fn, scale=2, tile=32, overlap=12)
    assert out2.shape == (140, 180)
    np.testing.assert_allclose(out2, out[..., 0], atol=1e-6)


@pytest.mark.parametrize("multiple", [8, 16])
def test_pad_multiple(multiple):
    seen = []

    def fn(t):
        assert t.shape[0] % multiple == 0 and t.shape[1] % multiple == 0, t.shape
        seen.append(t.shape[:2])
        return np.repeat(np.repeat(t * 0.9, 2, axis=0), 2, axis=1)

    img = _rng_image(53, 101)
    out = run_tiled(img, fn, scale=2, tile=40, overlap=8, pad_multiple=multiple)
    assert out.shape == (106, 202, 3)
    ref = np.repeat(np.repeat(img * 0.9, 2, axis=0), 2, axis=1)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # an image smaller than one tile is padded too, then cropped
    small = _rng_image(13, 21)
    out = run_tiled(small, fn, scale=2, tile=64, pad_multiple=multiple)
    assert out.shape == (26, 42, 3)
    assert len(seen) > 2


@pytest.mark.parametrize("exc_type", [MemoryError, torch.cuda.OutOfMemoryError])
def test_oom_halves_tile_and_succeeds(exc_type):
    sizes = []

    def fn(t):
        sizes.append(max(t.shape[:2]))
        if max(t.shape[:2]) > 64:
            raise exc_type("simulated out of memory")
        return t * 2.0

    img = _rng_image(150, 200)
    out = run_tiled(img, fn, tile=256, overlap=16, device=CPU, min_tile=32)
    np.testing.assert_allclose(out, img * 2.0, atol=1e-5)
    assert sizes[0] == 200  # first try: whole image (150x200 tile) fails
    assert max(sizes[-1:]) <= 64 and any(s <= 64 for s in sizes)


def test_a_failed_cpu_allocation_is_out_of_memory_too():
    """torch's CPU allocator raises a plain RuntimeError; it used to end the run with the
    allocator's text instead of halving the tile (the laptop profile runs on the CPU)."""
    sizes = []

    def fn(t):
        sizes.append(max(t.shape[:2]))
        if max(t.shape[:2]) > 64:
            torch.empty(2 ** 60, dtype=torch.uint8)  # no machine has this: a real failure
        return t * 2.0

    img = _rng_image(150, 200)
    out = run_tiled(img, fn, tile=256, overlap=16, device=CPU, min_tile=32)
    np.testing.assert_allclose(out, img * 2.0, atol=1e-5)
    assert sizes[0] == 200 and sizes[-1] <= 64


def test_cancel_inside_one_model_call():
    """With torch_fn(check=...), a cancel is honoured between the layers of one forward pass
    (a 512-px NAFNet tile takes ~10 s on a CPU core), and the hooks are gone afterwards."""
    layers = []

    class Slow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(*[torch.nn.Conv2d(3, 3, 1) for _ in range(6)])

        def forward(self, x):
            return self.body(x)

    model = Slow().eval()
    token = CancelToken()
    def seen(conv, _inp, _out):
        layers.append(list(model.body).index(conv))
        if layers[-1] == 2:
            token.cancel()

    for conv in model.body:
        conv.register_forward_hook(seen)
    fn = torch_fn(model, CPU, torch.float32, check=Progress(token=token).check)
    with pytest.raises(Cancelled):
        run_tiled(_rng_image(40, 40), fn, tile=64, progress=None)
    assert layers == [0, 1, 2]  # stopped before layer 3 of the first (only) tile
    from torch.nn.modules import module as torch_module

    assert not torch_module._global_forward_pre_hooks  # the hook is gone
    token2 = CancelToken()  # a later job with the same (cached) model is not cancelled
    out = run_tiled(_rng_image(40, 40), torch_fn(model, CPU, torch.float32,
                                                 check=Progress(token=token2).check), tile=64)
    assert out.shape == (40, 40, 3)


def test_oom_below_min_tile_raises():
    calls = []

    def fn(t):
        calls.append(t.shape)
        raise MemoryError("always")

    with pytest.raises(OutOfMemory, match="memory"):
        run_tiled(_rng_image(100, 100), fn, tile=128, min_tile=32)
    assert len(calls) == 2  # tiles of 100, then 50; 25 < 32: gives up


def test_other_errors_propagate():
    def fn(t):
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        run_tiled(_rng_image(20, 20), fn, tile=8)


def test_progress_per_tile_and_cancel_within_one_tile():
    reports = []
    progress = Progress(lambda f, m: reports.append((f, m)))
    img = _rng_image(100, 100)
    run_tiled(img, lambda t: t, tile=40, overlap=8, progress=progress)
    n_tiles = len(tile_starts(100, 40, 8)) ** 2
    assert len(reports) == n_tiles
    assert reports[-1][0] == pytest.approx(1.0)
    assert [f for f, _ in reports] == sorted(f for f, _ in reports)

    token = CancelToken()
    calls = []

    def fn(t):
        calls.append(1)
        if len(calls) == 2:
            token.cancel()
        return t

    with pytest.raises(Cancelled):
        run_tiled(img, fn, tile=40, overlap=8, progress=Progress(token=token))
    assert len(calls) == 2


def test_only_tiles_reach_the_model():
    shapes = []

    class Rec(torch.nn.Module):
        def forward(self, x):
            shapes.append(tuple(x.shape))
            return x

    img = _rng_image(300, 260)
    out = run_tiled(img, torch_fn(Rec(), CPU), tile=64, overlap=16)
    np.testing.assert_allclose(out, img, atol=1e-6)
    assert shapes and all(s[2] <= 64 and s[3] <= 64 for s in shapes)


def test_run_model_tiled_reads_spandrel_descriptor():
    from spandrel import ImageModelDescriptor, ModelLoader
    from spandrel.architectures.Compact import Compact as SRVGGNetCompact

    torch.manual_seed(0)
    net = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    desc = ModelLoader().load_from_state_dict(net.state_dict())
    assert isinstance(desc, ImageModelDescriptor) and desc.scale == 2
    desc.eval()
    img = _rng_image(45, 70)
    full = torch_fn(desc, CPU)(img)
    out = run_model_tiled(img, desc, CPU, tile=32, overlap=12)
    assert out.shape == (90, 140, 3)
    assert np.abs(out - full).max() < 2e-3


def test_balanced_tile_same_count_fewer_pixels():
    for length in (1, 63, 64, 65, 97, 160, 200, 300, 1031, 4000, 6000):
        for tile, ov, mult in ((64, 16, 1), (144, 16, 1), (512, 16, 1), (128, 32, 8), (100, 0, 1)):
            s = balanced_tile(length, tile, ov, mult)
            assert s <= max(tile, 1) and (s == length or s % mult == 0)
            starts = tile_starts(length, s, ov)
            assert len(starts) <= len(tile_starts(length, tile, ov))
            assert starts[0] == 0 and min(length, starts[-1] + s) == length
            for a, b in itertools.pairwise(starts):
                assert a + s - b >= ov
    # the example of the docstring, and a 24 MP photo in 512 px tiles
    assert balanced_tile(200, 144, 16) == 108
    assert (balanced_tile(6000, 512, 16), balanced_tile(4000, 512, 16)) == (477, 459)


@pytest.mark.parametrize("scale", [1, 4])
def test_balanced_tiling_matches_untiled_and_has_no_seams(scale):
    model = _ConvSR(scale).eval()
    fn = torch_fn(model, CPU)
    img = _rng_image(97, 131, seed=5)
    shapes = []

    def rec(t):
        shapes.append(t.shape[:2])
        return fn(t)

    tiled = run_tiled(img, rec, scale=scale, tile=48, overlap=16, balance=True)
    assert np.abs(tiled - fn(img)).max() < 2e-3
    n_plain = len(tile_starts(97, 48, 16)) * len(tile_starts(131, 48, 16))
    assert len(shapes) == n_plain  # as many model calls ...
    assert sum(h * w for h, w in shapes) < n_plain * 48 * 48  # ... on fewer pixels
    const = run_tiled(np.full((123, 77, 3), 0.3, np.float32), lambda t: t * 0.5 + 0.1,
                      tile=32, overlap=12, balance=True)
    assert np.abs(const - 0.25).max() < 1e-5
