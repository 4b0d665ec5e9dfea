"""`shoal secret ...` and `shoal config ...`: create, ls, inspect, rm (Docker's names, flags
and output). The two share everything but their name, path and columns."""

from __future__ import annotations

import base64
import sys
import time
from urllib.parse import quote

import click

from shoal.cli.output import (
    CommandFailed,
    human_duration,
    inspect_each,
    parse_filters,
    pass_client,
    print_table,
    remove_each,
)
from shoal.cli.service_show import parse_time
from shoal.client import Client


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        key, _, val = value.partition("=")
        if not key:
            raise click.BadParameter(f"invalid {value!r}: expected KEY=VALUE",
                                     param_hint="'--label'")
        out[key] = val
    return out


def _ago(text: str, now: float) -> str:
    at = parse_time(text)
    return "" if at is None else f"{human_duration(max(0.0, now - at))} ago"


def make_group(kind: str) -> click.Group:
    plural = f"/{kind}s"
    secret = kind == "secret"

    @click.group(name=kind, help=f"Manage swarm {kind}s.")
    def group() -> None:
        pass

    def path(ref: str) -> str:
        return f"{plural}/{quote(ref, safe='')}"

    @group.command(help=f"Create a {kind} from a file or STDIN (-) as content.")
    @click.option("-l", "--label", "labels", multiple=True, metavar="KEY=VALUE",
                  help=f"{kind.capitalize()} labels.")
    @click.argument("name")
    @click.argument("file", metavar="FILE|-")
    @pass_client
    def create(client: Client, labels: tuple[str, ...], name: str, file: str) -> None:
        if file == "-":
            data = sys.stdin.buffer.read()
        else:
            try:
                with open(file, "rb") as f:
                    data = f.read()
            except OSError as err:
                raise CommandFailed(f"error reading content from {file!r}: {err}") from None
        body = {"Name": name, "Labels": _labels(labels),
                "Data": base64.b64encode(data).decode()}
        click.echo((client.post(f"{plural}/create", body) or {}).get("ID", ""))

    @group.command("ls", help=f"List {kind}s.")
    @click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
                  help="Filter output (id, name, label).")
    @click.option("-q", "--quiet", is_flag=True, help="Only display IDs.")
    @pass_client
    def ls(client: Client, filters: tuple[str, ...], quiet: bool) -> None:
        params = {"filters": parse_filters(filters)} if filters else {}
        found = client.get(plural, **params) or []
        if quiet:
            for obj in found:
                click.echo(obj["ID"])
            return
        now = time.time()
        headers = ("ID", "NAME", "DRIVER", "CREATED", "UPDATED") if secret else \
            ("ID", "NAME", "CREATED", "UPDATED")
        rows = []
        for obj in found:
            driver = [(obj["Spec"].get("Driver") or {}).get("Name", "")] if secret else []
            rows.append([obj["ID"], obj["Spec"]["Name"], *driver,
                         _ago(obj["CreatedAt"], now), _ago(obj["UpdatedAt"], now)])
        print_table(headers, rows)

    @group.command(help=f"Display detailed information on one or more {kind}s.")
    @click.argument("refs", nargs=-1, required=True, metavar=f"{kind.upper()}...")
    @pass_client
    def inspect(client: Client, refs: tuple[str, ...]) -> None:
        inspect_each(client, [path(ref) for ref in refs])

    @group.command("rm", help=f"Remove one or more {kind}s.")
    @click.argument("refs", nargs=-1, required=True, metavar=f"{kind.upper()}...")
    @pass_client
    def rm(client: Client, refs: tuple[str, ...]) -> None:
        remove_each(client, {ref: path(ref) for ref in refs})

    return group


secret = make_group("secret")
config = make_group("config")
