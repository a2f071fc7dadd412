"""What the command line and the TUI do with an inventory: open its cache, find targets, plan, deploy."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from topdeck.core import keys
from topdeck.core.cache import pointers
from topdeck.core.cache.access import open_cache
from topdeck.core.cache.interface import Cache, Entry
from topdeck.core.cache.manifest import Manifest
from topdeck.core.deploy import REBOOT, HostRules, Settings, Target, deploy, mode_of, new_run_id, plan_waves
from topdeck.core.errors import DeployError, HostKeyError, InventoryError, TopdeckError, internal_error
from topdeck.core.events import DeployResult, Emit, HostOutcome, HostPhase, Progress, ignore
from topdeck.core.inventory import Host, Inventory, is_safe_name, select_hosts
from topdeck.core.keys import KeyContent
from topdeck.core.nix.diff import ClosureDiff, diff_closures
from topdeck.core.nix.signing import PublicKey, load_public_key, load_secret_key, parse_public_key
from topdeck.core.nix.store import StorePath, parse_store_path
from topdeck.core.plan import HostPlan, Plan, deltas_from_pointers, load_manifests, plan, targets_from_pointers
from topdeck.core.remote import hostverbs
from topdeck.core.remote.hostpool import each_host, values
from topdeck.core.remote.hostverbs import StatusReport
from topdeck.core.remote.ssh import Connect, connect
from topdeck.core.runs import save_run
from topdeck.core.vocabulary import HostState, Mode, Outcome, Phase, Step


@dataclass(frozen=True)
class FleetPlan:
    """A plan with what it was made from, so that a deploy can follow it without asking the cache again."""

    hosts: tuple[Host, ...]
    targets: dict[str, StorePath | str]  # a host's target, or why it has none
    manifests: dict[StorePath, Manifest]
    plan: Plan
    from_pointers: bool
    listing: Mapping[str, Entry] | None = None  # the cache listing the targets came from, if one was made
    fetch_url: str = ""  # where the hosts fetch the cache from (its substituter URL)
    pointer: str = ""  # the pointer every host deploys through, instead of its own ("" for its own)
    keys: dict[str, tuple[keys.KeyPlan, ...]] = dataclasses.field(default_factory=dict)  # per host: its keys


POINTER_TARGET = "pointer:"  # a plan target `pointer:NAME`: every host deploys through pointer NAME


def plan_fleet(inventory: Inventory, selectors: list[str] | tuple[str, ...], target: str | None = None, *,
               cache: Cache | None = None, emit: Emit = ignore, cancel: threading.Event | None = None,
               clock: Callable[[], float] = time.time) -> FleetPlan:
    """Plan the selected hosts (every host if there are no selectors) towards `target`: a store path, `pointer:NAME`
    (through that pointer, as a deploy of hosts following it), or None for each host's own pointer."""
    hosts = select_hosts(inventory, selectors)
    key_plans = keys.plan_keys(inventory.root, keys.read_keys(inventory, hosts))
    cache = cache or open_cache(inventory.cache)
    listing: Mapping[str, Entry] | None = None
    targets: dict[str, StorePath | str]
    through = pointers.check_name(target[len(POINTER_TARGET):]) if target and target.startswith(POINTER_TARGET) \
        else ""
    if target and not through:
        path = parse_store_path(target)
        targets = {host.name: path for host in hosts}
    else:
        listing = cache.listing()
        targets = targets_from_pointers(hosts, listing, [trusted_key(inventory)], clock(), through or None)
    deltas = deltas_from_pointers(hosts, listing, [trusted_key(inventory)], through or None) if listing else {}
    manifests = load_manifests({t for t in targets.values() if isinstance(t, StorePath)}, cache)
    result = plan(hosts, targets, manifests, inventory.ssh, parallel=inventory.deploy.parallel, emit=emit,
                  cancel=cancel, deltas=deltas)
    return FleetPlan(hosts, targets, manifests, result, from_pointers=not target or bool(through), listing=listing,
                     fetch_url=cache.substituter_url, pointer=through, keys=key_plans)


# --- deploy, rollback, status, generations ------------------------------------------------------------


