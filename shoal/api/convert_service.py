"""The Docker Engine API's JSON of a ServiceSpec → protobuf (what clients send), and the
enum names both directions share (service_json.py writes the other way).

Reading: keys match case-insensitively (docker-py sends `"Mode":{"replicated":...}`), unknown
keys and wrong types are a 400 naming the field, durations are integer nanoseconds, and
negative numbers (which JSON allows but the unsigned proto fields do not) are refused here.
Fields of Docker's API that Shoal does not implement are accepted only while empty (the
docker CLI sends `"DNSConfig":{}`, `"Init":false`, ...); with content they are a 400 that says
so, never silently dropped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from proto import objects_pb2 as pb
from shoal.api.request import check_int, fields
from shoal.errors import InvalidRequest

RESTART = {pb.RestartPolicy.ANY: "any", pb.RestartPolicy.NONE: "none",
           pb.RestartPolicy.ON_FAILURE: "on-failure"}
FAILURE_ACTION = {pb.UpdateConfig.PAUSE: "pause", pb.UpdateConfig.CONTINUE: "continue",
                  pb.UpdateConfig.ROLLBACK: "rollback"}
ORDER = {pb.UpdateConfig.STOP_FIRST: "stop-first", pb.UpdateConfig.START_FIRST: "start-first"}
MOUNT_TYPE = {pb.Mount.BIND: "bind", pb.Mount.VOLUME: "volume", pb.Mount.TMPFS: "tmpfs"}
PROTOCOL = {pb.PortConfig.TCP: "tcp", pb.PortConfig.UDP: "udp", pb.PortConfig.SCTP: "sctp"}
PUBLISH_MODE = {pb.PortConfig.INGRESS: "ingress", pb.PortConfig.HOST: "host"}
ENDPOINT_MODE = {pb.EndpointSpec.VIP: "vip", pb.EndpointSpec.DNSRR: "dnsrr"}
MODE_KEYS = {"replicated": "Replicated", "global": "Global",
             "replicated_job": "ReplicatedJob", "global_job": "GlobalJob"}

# Defaults shown with ?insertDefaults=true (swarmkit's api/defaults).
DEFAULT_RESTART_DELAY_NS = 5_000_000_000
DEFAULT_MONITOR_NS = 5_000_000_000
DEFAULT_STOP_GRACE_NS = 10_000_000_000

ANY = object
NUM = (int, float)


def _unsupported(f: dict[str, Any], names: tuple[str, ...], where: str) -> None:
    for name in names:
        if not _empty(f.get(name)):
            raise InvalidRequest(f"{where}.{name} is not supported by Shoal yet; remove it "
                                 "from the request (or leave it empty)")


def _empty(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_empty(v) for v in value.values())
    return value in (None, False, 0, "", [])


def _enum(value: str, names: Mapping[Any, str], what: str) -> Any:
    if value == "":
        return next(iter(names))
    for key, name in names.items():
        if name == value.lower():
            return key
    raise InvalidRequest(f"invalid {what} {value!r}: expected one of {', '.join(names.values())}")


def _nonneg(f: dict[str, Any], name: str, where: str, kind: str = "int64") -> int:
    """The field as an int the proto field (`kind`) can hold: JSON numbers have no bound, and
    one out of range would fail in protobuf (a 500) instead of here (a 400). The limits that
    keep the cluster safe are the manager's (manager/controlapi/limits.py)."""
    value = f.get(name, 0)
    if value < 0:
        raise InvalidRequest(f"invalid {where}.{name} {value}: must not be negative")
    check_int(value, kind, f"{where}.{name}")
    return int(value)


def _strings(f: dict[str, Any], name: str, where: str) -> list[str]:
    values = f.get(name, [])
    if not all(isinstance(v, str) for v in values):
        raise InvalidRequest(f"{where}.{name} must be a list of strings")
    return list(values)


def _labels(f: dict[str, Any], name: str, where: str) -> dict[str, str]:
    labels = f.get(name, {})
    if not all(isinstance(v, str) for v in labels.values()):
        raise InvalidRequest(f"{where}.{name} must map strings to strings")
    return dict(labels)


# ---------------------------------------------------------------- JSON → proto


