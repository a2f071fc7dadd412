"""The local lab as a whole: its folder, keys, B2 emulator process and hosts, remembered in a state file.

`Lab(root).up(...)` starts everything from nothing (or whatever is missing), `down()` stops every process
it started and removes the hosts' stores; `status()` reads the live state. Needs root on Linux.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from topdeck.lab import factory, forward, images, netns, wan
from topdeck.lab.errors import LabError
from topdeck.lab.hosts import (
    HostState,
    LabHost,
    describe_process,
    generate_ssh_key,
    listener,
    processes_of,
    spawn_detached,
    wait_for,
)
from topdeck.lab.imagehost import ImageHost
from topdeck.lab.nixenv import lab_env

DEFAULT_ROOT = Path("/var/lib/topdeck-lab")
DEFAULT_BASE_ADDRESS = "127.0.0.11"
DEFAULT_EMULATOR_PORT = 17890
BUCKET = "topdeck-lab"
CACHE_KEY_NAME = "topdeck-lab-1"
REQUIRED_TOOLS = ("unshare", "nsenter", "mount", "ssh-keygen", "/usr/sbin/sshd", "nix-build", "nix-store", "curl",
                  "sudo", "useradd")
# A non-root login on every lab host that may run anything through sudo, as a fleet's deploy user would.
OPERATOR_USER = "topdeck-deployer"
SUDOERS_FILE = Path("/etc/sudoers.d/topdeck-lab")


def default_root() -> Path:
    return Path(os.environ.get("TOPDECK_LAB_DIR", DEFAULT_ROOT))


@dataclass(frozen=True)
class EmulatorState:
    pid: int = 0
    url: str = ""


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    sshd: bool
    current_system: str
    generation: int
    image: str = images.NATIVE


@dataclass(frozen=True)
class LabStatus:
    root: Path
    up: bool
    hosts: tuple[HostStatus, ...]
    emulator_url: str
    emulator_running: bool
    counters: dict[str, object]
    wan: str = "none (loopback)"  # the WAN lab's distances and caps (topdeck.lab.wan)
    download_url: str = ""  # where hosts fetch the bucket: through the cache relay when the cache leg has a distance


class Lab:
    def __init__(self, root: Path | None = None, base_address: str = DEFAULT_BASE_ADDRESS,
                 emulator_port: int = DEFAULT_EMULATOR_PORT):
        self.root = Path(root) if root else default_root()
        self.base_address = base_address
        self.emulator_port = emulator_port
        self.hosts: dict[str, LabHost] = {}
        self.emulator = EmulatorState()
        self.network: netns.Layout | None = None  # a bastion and the hosts behind it, if the lab has them
        self.forwarder_pid = 0  # lets the hosts behind the bastion reach the emulator
        self.wan = wan.Wan()
        self.relays: dict[str, tuple[int, int]] = {}  # "cache" and the hosts' names: (pid, port) of their relays
        self._load_state()

    # --- files the lab writes ---------------------------------------------------------------------

    @property
    def client_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def cache_secret_key(self) -> Path:
        return self.root / "cache-key.sec"

    @property
    def cache_public_key(self) -> Path:
        return self.root / "cache-key.pub"

    @property
    def b2_credentials(self) -> Path:
        return self.root / "b2-credentials.toml"

    @property
    def b2_gc_credentials(self) -> Path:
        """The lab bucket's gc key: like the deploy key, and it may delete files."""
        return self.root / "b2-gc-credentials.toml"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def b2_key(self) -> tuple[str, str]:
        """topdeck's key id and application key for the lab bucket (restricted to it), from the credentials file."""
        return _key_of(self.b2_credentials)

    # --- up ---------------------------------------------------------------------------------------

    def up(self, count: int = 3, hosts: dict[str, str] | None = None, small_nix: dict[str, int] | None = None,
           image: str = images.NATIVE, kinds: dict[str, str] | None = None,
           network: netns.Layout | None = None, listen: dict[str, tuple[str, ...]] | None = None,
           distance: wan.Wan | None = None, log=print) -> None:  # type: ignore[no-untyped-def]
        """Start the emulator and hosts, each installed with a first toplevel; whatever runs already is kept.

        `hosts` maps names to loopback addresses; without it, `count` hosts `host-1`... get addresses from
        the base address up. Each host is of kind `image` (topdeck.lab.images: native, trixie, sid) unless
        `kinds` names another for it. `network` makes one host a bastion in a network namespace of its own and
        others hosts that only it can reach (topdeck.lab.netns); their addresses come from it. `listen` gives hosts
        more `address[:port]`s for their sshd. `distance` sets the WAN lab's round trips and caps (`set_wan`).
        """
        check_prerequisites()
        wanted = hosts or {f"host-{i + 1}": "" for i in range(count)}
        self._set_network(network, wanted)
        kind_of = {name: images.check_kind((kinds or {}).get(name, image)) for name in wanted}
        unknown = sorted(set(kinds or {}) - set(wanted))
        if unknown:
            raise LabError(f"no lab host named {unknown[0]!r} to give an image (hosts: {', '.join(wanted)})")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._ensure_keys()
        ensure_operator_user()
        missing = {name: address for name, address in wanted.items() if not self._host_running(name, kind_of[name])}
        for name, address in missing.items():
            self._place_host(name, address, kind_of[name], (listen or {}).get(name, ()))
        for kind in sorted(set(kind_of.values()) - {images.NATIVE}):
            images.ensure_image(kind, log)
        self._ensure_emulator(log)
        self._ensure_network()
        if missing:
            log(f"building the first toplevel for {len(missing)} host(s)")
            toplevel = self.build_initial_toplevel()
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(lambda name: self._start_host(name, toplevel, (small_nix or {}).get(name, 0), log),
                              missing))
        for name in wanted:
            self._check_listener(self.hosts[name])
        if distance is not None and (distance != self.wan or not self._relays_alive()):
            self.set_wan(distance)
        self._write_known_hosts()
        self._save_state()

    # --- the WAN lab ------------------------------------------------------------------------------

    def set_wan(self, distance: wan.Wan) -> None:
        """Give the legs these round trips and caps (topdeck.lab.wan), replacing whatever they had."""
        if distance.ssh_ms and self.network is not None:
            raise LabError("an SSH round trip is not available with a bastion layout", setting="rtt")
        addresses = {name: wan.relay_address(host.address) for name, host in self.hosts.items()} \
            if distance.ssh_ms else {}
        self._stop_relays()
        wan.unshape()
        port = int(self.emulator.url.rpartition(":")[2])
        if distance.cache_ms:
            self.relays["cache"] = forward.start(("127.0.0.1", 0), ("127.0.0.1", port), self.root / "relay-cache.log",
                                                 rtt_ms=distance.cache_ms)
        for name, address in addresses.items():
            self.relays[name] = forward.start((address, 22), (self.hosts[name].address, 22),
                                              self.root / f"relay-{name}.log", rtt_ms=distance.ssh_ms)
        self.emulator_control("POST", "delay", {"api_ms": distance.api_ms})
        cache_port = self.relays["cache"][1] if "cache" in self.relays else port
        wan.shape(distance, (port,), tuple(addresses.values()) or tuple(h.address for h in self.hosts.values()),
                  cache_port)
        self.wan = distance
        self._write_known_hosts()
        self._save_state()

    @property
    def download_url(self) -> str:
        """The emulator's download URL as the hosts reach it: through the cache relay when the leg has a distance
        (an inventory's `[cache] url` is `<download_url>/file/<bucket>/<prefix>`)."""
        if "cache" in self.relays:
            return f"http://127.0.0.1:{self.relays['cache'][1]}"
        return self.emulator.url

    def ssh_address(self, name: str) -> str:
        """Where the operator logs in to host `name`: its SSH relay when the leg has a distance."""
        host = self.host(name)
        return wan.relay_address(host.address) if name in self.relays else host.address

    def _relays_alive(self) -> bool:
        return all(_pid_alive(pid) for pid, _ in self.relays.values())

    def _stop_relays(self) -> None:
        for pid, _ in self.relays.values():
            _kill(pid)
        for pid, _ in self.relays.values():
            wait_for(lambda pid=pid: not _pid_alive(pid), 10, f"relay {pid} did not stop")
        self.relays = {}

    def build_initial_toplevel(self) -> str:
        spec = factory.initial_system(authorized_keys=[self.client_public_key()])
        return factory.build(spec, self.root / "build")

    def client_public_key(self) -> str:
        return self.client_key.with_suffix(".pub").read_text().strip()

    def _place_host(self, name: str, address: str, kind: str, listen: tuple[str, ...] = ()) -> None:
        if name in self.hosts:
            return
        if self.network is not None and name in self.network.names():
            state = HostState(name=name, address=self.network.address_of(name), image="" if kind == images.NATIVE
                              else kind, netns=self.network.namespace_of(name), jump=name == self.network.bastion,
                              listen=(*listen, *((self.network.bastion_inner_address,)
                                                 if name == self.network.bastion else ())))
            self.hosts[name] = _make_host(self.root, state)
            return
        address = address or self._next_address()
        _check_loopback(address)
        taken = [h.name for h in self.hosts.values() if h.address == address]
        if taken:
            raise LabError(f"lab host {name}: address {address} is taken by {taken[0]}")
        holder = listener(address, 22)
        if holder:
            raise LabError(f"lab host {name}: {address}:22 is held by {describe_process(holder)}, which is no host "
                           f"of the lab in {self.root}: stop it, or `topdeck lab down` the lab that started it")
        image = "" if kind == images.NATIVE else kind
        self.hosts[name] = _make_host(self.root, HostState(name=name, address=address, image=image, listen=listen))

    def _start_host(self, name: str, toplevel: str, small_nix: int, log) -> None:  # type: ignore[no-untyped-def]
        host = self.hosts[name]
        host.create()
        host.start_namespace(small_nix=small_nix)
        host.install(toplevel, lab_env())
        host.start_sshd()
        log(f"host {name} up on {host.address} ({host.state.image or images.NATIVE})")

    def _host_running(self, name: str, kind: str) -> bool:
        host = self.hosts.get(name)
        if host is not None:
            host.follow_reboot()
        if host is None or not host.namespace_alive():
            return False
        running = host.state.image or images.NATIVE
        if running != kind:
            raise LabError(f"lab host {name} runs as {running}, not {kind}: `topdeck lab down` first to change it")
        host.start_sshd()
        return True

    def _set_network(self, network: netns.Layout | None, wanted: dict[str, str]) -> None:
        if network is None:
            return
        network = dataclasses.replace(network, tag=netns.tag_of(self.root))
        if self.network is not None and self.network != network:
            raise LabError("this lab has another bastion layout: `topdeck lab down` first to change it")
        unknown = [name for name in network.names() if name not in wanted]
        if unknown:
            raise LabError(f"the bastion layout names {unknown[0]!r}, which is no host of the lab")
        self.network = network

    def _ensure_network(self) -> None:
        """The namespaces, and the forwarder that lets the hosts behind the bastion reach the emulator."""
        if self.network is None:
            return
        netns.create(self.network)
        if self.forwarder_pid and _pid_alive(self.forwarder_pid):
            return
        port = int(self.emulator.url.rpartition(":")[2])
        self.forwarder_pid, _ = forward.start(("127.0.0.1", port), ("127.0.0.1", port), self.root / "forward.log",
                                              netns=netns.NETNS_DIR / self.network.inner_ns)
        self._save_state()

    def _check_listener(self, host: LabHost) -> None:
        """The process that answers on the host's address must be the host's own sshd, not a leftover."""
        holder = listener(host.address, 22, network_of=host.state.anchor_pid if host.state.netns else 0)
        if holder and host.namespace_alive() and host._namespace_of(holder) == host.state.namespace:
            return
        what = describe_process(holder) if holder else "nothing"
        raise LabError(f"lab host {host.name}: {host.address}:22 is held by {what}, not by the host's own sshd: "
                       f"stop it, or `topdeck lab down` the lab that started it")

    def _next_address(self) -> str:
        used = {host.address for host in self.hosts.values()}
        address = ipaddress.ip_address(self.base_address)
        while str(address) in used:
            address += 1
        return str(address)

    def _ensure_keys(self) -> None:
        if not self.client_key.exists():
            generate_ssh_key(self.client_key, comment="topdeck lab operator")
        if not self.cache_secret_key.exists():
            subprocess.run(
                ["nix-store", "--generate-binary-cache-key", CACHE_KEY_NAME,
                 str(self.cache_secret_key), str(self.cache_public_key)],
                check=True, capture_output=True, env=lab_env(),
            )
            os.chmod(self.cache_secret_key, 0o600)
        for credentials, prefix in ((self.b2_credentials, "lab"), (self.b2_gc_credentials, "labgc")):
            if not credentials.exists():
                key_id, key = f"{prefix}{secrets.token_hex(8)}", secrets.token_urlsafe(24)
                credentials.touch(mode=0o600)
                credentials.write_text(f'key_id = "{key_id}"\napplication_key = "{key}"\n')

    def _ensure_emulator(self, log) -> None:  # type: ignore[no-untyped-def]
        if self.emulator_running():
            return
        key_id, key = self.b2_key()
        gc_key_id, gc_key = _key_of(self.b2_gc_credentials)
        emulator_log = self.root / "b2emu.log"
        emulator_log.write_text("")
        pid = spawn_detached(
            [sys.executable, "-m", "topdeck.lab.b2emu", "--host", "127.0.0.1", "--port", str(self.emulator_port),
             "--key-id", f"admin{key_id}", "--key-env", "TOPDECK_LAB_B2_ADMIN_KEY",
             "--bucket", BUCKET, "--bucket-key", BUCKET, key_id, "TOPDECK_LAB_B2_KEY",
             "--deleting-bucket-key", BUCKET, gc_key_id, "TOPDECK_LAB_B2_GC_KEY"],
            emulator_log,
            env={**os.environ, "TOPDECK_LAB_B2_KEY": key, "TOPDECK_LAB_B2_GC_KEY": gc_key,
                 "TOPDECK_LAB_B2_ADMIN_KEY": secrets.token_urlsafe(24)},
        )
        wait_for(lambda: "listening on" in emulator_log.read_text() or not _pid_alive(pid), 20,
                 "the B2 emulator did not start", lambda: emulator_log.read_text()[-400:])
        if not _pid_alive(pid):
            raise LabError(f"the B2 emulator exited at start: {emulator_log.read_text()[-400:]}")
        url = emulator_log.read_text().split("listening on", 1)[1].split()[0]
        self.emulator = EmulatorState(pid=pid, url=url)
        self._save_state()
        log(f"B2 emulator on {url}")

    def emulator_running(self) -> bool:
        pid = self.emulator.pid
        if not pid or not _pid_alive(pid):
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        return b"topdeck.lab.b2emu" in cmdline

    def _write_known_hosts(self) -> None:
        lines = [f"{_known_name(address)} {host.public_host_key()}\n" for name, host in self.hosts.items()
                 for address in (host.address, *host.state.listen,
                                 *((wan.relay_address(host.address),) if name in self.relays else ()))]
        self.known_hosts.write_text("".join(lines))

    # --- controls for tests -----------------------------------------------------------------------

    def host(self, name: str) -> LabHost:
        """The host, its state following a reboot that happened since (it has booted again by then)."""
        if name not in self.hosts:
            raise LabError(f"no lab host named {name!r} (hosts: {', '.join(self.hosts) or 'none'})")
        host = self.hosts[name]
        if host.follow_reboot():
            self._save_state()
        return host

    def reboot_host(self, name: str) -> None:
        """Reboot an image host (`systemctl reboot` inside it) and wait until it has booted again."""
        self.host(name).reboot()
        self._save_state()

    def stop_host(self, name: str) -> None:
        self.host(name).stop_sshd()
        self._save_state()

    def start_host(self, name: str) -> None:
        self.host(name).start_sshd()
        self._save_state()

    def rotate_host_key(self, name: str) -> None:
        """Give a host a new host key and restart its sshd; known_hosts keeps the old key (a changed key)."""
        host = self.host(name)
        host.stop_sshd()
        host.rotate_host_key()
        host.start_sshd()
        self._save_state()

    def set_slow(self, name: str, cpu_percent: int) -> None:
        self.host(name).set_slow(cpu_percent)
        self._save_state()

    def emulator_control(self, method: str, path: str, body: dict | None = None) -> dict:  # type: ignore[type-arg]
        """Call the emulator's control API (counters, faults)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.emulator.url}/_emulator/{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            payload = response.read()
        return json.loads(payload) if payload else {}

    # --- down -------------------------------------------------------------------------------------

    def down(self, log=print) -> None:  # type: ignore[no-untyped-def]
        """Stop every host and the emulator, and whatever else of this lab still runs (say, hosts its state file
        forgot); then nothing may listen on the hosts' addresses."""
        addresses = [host.address for host in self.hosts.values() if not host.state.netns]
        failures: list[LabError] = []
        for host in self.hosts.values():
            try:
                host.teardown()
                log(f"host {host.name} stopped")
            except LabError as error:  # the others are stopped all the same
                failures.append(error)
        try:
            self._stop_relays()
            if self.wan.shaped:
                wan.unshape()
            if self.emulator_running():
                os.kill(self.emulator.pid, 15)
                wait_for(lambda: not _pid_alive(self.emulator.pid), 10, "the B2 emulator did not stop")
                log("B2 emulator stopped")
            self._stop_leftovers(log)
        finally:  # the namespaces go even when something above would not stop
            for name in netns.delete(netns.tag_of(self.root), self.network):
                log(f"removed {name}")
        for address in addresses:
            holder = listener(address, 22)
            if holder:
                failures.append(LabError(f"{address}:22 is still held by {describe_process(holder)}, which this lab "
                                         "did not start: stop it by hand"))
        self.hosts = {}
        self.emulator = EmulatorState()
        self.network, self.forwarder_pid = None, 0
        self.wan = wan.Wan()
        shutil.rmtree(self.root / "hosts", ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
        self.known_hosts.unlink(missing_ok=True)
        if failures:
            raise failures[0]

    def _stop_leftovers(self, log) -> None:  # type: ignore[no-untyped-def]
        leftovers = processes_of(self.root)
        for pid in leftovers:
            log(f"stopping a leftover of this lab: {describe_process(pid)}")
            _kill(pid)
        wait_for(lambda: not any(_pid_alive(pid) for pid in leftovers), 10,
                 "leftover lab processes survive a kill", lambda: ", ".join(map(str, processes_of(self.root))))

    # --- status -----------------------------------------------------------------------------------

    def status(self) -> LabStatus:
        hosts = tuple(self._host_status(self.host(name)) for name in self.hosts)
        running = self.emulator_running()
        counters = self.emulator_control("GET", "counters") if running else {}
        return LabStatus(
            root=self.root,
            up=running and bool(hosts) and all(h.sshd for h in hosts),
            hosts=hosts,
            emulator_url=self.emulator.url,
            emulator_running=running,
            counters=counters,
            wan=self.wan.describe(),
            download_url=self.download_url if running else "",
        )

    def _host_status(self, host: LabHost) -> HostStatus:
        alive = host.namespace_alive()
        return HostStatus(
            name=host.name,
            address=host.address,
            sshd=alive and host.sshd_running(),
            current_system=host.current_system() if alive else "",
            generation=host.generation() if alive else 0,
            image=host.state.image or images.NATIVE,
        )

    # --- state file -------------------------------------------------------------------------------

    def _load_state(self) -> None:
        if not self.state_file.exists():
            return
        data = json.loads(self.state_file.read_text())
        self.base_address = data.get("base_address", self.base_address)
        self.emulator_port = data.get("emulator_port", self.emulator_port)
        self.emulator = EmulatorState(**data.get("emulator", {}))
        self.hosts = {h["name"]: _make_host(self.root, _host_state(h)) for h in data.get("hosts", [])}
        if data.get("network"):
            network = data["network"]
            self.network = netns.Layout(network["bastion"], tuple(network["behind"]), network["block"],
                                        network["tag"])
        self.forwarder_pid = data.get("forwarder_pid", 0)
        self.wan = wan.Wan(**data.get("wan", {}))
        self.relays = {name: (pid, port) for name, (pid, port) in data.get("relays", {}).items()}

    def _save_state(self) -> None:
        data = {
            "base_address": self.base_address,
            "emulator_port": self.emulator_port,
            "emulator": asdict(self.emulator),
            "hosts": [asdict(host.state) for host in self.hosts.values()],
            "network": asdict(self.network) if self.network else None,
            "forwarder_pid": self.forwarder_pid,
            "wan": asdict(self.wan),
            "relays": self.relays,
        }
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=2))
        temporary.replace(self.state_file)


