"""core.events: frozen events, results that judge themselves, and what switch-to-configuration's status means."""

from __future__ import annotations

import dataclasses

import pytest

from topdeck.core.events import SWITCH_CODES, DeployResult, HostOutcome, HostPhase, ignore, switch_meaning
from topdeck.core.vocabulary import Mode, Outcome, Phase


def test_events_are_frozen() -> None:
    event = HostPhase("web-1", Phase.FETCH)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.phase = Phase.DONE  # type: ignore[misc]
    assert ignore(event) is None


def test_a_result_is_ok_only_when_it_has_hosts_and_every_one_is_done() -> None:
    done, failed = HostOutcome("a", Outcome.DONE, "t"), HostOutcome("b", Outcome.SKIPPED, "t")
    assert done.ok and not failed.ok
    assert DeployResult("r", Mode.SWITCH, (done,)).ok
    assert not DeployResult("r", Mode.SWITCH, ()).ok  # nothing deployed is not a success
    both = DeployResult("r", Mode.SWITCH, (done, failed, HostOutcome("c", Outcome.ROLLED_BACK, "t")))
    assert not both.ok and both.failed == ("b", "c")


@pytest.mark.parametrize(("code", "meaning"), [
    (None, ""),
    (0, "activated"),
    (4, "units failed to start or restart"),
    (100, "the new init is incompatible: installed as the boot default, takes effect after a reboot"),
    (3, "failed (exit 3)"),
    (-9, "failed (exit -9)"),
])
def test_switch_meaning(code, meaning) -> None:
    assert switch_meaning(code) == meaning


def test_the_codes_are_switch_to_configuration_ngs() -> None:
    assert sorted(SWITCH_CODES) == [0, 1, 2, 4, 11, 100]
