"""Downloads over a stalled connection: Stop (cancel) and offline mode take effect within about
a second, the back-off between attempts is cancellable, a stall gives up after ``timeout``
seconds without a byte, and no byte received before a stall is lost."""
from __future__ import annotations

import hashlib
import threading
import time

import pytest

from engine.errors import Cancelled, DownloadError, OfflineError
from engine.models import download as dl
from engine.progress import CancelToken
from tests.model_helpers import HTTPTestServer, fetch_in_thread, send_empty

DATA = hashlib.sha256(b"mend").digest() * 8192  # 256 KB


class StallServer(HTTPTestServer):
    """Sends the headers and the first ``stall_after`` bytes of the body, then sends nothing
    until ``release`` is set (or ``stall_for`` seconds pass); ``status`` other than 200 answers
    that status at once. Range requests are honoured. Requests: (path, range header)."""

    def __init__(self) -> None:
        self.stall_after: int | None = 64 * 1024
        self.stall_for = 30.0
        self.status = 200
        self.requests: list[tuple[str, str | None]] = []
        super().__init__()

    def do_get(self, h) -> None:
        rng = h.headers.get("Range")
        self.requests.append((h.path, rng))
        if self.status != 200:
            send_empty(h, self.status)
            return
        start = int(rng[6:].split("-")[0]) if rng else 0
        body = DATA[start:]
        h.send_response(206 if rng else 200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        cut, self.stall_after = self.stall_after, None  # the first request only
        try:
            if cut is not None:
                h.wfile.write(body[:cut])
                h.wfile.flush()
                self.release.wait(self.stall_for)
                body = body[cut:]
            h.wfile.write(body)
            h.wfile.flush()
        except OSError:
            pass

    @property
    def url(self) -> str:
        return self.base_url + "/m.bin"


@pytest.fixture
def server():
    s = StallServer()
    yield s
    s.close()


def _fetch_in_thread(server, part, **kw):
    return fetch_in_thread(server.url, part, expected_size=len(DATA), **kw)


def _wait_for_bytes(part, n, timeout=20.0) -> None:
    end = time.monotonic() + timeout
    while not (part.exists() and part.stat().st_size >= n):
        assert time.monotonic() < end, "the first bytes never arrived"
        time.sleep(0.02)


def test_stop_ends_a_stalled_download_within_about_a_second(server, tmp_path):
    part = tmp_path / "m.bin.part"
    token = CancelToken()
    t, out = _fetch_in_thread(server, part, check_cancel=token.check, timeout=60.0, retries=4,
                              backoff=1.0)
    _wait_for_bytes(part, 64 * 1024)
    time.sleep(0.3)  # inside the stalled read now
    t0 = time.monotonic()
    token.cancel()
    t.join(20)
    assert not t.is_alive()
    assert isinstance(out.get("error"), Cancelled)
    # one poll period (1 s) plus slack for a loaded machine; it was the 60 s socket timeout
    assert out["end"] - t0 < 8.0
    assert part.stat().st_size == 64 * 1024  # what came before the stall is kept (resumable)
    assert len(server.requests) == 1


def test_a_stall_longer_than_the_timeout_retries_and_resumes_without_losing_bytes(server,
                                                                                   tmp_path):
    part = tmp_path / "m.bin.part"
    server.stall_for = 20.0
    sha = dl.fetch(server.url, part, allowed_hosts={"127.0.0.1"}, allow_http_hosts=("127.0.0.1",),
                   expected_size=len(DATA), timeout=0.5, poll=0.1, retries=2, backoff=0.0)
    assert sha == hashlib.sha256(DATA).hexdigest()
    assert part.read_bytes() == DATA
    assert [r for _, r in server.requests] == [None, f"bytes={64 * 1024}-"]


def test_a_stall_gives_up_after_the_timeout_not_after_the_poll(server, tmp_path):
    part = tmp_path / "m.bin.part"
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="no data for"):
        dl.fetch(server.url, part, allowed_hosts={"127.0.0.1"}, allow_http_hosts=("127.0.0.1",),
                 expected_size=len(DATA), timeout=1.0, poll=0.1, retries=0)
    assert time.monotonic() - t0 >= 0.9  # ten idle polls, not one
    assert part.stat().st_size == 64 * 1024


