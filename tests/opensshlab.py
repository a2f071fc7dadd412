"""An SSH lab of its own: real OpenSSH servers on this machine's loopback, an operator home with ~/.ssh, a host CA,
ssh-agent, and `ssh -F` run against the same files, so each test compares topdeck with OpenSSH's own client.

No Nix and no topdeck lab: every server is `/usr/sbin/sshd -D` (this machine's, 9.2) or the sid image's sshd
(10.x) run chrooted in the image root in a mount namespace of its own (the image stays read-only). Addresses come
from TOPDECK_TEST_BASE_ADDRESS's /24 from .100 on; run the tests in a network namespace of their own.
OpenSSH's `ssh` finds `~` through the password database, not $HOME, so it runs in a mount namespace where /root is
the lab's home; topdeck gets HOME set to the same folder.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SID_IMAGES = Path("/var/cache/topdeck-lab/images/sid")
RELAY = '''import socket, sys, threading
log, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
open(log, "a").write(f"{host}:{port}\\n")
s = socket.create_connection((host, port))
def up():
    while data := sys.stdin.buffer.read1(65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := s.recv(65536):
    sys.stdout.buffer.write(data); sys.stdout.buffer.flush()
'''


def base_prefix() -> str:
    base = os.environ.get("TOPDECK_TEST_BASE_ADDRESS", "127.0.3.11")
    return base.rsplit(".", 1)[0]


def sid_root() -> Path | None:
    for root in sorted(SID_IMAGES.glob("*/root")):
        if (root / "usr/sbin/sshd").exists():
            return root
    return None


@dataclass

class Server:
    name: str
    address: str
    port: int
    process: subprocess.Popen[bytes]
    keys: dict[str, Path]  # key type (ed25519, rsa, ecdsa) -> the private host key
    log: Path


def wait_for_agent(sock: Path, seconds: float = 10.0) -> None:
    """Until the ssh-agent at `sock` answers (its socket file exists a moment before it listens)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = subprocess.run(["ssh-add", "-l"], env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
                                capture_output=True, stdin=subprocess.DEVNULL)
        if answer.returncode != 2:  # 2: could not reach the agent
            return
        time.sleep(0.05)
    raise AssertionError(f"ssh-agent at {sock} did not answer within {seconds:.0f} s")


