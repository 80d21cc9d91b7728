"""Reference side of the Real-ESRGAN comparison: ``realesrgan``'s ``RealESRGANer`` in a server.

Run by ``bench/restore.py --reference`` with the *bench-only* venv's python (see the recipe at
the top of bench/restore.py); it must not import anything from Mend. It reads one JSON command
per line on stdin and answers one JSON line on stdout (RealESRGANer's own per-tile prints go to
stderr):

    {"cmd": "load", "weights": "RealESRGAN_x4plus.pth", "tile": 80, "tile_pad": 8,
     "pre_pad": 0, "threads": 1}                      -> {"ok": true, "versions": {...}}
    {"cmd": "run", "input": "in.npy", "output": "out.npy", "tile": 80, "tile_pad": 8}
        -> {"ok": true, "seconds": 12.3}              (the time of RealESRGANer.enhance only)
    {"cmd": "quit"}

``in.npy`` is uint8 BGR (H, W, 3), as ``cv2.imread`` gives it and as ``enhance`` expects;
``out.npy`` is ``enhance``'s uint8 BGR output at x4.
"""
from __future__ import annotations

import json
import os
import sys
import time
from importlib import metadata


def main() -> int:
    reply_fd = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # RealESRGANer prints "Tile i/n"
    reply = os.fdopen(reply_fd, "w", buffering=1)

    import numpy as np
    import torch

    upsampler = None
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "load":
                torch.set_num_threads(int(cmd.get("threads", 1)))
                import basicsr
                import torchvision
                from basicsr.archs.rrdbnet_arch import RRDBNet
                from realesrgan import RealESRGANer

                net = RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23,
                              num_grow_ch=32, scale=4)
                upsampler = RealESRGANer(scale=4, model_path=cmd["weights"], model=net,
                                         tile=int(cmd.get("tile", 0)),
                                         tile_pad=int(cmd.get("tile_pad", 10)),
                                         pre_pad=int(cmd.get("pre_pad", 0)), half=False,
                                         device=torch.device("cpu"))
                answer = {"ok": True, "threads": torch.get_num_threads(), "versions": {
                    "realesrgan": metadata.version("realesrgan"),
                    "basicsr": f"{basicsr.__version__} "
                               f"(basicsr-fixed {metadata.version('basicsr-fixed')})",
                    "torch": torch.__version__, "torchvision": torchvision.__version__,
                    "basicsr_file": basicsr.__file__}}
            elif cmd["cmd"] == "run":
                assert upsampler is not None, "load first"
                if "tile" in cmd:
                    upsampler.tile_size = int(cmd["tile"])
                if "tile_pad" in cmd:
                    upsampler.tile_pad = int(cmd["tile_pad"])
                img = np.load(cmd["input"])
                t = time.perf_counter()
                out, _ = upsampler.enhance(img, outscale=4)
                seconds = time.perf_counter() - t
                np.save(cmd["output"], out)
                answer = {"ok": True, "seconds": seconds}
            else:
                answer = {"ok": False, "error": f"unknown command {cmd['cmd']!r}"}
        except Exception as e:  # noqa: BLE001 - reported to the bench, which goes on
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        reply.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
