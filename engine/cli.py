"""The `mend` command: classify, restore, models, doctor.

Exit codes: 0 all done, 1 some inputs failed (each reported, the run goes on), 2 usage error,
130 interrupted (Ctrl+C), 143 stopped by SIGTERM, 141 the reader of the output went away
(``| head``). User errors print one message, no traceback (``--debug`` shows it).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import filecmp
import json
import logging
import os
import platform
import re
import signal
import stat
import sys
import threading
import time
import traceback
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

from . import __version__
from .api import Degradation, JobRequest, OutputOptions
from .errors import (
    Cancelled,
    DeviceUnavailable,
    EngineError,
    ModelMissing,
    SaveFailed,
    TorchMissing,
    UsageError,
)
from .models.manifest import ManifestError

log = logging.getLogger("mend")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_PIPE = 141  # 128 + SIGPIPE, what a shell shows for a program its pipe reader left
CLASSIFY_CHUNK = 4  # photos `classify` decodes and diagnoses at once with a model backend


_DASH_FILES: list[str] = []  # arguments of this run that start with "-" and name a file

# characters a terminal takes as commands, which a file name may hold: C0 and C1 controls (ESC
# starts sequences that set the window title, clear the screen, hide or recolour what follows)
# and the bidirectional overrides that show text in another order than it has; line breaks are
# Mend's own (a report's further lines)
_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e"
                       "\u2066-\u2069]")


def _terminal_text(text: str) -> str:
    """``text`` as it may be printed: every control character that a name in it (a photo's, a
    folder's) may hold shown as an escape (``\\x1b``), so a file named to move the cursor or
    retitle the window never commands the terminal of whoever lists it."""
    return _CONTROLS.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


class _TerminalFormatter(logging.Formatter):
    """Log lines (which name photos and folders) with their control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return _terminal_text(super().format(record))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is already 2
        self.print_usage(sys.stderr)
        print(f"mend: error: {_terminal_text(message)}", file=sys.stderr)
        if _DASH_FILES:  # "-photo.jpg" was taken for an option
            name = _terminal_text(_DASH_FILES[0])
            print(f"mend: {name!r} is read as an option; to name the file, put -- before the "
                  f"files (mend ... -- {name}) or write it as ./{name}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _dash_files(argv: list[str]) -> list[str]:
    """The arguments before any ``--`` that start with "-" and name an existing file or
    folder (a photo named "-photo.jpg"): argparse takes them for options."""
    out = []
    for a in argv:
        if a == "--":
            break
        if a.startswith("-") and a not in ("-", "-r", "-o", "-h"):
            try:
                if os.path.lexists(a):
                    out.append(a)
            except (OSError, ValueError):
                continue
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mend",
                description="Diagnose what is wrong with photos and fix them, offline.")
    p.add_argument("--version", action="version", version=f"Mend {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    c = sub.add_parser("classify", help="say what is wrong with each photo (A/B/C/D)")
    c.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="photos or folders")
    c.add_argument("--backend", default="auto", choices=["auto", "builtin", "clip", "vlm"])
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    c.add_argument("--vlm-mode", default="paper", choices=["paper", "structured"],
                   help="VLM prompt: the paper's A/B/C/D question, or a structured JSON report")
    c.add_argument("-r", "--recursive", action="store_true",
                   help="also the photos in the folders' subfolders")
    c.add_argument("--json", action="store_true", help="one JSON object per line")

    r = sub.add_parser("restore", help="fix each photo and write the result to a folder")
    p.restore_parser = r  # main() checks -o/--dry-run with its usage line
    r.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="photos or folders")
    r.add_argument("-o", "--output", type=Path, metavar="DIR",
                   help="folder for the results (required unless --dry-run)")
    r.add_argument("--plan", default="auto", choices=["auto", "A", "B", "C", "D"],
                   help="force a class's chain instead of the diagnosis")
    r.add_argument("--profile", default="auto", choices=["auto", "builtin", "laptop", "quality"])
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    r.add_argument("--backend", default="auto", choices=["auto", "builtin", "clip", "vlm"])
    r.add_argument("--mask", type=Path,
                   help="reflection mask (8-bit PNG, white = remove): the photo is fixed "
                        "as class B and what the mask covers is inpainted (not with --plan "
                        "A, C or D)")
    r.add_argument("--format", choices=["jpeg", "jpg", "png", "tiff", "tif", "webp"],
                   help="output format")
    r.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (1-100)")
    r.add_argument("--bit-depth", type=int, choices=[8, 16])
    r.add_argument("--no-metadata", action="store_true",
                   help="do not copy EXIF (camera, GPS, dates), XMP, IPTC or the resolution; "
                        "the ICC colour profile and Mend's own record are kept")
    r.add_argument("--no-guard", action="store_true", help="keep results even if they look worse")
    r.add_argument("--tile", type=int, default=512, help="tile size in pixels")
    r.add_argument("-r", "--recursive", action="store_true",
                   help="also the photos in the folders' subfolders (their results go to the "
                        "same subfolders of the output folder); in folders, results and masks "
                        "Mend wrote are skipped either way")
    r.add_argument("--skip-existing", action="store_true",
                   help="resume a stopped batch: skip a photo whose result is already where "
                        "this run would write it (a file Mend wrote from this photo - its "
                        "record names it - or the photo's own bytes)")
    r.add_argument("--dry-run", action="store_true",
                   help="diagnose and show each photo's plan with a time and memory estimate; "
                        "run nothing and write nothing")
    r.add_argument("--region", type=_region_arg, metavar="X0,Y0,X1,Y1",
                   help="preview: fix only this part of one photo (upright pixels, x1 and y1 "
                        "excluded; the photo is still diagnosed whole) and write it as "
                        "NAME_mend_preview.EXT")
    r.add_argument("--json", action="store_true", help="one JSON object per line")

    m = sub.add_parser("models", help="list, download, verify, remove and import models")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION", parser_class=_Parser)
    ml = msub.add_parser("list", help="every model with its licence and status")
    ml.add_argument("--json", action="store_true")
    for name, helptext in (("pull", "download"), ("verify", "check the sha256 of"),
                           ("remove", "delete")):
        a = msub.add_parser(name, help=f"{helptext} models")
        a.add_argument("ids", nargs="*", metavar="ID")
        a.add_argument("--profile", choices=["builtin", "laptop", "quality"],
                       help="every model a profile needs")
        a.add_argument("--json", action="store_true")
        if name == "verify":
            a.add_argument("--repair", action="store_true",
                           help="delete damaged files and download them again")
    mi = msub.add_parser("import", help="import model files, a folder or an offline pack")
    mi.add_argument("path", type=Path)
    mi.add_argument("--id", dest="model_id", metavar="ID",
                    help="the model the files belong to (for unpinned files or the YOLO slot)")
    mi.add_argument("--json", action="store_true")
    mp = msub.add_parser("pack", help="write an offline model pack for a profile")
    mp.add_argument("--profile", required=True, choices=["builtin", "laptop", "quality"])
    mp.add_argument("-o", "--output", type=Path, required=True)
    mp.add_argument("--json", action="store_true")

    d = sub.add_parser("doctor", help="devices, memory, models, offline mode")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    d.add_argument("--json", action="store_true")
    return p


def _region_arg(text: str) -> tuple[int, int, int, int]:
    """``--region``'s value: four whole numbers x0,y0,x1,y1 (the engine checks them against
    each photo: clipped to it, refused when empty or outside it)."""
    parts = [t.strip() for t in text.split(",")]
    try:
        if len(parts) != 4:
            raise ValueError
        x0, y0, x1, y1 = (int(t) for t in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected four whole numbers x0,y0,x1,y1 (got {text!r})") from None
    if x1 <= x0 or y1 <= y0:
        raise argparse.ArgumentTypeError(
            f"the region {text} is empty: x1 must be greater than x0 and y1 than y0")
    return (x0, y0, x1, y1)


def main(argv: Iterable[str] | None = None) -> int:
    """The ``mend`` command; its exit code. Run as the program (``argv`` None: the command
    line), it ends without waiting for what a cancel or Ctrl+C abandoned (a model still
    loading: seconds to a minute more), ``exit_leaving_abandoned_calls``."""
    code = _main(argv)
    if argv is None:
        _leave_on_signal(code)
    registry = sys.modules.get("engine.restore.registry")
    if argv is None and registry is not None:  # (no call can be abandoned before it is loaded)
        registry.exit_leaving_abandoned_calls(code)
    return code


def _leave_on_signal(code: int) -> None:
    """Once the command has done its work and said so, a Ctrl+C or SIGTERM while the process
    ends leaves with ``code``, the exit code of that work. SIGTERM used to kill the process
    there without a word (exit 143 after a batch that had finished) and Ctrl+C printed a
    traceback from Python's shutdown; the window is that shutdown, ~0.4 s once torch is
    loaded (its own teardown). While Python code still runs (threads joined, exit callbacks)
    the signal leaves at once; in the teardown after it (where Python's handlers are gone)
    it is ignored: the process is ending anyway. A signal ignored when Mend started stays
    ignored."""
    if threading.current_thread() is not threading.main_thread():
        return

    def leave(_signum: int, _frame: Any) -> None:
        with contextlib.suppress(Exception):
            logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

    caught = []
    for sig in (signal.SIGINT, signal.SIGTERM, *_SIGBREAK):
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(sig) not in (signal.SIG_IGN, None):
                signal.signal(sig, leave)
                caught.append(sig)

    def teardown() -> None:  # (the first exit callback Python runs: the last registered)
        for sig in caught:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, signal.SIG_IGN)

    import atexit

    atexit.register(teardown)


