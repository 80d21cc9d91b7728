"""Importing model files from folders and single files; slots; status values."""
from __future__ import annotations

import pytest

from engine.devices import select_device
from engine.errors import ModelMissing
from engine.models import doctor_models, models_table
from engine.models.store import ModelStore
from tests.model_helpers import manifest_with


@pytest.fixture
def built(tmp_path):
    d = tmp_path / "download"
    d.mkdir()
    (d / "realesr-general-x4v3.pth").write_bytes(b"compact" * 700)
    sam = d / "some-folder" / "sam"
    sam.mkdir(parents=True)
    (sam / "config.json").write_text('{"model_type": "sam"}')
    (sam / "preprocessor_config.json").write_text("{}")
    (sam / "model.safetensors").write_bytes(b"sam" * 5000)
    m = manifest_with("realesr-general-x4v3",
                      {"realesr-general-x4v3.pth": d / "realesr-general-x4v3.pth"})
    m = manifest_with("sam-vit-base", {"model.safetensors": sam / "model.safetensors"}, base=m)
    # config files stay unpinned, as in the real manifest
    import dataclasses

    real = m.get("sam-vit-base")
    from engine.models.manifest import ModelFile

    cfgs = tuple(ModelFile(n, None, 100, None, size_exact=False)
                 for n in ("config.json", "preprocessor_config.json"))
    m = m.with_model(dataclasses.replace(real, files=cfgs + real.files))
    return d, m


def test_import_folder_matches_by_hash_and_takes_unpinned_neighbours(built, tmp_path):
    src, manifest = built
    store = ModelStore(tmp_path / "store", manifest)
    rep = store.import_path(src)
    assert ("realesr-general-x4v3", "realesr-general-x4v3.pth") in rep.imported
    assert {("sam-vit-base", "config.json"), ("sam-vit-base", "model.safetensors"),
            ("sam-vit-base", "preprocessor_config.json")} <= set(rep.imported)
    assert store.status("realesr-general-x4v3") == "verified"
    assert store.status("sam-vit-base") == "unpinned"  # configs have no published hash
    assert (src / "realesr-general-x4v3.pth").exists()  # import copies, never moves
    again = store.import_path(src)
    assert not again.imported and len(again.skipped) == 4


def test_import_single_file_and_unknown_file(built, tmp_path):
    src, manifest = built
    store = ModelStore(tmp_path / "store", manifest)
    rep = store.import_path(src / "realesr-general-x4v3.pth")
    assert rep.imported == [("realesr-general-x4v3", "realesr-general-x4v3.pth")]
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"nothing known")
    rep = store.import_path(junk)
    assert not rep.imported and rep.rejected
    assert "not a file of any model" in rep.rejected[0][1]


def test_reflection_yolo_slot(tmp_path, monkeypatch):
    store = ModelStore(tmp_path / "store")
    assert store.status("reflection-yolo") == "not configured"
    with pytest.raises(ModelMissing, match="MEND_REFLECTION_YOLO"):
        store.require("reflection-yolo")
    w = tmp_path / "best.onnx"
    w.write_bytes(b"yolo weights")
    monkeypatch.setenv("MEND_REFLECTION_YOLO", str(w))
    assert store.status("reflection-yolo") == "unpinned"
    assert store.slot_path("reflection-yolo") == w
    monkeypatch.delenv("MEND_REFLECTION_YOLO")
    rep = store.import_path(w, "reflection-yolo")
    assert rep.imported == [("reflection-yolo", "best.onnx")]
    assert store.slot_path("reflection-yolo") == store.root / "reflection-yolo" / "best.onnx"
    assert store.status("reflection-yolo") == "unpinned"


def test_bundled_and_missing_and_partial(tmp_path, built):
    _, manifest = built
    store = ModelStore(tmp_path / "store", manifest)
    assert store.status("pp-ocr") == "bundled"
    assert store.status("big-lama") == "missing"
    d = store.root / "sam-vit-base"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    assert store.status("sam-vit-base") == "partial"
    with pytest.raises(ModelMissing, match="missing"):
        store.require("sam-vit-base")


def test_models_table_and_doctor(tmp_path, built):
    src, manifest = built
    store = ModelStore(tmp_path / "store", manifest)
    store.import_path(src)
    rows = {r["id"]: r for r in models_table(store)}
    assert set(rows) == set(manifest.ids())
    for r in rows.values():
        assert set(r) == {"id", "task", "license", "commercial_use", "status", "files"}
        for f in r["files"]:
            assert set(f) == {"name", "size", "sha256", "pinned"}
    assert rows["realesr-general-x4v3"]["status"] == "verified"
    cfg = next(f for f in rows["sam-vit-base"]["files"] if f["name"] == "config.json")
    assert cfg["pinned"] is False and len(cfg["sha256"]) == 64  # recorded at import
    assert rows["codeformer"]["commercial_use"] is False
    doc = doctor_models(store)
    assert doc["models"]["realesr-general-x4v3"] == "verified"
    assert doc["profiles"]["builtin"]["ready"] is True
    assert doc["profiles"]["laptop"]["ready"] is False
    assert "big-lama" in doc["profiles"]["laptop"]["missing"]
    # optional models are listed apart and do not decide "ready" (as for --profile auto)
    assert "yunet-2023mar" not in doc["profiles"]["laptop"]["missing"]
    assert doc["profiles"]["laptop"]["optional_missing"] == ["yunet-2023mar"]
    assert doc["profiles"]["quality"]["optional_missing"] == ["yunet-2023mar"]  # SAM imported
    assert not set(doc["profiles"]["quality"]["missing"]) & {"yunet-2023mar", "sam-vit-base"}
    assert doc["offline"] is False
    import json

    json.dumps(doc)


