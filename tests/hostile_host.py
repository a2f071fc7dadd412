"""A hostile host: a real OpenSSH sshd on its own loopback address, with its own host key pinned in a known_hosts,
whose every login runs tests/hostile_answer.py (ForceCommand), which answers topdeck's host protocol with hostile
data. `add_to(inventory)` makes it the inventory's host `evil-1`, beside the lab's honest hosts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from topdeck.lab.hosts import sshd_knows

ANSWER = Path(__file__).resolve().parent / "hostile_answer.py"
NAME = "evil-1"


class HostileHost:
    def __init__(self, folder: Path, address: str, client_public_key: str):
        self.folder, self.address = folder, address
        folder.mkdir(parents=True, exist_ok=True)
        self.key = folder / "ssh_host_ed25519_key"
        if not self.key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        (folder / "authorized_keys").write_text(client_public_key.strip() + "\n")
        (folder / "sshd_config").write_text(self._config())
        self.row = "text"
        self.process: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        answer = f"{shlex.quote(sys.executable)} {shlex.quote(str(ANSWER))} {shlex.quote(str(self.folder))}"
        return "\n".join([
            f"ListenAddress {self.address}:22", f"HostKey {self.key}", f"PidFile {self.folder / 'sshd.pid'}",
            "PermitRootLogin prohibit-password", "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", f"AuthorizedKeysFile {self.folder / 'authorized_keys'}",
            "StrictModes no", "UsePAM no", "PrintMotd no", "X11Forwarding no", "AllowTcpForwarding no",
            f"ForceCommand {answer}", "MaxStartups 100:30:200", "LogLevel VERBOSE",
            *(["PerSourcePenalties no"] if sshd_knows("PerSourcePenalties=no") else []), ""])

    def set_row(self, row: str) -> None:
        self.row = row
        (self.folder / "row").write_text(row + "\n")

    @property
    def known_hosts_line(self) -> str:
        key_type, key, *_ = (self.folder / "ssh_host_ed25519_key.pub").read_text().split()
        return f"{self.address} {key_type} {key}\n"

    def start(self) -> None:
        """sshd in a mount namespace of its own, where /run is a private tmpfs (for its /run/sshd)."""
        self.set_row(self.row)
        inner = (f"mount -t tmpfs tmpfs /run && mkdir -p /run/sshd && exec /usr/sbin/sshd -D "
                 f"-f {shlex.quote(str(self.folder / 'sshd_config'))} -E {shlex.quote(str(self.folder / 'sshd.log'))}")
        self.process = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", inner],
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the hostile sshd did not start: {(self.folder / 'sshd.log').read_text()}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        import socket

        try:
            with socket.create_connection((self.address, 22), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def commands(self) -> list[str]:
        log = self.folder / "commands.log"
        return log.read_text().splitlines() if log.exists() else []

    def add_to(self, inventory: Path, like: str = "host-2") -> Path:
        """Make it the inventory's host evil-1 (following the same pointer as `like`), with its key pinned."""
        config = inventory / "topdeck.toml"
        text = config.read_text()
        known = Path(re.search(r'known_hosts = "([^"]+)"', text).group(1))  # type: ignore[union-attr]
        pinned = inventory / "known_hosts"
        pinned.write_text(known.read_text() + self.known_hosts_line)
        config.write_text(text.replace(f'known_hosts = "{known}"', f'known_hosts = "{pinned}"'))
        host = inventory / NAME
        host.mkdir(exist_ok=True)
        honest = (inventory / like / "host.toml").read_text()
        address = re.search(r'address = "([^"]+)"', honest).group(1)  # type: ignore[union-attr]
        (host / "host.toml").write_text(honest.replace(address, self.address))
        for extra in (inventory / like).iterdir():
            if extra.name != "host.toml":
                (host / extra.name).write_text(extra.read_text())
        return inventory


def hostile_address(base: str) -> str:
    """An address beside the lab's: the base's last number + 50 (127.0.5.11 -> 127.0.5.61)."""
    head, _, last = base.rpartition(".")
    return f"{head}.{int(last) + 50}"
