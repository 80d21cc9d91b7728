"""Diagnose -> plan -> run. The one facade the CLI and the UI use."""
from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .api import Degradation, Diagnosis, JobRequest, JobResult, OutputOptions, Plan, StepRecord
from .devices import DeviceInfo, configure_opencv, configure_torch, select_device
from .errors import (
    BadImage,
    BadMask,
    EngineError,
    ModelMissing,
    OutOfMemory,
    SaveFailed,
    UsageError,
)
from .estimate import (
    PART_SECONDS,
    CostHistory,
    Estimate,
    estimate_plan,
    manifest_model_memory,
    step_model,
    step_scale,
    step_work_units,
)
from .imageio import Photo, load_photo
from .progress import Progress
from .restore.registry import StepContext, WholePhoto, call_cancellable, get_step

log = logging.getLogger("mend.pipeline")

MIN_TILE, MAX_TILE = 64, 8192  # px, the tile sizes the engine accepts

# progress slices of one job
_LOAD, _DIAG, _STEPS, _SAVE = 0.03, 0.07, 0.85, 0.05

# a preview (``JobRequest.region``) runs its steps on the region and this much of the photo
# around it, each side, where the photo has it (upright source px): tiled models, detectors
# and blends see the region's surroundings as in a run on the whole photo; the margin is
# trimmed off the result (at the chain's output scale)
PREVIEW_MARGIN = 128
# what a preview's name adds to the output suffix: ``IMG_1_mend_preview.jpg`` is never the name
# of a result (``<stem>_mend.<ext>``), and it is never written over an existing file either
PREVIEW_SUFFIX = "_preview"