def test_slot_file_is_the_last_one_imported_never_a_new_arrival(tmp_path):
    store = ModelStore(tmp_path / "store")
    best = tmp_path / "best.onnx"
    best.write_bytes(b"the user's own detector")
    store.import_path(best, "reflection-yolo")
    slot = store.root / "reflection-yolo"
    (slot / "0.onnx").write_bytes(b"a file that appeared later")  # sorts before best.onnx
    assert store.slot_path("reflection-yolo") == slot / "best.onnx"
    other = tmp_path / "v2.onnx"
    other.write_bytes(b"a newer detector")
    assert store.import_path(other, "reflection-yolo").imported == [("reflection-yolo", "v2.onnx")]
    assert store.slot_path("reflection-yolo") == slot / "v2.onnx"  # an explicit import switches


def test_slot_with_several_files_put_there_by_hand_is_not_guessed(tmp_path):
    store = ModelStore(tmp_path / "store")
    slot = store.root / "reflection-yolo"
    slot.mkdir(parents=True)
    (slot / "best.onnx").write_bytes(b"weights")
    assert store.slot_path("reflection-yolo") == slot / "best.onnx"  # the only file: used
    (slot / "0.onnx").write_bytes(b"another")
    assert store.slot_path("reflection-yolo") is None
    assert store.status("reflection-yolo") == "not configured"


@pytest.mark.parametrize(("name", "stored"), [("best:v2.onnx", "best_v2.onnx"),
                                              ("run\\best.onnx", "run_best.onnx"),
                                              (".hidden.onnx", "hidden.onnx")])
def test_slot_file_with_an_unsafe_name_is_stored_under_a_safe_one(tmp_path, name, stored):
    store = ModelStore(tmp_path / "store")
    w = tmp_path / name
    w.write_bytes(b"yolo weights")
    rep = store.import_path(w, "reflection-yolo")
    assert rep.imported == [("reflection-yolo", stored)]
    assert store.slot_path("reflection-yolo") == store.root / "reflection-yolo" / stored
    assert store.slot_path("reflection-yolo").read_bytes() == b"yolo weights"


def test_a_folder_is_never_imported_into_a_slot(tmp_path):
    store = ModelStore(tmp_path / "store")
    d = tmp_path / "reflection-yolo"
    d.mkdir()
    (d / "best.onnx").write_bytes(b"a")
    (d / "last.onnx").write_bytes(b"b")
    for rep in (store.import_path(d, "reflection-yolo"), store.import_path(d)):
        assert not rep.imported
        assert "mend models import FILE --id reflection-yolo" in rep.rejected[0][1]
    assert store.status("reflection-yolo") == "not configured"


def test_slot_file_is_checked_against_the_hash_recorded_at_import(tmp_path):
    from engine.models.runtime import ModelRuntime
    from engine.models.store import ModelFileCorrupt

    store = ModelStore(tmp_path / "store")
    best = tmp_path / "best.onnx"
    best.write_bytes(b"original user weights" * 100)
    store.import_path(best, "reflection-yolo")
    rt = ModelRuntime(select_device("cpu"), store)
    p = rt.file("reflection-yolo")
    assert store.status("reflection-yolo") == "unpinned" and store.verify("reflection-yolo").ok
    p.write_bytes(b"REPLACED by something else")  # never imported
    assert store.status("reflection-yolo") == "corrupt"
    assert not rt.is_available("reflection-yolo")
    with pytest.raises(ModelFileCorrupt, match="mend models import FILE --id reflection-yolo"):
        rt.file("reflection-yolo")
    rep = store.verify("reflection-yolo")
    assert rep.status == "corrupt" and rep.corrupt == ["best.onnx"] and not rep.ok
    # the same bytes, same size, mtime restored: the full check still finds it
    import os

    p.write_bytes(b"original user weights" * 100)
    assert store.status("reflection-yolo") == "unpinned"
    st = p.stat()
    p.write_bytes(b"Original user weights" * 100)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.verify("reflection-yolo").status == "corrupt"
    assert store.status("reflection-yolo") == "corrupt"
    # importing the weights again is the repair
    store.import_path(best, "reflection-yolo")
    assert store.status("reflection-yolo") == "unpinned"
    assert rt.file("reflection-yolo").read_bytes() == best.read_bytes()


