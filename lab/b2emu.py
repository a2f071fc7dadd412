"""The B2 emulator: an HTTP server on loopback that speaks the B2 native API as the unmodified b2sdk
uses it (/b2api/v4/...) and serves downloads at /file/<bucket>/<key> (no auth for public buckets,
as Nix fetches them), over b2sdk's own RawSimulator. It counts transactions by class and injects
faults on request.

In process:   with B2Emulator("lab-key-id", "lab-secret").start() as b2: ... b2.url ...
As a process: python -m topdeck.lab.b2emu --port 17890 --key-id ID --key-env VAR --bucket NAME
Control over HTTP (never counted, never faulted): GET /_emulator/counters,
POST /_emulator/counters/reset, GET|POST|DELETE /_emulator/faults (POST takes FaultPlan's
fields as a JSON object), GET|POST /_emulator/delay ({"api_ms": N}: every B2 API call, not /file/ downloads, is
answered N ms late, the round trip of the operator's leg to B2 in the WAN lab), GET /_emulator/downloads (each
request to /file/...: the peer's address,
the path, the User-Agent and whether it carried B2 authorization, oldest first).

The pieces: b2emu_account (the simulator and its errors), b2emu_calls (one handler per B2 call),
b2emu_meter (counters and faults); this module holds the HTTP server, the B2Emulator and the command.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from .b2emu_account import B2ApiError, LabSimulator, bad_request, not_found
from .b2emu_calls import ROUTES, Answer, B2Calls, Request, Route, call_name
from .b2emu_meter import Counters, FaultKind, FaultPicker, FaultPlan

logger = logging.getLogger(__name__)

CONTROL_PREFIX = "/_emulator/"
DEFAULT_RECOMMENDED_PART_SIZE = 100_000_000
DEFAULT_ABSOLUTE_MINIMUM_PART_SIZE = 5_000_000
_CHUNK_SIZE = 1 << 20
_IDLE_CONNECTION_SECONDS = 600
_DOWNLOADS_KEPT = 50_000
_SHUTDOWN_POLL_SECONDS = 0.1

_FAULT_ERRORS = {
    FaultKind.SERVICE_UNAVAILABLE: B2ApiError(503, "service_unavailable", "c001_v0001000_t0000 is too busy"),
    FaultKind.DOWNLOAD_CAP: B2ApiError(
        403, "download_cap_exceeded", "Cannot download file, download bandwidth or transaction (Class B) cap exceeded"
    ),
    FaultKind.TRANSACTION_CAP: B2ApiError(
        403, "transaction_cap_exceeded", "Transaction cap exceeded (Class C): raise the cap in the web UI"
    ),
}


# What topdeck needs of a key: list, read and write files in its bucket. No deleteFiles, no bucket changes.
BUCKET_KEY_CAPABILITIES = ("listBuckets", "listFiles", "readFiles", "writeFiles")

class B2Emulator:
    """The emulator with its own in-memory account; `start()` serves it from a background thread."""

    def __init__(
        self,
        key_id: str,
        key: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        recommended_part_size: int = DEFAULT_RECOMMENDED_PART_SIZE,
        absolute_minimum_part_size: int = DEFAULT_ABSOLUTE_MINIMUM_PART_SIZE,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the B2 emulator only listens on loopback addresses, not {host}")
        self.host = host
        self.port = port
        self.calls = B2Calls(LabSimulator(key_id, key), recommended_part_size, absolute_minimum_part_size)
        self.fault_picker = FaultPicker()
        self.api_delay_ms = 0
        self.stopping = threading.Event()
        self._counters = Counters()
        self._downloads: deque[dict[str, Any]] = deque(maxlen=_DOWNLOADS_KEPT)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the B2 emulator is not started")
        return f"http://{self.host}:{self._server.server_port}"

    def start(self) -> Self:
        self.stopping.clear()
        self._server = _Server((self.host, self.port), self)
        self.calls.url = self.url
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(_SHUTDOWN_POLL_SECONDS,), name="b2emu", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self.stopping.set()
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join()
        self._server = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def counters(self) -> dict[str, Any]:
        return self._counters.snapshot()

    def reset_counters(self) -> None:
        self._counters.reset()

    def record_download(self, peer: str, request: Request) -> None:
        self._downloads.append({"peer": peer, "method": request.method, "path": request.path,
                                "user_agent": request.headers.get("User-Agent", ""),
                                "authorized": "Authorization" in request.headers})

    def downloads(self) -> list[dict[str, Any]]:
        return list(self._downloads)

    @property
    def fault_plan(self) -> FaultPlan:
        return self.fault_picker.plan

    def set_faults(self, **settings: Any) -> FaultPlan:
        """Replace the fault plan; the settings are FaultPlan's fields, the others keep defaults."""
        plan = FaultPlan.from_json(settings)
        self.fault_picker.set_plan(plan)
        return plan

    def clear_faults(self) -> None:
        self.fault_picker.set_plan(FaultPlan())

    def create_bucket(self, name: str, public: bool = True) -> str:
        """Create a bucket without a B2 call (nothing counted); returns its id."""
        return self.calls.create_bucket_directly(name, public)

    def add_bucket_key(self, key_id: str, key: str, bucket: str,
                       capabilities: tuple[str, ...] = BUCKET_KEY_CAPABILITIES) -> None:
        """Accept a second application key, restricted to one bucket and to `capabilities`."""
        self.calls.add_bucket_key(key_id, key, bucket, list(capabilities))

    def count_call(self, call: str, transaction_class: str, transactions: int) -> None:
        self._counters.count_call(call, transaction_class, transactions)

    def count_fault(self, kind: FaultKind) -> None:
        self._counters.count_fault(kind)

    def count_bytes(self, received: int, sent: int) -> None:
        self._counters.count_bytes(received, sent)

    def control(self, request: Request) -> Answer:
        action = _CONTROL_ROUTES.get((request.method, request.path.removeprefix(CONTROL_PREFIX)))
        if action is None:
            return Answer.error(not_found(f"no such control: {request.method} {request.path}"))
        try:
            return Answer.json(action(self, request))
        except B2ApiError as error:
            return Answer.error(error)
        except (TypeError, ValueError) as error:
            return Answer.error(bad_request(str(error)))

    def _get_counters(self, request: Request) -> dict[str, Any]:
        return self.counters()

    def _reset_counters(self, request: Request) -> dict[str, Any]:
        self.reset_counters()
        return self.counters()

    def _get_downloads(self, request: Request) -> dict[str, Any]:
        return {"downloads": self.downloads()}

    def _get_faults(self, request: Request) -> dict[str, Any]:
        return self.fault_plan.as_json()

    def _set_faults(self, request: Request) -> dict[str, Any]:
        return self.set_faults(**request.params()).as_json()

    def _get_delay(self, request: Request) -> dict[str, Any]:
        return {"api_ms": self.api_delay_ms}

    def _set_delay(self, request: Request) -> dict[str, Any]:
        value = request.params().get("api_ms")
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10_000:
            raise ValueError("api_ms must be a whole number of milliseconds, 0 to 10000")
        self.api_delay_ms = value
        return self._get_delay(request)

    def _clear_faults(self, request: Request) -> dict[str, Any]:
        self.clear_faults()
        return self.fault_plan.as_json()


