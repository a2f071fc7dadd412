"""A bastion for the lab: hosts in a network namespace that only a bastion host can reach, on this machine only.

Two namespaces per lab, named after the lab's folder (`topdeck-b<tag>-bastion`, `topdeck-b<tag>-inner`):

    this machine 10.250.B.1 --veth-- 10.250.B.2 bastion's namespace 10.250.B+1.1 --veth-- 10.250.B+1.2, .3 ... inner

The bastion's sshd listens on 10.250.B.2 (and, for a second hop through itself, 10.250.B+1.1); the hosts behind it
listen on 10.250.B+1.2 and up, all in the inner namespace. This machine has an `unreachable` route for
10.250.B+1.0/24 (so nothing leaves by the default route) and the bastion's namespace does not forward: a direct
connection fails at once ("no route to host") and only an SSH jump through the bastion gets in. Hosts behind the
bastion reach the B2 emulator at this machine's URL through a forwarder (topdeck.lab.forward) listening inside
their namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from topdeck.lab.errors import LabError

NETNS_DIR = Path("/run/netns")
PREFIX = "topdeck-b"
CLONE_NEWNET = 0x40000000


def tag_of(lab_root: Path) -> str:
    """A short name for the lab's namespaces and links, the same for the same folder (so a sweep finds them)."""
    return hashlib.sha256(str(Path(lab_root).resolve()).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Layout:
    """Which lab hosts are the bastion and the hosts behind it, and the /24 blocks of 10.250.0.0/16 they use."""

    bastion: str
    behind: tuple[str, ...]
    block: int  # 10.250.<block>.0/24 to the bastion, 10.250.<block + 1>.0/24 behind it
    tag: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.block <= 253:
            raise LabError(f"bastion block {self.block}: must be 0-253 (10.250.<block>.0/24 and the next one)")
        if len(self.behind) > 200:
            raise LabError("at most 200 hosts behind a lab bastion")

    @property
    def bastion_ns(self) -> str:
        return f"{PREFIX}{self.tag}-bastion"

    @property
    def inner_ns(self) -> str:
        return f"{PREFIX}{self.tag}-inner"

    @property
    def outside(self) -> str:
        """This machine's end of the link to the bastion."""
        return f"10.250.{self.block}.1"

    @property
    def bastion_address(self) -> str:
        return f"10.250.{self.block}.2"

    @property
    def bastion_inner_address(self) -> str:
        """The bastion's address on the inner network (a second hop through the bastion itself goes there)."""
        return f"10.250.{self.block + 1}.1"

    @property
    def inner_subnet(self) -> str:
        return f"10.250.{self.block + 1}.0/24"

    def address_of(self, name: str) -> str:
        if name == self.bastion:
            return self.bastion_address
        return f"10.250.{self.block + 1}.{2 + self.behind.index(name)}"

    def namespace_of(self, name: str) -> str:
        return self.bastion_ns if name == self.bastion else self.inner_ns

    def names(self) -> tuple[str, ...]:
        return (self.bastion, *self.behind)

    def link(self, end: str) -> str:
        """Interface names (at most 15 characters): r, b the bastion's link ends, x, i the inner link's."""
        return f"tdb{self.tag}{end}"


def create(layout: Layout) -> None:
    """Make both namespaces and their links, unless they exist already."""
    if (NETNS_DIR / layout.inner_ns).exists() and (NETNS_DIR / layout.bastion_ns).exists():
        return
    delete(layout.tag, layout)
    bastion, inner = layout.bastion_ns, layout.inner_ns
    inner_addresses = [layout.address_of(name) for name in layout.behind]
    steps = [
        ["netns", "add", bastion], ["netns", "add", inner],
        ["-n", bastion, "link", "set", "lo", "up"], ["-n", inner, "link", "set", "lo", "up"],
        ["link", "add", layout.link("r"), "type", "veth", "peer", "name", layout.link("b"), "netns", bastion],
        ["addr", "add", f"{layout.outside}/24", "dev", layout.link("r")],
        ["link", "set", layout.link("r"), "up"],
        ["-n", bastion, "addr", "add", f"{layout.bastion_address}/24", "dev", layout.link("b")],
        ["-n", bastion, "link", "set", layout.link("b"), "up"],
        ["-n", bastion, "link", "add", layout.link("x"), "type", "veth", "peer", "name", layout.link("i"),
         "netns", inner],
        ["-n", bastion, "addr", "add", f"{layout.bastion_inner_address}/24", "dev", layout.link("x")],
        ["-n", bastion, "link", "set", layout.link("x"), "up"],
        *(["-n", inner, "addr", "add", f"{address}/24", "dev", layout.link("i")] for address in inner_addresses),
        ["-n", inner, "link", "set", layout.link("i"), "up"],
        # This machine has no way into the inner network (without it, packets would leave by the default route).
        ["route", "replace", "unreachable", layout.inner_subnet],
    ]
    try:
        for step in steps:
            _ip(step)
        _sysctl(bastion, "net.ipv4.ip_forward", "0")
    except LabError:
        delete(layout.tag, layout)
        raise


def delete(tag: str, layout: Layout | None = None) -> list[str]:
    """Remove the lab's namespaces and links (whatever of them exists), and the layout's route; the names of what
    was removed."""
    removed = []
    if layout is not None:
        _ip(["route", "del", "unreachable", layout.inner_subnet], check=False)
    link = f"tdb{tag}r"
    if Path(f"/sys/class/net/{link}").exists():
        _ip(["link", "del", link], check=False)  # its peer, and the route through it, go with it
        removed.append(link)
    for path in sorted(NETNS_DIR.glob(f"{PREFIX}{tag}-*")) if NETNS_DIR.is_dir() else []:
        _ip(["netns", "del", path.name], check=False)
        removed.append(path.name)
    return removed


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run this thread inside a network namespace of the lab for a moment (sockets made here stay in it)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    other = os.open(NETNS_DIR / namespace, os.O_RDONLY)
    try:
        _setns(other)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(other)


def port_open(namespace: str, address: str, port: int) -> bool:
    """Whether something accepts TCP connections on address:port inside the namespace."""
    try:
        with inside(namespace):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(0.5)
            sock.connect((address, port))
            return True
    except OSError:
        return False


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def _ip(args: list[str], check: bool = True) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {result.stderr.strip() or f'exit {result.returncode}'}")


def _sysctl(namespace: str, key: str, value: str) -> None:
    result = subprocess.run(["ip", "netns", "exec", namespace, "sysctl", "-qw", f"{key}={value}"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise LabError(f"{namespace}: sysctl {key}={value}: {result.stderr.strip()}")
