"""Hostile and unusual inputs for the decoder suite and the fuzz seeds: Pillow's corpus, bombs built here, and
every format Pillow can write that the allowlist refuses."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from qwen_image_server.media.images import ALLOWED_FORMATS

CORPUS = Path(__file__).parent / "data" / "pillow-hostile"

# Corpus files whose bytes are a format outside the allowlist (by Pillow's own plugin for that extension).
REFUSED_EXTENSIONS = {".sgi", ".j2k", ".fli", ".dds", ".blp", ".psd", ".eps", ".icns", ".ico", ".bin"}


def corpus_files() -> list[Path]:
    return sorted(path for path in CORPUS.iterdir() if path.name not in {"LICENSE", "README.md"})


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, idat: bytes, bit_depth: int = 8, colour_type: int = 0,
         extra: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def _zeros_compressed(size: int) -> bytes:
    compressor = zlib.compressobj(9)
    block = bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(size >> 20)]
    return b"".join([*parts, compressor.compress(bytes(size & ((1 << 20) - 1))), compressor.flush()])


def png_header_100k() -> bytes:
    """A 100,000 x 100,000 PNG in a few dozen bytes: refused from the header."""
    return _png(100_000, 100_000, zlib.compress(b"\x00" * 16), colour_type=2)


def png_zlib_bomb_over_limit() -> bytes:
    """30,000 x 30,000 one-bit pixels (2.7 GB once decoded to RGB) in about 100 KB of zlib."""
    return _png(30_000, 30_000, _zeros_compressed(3_751 * 30_000), bit_depth=1)


def png_zlib_bomb_at_limit() -> bytes:
    """4096 x 4096, the largest allowed: tens of KB that decode to the most the limits allow."""
    return _png(4096, 4096, _zeros_compressed(4097 * 4096))


def png_idat_overflow() -> bytes:
    """A 64 x 64 image whose IDAT stream inflates to 256 MB: the decoder must stop when the image is full."""
    return _png(64, 64, _zeros_compressed(256 << 20))


def png_ztxt_bomb() -> bytes:
    """A 64 x 64 image with a compressed text chunk that inflates to 64 MB."""
    ztxt = _chunk(b"zTXt", b"Comment\x00\x00" + _zeros_compressed(64 << 20))
    return _png(64, 64, zlib.compress(bytes(65 * 64)), extra=ztxt)


def gif_header_huge() -> bytes:
    """A GIF whose logical screen is 65,535 x 65,535 around one 1 x 1 frame."""
    screen = struct.pack("<HHBBB", 65_535, 65_535, 0x80, 0, 0) + bytes(6)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + frame + b"\x3b"


def gif_lzw_at_limit() -> bytes:
    """4000 x 4000 of one colour: LZW packs 16 MP into a small file."""
    return _save(Image.new("P", (4000, 4000), 1), "GIF")


def gif_many_frames(frames: int = 1000) -> bytes:
    """An animation of ``frames`` alternating frames; only the first (red) is decoded."""
    red, blue = Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    return _save(red, "GIF", save_all=True, append_images=[blue, red] * ((frames - 1) // 2), duration=10, loop=0)


def _tiff(width: int, height: int, strip_bytes: int, data: bytes) -> bytes:
    """A little-endian 8-bit grey TIFF with one strip of ``strip_bytes`` declared at offset 8."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 8), (277, 3, 1), (278, 4, height), (279, 4, strip_bytes)]
    directory = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        directory += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + directory + b"\x00\x00\x00\x00"


def tiff_huge_strip() -> bytes:
    """4000 x 4000 whose single strip claims 2 GiB, with 16 bytes present."""
    return _tiff(4000, 4000, 0x7FFF_FFFF, bytes(16))


def tiff_header_huge() -> bytes:
    return _tiff(100_000, 100_000, 16, bytes(16))


def mpo_two_frames() -> bytes:
    """A two-picture MPO (a JPEG with an MP index, as phone cameras write): decoded as its first JPEG."""
    first, second = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    return _save(first, "MPO", save_all=True, append_images=[second])


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><script>alert(1)</script></svg>'
HTML = b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>"

GENERATED: dict[str, Callable[[], bytes]] = {
    "png_header_100k": png_header_100k, "png_zlib_bomb_over_limit": png_zlib_bomb_over_limit,
    "png_idat_overflow": png_idat_overflow, "png_ztxt_bomb": png_ztxt_bomb, "gif_header_huge": gif_header_huge,
    "gif_many_frames": gif_many_frames, "tiff_huge_strip": tiff_huge_strip, "tiff_header_huge": tiff_header_huge,
    "mpo_two_frames": mpo_two_frames, "gif_lzw_at_limit": gif_lzw_at_limit,
    "png_zlib_bomb_at_limit": png_zlib_bomb_at_limit,
}


def _save(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def refused_formats() -> dict[str, bytes]:
    """A 64 x 64 image in every format Pillow can write that is not allowed (by the saving plugin's name),
    plus SVG and HTML."""
    Image.init()
    source = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    modes = {"XBM": "1", "MSP": "1", "PALM": "P", "BLP": "P"}
    written = {"SVG": SVG, "HTML": HTML}
    for name in sorted(set(Image.SAVE) - {*ALLOWED_FORMATS, "MPO", "BUFR", "GRIB", "HDF5", "WMF"}):
        try:
            written[name] = _save(source.convert(modes.get(name, "RGB")), name)
        except (OSError, ValueError, KeyError):
            continue  # no encoder in this build
    return written


def valid_images() -> dict[str, bytes]:
    """Small valid images in each allowed format, as fuzz seeds and controls."""
    source = Image.linear_gradient("L").resize((24, 16)).convert("RGB")
    return {name: _save(source, name) for name in ALLOWED_FORMATS}
