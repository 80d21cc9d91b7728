"""``python -m engine.cli ARGS`` as a real process that starts warm (tests only).

Most of a CLI test's subprocess is Python importing torch, numpy, OpenCV, SciPy and the engine
(~2 s of a ~2.5 s ``mend restore`` of a small photo). ``run`` gives what
``subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, ...)``
gives - a separate process with its own pid, standard streams, working directory,
environment, argv, exit status (or signal), fresh ``__main__``, logging, signal handlers and
Python's own exit (threads joined, atexit, streams flushed, modules torn down) - but the
process is forked from a "zygote" that imported those modules once, then ran nothing. A
zygote is started (from this file) the first time it is worth it and ends with the test
process.

``restore``/``doctor`` (whose real runs import torch when they choose the device) fork from a
zygote that also imported torch; ``classify`` from one that did not (a real classify with the
builtin backend never imports torch, and some engine code checks whether torch is loaded).
``run(..., preload=MODULES)`` forks a ``restore``/``doctor`` from a zygote that imported those
too (a zygote of its own): for tests whose runs all import the same heavy library - spandrel,
whose architectures import torchvision and torch._dynamo (~2.5 s of each model run) - once.
Each start environment has its own zygotes: only the variables in ``PER_RUN_ENV`` - read when
a command runs, none by an import (checked: no engine module keeps their values) - may differ
between a zygote and its runs; a zygote for another environment than this process's starts
on its second run (a one-off, e.g. PYTHONIOENCODING, runs cold). ``models ...``, ``--version``
and anything the zygote cannot serve - no ``fork``/``SCM_RIGHTS`` (not Linux), imports that
printed anything or started a thread, a zygote gone - run ``subprocess.run`` itself, as does
everything with ``MEND_WARM_CLI=0``. Tests about process behaviour (signals, pipes, kill -9,
what a run imports) use real subprocesses, not this.

Differences from a cold start, none of which a test here checks: the modules above are
imported before the run (a cold run imports them on its way), and frozen (``gc.freeze``);
the string hash seed is the zygote's (set and dict order of strings is the same in every run
of a session: a cold run draws it at random); stdout and stderr are temporary files read at
the end, not pipes; the parent process is the zygote's, not the test's. numpy's global random
state is drawn anew in each run, as a cold start does.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# read when a command runs (not when a module is imported): may differ between the zygote and
# a run. PYTEST_CURRENT_TEST changes with every test; PYTHONPATH is applied to sys.path below.
PER_RUN_ENV = frozenset({"MEND_MODELS_DIR", "MEND_COST_HISTORY", "MEND_OFFLINE", "MEND_MANIFEST",
                         "PYTEST_CURRENT_TEST", "PYTHONPATH"})
TORCH_COMMANDS = frozenset({"restore", "doctor"})
WARM_COMMANDS = TORCH_COMMANDS | {"classify"}
_PRELOAD_BASE = ("numpy", "scipy.fft", "cv2", "PIL.Image", "engine.api", "engine.errors",
                 "engine.models.manifest", "engine.pipeline", "engine.imageio",
                 "engine.understand", "engine.understand.analyzer", "engine.estimate",
                 "engine.restore.registry")
_PRELOAD_TORCH = ("torch", "engine.restore.profiles", "engine.restore.builtin", "engine.tiling",
                  "engine.restore.sr", "engine.restore.face", "engine.restore.text",
                  "engine.restore.reflection", "engine.restore.deblur", "engine.restore.invsr")
MAX_MESSAGE = 1 << 20


def _command(args: list[str]) -> str | None:
    return next((a for a in args if not a.startswith("-")), None)


def _cold(cmd: list[str], env: dict, cwd: Path, timeout: float | None, text: bool
          ) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=text, timeout=timeout, cwd=cwd,
                          env=env, check=False)


def _text(data: bytes) -> str:
    """What ``subprocess.run(..., text=True)`` makes of the bytes: decoded as its pipes' text
    wrappers decode (the locale's encoding, strict), universal newlines."""
    encoding = io.TextIOWrapper(io.BytesIO()).encoding
    return data.decode(encoding, "strict").replace("\r\n", "\n").replace("\r", "\n")


def _start_env(env: dict) -> tuple:
    """The part of an environment the zygote's imports (and the interpreter) may have read."""
    return tuple(sorted((k, v) for k, v in env.items() if k not in PER_RUN_ENV))


class _Zygote:
    def __init__(self, kind: str, env: dict, preload: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.dir = tempfile.mkdtemp(prefix="mend-warm-cli-")
        self.path = os.path.join(self.dir, "sock")
        # stdin: a pipe that closes when this process ends (the zygote then exits)
        self.proc = subprocess.Popen([sys.executable, __file__, self.path, kind, *preload],
                                     cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode(errors="replace").strip()
        self.proc.stdout.close()
        self.ready = line == "ready"
        self.why = "" if self.ready else (line or f"zygote exited {self.proc.wait()}")

    def run(self, cmd: list[str], args: list[str], env: dict, cwd: Path,
            timeout: float | None, text: bool) -> subprocess.CompletedProcess | None:
        """The finished run; None when the zygote is gone before it started the run (the
        caller runs it cold)."""
        req = json.dumps({"args": args, "env": env, "cwd": str(cwd)}).encode()
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(tempfile.TemporaryFile())
            err = stack.enter_context(tempfile.TemporaryFile())
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
            try:
                sock.connect(self.path)
                try:
                    os.fstat(0)
                    stdin = 0  # inherited, as subprocess.run without stdin= does
                except OSError:
                    stdin = stack.enter_context(open(os.devnull, "rb")).fileno()
                socket.send_fds(sock, [req], [stdin, out.fileno(), err.fileno()])
                pid = json.loads(sock.recv(MAX_MESSAGE))["pid"]
            except (OSError, ValueError):  # (nothing ran)
                self.ready = False
                return None
            sock.settimeout(timeout)
            try:
                reply = sock.recv(MAX_MESSAGE)
                if not reply:
                    raise RuntimeError(f"the warm CLI's monitor of pid {pid} went away")
                status = json.loads(reply)["status"]
            except TimeoutError:  # as subprocess.run: kill, collect, raise
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                sock.settimeout(None)
                sock.recv(MAX_MESSAGE)
                out.seek(0)
                err.seek(0)
                raise subprocess.TimeoutExpired(cmd, timeout, output=out.read(),
                                                stderr=err.read()) from None
            except BaseException:  # (an interrupt, pytest-timeout): the run ends with the test
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                raise
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
            if text:
                stdout, stderr = _text(stdout), _text(stderr)
            return subprocess.CompletedProcess(cmd, os.waitstatus_to_exitcode(status), stdout,
                                               stderr)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # the zygote leaves; runs it started go on to their end
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)


MAX_ZYGOTES = 3  # the least recently used one closes when another starts (~300 MB each)
# (kind, preload, start env) -> zygote, least recently used first
_ZYGOTES: dict[tuple, _Zygote] = {}
_ASKED: dict[tuple, int] = {}  # (kind, preload, start env) -> runs asked for
_STARTING: dict[tuple, threading.Event] = {}  # zygotes being started (set when there)
_LOCK = threading.Lock()  # (not held while a zygote starts: the others serve meanwhile)
_SUPPORTED = (sys.platform == "linux" and hasattr(os, "fork") and hasattr(socket, "send_fds")
              and os.environ.get("MEND_WARM_CLI", "1") != "0")


def _zygote(kind: str, env: dict, preload: tuple[str, ...] = (), *,
            asked: bool = True) -> _Zygote | None:
    """The zygote for runs of ``kind`` (with ``preload`` imported too) in this start
    environment, started (in this thread) if there is none; None for the first run in
    another environment than this process's (a one-off, e.g. a test of PYTHONIOENCODING, is
    not worth a zygote) unless not ``asked`` for a run (``prestart``). A zygote another thread
    is starting is waited for."""
    key = (kind, preload, _start_env(env))
    with _LOCK:
        if asked:
            _ASKED[key] = _ASKED.get(key, 0) + 1
            if (key not in _ZYGOTES and key not in _STARTING and _ASKED[key] < 2
                    and key[2] != _start_env(os.environ)):
                return None
    while True:
        with _LOCK:
            z = _ZYGOTES.pop(key, None)
            if z is not None:
                _ZYGOTES[key] = z  # (now the most recently used)
                return z
            starting = _STARTING.get(key)
            if starting is None:
                starting = _STARTING[key] = threading.Event()
                break
        starting.wait()  # (then it is there, or its start failed: this thread tries)
    z = None
    try:
        z = _Zygote(kind, env, preload)
    finally:
        with _LOCK:
            if z is not None:
                while len(_ZYGOTES) >= MAX_ZYGOTES:
                    _ZYGOTES.pop(next(iter(_ZYGOTES))).close()
                _ZYGOTES[key] = z
            _STARTING.pop(key).set()
    return z


def _kind(args: list[str], preload: tuple[str, ...]) -> tuple[str, tuple[str, ...]] | None:
    """(zygote kind, its extra modules) for a run of ``args``; None: it runs cold."""
    command = _command(args)
    if not _SUPPORTED or command not in WARM_COMMANDS:
        return None
    torch = command in TORCH_COMMANDS
    return ("torch" if torch else "base"), (tuple(preload) if torch else ())


def run(args: list[str] | tuple[str, ...], *, env: dict | None = None, cwd: Path = ROOT,
        timeout: float | None = None, text: bool = True,
        preload: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True,
    text=text, timeout=timeout, cwd=cwd, env=env, check=False)``, started warm when it can be
    (module docstring). ``env``: the whole environment (None: this process's). ``preload``:
    modules a ``restore``/``doctor`` run's zygote imports besides its own (module
    docstring)."""
    args = [str(a) for a in args]
    env = dict(os.environ if env is None else env)
    cmd = [sys.executable, "-m", "engine.cli", *args]
    kind = _kind(args, preload)
    if kind is not None:
        z = _zygote(kind[0], env, kind[1])
        if z is not None and z.ready:
            done = z.run(cmd, args, env, Path(cwd), timeout, text)
            if done is not None:
                return done
    return _cold(cmd, env, Path(cwd), timeout, text)


def prestart(args: list[str] | tuple[str, ...], *, env: dict | None = None,
             preload: tuple[str, ...] = ()) -> None:
    """Start now (in this thread) the zygote that ``run(args, env=env, preload=preload)``
    forks from, if it is not there: a test can have it start while it prepares its runs. A
    start it asked for, not a run: the one-off rule does not apply."""
    args = [str(a) for a in args]
    kind = _kind(args, preload)
    if kind is not None:
        _zygote(kind[0], dict(os.environ if env is None else env), kind[1], asked=False)


def close() -> None:
    """End the zygotes (they also end by themselves when this process does)."""
    with _LOCK:
        for z in _ZYGOTES.values():
            z.close()
        _ZYGOTES.clear()


# ---------------------------------------------------------------- the zygote (this file run)
def _preload(kind: str, extra: tuple[str, ...] = ()) -> str:
    """Import the modules (``extra`` too); '' or what went wrong (anything printed, a thread
    started)."""
    import importlib

    names = _PRELOAD_BASE + (_PRELOAD_TORCH if kind == "torch" else ()) + tuple(extra)
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            for name in names:
                importlib.import_module(name)
            problem = ""
        except BaseException as e:  # noqa: BLE001 - reported; the tests then run cold
            problem = f"import failed: {e!r}"
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        printed = log.read()
    if not problem and printed:
        problem = f"imports printed: {printed[:300]!r}"
    if not problem and threading.active_count() != 1:
        problem = f"imports started threads: {threading.enumerate()}"
    return problem


def _serve(path: str, kind: str, extra: tuple[str, ...] = ()) -> dict:
    """The zygote's loop; returns only in a forked run (its request), never in the zygote."""
    import select

    sys.path[0] = str(ROOT)  # (not tests/): engine imports from where `python -m` finds it
    problem = _preload(kind, extra)
    if problem:
        print(problem.replace("\n", " "), flush=True)
        raise SystemExit(0)
    import gc

    gc.collect()
    gc.freeze()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # (the ready pipe: the test process reads it to its end)
    os.close(devnull)
    while True:
        readable, _, _ = select.select([listener, 0], [], [])
        if 0 in readable and not os.read(0, 4096):  # the test process has gone (or closed it)
            with contextlib.suppress(OSError):
                os.unlink(path)
                os.rmdir(os.path.dirname(path))
            os._exit(0)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:  # reap finished monitors
                pass
        if listener not in readable:
            continue
        conn, _ = listener.accept()
        try:
            msg, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
            req = json.loads(msg)
        except (OSError, ValueError):
            conn.close()
            continue
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            conn.close()
            continue
        if os.fork() == 0:  # the monitor: forks the run, reports its pid and exit status
            listener.close()
            run_pid = os.fork()
            if run_pid == 0:
                conn.close()
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                for fd in fds:
                    if fd > 2:
                        os.close(fd)
                return req
            for fd in fds:
                os.close(fd)
            try:
                conn.send(json.dumps({"pid": run_pid}).encode())
                status = os.waitpid(run_pid, 0)[1]
                conn.send(json.dumps({"status": status}).encode())
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)
        conn.close()


def _become(req: dict) -> None:
    """Turn the forked process into ``python -m engine.cli ARGS`` started in req's cwd with
    req's environment (the part an interpreter's start-up takes from them)."""
    os.chdir(req["cwd"])
    zygote_pp = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ.clear()
    os.environ.update(req["env"])
    run_pp = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    # python -m: sys.path starts with the working directory, then PYTHONPATH, then the rest
    sys.path[:] = [os.getcwd(), *run_pp, *sys.path[1 + len(zygote_pp):]]
    sys.argv[:] = ["-m", *req["args"]]
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()  # a cold start draws its global state from the OS


if __name__ == "__main__":
    _request = _serve(sys.argv[1], sys.argv[2], tuple(sys.argv[3:]))
    _become(_request)
    del _request
    import builtins
    import runpy
    import types

    # as `python -m engine.cli`: run in a fresh __main__ module (not this file's), and what it
    # raises or exits with ends this process as it ends that one
    _main = types.ModuleType("__main__")
    _main.__builtins__ = builtins
    sys.modules["__main__"] = _main
    runpy._run_module_as_main("engine.cli", alter_argv=True)
