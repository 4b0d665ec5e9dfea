"""The secrets and configs a node gets with its assignments (pure, from one store view).

Only those that a task of the node uses while it is meant to run: a node that runs no task
using a secret never receives it. A secret's data is opened here, on the leader, and travels
only inside the node's mTLS assignments stream.
"""

from __future__ import annotations

from collections.abc import Iterable

from manager import secretbox
from manager.store.view import StoreView
from proto import objects_pb2 as pb


def needs_files(task: pb.Task) -> bool:
    return task.desired_state <= pb.RUNNING and task.status.state < pb.COMPLETE


def task_files(view: StoreView, tasks: Iterable[pb.Task]
               ) -> tuple[list[pb.Secret], list[pb.Config]]:
    secret_ids: set[str] = set()
    config_ids: set[str] = set()
    for task in tasks:
        if needs_files(task):
            secret_ids.update(r.secret_id for r in task.spec.container.secrets)
            config_ids.update(r.config_id for r in task.spec.container.configs)
    secrets = []
    cluster = view.cluster()
    if secret_ids and cluster is not None:
        key = secretbox.derive_key(cluster)
        for secret_id in sorted(secret_ids):
            stored = view.get(pb.Secret, secret_id)
            if stored is None:
                continue  # removed: the task fails to prepare, and says so
            secret = pb.Secret(id=stored.id)
            secret.spec.annotations.CopyFrom(stored.spec.annotations)
            secret.spec.data = secretbox.open_sealed(key, stored.id, bytes(stored.spec.data))
            secrets.append(secret)
    configs = [c for c in (view.get(pb.Config, i) for i in sorted(config_ids))
               if c is not None]
    return secrets, configs
