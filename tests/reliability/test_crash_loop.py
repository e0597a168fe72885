"""A few rounds of ``bench/crash_loop.py``: SIGKILL at random moments while tasks are queued, running and
being submitted, a restart on the same data each time; nothing acknowledged is lost, nothing stays stuck, and
no task is taken over while its previous owner still lives. ``python bench/crash_loop.py --cycles 50`` is the
long run."""

from __future__ import annotations

from bench.crash_loop import crash_loop


def test_sigkill_cycles_lose_nothing_and_never_run_a_task_twice_at_once(tmp_path, demo_models_dir):
    report = crash_loop(tmp_path, demo_models_dir, cycles=3, seed=5, kill_window=(0.8, 2.5), max_pending=4,
                        drain_timeout=120)
    assert report.acknowledged, "the submitter got tasks in"
    assert not [cycle for cycle in report.cycles if cycle.missing_after_kill], "acknowledged means stored"
    assert report.lost == [] and report.stuck == [] and report.double == []
    assert report.unknown_owners == [] and report.missing_results == []
    assert set(report.states) <= {"SUCCEEDED", "FAILED"}
    assert all("interrupted" in reason for reason in report.failures), report.failures
    assert report.seconds < 240
