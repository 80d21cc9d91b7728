"""Security audit (session 21): each test makes the crafted input an attacker would (a model folder
with code in it, a shard index pointing outside the model, a TorchScript file swapped after its
verification, a zip bomb in an offline pack, JSON nested past the stack, a photo named with
terminal escape sequences) and checks that Mend refuses it or shows it harmlessly. Each failed
before its fix."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from engine.errors import ChecksumMismatch, EngineError
from engine.models.packs import PACK_INDEX, PackRefused, create_pack, import_pack
from engine.models.store import ModelFileCorrupt, ModelStore, UnexpectedModelFiles
from tests.model_helpers import install_test_model, make_runtime, manifest_with
from tests.tiny_models import built

ROOT = Path(__file__).resolve().parents[2]
SAM = "sam-vit-base"


def _sam_files(tmp_path: Path, tiny_root: Path, **preprocessor: object) -> dict[str, Path]:
    """The tiny SAM's files copied to ``tmp_path/sam``, its preprocessor_config.json updated
    with ``preprocessor``."""
    folder = tmp_path / "sam"
    folder.mkdir()
    files = {}
    for name, src in built(SAM, tiny_root).items():
        files[name] = folder / name
        shutil.copyfile(src, files[name])
    pc = files["preprocessor_config.json"]
    pc.write_text(json.dumps({**json.loads(pc.read_text()), **preprocessor}))
    return files


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


_REMOTE = {"auto_map": {"AutoImageProcessor": "evil.EvilProc", "AutoProcessor": "evil.EvilProc"},
           "image_processor_type": "EvilProc"}


def test_transformers_never_asks_whether_to_run_a_model_folders_code(tmp_path, tiny_root,
                                                                    monkeypatch):
    """A preprocessor_config.json naming code (``auto_map``): SamProcessor (and AutoProcessor
    even with trust_remote_code=False) asked "Do you wish to run the custom code? [y/N]" on
    the terminal, and a "y" ran the folder's .py. Now it is refused without a question."""
    from engine.restore.reflection import load_sam

    store = install_test_model(tmp_path / "store", SAM, _sam_files(tmp_path, tiny_root, **_REMOTE))
    asked: list[str] = []
    monkeypatch.setattr("builtins.input", lambda prompt="": asked.append(prompt) or "y")
    with pytest.raises(EngineError, match="custom code"):
        load_sam(make_runtime(store))
    assert asked == []


def test_python_code_in_a_model_folder_is_refused_and_repair_deletes_it(tmp_path, tiny_root,
                                                                       monkeypatch):
    from engine.restore.reflection import load_sam

    store = install_test_model(tmp_path / "store", SAM, _sam_files(tmp_path, tiny_root, **_REMOTE))
    ran = tmp_path / "ran"
    (store.model_dir(SAM) / "evil.py").write_text(
        f"open({str(ran)!r}, 'w').write('ran')\n"
        "from transformers import SamImageProcessor\n"
        "class EvilProc(SamImageProcessor):\n    pass\n")
    monkeypatch.setattr("builtins.input", lambda prompt="": "y")  # whoever is asked says yes
    with pytest.raises(UnexpectedModelFiles, match="evil.py"):
        load_sam(make_runtime(store))
    assert not ran.exists()
    assert store.status(SAM) == "corrupt"
    rep = store.verify(SAM, repair=True)
    assert rep.removed == ["evil.py"] and not (store.model_dir(SAM) / "evil.py").exists()


def _sharded_sam(tmp_path: Path, tiny_root: Path) -> dict[str, Path]:
    from transformers import SamModel

    src = built(SAM, tiny_root)
    folder = tmp_path / "sharded"
    SamModel.from_pretrained(str(src["model.safetensors"].parent)).save_pretrained(
        folder, max_shard_size="20KB")
    shutil.copyfile(src["preprocessor_config.json"], folder / "preprocessor_config.json")
    return {p.name: p for p in sorted(folder.iterdir())}


def _store_for(root: Path, files: dict[str, Path]) -> ModelStore:
    """A store whose manifest lists ``files`` for SAM, the index unpinned (as in the real
    manifest: its hash is recorded when it is first seen)."""
    m = manifest_with(SAM, files)
    spec = m.get(SAM)
    unpinned = tuple(dataclasses.replace(f, sha256=None, sha256_source=None, size_exact=False)
                     if f.name.endswith(".index.json") else f for f in spec.files)
    return ModelStore(root, m.with_model(dataclasses.replace(spec, files=unpinned)))


