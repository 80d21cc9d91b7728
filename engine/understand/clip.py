"""CLIP / SigLIP zero-shot diagnosis (the paper's related-work alternative).

Each class has a prompt ensemble (resources/prompts/clip_prompts.json); a class's text
embedding is the normalised mean of its prompts' normalised embeddings. CLIP's scores are the
softmax of the scaled cosine similarities (it was trained with a softmax over the texts).
SigLIP was trained with a sigmoid per image-text pair: each class's match probability is
sigmoid(scale * cosine + bias), and the scores are those probabilities normalised to sum to 1
(all four near 1, or near 0, is an even split, not a confident softmax); its prompts are
padded to the full 64 tokens and encoded without a padding mask, as it was trained. SigLIP's
tokenizer needs the ``sentencepiece`` package: without it the SigLIP model is passed over
(a clear error when it is the only one). Weights come from the model store with
``local_files_only=True``. A cancel (``cancel_check``) is checked before every layer of the
image encoder and between batches; loading (with the prompts' text embeddings) is not
interrupted, so a cached model is always a whole one.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..api import CLASSES, Degradation, Diagnosis, normalise_scores
from ..errors import EngineError, ModelMissing, PackageMissing
from ..resources import resource
from .base import StoredModelClassifier, model_rgb8, photos_for, register_classifier

MODEL_IDS = ("clip-vit-large-patch14", "siglip-base-patch16-224")
# a photo is reduced (area average) to about 2 * MAX_PIXELS before it is converted for the
# processor, which resizes it to 224 px anyway; its short side stays at least MIN_SIDE
MAX_PIXELS = 512 * 512
MIN_SIDE = 448
PROMPTS_FILE = resource("prompts", "clip_prompts.json")
LETTERS = tuple(c.value for c in CLASSES)


def load_prompts(path: Path = PROMPTS_FILE) -> dict[str, list[str]]:
    d = json.loads(path.read_text(encoding="utf-8"))
    missing = [c for c in LETTERS if not d.get(c)]
    if missing:
        raise EngineError(f"CLIP prompt file has no prompts for {', '.join(missing)}")
    return {c: list(d[c]) for c in LETTERS}


def _features(out: Any):
    """transformers returns a tensor (4.x) or an output whose pooler_output is projected (5.x)."""
    return out if hasattr(out, "norm") else out.pooler_output


def is_siglip(model: Any) -> bool:
    """A SigLIP (or SigLIP 2) checkpoint: sigmoid scores, max-length prompts, no padding mask."""
    kind = str(getattr(getattr(model, "config", None), "model_type", "") or "")
    return kind.startswith("siglip") or "siglip" in type(model).__name__.lower()


def _installed(package: str) -> bool:
    if package in sys.modules:  # (None there: known not to import)
        return sys.modules[package] is not None
    return importlib.util.find_spec(package) is not None


def missing_package(runtime: Any, model_id: str) -> str | None:
    """The package ``model_id``'s tokenizer needs that is not installed, else None: a
    SentencePiece vocabulary (``spiece.model``) without a ``tokenizer.json`` (SigLIP's release)
    is read by transformers through the ``sentencepiece`` package only."""
    try:
        names = {Path(f.name).name for f in runtime.store.spec(model_id).files}
    except (KeyError, EngineError, AttributeError):
        return None
    if "spiece.model" in names and "tokenizer.json" not in names \
            and not _installed("sentencepiece"):
        return "sentencepiece"
    return None


class _LoadedClip:
    def __init__(self, model, processor, text_emb, logit_scale, model_id: str,
                 logit_bias: float = 0.0, sigmoid: bool = False):
        self.model, self.processor = model, processor
        self.text_emb, self.logit_scale, self.model_id = text_emb, logit_scale, model_id
        self.logit_bias, self.sigmoid = logit_bias, sigmoid

    def probabilities(self, image_emb):
        """Class scores (rows sum to 1) of normalised image embeddings: CLIP's softmax, or
        SigLIP's per-class sigmoids normalised (in log space: no underflow to 0 / 0)."""
        import torch

        logits = self.logit_scale * image_emb @ self.text_emb.T + self.logit_bias
        if self.sigmoid:
            return torch.softmax(torch.nn.functional.logsigmoid(logits), dim=-1)
        return torch.softmax(logits, dim=-1)


def load_clip(runtime: Any, model_id: str, prompts: dict[str, list[str]]) -> _LoadedClip:
    device = runtime.device
    folder = runtime.path(model_id)
    dtype = runtime.dtype_for(model_id, supports_half=True)
    key = ("clip", model_id, device.torch_device, str(dtype),
           tuple(tuple(prompts[c]) for c in LETTERS))

    def build() -> _LoadedClip:
        import torch
        from transformers import AutoModel, AutoProcessor

        from ..models.loader import checkpoint_errors, refuse_remote_code
        from .vlm import loading_memory

        refuse_remote_code()
        # (a damaged tokenizer or config that passed the cheap check: the model's error)
        with checkpoint_errors(f"{model_id} ({folder})"):
            processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True,
                                                      trust_remote_code=False)
        with checkpoint_errors(f"{model_id} ({folder})"), loading_memory(model_id, device):
            model = AutoModel.from_pretrained(str(folder), local_files_only=True,
                                              trust_remote_code=False, dtype=dtype)
            model.to(device.torch_device).eval()
        texts = [t for c in LETTERS for t in prompts[c]]
        sig = is_siglip(model)
        # SigLIP: padded to its full length (64 tokens) and read without a padding mask (its
        # text tower pools the last position, a pad, and was trained attending to the pads)
        length = getattr(getattr(model.config, "text_config", None), "max_position_embeddings",
                         None) or 64
        kw = {"padding": "max_length", "max_length": int(length)} if sig else {"padding": True}
        tok = processor(text=texts, return_tensors="pt", truncation=True, **kw)
        keep = ("input_ids",) if sig else ("input_ids", "attention_mask")
        tok = {k: v.to(device.torch_device) for k, v in tok.items() if k in keep}
        with torch.inference_mode():
            te = _features(model.get_text_features(**tok)).float()
        te = te / te.norm(dim=-1, keepdim=True)
        per, i = [], 0
        for c in LETTERS:
            n = len(prompts[c])
            m = te[i:i + n].mean(dim=0)
            per.append(m / m.norm())
            i += n
        scale = float(model.logit_scale.exp().item()) if hasattr(model, "logit_scale") else 100.0
        bias = getattr(model, "logit_bias", None)
        bias = float(bias.float().reshape(-1)[0].item()) if (sig and bias is not None) else 0.0
        return _LoadedClip(model, processor, torch.stack(per), scale, model_id, bias, sig)

    mb = 0
    try:
        mb = int(runtime.store.spec(model_id).memory_mb or 0)
    except (KeyError, EngineError, AttributeError):
        mb = 0
    return runtime.cached(key, build, (mb << 20) if mb else None, model_id=model_id)


