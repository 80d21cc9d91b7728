"""scripts/train_analyzer_cnn.py's reproducibility checks: the fetched sources' sha256, the
expected set of sources, the data cache's record, the exported and merged metadata, and
identical weights for one seed. Tiny runs only (128 patches, 1 epoch, width 8)."""
from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def T(train_script):
    return train_script


def _photo(seed: int, h: int = 160, w: int = 200) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 1.5)
    return (np.clip((img - 0.5) * 4 + 0.5, 0, 1) * 255).astype(np.uint8)


def _png(arr: np.ndarray, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", **kw)
    return buf.getvalue()


def _jpeg(arr: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# ----------------------------------------------------------------------------- --fetch-sources

def test_source_files_carry_a_sha256_each(T):
    for files in (T.SOURCE_FILES, T.MORE_SOURCE_FILES):
        outs = [f[3] for f in files]
        assert len(set(outs)) == len(outs)
        for _req, _kind, _member, _out, sha in files:
            assert re.fullmatch(r"[0-9a-f]{64}", sha)
    assert len(T.SOURCE_FILES) == 25 and len(T.expected_sources()) == 28


def test_fetch_refuses_a_tampered_file(T, tmp_path, monkeypatch):
    """A changed archive member stops the fetch with the file's name and leaves no bad file:
    a member copied as it is (its bytes are checked) and one re-saved as PNG (its pixels)."""
    photo = _photo(1)
    png, jpg = _png(photo), _jpeg(photo, 90)
    from PIL import Image

    with Image.open(io.BytesIO(jpg)) as im:
        jpg_pixels = T._pixel_sha256(np.asarray(im.convert("RGB")))
    files = (("fakepkg==1.0", "wheel", "fakepkg/data/a.png", "fake_a.png",
              hashlib.sha256(png).hexdigest()),
             ("fakepkg==1.0", "wheel", "fakepkg/data/b.jpg", "fake_b.png", jpg_pixels))
    monkeypatch.setattr(T, "SOURCE_FILES", files)

    def wheel(members: dict[str, bytes]) -> Path:
        p = tmp_path / f"fakepkg-1.0-{len(list(tmp_path.glob('*.whl')))}-py3-none-any.whl"
        with zipfile.ZipFile(p, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        return p

    good = wheel({"fakepkg/data/a.png": png, "fakepkg/data/b.jpg": jpg})
    monkeypatch.setattr(T, "_download", lambda req, kind, folder: good)
    dest = tmp_path / "src"
    written = T.fetch_sources(dest)
    assert [p.name for p in written] == ["fake_a.png", "fake_b.png"]
    assert (dest / "fake_a.png").read_bytes() == png

    # the JPEG member re-encoded (another quality): its decoded pixels differ
    bad_jpg = wheel({"fakepkg/data/a.png": png, "fakepkg/data/b.jpg": _jpeg(photo, 80)})
    monkeypatch.setattr(T, "_download", lambda req, kind, folder: bad_jpg)
    dest2 = tmp_path / "src2"
    with pytest.raises(SystemExit, match=r"fake_b\.png: sha256 of its decoded pixels"):
        T.fetch_sources(dest2)
    assert not (dest2 / "fake_b.png").exists()

    # the copied PNG with the same pixels but other bytes: the bytes are what is checked
    bad_png = wheel({"fakepkg/data/a.png": _png(photo, compress_level=1),
                     "fakepkg/data/b.jpg": jpg})
    monkeypatch.setattr(T, "_download", lambda req, kind, folder: bad_png)
    dest3 = tmp_path / "src3"
    with pytest.raises(SystemExit, match=r"fake_a\.png: sha256 of its bytes"):
        T.fetch_sources(dest3)
    assert not (dest3 / "fake_a.png").exists()


def test_re_saved_png_is_checked_by_its_pixels(T, tmp_path):
    """The PNGs fetch_sources writes are compared by pixels: another zlib (or level) writes
    other bytes for the same picture."""
    photo = _photo(2)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(_png(photo, compress_level=9))
    b.write_bytes(_png(photo, compress_level=1))
    assert a.read_bytes() != b.read_bytes()
    assert T.written_sha256(a, copied=False) == T.written_sha256(b, copied=False)
    assert T.written_sha256(a, copied=True) != T.written_sha256(b, copied=True)


# ----------------------------------------------------------------------------- training runs

@pytest.fixture()
def tiny(T, tmp_path, monkeypatch):
    """Two 'fetched' photos and one 'phone' photo standing in for the 28 sources."""
    src, images = tmp_path / "src", tmp_path / "images"
    src.mkdir()
    (images / "camera_heic").mkdir(parents=True)
    (src / "tiny_a.png").write_bytes(_png(_photo(3)))
    (src / "tiny_b.png").write_bytes(_png(_photo(4, 200, 160)))
    (images / "camera_heic" / "phone_c.png").write_bytes(_png(_photo(5)))
    monkeypatch.setattr(T, "SOURCE_FILES", tuple(("x==1", "wheel", n, n, "0" * 64)
                                                 for n in ("tiny_a.png", "tiny_b.png")))
    monkeypatch.setattr(T, "CAMERA_HEIC", ("phone_c.png",))
    monkeypatch.setattr(T, "RECIPE", T.RECIPE)  # main sets it: restored afterwards

    def run(out: str, *extra: str, seed: int = 5, images_dir: Path = images) -> Path:
        path = tmp_path / out
        assert T.main(["--sources", str(src), "--images", str(images_dir), "--patches", "128",
                       "--epochs", "1", "--width", "8", "--seed", str(seed),
                       "--out", str(path), *extra]) == 0
        return path

    return src, images, run


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as d:
        return {k: d[k] for k in d.files if k != "meta"}


def _meta(path: Path) -> dict:
    with np.load(path) as d:
        return json.loads(str(d["meta"]))


def test_check_sources_names_the_missing_phone_photos(T):
    names = [f[3] for f in T.SOURCE_FILES]
    with pytest.raises(SystemExit, match="missing: exif-samples__heic__IMG_5195.HEIC.*--images"):
        T.check_sources(names)
    with pytest.raises(SystemExit, match="not expected: extra.png"):
        T.check_sources([*names, *T.CAMERA_HEIC, "extra.png"])
    T.check_sources([*names, *T.CAMERA_HEIC])
    T.check_sources(names, allow_other=True)


def test_missing_sources_fail_without_the_opt_out(T, tiny, tmp_path):
    src, _images, run = tiny
    no_phone = tmp_path / "no_images"
    no_phone.mkdir()
    with pytest.raises(SystemExit, match=r"missing: phone_c\.png"):
        run("x.npz", images_dir=no_phone)
    assert not (tmp_path / "x.npz").exists()
    (src / "stray.png").write_bytes(_png(_photo(6)))
    with pytest.raises(SystemExit, match=r"not expected: stray\.png"):
        run("x.npz")
    (src / "stray.png").unlink()
    # the opt-out trains on what loads, and the metadata says so
    out = run("fewer.npz", "--allow-other-sources", images_dir=no_phone)
    meta = _meta(out)
    assert meta["sources_checked"] is False
    assert [s["name"] for s in meta["sources"]] == ["tiny_a.png", "tiny_b.png"]


def test_same_seed_same_weights_and_full_metadata(T, tiny):
    _src, _images, run = tiny
    a, b = run("a.npz"), run("b.npz")
    wa, wb = _arrays(a), _arrays(b)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    meta = _meta(a)
    assert meta == _meta(b)
    for key, value in (("seed", 5), ("patches", 128), ("epochs", 1), ("width", 8), ("tail", 0),
                       ("recipe", 1), ("lr", 6e-3), ("patch", 64), ("sources_checked", True)):
        assert meta[key] == value, key
    assert [s["name"] for s in meta["sources"]] == ["tiny_a.png", "tiny_b.png", "phone_c.png"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", s["sha256"]) for s in meta["sources"])
    assert len({s["sha256"] for s in meta["sources"]}) == 3
    assert {"numpy", "torch"} <= set(meta["versions"])
    assert meta["versions"]["numpy"] == np.__version__
    wc = _arrays(run("c.npz", seed=6))
    assert not np.array_equal(wa["conv0_w"], wc["conv0_w"])


def test_data_cache_made_from_other_data_is_refused(T, tiny, tmp_path):
    src, _images, run = tiny
    cache = tmp_path / "patches.cache"  # no .npz suffix: written under this very name
    a = run("a.npz", "--data-cache", str(cache))
    assert cache.is_file()
    rec = json.loads(str(np.load(cache)["meta"]))
    assert rec["seed"] == 5 and rec["patches"] == 128 and rec["recipe"] == 1
    assert rec["sources_sha256"] == _meta(a)["sources_sha256"]
    # reused with the same settings: the same network
    b = run("b.npz", "--data-cache", str(cache))
    wa, wb = _arrays(a), _arrays(b)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    before = cache.read_bytes()
    with pytest.raises(SystemExit, match=r"seed 5 \(wanted 6\)"):
        run("x.npz", "--data-cache", str(cache), seed=6)
    with pytest.raises(SystemExit, match=r"patches 128 \(wanted 256\)"):
        run("x.npz", "--data-cache", str(cache), "--patches", "256")
    with pytest.raises(SystemExit, match=r"recipe 1 \(wanted 2\)"):
        run("x.npz", "--data-cache", str(cache), "--recipe", "2")
    (src / "tiny_b.png").write_bytes(_png(_photo(7, 200, 160)))  # a source changed
    with pytest.raises(SystemExit, match="sources_sha256"):
        run("x.npz", "--data-cache", str(cache))
    assert cache.read_bytes() == before and not (tmp_path / "x.npz").exists()
    # an older script's cache (patches only) records nothing to compare: refused
    legacy = tmp_path / "legacy.npz"
    with np.load(cache) as d:
        np.savez(legacy, X=d["X"], y=d["y"])
    with pytest.raises(SystemExit, match="does not record"):
        run("x.npz", "--data-cache", str(legacy))


# ----------------------------------------------------------------------------- --merge

def test_merge_keeps_every_members_metadata(T, tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    paths, metas = [], []
    for seed in (11, 12, 13):
        torch.manual_seed(seed)
        meta = {"seed": seed, "patches": 128, "epochs": 1, "width": 8, "tail": 0, "recipe": 1,
                "patch": 64, "classes": list("ABCD"), "lr": 6e-3,
                "sources": [{"name": "a.png", "sha256": f"{seed:064x}"}],
                "sources_sha256": f"{seed + 100:064x}", "versions": {"torch": "x"}}
        p = tmp_path / f"net{seed}.npz"
        T.export(T.build_model(8).eval(), p, meta)
        paths.append(p)
        metas.append(meta)
    out = tmp_path / "ensemble.npz"
    assert T.main(["--merge", *map(str, paths), "--out", str(out)]) == 0
    merged = _meta(out)
    assert merged["members"] == [{**m, "source": p.name} for m, p in zip(metas, paths)]
    for key, value in metas[0].items():  # the top level stays member 0's (the loader reads it)
        assert merged[key] == value
    from engine.understand import measure as M

    assert len(M.PatchCNN(out).members) == 3
    T.export(T.build_model(8).eval(), tmp_path / "other.npz", {**metas[0], "patch": 32})
    with pytest.raises(SystemExit, match="differ in 'patch'"):
        T.merge([paths[0], tmp_path / "other.npz"], tmp_path / "bad.npz")


def test_shipped_ensemble_still_loads(T):
    from engine.understand import measure as M

    path = ROOT / "resources" / "analyzer_cnn.npz"
    if not path.is_file():
        pytest.skip("no shipped network")
    net = M.PatchCNN(path)
    assert [m["seed"] for m in net.meta["members"]] == [20261122, 20261123, 20261124]
    assert net.meta["width"] == 24 and net.meta["patches"] == 150000 and net.patch == 64
