"""How long a plan will take and how much memory it needs, before it runs.

Time comes from two sources, best first:

1. **Measured here**: every finished step records its seconds and its work (input megapixels)
   for its (step, model, device kind, thread count) in a small history file, averaged per size
   class (``CostHistory.SIZE_RATIO``). The estimate is seconds = fixed + rate x megapixels
   through those averages: each run pays a fixed part (set-up, Python, the tiler's bookkeeping,
   OpenCV's first touches of its buffers; warm denoising 0.007-0.019 s) that a per-megapixel
   rate alone spread over every megapixel of a large photo (warm 100 x 75 px runs: 2.2-3.7 s
   per MP against 1.07-1.31 s per MP at 4-12 MP on a quiet machine). With one size only, the
   reference rate bounds the rest (see ``CostHistory.predict``). A step's first short run in an
   engine carries one-time set-up (see ``COLD_RUN_S``): it is counted once, not per megapixel.
   The line is straight: a step whose rate grows with the photo (``deblur_builtin``'s
   whole-photo FFTs, about 0.10 s/MP at 0.3-1 MP and 0.15-0.26 s/MP at 12-24 MP: a bare FFT
   pair's own cost per MP grows 2-4x over that range) was underestimated from small photos
   alone (0.5-0.7x at 12 MP); such a step (``RATE_FLOOR_STEPS``) does not go below its
   reference rate beyond four times the largest photo run here.
2. **Reference**: seconds per megapixel of each step measured by ``bench/restore.py`` on one core
   of the 2-core AMD EPYC development machine (docs/PERFORMANCE.md, 2026-11-22; model steps at
   the real architecture sizes with random weights: time only). They are divided by the thread
   count (an optimistic, ideal scaling) and exist for CPUs only: a GPU has no estimate until its
   first photo has run. A model a step's ``model`` param chooses instead of its default (NAFNet
   width 32, GFPGAN) costs the default's figure times its measured share
   (``MODEL_COST_RATIO``) until it has run here; the history keeps each model's runs apart.

A step that runs a part costing per photo has that part apart (SAM's pass in
``reflection_mask``: ``SAM_PASS``), counted only when the step will run it (``installed``); a
step that will change nothing (a strength of 0, an inpainting step with no mask it will fill)
costs nothing.

Memory is the process itself (``PROCESS_BYTES``) plus the largest of: each step's image buffers
(input, output at the step's scale and the tiler's accumulators; measured for some steps:
``_STEP_BUFFERS``) with the model it loads (the manifest's ``memory_mb`` of the model its params
choose: weights + working memory) and the share of the models earlier steps loaded that stays
cached (``_RETAINED_SHARE``), and what follows the last step - the photo and the result held
while the regression guard measures them and the result is saved. A plan that changes nothing
keeps the photo (``Estimate.keeps_photo``: its file copied, nothing checked or saved).

Pure Python: no torch import, cheap enough for the UI thread to call on every plan edit.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import Plan, Step

log = logging.getLogger("mend.estimate")

# seconds per input megapixel, 1 CPU thread (see the module docstring for where they come from;
# bench/restore.py on a 512² photo, 2026-11-22 09:56 UTC, load average ~1.5-2.5)
REFERENCE_CPU_S_PER_MP: dict[tuple[str, str | None], float] = {
    ("passthrough", None): 0.0,
    ("denoise_builtin", None): 3.0,
    ("sharpen_builtin", None): 0.15,
    ("upscale_builtin", None): 0.2,
    # (re-measured with its FFTs at fast lengths: the step's seconds on a real photo resized to
    # 12-24 MP, odd sizes included, a 9 px kernel, Intel Xeon 2-core development machine shared
    # with other work, 1 thread, 2026-12-07: CPU time 0.15-0.19 s/MP at best, medians
    # 0.18-0.26; it was 0.3 before, measured at 0.22-0.33 when the FFTs ran at the bare padded
    # sizes. It is also the floor of a photo far larger than any run here: see
    # RATE_FLOOR_STEPS)
    ("deblur_builtin", None): 0.2,
    # (the glare detector works on a view of the photo at most 1024 px: 0.20-0.22 s at 1 and
    # 12 MP, 0.28-0.81 s at 12-64 MP in whole `mend restore` jobs on a loaded machine,
    # 2026-12-08; it was 0.4 s/MP from a 512² photo, 26 s at 64 MP. Per megapixel, the small
    # photos' fixed part is left to the history; SAM's pass is its own figure: SAM_PASS)
    ("reflection_mask", None): 0.02,
    ("inpaint_builtin", None): 0.4,
    ("sr_realesrgan", "realesr-general-x4v3"): 52.0,
    ("sr_realesrgan", "realesrgan-x4plus"): 510.0,  # untiled 160² crop: 12.98 s
    # OCR of the whole photo; text regions add to it (the tiled OCR pass checked at 24 MP,
    # docs/bench/restore.json laptop_a_24mp, Intel Xeon 2026-12-06: 177.7 s = 7.4 s/MP)
    ("text_fusion", None): 7.0,
    ("deblur_nafnet", None): 67.0,
    ("dereflect_nafnet", None): 85.0,
    # ~53 s per 128-px patch-step on one core, patches at stride 64: ~244 patches per LR MP
    ("sr_invsr", None): 12900.0,
}
# SAM's part of ``reflection_mask``, when it refines the detector's boxes (the step decides
# that when it starts: ``reflection.mask_models_run``): its image encoder runs once per photo,
# on the photo reduced to 1024 px whatever its size, its mask decoder once per box. The step
# says how long it took (``PART_SECONDS``): the history keeps it apart, per photo, under this
# name with the SAM checkpoint as its model, and the step's own entry without it (the glare
# detector's ~0.2 s); the estimate adds it to the step's seconds when the step will run SAM.
SAM_PASS = "reflection_mask:sam"
# steps whose cost follows what they find (faces, masked regions), not the photo's size:
# seconds per photo (history records them the same way)
PER_PHOTO_STEPS = frozenset({"face_codeformer", "inpaint_lama", SAM_PASS})
REFERENCE_CPU_S_PER_PHOTO: dict[str, float] = {
    "face_codeformer": 19.0,  # one face (CodeFormer at 512²); photos without faces cost ~0
    "inpaint_lama": 10.6,  # one masked region crop
    # SAM ViT-B refining 17-18 glare boxes: the step with the ``sam`` detector less the same
    # step with the ``builtin`` one (0.20-0.22 s), a real reflection photo (windowseat
    # bakery.jpg) resized to 1 and 12 MP, 3 runs each; sam-vit-base at its full size (93.7 M
    # parameters) with random weights (normal, std 0.02), installed in a store and loaded by
    # the real loader (``reflection.load_sam``), torch 2.14 on one thread of the 2-core AMD
    # EPYC development machine (load average 1.6-2.4), 2026-12-08: 17.5-22.4 s, median 18.7,
    # the same at both sizes. Of it, the encoder alone: 18.0-20.0 s of CPU time; the decoder
    # and its masks ~0.2 s per box (the glare detector found a median of 2-8 boxes in the
    # shared photos, 11-20 at the 90th percentile)
    SAM_PASS: 19.0,
}
# what a step puts in its context's ``artifacts`` when part of its seconds belongs to another
# history entry (``SAM_PASS``): a list of (history name, model, work units, seconds) that the
# engine records apart and takes out of the step's own seconds
PART_SECONDS = "part_seconds"
# A model a step's ``model`` param chooses instead of its default (``StepSpec.choices``): its
# seconds as a share of the default's, by which the step's reference figure - and, until the
# chosen model has run here, the default's figure from the runs here - is multiplied (a
# choice with a figure of its own in REFERENCE_CPU_S_PER_MP, Real-ESRGAN's, has no share).
# Measured: the networks at their full size with random weights, one 512 x 512 tile (a face
# crop) each, torch 2.14 on one thread of the 2-core AMD EPYC development machine, CPU time
# of the forward pass (the machine shared with other work, load average 2.4-3.8),
# 2026-12-07 21:13-21:21 UTC, 4-7 runs alternating between the two networks:
MODEL_COST_RATIO: dict[str, float] = {
    # GoPro NAFNet width 32 / width 64 (7 pairs): 2.94-4.58 s / 9.87-11.7 s, ratio 0.28-0.41,
    # median 0.30 (its parameters: 17.1 M / 67.9 M, a quarter; the narrow network keeps more
    # of its time in what does not shrink with the width)
    "nafnet-gopro-w32": 0.30,
    "nafnet-reds-w64": 1.0,  # (GoPro width 64's architecture: other weights)
    # SIDD NAFNet width 32 / width 64 (7 pairs): 3.83-5.42 s / 13.1-15.0 s, 0.29-0.36, median
    # 0.32 (29.2 M / 116.0 M parameters)
    "nafnet-sidd-w32": 0.32,
    # GFPGAN v1.4 / CodeFormer (the defaults: w 0.7; GFPGAN without its noise drawn afresh, as
    # face.gfpgan_fn calls it), one face crop (4 pairs): 5.61-5.72 s / 12.1-12.7 s, 0.45-0.47
    # (86.4 M / 94.1 M parameters; the step's detection and paste-back, a small part of its
    # reference, are scaled with it)
    "gfpgan-v1.4": 0.46,
    # SlimSAM-50 / SAM ViT-B, refining 17-18 boxes (``SAM_PASS``, measured the same way, 6
    # pairs; SlimSAM-50 as ViT-B with half its embedding and MLP channels, 28.0 M parameters:
    # the manifest's 112 MB file): 10.0-13.6 s / 17.5-22.4 s, 0.54-0.63, median 0.58. Its
    # encoder alone takes 0.49-0.54 of ViT-B's; the decoder, the same in both, does not shrink
    "slimsam-50": 0.58,
}
# history entries written before a step could choose its model have no model in their key:
# they are runs of the step's default model
_UNKEYED_BEFORE_CHOICES = {"deblur_nafnet": "nafnet-gopro-w64",
                           "dereflect_nafnet": "nafnet-sidd-w64",
                           "face_codeformer": "codeformer"}

# memory of the image buffers per output pixel: input + output + the tiler's sum and weights
_BYTES_PER_PIXEL = 3 * 4
_BUFFERS = 4
# ... measured otherwise for some steps (their input included; 2026-12-08, the resident memory
# of `Engine.run` sampled every 5 ms during the step, real photos resized to 12-64 MP):
# - the inpainting steps: the copy they fill, each region's crop, its mask, the filled crop and
#   the paste weights, where one region's crop (its context included) may be the whole photo.
#   A `builtin` class B job with a mask of 30 % of a 24 MP photo (one block: one crop of nearly
#   all of it) peaked at 2.20 GB, 73 B per pixel over the process (/usr/bin/time -f %M; the
#   60 B of the other steps fell short)
# - the built-in sharpening (64 MP) and denoising (12 MP): 28-29 B (tiled, one tile a thread),
#   below the 44 B of the whole job's peak in the guard at 24-64 MP
# (the built-in deconvolution, 53-58 B at 12-64 MP, keeps the 60 B of the others)
_STEP_BUFFERS = {"inpaint_builtin": 6, "inpaint_lama": 6, "sharpen_builtin": 2,
                 "denoise_builtin": 2}
# ``reflection_mask`` hands its input on: beside it, the mask (1 B per pixel) and its
# detector's full-size temporaries. A `builtin` class B job whose detected mask was held back
# (the photo kept, its file copied) peaked 0.07-0.13 GB above a class D job of the same photo
# size at 12-64 MP (/usr/bin/time -f %M, 2026-12-08): ~50 MB and 1.5 B per pixel for the
# glare detector; SAM's full-size masks (a bool and a uint8 per box, one at a time) ~3 B,
# YOLO's 8-bit copies of the photo ~7 B (not measured)
_MASK_BYTES_PER_PIXEL = 8
# A model an earlier step loaded stays cached (``ModelRuntime``, within its budget) while the
# later steps run: this share of its ``memory_mb`` counts beside theirs. After its step, each
# laptop model at its real size (random weights, one 512 px tile or face, a 512-1024 px LaMa
# crop; 2026-12-08, one thread) still held 37-42 % of what its step had added (NAFNet GoPro
# w64 0.65 GiB, SIDD w64 0.80, LaMa 0.53-0.68, CodeFormer 0.74, Real-ESRGAN Compact 0.18):
# its weights and the allocator's kept blocks. (What a step adds, in a fresh `Engine.run` of
# it alone on a 512 px photo: Compact 373 MB, NAFNet GoPro w64 1386 MB, SIDD w64 1911 MB,
# CodeFormer 1576 MB, LaMa 876 MB, ~1450 MB on a 1024 px crop: the manifest's ``memory_mb``
# of these were 350, 800, 1200, 1300 and 600, now 450, 1600, 2200, 1800 and 1700. The laptop
# chains' jobs on a 512 x 512 photo peaked at 0.71-0.81x their estimates before.)
_RETAINED_SHARE = 0.5
# Peak resident memory of whole `builtin` jobs (real photos resized to 12, 24 and 64 MP,
# /usr/bin/time -f %M of `mend restore` on one core, 2026-12-08), over the process: A, C (a
# sharpening or a deconvolution) 44 B per pixel at 24-64 MP, the peak in the regression guard;
# B filling a 1.9 % mask 56 B (the guard, with the mask); D 12 B (the photo; its file copied).
# - the engine process before any photo: Python, NumPy, OpenCV, torch and the analyzer loaded
#   (0.52-0.62 GB measured, 0.55-0.60 GiB in the fits of the runs above; a margin for the
#   GUI's own share)
PROCESS_BYTES = 700 << 20
# - after the last step the photo and the result stay in memory (float32 RGB, 12 B per pixel
#   each; a result the steps scaled is also brought back to the photo's size for the guard) and
#   on top of them, one after the other (the resident memory of `Engine.run` sampled every
#   5 ms, by phase, 12-64 MP, 2026-12-08):
#   the regression guard's temporaries per photo pixel: the two lumas (8 B) and at most ~3
#   float32 planes of one measurement (20-22 B measured); with an inpainting mask, which it
#   weighs the photo with, 25-30 B (and the mask, 1 B)
_GUARD_BYTES_PER_PIXEL = 24
_GUARD_MASK_BYTES_PER_PIXEL = 34
#   saving, per result pixel: conversion to 8/16 bit and the encoder (JPEG 5-8 B, PNG 7 B,
#   WebP 13 B, TIFF 16-bit 8 B, PNG 16-bit 17 B measured; it was 39 B for a JPEG on
#   2026-12-06, before the save worked in bands)
_SAVE_BYTES_PER_PIXEL = 24


# A preview (``JobRequest.region``) runs its steps on the part, but it holds the whole photo
# (float32 RGB, and its alpha) and looks at it whole (``registry.WholePhoto``). Measured on a
# 120-megapixel gradient PNG (12000 x 10000, peak resident memory, 2026-12-07), over the photo:
# - a photo with transparent pixels is filled whole (``pipeline.fill_transparent``): the filled
#   copy (12 B per pixel) stays for the job, ~10 B more while it is made
PREVIEW_FILL_BYTES_PER_PIXEL = 24
# - a step whose detector looks at the whole photo (below) sees a copy of it with the part as
#   the steps before left it (12 B) and makes its own temporaries (the glare detector's
#   full-size mask, ...): +1.3-1.4 GB at 120 MP
PREVIEW_VIEW_BYTES_PER_PIXEL = 14
PREVIEW_WHOLE_STEPS = frozenset({"reflection_mask", "face_codeformer", "text_fusion",
                                 "denoise_builtin", "deblur_builtin"})


def preview_whole_bytes(plan: Plan, size: tuple[int, int], *, alpha: bool,
                        transparent: bool) -> tuple[int, int]:
    """(held, work): what a preview of a photo of ``size`` = (height, width) has in memory
    beyond the part its steps run on (``estimate_plan`` of the part): ``held``, the whole photo
    as loaded (float32 RGB, and a float alpha when ``alpha``), already in memory when the
    preview's memory is checked; ``work``, what looking at it whole adds (the figures above:
    the transparent pixels filled when ``transparent``, a whole-photo view for a detector)."""
    pixels = max(1, int(size[0]) * int(size[1]))
    held = pixels * (_BYTES_PER_PIXEL + (4 if alpha else 0))
    looks = any(s.enabled and s.name in PREVIEW_WHOLE_STEPS for s in plan.steps)
    kept = _BYTES_PER_PIXEL if transparent else 0  # (the filled copy, for the whole job)
    per_pixel = max(PREVIEW_FILL_BYTES_PER_PIXEL if transparent else 0,
                    kept + (PREVIEW_VIEW_BYTES_PER_PIXEL if looks else 0))
    return held, pixels * per_pixel


def finish_bytes(pixels: int, out_pixels: int, mask: bool = False) -> int:
    """Memory after the last step, for a photo of ``pixels`` whose result has ``out_pixels``:
    the photo and the result, and the larger of the regression guard's and the save's
    temporaries (see the figures above); ``mask``: an inpainting step filled a reflection
    mask (held to the end, and weighed by the guard)."""
    held = (pixels + out_pixels + (pixels if out_pixels != pixels else 0)) * _BYTES_PER_PIXEL
    guard = _GUARD_MASK_BYTES_PER_PIXEL + 1 if mask else _GUARD_BYTES_PER_PIXEL
    return held + max(guard * pixels, _SAVE_BYTES_PER_PIXEL * out_pixels)


@dataclass(frozen=True)
class StepEstimate:
    name: str
    model: str | None
    seconds: float | None
    # "measured" | "reference" | "unknown" | "off" (no time: a strength of 0, an inpainting
    # step with no mask it will fill, the mask step handing on the job's mask)
    basis: str


@dataclass(frozen=True)
class Estimate:
    seconds: float | None  # None: at least one step has no figure on this device
    peak_bytes: int
    steps: tuple[StepEstimate, ...] = field(default_factory=tuple)
    # no step will change the photo (nothing to run, steps turned off, a detected reflection
    # mask no one has checked, which the inpainting steps hold back): the photo is kept as it
    # is - its file copied, unless the output asks for another format (see
    # ``pipeline._check_memory``) - with no result to check or save
    keeps_photo: bool = False

    @property
    def basis(self) -> str:
        bases = {s.basis for s in self.steps if s.name != "passthrough"}
        if len(bases) > 1:  # (a step that costs nothing says nothing of the others' figures)
            bases.discard("off")
        if not bases:
            return "measured"
        if "unknown" in bases:
            return "unknown"
        return "measured" if bases == {"measured"} else "reference"

    @property
    def nothing_to_run(self) -> bool:
        return all(s.name == "passthrough" for s in self.steps)

    def describe(self) -> str:
        """One line for people: '~2 min, ~1.4 GB (from earlier runs here)'."""
        if self.nothing_to_run:
            return "nothing to run: the photo is kept as it is"
        mem = f"~{format_bytes(self.peak_bytes)}"
        if self.seconds is None:
            return f"time unknown until a photo has run on this device, {mem}"
        how = {"measured": "from earlier runs here",
               "reference": "rough, from a reference CPU"}.get(self.basis, "")
        return f"~{format_seconds(self.seconds)}, {mem}" + (f" ({how})" if how else "")

    def to_json(self) -> dict[str, Any]:
        return {"seconds": None if self.seconds is None else round(self.seconds, 1),
                "peak_bytes": self.peak_bytes, "basis": self.basis,
                "steps": [{"name": s.name, "model": s.model,
                           "seconds": None if s.seconds is None else round(s.seconds, 2),
                           "basis": s.basis} for s in self.steps]}


def format_seconds(s: float) -> str:
    if s < 1:
        return "1 s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def format_bytes(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GB"
    return f"{max(1, round(n / (1 << 20)))} MB"


def step_model(step: Step) -> str | None:
    """The model a step will use when its ``model`` param chooses among models
    (``StepSpec.choices``: Real-ESRGAN's choice matters 15x, NAFNet's width 3x): that param,
    else the step's default; None for a step without such a choice (an unknown step too)."""
    default = _default_model(step.name)
    if default is None:
        return None
    value = step.params.get("model")
    return str(default if value is None else value)


