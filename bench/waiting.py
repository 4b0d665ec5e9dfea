"""Polling and timestamps shared by the lab benchmarks (start_latency, recovery)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any


class BenchError(Exception):
    pass


def wait_for(check: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wall(text: str) -> float:
    """An RFC 3339 timestamp (nanoseconds allowed) as seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def take_down(name: str, log: Callable[[str], None]) -> None:
    """`lab down` after a run; a failure is only logged when nothing of the lab is left (a
    lab whose `up` never got far), else raised."""
    from shoal import lab

    try:
        lab.down(name)
    except lab.LabError as exc:
        if lab.state_dir(name).exists() or lab.lab_namespaces(name):
            raise
        log(f"lab {name}: {exc}")


def progress_log(started: float) -> Callable[[str], None]:
    """A logger to stderr that stamps each line with the seconds since `started`."""


    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    return log
