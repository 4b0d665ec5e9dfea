"""Issue 3, item 10: `service logs` returns each task's output prefixed with the task name
and node, includes tasks that have exited, and `-f` follows new tasks as they start."""

from __future__ import annotations

import re
import subprocess
import threading

import pytest

from shoal.lab import LabState
from tests.system.conftest import wait_until
from tests.system.helpers import SHOAL, shoal
from tests.system.svc import create, spec, tasks

pytestmark = pytest.mark.system
PREFIX = re.compile(r"^chat\.(\d+)\.([0-9a-z]{12})@(m1|w1|w2)    \| (.*)$")
SCRIPT = "echo hello from $(hostname); sleep 2; echo bye; exit 0"


@pytest.mark.lab(managers=1, workers=2)
def test_service_logs_prefixes_exited_tasks_and_follows(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    create(client, spec("chat", ["sh", "-c", SCRIPT], replicas=2,
                        RestartPolicy={"Condition": "any", "Delay": 1_000_000_000}))
    wait_until(lambda: sum(t["Status"]["State"] == "complete"
                           for t in tasks(client, "chat")) >= 2, 60, "two tasks that exited")
    out = shoal(m1, "service", "logs", "chat")
    assert out.returncode == 0, out.stderr
    lines = [PREFIX.match(line) for line in out.stdout.splitlines()]
    assert lines and all(lines), out.stdout
    by_task: dict[str, list[str]] = {}
    for m in lines:
        assert m is not None
        by_task.setdefault(m.group(2), []).append(m.group(4))
    finished = [t for t in tasks(client, "chat") if t["Status"]["State"] == "complete"]
    for task in finished:  # exited tasks' output is there, in order
        said = by_task.get(task["ID"][:12])
        assert said is not None and said[0].startswith("hello from") and said[-1] == "bye", (
            task["ID"], by_task)

    # follow: lines of tasks that start after the command began
    seen_before = {t["ID"][:12] for t in tasks(client, "chat")}
    proc = subprocess.Popen([SHOAL, "-H", m1.api, "service", "logs", "-f", "chat"],
                            stdout=subprocess.PIPE, text=True)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        def new_task_spoke() -> bool:
            ids = {m.group(2) for line in list(got) if (m := PREFIX.match(line.rstrip("\n")))}
            return bool(ids - seen_before)

        wait_until(new_task_spoke, 30, "output of a task started after `logs -f`")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