def service_spec(body: Any) -> pb.ServiceSpec:
    w = "ServiceSpec"
    f = fields(body, {"Name": str, "Labels": dict, "TaskTemplate": dict, "Mode": dict,
                      "UpdateConfig": dict, "RollbackConfig": dict, "Networks": list,
                      "EndpointSpec": dict}, w)
    spec = pb.ServiceSpec()
    spec.annotations.name = f.get("Name", "")
    spec.annotations.labels.update(_labels(f, "Labels", w))
    spec.task.CopyFrom(task_spec(f.get("TaskTemplate"), f"{w}.TaskTemplate"))
    if f.get("Networks") and not spec.task.networks:  # the older place for them
        spec.task.networks.extend(_networks(f["Networks"], f"{w}.Networks"))
    _mode(spec, f.get("Mode"), f"{w}.Mode")
    if "UpdateConfig" in f:
        spec.update.CopyFrom(_update_config(f["UpdateConfig"], f"{w}.UpdateConfig"))
    if "RollbackConfig" in f:
        spec.rollback.CopyFrom(_update_config(f["RollbackConfig"], f"{w}.RollbackConfig"))
    spec.endpoint.CopyFrom(_endpoint_spec(f.get("EndpointSpec"), f"{w}.EndpointSpec"))
    return spec


def _mode(spec: pb.ServiceSpec, body: Any, w: str) -> None:
    f = fields(body, {"Replicated": dict, "Global": dict, "ReplicatedJob": dict,
                      "GlobalJob": dict}, w)
    if len(f) > 1:
        raise InvalidRequest(f"{w}: set only one of {', '.join(f)}")
    if "Global" in f:
        fields(f["Global"], {}, f"{w}.Global")
        getattr(spec, "global").SetInParent()
    elif "GlobalJob" in f:
        fields(f["GlobalJob"], {}, f"{w}.GlobalJob")
        spec.global_job.SetInParent()
    elif "ReplicatedJob" in f:
        jw = f"{w}.ReplicatedJob"
        job = fields(f["ReplicatedJob"], {"MaxConcurrent": int, "TotalCompletions": int}, jw)
        spec.replicated_job.max_concurrent = _nonneg(job, "MaxConcurrent", jw, "uint64") \
            if "MaxConcurrent" in job else 1
        spec.replicated_job.total_completions = _nonneg(job, "TotalCompletions", jw, "uint64") \
            if "TotalCompletions" in job else spec.replicated_job.max_concurrent
    else:  # no mode, or Replicated without Replicas: one replica (as moby)
        rw = f"{w}.Replicated"
        rep = fields(f.get("Replicated"), {"Replicas": int}, rw)
        spec.replicated.replicas = _nonneg(rep, "Replicas", rw, "uint64") \
            if "Replicas" in rep else 1


def task_spec(body: Any, w: str = "TaskTemplate") -> pb.TaskSpec:
    f = fields(body, {"ContainerSpec": dict, "PluginSpec": ANY, "NetworkAttachmentSpec": ANY,
                      "Resources": dict, "RestartPolicy": dict, "Placement": dict,
                      "Networks": list, "LogDriver": ANY, "ForceUpdate": int,
                      "Runtime": str}, w)
    _unsupported(f, ("PluginSpec", "NetworkAttachmentSpec", "LogDriver"), w)
    if f.get("Runtime", "container") not in ("", "container"):
        raise InvalidRequest(f"invalid {w}.Runtime {f['Runtime']!r}: Shoal runs containers "
                             "only (Runtime \"container\")")
    spec = pb.TaskSpec()
    spec.container.CopyFrom(_container_spec(f.get("ContainerSpec"), f"{w}.ContainerSpec"))
    if "Resources" in f:
        spec.resources.CopyFrom(_resources(f["Resources"], f"{w}.Resources"))
    if "RestartPolicy" in f:
        spec.restart.CopyFrom(_restart(f["RestartPolicy"], f"{w}.RestartPolicy"))
    if "Placement" in f:
        spec.placement.CopyFrom(_placement(f["Placement"], f"{w}.Placement"))
    spec.force_update = _nonneg(f, "ForceUpdate", w, "uint64")
    spec.networks.extend(_networks(f.get("Networks", []), f"{w}.Networks"))
    return spec


