"""Fit the built-in analyzer's model and write resources/analyzer_model.json.

Training data: synthetic degradations (known noise sigma, JPEG quality, motion-blur lines,
downscale/upscale, reflections blended from two clean photos) of the clean photos in
../shared/images, plus the labelled real photos there (labels: see its README). Generalisation is
judged by leave-one-source-repository-out cross-validation (a fold drops a repository's real
photos AND every synthetic sample made from that repository's photos) and on a held-out set of
other real camera photos (camera_jpeg_exif, upright exif_orientation files) that are never
used for fitting.

The shipped model (--model cnn, the default) is the patch CNN's own verdict
(resources/analyzer_cnn.npz, scripts/train_analyzer_cnn.py): it beat the logistic model over all
measurements on both leave-one-repository-out and the held-out camera photos; --model features
fits that logistic model instead (both are always reported).

Deterministic: fixed seeds, sorted inputs. Usage:
    python scripts/fit_analyzer.py [--images ../shared/images] [--out resources/analyzer_model.json]
                                   [--cache /tmp/mend-fit-cache] [--report report.json]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.understand import measure as M
from engine.understand import synthetic as S
from engine.understand.analyzer import (
    FEATURES,
    LogisticModel,
    feature_vector,
    full_resolution_check,
    smear_check,
    temper,
)

CLASSES = ("A", "B", "C", "D")
SEED = 20261122
L2 = 0.003  # ridge strength on the standardised weights
# total weight of each class's real and synthetic samples. The real photos come from few
# repositories, each with its own look; weighting them down against the synthetic
# degradations (which vary the degradation, not the source) generalised best across
# repositories (leave-one-repository-out) and to the held-out camera photos.
REAL_WEIGHT = 0.4
SYN_WEIGHT = 1.0


# ----------------------------------------------------------------------------- labels

def label_for(file: str, category: str) -> str | None:
    """The class of a manifest row, or None when it is not used (see ../shared/images/README)."""
    name = Path(file).name
    stem = Path(file).stem
    if category == "motion_blur":
        return "D" if "_sharp" in name else "C"
    if category == "defocus_blur":
        return "A"
    if category == "lowres_noise_jpeg":
        if name.endswith(".mp4"):
            return None
        if any(k in file for k in ("__HR__", "_gt", "__GT", "McMaster", "Set12", "classic5")):
            return "D"
        return "A"
    if category == "text_degraded":
        return "A"
    if category == "reflection":
        # the rules read the file's own name, after the "<repo>__<folders>__" prefix: the
        # flash-reflection-removal repository's name holds "flash" too, and its *_ambient
        # inputs are B (until session 5 that prefix dropped both from the labelled set)
        own = stem.split("__")[-1]
        if own.endswith(("_T", "_R")) or "flash" in own:
            return None
        return "B"
    if category in ("clean", "text_clean_ocr"):
        return "D"
    return None  # faces (A or C, ambiguous) and robustness folders


@dataclass
class Sample:
    key: str  # unique id for the cache
    label: str
    group: str  # repository (fold)
    synthetic: bool
    meas: dict | None = None
    _features: np.ndarray | None = None

    @property
    def features(self) -> np.ndarray:
        if self._features is None:
            self._features = feature_vector(self.meas, FEATURES)
        return self._features

    @features.setter
    def features(self, v: np.ndarray) -> None:
        self._features = v


def read_manifest(images: Path) -> list[dict[str, str]]:
    with open(images / "manifest.tsv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def labelled_rows(images: Path) -> list[tuple[Path, str, str]]:
    out = []
    for r in read_manifest(images):
        lab = label_for(r["file"], r["category"])
        if lab is not None and (images / r["file"]).is_file():
            out.append((images / r["file"], lab, r["repo"]))
    return sorted(out)


# px: a camera file whose short side is below this is an embedded-size thumbnail (13 of the 30);
# fit reports and bench/classify.py give their accuracy apart
THUMBNAIL_SIDE = 200


def heldout_rows(images: Path) -> list[tuple[Path, str, str]]:
    """Other real photos never used for fitting: camera files (assumed clean, D)."""
    out = []
    for r in read_manifest(images):
        f = r["file"]
        if r["category"] == "camera_jpeg_exif" and f.lower().endswith(".jpg") or r["category"] == "exif_orientation" and f.endswith(("_1.jpg", "_0.jpg")):
            out.append((images / f, "D", r["repo"]))
    return sorted(p for p in out if p[0].is_file())


def heldout_face_rows(images: Path) -> list[tuple[Path, str, str]]:
    """Other real photos never used for fitting: the ``faces`` inputs of the blind face
    restoration repositories (CodeFormer, GFPGAN, KAIR real_faces), labelled A. The manifest
    calls the folder "A or C (mixed)"; every one was looked at (before any prediction was seen)
    and is an old, low-resolution, blurred, noisy or compressed face photo, none a directional
    motion blur, so all are A."""
    out = []
    for r in read_manifest(images):
        if r["category"] == "faces":
            out.append((images / r["file"], "A", r["repo"]))
    return sorted(p for p in out if p[0].is_file())


def clean_sources(images: Path) -> list[tuple[Path, str]]:
    """Clean photos used as the base of synthetic degradations (with their repo)."""
    out = []
    for path, lab, repo in labelled_rows(images):
        if lab == "D" and "text_clean_ocr" not in str(path) and min(_size(path)) >= 200:
            out.append((path, repo))
    # reflection-free transmission layers are clean photos too, but not the layer of an
    # evaluation photo (the *_ambient inputs are labelled B: their own transmission would leak
    # that photo into the fit), which since session 5 is every one in ../shared/images
    labelled = {p.name for p, _lab, _repo in labelled_rows(images)}
    for r in read_manifest(images):
        f = Path(r["file"])
        if r["category"] == "reflection" and f.stem.endswith("_T") and \
                f.stem[:-2] + f.suffix not in labelled:
            out.append((images / r["file"], r["repo"]))
    return sorted(out)


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


# ----------------------------------------------------------------------------- features

class _FakePhoto:
    def __init__(self, tables):
        self.info = {"jpeg_quantization": tables} if tables else {}
        self.format = "JPEG" if tables else "PNG"
        self.path = None


def _load(path: Path):
    from engine.imageio import load_photo

    photo = load_photo(path)
    return photo.pixels, photo


MEASURE_VERSION = "6"  # bump when measure.py changes what it returns


def _measure_version() -> str:
    """MEASURE_VERSION plus a digest of the CNN file (its scores are measurements too)."""
    p = Path(M.CNN_PATH)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()[:12] if p.is_file() else "no-cnn"
    return f"{MEASURE_VERSION}-{digest}"


def _slim(meas: dict) -> dict:
    """The JSON-safe part of measure()'s output that feature_vector reads."""
    out = {k: v for k, v in meas.items() if isinstance(v, (int, float, str))}
    out["features"] = {k: float(v) for k, v in meas["features"].items()}
    return out


