"""Photo I/O: load upright float RGB with metadata; save atomically with metadata kept.

Loading (``load_photo``)
    JPEG/MPO, PNG/APNG, TIFF (8/16-bit, int, float), WebP, BMP, GIF and whatever else Pillow reads
    by content (the extension is never trusted), plus HEIC/HEIF when ``pillow-heif`` is installed,
    JPEG XL when ``pillow-jxl-plugin`` is installed and camera RAW (DNG, CR2, CR3, NEF, ARW, RAF,
    ORF, RW2, PEF, SRW...) when ``rawpy`` is installed (``engine/rawio.py``: LibRaw decodes it to
    16-bit sRGB; a RAW exports as 16-bit TIFF, a JPEG XL as PNG). Without the optional package
    such a file gets a ``BadImage`` naming the extra to install.
    An RGB or untagged grey JPEG's pixels are decoded by OpenCV (the same bytes as Pillow's, in
    half the time; its metadata still comes from Pillow's header).
    16-bit colour PNG/TIFF is decoded with OpenCV because Pillow truncates it to 8 bits (once:
    Pillow's own decode is skipped when nothing it alone reads follows the image data; a file
    over 2 GB, which cv2.imdecode cannot take, is decoded from its path); one OpenCV cannot
    decode gets Pillow's 8 bits and a warning saying so. What libjpeg,
    libpng and libtiff inside OpenCV, and libtiff inside Pillow, print about damaged data
    ("Corrupt JPEG data: ...", "libtiff: ...") is kept off stderr and becomes one of the
    photo's warnings, or the reason of its ``BadImage`` (``_decoder_messages``). A 32-bit
    floating-point RGB(A) TIFF (an HDR merge; Pillow cannot open it) is decoded by OpenCV into
    a 16-bit photo: linear values (a linear profile, or none) are encoded with the sRGB curve,
    highlights above white clipped with a warning (``_load_float_tiff``). JPEG XL
    keeps 16 bits for greyscale (with or without alpha) only: pillow-jxl-plugin 1.3.8 decodes
    colour JXL to 8 bits (``bit_depth`` 8, ``info["source_bit_depth"]`` and a warning say so);
    an animated JPEG XL is refused before it is decoded (the plugin decodes every frame).
    The export's format is that of the decoded source (``Photo.format``), not its extension. EXIF
    orientation (all 8) is applied and then reset to 1 in ``photo.exif``; the stale EXIF thumbnail
    is dropped; ICC, XMP, DPI and the JPEG quantization tables are kept. A grey ICC profile is
    applied (8 and 16 bits, through a 16-bit table: the pixels become sRGB; ``Photo.grey_icc``
    keeps it for a grey result, ``Photo.grey`` says the source is grey), and so is a CMYK one
    (``load_preview``'s too: LittleCMS, to sRGB; a 16-bit CMYK TIFF keeps its 16 bits,
    ``_cmyk16_to_rgb``). The
    pixels of a photo (8 or 16 bits) whose RGB profile has a linear tone curve (linear sRGB,
    linear Rec.2020, gamma 1.0) are encoded with the sRGB curve, which the models expect:
    ``Photo.icc_profile`` is then the profile's primaries with that curve, ``Photo.linear_icc``
    the photo's own (``_linear_to_perceptual``). A JPEG XL's and a float TIFF's previews are
    converted to sRGB (``source_profile`` cannot say their profile); a HEIF's nclx colour box
    becomes an RGB
    ICC profile, and so do a PNG's gAMA/cHRM chunks (without iCCP or sRGB; sRGB-like values
    add none) and, without any profile, EXIF ColorSpace 0xFFFF with the interoperability index
    R03 (a camera set to Adobe RGB: an Adobe RGB (1998) profile) - ``source_profile`` gives
    the same profile from the header alone; a JPEG XL's XMP is read from its ``xml `` (or,
    with brotli, ``brob``) box; a JPEG's extended XMP (Adobe XMP Specification Part 3: the
    part of a packet over 64 KB, in APP1 "http://ns.adobe.com/xmp/extension/" segments) is put
    together, checked against its MD5 GUID and merged into ``photo.xmp``.
    Every failure is a ``BadImage`` (``ImageTooLarge`` for size limits and decompression bombs)
    naming the file.

Saving (``save_photo``)
    JPEG/WebP through Pillow, PNG through OpenCV with our metadata chunks spliced in, TIFF through
    a small writer of our own (Pillow cannot write 16-bit RGB), which puts the source's EXIF
    block first, byte for byte, so that the maker note and Interop IFD keep their offsets (a
    result over 4 GB, which needs BigTIFF, is refused before anything is written). The
    source ICC, EXIF (orientation 1, no thumbnail, pixel dimensions and resolution updated,
    broken EXIF dropped; over 64 KB it does not fit a JPEG), XMP (in a JPEG, over one segment:
    standard + extended XMP) and DPI are kept (a resolution no file can hold - 0, NaN, ... -
    is left out, with a note, the EXIF kept). A linear photo's 16-bit result goes back to
    linear light with its own profile, byte for byte; an 8-bit one keeps the sRGB curve and
    the profile saying so (8 bits of linear light band in the shadows). A grey source's
    result (``Photo.grey``) whose three channels are equal is written as grey - 8-bit L or
    16-bit grey, LA with its alpha; WebP has no grey: RGB - converted back to the source's
    grey profile, which it carries byte for byte (``_grey_result``). A 16-bit grey + alpha
    TIFF, which Pillow cannot open (nor OpenCV: 8-bit grey, no alpha), is decoded by Mend
    itself, source or result (``_load_grey_alpha16_tiff``: uncompressed or Deflate strips).

The Mend record (what was done: steps, models, versions) is stored in XMP in every format, as
``<mend:record>`` (namespace ``urn:x-mend:ns:1.0#``) holding the record as JSON, inside its own
``rdf:Description`` merged into the source XMP packet; an older record is taken out wherever it
is, as an element or as the attribute the Adobe XMP Toolkit makes of it, and nothing else is.
JPEG: APP1 XMP segment; PNG: iTXt ``XML:com.adobe.xmp``; TIFF: tag 700; WebP: XMP chunk.
``read_record(path)`` reads it back.

IPTC-IIM (captions, keywords, copyright; ``Photo.iptc``) is read from a JPEG's APP13
"Photoshop 3.0" resource 0x0404, a TIFF's (or TIFF-based RAW's) tag 33723 or its Photoshop
resources (tag 34377). A JPEG result gets the source JPEG's APP13 resources as they were (less
thumbnails, resolution and the like: ``_PS_KEEP``), after the APP0-APP2 segments where Photoshop
puts them, or, from another source, the IIM wrapped as resource 0x0404; an APP13 over 64 KB is
not written (a note says so). A TIFF result gets tag 33723 (UNDEFINED). PNG and WebP have no
standard place for IIM: a note says it was not carried. ``keep_metadata=False`` (--no-metadata)
drops IPTC with EXIF and XMP; the ICC profile is kept either way. XMP sidecars of RAW files:
``engine/rawio.py``.

Writes are atomic and never clobber: on Linux the data goes to an unnamed ``O_TMPFILE`` in the
target folder, is fsynced, then linked to its final name (nothing is left behind if the process
dies mid-write). Elsewhere a ``.<name>.mend-<pid>-<rand>.part`` temp file is fsynced and
``os.replace``d; leftovers of dead processes are swept on the next save in that folder
(``sweep_partials``).
"""
from __future__ import annotations

import bisect
import contextlib
import errno
import functools
import html
import json
import logging
import math
import os
import re
import secrets
import stat
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .api import OutputOptions
from .errors import BadImage, EngineError, ImageTooLarge, SaveFailed

log = logging.getLogger(__name__)

RAW_EXTENSIONS = {".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf",
                  ".orf", ".rw2", ".pef", ".srw", ".x3f", ".mrw", ".3fr", ".erf", ".kdc", ".dcr",
                  ".mos", ".iiq", ".rwl", ".raw"}
PHOTO_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp", ".bmp", ".heic",
                    ".heif", ".avif", ".gif", ".jxl"} | RAW_EXTENSIONS
# RAW kinds (``Photo.format`` of a RAW source, see rawio.sniff)
RAW_FORMATS = {"DNG", "CR2", "CR3", "NEF", "ARW", "RAF", "ORF", "RW2", "PEF", "SRW", "X3F", "MRW",
               "RWL", "3FR", "ERF", "DCR", "MOS", "IIQ", "RAW"}
JXL_HINT = ("this is a JPEG XL file; reading JPEG XL needs the optional 'jxl' extra: "
            "pip install 'mend[jxl]' (or pip install pillow-jxl-plugin)")
DEFAULT_MAX_MEGAPIXELS = 200.0
MEND_XMP_NS = "urn:x-mend:ns:1.0#"

# output format name -> (canonical extension, accepted extensions)
_OUT_FORMATS = {
    "jpeg": (".jpg", {".jpg", ".jpeg", ".jpe"}),
    "png": (".png", {".png"}),
    "tiff": (".tif", {".tif", ".tiff"}),
    "webp": (".webp", {".webp"}),
}
_FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff"}
# source format (PIL name) -> output format when the user did not choose one
# (a RAW is never written: its result is a 16-bit TIFF; a JPEG XL's is a PNG, lossless like most
# JXL sources and 16-bit when the decoded pixels are - greyscale only: pillow-jxl-plugin decodes
# colour JXL to 8 bits and cannot write 16-bit colour JXL)
_SOURCE_TO_OUT = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "TIFF": "tiff", "WEBP": "webp",
                  "HEIF": "jpeg", "AVIF": "jpeg", "JXL": "png",
                  **{k: "tiff" for k in RAW_FORMATS}}
_EXT_TO_OUT = {".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".png": "png", ".tif": "tiff",
               ".tiff": "tiff", ".webp": "webp", ".heic": "jpeg", ".heif": "jpeg", ".avif": "jpeg",
               ".jxl": "png",
               **{e: "tiff" for e in RAW_EXTENSIONS}}


@dataclass
class Photo:
    """A decoded photo: ``pixels`` float32 RGB in [0, 1], (H, W, 3), already upright."""

    path: Path
    pixels: np.ndarray
    alpha: np.ndarray | None = None  # float32 (H, W) in [0, 1]
    bit_depth: int = 8
    format: str = "PNG"  # PIL format name of the source
    icc_profile: bytes | None = None
    exif: bytes | None = None  # raw EXIF of the source (orientation is reset on save)
    xmp: bytes | None = None
    dpi: tuple[float, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)  # e.g. jpeg quantization tables
    iptc: bytes | None = None  # IPTC-IIM datasets (captions, keywords, copyright)
    # the source's own profile when its tone curve is linear and the pixels were encoded with
    # the sRGB curve for processing (restoration models expect gamma-encoded pixels):
    # ``icc_profile`` is then that profile's primaries with the sRGB curve, which describes
    # ``pixels``; a 16-bit result is converted back and gets this profile, byte for byte
    linear_icc: bytes | None = None
    # the source stores one channel (grey, with or without alpha: L, LA, I;16, I, F, 1): its
    # ``pixels`` are R = G = B, and a result that still is gets written as grey (``save_photo``)
    grey: bool = False
    # the grey ICC profile the source's values were converted from (to sRGB, on loading): a grey
    # result is converted back to it and carries it, byte for byte (``_grey_result``)
    grey_icc: bytes | None = None

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def is_photo_path(path: Path) -> bool:
    return Path(path).suffix.lower() in PHOTO_EXTENSIONS


# --------------------------------------------------------------------------------------------
# limits and Pillow set-up


def max_pixels_default() -> int:
    """The pixel limit: ``MEND_MAX_MEGAPIXELS`` (megapixels) or 200 megapixels."""
    raw = os.environ.get("MEND_MAX_MEGAPIXELS", "").strip()
    mp = DEFAULT_MAX_MEGAPIXELS
    if raw:
        try:
            val = float(raw)
            if val > 0:
                mp = val
        except ValueError:
            log.warning("ignoring MEND_MAX_MEGAPIXELS=%r (not a number)", raw)
    return int(mp * 1_000_000)


_BOMB_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _pil():
    """Import Pillow once, register the HEIF opener when pillow-heif is importable."""
    import warnings

    from PIL import Image

    # Mend applies its own (configurable) pixel limit before decoding anything.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        import pillow_heif

        # thumbnails: listed so that load_preview's draft() can decode an embedded thumbnail
        # (an iPhone's 320x240: 7 ms instead of 0.7 s); a full load never asks for one
        pillow_heif.register_heif_opener(thumbnails=True, depth_images=False, aux_images=False)
    except Exception as e:  # noqa: BLE001 - not installed or broken: HEIC reads as "unsupported"
        log.debug("HEIF support unavailable: %s", e)
    try:
        import pillow_jxl  # noqa: F401 — registers the JXL opener/saver with Pillow
    except Exception as e:  # noqa: BLE001 — not installed or broken: JXL gets JXL_HINT
        log.debug("JPEG XL support unavailable: %s", e)
    return Image


def heif_supported() -> bool:
    _pil()
    from PIL import Image

    return "HEIF" in Image.OPEN


def jxl_supported() -> bool:
    _pil()
    from PIL import Image

    return "JXL" in Image.OPEN


def raw_supported() -> bool:
    from . import rawio

    return rawio.rawpy_available()


_JXL_BOX = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def _jxl_header(p: Path) -> tuple[int, int, int] | None:
    """None when ``p`` is not JPEG XL, else its stored (width, height, orientation) from the
    codestream header ((0, 0, 1) when the header cannot be read)."""
    h = _jxl_parse(p)
    return None if h is None else h[:3]


def _jxl_bit_depth(p: Path) -> int | None:
    """Bits per sample a JPEG XL declares (ImageMetadata's BitDepth; 8 when all-default), or
    None when ``p`` is not JPEG XL or its header cannot be read."""
    h = _jxl_parse(p)
    return None if h is None else h[3]


_JXL_MAX_BOXES = 4096  # boxes of a JPEG XL container looked at (headers only, bodies skipped)


def _jxl_boxes(f: BinaryIO, pos: int = 12) -> Iterator[tuple[bytes, int, int | None]]:
    """(type, payload offset, payload size or None for "to the end of the file") of the first
    ``_JXL_MAX_BOXES`` boxes of a JPEG XL container ``f``, after its signature box (or of any
    ISOBMFF file, a HEIF's, from ``pos`` 0); each box's header is read, its body skipped by its
    size. Seeks ``f``."""
    for _ in range(_JXL_MAX_BOXES):
        f.seek(pos)
        hdr = f.read(8)
        if len(hdr) < 8:
            return
        size, btype = struct.unpack(">I4s", hdr)
        skip = 8
        if size == 1:
            ext = f.read(8)
            if len(ext) < 8:
                return
            size = struct.unpack(">Q", ext)[0]
            skip = 16
        yield btype, pos + skip, (size - skip if size >= skip else None)
        if size < skip:  # 0: the last box, up to the end of the file
            return
        pos += size


_JXL_XMP_MAX = 16 << 20  # bytes of XMP read from a JPEG XL box (decompressed)


def _jxl_xmp(p: Path, notes: list[str] | None = None) -> bytes | None:
    """The XMP packet of a JPEG XL container: its ``xml `` box, or a brotli-compressed ``brob``
    one when the brotli package is importable (otherwise ``notes`` says the XMP was left out).
    pillow-jxl-plugin (1.3.8) does not hand the XMP out in ``im.info``."""
    try:
        with open(p, "rb") as f:
            if f.read(12) != _JXL_BOX:
                return None
            for btype, start, n in _jxl_boxes(f):
                if btype not in (b"xml ", b"brob"):
                    continue
                f.seek(start)
                if btype == b"brob":
                    if f.read(4) != b"xml ":
                        continue
                    n = None if n is None else max(0, n - 4)
                data = f.read(_JXL_XMP_MAX + 1 if n is None else min(n, _JXL_XMP_MAX + 1))
                if len(data) > _JXL_XMP_MAX:
                    continue
                if btype == b"brob":
                    return _unbrotli_xmp(p, data, notes)
                return data or None
    except OSError:
        return None
    return None


def _unbrotli_xmp(p: Path, data: bytes, notes: list[str] | None) -> bytes | None:
    try:
        import brotli
    except ImportError:
        msg = ("this JPEG XL's XMP (keywords, rating, rights...) is brotli-compressed and "
               "reading it needs the 'brotli' package (pip install brotli): it was not copied "
               "to the result")
    else:
        try:
            d, out = brotli.Decompressor(), bytearray()
            # in small steps, to stop a decompression bomb: 16 bytes in make at most about one
            # meta-block out (16 MB); 256 bytes of a bomb made 304 MB in one step
            for i in range(0, len(data), 16):
                out += d.process(data[i:i + 16])
                if len(out) > _JXL_XMP_MAX:
                    raise ValueError("larger than 16 MB")
            return bytes(out) or None
        except Exception as e:  # noqa: BLE001 - brotli raises its own error type
            msg = (f"this JPEG XL's brotli-compressed XMP could not be read ({e}): it was not "
                   "copied to the result")
    log.warning("%s: %s", p.name, msg)
    if notes is not None:
        notes.append(msg)
    return None


def _box_file_cut(p: Path) -> bool:
    """Whether ``p``, an ISOBMFF file (a HEIF or AVIF: its first box is ``ftyp``), ends inside
    one of its boxes: a download or copy cut short. libheif (1.23) decodes a grid image - a
    phone's HEIC, 512-px tiles - whose last tiles' data is missing without a word, those
    tiles green."""
    try:
        with open(p, "rb") as f:
            end = os.fstat(f.fileno()).st_size
            for i, (btype, start, n) in enumerate(_jxl_boxes(f, 0)):
                if i == 0 and btype != b"ftyp":
                    return False
                if n is not None and start + n > end:
                    return True
    except OSError:
        return False
    return False


def _tiff_ifd_cut(p: Path) -> bool:
    """Whether ``p`` starts as a TIFF whose first IFD lies, in part, past the end of the file:
    a scan or camera TIFF cut short (its IFD often comes last), which Pillow calls unknown."""
    try:
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8 or head[:4] not in (b"II*\x00", b"MM\x00*"):
                return False
            bo = "<" if head[:2] == b"II" else ">"
            ifd = struct.unpack(bo + "I", head[4:])[0]
            f.seek(ifd)
            n = f.read(2)
            end = os.fstat(f.fileno()).st_size
    except (OSError, OverflowError):
        return False
    return len(n) < 2 or ifd + 2 + 12 * struct.unpack(bo + "H", n)[0] + 4 > end


def _riff_cut(p: Path) -> bool:
    """Whether ``p`` is a RIFF file (a WebP) shorter than its header says: cut short."""
    try:
        with open(p, "rb") as f:
            head = f.read(12)
            end = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    return (len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP"
            and 8 + struct.unpack("<I", head[4:8])[0] > end)


def _jxl_codestream_start(f: BinaryIO, want: int) -> bytes:
    """The first ``want`` bytes of a JPEG XL container's codestream: a ``jxlc`` box's, or those
    of its ``jxlp`` parts joined (each after its 4-byte index; other boxes may sit between the
    parts); fewer when the container holds fewer (within ``_JXL_MAX_BOXES`` boxes)."""
    code = b""
    for btype, start, n in _jxl_boxes(f):
        if btype == b"jxlc" and not code:
            f.seek(start)
            return f.read(want if n is None else min(n, want))
        if btype != b"jxlp":
            continue
        if n is not None and n < 4:  # no room for its index: damaged
            return b""
        f.seek(start)
        index = f.read(4)
        if len(index) < 4:
            break
        n = None if n is None else n - 4
        code += f.read(want - len(code) if n is None else min(n, want - len(code)))
        if len(code) >= want or index[0] & 0x80:  # enough, or the last part
            break
    return code


def _jxl_parse(p: Path) -> tuple[int, int, int, int | None, bool | None] | None:
    """(width, height, orientation, bits per sample or None, animated) of a JPEG XL codestream
    header (ISO/IEC 18181-1 SizeHeader and the start of ImageMetadata: ``have_animation``),
    None when not JPEG XL. ``animated`` is None when the header ends before it says (a file
    cut short, or a container whose first codestream part is followed by more boxes than are
    looked at: such a file must not pass for a still image)."""
    try:
        with open(p, "rb") as f:
            head = f.read(12)
            if head[:2] == b"\xff\x0a":
                code = head[2:] + f.read(52)
            elif head == _JXL_BOX:
                code = _jxl_codestream_start(f, 66)
                if code[:2] != b"\xff\x0a":
                    return (0, 0, 1, None, None)
                code = code[2:]
            elif head[4:7] == b"JXL":  # pillow-jxl-plugin takes it for JPEG XL: size unknown
                return (0, 0, 1, None, None)
            else:
                return None
    except OSError:
        return None
    bitpos = 0

    def u(n: int) -> int:
        nonlocal bitpos
        v = 0
        for i in range(n):
            byte = code[(bitpos + i) >> 3]
            v |= ((byte >> ((bitpos + i) & 7)) & 1) << i
        bitpos += n
        return v

    def u32(*dist: int | tuple[int, int]) -> int:  # U32(): Val(v) or BitsOffset(n, offset)
        d = dist[u(2)]
        return d if isinstance(d, int) else u(d[0]) + d[1]

    def size_header() -> tuple[int, int]:
        small = u(1)
        h = (u(5) + 1) * 8 if small else u32((9, 1), (13, 1), (18, 1), (30, 1))
        ratio = u(3)
        if ratio:
            num, den = _JXL_RATIOS[ratio]
            w = h * num // den
        else:
            w = (u(5) + 1) * 8 if small else u32((9, 1), (13, 1), (18, 1), (30, 1))
        return w, h

    try:
        w, h = size_header()
    except IndexError:
        return (0, 0, 1, None, None)
    orientation = 1
    animated: bool | None = None  # not known until its bit is read
    try:
        if u(1):  # ImageMetadata.all_default: 8-bit integer samples
            return (w, h, orientation, 8, False)
        if not u(1):  # extra_fields (orientation, sizes, animation) absent
            animated = False
        else:
            orientation = u(3) + 1
            if u(1):  # have_intr_size
                size_header()
            if u(1):  # have_preview: PreviewHeader
                div8 = u(1)
                pdist = ((16, 32, (5, 1), (9, 33)) if div8 else
                         ((6, 1), (8, 65), (10, 321), (12, 1345)))
                u32(*pdist)
                if not u(3):
                    u32(*pdist)
            animated = bool(u(1))
            if animated:  # have_animation: AnimationHeader
                u32(100, 1000, (10, 1), (30, 1))
                u32(1, 1001, (8, 1), (10, 1))
                u32(0, (3, 0), (16, 0), (32, 0))
                u(1)
        if u(1):  # BitDepth.float_sample
            bits = u32(32, 16, 24, (6, 1))
        else:
            bits = u32(8, 10, 12, (6, 1))
        return (w, h, orientation, bits, animated)
    except IndexError:
        return (w, h, orientation, None, animated)


def _check_path(p: Path) -> None:
    try:
        st = p.stat()
    except FileNotFoundError:
        raise BadImage(p, "file not found") from None
    except PermissionError:
        raise BadImage(p, "permission denied (cannot look at this file)") from None
    except OSError as e:
        raise BadImage(p, f"cannot open the file ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise BadImage(p, "this is a folder, not a photo")
    if not stat.S_ISREG(st.st_mode):
        raise BadImage(p, "not a regular file")
    if st.st_size == 0:
        raise BadImage(p, "the file is empty (0 bytes)")
    if not os.access(p, os.R_OK):
        raise BadImage(p, "permission denied (the file is not readable)")


_BOMB_RE = re.compile(r"\((\d+) pixels\)")
_TRUNCATED = "the file is truncated (incomplete download or copy?)"


def _jxl_precheck(p: Path, limit: int) -> tuple[int, int, int] | None:
    """None when ``p`` is not JPEG XL, else its header's (width, height, orientation) once the
    pixel limit is checked: pillow-jxl-plugin decodes the whole image inside Image.open, so a
    JPEG XL whose size cannot be read from its header is refused, never opened. So is an
    animated one: the plugin (1.3.8) decodes every frame inside Image.open and hands out the
    last one, so the time it takes grows with the number of frames, which no header gives (a
    40 KB file of 100 one-megapixel frames: 2.4 s of CPU; the limit is per frame)."""
    jxl = _jxl_parse(p)
    if jxl is None:
        return None
    if "JXL" not in _pil().OPEN:
        raise BadImage(p, JXL_HINT)
    if jxl[0] <= 0 or jxl[1] <= 0:
        raise BadImage(p, "the JPEG XL header is damaged or unsupported (its size cannot be "
                          "read): the file was not decoded")
    if jxl[0] * jxl[1] > limit:
        raise _too_large(p, jxl[0] * jxl[1], limit)
    if jxl[4] is None:  # the header ends before it says: perhaps animated, perhaps cut short
        raise BadImage(p, "the JPEG XL header is damaged or unsupported (it ends before saying "
                          "whether the image is animated): the file was not decoded")
    if jxl[4]:
        raise BadImage(p, "animated JPEG XL is not supported (its decoder would decode every "
                          "frame, with no bound on the time it takes): the file was not "
                          "decoded; save its first frame as a still image")
    return jxl[:3]


def _open_image(p: Path, limit: int):
    """Open (header only) and enforce the pixel limit before anything is decoded."""
    Image = _pil()
    _jxl_precheck(p, limit)
    try:
        im = Image.open(p)
    except Image.DecompressionBombError as e:
        m = _BOMB_RE.search(str(e))
        n = int(m.group(1)) if m else None
        if n is None or n > limit:
            raise _too_large(p, n, limit) from None
        with _BOMB_LOCK:  # our limit is above Pillow's: let Pillow open it, our check applies
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                im = Image.open(p)
            finally:
                Image.MAX_IMAGE_PIXELS = old
    if im.format in ("HEIF", "AVIF") and _box_file_cut(p):  # (decoded, it would look whole)
        im.close()
        raise BadImage(p, _TRUNCATED)
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise BadImage(p, "the image has no pixels")
    if w * h > limit:
        im.close()
        raise _too_large(p, w * h, limit)
    return im


def _megapixels(n: float) -> str:
    """``n`` pixels in megapixels, with the digits that tell apart a size and a limit below
    10 MP ("0.2 megapixels", never "0 megapixels")."""
    mp = n / 1e6
    return f"{mp:.0f}" if mp >= 10 else f"{mp:.2g}" if mp >= 0.01 else f"{mp:.1g}"


def _too_large(p: Path, n: int | None, limit: int) -> ImageTooLarge:
    size = f"{_megapixels(n)} megapixels" if n else "too many pixels"
    return ImageTooLarge(
        p, f"the image is too large ({size}; the limit is {_megapixels(limit)} megapixels, "
           "set MEND_MAX_MEGAPIXELS to change it) or is a decompression bomb")


def _reason(e: BaseException) -> str:
    """A photographer-readable reason for a decoder exception."""
    Image = _pil()
    msg = str(e).strip()
    low = msg.lower()
    if isinstance(e, Image.UnidentifiedImageError):
        return "not a photo format Mend can read (the content is not a known image type)"
    if "truncated" in low or isinstance(e, EOFError):
        return _TRUNCATED
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, MemoryError):
        return "not enough memory to decode this image"
    detail = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    if len(detail) > 160:
        detail = detail[:157] + "..."
    return f"the file is damaged or unsupported ({detail})"


def _fail(p: Path, e: BaseException) -> BadImage:
    Image = _pil()
    if isinstance(e, BadImage):
        return e
    if isinstance(e, Image.DecompressionBombError):
        m = _BOMB_RE.search(str(e))
        return _too_large(p, int(m.group(1)) if m else None, max_pixels_default())
    if _box_file_cut(p) or _riff_cut(p):  # not "not a photo format Mend can read"
        return BadImage(p, _TRUNCATED)
    if _tiff_ifd_cut(p):  # (cut short before its IFD, or a damaged offset: no telling which)
        return BadImage(p, "the file is truncated or damaged (its TIFF directory lies past "
                           "the end of the file)")
    return BadImage(p, _reason(e))


# --------------------------------------------------------------------------------------------
# EXIF (raw TIFF structure) helpers: read orientation, reset it, drop the thumbnail — in place,
# so maker notes and everything else stay byte-identical.

_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_EXIF_PREFIX = b"Exif\x00\x00"


def _tiff_body(blob: bytes | None) -> bytes | None:
    """The TIFF structure inside an EXIF blob (with or without the ``Exif\\0\\0`` prefix)."""
    if not blob:
        return None
    if blob.startswith(_EXIF_PREFIX):
        blob = blob[6:]
    for start in range(min(len(blob), 16)):
        if blob[start:start + 4] in (b"II*\x00", b"MM\x00*"):
            return bytes(blob[start:])
    return None


