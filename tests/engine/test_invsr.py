"""InvSR on public diffusers: tiny SD-Turbo-like pipeline + tiny noise predictor in the release
format, installed into a real store under the real ids, run end to end offline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.devices import select_device
from engine.errors import UsageError
from engine.progress import Progress
from engine.restore.invsr import (
    RELEASE_CONFIG,
    RELEASE_PARAMS,
    CheckpointMismatch,
    build_noise_predictor,
    config_from_state_dict,
    load_noise_predictor,
    normalise_state_dict,
)
from engine.restore.registry import StepContext, get_step
from tests.model_helpers import install_test_model, make_runtime
from tests.tiny_models import TINY_NP, write_invsr_noise_predictor, write_sd_turbo

torch.set_num_threads(1)

@pytest.fixture(scope="module")
def invsr_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("invsr")
    sd_files = write_sd_turbo(root)
    np_files = write_invsr_noise_predictor(root, seed=1)
    store_root = root / "store"
    store = install_test_model(store_root, "sd-turbo", sd_files)
    store = install_test_model(store_root, "invsr-noise-predictor-v5", np_files, store=store)
    return store


def _ctx(store, progress=None):
    return StepContext(device=select_device("cpu"), progress=progress or Progress(),
                       runtime=make_runtime(store))


@pytest.mark.parametrize("steps,scale", [(1, 4), (2, 1)])
def test_sr_invsr_end_to_end(invsr_store, steps, scale):
    rng = np.random.default_rng(0)
    img = rng.random((40, 56, 3), dtype=np.float32)
    reports = []
    ctx = _ctx(invsr_store, Progress(lambda f, m: reports.append(f)))
    out = get_step("sr_invsr").fn(img, {"scale": scale, "steps": steps}, ctx)
    assert out.model == "invsr-noise-predictor-v5"
    assert out.image.shape == (40 * scale, 56 * scale, 3)
    assert out.image.dtype == np.float32
    assert np.isfinite(out.image).all() and out.image.min() >= 0 and out.image.max() <= 1
    assert reports and reports[-1] == pytest.approx(1.0)
    # deterministic: same seed, same result
    again = get_step("sr_invsr").fn(img, {"scale": scale, "steps": steps}, ctx)
    np.testing.assert_allclose(again.image, out.image, atol=1e-5)


def test_sr_invsr_patches_at_stride_64(invsr_store, monkeypatch):
    """A photo larger than one 128-px patch is cut into 128-px LR patches at stride <= 64."""
    import torch.nn.functional as F

    from engine.restore import invsr

    seen = []

    def fake_patch(self, lr, *a, **k):  # the pipeline itself is run in the test above
        seen.append(tuple(lr.shape[-2:]))
        return F.interpolate(lr, scale_factor=4, mode="nearest")

    monkeypatch.setattr(invsr.InvSRPipeline, "sr_patch", fake_patch)
    img = np.random.default_rng(1).random((136, 200, 3), dtype=np.float32)
    out = get_step("sr_invsr").fn(img, {"scale": 1, "steps": 1}, _ctx(invsr_store))
    assert out.image.shape == (136, 200, 3)
    assert all(s == (128, 128) for s in seen)
    assert len(seen) == 2 * 3  # rows: 136 -> 2 patches; cols: 200 -> 3 patches (stride <= 64)
    # nearest x4 then area /4 is the identity: the blend of the patches keeps the photo
    np.testing.assert_allclose(out.image, img, atol=1e-5)


def test_the_seed_reaches_the_noise_draw_on_every_device(monkeypatch):
    """The CPU generator is passed on whatever the device (diffusers draws on it and moves the
    noise); it used to be dropped on CUDA/MPS, so every run there gave another result. No GPU
    here: the pipeline's device is faked, the noise draw itself is the CPU one."""
    import torch.nn.functional as F

    from engine.restore import invsr

    gens = []

    class FakePipe:
        device = torch.device("cuda")
        unet = vae = predictor = torch.nn.Identity()
        vae_sf, unet_sf = 8, 2

        def sr_patch(self, lr, timesteps, generator=None, check=None):
            gens.append(generator)
            noise = torch.randn(1, generator=generator)
            return F.interpolate(lr, scale_factor=4, mode="nearest") + 0 * noise

    img = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
    invsr.invsr_upscale(img, FakePipe(), scale=4, steps=1, device=None)
    assert gens and all(isinstance(g, torch.Generator) and g.device.type == "cpu" for g in gens)


