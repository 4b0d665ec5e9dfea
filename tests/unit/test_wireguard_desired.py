"""The pure half of the node's WireGuard (netdriver/node/wgstate.py: desired peers, dump
parsing, differences) and its keys (wgkeys.py)."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from netdriver.node.wgkeys import KeyStore, new_key_pair, rotation_due
from netdriver.node.wgstate import (
    DumpInterface,
    PeerConfig,
    address_changes,
    desired_peers,
    endpoint_of,
    interface_changes,
    interface_name,
    parse_dump,
    peer_changes,
    peer_differences,
    tunnel_cidr,
    tunnel_subnet,
    underlay_mtu,
    wg_mtu,
)
from proto import cluster_pb2

KEY_A = "ehSE2cabYTX+gyN8j8kpPpQg+9AZ9ngaCjHtn8nioBM="
KEY_B = "99J1Qhi/1aJkXjVDsSeKn0rtEToEkjHF5LjZrC7+kEI="
KEY_C = "Wz0kQbq3aeiOiUFK0TIzBE5p1xXjuXK6E1/tMfuVw2s="


def peer(node_id: str, addr: str, tunnel: str, key: str) -> cluster_pb2.NetworkPeer:
    return cluster_pb2.NetworkPeer(node_id=node_id, addr=addr, tunnel_addr=tunnel,
                                   public_key=key)


def test_interface_name_fits_and_is_clean() -> None:
    assert interface_name("ab12cd34ef56gh78") == "shwab12cd34"
    assert interface_name("AB-12") == "shwab12"
    assert len(interface_name("x" * 64)) <= 15


def test_key_pair_is_x25519_in_wg_format() -> None:
    pair = new_key_pair(123)
    private = base64.b64decode(pair.private_key)
    assert len(private) == 32 and len(pair.private_key) == 44
    public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert base64.b64decode(pair.public_key) == public
    assert pair.created_ns == 123
    assert new_key_pair(0).private_key != pair.private_key


def test_key_store_round_trip_0600(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "wg")
    assert store.load() is None
    pair = new_key_pair(42)
    store.save(pair)
    assert store.load() == pair
    assert stat.S_IMODE(store.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert store.key_path.read_text().strip() == pair.private_key  # what `wg set` reads


def test_key_store_unreadable_key_is_none(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "wg")
    store.save(new_key_pair(1))
    store.key_path.write_text("not a key\n")
    assert store.load() is None


def test_rotation_due() -> None:
    assert not rotation_due(0, None, 10**18)
    assert not rotation_due(1_000_000_000, 2.0, 2_999_999_999)
    assert rotation_due(1_000_000_000, 2.0, 3_000_000_000)


def test_desired_peers_skips_self_and_incomplete_peers() -> None:
    peers = [
        peer("n1", "198.18.0.1", "100.127.0.1", KEY_A),        # this node
        peer("n2", "198.18.0.2", "100.127.0.2/16", KEY_B),     # CIDR form accepted
        peer("n3", "198.18.0.3", "", KEY_C),                   # no tunnel address yet
        peer("n4", "198.18.0.4", "100.127.0.4", ""),           # no key yet
        peer("n5", "fd00::5", "100.127.0.5", KEY_C),
    ]
    assert desired_peers(peers, "n1", KEY_A, 51820) == {
        KEY_B: PeerConfig("198.18.0.2:51820", frozenset({"100.127.0.2/32"}), 5),
        KEY_C: PeerConfig("[fd00::5]:51820", frozenset({"100.127.0.5/32"}), 5),
    }


def test_endpoint_and_tunnel_addresses() -> None:
    assert endpoint_of("198.18.0.2", 51821) == "198.18.0.2:51821"
    assert endpoint_of("fd00::2", 1) == "[fd00::2]:1"
    assert tunnel_cidr("100.127.3.4") == "100.127.3.4/16"
    assert tunnel_cidr("100.127.3.4/24") == "100.127.3.4/16"
    assert tunnel_subnet("100.127.3.4") == "100.127.0.0/16"


def test_mtu() -> None:
    assert wg_mtu(1500) == 1440
    assert wg_mtu(1500, ["198.18.0.2:51820", "198.18.0.3:51820"]) == 1440
    assert wg_mtu(1500, ["198.18.0.2:51820", "[fd00::3]:51820"]) == 1420
    assert underlay_mtu([9000, 1500]) == 1500
    assert underlay_mtu([]) == 1500


DUMP = (
    "cHJpdmF0ZQ==\t" + KEY_A + "\t51820\toff\n"
    + KEY_B + "\t(none)\t198.18.0.2:51820\t100.127.0.2/32\t1700000000\t92\t180\t5\n"
    + KEY_C + "\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
)


def test_parse_dump() -> None:
    iface, peers = parse_dump(DUMP)
    assert iface == DumpInterface("cHJpdmF0ZQ==", KEY_A, 51820)
    assert peers[KEY_B].config == PeerConfig("198.18.0.2:51820",
                                             frozenset({"100.127.0.2/32"}), 5)
    assert peers[KEY_B].last_handshake_ns == 1_700_000_000_000_000_000
    assert peers[KEY_C].config == PeerConfig("", frozenset(), 0)
    assert peers[KEY_C].last_handshake_ns == 0


def test_parse_dump_fresh_interface_has_no_key() -> None:
    iface, peers = parse_dump("(none)\t(none)\t0\toff\n")
    assert iface == DumpInterface("", "", 0) and peers == {}


def test_peer_changes_add_update_remove() -> None:
    want_b = PeerConfig("198.18.0.2:51820", frozenset({"100.127.0.2/32"}), 5)
    want_c = PeerConfig("198.18.0.3:51820", frozenset({"100.127.0.3/32"}), 5)
    actual = {KEY_A: want_b,  # a peer no longer in the message
              KEY_B: PeerConfig("198.18.0.9:51820", frozenset({"100.127.0.2/32"}), 5)}
    args = peer_changes({KEY_B: want_b, KEY_C: want_c}, actual)
    assert args == [
        "peer", KEY_A, "remove",
        "peer", KEY_B, "endpoint", "198.18.0.2:51820", "allowed-ips", "100.127.0.2/32",
        "persistent-keepalive", "5",
        "peer", KEY_C, "endpoint", "198.18.0.3:51820", "allowed-ips", "100.127.0.3/32",
        "persistent-keepalive", "5",
    ]


def test_peer_changes_nothing_when_equal() -> None:
    want = {KEY_B: PeerConfig("198.18.0.2:51820", frozenset({"100.127.0.2/32"}), 5)}
    assert peer_changes(want, dict(want)) == []


def test_rotated_peer_key_replaces_the_old_one() -> None:
    old = {KEY_B: PeerConfig("198.18.0.2:51820", frozenset({"100.127.0.2/32"}), 5)}
    new = {KEY_C: old[KEY_B]}
    assert peer_changes(new, old)[:3] == ["peer", KEY_B, "remove"]
    assert peer_changes(new, old)[3:5] == ["peer", KEY_C]


def test_interface_changes_never_put_the_key_on_a_command_line() -> None:
    assert interface_changes("K", 51820, DumpInterface("K", "P", 51820)) == []
    args = interface_changes("K", 51820, DumpInterface("", "", 0))
    assert args == ["listen-port", "51820", "private-key", "@key"]
    assert "K" not in args


def test_address_changes() -> None:
    assert address_changes("100.127.0.1/16", []) == ([], ["100.127.0.1/16"])
    assert address_changes("100.127.0.1/16", ["100.127.0.1/16"]) == ([], [])
    assert address_changes("100.127.0.1/16", ["100.127.0.7/16"]) == (
        ["100.127.0.7/16"], ["100.127.0.1/16"])
    assert address_changes(None, ["100.127.0.7/16"]) == (["100.127.0.7/16"], [])


def test_peer_differences_for_doctor() -> None:
    want_b = PeerConfig("198.18.0.2:51820", frozenset({"100.127.0.2/32"}), 5)
    want_c = PeerConfig("198.18.0.3:51820", frozenset({"100.127.0.3/32"}), 5)
    stale_b = PeerConfig("198.18.0.9:51820", frozenset({"100.127.0.2/32"}), 5)
    assert peer_differences({KEY_B: want_b}, {KEY_B: want_b}) == []
    assert peer_differences({KEY_B: want_b, KEY_C: want_c}, {KEY_A: want_b, KEY_B: stale_b}) == [
        f"wireguard peer {KEY_A}: not wanted",
        f"wireguard peer {KEY_B}: endpoint 198.18.0.9:51820 allowed-ips 100.127.0.2/32 "
        "keepalive 5; want endpoint 198.18.0.2:51820 allowed-ips 100.127.0.2/32 keepalive 5",
        f"wireguard peer {KEY_C} (198.18.0.3:51820): missing",
    ]
