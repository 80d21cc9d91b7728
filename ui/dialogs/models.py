"""Model manager over the manifest: size, licence, status; download (resumable), verify, remove,
import an offline pack; and the first-run profile recommendation for this computer."""
from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from engine.errors import Cancelled
from engine.progress import CancelToken

from ..app import weak_slot
from ..engine_client import EngineClient
from ..messages import describe_error

COLUMNS = ("Model", "Task", "Size", "Licence", "Status", "Profiles")
STATUS_COLOURS = {"verified": "#3fb27f", "bundled": "#3fb27f", "unpinned": "#e0a43a",
                  "partial": "#e0a43a", "corrupt": "#e05a4f", "missing": "#8a8f98",
                  "not configured": "#8a8f98", "downloading": "#3a8ee6", "verifying…": "#3a8ee6",
                  "verifying": "#3a8ee6", "checking…": "#8a8f98"}
CHECKING = "checking…"  # a model's status not known yet (being checked in the pool)
# a verify's hash reports every 1 MB chunk (~1000 a second from a fast disk): passed on to the
# dialog when the bar's value (0-1000) changes, at most 1001 times a verify, never behind it
VERIFY_STEPS = 1000


def human_size(n: float) -> str:
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def model_status(store: Any, model_id: str, token: CancelToken | None = None) -> str:
    """``store.status(model_id)``, which hashes a file not recorded yet (seconds for a GB);
    ``token`` stops that hash between chunks (raises ``Cancelled``). A partial model's says
    how much of it is on disk: "partial: 2 of 3 files, 1.2 of 4.4 GB"."""
    status = store.status(model_id, token=token)
    if status == "partial":
        status += ": " + store.presence(model_id, token=token).describe()
    return status


def profile_download(store: Any, profile: str,
                     token: CancelToken | None = None) -> tuple[list[str], int]:
    """Models of ``profile`` not installed yet, and their total size in bytes. ``token`` stops
    it (``Cancelled``), a status's hash included."""
    from engine.restore.profiles import profile_models

    missing, total = [], 0
    for mid in sorted(profile_models(profile)):
        try:
            spec = store.spec(mid)
            if model_status(store, mid, token) not in ("verified", "bundled", "unpinned"):
                missing.append(mid)
                total += spec.total_size
        except Cancelled:
            raise
        except Exception:  # noqa: BLE001, S112 - an unknown id in a profile is not fatal here
            continue
    return missing, total


class _StatusSignals(QObject):
    """What the status checks and the verifies (in the pools) report back to the dialog."""

    status = Signal(int, str, str)  # check number, model id, status
    ended = Signal(int)  # check number: every model's status was reported
    verify = Signal(str, float, str)  # model id, fraction, text: a verify's hash progress


