"""The shipped manifest is consistent with itself, with the interfaces and with the research."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from engine.models.manifest import Manifest, ManifestError, parse_model
from engine.models.store import ModelStore

INTERFACE_IDS = {
    "realesrgan-x4plus", "realesrgan-x2plus", "realesr-general-x4v3", "realesrgan-x4plus-anime-6b",
    "nafnet-gopro-w64", "nafnet-sidd-w64", "nafnet-reds-w64", "big-lama", "codeformer",
    "gfpgan-v1.4", "yunet-2023mar", "invsr-noise-predictor-v5", "sd-turbo", "qwen2.5-vl-3b",
    "qwen2.5-vl-7b", "sam-vit-base", "clip-vit-large-patch14", "siglip-base-patch16-224",
    "reflection-yolo", "pp-ocr",
}
SOURCES_MD = Path(__file__).resolve().parents[3] / "shared" / "docs" / "MODEL_SOURCES.md"


@pytest.fixture(scope="module")
def manifest():
    return Manifest.load()


def test_every_interface_id_present(manifest):
    assert INTERFACE_IDS <= set(manifest.ids())


def test_files_sizes_hashes_urls(manifest):
    for m in manifest:
        assert m.license and m.task and m.description and m.memory_mb > 0, m.id
        assert isinstance(m.commercial_use, bool)
        if m.bundled or m.slot:
            assert not m.files, m.id
            continue
        assert m.files, m.id
        for f in m.files:
            assert f.size > 0, (m.id, f.name)
            assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256), (m.id, f.name)
            if f.sha256:
                assert f.sha256_source, (m.id, f.name)
            assert f.url and f.url.startswith("https://"), (m.id, f.name)
            assert urlsplit(f.url).hostname in manifest.hosts
            if f.repo:
                assert f"/resolve/{f.revision}/" in f.url and re.fullmatch(r"[0-9a-f]{40}",
                                                                            f.revision)


def test_big_weights_are_pinned(manifest):
    for m in manifest:
        for f in m.files:
            if f.size > 50_000_000 and m.id not in ("sd-turbo",):
                assert f.pinned, (m.id, f.name)
    sd = manifest.get("sd-turbo")
    assert sd.get_file("unet/diffusion_pytorch_model.safetensors").pinned
    assert sd.get_file("vae/diffusion_pytorch_model.fp16.safetensors").pinned


@pytest.mark.skipif(not SOURCES_MD.is_file(), reason="shared/docs/MODEL_SOURCES.md is absent")
def test_pinned_hashes_and_sizes_verbatim_from_sources(manifest):
    text = SOURCES_MD.read_text(encoding="utf-8")
    sizes = {int(s.replace(",", "")) for s in re.findall(r"\d{1,3}(?:,\d{3})+", text)}
    for m in manifest:
        for f in m.files:
            if f.pinned:
                assert f.sha256 in text, (m.id, f.name)
                if f.size_exact:
                    assert f.size in sizes, (m.id, f.name, f.size)


def test_licences_and_non_commercial_flags(manifest):
    for mid in ("codeformer", "invsr-noise-predictor-v5", "qwen2.5-vl-3b", "sd-turbo"):
        assert manifest.get(mid).commercial_use is False, mid
    for mid in ("realesrgan-x4plus", "nafnet-gopro-w64", "big-lama", "qwen2.5-vl-7b",
                "yunet-2023mar", "sam-vit-base", "pp-ocr"):
        assert manifest.get(mid).commercial_use is True, mid
    assert "S-Lab" in manifest.get("codeformer").license
    assert "research" in manifest.get("qwen2.5-vl-3b").license.lower()


def test_profiles(manifest):
    def ids(p):
        return {m.id for m in manifest.for_profile(p)} - {"pp-ocr"}

    assert ids("builtin") == set()
    assert ids("quality") == {"invsr-noise-predictor-v5", "sd-turbo", "realesrgan-x4plus",
                              "nafnet-gopro-w64", "big-lama", "nafnet-sidd-w64", "sam-vit-base",
                              "codeformer", "yunet-2023mar"}
    assert ids("laptop") == {"realesr-general-x4v3", "nafnet-gopro-w64",
                             "big-lama", "nafnet-sidd-w64", "codeformer", "yunet-2023mar"}


def test_profiles_agree_with_the_restore_chains(manifest):
    from engine.restore.profiles import profile_models

    for p in ("builtin", "laptop", "quality"):
        ours = {m.id for m in manifest.for_profile(p) if not m.bundled}
        assert ours == set(profile_models(p)) - {"pp-ocr"}, p


def test_loaders_and_layouts(manifest):
    assert manifest.get("big-lama").files[0].name.endswith(".pt")  # spandrel jit-loads .pt only
    assert manifest.get("pp-ocr").loader == "bundled"
    ry = manifest.get("reflection-yolo")
    assert ry.slot and not ry.files and ry.env == "MEND_REFLECTION_YOLO"
    assert "MEND_REFLECTION_YOLO" in ry.notes
    assert "unpublished" in manifest.get("nafnet-sidd-w64").description
    for m in manifest:
        names = {f.name for f in m.files}
        if m.loader == "transformers":
            assert "config.json" in names, m.id
        if m.loader == "diffusers":
            assert "model_index.json" in names
            for sub in {n.split("/")[0] for n in names if "/" in n} - {"tokenizer"}:
                assert f"{sub}/config.json" in names or f"{sub}/scheduler_config.json" in names
    for shards, mid in ((2, "qwen2.5-vl-3b"), (5, "qwen2.5-vl-7b")):
        names = {f.name for f in manifest.get(mid).files}
        assert sum(n.startswith("model-0") for n in names) == shards
        assert {"tokenizer.json", "preprocessor_config.json",
                "model.safetensors.index.json"} <= names


def test_statuses_of_special_models(tmp_path):
    st = ModelStore(tmp_path)
    assert st.status("pp-ocr") == "bundled"
    assert st.status("reflection-yolo") == "not configured"
    assert st.status("big-lama") == "missing"


@pytest.mark.parametrize("bad", [
    {"name": "../x.pth"}, {"name": "/abs.pth"}, {"sha256": "abc"}, {"size": 0},
    {"url": "ftp://x/y"}, {"revision": "main", "repo": "a/b"},
])
def test_parser_rejects_bad_entries(bad):
    f = {"name": "x.pth", "url": "https://github.com/x.pth", "size": 10, "sha256": None}
    f.update(bad)
    raw = {"id": "t", "task": "t", "loader": "spandrel", "license": "MIT",
           "commercial_use": True, "memory_mb": 1, "files": [f]}
    with pytest.raises(ManifestError):
        parse_model(raw)


def test_shipped_model_ids_are_safe_folder_names(manifest):
    for mid in manifest.ids():
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", mid) and mid not in (".", ".."), mid


@pytest.mark.parametrize("bad", [
    "../victim", "..", ".", "/abs/path", "a/b", "a\\b", "C:x", "C:", ".hidden", "-x", "",
    "x\n", "x y", "é", 7, None,
    # Windows device names (any case, any extension) and a trailing dot Windows would drop
    "CON", "nul", "Aux.json", "com1", "LPT9.x", "conin$", "model.",
])
def test_parser_rejects_model_ids_that_are_not_plain_folder_names(bad):
    """A model id names the model's folder in the store (which pull cleans and remove deletes):
    a mirror manifest's ``../victim`` must not reach outside it."""
    raw = {"id": bad, "task": "t", "loader": "spandrel", "license": "MIT",
           "commercial_use": True, "memory_mb": 1, "files": []}
    with pytest.raises(ManifestError, match="unsafe model id"):
        parse_model(raw)
    del raw["id"]
    with pytest.raises(ManifestError, match="lacks 'id'"):
        parse_model(raw)


