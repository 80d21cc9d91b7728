"""UI behaviour on Windows and macOS that can be simulated honestly on Linux: one file or folder
reached by two spellings (what a case-insensitive, normalising file system makes of IMG_1.JPG and
img_1.jpg), and a locale whose text encoding is not UTF-8 (Windows' cp1252)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ui.browser.model import scan_tree
from ui.photo_io import export_copy

ROOT = Path(__file__).resolve().parents[2]


def test_export_never_replaces_the_original_named_another_way(tmp_path):
    """On macOS "IMG_0001.jpg" typed in the export dialog is the file IMG_0001.JPG (names ignore
    case), the dialog asks "Replace?", and export's guard compared resolved paths - which differ
    on macOS - so the original photo was replaced by the result. A hard link is the second name
    here: one file, two spellings, as there."""
    original = tmp_path / "IMG_0001.JPG"
    original.write_bytes(b"\xff\xd8original")
    result = tmp_path / "mended" / "IMG_0001_mend.jpg"
    result.parent.mkdir()
    result.write_bytes(b"\xff\xd8result")
    alias = tmp_path / "img_0001.jpg"
    os.link(original, alias)
    with pytest.raises(OSError, match="never replaces the original"):
        export_copy(result, alias, original)
    assert original.read_bytes() == b"\xff\xd8original"
    same_result = tmp_path / "mended" / "img_0001_mend.jpg"
    os.link(result, same_result)
    with pytest.raises(OSError, match="is the result itself"):
        export_copy(result, same_result, original)
    # a name of its own still exports (and a missing one is compared by path, as before)
    assert export_copy(result, tmp_path / "final.jpg", original).read_bytes() == b"\xff\xd8result"


def test_grid_listing_leaves_out_the_output_folder_however_it_is_spelt(monkeypatch, tmp_path):
    """A configured output folder inside the opened tree, named "photos/Out" for Photos/out: on
    macOS the paths differ and resolve() keeps each spelling, so the results were listed as
    photos. Here a symlinked parent is the second spelling, with resolve() made to keep it."""
    photos = tmp_path / "Photos"
    (photos / "out").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"\xff\xd8a")
    (photos / "out" / "a_mend.jpg").write_bytes(b"\xff\xd8b")
    alias = tmp_path / "photos-alias"
    alias.symlink_to(photos, target_is_directory=True)
    monkeypatch.setattr(Path, "resolve", lambda self, strict=False: Path(os.path.abspath(self)))
    items = scan_tree(photos, exclude=(alias / "out",))
    assert [it.path for it in items] == [photos / "a.jpg"]


def test_thumbnail_failure_message_reads_back_under_a_non_utf8_locale(tmp_path):
    """The failure marker is written in UTF-8 and was read in the locale's encoding (cp1252 on
    Windows): "the mask is 3×2 px …" came back as mojibake in the grid's tooltip. An ASCII
    locale (C, without Python's UTF-8 mode) plays the part of cp1252 here."""
    code = ("import sys, locale\n"
            "from pathlib import Path\n"
            "from ui.browser.thumbs import ThumbnailCache\n"
            "assert locale.getencoding().lower() not in ('utf-8', 'utf8'), locale.getencoding()\n"
            "c = ThumbnailCache(Path(sys.argv[1]))\n"
            "msg = 'Cannot read this photo: 3\\u00d72 px, caf\\u00e9 \\u2026'\n"
            "c.put_failure('ab' * 20, msg)\n"
            "got = c.get('ab' * 20)\n"
            "print(ascii(got))\n"
            "sys.exit(0 if got == msg else 1)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_")}
    env.update(LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
               QT_QPA_PLATFORM="offscreen")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_grid_listing_does_not_follow_windows_junctions(monkeypatch, tmp_path):
    """The grid's walk meant to leave junctions out (``DirEntry.is_junction``), but that came
    with Python 3.12: on the app's 3.11 a junction was listed as a folder."""
    from tests.engine.test_portability import windows_junction_tree

    photos = windows_junction_tree(tmp_path, monkeypatch)
    assert [it.path for it in scan_tree(photos)] == [photos / "a.jpg"]


def test_a_windows_folder_with_the_read_only_attribute_gets_its_sidecars(tmp_path, monkeypatch):
    """Explorer marks Pictures and customised folders read-only (no write bits in st_mode on
    Windows); Windows does not honour that on folders, so sidecars still go beside the photos."""
    import os

    from ui import sidecar

    d = tmp_path / "Pictures"
    d.mkdir()
    d.chmod(0o555)  # (what st_mode shows there; root or Windows: os.access still says yes)
    monkeypatch.setattr(sidecar.os, "access", lambda *a, **k: True)
    try:
        assert sidecar._writable(d) is False  # POSIX: a folder its owner made read-only
        monkeypatch.setattr(os, "name", "nt")
        writable = sidecar._writable(d)
        monkeypatch.setattr(os, "name", "posix")
        assert writable is True
    finally:
        d.chmod(0o755)
