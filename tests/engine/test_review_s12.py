"""Review of the CLI batch, signal and lazy-device changes (72c8979, aee67de): an interrupt that
library code swallows, the dry run's output options, and the torch thread policy for a device
named on the command line."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import cli

ROOT = Path(__file__).resolve().parents[2]


def _photos(folder: Path, names: list[str], size: tuple[int, int] = (48, 64)) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        p = folder / name
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


class _SwallowsInterrupts:
    """Library code that swallows the interrupt raised in it: an exception raised inside a
    ``__del__`` (or a weakref callback) is printed as "Exception ignored in ..." and dropped by
    Python, KeyboardInterrupt included."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        signal.raise_signal(self.signum)  # (its handler runs here, inside __del__)


@pytest.fixture()
def quiet_unraisable(monkeypatch):
    seen: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    return seen


@pytest.mark.skipif(not hasattr(signal, "raise_signal"), reason="signal.raise_signal")
@pytest.mark.parametrize("again", [False, True], ids=["once", "pressed-again"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_swallowed_by_library_code_still_stops_the_batch(signum, again, capsys,
                                                                      quiet_unraisable):
    """The handler marked the batch as stopping before raising: when the exception died in a
    ``__del__``, every later Ctrl+C / SIGTERM was ignored and the batch ran to its end with
    exit 0 (only SIGKILL could stop it). Now it stops after that photo, and a signal sent
    again stops it at once."""
    done: list[Path] = []

    def work(path: Path):
        done.append(path)
        if len(done) == 1:
            _SwallowsInterrupts(signum)  # made and finalised at once: the signal comes in it
            if again:
                signal.raise_signal(signum)  # Ctrl+C pressed again
        return {"path": str(path)}, str(path)

    photos = [Path(f"p{i}.png") for i in range(4)]
    args = argparse.Namespace(json=True, debug=False)
    with cli._Signals() as sig:
        args.signals = sig
        try:
            batch = cli._for_each(photos, work, args, "classified")
        except KeyboardInterrupt:  # (not stopped by _for_each itself: as bad as not at all)
            pytest.fail("the interrupt escaped the batch")
    assert quiet_unraisable and isinstance(quiet_unraisable[0], KeyboardInterrupt)
    assert batch.signum == signum and batch.exit_code() == 128 + signum
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [o["path"] for o in lines] == [str(p) for p in photos]
    assert len(done) == 1
    assert [bool(o.get("not_run")) for o in lines] == [again] + [True] * 3


@pytest.mark.skipif(not hasattr(signal, "raise_signal"), reason="signal.raise_signal")
def test_a_signal_while_the_first_interrupt_unwinds_is_still_ignored():
    """(What the re-raise above must keep:) a second Ctrl+C while the first one's exception
    runs the ``finally`` blocks on its way out (a temp file removed, a lock released) does not
    cut them short."""
    ran: list[str] = []
    with cli._Signals(), pytest.raises(KeyboardInterrupt) as caught:
        try:
            signal.raise_signal(signal.SIGINT)
        finally:
            signal.raise_signal(signal.SIGINT)
            ran.append("cleanup")
    assert ran == ["cleanup"] and caught.value.__context__ is None


@pytest.mark.skipif(not hasattr(signal, "raise_signal"), reason="signal.raise_signal")
def test_an_interrupt_swallowed_inside_a_step_stops_the_restore(tmp_path, monkeypatch, capsys,
                                                                 quiet_unraisable):
    """Ctrl+C during a step, inside library code that swallows it: the job used to go on and
    write its result, and so did every later photo (exit 0). Now the job stops at its next
    cancel check and nothing is written."""
    import engine.pipeline as pl

    src = _photos(tmp_path / "shoot", ["a.png", "b.png", "c.png"])
    real_get_step = pl.get_step

    def get_step(name):
        spec = real_get_step(name)

        def fn(image, params, ctx):
            _SwallowsInterrupts(signal.SIGINT)
            ctx.progress.update(0.5, "working")  # (the step's next cancel check)
            return spec.fn(image, params, ctx)

        return dataclasses.replace(spec, fn=fn)

    monkeypatch.setattr(pl, "get_step", get_step)
    out = tmp_path / "out"
    rc = cli.main(["restore", str(tmp_path / "shoot"), "-o", str(out), "--plan", "C",
                   "--profile", "builtin", "--device", "cpu", "--json"])
    cap = capsys.readouterr()
    got = [json.loads(x) for x in cap.out.splitlines()]
    assert rc == 130, cap.err
    assert [o["path"] for o in got] == [str(p) for p in src]
    assert all(o.get("not_run") for o in got), got
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == []
    assert cap.err.strip().splitlines()[-1] == "mend: interrupted: 3 photo(s) not restored"


# ------------------------------------------------------------------------------------------
# the dry run plans with the output options the run would use


def test_a_dry_run_uses_the_output_options_of_the_run(tmp_path, monkeypatch, capsys):
    """``restore --dry-run --format png`` reported ``x_mend.jpg`` and checked memory for a byte
    copy: its OutputOptions kept only -o. A 60 MP JPEG re-encoded as PNG that the run refuses
    (the memory check of a kept photo written afresh) was planned without a word."""
    import engine.devices as dev
    from engine.estimate import PROCESS_BYTES

    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "x.jpg", quality=95)
    out = tmp_path / "out"
    args = ["restore", str(tmp_path / "x.jpg"), "--dry-run", "-o", str(out), "--plan", "D",
            "--device", "cpu", "--json"]
    rc = cli.main([*args, "--format", "png"])
    got = json.loads(capsys.readouterr().out)
    assert rc == 0 and got["output"] == str(out / "x_mend.png")

    monkeypatch.setattr(dev, "system_memory", lambda: PROCESS_BYTES + 100_000)
    rc = cli.main([*args, "--format", "png"])
    got = json.loads(capsys.readouterr().out)
    assert any(w.startswith("the run would stop: ") for w in got["warnings"]), got["warnings"]
    rc = cli.main(args)  # a byte copy needs nothing more: not refused
    got = json.loads(capsys.readouterr().out)
    assert got["output"] == str(out / "x_mend.jpg") and got["warnings"] == []


# ------------------------------------------------------------------------------------------
# the thread policy reaches torch whatever the device


_THREADS_PROBE = r"""
import sys
from engine.pipeline import Engine

engine = Engine(sys.argv[1])
engine.device  # chosen: "cpu" needs no torch, so torch is not imported yet
assert "torch" not in sys.modules, "torch imported before any model"

def build():
    import torch
    return torch.nn.Linear(4, 4)

engine.runtime.cached(("probe",), build, 1 << 10)  # a model, as every torch step loads one
import torch
print(torch.get_num_threads(), engine.device.threads)
"""


def test_the_thread_policy_applies_to_torch_when_the_device_is_named_cpu(tmp_path):
    """``--device cpu`` (and the app's CPU setting): the device is chosen without torch, so
    ``configure_torch`` was skipped and never applied afterwards - torch ran every model on its
    own default thread count (all cores), whatever MEND_THREADS said."""
    pytest.importorskip("torch")
    env = dict(os.environ, MEND_THREADS="3", PYTHONPATH=str(ROOT), MEND_OFFLINE="1",
               MEND_MODELS_DIR=str(tmp_path / "models"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", _THREADS_PROBE, "cpu"], capture_output=True,
                       text=True, cwd=ROOT, env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", "3"], r.stdout


# ------------------------------------------------------------------------------------------
# a subfolder that cannot be listed, whatever the logging set-up


def test_an_unlisted_subfolder_is_reported_when_warnings_are_not_logged(tmp_path, monkeypatch,
                                                                        capsys):
    """The batch learnt of a subfolder it could not list from the walk's WARNING log record
    (a filter on the ``engine.imageio`` logger). Where warnings are not logged - a program
    that runs ``cli.main`` with its own logging set up quieter, ``logging.disable`` - no record
    is made: the folder's photos were silently left out, exit 0. The walk hands the folders
    back now (``iter_photos(unlisted=...)``)."""
    import logging


    shoot = tmp_path / "shoot"
    _photos(shoot, ["a.png"])
    _photos(shoot / "locked", ["b.png"])
    from tests.engine.test_cli_s12 import refuse_listing

    locked = shoot / "locked"
    refuse_listing(monkeypatch, locked)
    logging.disable(logging.WARNING)
    try:
        rc = cli.main(["classify", str(shoot), "-r", "--json", "--backend", "builtin"])
    finally:
        logging.disable(logging.NOTSET)
    got = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 1
    assert got[0] == {"path": str(locked), "error": "cannot list this folder (Permission "
                                                    "denied): the photos in it were not read"}
    assert [Path(o["path"]).name for o in got[1:]] == ["a.png"]
