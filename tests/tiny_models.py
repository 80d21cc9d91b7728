"""Tiny random models in the REAL release layouts and file names of ``resources/models.json``,
built once per test session and installed into a real store under the real manifest ids.

Random weights: the output means nothing; these exercise the real loading code (spandrel,
diffusers, transformers, the InvSR predictor loader) through the store + runtime path.

Builders write into a folder and return ``{manifest file name: built path}``.
``built(model_id, build_root)`` caches them per process (= per pytest session);
``install_models(store_root, ids, build_root)`` puts them into one store.

CodeFormer cannot be made tiny (its fixed 512 input): chains that use ``face_codeformer`` are
run on photos without faces, where the step finds none and loads no model. Nor can GFPGAN v1.4
(spandrel builds it at its full size whatever the file holds): a slow test builds it at that
size (tests/engine/test_alt_models.py). Tiny YuNet ONNX
graphs of the 2023mar interface are built by ``tests/tiny_yunet.py``.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from tests.model_helpers import install_test_model

# group count (32) and attention head size (64) are not readable from tensor shapes, so the
# tiny predictor keeps the release values: 64 channels = one 64-wide head
TINY_NP = {"block_out_channels": (64, 64), "layers_per_block": (1, 1), "temb_channels": 64}


# ------------------------------------------------------------------ Real-ESRGAN
def write_compact(folder: Path, *, num_feat: int = 16, num_conv: int = 4, seed: int = 0,
                  name: str = "realesr-general-x4v3.pth") -> dict[str, Path]:
    """realesr-general-x4v3: SRVGGNetCompact x4, ``{"params": state_dict}``."""
    from spandrel.architectures.Compact import Compact

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    path = folder / name
    torch.save({"params": Compact(num_feat=num_feat, num_conv=num_conv, upscale=4).state_dict()},
               path)
    return {name: path}


def write_rrdb(folder: Path, *, num_filters: int = 16, num_blocks: int = 1, seed: int = 0,
               name: str = "RealESRGAN_x4plus.pth") -> dict[str, Path]:
    """realesrgan-x4plus: basicsr RRDBNet x4 (conv_first, body.N.rdbM...) under params_ema."""
    from spandrel.architectures.ESRGAN import ESRGAN

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    path = folder / name
    torch.save({"params_ema": ESRGAN(num_filters=num_filters, num_blocks=num_blocks,
                                     scale=4).state_dict()}, path)
    return {name: path}


# ------------------------------------------------------------------ NAFNet
def write_nafnet(folder: Path, name: str, *, width: int = 8,
                 enc_blk_nums: tuple[int, ...] = (1, 1), dec_blk_nums: tuple[int, ...] = (1, 1),
                 middle_blk_num: int = 1, seed: int = 0) -> dict[str, Path]:
    """A tiny NAFNet saved as the release does: ``{"params": state_dict}``."""
    from spandrel.architectures.NAFNet import NAFNet

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = NAFNet(img_channel=3, width=width, middle_blk_num=middle_blk_num,
                 enc_blk_nums=list(enc_blk_nums), dec_blk_nums=list(dec_blk_nums))
    path = folder / name
    torch.save({"params": net.state_dict()}, path)
    return {name: path}


def write_nafnet_gopro(folder: Path, **kw) -> dict[str, Path]:
    return write_nafnet(folder, "NAFNet-GoPro-width64.pth", **kw)


def write_nafnet_sidd(folder: Path, **kw) -> dict[str, Path]:
    return write_nafnet(folder, "NAFNet-SIDD-width64.pth", **kw)


# the alternatives (``deblur_nafnet`` / ``dereflect_nafnet``'s ``model``): the same layout
# under their release names (spandrel reads the width from the weights)
def write_nafnet_gopro_w32(folder: Path, **kw) -> dict[str, Path]:
    return write_nafnet(folder, "NAFNet-GoPro-width32.pth", **kw)


def write_nafnet_reds(folder: Path, **kw) -> dict[str, Path]:
    return write_nafnet(folder, "NAFNet-REDS-width64.pth", **kw)


def write_nafnet_sidd_w32(folder: Path, **kw) -> dict[str, Path]:
    return write_nafnet(folder, "NAFNet-SIDD-width32.pth", **kw)


# ------------------------------------------------------------------ LaMa
def write_big_lama(folder: Path, *, seed: int = 0) -> dict[str, Path]:
    """big-lama at its real architecture (spandrel reads no size from the weights, so it
    cannot be made smaller): random weights, fp16 on disk to halve the file; shapes from a
    meta-device model (random init of 51 M parameters on the CPU is slow)."""
    from spandrel.architectures.LaMa import LaMa

    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in LaMa(in_nc=4, out_nc=3).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, (shape, dtype) in shapes.items():
        if not dtype.is_floating_point:
            sd[k] = torch.zeros(shape, dtype=dtype)
        elif k.endswith("running_var"):
            sd[k] = torch.ones(shape, dtype=torch.float16)
        else:
            sd[k] = (torch.randn(shape, generator=g) * 0.02).half()
    path = folder / "big-lama.pt"
    torch.save(sd, path)
    return {"big-lama.pt": path}


# ------------------------------------------------------------------ SAM
def write_sam(folder: Path, *, seed: int = 0) -> dict[str, Path]:
    """A tiny SamModel + SamImageProcessor in the Hugging Face layout of facebook/sam-vit-base."""
    from transformers import SamConfig, SamImageProcessor, SamModel
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    s = 64
    vc = SamVisionConfig(hidden_size=16, output_channels=16, num_hidden_layers=1,
                         num_attention_heads=2, image_size=s, patch_size=16, window_size=2,
                         global_attn_indexes=[0], num_pos_feats=8, mlp_dim=32)
    pc = SamPromptEncoderConfig(hidden_size=16, image_size=s, patch_size=16, mask_input_channels=4)
    mc = SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_hidden_layers=1,
                              num_attention_heads=2, iou_head_hidden_dim=16)
    torch.manual_seed(seed)
    model = SamModel(SamConfig(vision_config=vc.to_dict(), prompt_encoder_config=pc.to_dict(),
                               mask_decoder_config=mc.to_dict()))
    model.save_pretrained(folder)
    SamImageProcessor(size={"longest_edge": s}, pad_size={"height": s, "width": s},
                      mask_size={"longest_edge": s // 4},
                      mask_pad_size={"height": s // 4, "width": s // 4}).save_pretrained(folder)
    return {n: folder / n for n in ("config.json", "preprocessor_config.json", "model.safetensors")}


def write_slimsam(folder: Path, *, seed: int = 1) -> dict[str, Path]:
    """slimsam-50 (nielsr/slimsam-50-uniform): a transformers SamModel in the same Hugging
    Face layout as sam-vit-base (its own tiny weights: another seed)."""
    return write_sam(folder, seed=seed)


# ------------------------------------------------------------------ InvSR + SD-Turbo
def write_sd_turbo(root: Path, *, fp16_variants: bool = False, seed: int = 0) -> dict[str, Path]:
    """A tiny SD-Turbo-shaped pipeline (diffusers layout, save_pretrained): VAE with 4 levels
    (latent = 1/8), a 2-level UNet with cross-attention, a tiny CLIP text model + tokenizer.

    ``fp16_variants``: the VAE and text encoder are stored as the stabilityai/sd-turbo
    release stores them (``*.fp16.safetensors``, half precision), the UNet in fp32 under
    its plain name, the tokenizer as vocab.json + merges.txt - the file names the manifest
    lists."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
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
        if fp16_variants and sub in ("vae", "text_encoder"):
            comp.half().save_pretrained(out / sub, variant="fp16")
        else:
            comp.save_pretrained(out / sub)
    if fp16_variants:  # the release's slow-tokenizer files instead of tokenizer.json
        (out / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
        for name in ("vocab.json", "merges.txt"):
            (out / "tokenizer" / name).write_bytes((vocab_dir / name).read_bytes())
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))
    return {p.relative_to(out).as_posix(): p for p in sorted(out.rglob("*")) if p.is_file()}


