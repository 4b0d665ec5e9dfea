"""Limits on what the control API stores: pure checks that refuse (InvalidArgument, a 400 at
the HTTP API) any spec that could break the leader, the store or a node's session once
accepted. They run in the manager's decisions (create and update of services, node and swarm
updates), so every path that writes a spec goes through them.

Docker sets few of these limits; ours exist because an accepted object is kept, replicated
through Raft and sent to nodes for ever after: `--replicas 9223372036854775808` made the
leader build tasks until it ran out of memory, and a 10 MB spec made every assignment message
of its nodes exceed gRPC's limit, which ended their sessions.

The size arithmetic, with MAX_SPEC_BYTES = 128 KiB:
- A task carries its service's task template and endpoint (less than the spec), so a task
  is at most about MAX_SPEC_BYTES + 1 KiB (ids, status, meta).
- The orchestrators write tasks in Raft batches of at most 200 actions
  (manager.orchestrator.controller.MAX_ACTIONS): at most ~26 MiB per Raft entry,
  which pysyncobj and the journal carry (it sends entries whole).
- A node's assignment message carries every task of the node (running ones and the retained
  history, task_history_retention_limit per slot). The nodes' gRPC receive limit (256 MiB,
  pki/grpc_tls.py channel_options; gRPC's default of 4 MiB broke sessions) carries ~1,900
  max-size tasks per node, beyond what a node runs; with ordinary specs (a few KiB),
  hundreds of thousands.
- The HTTP body limit (MAX_REQUEST_BYTES) is far above a valid spec's JSON, so a refused
  spec gets this module's message (the limit and what to do), not a transport error.
"""

from __future__ import annotations

from collections.abc import Iterable

from manager.errors import InvalidArgument
from proto import objects_pb2 as pb

KIB = 1024
MAX_SPEC_BYTES = 128 * KIB
MAX_NODE_SPEC_BYTES = 64 * KIB
MAX_CLUSTER_SPEC_BYTES = 64 * KIB
MAX_REQUEST_BYTES = 4 * 1024 * KIB  # HTTP request body (JSON), checked before parsing

# Task counts: the orchestrator keeps one task object per replica (and per slot's history),
# so the count, not the spec, bounds the leader's memory. 100,000 tasks of a few KiB each is
# hundreds of MiB in the store of every manager.
MAX_REPLICAS = 100_000
MAX_JOB_COMPLETIONS = 1_000_000  # run at most MaxConcurrent at a time, reaped as they finish
MAX_CONSTRAINTS = 100  # evaluated per node for every task the scheduler places
MAX_PREFERENCES = 10
MAX_PLATFORMS = 100

MAX_PORT = 65535
MAX_DURATION_NS = 365 * 24 * 3600 * 1_000_000_000  # one year
MAX_NANO_CPUS = 100_000 * 1_000_000_000  # 100,000 CPUs: no node has more
MAX_MEMORY_BYTES = 1 << 50  # 1 PiB: no node has more
MAX_TMPFS_MODE = 0o7777
MAX_HEALTH_RETRIES = 1_000_000

# Cluster settings that make the managers busy or lock nodes out when absurd.
MIN_HEARTBEAT_NS = 100_000_000  # 100 ms: every node heartbeats this often
MAX_HEARTBEAT_NS = 24 * 3600 * 1_000_000_000  # a day: nodes are marked down after ~3 periods
# Swarmkit's floor is an hour; ours is the CA's 30 s so tests can watch renewals happen.
MIN_CERT_EXPIRY_NS = 30 * 1_000_000_000
MAX_CERT_EXPIRY_NS = 10 * 365 * 24 * 3600 * 1_000_000_000  # ten years
MAX_TASK_HISTORY = 10_000  # finished tasks kept per slot


def _too_big(what: str, size: int, limit: int, advice: str) -> InvalidArgument:
    return InvalidArgument(f"{what} is too large: {size} bytes serialized, the limit is "
                           f"{limit} bytes ({limit // KIB} KiB); {advice}")


def _at_most(what: str, value: int, limit: int, advice: str = "") -> None:
    if value > limit:
        raise InvalidArgument(f"invalid {what} {value}: the limit is {limit}"
                              + (f"; {advice}" if advice else ""))


