"""Two operators publishing one pointer at the same moment (issue 26, item 5), on a folder cache: the sidecar's
versions are each serial's claim, so no serial in the .txt history ever names two systems. The same race between two
real `topdeck push` processes on the B2 emulator is in tests/lab/test_pointer_race_lab.py."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import pytest
from tui_fakes import DB, WEB_NEW, toplevel

from topdeck.core.cache import pointers
from topdeck.core.cache.folder import DirCache
from topdeck.core.errors import PointerRace
from topdeck.core.nix.signing import generate_keypair

MINE, THEIRS = toplevel(WEB_NEW), toplevel(DB)
KEY, _ = generate_keypair("test-1")


class RivalAtEveryClaim(DirCache):
    """Another operator whose sidecar lands right after each of ours, at the same serial, `times` times."""

    def __init__(self, root, times: int):  # type: ignore[no-untyped-def]
        super().__init__(root, "http://x")
        self.times = times

    def put_bytes(self, name, data, **kwargs):  # type: ignore[no-untyped-def]
        super().put_bytes(name, data, **kwargs)
        if name == pointers.sidecar_name("web") and self.times > 0 and b'"path": "' + str(MINE).encode() in data:
            self.times -= 1
            serial = pointers.parse_sidecar(data, name).serial
            rival = pointers.signed(pointers.Pointer("web", THEIRS, serial, 1), KEY)
            super().put_bytes(name, pointers.render_sidecar(rival), content_type="application/json",
                              info=pointers.info_of(rival))
            super().put_bytes(pointers.text_name("web"), f"{THEIRS}\n".encode(), content_type="text/plain",
                              info=pointers.info_of(rival))


def paths_by_serial(cache) -> dict[int, set[str]]:  # type: ignore[no-untyped-def]
    named: dict[int, set[str]] = defaultdict(set)
    for version in pointers.history(cache, "web", [KEY.public_key()]):
        named[version.serial].add(version.path)
    return dict(named)


def test_a_publish_that_meets_another_at_its_serial_publishes_again_above_it(tmp_path):
    cache = RivalAtEveryClaim(tmp_path, times=1)
    pauses: list[float] = []
    published = pointers.publish(cache, "web", MINE, KEY, clock=lambda: 2, pause=pauses.append)
    assert published.serial == 2
    assert paths_by_serial(cache) == {1: {str(THEIRS)}, 2: {str(MINE)}}
    assert pointers.read_verified(cache, "web", [KEY.public_key()]).path == MINE
    assert len(pauses) == 1 and 0 <= pauses[0] <= pointers.RACE_PAUSE


def test_a_publish_that_always_meets_another_stops_with_one_line_naming_it(tmp_path):
    cache = RivalAtEveryClaim(tmp_path, times=pointers.RACE_TRIES)
    with pytest.raises(PointerRace) as refused:
        pointers.publish(cache, "web", MINE, KEY, pause=lambda seconds: None)
    assert str(THEIRS) in str(refused.value) and "nothing published" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert all(paths == {str(THEIRS)} for paths in paths_by_serial(cache).values())
    assert len(paths_by_serial(cache)) == pointers.RACE_TRIES


def test_an_abandoned_claim_burns_its_serial(tmp_path):
    cache = DirCache(tmp_path, "http://x")
    pointers.publish(cache, "web", THEIRS, KEY)
    abandoned = pointers.signed(pointers.Pointer("web", THEIRS, 7, 1), KEY)
    cache.put_bytes(pointers.sidecar_name("web"), pointers.render_sidecar(abandoned), content_type="application/json",
                    info=pointers.info_of(abandoned))
    assert pointers.publish(cache, "web", MINE, KEY, pause=lambda seconds: None).serial == 8
    assert paths_by_serial(cache) == {1: {str(THEIRS)}, 8: {str(MINE)}}


def test_a_forged_claim_does_not_move_the_serial_or_stop_a_publish(tmp_path):
    cache = DirCache(tmp_path, "http://x")
    forger, _ = generate_keypair("test-1")
    forged = pointers.signed(pointers.Pointer("web", THEIRS, 40, 1), forger)
    cache.put_bytes(pointers.sidecar_name("web"), pointers.render_sidecar(forged), content_type="application/json",
                    info=pointers.info_of(forged))
    assert pointers.publish(cache, "web", MINE, KEY).serial == 1


def test_the_same_system_at_one_serial_is_no_race():
    mine = pointers.signed(pointers.Pointer("web", MINE, 3, 1), KEY)
    same = pointers.PointerVersion(str(MINE), 3, 0)
    higher = dataclasses.replace(same, path=str(THEIRS), serial=4)
    assert pointers.claimed_meanwhile([same], mine) is None
    assert pointers.claimed_meanwhile([same, higher], mine) == higher
