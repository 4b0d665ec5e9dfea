"""Processes the lab and the engine start: reaping our own children, telling whether a PID is
still alive (a zombie is not), and polling with a deadline."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # started by this process, to reap


def track(proc: subprocess.Popen[bytes]) -> int:
    _CHILDREN[proc.pid] = proc
    return proc.pid


def alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def wait_for(check: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T | None:
    """Poll `check` until it returns a truthy value (returned) or `timeout` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)
