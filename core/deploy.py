"""Deploy: make hosts pull a system from the cache and activate it, in parallel and in waves, with magic rollback.

Each host runs core/remote/host.sh (sent over SSH on stdin) under a host-side lock: verify the pointer, fetch with
signatures required, set the profile, activate detached from the SSH session, and wait for a confirmation
that topdeck gives through a *new* SSH login (after the health checks); without it the host rolls back by
itself. The script's output lines become events; the last one is the host's result.

A run that reboots its hosts (`deploy --mode boot --reboot`, `topdeck reboot`) waits for each host to come back
with a new boot id, then follows the host's reboot guard, which waits for the same confirmation and without one
returns the host to its previous system (its boot entry back, and another reboot).
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from topdeck.core.errors import Cancelled, DeployError, HostKeyError, SSHError, TopdeckError, internal_error
from topdeck.core.events import (
    DeployResult,
    Emit,
    Event,
    HostOutcome,
    HostPhase,
    LogLine,
    Progress,
    WaveStarted,
    ignore,
    switch_meaning,
)
from topdeck.core.inventory import Checks, Host, SSHConfig
from topdeck.core.keys import KeyContent
from topdeck.core.keys import upload as upload_keys
from topdeck.core.nix.signing import PublicKey, ssh_public_key
from topdeck.core.nix.store import StorePath, parse_store_path
from topdeck.core.remote.hostpool import each_host, values
from topdeck.core.remote.hostverbs import (
    ConfirmLine,
    CurrentLine,
    LogText,
    OtherLine,
    PhaseLine,
    ProgressLine,
    ResultLine,
    StateLine,
    parse_line,
    run_verb,
    status,
)
from topdeck.core.remote.ssh import MAX_OUTPUT, Connect, Session, connect
from topdeck.core.strict import parse_uint
from topdeck.core.vocabulary import SWITCH_MODES, Mode, Outcome, Phase, Step

MODES = tuple(mode.value for mode in SWITCH_MODES)  # plain words: argparse's choices error shows each one's repr
REBOOT = Mode.REBOOT  # the mode of a run that only reboots its hosts into their boot default
# Phases in which stopping the host's script leaves the host as it was.
INTERRUPTIBLE = frozenset({Phase.QUEUED, Phase.CONNECT, Phase.LOCK, Phase.VERIFY, Phase.FETCH})
RECONNECT_EVERY = 2.0
LOST_FETCH_WINDOW = 10.0  # how long to look for a host lost before it changed anything
CONFIRM_JOIN_TIMEOUT = 15.0  # how long a host's result waits for its confirming thread to finish
# On a host: takes a rebooting run over at boot (hosts/modules/topdeck-reboot-guard.nix).
GUARD_UNIT = "topdeck-reboot-guard.service"


@dataclass(frozen=True)
class Target:
    """What one host should end on: a store path (or, for a rollback, an existing generation)."""

    path: StorePath | None = None
    pointer: str = ""  # the host reads and verifies this pointer itself; `path` is what the plan expects
    generation: int = 0
    need_bytes: int = 0  # what the fetch unpacks to, from the plan (0: the host asks Nix)
    specialisation: str = ""  # switch and test activate this specialisation of `path`
    boot_default: bool = False  # a reboot into what the host boots by default (its system profile)

    def __post_init__(self) -> None:
        if [self.path is not None, self.generation != 0, self.boot_default].count(True) != 1:
            raise ValueError("a target is a store path, a generation or the host's boot default")


@dataclass(frozen=True)
class Settings:
    """What every host of one run shares."""

    mode: Mode
    cache_url: str
    trusted_key: PublicKey
    confirm_timeout: float = 30.0
    run_id: str = ""
    reboot: bool = False  # reboot the hosts after a boot-mode deploy (always, in mode REBOOT)
    reboot_timeout: float = 300.0  # how long a host may take to come back from its reboot, confirmation included
    lock_wait: float = 180.0  # how long a switch may wait for the switch lock another process holds
    parallel: int = 8  # hosts at once, within a wave
    waves: tuple[tuple[str, ...], ...] = ()  # the hosts by wave (plan_waves); none: all in one
    fetch_parallel: int = 64  # transfers at once when a host fetches ahead; 0: Nix fetches by itself

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", mode_of(self.mode))
        if self.reboot and self.mode not in (Mode.BOOT, REBOOT):
            raise DeployError(f"reboot goes with mode boot (not {self.mode}): boot makes the new system the one "
                              "the reboot starts", setting="reboot")

    @property
    def rebooting(self) -> bool:
        return self.reboot or self.mode == REBOOT


@dataclass(frozen=True)
class HostRules:
    """What each host of a run brings of its own, by host name: its health checks; what units that fail to start
    after the switch do, "rollback" (the default) or "keep"; its keys (read beforehand, core/keys.py), uploaded
    before its activation or after it succeeded, as each key's `upload` says."""

    checks: Mapping[str, Checks] = field(default_factory=dict)
    on_failed_units: Mapping[str, str] = field(default_factory=dict)
    keys: Mapping[str, Sequence[KeyContent]] = field(default_factory=dict)