@dataclass(frozen=True)
class Prepared:
    """What a job would do (``Engine.prepare``): nothing has run, nothing is written."""

    path: Path
    size: tuple[int, int]  # (height, width) of the upright photo
    diagnosis: Diagnosis
    plan: Plan
    warnings: tuple[str, ...]
    estimate: Estimate
    # where the result would be written (as of now: a file that appears there before the run
    # moves it to a _1 name); None when the request names no output folder
    output: Path | None = None
    # a preview's region, clipped to the photo (the estimate is that of the region and its
    # margin of context)
    region: tuple[int, int, int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        d = {"path": str(self.path), "label": self.plan.label.value,
             "profile": self.plan.profile, "size": list(self.size),
             "diagnosis": self.diagnosis.to_json(), "plan": self.plan.to_json(),
             "estimate": self.estimate.to_json(), "warnings": list(self.warnings),
             "output": str(self.output) if self.output is not None else None,
             "dry_run": True}
        if self.region is not None:
            d["region"] = list(self.region)
        return d


class Engine:
    """Owns the device choice, the model runtime (store + loaded-model cache) and runs jobs.

    Not thread-safe: one thread (the CLI's, or the UI's engine thread) uses one Engine.
    """

    def __init__(self, device: str = "auto", store: Any | None = None, *, tile_size: int = 512,
                 history: CostHistory | None = None):
        if not MIN_TILE <= int(tile_size) <= MAX_TILE:
            # (a tile of a few pixels means a model call per pixel: a 12 MP photo would never end)
            raise UsageError(f"the tile size must be between {MIN_TILE} and {MAX_TILE} px "
                             f"(got {tile_size})")
        # "auto" is chosen at the first use of the device (an estimate, a job, a model): it
        # imports torch (~2 s, ~0.6 GB), which the built-in analyzer alone never needs. A device
        # asked for by name is checked now (one this machine lacks is a usage error at once).
        self._device: DeviceInfo | None = None
        self._device_pref = device
        configure_opencv()  # (the thread count needs no device: the analyzer uses OpenCV first)
        if device != "auto":
            self._choose_device()
        self.tile_size = int(tile_size)
        self._store = store
        # seconds per megapixel of finished steps on this machine, for estimates before a run
        self.history = history if history is not None else CostHistory.default()
        self._runtime: Any | None = None
        self._loaded_once: set[Any] = set()  # model cache keys this engine has loaded

    @property
    def device(self) -> DeviceInfo:
        return self._device if self._device is not None else self._choose_device()

    def _choose_device(self) -> DeviceInfo:
        dev = select_device(self._device_pref)
        configure_opencv(dev.threads)
        if dev.kind != "cpu" or _torch_loaded():
            configure_torch(dev)
        self._device = dev
        return dev

    # -- models ---------------------------------------------------------------------------
    @property
    def runtime(self) -> Any:
        if self._runtime is None:
            from .models.runtime import ModelRuntime

            self._runtime = ModelRuntime(self._device or (lambda: self.device), self._store)
        return self._runtime

    @property
    def store(self) -> Any:
        return self.runtime.store

    def profile_available(self, profile: str) -> tuple[bool, list[str]]:
        """Whether every model the profile needs is installed; returns the missing ids. The
        models a step does without (``profiles.OPTIONAL_MODELS``: YuNet -> the Haar faces, SAM
        -> the unrefined mask) do not count: ``auto`` keeps the profile when only they lack."""
        from .restore.profiles import OPTIONAL_MODELS, profile_models

        missing = sorted(m for m in profile_models(profile) - OPTIONAL_MODELS
                         if not self.runtime.is_available(m))
        return (not missing, missing)

    def resolve_profile(self, profile: str = "auto") -> tuple[str, list[str]]:
        """``auto`` -> the device's recommended profile when its models are installed (and
        PyTorch, which they run on, can be imported), else builtin."""
        from .restore.profiles import PROFILES, profile_models, recommend_profile

        if profile != "auto":
            if profile not in PROFILES:
                raise UsageError(f"unknown profile {profile!r} (auto, builtin, laptop or quality)")
            return profile, []
        rec = recommend_profile(self.device)
        ok, missing = self.profile_available(rec)
        if ok:
            check = getattr(self.runtime, "torch_missing", None)
            err = check(sorted(profile_models(rec))) if check is not None else None
            if err is None:
                return rec, []
            return "builtin", [(f"used the built-in methods instead of the '{rec}' profile: "
                                f"its models run on PyTorch, which {err.reason}")]
        return "builtin", [
            (f"the '{rec}' profile's models are not installed ({', '.join(missing)}); used the "
             f"built-in methods instead (install them with: mend models pull --profile {rec})")
        ]

    # -- diagnosis ------------------------------------------------------------------------
    def diagnose(self, src: Photo | str | Path, backend: str = "auto", *,
                 progress: Progress | None = None, **options: Any) -> Diagnosis:
        """``options`` go to the backend, e.g. ``mode="structured"`` for the VLM.

        ``progress``: reported between the stages; its cancel token is checked inside the
        classifier too (between the analyzer's measurements, while its model loads, before
        every layer of a model)."""
        if progress is not None:
            progress.update(0.0, "loading")
        photo = src if isinstance(src, Photo) else load_photo(src)
        if progress is not None:
            progress.update(0.2, "analysing")
        from .understand import diagnose

        check = progress.check if progress is not None else None
        # (and a model's loading - a VLM's takes a minute on a laptop - is abandoned on a cancel)
        with self.runtime.cancellable(check):
            result = diagnose(photo.pixels, photo, backend=backend, runtime=self.runtime,
                              cancel_check=check, **options)
        if progress is not None:
            progress.update(1.0, "analysed")
        return result

    def plan(self, diagnosis: Diagnosis, label: Degradation | None = None,
             profile: str = "auto") -> Plan:
        from .restore.profiles import build_plan

        resolved, _ = self.resolve_profile(profile)
        return build_plan(label or diagnosis.label, resolved, diagnosis)

    def estimate(self, plan: Plan, size: tuple[int, int], mask: bool = False) -> Estimate:
        """Time and memory of ``plan`` on a photo of ``size`` = (height, width), before running
        it (figures from earlier runs here, else reference CPU figures; see engine.estimate);
        ``mask``: the job gives a reflection mask that the plan uses (``uses_mask``)."""
        return estimate_plan(plan, size, device_kind=self.device.kind,
                             threads=self.device.threads, history=self.history,
                             model_memory=manifest_model_memory(self.store.manifest),
                             installed=self.optional_installed(), mask=mask)

    def optional_installed(self) -> set[str]:
        """The models a step runs only when they are installed (SAM and the YOLO slot in
        ``reflection_mask``) that are installed here: what the estimate counts of them."""
        from .restore.reflection import SAM_MODELS, YOLO_ID

        return {m for m in (*SAM_MODELS, YOLO_ID) if self.runtime.is_available(m)}

    def prepare(self, request: JobRequest) -> Prepared:
        """Everything ``run`` would decide for ``request`` - diagnosis, plan, warnings and an
        estimate of time and memory - without running a step or writing a file. With a
        ``region`` the estimate is that of the part the preview runs on (``preview_part``: for
        a plan that upscales before its face step, grown to hold the faces reaching the region,
        which are looked for as the run does first), its memory with the whole photo the
        preview holds and looks at (``estimate.preview_whole_bytes``)."""
        photo = load_photo(request.path)
        size = (photo.height, photo.width)
        region = clipped = None
        if request.region is not None:
            region, clipped = check_region(request.region, size)
        diagnosis, plan, warnings, _ = self._resolve(request, photo)
        warnings[:0] = _load_warnings(photo)
        if clipped:
            warnings.append(_clipped_note(region))
        given_mask = request.mask_path is not None and uses_mask(plan)
        missing = self.missing_models(plan, given_mask)
        if missing:
            warnings.append(f"this plan needs models that are not installed ({', '.join(missing)}); "
                            "install them with: mend models pull " + " ".join(missing))
        unmet = _unmet_requirements(plan, given_mask, self.runtime)
        warnings += [f"the run would stop: {e}" for e in unmet]
        whole = photo
        whole_bytes = None
        if region is not None:
            # the part the run's steps would see. Its faces can only be known by looking for
            # them: a detector pass on the photo, as the run makes before its steps (the dry
            # run of a 1297 x 1920 photo took 0.6-0.7 s instead of 0.3-0.4 s, Haar); not when
            # the run would stop before (a model missing: the part is the region and margin)
            found = None
            if not missing and not unmet:
                try:
                    found = self._preview_faces(plan, photo, context_box(region, size),
                                                Progress())
                except EngineError as e:  # (what the run would fail with, said)
                    warnings.append(f"the run would stop: {e}")
            photo = _crop_photo(photo, preview_part(region, size,
                                                    found.rects if found else None))
            whole_bytes = _preview_whole_bytes(plan, whole)
        options = preview_options(request.output) if region is not None else request.output
        output = None
        if options.out_dir is not None:
            from .imageio import output_path_for

            output = output_path_for(photo.path, options, source_format=photo.format)
        estimate = self.estimate(plan, (photo.height, photo.width), given_mask)
        if not (estimate.keeps_photo and region is None and _copies_source(photo, options)):
            from .imageio import afresh_notes

            # (written afresh: what the result lacks - pages after the first, a CIFF block)
            warnings += afresh_notes(photo, options)
        try:
            self._check_memory(estimate, photo, warnings, options, copy=region is None,
                               whole=whole_bytes)
        except OutOfMemory as e:  # a dry run reports what the run would refuse
            warnings.append(f"the run would stop: {e}")
        if whole_bytes is not None and not estimate.nothing_to_run:
            # (its memory: the part's, and the whole photo the preview holds and looks at)
            estimate = replace(estimate, peak_bytes=estimate.peak_bytes + whole_bytes[0]
                               + whole_bytes[1])
        return Prepared(Path(request.path), (whole.height, whole.width), diagnosis, plan,
                        tuple(warnings), estimate, output, region)

    def _check_memory(self, estimate: Estimate, photo: Photo, warnings: list[str],
                      options: OutputOptions | None = None, copy: bool = True,
                      whole: tuple[int, int, int] | None = None) -> None:
        """Refuse a plan whose estimated peak memory exceeds this machine's RAM (it would
        swap for hours or be killed); warn when it exceeds what is free right now. ``copy``
        False: a kept photo is written afresh, never copied (a preview's region). ``whole``:
        a preview's (held, work, pixels) (``_preview_whole_bytes``): the whole photo it holds
        (already in memory: counted against the machine's RAM, not against what is free now)
        and what looking at it whole adds, for a photo of ``pixels``."""
        from .devices import available_memory, system_memory
        from .estimate import PROCESS_BYTES, finish_bytes, format_bytes

        need, total = estimate.peak_bytes, system_memory()
        if estimate.keeps_photo:  # (nothing to run, or nothing that changes the photo)
            if options is None or (copy and _copies_source(photo, options)):
                if estimate.nothing_to_run:
                    return  # the file is copied: the photo is already in memory, nothing more
            else:
                # kept as it is but written afresh (another format or bit depth, no
                # metadata): the save's conversion and encoder (a 60-megapixel JPEG to PNG
                # peaked at 3.6 GB)
                need = max(need, PROCESS_BYTES + finish_bytes(photo.width * photo.height,
                                                              photo.width * photo.height))
        held, pixels = 0, photo.width * photo.height
        if whole is not None:
            held, work, pixels = whole
            need += held + work
        what = (f"this {'preview' if whole is not None else 'plan'} needs about "
                f"{format_bytes(need)} of memory for this {pixels / 1e6:.0f}-megapixel photo")
        if need > total:
            raise OutOfMemory(f"{what}, more than this machine's {format_bytes(total)}: fix a "
                              "crop of it, or leave out or lower the upscaling step")
        # (the estimate counts the engine process itself, which is already in memory, as is
        # a preview's whole photo: only the rest must fit in what is free now)
        free = available_memory()
        if need - PROCESS_BYTES - held > free:
            warnings.append(f"{what}, more than the {format_bytes(free)} free now: it may be "
                            "slow (swapping) or fail; close other programs first")

    def missing_models(self, plan: Plan, mask: bool = False) -> list[str]:
        """Models the plan's enabled steps need that are not installed (``plan_models``:
        models a step can do without - ``profiles.OPTIONAL_MODELS`` - are not counted unless
        its params choose them; ``mask``: the job gives a reflection mask)."""
        return sorted(m for m in plan_models(plan, mask) if not self.runtime.is_available(m))

    def _require_models(self, plan: Plan, mask: bool = False) -> None:
        """Raise, before any step runs, the error the first step lacking a model would raise
        when it loads it (the store's: ``ModelMissing`` with how to install it, or the file
        found damaged), naming every other model the plan lacks too (``_with_other_missing``).
        A model a step would load only for what it finds (text regions, faces, a mask to fill)
        counts: the plan needs it, and the steps before it may take minutes; so does one a
        step's params choose explicitly (the SAM or YOLO glare detector, YuNet), and not one
        a step whose params make it change nothing would not load (a strength of 0): see
        ``plan_models``. Then what a step needs beyond the store's models being installed
        (``StepSpec.requires``: the PaddleOCR package; for an explicit YOLO detector
        ultralytics and an ONNX export in its slot): the error the step would raise when it
        starts. ``mask``: the job gives a reflection mask (no detector runs)."""
        for model_id in plan_models(plan, mask):  # (in the order the steps would load them)
            if self.runtime.is_available(model_id):
                continue
            try:
                # the check a step's load makes: raises what the step would (a damaged file:
                # the store's own error, which says how to repair it)
                self.runtime.path(model_id)
            except ModelMissing as e:
                raise self._with_other_missing(e, plan, mask) from None
        for err in _unmet_requirements(plan, mask, self.runtime):
            if isinstance(err, ModelMissing):
                raise self._with_other_missing(err, plan, mask) from None
            raise err

    def _resolve(self, request: JobRequest, photo: Photo, progress: Progress | None = None
                 ) -> tuple[Diagnosis, Plan, list[str], Diagnosis]:
        """(diagnosis with the class that runs, plan, warnings, the diagnosis as made)."""
        warnings: list[str] = []
        diagnosis = request.diagnosis
        # a reflection mask with the class left to Mend means "remove what I painted": class B
        masked = request.mask_path is not None and not (request.label or request.plan)
        if diagnosis is None:
            # with a forced class only the measurements matter: the analyzer is enough
            backend = "builtin" if (request.label or request.plan or masked) else request.backend
            diagnosis = self.diagnose(photo, backend, progress=progress)
        made = diagnosis
        if request.plan is not None:
            plan = request.plan
            label = plan.label
        else:
            label = Degradation.B if masked else (request.label or diagnosis.label)
            from .restore.profiles import build_plan

            if label is Degradation.D:  # nothing to fix: no models, no profile to resolve
                profile = request.profile if request.profile != "auto" else "builtin"
            else:
                profile, notes = self.resolve_profile(request.profile)
                warnings += notes
            plan = build_plan(label, profile, diagnosis)
        if label is not diagnosis.label:
            diagnosis = diagnosis.with_label(
                label, "a reflection mask was given" if masked else "overridden by the user")
        if request.mask_path is not None and not uses_mask(plan):
            warnings.append(mask_unused_note(plan))
        return diagnosis, plan, warnings, made

    # -- restoration ----------------------------------------------------------------------
    def run(self, request: JobRequest, progress: Progress | None = None) -> JobResult:
        """Restore one photo and write the result; the source file is only ever read.

        A model the plan needs and the store lacks (``plan_models``) fails the job right after
        the plan is made, before any step runs: ``ModelMissing`` naming every model missing.

        With ``request.region`` (a preview): the whole photo is diagnosed and planned (or
        ``request.diagnosis`` / ``request.plan`` reused), the steps run on the region plus
        ``PREVIEW_MARGIN`` px of context, whose result is trimmed off (at the chain's output
        scale); alpha and the reflection mask are cropped alike, the guard judges the region,
        and the region alone is written under the preview name (``preview_options``). The
        steps' detectors look at the whole photo (``StepContext.whole``, transparent pixels
        filled from the whole photo's) and cut what they find to the part; the text and face
        boxes and the OCR regions in ``artifacts`` are in the whole photo's (result's) pixels."""
        progress = progress or Progress()
        t_start = time.perf_counter()
        warnings: list[str] = []
        progress.update(0.0, f"loading {Path(request.path).name}")
        # what the file was when it was read: a kept original is copied from it only if it is
        # still that file when the result is written (it may be minutes later)
        source_state = _file_state(request.path)
        photo = load_photo(request.path)
        size = (photo.height, photo.width)
        region = box = None
        if request.region is not None:  # (checked before the diagnosis spends its time)
            region, clipped = check_region(request.region, size)
            box = context_box(region, size)
            if clipped:
                warnings.append(_clipped_note(region))
        warnings += _load_warnings(photo)  # e.g. metadata that could not be kept
        progress.update(_LOAD, "diagnosing")
        diagnosis, plan, notes, made = self._resolve(request, photo,
                                                     progress.sub(_LOAD, _DIAG))
        warnings += notes
        # a model the plan lacks fails the job now, not after the steps before it have run
        # (a mask given to a plan that inpaints replaces the glare detector, which loads none)
        given_mask = request.mask_path is not None and uses_mask(plan)
        self._require_models(plan, given_mask)
        label = plan.label
        progress.update(_LOAD + _DIAG, f"class {label.value}: {label.display_name}")
        options = request.output
        whole = full = whole_bytes = context = faces = found = None
        if box is not None:  # from here on the photo is the part the steps see
            found = self._preview_faces(plan, photo, box, progress)
            faces = found.rects if found is not None else None
            context, box = box, preview_part(region, size, faces)
            full = photo
            photo = _crop_photo(photo, box)
            options = preview_options(options)
            whole_bytes = _preview_whole_bytes(plan, full)
        estimate = self.estimate(plan, (photo.height, photo.width), given_mask)
        # (a preview's part is written afresh, never copied; it holds and looks at the whole
        # photo: checked before that work is done)
        self._check_memory(estimate, photo, warnings, options, copy=region is None,
                           whole=whole_bytes)
        if full is not None:
            # (the chain's input as the whole fix has it - transparent pixels filled from the
            # whole photo's - for the part, and the whole for a detector that looks at it:
            # filled only if one does)
            # (the faces found to grow the part: the face step restores them, not looking
            # for them in the whole photo again)
            whole = WholePhoto(full.pixels, full.alpha, box, region,
                               TransparentFill(full.pixels, full.alpha), context, found)
            del full

        mask = None
        if request.mask_path is not None and uses_mask(plan):  # (else a warning says so)
            from .imageio import load_mask

            try:
                mask = load_mask(request.mask_path, size)
            except BadImage as e:  # (named as the mask's: "this photo" it is not)
                raise BadMask(e.path, e.reason) from None
            if box is not None:
                mask = np.ascontiguousarray(mask[box[1]:box[3], box[0]:box[2]])

        # the colour stored under fully transparent pixels is not image data (often black): the
        # steps' neighbourhoods would pull it into the visible edge as a dark or bright halo
        source = (fill_transparent(photo.pixels, photo.alpha, progress.check) if whole is None
                  else np.ascontiguousarray(whole.filled_part(progress.check)))
        image, records, ctx = self._run_steps(photo, source, plan, diagnosis, mask, progress,
                                              warnings, estimate, whole)
        # a black-and-white photo stays black and white: a model may tint it (InvSR's VAE,
        # Real-ESRGAN, NAFNet work on colour; the saved file would be a faintly coloured RGB)
        image = keep_grey(source, image, in_place=True)
        # no step changed a pixel (each handed on the very array it was given: a fill with
        # nothing it may fill, a sharpen of strength 0): the photo is kept as it is
        unchanged = image is source
        models = used_models(records, self.store.manifest)
        artifacts = {k: v for k, v in ctx.artifacts.items() if k not in ("source", "alpha")}
        if faces is not None:  # (what an estimate of a later preview of the photo can use)
            artifacts["preview_faces"] = [list(r) for r in faces]
        if box is not None:  # the margin of context goes: the region's result alone
            inner = (region[0] - box[0], region[1] - box[1], region[2] - box[0],
                     region[3] - box[1])
            work = source.shape[:2]
            scale = (image.shape[1] / work[1], image.shape[0] / work[0])
            image = np.ascontiguousarray(_trim(image, inner, work))
            source = _trim(source, inner, work)
            if ctx.mask is not None:
                ctx.mask = np.ascontiguousarray(_trim(ctx.mask, inner, work))
                if "mask" in artifacts:
                    artifacts["mask"] = ctx.mask
            photo = _crop_photo(photo, inner)
            _boxes_to_photo(artifacts, box[0], box[1], scale)

        passthrough = unchanged or all(s.name == "passthrough" for s in plan.steps if s.enabled)
        inpaints = uses_mask(plan)  # it removes what its mask covers (its mask is saved too)
        if not passthrough and request.guard:
            from .restore.guard import check

            # (said: at 64.5 MP it takes ~9 s, the bar standing at the steps' end meanwhile)
            progress.update(_LOAD + _DIAG + _STEPS, "checking the result")
            # inpainted regions are meant to change: fidelity is judged outside the mask
            # (whatever the class: an edited plan of another class may inpaint too)
            verdict = check(source, image, mask=ctx.mask if inpaints else None,
                            cancel_check=progress.check, icc=photo.icc_profile)
            if not verdict.ok:
                warnings.append(f"kept the original: the result looked worse ({verdict.reason})")
                image = photo.pixels
                passthrough = True

        # the last point where a cancel stops the job: once writing starts the job finishes, so
        # a file on disk is never reported as a cancelled job (nor left behind by one); the
        # token says so to whoever would interrupt it from outside (the CLI's Ctrl+C handler)
        progress.commit(_LOAD + _DIAG + _STEPS, "saving")
        record = {
            "software": f"Mend {__version__}",
            "label": label.value,
            "profile": plan.profile,
            "steps": [r.to_json() for r in records],
            "models": list(models),
            "kept_original": passthrough,
        }
        if region is not None:
            # (a preview's region is written afresh, never as a copy of the original's bytes)
            record["preview"] = True
            record["region"] = list(region)
        # which photo it came from (name, size, SHA-256: --skip-existing tells apart the
        # results of a.png and a.bmp, a_mend.png and a_mend_1.png; no name without metadata),
        # when the file is still the one that was read. Not a preview's: no resume looks for
        # one, and its photo need not be read whole again for it
        from .imageio import source_record

        source = source_record(request.path, name=options.keep_metadata) \
            if region is None else None
        if source is not None and _file_state(request.path) == source_state:
            record["source"] = source
        out = self._save(photo, image, options, record, passthrough and region is None,
                         warnings, source_state)
        if ctx.mask is not None and inpaints and region is None:
            from .imageio import mask_path_for, save_mask

            # named after the result itself, never over a file: x.png and x.jpg restored into
            # one folder give x_mend.png and x_mend.jpg, whose masks would otherwise share
            # x_mend_mask.png (the second one's is x_mend_<ext>_mask.png)
            try:
                artifacts["mask_path"] = save_mask(ctx.mask, mask_path_for(out),
                                                   overwrite=False)
            except SaveFailed as e:
                # the result is written and complete: the job is done, without its mask file
                # (failing it would report a file on disk as not written)
                warnings.append(f"the reflection mask could not be saved: {e}")
        progress.finish("done")
        return JobResult(
            path=Path(request.path), output=out, label=label, diagnosis=diagnosis, plan=plan,
            steps=tuple(records), warnings=tuple(warnings + ctx.warnings), models=models,
            seconds=time.perf_counter() - t_start, artifacts=artifacts, region=region,
            kept_original=passthrough, diagnosed=made,
        )

    def _preview_faces(self, plan: Plan, photo: Photo, box: tuple[int, int, int, int],
                       progress: Progress) -> Any:
        """The faces of ``photo`` a preview's part (``box``: its region and margin) is to hold
        whole (``face.preview_faces``: a ``face.FaceSearch``, its ``rects``), looked for when
        the plan upscales before its face step (``preview_face_search``): the face step then
        restores them from the upscaled part, as the whole fix does from the whole upscaled
        photo. None: not looked for (no such step, or the part is the whole photo)."""
        params = preview_face_search(plan)
        if params is None or box == (0, 0, photo.width, photo.height):
            return None
        from .restore.face import preview_faces

        progress.update(_LOAD + _DIAG, "looking for faces around the part")
        return preview_faces(photo.pixels, params, self.runtime, progress.check)

    def _run_steps(self, photo: Photo, source: np.ndarray, plan: Plan, diagnosis: Diagnosis,
                   mask: np.ndarray | None, progress: Progress, warnings: list[str],
                   estimate: Estimate | None = None, whole: WholePhoto | None = None):
        image = source
        ctx = StepContext(device=self.device, progress=progress, runtime=self.runtime,
                          diagnosis=diagnosis, mask=mask, tile_size=self.tile_size,
                          warnings=[], artifacts={"source": source, "alpha": photo.alpha},
                          whole=whole)
        steps = [s for s in plan.steps if s.enabled]
        records: list[StepRecord] = []
        # each step's slice of the bar follows its estimated seconds (a 0.1 s sharpen and an
        # 8 s denoise do not get half each), so that the bar, and the ETA extrapolated from it,
        # move with time; the ETA is measured from here (loading and diagnosing have their own
        # fixed slices, which say nothing of the steps' speed)
        shares = step_shares(estimate, len(steps))
        progress.restart_eta()
        offset = _LOAD + _DIAG
        for i, step in enumerate(steps):
            spec = get_step(step.name)
            params = {**spec.defaults, **step.params}
            span = _STEPS * shares[i]
            ctx.progress = progress.sub(offset, span)
            offset += span
            ctx.progress.update(0.0, f"step {i + 1}/{len(steps)}: {step.name}")
            loaded = set(self.runtime.cached_keys())
            ctx.artifacts.pop(PART_SECONDS, None)
            t0 = time.perf_counter()
            out = self._run_step(spec, image, params, ctx, plan, steps[i:])
            seconds = time.perf_counter() - t0
            # (what of it a part with its own history entry took: SAM's pass of the mask step)
            parts = ctx.artifacts.pop(PART_SECONDS, None) or []
            # a step that loaded a model (or started OCR) spent most of a small photo's time on
            # that, once: per megapixel it multiplied the next large photo's estimate (one
            # 100 x 75 px photo took a 24 MP photo's from 27 min to 7.2 h for deblur_nafnet,
            # from 3 min to 4 h for text_fusion); its next runs, model cached, teach it
            # (only a model's first load in this engine: one evicted and loaded again for each
            # photo - a budget that holds one model at a time - loads as part of every run,
            # which the estimate should then learn)
            new = set(self.runtime.cached_keys()) - loaded
            first_load = bool(new - self._loaded_once)
            self._loaded_once |= new
            result = np.asarray(out.image, dtype=np.float32)
            # (min and max: a NaN or an infinity shows in them, with no photo-sized temporary)
            lo, hi = ((float(result.min()), float(result.max())) if result.size
                      else (np.nan, np.nan))
            if result.ndim != 3 or result.shape[2] != 3 or not (np.isfinite(lo)
                                                                and np.isfinite(hi)):
                raise EngineError(f"step {step.name} produced an invalid image {result.shape}")
            if step.name != "passthrough" and not out.notes.startswith("skipped") \
                    and not str(out.model).startswith("user:") and not first_load:
                # (a step that skipped its work took no time: it would teach the estimate that
                # the step is nearly free; so would the mask step handing on the user's mask)
                own = seconds
                for part, part_model, units, part_seconds in parts:
                    self.history.record(part, part_model, self.device.kind,
                                        self.device.threads, units, part_seconds)
                    own -= part_seconds
                # (per unit of the step's cost parameter: per InvSR sampling step)
                self.history.record(step.name, step_model(step), self.device.kind,
                                    self.device.threads,
                                    step_work_units(step.name, params,
                                                    image.shape[0] * image.shape[1]),
                                    max(own, 0.0))
            image = _clipped(result, image, lo, hi)
            records.append(StepRecord(step.name, out.model, seconds, out.notes))
            log.info("step %s (%s) %.2fs", step.name, out.model, seconds)
        ctx.progress = progress
        return image, records, ctx

    def _run_step(self, spec: Any, image: np.ndarray, params: dict[str, Any], ctx: StepContext,
                  plan: Plan, rest: list[Any]) -> Any:
        """``spec.fn`` on ``image``. A model it lacks is reported with every other model the
        rest of the plan (``rest``, from this step on) lacks, so that one download gets them
        all; running out of memory outside the tiler's own back-off (a LaMa region, a face,
        SAM, a model's loading) is an :class:`OutOfMemory` saying so, not a device's error.
        A cancel while the step loads a model is honoured at once (``runtime.cancellable``)."""
        from .tiling import free_memory, is_out_of_memory

        try:
            with self.runtime.cancellable(ctx.progress.check):
                return spec.fn(image, params, ctx)
        except ModelMissing as e:
            raise self._with_other_missing(e, replace(plan, steps=tuple(rest)),
                                           ctx.mask is not None) from None
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            what = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        # (out of the handler: the failed call's tensors went with its frames)
        free_memory(self.device)
        log.warning("out of memory in step %s (%s)", spec.name, what)
        raise OutOfMemory(f"not enough memory for the {spec.name} step on this device "
                          f"({self.device.name}); close other programs, choose a smaller tile "
                          "size or the CPU device")

    def _with_other_missing(self, error: ModelMissing, rest: Plan, mask: bool = False
                            ) -> ModelMissing:
        """``error`` naming also the other models ``rest`` needs and lacks (``mask``: the job
        gives a reflection mask)."""
        try:
            others = [m for m in self.missing_models(rest, mask) if m not in error.model_ids]
        except EngineError:  # (a broken store or manifest: the error as it was)
            return error
        if not others:
            return error
        ids = tuple(error.model_ids) + tuple(others)
        if str(error) == str(ModelMissing(error.model_ids)):  # the plain "pull it" message
            return ModelMissing(ids)
        return ModelMissing(ids, f"{error}; the plan also needs {', '.join(others)} (run: mend "
                                 f"models pull {' '.join(others)})")

    def _save(self, photo: Photo, image: np.ndarray, options: OutputOptions, record: dict,
              passthrough: bool, notes: list[str], source_state: tuple | None = None) -> Path:
        from .imageio import atomic_write_bytes, output_path_for, save_photo

        dest = output_path_for(photo.path, options, source_format=photo.format)
        if passthrough and _copies_source(photo, options, dest):
            # nothing changed: copy the original bytes (pixels and metadata identical); without
            # metadata it is written afresh, so that the camera, GPS and dates are dropped
            data = _unchanged_bytes(photo.path, source_state)
            if data is not None:
                return atomic_write_bytes(dest, data, overwrite=False)
            # moved, deleted or rewritten since it was read: its bytes now are not the photo
            # this job read (nor, perhaps, a photo at all); the pixels in memory are
            notes.append("the original file changed or went away while it was being restored: "
                         "the result was written from the photo as it was read")
        alpha = photo.alpha
        if alpha is not None and alpha.shape[:2] != image.shape[:2]:
            import cv2

            alpha = cv2.resize(alpha, (image.shape[1], image.shape[0]),
                               interpolation=cv2.INTER_LINEAR)
        return save_photo(image, dest, like=photo, options=options, alpha=alpha, record=record,
                          notes=notes)


def plan_models(plan: Plan, mask: bool = False) -> list[str]:
    """The models ``plan``'s enabled steps load, in the order they would load them: the model a
    step's ``model`` parameter chooses (``StepSpec.choices``: a Real-ESRGAN for
    ``sr_realesrgan``, a NAFNet for ``deblur_nafnet``; one it does not offer is a
    ``UsageError`` naming those it does) in place of the default its spec lists, and the
    step's other models, except those it does without
    (``profiles.OPTIONAL_MODELS``: YuNet -> the Haar faces, SAM and the YOLO slot -> the
    built-in glare detector). A step whose params decide what it loads says so itself
    (``StepSpec.loads``): such an optional model chosen explicitly counts (``detector`` "sam"
    or "yolo", ``face_detector`` "yunet"), a step whose strength makes it change nothing loads
    none (``dereflect_nafnet`` at 0), the text step the models of the OCR backend it uses
    (PP-OCR bundled with rapidocr; none of the store's for PaddleOCR) and its Real-ESRGAN.
    ``mask``: the job gives a reflection mask, which the mask step uses instead of finding one.
    Whatever the plan's profile: an edited plan's added step needs its model all the same."""
    from .restore.profiles import OPTIONAL_MODELS
    from .restore.registry import param_choice

    needed: list[str] = []
    for step in plan.steps:
        if not step.enabled:
            continue
        spec = get_step(step.name)
        params = {**spec.defaults, **step.params}
        if spec.loads is not None:
            needed += spec.loads(params, mask)
            continue
        ids = list(spec.models)
        if "model" in spec.choices:
            chosen = param_choice(step.name, params)
            ids = [chosen if m in spec.choices["model"] else m for m in ids]
        needed += [m for m in ids if m not in OPTIONAL_MODELS]
    return list(dict.fromkeys(needed))


def used_models(records: Any, known: Any) -> tuple[str, ...]:
    """The ids of the store's models that the steps of ``records`` used, in order, once each
    (``JobResult.models``, the record's ``models``): a step's ``model`` names them, "+"-joined
    when it used several ("reflection-yolo+sam-vit-base", "builtin:glare+sam-vit-base"); the
    rest of it - a built-in method ("builtin:telea"), what the user gave ("user:mask"), an OCR
    backend ("paddleocr:pp-ocr") - is no id of the manifest ``known``, and only the step's own
    record says it."""
    return tuple(dict.fromkeys(m for r in records for m in r.model.split("+") if m in known))


def _unmet_requirements(plan: Plan, mask: bool, runtime: Any) -> list[EngineError]:
    """What ``plan``'s enabled steps need beyond the store's models being installed and lack
    (PyTorch for the models that run on it: ``TorchMissing``; ``StepSpec.requires``: the
    PaddleOCR package; ultralytics and an ONNX file in the YOLO slot for an explicit YOLO
    detector): each the error its step would raise. ``mask``: the job
    gives a reflection mask; ``runtime``: the engine's, whose store the steps load from."""
    unmet: list[EngineError] = []
    # models that run on PyTorch where it cannot be imported (the frozen app without the
    # environment the installer makes): the first load failed with an internal error
    torch_missing = getattr(runtime, "torch_missing", None)
    err = torch_missing(plan_models(plan, mask)) if torch_missing is not None else None
    if err is not None:
        unmet.append(err)
    for step in plan.steps:
        if not step.enabled:
            continue
        spec = get_step(step.name)
        if spec.requires is None:
            continue
        try:
            spec.requires({**spec.defaults, **step.params}, mask, runtime)
        except EngineError as e:
            unmet.append(e)
    return unmet


# the steps that remove what a reflection mask covers (``reflection_mask`` only hands it on)
MASK_STEPS = frozenset({"inpaint_lama", "inpaint_builtin"})


def uses_mask(plan: Plan) -> bool:
    """Whether ``plan`` has an enabled step that inpaints what a reflection mask covers."""
    return any(s.enabled and s.name in MASK_STEPS for s in plan.steps)


def mask_unused_note(plan: Plan) -> str:
    """The job's warning when a mask was given to a plan that does not use it."""
    if plan.label is Degradation.B:
        return ("the reflection mask was not used: this plan's inpainting steps are off; turn "
                "one on to remove what the mask covers")
    return (f"the reflection mask was not used: class {plan.label.value} "
            f"({plan.label.short_name}) has no inpainting step; to remove what the mask covers, "
            "fix the photo as class B (Reflection)")


def check_region(region: Any, size: tuple[int, int]
                 ) -> tuple[tuple[int, int, int, int], bool]:
    """A preview's ``region`` (x0, y0, x1, y1: upright photo px, x1 and y1 excluded) as whole
    pixels (outward) clipped to a photo of ``size`` = (height, width), and whether it had to be
    clipped. A :class:`UsageError` when it is not four numbers, is empty or inverted, or lies
    wholly outside the photo."""
    h, w = int(size[0]), int(size[1])
    try:
        vals = [v for v in region]
        if len(vals) != 4 or any(isinstance(v, (bool, str, bytes)) for v in vals):
            raise ValueError
        x0, y0, x1, y1 = (float(v) for v in vals)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"a preview region is four numbers x0, y0, x1, y1 in the photo's "
                         f"pixels (got {region!r})") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise UsageError(f"a preview region's corners must be finite numbers (got {region!r})")
    text = f"{_num(x0)},{_num(y0)},{_num(x1)},{_num(y1)}"
    if x1 <= x0 or y1 <= y0:
        raise UsageError(f"the preview region {text} is empty: x1 must be greater than x0 and "
                         "y1 greater than y0")
    box = (max(0, math.floor(x0)), max(0, math.floor(y0)), min(w, math.ceil(x1)),
           min(h, math.ceil(y1)))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise UsageError(f"the preview region {text} lies outside the {w} x {h} photo")
    clipped = (x0 < 0 or y0 < 0 or x1 > w or y1 > h)
    return box, clipped


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _clipped_note(region: tuple[int, int, int, int]) -> str:
    return ("the preview region reached past the photo's edge: it was clipped to "
            f"{region[0]},{region[1]},{region[2]},{region[3]}")


