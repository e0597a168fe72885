"""``bench/front_door.py`` in its quick mode: every attack on a server with 256 descriptors leaves ``/healthz``
answering within a second, attacks without a key grow memory by a bounded amount, and every half-sent
connection is closed by the server."""

from __future__ import annotations

from bench.front_door import QUICK, print_table, run

HEALTHY_SECONDS = 1.0
KEYLESS_GROWTH_MIB = 256


def test_the_front_door_bench_holds_every_limit(demo_models_dir, capsys):
    outcomes = {outcome.attack: outcome for outcome in run(QUICK, demo_models_dir)}
    print_table(list(outcomes.values()))
    assert "| attack |" in capsys.readouterr().out
    for name, outcome in outcomes.items():
        assert outcome.healthz_max < HEALTHY_SECONDS, (name, outcome.healthz_max)

    def answers(fragment: str) -> set[str]:
        return {answer for name, outcome in outcomes.items() if fragment in name for answer in outcome.answers}

    keyless = [outcome for name, outcome in outcomes.items() if name.endswith("no key")]
    assert len(keyless) == 2 and all(outcome.rss_growth_mib < KEYLESS_GROWTH_MIB for outcome in keyless)
    assert answers("no key") == {"401"}
    assert answers("tiny items, with a key") == {"400"}
    assert answers("half-sent") == {"closed by the server"}
    assert answers("dripped") == {"HTTP/1.1 408 Request Timeout"}
    assert answers("odd methods") <= {"404", "405"}