def trusted_key(inventory: Inventory) -> PublicKey:
    """The key hosts trust for the cache's signatures and the pointers."""
    config = inventory.cache
    if config.public_key:
        return parse_public_key(config.public_key, f"{inventory.root}/topdeck.toml: cache.public_key")
    if config.public_key_file:
        return load_public_key(config.public_key_file)
    if config.signing_key:
        return load_secret_key(config.signing_key).public_key()
    raise InventoryError(f"{inventory.root}/topdeck.toml: set cache.public_key or cache.public_key_file "
                         "(the key hosts trust)")


@dataclass(frozen=True)
class DeployRequest:
    """What the operator asks of a deploy besides its plan: the mode; with `reboot` (mode boot), each host then
    reboots into its target and is confirmed after the boot; `canary` hosts first, then waves of `wave` hosts
    ("5") or of a share ("25%"); the specialisation each host activates in switch and test modes (None: its own
    setting; "": none)."""

    mode: Mode = Mode.SWITCH
    reboot: bool = False
    canary: int = 0
    wave: str | None = None
    specialisation: str | None = None


def deploy_fleet(inventory: Inventory, fleet_plan: FleetPlan, request: DeployRequest = DeployRequest(), *,
                 cache: Cache | None = None, emit: Emit = ignore, cancel: threading.Event | None = None,
                 clock: Callable[[], float] = time.time) -> DeployResult:
    """Deploy the plan's hosts to their targets, after the completeness gate; record the run. Hosts the plan could
    not reach end as failed without being tried."""
    cache = cache or open_cache(inventory.cache)
    mode = mode_of(request.mode)
    require_complete(fleet_plan.listing or cache.listing(), fleet_plan.manifests)
    contents = keys.read_keys(inventory, fleet_plan.hosts) if mode != Mode.DRY_ACTIVATE else {}
    ready = {h.host: h for h in fleet_plan.plan.hosts if h.planned and h.target is not None and h.fits}
    targets = {name: Target(plan.target, pointer=_pointer_of(fleet_plan, name),
                            need_bytes=plan.unpacked_bytes,
                            specialisation=_specialisation(_host(fleet_plan, name), mode, request.specialisation))
               for name, plan in ready.items()}
    hosts = tuple(h for h in fleet_plan.hosts if h.name in ready)
    settings = Settings(mode, cache.substituter_url, trusted_key(inventory), inventory.deploy.confirm_timeout,
                        new_run_id(clock), reboot=request.reboot, reboot_timeout=inventory.deploy.reboot_timeout,
                        lock_wait=inventory.deploy.lock_wait, parallel=inventory.deploy.parallel,
                        fetch_parallel=inventory.deploy.fetch_parallel,
                        waves=plan_waves(tuple(h.name for h in hosts), request.canary, request.wave))
    result = deploy(hosts, targets, settings, inventory.ssh, _rules(inventory, hosts, contents), emit=emit,
                    cancel=cancel, clock=clock)
    for outcome in result.outcomes:
        if outcome.ok and contents.get(outcome.host):
            keys.remember(inventory.root, outcome.host, contents[outcome.host])
    unplanned = tuple(_unplanned(h, emit) for h in fleet_plan.plan.hosts if h.host not in ready)
    result = dataclasses.replace(result, outcomes=result.outcomes + unplanned)
    save_run(inventory.root, result)
    return result


def _rules(inventory: Inventory, hosts: Iterable[Host],
           contents: Mapping[str, Sequence[KeyContent]] | None = None) -> HostRules:
    return HostRules(checks={h.name: inventory.checks_for(h) for h in hosts},
                     on_failed_units={h.name: inventory.on_failed_units_for(h) for h in hosts},
                     keys=contents or {})


def _pointer_of(fleet_plan: FleetPlan, name: str) -> str:
    """The pointer the host deploys through (it verifies the signed sidecar itself), or "" for a plain path."""
    if not fleet_plan.from_pointers:
        return ""
    return fleet_plan.pointer or _host(fleet_plan, name).pointer


def _host(fleet_plan: FleetPlan, name: str) -> Host:
    return next(h for h in fleet_plan.hosts if h.name == name)


def _unplanned(plan: HostPlan, emit: Emit) -> HostOutcome:
    reason = f"{plan.space_note}: not started, nothing was changed" if plan.space_note else plan.reason
    outcome = HostOutcome(plan.host, Outcome.FAILED, str(plan.target or ""), reason=reason or str(plan.status))
    emit(HostPhase(plan.host, Phase.FAILED, outcome.reason))
    emit(outcome)
    return outcome


