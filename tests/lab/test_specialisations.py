"""Specialisations and "needs reboot", end to end on a mixed lab of their own (native, Debian 13, Debian sid).

host-1 and host-2 follow pointer `web`, host-3 `db`.
"""

from __future__ import annotations

import json
import time

import pytest
from deploytools import MIXED_KINDS, deploy, deploy_inventory, release, state, three_host_lab, topdeck

from topdeck.lab import factory

CONFIRM_TIMEOUT = 8
WEB = ("host-1", "host-2")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with three_host_lab(tmp_path_factory.mktemp("speclab"), "127.0.29.11", kinds=MIXED_KINDS) as lab:
        yield lab


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    root = deploy_inventory(lab, tmp_path_factory.mktemp("spec") / "hosts", CONFIRM_TIMEOUT)
    deploy(root)
    return root


def status_of(inventory, *names: str) -> dict[str, dict]:  # type: ignore[type-arg]
    found = json.loads(topdeck(inventory, "status", "--on", ",".join(names), "--json").stdout)
    return {entry["host"]: entry for entry in found}


def test_a_specialisation_is_activated_and_status_counts_it(lab, inventory):
    web = release(inventory, "web", lambda s: factory.with_specialisation(
        factory.upgrade(s, "web-app", f"3.{time.time_ns()}"), "debug"))

    result, _, outcomes = deploy(inventory, "--on", "@web", "--specialisation", "debug")

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    for name in WEB:
        debug = lab.host(name).sh(f"readlink -f {web}/specialisation/debug").strip()
        after = state(lab, name)
        assert debug != web and after["current"] == debug, "the specialisation runs"
        assert after["profile"] == web, "the profile is the system itself"
        assert outcomes[name]["outcome"] == "done"
    found = status_of(inventory, *WEB)
    for name in WEB:
        assert found[name]["specialisation"] == "debug" and found[name]["system"] == web
        assert found[name]["status"] == "behind", "the inventory does not ask for that specialisation"

    for name in WEB:
        host_file = inventory / name / "host.toml"
        host_file.write_text('specialisation = "debug"\n' + host_file.read_text())
    try:
        assert {s["status"] for s in status_of(inventory, *WEB).values()} == {"up-to-date"}
        again, _, outcomes = deploy(inventory, "--on", "@web")  # the hosts' own setting
        assert again.returncode == 0 and all("already running" in outcomes[n]["reason"] for n in WEB)
    finally:
        for name in WEB:
            host_file = inventory / name / "host.toml"
            host_file.write_text(host_file.read_text().replace('specialisation = "debug"\n', ""))
    back, _, _ = deploy(inventory, "--on", "@web", "--specialisation", "")
    assert back.returncode == 0
    assert all(state(lab, name)["current"] == web for name in WEB)


@pytest.mark.parametrize("bad", [("--mode", "boot", "--specialisation", "debug"),
                                 ("--specialisation", "../etc"),
                                 ("--on", "host-1", "--specialisation", "missing")])
def test_a_specialisation_that_cannot_be_activated_is_one_line_and_nothing_changes(lab, inventory, bad):
    release(inventory, "web", lambda s: factory.with_specialisation(
        factory.upgrade(s, "web-app", f"4.{time.time_ns()}"), "debug"))
    before = {name: state(lab, name) for name in WEB}

    selection = () if "--on" in bad else ("--on", "@web")
    result = topdeck(inventory, "deploy", "--yes", "--json", *selection, *bad)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert {name: state(lab, name) for name in WEB} == before
    if "missing" in bad:
        outcome = json.loads(result.stdout.splitlines()[-1])["outcomes"][0]
        assert "has no specialisation 'missing': nothing was changed" in outcome["reason"]
    else:
        assert result.stderr.count("\n") == 1 and "specialisation" in result.stderr
    deploy(inventory, "--on", "@web")


def test_status_says_when_a_host_needs_a_reboot(lab, inventory):
    deploy(inventory)
    for name in MIXED_KINDS:  # as after a reboot into what runs now
        lab.host(name).sh("ln -sfn \"$(readlink -f /run/current-system)\" /run/booted-system")
    assert all(s["needs_reboot"] == "" for s in status_of(inventory, *MIXED_KINDS).values())
    release(inventory, "web", lambda s: factory.upgrade(s, "web-app", f"5.{time.time_ns()}"))
    assert deploy(inventory, "--on", "@web")[0].returncode == 0
    assert all(s["needs_reboot"] == "" for s in status_of(inventory, *WEB).values()), "same kernel: no reboot"
    release(inventory, "web", lambda s: factory.upgrade(s, "linux", f"6.6.{31 + time.time_ns() % 1000}"))

    result, _, _ = deploy(inventory, "--on", "@web")

    assert result.returncode == 0, result.stdout[-2000:]
    found = status_of(inventory, *MIXED_KINDS)
    for name in WEB:
        assert found[name]["status"] == "up-to-date" and found[name]["needs_reboot"] == "kernel", found[name]
    assert found["host-3"]["needs_reboot"] == ""
    text = topdeck(inventory, "status", "--on", "host-1").stdout
    assert "needs a reboot (its kernel differs from the booted one)" in text
