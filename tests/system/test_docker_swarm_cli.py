"""Issue 9 item 2: the real docker CLI's `swarm` and `node` commands against a Shoal lab:
what each prints, that the settings land in the swarm and take effect, and autolock."""

from __future__ import annotations

import base64
import datetime
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import pki
from pki import sealing
from shoal import lab as labmod
from shoal.lab import HostState, LabState
from tests.system.conftest import LabFactory, make_lab_name, teardown_lab, wait_until
from tests.system.helpers import fails, ok, run_docker, try_get

pytestmark = pytest.mark.system

TOKEN = re.compile(r"SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}")
UNLOCK_KEY = re.compile(r"SWMKEY-1-[A-Za-z0-9+/]{43}")
LOCKED = ('Swarm is encrypted and needs to be unlocked before it can be used. Please use '
          '"docker swarm unlock" to unlock it.')
NODE_LS_HEADER = re.compile(r"^ID\s+HOSTNAME\s+STATUS\s+AVAILABILITY\s+MANAGER STATUS\s+"
                            r"ENGINE VERSION$")


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[LabState]:
    """One manager and one worker with shoald running and no swarm: the tests form it with
    the docker CLI (they run in order and share it)."""
    name = make_lab_name(f"{request.node.nodeid}#swarmcli")
    try:
        state = labmod.up(name, 1, 1, form_swarm=False)
        for host in state.hosts:
            wait_until(lambda h=host: try_get(h.client(timeout=2), "/_ping"), 30,
                       f"{host.name} API")
        yield state
    finally:
        teardown_lab(name)


def spec(config: Path, host: HostState) -> dict[str, object]:
    return json.loads(ok(run_docker(host, config, "info", "--format",
                                "{{json .Swarm.Cluster.Spec}}")))


def test_init_join_update_tokens_ca_with_the_docker_cli(lab: LabState,
                                                        docker_config: Path) -> None:
    m1, w1 = lab.host("m1"), lab.host("w1")
    out = ok(run_docker(m1, docker_config, "swarm", "init", "--advertise-addr", m1.address,
                    "--listen-addr", "0.0.0.0:2377", "--autolock", "--task-history-limit", "3",
                    "--dispatcher-heartbeat", "7s", "--cert-expiry", "720h",
                    "--snapshot-interval", "5000", "--default-addr-pool", "10.77.0.0/16",
                    "--default-addr-pool-mask-length", "26", "--data-path-port", "4790",
                    "--availability", "active"))
    node_id = re.search(r"Swarm initialized: current node \((\w+)\) is now a manager\.", out)
    assert node_id, out
    assert re.search(rf"docker swarm join --token {TOKEN.pattern} {m1.address}:2377", out), out
    assert "To unlock a swarm manager after it restarts, run the `docker swarm unlock`" in out
    assert UNLOCK_KEY.search(out), out
    s = spec(docker_config, m1)
    assert s["Orchestration"] == {"TaskHistoryRetentionLimit": 3}
    assert s["Dispatcher"] == {"HeartbeatPeriod": 7_000_000_000}
    assert s["CAConfig"]["NodeCertExpiry"] == 720 * 3600 * 10**9  # type: ignore[index]
    assert s["Raft"]["SnapshotInterval"] == 5000  # type: ignore[index]
    assert s["EncryptionConfig"] == {"AutoLockManagers": True}
    info = ok(run_docker(m1, docker_config, "info"))
    for line in ("Default Address Pool: 10.77.0.0/16", "SubnetSize: 26", "Data Path Port: 4790",
                 "Task History Retention Limit: 3", "Heartbeat Period: 7 seconds",
                 "Expiry Duration: 4 weeks", "Snapshot Interval: 5000",
                 "Autolock Managers: true"):
        assert line in info, (line, info)
    fails(run_docker(m1, docker_config, "swarm", "init", "--advertise-addr", m1.address),
          "This node is already part of a swarm.")

    # tokens
    out = ok(run_docker(m1, docker_config, "swarm", "join-token", "worker"))
    assert out.startswith("To add a worker to this swarm, run the following command:"), out
    worker_token = TOKEN.search(out)
    assert worker_token, out
    manager_token = ok(run_docker(m1, docker_config, "swarm", "join-token", "-q",
                                  "manager")).strip()
    assert TOKEN.fullmatch(manager_token) and manager_token != worker_token.group(0)
    out = ok(run_docker(m1, docker_config, "swarm", "join-token", "--rotate", "worker"))
    assert "Successfully rotated worker join token." in out, out
    new_token = TOKEN.search(out)
    assert new_token and new_token.group(0) != worker_token.group(0)

    # join with the rotated token, drained
    out = ok(run_docker(w1, docker_config, "swarm", "join", "--token", new_token.group(0),
                    "--advertise-addr", w1.address, "--availability", "drain",
                    f"{m1.address}:2377"))
    assert out.strip() == "This node joined a swarm as a worker.", out

    # update: the settings land
    out = ok(run_docker(m1, docker_config, "swarm", "update", "--task-history-limit", "2",
                    "--cert-expiry", "48h", "--dispatcher-heartbeat", "10s",
                    "--snapshot-interval", "2000"))
    assert out.strip() == "Swarm updated.", out
    s = spec(docker_config, m1)
    assert s["Orchestration"] == {"TaskHistoryRetentionLimit": 2}
    assert s["Dispatcher"] == {"HeartbeatPeriod": 10_000_000_000}
    assert s["CAConfig"]["NodeCertExpiry"] == 48 * 3600 * 10**9  # type: ignore[index]
    assert s["Raft"]["SnapshotInterval"] == 2000  # type: ignore[index]

    # ca: prints the root; a rotation is refused and changes nothing
    ca_pem = Path(m1.data_root, "certificates", "ca.crt").read_text()
    assert ok(run_docker(m1, docker_config, "swarm", "ca")).strip() == ca_pem.strip()
    fails(run_docker(m1, docker_config, "swarm", "ca", "--rotate", "-d"),
          "root CA rotation is not supported by Shoal yet")
    assert ok(run_docker(m1, docker_config, "swarm", "ca")).strip() == ca_pem.strip()
    assert spec(docker_config, m1)["CAConfig"]["NodeCertExpiry"] == 48 * 3600 * 10**9  # type: ignore[index]


