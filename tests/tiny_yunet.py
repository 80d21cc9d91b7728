"""Tiny ONNX graphs with the interface of OpenCV Zoo's ``face_detection_yunet_2023mar.onnx``,
written without the ``onnx`` package (a few lines of protobuf encoding).

The interface the real file has and ``cv2.FaceDetectorYN`` relies on:

* one input named ``input``, float32 NCHW, declared STATIC ``[1, 3, 640, 640]`` (the 2023mar
  export is static; OpenCV's DNN re-shapes the graph for the size given to ``setInputSize``,
  padded up to a multiple of 32). Pixels are BGR 0..255, no mean/scale
  (``blobFromImage`` with defaults).
* twelve outputs ``cls_{8,16,32}``, ``obj_*``, ``bbox_*``, ``kps_*`` of shapes
  ``[1, rows*cols, 1 | 1 | 4 | 10]`` for strides 8/16/32, row-major over the stride grid.
  As in libfacedetection.train's export (its YuNet head), each head is a conv map put through
  ``Transpose(0, 2, 3, 1)`` and ``Reshape([1, -1, C])``; cls and obj end in a ``Sigmoid``.
* OpenCV decodes, for the cell at column ``c``, row ``r`` of stride ``s``:
  score = sqrt(clamp(cls) * clamp(obj)); centre = ((c + bbox0) s, (r + bbox1) s);
  size = (exp(bbox2) s, exp(bbox3) s); landmark k = ((kps[2k] + c) s, (kps[2k+1] + r) s),
  landmarks ordered right eye, left eye, nose tip, right and left mouth corner (the
  subject's right = image left for a frontal face); then NMS.

``write_marker_yunet`` is deterministic: a cell of the stride-8 grid whose 8x8 input block
is white (every channel 255) scores ``MARKER_SCORE``; every other cell scores about 0; the box
and the landmarks are fixed offsets from the cell centre (``MARKER_BOX``,
``MARKER_LANDMARKS``). So a white 8x8 square drawn on the detection view at a cell-aligned
place is "a face" at a position the test knows.

``write_random_yunet`` has a small strided conv backbone with random weights (arbitrary, even
non-finite after ``exp``, outputs) to show the detection path survives whatever a model says.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

STRIDES = (8, 16, 32)
HEADS = (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))
OUTPUT_NAMES = tuple(f"{h}_{s}" for h, _ in HEADS for s in STRIDES)  # cv2's order
DECLARED_SIZE = 640

# the deterministic model: what it says about a white stride-8 cell
MARKER_CELL = 8
MARKER_OBJ = 0.81
MARKER_SCORE = math.sqrt(MARKER_OBJ)  # cls saturates at ~1.0 on a white cell
MARKER_BOX = (96.0, 80.0)  # w, h centred on the cell centre
# landmark offsets (pixels, from the cell centre) in YuNet's order: the subject's right eye
# (image left), left eye, nose tip, right mouth corner (image left), left mouth corner; the
# FFHQ template's proportions at 1/3 scale (to 0.5 px), so a similarity maps them onto it
MARKER_LANDMARKS = np.array([[-21.0, -16.0], [21.0, -16.0], [0.0, 8.5],
                             [-18.5, 28.0], [19.0, 27.5]], np.float32)

# ------------------------------------------------------------------ protobuf / ONNX encoding
# Field numbers from onnx/onnx.proto (proto2; repeated scalars written unpacked).
_FLOAT, _INT64 = 1, 7  # TensorProto.DataType
_ATTR_FLOAT, _ATTR_INT, _ATTR_INTS = 1, 2, 7  # AttributeProto.AttributeType


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1  # negative int64: two's complement, 10 bytes
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _int(field: int, v: int) -> bytes:
    return _key(field, 0) + _varint(int(v))


def _bytes(field: int, data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode()
    return _key(field, 2) + _varint(len(data)) + data


def _float(field: int, v: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", v)


def _tensor(name: str, arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr)
    dtype = {np.dtype(np.float32): _FLOAT, np.dtype(np.int64): _INT64}[arr.dtype]
    return (b"".join(_int(1, d) for d in arr.shape) + _int(2, dtype) + _bytes(8, name)
            + _bytes(9, arr.astype(arr.dtype.newbyteorder("<")).tobytes()))


def _attr(name: str, value: float | tuple[int, ...]) -> bytes:
    if isinstance(value, tuple):
        return _bytes(1, name) + b"".join(_int(8, v) for v in value) + _int(20, _ATTR_INTS)
    if isinstance(value, float):
        return _bytes(1, name) + _float(2, value) + _int(20, _ATTR_FLOAT)
    return _bytes(1, name) + _int(3, value) + _int(20, _ATTR_INT)


def _node(op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> bytes:
    return (b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
            + _bytes(3, name) + _bytes(4, op)
            + b"".join(_bytes(5, _attr(k, v)) for k, v in attrs.items()))


def _value_info(name: str, shape: tuple[int | str, ...]) -> bytes:
    dims = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _bytes(2, d))
                    for d in shape)
    tensor_type = _int(1, _FLOAT) + _bytes(2, dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[bytes] = []
        self.inits: list[bytes] = []
        self._n = 0

    def const(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(_tensor(name, arr))
        return name

    def op(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        self._n += 1
        out = out or f"t{self._n}"
        self.nodes.append(_node(op, inputs, [out], f"{op}_{self._n}", **attrs))
        return out

    def conv(self, x: str, w: np.ndarray, b: np.ndarray, *, stride: int = 1) -> str:
        k = w.shape[-1]
        wn = self.const(f"w{self._n + 1}", w.astype(np.float32))
        bn = self.const(f"b{self._n + 1}", b.astype(np.float32))
        return self.op("Conv", [x, wn, bn], kernel_shape=(k, k), strides=(stride, stride),
                       pads=(k // 2,) * 4)

    def head_output(self, fmap: str, head: str, stride: int, channels: int) -> None:
        """NCHW map -> [1, rows*cols, C] named like YuNet's output (sigmoid on cls/obj)."""
        t = self.op("Transpose", [fmap], perm=(0, 2, 3, 1))
        shape = self.const(f"shape_{head}_{stride}", np.array([1, -1, channels], np.int64))
        name = f"{head}_{stride}"
        if head in ("cls", "obj"):
            self.op("Sigmoid", [self.op("Reshape", [t, shape])], out=name)
        else:
            self.op("Reshape", [t, shape], out=name)

    def model_bytes(self, name: str) -> bytes:
        n = DECLARED_SIZE
        graph = (b"".join(_bytes(1, nd) for nd in self.nodes) + _bytes(2, name)
                 + b"".join(_bytes(5, t) for t in self.inits)
                 + _bytes(11, _value_info("input", (1, 3, n, n))))
        for head, c in HEADS:
            for s in STRIDES:
                graph += _bytes(12, _value_info(f"{head}_{s}", (1, (n // s) ** 2, c)))
        opset = _bytes(1, "") + _int(2, 13)
        return (_int(1, 8) + _bytes(2, "mend-tests") + _bytes(7, graph) + _bytes(8, opset))


# ------------------------------------------------------------------ the two test models

def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def write_marker_yunet(path: Path) -> Path:
    """The deterministic model (see the module docstring); returns ``path``."""
    g = _Graph()
    zeros = np.zeros((1, 3, 1, 1), np.float32)
    for s in STRIDES:
        pooled = g.op("AveragePool", ["input"], kernel_shape=(s, s), strides=(s, s))
        if s == MARKER_CELL:
            # cls = sigmoid(0.2 * (mean(B, G, R) - 200)): ~1 on a white cell, < 0.001 on a
            # cell at most half white
            cls = g.conv(pooled, np.full((1, 3, 1, 1), 0.2 / 3, np.float32),
                         np.array([-0.2 * 200.0]))
        else:
            cls = g.conv(pooled, zeros, np.array([-30.0]))  # nothing at the coarse strides
        g.head_output(cls, "cls", s, 1)
        obj = g.conv(pooled, zeros, np.array([_logit(MARKER_OBJ)]))
        g.head_output(obj, "obj", s, 1)
        bw, bh = MARKER_BOX
        bbox = np.array([0.5, 0.5, math.log(bw / s), math.log(bh / s)])
        g.head_output(g.conv(pooled, np.zeros((4, 3, 1, 1), np.float32), bbox), "bbox", s, 4)
        kps = (0.5 + MARKER_LANDMARKS / s).reshape(-1)
        g.head_output(g.conv(pooled, np.zeros((10, 3, 1, 1), np.float32), kps), "kps", s, 10)
    path.write_bytes(g.model_bytes("tiny-yunet-marker"))
    return path


def write_random_yunet(path: Path, *, seed: int = 0, weight_std: float = 0.5,
                       width: int = 4) -> Path:
    """A random-weight model: strided 3x3 conv backbone (stride 2 five times; features at
    strides 8, 16, 32) and 3x3 conv heads, as in the real network's layout (much smaller).
    ``weight_std`` scales the weights: large values give huge / non-finite decoded boxes."""
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return rng.normal(0.0, weight_std, shape).astype(np.float32)

    g = _Graph()
    x = g.op("Mul", ["input", g.const("inv255", np.array([1 / 255], np.float32))])
    feats = {}
    c_in = 3
    for level in range(5):  # strides 2, 4, 8, 16, 32
        x = g.op("Relu", [g.conv(x, rand(width, c_in, 3, 3), rand(width), stride=2)])
        c_in = width
        if 2 ** (level + 1) in STRIDES:
            feats[2 ** (level + 1)] = x
    for s in STRIDES:
        for head, c in HEADS:
            g.head_output(g.conv(feats[s], rand(c, width, 3, 3), rand(c)), head, s, c)
    path.write_bytes(g.model_bytes(f"tiny-yunet-random-{seed}"))
    return path


def write_wrong_interface_onnx(path: Path) -> Path:
    """A valid ONNX graph that is not YuNet: input ``input``, one output ``output0``."""
    g = _Graph()
    g.op("Relu", [g.conv("input", np.ones((1, 3, 1, 1), np.float32), np.zeros(1))],
         out="output0")
    graph = (b"".join(_bytes(1, nd) for nd in g.nodes) + _bytes(2, "not-yunet")
             + b"".join(_bytes(5, t) for t in g.inits)
             + _bytes(11, _value_info("input", (1, 3, "h", "w")))
             + _bytes(12, _value_info("output0", (1, 1, "h", "w"))))
    path.write_bytes(_int(1, 8) + _bytes(7, graph) + _bytes(8, _bytes(1, "") + _int(2, 13)))
    return path
