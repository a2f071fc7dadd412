"""An image host: a Debian root booted by systemd-nspawn with systemd as PID 1, as a NixOS host boots.

The root (topdeck.lab.images) is shared by every host of its kind and never written: each host boots it with
`--volatile=overlay` (a tmpfs over it, gone when the host stops). Bound in from the host's own folder: `/nix` (or a
size-limited tmpfs for a small disk), `/etc/nix`, the host key and the sshd configuration. The container shares
this machine's network, so its sshd (Debian's `ssh.service`, a systemd unit) listens on the host's own loopback
address. `/run` is the container's own tmpfs, which systemd needs; like a real host's it is empty after a boot.

Each host runs in a cgroup of its own (`topdeck-lab-<address>-n<network namespace>` in the name=systemd and unified
hierarchies), which systemd inside the container manages as its root and which tears the host down in one write to
`cgroup.kill`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from topdeck.lab.errors import LabError
from topdeck.lab.hosts import (
    HOST_ENV,
    HostState,
    LabHost,
    _alive,
    _all_pids,
    _kill,
    _tail,
    machine_wide_name,
    spawn_detached,
    wait_for,
)
from topdeck.lab.images import ensure_image

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTAINER_SSH = Path("/etc/topdeck-lab/ssh")
# systemd-nspawn 257 and later mount a folder here per machine, refuse to start when it exists, and leave it
# (mounted) behind when killed.
UNIX_EXPORT = Path("/run/systemd/nspawn/unix-export")
BOOT_TIMEOUT = 90
# Enter the container's mount, UTS, IPC and PID namespaces (the network is this machine's).
NSENTER_FLAGS = ("-m", "-u", "-i", "-p")
# systemd-nspawn --boot exits with this status when the container asks for a reboot (`systemctl reboot` inside).
REBOOT_STATUS = 133
# Joins the host's cgroups, then runs systemd-nspawn, again after each reboot, as a machine boots again: "$1" "$2" are
# the cgroup folders, "$3" the unix-export folder that nspawn 257 leaves behind, the rest the command.
LAUNCH = ('for group in "$1" "$2"; do mkdir -p "$group" && echo $$ > "$group/cgroup.procs" || exit 1; done\n'
          'export_folder=$3\nshift 3\n'
          'while :; do\n'
          '    "$@"\n'
          '    status=$?\n'
          f'    if [ "$status" != {REBOOT_STATUS} ]; then\n'
          '        echo "topdeck-lab: systemd-nspawn exited $status"\n'
          '        exit "$status"\n'
          '    fi\n'
          '    echo "topdeck-lab: the host rebooted; booting it again"\n'
          '    if mountpoint -q "$export_folder"; then umount --lazy "$export_folder"; fi\n'
          '    rmdir "$export_folder" 2>/dev/null\n'
          'done')


class ImageHost(LabHost):
    NAMESPACE = "pid"  # services with private mounts leave the mount namespace; the PID namespace holds all
    NSENTER = NSENTER_FLAGS
    state: HostState

    def _penalty_options(self) -> list[str]:
        return ["PerSourcePenalties no"]  # the images have OpenSSH 10

    @property
    def image(self) -> str:
        return self.state.image

    def create(self) -> None:
        super().create()
        (self.dir / "ssh" / "sshd_config").write_text(self._sshd_config(key_dir=CONTAINER_SSH, pam=True))
        # Debian's ssh.service runs `sshd -D $SSHD_OPTS`: log where the lab reads sshd's log on every host.
        (self.dir / "ssh" / "default").write_text(f'SSHD_OPTS="-E {CONTAINER_SSH / "sshd.log"}"\n')

    # --- boot and shutdown ------------------------------------------------------------------------

    @property
    def machine(self) -> str:
        """The container's machine name: unique on this machine, as two labs may both have a host-1."""
        return "lab-" + machine_wide_name(self.address).replace(".", "-")

    def start_namespace(self, small_nix: int = 0) -> None:
        image = ensure_image(self.image)
        _remove_folder(UNIX_EXPORT / self.machine)
        command = ["systemd-nspawn", *self._nspawn_options(Path(image.root), small_nix), "--boot"]
        groups = [str(self._group(hierarchy)) for hierarchy in ("systemd", "unified")]
        log = self.dir / "boot.log"
        log.write_text("")
        boot_pid = spawn_detached(["/bin/sh", "-c", LAUNCH, "sh", *groups, str(UNIX_EXPORT / self.machine),
                                   *command], log, env={**HOST_ENV, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"})
        self.state = replace(self.state, boot_pid=boot_pid, small_nix=small_nix)
        self._await_boot("the container did not start")

    def _await_boot(self, what: str) -> None:
        """Wait for the container's systemd (PID 1 inside) to come up and finish booting; record it and its sshd."""
        launcher, log = self.state.boot_pid, self.dir / "boot.log"
        wait_for(lambda: bool(_container_init(launcher)) or not _alive(launcher), 30, f"host {self.name}: {what}",
                 lambda: _tail(log))
        leader = _container_init(launcher)
        if not leader:
            raise LabError(f"host {self.name}: systemd-nspawn exited: {_tail(log)}")
        self.state = replace(self.state, anchor_pid=leader, namespace=self._namespace_of(leader), sshd_pid=0)
        wait_for(self._booted, BOOT_TIMEOUT, f"host {self.name}: systemd did not finish booting", lambda: _tail(log))
        self._find_sshd()

    def _launcher_alive(self) -> bool:
        """The launcher recorded for this host still runs. Checked by its command line, which names the host's
        cgroup: once it has ended, its pid may belong to any process of this machine, never to be killed."""
        pid = self.state.boot_pid
        try:
            return bool(pid) and str(self._group("unified")).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    def namespace_alive(self) -> bool:
        # A PID 1 that ended but is not reaped yet still names its PID namespace: it must be alive too.
        return super().namespace_alive() and _alive(self.state.anchor_pid)

    # --- reboots --------------------------------------------------------------------------------------

    def boot_id(self) -> str:
        return self.sh("cat /proc/sys/kernel/random/boot_id").strip()

    def reboot(self) -> None:
        """Reboot the host as a machine reboots (`systemctl reboot` inside), and wait until it has booted again."""
        leader = self.state.anchor_pid
        self.run(["systemctl", "reboot"], check=False)  # may lose its connection to systemd as the host goes down
        wait_for(lambda: not _alive(leader), BOOT_TIMEOUT, f"host {self.name}: did not go down for its reboot")
        if not self.follow_reboot():
            raise LabError(f"host {self.name}: did not boot again: {_tail(self.dir / 'boot.log')}")

    def follow_reboot(self) -> bool:
        """After the container rebooted (its launcher boots it again), wait until it has booted and record its new
        PID 1, namespace and sshd; whether it had rebooted. A host whose launcher is gone stopped: nothing to do."""
        if self.namespace_alive() or not self._launcher_alive():
            return False
        self._await_boot("did not boot again after its reboot")
        self._apply_slowness()
        return True

    def _nspawn_options(self, root: Path, small_nix: int) -> list[str]:
        for path in (root, self.dir):
            if ":" in str(path) or "," in str(path):
                raise LabError(f"host {self.name}: {path} may not contain ':' or ',' (systemd-nspawn's separators)")
        ssh = self.dir / "ssh"
        nix = f"--tmpfs=/nix:size={int(small_nix)},mode=0755" if small_nix else f"--bind={self.dir / 'nix'}:/nix"
        return [
            "--quiet", "--register=no", "--keep-unit", f"--directory={root}", "--volatile=overlay",
            f"--machine={self.machine}", f"--hostname={self.name}", "--console=passive", "--link-journal=no",
            "--resolv-conf=off", "--timezone=off", nix,
            f"--bind-ro={self.dir / 'etc-nix'}:/etc/nix",
            f"--bind={ssh}:{CONTAINER_SSH}",
            f"--bind-ro={ssh / 'sshd_config'}:/etc/ssh/sshd_config",
            f"--bind-ro={ssh / 'default'}:/etc/default/ssh",
            *([f"--network-namespace-path=/run/netns/{self.state.netns}"] if self.state.netns else []),
        ]

    def _booted(self) -> bool:
        if not self.namespace_alive():
            raise LabError(f"host {self.name}: the container stopped while booting: {_tail(self.dir / 'boot.log')}")
        state = self.run(["systemctl", "is-system-running"], check=False).stdout.decode().strip()
        return state in ("running", "degraded")

    def teardown(self) -> None:
        """Kill everything in the host's cgroups at once (the launcher, systemd-nspawn, the container's systemd and all
        it runs)."""
        launcher = self._launcher_alive()
        leader = _container_init(self.state.boot_pid) if launcher else 0
        if leader:  # booted again since the state was written: its processes are in the new PID namespace
            self.state = replace(self.state, anchor_pid=leader, namespace=self._namespace_of(leader))
        for hierarchy in ("unified", "systemd"):
            group = self._group(hierarchy)
            kill_switch = group / "cgroup.kill"
            if kill_switch.exists():
                kill_switch.write_text("1")
        for pid in [self.state.boot_pid if launcher else 0, *self.namespace_pids()]:
            if pid and _alive(pid):
                _kill(pid, signal.SIGKILL)
        wait_for(lambda: not self.namespace_pids() and not self._launcher_alive(),
                 10, f"host {self.name}: processes survive in its container: {self.namespace_pids()}")
        for hierarchy in ("unified", "systemd"):
            _remove_cgroup(self._group(hierarchy))
        _remove_folder(UNIX_EXPORT / self.machine)
        super().teardown()
        self.state = replace(self.state, boot_pid=0)

    def _group(self, hierarchy: str) -> Path:
        return CGROUP_ROOT / hierarchy / f"topdeck-lab-{machine_wide_name(self.address)}"

    # --- sshd, a systemd unit -----------------------------------------------------------------------

    def start_sshd(self) -> None:
        if self.sshd_running():
            return
        result = self.run(["systemctl", "start", "ssh.service"], check=False)
        if result.returncode != 0:
            raise LabError(f"host {self.name}: systemctl start ssh.service failed: {self._sshd_log_tail()}")
        wait_for(self.listening, 10, f"host {self.name}: sshd did not start",
                 self._sshd_log_tail)
        self._find_sshd()
        self._apply_slowness()

    def stop_sshd(self) -> None:
        """Stop ssh.service and every SSH session (its KillMode=process leaves them): the host is unreachable."""
        self.run(["systemctl", "stop", "ssh.service"], check=False)
        super().stop_sshd()

    def _find_sshd(self) -> None:
        """Record the listening sshd's pid as this machine sees it (the main process of ssh.service)."""
        wait_for(self.listening, 10, f"host {self.name}: sshd does not listen",
                 self._sshd_log_tail)
        main = self.run(["systemctl", "show", "--property=MainPID", "--value", "ssh.service"]).stdout.decode()
        inner = int(main.strip() or 0)
        outer = next((pid for pid in self.namespace_pids() if _inner_pid(pid) == inner), 0)
        self.state = replace(self.state, sshd_pid=outer)


def _container_init(launcher: int) -> int:
    """The container's PID 1 as this machine numbers it: a descendant of the launcher (its systemd-nspawn's child or
    grandchild) that is PID 1 inside."""
    parents = {pid: _parent(pid) for pid in _all_pids()}
    found, level = set(), {launcher}
    for _ in range(3):
        level = {pid for pid, parent in parents.items() if parent in level}
        found |= level
    return next((pid for pid in sorted(found) if _inner_pid(pid) == 1 and _alive(pid)), 0)  # not a dead one's zombie


def _status_field(pid: int, field: str) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _parent(pid: int) -> int:
    return int(_status_field(pid, "PPid") or 0)


def _inner_pid(pid: int) -> int:
    """The pid in the innermost PID namespace the process is in."""
    numbers = _status_field(pid, "NSpid").split()
    return int(numbers[-1]) if len(numbers) > 1 else 0


def _remove_folder(folder: Path) -> None:
    """Remove an empty folder that systemd-nspawn left behind, unmounting it first where it is a mount point."""
    if os.path.ismount(folder):
        subprocess.run(["umount", "--lazy", str(folder)], capture_output=True)
    try:
        folder.rmdir()
    except FileNotFoundError:
        pass
    except OSError as error:
        raise LabError(f"{folder}: cannot remove it ({error.strerror}); is a container of that name running?") from None


def _remove_cgroup(group: Path) -> None:
    """Remove a cgroup folder and the ones systemd made inside it, deepest first, once they are empty."""
    if not group.is_dir():
        return
    for child in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        _rmdir_when_empty(child)
    _rmdir_when_empty(group)


def _rmdir_when_empty(group: Path) -> None:
    deadline = time.monotonic() + 5
    while True:
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise LabError(f"cgroup {group} stays busy after the host stopped") from None
            time.sleep(0.05)