def test_slot_file_put_there_by_hand_is_recorded_then_checked(tmp_path):
    store = ModelStore(tmp_path / "store")
    slot = store.root / "reflection-yolo"
    slot.mkdir(parents=True)
    (slot / "best.onnx").write_bytes(b"weights")
    assert store.status("reflection-yolo") == "unpinned"  # first sight: its hash is recorded
    (slot / "best.onnx").write_bytes(b"other weights")
    assert store.status("reflection-yolo") == "corrupt"


def test_unlisted_weight_files_make_a_model_unloadable_until_removed(tmp_path, built,
                                                                    monkeypatch):
    from engine.models.store import UnexpectedModelFiles

    src, manifest = built
    store = ModelStore(tmp_path / "store", manifest)
    store.import_path(src)
    d = store.model_dir("sam-vit-base")
    assert store.status("sam-vit-base") == "unpinned"
    # not weights, hidden, or Mend's own partial files: fine
    (d / "README.md").write_text("notes")
    (d / ".model.safetensors").write_bytes(b"x")
    (d / "model-00001-of-00002.safetensors.part").write_bytes(b"x")
    assert store.stray_files("sam-vit-base") == []
    assert store.require("sam-vit-base") == d
    # weights a loader would take (transformers prefers them) that no one ever hashed
    (d / "sub").mkdir()
    for name in ("pytorch_model.bin", "model.safetensors.index.json", "sub/x.onnx"):
        (d / name).write_bytes(b"planted")
    strays = ["model.safetensors.index.json", "pytorch_model.bin", "sub/x.onnx"]
    assert store.stray_files("sam-vit-base") == strays
    assert store.status("sam-vit-base") == "corrupt"
    with pytest.raises(UnexpectedModelFiles) as ei:
        store.require("sam-vit-base")
    msg = str(ei.value)
    assert all(n in msg for n in strays) and "mend models verify --repair sam-vit-base" in msg
    rep = store.verify("sam-vit-base")
    assert rep.status == "corrupt" and rep.stray == strays and not rep.corrupt
    assert rep.to_json()["stray"] == strays
    # the repair deletes them; no network needed (offline mode on)
    monkeypatch.setenv("MEND_OFFLINE", "1")
    rep = store.verify("sam-vit-base", repair=True)
    assert rep.removed == strays and rep.status == "unpinned"
    assert not (d / "pytorch_model.bin").exists() and (d / "README.md").exists()
    assert store.require("sam-vit-base") == d
    # pull (the app's repair) removes them too
    (d / "pytorch_model.bin").write_bytes(b"planted")
    assert store.pull("sam-vit-base") == "unpinned"
    assert not (d / "pytorch_model.bin").exists()


def test_offline_missing_model_points_to_import_not_pull(tmp_path, built, monkeypatch):
    _, manifest = built
    store = ModelStore(tmp_path / "store", manifest)
    monkeypatch.setenv("MEND_OFFLINE", "1")
    for partial in (False, True):
        if partial:
            d = store.root / "sam-vit-base"
            d.mkdir(parents=True)
            (d / "config.json").write_text("{}")
        with pytest.raises(ModelMissing) as ei:
            store.require("sam-vit-base")
        assert "mend models import PATH" in str(ei.value)
        assert "mend models pull" not in str(ei.value)


def test_imported_files_are_created_like_downloads_not_owner_only(built, tmp_path):
    """Imported weights follow the umask (0644 under the usual 022), as downloads do; they used
    to be mkstemp's owner-only 0600."""
    import os
    import stat

    src, manifest = built
    old = os.umask(0o022)
    try:
        store = ModelStore(tmp_path / "store", manifest)
        store.import_path(src / "realesr-general-x4v3.pth")
    finally:
        os.umask(old)
    f = store.file_path("realesr-general-x4v3", "realesr-general-x4v3.pth")
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert not [p for p in f.parent.iterdir() if p.name.startswith(".import-")]


@pytest.mark.parametrize("name", ["best.pt", "best.pth", "weights"])
def test_the_yolo_slot_refuses_anything_but_an_onnx_export(tmp_path, name):
    """A .pt is a pickle that runs code when loaded, so Mend only loads ONNX exports; the
    import used to accept one (the slot then read "unpinned", looking configured, and every
    B job quietly used the built-in detector). Refused at import, with the export command."""
    store = ModelStore(tmp_path / "store")
    w = tmp_path / name
    w.write_bytes(b"pickled weights")
    rep = store.import_path(w, "reflection-yolo")
    assert not rep.imported
    assert f"yolo export model={name} format=onnx" in rep.rejected[0][1]
    assert store.status("reflection-yolo") == "not configured"
    assert not (store.root / "reflection-yolo").exists() or \
        not any((store.root / "reflection-yolo").iterdir())
