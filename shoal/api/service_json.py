"""Service, Task and their specs (protobuf) → the Docker Engine API's JSON, as `docker service
inspect`, `service ls` and `service ps` read it. Mirrors Go's `omitempty`: unset fields are
left out. (convert_service.py reads the other way.)"""

from __future__ import annotations

from typing import Any

from proto import objects_pb2 as pb
from shoal.api.convert import _meta, timestamp
from shoal.api.convert_service import (
    DEFAULT_MONITOR_NS,
    DEFAULT_RESTART_DELAY_NS,
    DEFAULT_STOP_GRACE_NS,
    ENDPOINT_MODE,
    FAILURE_ACTION,
    MODE_KEYS,
    MOUNT_TYPE,
    ORDER,
    PROTOCOL,
    PUBLISH_MODE,
    RESTART,
)

TASK_STATES = {v: k.lower() for k, v in pb.TaskState.items()}
UPDATE_STATE = {pb.UpdateStatus.UPDATING: "updating", pb.UpdateStatus.PAUSED: "paused",
                pb.UpdateStatus.COMPLETED: "completed",
                pb.UpdateStatus.ROLLBACK_STARTED: "rollback_started",
                pb.UpdateStatus.ROLLBACK_PAUSED: "rollback_paused",
                pb.UpdateStatus.ROLLBACK_COMPLETED: "rollback_completed"}


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    """Go's omitempty: leave out zero values."""
    if value not in (None, "", 0, [], {}, False):
        out[key] = value


