"""Diagnosis panel: label, score bars, runner-up, estimates, rationale; class override; plan editor."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from PySide6.QtCore import QEvent, QSize, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.api import BLUR_LINE_RESOLVED_MIN, CLASSES, Degradation, Diagnosis, Plan, Step

from ..app import weak_slot
from ..widgets import ElidedLabel, breakable

CHOICES: dict[str, list[Any]] = {
    "scale": [1, 2, 4],
    "model": ["realesr-general-x4v3", "realesrgan-x4plus"],
    "detector": ["auto", "yolo", "sam", "builtin"],
    "face_detector": ["auto", "yunet", "haar"],
}
RANGES: dict[str, tuple[float, float, float]] = {  # min, max, step
    "strength": (0.0, 1.0, 0.05),
    "fidelity": (0.0, 1.0, 0.05),
    "steps": (1, 5, 1),
    "face_score": (0.0, 1.0, 0.05),
}
ESTIMATE_NAMES = {
    "noise_sigma": ("Noise σ", "{:.1f}"),
    "jpeg_quality": ("JPEG quality", "{:.0f}"),
    "blur_length": ("Line blur length", "{:.1f} px"),  # straight-line fit (see _estimate_rows)
    "blur_angle": ("Line blur angle", "{:.0f}°"),
    "blur_extent": ("Blur extent", "{:.1f} px"),
    "blur_extent_angle": ("Blur extent angle", "{:.0f}°"),
    "blur_isotropy": ("Blur isotropy", "{:.2f}"),  # ~1 same every way (defocus), low: motion
    "sharpness": ("Sharpness", "{:.3g}"),
    "reflection_area": ("Reflection area", "{:.0%}"),
    "specular_area": ("Specular area", "{:.1%}"),
    "motion_evidence": ("Motion evidence", "{:.2f}"),
    "upscale_factor": ("Upscale factor", "{:.2g}×"),
}
BUILTIN_CAVEAT = ("Built-in analyzer: a quick guess, right on about two in three real test photos. "
                  "Check the class (“Fix as”) before fixing; the VLM in Models is the paper's "
                  "classifier.")
HIDDEN_ESTIMATES = {"width", "height", "units", "jpeg_source"}
# what each measurement means, for a photographer (the rows' tooltips)
ESTIMATE_HELP = {
    "noise_sigma": "Grain: the spread of random noise on the 0–255 scale, measured at full size "
                   "in the flattest areas. About 0–2 is clean; from about 6 it shows (then "
                   "\u201cnoise\u201d is listed under Present).",
    "jpeg_quality": "JPEG compression on the 1–100 scale (100: none seen). Exact from a JPEG's "
                    "own tables, else estimated from its 8×8 block edges. Below about 60 the "
                    "blocks show (\u201cjpeg\u201d under Present).",
    "blur_length": "Length of a straight-line motion blur, in pixels at full size. \u201cNone "
                   "resolved\u201d: no straight streak was found; real hand shake is usually "
                   "curved (see Blur extent).",
    "blur_angle": "Direction of that straight-line blur (0° horizontal, counter-clockwise).",
    "blur_extent": "How far edges are smeared in their worst direction, in pixels at full size, "
                   "whatever the cause (motion, defocus, softness). A few pixels is normal for a "
                   "sharp photo.",
    "blur_extent_angle": "Direction of the worst smear (0° horizontal, counter-clockwise).",
    "blur_isotropy": "The narrowest direction's blur divided by the widest: near 1, the same in "
                     "every direction (defocus or softness); low, smeared one way (motion).",
    "sharpness": "0 (blurred) to 1 (crisp): fine detail compared with coarser detail.",
    "reflection_area": "Share of the frame that looks veiled by a reflection (when a reflection "
                       "is likely).",
    "specular_area": "Share of the frame in small burnt-out highlights (glints).",
    "motion_evidence": "How clearly a straight-line blur stands out in the photo's spectrum "
                       "(in standard deviations of the background): the built-in deblurring "
                       "only undoes a line blur when this is strong.",
    "upscale_factor": "About 1: detail down to single pixels. k: the photo looks enlarged about "
                      "k times from a smaller original.",
}


def describe_record(record: Mapping[str, Any] | None) -> str:
    """A photographer's line for the record Mend writes into its results and masks ("" for a
    file without one): which class it was fixed as, with which steps and models."""
    if not record or not str(record.get("software", "")).startswith("Mend"):
        return ""
    who = str(record["software"])
    if record.get("kind") == "mask":
        return f"A reflection mask saved by {who}."
    try:
        label = Degradation(record.get("label"))
        as_what = f" as {label.value} · {label.short_name}"
    except ValueError:
        as_what = ""
    if record.get("kept_original"):
        return f"Written by {who}{as_what}: the original, unchanged (nothing was applied)."
    steps = []
    for st in record.get("steps") or ():
        if isinstance(st, Mapping) and st.get("name"):
            model = str(st.get("model") or "")
            steps.append(f"{st['name']} ({model})" if model and model != st["name"] else
                         str(st["name"]))
    done = ", ".join(steps) if steps else "no steps recorded"
    return f"A result written by {who}{as_what}: {done}. Fixing it again applies the chain twice."


def estimate_rows(estimates: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, text) rows for the estimates the panel shows, in the diagnosis's order (each
    name's explanation: ``ESTIMATE_HELP`` under the same key as ``ESTIMATE_NAMES``). A
    straight-line blur length under the resolvable minimum reads "none resolved" (it is the
    estimator's floor, not a measurement) and its angle is left out."""
    rows = []
    line = estimates.get("blur_length")
    unresolved = isinstance(line, (int, float)) and line < BLUR_LINE_RESOLVED_MIN
    for key, value in estimates.items():
        if key in HIDDEN_ESTIMATES or key not in ESTIMATE_NAMES:
            continue
        name, fmt = ESTIMATE_NAMES[key]
        if unresolved and key == "blur_angle":
            continue
        if unresolved and key == "blur_length":
            rows.append((name, "none resolved"))
            continue
        try:
            text = fmt.format(value) if value is not None else "–"
        except (ValueError, TypeError):
            text = str(value)
        rows.append((name, text))
    return rows


