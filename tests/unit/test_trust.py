"""core.remote.trust without a network: the CI decision by fingerprint, the hop an UnknownHostKey names, and pinning it
into known_hosts (the whole walk over real hops: tests/lab/test_ssh_lab.py and test_bastion.py)."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from topdeck.core.errors import HostKeyError, UnknownHostKey
from topdeck.core.remote.ssh import HostKeys, fingerprint
from topdeck.core.remote.trust import NEW, HopKey, expect, from_error, pin

KEY = paramiko.ECDSAKey.generate()


def hop(fingerprint_: str, jump: bool = False) -> HopKey:
    return HopKey(host="web-1", hop="bastion" if jump else "web-1", jump=jump, key_name="10.0.0.1",
                  key_type="ecdsa-sha2-nistp256", fingerprint=fingerprint_, status=NEW, known_hosts=Path("kh"))


def test_expect_accepts_only_the_fingerprints_given() -> None:
    decide = expect(["SHA256:aaa", "SHA256:bbb"])
    assert decide(hop("SHA256:bbb"))
    with pytest.raises(HostKeyError) as caught:
        decide(hop("SHA256:evil"))
    assert str(caught.value) == ("web-1: the host presented ecdsa-sha2-nistp256 SHA256:evil, not SHA256:aaa or "
                                 "SHA256:bbb; refusing it, nothing written")
    with pytest.raises(HostKeyError, match="^web-1: jump host bastion presented"):
        decide(hop("SHA256:evil", jump=True))


@pytest.mark.parametrize(("port", "key_name", "pinned_as"), [
    (22, "", "10.0.0.1"), (2222, "", "[10.0.0.1]:2222"), (22, "web-1.example", "web-1.example")])
def test_an_unknown_key_becomes_a_hop_that_pins_where_ssh_will_look(tmp_path: Path, port, key_name, pinned_as) -> None:
    known_hosts = tmp_path / "known_hosts"
    error = UnknownHostKey("web-1: unknown host key", host="web-1", address="10.0.0.1", port=port, key=KEY,
                           fingerprint=fingerprint(KEY), known_hosts=known_hosts, key_name=key_name)
    item = from_error(error)
    assert (item.host, item.key_name, item.key_type, item.status, item.pinned) == (
        "web-1", pinned_as, "ecdsa-sha2-nistp256", NEW, False)
    assert pin(item).pinned
    assert known_hosts.read_text() == f"{pinned_as} {KEY.get_name()} {KEY.get_base64()}\n"
    assert [k.asbytes() for k in HostKeys(known_hosts).lookup_name(pinned_as)] == [KEY.asbytes()]
