"""`topdeck demo` in a real terminal (tmux): it sets up a lab, opens the TUI, and the screen reads right.

The demo runs on a copy of the demo fleet moved to this test's own addresses, lab folder and emulator port,
so a running demo lab is left alone."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from topdeck.lab.nixenv import LAB_NIX_CONFIG

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
ADDRESSES = {"127.0.0.11": "127.0.22.11", "127.0.0.12": "127.0.22.12", "127.0.0.13": "127.0.22.13"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_inventory(tmp_path: Path) -> tuple[Path, Path]:
    """The repository's demo fleet, on this test's addresses, lab folder and emulator port."""
    lab_dir = tmp_path / "lab-state"
    hosts = tmp_path / "hosts"
    shutil.copytree(REPO / "hosts", hosts)
    (tmp_path / "lab").symlink_to(REPO / "lab")  # hosts/fleet.nix imports ../lab/nix/toplevel.nix
    config = hosts / "topdeck.toml"
    config.write_text(config.read_text().replace("/var/lib/topdeck-lab", str(lab_dir))
                      .replace("http://127.0.0.1:17890", f"http://127.0.0.1:{free_port()}"))
    for host_file in hosts.glob("*/host.toml"):
        text = host_file.read_text()
        for old, new in ADDRESSES.items():
            text = text.replace(f'"{old}"', f'"{new}"')
        host_file.write_text(text)
    return hosts, lab_dir


class Tmux:
    """A tmux server of this test's own (its socket in the test's folder): the default one is shared by everyone on
    this machine, and runs what it is given in the namespaces and with the settings of whoever started it first."""

    def __init__(self, name: str, socket: Path):
        self.name = name
        self.tmux = ["tmux", "-S", str(socket)]

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def screen(self) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p", "-t", self.name], capture_output=True, text=True,
                              check=True).stdout

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if re.search(pattern, text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on the screen after {timeout} s:\n{text}")
            time.sleep(0.3)


def test_demo_opens_the_tui_in_a_real_terminal(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    hosts, lab_dir = demo_inventory(tmp_path)
    # the terminal's own size, not one that COLUMNS and LINES impose (pytest-xdist's workers set them to 80x24)
    inherited = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    env = {**inherited, "TOPDECK_LAB_DIR": str(lab_dir), "NIX_CONFIG": LAB_NIX_CONFIG, "TERM": "xterm-256color"}
    session = Tmux(f"topdeck-test-{uuid.uuid4().hex[:8]}", tmp_path / "tmux")
    command = (f"{REPO}/.venv/bin/topdeck --inventory {hosts} demo; echo TOPDECK-EXITED-$?; sleep 600")
    subprocess.run([*session.tmux, "new-session", "-d", "-s", session.name, "-x", "120", "-y", "30", command],
                   check=True, env=env, cwd=tmp_path)
    try:
        # The fleet screen, refreshed from the hosts: the demo published both pointers; the hosts still run the
        # lab's first system.
        text = session.wait_for(r"refreshed \d\d:\d\d:\d\d", timeout=600)
        for name in ("web-1", "web-2", "db-1"):
            assert name in text
        assert "drifted" in text or "behind" in text
        assert "Plan" in text and "Quit" in text  # the footer
        assert "Traceback" not in text

        # Select web-1 and web-2, open the plan: sizes and the diff on screen.
        session.keys("Down", "Space", "Space", "p")
        text = session.wait_for(r"fetch: \d+ paths", timeout=120)
        assert "Plan for 2 host(s): web-1, web-2" in text
        assert re.search(r"web-1\s+will change\s+\d+\s+[\d.]+ (KiB|MiB)", text), text
        assert "B2: about" in text or "B2 B" in text

        # Back, help, and quit with q.
        session.keys("Escape")
        session.wait_for(r"\d+ hosts · 2 selected", timeout=30)
        session.keys("?")
        session.wait_for(r"Keys: ", timeout=30)
        session.keys("Escape")
        time.sleep(0.5)
        session.keys("q")
        text = session.wait_for(r"TOPDECK-EXITED-\d+", timeout=30)
        assert "TOPDECK-EXITED-0" in text
    finally:
        subprocess.run([*session.tmux, "kill-server"], capture_output=True)
        subprocess.run([f"{REPO}/.venv/bin/topdeck", "lab", "--root", str(lab_dir), "down"], capture_output=True,
                       env=env, timeout=120)
