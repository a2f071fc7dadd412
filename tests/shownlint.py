"""The lint behind tests/unit/test_shown.py: read from the source, where the front ends draw text.

cli/: every `print`, `input`, `getpass` and stream `write` lives in cli/output.py, and there each one writes a
literal, `shown(...)`, `json.dumps(...)` or an f-string of integers (`{n:d}`); everything else prints through
`say`, `say_lines` or `say_json`.

tui/: no `DataTable` but tui/widgets/table.py's `SafeTable`; no markup parsed on purpose (`markup=True`,
`from_markup`); every `notify` says `markup=False`; a widget, a cell, a dialog, a notification or a `Text` is
never handed a string built at run time (an f-string, `+`, `%`, `.format`, `.join`, `str()`) but through
`plain(...)` or `shown(...)`; a `Text(...)` holds a literal or `shown(...)` (else it is `plain(...)`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PRINTS = {"print", "input", "getpass"}
WRITES = {"write", "writelines", "getpass"}
WRAPPERS = {"shown", "plain", "as_text"}
SINK_NAMES = {"Static", "Label", "Text", "Option", "ConfirmScreen", "PromptScreen", "ChoiceScreen", "Button"}
SINK_METHODS = {"update", "notify", "append", "add_row", "add_rows", "update_cell", "update_cell_at", "add_column",
                "write", "write_line", "write_lines", "add_option"}
SINK_KEYWORDS = {"title", "label", "prompt", "question", "placeholder"}
WRAPPER_MODULES = {"tui/text.py", "tui/widgets/table.py"}  # where plain, as_text and SafeTable are made
MARKUP_SINKS = {"Static", "Label", "Option", "Button", "update", "add_option"}  # a str given to them is markup
LINE_SINKS = {"write", "write_line"}  # the Log widget's: no markup, but controls would reach the screen


def _python_files(root: Path, folder: str) -> Iterator[tuple[str, ast.AST]]:
    for path in sorted((root / folder).rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield str(path.relative_to(root)), ast.parse(path.read_text(), str(path))


def _called(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _is_call_to(node: ast.AST, names: set[str]) -> bool:
    return isinstance(node, ast.Call) and _called(node) in names


# --- cli/ -----------------------------------------------------------------------------------------------


def _escaped(node: ast.AST) -> bool:
    """Text the CLI may write as is: a literal, `shown(...)`, JSON (ASCII, controls spelt out), integers."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.Call):
        if _called(node) == "dumps":
            return not any(k.arg == "ensure_ascii" for k in node.keywords)
        return _called(node) == "shown"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _escaped(node.left) and _escaped(node.right)
    if isinstance(node, ast.Subscript):
        return _escaped(node.value)
    if isinstance(node, ast.JoinedStr):
        return all(isinstance(part, ast.Constant) or _an_integer(part) for part in node.values)
    return False


def _an_integer(part: ast.AST) -> bool:
    spec = part.format_spec if isinstance(part, ast.FormattedValue) else None
    return isinstance(spec, ast.JoinedStr) and [getattr(v, "value", None) for v in spec.values] == ["d"]


def cli_violations(root: Path) -> list[str]:
    found = []
    for name, tree in _python_files(root, "cli"):
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            called = _called(node)
            printing = (isinstance(node.func, ast.Name) and called in PRINTS) or (
                isinstance(node.func, ast.Attribute) and called in WRITES)
            if not printing:
                continue
            if name != "cli/output.py":
                found.append(f"{name}:{node.lineno}: {called}() outside cli/output.py (print through say)")
            elif not all(_escaped(arg) for arg in node.args[:1]):
                found.append(f"{name}:{node.lineno}: {called}() of text not passed through shown")
    return found


# --- tui/ -----------------------------------------------------------------------------------------------


