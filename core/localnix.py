"""The local Nix: closures with hashes and sizes, NAR streams, and builds with a live log.

Each function runs one Nix command as a subprocess (Debian's nix-bin 2.8 here). The environment Nix
runs with (`env`, default: this process's) and the log and cancel hooks are parameters.

What `nix path-info --json -r` prints in Nix 2.8 (one JSON list, sorted by path, not in dependency order):

    [{"path": "/nix/store/...-b-2.0", "narHash": "sha256-<base64>", "narSize": 576,
      "references": ["/nix/store/...-a-1.0", "/nix/store/...-b-2.0"],   # full paths, sorted, self included
      "deriver": "/nix/store/...-b-2.0.drv",                            # absent when unknown
      "ca": "fixed:r:sha256:...",                                       # absent unless content-addressed
      "signatures": ["key-1:base64..."],                                # absent when there are none
      "registrationTime": 1795558500, "ultimate": true}, ...]
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from topdeck.core.errors import Cancelled, NarinfoError, NixError
from topdeck.core.inventory import Build
from topdeck.core.narinfo import parse_hash
from topdeck.core.store import StorePath, parse_store_path

# `nix` needs this feature; asking on the command line works whatever nix.conf or NIX_CONFIG say.
NIX_COMMAND = ("nix", "--extra-experimental-features", "nix-command")

# How long nix-build gets to stop after SIGTERM (it kills its builders on the way out) before SIGKILL.
TERMINATE_GRACE = 5.0
_POLL = 0.05

_NOT_VALID = re.compile(r"^error: path '(/nix/store/[^']*)' is not valid")


@dataclass(frozen=True)
class PathInfo:
    """One store path as the local store knows it. `nar_hash` is the raw sha256 digest of its NAR."""

    path: StorePath
    nar_hash: bytes
    nar_size: int
    references: tuple[StorePath, ...]
    deriver: StorePath | None = None
    ca: str = ""
    sigs: tuple[str, ...] = ()


# --- closures ---------------------------------------------------------------------------------------


def closure(paths: Iterable[StorePath | str], *, env: Mapping[str, str] | None = None) -> list[PathInfo]:
    """Every path the given ones need, with hashes, sizes and references, references before referrers.

    One `nix path-info --json -r` call. Substitution is switched off for it: a path missing here is an
    error (`<path>: not in the local store`), never a download or a build.
    """
    wanted = _store_paths(paths)
    if not wanted:
        return []
    for path in wanted:
        if path.name.endswith(".drv"):
            # Nix 2.8 reads a .drv argument as "its outputs" and would build them.
            raise NixError(f"{path}: is a derivation; give the store paths it builds")
    command = [*NIX_COMMAND, "path-info", "--json", "--recursive", "--option", "substitute", "false"]
    result = _run(command + [str(path) for path in wanted], env)
    if result.returncode < 0:
        raise NixError(f"nix path-info was killed by signal {-result.returncode}")
    if result.returncode != 0:
        raise NixError(_path_info_failure(result.stderr))
    infos = _parse_path_infos(result.stdout)
    missing = [path for path in wanted if path not in infos]
    if missing:
        raise NixError(f"{missing[0]}: nix path-info did not report it")
    return topological(infos.values())


def topological(infos: Iterable[PathInfo]) -> list[PathInfo]:
    """The infos with every path after the paths it refers to (self-references aside); ties in store
    path order, so the result does not depend on the input's order. Every reference must be present."""
    by_path = {info.path: info for info in infos}
    order: list[PathInfo] = []
    done: set[StorePath] = set()
    visiting: set[StorePath] = set()

    def references(info: PathInfo) -> Iterator[StorePath]:
        for reference in sorted(info.references):
            if reference == info.path:
                continue
            if reference not in by_path:
                raise NixError(f"{info.path}: its reference {reference} is missing from the closure")
            yield reference

    for root in sorted(by_path):
        if root in done:
            continue
        visiting.add(root)
        stack = [(by_path[root], references(by_path[root]))]
        while stack:
            info, pending = stack[-1]
            reference = next(pending, None)
            if reference is None:
                stack.pop()
                visiting.discard(info.path)
                done.add(info.path)
                order.append(info)
            elif reference in visiting:
                raise NixError(f"{info.path}: reference cycle through {reference}")
            elif reference not in done:
                visiting.add(reference)
                stack.append((by_path[reference], references(by_path[reference])))
    return order