def mode_of(text: str) -> Mode:
    """The mode a front end names (REBOOT too: the mode of `topdeck reboot`)."""
    if text not in (*MODES, REBOOT):
        raise DeployError(f"mode {text!r}: use one of {', '.join(MODES)}", setting="mode")
    return Mode(text)


def new_run_id(clock: Callable[[], float] = time.time) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(clock())) + "-" + secrets.token_hex(3)


# --- waves ----------------------------------------------------------------------------------------


def plan_waves(hosts: Iterable[str], canary: int = 0, wave: str | None = None) -> tuple[tuple[str, ...], ...]:
    """Split hosts into waves: `canary` hosts first, then waves of `wave` hosts ("5") or of a share ("25%")."""
    names = list(hosts)
    if canary < 0:
        raise DeployError(f"canary {canary}: must be 0 or more", setting="canary")
    size = len(names) if not wave else _wave_size(wave, len(names))
    waves = [names[:canary]] if canary else []
    rest = names[canary:]
    waves += [rest[i:i + size] for i in range(0, len(rest), max(1, size))]
    return tuple(tuple(w) for w in waves if w)


def _wave_size(wave: str, count: int) -> int:
    share = wave.strip().endswith("%")
    number = parse_uint(wave.strip().removesuffix("%"), limit=100 if share else 2**32)
    if not number:
        raise DeployError(f"wave {wave!r}: give a number of hosts (5) or a share of them (25%)", setting="wave")
    return max(1, math.ceil(count * number / 100)) if share else number


# --- the run --------------------------------------------------------------------------------------


def deploy(hosts: tuple[Host, ...], targets: Mapping[str, Target], settings: Settings, ssh: SSHConfig,
           rules: HostRules = HostRules(), *, connect: Connect = connect, emit: Emit = ignore,
           cancel: threading.Event | None = None, clock: Callable[[], float] = time.time) -> DeployResult:
    """Run the hosts wave by wave (all at once without waves), `parallel` at a time; stop after a wave in
    which a host failed. Cancel starts no new host and stops running ones only where that changes nothing."""
    cancel = cancel or threading.Event()
    emit = _one_at_a_time(emit)
    by_name = {host.name: host for host in hosts}
    waves = settings.waves or (tuple(by_name),)
    started = clock()
    outcomes: dict[str, HostOutcome] = {}
    stopped = ""
    runner = _HostRunner(settings, ssh, rules, connect, emit, cancel, clock)
    for name in by_name:
        emit(HostPhase(name, Phase.QUEUED))
    for index, wave in enumerate(waves, 1):
        if stopped or cancel.is_set():
            why = stopped or "cancelled"
            for name in wave:
                outcomes[name] = _not_run(name, targets[name], Outcome.SKIPPED if stopped else Outcome.CANCELLED, why,
                                          emit)
            continue
        emit(WaveStarted(index, len(waves), wave))
        results = values(each_host(wave, lambda name: runner.run(by_name[name], targets[name]),
                                   parallel=settings.parallel, thread_name="topdeck-deploy"))
        outcomes.update((outcome.host, outcome) for outcome in results)
        failed = [name for name in wave if not outcomes[name].ok]
        if failed and index < len(waves):
            stopped = f"wave {index} failed on {', '.join(failed)}"
    result = DeployResult(settings.run_id, settings.mode, tuple(outcomes[h] for w in waves for h in w), waves,
                          started, clock(), stopped)
    emit(result)
    return result


