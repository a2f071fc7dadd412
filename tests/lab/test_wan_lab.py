"""The WAN lab (topdeck.lab.wan) for real: `topdeck lab up --rtt ... --uplink ...` puts a round trip on each leg and a
cap on the operator's uplink, `lab status` shows them, and each is measured where it acts: a download through the
cache relay, an SSH login through a host's relay (its key pinned there too), the emulator's API answers, bytes sent
over SSH against the cap; `lab up` with other values replaces them, and `lab down` removes the relays and the caps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from topdeck.lab.lab import Lab
from topdeck.lab.nixenv import lab_env
from topdeck.lab.wan import relay_address, shaping

ADDRESS = "127.0.57.11"  # labs of their own: the session lab holds TOPDECK_TEST_BASE_ADDRESS


def topdeck_lab(root, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "topdeck.cli", "lab", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=600, env=lab_env())


@pytest.fixture(scope="module")
def wan_lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan-lab")
    up = topdeck_lab(root, "up", "--hosts", "2", "--base-address", ADDRESS, "--emulator-port", "0",
                     "--rtt", "cache=100ms,ssh=40ms,api=30ms", "--uplink", "8mbit")
    try:
        assert up.returncode == 0, up.stderr
        assert "distance: cache 100 ms, ssh 40 ms, api 30 ms, uplink 8 mbit" in up.stdout
        yield Lab(root)
    finally:
        topdeck_lab(root, "down")


def _seconds(action) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _running(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _ssh(lab: Lab, address: str, command: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["ssh", "-i", str(lab.client_key), "-o", f"UserKnownHostsFile={lab.known_hosts}",
                           "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"root@{address}", command],
                          input=data, capture_output=True, timeout=120)


def test_status_shows_the_distances_and_the_hosts_fetch_url(wan_lab):
    status = topdeck_lab(wan_lab.root, "status", "--json")
    document = json.loads(status.stdout)
    assert document["wan"] == "cache 100 ms, ssh 40 ms, api 30 ms, uplink 8 mbit"
    assert document["download_url"] == wan_lab.download_url != wan_lab.emulator.url


def test_a_download_through_the_cache_relay_takes_two_round_trips(wan_lab):
    def get(url: str) -> None:
        with pytest.raises(urllib.error.HTTPError):  # nothing there: a 404 after the round trips all the same
            urllib.request.urlopen(f"{url}/file/topdeck-lab/nothing", timeout=10)

    far = min(_seconds(lambda: get(wan_lab.download_url)) for _ in range(3))
    near = min(_seconds(lambda: get(wan_lab.emulator.url)) for _ in range(3))
    assert 0.2 <= far < 0.6, far  # the handshake's round trip, then the request's
    assert near < 0.05, near


def test_the_b2_api_answers_one_round_trip_late(wan_lab):
    url = f"{wan_lab.emulator.url}/b2api/v3/b2_authorize_account"
    def call() -> None:
        with pytest.raises(urllib.error.HTTPError):  # no credentials: refused, after the delay
            urllib.request.urlopen(url, timeout=10)

    assert 0.03 <= min(_seconds(call) for _ in range(3)) < 0.3


def test_ssh_goes_through_the_relay_with_the_key_pinned(wan_lab):
    relay = relay_address(wan_lab.host("host-1").address)
    assert wan_lab.ssh_address("host-1") == relay
    far = min(_seconds(lambda: _ssh(wan_lab, relay, "true")) for _ in range(2))
    near = min(_seconds(lambda: _ssh(wan_lab, wan_lab.host("host-1").address, "true")) for _ in range(2))
    result = _ssh(wan_lab, relay, "hostname; readlink /run/current-system")
    assert result.returncode == 0, result.stderr
    assert far - near >= 0.12, (far, near)  # an SSH login is several round trips


def test_the_uplink_cap_holds_what_the_operator_sends(wan_lab):
    data = os.urandom(2 * 1024 * 1024)  # 16.8 Mbit: about 2 s at 8 mbit
    seconds = _seconds(lambda: _ssh(wan_lab, wan_lab.ssh_address("host-1"), "cat > /dev/null", data))
    assert seconds >= 1.8, seconds
    assert "rate 8Mbit" in shaping()


def test_lab_up_replaces_the_values_and_down_removes_them(tmp_path):
    root = tmp_path / "lab"
    base = ADDRESS.rsplit(".", 1)[0] + ".40"
    try:
        first = topdeck_lab(root, "up", "--hosts", "1", "--base-address", base, "--emulator-port", "0",
                            "--rtt", "cache=50ms", "--downlink", "100mbit")
        assert first.returncode == 0, first.stderr
        relay_pid = Lab(root).relays["cache"][0]
        second = topdeck_lab(root, "up", "--hosts", "1", "--rtt", "ssh=20ms")
        assert second.returncode == 0, second.stderr
        assert "distance: ssh 20 ms" in second.stdout
        lab = Lab(root)
        assert "cache" not in lab.relays and "host-1" in lab.relays
        assert not _running(relay_pid)
        assert "100Mbit" not in shaping()
    finally:
        down = topdeck_lab(root, "down")
    assert down.returncode == 0, down.stderr
    assert "htb" not in shaping()
    assert not any(_running(pid) for pid, _ in lab.relays.values())
