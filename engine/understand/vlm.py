"""Qwen2.5-VL diagnosis: the paper's zero-shot prompt, and a structured (DU-VLM style) mode.

"paper": the paper's prompt word for word (resources/prompts/paper_classify.txt); the class
scores are the softmax of the logits of the answer-letter tokens A/B/C/D (each letter's
spellings pooled: either case, with or without a leading space) at the position where
the model writes its letter as a word of its own (the first generated token when it answers
plainly; never the first letter of a word split into tokens), so every
diagnosis has a confidence and a runner-up. The text is parsed tolerantly ("B.", "**C**",
"Answer: a", a bare "b", CJK punctuation "B。"); an answer that names no class is an error,
never a guess. A class read from
words ("Reflection artifacts": no letter token) keeps that label, with the letters' softmax at
the first generated position as its scores (the model's odds, not a certainty).

"structured": asks for JSON of every degradation with a severity and physical parameters
(zero-shot, the idea of DU-VLM); the values are validated, clipped to physical ranges and
merged with the built-in analyzer's measurements.

Weights come from the model store (``runtime.path("qwen2.5-vl-3b" | "qwen2.5-vl-7b")``) with
``local_files_only=True``; remote code is never trusted.

Cancel (``cancel_check``): checked before every layer inside ``generate`` (a forward pre-hook,
``tiling.checking``, not a StoppingCriteria: that is asked only between tokens, after the
vision tower and the whole prompt have run, and would end the answer early instead of
stopping), and between the analyzer's measurements. Loading the model is not interrupted: a
cached model is always a whole one.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..api import CLASSES, Degradation, Diagnosis, normalise_scores
from ..errors import Cancelled, EngineError, ModelMissing
from ..resources import resource
from .base import StoredModelClassifier, model_rgb8, photos_for, register_classifier

PROMPTS = resource("prompts")
MODEL_IDS = ("qwen2.5-vl-7b", "qwen2.5-vl-3b")  # best first
LETTERS = tuple(c.value for c in CLASSES)


class VLMAnswerError(EngineError):
    """The vision-language model's answer could not be read as a diagnosis. ``truncated``: it
    stops inside its JSON object (cut off, as by ``max_new_tokens``)."""

    def __init__(self, answer: str, what: str = "a class letter A, B, C or D",
                 truncated: bool = False) -> None:
        self.answer = answer
        self.truncated = truncated
        short = answer if len(answer) <= 120 else answer[:117] + "…"
        super().__init__(f"the vision-language model did not answer with {what}: {short!r}")


def load_prompt(name: str) -> str:
    return (PROMPTS / f"{name}.txt").read_text(encoding="utf-8").strip()


# ----------------------------------------------------------------------------- parsing

_NAMES = {
    "A": ("super-resolution", "super resolution", "low resolution", "noise", "jpeg"),
    "B": ("reflection",),
    "C": ("motion blur", "motion-blur"),
    "D": ("no visible degradation", "high-quality", "high quality", "no degradation"),
}


def parse_letter(text: str) -> Degradation | None:
    """The class a free-text answer names, or None when it names none (or several)."""
    t = (text or "").strip()
    if not t:
        return None
    clean = re.sub(r"[*_`#>\"'“”‘’\[\]「」【】]", " ", t).strip()
    # the whole answer one letter, in either case ("b", "c.", "(d)", "B。")
    m = re.fullmatch(r"\(?([A-Da-d])\)?\s*[.,:;!)。，：；！）]?", clean)
    if m:
        return Degradation(m.group(1).upper())
    # a bare leading letter must be upper case ("a photo..." is not an answer) and not an
    # article: "A motion blurred photo." names C, not A (a lower-case word follows)
    m = re.match(r"^\(?([ABCD])\)?(?=$|[.,:;)!\-。，：；！）]|\s+(?![a-z]))", clean)
    if not m:
        m = re.match(r"^(?:the\s+)?(?:final\s+)?(?:answer|result|category|class|type|"
                     r"degradation(?:\s+type)?)\s*(?:is)?\s*[:\-=：]?\s*\(?([A-Da-d])\)?"
                     r"(?=$|[\s.,:;)!\-。，：；！）])", clean, flags=re.IGNORECASE)
    standalone = set(re.findall(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])", clean))
    if m:
        letter = m.group(1).upper()
        return Degradation(letter) if standalone <= {letter} else None
    m = re.search(r"(?:answer|result|category|class)\s*(?:is)?\s*[:\-=：]?\s*\(?([A-Da-d])\)?"
                  r"(?=$|[\s.,:;)!。，：；！）])", clean, flags=re.IGNORECASE)
    if m:
        return Degradation(m.group(1).upper())
    letters = set(re.findall(r"(?<![A-Za-z])([ABCD])(?=[.):。：）]|\s*$)", clean))
    if len(letters) == 1 and standalone <= letters:  # "A or B" names no one class
        return Degradation(letters.pop())
    low = clean.lower()
    hits = {k for k, names in _NAMES.items() if any(n in low for n in names)}
    if len(hits) == 1:
        return Degradation(hits.pop())
    return None


# physical ranges for the structured mode (clip into these)
PARAM_RANGES: dict[str, tuple[float, float]] = {
    "noise_sigma": (0.0, 100.0),
    "jpeg_quality": (1.0, 100.0),
    "blur_sigma": (0.0, 20.0),
    "scale": (1.0, 8.0),
    "blur_length": (0.0, 200.0),
    "blur_angle": (0.0, 180.0),
    "reflection_strength": (0.0, 1.0),
}
TYPE_CLASS = {"noise": "A", "jpeg": "A", "blur": "A", "low_resolution": "A",
              "motion_blur": "C", "reflection": "B"}
_TYPE_ALIASES = {"jpeg_compression": "jpeg", "compression": "jpeg", "lowres": "low_resolution",
                 "low-resolution": "low_resolution", "motion": "motion_blur",
                 "motion-blur": "motion_blur", "defocus": "blur", "defocus_blur": "blur",
                 "reflections": "reflection", "glare": "reflection"}


def parse_structured(text: str) -> dict[str, Any]:
    """Validate the structured answer: {"class", "degradations": [{type, severity, params}]}.

    Unknown types and parameters are dropped, numbers clipped to physical ranges (angles
    wrapped into [0, 180)). Raises VLMAnswerError when there is no usable JSON object (with
    ``truncated`` set when the answer stops inside one).
    """
    obj = _first_json_object(text or "")
    raw = obj.get("degradations")
    if isinstance(raw, dict):  # one degradation given on its own
        raw = [raw]
    degs = []
    for d in raw if isinstance(raw, list) else []:
        if not isinstance(d, dict):
            continue
        typ = str(d.get("type", "")).strip().lower().replace(" ", "_")
        typ = _TYPE_ALIASES.get(typ, typ)
        if typ not in TYPE_CLASS:
            continue
        sev = _num(d.get("severity"), 0.5)
        params = {}
        for k, v in (d.get("params") or {}).items() if isinstance(d.get("params"), dict) else []:
            if k in PARAM_RANGES:
                x = _num(v, None)
                if x is None:
                    continue
                if k == "blur_angle":
                    x = x % 180.0
                lo, hi = PARAM_RANGES[k]
                params[k] = float(min(hi, max(lo, x)))
        degs.append({"type": typ, "severity": float(min(1.0, max(0.0, sev))), "params": params})
    cls = _class_letter(obj.get("class"))
    if not cls and not degs and not isinstance(raw, list):
        raise VLMAnswerError(text, "a class or a list of degradations")
    return {"class": cls, "degradations": degs}


# what is left where the decoder stopped when the text ends inside a value: nothing, an
# unterminated string (from its quote, or from a \u escape in it), a number or
# true/false/null begun
_CUT_VALUE = re.compile(r'(?:"|u[0-9a-fA-F]{0,4})(?:[^"\\]|\\.)*\\?'
                        r"|-?\d*(?:\.\d*)?(?:[eE][+-]?\d*)?"
                        r"|t(?:r(?:ue?)?)?|f(?:a(?:l(?:se?)?)?)?|n(?:u(?:ll?)?)?")


def _first_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text``: decoded from an opening brace to its own end, so
    prose (or a second object) after it does not matter. An object that is valid up to the
    end of the text but not closed is a truncated answer (VLMAnswerError, ``truncated``): the
    objects inside it are never taken for the answer."""
    dec = json.JSONDecoder()
    found_json = False
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except json.JSONDecodeError as e:
            if _CUT_VALUE.fullmatch(text[e.pos:].rstrip()):
                raise VLMAnswerError(text, "a complete JSON object (the answer stops inside "
                                     "it: cut off)", truncated=True) from None
            continue
        except (ValueError, RecursionError):  # an integer of over 4300 digits, nesting too
            continue  # deep for Python's parser: no JSON that can be read
        if isinstance(obj, dict):
            return obj
        found_json = True
    if "{" not in text:
        raise VLMAnswerError(text, "JSON")
    raise VLMAnswerError(text, "a JSON object" if found_json else "valid JSON")


