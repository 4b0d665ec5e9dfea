"""Service operations of the control API: validation and the create / update / rollback /
remove decisions are pure functions over a snapshot of services; `ServiceControl` reads the
store and returns the object to write. Nothing here writes: a refused request changes nothing.

What each decision writes (the orchestrator's contract):
- create: a new Service, `spec_version` 1 (`job_status` is the orchestrator's).
- update: `spec` replaced; `previous_spec` = the old spec (when the spec changed);
  `update_status` cleared; `spec_version` bumped when the change needs new tasks
  (`needs_new_tasks`: task template or endpoint) — scaling or relabelling does not start an
  update — and on every update of a job (a new spec_version is a new run of the job).
- rollback: `spec` and `previous_spec` swapped, `update_status` ROLLBACK_STARTED
  "manually requested rollback" (started_at now), `spec_version` bumped.
Whether a task is up to date is `manager.rules.uptodate.is_current`, the orchestrators' rule.
- remove: `pending_delete` set; the service disappears from the API at once and the
  orchestrator/reaper removes its tasks, then deletes the service.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from typing import Any

from manager.controlapi.limits import check_service_spec
from manager.controlapi.lookup import resolve
from manager.controlapi.networks import resolve_attachments
from manager.controlapi.secrets import resolve_references
from manager.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    OutOfSequence,
)
from manager.identity import new_id
from manager.rules.ports import conflicts
from manager.rules.uptodate import is_job, needs_new_tasks
from manager.scheduler.constraint import parse_constraints, parse_spread
from manager.store.memory import MemoryStore
from proto import objects_pb2 as pb

# Each repetition ends in exactly one letter or digit, so a long name that fails to match
# fails in linear time (`(?:[-_]*[A-Za-z0-9]+)*` backtracked exponentially: 63 characters
# and a "!" held the manager's event loop for ever).
NAME_RE = re.compile(r"^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9])*$")
MAX_NAME = 63
MIN_NANO_CPUS = 1_000_000
MIN_MEMORY = 4 * 1024 * 1024
MIN_HEALTH_NS = 1_000_000

# A Docker image reference: [domain[:port]/]path[/path...][:tag][@digest]
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_RE = re.compile(rf"^(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*(?::[\w][\w.-]{{0,127}})?"
                      r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$")

_ADJECTIVES = ("agile", "bold", "brisk", "calm", "clever", "curious", "deep", "eager", "fast",
               "gentle", "glad", "happy", "keen", "lively", "lucid", "merry", "nimble",
               "patient", "quiet", "quick", "silver", "steady", "sunny", "swift", "tidy",
               "vivid", "warm", "wise", "witty", "zesty")
_NOUNS = ("anchovy", "barracuda", "bass", "bream", "carp", "cod", "dory", "eel", "flounder",
          "grouper", "guppy", "haddock", "halibut", "herring", "koi", "mackerel", "marlin",
          "minnow", "perch", "pike", "pollock", "salmon", "sardine", "shad", "smelt",
          "snapper", "sprat", "trout", "tuna", "wrasse")


# ---------------------------------------------------------------- validation


def validate_name(name: str) -> None:
    if len(name) > MAX_NAME or not NAME_RE.match(name):
        raise InvalidArgument(
            f'invalid service name "{name}": use 1 to {MAX_NAME} letters, digits, "-" or "_", '
            "starting and ending with a letter or digit")


def validate_image(image: str) -> None:
    if not image:
        raise InvalidArgument("the service has no image: set TaskTemplate.ContainerSpec.Image "
                              "(docker service create IMAGE)")
    if IMAGE_RE.match(image):
        return
    why = "repository name must be lowercase" if IMAGE_RE.match(image.lower()) else \
        "expected [registry/]name[:tag][@digest]"
    raise InvalidArgument(f'invalid image reference "{image}": {why}')


def validate_spec(spec: pb.ServiceSpec) -> None:
    """Raise InvalidArgument naming the first bad field of a ServiceSpec."""
    validate_name(spec.annotations.name)
    _validate_labels(spec.annotations.labels, "service label")
    _validate_container(spec.task.container)
    _validate_resources(spec.task.resources)
    _validate_placement(spec)
    _validate_mode(spec)
    _validate_endpoint(spec.endpoint)


def _validate_labels(labels: Iterable[str], what: str) -> None:
    if any(not key.strip() for key in labels):
        raise InvalidArgument(f"invalid {what}: the key must not be empty")


def _validate_container(c: pb.ContainerSpec) -> None:
    validate_image(c.image)
    _validate_labels(c.labels, "container label")
    for env in c.env:
        if not env.partition("=")[0].strip():
            raise InvalidArgument(f'invalid environment variable "{env}": expected KEY=VALUE')
    targets: set[str] = set()
    for m in c.mounts:
        _validate_mount(m)
        if m.target in targets:
            raise InvalidArgument(f"mount target {m.target} is used by more than one mount")
        targets.add(m.target)
    if c.HasField("healthcheck"):
        _validate_healthcheck(c.healthcheck)


def _validate_mount(m: pb.Mount) -> None:
    kind = pb.Mount.Type.Name(m.type).lower()
    if not m.target.startswith("/"):
        raise InvalidArgument(f'invalid {kind} mount target "{m.target}": it must be an '
                              "absolute path in the container (target=/path)")
    if m.type == pb.Mount.BIND and not m.source.startswith("/"):
        raise InvalidArgument(f'invalid bind mount source "{m.source}": it must be an '
                              "absolute path on the node (source=/path)")
    if m.type == pb.Mount.TMPFS and m.source:
        raise InvalidArgument(f'invalid tmpfs mount: it takes no source (got "{m.source}")')
    if m.type != pb.Mount.TMPFS and (m.tmpfs_size_bytes or m.tmpfs_mode):
        raise InvalidArgument(f"invalid {kind} mount of {m.target}: tmpfs options are only "
                              "for type=tmpfs")


def _validate_healthcheck(h: pb.HealthConfig) -> None:
    if h.test and h.test[0] not in ("NONE", "CMD", "CMD-SHELL"):
        raise InvalidArgument(f'invalid health check test "{h.test[0]}": expected NONE, CMD or '
                              "CMD-SHELL as its first element")
    for name, ns in (("interval", h.interval_ns), ("timeout", h.timeout_ns),
                     ("start period", h.start_period_ns)):
        if 0 < ns < MIN_HEALTH_NS:
            raise InvalidArgument(f"invalid health check {name} {ns}ns: must be at least 1ms")


def _validate_resources(r: pb.ResourceRequirements) -> None:
    for what, res in (("limit", r.limits), ("reservation", r.reservations)):
        if 0 < res.nano_cpus < MIN_NANO_CPUS:
            raise InvalidArgument(f"invalid CPU {what} {res.nano_cpus / 1e9:g}: must be at "
                                  f"least {MIN_NANO_CPUS / 1e9:g}")
        if 0 < res.memory_bytes < MIN_MEMORY:
            raise InvalidArgument(f"invalid memory {what} {res.memory_bytes} bytes: must be "
                                  "at least 4MiB")
    if r.limits.memory_bytes and r.reservations.memory_bytes > r.limits.memory_bytes:
        raise InvalidArgument("the memory reservation is larger than the memory limit; "
                              "lower --reserve-memory or raise --limit-memory")
    if r.limits.nano_cpus and r.reservations.nano_cpus > r.limits.nano_cpus:
        raise InvalidArgument("the CPU reservation is larger than the CPU limit; "
                              "lower --reserve-cpu or raise --limit-cpu")


def _validate_placement(spec: pb.ServiceSpec) -> None:
    placement = spec.task.placement
    parse_constraints(list(placement.constraints))
    for pref in placement.preferences:
        parse_spread(pref.spread.spread_descriptor)
    if placement.max_replicas and spec.WhichOneof("mode") in ("global", "global_job"):
        raise InvalidArgument("max replicas per node (Placement.MaxReplicas) can't be used with "
                              "a global service: it runs one task per node already")


def _validate_mode(spec: pb.ServiceSpec) -> None:
    mode = spec.WhichOneof("mode")
    if mode is None:
        raise InvalidArgument("the service has no mode: set Mode.Replicated, Mode.Global, "
                              "Mode.ReplicatedJob or Mode.GlobalJob")
    if mode == "replicated_job" and spec.replicated_job.max_concurrent == 0:
        raise InvalidArgument("invalid ReplicatedJob.MaxConcurrent 0: at least 1 task must "
                              "run at a time (--max-concurrent)")


def _validate_endpoint(e: pb.EndpointSpec) -> None:
    seen: set[tuple[int, int, int]] = set()
    for p in e.ports:
        proto = pb.PortConfig.Protocol.Name(p.protocol).lower()
        if not p.target_port:
            raise InvalidArgument(f"invalid published port: the target (container) port is "
                                  f"missing (--publish published={p.published_port or 'N'},"
                                  "target=PORT)")
        if p.publish_mode == pb.PortConfig.INGRESS and e.mode == pb.EndpointSpec.DNSRR:
            raise InvalidArgument(f"port {p.published_port or p.target_port}/{proto} is "
                                  "published in ingress mode, which needs endpoint mode vip; "
                                  "use --endpoint-mode vip or --publish mode=host,...")
        if p.published_port:
            key = (p.published_port, p.protocol, p.publish_mode)
            if key in seen:
                raise InvalidArgument(f"port {p.published_port}/{proto} is published more "
                                      "than once")
            seen.add(key)


def check_port_conflicts(spec: pb.ServiceSpec, others: Iterable[pb.Service]) -> None:
    """Ingress published ports are cluster-wide: refuse one another service holds."""
    found = conflicts(spec.endpoint, others)
    if found:
        port, holder = found[0]
        raise InvalidArgument(
            f"port {port} is already published by service {holder.spec.annotations.name} "
            f"({holder.id}); choose another published port")


# ---------------------------------------------------------------- decisions


def visible(services: Iterable[pb.Service]) -> list[pb.Service]:
    """Services the API shows: not those being deleted."""
    return [s for s in services if not s.pending_delete]


def find_service(services: list[pb.Service], ref: str) -> pb.Service:
    """By full ID, then name, then unique ID prefix (as Docker resolves services)."""
    return resolve(visible(services), ref, "service", lambda s: (s.spec.annotations.name,))


def random_name(taken: set[str]) -> str:
    while True:
        name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
        if name not in taken:
            return name
        name += str(secrets.randbelow(100))
        if name not in taken:
            return name


DEFAULT_STOP_GRACE_NS = 10_000_000_000
DEFAULT_RESTART_DELAY_NS = 5_000_000_000


def canonical(spec: pb.ServiceSpec) -> pb.ServiceSpec:
    """The same task template written one way: values equal to swarmkit's defaults and empty
    sections are dropped, so a client that sends the defaults back (`?insertDefaults=true`,
    then update) or `"Resources":{}` does not look like a change that needs new tasks."""
    out = _copy(spec)
    task = out.task
    if task.container.stop_grace_period.ns == DEFAULT_STOP_GRACE_NS:
        task.container.ClearField("stop_grace_period")
    if task.restart.delay.ns == DEFAULT_RESTART_DELAY_NS:
        task.restart.ClearField("delay")
    if task.restart.HasField("window") and task.restart.window.ns == 0:
        task.restart.ClearField("window")
    _prune(task)
    return out


def _prune(msg: Any) -> None:
    """Clear empty sub-messages (not Duration wrappers: there, set-to-0 differs from unset)."""
    for fd, value in msg.ListFields():
        if fd.message_type is None or fd.is_repeated or \
                fd.message_type.name == "Duration":
            continue
        _prune(value)
        if value.ByteSize() == 0:
            msg.ClearField(fd.name)


def new_service(services: list[pb.Service], spec: pb.ServiceSpec) -> pb.Service:
    live = visible(services)
    check_service_spec(spec)
    spec = canonical(spec)
    if not spec.annotations.name:
        spec.annotations.name = random_name({s.spec.annotations.name for s in live})
    validate_spec(spec)
    if any(s.spec.annotations.name == spec.annotations.name for s in live):
        raise AlreadyExists(f"service {spec.annotations.name} already exists: choose another "
                            "name, or update it (docker service update)")
    check_port_conflicts(spec, live)
    return pb.Service(id=new_id(), spec=spec, spec_version=1)


def updated_service(services: list[pb.Service], ref: str, version: int,
                    spec: pb.ServiceSpec | None, now_ns: int) -> pb.Service:
    """The service to write for an update (`spec`) or a manual rollback (`spec` None)."""
    svc = find_service(services, ref)
    name = svc.spec.annotations.name
    if version != svc.meta.version.index:
        raise OutOfSequence(
            f"update out of sequence: service {name} is at version "
            f"{svc.meta.version.index}, the update was for version {version}; read it again "
            "and retry")
    old = _copy(svc.spec)
    if spec is None:
        if not svc.has_previous_spec:
            raise FailedPrecondition(f"service {name} has no previous spec to roll back to")
        new = _copy(svc.previous_spec)
        svc.update_status.CopyFrom(pb.UpdateStatus(
            state=pb.UpdateStatus.ROLLBACK_STARTED, started_at_ns=now_ns,
            message="manually requested rollback"))
    else:
        check_service_spec(spec)
        new = canonical(spec)
        if not new.annotations.name:
            new.annotations.name = name
        _check_change(old, new)
        validate_spec(new)
        svc.ClearField("update_status")
    check_port_conflicts(new, [s for s in visible(services) if s.id != svc.id])
    if new != old:
        svc.previous_spec.CopyFrom(old)
        svc.has_previous_spec = True
    if needs_new_tasks(old, new) or is_job(new) or spec is None:
        svc.spec_version += 1
    svc.spec.CopyFrom(new)
    return svc


def _check_change(old: pb.ServiceSpec, new: pb.ServiceSpec) -> None:
    if new.annotations.name != old.annotations.name:
        raise InvalidArgument(f"service {old.annotations.name} can't be renamed to "
                              f"{new.annotations.name}: create a new service instead")
    before, after = old.WhichOneof("mode"), new.WhichOneof("mode")
    if before != after:
        raise InvalidArgument(f"service {old.annotations.name} can't change its mode from "
                              f"{(before or '').replace('_', '-')} to "
                              f"{(after or '').replace('_', '-')}: remove it and create it "
                              "again")


def _copy(spec: pb.ServiceSpec) -> pb.ServiceSpec:
    out = pb.ServiceSpec()
    out.CopyFrom(spec)
    return out


class ServiceControl:
    """Reads the store; returns the object to write (the caller proposes it)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def services(self) -> list[pb.Service]:
        return list(self.store.list(pb.Service))

    def visible(self) -> list[pb.Service]:
        return visible(self.services())

    def get(self, ref: str) -> pb.Service:
        return find_service(self.services(), ref)

    def create(self, spec: pb.ServiceSpec) -> pb.Service:
        resolve_attachments(spec, self.store.list(pb.Network))
        self._resolve_files(spec)
        return new_service(self.services(), spec)

    def update(self, ref: str, version: int, spec: pb.ServiceSpec | None,
               now_ns: int) -> pb.Service:
        if spec is not None:
            resolve_attachments(spec, self.store.list(pb.Network))
            self._resolve_files(spec)
        return updated_service(self.services(), ref, version, spec, now_ns)

    def _resolve_files(self, spec: pb.ServiceSpec) -> None:
        resolve_references(spec.task.container, self.store.list_view(pb.Secret),
                           self.store.list_view(pb.Config))