def test_task_history_limit_is_applied(lab: LabState, docker_config: Path) -> None:
    """The limit set by `swarm update` (2) is what the task reaper keeps per slot."""
    m1 = lab.host("m1")
    ok(run_docker(m1, docker_config, "service", "create", "-d", "--name", "hist",
              "--update-monitor", "1s", "shoal/busybox:latest", "sleep", "1000"))

    def running() -> list[str]:
        return ok(run_docker(m1, docker_config, "service", "ps", "hist", "--filter",
                         "desired-state=running", "--format",
                         "{{.ID}} {{.CurrentState}}")).splitlines()

    wait_until(lambda: [r for r in running() if " Running " in r], 90, "the first task")
    for _ in range(3):
        before = running()[0].split()[0]
        ok(run_docker(m1, docker_config, "service", "update", "-d", "--force", "hist"))
        wait_until(lambda b=before: [r for r in running()
                                     if " Running " in r and not r.startswith(b)],
                   90, "the forced update's new task to run")

    def tasks() -> list[str]:
        return ok(run_docker(m1, docker_config, "service", "ps", "-q", "hist")).split()

    wait_until(lambda: len(tasks()) == 2, 60, "the reaper to keep 2 tasks of the slot")
    assert " Running " in running()[0], running()
    ok(run_docker(m1, docker_config, "service", "rm", "hist"))


