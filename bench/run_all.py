"""`make bench`: run every benchmark in bench/ and write docs/PERFORMANCE.md.

Each benchmark prints JSON; this script keeps the raw JSON under docs/bench/ and writes a report
whose every figure comes from those files, with the machine and the date. Benchmarks on random
weights measure time and memory only — never quality.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "images"

# name -> (arguments, timeout seconds)
BENCHES: dict[str, tuple[list[str], int]] = {
    # MEND_LARGE_CLEAN names the folder of bench/classify.py --fetch-large-clean (else not run)
    "classify": (["bench/classify.py", "--all"]
                 + (["--large-clean", os.environ["MEND_LARGE_CLEAN"]]
                    if os.environ.get("MEND_LARGE_CLEAN") else []), 3600),
    # --reference runs RealESRGANer in the bench-only venv named by MEND_REFERENCE_PYTHON
    # (recipe: bench/restore.py's docstring); without it that row says "not run"
    "restore": (["bench/restore.py", "--big", "--ncnn", "--max-tiles", "6"]
                + (["--reference"] if os.environ.get("MEND_REFERENCE_PYTHON") else []), 5400),
    "ui": (["bench/ui.py", "--photos", "1000"], 1800),
    # the text step's PP-OCR detection on the real text photos, level, turned, enlarged (~5 min)
    "ocr_detect": (["bench/ocr_detect.py", "--large"], 1800),
    # the whole laptop A chain on a 24 MP photo, every tile (~30 min on one core): only with
    # --only restore_24mp_full
    "restore_24mp_full": (["bench/restore.py", "--worker", "A", "laptop", "6000x4000"], 5400),
}
OPTIONAL = {"restore_24mp_full"}


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
            "os": platform.platform(), "python": platform.python_version()}
    try:
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    return info


def run(name: str, args: list[str], timeout: int) -> dict:
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                           timeout=timeout, check=False)  # a failed bench is reported below
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    took = round(time.perf_counter() - t0, 1)
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: {p.stderr.strip()[-2000:]}", "seconds": took}
    try:
        data = json.loads(p.stdout)
    except json.JSONDecodeError as e:
        return {"error": f"not JSON ({e}): {p.stdout[-500:]}", "seconds": took}
    return {"result": data, "seconds": took}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        s = json.dumps(v)
        return s if len(s) <= 120 else s[:117] + "…"
    return str(v)


def flatten(obj, prefix: str = "", depth: int = 0, out: list | None = None) -> list:
    """Scalar leaves as (path, value), for a compact table of every figure."""
    out = [] if out is None else out
    if isinstance(obj, dict):
        for k, v in obj.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1, out)
    elif isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj) and depth < 4:
        for i, v in enumerate(obj):
            label = v.get("chain") or v.get("name") or v.get("id") or str(i)
            if "profile" in v:
                label = f"{label}/{v['profile']}"
            flatten(v, f"{prefix}[{label}]", depth + 1, out)
    else:
        out.append((prefix, obj))
    return out


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def summary(results: dict) -> list[str]:
    """The headline figures the issues ask for, read from the raw JSON (absent ones say so)."""
    out = ["## Summary", "", "| figure | value | measured |", "|---|---|---|"]

    def row(name, value, bench):
        res = results.get(bench, {})
        when = res.get("measured", "—")
        cpu = _get(res, "machine", "cpu")
        when += f", {cpu}" if cpu else ""
        out.append(f"| {name} | {value if value is not None else 'not measured'} | {when} |")

    c = _get(results, "classify", "result")
    row("analyzer ms per 12-MP photo (median, 1 thread)", _get(c, "speed_12mp", "ms_median"),
        "classify")
    acc = _get(c, "labelled", "accuracy")
    row("analyzer accuracy on the labelled real photos (issue 3's target: 85 %)",
        None if acc is None else f"{acc:.1%}" + (" (target met)" if acc >= 0.85 else
                                                 " (target not met)"), "classify")
    acc = _get(c, "heldout_large_clean_D", "accuracy")
    row("analyzer: large clean photos called D (held out)",
        None if acc is None else f"{acc:.1%}", "classify")
    r = _get(results, "restore", "result")
    for run in (_get(r, "runs") or []):
        errs = [s["name"] for s in run.get("steps", []) if "error" in s]
        spm = run.get("seconds_per_megapixel")
        val = (f"not run: {run['skipped']}" if run.get("skipped") else "not run") \
            if spm is None else (
            f"{spm:.3g} s/MP, peak RSS {run.get('peak_rss_mb', 0) / 1024:.2f} GB"
            + (", random weights" if run.get("random_weights") else "")
            + (f" (steps not run, model absent: {', '.join(errs)})" if errs else "")
            + (f" (no weights built for {', '.join(run['no_weights_for'])}: the step did "
               "without it)" if run.get("no_weights_for") else ""))
        size = "x".join(map(str, run.get("size", [])))
        row(f"chain {run.get('chain')} / {run.get('profile')}" + (f" ({size} px)" if size else ""),
            val, "restore")
    big = _get(r, "laptop_a_24mp")
    if big:
        row("laptop A on 24 MP: peak RSS", f"{big.get('peak_rss_mb', 0) / 1024:.2f} GB "
            f"(sr tiles run: {_get(big, 'steps')[0].get('stopped_after_tiles', 'all')} of "
            f"{_get(big, 'steps')[0].get('tiles_total', '?')}; projected "
            f"{big.get('seconds', 0) / 60:.0f} min)", "restore")
    full = _get(results, "restore_24mp_full", "result")
    if full and "peak_rss_mb" in full:
        row("laptop A on 24 MP, every tile: peak RSS / time",
            f"{full['peak_rss_mb'] / 1024:.2f} GB / {full.get('seconds', 0) / 60:.0f} min on "
            f"{full.get('threads', '?')} thread(s)"
            + (" — under 4 GB" if full['peak_rss_mb'] < 4096 else " — OVER 4 GB"),
            "restore_24mp_full")
    nc = _get(r, "realesrgan_x4plus_vs_ncnn")
    if nc and nc.get("ncnn_seconds"):
        ratio = nc.get("ours_over_ncnn") or nc["ours_seconds"] / nc["ncnn_seconds"]
        row("Real-ESRGAN x4plus, ours vs the official ncnn build (same weights)",
            f"{nc['ours_seconds']} s vs {nc['ncnn_seconds']} s (medians) = {ratio:.2f}× "
            f"the ncnn time, agreement {nc.get('psnr_db')} dB", "restore")
    ref = _get(r, "realesrganer_reference")
    if isinstance(ref, dict) and "summary" in ref:
        verdict = "PASSES" if ref.get("passes") else "FAILS"
        ref = f"{ref['summary']} — {verdict} (ours at least as fast at ≥ 40 dB)"
    row("Real-ESRGAN x4plus, ours vs `realesrgan` RealESRGANer (issue 4's reference)", ref,
        "restore")
    u = _get(results, "ui", "result")
    cold = _get(u, "thumbnails", "cold_cache")
    if cold:
        row("thumbnails, cold cache: first screen / throughput",
            f"{cold['first_screen_s']} s / {cold['thumbs_per_s']} per s "
            f"(longest GUI stall {cold['gui_stall']['max_ms']} ms)", "ui")
    warm = _get(u, "thumbnails", "warm_cache")
    if warm:
        row("thumbnails, warm cache: first screen / throughput",
            f"{warm['first_screen_s']} s / {warm['thumbs_per_s']} per s "
            f"(longest GUI stall {warm['gui_stall']['max_ms']} ms)", "ui")
    eng = _get(u, "engine", "gui_stall")
    if eng:
        row("longest GUI-thread stall while the engine works (target < 50 ms)",
            f"{eng['max_ms']} ms", "ui")
    start = _get(u, "engine", "engine_startup")
    if start:
        row("engine start-up (once per session): seconds / longest GUI stall",
            f"{start['seconds']} s / {start['gui_stall']['max_ms']} ms", "ui")
    return out + [""]


def render(results: dict, info: dict, when: str) -> str:
    lines = ["# Mend — performance report", "",
             (f"Written {when} by `make bench` (bench/run_all.py); each section says when it "
              "was measured. Raw JSON: docs/bench/."), "",
             "## Machine", "", "This report was written on:", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in info.items()]
    other = sorted(n for n, r in results.items()
                   if _get(r, "machine", "cpu") and _get(r, "machine", "cpu") != info.get("cpu"))
    if other:
        lines += ["", ("Sections measured on another machine (the development VM's CPU changes "
                       "between sessions; each section names its own): "
                       + ", ".join(f"{n} ({_get(results[n], 'machine', 'cpu')})" for n in other)
                       + ".")]
    lines += ["", ("Figures from full-size architectures with **random weights** (flagged "
                   "`random_weights` in the JSON) are compute and memory measurements only: they "
                   "say nothing about restoration quality."), ""]
    lines += summary(results)
    lines += ["## Every figure", ""]
    for name, res in results.items():
        lines += [f"### {name}", ""]
        if "error" in res:
            lines += [f"Not measured: {res['error']}", ""]
            continue
        load = res.get("load_average_before")
        cpu = _get(res, "machine", "cpu")
        lines += [f"Measured {res.get('measured', when)}" + (f" on {cpu}" if cpu else "")
                  + f"; benchmark wall time {res['seconds']} s"
                  + (f"; load average before it ran {load} (other work on the 2 cores slows "
                     "every figure)" if load else "") + "."
                  + (f" {res['note']}." if res.get("note") else ""),
                  "", "| figure | value |",
                  "|---|---|"]
        for path, v in flatten(res["result"]):
            lines.append(f"| `{path}` | {_fmt(v)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "PERFORMANCE.md")
    ap.add_argument("--render-only", action="store_true", help="rewrite the report from docs/bench/")
    args = ap.parse_args()
    names = [] if args.render_only else (args.only or [n for n in BENCHES if n not in OPTIONAL])
    raw_dir = args.out.parent / "bench"
    raw_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results = {}
    for name, (bench_args, timeout) in BENCHES.items():
        raw = raw_dir / f"{name}.json"
        if name in names:
            print(f"running {name} …", file=sys.stderr, flush=True)
            load_before = [round(x, 2) for x in os.getloadavg()]
            res = run(name, bench_args, timeout)
            res["measured"] = when
            res["load_average_before"] = load_before
            res["machine"] = info
            raw.write_text(json.dumps(res, indent=1))
        elif raw.exists():  # keep the last measurement of benches not re-run
            res = json.loads(raw.read_text())
        else:
            continue
        results[name] = res
    args.out.write_text(render(results, info, when))
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
