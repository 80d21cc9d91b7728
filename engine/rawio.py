"""Camera RAW input for ``engine.imageio`` through ``rawpy`` (LibRaw), an optional dependency.

A file is a RAW by its content, never its extension: TIFF-based RAWs (DNG, CR2, NEF, ARW, PEF,
SRW...) are told from ordinary TIFFs by a DNGVersion tag, the CR2 signature or a colour-filter-
array IFD (PhotometricInterpretation 32803 / LinearRaw 34892) anywhere in the IFD chain or its
SubIFDs; ORF, RW2, RAF, CR3, X3F and MRW have their own signatures. Anything Pillow cannot
identify is also offered to LibRaw (``libraw_opens``).

Decoding (``decode``) is LibRaw's own postprocess: camera white balance (``use_camera_wb``, LibRaw
falls back to its daylight multipliers when the file has none), sRGB primaries, the sRGB tone
curve (``gamma=(2.4, 12.92)``, not rawpy's BT.709 default), 16 bits per sample, and
``no_auto_bright=True`` so the exposure is the camera's (LibRaw's auto-brightness would stretch
every photo so that 1 % of its pixels clip, a different brightness per photo). LibRaw rotates by
``sizes.flip`` itself; the EXIF we carry has its orientation reset to 1, so the rotation is
applied exactly once. The pixel limit is checked on LibRaw's header sizes before anything is
unpacked.

Threads: rawpy's wheels build LibRaw with OpenMP (``rawpy.flags["OPENMP"]``; rawpy 0.28.0 /
LibRaw 0.22.2 on Linux bundle ``rawpy.libs/libgomp-*.so``). Uncapped, ``postprocess`` runs its
parallel parts on a team of one thread per CPU whatever Mend's thread setting: measured here
(2 CPUs, a 6 MP synthetic DNG) the decoding thread used 0.36 s of CPU and a second, OpenMP thread
0.22 s. ``OMP_NUM_THREADS`` is read only when libgomp loads, and ``omp_set_num_threads`` sets
the count of the *calling* thread only (libgomp keeps it per thread: set in the main thread it
did not cap a decode in a worker thread). So ``_cap_openmp`` calls it, with
``devices.cpu_threads()``, in the decoding thread right before every ``postprocess``; measured:
with a cap of 1 no OpenMP thread is started, with 2 one is. ``info["libraw_threads"]`` records
the cap (or why there is none). Only the Linux wheel's bundled libgomp was measured; a bundled
``libomp`` (macOS) / ``vcomp`` (Windows) is capped the same way when found, unmeasured.

EXIF: TIFF-based RAWs give their IFD0 descriptive tags plus the Exif and GPS IFDs (maker notes
are left out: their offsets point into the RAW), and their XMP (IFD0 tag 700); other containers give the EXIF of their embedded
JPEG preview when it has one; otherwise ``photo.info["exif_note"]`` says none could be read.
IPTC-IIM (IFD0 tag 33723) of a TIFF-based RAW is carried like a TIFF's.

XMP sidecars: Lightroom, Bridge, Capture One (``IMG_0001.xmp``) and darktable, digiKam
(``IMG_0001.CR2.xmp``) keep a RAW's keywords, rating and rights in a sidecar next to it. For a
proprietary RAW (CR2, NEF, ARW...) the sidecar is authoritative: those programs never write into
the RAW, so the sidecar holds the photographer's latest edits (and what the camera embedded, which
they read on import); it replaces an embedded XMP. For a DNG the embedded XMP is authoritative
(Lightroom writes into the DNG itself): a sidecar is read only when the DNG has none. With both
sidecar names present the newer one is taken. A sidecar is read only when it is a regular file
of at most ``SIDECAR_XMP_MAX`` bytes holding well-formed XML without a DTD or entities whose root
is ``x:xmpmeta`` (holding ``rdf:RDF``) or ``rdf:RDF``; anything else is ignored with a warning in
``photo.info["warnings"]``. Its develop settings (Camera Raw ``crs:``, darktable history) are left
out: they say how the RAW was rendered, and a raster result carrying them would be developed a
second time by Lightroom. ``photo.info["xmp_source"]`` names the sidecar used.
"""
from __future__ import annotations

