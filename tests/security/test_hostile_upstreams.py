"""Slow and hostile upstreams: every misbehaviour ends in bounded time, memory and file descriptors.

The upstream is allowlisted, so the address check lets it through and only the fetcher's limits stand
between it and the server: the total timeout, the byte cap while streaming, no decompression, and a
connection closed whatever happens.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from qwen_image_server.errors import InputDownloadFailed, ServiceError
from qwen_image_server.media.fetch import ImageFetcher
from qwen_image_server.media.images import ImageLimits, decode_image
from qwen_image_server.settings import MiB, Settings
from tests.conftest import RunningServer, free_socket, serving
from tests.security.upstreams import GZIP_BOMB, PNG, RawServer

ROUTE = "/api/v1/services/aigc/multimodal-generation/generation"
MAX_BYTES = 1 * MiB
TOTAL_TIMEOUT = 1.0
MARGIN = 1.5

LOOP = "/redirect?to=" + quote("/redirect?to=" + quote("/redirect?to=" + quote(
    "/redirect?to=" + quote("/image.png", safe=""), safe=""), safe=""), safe="")

# path -> what the fetcher says (None: it returns the raw bytes, which then fail to decode)
OUTCOMES: dict[str, str | None] = {
    "/drip?every=0.5": "timed out",
    "/silent": "timed out",
    "/length-long-stall": "timed out",
    "/continue-flood": "timed out",
    "/endless-chunked": f"exceeds {MAX_BYTES} bytes",
    "/endless-until-close": f"exceeds {MAX_BYTES} bytes",
    "/length-huge": f"exceeds {MAX_BYTES} bytes",
    "/length-long": "could not connect or read",
    "/reset": "could not connect or read",
    "/garbage": "could not connect or read",
    "/endless-headers": "could not connect or read",
    "/status?code=500": "HTTP 500",
    "/status?code=502": "HTTP 502",
    "/status?code=503": "HTTP 503",
    "/status?code=404": "HTTP 404",
    "/no-location": "HTTP 302",
    LOOP: "more than 3 redirects",
    "/length-short": None,
    "/gzip": None,
    "/br": None,
    "/html": None,
    "/svg": None,
}
SLOW = [path for path, outcome in OUTCOMES.items() if outcome == "timed out"]
FAST = [path for path in OUTCOMES if path not in SLOW]


def settings_for(data_dir: Path, upstream: RawServer, **options: object) -> Settings:
    values = {"fetch_total_timeout": TOTAL_TIMEOUT, "fetch_connect_timeout": 0.5, **options}
    return Settings(data_dir=data_dir, fetch_allowed_hosts=[upstream.netloc], max_image_bytes=MAX_BYTES,
                    **values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path,
        upstream: RawServer) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("hostile-server"), demo_models_dir, free_socket(),
                 fetch_allowed_hosts=[upstream.netloc], max_image_bytes=MAX_BYTES,
                 fetch_total_timeout=TOTAL_TIMEOUT, fetch_connect_timeout=0.5,
                 rate_limits_enabled=False) as running_server:
        yield running_server


@pytest.mark.parametrize("path", list(OUTCOMES))
def test_hostile_upstream_gets_a_clean_error_in_bounded_time(api: RunningServer, upstream: RawServer,
                                                            path: str) -> None:
    body = {"model": "qwen-image-edit-plus",
            "input": {"messages": [{"role": "user", "content": [{"image": upstream.url(path)}, {"text": "a"}]}]}}
    started = time.monotonic()
    with api.client() as client:
        response = client.post(ROUTE, json=body)
    elapsed = time.monotonic() - started
    payload = response.json()
    assert response.status_code == 400, payload
    assert set(payload) == {"request_id", "code", "message"}
    assert payload["code"] == "InvalidParameter"
    expected = OUTCOMES[path]
    assert (expected or "").lower() in payload["message"].lower()
    assert elapsed < TOTAL_TIMEOUT + MARGIN


async def _outcome(fetcher: ImageFetcher, url: str) -> bytes | str:
    try:
        return await fetcher.fetch(url)
    except InputDownloadFailed as error:
        return error.message


def run_batch(settings: Settings, urls: list[str], rounds: int) -> tuple[list[bytes | str], int]:
    """Every URL ``rounds`` times through one fetcher (as the server shares one); the outcomes of the last
    round, and the most file descriptors this process held at the end of any round."""

    async def run() -> tuple[list[bytes | str], int]:
        fetcher = ImageFetcher(settings)
        peak = 0
        try:
            for _ in range(rounds):
                outcomes = [await _outcome(fetcher, url) for url in urls]
                peak = max(peak, open_fds())
            return outcomes, peak
        finally:
            await fetcher.aclose()

    return asyncio.run(run())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_for_open_connections(upstream: RawServer, count: int) -> None:
    deadline = time.monotonic() + 10
    while upstream.open > count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.open == count


# The fast behaviours end in milliseconds; their generous timeout only keeps a busy machine (the full suite
# runs servers and inference in this process) from turning one of them into a timeout.
@pytest.mark.parametrize(("paths", "rounds", "total_timeout"), [(FAST, 60, 10.0), (SLOW, 4, 0.2)],
                         ids=["fast-60-rounds", "slow-4-rounds"])
def test_no_connection_or_descriptor_leaks_over_many_fetches(tmp_path: Path, upstream: RawServer,
                                                            paths: list[str], rounds: int,
                                                            total_timeout: float) -> None:
    """The upstream's own sockets live in this process too, so once it has seen every connection of the
    batch closed, this process must hold exactly the descriptors it held before. (Connections pooled by
    the API server of the other tests stay open throughout: they are the baseline.)"""
    settings = settings_for(tmp_path, upstream, fetch_total_timeout=total_timeout,
                            fetch_connect_timeout=min(total_timeout, 5.0))
    gc.collect()  # descriptors of earlier tests' garbage must not close mid-test and make the count drop
    open_before, accepted_before, fds_before = upstream.open, upstream.accepted, open_fds()
    started = time.monotonic()
    outcomes, peak = run_batch(settings, [upstream.url(path) for path in paths], rounds)
    per_fetch = (time.monotonic() - started) / (rounds * len(paths))
    for path, outcome in zip(paths, outcomes, strict=True):
        expected = OUTCOMES[path]
        assert isinstance(outcome, bytes) if expected is None else expected in str(outcome), (path, outcome)
    wait_for_open_connections(upstream, open_before)
    assert open_fds() == fds_before
    assert peak - fds_before <= 2 * 20 + 10  # the pool keeps at most 20 idle connections; both ends are ours
    assert upstream.accepted - accepted_before >= rounds  # the batch really did open connections
    assert per_fetch < total_timeout + 0.5
    print(f"\n{len(paths)} hostile URLs x {rounds} rounds: {upstream.accepted - accepted_before} connections, "
          f"fds {fds_before} before, {peak} at most, {open_fds()} after; {per_fetch * 1000:.0f} ms per fetch")


def test_memory_stays_near_the_cap(tmp_path: Path, upstream: RawServer) -> None:
    """Endless, oversized and bomb bodies, ten times each: the traced peak stays within a few MiB of the cap."""
    paths = ["/endless-chunked", "/endless-until-close", "/length-huge", "/gzip", "/br"]
    settings = settings_for(tmp_path, upstream)
    tracemalloc.start()
    try:
        run_batch(settings, [upstream.url(path) for path in paths], 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_BYTES + 3 * MiB, peak
    print(f"\ntraced peak over {len(paths) * 10} capped or bomb fetches: {peak / MiB:.2f} MiB "
          f"(cap {MAX_BYTES / MiB:.0f} MiB)")


@pytest.mark.parametrize("path", ["/gzip", "/br"])
def test_compressed_bodies_are_never_inflated(tmp_path: Path, upstream: RawServer, path: str) -> None:
    """The bytes come back exactly as sent (no transparent decoding), and then fail to decode as an image."""
    ((body,), _) = run_batch(settings_for(tmp_path, upstream), [upstream.url(path)], 1)
    assert body == GZIP_BOMB
    with pytest.raises(ServiceError):
        decode_image(body, ImageLimits.from_settings(settings_for(tmp_path, upstream)))
    assert upstream.targets[-1] == path


def test_content_type_does_not_decide_the_format(tmp_path: Path, upstream: RawServer) -> None:
    """Policy (security.md): the bytes decide. A PNG served as text/plain decodes; HTML served as an image
    does not (the API test above answers it with InvalidParameter)."""
    settings = settings_for(tmp_path, upstream, min_image_side=64)  # the upstream's PNG is 64x64
    (png, html), _ = run_batch(settings, [upstream.url("/text-png"), upstream.url("/html")], 1)
    assert png == PNG
    assert decode_image(png, ImageLimits.from_settings(settings)).size == (64, 64)
    with pytest.raises(ServiceError):
        decode_image(html if isinstance(html, bytes) else b"", ImageLimits.from_settings(settings))


def test_a_lying_short_content_length_yields_only_what_it_declared(tmp_path: Path, upstream: RawServer) -> None:
    ((body,), _) = run_batch(settings_for(tmp_path, upstream), [upstream.url("/length-short")], 1)
    assert body == PNG[:10]


def test_the_client_sees_the_upstream_limits_not_an_unhandled_error(api: RunningServer) -> None:
    """The control for the API test: the server is up and its limits are the ones configured here."""
    assert api.settings.fetch_total_timeout == TOTAL_TIMEOUT
    assert httpx.get(f"{api.url}/readyz", timeout=5).status_code == 200
