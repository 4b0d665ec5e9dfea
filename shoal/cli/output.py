"""Shared helpers for `shoal` commands: presentation (tables, JSON, durations, IDs) and the
argument types and errors every command group uses.

Reusable by any command module under shoal/cli/ (e.g. `service ls`, `service ps`):
- `pass_client`            decorator giving a command the root group's `Client`
- `CommandFailed`          a client-side error: printed as-is to stderr, exit status 1
- `describe_api_error`     APIError -> "Error response from daemon: <message>"
- `format_table`/`print_table`  Docker-style aligned tables (tabwriter minwidth 10, padding 3)
- `print_json`             one indented JSON document on stdout
- `pretty`                 "ready" -> "Ready" (Docker's PrettyPrint of enum values)
- `truncate_id`            12-character IDs as Docker's non-`--no-trunc` listings
- `natural_key`            sort key like Docker's natural sort ("node2" < "node10")
- `parse_filters`          ("role=manager", ...) -> {"role": {"manager": true}}
- `DURATION`               click type: Go duration string -> int nanoseconds
- `parse_duration`, `format_duration` (Go syntax), `human_duration` ("About a minute")
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import IO, Any

import click

from shoal.client import APIError, Client

pass_client = click.make_pass_decorator(Client)


class CommandFailed(click.ClickException):
    """An error the CLI reports itself; shown like Docker's: the bare message, exit 1."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.format_message(), err=True)


def describe_api_error(exc: APIError) -> str:
    """How the CLI shows a failed request: Docker's "Error response from daemon: <message>",
    or the bare message when the daemon was never reached (status 0)."""
    if exc.status == 0:
        return exc.message
    return f"Error response from daemon: {exc.message}"


# ---------------------------------------------------------------- tables and JSON


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]],
                 min_width: int = 10, padding: int = 3) -> str:
    """Align columns like Go's tabwriter as Docker configures it; the last column is not
    padded, so lines carry no trailing blanks."""
    lines = [list(headers)] + [list(row) for row in rows]
    ncols = max(len(line) for line in lines)
    widths = [0] * ncols
    for line in lines:
        for i, cell in enumerate(line[:-1]):
            widths[i] = max(widths[i], len(cell) + padding, min_width)
    out = []
    for line in lines:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(line[:-1])]
        out.append(("".join(cells) + (line[-1] if line else "")).rstrip())
    return "\n".join(out)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    click.echo(format_table(headers, rows))


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=4))


def pretty(value: str | None) -> str:
    """Docker's PrettyPrint for enum strings: first letter upper-cased."""
    if not value:
        return ""
    return value[0].upper() + value[1:]


def truncate_id(object_id: str, length: int = 12) -> str:
    return object_id[:length]


def natural_key(text: str) -> list[Any]:
    """Sort key comparing runs of digits as numbers: "node2" before "node10"."""
    parts = re.split(r"(\d+)", text)
    return [(0, int(p), p) if p.isdigit() else (1, p, p) for p in parts if p != ""]


def parse_filters(values: Iterable[str]) -> dict[str, dict[str, bool]]:
    """Turn repeated `-f key=value` flags into the Engine API's map form."""
    filters: dict[str, dict[str, bool]] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"bad format of filter (expected name=value): {value!r}",
                                     param_hint="'--filter'")
        filters.setdefault(key.strip().lower(), {})[val] = True
    return filters


# ---------------------------------------------------------------- durations

_UNITS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_COMPONENT = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]+)")
_MAX_NS = 2**63 - 1


def parse_duration(text: str) -> int:
    """Parse a Go duration ("90s", "1m30s", "2160h", "500ms", "1.5h") into nanoseconds."""
    s = text.strip()
    sign = 1
    if s.startswith(("-", "+")):
        sign, s = (-1 if s[0] == "-" else 1), s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = Fraction(0)
    pos = 0
    while pos < len(s):
        match = _COMPONENT.match(s, pos)
        if not match or (not match.group(1) and not match.group(2)):
            raise ValueError(f"invalid duration {text!r}")
        whole, frac, unit = match.groups()
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {unit!r} in duration {text!r}")
        value = Fraction(int(whole or "0"))
        if frac:
            value += Fraction(int(frac), 10 ** len(frac))
        total += value * _UNITS[unit]
        pos = match.end()
    if total > _MAX_NS:
        raise ValueError(f"invalid duration {text!r}: out of range")
    return sign * int(total)


def _decimal(value: int, size: int) -> str:
    whole, rest = divmod(value, size)
    if not rest:
        return str(whole)
    digits = str(rest).rjust(len(str(size)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def format_duration(ns: int) -> str:
    """Format nanoseconds as Go's Duration.String does: "1h0m0s", "1m30s", "500ms"."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        unit, size = "ns", 1
        if ns >= 1_000_000:
            unit, size = "ms", 1_000_000
        elif ns >= 1_000:
            unit, size = "\u00b5s", 1_000
        return f"{sign}{_decimal(ns, size)}{unit}"
    hours, rest = divmod(ns, _UNITS["h"])
    minutes, rest = divmod(rest, _UNITS["m"])
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{sign}{out}{_decimal(rest, _UNITS['s'])}s"


def human_duration(seconds: float) -> str:
    """Approximate, human-friendly duration as Docker shows in "Running 5 minutes ago"."""
    secs = int(seconds)
    if secs < 1:
        return "Less than a second"
    if secs == 1:
        return "1 second"
    if secs < 60:
        return f"{secs} seconds"
    minutes = secs // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


class DurationType(click.ParamType):
    """A Go duration flag; converts to int nanoseconds, or fails as a usage error."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(f"{exc} (use e.g. 90s, 1m30s, 2160h, 500ms)", param, ctx)


DURATION = DurationType()


def remove_each(client: Any, paths: dict[str, str]) -> None:
    """`rm` of several objects (reference -> API path): print each reference removed, then
    fail with the reason of each one that was not (Docker's behaviour)."""
    errors = []
    for ref, path in paths.items():
        try:
            client.delete(path)
            click.echo(ref)
        except APIError as exc:
            errors.append(describe_api_error(exc))
    if errors:
        raise CommandFailed("\n".join(errors))


def inspect_each(client: Any, paths: Sequence[str]) -> None:
    """`inspect` of several objects: print those found as one JSON list, then fail naming
    the ones that are not (Docker's behaviour)."""
    found: list[Any] = []
    missing: list[str] = []
    for path in paths:
        try:
            found.append(client.get(path))
        except APIError as exc:
            if exc.status != 404:
                raise
            missing.append(describe_api_error(exc))
    print_json(found)
    if missing:
        raise CommandFailed("\n".join(missing))