import ctypes
import glob
import io
import logging
import mmap
import os
import re
import stat
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadImage
from .imageio import (
    _TIFF_DESCRIPTIVE,
    _TIFF_SKIP_EXIF,
    _TYPE_SIZE,
    IPTC_MAX,
    _adobe_rgb_icc,
    _exif_colour_space,
    _ifd_blob,
    _orient,
    _pil,
    _raw_exif,
    _source_icc,
    _Tiff,
    _tiff_colour_space,
    _too_large,
    _xml_root,
    rgb_to_srgb,
    slim_xmp,
)

log = logging.getLogger(__name__)

INSTALL_HINT = ("this is a camera RAW file ({kind}); reading RAW files needs the optional 'raw' "
                "extra: pip install 'mend[raw]' (or pip install rawpy)")
_EXIF_TO_FLIP = {1: 0, 2: 1, 3: 3, 4: 2, 5: 4, 6: 6, 7: 7, 8: 5}
FLIP_TO_EXIF = {v: k for k, v in _EXIF_TO_FLIP.items()}
_MAKE_KIND = (("NIKON", "NEF"), ("SONY", "ARW"), ("PENTAX", "PEF"), ("RICOH", "PEF"),
              ("SAMSUNG", "SRW"), ("CANON", "CR2"), ("OLYMPUS", "ORF"), ("OM DIGITAL", "ORF"),
              ("PANASONIC", "RW2"), ("LEICA", "RWL"), ("HASSELBLAD", "3FR"), ("EPSON", "ERF"),
              ("KODAK", "DCR"), ("MAMIYA", "MOS"), ("PHASE ONE", "IIQ"))


def rawpy_available() -> bool:
    try:
        import rawpy  # noqa: F401
    except Exception:  # noqa: BLE001 — not installed, or a broken binary wheel
        return False
    return True


# --------------------------------------------------------------------------------------------
# content sniffing


class _RawTiff(_Tiff):
    """A ``_Tiff`` over a memory map that also accepts the ORF/RW2 header variants."""

    def __init__(self, data) -> None:
        if len(data) < 8 or bytes(data[:2]) not in (b"II", b"MM"):
            raise ValueError("not a TIFF structure")
        self.data = data
        self.bo = "<" if bytes(data[:2]) == b"II" else ">"


