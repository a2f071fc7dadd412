"""Build hosts' toplevels and push them as one release: what `topdeck build`, `push --on`, `apply` and the
TUI's plan screen share.

All flake hosts build in one `nix build` (core.nix.flakes), all `nix` files in one nix-build, and each distinct `nixos`
configuration once; a host's build runs once however many hosts share it. The pushed closures are the union of
the hosts' toplevels, in one push (one presence check), and then each host's pointer names its toplevel; hosts that
follow one pointer must build one toplevel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from topdeck.core.cache.interface import Cache
from topdeck.core.cache.push import PushSettings, push_all
from topdeck.core.errors import InventoryError, NixError
from topdeck.core.events import Emit, LogLine, PushResult, ignore
from topdeck.core.inventory import Build, Host
from topdeck.core.nix import flakes, localnix
from topdeck.core.nix.signing import SecretKey
from topdeck.core.nix.store import StorePath


def buildable(hosts: Sequence[Host]) -> None:
    """InventoryError unless every host has a [build] (of its own, or the fleet's flake)."""
    for host in hosts:
        if host.build is None:
            raise InventoryError(f"{host.source}: host {host.name} has no [build] section (and topdeck.toml no "
                                 "[build] flake), so topdeck cannot build its toplevel")


def build_hosts(hosts: Sequence[Host], *, emit: Emit = ignore, cancel: threading.Event | None = None,
                nix_path_args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> dict[str, StorePath]:
    """Each host's toplevel (see build_each); the first failure raises."""
    built, failures = build_each(hosts, emit=emit, cancel=cancel, nix_path_args=nix_path_args, env=env)
    if failures:
        raise next(iter(failures.values()))
    return built


def build_each(hosts: Sequence[Host], *, emit: Emit = ignore, cancel: threading.Event | None = None,
               nix_path_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
               ) -> tuple[dict[str, StorePath], dict[str, NixError]]:
    """(host -> toplevel, host -> why its build failed): the flake hosts built in one `nix build`, the `nix` files
    in one nix-build (when that fails, each alone, to tell which failed), each `nixos` build once. Log lines are
    LogLine events named by the host, or by `flake` and `nix-build` for the shared builds. Cancelled stops at
    once."""
    buildable(hosts)
    by_build: dict[Build, list[str]] = {}
    for host in hosts:
        assert host.build is not None
        by_build.setdefault(host.build, []).append(host.name)
    built: dict[Build, StorePath] = {}
    failed: dict[Build, NixError] = {}
    flake_builds = [build for build in by_build if build.kind == "flake"]
    try:
        built.update(flakes.build_flakes(flake_builds, log=_logger(emit, "flake"), cancel=cancel, env=env))
    except NixError as error:
        failed.update(dict.fromkeys(flake_builds, error))
    files = [build for build in by_build if build.kind == "nix"]
    if len(files) > 1:
        try:
            built.update(zip(files, localnix.build_files(files, log=_logger(emit, "nix-build"), cancel=cancel,
                                                         nix_path_args=nix_path_args, env=env), strict=True))
        except NixError:
            pass  # one of them failed: each one alone, below, says which
    for build, names in by_build.items():
        if build.kind != "flake" and build not in built:
            try:
                built[build] = localnix.build(build, log=_logger(emit, names[0]), cancel=cancel,
                                              nix_path_args=nix_path_args, env=env)
            except NixError as error:
                failed[build] = error
    return ({name: built[build] for build, names in by_build.items() if build in built for name in names},
            {name: failed[build] for build, names in by_build.items() if build in failed for name in names})


def pointer_targets(hosts: Sequence[Host], toplevels: Mapping[str, StorePath]) -> dict[str, StorePath]:
    """pointer -> the toplevel its hosts built; InventoryError naming them when hosts of one pointer built
    different toplevels."""
    by_pointer: dict[str, dict[StorePath, list[str]]] = {}
    for host in hosts:
        by_pointer.setdefault(host.pointer, {}).setdefault(toplevels[host.name], []).append(host.name)
    for pointer, targets in by_pointer.items():
        if len(targets) > 1:
            described = "; ".join(f"{', '.join(names)} build{'s' if len(names) == 1 else ''} {path.name}"
                                  for path, names in targets.items())
            raise InventoryError(f"pointer {pointer}: its hosts build different toplevels ({described}): give them "
                                 "pointers of their own, or the same system; nothing was pushed")
    return {pointer: next(iter(targets)) for pointer, targets in by_pointer.items()}


def release(hosts: Sequence[Host], cache_of: Callable[[], Cache], key: SecretKey, *,
            settings: PushSettings | None = None, nix_path_args: Sequence[str] = (),
            env: Mapping[str, str] | None = None, emit: Emit = ignore,
            cancel: threading.Event | None = None) -> PushResult:
    """Build the hosts, then push all their toplevels in one push and point each host's pointer at its toplevel.
    A pointer conflict is refused after the build, before the cache is opened."""
    toplevels = build_hosts(hosts, emit=emit, cancel=cancel, nix_path_args=nix_path_args, env=env)
    targets = pointer_targets(hosts, toplevels)
    unique = list(dict.fromkeys(toplevels[host.name] for host in hosts))
    return push_all(unique, cache_of(), key, pointers=targets, settings=settings or PushSettings(), emit=emit,
                    cancel=cancel)


def _logger(emit: Emit, label: str) -> Callable[[str], None]:
    return lambda line: emit(LogLine(line, label))