def _cached(cache: Path | None, key: str, fn) -> dict:
    if cache is None:
        return _slim(fn())
    cache.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha1((key + "|" + _measure_version()).encode()).hexdigest()[:20]
    f = cache / f"{h}.json"
    if f.is_file():
        return json.loads(f.read_text())
    v = _slim(fn())
    f.write_text(json.dumps(v))
    return v


def real_samples(rows, cache) -> list[Sample]:
    out = []
    for path, lab, repo in rows:
        def fn(path=path):
            img, photo = _load(path)
            return M.measure(img, photo)
        s = Sample(str(path), lab, repo, False)
        s.meas = _cached(cache, "real:" + str(path), fn)
        out.append(s)
    return out


def _fit_size(img: np.ndarray, max_side: int = 720) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    f = max(h, w) / max_side
    if f <= 1:
        return img
    return S.quantise(cv2.resize(img, (round(w / f), round(h / f)), interpolation=cv2.INTER_AREA))


def _jpeg_maybe_tables(img, q, rng):
    j, t = S.jpeg(img, q)
    return j, (t if rng.random() < 0.5 else None)


def synthetic_variants(img: np.ndarray, other: np.ndarray, rng: np.random.Generator):
    """(label, description, image, tables) for one clean photo, in _VARIANT_LABELS order.

    Degradations span mild to severe so that the model learns the degradation, not a
    source: A = noise, JPEG, soft low resolution (native small size, not upscaled),
    upscaling, defocus, and mixtures; B = a second, blurred layer (with or without a
    ghost); C = straight and curved (hand-shake) motion blur; D = the photo itself, camera
    JPEG, and sharp downscaled copies down to thumbnail size (small is not degraded)."""
    v = []
    v.append(("D", "clean", img, None))
    q = int(rng.integers(85, 98))
    v.append(("D", f"jpeg{q}", *_jpeg_maybe_tables(img, q, rng)))
    side = float(rng.uniform(96, 420))
    f = max(1.0, max(img.shape[:2]) / side)
    small = S.down_up(img, f, upscale=False)
    v.append(("D", f"thumb{side:.0f}", *_jpeg_maybe_tables(small, int(rng.integers(80, 96)), rng)))
    v.append(("D", "down1.6", S.down_up(img, float(rng.uniform(1.3, 2.5)), upscale=False), None))
    s = float(rng.uniform(5, 35))
    v.append(("A", f"noise{s:.0f}", S.add_noise(img, s, rng), None))
    q = int(rng.integers(8, 40))
    v.append(("A", f"jpeg{q}", *_jpeg_maybe_tables(img, q, rng)))
    f = float(rng.uniform(2.0, 4.5))
    v.append(("A", f"downup{f:.1f}", S.down_up(img, f), None))
    g = float(rng.uniform(1.2, 3.5))
    v.append(("A", f"gblur{g:.1f}", S.gaussian_blur(img, g), None))
    combo = S.add_noise(S.down_up(img, 2.0), float(rng.uniform(4, 12)), rng)
    q = int(rng.integers(30, 70))
    v.append(("A", f"combo{q}", S.jpeg(combo, q)[0], None))
    f = float(rng.uniform(2.0, 5.0))
    soft = S.soft_downscale(img, f, float(rng.uniform(0.5, 1.2)))
    v.append(("A", f"softlr{f:.1f}", *_jpeg_maybe_tables(soft, int(rng.integers(25, 75)), rng)))
    soft = S.soft_downscale(img, float(rng.uniform(1.5, 3.0)), float(rng.uniform(0.6, 1.5)))
    soft = S.add_noise(soft, float(rng.uniform(2, 8)), rng)
    v.append(("A", "softlr_noise", soft, None))
    for k in range(3):
        a = float(rng.uniform(0.25, 0.6)) if k < 2 else float(rng.uniform(0.5, 0.9))
        ghost = (int(rng.integers(-12, 13)), int(rng.integers(3, 15))) if k == 1 else None
        v.append(("B", f"refl{a:.2f}", S.reflection(img, other, a, float(rng.uniform(0, 3)),
                                                     ghost), None))
    L = float(rng.uniform(8, 35))
    ang = float(rng.uniform(0, 180))
    v.append(("C", f"motion{L:.0f}@{ang:.0f}", S.motion_blur(img, L, ang), None))
    for k in range(2):
        L = float(rng.uniform(8, 40))
        b = S.convolve(img, S.shake_kernel(L, rng))
        if k == 1:
            b = S.add_noise(b, float(rng.uniform(1, 4)), rng)
        v.append(("C", f"shake{L:.0f}", b, None))
    return v


