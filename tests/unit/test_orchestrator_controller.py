"""The controllers around the cores: Raft batches of ≤200 actions without splitting a group,
a stale group skipped without holding back the others, ticks skipped while nothing changed,
and a new leader carrying on an update from the store alone."""

import random
import time
from collections import Counter

from manager.manager import Manager, ManagerAddrs
from manager.orchestrator import reaper, replicated, restart
from manager.orchestrator import update as updater
from manager.orchestrator.controller import Marks, Orchestrator, batches, write_groups
from manager.orchestrator.global_ import GlobalOrchestrator
from manager.orchestrator.jobs import JobsOrchestrator
from manager.orchestrator.orchestrators import orchestrators
from manager.orchestrator.replicated import ReplicatedOrchestrator
from manager.orchestrator.snapshot import Decision, Snapshot, create, update
from manager.orchestrator.tasks import SECOND, SlotKey, new_task
from manager.orchestrator.update import Updater
from manager.store.memory import Event, MemoryStore
from manager.store.view import slot_key
from proto import objects_pb2 as pb
from proto import store_pb2
from tests.unit.orchestration_world import node, service
from tests.unit.passes import Passes, lead


class FakeReplica:
    """Applies proposals straight to the store, and remembers their sizes."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.sizes: list[int] = []

    def is_leader(self) -> bool:
        return True

    async def propose(self, batch: store_pb2.StoreBatch, timeout: float = 10.0) -> int:
        if not batch.timestamp_ns:
            batch.timestamp_ns = time.time_ns()
        self.sizes.append(len(batch.actions))
        result = self.store.apply(batch)
        if result.error is not None:
            raise result.error
        return result.version


def make_manager(*objs: object) -> tuple[Manager, FakeReplica]:
    store = MemoryStore()
    replica = FakeReplica(store)
    mgr = Manager("m1", ManagerAddrs("a:1", "a:2"), store, replica)  # type: ignore[arg-type]
    for obj in objs:
        store.apply(store_pb2.StoreBatch(timestamp_ns=time.time_ns(), actions=[
            store_pb2.StoreAction(kind=store_pb2.CREATE,
                                  object=store_pb2.StoreObject(**{_table(obj): obj}))]))
    return mgr, replica


def _table(obj: object) -> str:
    return {pb.Node: "node", pb.Service: "service", pb.Task: "task"}[type(obj)]


def test_batches_never_split_a_group() -> None:
    groups = [[(store_pb2.CREATE, pb.Task(id=f"t{i}.{j}")) for j in range(3)] for i in range(70)]
    sizes = [sum(len(g) for g in chunk) for chunk in batches(groups)]
    assert sizes == [198, 12]
    assert [len(chunk) for chunk in batches([[(0, None)] * 250])] == [1]  # too big: alone


async def test_scale_to_500_writes_batches_of_at_most_200() -> None:
    mgr, replica = make_manager(node("n1"), service(replicas=500))
    await Passes(mgr, ReplicatedOrchestrator(mgr)).step(True)
    assert replica.sizes == [200, 200, 100]
    assert len(mgr.store.list(pb.Task)) == 500


async def test_a_stale_group_is_skipped_and_the_others_written() -> None:
    mgr, replica = make_manager(pb.Task(id="a"), pb.Task(id="b"))
    lead(mgr)
    a, b = mgr.store.get(pb.Task, "a"), mgr.store.get(pb.Task, "b")
    stale = pb.Task()
    stale.CopyFrom(b)
    b.desired_state = pb.SHUTDOWN
    await mgr.update(b)  # someone else changed b since it was read
    a.desired_state = stale.desired_state = pb.REMOVE
    failed = await write_groups(mgr, [[update(a)], [update(stale), create(pb.Task(id="c"))]])
    assert failed == [[update(stale), create(pb.Task(id="c"))]]
    assert mgr.store.get(pb.Task, "a").desired_state == pb.REMOVE
    assert mgr.store.get(pb.Task, "c") is None  # its group failed as a whole


def test_a_lost_race_is_decided_again_for_what_it_was_about() -> None:
    mgr, _ = make_manager()
    task = pb.Task(id="t", service_id="svc-a", slot=2)
    ctl = ReplicatedOrchestrator(mgr)
    ctl._take_marks()  # the new term's "everything"
    ctl._mark_failed([[update(task)], [update(pb.Service(id="svc-b"))]])
    marks = ctl._take_marks()
    assert (marks.everything, marks.slots, marks.services) == (False, {("svc-a", 2)}, {"svc-b"})
    ctl._mark_failed([[update(pb.Node(id="n1"))]])
    assert ctl._take_marks().everything


class Counting(ReplicatedOrchestrator):
    calls = 0

    def decide(self, snap: Snapshot, marks: Marks | None = None) -> Decision:
        self.calls += 1
        decision = super().decide(snap, marks)
        decision.wake(self.wake_at)
        return decision

    wake_at: int | None = None


async def test_ticks_are_skipped_until_the_store_changes_or_a_wake_up_is_due() -> None:
    mgr, _ = make_manager(node("n1"), service(replicas=1))
    ctl = Counting(mgr)
    passes = Passes(mgr, ctl)
    await passes.step(True)
    await passes.step()  # its own write changed the store: decides again (nothing to do)
    await passes.step()
    await passes.step()
    assert ctl.calls == 2
    ctl.wake_at = time.time_ns() - 1
    await passes.step(True)
    await passes.step()  # wake-up due
    assert ctl.calls == 4


async def run_agents(mgr: Manager) -> None:
    """Place and start tasks, stop those asked to stop (crude scheduler + agents)."""
    for task in mgr.store.list(pb.Task):
        if task.desired_state > pb.COMPLETE and pb.ASSIGNED <= task.status.state < pb.COMPLETE:
            task.status.state = pb.SHUTDOWN
        elif task.desired_state <= pb.COMPLETE and task.status.state < pb.RUNNING:
            task.node_id = task.node_id or "n1"
            task.status.state = pb.RUNNING
        else:
            continue
        await mgr.update(task)


async def test_a_new_leader_finishes_a_start_first_update() -> None:
    svc = service(replicas=3, update={"order": pb.UpdateConfig.START_FIRST, "monitor": 0})
    mgr, _ = make_manager(node("n1"), svc)

    async def tick_all(orch: list[Passes], became_leader: bool) -> None:
        for passes in orch:
            await passes.step(became_leader)

    first = [Passes(mgr, ctl) for ctl in orchestrators(mgr)]
    await tick_all(first, True)
    await run_agents(mgr)
    await tick_all(first, False)

    def new_image(s: pb.Service) -> bool:
        s.previous_spec.CopyFrom(s.spec)
        s.has_previous_spec = True
        s.spec.task.container.image = "busybox:2"
        s.spec_version += 1
        s.ClearField("update_status")
        return True
    await mgr.modify(pb.Service, svc.id, new_image)
    await tick_all(first, False)  # UPDATING
    await tick_all(first, False)  # first batch: a new task next to an old one
    del first  # leadership lost: the runtime cancels its controllers
    assert len([t for t in mgr.store.list(pb.Task) if t.desired_state == pb.RUNNING]) == 4

    lead(mgr)
    second = [Passes(mgr, ctl) for ctl in orchestrators(mgr)]  # nothing but the store
    for i in range(30):
        await run_agents(mgr)
        await tick_all(second, i == 0)
    running = [t for t in mgr.store.list(pb.Task)
               if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING]
    assert sorted((t.slot, t.spec.container.image) for t in running) == [
        (1, "busybox:2"), (2, "busybox:2"), (3, "busybox:2")]
    assert mgr.store.get(pb.Service, svc.id).update_status.state == pb.UpdateStatus.COMPLETED


class Recording(ReplicatedOrchestrator):
    def __init__(self, mgr: Manager) -> None:
        super().__init__(mgr)
        self.decided: list[str] = []

    def decide_service(self, service: pb.Service, tasks: list[pb.Task],
                       snap: Snapshot) -> Decision:
        self.decided.append(service.spec.annotations.name)
        return super().decide_service(service, tasks, snap)

    def decide_slots(self, service: pb.Service, keys: set[SlotKey],
                     snap: Snapshot) -> Decision | None:
        self.decided.append(f"{service.spec.annotations.name}:{sorted(keys)}")
        return super().decide_slots(service, keys, snap)


async def test_only_the_slots_whose_inputs_changed_are_decided_again() -> None:
    mgr, _ = make_manager(node("n1"), service("a", replicas=3), service("b", replicas=1))
    ctl = Recording(mgr)
    passes = Passes(mgr, ctl)
    await passes.step(True)  # creates the tasks
    await passes.step()  # their slots changed (new tasks): decided, nothing to do
    assert sorted(ctl.decided) == ["a", "a:[1, 2, 3]", "b", "b:[1]"]
    ctl.decided.clear()
    task_a = next(t for t in mgr.store.list(pb.Task) if t.service_id == "svc-a" and t.slot == 2)
    task_a.node_id = "n1"
    task_a.status.state = pb.ASSIGNED
    await mgr.update(task_a)
    await passes.step()
    assert ctl.decided == ["a:[2]"]
    for state in (pb.ACCEPTED, pb.STARTING, pb.RUNNING):  # reports on its way up: no change
        task_a = mgr.store.get(pb.Task, task_a.id)
        task_a.status.state = state
        await mgr.update(task_a)
        assert not await passes.step()
    assert ctl.decided == ["a:[2]"]
    task_a = mgr.store.get(pb.Task, task_a.id)
    task_a.status.state = pb.FAILED  # ended: the restart supervisor's, a change for all
    await mgr.update(task_a)
    await passes.step()
    assert ctl.decided == ["a:[2]", "a:[2]"]
    await mgr.write((store_pb2.CREATE, node("n2")))  # no task on it: nothing to decide
    await passes.step()
    assert ctl.decided == ["a:[2]", "a:[2]"]
    task_3 = next(t for t in mgr.store.list(pb.Task) if t.service_id == "svc-a" and t.slot == 3)
    task_3.node_id = "n1"
    task_3.status.state = pb.RUNNING
    await mgr.update(task_3)
    await passes.step()
    assert ctl.decided[2:] == ["a:[3]"]
    await mgr.modify(pb.Node, "n1", lambda n: setattr(n.status, "state", pb.NODE_DOWN) or True)
    await passes.step()  # the slots of the tasks on the node that went down
    assert ctl.decided[3:] == ["a:[2, 3]"]
    slot_3 = {t.id: t.desired_state for t in mgr.store.list(pb.Task) if t.slot == 3}
    assert slot_3.pop(task_3.id) == pb.SHUTDOWN and list(slot_3.values()) == [pb.RUNNING]
    await mgr.modify(pb.Service, "svc-b", lambda s: setattr(
        s.spec.replicated, "replicas", 2) or True)
    await passes.step()  # a service's own change: decided whole
    assert sorted(ctl.decided[4:]) == ["a:[3]", "b"]  # (the new task of slot 3, and b)


def recording(cls: type[Orchestrator]) -> type[Orchestrator]:
    """`cls`, noting the services it decides whole (their tasks listed for it)."""
    class Recorded(cls):  # type: ignore[valid-type, misc]
        decided: list[str] = []

        def decide_service(self, service: pb.Service, tasks: list[pb.Task],
                           snap: Snapshot) -> Decision:
            self.decided.append(service.spec.annotations.name)
            return super().decide_service(service, tasks, snap)
    return Recorded


async def test_an_orchestrator_decides_only_the_services_of_its_modes() -> None:
    """A node change wakes the global and jobs orchestrators for every service: they decide
    (and list the tasks of) only the services of their modes."""
    mgr, _ = make_manager(node("n1"), service("r", replicas=2), service("g", mode="global"),
                          service("j", replicas=2, mode="replicated_job"))
    for cls, wanted in ((GlobalOrchestrator, ["g"]), (JobsOrchestrator, ["j"]),
                        (ReplicatedOrchestrator, ["r"])):
        ctl = recording(cls)(mgr)
        passes = Passes(mgr, ctl)
        await passes.step(True)
        assert sorted(set(ctl.decided)) == wanted, cls
        ctl.decided.clear()
        await mgr.modify(pb.Node, "n1", lambda n: n.spec.annotations.labels.update(
            {"zone": "a"}) or True)
        await passes.step()
        assert set(ctl.decided) <= set(wanted), cls
    tasks = Counter(t.service_id for t in mgr.store.list(pb.Task))
    assert tasks == {"svc-r": 2, "svc-g": 1, "svc-j": 2}  # each decided by its own


CORES = [(replicated.decide_service, replicated.decide_one_slot),
         (restart.decide_service, restart.decide_one_slot),
         (reaper.decide_service, reaper.decide_one_slot),
         (updater.decide_service, updater.decide_one_slot)]


def test_deciding_every_slot_is_deciding_the_service() -> None:
    """Each slot core says, slot by slot, what its service core says (the same actions, the
    same wake-up), over worlds of every task state, desired state, node state, spec version
    and update state; a core may instead ask for the whole service (None)."""
    rng = random.Random(7)
    states = [pb.NEW, pb.ASSIGNED, pb.RUNNING, pb.COMPLETE, pb.FAILED, pb.SHUTDOWN]
    desired = [pb.RUNNING, pb.RUNNING, pb.SHUTDOWN, pb.REMOVE]
    now = 1_000 * SECOND
    compared: Counter[str] = Counter()
    for _ in range(300):
        nodes = [node("n1"), node("n2", state=pb.NODE_DOWN), node("n3", availability=pb.DRAIN)]
        svc = service(replicas=rng.randint(0, 4), restart={"condition": pb.RestartPolicy.ANY,
                                                           "max_attempts": rng.randint(0, 2)})
        svc.spec_version = 2
        svc.update_status.state = rng.choice([pb.UpdateStatus.UNKNOWN, pb.UpdateStatus.COMPLETED,
                                              pb.UpdateStatus.UPDATING, pb.UpdateStatus.PAUSED])
        tasks = []
        for i in range(rng.randint(0, 12)):
            task = new_task(svc, now - rng.randint(0, 20) * SECOND, slot=rng.randint(1, 6))
            task.spec_version = rng.choice([1, 2, 2, 2])
            task.id = f"t{i}"
            task.node_id = rng.choice(["", "n1", "n2", "n3", "gone"])
            task.status.state = rng.choice(states)
            task.desired_state = rng.choice(desired)
            task.meta.created_at_ns = task.meta.updated_at_ns = task.status.timestamp_ns
            tasks.append(task)
        snap = Snapshot.of(now, [svc], tasks, nodes)
        keys = {slot_key(t) for t in tasks} | set(range(1, 5))
        for whole, one in CORES:
            want = whole(svc, snap.tasks_of(svc.id), snap)
            parts = [one(svc, key, snap.view.tasks_in_slot(svc.id, key), snap) for key in keys]
            if any(part is None for part in parts):
                assert one is updater.decide_one_slot  # the others always can
                continue
            got = Decision()
            for part in parts:
                got.merge(part)
            compared[whole.__module__] += 1
            assert summary(got) == summary(want), (whole.__module__, tasks)
    assert min(compared.values()) >= 50, compared


def summary(decision: Decision) -> tuple[list[tuple[int, str, int, int]], int | None]:
    """The actions, with new tasks by slot (their IDs are random), and the wake-up."""
    return sorted((kind, obj.id if kind != store_pb2.CREATE else "new", getattr(obj, "slot", 0),
                   getattr(obj, "desired_state", 0)) for kind, obj in decision.actions()), \
        decision.wake_at_ns


def test_running_is_a_change_for_the_updater_only() -> None:
    mgr, _ = make_manager()
    old = pb.Task(id="t", service_id="s", node_id="n1", desired_state=pb.RUNNING)
    old.status.state = pb.STARTING
    new = pb.Task()
    new.CopyFrom(old)
    new.status.state = pb.RUNNING
    event = Event(store_pb2.UPDATE, "task", old, new)
    assert Updater(mgr).relevant(event)
    assert not ReplicatedOrchestrator(mgr).relevant(event)
    new.desired_state = pb.SHUTDOWN  # anything besides the report: a change for all
    assert ReplicatedOrchestrator(mgr).relevant(event)
