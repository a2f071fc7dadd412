"""The inventory: `topdeck.toml` (cache, SSH, deploy settings) and one `<name>/host.toml` per host.

Every value is checked when it is read; a bad one is refused with the file, the key and the reason.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import re
import subprocess
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from topdeck.core.errors import InventoryError, TopdeckError
from topdeck.core.sshconfigfile import read_config
from topdeck.core.strict import is_decimal

CONFIG_FILE = "topdeck.toml"
HOST_FILE = "host.toml"
BUILD_KINDS = ("nix", "nixos", "flake")
# A flake reference: a local path, or a URL-like ref (github:o/r, git+https://..., path:..., a registry name).
FLAKE_URL_RE = re.compile(r"[a-z][a-z0-9+.-]*:[^\s#'\"\\]+|[A-Za-z][A-Za-z0-9_-]*(/[^\s#'\"\\]+)?")

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
BUCKET_RE = re.compile(r"[A-Za-z0-9-]{6,50}")
PREFIX_RE = re.compile(r"([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?")
LARGEST_SETTING = 10**9  # a timeout (s) or a count beyond this is a typo, and would overflow a float or a sleep


@dataclass(frozen=True)
class Build:
    """What builds a host's toplevel: a Nix expression (the lab), a NixOS configuration.nix, or a flake's
    nixosConfigurations.<name> (`flake` is the ref, a local path made absolute; `where` names the setting)."""

    kind: str  # "nix", "nixos" or "flake"
    file: Path = Path()
    flake: str = ""
    name: str = ""
    where: str = ""


@dataclass(frozen=True)
class Checks:
    """Health checks run on a host after an activation; a failing one rolls the host back."""

    command: str = ""  # a shell command, run on the host
    http: str = ""  # a URL fetched from the host
    failed_units: bool = False  # no systemd unit may have failed since the activation

    def merged(self, over: Checks) -> Checks:
        return Checks(over.command or self.command, over.http or self.http, over.failed_units or self.failed_units)


KEY_UPLOADS = ("pre-activation", "post-activation")
KEY_MODE_RE = re.compile(r"0?[0-7]{3}", re.ASCII)
KEY_DIR_RE = re.compile(r"(/[A-Za-z0-9._+-]+)+", re.ASCII)


@dataclass(frozen=True)
class Key:
    """One `[[keys]]` entry: a secret uploaded over SSH (never through the cache) to `dest_dir`/`name`, its content
    read from `file` or the stdout of `command` (an argv) on the operator's machine."""

    name: str
    file: Path | None = None
    command: tuple[str, ...] = ()
    dest_dir: str = "/run/keys"
    user: str = "root"
    group: str = "root"
    permissions: str = "0600"
    upload: str = "pre-activation"
    where: str = ""  # the file and entry that declared it, for messages

    @property
    def dest(self) -> str:
        return f"{self.dest_dir}/{self.name}"


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    pointer: str
    user: str = "root"
    port: int = 22
    tags: tuple[str, ...] = ()
    sudo: bool = False
    build: Build | None = None
    source: Path = Path()
    check: Checks = field(default_factory=Checks)
    on_failed_units: str = ""  # "rollback" or "keep"; "" takes the fleet's deploy.on_failed_units
    specialisation: str = ""  # the specialisation of its system the host runs (switch and test activate it)
    explicit: frozenset[str] = frozenset()  # the SSH settings host.toml gives itself (they win over ~/.ssh/config)
    keys: tuple[Key, ...] = ()  # its own [[keys]]


@dataclass(frozen=True)
class CacheConfig:
    kind: str  # "b2" or "dir"
    bucket: str = ""
    prefix: str = ""
    realm: str = "production"
    credentials_file: Path | None = None
    path: Path | None = None
    url: str = ""
    signing_key: Path | None = None
    public_key: str = ""
    public_key_file: Path | None = None
    download_url: str = ""  # B2: the cache's root as hosts fetch it (a CDN or own domain); "" for B2's own URL
    gc_credentials_file: Path | None = None  # the key `topdeck gc` deletes with (never the deploy key)
    delta_max_mib: int = 64  # a push writes a delta object for a moved pointer while it is at most this (0: never)


# Asked for a key file's passphrase (the file's path); raises Cancelled when the operator gives none.
Passphrase = Callable[[Path], str]