def _one_at_a_time(emit: Emit) -> Emit:
    """Hosts run in threads; front ends get their events one at a time, never interleaved."""
    lock = threading.Lock()

    def serialized(event: Event) -> None:
        with lock:
            emit(event)

    return serialized


def _not_run(name: str, target: Target, outcome: Outcome, why: str, emit: Emit) -> HostOutcome:
    emit(HostPhase(name, Phase(outcome), why))
    result = HostOutcome(name, outcome, _target_text(target), reason=why)
    emit(result)
    return result


def _target_text(target: Target) -> str:
    if target.boot_default:
        return "its boot default"
    return str(target.path) if target.path else f"generation {target.generation}"


class _HostRunner:
    def __init__(self, settings: Settings, ssh: SSHConfig, rules: HostRules, connect: Connect, emit: Emit,
                 cancel: threading.Event, clock: Callable[[], float]):
        self.settings, self.ssh, self.rules, self.connect = settings, ssh, rules, connect
        self.emit, self.cancel, self.clock = emit, cancel, clock

    def _keys(self, host: Host, upload: str) -> list[KeyContent]:
        return [item for item in self.rules.keys.get(host.name, ()) if item.key.upload == upload]

    def _upload_keys(self, session: Session, host: Host, upload: str) -> None:
        chosen = self._keys(host, upload)
        if chosen:
            self.emit(LogLine(f"uploading {upload} keys: {', '.join(item.key.name for item in chosen)}", host.name))
            upload_keys(session, chosen)

    def _keys_after(self, host: Host, track: _Tracker) -> None:
        """The post-activation keys, through a new login, once the host ended on its target."""
        if track.outcome != Outcome.DONE or not self._keys(host, "post-activation"):
            return
        try:
            with self.connect(host, self.ssh) as session:
                self._upload_keys(session, host, "post-activation")
        except TopdeckError as error:
            track.fail(f"activated, but the post-activation keys were not all uploaded: {error}")

    def run(self, host: Host, target: Target) -> HostOutcome:
        started = self.clock()
        if self.cancel.is_set():
            return _not_run(host.name, target, Outcome.CANCELLED, "cancelled before it started", self.emit)
        track = _Tracker(host.name, self.emit, lambda: self._confirm(host, track))
        try:
            self._deploy_and_follow(host, target, track)
            self._keys_after(host, track)
        except Exception as error:  # noqa: BLE001 - a bug met on one host fails that host, and the run is recorded
            track.fail(str(internal_error(host.name, error)))
        outcome = HostOutcome(host.name, track.outcome, track.target or _target_text(target), track.before,
                              track.current, track.generation, track.reason, track.paths_total, track.bytes_done,
                              started, self.clock(), track.switch_code, switch_meaning(track.switch_code),
                              track.booted)
        self.emit(HostPhase(host.name, Phase(outcome.outcome), outcome.reason))
        self.emit(outcome)
        return outcome

    def _deploy_and_follow(self, host: Host, target: Target, track: _Tracker) -> None:
        try:
            self._deploy(host, target, track)
        except HostKeyError as error:
            track.fail(str(error))
        except (SSHError, Cancelled) as error:
            self._recover(host, track, error)
        except TopdeckError as error:
            track.fail(str(error))
        if track.rebooting:
            self._after_reboot(host, track)

    def _deploy(self, host: Host, target: Target, track: _Tracker) -> None:
        track.phase(Phase.CONNECT)
        args: list[str | int]
        if target.boot_default:
            verb, args = "reboot", [self.settings.run_id, "--confirm", math.ceil(self.settings.confirm_timeout)]
        else:
            verb, args = "deploy", self._deploy_args(host, target)
        with self.connect(host, self.ssh) as session:
            try:
                self._upload_keys(session, host, "pre-activation")
            except (DeployError, SSHError) as error:  # before the host script: nothing to ask the host about
                raise DeployError(f"{error}; the host's system was not changed") from None
            self._run(session, host, verb, args, track, _WhileInterruptible(self.cancel, track))

    def _deploy_args(self, host: Host, target: Target) -> list[str | int]:
        s = self.settings
        args: list[str | int] = [s.run_id, s.mode, str(target.path) if target.path else "-",
                                 "--cache", s.cache_url, "--key", s.trusted_key.to_text(),
                                 "--confirm", math.ceil(s.confirm_timeout),
                                 "--on-failed-units", self.rules.on_failed_units.get(host.name, "rollback"),
                                 "--lock-wait", math.ceil(s.lock_wait), "--fetch-parallel", s.fetch_parallel]
        if target.need_bytes:
            args += ["--need-kib", math.ceil(target.need_bytes / 1024)]
        if target.specialisation:
            args += ["--specialisation", target.specialisation]
        if target.generation:
            args += ["--generation", target.generation]
        elif target.pointer:
            args += ["--pointer", target.pointer, "--sidecar", f"{s.cache_url}/toplevels/{target.pointer}.json",
                     "--signer", ssh_public_key(s.trusted_key)]
        if s.reboot:
            args.append("--reboot")
        return args

    def _run(self, session: Session, host: Host, verb: str, args: list[str | int], track: _Tracker,
             cancel: object = None) -> None:
        result = run_verb(session, verb, *args, timeout=None, on_line=track.line, on_stderr_line=track.stderr,
                          cancel=cancel)  # type: ignore[arg-type]  # _WhileInterruptible: is_set() is all it reads
        if track.result is None and not track.reboot_from:  # a host that reboots gives its result after the boot
            cut = f"; its output passed {MAX_OUTPUT // (1024 * 1024)} MiB and was cut" if result.truncated else ""
            track.fail(f"the host script ended without a result (exit {result.exit_status}{cut})")

    def _recover(self, host: Host, track: _Tracker, error: TopdeckError) -> None:
        """The session ended early (lost, or stopped by a cancel): learn from the host how the run ended."""
        if track.reboot_from:  # it went down for its reboot: _after_reboot follows it
            return
        changing = track.current_phase not in INTERRUPTIBLE
        window = self.settings.confirm_timeout + self.settings.lock_wait + 60 if changing else LOST_FETCH_WINDOW
        self.emit(LogLine(f"{error}; asking the host how the run ended", host.name))
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            try:
                with self.connect(host, self.ssh) as session:
                    self._run(session, host, "follow", [self.settings.run_id], track)
                if isinstance(error, Cancelled) and track.outcome == Outcome.FAILED and not changing:
                    track.outcome, track.reason = Outcome.CANCELLED, "cancelled before anything changed on the host"
                return
            except (SSHError, Cancelled):
                time.sleep(RECONNECT_EVERY)
        track.fail(f"{error}; {self._where_it_ends(track) if changing else 'nothing was changed on the host'}")

    def _where_it_ends(self, track: _Tracker) -> str:
        """What a host lost after it began to change does by itself, from what topdeck saw before it was lost."""
        target = track.target or "the new system"
        guarded = self.settings.mode in (Mode.SWITCH, Mode.TEST) and self.settings.confirm_timeout > 0
        if self.settings.rebooting:
            ends = f"it reboots into {target} by itself, and then {self._guard_does(track)}"
        elif not guarded or track.confirmed:
            why = "topdeck confirmed it" if track.confirmed else f"{self.settings.mode} has no confirmation"
            ends = f"it finishes on {target} by itself ({why})"
        else:
            ends = (f"topdeck could not confirm it, so it returns to {track.before or 'its previous system'} by "
                    f"itself within {self.settings.confirm_timeout:g} s of activating")
        return f"{ends}; `topdeck status` shows where it ended"

    def _after_reboot(self, host: Host, track: _Tracker) -> None:
        """The host reboots: wait until it answers with a new boot id, then follow its reboot guard (which waits for
        the confirmation that _confirm gives, or returns the host to its previous system) until the result."""
        track.phase(Phase.REBOOT, "waiting for the host to boot again")
        timeout = self.settings.reboot_timeout
        deadline = time.monotonic() + timeout
        why = "it did not answer"
        while time.monotonic() < deadline:
            try:
                with self.connect(host, self.ssh) as session:
                    boot_id = status(session).boot_id
                    if boot_id and boot_id != track.reboot_from:
                        self._run(session, host, "follow", [self.settings.run_id, "--since-reboot"], track)
                    why = "it still had its old boot id" if boot_id == track.reboot_from else "it rebooted again"
            except HostKeyError as error:
                track.fail(f"{error}; {self._guard_does(track)}")
            except SSHError as error:
                why = str(error)
            if track.result is not None:
                return
            time.sleep(RECONNECT_EVERY)
        track.fail(f"it did not come back from its reboot within {timeout:g} s ({why}); if it boots, "
                   f"{self._guard_does(track)}; `topdeck status` shows where it ended")

    def _guard_does(self, track: _Tracker) -> str:
        """What the reboot guard of a host that topdeck cannot confirm does by itself after the boot."""
        waits = f"its {GUARD_UNIT} waits {self.settings.confirm_timeout:g} s for a confirmation"
        if track.before and track.before == track.target:
            return f"{waits}; without one it stays on {track.before}, which it ran before"
        return f"{waits}, and without one returns it to {track.before or 'its previous system'} (and reboots it)"

    def _confirm(self, host: Host, track: _Tracker) -> None:
        """Confirm through a new login (after the health checks), trying again while the host waits: a busy
        host may be slow to answer. Without a confirmation the host rolls back by itself. After a reboot, the
        login first checks that the host booted the target."""
        checks = _check_args(self.rules.checks.get(host.name, Checks()))
        if self.settings.rebooting:
            try:
                checks = ["--booted", str(parse_store_path(track.target)), *checks]
            except TopdeckError as error:
                self.emit(LogLine(f"cannot confirm the boot ({error}): the host returns by itself", host.name))
                return
        self.emit(HostPhase(host.name, Phase.CHECK if checks else Phase.CONFIRM, "through a new SSH login"))
        deadline = time.monotonic() + self.settings.confirm_timeout
        while True:
            try:
                with self.connect(host, self.ssh) as session:
                    result = run_verb(session, "confirm", self.settings.run_id, *checks,
                                      timeout=max(1.0, deadline - time.monotonic()) + 5)
                text = result.stdout.decode(errors="replace").strip()
                self.emit(LogLine(text.replace("\t", " ") or f"confirm exited {result.exit_status}", host.name))
                answer = parse_line(text.partition("\n")[0])
                track.confirmed = result.exit_status == 0 and isinstance(answer, ConfirmLine) and answer.answer == "ok"
                return
            except TopdeckError as error:
                if time.monotonic() + RECONNECT_EVERY >= deadline:
                    self.emit(LogLine(f"cannot confirm through a new login ({error}): the host rolls back by itself",
                                      host.name))
                    return
                time.sleep(RECONNECT_EVERY)