def _store_paths(paths: Iterable[StorePath | str]) -> list[StorePath]:
    """Validated store paths, without duplicates, in the order given. StorePathError on any other value."""
    result: dict[StorePath, None] = {}
    for path in paths:
        result[path if isinstance(path, StorePath) else parse_store_path(str(path))] = None
    return list(result)


def _path_info_failure(stderr: str) -> str:
    for line in stderr.splitlines():
        match = _NOT_VALID.match(line)
        if match:
            return f"{match[1]}: not in the local store"
    return f"nix path-info failed: {_first_error(stderr)}"


def _parse_path_infos(stdout: str) -> dict[StorePath, PathInfo]:
    try:
        entries = json.loads(stdout)
        if not isinstance(entries, list):
            raise ValueError("not a JSON list")
        infos = [_path_info(entry) for entry in entries]
    except (ValueError, KeyError, TypeError, NarinfoError) as error:
        raise NixError(f"nix path-info printed something unexpected: {error}") from None
    return {info.path: info for info in infos}


def _path_info(entry: dict[str, Any]) -> PathInfo:
    size = entry["narSize"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"narSize {size!r}")
    deriver = entry.get("deriver")
    return PathInfo(
        path=parse_store_path(_string(entry["path"])),
        nar_hash=parse_hash(_string(entry["narHash"])),
        nar_size=size,
        references=tuple(sorted(parse_store_path(_string(path)) for path in entry.get("references", []))),
        deriver=parse_store_path(_string(deriver)) if deriver else None,
        ca=_string(entry.get("ca", "")),
        sigs=tuple(_string(sig) for sig in entry.get("signatures", [])),
    )


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


# --- NAR streams ------------------------------------------------------------------------------------


@contextlib.contextmanager
def nar_stream(path: StorePath | str, *, env: Mapping[str, str] | None = None) -> Iterator[io.BufferedReader]:
    """A readable binary stream of the path's NAR (`nix-store --dump`), read as it is produced.

    Reading to the end raises NixError instead of giving EOF when the dump failed (it may have written a
    truncated NAR first), and so does leaving the block after such a failure. Leaving early (an
    exception, a cancel, or just not reading to the end) kills nix-store.
    """
    store_path = path if isinstance(path, StorePath) else parse_store_path(str(path))
    with tempfile.TemporaryFile() as stderr:
        process = _popen(["nix-store", "--dump", str(store_path)], env, stdout=subprocess.PIPE, stderr=stderr,
                         bufsize=0)
        assert process.stdout is not None
        reader = _DumpReader(process, store_path, stderr)
        try:
            yield io.BufferedReader(reader, buffer_size=1 << 20)
            if not reader.finished and (process.stdout.read(1) == b"" or process.poll() is not None):
                reader.finish()  # nix-store is done (the consumer read all, or it failed early): check it
            if reader.failure is not None:
                raise reader.failure
        finally:
            if not reader.finished:
                process.kill()
            process.stdout.close()
            process.wait()


class _DumpReader(io.RawIOBase):
    """nix-store --dump's stdout; at EOF, the exit status is checked before EOF is passed on."""

    def __init__(self, process: subprocess.Popen[bytes], path: StorePath, stderr: IO[bytes]):
        self.process, self.path, self.stderr = process, path, stderr
        self.finished = False
        self.failure: NixError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = cast(io.RawIOBase, self.process.stdout).readinto(buffer)
        if count == 0 and len(buffer) > 0:
            self.finish()
            if self.failure is not None:
                raise self.failure
        return count or 0

    def finish(self) -> None:
        self.finished = True
        if self.process.wait() != 0:
            self.stderr.seek(0)
            message = self.stderr.read().decode(errors="replace")
            self.failure = NixError(f"{self.path}: nix-store --dump failed: {_first_error(message)}")


