"""A cancel while a model loads is honoured at once (the engine cancels within a tile): the load
was run in the job's thread, and a cancel was seen only once it had ended (seconds for a
checkpoint, about a minute for a 7B VLM on a laptop). The abandoned load goes on in the
background, one load at a time, and its model (or its failure) is kept as if it had been waited
for. A program that has finished (the CLI, the app) leaves without waiting for what a cancel or
Ctrl+C abandoned (its workers are not daemons: a daemon worker inside OpenCV at exit aborted the
process)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.devices import select_device
from engine.errors import Cancelled
from engine.models.runtime import ModelRuntime
from engine.progress import CancelToken, Progress
from engine.restore.registry import call_cancellable
from tests.engine.test_cancel_s13 import _cancel_after, _no_worker_left

ROOT = Path(__file__).resolve().parents[2]
LOAD = 1.2  # s: a slow model load (a real checkpoint on a laptop's disk)


def _slowed(monkeypatch, owner, name: str, release: threading.Event, seconds: float = LOAD):
    """``owner.name`` taking ``seconds`` more (or until ``release`` is set: tests/conftest.py);
    returns (started event, call count list)."""
    real = getattr(owner, name)
    started, calls = threading.Event(), []

    def slow(*a, **kw):
        calls.append(1)
        started.set()
        release.wait(seconds)
        return real(*a, **kw)

    monkeypatch.setattr(owner, name, slow)
    return started, calls


def _runtime() -> ModelRuntime:
    return ModelRuntime(select_device("cpu"))


# --------------------------------------------------------------------------- through the engine
def test_a_cancel_while_a_step_loads_its_model_is_honoured_at_once(tmp_path, monkeypatch,
                                                                   release):
    """deblur_nafnet loading its weights (made 1.2 s slower): the job used to end ~0.9 s after a
    cancel 0.3 s into the load; now at once. The load ends in the background and is cached: the
    photo run again does not read the weights again."""
    pytest.importorskip("spandrel")
    from PIL import Image

    from engine.api import Degradation, JobRequest, OutputOptions, Plan, Step
    from engine.models import loader
    from engine.pipeline import Engine
    from tests.tiny_models import install_models

    store = install_models(tmp_path / "store", ["nafnet-gopro-w64"], tmp_path / "build")
    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
                    ).save(src)
    started, calls = _slowed(monkeypatch, loader, "load_spandrel", release)
    engine = Engine("cpu", store=store)
    plan = Plan(Degradation.C, "laptop", (Step("deblur_nafnet", {}),))
    req = JobRequest(src, OutputOptions(out_dir=tmp_path / "out"), plan=plan, guard=False)
    token, at = CancelToken(), []
    th = _cancel_after(token, 0.3, at, started)
    try:
        with pytest.raises(Cancelled):
            engine.run(req, Progress(token=token))
        latency = time.perf_counter() - at[0]
    finally:
        th.join()
    assert latency < 0.2, latency
    release.set()  # (the abandoned load goes on now, not 0.9 s later)
    assert _no_worker_left("mend-model-load")  # (the load went on to its end)
    assert [k[1] for k in engine.runtime.cached_keys()] == ["nafnet-gopro-w64"]
    res = engine.run(req)
    assert [s.model for s in res.steps] == ["nafnet-gopro-w64"]
    assert len(calls) == 1  # read once


def test_a_cancel_while_a_classifier_loads_its_model_is_honoured_at_once(tmp_path,
                                                                         monkeypatch, release):
    """The CLIP backend of a diagnosis (Engine.diagnose, as the app's diagnose jobs) loading
    its model: the cancel was seen after the load; now at once, and the model is cached."""
    pytest.importorskip("transformers")
    import transformers

    from engine.imageio import Photo
    from engine.pipeline import Engine
    from tests.engine.test_clip import build_tiny_clip
    from tests.model_helpers import install_test_model

    src = build_tiny_clip(tmp_path / "src")
    files = {p.name: p for p in sorted(src.iterdir()) if p.is_file()}
    store = install_test_model(tmp_path / "store", "clip-vit-large-patch14", files)
    started, calls = _slowed(monkeypatch, transformers.AutoModel, "from_pretrained", release)
    engine = Engine("cpu", store=store)
    photo = Photo(path=None, pixels=np.random.default_rng(1).random((48, 64, 3),
                                                                     dtype=np.float32),
                  alpha=None, bit_depth=8, format="PNG", icc_profile=None, exif=None, xmp=None,
                  dpi=None, info={"warnings": []})
    token, at = CancelToken(), []
    th = _cancel_after(token, 0.3, at, started)
    try:
        with pytest.raises(Cancelled):
            engine.diagnose(photo, "clip", progress=Progress(token=token))
        latency = time.perf_counter() - at[0]
    finally:
        th.join()
    assert latency < 0.2, latency
    release.set()  # (the abandoned load goes on now, not 0.9 s later)
    assert _no_worker_left("mend-model-load")
    assert engine.diagnose(photo, "clip").backend == "clip"
    assert len(calls) == 1


# --------------------------------------------------------------------------- the runtime
def test_an_abandoned_load_keeps_the_slot_and_is_cached():
    """Memory stays honest: the next load (of another model) starts only once the abandoned
    one has ended, and a job waiting for it is itself cancellable. The cache's lock is not held
    during a load, and the abandoned load's model is cached as if it had been waited for."""
    rt = _runtime()
    spans: dict[str, tuple[float, float]] = {}
    started = threading.Event()

    def factory(name: str, seconds: float):
        def build():
            t0 = time.perf_counter()
            started.set()
            time.sleep(seconds)
            spans[name] = (t0, time.perf_counter())
            return {"model": name}
        return build

    token, at = CancelToken(), []
    th = _cancel_after(token, 0.2, at, started)
    try:
        with rt.cancellable(token.check), pytest.raises(Cancelled):
            rt.cached("a", factory("a", 1.0), 1 << 20)
        latency = time.perf_counter() - at[0]
    finally:
        th.join()
    assert latency < 0.1, latency
    t0 = time.perf_counter()
    assert rt.cached_keys() == [] and rt.cached_bytes == 0  # (while "a" loads)
    assert time.perf_counter() - t0 < 0.05
    waiting = CancelToken()  # a job waiting for the slot is cancelled meanwhile
    threading.Timer(0.1, waiting.cancel).start()
    t0 = time.perf_counter()
    with rt.cancellable(waiting.check), pytest.raises(Cancelled):
        rt.cached("b", factory("never", 0.0), 1 << 20)
    assert time.perf_counter() - t0 < 0.3 and "never" not in spans
    with rt.cancellable(CancelToken().check):
        b = rt.cached("b", factory("b", 0.0), 1 << 20)
    assert b == {"model": "b"}
    assert spans["b"][0] >= spans["a"][1]  # one load at a time
    assert rt.cached_keys() == ["a", "b"]
    a = rt.cached("a", factory("again", 0.0))
    assert a == {"model": "a"} and "again" not in spans


def test_an_abandoned_load_that_fails_is_remembered(release):
    """The failure memo works for a load a cancel abandoned: damaged weights are not read
    again by the next photo's job."""
    from engine.models.loader import UnsupportedModel

    rt = _runtime()
    reads, started = [], threading.Event()

    def damaged():
        reads.append(1)
        started.set()
        release.wait(0.5)
        raise UnsupportedModel("these weights cannot be read")

    token, at = CancelToken(), []
    th = _cancel_after(token, 0.1, at, started)
    try:
        with rt.cancellable(token.check), pytest.raises(Cancelled):
            rt.cached("k", damaged, 1, model_id="realesr-general-x4v3")
    finally:
        th.join()
    assert time.perf_counter() - at[0] < 0.1
    release.set()  # (the abandoned load fails now, not 0.4 s later)
    assert _no_worker_left("mend-model-load")
    with rt.cancellable(CancelToken().check), \
            pytest.raises(UnsupportedModel, match="cannot be read"):
        rt.cached("k", damaged, 1, model_id="realesr-general-x4v3")
    assert len(reads) == 1


# --------------------------------------------------------------------------- quitting
def _interrupt_after(seconds: float):
    t_end = time.perf_counter() + seconds

    def check() -> None:
        if time.perf_counter() > t_end:
            raise KeyboardInterrupt

    return check


def test_an_interrupt_while_waiting_stops_the_call():
    """Ctrl+C in the CLI (its signal handler raises in the job's thread) left an abandoned ONNX
    run going to its end: ``stop`` (RunOptions.terminate) was only called on a cancel."""
    stopped = threading.Event()
    with pytest.raises(KeyboardInterrupt):
        call_cancellable(lambda: stopped.wait(5.0), _interrupt_after(0.1),
                         slot=threading.Lock(), stop=stopped.set)
    assert stopped.is_set()
    assert _no_worker_left()


_EXIT_SCRIPT = """
import sys, threading, time
sys.path.insert(0, {root!r})
from engine.progress import CancelToken
from engine.restore.registry import call_cancellable
from engine.errors import Cancelled

token = CancelToken()
threading.Timer(0.1, token.cancel).start()
try:  # abandoned: 8 s more (a load, a native call nothing can stop)
    call_cancellable(lambda: time.sleep({seconds}), token.check, slot=threading.Lock())
except Cancelled:
    pass
print("abandoned", time.monotonic())  # (not flushed: the exit must flush it)
{end}
"""


@pytest.mark.parametrize("how", ["cli", "registry", "none"])
def test_a_finished_program_does_not_wait_for_abandoned_calls(tmp_path, how):
    """The exit waited for a call a cancel had abandoned (a model's load: up to a minute for a
    VLM; Ctrl+C in the CLI used to stop a load at once, in its own thread). The CLI run as the
    program leaves without waiting, with its exit code and its output flushed; without an
    abandoned call the exit is the normal one."""
    seconds = 0.05 if how == "none" else 8.0
    end = {"cli": 'sys.argv = ["mend", "models", "list"]\n'
                  'from engine.cli import main\nsys.exit(main())',
           "registry": "from engine.restore.registry import exit_leaving_abandoned_calls\n"
                       "exit_leaving_abandoned_calls(3)\nsys.exit(4)",
           "none": "time.sleep(0.2)\n"
                   "from engine.restore.registry import exit_leaving_abandoned_calls\n"
                   "exit_leaving_abandoned_calls(3)\nsys.exit(4)"}[how]
    script = tmp_path / "quit.py"
    script.write_text(_EXIT_SCRIPT.format(root=str(ROOT), seconds=seconds, end=end))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=60, check=False)
    end_at = time.monotonic()
    assert p.stderr == "", p.stderr
    first = p.stdout.splitlines()[0].split()
    assert first[0] == "abandoned"
    took = end_at - float(first[1])  # (one clock: monotonic, the same across processes)
    assert p.returncode == {"cli": 0, "registry": 3, "none": 4}[how]
    assert took < 3.0, took  # (the import of the CLI and its listing included)
    if how == "cli":
        assert "realesr-general-x4v3" in p.stdout  # the listing, flushed