def _default_model(name: str) -> str | None:
    """The default of step ``name``'s ``model`` param when it chooses among models (of
    ``SAM_PASS``: ``reflection_mask``'s ``sam_model``), else None."""
    from .errors import UsageError
    from .restore.registry import get_step

    key = "model"
    if name == SAM_PASS:
        name, key = "reflection_mask", "sam_model"
    try:
        spec = get_step(name)
    except UsageError:
        return None
    if key not in spec.choices:
        return None
    return str(spec.defaults.get(key))


def _step_parts(name: str, params: Mapping[str, Any],
                installed: Collection[str] | None) -> list[tuple[str, str]]:
    """The (history name, model) of the parts step ``name`` with ``params`` (its defaults
    merged in) will run that cost apart from its own work: SAM's pass of ``reflection_mask``
    when it will refine the boxes (``SAM_PASS``; ``installed`` as for ``estimate_plan``)."""
    if name != "reflection_mask":
        return []
    from .restore.reflection import YOLO_ID, mask_models_run

    return [(SAM_PASS, m) for m in mask_models_run(params, False, installed) if m != YOLO_ID]


def _step_memory_models(spec: Any, params: Mapping[str, Any],
                        installed: Collection[str] | None = None) -> list[str]:
    """The models whose memory a step with ``params`` (its defaults merged in) may hold: what
    its choice params choose (``StepSpec.choices``: the chosen NAFNet, face model, SAM) and
    its models that are no choice's (YuNet beside the face model, the YOLO slot beside SAM);
    for ``reflection_mask`` those it will run (``reflection.mask_models_run``: none for the
    built-in detector; ``installed`` as for ``estimate_plan``); for a step that says what it
    loads and declares no choice, what it says (``StepSpec.loads``: the text step)."""
    if spec.name == "reflection_mask":
        from .restore.reflection import mask_models_run

        return list(mask_models_run(params, False, installed))
    if spec.loads is not None and not spec.choices:
        # (its own param names the model it loads, no choice declared: the text step's
        # Real-ESRGAN, the laptop's Compact counted as x4plus before - 1.2 GB for 0.45)
        from .errors import UsageError

        try:
            return list(spec.loads(params, False))
        except UsageError:  # (an unknown OCR backend: said before any step runs)
            pass
    chosen = [str(params[k]) for k in spec.choices if params.get(k) is not None]
    offered = {m for values in spec.choices.values() for m in values}
    return chosen + [m for m in spec.models if m not in offered]


