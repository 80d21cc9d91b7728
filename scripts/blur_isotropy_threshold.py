"""Where MOTION_MAX_ISOTROPY comes from: blur_isotropy of synthetic blurs of clean photos.

The analyzer cuts class C when a photo's blur is about as wide in every direction as in the
worst one (``blur_isotropy`` >= ``engine.understand.analyzer.MOTION_MAX_ISOTROPY``). This script
measures ``blur_isotropy`` (engine.understand.blurextent, as shipped) on motion blurs (straight
lines, hand-shake paths) and isotropic blurs (Gaussian, disc) of 6-24 px over clean photos that
are not evaluation photos, and prints the percentiles per kind. Sources: the first 20 files
(short side >= 300 px) of the folder that
``python scripts/train_analyzer_cnn.py --fetch-sources DIR --more`` writes.

    python scripts/blur_isotropy_threshold.py --sources DIR
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.imageio import load_photo
from engine.understand import synthetic as S
from engine.understand.blurextent import estimate_blur_extent
from engine.understand.measure import to_gray

KINDS = ("line", "shake", "gauss", "disc")


def kernel(kind: str, length: float, rng: np.random.Generator) -> np.ndarray:
    if kind == "line":
        return S.motion_kernel(length, float(rng.uniform(0, 180)))
    if kind == "shake":
        return S.shake_kernel(length, rng)
    if kind == "gauss":
        s = length / 4
        g = cv2.getGaussianKernel(int(3 * s) * 2 + 1, s)
        return (g @ g.T).astype(np.float32)
    r = length / 2
    n = int(r) * 2 + 1
    yy, xx = np.mgrid[:n, :n] - n // 2
    k = ((xx * xx + yy * yy) <= r * r).astype(np.float32)
    return k / k.sum()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=Path, required=True)
    ap.add_argument("--count", type=int, default=20)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    rng = np.random.default_rng(5)
    iso: dict[str, list[float]] = {k: [] for k in KINDS}
    for f in sorted(args.sources.iterdir())[:args.count]:
        img = load_photo(f).pixels[..., :3]
        if min(img.shape[:2]) < 300:
            continue
        img = np.ascontiguousarray(img[:512, :512])
        for length in (6, 10, 16, 24):
            for kind in KINDS:
                blurred = S.add_noise(S.convolve(img, kernel(kind, length, rng)), 1.5, rng)
                r = estimate_blur_extent(to_gray(blurred))
                if r["blur_extent_edges"] > 0 and r["blur_extent"] >= 3:
                    iso[kind].append(r["blur_isotropy"])
    for kind, v in iso.items():
        p = np.percentile(v, [5, 25, 50, 75, 95]) if v else []
        print(f"{kind:6s} n={len(v):3d} p5/25/50/75/95 = " + " ".join(f"{x:.2f}" for x in p))
    motion = np.array(iso["line"] + iso["shake"])
    blur = np.array(iso["gauss"] + iso["disc"])
    for t in (0.45, 0.5, 0.55):
        print(f"threshold {t}: motion cut {np.mean(motion >= t):.1%}, "
              f"isotropic kept {np.mean(blur < t):.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
