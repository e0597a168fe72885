"""Fuzz ``parse_data_uri`` then ``decode_image``, as the API runs them on a JSON string: only ``InvalidImage`` may
come out.

    python fuzz/fuzz_data_uri.py -max_total_time=600 -max_len=65536 /tmp/fuzz-data-uri fuzz/seeds/data_uri

Inputs are read as UTF-8 with ``surrogateescape``, so every str a JSON body can carry (non-ASCII, lone
surrogates) is reachable. The seeds are data URIs of valid images, and malformed ones.
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
    from qwen_image_server.media.images import ImageLimits, decode_image, parse_data_uri

    Image.init()  # the format plugins load lazily: import them here, so they are instrumented too

LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=4_000_000, min_side=1, max_side=4096)


def test_one_input(data: bytes) -> None:
    uri = data.decode("utf-8", "surrogateescape")
    try:
        decode_image(parse_data_uri(uri, LIMITS), LIMITS)
    except InvalidImage:
        return


def main() -> None:
    warnings.simplefilter("ignore", UserWarning)  # Pillow's "corrupt EXIF" chatter; the bomb warning stays an error
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