def _built(node: ast.AST) -> bool:
    """A string made at run time out of values (not yet passed through `plain`/`shown`)."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(part, ast.FormattedValue) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return not (_clean(node.left) and _clean(node.right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return True
    if isinstance(node, ast.Call):
        return _called(node) in {"format", "join", "str", "capitalize", "replace"}
    if isinstance(node, ast.IfExp):
        return _built(node.body) or _built(node.orelse)
    return False


def _clean(node: ast.AST) -> bool:
    """A literal or a wrapped value, or a `+` of those: `shown(f"...") + "\\n"`."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _clean(node.left) and _clean(node.right)
    return isinstance(node, ast.Constant) or _is_call_to(node, WRAPPERS)


def _sink_args(node: ast.Call) -> list[ast.AST]:
    return [*node.args, *(k.value for k in node.keywords if k.arg in SINK_KEYWORDS)]


def _tui_call_violations(node: ast.Call, built_names: set[str]) -> Iterator[str]:
    called = _called(node)
    if any(k.arg == "markup" and getattr(k.value, "value", None) is True for k in node.keywords):
        yield "markup=True"
    if called == "from_markup":
        yield "Text.from_markup"
    if called in WRAPPERS and any("\\n" in ast.unparse(arg) for arg in node.args):
        yield f"{called}() of a literal line end (it is spelt out): add the line end outside"
    if called == "notify" and not any(k.arg == "markup" and getattr(k.value, "value", True) is False
                                      for k in node.keywords):
        yield "notify() without markup=False"
    if called == "DataTable":
        yield "a bare DataTable (use SafeTable)"
    sink = (isinstance(node.func, ast.Name) and called in SINK_NAMES) or (
        isinstance(node.func, ast.Attribute) and called in SINK_METHODS)
    if not sink:
        return
    for arg in _sink_args(node):
        if _built(arg) or (isinstance(arg, ast.Name) and arg.id in built_names):
            yield f"{called}() of a string built from values (wrap it in plain() or shown())"
    if called in MARKUP_SINKS and any(_is_call_to(arg, {"shown"}) for arg in _sink_args(node)):
        yield f"{called}() parses a str as markup: give it plain(), not shown()"
    if called in LINE_SINKS and not all(_clean(arg) for arg in node.args):
        yield f"{called}() of text not passed through shown()"
    if called == "write_lines" and not all(isinstance(arg, ast.GeneratorExp | ast.ListComp) and _clean(arg.elt)
                                           for arg in node.args):
        yield "write_lines() of lines not passed through shown()"
    styled = len(node.args) > 1 or any(k.arg == "style" for k in node.keywords)
    if called == "append" and styled and not _clean(node.args[0]):
        yield "Text.append() of a value not passed through shown()"
    if called == "Text" and node.args and not (isinstance(node.args[0], ast.Constant)
                                               or _is_call_to(node.args[0], {"shown"})):
        yield "Text() of a value (use plain())"


def _built_names(function: ast.AST) -> set[str]:
    """The names a function binds to a string built from values (`line = f"..."`)."""
    return {target.id for node in ast.walk(function) if isinstance(node, ast.Assign | ast.AnnAssign)
            and node.value is not None and _built(node.value)
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)}


def _scopes(tree: ast.AST) -> Iterator[tuple[ast.Call, set[str]]]:
    """Each call with the built names of the function it is in (its innermost one)."""
    def visit(node: ast.AST, names: set[str]) -> Iterator[tuple[ast.Call, set[str]]]:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names = _built_names(node)
        if isinstance(node, ast.Call):
            yield node, names
        for child in ast.iter_child_nodes(node):
            yield from visit(child, names)

    yield from visit(tree, set())


def tui_violations(root: Path) -> list[str]:
    found = []
    for name, tree in _python_files(root, "tui"):
        for node in ast.walk(tree):
            if (isinstance(node, ast.ImportFrom) and name != "tui/widgets/table.py"
                    and any(alias.name == "DataTable" for alias in node.names)):
                found.append(f"{name}:{node.lineno}: imports DataTable (use tui.widgets.table.SafeTable)")
        if name not in WRAPPER_MODULES:
            found.extend(f"{name}:{call.lineno}: {why}" for call, names in _scopes(tree)
                         for why in _tui_call_violations(call, names))
    return found
