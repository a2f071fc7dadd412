"""Where to connect for a host: its inventory entry read through OpenSSH's client configuration (`~/.ssh/config`).

`route(host, ssh)` gives a `Route`: the target `Endpoint` and the jump hosts before it, each endpoint with the
address, port, user and key files to use and the name its host key is pinned under. The file is parsed by
paramiko's own `SSHConfig`; topdeck applies what OpenSSH would:

- the inventory `address` is looked up as `ssh HOST` would look it up: a `Host` alias may give HostName, User,
  Port, IdentityFile (several), IdentitiesOnly, ProxyJump, HostKeyAlias, UserKnownHostsFile and
  GlobalKnownHostsFile;
- what host.toml sets explicitly (`user`, `port`) wins over the file, as a command-line option does; what neither
  sets takes topdeck's defaults (root, 22);
- `[ssh] identity` is offered first, then the host's IdentityFile entries, as `ssh -i` does;
- ProxyJump `a,b` goes through a, then b; each hop is itself looked up in the file (User, Port, HostName, keys),
  and the first hop's own ProxyJump applies to it, as OpenSSH's nested `ssh -W` does. A hop's user defaults to
  the local user, as OpenSSH's does;
- host keys are looked up under HostKeyAlias, or else the HostName, as `[name]:port` off port 22.

Nothing here touches the network; resolving a name is left to the connection.
"""

from __future__ import annotations

import dataclasses
import getpass
import re
from dataclasses import dataclass
from pathlib import Path

import paramiko

from topdeck.core.errors import SSHConfigError, TopdeckError
from topdeck.core.inventory import Host, SSHConfig, address_problem
from topdeck.core.sshconfigfile import read_config, refused
from topdeck.core.strict import parse_uint

DEFAULT_CONFIG = Path("~/.ssh/config")
DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
MAX_HOPS = 8
USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")  # what OpenSSH users on a jump host may be called
# ProxyJump hops: [user@]host[:port], host possibly an [IPv6] literal, or an ssh:// URI of the same.
_HOP_RE = re.compile(r"(?:ssh://)?(?:(?P<user>[^@/\s]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:@/\s\[\]]+))"
                     r"(?::(?P<port>[0-9]{1,5}))?/?")


@dataclass(frozen=True)
class Endpoint:
    """One SSH login: `name` is what the inventory or a ProxyJump called it, `hostname` where it really is."""

    name: str
    hostname: str
    port: int
    user: str
    identities: tuple[Path, ...] = ()
    identities_only: bool = False
    host_key_alias: str = ""
    user_known_hosts: tuple[Path, ...] = ()
    global_known_hosts: tuple[Path, ...] = ()
    aliased: bool = False  # a Host block gave it its HostName
    certificates: tuple[Path, ...] = ()  # CertificateFile entries
    connect_timeout: float | None = None  # ConnectTimeout; None: topdeck's [ssh] connect_timeout
    proxy_command: str = ""  # ProxyCommand, its % tokens expanded; reached through it instead of a TCP connection

    @property
    def key_name(self) -> str:
        """The name OpenSSH looks its host key up under (and writes into known_hosts)."""
        name = self.host_key_alias or self.hostname
        return name if self.port == 22 else f"[{name}]:{self.port}"


@dataclass(frozen=True)
class Route:
    """The target and the jump hosts before it, the first jump being the one the operator connects to."""

    host: str
    target: Endpoint
    jumps: tuple[Endpoint, ...] = ()
    config: Path | None = None

    @property
    def hops(self) -> tuple[Endpoint, ...]:
        return (*self.jumps, self.target)

    def describe(self) -> str:
        """`web-1 (root@10.0.0.5 via bastion)`: how error messages and status lines name the host."""
        target = self.target
        where = f"{target.user}@{target.hostname}{'' if target.port == 22 else f':{target.port}'}"
        via = f" via {','.join(jump.name for jump in self.jumps)}" if self.jumps else ""
        return f"{self.host} ({where}{via})"


