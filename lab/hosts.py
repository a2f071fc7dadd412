"""One lab host: an OpenSSH sshd on its own loopback address, inside its own mount namespace.

Inside the namespace `/nix`, `/run`, `/root` and `/etc/nix` are the host's own folders (or, for a host with
a small disk, `/nix` is a size-limited tmpfs), so each host has its own store, Nix database, system profile,
`/run/current-system` and Nix cache. A long-lived anchor process (`sleep infinity`) holds the namespace, so
sshd can be stopped and started (an unreachable host) without losing the host's state.
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from topdeck.lab.errors import LabError

HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
HOST_NIX_CONF = "\n".join(
    ["experimental-features = nix-command", "sandbox = false", "build-users-group =", "substituters =", ""]
)
SYSTEM_PROFILE = "/nix/var/nix/profiles/system"
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")


def machine_wide_name(address: str) -> str:
    """A name for the lab host at `address` among what every network namespace of this machine shares (cgroups,
    systemd-nspawn's machine names): an address names a host only within the network namespace its lab runs in, and
    two labs (say, two pytest-xdist workers) may each have a host on 127.0.3.11 in namespaces of their own."""
    return f"{address}-n{os.stat('/proc/self/ns/net').st_ino}"


@dataclass(frozen=True)
class HostState:
    """What the lab remembers about a running host between commands (kept in the lab's state file)."""

    name: str
    address: str
    anchor_pid: int = 0
    namespace: str = ""
    sshd_pid: int = 0
    small_nix: int = 0
    slow_cpu_percent: int = 0
    image: str = ""  # empty for a native host; else the image it boots (topdeck.lab.images)
    boot_pid: int = 0  # an image host's launcher, which runs systemd-nspawn (again after each reboot)
    netns: str = ""  # the lab network namespace it lives in (topdeck.lab.netns); "" for this machine's network
    jump: bool = False  # a bastion: its sshd forwards connections (AllowTcpForwarding)
    listen: tuple[str, ...] = ()  # more addresses its sshd listens on


class LabHost:
    """A native host: this machine's Nix and OpenSSH, no init system; its namespace is a mount namespace."""

    NAMESPACE = "mnt"  # the kind of namespace that tells the host's processes from the others
    NSENTER: tuple[str, ...] = ("-m",)
    # OpenSSH 9.8 and later run each connection as sshd-session (and, from 10.0, authenticate in sshd-auth).
    SSHD_NAMES = ("sshd", "sshd-session", "sshd-auth")

    def __init__(self, lab_root: Path, state: HostState):
        self.state: HostState = state
        self.dir = lab_root / "hosts" / state.name

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def address(self) -> str:
        return self.state.address

    @property
    def host_key_path(self) -> Path:
        return self.dir / "ssh" / "ssh_host_ed25519_key"

    @property
    def sshd_log(self) -> Path:
        return self.dir / "ssh" / "sshd.log"

    # --- creation -------------------------------------------------------------------------------

    def create(self) -> None:
        for sub in ("nix", "run/sshd", "root", "etc-nix", "ssh"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "etc-nix" / "nix.conf").write_text(HOST_NIX_CONF)
        if not self.host_key_path.exists():
            generate_ssh_key(self.host_key_path, comment=f"lab host {self.name}")
        (self.dir / "ssh" / "sshd_config").write_text(self._sshd_config())

    def rotate_host_key(self) -> None:
        """Give the host a new host key (a changed key, as after a reinstall or an attack)."""
        for path in (self.host_key_path, self.host_key_path.with_suffix(".pub")):
            path.unlink(missing_ok=True)
        generate_ssh_key(self.host_key_path, comment=f"lab host {self.name}")

    def public_host_key(self) -> str:
        key_type, key_b64 = self.host_key_path.with_suffix(".pub").read_text().split()[:2]
        return f"{key_type} {key_b64}"

    def _sshd_config(self, key_dir: Path | None = None, pam: bool = False) -> str:
        """`key_dir`: where sshd finds the host's key (the host's own ssh folder unless given)."""
        return "\n".join(
            [
                *(f"ListenAddress {_with_port(address)}" for address in (self.address, *self.state.listen)),
                f"HostKey {(key_dir or self.dir / 'ssh') / 'ssh_host_ed25519_key'}",
                "PidFile /run/sshd.pid",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                # Keys come from the running system, so a toplevel without them locks new logins out.
                "AuthorizedKeysFile /run/current-system/etc/ssh/authorized_keys.d/%u",
                f"UsePAM {'yes' if pam else 'no'}",
                "PrintMotd no",
                "X11Forwarding no",
                f"AllowTcpForwarding {'yes' if self.state.jump else 'no'}",
                "MaxStartups 100:30:200",
                "MaxSessions 64",
                "LogLevel VERBOSE",
                *self._penalty_options(),
                "",
            ]
        )

    def _penalty_options(self) -> list[str]:
        """OpenSSH 9.8 and later refuse, for a while, a source address whose logins failed (PerSourcePenalties):
        every lab client comes from 127.0.0.1, and a test of magic rollback fails logins on purpose."""
        return ["PerSourcePenalties no"] if sshd_knows("PerSourcePenalties=no") else []

    # --- the namespace ----------------------------------------------------------------------------

    def start_namespace(self, small_nix: int = 0) -> None:
        ready = self.dir / "namespace.ready"
        ready.unlink(missing_ok=True)
        nix_mount = (
            f"mount -t tmpfs -o size={int(small_nix)},mode=0755 topdeck-lab-nix /nix"
            if small_nix
            else f"mount --bind {shlex.quote(str(self.dir / 'nix'))} /nix"
        )
        mounts = [
            nix_mount,
            f"mount --bind {shlex.quote(str(self.dir / 'run'))} /run",
            f"mount --bind {shlex.quote(str(self.dir / 'root'))} /root",
            f"mount --bind {shlex.quote(str(self.dir / 'etc-nix'))} /etc/nix",
        ]
        script = " && ".join([*mounts, f"touch {shlex.quote(str(ready))}", "exec sleep infinity"])
        pid = spawn_detached(
            [*self._in_netns(), "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script],
            self.dir / "namespace.log",
        )
        wait_for(lambda: ready.exists(), 10, f"host {self.name}: namespace did not come up", self._ns_log)
        self.state = replace(
            self.state, anchor_pid=pid, namespace=os.readlink(f"/proc/{pid}/ns/mnt"), small_nix=small_nix
        )

    def namespace_alive(self) -> bool:
        pid = self.state.anchor_pid
        return bool(pid) and self._namespace_of(pid) == self.state.namespace

    def _namespace_of(self, pid: int) -> str:
        return _namespace_of(pid, self.NAMESPACE)

    def nsenter(self) -> list[str]:
        """The command prefix that runs a command inside the host."""
        network = ("-n",) if self.state.netns else ()
        return ["nsenter", "-t", str(self.state.anchor_pid), *self.NSENTER, *network, "--"]

    def _in_netns(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.state.netns}", "--"] if self.state.netns else []

    def listening(self) -> bool:
        """Whether the host's sshd accepts connections on its address (in the host's own network)."""
        if not self.state.netns:
            return port_open(self.address, 22)
        from topdeck.lab import netns

        return netns.port_open(self.state.netns, self.address, 22)

    def run(self, argv: list[str], *, input: bytes | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        """Run a command on the host as root (inside its namespace, without SSH)."""
        if not self.namespace_alive():
            raise LabError(f"host {self.name}: its namespace is not running (is the lab up?)")
        proc = subprocess.run(
            [*self.nsenter(), *argv],
            input=input, capture_output=True, env=HOST_ENV, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"host {self.name}: {shlex.join(argv)} exited {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace').strip()[-500:]}"
            )
        return proc

    def sh(self, script: str, check: bool = True) -> str:
        return self.run(["/bin/sh", "-c", script], check=check).stdout.decode()

    # --- sshd -------------------------------------------------------------------------------------

    def start_sshd(self) -> None:
        if self.sshd_running():
            return
        config = self.dir / "ssh" / "sshd_config"
        pid = spawn_detached(
            [*self.nsenter(), "/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(self.sshd_log)],
            self.dir / "ssh" / "sshd.stdout",
            env=HOST_ENV,
        )
        self.state = replace(self.state, sshd_pid=pid)
        self._apply_slowness()
        wait_for(lambda: self.listening() or not _alive(pid), 10,
                 f"host {self.name}: sshd did not start", self._sshd_log_tail)
        if not _alive(pid):
            raise LabError(f"host {self.name}: sshd exited at start: {self._sshd_log_tail()}")

    def stop_sshd(self) -> None:
        """Stop the host's sshd and every SSH session on it: the host becomes unreachable."""
        for pid in self.namespace_pids():
            if pid != self.state.anchor_pid and _comm(pid) in self.SSHD_NAMES:
                _kill(pid, signal.SIGKILL)
        wait_for(lambda: not self.listening(), 5, f"host {self.name}: sshd did not stop")
        self.state = replace(self.state, sshd_pid=0)

    def sshd_running(self) -> bool:
        pid = self.state.sshd_pid
        return bool(pid) and self._namespace_of(pid) == self.state.namespace and _comm(pid) == "sshd"

    # --- slowness ---------------------------------------------------------------------------------

    def set_slow(self, cpu_percent: int) -> None:
        """Throttle everything the host runs to a share of one CPU (0 = full speed)."""
        self.state = replace(self.state, slow_cpu_percent=cpu_percent)
        self._apply_slowness()

    def _apply_slowness(self) -> None:
        group = self._cgroup()
        if not self.state.slow_cpu_percent and not group.exists():
            return
        if not CGROUP_CPU.is_dir():
            raise LabError("a slow host needs the cgroup v1 cpu controller at /sys/fs/cgroup/cpu")
        group.mkdir(exist_ok=True)
        quota = self.state.slow_cpu_percent * 1000 if self.state.slow_cpu_percent else -1
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text(str(quota))
        for pid in self.namespace_pids():
            try:
                (group / "cgroup.procs").write_text(str(pid))
            except OSError:
                pass  # the process ended meanwhile

    # --- installation -----------------------------------------------------------------------------

    def import_closure(self, path: str, nix_env: dict[str, str]) -> None:
        """Copy a store path and its closure from this machine's store into the host's store."""
        closure = subprocess.run(
            ["nix-store", "-qR", path], capture_output=True, text=True, env=nix_env, check=True
        ).stdout.split()
        export = subprocess.Popen(["nix-store", "--export", *closure], stdout=subprocess.PIPE, env=nix_env)
        assert export.stdout is not None
        try:
            imported = subprocess.run(
                [*self.nsenter(), "nix-store", "--import"],
                stdin=export.stdout, capture_output=True, env=HOST_ENV,
            )
        finally:
            export.stdout.close()
            export.wait()
        if imported.returncode != 0 or export.returncode != 0:
            raise LabError(f"host {self.name}: importing {path} failed: {imported.stderr.decode()[-500:]}")

    def install(self, toplevel: str, nix_env: dict[str, str]) -> None:
        """Make the host look freshly installed with `toplevel`: generation 1, active and booted."""
        self.import_closure(toplevel, nix_env)
        quoted = shlex.quote(toplevel)
        self.sh(
            f"nix-env -p {SYSTEM_PROFILE} --set {quoted} && "
            f"{quoted}/bin/switch-to-configuration switch >/dev/null && "
            f"ln -sfn {quoted} /run/booted-system"
        )

    # --- reading the host -------------------------------------------------------------------------

    def current_system(self) -> str:
        return self.sh("readlink /run/current-system || true").strip()

    def generation(self) -> int:
        link = self.sh(f"readlink {SYSTEM_PROFILE} || true").strip()
        parts = link.split("-")
        return int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else 0

    # --- reboots ---------------------------------------------------------------------------------

    def boot_id(self) -> str:
        return self.sh("cat /proc/sys/kernel/random/boot_id").strip()

    def reboot(self) -> None:
        raise LabError(f"host {self.name} is a native host: it has no init system, so it cannot reboot")

    def follow_reboot(self) -> bool:
        """Whether the host rebooted since its state was recorded (and its state now follows); never, natively."""
        return False

    # --- teardown ---------------------------------------------------------------------------------

    def namespace_pids(self) -> list[int]:
        # Never this machine's own namespace: a stale record would make a teardown kill every process here.
        if not self.state.namespace or self.state.namespace == self._namespace_of(os.getpid()):
            return []
        pids = [pid for pid in _all_pids() if self._namespace_of(pid) == self.state.namespace]
        if self.namespace_alive():
            return pids
        # Without its anchor, the record may name a namespace that is gone: its number is reused (by a Nix build's
        # sandbox, another lab), so a process counts only when its mounts come from this host's folder.
        return [pid for pid in pids if _mounts_from(pid, self.dir)]

    def teardown(self) -> None:
        """Kill every process in the host's namespace; the namespace and its mounts go with the last one."""
        for _ in range(50):
            pids = self.namespace_pids()
            if not pids:
                break
            for pid in pids:
                _kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        else:
            raise LabError(f"host {self.name}: processes survive in its namespace: {self.namespace_pids()}")
        group = self._cgroup()
        if group.exists():
            group.rmdir()
        self.state = replace(self.state, anchor_pid=0, sshd_pid=0, namespace="")

    def _cgroup(self) -> Path:
        return CGROUP_CPU / f"topdeck-lab-{machine_wide_name(self.address)}"

    def _ns_log(self) -> str:
        return _tail(self.dir / "namespace.log")

    def _sshd_log_tail(self) -> str:
        return _tail(self.sshd_log)


def _with_port(address: str) -> str:
    return address if ":" in address else f"{address}:22"


@functools.cache
def sshd_knows(option: str, sshd: str = "/usr/sbin/sshd") -> bool:
    """Whether this machine's sshd accepts `-o option` (its configuration test exits 0)."""
    result = subprocess.run([sshd, "-G", "-f", "/dev/null", "-o", option], capture_output=True)
    return result.returncode == 0


def generate_ssh_key(path: Path, comment: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True, capture_output=True,
    )


def spawn_detached(argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start a process that outlives us (not our child, so never a zombie of ours); return its pid."""
    launcher = 'exec "$@" </dev/null >>"$TOPDECK_SPAWN_LOG" 2>&1 &\necho $!'
    full_env = {**(env if env is not None else os.environ), "TOPDECK_SPAWN_LOG": str(log)}
    out = subprocess.run(
        ["/bin/sh", "-c", launcher, "sh", *argv], capture_output=True, text=True, env=full_env, check=True
    )
    return int(out.stdout.strip())


def port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(condition, timeout: float, message: str, detail=None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise LabError(f"{message}: {detail()}" if detail else message)
        time.sleep(0.05)


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _namespace_of(pid: int, kind: str = "mnt") -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return ""


def _mounts_from(pid: int, folder: Path) -> bool:
    """Whether any mount of process `pid` comes from `folder` (its mountinfo names it)."""
    try:
        return str(folder).encode() in Path(f"/proc/{pid}/mountinfo").read_bytes()
    except OSError:
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    return bool(_namespace_of(pid))


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, chars: int = 400) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].strip() or "(empty log)"
    except OSError:
        return "(no log)"


def listener(address: str, port: int, network_of: int = 0) -> int:
    """The pid of the process that listens on address:port over TCP (0 when none does, or none can be told), in
    this machine's network or in that of process `network_of`."""
    return listeners(port, network_of).get(address, 0)


def listeners(port: int, network_of: int = 0) -> dict[str, int]:
    """Every IPv4 address something listens on at `port`, with the listening process's pid (0 if unknown)."""
    sockets: dict[str, str] = {}
    table = Path(f"/proc/{network_of}/net/tcp") if network_of else Path("/proc/net/tcp")
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        address, _, hex_port = fields[1].partition(":")
        if int(hex_port, 16) == port and fields[3] == "0A":
            sockets[f"socket:[{fields[9]}]"] = socket.inet_ntoa(bytes.fromhex(address)[::-1])
    found = {address: 0 for address in sockets.values()}
    for pid in _all_pids() if sockets else []:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link in sockets:
                    found[sockets[link]] = found[sockets[link]] or pid
        except OSError:
            continue
    return found


def processes_of(lab_root: Path) -> list[int]:
    """Every process the lab in `lab_root` started and may have lost track of: spawned by it (spawn_detached marks
    their environment), naming its hosts' folder on the command line, or holding a mount from inside it."""
    hosts = str(lab_root / "hosts").encode()
    spawned = f"TOPDECK_SPAWN_LOG={lab_root}/".encode()
    own, own_namespace = os.getpid(), _namespace_of(os.getpid())
    found = []
    for pid in _all_pids():
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            # A mount from inside the lab counts only in a namespace of the lab's own: where this process's
            # namespace shows one too, every process that shares it would.
            mounted = (_namespace_of(pid) != own_namespace
                       and hosts in Path(f"/proc/{pid}/mountinfo").read_bytes())
            if pid != own and (hosts in Path(f"/proc/{pid}/cmdline").read_bytes()
                               or any(variable.startswith(spawned) for variable in environment) or mounted):
                found.append(pid)
        except OSError:
            continue
    return found


def describe_process(pid: int) -> str:
    """`pid 123 (sshd -D -f /var/lib/...)`, the command line shortened, for one-line errors."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        command = "gone"
    return f"pid {pid} ({command[:120] or _comm(pid)})"