def _main(argv: Iterable[str] | None) -> int:
    parser = build_parser()
    argv = list(argv) if argv is not None else sys.argv[1:]
    _DASH_FILES[:] = _dash_files(argv)
    args = parser.parse_args(argv)
    # a file name that is not valid UTF-8 (or a "σ" on a cp1252 console) prints as an escape
    # (\udcff, \u03c3) instead of ending the batch with an encoding error; a JSON line escapes
    # what stdout cannot carry itself (_json_text: "\xe9" would not be JSON)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
    log_handler = logging.StreamHandler(sys.stderr)
    log_handler.setFormatter(_TerminalFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        handlers=[log_handler])
    # libraries' own warnings (Pillow's "Corrupt EXIF data" on a damaged file, deprecations)
    # are not the photographer's business: each photo's error or warnings say what matters.
    # --debug shows them.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if args.debug else logging.ERROR)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "restore" and args.output is None and not args.dry_run:
        parser.restore_parser.error("the following arguments are required: -o/--output "
                                    "(or --dry-run to only see the plans)")
    handler = {"classify": cmd_classify, "restore": cmd_restore, "models": cmd_models,
               "doctor": cmd_doctor}[args.command]
    # a batch stops cleanly on Ctrl+C and on SIGTERM alike (a logout, `timeout`, a job queue),
    # and so does a download, an import or a pack (SIGTERM ended them without a word)
    args.signals = _Signals()
    try:
        with args.signals:
            return handler(args)
    except (UsageError, DeviceUnavailable) as e:  # (--device cuda with no CUDA GPU: the
        _fail(e, args)                             # command line asks for what is not there)
        return EXIT_USAGE
    except EngineError as e:
        _fail(e, args)
        return EXIT_FAILED
    except ManifestError as e:  # a broken MEND_MANIFEST (a mirror's): one line, not a traceback
        _fail(f"the model manifest is not usable: {e}", args)
        return EXIT_FAILED
    except KeyboardInterrupt as e:  # (before or after the batch itself: it reports its own)
        print(f"mend: {_interrupted_text(e)}", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)
    except BrokenPipeError:
        # the reader went away (`mend classify ... | head`): stop quietly, as a program killed by
        # SIGPIPE would; stdout goes to devnull so that flushing it at exit cannot raise again
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_PIPE


def _fail(e: BaseException | str, args: argparse.Namespace) -> None:
    if args.debug:
        traceback.print_exc()
    print(f"mend: {_terminal_text(str(e))}", file=sys.stderr)


def _json_text(obj: Any) -> str:
    """One JSON line that the output can carry as it is: readable characters where stdout's
    encoding has them, else ``\\uXXXX`` escapes (an ASCII or cp1252 console: the stream's
    backslashreplace would write ``\\xe9`` or ``\\U0001f642``, which are not JSON) - also for a
    file name that is not valid UTF-8 (its surrogate escapes). Control characters are escaped
    (``json.dumps`` leaves C1 controls and bidirectional overrides as they are)."""
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj)
    except LookupError:
        pass
    # (only inside strings: JSON's own characters are printable ASCII)
    return _CONTROLS.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def _emit(obj: dict[str, Any], as_json: bool, human: str) -> None:
    # one write per line: an interrupt arrives between two writes, never inside a JSON line
    try:
        sys.stdout.write((_json_text(obj) if as_json else _terminal_text(human)) + "\n")
        sys.stdout.flush()
    except OSError as e:
        # Windows: a pipe whose reader has gone (`| more` closed) can raise EINVAL instead of
        # BrokenPipeError (python/cpython#79935): the same quiet stop
        if sys.platform == "win32" and e.errno == errno.EINVAL:
            raise BrokenPipeError(errno.EPIPE, "the reader of the output went away") from e
        raise


# --------------------------------------------------------------------------------------------
# interrupts and batches


class _Interrupted(KeyboardInterrupt):
    """Ctrl+C (SIGINT) or SIGTERM during a batch; the exit code is 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_SIGBREAK = (signal.SIGBREAK,) if hasattr(signal, "SIGBREAK") else ()


def _interrupted_text(e: BaseException) -> str:
    signum = getattr(e, "signum", None)
    if signum == signal.SIGTERM:
        return "stopped by SIGTERM"
    if _SIGBREAK and signum == _SIGBREAK[0]:
        return "stopped by Ctrl+Break"
    return "interrupted"


class _Signals:
    """While a command runs, SIGINT and SIGTERM raise :class:`_Interrupted` (SIGTERM would
    otherwise end the process on the spot: no summary, no word, and a temp file left where the
    file system has no O_TMPFILE) - in a batch (``classify``, ``restore``) except while a
    photo's result is being written (its job's token is committed, see ``Progress.commit``)
    or its line printed: then the photo finishes, its line is printed and the batch stops after it. A second signal
    meanwhile stops at once; once the batch is stopping, further signals are ignored so that
    its last lines are printed whole. A signal that was ignored when Mend started (``nohup``,
    a background job of a script) stays ignored.

    The exception is raised in whatever code runs: code that swallows it (Python drops any
    exception raised in a ``__del__`` or a weakref callback) must not leave the batch running
    with every later signal ignored. So the signal is also kept in ``pending`` (the batch stops
    at the next photo), the running job's token is cancelled (it stops at its next check), and
    a further signal raises again unless the first one's exception is still on its way out."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.stopping = False  # an _Interrupted was raised (or the batch is stopping)
        self.stopped = False  # the batch caught it: it is stopping, printing its last lines
        self.shield = 0  # > 0: a photo's line is being printed
        self.token: Any = None  # the running job's CancelToken (restore)
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is not threading.main_thread():
            return self  # (signal handlers can only be set from the main thread)
        # (Windows: Ctrl+Break, and closing the console window, come as SIGBREAK)
        for sig in (signal.SIGINT, signal.SIGTERM, *_SIGBREAK):
            try:
                old = signal.getsignal(sig)
                if old in (signal.SIG_IGN, None):
                    continue
                signal.signal(sig, self._on_signal)
            except (ValueError, OSError):
                continue
            self._old[sig] = old
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, old)
        self._old.clear()

    def _holding(self) -> bool:
        return self.shield > 0 or bool(self.token is not None and self.token.committed)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping and (self.stopped or _in_flight()):
            return  # (stopping: its finally blocks and last lines run undisturbed)
        if self.pending is None and self._holding():
            self.pending = signum  # raised by check() once the photo is written and reported
            return
        self.pending = signum  # (check() raises it again should the exception be swallowed)
        self.stopping = True
        token = self.token
        if token is not None and not token.committed:
            token.cancel()  # (likewise: the job stops at its next check)
        raise _Interrupted(signum)

    def check(self) -> None:
        """Raise the signal held back while a photo was written and reported, or the one
        whose exception library code swallowed."""
        if self.pending is not None and not self.stopped:
            self.stopping = True
            raise _Interrupted(self.pending)


def _in_flight() -> bool:
    """Whether an :class:`_Interrupted` is being handled where this runs (an ``except`` or
    ``finally`` block, an ``__exit__`` on its way out): the only places Python code runs while
    an exception propagates, ``__del__`` aside (where a new one is dropped anyway)."""
    e: BaseException | None = sys.exc_info()[1]
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, _Interrupted):
            return True
        seen.add(id(e))
        e = e.__context__
    return False


@dataclass
class _Batch:
    """How a batch ended: photos failed, photos not run because it stopped early, and why."""

    failed: int = 0
    not_run: int = 0
    stop: str | None = None  # why it stopped early (said once), None when it ran to the end
    signum: int | None = None  # the signal that stopped it

    def exit_code(self, extra_failed: int = 0) -> int:
        if self.signum is not None:
            return 128 + self.signum
        return EXIT_FAILED if self.failed or self.not_run or extra_failed else EXIT_OK


def _stop_reason(exc: BaseException) -> str | None:
    """Why a failed save means every later photo would fail the same way - the output's disk
    is full or became read-only - else None (that photo alone failed; the batch goes on)."""
    if not isinstance(exc, SaveFailed):
        return None
    reasons = {errno.ENOSPC: "the output folder's disk is full",
               getattr(errno, "EDQUOT", -1): "the disk quota of the output folder is used up",
               errno.EROFS: "the output folder's disk is read-only"}
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # SaveFailed is raised from the OSError
        seen.add(id(e))
        n = getattr(e, "errno", None)
        if isinstance(n, int) and n in reasons:
            return reasons[n]
        e = e.__cause__ or e.__context__
    return None


