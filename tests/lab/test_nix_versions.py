"""core.nix.localnix on every Nix from 2.8 to 2.34: closures, NAR streams and builds work with the real Nix of this
machine (native, 2.8), of the trixie image (2.26) and of the sid image (2.34), each against a store of its own
(topdeck.lab.opnix), and each prints the closure recorded in tests/data/path-info/ (whose forms the unit tier's
tests/unit/test_localnix.py parses without Nix)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import nixtools
import pytest
from test_localnix import DATA, RECORDED_TOP, recorded  # the unit tier's recordings, checked here against each Nix

from topdeck.core.errors import Cancelled, NixError, TopdeckError
from topdeck.core.inventory import Build
from topdeck.core.nix import localnix
from topdeck.core.nix.narinfo import hash_to_sri
from topdeck.core.nix.store import StorePath
from topdeck.lab import opnix

ABSENT = "/nix/store/00000000000000000000000000000000-topdeck-absent-1.0"
KINDS = ["native", "trixie", "sid"]
# (major, minor) of each kind's Nix: Debian 12's nix-bin, Debian 13's, Debian sid's (FACTS.md).
def _debian_nix(dpkg_query: list[str]) -> tuple[int, ...]:
    """The major and minor version of the nix-bin package, as dpkg says (a source other than `nix --version`)."""
    version = subprocess.run([*dpkg_query, "-W", "-f", "${Version}", "nix-bin"], capture_output=True, text=True).stdout
    return tuple(int(part) for part in version.split(".")[:2]) if version else ()


EXPECTED_VERSIONS = {"native": _debian_nix(["dpkg-query"]), "trixie": (2, 26), "sid": (2, 34)}


def fake_nix(folder: Path, version_line: str, status: int = 0) -> dict[str, str]:
    """An environment whose `nix` prints `version_line` for --version, counting its calls in folder/calls."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nix"
    script.write_text(f"#!/bin/sh\necho x >> {folder / 'calls'}\necho {json.dumps(version_line)}\nexit {status}\n")
    script.chmod(0o755)
    return {"PATH": str(folder)}


@pytest.mark.parametrize(("line", "number", "has_json_format"), [
    ("nix (Nix) 2.8.0", (2, 8, 0), False),
    ("nix (Nix) 2.26.3", (2, 26, 3), False),
    ("nix (Nix) 2.32.4", (2, 32, 4), False),
    ("nix (Nix) 2.33.0", (2, 33, 0), True),
    ("nix (Nix) 2.34.8", (2, 34, 8), True),
    ("nix (Nix) 2.19", (2, 19, 0), False),
    ("nix (Nix) 2.35.0pre20260601_abcdef", (2, 35, 0), True),
    ("nix (Determinate Nix 3.8.2) 2.30.1", (2, 30, 1), False),
    ("nix (Lix, like Nix) 2.91.1", (2, 91, 1), False),
])
def test_the_version_and_the_path_info_command(tmp_path: Path, line: str, number: tuple[int, int, int],
                                               has_json_format: bool) -> None:
    env = fake_nix(tmp_path, line)
    version = localnix.detect_nix(env)
    assert localnix.nix_version(env) == number and version.number == number
    assert version.has_json_format is has_json_format
    command = localnix.path_info_command(version)
    assert command[:4] == ["nix", "--extra-experimental-features", "nix-command", "path-info"]
    assert ("--json-format" in command) is has_json_format
    if has_json_format:
        assert command[command.index("--json-format") + 1] == "1"


def test_the_version_is_asked_once_per_nix(tmp_path: Path) -> None:
    env = fake_nix(tmp_path / "one", "nix (Nix) 2.26.3")
    for _ in range(3):
        assert localnix.nix_version(env) == (2, 26, 3)
    assert (tmp_path / "one" / "calls").read_text().count("x") == 1
    other = fake_nix(tmp_path / "two", "nix (Nix) 2.34.8")
    assert localnix.nix_version(other) == (2, 34, 8)
    time.sleep(0.01)
    fake_nix(tmp_path / "one", "nix (Nix) 2.34.1")  # replaced in place (another Nix installed): asked again
    assert localnix.nix_version(env) == (2, 34, 1)


