"""Mend desktop app.

    python main.py [FOLDER]                     open the app (optionally on a folder)
    python main.py --screenshot FILE [--open FOLDER] [--state browser|viewer|mask]
                                                render the window offscreen to a PNG and exit

Batch and scripting: the ``mend`` command (``mend --help``), e.g.
``mend restore photo.jpg -o fixed/``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Mend: diagnose what is wrong with a photo and fix it, offline.",
        epilog="For batch work and scripts use the command-line tool: mend --help "
               "(e.g. mend classify PHOTO, mend restore PHOTO -o OUT, mend models list).")
    p.add_argument("folder", nargs="?", help="folder of photos to open")
    p.add_argument("--open", dest="open_folder", metavar="FOLDER", help="folder of photos to open")
    p.add_argument("--screenshot", metavar="FILE", help="render the window offscreen to FILE (PNG)")
    p.add_argument("--state", choices=("browser", "viewer", "mask"), default="browser",
                   help="what the screenshot shows (default: browser)")
    p.add_argument("--photo", help="photo (file name in the folder) for --state viewer/mask")
    p.add_argument("--size", default="1440x900", help="window size for --screenshot")
    p.add_argument("--max-kb", type=int, default=0,
                   help="keep the PNG under this size (palette, then smaller) for docs")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for thumbnails / the engine in --screenshot")
    return p


def _has_display() -> bool:
    if os.environ.get("QT_QPA_PLATFORM"):
        return True
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    folder = args.open_folder or args.folder
    if args.screenshot:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        return _screenshot(args, folder)
    if not _has_display():
        print("mend: no display found (DISPLAY / WAYLAND_DISPLAY unset). "
              "Use the command-line tool instead: mend --help", file=sys.stderr)
        return 2
    app, _win = start(folder)
    code = app.exec()
    # the window has shut down (its jobs, saves and settings are done): a model load or a
    # native call that a cancel abandoned is not waited for (engine/restore/registry.py)
    registry = sys.modules.get("engine.restore.registry")
    if argv is None and registry is not None:
        registry.exit_leaving_abandoned_calls(code)
    return code


def start(folder: str | None = None, argv: list[str] | None = None):
    """Create the application and show the main window; returns ``(app, window)``.

    The engine's imports (torch above all) happen first, behind a "Starting Mend…" splash:
    importing torch holds Python's GIL through C initialisers of up to half a second, and done
    in the engine thread once the window was up it froze the window (~0.4 s, measured). They run
    in a helper thread while this thread keeps the splash painted.
    """
    import gc
    import threading

    from ui.app import create_app, starting_splash
    from ui.engine_client import import_engine_modules

    app = create_app(argv if argv is not None else sys.argv[:1])
    done = threading.Event()

    def work() -> None:
        try:
            import_engine_modules()
        finally:
            done.set()

    threading.Thread(target=work, name="mend-imports", daemon=True).start()
    # (started first: the splash is shown while the imports run)
    splash = starting_splash("Starting Mend… loading the engine")
    while not done.wait(0.03):
        app.processEvents()
    # the collector's full passes ran on the GUI thread through every object those imports made
    # (~0.12 s each with torch loaded, measured); they are kept for good: collect once now and
    # leave them out of later passes
    gc.collect()
    gc.freeze()
    from ui.main_window import MainWindow

    win = MainWindow()
    win.show()
    splash.close()
    if folder:
        win.open_folder(Path(folder))
    return app, win


def _wait(app, cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents()
        if cond():
            return True
        time.sleep(0.01)
    return False


def _screenshot(args, folder: str | None) -> int:
    import tempfile

    # a private settings file: screenshots never read or change the user's settings
    tmp = Path(tempfile.mkdtemp(prefix="mend-shot-"))
    os.environ.setdefault("MEND_UI_SETTINGS", str(tmp / "settings.ini"))
    os.environ.setdefault("MEND_UI_DATA_DIR", str(tmp / "data"))
    os.environ.setdefault("MEND_UI_CACHE_DIR", str(tmp / "cache"))
    from ui.app import create_app
    from ui.engine_client import EngineClient
    from ui.main_window import MainWindow
    from ui.settings import AppSettings

    app = create_app(sys.argv[:1])
    client = EngineClient()
    status = 0
    win = None
    try:
        win = MainWindow(client, AppSettings(backend="builtin", profile="builtin",
                                             out_dir=str(tmp / "out")), ask_resume=False,
                           sidecars_beside_photos=False)  # never write into the photo folder
        w, h = (int(v) for v in args.size.lower().split("x"))
        win.resize(w, h)
        win.show()
        if folder:
            win.open_folder(Path(folder))
            n = min(win.model.rowCount(), 24)
            _wait(app, lambda: win.model.ready_count() + win.model.failed_count() >= n,
                  args.timeout)
            items = win.model.items()
            target = None
            if args.photo:
                target = next((i.path for i in items if i.path.name == args.photo), None)
            elif items:
                target = items[0].path
            if args.state == "browser":
                win.diagnose_all()
                _wait(app, win.client.is_idle, args.timeout)
                if target is not None:
                    win.select_path(target)
            elif target is not None:
                win.select_path(target)
                win.diagnose([target])
                _wait(app, win.client.is_idle, args.timeout)
                win.fix(target)
                _wait(app, win.client.is_idle, args.timeout)
                win.show_viewer(target)
                _wait(app, lambda: win._view is not None and win.bg.pending() == 0, args.timeout)
                if args.state == "mask":
                    win.show_mask_editor()
        _wait(app, lambda: False, 0.3)
        img = win.grab()
        if not _save_png(img, Path(args.screenshot), args.max_kb * 1024):
            print(f"could not write {args.screenshot}", file=sys.stderr)
            status = 1
        else:
            print(args.screenshot)
    finally:
        if win is not None:
            win.close()
        client.shutdown()
    return status


def _save_png(pixmap, dest: Path, max_bytes: int = 0) -> bool:
    """Save a PNG; with ``max_bytes``, use a 256-colour palette and then shrink until it fits."""
    if not max_bytes:
        return pixmap.save(str(dest), "PNG")
    import io

    from PIL import Image

    from ui.imaging import qimage_to_rgb

    im = Image.fromarray(qimage_to_rgb(pixmap.toImage()))
    scale = 1.0
    while True:
        cur = im if scale == 1.0 else im.resize(
            (round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        pal = cur.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                           dither=Image.Dither.FLOYDSTEINBERG)
        buf = io.BytesIO()
        pal.save(buf, "PNG", optimize=True)
        if buf.tell() <= max_bytes or scale < 0.4:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(buf.getvalue())
            return True
        scale *= 0.9


if __name__ == "__main__":
    sys.exit(main())
