"""CLIP zero-shot backend with a tiny random CLIP built offline and installed under the real
manifest id (loaded through the real store + runtime + transformers path). Mechanics only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from engine.api import CLASSES
from engine.understand import diagnose
from engine.understand.clip import ClipClassifier, load_prompts
from tests.model_helpers import install_test_model, make_runtime


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny CLIPModel + CLIPTokenizer (a small BPE vocabulary written here) + image
    processor, saved like the release (config.json, model.safetensors, tokenizer files)."""
    import json

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = sorted(set("abcdefghijklmnopqrstuvwxyz,.-"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in letters:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    cfg = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 128,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}),
                         tokenizer=tok)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_runtime(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("clip")
    src = build_tiny_clip(root / "src")
    files = {p.name: p for p in sorted(src.iterdir()) if p.is_file()}
    return make_runtime(install_test_model(root / "store", "clip-vit-large-patch14", files))


def _img(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((48, 64, 3)).astype(np.float32)


def test_prompt_ensembles_cover_every_class():
    p = load_prompts()
    assert set(p) == {c.value for c in CLASSES}
    assert all(len(v) >= 3 for v in p.values())


def test_clip_zero_shot_scores(clip_runtime):
    clf = ClipClassifier(runtime=clip_runtime)
    assert clf.available() and clf.pick_model() == "clip-vit-large-patch14"
    d = clf.classify(_img(0))
    assert d.backend == "clip"
    assert abs(sum(d.scores.values()) - 1) < 1e-6
    assert d.label.value == max(d.scores, key=d.scores.get)
    assert "noise_sigma" in d.estimates and d.estimates["clip_model"] == "clip-vit-large-patch14"


def test_clip_batch_and_diagnose(clip_runtime):
    imgs = [_img(1), _img(2)]
    clf = ClipClassifier(runtime=clip_runtime, with_measurements=False)
    batch = clf.classify_batch(imgs, [None, None])
    one = diagnose(imgs[1], backend="clip", runtime=clip_runtime, with_measurements=False)
    assert len(batch) == 2
    for k in one.scores:
        assert abs(batch[1].scores[k] - one.scores[k]) < 1e-4
    # the model is deterministic and sees the images: different inputs, different scores
    assert any(abs(batch[0].scores[k] - batch[1].scores[k]) > 1e-7 for k in one.scores)


def test_clip_missing(tmp_path):
    from engine.errors import ModelMissing
    from engine.models.store import ModelStore

    clf = ClipClassifier(runtime=make_runtime(ModelStore(tmp_path / "empty")))
    assert not clf.available()
    with pytest.raises(ModelMissing):
        clf.classify(_img(3))


def test_clip_cache_follows_the_precision_setting(clip_runtime, monkeypatch):
    from engine.models.runtime import ModelRuntime
    from engine.understand.clip import load_clip
    from tests.model_helpers import fake_gpu

    rt = ModelRuntime(fake_gpu(), clip_runtime.store)
    monkeypatch.setenv("MEND_PRECISION", "fp16")
    a = load_clip(rt, "clip-vit-large-patch14", load_prompts())
    assert next(a.model.parameters()).dtype == torch.float16
    monkeypatch.setenv("MEND_PRECISION", "fp32")
    b = load_clip(rt, "clip-vit-large-patch14", load_prompts())
    assert b is not a and next(b.model.parameters()).dtype == torch.float32


def test_clip_checkpoint_that_does_not_fit_is_a_clear_error(clip_runtime, tmp_path):
    from safetensors.torch import load_file, save_file

    from engine.models.loader import UnsupportedModel
    from engine.understand.clip import load_clip

    installed = clip_runtime.store.model_dir("clip-vit-large-patch14")
    src = tmp_path / "src"
    src.mkdir()
    for p in installed.iterdir():
        if p.is_file() and not p.name.startswith("."):
            (src / p.name).write_bytes(p.read_bytes())
    w = load_file(str(src / "model.safetensors"))
    w["text_model.embeddings.token_embedding.weight"] = torch.zeros(3, 3)
    save_file(w, str(src / "model.safetensors"), metadata={"format": "pt"})
    files = {p.name: p for p in sorted(src.iterdir()) if p.is_file()}
    rt = make_runtime(install_test_model(tmp_path / "store", "clip-vit-large-patch14", files))
    with pytest.raises(UnsupportedModel, match="clip-vit-large-patch14.*do not|does not match"):
        load_clip(rt, "clip-vit-large-patch14", load_prompts())


def test_a_cancel_stops_the_image_encoder_between_its_layers(clip_runtime):
    """A cancel from another thread while the image encoder runs stops it before its next layer
    (a forward pre-hook; before, the whole batch - 3 x 8 images here - ran first), as the
    engine's Cancelled. The cached model stays whole and gives the same scores after."""
    import threading

    from torch.nn.modules import module

    from engine.errors import Cancelled
    from engine.progress import CancelToken
    from engine.understand.clip import load_clip

    imgs = [_img(10 + i) for i in range(20)]
    plain = ClipClassifier(runtime=clip_runtime, with_measurements=False)
    before = plain.classify(imgs[0]).scores
    keys, hooks = clip_runtime.cached_keys(), len(module._global_forward_pre_hooks)
    layers = load_clip(clip_runtime, "clip-vit-large-patch14",
                       load_prompts()).model.vision_model.encoder.layers
    token, ran = CancelToken(), []

    def first(*_):
        ran.append(0)
        if len(ran) == 1:  # pressed Stop while the first layer ran
            th = threading.Thread(target=token.cancel)
            th.start()
            th.join()

    watch = [layers[0].register_forward_hook(first),
             layers[1].register_forward_hook(lambda *_: ran.append(1))]
    clf = ClipClassifier(runtime=clip_runtime, with_measurements=False,
                         cancel_check=token.check)
    try:
        with pytest.raises(Cancelled):
            clf.classify_batch(imgs, [None] * len(imgs))
    finally:
        for h in watch:
            h.remove()
    assert ran == [0]  # not the second layer, nor any later batch
    assert len(module._global_forward_pre_hooks) == hooks
    assert clip_runtime.cached_keys() == keys
    after = plain.classify(imgs[0]).scores
    assert all(abs(after[k] - before[k]) < 1e-6 for k in before)