def test_a_shard_index_naming_weights_outside_the_model_is_corrupt(tmp_path, tiny_root):
    """transformers loads every file a ``*.index.json`` names, from anywhere; an unpinned index
    imported with the model (from a folder or a pack) pointed at weights never checked."""
    from safetensors.torch import load_file, save_file

    from engine.restore.reflection import load_sam

    files = _sharded_sam(tmp_path, tiny_root)
    good = _store_for(tmp_path / "good", files)
    good.import_path(files["config.json"].parent, SAM)
    assert good.status(SAM) in ("verified", "unpinned")
    load_sam(make_runtime(good))  # a release's own index: loads

    index_name = "model.safetensors.index.json"
    index = json.loads(files[index_name].read_text())
    first = min(index["weight_map"].values())
    evil = tmp_path / "evil.safetensors"
    sd = load_file(str(files[first]))
    save_file({k: torch.full_like(v, 7.0) for k, v in sd.items()}, str(evil),
              metadata={"format": "pt"})
    attack = tmp_path / "attack"
    shutil.copytree(files["config.json"].parent, attack)
    index["weight_map"] = {k: (str(evil) if v == first else v)
                           for k, v in index["weight_map"].items()}
    (attack / index_name).write_text(json.dumps(index))

    store = _store_for(tmp_path / "store", files)
    store.import_path(attack, SAM)
    with pytest.raises(ModelFileCorrupt, match="names weight files that are not in Mend"):
        load_sam(make_runtime(store))
    assert store.status(SAM) == "corrupt"
    assert store.unlisted_shards(SAM, index_name) == [str(evil)]


class _Holder(torch.nn.Module):
    """A tiny SRVGGNetCompact's layers, to be scripted (one class: each new class gets another
    TorchScript name, and its archive another size)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.body = net.body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _scripted_compact(path: Path, seed: int) -> Path:
    """A TorchScript archive (as big-lama.pt is one) of a tiny SRVGGNetCompact's layers."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(_Holder(Compact(num_feat=8, num_conv=2, upscale=4))).save(str(path))
    return path


def test_a_torchscript_file_swapped_after_verification_is_not_loaded(tmp_path):
    """torch.jit.load runs the archive's own TorchScript (a scripted ``__setstate__``). The
    store's load-time check is size + mtime: a swapped file of the same size, its mtime set
    back, passes it - and was loaded. Now its bytes are hashed as they are loaded."""
    good = _scripted_compact(tmp_path / "a" / "big-lama.pt", 0)
    other = _scripted_compact(tmp_path / "b" / "big-lama.pt", 1)
    assert good.stat().st_size == other.stat().st_size
    store = install_test_model(tmp_path / "store", "big-lama", {"big-lama.pt": good})
    want = torch.jit.load(str(good)).state_dict()["body.0.weight"]
    desc = make_runtime(store).load_image_model("big-lama")  # the verified file loads
    assert torch.equal(desc.model.state_dict()["body.0.weight"], want)

    dest = store.file_path("big-lama", "big-lama.pt")
    st = dest.stat()
    shutil.copyfile(other, dest)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.status("big-lama") == "verified"  # the cheap check cannot tell
    with pytest.raises(ChecksumMismatch, match="changed on disk since it was verified"):
        make_runtime(store).load_image_model("big-lama")


# ------------------------------------------------------------------------------- packs

def _pack_source(tmp_path: Path) -> tuple[ModelStore, Path]:
    """A store holding SAM (config.json unpinned, as in the real manifest) and its pack."""
    build = tmp_path / "build"
    build.mkdir()
    (build / "config.json").write_text('{"model_type": "sam"}')
    (build / "model.safetensors").write_bytes(b"sam-weights" * 3000)
    st = install_test_model(tmp_path / "src", SAM, {n: build / n for n in
                                                     ("config.json", "model.safetensors")})
    spec = st.manifest.get(SAM)
    files = tuple(dataclasses.replace(f, sha256=None, sha256_source=None, size_exact=False)
                  if f.name == "config.json" else f for f in spec.files)
    st = ModelStore(st.root, st.manifest.with_model(dataclasses.replace(spec, files=files)))
    return st, create_pack([SAM], tmp_path / "ok.zip", st)


