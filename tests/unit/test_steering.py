"""Receive steering for wireguard-go's TUN device: the sysfs mask and the script that sets it."""

import pytest

from netdriver.node.steering import rps_mask, steering_script


def test_mask_of_cpu_sets() -> None:
    assert rps_mask({0, 1}) == "3"
    assert rps_mask({1, 3}) == "a"
    assert rps_mask(range(32)) == "ffffffff"
    assert rps_mask(range(40)) == "ff,ffffffff"
    assert rps_mask({32}) == "1,00000000"
    assert rps_mask(range(96)) == "ffffffff,ffffffff,ffffffff"


def test_script_sets_every_receive_queue_of_the_device() -> None:
    script = steering_script("shw0abc", "3")
    assert script.startswith("mount -t sysfs sysfs /sys && ")
    assert "/sys/class/net/shw0abc/queues/rx-*" in script and "echo 3 > $q/rps_cpus" in script


@pytest.mark.parametrize("ifname,mask", [("wg0; rm -rf /", "3"), ("a" * 16, "3"),
                                         ("wg0", "3; reboot"), ("", "3")])
def test_script_refuses_what_is_not_a_device_name_or_mask(ifname: str, mask: str) -> None:
    with pytest.raises(ValueError):
        steering_script(ifname, mask)