def endpoint_label(host: Host, ssh: SSHConfig) -> str:
    """`user@hostname:port via jump,...` for listings: where topdeck connects for the host (what host.toml says,
    when the ssh_config cannot be read; connecting then says why)."""
    try:
        found = route(host, ssh)
    except TopdeckError:
        return f"{host.user}@{host.address}:{host.port}"
    target = found.target
    via = f" via {','.join(jump.name for jump in found.jumps)}" if found.jumps else ""
    return f"{target.user}@{target.hostname}:{target.port}{via}"


def config_path(ssh: SSHConfig) -> Path | None:
    """The ssh_config file to read: `[ssh] config`, else ~/.ssh/config when it exists, else none."""
    if ssh.config is not None:
        return ssh.config
    default = DEFAULT_CONFIG.expanduser()
    return default if default.is_file() else None


def route(host: Host, ssh: SSHConfig) -> Route:
    """How to reach `host`: its endpoint and jumps, from host.toml, topdeck.toml's [ssh] and the ssh_config."""
    path = config_path(ssh)
    config = read_config(path)
    user = host.user if "user" in host.explicit else None
    port = host.port if "port" in host.explicit else None
    target, proxy_jump = _endpoint(config, path, host.address, user, port, ssh, default_user=host.user)
    jumps = _jumps(config, path, proxy_jump, ssh, depth=0)
    return Route(host=host.name, target=target, jumps=jumps, config=path)


def _jumps(config: paramiko.SSHConfig, path: Path | None, proxy_jump: str, ssh: SSHConfig,
           depth: int) -> tuple[Endpoint, ...]:
    if not proxy_jump or proxy_jump.lower() == "none":
        return ()
    if depth >= MAX_HOPS:
        raise SSHConfigError(f"{path}: ProxyJump goes through more than {MAX_HOPS} hosts (a loop?)")
    hops = [_parse_hop(text.strip(), path) for text in proxy_jump.split(",")]
    result: list[Endpoint] = []
    for index, (name, user, port) in enumerate(hops):
        endpoint, own_jump = _endpoint(config, path, name, user, port, ssh, default_user=getpass.getuser())
        if index == 0:  # the first hop is reached its own way; the later ones through the hops before them
            result.extend(_jumps(config, path, own_jump, ssh, depth + 1))
        else:  # as `ssh -J a,b` does: b is reached through a, whatever b's own ProxyCommand says
            endpoint = dataclasses.replace(endpoint, proxy_command="")
        result.append(endpoint)
    if len(result) > MAX_HOPS:
        raise SSHConfigError(f"{path}: ProxyJump goes through more than {MAX_HOPS} hosts")
    return tuple(result)


def _parse_hop(text: str, path: Path | None) -> tuple[str, str | None, int | None]:
    match = _HOP_RE.fullmatch(text)
    if not match:
        raise SSHConfigError(f"{path}: ProxyJump hop {text!r} is not [user@]host[:port]")
    port = parse_port(match["port"]) if match["port"] else None
    if match["user"] and not USER_RE.fullmatch(match["user"]):
        raise SSHConfigError(f"{path}: ProxyJump hop {text!r}: {match['user']!r} is not a valid user name")
    if match["port"] and port is None:
        raise SSHConfigError(f"{path}: ProxyJump hop {text!r}: {match['port']} is not a port (1-65535)")
    return match["v6"] or match["host"], match["user"], port


