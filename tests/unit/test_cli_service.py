"""`shoal service ...` against a fake daemon: the request bodies each command sends, the
tables it prints, and the convergence wait (tests/unit/test_cli.py has the fake)."""

from __future__ import annotations

import datetime
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from shoal.api import convert_service as conv
from shoal.cli import service_progress as progress
from shoal.cli.service_values import parse_cpus, parse_mount, parse_publish, parse_size
from tests.unit.test_cli import NODES, FakeDaemon
from tests.unit.test_convert_service import _supported_big

SID = "svcwebaaaaaaaaaaaaaaaaaaa"
N1, N2 = NODES[2]["ID"], NODES[1]["ID"]  # host1, host2


def ts(seconds_ago: float) -> str:
    when = datetime.datetime.fromtimestamp(time.time() - seconds_ago, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def make_service(sid: str = SID, name: str = "web", mode: Any = None,
                 status: dict[str, int] | None = None, **extra: Any) -> dict[str, Any]:
    svc = {"ID": sid, "Version": {"Index": 11},
           "Spec": {"Name": name, "Labels": {},
                    "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest@sha256:abc"}},
                    "Mode": mode or {"Replicated": {"Replicas": 2}},
                    "UpdateConfig": {"Parallelism": 1, "Monitor": 0},
                    "EndpointSpec": {"Mode": "vip"}},
           "Endpoint": {"Spec": {}, "Ports": [{"Protocol": "tcp", "TargetPort": 80,
                                               "PublishedPort": 8080,
                                               "PublishMode": "ingress"}],
                        "VirtualIPs": []}}
    if status:
        svc["ServiceStatus"] = status
    svc.update(extra)
    return svc


def make_task(tid: str, slot: int, node: str, state: str, desired: str = "running",
              seconds_ago: float = 125, err: str = "", created: str = "2026-01-01T00:00:01Z",
              sid: str = SID) -> dict[str, Any]:
    status: dict[str, Any] = {"Timestamp": ts(seconds_ago), "State": state, "Message": state}
    if err:
        status["Err"] = err
    return {"ID": tid, "ServiceID": sid, "Slot": slot, "NodeID": node, "CreatedAt": created,
            "DesiredState": desired, "Status": status,
            "Spec": {"ContainerSpec": {"Image": "busybox:latest@sha256:abc"}}}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    sock = tmp_path / "shoal.sock"
    short_dir = None
    if len(str(sock)) > 100:
        short_dir = tempfile.TemporaryDirectory(prefix="shoal")
        sock = Path(short_dir.name) / "s.sock"
    fake = FakeDaemon(sock)
    fake.route("GET", "/nodes", NODES)
    for n in NODES:
        fake.route("GET", f"/nodes/{n['ID']}", n)
    fake.route("POST", "/services/create", {"ID": SID, "Warnings": None}, status=201)
    for ref in (SID, "web"):
        fake.route("GET", f"/services/{ref}", make_service())
    fake.route("POST", f"/services/{SID}/update", {"Warnings": None})
    fake.route("GET", "/tasks", [make_task("t1", 1, N1, "running"),
                                 make_task("t2", 2, N2, "running")])
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    if short_dir:
        short_dir.cleanup()


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(progress.wait, "__defaults__", (False, False, 0.01))


# ---------------------------------------------------------------- create


def test_create_sends_the_docker_cli_body(daemon: FakeDaemon) -> None:
    result = daemon.run("service", "create", "--detach", "--name", "web", "--replicas", "3",
                        "-p", "8080:80", "busybox", "sleep", "1000")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{SID}\n"
    assert daemon.calls() == ["POST /services/create"]
    assert daemon.sent("POST")[0].body == {
        "Name": "web", "Labels": {},
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["sleep", "1000"],
                                           "Init": False, "DNSConfig": {}},
                         "Resources": {"Limits": {}, "Reservations": {}}, "Placement": {},
                         "ForceUpdate": 0},
        "Mode": {"Replicated": {"Replicas": 3}},
        "EndpointSpec": {"Mode": "vip", "Ports": [{"Protocol": "tcp", "PublishMode": "ingress",
                                                   "PublishedPort": 8080, "TargetPort": 80}]}}


