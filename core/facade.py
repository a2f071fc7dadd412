"""The one door both front ends use into the engine: everything the CLI and the TUI do to a fleet.

A `Fleet` holds one inventory and its side effects (how to open the cache, connect over SSH, read the clock and
the run records); every method takes `emit` and `cancel` where the work is long, and returns core's own
dataclasses. The rules the front ends share (which hosts a retry takes, which key signs and which key is trusted,
how a pointer is published or rolled back) live here, once.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from topdeck.core import gc, hostexec, keys, operations, release, runs
from topdeck.core import history as shared
from topdeck.core.cache import delta, pointers
from topdeck.core.cache.access import open_cache
from topdeck.core.cache.interface import Cache, Entry
from topdeck.core.cache.manifest import manifest_name
from topdeck.core.cache.pointers import Pointer, PointerVersion
from topdeck.core.cache.push import PushSettings, push
from topdeck.core.deploy import Settings, mode_of, new_run_id, plan_waves
from topdeck.core.errors import (
    CacheError,
    DeployError,
    InventoryError,
    NixError,
    PointerError,
    TopdeckError,
    UnknownHostKey,
)
from topdeck.core.events import DeployResult, Emit, LogLine, PushResult, ignore
from topdeck.core.inventory import Checks, Host, Inventory, select_hosts
from topdeck.core.nix.diff import ClosureDiff
from topdeck.core.nix.signing import PublicKey, SecretKey, load_secret_key, ssh_public_key
from topdeck.core.nix.store import StorePath, parse_store_path
from topdeck.core.operations import DeployRequest, FleetPlan, HostStatus
from topdeck.core.remote import trust
from topdeck.core.remote.hostverbs import Generation
from topdeck.core.remote.ssh import Connect, connect
from topdeck.core.statedir import inventory_state
from topdeck.core.vocabulary import HostState, Mode

Clock = Callable[[], float]
FailedHosts = Callable[[Path], tuple[str, ...]]  # the hosts the last recorded run of an inventory failed


def check_waves(canary: int, wave: str | None) -> None:
    """Refuse a bad canary count or wave size before the inventory is read."""
    plan_waves((), canary, wave)


@dataclass(frozen=True)
class PointerRollback:
    """A pointer rollback, decided but not published yet: what the pointer names now and what it will name."""

    name: str
    target: StorePath
    now: str


@dataclass(frozen=True)
class AgentConfig:
    """What a host's pull agent needs: its pointer, where it fetches the cache, and the key it trusts."""

    pointer: str
    cache_url: str
    public_key: str
    signer: str
    checks: Checks = Checks()  # the deploy's health checks for the host, which the agent runs after its switch
    on_failed_units: str = "rollback"


NEVER_DEPLOYED = "not deployed by topdeck yet: it runs a system its pointer never named (in the demo, the lab's first)"


def explained(status: HostStatus) -> HostStatus:
    """The status with a reason where its word alone misleads: a host no deploy ever reached is `drifted`."""
    if status.status == HostState.DRIFTED and not status.last_run and not status.reason:
        return dataclasses.replace(status, reason=NEVER_DEPLOYED)
    return status


def _last_deploy(last: tuple[shared.RunRecord, shared.HostRun] | None) -> str:
    """The fleet's "last deploy": when, what and by whom, from the newest record of any operator."""
    if last is None:
        return ""
    record, host = last
    return f"{shared.utc(host.finished or record.started)} {record.kind} {host.outcome} by {record.who}"


