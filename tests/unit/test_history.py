"""The shared, signed run history (issue 26, item 3) on a folder cache: records by two operators, a forged and a
tampered record, the local copies, the filters. The same on the lab's B2 emulator and hosts, through `topdeck` as a
process, is tests/lab/test_shared_history.py."""

from __future__ import annotations

import dataclasses
import json
import time

from test_pointers import NEW, OLD, fleet_with, store_closure

from topdeck.core import history
from topdeck.core.events import DeployResult, HostOutcome, LogLine
from topdeck.core.facade import Fleet, _last_deploy
from topdeck.core.gc import plan_gc
from topdeck.core.nix.signing import generate_keypair
from topdeck.core.vocabulary import Mode, Outcome


def operators(tmp_path) -> tuple[Fleet, Fleet]:  # type: ignore[no-untyped-def]
    alice = fleet_with(tmp_path)
    bob = Fleet(alice.inventory, failed_hosts=lambda root: (), operator="bob", history_copies=tmp_path / "bob")
    alice = Fleet(alice.inventory, failed_hosts=lambda root: (), operator="alice", history_copies=tmp_path / "alice")
    for path in (OLD, NEW):
        store_closure(alice.cache, path)
    return alice, bob


def a_deploy(run_id: str = "20261207-120000-abcdef") -> DeployResult:
    return DeployResult(run_id, Mode.SWITCH, (
        HostOutcome("web-1", Outcome.DONE, str(NEW), finished=1_795_000_100.0),
        HostOutcome("web-2", Outcome.ROLLED_BACK, str(NEW), reason="check failed", finished=1_795_000_101.0)),
        started=1_795_000_000.0, finished=1_795_000_102.0)


def test_each_operator_sees_the_others_publish_and_deploy(tmp_path):
    alice, bob = operators(tmp_path)
    alice.publish_pointer("web", str(OLD))
    bob._record(history.from_result(a_deploy(), "deploy", bob.operator, {"web-1": "web", "web-2": "web"}),
                lambda event: None)
    seen_by_alice, seen_by_bob = alice.run_history(), bob.run_history()
    assert [e.record for e in seen_by_alice] == [e.record for e in seen_by_bob]
    records = {e.record.who: e.record for e in seen_by_bob if e.record}
    assert (records["alice"].kind, records["alice"].pointer, records["alice"].serial, records["alice"].path) == \
        ("publish", "web", 1, str(OLD))
    deploy = records["bob"]
    assert (deploy.kind, deploy.mode, deploy.pointer, deploy.path) == ("deploy", "switch", "web", str(NEW))
    assert [(h.host, h.outcome, h.reason) for h in deploy.hosts] == [("web-1", "done", ""),
                                                                     ("web-2", "rolled-back", "check failed")]
    assert all(e.verified for e in seen_by_alice)


def test_the_last_deploy_column_names_the_newest_run_of_any_operator(tmp_path):
    alice, bob = operators(tmp_path)
    bob._record(history.from_result(a_deploy(), "deploy", "bob"), lambda event: None)
    last = history.last_deploys(alice.run_history())
    assert _last_deploy(last["web-2"]) == "2026-11-18 11:08:21Z deploy rolled-back by bob"
    assert "web-3" not in last and _last_deploy(None) == ""


def test_a_forged_a_tampered_and_an_unreadable_record_are_unverified_never_history(tmp_path):
    alice, _ = operators(tmp_path)
    forger, _ = generate_keypair("test-1")  # the trusted key's name, another key
    forged = history.from_result(a_deploy("20261207-120000-f0f0f0"), "deploy", "mallory")
    alice.cache.put_bytes(history.record_name(forged), history.render(forged, forger), content_type="application/json")
    genuine = history.render(history.from_result(a_deploy("20261207-120000-aaaaaa"), "deploy", "alice"),
                             alice.signing_key())
    tampered = json.loads(genuine)
    tampered["record"]["who"] = "bob"
    alice.cache.put_bytes("runs/20261207-120000-aaaaaa.json", json.dumps(tampered).encode(),
                          content_type="application/json")
    alice.cache.put_bytes("runs/20261207-120000-bbbbbb.json", b"[/]\x1b[2J not json", content_type="text/plain")
    entries = alice.run_history()
    assert len(entries) == 3 and not any(e.verified or e.record for e in entries)
    assert {e.problem.split(" (")[0].split(":")[0] for e in entries} == {"unverified"}
    assert sum(history.UNVERIFIED == e.problem for e in entries) == 2
    assert history.last_deploys(entries) == {}


def test_a_record_read_once_is_not_downloaded_again_unless_replaced(tmp_path):
    alice, _ = operators(tmp_path)
    alice.publish_pointer("web", str(OLD))
    copies = history.LocalCopies(tmp_path / "copies")
    listing_of = alice.cache.listing_of
    keys = [alice.trusted_key()]
    history.read(alice.cache, keys, listing_of, copies)
    assert len(copies.read) == 1
    copies.read.clear()
    history.read(alice.cache, keys, listing_of, copies)
    assert copies.read == []
    name = next(iter(listing_of("runs/")))
    forged = history.from_result(a_deploy(), "deploy", "mallory")
    alice.cache.put_bytes(name, history.render(forged, generate_keypair("test-1")[0]),
                          content_type="application/json")
    entries = history.read(alice.cache, keys, listing_of, copies)
    assert copies.read == [name] and not entries[0].verified


def test_the_host_filter_keeps_runs_on_the_hosts_and_publishes_of_their_pointers(tmp_path):
    alice, _ = operators(tmp_path)
    alice.publish_pointer("web", str(OLD))
    alice.publish_pointer("db", str(NEW))
    alice._record(history.from_result(a_deploy(), "deploy", "alice", {"web-1": "web"}), lambda event: None)

    def kinds(selector: str) -> list[tuple[str, str]]:
        return sorted((e.record.kind, e.record.pointer) for e in alice.run_history([selector]) if e.record)

    assert kinds("web-1") == [("deploy", "web"), ("publish", "web")]
    assert kinds("db-1") == [("publish", "db")]
    assert len(alice.run_history()) == 3


def test_without_a_signing_key_a_run_is_not_recorded_and_says_so(tmp_path):
    alice, _ = operators(tmp_path)
    unsigned = Fleet(dataclasses.replace(alice.inventory, cache=dataclasses.replace(alice.inventory.cache,
                                                                                    signing_key=None)),
                     history_copies=tmp_path / "c")
    said: list[object] = []
    unsigned._record(history.from_result(a_deploy(), "deploy", "x"), said.append)
    assert said == [LogLine("history: not recorded in the bucket (cache.signing_key is not set: records are "
                            "signed)")]
    assert alice.run_history() == []


def test_gc_keeps_the_history_or_only_the_days_asked_for(tmp_path):
    alice, _ = operators(tmp_path)
    alice._record(history.from_result(a_deploy(), "deploy", "alice"), lambda event: None)
    versions = alice.cache.all_versions()
    later = time.time() + 10 * 86400
    record = next(v.name for v in versions if v.name.startswith("runs/"))

    def deleted(days: float | None) -> set[str]:
        return {e.name for e in plan_gc(alice.cache, {}, versions, min_age=0, now=later,
                                        history_days=days).deletions}

    assert record not in deleted(None) and record not in deleted(11)
    assert record in deleted(9)
