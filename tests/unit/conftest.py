"""The unit tier: no root, no Nix, no network, no lab, no subprocess. A test here that starts a process, opens or serves
a network socket, or asks for the `lab` fixture fails with the reason, so the tier stays fast and runs as any user
(`make check`). What needs any of these belongs in tests/lab/. The one exception is core/remote/host.sh itself, run by
tests/unit/hoststubs.py in a folder that stands for the host's /, with stub tools and no network."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import pytest


class LeftTheUnitTier(AssertionError):
    """A unit test tried to start a process or use the network."""


def _refuse(what: str) -> Callable[..., NoReturn]:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise LeftTheUnitTier(f"a unit test may not {what} (move the test to tests/lab/ or fake the call): "
                              f"{args[1:2]!r}")

    return refuse


@contextmanager
def _in_the_unit_tier() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        # Every way the standard library starts a process ends in one of these (subprocess.run, check_output,
        # asyncio's subprocesses and multiprocessing included); in-process work (threads, Textual's Pilot,
        # asyncio's own socketpair) is untouched.
        patch.setattr(subprocess.Popen, "__init__", _refuse("start a process"))
        for name in ("system", "popen", "posix_spawn", "posix_spawnp", "fork", "forkpty", "execv", "execve",
                     "execvp", "execvpe"):
            if hasattr(os, name):
                patch.setattr(os, name, _refuse(f"start a process (os.{name})"))
        # No network: neither connecting (SSH, the emulator, a cache over HTTP) nor serving.
        for name in ("connect", "connect_ex", "bind"):
            patch.setattr(socket.socket, name, _refuse(f"use the network (socket.{name})"))
        patch.setattr(socket, "create_connection", _refuse("use the network (socket.create_connection)"))
        patch.setattr(socket, "getaddrinfo", _refuse("use the network (socket.getaddrinfo)"))
        yield


# Around each phase of every test in this folder, fixtures of any scope included (a module-scoped fixture is set up
# in its first test's setup and torn down in its last test's teardown): a hook here applies to tests/unit/ only.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _in_the_unit_tier():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _in_the_unit_tier():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    with _in_the_unit_tier():
        yield


@pytest.fixture(scope="session")
def lab() -> NoReturn:
    pytest.fail("a unit test may not use the lab: move it to tests/lab/")


@pytest.fixture
def lab_inventory() -> NoReturn:
    pytest.fail("a unit test may not use the lab: move it to tests/lab/")
