"""Doing things inside another network namespace from this process.

A socket keeps the namespace it was made in, so the node makes a sandbox's resolver socket
inside the sandbox's namespace and serves it from its own event loop. `setns` changes only
the calling thread's namespace; `run_in_netns` does the work on a short-lived thread that
enters the namespace, so the event loop's thread never moves.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run_in_netns_sync(netns_path: str, fn: Callable[[], T]) -> T:
    """`fn()` on a fresh thread inside the namespace at `netns_path` (a /proc/PID/ns/net or
    /run/netns/NAME path); its result or exception comes back."""
    box: dict[str, object] = {}

    def body() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box["result"] = fn()
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err

    # The thread ends inside the other namespace and dies with it: never reused.
    thread = threading.Thread(target=body, name="netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


async def run_in_netns(netns_path: str, fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(run_in_netns_sync, netns_path, fn)


def named_netns_path(name: str) -> str:
    return f"/run/netns/{name}"


async def nsenter(netns_path: str, *argv: str, stdin: str | None = None) -> str:
    """Run a command (nft, ip, wg) inside a namespace; its stdout, or CalledProcessError
    with its stderr."""
    def run() -> str:
        done = subprocess.run(["nsenter", f"--net={netns_path}", *argv], input=stdin,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, argv, done.stdout,
                                                done.stderr)
        return done.stdout
    return await asyncio.to_thread(run)