def step_scale(step: Step) -> int:
    if step.name in ("sr_realesrgan", "sr_invsr"):
        default = 1
    elif step.name == "upscale_builtin":
        default = 2
    else:
        return 1
    try:
        return max(1, int(step.params.get("scale", default)))
    except (TypeError, ValueError):
        return 1


def work_units(step_name: str, pixels: int) -> float:
    """What a step's cost is proportional to: megapixels, or 1 for per-photo steps."""
    return 1.0 if step_name in PER_PHOTO_STEPS else pixels / 1e6


# steps whose cost also follows a parameter: the history and the reference figures are per unit
# of that parameter (InvSR: per sampling step), the estimate multiplies by it
PER_PARAM_STEPS: dict[str, tuple[str, int]] = {"sr_invsr": ("steps", 1)}
# history keys of the steps above carry this mark: entries written before the rate was per unit
# (the whole step's seconds) are not read as per-unit rates
_PER_UNIT_MARK = "/unit"


def step_multiplier(name: str, params: Mapping[str, Any]) -> int:
    """How many units of its cost parameter a step runs (1 for most steps): InvSR's sampling
    steps. ``params`` as the step runs them (its defaults merged in)."""
    spec = PER_PARAM_STEPS.get(name)
    if spec is None:
        return 1
    key, default = spec
    try:
        return max(1, int(params.get(key, default)))
    except (TypeError, ValueError):
        return max(1, default)


