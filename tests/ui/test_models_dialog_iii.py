"""The Models dialog says how much of a partial model is on disk (before: only "partial")."""
from __future__ import annotations

import hashlib

from PySide6.QtGui import QColor

from ui.dialogs.models import STATUS_COLOURS, ModelManagerDialog, model_status
from ui.engine_client import EngineClient

MID = "realesr-general-x4v3"


def _blob(n: int, seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"x" * (n % 32)


def test_a_partial_models_status_says_how_much_is_there(qtbot, tmp_path, monkeypatch):
    from tests.model_helpers import install_test_model

    files = {}
    for name, size, seed in ((f"{MID}.pth", 400_000, 1), ("b.bin", 800_000, 2),
                             ("c.bin", 3_200_000, 3)):
        p = tmp_path / "in" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(_blob(size, seed))
        files[name] = p
    store = install_test_model(tmp_path / "store", MID, files)
    c = store.file_path(MID, "c.bin")
    c.with_name("c.bin.part").write_bytes(c.read_bytes()[:100_000])  # (a download under way)
    c.unlink()
    assert model_status(store, MID) == "partial: 2 of 3 files, 1.3 of 4.4 MB"
    monkeypatch.setattr(ModelManagerDialog, "_start_recommendation", lambda self: None)
    client = EngineClient(lambda: None)
    try:
        dlg = ModelManagerDialog(client, store)
        qtbot.addWidget(dlg)
        row = dlg.row_of(MID)
        cell = dlg.table.item(row, 4)
        qtbot.waitUntil(lambda: cell.text() == "partial: 2 of 3 files, 1.3 of 4.4 MB",
                        timeout=10000)
        assert cell.foreground().color() == QColor(STATUS_COLOURS["partial"])  # (not an error's)
        dlg.close()
        qtbot.waitUntil(lambda: client.pool.activeThreadCount() == 0, timeout=5000)
    finally:
        client.shutdown()
