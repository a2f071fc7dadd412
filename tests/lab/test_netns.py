"""lab/netns.py on its own: the bastion's and the inner namespace, who reaches whom, and removal by the lab's tag
(as `lab down` sweeps them even when its state file forgot them)."""

from __future__ import annotations

import errno
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from topdeck.lab import netns
from topdeck.lab.errors import LabError

LAYOUT = netns.Layout("b", ("i-1", "i-2"), 34, tag=uuid.uuid4().hex[:8])


@pytest.fixture(scope="module")
def network():
    netns.create(LAYOUT)
    try:
        yield LAYOUT
    finally:
        netns.delete(LAYOUT.tag, LAYOUT)


def serve_in(namespace: str, address: str) -> socket.socket:
    with netns.inside(namespace):
        return socket.create_server((address, 0))


def test_the_inner_hosts_are_reached_from_the_bastion_only(network):
    inner = network.address_of("i-2")
    server = serve_in(network.inner_ns, inner)
    port = server.getsockname()[1]
    with server:
        assert netns.port_open(network.bastion_ns, inner, port)
        assert netns.port_open(network.inner_ns, inner, port)
        with socket.socket() as direct:
            direct.settimeout(2)
            assert direct.connect_ex((inner, port)) == errno.EHOSTUNREACH  # no way in from this machine
        bastion = serve_in(network.bastion_ns, network.bastion_address)
        with bastion:
            with socket.create_connection((network.bastion_address, bastion.getsockname()[1]), timeout=2):
                pass  # the bastion is reachable from here


def test_the_bastion_does_not_forward(network):
    value = subprocess.run(["ip", "netns", "exec", network.bastion_ns, "sysctl", "-n", "net.ipv4.ip_forward"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert value == "0"


def test_delete_by_tag_removes_namespaces_and_links():
    layout = netns.Layout("b", ("i",), 36, tag=uuid.uuid4().hex[:8])
    netns.create(layout)
    assert (netns.NETNS_DIR / layout.inner_ns).exists() and Path(f"/sys/class/net/{layout.link('r')}").exists()
    removed = netns.delete(layout.tag)  # no layout: as a sweep without the lab's state
    assert set(removed) == {layout.link("r"), layout.bastion_ns, layout.inner_ns}
    assert not list(netns.NETNS_DIR.glob(f"{netns.PREFIX}{layout.tag}-*"))
    assert not Path(f"/sys/class/net/{layout.link('r')}").exists()
    netns.delete(layout.tag, layout)  # and the route, with the layout
    routes = subprocess.run(["ip", "route", "show", "type", "unreachable"], capture_output=True, text=True).stdout
    assert layout.inner_subnet not in routes


def test_a_layout_outside_10_250_is_refused():
    with pytest.raises(LabError, match="must be 0-253"):
        netns.Layout("b", ("i",), 254)