def _networks(body: list[Any], w: str) -> list[pb.NetworkAttachmentConfig]:
    out = []
    for i, item in enumerate(body):
        f = fields(item, {"Target": str, "Aliases": list, "DriverOpts": dict}, f"{w}[{i}]")
        if not f.get("Target"):
            raise InvalidRequest(f"{w}[{i}].Target is missing: name the network to attach to")
        _unsupported(f, ("DriverOpts",), f"{w}[{i}]")
        out.append(pb.NetworkAttachmentConfig(target=f["Target"],
                                              aliases=_strings(f, "Aliases", f"{w}[{i}]")))
    return out


_CONTAINER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "Image": str, "Labels": dict, "Command": list, "Args": list, "Hostname": str, "Env": list,
    "Dir": str, "User": str, "Mounts": list, "StopGracePeriod": int, "StopSignal": str,
    "Healthcheck": dict, "TTY": bool, "Init": bool, "Isolation": str, "Secrets": list,
    "Configs": list, "Hosts": list, "DNSConfig": dict,
    # Docker fields Shoal does not implement yet (accepted while empty):
    "Groups": ANY, "Privileges": ANY, "Sysctls": ANY,
    "CapabilityAdd": ANY, "CapabilityDrop": ANY, "Ulimits": ANY, "OomScoreAdj": ANY,
    "ReadOnly": ANY, "OpenStdin": ANY}
_CONTAINER_UNSUPPORTED = ("Groups", "Privileges", "Sysctls",
                          "CapabilityAdd", "CapabilityDrop", "Ulimits", "OomScoreAdj",
                          "ReadOnly", "OpenStdin")


def _container_spec(body: Any, w: str) -> pb.ContainerSpec:
    f = fields(body, _CONTAINER_FIELDS, w)
    _unsupported(f, _CONTAINER_UNSUPPORTED, w)
    if f.get("Isolation", "default") not in ("", "default"):
        raise InvalidRequest(f"invalid {w}.Isolation {f['Isolation']!r}: only \"default\"")
    c = pb.ContainerSpec(image=f.get("Image", ""), hostname=f.get("Hostname", ""),
                         dir=f.get("Dir", ""), user=f.get("User", ""),
                         stop_signal=f.get("StopSignal", ""), tty=f.get("TTY", False),
                         init=f.get("Init", False))
    c.labels.update(_labels(f, "Labels", w))
    c.command.extend(_strings(f, "Command", w))
    c.args.extend(_strings(f, "Args", w))
    c.env.extend(_strings(f, "Env", w))
    c.mounts.extend(_mount(m, f"{w}.Mounts[{i}]") for i, m in enumerate(f.get("Mounts", [])))
    c.hosts.extend(_hosts(f, w))
    if not _empty(f.get("DNSConfig")):
        c.dns_config.CopyFrom(_dns_config(f["DNSConfig"], f"{w}.DNSConfig"))
    if "StopGracePeriod" in f:
        c.stop_grace_period.ns = _nonneg(f, "StopGracePeriod", w)
    if "Healthcheck" in f:
        c.healthcheck.CopyFrom(_healthcheck(f["Healthcheck"], f"{w}.Healthcheck"))
    for i, ref in enumerate(f.get("Secrets", [])):
        r = fields(ref, {"File": dict, "SecretID": str, "SecretName": str},
                   f"{w}.Secrets[{i}]")
        c.secrets.append(pb.SecretReference(
            secret_id=r.get("SecretID", ""), secret_name=r.get("SecretName", ""),
            file=_file_target(r.get("File"), f"{w}.Secrets[{i}].File")))
    for i, ref in enumerate(f.get("Configs", [])):
        r = fields(ref, {"File": dict, "ConfigID": str, "ConfigName": str, "Runtime": ANY},
                   f"{w}.Configs[{i}]")
        _unsupported(r, ("Runtime",), f"{w}.Configs[{i}]")
        c.configs.append(pb.ConfigReference(
            config_id=r.get("ConfigID", ""), config_name=r.get("ConfigName", ""),
            file=_file_target(r.get("File"), f"{w}.Configs[{i}].File")))
    return c


