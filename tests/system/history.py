"""A history of client operations against every manager of a lab, for fault tests.

Writer threads (one per manager host, bounded in count and time) write through that
manager's HTTP API, alternating two kinds of operation:
- `create`: a service with a unique name and no replicas (`<prefix>-<host>-<n>`);
- `label`: compare-and-set of the label `ctr.<host>` = n on one shared counter service
  (read it from the same manager, write the spec back with `?version=` of that read).
Each operation is recorded with its manager, start and end (time.monotonic()) and outcome:
- ok: acknowledged (2xx): it must never be lost;
- fail: a clear error (an HTTP error status, or the socket refused the connection, so the
  request was never delivered): it must never take effect;
- unknown: a timeout or a dropped connection, or a 503 saying the outcome is unknown (the
  manager lost its majority with the proposal in flight): it may or may not have taken
  effect.
The reads done before each compare-and-set are recorded as well (a failed write must never
be visible to any read). `tests/system/invariants.py` checks a history against the lab.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal.client import APIError, Client, ConnectionFailed
from shoal.lab import HostState

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"
CREATE, LABEL = "create", "label"
COUNTER_PREFIX = "ctr."
IMAGE = "shoal/busybox:latest"


@dataclass(frozen=True)
class Op:
    kind: str  # CREATE or LABEL
    manager: str  # the lab host whose API was called
    target: str  # the service name (create) or the label key (label)
    value: int  # the label's counter value (label); the writer's sequence number (create)
    start: float
    end: float
    outcome: str  # OK, FAIL or UNKNOWN
    status: int = 0  # the HTTP status, 0 when there was no answer
    detail: str = ""

    @property
    def duration(self) -> float:
        return self.end - self.start

    def describe(self) -> str:
        return (f"{self.kind} {self.target}={self.value} via {self.manager} "
                f"[{self.start:.2f}..{self.end:.2f}] {self.outcome} {self.status} "
                f"{self.detail[:120]}")


@dataclass(frozen=True)
class Read:
    manager: str
    at: float
    version: int
    labels: dict[str, str]


@dataclass(frozen=True)
class ReadError:
    manager: str
    start: float
    end: float
    detail: str


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    read_errors: list[ReadError] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, item: Op | Read | ReadError) -> None:
        with self._lock:
            if isinstance(item, Op):
                self.ops.append(item)
            elif isinstance(item, Read):
                self.reads.append(item)
            else:
                self.read_errors.append(item)

    def select(self, kind: str | None = None, outcome: str | None = None,
               manager: str | None = None) -> list[Op]:
        with self._lock:
            ops = list(self.ops)
        return [op for op in ops if (kind is None or op.kind == kind) and
                (outcome is None or op.outcome == outcome) and
                (manager is None or op.manager == manager)]

    def summary(self) -> str:
        """Counts by manager and outcome, and the slowest answer of each outcome."""
        ops = self.select()
        counts = Counter((op.manager, op.kind, op.outcome) for op in ops)
        lines = [f"{len(ops)} ops, {len(self.reads)} reads"]
        lines += [f"  read failed on {e.manager} after {e.end - e.start:.2f} s: {e.detail[:100]}"
                  for e in self.read_errors]
        lines += [f"  {m} {k} {o}: {n}" for (m, k, o), n in sorted(counts.items())]
        for outcome in (OK, FAIL, UNKNOWN):
            durations = [op.duration for op in ops if op.outcome == outcome]
            if durations:
                lines.append(f"  {outcome}: max {max(durations):.2f} s")
        return "\n".join(lines)


def timed(history: History, kind: str, manager: str, target: str, value: int,
          call: Callable[[], Any]) -> Op:
    """Run one write, record it with its outcome, and return the record."""
    start = time.monotonic()
    try:
        call()
        outcome, status, detail = OK, 200, ""
    except APIError as exc:
        outcome, status, detail = classify(exc)
    op = Op(kind, manager, target, value, start, time.monotonic(), outcome, status, detail)
    history.record(op)
    return op


def classify(exc: APIError) -> tuple[str, int, str]:
    if not isinstance(exc, ConnectionFailed):
        # A manager that lost its majority with the proposal in flight says it can't know.
        uncertain = exc.status == 503 and "outcome is unknown" in exc.message
        return (UNKNOWN if uncertain else FAIL), exc.status, exc.message
    # Refused or no socket: the request never reached the daemon. Anything else (a timeout,
    # a reset, a closed connection) may have come after the daemon acted on it.
    never_sent = isinstance(exc.__cause__, (ConnectionRefusedError, FileNotFoundError))
    return (FAIL if never_sent else UNKNOWN), 0, exc.message


def service_body(name: str, replicas: int = 0,
                 labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"Name": name, "Labels": labels or {},
            "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Args": ["sleep", "3600"]}},
            "Mode": {"Replicated": {"Replicas": replicas}}}


@dataclass
class WriterConfig:
    prefix: str  # service names are <prefix>-<host>-<n>
    counter_id: str  # the shared counter service
    timeout: float = 15.0  # per request: longer than the manager's own proposal deadline
    pause: float = 0.25  # between two operations of one writer
    max_ops: int = 400  # per writer
    max_seconds: float = 180.0  # per writer


class Writers:
    """One writer thread per given manager host, until stop() or its count/time bound."""

    def __init__(self, hosts: Sequence[HostState], history: History,
                 config: WriterConfig) -> None:
        self.history, self.config = history, config
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(h,), daemon=True,
                                           name=f"writer-{h.name}") for h in hosts]

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop and join every writer (each finishes its request in flight first)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.config.timeout * 2 + 5)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"writers did not stop: {alive}"

    def _run(self, host: HostState) -> None:
        cfg = self.config
        client = Client(host.api, timeout=cfg.timeout)
        deadline = time.monotonic() + cfg.max_seconds
        for n in range(1, cfg.max_ops + 1):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            if n % 2:
                self._create(client, host.name, n)
            else:
                self._bump(client, host.name, n)
            self._stop.wait(cfg.pause)

    def _create(self, client: Client, manager: str, n: int) -> None:
        name = f"{self.config.prefix}-{manager}-{n}"
        timed(self.history, CREATE, manager, name, n,
              lambda: client.post("/services/create", service_body(name)))

    def _bump(self, client: Client, manager: str, n: int) -> None:
        """Compare-and-set `ctr.<manager>` = n on the counter service, as read just before."""
        start = time.monotonic()
        try:
            svc = client.get(f"/services/{self.config.counter_id}")
        except APIError as exc:  # no read, no write; kept to show in the summary
            self.history.record(ReadError(manager, start, time.monotonic(), exc.message))
            return
        version, spec = svc["Version"]["Index"], svc["Spec"]
        labels = dict(spec.get("Labels") or {})
        self.history.record(Read(manager, time.monotonic(), version, labels))
        spec["Labels"] = labels | {COUNTER_PREFIX + manager: str(n)}
        timed(self.history, LABEL, manager, COUNTER_PREFIX + manager, n,
              lambda: client.post(f"/services/{self.config.counter_id}/update", spec,
                                  version=version))
