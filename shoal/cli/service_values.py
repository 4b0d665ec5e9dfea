"""One value of a `shoal service create` / `update` flag → its Engine API JSON, as the docker
CLI reads it: sizes (64M), CPUs (0.5), `KEY=VALUE`, the `--mount`, `--network` and
`--publish` CSVs, secret and config references, placement preferences. A bad value is a
click.BadParameter naming the flag."""

from __future__ import annotations

import csv
import os
import re
from decimal import Decimal, InvalidOperation
from typing import Any

import click

_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def bad(flag: str, value: str, why: str) -> click.BadParameter:
    return click.BadParameter(f"invalid {flag} {value!r}: {why}", param_hint=f"'{flag}'")


def parse_size(value: str, flag: str = "--reserve-memory") -> int:
    """Docker's sizes: 64M, 1.5g, 512k, 1024 (bytes), binary units."""
    match = _SIZE.match(value.strip())
    if not match:
        raise bad(flag, value, "expected a size like 64M, 1G or 512k")
    return int(Decimal(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()])


def parse_cpus(value: str, flag: str = "--reserve-cpu") -> int:
    """CPUs as a decimal ("0.5") → NanoCPUs."""
    try:
        nano = Decimal(value) * 1_000_000_000
    except InvalidOperation:
        raise bad(flag, value, "expected a number of CPUs like 0.5 or 2") from None
    if nano < 0 or nano != int(nano):
        raise bad(flag, value, "expected a positive number with at most 9 decimals")
    return int(nano)


def parse_kv(value: str, flag: str) -> tuple[str, str]:
    key, _, val = value.partition("=")
    if not key.strip():
        raise bad(flag, value, "the key is empty (expected KEY=VALUE)")
    return key.strip(), val


def parse_env(value: str) -> str:
    """KEY=VALUE as is; a bare KEY takes its value from this environment, as Docker's."""
    if "=" in value:
        parse_kv(value, "--env")
        return value
    return f"{value}={os.environ[value]}" if value in os.environ else value


def _csv_fields(value: str, flag: str) -> list[tuple[str, str]]:
    row = next(csv.reader([value]), [])
    out = []
    for item in row:
        key, sep, val = item.partition("=")
        out.append((key.strip().lower(), val.strip() if sep else ""))
    if not out:
        raise bad(flag, value, "empty")
    return out