@register_classifier("clip")
class ClipClassifier(StoredModelClassifier):
    name = "clip"

    def __init__(self, runtime: Any | None = None, model_id: str | None = None,
                 with_measurements: bool = True,
                 cancel_check: Callable[[], None] | None = None, **_: Any) -> None:
        super().__init__(runtime, model_id, with_measurements, cancel_check)

    def pick_model(self) -> str:
        rt = self._rt()
        if self.model_id:
            if not rt.is_available(self.model_id):
                return self.model_id  # (its load says it is not installed)
            package = missing_package(rt, self.model_id)
            if package:
                raise PackageMissing(self.model_id, package)
            return self._runs(self.model_id)
        unusable = None
        for mid in MODEL_IDS:
            if rt.is_available(mid):
                package = missing_package(rt, mid)
                if package is None:
                    return self._runs(mid)
                unusable = unusable or PackageMissing(mid, package)
        if unusable is not None:
            raise unusable
        from ..models.store import install_hint

        raise self._not_installed(MODEL_IDS, ModelMissing(
            MODEL_IDS[0], f"install a CLIP model ({install_hint(MODEL_IDS[0])}) or use the "
                          "built-in analyzer"))

    def classify_batch(self, images: list[np.ndarray], photos: list[Any | None],
                       batch_size: int = 8) -> list[Diagnosis]:
        from PIL import Image

        photos = photos_for(images, photos)
        rt = self._rt()
        self._check()
        model_id = self.pick_model()  # (PyTorch missing: said here, see _runs)
        import torch

        loaded = load_clip(rt, model_id, load_prompts())
        out = []
        dev = rt.device.torch_device
        dtype = next(loaded.model.parameters()).dtype
        for i in range(0, len(images), batch_size):
            self._check()
            chunk = images[i:i + batch_size]
            pils = [Image.fromarray(model_rgb8(im, MAX_PIXELS, min_side=MIN_SIDE))
                    for im in chunk]
            px = loaded.processor(images=pils, return_tensors="pt")["pixel_values"]
            with torch.inference_mode(), self._checking(loaded.model):
                ie = _features(loaded.model.get_image_features(
                    pixel_values=px.to(dev, dtype))).float()
            ie = ie / ie.norm(dim=-1, keepdim=True)
            probs = loaded.probabilities(ie).cpu().numpy()
            for j, im in enumerate(chunk):
                photo = photos[i + j]
                sc = normalise_scores({c: float(p) for c, p in zip(LETTERS, probs[j])})
                out.append(self._finish(sc, im, photo, loaded.model_id))
        return out

    def _finish(self, sc: dict[str, float], image: np.ndarray, photo: Any | None,
                model_id: str) -> Diagnosis:
        label = Degradation(max(sc, key=sc.get))
        est, flags = self._measured(image, photo, {"clip_model": model_id}, sc, label)
        why = f"zero-shot {model_id}: {label.short_name} ({sc[label.value]:.0%})"
        return Diagnosis(label, sc, flags, est, why, "clip")
