"""Qwen2.5-VL backend: a tiny random Qwen2.5-VL built offline, installed in a store under the
real id, loaded through the real store + runtime + transformers path. Random weights give
random letters, so these tests check the mechanics (prompt, scores, parsing, errors), never
accuracy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from engine.api import Degradation
from engine.understand import diagnose, get_classifier
from engine.understand.vlm import (
    VLMAnswerError,
    VLMClassifier,
    load_prompt,
    parse_letter,
    parse_structured,
    structured_scores,
)
from tests.model_helpers import install_test_model, make_runtime

PAPER_PROMPT = (
    "Analyze this image and determine the type of image degradation it exhibits. Categorize it "
    "into one of the following degradation types: A. Super-resolution degradation (including "
    "noise, blur, JPEG compression); B. Reflection artifacts; C. Motion blur; D. No visible "
    "degradation (high-quality image). Provide a simple result, i.e. A, B, C, or D."
)
SEEDS = Path(__file__).resolve().parents[3] / "shared" / "seeds"

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen(folder: Path, rig: tuple[str, str] | None = None, seed: int = 0,
                    space_letters: bool = False) -> Path:
    """A ~200k-parameter Qwen2.5-VL with a byte-level tokenizer and Qwen's special tokens,
    saved like a release (config, safetensors, tokenizer, processor). ``rig=(x, y)`` wires the
    output head so that every step emits token x or token y (which one depends on the input):
    the final norm keeps one hidden unit, whose sign picks x (+) or y (-). ``space_letters``:
    " A" ... " D" and " a" ... " d" are tokens of their own, as in Qwen2.5's vocabulary (else
    a space and the letter are two byte tokens)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2TokenizerFast,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = [("\u0120", c) for c in "ABCDabcd"] if space_letters else []  # ("Ġ": a space)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL])
    tokenizer = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    cfg = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 4096,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                         "mrope_section": [2, 3, 3]},
                     "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"]},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "window_size": 56,
                       "fullatt_block_indexes": [1]},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    if rig is not None:
        with torch.no_grad():
            norm = model.model.language_model.norm.weight
            norm.zero_()
            norm[0] = 1.0
            head = model.lm_head.weight
            head.zero_()
            x, y = (tokenizer.encode(t, add_special_tokens=False)[0] for t in rig)
            head[x, 0] = 8.0
            head[y, 0] = -8.0
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _install(tmp: Path, src: Path, model_id: str = "qwen2.5-vl-3b"):
    files = {p.name: p for p in sorted(src.iterdir()) if p.is_file()}
    return install_test_model(tmp / "store", model_id, files)


