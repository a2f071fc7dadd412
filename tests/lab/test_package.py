"""Packaging and boundaries: the wheel holds every subpackage; every imported package is declared, with an upper
bound; core never imports UI code."""

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
REQUIREMENT = re.compile(r"([A-Za-z0-9._-]+)\s*((?:[<>=!~]=?\s*[0-9][0-9.]*\s*,?\s*)*)$")


def test_wheel_contains_every_subpackage(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("topdeck-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for package, folder in [("topdeck/core", "core"), ("topdeck/cli", "cli"), ("topdeck/tui", "tui"),
                            ("topdeck/lab", "lab")]:
        sources = {f"{package}/{p.relative_to(REPO / folder)}" for p in (REPO / folder).rglob("*.py")
                   if "__pycache__" not in p.parts}
        assert sources and sources <= names, f"missing from wheel: {sorted(sources - names)}"
    assert "topdeck/__init__.py" in names
    assert {"topdeck/lab/nix/toplevel.nix", "topdeck/lab/image/configure.sh"} <= names
    assert {"topdeck/core/remote/host.sh", "topdeck/core/remote/probe.sh"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "topdeck = topdeck.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_core_never_imports_ui():
    modules = sorted("topdeck." + ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                     for p in (REPO / "core").rglob("*.py"))
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "bad = [m for m in sys.modules\n"
        + "       if m.split('.')[0] in ('textual', 'rich') or m.startswith(('topdeck.tui', 'topdeck.cli'))]\n"
        + "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert modules
    assert result.stdout.strip() == ""


def test_help_runs_without_lab_or_inventory(tmp_path):
    result = subprocess.run([sys.executable, "-m", "topdeck.cli", "--help"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0
    assert "lab" in result.stdout and "demo" in result.stdout


def test_lint_is_clean():  # types: tests/lab/test_types.py
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "core", "cli", "lab", "tui", "tests", "bench"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def third_party_imports(*folders: str) -> dict[str, set[str]]:
    """Top-level names imported in `folders` that are neither the standard library, topdeck, nor a module of the
    repository's own (the tests' helpers): name -> the files importing it."""
    local = ({p.stem for p in REPO.glob("*/*.py")} | {p.stem for p in (REPO / "tests").rglob("*.py")}
             | {p.name for p in REPO.iterdir() if p.is_dir()})
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in (n.split(".")[0] for n in names):
                    if name not in sys.stdlib_module_names and name != "topdeck" and name not in local:
                        found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def declared(requirements: list[str]) -> dict[str, str]:
    """Distribution name (normalized) -> its version specifiers."""
    result = {}
    for requirement in requirements:
        match = REQUIREMENT.fullmatch(requirement.strip())
        assert match, f"pyproject.toml: cannot read requirement {requirement!r}"
        result[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2].replace(" ", "")
    return result


RUNTIME = declared(PROJECT["project"]["dependencies"])
DEV = declared(PROJECT["project"]["optional-dependencies"]["dev"])


def distribution(module: str) -> str:
    names = importlib.metadata.packages_distributions().get(module)
    assert names, f"{module} is imported but not installed"
    return re.sub(r"[-_.]+", "-", names[0]).lower()


def test_every_third_party_import_is_declared():
    runtime = third_party_imports("core", "tui", "lab", "bench", "topdeck")
    for module, files in runtime.items():
        assert distribution(module) in RUNTIME, f"{module} (imported in {sorted(files)}) is not in dependencies"
    for module, files in third_party_imports("tests").items():
        assert distribution(module) in RUNTIME | DEV, f"{module} (imported in {sorted(files)}) is not declared"
    assert {"requests", "rich", "b2sdk", "textual"} <= {distribution(m) for m in runtime}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_every_dependency_is_bounded_below_its_next_breaking_version_and_the_installed_one_fits():
    build = declared(PROJECT["build-system"]["requires"])
    for name, specifiers in {**RUNTIME, **DEV, **build}.items():
        lower = re.search(r">=([0-9.]+)", specifiers)
        upper = re.search(r"<([0-9.]+)", specifiers)
        assert lower and upper, f"{name}{specifiers}: needs a lower and an upper bound"
        low, high = _version(lower[1]), _version(upper[1])
        installed = _version(importlib.metadata.version(name))
        assert low <= installed < high, f"{name}{specifiers}: the installed {installed} does not fit"
        # the bound is the next breaking version after the installed one: its next major (next minor for 0.x)
        expected = (installed[0] + 1,) if installed[0] else (0, installed[1] + 1)
        assert high == expected, f"{name}{specifiers}: the upper bound should be <{'.'.join(map(str, expected))}"
