"""The WAN lab's values (topdeck.lab.wan): round trips per leg and rates, read strictly; a bad one is one line that
names itself, from the parser and from `topdeck lab up`."""

from __future__ import annotations

import pytest

from topdeck.cli.main import main
from topdeck.lab.errors import LabError
from topdeck.lab.wan import Wan, format_rate, make_wan, parse_rate, parse_rtt, relay_address


@pytest.mark.parametrize(("text", "legs"), [
    ("cache=100ms", {"cache": 100}),
    ("cache=100ms,ssh=40ms", {"cache": 100, "ssh": 40}),
    ("api=0.2s, cache=0", {"api": 200, "cache": 0}),
    ("ssh=1s", {"ssh": 1000}),
    ("cache=10000ms", {"cache": 10_000}),
])
def test_round_trips_per_leg(text, legs):
    assert parse_rtt(text) == legs


@pytest.mark.parametrize(("text", "words"), [
    ("cache", "expected LEG=TIME"),
    ("disk=10ms", "expected LEG=TIME"),
    ("cache=10ms,cache=20ms", "names cache twice"),
    ("cache=-5ms", "not a time"),
    ("cache=fast", "not a time"),
    ("cache=10 ms", "not a time"),
    ("cache=١٠ms", "not a time"),  # digits of another script
    ("cache=0.5ms", "whole milliseconds"),
    ("cache=11s", "whole milliseconds"),
    ("", "expected LEG=TIME"),
])
def test_bad_round_trips_are_refused_by_name(text, words):
    with pytest.raises(LabError, match=words) as caught:
        parse_rtt(text)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("text", "bits"), [
    ("20mbit", 20_000_000), ("512kbit", 512_000), ("1gbit", 1_000_000_000), ("1.5mbit", 1_500_000),
    ("20Mbit", 20_000_000), ("none", 0), ("0", 0),
])
def test_rates_in_tc_words(text, bits):
    assert parse_rate(text, "uplink") == bits


@pytest.mark.parametrize("text", ["20mbps", "20", "fast", "-1mbit", "1bit", "100gbit", "20 mbit", ""])
def test_bad_rates_are_refused_by_name(text):
    with pytest.raises(LabError, match="^uplink ") as caught:
        parse_rate(text, "uplink")
    assert "\n" not in str(caught.value)


def test_what_status_shows():
    assert Wan().describe() == "none (loopback)"
    assert make_wan({"cache": 100, "ssh": 40}, uplink=20_000_000).describe() == \
        "cache 100 ms, ssh 40 ms, uplink 20 mbit"
    assert format_rate(1_500_000) == "1.5 mbit"
    assert format_rate(512_000) == "512 kbit"


def test_relay_addresses():
    assert relay_address("127.0.54.11") == "127.200.54.11"
    assert relay_address("127.3.0.12") == "127.203.0.12"
    with pytest.raises(LabError):
        relay_address("127.60.0.11")
    with pytest.raises(LabError):
        relay_address("10.0.0.1")


@pytest.mark.parametrize(("argv", "words"), [
    (["lab", "up", "--rtt", "cache=abc"], "--rtt: cache 'abc': not a time"),
    (["lab", "up", "--rtt", "disk=1ms"], "--rtt: 'disk=1ms': expected LEG=TIME"),
    (["lab", "up", "--uplink", "20mbps"], "--uplink: '20mbps': not a rate"),
    (["lab", "up", "--downlink", "1bit"], "--downlink: '1bit': from 8 kbit"),
])
def test_lab_up_refuses_bad_values_in_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
