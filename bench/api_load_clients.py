"""The load of bench/api_load.py: listing clients, one writer, and a rolling updater, each a
thread speaking HTTP/1.1 to the leader's API socket, and the figures made from what they saw.

- Lister: loops `GET /services?status=true` (what `docker service ls` sends) and
  `GET /tasks?filters={"service":{"<name>":true}}` (what `docker service ps` sends, the
  CLI's filter form) for a random service, one after the other, on one kept connection (as
  the docker CLI and docker-py keep theirs) or, with `keep_alive=False`, a new connection per
  request. A response body is read whole, not parsed (the client's cost stays small).
- Writer: sequential small writes, each a service update of a label on a service of its own
  (0 replicas): `GET /services/{id}` for the version, then the timed
  `POST /services/{id}/update?version=N`.
- Updater: keeps a rolling update running on the chosen services (`--force` with the given
  parallelism and delay, as `docker service update --force --update-parallelism P
  --update-delay D` sends it): when one completes, the next starts.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from shoal.client import UnixConnection


class Conn:
    """One client's connection: kept, or new per request."""

    def __init__(self, path: str, keep_alive: bool, timeout: float = 60.0) -> None:
        self.path, self.keep_alive, self.timeout = path, keep_alive, timeout
        self._conn: UnixConnection | None = None

    def request(self, method: str, url: str, body: Any = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = UnixConnection(self.path, self.timeout)
            try:
                self._conn.request(method, url, body=data, headers=headers)
                resp = self._conn.getresponse()
                out = resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue  # a kept connection the server closed meanwhile: once more
            if not self.keep_alive:
                self.close()
            return out
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def q(path: str, **params: str) -> str:
    return path + ("?" + urllib.parse.urlencode(params) if params else "")


class Load:
    """Every thread of the load and what each request took: (endpoint, start, seconds,
    status, bytes)."""

    def __init__(self, socket_path: str, service_names: list[str], clients: int,
                 keep_alive: bool, list_sockets: Sequence[str] = ()) -> None:
        self.socket_path, self.names = socket_path, service_names
        # The listers' managers, round robin (the writers stay on socket_path, the leader).
        self.list_sockets = list(list_sockets) or [socket_path]
        self.clients, self.keep_alive = clients, keep_alive
        self.stop = threading.Event()
        self.records: list[tuple[str, float, float, int, int, int]] = []
        self.writes: list[tuple[float, float, int]] = []  # start, seconds, status
        self.errors: list[str] = []
        self.updates: list[dict[str, Any]] = []
        self.threads: list[threading.Thread] = []

    # -- listers --

    def lister(self, seed: int) -> None:
        rnd = random.Random(seed)
        target = seed % len(self.list_sockets)
        conn = Conn(self.list_sockets[target], self.keep_alive)
        services = q("/services", status="true")
        mine: list[tuple[str, float, float, int, int, int]] = []
        try:
            while not self.stop.is_set():
                name = rnd.choice(self.names)
                tasks = q("/tasks", filters=json.dumps({"service": {name: True}}))
                for endpoint, url in (("services", services), ("tasks", tasks)):
                    began = time.monotonic()
                    status, body = conn.request("GET", url)
                    mine.append((endpoint, time.time(), time.monotonic() - began, status,
                                 len(body), target))
        except Exception as err:  # noqa: BLE001 (counted and reported, the run goes on)
            self.errors.append(f"lister {seed}: {err!r}")
        finally:
            conn.close()
            self.records.extend(mine)

    # -- the writer --

    def writer(self, service_id: str, interval: float) -> None:
        conn = Conn(self.socket_path, True)
        seq = 0
        try:
            while not self.stop.is_set():
                status, body = conn.request("GET", f"/services/{service_id}")
                svc = json.loads(body)
                spec = svc["Spec"]
                seq += 1
                spec["Labels"] = {**spec.get("Labels", {}), "apiload.seq": str(seq)}
                began = time.monotonic()
                status, body = conn.request(
                    "POST", q(f"/services/{service_id}/update",
                              version=str(svc["Version"]["Index"])), spec)
                self.writes.append((time.time(), time.monotonic() - began, status))
                if status != 200:
                    self.errors.append(f"write {seq}: {status} {body[:200]!r}")
                self.stop.wait(interval)
        except Exception as err:  # noqa: BLE001
            self.errors.append(f"writer: {err!r}")
        finally:
            conn.close()

    # -- the rolling updater --

    def updater(self, service_ids: list[str], parallelism: int, delay_s: float,
                poll: float = 0.5) -> None:
        conn = Conn(self.socket_path, True)
        running: dict[str, dict[str, Any]] = {}
        try:
            while not self.stop.is_set():
                for sid in service_ids:
                    svc = json.loads(conn.request("GET", f"/services/{sid}")[1])
                    state = (svc.get("UpdateStatus") or {}).get("State")
                    current = running.get(sid)
                    if current is not None and state in (None, "updating"):
                        continue
                    if current is not None:
                        current.update(state=state, end=time.time())
                        self.updates.append(current)
                    running[sid] = self._force(conn, svc, parallelism, delay_s)
                self.stop.wait(poll)
        except Exception as err:  # noqa: BLE001
            self.errors.append(f"updater: {err!r}")
        finally:
            for sid, current in running.items():
                current.update(state="running at the end", end=time.time(),
                               replaced=self._replaced(conn, sid))
                self.updates.append(current)
            conn.close()

    def _replaced(self, conn: Conn, service_id: str) -> int | None:
        """Tasks of the service running on its current spec."""
        filters = {"service": {service_id: True}, "_up-to-date": {"true": True},
                   "desired-state": {"running": True}}
        try:
            status, body = conn.request("GET", q("/tasks", filters=json.dumps(filters)))
        except (OSError, http.client.HTTPException):
            return None
        if status != 200:
            return None
        return sum(1 for t in json.loads(body) if t["Status"]["State"] == "running")

    def _force(self, conn: Conn, svc: dict[str, Any], parallelism: int,
               delay_s: float) -> dict[str, Any]:
        spec = svc["Spec"]
        template = spec["TaskTemplate"]
        template["ForceUpdate"] = template.get("ForceUpdate", 0) + 1
        spec["UpdateConfig"] = {"Parallelism": parallelism, "Delay": int(delay_s * 1e9),
                                "FailureAction": "pause", "Monitor": 1_000_000_000,
                                "MaxFailureRatio": 0, "Order": "stop-first"}
        status, body = conn.request(
            "POST", q(f"/services/{svc['ID']}/update", version=str(svc["Version"]["Index"])),
            spec)
        if status != 200:
            raise RuntimeError(f"rolling update of {svc['ID']}: {status} {body[:200]!r}")
        return {"service": svc["Spec"]["Name"], "start": time.time(),
                "replicas": spec["Mode"].get("Replicated", {}).get("Replicas", 0)}

    # -- running it --

    def start(self, writer_id: str, update_ids: list[str], parallelism: int, delay_s: float,
              write_interval: float) -> None:
        self.threads = [threading.Thread(target=self.lister, args=(i,), daemon=True)
                        for i in range(self.clients)]
        self.threads.append(threading.Thread(target=self.writer,
                                             args=(writer_id, write_interval), daemon=True))
        if update_ids:
            self.threads.append(threading.Thread(
                target=self.updater, args=(update_ids, parallelism, delay_s), daemon=True))
        for t in self.threads:
            t.start()

    def finish(self, timeout: float = 120.0) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        alive = sum(t.is_alive() for t in self.threads)
        if alive:
            raise RuntimeError(f"{alive} load threads still busy {timeout:.0f} s after the end")


# ---- figures ---------------------------------------------------------------------------

def pct(sorted_values: list[float], q_: float) -> float:
    """Nearest rank of sorted values."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q_ * len(sorted_values)))]


def latency(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {"count": len(s), "p50_ms": round(1000 * pct(s, 0.5), 1),
            "p95_ms": round(1000 * pct(s, 0.95), 1), "p99_ms": round(1000 * pct(s, 0.99), 1),
            "max_ms": round(1000 * s[-1], 1) if s else 0.0}


def figures(load: Load, start: float, end: float) -> dict[str, Any]:
    """Per endpoint and for the writer, over the requests that began inside [start, end]."""
    span = max(end - start, 1e-9)
    out: dict[str, Any] = {"endpoints": {}}
    for endpoint in ("services", "tasks"):
        rows = [r for r in load.records if r[0] == endpoint and start <= r[1] - r[2] <= end]
        ok = [r for r in rows if r[3] == 200]
        out["endpoints"][endpoint] = latency([r[2] for r in ok]) | {
            "requests_per_s": round(len(ok) / span, 1), "errors": len(rows) - len(ok),
            "bytes_mean": round(sum(r[4] for r in ok) / len(ok)) if ok else 0}
    if len(load.list_sockets) > 1:  # both lists together, per manager (0: the leader)
        listed = [r for r in load.records if start <= r[1] - r[2] <= end and r[3] == 200]
        out["by_manager"] = {str(i): latency([r[2] for r in listed if r[5] == i]) | {
            "requests_per_s": round(sum(1 for r in listed if r[5] == i) / span, 1)}
            for i in range(len(load.list_sockets))}
    writes = [w for w in load.writes if start <= w[0] - w[1] <= end]
    ok_writes = [w[1] for w in writes if w[2] == 200]
    out["writer"] = latency(ok_writes) | {
        "writes_per_s": round(len(ok_writes) / span, 1), "errors": len(writes) - len(ok_writes),
        "over_1s": sum(1 for w in ok_writes if w > 1.0),
        "stall_max_ms": round(1000 * max(ok_writes, default=0.0), 1)}
    done = [u for u in load.updates if u["state"] == "completed"]
    out["rolling_updates"] = {
        "started": len(load.updates), "completed": len(done),
        "tasks_replaced_in_completed": sum(u["replicas"] for u in done),
        "duration_s": [round(u["end"] - u["start"], 1) for u in load.updates],
        "unfinished_tasks_replaced": [f"{u['replaced']} of {u['replicas']}"
                                      for u in load.updates if "replaced" in u],
        "states": sorted({str(u["state"]) for u in load.updates})}
    out["errors"] = load.errors[:20]
    out["error_count"] = len(load.errors)
    return out
