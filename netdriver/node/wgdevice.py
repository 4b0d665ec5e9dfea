"""The node's WireGuard device: making sure its interface exists, with the kernel module when
`ip link add X type wireguard` works, with a `wireguard-go` process otherwise; watching that
process, and taking both down again.

`WireGuard` (wireguard.py) owns one per node and configures what it makes (keys, peers,
addresses, MTU); `Runner`, their way of running `ip` and `wg`, lives here, below both. The
one thing of WireGuard's the device writes is the tunnel error (`TunnelStatus`), when it
finds wireguard-go dead: at once, between syncs, so heartbeats carry it before the next
sync restarts the process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from netdriver.node import netns

SOCKET_DIR = "/var/run/wireguard"  # wireguard-go's UAPI sockets (fixed in wireguard-go)
START_TIMEOUT_S = 5.0


# --- running commands in the host namespace --------------------------------------------

class Runner:
    """`ip`/`wg` in the node's host namespace (the current one when `netns_path` is None)."""

    def __init__(self, netns_path: str | None) -> None:
        self.netns_path = netns_path

    async def run(self, *argv: str) -> str:
        if self.netns_path:
            return await netns.nsenter(self.netns_path, *argv)
        return await asyncio.to_thread(_run_here, list(argv))

    async def json(self, *argv: str) -> list[dict[str, object]]:
        out = await self.run("ip", "-j", *argv)
        data = json.loads(out) if out.strip() else []
        return data if isinstance(data, list) else []

    def command(self, *argv: str) -> list[str]:
        """argv of a long-running process started in the namespace."""
        if self.netns_path:
            return ["nsenter", f"--net={self.netns_path}", *argv]
        return list(argv)


def _run_here(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done.stdout


# --- the device -------------------------------------------------------------------------

class TunnelDown(Exception):
    """The tunnel cannot be brought up; the message says why (it becomes `error`)."""


@dataclass
class TunnelStatus:
    """Why the tunnel is not up ("" when it is). Shared because both halves say it:
    `WireGuard.sync` after each pass, the device when wireguard-go dies between passes."""

    error: str = ""


class WireGuardDevice:
    """A node's WireGuard interface as a device: present or not, and its wireguard-go."""

    def __init__(self, runner: Runner, ifname: str, state_dir: Path,
                 status: TunnelStatus) -> None:
        self.runner = runner
        self.ifname = ifname
        self._dir = state_dir  # wireguard-go's log
        self._status = status
        self.kernel_module: bool | None = None  # None: not probed yet
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        # Receive steering asked for on the current device: WireGuard sets it, a new device
        # clears it.
        self.steered = False

    @property
    def pid(self) -> int | None:
        """wireguard-go's process id (None with the kernel module or when not running)."""
        if self._proc is None or self._proc.returncode is not None:
            return None
        return self._proc.pid

    @property
    def socket_path(self) -> str:
        return f"{SOCKET_DIR}/{self.ifname}.sock"

    async def remove(self) -> None:
        """Stop wireguard-go and delete the interface."""
        await self._stop()
        await self._delete_link()
        _remove_stale_socket(self.socket_path)  # left behind by a wireguard-go killed hard

    async def ensure(self) -> None:
        """The interface exists (made anew unless it is alive); TunnelDown says why not."""
        if await self._device_alive():
            return
        proc = self._proc
        if proc is not None and proc.returncode is not None and not self._status.error:
            self._status.error = f"wireguard-go exited (code {proc.returncode})"
        await self._stop()
        await self._delete_link()
        self.steered = False
        if self.kernel_module is None:
            self.kernel_module = await self._try_kernel()
            if self.kernel_module:
                return
        if self.kernel_module:
            await self.runner.run("ip", "link", "add", self.ifname, "type", "wireguard")
            return
        await self._start_userspace()

    async def _device_alive(self) -> bool:
        if self._proc is not None and self._proc.returncode is not None:
            return False
        try:
            await self.runner.run("wg", "show", self.ifname, "dump")
        except (subprocess.CalledProcessError, OSError):
            return False
        return True

    async def _try_kernel(self) -> bool:
        try:
            await self.runner.run("ip", "link", "add", self.ifname, "type", "wireguard")
        except subprocess.CalledProcessError:
            return False  # "Unknown device type": no module, wireguard-go it is
        return True

    async def _start_userspace(self) -> None:
        binary = shutil.which("wireguard-go")
        if binary is None:
            raise TunnelDown("no WireGuard: the kernel has no wireguard module and "
                             "wireguard-go is not installed")
        if shutil.which("wg") is None:
            raise TunnelDown("wg (wireguard-tools) is not installed")
        _remove_stale_socket(self.socket_path)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log_path = self._dir / "wireguard-go.log"
        with open(log_path, "ab") as out:
            self._proc = await asyncio.create_subprocess_exec(
                *self.runner.command(binary, "-f", self.ifname),
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env={**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"},
                start_new_session=True)  # a ^C to shoald's terminal is shoald's to handle
        self._stopping = False
        self._watch = asyncio.create_task(self._watch_process(self._proc, log_path))
        await self._wait_started(self._proc, log_path)

    async def _wait_started(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise TunnelDown(_exit_reason(proc.returncode, log_path))
            if os.path.exists(self.socket_path) and await self._device_alive():
                return
            await asyncio.sleep(0.05)
        raise TunnelDown(f"wireguard-go did not open {self.socket_path} in "
                         f"{START_TIMEOUT_S:.0f} s")

    async def _watch_process(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        code = await proc.wait()
        if not self._stopping and proc is self._proc:
            # Said at once (heartbeats carry it); the next sync restarts it.
            self._status.error = _exit_reason(code, log_path)

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        self._stopping = True
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._watch is not None:
            await self._watch
            self._watch = None

    async def _delete_link(self) -> None:
        if await self._link_exists():
            await self.runner.run("ip", "link", "del", "dev", self.ifname)

    async def _link_exists(self) -> bool:
        try:
            await self.runner.run("ip", "link", "show", "dev", self.ifname)
        except subprocess.CalledProcessError:
            return False
        return True


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a dead wireguard-go would make the new one refuse to start; a
    live one (an earlier shoald's wireguard-go still running) is left alone."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    finally:
        probe.close()


def _exit_reason(code: int, log_path: Path) -> str:
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    try:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    return f"wireguard-go exited ({how})" + (f": {lines[-1].strip()}" if lines else "")
