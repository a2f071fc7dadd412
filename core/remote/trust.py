"""Pinning hosts' SSH keys on purpose (`topdeck trust`, the TUI's host-key dialog): nothing else ever writes one.

`trust(host, ssh, decide)` connects hop by hop as `connect` does (jump hosts first), shows each hop's key to
`decide`, and pins the keys it accepts into that hop's known_hosts (the first user file: `[ssh] known_hosts`,
else ssh_config's UserKnownHostsFile, else ~/.ssh/known_hosts). A jump host with an unknown key is one more hop
to decide on: it must be trusted before topdeck logs in to it to reach the next one. Keys are written only once
every hop is decided, so a refusal or a mismatch anywhere leaves every file as it was. A changed key is never
replaced here (remove the old line by hand, as OpenSSH asks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from topdeck.core.errors import ChangedHostKey, HostKeyError, SSHError, UnknownHostKey
from topdeck.core.inventory import Host, SSHConfig
from topdeck.core.remote.ssh import (
    Transport,
    accept_host_key,
    authenticate,
    fingerprint,
    hop_label,
    host_keys_for,
    open_transport,
    tunnel,
)
from topdeck.core.remote.sshroute import Endpoint, route

TRUSTED, NEW, CERTIFIED = "trusted", "new", "certified"


@dataclass(frozen=True)
class HopKey:
    """The key one hop presented: `status` is "trusted" (already pinned) or "new"; `pinned` once written."""

    host: str  # the inventory host this hop leads to
    hop: str  # the hop's name (the host itself, or a jump host)
    jump: bool
    key_name: str  # the known_hosts name it is pinned under
    key_type: str
    fingerprint: str
    status: str
    known_hosts: Path
    pinned: bool = False
    vouched: str = ""  # for "certified": the CA that signed its host certificate, and the line trusting it
    key: Any = field(default=None, compare=False, repr=False)


Decide = Callable[[HopKey], bool]


def trust(host: Host, ssh: SSHConfig, decide: Decide) -> list[HopKey]:
    """Check every hop's key on the way to `host`; pin the new ones `decide` accepts. A refused or changed key
    raises HostKeyError, and then nothing is written."""
    path = route(host, ssh)
    transports: list[paramiko.Transport] = []
    found: list[HopKey] = []
    try:
        sock = None
        for index, hop in enumerate(path.hops):
            transport = open_transport(path, hop, sock, ssh.connect_timeout)
            transports.append(transport)
            found.append(_decide(host.name, hop, hop != path.target, transport, decide, hop_label(path, hop)))
            if index + 1 < len(path.hops):
                authenticate(path, hop, transport, ssh)
                sock = tunnel(path, transport, hop, path.hops[index + 1], ssh.connect_timeout)
    finally:
        for transport in reversed(transports):
            transport.close()
    return [pin(item) if item.status == NEW else item for item in found]


def pin(item: HopKey) -> HopKey:
    """Write an accepted key into its known_hosts (the one write of a host key topdeck makes)."""
    accept_host_key(item.known_hosts, "", 22, item.key, name=item.key_name)
    return dataclasses.replace(item, pinned=True)


def from_error(error: UnknownHostKey) -> HopKey:
    """The hop an UnknownHostKey from `connect` was about, to pin after the operator accepted it."""
    return HopKey(host=error.host, hop=error.host, jump=False, key_name=error.key_name or _name(error),
                  key_type=error.key.get_name(), fingerprint=error.fingerprint, status=NEW,
                  known_hosts=error.known_hosts, key=error.key)


def expect(fingerprints: Sequence[str]) -> Decide:
    """A `decide` for CI: accept a new key only when its fingerprint is one of `fingerprints`."""
    wanted = set(fingerprints)

    def decide(item: HopKey) -> bool:
        if item.fingerprint in wanted:
            return True
        raise HostKeyError(f"{item.host}: {_label(item)} presented {item.key_type} {item.fingerprint}, not "
                           f"{' or '.join(sorted(wanted))}; refusing it, nothing written")

    return decide


def _decide(host: str, hop: Endpoint, jump: bool, transport: Transport, decide: Decide, where: str) -> HopKey:
    """A hop's key: trusted (pinned), certified (a trusted CA signed its host certificate: nothing to pin), or new
    (asked)."""
    keys = host_keys_for(hop)
    key = transport.get_remote_server_key()
    item = HopKey(host=host, hop=hop.name, jump=jump, key_name=hop.key_name, key_type=key.get_name(),
                  fingerprint=fingerprint(key), status=TRUSTED, known_hosts=keys.path, key=key)
    try:
        how = keys.check(where, hop.hostname, hop.port, key, hop.key_name, certificate=transport.certificate())
        if how.startswith("certified"):
            return dataclasses.replace(item, status=CERTIFIED, vouched=how.removeprefix("certified by "))
        return item
    except ChangedHostKey:
        raise
    except UnknownHostKey as unknown:
        if keys.revoked(key):
            raise SSHError(str(unknown)) from None
    item = dataclasses.replace(item, status=NEW)
    if not decide(item):
        raise HostKeyError(f"{host}: {_label(item)} key {item.fingerprint} not accepted; nothing written")
    return item


def _label(item: HopKey) -> str:
    return f"jump host {item.hop}" if item.jump else "the host"


def _name(error: UnknownHostKey) -> str:
    return error.address if error.port == 22 else f"[{error.address}]:{error.port}"