def _class_letter(v: Any) -> str | None:
    """A class named by its letter ("B", "b", "(C)", "A. Super-resolution"), else None: a word
    ("clean", "blurry") is not read by its first character."""
    if not isinstance(v, str):
        return None
    m = re.fullmatch(r"\s*\(?([A-Da-d])\)?(?:[\s.:)\-].*)?", v, flags=re.DOTALL)
    return m.group(1).upper() if m else None


def _num(v: Any, default: float | None) -> float | None:
    if isinstance(v, bool):  # JSON true/false is not a number
        return default
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):  # (a JSON integer beyond a float's range)
        return default
    return x if math.isfinite(x) else default


def structured_scores(parsed: Mapping[str, Any]) -> dict[str, float]:
    """Class scores from the structured answer: severities summed per class, the named
    class boosted, D when nothing is wrong."""
    raw = {c: 0.0 for c in LETTERS}
    for d in parsed["degradations"]:
        raw[TYPE_CLASS[d["type"]]] += 0.1 + d["severity"]
    if parsed["class"]:
        raw[parsed["class"]] += 1.0 + max(raw.values())
    if not parsed["degradations"] and not parsed["class"]:
        raw["D"] = 1.0
    if sum(raw.values()) == 0:
        raw["D"] = 1.0
    return normalise_scores(raw)


