"""Flags of `shoal service create` / `update` → the Engine API's ServiceSpec JSON, as the
docker CLI builds it: sizes (64M), CPUs (0.5), `--mount` and `--publish` CSVs, env, labels,
and the restart / update / rollback / health sections (all fields filled with swarmkit's
defaults once any flag of a section is given)."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from shoal.cli.output import DURATION

MODES = ("replicated", "global", "replicated-job", "global-job")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
DEFAULT_RESTART = {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0, "Window": 0}
DEFAULT_UPDATE = {"Parallelism": 1, "Delay": 0, "FailureAction": "pause",
                  "Monitor": 5_000_000_000, "MaxFailureRatio": 0, "Order": "stop-first"}


def bad(flag: str, value: str, why: str) -> click.BadParameter:
    return click.BadParameter(f"invalid {flag} {value!r}: {why}", param_hint=f"'{flag}'")


def parse_size(value: str, flag: str = "--reserve-memory") -> int:
    """Docker's sizes: 64M, 1.5g, 512k, 1024 (bytes), binary units."""
    match = _SIZE.match(value.strip())
    if not match:
        raise bad(flag, value, "expected a size like 64M, 1G or 512k")
    return int(Decimal(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()])


def parse_cpus(value: str, flag: str = "--reserve-cpu") -> int:
    """CPUs as a decimal ("0.5") → NanoCPUs."""
    try:
        nano = Decimal(value) * 1_000_000_000
    except InvalidOperation:
        raise bad(flag, value, "expected a number of CPUs like 0.5 or 2") from None
    if nano < 0 or nano != int(nano):
        raise bad(flag, value, "expected a positive number with at most 9 decimals")
    return int(nano)


def parse_kv(value: str, flag: str) -> tuple[str, str]:
    key, _, val = value.partition("=")
    if not key.strip():
        raise bad(flag, value, "the key is empty (expected KEY=VALUE)")
    return key.strip(), val


def parse_env(value: str) -> str:
    """KEY=VALUE as is; a bare KEY takes its value from this environment, as Docker's."""
    if "=" in value:
        parse_kv(value, "--env")
        return value
    return f"{value}={os.environ[value]}" if value in os.environ else value


def _csv_fields(value: str, flag: str) -> list[tuple[str, str]]:
    row = next(csv.reader([value]), [])
    out = []
    for item in row:
        key, sep, val = item.partition("=")
        out.append((key.strip().lower(), val.strip() if sep else ""))
    if not out:
        raise bad(flag, value, "empty")
    return out