BIG_FLAGS = [
    "--mode", "global", "--constraint", "node.role==worker", "--constraint",
    "node.labels.zone==a", "--placement-pref", "spread=node.labels.zone",
    "--reserve-cpu", "0.5", "--reserve-memory", "64M", "--limit-cpu", "1",
    "--limit-memory", "128M", "--restart-condition", "on-failure", "--restart-delay", "5s",
    "--restart-max-attempts", "3", "--restart-window", "1m", "--update-parallelism", "2",
    "--update-delay", "10s", "--update-failure-action", "rollback", "--update-monitor", "20s",
    "--update-max-failure-ratio", "0.2", "--update-order", "start-first",
    "--rollback-parallelism", "1", "--rollback-delay", "2s", "--rollback-failure-action",
    "pause", "--rollback-monitor", "5s", "--rollback-max-failure-ratio", "0",
    "--rollback-order", "stop-first", "--endpoint-mode", "dnsrr",
    "--publish", "mode=host,published=9090,target=90,protocol=udp",
    "--network", "name=netid,alias=apix",
    "--mount", "type=volume,source=data,target=/data",
    "--mount", "type=bind,source=/srv,target=/host,readonly",
    "--mount", "type=tmpfs,target=/run/x,tmpfs-size=1000000",
    "-e", "FOO=bar", "-e", "BAZ=1", "--label", "a=b", "--container-label", "c=1",
    "--hostname", "h", "--workdir", "/w", "--user", "1000", "--init", "--stop-signal",
    "SIGINT", "--stop-grace-period", "20s", "--health-cmd", "wget -q -O- localhost",
    "--health-interval", "10s", "--health-timeout", "3s", "--health-start-period", "5s",
    "--health-retries", "3", "--detach=true", "--name", "big", "nginx:alpine"]


def test_create_with_many_flags_matches_the_docker_cli(daemon: FakeDaemon) -> None:
    result = daemon.run("service", "create", *BIG_FLAGS)
    assert result.exit_code == 0, result.output
    body = daemon.sent("POST")[0].body
    assert body["Mode"] == {"Global": {}}
    assert body["UpdateConfig"] == {"Parallelism": 2, "Delay": 10_000_000_000,
                                    "FailureAction": "rollback", "Monitor": 20_000_000_000,
                                    "MaxFailureRatio": 0.2, "Order": "start-first"}
    assert body["TaskTemplate"]["Resources"] == {
        "Limits": {"NanoCPUs": 1_000_000_000, "MemoryBytes": 134217728},
        "Reservations": {"NanoCPUs": 500_000_000, "MemoryBytes": 67108864}}
    expected = _supported_big()
    # The docker CLI's secret and config references carry IDs it looked up; ours are in
    # test_secret_flags_send_references. `shoal service create` has no --dns yet (the
    # docker CLI's DNSConfig is taken: tests/system/test_docker_services.py).
    for key in ("Secrets", "Configs", "DNSConfig"):
        del expected["TaskTemplate"]["ContainerSpec"][key]
    assert conv.service_spec(body) == conv.service_spec(expected)


@pytest.mark.parametrize("args", [("-d",), ("--detach=1",)])
def test_container_args_after_the_image_are_not_ours(daemon: FakeDaemon,
                                                     args: tuple[str, ...]) -> None:
    result = daemon.run("service", "create", *args, "busybox", "echo", "--detach=false", "-q")
    assert result.exit_code == 0, result.output
    spec = daemon.sent("POST")[0].body["TaskTemplate"]["ContainerSpec"]
    assert spec["Args"] == ["echo", "--detach=false", "-q"]
    assert daemon.calls() == ["POST /services/create"]


@pytest.mark.parametrize("args, message", [
    (("--mode", "global", "--replicas", "2"), "--replicas can only be used"),
    (("--max-concurrent", "2"), "--max-concurrent can only be used"),
    (("--reserve-memory", "lots"), "invalid --reserve-memory"),
    (("--mount", "type=bind,source=/a"), "target=PATH is required"),
    (("-p", "127.0.0.1:80:80"), "host IP"),
    (("--update-order", "sideways"), "sideways"),
    (("--no-healthcheck", "--health-cmd", "true"), "conflicts"),
])
def test_create_usage_errors_send_nothing(daemon: FakeDaemon, args: tuple[str, ...],
                                          message: str) -> None:
    result = daemon.run("service", "create", "-d", *args, "busybox")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert daemon.calls() == []


