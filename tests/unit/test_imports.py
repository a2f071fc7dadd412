"""The layers, read from the source: who imports whom among topdeck's modules (every import statement, those
inside functions too), with no circle inside a package and no import against the layering."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "cli", "tui", "lab")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("topdeck", *parts))


def modules() -> dict[str, Path]:
    return {module_name(path): path for folder in PACKAGES for path in (REPO / folder).rglob("*.py")
            if "__pycache__" not in path.parts}


def imported(tree: ast.AST, known: set[str]) -> set[str]:
    """The topdeck modules a module's import statements name (a `from package import module` names the module)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    names = set(known)
    return {name: imported(ast.parse(path.read_text()), names) - {name} for name, path in known.items()}


def circles(graph: dict[str, set[str]], package: str) -> list[list[str]]:
    """The strongly connected groups of more than one module inside `package` (Tarjan)."""
    inside = {name: {t for t in targets if t.startswith(package + ".")} for name, targets in graph.items()
              if name.startswith(package + ".")}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in inside.get(name, ()):
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == name:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for name in sorted(inside):
        if name not in index:
            visit(name)
    return found


def edges(graph: dict[str, set[str]], source: str, target: str) -> list[str]:
    return sorted(f"{name} -> {t}" for name, targets in graph.items() if name.startswith(source)
                  for t in targets if t.startswith(target))


def test_the_graph_sees_the_known_layers():
    graph = import_graph()
    assert "topdeck.core.facade" in graph["topdeck.tui.backend"]
    assert "topdeck.tui.app" in graph["topdeck.cli.main"]
    assert "topdeck.lab.lab" in graph["topdeck.cli.lab"]


def test_no_circle_in_core_cli_or_tui():
    graph = import_graph()
    for package in ("topdeck.core", "topdeck.cli", "topdeck.tui"):
        assert circles(graph, package) == [], package


def test_the_detector_finds_a_circle():
    assert circles({"topdeck.tui.a": {"topdeck.tui.b"}, "topdeck.tui.b": {"topdeck.tui.a"}}, "topdeck.tui") == [
        ["topdeck.tui.a", "topdeck.tui.b"]]


def test_core_imports_no_front_end_and_the_tui_no_cli():
    graph = import_graph()
    assert edges(graph, "topdeck.core", "topdeck.cli") == []
    assert edges(graph, "topdeck.core", "topdeck.tui") == []
    assert edges(graph, "topdeck.core", "topdeck.lab") == []
    assert edges(graph, "topdeck.tui", "topdeck.cli") == []


def test_only_the_lab_commands_reach_into_the_lab():
    graph = import_graph()
    product = {name: targets for name, targets in graph.items() if not name.startswith("topdeck.lab")}
    assert edges(product, "topdeck", "topdeck.lab") == [e for e in edges(product, "topdeck", "topdeck.lab")
                                                        if e.startswith("topdeck.cli.lab ->")]
    assert edges(product, "topdeck.cli.lab", "topdeck.lab")


# What the engine does to a fleet or its cache; the front ends call it through core/facade.py's Fleet only.
ENGINE_ACTIONS = {"plan_fleet", "deploy_fleet", "status_fleet", "rollback_fleet", "reboot_fleet", "generations",
                  "generation_diff", "trusted_key", "push", "push_all", "release", "build_hosts", "build_each",
                  "gc_fleet", "trust", "pin", "open_cache", "open_deleting_cache", "publish", "connect", "deploy",
                  "failed_hosts", "read_verified", "history", "current"}


def engine_calls(tree: ast.AST, known: set[str] | None = None) -> list[str]:
    """What a module imports from core that acts on a fleet: an engine function, or a core module whole."""
    known = set(modules()) if known is None else known
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("topdeck.core"):
            found += [f"{node.module}.{alias.name}" for alias in node.names
                      if alias.name in ENGINE_ACTIONS or f"{node.module}.{alias.name}" in known]
    return found


