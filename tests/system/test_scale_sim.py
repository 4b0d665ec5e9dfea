"""Keeps bench/scale_sim.py from rotting: a --quick run (50 fake nodes that really join and
hold gRPC+mTLS sessions, 500 tasks, a real shoald manager on loopback) must finish and
report positive figures.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scale_sim.py"


def test_scale_sim_quick(tmp_path: Path) -> None:
    out = tmp_path / "scale_sim.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    result = json.loads(out.read_text())
    config, run, join = result["config"], result["run"], result["join"]
    assert config["nodes"] == 50 and config["tasks"] == 500
    for field in ("assigned_s", "running_s", "assigned_per_s", "running_per_s"):
        assert run[field] > 0, (field, run)
    assert run["tasks_seen_by_nodes"] == config["tasks"]
    assert join["ready_s"] > 0 and join["failed_joins"] == 0
    placement = result["placement"]
    assert placement["running"] == config["tasks"]
    assert placement["on_manager"] == 0  # the manager is drained
    assert placement["nodes_used"] == config["nodes"]
    assert result["manager"]["run"]["rss_peak_mib"] > 0
    for key in ("assigned_vs_swarmkit", "assigned_vs_nomad_low", "assigned_vs_nomad_high",
                "running_vs_swarmkit", "running_vs_nomad_low", "running_vs_nomad_high"):
        assert result["ratios"][key] > 0
    assert "tasks assigned/s" in proc.stdout
