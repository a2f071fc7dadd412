"""core.deploy: the modes a front end may name, run ids that sort by time, what a target may be, and waves at their
edges (the engine against fake hosts: test_engine_units.py and test_deploy_units.py; against real hosts:
tests/lab/test_deploy_lab.py)."""

from __future__ import annotations

import re

import pytest

from topdeck.core.deploy import Target, mode_of, new_run_id, plan_waves
from topdeck.core.errors import DeployError
from topdeck.core.nix.store import parse_store_path
from topdeck.core.vocabulary import Mode

PATH = parse_store_path("/nix/store/" + "a" * 32 + "-nixos-system-web-1")


@pytest.mark.parametrize("word", ["switch", "boot", "test", "dry-activate", "reboot"])
def test_every_mode_a_front_end_names(word: str) -> None:
    assert mode_of(word) is Mode(word)


@pytest.mark.parametrize("word", ["Switch", "", "switch ", "rollback"])
def test_another_word_is_refused_naming_the_setting_and_the_choices(word: str) -> None:
    with pytest.raises(DeployError) as caught:
        mode_of(word)
    assert caught.value.setting == "mode"
    assert str(caught.value) == f"mode {word!r}: use one of switch, boot, test, dry-activate"


def test_run_ids_start_with_the_utc_time_so_they_sort_by_it() -> None:
    first, second = new_run_id(lambda: 1_700_000_000.0), new_run_id(lambda: 1_700_000_001.0)
    assert re.fullmatch(r"20231114-221320-[0-9a-f]{6}", first)
    assert first < second and new_run_id(lambda: 1_700_000_000.0) != first  # same second, another run


def test_a_target_is_exactly_one_of_a_path_a_generation_or_the_boot_default() -> None:
    Target(PATH, pointer="web", specialisation="gpu")
    Target(generation=7)
    Target(boot_default=True)
    for bad in (dict(generation=7, boot_default=True), dict(path=PATH, boot_default=True), {}):
        with pytest.raises(ValueError, match="a target is a store path, a generation or the host's boot default"):
            Target(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("count", "canary", "wave", "sizes"), [
    (0, 0, None, []),  # no hosts: no wave
    (3, 5, None, [3]),  # more canaries than hosts: they are all the canary wave
    (3, 0, "1%", [1, 1, 1]),  # a share rounds up to one host at least
    (7, 0, "50%", [4, 3]),
    (5, 0, " 2 ", [2, 2, 1]),
])
def test_waves_at_their_edges(count: int, canary: int, wave: str | None, sizes: list[int]) -> None:
    names = [f"h{i}" for i in range(count)]
    waves = plan_waves(names, canary, wave)
    assert [len(w) for w in waves] == sizes and [h for w in waves for h in w] == names


@pytest.mark.parametrize(("canary", "wave", "message"), [
    (-1, None, "canary -1: must be 0 or more"),
    (0, "101%", "wave '101%': give a number of hosts (5) or a share of them (25%)"),
    (0, "0%", "wave '0%': give a number of hosts (5) or a share of them (25%)"),
    (0, "²", "wave '²': give a number of hosts (5) or a share of them (25%)"),
])
def test_bad_waves_name_the_setting(canary: int, wave: str | None, message: str) -> None:
    with pytest.raises(DeployError) as caught:
        plan_waves(["a"], canary, wave)
    assert str(caught.value) == message and caught.value.setting in ("canary", "wave")
