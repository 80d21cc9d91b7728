"""The plan editor offers each step's model choices as the engine lists them
(``StepSpec.choices``)."""
from __future__ import annotations

from PySide6.QtWidgets import QComboBox, QFormLayout

from engine.api import Degradation, Plan, Step


def _fields(panel) -> dict[str, object]:
    form = panel.params_form
    out = {}
    for row in range(form.rowCount()):
        label = form.itemAt(row, QFormLayout.ItemRole.LabelRole)
        field = form.itemAt(row, QFormLayout.ItemRole.FieldRole)
        if label is not None and field is not None:
            out[label.widget().text()] = field.widget()
    return out


def test_a_steps_model_is_chosen_among_its_own_models(qtbot):
    """The plan editor's choices went by parameter name alone: every ``model`` listed the two
    Real-ESRGAN models, so the deblurring step's NAFNet (and the face model) could be set to a
    Real-ESRGAN the step refuses. Now each step lists its own."""
    from ui.panels.diagnosis import DiagnosisPanel

    panel = DiagnosisPanel()
    qtbot.addWidget(panel)
    panel.set_photo_name("a.jpg")
    plan = Plan(Degradation.C, "laptop", (
        Step("deblur_nafnet"), Step("face_codeformer", {"fidelity": 0.7}),
        Step("reflection_mask"), Step("sr_realesrgan", {"model": "realesr-general-x4v3"})))
    panel.set_plan(plan)
    wanted = {0: ("model", ["nafnet-gopro-w64", "nafnet-gopro-w32", "nafnet-reds-w64"]),
              1: ("model", ["codeformer", "gfpgan-v1.4"]),
              2: ("sam model", ["sam-vit-base", "slimsam-50"]),
              3: ("model", ["realesr-general-x4v3", "realesrgan-x4plus", "realesrgan-x2plus",
                            "realesrgan-x4plus-anime-6b"])}
    for row, (label, items) in wanted.items():
        panel._show_params(row)
        combo = _fields(panel)[label]
        assert isinstance(combo, QComboBox)
        assert [combo.itemData(i) for i in range(combo.count())] == items
        assert combo.currentData() == items[0]
    panel._show_params(0)
    _fields(panel)["model"].setCurrentIndex(1)
    assert panel.plan.steps[0].params["model"] == "nafnet-gopro-w32"
    panel._show_params(1)
    _fields(panel)["model"].setCurrentIndex(1)
    assert panel.plan.steps[1].params == {"fidelity": 0.7, "model": "gfpgan-v1.4"}
