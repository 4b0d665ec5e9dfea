"""The secrets and configs this node's tasks use, as the dispatcher sent them: in memory only,
replaced by every assignment set (so one no task needs any more is forgotten at once), and
what each task's container gets of them (pure).

Only IDs are ever logged, never data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from proto import cluster_pb2
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskFile:
    """One file to place in a task's container."""

    path: str  # in the container
    data: bytes
    uid: int
    gid: int
    mode: int

    def __repr__(self) -> str:  # never the data, whoever prints it
        return f"TaskFile({self.path!r}, {len(self.data)} bytes, {self.uid}:{self.gid}, " \
               f"{oct(self.mode)})"


def target_path(file: pb.FileTarget, name: str, secret: bool) -> str:
    """Where the file appears in the container (moby's getSecretTargetPath and
    getConfigTargetPath): an absolute name as is, else under /run/secrets or /."""
    target = file.name or name
    if target.startswith("/"):
        return target
    return ("/run/secrets/" if secret else "/") + target


class MissingFile(Exception):
    """A task uses a secret or config this node was not given."""


class TaskFiles:
    def __init__(self) -> None:
        self._secrets: dict[str, bytes] = {}
        self._configs: dict[str, bytes] = {}

    def update(self, message: cluster_pb2.AssignmentsMessage) -> None:
        secrets = {s.id: bytes(s.spec.data) for s in message.secrets}
        configs = {c.id: bytes(c.spec.data) for c in message.configs}
        if set(secrets) != set(self._secrets) or set(configs) != set(self._configs):
            log.info("secrets held for this node's tasks: %s; configs: %s",
                     ", ".join(sorted(secrets)) or "none", ", ".join(sorted(configs)) or "none")
        self._secrets, self._configs = secrets, configs

    def held_secrets(self) -> list[str]:
        return sorted(self._secrets)

    def for_task(self, task: pb.Task) -> list[TaskFile]:
        return task_files(task.spec.container, self._secrets, self._configs)


def task_files(container: pb.ContainerSpec, secrets: dict[str, bytes],
               configs: dict[str, bytes]) -> list[TaskFile]:
    out: list[TaskFile] = []
    refs: Iterable[tuple[str, str, pb.FileTarget, bool]] = [
        *((r.secret_id, r.secret_name, r.file, True) for r in container.secrets),
        *((r.config_id, r.config_name, r.file, False) for r in container.configs)]
    for obj_id, name, file, secret in refs:
        data = (secrets if secret else configs).get(obj_id)
        if data is None:
            kind = "secret" if secret else "config"
            raise MissingFile(f"{kind} {name} ({obj_id}) was not sent to this node; it may "
                              "have been removed")
        out.append(TaskFile(target_path(file, name, secret), data, int(file.uid or 0),
                            int(file.gid or 0), file.mode))
    return out
