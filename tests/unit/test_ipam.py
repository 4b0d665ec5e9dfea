"""IPAM (pure): subnets from pools around what is taken, gateways, ranges, addresses."""

from __future__ import annotations

import random

import pytest

from netdriver import ipam
from netdriver.ipam import IPAMError, Net
from proto import objects_pb2 as pb


def test_subnets_come_from_the_pool_in_order_skipping_what_is_taken() -> None:
    taken = [(Net("10.0.0.0/24"), "ingress"), (Net("10.0.1.0/24"), "net a")]
    assert ipam.next_subnet([], 24, taken) == Net("10.0.2.0/24")
    assert ipam.next_subnet(["10.10.0.0/16"], 26, []) == Net("10.10.0.0/26")


def test_a_route_over_part_of_the_pool_is_jumped_not_walked() -> None:
    assert ipam.next_subnet([], 24, [(Net("10.0.0.0/9"), "route")]) == Net("10.128.0.0/24")


def test_a_full_pool_says_what_to_do() -> None:
    with pytest.raises(IPAMError, match="no free /24 left.*--subnet"):
        ipam.next_subnet(["10.9.0.0/24"], 24, [(Net("10.9.0.0/24"), "x")])


@pytest.mark.parametrize(("config", "error"), [
    (pb.IPAMConfig(subnet="10.1.0.0/33"), "invalid subnet"),
    (pb.IPAMConfig(subnet="10.1.0.1/24"), "invalid subnet"),
    (pb.IPAMConfig(subnet="banana"), "invalid subnet"),
    (pb.IPAMConfig(subnet="10.1.0.0/30"), "too small"),
    (pb.IPAMConfig(subnet="10.1.0.0/24", gateway="10.2.0.1"), "not a host address"),
    (pb.IPAMConfig(subnet="10.1.0.0/24", gateway="10.1.0.255"), "not a host address"),
    (pb.IPAMConfig(subnet="10.1.0.0/24", gateway="x"), "invalid gateway"),
    (pb.IPAMConfig(subnet="10.1.0.0/24", ip_range="10.2.0.0/25"), "not inside"),
])
def test_bad_ipam_configs_are_refused_by_name(config: pb.IPAMConfig, error: str) -> None:
    with pytest.raises(IPAMError, match=error):
        ipam.check_ipam(config)


def test_gateway_defaults_to_the_first_address() -> None:
    assert ipam.check_ipam(pb.IPAMConfig(subnet="10.1.0.0/24")).gateway == "10.1.0.1"


def test_addresses_skip_the_gateway_and_what_is_used_and_stay_in_the_range() -> None:
    config = ipam.check_ipam(pb.IPAMConfig(subnet="10.1.0.0/24", ip_range="10.1.0.128/30"))
    used: set[ipam.Addr] = set()
    got = [ipam.next_address(config, used, "t") for _ in range(4)]
    assert got == ["10.1.0.128/24", "10.1.0.129/24", "10.1.0.130/24", "10.1.0.131/24"]
    with pytest.raises(IPAMError, match="no free address left in 10.1.0.128/30"):
        ipam.next_address(config, used, "t")
    used.discard(ipam.Addr("10.1.0.129"))
    assert ipam.next_address(config, used, "t") == "10.1.0.129/24"


def test_held_addresses_hand_out_what_a_plain_set_does() -> None:
    """Held only skips the part of the range already searched: the same addresses, in the
    same order, as searching from the start each time, and a discarded one comes back."""
    rng = random.Random(7)
    config = ipam.check_ipam(pb.IPAMConfig(subnet="10.2.0.0/22"))
    for _ in range(20):
        taken = {ipam.Addr(f"10.2.{rng.randrange(4)}.{rng.randrange(256)}")
                 for _ in range(rng.randrange(900))}
        plain, held = set(taken), ipam.Held(taken)
        for _ in range(rng.randrange(1, 300)):
            if rng.random() < 0.1 and held:
                gone = rng.choice(sorted(held))
                plain.discard(gone)
                held.discard(gone)
            try:
                want = ipam.next_address(config, plain, "t")
            except IPAMError:
                with pytest.raises(IPAMError):
                    ipam.next_address(config, held, "t")
                continue
            assert ipam.next_address(config, held, "t") == want
        assert held == plain


def test_unknown_driver_and_options_are_refused() -> None:
    with pytest.raises(IPAMError, match="driver 'bridge' is not supported"):
        ipam.check_options(pb.NetworkSpec(driver="bridge"))
    with pytest.raises(IPAMError, match="unknown overlay option 'fast'"):
        ipam.check_options(pb.NetworkSpec(driver="overlay", driver_options={"fast": "1"}))
    ipam.check_options(pb.NetworkSpec(driver="overlay", driver_options={"encrypted": ""}))