def step_names() -> list[str]:
    try:
        from engine.restore.registry import all_steps

        return sorted(all_steps())
    except Exception:  # noqa: BLE001 - a broken specialist module must not take the panel down
        return []


def step_defaults(name: str) -> Mapping[str, Any]:
    try:
        from engine.restore.registry import get_step

        return get_step(name).defaults
    except Exception:  # noqa: BLE001
        return {}


def step_choices(name: str) -> Mapping[str, tuple[Any, ...]]:
    """The values the step's params choose among (a model among its alternatives), as the
    engine checks them (``StepSpec.choices``); the editor offers ``CHOICES`` for the others."""
    try:
        from engine.restore.registry import get_step

        return get_step(name).choices
    except Exception:  # noqa: BLE001
        return {}


class DiagnosisPanel(QWidget):
    run_requested = Signal(object)  # Plan | None
    override_requested = Signal(object)  # Degradation | None (None = back to auto)
    plan_edited = Signal(object)  # Plan: the photographer changed a step, a parameter, the order
    diagnose_requested = Signal()
    edit_mask_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.diagnosis: Diagnosis | None = None
        self.plan: Plan | None = None
        self._updating = False
        # the panel scrolls up and down, never sideways (its contents wrap or elide to its
        # width), above its actions (``footer``), which stay in view
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        self.body = QWidget()
        lay = QVBoxLayout(self.body)
        lay.setContentsMargins(8, 8, 8, 8)

        # (one line, cut in the middle when it does not fit: a long file name made the dock,
        # and with it the window, wider - or the name broke in odd places)
        self.title = ElidedLabel("No photo")
        self.title.setObjectName("panelTitle")
        lay.addWidget(self.title)
        self.label = QLabel("Not diagnosed yet")
        self.label.setObjectName("diagnosisLabel")
        self.label.setWordWrap(True)
        lay.addWidget(self.label)
        self.runner_up = QLabel("")
        self.runner_up.setObjectName("dim")
        self.runner_up.setWordWrap(True)
        lay.addWidget(self.runner_up)
        # the built-in analyzer's diagnoses are a guess (README: 57-71 % right on the real test
        # sets): said where the class is, so the photographer checks it before fixing
        self.reliability = QLabel(BUILTIN_CAVEAT)
        self.reliability.setObjectName("dim")
        self.reliability.setWordWrap(True)
        self.reliability.hide()
        lay.addWidget(self.reliability)
        # what Mend did to this file, when it is a result Mend wrote (its record, set_record)
        self.history = QLabel("")
        self.history.setObjectName("mendHistory")
        self.history.setWordWrap(True)
        self.history.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.history.hide()
        lay.addWidget(self.history)

        scores = QGroupBox("Scores")
        sl = QFormLayout(scores)
        self.bars: dict[str, QProgressBar] = {}
        for c in CLASSES:
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setTextVisible(True)
            bar.setFormat("0 %")
            bar.setObjectName(f"score{c.value}")
            self.bars[c.value] = bar
            sl.addRow(f"{c.value} · {c.short_name}", bar)
        lay.addWidget(scores)

        est = QGroupBox("Measurements")
        self.est_box = est
        self.est_form = QFormLayout(est)
        lay.addWidget(est)
        self.rationale = QLabel("")
        self.rationale.setWordWrap(True)
        self.rationale.setObjectName("dim")
        self.rationale.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.rationale)

        row = QHBoxLayout()
        row.addWidget(QLabel("Fix as"))
        self.override = _narrow(QComboBox())
        self.override.addItem("Automatic", None)
        for c in CLASSES:
            self.override.addItem(f"{c.value} · {c.short_name}", c.value)
        self.override.currentIndexChanged.connect(self._on_override)
        row.addWidget(self.override, 1)
        self.diagnose_btn = QPushButton("Diagnose")
        self.diagnose_btn.clicked.connect(self.diagnose_requested)
        row.addWidget(self.diagnose_btn)
        lay.addLayout(row)
        # with several photos selected, "Fix as" applies to all of them: said before choosing
        self.selection_note = QLabel("")
        self.selection_note.setObjectName("dim")
        self.selection_note.setWordWrap(True)
        self.selection_note.hide()
        lay.addWidget(self.selection_note)

        plan_box = QGroupBox("Plan")
        pl = QVBoxLayout(plan_box)
        self.profile_label = QLabel("")
        self.profile_label.setObjectName("dim")
        self.profile_label.setWordWrap(True)
        pl.addWidget(self.profile_label)
        # "Estimate: ~40 s, ~1.2 GB ..." for the plan as edited (set_estimator provides it)
        self.estimate_label = QLabel("")
        self.estimate_label.setObjectName("dim")
        self.estimate_label.setWordWrap(True)
        pl.addWidget(self.estimate_label)
        self._estimator: Callable[[Plan], str | None] | None = None
        # the class a plan is made for when none is chosen here (the window's ``plan_label``:
        # B for a photo with a reflection mask of the photographer's); None: as diagnosed
        self._label_source: Callable[[], Degradation | None] | None = None
        self.steps = QListWidget()
        self.steps.setMaximumHeight(130)
        self.steps.currentRowChanged.connect(self._show_params)
        self.steps.itemChanged.connect(self._on_step_toggled)
        pl.addWidget(self.steps)
        btns = QHBoxLayout()
        self.add_combo = _narrow(QComboBox(), 6)
        self.add_combo.setToolTip("Step to add")
        btns.addWidget(self.add_combo, 1)
        self._plan_edit = [self.add_combo]  # enabled only with a photo to plan for
        for text, tip, fn in (("+", "Add the step", self._add_step),
                              ("−", "Remove the selected step", self._remove_step),
                              ("↑", "Move up", weak_slot(self, lambda p: p._move_step(-1))),
                              ("↓", "Move down", weak_slot(self, lambda p: p._move_step(1)))):
            b = QToolButton()
            b.setText(text)
            b.setToolTip(tip)
            b.clicked.connect(fn)
            btns.addWidget(b)
            self._plan_edit.append(b)
        pl.addLayout(btns)
        self.params_box = QGroupBox("Parameters")
        self.params_form = QFormLayout(self.params_box)
        pl.addWidget(self.params_box)
        lay.addWidget(plan_box)

        # the panel's actions, in a bar of their own below the scrolling part: after a
        # diagnosis the panel is taller than a 900 px screen, and "Fix this photo" was below
        # the fold
        self.footer = QWidget()
        self.footer.setObjectName("panelFooter")
        foot = QVBoxLayout(self.footer)
        foot.setContentsMargins(8, 6, 8, 6)
        self.mask_btn = QPushButton("Edit reflection mask…")
        self.mask_btn.clicked.connect(self.edit_mask_requested)
        foot.addWidget(self.mask_btn)
        self.run_btn = QPushButton("Fix this photo")
        self.run_btn.setObjectName("primary")
        self.run_btn.clicked.connect(weak_slot(self, lambda p: p.run_requested.emit(p.plan)))
        foot.addWidget(self.run_btn)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setObjectName("dim")
        lay.addWidget(self.status)
        lay.addStretch(1)
        self.scroll = _VerticalScroll()
        self.scroll.setWidget(self.body)
        outer.addWidget(self.scroll, 1)
        outer.addWidget(self.footer)
        self.set_photo_name(None)

    # -- content --------------------------------------------------------------------------
    def set_photo_name(self, name: str | None) -> None:
        self.title.setText(name or "No photo selected")
        enabled = name is not None
        for w in (self.run_btn, self.diagnose_btn, self.override, self.mask_btn,
                  *self._plan_edit):
            w.setEnabled(enabled)

    def set_selected_count(self, n: int) -> None:
        """How many photos are selected with the one shown (a "Fix as" choice is for all)."""
        text = (f"{n} photos selected: “Fix as” applies to all of them; the plan below is "
                "this photo's") if n > 1 else ""
        self.selection_note.setText(text)
        self.selection_note.setVisible(bool(text))

    def set_diagnosis(self, d: Diagnosis | None) -> None:
        self.diagnosis = d
        while self.est_form.rowCount():
            self.est_form.removeRow(0)
        self.reliability.setVisible(d is not None and d.backend == "builtin")
        if d is None:
            self.label.setText("Not diagnosed yet")
            self.runner_up.setText("")
            self.rationale.setText("")
            for bar in self.bars.values():
                bar.setValue(0)
                bar.setFormat("–")
            return
        self.label.setText(f"<b>{d.label.value} · {d.label.short_name}</b> — {d.confidence:.0%}"
                           f"<br><span>{d.label.display_name}</span>")
        ru = d.runner_up
        self.runner_up.setText(
            f"Runner-up: {ru.value} · {ru.short_name} ({float(d.scores.get(ru.value, 0)):.0%})"
            if ru else "")
        for k, bar in self.bars.items():
            v = float(d.scores.get(k, 0.0))
            bar.setValue(round(v * 1000))
            bar.setFormat(f"{v:.0%}")
        helps = {ESTIMATE_NAMES[k][0]: h for k, h in ESTIMATE_HELP.items()}
        for name, text in estimate_rows(d.estimates):
            name_label, value_label = QLabel(name), QLabel(text)
            value_label.setWordWrap(True)
            for w in (name_label, value_label):
                w.setToolTip(helps.get(name, ""))
            self.est_form.addRow(name_label, value_label)
        if d.flags:
            name_label, present = QLabel("Present"), QLabel(breakable(", ".join(d.flags), 12))
            present.setWordWrap(True)
            for w in (name_label, present):
                w.setToolTip("Every problem judged present, whatever the class")
            self.est_form.addRow(name_label, present)
        self.rationale.setText(d.rationale + (f"  ({d.backend})" if d.backend else ""))

    def set_plan(self, plan: Plan | None, note: str = "", why: str = "") -> None:
        """Show ``plan`` (None: ``note`` says why there is none). ``why``: why the plan is of
        another class than the one diagnosed, when it is not the photographer's choice (a
        reflection mask they made: class B)."""
        self.plan = plan
        self._updating = True
        self.steps.clear()
        if self.add_combo.count() == 0:
            for n in step_names():
                self.add_combo.addItem(n)
        if plan is not None:
            self.profile_label.setText(f"Profile: {plan.profile} · class {plan.label.value}"
                                       + (f" — {why}" if why else ""))
            for s in plan.steps:
                it = QListWidgetItem(s.name)
                it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                it.setCheckState(Qt.CheckState.Checked if s.enabled else Qt.CheckState.Unchecked)
                self.steps.addItem(it)
        else:
            self.profile_label.setText(note or "No plan yet (the plan is built when diagnosed)")
        self._updating = False
        self.steps.setCurrentRow(0 if plan and plan.steps else -1)
        self._show_params(self.steps.currentRow())
        self.mask_btn.setVisible(plan is not None and plan.label is Degradation.B
                                 or (self.diagnosis is not None
                                     and self.diagnosis.label is Degradation.B))
        self.refresh_estimate()

    def set_estimator(self, fn: Callable[[Plan], str | None] | None) -> None:
        """``fn(plan)`` -> one line of time/memory estimate (None: no estimate yet)."""
        self._estimator = fn
        self.refresh_estimate()

    def set_label_source(self, fn: Callable[[], Degradation | None] | None) -> None:
        """``fn()`` -> the class the photo's plan is made for with no class chosen in "Fix as"
        (None: the class diagnosed); "+" with no plan yet makes its plan of that class."""
        self._label_source = fn

    def refresh_estimate(self) -> None:
        """Ask the estimator again for the plan shown (what it knows has changed)."""
        text = None
        if self.plan is not None and self._estimator is not None:
            text = self._estimator(self.plan)
        self.estimate_label.setText(f"Estimate: {text}" if text else "")

    def set_status(self, text: str) -> None:
        # (a result's path is one long word: breakable, not wider than the panel)
        self.status.setText(breakable(text))

    def set_record(self, record: Mapping[str, Any] | None) -> None:
        """Show what Mend did to this file (the record it wrote into the file), or nothing."""
        text = describe_record(record)
        self.history.setText(text)
        self.history.setVisible(bool(text))

    # -- plan editing ---------------------------------------------------------------------
    def _on_override(self, _i: int) -> None:
        if not self._updating:
            self.override_requested.emit(self.override_label())

    def override_label(self) -> Degradation | None:
        v = self.override.currentData()
        return Degradation(v) if v else None

    def set_override(self, label: Degradation | None) -> None:
        self.override.setCurrentIndex(max(0, self.override.findData(label.value if label
                                                                        else None)))

    def reset_override(self) -> None:
        self.show_override(None)

    def show_override(self, label: Degradation | None) -> None:
        """Show the photo's chosen class (None: automatic) without asking for a new plan."""
        self._updating = True
        self.override.setCurrentIndex(max(0, self.override.findData(label.value if label
                                                                        else None)))
        self._updating = False

    def _edited(self) -> None:
        """The plan was edited here: say so (the window keeps it as the photo's plan)."""
        self.refresh_estimate()
        if self.plan is not None:
            self.plan_edited.emit(self.plan)

    def _on_step_toggled(self, item: QListWidgetItem) -> None:
        if self._updating or self.plan is None:
            return
        i = self.steps.row(item)
        s = self.plan.steps[i]
        self.plan = self.plan.replace_step(
            i, Step(s.name, s.params, item.checkState() == Qt.CheckState.Checked))
        self._edited()

    def _add_step(self) -> None:
        name = self.add_combo.currentText()
        if not name:
            return
        # (no plan yet: the class chosen in "Fix as" when there is one, its plan still on its
        # way; a chain of another class would be dropped at Fix, which runs the chosen class.
        # None chosen: the class the fix runs, B with a reflection mask of the photographer's)
        planned = self.override_label() or (self._label_source() if self._label_source
                                            else None)
        label = self.plan.label if self.plan else (planned or (
            self.diagnosis.label if self.diagnosis else Degradation.D))
        profile = self.plan.profile if self.plan else "custom"
        steps = tuple(self.plan.steps if self.plan else ()) + (Step(name, dict(step_defaults(name))),)
        self.set_plan(Plan(label, profile, steps))
        self.steps.setCurrentRow(len(steps) - 1)
        self._edited()

    def _remove_step(self) -> None:
        i = self.steps.currentRow()
        if self.plan is None or i < 0:
            return
        steps = list(self.plan.steps)
        del steps[i]
        self.set_plan(Plan(self.plan.label, self.plan.profile, tuple(steps)))
        self._edited()

    def _move_step(self, d: int) -> None:
        i = self.steps.currentRow()
        if self.plan is None or i < 0 or not 0 <= i + d < len(self.plan.steps):
            return
        steps = list(self.plan.steps)
        steps[i], steps[i + d] = steps[i + d], steps[i]
        self.set_plan(Plan(self.plan.label, self.plan.profile, tuple(steps)))
        self.steps.setCurrentRow(i + d)
        self._edited()

    def _show_params(self, i: int) -> None:
        while self.params_form.rowCount():
            self.params_form.removeRow(0)
        if self.plan is None or not 0 <= i < len(self.plan.steps):
            self.params_box.setTitle("Parameters")
            return
        s = self.plan.steps[i]
        self.params_box.setTitle(f"Parameters · {s.name}")
        params = {**step_defaults(s.name), **s.params}
        choices = step_choices(s.name)
        if not params:
            self.params_form.addRow(QLabel("This step has no parameters."))
        for key, value in params.items():
            self.params_form.addRow(key.replace("_", " "),
                                    self._editor(i, key, value, choices.get(key)))

    def _set_param(self, i: int, key: str, v: Any) -> None:
        if self.plan is None:
            return
        s = self.plan.steps[i]
        self.plan = self.plan.replace_step(i, Step(s.name, {**s.params, key: v}, s.enabled))
        self._edited()

    def _editor(self, i: int, key: str, value: Any,
                choices: tuple[Any, ...] | None = None) -> QWidget:
        setter = weak_slot(self, lambda p, v: p._set_param(i, key, v))

        if choices is None:
            choices = CHOICES.get(key)
        if choices is not None:
            w = _narrow(QComboBox(), 10)
            opts = list(choices)
            if value not in opts:
                opts.append(value)
            for o in opts:
                w.addItem(str(o), o)
            w.setCurrentIndex(opts.index(value))
            w.currentIndexChanged.connect(lambda _i: setter(w.currentData()))
            return w
        if isinstance(value, bool):
            cb = QCheckBox()
            cb.setChecked(value)
            cb.toggled.connect(setter)
            return cb
        if isinstance(value, int):
            sp = QSpinBox()
            lo, hi, _ = RANGES.get(key, (0, 10000, 1))
            sp.setRange(int(lo), int(hi))
            sp.setValue(value)
            sp.valueChanged.connect(setter)
            return sp
        if isinstance(value, float):
            ds = QDoubleSpinBox()
            lo, hi, st = RANGES.get(key, (0.0, 1000.0, 0.1))
            ds.setRange(lo, hi)
            ds.setSingleStep(st)
            ds.setDecimals(2)
            ds.setValue(value)
            ds.valueChanged.connect(setter)
            return ds
        le = QLineEdit(str(value))
        le.editingFinished.connect(lambda: setter(le.text()))
        return le


