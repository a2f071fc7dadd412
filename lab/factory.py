"""The toplevel factory: NixOS-like system toplevels built by the real Nix, for the lab.

A SystemSpec names a host, a NixOS version, the packages of its closure (with sizes, outputs and a
dependency DAG), the authorized SSH keys and how its activation behaves. `build` turns it into a
toplevel with nix/toplevel.nix. Variants (upgrade, add, remove, failing activation...) are pure
functions from spec to spec.

The spec as JSON (what toplevel.nix reads; `spec_to_json` writes it; fields after "packages" may be left out):

    {"host": "web1", "version": "24.05.20240601.abcdef0",
     "activation": "ok" | "fail" | "incompatible-init" | "failed-units" | "slow" | "break-ssh", "slow_seconds": 0,
     "authorized_keys": ["ssh-ed25519 AAAA... lab"],
     "packages": [{"pname": "openssl", "version": "3.0.13", "size": 6500000,
                   "outputs": ["out", "lib", "bin"], "deps": ["glibc"]}, ...],
     "init_interface_version": "systemd 2",
     "sshd_settings": ["ClientAliveInterval 60"],
     "specialisations": {"rescue": "ok"},
     "switch_lock": "fail" | "wait", "lock_delay": 0, "units": ["topdeck-lab-demo.service"], "distro_id": "debian",
     "switch_program": "/path/to/switch-to-configuration"}

`switch_lock` is how its switch meets /run/nixos/switch-to-configuration.lock held by another process: "fail" at once
with exit 11 (current ng), or "wait" for it (ng of 2024, the Perl switch); `lock_delay` is how long the switch takes to
start before it takes the lock. Each toplevel is shaped like NixOS's: sw/bin, etc/fstab, etc/systemd/system
(sysinit-reactivation.target and a service per name in `units`, linked into /etc/systemd/system by `activate` on systemd
hosts, started and stopped by the switch), and the user unit etc/systemd/user/nixos-activation.service. Its switch
checks what ng checks first: root, the distro (/etc/NIXOS, or /etc/os-release's ID is `distro_id`; the lab's hosts are
Debian), /run/current-system/sw/bin. `switch_program` (else TOPDECK_LAB_SWITCH_PROGRAM in nix-build's environment) is an
executable on this machine that the toplevel carries and runs as its switch on systemd hosts, with ng's environment
(OUT, TOPLEVEL, DISTRO_ID, INSTALL_BOOTLOADER, LOCALE_ARCHIVE, SYSTEMD): nixpkgs' switch-to-configuration-ng, for one;
the lab's own switch runs elsewhere.
"""

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from topdeck.core.errors import NixError
from topdeck.lab.nixenv import lab_env

TOPLEVEL_NIX = Path(__file__).parent / "nix" / "toplevel.nix"
DEFAULT_VERSION = "24.05.20240601.abcdef0"
ACTIVATIONS = ("ok", "fail", "incompatible-init", "failed-units", "slow", "break-ssh")
SWITCH_LOCKS = ("fail", "wait")  # current ng fails at once (exit 11); ng of 2024 and the Perl switch wait
SWITCH_PROGRAM_VARIABLE = "TOPDECK_LAB_SWITCH_PROGRAM"  # read by nix/toplevel.nix
_UNIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*\.service")
# Older names of activation kinds, still accepted (a spec keeps the kind's own name).
ACTIVATION_ALIASES = {"reboot": "incompatible-init"}
DEFAULT_INIT_INTERFACE_VERSION = "systemd 2"  # what NixOS writes: "systemd ${systemd.interfaceVersion}"

# bin/switch-to-configuration's exit codes (those of switch-to-configuration-ng), and the outcome each one
# writes in the last field of the host's /run/lab/activation.log line.
SWITCH_EXIT_CODES = {
    0: "ok",
    1: "failed",  # usage, not root, pre-switch checks, bootloader
    2: "activation-failed",  # the activate script failed; the switch went on
    4: "units-failed",  # a unit failed to restart or start (overrides 2)
    11: "locked",  # another switch-to-configuration holds /run/nixos/switch-to-configuration.lock
    100: "reboot-needed",  # an incompatible init: nothing activated
}

