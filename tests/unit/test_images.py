"""media/images.py on real images made here, and on Pillow's own corpus of hostile files."""

from __future__ import annotations

import base64
import struct
import time
import warnings
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from qwen_image_server.errors import InvalidImage
from qwen_image_server.media.images import (
    ImageLimits,
    add_watermark,
    decode_image,
    decode_mask,
    encode_image,
    parse_data_uri,
)
from qwen_image_server.settings import Settings

LIMITS = ImageLimits(max_bytes=1024 * 1024, max_pixels=1000 * 1000, min_side=8, max_side=2000)
RED, BLUE = (220, 30, 30), (30, 30, 220)

_ROOT = Path(__file__).resolve().parents[2]
_HOSTILE = next(
    (
        path
        for path in (_ROOT / "shared/testdata/pillow-hostile", _ROOT.parent / "shared/testdata/pillow-hostile")
        if path.is_dir()
    ),
    None,
)
HOSTILE_FILES = sorted(p for p in _HOSTILE.iterdir() if p.name not in {"README.md", "LICENSE"}) if _HOSTILE else []


def encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def solid(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = RED) -> Image.Image:
    return Image.new("RGB", size, colour)


def noise(size: tuple[int, int]) -> Image.Image:
    """Incompressible pixels, so that a cut file really lacks image data."""
    return Image.effect_noise(size, 100).convert("RGB")


