"""A signal that arrives after the photos are listed but before the first one runs (while the
engine is set up, the classifier - a VLM's torch import can take many seconds - is loaded, or
``--skip-existing`` looks for earlier results): every photo still gets its ``not_run`` line,
and the one stop message counts them, as for a signal mid-batch."""
from __future__ import annotations

import os
import signal

import pytest

from engine import pipeline, understand

from .test_cli_s12 import _files, _json, _photos, _run

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals a process sends itself")


def _kill_self(signum: int):
    def go(*_a, **_k):
        os.kill(os.getpid(), signum)  # the handler raises in here, as a real signal would
        raise AssertionError("the signal did not stop the set-up")
    return go


def test_sigterm_while_the_classifier_loads(tmp_path, capsys, monkeypatch):
    src = _photos(tmp_path / "shoot", ["a.png", "b.png", "c.png"])
    monkeypatch.setattr(understand, "get_classifier", _kill_self(signal.SIGTERM))
    rc, out, err = _run(capsys, "classify", str(tmp_path / "shoot"), "--json")
    got = _json(out)
    assert rc == 143
    assert [o["path"] for o in got] == [str(p) for p in src]
    assert all(o["not_run"] and o["error"] == "not classified (stopped by SIGTERM)"
               for o in got)
    assert err.strip().splitlines()[-1] == "mend: stopped by SIGTERM: 3 photo(s) not classified"


@pytest.mark.parametrize("dry_run", [False, True])
def test_ctrl_c_while_the_engine_is_set_up(tmp_path, capsys, monkeypatch, dry_run):
    src = _photos(tmp_path / "shoot", ["a.png", "b.png"])
    monkeypatch.setattr(pipeline, "Engine", _kill_self(signal.SIGINT))
    rc, out, err = _run(capsys, "restore", str(tmp_path / "shoot"), "-o", str(tmp_path / "out"),
                        "--json", *(["--dry-run"] if dry_run else []))
    got = _json(out)
    verb = "planned" if dry_run else "restored"
    assert rc == 130
    assert [o["path"] for o in got] == [str(p) for p in src]
    assert all(o["not_run"] and o["error"] == f"not {verb} (interrupted)" for o in got)
    assert err.strip().splitlines()[-1] == f"mend: interrupted: 2 photo(s) not {verb}"
    if not dry_run:
        assert _files(tmp_path / "out") == []
