"""Flake builds: the toplevels of many hosts' nixosConfigurations, in one evaluation per flake and one `nix build`.

For each flake, one `nix eval` of `REF#nixosConfigurations --apply F`, where F checks in that one evaluation that
every asked name exists and returns the `.drvPath` of each one's config.system.build.toplevel. Then one
`nix build --json` of all those derivations (of every flake), so that Nix builds them with its own parallelism.
Building the flake attributes themselves would be one call too, but `nix build` prints its results in an order of
its own and merges equal ones (seen on 2.8), so a result could not be told apart from another host's; a derivation
path maps each one back.

Nix 2.8 reads a derivation path given to `nix build` as its outputs; 2.13 and later read it as the .drv file
itself and need `DRV^out` (both checked here with 2.8, 2.26 and 2.34). 2.8 has no `--print-out-paths`; `--json`
(a list of {"drvPath", "outputs"}) is in every version. Flakes are experimental in every one of
them, so each command asks for the feature itself.

What Nix says, and what topdeck says instead (one line, naming the setting):
- a flake in a git repository is copied to the store with its tracked files only: a file that is not tracked is
  `getting status of '/nix/store/<hash>-source/FILE': No such file or directory` (2.8), `path
  '/nix/store/<hash>-source/FILE' does not exist` (2.26), `Path 'FILE' in the repository "DIR" is not tracked
  by Git.` (2.34);
- pure evaluation refuses files outside the flake: `access to absolute path '/x/y' is forbidden in pure
  evaluation mode (use '--impure' to override)` (2.26 names the first folder of the path it refused, /x);
- a missing nixosConfigurations.<name> is found by F, with the names the flake has.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from topdeck.core import strict
from topdeck.core.errors import NixError
from topdeck.core.inventory import Build, is_safe_name
from topdeck.core.nix import localnix
from topdeck.core.nix.store import StorePath, parse_store_path

FLAKE_COMMAND = ("nix", "--extra-experimental-features", "nix-command flakes")
TOPLEVEL = "config.system.build.toplevel"
DRV_OUTPUT_SINCE = (2, 13, 0)  # `DRV^out` (Nix 2.13 release notes); 2.8 builds a bare DRV's outputs
_SOURCE_FILE = re.compile(r"/nix/store/[0-9a-z]{32}-source/([^'\"]+)")
_UNTRACKED = re.compile(r"Path '([^']+)' in the repository .* is not tracked by Git")
_OUTSIDE = re.compile(r"access to (?:absolute )?path '([^']+)' is forbidden")


def build_flakes(builds: Iterable[Build], *, log: Callable[[str], None], cancel: threading.Event | None = None,
                 env: Mapping[str, str] | None = None) -> dict[Build, StorePath]:
    """Each flake build's toplevel, all built in one `nix build` (see the module doc); Nix's log lines go to
    `log`. NixError in one line for a bad flake, a missing configuration or a failed build; Cancelled when
    `cancel` is set."""
    builds = list(dict.fromkeys(builds))
    if not builds:
        return {}
    version = localnix.detect_nix(env).number
    derivations: dict[Build, str] = {}
    for flake, group in _by_flake(builds).items():
        derivations.update(zip(group, _evaluate(flake, group, log, cancel, env), strict=True))
    wanted = sorted(set(derivations.values()))
    suffix = "^out" if version >= DRV_OUTPUT_SINCE else ""
    command = [*FLAKE_COMMAND, "build", "--json", "--no-link", "-L", *(drv + suffix for drv in wanted)]
    what = _what(builds)
    outputs = _outputs(localnix.run_logged(command, what=what, log=log, cancel=cancel, env=env), what)
    missing = [drv for drv in wanted if drv not in outputs]
    if missing:
        raise NixError(f"{what}: nix build printed no output for {missing[0]}")
    return {build: outputs[drv] for build, drv in derivations.items()}


def _by_flake(builds: list[Build]) -> dict[str, list[Build]]:
    groups: dict[str, list[Build]] = {}
    for build in builds:
        if build.kind != "flake" or not is_safe_name(build.name):
            raise NixError(f"{build.where or build.flake}: not a flake build of a configuration name")
        groups.setdefault(build.flake, []).append(build)
    return groups


def _evaluate(flake: str, group: list[Build], log: Callable[[str], None], cancel: threading.Event | None,
              env: Mapping[str, str] | None) -> list[str]:
    """The toplevel derivation of each build of one flake, in one evaluation."""
    first = group[0]
    _check_local(flake, first.where)
    names = " ".join(f'"{build.name}"' for build in group)
    apply = (f"cs: let names = [ {names} ]; in {{ available = builtins.attrNames cs; "
             "missing = builtins.filter (n: !(cs ? ${n})) names; "
             f"drvs = map (n: if cs ? ${{n}} then cs.${{n}}.{TOPLEVEL}.drvPath else null) names; }}")
    command = [*FLAKE_COMMAND, "eval", "--json", f"{flake}#nixosConfigurations", "--apply", apply]
    try:
        stdout = localnix.run_logged(command, what=first.where, log=log, cancel=cancel, env=env)
    except NixError as error:
        raise NixError(_explain(flake, first.where, str(error))) from None
    try:
        result = strict.loads(stdout)
        available, missing, drvs = result["available"], result["missing"], result["drvs"]
    except (ValueError, KeyError, TypeError):
        raise NixError(f"{first.where}: nix eval of {flake} printed something unexpected: {stdout[:80]!r}") from None
    if missing:
        build = next(b for b in group if b.name == missing[0])
        raise NixError(f"{build.where}: flake {flake} has no nixosConfigurations.{missing[0]} "
                       f"(it has: {', '.join(available) or 'none'})")
    for drv in drvs:
        parse_store_path(drv)
    return list(drvs)


def _check_local(flake: str, where: str) -> None:
    if not flake.startswith("/"):
        return
    folder = Path(flake)
    if not folder.is_dir():
        raise NixError(f"{where}: flake {flake}: no such folder")
    if not (folder / "flake.nix").is_file():
        raise NixError(f"{where}: flake {flake} has no flake.nix")


def _explain(flake: str, where: str, message: str) -> str:
    """Nix's evaluation error, with the gotchas said plainly (see the module doc)."""
    reason = message.partition(": build failed: ")[2] or message
    source = _SOURCE_FILE.search(reason) or _UNTRACKED.search(reason)
    if source and flake.startswith("/") and ("does not exist" in reason or "No such file" in reason
                                             or "not tracked" in reason):
        # the path is relative to the flake's folder, or (2.8, a flake below a repository's top) to the repository
        folders = [Path(flake), *(p for p in Path(flake).parents if (p / ".git").exists())]
        file = next((folder / source[1] for folder in folders if (folder / source[1]).exists()), None)
        if file is not None:
            return (f"{where}: {file} is not tracked by git: a flake in a git repository sees only its tracked "
                    f"files (git add {file.relative_to(folders[0]) if folders[0] in file.parents else file})")
    outside = _OUTSIDE.search(reason)
    if outside:
        return (f"{where}: flake {flake} reads {outside[1]}, outside the flake, which pure evaluation forbids "
                "(put it into the flake)")
    if "does not provide attribute" in reason and "nixosConfigurations" in reason:
        return f"{where}: flake {flake} has no nixosConfigurations"
    return f"{where}: evaluating flake {flake} failed: {reason}"


def _outputs(stdout: str, what: str) -> dict[str, StorePath]:
    """drvPath -> its `out` from `nix build --json`."""
    try:
        return {entry["drvPath"]: parse_store_path(entry["outputs"]["out"]) for entry in strict.loads(stdout)}
    except (ValueError, KeyError, TypeError):
        raise NixError(f"{what}: nix build --json printed something unexpected: {stdout[:80]!r}") from None


def _what(builds: list[Build]) -> str:
    flakes = sorted({build.flake for build in builds})
    return f"flake {flakes[0]}" if len(flakes) == 1 else f"flakes {', '.join(flakes)}"

