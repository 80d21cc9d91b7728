"""Progress reporting with sub-ranges, and a cancel token checked in every tile and step."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .errors import Cancelled

ProgressCallback = Callable[[float, str], None]


class CancelToken:
    """Thread-safe flag; ``check()`` raises :class:`Cancelled` once set.

    ``committed`` says the job has passed its point of no return (its result is being written,
    see :meth:`Progress.commit`): a cancel no longer stops it, and whoever would interrupt it
    from outside (the CLI's Ctrl+C / SIGTERM handler) lets it finish and report its result."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._committed = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def commit(self) -> None:
        self._committed.set()

    @property
    def committed(self) -> bool:
        return self._committed.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()


class Progress:
    """Reports a fraction in [0, 1] of a job through ``callback(fraction, message)``.

    ``sub(offset, length)`` returns a child whose own 0..1 maps onto
    ``[offset, offset + length]`` of this one, so a chain hands each step a slice.
    ``check()`` raises :class:`Cancelled` when the token was cancelled.
    """

    def __init__(
        self,
        callback: ProgressCallback | None = None,
        token: CancelToken | None = None,
        *,
        _offset: float = 0.0,
        _length: float = 1.0,
        _root: Progress | None = None,
    ) -> None:
        self.token = token or CancelToken()
        self._callback = callback
        self._offset = _offset
        self._length = _length
        # the root's shared state lives on the root; a root does not point at itself (that
        # would be a reference cycle, and every job's Progress would wait for the collector)
        self._parent_root = _root
        if _root is None:
            self.last_fraction = 0.0
            self.last_message = ""
            self.started = time.monotonic()
            self._eta_origin = 0.0  # the fraction at ``started`` (see restart_eta)
            self._lock = threading.Lock()

    @property
    def _root(self) -> Progress:
        return self if self._parent_root is None else self._parent_root

    def sub(self, offset: float, length: float) -> Progress:
        return Progress(
            self._callback,
            self.token,
            _offset=self._offset + offset * self._length,
            _length=length * self._length,
            _root=self._root,
        )

    def check(self) -> None:
        self.token.check()

    def update(self, fraction: float, message: str = "") -> None:
        """Report ``fraction`` (0..1 of this range) and check for cancel."""
        self.token.check()
        f = self._offset + max(0.0, min(1.0, fraction)) * self._length
        root = self._root
        with root._lock:
            root.last_fraction = max(root.last_fraction, f)
            if message:
                root.last_message = message
            f = root.last_fraction
            msg = root.last_message
        if self._callback is not None:
            self._callback(f, msg)

    def commit(self, fraction: float, message: str = "") -> None:
        """Report ``fraction`` at the job's point of no return: cancel is checked one last
        time, then the token is marked committed (``CancelToken.committed``) - from here the
        job finishes, so a file it writes is never behind a job reported as cancelled."""
        self.update(fraction, message)
        self.token.commit()

    def finish(self, message: str = "done") -> None:
        """Report the end of this range without checking for cancel: for work that has
        committed (a result is written) and must not be reported as cancelled."""
        f = self._offset + self._length
        root = self._root
        with root._lock:
            root.last_fraction = max(root.last_fraction, f)
            root.last_message = message or root.last_message
            f, msg = root.last_fraction, root.last_message
        if self._callback is not None:
            self._callback(f, msg)

    def restart_eta(self) -> None:
        """Measure the ETA's speed from now on: the work before (loading, a diagnosis) had a
        fixed slice of the bar that says nothing of how fast the rest goes."""
        root = self._root
        with root._lock:
            root.started = time.monotonic()
            root._eta_origin = root.last_fraction

    def eta_seconds(self) -> float | None:
        """Seconds left, extrapolating the speed of the bar since it started (or since
        ``restart_eta``); None until it has moved 1% of the way."""
        root = self._root
        done = root.last_fraction
        moved = done - root._eta_origin
        if moved <= 0.01:
            return None
        elapsed = time.monotonic() - root.started
        return elapsed * (1.0 - done) / moved
