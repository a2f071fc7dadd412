"""core.nix.localnix against the real Nix: closures checked against nix-store -qR and nix path-info, NAR streams
against their NarHash, and builds with a live log, cancel and failures (what needs no Nix is in the unit tier's
tests/unit/test_localnix.py)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from nixtools import derivation_file

from topdeck.core.errors import Cancelled, NixError
from topdeck.core.inventory import Build
from topdeck.core.nix import localnix
from topdeck.core.nix.narinfo import hash_to_sri
from topdeck.core.nix.store import parse_store_path
from topdeck.lab import factory
from topdeck.lab.factory import KiB, MiB, Package

pytestmark = pytest.mark.skipif(shutil.which("nix-build") is None, reason="needs Nix")

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFRvcGRlY2sgbG9jYWxuaXggdGVzdCBrZXkgMTIzNDU2 test@topdeck"
BIG = Package("bigdata", "1.0", 4 * MiB, ("out",), ("glibc",))
ABSENT = "/nix/store/00000000000000000000000000000000-topdeck-absent-1.0"


@pytest.fixture(scope="module")
def toplevel(tmp_path_factory: pytest.TempPathFactory) -> str:
    spec = factory.initial_system([KEY], host="localnix", count=14, total_size=2 * MiB)
    spec = factory.add_package(spec, BIG)
    # The out-link in the module's temporary folder keeps the closure from garbage collection.
    return factory.build(spec, tmp_path_factory.mktemp("toplevel"))


@pytest.fixture(scope="module")
def infos(toplevel: str) -> list[localnix.PathInfo]:
    return localnix.closure([toplevel])


def nix_lines(*command: str) -> list[str]:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()


# --- closure ----------------------------------------------------------------------------------------


def test_closure_is_nix_store_qR(toplevel: str, infos: list[localnix.PathInfo]) -> None:
    paths = [str(info.path) for info in infos]
    assert len(paths) == len(set(paths))
    assert set(paths) == set(nix_lines("nix-store", "-qR", toplevel))
    assert len(paths) > 20


def test_hashes_sizes_and_derivers_are_nix_path_info(toplevel: str, infos: list[localnix.PathInfo]) -> None:
    # Read here without localnix's parser: Nix 2.8's list, or the object keyed by path of 2.19 and later.
    form = ["--json-format", "1"] if localnix.detect_nix().has_json_format else []
    raw = json.loads(subprocess.run(["nix", "path-info", "--json", *form, "-r", toplevel], check=True,
                                    capture_output=True, text=True).stdout)
    expected = {entry["path"]: entry for entry in raw} if isinstance(raw, list) else raw
    for info in infos:
        entry = expected[str(info.path)]
        assert hash_to_sri(info.nar_hash) == entry["narHash"]
        assert len(info.nar_hash) == 32
        assert info.nar_size == entry["narSize"]
        assert [str(path) for path in info.references] == sorted(entry["references"])
        assert str(info.deriver) == entry["deriver"]
        assert info.ca == "" and info.sigs == ()


def test_references_are_nix_store_q_references(infos: list[localnix.PathInfo]) -> None:
    for info in infos:
        expected = set(nix_lines("nix-store", "-q", "--references", str(info.path)))
        assert {str(path) for path in info.references} == expected


def test_references_come_before_referrers(toplevel: str, infos: list[localnix.PathInfo]) -> None:
    position = {info.path: index for index, info in enumerate(infos)}
    for info in infos:
        for reference in info.references:
            if reference != info.path:
                assert position[reference] < position[info.path], (reference, info.path)
    assert str(infos[-1].path) == toplevel  # everything else is in its closure
    assert infos[0].references in ((), (infos[0].path,))


def test_order_does_not_depend_on_input_order(infos: list[localnix.PathInfo]) -> None:
    assert localnix.topological(reversed(infos)) == infos
    assert localnix.topological(sorted(infos, key=lambda info: info.nar_size)) == infos


def test_closure_of_several_paths_is_their_union(toplevel: str, infos: list[localnix.PathInfo]) -> None:
    glibc = next(info.path for info in infos if info.path.name == "glibc-2.39")
    both = localnix.closure([glibc, toplevel, toplevel])
    assert both == infos
    assert localnix.closure([]) == []


def test_a_missing_path_is_one_line(toplevel: str) -> None:
    with pytest.raises(NixError) as caught:
        localnix.closure([toplevel, ABSENT])
    assert str(caught.value) == f"{ABSENT}: not in the local store"


def test_a_derivation_is_refused(infos: list[localnix.PathInfo]) -> None:
    deriver = infos[-1].deriver
    assert deriver is not None
    with pytest.raises(NixError, match=r"\.drv: is a derivation"):
        localnix.closure([deriver])


# --- NAR streams ------------------------------------------------------------------------------------


def test_nar_stream_hashes_to_the_nar_hash_read_in_chunks(infos: list[localnix.PathInfo]) -> None:
    big = next(info for info in infos if info.path.name == BIG.name)
    assert big.nar_size > 3 * MiB
    digest, size, chunks = hashlib.sha256(), 0, 0
    with localnix.nar_stream(big.path) as stream:
        while chunk := stream.read(64 * KiB):
            assert len(chunk) <= 64 * KiB
            digest.update(chunk)
            size += len(chunk)
            chunks += 1
    assert digest.digest() == big.nar_hash
    assert size == big.nar_size
    assert chunks >= 48


def test_nar_stream_of_a_small_path_and_of_text(infos: list[localnix.PathInfo]) -> None:
    small = min(infos, key=lambda info: info.nar_size)
    with localnix.nar_stream(str(small.path)) as stream:
        data = stream.read()
    assert hashlib.sha256(data).digest() == small.nar_hash


@pytest.mark.alone
def test_stopping_early_kills_the_dump(infos: list[localnix.PathInfo]) -> None:
    big = next(info for info in infos if info.path.name == BIG.name)
    started = time.monotonic()
    with localnix.nar_stream(big.path) as stream:
        assert stream.read(1000)[:21] == b"\x0d\x00\x00\x00\x00\x00\x00\x00nix-archive-1"
    with pytest.raises(RuntimeError, match="cancelled"):
        with localnix.nar_stream(big.path) as stream:
            stream.read(1000)
            raise RuntimeError("cancelled")
    assert time.monotonic() - started < 5


def test_a_failed_dump_raises_instead_of_ending() -> None:
    # nix-store --dump writes the NAR's first bytes before it finds the path missing.
    # Nix 2.8: "getting status of '<path>': No such file or directory"; 2.26, 2.34: "path '/<path>' does not exist".
    missing = "(No such file or directory|does not exist)"
    with pytest.raises(NixError, match=f"^{ABSENT}: nix-store --dump failed: .*{missing}"):
        with localnix.nar_stream(ABSENT) as stream:
            while stream.read(4096):
                pass
    with pytest.raises(NixError, match="nix-store --dump failed"):
        with localnix.nar_stream(ABSENT):
            time.sleep(0.2)  # not read at all: the failure shows on leaving


# --- builds -----------------------------------------------------------------------------------------


def test_build_streams_its_log_live(tmp_path: Path) -> None:
    file = derivation_file(tmp_path, "echo first line from the builder; /bin/sleep 1; echo done > $out")
    seen: list[tuple[float, str]] = []
    path = localnix.build(Build("nix", file), log=lambda line: seen.append((time.monotonic(), line)))
    finished = time.monotonic()
    assert path == parse_store_path(str(path)) and path.name == "localnix-test"
    assert Path(str(path)).read_text() == "done\n"
    first = next(when for when, line in seen if line == "first line from the builder")
    assert finished - first > 0.7, "the line came only at the end"
    assert all("\n" not in line for _, line in seen)


# Cancelling a running build: tests/lab/test_nix_versions.py, on every Nix the lab has.


@pytest.mark.alone
def test_a_cancel_set_before_the_build_stops_it_at_once(tmp_path: Path) -> None:
    file = derivation_file(tmp_path, "/bin/sleep 30")
    cancel = threading.Event()
    cancel.set()
    started = time.monotonic()
    with pytest.raises(Cancelled, match="build cancelled"):
        localnix.build(Build("nix", file), log=lambda line: None, cancel=cancel)
    assert time.monotonic() - started < 3


def test_a_failing_build_names_the_file_and_the_first_error(tmp_path: Path) -> None:
    file = derivation_file(tmp_path, "echo about to fail; echo oops >&2; exit 3")
    lines: list[str] = []
    with pytest.raises(NixError) as caught:
        localnix.build(Build("nix", file), log=lines.append)
    message = str(caught.value)
    # Nix 2.8 and 2.26 say the first; 2.34 says "Cannot build '<drv>'." and, indented below, "Reason: ...".
    drv = r"'/nix/store/[0-9a-z]{32}-localnix-test\.drv'"
    assert re.fullmatch(re.escape(f"{file}: build failed: ") + f"(builder for {drv} failed with exit code 3|"
                        f"Cannot build {drv}\\. Reason: builder failed with exit code 3\\.)", message), message
    assert "\n" not in message
    assert "about to fail" in lines and "oops" in lines


def test_an_evaluation_error_gives_its_first_line(tmp_path: Path) -> None:
    file = tmp_path / "broken.nix"
    file.write_text("{ x = ; }\n")
    with pytest.raises(NixError, match=r"broken\.nix: build failed: syntax error, unexpected ';'$"):
        localnix.build(Build("nix", file), log=lambda line: None)


def test_an_expression_with_several_paths_is_refused(tmp_path: Path) -> None:
    one = derivation_file(tmp_path, "echo 1 > $out", name="one")
    two = derivation_file(tmp_path, "echo 2 > $out", name="two")
    file = tmp_path / "both.nix"
    file.write_text(f"[ (import {one}) (import {two}) ]\n")
    with pytest.raises(NixError, match="builds 2 store paths; expected one toplevel"):
        localnix.build(Build("nix", file), log=lambda line: None)


def test_a_nixos_build_uses_nixpkgs_nixos_with_the_configuration(tmp_path: Path) -> None:
    # A stand-in for nixpkgs: <nixpkgs/nixos> takes the configuration from <nixos-config>, as the real one does.
    nixos = tmp_path / "fake-nixpkgs" / "nixos"
    nixos.mkdir(parents=True)
    (nixos / "default.nix").write_text("{ configuration ? <nixos-config> }: { system = import configuration; }\n")
    config = derivation_file(tmp_path, "echo nixos > $out", name="nixos-system-mail-1")
    built = localnix.build(Build("nixos", config), log=lambda line: None,
                           nix_path_args=("-I", f"nixpkgs={tmp_path / 'fake-nixpkgs'}"))
    assert built.name == "nixos-system-mail-1"
    assert localnix.build_command(Build("nixos", config)) == [
        "nix-build", "<nixpkgs/nixos>", "-A", "system", "-I", f"nixos-config={config}", "--no-out-link"]