def step_work_units(name: str, params: Mapping[str, Any], pixels: int) -> float:
    """What one run of a step costs in the history's units: ``work_units`` times
    ``step_multiplier`` (an InvSR run of 3 sampling steps is 3 units per megapixel)."""
    return work_units(name, pixels) * step_multiplier(name, params)


# A step's first run in an engine pays one-time set-up that its later runs do not: OpenCV's
# first call of an operation (a 100 x 75 px photo's non-local means: 0.05-0.10 s the first time,
# 0.016-0.037 s after), beside a model's first load (which the engine leaves out, its
# ``_loaded_once``). Such a run shorter than this (where the measured set-up, up to 0.2 s on a
# busy machine, is a fifth or more of it) is "cold": it is never averaged into a figure warm runs
# taught, a figure resting on cold runs alone is replaced by the step's next warm run, and for a
# larger photo its seconds count once, not per megapixel (``CostHistory.predict``). Per megapixel,
# one cold 100 x 75 px run took a 24 MP photo's denoising estimate to 160-340 s (a 24 MP photo
# took 31-72 s on the loaded 2-core development machine; 72 s now, the reference's).
COLD_RUN_S = 1.0

# Warm runs also pay a fixed part per run, measured by fitting seconds = fixed + rate x MP to
# warm runs of 100 x 75 px to 2400 x 1800 px in one engine (2-core development machine, 1
# thread, 2026-12-07): denoise_builtin 0.007-0.019 s + 1.25-1.33 s/MP, deblur_builtin
# 0.001-0.002 s + 0.15-0.17 s/MP, sharpen_builtin ~0 + 0.06-0.07 s/MP. A 100 x 75 px warm
# denoising (0.017-0.028 s) is half fixed: per megapixel (2.2-3.7 s) it put a 12 MP photo at
# 27-45 s, which took 12.8 s on the quiet machine. With runs of one size only, the fixed part is
# taken to be at most this much of a warm run (five times the largest measured), fitted to
# several sizes too (noise in short runs' seconds cannot take a large photo's rate down with
# it), and at most ``COLD_RUN_S`` of a cold one (``CostHistory.predict``).
WARM_FIXED_S = 0.1