def _map(p: Path):
    with open(p, "rb") as f:  # the map stays valid after the file is closed
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def sniff(p: Path) -> str | None:
    """The RAW kind ("DNG", "NEF", "CR3"...) of a file by its content, or None."""
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if head.startswith(b"FUJIFILMCCD-RAW"):
        return "RAF"
    if head[4:8] == b"ftyp" and head[8:12] == b"crx ":
        return "CR3"
    if head.startswith(b"FOVb"):
        return "X3F"
    if head.startswith(b"\x00MRM"):
        return "MRW"
    if head[:4] in (b"IIRO", b"IIRS", b"MMOR"):
        return "ORF"
    if head[:4] == b"IIU\x00":
        return "RW2"
    if head[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    if head[8:10] == b"CR":
        return "CR2"
    try:
        mm = _map(p)
    except (OSError, ValueError):
        return None
    try:
        return _tiff_raw_kind(_RawTiff(mm))
    except (ValueError, struct.error):
        return None
    finally:
        mm.close()


def _tiff_raw_kind(t) -> str | None:
    """Walk IFD0's chain and SubIFDs (bounded) looking for RAW markers."""
    make = ""
    cfa = dng = False
    todo = [t.u32(4)]
    seen: set[int] = set()
    while todo and len(seen) < 32:
        ifd = todo.pop()
        if ifd in seen or ifd < 8:
            continue
        seen.add(ifd)
        try:
            for e, tag, typ, count, voff, nbytes in t.entries(ifd):
                if tag == 50706:
                    dng = True
                elif tag == 262 and typ == 3 and t.u16(voff) in (32803, 34892):
                    cfa = True
                elif tag == 271 and typ == 2 and not make:
                    make = bytes(t.data[voff:voff + min(nbytes, 64)]).split(b"\x00")[0] \
                        .decode("latin-1").strip().upper()
                elif tag == 330 and typ in (4, 13) and count <= 16:
                    todo.extend(t.u32(voff + 4 * i) for i in range(count))
            nxt = t.u32(t.next_ifd_ptr(ifd))
            if nxt:
                todo.append(nxt)
        except (ValueError, struct.error):
            continue
    if dng:
        return "DNG"
    if cfa:
        for prefix, kind in _MAKE_KIND:
            if make.startswith(prefix):
                return kind
        return "RAW"
    return None


def libraw_opens(p: Path) -> str | None:
    """"RAW" when LibRaw recognises a file Pillow could not identify (None otherwise)."""
    if not rawpy_available():
        return None
    import rawpy

    try:
        with rawpy.imread(str(p)) as raw:
            s = raw.sizes
            return "RAW" if s.width > 0 and s.height > 0 else None
    except Exception:  # noqa: BLE001 — LibRaw does not know it either
        return None


# --------------------------------------------------------------------------------------------
# threads

_OMP_LOCK = threading.Lock()
_OMP_FN: list = []  # [omp_set_num_threads or None] once looked up
_OMP_NAMES = ("libgomp*", "libomp*", "libiomp*", "vcomp*")


def _omp_set_num_threads():
    """``omp_set_num_threads`` of the OpenMP runtime bundled with rawpy's LibRaw, or None
    (LibRaw built without OpenMP, or no runtime found next to rawpy)."""
    with _OMP_LOCK:
        if _OMP_FN:
            return _OMP_FN[0]
        fn = None
        try:
            import rawpy

            if (getattr(rawpy, "flags", None) or {}).get("OPENMP"):
                pkg = Path(rawpy.__file__).resolve().parent
                libs = [lib for folder in (pkg.parent / "rawpy.libs", pkg / ".dylibs", pkg)
                        for pattern in _OMP_NAMES for lib in sorted(glob.glob(str(folder / pattern)))]
                for lib in libs:
                    try:
                        fn = ctypes.CDLL(lib).omp_set_num_threads
                    except (OSError, AttributeError):
                        continue
                    fn.argtypes, fn.restype = [ctypes.c_int], None
                    break
                if fn is None:
                    log.info("LibRaw uses OpenMP but its runtime was not found next to rawpy: "
                             "RAW decoding may use every core")
        except Exception as e:  # noqa: BLE001 — no cap is possible: decoding still works
            log.debug("no OpenMP cap for LibRaw: %s", e)
            fn = None
        _OMP_FN.append(fn)
        return fn


def _cap_openmp(info: dict[str, Any] | None = None) -> None:
    """Cap LibRaw's OpenMP team at Mend's thread count, for the calling thread (libgomp keeps
    the count per thread): call it in the thread that decodes, right before ``postprocess``."""
    import rawpy

    from .devices import cpu_threads

    if not (getattr(rawpy, "flags", None) or {}).get("OPENMP"):
        note: int | str = 1  # LibRaw without OpenMP decodes on the calling thread only
    else:
        fn = _omp_set_num_threads()
        if fn is None:
            note = "not capped (LibRaw's OpenMP runtime not found)"
        else:
            note = cpu_threads()
            fn(note)
    if info is not None:
        info["libraw_threads"] = note


# --------------------------------------------------------------------------------------------
# decoding


def _open(p: Path, kind: str):
    if not rawpy_available():
        raise BadImage(p, INSTALL_HINT.format(kind=kind))
    import rawpy

    try:
        return rawpy.imread(str(p))
    except rawpy.LibRawFileUnsupportedError:
        raise BadImage(p, f"this {kind} file is not supported by LibRaw "
                          f"{'.'.join(map(str, rawpy.libraw_version))}") from None
    except (rawpy.LibRawIOError, EOFError):
        raise BadImage(p, "the file is truncated (incomplete download or copy?)") from None
    except rawpy.LibRawError as e:
        raise BadImage(p, f"the RAW file is damaged ({_libraw_msg(e)})") from None


def _libraw_msg(e: BaseException) -> str:
    msg = e.args[0] if e.args else str(e)
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    return f"{type(e).__name__}: {msg}"[:160]


def _sizes(raw) -> tuple[int, int, int]:
    """(height, width) of LibRaw's upright output and its flip, from the header alone."""
    s = raw.sizes
    h, w = int(s.height), int(s.width)
    if s.pixel_aspect and abs(float(s.pixel_aspect) - 1.0) > 1e-3:  # LibRaw stretches one axis
        if s.pixel_aspect < 1:
            h = round(h / float(s.pixel_aspect))
        else:
            w = round(w * float(s.pixel_aspect))
    flip = int(s.flip)
    return ((w, h) if flip & 4 else (h, w)) + (flip,)


def size(p: Path, kind: str, limit: int) -> tuple[int, int]:
    with _open(p, kind) as raw:
        h, w, _flip = _sizes(raw)
    _check_limit(p, raw_pixels=h * w, limit=limit)
    return h, w


def _check_limit(p: Path, *, raw_pixels: int, limit: int) -> None:
    if raw_pixels <= 0:
        raise BadImage(p, "the image has no pixels")
    if raw_pixels > limit:
        raise _too_large(p, raw_pixels, limit)


def decode(p: Path, kind: str, limit: int) -> dict[str, Any]:
    """Full decode: dict(pixels float32 (H,W,3) upright sRGB, exif, xmp (embedded or sidecar),
    iptc, info) for ``Photo``."""
    import rawpy

    info: dict[str, Any] = {"warnings": [], "raw_format": kind, "decoder": "rawpy"}
    with _open(p, kind) as raw:
        h, w, flip = _sizes(raw)
        s = raw.sizes
        _check_limit(p, raw_pixels=max(h * w, int(s.raw_height) * int(s.raw_width)), limit=limit)
        info["exif_orientation"] = FLIP_TO_EXIF.get(flip, 1)
        _cap_openmp(info)
        try:
            rgb = raw.postprocess(
                use_camera_wb=True, use_auto_wb=False, output_color=rawpy.ColorSpace.sRGB,
                output_bps=16, no_auto_bright=True, gamma=(2.4, 12.92),
                highlight_mode=rawpy.HighlightMode.Clip)
        except (rawpy.LibRawIOError, EOFError):
            raise BadImage(p, "the file is truncated (incomplete download or copy?)") from None
        except rawpy.LibRawTooBigError:
            raise BadImage(p, "the RAW image is too large for LibRaw to decode") from None
        except rawpy.LibRawUnsufficientMemoryError:
            raise BadImage(p, "not enough memory to decode this RAW file") from None
        except rawpy.LibRawError as e:
            raise BadImage(p, f"the RAW file is damaged ({_libraw_msg(e)})") from None
        wb = [float(x) for x in raw.camera_whitebalance]
        info["white_balance"] = "camera" if any(wb[:3]) else "daylight (none in the file)"
        info["libraw"] = ".".join(map(str, rawpy.libraw_version))
        thumb_exif = None
        exif = tiff_exif(p)
        xmp = source_xmp(p, kind, tiff_xmp(p), info)
        iptc = tiff_iptc(p)
        if exif is None:
            thumb_exif = _thumb_exif(raw)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint16:
        raise BadImage(p, f"LibRaw returned an unexpected image ({rgb.dtype}, {rgb.shape})")
    pixels = np.empty(rgb.shape, dtype=np.float32)
    np.multiply(rgb, np.float32(1.0 / 65535.0), out=pixels, casting="unsafe")
    exif = exif or thumb_exif
    if exif is None:
        info["exif_note"] = f"no EXIF could be read from this {kind} container"
    elif thumb_exif is not None:
        info["exif_source"] = "embedded JPEG preview"
    return {"pixels": pixels, "exif": exif, "xmp": xmp, "iptc": iptc, "info": info}


def _thumb_exif(raw) -> bytes | None:
    """EXIF of the RAW's embedded JPEG preview (RAF, CR3... keep their EXIF there)."""
    import rawpy

    try:
        th = raw.extract_thumb()
    except (rawpy.LibRawError, Exception):  # noqa: BLE001 — no/odd thumbnail: no EXIF
        return None
    if th.format != rawpy.ThumbFormat.JPEG:
        return None
    try:
        with _pil().open(io.BytesIO(th.data)) as im:
            ex = im.info.get("exif")
            return bytes(ex) if ex else None
    except Exception:  # noqa: BLE001
        return None


def tiff_exif(p: Path) -> bytes | None:
    """An EXIF blob (``Exif\\0\\0`` + TIFF) of a TIFF-based RAW (or of a floating-point TIFF,
    which Pillow cannot open): IFD0's descriptive tags, the Exif IFD (without the maker note)
    and the GPS IFD, copied tag by tag. None otherwise."""
    def collect(t: _RawTiff, mm) -> tuple[list, dict[int, list]]:
        ifd0: list = []
        subs: dict[int, list] = {0x8769: [], 0x8825: []}
        ptrs: dict[int, int] = {}
        wanted = set(_TIFF_DESCRIPTIVE) | {274}
        for e, tag, typ, count, voff, nbytes in t.entries(t.u32(4)):
            if tag in subs and typ in (4, 13):
                ptrs[tag] = t.u32(e + 8)
            elif tag in wanted and typ in _TYPE_SIZE and voff + nbytes <= len(mm) \
                    and nbytes <= 65536:
                ifd0.append((tag, typ, count, bytes(mm[voff:voff + nbytes])))
        for ptr, off in ptrs.items():
            skip = _TIFF_SKIP_EXIF if ptr == 0x8769 else set()
            try:
                for _e, tag, typ, count, voff, nbytes in t.entries(off):
                    if tag in skip or typ not in _TYPE_SIZE or voff + nbytes > len(mm) \
                            or nbytes > 65536 or tag in (0x8769, 0x8825, 0xA005):
                        continue
                    subs[ptr].append((tag, typ, count, bytes(mm[voff:voff + nbytes])))
            except ValueError:
                continue
        return ifd0, subs

    got = _with_tiff(p, lambda t, mm: (t.bo, *collect(t, mm)))
    if got is None:
        return None
    bo, ifd0, subs = got
    if not ifd0 and not subs[0x8769]:
        return None
    # lay out: header, IFD0, Exif IFD, GPS IFD (pointer values fixed after sizing)
    exif_e, gps_e = subs[0x8769], subs[0x8825]

    def ifd0_entries(exif_off: int, gps_off: int) -> list:
        out = list(ifd0)
        if exif_e:
            out.append((0x8769, 4, 1, struct.pack(bo + "I", exif_off)))
        if gps_e:
            out.append((0x8825, 4, 1, struct.pack(bo + "I", gps_off)))
        return out

    size0 = len(_ifd_blob(bo, ifd0_entries(0, 0), 8))
    exif_off = 8 + size0
    exif_blob = _ifd_blob(bo, exif_e, exif_off) if exif_e else b""
    gps_off = exif_off + len(exif_blob)
    gps_blob = _ifd_blob(bo, gps_e, gps_off) if gps_e else b""
    header = (b"II*\x00" if bo == "<" else b"MM\x00*") + struct.pack(bo + "I", 8)
    body = header + _ifd_blob(bo, ifd0_entries(exif_off, gps_off), 8) + exif_blob + gps_blob
    return b"Exif\x00\x00" + body  # a JPEG result's 64 KB limit is the JPEG encoder's


def _ifd0_bytes(p: Path, want: int, types: tuple[int, ...], cap: int) -> bytes | None:
    """The value of IFD0 tag ``want`` of a TIFF-based RAW as bytes (at most ``cap`` of them)."""
    def find(t: _RawTiff, mm) -> bytes | None:
        for _e, tag, typ, _count, voff, nbytes in t.entries(t.u32(4)):
            if tag == want and typ in types and 0 < nbytes <= cap and voff + nbytes <= len(mm):
                return bytes(mm[voff:voff + nbytes])
        return None

    return _with_tiff(p, find)


def tiff_xmp(p: Path) -> bytes | None:
    """The XMP packet (IFD0 tag 700) of a TIFF-based RAW (DNG writers put one there)."""
    return _ifd0_bytes(p, 700, (1, 7), 1 << 22)


def tiff_iptc(p: Path) -> bytes | None:
    """The IPTC-IIM bytes (IFD0 tag 33723, LONG or UNDEFINED) of a TIFF-based RAW."""
    return _ifd0_bytes(p, 33723, (1, 4, 7), IPTC_MAX)


# --------------------------------------------------------------------------------------------
# XMP sidecars (see the module's docstring)

SIDECAR_XMP_MAX = 4 << 20  # bytes
_XMPMETA = "{adobe:ns:meta/}xmpmeta"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}RDF"
_XML_DECL = re.compile(r"^\s*<\?xml\s[^>]*\?>\s*")
_XPACKET = re.compile(r"<\?xpacket\s[^>]*\?>\s*")


