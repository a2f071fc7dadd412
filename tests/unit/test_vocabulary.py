"""core.vocabulary: the shared words are plain strings where they leave topdeck (JSON, the host script's lines)."""

from __future__ import annotations

import json

import pytest

from topdeck.core.vocabulary import FINAL_PHASES, SWITCH_MODES, HostState, Mode, Outcome, Phase, PlanStatus


def test_each_outcome_is_the_final_phase_of_the_same_name() -> None:
    assert [phase.value for phase in FINAL_PHASES] == [outcome.value for outcome in Outcome]
    assert all(isinstance(phase, Phase) for phase in FINAL_PHASES)
    assert Phase.CONFIRM not in FINAL_PHASES and Phase.DONE in FINAL_PHASES


def test_the_modes_switch_to_configuration_takes_leave_out_reboot() -> None:
    assert [str(mode) for mode in SWITCH_MODES] == ["switch", "boot", "test", "dry-activate"]
    assert Mode.REBOOT not in SWITCH_MODES


@pytest.mark.parametrize("word", [Mode.DRY_ACTIVATE, Outcome.ROLLED_BACK, Phase.RETURNING, HostState.UP_TO_DATE,
                                  PlanStatus.HOST_KEY])
def test_a_member_is_its_word_in_text_and_json(word) -> None:
    assert f"{word}" == word.value and json.dumps({"w": word}) == json.dumps({"w": word.value})
    assert type(word)(word.value) is word  # the host script's word parses back


def test_a_word_the_vocabulary_lacks_is_refused() -> None:
    with pytest.raises(ValueError):
        Phase("activating")
    with pytest.raises(ValueError):
        Mode("Switch")
