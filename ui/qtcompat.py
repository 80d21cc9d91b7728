"""Work-around for a reference-counting bug in PySide6 6.12 on Python < 3.12.

Measured here (PySide6 6.12.0, Python 3.11.7): every ``Signal.emit(...)`` call drops one
reference to the ``True``/``False`` it returns, and every ``QCoreApplication.processEvents()``
drops one reference to ``None``. On Python 3.12+ these objects are immortal and nothing happens;
on 3.11 the interpreter aborts ("Fatal Python error: bool_dealloc / none_dealloc") after a few
hundred signals — i.e. within seconds of real use.

``install()`` probes whether the running PySide6 has the bug and, only then, gives ``None``,
``True`` and ``False`` a large reference reserve and keeps it topped up from a timer. The three
objects are never freed anyway, so extra references cost nothing. Remove this module once the
project pins a PySide6 without the bug (or Python >= 3.12).
"""
from __future__ import annotations

import ctypes
import sys

RESERVE = 1 << 28
LOW_WATER = 1 << 27

_installed = False
_timer = None
leaks: dict[str, int] = {}


def _refcnt(obj: object) -> ctypes.c_ssize_t:
    return ctypes.c_ssize_t.from_address(id(obj))  # ob_refcnt is the first field of PyObject


def probe() -> dict[str, int]:
    """References lost per call: {"emit": n, "processEvents": m} (0 when the bug is absent)."""
    from PySide6.QtCore import QCoreApplication, QObject, Signal

    class _P(QObject):
        sig = Signal(int)

    p = _P()
    p.sig.connect(lambda _v: None)
    n = 50
    before = sys.getrefcount(True) + sys.getrefcount(False)
    for _ in range(n):
        p.sig.emit(1)
    emit_loss = (before - (sys.getrefcount(True) + sys.getrefcount(False))) // n
    pe_loss = 0
    if QCoreApplication.instance() is not None:
        before = sys.getrefcount(None)
        for _ in range(n):
            QCoreApplication.processEvents()
        pe_loss = (before - sys.getrefcount(None)) // n
    _top_up(force=emit_loss > 0 or pe_loss > 0, amount=(emit_loss + pe_loss) * n)
    return {"emit": max(0, emit_loss), "processEvents": max(0, pe_loss)}


def _top_up(force: bool = False, amount: int = 0) -> None:
    if amount > 0:  # give back what the probe itself took
        for obj in (None, True, False):
            _refcnt(obj).value += amount
    if not (force or _installed):
        return
    if sys.version_info >= (3, 12):
        return  # immortal objects
    for obj in (None, True, False):
        c = _refcnt(obj)
        if c.value < LOW_WATER:
            c.value += RESERVE


def install() -> dict[str, int]:
    """Probe and, when PySide6 leaks, guard against it. Idempotent; needs a QCoreApplication
    for the timer (without one only the initial reserve is given)."""
    global _installed, _timer
    if _installed:
        _top_up()
        return leaks
    if sys.version_info >= (3, 12):
        _installed = True
        return leaks
    leaks.update(probe())
    if any(leaks.values()):
        _installed = True
        _top_up(force=True)
        from PySide6.QtCore import QCoreApplication, QTimer

        if QCoreApplication.instance() is not None:
            _timer = QTimer()
            _timer.setInterval(1000)
            _timer.timeout.connect(_top_up)
            _timer.start()
    else:
        _installed = True
    return leaks
