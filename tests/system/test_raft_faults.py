"""Issue 7 fault tests: a follower's Raft journal cut short while it is stopped, and a demoted
manager's old certificate used against the Raft and control endpoints."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from shoal import lab as labmod
from shoal.client import APIError
from shoal.lab import HostState, LabState
from tests.system import svc
from tests.system.conftest import wait_until
from tests.system.helpers import by_hostname, leader_host, shoal

pytestmark = pytest.mark.system
PROBE = str(Path(__file__).with_name("grpc_probe.py"))
ROOT = str(Path(__file__).resolve().parents[2])


def _services(host: HostState) -> dict[str, int] | None:
    try:
        listed = host.client(timeout=3).get("/services")
    except APIError:
        return None
    return {s["Spec"]["Name"]: s["Version"]["Index"] for s in listed}


def _cut_records(journal: Path, cut: int) -> None:
    """Cut `cut` bytes off the journal's records. (pysyncobj grows the file by doubling, so
    `truncate -s -7` usually removes only zero padding, which loses nothing; the fault run
    that went wrong had its last record cut.)"""
    end = struct.unpack("<I", journal.read_bytes()[36:40])[0]
    with open(journal, "r+b") as f:
        f.truncate(end - cut)


def _run_until_exit(host: HostState, timeout: float) -> tuple[int, str, list[str]]:
    """Start the host's shoald in its namespace; until it exits, ask its API for /_ping.
    Returns its exit status, its output and the answers it gave."""
    proc = subprocess.Popen(["ip", "netns", "exec", host.namespace, *host.argv],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    answers: list[str] = []

    def exited() -> bool:
        try:
            answers.append(str(host.client(timeout=0.5).get("/_ping")))
        except APIError:
            pass
        return proc.poll() is not None

    try:
        wait_until(exited, timeout, f"{host.name}'s shoald to refuse its damaged journal")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        reader.join(5)
    return proc.returncode, "".join(out), answers


@pytest.mark.lab(managers=3, workers=0)
def test_a_follower_with_a_journal_cut_short_refuses_to_start_and_recovers(
        lab: LabState) -> None:
    leader = leader_host(lab)
    follower = next(h for h in lab.hosts if h.name != leader.name)
    svc.create(leader.client(), svc.spec("before", replicas=0))
    wait_until(lambda: "before" in (_services(follower) or {}), 20, "the follower to catch up")
    labmod.stop_host(lab.name, follower.name)
    svc.create(leader.client(), svc.spec("while-down", replicas=0))

    journal = Path(follower.data_root) / "raft" / "journal.bin"
    _cut_records(journal, 7)
    status, output, answers = _run_until_exit(follower, 15)
    print(output)
    assert status != 0
    assert str(journal) in output and "cut short" in output
    assert f"shoald --data-root {follower.data_root} --reset-raft-state" in output
    assert answers == [] and "shoald ready" not in output
    assert "Traceback" not in output

    reset = subprocess.run([*follower.argv[:3], "--reset-raft-state"], capture_output=True,
                           text=True, timeout=60)
    assert reset.returncode == 0 and "journal.bin" in reset.stdout, reset.stderr
    assert (Path(follower.data_root) / "raft" / "keys").exists()  # the Raft secret and data key
    labmod.start_host(lab.name, follower.name)
    wanted = _services(leader)
    assert wanted is not None and set(wanted) == {"before", "while-down"}
    wait_until(lambda: _services(follower) == wanted, 30, "the follower to catch up again")
    # it is a working member again: a write through it is committed everywhere
    svc.create(follower.client(), svc.spec("after", replicas=0))
    for host in lab.hosts:
        wait_until(lambda h=host: "after" in (_services(h) or {}), 20, f"{host.name} to see it")
    assert "Traceback" not in Path(follower.log_file).read_text(errors="replace")


def _probe(lab: LabState, host: HostState, target: HostState, method: str,
           certdir: Path) -> str:
    out = labmod.exec_in(lab.name, host.name,
                         [sys.executable, PROBE, f"{target.address}:2377", "node", method,
                          str(certdir)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


class LeaderWatch:
    """Reads `node ls` from every live manager in the background and keeps the largest
    number of nodes any one answer showed as leader."""

    def __init__(self, lab: LabState, names: list[str]) -> None:
        self.hosts = [lab.host(n) for n in names]
        self.most = 0
        self.seen: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LeaderWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for host in self.hosts:
                try:
                    listed = by_hostname(host.client(timeout=2))
                except APIError:
                    continue
                leaders = [n for n, node in listed.items()
                           if node.get("ManagerStatus", {}).get("Leader")]
                if len(leaders) > self.most:
                    self.most, self.seen = len(leaders), [host.name, leaders]


@pytest.mark.lab(managers=3, workers=0)
def test_a_demoted_managers_old_certificate_is_refused(lab: LabState,
                                                       tmp_path: Path) -> None:
    leader = leader_host(lab)
    demoted = next(h for h in lab.hosts if h.name != leader.name)
    others = [h for h in lab.hosts if h.name != demoted.name]
    old_certs = tmp_path / "old-certificates"
    shutil.copytree(Path(demoted.data_root) / "certificates", old_certs)
    # the copy is a manager's certificate that works today (an empty selector selects
    # nothing: past the authorisation, the call answers NOT_FOUND)
    before = _probe(lab, demoted, leader, "logs", old_certs)
    assert before.startswith("NOT_FOUND no task"), before

    with LeaderWatch(lab, [h.name for h in others]) as watch:
        out = shoal(leader, "node", "demote", demoted.name)
        assert out.returncode == 0, out.stderr
        wait_until(lambda: "ManagerStatus" not in by_hostname(leader.client())[demoted.name]
                   and by_hostname(leader.client())[demoted.name]["Spec"]["Role"] == "worker",
                   30, f"{demoted.name} to be a worker")
        for target in others:
            for method in ("raftjoin", "logs"):
                answer = _probe(lab, demoted, target, method, old_certs)
                assert answer.startswith("PERMISSION_DENIED"), (target.name, method, answer)
                assert demoted.node_id in answer and "worker now" in answer, answer
        # the refused join wrote nothing: still a worker without manager status, 2 members
        for host in others:
            listed = by_hostname(host.client())
            assert "ManagerStatus" not in listed[demoted.name]
            assert sum(1 for n in listed.values() if "ManagerStatus" in n) == 2
        # a worker's calls still work with the certificate it has now
        wait_until(lambda: by_hostname(leader.client())[demoted.name]["Status"]["State"]
                   == "ready", 30, f"{demoted.name} ready as a worker")
    assert watch.most == 1, watch.seen