def _hosts(f: dict[str, Any], w: str) -> list[str]:
    """Docker's "IP name [name...]" lines (the docker CLI turns `--host name:IP` into one)."""
    lines = _strings(f, "Hosts", w)
    for i, line in enumerate(lines):
        parts = line.split()
        if len(parts) < 2 or not _is_ip(parts[0]):
            raise InvalidRequest(f"invalid {w}.Hosts[{i}] {line!r}: expected \"IP hostname\" "
                                 "(docker service create --host hostname:IP)")
    return lines


def _dns_config(body: Any, w: str) -> pb.DNSConfig:
    f = fields(body, {"Nameservers": list, "Search": list, "Options": list}, w)
    servers = _strings(f, "Nameservers", w)
    for i, server in enumerate(servers):
        if not _is_ip(server):
            raise InvalidRequest(f"invalid {w}.Nameservers[{i}] {server!r}: not an IP "
                                 "address (docker service create --dns IP)")
    return pb.DNSConfig(nameservers=servers, search=_strings(f, "Search", w),
                        options=_strings(f, "Options", w))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _file_target(body: Any, w: str) -> pb.FileTarget:
    f = fields(body, {"Name": str, "UID": str, "GID": str, "Mode": int}, w)
    return pb.FileTarget(name=f.get("Name", ""), uid=f.get("UID", ""), gid=f.get("GID", ""),
                         mode=_nonneg(f, "Mode", w, "uint32"))


def _mount(body: Any, w: str) -> pb.Mount:
    f = fields(body, {"Type": str, "Source": str, "Target": str, "ReadOnly": bool,
                      "Consistency": str, "BindOptions": ANY, "VolumeOptions": ANY,
                      "TmpfsOptions": dict, "ClusterOptions": ANY, "ImageOptions": ANY}, w)
    _unsupported(f, ("BindOptions", "ClusterOptions", "ImageOptions"), w)
    kind = f.get("Type", "")
    if kind.lower() not in MOUNT_TYPE.values():
        raise InvalidRequest(f"invalid {w}.Type {kind!r}: unknown mount type; use bind, "
                             "volume or tmpfs")
    m = pb.Mount(type=_enum(kind, MOUNT_TYPE, "mount type"), source=f.get("Source", ""),
                 target=f.get("Target", ""), read_only=f.get("ReadOnly", False))
    tmpfs = fields(f.get("TmpfsOptions"), {"SizeBytes": int, "Mode": int, "Options": ANY},
                   f"{w}.TmpfsOptions")
    _unsupported(tmpfs, ("Options",), f"{w}.TmpfsOptions")
    m.tmpfs_size_bytes = _nonneg(tmpfs, "SizeBytes", f"{w}.TmpfsOptions")
    m.tmpfs_mode = _nonneg(tmpfs, "Mode", f"{w}.TmpfsOptions", "int32")
    vw = f"{w}.VolumeOptions"
    volume = fields(f.get("VolumeOptions"), {"NoCopy": bool, "Labels": dict,
                                             "DriverConfig": ANY, "Subpath": ANY}, vw)
    _unsupported(volume, ("DriverConfig", "Subpath"), vw)
    m.volume_labels.update(_labels(volume, "Labels", vw))
    m.volume_no_copy = volume.get("NoCopy", False)
    return m


def _healthcheck(body: Any, w: str) -> pb.HealthConfig:
    f = fields(body, {"Test": list, "Interval": int, "Timeout": int, "Retries": int,
                      "StartPeriod": int, "StartInterval": int}, w)
    _unsupported(f, ("StartInterval",), w)
    return pb.HealthConfig(test=_strings(f, "Test", w), interval_ns=_nonneg(f, "Interval", w),
                           timeout_ns=_nonneg(f, "Timeout", w),
                           retries=_nonneg(f, "Retries", w, "int32"),
                           start_period_ns=_nonneg(f, "StartPeriod", w))


def _resources(body: Any, w: str) -> pb.ResourceRequirements:
    f = fields(body, {"Limits": dict, "Reservations": dict}, w)
    lim = fields(f.get("Limits"), {"NanoCPUs": int, "MemoryBytes": int, "Pids": int},
                 f"{w}.Limits")
    _unsupported(lim, ("Pids",), f"{w}.Limits")
    res = fields(f.get("Reservations"), {"NanoCPUs": int, "MemoryBytes": int,
                                         "GenericResources": ANY}, f"{w}.Reservations")
    _unsupported(res, ("GenericResources",), f"{w}.Reservations")
    out = pb.ResourceRequirements()
    for target, src, sw in ((out.limits, lim, f"{w}.Limits"),
                            (out.reservations, res, f"{w}.Reservations")):
        target.nano_cpus = _nonneg(src, "NanoCPUs", sw)
        target.memory_bytes = _nonneg(src, "MemoryBytes", sw)
    return out


