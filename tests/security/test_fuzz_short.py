"""A short, seeded (so repeatable) run of each atheris target as CI's smoke test; the long run is in fuzz/README.md."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SEEDS = {"fuzz_decode_image.py": [REPO / "fuzz" / "seeds" / "decode", REPO / "tests" / "security" / "data" /
                                  "pillow-hostile"],
         "fuzz_data_uri.py": [REPO / "fuzz" / "seeds" / "data_uri"]}


@pytest.mark.parametrize("target", sorted(SEEDS))
def test_fuzz_target_runs_clean(tmp_path, target):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    command = [sys.executable, str(REPO / "fuzz" / target), "-runs=3000", "-seed=1", "-max_total_time=15",
               "-max_len=16384", "-timeout=10", "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/", str(corpus),
               *map(str, SEEDS[target])]
    # Through a shell that forks: Linux carries a process's peak RSS across exec, so a fuzzer exec'd straight
    # from this (large) pytest process would start at pytest's peak and trip its own -rss_limit_mb.
    forked = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *command]
    run = subprocess.run(forked, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-4000:]
    assert re.search(r"^Done \d+ runs in \d+ second", run.stderr, re.MULTILINE), run.stderr[-2000:]
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))
