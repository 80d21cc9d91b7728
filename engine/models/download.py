"""HTTPS downloads for the model store: ``.part`` file, HTTP Range resume, retries with backoff,
incremental sha256, only to hosts the manifest names, never when offline.

No hub client is used and nothing downloaded is ever executed here.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import ipaddress
import os
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import DownloadError, LocalDiskError, OfflineError

CHUNK = 1 << 20
USER_AGENT = "Mend-model-store/0.1 (+https://github.com/)"
_LOOPBACK_NAMES = {"localhost"}


def offline_mode() -> bool:
    """``MEND_OFFLINE=1`` (or true/yes/on): the store never opens a socket."""
    return os.environ.get("MEND_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class DownloadProgress:
    """One progress report of a model download (bytes of the current file and of the model)."""

    model_id: str
    file: str
    file_done: int
    file_total: int
    done: int  # bytes of the whole model (all its files) so far
    total: int
    speed: float  # bytes per second, smoothed
    file_index: int = 0
    file_count: int = 1

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0


ProgressFn = Callable[[DownloadProgress], None]


def display_url(url: str) -> str:
    """``url`` as shown to people (errors, logs, JSON): ``scheme://host[:port]/path`` only.
    Userinfo, query and fragment — where mirrors and signed redirects carry passwords, tokens
    and signatures — are left out (``?…`` marks a dropped query or fragment)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unreadable URL>"
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    shown = f"{parts.scheme}://{host}{parts.path}" if parts.scheme else parts.path
    return shown + ("?…" if parts.query or parts.fragment else "")


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _scrub(text: str, *urls: str) -> str:
    """``text`` (an exception's message) with every URL in it shown as by :func:`display_url`
    and the secret parts of ``urls`` (the request's, its redirects') blanked wherever they
    appear on their own (a path and query quoted by http.client, say)."""
    text = _URL_IN_TEXT.sub(lambda m: display_url(m.group(0)), text)
    for url in urls:
        try:
            parts = urlsplit(url)
            secrets = (parts.query, parts.fragment, parts.password, parts.username)
        except ValueError:
            continue
        for secret in secrets:
            if secret:
                text = text.replace(secret, "…")
    return text


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allowed_hosts: frozenset[str] | set[str],
              allow_http_hosts: tuple[str, ...] = ()) -> None:
    """Raise DownloadError unless ``url`` is HTTPS to an allowed host.

    Plain HTTP is accepted only for loopback hosts explicitly listed in ``allow_http_hosts``
    (test servers); never by default.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "https":
        if host in allowed_hosts:
            return
        raise DownloadError(f"refusing to download from {host!r}: not a host the model list names")
    if parts.scheme == "http" and host in allow_http_hosts and _is_loopback(host):
        if host in allowed_hosts:
            return
        raise DownloadError(f"refusing to download from {host!r}: not a host the model list names")
    raise DownloadError(f"refusing a non-HTTPS download: {display_url(url)}")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, allowed: frozenset[str], allow_http: tuple[str, ...]) -> None:
        self.allowed = allowed
        self.allow_http = allow_http
        self.seen: list[str] = []  # redirect targets (signed URLs: kept out of messages)

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.seen.append(newurl)
        check_url(newurl, self.allowed, self.allow_http)
        # (cancel, offline mode, a caller that has gone: before the redirect's new connection)
        before = getattr(req, "mend_before_redirect", None)
        if before is not None:
            before()
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.mend_before_redirect = before
            if req.has_header("Range"):
                new.add_header("Range", req.get_header("Range"))
        return new


def tls_context() -> ssl.SSLContext:
    """The TLS context of downloads: the system's CA certificates (OpenSSL's default places,
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``, the Windows certificate store) and, where that finds
    none, certifi's bundle. A frozen app's OpenSSL looks where the build machine's Python kept
    its certificates - on macOS a python.org path (``.../Python.framework/.../etc/openssl``)
    that exists nowhere else, and Python never reads the macOS keychain - so without this every
    download failed there with CERTIFICATE_VERIFY_FAILED (PyInstaller leaves the choice of CA
    bundle to the app)."""
    ctx = ssl.create_default_context()
    if ctx.cert_store_stats().get("x509_ca", 0) == 0 and not _ca_dir_in_use():
        try:
            import certifi
        except ImportError:
            return ctx
        ctx.load_verify_locations(cafile=certifi.where())
    return ctx


def _ca_dir_in_use() -> bool:
    """Whether OpenSSL looks up CA certificates in a folder that has some (loaded on demand, so
    not counted by ``cert_store_stats``: a Linux system with only /etc/ssl/certs)."""
    paths = ssl.get_default_verify_paths()
    folders = (os.environ.get(paths.openssl_capath_env) or paths.capath or "").split(os.pathsep)
    for folder in filter(None, folders):
        try:
            with os.scandir(folder) as entries:
                if any(True for _ in entries):
                    return True
        except OSError:
            continue
    return False


def _opener(allowed: frozenset[str], allow_http: tuple[str, ...]):
    """The opener, and its redirect handler (which remembers where it was sent)."""
    # no ProxyHandler defaults beyond the environment's, no FTP/file handlers
    redirects = _CheckedRedirects(allowed, allow_http)
    https = urllib.request.HTTPSHandler(context=tls_context())
    return urllib.request.build_opener(redirects, https), redirects


_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
              socket.timeout, OSError)
# the local disk, not the network: retrying cannot help
_DISK_FULL = frozenset(e for e in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None))
                       if e is not None)


def _disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in _DISK_FULL


def _too_big(have: int, expected_size: int | None, url: str) -> DownloadError:
    return DownloadError(f"the host sends more than the {expected_size} bytes the model list "
                         f"pins for this file (at least {have}); stopped: {display_url(url)}")


def _not_the_file(size: int, expected_size: int, url: str) -> DownloadError:
    """A whole-file answer (200) to a resume whose size is not the pinned one: a network login
    page, a proxy's error page... not the file. The ``.part`` is left as it was."""
    return DownloadError(
        f"the host answered with {size} bytes instead of the {expected_size}-byte file the model "
        f"list pins (a network login page or a proxy's error page?); the partial download was "
        f"kept: run the same command again once the connection works: {display_url(url)}")


