"""Issue 10 item 5: `shoal swarm backup FILE` on a manager, `shoald --restore FILE` on a host
whose data root is gone: a one-manager swarm with the backup's services, networks, secrets
and configs, whose worker reconnects and runs the tasks; an autolocked backup needs its
unlock key; the refusals (data root not empty, damaged file, wrong key) say why."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from manager import backup
from pki import sealing
from shoal import lab as labmod
from shoal.client import APIError
from shoal.lab import HostState, LabState
from tests.system.conftest import LabFactory, wait_until
from tests.system.helpers import ok, run_docker, shoal
from tests.system.svc import IMAGE, containers, engine

pytestmark = pytest.mark.system

NOT_A_MANAGER = "This node is not a swarm manager. Worker nodes can't be used"
UNLOCK_KEY = re.compile(r"SWMKEY-1-[A-Za-z0-9+/]{43}")


def shoald_refuses(lab: LabState, host: HostState, *extra: str) -> str:
    """Run the host's shoald with `extra` flags in its namespace; it must exit 1 at once
    (before it serves anything): its error output."""
    out = labmod.exec_in(lab.name, host.name, [*host.argv, *extra], capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    return str(out.stderr)


def take_backup(host: HostState, path: Path) -> backup.BackupHeader:
    out = shoal(host, "swarm", "backup", str(path))
    assert out.returncode == 0, out.stderr
    header, _ = backup.decode(path.read_bytes())
    assert f"Backup of swarm {header.cluster_id} (store version {header.store_version}" \
        in out.stdout, out.stdout
    assert path.stat().st_mode & 0o777 == 0o600
    return header


def lose_manager(lab: LabState, host: HostState) -> None:
    """The manager host is lost: its shoald stopped, its data root gone."""
    labmod.stop_host(lab.name, host.name)
    shutil.rmtree(host.data_root)


def restore(lab: LabState, host: HostState, cfg: Path, path: Path, *extra: str) -> None:
    labmod.start_host(lab.name, host.name, wait=False, extra_argv=[
        "--restore", str(path), "--advertise-addr", host.address, *extra])
    wait_until(lambda: run_docker(host, cfg, "service", "ls").returncode == 0, 60,
               "the restored manager to answer")


def running_on(lab: LabState, cfg: Path, service: str, hostname: str) -> list[str]:
    """IDs of the service's tasks running on `hostname`, as the manager reports them."""
    out = run_docker(lab.host("m1"), cfg, "service", "ps", service, "--filter",
                     "desired-state=running", "--format", "{{.ID}} {{.Node}} {{.CurrentState}}")
    if out.returncode != 0:
        return []
    return [line.split()[0] for line in out.stdout.splitlines()
            if line.split()[1:3] == [hostname, "Running"]]


