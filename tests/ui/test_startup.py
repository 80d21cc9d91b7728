"""Starting the app (main.start, as `python main.py` does) must not freeze the shown window.

Importing torch holds Python's GIL through C initialisers of up to half a second; done in the
engine thread after the window was shown, it froze the window once (~0.4 s). The check is
structural, so machine load cannot make it flaky: by the time the window is shown, torch and the
engine modules the warm-up needs are imported, and the engine's start-up (engine ready, then the
warm-up job) imports none of the heavy packages. The largest gap between 5 ms ticks of a GUI
timer is printed, and bounded only loosely."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("torch", "torchvision", "scipy", "cv2", "spandrel", "spandrel_extra_arches",
         "transformers", "diffusers", "onnxruntime", "rapidocr")

SCRIPT = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import main
from PySide6.QtCore import QTimer
from ui.main_window import MainWindow

MainWindow.__init__.__kwdefaults__["ask_resume"] = False  # no resume question in a test
at_show = {}
_show = MainWindow.show
def show(self):
    at_show["modules"] = set(sys.modules)
    _show(self)
MainWindow.show = show

app, win = main.start(None, ["mend-test"])
t_show = time.monotonic()
state = {"last": t_show, "gap": 0.0, "ready": None, "cpu": time.thread_time()}
def tick():
    now = time.monotonic()
    state["gap"] = max(state["gap"], now - state["last"])
    state["last"] = now
    if state["ready"] is None and win.client.device is not None and win.client.is_idle():
        state["ready"] = now  # engine ready and its warm-up job done
    if state["ready"] is not None and now - state["ready"] > 1.0:
        app.quit()
timer = QTimer()
timer.setInterval(5)
timer.timeout.connect(tick)
timer.start()
QTimer.singleShot(90000, app.quit)
app.exec()
timer.stop()
after = set(sys.modules) - at_show["modules"]
out = {"torch_at_show": "torch" in at_show["modules"],
       "imported_after_show": sorted(after),
       "ready": state["ready"] is not None,
       "max_gap_ms": round(state["gap"] * 1000, 1),
       "gui_cpu_s": round(time.thread_time() - state["cpu"], 3)}
win.close()
win.client.shutdown()
print("RESULT " + json.dumps(out), flush=True)
os._exit(0)
"""


def test_engine_start_does_not_import_heavy_modules_after_the_window_is_shown(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MEND_THREADS="1",
               MEND_UI_SETTINGS=str(tmp_path / "settings.ini"),
               MEND_UI_DATA_DIR=str(tmp_path / "data"), MEND_UI_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=150, check=False)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    out = json.loads(line[len("RESULT "):])
    print(f"largest GUI-thread gap from show to engine ready + 1 s: {out['max_gap_ms']} ms "
          f"(GUI thread CPU {out['gui_cpu_s']} s)")
    assert out["ready"], out
    assert out["torch_at_show"], "torch was not imported before the window was shown"
    heavy = [m for m in out["imported_after_show"] if m.split(".")[0] in HEAVY]
    assert not heavy, f"imported after the window was shown: {heavy[:20]}"
    # wall time on a shared machine: loose (the old code's freeze was ~0.4 s on an idle one)
    assert out["max_gap_ms"] < 2000, out
