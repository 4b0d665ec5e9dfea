"""The in-memory object store, mutated only by applying a StoreBatch (a Raft log entry).

`apply` is deterministic: every replica applies the same batches in the same order and ends
in the same state, so versions are a store-wide counter and timestamps come from the batch.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from manager.errors import AlreadyExists, ManagerError, NotFound, OutOfSequence
from proto import objects_pb2, store_pb2

Obj = Any  # a generated message that has `id` and `meta` (Node, Cluster, ...)


@dataclass(frozen=True)
class Event:
    """One change, as applied. `old` and `new` are the stored objects: read-only."""

    action: int  # store_pb2.ActionKind: CREATE, UPDATE (also for PUT) or DELETE
    table: str
    old: Obj | None
    new: Obj | None


@dataclass(frozen=True)
class ApplyResult:
    error: ManagerError | None
    version: int


def unwrap(wrapped: store_pb2.StoreObject) -> tuple[str, Obj]:
    table = wrapped.WhichOneof("kind")
    if table is None:
        raise ValueError("empty StoreObject")
    return table, getattr(wrapped, table)


def wrap(obj: Obj) -> store_pb2.StoreObject:
    wrapped = store_pb2.StoreObject()
    table = _TABLE_OF[type(obj)]
    getattr(wrapped, table).CopyFrom(obj)
    return wrapped


_TABLE_OF: dict[type, str] = {objects_pb2.Node: "node", objects_pb2.Cluster: "cluster",
                               objects_pb2.Service: "service", objects_pb2.Task: "task"}
TABLES = tuple(_TABLE_OF.values())


def table_of(cls: type) -> str:
    return _TABLE_OF[cls]


class MemoryStore:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tables: dict[str, dict[str, Obj]] = {t: {} for t in TABLES}
        self._version = 0
        self._watchers: builtins.list[Callable[[builtins.list[Event]], None]] = []

    @property
    def version(self) -> int:
        return self._version

    # -- reads (copies, so callers never see a later mutation) --

    def get(self, cls: type, obj_id: str) -> Obj | None:
        with self._lock:
            obj = self._tables[table_of(cls)].get(obj_id)
            return _copy(obj) if obj is not None else None

    def list(self, cls: type) -> builtins.list[Obj]:
        with self._lock:
            return [_copy(o) for o in self._tables[table_of(cls)].values()]

    def list_view(self, cls: type) -> builtins.list[Obj]:
        """The stored objects themselves, not copies: cheap for big scans, but read-only —
        never mutate one (copy it first to write it back). Safe to keep: a commit replaces
        an object, it never changes a stored one in place."""
        with self._lock:
            return builtins.list(self._tables[table_of(cls)].values())

    # -- watch --

    def watch(self, callback: Callable[[builtins.list[Event]], None]) -> Callable[[], None]:
        """Call `callback(events)` after each applied batch (on the applying thread)."""
        with self._lock:
            self._watchers.append(callback)

        def cancel() -> None:
            with self._lock:
                if callback in self._watchers:
                    self._watchers.remove(callback)

        return cancel

    # -- the one mutation --

    def apply(self, batch: store_pb2.StoreBatch) -> ApplyResult:
        with self._lock:
            try:
                staged = self._stage(batch)
            except ManagerError as err:
                return ApplyResult(err, self._version)
            self._version += 1
            events = [self._commit(action, table, obj) for action, table, obj in staged]
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher(events)
        return ApplyResult(None, self._version)

    def _stage(self, batch: store_pb2.StoreBatch) -> builtins.list[tuple[int, str, Obj]]:
        """Check every action against the current state; raise before anything changes."""
        staged: builtins.list[tuple[int, str, Obj]] = []
        new_version = self._version + 1
        for action in batch.actions:
            table, obj = unwrap(action.object)
            current = self._tables[table].get(obj.id)
            _check(action.kind, table, obj, current)
            obj = _copy(obj)
            if action.kind != store_pb2.DELETE:
                obj.meta.version.index = new_version
                obj.meta.updated_at_ns = batch.timestamp_ns
                if current is None:
                    obj.meta.created_at_ns = batch.timestamp_ns
                else:
                    obj.meta.created_at_ns = current.meta.created_at_ns
            staged.append((action.kind, table, obj))
        return staged

    def _commit(self, kind: int, table: str, obj: Obj) -> Event:
        old = self._tables[table].get(obj.id)
        if kind == store_pb2.DELETE:
            del self._tables[table][obj.id]
            return Event(store_pb2.DELETE, table, old, None)
        self._tables[table][obj.id] = obj
        event_kind = store_pb2.CREATE if old is None else store_pb2.UPDATE
        # Stored objects are replaced, never changed in place, so events can share them
        # (read-only, like list_view) instead of copying every write a second time.
        return Event(event_kind, table, old, obj)

    # -- snapshots (pysyncobj's full dump, in protobuf) --

    def snapshot(self) -> bytes:
        with self._lock:
            snap = store_pb2.StoreSnapshot(version=self._version)
            for table in TABLES:
                for obj in self._tables[table].values():
                    snap.objects.append(wrap(obj))
            return snap.SerializeToString()

    def restore(self, data: bytes) -> None:
        snap = store_pb2.StoreSnapshot.FromString(data)
        with self._lock:
            self._tables = {t: {} for t in TABLES}
            for wrapped in snap.objects:
                table, obj = unwrap(wrapped)
                self._tables[table][obj.id] = _copy(obj)
            self._version = snap.version


def _check(kind: int, table: str, obj: Obj, current: Obj | None) -> None:
    if kind == store_pb2.CREATE and current is not None:
        raise AlreadyExists(f"{table} {obj.id} already exists")
    if kind in (store_pb2.UPDATE, store_pb2.DELETE) and current is None:
        raise NotFound(f"{table} {obj.id} not found")
    if kind == store_pb2.UPDATE and current is not None and \
            obj.meta.version.index != current.meta.version.index:
        raise OutOfSequence(
            f"update out of sequence: {table} {obj.id} is at version "
            f"{current.meta.version.index}, the update was for version "
            f"{obj.meta.version.index}; read it again and retry")


def _copy(obj: Obj) -> Obj:
    clone = type(obj)()
    clone.CopyFrom(obj)
    return clone
