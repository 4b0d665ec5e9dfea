"""Keeps bench/dump_cost.py from rotting: a small run must finish and report both dumps for
each size (no timing assertions: the figures depend on the machine)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import dump_cost


def test_dump_cost_bench_small(tmp_path: Path) -> None:
    out = tmp_path / "dump_cost.json"
    assert dump_cost.main(["--tasks", "200,400", "--repeat", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["tasks"] for r in rows] == [200, 400]
    for row in rows:
        assert 0 < row["tick_ms"] < row["writer_ms"] and row["before_ms"] > 0, row
        assert row["objects"] > row["tasks"] and row["dump_mb"] >= 0, row