# labels of synthetic_variants' outputs, in order (checked when the images are built)
_VARIANT_LABELS = ("D", "D", "D", "D", "A", "A", "A", "A", "A", "A", "A", "B", "B", "B",
                   "C", "C", "C")
N_TEXT = 30  # rendered text images (procedural, no source repository)
_TEXT_LABELS = ("D", "D", "A", "A")


def text_variants(rng: np.random.Generator):
    """Crisp rendered text (D, also as camera JPEG) and two degraded copies (A)."""
    h = int(rng.integers(24, 320))
    w = int(rng.integers(max(h, 160), 1000))
    img = S.render_text(rng, h, w)
    v = [("D", "text", img, None)]
    v.append(("D", "text_jpeg", *_jpeg_maybe_tables(img, int(rng.integers(85, 98)), rng)))
    for _ in range(2):
        kind = int(rng.integers(0, 4))
        if kind == 0:
            d = S.soft_downscale(img, float(rng.uniform(1.5, 3.5)), float(rng.uniform(0.6, 1.3)))
        elif kind == 1:
            d = S.down_up(img, float(rng.uniform(2, 4)))
        elif kind == 2:
            d = S.gaussian_blur(img, float(rng.uniform(1.0, 2.5)))
        else:
            d = S.add_noise(S.down_up(img, float(rng.uniform(1.5, 3))), float(rng.uniform(5, 20)),
                            rng)
        if rng.random() < 0.6:
            d = S.jpeg(d, int(rng.integers(20, 70)))[0]
        v.append(("A", f"text_deg{kind}", d, None))
    return v


