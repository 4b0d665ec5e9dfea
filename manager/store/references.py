"""References the store keeps whole: a service's secrets and configs exist while it names
them. Checked in apply, so a secret removed while a service naming it is created (through
two managers at once) can't leave the service pointing at nothing. Only references a write
adds are checked: a service already stored is never stuck by this rule."""

from __future__ import annotations

from manager.errors import FailedPrecondition, NotFound
from manager.store.view import Draft, Obj
from proto import objects_pb2, store_pb2


def _refs(service: Obj | None) -> set[tuple[str, str]]:
    if service is None or service.pending_delete:
        return set()
    c = service.spec.task.container
    return {("secret", r.secret_id) for r in c.secrets} | \
        {("config", r.config_id) for r in c.configs}


def check_references(draft: Draft, kind: int, table: str, obj: Obj, current: Obj | None) -> None:
    if table == "service" and kind != store_pb2.DELETE:
        for ref_table, ref_id in sorted(_refs(obj) - _refs(current)):
            if draft.get(ref_table, ref_id) is None:
                raise NotFound(f"{ref_table} {ref_id} not found: service "
                               f"{obj.spec.annotations.name} can't use it")
    elif table in ("secret", "config") and kind == store_pb2.DELETE:
        services: list[objects_pb2.Service] = list(draft.tables["service"].values())
        users = sorted(s.spec.annotations.name for s in services
                       if (table, obj.id) in _refs(s))
        if users:
            name = current.spec.annotations.name if current is not None else obj.id
            plural = "s" if len(users) > 1 else ""
            raise FailedPrecondition(f"{table} '{name}' is in use by the following "
                                     f"service{plural}: {', '.join(users)}")
