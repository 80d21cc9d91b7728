"""The app with the names photographers and operating systems produce: sidecars of photos named
near the 255-byte limit, folders whose names are not UTF-8, thumbnails of such names, the
folder listing, export names and the crash journal."""
from __future__ import annotations

import json
import os
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtGui import QPixmap

from engine.api import Degradation, Diagnosis, JobRequest, OutputOptions
from ui.browser import model as bm
from ui.browser.model import ThumbnailModel, scan_folder, scan_tree
from ui.browser.thumbs import ThumbnailLoader
from ui.engine_client import read_journal, request_from_json, request_to_json
from ui.photo_io import export_copy, export_name
from ui.sidecar import Sidecar, SidecarStore

needs_bytes_names = pytest.mark.skipif(sys.platform in ("win32", "darwin"),
                                       reason="names that are not UTF-8 exist on Linux only")


def _solid(path: Path, rgb: tuple[int, int, int], size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), rgb).save(path, "PNG" if path.suffix == ".png" else "JPEG")
    return path


def _diag() -> Diagnosis:
    return Diagnosis(Degradation.B, {"A": 0.1, "B": 0.7, "C": 0.1, "D": 0.1})


# -- sidecars -----------------------------------------------------------------------------


LONG_NAMES = ["a" * 250 + ".jpg", "é" * 120 + ".jpg", "x" * 230 + ".JPG", "写" * 83 + ".png"]


@pytest.mark.parametrize("name", LONG_NAMES)
def test_a_sidecar_of_a_photo_named_near_the_limit_is_written_and_read(tmp_path, name):
    """``<name>.json`` of a 250-byte name is 255+ bytes (and its temp file 28 more): the save
    raised SaveFailed (not an OSError: not caught) and the photo's state was lost."""
    photo = _solid(tmp_path / name, (200, 10, 10))
    store = SidecarStore(tmp_path, tmp_path / "data")
    store.save(photo, Sidecar(diagnosis=_diag(), outputs=[str(photo)], warnings=["w"]))
    for p in (store.path_for(photo), store.mask_path_for(photo)):
        assert p.parent == tmp_path / ".mend" and len(os.fsencode(p.name)) <= 255
    assert store.path_for(photo).is_file()
    assert store.path_for(photo).name.endswith(".json")
    assert store.mask_path_for(photo).name.endswith(".mask.png")
    assert store.mask_path_known(photo) == store.mask_path_for(photo)
    sc = SidecarStore(tmp_path, tmp_path / "data").load(photo)  # a new session reads it
    assert sc is not None and sc.outputs == [str(photo)] and sc.diagnosis.label is Degradation.B
    json.loads(store.path_for(photo).read_text())  # a plain JSON file


def test_long_names_sharing_their_start_get_their_own_sidecars(tmp_path):
    a = _solid(tmp_path / ("s" * 240 + "_a.jpg"), (10, 10, 10))
    b = _solid(tmp_path / ("s" * 240 + "_b.jpg"), (20, 20, 20))
    store = SidecarStore(tmp_path, tmp_path / "data")
    assert store.path_for(a) != store.path_for(b)
    assert store.mask_path_for(a) != store.mask_path_for(b)
    store.update(a, warnings=["only a"])
    store.update(b, warnings=["only b"])
    assert store.load(a).warnings == ["only a"] and store.load(b).warnings == ["only b"]


def test_short_names_keep_their_sidecar_names(tmp_path):
    """(sidecars written before stay found: a name that fits is used as it is)"""
    for name in ("IMG_0001.JPG", "tab\tnew\nline.jpg", "日本語🙂.jpeg",
                 unicodedata.normalize("NFD", "Été.jpg")):
        photo = _solid(tmp_path / name, (1, 2, 3))
        store = SidecarStore(tmp_path, tmp_path / "data")
        assert store.path_for(photo) == tmp_path / ".mend" / f"{name}.json"
        assert store.mask_path_for(photo) == tmp_path / ".mend" / f"{name}.mask.png"
        store.update(photo, warnings=[name])
        assert store.load(photo).warnings == [name]


