"""A TCP forwarder for the lab: listen on one address (optionally inside a network namespace the lab made) and
pass each connection on to another address of this machine's own namespace.

The lab uses it to put a second address in front of the B2 emulator (a CDN or custom domain in front of a bucket)
and to let a host in a network namespace of its own reach the emulator at the same URL as every other host.
Every accepted connection is logged as `connection from HOST:PORT`, so a test can tell who came through, and
when it ends as `closed HOST:PORT up N down M` (bytes the client sent through it, and received), so a benchmark can
tell how much crossed. With `--rtt-ms N` it is a distance: every byte is held for half the round trip each way
(pipelined: a propagation delay, not a bandwidth cap), and a new connection's first bytes wait one round trip more, as
a TCP handshake would (this kernel has no netem; topdeck.lab.wan uses it for the WAN lab's legs).

    python -m topdeck.lab.forward --listen 127.0.0.1:8080 --to 127.0.0.1:17890 [--netns /run/netns/NAME] [--rtt-ms N]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import queue
import socket
import sys
import threading
import time
from pathlib import Path

from topdeck.lab.errors import LabError
from topdeck.lab.hosts import spawn_detached, wait_for

CLONE_NEWNET = 0x40000000
CHUNK = 65536


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def listen(address: tuple[str, int], netns: Path | None = None) -> socket.socket:
    """A listening socket on `address`, made inside `netns` when given (this thread goes back to its own
    namespace after: a socket keeps the namespace it was made in, so connections out still leave from here)."""
    if netns is None:
        return socket.create_server(address, reuse_port=False)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    other = os.open(netns, os.O_RDONLY)
    try:
        _setns(other)
        try:
            return socket.create_server(address)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(other)


_SAY = threading.Lock()


def _say(line: str) -> None:
    """One log line in one write: print() writes the line and its end apart, so two relays' lines could merge."""
    with _SAY:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def serve(server: socket.socket, target: tuple[str, int], source: str | None = None, rtt: float = 0.0) -> None:
    host, port = server.getsockname()[:2]
    _say(f"listening on {host}:{port}")
    while True:
        client, peer = server.accept()
        _say(f"connection from {peer[0]}:{peer[1]}")
        threading.Thread(target=_relay, args=(client, target, source, f"{peer[0]}:{peer[1]}", rtt),
                         daemon=True).start()


def _relay(client: socket.socket, target: tuple[str, int], source: str | None, peer: str = "",
           rtt: float = 0.0) -> None:
    opened = time.monotonic()
    try:
        upstream = socket.create_connection(target, timeout=10, source_address=(source, 0) if source else None)
    except OSError as error:
        _say(f"cannot reach {target[0]}:{target[1]}: {error}")
        client.close()
        return
    upstream.settimeout(None)
    down: list[int] = []
    back = threading.Thread(target=lambda: down.append(_pipe(upstream, client, rtt / 2)), daemon=True)
    back.start()
    up = _pipe(client, upstream, rtt / 2, not_before=opened + rtt)
    back.join()
    _say(f"closed {peer} up {up} down {sum(down)}")


def _pipe(reader: socket.socket, writer: socket.socket, delay: float = 0.0, not_before: float = 0.0) -> int:
    """Copy until the reader ends, each chunk `delay` seconds after it was read (and not before `not_before` +
    `delay`); the bytes copied."""
    if delay > 0:
        return _delayed_pipe(reader, writer, delay, not_before)
    copied = 0
    try:
        while data := reader.recv(CHUNK):
            writer.sendall(data)
            copied += len(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            reader.shutdown(socket.SHUT_RD)
    return copied


def _delayed_pipe(reader: socket.socket, writer: socket.socket, delay: float, not_before: float) -> int:
    """`_pipe` with a propagation delay: this thread reads, another writes each chunk when its time comes."""
    chunks: queue.Queue[tuple[float, bytes]] = queue.Queue(maxsize=512)  # 32 MiB held at most: back-pressure
    sender = threading.Thread(target=_send_when_due, args=(chunks, writer, reader), daemon=True)
    sender.start()
    copied = 0
    try:
        while data := reader.recv(CHUNK):
            chunks.put((max(time.monotonic(), not_before) + delay, data))
            copied += len(data)
    except OSError:
        pass
    chunks.put((max(time.monotonic(), not_before) + delay, b""))
    sender.join()
    return copied


def _send_when_due(chunks: queue.Queue[tuple[float, bytes]], writer: socket.socket,
                   reader: socket.socket) -> None:
    try:
        while True:
            due, data = chunks.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not data:
                break
            writer.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            reader.shutdown(socket.SHUT_RD)


def start(listen_at: tuple[str, int], target: tuple[str, int], log: Path, *, netns: Path | None = None,
          source: str | None = None, rtt_ms: int = 0) -> tuple[int, int]:
    """Start a detached forwarder; returns (pid, the port it listens on: `listen_at`'s, or a free one for 0)."""
    log.write_text("")
    argv = [sys.executable, "-m", "topdeck.lab.forward", "--listen", f"{listen_at[0]}:{listen_at[1]}",
            "--to", f"{target[0]}:{target[1]}"]
    if netns is not None:
        argv += ["--netns", str(netns)]
    if source is not None:
        argv += ["--source", source]
    if rtt_ms:
        argv += ["--rtt-ms", str(rtt_ms)]
    pid = spawn_detached(argv, log)
    wait_for(lambda: "listening on" in log.read_text() or not Path(f"/proc/{pid}").exists(), 10,
             f"the forwarder on {listen_at[0]}:{listen_at[1]} did not start", lambda: log.read_text()[-300:])
    text = log.read_text()
    if "listening on" not in text:
        raise LabError(f"the forwarder on {listen_at[0]}:{listen_at[1]} exited at start: {text[-300:]}")
    port = int(text.split("listening on", 1)[1].split()[0].rpartition(":")[2])
    return pid, port


def peers(log: Path) -> list[str]:
    """The addresses (without port) of every connection the forwarder logged."""
    return [line.split()[2].rpartition(":")[0] for line in log.read_text().splitlines()
            if line.startswith("connection from ")]


def traffic(log: Path) -> tuple[int, int]:
    """Bytes (up, down) of every connection the forwarder logged as closed."""
    up = down = 0
    for line in log.read_text().splitlines():
        words = line.split()
        if len(words) == 6 and words[0] == "closed" and words[2] == "up" and words[4] == "down":
            up, down = up + int(words[3]), down + int(words[5])
    return up, down


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m topdeck.lab.forward", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=parse_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--to", type=parse_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--netns", type=Path, help="listen inside this network namespace (/run/netns/NAME)")
    parser.add_argument("--source", help="connect to the target from this local address")
    parser.add_argument("--rtt-ms", type=int, default=0, metavar="N", help="add this round trip (milliseconds)")
    args = parser.parse_args(argv)
    try:
        server = listen(args.listen, args.netns)
    except OSError as error:
        print(f"cannot listen on {args.listen[0]}:{args.listen[1]}: {error.strerror}", flush=True)
        return 1
    with contextlib.suppress(KeyboardInterrupt):
        serve(server, args.to, args.source, args.rtt_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
