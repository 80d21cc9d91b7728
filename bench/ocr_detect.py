"""Benchmark of the text step's PP-OCR detection (rapidocr's bundled ONNX models). Prints JSON.

    python bench/ocr_detect.py                      # the real text photos, level and at 25 deg
    python bench/ocr_detect.py --large              # + enlarged ones (over det_max_side: tiles)
    python bench/ocr_detect.py --large --only japan --repeat 3
    python bench/ocr_detect.py --large --save a.json        # keep this run's lines ...
    python bench/ocr_detect.py --large --compare a.json     # ... and match another run's to them
    python bench/ocr_detect.py --only japan --large --step  # + the whole text_fusion step

Photos: every file of ``text_degraded`` and ``text_clean_ocr`` in ../shared/images (what the
step sees: transparency over a background), at their size and turned 25 degrees (a page
photographed askew: canvas grown, corners filled with the median colour, as
tests/engine/test_text_rotated_s14.py turns them). ``--large`` adds some of them enlarged
(bicubic) past ``det_max_side`` (2048), where detection runs on a reduced copy and in
full-resolution tiles: the 2128 x 1594 px page is japan.jpg at x2 turned 25 degrees.

Per photo: the lines found (their corners), the seconds of ``_detect_text`` (each of
``--repeat`` runs, one thread as the device policy gives on two cores), the detector's calls
and the megapixels its network looked at (after PP-OCR's own resizing: short side at least
736 px, a copy with its margin at most 2000 px). ``--compare`` matches each photo's lines to
those of a saved run (IoU of the quads >= 0.5, one to one) and says, of the lines only one run
has, how many the other run's boxes cover (>= half of its area: the same text, whole or in
pieces). ``--step`` times the whole step too (a random Real-ESRGAN Compact: time only).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "images"

import cv2
import numpy as np

FOLDERS = ("text_degraded", "text_clean_ocr")
# (photo, scale): past det_max_side at 25 degrees (some level too); the first is the 2128-px page
LARGE = (("text_clean_ocr/RapidOCR__python__tests__test_files__japan.jpg", 2.0),
         ("text_clean_ocr/scikit-image__skimage__data__page.png", 5.0),
         ("text_clean_ocr/RapidOCR__python__tests__test_files__japan.jpg", 2.5),
         ("text_clean_ocr/scikit-image__skimage__data__page.png", 6.0),
         ("text_degraded/textbsr__textbsr__testsets__OnlyLR__t1.png", 3.0),
         ("text_degraded/textbsr__textbsr__testsets__PairedLRSR__LR__test2.jpg", 2.5),
         ("text_clean_ocr/RapidOCR__python__tests__test_files__check_return_word_len.jpeg", 4.5),
         ("text_clean_ocr/RapidOCR__python__tests__test_files__ch_en_num.jpg", 5.0),
         ("text_clean_ocr/RapidOCR__python__tests__test_files__black_font_color_transparent.png",
          1.2))
DEG = 25


def turned(img: np.ndarray, deg: float) -> np.ndarray:
    """``img`` turned ``deg`` degrees on a canvas that holds it all, corners in its median."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(w * c + h * s)), int(np.ceil(w * s + h * c))
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    bg = tuple(float(v) for v in np.median(img.reshape(-1, 3), axis=0))
    return np.clip(cv2.warpAffine(img, m, (nw, nh), flags=cv2.INTER_CUBIC,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=bg), 0.0, 1.0)


