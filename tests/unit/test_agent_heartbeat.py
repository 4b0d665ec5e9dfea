"""When a failed heartbeat makes a node reopen its session with the leader (pure)."""

from __future__ import annotations

import grpc

from worker.agent import GIVE_UP_PERIODS, keeps_session

BUSY = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
LOST = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED)


def test_a_late_answer_keeps_the_session_with_a_busy_leader() -> None:
    for code in BUSY:
        assert keeps_session(code, unanswered=40.0, period=20.0)
        assert keeps_session(code, unanswered=GIVE_UP_PERIODS * 5.0 - 0.1, period=5.0)


def test_a_leader_silent_for_the_give_up_time_loses_the_session() -> None:
    for code in BUSY:
        assert not keeps_session(code, unanswered=GIVE_UP_PERIODS * 5.0, period=5.0)


def test_a_session_the_leader_does_not_know_or_a_lost_connection_is_reopened_at_once() -> None:
    for code in LOST:
        assert not keeps_session(code, unanswered=0.0, period=5.0)
