"""Secrets and configs: sealing, validation, updates, removal and service references (pure)."""

from __future__ import annotations

import pytest

from manager import secretbox
from manager.controlapi import secrets as sc
from manager.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from manager.store.memory import MemoryStore
from proto import objects_pb2 as pb
from proto import store_pb2
from shoal.api.secrets import matches, object_json, spec_from
from worker.files import MissingFile, TaskFiles, target_path, task_files

KEY = b"k" * 32


def _spec(name: str, data: bytes = b"s3cr3t", **labels: str) -> pb.SecretSpec:
    spec = pb.SecretSpec(data=data)
    spec.annotations.name = name
    spec.annotations.labels.update(labels)
    return spec


def _cluster() -> pb.Cluster:
    cluster = pb.Cluster(id="c1")
    cluster.root_ca.ca_key_pem = b"-----BEGIN EC PRIVATE KEY-----\nabc\n"
    return cluster


def test_sealed_data_opens_only_with_the_key_and_id() -> None:
    key = secretbox.derive_key(_cluster())
    sealed = secretbox.seal(key, "id1", b"hunter2")
    assert b"hunter2" not in sealed and sealed.startswith(secretbox.MAGIC)
    assert secretbox.open_sealed(key, "id1", sealed) == b"hunter2"
    with pytest.raises(secretbox.SealError):
        secretbox.open_sealed(key, "id2", sealed)  # bound to its secret
    other = pb.Cluster(id="c2", root_ca=_cluster().root_ca)
    with pytest.raises(secretbox.SealError):
        secretbox.open_sealed(secretbox.derive_key(other), "id1", sealed)


def test_a_node_without_the_ca_key_cannot_derive() -> None:
    with pytest.raises(secretbox.SealError, match="only managers"):
        secretbox.derive_key(pb.Cluster(id="c1"))


def test_new_secret_is_sealed_and_validated() -> None:
    obj = sc.new_object(sc.SECRET, [], _spec("db.pass-1"), KEY)
    assert b"s3cr3t" not in obj.spec.data
    assert sc.data_of(sc.SECRET, obj, KEY) == b"s3cr3t"
    with pytest.raises(AlreadyExists, match="secret db.pass-1 already exists"):
        sc.new_object(sc.SECRET, [obj], _spec("db.pass-1"), KEY)