def service_spec_json(spec: pb.ServiceSpec, defaults: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _put(out, "Name", spec.annotations.name)
    out["Labels"] = dict(spec.annotations.labels)
    out["TaskTemplate"] = task_spec_json(spec.task, defaults)
    out["Mode"] = mode_json(spec)
    rolling = defaults and not mode_name(spec).endswith("_job")  # jobs don't roll
    if spec.HasField("update") or rolling:
        out["UpdateConfig"] = _update_config_json(spec.update, defaults)
    if spec.HasField("rollback") or rolling:
        out["RollbackConfig"] = _update_config_json(spec.rollback, defaults)
    out["EndpointSpec"] = endpoint_spec_json(spec.endpoint)
    return out


def mode_name(spec: pb.ServiceSpec) -> str:
    """"replicated", "global", "replicated_job" or "global_job" (the oneof's field)."""
    return spec.WhichOneof("mode") or "replicated"


def mode_json(spec: pb.ServiceSpec) -> dict[str, Any]:
    name = mode_name(spec)
    if name == "replicated":
        return {"Replicated": {"Replicas": spec.replicated.replicas}}
    if name == "replicated_job":
        job = spec.replicated_job
        return {"ReplicatedJob": {"MaxConcurrent": job.max_concurrent,
                                  "TotalCompletions": job.total_completions}}
    return {MODE_KEYS[name]: {}}


def task_spec_json(task: pb.TaskSpec, defaults: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"ContainerSpec": _container_json(task.container, defaults)}
    res = task.resources
    out["Resources"] = {k: v for k, v in (("Limits", _resources_json(res.limits)),
                                          ("Reservations", _resources_json(res.reservations)))
                        if v or defaults}
    if task.HasField("restart") or defaults:
        r = task.restart
        out["RestartPolicy"] = {
            "Condition": RESTART[r.condition],
            "Delay": r.delay.ns if r.HasField("delay") else DEFAULT_RESTART_DELAY_NS,
            "MaxAttempts": r.max_attempts}
        if r.HasField("window"):
            out["RestartPolicy"]["Window"] = r.window.ns
    out["Placement"] = _placement_json(task.placement)
    out["ForceUpdate"] = task.force_update
    out["Runtime"] = "container"
    if task.networks:
        out["Networks"] = [{"Target": n.target} | ({"Aliases": list(n.aliases)} if n.aliases
                                                    else {}) for n in task.networks]
    return out


def _resources_json(r: pb.Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _put(out, "NanoCPUs", r.nano_cpus)
    _put(out, "MemoryBytes", r.memory_bytes)
    return out


def _container_json(c: pb.ContainerSpec, defaults: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"Image": c.image}
    _put(out, "Labels", dict(c.labels))
    for key, value in (("Command", list(c.command)), ("Args", list(c.args)),
                       ("Hostname", c.hostname), ("Env", list(c.env)), ("Dir", c.dir),
                       ("User", c.user), ("TTY", c.tty), ("Init", c.init),
                       ("StopSignal", c.stop_signal)):
        _put(out, key, value)
    _put(out, "Mounts", [_mount_json(m) for m in c.mounts])
    _put(out, "Hosts", list(c.hosts))
    if c.HasField("dns_config"):
        d = c.dns_config
        out["DNSConfig"] = {k: v for k, v in (("Nameservers", list(d.nameservers)),
                                              ("Search", list(d.search)),
                                              ("Options", list(d.options))) if v}
    _put(out, "Secrets", [{"File": _file_json(r.file), "SecretID": r.secret_id,
                           "SecretName": r.secret_name} for r in c.secrets])
    _put(out, "Configs", [{"File": _file_json(r.file), "ConfigID": r.config_id,
                           "ConfigName": r.config_name} for r in c.configs])
    if c.HasField("stop_grace_period"):
        out["StopGracePeriod"] = c.stop_grace_period.ns
    elif defaults:
        out["StopGracePeriod"] = DEFAULT_STOP_GRACE_NS
    if c.HasField("healthcheck"):
        h = c.healthcheck
        hc: dict[str, Any] = {"Test": list(h.test)}
        for name, ns in (("Interval", h.interval_ns), ("Timeout", h.timeout_ns),
                         ("StartPeriod", h.start_period_ns), ("Retries", h.retries)):
            _put(hc, name, ns)
        out["Healthcheck"] = hc
    if defaults:
        out["Isolation"] = "default"
    return out


def _file_json(f: pb.FileTarget) -> dict[str, Any]:
    return {"Name": f.name, "UID": f.uid, "GID": f.gid, "Mode": f.mode}


def _mount_json(m: pb.Mount) -> dict[str, Any]:
    out: dict[str, Any] = {"Type": MOUNT_TYPE[m.type]}
    _put(out, "Source", m.source)
    out["Target"] = m.target
    _put(out, "ReadOnly", m.read_only)
    tmpfs: dict[str, Any] = {}
    _put(tmpfs, "SizeBytes", m.tmpfs_size_bytes)
    _put(tmpfs, "Mode", m.tmpfs_mode)
    _put(out, "TmpfsOptions", tmpfs)
    volume: dict[str, Any] = {}
    _put(volume, "NoCopy", m.volume_no_copy)
    _put(volume, "Labels", dict(m.volume_labels))
    _put(out, "VolumeOptions", volume)
    return out


def _placement_json(p: pb.Placement) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _put(out, "Constraints", list(p.constraints))
    _put(out, "Preferences", [{"Spread": {"SpreadDescriptor": x.spread.spread_descriptor}}
                              for x in p.preferences])
    _put(out, "MaxReplicas", p.max_replicas)
    _put(out, "Platforms", [{"Architecture": x.architecture, "OS": x.os} for x in p.platforms])
    return out


def _update_config_json(u: pb.UpdateConfig, defaults: bool) -> dict[str, Any]:
    parallelism = u.parallelism
    if defaults and not u.ListFields():
        parallelism = 1  # an unset config means swarmkit's defaults
    out: dict[str, Any] = {"Parallelism": parallelism,
                           "FailureAction": FAILURE_ACTION[u.failure_action]}
    _put(out, "Delay", u.delay_ns)
    if u.HasField("monitor") or defaults:
        out["Monitor"] = u.monitor.ns if u.HasField("monitor") else DEFAULT_MONITOR_NS
    out["MaxFailureRatio"] = u.max_failure_ratio
    out["Order"] = ORDER[u.order]
    return out


def endpoint_spec_json(e: pb.EndpointSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"Mode": ENDPOINT_MODE[e.mode]}
    _put(out, "Ports", [port_json(p) for p in e.ports])
    return out


def port_json(p: pb.PortConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _put(out, "Name", p.name)
    out |= {"Protocol": PROTOCOL[p.protocol], "TargetPort": p.target_port,
            "PublishedPort": p.published_port, "PublishMode": PUBLISH_MODE[p.publish_mode]}
    return out


def service_json(svc: pb.Service, defaults: bool = False,
                 status: dict[str, int] | None = None) -> dict[str, Any]:
    out = _meta(svc) | {"Spec": service_spec_json(svc.spec, defaults)}
    if svc.has_previous_spec:
        out["PreviousSpec"] = service_spec_json(svc.previous_spec, defaults)
    ports = svc.endpoint.ports if svc.HasField("endpoint") else svc.spec.endpoint.ports
    out["Endpoint"] = {"Spec": endpoint_spec_json(svc.spec.endpoint),
                       "Ports": [port_json(p) for p in ports],
                       "VirtualIPs": [{"NetworkID": v.network_id, "Addr": v.addr}
                                      for v in svc.endpoint.virtual_ips]}
    u = svc.update_status
    if u.state != pb.UpdateStatus.UNKNOWN:
        out["UpdateStatus"] = {"State": UPDATE_STATE[u.state],
                               "StartedAt": timestamp(u.started_at_ns), "Message": u.message}
        if u.completed_at_ns:
            out["UpdateStatus"]["CompletedAt"] = timestamp(u.completed_at_ns)
    if status is not None:
        out["ServiceStatus"] = status
    if mode_name(svc.spec).endswith("_job"):
        # The run the tasks carry is always the spec_version (manager/orchestrator/jobs.py);
        # the orchestrator records it in job_status a moment after a create or update, but
        # the CLI's job progress reads the index once, at once, and counts only the tasks of
        # that run: so show the run the tasks will carry from the first read on.
        out["JobStatus"] = {"JobIteration": {"Index": svc.spec_version},
                            "LastExecution": timestamp(svc.job_status.last_execution_ns)}
    return out


def task_json(task: pb.Task, job: bool = False) -> dict[str, Any]:
    before, after = task_json_parts(task, job)
    return before | {"Spec": task_spec_json(task.spec)} | after


def task_json_parts(task: pb.Task, job: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """A task's JSON without its Spec: the keys before it and those after it (the list
    endpoint encodes the Spec once for every task made from the same spec)."""
    st = task.status
    status: dict[str, Any] = {"Timestamp": timestamp(st.timestamp_ns),
                              "State": TASK_STATES[st.state], "Message": st.message}
    _put(status, "Err", st.err)
    if st.HasField("container"):
        status["ContainerStatus"] = {"ContainerID": st.container.container_id,
                                     "PID": st.container.pid, "ExitCode": st.container.exit_code}
    status["PortStatus"] = {"Ports": [port_json(p) for p in st.port_status.ports]} \
        if st.port_status.ports else {}
    before = _meta(task) | {"Name": task.annotations.name,
                            "Labels": dict(task.annotations.labels)}
    out: dict[str, Any] = {"ServiceID": task.service_id}
    # swarmkit numbers a replicated job's slots from 0 (ours from 1, as a replicated
    # service's): the docker CLI's job progress walks slots 0..n-1, so show Docker's.
    _put(out, "Slot", task.slot - 1 if job and task.slot else task.slot)
    _put(out, "NodeID", task.node_id)
    out |= {"Status": status, "DesiredState": TASK_STATES[task.desired_state]}
    if job:
        out["JobIteration"] = {"Index": task.job_iteration}
    if task.networks:
        out["NetworksAttachments"] = [{"Network": {"ID": a.network_id},
                                       "Addresses": list(a.addresses)} for a in task.networks]
    return before, out