class _Tiff:
    """Bounds-checked reader of a TIFF structure (EXIF blob body)."""

    def __init__(self, data: bytes | bytearray) -> None:
        if len(data) < 8 or data[:4] not in (b"II*\x00", b"MM\x00*"):
            raise ValueError("not a TIFF/EXIF structure")
        self.data = data
        self.bo = "<" if data[:2] == b"II" else ">"

    def u16(self, off: int) -> int:
        if off < 0 or off + 2 > len(self.data):
            raise ValueError("offset out of range")
        return struct.unpack_from(self.bo + "H", self.data, off)[0]

    def u32(self, off: int) -> int:
        if off < 0 or off + 4 > len(self.data):
            raise ValueError("offset out of range")
        return struct.unpack_from(self.bo + "I", self.data, off)[0]

    def entries(self, ifd: int):
        """Yield (entry_offset, tag, type, count, value_offset, nbytes) of one IFD."""
        n = self.u16(ifd)
        if n > 1000 or ifd + 2 + 12 * n + 4 > len(self.data):
            raise ValueError("IFD out of range")
        for i in range(n):
            e = ifd + 2 + 12 * i
            tag, typ = self.u16(e), self.u16(e + 2)
            count = self.u32(e + 4)
            nbytes = _TYPE_SIZE.get(typ, 1) * count
            voff = e + 8 if nbytes <= 4 else self.u32(e + 8)
            yield e, tag, typ, count, voff, nbytes

    def next_ifd_ptr(self, ifd: int) -> int:
        return ifd + 2 + 12 * self.u16(ifd)

    def value(self, typ: int, voff: int) -> int | None:
        if typ == 3:
            return self.u16(voff)
        if typ == 4:
            return self.u32(voff)
        return None


def exif_orientation(blob: bytes | None) -> int:
    """EXIF orientation 1..8 of a raw EXIF blob (1 when absent or unreadable)."""
    body = _tiff_body(blob)
    if body is None:
        return 1
    try:
        t = _Tiff(body)
        for _e, tag, typ, _c, voff, _n in t.entries(t.u32(4)):
            if tag == 0x0112:
                v = t.value(typ, voff)
                return v if v in range(1, 9) else 1
    except (ValueError, struct.error):
        pass
    return 1


def _rational(v: float) -> tuple[int, int]:
    if abs(v - round(v)) < 1e-6:
        return max(1, round(v)), 1
    return max(1, round(v * 1000)), 1000


DPI_MAX = 4_000_000.0  # dots per inch a result may say (a RATIONAL of 1/1000ths holds 4.29 M)


def dpi_usable(dpi: Any) -> bool:
    """Whether ``dpi`` is an (x, y) resolution a file can say: both finite, above 0 and at
    most ``DPI_MAX`` (0, negative, NaN or infinite values come from damaged or made-up
    metadata: written, they made the EXIF, or the whole save, fail)."""
    try:
        x, y = (float(v) for v in dpi)
    except (TypeError, ValueError):
        return False
    return 0.0 < x <= DPI_MAX and 0.0 < y <= DPI_MAX  # (False for NaN)


def _dpi_text(dpi: Any) -> str:
    try:
        return " × ".join(f"{float(v):g}" for v in dpi) + " dpi"
    except (TypeError, ValueError):
        return repr(dpi)


def clean_exif(blob: bytes | None, width: int | None = None, height: int | None = None,
               dpi: tuple[float, float] | None = None,
               warnings: list[str] | None = None) -> bytes | None:
    """EXIF fit for an upright, edited copy: orientation 1, thumbnail dropped, pixel size and
    (given ``dpi``, dots per inch) X/YResolution updated.

    Patches the blob in place (maker notes and unknown tags stay intact). Returns the blob with
    the ``Exif\\0\\0`` prefix, or None when it is not a readable EXIF structure (it is dropped).
    A ``dpi`` no file can hold (``dpi_usable``) is not written: the EXIF keeps its own
    X/YResolution, the rest is updated as usual, and ``warnings`` (when given) says so.
    """
    body = _tiff_body(blob)
    if body is None:
        return None
    if dpi is not None and not dpi_usable(dpi):
        msg = (f"the resolution to write ({_dpi_text(dpi)}) is not a usable value: the EXIF "
               "keeps its own resolution (the rest of the EXIF is kept)")
        log.warning("%s", msg)
        if warnings is not None:
            warnings.append(msg)
        dpi = None
    data = bytearray(body)
    try:
        t = _Tiff(data)
        bo = t.bo
        ifd0 = t.u32(4)
        keep_end = 8
        sub: dict[int, int] = {}
        resolution: dict[int, int] = {}  # X/YResolution -> offset of its rational
        unit = 2  # ResolutionUnit: 2 inches (the default), 3 centimetres

        def scan(ifd: int) -> None:
            nonlocal keep_end, unit
            keep_end = max(keep_end, t.next_ifd_ptr(ifd) + 4)
            for e, tag, typ, count, voff, nbytes in list(t.entries(ifd)):
                if nbytes > 4:
                    keep_end = max(keep_end, voff + nbytes)
                if tag in (0x8769, 0x8825, 0xA005) and typ in (4, 13) and count == 1:
                    sub[tag] = t.u32(e + 8)
                if tag == 0x0112 and typ in (3, 4) and ifd == ifd0:  # SHORT, or LONG as read
                    struct.pack_into(bo + ("H" if typ == 3 else "I"), data, e + 8, 1)
                if tag in (0x011A, 0x011B) and typ in (5, 10) and count == 1 and ifd == ifd0:
                    resolution[tag] = voff
                if tag == 0x0128 and typ == 3 and count == 1 and ifd == ifd0:
                    unit = t.u16(voff)
                if tag in (0xA002, 0xA003) and count == 1 and typ in (3, 4):
                    dim = width if tag == 0xA002 else height
                    if dim is not None:
                        struct.pack_into(bo + "HII", data, e + 2, 4, 1, dim)

        scan(ifd0)
        for tag in (0x8769, 0x8825):
            if tag in sub:
                try:
                    scan(sub[tag])
                except ValueError:
                    pass
        if 0xA005 in sub:
            try:
                scan(sub[0xA005])
            except ValueError:
                pass
        if dpi is not None and unit in (2, 3):  # the print size the container says, same unit
            for tag, value in zip((0x011A, 0x011B), dpi, strict=True):
                if tag in resolution and resolution[tag] + 8 <= len(data):
                    v = float(value) / (2.54 if unit == 3 else 1.0)
                    struct.pack_into(bo + "II", data, resolution[tag], *_rational(v))
        # unlink IFD1 (the thumbnail) and cut it off when it sits after everything else
        ptr = t.next_ifd_ptr(ifd0)
        ifd1 = t.u32(ptr)
        if ifd1:
            struct.pack_into(bo + "I", data, ptr, 0)
            thumb = ifd1
            try:
                for _e, tag, typ, _c, voff, _n in t.entries(ifd1):
                    if tag == 0x0201:
                        thumb = min(thumb, t.value(typ, voff) or thumb)
            except ValueError:
                pass
            if 8 < keep_end <= min(ifd1, thumb) <= len(data):
                del data[keep_end:]
    except (ValueError, struct.error):
        return None
    return _EXIF_PREFIX + bytes(data)  # a JPEG segment's 64 KB limit: see _encode_jpeg


_XMP_ORIENT = [
    (re.compile(rb'(tiff:Orientation\s*=\s*["\'])\d(["\'])'), rb"\g<1>1\g<2>"),
    (re.compile(rb"(<tiff:Orientation>\s*)\d(\s*</tiff:Orientation>)"), rb"\g<1>1\g<2>"),
]
_XMP_ORIENT_READ = re.compile(rb'tiff:Orientation(?:\s*=\s*["\']|>\s*)(\d)')


def _xmp_orientation(xmp: bytes | None) -> int:
    if not xmp:
        return 1
    m = _XMP_ORIENT_READ.search(xmp)
    v = int(m.group(1)) if m else 1
    return v if 1 <= v <= 8 else 1


def _xmp_reset_orientation(xmp: bytes | None) -> bytes | None:
    if not xmp:
        return xmp
    for rx, rep in _XMP_ORIENT:
        xmp = rx.sub(rep, xmp)
    return xmp


# --------------------------------------------------------------------------------------------
# loading


def _source_orientation(im, fmt: str, raw_exif: bytes | None, xmp: bytes | None) -> int:
    """The orientation the file asks for: TIFF tag 274, else EXIF, else XMP (one rule for the
    full load and the preview, so a thumbnail is never rotated differently from the photo)."""
    if fmt == "TIFF":
        try:
            orientation = int(im.tag_v2.get(274, 1) or 1)
        except Exception:  # noqa: BLE001 — a broken tag means "as stored"
            orientation = 1
    elif fmt == "JXL" and not getattr(im, "jpeg", False):
        return 1  # libjxl renders upright (codestream orientation); EXIF's must not apply twice
    else:
        orientation = exif_orientation(raw_exif)
    if orientation == 1 and raw_exif is None:
        orientation = _xmp_orientation(xmp)
    return orientation


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation to an (H, W, ...) array (returns a view)."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.swapaxes(0, 1)
    if orientation == 6:
        return a[::-1].swapaxes(0, 1)
    if orientation == 7:
        return a[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return a[:, ::-1].swapaxes(0, 1)
    return a


def _to_float(a: np.ndarray, maxval: float) -> np.ndarray:
    """Contiguous float32 copy scaled to [0, 1] (one allocation)."""
    out = np.empty(a.shape, dtype=np.float32)
    np.multiply(a, np.float32(1.0 / maxval), out=out, casting="unsafe")
    return out


_CV2_ROTATE = {3: "ROTATE_180", 6: "ROTATE_90_CLOCKWISE", 8: "ROTATE_90_COUNTERCLOCKWISE"}
_SLAB_ROWS = 256  # output rows rotated and converted at a time (a 6000-wide photo: 4.6 MB)


def _to_float_upright(a: np.ndarray, orientation: int, maxval: float) -> np.ndarray:
    """``_to_float(_orient(a, orientation), maxval)``, the same values. A contiguous uint8
    (H, W, 3) turned 180 or 90 degrees (orientation 3, 6, 8: most portrait photos) is rotated
    by OpenCV a slab of output rows at a time and each slab converted into the result: reading
    the rotated view directly strides across memory (24 MP: 190 -> 95 ms), and no full-size
    temporary is made."""
    if (orientation not in _CV2_ROTATE or a.dtype != np.uint8 or a.ndim != 3
            or a.shape[2] != 3 or not a.flags.c_contiguous):
        return _to_float(_orient(a, orientation), maxval)
    import cv2

    code = getattr(cv2, _CV2_ROTATE[orientation])
    h, w = a.shape[:2]
    oh, ow = (h, w) if orientation == 3 else (w, h)
    out = np.empty((oh, ow, 3), dtype=np.float32)
    scale = np.float32(1.0 / maxval)
    for y in range(0, oh, _SLAB_ROWS):
        e = min(oh, y + _SLAB_ROWS)
        if orientation == 3:  # out[i, j] = a[h-1-i, w-1-j]
            slab = a[h - e:h - y]
        elif orientation == 6:  # out[i, j] = a[h-1-j, i]
            slab = a[:, y:e]
        else:  # 8: out[i, j] = a[j, w-1-i]
            slab = a[:, w - e:w - y]
        np.multiply(cv2.rotate(slab, code), scale, out=out[y:e], casting="unsafe")
    return out


def _raw_exif(im) -> bytes | None:
    """The source EXIF as raw bytes, whatever the container."""
    info = im.info
    exif = info.get("exif")
    if isinstance(exif, (bytes, bytearray)) and exif:
        return bytes(exif)
    raw = info.get("Raw profile type exif")  # ImageMagick PNG text chunk
    if isinstance(raw, str):
        try:
            return bytes.fromhex("".join(raw.split("\n")[3:]))
        except ValueError:
            return None
    if im.format == "TIFF":
        try:  # a TIFF's own tags: keep only the descriptive ones + Exif/GPS sub-IFDs
            src = im.getexif()
            out = _pil().Exif()
            for tag in _TIFF_DESCRIPTIVE:
                if tag in src:
                    out[tag] = src[tag]
            for tag in (0x8769, 0x8825):
                ifd = src.get_ifd(tag)
                if ifd:
                    out[tag] = ifd
            if len(out):
                return out.tobytes()
        except Exception:  # noqa: BLE001 - damaged TIFF tags: keep no Exif rather than fail
            return None
    return None


_TIFF_DESCRIPTIVE = (269, 270, 271, 272, 285, 305, 306, 315, 316, 33432, 18246, 18249)


def _xmp_of(im, notes: list[str] | None = None, *, extended: bool = True) -> bytes | None:
    """The XMP packet of an opened image (``notes`` gets what could not be read); a JPEG's
    extended XMP is merged in unless ``extended`` is False."""
    info = im.info
    for key in ("xmp", "XML:com.adobe.xmp"):
        v = info.get(key)
        if isinstance(v, str) and v:
            return v.encode("utf-8")
        if isinstance(v, (bytes, bytearray)) and v:
            if extended and im.format in ("JPEG", "MPO"):
                return _jpeg_extended_xmp(im, bytes(v), notes)
            return bytes(v)
    if im.format == "JXL" and getattr(im, "filename", None):
        return _jxl_xmp(Path(im.filename), notes)
    if im.format == "TIFF":
        try:
            v = im.tag_v2.get(700)
            if isinstance(v, (bytes, bytearray)) and v:
                return bytes(v)
            if isinstance(v, str) and v:
                return v.encode("utf-8")
        except Exception:  # noqa: BLE001 - a damaged XMP tag means no XMP, not a failed load
            return None
    return None


# IPTC-IIM (captions, keywords, copyright): in a JPEG the Photoshop image resource 0x0404 of an
# APP13 "Photoshop 3.0" segment, in a TIFF tag 33723 (IPTC-NAA)
_PS_APP13 = b"Photoshop 3.0\x00"
_PS_SIGNATURES = (b"8BIM", b"PHUT", b"AgHg", b"DCSR", b"MeSa")
_PS_IPTC = 0x0404
# the resources a result carries: IPTC-NAA, its digest (still right: the IIM is copied as it is),
# copyright flag, URL; thumbnails, resolution, slices... describe the source's pixels: dropped
_PS_KEEP = {0x0404, 0x0425, 0x040A, 0x040B}
IPTC_MAX = 1 << 20  # bytes of IIM read from a source
JPEG_APP13_MAX = 65533  # bytes one JPEG APP13 segment holds ("Photoshop 3.0\0" included)
IPTC_NOT_CARRIED = ("IPTC captions/keywords not carried into PNG/WebP; they remain in XMP if "
                    "the photo had them")


def _iim_clean(data: bytes | None) -> bytes | None:
    """The IIM datasets at the start of ``data`` (padding after them cut off), or None when
    ``data`` does not start with one."""
    if not data:
        return None
    end, n = 0, len(data)
    while end + 5 <= n and data[end] == 0x1C:
        (size,) = struct.unpack_from(">H", data, end + 3)
        head = 5
        if size & 0x8000:  # extended dataset: the next (size & 0x7FFF) bytes hold the length
            k = size & 0x7FFF
            if not 0 < k <= 4 or end + 5 + k > n:
                break
            size, head = int.from_bytes(data[end + 5:end + 5 + k], "big"), 5 + k
        if end + head + size > n:
            break
        end += head + size
    return bytes(data[:end]) if end else None


def _ps_resources(stream: bytes) -> list[tuple[bytes, int, bytes, bytes]]:
    """(signature, id, whole block, data) of the Photoshop image resources in ``stream``;
    parsing stops at the first damaged block."""
    out: list[tuple[bytes, int, bytes, bytes]] = []
    off, n = 0, len(stream)
    while off + 12 <= n and stream[off:off + 4] in _PS_SIGNATURES and len(out) < 4096:
        (rid,) = struct.unpack_from(">H", stream, off + 4)
        name_end = off + 6 + ((stream[off + 6] + 2) & ~1)  # Pascal string, padded to even
        if name_end + 4 > n:
            break
        (size,) = struct.unpack_from(">I", stream, name_end)
        start = name_end + 4
        if start + size > n:
            break
        end = min(n, start + size + (size & 1))
        out.append((stream[off:off + 4], rid, stream[off:end], stream[start:start + size]))
        off = end
    return out


def _ps_resource(rid: int, data: bytes) -> bytes:
    """One 8BIM image resource (no name), padded to an even length."""
    return b"8BIM" + struct.pack(">HHI", rid, 0, len(data)) + data + b"\x00" * (len(data) & 1)


def _iptc_of(im, warnings: list[str]) -> tuple[bytes | None, bytes | None]:
    """(IIM datasets, the Photoshop resources a JPEG result carries) of an opened image."""
    if im.format in ("JPEG", "MPO"):
        segs = [s for m, s in getattr(im, "applist", ()) if m == "APP13"
                and s.startswith(_PS_APP13)]
        # a resource too large for one segment continues in the next one (ExifTool)
        res = _ps_resources(b"".join(s[len(_PS_APP13):] for s in segs))
        raw = next((d for sig, rid, _b, d in res if sig == b"8BIM" and rid == _PS_IPTC), None)
        irb = b"".join(b for sig, rid, b, _d in res if sig == b"8BIM" and rid in _PS_KEEP)
    elif im.format == "TIFF":
        tags = getattr(im, "tag_v2", None)
        raw = getattr(tags, "_tagdata", {}).get(33723)  # the bytes as stored (LONG or UNDEFINED)
        if raw is None and tags is not None:
            v = tags.get(34377)  # Photoshop's image resources
            if isinstance(v, (bytes, bytearray)):
                raw = next((d for sig, rid, _b, d in _ps_resources(bytes(v))
                            if sig == b"8BIM" and rid == _PS_IPTC), None)
        irb = None
    else:
        return None, None
    if not raw:
        return None, None
    if len(raw) > IPTC_MAX:
        warnings.append(f"dropped IPTC data of {len(raw) // 1024} KB (over the "
                        f"{IPTC_MAX >> 20} MB limit)")
        return None, None
    iim = _iim_clean(bytes(raw))
    if iim is None:
        warnings.append("dropped unreadable IPTC data")
        return None, None
    return iim, (irb or None)


def _icc_space(icc: bytes | None) -> bytes | None:
    return bytes(icc[16:20]) if icc and len(icc) >= 128 else None


def _dpi_of(im) -> tuple[float, float] | None:
    if im.format == "TIFF":
        tags = getattr(im, "tag_v2", None)
        if tags is not None and (282 not in tags or 283 not in tags):
            return None  # (no resolution: Pillow's "dpi" (1, 1) is its own default)
    dpi = im.info.get("dpi")
    try:
        x, y = float(dpi[0]), float(dpi[1])
    except (TypeError, ValueError, IndexError):
        return None
    if not (0 < x < 100_000 and 0 < y < 100_000):
        return None
    return (x, y)


def _is_16bit_colour(im) -> bool:
    if im.mode not in ("RGB", "RGBA", "LA"):
        return False
    if im.format == "PNG":
        try:
            return ";16" in str(im.tile[0][3])
        except (IndexError, TypeError):
            return False
    if im.format == "TIFF":
        try:
            bits = im.tag_v2.get(258)
            bits = bits if isinstance(bits, tuple) else (bits,)
            return any(int(b) == 16 for b in bits if b is not None)
        except Exception:  # noqa: BLE001 - a damaged bits tag reads as 8-bit
            return False
    return False


# What the C libraries inside OpenCV's decoders print: libjpeg(-turbo)'s warnings (jerror.h,
# JWRN_*: "Corrupt JPEG data: 1214 extraneous bytes before marker 0xd0", "... premature end of
# data segment", where the rest of the photo is grey) and libpng's ("libpng warning: iCCP: ...",
# "libpng error: IDAT: CRC error": a damaged 16-bit PNG, which Pillow then decodes or refuses).
# OpenCV leaves them to the libraries' default handlers, which write to the process's stderr
# (file descriptor 2) with no API to turn them off or catch them (opencv/opencv#9477,
# opencv/opencv-python#610): they polluted the CLI's output. libtiff's go through OpenCV's own
# logger, to stderr as well ("[ WARN:0@0.013] global grfmt_tiff.cpp:122 TIFF_Warning
# TIFFReadDirectory: ...", "[ERROR:...] ... TIFF_Error ...", then OpenCV's "readData ... failed"
# and "imdecode_ ... can't read data" when it gives up), and so do those of Pillow's libtiff
# (a compressed TIFF: "ZIPDecode: Decoding error at scanline 0, ...", "tempfile.tif: ...",
# libtiff's default handler). ``_decoder_messages`` points fd 2 at a temporary file while such
# a decode runs and hands these lines to the caller (``_decoder_message``).
_CV_TIFF_LOG = (rb"\[ ?(?:WARN|ERROR)[^\]]*\] global \S*(?:grfmt_tiff|loadsave)\.cpp"
                rb"[:\s(]*\d*\)? (\w+) ?(.*)")
# libtiff's default handler: "module: message." where the module is the file name Pillow gives
# ("tempfile.tif") or a C function (TIFFFillStrip, ZIPDecode, PredictorSetup, MissingRequired):
# a word with a capital after its first letter, not a Python exception's name nor a Qt class's
_LIBTIFF_LOG = (rb"(?:tempfile\.tif|(?!Q[A-Z])_?[A-Za-z](?=\w*[A-Z])\w*(?<!Error)"
                rb"(?<!Exception)(?<!Warning)(?<!Exit)(?<!Interrupt)(?<!Iteration)): ")
_DECODER_LINE = re.compile(
    rb"(?:Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|Inconsistent "
    rb"progression sequence|Unknown Adobe color transform|Warning: unknown JFIF|Warning: "
    rb"thumbnail image size|Application transferred too many scanlines|libpng warning:"
    rb"|libpng error:"  # an error: OpenCV gives up, Pillow decodes or names the damage
    rb"|" + _CV_TIFF_LOG + rb"|" + _LIBTIFF_LOG + rb")")
_CV_TIFF_LINE = re.compile(_CV_TIFF_LOG)
_LIBTIFF_LINE = re.compile(_LIBTIFF_LOG)
_DECODER_TEXT_MAX = 4096  # bytes of one decode's messages kept (a damaged scan repeats itself)


def _decoder_message(line: bytes) -> str | None:
    """What a photo's warning says of one of the decoder's lines (``_DECODER_LINE``); None for
    a line kept off stderr that says nothing about the photo: OpenCV giving up (libtiff's own
    line says why) and a tag libtiff does not know (a private tag, not damage)."""
    m = _CV_TIFF_LINE.match(line)
    if m:  # OpenCV's logger: libtiff's words after the function name
        if m.group(1) not in (b"TIFF_Error", b"TIFF_Warning"):
            return None
        line = b"libtiff: " + m.group(2)
    elif _LIBTIFF_LINE.match(line):  # libtiff's default handler: "module: message."
        line = b"libtiff: " + line.removeprefix(b"tempfile.tif: ").rstrip(b". ")
    if b"Unknown field with tag" in line:
        return None
    return line.decode("utf-8", "replace").strip()


class _StderrCapture:
    """Shared by every thread: fd 2 goes to one append-only temporary file from the first
    decode that asks until the last one is done (decodes run in parallel: OpenCV lets go of
    the GIL). Each decode gets the decoder lines written while it ran (another decode's too,
    if both warn at the same moment); every other byte written meanwhile (Python's own stderr,
    a log line) is written back to the real stderr, in order, when the last decode is done.

    Not while ``faulthandler`` is on as Python's options turn it on (``-X faulthandler``,
    PYTHONFAULTHANDLER, ``-X dev``; it writes to fd 2): a crash inside a decoder would write
    its report to the temporary file, deleted with the process (``faulthandler.enable()``
    called by a program cannot be told from one writing elsewhere, as pytest's). A child
    forked meanwhile gets the real stderr back and a capture of its own (``_after_fork``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved = -1
        self.sink: BinaryIO | None = None
        self.pending: list[tuple[int, bytes]] = []  # (real stderr fd, bytes) to write back
        self.writer: threading.Thread | None = None

    def _before_fork(self) -> None:
        self.lock.acquire()  # no fork halfway through _start or _stop

    def _after_fork_parent(self) -> None:
        self.lock.release()

    def _after_fork(self) -> None:
        """In a forked child: fd 2 back to the real stderr, the parent's decodes forgotten (their
        threads are not in the child) and a lock of its own (the parent's is held for the
        fork)."""
        self.lock = threading.Lock()
        for fd, _ in self.pending:  # (the parent's writer thread writes them)
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pending, self.writer = [], None
        if self.sink is not None:
            with contextlib.suppress(OSError):
                os.dup2(self.saved, 2)
            with contextlib.suppress(OSError):
                os.close(self.saved)
            with contextlib.suppress(OSError):
                self.sink.close()  # the child's copy: the parent keeps its own
        self.users, self.saved, self.sink = 0, -1, None

    def _start(self) -> bool:
        import faulthandler
        import sys
        import tempfile

        if faulthandler.is_enabled() and (
                sys._xoptions.get("faulthandler") or sys.flags.dev_mode
                or (not sys.flags.ignore_environment and os.environ.get("PYTHONFAULTHANDLER"))):
            return False  # its crash report must reach the real stderr
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
            # O_APPEND: the decoders' writes never clash with our reads at other offsets;
            # kept open across calls, closed by _stop
            sink = tempfile.TemporaryFile(mode="a+b", buffering=0)  # noqa: SIM115
        except (OSError, ValueError):
            return False
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all (a windowed app): nothing to keep quiet
            sink.close()
            return False
        try:
            os.dup2(sink.fileno(), 2)
        except OSError:
            os.close(saved)
            sink.close()
            return False
        self.saved, self.sink = saved, sink
        return True

    @staticmethod
    def _read(sink: BinaryIO, start: int, end: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(sink.fileno(), end - start, start)
        sink.seek(start)  # O_APPEND: the decoders' writes still go to the end
        return sink.read(end - start)

    def _stop(self) -> tuple[int, bytes]:
        """fd 2 back to the real stderr; returns a descriptor of the real stderr and the bytes
        that were not the decoders' lines, for the caller to write there (and close it) once
        the lock is released: a write blocks while stderr is a pipe nobody reads, and holding
        the lock meanwhile stopped every later decode, in every thread, for good."""
        assert self.sink is not None
        saved, sink = self.saved, self.sink
        self.sink, self.saved = None, -1
        try:
            os.dup2(saved, 2)
        except OSError:
            os.close(saved)
            sink.close()
            raise
        with sink:
            text = self._read(sink, 0, os.fstat(sink.fileno()).st_size)
        kept: list[bytes] = []
        after = False
        for line in text.splitlines(keepends=True):
            ours = bool(_DECODER_LINE.match(line))
            # (OpenCV ends "imdecode_ ... can't read data: <its exception>" with a blank line)
            if not ours and not (after and not line.strip()):
                kept.append(line)
            after = ours
        return saved, b"".join(kept)

    def _write_back(self, fd: int, other: bytes) -> None:
        """``other`` to the real stderr (``fd``, closed after), by a daemon thread when there
        is anything to write: a stderr pipe nobody reads blocks the write for good, and it
        must block neither the decode's thread (the app's engine thread) nor the process's
        exit. One thread writes in order; a second call meanwhile queues behind it."""
        with self.lock:
            queued = self.writer is not None and self.writer.is_alive()
        if not queued:  # (in order: nothing written back yet waits before these bytes)
            other = _write_unblocked(fd, other)
        if not other:
            with contextlib.suppress(OSError):
                os.close(fd)
            return
        with self.lock:
            self.pending.append((fd, other))
            if self.writer is not None and self.writer.is_alive():
                return
            self.writer = threading.Thread(target=self._drain, name="mend-stderr-writeback",
                                           daemon=True)
            self.writer.start()

    def _drain(self) -> None:
        while True:
            with self.lock:
                if not self.pending:
                    self.writer = None
                    return
                fd, other = self.pending.pop(0)
            try:
                while other:
                    other = other[os.write(fd, other):]
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)

    @contextlib.contextmanager
    def __call__(self, messages: list[str]) -> Iterator[None]:
        with self.lock:
            active = self.users > 0 or self._start()
            if active:
                sink = self.sink
                assert sink is not None
                self.users += 1
                start = os.fstat(sink.fileno()).st_size
        if not active:
            yield
            return
        text = b""
        back: tuple[int, bytes] | None = None
        try:
            yield
        finally:
            with self.lock:
                if self.sink is sink:  # else this is a forked child: _after_fork reset it
                    try:
                        end = os.fstat(sink.fileno()).st_size
                        text = self._read(sink, start, min(end, start + _DECODER_TEXT_MAX))
                    finally:
                        self.users -= 1
                        if self.users == 0:
                            back = self._stop()
            if back is not None:  # (written to the real stderr, the lock released)
                self._write_back(*back)
            for line in text.splitlines():
                if _DECODER_LINE.match(line):
                    msg = _decoder_message(line)
                    if msg is None:
                        log.debug("decoder: %s", line.decode("utf-8", "replace").strip())
                    elif msg not in messages:
                        messages.append(msg)


def _write_unblocked(fd: int, data: bytes) -> bytes:
    """Write what ``fd`` takes now without blocking (POSIX: pieces of at most ``PIPE_BUF``
    bytes while it polls writable); returns the rest (all of it elsewhere). A write error
    drops the bytes, as the real stderr would have."""
    if os.name != "posix":
        return data
    import select

    try:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        while data:
            if not poller.poll(0):
                return data
            data = data[os.write(fd, data[:select.PIPE_BUF]):]
    except (OSError, ValueError):
        return b""
    return data


_decoder_messages = _StderrCapture()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_decoder_messages._before_fork,
                        after_in_parent=_decoder_messages._after_fork_parent,
                        after_in_child=_decoder_messages._after_fork)


def _damaged_note(messages: list[str]) -> str:
    """The warning a photo's job carries when its decoder reported damaged data."""
    return ("the decoder found damaged or non-standard data in this file and decoded it as "
            f"far as it could (a grey or smeared band is possible): {'; '.join(messages)}")