def _truth(value: str, flag: str, key: str) -> bool:
    if value.lower() in ("", "1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise bad(flag, value, f"{key} takes true or false")


def parse_mount(value: str, flag: str = "--mount") -> dict[str, Any]:
    """type=bind|volume|tmpfs,source=,target=,readonly,tmpfs-size=,tmpfs-mode= → Mount."""
    mount: dict[str, Any] = {"Type": "volume"}
    tmpfs: dict[str, int] = {}
    for key, val in _csv_fields(value, flag):
        if key == "type":
            mount["Type"] = val.lower()
        elif key in ("source", "src"):
            mount["Source"] = val
        elif key in ("target", "dst", "destination"):
            mount["Target"] = val
        elif key in ("readonly", "ro"):
            mount["ReadOnly"] = _truth(val, flag, key)
        elif key == "tmpfs-size":
            tmpfs["SizeBytes"] = parse_size(val, flag)
        elif key == "tmpfs-mode":
            try:
                tmpfs["Mode"] = int(val, 8)
            except ValueError:
                raise bad(flag, value, "tmpfs-mode is an octal mode like 1777") from None
        else:
            raise bad(flag, value, f"unknown or unsupported mount option {key!r} (Shoal takes "
                      "type, source, target, readonly, tmpfs-size, tmpfs-mode)")
    if "Target" not in mount:
        raise bad(flag, value, "target=PATH is required")
    if tmpfs:
        mount["TmpfsOptions"] = tmpfs
    return mount


def parse_network(value: str, flag: str = "--network") -> dict[str, Any]:
    """`NAME` or `name=NAME,alias=A[,alias=B]` (Docker's --network)."""
    if "=" not in value:
        return {"Target": value}
    out: dict[str, Any] = {}
    for key, val in _csv_fields(value, flag):
        if key in ("name", "target"):
            out["Target"] = val
        elif key == "alias":
            out.setdefault("Aliases", []).append(val)
        else:
            raise bad(flag, value, f"unknown option {key!r} (name, alias)")
    if not out.get("Target"):
        raise bad(flag, value, "name the network (name=NAME)")
    return out


def parse_publish(value: str, flag: str = "--publish") -> dict[str, Any]:
    """`8080:80[/udp]`, `80`, `published=8080,target=80,protocol=udp,mode=host`, or the
    short form after options (`mode=host,8080:80`)."""
    port: dict[str, Any] = {"Protocol": "tcp", "PublishMode": "ingress"}
    short = [part for part in value.split(",") if "=" not in part]
    if len(short) > 1:
        raise bad(flag, value, "give one PUBLISHED:TARGET")
    options = ",".join(part for part in value.split(",") if "=" in part)
    if options:
        names = {"published": "PublishedPort", "target": "TargetPort", "protocol": "Protocol",
                 "mode": "PublishMode"}
        for key, val in _csv_fields(options, flag):
            if key not in names:
                raise bad(flag, value, f"unknown option {key!r} (published, target, protocol, "
                          "mode)")
            port[names[key]] = val.lower()
    if short:
        ports, _, proto = short[0].partition("/")
        published, sep, target = ports.rpartition(":")
        if ":" in published:
            raise bad(flag, value, "a host IP can't be given for a swarm service")
        port.update(PublishedPort=published if sep else "0", TargetPort=target,
                    Protocol=proto or port["Protocol"])
    for key in ("PublishedPort", "TargetPort"):
        text = str(port.get(key, "0"))
        if not text.isdigit() or int(text) > 65535:
            raise bad(flag, value, f"{text!r} is not a port number (0-65535)")
        port[key] = int(text)
    if not port["TargetPort"]:
        raise bad(flag, value, "the target (container) port is missing")
    if not port["PublishedPort"]:
        del port["PublishedPort"]
    return port


def parse_file_ref(value: str, flag: str, kind: str) -> dict[str, Any]:
    """`NAME` or `source=NAME,target=T,uid=U,gid=G,mode=0400` (Docker's --secret and
    --config) → a SecretReference / ConfigReference by name (the manager resolves it)."""
    ref = {"source": value.strip(), "target": "", "uid": "0", "gid": "0", "mode": "0444"}
    if "=" in value:
        ref["source"] = ""
        for key, val in _csv_fields(value, flag):
            key = {"src": "source", "dst": "target", "destination": "target"}.get(key, key)
            if key not in ref:
                raise bad(flag, value, f"unknown option {key!r} (source, target, uid, gid, "
                          "mode)")
            ref[key] = val
    if not ref["source"]:
        raise bad(flag, value, f"name the {kind} (source=NAME)")
    for key in ("uid", "gid"):
        if not ref[key].isdigit():
            raise bad(flag, value, f"{key} is a number")
    try:
        mode = int(ref["mode"], 8)
    except ValueError:
        raise bad(flag, value, "mode is an octal mode like 0400") from None
    name_key = "SecretName" if kind == "secret" else "ConfigName"
    return {"File": {"Name": ref["target"] or ref["source"], "UID": ref["uid"],
                     "GID": ref["gid"], "Mode": mode}, name_key: ref["source"]}


def update_file_refs(refs: list[dict[str, Any]], add: tuple[str, ...], rm: tuple[str, ...],
                     kind: str) -> list[dict[str, Any]]:
    """--secret-add/--secret-rm (--config-…): remove by name or ID, add (a reference at the
    same target replaces the old one)."""
    name_key, id_key = ("SecretName", "SecretID") if kind == "secret" else \
        ("ConfigName", "ConfigID")
    out = [r for r in refs if r.get(name_key) not in rm and r.get(id_key) not in rm]
    for value in add:
        new = parse_file_ref(value, f"--{kind}-add", kind)
        out = [r for r in out if r["File"]["Name"] != new["File"]["Name"]] + [new]
    return out


def parse_pref(value: str, flag: str = "--placement-pref") -> dict[str, Any]:
    strategy, sep, descriptor = value.partition("=")
    if strategy.strip().lower() != "spread" or not sep or not descriptor.strip():
        raise bad(flag, value, "expected spread=node.labels.<name>")
    return {"Spread": {"SpreadDescriptor": descriptor.strip()}}