def context_box(region: tuple[int, int, int, int], size: tuple[int, int],
                margin: int | None = None) -> tuple[int, int, int, int]:
    """``region`` grown by ``margin`` (None: ``PREVIEW_MARGIN``) px each side, within a photo
    of ``size`` = (h, w): the part of the photo a preview's steps run on."""
    h, w = size
    margin = PREVIEW_MARGIN if margin is None else int(margin)
    return (max(0, region[0] - margin), max(0, region[1] - margin),
            min(w, region[2] + margin), min(h, region[3] + margin))


def preview_face_search(plan: Plan) -> dict[str, Any] | None:
    """The params (its defaults merged in) of ``plan``'s face step when the plan upscales
    before it: how a preview looks for the faces its part is grown to hold whole
    (``preview_part``). None: no such step, so no part is grown for faces."""
    scale = 1
    for step in plan.steps:
        if not step.enabled:
            continue
        if step.name == "face_codeformer":
            return {**get_step(step.name).defaults, **step.params} if scale > 1 else None
        scale *= step_scale(step)
    return None


def preview_part(region: tuple[int, int, int, int], size: tuple[int, int],
                 faces: Any = None) -> tuple[int, int, int, int]:
    """The part of a photo of ``size`` = (h, w) a preview of ``region`` runs its steps on: the
    region and its margin of context (``context_box``), grown to hold whole, with that margin,
    the ``faces`` (their paste-back rectangles, ``face.preview_faces``; None or none: not
    grown) whose restoration reaches the region. What the run processes, the dry run and the
    queue's estimates count."""
    box = context_box(region, size)
    if not faces:
        return box
    from .restore.face import preview_face_box

    return preview_face_box(region, box, faces, size, PREVIEW_MARGIN)


