"""A reflection mask the photographer made, and the photo's class, in the app (session 16 audit).

The app sent the diagnosed class to the engine as if the photographer had chosen it: a photo
diagnosed A or D on which a reflection mask was painted came back unchanged with "the reflection
mask was not used", where ``mend restore PHOTO --mask M`` fixes it as B. Now only a class chosen
in "Fix as" is sent; with a mask and no class chosen the photo's plan (shown in the panel) is
B's, and a class chosen explicitly stays chosen. And a fix whose result is the original kept
says so first in the status line."""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from engine.api import Degradation
from engine.imageio import load_mask
from tests.ui.conftest import diagnosed as _diagnosed
from tests.ui.conftest import opened
from tests.ui.conftest import painted as _paint


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_a_mask_painted_on_a_photo_diagnosed_otherwise_fixes_it_as_b(qtbot, window, folder):
    win = window
    opened(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    before = _sha(target)
    st = _diagnosed(qtbot, win, target)
    diagnosed = st.diagnosis.label
    assert diagnosed is not Degradation.B and st.plan.label is diagnosed
    assert win.panel.override_label() is None  # "Fix as": Automatic
    doc = _paint(qtbot, win, target)
    # "Fix this photo", as the photographer clicks it (the panel still shows the plan diagnosed)
    with qtbot.waitSignal(win.fixed, timeout=90000):
        win.panel.run_btn.click()
    res = st.result
    assert res.label is Degradation.B, res.warnings
    assert [s.name for s in res.steps] == ["reflection_mask", "inpaint_builtin"]
    assert res.steps[0].model == "user:mask"
    assert not [w for w in res.warnings if "mask was not used" in w], res.warnings
    assert res.artifacts["mask_path"].is_file()
    assert not res.kept_original and _sha(res.output) != before
    assert win.status_label.text().startswith("Fixed a_noisy.jpg in ")
    # the panel shows what ran: B's plan, saying why, the class still left to Mend
    qtbot.waitUntil(lambda: win.client.is_idle() and win.panel.plan is not None, timeout=20000)
    assert st.override is None and win.panel.override_label() is None
    assert win.panel.plan.label is Degradation.B and st.plan.label is Degradation.B
    assert [s.name for s in win.panel.plan.steps] == ["reflection_mask", "inpaint_builtin"]
    assert np.array_equal(load_mask(res.artifacts["mask_path"]) > 127, doc.full > 127)
    assert _sha(target) == before


def test_the_plan_shown_is_b_once_the_mask_is_saved_and_says_why(qtbot, window, folder):
    """Before any fix: once the mask is saved, the plan shown is B's, with the reason next to
    its class; a class chosen in "Fix as" replaces it, Automatic brings it back."""
    win = window
    opened(qtbot, win, folder)
    target = folder / "a_noisy.jpg"
    st = _diagnosed(qtbot, win, target)
    assert st.diagnosis.label is not Degradation.B
    _paint(qtbot, win, target)
    win.show_browser()
    win._write_mask(target, win.mask_doc)  # (what Fix and leaving the folder do)
    qtbot.waitUntil(lambda: win.bg.pending() == 0 and win.client.is_idle()
                    and st.plan is not None and st.plan.label is Degradation.B, timeout=20000)
    assert st.mask_path is not None and st.mask_path.is_file() and not st.plan_edited
    win.select_path(folder / "b_clean.png")
    win.select_path(target)
    assert win.panel.plan.label is Degradation.B
    assert "your reflection mask" in win.panel.profile_label.text()
    # "Fix as" another class: chosen, so the plan is that class's and the reason goes
    win.panel.set_override(Degradation.C)
    qtbot.waitUntil(lambda: win.panel.plan is not None
                    and win.panel.plan.label is Degradation.C, timeout=20000)
    assert "mask" not in win.panel.profile_label.text()
    # back to Automatic: the mask makes it B again
    win.panel.set_override(None)
    qtbot.waitUntil(lambda: win.panel.plan is not None
                    and win.panel.plan.label is Degradation.B, timeout=20000)


def test_a_class_chosen_explicitly_stays_chosen_with_a_mask(qtbot, window, folder):
    win = window
    opened(qtbot, win, folder)
    target = folder / "b_clean.png"
    _diagnosed(qtbot, win, target)
    win.panel.set_override(Degradation.A)
    qtbot.waitUntil(lambda: win.panel.plan is not None
                    and win.panel.plan.label is Degradation.A, timeout=20000)
    _paint(qtbot, win, target)
    with qtbot.waitSignal(win.fixed, timeout=90000):
        win.panel.run_btn.click()
    st = win.states[target]
    assert st.result.label is Degradation.A
    assert [w for w in st.result.warnings if w.startswith("the reflection mask was not used")]
    qtbot.waitUntil(win.client.is_idle, timeout=20000)
    assert st.override is Degradation.A and win.panel.plan.label is Degradation.A
    assert "mask" not in win.panel.profile_label.text()


def _glare_photo(path):
    """A dim photo with a soft bright veil the built-in glare detector finds."""
    h, w = 72, 96
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.25 + 0.2 * xx / w, 0.3 + 0.1 * yy / h, 0.35 + 0.05 * np.sin(xx / 5)], -1)
    a = np.exp(-((xx - 40) ** 2 + (yy - 30) ** 2) / (2 * 12 ** 2))[..., None]
    img = img * (1 - a) + 0.96 * a
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(path)
    return path


