"""Keeps bench/grpc_accept.py from rotting: a --quick run (real grpc.aio servers sharing a
port, clients in two other processes) must spread the connections over the servers and count
the calls answered.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[2] / "bench" / "grpc_accept.py"


def test_grpc_accept_quick(tmp_path: Path) -> None:
    out = tmp_path / "grpc_accept.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--servers", "1", "4",
                           "--full-ms", "0", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["servers"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {1, 4}
    for servers, row in rows.items():
        assert row["calls_per_s"] > 10, row  # hundreds on an idle loop
        assert row["servers_used"] == servers, row  # SO_REUSEPORT spread the connections