def preview_options(options: OutputOptions) -> OutputOptions:
    """``options`` for a preview: its name ends in ``PREVIEW_SUFFIX`` after the result's
    suffix (``IMG_1_mend_preview.jpg``), which is never a result's name."""
    return replace(options, suffix=f"{options.suffix}{PREVIEW_SUFFIX}")


def _preview_whole_bytes(plan: Plan, photo: Photo) -> tuple[int, int, int]:
    """(held, work, pixels) of a preview of ``photo`` (the whole photo): see
    ``estimate.preview_whole_bytes``."""
    from .estimate import preview_whole_bytes

    alpha = photo.alpha
    transparent = alpha is not None and float(np.min(alpha)) <= 0.5 / 255.0
    held, work = preview_whole_bytes(plan, (photo.height, photo.width),
                                     alpha=alpha is not None, transparent=transparent)
    return held, work, photo.height * photo.width


def _crop_photo(photo: Photo, box: tuple[int, int, int, int]) -> Photo:
    """``photo`` with only the pixels (and alpha) of ``box`` = (x0, y0, x1, y1); its metadata,
    profile and path as they are (a copy: the steps get contiguous arrays)."""
    x0, y0, x1, y1 = box
    alpha = photo.alpha
    return replace(photo, pixels=np.ascontiguousarray(photo.pixels[y0:y1, x0:x1]),
                   alpha=None if alpha is None else np.ascontiguousarray(alpha[y0:y1, x0:x1]))


