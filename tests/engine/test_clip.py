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


# ----------------------------------------------------------------------------- SigLIP

def _write_spiece(path: Path, vocab: list[tuple[str, float]]) -> None:
    """A SentencePiece unigram model file (SigLIP's ``spiece.model``) written with protobuf:
    no ``sentencepiece`` package needed to make it, only to read it."""
    from transformers.utils import sentencepiece_model_pb2_new as pb

    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    m.trainer_spec.pad_id, m.trainer_spec.eos_id = 0, 1
    m.trainer_spec.unk_id, m.trainer_spec.bos_id = 2, -1
    m.trainer_spec.vocab_size = len(vocab)
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.escape_whitespaces = True
    kinds = {"<pad>": pb.ModelProto.SentencePiece.CONTROL,
             "</s>": pb.ModelProto.SentencePiece.CONTROL,
             "<unk>": pb.ModelProto.SentencePiece.UNKNOWN}
    for piece, score in vocab:
        p = m.pieces.add()
        p.piece, p.score = piece, score
        p.type = kinds.get(piece, pb.ModelProto.SentencePiece.NORMAL)
    path.write_bytes(m.SerializeToString())


def build_tiny_siglip(folder: Path, seed: int = 0, release_tokenizer: bool = True,
                      logit_scale: float | None = None, logit_bias: float | None = None) -> Path:
    """A tiny SiglipModel saved like google/siglip-base-patch16-224: config, safetensors,
    preprocessor_config.json, special_tokens_map.json, tokenizer_config.json and, with
    ``release_tokenizer``, the release's SentencePiece ``spiece.model`` (read by transformers
    through the ``sentencepiece`` package only); else the same vocabulary as a
    ``tokenizer.json`` (no package needed). ``logit_scale`` / ``logit_bias`` set the model's
    (the scale as its value, not its log)."""
    import json
    import math

    from transformers import SiglipConfig, SiglipModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab += [(ch, -2.0 - i / 100), ("\u2581" + ch, -1.5 - i / 100)]
    special = {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    if release_tokenizer:
        _write_spiece(folder / "spiece.model", vocab)
        tok_cfg = {"tokenizer_class": "SiglipTokenizer", "do_lower_case": True}
    else:
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
        from tokenizers.processors import TemplateProcessing

        tok = Tokenizer(models.Unigram(vocab, unk_id=2))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        tok.save(str(folder / "tokenizer.json"))
        tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast"}
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**tok_cfg, "model_max_length": 64, **special}))
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "resample": 3,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255,
        "size": {"height": 32, "width": 32}, "image_processor_type": "SiglipImageProcessor",
        "processor_class": "SiglipProcessor"}))
    cfg = SiglipConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 64,
                     "pad_token_id": 1, "eos_token_id": 1, "bos_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
    )
    torch.manual_seed(seed)
    model = SiglipModel(cfg).eval()
    with torch.no_grad():
        if logit_scale is not None:
            model.logit_scale.fill_(math.log(logit_scale))
        if logit_bias is not None:
            model.logit_bias.fill_(logit_bias)
    model.save_pretrained(folder)
    return folder


def _siglip_runtime(root: Path, **kw):
    src = build_tiny_siglip(root / "src", **kw)
    files = {p.name: p for p in sorted(src.iterdir()) if p.is_file()}
    return make_runtime(install_test_model(root / "store", "siglip-base-patch16-224", files))


def test_siglip_scores_are_its_sigmoid_not_a_softmax(tmp_path):
    """SigLIP gives each class an independent match probability, sigmoid(scale * cos + bias);
    the scores are those normalised. They were the softmax of scale * cos, which ignores the
    bias: a SigLIP that finds every class a match (bias +200: all four sigmoids 1) read as sure
    of one class. Where every sigmoid is small (bias -200) both agree."""
    torch.set_num_threads(1)
    img = _img(4)
    got = {}
    for bias in (-200.0, 200.0):
        rt = _siglip_runtime(tmp_path / f"b{bias:+.0f}", release_tokenizer=False,
                             logit_scale=100.0, logit_bias=bias)
        clf = ClipClassifier(runtime=rt, with_measurements=False)
        assert clf.pick_model() == "siglip-base-patch16-224"
        got[bias] = clf.classify(img)
    low, high = got[-200.0], got[200.0]
    assert low.backend == high.backend == "clip"
    assert max(low.scores.values()) > 0.5  # the same weights: one class stands out...
    assert all(abs(v - 0.25) < 1e-6 for v in high.scores.values()), high.scores  # ...or none