@pytest.mark.parametrize(("line", "status", "message"), [
    ("nix (Nix) 2.3.16", 0, r"^/.*/nix is Nix 2\.3\.16; topdeck needs Nix 2\.8 or newer$"),
    ("hello from elsewhere", 0, r"^/.*/nix: is not Nix: `nix --version` said 'hello from elsewhere' \(exit 0\)$"),
    ("nix (Nix) 2.34.8", 1, r"^/.*/nix: is not Nix: `nix --version` said 'nix \(Nix\) 2\.34\.8' \(exit 1\)$"),
])
def test_not_nix_or_too_old_is_one_line(tmp_path: Path, line: str, status: int, message: str) -> None:
    env = fake_nix(tmp_path, line, status)
    with pytest.raises(NixError, match=message):
        localnix.closure([RECORDED_TOP], env=env)
    build = tmp_path / "default.nix"
    build.write_text("{}\n")
    with pytest.raises(NixError, match=message):
        localnix.build(Build("nix", build), log=lambda line: None, env=env)


def test_no_nix_on_path_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(NixError, match=r"^nix: not found \(is Nix installed and on PATH\?\)$"):
        localnix.nix_version({"PATH": str(tmp_path)})


# --- the real Nix of each kind ----------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorNix:
    kind: str
    env: dict[str, str]
    nix_dir: Path  # what is /nix for that Nix, seen from here

    def file(self, path: StorePath | str) -> Path:
        """Where a store path of that Nix is, from this process."""
        return self.nix_dir / str(path).removeprefix("/nix/")

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=300)

    def lines(self, *command: str) -> list[str]:
        result = self.run(*command)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        return result.stdout.split()


def image_root(kind: str) -> Path:
    """The image's root folder, built by topdeck.lab.images when that module is there; skips without it."""
    try:
        from topdeck.lab import images
    except ImportError:
        root = Path("/var/cache/topdeck-lab/images") / kind / "root"
    else:
        try:
            info = images.ensure_image(kind)
        except TopdeckError as error:
            pytest.skip(f"image {kind} is not available: {error}")
        root = Path(info.root) if getattr(info, "root", "") else images.image_dir() / kind / "root"
    if not (root / "usr" / "bin" / "nix").is_file():
        pytest.skip(f"image {kind} has no root with Nix at {root} yet")
    return root


