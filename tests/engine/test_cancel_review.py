"""Review of cancel inside downloads' connects and inside OCR runs: what a Stop (or offline mode)
leaves behind in the background, and error responses handed across threads."""
from __future__ import annotations

import gc
import hashlib
import time

import numpy as np
import pytest

from engine.errors import Cancelled, OfflineError
from engine.models import download as dl
from engine.progress import CancelToken
from tests.model_helpers import HTTPTestServer, fetch_in_thread, send_empty

DATA = hashlib.sha256(b"review").digest() * 1024  # 32 KB


class Server(HTTPTestServer):
    """A loopback HTTP/1.1 server. ``answers``: per request, in order, ("data" | "redirect" |
    an int status, delay in s before the headers); then "data" at once. Records the requests."""

    def __init__(self, answers: list[tuple[object, float]] | None = None) -> None:
        self.answers = list(answers or [])
        self.redirect_to = ""
        self.requests: list[str] = []
        super().__init__()

    def do_get(self, h) -> None:
        self.requests.append(h.path)
        what, delay = self.answers.pop(0) if self.answers else ("data", 0.0)
        if delay:
            self.release.wait(delay)
        if what == "redirect":
            send_empty(h, 302, Location=self.redirect_to)
        elif what == "data":
            h.send_response(200)
            h.send_header("Content-Length", str(len(DATA)))
            h.end_headers()
            h.wfile.write(DATA)
        else:
            body = b"busy, try again" * 100
            h.send_response(int(what))
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        h.wfile.flush()

    @property
    def url(self) -> str:
        return self.base_url + "/m.bin"


def _wait_for(cond, limit: float = 10.0) -> None:
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end
        time.sleep(0.01)


def test_a_stopped_download_does_not_follow_a_redirect_in_the_background(tmp_path):
    """Stop while the host is slow to answer: the download stopped at once, but the abandoned
    connection went on and, when the answer was a redirect, connected to the redirect's host
    after the Stop (the CDN got a request for a download the user had stopped)."""
    a, b = Server([("redirect", 1.0)]), Server()
    a.redirect_to = b.url
    try:
        token = CancelToken()
        t, out = fetch_in_thread(a.url, tmp_path / "m.bin.part", check_cancel=token.check,
                                  timeout=10.0, poll=0.05, retries=0)
        _wait_for(lambda: a.requests)
        token.cancel()
        t.join(5)
        assert isinstance(out.get("error"), Cancelled), out
        a.release.set()  # the redirect is sent now
        time.sleep(0.8)
        assert b.requests == []
    finally:
        a.close()
        b.close()


def test_offline_mode_switched_on_while_waiting_for_a_redirect_opens_no_new_connection(
        tmp_path, monkeypatch):
    """Offline mode means no new connection: a redirect answered after it was switched on (and
    before the caller's next poll) was followed."""
    a, b = Server([("redirect", 0.4)]), Server()
    a.redirect_to = b.url
    try:
        t, out = fetch_in_thread(a.url, tmp_path / "m.bin.part", timeout=10.0, poll=3.0,
                                  retries=0)
        _wait_for(lambda: a.requests)
        monkeypatch.setenv("MEND_OFFLINE", "1")
        t.join(10)
        assert isinstance(out.get("error"), OfflineError), out
        assert b.requests == []
    finally:
        a.close()
        b.close()


def test_a_redirect_is_still_followed(tmp_path):
    a, b = Server([("redirect", 0.0)]), Server()
    a.redirect_to = b.url
    try:
        token = CancelToken()
        sha = dl.fetch(a.url, tmp_path / "m.bin.part", allowed_hosts={"127.0.0.1"},
                       allow_http_hosts=("127.0.0.1",), check_cancel=token.check, poll=0.05)
        assert sha == hashlib.sha256(DATA).hexdigest()
        assert len(b.requests) == 1
    finally:
        a.close()
        b.close()


def _record_error_answers(monkeypatch) -> list:
    """Weak references to the responses urllib turns into HTTPError."""
    import urllib.request
    import weakref

    seen: list = []
    real = urllib.request.HTTPDefaultErrorHandler.http_error_default

    def recording(self, req, fp, code, msg, hdrs):
        seen.append(weakref.ref(fp))
        return real(self, req, fp, code, msg, hdrs)

    monkeypatch.setattr(urllib.request.HTTPDefaultErrorHandler, "http_error_default", recording)
    return seen


def _closed(ref) -> bool:
    r = ref()
    return r is None or r.isclosed()


def test_an_error_answer_is_closed_without_waiting_for_the_garbage_collector(tmp_path,
                                                                            monkeypatch):
    """A 503 raised in the connecting thread and re-raised in the caller's was kept in a
    reference cycle (the error, its traceback, the frame holding it): its connection stayed open
    until the cyclic garbage collector ran (before the helper thread: closed at once)."""
    seen = _record_error_answers(monkeypatch)
    srv = Server([(503, 0.0)])
    gc.collect()
    gc.disable()
    try:
        sha = dl.fetch(srv.url, tmp_path / "m.bin.part", allowed_hosts={"127.0.0.1"},
                       allow_http_hosts=("127.0.0.1",), retries=2, backoff=0.0, poll=0.05)
        assert sha == hashlib.sha256(DATA).hexdigest()
        assert len(srv.requests) == 2 and len(seen) == 1
        assert _closed(seen[0])
    finally:
        gc.enable()
        srv.close()


def test_an_error_answer_to_a_stopped_download_is_closed_too(tmp_path, monkeypatch):
    seen = _record_error_answers(monkeypatch)
    srv = Server([(503, 0.6)])
    gc.collect()
    gc.disable()
    try:
        token = CancelToken()
        t, out = fetch_in_thread(srv.url, tmp_path / "m.bin.part", check_cancel=token.check,
                                  timeout=10.0, poll=0.05, retries=0)
        _wait_for(lambda: srv.requests)
        token.cancel()
        t.join(5)
        assert isinstance(out.get("error"), Cancelled), out
        _wait_for(lambda: seen, 5.0)  # the helper got the answer
        _wait_for(lambda: _closed(seen[0]), 2.0)
    finally:
        gc.enable()
        srv.close()


# --------------------------------------------------------------------------- rapidocr
def test_a_detector_that_failed_to_load_once_is_still_cancellable_inside(monkeypatch):
    """The first detection's load of the detector failed (and raised); the next one loaded it
    through rapidocr itself, and its runs were never routed through the cancellable session
    again: a cancel waited for the whole ONNX run."""
    pytest.importorskip("rapidocr")
    import engine.restore.text as T

    ocr = T.RapidOCRBackend(threads=1)
    engine = ocr._engine
    real = engine._load_det_model
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise OSError("model file busy")
        return real()

    monkeypatch.setattr(engine, "_load_det_model", flaky, raising=False)
    page = np.full((64, 64, 3), 255, np.uint8)
    with pytest.raises(OSError):
        ocr.detect(page)
    ocr.detect(page)
    assert isinstance(engine.text_det.session.session, T._RunOptionsSession)
