"""Keeps bench/recovery.py from rotting: a --quick run (one kill) must finish and report the
time until the node is down and until all tasks run again.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.helpers import run_bench

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[2] / "bench" / "recovery.py"


def test_recovery_bench_quick(tmp_path: Path) -> None:
    result, proc = run_bench(BENCH, tmp_path, "--quick", timeout=280)

    assert [row["key"] for row in result["rows"]] == ["down_s", "recovered_s"]
    for row in result["rows"]:
        for field in ("median_s", "min_s", "max_s", "ratio"):
            assert row[field] > 0, (row["key"], field, row[field])
        assert row["label"] in proc.stdout
    (run,) = result["runs"]
    assert run["tasks_lost"] > 0 and run["replacements"] == run["tasks_lost"], run
    assert run["down_s"] > 0 and run["recovered_s"] > 0, run