# --- builds -----------------------------------------------------------------------------------------


def build_command(build: Build, nix_path_args: Sequence[str] = ()) -> list[str]:
    """The nix-build command line for a host's [build]."""
    if build.kind == "nix":
        target = [str(build.file)]
    elif build.kind == "nixos":
        target = ["<nixpkgs/nixos>", "-A", "system", "-I", f"nixos-config={build.file}"]
    else:
        raise NixError(f"{build.file}: unknown build kind {build.kind!r} (expected 'nix' or 'nixos')")
    return ["nix-build", *target, *nix_path_args, "--no-out-link"]


def build(
    build: Build,
    *,
    log: Callable[[str], None],
    cancel: threading.Event | None = None,
    nix_path_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> StorePath:
    """Build a host's toplevel with nix-build and return its store path.

    Each line nix-build writes to stderr goes to `log` as it comes, on the calling thread. Setting
    `cancel` stops nix-build (and with it the builder) and raises Cancelled("... build cancelled").
    `nix_path_args` go to nix-build as they are, e.g. ("-I", "nixpkgs=/path/to/nixpkgs").
    """
    if not build.file.is_file():
        raise NixError(f"{build.file}: not found")
    command = build_command(build, nix_path_args)
    process = _popen(command, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines: queue.Queue[str | None] = queue.Queue()
        output: list[bytes] = []
        threads = [
            threading.Thread(target=_lines_to_queue, args=(process.stderr, lines), daemon=True),
            threading.Thread(target=lambda: output.append(cast(IO[bytes], process.stdout).read()), daemon=True),
        ]
        for thread in threads:
            thread.start()
        first_error = _relay_log(lines, log, cancel)
        if first_error is None:
            _stop(process)
            raise Cancelled(f"{build.file}: build cancelled")
        for thread in threads:
            thread.join()
        status = process.wait()
    finally:
        _stop(process)
    if status != 0:
        reason = first_error.removeprefix("error: ") or f"nix-build exited with status {status}"
        raise NixError(f"{build.file}: build failed: {reason}")
    return _built_path(build.file, output[0].decode(errors="replace"))


def _lines_to_queue(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    for raw in stream:
        lines.put(raw.decode(errors="replace").rstrip("\r\n"))
    lines.put(None)


def _relay_log(lines: queue.Queue[str | None], log: Callable[[str], None],
               cancel: threading.Event | None) -> str | None:
    """Pass lines to `log` until nix-build closes stderr; its first `error:` line ("" if none), or None
    when `cancel` was set first."""
    first_error = ""
    while True:
        if cancel is not None and cancel.is_set():
            return None
        try:
            line = lines.get(timeout=_POLL)
        except queue.Empty:
            continue
        if line is None:
            return first_error
        if not first_error and line.startswith("error:"):
            first_error = line
        log(line)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a process that still runs (nix-build then kills its builder), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(TERMINATE_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _built_path(file: Path, stdout: str) -> StorePath:
    outputs = stdout.split()
    if len(outputs) != 1:
        raise NixError(f"{file}: builds {len(outputs)} store paths; expected one toplevel")
    return parse_store_path(outputs[0])


# --- helpers ----------------------------------------------------------------------------------------


def _run(command: list[str], env: Mapping[str, str] | None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", env=_env(env))
    except FileNotFoundError:
        raise NixError(f"{command[0]}: not found (is Nix installed and on PATH?)") from None


def _popen(command: list[str], env: Mapping[str, str] | None, **options: Any) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, env=_env(env), **options)
    except FileNotFoundError:
        raise NixError(f"{command[0]}: not found (is Nix installed and on PATH?)") from None


def _env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    return None if env is None else dict(env)


def _first_error(stderr: str) -> str:
    """The first `error:` line of a Nix command's stderr (without the prefix), else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    return lines[-1] if lines else "no message"