@dataclass
class SSHLab:
    root: Path
    servers: list[Server] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    agent_env: dict[str, str] = field(default_factory=dict)
    next_host: int = 100

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def dot_ssh(self) -> Path:
        return self.home / ".ssh"

    def setup(self) -> None:
        self.dot_ssh.mkdir(parents=True, exist_ok=True)
        self.dot_ssh.chmod(0o700)
        self.operator = self.keygen(self.root / "operator" / "id_ed25519")
        (self.root / "relay.py").write_text(RELAY)
        self.ca = self.keygen(self.root / "ca" / "host_ca")
        self.user_ca = self.keygen(self.root / "ca" / "user_ca")
        self.authorized = self.root / "authorized_keys"
        self.authorized.write_text(self.pub(self.operator) + "\n")

    # --- keys -------------------------------------------------------------------------------------------------

    def keygen(self, path: Path, kind: str = "ed25519", passphrase: str = "") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", path.name, "-f", str(path)])
        return path

    @staticmethod
    def pub(path: Path) -> str:
        return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])

    def sign_host(self, server: Server, kind: str, principals: str, validity: str = "-5m:+1h",
                  ca: Path | None = None) -> Path:
        key = server.keys[kind]
        run(["ssh-keygen", "-q", "-s", str(ca or self.ca), "-h", "-I", server.name, "-n", principals, "-V", validity,
             str(key.with_name(key.name + ".pub"))])
        return key.with_name(key.name + "-cert.pub")

    def sign_user(self, key: Path, out: Path, principals: str = "root") -> Path:
        run(["ssh-keygen", "-q", "-s", str(self.user_ca), "-I", "operator", "-n", principals, "-V", "-5m:+1h",
             str(key.with_name(key.name + ".pub"))])
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(key.with_name(key.name + "-cert.pub")), out)
        return out

    # --- servers ----------------------------------------------------------------------------------------------

    def address(self) -> str:
        self.next_host += 1
        return f"{base_prefix()}.{self.next_host}"

    def sshd(self, name: str, *, options: str = "", kinds: tuple[str, ...] = ("ed25519",), certs: tuple[Path, ...] = (),
             sid: bool = False, hosts_file: str = "", port: int = 22) -> Server:
        """Start one sshd (root logins by the lab's authorized_keys and user CA) on a fresh address."""
        folder = self.root / "servers" / name
        folder.mkdir(parents=True)
        address = self.address()
        keys = {kind: self.keygen(folder / f"ssh_host_{kind}_key", kind) for kind in kinds}
        server = Server(name, address, port, None, keys, folder / "log")  # type: ignore[arg-type]
        self._write_config(server, folder, options, certs, sid)
        server.process = self._start(server, folder, sid, hosts_file)
        self.servers.append(server)
        wait_port(address, port)
        return server

    def restart(self, server: Server, *, options: str = "", certs: tuple[Path, ...] = (), sid: bool = False) -> None:
        stop(server.process)
        folder = self.root / "servers" / server.name
        self._write_config(server, folder, options, certs, sid)
        server.process = self._start(server, folder, sid, "")
        wait_port(server.address, server.port)

    def _write_config(self, server: Server, folder: Path, options: str, certs: tuple[Path, ...], sid: bool) -> None:
        inside = (lambda p: Path("/tmp/lab") / p.relative_to(self.root)) if sid else (lambda p: p)
        lines = [f"ListenAddress {server.address}:{server.port}",
                 *(f"HostKey {inside(key)}" for key in server.keys.values()),
                 *(f"HostCertificate {inside(cert)}" for cert in certs),
                 f"AuthorizedKeysFile {inside(self.authorized)}",
                 f"TrustedUserCAKeys {inside(self.user_ca.with_name(self.user_ca.name + '.pub'))}",
                 "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no", "PasswordAuthentication no",
                 "KbdInteractiveAuthentication no", "PidFile none", "LogLevel VERBOSE", "AllowTcpForwarding yes",
                 "Subsystem sftp internal-sftp", *options.splitlines()]
        (folder / "sshd_config").write_text("\n".join(line.strip() for line in lines if line.strip()) + "\n")

    def _start(self, server: Server, folder: Path, sid: bool, hosts_file: str) -> subprocess.Popen[bytes]:
        config = folder / "sshd_config"
        log = server.log.open("ab")
        if sid:
            image = sid_root()
            assert image is not None, "no sid image root"
            script = (f"mount -t tmpfs none {image}/tmp && mkdir {image}/tmp/lab && "
                      f"mount --bind {self.root} {image}/tmp/lab && mount --bind /dev {image}/dev && "
                      f"mount -t proc proc {image}/proc && "
                      f"exec chroot {image} /usr/sbin/sshd -D -e -f /tmp/lab/{config.relative_to(self.root)}")
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        elif hosts_file:
            script = f"mount --bind {hosts_file} /etc/hosts && exec /usr/sbin/sshd -D -e -f {config}"
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        else:
            argv = ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)]
        return subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)

    def silent_listener(self, close: bool = False) -> tuple[str, int]:
        """A TCP port that accepts and then says nothing (or closes at once): no SSH server behind it."""
        address = self.address()
        listener = socket.create_server((address, 22))
        held: list[socket.socket] = []

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                if close:  # an end-of-file, never a reset: close() with the client's banner unread would send RST
                    conn.shutdown(socket.SHUT_WR)
                held.append(conn)

        threading.Thread(target=serve, daemon=True).start()
        self._listeners = [*getattr(self, "_listeners", []), listener]
        return address, 22

    # --- agent and clients ------------------------------------------------------------------------------------

    def agent(self, *keys: Path) -> dict[str, str]:
        """An ssh-agent holding `keys`, in their order; its environment."""
        sock = self.root / "agent.sock"
        if not self.agent_env:
            process = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                                       start_new_session=True)
            self.others.append(process)
            wait_for_agent(sock)
            self.agent_env = {"SSH_AUTH_SOCK": str(sock)}
        run(["ssh-add", "-D"], env=self.agent_env, check=False)
        for key in keys:
            run(["ssh-add", "-q", str(key)], env=self.agent_env)
        return self.agent_env

    def ssh(self, config: Path, name: str, command: str = "echo $SSH_CONNECTION", *, env: dict[str, str] | None = None,
            timeout: float = 30) -> tuple[int, str, str, float]:
        """`ssh -F config name command` as the operator (~ is the lab's home): exit status, stdout, stderr, seconds."""
        ssh_argv = ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                    "-o", "UpdateHostKeys=no", name, command]  # ssh would add the host's other keys to known_hosts
        script = f"mount --bind {shlex.quote(str(self.home))} /root && exec {shlex.join(ssh_argv)}"
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", **(env or {})}
        if "SSH_AUTH_SOCK" not in (env or {}):
            environment.pop("SSH_AUTH_SOCK", None)
        start = time.monotonic()
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                              capture_output=True, env=environment, timeout=timeout, check=False)
        return (done.returncode, done.stdout.decode().strip(), done.stderr.decode().strip(),
                time.monotonic() - start)

    def close(self) -> None:
        for server in self.servers:
            stop(server.process)
        for process in self.others:
            stop(process)
        for listener in getattr(self, "_listeners", []):
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            listener.close()


def run(argv: list[str], env: dict[str, str] | None = None, check: bool = True) -> str:
    environment = {**os.environ, **(env or {})}
    done = subprocess.run(argv, capture_output=True, env=environment, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{argv}: {done.stderr.decode()}")
    return done.stdout.decode()


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_port(address: str, port: int, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=0.5) as conn:
                conn.settimeout(2)
                if conn.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"no sshd answered on {address}:{port}")