@pytest.fixture(scope="module")
def letter_runtime(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("qwen_letters")
    src = build_tiny_qwen(root / "src", rig=("B", "C"))
    return make_runtime(_install(root, src))


@pytest.fixture(scope="module")
def garbage_runtime(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("qwen_garbage")
    src = build_tiny_qwen(root / "src", rig=("@", "#"))
    return make_runtime(_install(root, src))


def _img(seed: int, h: int = 60, w: int = 80) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv_smooth(rng.random((h, w, 3)).astype(np.float32))
    return base


def cv_smooth(a: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(a, (0, 0), 2.0)


def test_paper_prompt_is_word_for_word():
    assert load_prompt("paper_classify") == PAPER_PROMPT
    seed = sorted(SEEDS.glob("001_*.txt"))
    if seed:
        assert PAPER_PROMPT in seed[0].read_text(encoding="utf-8")


def test_vlm_paper_mode_scores_and_letter(letter_runtime):
    clf = VLMClassifier(runtime=letter_runtime, max_new_tokens=1)
    assert clf.available() and clf.pick_model() == "qwen2.5-vl-3b"
    d = clf.classify(_img(0))
    assert d.backend == "vlm"
    assert abs(sum(d.scores.values()) - 1.0) < 1e-6
    assert d.label in (Degradation.B, Degradation.C)
    assert d.label.value == max(d.scores, key=d.scores.get)
    assert d.scores[d.label.value] > 0.5 and d.runner_up is not None
    # scores are the softmax over the letters' logits, each letter's spellings pooled ("B" and
    # "b" here: " B" is two byte tokens): the rigged head gives "B" and "C" opposite logits
    # (x, -x) and every other spelling 0, so A == D == 2/Z, B == (e^x + 1)/Z and
    # C == (e^-x + 1)/Z: (2B/A - 1) * (2C/A - 1) == 1
    a = d.scores["A"]
    assert abs(a - d.scores["D"]) < 1e-6
    assert abs((2 * d.scores["B"] / a - 1) * (2 * d.scores["C"] / a - 1) - 1) < 1e-4
    # the analyzer's measurements ride along
    assert "noise_sigma" in d.estimates and d.estimates["vlm_model"] == "qwen2.5-vl-3b"
    assert d.estimates["vlm_mode"] == "paper"


def test_vlm_batch_matches_single(letter_runtime):
    clf = VLMClassifier(runtime=letter_runtime, max_new_tokens=1, with_measurements=False)
    imgs = [_img(1), _img(2, 40, 100)]
    batch = clf.classify_batch(imgs, [None, None])
    single = [clf.classify(i) for i in imgs]
    for a, b in zip(batch, single):
        assert a.label == b.label
        for k in a.scores:
            assert abs(a.scores[k] - b.scores[k]) < 1e-3


def test_vlm_through_diagnose(letter_runtime):
    d = diagnose(_img(3), backend="vlm", runtime=letter_runtime, max_new_tokens=1)
    assert d.backend == "vlm" and d.label.value in "BC"


def test_vlm_unreadable_answer_is_an_error(garbage_runtime):
    clf = VLMClassifier(runtime=garbage_runtime, max_new_tokens=3)
    with pytest.raises(VLMAnswerError):
        clf.classify(_img(4))


def test_structured_mode_garbage_is_an_error(garbage_runtime):
    clf = VLMClassifier(runtime=garbage_runtime, mode="structured", max_new_tokens=4)
    with pytest.raises(VLMAnswerError):
        clf.classify(_img(5))


def test_vlm_missing_weights(tmp_path):
    from engine.errors import ModelMissing
    from engine.models.store import ModelStore

    rt = make_runtime(ModelStore(tmp_path / "empty"))
    clf = VLMClassifier(runtime=rt)
    assert not clf.available()
    with pytest.raises(ModelMissing):
        clf.classify(_img(6))


def test_auto_prefers_vlm_only_on_gpu(letter_runtime):
    import dataclasses

    from engine.models.runtime import ModelRuntime

    auto = get_classifier("auto", runtime=letter_runtime)
    assert auto.choose().name == "builtin"  # CPU: the analyzer
    gpu = dataclasses.replace(letter_runtime.device, kind="cuda", memory_budget=20 << 30)
    auto = get_classifier("auto", runtime=ModelRuntime(gpu, letter_runtime.store))
    assert auto.choose().name == "vlm"


@pytest.mark.parametrize("text,expected", [
    ("B", "B"), ("B.", "B"), ("**C**", "C"), ("Answer: a", "A"), ("answer is d", "D"),
    (" D\n", "D"), ("(A)", "A"), ("The answer is C.", "C"), ("C. Motion blur", "C"),
    ("Reflection artifacts", "B"), ("No visible degradation (high-quality image).", "D"),
    ("Category: B", "B"), ("`A`", "A"),
    # a leading capital "A" that is an article, not the answer
    ("A motion blurred photo.", "C"), ("A reflection artifact is visible", "B"),
    ("A clear, high-quality image", "D"), ("A\nExplanation: noise", "A"),
    ("D (no visible degradation)", "D"), ("This image shows reflection artifacts, so B.", "B"),
    ("I think it's C.", "C"),
])
def test_parse_letter_tolerant(text, expected):
    assert parse_letter(text) == Degradation(expected)


@pytest.mark.parametrize("text", ["", "@@@", "I cannot tell", "A or B", "a photo of a cat",
                                  "Motion blur and reflection artifacts", "It is A or B.",
                                  "Either A or C"])
def test_parse_letter_rejects_garbage(text):
    assert parse_letter(text) is None


def test_parse_structured_validates_and_clips():
    text = ('Sure! {"class": "a", "degradations": ['
            '{"type": "noise", "severity": 1.7, "params": {"noise_sigma": 400, "bogus": 1}},'
            '{"type": "JPEG compression", "severity": 0.4, "params": {"jpeg_quality": "35"}},'
            '{"type": "motion blur", "severity": 0.2, "params": {"blur_angle": 370,'
            ' "blur_length": -3}},'
            '{"type": "aliens", "severity": 1}]}')
    p = parse_structured(text)
    assert p["class"] == "A"
    types = [d["type"] for d in p["degradations"]]
    assert types == ["noise", "jpeg", "motion_blur"]
    assert p["degradations"][0]["severity"] == 1.0
    assert p["degradations"][0]["params"] == {"noise_sigma": 100.0}
    assert p["degradations"][1]["params"] == {"jpeg_quality": 35.0}
    assert p["degradations"][2]["params"] == {"blur_angle": 10.0, "blur_length": 0.0}
    sc = structured_scores(p)
    assert abs(sum(sc.values()) - 1) < 1e-9 and max(sc, key=sc.get) == "A"
    clean = structured_scores(parse_structured('{"class": "D", "degradations": []}'))
    assert max(clean, key=clean.get) == "D"
    for bad in ("no json here", "{not json}", "[1, 2]", '{"degradations": 1}', "{}"):
        with pytest.raises(VLMAnswerError):
            parse_structured(bad)


@pytest.mark.parametrize("cls,expected", [
    ("clean", None), ("blurry", None), ("Motion blur", None), ("none", None), (None, None),
    (2, None), ("b", "B"), ("(C)", "C"), ("A. Super-resolution", "A"), (" D ", "D"),
])
def test_parse_structured_reads_the_class_only_from_a_letter(cls, expected):
    """"clean" is not C, "blurry" not B: a word is never read by its first character."""
    assert parse_structured(json.dumps({"class": cls, "degradations": []}))["class"] == expected


def test_parse_structured_odd_but_readable_answers():
    # "degradations" that is not a list: no degradations (it raised TypeError)
    assert parse_structured('{"class": "D", "degradations": 1}') == {"class": "D",
                                                                     "degradations": []}
    assert parse_structured('{"class": "A", "degradations": true}')["degradations"] == []
    one = parse_structured('{"class": "A", "degradations": {"type": "noise", "severity": 0.4}}')
    assert one["degradations"] == [{"type": "noise", "severity": 0.4, "params": {}}]
    # an object followed by more text with braces (a greedy match was not JSON)
    two = parse_structured('Here: {"class": "B", "degradations": []} and also {"note": 1}')
    assert two == {"class": "B", "degradations": []}
    assert parse_structured('{oops} then {"class": "C"}')["class"] == "C"
    # true is not a number
    p = parse_structured('{"class": "A", "degradations": [{"type": "jpeg", "severity": true, '
                         '"params": {"jpeg_quality": true, "noise_sigma": false}}]}')
    assert p["degradations"] == [{"type": "jpeg", "severity": 0.5, "params": {}}]


def test_unlisted_weights_in_the_folder_are_never_loaded(letter_runtime, tmp_path):
    """Released as shards + index; an unhashed model.safetensors dropped beside them (which
    transformers would prefer) stops the load instead, until removed."""
    import json

    from safetensors.torch import load_file, save_file

    from engine.models.store import UnexpectedModelFiles
    from engine.understand.vlm import load_vlm

    installed = letter_runtime.store.model_dir("qwen2.5-vl-3b")
    src = tmp_path / "src"
    src.mkdir()
    w = load_file(str(installed / "model.safetensors"))
    keys = sorted(w)
    wm = {}
    for i, part in enumerate((keys[:len(keys) // 2], keys[len(keys) // 2:]), 1):
        name = f"model-0000{i}-of-00002.safetensors"
        save_file({k: w[k].contiguous() for k in part}, str(src / name), metadata={"format": "pt"})
        wm.update(dict.fromkeys(part, name))
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {},
                                                                   "weight_map": wm}))
    for p in installed.iterdir():
        if p.is_file() and not p.name.startswith(".") and p.name != "model.safetensors":
            (src / p.name).write_bytes(p.read_bytes())
    store = _install(tmp_path, src)
    folder = store.model_dir("qwen2.5-vl-3b")
    save_file({k: torch.full_like(v, 0.123) for k, v in w.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UnexpectedModelFiles, match="model.safetensors"):
        load_vlm(make_runtime(store), "qwen2.5-vl-3b")
    assert store.verify("qwen2.5-vl-3b", repair=True).removed == ["model.safetensors"]
    loaded = load_vlm(make_runtime(store), "qwen2.5-vl-3b")
    name = "lm_head.weight"
    torch.testing.assert_close(dict(loaded.model.named_parameters())[name].detach(), w[name])


def test_vlm_dtype_follows_the_precision_setting(letter_runtime, monkeypatch):
    from engine.models.runtime import ModelRuntime
    from engine.understand.vlm import load_vlm, vlm_dtype
    from tests.model_helpers import fake_gpu

    # (room for the three: 8.5 GB in bf16, 8.5 in fp16, 17 in fp32)
    rt = ModelRuntime(fake_gpu(40 << 30), letter_runtime.store)
    got = {}
    for setting, dtype in (("auto", torch.bfloat16), ("fp32", torch.float32),
                           ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        monkeypatch.setenv("MEND_PRECISION", setting)
        assert vlm_dtype(rt, "qwen2.5-vl-3b") == dtype
        got[setting] = load_vlm(rt, "qwen2.5-vl-3b")  # the setting changes live: no stale model
        assert next(got[setting].model.parameters()).dtype == dtype
    assert len({id(v) for v in got.values()}) == 3  # auto and bf16 share one (same dtype)
    assert got["auto"] is got["bf16"]


# ----------------------------------------------------------------------------- audit fixes

def _gpu(runtime):
    from engine.models.runtime import ModelRuntime
    from tests.model_helpers import fake_gpu

    return ModelRuntime(fake_gpu(20 << 30), runtime.store)


def _spy_generate(monkeypatch, loaded) -> list[dict]:
    """Record each generate call's keyword arguments (and batch size) on ``loaded``'s model."""
    calls: list[dict] = []
    real = loaded.model.generate

    def spy(**kw):
        calls.append(dict(kw, batch=int(kw["input_ids"].shape[0])))
        return real(**kw)

    monkeypatch.setattr(loaded.model, "generate", spy)
    return calls


def _answers(monkeypatch, loaded, replace: dict[int, str]) -> None:
    """Replace the decoded answers of the batch items in ``replace`` (index -> text): what a
    real model's unreadable or wordy answer would be."""
    real = loaded.processor.batch_decode

    def decode(seqs, **kw):
        out = real(seqs, **kw)
        for i, t in replace.items():
            if i < len(out):
                out[i] = t
        return out

    monkeypatch.setattr(loaded.processor, "batch_decode", decode)


@pytest.fixture(scope="module")
def release_runtime(tmp_path_factory):
    """The tiny model in a real release's processor layout: preprocessor_config.json with
    min_pixels / max_pixels (12845056, Qwen/Qwen2.5-VL-3B-Instruct's) and chat_template.json."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("qwen_release")
    src = build_tiny_qwen(root / "src", rig=("B", "C"))
    rel = root / "release"
    rel.mkdir()
    for f in src.iterdir():
        if f.name not in ("processor_config.json", "chat_template.jinja"):
            (rel / f.name).write_bytes(f.read_bytes())
    (rel / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}))
    (rel / "chat_template.json").write_text(json.dumps(
        {"chat_template": (src / "chat_template.jinja").read_text()}))
    # the release's sampling settings (Qwen2.5-VL's generation_config.json), its token ids
    gen = json.loads((src / "generation_config.json").read_text())
    (rel / "generation_config.json").write_text(json.dumps({
        "bos_token_id": gen["bos_token_id"], "pad_token_id": gen["pad_token_id"],
        "eos_token_id": [gen["eos_token_id"], gen["pad_token_id"]], "do_sample": True,
        "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}))
    return make_runtime(_install(root, rel))


def test_a_release_processor_config_keeps_the_device_pixel_budget(release_runtime, monkeypatch):
    from engine.understand.vlm import load_vlm, max_pixels_for

    loaded = load_vlm(release_runtime, "qwen2.5-vl-3b")
    calls = _spy_generate(monkeypatch, loaded)
    img = np.random.default_rng(0).random((1200, 1600, 3)).astype(np.float32)
    d = VLMClassifier(runtime=release_runtime, max_new_tokens=1,
                      with_measurements=False).classify(img)
    assert d.label.value in "BC"
    _, h, w = calls[0]["image_grid_thw"][0].tolist()
    budget = max_pixels_for(release_runtime.device)  # 256 tokens of 28 x 28 px on a CPU
    assert h * w * 14 * 14 <= budget, (h, w)  # the release's 12845056 gave 520 tokens


@pytest.mark.parametrize("shape", [(16, 4000), (28, 6000), (3000, 14), (1, 900), (60, 80)])
def test_to_pil_keeps_strips_within_the_processors_aspect_ratio(shape):
    from engine.understand.vlm import MAX_ASPECT, _to_pil

    im = _to_pil(np.full((*shape, 3), 0.5, np.float32), 256 * 28 * 28)
    w, h = im.size
    assert max(w, h) <= MAX_ASPECT * min(w, h) and max(w, h) / min(w, h) < 200
    assert (h >= w) == (shape[0] >= shape[1])  # still a strip the same way round


def test_a_panorama_strip_is_diagnosed(letter_runtime):
    clf = VLMClassifier(runtime=letter_runtime, max_new_tokens=1, with_measurements=False)
    strip = np.random.default_rng(1).random((16, 4000, 3)).astype(np.float32)
    assert clf.classify(strip).label.value in "BC"  # the processor raised ValueError (250:1)


def test_out_of_memory_in_generate_is_the_engines_and_auto_falls_back(letter_runtime,
                                                                        monkeypatch):
    from engine.errors import OutOfMemory
    from engine.understand.vlm import load_vlm

    gpu = _gpu(letter_runtime)
    loaded = load_vlm(gpu, "qwen2.5-vl-3b")

    def oom(**kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loaded.model, "generate", oom)
    with pytest.raises(OutOfMemory):
        VLMClassifier(runtime=gpu, max_new_tokens=1).classify(_img(7))
    d = get_classifier("auto", runtime=gpu, max_new_tokens=1).classify(_img(7))
    assert d.backend == "builtin" and "VLM unavailable: not enough memory" in d.rationale


def test_a_batch_out_of_memory_is_split(letter_runtime, monkeypatch):
    from engine.understand.vlm import load_vlm

    loaded = load_vlm(letter_runtime, "qwen2.5-vl-3b")
    real = loaded.model.generate
    batches = []

    def small_only(**kw):
        batches.append(int(kw["input_ids"].shape[0]))
        if batches[-1] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(**kw)

    monkeypatch.setattr(loaded.model, "generate", small_only)
    clf = VLMClassifier(runtime=letter_runtime, max_new_tokens=1, with_measurements=False)
    out = clf.classify_batch([_img(1), _img(2), _img(3)], [None] * 3)
    assert [d.label.value in "BC" for d in out] == [True] * 3
    assert batches == [3, 1, 2, 1, 1]


def test_paper_mode_asks_for_logits_only_and_structured_for_neither(letter_runtime,
                                                                    monkeypatch):
    from engine.understand.vlm import load_vlm

    calls = _spy_generate(monkeypatch, load_vlm(letter_runtime, "qwen2.5-vl-3b"))
    VLMClassifier(runtime=letter_runtime, max_new_tokens=1).classify(_img(8))
    assert calls[-1]["output_logits"] and not calls[-1].get("output_scores")
    with pytest.raises(VLMAnswerError):  # (the rigged model writes letters, not JSON)
        VLMClassifier(runtime=letter_runtime, mode="structured", max_new_tokens=2).classify(
            _img(8))
    assert not calls[-1].get("output_logits") and not calls[-1].get("output_scores")


def test_a_class_read_from_words_gets_the_letter_odds_not_certainty(letter_runtime,
                                                                   monkeypatch):
    from engine.understand.vlm import load_vlm

    _answers(monkeypatch, load_vlm(letter_runtime, "qwen2.5-vl-3b"), {0: "Reflection artifacts"})
    d = VLMClassifier(runtime=letter_runtime, max_new_tokens=1,
                      with_measurements=False).classify(_img(9))
    assert d.label == Degradation.B  # the label is the text's
    assert abs(sum(d.scores.values()) - 1) < 1e-6 and d.confidence < 1.0
    # the letters' softmax at the first position (the rig gives A and D the same logit)
    assert abs(d.scores["A"] - d.scores["D"]) < 1e-6 and 0 < d.scores["A"] < 0.5
    assert "read from the words" in d.rationale


def test_one_unreadable_answer_costs_only_its_own_photo(letter_runtime, monkeypatch):
    from engine.understand.vlm import load_vlm

    imgs = [_img(10), _img(11), _img(12)]
    _answers(monkeypatch, load_vlm(letter_runtime, "qwen2.5-vl-3b"), {1: "I cannot tell"})
    out = VLMClassifier(runtime=letter_runtime, max_new_tokens=1,
                        with_measurements=False).classify_batch(imgs, [None] * 3)
    assert isinstance(out[1], VLMAnswerError)
    assert [d.backend for i, d in enumerate(out) if i != 1] == ["vlm", "vlm"]
    gpu = _gpu(letter_runtime)
    _answers(monkeypatch, load_vlm(gpu, "qwen2.5-vl-3b"), {1: "I cannot tell"})
    out = get_classifier("auto", runtime=gpu, max_new_tokens=1).classify_batch(imgs, [None] * 3)
    assert [d.backend for d in out] == ["vlm", "builtin", "vlm"]
    assert "VLM unavailable" in out[1].rationale and "I cannot tell" in out[1].rationale


def test_auto_without_a_runtime_uses_the_default_one(letter_runtime, monkeypatch):
    import engine.understand.runtime_default as RD

    monkeypatch.setattr(RD, "_runtime", _gpu(letter_runtime))  # a GPU with the VLM installed
    assert diagnose(_img(13), backend="auto", max_new_tokens=1).backend == "vlm"
    monkeypatch.setattr(RD, "_runtime", letter_runtime)  # the same on a CPU: the analyzer
    assert diagnose(_img(13), backend="auto", max_new_tokens=1).backend == "builtin"


@pytest.mark.parametrize("backend", ["builtin", "vlm", "auto"])
def test_diagnose_many_needs_one_photo_per_image(backend, letter_runtime):
    from engine.errors import UsageError
    from engine.understand import diagnose_many

    imgs = [_img(14), _img(15)]
    with pytest.raises(UsageError, match="2 image"):
        diagnose_many(imgs, [None], backend=backend, runtime=letter_runtime, max_new_tokens=1)
    assert len(diagnose_many(imgs[:1], None, backend="builtin")) == 1


def test_cli_classify_batches_a_folder_a_few_photos_at_a_time(letter_runtime, monkeypatch,
                                                              tmp_path, capsys):
    """`mend classify FOLDER --backend vlm`: photos go to the model 4 at a time (decoded 4 at
    a time), one line per photo in order; an unreadable answer or a broken file is that
    photo's error line only."""
    from PIL import Image

    from engine import cli, imageio
    from engine.pipeline import Engine
    from engine.understand.vlm import load_vlm

    rng = np.random.default_rng(5)
    names = ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png"]
    for n in names:
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / n)
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    monkeypatch.setattr(Engine, "runtime", property(lambda self: letter_runtime))
    loaded = load_vlm(letter_runtime, "qwen2.5-vl-3b")
    calls = _spy_generate(monkeypatch, loaded)
    # (the rig repeats its letter up to the CLI's 8 tokens: read "B"; b.png's is unreadable)
    monkeypatch.setattr(loaded.processor, "batch_decode", lambda seqs, **kw: [
        "I cannot tell" if (len(seqs), i) == (3, 1) else "B" for i in range(len(seqs))])
    loads = []
    real_load = imageio.load_photo

    def load(path, *a, **kw):
        loads.append((Path(path).name, len(calls)))
        return real_load(path, *a, **kw)

    monkeypatch.setattr(imageio, "load_photo", load)
    assert cli.main(["classify", str(tmp_path), "--backend", "vlm", "--json"]) == 1
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [Path(o["path"]).name for o in out] == names
    assert [calls_["batch"] for calls_ in calls] == [3, 2]  # a,b,d (c broken) then e,f
    assert [n for n, _ in loads] == names and {k for _, k in loads[:4]} == {0}
    assert {k for _, k in loads[4:]} == {1}  # the second chunk decoded after the first ran
    by = {Path(o["path"]).name: o for o in out}
    assert "did not answer with a class letter" in by["b.png"]["error"]
    assert "c.png" in by["c.png"]["error"] and "internal error" not in by["c.png"]["error"]
    for n in ("a.png", "d.png", "e.png", "f.png"):
        assert by[n]["backend"] == "vlm" and by[n]["label"] == "B"


# ----------------------------------------------------------------------------- cancel inside

def _pre_hooks() -> int:
    """Global forward pre-hooks in place (``tiling.checking`` adds one while a model runs)."""
    from torch.nn.modules import module

    return len(module._global_forward_pre_hooks)


def test_a_cancel_stops_generate_inside_the_model_and_the_next_job_works(garbage_runtime):
    """A cancel from another thread while the model writes its answer stops ``generate`` within
    a layer (a forward pre-hook checks before each one), as the engine's Cancelled; before, the
    whole answer (1500 tokens here, seconds) ran first. The cached model stays whole (same
    cache, hook removed) and the next diagnosis reads the same answer as before the cancel."""
    import threading
    import time

    from engine.errors import Cancelled
    from engine.progress import CancelToken
    from engine.understand.vlm import load_vlm

    img = _img(20)
    short = VLMClassifier(runtime=garbage_runtime, max_new_tokens=6, with_measurements=False)
    with pytest.raises(VLMAnswerError) as before:  # (the rig writes "@" and "#" only)
        short.classify(img)
    keys, hooks = garbage_runtime.cached_keys(), _pre_hooks()
    model = load_vlm(garbage_runtime, "qwen2.5-vl-3b").model
    steps: list[float] = []
    third = threading.Event()

    def on_step(*_):
        steps.append(time.perf_counter())
        if len(steps) == 3:
            third.set()

    token, at = CancelToken(), []

    def cancel():  # from another thread, as the app's Stop button does
        if third.wait(120):
            token.cancel()
            at.append((time.perf_counter(), len(steps)))

    watch = model.lm_head.register_forward_hook(on_step)
    th = threading.Thread(target=cancel)
    th.start()
    clf = VLMClassifier(runtime=garbage_runtime, mode="structured", max_new_tokens=1500,
                        with_measurements=False, cancel_check=token.check)
    try:
        with pytest.raises(Cancelled):
            clf.classify(img)
        raised = time.perf_counter()
    finally:
        watch.remove()
        third.set()
        th.join()
    assert at, "the answer ended before three tokens"
    assert raised - at[0][0] < 2.0, raised - at[0][0]  # measured: < 1 ms (2.5 s before)
    assert len(steps) <= at[0][1] + 1, (len(steps), at[0][1])  # not one more token after it
    assert _pre_hooks() == hooks and garbage_runtime.cached_keys() == keys
    with pytest.raises(VLMAnswerError) as after:
        short.classify(img)
    assert after.value.answer == before.value.answer


def test_a_cancel_during_the_measurements_stops_the_whole_batch(letter_runtime, monkeypatch):
    """The analyzer's measurements that ride along are cancellable too, and a cancel there is
    the job's, raised for the batch - not one photo's error beside the others' diagnoses."""
    from engine.errors import Cancelled
    from engine.progress import CancelToken
    from engine.understand import measure as M

    token = CancelToken()
    real = M.estimate_noise

    def noise(*a, **k):
        token.cancel()
        return real(*a, **k)

    monkeypatch.setattr(M, "estimate_noise", noise)
    clf = VLMClassifier(runtime=letter_runtime, max_new_tokens=1, cancel_check=token.check)
    with pytest.raises(Cancelled):
        clf.classify_batch([_img(21), _img(22)], [None, None])


def test_auto_does_not_answer_a_cancel_with_the_analyzer(letter_runtime):
    """On a GPU "auto" falls back to the analyzer when the VLM fails; a cancel is not a
    failure: it is raised, never answered with another diagnosis. Cancelled while the vision
    tower runs, the language model never starts."""
    from torch.nn.modules.module import register_module_forward_hook

    from engine.errors import Cancelled
    from engine.progress import CancelToken
    from engine.understand.vlm import load_vlm

    gpu = _gpu(letter_runtime)
    model = load_vlm(gpu, "qwen2.5-vl-3b").model
    token, text_model = CancelToken(), []

    def cancel_after_the_first_layer(*_):
        token.cancel()

    hooks = _pre_hooks()
    watch = model.model.language_model.register_forward_pre_hook(
        lambda *_: text_model.append(1))
    handle = register_module_forward_hook(cancel_after_the_first_layer)
    try:
        with pytest.raises(Cancelled):
            diagnose(_img(23), backend="auto", runtime=gpu, max_new_tokens=1,
                     cancel_check=token.check)
    finally:
        handle.remove()
        watch.remove()
    assert text_model == [] and _pre_hooks() == hooks


# ----------------------------------------------------------------------------- issue 3 audit

def test_the_model_reads_the_papers_prompt_word_for_word_after_the_image(letter_runtime,
                                                                        monkeypatch):
    """What reaches the model, decoded from its input ids: the image, then the paper's prompt
    as it stands in the paper, then the assistant's turn; a batch of photos of different token
    counts is padded on the left (a decoder-only model continues each row from its last
    token)."""
    from engine.understand.vlm import load_vlm

    loaded = load_vlm(letter_runtime, "qwen2.5-vl-3b")
    calls = _spy_generate(monkeypatch, loaded)
    VLMClassifier(runtime=letter_runtime, max_new_tokens=1, with_measurements=False
                  ).classify_batch([_img(1), _img(2, 40, 100)], [None, None])
    ids, mask = calls[-1]["input_ids"], calls[-1]["attention_mask"]
    assert bool(mask[:, -1].all()) and not bool(mask[:, 0].all())  # left padding
    tok = loaded.processor.tokenizer
    for row, m in zip(ids, mask):
        text = tok.decode(row[m.bool()])
        assert text.count(PAPER_PROMPT) == 1
        after_image = text.split("<|vision_end|>", 1)[1]
        assert after_image == PAPER_PROMPT + "<|im_end|>\n<|im_start|>assistant\n"


def test_decoding_is_greedy_and_quiet_under_a_releases_sampling_config(release_runtime,
                                                                      monkeypatch, recwarn,
                                                                      capfd):
    """Qwen2.5-VL's own generation_config.json samples (do_sample, temperature 0.1, top_p,
    top_k): the diagnosis decodes greedily all the same, gives the same scores every time,
    and no sampling-flag warning is printed."""
    from engine.understand.vlm import load_vlm

    loaded = load_vlm(release_runtime, "qwen2.5-vl-3b")
    assert loaded.model.generation_config.do_sample  # (the release's config was read)
    calls = _spy_generate(monkeypatch, loaded)
    clf = VLMClassifier(runtime=release_runtime, max_new_tokens=1, with_measurements=False)
    a, b = clf.classify(_img(30)), clf.classify(_img(30))
    assert a.scores == b.scores and a.label == b.label
    assert all(c["do_sample"] is False and c["num_beams"] == 1 for c in calls)
    said = " ".join(str(w.message) for w in recwarn) + capfd.readouterr().err
    for flag in ("temperature", "top_p", "top_k", "do_sample"):
        assert flag not in said, said


@pytest.fixture(scope="module")
def lower_runtime(tmp_path_factory):
    """Qwen2.5's letter tokens (" A" ... " d" tokens of their own) and a model that writes its
    answer letter in lower case ("b" or "c")."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("qwen_lower")
    src = build_tiny_qwen(root / "src", rig=("b", "c"), space_letters=True)
    return make_runtime(_install(root, src))


def test_an_answer_letter_in_either_case_is_scored_where_it_stands(lower_runtime):
    """Every spelling of a letter is one of its tokens: "A", " A", "a", " a". An answer "b"
    (which the parser reads as B) was scored on the upper-case letters alone at its position:
    an even 25 % each, the label from the words, the model's own odds lost."""
    from engine.understand.vlm import letter_token_ids, load_vlm

    tok = load_vlm(lower_runtime, "qwen2.5-vl-3b").processor.tokenizer
    ids = letter_token_ids(tok)
    for c in "ABCD":
        spellings = [tok.encode(s, add_special_tokens=False)
                     for s in (c, " " + c, c.lower(), " " + c.lower())]
        assert all(len(x) == 1 for x in spellings)
        assert sorted(ids[c]) == sorted(x[0] for x in spellings)
    d = VLMClassifier(runtime=lower_runtime, max_new_tokens=1,
                      with_measurements=False).classify(_img(0))
    assert d.label.value in "BC" and "letter at generated position 0" in d.rationale
    assert d.label.value == max(d.scores, key=d.scores.get) and d.confidence > 0.9


@pytest.mark.parametrize("text,pos", [
    ("Answer: a", 7), ("b.", 0), ("(c)", 1), (" D", 0), ("The answer is d", 12),
    ("Super-resolution degradation, a noisy photo", None),  # "a": an article, not the letter
])
def test_a_lower_case_letter_counts_only_where_no_word_follows(lower_runtime, text, pos):
    from engine.understand.vlm import load_vlm

    loaded = load_vlm(lower_runtime, "qwen2.5-vl-3b")
    ids = loaded.processor.tokenizer.encode(text, add_special_tokens=False)
    logits = torch.randn(len(ids), len(loaded.processor.tokenizer),
                         generator=torch.Generator().manual_seed(1))
    _, scores, why = VLMClassifier(runtime=lower_runtime)._paper(
        loaded, torch.tensor(ids), text, list(logits))
    assert abs(sum(scores.values()) - 1) < 1e-6
    if pos is None:
        assert "read from the words" in why
    else:
        assert f"letter at generated position {pos}" in why


def test_a_structured_answer_past_pythons_number_and_nesting_limits_is_no_crash():
    """Integers too large for a float (OverflowError), of over 4300 digits (ValueError) and
    nesting deeper than Python's parser goes (RecursionError) crashed the parser - an internal
    error, and "auto" did not fall back to the analyzer. Now a value out of reach is dropped
    as NaN is, and text that cannot be read is the answer's error."""
    big = "1" + "0" * 400
    p = parse_structured(json.dumps({"class": "A", "degradations": [{
        "type": "noise", "severity": int(big), "params": {"noise_sigma": int(big),
                                                          "jpeg_quality": 30}}]}))
    assert p["degradations"] == [{"type": "noise", "severity": 0.5,
                                  "params": {"jpeg_quality": 30.0}}]
    for text in ('{"class": "A", "degradations": [{"type": "noise", "severity": 1'
                 + "0" * 5000 + "}]}",
                 '{"class": "A", "degradations": ' + "[" * 5000 + "]" * 5000 + "}"):
        with pytest.raises(VLMAnswerError):
            parse_structured(text)


def test_the_model_is_chosen_by_its_memory_in_the_dtype_it_loads_in(letter_runtime, tmp_path):
    """The manifest's memory figure is for the 16-bit weights; on MPS (and the CPU) the VLM
    loads in fp32, twice that: with 30 GB to use, the 7B (17 GB in bf16, 34 GB in fp32) was
    chosen on MPS and did not fit; the 3B is. A CUDA GPU loads bf16: the 7B fits there."""
    import dataclasses

    from engine.models.runtime import ModelRuntime
    from engine.understand.vlm import load_vlm
    from tests.model_helpers import fake_gpu, install_test_model

    folder = letter_runtime.store.model_dir("qwen2.5-vl-3b")
    files = {p.name: p for p in sorted(folder.iterdir())
             if p.is_file() and not p.name.startswith(".")}
    store = install_test_model(tmp_path / "store", "qwen2.5-vl-3b", files)
    store = install_test_model(tmp_path / "store", "qwen2.5-vl-7b", files, store=store)
    gpu = fake_gpu(30 << 30)
    mps = dataclasses.replace(gpu, kind="mps", supports_bf16=False)
    assert VLMClassifier(runtime=ModelRuntime(mps, store)).pick_model() == "qwen2.5-vl-3b"
    assert VLMClassifier(runtime=ModelRuntime(gpu, store)).pick_model() == "qwen2.5-vl-7b"
    # the cache counts what the loaded model takes in its dtype (fp32 on this CPU)
    from engine.understand.vlm import vlm_bytes

    rt = ModelRuntime(letter_runtime.device, store, budget=64 << 30)
    load_vlm(rt, "qwen2.5-vl-3b")
    assert rt.cached_bytes == vlm_bytes(rt, "qwen2.5-vl-3b", torch.float32) == 17000 << 20