def text_samples(cache) -> list[Sample]:
    out = []
    for i in range(N_TEXT):
        built: list = []

        def build(i=i, built=built):
            if not built:
                built.extend(text_variants(np.random.default_rng(SEED + 1000 + i)))
                assert tuple(v[0] for v in built) == _TEXT_LABELS
            return built

        for j, lab in enumerate(_TEXT_LABELS):
            key = f"text:{SEED}:{i}:{j}"

            def fn(j=j, build=build):
                _lab, _desc, im, tables = build()[j]
                return M.measure(im, _FakePhoto(tables))

            s = Sample(key, lab, "synthetic:text", True)
            s.meas = _cached(cache, key, fn)
            out.append(s)
    return out


def synthetic_samples(sources, cache) -> list[Sample]:
    out = text_samples(cache)
    for i, (path, repo) in enumerate(sources):
        other_path = sources[(i + 7) % len(sources)][0]
        built: list = []

        def build(path=path, other_path=other_path, i=i, built=built):
            if not built:
                img = _fit_size(_load(path)[0])
                oth = _fit_size(_load(other_path)[0])
                built.extend(synthetic_variants(img, oth, np.random.default_rng(SEED + i)))
                assert tuple(v[0] for v in built) == _VARIANT_LABELS
            return built

        for j, lab in enumerate(_VARIANT_LABELS):
            key = f"syn2:{SEED}:{path}:{other_path}:{j}"

            def fn(j=j, build=build):
                _lab, _desc, im, tables = build()[j]
                return M.measure(im, _FakePhoto(tables))

            s = Sample(key, lab, repo, True)
            s.meas = _cached(cache, key, fn)
            out.append(s)
    return out


# ----------------------------------------------------------------------------- model

def _weights(samples: list[Sample]) -> np.ndarray:
    w = np.zeros(len(samples))
    for syn, gw in ((False, REAL_WEIGHT), (True, SYN_WEIGHT)):
        for c in CLASSES:
            idx = [i for i, s in enumerate(samples) if s.synthetic == syn and s.label == c]
            for i in idx:
                w[i] = gw / len(idx)
    return w * len(samples) / w.sum()