def _in_range(what: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgument(f"invalid {what} {value}: must be between {low} and {high}")


def _duration(what: str, ns: int) -> None:
    _in_range(f"{what} (ns)", ns, 0, MAX_DURATION_NS)


def check_service_spec(spec: pb.ServiceSpec) -> None:
    """Raise InvalidArgument if the spec exceeds a limit (size first: it bounds the rest)."""
    size = spec.ByteSize()
    if size > MAX_SPEC_BYTES:
        raise _too_big(f"the spec of service {spec.annotations.name or '(unnamed)'}", size,
                       MAX_SPEC_BYTES, "keep large data (environment, configuration files) "
                       "out of the spec: mount it from a volume or bind mount instead")
    _check_mode(spec)
    _check_task(spec.task)
    for what, u in (("UpdateConfig", spec.update), ("RollbackConfig", spec.rollback)):
        _at_most(f"{what}.Parallelism", u.parallelism, MAX_REPLICAS)
        _duration(f"{what}.Delay", u.delay_ns)
        _duration(f"{what}.Monitor", u.monitor.ns)
    for p in spec.endpoint.ports:
        # 0 (missing) has its own message in validate_spec
        _in_range("EndpointSpec target port", p.target_port, 0, MAX_PORT)
        _in_range("EndpointSpec published port", p.published_port, 0, MAX_PORT)


def _check_mode(spec: pb.ServiceSpec) -> None:
    mode = spec.WhichOneof("mode")
    if mode == "replicated":
        _at_most("Replicas", spec.replicated.replicas, MAX_REPLICAS,
                 "Shoal runs at most that many tasks per service; split the work over "
                 "several services")
    elif mode == "replicated_job":
        job = spec.replicated_job
        _at_most("ReplicatedJob.MaxConcurrent", job.max_concurrent, MAX_REPLICAS,
                 "at most that many tasks of a job run at a time")
        _at_most("ReplicatedJob.TotalCompletions", job.total_completions, MAX_JOB_COMPLETIONS,
                 "split the job into several jobs")


def _check_task(task: pb.TaskSpec) -> None:
    c = task.container
    _duration("StopGracePeriod", c.stop_grace_period.ns)
    h = c.healthcheck
    for name, ns in (("Healthcheck.Interval", h.interval_ns), ("Healthcheck.Timeout",
                     h.timeout_ns), ("Healthcheck.StartPeriod", h.start_period_ns)):
        _duration(name, ns)
    _in_range("Healthcheck.Retries", h.retries, 0, MAX_HEALTH_RETRIES)
    for m in c.mounts:
        _in_range(f"tmpfs size of mount {m.target} (bytes)", m.tmpfs_size_bytes, 0,
                  MAX_MEMORY_BYTES)
        _in_range(f"tmpfs mode of mount {m.target}", m.tmpfs_mode, 0, MAX_TMPFS_MODE)
    for what, res in (("Limits", task.resources.limits),
                      ("Reservations", task.resources.reservations)):
        _in_range(f"Resources.{what}.NanoCPUs", res.nano_cpus, 0, MAX_NANO_CPUS)
        _in_range(f"Resources.{what}.MemoryBytes", res.memory_bytes, 0, MAX_MEMORY_BYTES)
    _duration("RestartPolicy.Delay", task.restart.delay.ns)
    _duration("RestartPolicy.Window", task.restart.window.ns)
    p = task.placement
    _at_most("Placement.MaxReplicas", p.max_replicas, MAX_REPLICAS)
    _count("placement constraints", p.constraints, MAX_CONSTRAINTS)
    _count("placement preferences", p.preferences, MAX_PREFERENCES)
    _count("placement platforms", p.platforms, MAX_PLATFORMS)


def _count(what: str, items: Iterable[object], limit: int) -> None:
    n = len(list(items))
    if n > limit:
        raise InvalidArgument(f"too many {what}: {n}, the limit is {limit}")


def check_node_spec(spec: pb.NodeSpec) -> None:
    size = spec.ByteSize()
    if size > MAX_NODE_SPEC_BYTES:
        raise _too_big(f"the spec of node {spec.annotations.name or '(unnamed)'}", size,
                       MAX_NODE_SPEC_BYTES, "use fewer or shorter node labels")


def check_cluster_spec(spec: pb.ClusterSpec) -> None:
    """Zero means the default for each setting (as Docker's), so it is always accepted."""
    size = spec.ByteSize()
    if size > MAX_CLUSTER_SPEC_BYTES:
        raise _too_big("the swarm spec", size, MAX_CLUSTER_SPEC_BYTES,
                       "use fewer or shorter swarm labels")
    heartbeat = spec.dispatcher.heartbeat_period_ns
    if heartbeat:
        _in_range("Dispatcher.HeartbeatPeriod (ns)", heartbeat, MIN_HEARTBEAT_NS,
                  MAX_HEARTBEAT_NS)
    expiry = spec.ca_config.node_cert_expiry_ns
    if expiry:
        _in_range("CAConfig.NodeCertExpiry (ns)", expiry, MIN_CERT_EXPIRY_NS,
                  MAX_CERT_EXPIRY_NS)
    _in_range("Orchestration.TaskHistoryRetentionLimit",
              spec.orchestration.task_history_retention_limit, 0, MAX_TASK_HISTORY)