def test_node_commands_print_dockers_columns(lab: LabState, docker_config: Path) -> None:
    m1, w1 = lab.host("m1"), lab.host("w1")
    lines = ok(run_docker(m1, docker_config, "node", "ls")).splitlines()
    assert NODE_LS_HEADER.match(lines[0]), lines
    rows = {line.split()[2] if "*" in line.split() else line.split()[1]: line
            for line in lines[1:]}
    assert re.match(r"^\w{25} \*\s+m1\s+Ready\s+Active\s+Leader\s+\S+$", rows["m1"]), rows
    assert re.match(r"^\w{25}\s+w1\s+Ready\s+Drain\s+\S+$", rows["w1"]), rows

    pretty = ok(run_docker(m1, docker_config, "node", "inspect", "--pretty", "self"))
    for part in ("Hostname:              \tm1", "State:\t\t\tReady", "Leader:\t\tYes",
                 "TLS Info:", "Issuer Subject:"):
        assert part in pretty, (part, pretty)

    assert ok(run_docker(m1, docker_config, "node", "update", "--availability", "active",
                     "--label-add", "zone=a", "--label-add", "disk=ssd", "w1")).strip() == "w1"
    labels = ok(run_docker(m1, docker_config, "node", "inspect", "w1", "--format",
                       "{{json .Spec.Labels}} {{.Spec.Availability}}")).strip()
    assert labels == '{"disk":"ssd","zone":"a"} active', labels
    fails(run_docker(m1, docker_config, "node", "update", "--role", "boss", "w1"),
          "invalid role")

    out = ok(run_docker(m1, docker_config, "node", "promote", "w1"))
    assert out.strip() == "Node w1 promoted to a manager in the swarm.", out
    wait_until(lambda: re.search(r"w1\s+Ready\s+Active\s+Reachable",
                                 ok(run_docker(m1, docker_config, "node", "ls"))), 60,
               "w1 to be a reachable manager")
    fails(run_docker(m1, docker_config, "node", "rm", "--force", "w1"),
          "is a cluster manager and is a member of the raft cluster. It must be demoted to "
          "worker before removal")
    out = ok(run_docker(m1, docker_config, "node", "demote", "w1"))
    assert out.strip() == "Manager w1 demoted in the swarm.", out
    wait_until(lambda: re.search(r"w1\s+Ready\s+Active\s+\S+$",
                                 ok(run_docker(m1, docker_config, "node", "ls")), re.M)
               and "Reachable" not in ok(run_docker(m1, docker_config, "node", "ls")), 60,
               "w1 to be a worker again")

    ok(run_docker(m1, docker_config, "service", "create", "-d", "--name", "onw1", "--constraint",
              "node.labels.zone==a", "shoal/busybox:latest", "sleep", "1000"))
    wait_until(lambda: re.search(r"Running\s+Running ",
                                 ok(run_docker(m1, docker_config, "node", "ps", "w1"))), 90,
               "the task on w1 to run")
    lines = ok(run_docker(m1, docker_config, "node", "ps", "w1")).splitlines()
    assert re.match(r"^ID\s+NAME\s+IMAGE\s+NODE\s+DESIRED STATE\s+CURRENT STATE\s+ERROR\s+"
                    r"PORTS$", lines[0]), lines
    assert re.match(r"^\w{12}\s+onw1\.1\s+shoal/busybox:latest\s+w1\s+Running\s+Running ",
                    lines[1]), lines
    ok(run_docker(m1, docker_config, "service", "rm", "onw1"))

    fails(run_docker(m1, docker_config, "node", "rm", "w1"), "is not down")
    fails(run_docker(w1, docker_config, "node", "ls"), "This node is not a swarm manager.")
    assert ok(run_docker(w1, docker_config, "swarm", "leave")).strip() == "Node left the swarm."
    assert ok(run_docker(m1, docker_config, "node", "rm", "--force", "w1")).strip() == "w1"
    # By the HOSTNAME column: a node ID may contain "w1" by chance.
    hostnames = ok(run_docker(m1, docker_config, "node", "ls", "--format", "{{.Hostname}}"))
    assert hostnames.split() == ["m1"], hostnames
    fails(run_docker(m1, docker_config, "swarm", "leave"),
          "You are attempting to leave the swarm on a node that is participating as a manager. "
          "Removing the last manager erases all current state of the swarm. Use `--force` to "
          "ignore this message.")