_SPECIALISATION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

# The characters Nix allows in a store path's name.
_STORE_NAME = re.compile(r"[A-Za-z0-9+\-_?=][A-Za-z0-9+\-._?=]*")

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Package:
    """One package: `size` bytes shared among its outputs; `deps` are pnames of other packages."""

    pname: str
    version: str
    size: int
    outputs: tuple[str, ...] = ("out",)
    deps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _STORE_NAME.fullmatch(self.name):
            raise ValueError(f"{self.name!r} is not a valid store path name")
        if self.size < 0:
            raise ValueError(f"{self.name}: negative size {self.size}")
        if not self.outputs or len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"{self.name}: outputs must be distinct and not empty, got {self.outputs}")

    @property
    def name(self) -> str:
        return f"{self.pname}-{self.version}"

    def output_names(self) -> list[str]:
        """The store names of its outputs, as Nix names them: `out` bare, others suffixed."""
        return [self.name if output == "out" else f"{self.name}-{output}" for output in self.outputs]


@dataclass(frozen=True)
class SystemSpec:
    """A host's system: what toplevel.nix builds. A package's deps must come before it in `packages`."""

    host: str
    version: str
    packages: tuple[Package, ...]
    authorized_keys: tuple[str, ...]
    activation: str = "ok"
    slow_seconds: float = 0
    init_interface_version: str = DEFAULT_INIT_INTERFACE_VERSION
    sshd_settings: tuple[str, ...] = ()
    # (name, activation kind) pairs, sorted by name; a mapping is accepted too.
    specialisations: tuple[tuple[str, str], ...] = ()
    switch_lock: str = "fail"
    lock_delay: float = 0  # seconds its switch takes to start before it takes the lock (0: none)
    units: tuple[str, ...] = ()
    distro_id: str = "debian"
    switch_program: str = ""

    def __post_init__(self) -> None:
        if not _STORE_NAME.fullmatch(self.toplevel_name):
            raise ValueError(f"{self.toplevel_name!r} is not a valid store path name")
        object.__setattr__(self, "activation", _activation_kind(self.activation))
        pairs = self.specialisations.items() if isinstance(self.specialisations, Mapping) else self.specialisations
        specialisations = tuple(sorted((str(name), _activation_kind(kind)) for name, kind in pairs))
        object.__setattr__(self, "specialisations", specialisations)
        object.__setattr__(self, "sshd_settings", tuple(self.sshd_settings))
        names = [name for name, _ in specialisations]
        for name in names:
            if not _SPECIALISATION_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid specialisation name")
        if len(set(names)) != len(names):
            raise ValueError(f"a specialisation is named twice: {names}")
        for line in self.sshd_settings:
            if "\n" in line or "\r" in line or not line.strip():
                raise ValueError(f"sshd setting {line!r} must be one non-empty line")
        if not self.init_interface_version or "\n" in self.init_interface_version:
            raise ValueError(f"init_interface_version {self.init_interface_version!r} must be one non-empty line")
        object.__setattr__(self, "units", tuple(self.units))
        if self.switch_lock not in SWITCH_LOCKS:
            raise ValueError(f"unknown switch_lock {self.switch_lock!r}; expected one of {SWITCH_LOCKS}")
        for unit in self.units:
            if not _UNIT_NAME.fullmatch(unit):
                raise ValueError(f"{unit!r} is not a service unit name")
        if not re.fullmatch(r"[a-z0-9._-]+", self.distro_id):
            raise ValueError(f"distro_id {self.distro_id!r} is not an os-release ID")
        if self.switch_program and not (os.path.isabs(self.switch_program) and os.access(self.switch_program, os.X_OK)):
            raise ValueError(f"switch program {self.switch_program!r} is not an executable's absolute path")
        if self.lock_delay < 0:
            raise ValueError(f"negative lock_delay {self.lock_delay}")
        if self.slow_seconds < 0:
            raise ValueError(f"negative slow_seconds {self.slow_seconds}")
        seen: set[str] = set()
        for package in self.packages:
            if package.pname in seen:
                raise ValueError(f"package {package.pname!r} is listed twice")
            missing = [dep for dep in package.deps if dep not in seen]
            if missing:
                raise ValueError(f"{package.name} depends on {missing}, which are not listed before it")
            seen.add(package.pname)

    @property
    def toplevel_name(self) -> str:
        return f"nixos-system-{self.host}-{self.version}"

    def package(self, pname: str) -> Package:
        for package in self.packages:
            if package.pname == pname:
                return package
        raise KeyError(pname)