def fit(samples: list[Sample], l2: float = L2) -> dict:
    from scipy.optimize import minimize

    X = np.stack([s.features for s in samples])
    y = np.array([CLASSES.index(s.label) for s in samples])
    w = _weights(samples)
    mean = X.mean(axis=0)
    scale = X.std(axis=0) + 1e-6
    Z = (X - mean) / scale
    n, d = Z.shape
    k = len(CLASSES)
    Y = np.eye(k)[y]

    def loss(theta):
        W = theta[:k * d].reshape(k, d)
        b = theta[k * d:]
        logits = Z @ W.T + b
        logits -= logits.max(axis=1, keepdims=True)
        P = np.exp(logits)
        P /= P.sum(axis=1, keepdims=True)
        nll = -(w * np.log(P[np.arange(n), y] + 1e-12)).sum() / n
        G = (w[:, None] * (P - Y)) / n
        gW = G.T @ Z + 2 * l2 * W
        gb = G.sum(axis=0)
        return nll + l2 * (W * W).sum(), np.concatenate([gW.ravel(), gb])

    res = minimize(loss, np.zeros(k * d + k), jac=True, method="L-BFGS-B",
                   options={"maxiter": 2000})
    W = res.x[:k * d].reshape(k, d)
    b = res.x[k * d:]
    return {"version": 1, "kind": "multinomial-logistic", "features": list(FEATURES),
            "classes": list(CLASSES), "mean": mean.tolist(), "scale": scale.tolist(),
            "W": W.tolist(), "b": b.tolist(), "temperature": 1.0}


def predict(params: dict, samples: list[Sample]) -> np.ndarray:
    """Class probabilities as the analyzer computes them: the model, the smear check and the
    full-resolution check, then the temperature (which keeps the order: confidence only)."""
    m = LogisticModel(params)
    if m.features == tuple(FEATURES):
        P = m.proba(np.stack([s.features for s in samples]), tempered=False)
    else:
        P = m.proba(np.stack([feature_vector(s.meas, m.features) for s in samples]),
                    tempered=False)
    for i, s in enumerate(samples):
        scores = dict(zip(m.classes, P[i].tolist()))
        if s.meas:  # (a bare feature vector - the fitting tests - has nothing to check)
            scores = full_resolution_check(smear_check(scores, s.meas), s.meas)
        scores = temper(scores, m.temperature)
        P[i] = [scores[c] for c in m.classes]
    return P


def metrics(labels: list[str], pred: list[str]) -> dict:
    conf = {a: {b: 0 for b in CLASSES} for a in CLASSES}
    for t, p in zip(labels, pred):
        conf[t][p] += 1
    recall = {c: (conf[c][c] / sum(conf[c].values())) if sum(conf[c].values()) else None
              for c in CLASSES}
    acc = float(np.mean([t == p for t, p in zip(labels, pred)])) if labels else None
    return {"n": len(labels), "accuracy": acc, "recall": recall, "confusion": conf}


def cross_validate(real: list[Sample], syn: list[Sample], l2: float) -> tuple[dict, dict]:
    """Leave one source repository out (its real photos and its synthetic offspring)."""
    groups = sorted({s.group for s in real})
    preds: dict[str, str] = {}
    probs: dict[str, np.ndarray] = {}
    for g in groups:
        train = [s for s in real + syn if s.group != g]
        test = [s for s in real if s.group == g]
        params = fit(train, l2)
        P = predict(params, test)
        for s, p in zip(test, P):
            preds[s.key] = CLASSES[int(np.argmax(p))]
            probs[s.key] = p
    labels = [s.label for s in real]
    m = metrics(labels, [preds[s.key] for s in real])
    m["probabilities"] = {k: v.tolist() for k, v in probs.items()}
    return m, preds


