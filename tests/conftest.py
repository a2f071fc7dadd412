"""What both tiers share: the folder marks (tests/unit/ is `unit`, tests/lab/ is `lab`), the session's state folder,
and the end-to-end tests' lab: one for the whole session, on its own addresses.

The helpers beside this file (labtools.py, deploytools.py, nixtools.py, tui_fakes.py, hostile*.py, shownlint.py,
agentmodule.py) are imported by plain name from both tiers: pytest puts this folder on `sys.path` when it loads this
conftest (the default `prepend` import mode, no `__init__.py`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from topdeck.lab.lab import Lab

# The tests' lab lives on its own addresses and a free port, so a running demo lab is left alone.
# TOPDECK_TEST_BASE_ADDRESS moves it, so that two test runs can share a machine.
TEST_BASE_ADDRESS = os.environ.get("TOPDECK_TEST_BASE_ADDRESS", "127.0.3.11")
_STATE: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    from topdeck.lab.nixenv import LAB_NIX_CONFIG

    os.environ["NIX_CONFIG"] = LAB_NIX_CONFIG
    # topdeck's own state (run records) goes to a folder of this session, never to the user's ~/.local/state
    _STATE.append(tempfile.mkdtemp(prefix="topdeck-test-state-"))
    os.environ["XDG_STATE_HOME"] = _STATE[0]
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and os.geteuid() == 0:  # as any other user, only the unit tier can run (and needs no namespace)
        import workerns

        workerns.isolate(worker)


TIERS = {"unit": Path(__file__).parent / "unit", "lab": Path(__file__).parent / "lab"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--alone", choices=("with", "skip", "only"), default="with",
                     help="the tests marked `alone`: run with the others (default), skip them (the parallel part of "
                          "`make test`), or run only them (its serial part)")


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark every test by its folder, so `-m unit` and `-m lab` select a tier from any list of paths."""
    for marker, folder in TIERS.items():
        if folder in item.path.parents:
            item.add_marker(marker)


# Last, after syrupy has listed the collected tests: a snapshot whose test is dropped here is then not "unused".
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep or drop the `alone` tests as --alone says."""
    alone = config.getoption("alone")
    if alone != "with":
        dropped = [item for item in items if (item.get_closest_marker("alone") is not None) == (alone == "skip")]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if item not in dropped]


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _STATE:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root: the lab uses mount namespaces and sshd on 127.0.x.x")
    lab = Lab(tmp_path_factory.mktemp("lab"), base_address=TEST_BASE_ADDRESS, emulator_port=0)
    try:
        lab.up(count=3, log=lambda *_: None)
        yield lab
    finally:
        lab.down(log=lambda *_: None)


def write_lab_inventory(lab: Lab, root, prefix: str, roles: dict[str, str] | None = None):
    """An inventory for the test lab's hosts (host-1, host-2 follow `web`; host-3 `db`), with its own cache prefix.

    Each role's toplevel is built from a factory spec written beside the inventory."""

    from topdeck.lab import factory

    roles = roles or {"host-1": "web", "host-2": "web", "host-3": "db"}
    root.mkdir(parents=True, exist_ok=True)
    (root / "topdeck.toml").write_text(
        f'[cache]\nbucket = "topdeck-lab"\nprefix = "{prefix}"\nrealm = "{lab.emulator.url}"\n'
        f'credentials_file = "{lab.b2_credentials}"\ngc_credentials_file = "{lab.b2_gc_credentials}"\n'
        f'signing_key = "{lab.cache_secret_key}"\n'
        f'public_key_file = "{lab.cache_public_key}"\n\n'
        f'[ssh]\nknown_hosts = "{lab.known_hosts}"\nidentity = "{lab.client_key}"\nconnect_timeout = 5\n'
    )
    for role in set(roles.values()):
        spec = factory.add_package(factory.initial_system([lab.client_public_key()], host=role, count=30),
                                   factory.Package(f"{role}-app", "1.0", size=200_000))
        (root / f"{role}.json").write_text(factory.spec_to_json(spec))
    for name, role in roles.items():
        (root / name).mkdir()
        host = f'address = "{lab.host(name).address}"\npointer = "{role}"\ntags = ["{role}"]\n'
        (root / name / "host.toml").write_text(host + '\n[build]\nnix = "default.nix"\n')
        (root / name / "default.nix").write_text(
            f"import {factory.TOPLEVEL_NIX} {{ specFile = ../{role}.json; }}\n"
        )
    return root


@pytest.fixture
def lab_inventory(lab, tmp_path):
    import uuid

    return write_lab_inventory(lab, tmp_path / "hosts", f"inv-{uuid.uuid4().hex[:8]}")
