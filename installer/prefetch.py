"""Download every model of a profile in one go, for "download at home, use on the road".

    python installer/prefetch.py --profile laptop                 # into Mend's model folder
    python installer/prefetch.py --profile quality --pack q.mendpack   # ... and write a pack
    python installer/prefetch.py --profile laptop --dry-run       # what it would download

Run it with Mend's Python (the environment installer/bootstrap.py made, or the dev .venv).
Progress covers the whole profile; an interrupted download resumes from its ``.part`` file, here
(up to --retries times, with a growing pause) or on the next run. Every file is checked against
its pinned sha256 before it counts. With --pack the verified models are also written into one
offline pack that ``mend models import FILE`` (or the first-run dialog) takes on another machine.
Exit codes: 0 all there, 1 something is still missing, 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import engine  # noqa: F401
except ImportError:  # run from a source checkout without Mend installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.errors import EngineError, LocalDiskError, OfflineError, SaveFailed, UsageError
from engine.models import download as dl
from engine.models.store import ModelStore


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


def _mend_python() -> str:
    """The Python of the environment installer/bootstrap.py makes (for messages)."""
    try:
        import bootstrap  # installer/bootstrap.py, beside this script

        return str(bootstrap.env_python(bootstrap.default_prefix() / "env"))
    except ImportError:
        return "<prefix>/env/bin/python"


def profile_plan(store: ModelStore, profile: str) -> list[dict[str, Any]]:
    """One row per model of the profile: id, licence, size, bytes still to download, status."""
    rows = []
    for spec in store.manifest.for_profile(profile):
        status = store.status(spec.id)
        todo = 0 if spec.bundled or spec.slot else store.missing_bytes(spec.id)
        rows.append({"id": spec.id, "license": spec.license,
                     "commercial_use": spec.commercial_use, "size": spec.total_size,
                     "to_download": todo, "status": status, "bundled": spec.bundled,
                     "slot": spec.slot})
    return rows


class ProgressLine:
    """One line for the whole profile: percent, bytes, speed, time left (redrawn on a TTY)."""

    def __init__(self, stream=None, min_interval: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval if self.tty else 5.0
        self._last = 0.0
        self._file = None

    def __call__(self, ev: dl.DownloadProgress) -> None:
        now = time.monotonic()
        new_file = (ev.model_id, ev.file) != self._file
        done = ev.done >= ev.total > 0
        if not (new_file or done or now - self._last >= self.min_interval):
            return
        self._file, self._last = (ev.model_id, ev.file), now
        left = (ev.total - ev.done) / ev.speed if ev.speed > 0 else None
        eta = f", {int(left // 60)} min {int(left % 60):02d} s left" if left is not None else ""
        text = (f"{ev.fraction:6.1%}  {_mb(ev.done)} of {_mb(ev.total)}"
                f"  {_mb(ev.speed)}/s{eta}  {ev.model_id}/{ev.file}")
        if self.tty:
            print("\r" + text[:110].ljust(110), end="", file=self.stream, flush=True)
            if done:
                print(file=self.stream)
        else:
            print(text, file=self.stream, flush=True)


def prefetch(profile: str, store: ModelStore, *, retries: int = 5, backoff: float = 5.0,
             progress: Callable[[dl.DownloadProgress], None] | None = None,
             sleep: Callable[[float], None] = time.sleep,
             log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Pull every model of ``profile`` (resuming partial files), retrying whole-profile passes.

    Returns {"profile", "models": {id: status}, "attempts", "seconds", "complete", "not_ready":
    [ids still to download], "error"}.
    """
    from engine.models.packs import pull_profile

    started = time.monotonic()
    error = None
    statuses: dict[str, str] = {}
    attempt = 0
    for attempt in range(1, retries + 2):
        try:
            statuses = pull_profile(profile, store, progress)
            error = None
            break
        except (UsageError, OfflineError, LocalDiskError, SaveFailed):
            raise  # (this machine's disk, not the network: another pass cannot help)
        except EngineError as e:  # network trouble, a checksum mismatch (file deleted): retry
            error = str(e)
            if attempt > retries:
                break
            pause = backoff * attempt
            log(f"attempt {attempt} failed: {e}; resuming in {pause:.0f} s")
            sleep(pause)
    if not statuses:
        statuses = {r["id"]: r["status"] for r in profile_plan(store, profile)}
    # built-in models ship inside a package and slots hold the user's own weights: neither is
    # downloaded, so neither can keep the profile from being complete
    not_ready = [m for m, s in statuses.items() if s not in ("verified", "bundled", "unpinned")
                 and not store.spec(m).slot and not store.spec(m).bundled]
    builtin_missing = [m for m, s in statuses.items()
                       if store.spec(m).bundled and s != "bundled"]
    if builtin_missing:
        log(f"note: {', '.join(builtin_missing)} come with packages this Python lacks (nothing "
            "to download; they work under Mend's own Python)")
    return {"profile": profile, "models": statuses, "attempts": attempt,
            "seconds": round(time.monotonic() - started, 1),
            "complete": error is None and not not_ready, "not_ready": not_ready,
            "error": error, "root": str(store.root)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="prefetch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", required=True, choices=["builtin", "laptop", "quality"])
    ap.add_argument("--models-dir", type=Path,
                    help="model folder to fill (default: Mend's, or MEND_MODELS_DIR)")
    ap.add_argument("--pack", type=Path, metavar="FILE",
                    help="also write an offline pack of the profile to FILE")
    ap.add_argument("--retries", type=int, default=5, help="passes after a failed one (resume)")
    ap.add_argument("--dry-run", action="store_true", help="list what would be downloaded")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    say = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr))
    try:
        store = ModelStore(args.models_dir)
        if args.models_dir is not None:  # (its messages name the option, not the variable)
            store.root_option = "--models-dir"
        rows = profile_plan(store, args.profile)
        todo = sum(r["to_download"] for r in rows)
        say(f"profile {args.profile}: {len(rows)} models, {_mb(todo)} to download "
            f"into {store.root}")
        for r in rows:
            flag = "" if r["commercial_use"] else "  [non-commercial licence]"
            say(f"  {r['id']:<28} {r['status']:<12} {_mb(r['size']):>10}  {r['license']}{flag}")
        if args.dry_run:
            if args.json:
                print(json.dumps({"profile": args.profile, "root": str(store.root),
                                  "to_download": todo, "models": rows}))
            return 0
        result = prefetch(args.profile, store, retries=args.retries,
                          progress=None if args.json else ProgressLine(), log=say)
        if result["complete"] and args.pack:
            from engine.models.packs import create_pack

            result["pack"] = str(create_pack(args.profile, args.pack, store))
            say(f"wrote the offline pack {result['pack']} "
                f"({_mb(os.path.getsize(result['pack']))})")
    except EngineError as e:
        print(f"prefetch: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except ImportError as e:  # run with a Python that is not Mend's
        print(f"prefetch: this Python ({sys.executable}) lacks Mend's packages ({e}); run it "
              f"with Mend's Python: {_mend_python()} installer/prefetch.py ...", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    elif result["complete"]:
        say(f"all {len(result['models'])} models of '{args.profile}' are ready "
            f"({result['seconds']} s, {result['attempts']} pass(es))")
    else:
        why = result["error"] or "not ready: " + ", ".join(
            f"{m} ({result['models'][m]})" for m in result["not_ready"])
        say(f"incomplete after {result['attempts']} pass(es): {why}. "
            "Run the same command again to resume.")
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
