"""OpenSSH's conventions end to end: hosts behind a bastion in network namespaces of their own, reached through
ProxyJump in an ssh_config, host keys from global known_hosts files, `topdeck trust`, passphrase-protected keys.

The lab: `bastion` (native) in a namespace of its own, reachable from this machine at 10.250.30.2; behind it, in a
namespace that only the bastion reaches, inner-1 (native, sshd also on port 2222), inner-2 (Debian 13, Nix 2.26)
and inner-3 (Debian sid, Nix 2.34). The inventory names them by ssh_config aliases only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest
from conftest import write_lab_inventory
from deploytools import deploy, release, state, topdeck
from opensshlab import wait_for_agent

from topdeck.core.errors import SSHError, UnknownHostKey
from topdeck.core.inventory import Host, SSHConfig, load_inventory
from topdeck.core.remote.ssh import AskOnce, connect
from topdeck.lab import netns
from topdeck.lab.lab import Lab

KINDS = {"bastion": "native", "inner-1": "native", "inner-2": "trixie", "inner-3": "sid"}
ALIASES = {"inner-1": "web-a", "inner-2": "web-b", "inner-3": "db-c"}
ROLES = {"inner-1": "web", "inner-2": "web", "inner-3": "db"}
LAYOUT = netns.Layout("bastion", ("inner-1", "inner-2", "inner-3"), 30)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("bastionlab"), base_address="127.0.30.1", emulator_port=0)
    lab.up(hosts=dict.fromkeys(KINDS, ""), kinds=KINDS, network=LAYOUT,
           listen={"inner-1": (f"{LAYOUT.address_of('inner-1')}:2222",)}, log=lambda *_: None)
    try:
        yield lab
    finally:
        lab.down(log=lambda *_: None)
    assert not [p for p in netns.NETNS_DIR.glob(f"{netns.PREFIX}{netns.tag_of(lab.root)}-*")], "namespaces left"


def ssh_config(lab: Lab, path, *, user_known_hosts=None, global_known_hosts="/nonexistent", identity=None,
               jump=True, extra=""):
    """An ssh_config naming the lab's hosts by alias: web-a, web-b, db-c behind `bastion` (db-c through a
    two-hop chain: the bastion, then the bastion again at its inner address)."""
    via = "ProxyJump bastion" if jump else ""
    path.write_text(f"""{extra}
Host bastion
    HostName {LAYOUT.bastion_address}
    User root
Host bastion-inner
    HostName {LAYOUT.bastion_inner_address}
Host web-a
    HostName {LAYOUT.address_of('inner-1')}
    Port 2222
    {via}
Host web-b
    HostName {LAYOUT.address_of('inner-2')}
    User topdeck-deployer
    {via}
Host db-c
    HostName {LAYOUT.address_of('inner-3')}
    {"ProxyJump bastion,root@bastion-inner" if jump else ""}
Host *
    User root
    IdentityFile {identity or lab.client_key}
    UserKnownHostsFile {user_known_hosts or lab.known_hosts}
    GlobalKnownHostsFile {global_known_hosts}
