"""A pytest-xdist worker of the lab tier in network and mount namespaces of its own.

Each worker's labs listen on the same addresses and ports (TOPDECK_TEST_BASE_ADDRESS, the modules' own 127.0.x.y)
as a serial run's, on the worker's own loopback, so they cannot collide; what every namespace shares is named per
network namespace (topdeck.lab.hosts.machine_wide_name). Mounts a worker's labs leave behind go with its mount
namespace. The image cache (/var/cache/topdeck-lab/images) and this machine's /nix stay shared.

The worker's process is already running threads (execnet's receiver) when pytest configures it: unshare(2) moves
the calling thread only, and every process and thread it starts afterwards (the tests, their labs) follows it.
Python 3.11 has no os.unshare, hence libc.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import tempfile

from topdeck.lab.lab import default_root

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
# Nix (src/nix/main.cc, haveInternet) takes a machine whose only IPv4 address is 127.0.0.1 for one without Internet
# access: it warns "you don't have Internet access; disabling some network-dependent features" on every `nix`
# command and runs offline (no substituters, tarballs never refreshed, a 1 s connect timeout). This machine has a
# network card; so that Nix behaves in a worker as it does here, the worker's loopback also carries this address
# (TEST-NET-1, RFC 5737: documentation only, never routed; nothing listens on it).
NIX_SEES_A_NETWORK = "192.0.2.1/32"


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"pytest-xdist worker: {what}: {os.strerror(error)}")


def isolate(worker: str) -> None:
    """Move this worker into namespaces of its own with a loopback that is up, and give it a lab folder of its own
    (TOPDECK_LAB_DIR with the worker's name appended, for what runs `topdeck lab` in its default folder)."""
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(CLONE_NEWNET | CLONE_NEWNS), "unshare(CLONE_NEWNET | CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making its mounts private")
    _own_sysfs()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "address", "add", NIX_SEES_A_NETWORK, "dev", "lo"], check=True)
    os.environ["TOPDECK_LAB_DIR"] = f"{default_root()}-{worker}"


def _own_sysfs() -> None:
    """A sysfs mounted in the new network namespace (a sysfs shows the network of the namespace that mounted it:
    /sys/class/net, which topdeck.lab.netns reads), with this machine's cgroup tree moved onto it as it was."""
    cgroups = tempfile.mkdtemp(prefix="topdeck-worker-cgroup-")
    for command in (["mount", "--rbind", "/sys/fs/cgroup", cgroups], ["mount", "-t", "sysfs", "sysfs", "/sys"],
                    ["mount", "--move", cgroups, "/sys/fs/cgroup"]):
        subprocess.run(command, check=True)
    os.rmdir(cgroups)
