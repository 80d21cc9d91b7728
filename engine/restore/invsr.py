"""Class A, quality profile: InvSR one-step (1-5 steps) diffusion super-resolution.

InvSR (Yue, Liao, Loy, "Arbitrary-steps Image Super-resolution via Diffusion Inversion") starts
SD-Turbo's sampling part-way along the diffusion trajectory: a *noise predictor* looks at the
low-resolution patch and predicts the noise map that, added to the latent of the bicubically
upsampled patch at the first timestep, gives the best starting point ("partial noise
prediction"); SD-Turbo's UNet then denoises in 1-5 Euler steps and the VAE decodes.

Here it runs on public diffusers: the SD-Turbo folder (diffusers layout) comes from the model
store, and the noise predictor is rebuilt below as a diffusers ``ModelMixin`` from public blocks
(``get_down_block``, ``UNetMidBlock2D``, ``Timesteps``, ``TimestepEmbedding``) with module
names laid out like the released ``noise_predictor_sd_turbo_v5.pth`` (an ``encoder`` with
``time_proj``/``time_embedding``/``conv_in``/``down_blocks``/``mid_block``/``conv_norm_out``/
``conv_out``), loaded strictly, key for key. At the release configuration it has 33,837,576
parameters (the released fp32 file is 135,417,810 bytes = 4 x 33.84 M + pickle overhead).

The photo is processed in 128-px low-resolution patches at stride 64 (the official chopping),
blended with feathered weights by :func:`engine.tiling.run_tiled`; each patch is x4 and is brought
to the requested output scale (x1 restores at the same size, x2, x4) inside the patch, so the
photo is never held larger than the output.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EngineError, UsageError
from ..tiling import run_tiled
from .registry import StepContext, StepOutput, register_step

log = logging.getLogger(__name__)

NOISE_PREDICTOR_ID = "invsr-noise-predictor-v5"
SD_TURBO_ID = "sd-turbo"
CHECKPOINT_NAME = "noise_predictor_sd_turbo_v5.pth"
SF = 4  # InvSR is a x4 model
PATCH = 128  # low-resolution patch side (configs/sample-sd-turbo.yaml: chopping.pch_size)
STRIDE = 64  # half a patch, as the official sampler
POSITIVE_PROMPT = ("Cinematic, high-contrast, photo-realistic, 8k, ultra HD, meticulous detailing, "
                   "hyper sharpness, perfect without deformations")
# the official timesteps for 1..5 sampling steps (inference_invsr.py)
TIMESTEPS: dict[int, tuple[int, ...]] = {
    1: (200,),
    2: (200, 100),
    3: (200, 100, 50),
    4: (200, 150, 100, 50),
    5: (250, 200, 150, 100, 50),
}

# model_start.params of configs/sample-sd-turbo.yaml (the released v5 predictor)
RELEASE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "down_block_types": ("AttnDownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D"),
    "block_out_channels": (256, 512),
    "layers_per_block": (3, 3),
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 128,
    "mid_block_add_attention": True,
    "resnet_time_scale_shift": "default",
    "temb_channels": 512,
    "attention_head_dim": 64,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "double_z": True,
}
RELEASE_PARAMS = 33_837_576


class CheckpointMismatch(EngineError):
    """A checkpoint whose tensors do not match the architecture it is loaded into."""


# --------------------------------------------------------------------------- architecture
def _build_classes():
    """Define the torch/diffusers classes on first use (the engine imports torch lazily)."""
    import torch
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps
    from diffusers.models.modeling_utils import ModelMixin
    from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block
    from torch import nn

    class TimeConditionedEncoder(nn.Module):
        """A VAE-style encoder whose ResNet blocks also take a timestep embedding."""

        def __init__(self, *, in_channels, out_channels, down_block_types, block_out_channels,
                     layers_per_block, norm_num_groups, act_fn, double_z,
                     mid_block_add_attention, resnet_time_scale_shift, temb_channels,
                     freq_shift, flip_sin_to_cos, attention_head_dim):
            super().__init__()
            n = len(down_block_types)
            if isinstance(layers_per_block, int):
                layers_per_block = (layers_per_block,) * n
            time_dim = max(128, block_out_channels[0])
            self.time_proj = Timesteps(time_dim, flip_sin_to_cos, freq_shift)
            self.time_embedding = TimestepEmbedding(time_dim, temb_channels)
            self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
            self.down_blocks = nn.ModuleList()
            prev = block_out_channels[0]
            for i, kind in enumerate(down_block_types):
                cur = block_out_channels[i]
                self.down_blocks.append(get_down_block(
                    kind, num_layers=layers_per_block[i], in_channels=prev, out_channels=cur,
                    add_downsample=i < n - 1, resnet_eps=1e-6, downsample_padding=0,
                    resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                    attention_head_dim=attention_head_dim,
                    resnet_time_scale_shift=resnet_time_scale_shift, temb_channels=temb_channels,
                ))
                prev = cur
            self.mid_block = UNetMidBlock2D(
                in_channels=block_out_channels[-1], resnet_eps=1e-6, resnet_act_fn=act_fn,
                output_scale_factor=1, attention_head_dim=attention_head_dim,
                resnet_groups=norm_num_groups, add_attention=mid_block_add_attention,
                resnet_time_scale_shift=resnet_time_scale_shift, temb_channels=temb_channels,
            )
            self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6)
            self.conv_act = nn.SiLU()
            self.conv_out = nn.Conv2d(block_out_channels[-1],
                                      out_channels * (2 if double_z else 1), 3, padding=1)

        def forward(self, x, timesteps):
            if not torch.is_tensor(timesteps):
                timesteps = torch.tensor([timesteps], dtype=torch.long, device=x.device)
            timesteps = timesteps.reshape(-1).to(x.device).expand(x.shape[0])
            t = self.time_proj(timesteps).to(self.time_embedding.linear_1.weight.dtype)
            emb = self.time_embedding(t)
            h = self.conv_in(x)
            for block in self.down_blocks:
                h, _ = block(h, emb)
            h = self.mid_block(h, emb)
            return self.conv_out(self.conv_act(self.conv_norm_out(h)))

    class InvSRNoisePredictor(ModelMixin, ConfigMixin):
        """InvSR's start-step noise predictor: LR image + timestep -> Gaussian over the noise
        map in SD latent space (half the LR size = 1/8 of the x4 output, SD's latent size)."""

        @register_to_config
        def __init__(self, in_channels=3, down_block_types=("AttnDownBlock2D",) * 2,
                     up_block_types=("AttnUpBlock2D",) * 2, block_out_channels=(256, 512),
                     layers_per_block=(3, 3), act_fn="silu", latent_channels=4,
                     norm_num_groups=32, sample_size=128, mid_block_add_attention=True,
                     resnet_time_scale_shift="default", temb_channels=512,
                     attention_head_dim=64, freq_shift=0, flip_sin_to_cos=True, double_z=True):
            super().__init__()
            # up_block_types / sample_size are part of the released config but build nothing
            self.encoder = TimeConditionedEncoder(
                in_channels=in_channels, out_channels=latent_channels,
                down_block_types=tuple(down_block_types),
                block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                norm_num_groups=norm_num_groups, act_fn=act_fn, double_z=double_z,
                mid_block_add_attention=mid_block_add_attention,
                resnet_time_scale_shift=resnet_time_scale_shift, temb_channels=temb_channels,
                freq_shift=freq_shift, flip_sin_to_cos=flip_sin_to_cos,
                attention_head_dim=attention_head_dim,
            )

        def forward(self, sample, timesteps, sample_posterior=True, center_input_sample=True,
                    generator=None):
            """``sample``: LR image(s) in [0, 1]. Returns a noise tensor (``sample_posterior``:
            a draw, else the mean) or, without ``double_z``, the raw output."""
            if center_input_sample:
                sample = sample * 2.0 - 1.0
            h = self.encoder(sample, timesteps)
            if not self.config.double_z:
                return h
            posterior = DiagonalGaussianDistribution(h)
            return posterior.sample(generator=generator) if sample_posterior else posterior.mode()

    return InvSRNoisePredictor


_CLASSES: dict[str, Any] = {}


def noise_predictor_class():
    if "np" not in _CLASSES:
        _CLASSES["np"] = _build_classes()
    return _CLASSES["np"]


def build_noise_predictor(config: Mapping[str, Any] | None = None):
    """An InvSR noise predictor with random weights (the release config by default)."""
    cfg = dict(RELEASE_CONFIG)
    cfg.update(config or {})
    return noise_predictor_class()(**cfg)


# --------------------------------------------------------------------------- loading
def normalise_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Unwrap ``{"state_dict": ...}`` and drop DDP ``module.`` / torch.compile ``_orig_mod.``
    prefixes (both appear in InvSR training checkpoints)."""
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k.replace("._orig_mod.", ".")] = v
    return out


def config_from_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Read the shape-determined hyper-parameters from a predictor state dict (the rest —
    group count, attention head size, activation — are the release values)."""
    try:
        conv_in = sd["encoder.conv_in.weight"]
        conv_out = sd["encoder.conv_out.weight"]
        lin1 = sd["encoder.time_embedding.linear_1.weight"]
    except KeyError as e:
        raise CheckpointMismatch(
            f"not an InvSR noise predictor checkpoint (no {e.args[0]!r}; first keys: "
            f"{', '.join(list(sd)[:5])})") from None
    n_blocks = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.down_blocks."))
    channels, layers, types = [], [], []
    for i in range(n_blocks):
        pre = f"encoder.down_blocks.{i}."
        n_res = 1 + max(int(k[len(pre):].split(".")[1]) for k in sd
                        if k.startswith(pre + "resnets."))
        channels.append(int(sd[pre + "resnets.0.conv2.weight"].shape[0]))
        layers.append(n_res)
        types.append("AttnDownBlock2D" if any(k.startswith(pre + "attentions.") for k in sd)
                     else "DownBlock2D")
    cfg = dict(RELEASE_CONFIG)
    out_ch = int(conv_out.shape[0])
    cfg.update(
        in_channels=int(conv_in.shape[1]),
        block_out_channels=tuple(channels),
        layers_per_block=tuple(layers),
        down_block_types=tuple(types),
        up_block_types=tuple("AttnUpBlock2D" if t.startswith("Attn") else "UpBlock2D"
                             for t in types),
        temb_channels=int(lin1.shape[0]),
        latent_channels=out_ch // 2 if cfg["double_z"] else out_ch,
        mid_block_add_attention=any(k.startswith("encoder.mid_block.attentions.") for k in sd),
    )
    return cfg


def load_noise_predictor_weights(model, sd: Mapping[str, Any], name: str = CHECKPOINT_NAME):
    """Strict key-for-key, shape-for-shape load; a clear error lists every mismatch."""
    sd = normalise_state_dict(sd)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        def show(keys):
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {show(unexpected)}")
        if wrong:
            parts.append(f"{len(wrong)} with other shapes: " + show(
                [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in wrong]))
        raise CheckpointMismatch(f"{name} does not match the InvSR noise predictor: "
                                 + "; ".join(parts))
    model.load_state_dict(sd, strict=True)
    return model


def load_noise_predictor(path: str | Path, device: str = "cpu", dtype: Any = None):
    """Build the predictor for the checkpoint at ``path`` (safetensors or weights-only pickle)
    and load it strictly."""
    from ..models.loader import load_state_dict

    sd = normalise_state_dict(load_state_dict(path, "cpu"))
    model = build_noise_predictor(config_from_state_dict(sd))
    load_noise_predictor_weights(model, sd, Path(path).name)
    model.eval().requires_grad_(False)
    if dtype is not None:
        model.to(dtype)
    return model.to(device)


# --------------------------------------------------------------------------- SD-Turbo
def _variant(files: Iterable[str], sub: str) -> str | None:
    """The diffusers ``variant`` of sub-folder ``sub``, from the model's manifest file names
    (never from what the folder holds: a file dropped there must not change what is loaded):
    "fp16" when its weights are listed only as ``*.fp16.*``, else None (the plain files)."""
    names = [n[len(sub) + 1:] for n in files if n.startswith(sub + "/")]
    weights = [n for n in names if "/" not in n
               and n.startswith(("diffusion_pytorch_model.", "model."))
               and n.endswith((".safetensors", ".bin"))]
    plain = any(".fp16." not in n for n in weights)
    return None if plain or not weights else "fp16"


class InvSRPipeline:
    """SD-Turbo UNet + VAE + a cached prompt embedding + the InvSR noise predictor."""

    def __init__(self, sd_folder: Path, predictor_file: Path, device, dtype,
                 sd_files: Iterable[str]) -> None:
        """``sd_files``: the SD-Turbo folder's manifest file names (they decide the variants)."""
        import torch
        from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.device = torch.device(device)
        self.dtype = dtype
        kw = {"local_files_only": True, "torch_dtype": dtype}
        sd_files = list(sd_files)
        self.unet = UNet2DConditionModel.from_pretrained(
            sd_folder, subfolder="unet", variant=_variant(sd_files, "unet"), **kw
        ).to(self.device).eval().requires_grad_(False)
        self.vae = AutoencoderKL.from_pretrained(
            sd_folder, subfolder="vae", variant=_variant(sd_files, "vae"), **kw
        ).to(self.device).eval().requires_grad_(False)
        self.vae.enable_tiling()  # tiled VAE for patches above the VAE's tile size
        sched = EulerDiscreteScheduler.from_pretrained(sd_folder, subfolder="scheduler",
                                                       local_files_only=True)
        self.prediction_type = sched.config.prediction_type
        ac = sched.alphas_cumprod.double()
        self.sigmas = ((1 - ac) / ac).sqrt()  # sigma of each training timestep, ascending
        self.scaling = float(self.vae.config.scaling_factor)
        self.vae_sf = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet_sf = 2 ** (len(self.unet.config.block_out_channels) - 1)
        # the prompt never changes: encode it once and drop the text encoder
        tok = CLIPTokenizer.from_pretrained(sd_folder, subfolder="tokenizer", local_files_only=True)
        te = CLIPTextModel.from_pretrained(
            sd_folder, subfolder="text_encoder", variant=_variant(sd_files, "text_encoder"),
            **kw).eval()
        ids = tok([POSITIVE_PROMPT], padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids
        with torch.inference_mode():
            self.prompt_embeds = te(ids)[0].to(self.device, dtype)
        del te
        self.predictor = load_noise_predictor(predictor_file, str(self.device), dtype)

    def size_bytes(self) -> int:
        from ..models.loader import param_bytes

        return sum(param_bytes(m) for m in (self.unet, self.vae, self.predictor))

    def sr_patch(self, lr, timesteps, generator=None, check=None):
        """x4 one LR patch: (1, 3, h, w) in [0, 1] -> (1, 3, 4h, 4w) in [0, 1]."""
        import torch
        import torch.nn.functional as F

        h, w = lr.shape[-2:]
        lr = lr.to(self.device, self.dtype)
        up = F.interpolate(lr.float(), size=(h * SF, w * SF), mode="bicubic",
                           align_corners=False).clamp(0, 1).to(self.dtype)
        z0 = self.vae.encode(up * 2 - 1).latent_dist.mode() * self.scaling
        ts = [int(t) - 1 for t in timesteps]  # the official code indexes timestep t as t - 1
        sig = [float(self.sigmas[t]) for t in ts] + [0.0]
        noise = self.predictor(lr, torch.tensor(ts[:1], device=self.device),
                               sample_posterior=True, center_input_sample=True,
                               generator=generator)
        if noise.shape != z0.shape:
            raise CheckpointMismatch(
                f"the noise predictor gives {tuple(noise.shape)} for a latent of "
                f"{tuple(z0.shape)}: it does not fit this SD-Turbo VAE")
        x = z0 + sig[0] * noise  # partial noise: start at sigma(t_start), not from pure noise
        for i, t in enumerate(ts):
            if check is not None:
                check()
            s = sig[i]
            x_in = x / math.sqrt(s * s + 1)
            out = self.unet(x_in, torch.tensor([t], device=self.device),
                            encoder_hidden_states=self.prompt_embeds).sample
            if self.prediction_type == "v_prediction":
                denoised = out * (-s / math.sqrt(s * s + 1)) + x / (s * s + 1)
            else:
                denoised = x - s * out
            # Euler step of the probability-flow ODE to the next sigma (0 at the end)
            x = denoised + sig[i + 1] * (x - denoised) / s
        img = self.vae.decode(x / self.scaling).sample
        return ((img.float() + 1) / 2).clamp(0, 1)


def get_pipeline(ctx: StepContext) -> InvSRPipeline:
    runtime = ctx.runtime
    sd_folder = runtime.path(SD_TURBO_ID)
    predictor_file = runtime.file(NOISE_PREDICTOR_ID)
    device = ctx.device
    dtype = device.dtype_for(True, False)
    key = ("invsr", str(sd_folder), str(predictor_file), device.torch_device, str(dtype))
    sd_files = [f.name for f in runtime.store.spec(SD_TURBO_ID).files]
    estimate = runtime.estimate_bytes(SD_TURBO_ID) + runtime.estimate_bytes(NOISE_PREDICTOR_ID)
    return runtime.cached(key, lambda: InvSRPipeline(sd_folder, predictor_file,
                                                     device.torch_device, dtype, sd_files),
                          None, estimate=estimate, model_id=(SD_TURBO_ID, NOISE_PREDICTOR_ID))


def invsr_upscale(image: np.ndarray, pipe: InvSRPipeline, *, scale: int, steps: int,
                  progress=None, device=None, seed: int = 12345) -> np.ndarray:
    """InvSR over a whole photo in 128-px LR patches at stride 64, at output ``scale``."""
    import torch

    from ..tiling import checking
    from .sr import resize_to

    timesteps = TIMESTEPS[steps]
    # the noise is drawn on this CPU generator and then moved (diffusers' randn_tensor does so
    # for a CPU generator), so a seed gives the same result on every device (it used to be
    # dropped on CUDA/MPS, and the global random state made every run differ)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    check = progress.check if progress is not None else None

    def fn(tile: np.ndarray) -> np.ndarray:
        h, w = tile.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1)))[None]
        # a cancel is honoured inside a model call too: one 128-px patch-step of the UNet
        # takes ~50 s on a CPU core
        with torch.inference_mode(), checking(pipe.unet, check), checking(pipe.vae, check), \
                checking(pipe.predictor, check):
            y = pipe.sr_patch(x, timesteps, generator=generator, check=check)
        res = y[0].permute(1, 2, 0).cpu().numpy()
        if scale != SF:
            res = np.clip(resize_to(res, w * scale, h * scale), 0, 1)
        return res

    # the latent of a patch is 1/vae_sf of the x4 output and the UNet halves it unet_sf times:
    # LR patches must be multiples of vae_sf / SF * unet_sf (16 for SD-Turbo, as the official)
    multiple = max(1, pipe.vae_sf // SF) * pipe.unet_sf
    return run_tiled(image, fn, scale=scale, tile=PATCH, overlap=PATCH - STRIDE,
                     pad_multiple=multiple, progress=progress, device=device,
                     min_tile=max(16, multiple))


@register_step(
    "sr_invsr",
    models=(SD_TURBO_ID, NOISE_PREDICTOR_ID),
    description="InvSR diffusion super-resolution (SD-Turbo + noise predictor, 1-5 steps).",
    defaults={"scale": 1, "steps": 1},
)
def sr_invsr(image: np.ndarray, params: Mapping[str, Any], ctx: StepContext) -> StepOutput:
    from .sr import _check_scale

    scale = _check_scale(params.get("scale", 1))
    try:
        steps = int(params.get("steps", 1))
    except (TypeError, ValueError):
        steps = 0
    if steps not in TIMESTEPS:
        raise UsageError(f"InvSR steps must be 1 to 5 (got {params.get('steps')!r})")
    ctx.progress.update(0.0, "loading InvSR")
    pipe = get_pipeline(ctx)
    out = invsr_upscale(image, pipe, scale=scale, steps=steps, progress=ctx.progress,
                        device=ctx.device, seed=int(params.get("seed", 12345)))
    ctx.progress.update(1.0, "InvSR done")
    return StepOutput(out, NOISE_PREDICTOR_ID, notes=f"x{scale}, {steps} step(s), SD-Turbo")