""")
    return path


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    root = tmp_path_factory.mktemp("bastion") / "hosts"
    write_lab_inventory(lab, root, f"bastion-{uuid.uuid4().hex[:6]}", roles=ROLES)
    config = ssh_config(lab, root.parent / "ssh_config")
    text = (root / "topdeck.toml").read_text().split("[ssh]")[0]
    (root / "topdeck.toml").write_text(text + '[ssh]\nconfig = "../ssh_config"\nconnect_timeout = 5\n'
                                       "\n[deploy]\nconfirm_timeout = 8\n")
    for name, alias in ALIASES.items():
        host = root / name / "host.toml"
        host.write_text(host.read_text().replace(f'address = "{lab.host(name).address}"', f'address = "{alias}"'))
    inner_2 = root / "inner-2" / "host.toml"  # its user comes from ssh_config: not root, so sudo
    inner_2.write_text("sudo = true\n" + inner_2.read_text())
    assert config.exists()
    release(root, "web", lambda spec: spec, via="inner-1")
    release(root, "db", lambda spec: spec, via="inner-3")
    return root


def test_plan_deploy_and_rollback_through_the_bastion(lab, inventory):
    before = {name: state(lab, name) for name in ALIASES}
    targets = {"web": release(inventory, "web", lambda spec: spec, via="inner-1"),
               "db": release(inventory, "db", lambda spec: spec, via="inner-3")}

    plan = topdeck(inventory, "plan", "--json")
    assert plan.returncode == 0, plan.stderr
    result, _, outcomes = deploy(inventory)

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "Accepted publickey for topdeck-deployer" in lab.host("inner-2").sshd_log.read_text()  # and sudo
    for name, role in ROLES.items():
        assert outcomes[name]["outcome"] == "done", outcomes[name]
        assert state(lab, name)["current"] == targets[role], name
    back = topdeck(inventory, "rollback", *ALIASES, "--yes")
    assert back.returncode == 0, back.stdout + back.stderr
    for name in ALIASES:
        assert state(lab, name)["current"] == before[name]["current"], name


def test_the_alias_settings_apply(lab, inventory):
    inv = load_inventory(inventory)
    for name, expected_port, expected_user, init in (("inner-1", 2222, "root", "sh"),
                                                     ("inner-2", 22, "topdeck-deployer", "systemd"),
                                                     ("inner-3", 22, "root", "systemd")):
        with connect(inv.host(name), inv.ssh) as session:
            out = session.run("echo $SSH_CONNECTION; id -un; cat /proc/1/comm").stdout.decode().split()
        _, _, server, port, user, pid1 = out
        assert (server, int(port), user) == (LAYOUT.address_of(name), expected_port, expected_user), out
        assert (session.host.user, session.host.port) == (expected_user, expected_port)
        assert (pid1 == "systemd") == (init == "systemd"), (name, pid1)
        assert session.where.startswith(f"{name} ({expected_user}@{LAYOUT.address_of(name)}")
        assert session.route.jumps[-1].name == ("bastion-inner" if name == "inner-3" else "bastion")


def test_without_the_jump_the_host_is_unreachable(lab, tmp_path):
    config = ssh_config(lab, tmp_path / "ssh_config", jump=False)
    ssh = SSHConfig(config=config, connect_timeout=5)
    with pytest.raises(SSHError, match=r"^inner-1 \(root@10\.250\.31\.2:2222\): unreachable: no route to host$"):
        connect(Host("inner-1", "web-a", "web"), ssh)


def test_a_bastion_that_is_down_is_named(lab, tmp_path):
    ssh = SSHConfig(config=ssh_config(lab, tmp_path / "ssh_config"), connect_timeout=5)
    lab.stop_host("bastion")
    try:
        with pytest.raises(SSHError) as caught:
            connect(Host("inner-2", "web-b", "web"), ssh)
    finally:
        lab.start_host("bastion")
    assert str(caught.value) == (f"inner-2: jump host bastion (root@{LAYOUT.bastion_address}): unreachable: "
                                 "connection refused")


def test_a_host_down_behind_a_live_bastion_is_named_with_it(lab, tmp_path):
    ssh = SSHConfig(config=ssh_config(lab, tmp_path / "ssh_config"), connect_timeout=5)
    lab.stop_host("inner-3")
    try:
        with pytest.raises(SSHError) as caught:
            connect(Host("inner-3", "db-c", "db"), ssh)
    finally:
        lab.start_host("inner-3")
    assert str(caught.value) == (f"inner-3 (root@{LAYOUT.address_of('inner-3')} via bastion,bastion-inner): "
                                 "unreachable from jump host bastion-inner: connection failed")


def test_a_key_only_in_a_global_known_hosts_file_is_accepted(lab, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    host = Host("inner-2", "web-b", "web")
    accepted = SSHConfig(config=ssh_config(lab, tmp_path / "a", user_known_hosts=empty,
                                           global_known_hosts=lab.known_hosts), connect_timeout=5)
    with connect(host, accepted) as session:
        assert session.run("true").ok
    refused = SSHConfig(config=ssh_config(lab, tmp_path / "b", user_known_hosts=empty), connect_timeout=5)
    with pytest.raises(UnknownHostKey, match="jump host bastion"):
        connect(host, refused)
    assert empty.read_text() == ""


def fingerprint_of(lab: Lab, name: str) -> str:
    pub = lab.host(name).host_key_path.with_suffix(".pub")
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def test_trust_pins_the_host_and_its_bastion_then_deploys_work(lab, inventory, tmp_path):
    known = tmp_path / "known_hosts"
    ssh_config(lab, inventory.parent / "ssh_config", user_known_hosts=known)
    try:
        wrong = topdeck(inventory, "trust", "inner-2", "--fingerprint", fingerprint_of(lab, "inner-1"))
        assert wrong.returncode == 1 and not known.exists(), wrong.stdout + wrong.stderr
        assert wrong.stderr.count("\n") == 1 and "jump host bastion presented ssh-ed25519" in wrong.stderr
        assert "nothing written" in wrong.stderr

        pinned = topdeck(inventory, "trust", "inner-2", "--json", "--fingerprint", fingerprint_of(lab, "bastion"),
                         "--fingerprint", fingerprint_of(lab, "inner-2"))
        assert pinned.returncode == 0, pinned.stderr
        hops = json.loads(pinned.stdout)
        assert [(h["hop"], h["jump"], h["pinned"]) for h in hops] == [("bastion", True, True), ("web-b", False, True)]
        lines = known.read_text().splitlines()
        assert lines == [f"{LAYOUT.bastion_address} {lab.host('bastion').public_host_key()}",
                         f"{LAYOUT.address_of('inner-2')} {lab.host('inner-2').public_host_key()}"]
        again = topdeck(inventory, "trust", "inner-2", "--yes")
        assert again.returncode == 0 and again.stdout.count("already trusted") == 2, again.stdout
        assert known.read_text().splitlines() == lines
        listed = topdeck(inventory, "generations", "inner-2", "--json")  # a login through the bastion
        assert listed.returncode == 0, listed.stderr
        assert any(g["current"] for g in json.loads(listed.stdout))
    finally:
        ssh_config(lab, inventory.parent / "ssh_config")


@pytest.fixture(scope="module")
def locked_key(lab, tmp_path_factory):
    """The lab's key under a passphrase."""
    key = tmp_path_factory.mktemp("locked") / "id_ed25519"
    shutil.copy(lab.client_key, key)
    shutil.copy(lab.client_key.with_suffix(".pub"), key.with_suffix(".pub"))
    subprocess.run(["ssh-keygen", "-q", "-p", "-N", "sesame-42", "-f", str(key)], check=True, capture_output=True)
    return key


