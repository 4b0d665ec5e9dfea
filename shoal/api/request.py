"""Reading Docker-style requests: JSON keys match case-insensitively (as Go's encoding/json
does); unknown keys and wrong types are refused with a 400 that names them."""

from __future__ import annotations

import json
from typing import Any

from shoal.errors import InvalidRequest

_TRUE_FALSE = {"", "0", "no", "false", "none"}


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as err:
        raise InvalidRequest(f"malformed JSON in the request body: {err}") from err


def fields(body: Any, allowed: dict[str, type | tuple[type, ...]], where: str) -> dict[str, Any]:
    """Return `body`'s fields under their canonical names; refuse unknown ones and bad types."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidRequest(f"{where}: expected a JSON object, got {type(body).__name__}")
    canonical = {k.lower(): k for k in allowed}
    out: dict[str, Any] = {}
    for key, value in body.items():
        name = canonical.get(key.lower())
        if name is None:
            raise InvalidRequest(f'{where}: unknown field "{key}"')
        if value is None:
            continue
        expected = allowed[name]
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
            raise InvalidRequest(f'{where}: field "{name}" has the wrong type '
                                 f"({type(value).__name__})")
        out[name] = value
    return out


# What each protobuf integer type holds, for JSON numbers (unbounded in Python).
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
              "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1)}


def check_int(value: int, kind: str, where: str) -> None:
    """Refuse a number the field can't hold, in the words dockerd (Go's JSON decoder) uses."""
    low, high = INT_RANGES[kind]
    if not low <= value <= high:
        raise InvalidRequest(f"json: cannot unmarshal number {value} into {where} of type "
                             f"{kind} (out of range {low} to {high})")


def bool_param(value: str | None) -> bool:
    """moby's httputils.BoolValue: '', 0, no, false, none (any case) are false."""
    return value is not None and value.strip().lower() not in _TRUE_FALSE


def int_param(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError as err:
        raise InvalidRequest(f"invalid {name} {value!r}: expected an integer") from err
    if not 0 <= number < 2**63:  # a version index (uint64 in the store); never beyond int64
        raise InvalidRequest(f"invalid {name} {value!r}: must be between 0 and {2**63 - 1}")
    return number


def filters_param(value: str | None) -> dict[str, list[str]]:
    """Docker filters: {"key":{"v":true}} (CLI) or {"key":["v"]} (docker-py)."""
    if not value:
        return {}
    try:
        raw = json.loads(value)
    except ValueError as err:
        raise InvalidRequest(f"invalid filters {value!r}: {err}") from err
    if not isinstance(raw, dict):
        raise InvalidRequest("invalid filters: expected a JSON object")
    out: dict[str, list[str]] = {}
    for key, vals in raw.items():
        if isinstance(vals, dict):
            out[key] = [k for k, v in vals.items() if v]
        elif isinstance(vals, list):
            out[key] = [str(v) for v in vals]
        else:
            raise InvalidRequest(f"invalid filters: values of {key!r} must be a map or a list")
    return out