def test_create_waits_for_convergence(daemon: FakeDaemon) -> None:
    result = daemon.run("service", "create", "--detach=false", "--name", "web", "busybox")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == SID
    assert "overall progress: 2 out of 2 tasks" in lines
    assert any(line.startswith("1/2: running") and line.endswith("=]") for line in lines)
    assert "verify: Waiting 0 seconds to verify that tasks are stable..." in lines
    assert lines[-1] == f"verify: Service {SID} converged"
    tasks_query = next(r.query for r in daemon.requests if r.path == "/tasks")
    assert json.loads(tasks_query["filters"]) == {"_up-to-date": {"true": True},
                                                  "service": {SID: True}}
    service_query = next(r.query for r in daemon.requests if r.path == f"/services/{SID}")
    assert service_query == {"insertDefaults": "0"}
    assert {"GET /nodes", f"GET /services/{SID}"} <= set(daemon.calls())


@pytest.mark.parametrize("state, message", [
    ("paused", "service update paused: update paused due to failure"),
    ("rollback_completed", "service rolled back: update paused due to failure"),
    ("rollback_paused", "service rollback paused: update paused due to failure"),
])
def test_wait_fails_when_the_update_does(daemon: FakeDaemon, state: str, message: str) -> None:
    daemon.route("GET", f"/services/{SID}", make_service(UpdateStatus={
        "State": state, "Message": "update paused due to failure or early termination"}))
    result = daemon.run("service", "update", "--image", "busybox:2", "web")
    assert result.exit_code == 1
    assert message in result.output


# ---------------------------------------------------------------- ls / ps / inspect


def test_ls_table(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/services", [
        make_service(status={"RunningTasks": 2, "DesiredTasks": 3, "CompletedTasks": 0}),
        make_service("jobaaaaaaaaaaaaaaaaaaaaaa", "job", {"ReplicatedJob": {
            "MaxConcurrent": 2, "TotalCompletions": 5}},
            {"RunningTasks": 1, "DesiredTasks": 2, "CompletedTasks": 3}, Endpoint={}),
        make_service("globalaaaaaaaaaaaaaaaaaaa", "agent", {"Global": {}},
                     {"RunningTasks": 3, "DesiredTasks": 3, "CompletedTasks": 0},
                     Endpoint={})])
    result = daemon.run("service", "ls")
    assert result.exit_code == 0, result.output
    assert daemon.sent()[0].query == {"status": "1"}
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
    assert lines[1].split() == ["globalaaaaaa", "agent", "global", "3/3", "busybox:latest"]
    assert lines[2].split() == ["jobaaaaaaaaa", "job", "replicated", "job", "1/2", "(3/5",
                                "completed)", "busybox:latest"]
    assert lines[3].split() == ["svcwebaaaaaa", "web", "replicated", "2/3", "busybox:latest",
                                "*:8080->80/tcp"]
    quiet = daemon.run("service", "ls", "-q", "-f", "mode=global")
    assert quiet.stdout.splitlines()[0] == "globalaaaaaaaaaaaaaaaaaaa"
    assert json.loads(daemon.sent()[-1].query["filters"]) == {"mode": {"global": True}}