def _endpoint(config: paramiko.SSHConfig, path: Path | None, name: str, user: str | None, port: int | None,
              ssh: SSHConfig, *, default_user: str) -> tuple[Endpoint, str]:
    """The endpoint `name` means (explicit user and port winning over the file's), and its ProxyJump (none when a
    ProxyCommand came first, as OpenSSH lets whichever of the two is obtained first win)."""
    where = f"{path}: Host {name}"
    try:
        found = config.lookup(name)
    except SSHConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - paramiko's canonicalization, a bad CanonicalizeMaxDots...: one line
        raise SSHConfigError(f"{where}: {' '.join(str(error).split()) or type(error).__name__}") from None
    if refused(found):
        raise SSHConfigError(f"{where}: {refused(found)}")
    hostname = found.get("hostname", name)
    problem = address_problem(hostname)
    if problem:
        raise SSHConfigError(f"{where}: HostName {hostname!r} {problem}")
    identities = [*(() if ssh.identity is None else (ssh.identity,)),
                  *(Path(item).expanduser() for item in found.get("identityfile", []))]
    endpoint = Endpoint(
        name=name,
        hostname=hostname,
        port=port if port is not None else _port(found, where),
        user=user or _user(found, where) or default_user,
        identities=tuple(dict.fromkeys(identities)),
        identities_only=_yes(found, "identitiesonly"),
        host_key_alias=found.get("hostkeyalias", ""),
        user_known_hosts=_files(found, "userknownhostsfile", ssh.known_hosts, DEFAULT_USER_KNOWN_HOSTS),
        global_known_hosts=_files(found, "globalknownhostsfile", None, DEFAULT_GLOBAL_KNOWN_HOSTS),
        aliased=hostname != name,
        certificates=tuple(dict.fromkeys(Path(item).expanduser() for item in found.get("certificatefile", []))),
        connect_timeout=_timeout(found, where),
    )
    keys = list(found)
    command_first = "proxycommand" in found and ("proxyjump" not in found
                                                 or keys.index("proxycommand") < keys.index("proxyjump"))
    if not command_first:
        return endpoint, found.get("proxyjump", "")
    command = found["proxycommand"]
    if command is None or command.strip().lower() == "none":
        return endpoint, ""
    return dataclasses.replace(endpoint, proxy_command=expand_proxy_command(command, endpoint, where)), ""


_TOKEN_RE = re.compile(r"%(.?)")


def expand_proxy_command(command: str, endpoint: Endpoint, where: str) -> str:
    """ProxyCommand's tokens as OpenSSH expands them: %h HostName, %p port, %r remote user, %n the name as given,
    %% a percent sign; any other token is refused in one line."""
    values = {"h": endpoint.hostname, "p": str(endpoint.port), "r": endpoint.user, "n": endpoint.name, "%": "%"}

    def one(match: re.Match[str]) -> str:
        token = match.group(1)
        if token not in values:
            raise SSHConfigError(f"{where}: ProxyCommand {command!r}: %{token} is not a token topdeck expands "
                                 "(it knows %h %p %r %n %%)")
        return values[token]

    return _TOKEN_RE.sub(one, command)


def _timeout(found: paramiko.SSHConfigDict, where: str) -> float | None:
    if "connecttimeout" not in found:
        return None
    text = str(found["connecttimeout"])
    seconds = parse_uint(text, limit=3600)
    if not seconds:
        raise SSHConfigError(f"{where}: ConnectTimeout {text!r} is not a number of seconds (1-3600)")
    return float(seconds)


def _port(found: paramiko.SSHConfigDict, where: str) -> int:
    text = found.get("port", "22")
    port = parse_port(text)
    if port is None:
        raise SSHConfigError(f"{where}: Port {text!r} is not a port (1-65535)")
    return port


def parse_port(text: str) -> int | None:
    """A TCP port 1-65535 in ASCII digits, else None."""
    return parse_uint(text, limit=65535) or None


def _user(found: paramiko.SSHConfigDict, where: str) -> str:
    user = found.get("user", "")
    if user and not USER_RE.fullmatch(user):
        raise SSHConfigError(f"{where}: User {user!r} is not a valid user name")
    return str(user)


def _yes(found: paramiko.SSHConfigDict, key: str) -> bool:
    return str(found.get(key, "no")).lower() == "yes"


def _files(found: paramiko.SSHConfigDict, key: str, explicit: Path | None,
           default: tuple[str, ...]) -> tuple[Path, ...]:
    """Known-hosts files: the one topdeck.toml names (it wins, like `-o`), else ssh_config's, else OpenSSH's."""
    if explicit is not None:
        return (explicit,)
    names = str(found[key]).split() if key in found else list(default)
    if names == ["none"]:
        return ()
    return tuple(Path(name).expanduser() for name in names)