@pytest.mark.parametrize("name", ["", "-a", "a-", "a b", "x" * 65, "a/b"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="only 64"):
        sc.new_object(sc.SECRET, [], _spec(name), KEY)


def test_data_limits() -> None:
    with pytest.raises(InvalidArgument, match="larger than 0"):
        sc.new_object(sc.SECRET, [], _spec("a", b""), KEY)
    with pytest.raises(InvalidArgument, match="less than 512000"):
        sc.new_object(sc.SECRET, [], _spec("a", b"x" * 500 * 1024), KEY)
    config = pb.ConfigSpec(data=b"x" * (500 * 1024))
    config.annotations.name = "c"
    assert sc.new_object(sc.CONFIG, [], config, None).spec.data == config.data  # in clear


def test_update_changes_labels_only() -> None:
    obj = sc.new_object(sc.SECRET, [], _spec("a"), KEY)
    obj.meta.version.index = 7
    new = sc.updated_object(sc.SECRET, [obj], "a", 7, _spec("a", b"", x="1"), KEY)
    assert dict(new.spec.annotations.labels) == {"x": "1"} and new.spec.data == obj.spec.data
    same = sc.updated_object(sc.SECRET, [obj], obj.id, 7, _spec("a", b"s3cr3t"), KEY)
    assert same.spec.data == obj.spec.data  # stack deploy sends the same data again
    with pytest.raises(InvalidArgument, match="only updates to Labels"):
        sc.updated_object(sc.SECRET, [obj], "a", 7, _spec("a", b"other"), KEY)
    with pytest.raises(InvalidArgument, match="only updates to Labels"):
        sc.updated_object(sc.SECRET, [obj], "a", 7, _spec("b"), KEY)


def _service(name: str, secret_id: str = "", config_id: str = "") -> pb.Service:
    svc = pb.Service(id=f"id-{name}")
    svc.spec.annotations.name = name
    if secret_id:
        svc.spec.task.container.secrets.append(pb.SecretReference(secret_id=secret_id))
    if config_id:
        svc.spec.task.container.configs.append(pb.ConfigReference(config_id=config_id))
    return svc


def test_remove_in_use_names_the_services() -> None:
    obj = sc.new_object(sc.SECRET, [], _spec("a"), KEY)
    services = [_service("web", obj.id), _service("api", obj.id), _service("other")]
    with pytest.raises(FailedPrecondition,
                       match="secret 'a' is in use by the following services: api, web"):
        sc.removed_object(sc.SECRET, [obj], services, "a")
    assert sc.removed_object(sc.SECRET, [obj], services[2:], obj.id[:5]) is obj
    with pytest.raises(NotFound, match="secret no-such not found"):  # never an ID prefix
        sc.removed_object(sc.SECRET, [obj], [], "no-such")


def test_references_resolve_by_name_or_id() -> None:
    secret = sc.new_object(sc.SECRET, [], _spec("db"), KEY)
    cspec = pb.ConfigSpec(data=b"x")
    cspec.annotations.name = "cfg"
    config = sc.new_object(sc.CONFIG, [], cspec, None)
    c = pb.ContainerSpec()
    c.secrets.append(pb.SecretReference(secret_name="db", file=pb.FileTarget(name="db")))
    c.configs.append(pb.ConfigReference(config_id=config.id))
    sc.resolve_references(c, [secret], [config])
    assert (c.secrets[0].secret_id, c.configs[0].config_name) == (secret.id, "cfg")
    c.secrets.append(pb.SecretReference(secret_name="no-such"))
    with pytest.raises(NotFound, match="secret not found: no-such"):
        sc.resolve_references(c, [secret], [config])


def test_target_paths_as_docker() -> None:
    assert target_path(pb.FileTarget(), "db", True) == "/run/secrets/db"
    assert target_path(pb.FileTarget(name="x/y"), "db", True) == "/run/secrets/x/y"
    assert target_path(pb.FileTarget(name="/etc/db"), "db", True) == "/etc/db"
    assert target_path(pb.FileTarget(), "cfg", False) == "/cfg"
    c = pb.ContainerSpec()
    secret = sc.new_object(sc.SECRET, [], _spec("db"), KEY)
    for _ in range(2):
        c.secrets.append(pb.SecretReference(secret_id=secret.id, file=pb.FileTarget(name="a")))
    with pytest.raises(InvalidArgument, match="two secrets target the same file 'a'"):
        sc.resolve_references(c, [secret], [])


def test_store_keeps_names_unique_and_snapshots_hold_no_clear_data() -> None:
    store = MemoryStore()
    obj = sc.new_object(sc.SECRET, [], _spec("a", b"plain-bytes"), KEY)
    twin = sc.new_object(sc.SECRET, [], _spec("a"), KEY)
    batch = store_pb2.StoreBatch(actions=[store_pb2.StoreAction(
        kind=store_pb2.CREATE, object=store_pb2.StoreObject(secret=o)) for o in (obj,)])
    assert store.apply(batch).error is None
    dup = store_pb2.StoreBatch(actions=[store_pb2.StoreAction(
        kind=store_pb2.CREATE, object=store_pb2.StoreObject(secret=twin))])
    assert isinstance(store.apply(dup).error, AlreadyExists)
    assert b"plain-bytes" not in store.snapshot()
    assert b"plain-bytes" not in batch.SerializeToString()


def test_api_json_never_shows_secret_data() -> None:
    spec = spec_from(sc.SECRET, {"Name": "a", "Labels": {"k": "v"}, "Data": "czNjcjN0"})
    assert spec.data == b"s3cr3t"
    obj = sc.new_object(sc.SECRET, [], spec, KEY)
    out = object_json(sc.SECRET, obj)
    assert out["Spec"] == {"Name": "a", "Labels": {"k": "v"}} and "Data" not in str(out)
    cfg = sc.new_object(sc.CONFIG, [], spec_from(sc.CONFIG, {"name": "c", "data": "eA=="}),
                        None)
    assert object_json(sc.CONFIG, cfg)["Spec"]["Data"] == "eA=="
    assert matches(obj, {"names": ["a"], "label": ["k=v"], "name": [""]})
    assert not matches(obj, {"names": ["ab"]})


def test_api_refuses_bad_bodies() -> None:
    from shoal.errors import InvalidRequest
    with pytest.raises(InvalidRequest, match="base64"):
        spec_from(sc.SECRET, {"Name": "a", "Data": "!!"})
    with pytest.raises(InvalidRequest, match="unknown field"):
        spec_from(sc.SECRET, {"Name": "a", "Data": "eA==", "Bogus": 1})


def test_worker_files_for_a_task_and_only_ids_in_reprs() -> None:
    from proto import cluster_pb2
    c = pb.ContainerSpec()
    c.secrets.append(pb.SecretReference(secret_id="s1", secret_name="db", file=pb.FileTarget(
        name="db", uid="1000", gid="1001", mode=0o400)))
    c.configs.append(pb.ConfigReference(config_id="c1", config_name="cfg",
                                        file=pb.FileTarget(name="/etc/app.cfg", mode=0o444)))
    files = task_files(c, {"s1": b"pw"}, {"c1": b"x=1"})
    assert [(f.path, f.uid, f.gid, f.mode) for f in files] == [
        ("/run/secrets/db", 1000, 1001, 0o400), ("/etc/app.cfg", 0, 0, 0o444)]
    assert "pw" not in repr(files)
    with pytest.raises(MissingFile, match="secret db"):
        task_files(c, {}, {"c1": b"x=1"})
    held = TaskFiles()
    secret = pb.Secret(id="s1")
    secret.spec.data = b"pw"
    held.update(cluster_pb2.AssignmentsMessage(secrets=[secret]))
    assert held.held_secrets() == ["s1"]
    held.update(cluster_pb2.AssignmentsMessage())
    assert held.held_secrets() == []


def test_secret_flags_send_references() -> None:
    import click

    from shoal.api import convert_service as conv
    from shoal.cli.service_opts import create_spec
    from shoal.cli.service_values import parse_file_ref, update_file_refs
    assert parse_file_ref("db", "--secret", "secret") == {
        "File": {"Name": "db", "UID": "0", "GID": "0", "Mode": 0o444}, "SecretName": "db"}
    assert parse_file_ref("source=cfg,target=/etc/a.cfg,mode=0440,uid=5", "--config",
                          "config") == {"File": {"Name": "/etc/a.cfg", "UID": "5", "GID": "0",
                                                 "Mode": 0o440}, "ConfigName": "cfg"}
    for bad in ("target=x", "source=a,mode=9z", "source=a,uid=root", "source=a,what=1"):
        with pytest.raises(click.BadParameter):
            parse_file_ref(bad, "--secret", "secret")
    opts = {"env": (), "container_label": (), "mount": (), "constraint": (),
            "placement_pref": (), "name": "web", "label": (), "mode": "replicated",
            "replicas": None, "max_concurrent": None, "publish": (), "network": (),
            "secret": ("source=db,target=pw,mode=0400",), "config": ("cfg",)}
    body = create_spec("busybox", (), opts)
    spec = conv.service_spec(body)  # the server takes it
    assert spec.task.container.secrets[0].file.mode == 0o400
    assert spec.task.container.configs[0].config_name == "cfg"
    refs = [{"File": {"Name": "pw"}, "SecretID": "id1", "SecretName": "db"},
            {"File": {"Name": "x"}, "SecretID": "id2", "SecretName": "other"}]
    out = update_file_refs(refs, ("source=new,target=x",), ("db",), "secret")
    assert [r["SecretName"] for r in out] == ["new"]


def _apply(store: MemoryStore, kind: int, obj: object) -> object:
    from manager.store.memory import wrap
    return store.apply(store_pb2.StoreBatch(actions=[store_pb2.StoreAction(
        kind=kind, object=wrap(obj))])).error


def test_store_keeps_service_references_whole() -> None:
    store = MemoryStore()
    secret = sc.new_object(sc.SECRET, [], _spec("a"), KEY)
    svc = _service("web", secret.id)
    assert isinstance(_apply(store, store_pb2.CREATE, svc), NotFound)  # no such secret yet
    assert _apply(store, store_pb2.CREATE, secret) is None
    assert _apply(store, store_pb2.CREATE, svc) is None
    err = _apply(store, store_pb2.DELETE, secret)
    assert isinstance(err, FailedPrecondition) and "web" in str(err)
    stored = store.get(pb.Service, svc.id)
    stored.pending_delete = True  # a service being removed no longer holds it
    assert _apply(store, store_pb2.UPDATE, stored) is None
    assert _apply(store, store_pb2.DELETE, secret) is None


def test_dispatcher_sends_only_what_running_tasks_use() -> None:
    from manager.dispatcher.files import task_files as dispatched
    from manager.store.view import StoreView
    cluster = _cluster()
    key = secretbox.derive_key(cluster)
    used = sc.new_object(sc.SECRET, [], _spec("used", b"u-data"), key)
    stopped = sc.new_object(sc.SECRET, [], _spec("stopped", b"s-data"), key)
    foreign = sc.new_object(sc.SECRET, [], _spec("foreign", b"f-data"), b"x" * 32)
    view = StoreView.of([cluster, used, stopped, foreign])

    def task(secret: pb.Secret, desired: int = pb.RUNNING) -> pb.Task:
        t = pb.Task(id=f"t-{secret.id}", desired_state=desired)  # type: ignore[arg-type]
        t.status.state = pb.RUNNING
        t.spec.container.secrets.append(pb.SecretReference(secret_id=secret.id))
        return t

    secrets, configs = dispatched(view, [task(used), task(stopped, pb.SHUTDOWN),
                                         task(foreign)])
    assert [(s.id, s.spec.data) for s in secrets] == [(used.id, b"u-data")] and configs == []
    assert dispatched(view, []) == ([], [])
