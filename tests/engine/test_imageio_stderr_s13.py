"""Decoder messages are caught by pointing fd 2 at a temporary file while a decode runs; the
other bytes written meanwhile go back to the real stderr when the last decode ends. When that
stderr is a pipe nobody reads (a harness, a service manager's full pipe), that write blocks:
it used to block holding the capture's lock, so every later decode, in every thread - the
app's engine thread included - waited for good. Now what the pipe does not take at once is
written by a daemon thread, and nobody else waits."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import os, threading, time
from engine.imageio import _decoder_messages

r, w = os.pipe()
os.set_blocking(w, False)
try:
    while True:
        os.write(w, b"." * 65536)
except BlockingIOError:
    pass
os.set_blocking(w, True)
real = os.dup(2)
os.dup2(w, 2)  # stderr: a full pipe nobody reads

def writer():
    with _decoder_messages([]):
        os.write(2, b"a line of someone else's\n")  # written back at the end: blocks

a = threading.Thread(target=writer, daemon=True)
a.start()
a.join(5.0)
os.write(real, b"writer blocked\n" if a.is_alive() else b"writer free\n")
done = threading.Event()

def decode():
    with _decoder_messages([]):
        pass
    done.set()

threading.Thread(target=decode, daemon=True).start()
ok = done.wait(10.0)
os.write(real, b"decoded\n" if ok else b"blocked\n")
os.set_blocking(r, False)
got, deadline = b"", time.monotonic() + 10
while b"someone else's" not in got and time.monotonic() < deadline:
    try:
        got += os.read(r, 1 << 20)  # the pipe drained: the line written back arrives
    except BlockingIOError:
        time.sleep(0.05)
os.write(real, b"written back\n" if b"someone else's" in got else b"lost\n")
os._exit(0)
"""


def test_a_stderr_pipe_nobody_reads_does_not_stop_other_decodes():
    r = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True,
                       timeout=60, check=False)
    assert r.stdout == b"" and r.stderr.split() == [b"writer", b"free", b"decoded",
                                                    b"written", b"back"], (r.stdout, r.stderr)
