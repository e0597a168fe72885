"""Fixtures of the security suites: the misbehaving upstream that image URLs point at."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.security.upstreams import RawServer, hostile_upstream, running


@pytest.fixture(scope="module")
def upstream() -> Iterator[RawServer]:
    with running(hostile_upstream()) as server:
        yield server