def require_complete(names: Mapping[str, Entry], manifests: Mapping[StorePath, Manifest]) -> None:
    """Refuse to start unless every path of every target's closure has its narinfo in the cache listing."""
    for target, manifest in manifests.items():
        missing = [p.path for p in manifest.paths if f"{p.path.hash_part}.narinfo" not in names]
        if missing:
            raise DeployError(f"the cache lacks {len(missing)} of the {len(manifest.paths)} paths of {target.name} "
                              f"(first: {missing[0]}): push it again before deploying")


def rollback_fleet(inventory: Inventory, names: Iterable[str], to: int | None = None, *, mode: str = "switch",
                   emit: Emit = ignore, cancel: threading.Event | None = None,
                   clock: Callable[[], float] = time.time) -> DeployResult:
    """Switch hosts to generation `to`, or to the one before their current one, with the same activation and
    confirmation as a deploy; record the run."""
    hosts = select_hosts(inventory, list(names), what="rollback")
    numbers = each_host(hosts, lambda h: _rollback_generation(inventory, h, to), parallel=inventory.deploy.parallel)
    chosen = dict(zip((h.name for h in hosts), values(numbers), strict=True))
    cache = open_cache(inventory.cache)
    settings = Settings(mode_of(mode), cache.substituter_url, trusted_key(inventory), inventory.deploy.confirm_timeout,
                        new_run_id(clock), lock_wait=inventory.deploy.lock_wait, parallel=inventory.deploy.parallel)
    result = deploy(hosts, {name: Target(generation=number) for name, number in chosen.items()}, settings,
                    inventory.ssh, _rules(inventory, hosts), emit=emit, cancel=cancel, clock=clock)
    save_run(inventory.root, result, kind="rollback")
    return result


def reboot_fleet(inventory: Inventory, names: Iterable[str], *, emit: Emit = ignore,
                 cancel: threading.Event | None = None, clock: Callable[[], float] = time.time) -> DeployResult:
    """Reboot hosts into their boot default; each is confirmed through a new login after the boot, or its reboot
    guard returns it to the system it ran before (when the boot default is another one). Record the run."""
    hosts = select_hosts(inventory, list(names), what="reboot")
    settings = Settings(REBOOT, "", trusted_key(inventory), inventory.deploy.confirm_timeout, new_run_id(clock),
                        reboot=True, reboot_timeout=inventory.deploy.reboot_timeout, parallel=inventory.deploy.parallel)
    rules = HostRules(checks={h.name: inventory.checks_for(h) for h in hosts})
    result = deploy(hosts, {h.name: Target(boot_default=True) for h in hosts}, settings, inventory.ssh, rules,
                    emit=emit, cancel=cancel, clock=clock)
    save_run(inventory.root, result, kind="reboot")
    return result


def _rollback_generation(inventory: Inventory, host: Host, to: int | None) -> int:
    found = generations(inventory, host.name)
    current = next((g.number for g in found if g.current), 0)
    if to is not None:
        if not any(g.number == to for g in found):
            raise DeployError(f"{host.name} has no system generation {to} "
                              f"(it has {', '.join(str(g.number) for g in found) or 'none'})")
        return to
    earlier = [g.number for g in found if g.number < current]
    if not earlier:
        raise DeployError(f"{host.name} has no generation before its current one ({current}) to roll back to")
    return max(earlier)


def generations(inventory: Inventory, host_name: str, *,
                connect: Connect = connect) -> tuple[hostverbs.Generation, ...]:
    with connect(inventory.host(host_name), inventory.ssh) as session:
        return hostverbs.generations(session)


def generation_diff(inventory: Inventory, host_name: str, path: str, *, connect: Connect = connect) -> ClosureDiff:
    """What switching the host from its current system to `path` (say, another generation) would change, from
    both closures as the host's own store has them: one SSH round trip; nothing changes."""
    target = parse_store_path(path)
    with connect(inventory.host(host_name), inventory.ssh) as session:
        return diff_closures(*hostverbs.closures(session, target))


