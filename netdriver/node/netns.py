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


NETNS_DIR = "/run/netns"


def named_netns_path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


def netns_path(ns: str) -> str:
    """A namespace's path from its name under /run/netns, or the path itself."""
    return ns if "/" in ns else named_netns_path(ns)


# -- named namespaces (made and removed by `ip netns`) --

def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def add_netns(name: str) -> None:
    _ip("netns", "add", name)


def delete_netns(name: str) -> None:
    if name in list_netns():
        _ip("netns", "delete", name)


def _ip(*argv: str) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(argv)}: {done.stderr.strip()}")


# With br_netfilter loaded (dockerd loads it), bridged frames in a namespace go through its
# netfilter hooks and conntrack unless these are off there; an overlay's namespace has no
# rules for them, so they only cost (measured: plain overlay throughput 0.63 -> 0.80 of the
# underlay).
BRIDGE_NF = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables")


def bridge_netfilter_on(ns: str) -> list[str]:
    """The bridge-netfilter switches that are on in the namespace ([] without br_netfilter)."""
    def read() -> list[str]:
        on = []
        for key in BRIDGE_NF:
            try:
                with open(f"/proc/sys/net/bridge/{key}") as f:
                    if f.read().strip() != "0":
                        on.append(key)
            except FileNotFoundError:
                pass
        return on
    return run_in_netns_sync(netns_path(ns), read)


def set_bridge_netfilter_off(ns: str, key: str) -> None:
    def write() -> None:
        with open(f"/proc/sys/net/bridge/{key}", "w") as f:
            f.write("0")
    run_in_netns_sync(netns_path(ns), write)


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
