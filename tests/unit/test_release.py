"""core.release without Nix: which hosts can be built, and one toplevel per pointer (a conflict refused before the
cache is opened). Building and pushing for real: tests/lab/test_build_cli.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from topdeck.core.errors import InventoryError
from topdeck.core.inventory import Build, Host
from topdeck.core.nix.store import parse_store_path
from topdeck.core.release import buildable, pointer_targets

WEB = parse_store_path("/nix/store/" + "1" * 32 + "-nixos-system-web")
WEB_OTHER = parse_store_path("/nix/store/" + "2" * 32 + "-nixos-system-web-other")
DB = parse_store_path("/nix/store/" + "3" * 32 + "-nixos-system-db")


NIX_FILE = Build("nix", Path("default.nix"))


def host(name: str, pointer: str, build: Build | None = NIX_FILE) -> Host:
    return Host(name, "10.0.0.1", pointer, build=build, source=Path(f"hosts/{name}/host.toml"))


def test_every_host_needs_a_build() -> None:
    buildable([host("web-1", "web"), host("db-1", "db")])
    with pytest.raises(InventoryError) as caught:
        buildable([host("web-1", "web"), host("db-1", "db", build=None)])
    assert str(caught.value) == ("hosts/db-1/host.toml: host db-1 has no [build] section (and topdeck.toml no [build] "
                                 "flake), so topdeck cannot build its toplevel")


def test_each_pointer_gets_the_toplevel_its_hosts_built() -> None:
    hosts = [host("web-1", "web"), host("web-2", "web"), host("db-1", "db")]
    assert pointer_targets(hosts, {"web-1": WEB, "web-2": WEB, "db-1": DB}) == {"web": WEB, "db": DB}
    assert pointer_targets([], {}) == {}


def test_hosts_of_one_pointer_that_built_different_toplevels_are_named() -> None:
    hosts = [host("web-1", "web"), host("web-2", "web"), host("web-3", "web")]
    with pytest.raises(InventoryError) as caught:
        pointer_targets(hosts, {"web-1": WEB, "web-2": WEB_OTHER, "web-3": WEB})
    assert str(caught.value) == ("pointer web: its hosts build different toplevels (web-1, web-3 build "
                                 "nixos-system-web; web-2 builds nixos-system-web-other): give them pointers of their "
                                 "own, or the same system; nothing was pushed")