# ----------------------------------------------------------------------------- model

MIN_PIXELS = 4 * 28 * 28
# the processor refuses an image more than 200 times longer than wide; a narrower strip is
# padded to this ratio (a 16 x 4000 px panorama strip)
MAX_ASPECT = 199


def max_pixels_for(device: Any) -> int:
    """Image budget (pixels after the processor's resize), bounded by the device memory."""
    budget = int(getattr(device, "memory_budget", 0))
    kind = getattr(device, "kind", "cpu")
    if kind == "cpu":
        tokens = 256
    elif budget >= 20 << 30:
        tokens = 1280
    elif budget >= 10 << 30:
        tokens = 768
    else:
        tokens = 384
    return tokens * 28 * 28


def _to_pil(image: np.ndarray, max_pixels: int):
    """The photo as the processor's RGB image: reduced early to about ``2 * max_pixels`` (the
    processor resizes anyway), a strip padded to ``MAX_ASPECT``. Grey, alpha and 16-bit
    photos as ``base.model_rgb8`` reads them."""
    from PIL import Image

    im = Image.fromarray(model_rgb8(image, max_pixels, min_size=28))
    w, h = im.size
    if max(w, h) > MAX_ASPECT * min(w, h):
        # pad the short side, centred, with the photo's mean colour
        pw, ph = (w, math.ceil(w / MAX_ASPECT)) if w > h else (math.ceil(h / MAX_ASPECT), h)
        mean = tuple(int(v) for v in np.asarray(im).reshape(-1, 3).mean(axis=0))
        canvas = Image.new("RGB", (pw, ph), mean)
        canvas.paste(im, ((pw - w) // 2, (ph - h) // 2))
        im = canvas
    return im


class _Loaded:
    def __init__(self, model, processor, letter_ids: dict[str, list[int]], model_id: str,
                 device: Any | None = None):
        self.model = model
        self.processor = processor
        self.letter_ids = letter_ids
        self.model_id = model_id
        self.device = device  # the DeviceInfo it runs on (frees its cache after an OOM)


def letter_token_ids(tokenizer) -> dict[str, list[int]]:
    """Token ids that spell each answer letter on their own, in either case, with and without
    a leading space ("A", " A", "a", " a": each a token of its own in Qwen2.5's vocabulary), so
    an answer written "b" or "Answer: a" is scored where it stands, as the parser reads it."""
    out: dict[str, list[int]] = {}
    for c in LETTERS:
        ids = []
        for s in (c, " " + c, c.lower(), " " + c.lower()):
            enc = tokenizer.encode(s, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(int(enc[0]))
        if not ids:
            raise EngineError(f"the vision-language model's tokenizer has no token for '{c}'")
        out[c] = ids
    return out


def vlm_dtype(runtime: Any, model_id: str):
    """The dtype the VLM loads in: the precision setting's (``runtime.dtype_for``), except
    that under ``auto`` a bf16-capable CUDA GPU gets bf16 (Qwen2.5-VL is trained in bf16:
    preferred over fp16), and MPS always gets fp32 (fp16 attention/rotary ops overflow or
    lack kernels there)."""
    import torch

    from ..devices import precision

    device = runtime.device
    if device.kind == "mps":
        return torch.float32
    if (device.kind == "cuda" and getattr(device, "supports_bf16", False)
            and precision() == "auto" and "bf16" in runtime.store.spec(model_id).dtypes):
        return torch.bfloat16
    return runtime.dtype_for(model_id, supports_half=True, supports_bf16=True)


def vlm_bytes(runtime: Any, model_id: str, dtype: Any) -> int:
    """Memory the VLM needs in ``dtype``, 0 when unknown: the manifest's figure is for its
    released 16-bit weights (bf16: Qwen2.5-VL-3B 7.5 GB of files, 8.5 GB in the manifest), so
    fp32 (the CPU's, MPS's) needs twice that."""
    try:
        mb = int(runtime.store.spec(model_id).memory_mb or 0)
    except (KeyError, EngineError, AttributeError):
        return 0
    bits = getattr(dtype, "itemsize", 2) * 8
    return (mb << 20) * bits // 16


def load_vlm(runtime: Any, model_id: str) -> _Loaded:
    """Load (cached in the runtime) the model + processor from the store, offline only."""
    device = runtime.device
    folder = runtime.path(model_id)
    max_pixels = max_pixels_for(device)
    dtype = vlm_dtype(runtime, model_id)
    key = ("vlm", model_id, device.torch_device, max_pixels, str(dtype))

    def build() -> _Loaded:
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        # the pixel budget is set on the loaded image processor, not passed to from_pretrained:
        # transformers hands such kwargs to the tokenizer too, which passes them to every call
        # (overriding the image processor), and a release's preprocessor_config.json
        # (max_pixels 12845056) is copied into a ``size`` dict given there
        from ..models.loader import checkpoint_errors, refuse_remote_code

        refuse_remote_code()
        # (a damaged config, tokenizer or chat template - same size and time, so the cheap
        # check passed - is the model's error, UnsupportedModel, not a UnicodeDecodeError)
        with checkpoint_errors(f"{model_id} ({folder})"):
            processor = AutoProcessor.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False)
        ip = getattr(processor, "image_processor", None)
        if ip is not None:
            bound_pixels(ip, MIN_PIXELS, max_pixels)
        processor.tokenizer.padding_side = "left"
        with checkpoint_errors(f"{model_id} ({folder})"), loading_memory(model_id, device):
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False, dtype=dtype)
            model.to(device.torch_device).eval()
        return _Loaded(model, processor, letter_token_ids(processor.tokenizer), model_id,
                       device)

    need = vlm_bytes(runtime, model_id, dtype)
    return runtime.cached(key, build, need or None, model_id=model_id)


@contextlib.contextmanager
def loading_memory(model_id: str, device: Any) -> Iterator[None]:
    """A device out of memory while a model loads (its weights moved to the GPU) is the
    engine's OutOfMemory (so "auto" falls back to the analyzer), not torch's own error; the
    device's cache is emptied first."""
    from ..devices import is_oom
    from ..errors import OutOfMemory

    failed: str | None = None
    try:
        yield
    except Exception as e:
        if not is_oom(e):
            raise
        failed = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    if failed is not None:  # (raised outside the handler: torch's traceback is dropped)
        from ..devices import empty_cache

        empty_cache(device)
        raise OutOfMemory(f"not enough memory to load {model_id} on "
                          f"{getattr(device, 'torch_device', device)} ({failed}); close other "
                          "programs or use the built-in analyzer")


def bound_pixels(image_processor: Any, min_pixels: int, max_pixels: int) -> None:
    """Make the image processor resize into [min_pixels, max_pixels], whatever its class
    read from the folder's config (``size`` as a dict or an object, and/or attributes)."""
    got = getattr(image_processor, "size", None)
    edge = got.get("longest_edge") if isinstance(got, Mapping) else \
        getattr(got, "longest_edge", None)
    low = got.get("shortest_edge") if isinstance(got, Mapping) else \
        getattr(got, "shortest_edge", None)
    if (edge, low) != (max_pixels, min_pixels):
        # a fresh dict: never one the processor shares with its config
        image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    for name, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if getattr(image_processor, name, None) not in (None, v):
            setattr(image_processor, name, v)


def _generate(loaded: _Loaded, pils: list, prompt: str, max_new_tokens: int,
              want_logits: bool = True, cancel_check: Callable[[], None] | None = None
              ) -> tuple[list, list[str], list | None]:
    """Greedy answers for ``pils``: per photo its generated token ids, its text and (with
    ``want_logits``) its raw logits per generated step, (steps, vocab). A device out of
    memory raises OutOfMemory. ``cancel_check`` runs before every layer of the model, so a
    cancel stops the vision tower, the prompt or the answer within a layer (Cancelled)."""
    import torch

    from ..devices import is_oom
    from ..errors import OutOfMemory
    from ..tiling import checking

    proc = loaded.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = proc(text=[text] * len(pils), images=pils, return_tensors="pt", padding=True)
    dev = next(loaded.model.parameters()).device
    out = None
    cancelled: str | None = None
    try:
        inputs = {k: (v.to(dev) if hasattr(v, "to") else v) for k, v in inputs.items()}
        with torch.inference_mode(), checking(loaded.model, cancel_check):
            # raw logits only, and only where the letters are scored (paper mode): processed
            # scores would be tilted by the repetition penalty against the letters the prompt
            # itself contains, and every step's full-vocabulary row is ~0.6 MB per photo
            out = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens,
                                        do_sample=False, output_logits=want_logits,
                                        return_dict_in_generate=True, num_beams=1)
    except Cancelled as e:
        cancelled = str(e)
    except Exception as e:  # only a device out of memory is turned into an engine error
        if not is_oom(e):
            raise
    if cancelled is not None:
        # raised outside the handler: generate's frames (its key/value cache, on the device)
        # are freed now, not when the job's error is dropped
        inputs = None
        raise Cancelled(cancelled)
    if out is None:  # out of memory (raised outside the handler: its frames are freed first)
        inputs = None
        if loaded.device is not None:
            from ..devices import empty_cache

            empty_cache(loaded.device)
        raise OutOfMemory(f"not enough memory for the vision-language model on "
                          f"{len(pils)} photo(s); close other programs or use the built-in "
                          "analyzer")
    start = inputs["input_ids"].shape[1]
    seqs = out.sequences[:, start:].cpu()
    texts = proc.batch_decode(seqs, skip_special_tokens=True)
    scores = None
    if want_logits:
        steps = getattr(out, "logits", None) or out.scores
        stacked = torch.stack([s.float() for s in steps], dim=1).cpu()  # (batch, steps, vocab)
        scores = list(stacked)
    return list(seqs), texts, scores


