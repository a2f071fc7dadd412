"""The engine's logic against a fake host that speaks core/remote/host.sh's protocol (and core/remote/probe.sh's): plan,
deploy outcomes, recovery after a lost session, waves, magic rollback decisions, status, generations and gc's host
systems.

No root, no Nix, no SSH; the fake runs a host's deploy the way host.sh does (in the background, its events recorded
for `follow`, waiting for a confirmation from another login) so the engine's decisions are what is tested. The lab
tests (test_deploy_lab.py, test_faults_deploy.py, ...) hold the end-to-end truth.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from topdeck.core import deploy as engine
from topdeck.core import gc, operations
from topdeck.core.cache.manifest import Manifest, ManifestPath
from topdeck.core.cache.pointers import PointerVersion
from topdeck.core.deploy import Settings, Target, deploy, plan_waves
from topdeck.core.errors import Cancelled, ChangedHostKey, GcError, SSHError, TopdeckError, UnknownHostKey
from topdeck.core.events import DeployResult, Event, HostOutcome, HostPhase, LogLine, Progress, WaveStarted
from topdeck.core.inventory import Host, Inventory, SSHConfig, load_inventory
from topdeck.core.nix import nixbase32
from topdeck.core.nix.signing import generate_keypair
from topdeck.core.nix.store import StorePath, parse_store_path
from topdeck.core.plan import plan
from topdeck.core.remote import hostverbs
from topdeck.core.remote.hostpool import each_host, values
from topdeck.core.remote.ssh import Result
from topdeck.core.vocabulary import HostState, Mode, Outcome, Phase, PlanStatus

KEY = generate_keypair("engine-test")[1]


def store_path(name: str) -> StorePath:
    return StorePath(nixbase32.encode(hashlib.sha256(name.encode()).digest()[:20]), name)


def system(name: str, *packages: str) -> tuple[StorePath, dict[StorePath, int]]:
    """A toplevel and its closure ({path: NarSize}): the toplevel itself and its packages."""
    closure = {store_path(p): 1000 * (i + 1) for i, p in enumerate(packages)}
    top = store_path(f"nixos-system-{name}")
    closure[top] = 100
    return top, closure


OLD, OLD_CLOSURE = system("old", "glibc-2.39", "nginx-1.24.0", "bash-5.2")
NEW, NEW_CLOSURE = system("new", "glibc-2.39", "nginx-1.26.1", "bash-5.2", "web-app-1.0")


def manifest(top: StorePath, closure: dict[StorePath, int]) -> Manifest:
    return Manifest(top, tuple(ManifestPath(p, size, size // 2, ()) for p, size in sorted(closure.items())))


# --- the fake host --------------------------------------------------------------------------------


class FakeHost:
    """One host's state and its side of host.sh's protocol. `systems` is what the cache serves."""

    def __init__(self, name: str, systems: dict[StorePath, dict[StorePath, int]], *, free_kib: int = 10**6):
        self.name = name
        self.systems = systems
        self.store: dict[StorePath, int] = dict(OLD_CLOSURE)
        self.current = self.booted = self.profile = str(OLD)
        self.generation_paths = {1: str(OLD)}
        self.generation = 1  # the profile's generation
        self.free_kib = free_kib
        self.last_run = ""
        self.reachable = True
        self.logins_work = True  # False: a new login (the confirming one) fails, as after a system that breaks sshd
        self.switch_code = 0  # what switch-to-configuration exits with
        self.check_failure = ""  # why the health check fails, when it does
        self.lose_after = ""  # the line kind/phase after which the deploy's session is cut
        self.verbs: list[str] = []
        self.events: dict[str, list[str]] = {}
        self.changed = threading.Condition()
        self.waiting: dict[str, threading.Event] = {}  # run -> set when confirmed (or rejected)
        self.rejected: dict[str, str] = {}
        self.topdeck_gone: set[str] = set()  # runs whose deploy session was cut
        self.workers: dict[str, threading.Thread] = {}

    # -- sessions

    def session(self, host: Host) -> FakeSession:
        if not self.reachable:
            raise SSHError(f"{host.name}: connection refused")
        if not self.logins_work and "deploy" in self.verbs:
            raise SSHError(f"{host.name}: authentication failed")
        return FakeSession(host, self)

    def run(self, command: str, stdin: bytes | None, out: Callable[[str], None],
            cancel: threading.Event | None) -> int:
        argv = shlex.split(command)
        assert argv[:2] == ["sh", "-c"]
        if argv[3] == "topdeck-probe":
            return self.probe(stdin or b"", out)
        assert argv[3] == "topdeck-host" and stdin == hostverbs.host_script()
        verb, *args = argv[4:]
        self.verbs.append(verb)
        handler: Callable[..., int] = getattr(self, f"verb_{verb}")
        return handler(out, cancel, *args)

    # -- probe.sh

    def probe(self, stdin: bytes, out: Callable[[str], None]) -> int:
        out(f"current\t{self.current}")
        out(f"booted\t{self.booted}")
        out(f"generation\t{max(self.generation_paths)}")
        out(f"free_kib\t{self.free_kib}")
        for line in stdin.decode().splitlines():
            if parse_store_path(line) not in self.store:
                out(f"missing\t{line}")
        for path in systems_closure(self.systems, self.current, self.store):
            out(f"have\t{path}\t{self.store[path]}")
        return 0

    # -- host.sh verbs

    def verb_status(self, out: Callable[[str], None], cancel: object) -> int:
        for key, value in [("current", self.current), ("booted", self.booted), ("profile", self.profile),
                           ("generation", self.generation), ("boot-id", "b00t-1"), ("last-run", self.last_run),
                           ("agent", ""), ("needs-reboot", "no")]:
            out(f"{key}\t{value}")
        return 0

    def verb_generations(self, out: Callable[[str], None], cancel: object) -> int:
        for number, path in sorted(self.generation_paths.items()):
            current = "current" if number == self.generation else ""
            out(f"generation\t{number}\t2026-11-0{number} 10:00:00\t{path}\t24.11.{number}\t{current}")
        return 0

    def verb_closures(self, out: Callable[[str], None], cancel: object, path: str) -> int:
        for index, top in enumerate((self.current, path)):
            if parse_store_path(top) not in self.store:
                out(f"result\tfailed\t{top} is not in this host's store")
                return 1
            for member in systems_closure(self.systems, top, self.store):
                out(f"closure\t{index}\t{member}\t{self.store[member]}")
        return 0

    def verb_deploy(self, out: Callable[[str], None], cancel: threading.Event | None, run: str, mode: str,
                    target: str, *options: str) -> int:
        given = _options(options)
        self.events[run] = []
        worker = self.workers[run] = threading.Thread(target=self._deploy, args=(run, mode, target, given),
                                                      daemon=True)
        worker.start()
        return self._follow(run, 0, out, cancel, lose=True)

    def verb_follow(self, out: Callable[[str], None], cancel: object, run: str) -> int:
        if run not in self.events:
            out(f"result\tfailed\tthis host has no run {run} (rebooted since?)")
            return 1
        return self._follow(run, 0, out, None, lose=False)

    def verb_confirm(self, out: Callable[[str], None], cancel: object, run: str, *checks: str) -> int:
        waiting = self.waiting.get(run)
        if waiting is None or waiting.is_set():
            out("confirm\tlate\tthe run is no longer waiting for confirmation")
            return 1
        if self.check_failure:
            self.rejected[run] = self.check_failure
            waiting.set()
            out(f"confirm\trejected\t{self.check_failure}")
            return 1
        waiting.set()
        out("confirm\tok")
        return 0

    # -- the run itself, as host.sh's deploy, activate and watch do it

    def _event(self, run: str, *fields: object) -> None:
        with self.changed:
            self.events[run].append("\t".join(str(f) for f in fields))
            self.changed.notify_all()

    def _follow(self, run: str, seen: int, out: Callable[[str], None], cancel: threading.Event | None,
                lose: bool) -> int:
        worker = self.workers[run]
        while True:
            with self.changed:
                self.changed.wait_for(lambda count=seen: len(self.events[run]) > count, timeout=0.05)
            alive = worker.is_alive()  # before the events are read: a run that ended has written them all
            with self.changed:
                fresh = self.events[run][seen:]
            for line in fresh:
                seen += 1
                out(line)
                kind, _, rest = line.partition("\t")
                if kind == "result":
                    return {"done": 0, "rolled-back": 2}.get(rest.split("\t")[0], 1)
                if lose and self.lose_after and line.startswith(self.lose_after):
                    self._cut(run)
                    raise SSHError(f"{self.name}: the SSH connection dropped")
            if cancel is not None and cancel.is_set():
                self._cut(run)
                raise Cancelled(f"{self.name}: cancelled")
            if not fresh and not alive:
                out("result\tfailed\tthe deploy stopped on the host before it ended (its lock is free)")
                return 1

    def _cut(self, run: str) -> None:
        with self.changed:
            self.topdeck_gone.add(run)
            self.changed.notify_all()

    def _deploy(self, run: str, mode: str, target: str, options: dict[str, str]) -> None:
        event = functools_partial(self._event, run)
        event("phase", "lock")
        if "--generation" in options:
            target = self.generation_paths[int(options["--generation"])]
        elif "--pointer" in options:
            event("phase", "verify", f"pointer {options['--pointer']}")
        event("state", "target", target)
        if target == self.current == self.profile and mode == "switch":
            self._finish(run, "done", f"already running {target}: nothing to do", target)
            return
        if "--generation" not in options:
            self._fetch(run, parse_store_path(target))
        time.sleep(0.05)  # topdeck's session may end now: the next line is the last moment nothing has changed
        if run in self.topdeck_gone:
            return  # the script ends on the line it cannot write; the host is as it was
        event("state", "fetched", target)
        before = (self.current, self.profile, self.generation)
        event("state", "before", self.current)
        event("phase", "profile")
        created = "--generation" not in options  # else the profile switches to that generation
        generation = max(self.generation_paths) + 1 if created else int(options["--generation"])
        self.generation_paths[generation] = self.profile = target
        self.generation = generation
        event("state", "generation", generation)
        event("phase", "activate", mode)
        event("state", "switch-code", self.switch_code)
        if self.switch_code != 0:
            self._revert(run, f"the activation script of {target} failed (switch-to-configuration exit "
                              f"{self.switch_code})", before, generation if created else None, target)
            return
        if mode in ("switch", "test"):
            self.current = target
        confirm = int(options.get("--confirm", "0"))
        if confirm > 0 and mode in ("switch", "test"):
            waiting = self.waiting[run] = threading.Event()
            event("phase", "confirm", confirm)
            if not waiting.wait(confirm) or run in self.rejected:
                why = (f"a health check failed: {self.rejected[run]}" if run in self.rejected
                       else f"no confirmation within {confirm}s (a new SSH login could not confirm)")
                self._revert(run, why, before, generation if created else None, target)
                return
            event("phase", "confirmed")
        self._finish(run, "done", f"{mode} of {target}", target)

    def _fetch(self, run: str, target: StorePath) -> None:
        missing = [p for p in sorted(self.systems[target]) if p not in self.store]
        total = sum(self.systems[target][p] for p in missing)
        self._event(run, "phase", "fetch")
        self._event(run, "progress", 0, len(missing), 0, total)
        done = 0
        for index, path in enumerate(missing, 1):
            self._event(run, "current", path)
            self.store[path] = self.systems[target][path]
            done += self.store[path]
            self._event(run, "progress", index, len(missing), done, total)

    def _revert(self, run: str, why: str, before: tuple[str, str, int], created: int | None, target: str) -> None:
        self._event(run, "phase", "rollback", why)
        self.current, self.profile, self.generation = before
        if created is not None:
            del self.generation_paths[created]
        self._finish(run, "rolled-back", why, target)

    def _finish(self, run: str, outcome: str, note: str, target: str) -> None:
        self.last_run = f"{run}\t2026-12-01T12:00:00Z\t{outcome}\t{target}"
        self._event(run, "state", "current", self.current)
        self._event(run, "state", "generation", self.generation)
        self._event(run, "result", outcome, note)


def functools_partial(function: Callable[..., None], *bound: object) -> Callable[..., None]:
    return lambda *more: function(*bound, *more)


def systems_closure(systems: dict[StorePath, dict[StorePath, int]], top: str, store: dict[StorePath, int]) -> list:
    path = parse_store_path(top)
    return sorted(systems.get(path, {p: 0 for p in store}))


def _options(options: tuple[str, ...]) -> dict[str, str]:
    given, rest = {}, list(options)
    while rest:
        name = rest.pop(0)
        given[name] = "" if name in ("--check-units", "--reboot") else rest.pop(0)
    return given


class FakeSession:
    def __init__(self, host: Host, fake: FakeHost):
        self.host, self.fake = host, fake

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def run(self, command: str, stdin: bytes | None = None, *, on_stdout_line: Callable[[str], None] | None = None,
            on_stderr_line: Callable[[str], None] | None = None, timeout: float | None = None,
            cancel: threading.Event | None = None) -> Result:
        lines: list[str] = []

        def out(text: str) -> None:
            lines.append(text)
            if on_stdout_line is not None:
                on_stdout_line(text)

        code = self.fake.run(command, stdin, out, cancel)
        return Result(code, "".join(f"{line}\n" for line in lines).encode(), b"")


class Fleet:
    """Fake hosts by name, and the `connect` the engine takes."""

    def __init__(self, *names: str):
        systems = {OLD: OLD_CLOSURE, NEW: NEW_CLOSURE}
        self.hosts = tuple(Host(name, f"10.0.0.{i}", "web", tags=("web",)) for i, name in enumerate(names, 1))
        self.fakes = {name: FakeHost(name, systems) for name in names}
        self.logins: list[str] = []

    def connect(self, host: Host, ssh: SSHConfig) -> FakeSession:
        self.logins.append(host.name)
        return self.fakes[host.name].session(host)

    def deploy(self, target: Target | None = None, *, mode: str = "switch", confirm: float = 2, waves=None,
               cancel: threading.Event | None = None, parallel: int = 4) -> tuple[DeployResult, list[Event]]:
        events: list[Event] = []
        settings = Settings(engine.mode_of(mode), "http://cache.invalid", KEY, confirm, "run-1", parallel=parallel,
                            waves=waves or ())
        result = deploy(self.hosts, {h.name: target or Target(NEW) for h in self.hosts}, settings, SSHConfig(),
                        connect=self.connect, emit=events.append, cancel=cancel)
        return result, events


def outcomes(result: DeployResult) -> dict[str, Outcome]:
    return {o.host: o.outcome for o in result.outcomes}


def phases(events: list[Event], host: str) -> list[Phase]:
    return [e.phase for e in events if isinstance(e, HostPhase) and e.host == host]


# --- plan -----------------------------------------------------------------------------------------


def test_a_plan_counts_the_paths_each_host_lacks_and_says_why_a_host_has_none():
    lab = Fleet("web-1", "web-2", "web-3", "web-4", "web-5")
    lab.fakes["web-2"].store.update(NEW_CLOSURE)  # web-2 has every path already: nothing to fetch
    lab.fakes["web-2"].current = str(NEW)
    lab.fakes["web-3"].reachable = False
    lab.fakes["web-5"].free_kib = 1  # the fetch cannot fit
    targets: dict[str, StorePath | str] = {h.name: NEW for h in lab.hosts}
    targets["web-4"] = "pointer web not found"
    events: list[Event] = []

    found = plan(lab.hosts, targets, {NEW: manifest(NEW, NEW_CLOSURE)}, SSHConfig(), connect=lab.connect,
                 parallel=2, emit=events.append)

    by_host = {p.host: p for p in found.hosts}
    missing = [p for p in NEW_CLOSURE if p not in OLD_CLOSURE]
    assert [p.host for p in found.hosts] == ["web-1", "web-2", "web-3", "web-4", "web-5"]
    one = by_host["web-1"]
    assert (one.status, one.fetch_paths, one.unpacked_bytes, one.download_bytes, one.fits) == \
        (PlanStatus.CHANGE, len(missing), sum(NEW_CLOSURE[p] for p in missing),
         sum(NEW_CLOSURE[p] // 2 for p in missing), True)
    assert one.class_b == 2 * len(missing)
    assert {c.name for c in one.diff.changes} >= {"nginx", "web-app"}
    assert (by_host["web-2"].status, by_host["web-2"].fetch_paths) == (PlanStatus.UP_TO_DATE, 0)
    assert by_host["web-3"].status == PlanStatus.UNREACHABLE and "connection refused" in by_host["web-3"].reason
    assert (by_host["web-4"].status, by_host["web-4"].reason) == (PlanStatus.ERROR, "pointer web not found")
    assert not by_host["web-5"].fits and "the fetch unpacks to" in by_host["web-5"].space_note
    assert found.warnings == (f"web-5: {by_host['web-5'].space_note}: the deploy would stop there",)
    assert not found.ok
    assert [g.hosts for g in found.groups] == [("web-1", "web-5"), ("web-2",)]
    counts = [e.paths_done for e in events if isinstance(e, Progress) and e.phase == "plan"]
    assert sorted(counts) == [1, 2, 3, 4, 5] and {e.paths_total for e in events if isinstance(e, Progress)} == {5}


def test_a_host_with_an_unknown_host_key_is_planned_as_such():
    lab = Fleet("web-1")

    def refuse(host: Host, ssh: SSHConfig) -> FakeSession:
        raise UnknownHostKey("web-1: unknown host key", host="web-1", address="10.0.0.1", port=22, key=None,
                             fingerprint="SHA256:x", known_hosts=Path("/dev/null"))

    found = plan(lab.hosts, {"web-1": NEW}, {NEW: manifest(NEW, NEW_CLOSURE)}, SSHConfig(), connect=refuse)
    assert found.hosts[0].status == PlanStatus.HOST_KEY and not found.hosts[0].planned


def test_a_cancelled_plan_probes_no_host():
    lab = Fleet("web-1", "web-2")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled, match="plan cancelled"):
        plan(lab.hosts, {h.name: NEW for h in lab.hosts}, {NEW: manifest(NEW, NEW_CLOSURE)}, SSHConfig(),
             connect=lab.connect, cancel=cancel)
    assert lab.logins == []


# --- deploy outcomes ------------------------------------------------------------------------------


def test_a_deploy_fetches_activates_and_is_confirmed_through_a_new_login():
    lab = Fleet("web-1")
    result, events = lab.deploy()

    outcome = result.outcomes[0]
    assert (outcome.outcome, outcome.target, outcome.before, outcome.after) == (Outcome.DONE, str(NEW), str(OLD),
                                                                               str(NEW))
    assert outcome.fetched_paths == len([p for p in NEW_CLOSURE if p not in OLD_CLOSURE]) and outcome.generation == 2
    assert phases(events, "web-1") == [Phase.QUEUED, Phase.CONNECT, Phase.LOCK, Phase.FETCH, Phase.PROFILE,
                                       Phase.ACTIVATE, Phase.CONFIRM, Phase.CONFIRM, Phase.DONE]
    assert lab.fakes["web-1"].verbs == ["deploy", "confirm"]  # the confirmation came through a login of its own
    assert lab.logins == ["web-1", "web-1"]
    assert lab.fakes["web-1"].current == str(NEW) and result.ok and isinstance(events[-1], DeployResult)


def test_a_failed_activation_rolls_the_host_back():
    lab = Fleet("web-1")
    lab.fakes["web-1"].switch_code = 2
    result, events = lab.deploy()

    outcome = result.outcomes[0]
    assert (outcome.outcome, outcome.switch_code, outcome.after) == (Outcome.ROLLED_BACK, 2, str(OLD))
    assert "activation script" in outcome.reason and "activation script failed" in outcome.switch_meaning
    assert Phase.ROLLBACK in phases(events, "web-1") and not result.ok and result.failed == ("web-1",)


def test_a_rejected_health_check_rolls_the_host_back():
    lab = Fleet("web-1")
    lab.fakes["web-1"].check_failure = "command 'systemctl is-active nginx' exited 3"
    result, _ = lab.deploy()
    assert outcomes(result) == {"web-1": Outcome.ROLLED_BACK}
    assert result.outcomes[0].reason == "a health check failed: command 'systemctl is-active nginx' exited 3"
    assert lab.fakes["web-1"].current == str(OLD)


def test_a_system_that_locks_logins_out_is_not_confirmed_and_the_host_returns_by_itself():
    lab = Fleet("web-1")
    lab.fakes["web-1"].logins_work = False
    result, events = lab.deploy(confirm=1)

    assert outcomes(result) == {"web-1": Outcome.ROLLED_BACK}
    assert "no confirmation within 1s" in result.outcomes[0].reason
    assert any(isinstance(e, LogLine) and "the host rolls back by itself" in e.text for e in events)
    assert lab.fakes["web-1"].verbs == ["deploy"] and lab.fakes["web-1"].current == str(OLD)


def test_boot_mode_has_no_confirmation_and_leaves_the_running_system():
    lab = Fleet("web-1")
    result, events = lab.deploy(mode="boot")
    assert outcomes(result) == {"web-1": Outcome.DONE} and result.mode == Mode.BOOT
    assert Phase.CONFIRM not in phases(events, "web-1")
    assert (lab.fakes["web-1"].current, lab.fakes["web-1"].profile) == (str(OLD), str(NEW))


def test_a_host_already_on_its_target_is_done_without_a_fetch():
    lab = Fleet("web-1")
    fake = lab.fakes["web-1"]
    fake.store.update(NEW_CLOSURE)
    fake.current = fake.profile = str(NEW)
    result, events = lab.deploy()
    assert outcomes(result) == {"web-1": Outcome.DONE} and "nothing to do" in result.outcomes[0].reason
    assert Phase.FETCH not in phases(events, "web-1")


def test_a_rollback_switches_to_an_existing_generation():
    lab = Fleet("web-1")
    lab.deploy()
    result, _ = lab.deploy(Target(generation=1))
    assert outcomes(result) == {"web-1": Outcome.DONE} and lab.fakes["web-1"].current == str(OLD)


def test_a_cancel_before_the_start_changes_no_host():
    lab = Fleet("web-1", "web-2")
    cancel = threading.Event()
    cancel.set()
    result, events = lab.deploy(cancel=cancel)
    assert outcomes(result) == {"web-1": Outcome.CANCELLED, "web-2": Outcome.CANCELLED}
    assert lab.logins == [] and all(f.current == str(OLD) for f in lab.fakes.values())
    assert phases(events, "web-1") == [Phase.QUEUED, Phase.CANCELLED]


def test_a_cancel_during_the_fetch_stops_the_host_before_it_changes():
    lab = Fleet("web-1")
    cancel = threading.Event()
    fake = lab.fakes["web-1"]
    original = fake._fetch

    def slow_fetch(run: str, target: StorePath) -> None:
        cancel.set()  # the operator cancels while the host fetches
        original(run, target)

    fake._fetch = slow_fetch  # type: ignore[method-assign]
    result, _ = lab.deploy(cancel=cancel)
    assert outcomes(result) == {"web-1": Outcome.CANCELLED}
    assert result.outcomes[0].reason == "cancelled before anything changed on the host"
    assert (fake.current, fake.profile) == (str(OLD), str(OLD)) and fake.verbs == ["deploy", "follow"]


# --- recovery after a lost session ------------------------------------------------------------------


def test_a_session_lost_during_the_activation_is_followed_to_the_hosts_own_result():
    lab = Fleet("web-1")
    lab.fakes["web-1"].lose_after = "phase\tactivate"
    result, events = lab.deploy()

    assert outcomes(result) == {"web-1": Outcome.DONE}
    assert lab.fakes["web-1"].verbs == ["deploy", "follow", "confirm"]  # reconnected, followed, then confirmed
    assert any(isinstance(e, LogLine) and "asking the host how the run ended" in e.text for e in events)
    assert result.outcomes[0].after == str(NEW)


def test_a_session_lost_before_the_change_ends_failed_with_nothing_changed():
    lab = Fleet("web-1")
    lab.fakes["web-1"].lose_after = "phase\tfetch"
    result, _ = lab.deploy()
    assert outcomes(result) == {"web-1": Outcome.FAILED}
    assert "stopped on the host before it ended" in result.outcomes[0].reason
    assert lab.fakes["web-1"].profile == str(OLD)


def test_a_host_that_stays_unreachable_after_a_lost_session_is_reported_with_where_it_ends(monkeypatch):
    lab = Fleet("web-1")
    fake = lab.fakes["web-1"]
    fake.lose_after = "phase\tactivate"
    monkeypatch.setattr(engine, "RECONNECT_EVERY", 0.01)
    original = fake.session

    def gone_after_the_cut(host: Host) -> FakeSession:
        if fake.topdeck_gone:
            raise SSHError("web-1: no route to host")
        return original(host)

    fake.session = gone_after_the_cut  # type: ignore[method-assign]
    clock = iter(range(0, 10**6, 1000))
    monkeypatch.setattr(engine, "time", _Clock(lambda: next(clock)))
    result, _ = lab.deploy(confirm=2)
    assert outcomes(result) == {"web-1": Outcome.FAILED}
    assert result.outcomes[0].reason == (
        f"web-1: the SSH connection dropped; topdeck could not confirm it, so it returns to {OLD} by itself within "
        "2 s of activating; `topdeck status` shows where it ended")


class _Clock:
    """Stands in for the time module in core/deploy.py: its monotonic clock jumps, its sleeps do not wait."""

    def __init__(self, monotonic: Callable[[], float]):
        self.monotonic = monotonic

    def sleep(self, seconds: float) -> None:
        pass

    def time(self) -> float:
        return time.time()


# --- waves ----------------------------------------------------------------------------------------


def test_a_failed_canary_wave_skips_the_other_waves():
    lab = Fleet("web-1", "web-2", "web-3")
    lab.fakes["web-1"].switch_code = 2
    result, events = lab.deploy(waves=plan_waves([h.name for h in lab.hosts], canary=1))

    assert outcomes(result) == {"web-1": Outcome.ROLLED_BACK, "web-2": Outcome.SKIPPED, "web-3": Outcome.SKIPPED}
    assert result.stopped == "wave 1 failed on web-1"
    assert [e.index for e in events if isinstance(e, WaveStarted)] == [1]
    assert lab.logins == ["web-1"] and lab.fakes["web-2"].verbs == []
    assert phases(events, "web-2") == [Phase.QUEUED, Phase.SKIPPED]


def test_waves_that_succeed_all_run_in_order():
    lab = Fleet("web-1", "web-2", "web-3")
    result, events = lab.deploy(waves=plan_waves([h.name for h in lab.hosts], canary=1, wave="1"))
    assert result.ok and result.waves == (("web-1",), ("web-2",), ("web-3",))
    assert [e.index for e in events if isinstance(e, WaveStarted)] == [1, 2, 3]
    done = [e.host for e in events if isinstance(e, HostOutcome)]
    assert done == ["web-1", "web-2", "web-3"]


# --- fleet: status, generations, rollback choice, gc's host systems ----------------------------------


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    (tmp_path / "topdeck.toml").write_text(f'[cache]\ntype = "dir"\npath = "cache"\npublic_key = "{KEY.to_text()}"\n')
    for number in (1, 2, 3):
        (tmp_path / f"web-{number}").mkdir()
        (tmp_path / f"web-{number}" / "host.toml").write_text(f'address = "10.0.0.{number}"\npointer = "web"\n')
    return load_inventory(tmp_path)


def test_status_classifies_each_host_against_its_pointer(inventory):
    lab = Fleet("web-1", "web-2", "web-3")
    lab.fakes["web-1"].current = str(NEW)
    lab.fakes["web-3"].reachable = False
    history = [PointerVersion(str(NEW), 2, 0), PointerVersion(str(OLD), 1, 0)]
    found = {h.name: operations._status(inventory, inventory.host(h.name), history, lab.connect)
             for h in lab.hosts}
    assert found["web-1"].status == HostState.UP_TO_DATE
    assert found["web-2"].status == HostState.BEHIND and found["web-2"].current == str(OLD)
    assert found["web-3"].status == HostState.UNREACHABLE and "connection refused" in found["web-3"].reason
    assert operations._status(inventory, inventory.host("web-2"), history[:1], lab.connect).status == \
        HostState.DRIFTED
    lab.fakes["web-2"].last_run = f"run-0\t2026-12-01T10:00:00Z\trolled-back\t{NEW}"
    rolled = operations._status(inventory, inventory.host("web-2"), history, lab.connect)
    assert rolled.status == HostState.ROLLED_BACK and rolled.last_run == "2026-12-01T10:00:00Z rolled-back"


def test_a_changed_host_key_is_a_key_problem_in_status_not_unreachable(inventory):
    changed = ChangedHostKey("web-1 (10.0.0.1): HOST KEY CHANGED ...", host="web-1", address="10.0.0.1", port=22,
                             key=None, fingerprint="SHA256:new", expected=None, expected_fingerprint="SHA256:old",
                             known_hosts=Path("kh"))

    def connect(host, ssh):
        raise changed

    found = operations._status(inventory, inventory.host("web-1"), [PointerVersion(str(NEW), 2, 0)], connect)
    assert found.status == HostState.HOST_KEY and "HOST KEY CHANGED" in found.reason


def test_generations_and_a_generation_diff_come_from_the_host(inventory):
    lab = Fleet("web-1")
    lab.deploy()
    found = operations.generations(inventory, "web-1", connect=lab.connect)
    assert [(g.number, g.path, g.current) for g in found] == [(1, str(OLD), False), (2, str(NEW), True)]
    diff = operations.generation_diff(inventory, "web-1", str(OLD), connect=lab.connect)
    assert {c.name for c in diff.changes} >= {"nginx", "web-app"}
    with pytest.raises(TopdeckError, match=r"^web-1: /nix/store/\S+-nixos-system-gone is not in this host's store"):
        operations.generation_diff(inventory, "web-1", str(store_path("nixos-system-gone")), connect=lab.connect)


def test_gc_asks_every_host_and_refuses_when_one_cannot_answer(inventory):
    lab = Fleet("web-1", "web-2", "web-3")
    lab.deploy()
    systems = gc.host_systems(inventory, connect=lab.connect)
    hosts = ("web-1", "web-2", "web-3")
    assert sorted(systems[NEW]) == sorted([f"{h} current" for h in hosts] + [f"{h} generation 2" for h in hosts])
    assert sorted(systems[OLD]) == sorted([f"{h} booted" for h in hosts] + [f"{h} generation 1" for h in hosts])
    lab.fakes["web-2"].reachable = False
    with pytest.raises(GcError, match=r"^cannot ask 1 host\(s\) .*web-2: connection refused"):
        gc.host_systems(inventory, connect=lab.connect)
    events: list[Event] = []
    kept = gc.host_systems(inventory, skip_unreachable=True, connect=lab.connect, emit=events.append)
    assert all(not r.startswith("web-2") for reasons in kept.values() for r in reasons)
    assert [(e.host, e.text) for e in events if isinstance(e, LogLine)] == [("web-2", "skipped: web-2: connection "
                                                                                       "refused")]


# --- the verb runner and the pool on their own ------------------------------------------------------


def test_an_older_hosts_status_without_the_newer_lines_reads_as_empty_fields():
    report = hostverbs.parse_status(f"current\t{OLD}\nbooted\t{OLD}\ngeneration\t3\nlast-run\t\n")
    assert report == hostverbs.StatusReport(current=str(OLD), booted=str(OLD), generation=3)
    busy = hostverbs.parse_status("current\t\ndeploying\trun r1 since x\nneeds-reboot\tyes\tkernel\nresult\tfailed\t")
    assert (busy.deploying, busy.needs_reboot, busy.failure) == ("run r1 since x", "kernel", "the host script failed")


@pytest.mark.parametrize(("line", "record"), [
    ("phase\tconfirm\t30", hostverbs.PhaseLine("confirm", "30")),
    ("phase", hostverbs.PhaseLine("", "")),
    ("progress\t1\t3\t100\t300", hostverbs.ProgressLine(1, 3, 100, 300)),
    ("progress\t1\tx", hostverbs.OtherLine("progress\t1\tx")),
    ("log\thello\tworld", hostverbs.LogText("hello world")),
    ("state\tswitch-code\t4", hostverbs.StateLine("switch-code", "4")),
    ("result", hostverbs.ResultLine(Outcome.FAILED, "")),
    ("confirm\trejected\twhy", hostverbs.ConfirmLine("rejected", "why")),
    ("something new\tx", hostverbs.OtherLine("something new\tx")),
])
def test_script_lines_parse_into_records(line, record):
    assert hostverbs.parse_line(line) == record


def test_the_pool_keeps_the_hosts_order_its_bound_and_each_hosts_error():
    running, most = 0, 0
    lock = threading.Lock()

    def work(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02 * (5 - n))  # later hosts finish first
        with lock:
            running -= 1
        if n == 3:
            raise SSHError("host 3 is down")
        return n * 10

    done: list[int] = []
    results = each_host([0, 1, 2, 3, 4], work, parallel=2, on_done=lambda host, count: done.append(count))
    assert results[:3] == (0, 10, 20) and results[4] == 40 and isinstance(results[3], SSHError)
    assert most == 2 and done == [1, 2, 3, 4, 5]
    with pytest.raises(SSHError, match="host 3 is down"):
        values(results)
    cancel = threading.Event()
    cancel.set()
    stopped = each_host([1, 2], work, parallel=2, cancel=cancel, cancelled="stopped")
    assert all(isinstance(r, Cancelled) and str(r) == "stopped" for r in stopped)


def test_a_run_record_reads_back_in_the_vocabularys_words(tmp_path):
    from topdeck.core import runs

    lab = Fleet("web-1")
    result, _ = lab.deploy(mode="test")
    environ = {"XDG_STATE_HOME": str(tmp_path / "state")}
    loaded = runs.load_run(runs.save_run(tmp_path / "hosts", result, environ=environ))
    assert loaded.mode is Mode.TEST and loaded.outcomes[0].outcome is Outcome.DONE
    assert loaded.outcomes == result.outcomes


@pytest.mark.parametrize(("call", "setting", "message"), [
    (lambda: plan_waves(["a"], -1), "canary", "canary -1: must be 0 or more"),
    (lambda: plan_waves(["a"], 0, "0"), "wave", "wave '0': give a number of hosts (5) or a share of them (25%)"),
    (lambda: gc.check_keep(0), "keep", "keep 0: must keep at least the current version of each pointer (1 or more)"),
    (lambda: engine.mode_of("bogus"), "mode", "mode 'bogus': use one of switch, boot, test, dry-activate"),
])
def test_core_names_the_setting_at_fault_and_no_front_ends_flag(call, setting, message):
    with pytest.raises(TopdeckError) as caught:
        call()
    assert (caught.value.setting, str(caught.value)) == (setting, message)


def test_a_switch_waiting_for_its_lock_is_a_phase_of_its_own_and_a_log_line():
    events: list[Event] = []
    track = engine._Tracker("web-1", events.append, lambda: None)
    holder = "pid 42 (flock /run/nixos/switch-to-configuration.lock sleep 60), which is not a switch"
    track.line(f"phase\tswitch-lock\t{holder}")
    track.line("phase\tactivate\tswitch")
    waiting = f"waiting for the switch lock held by {holder}"
    assert events == [HostPhase("web-1", Phase.SWITCH_LOCK, waiting), LogLine(waiting, "web-1"),
                      HostPhase("web-1", Phase.ACTIVATE, "switch")]
    assert track.current_phase == Phase.ACTIVATE


def test_the_hosts_are_told_how_long_a_switch_may_wait_for_its_lock():
    settings = Settings(Mode.SWITCH, "http://cache", generate_keypair("k")[1], lock_wait=7.2)
    runner = engine._HostRunner(settings, SSHConfig(), engine.HostRules(), lambda *_: None,  # type: ignore[arg-type,return-value]
                                lambda _: None, threading.Event(), time.time)
    args = runner._deploy_args(Host("web-1", "127.0.0.1", "web"), Target(NEW))
    assert args[args.index("--lock-wait") + 1] == 8


def test_the_hosts_are_told_how_many_transfers_to_fetch_ahead_with_from_the_inventory(tmp_path):
    from test_inventory import HOST, write_inventory

    from topdeck.core.errors import InventoryError
    from topdeck.core.inventory import load_inventory

    config = '[cache]\nbucket = "topdeck-test"\n\n[deploy]\nfetch_parallel = 0\n'
    assert load_inventory(write_inventory(tmp_path / "a", {"web-1": HOST}, config)).deploy.fetch_parallel == 0
    assert load_inventory(write_inventory(tmp_path / "b", {"web-1": HOST})).deploy.fetch_parallel == 64
    with pytest.raises(InventoryError, match=r"deploy\.fetch_parallel: 1000 must be from 0"):
        load_inventory(write_inventory(tmp_path / "c", {"web-1": HOST}, config.replace("= 0", "= 1000")))
    for parallel in (0, 64, 200):
        settings = Settings(Mode.SWITCH, "http://cache", generate_keypair("k")[1], fetch_parallel=parallel)
        runner = engine._HostRunner(settings, SSHConfig(), engine.HostRules(), lambda *_: None,  # type: ignore[arg-type,return-value]
                                    lambda _: None, threading.Event(), time.time)
        args = runner._deploy_args(Host("web-1", "127.0.0.1", "web"), Target(NEW))
        assert args[args.index("--fetch-parallel") + 1] == parallel


def test_the_cli_shows_a_waiting_switch_on_the_hosts_row_and_in_its_log():
    from topdeck.cli.deploy import DeployBoard  # the engine's events, as the CLI draws them off a terminal

    log = io.StringIO()
    board = DeployBoard(stream=io.StringIO(), log_stream=log)
    track = engine._Tracker("web-1", board, lambda: None)  # type: ignore[arg-type]
    track.line("phase\tswitch-lock\tanother switch, pid 42 (/run/current-system/bin/switch-to-configuration boot)")
    track.line("phase\tactivate\tswitch")
    waiting = "waiting for the switch lock held by another switch, pid 42 (/run/current-system/bin/switch-to-" \
              "configuration boot)"
    assert log.getvalue().splitlines() == [f"web-1: switch-lock ({waiting})", f"web-1 | {waiting}",
                                           "web-1: activate (switch)"]
