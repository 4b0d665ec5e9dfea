"""`shoald --restore FILE`: the checks made before anything is written, and the request.

A restore starts a new one-manager cluster on a fresh host, so it refuses a data root that
holds anything (it would mix two swarms' files, or overwrite the one there), a backup that is
damaged, truncated or foreign, and a sealed backup without the right unlock key. Every
refusal names what to do instead; nothing is written before all checks pass.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable

from manager import backup
from pki import sealing
from shoal.newcluster import RestoreRequest


class RestoreRefused(Exception):
    """Why shoald will not restore (printed as is; shoald exits 1)."""


def data_root_problem(data_root: str) -> str | None:
    """Why `data_root` is not fit for a restore (None: it is empty or absent)."""
    try:
        entries = sorted(os.listdir(data_root))
    except FileNotFoundError:
        return None
    if not entries:
        return None
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    return (f"the data root {data_root} is not empty ({shown}): a restore starts a new "
            "swarm on a fresh host and overwrites nothing. Restore into an empty data root "
            "(--data-root), or move this one aside first")


def open_backup(path: str, unlock_key: str | None,
                prompt: Callable[[], str] | None = None) -> bytes:
    """The StoreSnapshot of the backup at `path`, checked and opened. A sealed backup
    without `unlock_key` asks `prompt` for it when one is given (a terminal)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise RestoreRefused(f"cannot read the backup {path}: {err.strerror}") from None
    try:
        header, payload = backup.decode(data)
        if header.sealed and not unlock_key and prompt is not None:
            unlock_key = prompt()
        if header.sealed and not unlock_key:
            raise RestoreRefused(f"{path}: the backup is encrypted (autolock was on when it "
                                 "was taken): give its unlock key with --unlock-key")
        return backup.open_payload(header, payload, unlock_key)
    except backup.BackupInvalid as err:
        raise RestoreRefused(f"{path}: {err}") from None
    except sealing.WrongKey as err:
        raise RestoreRefused(f"{path}: the backup could not be opened: invalid unlock key "
                             f"({err}); give the unlock key the swarm had when the backup "
                             "was taken (`docker swarm unlock-key -q` showed it)") from None


def terminal_prompt() -> Callable[[], str] | None:
    """Ask for the unlock key on the terminal, as `docker swarm unlock` does (None: no tty)."""
    if not sys.stdin.isatty():
        return None
    return lambda: getpass.getpass("Enter the unlock key of the backup: ")


def prepare(path: str, data_root: str, unlock_key: str | None,
            addrs: tuple[str, str, int]) -> RestoreRequest:
    """Everything checked, nothing written: the request for `Node.restore`."""
    problem = data_root_problem(data_root)
    if problem is not None:
        raise RestoreRefused(problem)
    snapshot = open_backup(path, unlock_key, terminal_prompt())
    advertise_ip, listen_ip, port = addrs
    return RestoreRequest(snapshot, advertise_ip, listen_ip, port)