# Steps whose seconds per megapixel on small photos say little of a large one's: the built-in
# deblurring's whole-photo FFTs cost more per megapixel as the photo grows, also at fast FFT
# lengths (its FFTs were rounded up to them, which took away the 1.7-2.2x differences between
# photos of one size). The step's CPU seconds, a real photo resized, a 9 px kernel, 1 thread,
# 2026-12-07 (a machine shared with other work): 0.098-0.104 s/MP at 0.3 and 1 MP (medians,
# four shapes), 0.13 at 3 MP, 0.18-0.26 at 12 MP (1.86-4.79 s for 5290 x 2268; 0.15-0.19 at
# best) and 0.21-0.23 at 18-24 MP. From runs of small photos alone a 12 MP estimate was
# 0.5-0.7x the time. For a photo more than ``CostHistory.SIZE_RATIO`` times the work of the
# largest run here, each megapixel beyond it costs at least the reference rate
# (``CostHistory.predict``)
RATE_FLOOR_STEPS = frozenset({"deblur_builtin"})


def _positive(v: Any) -> float | None:
    """``v`` as a finite number above 0, else None."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def _key(name: str, model: str | None, device_kind: str, threads: int) -> str:
    mark = _PER_UNIT_MARK if name in PER_PARAM_STEPS else ""
    return f"{name}{mark}|{model or ''}|{device_kind}|{threads}"


def _sizes(v: Any) -> list[list[float]] | None:
    """A history entry's size classes as read from the file: [[work, seconds, runs], ...] by
    work, or None when missing or damaged (the entry is then its average rate alone)."""
    if not isinstance(v, list) or not v:
        return None
    out = []
    for c in v:
        if not isinstance(c, list) or len(c) != 3:
            return None
        units, runs = _positive(c[0]), _positive(c[2])
        try:
            seconds = float(c[1])
        except (TypeError, ValueError):
            return None
        if units is None or runs is None or not (math.isfinite(seconds) and seconds >= 0):
            return None
        out.append([units, seconds, runs])
    return sorted(out)


def _add_run(sizes: list[list[float]], units: float, seconds: float, window: float,
             ratio: float, most: int) -> list[list[float]]:
    """``sizes`` (a new list) with a run of ``units`` work that took ``seconds``: averaged into
    the class of the nearest work within ``ratio`` (a running average over ``window`` runs, of
    the work as of the seconds), else a class of its own. Classes that came within ``ratio`` of
    each other, and beyond ``most`` classes the two nearest in work, merge (weighted by runs):
    the smallest and the largest work ever run are kept."""
    out = [list(c) for c in sizes]
    near = min(out, key=lambda c: abs(math.log(units / c[0])), default=None)
    if near is not None and abs(math.log(units / near[0])) < math.log(ratio):
        n = min(near[2] + 1.0, window)
        near[:] = [near[0] + (units - near[0]) / n, near[1] + (seconds - near[1]) / n, n]
    else:
        out.append([units, seconds, 1.0])
    out.sort()
    while len(out) > 1:
        i = min(range(len(out) - 1), key=lambda j: out[j + 1][0] / out[j][0])
        if out[i + 1][0] / out[i][0] >= ratio and len(out) <= most:
            break
        (u1, s1, n1), (u2, s2, n2) = out[i], out[i + 1]
        out[i:i + 2] = [[(u1 * n1 + u2 * n2) / (n1 + n2), (s1 * n1 + s2 * n2) / (n1 + n2),
                         min(n1 + n2, window)]]
    return out


def _fixed_part(sizes: list[list[float]], reference: float | None, most: float) -> float:
    """The fixed seconds of every run, in seconds = fixed + rate x work through ``sizes``.

    Two sizes or more: the weighted least-squares line through their averages, each weighted
    by its runs over its seconds squared (a busy machine stretches a run's seconds by a factor,
    so each class counts by its relative error). One size tells seconds, not how they split:
    the fixed part is what the ``reference`` rate leaves of them (the rate beyond is then the
    lower of its own and the reference); none without a reference. Either way at least 0 and at
    most ``most`` and the shortest class's seconds (no run costs less than its fixed part)."""
    if len(sizes) == 1:
        units, seconds, _ = sizes[0]
        if reference is None:
            return 0.0
        return min(max(seconds - reference * units, 0.0), seconds, most)
    sw = su = ss = suu = sus = 0.0
    for units, seconds, runs in sizes:
        w = runs / max(seconds, 1e-6) ** 2
        sw, su, ss = sw + w, su + w * units, ss + w * seconds
        suu, sus = suu + w * units * units, sus + w * units * seconds
    det = sw * suu - su * su
    fixed = (ss * suu - su * sus) / det if det > 0 else 0.0
    return min(max(fixed, 0.0), min(s for _, s, _ in sizes), most)


def _through(sizes: list[list[float]], fixed: float, units: float) -> float:
    """Seconds at ``units`` on the line through (0, ``fixed``) and the classes' averages in
    order of work; beyond the largest, on from it at its rate less the fixed part."""
    u0, s0 = 0.0, fixed
    for u1, s1, _ in sizes:
        if units <= u1:
            return s0 + (s1 - s0) * (units - u0) / (u1 - u0)
        u0, s0 = u1, s1
    return s0 + (s0 - fixed) / u0 * (units - u0)


