"""Cut a lab host off from some peers: nftables drops in the host's own namespace.

The table `shoal_cut_<lab>` (inet family) drops every packet, all ports, from the peers'
lab addresses (input) and to them (output). It lives in the lab host's namespace only, so
the machine's own rules and other hosts are untouched; heal() deletes it by its name.
nft runs through `nsenter --net=` rather than `ip netns exec` (which remounts /sys).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from shoal.lab import LabState

FAMILY = "inet"


def table_name(lab: LabState) -> str:
    return f"shoal_cut_{lab.name}"


def ruleset(table: str, peers: Sequence[str]) -> str:
    addrs = ", ".join(peers)
    # Priority -10: ahead of any filter chain the daemon itself may install.
    return (f"table {FAMILY} {table} {{\n"
            f"  chain cut_in {{ type filter hook input priority -10; policy accept;\n"
            f"    ip saddr {{ {addrs} }} drop\n  }}\n"
            f"  chain cut_out {{ type filter hook output priority -10; policy accept;\n"
            f"    ip daddr {{ {addrs} }} drop\n  }}\n"
            f"}}\n")


def _nft(namespace: str, args: Sequence[str], stdin: str | None = None) -> str:
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{namespace}", "nft", *args],
                          input=stdin, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)} in {namespace} failed: {proc.stderr.strip()}")
    return proc.stdout


def cut(lab: LabState, host: str, peers: Sequence[str]) -> None:
    """Drop all traffic between `host` and the named peer hosts (from `host`'s side)."""
    if not peers:
        raise ValueError("cut needs at least one peer host")
    addrs = [lab.host(p).address for p in peers]
    _nft(lab.host(host).namespace, ["-f", "-"], ruleset(table_name(lab), addrs))


def heal(lab: LabState, host: str) -> bool:
    """Delete the cut table if it is there; True when one was deleted."""
    ns, table = lab.host(host).namespace, table_name(lab)
    if f"table {FAMILY} {table}" not in _nft(ns, ["list", "tables"]).splitlines():
        return False
    _nft(ns, ["delete", "table", FAMILY, table])
    return True


@contextmanager
def cut_off(lab: LabState, host: str, peers: Sequence[str]) -> Iterator[None]:
    """`host` cut off from `peers` for the body of the with-block; healed even on error."""
    cut(lab, host, peers)
    try:
        yield
    finally:
        heal(lab, host)