def test_autolock_restart_waits_locked_until_unlocked(lab: LabState,
                                                      docker_config: Path) -> None:
    m1 = lab.host("m1")
    out = ok(run_docker(m1, docker_config, "swarm", "unlock-key"))
    assert "To unlock a swarm manager after it restarts" in out
    key = ok(run_docker(m1, docker_config, "swarm", "unlock-key", "-q")).strip()
    assert UNLOCK_KEY.fullmatch(key), key
    ok(run_docker(m1, docker_config, "service", "create", "-d", "--name", "kept",
              "shoal/busybox:latest", "sleep", "1000"))

    labmod.stop_host(lab.name, "m1")
    labmod.start_host(lab.name, "m1", wait=False)
    wait_until(lambda: try_get(m1.client(timeout=2), "/_ping"), 30, "m1's API")
    fails(run_docker(m1, docker_config, "node", "ls"), LOCKED)
    assert "Swarm: locked" in ok(run_docker(m1, docker_config, "info"))

    # nothing on disk gives the key away: the TLS key is sealed, the unlock key is nowhere
    raw_key = base64.b64decode(key.removeprefix("SWMKEY-1-") + "=")
    for path in Path(m1.data_root).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"BEGIN PRIVATE KEY" not in data and b"BEGIN EC PRIVATE KEY" not in data, path
            assert key.encode() not in data and raw_key not in data, path
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in Path(m1.data_root, "certificates",
                                                  "node.key").read_bytes()

    wrong = "SWMKEY-1-" + base64.b64encode(bytes(32)).decode().rstrip("=")
    fails(run_docker(m1, docker_config, "swarm", "unlock", stdin=wrong + "\n"),
          "swarm could not be unlocked: invalid key provided")
    fails(run_docker(m1, docker_config, "node", "ls"), LOCKED)
    ok(run_docker(m1, docker_config, "swarm", "unlock", stdin=key + "\n"))
    fails(run_docker(m1, docker_config, "swarm", "unlock", stdin=key + "\n"), "swarm is not locked")
    wait_until(lambda: run_docker(m1, docker_config, "service", "ls").returncode == 0, 60,
               "the unlocked manager to answer")
    wait_until(lambda: re.search(r"kept\s+replicated\s+1/1",
                                 ok(run_docker(m1, docker_config, "service", "ls"))), 60,
               "the service to be there and running")

    # rotation gives a new key; autolock off leaves the keys in clear and no key to show
    out = ok(run_docker(m1, docker_config, "swarm", "unlock-key", "--rotate"))
    assert "Successfully rotated manager unlock key." in out
    new_key = UNLOCK_KEY.search(out)
    assert new_key and new_key.group(0) != key
    assert ok(run_docker(m1, docker_config, "swarm", "update", "--autolock=false")).strip() == \
        "Swarm updated."
    wait_until(lambda: b"BEGIN PRIVATE KEY" in Path(m1.data_root, "certificates",
                                                    "node.key").read_bytes(), 10,
               "the TLS key to be unsealed")
    fails(run_docker(m1, docker_config, "swarm", "unlock-key"), "no unlock key is set")
    # and on again: `swarm update` shows the new key, and the TLS key is sealed again
    out = ok(run_docker(m1, docker_config, "swarm", "update", "--autolock=true"))
    assert out.startswith("Swarm updated.") and UNLOCK_KEY.search(out), out
    wait_until(lambda: b"BEGIN ENCRYPTED PRIVATE KEY" in Path(
        m1.data_root, "certificates", "node.key").read_bytes(), 10, "the TLS key to be sealed")
    ok(run_docker(m1, docker_config, "service", "rm", "kept"))


def test_join_as_manager_sealed_and_leave(lab: LabState, docker_config: Path) -> None:
    """A manager that joins an autolocked swarm seals its keys too; leaving as a manager
    needs --force, and says what it would do to the quorum."""
    m1, w1 = lab.host("m1"), lab.host("w1")
    token = ok(run_docker(m1, docker_config, "swarm", "join-token", "-q", "manager")).strip()
    out = ok(run_docker(w1, docker_config, "swarm", "join", "--token", token, "--advertise-addr",
                    w1.address, f"{m1.address}:2377"))
    assert out.strip() == "This node joined a swarm as a manager.", out
    wait_until(lambda: re.search(r"\sw1\s+Ready\s+Active\s+Reachable",
                                 ok(run_docker(m1, docker_config, "node", "ls"))), 60,
               "w1 to be a reachable manager")
    wait_until(lambda: sealing.is_sealed_pem(
        Path(w1.data_root, "certificates", "node.key").read_bytes()), 15,
        "the joined manager's TLS key to be sealed")
    # its certificate has the lifetime `swarm update --cert-expiry 48h` set (back-dated 1 h)
    ident = pki.identity_of(Path(w1.data_root, "certificates", "node.crt").read_bytes())
    lifetime = ident.not_after - ident.not_before
    assert datetime.timedelta(hours=48) <= lifetime <= datetime.timedelta(hours=49), lifetime
    fails(run_docker(w1, docker_config, "swarm", "leave"),
          "Removing this node leaves 1 managers out of 2. Removing this node would make the "
          "swarm lose its quorum")
    assert ok(run_docker(w1, docker_config, "swarm", "leave", "--force")).strip() == \
        "Node left the swarm."
    assert not Path(w1.data_root, "certificates").exists()
    wait_until(lambda: run_docker(m1, docker_config, "node", "ls").returncode == 0, 30,
               "m1 to answer alone")


