"""main.py entry points, the model manager over a real store, settings, sidecars, keyboard."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from engine.api import Degradation, Diagnosis, OutputOptions, Plan, Step
from ui.dialogs.models import ModelManagerDialog, human_size
from ui.engine_client import EngineClient
from ui.settings import AppSettings, load_settings, qsettings, save_settings
from ui.sidecar import Sidecar, SidecarStore

ROOT = Path(__file__).resolve().parents[2]


def _env_without_display() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    return env


def test_main_without_display_exits_2():
    r = subprocess.run([sys.executable, str(ROOT / "main.py")], env=_env_without_display(),
                       check=False,
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2
    assert "mend --help" in r.stderr


def test_main_help_points_to_the_cli():
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--help"], check=False,
                       capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and "mend --help" in r.stdout and "--screenshot" in r.stdout


def test_model_manager_over_a_real_store(qtbot, tmp_path):
    from tests.model_helpers import install_test_model

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not really weights but hashed like them" * 10)
    store = install_test_model(tmp_path / "store", "codeformer",
                               {"codeformer.pth": weights})
    client = EngineClient(lambda: None)
    try:
        dlg = ModelManagerDialog(client, store)
        qtbot.addWidget(dlg)
        ids = [dlg.table.item(r, 0).data(Qt.ItemDataRole.UserRole)
               for r in range(dlg.table.rowCount())]
        assert "codeformer" in ids and "big-lama" in ids
        r = dlg.row_of("codeformer")
        # (the statuses are checked in the pool: they arrive by signal)
        qtbot.waitUntil(lambda: (dlg.table.item(r, 4).text(), dlg.table.item(
            dlg.row_of("big-lama"), 4).text()) == ("verified", "missing"), timeout=10000)
        assert "non-commercial" in dlg.table.item(r, 3).text()
        assert "non-commercial" not in dlg.table.item(dlg.row_of("big-lama"), 3).text()
        # first-run recommendation is computed off the GUI thread
        qtbot.waitUntil(lambda: "Recommended" in dlg.recommend.text()
                        or "uses the" in dlg.recommend.text(), timeout=30000)
        with qtbot.waitSignal(client.model_finished, timeout=10000):
            dlg.verify("codeformer")
        assert "codeformer: verified" in dlg.note.text()
        # a damaged file is found by verify
        store.file_path("codeformer", "codeformer.pth").write_bytes(b"x" * 390)
        with qtbot.waitSignal(client.model_finished, timeout=10000):
            dlg.verify("codeformer")
        assert "damaged" in dlg.note.text()
        # import an offline "pack" (a folder with the good file) repairs it
        pack = tmp_path / "pack"
        pack.mkdir()
        (pack / "codeformer.pth").write_bytes(weights.read_bytes())
        with qtbot.waitSignal(client.model_finished, timeout=10000):
            dlg.import_from(pack)
        assert "Imported 1 file" in dlg.note.text()
        qtbot.waitUntil(lambda: dlg.table.item(r, 4).text() == "verified", timeout=10000)
        # offline: downloading fails with a readable message, not a crash
        os.environ["MEND_OFFLINE"] = "1"
        try:
            with qtbot.waitSignal(client.model_failed, timeout=10000) as sig:
                dlg.pull("big-lama")
        finally:
            os.environ.pop("MEND_OFFLINE", None)
        assert "Offline mode" in sig.args[1] or "offline" in sig.args[1]
        dlg.close()
    finally:
        client.shutdown()
    assert human_size(1536) == "2 KB" and human_size(3 << 30) == "3.0 GB"


def test_settings_round_trip_and_output_options(tmp_path):
    s = AppSettings(device="cpu", tile_size=256, threads=1, format="png", bit_depth=16,
                    keep_metadata=False, offline=True, out_dir=str(tmp_path / "o"), suffix="_x")
    save_settings(s, qsettings())
    back = load_settings(qsettings())
    assert back == s
    o = back.output_options(tmp_path / "p.jpg")
    assert o.out_dir == tmp_path / "o" and o.format == "png" and o.bit_depth == 16
    assert not o.keep_metadata and o.suffix == "_x"
    d = AppSettings().output_options(tmp_path / "p.jpg")
    assert d.out_dir == tmp_path / "mended" and d.format is None and d.bit_depth is None


def test_sidecar_beside_photos_or_in_user_data_when_read_only(tmp_path):
    photos = tmp_path / "ph"
    photos.mkdir()
    p = photos / "a.jpg"
    p.write_bytes(b"123")
    diag = Diagnosis(Degradation.B, {"A": 0.1, "B": 0.7, "C": 0.1, "D": 0.1},
                     estimates={"reflection_area": 0.2})
    plan = Plan(Degradation.B, "builtin", (Step("reflection_mask", {"detector": "builtin"}),))
    store = SidecarStore(photos, tmp_path / "data")
    assert store.root == photos / ".mend"
    store.update(p, diagnosis=diag, plan=plan, outputs=["/o/a_mend.jpg"])
    sc = SidecarStore(photos, tmp_path / "data").load(p)
    assert sc.diagnosis == diag and sc.plan == plan and sc.outputs == ["/o/a_mend.jpg"]
    # the photo changed (a card re-imported under the same name, an edit elsewhere): its old
    # diagnosis, mask and results belonged to the old photo (the result files stay on disk)
    store.update(p, mask="/m/a.mask.png")
    p.write_bytes(b"12345")
    sc = store.load(p)
    assert sc.diagnosis is None and sc.outputs == [] and sc.mask is None
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "b.jpg").write_bytes(b"1")
    ro.chmod(0o555)
    try:  # (root passes os.access here; the read-only mode bits still count)
        s2 = SidecarStore(ro, tmp_path / "data")
        assert str(s2.root).startswith(str(tmp_path / "data" / "sidecars"))
        s2.update(ro / "b.jpg", outputs=["x"])
        assert s2.load(ro / "b.jpg").outputs == ["x"]
        assert not (ro / ".mend").exists()
    finally:
        ro.chmod(0o755)
    # the folder writable again: those sidecars are still read, new ones go beside the photos
    s3 = SidecarStore(ro, tmp_path / "data")
    assert s3.root == ro / ".mend" and s3.load(ro / "b.jpg").outputs == ["x"]
    s3.update(ro / "b.jpg", outputs=["x", "y"])
    assert (ro / ".mend" / "b.jpg.json").exists() and s3.load(ro / "b.jpg").outputs == ["x", "y"]
    forced = SidecarStore(photos, tmp_path / "data", beside_photos=False)
    assert str(forced.root).startswith(str(tmp_path / "data" / "sidecars"))


def test_sidecar_survives_garbage(tmp_path):
    store = SidecarStore(tmp_path, tmp_path / "data")
    store.path_for(tmp_path / "x.jpg").parent.mkdir(parents=True, exist_ok=True)
    store.path_for(tmp_path / "x.jpg").write_text("{not json")
    assert store.load(tmp_path / "x.jpg") is None
    assert Sidecar.from_json(Sidecar().to_json()) == Sidecar()


def test_sidecar_folder_that_links_to_another_folder_is_not_written(tmp_path, caplog):
    """A shared folder whose .mend is a symbolic link into another photo folder's .mend: camera
    names repeat across cards, so writing there would replace that folder's sidecars and
    hand-painted masks. The user-data store is used instead, and the log says why."""
    import logging

    import numpy as np

    from engine.imageio import save_mask

    victim, shared = tmp_path / "victim", tmp_path / "shared"
    (victim / ".mend").mkdir(parents=True)
    shared.mkdir()
    theirs = {"IMG_0001.JPG.json": b'{"version": 1, "outputs": ["theirs"]}',
              "IMG_0001.JPG.mask.png": b"their hand-painted mask"}
    for name, data in theirs.items():
        (victim / ".mend" / name).write_bytes(data)
    (shared / ".mend").symlink_to(Path("..") / "victim" / ".mend", target_is_directory=True)
    photo = shared / "IMG_0001.JPG"
    photo.write_bytes(b"ours")
    with caplog.at_level(logging.WARNING, logger="mend.ui.sidecar"):
        store = SidecarStore(shared, tmp_path / "data")
    assert str(store.root).startswith(str(tmp_path / "data" / "sidecars"))
    assert "link to another folder" in caplog.text and str(store.root) in caplog.text
    assert store.load(photo) is None  # the other folder's sidecar is not ours either
    store.update(photo, outputs=["ours"])
    save_mask(np.zeros((4, 4), np.uint8), store.mask_path_for(photo))
    assert store.load(photo).outputs == ["ours"] and store.mask_path_for(photo).is_file()
    assert {p.name: p.read_bytes() for p in (victim / ".mend").iterdir()} == theirs
    # made a link only after the store was opened: noticed at the next write
    other = tmp_path / "other"
    other.mkdir()
    late = SidecarStore(other, tmp_path / "data")
    assert late.root == other / ".mend"
    (other / ".mend").symlink_to(victim / ".mend", target_is_directory=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mend.ui.sidecar"):
        late.update(other / "IMG_0001.JPG", outputs=["late"])
        save_mask(np.zeros((4, 4), np.uint8), late.mask_path_for(other / "IMG_0001.JPG"))
    assert "became a link" in caplog.text
    assert str(late.root).startswith(str(tmp_path / "data" / "sidecars"))
    assert {p.name: p.read_bytes() for p in (victim / ".mend").iterdir()} == theirs


def test_diagnosis_panel_shows_an_unresolved_line_blur_as_such(qtbot):
    """The straight-line estimator's floor (~3.7 px) is not a measurement: the panel says "none
    resolved" and leaves the line's angle out; a resolved line and the blur extent show their
    numbers."""
    from PySide6.QtWidgets import QFormLayout

    from engine.api import BLUR_LINE_RESOLVED_MIN
    from ui.panels.diagnosis import DiagnosisPanel

    def rows(panel: DiagnosisPanel) -> dict[str, str]:
        form = panel.est_form
        out = {}
        for i in range(form.rowCount()):
            name = form.itemAt(i, QFormLayout.ItemRole.LabelRole)
            field = form.itemAt(i, QFormLayout.ItemRole.FieldRole)
            if name is not None and field is not None:
                out[name.widget().text()] = field.widget().text()
        return out

    panel = DiagnosisPanel()
    qtbot.addWidget(panel)
    shake = {"noise_sigma": 0.4, "blur_length": 3.7, "blur_angle": 110.0, "blur_extent": 20.5,
             "blur_extent_angle": 30.0}
    panel.set_diagnosis(Diagnosis(Degradation.C, {"A": 0.1, "B": 0.1, "C": 0.7, "D": 0.1},
                                  ("motion_blur",), shake))
    shown = rows(panel)
    assert shown["Line blur length"] == "none resolved"
    assert "Line blur angle" not in shown
    assert shown["Blur extent"] == "20.5 px" and shown["Blur extent angle"] == "30°"
    # every measurement row says what it means (its tooltip), the unresolved line included
    from ui.panels.diagnosis import ESTIMATE_HELP, ESTIMATE_NAMES

    assert set(ESTIMATE_HELP) == set(ESTIMATE_NAMES)
    form = panel.est_form
    for i in range(form.rowCount()):
        name = form.itemAt(i, QFormLayout.ItemRole.LabelRole).widget()
        value = form.itemAt(i, QFormLayout.ItemRole.FieldRole).widget()
        assert len(name.toolTip()) > 20 and value.toolTip() == name.toolTip(), name.text()
    line = dict(shake, blur_length=BLUR_LINE_RESOLVED_MIN + 7.5)
    panel.set_diagnosis(Diagnosis(Degradation.C, {"A": 0.1, "B": 0.1, "C": 0.7, "D": 0.1},
                                  ("motion_blur",), line))
    shown = rows(panel)
    assert shown["Line blur length"] == "12.0 px" and shown["Line blur angle"] == "110°"


def test_library_warnings_go_to_the_app_log_not_the_terminal(tmp_path):
    code = ("import warnings\nfrom ui.app import setup_logging\nlog = setup_logging()\n"
            "warnings.warn('Corrupt EXIF data.', UserWarning)\n"
            "for h in __import__('logging').getLogger('mend').handlers: h.flush()\n"
            "print(log)\n")
    env = dict(os.environ, MEND_UI_DATA_DIR=str(tmp_path / "data"))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "Corrupt EXIF" not in r.stderr
    assert "Corrupt EXIF data." in Path(r.stdout.strip()).read_text(encoding="utf-8")


def test_the_plan_editor_waits_for_a_photo(qtbot):
    """With no photo selected there is nothing to plan: the step editor is disabled like the
    Fix and Diagnose buttons (before, '+' built a plan for no photo)."""
    from ui.panels.diagnosis import DiagnosisPanel

    panel = DiagnosisPanel()
    qtbot.addWidget(panel)
    assert panel._plan_edit and not any(w.isEnabled() for w in panel._plan_edit)
    panel.set_photo_name("a.jpg")
    assert all(w.isEnabled() for w in panel._plan_edit)
    panel.set_photo_name(None)
    assert not any(w.isEnabled() for w in panel._plan_edit)


def test_a_mend_record_reads_as_one_line_for_the_photographer():
    from ui.panels.diagnosis import describe_record

    assert describe_record(None) == describe_record({"a": 1}) == ""  # not Mend's: nothing
    assert describe_record({"software": "Mend 0.2", "label": "C", "kept_original": True}) == (
        "Written by Mend 0.2 as C · Motion blur: the original, unchanged (nothing was applied).")
    line = describe_record({"software": "Mend 0.2", "label": "B", "steps": [
        {"name": "inpaint", "model": "lama"}, {"name": "dereflect", "model": ""}, "junk"]})
    assert line == ("A result written by Mend 0.2 as B · Reflection: inpaint (lama), dereflect. "
                    "Fixing it again applies the chain twice.")
    assert describe_record({"software": "Mend 0.2", "label": "?"}).startswith(
        "A result written by Mend 0.2: no steps recorded")


def test_unticking_offline_mode_turns_it_off_without_a_restart(monkeypatch):
    from engine.models.download import offline_mode
    from ui import settings as ui_settings

    monkeypatch.setattr(ui_settings, "_ENV_BEFORE", {})  # what the app set: this test's own
    for k in ("MEND_OFFLINE", "HF_HUB_OFFLINE", "MEND_PRECISION", "MEND_THREADS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MEND_THREADS", "3")  # the user's own environment
    AppSettings(offline=True, precision="fp16", threads=1).apply_environment()
    assert offline_mode() and os.environ["MEND_PRECISION"] == "fp16"
    assert os.environ["MEND_THREADS"] == "1"
    AppSettings(offline=False, precision="auto", threads=0).apply_environment()
    assert not offline_mode() and "HF_HUB_OFFLINE" not in os.environ
    assert "MEND_PRECISION" not in os.environ and os.environ["MEND_THREADS"] == "3"


def test_a_name_suffix_with_a_folder_separator_is_refused(tmp_path):
    from engine.errors import SaveFailed
    from engine.imageio import output_path_for

    for bad in ("/../../escaped", "_a\\b"):
        with pytest.raises(SaveFailed, match="may not contain a folder separator"):
            output_path_for(tmp_path / "a.jpg", OutputOptions(out_dir=tmp_path, suffix=bad))


def test_a_builtin_diagnosis_says_it_is_a_guess(qtbot):
    """The built-in analyzer is right on about two in three real test photos (README): its
    diagnosis says so beside the class; a VLM's does not carry the caveat."""
    from ui.panels.diagnosis import DiagnosisPanel

    panel = DiagnosisPanel()
    qtbot.addWidget(panel)
    panel.show()
    scores = {"A": 0.1, "B": 0.6, "C": 0.2, "D": 0.1}
    panel.set_diagnosis(Diagnosis(Degradation.B, scores, (), {}, "reflection cues", "builtin"))
    assert panel.reliability.isVisible() and "Fix as" in panel.reliability.text()
    panel.set_diagnosis(Diagnosis(Degradation.B, scores, (), {}, "paper prompt",
                                  "vlm:qwen2.5-vl-7b"))
    assert not panel.reliability.isVisible()
    panel.set_diagnosis(Diagnosis(Degradation.B, scores, (), {}, "x", "builtin"))
    panel.set_diagnosis(None)
    assert not panel.reliability.isVisible()
