"""Pillow's hostile corpus, bombs built here and every refused format, through ``decode_image`` and the real API.

Every input either raises ``InvalidImage`` or decodes to an image within the limits, in bounded time and
memory; none raises anything else. The decodes run in one fresh process (``decode_probe``), so a decoder crash
fails the test rather than pytest, and peak RSS counts Pillow's C allocations.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from qwen_image_server.media.images import ALLOWED_FORMATS, ImageLimits, decode_image
from tests.security import hostile_images
from tests.security.hostile_images import CORPUS, REFUSED_EXTENSIONS, corpus_files

ROUTE = "/api/v1/services/aigc/multimodal-generation/generation"
REPO = Path(__file__).resolve().parents[2]
SECONDS_PER_DECODE = 2.0
MIB = 1024
RSS_GROWTH_KIB = 64 * MIB  # everything but the two images at the size limit
RSS_GROWTH_AT_LIMIT_KIB = 320 * MIB  # a 16.8 MP RGB image is 50 MB; decoding holds a few copies
ACCEPTED = "accepted formats are " + ", ".join(ALLOWED_FORMATS)

CORPUS_NAMES = [path.name for path in corpus_files()]
REFUSED_NAMES = [f"format-{name}" for name in hostile_images.refused_formats()]
GENERATED_NAMES = list(hostile_images.GENERATED)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every case decoded once, in order: the corpus, the refused formats, then the bombs (those at the size
    limit last, as peak RSS only grows)."""
    directory = tmp_path_factory.mktemp("hostile")
    paths = [str(path) for path in corpus_files()]
    for name, data in hostile_images.refused_formats().items():
        (directory / f"format-{name}").write_bytes(data)
        paths.append(str(directory / f"format-{name}"))
    for name, build in hostile_images.GENERATED.items():
        (directory / name).write_bytes(build())
        paths.append(str(directory / name))
    run = subprocess.run([sys.executable, "-m", "tests.security.decode_probe", *paths], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(lines) == len(paths)
    return {line["name"]: line for line in lines}


def check_bounded(result: dict, rss_bound_kib: int = RSS_GROWTH_KIB) -> None:
    assert result["outcome"] in {"invalid", "decoded"}, result
    assert result["seconds"] < SECONDS_PER_DECODE, result
    assert result["rss_growth_kib"] < rss_bound_kib, result
    if result["outcome"] == "decoded":
        width, height = result["size"]
        assert 1 <= width <= 4096 and 1 <= height <= 4096 and width * height <= 16_800_000


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_corpus_file_is_refused_or_decoded_within_bounds(outcomes, name):
    result = outcomes[name]
    check_bounded(result)
    if Path(name).suffix in REFUSED_EXTENSIONS:
        assert result["outcome"] == "invalid" and ACCEPTED in result["message"], result


def test_corpus_outcomes_are_the_ones_recorded(outcomes):
    """A change in Pillow that starts decoding more of the corpus (or less) shows up here."""
    decoded = sorted(name for name in CORPUS_NAMES if outcomes[name]["outcome"] == "decoded")
    assert decoded == ["crash-0da013a13571cc8eb457a39fee8db18f8a3c7127.tif",
                       "crash-74d2a78403a5a59db1fb0a2b8735ac068a75f6e3.tif", "decompression_bomb_extents.gif"]
    assert len(CORPUS_NAMES) == 50


@pytest.mark.parametrize("name", REFUSED_NAMES)
def test_formats_outside_the_allowlist_are_refused_naming_the_accepted_ones(outcomes, name):
    result = outcomes[name]
    check_bounded(result)
    assert result["outcome"] == "invalid" and ACCEPTED in result["message"], result


def test_every_format_that_matters_is_among_the_refused():
    assert {"format-EPS", "format-PDF", "format-SGI", "format-ICO", "format-TGA", "format-PCX", "format-DDS",
            "format-SVG", "format-HTML"} <= set(REFUSED_NAMES)


@pytest.mark.parametrize(("name", "pixel_message"), [
    ("png_header_100k", True), ("png_zlib_bomb_over_limit", True), ("gif_header_huge", True),
    ("tiff_header_huge", True), ("tiff_huge_strip", False), ("png_ztxt_bomb", False)])
def test_bombs_are_refused_before_their_pixels_are_allocated(outcomes, name, pixel_message):
    result = outcomes[name]
    check_bounded(result)
    assert result["outcome"] == "invalid", result
    assert ("pixels" in result["message"]) is pixel_message, result


@pytest.mark.parametrize(("name", "size"), [("gif_many_frames", [32, 32]), ("mpo_two_frames", [64, 64]),
                                            ("png_idat_overflow", [64, 64])])
def test_small_images_with_hostile_extras_decode_their_first_frame_only(outcomes, name, size):
    result = outcomes[name]
    check_bounded(result)
    assert result["outcome"] == "decoded" and result["size"] == size, result


@pytest.mark.parametrize(("name", "size"), [("gif_lzw_at_limit", [4000, 4000]),
                                            ("png_zlib_bomb_at_limit", [4096, 4096])])
def test_tiny_files_at_the_size_limit_decode_within_bounded_memory(outcomes, name, size):
    result = outcomes[name]
    check_bounded(result, RSS_GROWTH_AT_LIMIT_KIB)
    assert result["outcome"] == "decoded" and result["size"] == size, result


def test_the_first_frame_of_an_animation_is_the_one_decoded():
    limits = ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20, min_side=1, max_side=1024)
    for build in (hostile_images.gif_many_frames, hostile_images.mpo_two_frames):
        red, green, blue = decode_image(build(), limits).getpixel((0, 0))
        assert red > 240 and green < 16 and blue < 16  # red, as JPEG keeps it


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