def _trim(arr: np.ndarray, box: tuple[int, int, int, int], base: tuple[int, int]
          ) -> np.ndarray:
    """The part ``box`` (x0, y0, x1, y1 in pixels of an image of ``base`` = (h, w)) of ``arr``,
    which may be that image at another scale (a chain's x2 or x4 result)."""
    sy, sx = arr.shape[0] / base[0], arr.shape[1] / base[1]
    x0, y0, x1, y1 = box
    return arr[round(y0 * sy):round(y1 * sy), round(x0 * sx):round(x1 * sx)]


def _boxes_to_photo(artifacts: dict[str, Any], dx: int, dy: int,
                    scale: tuple[float, float] = (1.0, 1.0)) -> None:
    """The steps' text and face boxes (source px of the part they ran on) moved into the
    whole photo's pixels, as the viewer lays them over it; the text step's ``ocr_regions``
    (``box``, ``padded``, ``quad``: output px of the part, ``scale`` = (x, y) output px per
    source px) moved into the whole result's output pixels."""
    for key in ("text_boxes", "face_boxes"):
        if artifacts.get(key):
            artifacts[key] = [[b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy, *b[4:]]
                              for b in artifacts[key]]
    if artifacts.get("text_quads"):
        artifacts["text_quads"] = [[[x + dx, y + dy] for x, y in q]
                                   for q in artifacts["text_quads"]]
    if artifacts.get("ocr_regions"):
        ox, oy = round(dx * scale[0]), round(dy * scale[1])
        artifacts["ocr_regions"] = [
            {**r, **{k: [r[k][0] + ox, r[k][1] + oy, r[k][2] + ox, r[k][3] + oy]
                     for k in ("box", "padded") if k in r},
             **({"quad": [[x + ox, y + oy] for x, y in r["quad"]]} if "quad" in r else {})}
            for r in artifacts["ocr_regions"]]


