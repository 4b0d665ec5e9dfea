"""Flags of `shoal service create` / `update` → the Engine API's ServiceSpec JSON, as the
docker CLI builds it: the flags both commands share, and the spec's sections built from
them (restart / update / rollback / health with all fields filled with swarmkit's defaults
once any flag of a section is given). One flag value's parsing is in service_values.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from shoal.cli.output import DURATION
from shoal.cli.service_values import (
    parse_cpus,
    parse_env,
    parse_file_ref,
    parse_kv,
    parse_mount,
    parse_network,
    parse_pref,
    parse_publish,
    parse_size,
)

MODES = ("replicated", "global", "replicated-job", "global-job")
DEFAULT_RESTART = {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0, "Window": 0}
DEFAULT_UPDATE = {"Parallelism": 1, "Delay": 0, "FailureAction": "pause",
                  "Monitor": 5_000_000_000, "MaxFailureRatio": 0, "Order": "stop-first"}


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