def test_force_new_cluster_recovers_a_lost_quorum(lab_factory: LabFactory,
                                                  docker_config: Path) -> None:
    """Three managers, two lost for good: `swarm init --force-new-cluster` on the survivor
    makes it the only manager, with the services, and it takes writes (also after a
    restart: the recovered store is on disk). With autolock on, all three managers seal
    their keys, and the recovered one restarts locked."""
    three = lab_factory(3, 0)
    m1 = three.host("m1")
    ok(run_docker(m1, docker_config, "service", "create", "-d", "--name", "keep", "--replicas", "2",
              "shoal/busybox:latest", "sleep", "1000"))
    wait_until(lambda: re.search(r"keep\s+replicated\s+2/2",
                                 ok(run_docker(m1, docker_config, "service", "ls"))), 90,
               "keep to run")
    # autolock on: every manager seals its keys, not only the one that was asked
    key = UNLOCK_KEY.search(ok(run_docker(m1, docker_config, "swarm", "update",
                                      "--autolock=true")))
    assert key, "no unlock key shown"
    for host in three.hosts:
        wait_until(lambda h=host: sealing.is_sealed_pem(
            Path(h.data_root, "certificates", "node.key").read_bytes()), 15,
            f"{host.name}'s TLS key to be sealed")
    for host in ("m2", "m3"):
        labmod.kill_host(three.name, host)
    wait_until(lambda: run_docker(m1, docker_config, "service", "ls").returncode != 0, 60,
               "m1 to notice it lost the quorum")
    fails(run_docker(m1, docker_config, "service", "ls"), "is not connected to a majority")

    out = ok(run_docker(m1, docker_config, "swarm", "init", "--force-new-cluster",
                    "--advertise-addr", m1.address))
    assert re.search(r"Swarm initialized: current node \(\w{25}\) is now a manager\.", out), out
    assert re.search(r"keep\s+replicated\s+\d/2",
                     ok(run_docker(m1, docker_config, "service", "ls"))), "keep is gone"
    lines = ok(run_docker(m1, docker_config, "node", "ls")).splitlines()
    assert re.search(r"\*\s+m1\s+Ready\s+Active\s+Leader", "\n".join(lines)), lines
    for host in ("m2", "m3"):
        assert re.search(rf"\s{host}\s+Down\s+Active\s+\S+$", "\n".join(lines), re.M), lines
    ok(run_docker(m1, docker_config, "service", "create", "-d", "--name", "after",
              "shoal/busybox:latest", "sleep", "1000"))
    wait_until(lambda: re.search(r"after\s+replicated\s+1/1",
                                 ok(run_docker(m1, docker_config, "service", "ls"))), 90,
               "a service created after the recovery to run")

    labmod.stop_host(three.name, "m1")
    labmod.start_host(three.name, "m1", wait=False)
    wait_until(lambda: try_get(m1.client(timeout=2), "/_ping"), 30, "m1's API")
    fails(run_docker(m1, docker_config, "service", "ls"), LOCKED)
    ok(run_docker(m1, docker_config, "swarm", "unlock", stdin=key.group(0) + "\n"))
    wait_until(lambda: run_docker(m1, docker_config, "service", "ls").returncode == 0, 60,
               "m1 to lead again after its restart")
    names = ok(run_docker(m1, docker_config, "service", "ls", "--format", "{{.Name}}")).split()
    assert sorted(names) == ["after", "keep"], names
    assert ok(run_docker(m1, docker_config, "node", "rm", "m2", "m3")).split() == ["m2", "m3"]


def test_shoald_force_new_cluster_flag(lab_factory: LabFactory, docker_config: Path) -> None:
    """The same recovery at start-up: `shoald --force-new-cluster` on a manager whose two
    peers are gone keeps the services it had on disk and takes writes."""
    three = lab_factory(3, 0)
    m1 = three.host("m1")
    ok(run_docker(m1, docker_config, "service", "create", "-d", "--name", "kept",
              "shoal/busybox:latest", "sleep", "1000"))
    for host in ("m2", "m3"):
        labmod.kill_host(three.name, host)
    labmod.stop_host(three.name, "m1")
    labmod.start_host(three.name, "m1", wait=False, extra_argv=["--force-new-cluster"])
    wait_until(lambda: run_docker(m1, docker_config, "service", "ls").returncode == 0, 60,
               "m1 to lead alone")
    names = ok(run_docker(m1, docker_config, "service", "ls", "--format", "{{.Name}}")).split()
    assert names == ["kept"], names
    lines = ok(run_docker(m1, docker_config, "node", "ls")).splitlines()
    assert re.search(r"\*\s+m1\s+Ready\s+Active\s+Leader", "\n".join(lines)), lines
    assert sum(1 for line in lines if re.search(r"\s+Down\s+", line)) == 2, lines
    ok(run_docker(m1, docker_config, "service", "scale", "-d", "kept=2"))
    wait_until(lambda: re.search(r"kept\s+replicated\s+2/2",
                                 ok(run_docker(m1, docker_config, "service", "ls"))), 90,
               "the scaled service to run")
