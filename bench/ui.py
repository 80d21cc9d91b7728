"""UI benchmark (prints JSON): thumbnails for N synthetic photos (time to the first screen and
full throughput, cold and warm disk cache) and the longest GUI-thread stall while the engine
works (a QTimer heartbeat measuring the gaps between its ticks; target < 50 ms).

    python bench/ui.py [--photos 1000] [--side 640] [--jobs 3] [--job-side 1024]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def make_photos(folder: Path, n: int, side: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    h = side * 3 // 4
    yy, xx = np.mgrid[0:h, 0:side].astype(np.float32)
    base = np.stack([xx / side, yy / h, 0.5 + 0.5 * np.sin(xx / 23.0)], -1)
    for i in range(n):
        img = base * rng.uniform(0.5, 1.0, 3) + rng.normal(0, 0.03, (1, 1, 3))
        cx, cy, r = rng.integers(0, side), rng.integers(0, h), rng.integers(side // 10, side // 3)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.random(3)
        arr = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"photo_{i:05d}.jpg", quality=90)


class Heartbeat:
    """Measures gaps between QTimer ticks on the GUI thread."""

    def __init__(self, interval_ms: int = 5) -> None:
        from PySide6.QtCore import QTimer

        self.gaps: list[float] = []
        self.long: list[tuple[float, float]] = []  # (seconds since start, gap ms) > 50 ms
        self._last = time.perf_counter()
        self._t0 = self._last
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.interval = interval_ms / 1000

    def _tick(self) -> None:
        now = time.perf_counter()
        gap = now - self._last
        self.gaps.append(gap)
        if gap > 0.05:
            self.long.append((round(now - self._t0, 2), round(gap * 1000, 1)))
        self._last = now

    def start(self) -> None:
        self.gaps.clear()
        self.long = []
        self._last = self._t0 = time.perf_counter()
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        g = np.asarray(self.gaps or [0.0]) * 1000
        return {"max_ms": round(float(g.max()), 1), "p99_ms": round(float(np.percentile(g, 99)), 1),
                "mean_ms": round(float(g.mean()), 2), "ticks": len(self.gaps),
                "over_50ms": len(self.long), "longest": sorted(self.long, key=lambda x: -x[1])[:5]}


def wait(app, cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents()
        if cond():
            return True
        time.sleep(0.001)
    return False


def _collector(done: set[str]):
    """A slot for ``ready(gen, path, img)`` / ``failed(gen, path, msg)`` adding the path to
    ``done`` (bound now, not looked up when the signal arrives)."""
    return lambda _gen, path, _payload: done.add(path)


def bench_thumbnails(app, folder: Path, cache: Path, n: int) -> dict:
    from PySide6.QtCore import Qt, QThreadPool

    from ui.browser.model import ThumbnailModel
    from ui.browser.thumbs import ThumbnailLoader
    from ui.browser.view import ThumbnailGrid

    out = {}
    for label in ("cold_cache", "warm_cache"):
        pool = QThreadPool()
        pool.setMaxThreadCount(max(1, (os.cpu_count() or 2)))
        loader = ThumbnailLoader(pool, cache)
        model = ThumbnailModel(loader)
        grid = ThumbnailGrid()
        grid.resize(1100, 800)
        grid.setModel(model)
        grid.show()
        done_paths: set[str] = set()
        # bound to this round's set: a late signal must never count towards the next round
        loader.ready.connect(_collector(done_paths))
        loader.failed.connect(_collector(done_paths))
        hb = Heartbeat()
        hb.start()
        t0 = time.perf_counter()
        model.set_folder(folder)
        app.processEvents()
        visible = [ix for r in range(model.rowCount())
                   if grid.visualRect(ix := model.index(r)).intersects(grid.viewport().rect())]
        vis_paths = {ix.data(Qt.ItemDataRole.UserRole + 1) for ix in visible}

        def first_screen_ready(model=model, vis_paths=vis_paths) -> bool:
            return all(model.item(p) is not None and model.row_of(p) is not None
                       and model.index(model.row_of(p)).data(Qt.ItemDataRole.UserRole + 7)
                       != "loading" for p in vis_paths)

        grid.viewport().update()
        wait(app, first_screen_ready, 120)
        t_first = time.perf_counter() - t0
        # then everything: scroll through the whole folder like a user paging down (the view
        # asks for what is visible; canFetchMore/fetchMore add rows as it nears the end)
        sb = grid.verticalScrollBar()
        while len(done_paths) < n:
            wait(app, lambda: False, 0.05)
            if sb.value() < sb.maximum() or model.canFetchMore():
                sb.setValue(min(sb.maximum(), sb.value() + grid.viewport().height()))
            if time.perf_counter() - t0 > 600:
                break
        t_all = time.perf_counter() - t0
        stall = hb.stop()
        out[label] = {"first_screen_s": round(t_first, 3), "first_screen_thumbs": len(vis_paths),
                      "thumbs_done": len(done_paths),
                      "all_s": round(t_all, 2), "thumbs_per_s": round(n / t_all, 1),
                      "built": loader.built, "gui_stall": stall}
        grid.close()
        loader.new_generation()
        pool.waitForDone()
    return out


def bench_engine_stall(app, folder: Path, jobs: int, out_dir: Path) -> dict:
    from engine.api import JobRequest, OutputOptions
    from ui.engine_client import EngineClient

    client = EngineClient()
    paths = sorted(folder.iterdir())[:jobs]
    hb = Heartbeat()
    # start-up: engine creation + torch import in the engine thread (once per session)
    hb.start()
    t0 = time.perf_counter()
    client.warm_up()
    wait(app, client.is_idle, 300)
    startup = {"seconds": round(time.perf_counter() - t0, 2), "gui_stall": hb.stop()}
    progress = []
    client.progress.connect(lambda p: progress.append(p))
    hb.start()
    t0 = time.perf_counter()
    for p in paths:
        client.submit(JobRequest(p, OutputOptions(out_dir=out_dir), profile="builtin",
                                 backend="builtin"))
    wait(app, client.is_idle, 900)
    dt = time.perf_counter() - t0
    stall = hb.stop()
    failed = [j.error for j in client.jobs() if j.state.value != "done"]
    client.shutdown()
    return {"engine_startup": startup, "jobs": len(paths), "seconds": round(dt, 2),
            "failed": failed, "progress_signals": len(progress), "gui_stall": stall}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=1000)
    ap.add_argument("--side", type=int, default=640)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--job-side", type=int, default=1024)
    args = ap.parse_args()

    from ui.app import create_app

    app = create_app([sys.argv[0]])
    with tempfile.TemporaryDirectory(prefix="mend-bench-ui-") as tmp:
        t = Path(tmp)
        os.environ["MEND_UI_DATA_DIR"] = str(t / "data")
        t0 = time.perf_counter()
        make_photos(t / "photos", args.photos, args.side)
        make_photos(t / "big", args.jobs, args.job_side, seed=1)
        gen = time.perf_counter() - t0
        result = {
            "photos": args.photos, "photo_size": f"{args.side}x{args.side * 3 // 4}",
            "cpu_count": os.cpu_count(), "generate_s": round(gen, 1),
            "thumbnails": bench_thumbnails(app, t / "photos", t / "cache", args.photos),
            "engine": {"photo_size": f"{args.job_side}x{args.job_side * 3 // 4}",
                       **bench_engine_stall(app, t / "big", args.jobs, t / "out")},
        }
    stalls = [result["engine"]["gui_stall"]["max_ms"]] + [
        v["gui_stall"]["max_ms"] for v in result["thumbnails"].values()]
    result["longest_gui_stall_ms"] = max(stalls)
    result["stall_target_ms"] = 50
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
