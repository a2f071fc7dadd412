"""The pull agent as careful as a deploy (issue 26, item 4), on hosts of every kind (host-1 native Nix 2.8, host-2
trixie 2.26, host-3 sid 2.34): the unit `topdeck agent-config HOST` and the module give the host, run as its timer
runs it, switches to a good system and confirms it with the deploy's health check; a system that fails the check is
rolled back by the agent itself; `topdeck status` reports both outcomes, as the host kept them."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from agentmodule import configuration, systemd_units
from deploytools import MIXED_KINDS, deploy_inventory, release, state, three_host_lab, topdeck
from labtools import ssh_run

from topdeck.core.remote.hostverbs import host_script
from topdeck.lab import factory

pytestmark = pytest.mark.lab
HOSTS = tuple(MIXED_KINDS)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):  # type: ignore[no-untyped-def]
    with three_host_lab(tmp_path_factory.mktemp("agentlab"), "127.0.48.11", kinds=MIXED_KINDS) as lab:
        yield lab


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):  # type: ignore[no-untyped-def]
    return deploy_inventory(lab, tmp_path_factory.mktemp("agent") / "hosts", 8)


def set_check(inventory, command: str) -> None:  # type: ignore[no-untyped-def]
    config = inventory / "topdeck.toml"
    text = re.sub(r"\n\[checks\.all\]\ncommand = '[^\n]*'\n", "\n", config.read_text())
    config.write_text(f"{text}\n[checks.all]\ncommand = '{command}'\n")


def run_agent(lab, inventory, name: str, tmp_path) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """The agent's unit as the module makes it from `agent-config`, run on the host as its timer would."""
    printed = topdeck(inventory, "agent-config", name)
    assert printed.returncode == 0, printed.stderr
    units = systemd_units(configuration(tmp_path / name, printed.stdout))
    argv = shlex.split(units["services"]["topdeck-agent"]["serviceConfig"]["ExecStart"])
    code, _, err = ssh_run(lab, name, f"mkdir -p /root/agent && printf %s {shlex.quote(host_script().decode())} "
                                      "> /root/agent/host.sh")
    assert code == 0, err
    code, out, err = ssh_run(lab, name, shlex.join(["sh", "/root/agent/host.sh", *argv[2:]]))
    return code, out + err


def statuses(inventory) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {s["host"]: s for s in json.loads(topdeck(inventory, "status", "--json").stdout)}


def test_the_agent_confirms_a_good_switch_and_rolls_back_one_that_fails_its_health_check(lab, inventory, tmp_path):
    good = {"host-1": release(inventory, "web", lambda s: factory.upgrade(s, "web-app", "2.0")),
            "host-3": release(inventory, "db", lambda s: factory.upgrade(s, "db-app", "2.0"))}
    good["host-2"] = good["host-1"]
    set_check(inventory, 'test "$(readlink -f /run/current-system)" != /nix/store/none')
    for name in HOSTS:
        code, out = run_agent(lab, inventory, name, tmp_path / "good")
        assert code == 0, out[-3000:]
        assert state(lab, name)["current"] == good[name]
    found = statuses(inventory)
    for name in HOSTS:
        assert re.fullmatch(r"agent: switched to (web|db) #2 \(/nix/store/\S+\) at \S+Z", found[name]["agent"]), \
            found[name]
        assert found[name]["status"] == "up-to-date"

    bad = {"host-1": release(inventory, "web", lambda s: factory.upgrade(s, "web-app", "3.0")),
           "host-3": release(inventory, "db", lambda s: factory.upgrade(s, "db-app", "3.0"))}
    bad["host-2"] = bad["host-1"]
    set_check(inventory, '! nix-store -qR /run/current-system | grep -q -e web-app-3.0 -e db-app-3.0')
    for name in HOSTS:
        code, out = run_agent(lab, inventory, name, tmp_path / "bad")
        assert code == 2, out[-3000:]
        assert "a health check failed: command" in out
        after = state(lab, name)
        assert after["current"] == after["profile"] == good[name], name
    found = statuses(inventory)
    text = topdeck(inventory, "status").stdout
    for name in HOSTS:
        agent, pointer = found[name]["agent"], "db" if name == "host-3" else "web"
        assert agent.startswith(f"agent: rolled back from {pointer} #3 ({bad[name]}) at "), agent
        assert "a health check failed: command" in agent and "exited 1" in agent
        assert found[name]["status"] == "rolled-back", found[name]
        assert f"{name}" in text and "agent: rolled back from" in text