class CostHistory:
    """Seconds of finished steps on this machine and the work they did (input megapixels, per
    photo for ``PER_PHOTO_STEPS``), kept in a small JSON file. Safe to read from one thread
    while another records; a file that cannot be read or written only costs the estimate its
    history.

    Each entry keeps the running average of its seconds per unit (``s_per_mp``, ``n``: what
    ``get`` returns and what files written before size classes hold) and, for warm runs, the
    running averages of work and seconds per size class (``sizes``: [[work, seconds, runs],
    ...], at most ``MAX_SIZES``, runs within ``SIZE_RATIO`` of each other's work in one class),
    from which ``predict`` estimates seconds = fixed + rate x work.

    One history per engine: the first run of each step it records is that step's first in the
    engine (after a model's first load, which the engine does not record), a cold run when
    short (``COLD_RUN_S``). An entry resting on cold runs alone keeps
    their work (``cold_units``: megapixels, or photos) beside its figure, and no size classes."""

    WINDOW = 8  # the averages follow the last ~8 runs of a step (of a size class)
    # Runs of work within this factor of a class's average share it. Two classes are then 4x
    # apart or more, and a busy machine's noise in the smaller one's seconds reaches the rate
    # fitted beyond the larger divided by (4 - 1) or more: a third of it with no fixed part,
    # two thirds when the smaller's runs are half fixed (100 x 75 px denoising)
    SIZE_RATIO = 4.0
    MAX_SIZES = 4  # (beyond: the two nearest merge; ~100 bytes per entry in the file)

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] | None = None
        self._mtime: int | None = None  # of the file as last read or written
        self._ran: set[str] = set()  # keys of the steps this history has seen run

    @classmethod
    def default(cls) -> CostHistory:
        """``MEND_COST_HISTORY`` (a file; empty = keep no history), else the user cache."""
        env = os.environ.get("MEND_COST_HISTORY")
        if env is not None:
            return cls(Path(env) if env else None)
        import platformdirs

        return cls(Path(platformdirs.user_cache_dir("Mend", appauthor=False)) / "step_costs.json")

    def _file_mtime(self) -> int | None:
        try:
            return None if self.path is None else self.path.stat().st_mtime_ns
        except OSError:
            return None

    def _load(self, fresh: bool = False) -> dict[str, dict[str, Any]]:
        """The figures, read again when the file changed (or always with ``fresh``: under the
        file lock, where a same-timestamp write by another process must not be missed). Without
        a file the figures are those recorded here (read afresh, they were all lost but the
        last recorded)."""
        mtime = self._file_mtime()
        if (fresh and self.path is not None) or self._data is None or (
                mtime is not None and mtime != self._mtime):
            # first use, or another process/thread (the engine) has written newer figures
            self._mtime = mtime
            data: dict[str, dict[str, Any]] = {}
            if self.path is not None and self.path.is_file():
                try:
                    raw = json.loads(self.path.read_text("utf-8"))
                    data = {str(k): {"s_per_mp": float(v["s_per_mp"]), "n": float(v["n"])}
                            for k, v in raw.get("steps", {}).items()
                            if math.isfinite(float(v["s_per_mp"])) and float(v["s_per_mp"]) >= 0}
                    for k, v in raw.get("steps", {}).items():
                        cold = _positive(v.get("cold_units")) if k in data else None
                        if cold is not None:  # (a damaged mark: a warm figure)
                            data[k]["cold_units"] = cold
                        sizes = _sizes(v.get("sizes")) if k in data and cold is None else None
                        if sizes is not None:  # (damaged or missing: the average rate alone)
                            data[k]["sizes"] = sizes
                except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                    log.warning("ignoring the step-cost history %s: %s", self.path, e)
                    data = {}
            self._data = data
        return self._data

    def snapshot(self) -> CostHistory:
        """A copy of the figures as they are on the disk now, that never reads the disk again
        (no path): what a thread that must not touch the disk (the UI's) estimates with."""
        with self._lock:
            data = {k: {**v, **({"sizes": [list(c) for c in v["sizes"]]} if "sizes" in v
                                else {})} for k, v in self._load().items()}
        copy = CostHistory(None)
        copy._data = data
        return copy

    def get(self, name: str, model: str | None, device_kind: str, threads: int) -> float | None:
        with self._lock:
            entry = self._load().get(_key(name, model, device_kind, threads))
            return None if entry is None else entry["s_per_mp"]

    def lookup(self, name: str, model: str | None, device_kind: str, threads: int
               ) -> tuple[float, float | None] | None:
        """(seconds per unit, the work of the cold runs it rests on alone - None when warm
        runs taught it), or None with no figure."""
        with self._lock:
            entry = self._load().get(_key(name, model, device_kind, threads))
            return None if entry is None else (entry["s_per_mp"], entry.get("cold_units"))

    def predict(self, name: str, model: str | None, device_kind: str, threads: int,
                units: float, reference: float | None = None) -> tuple[float, str] | None:
        """(seconds of a run of ``units`` work, "measured" or "reference"), or None with no
        figure. ``reference``: the step's reference seconds per unit here, if any.

        Seconds = fixed + rate x work, through the size classes' averages (``_through``) with
        the fixed part fitted to them (``_fixed_part``). With one size the rate beyond it is the
        lower of its own and the reference: a run of 100 x 75 px (0.0075 MP) does not set the
        rate of a 24 MP photo (3200 times its work); its seconds count once ("reference" then).
        A step of ``RATE_FLOOR_STEPS`` costs, for work more than ``SIZE_RATIO`` times that of
        its largest size class, at least that class's seconds plus the reference rate for the
        rest ("reference" then too).
        An entry of cold runs alone is one such size whose fixed part may be up to
        ``COLD_RUN_S``; one from before size classes were kept, its average rate alone."""
        with self._lock:
            entry = self._load().get(_key(name, model, device_kind, threads))
        if entry is None:
            return None
        rate, cold = entry["s_per_mp"], entry.get("cold_units")
        sizes = entry.get("sizes")
        if sizes is None and cold is None:
            return rate * units, "measured"
        most = WARM_FIXED_S
        if sizes is None:
            sizes, most = [[cold, rate * cold, 1.0]], COLD_RUN_S
        fixed = _fixed_part(sizes, reference, most)
        seconds = _through(sizes, fixed, units)
        lowered = len(sizes) == 1 and fixed > 0 and units > sizes[0][0]
        top_units, top_seconds = sizes[-1][0], sizes[-1][1]
        if (name in RATE_FLOOR_STEPS and reference is not None
                and units > self.SIZE_RATIO * top_units):
            floor = top_seconds + reference * (units - top_units)
            if floor > seconds:
                seconds, lowered = floor, True
        return seconds, "reference" if lowered else "measured"

    def record(self, name: str, model: str | None, device_kind: str, threads: int,
               megapixels: float, seconds: float) -> None:
        if megapixels <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        rate = seconds / megapixels
        k = _key(name, model, device_kind, threads)
        # the file lock: another Mend (a second window, `mend restore`) records into the same
        # file; read-modify-write under it, reading the file afresh, so neither loses entries
        with self._lock, file_lock(self.path):
            cold = k not in self._ran and seconds < COLD_RUN_S
            self._ran.add(k)
            data = self._load(fresh=True)
            old = data.get(k)
            was_cold = old is not None and "cold_units" in old
            if cold and old is not None and not was_cold:
                return  # (its set-up would inflate what warm runs taught)
            if old is None or was_cold != cold:  # (a warm run replaces cold runs' figure)
                data[k] = {"s_per_mp": rate, "n": 1.0}
                if cold:
                    data[k]["cold_units"] = megapixels
            else:
                n = min(old["n"] + 1.0, float(self.WINDOW))
                data[k] = {"s_per_mp": old["s_per_mp"] + (rate - old["s_per_mp"]) / n, "n": n}
                if cold:
                    data[k]["cold_units"] = old["cold_units"] + (megapixels
                                                                 - old["cold_units"]) / n
            if not cold:  # (cold runs' set-up stays out of the classes, as out of the average)
                before = old.get("sizes", []) if old is not None and not was_cold else []
                data[k]["sizes"] = _add_run(before, megapixels, seconds, float(self.WINDOW),
                                            self.SIZE_RATIO, self.MAX_SIZES)
            self._save(data)

    def _save(self, data: dict[str, dict[str, Any]]) -> None:
        if self.path is None:
            return
        from .errors import EngineError

        try:
            from .imageio import atomic_write_bytes

            self.path.parent.mkdir(parents=True, exist_ok=True)
            blob = json.dumps({"version": 1, "steps": data}, indent=1).encode("utf-8")
            atomic_write_bytes(self.path, blob, overwrite=True)
            self._mtime = self._file_mtime()
        except (OSError, EngineError) as e:  # atomic_write_bytes raises SaveFailed
            # (a full disk or a read-only cache costs the estimate its history, never a job)
            log.warning("could not save the step-cost history %s: %s", self.path, e)


