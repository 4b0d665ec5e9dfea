"""The managers of bench/scale_sim.py: one, or three in one Raft group (--managers 3), and
what the benchmark watches on them besides CPU and RSS.

- Cluster: the first shoald runs `swarm init`, the others `swarm join` with the manager
  token; all drained, so no task lands on a manager. The leader is the one every manager's
  `GET /nodes` names (ManagerStatus.Leader).
- Watch: every few seconds, each live manager's `GET /metrics` (shoal_raft_applied_index,
  shoal_raft_leader, shoal_dispatcher_sessions) and one `GET /nodes` (from a follower when
  there is one, so the leader does not pay for it): the followers' lag behind the leader's
  applied index, and every node ever seen Down.
- takeover: SIGKILL of the leader, then the time until a survivor acknowledges a write
  (a 1-replica service created) and until every fake node has a session with the new
  leader and shows Ready in its `GET /nodes`.
"""

from __future__ import annotations

import functools
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from scale_sim_procs import ManagerProc, wait_for

from shoal.client import APIError, Client

IMAGE = "shoal/busybox:latest"
METRIC = re.compile(r"^(shoal_raft_applied_index|shoal_raft_leader|shoal_raft_term|"
                    r"shoal_dispatcher_sessions)"
                    r" ([0-9.e+-]+)$", re.M)
# Per node on the leader: seconds since it last heard that node's heartbeat.
HEARTBEAT_AGE = re.compile(r'^shoal_dispatcher_heartbeat_age_seconds\{[^}]*\} ([0-9.e+-]+)$', re.M)
SCRAPE_TIMEOUT = 10.0
SETTLE_TIMEOUT = 45.0  # a join settles in seconds, even on a loaded machine
START_ATTEMPTS = 3
BUSY_RATE = 100.0  # leader applies per second from which a lag in entries reads as time
WRITE_TIMEOUT = 15.0  # one attempt: the API itself waits up to 10 s for a commit


def scrape(mgr: ManagerProc) -> dict[str, float]:
    """The Raft and dispatcher gauges of one manager's /metrics ({} if it did not answer)."""
    client = Client(f"unix://{mgr.socket}", timeout=SCRAPE_TIMEOUT)
    try:
        text = client.raw("GET", "/metrics").decode(errors="replace")
    except APIError:
        return {}
    found = {m.group(1): float(m.group(2)) for m in METRIC.finditer(text)}
    ages = [float(m.group(1)) for m in HEARTBEAT_AGE.finditer(text)]
    if ages:  # the longest a node has gone unheard (a heartbeat queued behind the loop)
        found["heartbeat_age_max"] = max(ages)
    return found


class Cluster:
    def __init__(self, tmp: Path, count: int) -> None:
        self.tmp = tmp
        self.names = ["manager"] if count == 1 else [f"m{i + 1}" for i in range(count)]
        self.managers = [ManagerProc(tmp, name) for name in self.names]
        self._seen = ""  # what the last look at the managers showed (for a timeout)
        self.attempts = 0
        self.read_errors = 0  # reads that a manager could not answer (see get)
        self.write_errors = 0  # service creates answered with an error (then retried)

    def start(self, log: Any) -> None:
        """Start the managers; a group that does not settle is started again from nothing
        (see _start_once), at most START_ATTEMPTS times."""
        while True:
            self.attempts += 1
            try:
                self._start_once(log)
                return
            except TimeoutError as err:
                if self.attempts >= START_ATTEMPTS:
                    raise
                log(f"  the managers did not settle ({err}); starting them again")
                self._discard()

    def _start_once(self, log: Any) -> None:
        first = self.managers[0]
        first.start()
        token = first.manager_token() if len(self.managers) > 1 else ""
        # One join at a time, each once the group has settled. Under load a join can leave
        # the new manager in Raft but without ManagerStatus in the store for good: the
        # leader's add_member gives up ("lost contact with the majority") when the new
        # member has not answered within its 0.2 s quorum check, so the store write after
        # it never happens (manager/raftapi.py RaftMembership._add). Hence the retries.
        for count, mgr in enumerate(self.managers[1:], start=2):
            log(f"  {mgr.name} joins as a manager")
            mgr.start(join=(first.remote, token))
            try:
                wait_for(functools.partial(self._settled, count), SETTLE_TIMEOUT,
                         f"the {count} managers to see one leader", 0.5)
            except TimeoutError as err:
                raise TimeoutError(f"{err}; last seen: {self._seen}") from None

    def _discard(self) -> None:
        """Stop the managers and keep their logs aside; new ones with new ports."""
        for mgr in self.managers:
            mgr.stop()
            if mgr.log.exists():
                mgr.log.rename(mgr.log.with_suffix(f".failed-{self.attempts}.log"))
            shutil.rmtree(self.tmp / mgr.name, ignore_errors=True)
        self.managers = [ManagerProc(self.tmp, name) for name in self.names]

    def _settled(self, count: int) -> bool:
        group = self.managers[:count]
        ids = {m.node_id for m in group}
        seen = set()
        for mgr in group:
            try:
                nodes = [n for n in mgr.client.get("/nodes") if n["ID"] in ids]
            except APIError as err:  # a joined manager catching up answers 503
                self._seen = f"{mgr.name}: {err}"
                return False
            status = [n.get("ManagerStatus") or {} for n in nodes]
            self._seen = f"{mgr.name}: {status}"
            if len(nodes) != len(ids) or any(s.get("Reachability") != "reachable"
                                              for s in status):
                return False
            seen |= {n["ID"] for n, s in zip(nodes, status, strict=True) if s.get("Leader")}
        return len(seen) == 1

    def live(self) -> list[ManagerProc]:
        return [m for m in self.managers if m.alive()]

    def leader(self) -> ManagerProc:
        """The manager a live manager's `GET /nodes` names leader."""
        for mgr in self.live():
            try:
                nodes = mgr.client.get("/nodes")
            except APIError:
                continue
            ids = {n["ID"] for n in nodes if (n.get("ManagerStatus") or {}).get("Leader")}
            for candidate in self.live():
                if candidate.node_id in ids:
                    return candidate
        raise RuntimeError("no live manager names a live leader")

    def get(self, first: ManagerProc, path: str, timeout: float = 60.0, **params: Any) -> Any:
        """GET from `first`, or any live manager while it cannot answer (a leader that lost
        its quorum answers 503 until an election ends); the errors on the way are counted."""
        deadline = time.monotonic() + timeout
        while True:
            for mgr in [first, *(m for m in self.live() if m is not first)]:
                try:
                    return mgr.client.get(path, **params)
                except APIError as err:
                    self.read_errors += 1
                    last = err
            if time.monotonic() > deadline:
                raise last
            time.sleep(0.5)

    def remotes(self) -> list[str]:
        return [m.remote for m in self.managers]

    def ids(self) -> set[str]:
        return {m.node_id for m in self.managers}

    def stop(self) -> None:
        for mgr in self.managers:
            mgr.stop()


