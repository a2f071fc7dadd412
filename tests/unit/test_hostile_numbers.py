"""Issue 21's attacks on numbers, JSON and output size, each by name: a host, the bucket, Nix or an ssh_config that
lies in a number or a repeated JSON key, or prints without end, fails (or is ignored) alone, in one line.

No lab, no root: the fake hosts of test_engine_units.py speak the host script's protocol; the attack is what they
print. tests/lab/test_ssh_lab.py has the bounded output over a real SSH session.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_engine_units import KEY, NEW, OLD, FakeHost, Fleet, manifest, store_path
from test_engine_units import inventory as inventory  # the fixture: three hosts, a folder cache

from topdeck.core import operations, strict
from topdeck.core.cache.access import open_cache
from topdeck.core.cache.manifest import parse_manifest, render_manifest
from topdeck.core.deploy import _Tracker
from topdeck.core.errors import CacheError, DeployError, InventoryError, NixError, SSHConfigError, TopdeckError
from topdeck.core.events import DeployResult, Event, LogLine
from topdeck.core.inventory import Host, Inventory, SSHConfig, load_inventory
from topdeck.core.nix import localnix
from topdeck.core.nix.store import StorePath
from topdeck.core.plan import parse_probe, plan
from topdeck.core.remote import hostverbs
from topdeck.core.remote.ssh import MAX_LINE, MAX_OUTPUT, TRUNCATED, Result, _Stream
from topdeck.core.remote.sshroute import route
from topdeck.core.runs import load_run, save_run
from topdeck.core.vocabulary import HostState, Outcome, PlanStatus


def _hostile(fake: FakeHost, *lines: str) -> None:
    """The host prints `lines` (tab-separated) in its fetch, then goes on as an honest host would."""
    honest = fake._fetch

    def fetch(run: str, target: StorePath) -> None:
        for line in lines:
            fake._event(run, *line.split("\t"))
        honest(run, target)

    fake._fetch = fetch  # type: ignore[method-assign]


# --- a host's deploy lines ----------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["progress\t1\t²\t0\t0", "state\tgeneration\t²", "state\tswitch-code\t²",
                                    "progress\t1\t1\t0\t1" + "0" * 400],
                         ids=["progress 1 ² 0 0", "generation ²", "switch-code ²", "progress 10^400"])
def test_a_hostile_number_in_one_hosts_deploy_lines_leaves_the_other_hosts_outcomes(attack: str,
                                                                                    tmp_path: Path) -> None:
    lab = Fleet("web-1", "web-2", "web-3")
    _hostile(lab.fakes["web-3"], attack)

    result, _ = lab.deploy()

    assert {o.host: o.outcome for o in result.outcomes} == {"web-1": Outcome.DONE, "web-2": Outcome.DONE,
                                                            "web-3": Outcome.DONE}  # the bad line is ignored
    saved = save_run(tmp_path, result, environ={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert load_run(saved).outcomes == result.outcomes


def test_generation_in_arabic_indic_digits_is_not_a_generation() -> None:
    assert hostverbs.parse_status("generation\t٣").generation == 0
    assert hostverbs.parse_status("generation\t²").generation == 0
    assert hostverbs.parse_status("generation\t7").generation == 7


def test_a_tracker_ignores_switch_codes_and_generations_that_are_not_ascii_numbers() -> None:
    events: list[Event] = []
    track = _Tracker("web-1", events.append, lambda: None)
    for line in ("state\tgeneration\t٣", "state\tswitch-code\t²", "state\tswitch-code\t256", "progress\t1\t²\t0\t0"):
        track.line(line)
    assert (track.generation, track.switch_code) == (0, None)
    assert [e.text for e in events if isinstance(e, LogLine)] == ["progress\t1\t²\t0\t0"]  # shown, as any other line


class _SuperscriptGeneration(FakeHost):
    def verb_status(self, out, cancel):  # type: ignore[no-untyped-def]
        super().verb_status(out, cancel)
        out("generation\t²")
        return 0


def test_fleet_status_with_one_host_answering_generation_superscript_two_shows_every_host(
        inventory: Inventory) -> None:
    lab = Fleet("web-1", "web-2", "web-3")
    lab.fakes["web-2"] = _SuperscriptGeneration("web-2", lab.fakes["web-1"].systems)
    (inventory.root / "cache").mkdir()
    statuses = operations.status_fleet(inventory, cache=open_cache(inventory.cache), connect=lab.connect)
    assert [(s.host, s.current, s.generation) for s in statuses] == [(h, str(OLD), 1 if h != "web-2" else 0)
                                                                     for h in ("web-1", "web-2", "web-3")]


class _Answer:
    host = Host("web-1", "10.0.0.1", "web")

    def __init__(self, text: str):
        self.text = text

    def run(self, *_: object, **__: object) -> Result:
        return Result(0, self.text.encode(), b"")


def test_generations_with_superscript_numbers_are_skipped() -> None:
    session = _Answer(f"generation\t²\t2026-12-01\t{OLD}\t24.11\t\ngeneration\t3\t2026-12-02\t{NEW}\t24.11\tcurrent\n")
    assert [g.number for g in hostverbs.generations(session)] == [3]  # type: ignore[arg-type]


def test_closures_with_a_superscript_size_are_skipped() -> None:
    session = _Answer(f"closure\t0\t{OLD}\t²\nclosure\t1\t{NEW}\t12\n")
    assert hostverbs.closures(session, NEW) == ({}, {NEW: 12})  # type: ignore[arg-type]


# --- probe answers (plan) -------------------------------------------------------------------------------

PROBE = f"current\t{OLD}\nbooted\t{OLD}\ngeneration\t3\nfree_kib\t1000\n"


@pytest.mark.parametrize(("attack", "reason"), [
    ("free_kib\t1" + "0" * 400, "free_kib '1000"),
    ("free_kib\t²", "free_kib '²'"),
    ("generation\t٣", "generation '٣'"),
    (f"have\t{OLD}\t²", "could not read the size"),
])
def test_a_probe_answer_with_a_hostile_number_is_refused_in_one_line(attack: str, reason: str) -> None:
    with pytest.raises(TopdeckError, match=rf"^web-1: .*{reason}") as error:
        parse_probe(f"{PROBE}{attack}\n", "web-1")
    assert "\n" not in str(error.value)


class _Liar(FakeHost):
    def probe(self, stdin: bytes, out):  # type: ignore[no-untyped-def]
        out("free_kib\t1" + "0" * 400)
        return super().probe(stdin, out)


def test_a_plan_with_one_host_answering_free_kib_10_to_the_400_plans_the_others() -> None:
    lab = Fleet("web-1", "web-2")
    liar = lab.fakes["web-2"] = _Liar("web-2", lab.fakes["web-1"].systems)
    liar.free_kib = 10**400
    found = plan(lab.hosts, {h.name: NEW for h in lab.hosts}, {NEW: manifest(NEW, {NEW: 100})}, SSHConfig(),
                 connect=lab.connect)
    statuses = {p.host: p.status for p in found.hosts}
    assert statuses == {"web-1": PlanStatus.CHANGE, "web-2": PlanStatus.ERROR}


# --- an unexpected exception on one host (defence in depth) -------------------------------------------------


def _broken(lab: Fleet, name: str) -> None:
    """Any exception at all while reading one host's output: what a bug in a parser would raise."""
    def connect(host: Host, ssh: SSHConfig):  # type: ignore[no-untyped-def]
        if host.name == name:
            raise RuntimeError("a bug")
        return plain(host, ssh)

    plain, lab.connect = lab.connect, connect  # type: ignore[method-assign]


