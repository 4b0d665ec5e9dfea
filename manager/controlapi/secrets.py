"""Secrets and configs of the control API (pure decisions over the store; the caller writes).

Both kinds behave as swarmkit's (manager/controlapi/secret.go, config.go):
- create: a name of at most 64 letters, digits, "-", "_" or "." that starts and ends with a
  letter or digit, unique among its kind (409); data of 1 byte up to 500 KiB (secrets) or
  1000 KiB (configs). A secret's data is sealed (manager/secretbox.py) before it is written.
- update: labels only, with a version check; the same data may be sent again (stack deploy
  does), other data or another name is refused: data is immutable.
- remove: refused while a service uses it (400, naming the services).
- a service's references: each resolved to an ID and its current name, or a 404 naming it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from manager import secretbox
from manager.controlapi.lookup import resolve
from manager.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from manager.identity import new_id
from manager.store.memory import MemoryStore
from proto import objects_pb2 as pb

NAME_RE = re.compile(r"^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$")
MAX_NAME = 64
KIB = 1024


@dataclass(frozen=True)
class Kind:
    name: str  # "secret" / "config"
    cls: type
    max_bytes: int
    sealed: bool  # data sealed in the store (secrets)


SECRET = Kind("secret", pb.Secret, 500 * KIB, True)
CONFIG = Kind("config", pb.Config, 1000 * KIB, False)


def validate_name(kind: Kind, name: str) -> None:
    if not name or len(name) > MAX_NAME or not NAME_RE.match(name):
        raise InvalidArgument(f"invalid {kind.name} name {name!r}: only {MAX_NAME} "
                              "[a-zA-Z0-9-_.] characters allowed, and the start and end "
                              "character must be [a-zA-Z0-9]")


def validate_spec(kind: Kind, spec: Any) -> None:
    validate_name(kind, spec.annotations.name)
    if any(not key.strip() for key in spec.annotations.labels):
        raise InvalidArgument(f"{kind.name} label keys must not be empty")
    size = len(spec.data)
    if not 0 < size < kind.max_bytes:
        raise InvalidArgument(f"{kind.name} data must be larger than 0 and less than "
                              f"{kind.max_bytes} bytes (it has {size})")
    if spec.templating.name:
        raise InvalidArgument(f"{kind.name} templating ({spec.templating.name}) is not "
                              "supported by Shoal: leave it off")
    if kind.sealed and spec.driver.name:
        raise InvalidArgument(f"secret driver {spec.driver.name!r} is not supported by "
                              "Shoal: leave it out to store the data in the swarm")


def find(kind: Kind, objects: Sequence[Any], ref: str) -> Any:
    return resolve(objects, ref, kind.name, lambda o: (o.spec.annotations.name,))


def new_object(kind: Kind, objects: Sequence[Any], spec: Any, key: bytes | None) -> Any:
    """The object to create; a secret's data sealed with `key`."""
    validate_spec(kind, spec)
    name = spec.annotations.name
    if any(o.spec.annotations.name == name for o in objects):
        raise AlreadyExists(f"{kind.name} {name} already exists: choose another name, or "
                            f"remove the existing {kind.name} first")
    obj = kind.cls(id=new_id())
    obj.spec.CopyFrom(spec)
    if kind.sealed:
        assert key is not None
        obj.spec.data = secretbox.seal(key, obj.id, bytes(spec.data))
    return obj


def updated_object(kind: Kind, objects: Sequence[Any], ref: str, version: int, spec: Any,
                   key: bytes | None) -> Any:
    """The object with the new labels, at the version the update was for (the store checks
    it)."""
    obj = find(kind, objects, ref)
    if spec.annotations.name != obj.spec.annotations.name or \
            (spec.data and bytes(spec.data) != data_of(kind, obj, key)):
        raise InvalidArgument(f"only updates to Labels are allowed: a {kind.name}'s name and "
                              f"data can't change (create a new {kind.name} and update the "
                              "services to use it)")
    if any(not k.strip() for k in spec.annotations.labels):
        raise InvalidArgument(f"{kind.name} label keys must not be empty")
    obj = _copy(obj)
    obj.meta.version.index = version
    obj.spec.annotations.labels.clear()
    obj.spec.annotations.labels.update(spec.annotations.labels)
    return obj