def photo(rel: str, scale: float, deg: float) -> np.ndarray:
    """The photo as the text step sees it (over a background where transparent), scaled and
    turned."""
    from engine.imageio import load_photo
    from engine.pipeline import fill_transparent
    from engine.restore.text import _over_background

    ph = load_photo(SHARED / rel)
    px = ph.pixels
    if px.ndim == 2:
        px = np.repeat(px[..., None], 3, axis=-1)
    px = np.ascontiguousarray(px[..., :3])
    if ph.alpha is not None and float(ph.alpha.min()) < 1.0:
        px = _over_background(fill_transparent(px, ph.alpha), ph.alpha)
    if scale != 1:
        h, w = px.shape[:2]
        px = cv2.resize(px, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
    if deg:
        px = turned(px, deg)
    return np.ascontiguousarray(np.clip(px, 0.0, 1.0).astype(np.float32))


def cases(large: bool, only: str | None) -> list[tuple[str, float, float]]:
    out = [(f"{d}/{p.name}", 1.0, deg) for d in FOLDERS
           for p in sorted((SHARED / d).iterdir()) for deg in (0, DEG)]
    if large:
        out += [(rel, k, deg) for rel, k in LARGE for deg in (0, DEG)]
    return [c for c in out if not only or only in c[0]]


class _Counting:
    """Stands in for rapidocr's detection session: counts the calls and the megapixels of
    the network's input."""

    def __init__(self, session) -> None:
        self.session, self.calls, self.mp = session, 0, 0.0

    def __call__(self, x):
        self.calls += 1
        self.mp += x.shape[2] * x.shape[3] / 1e6
        return self.session(x)

    def __getattr__(self, name):
        return getattr(self.session, name)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ha, hb = (cv2.convexHull(np.asarray(q, np.float32).reshape(-1, 1, 2)) for q in (a, b))
    inter, _ = cv2.intersectConvexConvex(ha, hb)
    return float(inter / max(1e-6, cv2.contourArea(ha) + cv2.contourArea(hb) - inter))


def covered(q: np.ndarray, others: list[np.ndarray], share: float = 0.5) -> bool:
    """Whether the boxes ``others`` cover at least ``share`` of quad ``q``."""
    q = np.asarray(q, np.float64)
    x0, y0 = np.floor(q.min(axis=0)).astype(int)
    x1, y1 = np.ceil(q.max(axis=0)).astype(int)
    mine = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    theirs = mine.copy()
    cv2.fillPoly(mine, [np.round(q - (x0, y0)).astype(np.int32)], 1)
    for o in others:
        cv2.fillPoly(theirs, [np.round(np.asarray(o) - (x0, y0)).astype(np.int32)], 1)
    return int((mine & theirs).sum()) >= share * max(1, int(mine.sum()))


def compare(before: list, after: list) -> dict:
    """Lines of two runs on one photo, matched one to one by IoU >= 0.5 (best first)."""
    a = [np.asarray(q, np.float32) for q in before]
    b = [np.asarray(q, np.float32) for q in after]
    pairs = sorted(((iou(p, q), i, j) for i, p in enumerate(a) for j, q in enumerate(b)),
                   reverse=True)
    left, right, ious = set(range(len(a))), set(range(len(b))), []
    for v, i, j in pairs:
        if v < 0.5:
            break
        if i in left and j in right:
            left.discard(i)
            right.discard(j)
            ious.append(v)
    return {"before": len(a), "after": len(b), "matched": len(ious),
            "iou_mean": round(float(np.mean(ious)), 3) if ious else None,
            "iou_min": round(float(np.min(ious)), 3) if ious else None,
            "only_before": len(left), "only_before_covered": sum(covered(a[i], b) for i in left),
            "only_after": len(right), "only_after_covered": sum(covered(b[j], a) for j in right)}


def step_seconds(img: np.ndarray, ocr) -> dict:
    """The whole text_fusion step on ``img`` (x1, a random Compact on the regions)."""
    from engine.devices import select_device
    from engine.progress import Progress
    from engine.restore.registry import StepContext, get_step
    from tests.model_helpers import install_test_model, make_runtime
    from tests.tiny_models import write_compact

    with tempfile.TemporaryDirectory() as tmp:
        store = install_test_model(Path(tmp) / "store", "realesr-general-x4v3",
                                   write_compact(Path(tmp), num_feat=64, num_conv=32, seed=0))
        runtime = make_runtime(store)
        runtime.cached(("ocr", "rapidocr"), lambda: ocr, 1)
        ctx = StepContext(device=select_device("cpu"), progress=Progress(), runtime=runtime)
        ctx.artifacts["source"] = img
        t = time.perf_counter()
        get_step("text_fusion").fn(img, {"model": "realesr-general-x4v3"}, ctx)
        regions = ctx.artifacts["ocr_regions"]
        return {"seconds": round(time.perf_counter() - t, 2), "regions": len(regions),
                "sr_megapixels": round(sum(r["sr_pixels"] for r in regions) / 1e6, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", action="store_true", help="+ enlarged photos (tiles)")
    ap.add_argument("--only", default=None, help="photos whose path contains this")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--step", action="store_true", help="+ the whole step's seconds")
    ap.add_argument("--save", type=Path, default=None)
    ap.add_argument("--compare", type=Path, default=None, metavar="JSON")
    args = ap.parse_args(argv)
    if not SHARED.is_dir():
        print(json.dumps({"skipped": f"no {SHARED}"}))
        return 0
    from engine.devices import select_device
    from engine.progress import Progress
    from engine.restore.registry import StepContext, get_step
    from engine.restore.text import RapidOCRBackend, _detect_text

    device = select_device("cpu")
    ocr = RapidOCRBackend(device.threads)
    ocr.detect(np.full((64, 64, 3), 255, np.uint8))  # (loaded)
    det = ocr._engine.text_det
    det.session = counting = _Counting(det.session)
    defaults = get_step("text_fusion").defaults
    det_max, det_tile = int(defaults["det_max_side"]), int(defaults["det_tile"])
    ctx = StepContext(device=device, progress=Progress(), runtime=None)
    saved = json.loads(args.compare.read_text())["photos"] if args.compare else {}
    out: dict = {"threads": device.threads, "det_max_side": det_max, "det_tile": det_tile,
                 "photos": {}}
    for rel, scale, deg in cases(args.large, args.only):
        img = photo(rel, scale, deg)
        key = f"{rel} x{scale:g} {deg:g}deg"
        seconds = []
        for _ in range(max(1, args.repeat)):
            counting.calls, counting.mp = 0, 0.0
            t = time.perf_counter()
            quads = _detect_text(ocr, img, det_max, det_tile, ctx)
            seconds.append(round(time.perf_counter() - t, 2))
        row = {"size": [img.shape[1], img.shape[0]], "lines": len(quads),
               "seconds": seconds, "median_s": round(statistics.median(seconds), 2),
               "calls": counting.calls, "megapixels": round(counting.mp, 2),
               "quads": [np.round(np.asarray(q, np.float64), 1).tolist() for q in quads]}
        if key in saved:
            row["vs_saved"] = compare(saved[key]["quads"], row["quads"])
        if args.step:
            row["step"] = step_seconds(img, ocr)
        out["photos"][key] = row
        print(f"{key}: {row['lines']} lines, {row['median_s']} s, {row['megapixels']} MP"
              + (f", vs saved {row['vs_saved']}" if "vs_saved" in row else ""),
              file=sys.stderr, flush=True)
    if args.save:
        args.save.write_text(json.dumps(out))
    for row in out["photos"].values():
        row.pop("quads")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