def letter_position(ids: Sequence[int], letter: str, letter_ids: Mapping[str, Sequence[int]],
                    tokenizer: Any) -> int | None:
    """Where the generated ``ids`` write ``letter`` as a word of its own: its first token
    that is a spelling of the letter and is not part of a word (the "C" of "Clearly", "B" of
    "Bokeh" when a word is split into tokens), or None. A lower-case spelling counts only
    where no word follows it ("Answer: a", "b."; not the article of "a photo")."""
    mine = set(letter_ids[letter])

    def text(i: int) -> str:
        return tokenizer.decode([ids[i]], skip_special_tokens=True) if 0 <= i < len(ids) else ""

    for k, t in enumerate(ids):
        if t not in mine:
            continue
        own = text(k)
        joined_before = own[:1].isalpha() and text(k - 1)[-1:].isalpha()
        if joined_before or text(k + 1)[:1].isalpha():
            continue
        if own.strip().islower():
            rest = tokenizer.decode(list(ids[k + 1:]), skip_special_tokens=True)
            if rest.lstrip()[:1].isalpha():
                continue
        return k
    return None


def letter_scores(step_logits, letter_ids: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Softmax over the letters' logits at one position (a letter's spellings are pooled)."""
    import torch

    lg = torch.as_tensor(step_logits, dtype=torch.float32)
    per = []
    for c in LETTERS:
        per.append(torch.logsumexp(lg[list(letter_ids[c])], dim=0))
    p = torch.softmax(torch.stack(per), dim=0).tolist()
    return {c: float(v) for c, v in zip(LETTERS, p)}


def _merge_estimates(image: np.ndarray, photo: Any | None, extra: Mapping[str, Any] | None,
                     cancel_check: Callable[[], None] | None = None):
    from .analyzer import analyze

    base = analyze(image, photo, cancel_check=cancel_check)
    est = dict(base.estimates)
    if extra:
        est.update(extra)
    return base, est


def class_flags(measured: Sequence[str], scores: Mapping[str, float],
                label: Degradation | None = None) -> tuple[str, ...]:
    """The analyzer's measurement flags, with the class flags taken from this backend's scores:
    a class at least 0.3 likely, or the label (``label``, else the top score, however low:
    there are four classes), as the analyzer's own flags do."""
    keep = [f for f in measured if f not in ("motion_blur", "reflection")]
    top = label.value if label is not None else \
        (max(scores, key=scores.get) if scores else None)
    if scores.get("C", 0.0) >= 0.3 or top == "C":
        keep.append("motion_blur")
    if scores.get("B", 0.0) >= 0.3 or top == "B":
        keep.append("reflection")
    return tuple(keep)