LOCK_WAIT = 5.0  # seconds a history write waits for another process's lock, then writes anyway


@contextlib.contextmanager
def file_lock(path: Path | None, wait: float | None = None) -> Iterator[None]:
    """An OS lock on ``<path>.lock`` (flock / msvcrt, as the model store locks ``.part``
    files) for one read-modify-write of ``path``. A lock that cannot be had (a read-only
    folder, a file system without locks, a holder that keeps it past ``LOCK_WAIT``) only costs
    the exclusion: the write goes ahead, as it did before there was a lock. The lock file is
    left in place (removing it would race with a process about to lock it)."""
    if path is None:
        yield
        return
    wait = LOCK_WAIT if wait is None else wait
    fh = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115 - held below
    except OSError as e:
        log.debug("no lock for %s: %s", path, e)
    locked = False
    if fh is not None:
        deadline = time.monotonic() + wait
        while True:
            state = try_file_lock(fh)
            if state is not None:
                locked = state
                break
            if time.monotonic() >= deadline:
                log.warning("%s stayed locked for %.0f s; writing without the lock", path, wait)
                break
            time.sleep(0.02)
    try:
        yield
    finally:
        if fh is not None:
            if locked:
                with contextlib.suppress(OSError):
                    _unlock_file(fh)
            fh.close()


def try_file_lock(fh: Any) -> bool | None:
    """True: locked; None: another holder has it (try again); False: locks do not work here."""
    try:
        if os.name == "nt":
            import msvcrt

            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if isinstance(e, BlockingIOError) or e.errno in (errno.EAGAIN, errno.EACCES,
                                                          errno.EDEADLK):
            return None
        log.debug("file locks unavailable for %s: %s", getattr(fh, "name", fh), e)
        return False
    return True


