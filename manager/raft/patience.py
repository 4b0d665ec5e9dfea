"""How much longer than its election timeout a follower waits for a leader that says it is
short of CPU.

A leader's heartbeats go out from its tick thread; on an overloaded manager that thread
waits for a CPU and the interpreter, up to 2.3 s in bench/scale_sim.py's 3-manager runs on 2
cores, against followers that stand after 0.5-1.0 s of silence. Every such wait deposed a
leader that was alive, and at 5,000 nodes the leadership changed 60 times in 4 minutes.
So a leader tells its followers how late it has recently been (twice its longest tick gap
of the last WINDOW seconds, when that was over a quarter of the election timeout's minimum,
at most MAX), and a follower adds that to its timeout after each of that leader's
AppendEntries. A leader that is well says 0 and failover keeps its speed; one that is dead
or cut off stays silent, and is replaced after at most the timeout plus the last patience
it asked for. Election timeouts only pace Raft's liveness, never its safety.
"""

from __future__ import annotations

WINDOW = 30.0  # seconds of tick gaps a leader's patience is drawn from
MAX = 3.0  # seconds: the most a leader asks (its fallback, when it steps down, is 3 s)
MESSAGE = "shoal_patience"  # an extra Raft message type (pysyncobj ignores unknown types)


def patience_for(longest_gap: float, election_min: float) -> float:
    """The extra wait a leader asks of its followers, from its longest recent tick gap."""
    if longest_gap <= election_min / 4:
        return 0.0
    return round(min(MAX, 2 * longest_gap), 2)


class RecentMax:
    """The largest value seen in about the last `window` seconds (two half-window buckets)."""

    def __init__(self, window: float = WINDOW) -> None:
        self._half = window / 2
        self._start = 0.0
        self._current = self._previous = 0.0

    def add(self, value: float, now: float) -> None:
        self._roll(now)
        self._current = max(self._current, value)

    def get(self, now: float) -> float:
        self._roll(now)
        return max(self._current, self._previous)

    def _roll(self, now: float) -> None:
        if now - self._start < self._half:
            return
        # One half-window on: the current bucket becomes the previous; two: both are old.
        self._previous = self._current if now - self._start < 2 * self._half else 0.0
        self._current = 0.0
        self._start = now