def _activation_kind(kind: str) -> str:
    kind = ACTIVATION_ALIASES.get(kind, kind)
    if kind not in ACTIVATIONS:
        raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS} (or {tuple(ACTIVATION_ALIASES)})")
    return kind


def spec_to_json(spec: SystemSpec) -> str:
    data = dataclasses.asdict(spec)
    data["specialisations"] = dict(spec.specialisations)
    return json.dumps(data, indent=1)


def spec_from_json(text: str) -> SystemSpec:
    data = json.loads(text)
    packages = tuple(
        Package(p["pname"], p["version"], p["size"], tuple(p["outputs"]), tuple(p["deps"])) for p in data["packages"]
    )
    return SystemSpec(
        host=data["host"],
        version=data["version"],
        packages=packages,
        authorized_keys=tuple(data["authorized_keys"]),
        activation=data.get("activation", "ok"),
        slow_seconds=data.get("slow_seconds", 0),
        init_interface_version=data.get("init_interface_version", DEFAULT_INIT_INTERFACE_VERSION),
        sshd_settings=tuple(data.get("sshd_settings", ())),
        specialisations=tuple(sorted(data.get("specialisations", {}).items())),
        switch_lock=data.get("switch_lock", "fail"),
        lock_delay=data.get("lock_delay", 0),
        units=tuple(data.get("units", ())),
        distro_id=data.get("distro_id", "debian"),
        switch_program=data.get("switch_program", ""),
    )