def write_invsr_noise_predictor(folder: Path, *, seed: int = 1) -> dict[str, Path]:
    """The release format: a plain state dict pickled with torch.save."""
    from engine.restore.invsr import build_noise_predictor

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    path = folder / "noise_predictor_sd_turbo_v5.pth"
    torch.save(build_noise_predictor(TINY_NP).state_dict(), path)
    return {"noise_predictor_sd_turbo_v5.pth": path}


# ------------------------------------------------------------------ session cache + store
BUILDERS = {
    "realesr-general-x4v3": write_compact,
    "realesrgan-x4plus": write_rrdb,
    "nafnet-gopro-w64": write_nafnet_gopro,
    "nafnet-sidd-w64": write_nafnet_sidd,
    "nafnet-gopro-w32": write_nafnet_gopro_w32,
    "nafnet-reds-w64": write_nafnet_reds,
    "nafnet-sidd-w32": write_nafnet_sidd_w32,
    "big-lama": write_big_lama,
    "sam-vit-base": write_sam,
    "slimsam-50": write_slimsam,
    "sd-turbo": lambda folder: write_sd_turbo(folder, fp16_variants=True),
    "invsr-noise-predictor-v5": write_invsr_noise_predictor,
}
TINY_IDS = tuple(BUILDERS)

_BUILT: dict[str, dict[str, Path]] = {}


def built(model_id: str, build_root: Path) -> dict[str, Path]:
    """The tiny model's files, built on first use in this process (one pytest session)."""
    files = _BUILT.get(model_id)
    if files is None or not all(p.is_file() for p in files.values()):
        files = BUILDERS[model_id](Path(build_root) / model_id)
        _BUILT[model_id] = files
    return files


def install_models(store_root: Path, model_ids: Iterable[str], build_root: Path,
                   store=None):
    """Install the tiny models ``model_ids`` into one store at ``store_root`` (extending
    ``store`` when given); returns the store (its manifest pins the tiny files)."""
    for model_id in model_ids:
        store = install_test_model(store_root, model_id, built(model_id, build_root),
                                   store=store)
    return store


def write_manifest(store, dest: Path) -> Path:
    """The store's manifest (real entries + the tiny files' pins) as a models.json."""
    dest.write_text(json.dumps(store.manifest.to_dict(), indent=1), encoding="utf-8")
    return dest
