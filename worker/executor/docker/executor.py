"""The Docker executor: tasks as containers on a Docker Engine API socket, through docker-py.

docker-py is blocking: every call runs on this executor's own thread pool (so a 10 s stop
never starves the loop's default executor). The engine's container events (events.py) wake
whoever observes a task; observers also re-inspect every `RECHECK` seconds in case events
were missed.

Several lab workers may share one engine: a task's container is found by its task-id label,
and `list_tasks` only returns containers labelled with the asking node's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
from docker.types import Mount

from proto import objects_pb2 as pb
from worker.executor.base import (
    LABEL_NODE_ID,
    LABEL_TASK_ID,
    MISSING,
    ContainerState,
    EngineInfo,
    Executor,
    ExecutorError,
    LogRecord,
    PermanentError,
    TransientError,
)
from worker.executor.docker import container as ct
from worker.executor.docker import errors
from worker.executor.docker import files as fl
from worker.executor.docker import sandbox as sb
from worker.executor.docker.events import ContainerEvents
from worker.files import TaskFiles
from worker.network import NodeNetwork

log = logging.getLogger(__name__)

T = TypeVar("T")
RECHECK = 10.0  # seconds between re-inspections of an observed container
API_TIMEOUT = 60


class DockerExecutor(Executor):
    def __init__(self, engine: str, threads: int = 32, network: NodeNetwork | None = None
                 ) -> None:
        self.engine = engine
        self.network = network
        self._threads = threads
        self._client: docker.APIClient | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._ids: dict[str, str] = {}  # task id → container id
        self._events = ContainerEvents(self._call, self._api)
        self._files: TaskFiles | None = None
        self.files_base = fl.BASE

    # -- plumbing --

    def _api(self) -> docker.APIClient:
        if self._client is None:
            self._client = docker.APIClient(base_url=self.engine, version="auto",
                                            timeout=API_TIMEOUT)
        return self._client

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking docker-py call on the pool; engine errors → ExecutorError, transient
        when the engine could not be reached or answered with a server error (5xx)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="docker")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except Exception as err:
            translated = errors.translate(err, self.engine)
            if translated is None:
                raise
            raise translated from err

    async def close(self) -> None:
        self._events.close()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # -- engine --

    async def describe(self) -> EngineInfo:
        version = await self._call(lambda: self._api().version())
        info = await self._call(lambda: self._api().info())
        labels = dict(item.partition("=")[::2] for item in info.get("Labels") or [])
        return EngineInfo(str(version.get("Version", "")), labels)

    async def engine_info(self) -> dict[str, Any]:
        """The engine's own /info (containers, images, memory...), for the node's /info."""
        return await self._call(lambda: self._api().info())

    async def list_tasks(self, node_id: str) -> dict[str, ContainerState]:
        found = await self._call(lambda: self._api().containers(
            all=True, filters={"label": f"{LABEL_NODE_ID}={node_id}"}))
        states: dict[str, ContainerState] = {}
        for summary in found:
            task_id = (summary.get("Labels") or {}).get(LABEL_TASK_ID)
            if not task_id:
                continue
            self._ids[task_id] = summary["Id"]
            states[task_id] = await self.inspect(task_id)
        return states

    # -- lifecycle of a task's container --

    async def prepare(self, task: pb.Task) -> ContainerState:
        """Create the task's container; what `docker run` does first: create, and only if
        the engine has no such image pull it and create again. A container this task
        already has (a worker restarted) is kept: its name is taken (409)."""
        if task.id in self._ids:
            return await self.inspect(task.id)
        files = await self._place_files(task)
        sandbox = await self._sandbox(task) if task.networks else ""
        try:
            cid = await self._create(task, sandbox, files)
        except ExecutorError as err:
            if errors.status_code(err) == 409 and await self._find(task.id) is not None:
                return await self.inspect(task.id)
            if not isinstance(err.__cause__, docker.errors.ImageNotFound):
                raise
            await self._ensure_image(task.spec.container.image)
            cid = await self._create(task, sandbox, files)
        log.info("task %s: created container %s (image %s)", task.id, cid[:12],
                 task.spec.container.image, extra={"task": task.id, "service": task.service_id})
        return ContainerState(container_id=cid, status="created")

    async def _create(self, task: pb.Task, sandbox: str, files: list[Mount]) -> str:
        if not task.spec.container.image:
            raise PermanentError("the task's container spec names no image")
        params = ct.create_params(task)
        host = ct.host_config_params(task, sandbox, files)

        def create() -> dict[str, Any]:
            api = self._api()
            return dict(api.create_container(host_config=api.create_host_config(**host),
                                             **params))

        cid = str((await self._call(create))["Id"])
        self._ids[task.id] = cid
        return cid

    # -- secrets and configs --

    def use_files(self, files: TaskFiles) -> None:
        self._files = files

    async def _place_files(self, task: pb.Task) -> list[Mount]:
        return await fl.place(self._files, self.files_base, task)

    async def release_files(self, task_id: str) -> None:
        await fl.release(self.files_base, task_id)

    async def prune_files(self, node_id: str, keep: set[str]) -> None:
        await fl.prune(self.files_base, node_id, keep)

    # -- sandboxes (tasks on overlay networks) --

    async def _sandbox(self, task: pb.Task) -> str:
        """Start the task's sandbox and have the data plane plumb it; its container id."""
        if self.network is None:
            raise PermanentError("this node has no network data plane; tasks on overlay "
                                 "networks can't run here")
        sid = await self._find_sandbox(task.id)
        if sid is None:
            await self._ensure_pause_image()
            params = sb.sandbox_params(task)

            def create() -> str:
                api = self._api()
                host = api.create_host_config(**sb.sandbox_host_config(task))
                return str(api.create_container(host_config=host, **params)["Id"])

            sid = await self._call(create)
        info = await self._call(lambda: self._api().inspect_container(sid))
        if not info["State"]["Running"]:
            await self._call(lambda: self._api().start(sid))
            info = await self._call(lambda: self._api().inspect_container(sid))
        pid = int(info["State"]["Pid"])
        try:
            await self.network.attach(task.id, f"/proc/{pid}/ns/net", list(task.networks))
        except Exception as err:  # the data plane's failure, said as the task's error
            raise TransientError(f"plumbing the network of task {task.id} failed: {err}") \
                from err
        return sid

    async def _find_sandbox(self, task_id: str) -> str | None:
        found = await self._call(lambda: self._api().containers(
            all=True, filters={"label": f"{sb.LABEL_SANDBOX}={task_id}"}))
        return str(found[0]["Id"]) if found else None

    async def _ensure_pause_image(self) -> None:
        try:
            await self._call(lambda: self._api().inspect_image(sb.PAUSE_IMAGE))
            return
        except ExecutorError as err:
            if not isinstance(err.__cause__, docker.errors.NotFound):
                raise
        data = sb.pause_image_tar()
        log.info("importing the sandbox image %s", sb.PAUSE_IMAGE)
        await self._call(lambda: self._api().import_image_from_data(
            data, repository=sb.PAUSE_REPO, tag=sb.PAUSE_TAG,
            changes=[f'CMD {json.dumps(sb.PAUSE_CMD)}']))

    async def adopt_network(self, task: pb.Task) -> None:
        if task.networks and await self._find_sandbox(task.id) is not None:
            await self._sandbox(task)

    async def release_network(self, task_id: str) -> None:
        """The task ended: unplumb and remove its sandbox (its address may go to another
        task now)."""
        sid = await self._find_sandbox(task_id)
        if self.network is not None:
            await self.network.detach(task_id)
        if sid is not None:
            try:
                await self._call(lambda: self._api().remove_container(sid, force=True))
            except ExecutorError as err:
                if not isinstance(err.__cause__, docker.errors.NotFound):
                    raise

    async def _ensure_image(self, ref: str) -> None:
        if not ref:
            raise PermanentError("the task's container spec names no image")
        try:
            await self._call(lambda: self._api().inspect_image(ref))
            return
        except ExecutorError as err:
            if not isinstance(err.__cause__, docker.errors.NotFound):
                raise
        repo, tag = ct.split_image(ref)
        log.info("pulling image %s", ref)

        def pull() -> str:
            last_error = ""
            for item in self._api().pull(repo, tag=tag, stream=True, decode=True):
                last_error = item.get("error") or last_error
            return last_error

        # An image the engine can't get is the task's problem, as in swarmkit (rejected, and
        # the orchestrator's restart policy tries again), unless the engine itself is away.
        failed = f"image {ref} is not on this node and pulling it failed"
        try:
            error = await self._call(pull)
        except ExecutorError as err:
            if errors.engine_unreachable(err):
                raise
            raise PermanentError(f"{failed}: {err}") from err
        try:
            await self._call(lambda: self._api().inspect_image(ref))
        except ExecutorError as err:
            if errors.engine_unreachable(err):
                raise
            raise PermanentError(f"{failed}: {error or err}") from err

    async def start(self, task_id: str) -> None:
        cid = await self._require(task_id)
        self._events.follow()
        await self._call(lambda: self._api().start(cid))

    async def inspect(self, task_id: str) -> ContainerState:
        cid = await self._find(task_id)
        if cid is None:
            return MISSING
        try:
            info = await self._call(lambda: self._api().inspect_container(cid))
        except ExecutorError as err:
            if isinstance(err.__cause__, docker.errors.NotFound):
                self._ids.pop(task_id, None)
                return MISSING
            raise
        return ct.state_of(info)

    async def observe(self, task_id: str, last: ContainerState) -> ContainerState:
        self._events.follow()
        while True:
            waiter = self._events.waiter(task_id)
            try:
                state = await self.inspect(task_id)
                if state != last:
                    return state
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter, RECHECK)
            finally:
                self._events.forget(task_id, waiter)

    async def shutdown(self, task_id: str, grace: float) -> None:
        cid = await self._find(task_id)
        if cid is None:
            return
        seconds = max(0, round(grace))
        try:
            await self._call(lambda: self._api().stop(cid, timeout=seconds))
        except ExecutorError as err:
            if not isinstance(err.__cause__, docker.errors.NotFound):
                raise

    async def remove(self, task_id: str) -> None:
        cid = await self._find(task_id)
        if cid is None:
            await self.release_network(task_id)
            await fl.release(self.files_base, task_id)
            return
        try:
            await self._call(lambda: self._api().remove_container(cid, v=True, force=True))
        except ExecutorError as err:
            cause = err.__cause__
            if not isinstance(cause, docker.errors.NotFound) and "in progress" not in str(err):
                raise
        self._ids.pop(task_id, None)
        await self.release_network(task_id)
        await fl.release(self.files_base, task_id)

    # -- logs --

    async def logs(self, task_id: str, follow: bool = False, tail: int = -1,
                   timestamps: bool = False) -> AsyncIterator[LogRecord]:
        cid = await self._require(task_id)
        response, frames = await self._call(self._open_logs, cid, follow, tail)
        splitter = ct.LineSplitter()
        try:
            while True:
                frame = await self._call(next, frames, None)
                if frame is None:
                    break
                stream, data = frame
                for line in splitter.feed(stream, data):
                    stamp, text = ct.split_log_line(line)
                    yield stamp, stream, text
            for stream, data in splitter.rest():
                stamp, text = ct.split_log_line(data)
                yield stamp, stream, text
        finally:
            response.close()

    def _open_logs(self, cid: str, follow: bool, tail: int) -> tuple[Any, Iterator[ct.Frame]]:
        """The log stream, framed by stream (docker-py's logs() drops which stream)."""
        api = self._api()
        tty = bool(api.inspect_container(cid)["Config"].get("Tty"))
        params = {"stdout": 1, "stderr": 1, "timestamps": 1, "follow": int(follow),
                  "tail": "all" if tail < 0 else str(tail)}
        response = api._get(api._url("/containers/{0}/logs", cid), params=params, stream=True)
        api._raise_for_status(response)
        if follow:  # quiet for a minute is not an error
            api._disable_socket_timeout(api._get_raw_response_socket(response))
        return response, ct.frames(response.raw, tty)

    # -- containers outside services (network connect) --

    async def container_netns(self, ref: str) -> tuple[str, str] | None:
        """A running container's full ID and network namespace path; None when the engine
        has no such container or it is not running."""
        try:
            info = await self._call(lambda: self._api().inspect_container(ref))
        except ExecutorError as err:
            if isinstance(err.__cause__, docker.errors.NotFound):
                return None
            raise
        pid = int(info.get("State", {}).get("Pid") or 0)
        if not info.get("State", {}).get("Running") or not pid:
            return None
        return str(info["Id"]), f"/proc/{pid}/ns/net"

    # -- finding containers --

    async def _find(self, task_id: str) -> str | None:
        cid = self._ids.get(task_id)
        if cid is not None:
            return cid
        found = await self._call(lambda: self._api().containers(
            all=True, filters={"label": f"{LABEL_TASK_ID}={task_id}"}))
        if not found:
            return None
        self._ids[task_id] = found[0]["Id"]
        return str(found[0]["Id"])

    async def _require(self, task_id: str) -> str:
        cid = await self._find(task_id)
        if cid is None:
            raise PermanentError(f"no container for task {task_id}; prepare it first")
        return cid