@needs_bytes_names
def test_sidecars_of_a_folder_whose_name_is_not_utf8_in_the_data_folder(tmp_path):
    """A folder named b"\\xff..." whose sidecars go to the user data folder (read-only folder):
    hashing its path raised UnicodeEncodeError (surrogates not allowed)."""
    folder = tmp_path / os.fsdecode(b"card \xff\xfe")
    photo = _solid(folder / os.fsdecode(b"\xe9t\xe9.jpg"), (0, 200, 0))
    store = SidecarStore(folder, tmp_path / "data", beside_photos=False)
    store.update(photo, warnings=["x"], outputs=[str(photo)])
    assert store.root.parent == tmp_path / "data" / "sidecars"
    sc = SidecarStore(folder, tmp_path / "data", beside_photos=False).load(photo)
    assert sc is not None and sc.outputs == [str(photo)]  # the surrogate escapes round-trip
    beside = SidecarStore(folder, tmp_path / "data")
    beside.update(photo, warnings=["y"])
    assert beside.load(photo).warnings == ["y"]


# -- folder listing and thumbnails -----------------------------------------------------------


def _odd_folder(d: Path) -> dict[str, tuple[int, int, int]]:
    colours = {
        "IMG_0001.JPG": (250, 0, 0), "é café.jpeg": (0, 250, 0), "日本語🙂.png": (0, 0, 250),
        unicodedata.normalize("NFD", "Été.TIF"): (250, 250, 0), "x.jpg.png": (0, 250, 250),
        "-dash.jpg": (250, 0, 250), "tab\tnl\n.jpg": (120, 120, 120), "w" * 250 + ".jpg": (60, 60, 60),
    }
    if sys.platform not in ("win32", "darwin"):
        colours[os.fsdecode(b"a\xffb.jpg")] = (255, 255, 255)
        colours["ab.jpg"] = (0, 0, 0)  # what the name above became through a Qt string
    for name, rgb in colours.items():
        _solid(d / name, rgb)
    Image.new("RGB", (8, 8)).save(d / "noext", "PNG")
    _solid(d / ".hidden.jpg", (1, 1, 1))
    (d / "dir.jpg").mkdir()
    (d / "link.jpg").symlink_to(d / "noext")
    return colours


def test_the_folder_listing_takes_odd_names_and_leaves_out_what_is_not_a_photo(tmp_path):
    colours = _odd_folder(tmp_path)
    assert {it.path.name for it in scan_folder(tmp_path)} == set(colours) | {"link.jpg"}
    sub = tmp_path / "sub ü"
    _solid(sub / "in.jpg", (5, 5, 5))
    rel = {it.rel for it in scan_tree(tmp_path) if it.rel}
    assert rel == {f"sub ü{os.sep}in.jpg"}


