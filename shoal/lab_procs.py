"""The lab's processes and namespaces through ip(8) and /proc: which namespaces a lab has,
starting a host's daemon inside its namespace, recognising it again, stopping it."""

from __future__ import annotations

import os
import re
import signal as signals
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from shoal import procs
from shoal.lab_state import HostState, LabError

STOP_TIMEOUT = 10.0


def ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def lab_namespaces(name: str) -> list[str]:
    """The namespaces that exist now and are named like this lab's (`shl-NAME-sw|mN|wN`, and
    the hosts' overlay namespaces `shl-NAME-HOST-n...`)."""
    pattern = re.compile(rf"shl-{re.escape(name)}-(sw|[mw][0-9]+(-n[0-9a-z]+)?)")
    found = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    return [ns for ns in found if pattern.fullmatch(ns)]


def netns_pids(ns: str) -> list[int]:
    out = ip("netns", "pids", ns, check=False)
    return [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]


def in_namespace(pid: int, ns: str) -> bool:
    try:
        return os.stat(f"/run/netns/{ns}").st_ino == os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return False


def ours(host: HostState) -> bool:
    """Is the recorded PID still our daemon: in the host's namespace, or on its way there?"""
    if host.pid is None or not procs.alive(host.pid):
        return False
    if in_namespace(host.pid, host.namespace):
        return True
    try:
        cmdline = Path(f"/proc/{host.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return host.data_root in cmdline or host.namespace in cmdline.split("\0")


def terminate(pids: Iterable[int], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM each process, wait up to `timeout` for all, then SIGKILL the rest."""
    live = [pid for pid in pids if procs.alive(pid)]
    for sigs in ((signals.SIGTERM, signals.SIGCONT), (signals.SIGKILL,)):
        for pid, sig in ((pid, sig) for pid in live for sig in sigs):
            try:
                os.kill(pid, sig)  # SIGCONT: a stopped process acts on SIGTERM only when resumed
            except ProcessLookupError:
                pass
        live = wait_exit(live, timeout)
        if not live:
            return
    raise LabError(f"processes {live} survived SIGKILL for {timeout:.0f} s")


def wait_exit(pids: list[int], timeout: float) -> list[int]:
    procs.wait_for(lambda: not any(procs.alive(pid) for pid in pids), timeout)
    return [pid for pid in pids if procs.alive(pid)]


def start_daemon(host: HostState, extra_argv: Sequence[str] = ()) -> int:
    Path(host.data_root).mkdir(parents=True, exist_ok=True)
    Path(host.api_socket).unlink(missing_ok=True)  # stale: its daemon is not running
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(host.log_file, "ab") as log:
        # nsenter --net, not `ip netns exec`: the latter gives the daemon a private mount
        # namespace, so the network namespaces it mounts under /run/netns vanish with it
        # (a restart would find empty files), unlike on a real host.
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{host.namespace}",
                                 *host.argv, *extra_argv],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    procs.track(proc)
    # nsenter enters the namespace, then execs the daemon; wait for the first step.
    procs.wait_for(lambda: not procs.alive(proc.pid) or
                   in_namespace(proc.pid, host.namespace), 5.0)
    return proc.pid


def log_tail(host: HostState, lines: int = 5) -> str:
    try:
        tail = Path(host.log_file).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"\n    {line}" for line in tail)