def _expand(paths: list[Path], recursive: bool = False, exclude: tuple[Path, ...] = (),
            skip_outputs: bool = False, skip_masks: bool = False
            ) -> tuple[list[Path], list[tuple[Path, str]], dict[Path, Path], list[tuple[Path, str]]]:
    """Folders expand to the photos inside (``recursive``: in every subfolder too, except
    ``exclude``); missing paths and folders without a photo become per-input errors. Also
    returns each photo's subfolder relative to the folder it was found under (restore mirrors
    it in the output folder) and, with ``skip_outputs``, the files Mend wrote itself (results,
    masks) that a folder held: restoring a result again would restore it twice; with
    ``skip_masks`` (classify) the masks alone: a mask is no photo. A file named on the command
    line is always taken."""
    from .imageio import count_subfolder_photos, iter_photos, mend_output_kind

    found: list[Path] = []
    errors: list[tuple[Path, str]] = []
    rel: dict[Path, Path] = {}
    outputs: list[tuple[Path, str]] = []
    seen: set[Any] = set()  # one photo named twice (a/x.jpg, a/../a/x.jpg, a link to it)
    for p in paths:
        # an output folder that IS the input folder is read (results next to the originals;
        # Mend's own are recognised by their record): only one below it is left out
        excl = tuple(e for e in exclude if not _same_dir(e, p))
        # a subfolder that could not be listed (no permission): its photos were not read, which
        # the exit code and the JSON must say (handed back by the walk, which goes on; not read
        # from its log line, which is not made where warnings are not logged)
        unlisted: list[tuple[Path, str]] = []
        try:
            got = iter_photos([p], recursive=recursive, exclude=excl, unlisted=unlisted)
        except EngineError as e:
            errors.append((p, str(e)))
            continue
        errors += [(f, f"cannot list this folder ({why}): the photos in it were not read")
                   for f, why in unlisted]
        if p.is_dir() and not got:
            # (only a hint: a folder it cannot list is not counted)
            n, complete = ((0, True) if recursive
                           else count_subfolder_photos(p, unlisted=[]))
            hint = (f" ({n}{'' if complete else '+'} in its subfolders: add --recursive)"
                    if n else "")
            errors.append((p, f"no photos in this folder{hint}"))
            continue
        siblings = _by_stem(got) if skip_outputs and p.is_dir() else {}
        for photo in got:
            keys = _file_keys(photo)
            if not seen.isdisjoint(keys):
                continue
            kind = mend_output_kind(photo) if (skip_outputs or skip_masks) and p.is_dir() \
                else None
            if kind == "result" and not skip_outputs:
                kind = None
            if kind is None and siblings and _is_kept_copy(photo, siblings):
                kind = "result"
            if kind is not None:
                outputs.append((photo, kind))
                continue
            seen.update(keys)
            found.append(photo)
            rel[photo] = photo.parent.relative_to(p) if p.is_dir() else Path()
    # a result skipped in a folder but also named on its own is restored, not both
    outputs = [(o, k) for o, k in outputs if seen.isdisjoint(_file_keys(o))]
    return found, errors, rel, outputs


# the name of a result: <stem><suffix>[_N].<ext> (imageio.output_path_for, the default suffix)
_RESULT_NAME = re.compile(r"^(?P<stem>.+)" + re.escape(OutputOptions().suffix) + r"(?:_\d+)?$")


def _by_stem(photos: list[Path]) -> dict[tuple[Path, str], list[Path]]:
    out: dict[tuple[Path, str], list[Path]] = {}
    for p in photos:
        out.setdefault((p.parent, p.stem), []).append(p)
    return out


def _is_kept_copy(photo: Path, siblings: dict[tuple[Path, str], list[Path]]) -> bool:
    """Whether ``photo`` is a result Mend wrote as a byte copy of its original (nothing to fix,
    or the original kept): such a copy carries no record, but it is named ``<stem>_mend.<ext>``
    (``_mend_1``...) and its original ``<stem>.*`` beside it has the same bytes - results
    written next to the originals (``-o`` = the input folder). Restoring it again would give
    ``x_mend_mend`` on the next run, and so on: the folder doubled at every run."""
    m = _RESULT_NAME.match(photo.stem)
    if not m:
        return False
    return _copy_of_any(photo, siblings.get((photo.parent, m["stem"]), ()))


def _copy_of_any(photo: Path, originals: Iterable[Path]) -> bool:
    """Whether one of ``originals`` (not ``photo`` itself) has ``photo``'s bytes."""
    for original in originals:
        try:
            if (original != photo and original.stat().st_size == photo.stat().st_size
                    and filecmp.cmp(original, photo, shallow=False)):
                return True
        except OSError:
            continue
    return False


def _originals_in(folder: Path, stem: str) -> list[Path]:
    """The files ``<stem>.*`` in ``folder`` (a result's possible originals)."""
    try:
        with os.scandir(folder) as it:
            return [Path(e.path) for e in it
                    if Path(e.name).stem == stem and Path(e.name).suffix and e.is_file()]
    except (OSError, ValueError):
        return []


def _is_kept_copy_of_input(photo: Path, out_dir: Path, paths: list[Path]) -> bool:
    """Whether ``photo``, in the output folder ``out_dir``, is a result Mend wrote there as a
    byte copy of a photo of this run's inputs (no record in it): named ``<stem>_mend.<ext>``
    (``_mend_1``...) with its original ``<stem>.*`` where ``restore -r`` reads it - the same
    subfolder of an input folder (``shoot/2024/a.jpg`` -> ``OUT/2024/a_mend.jpg``), or a photo
    named on the command line - holding the same bytes."""
    m = _RESULT_NAME.match(photo.stem)
    if not m:
        return False
    try:
        rel = photo.parent.relative_to(out_dir)
    except ValueError:
        return False
    for p in paths:
        if p.is_dir():
            originals = _originals_in(p / rel, m["stem"])
        elif rel == Path() and p.stem == m["stem"]:
            originals = [p]
        else:
            continue
        if _copy_of_any(photo, originals):
            return True
    return False


def _file_keys(photo: Path) -> set[Any]:
    """What says two names are one photo: the resolved path, and the file's identity (device,
    inode), which also sees a hard link, and IMG.JPG named as img.jpg or an NFC name for an
    NFD one where the file system ignores case or normalisation (macOS, Windows)."""
    keys: set[Any] = {os.path.normcase(os.path.realpath(photo))}
    try:
        st = os.stat(photo)
    except (OSError, ValueError):
        return keys
    if st.st_ino:  # (0: a file system without file numbers)
        keys.add((st.st_dev, st.st_ino))
    return keys


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.is_dir() and b.is_dir() and os.path.samefile(a, b)
    except OSError:
        return False


def _unread_output_folder(out_dir: Path | None, paths: list[Path], recursive: bool,
                          as_json: bool) -> None:
    """Say so when the output folder lies inside an input folder read with ``-r`` (so it was
    left out) and holds photos that are not Mend's own results: they were not restored. Mend's
    own are those with its record (results, masks) and its byte copies of this run's inputs
    (nothing to fix, or the original kept: ``_is_kept_copy_of_input``)."""
    from .imageio import iter_photos, mend_output_kind

    if out_dir is None or not recursive or not out_dir.is_dir():
        return
    inside = False
    for p in paths:
        if p.is_dir() and not _same_dir(out_dir, p):
            try:
                inside = inside or out_dir.resolve().is_relative_to(p.resolve())
            except OSError:
                continue
    if not inside:
        return
    try:
        n = sum(1 for f in iter_photos([out_dir], recursive=True, unlisted=[])  # (a note)
                if mend_output_kind(f) is None
                and not _is_kept_copy_of_input(f, out_dir, paths))
    except EngineError:
        return
    if n:
        _emit({"path": str(out_dir), "skipped": "output folder", "photos": n}, as_json,
              f"{out_dir}: note: the output folder is not read as input; {n} photo(s) in it "
              "that are not Mend results were not restored (use another -o for them)")


def _skipped_line(path: Path, kind: str, as_json: bool, verb: str = "restore") -> None:
    what = "a Mend result" if kind == "result" else "a mask Mend saved"
    _emit({"path": str(path), "skipped": f"mend {kind}"}, as_json,
          f"{path}: skipped: {what} (name the file itself to {verb} it)")


def _error_line(path: Path, message: str, as_json: bool) -> None:
    # (the human line names the file once; the JSON "error" keeps the full message)
    _emit({"path": str(path), "error": message}, as_json,
          f"{path}: error: {message.removeprefix(f'{path}: ')}")


def _per_input(exc: BaseException, path: Path, args: argparse.Namespace) -> str:
    """Message for one failed input; with ``--debug`` its traceback (once) on stderr: ``exc``'s
    own, as this runs after its ``except`` block has ended (``print_exc`` and ``exc_info=True``
    there found no exception: "NoneType: None")."""
    if isinstance(exc, EngineError):
        if args.debug:
            traceback.print_exception(exc)
        return str(exc)
    log.error("unexpected error on %s", path, exc_info=exc if args.debug else None)
    return f"internal error: {type(exc).__name__}: {exc}"


