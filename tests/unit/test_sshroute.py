"""core/remote/sshroute.py: how an inventory host reads through a real ssh_config (parsed by paramiko's SSHConfig).

Pure logic, no network: which address, port, user, keys, jumps and known_hosts name each host gets. The lab tests
(tests/lab/test_bastion.py) connect through the same routes."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from topdeck.core.errors import InventoryError, SSHConfigError
from topdeck.core.inventory import Host, SSHConfig, load_inventory
from topdeck.core.remote.sshroute import route

CONFIG = """
# a fleet behind a bastion, as an operator writes it
Host bastion
    HostName bastion.example.org
    User jump
    Port 2200
    IdentityFile ~/.ssh/bastion_ed25519

Host web-*
    ProxyJump bastion
    User deploy
    IdentityFile ~/.ssh/fleet_ed25519
    IdentityFile ~/.ssh/old_rsa

Host web-1
    HostName 10.0.0.11

Host db-1
    HostName 10.0.1.5
    Port 2222
    ProxyJump ops@bastion:2201,inner-gw
    HostKeyAlias db-primary

Host inner-gw
    HostName 10.0.0.1
    ProxyJump none

Host legacy
    HostName 192.0.2.9
    IdentitiesOnly yes
    UserKnownHostsFile ~/.ssh/legacy_hosts /etc/legacy_hosts
    GlobalKnownHostsFile none

Host loop-a
    ProxyJump loop-b
Host loop-b
    ProxyJump loop-a

Host *
    User fallback
"""


@pytest.fixture
def ssh(tmp_path: Path) -> SSHConfig:
    config = tmp_path / "ssh_config"
    config.write_text(CONFIG)
    return SSHConfig(config=config, identity=tmp_path / "fleet_key")


def host(address: str, **explicit: object) -> Host:
    return Host(name="h", address=address, pointer="web", explicit=frozenset(explicit),
                **explicit)  # type: ignore[arg-type]


def test_an_alias_takes_hostname_user_port_keys_and_its_bastion(ssh: SSHConfig) -> None:
    found = route(host("web-1"), ssh)
    target = found.target
    assert (target.hostname, target.port, target.user) == ("10.0.0.11", 22, "deploy")
    home = Path("~").expanduser()
    assert target.identities == (ssh.identity, home / ".ssh/fleet_ed25519", home / ".ssh/old_rsa")
    assert target.aliased and target.key_name == "10.0.0.11"
    [bastion] = found.jumps
    assert (bastion.name, bastion.hostname, bastion.port, bastion.user) == ("bastion", "bastion.example.org", 2200,
                                                                           "jump")
    assert bastion.key_name == "[bastion.example.org]:2200"
    assert found.describe() == "h (deploy@10.0.0.11 via bastion)"


def test_what_host_toml_sets_wins_over_the_file(ssh: SSHConfig) -> None:
    target = route(host("web-1", user="admin", port=2022), ssh).target
    assert (target.user, target.port) == ("admin", 2022)
    assert target.key_name == "[10.0.0.11]:2022"


def test_a_chain_with_user_and_port_hops_each_looked_up(ssh: SSHConfig) -> None:
    found = route(host("db-1"), ssh)
    first, second = found.jumps
    assert (first.name, first.hostname, first.port, first.user) == ("bastion", "bastion.example.org", 2201, "ops")
    assert (second.name, second.hostname, second.user) == ("inner-gw", "10.0.0.1", "fallback")
    assert found.target.key_name == "[db-primary]:2222"  # HostKeyAlias, as OpenSSH looks the key up


def test_the_first_hops_own_proxyjump_comes_first(tmp_path: Path) -> None:
    config = tmp_path / "c"
    config.write_text("Host a\n  ProxyJump outer\nHost t\n  HostName 10.1.1.1\n  ProxyJump a,b\n")
    found = route(host("t"), SSHConfig(config=config))
    assert [jump.name for jump in found.jumps] == ["outer", "a", "b"]
    assert all(jump.user == getpass.getuser() for jump in found.jumps)  # OpenSSH's default for a hop


def test_a_proxyjump_loop_is_refused(ssh: SSHConfig) -> None:
    with pytest.raises(SSHConfigError, match="ProxyJump goes through more than 8 hosts"):
        route(host("loop-a"), ssh)


def test_known_hosts_files_and_identities_only(ssh: SSHConfig) -> None:
    target = route(host("legacy"), ssh).target
    assert target.identities_only
    assert target.user_known_hosts == (Path("~/.ssh/legacy_hosts").expanduser(), Path("/etc/legacy_hosts"))
    assert target.global_known_hosts == ()
    plain = route(host("192.0.2.10"), ssh).target
    assert plain.global_known_hosts == (Path("/etc/ssh/ssh_known_hosts"), Path("/etc/ssh/ssh_known_hosts2"))
    pinned = route(host("192.0.2.10"), SSHConfig(config=ssh.config, known_hosts=Path("/k"))).target
    assert pinned.user_known_hosts == (Path("/k"),)  # topdeck.toml's file wins, like `-o UserKnownHostsFile`


def test_an_address_no_block_names_is_used_as_it_is(ssh: SSHConfig) -> None:
    target = route(host("192.0.2.10"), ssh).target
    assert (target.hostname, target.user, target.aliased) == ("192.0.2.10", "fallback", False)
    assert route(host("192.0.2.10"), SSHConfig()).target.user == "root"  # no file: topdeck's default


@pytest.mark.parametrize("text,message", [
    ("Host x\n  HostName a;reboot\n", "HostName 'a;reboot' is not an IP address or host name"),
    ("Host x\n  HostName 10.0.0.1\n  Port 99999\n", "Port '99999' is not a port"),
    ("Host x\n  HostName 10.0.0.1\n  User $(id)\n", "User '$(id)' is not a valid user name"),
    ("Host x\n  HostName 10.0.0.1\n  ProxyJump a b\n", "ProxyJump hop 'a b' is not [user@]host[:port]"),
    ("Host x\n  HostName 10.0.0.1\n  ProxyJump j:0\n", "ProxyJump hop 'j:0': 0 is not a port"),
])
def test_bad_values_in_the_file_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "c"
    config.write_text(text)
    with pytest.raises(SSHConfigError, match=None) as caught:
        route(host("x"), SSHConfig(config=config))
    assert message in str(caught.value) and str(caught.value).startswith(str(config))


def test_the_inventory_reads_ssh_config_relative_to_itself(tmp_path: Path) -> None:
    (tmp_path / "topdeck.toml").write_text('[cache]\ntype = "dir"\npath = "c"\n[ssh]\nconfig = "ssh/config"\n')
    (tmp_path / "web-1").mkdir()
    (tmp_path / "web-1" / "host.toml").write_text('address = "web-1"\npointer = "web"\nport = 22\n')
    with pytest.raises(InventoryError, match=r"topdeck.toml: ssh.config: .*/ssh/config is not a file"):
        load_inventory(tmp_path)
    (tmp_path / "ssh").mkdir()
    (tmp_path / "ssh" / "config").write_text(CONFIG)
    inventory = load_inventory(tmp_path)
    assert inventory.ssh.config == tmp_path / "ssh" / "config"
    assert inventory.hosts[0].explicit == {"port"}
    assert route(inventory.hosts[0], inventory.ssh).target.user == "deploy"