def data_of(kind: Kind, obj: Any, key: bytes | None) -> bytes:
    """The object's data in clear (a secret's opened with `key`)."""
    if not kind.sealed:
        return bytes(obj.spec.data)
    assert key is not None
    return secretbox.open_sealed(key, obj.id, bytes(obj.spec.data))


def users(kind: Kind, services: Iterable[pb.Service], obj_id: str) -> list[str]:
    """Names of the services whose tasks use the object."""
    return sorted(s.spec.annotations.name for s in services if not s.pending_delete
                  and obj_id in referenced(kind, s.spec.task.container))


def referenced(kind: Kind, container: pb.ContainerSpec) -> set[str]:
    if kind.sealed:
        return {r.secret_id for r in container.secrets}
    return {r.config_id for r in container.configs}


def removed_object(kind: Kind, objects: Sequence[Any], services: Iterable[pb.Service],
                   ref: str) -> Any:
    obj = find(kind, objects, ref)
    using = users(kind, services, obj.id)
    if using:
        plural = "s" if len(using) > 1 else ""
        raise FailedPrecondition(f"{kind.name} '{obj.spec.annotations.name}' is in use by "
                                 f"the following service{plural}: {', '.join(using)}")
    return obj


def resolve_references(container: pb.ContainerSpec, secrets: Sequence[pb.Secret],
                       configs: Sequence[pb.Config]) -> None:
    """Point each of a service's secret and config references at the object's ID and name
    (the user may give either); refuse unknown ones and two files at one target."""
    targets: set[str] = set()
    for ref in container.secrets:
        obj = _referenced(SECRET, secrets, ref.secret_id or ref.secret_name)
        ref.secret_id, ref.secret_name = obj.id, obj.spec.annotations.name
        _check_target(ref.file, ref.secret_name, "secret", targets)
    for cref in container.configs:
        obj = _referenced(CONFIG, configs, cref.config_id or cref.config_name)
        cref.config_id, cref.config_name = obj.id, obj.spec.annotations.name
        _check_target(cref.file, cref.config_name, "config", targets)


def _referenced(kind: Kind, objects: Sequence[Any], ref: str) -> Any:
    if not ref:
        raise InvalidArgument(f"a {kind.name} reference names no {kind.name}: give its name "
                              "or ID")
    try:
        return find(kind, objects, ref)
    except NotFound:
        raise NotFound(f"{kind.name} not found: {ref}; create it first (docker {kind.name} "
                       f"create {ref} FILE)") from None


def _check_target(file: pb.FileTarget, name: str, kind: str, seen: set[str]) -> None:
    # As swarmkit: targets conflict by their names (the worker places relative ones under
    # /run/secrets for secrets and / for configs).
    path = f"{kind}:{file.name or name}" if not file.name.startswith("/") else file.name
    if ".." in path.split("/"):
        raise InvalidArgument(f"invalid {kind} target {file.name!r}: it may not contain '..'")
    if file.mode > 0o7777:
        raise InvalidArgument(f"invalid {kind} file mode {oct(file.mode)}: at most 0o7777")
    for owner, what in ((file.uid, "uid"), (file.gid, "gid")):
        if owner and not owner.isdigit():
            raise InvalidArgument(f"invalid {kind} file {what} {owner!r}: give a number")
    if path in seen:
        raise InvalidArgument(f"two {kind}s target the same file {file.name or name!r}")
    seen.add(path)


def _copy(obj: Any) -> Any:
    out = type(obj)()
    out.CopyFrom(obj)
    return out


class ObjectControl:
    """One kind's operations over the store; returns the object to write."""

    def __init__(self, kind: Kind, store: MemoryStore) -> None:
        self.kind = kind
        self.store = store

    def objects(self) -> list[Any]:
        return list(self.store.list_view(self.kind.cls))

    def key(self) -> bytes | None:
        if not self.kind.sealed:
            return None
        cluster = self.store.view().cluster()
        if cluster is None:
            raise NotFound("the cluster object is not replicated to this manager yet; retry")
        return secretbox.derive_key(cluster)

    def get(self, ref: str) -> Any:
        return find(self.kind, self.objects(), ref)

    def create(self, spec: Any) -> Any:
        return new_object(self.kind, self.objects(), spec, self.key())

    def update(self, ref: str, version: int, spec: Any) -> Any:
        return updated_object(self.kind, self.objects(), ref, version, spec, self.key())

    def remove(self, ref: str) -> Any:
        return removed_object(self.kind, self.objects(),
                              self.store.list_view(pb.Service), ref)