class _StatusChecks:
    """The dialog's status checks, shared with the one pool task running them: the newest
    check's number and model ids; whether the task runs; whether the dialog closed, and the
    token its closing cancels (a hash under way stops at its next chunk; a new one once the
    dialog is shown again)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latest = 0
        self.ids: list[str] = []
        self.running = False
        self.closed = False
        self.token = CancelToken()


class ModelManagerDialog(QDialog):
    statuses_checked = Signal()  # every model's status, as the newest refresh found it, shown

    def __init__(self, client: EngineClient, store: Any | None = None, parent=None,
                 first_run: bool = False) -> None:
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.resize(900, 520)
        self.client = client
        if store is None:
            from engine.models.store import ModelStore

            store = ModelStore()
        self.store = store
        # downloads running now, this dialog's or an earlier one's (the client keeps them
        # while a closed dialog is gone): model id -> last fraction
        running = client.model_downloads()
        self._downloading: dict[str, float] = {m: f for m, (f, _msg) in running.items()}
        # verifies queued or running (this dialog's): model id -> how many (a double click)
        self._verifying: dict[str, int] = {}
        # the running verifies' hash progress, as last reported: model id -> (fraction, text)
        self._verify_progress: dict[str, tuple[float, str]] = {}
        # each model's status as last checked (in the pool: see refresh)
        self._status: dict[str, str] = {}
        self._checks = _StatusChecks()
        self._status_signals = _StatusSignals()
        self._status_signals.status.connect(self._on_status)
        self._status_signals.ended.connect(self._on_statuses_ended)
        self._status_signals.verify.connect(self._on_verify_progress)
        lay = QVBoxLayout(self)
        self.recommend = QLabel("Checking this computer…" if first_run else "")
        self.recommend.setWordWrap(True)
        self.recommend.setObjectName("recommend")
        lay.addWidget(self.recommend)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        hh.setStretchLastSection(True)
        # the status (is it installed?) shown next to the size, before the licences: their long
        # texts pushed it out of view at the dialog's size (the column keeps its index)
        hh.moveSection(COLUMNS.index("Status"), COLUMNS.index("Licence"))
        lay.addWidget(self.table, 1)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setVisible(False)
        lay.addWidget(self.progress)
        self.note = QLabel(f"Store: {self.store.root}")
        self.note.setObjectName("dim")
        self.note.setWordWrap(True)
        lay.addWidget(self.note)
        row = QHBoxLayout()
        self.pull_btn = QPushButton("Download")
        self.cancel_btn = QPushButton("Stop")
        self.cancel_btn.setToolTip("Stop the selected models' downloads and verifications")
        self.verify_btn = QPushButton("Verify")
        self.remove_btn = QPushButton("Remove")
        self.import_btn = QPushButton("Import pack…")
        self.profile_btn = QPushButton("Download recommended")
        close = QPushButton("Close")
        for b in (self.pull_btn, self.cancel_btn, self.verify_btn, self.remove_btn,
                  self.import_btn, self.profile_btn):
            row.addWidget(b)
        row.addStretch(1)
        row.addWidget(close)
        lay.addLayout(row)
        self.pull_btn.clicked.connect(
            weak_slot(self, lambda d: [d.pull(m) for m in d.selected()]))
        self.cancel_btn.clicked.connect(
            weak_slot(self, lambda d: [d.client.cancel_model_task(m) for m in d.selected()]))
        self.verify_btn.clicked.connect(
            weak_slot(self, lambda d: [d.verify(m) for m in d.selected()]))
        self.remove_btn.clicked.connect(self._remove)
        self.import_btn.clicked.connect(self._import)
        self.profile_btn.clicked.connect(self._pull_recommended)
        close.clicked.connect(self.accept)
        client.model_progress.connect(self._on_progress)
        client.model_finished.connect(self._on_done)
        client.model_failed.connect(self._on_failed)
        self._recommended: list[str] = []
        self._recommending = False  # the recommendation's task is queued or running
        self.profile_btn.setEnabled(False)
        self.refresh()
        if running:  # reopened during a download: show where it is
            mid, (fraction, message) = next(reversed(running.items()))
            self._show_progress(mid, fraction, message or "downloading")
        self._start_recommendation()

    # -- table ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Fill the table at once, each model's status as last known ("checking…" before its
        first check), and check the statuses again in the client's pool: a model file the
        store has not recorded yet is hashed (seconds for a GB file), and every model's files
        are looked at on the disk. They arrive one by one (``_on_status``); a newer refresh,
        or the dialog's closing, drops the older check's (which stops at its next model; the
        closing stops the hash under way too, between two of its chunks)."""
        specs = list(self.store.manifest)
        self.table.setRowCount(len(specs))
        for r, spec in enumerate(specs):
            lic = spec.license + ("" if spec.commercial_use else "  ⚠ non-commercial")
            cells = (spec.name or spec.id, spec.task,
                     human_size(spec.total_size) if spec.total_size else "–",
                     lic, "", ", ".join(spec.profiles))
            for c, text in enumerate(cells):
                it = QTableWidgetItem(text)
                if c == 0:
                    it.setData(Qt.ItemDataRole.UserRole, spec.id)
                    it.setToolTip(f"{spec.id}\n{spec.description}\n{spec.notes}".strip())
                if c == 3 and not spec.commercial_use:
                    it.setForeground(QColor("#e0a43a"))
                    it.setToolTip("Not for commercial use: " + (spec.license_url or spec.license))
                self.table.setItem(r, c, it)
            self._show_status(r, spec.id)
        self._check_statuses([spec.id for spec in specs])

    def _show_status(self, row: int, model_id: str) -> None:
        """``model_id``'s status cell (in ``row``): downloading / verifying while it is, else
        its status as last checked."""
        if model_id in self._downloading:
            status = f"downloading {self._downloading[model_id]:.0%}"
        elif model_id in self._verifying:
            shown = self._verify_progress.get(model_id)
            status = f"verifying {shown[0]:.0%}" if shown else "verifying…"
        else:
            status = self._status.get(model_id, CHECKING)
        it = self.table.item(row, 4)
        it.setText(status)
        # ("downloading 40%", "partial: 2 of 3 files, …": coloured as downloading, partial)
        key = status if status in STATUS_COLOURS else status.split(" ")[0].rstrip(":")
        it.setForeground(QColor(STATUS_COLOURS.get(key, "#e05a4f")))

    def _check_statuses(self, ids: list[str]) -> None:
        """Check ``ids``' statuses in the client's pool, by one task at a time: a check asked
        while one runs is taken by that task once its current model is done (never two
        hashes of one file at once, never two pool threads held)."""
        checks, store, sig = self._checks, self.store, self._status_signals
        with checks.lock:
            if checks.closed:
                return  # (a model task ending after the dialog closed)
            checks.latest += 1
            checks.ids = list(ids)
            if checks.running:
                return  # (the running task takes it)
            checks.running = True

        def work() -> None:
            while True:
                with checks.lock:
                    n, todo, token = checks.latest, checks.ids, checks.token
                for mid in todo:
                    if checks.latest != n or checks.closed:
                        break  # a newer check: started again; the dialog closed: ended
                    try:
                        status = model_status(store, mid, token)
                    except Cancelled:
                        break  # the dialog closed during a hash: ended (unrecorded)
                    except Exception as e:  # noqa: BLE001 - said in its row
                        status = f"error: {describe_error(e)}"
                    sig.status.emit(n, mid, status)  # (sig lives while this refers to it)
                else:
                    sig.ended.emit(n)
                with checks.lock:
                    if checks.latest == n or checks.closed:
                        checks.running = False
                        return

        self.client.run_in_pool(work)

    def _on_status(self, n: int, model_id: str, status: str) -> None:
        if n != self._checks.latest or self._checks.closed:
            return  # a check a newer one replaced, or the dialog closed meanwhile
        self._status[model_id] = status
        r = self.row_of(model_id)
        if r >= 0:
            self._show_status(r, model_id)

    def _on_statuses_ended(self, n: int) -> None:
        if n == self._checks.latest and not self._checks.closed:
            self.statuses_checked.emit()

    def done(self, result: int) -> None:
        """Closed (accepted or rejected): the status checks under way stop, unheard."""
        self._stop_checks()
        super().done(result)

    def closeEvent(self, e) -> None:
        super().closeEvent(e)
        if e.isAccepted():
            self._stop_checks()

    def _stop_checks(self) -> None:
        """The status check under way stops, in the middle of a hash too (at its next chunk:
        a GB file's hash ran on, and held the quit, 0.8 s from the page cache, more from a
        disk). A dialog deleted on close (the window's)
        stops its recommendation too (its own statuses: hashes as well); one kept for showing
        again lets it end, to be shown then."""
        with self._checks.lock:
            if self._checks.closed:
                return
            self._checks.closed = True
            self._checks.token.cancel()
        if self._recommending and self.testAttribute(Qt.WidgetAttribute.WA_DeleteOnClose):
            self.client.cancel_model_task("recommend")

    def showEvent(self, e) -> None:
        super().showEvent(e)
        if self._checks.closed:  # shown again: its statuses are checked again
            with self._checks.lock:
                self._checks.closed = False
                self._checks.token = CancelToken()
            self.refresh()

    def selected(self) -> list[str]:
        rows = sorted({ix.row() for ix in self.table.selectedIndexes()})
        return [self.table.item(r, 0).data(Qt.ItemDataRole.UserRole) for r in rows]

    def row_of(self, model_id: str) -> int:
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).data(Qt.ItemDataRole.UserRole) == model_id:
                return r
        return -1

    # -- actions (all in the client's model pool) -----------------------------------------
    def pull(self, model_id: str) -> None:
        if model_id in self._downloading or model_id in self.client.model_downloads():
            return  # already downloading (a double click): one download, one Stop
        store = self.store
        self._downloading[model_id] = 0.0

        def work(report, token):
            def on_progress(dp) -> None:
                report(dp.done / dp.total if dp.total else 0.0,
                       f"{dp.file} {human_size(dp.done)} / {human_size(dp.total)}"
                       f" · {human_size(dp.speed)}/s")

            return ("pull", store.pull(model_id, on_progress, token))

        self.client.model_task(model_id, work, download=True)
        self.refresh()

    def verify(self, model_id: str) -> None:
        """Hash every file of ``model_id`` again, in the model pool (a model of several GB takes
        minutes); Stop cancels it through the task's token, which the store's verify checks.
        The hash's progress comes back by a signal, as a download's does (the dialog's own: a
        download of the same model queued meanwhile reports through the client's), each time
        the bar's value changes (``VERIFY_STEPS``): the bar and the row show how far it is."""
        store, sig = self.store, self._status_signals
        self._verifying[model_id] = self._verifying.get(model_id, 0) + 1

        def work(report, token):
            last = [-1]

            def on_hash(dp) -> None:  # (in the pool's thread: queued to the GUI thread)
                step = int(dp.fraction * VERIFY_STEPS)
                if step == last[0]:
                    return
                last[0] = step
                sig.verify.emit(model_id, dp.fraction, f"verifying {dp.fraction:.0%} · "
                                f"{dp.file} {human_size(dp.done)} / {human_size(dp.total)}")

            # (its end always comes back as a "verify" result, an error too: a failure alone
            # would not say whether the model's verify or its download ended)
            try:
                token.check()  # (stopped while it waited behind a download)
                report(0.0, "verifying")
                return ("verify", store.verify(model_id, token=token, hash_progress=on_hash))
            except Exception as e:  # noqa: BLE001 - said in the dialog, as a failure would be
                return ("verify", e)

        self.client.model_task(model_id, work)
        self._show_verifying()

    def _verify_ended(self, model_id: str) -> None:
        self._verify_progress.pop(model_id, None)  # (a verify queued after it starts afresh)
        n = self._verifying.pop(model_id, 0)
        if n > 1:
            self._verifying[model_id] = n - 1

    def _show_verifying(self) -> None:
        """Verifies under way: said in their rows, and, while no download shows its own, by the
        bar that Stop stops: the hash's progress of the verify that reported last, a busy bar
        until one has."""
        for mid in self._verifying:
            r = self.row_of(mid)
            if r >= 0 and mid not in self._downloading:
                self._show_status(r, mid)
        if self._downloading:
            return  # (the download's bar)
        if not self._verifying:
            self.progress.setVisible(False)
            self.progress.setRange(0, 1000)
            return
        shown = next(((m, p) for m, p in reversed(self._verify_progress.items())
                      if m in self._verifying), None)
        if shown is None:
            self.progress.setRange(0, 0)
        else:
            mid, (fraction, message) = shown
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(fraction * VERIFY_STEPS))
            self.progress.setFormat(f"{mid}: {message}")
        self.progress.setToolTip("Verifying " + ", ".join(self._verifying)
                                 + " (select it and click Stop to stop)")
        self.progress.setVisible(True)

    def _remove(self) -> None:
        ids = self.selected()
        if not ids:
            return
        if QMessageBox.question(self, "Remove models",
                                f"Delete {', '.join(ids)} from disk?") != QMessageBox.StandardButton.Yes:
            return
        store = self.store
        for mid in ids:
            self.client.model_task(mid, lambda report, token, m=mid: ("remove", store.remove(m)))

    def _import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import an offline model pack", "",
                                              "Model packs (*.zip);;All files (*)")
        if not path:
            path = QFileDialog.getExistingDirectory(self, "…or import a folder of model files")
        if path:
            self.import_from(Path(path))

    def import_from(self, path: Path) -> None:
        store = self.store
        self.client.model_task(f"import:{path.name}",
                               lambda report, token: ("import", store.import_path(path)))

    def _start_recommendation(self) -> None:
        store = self.store

        def work(report, token):
            from engine.devices import select_device, torch_missing_reason
            from engine.restore.profiles import recommend_profile

            token.check()  # (stopped while it waited behind a download)
            dev = select_device("auto")
            prof = recommend_profile(dev)
            missing, total = profile_download(store, prof, token)
            # (without PyTorch the profile's models cannot run: auto uses the built-in
            # methods, as Engine.resolve_profile and mend doctor say)
            return ("recommend", (dev, prof, missing, total, torch_missing_reason()))

        self._recommending = True
        self.client.model_task("recommend", work)

    # -- results --------------------------------------------------------------------------
    def _on_progress(self, model_id: str, fraction: float, message: str) -> None:
        if model_id in self._downloading:
            self._downloading[model_id] = fraction
            self._show_progress(model_id, fraction, message)

    def _on_verify_progress(self, model_id: str, fraction: float, message: str) -> None:
        if model_id not in self._verifying:
            return  # (ended meanwhile)
        self._verify_progress.pop(model_id, None)  # (the last reported: shown in the bar)
        self._verify_progress[model_id] = (fraction, message)
        self._show_verifying()

    def _show_progress(self, model_id: str, fraction: float, message: str) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setVisible(True)
        self.progress.setValue(int(fraction * 1000))
        self.progress.setFormat(f"{model_id}: {message}")
        r = self.row_of(model_id)
        if r >= 0:
            self.table.item(r, 4).setText(f"downloading {fraction:.0%}")

    def _on_done(self, model_id: str, result: Any) -> None:
        kind, value = result if isinstance(result, tuple) and len(result) == 2 else ("", result)
        self._status.pop(model_id, None)  # (checked again by the refresh below)
        if model_id not in self.client.model_downloads():  # (not a verify ending meanwhile)
            self._downloading.pop(model_id, None)
        if kind == "verify":
            self._verify_ended(model_id)
        self.progress.setVisible(bool(self._downloading))
        if kind == "recommend":
            self._recommending = False
            dev, prof, missing, total, no_torch = value
            self._recommended = missing
            if no_torch:
                self.recommend.setText(
                    f"<b>This computer ({dev.name}) uses the built-in profile:</b> the models "
                    f"of the “{prof}” profile run on PyTorch, which {html.escape(no_torch)}. "
                    + (f"They can be downloaded now ({len(missing)} model(s), "
                       f"{human_size(total)}) and run once PyTorch is there." if missing else
                       "They are installed and run once PyTorch is there."))
            elif missing:
                self.recommend.setText(
                    f"<b>Recommended for this computer ({dev.name}): the “{prof}” profile.</b> "
                    f"It would download {len(missing)} model(s), {human_size(total)}: "
                    f"{', '.join(missing)}. The built-in profile works without any download.")
            else:
                self.recommend.setText(f"<b>This computer ({dev.name}) uses the “{prof}” "
                                       "profile; all its models are installed.</b>")
            self.profile_btn.setEnabled(bool(missing))
            self._show_verifying()
            return
        if kind == "verify" and isinstance(value, BaseException):
            self.note.setText(f"{model_id}: verification stopped" if isinstance(
                value, Cancelled) else f"{model_id}: {describe_error(value)}")
        elif kind == "verify":
            rep = value
            msg = f"{model_id}: {rep.status}"
            if getattr(rep, "corrupt", None):
                msg += f" — damaged: {', '.join(rep.corrupt)}"
            if getattr(rep, "missing", None):
                msg += f" — missing: {', '.join(rep.missing)}"
            self.note.setText(msg)
        elif kind == "import":
            rep = value
            self.note.setText(f"Imported {len(rep.imported)} file(s), skipped "
                              f"{len(rep.skipped)}, rejected {len(rep.rejected)}.")
        elif kind == "remove":
            self.note.setText(f"Removed {model_id} ({human_size(value)} freed).")
        elif kind == "pull":
            self.note.setText(f"{model_id}: {value}")
        self.refresh()
        self._show_verifying()

    def _on_failed(self, model_id: str, message: str) -> None:
        self._status.pop(model_id, None)  # (checked again by the refresh below)
        if model_id not in self.client.model_downloads():
            self._downloading.pop(model_id, None)
        self.progress.setVisible(bool(self._downloading))
        self.note.setText(f"{model_id}: {message}")
        if model_id == "recommend":
            self._recommending = False
            self.recommend.setText(f"Could not check this computer: {message}")
        self.refresh()
        self._show_verifying()

    def _pull_recommended(self) -> None:
        for mid in self._recommended:
            self.pull(mid)