def source_xmp(p: Path, kind: str, embedded: bytes | None, info: dict[str, Any]) -> bytes | None:
    """The XMP a RAW's result carries: its sidecar's or the embedded one (module docstring)."""
    if kind == "DNG" and embedded:
        return embedded
    side = find_sidecar(p)
    if side is None:
        return embedded
    packet = read_sidecar(side, info["warnings"])
    if packet is None:
        return embedded
    info["xmp_source"] = f"sidecar {side.name}"
    return packet


def find_sidecar(p: Path) -> Path | None:
    """``IMG_0001.xmp`` or ``IMG_0001.CR2.xmp`` (either case) next to ``p``; the newer one when
    both exist."""
    found: dict[tuple[int, int], tuple[float, Path]] = {}
    try:
        own = os.stat(p)
        own_id = (own.st_dev, own.st_ino)
    except OSError:
        own_id = None
    for name in (p.stem + ".xmp", p.stem + ".XMP", p.name + ".xmp", p.name + ".XMP"):
        c = p.with_name(name)
        try:
            st = os.stat(c)
        except (OSError, ValueError):
            continue
        key = (st.st_dev, st.st_ino)  # one file under two spellings (case-insensitive disks)
        if key != own_id and key not in found:
            found[key] = (st.st_mtime, c)
    return max(found.values(), key=lambda x: x[0])[1] if found else None