def test_an_internal_error_on_one_host_fails_that_host_and_the_run_is_recorded(tmp_path: Path) -> None:
    lab = Fleet("web-1", "web-2", "web-3")
    _broken(lab, "web-2")
    result, _ = lab.deploy()
    by_host = {o.host: o for o in result.outcomes}
    assert (by_host["web-1"].outcome, by_host["web-3"].outcome) == (Outcome.DONE, Outcome.DONE)
    assert by_host["web-2"].outcome == Outcome.FAILED
    assert by_host["web-2"].reason.startswith("web-2: internal error in topdeck (RuntimeError at ")
    assert "a bug" in by_host["web-2"].reason and isinstance(result, DeployResult)


def test_an_internal_error_on_one_host_fails_that_hosts_plan_and_status(inventory: Inventory) -> None:
    lab = Fleet("web-1", "web-2", "web-3")
    _broken(lab, "web-2")
    found = plan(lab.hosts, {h.name: NEW for h in lab.hosts}, {NEW: manifest(NEW, {NEW: 100})}, SSHConfig(),
                 connect=lab.connect)
    assert [p.status for p in found.hosts] == [PlanStatus.CHANGE, PlanStatus.ERROR, PlanStatus.CHANGE]
    assert "internal error in topdeck (RuntimeError" in found.hosts[1].reason
    (inventory.root / "cache").mkdir()
    statuses = operations.status_fleet(inventory, cache=open_cache(inventory.cache), connect=lab.connect)
    assert [s.status for s in statuses][1] == HostState.ERROR
    assert [s.status for s in statuses][0] != HostState.ERROR and "internal error" in statuses[1].reason


