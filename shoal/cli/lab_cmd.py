"""`shoal lab ...`: several Shoal hosts on this machine, as network namespaces (shoal/lab.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from shoal import lab as labmod

F = TypeVar("F", bound=Callable[..., Any])

NAME_OPTION = click.option("--name", "name", required=True,
                           help="Lab name: 1 to 8 characters from a-z and 0-9.")


def _lab_errors(func: F) -> F:
    """Turn a LabError into a message on stderr and exit status 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except labmod.LabError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


@click.group("lab")
def lab() -> None:
    """Run several Shoal hosts on this machine, each a network namespace with its shoald."""


@lab.command("up")
@NAME_OPTION
@click.option("--managers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--engine", metavar="unix:///PATH", default=None,
              help="A running Docker engine for the hosts (default: the lab starts its own "
                   "dockerd under its state directory).")
@_lab_errors
def up_cmd(name: str, managers: int, workers: int, engine: str | None) -> None:
    """Create the hosts, start their daemons and form a swarm."""
    state = labmod.up(name, managers, workers, engine=engine)
    click.echo(f"lab {name} is up: {len(state.hosts)} hosts on {state.subnet}, "
               f"engine {state.engine}")
    _print_table(state)


@lab.command("status")
@NAME_OPTION
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@_lab_errors
def status_cmd(name: str, fmt: str) -> None:
    """Show the lab's hosts: role, address, namespace, API socket, daemon PID and liveness."""
    state = labmod.status(name)
    if fmt == "json":
        doc = state.to_dict()
        for host, data in zip(state.hosts, doc["hosts"], strict=True):
            data["api"] = host.api
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_table(state)


@lab.command("exec", context_settings={"ignore_unknown_options": True,
                                       "allow_interspersed_args": False})
@NAME_OPTION
@click.argument("host")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@_lab_errors
def exec_cmd(name: str, host: str, cmd: tuple[str, ...]) -> None:
    """Run CMD inside HOST's network namespace; exits with CMD's status."""
    argv = list(cmd[1:] if cmd[:1] == ("--",) else cmd)
    if not argv:
        raise click.UsageError("no command given: shoal lab exec --name NAME HOST -- CMD...")
    try:
        proc = labmod.exec_in(name, host, argv)
    except OSError as exc:
        raise click.ClickException(f"cannot run {argv[0]!r} in {name}/{host}: {exc}") from exc
    sys.exit(proc.returncode)


@lab.command("down")
@NAME_OPTION
@_lab_errors
def down_cmd(name: str) -> None:
    """Stop the lab's daemons, delete its namespaces and its state directory."""
    labmod.down(name)
    click.echo(f"lab {name} removed")


def _print_table(state: labmod.LabState) -> None:
    header = ("HOST", "ROLE", "ADDRESS", "PID", "ALIVE", "NAMESPACE", "API")
    rows = [header] + [
        (h.name, h.role, h.address, str(h.pid or "-"), "yes" if h.alive else "no",
         h.namespace, h.api)
        for h in state.hosts
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join(cells + [row[-1]]))
