"""Short versions of ``bench/load.py``: a steady load within its budget, then an overload burst answered only
with 200 or a fast 429 ``Throttling``, and the recovery after it."""

from __future__ import annotations

import signal

import pytest

from bench.load import overload, steady
from bench.processes import ServerProcess, environment_settings
from qwen_image_server.keys import KeyStore

MAX_PENDING = 4  # above the steady clients, so the steady load never meets the bound
# Budgets for a busy 2-core CI machine; bench/load.py prints the figures of a longer run.
STEADY_P95_SECONDS = {"sync 512*512": 20.0, "async submit": 2.0, "task GET": 2.0, "healthz": 2.0}
THROTTLE_P95_SECONDS = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_models_dir):
    scratch = tmp_path_factory.mktemp("load")
    key = KeyStore(scratch / "data" / "server.db").create("load")
    process = ServerProcess(scratch / "data", demo_models_dir, scratch / "server.log",
                            environment_settings(max_pending_tasks=MAX_PENDING))
    process.start()
    yield process, key
    process.stop(signal.SIGTERM)


def test_a_steady_load_holds_its_budget(server):
    process, key = server
    tally = steady(process.url, key, clients=3, seconds=8)
    assert tally.errors == [], tally.errors[:5]
    assert tally.latencies["sync 512*512"] and tally.latencies["task GET"]
    for kind, budget in STEADY_P95_SECONDS.items():
        assert tally.percentile(kind, 0.95) <= budget, (kind, tally.percentile(kind, 0.95))


def test_an_overload_burst_gets_only_200_or_fast_429_and_the_server_recovers(server):
    process, key = server
    result = overload(process.url, key, burst=40, capacity=MAX_PENDING + 1, recovery_timeout=120)
    assert result.tally.errors == [], result.tally.errors[:5]
    assert set(result.tally.statuses) == {200, 429}, result.tally.statuses
    assert result.tally.statuses[429] >= 40 - 2 * (MAX_PENDING + 1), "most of an 8x burst is refused"
    assert result.bad_throttles == []
    throttled_p95 = result.tally.percentile("burst submit", 0.95)
    assert throttled_p95 < THROTTLE_P95_SECONDS, throttled_p95
    assert result.recovery_seconds < 120, "queue empty and a new submission accepted"