# --- ssh_config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "message"), [
    ("Host web-1\n  Port ²²\n", "Port '²²' is not a port"),
    ("Host web-1\n  Port ١٢\n", "Port '١٢' is not a port"),
    ("Host web-1\n  Port 065536\n", "is not a port"),
    ("Host web-1\n  ProxyJump jump:١٢\n", "ProxyJump hop 'jump:١٢'"),
])
def test_an_ssh_config_port_in_other_digits_is_refused_in_one_line(config: str, message: str,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "ssh_config"
    path.write_text(config)
    with pytest.raises(SSHConfigError, match=message):
        route(Host("web-1", "web-1", "web"), SSHConfig(config=path))


# --- JSON from outside: a repeated key ---------------------------------------------------------------------


def test_a_manifest_with_a_duplicated_key_is_refused() -> None:
    text = render_manifest(manifest(NEW, {NEW: 100})).decode()
    twice = text.replace('"format":1', f'"toplevel":"{store_path("nixos-system-evil")}","format":1')
    with pytest.raises(CacheError, match=r"^manifests/x.json: not a valid manifest \(key 'toplevel' appears twice\)"):
        parse_manifest(twice.encode(), "manifests/x.json")


def test_a_manifest_nested_too_deeply_is_refused_in_one_line() -> None:
    with pytest.raises(CacheError, match="nested too deeply"):
        parse_manifest(b"[" * 100_000, "manifests/x.json")


def test_a_manifest_size_past_64_bits_is_refused() -> None:
    text = render_manifest(manifest(NEW, {NEW: 100})).decode().replace('"narSize":100', '"narSize":' + "9" * 30)
    with pytest.raises(CacheError, match="bad sizes"):
        parse_manifest(text.encode(), "manifests/x.json")


def test_nix_path_info_json_with_a_duplicated_key_is_refused() -> None:
    entry = f'{{"path": "{NEW}", "narHash": "sha256-{"A" * 43}=", "narSize": 1, "narSize": 2, "references": []}}'
    with pytest.raises(NixError, match="key 'narSize' appears twice"):
        localnix.parse_path_info_json(f"[{entry}]")


def test_a_run_record_with_a_duplicated_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text('{"run_id": "r", "run_id": "s", "mode": "switch", "hosts": [], "started": 0, "finished": 0}')
    with pytest.raises(DeployError, match=rf"^{path}: not a readable run record \(key 'run_id' appears twice\)"):
        load_run(path)


def _inventory(root: Path, config: str) -> Path:
    (root / "topdeck.toml").write_text(config)
    (root / "web-1").mkdir()
    (root / "web-1" / "host.toml").write_text('address = "10.0.0.1"\npointer = "web"\n')
    return root


def test_a_folder_caches_version_history_with_a_duplicated_key_is_refused(tmp_path: Path) -> None:
    root = _inventory(tmp_path, f'[cache]\ntype = "dir"\npath = "cache"\npublic_key = "{KEY.to_text()}"\n')
    cache = open_cache(load_inventory(root).cache)
    cache.put_bytes("toplevels/web.txt", b"x", content_type="text/plain")
    [history] = (tmp_path / "cache").rglob("web.txt.jsonl")
    history.write_text('{"size": 1, "size": 2}\n')
    with pytest.raises(CacheError, match="key 'size' appears twice"):
        cache.versions("toplevels/web.txt")


def test_json_nesting_past_the_parsers_depth_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        strict.loads("[" * 100_000 + "]" * 100_000)


# --- Nix and the inventory ------------------------------------------------------------------------------------


def test_a_nix_version_in_other_digits_is_not_a_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # `nix --version` answering in Arabic-Indic digits (no process: the unit tier starts none)
    answer = subprocess.CompletedProcess(["nix", "--version"], 0, stdout="nix (Nix) ٢.٨.٠\n", stderr="")
    monkeypatch.setattr(localnix.subprocess, "run", lambda *args, **kwargs: answer)
    with pytest.raises(NixError, match="is not Nix"):
        localnix._ask_version("nix", None)


@pytest.mark.parametrize("value", ["1" + "0" * 400, "inf", "nan", "1e400"], ids=["10^400", "inf", "nan", "1e400"])
def test_an_inventory_timeout_that_overflows_is_refused_in_one_line(value: str, tmp_path: Path) -> None:
    root = _inventory(tmp_path, f'[cache]\nbucket = "topdeck-test"\n[ssh]\nconnect_timeout = {value}\n')
    with pytest.raises(InventoryError, match=r"topdeck.toml: ssh.connect_timeout: .* must be"):
        load_inventory(root)


# --- a host's output, bounded -------------------------------------------------------------------------------------


def test_a_100_mb_line_without_a_newline_costs_bounded_memory_and_the_result_line_is_still_read() -> None:
    got: list[str] = []
    stream = _Stream(got.append)
    chunk = b"x" * 65536
    biggest = 0
    for _ in range(100 * 1024 * 1024 // len(chunk)):
        stream.add(chunk)
        biggest = max(biggest, len(stream.data) + len(stream._line))
    stream.add(b"\nresult\tdone\tswitch of the system\n")
    stream.finish()
    assert biggest <= MAX_OUTPUT + MAX_LINE
    assert got == [TRUNCATED, "result\tdone\tswitch of the system"]
    assert stream.truncated and bytes(stream.data) == b""


def test_an_endless_stream_of_lines_is_dropped_after_the_cap_but_for_its_last_line() -> None:
    got: list[str] = []
    stream = _Stream(got.append)
    line = b"log\t" + b"y" * 1000 + b"\n"
    for _ in range(2 * MAX_OUTPUT // len(line)):
        stream.add(line)
    stream.add(b"result\tfailed\tbecause\n")
    stream.finish()
    assert len(stream.data) <= MAX_OUTPUT and got.count(TRUNCATED) == 1
    assert got[-2:] == [TRUNCATED, "result\tfailed\tbecause"] and len(got) < MAX_OUTPUT // len(line) + 3


def test_a_host_whose_output_was_cut_without_a_result_fails_naming_the_cut() -> None:
    assert hostverbs.parse_line(TRUNCATED) == hostverbs.OtherLine(TRUNCATED)
    with pytest.raises(TopdeckError, match="over 8 MiB: not read"):
        Result(0, b"", b"", truncated=True).whole_stdout("web-1: status")