def test_a_fix_that_kept_the_photo_says_so_first(qtbot, window, tmp_path):
    """The built-in B chain leaves a mask its detector found alone unfilled: the status line
    said "Fixed glare.png in 0.2 s" and the reason came after it."""
    win = window
    target = _glare_photo(tmp_path / "glare" / "glare.png")
    before = _sha(target)
    opened(qtbot, win, target.parent)
    _diagnosed(qtbot, win, target)
    win.panel.set_override(Degradation.B)
    qtbot.waitUntil(lambda: win.panel.plan is not None
                    and win.panel.plan.label is Degradation.B, timeout=20000)
    with qtbot.waitSignal(win.fixed, timeout=90000):
        win.panel.run_btn.click()
    st = win.states[target]
    assert st.result.kept_original and st.result.steps[1].notes.startswith("skipped")
    assert _sha(st.output) == before
    text = win.status_label.text()
    assert text.startswith("Nothing was filled in glare.png: the original is kept as it was"), \
        text
    assert "check the mask" in text and "Fixed" not in text
    assert win.panel.status.text().startswith("Result (the original, unchanged):")


def test_a_mask_recorded_with_an_older_plan_brings_b_s_plan_when_shown(qtbot, window, folder):
    """A sidecar an earlier Mend wrote: the mask the photographer saved, and the plan of the
    class diagnosed (A). Shown again, the photo's plan is made again as B's, what its fix runs."""
    from engine.api import Diagnosis
    from engine.imageio import save_mask
    from engine.restore.profiles import build_plan
    from ui.settings import data_dir
    from ui.sidecar import SidecarStore

    target = folder / "a_noisy.jpg"
    store = SidecarStore(folder, data_dir())
    diag = Diagnosis(Degradation.A, {"A": 0.7, "B": 0.1, "C": 0.1, "D": 0.1})
    mask = np.zeros((72, 96), bool)
    mask[20:50, 30:60] = True
    saved = save_mask(mask, store.mask_path_for(target))
    store.update(target, diagnosis=diag, plan=build_plan(Degradation.A, "builtin", diag),
                 mask=str(saved))
    win = window
    opened(qtbot, win, folder)
    qtbot.waitUntil(lambda: target in win.states and win.states[target].mask_path is not None,
                    timeout=10000)
    assert win.states[target].plan.label is Degradation.A
    win.select_path(target)
    qtbot.waitUntil(lambda: win.client.is_idle() and win.panel.plan is not None, timeout=20000)
    assert win.panel.plan.label is Degradation.B
    assert "your reflection mask" in win.panel.profile_label.text()
    # (and recorded: the sidecar has B's plan now)
    qtbot.waitUntil(lambda: store.load(target).plan.label is Degradation.B, timeout=10000)
    qtbot.waitUntil(lambda: win.bg.pending() == 0, timeout=10000)