def psd_bytes(width: int = 16, height: int = 16) -> bytes:
    """A minimal valid 8-bit RGB Photoshop file (Pillow cannot write PSD)."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    empty_sections = struct.pack(">III", 0, 0, 0)
    return header + empty_sections + struct.pack(">H", 0) + bytes(3 * width * height)


def assert_close(actual: object, expected: tuple[int, int, int], tolerance: int = 12) -> None:
    assert isinstance(actual, tuple)
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True)), actual


def test_limits_come_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, max_image_bytes=123, max_image_pixels=456, min_image_side=7, max_image_side=89
    )
    assert ImageLimits.from_settings(settings) == ImageLimits(123, 456, 7, 89)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_allowed_formats_decode_to_plain_rgb(image_format: str) -> None:
    image = decode_image(encoded(solid(), image_format), LIMITS)
    assert (image.mode, image.size) == ("RGB", (64, 48))
    assert_close(image.getpixel((10, 10)), RED)
    assert image.info == {}


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [solid(colour=RED), solid(colour=BLUE), solid(colour=BLUE)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert_close(decode_image(data, LIMITS).getpixel((5, 5)), RED)


def test_exif_orientation_is_applied_and_the_exif_dropped() -> None:
    image = solid((80, 40))
    image.paste(BLUE, (0, 0, 10, 40))  # a blue stripe on the left edge
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    exif[0x010E] = "private description"
    decoded = decode_image(encoded(image, "JPEG", exif=exif.tobytes(), quality=95), LIMITS)
    assert decoded.size == (40, 80)
    assert_close(decoded.getpixel((20, 5)), BLUE)  # the left edge is now the top edge
    assert decoded.info == {}
    assert dict(decoded.getexif()) == {}


@pytest.mark.parametrize(
    ("mode", "image_format"),
    [("RGBA", "PNG"), ("LA", "PNG"), ("L", "PNG"), ("I;16", "PNG"), ("1", "BMP"), ("CMYK", "JPEG"), ("P", "GIF")],
)
def test_other_modes_become_rgb(mode: str, image_format: str) -> None:
    data = encoded(Image.new(mode, (64, 48)), image_format)
    assert decode_image(data, LIMITS).mode == "RGB"


def test_palette_transparency_is_dropped_without_a_warning() -> None:
    image = Image.new("P", (64, 48))
    image.putpalette([*RED, *BLUE])
    image.paste(1, (0, 0, 32, 48))
    data = encoded(image, "PNG", transparency=bytes([0, 128]))  # one alpha per palette entry
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(data, LIMITS).mode == "RGB"


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("eps", encoded(solid(), "EPS")),
        ("ico", encoded(solid(), "ICO")),
        ("pcx", encoded(solid(), "PCX")),
        ("tga", encoded(solid(), "TGA")),
        ("psd", psd_bytes()),
        ("text", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
        ("empty", b""),
    ],
)
def test_formats_outside_the_allowlist_are_refused(name: str, data: bytes) -> None:
    with pytest.raises(InvalidImage, match="Unsupported image format"):
        decode_image(data, LIMITS)


def test_psd_sample_is_a_real_psd() -> None:
    with Image.open(BytesIO(psd_bytes())) as image:
        assert image.format == "PSD"


def test_truncated_png_is_refused() -> None:
    data = encoded(noise((128, 128)), "PNG")
    with pytest.raises(InvalidImage, match="could not be decoded"):
        decode_image(data[: len(data) // 2], LIMITS)


def test_byte_cap_comes_before_decoding() -> None:
    data = encoded(noise((64, 64)), "BMP")
    with pytest.raises(InvalidImage, match="size limit"):
        decode_image(data, ImageLimits(len(data) - 1, LIMITS.max_pixels, LIMITS.min_side, LIMITS.max_side))


@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow warns at 89.5 MP and raises at twice that
def test_huge_header_is_refused_without_decoding(side: int) -> None:
    data = encoded(Image.new("1", (side, side)), "PNG")  # tens of kilobytes on the wire
    assert len(data) < LIMITS.max_bytes
    started = time.monotonic()
    with pytest.raises(InvalidImage, match="pixels"):
        decode_image(data, ImageLimits(LIMITS.max_bytes, LIMITS.max_pixels, 1, side))
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    ("size", "message"),
    [((1200, 1000), "pixels; the limit"), ((2400, 10), "each be within"), ((20, 4), "each be within")],
)
def test_our_own_size_limits_are_checked_from_the_header(size: tuple[int, int], message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        decode_image(encoded(Image.new("1", size), "PNG"), LIMITS)


@pytest.mark.parametrize("path", HOSTILE_FILES, ids=lambda path: path.name)
def test_hostile_corpus_is_refused_or_decoded_within_limits(path: Path) -> None:
    started = time.monotonic()
    try:
        image = decode_image(path.read_bytes(), LIMITS)
    except InvalidImage:
        pass
    else:
        assert image.mode == "RGB"
        assert image.width * image.height <= LIMITS.max_pixels
    assert time.monotonic() - started < 5


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_data_uri_round_trip_trusts_the_bytes_not_the_declared_type() -> None:
    png = encoded(solid(), "PNG")
    data = parse_data_uri(data_uri(png, mime="image/jpeg"), LIMITS)
    assert data == png
    assert decode_image(data, LIMITS).size == (64, 48)


@pytest.mark.parametrize("size", [10, 11, 12])
def test_data_uri_at_the_byte_limit_is_accepted_and_one_more_byte_is_not(size: int) -> None:
    limits = ImageLimits(size, LIMITS.max_pixels, LIMITS.min_side, LIMITS.max_side)
    assert parse_data_uri(data_uri(bytes(size)), limits) == bytes(size)
    with pytest.raises(InvalidImage, match=f"Exceeded limit on max bytes per data-uri item : {size}$"):
        parse_data_uri(data_uri(bytes(size + 1)), limits)


def test_data_uri_length_is_capped_before_decoding() -> None:
    uri = "data:image/png;base64," + "!" * (4 * LIMITS.max_bytes)  # not even base64: never decoded
    with pytest.raises(InvalidImage, match="Exceeded limit on max bytes per data-uri item : 1048576"):
        parse_data_uri(uri, LIMITS)


@pytest.mark.parametrize(
    "uri",
    [
        "data:image/png;base64,iVBORw0KGgo=!",
        "data:image/png;base64,iVBO Rw0K",
        "data:image/png;base64,iVBORw0KGgo\n",
        "data:image/png;base64,iVBORw0KGg",
    ],
)
def test_data_uri_must_hold_strict_base64(uri: str) -> None:
    with pytest.raises(InvalidImage, match="valid base64"):
        parse_data_uri(uri, LIMITS)


@pytest.mark.parametrize(
    "uri",
    [
        "iVBORw0KGgo=",
        "data:image/png,iVBORw0KGgo=",
        "data:;base64,iVBORw0KGgo=",
        "data:image/png;charset=utf-8;base64,iVBORw0KGgo=",
        "https://example.com/image.png",
        " data:image/png;base64,iVBORw0KGgo=",
    ],
)
def test_data_uri_must_have_the_strict_form(uri: str) -> None:
    with pytest.raises(InvalidImage, match="must have the form"):
        parse_data_uri(uri, LIMITS)


def test_encode_image_carries_pixels_only() -> None:
    image = noise((32, 24))
    exif = image.getexif()
    exif[0x010E] = "private description"
    image.info.update(exif=exif.tobytes(), icc_profile=b"not really an icc profile", comment=b"secret")
    data = encode_image(image)
    with Image.open(BytesIO(data)) as reopened:
        assert reopened.format == "PNG"
        assert reopened.info == {}
        assert dict(reopened.getexif()) == {}
        assert ImageChops.difference(reopened.convert("RGB"), image).getbbox() is None
    for chunk in (b"eXIf", b"iCCP", b"tEXt", b"zTXt", b"iTXt"):
        assert chunk not in data


@pytest.mark.parametrize("output_format, pillow_format", [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_encode_image_in_lossy_formats_follows_the_quality(output_format: str, pillow_format: str) -> None:
    image = noise((64, 48))
    small, large = encode_image(image, output_format, 10), encode_image(image, output_format, 95)
    assert len(small) < len(large)
    with Image.open(BytesIO(small)) as reopened:
        assert (reopened.format, reopened.size) == (pillow_format, (64, 48))


def test_mask_with_alpha_edits_the_fully_transparent_pixels() -> None:
    mask = Image.new("RGBA", (16, 8), (0, 0, 0, 255))
    mask.paste((255, 255, 255, 0), (0, 0, 4, 8))
    mask.paste((255, 255, 255, 1), (4, 0, 8, 8))  # almost transparent: kept, as OpenAI reads masks
    decoded = decode_mask(encoded(mask, "PNG"), LIMITS)
    assert (decoded.mode, decoded.size) == ("L", (16, 8))
    assert decoded.getbbox() == (0, 0, 4, 8)
    assert set(decoded.getdata()) == {0, 255}


def test_mask_without_alpha_edits_the_light_pixels() -> None:
    mask = Image.new("RGB", (16, 8), (0, 0, 0))
    mask.paste((200, 200, 200), (8, 0, 16, 8))
    decoded = decode_mask(encoded(mask, "JPEG", quality=95), LIMITS)
    assert decoded.getbbox() == (8, 0, 16, 8)


def test_mask_is_checked_like_an_image() -> None:
    with pytest.raises(InvalidImage):
        decode_mask(b"not an image", LIMITS)


@pytest.mark.parametrize("side", [256, 1024, 2048])
def test_watermark_marks_the_bottom_right_at_a_relative_size(side: int) -> None:
    image = Image.new("RGB", (side, side), (128, 128, 128))
    marked = add_watermark(image)
    assert (marked.mode, marked.size) == ("RGB", image.size)
    changed = ImageChops.difference(marked, image).getbbox()
    assert changed is not None
    left, top, right, bottom = changed
    assert left > side // 2 and top > side // 2  # the mark stays in the bottom-right quarter
    assert right > side * 0.9 and bottom > side * 0.9
    assert 0.1 < (right - left) / side < 0.4  # legible at 256 px, modest at 2048 px