def read_sidecar(path: Path, warnings: list[str]) -> bytes | None:
    """A sidecar's XMP packet, ready to carry; None (and a warning) when it is refused."""
    try:
        packet = _sidecar_packet(_read_capped(path, SIDECAR_XMP_MAX))
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        msg = f"ignored the XMP sidecar {path.name}: {reason}"
        warnings.append(msg)
        log.warning("%s: %s", path, msg)
        return None
    return packet


def _read_capped(path: Path, cap: int) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes (a FIFO or device is not opened for
    reading: O_NONBLOCK, then fstat)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        too_big = ValueError(f"larger than {cap >> 20} MB")
        if st.st_size > cap:
            raise too_big
        chunks, n = [], 0
        while n <= cap:
            b = os.read(fd, min(1 << 20, cap + 1 - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
        if n > cap:  # grew since fstat
            raise too_big
        return b"".join(chunks)
    finally:
        os.close(fd)


def _sidecar_packet(data: bytes) -> bytes:
    """``data`` checked to be XMP, as a packet: no XML declaration, an ``x:xmpmeta`` root in a
    fresh ``<?xpacket?>`` wrapper, develop settings left out (``slim_xmp``). ValueError says why
    not."""
    try:
        text = data.decode("utf-8").lstrip("\ufeff").rstrip("\x00 \t\r\n")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ValueError("it declares a DTD or entities (XMP has none)")
    root = _xml_root(text)
    if root is None:
        raise ValueError("not well-formed XML")
    if not (root.tag == _RDF or (root.tag == _XMPMETA and root.find(_RDF) is not None)):
        raise ValueError("not XMP (no x:xmpmeta/rdf:RDF)")
    text = _XPACKET.sub("", _XML_DECL.sub("", text)).strip()
    if root.tag == _RDF:
        text = f'<x:xmpmeta xmlns:x="adobe:ns:meta/">{text}</x:xmpmeta>'
    out = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n' + text
           + '\n<?xpacket end="w"?>').encode("utf-8")
    slim = slim_xmp(out)
    return slim if _xml_root(slim.decode("utf-8")) is not None else out


def _with_tiff(p: Path, fn):
    """fn(parsed TIFF, its memory map) for a TIFF-based RAW; None when the file cannot be
    mapped or its structure is damaged. The map is always closed."""
    try:
        mm = _map(p)
    except (OSError, ValueError):
        return None
    try:
        return fn(_RawTiff(mm), mm)
    except (ValueError, struct.error):
        return None
    finally:
        mm.close()


def preview(p: Path, kind: str, max_side: int, limit: int) -> np.ndarray:
    """uint8 sRGB upright preview: the embedded JPEG/bitmap thumbnail when LibRaw finds one,
    else a half-size decode (no demosaicing) of the RAW itself.

    The JPEG is in the colour space the camera was set to, the full decode in sRGB (so
    ``imageio.source_profile`` is None for a RAW): a JPEG in another RGB space is converted to
    sRGB here (``_preview_icc``)."""
    import rawpy

    Image = _pil()
    icc = None
    with _open(p, kind) as raw:
        h, w, flip = _sizes(raw)
        s = raw.sizes
        _check_limit(p, raw_pixels=max(h * w, int(s.raw_height) * int(s.raw_width)), limit=limit)
        small = None
        try:
            th = raw.extract_thumb()
        except Exception:  # noqa: BLE001 — no thumbnail (or an unsupported kind): decode
            th = None
        if th is not None and th.format == rawpy.ThumbFormat.JPEG:
            try:
                with Image.open(io.BytesIO(th.data)) as im:
                    im.draft("RGB", (max_side, max_side))
                    icc = _preview_icc(p, im)
                    im = im.convert("RGB")
                    small = np.asarray(im)
            except Exception:  # noqa: BLE001 — a broken preview: decode the RAW instead
                small, icc = None, None
        elif th is not None and th.format == rawpy.ThumbFormat.BITMAP:
            small = np.asarray(th.data)
            if small.ndim != 3 or small.shape[2] != 3:
                small = None
            elif small.dtype != np.uint8:
                small = (small.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
        if small is not None:  # stored as the sensor sees it: LibRaw's flip makes it upright
            small = _orient(small, FLIP_TO_EXIF.get(flip, 1))
        else:
            _cap_openmp()
            try:
                rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8,
                                      no_auto_bright=True, gamma=(2.4, 12.92),
                                      output_color=rawpy.ColorSpace.sRGB)
            except (rawpy.LibRawIOError, EOFError):
                raise BadImage(p, "the file is truncated (incomplete download or copy?)") \
                    from None
            except rawpy.LibRawError as e:
                raise BadImage(p, f"the RAW file is damaged ({_libraw_msg(e)})") from None
            small = rgb
    im = Image.fromarray(np.ascontiguousarray(small), "RGB")
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.array(rgb_to_srgb(im, icc))


def _preview_icc(p: Path, im) -> bytes | None:
    """The RGB profile of a RAW's embedded JPEG preview: what ``imageio._source_icc`` decides
    from the JPEG (its ICC profile, else its EXIF's Adobe RGB colour space), else Adobe RGB when
    the RAW's own Exif IFD says so (a TIFF-based RAW; the preview's EXIF is often a stub without
    the Interop IFD). Every APP1 EXIF of the JPEG is looked at: LibRaw puts an EXIF of its own
    first in a preview that does not start with one (a JFIF preview). Maker-note colour-space
    tags are not read. None: sRGB."""
    icc = _source_icc(im, _raw_exif(im), {"warnings": []})
    if icc is not None:
        return icc
    exifs = [d for m, d in getattr(im, "applist", ()) if m == "APP1" and d[:6] == b"Exif\0\0"]
    if any(_exif_colour_space(d) == "Adobe RGB" for d in exifs[1:]) or \
            _with_tiff(p, lambda t, _mm: _tiff_colour_space(t)) == "Adobe RGB":
        return _adobe_rgb_icc()
    return None