# --- versions ---------------------------------------------------------------------------------


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as `builtins.compareVersions` says: "1.0pre1" < "1.0" < "1.0p1" < "1.0.1"."""
    components_a = re.findall(r"\d+|[^\d.-]+", a)
    components_b = re.findall(r"\d+|[^\d.-]+", b)
    length = max(len(components_a), len(components_b))
    key_a = [_component_key(c) for c in components_a + [""] * (length - len(components_a))]
    key_b = [_component_key(c) for c in components_b + [""] * (length - len(components_b))]
    return (key_a > key_b) - (key_a < key_b)


def _component_key(component: str) -> tuple[int, int, str]:
    if component == "pre":
        return (0, 0, "")
    if component.isdigit():
        return (2, int(component), "")
    return (1, 0, component)  # words, and "" for a missing component, which sorts before any word


# --- variants ---------------------------------------------------------------------------------


def upgrade(spec: SystemSpec, pname: str, version: str, size: int | None = None) -> SystemSpec:
    """The spec with `pname` at a newer `version` (and `size`, if given)."""
    if compare_versions(version, spec.package(pname).version) <= 0:
        raise ValueError(f"{version} is not newer than {spec.package(pname).name}")
    return _with_version(spec, pname, version, size)


def downgrade(spec: SystemSpec, pname: str, version: str, size: int | None = None) -> SystemSpec:
    """The spec with `pname` at an older `version` (and `size`, if given)."""
    if compare_versions(version, spec.package(pname).version) >= 0:
        raise ValueError(f"{version} is not older than {spec.package(pname).name}")
    return _with_version(spec, pname, version, size)


def _with_version(spec: SystemSpec, pname: str, version: str, size: int | None) -> SystemSpec:
    old = spec.package(pname)
    new = dataclasses.replace(old, version=version, size=old.size if size is None else size)
    return dataclasses.replace(spec, packages=tuple(new if p is old else p for p in spec.packages))


def add_package(spec: SystemSpec, package: Package) -> SystemSpec:
    """The spec with `package` added last (its deps must already be in the spec)."""
    return dataclasses.replace(spec, packages=spec.packages + (package,))


def remove_package(spec: SystemSpec, pname: str) -> SystemSpec:
    """The spec without `pname`, which no other package may depend on."""
    spec.package(pname)  # KeyError when it is not there
    dependents = [p.name for p in spec.packages if pname in p.deps]
    if dependents:
        raise ValueError(f"cannot remove {pname}: {', '.join(dependents)} depend on it")
    return dataclasses.replace(spec, packages=tuple(p for p in spec.packages if p.pname != pname))


def with_activation(spec: SystemSpec, kind: str, slow_seconds: float | None = None) -> SystemSpec:
    """The spec whose switch-to-configuration behaves as `kind` (one of ACTIVATIONS, or an alias: "reboot")."""
    seconds = spec.slow_seconds if slow_seconds is None else slow_seconds
    return dataclasses.replace(spec, activation=kind, slow_seconds=seconds)


def with_incompatible_init(spec: SystemSpec) -> SystemSpec:
    """The spec whose init is incompatible with the others': switch, test and dry-activate exit 100."""
    return with_activation(spec, "incompatible-init")


def with_specialisation(spec: SystemSpec, name: str, kind: str = "ok") -> SystemSpec:
    """The spec with a specialisation `name` (replacing one of that name) whose activation is `kind`."""
    others = tuple((other, k) for other, k in spec.specialisations if other != name)
    return dataclasses.replace(spec, specialisations=others + ((name, kind),))


def with_sshd_settings(spec: SystemSpec, *lines: str) -> SystemSpec:
    """The spec whose sshd fragment is `lines`: on systemd hosts, switching to it from a system with another
    fragment restarts ssh.service."""
    return dataclasses.replace(spec, sshd_settings=tuple(lines))


def with_switch_lock(spec: SystemSpec, behaviour: str, delay: float = 0) -> SystemSpec:
    """The spec whose switch meets a held lock as `behaviour` says: "fail" (exit 11) or "wait"; it takes `delay`
    seconds to start before it takes the lock."""
    return dataclasses.replace(spec, switch_lock=behaviour, lock_delay=delay)


def with_units(spec: SystemSpec, *units: str) -> SystemSpec:
    """The spec whose system has these services (each `sleep infinity`), started by its switch on systemd hosts."""
    return dataclasses.replace(spec, units=tuple(units))


def without_ssh(spec: SystemSpec) -> SystemSpec:
    """The spec whose toplevel lacks the authorized keys, so new SSH logins fail once it is active."""
    return with_activation(spec, "break-ssh")


def initial_system(authorized_keys: list[str] | tuple[str, ...], host: str = "lab", count: int = 40,
                   total_size: int = 8 * MiB) -> SystemSpec:
    """The system every lab host starts with, as if freshly installed from one image."""
    return SystemSpec(
        host=host,
        version=DEFAULT_VERSION,
        packages=base_packages(count, total_size=total_size),
        authorized_keys=tuple(authorized_keys),
    )


# --- a realistic package set ------------------------------------------------------------------

