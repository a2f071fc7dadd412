"""The deploy engine's pieces checked by real tools: SSH signatures by `ssh-keygen -Y verify`, the reboot guard
module by `nix-instantiate` (the rest of the engine's logic is tests/unit/test_deploy_units.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from topdeck.core.nix.signing import generate_keypair, ssh_public_key, ssh_signature

PATH = "/nix/store/" + "a" * 32 + "-nixos-system-web-1"


def test_ssh_signatures_verify_with_ssh_keygen(tmp_path):
    secret, public = generate_keypair("cache-1")
    message = f"topdeck-pointer-1;web;{PATH};3;1700000000"
    (tmp_path / "signers").write_text(f"topdeck {ssh_public_key(public)}\n")
    blob = ssh_signature(secret, message, "topdeck-pointer")
    (tmp_path / "sig").write_text(f"-----BEGIN SSH SIGNATURE-----\n{blob}\n-----END SSH SIGNATURE-----\n")

    def verify(text: str, namespace: str = "topdeck-pointer") -> int:
        return subprocess.run(["ssh-keygen", "-Y", "verify", "-f", tmp_path / "signers", "-I", "topdeck", "-n",
                               namespace, "-s", tmp_path / "sig"], input=text.encode(), capture_output=True).returncode

    assert verify(message) == 0
    assert verify(message.replace(";3;", ";4;")) != 0
    assert verify(message, "other-namespace") != 0


def test_the_reboot_guard_module_parses_and_runs_the_pending_reboots_script():

    from topdeck.lab.nixenv import lab_env

    module = Path(__file__).resolve().parents[2] / "hosts" / "modules" / "topdeck-reboot-guard.nix"
    parsed = subprocess.run(["nix-instantiate", "--parse", module], capture_output=True, text=True, env=lab_env())
    assert parsed.returncode == 0, parsed.stderr
    assert "/nix/var/nix/topdeck/reboot/host.sh boot-guard" in parsed.stdout
    assert "/nix/var/nix/topdeck/reboot/pending" in parsed.stdout
