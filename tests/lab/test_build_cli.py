"""`topdeck build HOST...` on the demo fleet (the repository's hosts/), with the real Nix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("nix-build") is None or shutil.which("ssh-keygen") is None,
                                reason="needs Nix and ssh-keygen")

DEMO = Path(__file__).resolve().parents[2] / "hosts"

# cli/main.py with the build command registered, whether or not main.py registers it already.
RUNNER = """
import argparse, sys
from topdeck.cli import build as cli_build
from topdeck.cli import main as cli

original = cli.build_parser

def build_parser():
    parser = original()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "build" not in commands.choices:
        cli_build.add_commands(commands)
    return parser

cli.build_parser = build_parser
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for the lab's folder: only the operator's SSH key, which the demo fleet's systems authorize."""
    folder = tmp_path_factory.mktemp("lab")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator@test", "-f",
                    str(folder / "id_ed25519")], check=True)
    return folder


def topdeck(lab_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOPDECK_LAB_DIR": str(lab_dir)}
    return subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_build_a_demo_host(lab_dir: Path) -> None:
    result = topdeck(lab_dir, "--inventory", str(DEMO), "build", "web-1")
    assert result.returncode == 0, result.stderr
    host, path = result.stdout.split()
    assert host == "web-1"
    assert Path(path).name.split("-", 1)[1].startswith("nixos-system-web-24.05")
    assert (Path(path) / "bin" / "switch-to-configuration").exists()
    key = (lab_dir / "id_ed25519.pub").read_text()
    assert (Path(path) / "etc/ssh/authorized_keys.d/root").read_text() == key
    # The toplevel is new (it holds this run's key), so nix-build has something to say.
    assert "web-1 | building '/nix/store/" in result.stderr
    assert all(line.startswith("web-1 | ") for line in result.stderr.splitlines())


def test_build_several_hosts_as_json(lab_dir: Path) -> None:
    result = topdeck(lab_dir, "--inventory", str(DEMO), "build", "@web", "db-*", "--json")
    assert result.returncode == 0, result.stderr
    built = json.loads(result.stdout)
    assert list(built) == ["db-1", "web-1", "web-2"]
    assert built["web-1"] == built["web-2"]  # both follow the pointer "web": one toplevel
    assert "-nixos-system-db-" in built["db-1"]
    assert all(Path(path).is_dir() for path in built.values())


def test_an_unknown_host_is_one_line(lab_dir: Path) -> None:
    result = topdeck(lab_dir, "--inventory", str(DEMO), "build", "web-1", "mail-9")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "topdeck: error: build mail-9: no host matches (hosts: db-1, web-1, web-2)\n"


def test_a_host_without_build_is_an_error_naming_it(lab_dir: Path, tmp_path: Path) -> None:
    inventory = tmp_path / "hosts"
    inventory.mkdir()
    shutil.copy(DEMO / "topdeck.toml", inventory)
    (inventory / "mail-1").mkdir()
    (inventory / "mail-1" / "host.toml").write_text('address = "127.0.0.21"\npointer = "mail"\n')
    result = topdeck(lab_dir, "--inventory", str(inventory), "build", "mail-1")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"topdeck: error: {inventory / 'mail-1' / 'host.toml'}: host mail-1 has no "
                                    "[build] section")


def test_a_failing_build_is_one_line_and_the_others_still_build(lab_dir: Path, tmp_path: Path) -> None:
    inventory = tmp_path / "hosts"
    inventory.mkdir()
    shutil.copy(DEMO / "topdeck.toml", inventory)
    for name, address, body in (("bad-1", "127.0.0.21", '{ x = ; }'),
                                ("good-1", "127.0.0.22", f'import {DEMO / "fleet.nix"} {{ role = "db"; }}')):
        (inventory / name).mkdir()
        (inventory / name / "host.toml").write_text(
            f'address = "{address}"\npointer = "p"\n[build]\nnix = "default.nix"\n')
        (inventory / name / "default.nix").write_text(body + "\n")
    result = topdeck(lab_dir, "--inventory", str(inventory), "build", "*")
    assert result.returncode == 1
    assert result.stdout.startswith("good-1 /nix/store/")
    errors = [line for line in result.stderr.splitlines() if line.startswith("topdeck: error:")]
    assert errors == [f"topdeck: error: bad-1: {inventory / 'bad-1' / 'default.nix'}: build failed: "
                      "syntax error, unexpected ';'"]
