"""Executors: the container engine as the worker sees it (base.Executor)."""

from __future__ import annotations

from worker.executor.base import Executor

DEFAULT_ENGINE = "unix:///var/run/docker.sock"
KINDS = ("docker", "fake")


def make_executor(kind: str = "docker", engine: str = DEFAULT_ENGINE) -> Executor:
    """`docker`: the Docker Engine API at `engine` (unix:///PATH); `fake`: scripted by task
    labels (tests, benchmarks)."""
    if kind == "fake":
        from worker.executor.fake import FakeExecutor

        return FakeExecutor()
    if kind == "docker":
        from worker.executor.docker.executor import DockerExecutor  # docker-py lives there

        return DockerExecutor(engine)
    raise ValueError(f"unknown executor {kind!r}: use one of {', '.join(KINDS)}")
