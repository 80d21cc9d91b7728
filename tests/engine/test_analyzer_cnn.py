"""The analyzer's patch CNN: numpy inference equals the torch network it was exported from,
and the synthetic training patches carry the degradation they are labelled with."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.understand import measure as M

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def train_mod(train_script):
    return train_script


@pytest.mark.parametrize("tail", [0, 2])
def test_numpy_inference_matches_torch(train_mod, tmp_path, tail):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = train_mod.build_model(8, tail)
    # non-trivial BatchNorm statistics, so folding them into the convs is really tested
    with torch.no_grad():
        for m in model:
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    model.eval()
    path = tmp_path / "cnn.npz"
    train_mod.export(model, path, {"patch": 64, "classes": list("ABCD")})
    x = np.random.default_rng(0).random((3, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2) - 0.5).numpy()
    net = M.PatchCNN(path)
    np.testing.assert_allclose(net.logits(x), ref, rtol=1e-4, atol=1e-4)
    f = M.cnn_features(np.random.default_rng(1).random((100, 150, 3)).astype(np.float32),
                       str(path))
    assert set(f) == {"cnn_A", "cnn_B", "cnn_C", "cnn_D"}
    assert abs(sum(np.exp(v) for v in f.values()) - 1.0) < 0.5  # mean log-probs


def test_patches_of_tiny_and_large_views():
    tiny = np.random.default_rng(0).random((12, 40, 3)).astype(np.float32)
    p = M.cnn_patches(tiny)
    assert p.shape[1:] == (64, 64, 3) and len(p) >= 1
    flat = np.full((300, 400, 3), 0.5, np.float32)
    flat[100:140, 100:300] = np.random.default_rng(1).random((40, 200, 3))
    p = M.cnn_patches(flat)
    assert 3 <= len(p) <= 25


def test_training_patches_by_class(train_mod):
    rng = np.random.default_rng(3)
    photo = np.asarray(np.random.default_rng(4).random((256, 256, 3)) ** 2, np.float32)
    import cv2

    photo = cv2.GaussianBlur(photo, (0, 0), 1.0)
    pool = train_mod.Pool([photo], rng, n_text=3, n_leaves=3)
    for label in "ABCD":
        for _ in range(4):
            p = train_mod.make_patch(label, pool, rng)
            assert p.shape == (64, 64, 3) and p.dtype == np.uint8
    # motion blur really smears: a C patch from a sharp checkerboard has less gradient energy
    board = np.kron((np.indices((16, 16)).sum(0) % 2), np.ones((16, 16)))[..., None]
    board = np.repeat(board, 3, axis=2).astype(np.float32)
    c = train_mod.make_C(board, np.random.default_rng(5))
    d = train_mod.make_D(board, np.random.default_rng(5))
    assert np.abs(np.diff(c, axis=1)).mean() < np.abs(np.diff(d, axis=1)).mean()


def test_ensemble_file_averages_its_members(train_mod, tmp_path):
    """--merge packs several trained networks into one file; PatchCNN averages the members'
    log-probabilities, and each member still equals the network it came from."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    paths, models = [], []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        model = train_mod.build_model(8).eval()
        p = tmp_path / f"m{seed}.npz"
        train_mod.export(model, p, {"patch": 64, "classes": list("ABCD"), "seed": seed})
        paths.append(p)
        models.append(model)
    merged = tmp_path / "ensemble.npz"
    assert train_mod.main(["--merge", *map(str, paths), "--out", str(merged)]) == 0
    x = np.random.default_rng(0).random((4, 64, 64, 3)).astype(np.float32)
    net = M.PatchCNN(merged)
    assert len(net.members) == 3 and [m["seed"] for m in net.meta["members"]] == [0, 1, 2]
    singles = []
    for k, model in enumerate(models):
        with torch.no_grad():
            ref = model(torch.from_numpy(x).permute(0, 3, 1, 2) - 0.5).numpy()
        np.testing.assert_allclose(net.logits(x, k), ref, rtol=1e-4, atol=1e-4)
        singles.append(M.PatchCNN(paths[k]).log_probs(x))
    np.testing.assert_allclose(net.log_probs(x), np.mean(singles, axis=0), rtol=1e-6, atol=1e-6)
    # a single-network file is a one-member ensemble: log_probs is its log-softmax
    one = M.PatchCNN(paths[0])
    lg = one.logits(x).astype(np.float64)
    ls = lg - lg.max(1, keepdims=True)
    ls -= np.log(np.exp(ls).sum(1, keepdims=True))
    np.testing.assert_allclose(one.log_probs(x), ls, rtol=1e-9, atol=1e-9)
    with pytest.raises(SystemExit, match="already an ensemble"):
        train_mod.merge([merged], tmp_path / "again.npz")


def test_frame_averaged_kernels_are_separate_points_on_the_same_path():
    """``frames=n``: n sharp frames averaged (GoPro-style blur), not one continuous exposure."""
    from scipy import ndimage

    from engine.understand import synthetic as S

    k = S.motion_kernel(21, 0.0, frames=5)
    assert abs(float(k.sum()) - 1.0) < 1e-5
    _lab, blobs = ndimage.label(k > 1e-6)
    assert blobs == 5
    full = S.motion_kernel(21, 0.0)
    _lab, one = ndimage.label(full > 1e-6)
    assert one == 1 and k.shape == full.shape
    # the shake path is drawn from the same random numbers, so recipe 1 is reproducible and the
    # frames lie on the continuous path
    cont = S.shake_kernel(16, np.random.default_rng(2))
    pts = S.shake_kernel(16, np.random.default_rng(2), frames=7)
    assert pts.shape == cont.shape
    assert np.all(cont[pts > 1e-6] > 0)
    _lab, blobs = ndimage.label(pts > 1e-6)
    assert 2 <= blobs <= 7 and np.count_nonzero(pts) < np.count_nonzero(cont)


def test_recipe_2_patches_and_veil(train_mod, monkeypatch):
    rng = np.random.default_rng(3)
    board = np.kron((np.indices((8, 8)).sum(0) % 2), np.ones((8, 8)))[..., None]
    board = np.repeat(board, 3, axis=2).astype(np.float32)
    veiled = train_mod._veil(board, rng)
    # a veil lifts the blacks and lowers the contrast, and adds no structure of its own
    assert veiled.min() > board.min() and veiled.std() < board.std()
    assert np.corrcoef(veiled[..., 0].ravel(), board[..., 0].ravel())[0, 1] > 0.95
    monkeypatch.setattr(train_mod, "RECIPE", 2)
    pool = train_mod.Pool([board.repeat(4, 0).repeat(4, 1)], rng, n_text=2, n_leaves=2)
    for label in "ABCD":
        for _ in range(6):
            p = train_mod.make_patch(label, pool, rng)
            assert p.shape == (64, 64, 3) and p.dtype == np.uint8