_GREY_SLAB = 1 << 18  # pixels made grey (or checked) at a time: 3 MB of float32 RGB


def keep_grey(source: np.ndarray, image: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """``image`` made grey (its luma in all three channels) when ``source`` is grey (three
    equal channels) and ``image`` is not; else ``image`` as it is. A slab of rows at a time,
    the same values as the whole-image formula (its full-size luma and three-channel copy:
    24 MP, 366 MiB at the peak and 0.7-2.0 s on a busy 2-core machine; in place now 2 MiB and
    0.3-0.5 s). ``in_place``: written into ``image`` itself when it is a writeable float32
    array sharing no memory with ``source`` (the pipeline's own step result, as ``_clipped``
    takes it), else into a new array."""
    if image.ndim != 3 or image.shape[2] != 3 or not _is_grey(source) or _is_grey(image):
        return image
    from .restore.classical import luminance

    own = in_place and image.dtype == np.float32 and image.flags.writeable \
        and not np.shares_memory(image, source)
    out = image if own else np.empty(image.shape, np.float32)
    rows = max(1, _GREY_SLAB // max(1, image.shape[1]))
    for y in range(0, image.shape[0], rows):
        out[y:y + rows] = luminance(image[y:y + rows])[..., None]
    return out


def _is_grey(a: np.ndarray) -> bool:
    """Three equal channels, checked a slab of rows at a time (no full-size comparison
    arrays; a tinted result stops at its first tinted slab)."""
    if a.ndim != 3 or a.shape[2] != 3:
        return False
    rows = max(1, _GREY_SLAB // max(1, a.shape[1]))
    for y in range(0, a.shape[0], rows):
        s = a[y:y + rows]
        if not (np.array_equal(s[..., 0], s[..., 1]) and np.array_equal(s[..., 1], s[..., 2])):
            return False
    return True


def _clipped(result: np.ndarray, before: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A step's ``result`` (of min ``lo``, max ``hi``) clipped to [0, 1] without a photo-sized
    copy where none is needed: as it is when already in range (a skipped step hands its input
    back), in place when it is the step's own array (the copy cost 12 bytes per pixel: 0.7 GB
    at 60 megapixels), copied only when it shares memory with the step's input."""
    if lo >= 0.0 and hi <= 1.0:
        return result
    if result.flags.writeable and not np.shares_memory(result, before):
        return np.clip(result, 0.0, 1.0, out=result)
    return np.clip(result, 0.0, 1.0)


def _copies_source(photo: Photo, options: OutputOptions, dest: Path | None = None) -> bool:
    """Whether a result kept as it is (nothing to fix, or the guard kept the original) is the
    source file's bytes copied: same format (what the file really is, not its name: a HEIF or
    WebP named .jpg is re-encoded) and bit depth, metadata kept. Else it is written afresh."""
    if dest is None:
        from .imageio import output_path_for

        dest = output_path_for(photo.path, options, source_format=photo.format)
    depth = options.bit_depth
    if depth is not None and dest.suffix.lower() not in (".png", ".tif", ".tiff"):
        depth = 8  # (JPEG/WebP hold 8 bits: a 16 asked of them changes nothing)
    return (_format_matches(photo.format, dest.suffix.lstrip("."))
            and depth in (None, photo.bit_depth) and options.keep_metadata)


def _file_state(path: str | os.PathLike[str]) -> tuple | None:
    """What says a file is still the one that was read: its identity, size and time."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _unchanged_bytes(path: Path, state: tuple | None) -> bytes | None:
    """``path``'s bytes if it is still the file of ``state`` (before and after reading them),
    else None: moved, deleted, replaced or rewritten meanwhile."""
    if state is None or _file_state(path) != state:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if _file_state(path) == state and len(data) == state[2] else None


def step_shares(estimate: Estimate | None, count: int) -> list[float]:
    """Each enabled step's share (summing to 1) of the steps' progress: proportional to its
    estimated seconds; a step without a figure counts as the average of those with one, and
    equal shares when no step has one. Every step keeps at least 1% of the total."""
    if count <= 0:
        return []
    secs = [s.seconds for s in estimate.steps] if estimate is not None else []
    known = [x for x in secs if x is not None and x > 0]
    if len(secs) != count or not known:
        return [1.0 / count] * count
    mean = sum(known) / len(known)
    raw = [mean if x is None else max(0.0, x) for x in secs]
    total = sum(raw)
    floor = 0.01 * total
    raw = [max(x, floor) for x in raw]
    total = sum(raw)
    return [x / total for x in raw]


_FILL_BAND_ROWS = 256  # rows (or columns) of a photo worked on at a time (fill_transparent)
_FILL_SLOT = threading.Lock()  # one whole-photo reduction of fill_transparent at a time


def fill_transparent(rgb: np.ndarray, alpha: np.ndarray | None,
                     check: Callable[[], None] | None = None,
                     box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``rgb`` with the colour under fully transparent pixels replaced by that of the nearest
    visible ones, spread smoothly (push-pull over an image pyramid). What a file stores there is
    arbitrary (usually black) and invisible; a step that looks at neighbourhoods would carry it
    into the visible edge. Visible and partly transparent pixels are untouched; without
    transparent pixels ``rgb`` is returned as is, else a float32 copy. ``box`` (x0, y0, x1,
    y1): only that part of the result (the same pixels), made without the whole photo's
    (see :class:`TransparentFill`). ``check`` (a progress's ``check``) is called between the
    bands and stages."""
    return TransparentFill(rgb, alpha)(box, check)


class TransparentFill:
    """``fill_transparent`` of one photo, of a part of it or of all of it: a preview's steps
    need their part filled, and only a step that looks at the whole photo (faces, glare, text
    lines, a measured noise level) the whole; the pyramid the fill is spread from (a quarter
    of the photo's pixels and less, made from all of them) is made once for both.

    The fill at a transparent pixel is the level above full size brought up (bilinear): the
    part's fill needs that level whole but only the part at full size. That level is made a
    band of rows (or columns) at a time, the same values as the whole photo halved at once
    (an exact halving in that direction: the photo's height, or else its width, is even);
    when both are odd, from the whole photo at once (a cancel abandons it). Made whole, a
    120-megapixel RGBA photo's fill took 40 s and 8.4 GB more than the photo; in bands of the
    full-size work, 12-20 s and 1.8 GB. A 1280-px part of a synthetic 120-megapixel RGBA
    (12632 x 9500, busy 2-core machine): 5.3 s where the whole fill took 11.9-13.7 s, and the
    preview's peak memory 3.3 GB instead of 4.7; the whole made after the part (a detector
    looks at it): 10.6-11.1 s for both."""

    def __init__(self, rgb: np.ndarray, alpha: np.ndarray | None) -> None:
        self.rgb, self.alpha = rgb, alpha
        self._hole: np.ndarray | None = None
        self._empty: bool | None = None  # no transparent pixel, or no visible one: no fill
        self._fill: np.ndarray | None = None  # the level above full size, filled
        self._base: np.ndarray | None = None  # the whole full-size level (both sides odd)

    def _holes(self, check: Callable[[], None] | None) -> bool:
        """Whether there is anything to fill (the photo has transparent and visible pixels)."""
        if self._empty is None:
            if self.alpha is None:
                self._empty = True
            else:
                self._hole = np.asarray(self.alpha) <= 0.5 / 255.0
                if check is not None:
                    check()
                self._empty = not self._hole.any() or bool(self._hole.all())
                if self._empty:
                    self._hole = None
        return not self._empty

    def __call__(self, box: tuple[int, int, int, int] | None = None,
                 check: Callable[[], None] | None = None) -> np.ndarray:
        """The filled photo (``box``: that part of it)."""
        rgb = self.rgb
        if not self._holes(check):
            return rgb if box is None else rgb[box[1]:box[3], box[0]:box[2]]
        self._pyramid(check)
        h, w = self._hole.shape
        x0, y0, x1, y1 = (0, 0, w, h) if box is None else box
        if self._base is not None:
            out = self._base if box is None else self._base[y0:y1, x0:x1].copy()
        else:
            out = np.empty((y1 - y0, x1 - x0, 3), np.float32)
            for r in range(y0, y1, _FILL_BAND_ROWS):
                out[r - y0:r - y0 + _FILL_BAND_ROWS] = rgb[r:min(y1, r + _FILL_BAND_ROWS),
                                                           x0:x1]
                _call(check)
        self._fill_holes(out, (x0, y0, x1, y1), check)
        if box is None:  # (all of it made: its work is let go, made again if asked again)
            self._fill = self._base = self._hole = self._empty = None
        return out

    def _pyramid(self, check: Callable[[], None] | None) -> None:
        """The level above full size, filled: made once (push-pull: weighted means halving
        down to one pixel, then the coarse colour where a level has too little weight)."""
        if self._fill is not None:
            return
        import cv2

        levels = [self._level_one(check)]
        while max(levels[-1][1].shape) > 1:  # pull: weighted means, halving down to one pixel
            levels.append(_halved(*levels[-1]))
        fill = None
        for col, wt in reversed(levels):  # push: coarse colour where a level has little weight
            _call(check)
            own = col  # (in place: the levels are this function's own)
            own /= np.maximum(wt, 1e-6)[..., None]
            if fill is not None:
                up = cv2.resize(fill, (wt.shape[1], wt.shape[0]),
                                interpolation=cv2.INTER_LINEAR).reshape(own.shape)
                _call(check)
                a = np.minimum(wt, 1.0)[..., None]
                own *= a
                _call(check)
                up *= 1.0 - a
                _call(check)
                own += up
                del up, a
            fill = own
        self._fill = fill

    def _level_one(self, check: Callable[[], None] | None) -> tuple[np.ndarray, np.ndarray]:
        """(colour x weight, weight) of full size halved: the visible colours have weight 1,
        the transparent pixels 0 (and no colour)."""
        import cv2

        rgb, hole = self.rgb, self._hole
        h, w = hole.shape
        size = (max(1, (w + 1) // 2), max(1, (h + 1) // 2))
        if h % 2 and w % 2:
            # both sides odd: no band halves exactly as the whole does; the full-size level is
            # made in bands, halved whole (abandoned on a cancel), and kept as the result's base
            weight = np.empty((h, w), np.float32)
            out = np.empty((h, w, 3), np.float32)
            for y0 in range(0, h, _FILL_BAND_ROWS):
                y1 = min(h, y0 + _FILL_BAND_ROWS)
                np.logical_not(hole[y0:y1], out=weight[y0:y1], casting="unsafe")
                np.multiply(rgb[y0:y1], weight[y0:y1, :, None], out=out[y0:y1])
                _call(check)
            level = call_cancellable(functools.partial(_halved, out, weight), check,
                                     slot=_FILL_SLOT, name="mend-fill")
            self._base = out
            return level
        col = np.empty((size[1], size[0], 3), np.float32)
        wt = np.empty((size[1], size[0]), np.float32)
        rows = h % 2 == 0  # (bands of rows; else of columns, the width being even)
        n = h if rows else w
        for a in range(0, n, _FILL_BAND_ROWS):  # (an even number: the bands halve exactly)
            b = min(n, a + _FILL_BAND_ROWS)
            if rows:
                part, there = (slice(a, b), slice(None)), (slice(a // 2, b // 2), slice(None))
                dsize = (size[0], (b - a) // 2)
            else:
                part, there = (slice(None), slice(a, b)), (slice(None), slice(a // 2, b // 2))
                dsize = ((b - a) // 2, size[1])
            weight = np.logical_not(hole[part]).astype(np.float32)
            colour = np.multiply(rgb[part], weight[..., None], dtype=np.float32)
            col[there] = cv2.resize(colour, dsize, interpolation=cv2.INTER_AREA).reshape(
                dsize[1], dsize[0], 3)
            wt[there] = cv2.resize(weight, dsize, interpolation=cv2.INTER_AREA).reshape(
                dsize[1], dsize[0])
            _call(check)
        return col, wt

    def _fill_holes(self, out: np.ndarray, box: tuple[int, int, int, int],
                    check: Callable[[], None] | None) -> None:
        """Give the transparent pixels of ``out`` (the photo's part ``box``) the level above's
        filled colour brought up (bilinear, as cv2.resize's INTER_LINEAR: the rows across the
        photo's width, then each full-size row from its two rows), band by band where the
        holes are. A part's rows are brought up in the bands of the whole photo's fill (from
        its first row with holes): OpenCV's resampling of a row depends on the other rows it
        is given (pairs of rows take another path), so other bands would give the part values
        a hair (1e-7) off the whole's."""
        import cv2

        hole, fill = self._hole, self._fill
        h, w = hole.shape
        x0, y0, x1, y1 = box
        fh = fill.shape[0]
        scale_y = 1.0 / (h / fh)
        with_holes = np.flatnonzero(hole.any(axis=1))
        first, end = int(with_holes[0]), int(with_holes[-1]) + 1
        start = first + max(0, (y0 - first) // _FILL_BAND_ROWS) * _FILL_BAND_ROWS
        for b0 in range(start, min(end, y1), _FILL_BAND_ROWS):
            b1 = min(h, b0 + _FILL_BAND_ROWS)
            r0_, r1_ = max(b0, y0), min(b1, y1)  # (the band's rows in the part)
            band_hole = hole[r0_:r1_, x0:x1]
            if r1_ <= r0_ or not band_hole.any():
                continue
            fy = ((np.arange(b0, b1) + 0.5) * scale_y - 0.5).astype(np.float32)
            sy = np.floor(fy).astype(np.int64)
            f = (fy - sy)[:, None, None]
            r0 = np.clip(sy, 0, fh - 1)
            r1 = np.clip(sy + 1, 0, fh - 1)
            lo, hi = int(r0.min()), int(r1.max()) + 1
            rows = cv2.resize(np.ascontiguousarray(fill[lo:hi]), (w, hi - lo),
                              interpolation=cv2.INTER_LINEAR).reshape(hi - lo, w, 3)
            rows = rows[:, x0:x1]
            inside = slice(r0_ - b0, r1_ - b0)
            f = f[inside]
            up = np.take(rows, r0[inside] - lo, axis=0)  # rows[r0] * (1 - f) + rows[r1] * f
            up *= 1.0 - f
            below = np.take(rows, r1[inside] - lo, axis=0)
            below *= f
            up += below
            np.clip(up, 0.0, 1.0, out=up)
            np.copyto(out[r0_ - y0:r1_ - y0], up, where=band_hole[..., None])
            del rows, up, below
            _call(check)


def _call(check: Callable[[], None] | None) -> None:
    if check is not None:
        check()


def _halved(col: np.ndarray, wt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A pyramid level of ``fill_transparent`` from the one below: (colour, weight) halved."""
    import cv2

    size = (max(1, (wt.shape[1] + 1) // 2), max(1, (wt.shape[0] + 1) // 2))
    return (cv2.resize(col, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], 3),
            cv2.resize(wt, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0]))


def _format_matches(source_format: str, wanted: str) -> bool:
    """Whether a decoded source (PIL format name) already is a file of format ``wanted``
    (an extension or format name). An MPO (a phone's JPEG with a depth map) is a JPEG."""
    aliases = {"jpg": "jpeg", "tif": "tiff", "mpo": "jpeg"}
    w = aliases.get(wanted.lower(), wanted.lower())
    src = source_format.lower()
    return aliases.get(src, src) == w


def _torch_loaded() -> bool:
    import sys

    return "torch" in sys.modules


def default_output_options(out_dir: Path | None, **kw: Any) -> OutputOptions:
    return replace(OutputOptions(), out_dir=out_dir, **kw)


def _load_warnings(photo: Photo) -> list[str]:
    """What loading had to give up (unreadable EXIF, an ICC profile for the wrong colour space,
    precision a decoder drops), said once per job so the photographer sees it with the result,
    not only in the log."""
    return [str(w) for w in dict.fromkeys((photo.info or {}).get("warnings", ()))]
