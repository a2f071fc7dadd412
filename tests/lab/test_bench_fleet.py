"""What the fleet benchmarks count, counted right: the emulator's uploaded bytes, the forwarder's bytes per
connection, and a smoke run of bench/scale.py on two hosts (its logins and round trips come from the sshd logs).

Untimed: the figures' speeds are the benchmark's business, not a test's."""

from __future__ import annotations

import os
import socket
import threading
import urllib.request

import pytest
from b2sdk.v2 import B2Api, InMemoryAccountInfo

from topdeck.lab import forward
from topdeck.lab.b2emu import B2Emulator
from topdeck.lab.hosts import listener, wait_for

ADDRESSES = "127.0.54"  # this module's: forwarders on .1-.2, the smoke lab's hosts from .11


def test_the_emulator_counts_the_bytes_clients_upload_and_download() -> None:
    with B2Emulator("key-id", "secret").start() as emulator:
        api = B2Api(InMemoryAccountInfo())
        api.authorize_account(emulator.url, "key-id", "secret")
        bucket = api.create_bucket("bytes", "allPublic")
        before = emulator.counters()
        bucket.upload_bytes(b"x" * 100_000, "a")
        bucket.upload_bytes(b"y" * 2_345, "b")
        uploaded = emulator.counters()
        with urllib.request.urlopen(f"{emulator.url}/file/bytes/a") as response:
            assert len(response.read()) == 100_000

        after = emulator.counters()
    # the files' bytes, and the calls' own JSON bodies (the upload URL's request) besides
    assert 102_345 <= uploaded["bytes_received"] - before["bytes_received"] < 102_345 + 500
    assert after["bytes_sent"] - uploaded["bytes_sent"] >= 100_000
    assert after["bytes_received"] == uploaded["bytes_received"]


def test_the_forwarder_logs_the_bytes_of_each_connection(tmp_path) -> None:
    server = socket.create_server((f"{ADDRESSES}.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        for _ in range(2):
            client, _ = server.accept()
            with client:
                received = b""
                while len(received) < 5000:
                    received += client.recv(65536)
                client.sendall(b"z" * 777)

    threading.Thread(target=answer, daemon=True).start()
    log = tmp_path / "forward.log"
    pid, front = forward.start((f"{ADDRESSES}.2", 0), (f"{ADDRESSES}.1", port), log)
    try:
        for _ in range(2):
            with socket.create_connection((f"{ADDRESSES}.2", front)) as client:
                client.sendall(b"a" * 5000)
                client.shutdown(socket.SHUT_WR)
                got = b""
                while data := client.recv(65536):
                    got += data
            assert got == b"z" * 777
        wait_for(lambda: log.read_text().count("closed ") == 2, 10, "the forwarder did not log both closes")
        assert forward.traffic(log) == (10_000, 1_554)
    finally:
        os.kill(pid, 15)
        server.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")
def test_the_scale_bench_runs_on_two_hosts_and_counts_from_the_sshd_logs() -> None:
    from bench import scale
    from bench.common import close_shared_lab

    try:
        figures = {f.name: f for f in scale.run(quick=True, natives=2, images=(), base_address=f"{ADDRESSES}.11")}
    finally:
        close_shared_lab()
    plan = figures["plan, 2 hosts: SSH logins / round trips per host (sshd logs)"]
    assert plan.topdeck == 1 and plan.met, plan.note
    deploy = figures["no-change deploy, 2 hosts: SSH logins / round trips per host (sshd logs)"]
    assert deploy.topdeck == 2 and deploy.met, deploy.note
    assert figures["no-change deploy, 2 hosts: B2 class B per host"].topdeck >= 1
    assert "TUI: start to the full fleet table, 2 hosts (every status read over SSH)" in figures
    assert not listener(f"{ADDRESSES}.11", 22) and not listener(f"{ADDRESSES}.12", 22)
