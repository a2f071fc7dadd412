"""What changes between two closures, package by package, as `nix store diff-closures` sees it.

The grouping is Nix 2.8's (src/nix/diff-closures.cc, printClosureDiff): every path of a closure goes to
a group named by `diff_closures_key` (output suffix stripped, then split at the first `-` not followed
by a letter); a group holds the set of versions found and the summed NarSize of its paths. Nix prints,
in byte order of the names, each group whose version sets differ or whose size moved by at least 8 KiB:

    openssl: 3.0.13 → 3.0.14, +12.5 KiB
    hello: ∅ → 2.12.1, +50.0 KiB
    zlib: -9.3 KiB

The versions shown are those only before (left) and only after (right), sorted, joined with ", ";
`∅` stands for none and `ε` for the empty version. The size is `%+.1f KiB` of the delta in bytes / 1024
(red when it grew, green when it shrank; `render_diff_closures` leaves colour out).

Here a diff also keeps the groups Nix does not print: same versions but other paths (a rebuild) and a
size that moved by less than 8 KiB. `PackageChange.shown` says which ones Nix prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cmp_to_key
from operator import attrgetter
from typing import Final, Literal

from topdeck.core.nix.store import StorePath, diff_closures_key

Kind = Literal["added", "removed", "upgraded", "downgraded", "changed"]
ADDED: Final = "added"
REMOVED: Final = "removed"
UPGRADED: Final = "upgraded"
DOWNGRADED: Final = "downgraded"
CHANGED: Final = "changed"
KINDS: tuple[Kind, ...] = (ADDED, REMOVED, UPGRADED, DOWNGRADED, CHANGED)

# Nix prints a group's size change only from this many bytes on (either way).
SHOWN_DELTA = 8 * 1024

NO_VERSIONS = "∅"
EMPTY_VERSION = "ε"


@dataclass(frozen=True)
class PackageChange:
    """One group (package name) that differs between the two closures.

    `old_versions` / `new_versions` are every version of the group before / after, sorted as Nix sorts
    them (byte order), the empty version kept as "". `kind`: "added" (absent before), "removed" (absent
    after), "upgraded" / "downgraded" (the newest version after is newer / older than the newest before,
    by Nix's compareVersions), "changed" (otherwise: same versions, other paths or sizes).
    """

    name: str
    old_versions: tuple[str, ...]
    new_versions: tuple[str, ...]
    size_delta: int
    kind: Kind

    @property
    def removed_versions(self) -> tuple[str, ...]:
        """The versions only before: the left side of Nix's `old → new`."""
        new = set(self.new_versions)
        return tuple(version for version in self.old_versions if version not in new)

    @property
    def added_versions(self) -> tuple[str, ...]:
        """The versions only after: the right side of Nix's `old → new`."""
        old = set(self.old_versions)
        return tuple(version for version in self.new_versions if version not in old)

    @property
    def versions_changed(self) -> bool:
        return self.old_versions != self.new_versions

    @property
    def size_shown(self) -> bool:
        return abs(self.size_delta) >= SHOWN_DELTA

    @property
    def shown(self) -> bool:
        """Whether `nix store diff-closures` prints this group."""
        return self.versions_changed or self.size_shown


@dataclass(frozen=True)
class ClosureDiff:
    """The difference from one closure (before, the host's current system) to another (after, the
    target). `changes` are sorted by name; `paths_added` / `paths_removed` in store path order."""

    changes: tuple[PackageChange, ...]
    size_before: int
    size_after: int
    paths_added: tuple[StorePath, ...]
    paths_removed: tuple[StorePath, ...]

    @property
    def size_delta(self) -> int:
        return self.size_after - self.size_before

    @property
    def shown_changes(self) -> tuple[PackageChange, ...]:
        """The changes `nix store diff-closures` prints, in its order."""
        return tuple(change for change in self.changes if change.shown)

    @property
    def empty(self) -> bool:
        return not self.changes and not self.paths_added and not self.paths_removed


def diff_closures(before: Mapping[StorePath, int], after: Mapping[StorePath, int]) -> ClosureDiff:
    """The diff from closure `before` to closure `after`, each given as {store path: NarSize}.

    Linear in the closures' sizes: one pass over each, set differences of the paths, then one look at
    each group name.
    """
    keys: dict[str, tuple[str, str]] = {}
    groups_before = _groups(before, keys)
    groups_after = _groups(after, keys)
    paths_removed = before.keys() - after.keys()
    paths_added = after.keys() - before.keys()
    touched = {keys[path.name][0] for path in paths_removed}
    touched.update(keys[path.name][0] for path in paths_added)

    changes = []
    for name in sorted(groups_before.keys() | groups_after.keys()):
        old_versions, old_size = groups_before.get(name, _ABSENT)
        new_versions, new_size = groups_after.get(name, _ABSENT)
        if old_size == new_size and name not in touched and old_versions == new_versions:
            continue
        old = tuple(sorted(old_versions))
        new = tuple(sorted(new_versions))
        changes.append(PackageChange(name, old, new, new_size - old_size, _kind(old, new)))

    return ClosureDiff(
        changes=tuple(changes),
        size_before=sum(before.values()),
        size_after=sum(after.values()),
        paths_added=tuple(sorted(paths_added, key=_PATH_ORDER)),
        paths_removed=tuple(sorted(paths_removed, key=_PATH_ORDER)),
    )


_ABSENT: tuple[frozenset[str], int] = (frozenset(), 0)
# StorePath's own order (its fields in turn), compared in C rather than through the dataclass's __lt__.
_PATH_ORDER = attrgetter("hash_part", "name")


def _groups(closure: Mapping[StorePath, int], keys: dict[str, tuple[str, str]]) -> dict[str, list]:
    """{group name: [set of versions, summed NarSize]}; `keys` caches diff_closures_key by path name."""
    groups: dict[str, list] = {}
    for path, size in closure.items():
        key = keys.get(path.name)
        if key is None:
            key = keys[path.name] = diff_closures_key(path.name)
        group = groups.get(key[0])
        if group is None:
            groups[key[0]] = [{key[1]}, size]
        else:
            group[0].add(key[1])
            group[1] += size
    return groups


def _kind(old: tuple[str, ...], new: tuple[str, ...]) -> Kind:
    if not old:
        return ADDED
    if not new:
        return REMOVED
    if old == new:
        return CHANGED
    order = compare_versions(newest_version(new), newest_version(old))
    if order > 0:
        return UPGRADED
    if order < 0:
        return DOWNGRADED
    return CHANGED


def newest_version(versions: tuple[str, ...] | list[str]) -> str:
    """The newest of (non-empty) `versions` by compareVersions; of equal ones, the first in byte order."""
    return max(sorted(versions), key=_VERSION_KEY)


# --- rendering --------------------------------------------------------------------------------------


def render_diff_closures(diff: ClosureDiff) -> list[str]:
    """The lines `nix store diff-closures` (Nix 2.8) prints for this diff, without colour."""
    return [render_change(change) for change in diff.changes if change.shown]


def render_change(change: PackageChange) -> str:
    """One line as Nix prints it: `name: old → new, +1.5 KiB`, each part only when it applies."""
    items = []
    if change.versions_changed:
        items.append(f"{show_versions(change.removed_versions)} → {show_versions(change.added_versions)}")
    if change.size_shown:
        items.append(render_size_delta(change.size_delta))
    return f"{change.name}: {', '.join(items)}"


def show_versions(versions: tuple[str, ...] | list[str]) -> str:
    """Nix's showVersions: `∅` for none, `ε` for the empty version, sorted (after that substitution)
    and joined with ", "."""
    if not versions:
        return NO_VERSIONS
    return ", ".join(sorted({version or EMPTY_VERSION for version in versions}))


def render_size_delta(delta: int) -> str:
    """Nix's `%+.1f KiB` of delta / 1024.0 (glibc rounds the exact binary value half to even, as
    Python's format does)."""
    return f"{delta / 1024:+.1f} KiB"


def signature(diff: ClosureDiff) -> tuple[PackageChange, ...]:
    """A hashable value equal for two diffs with the same package changes (names, versions before and
    after, size deltas, kinds), whatever the exact store paths: hosts with equal signatures can be shown
    as one group."""
    return diff.changes


# --- Nix's compareVersions --------------------------------------------------------------------------

_DIGITS = frozenset("0123456789")
_SEPARATORS = frozenset(".-")
_INT_MAX = 2**31 - 1


def version_components(version: str) -> list[str]:
    """Nix's nextComponent, repeated (src/libstore/names.cc): separators `.` and `-` are skipped; a
    component is the longest run of ASCII digits, or of other non-separator characters."""
    components = []
    index, end = 0, len(version)
    while index < end:
        char = version[index]
        if char in _SEPARATORS:
            index += 1
            continue
        start = index
        if char in _DIGITS:
            while index < end and version[index] in _DIGITS:
                index += 1
        else:
            while index < end and version[index] not in _DIGITS and version[index] not in _SEPARATORS:
                index += 1
        components.append(version[start:index])
    return components


def _number(component: str) -> int | None:
    # Nix's string2Int<int>: a run of digits that overflows int is not a number (it compares as a word).
    if component and component[0] in _DIGITS:
        value = int(component)
        if value <= _INT_MAX:
            return value
    return None


def _component_lt(c1: str, c2: str) -> bool:
    """Nix's componentsLT, branch for branch."""
    n1, n2 = _number(c1), _number(c2)
    if n1 is not None and n2 is not None:
        return n1 < n2
    if c1 == "" and n2 is not None:
        return True
    if c1 == "pre" and c2 != "pre":
        return True
    if c2 == "pre":
        return False
    if n2 is not None:  # "2.3a" < "2.3.1"
        return True
    if n1 is not None:
        return False
    return c1 < c2


def compare_versions(v1: str, v2: str) -> int:
    """-1, 0 or 1, as Nix's compareVersions (builtins.compareVersions): component by component, a missing
    component being "". So "1.0pre1" < "1.0" < "1.0a" < "1.0.1", and "1.0" == "1.00" == "1-0"."""
    components1 = version_components(v1)
    components2 = version_components(v2)
    length = max(len(components1), len(components2))
    for index in range(length):
        c1 = components1[index] if index < len(components1) else ""
        c2 = components2[index] if index < len(components2) else ""
        if _component_lt(c1, c2):
            return -1
        if _component_lt(c2, c1):
            return 1
    return 0


_VERSION_KEY = cmp_to_key(compare_versions)