class Watch(threading.Thread):
    """Samples the managers' Raft progress and the nodes seen Down (daemon thread)."""

    def __init__(self, cluster: Cluster, fake_nodes: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.cluster, self.fake_nodes, self.interval = cluster, fake_nodes, interval
        self.ticks: list[dict[str, Any]] = []  # t, per manager name: its gauges; down
        self.ever_down: set[str] = set()
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.ticks.append(self.tick())

    def stop(self) -> None:
        self._stop.set()

    def tick(self) -> dict[str, Any]:
        live = self.cluster.live()
        tick: dict[str, Any] = {"t": time.time(), "scrape_s": {}}

        def one(mgr: ManagerProc) -> None:
            began = time.monotonic()
            tick[mgr.name] = scrape(mgr)
            tick["scrape_s"][mgr.name] = time.monotonic() - began

        # All at once: one after the other, a follower read after the leader would have
        # caught up with what the leader showed, and the lag would read 0.
        scrapers = [threading.Thread(target=one, args=(m,), daemon=True) for m in live]
        for scraper in scrapers:
            scraper.start()
        for scraper in scrapers:
            scraper.join(SCRAPE_TIMEOUT + 1)
        leaders = [m for m in live if tick.get(m.name, {}).get("shoal_raft_leader") == 1]
        reader = next((m for m in live if m not in leaders), live[0] if live else None)
        tick["leader"] = leaders[0].name if leaders else None
        tick["down"] = self.down_nodes(reader) if reader else None
        return tick

    def down_nodes(self, reader: ManagerProc) -> int | None:
        try:
            nodes = Client(f"unix://{reader.socket}", timeout=SCRAPE_TIMEOUT).get("/nodes")
        except APIError:
            return None
        ids = self.cluster.ids()
        down = {n["ID"] for n in nodes if n["ID"] not in ids and n["Status"]["State"] == "down"}
        self.ever_down |= down
        return len(down)

    def summary(self, start: float, end: float) -> dict[str, Any]:
        """Between two times: each follower's lag behind the leader (applied entries, and
        as time at the leader's apply rate then), the nodes seen Down, what a scrape cost."""
        inside = [t for t in self.ticks if start <= t["t"] <= end]
        ticks = [t for t in inside if t["leader"]]  # an election has no leader to compare to
        out: dict[str, Any] = {"samples": len(inside), "interval_s": self.interval,
                               "max_down": max((t["down"] or 0 for t in inside), default=0),
                               "ever_down": len(self.ever_down), "followers": {}}
        out["leaders_seen"] = sorted({t["leader"] for t in ticks})
        ages = [t[t["leader"]]["heartbeat_age_max"] for t in ticks
                if "heartbeat_age_max" in t[t["leader"]]]
        out["heartbeat_age_max_s"] = round(max(ages, default=0.0), 2)
        # The highest Raft term any manager showed: above the first leader's, an election
        # took place (the same manager may have won it again).
        terms = [t[m.name]["shoal_raft_term"] for t in inside for m in self.cluster.managers
                 if "shoal_raft_term" in t.get(m.name, {})]
        out["min_term"], out["max_term"] = min(terms, default=0), max(terms, default=0)
        out["ticks_without_leader"] = len(inside) - len(ticks)
        scrapes = [s for t in ticks for name, s in t["scrape_s"].items() if name == t["leader"]]
        out["leader_scrape_s_max"] = round(max(scrapes, default=0.0), 3)
        # What watching cost the leader (wall time in its /metrics, which lists every task)
        out["leader_scrape_s_total"] = round(sum(scrapes), 2)
        for mgr in self.cluster.managers:
            lags, lag_ms = [], []
            for prev, tick in zip(ticks, ticks[1:], strict=False):
                lead = tick[tick["leader"]].get("shoal_raft_applied_index")
                mine = tick.get(mgr.name, {}).get("shoal_raft_applied_index")
                if tick["leader"] == mgr.name or lead is None or mine is None:
                    continue
                behind = max(0.0, lead - mine)
                before = prev[prev["leader"]].get("shoal_raft_applied_index", lead)
                rate = (lead - before) / max(tick["t"] - prev["t"], 1e-9)
                lags.append(behind)
                # Entries over rate is a time only while entries flow steadily: at a few
                # entries a second, one entry behind would read as hundreds of ms.
                if rate >= BUSY_RATE:
                    lag_ms.append(1000 * behind / rate)
            if lags:
                lags.sort()
                out["followers"][mgr.name] = {
                    "lag_entries_p50": lags[len(lags) // 2], "lag_entries_max": lags[-1],
                    "lag_ms_est_max": round(max(lag_ms), 1) if lag_ms else None}
        return out


def takeover(cluster: Cluster, fake_nodes: int, timeout: float, log: Any) -> dict[str, Any]:
    """SIGKILL of the leader; seconds until a survivor acknowledges a write, and until the
    new leader has every fake node's session and shows them all Ready."""
    old = cluster.leader()
    assert old.proc is not None
    survivors = [m for m in cluster.live() if m is not old]
    log(f"takeover: SIGKILL of the leader {old.name} (pid {old.proc.pid})")
    t0 = time.time()
    old.proc.kill()
    acked: dict[str, float] = {}
    errors: dict[str, int] = {}

    def write(mgr: ManagerProc) -> None:
        client = Client(f"unix://{mgr.socket}", timeout=WRITE_TIMEOUT)
        while not acked and time.time() - t0 < timeout:
            try:
                client.post("/services/create", {
                    "Name": f"takeover-{mgr.name}",
                    "TaskTemplate": {"ContainerSpec": {"Image": IMAGE}},
                    "Mode": {"Replicated": {"Replicas": 1}}})
                acked[mgr.name] = time.time() - t0
            except APIError:
                errors[mgr.name] = errors.get(mgr.name, 0) + 1
                time.sleep(0.05)

    writers = [threading.Thread(target=write, args=(m,), daemon=True) for m in survivors]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout + WRITE_TIMEOUT)
    if not acked:
        raise TimeoutError(f"no survivor acknowledged a write within {timeout} s")
    write_s = min(acked.values())
    log(f"  a write acknowledged {write_s:.2f} s after the kill")
    new: ManagerProc | None = None
    sessions_s: float | None = None
    ready_s = 0.0
    while time.time() - t0 < timeout:
        for mgr in survivors:
            gauges = scrape(mgr)
            if gauges.get("shoal_raft_leader") == 1:
                new = mgr
                if sessions_s is None and gauges.get("shoal_dispatcher_sessions", 0) >= fake_nodes:
                    sessions_s = time.time() - t0
        if new is not None and sessions_s is not None:
            ready = sum(1 for n in new.client.get("/nodes")
                        if n["ID"] not in cluster.ids() and n["Status"]["State"] == "ready")
            if ready >= fake_nodes:
                ready_s = time.time() - t0
                break
        time.sleep(0.2)
    else:
        raise TimeoutError(f"the new leader did not have every node Ready within {timeout} s")
    assert new is not None and sessions_s is not None
    log(f"  {new.name} leads; all {fake_nodes} sessions on it {sessions_s:.2f} s, all Ready "
        f"{ready_s:.2f} s after the kill")
    return {"killed": old.name, "new_leader": new.name, "write_acked_s": round(write_s, 2),
            "all_sessions_s": round(sessions_s, 2), "all_ready_s": round(ready_s, 2),
            "write_errors_before_ack": sum(errors.values())}