def _unknown_answer(part: Path, url: str) -> DownloadError:
    return DownloadError(
        f"the host answered the resume with a whole file of unknown size (a network login page "
        f"or a proxy's error page?); the partial download was kept: run the same command again "
        f"once the connection works, or delete {part} to download it from the start: "
        f"{display_url(url)}")


def _wrong_size(size: int, expected_size: int, url: str) -> DownloadError:
    return DownloadError(f"the host's file is {size} bytes, not the {expected_size} bytes the "
                         f"model list pins; stopped: {display_url(url)}")


def _local_error(e: OSError, part: Path, url: str) -> LocalDiskError:
    """Writing the ``.part`` failed on this machine's disk: the network is not at fault, so
    retrying cannot help (the ``.part`` stays for a resume)."""
    if _disk_full(e):
        return LocalDiskError(
            f"disk full while downloading to {part.parent} ({e.strerror or e}); free some space "
            f"and run the same command again to resume: {display_url(url)}")
    if e.errno == errno.ENOENT:  # its folder deleted (or moved) under the download
        return LocalDiskError(
            f"cannot write the download to {part}: its folder was deleted or moved while it "
            f"was being downloaded; run the same command again: {display_url(url)}")
    return LocalDiskError(
        f"cannot write the download to {part} ({e.strerror or e}); check that the model folder "
        f"can be written, then run the same command again to resume: {display_url(url)}")


_CONTENT_RANGE = re.compile(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", re.IGNORECASE)


def _content_range(value: str | None) -> tuple[int | None, int | None] | None:
    """``(first byte, complete length)`` of a ``Content-Range: bytes a-b/n`` (or ``*/n``)
    header, ``None`` for a part given as ``*``; None when the header is absent or unreadable."""
    m = _CONTENT_RANGE.fullmatch(value or "")
    if m is None:
        return None
    return (int(m.group(1)) if m.group(1) is not None else None,
            int(m.group(2)) if m.group(2) != "*" else None)


POLL = 1.0  # seconds: a stalled read wakes this often to look for a cancel (or offline mode)


def _offline_error() -> OfflineError:
    return OfflineError(
        "offline mode is on (MEND_OFFLINE=1): cannot download models; "
        "import them from a folder or an offline pack instead")


def _sleep(seconds: float, check: Callable[[], None]) -> None:
    """``time.sleep`` that calls ``check`` (cancel, offline mode) every 0.1 s."""
    end = time.monotonic() + seconds
    while True:
        check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.1, left))