def _specialisation(host: Host, mode: str, override: str | None) -> str:
    chosen = host.specialisation if override is None else override
    if chosen and not is_safe_name(chosen):
        raise DeployError(f"specialisation {chosen!r}: must be letters, digits, '.', '_' or '-'",
                          setting="specialisation")
    if chosen and mode not in (Mode.SWITCH, Mode.TEST):
        raise DeployError(f"specialisation {chosen!r} of {host.name}: only switch and test activate one (as "
                          "nixos-rebuild); deploy in mode switch or test, or without a specialisation",
                          setting="specialisation")
    return chosen


@dataclass(frozen=True)
class HostStatus:
    host: str
    status: HostState
    current: str = ""
    booted: str = ""
    desired: str = ""
    generation: int = 0
    last_run: str = ""
    reason: str = ""
    specialisation: str = ""  # the specialisation of `system` the host runs ("" for none)
    system: str = ""  # the system whose specialisation runs, else `current`
    needs_reboot: str = ""  # the link (kernel, initrd, kernel-modules, systemd) that differs from the booted system
    pointer_signed: int = 0  # when the desired pointer version was signed (seconds since the epoch)
    pointer_expires: int = 0  # when it stops being valid (0: never)
    pointer_problem: str = ""  # why the pointer has no verified version ("" when it has one, or does not exist)
    last_deploy: str = ""  # the newest run on the host in the shared history, by any operator ("" for none)
    agent: str = ""  # the pull agent's last outcome, as the host wrote it ("" when no agent switched it)


def status_fleet(inventory: Inventory, selectors: Iterable[str] = (), *, cache: Cache | None = None,
                 connect: Connect = connect, emit: Emit = ignore,
                 cancel: threading.Event | None = None) -> tuple[HostStatus, ...]:
    """Each host's current, booted and desired system (one SSH round trip each, one version listing per pointer):
    the desired system is the pointer's verified version of the highest serial. Progress: Progress("status",
    hosts done, hosts)."""
    hosts = select_hosts(inventory, list(selectors))
    cache = cache or open_cache(inventory.cache)
    keys = [trusted_key(inventory)]
    histories = {name: pointers.history(cache, name, keys) for name in sorted({h.pointer for h in hosts})}

    def done(host: Host, count: int) -> None:
        emit(Progress(Step.STATUS, count, len(hosts), host=host.name))

    return values(each_host(hosts, lambda host: _status(inventory, host, histories[host.pointer], connect),
                            parallel=inventory.deploy.parallel, cancel=cancel, cancelled="status cancelled",
                            on_done=done))


def _status(inventory: Inventory, host: Host, history: list[pointers.PointerVersion],
            connect: Connect) -> HostStatus:
    newest = pointers.newest(history)
    want = newest.path if newest else ""
    about = {"pointer_signed": newest.time, "pointer_expires": newest.expires} if newest else \
        {"pointer_problem": f"pointer {host.pointer}: {history[0].problem}"} if history else {}
    try:
        with connect(host, inventory.ssh) as session:
            report = hostverbs.status(session)
    except HostKeyError as error:
        return HostStatus(host.name, HostState.HOST_KEY, desired=want, reason=str(error), **about)
    except TopdeckError as error:
        return HostStatus(host.name, HostState.UNREACHABLE, desired=want, reason=str(error), **about)
    except Exception as error:  # noqa: BLE001 - a bug met on one host fails that host's status, named as one
        return HostStatus(host.name, HostState.ERROR, desired=want, reason=str(internal_error(host.name, error)),
                          **about)
    last = report.last_run
    known = {v.path for v in history if v.verified}
    return HostStatus(host.name, _classify(report, host, want, known), report.current,
                      report.booted, want, report.generation, f"{last.time} {last.outcome}" if last else "",
                      report.deploying or "", specialisation=report.specialisation,
                      system=report.system or report.current, needs_reboot=report.needs_reboot, agent=report.agent,
                      **about)


def _classify(report: StatusReport, host: Host, desired: str, history: set[str]) -> HostState:
    """The host's status; a host runs its desired system when it runs the specialisation its settings name."""
    system = report.system or report.current
    if report.failure:
        return HostState.ERROR
    if report.deploying is not None:
        return HostState.DEPLOYING
    if system and system == desired:
        return HostState.UP_TO_DATE if report.specialisation == host.specialisation else HostState.BEHIND
    if report.last_run and report.last_run.outcome == Outcome.ROLLED_BACK and report.last_run.target == desired:
        return HostState.ROLLED_BACK
    return HostState.BEHIND if system in history else HostState.DRIFTED