def _truth(value: str, flag: str, key: str) -> bool:
    if value.lower() in ("", "1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise bad(flag, value, f"{key} takes true or false")


def parse_mount(value: str, flag: str = "--mount") -> dict[str, Any]:
    """type=bind|volume|tmpfs,source=,target=,readonly,tmpfs-size=,tmpfs-mode= → Mount."""
    mount: dict[str, Any] = {"Type": "volume"}
    tmpfs: dict[str, int] = {}
    for key, val in _csv_fields(value, flag):
        if key == "type":
            mount["Type"] = val.lower()
        elif key in ("source", "src"):
            mount["Source"] = val
        elif key in ("target", "dst", "destination"):
            mount["Target"] = val
        elif key in ("readonly", "ro"):
            mount["ReadOnly"] = _truth(val, flag, key)
        elif key == "tmpfs-size":
            tmpfs["SizeBytes"] = parse_size(val, flag)
        elif key == "tmpfs-mode":
            try:
                tmpfs["Mode"] = int(val, 8)
            except ValueError:
                raise bad(flag, value, "tmpfs-mode is an octal mode like 1777") from None
        else:
            raise bad(flag, value, f"unknown or unsupported mount option {key!r} (Shoal takes "
                      "type, source, target, readonly, tmpfs-size, tmpfs-mode)")
    if "Target" not in mount:
        raise bad(flag, value, "target=PATH is required")
    if tmpfs:
        mount["TmpfsOptions"] = tmpfs
    return mount


def parse_network(value: str, flag: str = "--network") -> dict[str, Any]:
    """`NAME` or `name=NAME,alias=A[,alias=B]` (Docker's --network)."""
    if "=" not in value:
        return {"Target": value}
    out: dict[str, Any] = {}
    for key, val in _csv_fields(value, flag):
        if key in ("name", "target"):
            out["Target"] = val
        elif key == "alias":
            out.setdefault("Aliases", []).append(val)
        else:
            raise bad(flag, value, f"unknown option {key!r} (name, alias)")
    if not out.get("Target"):
        raise bad(flag, value, "name the network (name=NAME)")
    return out


def parse_publish(value: str, flag: str = "--publish") -> dict[str, Any]:
    """`8080:80[/udp]`, `80`, `published=8080,target=80,protocol=udp,mode=host`, or the
    short form after options (`mode=host,8080:80`)."""
    port: dict[str, Any] = {"Protocol": "tcp", "PublishMode": "ingress"}
    short = [part for part in value.split(",") if "=" not in part]
    if len(short) > 1:
        raise bad(flag, value, "give one PUBLISHED:TARGET")
    options = ",".join(part for part in value.split(",") if "=" in part)
    if options:
        names = {"published": "PublishedPort", "target": "TargetPort", "protocol": "Protocol",
                 "mode": "PublishMode"}
        for key, val in _csv_fields(options, flag):
            if key not in names:
                raise bad(flag, value, f"unknown option {key!r} (published, target, protocol, "
                          "mode)")
            port[names[key]] = val.lower()
    if short:
        ports, _, proto = short[0].partition("/")
        published, sep, target = ports.rpartition(":")
        if ":" in published:
            raise bad(flag, value, "a host IP can't be given for a swarm service")
        port.update(PublishedPort=published if sep else "0", TargetPort=target,
                    Protocol=proto or port["Protocol"])
    for key in ("PublishedPort", "TargetPort"):
        text = str(port.get(key, "0"))
        if not text.isdigit() or int(text) > 65535:
            raise bad(flag, value, f"{text!r} is not a port number (0-65535)")
        port[key] = int(text)
    if not port["TargetPort"]:
        raise bad(flag, value, "the target (container) port is missing")
    if not port["PublishedPort"]:
        del port["PublishedPort"]
    return port


def parse_file_ref(value: str, flag: str, kind: str) -> dict[str, Any]:
    """`NAME` or `source=NAME,target=T,uid=U,gid=G,mode=0400` (Docker's --secret and
    --config) → a SecretReference / ConfigReference by name (the manager resolves it)."""
    ref = {"source": value.strip(), "target": "", "uid": "0", "gid": "0", "mode": "0444"}
    if "=" in value:
        ref["source"] = ""
        for key, val in _csv_fields(value, flag):
            key = {"src": "source", "dst": "target", "destination": "target"}.get(key, key)
            if key not in ref:
                raise bad(flag, value, f"unknown option {key!r} (source, target, uid, gid, "
                          "mode)")
            ref[key] = val
    if not ref["source"]:
        raise bad(flag, value, f"name the {kind} (source=NAME)")
    for key in ("uid", "gid"):
        if not ref[key].isdigit():
            raise bad(flag, value, f"{key} is a number")
    try:
        mode = int(ref["mode"], 8)
    except ValueError:
        raise bad(flag, value, "mode is an octal mode like 0400") from None
    name_key = "SecretName" if kind == "secret" else "ConfigName"
    return {"File": {"Name": ref["target"] or ref["source"], "UID": ref["uid"],
                     "GID": ref["gid"], "Mode": mode}, name_key: ref["source"]}


def update_file_refs(refs: list[dict[str, Any]], add: tuple[str, ...], rm: tuple[str, ...],
                     kind: str) -> list[dict[str, Any]]:
    """--secret-add/--secret-rm (--config-…): remove by name or ID, add (a reference at the
    same target replaces the old one)."""
    name_key, id_key = ("SecretName", "SecretID") if kind == "secret" else \
        ("ConfigName", "ConfigID")
    out = [r for r in refs if r.get(name_key) not in rm and r.get(id_key) not in rm]
    for value in add:
        new = parse_file_ref(value, f"--{kind}-add", kind)
        out = [r for r in out if r["File"]["Name"] != new["File"]["Name"]] + [new]
    return out


def parse_pref(value: str, flag: str = "--placement-pref") -> dict[str, Any]:
    strategy, sep, descriptor = value.partition("=")
    if strategy.strip().lower() != "spread" or not sep or not descriptor.strip():
        raise bad(flag, value, "expected spread=node.labels.<name>")
    return {"Spread": {"SpreadDescriptor": descriptor.strip()}}


# ---------------------------------------------------------------- flags shared by create/update


def _opts(*decls: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(f: Any) -> Any:
        for decorator in reversed(decls):
            f = decorator(f)
        return f
    return apply


CHOICE_RESTART = click.Choice(["none", "on-failure", "any"])
CHOICE_ACTION = click.Choice(["pause", "continue", "rollback"])
CHOICE_ORDER = click.Choice(["stop-first", "start-first"])

SPEC_OPTIONS = _opts(
    click.option("--replicas", type=click.IntRange(min=0), help="Number of tasks."),
    click.option("--max-concurrent", type=click.IntRange(min=1),
                 help="Number of job tasks to run concurrently (replicated-job)."),
    click.option("--replicas-max-per-node", type=click.IntRange(min=0),
                 help="Maximum number of tasks per node (0 = unlimited)."),
    click.option("--reserve-cpu", help="Reserve CPUs (e.g. 0.5)."),
    click.option("--reserve-memory", help="Reserve memory (e.g. 64M)."),
    click.option("--limit-cpu", help="Limit CPUs."),
    click.option("--limit-memory", help="Limit memory."),
    click.option("--restart-condition", type=CHOICE_RESTART, help="Restart when condition is met."),
    click.option("--restart-delay", type=DURATION, help="Delay between restart attempts."),
    click.option("--restart-max-attempts", type=click.IntRange(min=0),
                 help="Maximum number of restarts before giving up."),
    click.option("--restart-window", type=DURATION, help="Window used to evaluate the policy."),
    *[opt for kind in ("update", "rollback") for opt in (
        click.option(f"--{kind}-parallelism", type=click.IntRange(min=0),
                     help="Maximum number of tasks changed at once (0 = all)."),
        click.option(f"--{kind}-delay", type=DURATION, help=f"Delay between {kind}s."),
        click.option(f"--{kind}-failure-action", type=CHOICE_ACTION,
                     help=f"Action on {kind} failure."),
        click.option(f"--{kind}-monitor", type=DURATION,
                     help="Duration after each task update to monitor for failure."),
        click.option(f"--{kind}-max-failure-ratio", type=click.FloatRange(0, 1),
                     help="Failure rate to tolerate."),
        click.option(f"--{kind}-order", type=CHOICE_ORDER, help=f"{kind.title()} order."))],
    click.option("--health-cmd", help="Command to run to check health."),
    click.option("--health-interval", type=DURATION, help="Time between running the check."),
    click.option("--health-timeout", type=DURATION, help="Maximum time to allow one check."),
    click.option("--health-retries", type=click.IntRange(min=0),
                 help="Consecutive failures needed to report unhealthy."),
    click.option("--health-start-period", type=DURATION,
                 help="Start period before failures count."),
    click.option("--no-healthcheck", is_flag=True, help="Disable any container HEALTHCHECK."),
    click.option("--stop-grace-period", type=DURATION,
                 help="Time to wait before force killing a container."),
    click.option("--stop-signal", help="Signal to stop the container."),
    click.option("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])."),
    click.option("-w", "--workdir", help="Working directory inside the container."),
    click.option("--hostname", help="Container hostname."),
    click.option("--entrypoint", help="Overwrite the default ENTRYPOINT of the image."),
    click.option("--init/--no-init", default=None,
                 help="Use an init inside each service container."),
    click.option("-t", "--tty/--no-tty", default=None, help="Allocate a pseudo-TTY."),
    click.option("--endpoint-mode", type=click.Choice(["vip", "dnsrr"]),
                 help="Endpoint mode (vip or dnsrr)."),
    click.option("-d", "--detach/--no-detach", default=False,
                 help="Exit immediately instead of waiting for the service to converge."),
    click.option("-q", "--quiet", is_flag=True, help="Suppress progress output."),
)


def changed(opts: dict[str, Any], *names: str) -> bool:
    """Whether any of the flags was given (0, as in `--restart-delay 0s`, is a value: `0 in
    (False,)` is true in Python, so identity and emptiness are tested instead)."""
    return any(not (v is None or v is False or v == ()) for v in map(opts.get, names))


def apply_common(spec: dict[str, Any], opts: dict[str, Any]) -> None:
    """Set what the shared flags say on a ServiceSpec JSON (create's or a fetched one)."""
    task = spec.setdefault("TaskTemplate", {})
    container = task.setdefault("ContainerSpec", {})
    for flag, key in (("user", "User"), ("workdir", "Dir"), ("hostname", "Hostname"),
                      ("stop_signal", "StopSignal"), ("stop_grace_period", "StopGracePeriod"),
                      ("init", "Init"), ("tty", "TTY")):
        if opts.get(flag) is not None:
            container[key] = opts[flag]
    if opts.get("entrypoint") is not None:
        container["Command"] = opts["entrypoint"].split() if opts["entrypoint"] else []
    _apply_resources(task, opts)
    _apply_health(container, opts)
    if changed(opts, "restart_condition", "restart_delay", "restart_max_attempts",
               "restart_window"):
        policy = task.get("RestartPolicy") or dict(DEFAULT_RESTART)
        for flag, key in (("restart_condition", "Condition"), ("restart_delay", "Delay"),
                          ("restart_max_attempts", "MaxAttempts"), ("restart_window", "Window")):
            if opts.get(flag) is not None:
                policy[key] = opts[flag]
        task["RestartPolicy"] = policy
    for kind, key in (("update", "UpdateConfig"), ("rollback", "RollbackConfig")):
        _apply_update_config(spec, kind, key, opts)
    if opts.get("replicas_max_per_node") is not None:
        task.setdefault("Placement", {})["MaxReplicas"] = opts["replicas_max_per_node"]
    if opts.get("endpoint_mode"):
        spec.setdefault("EndpointSpec", {})["Mode"] = opts["endpoint_mode"]


def _apply_resources(task: dict[str, Any], opts: dict[str, Any]) -> None:
    res = task.setdefault("Resources", {})
    for section, prefix in (("Reservations", "reserve"), ("Limits", "limit")):
        part = res.setdefault(section, {}) or {}
        res[section] = part
        if opts.get(f"{prefix}_cpu") is not None:
            part["NanoCPUs"] = parse_cpus(opts[f"{prefix}_cpu"], f"--{prefix}-cpu")
        if opts.get(f"{prefix}_memory") is not None:
            part["MemoryBytes"] = parse_size(opts[f"{prefix}_memory"], f"--{prefix}-memory")


def _apply_health(container: dict[str, Any], opts: dict[str, Any]) -> None:
    health_flags = ("health_cmd", "health_interval", "health_timeout", "health_retries",
                    "health_start_period")
    if opts.get("no_healthcheck"):
        if changed(opts, *health_flags):
            raise click.UsageError("--no-healthcheck conflicts with --health-* options")
        container["Healthcheck"] = {"Test": ["NONE"]}
        return
    if not changed(opts, *health_flags):
        return
    health = dict(container.get("Healthcheck") or {})
    if health.get("Test") == ["NONE"]:
        health = {}
    if opts.get("health_cmd") is not None:
        health["Test"] = ["CMD-SHELL", opts["health_cmd"]] if opts["health_cmd"] else []
    for flag, key in (("health_interval", "Interval"), ("health_timeout", "Timeout"),
                      ("health_retries", "Retries"), ("health_start_period", "StartPeriod")):
        if opts.get(flag) is not None:
            health[key] = opts[flag]
    container["Healthcheck"] = health


def _apply_update_config(spec: dict[str, Any], kind: str, key: str,
                         opts: dict[str, Any]) -> None:
    names = {"parallelism": "Parallelism", "delay": "Delay", "failure_action": "FailureAction",
             "monitor": "Monitor", "max_failure_ratio": "MaxFailureRatio", "order": "Order"}
    if not changed(opts, *(f"{kind}_{n}" for n in names)):
        return
    config = spec.get(key) or dict(DEFAULT_UPDATE)
    for name, field in names.items():
        if opts.get(f"{kind}_{name}") is not None:
            config[field] = opts[f"{kind}_{name}"]
    spec[key] = config


def mode_json(mode: str, replicas: int | None, max_concurrent: int | None) -> dict[str, Any]:
    if replicas is not None and mode not in ("replicated", "replicated-job"):
        raise click.UsageError("--replicas can only be used with replicated or "
                               "replicated-job mode")
    if max_concurrent is not None and mode != "replicated-job":
        raise click.UsageError("--max-concurrent can only be used with replicated-job mode")
    if mode == "global":
        return {"Global": {}}
    if mode == "global-job":
        return {"GlobalJob": {}}
    if mode == "replicated-job":
        job: dict[str, int] = {}
        if max_concurrent is not None:
            job["MaxConcurrent"] = max_concurrent
        if replicas is not None:
            job["TotalCompletions"] = replicas
        return {"ReplicatedJob": job}
    return {"Replicated": {} if replicas is None else {"Replicas": replicas}}


def create_spec(image: str, args: tuple[str, ...], opts: dict[str, Any]) -> dict[str, Any]:
    """The body of POST /services/create, shaped like the docker CLI's."""
    container: dict[str, Any] = {"Image": image}
    if args:
        container["Args"] = list(args)
    if opts["env"]:
        container["Env"] = [parse_env(e) for e in opts["env"]]
    if opts["container_label"]:
        container["Labels"] = dict(parse_kv(v, "--container-label")
                                   for v in opts["container_label"])
    if opts["mount"]:
        container["Mounts"] = [parse_mount(m) for m in opts["mount"]]
    if opts.get("secret"):
        container["Secrets"] = [parse_file_ref(v, "--secret", "secret") for v in opts["secret"]]
    if opts.get("config"):
        container["Configs"] = [parse_file_ref(v, "--config", "config") for v in opts["config"]]
    container |= {"Init": False, "DNSConfig": {}}
    placement: dict[str, Any] = {}
    if opts["constraint"]:
        placement["Constraints"] = list(opts["constraint"])
    if opts["placement_pref"]:
        placement["Preferences"] = [parse_pref(p) for p in opts["placement_pref"]]
    spec: dict[str, Any] = {
        "Name": opts["name"] or "",
        "Labels": dict(parse_kv(v, "--label") for v in opts["label"]),
        "TaskTemplate": {"ContainerSpec": container,
                         "Resources": {"Limits": {}, "Reservations": {}},
                         "Placement": placement, "ForceUpdate": 0},
        "Mode": mode_json(opts["mode"], opts["replicas"], opts["max_concurrent"]),
        "EndpointSpec": {"Mode": "vip"},
    }
    if opts["publish"]:
        spec["EndpointSpec"]["Ports"] = [parse_publish(p) for p in opts["publish"]]
    if opts["network"]:
        spec["TaskTemplate"]["Networks"] = [parse_network(n) for n in opts["network"]]
    apply_common(spec, opts)
    return spec
