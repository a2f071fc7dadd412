"""The inventory loader against real git repositories (a secret tracked in a flake's repository is refused, an
untracked one is not) and the CLI as a process reporting a bad inventory in one line."""

from pathlib import Path

import pytest
from test_inventory import CONFIG, HOST, write_inventory

from topdeck.core.errors import InventoryError
from topdeck.core.inventory import load_inventory


def test_cli_reports_bad_inventory_in_one_line(tmp_path):
    import subprocess
    import sys

    root = write_inventory(tmp_path / "inv", {"web-1": HOST + "port = 0\n"})
    result = subprocess.run([sys.executable, "-m", "topdeck.cli", "--inventory", str(root)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "port: 0 is not a port" in result.stderr


def _flake_inventory(root: Path, secret_key: str, flake: str, secret_name: str = "secret.key") -> Path:
    write_inventory(root, {"web-1": HOST}, CONFIG + f'{secret_key} = "{secret_name}"\n\n[build]\nflake = "{flake}"\n')
    (root / secret_name).write_text("a secret\n")
    return root


def _git(root: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


@pytest.mark.parametrize("flake", [".", "git+file:{root}", "git+file://{root}"])
def test_a_secret_tracked_in_a_git_flake_is_refused_and_an_untracked_one_is_not(tmp_path, flake):
    root = tmp_path / "inv"
    _flake_inventory(root, "gc_credentials_file", flake.format(root=root))
    _git(root, "init", "-q")
    assert load_inventory(root).cache.gc_credentials_file == root / "secret.key"  # untracked: Nix leaves it out
    _git(root, "add", "secret.key")
    with pytest.raises(InventoryError, match="cache.gc_credentials_file: .* would be copied with flake"):
        load_inventory(root)


def test_a_secret_tracked_elsewhere_in_the_flakes_repository_is_refused(tmp_path):
    """Nix copies a git flake's whole repository (its tracked files), not only the flake's folder."""
    repository = tmp_path / "repo"
    root = repository / "fleet"
    write_inventory(root, {"web-1": HOST}, CONFIG + 'signing_key = "../keys/cache.sec"\n\n[build]\nflake = "."\n')
    (repository / "keys").mkdir()
    (repository / "keys" / "cache.sec").write_text("a secret\n")
    _git(repository, "init", "-q")
    _git(repository, "add", "keys/cache.sec")
    with pytest.raises(InventoryError, match="cache.signing_key: .*/keys/cache.sec would be copied with flake"):
        load_inventory(root)
