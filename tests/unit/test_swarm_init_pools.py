"""`swarm init --default-addr-pool/--default-addr-pool-mask-length/--data-path-port`: the
CLI sends Docker's fields, the API checks them with a clear error."""

from __future__ import annotations

import pytest

from shoal.api.swarm import _address_pools
from shoal.cli.swarm import init_request
from shoal.description import host_routes
from shoal.errors import InvalidRequest


def test_the_cli_sends_dockers_fields() -> None:
    body = init_request("10.0.0.1", "0.0.0.0:2377", None, None, None, None,
                        ("10.20.0.0/16",), 26, 7789)
    assert (body["DefaultAddrPool"], body["SubnetSize"], body["DataPathPort"]) == \
        (["10.20.0.0/16"], 26, 7789)


def test_pools_mask_and_port_are_checked() -> None:
    assert _address_pools({"DefaultAddrPool": ["10.20.0.0/16"], "SubnetSize": 26,
                           "DataPathPort": 7789}) == (["10.20.0.0/16"], 26, 7789)
    assert _address_pools({}) == ([], 0, 0)
    with pytest.raises(InvalidRequest, match="invalid default address pool '10.20.0.0/33'"):
        _address_pools({"DefaultAddrPool": ["10.20.0.0/33"]})
    with pytest.raises(InvalidRequest, match="mask length 12"):
        _address_pools({"DefaultAddrPool": ["10.20.0.0/16"], "SubnetSize": 12})
    with pytest.raises(InvalidRequest, match="invalid data path port 80"):
        _address_pools({"DataPathPort": 80})


def test_a_pool_over_a_route_of_this_host_is_refused_naming_it() -> None:
    route = host_routes()[0]  # every machine that runs the tests has a non-default route
    with pytest.raises(InvalidRequest, match=f"overlaps route {route.dst} dev {route.dev}"):
        _address_pools({"DefaultAddrPool": [route.dst]})