def _unlock_file(fh: Any) -> None:
    if os.name == "nt":
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def estimate_plan(plan: Plan, size: tuple[int, int], *, device_kind: str, threads: int,
                  history: CostHistory | None = None,
                  model_memory: Mapping[str, int] | None = None,
                  installed: Collection[str] | None = None, mask: bool = False) -> Estimate:
    """Seconds and peak bytes of running ``plan`` on a photo of ``size`` = (height, width).

    ``model_memory`` maps model ids to bytes (the manifest's estimates; see
    :func:`manifest_model_memory`); models absent from it count as 0. ``installed``: the ids
    of the models installed here, for the models a step runs only when they are (SAM and the
    YOLO slot in ``reflection_mask``: their time and memory); None (not known): they count
    as installed. ``mask``: the job gives a reflection mask (the mask step hands it on, finding
    none; the inpainting steps fill it). Without one, an inpainting step fills only a mask a
    trained detector found (the YOLO slot) or, with its ``fill_detected``, the glare
    detector's (``reflection._hold_unchecked``): otherwise it costs nothing, and a plan
    whose steps all change nothing keeps the photo (``Estimate.keeps_photo``).
    """
    from .pipeline import MASK_STEPS, uses_mask
    from .restore.reflection import YOLO_ID, mask_models_run

    mask = mask and uses_mask(plan)  # (a plan that inpaints nothing finds its own: the job's)
    h, w = size
    pixels = max(1, int(h) * int(w))
    photo_pixels = pixels
    threads = max(1, int(threads))
    model_memory = model_memory or {}
    steps: list[StepEstimate] = []
    total: float | None = 0.0
    peak = 0
    found_by: str | None = "user" if mask else None  # where the inpainting steps' mask is from
    changes = False  # a step will change the photo
    fills = False  # an inpainting step will fill a mask
    cached: dict[str, int] = {}  # models earlier steps loaded: what they keep (_RETAINED_SHARE)
    for step in plan.steps:
        if not step.enabled:
            continue
        model = step_model(step)
        from .errors import UsageError
        from .restore.registry import get_step, turned_off

        params = dict(step.params)
        try:
            spec = get_step(step.name)
            params = {**spec.defaults, **params}
            memory_ids = _step_memory_models(spec, params, installed)
        except UsageError:  # an unknown step fails when the plan runs, not here
            memory_ids = []
        if step.name == "reflection_mask" and mask:
            # (it hands the job's mask on: no detector, no model)
            steps.append(StepEstimate(step.name, model, 0.0, "off"))
            peak = max(peak, pixels * (_BYTES_PER_PIXEL + _MASK_BYTES_PER_PIXEL))
            continue
        if step.name == "reflection_mask" and found_by != "user":
            found_by = ("yolo" if YOLO_ID in mask_models_run(params, False, installed)
                        else "glare")
        holds = step.name in MASK_STEPS and not (
            found_by in ("user", "yolo") or (found_by == "glare"
                                             and bool(params.get("fill_detected", False))))
        if turned_off(params) or holds:
            # (it hands its input on untouched, loads and measures nothing: no time, no memory)
            steps.append(StepEstimate(step.name, model, 0.0, "off"))
            continue
        # (history and reference figures are per unit: per InvSR sampling step)
        units = work_units(step.name, pixels) * step_multiplier(step.name, params)
        seconds, basis = _seconds(history, step.name, model, device_kind, threads, units)
        for part, part_model in _step_parts(step.name, params, installed):
            more, how = _seconds(history, part, part_model, device_kind, threads,
                                 work_units(part, pixels))
            seconds = None if (seconds is None or more is None) else seconds + more
            basis = ("unknown" if "unknown" in (basis, how) else
                     "measured" if (basis, how) == ("measured", "measured") else "reference")
        steps.append(StepEstimate(step.name, model, seconds, basis))
        total = None if (total is None or seconds is None) else total + seconds
        if step.name == "passthrough":  # (it hands its input on: no buffers of its own)
            continue
        weights = max((int(model_memory.get(m, 0)) for m in memory_ids), default=0)
        weights += sum(b for m, b in cached.items() if m not in memory_ids)
        cached.update((m, int(model_memory.get(m, 0) * _RETAINED_SHARE)) for m in memory_ids)
        if step.name == "reflection_mask":  # (it hands its input on, with a mask)
            peak = max(peak, pixels * (_BYTES_PER_PIXEL + _MASK_BYTES_PER_PIXEL) + weights)
            continue
        changes = True
        fills = fills or step.name in MASK_STEPS
        scale = step_scale(step)
        out_pixels = pixels * scale * scale
        buffers = (pixels + _STEP_BUFFERS.get(step.name, _BUFFERS) * out_pixels) \
            * _BYTES_PER_PIXEL
        peak = max(peak, buffers + weights)
        pixels = out_pixels
    if changes:
        peak = PROCESS_BYTES + max(peak, finish_bytes(photo_pixels, pixels, fills)
                                   + sum(cached.values()))
    else:
        # nothing to run (class D) or nothing that changes the photo: the photo as loaded,
        # then its file copied (written afresh in another format: pipeline._check_memory
        # counts that), beside a mask step's buffers. Its passthrough was counted as a step's
        # buffers, 60 B a pixel: 3.9 GB for a 64.5-megapixel JPEG whose run peaked at 1.37 GB
        # (this figure: 1.46 GB)
        peak = PROCESS_BYTES + max(peak, photo_pixels * _BYTES_PER_PIXEL)
    return Estimate(total, int(peak), tuple(steps), keeps_photo=not changes)


def _seconds(history: CostHistory | None, name: str, model: str | None, device_kind: str,
             threads: int, units: float) -> tuple[float | None, str]:
    """(seconds, basis) of ``units`` work of step (or part) ``name`` with ``model``: from the
    runs here (fixed + rate x work: ``CostHistory.predict``), else the reference figure, else
    (None, "unknown")."""
    found = _predict(history, name, model, device_kind, threads, units) if history else None
    if found is not None:
        return found
    ref = _reference(name, model, device_kind, threads)
    return (None, "unknown") if ref is None else (ref * units, "reference")


def _reference(name: str, model: str | None, device_kind: str, threads: int) -> float | None:
    """Step ``name``'s reference seconds per unit with ``model`` (``step_model``) on
    ``threads`` threads of a CPU: its own figure, else the step's times the model's
    ``MODEL_COST_RATIO``; None on another device or without a figure."""
    if device_kind != "cpu":
        return None
    if name in PER_PHOTO_STEPS:
        ref = REFERENCE_CPU_S_PER_PHOTO.get(name)
        if ref is not None:
            ref *= MODEL_COST_RATIO.get(model or "", 1.0)
    else:
        ref = REFERENCE_CPU_S_PER_MP.get((name, model))
        if ref is None:
            ref = REFERENCE_CPU_S_PER_MP.get((name, None))
            if ref is not None:
                ref *= MODEL_COST_RATIO.get(model or "", 1.0)
    return None if ref is None else ref / max(1, int(threads))


def _predict(history: CostHistory, name: str, model: str | None, device_kind: str,
             threads: int, units: float) -> tuple[float, str] | None:
    """``history.predict`` for step ``name`` with ``model``: the runs of that model here; for
    the step's default model also its runs recorded before the step could choose
    (``_UNKEYED_BEFORE_CHOICES``); for another model with a ``MODEL_COST_RATIO`` and no runs
    of its own, the default's figure times that share ("reference": derived, not measured)."""
    ref = _reference(name, model, device_kind, threads)
    found = history.predict(name, model, device_kind, threads, units, ref)
    if found is not None or model is None:
        return found
    default = _default_model(name)
    if model == default:
        if _UNKEYED_BEFORE_CHOICES.get(name) == model:
            return history.predict(name, None, device_kind, threads, units, ref)
        return None
    ratio = MODEL_COST_RATIO.get(model)
    if ratio is None or default is None:
        return None
    base = _predict(history, name, default, device_kind, threads, units)
    return None if base is None else (base[0] * ratio, "reference")


def manifest_model_memory(manifest: Any = None) -> dict[str, int]:
    """Model id -> bytes (``memory_mb``) from ``manifest`` (the default manifest when None);
    empty when it cannot be read: a broken manifest never breaks a plan's display."""
    try:
        if manifest is None:
            from .models.manifest import default_manifest

            manifest = default_manifest()
        return {mid: int(spec.memory_mb) << 20 for mid, spec in manifest.models.items()}
    except (AttributeError, TypeError, ValueError, OSError) as e:
        log.warning("no model memory figures: %s", e)
        return {}