def test_ps_table_with_history_nodes_and_errors(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/tasks", [
        make_task("t1old", 1, N1, "failed", desired="shutdown", seconds_ago=600,
                  err="task: non-zero exit (1)", created="2026-01-01T00:00:00Z"),
        make_task("t1", 1, N1, "running"),
        make_task("t2", 2, "", "pending", err="no suitable node (insufficient memory on 2 "
                  "nodes)")])
    result = daemon.run("service", "ps", "web")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "IMAGE", "NODE"]
    assert "   DESIRED STATE   CURRENT STATE" in lines[0]
    assert lines[1].split() == ["t1", "web.1", "busybox:latest", "host1", "Running",
                                "Running", "2", "minutes", "ago"]
    assert lines[2].split() == ["t1old", "\\_", "web.1", "busybox:latest", "host1", "Shutdown",
                                "Failed", "10", "minutes", "ago", '"task:', "non-zero", "exit",
                                '(1)"']
    assert lines[3].endswith('"no suitable node (insufficient memory on 2 nodes)"')
    query = json.loads(next(r.query for r in daemon.requests if r.path == "/tasks")["filters"])
    assert query == {"service": {SID: True}}
    assert daemon.calls().count(f"GET /nodes/{N1}") == 1


def test_ps_filters_and_missing_services(daemon: FakeDaemon) -> None:
    result = daemon.run("service", "ps", "-f", "desired-state=running", "--no-trunc", "web",
                        "nope")
    assert result.exit_code == 1
    assert "no such service: nope" in result.output
    query = json.loads(next(r.query for r in daemon.requests if r.path == "/tasks")["filters"])
    assert query == {"desired-state": {"running": True}, "service": {SID: True}}
    assert "web.1.t1" in result.stdout and "busybox:latest@sha256:abc" in result.stdout


def test_inspect_json_and_pretty(daemon: FakeDaemon) -> None:
    result = daemon.run("service", "inspect", "web")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [make_service()]
    assert daemon.sent()[0].query == {"insertDefaults": "1"}
    pretty = daemon.run("service", "inspect", "--pretty", "web").stdout
    assert "Name:           web" in pretty and " Replicas:      2" in pretty
    missing = daemon.run("service", "inspect", "web", "nope")
    assert missing.exit_code == 1 and "Error response from daemon" in missing.output


# ---------------------------------------------------------------- update / scale / rollback / rm


def test_update_flags(daemon: FakeDaemon) -> None:
    svc = make_service()
    svc["Spec"]["TaskTemplate"]["ContainerSpec"] |= {"Env": ["A=0", "B=1"]}
    svc["Spec"]["Labels"] = {"old": "1"}
    daemon.route("GET", "/services/web", svc)
    result = daemon.run("service", "update", "-d", "--image", "busybox:1.36", "--env-add",
                        "A=1", "--env-rm", "B", "--label-add", "x=y", "--label-rm", "old",
                        "--constraint-add", "node.role==worker", "--force", "--replicas",
                        "4", "--update-parallelism", "3", "--publish-add", "9000:90",
                        "--publish-rm", "8080", "--args", "sleep 'a b'", "web")
    assert result.exit_code == 0, result.output
    assert result.stdout == "web\n"
    post = daemon.sent("POST")[0]
    assert post.path == f"/services/{SID}/update" and post.query == {"version": "11"}
    spec = post.body
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Image"] == "busybox:1.36" and container["Env"] == ["A=1"]
    assert container["Args"] == ["sleep", "a b"]
    assert spec["Labels"] == {"x": "y"}
    assert spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.role==worker"]
    assert spec["TaskTemplate"]["ForceUpdate"] == 1
    assert spec["Mode"] == {"Replicated": {"Replicas": 4}}
    assert spec["UpdateConfig"] == {"Parallelism": 3, "Monitor": 0}
    assert spec["EndpointSpec"]["Ports"] == [{"Protocol": "tcp", "PublishMode": "ingress",
                                              "PublishedPort": 9000, "TargetPort": 90}]
    conv.service_spec(spec)  # the server takes it


@pytest.mark.parametrize("command", [("rollback", "-d", "web"),
                                     ("update", "-d", "--rollback", "web")])
def test_rollback(daemon: FakeDaemon, command: tuple[str, ...]) -> None:
    result = daemon.run("service", *command)
    assert result.exit_code == 0, result.output
    post = daemon.sent("POST")[0]
    assert post.query == {"version": "11", "rollback": "previous"}
    assert post.body == make_service()["Spec"]