def test_a_passphrase_key_is_asked_for_once(lab, locked_key, tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    asked = []
    ask = AskOnce(lambda path: asked.append(path) or "sesame-42")
    ssh = SSHConfig(config=ssh_config(lab, tmp_path / "c", identity=locked_key), connect_timeout=5, passphrase=ask)
    for name in ("inner-1", "inner-2"):
        with connect(Host(name, ALIASES[name], "web"), ssh) as session:
            assert session.run("true").ok
    assert asked == [locked_key]  # once, for the bastion and both hosts


def test_a_passphrase_key_without_a_way_to_ask_says_to_use_the_agent(lab, locked_key, tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    ssh = SSHConfig(config=ssh_config(lab, tmp_path / "c", identity=locked_key), connect_timeout=5)
    with pytest.raises(SSHError) as caught:
        connect(Host("inner-1", "web-a", "web"), ssh)
    assert str(caught.value) == (f"inner-1: jump host bastion (root@{LAYOUT.bastion_address}): the key {locked_key} "
                                 "is protected by a passphrase and there is no terminal to ask for it: load it into "
                                 f"ssh-agent (ssh-add {locked_key})")


def test_a_passphrase_key_in_ssh_agent_is_used(lab, locked_key, tmp_path, monkeypatch):
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        askpass = tmp_path / "askpass"
        askpass.write_text("#!/bin/sh\necho sesame-42\n")
        askpass.chmod(0o700)
        wait_for_agent(socket_path)
        env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path), "SSH_ASKPASS": str(askpass),
               "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
        subprocess.run(["ssh-add", str(locked_key)], env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        ssh = SSHConfig(config=ssh_config(lab, tmp_path / "c", identity=locked_key), connect_timeout=5)
        with connect(Host("inner-3", "db-c", "db"), ssh) as session:  # no passphrase callback: the agent signs
            assert session.run("true").ok
        only = SSHConfig(config=ssh_config(lab, tmp_path / "d", identity=locked_key, extra="IdentitiesOnly yes"),
                         connect_timeout=5)
        with connect(Host("inner-1", "web-a", "web"), only) as session:  # the agent's copy of the configured key
            assert session.run("true").ok
    finally:
        agent.terminate()
        agent.wait(5)


def run_on_a_terminal(inventory, answers: dict[str, str], *args: str) -> tuple[int, str]:
    """Run `topdeck ARGS` with a pseudo-terminal as stdin, stdout and stderr, answering each prompt that ends with a
    key of `answers`; the exit code and everything the terminal showed."""
    import pty
    import select
    import sys
    import time

    from topdeck.lab.nixenv import lab_env

    pid, fd = pty.fork()
    if pid == 0:  # the child: never goes back into pytest, whatever happens
        try:
            os.execve(sys.executable, [sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory),
                                       *args], {**lab_env(), "SSH_AUTH_SOCK": ""})
        finally:
            os._exit(127)
    shown, answered, deadline = b"", {}, time.monotonic() + 120
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 0.5)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
        for prompt, answer in answers.items():
            asked = shown.count(prompt.encode())
            if shown.rstrip(b" ").endswith(prompt.encode()) and answered.get(prompt, 0) < asked:
                os.write(fd, answer.encode() + b"\n")  # once per time the prompt is shown
                answered[prompt] = asked
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_the_cli_asks_a_key_passphrase_once_on_the_terminal_and_never_shows_it(lab, inventory, locked_key):
    ssh_config(lab, inventory.parent / "ssh_config", identity=locked_key)
    try:
        code, shown = run_on_a_terminal(inventory, {f"Passphrase for {locked_key}:": "sesame-42"},
                                        "generations", "inner-1", "--json")
    finally:
        ssh_config(lab, inventory.parent / "ssh_config")
    assert code == 0, shown
    assert shown.count("Passphrase for") == 1  # the bastion and the host: one key file, asked once
    assert "sesame-42" not in shown
    assert '"current": true' in shown


def test_trust_asks_on_the_terminal_for_each_new_hop(lab, inventory, tmp_path):
    known = tmp_path / "known_hosts"
    ssh_config(lab, inventory.parent / "ssh_config", user_known_hosts=known)
    try:
        code, shown = run_on_a_terminal(inventory, {"[y/N]": "y"}, "trust", "inner-3")
    finally:
        ssh_config(lab, inventory.parent / "ssh_config")
    assert code == 0, shown
    for hop in ("bastion", "bastion-inner"):
        assert f"jump host {hop} (for inner-3): new host key ssh-ed25519 {fingerprint_of(lab, 'bastion')}" in shown
    assert f"new host key ssh-ed25519 {fingerprint_of(lab, 'inner-3')} for {LAYOUT.address_of('inner-3')}" in shown
    assert known.read_text().splitlines() == [
        f"{LAYOUT.bastion_address} {lab.host('bastion').public_host_key()}",
        f"{LAYOUT.bastion_inner_address} {lab.host('bastion').public_host_key()}",
        f"{LAYOUT.address_of('inner-3')} {lab.host('inner-3').public_host_key()}"]
