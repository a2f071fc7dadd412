"""topdeck against real OpenSSH servers, each case compared with `ssh -F` on the same ~/.ssh (issue 23's table).

Servers: this machine's sshd 9.2 and, where the image is cached, the sid image's sshd 10.x (tests/opensshlab.py).
No Nix and no topdeck lab; run in a network namespace of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opensshlab import SSHLab, run, sid_root

from topdeck.core.errors import ChangedHostKey, TopdeckError
from topdeck.core.inventory import Host, SSHConfig
from topdeck.core.remote import trust
from topdeck.core.remote.ssh import connect

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SSHLab]:
    found = SSHLab(tmp_path)
    found.setup()
    monkeypatch.setenv("HOME", str(found.home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    try:
        yield found
    finally:
        found.close()


def topdeck(config: Path, name: str, *, timeout: float = 10.0) -> tuple[bool, str, float]:
    """topdeck's connect to `name` through the same config: logged in (and the server's SSH_CONNECTION), or the
    error line; seconds taken."""
    host = Host(name="h", address=name, pointer="p")
    start = time.monotonic()
    try:
        with connect(host, SSHConfig(config=config, connect_timeout=timeout)) as session:
            out = session.run("echo $SSH_CONNECTION", timeout=20).stdout.decode().strip()
        return True, out, time.monotonic() - start
    except TopdeckError as error:
        return False, str(error), time.monotonic() - start


def server_of(connection: str) -> str:
    return connection.split()[2]


def pin(lab: SSHLab, name: str, key: Path, marker: str = "") -> None:
    with (lab.dot_ssh / "known_hosts").open("a") as handle:
        handle.write(f"{marker + ' ' if marker else ''}{name} {lab.pub(key)}\n")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def both(lab: SSHLab, config: Path, name: str) -> tuple[tuple[int, str, str, float], tuple[bool, str, float]]:
    return lab.ssh(config, name), topdeck(config, name)


def test_include_globs_nesting_host_blocks_and_first_value_wins(lab: SSHLab) -> None:
    a, b = lab.sshd("a"), lab.sshd("b")
    for server in (a, b):
        pin(lab, server.address, server.keys["ed25519"])
    key = lab.operator
    config = write(lab.dot_ssh / "config", f"Include config.d/*.conf\nHost web-*\n  Include ~/.ssh/web/*\n"
                   f"Host *\n  IdentityFile {key}\n  HostName 127.255.255.254\n")
    write(lab.dot_ssh / "config.d" / "10-a.conf", f"Include nested/deeper\nHost alpha\n  HostName {a.address}\n"
          "Include nested/deeper\n")  # inside Host alpha, its Host gamma can never match
    write(lab.dot_ssh / "config.d" / "20-b.conf", f"Host alpha beta\n  HostName {b.address}\n")  # alpha: first wins
    write(lab.dot_ssh / "nested" / "deeper", f"Host gamma\n  HostName {b.address}\n")
    write(lab.dot_ssh / "web" / "one", f"HostName {a.address}\n")  # only for web-*, as its Host block says
    for name, server in (("alpha", a), ("beta", b), ("gamma", b), ("web-9", a)):
        (status, out, err, _), (ok, said, _) = both(lab, config, name)
        assert status == 0, (name, err)
        assert ok, (name, said)
        assert server_of(out) == server_of(said) == server.address, name


def test_proxycommand_is_used_even_when_the_target_is_reachable(lab: SSHLab) -> None:
    target = lab.sshd("target")
    pin(lab, target.address, target.keys["ed25519"])
    log = lab.root / "relay.log"
    config = write(lab.dot_ssh / "config", f"Host t\n  HostName {target.address}\n  IdentityFile {lab.operator}\n"
                   f"  ProxyCommand python3 {lab.root}/relay.py {log} %h %p\n"
                   f"  ProxyJump nobody-this-loses\n")
    (status, out, err, _), (ok, said, _) = both(lab, config, "t")
    assert status == 0, err
    assert ok, said
    # both went through the relay: it logged one line per client, and the server saw the relay's connection
    assert log.read_text().splitlines() == [f"{target.address}:22"] * 2


def test_proxycommand_ssh_w_reaches_a_target_only_the_jump_host_can_name(lab: SSHLab) -> None:
    hosts = write(lab.root / "jump-hosts", "")
    inner = lab.sshd("inner")
    hosts.write_text(f"127.0.0.1 localhost\n{inner.address} inner.internal\n")
    jump = lab.sshd("jump", hosts_file=str(hosts))
    known = lab.dot_ssh / "known_hosts"
    pin(lab, jump.address, jump.keys["ed25519"])
    pin(lab, "inner.internal", inner.keys["ed25519"])
    proxy = (f"ssh -o BatchMode=yes -o UserKnownHostsFile={known} -o GlobalKnownHostsFile=/dev/null "
             f"-i {lab.operator} -W %h:%p root@{jump.address}")
    config = write(lab.dot_ssh / "config", f"Host inner\n  HostName inner.internal\n  IdentityFile {lab.operator}\n"
                   f"  ProxyCommand {proxy}\n")
    (status, out, err, _), (ok, said, _) = both(lab, config, "inner")
    assert status == 0, err
    assert ok, said
    assert server_of(out) == server_of(said) == inner.address


def test_a_proxycommand_that_fails_is_named_with_its_status(lab: SSHLab) -> None:
    config = write(lab.dot_ssh / "config",
                   "Host t\n  HostName 10.9.9.9\n  ProxyCommand sh -c 'echo no route >&2; exit 3'\n")
    (status, _, err, _), (ok, said, _) = both(lab, config, "t")
    assert status != 0 and not ok
    assert "ProxyCommand exited with status 3: 'no route'" in said, said


def _fleet_with_ca(lab: SSHLab, principals: str, validity: str = "-5m:+1h") -> tuple[Path, str]:
    web = lab.sshd("web")
    cert = lab.sign_host(web, "ed25519", principals, validity)
    lab.restart(web, certs=(cert,))
    config = write(lab.dot_ssh / "config", f"Host web1.fleet\n  HostKeyAlias web1.fleet\nHost *.fleet\n"
                   f"  HostName {web.address}\n  IdentityFile {lab.operator}\n")
    return config, web.address


@pytest.mark.parametrize("principals,validity,ca_line,works", [
    ("web1.fleet", "-5m:+1h", "*.fleet", True),
    ("web1.fleet,other", "-5m:+1h", "*.fleet,!db*.fleet", True),
    ("web2.fleet", "-5m:+1h", "*.fleet", False),  # not a principal
    ("web1.fleet", "-2h:-1h", "*.fleet", False),  # expired
    ("web1.fleet", "-5m:+1h", "*.fleet,!web1.fleet", False),  # negated
    ("web1.fleet", "-5m:+1h", "*.example", False),  # the CA is not trusted for this name
])
def test_host_certificates_as_openssh_checks_them(lab: SSHLab, principals: str, validity: str, ca_line: str,
                                                  works: bool) -> None:
    config, _ = _fleet_with_ca(lab, principals, validity)
    pin(lab, ca_line, lab.ca, "@cert-authority")
    (status, out, err, _), (ok, said, _) = both(lab, config, "web1.fleet")
    assert (status == 0) == works, err
    assert ok == works, said
    if not works:
        assert "host certificate not accepted" in said or "unknown host key" in said


def test_a_revoked_ca_is_not_trusted(lab: SSHLab) -> None:
    config, _ = _fleet_with_ca(lab, "web1.fleet")
    pin(lab, "*.fleet", lab.ca, "@cert-authority")
    pin(lab, "*", lab.ca, "@revoked")
    (status, _, err, _), (ok, said, _) = both(lab, config, "web1.fleet")
    assert status != 0 and not ok
    assert "host certificate not accepted: its CA" in said and "is marked @revoked" in said, said


def test_trust_on_a_certified_host_pins_nothing(lab: SSHLab) -> None:
    config, _ = _fleet_with_ca(lab, "web1.fleet")
    pin(lab, "*.fleet", lab.ca, "@cert-authority")
    before = (lab.dot_ssh / "known_hosts").read_text()
    found = trust.trust(Host(name="h", address="web1.fleet", pointer="p"), SSHConfig(config=config),
                        lambda item: pytest.fail("asked to pin a certified key"))
    assert [item.status for item in found] == [trust.CERTIFIED]
    assert "CA SHA256:" in found[0].vouched
    assert (lab.dot_ssh / "known_hosts").read_text() == before


def test_certificatefile_not_beside_the_key(lab: SSHLab) -> None:
    user = lab.keygen(lab.root / "keys" / "id_user")  # not in authorized_keys: only its certificate logs in
    cert = lab.sign_user(user, lab.root / "certs" / "user-cert.pub")
    web = lab.sshd("web")
    pin(lab, web.address, web.keys["ed25519"])
    config = write(lab.dot_ssh / "config", f"Host w\n  HostName {web.address}\n  IdentityFile {user}\n"
                   f"  CertificateFile {cert}\n")
    (status, _, err, _), (ok, said, _) = both(lab, config, "w")
    assert status == 0, err
    assert ok, said


def test_an_rsa_pin_is_honoured_when_the_server_also_has_ed25519(lab: SSHLab) -> None:
    web = lab.sshd("web", kinds=("ed25519", "rsa", "ecdsa"))
    config = write(lab.dot_ssh / "config", f"Host w\n  HostName {web.address}\n  IdentityFile {lab.operator}\n")
    for kind in ("rsa", "ecdsa"):
        (lab.dot_ssh / "known_hosts").write_text(f"{web.address} {lab.pub(web.keys[kind])}\n")
        (status, _, err, _), (ok, said, _) = both(lab, config, "w")
        assert status == 0, err
        assert ok, said
    other = lab.keygen(lab.root / "other_rsa", "rsa")
    (lab.dot_ssh / "known_hosts").write_text(f"{web.address} {lab.pub(other)}\n")
    (status, _, err, _), (ok, said, _) = both(lab, config, "w")
    assert status != 0 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in err
    assert not ok and said.startswith(f"h ({web.address}): HOST KEY CHANGED")
    with pytest.raises(ChangedHostKey) as caught:  # `topdeck trust` names it the same way, the host once
        trust.trust(Host(name="h", address="w", pointer="p"), SSHConfig(config=config), lambda item: True)
    assert str(caught.value).startswith(f"h ({web.address}): HOST KEY CHANGED")


def test_agent_keys_first_under_maxauthtries(lab: SSHLab) -> None:
    wrong = [lab.keygen(lab.root / "keys" / f"wrong{i}") for i in range(4)]
    web = lab.sshd("web", options="MaxAuthTries 3")
    pin(lab, web.address, web.keys["ed25519"])
    env = lab.agent(wrong[0], wrong[1], lab.operator)
    config = write(lab.dot_ssh / "config", f"Host w\n  HostName {web.address}\n  IdentityFile {wrong[2]}\n"
                   f"  IdentityFile {wrong[3]}\n")
    status, _, err, _ = lab.ssh(config, "w", env=env)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSH_AUTH_SOCK", env["SSH_AUTH_SOCK"])
        ok, said, _ = topdeck(config, "w")
    assert status == 0, err
    assert ok, said


def test_too_many_authentication_failures_is_named(lab: SSHLab) -> None:
    wrong = [lab.keygen(lab.root / "keys" / f"wrong{i}") for i in range(4)]
    web = lab.sshd("web", options="MaxAuthTries 2")
    pin(lab, web.address, web.keys["ed25519"])
    env = lab.agent(*wrong)
    config = write(lab.dot_ssh / "config", f"Host w\n  HostName {web.address}\n  IdentityFile {lab.operator}\n")
    status, _, err, _ = lab.ssh(config, "w", env=env)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSH_AUTH_SOCK", env["SSH_AUTH_SOCK"])
        ok, said, _ = topdeck(config, "w")
    assert status != 0 and "Too many authentication failures" in err
    assert not ok and "too many authentication failures" in said, said


def test_identitiesonly_with_a_pub_identityfile_uses_the_agents_key(lab: SSHLab) -> None:
    web = lab.sshd("web")
    pin(lab, web.address, web.keys["ed25519"])
    wrong = lab.keygen(lab.root / "keys" / "wrong")
    env = lab.agent(wrong, lab.operator)
    public = write(lab.root / "token" / "op.pub", lab.operator.with_name("id_ed25519.pub").read_text())
    config = write(lab.dot_ssh / "config", f"Host w\n  HostName {web.address}\n  IdentitiesOnly yes\n"
                   f"  IdentityFile {public}\n")
    status, _, err, _ = lab.ssh(config, "w", env=env)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSH_AUTH_SOCK", env["SSH_AUTH_SOCK"])
        ok, said, _ = topdeck(config, "w")
    assert status == 0, err
    assert ok, said


def test_connecttimeout_is_honoured(lab: SSHLab) -> None:
    address, _ = lab.silent_listener()
    config = write(lab.dot_ssh / "config", f"Host s\n  HostName {address}\n  ConnectTimeout 3\n"
                   f"  IdentityFile {lab.operator}\n")
    status, _, err, seconds = lab.ssh(config, "s")
    assert status != 0 and 2.5 < seconds < 6, (err, seconds)
    ok, said, took = topdeck(config, "s", timeout=20)
    assert not ok and 2.5 < took < 6 and "3 s" in said, (said, took)


def test_a_closed_connection_is_named_as_such(lab: SSHLab) -> None:
    address, _ = lab.silent_listener(close=True)
    config = write(lab.dot_ssh / "config", f"Host s\n  HostName {address}\n  IdentityFile {lab.operator}\n")
    (status, _, err, _), (ok, said, _) = both(lab, config, "s")
    assert status != 0 and "closed" in err.lower()
    assert not ok and "closed the connection before its SSH banner" in said, said


def test_curve25519_sha256_only_on_sshd_9(lab: SSHLab) -> None:
    web = lab.sshd("web", options="KexAlgorithms curve25519-sha256")
    pin(lab, web.address, web.keys["ed25519"])
    config = write(lab.dot_ssh / "config", f"Host w\n  HostName {web.address}\n  IdentityFile {lab.operator}\n")
    (status, _, err, _), (ok, said, _) = both(lab, config, "w")
    assert status == 0, err
    assert ok, said


@pytest.mark.skipif(sid_root() is None, reason="the sid image root is not cached here")
def test_openssh_10_with_only_modern_kex_and_a_host_certificate(lab: SSHLab) -> None:
    web = lab.sshd("web10", sid=True, options="KexAlgorithms curve25519-sha256,mlkem768x25519-sha256")
    cert = lab.sign_host(web, "ed25519", "web10.fleet")
    lab.restart(web, certs=(cert,), sid=True, options="KexAlgorithms curve25519-sha256,mlkem768x25519-sha256")
    pin(lab, "*.fleet", lab.ca, "@cert-authority")
    config = write(lab.dot_ssh / "config", f"Host web10.fleet\n  HostKeyAlias web10.fleet\n"
                   f"  HostName {web.address}\n  IdentityFile {lab.operator}\n")
    status, out, err, _ = lab.ssh(config, "web10.fleet", "ssh -V 2>&1; sshd -V 2>&1 | head -1")
    ok, said, _ = topdeck(config, "web10.fleet")
    assert status == 0, err
    assert ok, said


def test_match_exec_is_refused_in_one_line(lab: SSHLab) -> None:
    web = lab.sshd("web")
    pin(lab, web.address, web.keys["ed25519"])
    config = write(lab.dot_ssh / "config", f"Match host w exec true\n  User root\nHost w\n  HostName {web.address}\n"
                   f"  IdentityFile {lab.operator}\n")
    (status, _, err, _), (ok, said, _) = both(lab, config, "w")
    assert status == 0, err  # ssh runs the command; topdeck will not, and says so
    assert not ok and said == f"{config}:1: Match exec is not supported by topdeck (it cannot evaluate it as ssh " \
                              "would); give this host its options without it"


def _cli(inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory), *args],
                          capture_output=True, text=True, timeout=120, env=env, check=False)


def test_topdeck_trust_says_certified_and_pins_nothing_or_shows_the_fingerprint(lab: SSHLab) -> None:
    config, address = _fleet_with_ca(lab, "web1.fleet")
    plain = lab.sshd("plain")
    pin(lab, "*.fleet", lab.ca, "@cert-authority")
    with (lab.dot_ssh / "config").open("a") as handle:
        handle.write(f"Host plain\n  HostName {plain.address}\n  IdentityFile {lab.operator}\n")
    inventory = lab.root / "inventory"
    write(inventory / "topdeck.toml", f'[cache]\ntype = "dir"\npath = "cache"\n[ssh]\nconfig = "{config}"\n')
    write(inventory / "web1" / "host.toml", 'address = "web1.fleet"\npointer = "web"\n')
    write(inventory / "plain" / "host.toml", 'address = "plain"\npointer = "web"\n')
    before = (lab.dot_ssh / "known_hosts").read_text()
    certified = _cli(inventory, "trust", "web1", "--yes")
    assert certified.returncode == 0, certified.stderr
    assert "has a host certificate signed by a trusted CA: ssh-ed25519 CA SHA256:" in certified.stdout
    assert "nothing to pin" in certified.stdout
    assert (lab.dot_ssh / "known_hosts").read_text() == before
    fingerprint = run(["ssh-keygen", "-lf", str(plain.keys["ed25519"])]).split()[1]
    pinned = _cli(inventory, "trust", "plain", "--fingerprint", fingerprint)
    assert pinned.returncode == 0, pinned.stderr
    assert f"ssh-ed25519 {fingerprint} ({plain.address}) pinned into" in pinned.stdout
    status, _, err, _ = lab.ssh(config, "plain")  # what topdeck pinned, ssh accepts
    assert status == 0, err


@pytest.mark.skipif(sid_root() is None, reason="the sid image root is not cached here")
def test_a_source_penalised_by_openssh_10_is_named(lab: SSHLab) -> None:
    options = "PerSourcePenalties authfail:60s min:1s\nPerSourceNetBlockSize 32:128\nMaxAuthTries 1"
    web = lab.sshd("web10", sid=True, options=options)
    pin(lab, web.address, web.keys["ed25519"])
    wrong = lab.keygen(lab.root / "keys" / "wrong")
    lab.ssh(write(lab.root / "wrong.conf", f"Host w\n  HostName {web.address}\n  IdentityFile {wrong}\n"
                  "  IdentitiesOnly yes\n"), "w")  # one failed login: the source is penalised
    config = write(lab.dot_ssh / "config", f"Host w\n  HostName {web.address}\n  IdentityFile {lab.operator}\n")
    (status, _, err, _), (ok, said, took) = both(lab, config, "w")
    assert status != 0 and ("closed" in err.lower() or "reset" in err.lower()), err  # sshd may close or reset
    assert not ok and "PerSourcePenalties" in said and took < 5, said
