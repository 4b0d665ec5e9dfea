"""The manager's event metrics: what is counted or timed where it happens (a store write, a
scheduler pass). The cluster's state (nodes, tasks, services, Raft) is not kept here: it is
read from the store when Prometheus scrapes (shoal/metrics/).

The instruments live in the registry of the node that owns them (one per shoald, so
several nodes in one test process never share a series)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

# Raft commits take 1-3 ms on a quiet cluster (bench/store_bench.py) and up to the
# proposal deadline (10 s) when the managers lose their quorum.
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                 10.0)


@dataclass(frozen=True)
class ManagerInstruments:
    store_write_seconds: Histogram
    scheduler_decisions: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> ManagerInstruments:
        """Instruments registered in `registry` (a private one when None: a manager made
        by a test without a node)."""
        registry = registry if registry is not None else CollectorRegistry()
        return cls(
            Histogram("shoal_store_write_duration_seconds",
                      "Time from proposing a store batch to its commit and apply through "
                      "Raft, as seen by the proposing manager.",
                      ["outcome"], buckets=WRITE_BUCKETS, registry=registry),
            Counter("shoal_scheduler_decisions_total",
                    "Pending tasks decided by the scheduler: assigned to a node, or left "
                    "pending because no node fits (counted at every pass that decides it).",
                    ["decision"], registry=registry),
        )

    def decided(self, assigned: int, unplaceable: int) -> None:
        if assigned:
            self.scheduler_decisions.labels("assigned").inc(assigned)
        if unplaceable:
            self.scheduler_decisions.labels("unplaceable").inc(unplaceable)
