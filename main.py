"""Mend desktop app.

    python main.py [FOLDER]                     open the app (optionally on a folder)
    python main.py --screenshot FILE [--open FOLDER] [--state browser|viewer|mask]
                   [--photo NAME] [--size WxH]  render the window offscreen to a PNG and exit
                                                (with the folder listed, its photos diagnosed
                                                and, for viewer/mask, the photo fixed first)

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
    p.add_argument("--size", default=(1440, 900), type=_size, metavar="WxH",
                   help="window size for --screenshot (default: 1440x900)")
    p.add_argument("--max-kb", type=int, default=0,
                   help="keep the PNG under this size (palette, then smaller) for docs")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for thumbnails / the engine in --screenshot")
    return p


def _size(text: str) -> tuple[int, int]:
    """``--size`` WxH (e.g. 1440x900) -> (w, h); an argparse error for anything else."""
    w, sep, h = text.lower().partition("x")
    try:
        size = (int(w), int(h)) if sep else None
    except ValueError:
        size = None
    if size is None or not (100 <= size[0] <= 16384 and 100 <= size[1] <= 16384):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a window size: WIDTHxHEIGHT in pixels (100-16384), e.g. 1440x900")
    return size


def _has_display() -> bool:
    if os.environ.get("QT_QPA_PLATFORM"):
        return True
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    folder = args.open_folder or args.folder
    if args.screenshot:
        if not folder and (args.state != "browser" or args.photo):
            parser.error(f"--state {args.state} and --photo need a folder (--open FOLDER)"
                         if args.state != "browser" else "--photo needs a folder (--open FOLDER)")
        if folder and not Path(folder).is_dir():
            parser.error(f"not a folder: {folder}")
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        return _screenshot(args, folder)
    if not _has_display():
        print("mend: no display found (DISPLAY / WAYLAND_DISPLAY unset). "
              "Use the command-line tool instead: mend --help", file=sys.stderr)
        return 2
    app, _win = start(folder)
    code = app.exec()
    # the window has shut down (its jobs, saves and settings are done): a model load or a
    # native call that a cancel abandoned is not waited for (engine/restore/registry.py), nor
    # an engine thread the shutdown left running (Python's exit would abort on its QThread)
    if argv is None:
        from engine.restore import registry
        from ui.engine_client import wait_for_stragglers

        if wait_for_stragglers(0.5):
            registry.exit_now(code)
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


class _ShotError(Exception):
    """The screenshot cannot show what was asked (said on stderr; exit code 1)."""


def _wait(app, cond, timeout: float, what: str | None = None) -> bool:
    """Process events until ``cond()`` (True) or ``timeout`` s (False; with ``what``, a
    ``_ShotError`` saying what was waited for)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents()
        if cond():
            return True
        time.sleep(0.01)
    if what is not None:
        raise _ShotError(f"gave up after {timeout:g} s waiting for {what} (--timeout)")
    return False


def _screenshot(args, folder: str | None) -> int:
    """``--screenshot``: the window in ``args.state`` saved as a PNG, with private settings,
    data, cache and step-time history (never the user's: nothing read from them shows, nothing
    is added to them), in a temporary folder removed at the end."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="mend-shot-"))
    env = {"MEND_UI_SETTINGS": tmp / "settings.ini", "MEND_UI_DATA_DIR": tmp / "data",
           "MEND_UI_CACHE_DIR": tmp / "cache", "MEND_COST_HISTORY": tmp / "step_costs.json"}
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        os.environ.setdefault(k, str(v))
    try:
        return _take_screenshot(args, folder, tmp)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


def _take_screenshot(args, folder: str | None, tmp: Path) -> int:
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
        win.resize(*args.size)
        win.show()
        said = _show_state(app, win, args, Path(folder)) if folder else "the empty window"
        _wait(app, lambda: False, 0.3)
        img = win.grab()
        if not _save_png(img, Path(args.screenshot), args.max_kb * 1024):
            print(f"could not write {args.screenshot}", file=sys.stderr)
            status = 1
        else:
            # (what the picture shows: a screenshot that cannot show the state asked fails)
            print(f"screenshot: {args.state}: {said}", file=sys.stderr)
            print(args.screenshot)
    except _ShotError as e:
        print(f"main.py --screenshot: {e}", file=sys.stderr)
        status = 1
    finally:
        if win is not None:
            win.close()
        client.shutdown()
    return status


def _visible_thumbnails_done(win) -> bool:
    """Whether every cell in view has its thumbnail (or says it cannot be read)."""
    from PySide6.QtCore import Qt

    from ui.browser.model import ThumbStateRole

    grid, proxy = win.grid, win.proxy
    view = grid.viewport().rect()
    for row in range(proxy.rowCount()):
        ix = proxy.index(row, 0)
        rect = grid.visualRect(ix)
        if not rect.isValid() or not rect.intersects(view):
            continue
        ix.data(Qt.ItemDataRole.DecorationRole)  # (asks for it, if nothing has yet)
        if ix.data(ThumbStateRole) == "loading":
            return False
    return True


def _show_state(app, win, args, folder: Path) -> str:
    """Open ``folder`` and bring the window to ``args.state``; returns what it shows (one
    line). ``_ShotError`` when it cannot (no photos, ``--photo`` not listed, a timeout)."""
    t = args.timeout
    win.open_folder(folder)
    # the listing arrives off the GUI thread: until then the grid is empty
    _wait(app, lambda: not win.folder_loading, t, f"the listing of {folder}")
    items = win.model.items()
    if not items:
        raise _ShotError(f"no photo listed in {folder}: {win.grid.placeholder()}")
    target = items[0].path
    if args.photo:
        found = [i.path for i in items if args.photo in (i.path.name, i.rel)]
        if not found:
            raise _ShotError(f"--photo {args.photo}: no such photo in {folder} "
                             f"({len(items)} listed)")
        target = found[0]
    _wait(app, lambda: _visible_thumbnails_done(win), t, "the thumbnails in view")
    if args.state == "browser":
        win.diagnose_all()
        _wait(app, win.client.is_idle, t, "the diagnoses")
        win.select_path(target)
        _wait(app, lambda: win.bg.pending() == 0, t, "the selected photo's details")
        done = sum(1 for i in win.model.items() if i.diagnosis is not None)
        return (f"{len(items)} photos listed in {folder}, {done} diagnosed, "
                f"{win.model.ready_count()} thumbnails; {target.name} selected")
    win.select_path(target)
    win.diagnose([target])
    _wait(app, win.client.is_idle, t, f"the diagnosis of {target.name}")
    win.fix(target)
    _wait(app, win.client.is_idle, t, f"the fix of {target.name}")
    win.show_viewer(target)

    def shown() -> bool:
        v = win._view
        return (v is not None and v.path == target and win.stack.currentIndex() == 1
                and win.bg.pending() == 0)

    _wait(app, shown, t, f"the viewer of {target.name}")
    st = win.states.get(target)
    diag = st.diagnosis.label.value if st is not None and st.diagnosis is not None else "none"
    result = st.output.name if st is not None and st.output is not None else "none"
    if args.state == "mask":
        win.show_mask_editor()
        # (a photo whose fix left no mask gets the automatic one as a background job: shown
        # once it is laid in, not the empty editor before it)
        _wait(app, win.client.is_idle, t, f"the automatic mask of {target.name}")
        if not (win.mask_action.isChecked() and win.mask_bar.isVisible()
                and win.canvas.doc is not None):
            raise _ShotError(f"the mask editor did not open on {target.name}")
    return f"{target.name} (diagnosed {diag}, result {result})"


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
