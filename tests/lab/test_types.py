"""The type check covers every package and resolves topdeck's own imports: it is clean, and it fails on an error
that only a resolved cross-module import can reveal."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "cli", "tui", "lab")


def mypy(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=root, capture_output=True,
                          text=True)


def copy_of_the_tree(to: Path) -> Path:
    for folder in (*PACKAGES, "topdeck"):
        shutil.copytree(REPO / folder, to / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", to)
    return to


def test_every_package_is_checked_and_clean():
    for folder in PACKAGES:
        assert (REPO / "topdeck" / folder).resolve() == REPO / folder
    result = mypy(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = int(result.stdout.rsplit("in ", 1)[1].split()[0])
    assert checked >= sum(1 for f in PACKAGES for _ in (REPO / f).rglob("*.py")), result.stdout


def test_a_wrong_call_into_another_module_fails_the_check(tmp_path):
    root = copy_of_the_tree(tmp_path)
    with (root / "tui" / "backend.py").open("a") as module:
        module.write("\n\nfrom topdeck.core.nix.store import parse_store_path  # noqa: E402\n\n\n"
                     "def injected() -> int:\n"
                     "    return parse_store_path(1).hash_part\n")
    result = mypy(root)
    assert result.returncode == 1, result.stdout
    assert 'topdeck/tui/backend.py' in result.stdout
    assert 'Argument 1 to "parse_store_path" has incompatible type "int"; expected "str"' in result.stdout
    assert 'Incompatible return value type (got "str", expected "int")' in result.stdout