# cv2.imdecode takes no buffer over 2^31 - 1 bytes (OpenCV 4.14: up to 4 GiB it raises cv2.error
# "Bad argument", over that the size wraps and libtiff reports a seek error): a larger file - a
# TIFF with more pages, a BigTIFF - is decoded from its path, where libtiff reads only what it
# needs instead of the whole file into memory
_CV2_BUFFER_MAX = (1 << 31) - 1


def _cv2_decode_file(p: Path, flags: int, messages: list[str]):
    """OpenCV's decode of the file ``p`` (None when it cannot): from memory (any file name,
    any OS) up to ``_CV2_BUFFER_MAX`` bytes, else from its path when OpenCV can be given that
    (a name that is not UTF-8 crashes cv2.imread; elsewhere than POSIX, where OpenCV opens
    names with the narrow API, only an ASCII one is tried).
    What the decoder prints goes to ``messages``, not to stderr."""
    import cv2

    try:
        if p.stat().st_size <= _CV2_BUFFER_MAX:
            buf = np.fromfile(p, dtype=np.uint8)
            with _decoder_messages(messages):
                return cv2.imdecode(buf, flags)
        name = str(p)
        name.encode("utf-8")
        if os.name != "posix" and not name.isascii():
            return None
        with _decoder_messages(messages):
            return cv2.imread(name, flags)
    except (cv2.error, OSError, UnicodeError):
        return None


def _decode16_cv2(p: Path, w: int, h: int, messages: list[str] | None = None,
                  still_png: bool = False):
    """16-bit colour PNG/TIFF with OpenCV: (rgb uint16 (H,W,3), alpha uint16 | None) or None.
    What the decoder prints (libpng warnings) goes to ``messages``, not to stderr.
    ``still_png``: an animated PNG, decoded as its default image (``_png_still_bytes``)."""
    import cv2

    messages = messages if messages is not None else []
    if still_png:
        data = _png_still_bytes(p)
        if data is None:
            return None
        try:
            with _decoder_messages(messages):
                img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            return None
        del data
    else:
        img = _cv2_decode_file(p, cv2.IMREAD_UNCHANGED, messages)
    if img is None or img.dtype != np.uint16 or img.shape[:2] != (h, w):
        return None
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2), None
    c = img.shape[2]
    if c == 2:
        return np.repeat(img[..., :1], 3, axis=2), img[..., 1]
    if c == 3:
        return img[..., ::-1], None
    if c == 4:
        return img[..., 2::-1], img[..., 3]
    return None


_APNG_CHUNKS = (b"acTL", b"fcTL", b"fdAT")  # an animated PNG's own chunks


_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _png_still_bytes(p: Path) -> bytes | None:
    """The PNG ``p`` without its animation chunks: a plain PNG of its default image (IDAT),
    the picture Pillow, the thumbnails and the viewer show. OpenCV (4.14) decodes an animated
    PNG's first animation frame instead, which is another picture when the default image is
    not part of the animation. None when the file cannot be read or is too large for OpenCV's
    buffer. A file cut short after its image data (in its animation frames: ``_png_cut``)
    ends there, as a whole PNG of that image; one cut in its image data is passed on as it is
    (the decoder reports the damage)."""
    try:
        if p.stat().st_size > _CV2_BUFFER_MAX:
            return None
        data = p.read_bytes()
    except OSError:
        return None
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    view = memoryview(data)
    parts = [view[:8]]
    i = 8
    image_done = seen_idat = False
    while i < len(data):
        end = i + 12 + (struct.unpack(">I", view[i:i + 4])[0] if i + 8 <= len(data) else 0)
        if i + 12 > len(data) or end > len(data):  # cut short here
            if not image_done:
                parts.append(view[i:])
            break
        ctype = bytes(view[i + 4:i + 8])
        seen_idat = seen_idat or ctype == b"IDAT"
        image_done = seen_idat and ctype != b"IDAT"
        if ctype not in _APNG_CHUNKS:
            parts.append(view[i:end])
        i = end
        if ctype == b"IEND":
            return b"".join(parts)
    if image_done:
        parts.append(memoryview(_PNG_IEND))
    return b"".join(parts)


def _png_cut(p: Path) -> bool:
    """Whether the PNG ``p`` ends before its IEND chunk after its image data (an animated
    PNG's default image whole, its animation frames cut short). Reads chunk headers only."""
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            f.seek(8)
            pos, seen_idat, image_done = 8, False, False
            for _ in range(_PNG_CHUNKS_MAX):
                head = f.read(8)
                if len(head) < 8:  # (at the end: no IEND)
                    return image_done
                length, ctype = struct.unpack(">I4s", head)
                if ctype == b"IEND":
                    return False
                seen_idat = seen_idat or ctype == b"IDAT"
                image_done = seen_idat and ctype != b"IDAT"
                pos += 12 + length
                if pos > size:
                    return image_done
                f.seek(pos)
    except OSError:
        return False
    return False


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _icc_build(space: bytes, desc: str, tags: list[tuple[bytes, bytes]]) -> bytes:
    """An ICC v2 display profile (D50 white) of colour ``space`` (b"GRAY", b"RGB ") with a
    description and ``tags`` (equal tag data is stored once)."""
    name = desc.encode("ascii", "replace")
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(name) + 1) + name + b"\0" * 79),
            (b"wtpt", b"XYZ \0\0\0\0" + _s15(0.9642) + _s15(1.0) + _s15(0.8249)), *tags]
    start = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    where: dict[bytes, tuple[int, int]] = {}
    for sig, blob in tags:
        if blob not in where:
            data += b"\0" * (-(start + len(data)) % 4)
            where[blob] = (start + len(data), len(blob))
            data += blob
        table += sig + struct.pack(">II", *where[blob])
    header = (struct.pack(">I", 128 + len(table) + len(data)) + b"lcms"
              + struct.pack(">I", 0x02100000) + b"mntr" + space + b"XYZ " + b"\0" * 12 + b"acsp"
              + b"\0" * 28 + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    return header + table + data


# tone curves as ICC parametric curves (function type, parameters): Y = f(stored value)
_SRGB_CURVE = (3, 2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
_REC709_CURVE = (3, 1 / 0.45, 1 / 1.099, 0.099 / 1.099, 1 / 4.5, 0.081)  # inverse of its OETF


def _para(curve: tuple[float, ...]) -> bytes:
    return (b"para\0\0\0\0" + struct.pack(">HH", int(curve[0]), 0)
            + b"".join(_s15(v) for v in curve[1:]))


@functools.cache
def _grey_icc(gamma: float | None = None) -> bytes:
    """A grey ICC profile with a plain ``gamma`` tone curve or, by default, the sRGB one: grey
    converted to that is the R = G = B of the same grey converted to sRGB."""
    if gamma is None:
        return _icc_build(b"GRAY", "Mend grey, sRGB tone curve", [(b"kTRC", _para(_SRGB_CURVE))])
    return _icc_build(b"GRAY", f"Mend grey, gamma {gamma:g}", [(b"kTRC", _para((0, gamma)))])


def _curv(curve: tuple[float, ...]) -> bytes:
    """An ICC v2 ``curv`` tag (what every reader takes; ``para`` is ICC v4) of a curve."""
    if curve[0] == 0:
        return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(curve[1] * 256)) + b"\0\0"
    g, a, b, c, d = curve[1:]
    x = np.linspace(0.0, 1.0, 1024)
    y = np.where(x >= d, np.maximum(a * x + b, 0.0) ** g, c * x)
    return (b"curv\0\0\0\0" + struct.pack(">I", x.size)
            + np.round(np.clip(y, 0.0, 1.0) * 65535).astype(">u2").tobytes())


_NCLX_PRIMARIES = {1: "BT.709 (sRGB)", 2: "unspecified", 9: "BT.2020", 11: "DCI-P3",
                   12: "Display P3", 22: "EBU 3213"}
_NCLX_TRANSFER: dict[int, tuple[str, tuple[float, ...]]] = {
    1: ("BT.709", _REC709_CURVE), 6: ("BT.601", _REC709_CURVE),
    14: ("BT.2020", _REC709_CURVE), 15: ("BT.2020", _REC709_CURVE),
    2: ("unspecified (sRGB)", _SRGB_CURVE), 13: ("sRGB", _SRGB_CURVE),
    4: ("gamma 2.2", (0, 2.2)), 5: ("gamma 2.8", (0, 2.8)), 8: ("linear", (0, 1.0)),
}
_NCLX_TRANSFER_NAMES = {16: "PQ (HDR)", 18: "HLG (HDR)", 7: "SMPTE 240M", 9: "logarithmic",
                        10: "logarithmic", 11: "xvYCC", 12: "BT.1361", 17: "SMPTE 428"}
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367],
                      [0.0389, -0.0685, 1.0296]])


def _xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1.0 - x - y) / y])


def _icc_from_nclx(nclx: dict, info: dict[str, Any]) -> bytes | None:
    """An RGB ICC profile saying what a HEIF's nclx colour box says (primaries, white and tone
    curve: the pixels stay as decoded, like those of any photo with an RGB profile), None when
    that is sRGB or cannot be said in a profile (``info["warnings"]`` then says so)."""
    try:
        prim = int(nclx.get("color_primaries", 2))
        trc = int(nclx.get("transfer_characteristics", 2))
    except (TypeError, ValueError):
        return None
    if prim in (1, 2) and trc in (2, 13):
        return None  # sRGB: what an untagged result is read as
    pname = _NCLX_PRIMARIES.get(prim, f"primaries {prim}")
    tname = _NCLX_TRANSFER.get(trc, (_NCLX_TRANSFER_NAMES.get(trc, f"transfer {trc}"),))[0]
    keys = [f"color_primary_{c}_{xy}" for c in ("red", "green", "blue", "white") for xy in "xy"]
    try:
        if trc not in _NCLX_TRANSFER:
            raise ValueError("not expressible")
        tags = _rgb_matrix_tags([float(nclx[k]) for k in keys], _NCLX_TRANSFER[trc][1])
    except (KeyError, TypeError, ValueError, np.linalg.LinAlgError):
        info["warnings"].append(
            f"this HEIF gives its colours only as an nclx box ({pname}, {tname} tone curve) "
            "that Mend cannot turn into a colour profile: the result is read as sRGB and its "
            "colours will look different")
        return None
    info["icc_from_nclx"] = f"{pname}, {tname} tone curve"
    return _icc_build(b"RGB ", f"{pname}, {tname} tone curve (from nclx)", tags)


def _rgb_matrix_tags(xy: list[float], curve: tuple[float, ...]) -> list[tuple[bytes, bytes]]:
    """The colourant and tone curve tags of a matrix/TRC RGB profile: ``xy`` the chromaticities
    of red, green, blue and white (x, y each), adapted to the profile's D50 (Bradford); raises
    ValueError when they make no colour space."""
    if len(xy) != 8 or not all(0.0 < v < 1.0 for v in xy):
        raise ValueError("not expressible")
    cols = np.stack([_xyz(xy[0], xy[1]), _xyz(xy[2], xy[3]), _xyz(xy[4], xy[5])], axis=1)
    white = _xyz(xy[6], xy[7])
    m = cols * np.linalg.solve(cols, white)  # RGB -> XYZ under the source white
    d50 = np.array([0.9642, 1.0, 0.8249])
    adapt = np.linalg.inv(_BRADFORD) @ np.diag((_BRADFORD @ d50) / (_BRADFORD @ white)) \
        @ _BRADFORD
    m50 = adapt @ m
    if not np.all(np.isfinite(m50)):
        raise ValueError("degenerate primaries")
    c = _curv(curve)
    tags = [(sig, b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in m50[:, i]))
            for i, sig in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))]
    return tags + [(b"rTRC", c), (b"gTRC", c), (b"bTRC", c)]


# sRGB's chromaticities (red, green, blue, white x/y: BT.709, D65); Adobe RGB (1998)'s
_SRGB_XY = (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290)
_ADOBE_XY = (0.64, 0.33, 0.21, 0.71, 0.15, 0.06, 0.3127, 0.3290)


def _icc_from_png_gama(pnginfo: dict, info: dict[str, Any]) -> bytes | None:
    """An RGB ICC profile saying what a PNG's gAMA (and cHRM) chunks say when it has neither
    an iCCP nor an sRGB chunk (PNG spec 11.3.3: then they describe the colours), so that the
    result - of any format - shows as the source did. None for none, for values that are
    sRGB's (gamma 1/2.2 within 1 %, sRGB or no chromaticities: what every writer of "sRGB"
    PNGs puts there) and for unusable values."""
    try:
        g = float(pnginfo["gamma"])  # the file gamma: stored = linear ** g
    except (KeyError, TypeError, ValueError):
        return None
    if not 0.05 <= g <= 5.0:
        return None
    chrm = pnginfo.get("chromaticity")
    try:  # Pillow: (white x, y, red x, y, green x, y, blue x, y)
        xy = [float(v) for v in (*chrm[2:8], *chrm[0:2])] if chrm else list(_SRGB_XY)
    except (TypeError, ValueError):
        xy = list(_SRGB_XY)
    if len(xy) != 8:
        xy = list(_SRGB_XY)
    srgb_prims = all(abs(a - b) < 0.01 for a, b in zip(xy, _SRGB_XY, strict=True))
    if srgb_prims and abs(g * 2.2 - 1.0) < 0.01:
        return None
    try:
        tags = _rgb_matrix_tags(xy, (0, 1.0 / g))
    except (ValueError, np.linalg.LinAlgError):
        return None
    name = f"gamma {1.0 / g:.3g}" + ("" if srgb_prims else ", its cHRM primaries")
    info["icc_from_png"] = name
    return _icc_build(b"RGB ", f"PNG gAMA/cHRM: {name} (Mend)", tags)


def _exif_colour_space(blob: bytes | None) -> str | None:
    """What the EXIF says the colours are when a photo has no ICC profile: "Adobe RGB" for
    ColorSpace 0xFFFF (uncalibrated) with the DCF interoperability index "R03" (DCF 2.0's
    Adobe RGB option; cameras set to Adobe RGB write this) or the non-standard ColorSpace 2
    some write; None otherwise (1 is sRGB, what an untagged photo is read as)."""
    body = _tiff_body(blob)
    if body is None:
        return None
    try:
        t = _Tiff(body)
    except (ValueError, struct.error):
        return None
    return _tiff_colour_space(t)


def _tiff_colour_space(t: _Tiff) -> str | None:
    """``_exif_colour_space`` of a parsed TIFF structure: an EXIF blob's, or a TIFF-based RAW
    file's own (its Exif IFD and Interop IFD, which ``rawio.tiff_exif`` does not copy)."""
    try:
        exif_ifd = next((t.u32(e + 8) for e, tag, typ, c, _v, _n in t.entries(t.u32(4))
                         if tag == 0x8769 and typ in (4, 13) and c == 1), None)
        if exif_ifd is None:
            return None
        space, interop = None, None
        for e, tag, typ, c, voff, _n in t.entries(exif_ifd):
            if tag == 0xA001 and typ in (3, 4) and c == 1:
                space = t.value(typ, voff)
            elif tag == 0xA005 and typ in (4, 13) and c == 1:
                interop = t.u32(e + 8)
        if space == 2:
            return "Adobe RGB"
        if space != 0xFFFF or interop is None:
            return None
        for _e, tag, typ, c, voff, _n in t.entries(interop):
            if tag == 0x0001 and typ in (2, 7) and c >= 3 and \
                    bytes(t.data[voff:voff + 3]) == b"R03":
                return "Adobe RGB"
    except (ValueError, struct.error):
        return None
    return None


@functools.cache
def _adobe_rgb_icc() -> bytes:
    """Adobe RGB (1998) as a matrix/TRC profile (its primaries, D65 white, gamma 563/256)."""
    return _icc_build(b"RGB ", "Adobe RGB (1998) (Mend, from EXIF)",
                      _rgb_matrix_tags(list(_ADOBE_XY), (0, 563 / 256)))


def _source_icc(im, raw_exif: bytes | None, info: dict[str, Any]) -> bytes | None:
    """The ICC profile of an opened image's pixels as stored, from its header: the one
    embedded, else a HEIF's nclx box, a PNG's gAMA/cHRM chunks (without an sRGB chunk), an
    EXIF "Adobe RGB" colour space, in that order (``info`` says which was made, its
    ``warnings`` what could not be). ``_load`` and ``source_profile`` both decide here."""
    icc = im.info.get("icc_profile") or None
    if icc is None and isinstance(im.info.get("nclx_profile"), dict):  # pillow-heif
        icc = _icc_from_nclx(im.info["nclx_profile"], info)
    if icc is None and im.format == "PNG" and "srgb" not in im.info:
        icc = _icc_from_png_gama(im.info, info)
    if icc is None and _exif_colour_space(raw_exif) == "Adobe RGB":
        icc = _adobe_rgb_icc()
        info["icc_from_exif"] = "Adobe RGB (1998)"
    return icc


@functools.lru_cache(maxsize=8)
def _grey16_lut(icc: bytes) -> np.ndarray:
    """uint16 lookup table (read-only): 16-bit grey in the ``icc`` grey profile -> 16-bit sRGB
    grey (the transform of a 0..65535 ramp; unoptimised, as LittleCMS's optimised 16-bit
    transform is off by thousands in the shadows; ~0.14 s, so kept for the next photo)."""
    from PIL import ImageCms

    src = ImageCms.ImageCmsProfile(_bytes_io(icc))
    dst = ImageCms.ImageCmsProfile(_bytes_io(_grey_icc()))
    t = ImageCms.buildTransform(src, dst, "I;16", "I;16", flags=ImageCms.Flags.NOOPTIMIZE)
    ramp = _pil().fromarray(np.arange(65536, dtype=np.uint16).reshape(256, 256))
    lut = np.asarray(ImageCms.applyTransform(ramp, t), dtype=np.uint16).ravel()
    if lut.size != 65536:
        raise ValueError("grey profile transform failed")
    lut.flags.writeable = False
    return lut


def _grey16_to_srgb(a: np.ndarray, icc: bytes | None, info: dict[str, Any]) -> np.ndarray:
    """16-bit grey tagged with a grey profile, converted to sRGB keeping 16 bits (a grey profile
    cannot be embedded in an RGB file); untouched when the profile is unusable."""
    if _icc_space(icc) != b"GRAY":
        return a
    try:
        lut = _grey16_lut(icc)
    except Exception as e:  # noqa: BLE001 - a bad profile: the grey as stored, said below
        log.debug("grey profile unusable: %s", e)
        return a
    info["icc_converted"] = "grey profile -> sRGB"
    info["drop_icc"] = True
    return lut[np.clip(a, 0, 65535).astype(np.uint16)]


def _grey8_to_srgb(a: np.ndarray, icc: bytes | None, info: dict[str, Any]) -> np.ndarray | None:
    """8-bit grey (H, W) tagged with the grey profile ``icc`` as sRGB float32 (H, W, 3) in
    [0, 1], None when the profile is unusable (the grey is then read as untagged). The 256
    levels go through the 16-bit transform (``_grey16_lut``: level v is 16-bit v * 257), not
    LittleCMS's 8-bit one, which is off by up to 2 levels (10 for a linear profile) and would
    round to 8 bits: a grey result converted back to the profile (``_grey_result``) gives
    every level it did not change back as it was."""
    if _icc_space(icc) != b"GRAY":
        return None
    try:
        lut = _grey16_lut(icc)
    except Exception as e:  # noqa: BLE001 - a bad grey profile
        log.debug("grey profile unusable: %s", e)
        return None
    info["icc_converted"] = "grey profile -> sRGB"
    levels = lut[::257].astype(np.float32) / np.float32(65535.0)
    return np.repeat(levels[a][..., None], 3, axis=2)


def _cmyk_to_rgb(im, info: dict[str, Any] | None = None):
    """A CMYK image in sRGB: through its embedded CMYK profile (LittleCMS) when it has a usable
    one, else Pillow's plain conversion (no profile: no better guess is known)."""
    icc = im.info.get("icc_profile")
    if _icc_space(icc) == b"CMYK":
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(_bytes_io(icc))
            out = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"),
                                            outputMode="RGB")
            if info is not None:
                info["icc_converted"] = "CMYK profile -> sRGB"
            return out
        except Exception as e:  # noqa: BLE001 - bad embedded profile: plain CMYK conversion
            log.debug("CMYK profile unusable: %s", e)
    return im.convert("RGB")


# 16-bit CMYK TIFF (a press file: Photoshop's 16 Bits/Channel CMYK). Pillow has no 16-bit CMYK
# mode: its unpacker ("CMYK;16L", "CMYK;16B", "CMYK;16N" - libtiff's native order) keeps each
# sample's high byte, and OpenCV refuses 16-bit CMYK (libtiff's RGBA reader: "Sorry, can not
# handle image"). The same tiles decoded a second time with the other byte order's rawmode
# hand out the low bytes: the two make the 16-bit samples exactly (raw and libtiff-decoded
# strips, both byte orders, predictor 2, every orientation: checked against the stored
# values). They are converted to sRGB at 16-bit precision: through the embedded CMYK profile
# by a 4-D table of LittleCMS's own (8-bit) transform, 18 points an axis, interpolated
# tetrahedrally (a 16-bit ramp stays a ramp: 4096 levels in, 4096 out, where the 8-bit path
# gave 233); without one by Pillow's formula, R = (1 - C)(1 - K), at full precision.
_CMYK16_SWAP = {"CMYK;16L": "CMYK;16B", "CMYK;16B": "CMYK;16L",
                "CMYK;16N": "CMYK;16B" if sys.byteorder == "little" else "CMYK;16L"}
_CMYK_GRID = 18  # table points an axis: 0, 15, 30 ... 255 (8-bit values LittleCMS takes)
_CMYK16_SLAB = 1 << 16  # pixels converted at a time


def _cmyk16_tiles(im) -> list | None:
    """Before ``load()``: the tiles of a 16-bit CMYK TIFF whose low bytes a second decode can
    give (``_cmyk16_low``), [] for a 16-bit CMYK TIFF laid out otherwise (its 8 bits only),
    None for anything else."""
    if im.format != "TIFF" or im.mode != "CMYK":
        return None
    try:
        bits = im.tag_v2.get(258)
        bits = bits if isinstance(bits, tuple) else (bits,)
        if not any(int(b) == 16 for b in bits if b is not None):
            return None
    except Exception:  # noqa: BLE001 - a damaged bits tag reads as 8-bit
        return None
    tiles = list(getattr(im, "tile", None) or [])
    if not tiles or any(not isinstance(t.args, tuple) or not t.args
                        or t.args[0] not in _CMYK16_SWAP for t in tiles):
        return []
    return tiles


def _cmyk16_low(p: Path, tiles: list, size: tuple[int, int], limit: int,
                messages: list[str]) -> np.ndarray | None:
    """The low bytes (H, W, 4) of a 16-bit CMYK TIFF's samples: its ``tiles`` decoded again
    with the other byte order's rawmode; None when that did not give an image of ``size``."""
    with _open_image(p, limit) as im:
        if im.mode != "CMYK" or len(im.tile) != len(tiles):
            return None
        im.tile = [t._replace(args=(_CMYK16_SWAP[t.args[0]], *t.args[1:])) for t in tiles]
        _load_pixels(im, p, limit, messages)
        if im.size != size:
            return None
        return np.asarray(im)


@functools.lru_cache(maxsize=4)
def _cmyk_table(icc: bytes) -> np.ndarray:
    """LittleCMS's transform of the CMYK profile ``icc`` to sRGB (perceptual, as
    ``_cmyk_to_rgb``) at ``_CMYK_GRID``^4 points: float32 (points, 3) in [0, 1], C slowest."""
    from PIL import ImageCms

    n = _CMYK_GRID
    g = np.arange(n, dtype=np.uint8) * np.uint8(255 // (n - 1))
    grid = np.stack(np.meshgrid(g, g, g, g, indexing="ij"), -1).reshape(1, -1, 4)
    src = ImageCms.ImageCmsProfile(_bytes_io(icc))
    out = ImageCms.profileToProfile(_pil().fromarray(np.ascontiguousarray(grid), "CMYK"), src,
                                    ImageCms.createProfile("sRGB"), outputMode="RGB")
    table = np.asarray(out, dtype=np.float32).reshape(-1, 3) / np.float32(255.0)
    if table.shape[0] != n ** 4:
        raise ValueError("CMYK profile transform failed")
    return table


def _cmyk16_interpolate(c: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """``table`` (``_cmyk_table``) at the 16-bit CMYK values ``c`` (N, 4) into ``out`` (N, 3):
    tetrahedral interpolation (the cell's 4-D simplex: 5 of its 16 corners, the fractions
    sorted by a 4-input sorting network)."""
    n = _CMYK_GRID
    cell = 65535 // (n - 1)
    i = np.minimum(c // np.uint16(cell), np.uint16(n - 2))
    f = (c - i * np.uint16(cell)).astype(np.float32) * np.float32(1 / cell)
    i = i.astype(np.intp)
    idx = ((i[:, 0] * n + i[:, 1]) * n + i[:, 2]) * n + i[:, 3]
    v = [f[:, k] for k in range(4)]
    step = [np.full(len(c), n ** (3 - k), np.intp) for k in range(4)]
    for a, b in ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2)):  # largest fraction first
        swap = v[a] < v[b]
        v[a], v[b] = np.where(swap, v[b], v[a]), np.where(swap, v[a], v[b])
        step[a], step[b] = np.where(swap, step[b], step[a]), np.where(swap, step[a], step[b])
    np.take(table, idx, axis=0, out=out)
    out *= (1.0 - v[0])[:, None]
    corner = np.empty_like(out)
    for k in range(4):
        idx += step[k]
        np.take(table, idx, axis=0, out=corner)
        corner *= (v[k] - v[k + 1] if k < 3 else v[3])[:, None]
        out += corner


def _cmyk16_to_rgb(high: np.ndarray, low: np.ndarray, icc: bytes | None,
                   info: dict[str, Any]) -> np.ndarray:
    """float32 sRGB (H, W, 3) of 16-bit CMYK given as its high and low bytes (H, W, 4): through
    the CMYK profile ``icc`` when LittleCMS can use it, else Pillow's plain formula."""
    table = None
    if _icc_space(icc) == b"CMYK":
        try:
            table = _cmyk_table(icc)
        except Exception as e:  # noqa: BLE001 - bad embedded profile: plain CMYK conversion
            log.debug("CMYK profile unusable: %s", e)
    h, w = high.shape[:2]
    out = np.empty((h, w, 3), np.float32)
    hi, lo, flat = high.reshape(-1, 4), low.reshape(-1, 4), out.reshape(-1, 3)
    for a in range(0, hi.shape[0], _CMYK16_SLAB):
        c = hi[a:a + _CMYK16_SLAB].astype(np.uint16)
        c <<= 8
        c |= lo[a:a + _CMYK16_SLAB]
        if table is not None:
            _cmyk16_interpolate(c, table, flat[a:a + _CMYK16_SLAB])
        else:  # (1 - C)(1 - K), as Pillow's CMYK -> RGB
            ink = c.astype(np.float32) * np.float32(1 / 65535)
            np.subtract(np.float32(1.0), ink, out=ink)
            np.multiply(ink[:, :3], ink[:, 3:], out=flat[a:a + _CMYK16_SLAB])
    if table is not None:
        info["icc_converted"] = "CMYK profile -> sRGB"
    return out


def rgb_to_srgb(im, icc: bytes | None):
    """An RGB image whose pixels are in the RGB profile ``icc``, in sRGB by LittleCMS
    (perceptual intent, as ``_cmyk_to_rgb`` and the UI's ``to_srgb``); unchanged without an RGB
    profile or with one LittleCMS cannot use. For pixels no one else converts: a RAW's embedded
    JPEG preview (``rawio.preview``), shown next to LibRaw's sRGB decode."""
    if _icc_space(icc) != b"RGB " or im.mode != "RGB":
        return im
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(_bytes_io(icc))
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"),
                                         outputMode="RGB")
    except Exception as e:  # noqa: BLE001 - a bad embedded profile: the pixels as stored
        log.debug("RGB profile unusable: %s", e)
        return im


def _opened_grey(im) -> bool:
    """Whether an opened (not yet decoded) image stores one channel of grey: Pillow's modes
    1 (bilevel), L, LA, La, I;16*, I, F, and a 16-bit grey + alpha PNG, which Pillow opens as
    RGBA (its tile's raw mode says LA;16B). A palette image does not count (its colours may be
    anything, and are when it is a GIF)."""
    mode = im.mode
    if mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16"):
        return True
    try:
        return mode == "RGBA" and str(im.tile[0][3]).startswith("LA;")
    except (IndexError, TypeError, AttributeError):
        return False


