"""A task's secrets and configs on the host: one tmpfs per task, outside the data root
(`<base>/<node id>/<task id>`, so nodes sharing a host never meet), a file per secret or
config with its uid, gid and mode, each bind-mounted read-only at its target in the
container. The tmpfs is unmounted and removed with the task's container: the data never
touches a disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence

from docker.types import Mount

from proto import objects_pb2 as pb
from worker.executor.base import PermanentError
from worker.files import MissingFile, TaskFile, TaskFiles

log = logging.getLogger(__name__)

BASE = "/run/shoal-files"
SLACK = 64 * 1024  # the tmpfs holds the files and its own bookkeeping


def task_dir(base: str, node_id: str, task_id: str) -> str:
    return os.path.join(base, node_id, task_id)


def mount_files(directory: str, files: Sequence[TaskFile]) -> list[Mount]:
    """Mount a fresh tmpfs at `directory`, write the files, and return the container's
    read-only bind mounts. Blocking: run in a thread."""
    unmount_files(directory)  # what a crash between mount and create may have left
    os.makedirs(directory, mode=0o700)
    size = sum(len(f.data) for f in files) + SLACK + 4096 * len(files)
    # exec allowed: a config with mode 0755 is often a script the task runs
    _run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700,nodev,nosuid",
          "shoal-files", directory])
    mounts = []
    for i, f in enumerate(files):
        path = os.path.join(directory, str(i))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, f.data)
            os.fchown(fd, f.uid, f.gid)
            os.fchmod(fd, f.mode)
        finally:
            os.close(fd)
        mounts.append(Mount(target=f.path, source=path, type="bind", read_only=True))
    return mounts


def unmount_files(directory: str) -> None:
    """Unmount and remove the task's tmpfs, if there is one. Blocking."""
    if not os.path.isdir(directory):
        return
    if os.path.ismount(directory):
        _run(["umount", "-l", directory])
    shutil.rmtree(directory, ignore_errors=True)
    parent = os.path.dirname(directory)
    try:
        os.rmdir(parent)  # the node's directory, once it holds no task's
    except OSError:
        pass


def find_task_dir(base: str, task_id: str) -> str | None:
    """The task's directory under any node's (a restarted worker forgot where)."""
    try:
        nodes = os.listdir(base)
    except FileNotFoundError:
        return None
    for node in nodes:
        candidate = os.path.join(base, node, task_id)
        if os.path.isdir(candidate):
            return candidate
    return None


def prune_node(base: str, node_id: str, keep: set[str] | None = None) -> None:
    """Unmount and remove the node's task directories but those of `keep` (all when None).
    Blocking."""
    node_dir = os.path.join(base, node_id)
    try:
        tasks = os.listdir(node_dir)
    except FileNotFoundError:
        return
    for task_id in tasks:
        if keep is None or task_id not in keep:
            unmount_files(os.path.join(node_dir, task_id))


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"{' '.join(argv[:3])} ... failed: {done.stderr.strip()}")


# -- for the executor: off the event loop, failures said as the task's or logged --

async def place(files: TaskFiles | None, base: str, task: pb.Task) -> list[Mount]:
    """The task's secrets and configs on a tmpfs of its own; their bind mounts ([] when it
    has none). PermanentError when one is missing or the tmpfs can't be made."""
    container = task.spec.container
    if not container.secrets and not container.configs:
        return []
    try:
        wanted = (files or TaskFiles()).for_task(task)
    except MissingFile as err:
        raise PermanentError(str(err)) from None
    directory = task_dir(base, task.node_id, task.id)
    try:
        return await asyncio.to_thread(mount_files, directory, wanted)
    except OSError as err:
        await asyncio.to_thread(unmount_files, directory)
        raise PermanentError(f"placing the task's secrets and configs failed: {err}") \
            from None


async def release(base: str, task_id: str) -> None:
    directory = await asyncio.to_thread(find_task_dir, base, task_id)
    if directory is not None:
        try:
            await asyncio.to_thread(unmount_files, directory)
        except OSError as err:
            log.warning("task %s: removing its secrets' tmpfs failed: %s", task_id, err,
                        extra={"task": task_id})


async def prune(base: str, node_id: str, keep: set[str]) -> None:
    try:
        await asyncio.to_thread(prune_node, base, node_id, keep)
    except OSError as err:
        log.warning("removing secrets' tmpfs of finished tasks failed: %s", err)