def test_rollback_waits_and_reports(daemon: FakeDaemon) -> None:
    daemon.route("GET", f"/services/{SID}", make_service(UpdateStatus={
        "State": "rollback_completed", "Message": "rollback completed"}))
    result = daemon.run("service", "rollback", "web")
    assert result.exit_code == 0, result.output
    assert "overall progress: rolling back update: 2 out of 2 tasks" in result.stdout
    assert result.stdout.splitlines()[-1] == f"verify: Service {SID} converged"


def test_scale(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/services/agent", make_service("g", "agent", {"Global": {}}))
    result = daemon.run("service", "scale", "-d", "web=5", "agent=2")
    assert result.exit_code == 1
    assert result.stdout == "web scaled to 5\n"
    assert "agent: scale can only be used with replicated or replicated-job mode" in \
        result.output
    post = daemon.sent("POST")[0]
    assert post.body["Mode"] == {"Replicated": {"Replicas": 5}}
    assert post.query == {"version": "11"}
    bad = daemon.run("service", "scale", "web")
    assert bad.exit_code == 2 and "SERVICE=REPLICAS" in bad.output


def test_scale_waits(daemon: FakeDaemon) -> None:
    result = daemon.run("service", "scale", "web=2")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"verify: Service {SID} converged"


def test_rm(daemon: FakeDaemon) -> None:
    daemon.route("DELETE", "/services/web", None)
    result = daemon.run("service", "rm", "web", "nope")
    assert result.exit_code == 1
    assert result.stdout == "web\n"
    assert "Error response from daemon: page not found" in result.output
    assert daemon.calls() == ["DELETE /services/web", "DELETE /services/nope"]


# ---------------------------------------------------------------- parsing and progress


def test_parsers() -> None:
    assert parse_size("64M") == 64 * 1024**2 and parse_size("1.5g") == 1536 * 1024**2
    assert parse_size("512") == 512 and parse_size("2KiB") == 2048
    assert parse_cpus("0.5") == 500_000_000 and parse_cpus("2") == 2_000_000_000
    assert parse_publish("80") == {"Protocol": "tcp", "PublishMode": "ingress",
                                   "TargetPort": 80}
    assert parse_publish("53:53/udp")["Protocol"] == "udp"
    assert parse_mount("type=tmpfs,dst=/t,tmpfs-mode=1777") == {
        "Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"Mode": 0o1777}}
    assert parse_mount("source=v,target=/v,ro=false") == {"Type": "volume", "Source": "v",
                                                          "Target": "/v", "ReadOnly": False}
    for bad in (lambda: parse_cpus("x"), lambda: parse_mount("target=/a,propagation=x"),
                lambda: parse_publish("a:b")):
        with pytest.raises(click.BadParameter):
            bad()


def test_progress_snapshot_by_slot_and_node() -> None:
    svc = make_service()
    down = [{"ID": "n3", "Status": {"State": "down"}}]
    tasks = [make_task("a", 1, N1, "running"), make_task("a0", 1, N1, "failed",
                                                         desired="shutdown"),
             make_task("b", 2, "n3", "running"), make_task("c", 3, N1, "running")]
    snap = progress.snapshot(svc, tasks, down)
    assert snap.lines == [("1/2", "running")] and not snap.converged
    assert progress.render(snap, False)[0] == "overall progress: 1 out of 2 tasks"
    glob = progress.snapshot(make_service(mode={"Global": {}}),
                             [make_task("g1", 0, N1, "running"),
                              make_task("g2", 0, N2, "preparing")], [])
    assert glob.total == 2 and glob.done == 1 and not glob.converged
    job = progress.snapshot(make_service(mode={"ReplicatedJob": {"TotalCompletions": 2}}),
                            [make_task("j1", 0, N1, "complete", desired="complete"),
                             make_task("j2", 1, N1, "complete", desired="complete")], [])
    assert job.converged and job.job
    assert progress.bar("new").startswith("[===>") and progress.bar("running") == "[" + \
        "=" * progress.BAR + "]"


def test_a_zero_restart_delay_is_sent(daemon: FakeDaemon) -> None:
    result = daemon.run("service", "create", "-d", "--restart-delay", "0s", "busybox")
    assert result.exit_code == 0, result.output
    assert daemon.sent("POST")[0].body["TaskTemplate"]["RestartPolicy"]["Delay"] == 0
