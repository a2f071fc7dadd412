"""The words the engine, the CLI and the TUI share: phases, outcomes, modes and statuses.

Each is a `StrEnum`, so a member is its string (it compares, formats and serialises to JSON as the plain word),
and the host script's tab-separated words parse with `Phase(word)`.
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """What a deploy asks of switch-to-configuration (and REBOOT: only reboot into the boot default)."""

    SWITCH = "switch"
    BOOT = "boot"
    TEST = "test"
    DRY_ACTIVATE = "dry-activate"
    REBOOT = "reboot"


SWITCH_MODES = (Mode.SWITCH, Mode.BOOT, Mode.TEST, Mode.DRY_ACTIVATE)  # the modes switch-to-configuration takes


class Outcome(StrEnum):
    """How a host ended a deploy or rollback."""

    DONE = "done"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"
    SKIPPED = "skipped"  # not started: an earlier wave failed
    CANCELLED = "cancelled"


class Step(StrEnum):
    """What a long job is doing, as its `Progress` events name it."""

    LIST = "list"  # push: listing what the cache holds
    UPLOAD = "upload"
    MANIFEST = "manifest"
    PLAN = "plan"  # hosts probed
    STATUS = "status"  # hosts asked
    FETCH = "fetch"  # a host fetching its closure
    GC = "gc"
    GC_HOSTS = "gc-hosts"


class Phase(StrEnum):
    """A step of a host's deploy, in order; a run ends in the phase named by its `Outcome`."""

    QUEUED = "queued"
    CONNECT = "connect"
    LOCK = "lock"
    VERIFY = "verify"
    FETCH = "fetch"
    PROFILE = "profile"
    ACTIVATE = "activate"
    SWITCH_LOCK = "switch-lock"  # the switch waits for /run/nixos/switch-to-configuration.lock another process holds
    CONFIRM = "confirm"
    CHECK = "check"
    REBOOT = "reboot"
    BOOTED = "booted"
    ROLLBACK = "rollback"
    RETURNING = "returning"
    DONE = "done"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


FINAL_PHASES = tuple(Phase(outcome.value) for outcome in Outcome)


class HostState(StrEnum):
    """A host's status against its pointer (`topdeck status`, the TUI's fleet table)."""

    UP_TO_DATE = "up-to-date"
    BEHIND = "behind"  # runs an older target of its pointer
    DRIFTED = "drifted"  # runs something its pointer never named
    UNREACHABLE = "unreachable"
    HOST_KEY = "host-key"  # its host key is unknown or changed: reachable, but refused
    DEPLOYING = "deploying"
    ROLLED_BACK = "rolled-back"
    ERROR = "error"


class PlanStatus(StrEnum):
    """What a plan found for a host."""

    CHANGE = "change"
    UP_TO_DATE = "up-to-date"
    UNREACHABLE = "unreachable"
    HOST_KEY = "host-key"  # its host key is unknown or changed
    ERROR = "error"