def test_the_front_ends_act_on_a_fleet_through_the_facade_only():
    reached = {name: engine_calls(ast.parse(path.read_text())) for name, path in modules().items()
               if name.startswith(("topdeck.cli", "topdeck.tui"))}
    assert {name: calls for name, calls in reached.items() if calls} == {}


def test_the_facade_check_sees_a_direct_engine_call():
    tree = ast.parse("from topdeck.core.operations import HostStatus, deploy_fleet\n"
                     "from topdeck.core.cache import pointers\nfrom topdeck.core import runs\n")
    assert engine_calls(tree) == ["topdeck.core.operations.deploy_fleet", "topdeck.core.cache.pointers",
                                  "topdeck.core.runs"]


# core/ in rooms: the shared base at the top of core/ (what every room may use), then nix, then cache and remote
# side by side on nix, and the engine (the rest of core/'s top level) on all of them.
BASE = {f"topdeck.core.{name}" for name in ("errors", "strict", "events", "vocabulary", "shown", "statedir",
                                            "inventory", "sshconfigfile")}
ROOMS = {"topdeck.core.nix": (), "topdeck.core.cache": ("topdeck.core.nix",),
         "topdeck.core.remote": ("topdeck.core.nix",)}


def against_the_rooms(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a base module or a room's module that reaches outside what it may use."""
    found = []
    for name, targets in graph.items():
        if name in BASE:
            allowed: tuple[str, ...] = ()
        else:
            room = next((room for room in ROOMS if name.startswith(room + ".")), None)
            if room is None:
                continue
            allowed = (room, *ROOMS[room])
        found += [f"{name} -> {target}" for target in sorted(targets) if target.startswith("topdeck.")
                  and target not in BASE and not target.startswith(tuple(f"{a}." for a in allowed))]
    return found


def test_core_rooms_keep_their_directions():
    graph = import_graph()
    assert {name for name in graph if name.startswith("topdeck.core.") and name.count(".") == 3} >= {
        "topdeck.core.nix.store", "topdeck.core.cache.push", "topdeck.core.remote.ssh"}
    assert against_the_rooms(graph) == []


def test_the_room_check_sees_a_wrong_direction():
    graph = {"topdeck.core.nix.store": {"topdeck.core.cache.push", "topdeck.core.errors"},
             "topdeck.core.remote.ssh": {"topdeck.core.nix.store", "topdeck.core.cache.interface"},
             "topdeck.core.cache.push": {"topdeck.core.nix.store", "topdeck.core.operations"},
             "topdeck.core.errors": {"topdeck.core.nix.store"}, "topdeck.core.deploy": {"topdeck.core.cache.push"}}
    assert against_the_rooms(graph) == [
        "topdeck.core.nix.store -> topdeck.core.cache.push", "topdeck.core.remote.ssh -> topdeck.core.cache.interface",
        "topdeck.core.cache.push -> topdeck.core.operations", "topdeck.core.errors -> topdeck.core.nix.store"]


def test_no_re_exports():
    """Every name is imported from the module that defines it: no `import name as name` kept for old callers."""
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                found += [f"{name}: {alias.name}" for alias in node.names
                          if alias.asname and alias.asname == alias.name.rsplit(".", 1)[-1]]
    assert found == []


# tui/text.py hands the TUI `shown` beside `plain`, so that a screen draws foreign text through one module (shownlint)
DELIBERATE_EXPORTS = {"topdeck.tui.text": {"shown"}}


def test_all_lists_only_what_the_module_defines():
    """An `__all__` that names an imported name is a re-export too."""
    found = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        imported_names = {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree)
                          if isinstance(node, ast.ImportFrom | ast.Import) for alias in node.names}
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
                listed = {element.value for element in getattr(node.value, "elts", ())
                          if isinstance(element, ast.Constant)}
                found += [f"{name}: {n}" for n in sorted(listed & imported_names - DELIBERATE_EXPORTS.get(name, set()))]
    assert found == []
