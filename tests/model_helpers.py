"""Helpers that put tiny models built by a test into a real ModelStore under the real manifest
id, so tests load them through the real store + runtime code path."""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

from engine.models.manifest import Manifest, ModelFile, default_manifest
from engine.models.runtime import ModelRuntime
from engine.models.store import ModelStore


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_with(model_id: str, files: dict[str, Path], base: Manifest | None = None,
                  url_base: str | None = None) -> Manifest:
    """The real manifest with ``model_id``'s files replaced by ``files`` (name -> built file),
    pinned to those files' own sizes and hashes. ``url_base`` gives them download URLs
    (e.g. a loopback test server)."""
    base = base or default_manifest()
    spec = base.get(model_id)
    new_files = []
    for name, src in files.items():
        src = Path(src)
        new_files.append(ModelFile(
            name=name, url=(f"{url_base.rstrip('/')}/{name}" if url_base else None),
            size=src.stat().st_size, sha256=sha256_of(src), sha256_source="test: built by the test",
        ))
    main = spec.main_file if spec.main_file in files else (
        next(iter(files)) if len(files) == 1 else spec.main_file)
    new = dataclasses.replace(spec, files=tuple(new_files), main_file=main, slot=False)
    return base.with_model(new)


def install_test_model(store_root: Path, model_id: str, files: dict[str, Path],
                       store: ModelStore | None = None) -> ModelStore:
    """Install ``files`` (name -> path of a file the test built, in the real release layout)
    into a store at ``store_root`` as model ``model_id``; returns the store. Pass ``store`` to
    add a further model to a store returned earlier (its manifest is extended)."""
    base = store.manifest if store is not None else None
    manifest = manifest_with(model_id, files, base)
    st = ModelStore(store_root, manifest)
    for name, src in files.items():
        dest = st.file_path(model_id, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    st.verify(model_id)
    assert st.status(model_id) == "verified", st.status(model_id)
    return st


def install_stand_in(store_root: Path, model_id: str, store: ModelStore | None = None
                     ) -> ModelStore:
    """``model_id`` installed as a few bytes that are no model, under its release file names:
    for a plan that needs the model (``Engine.run`` refuses a plan whose models are not
    installed) run on a photo where its step never loads it - CodeFormer, which cannot be made
    tiny, on a photo without a face. Were it loaded, the load would fail."""
    base = store.manifest if store is not None else default_manifest()
    folder = Path(store_root).parent / f"stand-in-{model_id}"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for f in base.get(model_id).files:
        path = folder / Path(f.name).name
        path.write_bytes(b"not a model: " + model_id.encode())
        files[f.name] = path
    return install_test_model(store_root, model_id, files, store=store)


def counting_hash(monkeypatch) -> list[int]:
    """The store's hash chunks, counted (one item each, at its cancel check): the returned
    list grows as ``ModelStore`` hashes."""
    from engine.models import store as store_mod

    chunks: list[int] = []
    real = store_mod.sha256_file

    def counting(path, check_cancel=None):
        def check():
            chunks.append(1)
            if check_cancel is not None:
                check_cancel()
        return real(path, check)

    monkeypatch.setattr(store_mod, "sha256_file", counting)
    return chunks


def make_runtime(store: ModelStore, budget: int | None = None) -> ModelRuntime:
    """A ModelRuntime on the CPU over ``store``."""
    from engine.devices import select_device

    return ModelRuntime(select_device("cpu"), store, budget=budget)


def fake_gpu(budget: int = 8 << 30):
    """A kind-'cuda' DeviceInfo (fp16 + bf16 capable, ``budget`` bytes) whose tensors stay on
    the CPU: the GPU dtype and cache policy, run by the real loaders on this machine."""
    from engine.devices import DeviceInfo

    class FakeGPU(DeviceInfo):
        @property
        def torch_device(self) -> str:
            return "cpu"

    return FakeGPU("cuda", "fake GPU", 1, budget, budget, True, True)


class HTTPTestServer:
    """A loopback HTTP/1.1 server for tests, on its own thread. Subclasses answer each GET in
    ``do_get(handler)`` (``handler``: the request's ``BaseHTTPRequestHandler``)."""

    def __init__(self) -> None:
        import http.server
        import threading

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                outer.do_get(self)

        self.release = threading.Event()  # (for servers that hold an answer back)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def do_get(self, h) -> None:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def send_empty(h, status: int, **headers: str) -> None:
    """Answer ``status`` with no body (and ``headers``)."""
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k, v)
    h.send_header("Content-Length", "0")
    h.end_headers()


class LoopbackServer(HTTPTestServer):
    """A tiny HTTP server on 127.0.0.1 standing in for the model hosts in tests.

    ``files`` maps URL paths ("/a.bin") to bytes. Supports ``Range: bytes=N-`` (206) unless
    ``honour_range`` is False. ``drop_after[path] = n`` makes the next request for ``path``
    announce the full length but close the connection after ``n`` bytes (once).
    ``redirects[path] = url`` answers 302. Every request is logged in ``requests`` as
    (path, range header or None).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.redirects: dict[str, str] = {}
        self.honour_range = True
        self.requests: list[tuple[str, str | None]] = []
        super().__init__()

    @property
    def url(self) -> str:
        return self.base_url

    def do_get(self, h) -> None:
        import socket

        rng = h.headers.get("Range")
        self.requests.append((h.path, rng))
        if h.path in self.redirects:
            send_empty(h, 302, Location=self.redirects[h.path])
            return
        data = self.files.get(h.path)
        if data is None:
            send_empty(h, 404)
            return
        start = 0
        if rng and self.honour_range and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                send_empty(h, 416, **{"Content-Range": f"bytes */{len(data)}"})
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        cut = self.drop_after.pop(h.path, None)
        if cut is not None:
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        h.wfile.write(body)


def fetch_in_thread(url: str, part: Path, **kw):
    """``download.fetch(url, part, **kw)`` from a loopback server on a daemon thread: returns
    the thread and a dict that gets "sha" or "error", then "end" (its monotonic time)."""
    import threading
    import time

    from engine.models import download

    out: dict = {}

    def run() -> None:
        try:
            out["sha"] = download.fetch(url, part, allowed_hosts={"127.0.0.1"},
                                        allow_http_hosts=("127.0.0.1",), **kw)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e
        out["end"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def served_store(root: Path, server: LoopbackServer, model_id: str, files: dict[str, bytes],
                 *, pinned: bool | dict[str, bool] = True, retries: int = 3,
                 base: Manifest | None = None) -> ModelStore:
    """A store whose manifest entry for ``model_id`` downloads ``files`` (name -> bytes) from
    the loopback ``server``; http://127.0.0.1 is allowed explicitly, as only tests may."""
    new_files = []
    for name, data in files.items():
        server.files[f"/{model_id}/{name}"] = data
        pin = pinned if isinstance(pinned, bool) else pinned.get(name, True)
        new_files.append(ModelFile(
            name=name, url=f"{server.url}/{model_id}/{name}", size=len(data),
            sha256=hashlib.sha256(data).hexdigest() if pin else None,
            sha256_source="test" if pin else None))
    base = base or default_manifest()
    spec = dataclasses.replace(base.get(model_id), files=tuple(new_files), slot=False,
                               main_file=next(iter(files)) if len(files) == 1 else None)
    return ModelStore(root, base.with_model(spec), allow_http_hosts=("127.0.0.1",),
                      retries=retries, backoff=0.0, timeout=5.0)


def load_script(name: str):
    """Import ``scripts/<name>.py`` (scripts/ is not a package) once per process."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod
