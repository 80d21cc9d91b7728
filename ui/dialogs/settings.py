"""Settings dialog over AppSettings (saved with QSettings)."""
from __future__ import annotations

import os
from dataclasses import replace

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..settings import AppSettings


def _combo(items: list[tuple[str, object]], value: object) -> QComboBox:
    c = QComboBox()
    for text, data in items:
        c.addItem(text, data)
    i = c.findData(value)
    c.setCurrentIndex(max(0, i))
    return c


class SettingsDialog(QDialog):
    def __init__(self, settings: AppSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self._orig = settings
        s = settings
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.device = _combo([("Automatic (GPU if present)", "auto"), ("NVIDIA CUDA", "cuda"),
                              ("Apple MPS", "mps"), ("CPU", "cpu")], s.device)
        self.precision = _combo([("Automatic", "auto"), ("fp32", "fp32"), ("fp16", "fp16"),
                                 ("bf16", "bf16")], s.precision)
        self.tile = QSpinBox()
        from engine.pipeline import MAX_TILE, MIN_TILE  # (what --tile and a plan's tile take)

        self.tile.setRange(MIN_TILE, MAX_TILE)
        self.tile.setSingleStep(64)
        self.tile.setValue(s.tile_size)
        self.threads = QSpinBox()
        self.threads.setRange(0, 256)
        self.threads.setSpecialValueText("Automatic")
        self.threads.setValue(s.threads)
        self.profile = _combo([("Automatic", "auto"), ("Built-in (no download)", "builtin"),
                               ("Laptop", "laptop"), ("Quality", "quality")], s.profile)
        self.backend = _combo([("Automatic", "auto"), ("Built-in analyzer", "builtin"),
                               ("CLIP", "clip"), ("Vision-language model", "vlm")], s.backend)
        self.out_dir = QLineEdit(s.out_dir)
        self.out_dir.setPlaceholderText("<photo folder>/mended")
        self.out_dir.setToolTip(
            "Empty: the results go to a folder “mended” beside each photo. A name or a relative "
            "path (“results”) is a folder beside each photo too; a full path (or ~/…) gathers "
            "every result there, a subfolder's photos in the same subfolder")
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_dir, 1)
        out_row.addWidget(browse)
        self.suffix = QLineEdit(s.suffix)
        self.format = _combo([("Same as the photo", ""), ("JPEG", "jpeg"), ("PNG", "png"),
                              ("TIFF", "tiff"), ("WebP", "webp")], s.format)
        self.quality = QSpinBox()
        self.quality.setRange(1, 100)
        self.quality.setValue(s.quality)
        self.bit_depth = _combo([("Same as the photo", 0), ("8-bit", 8), ("16-bit", 16)],
                                s.bit_depth)
        self.keep_metadata = QCheckBox("Keep EXIF and XMP (camera, GPS, dates)")
        self.keep_metadata.setToolTip("The ICC colour profile is always kept: without it the "
                                      "colours would change.")
        self.keep_metadata.setChecked(s.keep_metadata)
        self.offline = QCheckBox("Offline mode (never download)")
        self.offline.setChecked(s.offline)
        self.guard = QCheckBox("Regression guard (keep the original if the result looks worse)")
        self.guard.setChecked(s.guard)
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        form.addRow("Tile size", self.tile)
        form.addRow("Threads", self.threads)
        form.addRow("Profile", self.profile)
        form.addRow("Diagnosis", self.backend)
        form.addRow("Output folder", out_row)
        form.addRow("Name suffix", self.suffix)
        form.addRow("Format", self.format)
        form.addRow("JPEG/WebP quality", self.quality)
        form.addRow("Bit depth", self.bit_depth)
        form.addRow("", self.keep_metadata)
        form.addRow("", self.offline)
        form.addRow("", self.guard)
        lay.addLayout(form)
        bb = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                              | QDialogButtonBox.StandardButton.Cancel)
        bb.accepted.connect(self.accept)
        bb.rejected.connect(self.reject)
        lay.addWidget(bb)

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Output folder", self.out_dir.text())
        if d:
            self.out_dir.setText(d)

    def value(self) -> AppSettings:
        return replace(
            self._orig, device=self.device.currentData(), precision=self.precision.currentData(),
            tile_size=self.tile.value(), threads=self.threads.value(),
            profile=self.profile.currentData(), backend=self.backend.currentData(),
            # ("~/Mend results" typed: the home folder's, not a folder named "~" wherever Mend
            # was started from)
            out_dir=os.path.expanduser(self.out_dir.text().strip()),
            # (a separator in the suffix would write results outside the output folder)
            suffix="".join(c for c in self.suffix.text().strip() if c not in "/\\:\0") or "_mend",
            format=self.format.currentData(), quality=self.quality.value(),
            bit_depth=int(self.bit_depth.currentData()),
            keep_metadata=self.keep_metadata.isChecked(), offline=self.offline.isChecked(),
            guard=self.guard.isChecked())
