"""InvSR on public diffusers: tiny SD-Turbo-like pipeline + tiny noise predictor in the release
format, installed into a real store under the real ids, run end to end offline."""
from __future__ import annotations

import json
from pathlib import Path

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

torch.set_num_threads(1)

# group count (32) and attention head size (64) are not readable from tensor shapes, so the
# tiny predictor keeps the release values: 64 channels = one 64-wide head
TINY_NP = {"block_out_channels": (64, 64), "layers_per_block": (1, 1), "temb_channels": 64}


def _write_tiny_sd_turbo(root: Path) -> dict[str, Path]:
    """A tiny SD-Turbo-shaped pipeline (diffusers layout, save_pretrained): VAE with 4 levels
    (latent = 1/8), a 2-level UNet with cross-attention, a tiny CLIP text model + tokenizer."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=64,
    )
    vocab_dir = root / "_tok"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in letters + list(",.0123456789-"):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (vocab_dir / "vocab.json").write_text(json.dumps(vocab))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"),
                        model_max_length=16)
    te = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    ))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                   beta_schedule="scaled_linear", timestep_spacing="trailing",
                                   prediction_type="epsilon")
    # the layout StableDiffusionPipeline.save_pretrained writes (importing the pipeline
    # classes costs ~20 s here, so the components are saved one by one)
    out = root / "sd-turbo"
    for sub, comp in (("unet", unet), ("vae", vae), ("text_encoder", te), ("tokenizer", tok),
                      ("scheduler", sched)):
        comp.save_pretrained(out / sub)
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))
    return {p.relative_to(out).as_posix(): p for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def invsr_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("invsr")
    sd_files = _write_tiny_sd_turbo(root)
    torch.manual_seed(1)
    npred = build_noise_predictor(TINY_NP)
    # the release format: a plain state dict pickled with torch.save
    pth = root / "noise_predictor_sd_turbo_v5.pth"
    torch.save(npred.state_dict(), pth)
    store_root = root / "store"
    store = install_test_model(store_root, "sd-turbo", sd_files)
    store = install_test_model(store_root, "invsr-noise-predictor-v5",
                               {"noise_predictor_sd_turbo_v5.pth": pth}, store=store)
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
