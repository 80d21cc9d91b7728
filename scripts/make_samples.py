"""Regenerate resources/samples/ deterministically from public-domain pictures.

Sources (licences checked in ../shared/images/manifest.tsv and scikit-image's data docstrings):
  astronaut.png  - NASA photo of Eileen Collins, public domain (scikit-image data)
  rocket.jpg     - SpaceX launch photo of DSCOVR, released into the public domain (scikit-image data)

Usage: python scripts/make_samples.py [--source-dir ../shared/images/clean] [--out resources/samples]
The degradations written here are the ground-truth labels listed in resources/samples/SOURCES.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.understand.synthetic import motion_kernel

ASTRONAUT = "scikit-image__skimage__data__astronaut.png"
ROCKET = "scikit-image__skimage__data__rocket.jpg"


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(u8).save(buf, "JPEG", quality=quality, subsampling=2 if quality < 90 else 0)
    return buf.getvalue()


def build(source_dir: Path) -> dict[str, bytes]:
    astro = _load(source_dir / ASTRONAUT)  # 512 x 512
    rocket = _load(source_dir / ROCKET)  # 640 x 427
    out: dict[str, bytes] = {}

    # A: low resolution + sensor noise + strong JPEG
    rng = np.random.default_rng(1)
    small = _resize(astro, 192, 192)
    small = small + rng.normal(0, 6 / 255, small.shape).astype(np.float32)
    out["A_astronaut_lowres_noise_jpeg.jpg"] = _jpeg(small, 30)
    rng = np.random.default_rng(2)
    small = _resize(rocket, 240, 160)
    small = small + rng.normal(0, 4 / 255, small.shape).astype(np.float32)
    out["A_rocket_lowres_noise_jpeg.jpg"] = _jpeg(small, 40)

    # B: transmission (rocket) + blurred, ghosted reflection (astronaut)
    t = _resize(rocket, 480, 320)
    r = _resize(astro[96:416], 480, 320)
    r = cv2.GaussianBlur(r, (0, 0), 3.0)
    ghost = 0.6 * r + 0.4 * np.roll(r, (6, 9), axis=(0, 1))
    out["B_rocket_reflection_of_astronaut.jpg"] = _jpeg(0.8 * t + 0.35 * ghost, 90)

    # C: linear camera-motion blur: the camera moving straight during one continuous exposure,
    # the line drawn with sub-pixel weights (engine.understand.synthetic, as in the benchmark).
    # Until session 8 it was a line of whole pixels, a staircase at 30 degrees whose spectrum
    # has no regular zeros: the line-length estimator could not resolve it, so the built-in
    # chain sharpened the sample instead of deconvolving it.
    k = motion_kernel(21, 30.0)
    blurred = cv2.filter2D(_resize(astro, 384, 384), -1, k, borderType=cv2.BORDER_REFLECT)
    out["C_astronaut_motion_blur_21px_30deg.jpg"] = _jpeg(blurred, 92)

    # D: clean
    out["D_rocket_clean.jpg"] = _jpeg(_resize(rocket, 480, 320), 92)
    out["D_astronaut_clean.jpg"] = _jpeg(_resize(astro, 384, 384), 92)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-dir", type=Path,
                    default=ROOT.parent / "shared" / "images" / "clean")
    ap.add_argument("--out", type=Path, default=ROOT / "resources" / "samples")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in build(args.source_dir).items():
        (args.out / name).write_bytes(data)
        print(f"{name}: {len(data) // 1024} KB")


if __name__ == "__main__":
    main()
