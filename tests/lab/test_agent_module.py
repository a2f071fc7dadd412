"""The NixOS modules are self-contained: copied out of this repository, as docs/DEPLOY.md tells an operator to, they
evaluate, and the agent's unit runs core/remote/host.sh, which the module carries (a link in this repository, copied
as the file it names).

What this does not cover: the evaluation runs against a stand-in for nixpkgs (tests/data/module_stand_in.nix), not a
real NixOS; option merging, systemd unit generation and the packages are the stand-in's. tests/lab/test_download_url.py
runs the resulting ExecStart's arguments on lab hosts of every kind."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from agentmodule import MODULES, REPO, configuration, evaluate, systemd_units

AGENT = """
  imports = [ ./topdeck-agent ];
  services.topdeck-agent = {
    enable = true;
    pointer = "web";
    cache = "https://cache.example.com/file/fleet-bucket/nix";
    publicKey = "cache-1:mNLF1nBkYBu3yS5tF1xFx+1+dpQz8b0TzPQKX2Q4r8k=";
    signer = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJjLBJT2qLY8cLZsP3i0yoSQZ0f2Mt2cSqLFqZIsmF1x";
    interval = "90s";
  };
"""


def test_the_agent_modules_host_script_is_core_host_sh_itself():
    link = MODULES / "topdeck-agent" / "host.sh"
    assert link.is_symlink() and link.resolve() == (REPO / "core" / "remote" / "host.sh").resolve()


def test_the_agent_module_copied_out_runs_the_script_it_carries(tmp_path: Path):
    units = systemd_units(configuration(tmp_path / "etc-nixos", AGENT))

    service = units["services"]["topdeck-agent"]
    argv = shlex.split(service["serviceConfig"]["ExecStart"])
    assert argv[0] == "/stand-in/bash/bin/sh"
    script = Path(argv[1])
    assert script.is_relative_to("/nix/store") and script.is_file(), argv[1]
    assert script.read_bytes() == (REPO / "core" / "remote" / "host.sh").read_bytes()
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert argv[2] == "agent" and options == {
        "--pointer": "web", "--sidecar": "https://cache.example.com/file/fleet-bucket/nix/toplevels/web.json",
        "--cache": "https://cache.example.com/file/fleet-bucket/nix",
        "--key": "cache-1:mNLF1nBkYBu3yS5tF1xFx+1+dpQz8b0TzPQKX2Q4r8k=",
        "--signer": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJjLBJT2qLY8cLZsP3i0yoSQZ0f2Mt2cSqLFqZIsmF1x",
        "--on-failed-units": "rollback"}
    assert service["serviceConfig"]["Type"] == "oneshot"
    assert service["restartIfChanged"] is False and service["stopIfChanged"] is False
    assert {"/stand-in/nix", "/stand-in/curl", "/stand-in/openssh", "/stand-in/util-linux"} <= set(service["path"])
    timer = units["timers"]["topdeck-agent"]
    assert timer["wantedBy"] == ["timers.target"] and timer["timerConfig"]["OnUnitActiveSec"] == "90s"


def test_agent_config_carries_the_hosts_health_checks_into_the_agents_command_line(tmp_path: Path):
    """`topdeck agent-config` of a host with checks, pasted into configuration.nix: the agent runs the same checks
    as a deploy (the command exactly as topdeck.toml has it, quotes, backslash and `${` included)."""
    inventory = tmp_path / "hosts"
    (inventory / "web-1").mkdir(parents=True)
    (inventory / "web-1" / "host.toml").write_text('address = "127.0.0.11"\npointer = "web"\ntags = ["web"]\n'
                                                   'on_failed_units = "keep"\n')
    command = """test "$(systemctl is-active nginx)" = active && echo '${HOME}' \\ done"""
    (inventory / "topdeck.toml").write_text(
        '[cache]\ntype = "dir"\npath = "cache"\nurl = "https://cache.example.com/nix"\n'
        'public_key = "cache-1:mNLF1nBkYBu3yS5tF1xFx+1+dpQz8b0TzPQKX2Q4r8k="\n'
        f"[checks.web]\ncommand = '''{command}'''\nhttp = \"http://127.0.0.1/health\"\nfailed_units = true\n")
    printed = subprocess.run([sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory), "agent-config",
                              "web-1"], capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    units = systemd_units(configuration(tmp_path / "etc-nixos", printed.stdout))
    argv = shlex.split(units["services"]["topdeck-agent"]["serviceConfig"]["ExecStart"])
    assert argv[argv.index("--check-command") + 1] == command
    assert argv[argv.index("--check-http") + 1] == "http://127.0.0.1/health"
    assert "--check-units" in argv and argv[argv.index("--on-failed-units") + 1] == "keep"


def test_a_disabled_agent_has_no_units(tmp_path: Path):
    units = systemd_units(configuration(tmp_path / "etc-nixos", AGENT.replace("enable = true", "enable = false")))
    assert units == {"services": {}, "timers": {}}


def test_the_agent_module_refuses_a_cache_url_a_shell_or_nix_would_misread(tmp_path: Path):
    for number, url in enumerate(("https://cache.example.com/a b", "https://cache.example.com/x'y", "ftp://c.example",
                                  "https://cache.example.com/?token=1")):
        body = AGENT.replace("https://cache.example.com/file/fleet-bucket/nix", url)
        result = evaluate(configuration(tmp_path / f"etc-nixos-{number}", body))
        assert result.returncode != 0 and "option cache" in result.stderr and "is not of type" in result.stderr, url


def test_the_reboot_guard_module_copied_out_runs_the_script_the_reboot_left(tmp_path: Path):
    assert "../" not in (MODULES / "topdeck-reboot-guard.nix").read_text()
    units = systemd_units(configuration(tmp_path / "etc-nixos", "  imports = [ ./topdeck-reboot-guard.nix ];",
                                        modules=("topdeck-reboot-guard.nix",)))

    guard = units["services"]["topdeck-reboot-guard"]
    assert shlex.split(guard["serviceConfig"]["ExecStart"]) == [
        "/stand-in/bash/bin/sh", "/nix/var/nix/topdeck/reboot/host.sh", "boot-guard"]
    assert guard["wantedBy"] == ["multi-user.target"] and guard["before"] == ["sshd.service"]
    assert guard["unitConfig"]["ConditionPathExists"] == "/nix/var/nix/topdeck/reboot/pending"
