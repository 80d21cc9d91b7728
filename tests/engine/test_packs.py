"""Offline model packs: round trip, and refusal of tampered packs with nothing written."""
from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from pathlib import Path

import pytest

from engine.errors import ChecksumMismatch, ModelMissing, SaveFailed, UsageError
from engine.models.packs import PACK_INDEX, PackRefused, create_pack, import_pack, is_pack
from engine.models.store import ModelStore
from tests.model_helpers import install_test_model, manifest_with


def _tree(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture
def source(tmp_path):
    """A store with two installed models (one multi-file with a sub-folder)."""
    a = tmp_path / "build" / "realesr-general-x4v3.pth"
    a.parent.mkdir()
    a.write_bytes(b"compact-weights" * 1000)
    st = install_test_model(tmp_path / "src", "realesr-general-x4v3",
                            {"realesr-general-x4v3.pth": a})
    cfg = tmp_path / "build" / "config.json"
    cfg.write_text('{"model_type": "sam"}')
    w = tmp_path / "build" / "model.safetensors"
    w.write_bytes(b"sam-weights" * 3000)
    st = install_test_model(tmp_path / "src", "sam-vit-base",
                            {"config.json": cfg, "model.safetensors": w}, store=st)
    return st


def _target(source: ModelStore, root: Path) -> ModelStore:
    return ModelStore(root, source.manifest)


def test_pack_round_trip_into_empty_store(source, tmp_path):
    pack = create_pack(["realesr-general-x4v3", "sam-vit-base", "pp-ocr"],
                       tmp_path / "laptop.mendpack.zip", source)
    assert is_pack(pack)
    with zipfile.ZipFile(pack) as z:
        index = json.loads(z.read(PACK_INDEX))
        names = set(z.namelist())
    assert names == {PACK_INDEX, "models/realesr-general-x4v3/realesr-general-x4v3.pth",
                     "models/sam-vit-base/config.json", "models/sam-vit-base/model.safetensors"}
    assert {e["model"] for e in index["entries"]} == {"realesr-general-x4v3", "sam-vit-base"}
    # the files travel, their download URLs do not (a mirror's may hold access tokens)
    assert all("url" not in f for m in index["models"] for f in m["files"])
    from engine.models.manifest import default_manifest
    from engine.models.packs import _without_urls

    real = default_manifest().get("realesr-general-x4v3").to_json()
    assert any(f.get("url") for f in real["files"])
    assert not any("url" in f for f in _without_urls(real)["files"])
    dest = _target(source, tmp_path / "empty")
    assert not dest.root.exists()
    rep = import_pack(pack, dest)
    assert len(rep.imported) == 3 and not rep.skipped
    for mid in ("realesr-general-x4v3", "sam-vit-base"):
        assert dest.status(mid) == "verified"
        assert dest.verify(mid).status == "verified"
        assert _tree(dest.root / mid).keys() >= _tree(source.root / mid).keys() - {".mend-state.json"}
    assert not [p for p in dest.root.iterdir() if p.name.startswith(".import")]
    # importing again skips everything
    rep2 = dest.import_path(pack)
    assert not rep2.imported and len(rep2.skipped) == 3


def test_pack_of_a_profile_needs_its_models(source, tmp_path):
    with pytest.raises(ModelMissing) as e:
        create_pack("laptop", tmp_path / "p.zip", source)
    # each missing model named apart (they were joined into one name "'a, b, c'")
    assert set(e.value.model_ids) == {"nafnet-gopro-w64", "nafnet-sidd-w64", "big-lama",
                                      "codeformer", "yunet-2023mar"}
    assert str(e.value).startswith("models 'nafnet-gopro-w64', 'nafnet-sidd-w64', 'big-lama', "
                                   "'codeformer' and 'yunet-2023mar' are not installed")
    assert "mend models pull --profile laptop" in str(e.value)
    assert "realesr-general-x4v3" not in e.value.model_ids  # installed in `source`
    with pytest.raises(ModelMissing, match=r"^model 'big-lama' is not installed: .*pull big-lama"):
        create_pack(["big-lama"], tmp_path / "p.zip", source)
    assert not (tmp_path / "p.zip").exists() and not (tmp_path / "p.zip.part").exists()
    empty = create_pack("builtin", tmp_path / "b.zip", source)
    with zipfile.ZipFile(empty) as z:
        assert json.loads(z.read(PACK_INDEX))["entries"] == []


def _rewrite(pack: Path, out: Path, *, change=None, extra=None, index_fn=None, symlink=None):
    """Copy a pack, optionally changing a member's bytes, adding members, editing the index."""
    with zipfile.ZipFile(pack) as zin, zipfile.ZipFile(out, "w") as zout:
        index = json.loads(zin.read(PACK_INDEX))
        if index_fn:
            index_fn(index)
        for info in zin.infolist():
            if info.filename == PACK_INDEX:
                continue
            data = zin.read(info)
            if change and info.filename == change:
                data = bytes([data[0] ^ 1]) + data[1:]
            zout.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
        if symlink:
            zi = zipfile.ZipInfo(symlink)
            zi.external_attr = (stat.S_IFLNK | 0o777) << 16
            zout.writestr(zi, "/etc/passwd")
        zout.writestr(PACK_INDEX, json.dumps(index))
    return out


@pytest.fixture
def pack(source, tmp_path):
    return create_pack(["realesr-general-x4v3", "sam-vit-base"], tmp_path / "ok.zip", source)


def _refused(bad: Path, dest: ModelStore, exc=PackRefused):
    before = _tree(dest.root)
    existed = dest.root.exists()
    with pytest.raises(exc) as ei:
        import_pack(bad, dest)
    assert _tree(dest.root) == before, "a refused pack wrote into the store"
    assert dest.root.exists() == existed
    return ei.value


def test_one_changed_byte_is_refused(source, pack, tmp_path):
    bad = _rewrite(pack, tmp_path / "bad.zip", change="models/sam-vit-base/model.safetensors")
    e = _refused(bad, _target(source, tmp_path / "empty"), ChecksumMismatch)
    assert "model.safetensors" in str(e)


def test_changed_byte_refused_even_when_store_has_other_models(source, pack, tmp_path):
    dest = _target(source, tmp_path / "busy")
    (dest.root / "realesr-general-x4v3").mkdir(parents=True)
    (dest.root / "notes.txt").write_text("keep me")
    # the last member is damaged: the earlier, good ones must not land either
    bad = _rewrite(pack, tmp_path / "bad.zip", change="models/sam-vit-base/model.safetensors")
    _refused(bad, dest, ChecksumMismatch)


def test_changed_byte_in_unpinned_file_is_refused(source, pack, tmp_path):
    # config.json has no pinned hash: only the pack's own index protects it
    dest = _target(source, tmp_path / "busy")
    (dest.root).mkdir(parents=True)
    bad = _rewrite(pack, tmp_path / "bad.zip", change="models/sam-vit-base/config.json")
    _refused(bad, dest, ChecksumMismatch)


def test_dotdot_entry_is_refused(source, pack, tmp_path):
    bad = _rewrite(pack, tmp_path / "bad.zip", extra={"../evil.txt": b"x"})
    assert "traversal" in str(_refused(bad, _target(source, tmp_path / "e")))
    assert not (tmp_path / "evil.txt").exists()


def test_dotdot_in_index_name_is_refused(source, pack, tmp_path):
    data = b"x"
    sha = hashlib.sha256(data).hexdigest()

    def add(index):
        index["entries"].append({"path": "models/sam-vit-base/../../../evil.txt",
                                 "model": "sam-vit-base", "name": "../../../evil.txt",
                                 "size": 1, "sha256": sha, "pinned": False})

    bad = _rewrite(pack, tmp_path / "bad.zip", index_fn=add)
    _refused(bad, _target(source, tmp_path / "e"))


def test_absolute_path_is_refused(source, pack, tmp_path):
    bad = _rewrite(pack, tmp_path / "bad.zip", extra={"/tmp/evil.txt": b"x"})
    _refused(bad, _target(source, tmp_path / "e"))


def test_unknown_entry_is_refused(source, pack, tmp_path):
    bad = _rewrite(pack, tmp_path / "bad.zip",
                   extra={"models/sam-vit-base/extra.bin": b"surprise"})
    assert "unknown entry" in str(_refused(bad, _target(source, tmp_path / "e")))


def test_unknown_model_is_refused(source, pack, tmp_path):
    def rename(index):
        for e in index["entries"]:
            if e["model"] == "sam-vit-base":
                e["model"] = "not-a-model"
                e["path"] = e["path"].replace("sam-vit-base", "not-a-model")

    bad = _rewrite(pack, tmp_path / "bad.zip", index_fn=rename)
    _refused(bad, _target(source, tmp_path / "e"))


def test_a_pack_from_a_newer_mend_says_to_update(source, pack, tmp_path):
    """A pack whose index is of a later format, or holds a model this Mend's list does not
    know: refused whole, saying a newer Mend made it; an unknown older/odd version says only
    which versions are read."""
    def newer(index):
        index["version"] = 2

    dest = _target(source, tmp_path / "e")
    msg = str(_refused(_rewrite(pack, tmp_path / "v2.zip", index_fn=newer), dest))
    assert "pack version 2 is not supported (this Mend reads version 1; the pack was made by " \
           "a newer Mend: update Mend to import it)" in msg, msg

    def odd(index):
        index["version"] = "1"

    msg = str(_refused(_rewrite(pack, tmp_path / "odd.zip", index_fn=odd), dest))
    assert "version '1' is not supported (this Mend reads version 1)" in msg
    assert "newer Mend" not in msg

    def rename(index):
        for e in index["entries"]:
            if e["model"] == "sam-vit-base":
                e["model"] = "not-a-model"
                e["path"] = e["path"].replace("sam-vit-base", "not-a-model")

    msg = str(_refused(_rewrite(pack, tmp_path / "unknown.zip", index_fn=rename), dest))
    assert "unknown model 'not-a-model'" in msg and "newer Mend" in msg


def test_symlink_member_is_refused(source, pack, tmp_path):
    bad = _rewrite(pack, tmp_path / "bad.zip", symlink="models/sam-vit-base/link")
    assert "symbolic link" in str(_refused(bad, _target(source, tmp_path / "e")))


def test_pinned_hash_must_match_manifest(source, pack, tmp_path):
    # a pack built against other weights (consistent in itself) is refused for a pinned file
    other = tmp_path / "other.pth"
    other.write_bytes(b"other weights" * 500)
    m = manifest_with("realesr-general-x4v3", {"realesr-general-x4v3.pth": other},
                      base=source.manifest)
    st = ModelStore(tmp_path / "other-src", m)
    st.import_path(other, "realesr-general-x4v3")
    assert st.status("realesr-general-x4v3") == "verified"
    p2 = create_pack(["realesr-general-x4v3"], tmp_path / "other.zip", st)
    assert "pins" in str(_refused(p2, _target(source, tmp_path / "e")))


def test_not_a_zip_is_refused(source, tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 not really")
    _refused(junk, _target(source, tmp_path / "e"))


def test_pack_import_offline_opens_no_socket(source, pack, tmp_path, monkeypatch):
    import socket

    def boom(*a, **k):
        raise AssertionError("a socket was opened")

    monkeypatch.setenv("MEND_OFFLINE", "1")
    monkeypatch.setattr(socket, "socket", boom)
    monkeypatch.setattr(socket, "create_connection", boom)
    dest = _target(source, tmp_path / "offline")
    assert len(import_pack(pack, dest).imported) == 3
    assert dest.status("realesr-general-x4v3") == "verified"


def test_pack_carrying_a_slot_file_is_refused(source, tmp_path):
    """reflection-yolo holds the user's own weights: no pack may fill or switch it."""
    payload = b"an unverified pickle"
    bad = tmp_path / "slot.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("models/reflection-yolo/0.pt", payload)
        z.writestr(PACK_INDEX, json.dumps({"format": "mend-model-pack", "version": 1,
                                           "models": [], "entries": [{
            "path": "models/reflection-yolo/0.pt", "model": "reflection-yolo", "name": "0.pt",
            "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
            "pinned": False}]}))
    dest = _target(source, tmp_path / "dest")
    own = tmp_path / "best.onnx"
    own.write_bytes(b"the user's detector")
    assert dest.import_path(own, "reflection-yolo").imported
    e = _refused(bad, dest)
    assert "mend models import FILE --id reflection-yolo" in str(e)
    assert dest.slot_path("reflection-yolo") == dest.root / "reflection-yolo" / "best.onnx"


def test_a_slot_is_never_written_into_a_pack(source, tmp_path):
    own = tmp_path / "best.pt"
    own.write_bytes(b"the user's detector")
    source.import_path(own, "reflection-yolo")
    with pytest.raises(UsageError, match="cannot go into a pack"):
        create_pack(["realesr-general-x4v3", "reflection-yolo"], tmp_path / "p.zip", source)
    assert not (tmp_path / "p.zip").exists()


def test_damaged_archive_member_bad_crc_is_refused(source, pack, tmp_path):
    """A byte flipped inside a stored member (bad USB stick): zip's CRC check fails while it is
    read; that is a refusal with nothing written, not a crash."""
    raw = bytearray(pack.read_bytes())
    i = raw.index(b"models/sam-vit-base/model.safetensors") + 200
    raw[i] ^= 0xFF
    bad = tmp_path / "flipped.zip"
    bad.write_bytes(bytes(raw))
    assert "damaged" in str(_refused(bad, _target(source, tmp_path / "e")))


def test_pack_onto_a_folder_or_an_unwritable_place_is_a_clear_error(source, tmp_path):
    folder = tmp_path / "packs"
    folder.mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        create_pack(["realesr-general-x4v3"], folder, source)
    assert list(folder.iterdir()) == []
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SaveFailed, match="could not write the pack"):
        create_pack(["realesr-general-x4v3"], blocker / "p.zip", source)


class _Tty:
    """stderr as a terminal: what the CLI's progress line writes."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


def test_cli_shows_pack_and_import_progress_on_a_terminal(source, tmp_path, monkeypatch):
    import sys

    from engine.cli import _pack_progress

    assert _pack_progress("packing") is None  # pytest's captured stderr is no terminal
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    pack = create_pack(["realesr-general-x4v3", "sam-vit-base"], tmp_path / "p.zip", source,
                       progress=_pack_progress("packing", min_interval=0.0))
    lines = tty.text.split("\r")
    assert lines[-1].startswith("packing: 100.0% of") and tty.text.endswith("\n")
    assert "sam-vit-base/model.safetensors" in tty.text
    tty.text = ""
    import_pack(pack, _target(source, tmp_path / "dst"),
                progress=_pack_progress("importing", min_interval=0.0))
    assert tty.text.split("\r")[-1].startswith("importing: 100.0% of")
    # a shorter line blanks out what is left of the longer one before it
    tty.text = ""
    cb = _pack_progress("x", min_interval=0.0)
    cb(1, 4, "a-very-long-file-name.safetensors")
    cb(2, 4, "b")
    second = tty.text.split("\r")[2]
    assert len(second) == len(tty.text.split("\r")[1]) and second.rstrip().endswith("b")
    # throttled: 1000 chunks within one interval give the first and the last update only
    tty.text = ""
    cb = _pack_progress("y", min_interval=60.0)
    for i in range(1, 1001):
        cb(i, 1000, "f")
    assert tty.text.count("\r") == 2 and tty.text.endswith("100.0% of 0 MB  f\n")
