"""manager/raft/patience.py: what a leader short of CPU asks of its followers."""

from __future__ import annotations

from manager.raft.patience import MAX, RecentMax, patience_for


def test_a_leader_that_keeps_time_asks_for_nothing() -> None:
    assert patience_for(0.005, 0.5) == 0.0
    assert patience_for(0.125, 0.5) == 0.0  # a quarter of the minimum timeout


def test_a_late_leader_asks_twice_its_longest_gap_up_to_the_most() -> None:
    assert patience_for(0.4, 0.5) == 0.8
    assert patience_for(0.87, 0.5) == 1.74
    assert patience_for(5.0, 0.5) == MAX


def test_recent_max_forgets_after_a_window() -> None:
    gaps = RecentMax(window=30.0)
    gaps.add(0.9, now=100.0)
    gaps.add(0.1, now=101.0)
    assert gaps.get(now=110.0) == 0.9
    assert gaps.get(now=120.0) == 0.9  # in the previous half-window
    gaps.add(0.2, now=121.0)
    assert gaps.get(now=125.0) == 0.9
    assert gaps.get(now=136.0) == 0.2  # 0.9 is two half-windows old
    assert gaps.get(now=200.0) == 0.0  # two half-windows on: all old