class _Stalled(TimeoutError):
    """No byte arrived for the whole ``timeout`` (a retryable network failure)."""


class _BodyReader:
    """Reads a response body in chunks of up to ``CHUNK`` bytes, waking every ``poll`` seconds
    while no data comes so that ``check`` (cancel, offline mode) runs; gives up with
    :class:`_Stalled` after ``timeout`` seconds in a row without a byte.

    The socket's timeout is lowered to ``poll`` once the headers are in (the request itself
    keeps the full timeout). A read that times out on a socket file marks it unusable; that
    mark is cleared, and only single reads (``read1``) are used, so that a timeout never drops
    bytes already received. When the socket cannot be reached (another HTTP stack) the body is
    read as before: blocking up to ``timeout``.
    """

    def __init__(self, resp, check: Callable[[], None], timeout: float, poll: float) -> None:
        self.resp, self.check, self.timeout = resp, check, timeout
        self.poll = max(0.05, min(poll, timeout))
        raw = getattr(getattr(resp, "fp", None), "raw", None)
        sock = getattr(raw, "_sock", None)
        self._raw = raw
        # (a chunked body is read as before: a timeout inside its size lines could lose bytes)
        self.polling = (sock is not None and hasattr(raw, "_timeout_occurred")
                        and hasattr(resp, "read1") and not getattr(resp, "chunked", False)
                        and self.poll < timeout)
        if self.polling:
            try:
                sock.settimeout(self.poll)
            except OSError:
                self.polling = False

    def read(self) -> bytes:
        """The next piece of the body (b"" at its end)."""
        if not self.polling:
            return self.resp.read(CHUNK)
        buf = bytearray()
        idle = 0.0
        started = time.monotonic()
        while len(buf) < CHUNK:
            try:
                piece = self.resp.read1(CHUNK - len(buf))
            except TimeoutError:  # (socket.timeout)
                self._raw._timeout_occurred = False  # the stream is fine: nothing was lost
                if buf:
                    break  # hand over what came; the next read goes on waiting
                idle += self.poll
                self.check()
                if idle >= self.timeout:
                    raise _Stalled(f"no data for {self.timeout:.0f} s") from None
                continue
            if not piece:
                break
            buf += piece
            idle = 0.0
            if time.monotonic() - started > 0.25:  # keep progress and cancel checks flowing
                break
        return bytes(buf)


def _open(opener, req, timeout: float, check: Callable[[], None], poll: float):
    """``opener.open(req, timeout=timeout)`` with ``check`` (cancel, offline mode) running every
    ``poll`` seconds while it connects and waits for the headers (a dead host or a server that
    never answers held a Stop, or the app's quit, for the whole ``timeout``). The connection is
    made in a helper thread; when ``check`` raises, the helper is left to end on its own (within
    ``timeout``) and closes whatever response (or error response) it still gets. A redirect is
    followed only when ``check`` passes (it runs in the helper then) and the caller is still
    there: a Stop or offline mode opens no new connection."""
    lock = threading.Lock()
    done = threading.Event()
    box: dict[str, Any] = {}

    def before_redirect() -> None:
        if box.get("abandoned"):
            raise _Abandoned("the download was stopped")
        check()

    req.mend_before_redirect = before_redirect

    def work() -> None:
        resp = error = None
        try:
            resp = opener.open(req, timeout=timeout)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            error = e
        with lock:
            if box.get("abandoned"):
                for r in (resp, error):
                    if callable(getattr(r, "close", None)):  # (an HTTPError is a response)
                        r.close()
            else:
                box["resp"], box["error"] = resp, error
            done.set()
        # (the error's traceback holds this frame: no cycle through it)
        resp = error = None

    threading.Thread(target=work, name="mend-connect", daemon=True).start()
    try:
        while not done.wait(max(0.05, min(poll, timeout))):
            check()
    except BaseException:
        with lock:
            box["abandoned"] = True
            for r in (box.pop("resp", None), box.pop("error", None)):
                if callable(getattr(r, "close", None)):
                    r.close()
        raise
    error = box.pop("error")
    if error is not None:
        try:
            raise error
        finally:  # (its traceback holds this frame: no cycle, it is freed when handled)
            error = None
    return box.pop("resp")