# (pname, version, size in bytes, outputs, deps), in dependency order: every prefix is a valid set.
_BASE_SET: tuple[tuple[str, str, int, tuple[str, ...], tuple[str, ...]], ...] = (
    ("glibc", "2.39", 30 * MiB, ("out", "bin"), ()),
    ("gcc", "13.2.0", 8 * MiB, ("lib",), ("glibc",)),
    ("zlib", "1.3.1", 130 * KiB, ("out",), ("glibc",)),
    ("openssl", "3.0.13", 6500 * KiB, ("out", "lib", "bin"), ("glibc",)),
    ("attr", "2.5.2", 280 * KiB, ("out",), ("glibc",)),
    ("acl", "2.3.2", 350 * KiB, ("out",), ("glibc", "attr")),
    ("gmp", "6.3.0", 900 * KiB, ("out",), ("glibc", "gcc")),
    ("ncurses", "6.4", 3 * MiB, ("out",), ("glibc",)),
    ("readline", "8.2p10", 600 * KiB, ("out",), ("glibc", "ncurses")),
    ("bash", "5.2p26", 1600 * KiB, ("out",), ("glibc",)),
    ("coreutils", "9.5", 7 * MiB, ("out",), ("glibc", "acl", "attr", "gmp", "openssl")),
    ("xz", "5.4.6", 450 * KiB, ("out", "bin"), ("glibc",)),
    ("bzip2", "1.0.8", 120 * KiB, ("out", "bin"), ("glibc",)),
    ("zstd", "1.5.6", 1300 * KiB, ("out", "bin"), ("glibc", "zlib", "xz")),
    ("libcap", "2.69", 250 * KiB, ("out", "lib"), ("glibc", "attr")),
    ("util-linux", "2.39.4", 9 * MiB, ("out", "bin", "lib"), ("glibc", "ncurses", "zlib", "libcap")),
    ("kmod", "31", 400 * KiB, ("out", "lib"), ("glibc", "xz", "zstd", "openssl")),
    ("linux", "6.6.30", 150 * MiB, ("out", "modules"), ()),
    ("expat", "2.6.2", 400 * KiB, ("out",), ("glibc",)),
    (
        "systemd",
        "255.6",
        30 * MiB,
        ("out",),
        ("glibc", "gcc", "libcap", "util-linux", "kmod", "openssl", "acl"),
    ),
    ("dbus", "1.14.10", 2200 * KiB, ("out", "lib"), ("glibc", "expat", "systemd")),
    ("pcre2", "10.43", 1800 * KiB, ("out",), ("glibc",)),
    ("gnugrep", "3.11", 1200 * KiB, ("out",), ("glibc", "pcre2")),
    ("gnused", "4.9", 800 * KiB, ("out",), ("glibc", "acl")),
    ("gawk", "5.2.2", 2500 * KiB, ("out",), ("glibc", "readline", "gmp")),
    ("findutils", "4.9.0", 1400 * KiB, ("out",), ("glibc", "coreutils")),
    ("diffutils", "3.10", 1500 * KiB, ("out",), ("glibc", "coreutils")),
    ("gnutar", "1.35", 2800 * KiB, ("out",), ("glibc", "acl")),
    ("gzip", "1.13", 300 * KiB, ("out",), ("glibc", "bash")),
    ("libffi", "3.4.6", 100 * KiB, ("out",), ("glibc",)),
    ("sqlite", "3.45.3", 1900 * KiB, ("out", "bin"), ("glibc", "zlib", "readline")),
    ("perl", "5.38.2", 55 * MiB, ("out",), ("glibc", "zlib", "bzip2")),
    (
        "python3",
        "3.11.9",
        110 * MiB,
        ("out",),
        ("glibc", "zlib", "bzip2", "xz", "openssl", "libffi", "ncurses", "readline", "sqlite", "expat"),
    ),
    ("libxcrypt", "4.4.36", 300 * KiB, ("out",), ("glibc",)),
    ("linux-pam", "1.6.1", 3 * MiB, ("out",), ("glibc", "libxcrypt")),
    ("shadow", "4.14.6", 3500 * KiB, ("out",), ("glibc", "linux-pam", "libxcrypt")),
    ("openssh", "9.7p1", 6 * MiB, ("out",), ("glibc", "openssl", "zlib", "linux-pam", "libxcrypt")),
    ("libunistring", "1.2", 2 * MiB, ("out",), ("glibc",)),
    ("libidn2", "2.3.7", 400 * KiB, ("out",), ("glibc", "libunistring")),
    ("nghttp2", "1.61.0", 900 * KiB, ("out", "lib"), ("glibc",)),
    ("curl", "8.7.1", 1500 * KiB, ("out", "bin"), ("glibc", "openssl", "zlib", "nghttp2", "libidn2", "zstd")),
    ("iproute2", "6.9.0", 4500 * KiB, ("out",), ("glibc", "libcap", "util-linux")),
    ("nginx", "1.26.0", 5 * MiB, ("out",), ("glibc", "openssl", "zlib", "pcre2")),
    ("git", "2.44.1", 50 * MiB, ("out",), ("glibc", "openssl", "zlib", "curl", "perl", "expat", "pcre2")),
    (
        "nix",
        "2.18.2",
        25 * MiB,
        ("out", "man"),
        ("glibc", "gcc", "openssl", "curl", "sqlite", "bzip2", "xz", "zstd", "bash"),
    ),
    ("sudo", "1.9.15p5", 5 * MiB, ("out",), ("glibc", "linux-pam", "zlib")),
    ("tzdata", "2024a", 2 * MiB, ("out",), ()),
    ("nss-cacert", "3.98", 500 * KiB, ("out",), ()),
    ("less", "643", 400 * KiB, ("out",), ("glibc", "ncurses")),
    ("nano", "8.0", 3 * MiB, ("out",), ("glibc", "ncurses")),
    ("e2fsprogs", "1.47.0", 4 * MiB, ("out", "bin"), ("glibc", "util-linux")),
)