def calibrate_temperature(real: list[Sample], probs: dict) -> float:
    """Softmax temperature that makes the held-out (leave-one-repository-out) probabilities
    of the real photos honest: minimises their negative log-likelihood (argmax unchanged)."""
    if not probs:
        return 1.0
    logp = np.log(np.stack([np.asarray(probs[s.key]) for s in real]) + 1e-12)
    y = np.array([CLASSES.index(s.label) for s in real])
    best_t, best = 1.0, np.inf
    for t in np.round(np.arange(0.5, 6.01, 0.05), 2):
        z = logp / t
        z -= z.max(axis=1, keepdims=True)
        nll = -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean()
        if nll < best - 1e-12:
            best_t, best = float(t), float(nll)
    return best_t


CNN_NAMES = ("cnn_A", "cnn_B", "cnn_C", "cnn_D")


def cnn_alone(samples: list[Sample]) -> dict | None:
    """The CNN's own verdict (argmax of its mean patch scores): it never saw a real photo, so
    on the real photos this is a fully held-out figure."""
    if not samples or not all(n in s.meas["features"] for s in samples for n in CNN_NAMES):
        return None
    pred = [CLASSES[int(np.argmax([s.meas["features"][n] for n in CNN_NAMES]))]
            for s in samples]
    return metrics([s.label for s in samples], pred)


def cnn_model() -> dict:
    """The analyzer model that passes the CNN's mean patch log-probabilities straight to the
    softmax (identity weights): argmax = the CNN's verdict; only the temperature is fitted."""
    return {"version": 1, "kind": "cnn-scores", "features": list(CNN_NAMES),
            "classes": list(CLASSES), "mean": [0.0] * 4, "scale": [1.0] * 4,
            "W": np.eye(4).tolist(), "b": [0.0] * 4, "temperature": 1.0}