_CONTROL_ROUTES: dict[tuple[str, str], Callable[[B2Emulator, Request], dict[str, Any]]] = {
    ("GET", "counters"): B2Emulator._get_counters,
    ("POST", "counters/reset"): B2Emulator._reset_counters,
    ("GET", "downloads"): B2Emulator._get_downloads,
    ("GET", "faults"): B2Emulator._get_faults,
    ("POST", "faults"): B2Emulator._set_faults,
    ("DELETE", "faults"): B2Emulator._clear_faults,
    ("GET", "delay"): B2Emulator._get_delay,
    ("POST", "delay"): B2Emulator._set_delay,
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # 100 hosts fetching at once open thousands of connections (Nix: up to 25 each); a short accept queue resets some
    request_queue_size = 4096

    def __init__(self, address: tuple[str, int], emulator: B2Emulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def forget(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Wake the threads still waiting on kept-alive connections, so nothing answers after stop."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            logger.debug("connection from %s ended: %r", client_address, error)
        else:
            logger.exception("error while serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _IDLE_CONNECTION_SECONDS
    # Headers and body go out in separate writes; with Nagle on, the body waits for the client's
    # delayed ACK of the headers (40 ms per small answer).
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.forget(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _serve(self) -> None:
        request = self._read_request()
        emulator = self.server.emulator
        if request.path.startswith(CONTROL_PREFIX):
            self._write(emulator.control(request))
            return
        if request.path.startswith("/file/"):
            emulator.record_download(self.client_address[0], request)
        elif emulator.api_delay_ms:
            emulator.stopping.wait(emulator.api_delay_ms / 1000)
        call = call_name(request.method, request.path) or ""
        route = ROUTES.get(call)
        if route is None:
            self._write(Answer.error(not_found(f"no such B2 call: {request.path}")))
            return
        fault = emulator.fault_picker.pick(call, route.transaction_class, request.on_file_path, request.path)
        if fault is not None:
            emulator.count_fault(fault)
            self._inject(fault, route, request)
            return
        answer, transactions = emulator.calls.answer(route, request)
        emulator.count_call(call, route.transaction_class, transactions)
        emulator.count_bytes(len(request.body), 0 if self.command == "HEAD" else len(answer.body))
        self._write(answer)

    def _read_request(self) -> Request:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        return Request(self.command, unquote(url.path), dict(parse_qsl(url.query)), self.headers, body)

    def _inject(self, fault: FaultKind, route: Route, request: Request) -> None:
        emulator = self.server.emulator
        plan = emulator.fault_plan
        if fault is FaultKind.TIMEOUT:
            emulator.stopping.wait(plan.timeout_seconds)
            self.close_connection = True
        elif fault is FaultKind.DROP and route.downloads and request.method == "GET":
            self._drop_mid_body(route, request)
        elif fault is FaultKind.DROP:
            self.close_connection = True
        elif fault is FaultKind.SERVICE_UNAVAILABLE and plan.retry_after is not None:
            self._write(Answer.error(_FAULT_ERRORS[fault], {"Retry-After": str(plan.retry_after)}))
        else:
            self._write(Answer.error(_FAULT_ERRORS[fault]))

    def _drop_mid_body(self, route: Route, request: Request) -> None:
        answer, _ = self.server.emulator.calls.answer(route, request)
        if answer.status in (200, 206) and len(answer.body) > 0:
            self._write(answer, cut_at=len(answer.body) // 2)
        self.close_connection = True

    def _write(self, answer: Answer, cut_at: int | None = None) -> None:
        """Send an answer; with cut_at, only that many body bytes before the connection is closed."""
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        body = memoryview(answer.body)[:cut_at]
        for offset in range(0, len(body), _CHUNK_SIZE):
            self.wfile.write(body[offset : offset + _CHUNK_SIZE])


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m topdeck.lab.b2emu", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--key-id", required=True, help="the application key id to accept")
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--key", help="the application key to accept")
    key.add_argument("--key-env", metavar="VAR", help="environment variable holding the application key")
    parser.add_argument("--bucket", action="append", default=[], help="create this allPublic bucket (repeatable)")
    parser.add_argument("--bucket-key", nargs=3, metavar=("BUCKET", "KEY_ID", "KEY_ENV"), action="append",
                        default=[], help="also accept KEY_ID with the key in $KEY_ENV, restricted to BUCKET")
    parser.add_argument("--deleting-bucket-key", nargs=3, metavar=("BUCKET", "KEY_ID", "KEY_ENV"), action="append",
                        default=[], help="like --bucket-key, and the key may also delete files (a gc key)")
    parser.add_argument("--recommended-part-size", type=int, default=DEFAULT_RECOMMENDED_PART_SIZE)
    parser.add_argument("--minimum-part-size", type=int, default=DEFAULT_ABSOLUTE_MINIMUM_PART_SIZE)
    args = parser.parse_args(argv)
    if args.key_env is not None:
        args.key = os.environ.get(args.key_env)
        if not args.key:
            parser.error(f"environment variable {args.key_env} is not set")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="b2emu: %(levelname)s %(message)s")
    emulator = B2Emulator(
        args.key_id,
        args.key,
        host=args.host,
        port=args.port,
        recommended_part_size=args.recommended_part_size,
        absolute_minimum_part_size=args.minimum_part_size,
    )
    for bucket in args.bucket:
        emulator.create_bucket(bucket, public=True)
    keys: list[tuple[list[str], tuple[str, ...]]] = [(entry, BUCKET_KEY_CAPABILITIES) for entry in args.bucket_key]
    keys += [(entry, (*BUCKET_KEY_CAPABILITIES, "deleteFiles")) for entry in args.deleting_bucket_key]
    for (bucket, key_id, key_env), capabilities in keys:
        if not os.environ.get(key_env):
            raise SystemExit(f"b2emu: environment variable {key_env} is not set")
        emulator.add_bucket_key(key_id, os.environ[key_env], bucket, capabilities)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with emulator.start():
        print(f"listening on {emulator.url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