SAMPLE = ["crash-2020-10-test.tif", "decompression_bomb.gif", "timeout-6646305047838720", "sgi_crash.bin",
          "timeout-d675703545fee17acab56e5fec644c19979175de.eps", "decompression_bomb.ico"]


@pytest.mark.parametrize("via", ["data-uri", "url"])
@pytest.mark.parametrize("name", SAMPLE)
def test_hostile_files_through_the_api_are_400_in_its_format(server, image_host, name, via):
    data = (CORPUS / name).read_bytes()
    image = data_uri(data) if via == "data-uri" else image_host.add(f"hostile-{name}", data, "image/png")
    body = {"model": "qwen-image-edit-plus", "parameters": {"size": "512*512"}, "input": {"messages": [
        {"role": "user", "content": [{"image": image}, {"text": "x"}]}]}}
    with server.client() as client:
        reply = client.post(ROUTE, json=body, timeout=30)
    payload = reply.json()
    assert reply.status_code == 400, payload
    assert set(payload) == {"request_id", "code", "message"} and payload["code"] == "InvalidParameter"
    if Path(name).suffix in REFUSED_EXTENSIONS:
        assert ACCEPTED in payload["message"]


@pytest.mark.parametrize("name", ["format-SVG", "format-PDF", "crash-0c7e0e8e11ce787078f00b5b0ca409a167f070e0.tif"])
def test_hostile_files_through_openai_edits_are_invalid_requests(server, name):
    data = (hostile_images.refused_formats()[name.removeprefix("format-")] if name.startswith("format-")
            else (CORPUS / name).read_bytes())
    reply = httpx.post(server.url + "/v1/images/edits", headers={"Authorization": f"Bearer {server.key}"},
                       data={"model": "qwen-image-edit-plus", "prompt": "x"},
                       files={"image": ("in.png", data, "image/png")}, timeout=30)
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["type"] == "invalid_request_error", error
    assert error["code"] == "InvalidParameter"
    if name.startswith("format-"):
        assert ACCEPTED in error["message"]
    assert httpx.get(server.url + "/healthz").status_code == 200


@pytest.mark.parametrize(("uri", "reason"), [("data:image/png;base64,iVBORw0KGgo\u00e9", "base64"),
                                             ("data:image/png;base64,\ud800AAA", "Unicode"),
                                             ("data:image/png;base64,\uff21\uff21\uff21\uff21", "base64")])
def test_data_uris_with_non_ascii_payloads_are_400(server, uri, reason):
    """Found by fuzz/fuzz_data_uri.py: base64 raises ValueError, not binascii.Error, on non-ASCII text (was a 500).
    A lone surrogate is refused before, with the body: it is no Unicode text at all."""
    body = {"model": "qwen-image-edit-plus", "input": {"messages": [
        {"role": "user", "content": [{"image": uri}, {"text": "x"}]}]}}
    with server.client() as client:
        reply = client.post(ROUTE, content=json.dumps(body), headers={"Content-Type": "application/json"})
    payload = reply.json()
    assert reply.status_code == 400 and payload["code"] == "InvalidParameter", payload
    assert reason in payload["message"]
