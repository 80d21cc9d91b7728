"""kill -9 during a save: no partial file under a final name, no .part left, source untouched."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import imageio as mio

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from engine import imageio as mio
from engine.api import OutputOptions
if sys.argv[4] == "named":
    mio._USE_O_TMPFILE = False
ph = mio.load_photo(sys.argv[2])
big = np.repeat(np.repeat(ph.pixels, 12, 0), 12, 1)  # ~2.4 MP of noise: a slow PNG
print("ready", flush=True)
while True:
    out = mio.save_photo(big, sys.argv[3] + "/result.png", like=ph, record={"n": 1})
    print("saved", out, flush=True)
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("mode", ["tmpfile", "named"])
def test_kill_9_during_save(tmp_path, mode):
    """Two writers, each killed at its own time in its own folder (the two processes run at
    once)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    src = tmp_path / "source.png"
    Image.fromarray((rng.random((130, 130, 3)) * 255).astype(np.uint8)).save(src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def killed(delay: float) -> tuple[Path, int | None]:
        """(its output folder, its exit status) of a writer killed ``delay`` s after it is
        ready."""
        out_dir = tmp_path / f"out-{delay}"
        out_dir.mkdir()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), str(src), str(out_dir),
                                 mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            proc.stdout.close()
            proc.stderr.close()
        return out_dir, proc.returncode

    with ThreadPoolExecutor(max_workers=2) as pool:
        # before the first result is done; after a few
        runs = list(pool.map(killed, (0.3, 1.7)))
    for out_dir, returncode in runs:
        assert returncode == -signal.SIGKILL
        names = os.listdir(out_dir)
        parts = [n for n in names if n.endswith(".part")]
        if mode == "tmpfile" and mio._USE_O_TMPFILE:
            assert parts == [], "an O_TMPFILE write left a named temp file"
        else:  # a dead writer's temp file is swept by the next save in that folder
            assert mio.sweep_partials(out_dir) == len(parts)
            assert not [n for n in os.listdir(out_dir) if n.endswith(".part")]
        for n in os.listdir(out_dir):  # every visible result is complete and valid
            ph = mio.load_photo(out_dir / n)
            assert ph.pixels.shape == (1560, 1560, 3)
            assert mio.read_record(out_dir / n) == {"n": 1}
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