def _cnn_meta() -> dict | None:
    net = M.load_cnn()
    if net is None:
        return None
    digest = hashlib.sha256(Path(M.CNN_PATH).read_bytes()).hexdigest()
    return {**net.meta, "sha256": digest, "grid": M.CNN_GRID}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "images")
    ap.add_argument("--out", type=Path, default=ROOT / "resources" / "analyzer_model.json")
    ap.add_argument("--cache", type=Path, default=None, help="feature cache folder (speed)")
    ap.add_argument("--report", type=Path, default=None, help="write the full report JSON here")
    ap.add_argument("--l2", type=float, default=L2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--model", choices=("cnn", "features"), default="cnn",
                    help="cnn: ship the CNN's own scores (default; best on held-out photos); "
                         "features: logistic regression over all measurements + CNN scores")
    args = ap.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    t0 = time.time()
    real = real_samples(labelled_rows(args.images), args.cache)
    held = real_samples(heldout_rows(args.images), args.cache)
    faces = real_samples(heldout_face_rows(args.images), args.cache)
    syn = synthetic_samples(clean_sources(args.images), args.cache)
    print(f"features: {len(real)} real, {len(syn)} synthetic, {len(held)} held-out "
          f"({time.time() - t0:.1f}s)", file=sys.stderr)
    cv, _ = cross_validate(real, syn, args.l2)
    params = fit(real + syn, args.l2)
    params["temperature"] = calibrate_temperature(real, cv.pop("probabilities"))
    feature_model = None
    if args.model == "cnn":
        # the shipped model: the CNN's own scores, no real photo used for fitting, so its
        # accuracy on every real photo is a held-out figure (the same model in every
        # leave-one-repository-out fold). The feature model above is kept for comparison.
        fm_P, fm_h = predict(params, real), predict(params, held)
        feature_model = {
            "leave_one_repo_out": cv,
            "resubstitution": metrics([s.label for s in real],
                                      [CLASSES[int(i)] for i in fm_P.argmax(1)]),
            "heldout_camera": metrics([s.label for s in held],
                                      [CLASSES[int(i)] for i in fm_h.argmax(1)])}
        params = cnn_model()
        if cnn_alone(real) is None:
            raise SystemExit("--model cnn needs resources/analyzer_cnn.npz")
        cv = None  # nothing is fitted on the real photos but the temperature: no folds
        # the temperature is fitted on the scores it is applied to: after the checks
        probs = {s.key: p for s, p in zip(real, predict(params, real))}
        params["temperature"] = calibrate_temperature(real, probs)
    P = predict(params, real)
    train_m = metrics([s.label for s in real], [CLASSES[int(i)] for i in P.argmax(1)])
    Ph = predict(params, held)
    held_pred = [CLASSES[int(i)] for i in Ph.argmax(1)]
    held_m = metrics([s.label for s in held], held_pred)
    # 13 of the camera files are ~100-px thumbnails: report them apart (small is arguably A)
    big = [min(_size(Path(s.key))) >= THUMBNAIL_SIDE for s in held]
    held_big = metrics([s.label for s, b in zip(held, big) if b],
                       [p for p, b in zip(held_pred, big) if b])
    held_small = metrics([s.label for s, b in zip(held, big) if not b],
                         [p for p, b in zip(held_pred, big) if not b])
    faces_m = metrics([s.label for s in faces],
                      [CLASSES[int(i)] for i in predict(params, faces).argmax(1)])
    Ps = predict(params, syn)
    syn_m = metrics([s.label for s in syn], [CLASSES[int(i)] for i in Ps.argmax(1)])
    cnn_real, cnn_held = cnn_alone(real), cnn_alone(held)
    params["fit"] = {
        "model": args.model,
        "seed": SEED, "l2": args.l2, "synthetic_weight": SYN_WEIGHT, "real_weight": REAL_WEIGHT,
        "measure_version": _measure_version(),
        "temperature_from": "leave-one-repository-out NLL of the real photos" if
        args.model == "features" else "NLL of the analyzer's checked scores on the real "
        "photos (applied last: confidence only, never the label)",
        "n_real": len(real), "n_synthetic": len(syn),
        "real_accuracy_resubstitution": train_m["accuracy"],
        # (cnn: no folds - its resubstitution figures are held-out ones, see cnn_alone_*)
        "real_accuracy_leave_one_repo_out": cv["accuracy"] if cv else None,
        "real_recall_leave_one_repo_out": cv["recall"] if cv else None,
        "real_recall_resubstitution": train_m["recall"],
        "heldout_camera_accuracy": held_m["accuracy"],
        "heldout_camera_accuracy_min_side_200": held_big["accuracy"],
        "heldout_camera_accuracy_thumbnails": held_small["accuracy"],
        "heldout_faces_accuracy": faces_m["accuracy"],
        "cnn": _cnn_meta(),
        "cnn_alone_real_accuracy": cnn_real["accuracy"] if cnn_real else None,
        "cnn_alone_real_recall": cnn_real["recall"] if cnn_real else None,
        "cnn_alone_heldout_camera_accuracy": cnn_held["accuracy"] if cnn_held else None,
    }
    report = {"resubstitution": train_m, "leave_one_repo_out": cv, "heldout_camera": held_m,
              "heldout_camera_min_side_200": held_big, "heldout_camera_thumbnails": held_small,
              "heldout_faces_A": faces_m,
              "synthetic_resubstitution": syn_m, "cnn_alone_real": cnn_real,
              "cnn_alone_heldout_camera": cnn_held, "feature_model": feature_model}
    if feature_model is not None:
        params["fit"]["feature_model_accuracy_leave_one_repo_out"] = \
            feature_model["leave_one_repo_out"]["accuracy"]
        params["fit"]["feature_model_accuracy_resubstitution"] = \
            feature_model["resubstitution"]["accuracy"]
        params["fit"]["feature_model_heldout_camera_accuracy"] = \
            feature_model["heldout_camera"]["accuracy"]
    print(json.dumps(report, indent=1))
    if args.report:
        args.report.write_text(json.dumps(report, indent=1))
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(_rounded(params), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _rounded(x):
    if isinstance(x, float):
        return float(f"{x:.6g}")
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x


if __name__ == "__main__":
    raise SystemExit(main())