def _check_args(checks: Checks) -> list[str]:
    return [*(["--check-command", checks.command] if checks.command else []),
            *(["--check-http", checks.http] if checks.http else []),
            *(["--check-units"] if checks.failed_units else [])]


class _WhileInterruptible:
    """A cancel flag that counts only while stopping the host's script changes nothing on the host."""

    def __init__(self, cancel: threading.Event, track: _Tracker):
        self.cancel, self.track = cancel, track

    def is_set(self) -> bool:
        return self.cancel.is_set() and self.track.current_phase in INTERRUPTIBLE


_PHASES = frozenset(Phase)


class _Tracker:
    """Turns one host's script output into events, and remembers how far the host got."""

    def __init__(self, host: str, emit: Emit, on_confirm: Callable[[], None]):
        self.host, self.emit, self.on_confirm = host, emit, on_confirm
        self.current_phase = Phase.QUEUED
        self.result: Outcome | None = None
        self.outcome, self.reason = Outcome.FAILED, ""
        self.confirmed = False
        self.target = self.before = self.current = self.booted = ""
        self.reboot_from = ""  # the boot id the host had when it began to reboot
        self.generation = self.paths_total = self.bytes_done = 0
        self.switch_code: int | None = None
        self._progress = Progress(phase=Step.FETCH, host=host)
        self._confirmer: threading.Thread | None = None

    def phase(self, name: Phase, detail: str = "") -> None:
        self.current_phase = name
        self.emit(HostPhase(self.host, name, detail))

    @property
    def rebooting(self) -> bool:
        """Whether the host went to reboot and its result, which comes after the boot, is still to be read."""
        return bool(self.reboot_from) and self.result is None

    def fail(self, reason: str) -> None:
        self.result, self.outcome, self.reason = Outcome.FAILED, Outcome.FAILED, reason

    def stderr(self, text: str) -> None:
        if text.strip():
            self.emit(LogLine(text, self.host))

    def line(self, text: str) -> None:
        match parse_line(text):
            case PhaseLine(name, detail):
                self._on_phase(name, detail, text)
            case ProgressLine(paths, total, done, expected):
                self.paths_total, self.bytes_done = total, done
                self._progress = Progress(Step.FETCH, paths, total, done, expected, self._progress.current,
                                          host=self.host)
                self.emit(self._progress)
            case CurrentLine(path):
                p = self._progress
                self._progress = Progress(Step.FETCH, p.paths_done, p.paths_total, p.bytes_done, p.bytes_total,
                                          path.rpartition("/")[2][33:], host=self.host)
                self.emit(self._progress)
            case LogText(words):
                self.emit(LogLine(words, self.host))
            case StateLine(key, value):
                self._on_state(key, value)
            case ResultLine(outcome, reason):
                self._on_result(outcome, reason)
            case ConfirmLine() | OtherLine():
                self.emit(LogLine(text, self.host))

    def _on_phase(self, name: str, detail: str, text: str) -> None:
        if name == "confirm" and self._confirmer is None:
            self.phase(Phase.CONFIRM, f"waiting up to {detail} s")
            self._confirmer = threading.Thread(target=self.on_confirm, name=f"topdeck-confirm-{self.host}",
                                               daemon=True)
            self._confirmer.start()
        elif name == "confirmed":
            self.confirmed = True
            self.emit(LogLine("confirmed", self.host))
        elif name == Phase.SWITCH_LOCK:
            waiting = f"waiting for the switch lock held by {detail}"
            self.phase(Phase.SWITCH_LOCK, waiting)
            self.emit(LogLine(waiting, self.host))
        elif name == "reboot":
            self.reboot_from = detail
            self.phase(Phase.REBOOT, f"from boot {detail}")
        elif name in _PHASES:
            self.phase(Phase(name), detail)
        else:  # a phase this version does not know: shown, not tracked
            self.emit(LogLine(text, self.host))

    def _on_state(self, key: str, value: str) -> None:
        if key == "target":
            self.target = value
        elif key == "before":
            self.before = value
        elif key == "current":
            self.current = value
        elif key == "booted":
            self.booted = value
        elif key == "generation" and (number := parse_uint(value)) is not None:
            self.generation = number
        elif key == "switch-code" and (code := parse_uint(value, limit=255)) is not None:
            self.switch_code = code

    def _on_result(self, outcome: Outcome, reason: str) -> None:
        self.result = self.outcome = outcome
        self.reason = reason
        if self._confirmer is not None:
            self._confirmer.join(timeout=CONFIRM_JOIN_TIMEOUT)