def test_siglip_prompts_are_full_length_without_a_padding_mask(tmp_path, monkeypatch):
    """SigLIP's text tower pools its last position - a pad - and was trained attending to the
    pads: the prompts go in padded to 64 tokens with no attention mask (transformers 5's
    tokenizer returns one, and it changed the text embeddings)."""
    from transformers import SiglipModel

    from engine.understand.clip import load_clip

    torch.set_num_threads(1)
    calls = []
    real = SiglipModel.get_text_features

    def spy(self, *a, **kw):
        calls.append(kw)
        return real(self, *a, **kw)

    monkeypatch.setattr(SiglipModel, "get_text_features", spy)
    rt = _siglip_runtime(tmp_path, release_tokenizer=False)
    loaded = load_clip(rt, "siglip-base-patch16-224", load_prompts())
    assert len(calls) == 1
    assert set(calls[0]) == {"input_ids"} and calls[0]["input_ids"].shape[1] == 64
    # (padding masked or not gives different embeddings: the choice matters)
    ids = calls[0]["input_ids"]
    with torch.inference_mode():
        plain = real(loaded.model, input_ids=ids).pooler_output
        masked = real(loaded.model, input_ids=ids,
                      attention_mask=(ids != 1).long()).pooler_output
    assert not torch.allclose(plain, masked, atol=1e-4)


@pytest.fixture(scope="module")
def siglip_release_src(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return build_tiny_siglip(tmp_path_factory.mktemp("siglip") / "src")


def test_siglip_without_sentencepiece_is_a_clear_error(siglip_release_src, clip_runtime,
                                                      tmp_path, monkeypatch):
    """SigLIP's release tokenizer (spiece.model) is read through the ``sentencepiece`` package
    only; without it the "clip" backend raised transformers' ImportError (an internal error)
    and called itself available. Now: CLIP is chosen when it is installed too, else a
    ModelMissing that names the package."""
    import sys

    from engine.errors import ModelMissing

    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as if it were not installed
    files = {p.name: p for p in sorted(siglip_release_src.iterdir()) if p.is_file()}
    rt = make_runtime(install_test_model(tmp_path / "store", "siglip-base-patch16-224", files))
    clf = ClipClassifier(runtime=rt, with_measurements=False)
    assert not clf.available()
    with pytest.raises(ModelMissing, match=r"sentencepiece.*pip install sentencepiece") as e:
        clf.classify(_img(5))
    from engine.understand.clip import PackageMissing

    assert isinstance(e.value, PackageMissing) and "is installed" in str(e.value)
    chosen = ClipClassifier(runtime=rt, model_id="siglip-base-patch16-224")
    with pytest.raises(PackageMissing):
        chosen.classify(_img(5))
    # with CLIP installed beside it, CLIP is used
    both = install_test_model(
        tmp_path / "store", "clip-vit-large-patch14",
        {p.name: p for p in sorted(clip_runtime.store.model_dir(
            "clip-vit-large-patch14").iterdir()) if p.is_file() and not p.name.startswith(".")},
        store=rt.store)
    assert ClipClassifier(runtime=make_runtime(both)).pick_model() == "clip-vit-large-patch14"


def test_siglip_release_layout_through_the_real_loader(siglip_release_src, tmp_path):
    """The release's files (spiece.model) through the real store + runtime + transformers
    path, when the ``sentencepiece`` package is installed."""
    pytest.importorskip("sentencepiece", reason="SigLIP's release tokenizer needs the "
                        "sentencepiece package (not in requirements.lock)")
    files = {p.name: p for p in sorted(siglip_release_src.iterdir()) if p.is_file()}
    rt = make_runtime(install_test_model(tmp_path / "store", "siglip-base-patch16-224", files))
    clf = ClipClassifier(runtime=rt)
    assert clf.available() and clf.pick_model() == "siglip-base-patch16-224"
    d = clf.classify(_img(6))
    assert d.backend == "clip" and d.estimates["clip_model"] == "siglip-base-patch16-224"
    assert abs(sum(d.scores.values()) - 1) < 1e-6 and d.label.value == max(d.scores,
                                                                              key=d.scores.get)
    assert "noise_sigma" in d.estimates


def test_cli_classify_with_siglip_missing_its_package_says_so_once(siglip_release_src, tmp_path,
                                                                   monkeypatch, capsys):
    """`mend classify --backend clip` with SigLIP alone and no sentencepiece: the first photo's
    line names the package, the others are not run, and the stop says the model cannot be
    used (it is installed). Before: every photo an "internal error: ImportError"."""
    import json
    import sys

    from PIL import Image

    from engine import cli
    from engine.pipeline import Engine

    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    files = {p.name: p for p in sorted(siglip_release_src.iterdir()) if p.is_file()}
    rt = make_runtime(install_test_model(tmp_path / "store", "siglip-base-patch16-224", files))
    monkeypatch.setattr(Engine, "runtime", property(lambda self: rt))
    paths = []
    for n in ("a.png", "b.png"):
        Image.fromarray((_img(7) * 255).astype(np.uint8)).save(tmp_path / n)
        paths.append(str(tmp_path / n))
    assert cli.main(["classify", *paths, "--backend", "clip", "--json"]) == 1
    captured = capsys.readouterr()
    first, second = (json.loads(x) for x in captured.out.splitlines())
    assert "pip install sentencepiece" in first["error"] and "internal" not in first["error"]
    assert second.get("not_run") and "cannot be used" in second["error"]
    assert "not installed (see above)" not in captured.out + captured.err
