"""Issue 3, items 7 and 9: rolling updates (batches, delay, start-first, failure actions,
rollback) and a leader killed in the middle of one."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from shoal import lab as labmod
from shoal.client import Client
from shoal.lab import LabState
from tests.system.conftest import wait_until
from tests.system.helpers import leader_host, shoal
from tests.system.svc import running, tasks

pytestmark = pytest.mark.system
V1, V2 = "shoal/busybox:v1", "shoal/busybox:v2"


def image_of(task: dict[str, Any]) -> str:
    return str(task["Spec"]["ContainerSpec"]["Image"])


def update_state(client: Client, name: str) -> dict[str, Any]:
    return dict(client.get(f"/services/{name}").get("UpdateStatus") or {})


class Watcher:
    """Samples the running tasks every 0.1 s while an update runs."""

    def __init__(self, client: Client, service: str) -> None:
        self.client, self.service = client, service
        self.samples: list[list[dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(running(self.client, self.service))
            except Exception:
                pass
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def first_seen(samples: list[list[dict[str, Any]]], ids: set[str]) -> dict[str, int]:
    seen: dict[str, int] = {}
    for index, sample in enumerate(samples):
        for t in sample:
            if t["ID"] in ids and t["ID"] not in seen:
                seen[t["ID"]] = index
    return seen


@pytest.mark.lab(managers=1, workers=2)
def test_rolling_update_batches_delay_and_start_first(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    assert shoal(m1, "service", "create", "-d", "--name", "web", "--replicas", "4",
                 "--update-parallelism", "2", "--update-delay", "4s", V1,
                 "sleep", "3600").returncode == 0
    wait_until(lambda: len(running(client, "web")) == 4, 60, "4 running")
    watch = Watcher(client, "web")
    out = shoal(m1, "service", "update", "--image", V2, "web")  # waits for convergence
    watch.stop()
    assert out.returncode == 0, out.stdout + out.stderr
    new = [t for t in running(client, "web") if image_of(t) == V2]
    assert len(new) == 4
    seen = first_seen(watch.samples, {t["ID"] for t in new})
    by_slot = sorted(new, key=lambda t: t["Slot"])
    batch1, batch2 = by_slot[:2], by_slot[2:]  # lowest slots first
    last_of_1 = max(seen[t["ID"]] for t in batch1)
    first_of_2 = min(seen[t["ID"]] for t in batch2)
    gap = (first_of_2 - last_of_1) * 0.1
    assert gap >= 3.5, f"second batch started {gap:.1f} s after the first ran; delay is 4 s"
    wait_until(lambda: update_state(client, "web").get("State") == "completed", 30,
               "the update marked completed")

    # start-first: never fewer running than replicas
    assert shoal(m1, "service", "update", "-d", "--update-order", "start-first",
                 "--update-parallelism", "1", "--update-delay", "0s", "web").returncode == 0
    watch = Watcher(client, "web")
    assert shoal(m1, "service", "update", "--force", "web").returncode == 0
    watch.stop()
    assert min(len(s) for s in watch.samples) >= 4, [len(s) for s in watch.samples]
    assert len(running(client, "web")) == 4

    # service rollback returns to the previous spec (before --force: still V2)
    assert shoal(m1, "service", "update", "-d", "--image", V1, "web").returncode == 0
    wait_until(lambda: {image_of(t) for t in running(client, "web")} == {V1} and
               len(running(client, "web")) == 4, 60, "all on v1")
    out = shoal(m1, "service", "rollback", "web")
    assert out.returncode == 0, out.stdout + out.stderr
    wait_until(lambda: {image_of(t) for t in running(client, "web")} == {V2}, 60, "back on v2")
    wait_until(lambda: update_state(client, "web").get("State") == "rollback_completed", 30,
               "the rollback marked completed (after its monitor period)")


@pytest.mark.lab(managers=1, workers=1)
def test_failed_update_rolls_back_or_pauses_with_the_reason(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    for name in ("rb", "pz"):
        assert shoal(m1, "service", "create", "-d", "--name", name, "--replicas", "2",
                     "--update-monitor", "3s", V1, "sleep", "3600").returncode == 0
    wait_until(lambda: all(len(running(client, n)) == 2 for n in ("rb", "pz")), 60, "running")
    out = shoal(m1, "service", "update", "--update-failure-action", "rollback", "--args",
                "sh -c 'exit 1'", "rb")
    # like the docker CLI: it reports the rollback and waits for the old spec to converge
    assert "rollback: update rolled back" in out.stdout, out.stdout + out.stderr
    state = wait_until(lambda: (u := update_state(client, "rb")).get("State") ==
                       "rollback_completed" and u, 90, "the update rolled back")
    assert "update rolled back due to failure" in state["Message"], state
    spec = client.get("/services/rb")["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert spec["Args"] == ["sleep", "3600"]
    wait_until(lambda: len(running(client, "rb")) == 2 and
               all(t["Spec"]["ContainerSpec"]["Args"] == ["sleep", "3600"]
                   for t in running(client, "rb")), 60, "old spec running again")

    out = shoal(m1, "service", "update", "--update-failure-action", "pause", "--args",
                "sh -c 'exit 1'", "pz")
    assert out.returncode != 0 and "paused" in (out.stdout + out.stderr)
    state = update_state(client, "pz")
    assert state["State"] == "paused" and state["Message"], state
    inspect = shoal(m1, "service", "inspect", "pz")
    assert '"paused"' in inspect.stdout


@pytest.mark.lab(managers=3, workers=2)
def test_leader_killed_mid_update_new_leader_finishes(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    for host in ("m1", "m2", "m3"):
        assert shoal(m1, "node", "update", "--availability", "drain", host).returncode == 0
    assert shoal(m1, "service", "create", "-d", "--name", "web", "--replicas", "6",
                 "--update-parallelism", "1", "--update-delay", "2s", V1,
                 "sleep", "3600").returncode == 0
    wait_until(lambda: len(running(client, "web")) == 6, 90, "6 running")
    assert shoal(m1, "service", "update", "-d", "--image", V2, "web").returncode == 0
    wait_until(lambda: sum(image_of(t) == V2 for t in running(client, "web")) >= 2, 60,
               "the update under way")
    old = leader_host(lab)
    labmod.kill_host(lab.name, old.name)
    survivor = next(h for h in lab.hosts if h.role == "manager" and h.name != old.name)
    other = survivor.client()

    def finished() -> bool:
        try:
            run = running(other, "web")
            return len(run) == 6 and {image_of(t) for t in run} == {V2}
        except Exception:
            return False

    wait_until(finished, 120, "the new leader to finish the update")
    slots = [t["Slot"] for t in running(other, "web")]
    assert sorted(slots) == [1, 2, 3, 4, 5, 6], slots  # one running task per slot
    time.sleep(3)  # and it stays that way
    slots = [t["Slot"] for t in running(other, "web")]
    assert sorted(slots) == [1, 2, 3, 4, 5, 6], slots
    assert len([t for t in tasks(other, "web") if t["DesiredState"] == "running"]) == 6
