"""Processes of bench/scale_sim.py: the manager (a real shoald on loopback), the fake-node
processes (bench/scale_sim_agents.py), and a sampler of their CPU and RSS from /proc."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shoal.client import APIError, Client  # noqa: E402

AGENTS = REPO / "bench" / "scale_sim_agents.py"
LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20
# "assigning": the scheduler's log line since its passes write as they decide
SCHED_LINE = re.compile(r"^(\S+ \S+),(\d{3}) .*scheduler: assign(?:ed|ing) (\d+) tasks")

# ---- processes -------------------------------------------------------------------------

def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def machine_busy_s() -> float:
    """CPU seconds all processes of the machine have used (every core), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def loadavg() -> float:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError):
        return 0.0


def stop_pid(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)


def free_port_block(size: int = 3) -> int:
    """P with P .. P+size-1 free on loopback (cluster, bootstrap and Raft ports)."""
    for _ in range(100):
        base = random.randrange(20000, 60000)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                socks.append(s)
                s.bind((LOOPBACK, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of loopback ports")


def start_py_spy(pid: int, out: Path, fmt: str = "raw") -> subprocess.Popen[bytes]:
    """py-spy recording `pid` into `out`: "raw" (collapsed stacks, see top_self_frames) or
    "flamegraph" (an SVG)."""
    exe = Path(sys.executable).parent / "py-spy"
    argv = [str(exe if exe.exists() else "py-spy"), "record", "-p", str(pid), "-f", fmt,
            "-o", str(out), "-r", "100", "--nonblocking"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    time.sleep(1.0)  # let it attach
    return proc


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    """py-spy writes its file on SIGINT."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)


_LINE_NO = re.compile(r":\d+\)$")


def top_self_frames(raw: Path, count: int = 15) -> list[tuple[str, int, float]]:
    """The frames that were on top of the stack most often in py-spy's raw output (collapsed
    stacks, "root;...;leaf N" per line): (frame, samples, share of all samples). Line
    numbers are dropped so that a function's samples add up."""
    per_frame: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        leaf = _LINE_NO.sub(")", stack.rpartition(";")[2])
        per_frame[leaf] = per_frame.get(leaf, 0) + int(n)
        total += int(n)
    top = sorted(per_frame.items(), key=lambda kv: -kv[1])[:count]
    return [(frame, n, n / total) for frame, n in top]


def print_top_frames(raw: Path, count: int = 15) -> None:
    print(f"top {count} self-time frames in {raw}:")
    for frame, n, share in top_self_frames(raw, count):
        print(f"  {100 * share:5.1f}%  {n:7d}  {frame}")


class Sampler(threading.Thread):
    """Samples a set of PIDs' CPU seconds and RSS every `interval` (daemon thread)."""

    def __init__(self, pids: dict[str, list[int]], interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.samples: list[tuple[float, dict[str, float], dict[str, int]]] = []
        self._stop = threading.Event()

    def sample(self) -> tuple[float, dict[str, float], dict[str, int]]:
        cpu = {k: sum(proc_cpu_s(p) for p in ps) for k, ps in self.pids.items()}
        cpu["machine"] = machine_busy_s()
        rss = {k: sum(proc_rss(p) for p in ps) for k, ps in self.pids.items()}
        return time.time(), cpu, rss

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self.sample())

    def stop(self) -> None:
        self._stop.set()

    def others(self, start: float, end: float) -> float:
        """CPU of the rest of the machine between two times (percent of one core): what other
        work took from the 2 cores while we measured."""
        total = self.window(start, end, "machine")["cpu_pct"]
        ours = sum(self.window(start, end, k)["cpu_pct"] for k in self.pids)
        return round(max(0.0, total - ours), 1)

    def window(self, start: float, end: float, key: str) -> dict[str, float]:
        """CPU (percent of one core, and seconds) and peak RSS of `key` between two times."""
        before = [s for s in self.samples if s[0] <= start][-1:]
        after = [s for s in self.samples if s[0] >= end][:1]
        inside = before + [s for s in self.samples if start < s[0] < end] + after
        if len(inside) < 2:
            return {"cpu_pct": 0.0, "cpu_s": 0.0, "rss_peak_mib": 0.0}
        first, last = inside[0], inside[-1]
        cpu_s = last[1][key] - first[1][key]
        return {"cpu_pct": round(100 * cpu_s / max(last[0] - first[0], 1e-9), 1),
                "cpu_s": round(cpu_s, 2),
                "rss_peak_mib": round(max(s[2].get(key, 0) for s in inside) / MIB, 1)}


# ---- the manager -----------------------------------------------------------------------

class ManagerProc:
    """A drained manager's shoald: the swarm's first (init) or one that joins with the
    manager token."""

    def __init__(self, tmp: Path, name: str = "manager") -> None:
        self.tmp, self.name = tmp, name
        self.socket = tmp / f"{name}.sock"
        self.log = tmp / f"{name}.log"
        self.port = free_port_block()
        self.client = Client(f"unix://{self.socket}", timeout=120.0)
        self.proc: subprocess.Popen[bytes] | None = None
        self.node_id = ""

    def start(self, join: tuple[str, str] | None = None) -> None:
        """`join`: (a manager's address, the manager token); None: swarm init."""
        argv = [sys.executable, "-m", "shoal.daemon", "--data-root", str(self.tmp / self.name),
                "--host", f"unix://{self.socket}", "--hostname", f"sim-{self.name}",
                "--executor", "fake", "--log-level", "info"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        wait_for(lambda: self._ping(), 30.0, "shoald to answer /_ping")
        addr = f"{LOOPBACK}:{self.port}"
        if join is None:
            self.node_id = self.client.post("/swarm/init", {
                "ListenAddr": addr, "AdvertiseAddr": addr, "Availability": "drain"})
            return
        self.client.post("/swarm/join", {
            "ListenAddr": addr, "AdvertiseAddr": addr, "RemoteAddrs": [join[0]],
            "JoinToken": join[1], "Availability": "drain"})
        self.node_id = str(self.client.get("/info")["Swarm"]["NodeID"])

    def _ping(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"shoald exited ({self.proc.returncode}); see {self.log}")
        try:
            self.client.get("/_ping")
            return True
        except APIError:
            return False

    @property
    def remote(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def worker_token(self) -> str:
        return str(self.client.get("/swarm")["JoinTokens"]["Worker"])

    def manager_token(self) -> str:
        return str(self.client.get("/swarm")["JoinTokens"]["Manager"])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)

    def scheduler_passes(self) -> list[tuple[float, int]]:
        """(wall time, tasks assigned) of each scheduler pass that assigned tasks."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = SCHED_LINE.match(line)
            if m:
                t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
                out.append((t + int(m.group(2)) / 1000, int(m.group(3))))
        return out


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ---- the fake nodes --------------------------------------------------------------------

class AgentProcs:
    """`procs` processes of fake nodes; their stdout lines (JSON) are collected."""

    def __init__(self, tmp: Path, nodes: int, procs: int, concurrency: int,
                 nice: int = 0) -> None:
        self.tmp, self.nodes, self.concurrency = tmp, nodes, concurrency
        self.nice = nice  # added to the processes' niceness (the managers keep theirs)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outs: list[Path] = []
        self.lines: list[list[dict[str, Any]]] = []
        per, extra = divmod(nodes, procs)
        self.ranges, first = [], 1
        for i in range(procs):
            count = per + (1 if i < extra else 0)
            self.ranges.append((first, count))
            first += count

    def start(self, remotes: list[str], token: str) -> None:
        """Node i joins through remotes[i % len(remotes)] (the managers' addresses)."""
        for i, (first, count) in enumerate(self.ranges):
            out = self.tmp / f"agents-{i}.json"
            argv = ["nice", "-n", str(self.nice)] if self.nice else []
            argv += [sys.executable, str(AGENTS), "--remote", ",".join(remotes),
                    "--token", token,
                    "--first", str(first), "--count", str(count),
                    "--data-dir", str(self.tmp / "nodes"), "--out", str(out),
                    "--concurrency", str(self.concurrency)]
            with open(self.tmp / f"agents-{i}.log", "wb") as log:
                proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=log,
                                        stdin=subprocess.PIPE)
            lines: list[dict[str, Any]] = []
            threading.Thread(target=_read_lines, args=(proc, lines), daemon=True).start()
            self.procs.append(proc)
            self.outs.append(out)
            self.lines.append(lines)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise RuntimeError(f"fake-node process {i} exited ({proc.returncode}); see "
                                   f"{self.tmp}/agents-{i}.log")

    def joined(self) -> list[dict[str, Any]]:
        """Each process's final join line, once all have one."""
        done = [next((x for x in lines if "joined_all" in x), None) for lines in self.lines]
        return [d for d in done if d is not None] if all(done) else []

    def stop(self) -> dict[str, Any]:
        """Stop the processes; the merged task times they wrote."""
        procs, self.procs = self.procs, []
        outs, self.outs = self.outs, []
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        merged: dict[str, Any] = {"prepared": {}, "started": {}, "agent_restarts": 0}
        for proc, out in zip(procs, outs, strict=True):
            stop_pid(proc, 30.0)
            if out.exists():
                data = json.loads(out.read_text())
                merged["prepared"].update(data["prepared"])
                merged["started"].update(data["started"])
                merged["agent_restarts"] += data["agent_restarts"]
        return merged


def _read_lines(proc: subprocess.Popen[bytes], lines: list[dict[str, Any]]) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        try:
            lines.append(json.loads(raw))
        except ValueError:
            pass