def _is_grey(a: np.ndarray) -> bool:
    """(H, W, 3) with three equal channels."""
    return bool(np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]))


def _pixels_of(im, p: Path, info: dict[str, Any]):
    """Decoded image -> (array (H,W,3) of some dtype, maxval, alpha array | None, maxval_a, depth,
    icc override flag)."""
    mode = im.mode
    icc = im.info.get("icc_profile")
    space = _icc_space(icc)
    alpha = None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;16BS", "I;16LS"):
        a = np.asarray(im)
        if a.dtype.kind == "i":
            a = np.clip(a, 0, None)
        a = _grey16_to_srgb(a, icc, info)
        return np.repeat(a[..., None], 3, axis=2), 65535.0, None, 1.0, 16
    if mode == "I":
        a = np.asarray(im)
        bits = 16
        if im.format == "TIFF":
            try:
                b = im.tag_v2.get(258)
                bits = int(b[0] if isinstance(b, tuple) else b)
            except Exception:  # noqa: BLE001 - a damaged bits tag means the 16-bit default
                bits = 16
        # 16-bit data often arrives as "I"; only use the full 32-bit range when it is used
        maxval = 65535.0 if a.size and int(a.max()) <= 65535 else float(2 ** min(bits, 32) - 1)
        if maxval == 65535.0:
            a = _grey16_to_srgb(a, icc, info)
        a = np.clip(a.astype(np.float64), 0, maxval)
        return np.repeat(a[..., None], 3, axis=2), maxval, None, 1.0, 16
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        peak = float(a.max()) if a.size else 1.0
        # 0..1 data as it is; a little above 1 is HDR highlights over a 0..1 scale (clipped,
        # said), not 0..255 data; larger peaks are the 8- or 16-bit integer scales
        if peak <= 1.0 + 1e-3:
            scale = 1.0
        elif peak <= 16.0:
            scale = 1.0
            info.setdefault("warnings", []).append(
                f"float values up to {peak:.2f} (HDR highlights above white) were clipped to "
                "white")
        else:
            scale = 255.0 if peak <= 255.0 + 1e-3 else max(65535.0, peak)
        a = np.clip(a / scale, 0.0, 1.0)
        info["source_sample_format"] = "float"
        return np.repeat(a[..., None], 3, axis=2), 1.0, None, 1.0, 16
    if mode == "CMYK":
        info["converted_from"] = "CMYK"
        info["drop_icc"] = True
        return np.asarray(_cmyk_to_rgb(im, info)), 255.0, None, 1.0, 8
    if mode in ("L", "LA") and space == b"GRAY":
        info["drop_icc"] = True  # converted, or unusable: then decoded as untagged grey
        rgb = _grey8_to_srgb(np.asarray(im.convert("L")), icc, info)
        if rgb is not None:
            if mode == "LA":
                alpha = np.asarray(im.getchannel("A"))
            elif "transparency" in im.info:  # a tRNS grey level
                alpha = np.asarray(im.convert("LA").getchannel("A"))
            return rgb, 1.0, alpha, 255.0, 8
    if mode == "LAB":
        from PIL import ImageCms

        t = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                    "LAB", "RGB")
        im = ImageCms.applyTransform(im, t)
        info["converted_from"] = "LAB"
        info["drop_icc"] = True
        return np.asarray(im), 255.0, None, 1.0, 8
    has_alpha = mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in im.info
    if mode == "L" and not has_alpha:
        return np.repeat(np.asarray(im)[..., None], 3, axis=2), 255.0, None, 1.0, 8
    if mode == "LA":
        a = np.asarray(im)
        return np.repeat(a[..., :1], 3, axis=2), 255.0, a[..., 1], 255.0, 8
    if has_alpha:
        if mode not in ("RGBA",):
            im = im.convert("RGBA")
        a = np.asarray(im)
        return a[..., :3], 255.0, a[..., 3], 255.0, 8
    if mode != "RGB":
        if mode not in ("YCbCr", "HSV", "RGBX", "1", "P", "L"):
            info["converted_from"] = mode
        im = im.convert("RGB")
        if im.mode != "RGB":
            raise BadImage(p, f"unsupported colour mode {mode}")
    return np.asarray(im), 255.0, alpha, 255.0, 8


def _bytes_io(b: bytes):
    import io

    return io.BytesIO(b)


