"""Every benchmark's quick mode runs here, so none can rot unnoticed; what they measure is printed, not asserted
(speed is judged by the full runs, never by a test)."""

from __future__ import annotations

import pytest

from bench import engine_steps, task_throughput


def test_engine_steps_quick(demo_models_dir, capsys):
    result = engine_steps.run(engine_steps.QUICK, demo_models_dir)
    engine_steps.print_table(result)
    assert "ratio to diffusers" in capsys.readouterr().out
    assert all(result.seconds.values())


@pytest.mark.parametrize("kind", ["t2i", "edit"])
def test_task_throughput_quick(demo_models_dir, capsys, kind):
    from dataclasses import replace

    report = task_throughput.run(replace(task_throughput.QUICK, kind=kind), demo_models_dir)
    task_throughput.print_report(report)
    printed = capsys.readouterr().out
    assert "throughput ratio on/off" in printed and "create + claim + succeed" in printed
    assert all(len(walls) == 1 for walls in report.walls.values())