class _VerticalScroll(QScrollArea):
    """A scroll area that scrolls vertically only: its widget is as wide as the area, which is
    never narrower than the widget's minimum width (no part of it cut off at the right). No
    Tab stop of its own: Tab went from the photos to it, a stop that shows nothing, before the
    panel's first control (a control reached with Tab is scrolled into view all the same)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def setWidget(self, widget: QWidget) -> None:
        super().setWidget(widget)
        widget.installEventFilter(self)

    def eventFilter(self, obj, e) -> bool:
        if e.type() == QEvent.Type.LayoutRequest and obj is self.widget():
            self.updateGeometry()  # (its minimum width may have changed: rows came or went)
        return super().eventFilter(obj, e)

    def minimumSizeHint(self) -> QSize:
        w = self.widget()
        hint = super().minimumSizeHint()
        if w is None:
            return hint
        bar = self.verticalScrollBar().sizeHint().width()
        return QSize(w.minimumSizeHint().width() + bar + 2 * self.frameWidth(), hint.height())


def _narrow(combo: QComboBox, chars: int = 8) -> QComboBox:
    """``combo`` asking for ``chars`` characters' width at least, not its longest item's (a
    step name like "reflection_inpaint_lama" set the panel's, and the window's, minimum
    width); its list still shows the items whole."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    return combo
