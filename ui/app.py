"""QApplication set-up: high-DPI, dark theme, logging to a rotating file."""
from __future__ import annotations

import inspect
import logging
import logging.handlers
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import QApplication, QLabel

from engine.resources import resource

from .settings import APP, ORG, data_dir

STYLE = resource("style", "dark.qss")
ICON = resource("icons", "mend-app.png")


def weak_slot(owner: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A slot that calls ``fn(owner, *signal_args)`` through a weak reference to ``owner``.

    PySide holds a lambda connected to a signal for as long as the sender lives. A lambda that
    captures ``self`` and is connected to a signal of one of the window's own widgets (or of the
    engine client) therefore keeps the window's Python wrapper alive from C++, where Python's
    collector cannot see it: a closed window was never freed, and every UI test's window, engine
    client, worker and panels survived until the end of the run (collecting them there crashed
    the interpreter). PySide holds bound methods weakly; this does the same for the slots that
    need arguments. Like a lambda slot, ``fn`` receives as many signal arguments as it takes.
    Also for callbacks a child keeps (returns ``fn``'s result; None once ``owner`` is gone).
    """
    for cell in fn.__closure__ or ():
        try:
            captured = cell.cell_contents
        except ValueError:  # a variable the enclosing function has not assigned yet
            continue
        if captured is owner:
            raise TypeError("a weak slot must not capture its owner (use the first argument)")
    ref = weakref.ref(owner)
    code = fn.__code__
    n = None if code.co_flags & inspect.CO_VARARGS else code.co_argcount - 1

    def slot(*args: Any) -> Any:
        o = ref()
        if o is None:
            return None
        return fn(o, *(args if n is None else args[:n]))

    return slot


def dark_palette() -> QPalette:
    p = QPalette()
    roles = {
        QPalette.ColorRole.Window: "#1e2024", QPalette.ColorRole.WindowText: "#e4e6ea",
        QPalette.ColorRole.Base: "#1a1c20", QPalette.ColorRole.AlternateBase: "#23262b",
        QPalette.ColorRole.ToolTipBase: "#2a2d33", QPalette.ColorRole.ToolTipText: "#e4e6ea",
        QPalette.ColorRole.Text: "#e4e6ea", QPalette.ColorRole.Button: "#2a2d33",
        QPalette.ColorRole.ButtonText: "#e4e6ea", QPalette.ColorRole.BrightText: "#ffffff",
        QPalette.ColorRole.Highlight: "#3a6ea5", QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.Link: "#6aaef0", QPalette.ColorRole.Mid: "#5a5f68",
        QPalette.ColorRole.PlaceholderText: "#7a7f88",
    }
    for role, colour in roles.items():
        p.setColor(role, QColor(colour))
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor("#6a6f78"))
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor("#6a6f78"))
    return p


# the log is rotated once, at start-up, when it has grown past this. Never while running: two
# Mend windows (two processes) append to one file, and on Windows the other one's open handle
# makes a rename fail (WinError 32) - a RotatingFileHandler then lost every later record
LOG_MAX_BYTES = 2 << 20
LOG_BACKUPS = 3


def setup_logging() -> Path | None:
    try:
        d = data_dir() / "logs"
        d.mkdir(parents=True, exist_ok=True)
        path = d / "mend.log"
        # (maxBytes=0: the handler itself never rolls over)
        h = logging.handlers.RotatingFileHandler(path, maxBytes=0, backupCount=LOG_BACKUPS,
                                                 encoding="utf-8")
        not_rotated = None
        try:
            if path.stat().st_size > LOG_MAX_BYTES:
                h.doRollover()
        except OSError as e:  # another Mend has it open (Windows): keep appending to it
            not_rotated = e  # (the handler opens the file again at the next record)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("mend")
        root.addHandler(h)
        root.setLevel(logging.INFO)
        if not_rotated is not None:
            root.info("the log was not rotated (another Mend has it open?): %s", not_rotated)
        # libraries' own warnings (Pillow's "Corrupt EXIF data" on a damaged file...) go to the
        # log file, as the CLI does, not to a terminal the photographer never sees; the photo's
        # own error says what matters
        logging.captureWarnings(True)
        pw = logging.getLogger("py.warnings")
        pw.addHandler(h)
        pw.propagate = False
        return path
    except OSError:
        return None


def create_app(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance()
    if app is not None:
        return app  # type: ignore[return-value]
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(
        Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication(argv if argv is not None else sys.argv[:1])
    app.setOrganizationName(ORG)
    app.setApplicationName(APP)
    app.setApplicationDisplayName("Mend")
    load_app_icon(app)
    apply_theme(app)
    setup_logging()
    return app


def load_app_icon(app: QApplication) -> None:
    """Read the app icon (once, at start-up, before the event loop) into memory: what shows it
    later (the splash, the windows) reads no disk on the GUI thread. None found: no icon."""
    pix = QPixmap(str(ICON))  # (a null pixmap when the file is missing or unreadable)
    if not pix.isNull():
        app.setWindowIcon(QIcon(pix))


def starting_splash(message: str) -> QLabel:
    """A small "starting" window with ``message``, for the wait before the main window; close
    it once that is shown. A plain frameless label, not a QSplashScreen: that one's show()
    waits for the window system holding Python's GIL (a full second on the offscreen platform),
    which stalls the thread doing the work being waited for."""
    pix = QPixmap(420, 140)
    pix.fill(QColor("#1e2024"))
    painter = QPainter(pix)
    icon = QApplication.windowIcon()  # (read by create_app: no disk here)
    img = icon.pixmap(icon.actualSize(QSize(1024, 1024))) if not icon.isNull() else QPixmap()
    if not img.isNull():
        img = img.scaled(72, 72, Qt.AspectRatioMode.KeepAspectRatio,
                         Qt.TransformationMode.SmoothTransformation)
        painter.drawPixmap(24, (pix.height() - img.height()) // 2, img)
    painter.setPen(QColor("#e4e6ea"))
    painter.drawText(pix.rect().adjusted(112, 0, -16, 0),
                     int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), message)
    painter.end()
    splash = QLabel()
    splash.setWindowFlags(Qt.WindowType.SplashScreen | Qt.WindowType.FramelessWindowHint)
    splash.setPixmap(pix)
    splash.setWindowTitle("Mend")
    splash.show()
    return splash


def apply_theme(app: QApplication) -> None:
    app.setStyle("Fusion")
    app.setPalette(dark_palette())
    try:
        app.setStyleSheet(STYLE.read_text())
    except OSError:
        pass