def _key_of(credentials: Path) -> tuple[str, str]:
    data = tomllib.loads(credentials.read_text())
    return data["key_id"], data["application_key"]


def _known_name(address: str) -> str:
    """known_hosts' name for `address` or `address:port`."""
    host, _, port = address.partition(":")
    return host if port in ("", "22") else f"[{host}]:{port}"


def _host_state(data: dict) -> HostState:  # type: ignore[type-arg]
    return HostState(**{**data, "listen": tuple(data.get("listen", ()))})


def _make_host(root: Path, state: HostState) -> LabHost:
    return ImageHost(root, state) if state.image else LabHost(root, state)


def check_prerequisites() -> None:
    if sys.platform != "linux":
        raise LabError("the lab runs on Linux only (mount namespaces); real use of topdeck does not need it")
    if os.geteuid() != 0:
        raise LabError("the lab needs root (mount namespaces, sshd on 127.0.0.x); real use of topdeck does not")
    missing = [tool for tool in REQUIRED_TOOLS if not shutil.which(tool)]
    if missing:
        raise LabError(f"the lab needs {', '.join(missing)}: run `make setup` (scripts/setup.sh) first")


def ensure_operator_user() -> None:
    """The lab hosts share this machine's /etc: add the deploy user there (no home, no password, key logins
    only through the lab's sshd) and let it run commands as root through sudo without a password."""
    try:
        pwd.getpwnam(OPERATOR_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/bin/sh",
                        OPERATOR_USER], check=True, capture_output=True)
        # "*" rather than useradd's locked "!": sshd without PAM refuses locked accounts even for key logins.
        subprocess.run(["usermod", "-p", "*", OPERATOR_USER], check=True, capture_output=True)
    rule = f"{OPERATOR_USER} ALL=(root) NOPASSWD: ALL\n"
    if not SUDOERS_FILE.exists() or SUDOERS_FILE.read_text() != rule:
        SUDOERS_FILE.write_text(rule)
        SUDOERS_FILE.chmod(0o440)


def _check_loopback(address: str) -> None:
    try:
        loopback = ipaddress.ip_address(address) in ipaddress.ip_network("127.0.0.0/8")
    except ValueError:
        loopback = False
    if not loopback or address == "127.0.0.1":
        raise LabError(f"lab host address {address!r} must be in 127.0.0.0/8 (and not 127.0.0.1)")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False