def load_photo(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> Photo:
    """Decode a photo upright as float32 RGB in [0, 1] with its metadata.

    Raises ``BadImage`` (file named, reason given) for anything unreadable and ``ImageTooLarge``
    above ``max_pixels`` (default: ``MEND_MAX_MEGAPIXELS`` or 200 megapixels).
    """
    p = Path(path)
    limit = int(max_pixels) if max_pixels else max_pixels_default()
    _check_path(p)
    try:
        kind = _raw_kind(p)
        if kind:
            return _load_raw(p, limit, kind)
        return _load(p, limit)
    except EngineError:
        raise
    except RecursionError:
        raise BadImage(p, "the file is damaged (nested structure too deep)") from None
    except Exception as e:  # noqa: BLE001 - decoders raise many types; _fail names the file
        raise _fail(p, e) from None


def _raw_kind(p: Path, unidentified: bool = False) -> str | None:
    """The RAW kind of ``p`` by content; with ``unidentified`` (Pillow could not identify it)
    also whatever LibRaw recognises. Raises ``BadImage`` naming the extra when rawpy is absent."""
    from . import rawio

    kind = rawio.sniff(p)
    if kind is None and unidentified:
        kind = rawio.libraw_opens(p)
    if kind and not rawio.rawpy_available():
        raise BadImage(p, rawio.INSTALL_HINT.format(kind=kind))
    return kind


def _load_raw(p: Path, limit: int, kind: str) -> Photo:
    from . import rawio

    d = rawio.decode(p, kind, limit)
    exif = None
    if d["exif"] is not None:
        exif = clean_exif(d["exif"])  # LibRaw has rotated: orientation 1 from now on
        if exif is None:
            d["info"]["warnings"].append("dropped unreadable EXIF data")
    iptc = _iim_clean(d.get("iptc"))
    if d.get("iptc") and iptc is None:
        d["info"]["warnings"].append("dropped unreadable IPTC data")
    return Photo(path=p, pixels=d["pixels"], bit_depth=16, format=kind, exif=exif,
                 xmp=_xmp_reset_orientation(d["xmp"]), info=d["info"], iptc=iptc)


def _cmyk16_rgb(im, p: Path, limit: int, tiles: list, info: dict[str, Any],
                damaged: list[str]) -> np.ndarray | None:
    """A loaded 16-bit CMYK TIFF (``tiles``: ``_cmyk16_tiles``) as float32 sRGB at 16-bit
    precision; None, with a warning that the precision was reduced, when its low bytes
    cannot be had (then ``_pixels_of`` converts Pillow's 8 bits as before)."""
    low = None
    if tiles:
        try:
            low = _cmyk16_low(p, tiles, im.size, limit, damaged)
        except EngineError:
            raise
        except Exception as e:  # noqa: BLE001 - decoders raise many types: 8 bits, said
            log.debug("16-bit CMYK low bytes not read: %s", e)
    if low is None:
        info["source_bit_depth"] = 16
        msg = ("this 16-bit CMYK TIFF's layout cannot be decoded with 16 bits: it was decoded "
               "with 8 bits per channel (Pillow's), so the extra precision is lost")
        info["warnings"].append(msg)
        log.info("%s: %s", p.name, msg)
        return None
    return _cmyk16_to_rgb(np.asarray(im), low, im.info.get("icc_profile"), info)


def _jxl_la16(im) -> tuple[np.ndarray, np.ndarray] | None:
    """16-bit grey + alpha of a JPEG XL, read from the plugin's own buffer.

    pillow-jxl-plugin (1.3.8; its decode.rs) hands one-colour-channel images out in their
    decoded sample type but names them "LA" (8-bit) when they have alpha: for 16-bit grey +
    alpha Pillow then reads the first half of a 16-bit buffer as 8-bit pairs (garbage). The
    buffer (native byte order, grey/alpha interleaved) is used when its size says exactly that."""
    if im.mode != "LA":
        return None
    data = getattr(im, "_data", None)
    w, h = im.size
    if not isinstance(data, (bytes, bytearray)) or len(data) != w * h * 4:
        return None
    a = np.frombuffer(data, dtype=np.uint16).reshape(h, w, 2)
    return np.repeat(a[..., :1], 3, axis=2), a[..., 1].copy()


def _jxl_depth_note(p: Path, depth: int, info: dict[str, Any]) -> None:
    """Say so when a JPEG XL stores more bits than the decoder handed out.

    pillow-jxl-plugin (1.3.8) decodes colour JPEG XL to 8 bits whatever the file holds (its
    decode.rs casts 16-bit samples with ``>> 8``; the Python API has no pixel-format choice);
    only greyscale keeps 16 bits. ``Photo.bit_depth`` is what the pixels carry (8)."""
    bits = _jxl_bit_depth(p)
    if bits is None or bits <= 8 or depth >= 16:
        return
    try:
        from importlib.metadata import version

        plugin = f"pillow-jxl-plugin {version('pillow-jxl-plugin')}"
    except Exception:  # noqa: BLE001 — metadata missing: name the plugin without a version
        plugin = "pillow-jxl-plugin"
    info["source_bit_depth"] = bits
    msg = (f"this JPEG XL holds {bits}-bit samples but the JPEG XL decoder ({plugin}) hands "
           f"colour images out as 8 bits: the extra precision is lost")
    info["warnings"].append(msg)
    log.warning("%s: %s", p.name, msg)


def _lost_16bit_note(p: Path, info: dict[str, Any]) -> None:
    """Say so when a 16-bit colour PNG/TIFF is decoded with Pillow's 8 bits because OpenCV
    could not decode it (damaged data libpng refuses and Pillow reads, a layout OpenCV does not
    take): ``Photo.bit_depth`` is 8, and so is the result's unless 16 bits are asked for."""
    info["source_bit_depth"] = 16
    msg = ("this photo holds 16-bit samples but the 16-bit decoder (OpenCV) could not read "
           "it: it was decoded with 8 bits per channel, so the extra precision is lost")
    info["warnings"].append(msg)
    log.info("%s: %s", p.name, msg)


# Floating-point RGB TIFF: what an HDR merge saved from Photoshop (32 Bits/Channel), Affinity or
# Photomatix is. Pillow cannot open it (it reads one-channel float, mode "F", only); OpenCV's
# libtiff decodes 32-bit float RGB/RGBA exactly, uncompressed, LZW or Deflate, with or without
# the floating-point predictor (checked value for value), but not 16/24-bit float (half) data.
# Float image data is scene-linear by convention (OpenEXR's; Photoshop converts a document to a
# linear profile when it goes to 32 bits and embeds that profile): with a linear RGB profile or
# none, the values are encoded with the sRGB tone curve (the profile keeps its primaries, gets
# the sRGB curve), which is what display-referred models and every 16-bit reader expect; a
# profile with another tone curve says the values are encoded already: used as they are.
# Values above 1.0 (HDR highlights) are clipped, with a warning: no tone mapping. The result is
# a 16-bit TIFF.

@dataclass(frozen=True)
class _FloatTiff:
    width: int
    height: int
    samples: int
    bits: int
    orientation: int
    photometric: int


def _float_tiff_layout(p: Path) -> _FloatTiff | None:
    """The layout of ``p`` when its first image is a floating-point (SampleFormat 3) TIFF with
    more than one sample per pixel, else None. Reads the first IFD only."""

    def read(t, mm) -> _FloatTiff | None:
        vals: dict[int, int] = {}
        for _e, tag, typ, _count, voff, _n in t.entries(t.u32(4)):
            if tag in (256, 257, 258, 262, 274, 277, 339) and typ in (3, 4):
                vals[tag] = t.value(typ, voff) or 0
        if vals.get(339) != 3 or vals.get(277, 1) < 2:
            return None
        return _FloatTiff(vals.get(256, 0), vals.get(257, 0), vals.get(277, 1),
                          vals.get(258, 1), vals.get(274, 1), vals.get(262, -1))

    return _read_tiff_ifd(p, read)


def _icc_tags(icc: bytes) -> dict[bytes, bytes]:
    """The tags of an ICC profile (signature -> data), those out of bounds left out."""
    out: dict[bytes, bytes] = {}
    if len(icc) < 132:
        return out
    (n,) = struct.unpack_from(">I", icc, 128)
    for i in range(min(n, 256)):
        at = 132 + 12 * i
        if at + 12 > len(icc):
            break
        sig, off, size = struct.unpack_from(">4sII", icc, at)
        if off + size <= len(icc):
            out[sig] = icc[off:off + size]
    return out


def _trc_gamma(tag: bytes | None) -> float | None:
    """The gamma of a plain-power ICC tone curve tag (curv, para type 0), else None."""
    if not tag or len(tag) < 12:
        return None
    if tag[:4] == b"curv":
        (count,) = struct.unpack_from(">I", tag, 8)
        if count == 0:
            return 1.0
        if count == 1 and len(tag) >= 14:
            return struct.unpack_from(">H", tag, 12)[0] / 256.0
        if 2 <= count <= 4096 and len(tag) >= 12 + 2 * count:  # a table: a straight line?
            y = np.frombuffer(tag, dtype=">u2", count=count, offset=12).astype(np.float64)
            line = np.linspace(0.0, 65535.0, count)
            return 1.0 if float(np.abs(y - line).max()) <= 65535 * 0.002 else None
        return None
    if tag[:4] == b"para" and len(tag) >= 16 and struct.unpack_from(">H", tag, 8)[0] == 0:
        return struct.unpack_from(">i", tag, 12)[0] / 65536.0
    return None


def _linear_to_srgb_icc(icc: bytes | None) -> tuple[bool, bytes | None, str]:
    """(whether the float values are linear, the profile to carry, its name) for a float
    TIFF's embedded profile ``icc``: None or an RGB matrix profile with linear tone curves ->
    linear (the profile with the sRGB tone curve instead, None for none); anything else ->
    encoded already, ``icc`` as it is."""
    if icc is None or _icc_space(icc) != b"RGB ":
        return True, None, "sRGB (untagged)"
    tags = _icc_tags(icc)
    gammas = [_trc_gamma(tags.get(sig)) for sig in (b"rTRC", b"gTRC", b"bTRC")]
    colorants = [tags.get(sig) for sig in (b"rXYZ", b"gXYZ", b"bXYZ")]
    if any(g is None or abs(g - 1.0) > 0.01 for g in gammas) or \
            any(c is None or len(c) < 20 or c[:4] != b"XYZ " for c in colorants):
        return False, icc, "its embedded profile"
    curve = _curv(_SRGB_CURVE)
    new = [(sig, c[:20]) for sig, c in zip((b"rXYZ", b"gXYZ", b"bXYZ"), colorants,
                                           strict=True)]
    new += [(b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    return True, _icc_build(b"RGB ", "linear profile with the sRGB tone curve (Mend)", new), \
        "its linear profile's primaries"


_TRC_SLAB = 1 << 20  # values re-encoded at a time (the masks: 1 MB, not one per pixel)


def _srgb_encode(a: np.ndarray) -> np.ndarray:
    """Linear [0, 1] float32 -> sRGB-encoded [0, 1] (the sRGB OETF), in place, a slab of
    values at a time (``a`` contiguous, or any array small enough for one slab)."""
    flat = a.reshape(-1) if a.flags.c_contiguous else None
    for part in ([a] if flat is None else
                 (flat[i:i + _TRC_SLAB] for i in range(0, flat.size, _TRC_SLAB))):
        low = part <= 0.0031308
        dark = part[low] * np.float32(12.92)
        np.maximum(part, np.float32(0.0031308), out=part)
        np.power(part, np.float32(1 / 2.4), out=part)
        part *= np.float32(1.055)
        part -= np.float32(0.055)
        part[low] = dark
    return a


def _srgb_decode(a: np.ndarray) -> np.ndarray:
    """sRGB-encoded [0, 1] float32 -> linear [0, 1] (the sRGB EOTF, ``_srgb_encode``'s
    inverse), in place; for the slabs ``_quantise`` makes. A 16-bit code encoded and decoded
    comes back to itself (all 65536 checked)."""
    low = a <= 0.04045
    dark = a[low] * np.float32(1 / 12.92)
    a += np.float32(0.055)
    a *= np.float32(1 / 1.055)
    np.power(a, np.float32(2.4), out=a)
    a[low] = dark
    return a


def _load_float_tiff(p: Path, limit: int, layout: _FloatTiff) -> Photo:
    """A floating-point RGB(A) TIFF, decoded by OpenCV (see the notes above ``_FloatTiff``)."""
    import cv2

    from . import rawio

    if layout.width <= 0 or layout.height <= 0:
        raise BadImage(p, "the TIFF header is damaged (no image size)")
    if layout.width * layout.height > limit:
        raise _too_large(p, layout.width * layout.height, limit)
    if layout.bits != 32:
        kind = " (half float)" if layout.bits in (16, 24) else ""
        raise BadImage(p, f"{layout.bits}-bit floating-point TIFF{kind} is not supported: "
                          "save it as 32-bit float or 16-bit integer TIFF")
    if layout.photometric != 2 or layout.samples not in (3, 4):
        raise BadImage(p, f"floating-point TIFF with {layout.samples} samples per pixel "
                          f"(photometric {layout.photometric}) is not supported: only RGB "
                          "and RGBA")
    info: dict[str, Any] = {"source_mode": "RGB;F32" if layout.samples == 3 else "RGBA;F32",
                            "warnings": [], "source_sample_format": "float",
                            "decoder": "opencv"}
    damaged: list[str] = []
    img = _cv2_decode_file(p, cv2.IMREAD_UNCHANGED, damaged)
    orientation = layout.orientation if layout.orientation in range(1, 9) else 1
    # OpenCV's TIFF decoder turns the image upright itself (all 8 orientations, checked)
    h, w = (layout.height, layout.width) if orientation < 5 else (layout.width, layout.height)
    if img is None or img.dtype != np.float32 or img.ndim != 3 or \
            img.shape != (h, w, layout.samples):
        raise BadImage(p, "this floating-point TIFF could not be decoded (its compression or "
                          "layout is not supported, or the file is damaged)")
    if damaged:
        info["warnings"].append(_damaged_note(damaged))
    rgb = np.nan_to_num(img[..., 2::-1], nan=0.0, posinf=np.float32(65504.0), neginf=0.0)
    alpha = None
    if layout.samples == 4:
        alpha = np.clip(np.nan_to_num(img[..., 3], nan=1.0), 0.0, 1.0)
    del img
    icc = rawio._ifd0_bytes(p, 34675, (7, 1), 4 << 20)
    source_icc = icc
    linear, icc, space = _linear_to_srgb_icc(icc)
    # a linear profile of its own: the result (16-bit) is converted back and gets it, as a
    # 16-bit integer photo with a linear profile does (``_linear_to_perceptual``)
    linear_icc = source_icc if linear and icc is not None else None
    peak = float(rgb.max(initial=0.0))
    over = float(np.count_nonzero((rgb > 1.0).any(axis=2))) / max(1, rgb.shape[0] * rgb.shape[1])
    np.clip(rgb, 0.0, 1.0, out=rgb)
    if linear:
        rgb = _srgb_encode(rgb)
        info["float_transfer"] = f"linear, encoded with the sRGB tone curve ({space})"
    else:
        info["float_transfer"] = "as encoded by its embedded profile"
    if over > 0:
        info["warnings"].append(
            f"32-bit floating-point (HDR) TIFF: {over:.1%} of the pixels are brighter than "
            f"white (up to {peak:.3g}) and were clipped; tone-map the HDR image in your HDR "
            "software first to keep those highlights")
    info["exif_orientation"] = orientation
    pixels = np.ascontiguousarray(rgb, dtype=np.float32)
    if alpha is not None:
        alpha = np.ascontiguousarray(alpha)
        if float(alpha.min()) >= 1.0:
            alpha = None
    exif, xmp, iptc, dpi = _tiff_metadata(p, orientation, info)
    return Photo(path=p, pixels=pixels, alpha=alpha, bit_depth=16, format="TIFF",
                 icc_profile=icc, exif=exif, xmp=xmp, dpi=dpi, info=info, iptc=iptc,
                 linear_icc=linear_icc)


def _tiff_metadata(p: Path, orientation: int, info: dict[str, Any]
                   ) -> tuple[bytes | None, bytes | None, bytes | None,
                              tuple[float, float] | None]:
    """(EXIF, XMP, IPTC, DPI) of a TIFF that Pillow cannot open, read from its first IFD as
    ``_load`` keeps them from Pillow's header (the XMP's orientation reset, the resolution
    swapped for a photo turned upright by ``orientation``)."""
    from . import rawio

    raw_exif = rawio.tiff_exif(p)
    exif = clean_exif(raw_exif) if raw_exif else None
    if raw_exif and exif is None:
        info["warnings"].append("dropped unreadable EXIF data")
    xmp = rawio.tiff_xmp(p)
    iptc = _iim_clean(rawio.tiff_iptc(p))
    dpi = _float_tiff_dpi(p)
    if dpi and orientation >= 5:
        dpi = (dpi[1], dpi[0])
    return exif, _xmp_reset_orientation(xmp), iptc, dpi


def _float_tiff_dpi(p: Path) -> tuple[float, float] | None:
    """X/YResolution of a TIFF's first IFD in dots per inch (None when absent or odd)."""
    from . import rawio

    def read(t, mm):
        res: dict[int, float] = {}
        unit = 2
        for _e, tag, typ, _count, voff, _n in t.entries(t.u32(4)):
            if tag in (282, 283) and typ == 5 and voff + 8 <= len(mm):
                num, den = t.u32(voff), t.u32(voff + 4)
                if den:
                    res[tag] = num / den
            elif tag == 296 and typ == 3:
                unit = t.value(typ, voff) or 2
        if 282 not in res or 283 not in res or unit not in (2, 3):
            return None
        k = 2.54 if unit == 3 else 1.0
        x, y = res[282] * k, res[283] * k
        return (x, y) if 0 < x < 100_000 and 0 < y < 100_000 else None

    return rawio._with_tiff(p, read)


# 16-bit grey + alpha TIFF (PhotometricInterpretation BlackIsZero or WhiteIsZero, two 16-bit
# unsigned samples, the second an ExtraSample): TIFF 6.0's layout of grey with transparency,
# what Mend writes for a 16-bit grey result with an alpha. Pillow cannot open it (it reads grey
# + alpha TIFF at 8 bits only) and OpenCV decodes it as 8-bit grey without its alpha, so Mend
# decodes its strips itself: uncompressed or Deflate (code 8, or the older 32946), with or
# without the horizontal predictor, chunky or planar. LZW, PackBits, JPEG... and tiled layouts
# are refused, naming what to save instead.

_LA16_COMPRESSIONS = frozenset({1, 8, 32946})  # none, Deflate
_LA16_MAX_STRIP = 1 << 30  # bytes of one decompressed strip (a damaged RowsPerStrip)


@dataclass(frozen=True)
class _GreyAlpha16Tiff:
    width: int
    height: int
    orientation: int
    photometric: int  # 0 WhiteIsZero, 1 BlackIsZero
    extra: int  # ExtraSamples: 0 unspecified (no alpha), 1 associated, 2 unassociated
    compression: int
    predictor: int
    planar: int
    rows_per_strip: int
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    tiled: bool
    byteorder: str


def _grey_alpha16_layout(p: Path) -> _GreyAlpha16Tiff | None:
    """The layout of ``p`` when its first image is a 16-bit grey + alpha TIFF, else None.
    Reads the first IFD only."""

    def array(t, typ: int, count: int, voff: int) -> tuple[int, ...]:
        size = _TYPE_SIZE.get(typ, 0)
        if typ not in (3, 4) or voff + size * count > len(t.data) or count > 1 << 24:
            raise ValueError("strip table out of range")
        return struct.unpack_from(t.bo + ("H" if typ == 3 else "I") * count, t.data, voff)

    def read(t, mm) -> _GreyAlpha16Tiff | None:
        vals: dict[int, tuple[int, ...]] = {}
        for _e, tag, typ, count, voff, _n in t.entries(t.u32(4)):
            if tag in (256, 257, 258, 259, 262, 273, 274, 277, 278, 279, 284, 317, 322, 324,
                       338, 339) and typ in (3, 4) and count >= 1:
                vals[tag] = array(t, typ, count, voff)
        one = {tag: v[0] for tag, v in vals.items()}
        if one.get(277) != 2 or one.get(262) not in (0, 1) or vals.get(258) != (16, 16) \
                or one.get(339, 1) != 1 or vals.get(339, (1, 1)) != (1, 1):
            return None
        w, h = one.get(256, 0), one.get(257, 0)
        return _GreyAlpha16Tiff(
            w, h, one.get(274, 1), one[262], one.get(338, 0), one.get(259, 1),
            one.get(317, 1), one.get(284, 1), one.get(278, h) or h, vals.get(273, ()),
            vals.get(279, ()), 322 in vals or 324 in vals, t.bo)

    return _read_tiff_ifd(p, read)


def _read_tiff_ifd(p: Path, read: Callable[[Any, Any], Any]) -> Any:
    """``read(tiff, mapping)`` over ``p`` when it starts as a TIFF does (``rawio._with_tiff``),
    else None (also when it cannot be opened)."""
    from . import rawio

    try:
        with open(p, "rb") as f:
            if f.read(4) not in (b"II*\x00", b"MM\x00*"):
                return None
    except OSError:
        return None
    return rawio._with_tiff(p, read)


def _grey_alpha16_pixels(p: Path, lay: _GreyAlpha16Tiff) -> np.ndarray:
    """The (2, H, W) uint16 grey and alpha planes of a 16-bit grey + alpha TIFF, as stored
    (not oriented, WhiteIsZero and associated alpha as they are). BadImage for a layout or
    compression Mend does not decode and for damaged data."""
    from . import rawio

    w, h = lay.width, lay.height
    if lay.tiled:
        raise BadImage(p, "tiled 16-bit grey + alpha TIFF is not supported: save it with "
                          "strips (the usual layout)")
    if lay.compression not in _LA16_COMPRESSIONS:
        raise BadImage(p, f"16-bit grey + alpha TIFF with compression {lay.compression} "
                          "(e.g. LZW) is not supported: save it uncompressed or with ZIP "
                          "(Deflate) compression")
    if lay.predictor not in (1, 2) or lay.planar not in (1, 2):
        raise BadImage(p, f"16-bit grey + alpha TIFF with predictor {lay.predictor}, planar "
                          f"configuration {lay.planar} is not supported")
    rps = min(max(1, lay.rows_per_strip), h)
    per_plane = -(-h // rps)
    planes = 2 if lay.planar == 2 else 1
    samples = 1 if planes == 2 else 2  # per pixel in one strip
    if len(lay.offsets) < per_plane * planes or len(lay.counts) < per_plane * planes or \
            rps * w * samples * 2 > _LA16_MAX_STRIP:
        raise BadImage(p, "the TIFF header is damaged (its strip table does not fit the image)")
    out = np.empty((2, h, w), np.uint16)
    dt = np.dtype(lay.byteorder + "u2")
    mm = rawio._map(p)
    try:
        for plane in range(planes):
            for i in range(per_plane):
                k = plane * per_plane + i
                off, size = lay.offsets[k], lay.counts[k]
                y, rows = i * rps, min(rps, h - i * rps)
                want = rows * w * samples * 2
                raw = mm[off:off + size]
                if lay.compression != 1:
                    try:
                        raw = zlib.decompressobj().decompress(raw, want)
                    except zlib.error:
                        raw = b""
                if len(raw) < want:
                    raise BadImage(p, "the file is damaged (a strip of its image data is "
                                      "missing or cut short)")
                a = np.frombuffer(raw, dt, rows * w * samples).reshape(rows, w, samples)
                if lay.predictor == 2:  # horizontal differencing, modulo 2^16
                    a = np.cumsum(a, axis=1, dtype=np.uint16)
                if planes == 2:
                    out[plane, y:y + rows] = a[..., 0]
                else:
                    out[:, y:y + rows] = np.moveaxis(a, 2, 0)
    finally:
        mm.close()
    return out


def _load_grey_alpha16_tiff(p: Path, limit: int, lay: _GreyAlpha16Tiff) -> Photo:
    """A 16-bit grey + alpha TIFF (see the notes above ``_GreyAlpha16Tiff``) as ``_load``
    gives a 16-bit grey + alpha PNG: grey through its grey profile to sRGB (``grey_icc``),
    16 bits, its alpha."""
    from . import rawio

    if lay.width <= 0 or lay.height <= 0:
        raise BadImage(p, "the TIFF header is damaged (no image size)")
    if lay.width * lay.height > limit:
        raise _too_large(p, lay.width * lay.height, limit)
    info: dict[str, Any] = {"source_mode": "LA;16", "warnings": [],
                            "decoder": "mend (16-bit grey + alpha TIFF strips)"}
    planes = _grey_alpha16_pixels(p, lay)
    grey, alpha = planes[0], planes[1]
    if lay.photometric == 0:  # WhiteIsZero
        np.subtract(np.uint16(65535), grey, out=grey)
    if lay.extra == 1:  # associated (premultiplied) alpha: the colour itself
        a = alpha.astype(np.float32)
        g = grey.astype(np.float32) * np.float32(65535.0)
        np.divide(g, a, out=g, where=a > 0)
        grey[...] = np.clip(g + np.float32(0.5), 0, 65535)
        del a, g
    icc = rawio._ifd0_bytes(p, 34675, (7, 1), 4 << 20)
    grey = _grey16_to_srgb(grey, icc, info)
    grey_icc = icc if info.get("icc_converted") == "grey profile -> sRGB" else None
    if info.pop("drop_icc", False):
        icc = None
    elif icc is not None and _icc_space(icc) != b"RGB ":
        info["warnings"].append(f"dropped an ICC profile for {_icc_space(icc)!r} data")
        icc = None
    orientation = lay.orientation if lay.orientation in range(1, 9) else 1
    info["exif_orientation"] = orientation
    pixels = _to_float(_orient(np.broadcast_to(grey[..., None], (*grey.shape, 3)),
                               orientation), 65535.0)
    linear_icc = None
    if icc is not None:  # an RGB profile on grey values (rare): as ``_load`` takes one
        linear_icc, icc = _linear_to_perceptual(pixels, icc, info)
    alpha_f = None
    if lay.extra in (1, 2) and int(alpha.min(initial=65535)) < 65535:
        alpha_f = _to_float(_orient(alpha, orientation), 65535.0)
    del planes, grey, alpha
    exif, xmp, iptc, dpi = _tiff_metadata(p, orientation, info)
    return Photo(path=p, pixels=pixels, alpha=alpha_f, bit_depth=16, format="TIFF",
                 icc_profile=icc, exif=exif, xmp=xmp, dpi=dpi, info=info, iptc=iptc,
                 linear_icc=linear_icc, grey=True, grey_icc=grey_icc)


def _load_other_tiff(p: Path, limit: int) -> Photo | None:
    """A TIFF Pillow cannot open that Mend decodes itself (floating-point RGB(A), 16-bit grey
    + alpha), else None."""
    layout = _float_tiff_layout(p)
    if layout is not None:
        return _load_float_tiff(p, limit, layout)
    la16 = _grey_alpha16_layout(p)
    if la16 is not None:
        return _load_grey_alpha16_tiff(p, limit, la16)
    return None


def _unidentified_raw(p: Path) -> str | None:
    """After Pillow failed to identify ``p``: LibRaw's kind for it, or None."""
    from . import rawio

    if not rawio.rawpy_available():
        if p.suffix.lower() in RAW_EXTENSIONS:  # a hint only: nothing is decoded by extension
            raise BadImage(p, "not a photo format Mend can read; if this is a camera RAW file, "
                              "install the optional 'raw' extra: pip install 'mend[raw]'")
        return None
    return _raw_kind(p, unidentified=True)


def _load(p: Path, limit: int) -> Photo:
    try:
        im = _open_image(p, limit)
    except _pil().UnidentifiedImageError:
        photo = _load_other_tiff(p, limit)
        if photo is not None:
            return photo
        kind = _unidentified_raw(p)
        if kind:
            return _load_raw(p, limit, kind)
        raise
    with im:
        fmt = im.format or "unknown"
        info: dict[str, Any] = {"source_mode": im.mode, "warnings": []}
        n_frames = int(getattr(im, "n_frames", 1) or 1)
        if n_frames > 1:
            info["frames"] = n_frames
            im.seek(0)
            # only the first image is restored: a result written afresh says what it lacks
            # (``save_photo``; a kept original copied byte for byte keeps every one)
            note = _frames_note(im, fmt, n_frames)
            if note:
                info["frames_note"] = note
            if fmt == "PNG" and _png_cut(p):  # (its still image is whole: it is what is read)
                info["warnings"].append(APNG_CUT)
        is16 = _is_16bit_colour(im)  # needs the tile list, which load() clears
        grey = _opened_grey(im)  # (so does this)
        cmyk16 = _cmyk16_tiles(im)  # (so does a 16-bit CMYK TIFF's second decode)
        # a 16-bit TIFF's pixels come from OpenCV below: Pillow's decode (to 8 bits) would be
        # thrown away (24 MP: 2.2 -> 1.4 s). Its metadata is all in the header. Not when it is
        # oriented: Pillow (13) turns it upright on load() and drops the tag, and OpenCV
        # applies it too - that path stays as it was. Not PNG: text chunks after IDAT are
        # only read by load().
        deferred = is16 and fmt == "TIFF" and _tiff_tag_orientation(im) == 1
        # a 16-bit PNG likewise, when no text or EXIF chunk follows its image data (Pillow
        # reads those in load() only): 24 MP, 2.9 -> 1.5 s
        deferred = deferred or (is16 and fmt == "PNG" and n_frames == 1
                                and not _png_metadata_after_idat(p))
        # a plain 8-bit JPEG's pixels come from OpenCV (the same libjpeg-turbo maths, the same
        # bytes; 24 MP load_photo: 325 -> 205 ms); its metadata is all in the header read above
        damaged: list[str] = []  # what libjpeg/libpng said about the data (not on stderr)
        rgb8 = _jpeg_rgb8_cv2(p, *im.size, damaged) if _jpeg_fast_ok(im) else None
        if not deferred and rgb8 is None:
            _load_pixels(im, p, limit, damaged)
        if fmt in ("JPEG", "MPO"):
            q = getattr(im, "quantization", None) or {}
            info["jpeg_quantization"] = {int(k): [int(x) for x in v] for k, v in q.items()}
            if im.info.get("progressive") or im.info.get("progression"):
                info["progressive"] = True
            if isinstance(im.info.get("comment"), bytes):
                info["comment"] = im.info["comment"]
            if _has_ciff(im):  # (not carried: ``afresh_notes`` says so)
                info["ciff"] = True
        raw_exif = _raw_exif(im)
        xmp = _xmp_of(im, info["warnings"])
        iptc, irb = _iptc_of(im, info["warnings"])
        if irb:
            info["photoshop_resources"] = irb
        icc = _source_icc(im, raw_exif, info)
        dpi = _dpi_of(im)
        orientation = _source_orientation(im, fmt, raw_exif, xmp)
        if orientation not in range(1, 9):
            orientation = 1
        if im.info.get("original_orientation"):  # pillow-heif has applied it already
            info["exif_orientation"] = int(im.info["original_orientation"])
        else:
            info["exif_orientation"] = orientation

        w, h = im.size
        alpha = None
        # (an animated PNG: its default image, the one Pillow, thumbnails and the viewer show)
        a16 = _decode16_cv2(p, w, h, damaged, fmt == "PNG" and n_frames > 1) if is16 else None
        if a16 is None and deferred:  # OpenCV could not: Pillow's 8 bits, as before
            _load_pixels(im, p, limit, damaged)
        if damaged:
            info["warnings"].append(_damaged_note(damaged))
            log.info("%s: %s", p.name, "; ".join(damaged))
        if is16 and a16 is None:
            _lost_16bit_note(p, info)
        la16 = _jxl_la16(im) if fmt == "JXL" else None
        rgb16 = _cmyk16_rgb(im, p, limit, cmyk16, info, damaged) if cmyk16 is not None else None
        if a16 is not None:
            arr, maxval, alpha, amax, depth = a16[0], 65535.0, a16[1], 65535.0, 16
            # 16-bit grey + alpha (Pillow calls it RGBA) tagged with a grey profile
            if _icc_space(icc) == b"GRAY" and _is_grey(arr):
                arr = _grey16_to_srgb(arr, icc, info)
            info["decoder"] = "opencv"
        elif la16 is not None:
            arr, maxval, alpha, amax, depth = la16[0], 65535.0, la16[1], 65535.0, 16
            arr = _grey16_to_srgb(arr, icc, info)
            info["decoder"] = "pillow-jxl-plugin (16-bit grey + alpha buffer)"
        elif rgb16 is not None:  # a 16-bit CMYK TIFF, in sRGB
            arr, maxval, alpha, amax, depth = rgb16, 1.0, None, 1.0, 16
            info["converted_from"] = "CMYK"
            info["decoder"] = "pillow (16-bit CMYK: high and low bytes)"
            icc = None
        elif rgb8 is not None:  # what _pixels_of gives for an RGB or untagged grey JPEG
            arr, maxval, alpha, amax, depth = rgb8, 255.0, None, 255.0, 8
        else:
            arr, maxval, alpha, amax, depth = _pixels_of(im, p, info)
        if fmt == "JXL" and not getattr(im, "jpeg", False):
            _jxl_depth_note(p, depth, info)
        grey_icc = icc if grey and info.get("icc_converted") == "grey profile -> sRGB" else None
        if info.pop("drop_icc", False):
            icc = None
        elif icc is not None and _icc_space(icc) not in (b"RGB ", None):
            info["warnings"].append(f"dropped an ICC profile for {_icc_space(icc)!r} data")
            icc = None

    if orientation != 1:
        if alpha is not None:
            alpha = _orient(alpha, orientation)
        if orientation >= 5 and dpi:
            dpi = (dpi[1], dpi[0])
    if arr.dtype == np.float32 and maxval == 1.0:  # float [0, 1] already: no second copy
        pixels = np.ascontiguousarray(_orient(arr, orientation))
    else:
        pixels = _to_float_upright(arr, orientation, maxval)
    linear_icc = None
    if _icc_space(icc) == b"RGB ":  # (8 or 16 bits: ``pixels`` is a float copy either way)
        linear_icc, icc = _linear_to_perceptual(pixels, icc, info)
    alpha_f = _to_float(alpha, amax) if alpha is not None else None
    if alpha_f is not None and float(alpha_f.min()) >= 1.0:
        alpha_f = None  # fully opaque: no alpha to carry around

    exif = None
    if raw_exif is not None:
        exif = clean_exif(raw_exif)
        if exif is None:
            info["warnings"].append("dropped unreadable EXIF data")
    return Photo(
        path=p, pixels=pixels, alpha=alpha_f, bit_depth=depth, format=fmt, icc_profile=icc,
        exif=exif, xmp=_xmp_reset_orientation(xmp), dpi=dpi, info=info, iptc=iptc,
        linear_icc=linear_icc, grey=grey, grey_icc=grey_icc,
    )


APNG_CUT = ("this animated PNG is cut short after its still image (incomplete download or "
            "copy?): the still image is whole and is what Mend reads; what follows it - the "
            "animation frames, the end of the file - is incomplete")
CIFF_NOT_CARRIED = ("this JPEG's Canon CIFF block (where cameras of around 2000 kept the camera, "
                    "date and owner name) is not carried into the result: Mend writes EXIF, XMP "
                    "and IPTC")


def afresh_notes(photo: Photo, options: OutputOptions | None = None) -> list[str]:
    """What a result of ``photo`` written afresh (not its original's bytes copied) lacks,
    for the job's warnings: the pages or animation frames after the first (only the first is
    read), and, when metadata is kept, a Canon CIFF block (Mend writes no CIFF)."""
    info = photo.info or {}
    notes = [info["frames_note"]] if info.get("frames_note") else []
    if info.get("ciff") and (options is None or options.keep_metadata):
        notes.append(CIFF_NOT_CARRIED)
    return notes


def _has_ciff(im) -> bool:
    """Whether a JPEG holds a Canon CIFF block (an APP0 "HEAPJPGM" heap)."""
    return any(m == "APP0" and d[:2] in (b"II", b"MM") and d[6:14] == b"HEAPJPGM"
               for m, d in getattr(im, "applist", None) or ())


def _frames_note(im, fmt: str, n: int) -> str | None:
    """What a result of the file ``im`` of ``n`` images (pages, animation frames) leaves out:
    only its first image is decoded, restored and written. None when the others are previews
    (an MPO's thumbnails), dropped as the EXIF thumbnail is."""
    if fmt == "MPO":
        entries = (getattr(im, "mpinfo", None) or {}).get(0xB002) or []
        n -= sum(1 for e in entries[1:] if isinstance(e, dict) and "thumbnail" in str(
            (e.get("Attribute") or {}).get("MPType", "")).lower())
        if n <= 1:
            return None
        return (f"this JPEG holds {n} images (an MPO: a stereo pair, a depth map...): the "
                "result holds the first one alone")
    if fmt == "TIFF":
        return (f"this TIFF has {n} pages: the result holds the first page alone (the others "
                "were not restored)")
    if fmt == "PNG" and im.info.get("default_image"):
        return (f"this PNG is animated ({n - 1} frames, and a still image for viewers that do "
                "not play animations): the result is that still image alone")
    if fmt in ("GIF", "PNG", "WEBP"):
        return (f"this {fmt} is animated ({n} frames): the result is its first frame alone, a "
                "still image")
    return f"this {fmt} file holds {n} images: the result holds the first one alone"


def _linear_to_perceptual(pixels: np.ndarray, icc: bytes,
                          info: dict[str, Any]) -> tuple[bytes | None, bytes]:
    """Pixels (8 or 16 bits; float TIFFs: ``_load_float_tiff``) in the RGB profile ``icc``:
    when its tone curves are linear (linear sRGB, linear Rec.2020, gamma 1.0), encoded in
    place with the sRGB curve - what the restoration models are trained on - and ``(icc, that
    profile's primaries with the sRGB curve)`` returned (``Photo.linear_icc``,
    ``Photo.icc_profile``); else ``(None, icc)``, the pixels untouched. An 8-bit photo's
    levels are encoded too (before, its shadows reached the models as a few linear levels);
    its 8-bit result keeps the sRGB curve and the profile saying so, which holds its shadows
    in more levels than the source had (``save_photo``)."""
    linear, perceptual, _ = _linear_to_srgb_icc(icc)
    if not linear or perceptual is None:
        return None, icc
    _srgb_encode(pixels)
    info["linear_encoded"] = ("linear tone curve: encoded with the sRGB curve for processing "
                              "(its profile's primaries kept); a 16-bit result is converted "
                              "back and gets the photo's own profile")
    return icc, perceptual


def load_jpeg_rgb8(path: str | os.PathLike[str]) -> np.ndarray | None:
    """The upright uint8 RGB (H, W, 3) pixels of a plain 8-bit JPEG, the same bytes as
    ``load_photo``'s pixels times 255, decoded straight to uint8 by OpenCV (the same
    libjpeg-turbo maths as Pillow's; ``load_photo`` uses the same decode) with the orientation
    read from the header as ``load_photo`` reads it: no float copy (the viewer of a 24 MP
    photo: 290 MB less, about 3x faster). None when this path does not apply (the caller then
    uses ``load_photo``): see ``_jpeg_fast_ok`` and ``_jpeg_rgb8_cv2``. Raises ``BadImage``
    only for what ``load_photo`` would refuse before decoding (missing file, pixel limit)."""
    p = Path(path)
    _check_path(p)
    try:
        with _open_image(p, max_pixels_default()) as im:
            if not _jpeg_fast_ok(im):
                return None
            orientation = _source_orientation(im, im.format, _raw_exif(im),
                                              _xmp_of(im, extended=False))
            w, h = im.size
    except EngineError:
        raise
    except Exception:  # noqa: BLE001 — load_photo names the problem
        return None
    damaged: list[str] = []
    a = _jpeg_rgb8_cv2(p, w, h, damaged)
    if damaged:
        log.debug("%s: %s", p.name, "; ".join(damaged))
    if a is not None and orientation in range(2, 9):
        a = np.ascontiguousarray(_orient(a, orientation))
    return a


def _jpeg_fast_ok(im) -> bool:
    """Whether an opened (not decoded) image is a JPEG whose ``load_photo`` pixels are its
    plain decode: RGB or untagged grey (not CMYK, not a grey ICC profile to apply...)."""
    if im.format not in ("JPEG", "MPO") or im.mode not in ("RGB", "L"):
        return False
    return not (im.mode == "L" and im.info.get("icc_profile"))


def _jpeg_rgb8_cv2(p: Path, w: int, h: int,
                   messages: list[str] | None = None) -> np.ndarray | None:
    """The uint8 RGB (h, w, 3) pixels of the JPEG ``p`` as stored (not oriented) decoded by
    OpenCV: Pillow's bytes for a JPEG that passes ``_jpeg_fast_ok``. None (Pillow decodes it)
    when there is no end marker (truncated or with data after the image: Pillow's verdict is
    wanted), OpenCV cannot decode it or gets another size. libjpeg's warnings ("Corrupt JPEG
    data: ...") go to ``messages``, not to stderr."""
    import cv2

    buf = np.fromfile(p, dtype=np.uint8)
    if buf.size < 4 or buf[-2] != 0xFF or buf[-1] != 0xD9:
        return None
    flags = cv2.IMREAD_IGNORE_ORIENTATION | getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)
    try:
        with _decoder_messages(messages if messages is not None else []):
            a = cv2.imdecode(buf, flags)
    except cv2.error:
        return None
    del buf
    if a is None or a.dtype != np.uint8 or a.shape != (h, w, 3):
        return None
    if not hasattr(cv2, "IMREAD_COLOR_RGB"):  # OpenCV < 4.10
        a = cv2.cvtColor(a, cv2.COLOR_BGR2RGB, dst=a)
    return a


def _load_pixels(im, p: Path, limit: int, messages: list[str] | None = None) -> None:
    """Pillow's decode. A TIFF's runs under ``_decoder_messages``: Pillow decodes a compressed
    TIFF with libtiff, whose default handler prints to stderr; what it says goes to
    ``messages`` and, when the decode fails, into the reason of the ``BadImage``."""
    if im.format == "TIFF" and getattr(im, "_tile_size", im.size) != im.size:
        # a TIFF turned by its orientation tag (5-8): Pillow gives the upright size at open
        # and turns the pixels after decoding them, but its memory-mapped read of an
        # uncompressed 8-bit grey, palette or RGBA one lays the stored rows out at the upright
        # size (a garbled photo and thumbnail). Decoded by reading instead (no file name: no
        # memory map), as every other TIFF is.
        name = im.filename
        im.filename = ""
        try:
            _load_pixels_now(im, p, messages)
        finally:
            im.filename = name
    else:
        _load_pixels_now(im, p, messages)
    if im.size[0] * im.size[1] > limit:  # a frame can differ from the header
        raise _too_large(p, im.size[0] * im.size[1], limit)


def _load_pixels_now(im, p: Path, messages: list[str] | None) -> None:
    if im.format != "TIFF" or messages is None:
        im.load()
    else:
        said: list[str] = []
        try:
            with _decoder_messages(said):
                im.load()
        except OSError as e:
            if not said or "truncated" in str(e):
                raise
            text = "; ".join(said)
            text = text if len(text) <= 200 else text[:197] + "..."
            raise BadImage(p, f"the file is damaged or unsupported ({text})") from None
        finally:
            messages.extend(m for m in said if m not in messages)


_PNG_LATE_CHUNKS = (b"tEXt", b"zTXt", b"iTXt", b"eXIf")  # what Pillow reads after IDAT
_PNG_CHUNKS_MAX = 1 << 20  # chunk headers walked (a 24 MP PNG of 8 KB IDATs: ~13,000)


def _png_metadata_after_idat(p: Path) -> bool:
    """Whether a PNG has a text or EXIF chunk after its image data (only Pillow's ``load()``
    reads those); True as well when its chunks cannot be walked to IEND. Reads chunk headers
    only."""
    try:
        with open(p, "rb") as f:
            f.seek(8)
            seen_idat = False
            for _ in range(_PNG_CHUNKS_MAX):
                head = f.read(8)
                if len(head) < 8:
                    return True
                length, ctype = struct.unpack(">I4s", head)
                if ctype == b"IEND":
                    return False
                if ctype == b"IDAT":
                    seen_idat = True
                elif seen_idat and ctype in _PNG_LATE_CHUNKS:
                    return True
                f.seek(length + 4, os.SEEK_CUR)
    except OSError:
        return True
    return True


def _tiff_tag_orientation(im) -> int | None:
    """A TIFF's orientation tag as it is before load() (1 when absent), None when unreadable."""
    try:
        return int(im.tag_v2.get(274, 1) or 1)
    except Exception:  # noqa: BLE001 — a broken tag: let the usual path deal with it
        return None


def load_preview(path: str | os.PathLike[str], max_side: int) -> np.ndarray:
    """A fast upright uint8 RGB (h, w, 3) view no larger than ``max_side`` (JPEG draft mode; a
    HEIF's embedded thumbnail when one is at least that large), in the colour space of
    ``source_profile`` (grey, CMYK, RAW, JPEG XL and floating-point TIFF: sRGB)."""
    return _load_preview(Path(path), max_side, with_alpha=False)[0]


def load_preview_rgba(path: str | os.PathLike[str], max_side: int
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """``load_preview`` with the photo's transparency: (uint8 RGB (h, w, 3), uint8 alpha
    (h, w)), the alpha None when the photo has none or is opaque everywhere in the preview.
    The reduction weighs each pixel's colour by its alpha (premultiplied: what a file stores
    under fully transparent pixels counts for nothing; a preview pixel that is fully
    transparent has colour 0). The same single decode as ``load_preview`` (8 bits per sample;
    a JPEG XL's alpha is in the decode its plugin makes anyway), reduced in bands of rows:
    no full-size copy beside the decoded image (a 24 MP RGBA PNG: its 96 MB)."""
    return _load_preview(Path(path), max_side, with_alpha=True)


def _load_preview(p: Path, max_side: int, *, with_alpha: bool
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    _check_path(p)
    max_side = max(1, int(max_side))
    alpha: np.ndarray | None = None
    try:
        kind = _raw_kind(p)
        if kind:
            from . import rawio

            return rawio.preview(p, kind, max_side, max_pixels_default()), None
        try:
            im = _open_image(p, max_pixels_default())
        except _pil().UnidentifiedImageError:
            photo = _load_other_tiff(p, max_pixels_default())
            if photo is not None:  # rare: the whole photo, made small
                rgb8 = _pil().fromarray(_quantise(photo.pixels, 8), "RGB")
                if with_alpha and photo.alpha is not None:
                    rgb8.putalpha(_pil().fromarray(_quantise(photo.alpha[..., None], 8)[..., 0],
                                                   "L"))
                    small, alpha = _preview_rgba8(rgb8, max_side)
                else:
                    small = _preview_rgb8(rgb8, max_side)
                return _preview_to_srgb(small, photo.icc_profile), alpha
            kind = _unidentified_raw(p)
            if kind:
                from . import rawio

                return rawio.preview(p, kind, max_side, max_pixels_default()), None
            raise
        with im:
            fmt = im.format
            if fmt in ("JPEG", "MPO"):
                im.draft("RGB", (max_side, max_side))
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            if fmt == "HEIF":
                _heif_draft(im, max_side)
            said: list[str] = []  # libtiff's words about a damaged TIFF (not on stderr)
            _load_pixels(im, p, max_pixels_default(), said)
            if said:
                log.debug("%s: %s", p.name, "; ".join(said))
            orientation = _source_orientation(im, fmt, _raw_exif(im),
                                              _xmp_of(im, extended=False))
            la16 = _jxl_la16(im) if fmt == "JXL" else None
            if la16 is not None and with_alpha:  # (16-bit grey + alpha: 8 bits of each)
                la8 = np.stack([la16[0][..., 0], la16[1]], axis=-1)
                la8 = (la8.astype(np.uint32) * 255 + 32767) // 65535
                small, alpha = _preview_rgba8(_pil().fromarray(la8.astype(np.uint8), "LA"),
                                              max_side, im.info.get("icc_profile"))
            elif la16 is not None:  # 16-bit grey + alpha the plugin calls "LA": its grey
                small = _preview_rgb8(_pil().fromarray(la16[0][..., 0]), max_side,
                                      im.info.get("icc_profile"))
            elif with_alpha and _has_alpha(im):
                small, alpha = _preview_rgba8(im, max_side)
            else:
                small = _preview_rgb8(im, max_side)
            if fmt == "JXL":  # source_profile cannot say (the plugin decodes to open)
                small = _preview_to_srgb(small, _source_icc(im, _raw_exif(im),
                                                            {"warnings": []}))
        if orientation in range(2, 9):
            small = _orient(small, orientation)
            alpha = None if alpha is None else _orient(alpha, orientation)
        return (np.ascontiguousarray(small),
                None if alpha is None else np.ascontiguousarray(alpha))
    except EngineError:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise many types; _fail names the file
        raise _fail(p, e) from None


def _heif_draft(im, max_side: int) -> None:
    """Let pillow-heif decode an embedded thumbnail instead of the image when one is at least
    as large as the preview on both sides (and a scaled copy of the image: the plugin checks).
    The target keeps the image's aspect ratio: (256, 256) would rule out an iPhone's 320x240."""
    w, h = im.size
    s = max_side / max(w, h)
    if s >= 1:
        return
    try:
        im.draft("RGB", (max(1, round(w * s)), max(1, round(h * s))))
    except Exception as e:  # noqa: BLE001 — an unreadable thumbnail: decode the image itself
        log.debug("HEIF thumbnail not used: %s", e)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) of the upright photo from its header alone (no pixels decoded)."""
    p = Path(path)
    _check_path(p)
    try:
        kind = _raw_kind(p)
        if kind:
            from . import rawio

            return rawio.size(p, kind, max_pixels_default())
        jxl = _jxl_precheck(p, max_pixels_default())
        if jxl is not None:  # the plugin decodes everything on open: use the header
            w, h, orientation = jxl
            return (w, h) if orientation in (5, 6, 7, 8) else (h, w)
        ft = _float_tiff_layout(p) or _grey_alpha16_layout(p)
        if ft is not None:  # Pillow cannot open a floating-point RGB, 16-bit LA TIFF
            if ft.width * ft.height > max_pixels_default():
                raise _too_large(p, ft.width * ft.height, max_pixels_default())
            w, h = ft.width, ft.height
            return (w, h) if ft.orientation in (5, 6, 7, 8) else (h, w)
        with _open_image(p, max_pixels_default()) as im:
            w, h = im.size
            orientation = _source_orientation(im, im.format, _raw_exif(im),
                                              _xmp_of(im, extended=False))
            if im.format == "TIFF" and orientation in (5, 6, 7, 8):
                # Pillow >= 13 reports a TIFF's size already turned upright (it applies the
                # orientation on load); older versions report it as stored
                stored = (im.tag_v2.get(256), im.tag_v2.get(257))
                if stored == (h, w) and h != w:
                    orientation = 1
        return (w, h) if orientation in (5, 6, 7, 8) else (h, w)
    except EngineError:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise many types; _fail names the file
        raise _fail(p, e) from None


def source_format(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is by its content (``Photo.format``: "JPEG", "PNG", "HEIF", a RAW kind...)
    from its header alone (no pixels decoded), or None when the header does not say (a file
    that cannot be read: ``load_photo`` says why). The output format follows it, not the
    extension (``output_path_for``'s ``source_format``)."""
    p = Path(path)
    try:
        from . import rawio

        kind = rawio.sniff(p)
        if kind:
            return kind
        if _jxl_header(p) is not None:  # (its plugin decodes the whole photo to open it)
            return "JXL"
        with _pil().open(p) as im:
            return im.format
    except Exception as e:  # noqa: BLE001 - decoders raise many types; load_photo says why
        log.debug("no format read from %s: %s", p, e)
        return None


def source_profile(path: str | os.PathLike[str]) -> bytes | None:
    """The RGB ICC profile ``load_photo`` gives the photo's pixels (``Photo.icc_profile``),
    read from the header alone (no pixels decoded), for the decoders that do not say
    (``load_preview``, ``load_jpeg_rgb8``): the one embedded, else the one Mend assigns (a
    HEIF's nclx box, a PNG's gAMA/cHRM, an EXIF "Adobe RGB" colour space). None for sRGB, for
    pixels that ``load_photo`` (and ``load_preview``) turn into sRGB (a grey, CMYK or LAB
    photo), and when it is not known without decoding - a RAW, a JPEG XL (its plugin decodes
    the whole photo to open it), a floating-point TIFF: ``load_preview`` converts their
    previews to sRGB itself - or a file that cannot be read (its decode says why). It is the
    profile of the pixels as stored, which is ``load_preview``'s: for a photo with a linear
    profile that is ``Photo.linear_icc`` (``load_photo`` encodes its pixels with the
    sRGB curve, ``Photo.icc_profile`` saying so)."""
    p = Path(path)
    try:
        if _jxl_header(p) is not None or _raw_kind(p):
            return None
        with _open_image(p, max_pixels_default()) as im:  # (header only)
            if im.mode in ("CMYK", "LAB"):
                return None
            icc = _source_icc(im, _raw_exif(im), {"warnings": []})
    except Exception as e:  # noqa: BLE001 - decoders raise many types; load_photo says why
        log.debug("no colour profile read from %s: %s", p, e)
        return None
    return icc if _icc_space(icc) == b"RGB " else None


def _preview_to_srgb(small: np.ndarray, icc: bytes | None) -> np.ndarray:
    """A preview (uint8 RGB) in the RGB profile ``icc`` converted to sRGB (``rgb_to_srgb``),
    for the sources ``source_profile`` knows no profile of without decoding them (JPEG XL,
    floating-point TIFF): the same colours ``load_photo``'s pixels show through their
    profile. Unchanged without an RGB profile."""
    if _icc_space(icc) != b"RGB ":
        return small
    return np.asarray(rgb_to_srgb(_pil().fromarray(np.ascontiguousarray(small), "RGB"), icc))


def _preview_rgb8(im, max_side: int, icc: bytes | None = None) -> np.ndarray:
    """``im`` as uint8 RGB no larger than ``max_side``, its colours as ``load_photo`` makes
    them (CMYK and grey profiles applied); ``icc``: its profile when not in ``im.info``."""
    Image = _pil()
    mode = im.mode
    icc = icc or im.info.get("icc_profile")
    grey_icc = _icc_space(icc) == b"GRAY"
    if mode == "CMYK":  # as load_photo converts it
        im = _cmyk_to_rgb(im)
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        top = 65535.0 if mode != "F" else max(1.0, float(a.max()) if a.size else 1.0)
        if grey_icc and mode != "F" and (not a.size or int(a.max()) <= 65535):
            a = _grey16_to_srgb(a, icc, {})  # as load_photo converts it
        a = a.astype(np.float32)
        # (rounded, as load_photo's 8 bits are: truncated, a dark 16-bit scan's thumbnail was
        # a level below the viewer's in 43% of its pixels)
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    elif mode in ("L", "LA") and grey_icc:  # as load_photo converts it
        # (its 256 levels through a table: the full-size float RGB load_photo makes took a
        # 24 MP scan's thumbnail from 0.5 s and 97 MB to 1.3 s and 409 MB)
        levels = _grey8_to_srgb(np.arange(256, dtype=np.uint8)[None], icc, {})
        if levels is not None:
            table = _quantise(levels, 8)[0, :, 0]
            im = Image.fromarray(table[np.asarray(im.convert("L"))], "L")
    if im.mode != "RGB":
        im = im.convert("RGBA").convert("RGB") if "transparency" in im.info else im.convert("RGB")
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(im)


# modes whose alpha a preview keeps (as ``load_photo`` keeps it); a transparent colour
# ("transparency") is an alpha for these modes too (a 16-bit grey's is not kept by either)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_TRNS_MODES = frozenset({"P", "L", "RGB", "1"})
_PREVIEW_BAND_ROWS = 256  # source rows made premultiplied and reduced at a time


def _thumbnail_size(w: int, h: int, max_side: int) -> tuple[int, int]:
    """The size Pillow's ``thumbnail`` gives a w x h image within max_side x max_side (what
    ``_preview_rgb8`` makes): the side rounded to the nearer aspect ratio."""
    if max(w, h) <= max_side:
        return w, h
    aspect = w / h
    if aspect >= 1:
        n = max(1, min(math.floor(max_side / aspect), math.ceil(max_side / aspect),
                       key=lambda k: 0 if k == 0 else abs(aspect - max_side / k)))
        return max_side, n
    n = max(1, min(math.floor(max_side * aspect), math.ceil(max_side * aspect),
                   key=lambda k: abs(aspect - k / max_side)))
    return n, max_side


def _has_alpha(im) -> bool:
    return im.mode in _ALPHA_MODES or (im.mode in _TRNS_MODES and
                                       im.info.get("transparency") is not None)


def _preview_rgba8(im, max_side: int, icc: bytes | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """``_preview_rgb8`` of a decoded image with an alpha (``_has_alpha``): (uint8 RGB, uint8
    alpha or None when opaque everywhere). Reduced premultiplied (RGBa / La): an integer box
    reduction to at least twice the size, in bands of ``_PREVIEW_BAND_ROWS`` source rows
    (Pillow's own premultiplies a whole copy of the image first), then OpenCV's area
    reduction; the colours of the small image as ``_preview_rgb8`` makes them."""
    Image = _pil()
    icc = icc or im.info.get("icc_profile")
    straight = "LA" if im.mode in ("L", "LA", "La", "1") else "RGBA"
    pm = {"LA": "La", "RGBA": "RGBa"}[straight]
    w, h = im.size
    size = _thumbnail_size(w, h, max_side)
    f = max(1, int(min(w / size[0], h / size[1]) / 2.0))  # (reducing_gap 2, as thumbnail)
    rows = f * max(1, _PREVIEW_BAND_ROWS // f)
    out = Image.new(pm, (-(-w // f), -(-h // f)))
    for y in range(0, h, rows):
        band = im.crop((0, y, w, min(h, y + rows)))
        if band.mode != straight:  # (a palette, a transparent colour, RGBa / La)
            band = band.convert(straight)
        band = band.convert(pm)
        out.paste(band.reduce(f) if f > 1 else band, (0, y // f))
        del band
    pm_arr = np.asarray(out)
    del out
    if pm_arr.shape[1::-1] != size:
        import cv2

        pm_arr = cv2.resize(pm_arr, size, interpolation=cv2.INTER_AREA)
    alpha = np.ascontiguousarray(pm_arr[..., -1])
    # straight colours again (rounded; 0 where nothing is left of the picture)
    a = alpha.astype(np.uint32)[..., None]
    colour = (pm_arr[..., :-1].astype(np.uint32) * 255 + a // 2) // np.maximum(a, 1)
    colour = np.minimum(colour, 255).astype(np.uint8)
    rgb = _preview_rgb8(Image.fromarray(colour[..., 0] if straight == "LA" else colour),
                        max_side, icc)
    return rgb, (None if int(alpha.min(initial=255)) == 255 else alpha)


# --------------------------------------------------------------------------------------------
# XMP packet with the Mend record


_RECORD_NS_PREFIX_RE = re.compile(
    r"xmlns:([A-Za-z_][\w.-]*)\s*=\s*[\"']" + re.escape(MEND_XMP_NS) + r"[\"']")
# an rdf:Description holding nothing and declaring only rdf:about and namespaces (what is left of
# the one Mend wrote once its record is taken out). Every regex that runs over XMP text from a
# photo stays linear in its length: a repeated prefix (\s*, [ \t]*) starts only where its run
# does ((?<!\s)), and no part of a match may run on past where the next tag starts ([^<]...)
_EMPTY_DESC_RE = re.compile(
    r"(?<!\s)\s*<rdf:Description("
    r"(?:\s+(?:rdf:about|xmlns:[\w.-]+)\s*=\s*(?:\"[^\"<]*\"|'[^'<]*'))*"
    r")\s*(?:/>|>\s*</rdf:Description\s*>)")


_RECORD_PREFIXES_MAX = 8  # prefixes bound to Mend's namespace looked for (each is a pass)


def _record_prefixes(text: str) -> list[str]:
    """The prefixes bound to Mend's namespace in ``text`` ("mend" always among them; the first
    ``_RECORD_PREFIXES_MAX`` only: a packet declaring thousands must not cost thousands of
    passes over it)."""
    found = ["mend"]
    for m in _RECORD_NS_PREFIX_RE.finditer(text):
        if m.group(1) not in found:
            found.append(m.group(1))
            if len(found) >= _RECORD_PREFIXES_MAX:
                break
    return sorted(found)


def _record_element(p: str) -> str:
    # the record's text is escaped JSON (no "<"): its element ends at the next tag or not at all
    return rf"<{p}:record(?:\s[^<>]*)?/>|<{p}:record(?:\s[^<>]*)?>([^<]*)</{p}:record\s*>"


def _record_attribute(p: str) -> str:
    return rf"(?<=\s){p}:record\s*=\s*(?:\"([^\"]*)\"|'([^']*)')"


def _record_re(prefix: str) -> re.Pattern[str]:
    """``mend:record`` as an element (group 1: its text) or as an attribute (group 2 or 3: its
    value, the form the Adobe XMP Toolkit writes simple properties in)."""
    p = re.escape(prefix)
    return re.compile(_record_element(p) + "|" + _record_attribute(p))


def _xml_root(text: str):
    """The root element of ``text``, or None when it is not well formed or has a DTD."""
    import xml.etree.ElementTree as ET

    if "<!DOCTYPE" in text or "<!ENTITY" in text:  # XMP has no DTD; no entity expansion
        return None
    try:
        return ET.fromstring(text.lstrip("\ufeff"))
    except ET.ParseError:
        return None


def _xml_parses(text: str) -> bool:
    return _xml_root(text) is not None


def _without_record(text: str) -> str:
    """``text`` (an XMP packet) with every Mend record taken out and nothing else: the record
    element or attribute only, since other programs (the Adobe XMP Toolkit: Lightroom, Bridge,
    Photoshop) rewrite the packet as one rdf:Description holding every namespace - keywords,
    rating, rights - and Mend's record with them; an rdf:Description left empty by it goes.
    When the packet was well formed and the cut would break it, ``text`` is kept unchanged
    (the new record then follows the old one, and the last one is read)."""
    out = text
    for prefix in _record_prefixes(text):
        p = re.escape(prefix)
        out = re.sub(rf"(?<![ \t])[ \t]*(?:{_record_element(p)})[ \t]*(?:\r?\n)?", "", out)
        out = re.sub(rf"(?<!\s)\s+{_record_attribute(p)}", "", out)

    def empty(m: re.Match[str]) -> str:
        return "" if MEND_XMP_NS in m.group(1) else m.group(0)

    out = _EMPTY_DESC_RE.sub(empty, out)
    if out != text and _xml_parses(text) and not _xml_parses(out):
        log.warning("could not take the old Mend record out of the source XMP: kept it")
        return text
    return out


def _record_description(record: dict) -> str:
    text = json.dumps(record, ensure_ascii=False, sort_keys=True, default=str)
    esc = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (f'<rdf:Description rdf:about="" xmlns:mend="{MEND_XMP_NS}">'
            f"<mend:record>{esc}</mend:record></rdf:Description>")


def xmp_with_record(xmp: bytes | None, record: dict | None) -> bytes | None:
    """Merge the Mend record into an XMP packet (a new packet when there is none); a record
    already there is replaced, everything else in the packet is kept as it is."""
    if record is None:
        return xmp
    desc = _record_description(record)
    if xmp:
        try:
            text = xmp.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        text = _without_record(text.rstrip("\x00"))
        i = text.rfind("</rdf:RDF>")
        if i >= 0:
            return (text[:i] + desc + text[i:]).encode("utf-8")
        log.warning("source XMP is not well formed: writing a fresh XMP packet")
    return _fresh_packet(desc).encode()


def _fresh_packet(desc: str) -> str:
    """An XMP packet holding the rdf:Description(s) ``desc``."""
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f"{desc}</rdf:RDF></x:xmpmeta>"
            '<?xpacket end="w"?>')


def record_from_xmp(xmp: bytes | str | None) -> dict | None:
    """The Mend record in an XMP packet: the last ``mend:record``, element or attribute."""
    if not xmp:
        return None
    text = xmp.decode("utf-8", "replace") if isinstance(xmp, (bytes, bytearray)) else xmp
    last: tuple[int, str] | None = None
    for prefix in _record_prefixes(text):
        for m in _record_re(prefix).finditer(text):
            value = next((g for g in m.groups() if g is not None), "")
            if last is None or m.start() > last[0]:
                last = (m.start(), value)
    if last is None:
        return None
    try:
        value = json.loads(html.unescape(last[1]))
    except (ValueError, RecursionError):  # (any photo's XMP: JSON nested past the stack too)
        return None
    return value if isinstance(value, dict) else None


def read_record(path: str | os.PathLike[str], *, header_only: bool = False) -> dict | None:
    """The Mend record stored in a file written by ``save_photo`` or ``save_mask`` (None when
    there is none). ``header_only`` never decodes pixels: it looks only where Mend itself puts
    the record (a PNG's iTXt before the image data), so checking a folder of big PNGs for Mend
    results stays cheap; another program's XMP after a PNG's image data is then not read."""
    p = Path(path)
    _check_path(p)
    try:
        if _jxl_header(p) is not None:  # its XMP box, not Image.open: that decodes every pixel
            return record_from_xmp(_jxl_xmp(p))
        try:
            im = _pil().open(p)
        except _pil().UnidentifiedImageError:
            # a TIFF Pillow cannot open (a 16-bit grey + alpha result): its IFD0 XMP tag
            if _float_tiff_layout(p) is None and _grey_alpha16_layout(p) is None:
                raise
            from . import rawio

            return record_from_xmp(rawio.tiff_xmp(p))
        with im:
            xmp = _xmp_of(im, extended=not header_only)
            if xmp is None and im.format == "PNG" and not header_only:
                im.load()  # an iTXt chunk after the image data
                xmp = _xmp_of(im)
            return record_from_xmp(xmp)
    except Exception as e:  # noqa: BLE001 - decoders raise many types; _fail names the file
        raise _fail(p, e) from None


def mend_record(path: str | os.PathLike[str]) -> dict | None:
    """The record of a file Mend wrote (a result or a mask: its ``kind``), None for any other
    file, also one that cannot be read (loading it reports that). Reads headers only."""
    try:
        rec = read_record(path, header_only=True)
    except EngineError:
        return None
    if not rec or not str(rec.get("software", "")).startswith("Mend"):
        return None
    return rec


def mend_output_kind(path: str | os.PathLike[str]) -> str | None:
    """``"result"`` or ``"mask"`` when ``path`` was written by Mend (its record says so), else
    None, also for a file that cannot be read (loading it reports that). A result Mend copied
    byte for byte (nothing to fix, or the original kept) is the original's bytes and carries no
    record: it is not recognised. Reads headers only."""
    rec = mend_record(path)
    if rec is None:
        return None
    return "mask" if rec.get("kind") == "mask" else "result"


def record_name(name: str) -> str:
    """A file name as a result's record holds it (``source_record``): valid UTF-8 whatever the
    name (the bytes of one that is not, as ``\\xNN`` escapes), the same on every run."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (hex), read in chunks (``OSError`` when it cannot be)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def source_record(path: str | os.PathLike[str], *, name: bool = True) -> dict | None:
    """What a result's record says of the photo it was made from (its ``"source"``): the file's
    name (``record_name``; no folder) unless ``name`` is False (``--no-metadata``: a file name
    can say who or where), size in bytes and SHA-256 - which of several photos a result came
    from when they share its name (``a.png`` and ``a.bmp`` both give ``a_mend.png``,
    ``a_mend_1.png``: ``mend restore --skip-existing``). None when the file cannot be read."""
    p = Path(path)
    try:
        size = p.stat().st_size
        digest = file_sha256(p)
    except (OSError, ValueError):
        return None
    named = {"name": record_name(p.name)} if name else {}
    return {**named, "size": size, "sha256": digest}


# --------------------------------------------------------------------------------------------
# atomic writes


_PART_RE = re.compile(r"^\..+\.mend-(\d+)-[0-9a-f]+\.part$")
_USE_O_TMPFILE = hasattr(os, "O_TMPFILE")
_WINDOWS = os.name == "nt"


def sweep_partials(folder: str | os.PathLike[str]) -> int:
    """Delete temp files left in ``folder`` by Mend processes that died mid-write.

    Only files named ``.<name>.mend-<pid>-<hex>.part`` whose process no longer runs.
    Returns how many were removed.
    """
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        m = _PART_RE.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed += 1
        except OSError:
            pass
    return removed


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if _WINDOWS:
        # never os.kill(pid, 0) there: signal 0 is CTRL_C_EVENT on Windows, and os.kill sends
        # it (GenerateConsoleCtrlEvent) to the processes of a console instead of asking
        return _pid_alive_nt(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _pid_alive_nt(pid: int) -> bool:
    """Windows: whether process ``pid`` runs (OpenProcess + GetExitCodeProcess). When in doubt
    (access denied: another user's process; a failing call) it is taken to run: its temp file
    is left alone."""
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    kernel32.GetExitCodeProcess.restype = wintypes.BOOL
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    kernel32.CloseHandle.restype = wintypes.BOOL
    process_query_limited_information, still_active = 0x1000, 259
    error_invalid_parameter = 87  # what OpenProcess says for a process id that is not in use
    handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
    if not handle:
        return ctypes.get_last_error() != error_invalid_parameter
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


# Windows refuses to rename onto (or from) a file another program has open without sharing its
# deletion - a virus scanner or the search indexer looking at a file just written, a viewer, a
# reader of the same cache file - for as long as it keeps it open, usually milliseconds:
# ERROR_ACCESS_DENIED, ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION. Retried for ~1.6 s (pip
# retries its renames alike), then the error stands.
_WIN_BUSY = frozenset({5, 32, 33})
_REPLACE_DELAYS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)


def replace_file(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """``os.replace(src, dest)``; on Windows retried for a moment while another program holds
    one of the files open (see ``_WIN_BUSY``). Raises the last OSError."""
    for delay in (*_REPLACE_DELAYS, None):
        try:
            os.replace(src, dest)
            return
        except PermissionError as e:
            if delay is None or not _WINDOWS or getattr(e, "winerror", None) not in _WIN_BUSY:
                raise
        time.sleep(delay)


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=1)
def _linkat():
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fn = libc.linkat
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn, ctypes


def _link_fd(fd: int, dest: Path) -> None:
    """Give an O_TMPFILE file a name (raises FileExistsError when ``dest`` exists)."""
    fn, ctypes = _linkat()
    at_fdcwd, at_empty_path = -100, 0x1000
    if fn(fd, b"", at_fdcwd, os.fsencode(dest), at_empty_path) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(errno.EEXIST, os.strerror(err), str(dest))
    os.link(f"/proc/self/fd/{fd}", dest)  # needs /proc; may raise


def _candidates(dest: Path):
    yield dest
    for i in range(1, 10_000):
        yield dest.with_name(f"{dest.stem}_{i}{dest.suffix}")
    raise SaveFailed(f"{dest}: too many files with this name")


def _save_error(dest: Path, e: OSError) -> SaveFailed:
    """The ``SaveFailed`` of an ``OSError``, carrying its ``errno`` (a batch stops on a full or
    read-only disk: it is raised ``from None``, so the OSError is not to be looked for)."""
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        err = SaveFailed(f"{dest}: the disk is full; nothing was written (free some space "
                         "or choose another folder)")
    elif isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        err = SaveFailed(f"{dest}: cannot write here (permission denied or read-only folder)")
    else:
        err = SaveFailed(f"{dest}: could not write the file ({e.strerror or e})")
    err.errno = e.errno
    return err


def _atomic_write(dest: Path, write: Callable[[BinaryIO], None], *, overwrite: bool) -> Path:
    """Write via ``write(fileobj)`` atomically; returns the final path (suffixed on clashes when
    ``overwrite`` is false). No partial file is ever visible under a final name."""
    dest = Path(dest)
    folder = dest.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTDIR):  # a file where a folder should be
            raise SaveFailed(f"{dest}: cannot make the folder {folder}: it, or a folder above "
                             "it, is a file; choose another output folder") from None
        raise _save_error(dest, e) from None
    sweep_partials(folder)
    if _USE_O_TMPFILE:
        try:
            # read-write: when it cannot be linked, _write_tmpfile copies it to a named file
            fd = os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o666)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS):
                raise _save_error(dest, e) from None
            fd = -1  # filesystem without O_TMPFILE: fall back to a named temp file
        if fd >= 0:
            return _write_tmpfile(fd, dest, write, overwrite)
    return _write_named(dest, write, overwrite)


def _write_tmpfile(fd: int, dest: Path, write, overwrite: bool) -> Path:
    with os.fdopen(fd, "wb") as f:  # closing an unnamed O_TMPFILE frees it: nothing is left
        try:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            raise _save_error(dest, e) from None
        try:
            final = _name_tmpfile(f.fileno(), dest, overwrite)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, getattr(errno, "EDQUOT", -1)):
                raise _save_error(dest, e) from None
            data_fd = f.fileno()  # linking not allowed here: copy into a named temp file

            def copy(out: BinaryIO) -> None:
                os.lseek(data_fd, 0, os.SEEK_SET)
                with os.fdopen(os.dup(data_fd), "rb") as src:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)

            return _write_named(dest, copy, overwrite)
    _fsync_dir(dest.parent)
    return final


def _name_tmpfile(fd: int, dest: Path, overwrite: bool) -> Path:
    if overwrite:
        tmp = _temp_name(dest)
        try:  # (the link too: an interrupt right after it must not leave the named temp file)
            _link_fd(fd, tmp)
            os.replace(tmp, dest)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        return dest
    for cand in _candidates(dest):
        try:
            _link_fd(fd, cand)
        except FileExistsError:
            continue
        return cand
    raise SaveFailed(f"{dest}: too many files with this name")  # pragma: no cover


def _temp_name(dest: Path) -> Path:
    """``.<name>.mend-<pid>-<hex>.part`` beside ``dest``, with the name cut so that the temp
    name is no longer than ``dest``'s own (at least one character of it is kept): a name near
    the 255-byte limit (or a path near Windows' 260 characters) can be written too."""
    name = dest.name
    keep = name[:max(1, len(name) - 28)]  # the 28 characters the temp name adds, at most
    while len(os.fsencode(keep)) > NAME_MAX_BYTES - 40 and len(keep) > 1:
        keep = keep[:-1]
    return dest.with_name(f".{keep}.mend-{os.getpid()}-{secrets.token_hex(4)}.part")


def _unlink_quiet(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _write_named(dest: Path, write, overwrite: bool) -> Path:
    tmp = _temp_name(dest)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            replace_file(tmp, dest)
            final = dest
        else:
            final = None
            for cand in _candidates(dest):
                if cand.exists():
                    continue
                try:
                    os.link(tmp, cand)  # no-clobber where hard links work
                except FileExistsError:
                    continue
                except OSError:  # no hard links here (FAT, exFAT, some network shares)
                    replace_file(tmp, cand)
                else:
                    # (the result is in place: a temp name that cannot be removed yet - held
                    # open by a scanner on Windows - is swept by a later save)
                    _unlink_quiet(tmp)
                final = cand
                break
    except OSError as e:
        _unlink_quiet(tmp)
        raise _save_error(dest, e) from None
    except BaseException:
        _unlink_quiet(tmp)
        raise
    _fsync_dir(dest.parent)
    return final


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes, *,
                       overwrite: bool = True) -> Path:
    """Write ``data`` atomically (temp file in the target folder, fsync, rename).

    Replaces ``dest`` by default; with ``overwrite=False`` a clash gets a ``_1``, ``_2``...
    suffix. Returns the final path. Raises ``SaveFailed`` (disk full, permissions...).
    """
    return _atomic_write(Path(dest), lambda f: f.write(data), overwrite=overwrite)


# --------------------------------------------------------------------------------------------
# saving


def _norm_format(name: str | None) -> str | None:
    if not name:
        return None
    n = name.lower().lstrip(".")
    n = _FORMAT_ALIASES.get(n, n)
    if n not in _OUT_FORMATS:
        raise SaveFailed(f"cannot save as {name!r} (choose jpeg, png, tiff or webp)")
    return n


def _default_format(suffix: str, source_format: str | None) -> str:
    """The output format when the user chose none: what the source really is when that is known
    (``Photo.format``: a PNG named .dng is a PNG), else what its extension says."""
    if source_format:
        return _SOURCE_TO_OUT.get(source_format, "png")
    return _EXT_TO_OUT.get(suffix.lower(), "png")


def _output_format(dest: Path, options: OutputOptions, like: Photo | None) -> str:
    """``options.format``, else the format ``dest``'s extension names when it is one Mend
    writes, else the source's (as ``output_path_for`` decides, so the two agree)."""
    fmt = _norm_format(options.format)
    if fmt:
        return fmt
    suffix = dest.suffix.lower()
    for name, (_ext, accepted) in _OUT_FORMATS.items():
        if suffix in accepted:
            return name
    return _default_format(suffix, like.format if like is not None else None)


def output_path_for(src: str | os.PathLike[str], options: OutputOptions | None = None, *,
                    source_format: str | None = None, taken: Container[str] = ()) -> Path:
    """Where the result of ``src`` goes: ``<out_dir or src folder>/<stem><suffix>.<ext>``,
    with ``_1``, ``_2``... when taken; never the source itself.

    The format is ``options.format``, else that of the decoded source when ``source_format``
    (``Photo.format``) is given - a PNG misnamed ``.dng`` exports as ``.png``, a RAW as a TIFF -
    else the one ``src``'s extension implies. ``taken`` holds more names (``path_key``) to
    treat as taken: those a dry run gives the photos before ``src``, which the run writes."""
    options = options or OutputOptions()
    src = Path(src)
    if any(c in options.suffix for c in "/\\\0") or (os.altsep and os.altsep in options.suffix):
        # ("_mend/../../x" would write outside the output folder)
        raise SaveFailed(f"the name suffix {options.suffix!r} may not contain a folder "
                         "separator")
    fmt = _norm_format(options.format) or _default_format(src.suffix, source_format)
    folder = Path(options.out_dir) if options.out_dir else src.parent
    tail = f"{options.suffix}{_OUT_FORMATS[fmt][0]}"
    dest = folder / f"{_fit_stem(src.stem, options.suffix, folder)}{tail}"
    for cand in _candidates(dest):
        try:
            if not cand.exists() and not _same_file(cand, src) and path_key(cand) not in taken:
                return cand
        except OSError as e:  # (exists() raises for a name the file system refuses)
            raise SaveFailed(f"{cand}: cannot use this name ({e.strerror or e})") from None
    raise SaveFailed(f"{dest}: too many files with this name")  # pragma: no cover


def path_key(path: str | os.PathLike[str]) -> str:
    """``path`` as a key that names one file however it is written (absolute, normalised)."""
    return os.path.normcase(os.path.abspath(path))


def mask_path_for(result: str | os.PathLike[str]) -> Path:
    """Where the reflection mask of the result ``result`` goes: ``<result stem>_mask.png``
    (``x_mend.jpg`` -> ``x_mend_mask.png``, ``x_mend_1.jpg`` -> ``x_mend_1_mask.png``); when
    that is taken - by the mask of a result of the same stem in another format (``x_mend.jpg``
    and ``x_mend.png`` in one folder) - ``<result stem>_<ext>_mask.png`` (``x_mend_png_mask.png``:
    no result is named ``x_mend_png``), so that a mask's name always says its result. (Taken
    too, ``save_mask`` adds a ``_1``... rather than write over a file.)"""
    result = Path(result)
    plain = result.with_name(f"{result.stem}_mask.png")
    try:
        if not os.path.lexists(plain):
            return plain
    except (OSError, ValueError):
        return plain
    ext = result.suffix.lstrip(".").lower() or "out"
    return result.with_name(f"{result.stem}_{ext}_mask.png")


NAME_MAX_BYTES = 255  # a file name's limit on the common file systems (ext4, APFS, NTFS)
# a path's limit in characters (UTF-16 units) on Windows unless long paths are enabled
MAX_PATH_CHARS: int | None = 259 if os.name == "nt" else None
# the longest end of a name derived from a result ``<stem><suffix>.<ext>``: a clash suffix, then
# its B mask (``<result stem>[_<ext>]_mask.png``, ``mask_path_for``) with the mask's own clash
# suffix
_DERIVED_TAIL = "_9999_webp_mask_9999.png"
_MIN_STEM = 16  # characters of the source's name kept however long the output folder's path is


def _utf16_len(s: str) -> int:
    return len(s.encode("utf-16-le", "surrogatepass")) // 2


def _fit_stem(stem: str, suffix: str, folder: str | os.PathLike[str] | None = None) -> str:
    """``stem`` shortened (whole characters) so that every name derived from the result
    ``stem + suffix + ext`` - with a ``_9999`` clash suffix, its mask ``..._mask.png`` with one
    too - fits in ``NAME_MAX_BYTES``, and on Windows (``MAX_PATH_CHARS``) its whole path below
    ``folder`` too (keeping at least ``_MIN_STEM`` characters): a source named near the limit
    still gets a result and its mask."""
    tail = suffix + _DERIVED_TAIL
    room = NAME_MAX_BYTES - len(os.fsencode(tail))
    while stem and len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    if MAX_PATH_CHARS is not None and folder is not None:
        chars = MAX_PATH_CHARS - _utf16_len(os.path.join(os.path.abspath(folder), tail))
        while len(stem) > _MIN_STEM and _utf16_len(stem) > chars:
            stem = stem[:-1]
    return stem


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


_QUANTISE_SLAB = 1 << 20  # values quantised at a time (a 4 MB float32 temporary)


def _quantise(pixels: np.ndarray, depth: int, *, linear: bool = False,
              over_white: np.ndarray | None = None) -> np.ndarray:
    """uint8 (``depth`` 8) or uint16 (16) from float [0, 1] pixels (NaN 0, clipped, rounded)
    or uint8 / uint16 ones. ``over_white``: an alpha (H, W) to flatten the pixels onto white
    with (JPEG has no transparency); ``linear``: the pixels are sRGB-encoded values of a
    linear photo (``Photo.linear_icc``), converted back to linear light here."""
    a = np.asarray(pixels)
    if not linear and over_white is None:
        if a.dtype == np.uint8 and depth == 8:
            return a
        if a.dtype == np.uint16 and depth == 16:
            return a
        if a.dtype == np.uint8:
            return a.astype(np.uint16) * 257
        if a.dtype == np.uint16:
            return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    top = np.float32(255.0 if depth == 8 else 65535.0)
    unit = {np.dtype(np.uint8): np.float32(255.0),
            np.dtype(np.uint16): np.float32(65535.0)}.get(a.dtype)
    out = np.empty(a.shape, np.uint8 if depth == 8 else np.uint16)
    # in slabs of rows, the same values: one small float32 temporary instead of several
    # full-size ones (a 60 MP float32 photo: +2.34 GB at the peak -> the result and ~10 MB;
    # 3.8-7.6 s -> 0.6-0.7 s; a 48 MP JPEG flattened onto white: see save_photo)
    step = max(1, _QUANTISE_SLAB // max(1, a[:1].size))
    for y in range(0, a.shape[0], step):
        f = a[y:y + step].astype(np.float32, copy=True)
        if unit is not None:
            f /= unit
        np.nan_to_num(f, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
        np.clip(f, 0.0, 1.0, out=f)
        if over_white is not None:
            w = np.asarray(over_white[y:y + step], dtype=np.float32)
            w = np.clip(np.nan_to_num(w), 0.0, 1.0)[..., None]
            f *= w
            f += 1.0 - w
            np.clip(f, 0.0, 1.0, out=f)
        if linear:
            _srgb_decode(f)
        f *= top
        f += np.float32(0.5)
        out[y:y + step] = f
    return out


def save_photo(pixels: np.ndarray, dest: str | os.PathLike[str], *, like: Photo | None = None,
               options: OutputOptions | None = None, alpha: np.ndarray | None = None,
               record: dict | None = None, overwrite: bool = False,
               notes: list[str] | None = None) -> Path:
    """Save float RGB [0, 1] (H, W, 3) atomically with the source's metadata; return the path.

    The format comes from ``options.format``, else ``dest``'s extension, else the source; the
    extension is fixed to match. 16-bit output when the source was 16-bit and the format allows
    (PNG/TIFF) unless ``options.bit_depth`` says otherwise. Never writes the source file
    (``SaveFailed``); an existing ``dest`` gets a ``_1``, ``_2``... suffix unless ``overwrite``.
    What the format could not hold is appended to ``notes`` (for the photographer): 16 bits
    asked of an 8-bit format, transparency in a JPEG (flattened onto white), XMP, EXIF or IPTC
    too large for a JPEG segment, IPTC in a PNG/WebP (no place for it), a linear photo in 8
    bits (the sRGB curve kept), a resolution no file can hold (left out).
    The result of a grey source (``like.grey``) whose channels are all equal is written as
    grey (one channel, and its alpha) in its source's grey profile, when the format has grey
    (not WebP): see ``_grey_result``.
    """
    options = options or OutputOptions()
    dest = Path(dest)
    fmt = _output_format(dest, options, like)
    ext, accepted = _OUT_FORMATS[fmt]
    if dest.suffix.lower() not in accepted:
        dest = dest.with_name(dest.name + ext) if not dest.suffix else dest.with_suffix(ext)
    if like is not None and _same_file(dest, Path(like.path)):
        raise SaveFailed(f"{dest}: refusing to overwrite the original photo")

    arr = np.asarray(pixels)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise SaveFailed(f"{dest}: not an RGB image (shape {arr.shape})")
    if arr.shape[2] == 4:
        if alpha is None:
            alpha = arr[..., 3]
        arr = arr[..., :3]
    h, w = arr.shape[:2]

    notes = notes if notes is not None else []
    if like is not None:  # (pages and frames after the first, a CIFF block: not in it)
        notes += afresh_notes(like, options)
    depth = options.bit_depth or (like.bit_depth if like is not None else
                                  (16 if arr.dtype == np.uint16 else 8))
    if options.bit_depth == 16 and fmt not in ("png", "tiff"):
        notes.append(f"{fmt.upper()} holds 8 bits per channel: written as 8-bit "
                     "(choose PNG or TIFF for 16-bit)")
    depth = 16 if depth >= 16 and fmt in ("png", "tiff") else 8
    al = white = None
    if alpha is not None:
        al = np.asarray(alpha)
        if al.ndim == 3:
            al = al[..., 0]
        if al.dtype == np.uint8 or al.dtype == np.uint16:
            al = al.astype(np.float32) / (255.0 if al.dtype == np.uint8 else 65535.0)
        if al.shape != (h, w):
            import cv2

            al = cv2.resize(al.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        if fmt == "jpeg":
            if float(al.min()) < 1.0:  # no transparency in JPEG: flatten onto white, not black
                white = al  # (done slab by slab as the pixels are quantised)
                notes.append("JPEG has no transparency: the transparent areas were filled with "
                             "white (choose PNG, TIFF or WebP to keep them)")
            al = None
    # the ICC profile is kept either way: the pixels are in its colour space, and without it
    # every viewer would show other colours (it says nothing about the photographer)
    icc = like.icc_profile if like is not None and _icc_space(like.icc_profile) == b"RGB " \
        else None
    # a linear photo's pixels were encoded with the sRGB curve on loading: a 16-bit result
    # goes back to linear light and gets the photo's own profile; 8 bits of linear light would
    # band in the shadows, so an 8-bit one keeps the sRGB curve and the profile saying so
    source_linear = getattr(like, "linear_icc", None) if icc is not None else None
    linear = depth == 16 and _icc_space(source_linear) == b"RGB "
    if linear:
        icc = source_linear
    elif source_linear is not None:
        notes.append("this photo's colour profile has a linear tone curve, which 8 bits per "
                     "channel would band in the shadows: the result keeps the sRGB tone curve "
                     "with a profile of the same primaries (choose 16-bit PNG or TIFF for its "
                     "own profile)")
    grey = _grey_result(arr, depth, like, fmt, icc, linear, white, notes)
    if grey is not None:  # one channel (and the profile a grey file carries)
        rgb, icc = grey
    else:
        rgb = _quantise(arr, depth, linear=linear, over_white=white)
    del white, grey
    a = _quantise(al, depth) if al is not None else None

    keep = options.keep_metadata and like is not None
    dpi = None
    if keep and like.dpi:
        s = w / max(1, like.width)  # keep the print size when the result is larger
        try:
            dpi = (float(like.dpi[0]) * s, float(like.dpi[1]) * s)
        except (TypeError, ValueError, IndexError):
            dpi = like.dpi
        if not dpi_usable(dpi):  # damaged or made up: kept out of every header
            notes.append(f"the photo's resolution ({_dpi_text(like.dpi)}) is not a usable "
                         "value: the result was written without it (the EXIF keeps its own)")
            dpi = None
    exif = clean_exif(like.exif, w, h, dpi, notes) if keep and like.exif else None
    xmp = _xmp_reset_orientation(like.xmp) if keep else None
    xmp = xmp_with_record(xmp, record)
    # IPTC (captions, keywords, copyright: personal data) goes with EXIF and XMP
    iptc = getattr(like, "iptc", None) if keep else None
    if iptc and fmt in ("png", "webp"):  # neither format has a standard place for IIM
        notes.append(IPTC_NOT_CARRIED)
    meta = _Meta(icc=icc, exif=exif, xmp=xmp, dpi=dpi,
                 comment=like.info.get("comment") if keep else None, notes=notes, iptc=iptc,
                 photoshop=like.info.get("photoshop_resources") if iptc else None)

    encoder = {"jpeg": _encode_jpeg, "png": _encode_png, "tiff": _encode_tiff,
               "webp": _encode_webp}[fmt]
    try:
        data = encoder(rgb, a, meta, options)
    except SaveFailed as e:  # the encoder's reason, for this file
        raise SaveFailed(f"{dest}: {e}") from None
    except EngineError:
        raise
    except MemoryError:
        raise SaveFailed(f"{dest}: not enough memory to encode the image") from None
    except Exception as e:
        raise SaveFailed(f"{dest}: could not encode the image ({type(e).__name__}: {e})") from e
    return _atomic_write(dest, lambda f: f.write(data), overwrite=overwrite)


# Grey results. A photo whose source stores one channel (``Photo.grey``) and whose result
# still has three equal channels (``pipeline.keep_grey`` sees to that) is written as grey: 8-bit
# L or 16-bit grey in JPEG, PNG and TIFF (with its alpha: LA), a third of the data. WebP has no
# grey mode: RGB there. Its colour: the values of a source with a grey ICC profile were
# converted to sRGB on loading (``_grey16_lut``); they are converted back through the inverse
# of that table and the source's profile is embedded as it was - a level the restoration did
# not change comes back as it was stored (8 and 16 bits: ``_grey_inverse``). An 8-bit result of
# a linear grey profile (libjxl tags 16-bit grey so) would band in the shadows: it keeps the
# sRGB curve and gets a grey profile saying so (``_grey_srgb_icc``), as an RGB one does. A grey
# source read with an RGB profile (a PNG's gAMA, an EXIF "Adobe RGB") gets a grey profile with
# that profile's tone curve (``_grey_twin``: R = G = B of a matrix profile is a neutral grey of
# that curve); a profile that cannot be said in grey keeps the result RGB. No profile, none.


def _grey_result(arr: np.ndarray, depth: int, like: Photo | None, fmt: str,
                 icc: bytes | None, linear: bool, white: np.ndarray | None,
                 notes: list[str]) -> tuple[np.ndarray, bytes | None] | None:
    """(grey uint8/uint16 (H, W), its ICC profile or None) to write for the result ``arr``
    (H, W, 3), or None when it is written as RGB: its source is not grey, its channels differ
    or the format (WebP) has no grey. With an alpha, a 16-bit TIFF is 16-bit grey + alpha,
    which Pillow cannot open: Mend reads it itself (``_load_grey_alpha16_tiff``), and so does
    libtiff's scanline reading (its RGBA interface, which OpenCV falls back on, drops the
    alpha). ``icc``/``linear``: the RGB profile an RGB result would
    carry and whether its values go back to linear light; ``white``: the alpha to flatten onto
    white (JPEG)."""
    if like is None or not getattr(like, "grey", False) or fmt == "webp" or not _is_grey(arr):
        return None
    one = arr[..., :1]
    source = getattr(like, "grey_icc", None)
    if _icc_space(source) != b"GRAY":
        if icc is not None:
            icc = _grey_twin(icc)
            if icc is None:  # a profile a grey file cannot carry: RGB, as it was
                return None
        g = _quantise(one, depth, linear=linear, over_white=white)
        return np.ascontiguousarray(g[..., 0]), icc
    if depth == 8 and _grey_linear(source):
        notes.append("this photo's grey profile has a linear tone curve, which 8 bits would "
                     "band in the shadows: the result keeps the sRGB tone curve with a grey "
                     "profile saying so (choose 16-bit PNG or TIFF for its own profile)")
        return np.ascontiguousarray(_quantise(one, 8, over_white=white)[..., 0]), \
            _grey_srgb_icc()
    try:
        inverse = _grey_inverse(source, depth)
    except Exception as e:  # noqa: BLE001 - no inverse: the sRGB curve, a profile saying so
        log.debug("grey profile not invertible: %s", e)
        return np.ascontiguousarray(_quantise(one, depth, over_white=white)[..., 0]), \
            _grey_srgb_icc()
    return inverse[_quantise(one, 16, over_white=white)[..., 0]], source


@functools.lru_cache(maxsize=8)
def _grey_inverse(icc: bytes, depth: int) -> np.ndarray:
    """Lookup table (read-only; uint8 for ``depth`` 8, else uint16) of the 65536 16-bit sRGB
    grey values: the grey value in the profile ``icc`` of each, the inverse of what loading did
    (``_grey16_lut``; an 8-bit source's levels are its 16-bit values v * 257). A value loading
    made goes back to the level (the middle of the levels) it was made of; those between are
    interpolated. ValueError when the profile's tone curve goes down somewhere (no inverse)."""
    fwd = _grey16_lut(icc)
    step = 257 if depth == 8 else 1
    knots = fwd[::step].astype(np.int64)
    if np.any(np.diff(knots) < 0):
        raise ValueError("the grey profile's tone curve is not monotonic")
    values, first, counts = np.unique(knots, return_index=True, return_counts=True)
    middle = first + (counts - 1) / 2.0
    inv = np.floor(np.interp(np.arange(65536), values, middle) + 0.5)
    out = inv.astype(np.uint8 if depth == 8 else np.uint16)
    out.flags.writeable = False
    return out


def _grey_linear(icc: bytes) -> bool:
    """Whether a grey profile's tone curve is linear (gamma 1.0 within 1 %)."""
    g = _trc_gamma(_icc_tags(icc).get(b"kTRC"))
    return g is not None and abs(g - 1.0) <= 0.01


@functools.cache
def _grey_srgb_icc() -> bytes:
    """The grey profile with the sRGB tone curve written into grey files: ``_grey_icc()`` with
    a ``curv`` table (the ICC v2 type every reader takes) instead of a parametric curve. Read
    back through LittleCMS its 16-bit values are sRGB's within 13 of 65535 (the deepest
    shadows), every 8-bit level exactly."""
    return _icc_build(b"GRAY", "Grey, sRGB tone curve (Mend)", [(b"kTRC", _curv(_SRGB_CURVE))])


def _grey_twin(icc: bytes) -> bytes | None:
    """A grey profile whose greys are R = G = B in the matrix/TRC RGB profile ``icc`` (three
    equal tone curves, colourants adding up to the D50 white: then R = G = B is a neutral with
    Y = the curve), None when ``icc`` is not such a profile (a LUT-based one, unequal curves)."""
    tags = _icc_tags(icc)
    if _icc_space(icc) != b"RGB " or any(t in tags for t in (b"A2B0", b"A2B1", b"A2B2")):
        return None
    trc = tags.get(b"rTRC")
    if not trc or trc[:4] not in (b"curv", b"para") or tags.get(b"gTRC") != trc \
            or tags.get(b"bTRC") != trc:
        return None
    try:
        xyz = [struct.unpack_from(">3i", tags[sig], 8) for sig in (b"rXYZ", b"gXYZ", b"bXYZ")]
    except (KeyError, struct.error):
        return None
    white = np.sum(np.array(xyz, dtype=np.float64), axis=0) / 65536.0
    if np.abs(white - np.array([0.9642, 1.0, 0.8249])).max() > 0.01:
        return None
    return _icc_build(b"GRAY", "Grey, the tone curve of the photo's profile (Mend)",
                      [(b"kTRC", trc)])


def _png_grey_alpha(g: np.ndarray, a: np.ndarray) -> bytes:
    """A grey + alpha PNG (colour type 4; 8 or 16 bits as ``g``'s dtype) of (H, W) ``g`` and
    ``a``: OpenCV writes 1, 3 or 4 channels only, Pillow no 16-bit LA. Rows filtered with Sub
    (PNG filter type 1), deflated a slab of rows at a time."""
    h, w = g.shape
    bits = 16 if g.dtype == np.uint16 else 8
    dt = np.dtype(">u2" if bits == 16 else "u1")
    bpp = 2 * (bits // 8)  # bytes per pixel
    rows = max(1, (1 << 20) // (w * bpp))
    z = zlib.compressobj(4)
    parts = []
    for y in range(0, h, rows):
        block = np.empty((min(rows, h - y), w, 2), dt)
        block[..., 0] = g[y:y + rows]
        block[..., 1] = a[y:y + rows]
        raw = block.view(np.uint8).reshape(block.shape[0], w * bpp)
        out = np.empty((raw.shape[0], raw.shape[1] + 1), np.uint8)
        out[:, 0] = 1
        out[:, 1:1 + bpp] = raw[:, :bpp]
        np.subtract(raw[:, bpp:], raw[:, :-bpp], out=out[:, 1 + bpp:])  # modulo 256
        parts.append(z.compress(out.tobytes()))
    parts.append(z.flush())
    data = b"".join(parts)
    chunk = 1 << 20
    idat = [_png_chunk(b"IDAT", data[i:i + chunk]) for i in range(0, max(1, len(data)), chunk)]
    return b"".join([b"\x89PNG\r\n\x1a\n",
                     _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, 4, 0, 0, 0)),
                     *idat, _png_chunk(b"IEND", b"")])


@dataclass
class _Meta:
    icc: bytes | None
    exif: bytes | None
    xmp: bytes | None
    dpi: tuple[float, float] | None
    comment: bytes | None = None
    notes: list[str] = field(default_factory=list)  # what the format could not hold
    iptc: bytes | None = None  # IIM datasets
    photoshop: bytes | None = None  # the source JPEG's APP13 resources to carry (IPTC among them)


def _pil_save(im, fmt: str, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


JPEG_XMP_MAX = 65000  # bytes of XMP one JPEG APP1 segment holds (65502 less some margin)
JPEG_EXIF_MAX = 65533  # bytes of EXIF (with its "Exif\0\0") one JPEG APP1 segment holds
# what makes an XMP packet large without describing the photo: Photoshop's list of every
# placed document, the edit history, Camera Raw's and darktable's develop settings (elements and
# attributes; darktable's colour labels stay) and embedded thumbnails
_XMP_BULK_NAMES = (r"(photoshop:DocumentAncestors|xmpMM:History|xmp:Thumbnails|crs:[A-Za-z0-9]+"
                   r"|darktable:(?:history|masks_history))\b")
# such an element is its start tag (group 2: "/" when it is empty) up to the first end tag of
# the same name: start and end tags are found in one pass each and paired by position (one
# regex "<(name)...>.*?</\1>" would scan to the end of the text from every start tag left open)
_XMP_BULK_START = re.compile(rf"<{_XMP_BULK_NAMES}[^<>]*?(/?)>")
_XMP_BULK_END = re.compile(rf"</{_XMP_BULK_NAMES}\s*>")
_XMP_BULK_ATTRS = re.compile(r'(?<!\s)\s+(?:crs|darktable):[A-Za-z0-9_]+="[^"]*"')


def _without_bulk_elements(text: str, taken: list[str] | None = None) -> str:
    """``text`` without the bulky elements; ``taken`` gets each element taken out."""
    ends: dict[str, list[tuple[int, int]]] = {}
    for m in _XMP_BULK_END.finditer(text):
        ends.setdefault(m.group(1), []).append((m.start(), m.end()))
    out, pos = [], 0
    for m in _XMP_BULK_START.finditer(text):
        if m.start() < pos:  # inside an element already taken out
            continue
        if m.group(2):
            end = m.end()
        else:
            close = ends.get(m.group(1), [])
            i = bisect.bisect_left(close, (m.end(), -1))
            if i == len(close):
                continue
            end = close[i][1]
        out.append(text[pos:m.start()])
        if taken is not None:
            taken.append(text[m.start():end])
        pos = end
    out.append(text[pos:])
    return "".join(out)


def slim_xmp(xmp: bytes) -> bytes:
    """``xmp`` without its editing history (see ``_XMP_BULK_NAMES``); keywords, rating,
    title, creator, rights and Mend's record stay."""
    try:
        text = xmp.decode("utf-8")
    except UnicodeDecodeError:
        return xmp
    text = _without_bulk_elements(text)
    text = _XMP_BULK_ATTRS.sub("", text)
    return text.encode("utf-8")


def _encode_jpeg(rgb, a, meta: _Meta, options: OutputOptions) -> bytes:
    Image = _pil()
    im = Image.fromarray(rgb, "L" if rgb.ndim == 2 else "RGB")
    q = int(min(100, max(1, options.quality)))
    kw: dict[str, Any] = {"quality": q, "subsampling": 0 if q >= 90 else 2}
    if meta.icc:
        kw["icc_profile"] = meta.icc
    if meta.exif and len(meta.exif) > JPEG_EXIF_MAX:
        meta.notes.append(f"the photo's EXIF ({len(meta.exif) // 1024} KB: camera, date, "
                          "GPS...) is too large for a JPEG and was not copied (choose PNG, TIFF "
                          "or WebP to keep it)")
    elif meta.exif:
        kw["exif"] = meta.exif
    if meta.dpi and max(meta.dpi) < 65535.5:  # JFIF's density is 16-bit (Pillow wraps it)
        kw["dpi"] = (round(float(meta.dpi[0])), round(float(meta.dpi[1])))
    elif meta.dpi:
        meta.notes.append(f"a JPEG's header holds at most 65535 dpi: the resolution "
                          f"({_dpi_text(meta.dpi)}) was left out of it"
                          + (" (the EXIF has it)" if meta.exif else ""))
    if meta.comment:
        kw["comment"] = meta.comment
    xmp = meta.xmp
    extended: list[bytes] = []
    if xmp and len(xmp) > JPEG_XMP_MAX:  # over one APP1 segment: standard + extended XMP
        split = _xmp_split(xmp, meta.notes)
        if split is not None:
            xmp, ext = split
            extended = _xmp_extension_segments(ext)
    if xmp and len(xmp) > JPEG_XMP_MAX:  # could not split: first drop the bulky history
        slim = slim_xmp(xmp)
        if len(slim) <= JPEG_XMP_MAX:
            meta.notes.append(f"the photo's XMP ({len(xmp) // 1024} KB) is too large for a "
                              "JPEG: its editing history (document ancestors, history, "
                              "Camera Raw settings, thumbnails) was left out; keywords, rating "
                              "and the rest were kept")
            xmp = slim
    if xmp and len(xmp) > JPEG_XMP_MAX:  # keep the record, drop the source XMP
        log.warning("source XMP too large for a JPEG segment: dropped")
        meta.notes.append(f"the photo's XMP ({len(xmp) // 1024} KB: keywords, ratings...) is "
                          "too large for a JPEG and was not copied (choose PNG, TIFF or WebP "
                          "to keep it)")
        xmp = xmp_with_record(None, record_from_xmp(xmp))
    if xmp:
        kw["xmp"] = xmp
    jpeg = _pil_save(im, "JPEG", **kw)
    app13 = _app13(meta)
    # after Pillow's APP0, EXIF, XMP and ICC (APP2) segments: extended XMP, then APP13 (the
    # XMP specification sets no place for the extension segments; ExifTool reads them anywhere)
    extra = b"".join(extended) + (app13 or b"")
    return _jpeg_insert(jpeg, extra) if extra else jpeg


# Extended XMP (Adobe XMP Specification Part 3, 1.1.3.1): XMP over one APP1 segment is split
# into the StandardXMP (the usual APP1 "http://ns.adobe.com/xap/1.0/\0" packet, which names the
# rest in xmpNote:HasExtendedXMP) and the ExtendedXMP: a complete x:xmpmeta serialization with no
# packet wrapper, cut into APP1 segments "http://ns.adobe.com/xmp/extension/\0" + GUID (32
# ASCII hex digits: the MD5 of the whole ExtendedXMP) + its full length + this portion's offset
# (both big-endian 32-bit) + the portion. Lightroom, Photoshop and ExifTool write it when the
# develop settings, the history or the document ancestors make the XMP large.
_XMP_STD_SIG = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_EXT_SIG = b"http://ns.adobe.com/xmp/extension/\x00"
_XMP_NOTE_NS = "http://ns.adobe.com/xmp/note/"
_XMP_EXT_CHUNK = 65400  # bytes of ExtendedXMP per segment (the spec's figure; 65458 fit)
XMP_EXTENDED_MAX = 16 << 20  # bytes of ExtendedXMP read or written
_XMP_NOTE_PREFIX_RE = re.compile(
    r"xmlns:([A-Za-z_][\w.-]*)\s*=\s*[\"']" + re.escape(_XMP_NOTE_NS) + r"[\"']")
_XMLNS_RE = re.compile(r"(?<![\w:.-])xmlns:([A-Za-z_][\w.-]*)\s*=\s*(?:\"([^\"<]*)\"|'([^'<]*)')")
_RDF_START_RE = re.compile(r"<rdf:RDF(?=[\s>/])[^<>]*>")
_RDF_ABOUT_RE = re.compile(r"<rdf:Description\s[^<>]*?rdf:about\s*=\s*(\"[^\"<]*\"|'[^'<]*')")
_XMPMETA_RE = re.compile(r"<x:xmpmeta(?=[\s>])")


def _note_prefixes(text: str) -> list[str]:
    """The prefixes bound to the xmpNote namespace ("xmpNote" always among them)."""
    found = ["xmpNote"]
    for m in _XMP_NOTE_PREFIX_RE.finditer(text):
        if m.group(1) not in found:
            found.append(m.group(1))
            if len(found) >= _RECORD_PREFIXES_MAX:
                break
    return found


def _has_extended_re(prefix: str) -> re.Pattern[str]:
    """xmpNote:HasExtendedXMP as an element (group 1: the GUID) or an attribute (group 2/3)."""
    p = re.escape(prefix)
    return re.compile(rf"<{p}:HasExtendedXMP(?:\s[^<>]*)?>([^<]*)</{p}:HasExtendedXMP\s*>"
                      rf"|(?<=\s){p}:HasExtendedXMP\s*=\s*(?:\"([^\"<]*)\"|'([^'<]*)')")


def _xmp_extended_guid(text: str) -> tuple[str | None, str]:
    """(the GUID the StandardXMP ``text`` names in xmpNote:HasExtendedXMP or None, ``text``
    without that property: a packet Mend writes as one piece must not name a part it lacks)."""
    guid = None
    out = text
    for prefix in _note_prefixes(text):
        rx = _has_extended_re(prefix)
        for m in rx.finditer(out):
            value = next((g for g in m.groups() if g is not None), "").strip()
            if guid is None and re.fullmatch(r"[0-9A-Fa-f]{32}", value):
                guid = value.upper()
        p = re.escape(prefix)
        out = re.sub(rf"(?<![ \t])[ \t]*<{p}:HasExtendedXMP(?:\s[^<>]*)?>[^<]*"
                     rf"</{p}:HasExtendedXMP\s*>[ \t]*(?:\r?\n)?", "", out)
        out = re.sub(rf"(?<!\s)\s+{p}:HasExtendedXMP\s*=\s*(?:\"[^\"<]*\"|'[^'<]*')", "", out)
    if out != text and _xml_parses(text) and not _xml_parses(out):
        out = text
    return guid, out


def _md5_hex(data: bytes) -> str:
    import hashlib

    return hashlib.md5(data, usedforsecurity=False).hexdigest().upper()


def _jpeg_extended_xmp(im, standard: bytes, notes: list[str] | None) -> bytes:
    """The XMP of a JPEG: its StandardXMP with the ExtendedXMP it names merged in (segments of
    that GUID put together by offset, the MD5 checked). What cannot be read is said in
    ``notes`` and the StandardXMP is kept alone."""
    segs = [s for m, s in getattr(im, "applist", ()) if m == "APP1"
            and s.startswith(_XMP_EXT_SIG)]
    has_note = b"HasExtendedXMP" in standard
    if not segs and not has_note:
        return standard
    try:
        text = standard.decode("utf-8")
    except UnicodeDecodeError:
        return standard
    guid, text = _xmp_extended_guid(text)
    if guid is None:  # extension segments no StandardXMP points to: stale, as the spec says
        return standard if not has_note else text.encode("utf-8")
    problem, ext = _xmp_assemble(segs, guid)
    merged = _xmp_merge(text, ext) if ext is not None else None
    if ext is not None and merged is None:
        problem = "it could not be merged with the main XMP"
    if merged is None:
        msg = (f"this JPEG's extended XMP (the part of its XMP over 64 KB: develop settings, "
               f"history or more) could not be read ({problem}): it was not copied to the "
               "result")
        log.info("%s", msg)
        if notes is not None:
            notes.append(msg)
        return text.encode("utf-8")
    return merged.encode("utf-8")


def _xmp_assemble(segs: list[bytes], guid: str) -> tuple[str, str | None]:
    """(what is wrong, "" when nothing; the ExtendedXMP text or None) from the extension
    segments with ``guid``."""
    head = len(_XMP_EXT_SIG)
    full = None
    parts: dict[int, bytes] = {}
    for s in segs:
        if len(s) < head + 40 or s[head:head + 32].decode("latin-1").upper() != guid:
            continue
        total, off = struct.unpack_from(">II", s, head + 32)
        if full is None:
            full = total
        if total != full:
            return "its parts disagree on its length", None
        parts[off] = s[head + 40:]
    if full is None:
        return "its segments are missing", None
    if full > XMP_EXTENDED_MAX:
        return f"{full >> 20} MB, over the {XMP_EXTENDED_MAX >> 20} MB limit", None
    data = bytearray()
    for off in sorted(parts):
        if off != len(data):
            return "a part is missing or overlaps another", None
        data += parts[off]
    if len(data) != full:
        return "a part is missing", None
    if _md5_hex(bytes(data)) != guid:
        return "its MD5 digest does not match its GUID: damaged", None
    try:
        return "", bytes(data).decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        return "not UTF-8 text", None


def _xmp_declarations(text: str) -> dict[str, str] | None:
    """Every ``xmlns:prefix`` declared in ``text`` (the URI as written, to go between double
    quotes); None when one prefix is bound to two namespaces (the pieces of the text could not
    all share one set of declarations) or a URI holds a double quote."""
    out: dict[str, str] = {}
    for m in _XMLNS_RE.finditer(text):
        uri = m.group(2) if m.group(2) is not None else m.group(3)
        if '"' in uri or out.setdefault(m.group(1), uri) != uri:
            return None
    return out


def _xmp_merge(standard: str, extended: str) -> str | None:
    """The StandardXMP ``standard`` with the rdf:Description elements of ``extended`` added to
    its rdf:RDF (the namespaces ``extended`` declares outside them declared there too); None
    when that cannot be done or the result is not well formed."""
    m = _RDF_START_RE.search(extended)
    end = extended.rfind("</rdf:RDF>")
    s_start = _RDF_START_RE.search(standard)
    s_end = standard.rfind("</rdf:RDF>")
    if m is None or end < m.end() or s_start is None or s_end < s_start.end():
        return None
    outer = _xmp_declarations(extended[:m.end()])
    have = _xmp_declarations(standard[:s_start.end()])
    if outer is None or have is None:
        return None
    add = ""
    for prefix, uri in outer.items():
        if prefix in have:
            if have[prefix] != uri:
                return None
            continue
        add += f' xmlns:{prefix}="{uri}"'
    tag = s_start.group(0)
    tag = tag[:-1] + add + ">" if not tag.endswith("/>") else None
    if tag is None:
        return None
    out = (standard[:s_start.start()] + tag + standard[s_start.end():s_end]
           + extended[m.end():end] + standard[s_end:])
    if not _xml_parses(out) and _xml_parses(standard):
        return None
    return out


def _xmp_split(xmp: bytes, notes: list[str]) -> tuple[bytes, bytes] | None:
    """(StandardXMP, ExtendedXMP) of a packet over one JPEG segment, or None (not XMP that can
    be split safely; the caller then falls back to leaving parts out). The bulky editing
    history and develop settings (``_XMP_BULK_NAMES``) go to the extended part, so keywords,
    rating and the rest stay readable by every program; when the rest is still too large,
    everything but the Mend record goes there (``notes`` says so)."""
    try:
        text = xmp.decode("utf-8").lstrip("\ufeff").rstrip("\x00")
    except UnicodeDecodeError:
        return None
    _guid, text = _xmp_extended_guid(text)
    if not _xml_parses(text):
        return None
    decl = _xmp_declarations(text)
    about_m = _RDF_ABOUT_RE.search(text)
    about = about_m.group(1) if about_m else '""'
    taken: list[str] = []
    slim = _without_bulk_elements(text, taken)
    attrs = [a.strip() for a in _XMP_BULK_ATTRS.findall(slim)]
    slim = _XMP_BULK_ATTRS.sub("", slim)
    if decl is not None and (taken or attrs) and _bulk_only_at_top(text):
        ns = "".join(f' xmlns:{k}="{v}"' for k, v in decl.items() if k not in ("x", "rdf"))
        ext = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/'
               f'1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about={about}{ns}'
               + "".join(" " + a for a in attrs) + ">" + "".join(taken)
               + "</rdf:Description></rdf:RDF></x:xmpmeta>")
        split = _xmp_pair(slim, ext, about)
        if split is not None:
            return split
    # everything but the record to the extended part
    m = _XMPMETA_RE.search(text)
    end = text.rfind("</x:xmpmeta>")
    body = _without_record(text[m.start():end + len("</x:xmpmeta>")] if m and end > m.start()
                           else text)
    if _RDF_START_RE.search(body) is None or not _xml_parses(body):
        return None
    record = record_from_xmp(text)
    standard = _fresh_packet(_record_description(record) if record is not None else "")
    split = _xmp_pair(standard, body, about)
    if split is None:
        return None
    notes.append(f"the photo's XMP ({len(xmp) // 1024} KB: keywords, ratings...) is too large "
                 "for a JPEG's main XMP segment: it was written as extended XMP, which Adobe "
                 "software and ExifTool read but some viewers do not (choose PNG, TIFF or "
                 "WebP to keep it in one piece)")
    return split


# a start, end or empty-element tag: (/ of an end tag, name, attributes, / of an empty one)
_XML_TAG_RE = re.compile(r"<(/?)([A-Za-z_][\w.-]*(?::[A-Za-z_][\w.-]*)?)"
                         r"((?:[^<>\"']|\"[^\"]*\"|'[^']*')*?)(/?)>")
_XMP_BULK_NAME_RE = re.compile(_XMP_BULK_NAMES)
_XMP_BULK_ATTR_RE = re.compile(r"\s(?:crs|darktable):[A-Za-z0-9_]+=\"")


def _bulk_only_at_top(text: str) -> bool:
    """Whether every bulky element and attribute (``_XMP_BULK_NAMES``, ``_XMP_BULK_ATTRS``) of
    the XMP ``text`` is a property of a top-level rdf:Description (the photo's own). One
    nested deeper belongs to something else - an ingredient's history or Camera Raw settings
    in Photoshop's xmpMM:Pantry, a structure's field - and moved to the ExtendedXMP's
    top-level rdf:Description it would become the photo's own property."""
    stack: list[str] = []
    bulk_at = -1  # depth of the bulky element being walked through (its content goes with it)
    for m in _XML_TAG_RE.finditer(text):
        close, name, attrs, empty = m.groups()
        if close:
            if stack and stack[-1] == name:
                stack.pop()
            if len(stack) <= bulk_at:
                bulk_at = -1
            continue
        if bulk_at < 0:
            top = len(stack) >= 2 and stack[-1] == "rdf:Description" and stack[-2] == "rdf:RDF"
            if _XMP_BULK_NAME_RE.fullmatch(name):
                if not top:
                    return False
                bulk_at = len(stack)
            elif _XMP_BULK_ATTR_RE.search(attrs) and not (
                    name == "rdf:Description" and stack and stack[-1] == "rdf:RDF"):
                return False
        if not empty:
            stack.append(name)
        elif bulk_at == len(stack):  # an empty bulky element
            bulk_at = -1
    return True


def _xmp_pair(standard: str, extended: str, about: str) -> tuple[bytes, bytes] | None:
    """``standard`` naming ``extended`` in xmpNote:HasExtendedXMP, both encoded; None when the
    StandardXMP does not fit one segment or the ExtendedXMP is too large or not well formed."""
    ext = extended.encode("utf-8")
    if len(ext) > XMP_EXTENDED_MAX or not _xml_parses(extended):
        return None
    note = (f'<rdf:Description rdf:about={about} xmlns:xmpNote="{_XMP_NOTE_NS}">'
            f"<xmpNote:HasExtendedXMP>{_md5_hex(ext)}</xmpNote:HasExtendedXMP>"
            "</rdf:Description>")
    i = standard.rfind("</rdf:RDF>")
    if i < 0:
        return None
    std = (standard[:i] + note + standard[i:]).encode("utf-8")
    if len(std) > JPEG_XMP_MAX or not _xml_parses(std.decode("utf-8")):
        return None
    return std, ext


def _xmp_extension_segments(ext: bytes) -> list[bytes]:
    """The APP1 segments (marker included) holding the ExtendedXMP ``ext``."""
    guid = _md5_hex(ext).encode("ascii")
    out = []
    for off in range(0, len(ext), _XMP_EXT_CHUNK):
        payload = (_XMP_EXT_SIG + guid + struct.pack(">II", len(ext), off)
                   + ext[off:off + _XMP_EXT_CHUNK])
        out.append(b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload)
    return out


def _app13(meta: _Meta) -> bytes | None:
    """The APP13 segment holding the IPTC: the source JPEG's Photoshop resources as they were
    (less thumbnails and the like, see ``_PS_KEEP``), else the IIM wrapped as resource 0x0404."""
    if not meta.iptc:
        return None
    payload = _PS_APP13 + (meta.photoshop or _ps_resource(_PS_IPTC, meta.iptc))
    if len(payload) > JPEG_APP13_MAX:
        meta.notes.append(f"the photo's IPTC captions/keywords ({len(meta.iptc) // 1024} KB) "
                          "are too large for a JPEG and were not copied (choose TIFF to keep "
                          "them; they remain in XMP if the photo had them)")
        return None
    return b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload


def _jpeg_insert(jpeg: bytes, segment: bytes) -> bytes:
    """``segment`` after the leading APP0...APP12 segments (JFIF, EXIF, XMP, ICC): where
    Photoshop puts its APP13."""
    pos = 2
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF and 0xE0 <= jpeg[pos + 1] <= 0xEC:
        pos += 2 + struct.unpack_from(">H", jpeg, pos + 2)[0]
    return jpeg[:pos] + segment + jpeg[pos:]


def _encode_webp(rgb, a, meta: _Meta, options: OutputOptions) -> bytes:
    Image = _pil()
    im = Image.fromarray(rgb, "RGB")
    if a is not None:
        im.putalpha(Image.fromarray(a, "L"))
    kw: dict[str, Any] = {"quality": int(min(100, max(1, options.quality))), "method": 4}
    if meta.icc:
        kw["icc_profile"] = meta.icc
    if meta.exif:
        kw["exif"] = meta.exif[6:]
    if meta.xmp:
        kw["xmp"] = meta.xmp
    return _pil_save(im, "WEBP", **kw)


def _png_chunk(ctype: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + ctype + data
            + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF))


def _encode_png(rgb, a, meta: _Meta, options: OutputOptions) -> bytes:
    import cv2

    if rgb.ndim == 2 and a is not None:  # grey + alpha: OpenCV has no such PNG
        png = _png_grey_alpha(rgb, a)
    else:
        if rgb.ndim == 2:
            img = rgb
        elif a is not None:
            img = np.dstack([rgb[..., ::-1], a])
        else:
            img = np.ascontiguousarray(rgb[..., ::-1])
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 4])
        if not ok:
            raise SaveFailed("PNG encoder failed")
        png = buf.tobytes()
    extra = b""
    if meta.icc:
        extra += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(meta.icc))
    if meta.dpi:
        ppm = [max(1, round(float(d) / 0.0254)) for d in meta.dpi]
        extra += _png_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1))
    if meta.exif:
        extra += _png_chunk(b"eXIf", meta.exif[6:])
    if meta.xmp:
        extra += _png_chunk(b"iTXt", _PNG_XMP_KEY + meta.xmp)
    return _png_splice(png, extra)


_PNG_XMP_KEY = b"XML:com.adobe.xmp\x00\x00\x00\x00\x00"  # iTXt keyword, uncompressed, no language


def _png_splice(png: bytes, extra: bytes) -> bytes:
    """``png`` without the colour/density chunks an encoder may write, with ``extra`` (our
    chunks) right after IHDR, i.e. before the image data, where readers find it at open."""
    out = [png[:8]]
    pos = 8
    while pos + 8 <= len(png):
        (length,) = struct.unpack_from(">I", png, pos)
        ctype = png[pos + 4:pos + 8]
        end = pos + 12 + length
        if ctype not in (b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"pHYs", b"eXIf"):
            out.append(png[pos:end])
            if ctype == b"IHDR":
                out.append(extra)
        pos = end
    return b"".join(out)


# TIFF writer (8/16-bit RGB[A] or grey[+alpha], Adobe deflate with horizontal predictor, EXIF/GPS
# sub-IFDs: the source's EXIF block as it is when it is sound (``_exif_block``), else its Exif and
# GPS entries laid out anew without the maker note and Interop IFD, whose offsets would then be
# wrong)

_TIFF_SKIP_EXIF = {0x927C, 0xA005, 0xA002, 0xA003}  # maker note, interop pointer, pixel size


def _exif_entries(exif: bytes | None):
    """(byte order, IFD0 descriptive entries, Exif IFD entries, GPS entries) of an EXIF blob."""
    body = _tiff_body(exif)
    if body is None:
        return None
    try:
        t = _Tiff(body)
        ifd0: list = []
        exif_e: list = []
        gps: list = []
        subs: dict[int, int] = {}
        for e, tag, typ, count, voff, nbytes in t.entries(t.u32(4)):
            if tag in (0x8769, 0x8825) and typ in (4, 13):
                subs[tag] = t.u32(e + 8)
            elif tag in _TIFF_DESCRIPTIVE and typ in _TYPE_SIZE and voff + nbytes <= len(body):
                ifd0.append((tag, typ, count, body[voff:voff + nbytes]))
        for ptr, bucket, skip in ((0x8769, exif_e, _TIFF_SKIP_EXIF), (0x8825, gps, set())):
            if ptr not in subs:
                continue
            try:
                for _e, tag, typ, count, voff, nbytes in t.entries(subs[ptr]):
                    if tag in skip or typ not in _TYPE_SIZE or voff + nbytes > len(body):
                        continue
                    bucket.append((tag, typ, count, body[voff:voff + nbytes]))
            except ValueError:
                continue
        return t.bo, ifd0, exif_e, gps
    except (ValueError, struct.error):
        return None


def _exif_block(exif: bytes | None) -> tuple[bytes, int, int] | None:
    """(the EXIF's TIFF structure, the offset of its Exif IFD, of its GPS IFD or 0) when it can
    be embedded as it is at the start of a TIFF result: it has an Exif IFD and every entry of
    that IFD, of the GPS IFD and of the Interop IFD lies inside it. Kept byte for byte at the
    same offsets from the TIFF header as in the source, the maker note and the Interop IFD stay
    right whatever their offsets are relative to (the TIFF header, as Canon's, or the maker note
    itself, as Nikon's and Fujifilm's) - what a JPEG's APP1 keeps for the same reason. None
    (the Exif and GPS entries are then laid out anew, without either) otherwise."""
    body = _tiff_body(exif)
    if body is None:
        return None
    try:
        t = _Tiff(body)
        subs: dict[int, int] = {}
        for e, tag, typ, count, _voff, _n in t.entries(t.u32(4)):
            if tag in (0x8769, 0x8825) and typ in (4, 13) and count == 1:
                subs[tag] = t.u32(e + 8)
        if 0x8769 not in subs:
            return None
        todo, seen = [subs[0x8769], *([subs[0x8825]] if 0x8825 in subs else [])], set()
        while todo:
            ifd = todo.pop()
            if ifd in seen or ifd < 8:
                return None
            seen.add(ifd)
            for e, tag, typ, count, voff, nbytes in t.entries(ifd):
                if typ not in _TYPE_SIZE or voff + nbytes > len(body):
                    return None
                if ifd == subs[0x8769] and tag == 0xA005:
                    if typ not in (4, 13) or count != 1:
                        return None
                    todo.append(t.u32(e + 8))
        return body, subs[0x8769], subs.get(0x8825, 0)
    except (ValueError, struct.error):
        return None


def _ifd_blob(bo: str, entries: list, base: int) -> bytes:
    entries = sorted(entries, key=lambda x: x[0])
    table = bytearray(struct.pack(bo + "H", len(entries)))
    overflow = bytearray()
    data_at = base + 2 + 12 * len(entries) + 4
    for tag, typ, count, payload in entries:
        if len(payload) <= 4:
            table += struct.pack(bo + "HHI", tag, typ, count) + payload.ljust(4, b"\x00")
        else:
            table += struct.pack(bo + "HHII", tag, typ, count, data_at + len(overflow))
            overflow += payload
            if len(overflow) % 2:
                overflow += b"\x00"
    table += struct.pack(bo + "I", 0)
    return bytes(table + overflow)


_TIFF_MAX = 1 << 32  # bytes: a classic TIFF's offsets are 32-bit (this writer has no BigTIFF)


def _tiff_too_large() -> SaveFailed:
    return SaveFailed("the result is too large for a TIFF file: over 4 GB even compressed, "
                      "the most a TIFF (not BigTIFF, which Mend does not write) can address; "
                      "nothing was written: choose another output format or a smaller result")


def _encode_tiff(rgb, a, meta: _Meta, options: OutputOptions) -> bytes:
    parsed = _exif_entries(meta.exif) if meta.exif else None
    bo = parsed[0] if parsed else "<"
    grey = rgb.ndim == 2
    img = np.dstack([rgb, a]) if a is not None else rgb[..., None] if grey else rgb
    h, w, spp = img.shape
    depth = 16 if img.dtype == np.uint16 else 8
    dt = np.dtype(bo + ("u2" if depth == 16 else "u1"))
    rows = max(1, min(h, (1 << 18) // max(1, w * spp * (depth // 8))))
    strips: list[bytes] = []
    total = 0
    for y in range(0, h, rows):
        block = img[y:y + rows].astype(dt, copy=True)
        block[:, 1:] -= img[y:y + rows, :-1].astype(dt)  # predictor 2 (wraps modulo 2^depth)
        strips.append(zlib.compress(block.tobytes(), 6))
        total += len(strips[-1])
        if total >= _TIFF_MAX:  # no need to compress the rest
            raise _tiff_too_large()

    def short(*v):
        return (3, len(v), struct.pack(bo + "H" * len(v), *v))

    def long_(*v):
        return (4, len(v), struct.pack(bo + "I" * len(v), *v))

    def rational(x: float):
        num = round(float(x) * 1000)
        return (5, 1, struct.pack(bo + "II", max(1, num), 1000))

    def build(strip_offsets, exif_off, gps_off):
        e: dict[int, tuple] = {}
        if parsed:
            for tag, typ, count, payload in parsed[1]:
                e[tag] = (typ, count, payload)
        e.update({
            256: long_(w), 257: long_(h), 258: short(*([depth] * spp)), 259: short(8),
            262: short(1 if grey else 2), 273: long_(*strip_offsets), 274: short(1),
            277: short(spp),
            278: long_(rows), 279: long_(*[len(s) for s in strips]), 284: short(1),
            317: short(2), 339: short(*([1] * spp)),
        })
        if spp in (2, 4):
            e[338] = short(2)  # unassociated alpha
        if meta.dpi:
            e[282], e[283], e[296] = rational(meta.dpi[0]), rational(meta.dpi[1]), short(2)
        elif 282 not in e or 283 not in e:
            # no resolution to say (--no-metadata, a source without one): said as a JPEG's
            # JFIF says it - square pixels, no unit (X/YResolution 1, ResolutionUnit 1: TIFF
            # requires the tags). Left out, Pillow reads 1 dpi (a print metres wide); GIMP,
            # like Pillow, takes this as no resolution and uses its default
            e[282], e[283], e[296] = rational(1), rational(1), short(1)
        if meta.xmp:
            e[700] = (1, len(meta.xmp), meta.xmp)
        if meta.icc:
            e[34675] = (7, len(meta.icc), meta.icc)
        if meta.iptc:  # UNDEFINED, as TIFF/EP and libtiff define it (no LONG padding)
            e[33723] = (7, len(meta.iptc), meta.iptc)
        if exif_off:
            e[0x8769] = long_(exif_off)
        if gps_off:
            e[0x8825] = long_(gps_off)
        return [(tag, *v) for tag, v in e.items()]

    n = len(strips)
    block = _exif_block(meta.exif) if parsed else None
    if block is not None:  # the source's EXIF first, as it is; our IFD0 after it
        body, exif_off, gps_off = block
        prefix = body + b"\x00" * (len(body) & 1)  # an IFD starts on a word boundary
        size0 = len(_ifd_blob(bo, build([0] * n, exif_off, gps_off), len(prefix)))
        pos = len(prefix) + size0
        offsets = []
        for s in strips:
            offsets.append(pos)
            pos += len(s)
        if pos >= _TIFF_MAX:  # before any offset is packed (struct.error otherwise)
            raise _tiff_too_large()
        ifd0 = _ifd_blob(bo, build(offsets, exif_off, gps_off), len(prefix))
        assert len(ifd0) == size0
        header = prefix[:4] + struct.pack(bo + "I", len(prefix))
        return b"".join([header, prefix[8:], ifd0, *strips])
    exif_entries = list(parsed[2]) if parsed else []
    gps_entries = list(parsed[3]) if parsed else []
    if exif_entries:
        exif_entries += [(0xA002, 4, 1, struct.pack(bo + "I", w)),
                         (0xA003, 4, 1, struct.pack(bo + "I", h))]
    # sizes do not depend on the offsets: lay out with placeholders, then fill in
    size0 = len(_ifd_blob(bo, build([0] * n, 1 if exif_entries else 0,
                                     1 if gps_entries else 0), 8))
    exif_off = 8 + size0 if exif_entries else 0
    exif_blob = _ifd_blob(bo, exif_entries, exif_off) if exif_entries else b""
    gps_off = 8 + size0 + len(exif_blob) if gps_entries else 0
    gps_blob = _ifd_blob(bo, gps_entries, gps_off) if gps_entries else b""
    pos = 8 + size0 + len(exif_blob) + len(gps_blob)
    offsets = []
    for s in strips:
        offsets.append(pos)
        pos += len(s)
    if pos >= _TIFF_MAX:  # before any offset is packed (struct.error otherwise)
        raise _tiff_too_large()
    ifd0 = _ifd_blob(bo, build(offsets, exif_off, gps_off), 8)
    assert len(ifd0) == size0
    header = (b"II*\x00" if bo == "<" else b"MM\x00*") + struct.pack(bo + "I", 8)
    return b"".join([header, ifd0, exif_blob, gps_blob, *strips])


# --------------------------------------------------------------------------------------------
# folders and masks


_IO_REPARSE_TAG_MOUNT_POINT = 0xA0000003  # (winnt.h; the stat module has it on Windows only)


def is_junction(entry: os.DirEntry) -> bool:
    """Whether a folder entry is a Windows junction (a folder link ``mklink /J`` makes, which
    ``is_dir(follow_symlinks=False)`` reports as a plain folder). ``DirEntry.is_junction`` only
    came with Python 3.12; before, the reparse tag of the entry's own stat (Windows keeps it
    from the listing: no extra call) says so. False elsewhere than Windows."""
    fn = getattr(entry, "is_junction", None)
    if fn is not None:
        return bool(fn())
    try:
        tag = getattr(entry.stat(follow_symlinks=False), "st_reparse_tag", 0)
    except OSError:
        return False
    return tag == _IO_REPARSE_TAG_MOUNT_POINT


def folder_ids(folders: Iterable[str | os.PathLike[str]]) -> set[tuple[int, int]]:
    """(device, file number) of each of ``folders`` that exists (none where the file system
    has no file numbers)."""
    ids = set()
    for f in folders:
        try:
            st = os.stat(f)
        except (OSError, ValueError):
            continue
        if st.st_ino:
            ids.add((st.st_dev, st.st_ino))
    return ids


def _photo_folders(top: Path, recursive: bool, skip: set[str],
                   unlisted: list[tuple[Path, str]] | None = None,
                   skip_ids: set[tuple[int, int]] | None = None
                   ) -> Iterator[tuple[Path, list[Path]]]:
    """``(folder, its photos)`` for ``top`` and, with ``recursive``, every folder below it:
    depth first, names sorted case-insensitively, hidden files and folders skipped, symlinked
    folders (and Windows junctions) not followed, folders in ``skip`` (normcased absolute
    paths) or whose (device, file number) is in ``skip_ids`` - the same folder spelt another
    way: ``-o photos/Out`` for ``Photos/out`` on macOS, where names ignore case and Unicode
    normalisation, and paths are not normcased - and below them left out. ``top`` that cannot
    be listed raises ``BadImage``; a subfolder is skipped, added to ``unlisted`` as
    ``(folder, reason)`` or, without that list, logged."""
    stack = [top]  # an explicit stack: no recursion limit on deep trees
    while stack:
        folder = stack.pop()
        if path_key(folder) in skip:
            continue
        if skip_ids and folder is not top and folder_ids([folder]) & skip_ids:
            continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: (e.name.lower(), e.name))
        except OSError as e:
            if folder is top:
                raise BadImage(folder, f"cannot list this folder ({e.strerror or e})") from None
            if unlisted is None:
                log.warning("skipped folder %s: %s", folder, e.strerror or e)
            else:
                unlisted.append((folder, str(e.strerror or e)))
            continue
        photos: list[Path] = []
        subfolders: list[Path] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_file() and is_photo_path(Path(entry.name)):
                    photos.append(Path(entry.path))
                elif (recursive and entry.is_dir(follow_symlinks=False)
                      and not is_junction(entry)):  # (a folder link, like a symlink)
                    subfolders.append(Path(entry.path))
            except OSError:
                continue
        yield folder, photos
        stack.extend(reversed(subfolders))


def iter_photos(paths: Iterable[str | os.PathLike[str]], *, on_missing: str = "raise",
                recursive: bool = False,
                exclude: Iterable[str | os.PathLike[str]] = (),
                unlisted: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Files as given, folders expanded to the photos inside (sorted, hidden files and folders
    skipped; with ``recursive`` also the photos in every subfolder, a folder's own photos before
    its subfolders', symlinked folders not followed). Folders in ``exclude`` (and below them)
    are skipped, e.g. an output folder inside the input tree. A missing path raises ``BadImage``
    (``on_missing="keep"`` passes it through so that loading it reports the error later), and
    so does a folder given that cannot be listed. A subfolder that cannot be listed is skipped:
    appended to ``unlisted`` as ``(folder, reason)`` when a list is given, else logged."""
    out: list[Path] = []
    seen: set[str] = set()
    exclude = tuple(exclude)
    skip = {path_key(e) for e in exclude}

    def add(p: Path) -> None:
        key = path_key(p)
        if key not in seen:
            seen.add(key)
            out.append(p)

    skip_ids = folder_ids(exclude) if recursive else set()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for _folder, photos in _photo_folders(p, recursive, skip, unlisted, skip_ids):
                for photo in photos:
                    add(photo)
        elif p.exists() or on_missing == "keep":
            add(p)
        else:
            raise BadImage(p, "no such file or folder")
    return out


def count_subfolder_photos(folder: str | os.PathLike[str], limit: int = 1000,
                           max_folders: int = 5000,
                           unlisted: list[tuple[Path, str]] | None = None) -> tuple[int, bool]:
    """How many photos the subfolders of ``folder`` hold (the same walk as ``iter_photos(...,
    recursive=True)``, ``unlisted`` as there), for the hint on a folder whose photos are all in
    subfolders: ``(count, complete)``. Counting stops at ``limit`` photos or after
    ``max_folders`` folders (a home folder given by mistake must not be walked to the end);
    then the count is a lower bound and ``complete`` is False."""
    n = 0
    walk = _photo_folders(Path(folder), True, set(), unlisted)
    for i, (_folder, photos) in enumerate(walk):
        if i == 0:  # the folder's own photos
            continue
        n += len(photos)
        if n >= limit or i >= max_folders:
            return n, False
    return n, True


def load_mask(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> np.ndarray:
    """An 8-bit mask (white = selected) as uint8 (H, W), resized (nearest) to ``size`` = (H, W).
    A mask whose shape (aspect ratio) is not that of ``size`` is a ``BadImage``."""
    p = Path(path)
    _check_path(p)
    try:
        im = _open_image(p, max_pixels_default())
        with im:
            _load_pixels(im, p, max_pixels_default())
            orientation = exif_orientation(_raw_exif(im)) if im.format != "TIFF" else 1
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                grey = np.asarray(rgba.convert("L"))
                alpha = np.asarray(rgba.getchannel("A"))
                mask = alpha if int(grey.min()) == int(grey.max()) else grey
            elif im.mode.startswith("I;16") or im.mode == "I":
                mask = (np.clip(np.asarray(im, dtype=np.float32) / 257.0, 0, 255)).astype(np.uint8)
            else:
                mask = np.asarray(im.convert("L"))
        mask = np.ascontiguousarray(_orient(mask, orientation))
    except EngineError:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise many types; _fail names the file
        raise _fail(p, e) from None
    if int(mask.max(initial=0)) == 1:  # a 0/1 label image (what labelling tools export)
        mask = mask * np.uint8(255)
    if size is not None:
        hh, ww = int(size[0]), int(size[1])
        mh, mw = mask.shape[:2]
        # a mask drawn at another scale is fine; one of another shape (made on another photo,
        # or on this one before it was rotated) would mark the wrong places
        if abs(mw - mh * ww / max(hh, 1)) > max(1.0, 0.02 * mw):
            raise BadImage(p, f"the mask is {mw}×{mh} px but the photo is {ww}×{hh}: a mask "
                              "must have the photo's shape (it may be smaller or larger)")
        if mask.shape != (hh, ww):
            import cv2

            mask = cv2.resize(mask, (ww, hh), interpolation=cv2.INTER_NEAREST)
    return mask


def save_mask(mask: np.ndarray, dest: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Save a mask as an 8-bit grey PNG (bool/float [0, 1]/uint8 accepted). Returns the path."""
    import cv2

    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.dtype == bool:
        m = m.astype(np.uint8) * 255
    elif m.dtype != np.uint8:
        m = _quantise(np.asarray(m, dtype=np.float32), 8)
    dest = Path(dest)
    if dest.suffix.lower() != ".png":
        dest = dest.with_suffix(".png")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(m))
    if not ok:
        raise SaveFailed(f"{dest}: could not encode the mask")
    from . import __version__

    # a small record marks the file as Mend's mask, so a batch over its folder does not take it
    # for a photo to restore (``mend_output_kind``); mask readers ignore the chunk
    xmp = xmp_with_record(None, {"software": f"Mend {__version__}", "kind": "mask"})
    png = _png_splice(buf.tobytes(), _png_chunk(b"iTXt", _PNG_XMP_KEY + xmp))
    return atomic_write_bytes(dest, png, overwrite=overwrite)
