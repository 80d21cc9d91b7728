"""ModelRuntime: where the steps get model files and loaded models from.

It owns the loaded-model cache: an LRU bounded by the device memory budget, keyed by
(kind, model id, device, dtype). Transformers/diffusers models are loaded by their own areas from
``runtime.path(id)`` with ``local_files_only=True`` and may be kept here through ``cached()``.

A model's loading (seconds for a checkpoint, about a minute for a 7B VLM on a laptop) is
abandoned on a cancel of the job whose check is set with :meth:`ModelRuntime.cancellable` (the
pipeline sets it around each step and diagnosis): it goes on in the background, one load at a
time in the process, and its model is cached as any other. A program quitting meanwhile does not
wait for it (``registry.exit_leaving_abandoned_calls``).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..devices import DeviceInfo, configure_torch, empty_cache, torch_missing_reason
from ..errors import ModelMissing, TorchMissing, UsageError
from .store import ModelStore

log = logging.getLogger(__name__)

# the manifest's loaders that run on PyTorch (all but the ONNX ones and rapidocr's bundled
# PP-OCR; ultralytics, the YOLO slot's, imports torch too)
TORCH_LOADERS = frozenset({"spandrel", "transformers", "diffusers", "torch-state-dict", "yolo"})


def torch_model_ids(store: ModelStore, model_ids: Iterable[str]) -> list[str]:
    """Those of ``model_ids`` that run on PyTorch (their loader is one of ``TORCH_LOADERS``),
    in their order; an id the manifest does not know is left out (its load says so)."""
    need = []
    for mid in model_ids:
        try:
            if store.spec(mid).loader in TORCH_LOADERS:
                need.append(mid)
        except UsageError:
            continue
    return need

# one model load at a time in the process (every runtime's: the memory is the machine's). A
# load that a cancelled job abandoned keeps it until it has ended, so the next load (which waits
# for it, watching its own job's cancel) never brings a second model into memory beside it
_LOAD_SLOT = threading.Lock()
# .active: this thread is running a load (a factory that builds a part through ``cached()``
# builds it there, in the slot its load already holds)
_loading = threading.local()


class ModelRuntime:
    """Paths to installed models and an LRU of loaded ones (bounded by ``budget`` bytes,
    ``device.memory_budget`` by default)."""

    def __init__(self, device: DeviceInfo | Callable[[], DeviceInfo],
                 store: ModelStore | None = None, *, budget: int | None = None) -> None:
        # a callable: the device is chosen at its first use (choosing "auto" imports torch,
        # ~2 s and ~0.6 GB, which a job that loads no model never needs)
        self._device = device if isinstance(device, DeviceInfo) else None
        self._device_fn = None if isinstance(device, DeviceInfo) else device
        self.store = store if store is not None else ModelStore()
        self._budget = None if budget is None else int(budget)
        self._cache: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        # key -> (the error's message, the model folders' files as they were): weights that could
        # not be loaded are not read again until those files change (a repair, a pull). Only the
        # message is kept: the exception would hold its traceback's frames (the half-read
        # weights, the photo being diagnosed) for as long as it is remembered
        self._failed: dict[Any, tuple[str, Any]] = {}
        self._lock = threading.RLock()
        self._local = threading.local()  # .check: the cancel check of this thread's job

    @contextlib.contextmanager
    def cancellable(self, check: Callable[[], None] | None) -> Iterator[None]:
        """While open, a model that ``cached()`` loads for this thread (``load_image_model``,
        a classifier's or a step's own ``cached``) is loaded in a worker thread while this one
        calls ``check`` (a job's ``Progress.check``) every ``CANCEL_POLL`` s
        (:func:`~engine.restore.registry.call_cancellable`): a cancel raises ``Cancelled`` here
        at once. The abandoned load goes on to its end in the background and its model is
        cached (a run again does not load it again), or its failure remembered, as if it had
        been waited for (a program quitting meanwhile leaves without waiting for it:
        ``registry.exit_leaving_abandoned_calls``). Other threads are not affected."""
        previous = getattr(self._local, "check", None)
        self._local.check = check
        try:
            yield
        finally:
            self._local.check = previous

    @property
    def device(self) -> DeviceInfo:
        if self._device is None:
            with self._lock:
                if self._device is None:
                    self._device = self._device_fn()
        return self._device

    @property
    def budget(self) -> int:
        """Bytes the cache of loaded models may hold (``device.memory_budget`` by default)."""
        return self._budget if self._budget is not None else int(self.device.memory_budget)

    @budget.setter
    def budget(self, value: int) -> None:
        self._budget = int(value)

    # ------------------------------------------------------------------ files
    def is_available(self, model_id: str) -> bool:
        """Installed and usable (verified, unpinned-but-recorded, bundled, or a configured slot)."""
        try:
            return self.store.is_installed(model_id)
        except UsageError:
            return False

    def torch_missing(self, model_ids: Iterable[str]) -> TorchMissing | None:
        """The error to raise when some of ``model_ids`` run on PyTorch (``TORCH_LOADERS``) and
        it cannot be imported here (``devices.torch_missing_reason``), else None: said before
        a job's steps or a diagnosis start, not an internal error at the first load."""
        need = torch_model_ids(self.store, model_ids)
        reason = torch_missing_reason() if need else None
        return TorchMissing(need, reason) if reason else None

    def require_torch(self, model_ids: Iterable[str]) -> None:
        """Raise :meth:`torch_missing`'s error, if any."""
        err = self.torch_missing(model_ids)
        if err is not None:
            raise err

    def path(self, model_id: str) -> Path:
        """The folder holding the model's files (cheap integrity check; raises ModelMissing or
        ModelFileCorrupt)."""
        return self.store.require(model_id)

    def file(self, model_id: str, name: str | None = None) -> Path:
        """One file of the model: ``name`` or the manifest's main file."""
        spec = self.store.spec(model_id)
        folder = self.store.require(model_id)
        if spec.slot:
            p = self.store.slot_path(model_id)
            if p is None:
                raise ModelMissing(model_id, spec.notes)
            return p if name is None else folder / name
        try:
            f = spec.get_file(name)
        except KeyError as e:
            raise UsageError(str(e)) from None
        return folder / f.name

    def estimate_bytes(self, model_id: str) -> int:
        """The manifest's memory estimate (weights + working memory) in bytes: a ``size_bytes``
        for ``cached()`` when a transformers/diffusers model is built by another area."""
        return int(self.store.spec(model_id).memory_mb) << 20

    def fits(self, model_id: str) -> bool:
        """Whether the model's memory estimate fits the device budget at all."""
        return self.estimate_bytes(model_id) <= self.budget

    # ------------------------------------------------------------------ cache
    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._cache.values())

    def cached_keys(self) -> list[Any]:
        with self._lock:
            return list(self._cache)

    def cached(self, key: Any, factory: Callable[[], Any], size_bytes: int | None = None, *,
               estimate: int | None = None,
               model_id: str | tuple[str, ...] | None = None) -> Any:
        """Return the cached object for ``key`` or build it with ``factory()``; least recently
        used entries are evicted until it fits in the budget. ``size_bytes=None`` measures the
        parameters of the built model; ``estimate`` (e.g. :meth:`estimate_bytes`) then makes
        room before building, so the model being replaced leaves the device before the new one
        arrives, and the measured size is what is counted.

        One ``factory()`` runs at a time in the process (a load abandoned by a cancel is waited
        for: two models are never loading at once), without the cache's lock; inside
        :meth:`cancellable` it runs in a worker thread that a cancel abandons.

        With ``model_id`` (or several, for a pipeline built from more than one model), weights
        that cannot be loaded (``UnsupportedModel``: damaged in a
        way the cheap size + time check cannot see) raise the same error again, without being
        read, until that model's files change: the app diagnoses one photo at a time, and a
        damaged 7B VLM was read whole (~15 GB) for every photo before failing again."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key][0]

        def load() -> Any:
            return self._load(key, factory, size_bytes, estimate, model_id)

        if getattr(_loading, "active", False):
            return load()  # (a part of the model this thread is loading: in that load's slot)
        from ..restore.registry import call_cancellable

        return call_cancellable(load, getattr(self._local, "check", None), slot=_LOAD_SLOT,
                                name="mend-model-load")

    def _load(self, key: Any, factory: Callable[[], Any], size_bytes: int | None,
              estimate: int | None, model_id: str | tuple[str, ...] | None) -> Any:
        """``cached()``'s miss, in the load slot: the entry (an abandoned load of the same key
        may have put it there meanwhile), the remembered failure, or ``factory()`` built and
        cached."""
        was = getattr(_loading, "active", False)
        _loading.active = True
        try:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key][0]
                failed = self._failed.get(key)
            stamp = self._files_stamp(model_id) if model_id is not None else None
            if failed is not None:
                if stamp is not None and failed[1] == stamp:
                    from .loader import UnsupportedModel

                    raise UnsupportedModel(failed[0])
                with self._lock:
                    self._failed.pop(key, None)
            if size_bytes is not None:
                self._evict_for(int(size_bytes))
            elif estimate:
                self._evict_for(int(estimate))
            self._torch_threads()  # (a model's loading runs torch ops too)
            try:
                obj = factory()
            except Exception as e:
                from .loader import UnsupportedModel

                if stamp is not None and isinstance(e, UnsupportedModel):
                    with self._lock:
                        self._failed[key] = (str(e), stamp)
                raise
            self._torch_threads()
            if size_bytes is None:
                from .loader import param_bytes

                size_bytes = param_bytes(obj)
                self._evict_for(int(size_bytes))
            with self._lock:
                if int(size_bytes) > self.budget:
                    log.warning("model %s (%d MB) is larger than the memory budget (%d MB)",
                                key, int(size_bytes) >> 20, self.budget >> 20)
                self._cache[key] = (obj, int(size_bytes))
                self._cache.move_to_end(key)
            return obj
        finally:
            _loading.active = was

    def _files_stamp(self, model_id: str | tuple[str, ...]) -> Any:
        """Name, size and modification time of every file of the models' folders (a repair, a
        pull or an import changes them); None when there is no folder to look at."""
        files = []
        try:
            for mid in (model_id,) if isinstance(model_id, str) else model_id:
                folder = self.store.model_dir(mid)
                for p in folder.rglob("*"):
                    st = p.stat()
                    if p.is_file():
                        files.append((mid, str(p.relative_to(folder)), st.st_size,
                                      st.st_mtime_ns))
            return tuple(sorted(files))
        except Exception:  # noqa: BLE001 - no stamp: the failure is simply not remembered
            return None

    def _torch_threads(self) -> None:
        """The device's thread policy, applied to torch once a model has brought it in (a
        device chosen without torch - ``cpu`` by name - could not apply it then): before the
        model's first call, whatever thread or device choice came first."""
        if "torch" in sys.modules:
            configure_torch(self.device)

    def _evict_for(self, size: int) -> None:
        freed = 0
        with self._lock:
            while self._cache and self.cached_bytes + size > self.budget:
                key, (_, nbytes) = self._cache.popitem(last=False)
                log.info("evicting %s from the model cache", key)
                freed += nbytes
        self._release(freed)

    def _release(self, freed: int) -> None:
        # a GPU keeps freed blocks cached; on CPU refcounting already returned the memory and
        # a full gc pass is only worth it after dropping something big
        if freed and (self.device.kind != "cpu" or freed >= 64 << 20):
            empty_cache(self.device)

    def evict(self, key: Any) -> bool:
        with self._lock:
            item = self._cache.pop(key, None)
        if item is not None:
            self._release(item[1])
        return item is not None

    def clear(self) -> None:
        with self._lock:
            freed = sum(n for _, n in self._cache.values())
            self._cache.clear()
        self._release(freed)

    # ------------------------------------------------------------------ loaders
    def dtype_for(self, model_id: str, supports_half: bool = True, supports_bf16: bool = False):
        spec = self.store.spec(model_id)
        half = supports_half and "fp16" in spec.dtypes
        bf16 = supports_bf16 and "bf16" in spec.dtypes
        return self.device.dtype_for(half, bf16)

    def dtype_key(self, model_id: str) -> str:
        """Part of a cache key that changes whenever the dtype a model would be loaded in does
        (the precision setting changes while the app runs): the dtype it gets with half and
        bf16 support, with half only and with bf16 only (a model with neither is fp32)."""
        return "/".join(str(self.dtype_for(model_id, h, b)).replace("torch.", "")
                        for h, b in ((True, True), (True, False), (False, True)))

    def load_image_model(self, model_id: str):
        """A spandrel ``ImageModelDescriptor`` for the model, on the device, eval mode, in the
        dtype devices.py picks for it; cached."""
        spec = self.store.spec(model_id)
        if spec.loader != "spandrel":
            raise UsageError(f"'{model_id}' is not an image model spandrel can load "
                             f"(loader {spec.loader})")
        weights = self.file(model_id)
        # (the hash a TorchScript file's bytes are checked against as they are loaded)
        sha = self.store.expected_sha(model_id, spec.get_file(None))
        key = ("image", model_id, self.device.torch_device, self.dtype_key(model_id))

        def build():
            import torch

            from .loader import load_spandrel

            desc = load_spandrel(weights, "cpu", sha256=sha)
            dtype = self.dtype_for(model_id, desc.supports_half, desc.supports_bfloat16)
            if dtype != torch.float32:
                desc.to(dtype)
            desc.to(torch.device(self.device.torch_device))
            return desc

        return self.cached(key, build, None, estimate=self.estimate_bytes(model_id),
                           model_id=model_id)

    def load_state_dict(self, model_id: str, name: str | None = None) -> dict[str, Any]:
        """A raw state dict (safetensors / weights_only torch.load) of one file, on CPU, not
        cached (the caller builds its module and may cache that with ``cached``)."""
        from .loader import load_state_dict

        return load_state_dict(self.file(model_id, name), "cpu")