def test_restore_on_a_lost_manager_host_brings_back_the_swarm(
        lab_factory: LabFactory, docker_config: Path, tmp_path: Path) -> None:
    lab = lab_factory(1, 1)
    m1, w1 = lab.host("m1"), lab.host("w1")
    cfg = docker_config
    ok(run_docker(m1, cfg, "network", "create", "-d", "overlay", "bnet"))
    ok(run_docker(m1, cfg, "secret", "create", "bsec", "-", stdin="s3cret-data"))
    ok(run_docker(m1, cfg, "config", "create", "bcfg", "-", stdin="listen=1\n"))
    service_id = ok(run_docker(
        m1, cfg, "service", "create", "-d", "--name", "bweb", "--replicas", "2",
        "--constraint", "node.role==worker", "--network", "bnet", "--secret", "bsec",
        "--config", "source=bcfg,target=/etc/b.cfg", IMAGE, "sleep", "100000")).strip()
    wait_until(lambda: len(running_on(lab, cfg, "bweb", "w1")) == 2, 90, "bweb to run on w1")
    token = ok(run_docker(m1, cfg, "swarm", "join-token", "-q", "worker")).strip()
    old_ids = {n.split()[0] for n in ok(run_docker(m1, cfg, "node", "ls", "-q")).split()}

    # a worker can't take a backup: 503 with Docker's not-a-manager message
    with pytest.raises(APIError) as refused:
        w1.client().raw("GET", "/swarm/backup")
    assert refused.value.status == 503 and NOT_A_MANAGER in refused.value.message
    path = tmp_path / "swarm.bak"
    header = take_backup(m1, path)
    assert not header.sealed and header.node_id == m1.node_id

    # refusals, before anything is written: the data root is not empty; a damaged file
    err = shoald_refuses(lab, m1, "--restore", str(path), "--advertise-addr", m1.address)
    assert "will not restore: the data root" in err and "is not empty" in err, err
    lose_manager(lab, m1)
    truncated = tmp_path / "truncated.bak"
    truncated.write_bytes(path.read_bytes()[:-100])
    err = shoald_refuses(lab, m1, "--restore", str(truncated), "--advertise-addr", m1.address)
    assert "the backup is damaged or truncated" in err, err
    assert not Path(m1.data_root, "state.json").exists()

    restore(lab, m1, cfg, path)
    names = {kind: ok(run_docker(m1, cfg, kind, "ls", "--format", "{{.Name}}")).split()
             for kind in ("service", "network", "secret", "config")}
    assert names["service"] == ["bweb"] and "bnet" in names["network"], names
    assert names["secret"] == ["bsec"] and names["config"] == ["bcfg"], names
    assert ok(run_docker(m1, cfg, "swarm", "join-token", "-q", "worker")).strip() == token
    # the backup's manager is a down worker now (remove it); this host is a new manager;
    # the worker reconnects by itself (same CA, same address) and runs the tasks
    wait_until(lambda: re.search(r"\sw1\s+Ready\s+Active\s",
                                 ok(run_docker(m1, cfg, "node", "ls")), re.M), 60,
               "w1 to reconnect to the restored manager")
    lines = ok(run_docker(m1, cfg, "node", "ls")).splitlines()
    assert re.search(r"\*\s+m1\s+Ready\s+Active\s+Leader", "\n".join(lines)), lines
    old_m1 = m1.node_id
    assert old_m1 in old_ids and re.search(rf"^{old_m1}\s+m1\s+Down", "\n".join(lines), re.M)
    ok(run_docker(m1, cfg, "node", "rm", old_m1))
    wait_until(lambda: len(running_on(lab, cfg, "bweb", "w1")) == 2, 60, "bweb's tasks on w1")
    ok(run_docker(m1, cfg, "service", "scale", "-d", "bweb=3"))
    wait_until(lambda: len(running_on(lab, cfg, "bweb", "w1")) == 3, 90, "a third task on w1")
    # a new host joins with the backup's (unchanged) worker token and takes the tasks over
    w2 = labmod.add_host(lab.name, "w2")
    ok(run_docker(w2, cfg, "swarm", "join", "--token", token, "--advertise-addr", w2.address,
                  f"{m1.address}:2377"))
    ok(run_docker(m1, cfg, "node", "update", "--availability", "drain", "w1"))
    wait_until(lambda: len(running_on(lab, cfg, "bweb", "w2")) == 3, 90, "bweb's tasks on w2")
    live = wait_until(lambda: (found := containers(lab, service_id)) and len(found) == 3 and
                      found, 30, "only w2's three containers to run")
    # the secret (sealed in the store under a key from the backup's CA) still opens
    for found in live:
        container = engine(lab).containers.get(found["Id"])
        assert container.exec_run(["cat", "/run/secrets/bsec"]).output == b"s3cret-data"
        assert container.exec_run(["cat", "/etc/b.cfg"]).output == b"listen=1\n"


def test_an_autolocked_backup_needs_its_unlock_key(
        lab_factory: LabFactory, docker_config: Path, tmp_path: Path) -> None:
    lab = lab_factory(1, 0)
    m1 = lab.host("m1")
    cfg = docker_config
    key = UNLOCK_KEY.search(ok(run_docker(m1, cfg, "swarm", "update", "--autolock=true")))
    assert key, "no unlock key shown"
    ok(run_docker(m1, cfg, "secret", "create", "lsec", "-", stdin="locked-secret"))
    ok(run_docker(m1, cfg, "service", "create", "-d", "--name", "lweb", "--secret", "lsec",
                  IMAGE, "sleep", "100000"))
    path = tmp_path / "locked.bak"
    assert take_backup(m1, path).sealed
    data = path.read_bytes()
    assert b"lweb" not in data and b"BEGIN" not in data  # no service name, no PEM in clear
    lose_manager(lab, m1)

    err = shoald_refuses(lab, m1, "--restore", str(path), "--advertise-addr", m1.address)
    assert "the backup is encrypted" in err and "--unlock-key" in err, err
    wrong = sealing.format_unlock_key(sealing.new_key())
    err = shoald_refuses(lab, m1, "--restore", str(path), "--advertise-addr", m1.address,
                         "--unlock-key", wrong)
    assert "invalid unlock key" in err, err
    assert not Path(m1.data_root, "state.json").exists()

    restore(lab, m1, cfg, path, "--unlock-key", key.group(0))
    assert ok(run_docker(m1, cfg, "service", "ls", "--format", "{{.Name}}")).split() == ["lweb"]
    wait_until(lambda: re.search(r"lweb\s+replicated\s+1/1",
                                 ok(run_docker(m1, cfg, "service", "ls"))), 90,
               "lweb to run on the restored manager")
    # the restored manager is autolocked with the same key: sealed at rest, locked after a
    # restart until `docker swarm unlock` gets that key
    assert sealing.is_sealed_pem(Path(m1.data_root, "certificates", "node.key").read_bytes())
    labmod.stop_host(lab.name, m1.name)
    labmod.start_host(lab.name, m1.name, wait=False)
    wait_until(lambda: "Swarm: locked" in run_docker(m1, cfg, "info").stdout, 30,
               "the restarted manager to be locked")
    ok(run_docker(m1, cfg, "swarm", "unlock", stdin=key.group(0) + "\n"))
    wait_until(lambda: re.search(r"lweb\s+replicated\s+1/1",
                                 run_docker(m1, cfg, "service", "ls").stdout), 90,
               "lweb after the unlock")
