"""The CLI names the flag behind a setting that core's error starts with, or adds it where the text does not."""

from topdeck.cli.main import error_text
from topdeck.core.errors import DeployError, GcError, TopdeckError


def test_a_setting_given_by_a_flag_is_named_as_the_flag():
    assert error_text(DeployError("canary -1: must be 0 or more", setting="canary")) == "--canary -1: must be 0 or more"
    assert error_text(GcError("cannot ask 1 host(s)", setting="skip_unreachable")) == \
        "cannot ask 1 host(s) (--skip-unreachable)"


def test_other_errors_are_printed_as_core_words_them():
    assert error_text(DeployError("specialisation 'x y': bad", setting="specialisation")) == "specialisation 'x y': bad"
    assert error_text(TopdeckError("host-9: no such host")) == "host-9: no such host"
