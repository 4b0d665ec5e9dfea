"""Issue 9, items 3, 4 and 9: `docker service` and `docker network` with the real docker CLI
(28.2), and docker-py's swarm models, against a lab manager's socket.

One lab (a manager and a worker) for the module. What the CLI prints is compared with what
it prints against dockerd: its header lines and the key values of each row; every flag of
`service create` is checked in `service inspect` and, where it shows, inside the task's
container (hostname, /etc/hosts, resolv.conf and lookups through the task's own nameserver,
user, workdir, env, init, secret and config files, mounts).
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.types import ConfigReference, EndpointSpec, SecretReference, ServiceMode

from netdriver.node import netns
from shoal.lab import HostState, LabState
from tests.system.conftest import module_lab, wait_until
from tests.system.helpers import DOCKER, ok, run_docker
from tests.system.svc import IMAGE, containers, engine
from tests.system.test_resolver_netns import KNOWN_EXTERNAL, UpstreamServer

pytestmark = pytest.mark.system

SERVICE_LS = ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
SERVICE_PS = ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR",
              "PORTS"]
NETWORK_LS = ["NETWORK ID", "NAME", "DRIVER", "SCOPE"]
LOG_LINE = re.compile(r"^(\S+)\.(\d+)\.([0-9a-z]{12})@(\w+)\s+\| (.*)$")


lab = module_lab()


def header(text: str) -> list[str]:
    """The column names of a table the docker CLI printed (separated by 2+ spaces)."""
    return re.split(r"\s{2,}", text.splitlines()[0].strip())


def rows(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()[1:]]


def inspect(m1: HostState, config: str, name: str) -> dict[str, Any]:
    return json.loads(ok(run_docker(m1, config, "service", "inspect", name)))[0]


def in_task(lab: LabState, service_id: str, *cmd: str) -> str:
    [c] = containers(lab, service_id)
    code, out = engine(lab).containers.get(c["Id"]).exec_run(list(cmd))
    assert code == 0, (cmd, out)
    return str(out.decode())


def converged(out: subprocess.CompletedProcess[str], sid_or_name: str) -> None:
    """The attached progress display ran to its end, as against dockerd."""
    assert out.returncode == 0, out.stderr
    assert "overall progress: " in out.stdout, out.stdout[-800:]
    assert out.stdout.rstrip().endswith(f"verify: Service {sid_or_name} converged"), \
        out.stdout[-800:]


# -- item 3: service create with every flag -----------------------------------------------

def test_service_create_with_every_flag(lab: LabState, docker_config: str,
                                        tmp_path: Path) -> None:
    m1, w1 = lab.host("m1"), lab.host("w1")
    ok(run_docker(m1, docker_config, "secret", "create", "dsec", "-", stdin="s3cr3t"))
    ok(run_docker(m1, docker_config, "config", "create", "dcfg", "-", stdin="cfg=1\n"))
    net_id = ok(run_docker(m1, docker_config, "network", "create", "-d", "overlay",
                           "svcnet")).strip()
    (tmp_path / "hostfile").write_text("from the host\n")
    tmp_path.chmod(0o755)  # the task runs as uid 1000
    upstream = UpstreamServer(netns.named_netns_path(w1.namespace), w1.address)
    try:
        out = run_docker(
            m1, docker_config, "service", "create", "--name", "big", "--no-resolve-image",
            "--secret", "dsec", "--config", "source=dcfg,target=/etc/d.cfg",
            "--network", "svcnet", "-p", "8080:80", "-p", "published=9090,target=90,mode=host",
            "--mount", "type=volume,source=dvol,target=/data",
            "--mount", f"type=bind,source={tmp_path},target=/host,readonly",
            "--mount", "type=tmpfs,target=/scratch,tmpfs-size=1000000",
            "--health-cmd", "true", "--health-interval", "1s", "--health-retries", "3",
            "--health-timeout", "1s", "--health-start-period", "1s",
            "--env", "FOO=bar", "--label", "svc=lbl", "--container-label", "ctr=lbl",
            "--constraint", "node.hostname==w1", "--limit-cpu", "0.5",
            "--reserve-memory", "16M", "--restart-condition", "on-failure",
            "--update-parallelism", "2", "--update-delay", "1s",
            "--update-failure-action", "rollback", "--hostname", "myhost",
            "--host", "extra.example:10.1.2.3", "--dns", w1.address,
            "--dns-search", "example.org", "--dns-option", "ndots:2", "--init",
            "--stop-grace-period", "3s", "--user", "1000", "--workdir", "/tmp",
            "--entrypoint", "/bin/sh", IMAGE, "-c", "sleep 3600")
        sid = out.stdout.splitlines()[0]
        converged(out, sid)
        _check_big_spec(inspect(m1, docker_config, "big"), net_id)
        _check_big_container(lab, sid, upstream)
    finally:
        upstream.close()
    _check_big_listings(m1, docker_config, w1, sid)
    ok(run_docker(m1, docker_config, "service", "rm", "big"))


def _check_big_spec(svc: dict[str, Any], net_id: str) -> None:
    spec = svc["Spec"]
    task = spec["TaskTemplate"]
    c = task["ContainerSpec"]
    assert spec["Labels"] == {"svc": "lbl"} and c["Labels"] == {"ctr": "lbl"}
    assert c["Image"] == IMAGE and c["Command"] == ["/bin/sh"]
    assert c["Args"] == ["-c", "sleep 3600"]
    assert (c["Hostname"], c["Env"], c["Dir"], c["User"], c["Init"]) == (
        "myhost", ["FOO=bar"], "/tmp", "1000", True)
    assert c["Hosts"] == ["10.1.2.3 extra.example"]
    assert c["DNSConfig"] == {"Nameservers": [c["DNSConfig"]["Nameservers"][0]],
                              "Search": ["example.org"], "Options": ["ndots:2"]}
    assert c["StopGracePeriod"] == 3_000_000_000
    assert c["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 1_000_000_000,
                                "Timeout": 1_000_000_000, "StartPeriod": 1_000_000_000,
                                "Retries": 3}
    assert [(m["Type"], m.get("Source"), m["Target"], m.get("ReadOnly", False))
            for m in c["Mounts"]] == [("volume", "dvol", "/data", False),
                                      ("bind", c["Mounts"][1]["Source"], "/host", True),
                                      ("tmpfs", None, "/scratch", False)]
    assert c["Mounts"][2]["TmpfsOptions"] == {"SizeBytes": 1000000}
    assert [(s["SecretName"], s["File"]["Name"]) for s in c["Secrets"]] == [("dsec", "dsec")]
    assert [(s["ConfigName"], s["File"]["Name"]) for s in c["Configs"]] == [
        ("dcfg", "/etc/d.cfg")]
    assert task["Resources"] == {"Limits": {"NanoCPUs": 500_000_000},
                                 "Reservations": {"MemoryBytes": 16 * 1024 * 1024}}
    assert task["RestartPolicy"]["Condition"] == "on-failure"
    assert task["Placement"]["Constraints"] == ["node.hostname==w1"]
    assert task["Networks"] == [{"Target": net_id}]
    u = spec["UpdateConfig"]
    assert (u["Parallelism"], u["Delay"], u["FailureAction"]) == (2, 1_000_000_000,
                                                                  "rollback")
    assert spec["EndpointSpec"]["Ports"] == [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"},
        {"Protocol": "tcp", "TargetPort": 90, "PublishedPort": 9090, "PublishMode": "host"}]
    assert net_id in [v["NetworkID"] for v in svc["Endpoint"]["VirtualIPs"]]  # and ingress


def _check_big_container(lab: LabState, sid: str, upstream: UpstreamServer) -> None:
    assert in_task(lab, sid, "hostname").strip() == "myhost"
    assert "10.1.2.3\textra.example" in in_task(lab, sid, "cat", "/etc/hosts")
    resolv = in_task(lab, sid, "cat", "/etc/resolv.conf").splitlines()
    assert {"search example.org", "nameserver 127.0.0.11", "options ndots:2"} <= set(resolv)
    # a name the swarm does not know goes to the task's own nameserver (--dns)
    assert KNOWN_EXTERNAL in in_task(lab, sid, "nslookup", "example.shoal.test")
    assert "example.shoal.test." in upstream.asked
    assert in_task(lab, sid, "id", "-u").strip() == "1000"
    assert in_task(lab, sid, "pwd").strip() == "/tmp"
    assert "FOO=bar" in in_task(lab, sid, "env").splitlines()
    assert "docker-init" in in_task(lab, sid, "cat", "/proc/1/cmdline")
    assert in_task(lab, sid, "cat", "/run/secrets/dsec") == "s3cr3t"
    assert in_task(lab, sid, "cat", "/etc/d.cfg") == "cfg=1\n"
    assert in_task(lab, sid, "cat", "/host/hostfile") == "from the host\n"
    mounts = in_task(lab, sid, "cat", "/proc/mounts")
    assert " /scratch tmpfs " in mounts and " /data " in mounts
    [c] = containers(lab, sid)
    info = engine(lab).api.inspect_container(c["Id"])
    assert info["Config"]["Labels"]["ctr"] == "lbl"
    assert info["HostConfig"]["NanoCpus"] == 500_000_000 and info["Config"]["StopTimeout"] == 3
    wait_until(lambda: engine(lab).api.inspect_container(c["Id"])["State"]["Health"][
        "Status"] == "healthy", 30, "the health check (--health-cmd true) to pass")


def _check_big_listings(m1: HostState, config: str, w1: HostState, sid: str) -> None:
    ls = ok(run_docker(m1, config, "service", "ls"))
    assert header(ls) == SERVICE_LS
    assert [sid[:12], "big", "replicated", "1/1", IMAGE, "*:8080->80/tcp"] in rows(ls)
    ps = ok(run_docker(m1, config, "service", "ps", "big"))
    assert header(ps) == SERVICE_PS
    [row] = rows(ps)
    assert row[1:5] == ["big.1", IMAGE, "w1", "Running"] and row[5].startswith("Running ")
    assert row[-1] == "*:9090->90/tcp"
    pretty = ok(run_docker(m1, config, "service", "inspect", "--pretty", "big"))
    for line in (f"ID:\t\t{sid}", "Name:\t\tbig", " svc=lbl", "Service Mode:\tReplicated",
                 " Replicas:\t1", " Constraints:\t[node.hostname==w1]", " Parallelism:\t2",
                 " On failure:\trollback", f" Image:\t\t{IMAGE}", " Env:\t\tFOO=bar ",
                 " Dir:\t\t/tmp", " Init:\t\ttrue", " User: 1000", " Target:\t/etc/d.cfg",
                 "  Source:\tdcfg", "  Memory:\t16MiB", "  CPU:\t\t0.5", "Networks: svcnet ",
                 "Endpoint Mode:\tvip", " PublishedPort = 9090", "  PublishMode = ingress"):
        assert line in pretty.splitlines(), (line, pretty)


def test_global_and_job_modes(lab: LabState, docker_config: str) -> None:
    m1 = lab.host("m1")
    out = run_docker(m1, docker_config, "service", "create", "--name", "everywhere",
                     "--mode", "global", "--init", "--no-resolve-image", IMAGE, "sleep", "3600")
    sid = out.stdout.splitlines()[0]
    converged(out, sid)
    ps = ok(run_docker(m1, docker_config, "service", "ps", "everywhere", "--format",
                       "{{.Node}} {{.CurrentState}}"))
    assert sorted(line.split()[:2] for line in ps.splitlines()) == [
        ["m1", "Running"], ["w1", "Running"]]
    assert [sid[:12], "everywhere", "global", "2/2"] in [
        r[:4] for r in rows(ok(run_docker(m1, docker_config, "service", "ls")))]
    for mode, extra, count in (("replicated-job", ("--replicas", "2"), 2),
                               ("global-job", (), 2)):
        name = mode.replace("-", "")
        out = run_docker(m1, docker_config, "service", "create", "--name", name, "--mode",
                         mode, *extra, "--no-resolve-image", IMAGE, "true")
        assert out.returncode == 0 and out.stdout.rstrip().endswith("job complete"), out
        states = ok(run_docker(m1, docker_config, "service", "ps", name, "--format",
                               "{{.CurrentState}}"))
        assert [line.split()[0] for line in states.splitlines()] == ["Complete"] * count
    for name in ("everywhere", "replicatedjob", "globaljob"):
        assert ok(run_docker(m1, docker_config, "service", "rm", name)).strip() == name


# -- item 3: scale, update, rollback, logs, rm ----------------------------------------------

def test_scale_update_rollback_logs_and_rm(lab: LabState, docker_config: str) -> None:
    m1 = lab.host("m1")
    ok(run_docker(m1, docker_config, "secret", "create", "addsec", "-", stdin="x"))
    sid = ok(run_docker(m1, docker_config, "service", "create", "-d", "--name", "web",
                        "--init", "--no-resolve-image", IMAGE, "sh", "-c",
                        "while true; do echo tick; sleep 1; done")).strip()
    out = run_docker(m1, docker_config, "service", "scale", "web=2")
    assert out.stdout.startswith("web scaled to 2\n"), out.stdout
    converged(out, "web")
    out = run_docker(m1, docker_config, "service", "update", "--no-resolve-image", "--image",
                     "shoal/busybox:v1", "--env-add", "A=1", "--publish-add", "8081:81",
                     "--secret-add", "addsec", "web")
    converged(out, "web")
    spec = inspect(m1, docker_config, "web")["Spec"]
    c = spec["TaskTemplate"]["ContainerSpec"]
    assert c["Image"] == "shoal/busybox:v1" and c["Env"] == ["A=1"]
    assert [s["SecretName"] for s in c["Secrets"]] == ["addsec"]
    assert [p["PublishedPort"] for p in spec["EndpointSpec"]["Ports"]] == [8081]
    assert spec["Mode"] == {"Replicated": {"Replicas": 2}}
    out = run_docker(m1, docker_config, "service", "rollback", "web")
    assert out.stdout.startswith("web\nrollback: manually requested rollback\n"), out.stdout
    converged(out, "web")
    svc = inspect(m1, docker_config, "web")
    c = svc["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert c["Image"] == IMAGE and "Env" not in c and "Secrets" not in c
    assert "Ports" not in svc["Spec"]["EndpointSpec"]
    assert svc["UpdateStatus"]["State"] == "rollback_completed"
    wait_until(lambda: len(_log_lines(m1, docker_config)) >= 4, 30, "logs of web")
    tasks = {t for t, _ in _log_lines(m1, docker_config)}
    assert {name for name, *_ in tasks} == {"web"} and {slot for _, slot, *_ in tasks} == {
        "1", "2"}
    _follow_logs(m1, docker_config)
    assert ok(run_docker(m1, docker_config, "service", "rm", "web")).strip() == "web"
    assert "web" not in [r[1] for r in rows(ok(run_docker(m1, docker_config, "service", "ls")))]
    wait_until(lambda: not containers(lab, sid, all_=True), 60, "web's containers removed")
    ok(run_docker(m1, docker_config, "secret", "rm", "addsec"))


def _log_lines(m1: HostState, config: str) -> list[tuple[tuple[str, ...], str]]:
    """`service logs --details web`: (service, slot, task, node) and the message per line;
    with --details and no attributes the CLI puts a space before each message."""
    out = ok(run_docker(m1, config, "service", "logs", "--details", "web"))
    found = []
    for line in out.splitlines():
        match = LOG_LINE.match(line)
        assert match, line
        assert match.group(5) == " tick", line
        found.append((match.groups()[:4], match.group(5)))
    return found


def _follow_logs(m1: HostState, config: str) -> None:
    """`service logs -f --details -t`: after the tails (one line of each task, old ones
    too), the multiplexed stream keeps bringing new lines."""
    env = {"DOCKER_HOST": m1.api, "DOCKER_CONFIG": config, "PATH": "/usr/bin:/bin"}
    start = time.time()
    proc = subprocess.Popen([DOCKER, "service", "logs", "-f", "--details", "-t", "--tail", "1",
                             "web"], stdout=subprocess.PIPE, text=True, env=env)
    timer = threading.Timer(30, proc.kill)  # a stalled stream ends the reads below
    timer.start()
    new: list[str] = []
    try:
        assert proc.stdout is not None
        while len(new) < 4:
            line = proc.stdout.readline()
            assert line, f"the stream ended; new lines so far: {new}"
            stamp, _, rest = line.partition(" ")
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", stamp), line
            assert LOG_LINE.match(rest.rstrip("\n")), line
            when = datetime.datetime.fromisoformat(stamp[:26] + "+00:00").timestamp()
            if when > start + 0.5:
                new.append(rest)
    finally:
        timer.cancel()
        proc.terminate()
        proc.wait(10)
    assert {LOG_LINE.match(r.rstrip("\n")).group(2) for r in new} == {"1", "2"}  # type: ignore[union-attr]


# -- item 4: networks ------------------------------------------------------------------------

def test_network_commands(lab: LabState, docker_config: str) -> None:
    m1 = lab.host("m1")
    net_id = ok(run_docker(m1, docker_config, "network", "create", "-d", "overlay",
                           "--attachable", "--opt", "encrypted", "--subnet", "10.77.0.0/24",
                           "--label", "team=a", "secnet")).strip()
    ls = ok(run_docker(m1, docker_config, "network", "ls"))
    assert header(ls) == NETWORK_LS
    assert [net_id[:12], "secnet", "overlay", "swarm"] in rows(ls)
    assert "ingress" in [r[1] for r in rows(ls)]
    for flt, names in (("driver=overlay", {"secnet", "ingress"}), ("name=secnet", {"secnet"}),
                       ("label=team=a", {"secnet"}), ("label=team=b", set())):
        out = ok(run_docker(m1, docker_config, "network", "ls", "--filter", flt))
        assert header(out) == NETWORK_LS
        assert names <= {r[1] for r in rows(out)}, (flt, out)
        if flt.startswith(("name", "label")):
            assert {r[1] for r in rows(out)} == names, (flt, out)
    [net] = json.loads(ok(run_docker(m1, docker_config, "network", "inspect", "secnet")))
    assert (net["Id"], net["Driver"], net["Scope"], net["Attachable"]) == (
        net_id, "overlay", "swarm", True)
    assert net["IPAM"]["Config"] == [{"Subnet": "10.77.0.0/24", "Gateway": "10.77.0.1"}]
    assert net["Options"]["encrypted"] == "" and net["Labels"] == {"team": "a"}
    ok(run_docker(m1, docker_config, "service", "create", "-d", "--name", "onnet",
                  "--network", "secnet", "--no-resolve-image", IMAGE, "sleep", "3600"))
    out = run_docker(m1, docker_config, "network", "rm", "secnet")
    assert out.returncode == 1
    assert "Error response from daemon: network secnet is in use by service" in out.stderr
    ok(run_docker(m1, docker_config, "service", "rm", "onnet"))
    wait_until(lambda: run_docker(m1, docker_config, "network", "rm", "secnet").stdout
               == "secnet\n", 60, "secnet removed once onnet's task is gone")
    assert "secnet" not in ok(run_docker(m1, docker_config, "network", "ls"))


def removed(net: Any) -> bool:
    try:
        net.remove()
    except docker.errors.APIError as err:
        # its tasks are still shutting down
        assert re.search(r"still has \d+ task\(s\) attached", str(err)), err
        return False
    return True


# -- item 9: docker-py -------------------------------------------------------------------------

def test_docker_py_swarm_nodes_services_networks_secrets_configs(lab: LabState) -> None:
    m1, w1 = lab.host("m1"), lab.host("w1")
    client = docker.DockerClient(base_url=m1.api, version="auto", timeout=60)
    client.swarm.reload()
    assert client.swarm.attrs["ID"] and client.swarm.version >= 1
    assert "Raft" in client.swarm.attrs["Spec"]
    assert {n.attrs["Description"]["Hostname"] for n in client.nodes.list()} == {"m1", "w1"}
    node = client.nodes.get(w1.node_id)
    assert node.attrs["Spec"]["Role"] == "worker"
    assert node.update(node.attrs["Spec"] | {"Labels": {"zone": "a"}}) is True
    node.reload()
    assert node.attrs["Spec"]["Labels"] == {"zone": "a"}
    assert [n.id for n in client.nodes.list(filters={"role": "manager"})] == [m1.node_id]

    net = client.networks.create("pynet", driver="overlay", attachable=True,
                                 labels={"k": "v"})
    assert client.networks.get(net.id).attrs["Driver"] == "overlay"
    assert "pynet" in [n.name for n in client.networks.list(filters={"driver": "overlay"})]
    sec = client.secrets.create(name="pysec", data=b"py-secret", labels={"a": "b"})
    cfg = client.configs.create(name="pycfg", data=b"py-config")
    assert client.secrets.get(sec.id).name == "pysec"
    assert client.configs.get(cfg.id).name == "pycfg"
    assert "pysec" in [s.name for s in client.secrets.list()]
    assert "pycfg" in [c.name for c in client.configs.list(filters={"name": "pycfg"})]

    svc = client.services.create(
        IMAGE, ["sh", "-c", "echo hello-py; cat /run/secrets/pysec /etc/pycfg; echo; sleep 3600"],
        name="pysvc", networks=["pynet"], endpoint_spec=EndpointSpec(ports={8085: 80}),
        secrets=[SecretReference(sec.id, "pysec")], init=True,
        configs=[ConfigReference(cfg.id, "pycfg", "/etc/pycfg")], env=["X=1"],
        mode=ServiceMode("replicated", replicas=1))
    running = wait_until(lambda: [t for t in svc.tasks({"desired-state": "running"})
                                  if t["Status"]["State"] == "running"], 60, "pysvc running")
    assert running[0]["NetworksAttachments"]
    wait_until(lambda: b"".join(svc.logs(stdout=True)).splitlines() == [
        b"hello-py", b"py-secretpy-config"], 30, "pysvc's logs: its secret and config")
    # The model holds the version of its create; the allocator has written the service since
    # (its VIPs), as swarmkit's does: read it again, as against dockerd.
    svc.reload()
    assert svc.update(env=["X=2"]) is not None
    svc.reload()
    assert svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["X=2"]
    wait_until(lambda: (svc.reload(), svc.attrs.get("UpdateStatus", {}).get("State"))[1]
               == "completed", 60, "pysvc's update")
    assert svc.scale(2) is not None
    wait_until(lambda: len([t for t in svc.tasks({"desired-state": "running"})
                            if t["Status"]["State"] == "running"]) == 2, 60, "2 tasks")
    svc.reload()
    assert svc.attrs["Spec"]["Mode"] == {"Replicated": {"Replicas": 2}}
    assert svc.attrs["Endpoint"]["Ports"][0]["PublishedPort"] == 8085
    assert svc.remove() is True
    wait_until(lambda: not client.services.list(filters={"name": "pysvc"}), 30, "removed")
    for obj in (sec, cfg):
        obj.remove()
    wait_until(lambda: removed(net), 60, "pynet removed once pysvc's tasks are gone")
    assert "pynet" not in [n.name for n in client.networks.list()]
    assert "pysec" not in [s.name for s in client.secrets.list()]
    assert "pycfg" not in [c.name for c in client.configs.list()]
