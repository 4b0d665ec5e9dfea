"""Keeps bench/recovery.py from rotting: a --quick run (one kill) must finish and report the
time until the node is down and until all tasks run again.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[2] / "bench" / "recovery.py"


def test_recovery_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "recovery.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    result = json.loads(out.read_text())
    assert [row["key"] for row in result["rows"]] == ["down_s", "recovered_s"]
    for row in result["rows"]:
        for field in ("median_s", "min_s", "max_s", "ratio"):
            assert row[field] > 0, (row["key"], field, row[field])
        assert row["label"] in proc.stdout
    (run,) = result["runs"]
    assert run["tasks_lost"] > 0 and run["replacements"] == run["tasks_lost"], run
    assert run["down_s"] > 0 and run["recovered_s"] > 0, run