@dataclass(frozen=True)
class SSHConfig:
    known_hosts: Path | None = None
    identity: Path | None = None
    connect_timeout: float = 10.0
    config: Path | None = None  # an ssh_config file; None: ~/.ssh/config when it exists
    passphrase: Passphrase | None = field(default=None, compare=False, repr=False)  # set by the front end


# What a deploy does when the switch activates the new system but units fail to start (its exit code 4).
FAILED_UNITS_CHOICES = ("rollback", "keep")


@dataclass(frozen=True)
class DeployConfig:
    parallel: int = 8
    confirm_timeout: float = 30.0
    on_failed_units: str = "rollback"
    reboot_timeout: float = 300.0  # how long a rebooted host may take to come back, confirmation included
    pointer_valid_for: int = 0  # seconds a published pointer stays valid (hosts refuse it after); 0: no end
    lock_wait: float = 180.0  # how long a switch may wait for the switch lock another process holds, then stopped
    fetch_parallel: int = 64  # transfers at once when a host fetches ahead (core/remote/host.sh); 0: Nix fetches


@dataclass(frozen=True)
class Inventory:
    root: Path
    hosts: tuple[Host, ...]
    cache: CacheConfig
    ssh: SSHConfig = field(default_factory=SSHConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    checks: dict[str, Checks] = field(default_factory=dict)  # by tag; "all" for every host
    keys: tuple[Key, ...] = ()  # the fleet's [[keys]], for every host

    def keys_for(self, host: Host) -> tuple[Key, ...]:
        """The fleet's keys, then the host's own; a host key of the same name replaces the fleet's."""
        own = {key.name for key in host.keys}
        return (*(key for key in self.keys if key.name not in own), *host.keys)

    def on_failed_units_for(self, host: Host) -> str:
        return host.on_failed_units or self.deploy.on_failed_units

    def checks_for(self, host: Host) -> Checks:
        """The checks of `all`, then of the host's tags, then its own, each overriding what it sets."""
        result = self.checks.get("all", Checks())
        for tag in host.tags:
            result = result.merged(self.checks.get(tag, Checks()))
        return result.merged(host.check)

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise InventoryError(f"{self.root}: no host named {name!r}")


# --- reading ----------------------------------------------------------------------------------------


def load_inventory(root: Path | str) -> Inventory:
    root = Path(root)
    if not root.is_dir():
        raise InventoryError(f"{root}: inventory folder not found")
    config = _read_toml(root / CONFIG_FILE)
    section = _Section(config, root / CONFIG_FILE, "")
    section.allow_only("cache", "ssh", "deploy", "checks", "build", "keys")
    inventory = Inventory(
        root=root,
        hosts=_with_fleet_build(_load_hosts(root), _fleet_build(section.table("build"), root)),
        cache=_cache_config(section.table("cache", required=True), root),
        ssh=_ssh_config(section.table("ssh"), root),
        deploy=_deploy_config(section.table("deploy")),
        checks=_checks_by_tag(section.table("checks")),
        keys=_keys(section, root),
    )
    _refuse_secrets_in_flakes(inventory)
    return inventory


def _load_hosts(root: Path) -> tuple[Host, ...]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    # a host.toml that is a dangling link still means a host: refuse it rather than skip it
    hosts = [_load_host(folder) for folder in folders
             if (folder / HOST_FILE).exists() or (folder / HOST_FILE).is_symlink()]
    if not hosts:
        raise InventoryError(f"{root}: no hosts (expected {root}/<name>/{HOST_FILE})")
    _refuse_shared_addresses(hosts)
    return tuple(hosts)


def _load_host(folder: Path) -> Host:
    path = folder / HOST_FILE
    if not is_safe_name(folder.name):
        raise InventoryError(
            f"{path}: host name {folder.name!r} must be letters, digits, '.', '_' or '-' (no '..', at most 63)"
        )
    section = _Section(_read_toml(path), path, "")
    section.allow_only("address", "pointer", "user", "port", "tags", "sudo", "build", "check", "on_failed_units",
                        "specialisation", "keys")
    build_table = section.table("build")
    return Host(
        name=folder.name,
        address=section.get("address", str, required=True, check=_valid_address),
        pointer=section.get("pointer", str, required=True, check=_valid_name),
        user=section.get("user", str, default="root", check=_valid_user),
        port=section.get("port", int, default=22, check=_valid_port),
        tags=tuple(section.get("tags", list, default=[], check=_valid_tags)),
        sudo=section.get("sudo", bool, default=False),
        build=_build(build_table, folder) if build_table.data else None,
        source=path,
        check=_checks(section.table("check")),
        on_failed_units=section.get("on_failed_units", str, default="", check=_one_of(*FAILED_UNITS_CHOICES)),
        specialisation=section.get("specialisation", str, default="", check=_valid_name),
        explicit=frozenset(key for key in ("user", "port") if key in section.data),
        keys=_keys(section, folder),
    )


def _build(section: _Section, folder: Path) -> Build:
    section.allow_only(*BUILD_KINDS)
    kinds = [kind for kind in BUILD_KINDS if kind in section.data]
    if len(kinds) != 1:
        raise InventoryError(f"{section.where()}: give exactly one of 'nix', 'nixos' or 'flake'")
    if kinds == ["flake"]:
        ref, hash_sign, attr = section.get("flake", str).partition("#")
        if not hash_sign or not is_safe_name(attr):
            raise InventoryError(f"{section.where('flake')}: {section.data['flake']!r} should be "
                                 "'<flake-ref>#<name>' (the name of one of its nixosConfigurations)")
        return Build(kind="flake", flake=_flake_ref(section, ref, folder), name=attr, where=section.where("flake"))
    name = section.get(kinds[0], str, required=True)
    file = (folder / name).resolve()
    if folder.resolve() not in file.parents:
        raise InventoryError(f"{section.where(kinds[0])}: {name!r} must be a file inside {folder}")
    return Build(kind=kinds[0], file=file)


def _fleet_build(section: _Section, root: Path) -> Build | None:
    """topdeck.toml's `[build] flake = REF`: each host without a [build] of its own builds
    nixosConfigurations.<its name> of that flake."""
    section.allow_only("flake")
    if "flake" not in section.data:
        return None
    ref = section.get("flake", str)
    if "#" in ref:
        raise InventoryError(f"{section.where('flake')}: {ref!r}: give the flake only (no '#'): each host builds "
                             "nixosConfigurations.<its name>")
    return Build(kind="flake", flake=_flake_ref(section, ref, root), where=section.where("flake"))


def _with_fleet_build(hosts: tuple[Host, ...], fleet: Build | None) -> tuple[Host, ...]:
    if fleet is None:
        return hosts
    return tuple(host if host.build is not None else dataclasses.replace(host, build=dataclasses.replace(
        fleet, name=host.name)) for host in hosts)


def _flake_ref(section: _Section, ref: str, base: Path) -> str:
    """A flake reference as Nix takes it: a local path (`.`, `./x`, `/x`) made absolute against `base`, or a
    URL-like reference as it is."""
    if ref.startswith((".", "/")):
        if "\n" in ref or "?" in ref:
            raise InventoryError(f"{section.where('flake')}: {ref!r} is not a path")
        return str((base / ref).resolve())
    if not FLAKE_URL_RE.fullmatch(ref):
        raise InventoryError(f"{section.where('flake')}: {ref!r} is not a flake reference (a path such as '.' "
                             "or a URL such as 'github:owner/repo' or 'git+https://host/repo')")
    return ref


def _refuse_secrets_in_flakes(inventory: Inventory) -> None:
    """Nix copies a local flake into the world-readable store: a `path:` flake and a folder that is no git work
    tree whole, a git work tree (a plain path or `git+file:`) as its tracked files, from the repository's root.
    A key or credentials file the inventory names must not be among what is copied."""
    secrets = {"cache.signing_key": inventory.cache.signing_key,
               "cache.credentials_file": inventory.cache.credentials_file,
               "cache.gc_credentials_file": inventory.cache.gc_credentials_file,
               "ssh.identity": inventory.ssh.identity,
               **{f"keys {key.name}": key.file for host in inventory.hosts for key in inventory.keys_for(host)}}
    flakes = {_local_flake(host.build.flake, inventory.root) for host in inventory.hosts
              if host.build is not None and host.build.kind == "flake"}
    for flake in sorted(flake for flake in flakes if flake is not None):
        for key, secret in secrets.items():
            if secret is not None and _copied_with(secret, *flake):
                raise InventoryError(f"{inventory.root / CONFIG_FILE}: {key}: {secret} would be copied with flake "
                                     f"{flake[0]} into the world-readable store: keep secrets outside the flake's "
                                     "folder and out of its git repository")


def _local_flake(ref: str, root: Path) -> tuple[Path, bool] | None:
    """A flake reference that Nix reads from this machine: its folder, and whether Nix copies it whole."""
    for scheme, whole in (("path:", True), ("git+file:", False)):
        if ref.startswith(scheme):
            location = ref[len(scheme):].split("?", 1)[0].split("#", 1)[0]
            location = location[2:] if location.startswith("//") else location
            return (root / location).resolve(), whole
    return (Path(ref), False) if ref.startswith("/") else None


def _copied_with(secret: Path, folder: Path, whole: bool) -> bool:
    repository = None if whole else next((f for f in (folder, *folder.parents) if (f / ".git").exists()), None)
    if repository is None:
        return folder == secret or folder in secret.parents
    if repository not in secret.parents:
        return False
    tracked = subprocess.run(["git", "-C", str(repository), "ls-files", "--error-unmatch", "--", str(secret)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return tracked.returncode == 0


def _cache_config(section: _Section, root: Path) -> CacheConfig:
    section.allow_only(
        "type", "bucket", "prefix", "realm", "credentials_file", "path", "url",
        "signing_key", "public_key", "public_key_file", "download_url", "gc_credentials_file", "delta_max_mib",
    )
    kind = section.get("type", str, default="b2", check=_one_of("b2", "dir"))
    if kind == "b2":
        section.get("bucket", str, required=True, check=_valid_bucket)
    else:
        section.get("path", str, required=True)
    if "public_key" in section.data and "public_key_file" in section.data:
        raise InventoryError(f"{section.where()}: give 'public_key' or 'public_key_file', not both")
    if "@" in str(section.data.get("download_url", "")):  # not echoed: it may hold a password
        raise InventoryError(f"{section.where('download_url')}: must not carry a user or password (every host "
                             "would be given it)")
    if "@" in str(section.data.get("url", "")):  # not echoed: it may hold a password
        raise InventoryError(f"{section.where('url')}: must not carry a user or password (every host would be "
                             "given it)")
    if kind == "dir" and "download_url" in section.data:
        raise InventoryError(f"{section.where('download_url')}: only for type = \"b2\" (a dir cache names the URL "
                             "hosts fetch it from with 'url')")
    return CacheConfig(
        kind=kind,
        bucket=section.get("bucket", str, default=""),
        prefix=section.get("prefix", str, default="", check=_valid_prefix).strip("/"),
        realm=section.get("realm", str, default="production"),
        credentials_file=section.path("credentials_file", root),
        path=section.path("path", root),
        url=section.get("url", str, default="", check=_valid_cache_url).rstrip("/"),
        signing_key=section.path("signing_key", root),
        public_key=section.get("public_key", str, default=""),
        public_key_file=section.path("public_key_file", root),
        download_url=section.get("download_url", str, default="", check=_valid_download_url).rstrip("/"),
        gc_credentials_file=section.path("gc_credentials_file", root),
        delta_max_mib=section.get("delta_max_mib", int, default=64, check=_valid_delta_max),
    )


def _valid_delta_max(value: int) -> str | None:
    return None if 0 <= value <= 4096 else "must be from 0 (no delta objects) to 4096 (MiB)"


def _ssh_config(section: _Section, root: Path) -> SSHConfig:
    section.allow_only("known_hosts", "identity", "connect_timeout", "config")
    return SSHConfig(
        known_hosts=section.path("known_hosts", root),
        identity=section.path("identity", root),
        connect_timeout=float(section.get("connect_timeout", (int, float), default=10.0, check=_positive)),
        config=_ssh_client_config(section, root),
    )


def _ssh_client_config(section: _Section, root: Path) -> Path | None:
    """`[ssh] config`: an ssh_config file that must exist and parse (paramiko's parser, as connections use)."""
    path = section.path("config", root)
    if path is None:
        return None
    if not path.is_file():
        raise InventoryError(f"{section.where('config')}: {path} is not a file")
    try:
        read_config(path)
    except TopdeckError as error:
        raise InventoryError(f"{section.where('config')}: {error}") from None
    return path


def _deploy_config(section: _Section) -> DeployConfig:
    section.allow_only("parallel", "confirm_timeout", "on_failed_units", "reboot_timeout", "pointer_valid_for",
                       "lock_wait", "fetch_parallel")
    return DeployConfig(
        parallel=section.get("parallel", int, default=8, check=_positive),
        confirm_timeout=float(section.get("confirm_timeout", (int, float), default=30.0, check=_positive)),
        on_failed_units=section.get("on_failed_units", str, default="rollback",
                                    check=_one_of(*FAILED_UNITS_CHOICES)),
        reboot_timeout=float(section.get("reboot_timeout", (int, float), default=300.0, check=_positive)),
        pointer_valid_for=_valid_for(section),
        lock_wait=float(section.get("lock_wait", (int, float), default=180.0, check=_positive)),
        fetch_parallel=section.get("fetch_parallel", int, default=64, check=_valid_fetch_parallel),
    )


def _valid_fetch_parallel(value: int) -> str | None:
    return None if 0 <= value <= 999 else "must be from 0 (Nix fetches by itself) to 999 transfers at once"


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"([0-9]{1,9})([smhdw])", re.ASCII)
_MAX_VALID_FOR = 10 * 365 * 86400


def _valid_for(section: _Section) -> int:
    """`pointer_valid_for`: seconds (an integer) or a duration such as "12h", "7d", "2w"; off (0) when unset."""
    value = section.get("pointer_valid_for", (int, str), default=0)
    if isinstance(value, str):
        found = _DURATION_RE.fullmatch(value.strip())
        seconds = int(found[1]) * _DURATION_UNITS[found[2]] if found else -1
    else:
        seconds = -1 if isinstance(value, bool) else value
    if not 0 < seconds <= _MAX_VALID_FOR and value != 0:
        raise InventoryError(f"{section.where('pointer_valid_for')}: {value!r} should be a duration such as \"12h\", "
                             "\"7d\" or \"2w\", or a number of seconds (1 to ten years; 0 or unset: no end)")
    return seconds


def _keys(section: _Section, folder: Path) -> tuple[Key, ...]:
    """`[[keys]]`: each entry checked; a name given twice in one file is refused."""
    entries = section.get("keys", list, default=[])
    keys: list[Key] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InventoryError(f"{section.where(f'keys[{index}]')}: {entry!r} should be a table ([[keys]])")
        key = _key(_Section(entry, section.file, f"keys[{index}]"), folder)
        if any(other.name == key.name for other in keys):
            raise InventoryError(f"{key.where}: name {key.name!r} is given twice in this file")
        keys.append(key)
    return tuple(keys)


def _key(section: _Section, folder: Path) -> Key:
    section.allow_only("name", "file", "command", "dest_dir", "user", "group", "permissions", "upload")
    name = section.get("name", str, required=True, check=_valid_name)
    where = f"{section.where()} (key {name})"
    if ("file" in section.data) == ("command" in section.data):
        raise InventoryError(f"{where}: give exactly one of 'file' or 'command'")
    return Key(
        name=name,
        file=section.path("file", folder),
        command=_key_command(section),
        dest_dir=section.get("dest_dir", str, default="/run/keys", check=_valid_key_dir).rstrip("/"),
        user=section.get("user", str, default="root", check=_valid_user),
        group=section.get("group", str, default="root", check=_valid_user),
        permissions=section.get("permissions", str, default="0600", check=_valid_key_mode),
        upload=section.get("upload", str, default="pre-activation", check=_one_of(*KEY_UPLOADS)),
        where=where,
    )


def _key_command(section: _Section) -> tuple[str, ...]:
    """A key's `command`: an argv (a list of strings), or a string run by /bin/sh -c, on the operator's machine."""
    value = section.get("command", (str, list), default=[])
    if isinstance(value, str):
        if _valid_command(value):
            raise InventoryError(f"{section.where('command')}: {_valid_command(value)}")
        return ("/bin/sh", "-c", value)
    if "command" in section.data and (not value or not all(isinstance(word, str) and word and "\0" not in word
                                                           for word in value)):
        raise InventoryError(f"{section.where('command')}: should be a non-empty list of non-empty strings (an "
                             "argv) or a shell command string")
    return tuple(value)


def _valid_key_dir(value: str) -> str | None:
    if not value.startswith("/"):
        return "must be an absolute path (as /run/keys)"
    if not KEY_DIR_RE.fullmatch(value.rstrip("/")) or "/../" in f"{value}/" or "/./" in f"{value}/":
        return "must be a plain absolute path (letters, digits and ._+- in each part; no '..')"
    return None


def _valid_key_mode(value: str) -> str | None:
    return None if KEY_MODE_RE.fullmatch(value) else "is not an octal file mode (as \"0600\" or \"0440\")"


def _checks_by_tag(section: _Section) -> dict[str, Checks]:
    checks = {}
    for tag in section.data:
        if not NAME_RE.fullmatch(tag):
            raise InventoryError(f"{section.where(tag)}: a tag (letters, digits, '.', '_', '-') or 'all'")
        checks[tag] = _checks(section.table(tag))
    return checks


def _checks(section: _Section) -> Checks:
    section.allow_only("command", "http", "failed_units")
    return Checks(
        command=section.get("command", str, default="", check=_valid_command),
        http=section.get("http", str, default="", check=_valid_url),
        failed_units=section.get("failed_units", bool, default=False),
    )


def _valid_command(value: str) -> str | None:
    return "must be a non-empty command without NUL or newline" if not value.strip() or "\0" in value \
        or "\n" in value else None


def _valid_url(value: str) -> str | None:
    return None if re.fullmatch(r"https?://[^\s'\"\\]+", value) else "must be an http:// or https:// URL"


# The cache's root as hosts fetch it: it goes into a remote command, a Nix string of the agent module and Nix's
# substituters (a space would split it), and paths are appended to it (a query or fragment would swallow them).
DOWNLOAD_URL_RE = re.compile(rf"https?://({_LABEL}(\.{_LABEL})*|[0-9]{{1,3}}(\.[0-9]{{1,3}}){{3}}|\[[0-9A-Fa-f:.]+\])"
                             r"(:[0-9]{1,5})?(/[A-Za-z0-9._~%+-]+)*/?")
FILE_URL_RE = re.compile(r"file://(/[A-Za-z0-9._~%+-]+)+/?")


def _valid_cache_url(value: str) -> str | None:
    """A dir cache's `url`: what hosts fetch it from, so it travels as a download_url does."""
    if FILE_URL_RE.fullmatch(value) or DOWNLOAD_URL_RE.fullmatch(value):
        return None
    return ("is neither the file:// URL of an absolute folder nor the http:// or https:// URL of the cache's root "
            "(letters, digits and ._~%+- in the path; no user, query, quotes or spaces)")


def _valid_download_url(value: str) -> str | None:
    if DOWNLOAD_URL_RE.fullmatch(value):
        return None
    return ("is not the http:// or https:// URL of the cache's root (host, optional port and path of letters, "
            "digits and ._~%+-; no user, query, quotes or spaces)")


def _refuse_shared_addresses(hosts: list[Host]) -> None:
    seen: dict[tuple[str, int], Host] = {}
    for host in hosts:
        key = (_address_key(host.address), host.port)
        if key in seen:
            raise InventoryError(
                f"{host.source}: address: {_with_port(host.address, host.port)} is also the address of "
                f"host {seen[key].name!r}"
            )
        seen[key] = host


def _with_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _address_key(address: str) -> str:
    """One spelling per address: `::1` and `0:0:0:0:0:0:0:1` are the same host, and so are names in any case."""
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return address.lower()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise InventoryError(f"{path}: file not found") from None
    except OSError as error:
        raise InventoryError(f"{path}: cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise InventoryError(f"{path}: not valid TOML: {error}") from None
    except RecursionError:
        raise InventoryError(f"{path}: not valid TOML: nested too deeply") from None
    except UnicodeDecodeError as error:
        raise InventoryError(f"{path}: not valid TOML: not UTF-8 (byte {error.start})") from None


class _Section:
    """One TOML table with the file it came from, for error messages that name file and key."""

    def __init__(self, data: dict[str, Any], path: Path, prefix: str):
        self.data, self.file, self.prefix = data, path, prefix

    def where(self, key: str = "") -> str:
        dotted = ".".join(part for part in (self.prefix, key) if part)
        return f"{self.file}: {dotted}" if dotted else str(self.file)

    def allow_only(self, *keys: str) -> None:
        for key in self.data:
            if key not in keys:
                raise InventoryError(f"{self.where(key)}: unknown key (expected one of: {', '.join(keys)})")

    def table(self, key: str, required: bool = False) -> _Section:
        value = self.get(key, dict, required=required, default={})
        dotted = ".".join(part for part in (self.prefix, key) if part)
        return _Section(value, self.file, dotted)

    def get(self, key: str, kind: type | tuple[type, ...], *, required: bool = False, default: Any = None,
            check: Callable[[Any], str | None] | None = None) -> Any:
        if key not in self.data:
            if required:
                raise InventoryError(f"{self.where(key)}: missing (required)")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InventoryError(f"{self.where(key)}: {value!r} should be {_kind_name(kind)}")
        problem = check(value) if check else None
        if problem:
            raise InventoryError(f"{self.where(key)}: {value!r} {problem}")
        return value

    def path(self, key: str, root: Path) -> Path | None:
        value = self.get(key, str)
        if value is None:
            return None
        if not value or "\n" in value:
            raise InventoryError(f"{self.where(key)}: {value!r} is not a path")
        return (root / Path(value).expanduser()).resolve()


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "a table",
             float: "a number"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _valid_address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if HOSTNAME_RE.fullmatch(value) and not is_decimal(value.replace(".", "")):
        return None
    return "is not an IP address or host name"


def address_problem(value: str) -> str | None:
    """Why `value` is not an IP address or host name (None when it is one)."""
    return _valid_address(value)


def is_safe_name(value: str) -> bool:
    """Host, pointer and tag names: safe in a file name, a B2 key and a shell word."""
    return bool(NAME_RE.fullmatch(value)) and ".." not in value


def _valid_name(value: str) -> str | None:
    if is_safe_name(value):
        return None
    return "must be letters, digits, '.', '_' or '-' (no '/', no '..', at most 63)"


def _valid_user(value: str) -> str | None:
    return None if USER_RE.fullmatch(value) else "is not a valid user name"


def _valid_port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "is not a port (1-65535)"


def _valid_tags(value: list[Any]) -> str | None:
    for tag in value:
        if not isinstance(tag, str) or _valid_name(tag):
            return f"has a bad tag {tag!r} (letters, digits, '.', '_' or '-')"
    return None


def _valid_bucket(value: str) -> str | None:
    return None if BUCKET_RE.fullmatch(value) else "is not a B2 bucket name (6-50 letters, digits, '-')"


def _valid_prefix(value: str) -> str | None:
    return None if PREFIX_RE.fullmatch(value.strip("/")) and ".." not in value else "is not a safe prefix"


def _positive(value: float) -> str | None:
    if not value > 0:
        return "must be greater than 0"
    return None if value <= LARGEST_SETTING else f"must be at most {LARGEST_SETTING}"


def _one_of(*choices: str) -> Callable[[str], str | None]:
    return lambda value: None if value in choices else f"must be one of: {', '.join(choices)}"


# --- selection --------------------------------------------------------------------------------------


def select_hosts(inventory: Inventory, selectors: Iterable[str], what: str = "--on") -> tuple[Host, ...]:
    """Hosts matching any selector: a name, a glob (`web-*`) or a tag (`@db`); all hosts if none given.

    `what` names the selectors in the error (an option, or a command)."""
    given = list(selectors)
    selectors = [part for selector in given for part in selector.split(",") if part]
    if not selectors:
        if given:  # '' or ',' (an empty variable in a script) must not mean every host
            raise InventoryError(f"{what} {','.join(given)!r}: names no host")
        return inventory.hosts
    chosen: dict[str, Host] = {}
    for selector in selectors:
        matches = [host for host in inventory.hosts if _matches(host, selector)]
        if not matches:
            raise InventoryError(f"{what} {selector}: no host matches (hosts: "
                                 f"{', '.join(h.name for h in inventory.hosts)})")
        chosen.update((host.name, host) for host in matches)
    return tuple(host for host in inventory.hosts if host.name in chosen)


def _matches(host: Host, selector: str) -> bool:
    if selector.startswith("@"):
        return selector[1:] in host.tags
    return fnmatch.fnmatchcase(host.name, selector)