@register_classifier("vlm")
class VLMClassifier(StoredModelClassifier):
    """Qwen2.5-VL zero-shot diagnosis (``mode`` "paper" or "structured")."""

    name = "vlm"

    def __init__(self, runtime: Any | None = None, model_id: str | None = None,
                 mode: str = "paper", max_new_tokens: int | None = None,
                 with_measurements: bool = True,
                 cancel_check: Callable[[], None] | None = None, **_: Any) -> None:
        if mode not in ("paper", "structured"):
            raise EngineError(f"unknown VLM mode {mode!r} (paper or structured)")
        super().__init__(runtime, model_id, with_measurements, cancel_check)
        self.mode = mode
        self.max_new_tokens = max_new_tokens or (8 if mode == "paper" else 256)
        self.model_loaded = False  # set once its model has loaded ("auto" reads it)

    def pick_model(self) -> str:
        rt = self._rt()
        if self.model_id:
            return self._runs(self.model_id)
        budget = int(getattr(rt.device, "memory_budget", 0))
        for mid in MODEL_IDS:
            if not rt.is_available(mid):
                continue
            self._runs(mid)  # (before vlm_dtype, which imports torch)
            need = vlm_bytes(rt, mid, vlm_dtype(rt, mid))  # (fp32 on MPS and CPU: twice)
            if mid == MODEL_IDS[0] and need and budget < need and rt.is_available(MODEL_IDS[1]):
                continue  # the 7B does not fit; the 3B is there
            return mid
        from ..models.store import install_hint

        raise self._not_installed(MODEL_IDS, ModelMissing(
            MODEL_IDS[1], f"install a Qwen2.5-VL model ({install_hint(MODEL_IDS[1])}) or use "
                          "the built-in analyzer"))

    def classify_batch(self, images: list[np.ndarray], photos: list[Any | None],
                       batch_size: int = 4) -> list[Diagnosis | EngineError]:
        """One entry per photo: its Diagnosis, or the error of its own answer (unreadable:
        VLMAnswerError) so that the other photos keep theirs. A missing model, memory short
        even for one photo, or a cancel (Cancelled), raises."""
        photos = photos_for(images, photos)
        rt = self._rt()
        self._check()
        loaded = load_vlm(rt, self.pick_model())
        self.model_loaded = True
        mp = max_pixels_for(rt.device)
        prompt = load_prompt("paper_classify" if self.mode == "paper"
                             else "structured_degradations")
        out: list[Diagnosis | EngineError] = []
        for i in range(0, len(images), batch_size):
            self._check()
            chunk = images[i:i + batch_size]
            answers = self._answers(loaded, [_to_pil(im, mp) for im in chunk], prompt)
            for im, photo, (seq, text, scores) in zip(chunk, photos[i:i + batch_size], answers):
                try:
                    if self.mode == "paper":
                        d = self._paper(loaded, seq, text, scores)
                    else:
                        d = self._structured(text)
                    out.append(self._finish(d, im, photo, loaded.model_id))
                except Cancelled:  # (in the measurements) the job's: it stops every photo
                    raise
                except EngineError as e:
                    out.append(e)
        return out

    def _answers(self, loaded: _Loaded, pils: list, prompt: str) -> list[tuple]:
        """(token ids, text, logits or None) per photo; a batch out of memory is split."""
        from ..errors import OutOfMemory

        try:
            seqs, texts, scores = _generate(loaded, pils, prompt, self.max_new_tokens,
                                            want_logits=self.mode == "paper",
                                            cancel_check=self.cancel_check)
        except OutOfMemory:
            if len(pils) == 1:
                raise
            half = len(pils) // 2
            return (self._answers(loaded, pils[:half], prompt)
                    + self._answers(loaded, pils[half:], prompt))
        return list(zip(seqs, texts, scores if scores is not None else [None] * len(texts)))

    # -- modes
    def _paper(self, loaded: _Loaded, seq, text: str, scores) -> tuple[Degradation, dict, str]:
        parsed = parse_letter(text)
        if parsed is None:
            raise VLMAnswerError(text)
        # the letter's own position: the first generated token when the model answers plainly
        pos = letter_position([int(t) for t in seq.tolist()], parsed.value, loaded.letter_ids,
                              loaded.processor.tokenizer)
        if pos is not None:
            sc = letter_scores(scores[pos], loaded.letter_ids)
            label = Degradation(max(sc, key=sc.get))
            note = f"letter at generated position {pos}"
        elif scores is not None and len(scores):
            # read from the words: the label is the text's, the scores the letters' odds where
            # a plain answer's letter would have been (so the confidence is the model's, not 1)
            sc = letter_scores(scores[0], loaded.letter_ids)
            label = parsed
            note = "class read from the words; scores: the letters' odds at the first position"
        else:  # no logits at all: say the confidence is unknown (an even split), not certain
            sc = {c: 0.25 for c in LETTERS}
            label = parsed
            note = "class read from the words; confidence unknown"
        return label, sc, f"answer {text.strip()!r}; {note}"

    def _structured(self, text: str) -> tuple[Degradation, dict, str, dict]:
        try:
            parsed = parse_structured(text)
        except VLMAnswerError as e:
            if not e.truncated:
                raise
            raise VLMAnswerError(text, "a complete JSON object (the answer stops inside it: "
                                 "cut off, as by the answer's length limit, max_new_tokens="
                                 f"{self.max_new_tokens})", truncated=True) from None
        sc = structured_scores(parsed)
        label = Degradation(max(sc, key=sc.get))
        extra: dict[str, Any] = {}
        for d in parsed["degradations"]:
            for k, v in d["params"].items():
                extra[f"vlm_{k}"] = round(v, 3)
            extra[f"vlm_{d['type']}_severity"] = round(d["severity"], 3)
        return label, sc, "structured answer: " + ", ".join(
            d["type"] for d in parsed["degradations"]) if parsed["degradations"] else \
            "structured answer: no degradation", extra

    def _finish(self, d: tuple, image: np.ndarray, photo: Any | None, model_id: str) -> Diagnosis:
        label, sc, why = d[0], d[1], d[2]
        extra = dict(d[3]) if len(d) > 3 else {}
        extra["vlm_model"] = model_id
        extra["vlm_mode"] = self.mode
        est, flags = self._measured(image, photo, extra, sc, label)
        return Diagnosis(label, normalise_scores(sc), flags, est, why, "vlm")