class _Abandoned(DownloadError):
    """Raised in the helper of :func:`_open` at a redirect after its caller has gone."""


def _hash_existing(part: Path, check: Callable[[], None] | None = None,
                   ) -> tuple[hashlib._Hash, int]:  # type: ignore[name-defined]
    """sha256 and size of what a ``.part`` already holds; ``check`` (cancel, offline mode) runs
    between chunks: a multi-GB ``.part`` takes many seconds to hash before a resume."""
    h = hashlib.sha256()
    n = 0
    with open(part, "rb") as f:
        while chunk := f.read(CHUNK):
            if check is not None:
                check()
            h.update(chunk)
            n += len(chunk)
    return h, n


def fetch(
    url: str,
    part: Path,
    *,
    allowed_hosts: frozenset[str] | set[str],
    allow_http_hosts: tuple[str, ...] = (),
    expected_size: int | None = None,
    on_bytes: Callable[[int, int | None], None] | None = None,
    check_cancel: Callable[[], None] | None = None,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 30.0,
    poll: float = POLL,
) -> str:
    """Download ``url`` into ``part`` (appending to what is already there) and return its sha256.

    Resumes with ``Range: bytes=N-`` after a dropped connection or on a later call; a server that
    ignores ranges (200) restarts the file - unless the size it announces is not the pinned
    ``expected_size`` (a network login page, a proxy's error page): then the ``.part`` is kept
    and :class:`DownloadError` raised. A 206 must start where it was asked to (its
    ``Content-Range``); one from byte 0 restarts the file. A 416 whose ``Content-Range`` states
    another size than ``expected_size`` raises at once (the ``.part`` deleted): the host's file
    is not the pinned one. ``on_bytes(done, total)`` after every chunk.

    Gives up with :class:`DownloadError` after ``retries`` failed attempts in a row; only bytes
    past the furthest point reached so far count as progress and reset that count (a host that
    ignores ranges and keeps dropping the connection re-sends the same bytes: no progress).
    With ``expected_size``, a body that would make the file bigger stops at once (the ``.part``
    is deleted: it is not the file). A full disk (ENOSPC, EFBIG) stops at once too, keeping the
    ``.part`` for a resume once space is freed, and so does any other failure to write the
    ``.part`` (read-only disk, no permission): :class:`LocalDiskError`, never retried.

    ``check_cancel`` runs between chunks, every ``poll`` seconds while connecting, waiting for
    the headers or on a stalled connection, and
    through the back-off between attempts; offline mode switched on meanwhile stops the
    download the same way (:class:`OfflineError`), before any new connection. It also runs
    before a redirect is followed, in the thread that connects (so it must be thread-safe, as
    ``CancelToken.check`` is); a stopped download's connection follows no redirect.
    """
    def check() -> None:
        if check_cancel:
            check_cancel()
        if offline_mode():
            raise _offline_error()

    if offline_mode():
        raise _offline_error()
    allowed = frozenset(h.lower() for h in allowed_hosts)
    check_url(url, allowed, allow_http_hosts)
    opener, redirects = _opener(allowed, allow_http_hosts)
    part.parent.mkdir(parents=True, exist_ok=True)
    if part.exists():
        hasher, have = _hash_existing(part, check)
    else:
        hasher, have = hashlib.sha256(), 0
    attempt = 0
    furthest = have  # retries reset only when the download gets past this point
    restarted = False  # the host ignored a Range request at least once
    while True:
        check()
        if expected_size is not None and have == expected_size:
            return hasher.hexdigest()
        if expected_size is not None and have > expected_size:
            part.unlink(missing_ok=True)
            hasher, have = hashlib.sha256(), 0
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with _open(opener, req, timeout, check, poll) as resp:
                status = getattr(resp, "status", 200)
                length = resp.headers.get("Content-Length")
                length = int(length) if length and length.isdigit() else None
                full = length  # the whole file's size as the answer states it
                if status == 206:
                    rng = _content_range(resp.headers.get("Content-Range"))
                    start, full = rng if rng is not None else (have, None)
                    if start != have:  # another piece than the one asked for
                        if start != 0:
                            raise DownloadError(
                                f"the host answered a resume from byte {have} with the bytes "
                                f"from {start} on; the partial download was kept: run the same "
                                f"command again: {display_url(url)}")
                        status, full = 200, (full if full is not None else length)
                    elif full is None and length is not None:
                        full = have + length
                resume = status == 206 and have > 0
                if expected_size is not None and full is not None and full != expected_size:
                    if have and not resume:  # a whole answer to a resume: the .part may be fine
                        raise _not_the_file(full, expected_size, url)
                    part.unlink(missing_ok=True)
                    raise (_too_big if full > expected_size else _wrong_size)(
                        full, expected_size, url)
                if have and not resume and full is None and expected_size is not None:
                    # a whole answer of unknown size (no Content-Length: chunked, or ended by
                    # the connection) to a resume: nothing says it is the file - a network
                    # login page is sent just so - so the good bytes are not thrown away for it
                    raise _unknown_answer(part, url)
                if have and not resume:  # the host ignored the range: start over
                    hasher, have = hashlib.sha256(), 0
                    restarted = True
                mode = "ab" if resume else "wb"
                total = full if full is not None else expected_size
                body = _BodyReader(resp, check, timeout, poll)
                try:
                    out = open(part, mode)  # noqa: SIM115 - closed by the with below
                except OSError as e:
                    raise _local_error(e, part, url) from e
                with out:
                    while True:
                        check()
                        chunk = body.read()
                        if not chunk:
                            break
                        if expected_size is not None and have + len(chunk) > expected_size:
                            out.close()
                            part.unlink(missing_ok=True)
                            raise _too_big(have + len(chunk), expected_size, url)
                        try:
                            out.write(chunk)
                        except OSError as e:
                            raise _local_error(e, part, url) from e
                        hasher.update(chunk)
                        have += len(chunk)
                        if have > furthest:  # new ground: reset the retry budget
                            furthest, attempt = have, 0
                        if on_bytes:
                            on_bytes(have, total)
                if total is not None and have < total:
                    raise http.client.IncompleteRead(b"", total - have)
                return hasher.hexdigest()
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:
                # range not satisfiable: the part is complete (or bigger than the file; its
                # Content-Range: bytes */N tells which)
                rng = _content_range(e.headers.get("Content-Range") if e.headers else None)
                size = rng[1] if rng is not None else None
                if (expected_size is None or have == expected_size) and size in (None, have):
                    return hasher.hexdigest()
                part.unlink(missing_ok=True)
                if expected_size is not None and size is not None and size != expected_size:
                    # the host states its file's size and it is not the pinned one (a body of
                    # unknown length that ended short, then this): starting over would only
                    # fetch that file again, retries+1 times
                    raise _wrong_size(size, expected_size, url) from e
                hasher, have = hashlib.sha256(), 0
                continue
            if e.code in (408, 425, 429, 500, 502, 503, 504) and attempt < retries:
                attempt += 1
                _sleep(backoff * (2 ** (attempt - 1)), check)
                continue
            reason = _scrub(str(e.reason), url, *redirects.seen)
            raise DownloadError(
                f"download failed ({e.code} {reason}): {display_url(url)}") from e
        except DownloadError:
            raise
        except _RETRYABLE as e:
            if _disk_full(e):  # (closing the .part flushes what was buffered)
                raise _local_error(e, part, url) from e
            if attempt >= retries:
                hint = ("the host does not resume downloads, so each attempt starts over"
                        if restarted else "run the same command again to resume")
                why = _scrub(str(e), url, *redirects.seen)
                raise DownloadError(f"download failed after {retries + 1} attempts ({why}); "
                                    f"{hint}: {display_url(url)}") from e
            attempt += 1
            # re-sync with what actually reached the disk (normally it matches already)
            on_disk = part.stat().st_size if part.exists() else 0
            if on_disk != have:
                hasher, have = _hash_existing(part, check) if on_disk else (hashlib.sha256(), 0)
            _sleep(backoff * (2 ** (attempt - 1)), check)