@pytest.fixture(scope="module", params=KINDS)
def operator(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> OperatorNix:
    kind = request.param
    if shutil.which("nix-build") is None:
        pytest.skip("needs Nix")
    if kind == opnix.NATIVE:
        return OperatorNix(kind, opnix.native_env(), Path("/nix"))
    if os.geteuid() != 0:
        pytest.skip("an image's Nix runs in a mount namespace: needs root")
    work = tmp_path_factory.mktemp(f"opnix-{kind}")
    env = opnix.image_env(image_root(kind), work / "nix", work / "tools")
    return OperatorNix(kind, env, work / "nix")


def derivation_file(folder: Path, script: str, name: str = "versions-test") -> Path:
    return nixtools.derivation_file(folder, script, name)


@pytest.fixture(scope="module")
def closure_top(operator: OperatorNix, tmp_path_factory: pytest.TempPathFactory) -> StorePath:
    """A closure of four paths with references (one to itself) and derivers, built by that Nix."""
    folder = tmp_path_factory.mktemp(f"closure-{operator.kind}")
    file = folder / "closure.nix"
    nonce = uuid.uuid4().hex
    file.write_text(
        "let\n"
        '  mk = name: script: builtins.derivation { inherit name; nonce = "' + nonce + '";\n'
        '    system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "/bin/mkdir $out && ${script}" ]; };\n'
        '  zlib = mk "zlib-1.3.1" "echo zlib > $out/data";\n'
        '  big = mk "bigdata-1.0" "/usr/bin/head -c 3000000 /dev/zero > $out/zeros";\n'
        '  openssl = mk "openssl-3.0.13-bin" "echo ${zlib} > $out/refs; echo $out > $out/self";\n'
        'in mk "app-1.0" "echo ${zlib} ${openssl} ${big} > $out/refs"\n'
    )
    return localnix.build(Build("nix", file), log=lambda line: None, env=operator.env)


@pytest.fixture
def stderr_of_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The stderr of every command localnix runs to completion (path-info, nix --version)."""
    seen: list[str] = []
    original = localnix._run

    def spy(command: list[str], env):  # type: ignore[no-untyped-def]
        result = original(command, env)
        seen.append(result.stderr)
        return result

    monkeypatch.setattr(localnix, "_run", spy)
    yield seen


def test_the_version_is_the_kind_s_nix(operator: OperatorNix) -> None:
    version = localnix.detect_nix(operator.env)
    assert version.implementation == "Nix"
    assert version.number[:2] == EXPECTED_VERSIONS[operator.kind]
    command = localnix.path_info_command(version)
    assert ("--json-format" in command) is (operator.kind == "sid")


def test_closure_is_nix_store_qR_and_path_info(operator: OperatorNix, closure_top: StorePath,
                                               stderr_of_runs: list[str]) -> None:
    infos = localnix.closure([closure_top], env=operator.env)
    assert [info.path.name for info in infos][-1] == "app-1.0" and len(infos) == 4
    assert {str(info.path) for info in infos} == set(operator.lines("nix-store", "-qR", str(closure_top)))
    # Nix's own path-info, read here without localnix's parser: the 2.8 list or the 2.19+ object.
    version = localnix.detect_nix(operator.env)
    form = ["--json-format", "1"] if version.has_json_format else []
    raw = json.loads(operator.run("nix", "path-info", "--json", *form, "-r", str(closure_top)).stdout)
    entries = {entry["path"]: entry for entry in raw} if isinstance(raw, list) else raw
    assert set(entries) == {str(info.path) for info in infos}
    for info in infos:
        entry = entries[str(info.path)]
        assert hash_to_sri(info.nar_hash) == entry["narHash"]
        assert info.nar_size == entry["narSize"]
        assert [str(path) for path in info.references] == sorted(entry["references"])
        assert str(info.deriver) == entry["deriver"]
        assert {str(path) for path in info.references} == set(
            operator.lines("nix-store", "-q", "--references", str(info.path)))
    assert stderr_of_runs and not any(stderr.strip() for stderr in stderr_of_runs), stderr_of_runs


def test_without_json_format_2_34_warns_and_localnix_does_not(operator: OperatorNix, closure_top: StorePath) -> None:
    plain = operator.run("nix", "path-info", "--json", "-r", str(closure_top))
    assert plain.returncode == 0
    assert ("deprecated" in plain.stderr) is (operator.kind == "sid"), plain.stderr
    ours = operator.run(*localnix.path_info_command(localnix.detect_nix(operator.env)), str(closure_top))
    assert ours.returncode == 0 and ours.stderr == ""


def test_the_recorded_closure_is_what_this_nix_prints(operator: OperatorNix, tmp_path: Path) -> None:
    work = tmp_path / "recorded"
    shutil.copytree(DATA, work)
    top = localnix.build(Build("nix", work / "closure.nix"), log=lambda line: None, env=operator.env)
    assert str(top) == RECORDED_TOP
    live = localnix.closure([top], env=operator.env)
    # Signatures aside: the recordings were signed with a throwaway key; this store may not be.
    assert [replace(info, sigs=()) for info in live] == [replace(info, sigs=()) for info in recorded("nix-2.8.0.json")]


def test_nar_stream_hashes_to_the_nar_hash(operator: OperatorNix, closure_top: StorePath) -> None:
    for info in localnix.closure([closure_top], env=operator.env):
        digest, size = hashlib.sha256(), 0
        with localnix.nar_stream(info.path, env=operator.env) as stream:
            while chunk := stream.read(64 * 1024):
                digest.update(chunk)
                size += len(chunk)
        assert digest.digest() == info.nar_hash, info.path
        assert size == info.nar_size


def test_a_missing_path_is_one_line(operator: OperatorNix, closure_top: StorePath) -> None:
    with pytest.raises(NixError) as caught:
        localnix.closure([closure_top, ABSENT], env=operator.env)
    assert str(caught.value) == f"{ABSENT}: not in the local store"
    # 2.8: "getting status of '<path>': No such file or directory"; 2.26, 2.34: "path '/<path>' does not exist"
    with pytest.raises(NixError, match=f"^{ABSENT}: nix-store --dump failed: .*(No such file|does not exist)"):
        with localnix.nar_stream(ABSENT, env=operator.env) as stream:
            while stream.read(4096):
                pass


def test_build_streams_its_log_live_and_returns_the_path(operator: OperatorNix, tmp_path: Path) -> None:
    file = derivation_file(tmp_path, "echo first line from the builder; /bin/sleep 1; echo done > $out")
    seen: list[tuple[float, str]] = []
    path = localnix.build(Build("nix", file), log=lambda line: seen.append((time.monotonic(), line)), env=operator.env)
    finished = time.monotonic()
    assert path.name == "versions-test"
    assert operator.file(path).read_text() == "done\n"
    first = next(when for when, line in seen if line == "first line from the builder")
    assert finished - first > 0.7, "the line came only at the end"
    assert any(line.startswith("building '/nix/store/") for _, line in seen)
    assert not any("deprecat" in line.lower() or "warning" in line.lower() for _, line in seen), seen


def test_a_failing_build_names_the_exit_code(operator: OperatorNix, tmp_path: Path) -> None:
    file = derivation_file(tmp_path, "echo about to fail; echo oops >&2; exit 3")
    lines: list[str] = []
    with pytest.raises(NixError) as caught:
        localnix.build(Build("nix", file), log=lines.append, env=operator.env)
    message = str(caught.value)
    assert "\n" not in message and "about to fail" in lines and "oops" in lines
    if operator.kind == "sid":  # two lines of Nix's, joined
        assert message.startswith(f"{file}: build failed: Cannot build '/nix/store/")
        assert message.endswith("-versions-test.drv'. Reason: builder failed with exit code 3.")
    else:
        assert message.startswith(f"{file}: build failed: builder for '/nix/store/")
        assert message.endswith("-versions-test.drv' failed with exit code 3")


def test_an_evaluation_error_gives_its_first_line(operator: OperatorNix, tmp_path: Path) -> None:
    file = tmp_path / "broken.nix"
    file.write_text("{ x = ; }\n")
    with pytest.raises(NixError, match=r"broken\.nix: build failed: syntax error, unexpected ';'$"):
        localnix.build(Build("nix", file), log=lambda line: None, env=operator.env)


@pytest.mark.alone
def test_cancel_stops_the_build_and_its_builder(operator: OperatorNix, tmp_path: Path) -> None:
    pid_file = tmp_path / "builder.pid"
    file = derivation_file(tmp_path, f"echo $$ > {pid_file}; echo sleeping; exec /bin/sleep 30")
    cancel = threading.Event()
    marks: dict[str, float] = {}

    def log(line: str) -> None:
        if line == "sleeping":
            marks["cancel"] = time.monotonic()
            cancel.set()

    with pytest.raises(Cancelled, match=r"build cancelled$"):
        localnix.build(Build("nix", file), log=log, cancel=cancel, env=operator.env)
    assert time.monotonic() - marks["cancel"] < 15  # the builder sleeps 30 s: ending well before is the proof
    builder = Path(f"/proc/{pid_file.read_text().strip()}/stat")
    deadline = time.monotonic() + 10
    while builder.exists() and builder.read_text().split(") ")[-1][0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not builder.exists() or builder.read_text().split(") ")[-1][0] == "Z", "the builder still runs"


# --- the wrappers -----------------------------------------------------------------------------------


def test_wrappers_quote_every_path(tmp_path: Path) -> None:
    odd = tmp_path / "it's a $(store) with spaces"
    script = opnix.wrapper_script("nix-store", odd / "ld.so", f"{odd}/usr/lib", odd / "nix", odd / "store")
    assert script.startswith("#!/bin/sh\n")
    command = script.splitlines()[-1]
    # Parsed back by the shell (echoing instead of running), every word comes out as it went in.
    echo = command.replace("exec unshare", "printf '%s\\n'", 1)
    echoed = subprocess.run(["/bin/sh", "-c", echo, "sh", "arg 1"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert echoed == ["--mount", "--propagation", "private", "/bin/sh", "-c",
                      'mount --bind "$1" /nix && shift && exec "$@"', "sh", str(odd / "store"), str(odd / "ld.so"),
                      "--library-path", f"{odd}/usr/lib", "--argv0", "nix-store", str(odd / "nix"), "arg 1"]


def test_an_image_root_without_nix_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    (tmp_path / "root" / "lib64").mkdir(parents=True)
    (tmp_path / "root" / "lib64" / "ld-linux-x86-64.so.2").write_text("")
    with pytest.raises(TopdeckError, match="has no usr/bin/nix"):
        opnix.image_env(tmp_path / "root", tmp_path / "store", tmp_path / "tools")
