"""One consistent, indexed, read-only view of the store at one version.

The store's state is a `StoreView` made of persistent maps (immutables' HAMT): applying a batch
builds the next view from the last one, sharing everything it did not change, and swaps one
reference. A reader takes the current view without a lock and keeps it as long as it likes;
nothing is copied to read, and no later write can change what it sees. Objects in a view are
shared and read-only: copy one before changing it.

Indexes: tasks by service, by node and by slot (the slot number, or the node for global
services' tasks, which have slot 0), and objects by name for the tables whose names are
unique (services, while not being removed).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from immutables import Map as PMap

from manager.errors import AlreadyExists
from proto import objects_pb2, store_pb2

Obj = Any  # a generated message with `id` and `meta` (Node, Cluster, Service, Task)
SlotKey = int | str  # the slot number, or the node ID for global services' tasks

_TABLE_OF: dict[type, str] = {objects_pb2.Node: "node", objects_pb2.Cluster: "cluster",
                               objects_pb2.Service: "service", objects_pb2.Task: "task",
                               objects_pb2.Network: "network", objects_pb2.Secret: "secret",
                               objects_pb2.Config: "config"}
TABLES = tuple(_TABLE_OF.values())
_EMPTY: PMap[Any, Any] = PMap()


def table_of(cls: type) -> str:
    return _TABLE_OF[cls]


def unwrap(wrapped: store_pb2.StoreObject) -> tuple[str, Obj]:
    table = wrapped.WhichOneof("kind")
    if table is None:
        raise ValueError("empty StoreObject")
    return table, getattr(wrapped, table)


def wrap(obj: Obj) -> store_pb2.StoreObject:
    wrapped = store_pb2.StoreObject()
    getattr(wrapped, _TABLE_OF[type(obj)]).CopyFrom(obj)
    return wrapped


def slot_key(task: objects_pb2.Task) -> SlotKey:
    return int(task.slot) if task.slot else str(task.node_id)


def unique_name(table: str, obj: Obj) -> str | None:
    """The name that must be unique in its table, if the object has one."""
    if table in ("service", "network") and not obj.pending_delete:
        return str(obj.spec.annotations.name) or None
    if table in ("secret", "config"):
        return str(obj.spec.annotations.name) or None
    return None


@dataclass(frozen=True)
class StoreView:
    version: int = 0
    epoch: int = 0  # the leadership epoch: Raft term of the leader that last took over
    tables: PMap[str, PMap[str, Obj]] = field(
        default_factory=lambda: PMap({t: _EMPTY for t in TABLES}))
    # index key → the IDs of its objects (a map used as a set)
    by_service: PMap[str, PMap[str, bool]] = _EMPTY
    by_node: PMap[str, PMap[str, bool]] = _EMPTY
    by_slot: PMap[tuple[str, SlotKey], PMap[str, bool]] = _EMPTY
    by_network: PMap[str, PMap[str, bool]] = _EMPTY  # tasks with an address on the network
    names: PMap[tuple[str, str], str] = _EMPTY  # (table, name) → id
    # Lists already made from this view (it never changes): passes of several controllers
    # over one view iterate each index once.
    _memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    # -- reads (shared, read-only objects) --

    def table(self, cls: type) -> Mapping[str, Obj]:
        return self.tables[table_of(cls)]  # type: ignore[no-any-return]

    def get(self, cls: type, obj_id: str) -> Obj | None:
        return self.tables[table_of(cls)].get(obj_id)

    def list(self, cls: type) -> builtins.list[Obj]:
        """Every object of the table (a shared list: don't change it)."""
        return self._listed(cls, None, lambda: self.tables[table_of(cls)].values())

    def derived(self, key: Any, compute: Any) -> Any:
        """`compute()` once per view: what several readers of one view derive from it."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def _listed(self, kind: Any, key: Any, source: Any) -> builtins.list[Obj]:
        found = self._memo.get((kind, key))
        if found is None:
            found = self._memo[(kind, key)] = builtins.list(source())
        return found  # type: ignore[no-any-return]

    def _tasks(self, ids: Iterable[str]) -> builtins.list[objects_pb2.Task]:
        tasks = self.tables["task"]
        return [tasks[i] for i in ids]

    def cluster(self) -> objects_pb2.Cluster | None:
        return next(iter(self.tables["cluster"].values()), None)

    def by_name(self, cls: type, name: str) -> Obj | None:
        obj_id = self.names.get((table_of(cls), name))
        return None if obj_id is None else self.get(cls, obj_id)

    def tasks_of_service(self, service_id: str) -> builtins.list[objects_pb2.Task]:
        return self._listed("service", service_id,
                            lambda: self._tasks(self.by_service.get(service_id, _EMPTY)))

    def tasks_on_node(self, node_id: str) -> builtins.list[objects_pb2.Task]:
        return self._tasks(self.by_node.get(node_id, _EMPTY))

    def tasks_in_slot(self, service_id: str, key: SlotKey) -> builtins.list[objects_pb2.Task]:
        return self._tasks(self.by_slot.get((service_id, key), _EMPTY))

    def tasks_on_network(self, network_id: str) -> builtins.list[objects_pb2.Task]:
        """The tasks attached to the network (ended ones too, until they are removed)."""
        return self._tasks(self.by_network.get(network_id, _EMPTY))

    @classmethod
    def of(cls, objs: Iterable[Obj], version: int = 0, epoch: int = 0) -> StoreView:
        """A view holding these objects as they are (tests, restoring a snapshot)."""
        draft = Draft(cls(version=version, epoch=epoch))
        for obj in objs:
            draft.put(table_of(type(obj)), obj)
        return draft.view(version)


class Draft:
    """The next view being built by one batch; the view it started from is untouched.

    Indexes hold IDs, not objects, so the common write (a task's status) changes one table
    entry and no index: only a change of the indexed fields moves an ID."""

    def __init__(self, base: StoreView) -> None:
        self.epoch = base.epoch
        self.tables = base.tables
        self.by_service = base.by_service
        self.by_node = base.by_node
        self.by_slot = base.by_slot
        self.by_network = base.by_network
        self.names = base.names

    def get(self, table: str, obj_id: str) -> Obj | None:
        return self.tables[table].get(obj_id)

    def put(self, table: str, obj: Obj) -> Obj | None:
        old = self.get(table, obj.id)
        name = unique_name(table, obj)
        if name is not None:
            holder = self.names.get((table, name))
            if holder is not None and holder != obj.id:
                raise AlreadyExists(f"name conflicts with an existing object: {table} {name} "
                                    f"already exists ({holder}); choose another name")
        self.tables = self.tables.set(table, self.tables[table].set(obj.id, obj))
        if old is None or not _same_keys(table, old, obj):
            if old is not None:
                self._unindex(table, old)
            self._index(table, obj)
        return old

    def delete(self, table: str, obj_id: str) -> Obj | None:
        old = self.get(table, obj_id)
        if old is not None:
            self._unindex(table, old)
            self.tables = self.tables.set(table, self.tables[table].delete(obj_id))
        return old

    def view(self, version: int) -> StoreView:
        return StoreView(version, self.epoch, self.tables, self.by_service, self.by_node,
                         self.by_slot, self.by_network, self.names)

    # -- indexes --

    def _index(self, table: str, obj: Obj) -> None:
        name = unique_name(table, obj)
        if name is not None:
            self.names = self.names.set((table, name), obj.id)
        if table == "task":
            self.by_service = _add(self.by_service, obj.service_id, obj.id)
            self.by_node = _add(self.by_node, obj.node_id, obj.id)
            self.by_slot = _add(self.by_slot, (obj.service_id, slot_key(obj)), obj.id)
            for network_id in _networks(obj):
                self.by_network = _add(self.by_network, network_id, obj.id)

    def _unindex(self, table: str, obj: Obj) -> None:
        name = unique_name(table, obj)
        if name is not None and self.names.get((table, name)) == obj.id:
            self.names = self.names.delete((table, name))
        if table == "task":
            self.by_service = _drop(self.by_service, obj.service_id, obj.id)
            self.by_node = _drop(self.by_node, obj.node_id, obj.id)
            self.by_slot = _drop(self.by_slot, (obj.service_id, slot_key(obj)), obj.id)
            for network_id in _networks(obj):
                self.by_network = _drop(self.by_network, network_id, obj.id)


def _same_keys(table: str, old: Obj, new: Obj) -> bool:
    """Whether the indexes read the same from both versions of an object (most writes are
    a task's status: compared field by field, without building keys)."""
    if table == "task":
        return (old.service_id == new.service_id and old.node_id == new.node_id
                and old.slot == new.slot
                and (not (old.networks or new.networks) or _networks(old) == _networks(new)))
    return unique_name(table, old) == unique_name(table, new)


def _networks(task: objects_pb2.Task) -> tuple[str, ...]:
    return tuple(att.network_id for att in task.networks)


def _add(index: PMap[Any, PMap[str, bool]], key: Any, obj_id: str) -> PMap[Any, PMap[str, bool]]:
    return index.set(key, index.get(key, _EMPTY).set(obj_id, True))


def _drop(index: PMap[Any, PMap[str, bool]], key: Any, obj_id: str) -> PMap[Any, PMap[str, bool]]:
    inner = index.get(key)
    if inner is None or obj_id not in inner:
        return index
    inner = inner.delete(obj_id)
    return index.set(key, inner) if inner else index.delete(key)
