"""Packaging and boundaries: the wheel holds every subpackage; core never imports UI code."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_contains_every_subpackage(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("topdeck-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for package, folder in [("topdeck/core", "core"), ("topdeck/tui", "tui"), ("topdeck/lab", "lab")]:
        sources = {f"{package}/{p.relative_to(REPO / folder)}" for p in (REPO / folder).rglob("*.py")
                   if "__pycache__" not in p.parts}
        assert sources and sources <= names, f"missing from wheel: {sorted(sources - names)}"
    assert "topdeck/__init__.py" in names
    assert {"topdeck/lab/nix/toplevel.nix", "topdeck/lab/image/configure.sh"} <= names
    assert {"topdeck/core/host.sh", "topdeck/core/probe.sh"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "topdeck = topdeck.tui.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_core_never_imports_ui():
    modules = sorted(f"topdeck.core.{p.stem}" for p in (REPO / "core").glob("*.py") if p.stem != "__init__")
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'rich') or m.startswith('topdeck.tui')]\n"
        + "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert modules
    assert result.stdout.strip() == ""


def test_help_runs_without_lab_or_inventory(tmp_path):
    result = subprocess.run([sys.executable, "-m", "topdeck.tui.cli", "--help"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0
    assert "lab" in result.stdout and "demo" in result.stdout


def test_lint_and_types_are_clean():
    for command in (["ruff", "check", "core", "lab", "tui", "tests", "bench"], ["mypy", "core", "lab"]):
        result = subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