def _repacked(pack: Path, out: Path, member: str | None = None, data: bytes = b"",
              index_text: str | None = None) -> Path:
    """``pack`` written again, deflated, with ``member``'s bytes replaced by ``data`` (its index
    entry's size and sha256 to match) or its index replaced by ``index_text``."""
    with zipfile.ZipFile(pack) as zin, zipfile.ZipFile(out, "w") as zout:
        index = json.loads(zin.read(PACK_INDEX))
        for e in index["entries"]:
            if e["path"] == member:
                e["size"], e["sha256"] = len(data), hashlib.sha256(data).hexdigest()
        for info in zin.infolist():
            if info.filename != PACK_INDEX:
                zout.writestr(info.filename, data if info.filename == member else zin.read(info),
                              compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        zout.writestr(PACK_INDEX, index_text if index_text is not None else json.dumps(index))
    return out


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_a_pack_member_that_is_a_decompression_bomb_is_refused(tmp_path):
    """An unpinned file's member deflated ~1000:1 (20 KB -> 20 MB here; 300 KB -> 300 MB was
    installed as SAM's config.json) is refused before anything is unpacked."""
    st, pack = _pack_source(tmp_path)
    bomb = _repacked(pack, tmp_path / "bomb.zip", f"models/{SAM}/config.json", b" " * (20 << 20))
    assert bomb.stat().st_size < 100_000
    dest = ModelStore(tmp_path / "dest", st.manifest)
    with pytest.raises(PackRefused, match="decompression bomb"):
        import_pack(bomb, dest)
    assert _files(dest.root) == []
    # the same pack deflated, without the bomb, still imports (configs deflate a few times)
    ok = _repacked(pack, tmp_path / "deflated.zip")
    assert import_pack(ok, ModelStore(tmp_path / "dest2", st.manifest)).imported


def test_a_pack_index_nested_past_the_stack_is_refused(tmp_path):
    st, pack = _pack_source(tmp_path)
    deep = ('{"format": "mend-model-pack", "version": 1, "entries": [], "x": '
            + "[" * 200_000 + "]" * 200_000 + "}")
    bad = _repacked(pack, tmp_path / "deep.zip", index_text=deep)
    dest = ModelStore(tmp_path / "dest", st.manifest)
    with pytest.raises(PackRefused, match="nested too deeply"):
        import_pack(bad, dest)
    assert _files(dest.root) == []


# ------------------------------------------------------------------------------- photos

def test_a_record_nested_past_the_stack_reads_as_none():
    """Any photo's XMP can hold a ``mend:record``: JSON nested deeper than Python's stack
    raised RecursionError out of record_from_xmp."""
    from engine import imageio as mio

    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
           f'22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:mend="{mio.MEND_XMP_NS}">'
           "<mend:record>" + "[" * 200_000 + "]" * 200_000 + "</mend:record>"
           "</rdf:Description></rdf:RDF></x:xmpmeta>").encode()
    assert mio.record_from_xmp(xmp) is None


def test_photo_names_never_send_escape_sequences_to_the_terminal(tmp_path):
    """A photo named with ESC sequences (set the window title, clear the screen, hide text):
    the human lines show them escaped, the JSON lines carry the exact name."""
    import numpy as np
    from PIL import Image

    from tests import warm_cli

    name = "\x1b]0;PWNED\x07\x1b[2Jevil\x9b31m\u202egpj.jpg"
    photo = tmp_path / name
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(
        photo, "JPEG")
    bad = tmp_path / "bad\x1b[8mhidden.jpg"
    bad.write_bytes(b"not a jpeg")
    env = {**os.environ, "MEND_OFFLINE": "1"}
    r = warm_cli.run(["classify", str(photo), str(bad), "--backend", "builtin"], env=env,
                     timeout=240, cwd=ROOT)
    assert r.returncode == 1, r.stderr
    for text in (r.stdout, r.stderr):
        assert not any(c in text for c in "\x1b\x07\x9b\u202e"), repr(text)
    assert "\\x1b]0;PWNED\\x07\\x1b[2Jevil\\x9b31m\\u202egpj.jpg: " in r.stdout
    assert "bad\\x1b[8mhidden.jpg: error: " in r.stdout
    r = warm_cli.run(["classify", str(photo), str(bad), "--backend", "builtin", "--json"],
                     env=env, timeout=240, cwd=ROOT)
    assert not any(c in r.stdout for c in "\x1b\x07\x9b\u202e")
    assert {json.loads(x)["path"] for x in r.stdout.splitlines()} == {str(photo), str(bad)}


def test_a_brotli_bomb_in_a_jpeg_xl_xmp_box_is_stopped_early(tmp_path, monkeypatch):
    """A ``brob`` XMP box of 2 KB that unpacks to 2 GB: read in 256-byte steps, one step made
    304 MB at once before the 16 MB limit was looked at; now no step makes more than 32 MB."""
    brotli = pytest.importorskip("brotli")
    from engine import imageio as mio

    packed = brotli.compress(b"<x:xmpmeta" + b" " * (2 << 30), quality=5, lgwin=24)
    box = b"xml " + packed
    p = tmp_path / "bomb.jxl"
    p.write_bytes(mio._JXL_BOX + struct.pack(">I4s", 8 + len(box), b"brob") + box)
    largest = [0]

    class Recording(brotli.Decompressor):  # the real decoder; what each step returns, noted
        def process(self, data, *a, **kw):
            out = super().process(data, *a, **kw)
            largest[0] = max(largest[0], len(out))
            return out

    monkeypatch.setattr(brotli, "Decompressor", Recording)
    notes: list[str] = []
    assert mio._jxl_xmp(p, notes) is None
    assert "larger than 16 MB" in notes[0]
    assert largest[0] <= 32 << 20, largest[0] >> 20