def test_every_odd_name_gets_its_own_thumbnail(qtbot, pool, tmp_path):
    """Thumbnails came back through a Qt string signal, which drops a name's surrogate
    escapes: the thumbnail of b"a\\xffb.jpg" went to "ab.jpg" (another photo's row) and its own
    row stayed "loading" for ever."""
    colours = _odd_folder(tmp_path)
    model = ThumbnailModel(ThumbnailLoader(pool, tmp_path / "cache"))
    model.set_folder(tmp_path)
    model.fetch_all()
    for r in range(model.rowCount()):
        model.index(r).data(bm.Qt.ItemDataRole.DecorationRole)
    qtbot.waitUntil(lambda: model.ready_count() + model.failed_count() == model.rowCount(),
                    timeout=20000)
    assert model.failed_count() == 0
    for name, rgb in colours.items():
        ix = model.index(model.row_of(tmp_path / name))
        assert ix.data(bm.ThumbStateRole) == "ready", name
        pm = ix.data(bm.Qt.ItemDataRole.DecorationRole)
        assert isinstance(pm, QPixmap)
        c = pm.toImage().pixelColor(pm.width() // 2, pm.height() // 2)
        assert np.allclose((c.red(), c.green(), c.blue()), rgb, atol=12), (name, c.getRgb())
    pool.waitForDone(10000)
    qtbot.wait(60)


# -- export names --------------------------------------------------------------------------


def test_export_names_of_odd_and_long_names(tmp_path):
    res = _solid(tmp_path / "r_mend.jpg", (9, 9, 9))
    assert export_name(res, tmp_path / "FINAL.JPG") == tmp_path / "FINAL.JPG"
    assert export_name(res, tmp_path / "final.JPEG") == tmp_path / "final.JPEG"
    assert export_name(res, tmp_path / "final.HEIC") == tmp_path / "final.jpg"
    assert export_name(res, tmp_path / "shot.v2") == tmp_path / "shot.v2.jpg"
    assert export_name(res, tmp_path / "photo.jpg.png") == tmp_path / "photo.jpg.jpg"
    assert export_name(res, tmp_path / "日本語🙂") == tmp_path / "日本語🙂.jpg"
    original = _solid(tmp_path / "orig.jpg", (1, 1, 1))
    # a name near the limit (Linux replaces through a temp file 28 bytes longer: it failed)
    for name in ("e" * 251 + ".jpg", "写" * 83 + ".jpg"):
        dest = export_copy(res, tmp_path / "x" / name, original)
        assert dest == tmp_path / "x" / name and dest.read_bytes() == res.read_bytes()
        dest = export_copy(res, tmp_path / "x" / name, original)  # replacing it: confirmed
        assert dest == tmp_path / "x" / name
    if sys.platform not in ("win32", "darwin"):
        dest = export_copy(res, tmp_path / os.fsdecode(b"\xff out"), original)
        assert dest == tmp_path / os.fsdecode(b"\xff out.jpg") and dest.exists()


# -- crash journal -------------------------------------------------------------------------


def test_the_crash_journal_keeps_odd_names(tmp_path):
    names = ["é café.jpg", "日本語🙂.jpeg", "tab\tnl\n.jpg", unicodedata.normalize("NFD", "Été.jpg")]
    if sys.platform not in ("win32", "darwin"):
        names.append(os.fsdecode(b"\xff.jpg"))
    reqs = [JobRequest(path=tmp_path / n, output=OutputOptions(out_dir=tmp_path / "out ü"),
                       mask_path=tmp_path / ".mend" / f"{n}.mask.png") for n in names]
    journal = tmp_path / "queue.json"
    journal.write_bytes(json.dumps({"version": 1, "jobs": [request_to_json(r) for r in reqs]},
                                   indent=1).encode())
    back = read_journal(journal)
    assert [r.path for r in back] == [r.path for r in reqs]
    assert [r.mask_path for r in back] == [r.mask_path for r in reqs]
    assert all(request_from_json(request_to_json(r)).output.out_dir == tmp_path / "out ü"
               for r in reqs)


def test_sidecar_paths_keep_the_windows_path_limit(tmp_path, monkeypatch):
    from engine import imageio as mio

    monkeypatch.setattr(mio, "MAX_PATH_CHARS", 259)
    folder = tmp_path / ("f" * max(1, 200 - len(str(tmp_path))))
    photo = _solid(folder / ("p" * 45 + ".jpg"), (7, 7, 7))  # its own path fits (~250)
    store = SidecarStore(folder, tmp_path / "data")
    for p in (store.path_for(photo), store.mask_path_for(photo)):
        assert len(os.path.abspath(p)) <= 259 and p.name.startswith("p")
    store.update(photo, warnings=["w"])
    assert store.load(photo).warnings == ["w"]


@needs_bytes_names
def test_a_broken_photo_with_a_non_utf8_name_fails_on_its_own_row(qtbot, pool, tmp_path):
    (tmp_path / os.fsdecode(b"a\xffb.jpg")).write_bytes(b"not a jpeg")
    _solid(tmp_path / "ab.jpg", (9, 9, 9))
    model = ThumbnailModel(ThumbnailLoader(pool, tmp_path / "cache"))
    model.set_folder(tmp_path)
    for r in range(model.rowCount()):
        model.index(r).data(bm.Qt.ItemDataRole.DecorationRole)
    qtbot.waitUntil(lambda: model.ready_count() + model.failed_count() == 2, timeout=20000)
    bad = model.index(model.row_of(tmp_path / os.fsdecode(b"a\xffb.jpg")))
    good = model.index(model.row_of(tmp_path / "ab.jpg"))
    assert bad.data(bm.ThumbStateRole) == "failed" and good.data(bm.ThumbStateRole) == "ready"
    assert bad.data(bm.ErrorRole) and not good.data(bm.ErrorRole)
    pool.waitForDone(10000)
    qtbot.wait(60)