def _for_each(photos: list[Path], work, args: argparse.Namespace,
              verb: str = "done", prepare: Callable[[], None] | None = None,
              stops: Callable[[BaseException], str | None] | None = None) -> _Batch:
    """Run ``work(path) -> (json_obj, human_line)`` per photo; one bad photo never stops the
    run. Two things do: Ctrl+C / SIGTERM, and a save that finds the output's disk full or
    read-only (every later photo would fail the same way, after all its work). Then one
    message says so on stderr and, with ``--json``, each photo not run gets its line
    (``{"path", "error", "not_run": true}``), so that every input has one. ``prepare`` (the
    engine, the classifier: a VLM's import can take a while) runs first, under the same
    rules: a signal there leaves every photo not run, each with its line. ``stops``: why a
    photo's failure means every later one would fail the same way (else ``_stop_reason``)."""
    stops = stops or _stop_reason
    sig: _Signals = getattr(args, "signals", None) or _Signals()
    batch = _Batch()
    i = 0
    try:
        if prepare is not None:
            prepare()
        while i < len(photos):
            sig.check()
            path = photos[i]
            sig.token = None
            try:
                obj, human = work(path)  # (restore's sets sig.token to its job's)
                failure = None
            except (UsageError, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 — reported per input, the batch goes on
                failure = e
                if isinstance(e, Cancelled) and sig.pending is not None:
                    sig.check()  # (the interrupt library code swallowed: not its failure)
            sig.shield += 1  # (a committed job's token already holds signals back)
            try:
                if failure is None:
                    _emit(obj, args.json, human)
                else:
                    batch.failed += 1
                    _error_line(path, _per_input(failure, path, args), args.json)
                    reason = stops(failure)
                    batch.stop = f"stopped: {reason}" if reason else None
                i += 1
            finally:
                sig.shield -= 1
                sig.token = None
            if batch.stop:
                break
        sig.check()  # (a signal held back while the last photo was written)
    except KeyboardInterrupt as e:
        # further signals: ignored while the last lines are printed
        sig.stopping = sig.stopped = True
        batch.signum = getattr(e, "signum", signal.SIGINT)
        batch.stop = _interrupted_text(e)
    rest = photos[i:]
    if batch.stop is None or (not rest and batch.signum is None):
        return batch
    batch.not_run = len(rest)
    try:
        if args.json:
            for path in rest:
                _emit({"path": str(path), "error": f"not {verb} ({batch.stop})",
                       "not_run": True}, True, "")
        tail = f": {len(rest)} photo(s) not {verb}" if rest else ""
        print(f"mend: {_terminal_text(batch.stop)}{tail}", file=sys.stderr, flush=True)
    except BrokenPipeError:  # (the reader went too, e.g. Ctrl+C reached `| jq` as well)
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return batch


def _classify_chunk_size(clf: Any) -> int:
    """Photos decoded and diagnosed together: a model backend (VLM, CLIP) batches a few, the
    analyzer gains nothing from it, so it holds one decoded photo at a time."""
    chosen = clf.choose() if hasattr(clf, "choose") else clf
    return 1 if getattr(chosen, "name", "") == "builtin" else CLASSIFY_CHUNK


def _classify_chunk(clf: Any, paths: list[Path], load_photo) -> list[Any]:
    """Per path, in order: its Diagnosis or the exception that photo met (decoding it, or
    diagnosing it). When the batch itself fails, each photo is diagnosed alone, so the error
    is reported on the photo that caused it."""
    loaded: list[Any] = []
    for path in paths:
        try:
            loaded.append(load_photo(path))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 — reported on that photo's line
            loaded.append(e)
    ok = [i for i, p in enumerate(loaded) if not isinstance(p, BaseException)]

    def diagnose(idx: list[int]) -> list[Any]:
        try:
            return list(clf.classify_batch([loaded[i].pixels for i in idx],
                                           [loaded[i] for i in idx]))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 — reported per photo
            if len(idx) == 1:
                return [e]
            return [d for i in idx for d in diagnose([i])]

    for i, d in zip(ok, diagnose(ok) if ok else []):
        loaded[i] = d
    return loaded


def cmd_classify(args: argparse.Namespace) -> int:
    from .imageio import load_photo
    from .pipeline import Engine
    from .understand import get_classifier

    # (the reflection masks Mend saved beside its results are no photos: skipped in folders)
    photos, failed, _rel, masks = _expand(args.paths, args.recursive, skip_masks=True)
    for path, msg in failed:
        _error_line(path, msg, args.json)
    for path, kind in masks:
        _skipped_line(path, kind, args.json, "classify")
    counts = dict.fromkeys((d.value for d in Degradation), 0)
    clf: Any = None
    size = 1

    def prepare() -> None:
        nonlocal clf, size
        engine = Engine(args.device)
        opts = {"mode": args.vlm_mode} if args.backend in ("vlm", "auto") else {}
        clf = get_classifier(args.backend, runtime=engine.runtime, **opts)
        size = _classify_chunk_size(clf) if photos else 1

    pending: deque[Any] = deque()  # the current chunk's diagnoses (or errors), in order
    start = 0

    def work(path: Path) -> tuple[dict[str, Any], str]:
        nonlocal start
        if not pending:  # the next few photos, decoded and diagnosed together
            chunk = photos[start:start + size]
            start += len(chunk)
            pending.extend(_classify_chunk(clf, chunk, load_photo))
        d = pending.popleft()
        if isinstance(d, BaseException):
            raise d  # reported on this photo's own line, as when it was diagnosed alone
        counts[d.label.value] += 1
        obj = {"path": str(path), "label": d.label.value,
               "scores": {k: round(float(v), 4) for k, v in d.scores.items()},
               "estimates": d.to_json()["estimates"], "backend": d.backend}
        best = d.label
        said = f"{best.short_name} ({d.confidence:.0%})"
        # (the analyzer's rationale starts with what the line starts with: "D Clean (62%), ...
        # — Clean (62%)")
        why = d.rationale.removeprefix(said).removeprefix("; ") if d.rationale else ""
        human = (f"{path}: {best.value} {said}"
                 + (f", runner-up {d.runner_up.value} {d.runner_up.short_name} "
                    f"({float(d.scores.get(d.runner_up.value, 0.0)):.0%})" if d.runner_up else "")
                 + (f" — {why}" if why else ""))
        return obj, human

    def stops(e: BaseException) -> str | None:
        # the chosen backend's model missing: every photo would fail the same way (before,
        # each of a folder's photos was decoded and said so, line after line); "auto" never
        # raises it (it falls back to the analyzer)
        if isinstance(e, ModelMissing):  # (or installed but missing a package it needs)
            return (f"the {args.backend} backend's model "
                    f"{'cannot be used' if getattr(e, 'package', None) else 'is not installed'}"
                    " (see above)")
        if isinstance(e, TorchMissing):
            return f"the {args.backend} backend's model cannot run without PyTorch (see above)"
        return _stop_reason(e)

    batch = _for_each(photos, work, args, "classified", prepare, stops)
    n_failed = len(failed) + batch.failed
    if not args.json and len(photos) + len(failed) + len(masks) > 1:  # a batch: its tally
        tally = " · ".join(f"{k} {Degradation(k).short_name} {n}" for k, n in counts.items())
        _tally(f"{sum(counts.values())} photo(s): {tally}"
               + (f"; {len(masks)} mask(s) Mend saved skipped" if masks else "")
               + (f"; {n_failed} failed" if n_failed else "")
               + (f"; {batch.not_run} not classified" if batch.not_run else ""))
    return batch.exit_code(len(failed))


def cmd_restore(args: argparse.Namespace) -> int:
    from .progress import Progress

    if not 1 <= args.quality <= 100:
        raise UsageError("--quality must be between 1 and 100")
    from .pipeline import MAX_TILE, MIN_TILE

    if not MIN_TILE <= args.tile <= MAX_TILE:
        raise UsageError(f"--tile must be between {MIN_TILE} and {MAX_TILE} (pixels)")
    if args.mask is not None and not args.mask.is_file():
        raise UsageError(f"mask file not found: {args.mask}")
    if args.mask is not None and args.plan not in ("auto", "B"):
        # (a mask with the class left to Mend means class B: what it covers is removed)
        raise UsageError(f"--mask is a reflection mask, which only class B's chain uses (it "
                         f"removes what the mask covers), not --plan {args.plan}'s: leave out "
                         "--plan or give --plan B")
    if args.skip_existing and args.output is None:
        raise UsageError("--skip-existing needs the output folder: -o DIR")
    if args.region is not None:
        # (a region is a place in one photo; a preview is no result to resume from)
        if len(args.paths) != 1 or not args.paths[0].is_file():
            raise UsageError("--region previews part of one photo: name a single photo file")
        if args.skip_existing:
            raise UsageError("--region writes a preview, not a result: --skip-existing does "
                             "not apply")
    if args.output is not None:
        _check_output_folder(args.output)  # (a dry run names results in it too)
    if args.dry_run:
        return _restore_dry_run(args)
    if args.output is None:
        raise UsageError("restore needs an output folder: -o DIR (or --dry-run)")  # via main()
    out_dir: Path = args.output
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the output folder {out_dir}: {e.strerror or e}") from None
    _check_writable(out_dir)  # before any photo's work, not after each one's
    from .imageio import sweep_partials

    sweep_partials(out_dir)  # temp files a crashed earlier run may have left
    # results written inside an input folder are not inputs (a second run would restore them)
    photos, failed, rel, outputs = _expand(args.paths, args.recursive, exclude=(out_dir,),
                                           skip_outputs=True)
    for path, msg in failed:
        _error_line(path, msg, args.json)
    for path, kind in outputs:
        _skipped_line(path, kind, args.json)
    _unread_output_folder(out_dir, args.paths, args.recursive, args.json)
    options = _output_options(args, out_dir)
    swept = {out_dir}
    said = _Warnings()
    done = skipped = 0
    setup = _RestoreSetup(args, photos, rel, options)

    def work(path: Path) -> tuple[dict[str, Any], str]:
        nonlocal done, skipped
        opts = options
        existing = setup.resume.existing(path) if setup.resume is not None else None
        if existing is not None:
            skipped += 1
            return _already_restored(path, existing)
        if rel[path] != Path():
            sub = _output_subfolder(out_dir, rel[path], create=True)
            if sub not in swept:
                swept.add(sub)
                sweep_partials(sub)
            opts = replace(options, out_dir=sub)
        req = _restore_request(args, path, opts)
        line = _stderr_progress(path) if not args.json else None
        progress = Progress(line)
        signals = getattr(args, "signals", None)
        if signals is not None:  # (a signal waits while the result is being written)
            signals.token = progress.token
        try:
            result = setup.engine.run(req, progress)
        except BaseException:
            if line is not None:
                line.end()  # (before its error line, or the stop message)
            raise
        done += 1
        steps = ", ".join(f"{s.name} [{s.model}] {s.seconds:.1f}s" for s in result.steps)
        mask = result.artifacts.get("mask_path")  # (the reflection mask, saved beside it)
        human = f"{path} -> {result.output} ({result.label.value}: {steps})" + \
            (f"\n  mask: {mask}" if mask else "") + said.lines(result.warnings)
        if result.region is not None:
            x0, y0, x1, y1 = result.region
            human = f"{path} [preview of {x0},{y0}-{x1},{y1}]" + human[len(str(path)):]
        return result.to_json(), human

    batch = _for_each(photos, work, args, "restored", setup)
    n_failed = len(failed) + batch.failed
    if not args.json and len(photos) + len(failed) + len(outputs) > 1:
        _tally(f"{done} photo(s) written to {out_dir}"
               + (f"; {len(outputs)} file(s) Mend wrote skipped" if outputs else "")
               + (f"; {skipped} already restored" if skipped else "")
               + (f"; {n_failed} failed" if n_failed else "")
               + (f"; {batch.not_run} not restored" if batch.not_run else ""))
    return batch.exit_code(len(failed))


class _Resume:
    """``--skip-existing``: each photo's result from an earlier run, found where this run would
    write it - ``output_path_for``'s name ``<stem><suffix>.<ext>`` or one of its ``_1``,
    ``_2``... clash names (the format from the photo's header, as the run's decode decides it:
    a PNG named ``.jpg`` gives a ``.png``; nothing decoded) - when it is Mend's result of this
    photo: its record names this photo (``"source"``: its file name and size, and its SHA-256
    when two photos of the run aiming at that name have the same name and size, or when the
    photo changed after the result was written: ``_unchanged_since``), or it is the photo's own
    bytes (kept as it was). So ``a.png`` and ``a.bmp``, whose results are
    ``a_mend.png`` and ``a_mend_1.png``, each find their own. A result is one photo's only.

    A record written by an earlier Mend names no photo: it counts (as it did) for a photo alone
    in aiming at that name, at that name itself; photos that share a name cannot tell theirs,
    and are restored again, as without the flag (``repeated`` counts them, said once). Headers
    only are read (the record), and a photo's bytes when a byte copy has its size, to tell
    apart two photos of one name and size, or when it changed since its result was written
    (150 photos of 2 MB, a warm disk cache, this machine: 0.5 s to resume, 0.8 s when every
    photo changed and is hashed)."""

    def __init__(self, photos: list[Path], rel: dict[Path, Path],
                 options: OutputOptions) -> None:
        from .imageio import path_key

        self.targets: dict[Path, Path | None] = {}
        for path in photos:
            opts = options
            if options.out_dir is not None and rel[path] != Path():
                opts = replace(options, out_dir=Path(options.out_dir) / rel[path])
            try:
                self.targets[path] = _base_output(path, opts)
            except (EngineError, OSError):  # (the run reports it on that photo)
                self.targets[path] = None
        groups: dict[str, list[Path]] = {}  # the photos aiming at one name, in run order
        for path, t in self.targets.items():
            if t is not None:
                groups.setdefault(path_key(t), []).append(path)
        self.found: dict[Path, Path] = {}
        self.repeated: list[Path] = []  # restored again: the results there name no photo
        names = _FolderNames()
        for group in groups.values():
            self._match(group, names.variants(self.targets[group[0]]))

    def existing(self, path: Path) -> Path | None:
        return self.found.get(path)

    def _match(self, group: list[Path], results: list[Path]) -> None:
        """Give each photo of ``group`` (aiming at one name) its result among ``results`` (the
        files of that name and its clash names, in order), each result to one photo."""
        from .imageio import mend_record

        if not results:
            return
        dest = self.targets[group[0]]
        base = results[0] if dest is not None and os.path.normcase(results[0].name) == \
            os.path.normcase(dest.name) else None  # (the name itself, not a clash name)
        free = list(results)
        size = {p: _size(p) for p in group}

        def take(photo: Path, result: Path) -> None:
            self.found[photo] = result
            free.remove(result)

        for photo in group:  # kept as it was: the photo's own bytes (no record in them)
            if size[photo] is None:
                continue
            for r in free:
                if _size(r) == size[photo] and _same_bytes(r, photo):
                    take(photo, r)
                    break
        if all(p in self.found for p in group):
            return
        records = {r: mend_record(r) for r in free}  # (headers only; None: not Mend's)
        results = [r for r in free if records[r] is not None
                   and records[r].get("kind") != "mask"]
        hashes: dict[Path, str | None] = {}
        for r in results:  # results whose record names their photo
            src = records[r].get("source")
            if not isinstance(src, dict):
                continue
            named = [p for p in group if p not in self.found and _names(src, p, size[p])]
            if len(named) > 1 or (named and "name" not in src) or (
                    named and not _unchanged_since(named[0], r)):
                # one name and size, or a record naming no file (--no-metadata), or a photo
                # changed since that result was written (another photo of that name and size
                # put in its place): the bytes tell
                for p in named:
                    if p not in hashes:
                        hashes[p] = _sha256(p)
                named = [p for p in named if hashes[p] is not None
                         and hashes[p] == src.get("sha256")]
            if len(named) == 1:
                take(named[0], r)
        old = [r for r in results if r in free and "source" not in records[r]]
        # (written by an earlier Mend: its record names no photo)
        if len(group) == 1 and old and old[0] == base and group[0] not in self.found:
            take(group[0], base)  # (the name is this photo's alone: as before)
        elif old:
            self.repeated += [p for p in group if p not in self.found]

    def note(self) -> str | None:
        """Said once when photos are restored again because the results under their names,
        written by an earlier Mend, do not say which photo they came from."""
        if not self.repeated:
            return None
        return (f"{len(self.repeated)} photo(s) restored again: the results under their "
                "names here were written by an earlier version of Mend, whose record does not "
                "say which photo each came from (photos sharing a name, such as a.png and "
                "a.bmp, cannot tell theirs apart)")


class _FolderNames:
    """The files of output folders, listed once each: a result's name and its clash names."""

    _CLASH = re.compile(r"^(?P<stem>.+)_(?P<n>[1-9]\d*)(?P<ext>\.[^.]*)$")

    def __init__(self) -> None:
        self._folders: dict[Path, tuple[dict[str, str], dict[str, list[tuple[int, str]]]]] = {}

    def variants(self, dest: Path) -> list[Path]:
        """The files ``dest``, ``dest``'s ``<stem>_1<ext>``, ``_2``... that exist, in that
        order (names compared as the file system does: ``os.path.normcase``)."""
        names, clashes = self._listing(dest.parent)
        base = os.path.normcase(dest.name)
        out = [dest.parent / names[base]] if base in names else []
        return out + [dest.parent / n for _i, n in sorted(clashes.get(base, ()))]

    def _listing(self, folder: Path):
        if folder not in self._folders:
            names: dict[str, str] = {}
            clashes: dict[str, list[tuple[int, str]]] = {}
            try:
                with os.scandir(folder) as it:
                    for e in it:
                        try:
                            if not e.is_file():
                                continue
                        except OSError:
                            continue
                        key = os.path.normcase(e.name)
                        names[key] = e.name
                        m = self._CLASH.match(key)
                        if m:
                            clashes.setdefault(m["stem"] + m["ext"], []).append(
                                (int(m["n"]), e.name))
            except (OSError, ValueError):  # (no such folder yet: no results)
                pass
            self._folders[folder] = (names, clashes)
        return self._folders[folder]


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except (OSError, ValueError):
        return None


def _sha256(path: Path) -> str | None:
    from .imageio import file_sha256

    try:
        return file_sha256(path)
    except (OSError, ValueError):
        return None


def _unchanged_since(photo: Path, result: Path) -> bool:
    """Whether ``photo`` is still the file that ``result`` was made from as far as its times
    tell: its last change is older than the result - the inode's change time, which a photo
    copied or moved into its place, or rewritten, gets at that moment whatever times the copy
    keeps (``cp -p``, rsync, an unzip), and its modification time. Else (or on Windows, whose
    ``st_ctime`` is when the file was made, which a file written over another keeps) only its
    SHA-256 can say: ``--skip-existing`` hashes the photos that changed, not every photo."""
    if os.name == "nt":
        return False
    try:
        ps, rs = os.stat(photo), os.stat(result)
    except (OSError, ValueError):
        return False
    return max(ps.st_ctime_ns, ps.st_mtime_ns) < rs.st_mtime_ns


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return filecmp.cmp(a, b, shallow=False)
    except (OSError, ValueError):
        return False


def _names(source: dict, photo: Path, size: int | None) -> bool:
    """Whether a result's record ``source`` (``imageio.source_record``) has ``photo``'s name
    (however the file system spells it: case, Unicode normalisation) and size; a record
    without a name (``--no-metadata``): its size alone (its SHA-256 then decides)."""
    from .imageio import record_name

    def norm(name: str) -> str:
        return unicodedata.normalize("NFC", name).casefold()

    name = source.get("name")
    if size is None or source.get("size") != size:
        return False
    return "name" not in source or (isinstance(name, str)
                                    and norm(name) == norm(record_name(photo.name)))


def _base_output(path: Path, options: OutputOptions) -> Path:
    """The name ``output_path_for`` gives ``path``'s result before a clash suffix: its answer
    is ``<stem><suffix>.<ext>``, or that name with ``_N`` when taken."""
    from .imageio import output_path_for, source_format

    fmt = source_format(path) if options.format is None else None  # (--format decides)
    free = output_path_for(path, options, source_format=fmt)
    if free.stem.endswith(options.suffix):
        return free
    return free.with_name(re.sub(r"_\d+$", "", free.stem) + free.suffix)


def _already_restored(path: Path, output: Path) -> tuple[dict[str, Any], str]:
    return ({"path": str(path), "skipped": "already restored", "output": str(output)},
            f"{path}: skipped: already restored as {output}")


def _tally(line: str) -> None:
    _emit({}, False, line)


def _file_in_the_way(folder: Path) -> Path | None:
    """The file that keeps ``folder`` from being a folder: ``folder`` itself or the first
    existing path above it when that is not a folder (a file, a link to nothing), else None.
    "cannot create the output folder X: File exists" (or "Not a directory") would not say
    what is wrong."""
    p = folder
    while True:
        try:
            st = os.stat(p)
        except (OSError, ValueError):  # (not there yet, or a file above it: its parent says)
            if os.path.lexists(p):  # (a link to nothing)
                return p
            if p.parent == p:
                return None
            p = p.parent
            continue
        return None if stat.S_ISDIR(st.st_mode) else p


def _check_output_folder(out_dir: Path) -> None:
    """Refuse an output folder that is a file (or lies below one), before any photo's work."""
    p = _file_in_the_way(out_dir)
    if p is None:
        return
    where = "" if p == out_dir else f" (in the output folder's path {out_dir})"
    raise UsageError(f"{p} is a file, not a folder{where}: choose a folder for the "
                     "results with -o")


def _output_subfolder(out_dir: Path, rel: Path, create: bool) -> Path:
    """The folder of a ``-r`` photo's result, ``rel`` below ``out_dir`` (made when
    ``create``; the dry run only looks): ``SaveFailed`` for that photo when it cannot be, also
    when a file has its name or a name above it (``OUT/DCIM`` a file, photos in ``IN/DCIM``) -
    that file is left as it is."""
    sub = out_dir / rel

    def in_the_way(blocker: Path) -> SaveFailed:
        kind = "a file" if os.path.exists(blocker) else "a link to nothing"
        what = (f"the output folder {sub} is {kind}" if blocker == sub else
                f"cannot create the output folder {sub}: {blocker} is {kind}")
        return SaveFailed(f"{what}, not a folder (rename or move it to restore the photos of "
                          "this subfolder there)")

    blocker = _file_in_the_way(sub)
    if blocker is not None:
        raise in_the_way(blocker)
    if create:
        try:
            sub.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # (SaveFailed: a full disk here stops the batch too)
            blocker = _file_in_the_way(sub)  # (one made meanwhile)
            if blocker is not None:
                raise in_the_way(blocker) from e
            raise SaveFailed(f"cannot create the output folder {sub}: "
                             f"{e.strerror or e}") from e
    return sub


def _check_writable(out_dir: Path) -> None:
    """Refuse an output folder that cannot be written (read-only disk or folder, full disk)
    before the first photo's work: each photo would otherwise fail only when saved."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=out_dir) as f:  # (unnamed where the system can)
            f.write(b"\0")
            f.flush()
    except OSError as e:
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            raise UsageError(f"the disk of the output folder {out_dir} is full: free some "
                             "space or choose another folder") from None
        raise UsageError(f"cannot write to the output folder {out_dir}: "
                         f"{e.strerror or e}") from None


def _output_options(args: argparse.Namespace, out_dir: Path | None) -> OutputOptions:
    return OutputOptions(out_dir=out_dir, format=args.format, quality=args.quality,
                         bit_depth=args.bit_depth, keep_metadata=not args.no_metadata)


def _restore_request(args: argparse.Namespace, path: Path, options: OutputOptions) -> JobRequest:
    label = None if args.plan == "auto" else Degradation(args.plan)
    return JobRequest(path=path, output=options, label=label, profile=args.profile,
                      device=args.device, backend=args.backend, mask_path=args.mask,
                      guard=not args.no_guard, region=getattr(args, "region", None))


def _restore_dry_run(args: argparse.Namespace) -> int:
    """``mend restore --dry-run``: what each photo's job would do, and its cost; no writes. It
    exits as the run would: 1 when a photo cannot be read, its result's folder cannot be made
    or its run would stop (``would_fail``), each said on its line and in the tally."""

    photos, failed, rel, outputs = _expand(args.paths, args.recursive,
                                           exclude=(args.output,) if args.output else (),
                                           skip_outputs=True)
    for path, msg in failed:
        _error_line(path, msg, args.json)
    for path, kind in outputs:
        _skipped_line(path, kind, args.json)
    _unread_output_folder(args.output, args.paths, args.recursive, args.json)
    # (the run's own options: its output name and its memory check depend on the format, the
    # bit depth and whether metadata is kept - a kept photo is copied or written afresh)
    options = _output_options(args, args.output)
    said = _Warnings()
    setup = _RestoreSetup(args, photos, rel, options)
    claimed: set[str] = set()  # the results of the photos before (``path_key``)
    planned = skipped = stopping = 0

    def work(path: Path) -> tuple[dict[str, Any], str]:
        nonlocal planned, skipped, stopping
        opts = options
        existing = setup.resume.existing(path) if setup.resume is not None else None
        if existing is not None:
            skipped += 1
            obj, human = _already_restored(path, existing)
            return {**obj, "dry_run": True}, human
        if args.output is not None and rel[path] != Path():
            # (a file where its folder would be fails the photo in the run: here too)
            opts = replace(options, out_dir=_output_subfolder(args.output, rel[path],
                                                              create=False))
        prep = setup.engine.prepare(_restore_request(args, path, opts))
        stops = _run_would_stop(setup.engine, prep, args)
        if prep.output is not None:
            # (a photo whose run stops writes nothing: it takes no name from the next ones)
            prep = replace(prep, output=None if stops else
                           _dry_run_output(path, prep.output, opts, claimed))
        steps = ", ".join(s.name for s in prep.plan.steps if s.enabled)
        where = (" → nothing written (the run would stop)" if stops else
                 f" → {prep.output}" if prep.output is not None else "")
        human = (f"{path}: {prep.plan.label.value} {prep.plan.label.short_name}, profile "
                 f"{prep.plan.profile}: {steps} — {prep.estimate.describe()}{where}") + \
            said.lines(prep.warnings)
        obj = prep.to_json()
        if stops:  # (its warnings say why)
            obj["would_fail"] = True
            stopping += 1
        else:
            planned += 1
        return obj, human

    batch = _for_each(photos, work, args, "planned", setup)
    code = batch.exit_code(len(failed) + stopping)
    n_failed = len(failed) + batch.failed
    if not args.json and len(photos) + len(failed) + len(outputs) > 1:
        _tally(f"{planned} photo(s) planned"
               + (f"; {len(outputs)} file(s) Mend wrote skipped" if outputs else "")
               + (f"; {skipped} already restored" if skipped else "")
               + (f"; {stopping} would fail (the run would stop)" if stopping else "")
               + (f"; {n_failed} failed" if n_failed else "")
               + (f"; {batch.not_run} not planned" if batch.not_run else "")
               + (f" - the run would exit with {code}" if code == EXIT_FAILED
                  and not batch.not_run else ""))
    return code


def _run_would_stop(engine: Any, prep: Any, args: argparse.Namespace) -> bool:
    """Whether the run of the job ``prep`` (``Engine.prepare``'s) would stop before writing
    its result: a model its plan needs is not installed, or what ``prepare`` warns of as
    "the run would stop" (a package a step needs, more memory than the machine has)."""
    from .pipeline import uses_mask

    given_mask = args.mask is not None and uses_mask(prep.plan)
    return bool(engine.missing_models(prep.plan, given_mask)) or any(
        w.startswith("the run would stop: ") for w in prep.warnings)


def _dry_run_output(path: Path, output: Path, options: OutputOptions,
                    claimed: set[str]) -> Path:
    """Where the run would write ``path``'s result, ``output`` as ``prepare`` says (free now),
    when the photos before it in the run are written first: a name one of them takes
    (``claimed``) moves it on to the next ``_1``, ``_2``... (``a.jpg``, ``a.heic``: the run
    writes ``a_mend.jpg`` and ``a_mend_1.jpg``). Claims the answer: called only for a photo
    whose run would write it (``_run_would_stop``). (A ``--region`` preview is one photo's:
    nothing is claimed before it.)"""
    from .imageio import output_path_for, path_key

    if path_key(output) in claimed:  # (the format is the one ``prepare`` found, by content)
        output = output_path_for(path, replace(options, format=output.suffix), taken=claimed)
    claimed.add(path_key(output))
    return output


class _RestoreSetup:
    """``restore``'s engine and ``--skip-existing``'s earlier results, made as ``_for_each``'s
    ``prepare`` (a signal meanwhile leaves every photo its ``not_run`` line)."""

    def __init__(self, args: argparse.Namespace, photos: list[Path], rel: dict[Path, Path],
                 options: OutputOptions) -> None:
        self._args, self._photos, self._rel, self._options = args, photos, rel, options
        self.engine: Any = None
        self.resume: _Resume | None = None

    def __call__(self) -> None:
        from .pipeline import Engine

        args = self._args
        self.engine = Engine(args.device, tile_size=args.tile)
        self.resume = (_Resume(self._photos, self._rel, self._options) if args.skip_existing
                       else None)
        note = self.resume.note() if self.resume is not None else None
        if note:  # (once, before the photos' lines)
            out = self._options.out_dir
            _emit({"path": str(out), "note": note,
                   "photos": [str(p) for p in self.resume.repeated]}, args.json,
                  f"{out}: note: {note}")


class _Warnings:
    """A batch's human-readable warning lines: one that every photo repeats (models not
    installed, say) is printed in full once, then referred to. ``--json`` keeps every photo's
    own list."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def lines(self, warnings: Iterable[str]) -> str:
        out = ""
        for w in warnings:
            if w in self.seen:
                out += "\n  warning: (as above) " + (w if len(w) <= 60 else w[:57] + "...")
            else:
                self.seen.add(w)
                out += f"\n  warning: {w}"
        return out


def _stderr_progress(path: Path):
    """A photo's progress line on a terminal (None otherwise); its ``end()`` wipes a line a
    failure or a signal left open, so that the photo's error line or the stop message is not
    written after "3% loading" on the same line."""
    if not sys.stderr.isatty():
        return None
    name = _terminal_text(path.name)
    state = {"open": 0}  # the length of the line left open

    def cb(fraction: float, message: str) -> None:
        line = f"{name}: {fraction:4.0%} {message[:60]:<60}"
        print(f"\r{line}", end="", file=sys.stderr, flush=True)
        state["open"] = len(line)
        if fraction >= 1.0:
            print(file=sys.stderr)
            state["open"] = 0

    def end() -> None:
        if state["open"]:
            print(f"\r{' ' * state['open']}\r", end="", file=sys.stderr, flush=True)
            state["open"] = 0

    cb.end = end  # type: ignore[attr-defined]
    return cb


def _store():
    from .models.store import ModelStore

    return ModelStore()


def _ids_for(args: argparse.Namespace) -> list[str]:
    ids = list(args.ids)
    if args.profile:
        from .restore.profiles import profile_models

        ids += sorted(profile_models(args.profile))
    if not ids:
        raise UsageError("name at least one model ID or --profile")
    return list(dict.fromkeys(ids))


def cmd_models(args: argparse.Namespace) -> int:
    from .models.info import models_table

    action = args.models_command
    if not action:
        raise UsageError("models: choose one of list, pull, verify, remove, import, pack")
    store = _store()
    as_json = getattr(args, "json", False)
    if action == "list":
        table = models_table(store)
        if as_json:
            print(_json_text(table))
        else:
            from .models.store import Presence

            for m in table:
                size = sum(f.get("size") or 0 for f in m["files"])
                nc = "" if m["commercial_use"] else "  [non-commercial]"
                print(f"{m['id']:<28} {m['status']:<14} {size / 1e6:>9.1f} MB  {m['license']}{nc}")
                if "present" in m:  # partial: how much of it is here
                    print(f"  {m['status']}: {Presence(**m['present']).describe()} on disk; "
                          f"finish it with: mend models pull {m['id']}")
        return EXIT_OK
    # Ctrl+C and SIGTERM stop the work where it is (a download's .part is kept for a resume);
    # with --json the last lines say what was stopped and what was not done (_models_stopped)
    with _Signals() as sig:
        if action in ("import", "pack"):
            return _models_import_or_pack(args, store, action, as_json, sig)
        return _models_each(args, store, action, as_json, sig)


# what a stopped models command left: said with --json on the line of the model (or path) it
# was working on ({stop}: "interrupted", "stopped by SIGTERM")
_MODELS_STOPPED = {
    "pull": "{stop}; what was downloaded is kept: run the same command again to resume",
    "verify": "{stop} while it was checked; run the same command again",
    "remove": "{stop} while it was removed (it may be removed in part); run the same command "
              "again",
    "import": "{stop}; the file being copied was not imported (files imported before it stay): "
              "run the same command again",
    "pack": "{stop}; no pack was written",
}
_MODELS_VERB = {"pull": "pulled", "verify": "verified", "remove": "removed"}


def _models_stopped(lines: list[dict[str, Any]]) -> None:
    """The last JSON lines of a models command a signal stopped; a reader gone meanwhile
    (Ctrl+C reached ``| jq`` too) ends them quietly."""
    try:
        for obj in lines:
            _emit(obj, True, "")
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _models_import_or_pack(args: argparse.Namespace, store: Any, action: str, as_json: bool,
                           sig: _Signals) -> int:
    from .models.packs import create_pack, import_pack, is_pack

    where = args.path if action == "import" else args.output
    line = None if as_json else _pack_progress("packing" if action == "pack" else
                                               "importing")
    try:
        if action == "pack":
            dest = create_pack(args.profile, args.output, store, progress=line)
            sig.shield += 1  # (done: a signal now no longer cuts its line)
            _emit({"pack": str(dest)}, as_json, f"wrote {dest}")
            return EXIT_OK
        if not args.path.exists():
            raise UsageError(f"nothing to import at {args.path}")
        if is_pack(args.path):
            rep = import_pack(args.path, store, progress=line)
        else:
            rep = store.import_path(args.path, model_id=args.model_id)
    except BaseException as e:
        if line is not None:
            line.end()  # (the message after a failure or Ctrl+C starts its own line)
        if isinstance(e, KeyboardInterrupt):
            sig.stopping = sig.stopped = True  # (further signals: ignored while it is said)
            if as_json:
                _models_stopped([{"path": str(where), "error": _MODELS_STOPPED[action].format(
                    stop=_interrupted_text(e)), "interrupted": True}])
            raise
        if not isinstance(e, EngineError):
            raise
        if not as_json:
            raise
        # like pull: a JSON error object on stdout, the exit code main() would give
        _emit({"path": str(where), "error": str(e)}, True, "")
        return EXIT_USAGE if isinstance(e, UsageError) else EXIT_FAILED
    report = rep.to_json()
    human = (f"imported {len(report['imported'])} file(s), skipped {len(report['skipped'])} "
             f"already installed, rejected {len(report['rejected'])}")
    for r in report["rejected"]:
        human += f"\n  rejected {r['path']}: {r['reason']}"
    sig.shield += 1  # (done: a signal now no longer cuts its line)
    _emit(report, as_json, human)
    return EXIT_FAILED if report["rejected"] else EXIT_OK  # any file refused: say so


def _models_each(args: argparse.Namespace, store: Any, action: str, as_json: bool,
                 sig: _Signals) -> int:
    """``models pull|verify|remove``: one line per model."""
    from .models.download import offline_mode
    from .models.store import BUNDLED, UNPINNED, VERIFIED

    ids = _ids_for(args)
    # an id named that the model list lacks (a typo) is a usage error: nothing is done, not
    # even for the other ids (a profile's ids are the profile's: one a mirror's manifest
    # lacks fails alone, below)
    unknown = [i for i in dict.fromkeys(args.ids) if i not in store.manifest]
    if unknown:
        for model_id in unknown:
            try:
                store.spec(model_id)
            except UsageError as e:
                _emit({"id": model_id, "error": str(e)}, as_json, f"{model_id}: error: {e}")
        return EXIT_USAGE
    done = 0  # models whose line is printed

    def emit(obj: dict[str, Any], human: str) -> None:
        """A model's line; a signal meanwhile is held back until it is printed whole."""
        nonlocal done
        sig.shield += 1
        try:
            _emit(obj, as_json, human)
            done += 1
        finally:
            sig.shield -= 1
        sig.check()

    try:
        if action == "pull" and len(ids) > 1 and not offline_mode():
            # all of them must fit, not only the first ones (each pull checks its own too);
            # offline, each pull says why nothing can come
            what = (f"the {args.profile} profile" if args.profile else "these models") + (
                f" and {', '.join(args.ids)}" if args.profile and args.ids else "")
            try:
                store.check_space(sum(store.space_needed(i) for i in ids
                                      if i in store.manifest), what)
            except EngineError as e:
                if not as_json:
                    raise
                for model_id in ids:  # (every model its line: none was pulled)
                    emit({"id": model_id, "error": str(e), "not_run": True}, "")
                return EXIT_FAILED
        n_failed = 0
        for model_id in ids:
            try:
                out: dict[str, Any] = {"id": model_id}
                if action == "pull":
                    spec = store.spec(model_id)
                    if not spec.commercial_use and not store.is_installed(model_id):
                        # (stderr: said before the download, the JSON on stdout stays as it is)
                        print(f"{model_id}: licence {spec.license} - not for commercial use",
                              file=sys.stderr, flush=True)
                    line = None if as_json else _download_progress(model_id)
                    try:
                        store.pull(model_id, progress=line)
                    finally:
                        if line is not None:
                            line.end()  # (an error or Ctrl+C message starts its own line)
                elif action == "verify":
                    # on a terminal: the hash's progress line, and a repair's download's
                    line, down = ((None, None) if as_json else
                                  (_download_progress(model_id, "checking"),
                                   _download_progress(model_id)))
                    try:
                        out = store.verify(model_id, repair=args.repair, progress=down,
                                           hash_progress=line).to_json()
                    finally:
                        for ln in (line, down):
                            if ln is not None:
                                ln.end()  # (an error or Ctrl+C message starts its own line)
                elif action == "remove":
                    link = store.model_dir(model_id).is_symlink()
                    out["freed"] = store.remove(model_id)
                status = out["status"] = store.status(model_id)
                human = f"{model_id}: {status}"
                if action == "remove":  # (before: "X: missing", removed or not)
                    human += (f" (removed: {out['freed'] / 1e6:.1f} MB freed)" if out["freed"]
                              else " (removed the link; the folder it named was left as it is)"
                              if link else " (it comes with Mend: nothing to remove)"
                              if status == BUNDLED else " (nothing to remove)")
                for key in ("corrupt", "missing", "stray", "removed", "repaired"):
                    for name in out.get(key, ()):
                        human += f"\n  {key}: {name}"
                if action in ("pull", "verify") and status not in (VERIFIED, UNPINNED, BUNDLED):
                    n_failed += 1  # damaged or incomplete: the command did not reach its goal
                    if action == "pull":
                        out["error"] = (f"'{model_id}' is {status} after the download; run: "
                                        f"mend models verify --repair {model_id}")
                        human += f"\n  error: {out['error']}"
            except EngineError as e:
                n_failed += 1
                out, human = {"id": model_id, "error": str(e)}, f"{model_id}: error: {e}"
            emit(out, human)
        return EXIT_FAILED if n_failed else EXIT_OK
    except KeyboardInterrupt as e:
        sig.stopping = sig.stopped = True  # (further signals: ignored while it is said)
        if as_json and done < len(ids):
            stop = _interrupted_text(e)
            _models_stopped(
                [{"id": ids[done], "error": _MODELS_STOPPED[action].format(stop=stop),
                  "interrupted": True}]
                + [{"id": m, "error": f"not {_MODELS_VERB[action]} ({stop})", "not_run": True}
                   for m in ids[done + 1:]])
        raise


def _download_progress(model_id: str, verb: str = "", min_interval: float = 0.1):
    """A model download's progress line on a terminal (None otherwise), or with ``verb`` that
    of another pass over its bytes (``"checking"``: verify's hash); at most ten updates a
    second (a hash reports a chunk every millisecond) and always the last. Its ``end()`` ends
    a line a failure or Ctrl+C left open. A line shorter than the one before it (the next,
    shorter file's name; a slower speed) first blanks that one: no characters of it are left."""
    if not sys.stderr.isatty():
        return None
    state = {"open": False, "last": 0.0, "width": 0}  # width: the open line's length
    verb = f"{verb} " if verb else ""

    def cb(p: Any) -> None:
        if p.total:
            now = time.monotonic()
            if p.done < p.total and state["open"] and now - state["last"] < min_interval:
                return
            state["last"] = now
            line = (f"{model_id}: {verb}{p.fraction:6.1%} of {p.total / 1e6:.0f} MB "
                    f"({p.speed / 1e6:.1f} MB/s) {p.file}")
            shorter = state["open"] and len(line) < state["width"]
            blank = "\r" + " " * state["width"] if shorter else ""
            print(f"{blank}\r{line}", end="", file=sys.stderr, flush=True)
            state["open"] = p.done < p.total
            state["width"] = len(line)
            if not state["open"]:
                print(file=sys.stderr)

    def end() -> None:
        if state["open"]:
            state["open"] = False
            print(file=sys.stderr, flush=True)

    cb.end = end  # type: ignore[attr-defined]
    return cb


def _pack_progress(verb: str, min_interval: float = 0.2):
    """A one-line progress display on a terminal for packing or importing a (multi-GB) pack:
    at most five updates a second, and a final newline."""
    if not sys.stderr.isatty():
        return None
    last = [0.0, 0]  # time of the last update, length of the last line (0: no line open)

    def cb(done: int, total: int, name: str) -> None:
        now = time.monotonic()
        end = done >= total
        if not end and now - last[0] < min_interval:
            return
        frac = done / total if total else 1.0
        line = _terminal_text(f"{verb}: {frac:6.1%} of {total / 1e6:.0f} MB  {name}")[:160]
        print("\r" + line.ljust(last[1]), end="", file=sys.stderr, flush=True)
        last[0], last[1] = now, len(line)
        if end:
            print(file=sys.stderr)
            last[1] = 0

    def close() -> None:  # a line a failure or Ctrl+C left open
        if last[1]:
            last[1] = 0
            print(file=sys.stderr, flush=True)

    cb.end = close  # type: ignore[attr-defined]
    return cb


def cmd_doctor(args: argparse.Namespace) -> int:
    from .devices import available_memory, select_device, system_memory, torch_missing_reason

    info: dict[str, Any] = {"version": __version__, "python": platform.python_version(),
                            "platform": platform.platform(), "machine": platform.machine()}
    dev = select_device(args.device)
    # why PyTorch cannot be imported (None: it can): then the built-in methods are what runs
    no_torch = torch_missing_reason()
    devices: dict[str, Any] = {"selected": dev.to_json(), "cuda": False, "mps": False,
                               "torch_missing": no_torch}
    try:
        import torch

        devices["torch"] = torch.__version__
        devices["cuda"] = bool(torch.cuda.is_available())
        mps = getattr(torch.backends, "mps", None)
        devices["mps"] = bool(mps is not None and mps.is_available())
    except Exception as e:  # noqa: BLE001 - doctor reports a missing/broken torch (any error)
        devices["torch"] = f"unavailable ({e})"
    info["devices"] = devices
    info["memory"] = {"total": system_memory(), "available": available_memory()}
    offline = os.environ.get("MEND_OFFLINE", "").strip().lower()
    info["offline"] = offline in ("1", "true", "yes", "on")
    if getattr(sys, "frozen", False):  # the frozen app loads torch from the private environment
        info["runtime_env"] = os.environ.get("MEND_RUNTIME_ENV")
        info["runtime_env_error"] = os.environ.get("MEND_RUNTIME_ENV_ERROR")
    try:
        from .models.info import doctor_models

        store = _store()
        info["models"] = doctor_models(store)
    except EngineError as e:
        info["models"] = {"error": str(e)}
    from .restore.profiles import recommend_profile

    # (as Engine.resolve_profile: without PyTorch, auto uses the built-in methods)
    info["recommended_profile"] = "builtin" if no_torch else recommend_profile(dev)
    if args.json:
        print(_json_text(info))
    else:
        print(_terminal_text("\n".join(_doctor_lines(info))))
    return EXIT_OK


def _doctor_lines(info: dict[str, Any]) -> list[str]:
    """``mend doctor``'s report as lines a person reads (``--json`` gives ``info`` itself)."""
    from .estimate import format_bytes
    from .models.store import Presence

    def size(n: Any) -> str:
        return "unknown" if not isinstance(n, int) else format_bytes(n) if n else "0 MB"

    def yes(flag: Any) -> str:
        return "yes" if flag else "no"

    out = [f"Mend {info['version']} · Python {info['python']} · {info['platform']}"]
    dev = info["devices"]
    sel = dev["selected"]
    half = [name for name, key in (("fp16", "supports_half"), ("bf16", "supports_bf16"))
            if sel.get(key)]
    kind = "" if sel["kind"] == "cpu" else f" ({sel['kind']})"
    out.append(f"device: {sel['name']}{kind}, {sel['threads']} thread(s), "
               f"{' and '.join(half) if half else 'fp32 only'}; memory budget "
               f"{size(sel.get('memory_budget'))} of {size(sel.get('total_memory'))}")
    if sel.get("note"):
        out.append(f"  note: {sel['note']}")
    out.append(f"  PyTorch {dev.get('torch')} · CUDA: {yes(dev.get('cuda'))} · "
               f"Apple MPS: {yes(dev.get('mps'))}")
    no_torch = dev.get("torch_missing")
    if no_torch:  # (TorchMissing's words)
        out.append(f"  the models run on PyTorch, which {no_torch}")
        out.append("  without it the built-in methods run: profile builtin and the built-in "
                   "analyzer (what auto uses here)")
    mem = info["memory"]
    out.append(f"memory: {size(mem.get('available'))} available of {size(mem.get('total'))}")
    out.append(f"offline mode: {'on (MEND_OFFLINE)' if info['offline'] else 'off'}")
    if "runtime_env" in info:
        out.append(f"runtime environment: {info['runtime_env'] or 'none'}")
        if info.get("runtime_env_error"):
            out.append(f"  error: {info['runtime_env_error']}")
    models = info["models"]
    if "error" in models:
        out.append(f"models: error: {models['error']}")
    else:
        statuses: dict[str, str] = models["models"]
        out.append(f"models: {models['root']} ({size(models['disk_usage_bytes'])} used, "
                   f"{size(models['free_bytes'])} free on its disk)")
        if models.get("manifest"):
            out.append(f"  manifest: {models['manifest']}")
        out.append(f"  installed: {', '.join(models['installed']) or 'none'}")
        missing = [i for i, st in statuses.items() if st == "missing"]
        if missing:
            out.append(f"  not installed: {len(missing)} (mend models list shows them all)")
        for model_id, st in models["problems"].items():
            present = models.get("present", {}).get(model_id)
            if present is not None:  # partial: how much of it is here (as mend models list)
                out.append(f"  {st}: {model_id}, {Presence(**present).describe()} on disk "
                           f"(finish it with: mend models pull {model_id})")
            else:
                out.append(f"  {st}: {model_id} (repair it: mend models verify --repair "
                           f"{model_id})")
        if models["not_configured"]:
            out.append(f"  not configured: {', '.join(models['not_configured'])}")
        if not models.get("extra_arches", True) and not no_torch:  # (no PyTorch: said above)
            out.append("  spandrel_extra_arches is not installed: CodeFormer and the other "
                       "non-commercial architectures cannot load")
        out.append("profiles:")
        for name, pr in models["profiles"].items():
            lacking = (f"{len(pr['missing'])} model(s) missing ({', '.join(pr['missing'])})"
                       if pr["missing"] else "")
            if pr["ready"]:
                line = "ready"
            elif pr.get("torch_missing"):
                line = "not ready: its models run on PyTorch (see above)" + (
                    f"; {lacking}" if lacking else "")
            else:
                line = f"not ready: {lacking}"
            if pr["optional_missing"]:
                line += f"; optional, not installed: {', '.join(pr['optional_missing'])}"
            if pr["download_bytes"]:
                line += (f"; {size(pr['download_bytes'])} to download "
                         f"(mend models pull --profile {name})")
            out.append(f"  {name:<8} {line}")
    rec = info["recommended_profile"]
    out.append(f"recommended profile: {rec}" + (" (without PyTorch)" if no_torch else ""))
    return out


if __name__ == "__main__":
    sys.exit(main())
