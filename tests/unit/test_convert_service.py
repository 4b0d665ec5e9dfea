"""ServiceSpec / Service / Task ⇄ Docker JSON, with the bodies the docker CLI and docker-py
send (reference: swarm-features.md §2.3, §2.7, §2.8)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proto import objects_pb2 as pb
from shoal.api import convert_service as conv
from shoal.api import service_json as sjson
from shoal.errors import InvalidRequest

# §2.3: `docker service create --detach --name web --replicas 3 -p 8080:80 busybox sleep 1000`
# (without --network: Shoal's networks come with the overlay work).
CLI_SIMPLE: dict[str, Any] = {
    "Name": "web", "Labels": {},
    "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest@sha256:" + "a" * 64,
                                       "Args": ["sleep", "1000"], "Init": False,
                                       "DNSConfig": {}},
                     "Resources": {"Limits": {}, "Reservations": {}},
                     "Placement": {"Platforms": [{"Architecture": "amd64", "OS": "linux"}]},
                     "ForceUpdate": 0},
    "Mode": {"Replicated": {"Replicas": 3}},
    "EndpointSpec": {"Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": 80,
                                               "PublishedPort": 8080,
                                               "PublishMode": "ingress"}]}}

# §2.3: the create with many flags (global mode, constraints, spread, resources, restart,
# update/rollback config, host-mode UDP port, dnsrr, three mounts, env, healthcheck ...).
CLI_BIG: dict[str, Any] = {
    "Name": "big", "Labels": {"a": "b"},
    "Mode": {"Global": {}},
    "UpdateConfig": {"Parallelism": 2, "Delay": 10000000000, "FailureAction": "rollback",
                     "Monitor": 20000000000, "MaxFailureRatio": 0.2, "Order": "start-first"},
    "RollbackConfig": {"Parallelism": 1, "Delay": 2000000000, "FailureAction": "pause",
                       "Monitor": 5000000000, "MaxFailureRatio": 0, "Order": "stop-first"},
    "EndpointSpec": {"Mode": "dnsrr", "Ports": [{"Protocol": "udp", "TargetPort": 90,
                                                 "PublishedPort": 9090,
                                                 "PublishMode": "host"}]},
    "TaskTemplate": {
        "Resources": {"Limits": {"NanoCPUs": 1000000000, "MemoryBytes": 134217728},
                      "Reservations": {"NanoCPUs": 500000000, "MemoryBytes": 67108864}},
        "RestartPolicy": {"Condition": "on-failure", "Delay": 5000000000, "MaxAttempts": 3,
                          "Window": 60000000000},
        "Placement": {"Constraints": ["node.role==worker", "node.labels.zone==a"],
                      "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]},
        "Networks": [{"Target": "netid", "Aliases": ["apix"]}],
        "LogDriver": {"Name": "json-file", "Options": {"max-size": "1m"}},
        "ContainerSpec": {
            "Image": "nginx:alpine", "Labels": {"c": "1"}, "Hostname": "h",
            "Env": ["FOO=bar", "BAZ=1"], "Dir": "/w", "User": "1000", "Init": True,
            "StopSignal": "SIGINT", "StopGracePeriod": 20000000000,
            "Mounts": [{"Type": "volume", "Source": "data", "Target": "/data"},
                       {"Type": "bind", "Source": "/srv", "Target": "/host", "ReadOnly": True},
                       {"Type": "tmpfs", "Target": "/run/x",
                        "TmpfsOptions": {"SizeBytes": 1000000}}],
            "Healthcheck": {"Test": ["CMD-SHELL", "wget -q -O- localhost"],
                            "Interval": 10000000000, "Timeout": 3000000000,
                            "StartPeriod": 5000000000, "Retries": 3},
            "DNSConfig": {"Nameservers": ["8.8.8.8"]},
            "Secrets": [{"File": {"Name": "/run/secrets/db", "UID": "0", "GID": "0",
                                  "Mode": 256}, "SecretID": "s", "SecretName": "dbpass"}],
            "Configs": [{"File": {"Name": "/etc/app.cfg", "UID": "0", "GID": "0", "Mode": 292},
                         "ConfigID": "c", "ConfigName": "appcfg"}],
            "Sysctls": {"net.core.somaxconn": "1024"}, "CapabilityAdd": ["CAP_NET_ADMIN"],
            "Ulimits": [{"Name": "nofile", "Hard": 2048, "Soft": 1024}]}}}

# The parts of CLI_BIG Shoal does not implement yet, by where they sit.
BIG_UNSUPPORTED = {"TaskTemplate": ("LogDriver",),
                   "ContainerSpec": ("Sysctls",
                                     "CapabilityAdd", "Ulimits")}

# §2.8: docker-py `services.create(...)`: lowercase mode key, Args null, no PublishMode.
DOCKER_PY: dict[str, Any] = {
    "Name": "pysvc",
    "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Command": ["sleep", "100"],
                                       "Args": None}},
    "Mode": {"replicated": {"Replicas": 3}},
    "EndpointSpec": {"Ports": [{"Protocol": "tcp", "PublishedPort": 8080, "TargetPort": 80}]},
    "UpdateConfig": {"Parallelism": 1, "Delay": 0, "FailureAction": "continue",
                     "Monitor": 0, "MaxFailureRatio": 0, "Order": "stop-first"}}


def _supported_big() -> dict[str, Any]:
    body = copy.deepcopy(CLI_BIG)
    for key in BIG_UNSUPPORTED["TaskTemplate"]:
        del body["TaskTemplate"][key]
    for key in BIG_UNSUPPORTED["ContainerSpec"]:
        del body["TaskTemplate"]["ContainerSpec"][key]
    return body


def test_cli_simple_create_body() -> None:
    spec = conv.service_spec(CLI_SIMPLE)
    assert spec.annotations.name == "web"
    assert spec.replicated.replicas == 3
    assert list(spec.task.container.args) == ["sleep", "1000"]
    assert spec.task.placement.platforms[0].os == "linux"
    port = spec.endpoint.ports[0]
    assert (port.target_port, port.published_port, port.publish_mode) == (80, 8080,
                                                                           pb.PortConfig.INGRESS)
    out = sjson.service_spec_json(spec)
    assert out["Mode"] == {"Replicated": {"Replicas": 3}}
    assert out["EndpointSpec"] == CLI_SIMPLE["EndpointSpec"]
    assert out["TaskTemplate"]["ContainerSpec"] == {"Image": CLI_SIMPLE["TaskTemplate"][
        "ContainerSpec"]["Image"], "Args": ["sleep", "1000"]}
    assert conv.service_spec(out) == spec  # what we write back reads the same


def test_cli_big_create_body_round_trips() -> None:
    body = _supported_big()
    spec = conv.service_spec(body)
    assert spec.WhichOneof("mode") == "global"
    c = spec.task.container
    assert c.stop_grace_period.ns == 20_000_000_000 and c.init and c.user == "1000"
    assert [pb.Mount.Type.Name(m.type) for m in c.mounts] == ["VOLUME", "BIND", "TMPFS"]
    assert c.mounts[2].tmpfs_size_bytes == 1_000_000 and c.mounts[1].read_only
    assert spec.task.restart.condition == pb.RestartPolicy.ON_FAILURE
    assert spec.task.restart.window.ns == 60_000_000_000
    assert spec.update.order == pb.UpdateConfig.START_FIRST
    assert spec.update.failure_action == pb.UpdateConfig.ROLLBACK
    assert spec.update.max_failure_ratio == pytest.approx(0.2)
    assert spec.endpoint.mode == pb.EndpointSpec.DNSRR
    out = sjson.service_spec_json(spec)
    expected = copy.deepcopy(body)
    expected["TaskTemplate"] |= {"ForceUpdate": 0, "Runtime": "container"}
    out["UpdateConfig"]["MaxFailureRatio"] = round(out["UpdateConfig"]["MaxFailureRatio"], 6)
    assert out == expected
    assert conv.service_spec(out) == spec


@pytest.mark.parametrize("where, key", [(w, k) for w, keys in BIG_UNSUPPORTED.items()
                                        for k in keys])
def test_cli_big_unsupported_parts_are_refused_by_name(where: str, key: str) -> None:
    body = _supported_big()
    target = body["TaskTemplate"] if where == "TaskTemplate" else \
        body["TaskTemplate"]["ContainerSpec"]
    source = CLI_BIG["TaskTemplate"] if where == "TaskTemplate" else \
        CLI_BIG["TaskTemplate"]["ContainerSpec"]
    target[key] = source[key]
    with pytest.raises(InvalidRequest, match=f"{where}.{key} is not supported"):
        conv.service_spec(body)


def test_hosts_and_dns_config_round_trip_and_are_checked() -> None:
    body = copy.deepcopy(CLI_SIMPLE)
    container = body["TaskTemplate"]["ContainerSpec"]
    container |= {"Hosts": ["10.1.2.3 extra.example other"],
                  "DNSConfig": {"Nameservers": ["10.0.0.53"], "Search": ["example.org"],
                                "Options": ["ndots:2"]}}
    spec = conv.service_spec(body)
    c = spec.task.container
    assert list(c.hosts) == ["10.1.2.3 extra.example other"]
    assert list(c.dns_config.search) == ["example.org"]
    out = sjson.service_spec_json(spec)["TaskTemplate"]["ContainerSpec"]
    assert out["Hosts"] == container["Hosts"] and out["DNSConfig"] == container["DNSConfig"]
    container["Hosts"] = ["extra.example:10.1.2.3"]
    with pytest.raises(InvalidRequest, match=r"ContainerSpec.Hosts\[0\]"):
        conv.service_spec(body)
    container["Hosts"] = []
    container["DNSConfig"] = {"Nameservers": ["dns.example"]}
    with pytest.raises(InvalidRequest, match=r"DNSConfig.Nameservers\[0\] 'dns.example'"):
        conv.service_spec(body)


def test_empty_unsupported_fields_are_accepted() -> None:
    body = copy.deepcopy(CLI_SIMPLE)
    body["TaskTemplate"]["ContainerSpec"]["Privileges"] = {
        "CredentialSpec": None, "SELinuxContext": None, "NoNewPrivileges": False}
    body["TaskTemplate"]["Networks"] = []
    conv.service_spec(body)


def test_docker_py_body_lowercase_mode_and_defaults() -> None:
    spec = conv.service_spec(DOCKER_PY)
    assert spec.replicated.replicas == 3
    assert list(spec.task.container.command) == ["sleep", "100"]
    assert not spec.task.container.args
    assert spec.endpoint.ports[0].publish_mode == pb.PortConfig.INGRESS
    assert spec.update.failure_action == pb.UpdateConfig.CONTINUE
    assert spec.update.HasField("monitor") and spec.update.monitor.ns == 0


def test_keys_match_case_insensitively() -> None:
    spec = conv.service_spec({"name": "x", "taskTemplate": {"containerSpec": {"image": "a"}},
                              "mode": {"REPLICATED": {"replicas": 2}}})
    assert spec.annotations.name == "x" and spec.replicated.replicas == 2


@pytest.mark.parametrize("mode, field, expected", [
    ({"Replicated": {}}, "replicated", pb.ReplicatedService(replicas=1)),
    ({}, "replicated", pb.ReplicatedService(replicas=1)),
    ({"Replicated": {"Replicas": 0}}, "replicated", pb.ReplicatedService(replicas=0)),
    ({"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 4}}, "replicated_job",
     pb.ReplicatedJob(max_concurrent=2, total_completions=4)),
    ({"ReplicatedJob": {}}, "replicated_job", pb.ReplicatedJob(max_concurrent=1,
                                                               total_completions=1)),
    ({"GlobalJob": {}}, "global_job", pb.GlobalJob()),
    ({"global": {}}, "global", pb.GlobalService()),
])
def test_modes(mode: dict[str, Any], field: str, expected: Any) -> None:
    spec = conv.service_spec({"Name": "j", "TaskTemplate": {"ContainerSpec": {"Image": "a"}},
                              "Mode": mode})
    assert spec.WhichOneof("mode") == field
    assert getattr(spec, field) == expected
    assert sjson.service_spec_json(spec)["Mode"] == sjson.mode_json(spec)
    assert conv.service_spec({"Name": "j", "TaskTemplate": {"ContainerSpec": {"Image": "a"}},
                              "Mode": sjson.mode_json(spec)}) == spec


@pytest.mark.parametrize("body, message", [
    ({"Mode": {"Replicated": {"Replicas": -1}}}, "Replicas -1: must not be negative"),
    ({"Mode": {"ReplicatedJob": {"TotalCompletions": -4}}}, "TotalCompletions -4"),
    ({"Mode": {"Replicated": {}, "Global": {}}}, "set only one of"),
    ({"Mode": {"Sometimes": {}}}, 'unknown field "Sometimes"'),
    ({"Bogus": 1}, 'ServiceSpec: unknown field "Bogus"'),
    ({"TaskTemplate": {"ContainerSpec": {"Image": "a", "Mounts": [
        {"Type": "npipe", "Target": "/x"}]}}}, "unknown mount type"),
    ({"TaskTemplate": {"RestartPolicy": {"Condition": "sometimes"}}}, "restart condition"),
    ({"UpdateConfig": {"Order": "middle-first"}}, "UpdateConfig.Order"),
    ({"UpdateConfig": {"FailureAction": "explode"}}, "UpdateConfig.FailureAction"),
    ({"UpdateConfig": {"MaxFailureRatio": 2}}, "between 0 and 1"),
    ({"TaskTemplate": {"Resources": {"Limits": {"MemoryBytes": -5}}}}, "must not be negative"),
    ({"TaskTemplate": {"ContainerSpec": {"StopGracePeriod": "10s"}}}, "wrong type"),
    ({"EndpointSpec": {"Ports": [{"TargetPort": 70000}]}}, "must be 0-65535"),
    ({"TaskTemplate": {"Runtime": "plugin"}}, "Runtime"),
])
def test_bad_bodies_are_refused_with_the_field_named(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        conv.service_spec(body)


def _service() -> pb.Service:
    spec = conv.service_spec(CLI_SIMPLE)
    svc = pb.Service(id="svc1", spec=spec, spec_version=2)
    svc.meta.version.index = 9
    svc.meta.created_at_ns = 1_700_000_000_000_000_000
    return svc


def test_service_json_shape() -> None:
    svc = _service()
    out = sjson.service_json(svc, status={"RunningTasks": 1, "DesiredTasks": 3,
                                         "CompletedTasks": 0})
    assert out["ID"] == "svc1" and out["Version"] == {"Index": 9}
    assert out["CreatedAt"] == "2023-11-14T22:13:20.000000000Z"
    assert out["Endpoint"] == {"Spec": CLI_SIMPLE["EndpointSpec"],
                               "Ports": CLI_SIMPLE["EndpointSpec"]["Ports"], "VirtualIPs": []}
    assert "UpdateStatus" not in out and "PreviousSpec" not in out and "JobStatus" not in out
    assert out["ServiceStatus"]["DesiredTasks"] == 3
    svc.update_status.state = pb.UpdateStatus.ROLLBACK_STARTED
    svc.update_status.message = "manually requested rollback"
    svc.previous_spec.CopyFrom(svc.spec)
    svc.has_previous_spec = True
    out = sjson.service_json(svc)
    assert out["UpdateStatus"]["State"] == "rollback_started"
    assert out["UpdateStatus"]["Message"] == "manually requested rollback"
    assert out["PreviousSpec"]["Name"] == "web"


def test_insert_defaults() -> None:
    svc = _service()
    spec = sjson.service_json(svc, defaults=True)["Spec"]
    tt = spec["TaskTemplate"]
    assert tt["RestartPolicy"] == {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0}
    assert tt["ContainerSpec"]["StopGracePeriod"] == 10_000_000_000
    assert spec["UpdateConfig"] == {"Parallelism": 1, "FailureAction": "pause",
                                    "Monitor": 5_000_000_000, "MaxFailureRatio": 0,
                                    "Order": "stop-first"}
    assert spec["RollbackConfig"] == spec["UpdateConfig"]
    assert "UpdateConfig" not in sjson.service_json(svc)["Spec"]
    conv.service_spec(spec)  # what `inspect` shows can be sent back


def test_job_service_and_task_json() -> None:
    spec = conv.service_spec({"Name": "j", "TaskTemplate": {"ContainerSpec": {"Image": "a"}},
                              "Mode": {"ReplicatedJob": {"MaxConcurrent": 2,
                                                         "TotalCompletions": 4}}})
    # The first read after a create already shows the run its tasks will carry (spec_version),
    # before the orchestrator records it: the CLI's job progress counts that run's tasks.
    svc = pb.Service(id="s", spec=spec, spec_version=3)
    assert sjson.service_json(svc)["JobStatus"]["JobIteration"] == {"Index": 3}
    svc.job_status.job_iteration = 3
    assert sjson.service_json(svc)["JobStatus"]["JobIteration"] == {"Index": 3}
    task = pb.Task(id="t1", service_id="s", slot=2, node_id="n1", job_iteration=3,
                   desired_state=pb.COMPLETE, spec=spec.task)
    task.annotations.name = "j.2.t1"
    task.status.state = pb.FAILED
    task.status.err = "task: non-zero exit (3)"
    task.status.container.exit_code = 3
    task.status.container.container_id = "c1"
    out = sjson.task_json(task, job=True)
    assert out["JobIteration"] == {"Index": 3}
    assert out["Status"]["State"] == "failed" and out["DesiredState"] == "complete"
    assert out["Status"]["ContainerStatus"] == {"ContainerID": "c1", "PID": 0, "ExitCode": 3}
    assert out["Status"]["Err"] == "task: non-zero exit (3)"
    # Docker's replicated-job slots count from 0 (the docker CLI's job progress needs it)
    assert out["Slot"] == 1 and out["NodeID"] == "n1" and out["Name"] == "j.2.t1"
    task.slot = 1
    assert "Slot" not in sjson.task_json(task, job=True)
    assert out["Spec"]["ContainerSpec"]["Image"] == "a"


def test_task_json_for_new_global_task() -> None:
    task = pb.Task(id="t", service_id="s")
    out = sjson.task_json(task)
    assert out["Status"]["State"] == "new" and out["DesiredState"] == "new"
    assert "Slot" not in out and "NodeID" not in out and "JobIteration" not in out
    assert "ContainerStatus" not in out["Status"]


def test_a_stacks_named_volume_keeps_its_volume_options() -> None:
    """`docker stack deploy` sends a named volume's VolumeOptions with the stack's label."""
    mount = {"Type": "volume", "Source": "app_data", "Target": "/data",
             "VolumeOptions": {"NoCopy": True,
                               "Labels": {"com.docker.stack.namespace": "app"}}}
    body = copy.deepcopy(CLI_SIMPLE)
    body["TaskTemplate"]["ContainerSpec"]["Mounts"] = [mount]
    spec = conv.service_spec(body)
    got = spec.task.container.mounts[0]
    assert dict(got.volume_labels) == {"com.docker.stack.namespace": "app"}
    assert got.volume_no_copy
    assert sjson.service_spec_json(spec)["TaskTemplate"]["ContainerSpec"]["Mounts"] == [mount]
    mount["VolumeOptions"]["DriverConfig"] = {"Name": "nfs"}
    with pytest.raises(InvalidRequest, match="VolumeOptions.DriverConfig is not supported"):
        conv.service_spec(body)