class Fleet:
    """One inventory, as the front ends drive it. Thread-safe: the TUI calls it from one worker thread per job."""

    def __init__(self, inventory: Inventory, *, cache_of: Callable[[Inventory], Cache] | None = None,
                 connect: Connect = connect, clock: Clock = time.time,
                 failed_hosts: FailedHosts = runs.failed_hosts, operator: str | None = None,
                 history_copies: Path | None = None) -> None:
        self.inventory = inventory
        self.operator = operator or shared.operator_name()
        self._history_copies = history_copies
        self._cache_of = cache_of or (lambda inventory: open_cache(inventory.cache))
        self._connect = connect
        self._clock = clock
        self._failed_hosts = failed_hosts
        self._cache: Cache | None = None
        self._lock = threading.Lock()

    @property
    def cache(self) -> Cache:
        """The inventory's cache, opened on first use and shared by every call after."""
        with self._lock:
            if self._cache is None:
                self._cache = self._cache_of(self.inventory)
            return self._cache

    # --- the inventory and keys ---------------------------------------------------------------------

    def hosts(self, selectors: Sequence[str] = (), what: str = "") -> tuple[Host, ...]:
        """The hosts the selectors name (every host without any); an unknown name is an InventoryError."""
        if what:
            return select_hosts(self.inventory, list(selectors), what=what)
        return select_hosts(self.inventory, list(selectors))

    def signing_key(self) -> SecretKey:
        """The key that signs pushes and pointers (cache.signing_key)."""
        if self.inventory.cache.signing_key is None:
            raise InventoryError(f"{self.inventory.root}/topdeck.toml: cache.signing_key is not set (needed to sign)")
        return load_secret_key(self.inventory.cache.signing_key)

    def trusted_key(self) -> PublicKey:
        """The key hosts trust for the cache's signatures and the pointers."""
        return operations.trusted_key(self.inventory)

    def agent_config(self, host_name: str) -> AgentConfig:
        host = self.inventory.host(host_name)
        key = self.trusted_key()
        return AgentConfig(host.pointer, self.cache.substituter_url, key.to_text(), ssh_public_key(key),
                           self.inventory.checks_for(host), self.inventory.on_failed_units_for(host))

    # --- status, generations ------------------------------------------------------------------------

    def status(self, selectors: Sequence[str] = (), emit: Emit = ignore,
               cancel: threading.Event | None = None) -> tuple[HostStatus, ...]:
        found = operations.status_fleet(self.inventory, selectors, cache=self.cache, connect=self._connect, emit=emit,
                                   cancel=cancel)
        try:
            last = shared.last_deploys(self.run_history())
        except TopdeckError as error:
            emit(LogLine(f"history: cannot read the shared run history ({error})"))
            last = {}
        return tuple(explained(dataclasses.replace(status, last_deploy=_last_deploy(last.get(status.host))))
                     for status in found)

    def generations(self, host: str) -> tuple[Generation, ...]:
        return operations.generations(self.inventory, host, connect=self._connect)

    def generation_diff(self, host: str, path: str) -> ClosureDiff:
        return operations.generation_diff(self.inventory, host, path, connect=self._connect)

    # --- pointers and the cache -----------------------------------------------------------------------

    def pointers(self) -> dict[str, PointerVersion]:
        """Every pointer from one listing, each verified with the trusted key or carried with its problem."""
        return pointers.current(self.cache.listing(), [self.trusted_key()])

    def history(self, name: str) -> list[PointerVersion]:
        """Every version of the pointer, newest first (none for a pointer never published), each verified or carried
        with its problem."""
        return pointers.history(self.cache, pointers.check_name(name), [self.trusted_key()])

    def read_pointer(self, name: str) -> Pointer:
        """The pointer as a host reads it, its signed sidecar checked with the trusted key; refused (one line) when
        it expired or is older than the newest verified version of its history (a replayed sidecar)."""
        pointer = pointers.read_verified(self.cache, pointers.check_name(name), [self.trusted_key()])
        if pointers.is_expired(pointer.expires, self._clock()):
            raise PointerError(pointers.expired_reason(name, pointer.time, pointer.expires or 0))
        newest = pointers.newest(self.history(name))
        if newest is not None and newest.serial > pointer.serial:
            raise PointerError(f"pointer {name}: its sidecar is serial {pointer.serial}, older than serial "
                               f"{newest.serial} of its history (a replayed sidecar): publish it again")
        return pointer

    def in_cache(self, path: str) -> bool:
        return manifest_name(parse_store_path(path)) in self.cache.listing()

    def publish_pointer(self, name: str, path: str, emit: Emit = ignore) -> Pointer:
        """Point `name` at a store path whose whole closure the cache holds."""
        store_path = parse_store_path(path)
        self._require_closure(store_path)
        return self._recorded(self._publish(name, store_path), "publish", emit)

    def pointer_rollback(self, name: str, to: str | None = None) -> PointerRollback:
        """Which verified version a rollback of `name` would republish: the previous one, or the one with serial or
        path `to`."""
        versions = self.history(name)
        newest = pointers.newest(versions)
        return PointerRollback(name, pointers.rollback_target(versions, to), newest.path if newest else "")

    def rollback_pointer(self, rollback: PointerRollback, emit: Emit = ignore) -> Pointer:
        """Republish the rollback's target as the pointer's newest version, once the cache holds its closure."""
        self._require_closure(rollback.target)
        return self._recorded(self._publish(rollback.name, rollback.target), "pointer-rollback", emit)

    def _require_closure(self, path: StorePath) -> None:
        """Refuse a path whose manifest, or a narinfo of whose closure, the cache lacks (one line)."""
        try:
            operations.require_complete(self.cache.listing(), operations.load_manifests({path}, self.cache))
        except (CacheError, DeployError) as error:
            raise CacheError(f"{error}; nothing published") from None

    def _publish(self, name: str, path: StorePath) -> Pointer:
        return pointers.publish(self.cache, name, path, self.signing_key(), clock=self._clock,
                                valid_for=self.inventory.deploy.pointer_valid_for)

    # --- build, push, release -----------------------------------------------------------------------

    def _push_settings(self, jobs: int, verify: bool) -> PushSettings:
        return PushSettings(max(1, jobs), verify, self.inventory.deploy.pointer_valid_for,
                            delta.max_bytes(self.inventory.cache.delta_max_mib))

    def build(self, host: Host, emit: Emit = ignore, cancel: threading.Event | None = None) -> StorePath:
        return release.build_hosts([host], emit=emit, cancel=cancel)[host.name]

    def build_each(self, hosts: Sequence[Host], emit: Emit = ignore, nix_path_args: Sequence[str] = (),
                   cancel: threading.Event | None = None) -> tuple[dict[str, StorePath], dict[str, NixError]]:
        """Build every host; what built and, per host that did not, why."""
        return release.build_each(hosts, emit=emit, cancel=cancel, nix_path_args=nix_path_args)

    def push(self, toplevel: StorePath | str, pointer: str | None = None, emit: Emit = ignore,
             cancel: threading.Event | None = None, jobs: int = 8, verify: bool = False) -> PushResult:
        path = toplevel if isinstance(toplevel, StorePath) else parse_store_path(toplevel)
        key = self.signing_key()
        result = push(path, self.cache, key, pointer=pointer, settings=self._push_settings(jobs, verify), emit=emit,
                      cancel=cancel)
        return self._recorded_push(result, emit)

    def check_buildable(self, hosts: Sequence[Host]) -> None:
        """Refuse hosts with nothing to build before anything is built."""
        release.buildable(hosts)

    def release(self, hosts: Sequence[Host], emit: Emit = ignore, cancel: threading.Event | None = None,
                jobs: int = 8, verify: bool = False) -> PushResult:
        """Build the hosts (one build), push what the cache lacks (one push) and publish their pointers."""
        key = self.signing_key()
        result = release.release(hosts, lambda: self.cache, key, settings=self._push_settings(jobs, verify),
                                 emit=emit, cancel=cancel)
        return self._recorded_push(result, emit)

    # --- plan, deploy, rollback, reboot ---------------------------------------------------------------

    def check_deploy(self, mode: str, reboot: bool = False) -> Mode:
        """Refuse a bad mode, reboot or trusted key before anything is built or any host is asked; the mode."""
        return Settings(mode_of(mode), "", self.trusted_key(), reboot=reboot).mode

    def retry_hosts(self, on: Sequence[str] = ()) -> list[str]:
        """The hosts the last run failed, among those `on` selects (all of them when `on` is empty)."""
        failed = list(self._failed_hosts(self.inventory.root))
        if not failed:
            raise DeployError("the last run had no failed hosts: nothing to retry")
        known = {host.name for host in self.inventory.hosts}
        stranger = next((name for name in failed if name not in known), None)
        if stranger is not None:  # a name, not a selector: a record naming '*' or '@web' must not widen the retry
            raise DeployError(f"the last run (in {runs.runs_dir(self.inventory.root)}) names host {stranger!r}, "
                              "which is not in the inventory: nothing retried")
        if on:
            chosen = {host.name for host in self.hosts(on)}
            failed = [name for name in failed if name in chosen]
            if not failed:
                raise DeployError(f"--on {','.join(on)}: none of these hosts failed in the last run: "
                                  "nothing to retry")
        return failed

    def plan(self, selectors: Sequence[str], target: str | None = None, emit: Emit = ignore,
             cancel: threading.Event | None = None) -> FleetPlan:
        """`target`: a store path, `pointer:NAME` (every host deploys through that pointer), or None (each host's
        own pointer)."""
        return operations.plan_fleet(self.inventory, list(selectors), target, cache=self.cache, emit=emit,
                                     cancel=cancel, clock=self._clock)

    def deploy(self, fleet_plan: FleetPlan, request: DeployRequest | None = None, emit: Emit = ignore,
               cancel: threading.Event | None = None) -> DeployResult:
        result = operations.deploy_fleet(self.inventory, fleet_plan, request or DeployRequest(), cache=self.cache,
                                         emit=emit, cancel=cancel, clock=self._clock)
        through = {h.name: fleet_plan.pointer or h.pointer for h in fleet_plan.hosts} if fleet_plan.from_pointers \
            else {}
        record = shared.from_result(result, "deploy", self.operator, through)
        self._record(dataclasses.replace(record, serial=self._serial_of(fleet_plan, record)), emit)
        return result

    def _serial_of(self, fleet_plan: FleetPlan, record: shared.RunRecord) -> int:
        """The serial of the pointer version the deploy went to, from the plan's listing (0 when not one version)."""
        if not record.pointer or not record.path or not fleet_plan.listing:
            return 0
        version = pointers.current(fleet_plan.listing, [self.trusted_key()]).get(record.pointer)
        return version.serial if version is not None and version.verified and version.path == record.path else 0

    def rollback(self, hosts: Sequence[str], to: int | None = None, emit: Emit = ignore,
                 cancel: threading.Event | None = None) -> DeployResult:
        result = operations.rollback_fleet(self.inventory, list(hosts), to, emit=emit, cancel=cancel, clock=self._clock)
        self._record(shared.from_result(result, "rollback", self.operator), emit)
        return result

    def reboot(self, hosts: Sequence[str], emit: Emit = ignore, cancel: threading.Event | None = None) -> DeployResult:
        result = operations.reboot_fleet(self.inventory, list(hosts), emit=emit, cancel=cancel, clock=self._clock)
        self._record(shared.from_result(result, "reboot", self.operator), emit)
        return result

    # --- the shared history ---------------------------------------------------------------------------

    def run_history(self, selectors: Sequence[str] = ()) -> list[shared.HistoryEntry]:
        """Every operator's runs from the bucket, newest first (one listing; records read before come from this
        machine's copies); with selectors, those on the chosen hosts or publishing their pointers. Unverified
        records are carried with their problem."""
        listing_of = getattr(self.cache, "listing_of", None)
        if listing_of is None:
            def listing_of(folder: str) -> dict[str, Entry]:
                return {name: e for name, e in self.cache.listing().items() if name.startswith(folder)}
        copies = shared.LocalCopies(self._history_copies or inventory_state(self.inventory.root) / "history")
        entries = shared.read(self.cache, [self.trusted_key()], listing_of, copies)
        if not selectors:
            return entries
        chosen = self.hosts(selectors, what="history")
        return shared.touching(entries, [h.name for h in chosen], {h.pointer for h in chosen})

    def _record(self, record: shared.RunRecord, emit: Emit) -> None:
        """Write the run's signed record to the bucket; a run that cannot be recorded says so and goes on."""
        if self.inventory.cache.signing_key is None:
            emit(LogLine("history: not recorded in the bucket (cache.signing_key is not set: records are signed)"))
            return
        try:
            shared.write(self.cache, record, self.signing_key())
        except TopdeckError as error:
            emit(LogLine(f"history: the run was not recorded in the bucket ({error})"))

    def _recorded(self, pointer: Pointer, kind: str, emit: Emit) -> Pointer:
        self._record(shared.publish_record(new_run_id(self._clock), kind, self.operator, self._clock(),
                                            pointer.name, pointer.serial, str(pointer.path)), emit)
        return pointer

    def _recorded_push(self, result: PushResult, emit: Emit) -> PushResult:
        for published in result.pointers:
            if published.changed:
                self._record(shared.publish_record(new_run_id(self._clock), "publish", self.operator,
                                                    self._clock(), published.name, published.serial,
                                                    published.path), emit)
        return result

    # --- commands on hosts -----------------------------------------------------------------------------

    def run_command(self, selectors: Sequence[str], argv: Sequence[str], *, parallel: int | None = None,
                    timeout: float | None = None, emit: Emit = ignore,
                    cancel: threading.Event | None = None) -> hostexec.ExecResult:
        """`topdeck exec`: the command (an argv, quoted once) on the selected hosts, `parallel` at a time (default
        deploy.parallel); each output line emitted as a LogLine naming its host."""
        hostexec.check_command(argv)
        hosts = self.hosts(selectors)
        return hostexec.exec_hosts(hosts, argv, self.inventory.ssh, connect=self._connect,
                                   parallel=parallel or self.inventory.deploy.parallel, timeout=timeout, emit=emit,
                                   cancel=cancel)

    def upload_keys(self, selectors: Sequence[str], emit: Emit = ignore,
                    cancel: threading.Event | None = None) -> tuple[keys.KeysUploaded, ...]:
        """`topdeck upload-keys`: the inventory's [[keys]] to the selected hosts, over SSH."""
        return keys.upload_keys(self.inventory, selectors, connect=self._connect, emit=emit, cancel=cancel)

    # --- gc, host keys --------------------------------------------------------------------------------

    def gc(self, request: gc.GcRequest, confirm: Callable[[gc.GcPlan], bool] = lambda plan: True,
           emit: Emit = ignore, cancel: threading.Event | None = None) -> gc.GcResult:
        """Collect the cache (with the gc key, not the deploy key: its own cache, opened by core.gc)."""
        return gc.gc_fleet(self.inventory, request, confirm=confirm, connect=self._connect, emit=emit, cancel=cancel,
                           clock=self._clock)

    def trust(self, host: Host, decide: trust.Decide) -> list[trust.HopKey]:
        """Show the host's (and its jump hosts') keys to `decide`, and pin the accepted ones."""
        return trust.trust(host, self.inventory.ssh, decide)

    def check_host_key(self, host: str) -> str:
        """Connect once: raises UnknownHostKey / ChangedHostKey (or another SSHError) if the key is not trusted;
        else how it is: "pinned", or "certified by <CA> (<known_hosts line>)" (nothing to pin)."""
        with self._connect(self.inventory.host(host), self.inventory.ssh) as session:
            return session.host_key_trust

    def pin_host_key(self, error: UnknownHostKey) -> str:
        """Pin the key the operator accepted, as `topdeck trust` does; the known_hosts line written."""
        pinned = trust.pin(trust.from_error(error))
        return f"{pinned.key_name} {pinned.key_type} {pinned.key.get_base64()}\n"
