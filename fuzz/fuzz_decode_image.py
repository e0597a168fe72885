"""Fuzz ``decode_image`` (and ``decode_mask`` on what decodes): whatever the bytes, an image within the limits
or ``InvalidImage``.

    python fuzz/fuzz_decode_image.py -max_total_time=600 -max_len=65536 /tmp/fuzz-decode fuzz/seeds/decode \
        tests/security/data/pillow-hostile

The first directory receives new inputs; the others seed it (valid images in each allowed format, and
Pillow's hostile corpus). Any other exception, a crash or a hang is a finding, saved as ``crash-*``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not an installed one

with atheris.instrument_imports():
    from PIL import Image

    from qwen_image_server.errors import InvalidImage
    from qwen_image_server.media.images import ImageLimits, decode_image, decode_mask

    Image.init()  # the format plugins load lazily: import them here, so they are instrumented too

LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=4_000_000, min_side=1, max_side=4096)


def test_one_input(data: bytes) -> None:
    try:
        image = decode_image(data, LIMITS)
        mask = decode_mask(data, LIMITS)
    except InvalidImage:
        return
    if image.mode != "RGB" or image.width * image.height > LIMITS.max_pixels:
        raise AssertionError(f"decoded outside the limits: {image.mode} {image.size}")
    if mask.mode != "L" or mask.size != image.size:
        raise AssertionError(f"mask {mask.mode} {mask.size} for an image of {image.size}")


def main() -> None:
    warnings.simplefilter("ignore", UserWarning)  # Pillow's "corrupt EXIF" chatter; the bomb warning stays an error
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
