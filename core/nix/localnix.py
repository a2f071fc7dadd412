"""The local Nix: closures with hashes and sizes, NAR streams, and builds with a live log.

Each function runs one Nix command as a subprocess. The environment Nix runs with (`env`, default: this
process's) and the log and cancel hooks are parameters. Any Nix from 2.8 (Debian 12) to 2.34 (Debian sid)
works: `nix --version` is asked once per environment (`detect_nix`, `nix_version`), and what differs
between versions is chosen from it.

`nix path-info --json -r` prints the closure in one of these forms. Nix 2.8, 2.26 and 2.34 were run here (a
recording of each form is in tests/data/path-info/); the versions where the forms change come from Nix's
release notes and pull requests (NixOS/nix#9242 in 2.19, NixOS/nix#14704 in 2.33):

- Nix 2.8 up to 2.18: a JSON list of objects, sorted by path, not in dependency order:

      [{"path": "/nix/store/...-b-2.0", "narHash": "sha256-<base64>", "narSize": 576,
        "references": ["/nix/store/...-a-1.0", "/nix/store/...-b-2.0"],  # full paths, sorted, self included
        "deriver": "/nix/store/...-b-2.0.drv",                           # absent when unknown
        "ca": "fixed:r:sha256:<nix32>",                                  # absent unless content-addressed
        "signatures": ["key-1:base64..."],                               # absent when there are none
        "registrationTime": 1795558500, "ultimate": true}, ...]

- Nix 2.19 and later: one object keyed by full store path, the values without "path"; 2.26 prints unknown
  values as `null` ("ca": null, "deriver": null) and empty lists as [] ("signatures": []):

      {"/nix/store/...-b-2.0": {"narHash": "sha256-<base64>", "narSize": 576, "references": [...],
                                "deriver": "/nix/store/...-b-2.0.drv", "ca": null, "signatures": [], ...}}

- Nix 2.33 and later: the same, with "version": 1 and "storeDir": "/nix/store" in each value, and a
  deprecation warning on stderr unless `--json-format 1` or `--json-format 2` is given. topdeck passes
  `--json-format 1` to these, which prints exactly that form without the warning (2.34).
- `--json-format 2` (2.33 and later): the infos under "info", keyed by basename; references and the
  deriver are basenames too, and "ca" is an object such as {"method": "nar", "hash": "sha256-<base64>"}:

      {"info": {"<hash>-b-2.0": {"narHash": "sha256-<base64>", "references": ["<hash>-a-1.0", ...],
                                 "deriver": "<hash>-b-2.0.drv", "ca": null, "version": 2, ...}},
       "storeDir": "/nix/store", "version": 2}

Every form is read into the same PathInfo. NarHash may be SRI (`sha256-<base64>`, every version here),
or `sha256:` with nix-base32, base16 or base64 (narinfo.parse_hash); a structured "ca" becomes the
string form that narinfos and Nix 2.8 use (`fixed:r:sha256:<nix32>`, `fixed:sha1:...`, `text:sha256:...`).

Other differences seen here: a failed build's first error line is `builder for '<drv>' failed with exit
code N` in 2.8 and 2.26, and `Cannot build '<drv>'.` followed by an indented `Reason: builder failed with
exit code N.` in 2.34 (build() joins the two); `nix-store --dump` of a missing path says `getting status
of '<path>': No such file or directory` in 2.8 and `path '/<path>' does not exist` in 2.26 and 2.34. An
evaluation error is one `error: ...` line in 2.8; in 2.26 and 2.34 a bare `error:`, the trace indented below it,
and last an indented `error: ...` (the log relay takes that one).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from topdeck.core import strict
from topdeck.core.errors import Cancelled, NarinfoError, NixError, StorePathError
from topdeck.core.inventory import Build
from topdeck.core.nix import nixbase32
from topdeck.core.nix.narinfo import parse_hash
from topdeck.core.nix.store import STORE_DIR, StorePath, parse_store_path

# `nix` needs this feature; asking on the command line works whatever nix.conf or NIX_CONFIG say.
NIX_COMMAND = ("nix", "--extra-experimental-features", "nix-command")

# How long nix-build gets to stop after SIGTERM (it kills its builders on the way out) before SIGKILL.
TERMINATE_GRACE = 5.0
_POLL = 0.05

_NOT_VALID = re.compile(r"^error: path '(/nix/store/[^']*)' is not valid")

# The oldest Nix topdeck is tested with (Debian 12's), and the first one that takes `--json-format`
# (Nix 2.33.0 release notes, NixOS/nix#14704; 2.26 fails with "unrecognised flag '--json-format'").
MINIMUM_NIX = (2, 8, 0)
JSON_FORMAT_SINCE = (2, 33, 0)
# `nix (Nix) 2.34.8`, `nix (Nix) 2.19`, `nix (Determinate Nix 3.8.2) 2.30.1`, `nix (Lix, like Nix) 2.91.1`.
_VERSION_LINE = re.compile(r"nix \((?P<implementation>[^()]*)\) "
                           r"(?P<major>\d{1,9})\.(?P<minor>\d{1,9})(?:\.(?P<patch>\d{1,9}))?", re.ASCII)
# The "ca" methods of `--json-format 2` and the prefixes of their string form.
_CA_PREFIXES = {"nar": "fixed:r:", "flat": "fixed:", "git": "fixed:git:", "text": "text:"}
_DIGEST_SIZES = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}


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


# --- the Nix version --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NixVersion:
    """What `nix --version` says: the implementation ("Nix", "Determinate Nix 3.8.2", "Lix, like Nix") and
    the version number, e.g. (2, 34, 8)."""

    implementation: str
    number: tuple[int, int, int]

    def __str__(self) -> str:
        return f"{self.implementation} {'.'.join(map(str, self.number))}"

    @property
    def has_json_format(self) -> bool:
        """Whether `nix path-info` takes `--json-format` (Nix 2.33 and later; Lix numbers its own releases
        from 2.90 and is not assumed to have it)."""
        return self.number >= JSON_FORMAT_SINCE and not self.implementation.startswith("Lix")


_versions: dict[tuple[str, ...], NixVersion] = {}
_versions_lock = threading.Lock()


def nix_version(env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """The version of the Nix that `env` runs, e.g. (2, 34, 8). See detect_nix."""
    return detect_nix(env).number


def detect_nix(env: Mapping[str, str] | None = None) -> NixVersion:
    """The Nix that `env` (default: this process's environment) runs, asked once per `nix` executable.

    NixError (one line) when there is no `nix` on PATH, when it is not Nix, or when it is older than 2.8.
    """
    executable = _which("nix", env)
    try:
        stat = os.stat(executable)
    except OSError:
        raise NixError(f"{executable}: not found (is Nix installed and on PATH?)") from None
    key = (executable, str(stat.st_ino), str(stat.st_mtime_ns), str(stat.st_size))
    with _versions_lock:
        if key not in _versions:
            _versions[key] = _ask_version(executable, env)
        version = _versions[key]
    if version.number < MINIMUM_NIX:
        minimum = ".".join(map(str, MINIMUM_NIX[:2]))
        raise NixError(f"{executable} is {version}; topdeck needs Nix {minimum} or newer")
    return version


def _which(tool: str, env: Mapping[str, str] | None) -> str:
    path = (os.environ if env is None else env).get("PATH", os.defpath)
    found = shutil.which(tool, path=path)
    if found is None:
        raise NixError(f"{tool}: not found (is Nix installed and on PATH?)")
    return found


def _ask_version(executable: str, env: Mapping[str, str] | None) -> NixVersion:
    try:
        result = subprocess.run([executable, "--version"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                errors="replace", env=_env(env), timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NixError(f"{executable}: is not a working Nix: `nix --version` failed: {error}") from None
    first = (result.stdout.strip().splitlines() or [""])[0].strip()
    match = _VERSION_LINE.match(first)
    if result.returncode != 0 or match is None:
        said = first or _first_error(result.stderr)
        raise NixError(f"{executable}: is not Nix: `nix --version` said {said[:80]!r} (exit {result.returncode})")
    number = (int(match["major"]), int(match["minor"]), int(match["patch"] or 0))
    return NixVersion(match["implementation"].strip(), number)


def path_info_command(version: NixVersion) -> list[str]:
    """`nix path-info` with the JSON form that this Nix prints without a warning (see the module doc)."""
    json_form = ["--json", "--json-format", "1"] if version.has_json_format else ["--json"]
    return [*NIX_COMMAND, "path-info", *json_form, "--recursive", "--option", "substitute", "false"]


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
    command = path_info_command(detect_nix(env))
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
    """Every form of `nix path-info --json` output in the module doc, read into PathInfos by path."""
    try:
        infos = [_path_info(entry, store_dir) for entry, store_dir in _entries(strict.loads(stdout))]
    except (ValueError, KeyError, TypeError, NarinfoError, StorePathError) as error:
        raise NixError(f"nix path-info printed something unexpected: {error}") from None
    return {info.path: info for info in infos}


def parse_path_info_json(text: str) -> list[PathInfo]:
    """The PathInfos in `nix path-info --json` output of any Nix (the module doc lists the forms), in
    dependency order. NixError on anything else."""
    return topological(_parse_path_infos(text).values())


def _entries(document: object) -> Iterator[tuple[dict[str, Any], str | None]]:
    """(entry with its full "path", store dir its paths are relative to or None when they are full) for
    each entry of a path-info document. NixError for a path that the store does not have."""
    if isinstance(document, list):  # Nix 2.8 to 2.18
        for entry in document:
            yield _valid(entry, _object(entry).get("path")), None
    elif isinstance(document, dict) and "info" in document:  # --json-format 2
        if document.get("version") != 2:
            raise ValueError(f"JSON format version {document.get('version')!r} (topdeck reads 1 and 2)")
        store_dir = _store_dir(document.get("storeDir"))
        for basename, entry in _object(document["info"]).items():
            yield {**_valid(entry, f"{store_dir}/{basename}"), "path": basename}, store_dir
    elif isinstance(document, dict):  # Nix 2.19 and later, --json-format 1
        for path, entry in document.items():
            yield {**_valid(entry, path), "path": path}, None
    else:
        raise ValueError(f"not a JSON list or object: {str(document)[:80]!r}")


def _valid(entry: object, path: object) -> dict[str, Any]:
    """The entry, unless it says that its path is not valid (`null` since Nix 2.19, "valid": false before)."""
    if entry is None or (isinstance(entry, dict) and entry.get("valid") is False):
        raise NixError(f"{path}: not in the local store")
    return _object(entry)


def _object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {str(value)[:80]!r}")
    return value


def _store_dir(value: object) -> str:
    if value != STORE_DIR:
        raise ValueError(f"store directory {value!r} (topdeck knows only {STORE_DIR})")
    return STORE_DIR


def _path_info(entry: dict[str, Any], store_dir: str | None) -> PathInfo:
    """One entry; its paths are full, or basenames in `store_dir` (--json-format 2)."""
    if entry.get("version", 1) not in (1, 2):
        raise ValueError(f"path-info version {entry['version']!r} (topdeck reads 1 and 2)")
    size = entry["narSize"]
    if not strict.is_uint(size):
        raise ValueError(f"narSize {size!r}")

    def path(value: object) -> StorePath:
        text = _string(value)
        if store_dir is not None and "/" in text:
            raise ValueError(f"expected a store path basename, got {text[:80]!r}")
        return parse_store_path(text if store_dir is None else f"{store_dir}/{text}")

    deriver = entry.get("deriver")
    return PathInfo(
        path=path(entry["path"]),
        nar_hash=parse_hash(_string(entry["narHash"])),
        nar_size=size,
        references=tuple(sorted(path(reference) for reference in entry.get("references") or [])),
        deriver=path(deriver) if deriver else None,
        ca=_content_address(entry.get("ca")),
        sigs=tuple(_string(sig) for sig in entry.get("signatures") or []),
    )


def _content_address(value: object) -> str:
    """The string form of "ca" (`fixed:r:sha256:<nix32>`), from the string of --json-format 1 and before, or
    the object of --json-format 2 ({"method": "nar", "hash": "sha256-<base64>"}); "" when there is none."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        return value
    ca = _object(value)
    method = _string(ca["method"])
    if method not in _CA_PREFIXES:
        raise ValueError(f"content address method {method!r}")
    return _CA_PREFIXES[method] + _nix32_hash(_string(ca["hash"]))


def _nix32_hash(text: str) -> str:
    """`<algorithm>:<nix32>` from SRI `<algorithm>-<base64>`; `<algorithm>:...` as it is."""
    algorithm, dash, body = text.partition("-")
    if not dash:
        if text.partition(":")[0] in _DIGEST_SIZES:
            return text
        raise ValueError(f"{text[:80]!r} is not a hash")
    if algorithm not in _DIGEST_SIZES:
        raise ValueError(f"hash algorithm {algorithm!r}")
    try:
        digest = base64.b64decode(body, validate=True)
    except binascii.Error:
        raise ValueError(f"{text[:80]!r} is not an SRI hash") from None
    if len(digest) != _DIGEST_SIZES[algorithm]:
        raise ValueError(f"{text[:80]!r}: {len(digest)} bytes, expected {_DIGEST_SIZES[algorithm]}")
    return f"{algorithm}:{nixbase32.encode(digest)}"


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
    detect_nix(env)
    stdout = run_logged(build_command(build, nix_path_args), what=str(build.file), log=log, cancel=cancel, env=env)
    return _built_path(build.file, stdout)


def build_files(builds: Sequence[Build], *, log: Callable[[str], None], cancel: threading.Event | None = None,
                nix_path_args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> list[StorePath]:
    """The toplevels of several `nix` builds, in one nix-build call (one line of output per file, in order: seen
    with 2.8, 2.26 and 2.34), in the order given. NixError when any fails or a file builds other than one path."""
    if any(build.kind != "nix" for build in builds):
        raise NixError("only `nix` builds can share a nix-build call")
    for build in builds:
        if not build.file.is_file():
            raise NixError(f"{build.file}: not found")
    detect_nix(env)
    command = ["nix-build", *(str(build.file) for build in builds), *nix_path_args, "--no-out-link"]
    stdout = run_logged(command, what=f"{len(builds)} Nix files", log=log, cancel=cancel, env=env)
    outputs = stdout.split()
    if len(outputs) != len(builds):
        raise NixError(f"nix-build of {len(builds)} files printed {len(outputs)} store paths")
    return [parse_store_path(output) for output in outputs]


def run_logged(command: list[str], *, what: str, log: Callable[[str], None], cancel: threading.Event | None,
               env: Mapping[str, str] | None) -> str:
    """Run a Nix command that builds or evaluates and return its stdout; each stderr line goes to `log` as it
    comes. Cancelled("WHAT: build cancelled") when `cancel` is set (the process is stopped), NixError("WHAT:
    build failed: <Nix's error>") when it fails."""
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
            raise Cancelled(f"{what}: build cancelled")
        for thread in threads:
            thread.join()
        status = process.wait()
    finally:
        _stop(process)
    if status != 0:
        reason = first_error.removeprefix("error:").strip() or f"{command[0]} exited with status {status}"
        raise NixError(f"{what}: build failed: {reason}")
    return output[0].decode(errors="replace")


def _lines_to_queue(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    for raw in stream:
        lines.put(raw.decode(errors="replace").rstrip("\r\n"))
    lines.put(None)


def _relay_log(lines: queue.Queue[str | None], log: Callable[[str], None],
               cancel: threading.Event | None) -> str | None:
    """Pass lines to `log` until nix-build closes stderr; its first `error:` line ("" if none), or None
    when `cancel` was set first. An indented `Reason:` line right under that error is joined to it:
    Nix 2.34 says `error: Cannot build '<drv>'.` and, below, `Reason: builder failed with exit code 3.`"""
    first_error, in_error = "", False
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
            first_error, in_error = line, True
        elif in_error and (not line.strip() or line[:1].isspace()):
            if first_error == "error:" and line.strip().startswith("error: "):
                first_error = line.strip()  # Nix 2.26 and later: `error:`, its trace indented, then the error
            elif line.strip().startswith("Reason:"):
                first_error, in_error = f"{first_error} {line.strip()}", False
        else:
            in_error = False
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
