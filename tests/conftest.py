"""Fixtures shared by the end-to-end tests: one lab for the whole session, on its own addresses."""

from __future__ import annotations

import os

import pytest

from topdeck.lab.lab import Lab

# The tests' lab lives on its own addresses and a free port, so a running demo lab is left alone.
TEST_BASE_ADDRESS = "127.0.3.11"


def pytest_configure(config: pytest.Config) -> None:
    from topdeck.lab.nixenv import LAB_NIX_CONFIG

    os.environ["NIX_CONFIG"] = LAB_NIX_CONFIG


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