_PERL_WORDS = """Text Data File Net HTTP JSON XML Test Class Time Digest IO Term Config Module Params Try List
    Scalar Sub Encode Mail URI Devel Path Getopt Log DBI Crypt Archive""".split()
_PERL_SUFFIXES = """Util Simple Tiny Dumper Parser More Temp Which Find Any XS Lite Base Table Format Builder
    Install Compare Escape Socket""".split()
_PYTHON_WORDS = """requests attrs click jinja2 markupsafe idna urllib3 certifi six packaging pluggy pyyaml
    cryptography cffi pycparser charset rich pygments setuptools wheel typing dateutil pytz tomli flask
    werkzeug sqlalchemy psycopg2 redis boto paramiko bcrypt pynacl httpx anyio""".split()
_PYTHON_SUFFIXES = ["", *"-utils -core -compat -extras -plugin -client -async -types".split()]
_LIB_SYLLABLES = """png jpeg tiff xml ssh uv ev event usb pci nl mnl nftnl seccomp yaml edit bsd md sodium
    archive gpg assuan ksba tasn drm input udev mount blkid uuid smart inotify bpf aio net""".split()


def base_packages(count: int, seed: int = 0, total_size: int | None = None) -> tuple[Package, ...]:
    """`count` packages with a realistic dependency DAG: a fixed set of real ones (glibc first), then
    Perl and Python modules and C libraries made up from `seed`. Sizes are realistic unless `total_size`
    is given, then scaled to add up to about that many bytes."""
    packages = [Package(*entry) for entry in _BASE_SET[:count]]
    rng = random.Random(seed)
    taken = {p.pname for p in packages}
    families: dict[str, list[str]] = {
        "perl": [],
        "python": [],
        "lib": [p.pname for p in packages if p.pname.startswith("lib")],
    }
    while len(packages) < count:
        family = rng.choices(list(families), weights=(4, 3, 3))[0]
        package = _synthesized_package(rng, family, families[family], taken)
        packages.append(package)
        taken.add(package.pname)
        families[family].append(package.pname)
    if total_size is None:
        return tuple(packages)
    scale = total_size / sum(p.size for p in packages)
    return tuple(dataclasses.replace(p, size=max(1, round(p.size * scale))) for p in packages)