def test_sr_invsr_bad_params(invsr_store):
    img = np.zeros((16, 16, 3), np.float32)
    with pytest.raises(UsageError):
        get_step("sr_invsr").fn(img, {"steps": 6}, _ctx(invsr_store))
    with pytest.raises(UsageError):
        get_step("sr_invsr").fn(img, {"scale": 3}, _ctx(invsr_store))


def test_release_config_parameter_count_and_keys():
    with torch.device("meta"):
        model = build_noise_predictor()
    n = sum(p.numel() for p in model.parameters())
    assert n == RELEASE_PARAMS  # 33.84 M
    sd = model.state_dict()
    assert len(sd) == 164
    # the released file is fp32: 4 bytes a parameter + ~67 KB of pickle for 164 tensors
    assert 0 < 135_417_810 - 4 * n < 100_000
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["encoder.conv_in.weight"] == (256, 3, 3, 3)
    assert shapes["encoder.time_embedding.linear_1.weight"] == (512, 256)
    assert shapes["encoder.down_blocks.0.resnets.2.conv2.weight"] == (256, 256, 3, 3)
    assert shapes["encoder.down_blocks.0.attentions.0.to_q.weight"] == (256, 256)
    assert shapes["encoder.down_blocks.0.downsamplers.0.conv.weight"] == (256, 256, 3, 3)
    assert shapes["encoder.down_blocks.1.resnets.0.conv_shortcut.weight"] == (512, 256, 1, 1)
    assert shapes["encoder.mid_block.attentions.0.to_out.0.weight"] == (512, 512)
    assert shapes["encoder.conv_out.weight"] == (8, 512, 3, 3)
    assert "encoder.down_blocks.1.downsamplers.0.conv.weight" not in shapes
    # hyper-parameters read back from the shapes
    cfg = config_from_state_dict(sd)
    for k in ("block_out_channels", "layers_per_block", "down_block_types", "temb_channels",
              "latent_channels", "in_channels", "mid_block_add_attention"):
        assert tuple(cfg[k]) == tuple(RELEASE_CONFIG[k]) if isinstance(cfg[k], tuple) else \
            cfg[k] == RELEASE_CONFIG[k]


def test_strict_loading_reports_mismatches(tmp_path):
    torch.manual_seed(0)
    model = build_noise_predictor(TINY_NP)
    sd = model.state_dict()
    # DDP / torch.compile prefixes and a {"state_dict": ...} wrapper are accepted
    wrapped = {"state_dict": {"module." + k: v for k, v in sd.items()}}
    assert set(normalise_state_dict(wrapped)) == set(sd)
    p = tmp_path / "np.pth"
    torch.save(wrapped, p)
    loaded = load_noise_predictor(p)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k])
    # a missing key and an extra one: a clear error naming them
    bad = dict(sd)
    bad.pop("encoder.conv_norm_out.weight")
    bad["encoder.something_else"] = torch.zeros(1)
    p2 = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in bad.items()}, str(p2))
    with pytest.raises(CheckpointMismatch, match="conv_norm_out.weight.*something_else|missing"):
        load_noise_predictor(p2)
    # not a noise predictor at all
    p3 = tmp_path / "other.pth"
    torch.save({"params": {"x": torch.zeros(1)}}, p3)
    with pytest.raises(CheckpointMismatch, match="not an InvSR"):
        load_noise_predictor(p3)


def test_variants_come_from_the_manifest_never_from_the_folder(tmp_path):
    from engine.models.manifest import default_manifest
    from engine.models.store import UnexpectedModelFiles
    from engine.restore.invsr import _variant, get_pipeline

    real = [f.name for f in default_manifest().get("sd-turbo").files]
    assert _variant(real, "unet") is None  # the release's plain UNet
    assert _variant(real, "vae") == "fp16"
    assert _variant(real, "text_encoder") == "fp16"
    # the release layout (fp16 VAE + text encoder), and an unlisted plain VAE dropped beside it
    sd_files = write_sd_turbo(tmp_path / "build", fp16_variants=True)
    store = install_test_model(tmp_path / "store", "sd-turbo", sd_files)
    store = install_test_model(tmp_path / "store", "invsr-noise-predictor-v5",
                               write_invsr_noise_predictor(tmp_path / "build", seed=1), store=store)
    vae = store.model_dir("sd-turbo") / "vae"
    planted = vae / "diffusion_pytorch_model.safetensors"
    planted.write_bytes((vae / "diffusion_pytorch_model.fp16.safetensors").read_bytes())
    with pytest.raises(UnexpectedModelFiles, match="vae/diffusion_pytorch_model.safetensors"):
        get_pipeline(_ctx(store))
    planted.unlink()
    pipe = get_pipeline(_ctx(store))
    assert pipe.vae is not None
