"""Decoding untrusted input images and encoding our outputs, with Pillow and nothing heavier.

Input bytes come from strangers, so every step is bounded (security.md, "Decoding images"): a byte
cap, a format allowlist, the header's size checked before any pixel is decoded, truncated data
refused, and every decoder failure turned into ``InvalidImage``. Outputs (PNG, JPEG or WebP) carry no
metadata, so nothing from an input (EXIF, GPS, ICC, text chunks) leaks into a result.
"""

from __future__ import annotations

import base64
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from qwen_image_server.errors import InvalidImage

if TYPE_CHECKING:
    from qwen_image_server.settings import Settings

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")

# The output formats we encode, by their API names, and Pillow's name for each.
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}

_DATA_URI_HEADER = re.compile(r"data:[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+;base64", re.IGNORECASE)


@dataclass(frozen=True)
class ImageLimits:
    """Bounds an input image must meet before it is decoded."""

    max_bytes: int
    max_pixels: int
    min_side: int
    max_side: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            min_side=settings.min_image_side,
            max_side=settings.max_image_side,
        )


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Decode the first frame of an allowed image into a metadata-free RGB image, upright per EXIF.

    Raises ``InvalidImage`` for anything too large, not allowed, truncated or undecodable.
    """
    with _opened(data, limits) as image:
        return _pixels_only(_to_rgb(image))


def decode_mask(data: bytes, limits: ImageLimits) -> Image.Image:
    """An edit mask, checked as ``decode_image`` checks images, as a black-and-white image: white where to edit.

    OpenAI's convention first: with an alpha channel, the fully transparent pixels are the ones to edit. Without
    one, the mask is read in grayscale and light pixels (128 and up) are edited, as diffusers reads masks.
    """
    with _opened(data, limits) as image:
        if image.has_transparency_data:
            return image.convert("RGBA").getchannel("A").point(lambda alpha: 255 if alpha == 0 else 0)
        return image.convert("L").point(lambda level: 255 if level >= 128 else 0)


@contextmanager
def _opened(data: bytes, limits: ImageLimits) -> Iterator[Image.Image]:
    """The first frame of an allowed image, decoded within limits and upright per EXIF."""
    if len(data) > limits.max_bytes:
        raise InvalidImage(f"Image exceeds the size limit of {limits.max_bytes} bytes.")
    with _decoder_errors():
        opened = Image.open(BytesIO(data), formats=ALLOWED_FORMATS)
    with opened:
        _check_dimensions(opened.size, limits)
        with _decoder_errors():
            opened.load()
            yield ImageOps.exif_transpose(opened)


def parse_data_uri(uri: str, limits: ImageLimits) -> bytes:
    """Return the bytes of a strict ``data:<type>/<subtype>;base64,<data>`` URI.

    The length is capped before decoding, as base64 text is 4/3 the size of its bytes. The declared
    MIME type is not trusted: ``decode_image`` decides the format from the bytes.
    """
    header, comma, payload = uri.partition(",")
    if not comma or not _DATA_URI_HEADER.fullmatch(header):
        raise InvalidImage("Image data URI must have the form data:<mime type>;base64,<data>.")
    too_long = InvalidImage(f"Exceeded limit on max bytes per data-uri item : {limits.max_bytes}")
    if len(payload) > 4 * ((limits.max_bytes + 2) // 3):
        raise too_long
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError as exc:  # binascii.Error, or a non-ASCII character in the text
        raise InvalidImage("Image data URI does not hold valid base64 data.") from exc
    if len(data) > limits.max_bytes:
        raise too_long
    return data


def encode_image(image: Image.Image, output_format: str = "png", quality: int | None = None) -> bytes:
    """Encode as RGB from the pixels alone, so no EXIF, ICC profile or text chunk is carried.

    ``output_format`` is a key of ``OUTPUT_FORMATS``; ``quality`` (0-100) applies to JPEG and WebP only.
    """
    buffer = BytesIO()
    options = {"quality": quality} if quality is not None and output_format != "png" else {}
    _pixels_only(_to_rgb(image)).save(buffer, format=OUTPUT_FORMATS[output_format], **options)
    return buffer.getvalue()


def add_watermark(image: Image.Image, text: str = "Qwen-Image") -> Image.Image:
    """Return an RGB copy with a semi-transparent ``text`` mark at the bottom right, as the hosted API.

    The font scales with the shorter side so the mark stays legible, and modest, from 256 to 2048 px.
    """
    base = image.convert("RGBA")
    size = max(12, round(min(base.size) * 0.035))
    margin = size // 2
    stroke = max(1, size // 16)
    font = ImageFont.load_default(size=size)
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    *_, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
    origin = (base.width - margin - right, base.height - margin - bottom)
    draw.text(origin, text, font=font, fill=(255, 255, 255, 170), stroke_width=stroke, stroke_fill=(0, 0, 0, 110))
    return Image.alpha_composite(base, overlay).convert("RGB")


@contextmanager
def _decoder_errors() -> Iterator[None]:
    """Turn whatever Pillow raises on hostile bytes into ``InvalidImage``.

    Pillow's decoders fail with many exception types (OSError, SyntaxError, ValueError, struct.error,
    EOFError, zlib errors, ...), so everything raised inside is mapped, never re-raised. Its
    decompression-bomb warning is made an error for this block only. ``catch_warnings`` is
    process-wide, so decodes racing in threads may leave that one filter in place or miss it; both are
    harmless, as ``_check_dimensions`` refuses such sizes anyway.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage("Image dimensions exceed the allowed number of pixels.") from exc
    except UnidentifiedImageError as exc:
        allowed = ", ".join(ALLOWED_FORMATS)
        raise InvalidImage(f"Unsupported image format; accepted formats are {allowed}.") from exc
    except Exception as exc:
        raise InvalidImage("Invalid image format or corrupted file: the image could not be decoded.") from exc


def _check_dimensions(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if not (limits.min_side <= width <= limits.max_side and limits.min_side <= height <= limits.max_side):
        raise InvalidImage(
            f"The image resolution is invalid: it is {width}x{height} pixels, and its width and height must "
            f"each be within [{limits.min_side}, {limits.max_side}]."
        )
    if width * height > limits.max_pixels:
        raise InvalidImage(f"Image has {width * height} pixels; the limit is {limits.max_pixels}.")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Drop alpha; going through RGBA keeps palette transparency from warning on the way."""
    if image.has_transparency_data:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _pixels_only(image: Image.Image) -> Image.Image:
    """A fresh image from the pixel data alone: ``convert`` and ``copy`` keep ``info`` (EXIF, ICC)."""
    return Image.frombytes(image.mode, image.size, image.tobytes())
