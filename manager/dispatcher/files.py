"""The secrets and configs a node gets with its assignments (from one store view; no I/O but
a log line naming a secret that cannot be opened).

Only those that a task of the node uses while it is meant to run: a node that runs no task
using a secret never receives it. A secret's data is opened here, on the leader, and travels
only inside the node's mTLS assignments stream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from manager import secretbox
from manager.store.view import StoreView
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)


def needs_files(task: pb.Task) -> bool:
    return task.desired_state <= pb.RUNNING and task.status.state < pb.COMPLETE


def task_files(view: StoreView, tasks: Iterable[pb.Task]
               ) -> tuple[list[pb.Secret], list[pb.Config]]:
    if not view.table(pb.Secret) and not view.table(pb.Config):
        return [], []  # no task can refer to any (a 5,000-node leader read every task's)
    secret_ids: set[str] = set()
    config_ids: set[str] = set()
    for task in tasks:
        if needs_files(task):
            secret_ids.update(r.secret_id for r in task.spec.container.secrets)
            config_ids.update(r.config_id for r in task.spec.container.configs)
    secrets = [s for s in (_opened(view, i) for i in sorted(secret_ids)) if s is not None]
    configs = [c for c in (view.get(pb.Config, i) for i in sorted(config_ids))
               if c is not None]
    return secrets, configs


def _opened(view: StoreView, secret_id: str) -> pb.Secret | None:
    """The secret with its data in clear; None if it is gone or can't be opened (then the
    task fails to prepare, saying the secret was not sent; the node's other tasks go on)."""
    stored, cluster = view.get(pb.Secret, secret_id), view.cluster()
    if stored is None or cluster is None:
        return None
    secret = pb.Secret(id=stored.id)
    secret.spec.annotations.CopyFrom(stored.spec.annotations)
    try:
        secret.spec.data = secretbox.open_sealed(secretbox.derive_key(cluster), stored.id,
                                                 bytes(stored.spec.data))
    except secretbox.SealError as err:
        log.error("not sending secret %s: %s", stored.spec.annotations.name, err)
        return None
    return secret