def _restart(body: Any, w: str) -> pb.RestartPolicy:
    f = fields(body, {"Condition": str, "Delay": int, "MaxAttempts": int, "Window": int}, w)
    r = pb.RestartPolicy(condition=_enum(f.get("Condition", ""), RESTART, "restart condition"),
                         max_attempts=_nonneg(f, "MaxAttempts", w, "uint64"))
    if "Delay" in f:
        r.delay.ns = _nonneg(f, "Delay", w)
    if "Window" in f:
        r.window.ns = _nonneg(f, "Window", w)
    return r


def _placement(body: Any, w: str) -> pb.Placement:
    f = fields(body, {"Constraints": list, "Preferences": list, "MaxReplicas": int,
                      "Platforms": list}, w)
    p = pb.Placement(constraints=_strings(f, "Constraints", w),
                     max_replicas=_nonneg(f, "MaxReplicas", w, "uint64"))
    for i, pref in enumerate(f.get("Preferences", [])):
        pw = f"{w}.Preferences[{i}]"
        spread = fields(fields(pref, {"Spread": dict}, pw).get("Spread"),
                        {"SpreadDescriptor": str}, f"{pw}.Spread")
        p.preferences.add().spread.spread_descriptor = spread.get("SpreadDescriptor", "")
    for i, plat in enumerate(f.get("Platforms", [])):
        pf = fields(plat, {"Architecture": str, "OS": str}, f"{w}.Platforms[{i}]")
        p.platforms.add(architecture=pf.get("Architecture", ""), os=pf.get("OS", ""))
    return p


def _update_config(body: Any, w: str) -> pb.UpdateConfig:
    f = fields(body, {"Parallelism": int, "Delay": int, "FailureAction": str, "Monitor": int,
                      "MaxFailureRatio": NUM, "Order": str}, w)
    u = pb.UpdateConfig(parallelism=_nonneg(f, "Parallelism", w, "uint64"),
                        delay_ns=_nonneg(f, "Delay", w),
                        failure_action=_enum(f.get("FailureAction", ""), FAILURE_ACTION,
                                             f"{w}.FailureAction"),
                        order=_enum(f.get("Order", ""), ORDER, f"{w}.Order"))
    ratio = f.get("MaxFailureRatio", 0)
    if not 0 <= ratio <= 1:
        raise InvalidRequest(f"invalid {w}.MaxFailureRatio {ratio}: must be between 0 and 1")
    u.max_failure_ratio = ratio
    if "Monitor" in f:
        u.monitor.ns = _nonneg(f, "Monitor", w)
    return u


def _endpoint_spec(body: Any, w: str) -> pb.EndpointSpec:
    f = fields(body, {"Mode": str, "Ports": list}, w)
    e = pb.EndpointSpec(mode=_enum(f.get("Mode", ""), ENDPOINT_MODE, f"{w}.Mode"))
    e.ports.extend(_port(p, f"{w}.Ports[{i}]") for i, p in enumerate(f.get("Ports", [])))
    return e


def _port(body: Any, w: str) -> pb.PortConfig:
    f = fields(body, {"Name": str, "Protocol": str, "TargetPort": int, "PublishedPort": int,
                      "PublishMode": str}, w)
    for name in ("TargetPort", "PublishedPort"):
        if not 0 <= f.get(name, 0) <= 65535:
            raise InvalidRequest(f"invalid {w}.{name} {f[name]}: must be 0-65535")
    return pb.PortConfig(name=f.get("Name", ""),
                         protocol=_enum(f.get("Protocol", ""), PROTOCOL, f"{w}.Protocol"),
                         target_port=f.get("TargetPort", 0),
                         published_port=f.get("PublishedPort", 0),
                         publish_mode=_enum(f.get("PublishMode", ""), PUBLISH_MODE,
                                            f"{w}.PublishMode"))