def test_stop_during_the_backoff_between_attempts(server, tmp_path):
    server.status = 503
    part = tmp_path / "m.bin.part"
    token = CancelToken()
    t, out = _fetch_in_thread(server, part, check_cancel=token.check, retries=4, backoff=30.0)
    end = time.monotonic() + 20
    while not server.requests:
        assert time.monotonic() < end
        time.sleep(0.02)
    time.sleep(0.3)  # sleeping 30 s before the next attempt
    t0 = time.monotonic()
    token.cancel()
    t.join(20)
    assert isinstance(out.get("error"), Cancelled)
    assert out["end"] - t0 < 5.0
    assert len(server.requests) == 1


def test_offline_mode_switched_on_mid_download_stops_it(server, tmp_path, monkeypatch):
    monkeypatch.delenv("MEND_OFFLINE", raising=False)
    part = tmp_path / "m.bin.part"
    t, out = _fetch_in_thread(server, part, timeout=60.0, retries=4, backoff=0.0)
    _wait_for_bytes(part, 64 * 1024)
    monkeypatch.setenv("MEND_OFFLINE", "1")  # Settings > Offline mode
    t0 = time.monotonic()
    t.join(20)
    assert isinstance(out.get("error"), OfflineError)
    assert out["end"] - t0 < 8.0
    assert len(server.requests) == 1  # no reconnection once offline


def test_offline_mode_switched_on_before_a_reconnect_opens_no_new_connection(tmp_path,
                                                                             monkeypatch):
    """The connection drops; offline mode came on meanwhile: no retry goes out."""
    from tests.model_helpers import LoopbackServer

    monkeypatch.delenv("MEND_OFFLINE", raising=False)
    srv = LoopbackServer()
    try:
        srv.files["/m.bin"] = DATA
        srv.drop_after["/m.bin"] = 100_000
        part = tmp_path / "m.bin.part"

        def on_bytes(done, total):
            monkeypatch.setenv("MEND_OFFLINE", "1")

        with pytest.raises(OfflineError):
            dl.fetch(f"{srv.url}/m.bin", part, allowed_hosts={"127.0.0.1"},
                     allow_http_hosts=("127.0.0.1",), expected_size=len(DATA),
                     on_bytes=on_bytes, retries=4, backoff=0.0)
        assert len(srv.requests) == 1
    finally:
        srv.close()


def test_stop_while_the_server_never_sends_the_headers(tmp_path):
    """A host that accepts the connection and never answers: Stop (and the app's quit, which
    cancels and waits for the download pool) waited for the whole connect/header timeout
    (30 s by default). It now takes effect within a poll, and the abandoned connection is
    closed once it ends."""
    import socket

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    accepted = []
    threading.Thread(target=lambda: accepted.append(lsock.accept()), daemon=True).start()
    url = f"http://127.0.0.1:{lsock.getsockname()[1]}/m.bin"
    token = CancelToken()
    out: dict = {}

    def run() -> None:
        try:
            dl.fetch(url, tmp_path / "m.bin.part", allowed_hosts={"127.0.0.1"},
                     allow_http_hosts=("127.0.0.1",), check_cancel=token.check, timeout=3.0,
                     poll=0.1, retries=0)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e
        out["end"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    end = time.monotonic() + 20
    while not accepted:  # connected: now waiting for the headers that never come
        assert time.monotonic() < end
        time.sleep(0.02)
    time.sleep(0.3)
    t0 = time.monotonic()
    token.cancel()
    t.join(20)
    assert isinstance(out.get("error"), Cancelled), out
    assert out["end"] - t0 < 2.0  # was the 3 s timeout (30 s by default)
    # the helper ends at the timeout and the server then sees the connection closed
    conn = accepted[0][0]
    conn.settimeout(10)
    assert conn.recv(65536)  # the request line and headers came
    deadline = time.monotonic() + 10
    while conn.recv(65536):
        assert time.monotonic() < deadline
    conn.close()
    lsock.close()


def test_a_server_that_never_sends_the_headers_still_times_out(tmp_path):
    import socket

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    url = f"http://127.0.0.1:{lsock.getsockname()[1]}/m.bin"
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        dl.fetch(url, tmp_path / "m.bin.part", allowed_hosts={"127.0.0.1"},
                 allow_http_hosts=("127.0.0.1",), timeout=0.5, poll=0.1, retries=1,
                 backoff=0.0)
    assert 0.9 <= time.monotonic() - t0 < 10  # two attempts of 0.5 s each
    lsock.close()
