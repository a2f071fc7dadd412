"""core.nix.localnix without Nix: the recorded `nix path-info --json` forms of Nix 2.8, 2.26 and 2.34
(tests/data/path-info/) parse to one closure, in dependency order; values that are not store paths are refused
before any Nix runs; the build command lines. tests/lab/test_localnix_nix.py and tests/lab/test_nix_versions.py
run the real Nix."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from topdeck.core.errors import NixError, StorePathError
from topdeck.core.inventory import Build
from topdeck.core.nix import localnix, nixbase32
from topdeck.core.nix.narinfo import hash_to_sri
from topdeck.core.nix.store import parse_store_path

DATA = Path(__file__).resolve().parents[1] / "data" / "path-info"
RECORDINGS = sorted(DATA.glob("*.json"))
RECORDED_TOP = "/nix/store/g11ini5llddcw1j6avc0gjxj04qq00h0-topdeck-fixture-c-3.0"
ABSENT = "/nix/store/00000000000000000000000000000000-topdeck-absent-1.0"
TOP = "/nix/store/" + "1" * 32 + "-nixos-system-web-1"


def recorded(name: str) -> list[localnix.PathInfo]:
    return localnix.parse_path_info_json((DATA / name).read_text())


# --- the recordings ---------------------------------------------------------------------------------


def test_the_recordings_are_the_forms_the_module_describes() -> None:
    assert [path.name for path in RECORDINGS] == [
        "nix-2.26.3.json", "nix-2.34.8-json-format-1.json", "nix-2.34.8-json-format-2.json", "nix-2.34.8.json",
        "nix-2.8.0.json"]
    old = json.loads((DATA / "nix-2.8.0.json").read_text())
    assert isinstance(old, list) and all("path" in entry for entry in old)
    keyed = json.loads((DATA / "nix-2.26.3.json").read_text())
    assert RECORDED_TOP in keyed and "path" not in keyed[RECORDED_TOP] and keyed[RECORDED_TOP]["ca"] is None
    for name in ("nix-2.34.8.json", "nix-2.34.8-json-format-1.json"):
        entry = json.loads((DATA / name).read_text())[RECORDED_TOP]
        assert entry["version"] == 1 and entry["storeDir"] == "/nix/store"
    wrapped = json.loads((DATA / "nix-2.34.8-json-format-2.json").read_text())
    assert wrapped["version"] == 2 and wrapped["storeDir"] == "/nix/store"
    entry = wrapped["info"][RECORDED_TOP.removeprefix("/nix/store/")]
    assert entry["deriver"].endswith("-topdeck-fixture-c-3.0.drv") and "/" not in entry["deriver"]
    assert entry["references"] and not any("/" in reference for reference in entry["references"])


@pytest.mark.parametrize("recording", [path.name for path in RECORDINGS])
def test_every_recording_parses_to_the_same_closure(recording: str) -> None:
    infos = recorded(recording)
    assert infos == recorded("nix-2.8.0.json")  # paths, hashes, sizes, references, derivers, ca, signatures
    by_name = {info.path.name: info for info in infos}
    assert list(by_name) == ["topdeck-fixture-a-1.0", "topdeck-fixture-b-2.0", "topdeck-fixture-note", "source.txt",
                             "topdeck-fixture-c-3.0"]
    top = by_name["topdeck-fixture-c-3.0"]
    assert str(top.path) == RECORDED_TOP
    assert hash_to_sri(top.nar_hash) == "sha256-X4NXPVTuzA1fjkkRO0gzoy3T6Qpcxf5b3A3TJ7iXXvo=" and top.nar_size == 536
    assert [reference.name for reference in top.references] == [
        "topdeck-fixture-a-1.0", "topdeck-fixture-b-2.0", "topdeck-fixture-note", "source.txt"]
    assert str(top.deriver) == "/nix/store/71h75pbwqfgk1acgbyc716pjb48z0cfb-topdeck-fixture-c-3.0.drv"
    assert top.ca == "" and len(top.sigs) == 1 and top.sigs[0].startswith("topdeck-fixture-1:")
    b = by_name["topdeck-fixture-b-2.0"]
    assert b.path in b.references  # the self-reference survives every form
    # The structured "ca" of --json-format 2 becomes the string that 2.8 prints and narinfos carry.
    assert by_name["topdeck-fixture-note"].ca == "text:sha256:1g9fj5z3zfkzlg82k9cvhizrya73p3g0m9rik6cwdmaj6qkn4gza"
    assert by_name["source.txt"].ca == "fixed:r:sha256:16085vlkz49l57x0zg7h8006w2xsydn2gmq5znik5b503b7vhg6w"
    assert by_name["source.txt"].deriver is None


@pytest.mark.parametrize("form", ["sri", "nix32", "base16", "base64"])
def test_every_nar_hash_form_gives_the_same_digest(form: str) -> None:
    document = json.loads((DATA / "nix-2.26.3.json").read_text())
    for entry in document.values():
        digest = base64.b64decode(entry["narHash"].removeprefix("sha256-"))
        entry["narHash"] = {
            "sri": f"sha256-{base64.b64encode(digest).decode()}",
            "nix32": f"sha256:{nixbase32.encode(digest)}",
            "base16": f"sha256:{digest.hex()}",
            "base64": f"sha256:{base64.b64encode(digest).decode()}",
        }[form]
    assert localnix.parse_path_info_json(json.dumps(document)) == recorded("nix-2.26.3.json")


def test_structured_content_addresses_of_every_method() -> None:
    document = json.loads((DATA / "nix-2.34.8-json-format-2.json").read_text())
    entry = document["info"]["xxqpiq4fk2plbr0k7m7m3j1vqr27459s-source.txt"]
    sha1 = hashlib.sha1(b"x").digest()
    cases = {
        ("flat", "sha256-3Dy4zxqgrDKj/QXXJ2zzugtuAEDwvA/6KTSRP+kuCJg="):
            "fixed:sha256:16085vlkz49l57x0zg7h8006w2xsydn2gmq5znik5b503b7vhg6w",
        ("git", f"sha1-{base64.b64encode(sha1).decode()}"): f"fixed:git:sha1:{nixbase32.encode(sha1)}",
        ("nar", f"sha1-{base64.b64encode(sha1).decode()}"): f"fixed:r:sha1:{nixbase32.encode(sha1)}",
    }
    for (method, digest), expected in cases.items():
        entry["ca"] = {"method": method, "hash": digest}
        source = next(info for info in localnix.parse_path_info_json(json.dumps(document))
                      if info.path.name == "source.txt")
        assert source.ca == expected


@pytest.mark.parametrize(("change", "message"), [
    (lambda doc: doc.update(version=3), "JSON format version 3"),
    (lambda doc: doc.update(storeDir="/gnu/store"), "store directory '/gnu/store'"),
    (lambda doc: next(iter(doc["info"].values())).update(ca={"method": "magic", "hash": "x"}), "method 'magic'"),
    (lambda doc: next(iter(doc["info"].values())).update(references=["/nix/store/x"]), "basename"),
    (lambda doc: next(iter(doc["info"].values())).update(narHash="md5-AAAA"), "not a sha256 hash"),
    (lambda doc: next(iter(doc["info"].values())).update(narSize=True), "narSize True"),
])
def test_a_malformed_document_is_one_line(change, message: str) -> None:
    document = json.loads((DATA / "nix-2.34.8-json-format-2.json").read_text())
    change(document)
    with pytest.raises(NixError, match="^nix path-info printed something unexpected: .*" + message) as caught:
        localnix.parse_path_info_json(json.dumps(document))
    assert "\n" not in str(caught.value)


def test_an_invalid_path_in_any_form_is_not_in_the_local_store() -> None:
    for document in ({ABSENT: None}, [{"path": ABSENT, "valid": False}]):
        with pytest.raises(NixError, match=f"^{ABSENT}: not in the local store$"):
            localnix.parse_path_info_json(json.dumps(document))


# --- the version (fake `nix` executables) -----------------------------------------------------------


# --- dependency order -------------------------------------------------------------------------------


def info(name: str, *references: str) -> localnix.PathInfo:
    def path(text: str):
        return parse_store_path(f"/nix/store/{hashlib.sha1(text.encode()).hexdigest()[:32].translate(_NIX32)}-{text}")

    return localnix.PathInfo(path(name), bytes(32), 100, tuple(path(reference) for reference in references))


_NIX32 = str.maketrans("e", "z")  # hex digits that nix-base32 lacks (only e) swapped for one it has


def test_topological_puts_references_first_whatever_the_input_order() -> None:
    infos = [info("app", "lib", "app"), info("lib", "libc"), info("libc"), info("tool", "libc")]
    order = [i.path.name for i in localnix.topological(infos)]
    assert order.index("libc") < order.index("lib") < order.index("app") and order.index("libc") < order.index("tool")
    assert localnix.topological(reversed(infos)) == localnix.topological(infos)
    assert localnix.topological([]) == []


def test_a_reference_missing_from_the_closure_or_a_cycle_is_one_line() -> None:
    with pytest.raises(NixError, match=r"-app: its reference /nix/store/\w+-lib is missing from the closure$"):
        localnix.topological([info("app", "lib")])
    with pytest.raises(NixError, match=r"reference cycle through /nix/store/\w+-(a|b)$"):
        localnix.topological([info("a", "b"), info("b", "a")])


# --- refused before Nix runs (the unit tier refuses to start a process: reaching Nix would fail here) ----------


@pytest.mark.parametrize("bad", ["/tmp/x", f"{TOP}/bin", "nix/store/x", "", f"{TOP}\n"])
def test_a_value_that_is_not_a_store_path_is_refused_before_nix_runs(bad: str) -> None:
    with pytest.raises(StorePathError, match="is not a Nix store path"):
        localnix.closure([TOP, bad], env={"PATH": "/nonexistent"})


def test_a_derivation_is_refused_before_nix_runs() -> None:
    with pytest.raises(NixError, match=r"-web-1\.drv: is a derivation; give the store paths it builds$"):
        localnix.closure([TOP + ".drv"])
    assert localnix.closure([]) == []


def test_nar_stream_refuses_a_value_that_is_not_a_store_path() -> None:
    with pytest.raises(StorePathError):
        with localnix.nar_stream("/etc"):
            pass


def test_building_a_missing_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "default.nix"
    with pytest.raises(NixError) as caught:
        localnix.build(Build("nix", missing), log=lambda line: None)
    assert str(caught.value) == f"{missing}: not found"


# --- command lines ----------------------------------------------------------------------------------


def test_the_build_commands() -> None:
    config = Path("/srv/hosts/mail/configuration.nix")
    assert localnix.build_command(Build("nixos", config)) == [
        "nix-build", "<nixpkgs/nixos>", "-A", "system", "-I", f"nixos-config={config}", "--no-out-link"]
    assert localnix.build_command(Build("nix", Path("/srv/web.nix")), ("-I", "nixpkgs=/src/nixpkgs")) == [
        "nix-build", "/srv/web.nix", "-I", "nixpkgs=/src/nixpkgs", "--no-out-link"]
    with pytest.raises(NixError, match="unknown build kind 'flake'"):
        localnix.build_command(Build("flake", config))


@pytest.mark.parametrize(("implementation", "number", "json_format"), [
    ("Nix", (2, 8, 0), False), ("Nix", (2, 32, 9), False), ("Nix", (2, 33, 0), True), ("Nix", (2, 34, 8), True),
    ("Determinate Nix 3.8.2", (2, 33, 1), True), ("Lix, like Nix", (2, 91, 1), False),
])
def test_path_info_asks_for_json_format_1_where_nix_has_it(implementation: str, number, json_format: bool) -> None:
    version = localnix.NixVersion(implementation, number)
    command = localnix.path_info_command(version)
    assert command[:4] == ["nix", "--extra-experimental-features", "nix-command", "path-info"]
    assert ("--json-format" in command) is json_format and command.count("--json") == 1
    assert command[-3:] == ["--option", "substitute", "false"]
    assert str(version) == f"{implementation} {'.'.join(map(str, number))}"