@pytest.mark.parametrize("bad", ["nul", "sub/CON.json", "com3.bin", "x.", "sub./a", "a "])
def test_file_names_windows_cannot_hold_are_refused(bad):
    from engine.models.manifest import safe_relpath

    with pytest.raises(ManifestError, match="Windows reserves"):
        safe_relpath(bad)


def test_names_that_only_look_like_devices_pass(manifest):
    from engine.models.manifest import check_model_id, safe_relpath

    for ok in ("console", "nul-model", "com10", "lpt0.pth", "aux_x", "con-fig.json"):
        assert check_model_id(ok) == ok and str(safe_relpath(ok)) == ok
    for spec in manifest.models.values():  # every shipped file name still passes
        for f in spec.files:
            safe_relpath(f.name)


def test_a_mirror_manifest_with_a_traversing_id_is_refused(tmp_path, monkeypatch):
    """The audit's case: MEND_MANIFEST names a mirror whose model id is ``../victim``; neither
    ``pull`` (even offline) nor ``remove`` may touch the folder beside the store."""
    import dataclasses
    import json

    from engine.models.manifest import default_manifest

    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "keep.pth").write_bytes(b"a")
    (victim / "sub" / "y.safetensors").write_bytes(b"b")
    mirror = tmp_path / "mirror.json"
    mirror.write_text(json.dumps({"hosts": ["mirror.example.org"], "models": [{
        "id": "../victim", "task": "sr", "loader": "spandrel", "license": "x",
        "commercial_use": True, "memory_mb": 1,
        "files": [{"name": "w.pth", "url": "https://mirror.example.org/w.pth", "size": 10,
                   "sha256": "0" * 64}]}]}))
    monkeypatch.setenv("MEND_MANIFEST", str(mirror))
    with pytest.raises(ManifestError, match=r"mirror\.json.*unsafe model id '\.\./victim'"):
        default_manifest()
    # defence in depth: a spec that got past the parser (built in code) is refused by the
    # manifest, and one slipped into it anyway is refused by the store before any delete
    base = Manifest.load()
    bad = dataclasses.replace(base.get("realesr-general-x4v3"), id="../victim")
    with pytest.raises(ManifestError, match="unsafe model id"):
        Manifest([bad])
    base.models["../victim"] = bad
    store = ModelStore(tmp_path / "store", base)
    monkeypatch.setenv("MEND_OFFLINE", "1")
    for call in (store.pull, store.remove, store.status, store.stray_files, store.model_dir,
                 lambda m: store.verify(m, repair=True)):
        with pytest.raises(ManifestError):
            call("../victim")
    assert sorted(p.relative_to(victim).as_posix() for p in victim.rglob("*")) == [
        "keep.pth", "sub", "sub/y.safetensors"]