def _synthesized_package(rng: random.Random, family: str, relatives: list[str], taken: set[str]) -> Package:
    """A new member of `family`, depending on the family's root and up to two earlier `relatives`."""
    deps = rng.sample(relatives, min(len(relatives), rng.randint(0, 2)))
    if family == "perl":
        pname = f"perl5.38.2-{rng.choice(_PERL_WORDS)}-{rng.choice(_PERL_SUFFIXES)}"
        version = f"{rng.randint(0, 3)}.{rng.randint(1, 99):02d}"
        size = _log_uniform(rng, 20 * KiB, 600 * KiB)
        return Package(_unique(pname, taken), version, size, deps=("perl", *deps))
    if family == "python":
        pname = f"python3.11-{rng.choice(_PYTHON_WORDS)}{rng.choice(_PYTHON_SUFFIXES)}"
        size = _log_uniform(rng, 50 * KiB, 8 * MiB)
        return Package(_unique(pname, taken), _semver(rng), size, deps=("python3", *deps))
    pname = f"lib{rng.choice(_LIB_SYLLABLES)}{rng.choice(_LIB_SYLLABLES)}"
    size = _log_uniform(rng, 80 * KiB, 4 * MiB)
    outputs = ("out", "lib") if rng.random() < 0.25 else ("out",)
    return Package(_unique(pname, taken), _semver(rng), size, outputs, deps=("glibc", *deps))


def _unique(pname: str, taken: set[str]) -> str:
    """`pname`, or `pname` with the smallest number from 2 up that makes it unused."""
    number = 2
    candidate = pname
    while candidate in taken:
        candidate = f"{pname}{number}"
        number += 1
    return candidate


def _semver(rng: random.Random) -> str:
    return f"{rng.randint(0, 5)}.{rng.randint(0, 30)}.{rng.randint(0, 12)}"


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return round(math.exp(rng.uniform(math.log(low), math.log(high))))


# --- building ---------------------------------------------------------------------------------


def build(
    spec: SystemSpec,
    workdir: Path | str,
    log: Callable[[str], None] | None = None,
    max_jobs: int | None = None,
) -> str:
    """Build the spec's toplevel with nix-build and return its store path.

    The spec file and an out-link (a GC root while `workdir` exists) land in `workdir`, named by the
    spec's hash. Each line of the build log goes to `log`. Raises NixError when the build fails.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    text = spec_to_json(spec)
    stem = f"toplevel-{spec.host}-{_digest(text)}"
    spec_file = workdir / f"{stem}.json"
    _write_atomically(spec_file, text)
    jobs = str(max_jobs or os.cpu_count() or 1)
    command = ["nix-build", str(TOPLEVEL_NIX), "--argstr", "specFile", str(spec_file)]
    command += ["--out-link", str(workdir / stem), "--max-jobs", jobs]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lab_env())
    assert process.stdout is not None and process.stderr is not None
    reason = _stream_log(process.stderr, log)
    output = process.stdout.read()
    if process.wait() != 0:
        raise NixError(f"nix-build of {spec.toplevel_name} failed (exit {process.returncode}): {reason}")
    return output.split()[-1]


def _stream_log(stream: IO[str], log: Callable[[str], None] | None) -> str:
    """Pass each line to `log`; return the line that best says why a build failed (its first error)."""
    first_error, last_line = None, "no output"
    for line in stream:
        last_line = line.rstrip("\n")
        if log is not None:
            log(last_line)
        if first_error is None and last_line.startswith("error:"):
            first_error = last_line
    return first_error or last_line


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as file:
        file.write(text)
    os.replace(file.name, path)
