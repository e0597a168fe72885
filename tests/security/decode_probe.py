"""Decode files with the server's default limits in a fresh process and print one JSON line per file.

Run by the decoder suite as ``python -m tests.security.decode_probe FILE...``. A separate process, so a crash
in a decoder fails the test instead of killing pytest, and its peak RSS measures C allocations that
tracemalloc cannot see. Each line: name, outcome ("invalid", "decoded" or the unexpected exception's type),
message, decoded size, seconds, and the growth of the process's peak RSS over a warmed-up baseline (KiB).
"""

from __future__ import annotations

import io
import json
import resource
import sys
import time
from pathlib import Path

from PIL import Image

from qwen_image_server.errors import InvalidImage
from qwen_image_server.media.images import ImageLimits, decode_image
from qwen_image_server.settings import Settings

DECODER_SIDES = (1, 4096)


def default_limits() -> ImageLimits:
    """The default byte and pixel caps. The corpus exercises the decoder under them, so its sides stay wide
    (``DECODER_SIDES``): the hosted side range (384-3072 by default) is a policy on top, tested at the API."""
    fields = Settings.model_fields
    return ImageLimits(max_bytes=fields["max_image_bytes"].default, max_pixels=fields["max_image_pixels"].default,
                       min_side=DECODER_SIDES[0], max_side=DECODER_SIDES[1])


def probe(path: Path, limits: ImageLimits, baseline_kib: int) -> dict[str, object]:
    data = path.read_bytes()
    started = time.perf_counter()
    size: tuple[int, int] | None = None
    try:
        size = decode_image(data, limits).size
        outcome, message = "decoded", ""
    except InvalidImage as exc:
        outcome, message = "invalid", exc.message
    except BaseException as exc:  # reported to the test, which fails on it
        outcome, message = type(exc).__name__, str(exc)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"name": path.name, "outcome": outcome, "message": message, "size": size, "seconds": seconds,
            "rss_growth_kib": peak - baseline_kib}


def main(paths: list[str]) -> None:
    limits = default_limits()
    warm_up = Image.new("RGB", (64, 64))
    for image_format in ("PNG", "GIF", "TIFF", "JPEG"):  # load the plugins before the baseline is taken
        buffer = io.BytesIO()
        warm_up.save(buffer, format=image_format)
        decode_image(buffer.getvalue(), limits)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path in paths:
        print(json.dumps(probe(Path(path), limits, baseline)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
