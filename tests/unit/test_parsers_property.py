"""Property-based tests of every parser of outside input (a host, the bucket, Nix, an ssh_config, the inventory).

For arbitrary text each parser returns a well-formed value or raises topdeck's own error (a TopdeckError), never
another exception; where a renderer exists, what it writes reads back equal. No lab, no root.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from topdeck.core import strict
from topdeck.core.cache.manifest import Manifest, ManifestPath, parse_manifest, render_manifest
from topdeck.core.deploy import _Tracker
from topdeck.core.errors import TopdeckError
from topdeck.core.events import Event, Progress
from topdeck.core.inventory import Host, SSHConfig, load_inventory
from topdeck.core.nix.localnix import parse_path_info_json
from topdeck.core.nix.narinfo import Narinfo, parse_narinfo, render_narinfo
from topdeck.core.nix.nixbase32 import ALPHABET
from topdeck.core.nix.store import StorePath
from topdeck.core.plan import parse_probe
from topdeck.core.remote import hostverbs
from topdeck.core.remote.hostverbs import ProgressLine, parse_line, parse_status
from topdeck.core.remote.ssh import Result, _Stream
from topdeck.core.remote.sshroute import route
from topdeck.core.runs import load_run

settings.register_profile("topdeck", deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("topdeck")

U64 = 2**64 - 1

# Numbers as a host might send them: ASCII, huge, signed, spaced, and the digits str.isdigit() takes that int() refuses.
digitlike = st.text(alphabet="0123456789²³¹٣٠߀", min_size=1, max_size=4)  # str.isdigit() takes all of these
numbers = st.one_of(
    digitlike,
    st.sampled_from(["²", "٣", "1²", "²²", "١٢٣", " 7", "7 ", "0x10", "1e3", "+1", "-1", "1_000", "0" * 30 + "1",
                     str(2**64), "1" + "0" * 400, "9" * 5000, ""]),
    st.integers(min_value=-(10**30), max_value=10**500).map(str),
    st.text(alphabet="0123456789²³¹٣٠߀①⁴ +-_.e", max_size=8),
)
# Text fields: anything, with the protocol's separators and control characters likely.
words = st.one_of(st.text(max_size=40), st.text(alphabet="\t \r\x1b[]/$'\"\\\x00abc", max_size=20), numbers)


def fields(kinds: list[str], width: int = 5) -> st.SearchStrategy[str]:
    """A tab-separated line: a known kind then digits of any script, or any kind then numbers and words."""
    def join(kind: str, rest: list[str]) -> str:
        return "\t".join([kind, *rest])

    numeric = st.builds(join, st.sampled_from(kinds), st.lists(digitlike, min_size=1, max_size=width))
    free = st.builds(join, st.one_of(st.sampled_from(kinds), words),
                     st.lists(st.one_of(numbers, words), max_size=width))
    return numeric | free


def lines(kinds: list[str]) -> st.SearchStrategy[str]:
    return st.lists(st.one_of(fields(kinds), words), max_size=12).map("\n".join)


hashes = st.text(alphabet=ALPHABET, min_size=32, max_size=32)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789+-._?=", min_size=1, max_size=30).filter(
    lambda n: not n.startswith("."))
store_paths = st.builds(StorePath, hashes, names)
digests = st.binary(min_size=32, max_size=32)
one_line = st.text(max_size=30).map(lambda t: t.replace("\n", " "))


# --- host-script lines (deploy, status, generations, closures) ------------------------------------------

SCRIPT_KINDS = ["phase", "progress", "current", "log", "state", "result", "confirm"]


@given(fields(SCRIPT_KINDS))
@example("progress\t1\t²\t0\t0")
def test_a_host_script_line_is_always_read_into_a_record(text: str) -> None:
    found = parse_line(text)
    if isinstance(found, ProgressLine):
        assert all(isinstance(n, int) and 0 <= n <= U64 for n in vars(found).values())


@given(lines(["current", "booted", "profile", "generation", "boot-id", "last-run", "needs-reboot", "deploying",
              "result"]))
@example("generation\t²")
def test_a_status_answer_is_always_read(text: str) -> None:
    report = parse_status(text)
    assert isinstance(report.generation, int) and 0 <= report.generation <= U64


class _Answer:
    """A session whose every command prints `text`."""

    host = Host("web-1", "10.0.0.1", "web")

    def __init__(self, text: str):
        self.text = text

    def run(self, *_: object, **__: object) -> Result:
        return Result(0, self.text.encode(errors="surrogatepass"), b"")


@given(lines(["generation", "closure", "result"]))
def test_generations_and_closures_answers_are_read_or_refused_in_one_line(text: str) -> None:
    session = _Answer(text)
    for read in (lambda: hostverbs.generations(session),  # type: ignore[arg-type]
                 lambda: hostverbs.closures(session, StorePath("0" * 32, "x"))):  # type: ignore[arg-type]
        try:
            read()
        except TopdeckError:
            pass


@given(st.lists(fields([*SCRIPT_KINDS, "state\tgeneration", "state\tswitch-code"]), max_size=20))
def test_a_deploy_follows_any_host_output_without_an_exception(texts: list[str]) -> None:
    events: list[Event] = []
    track = _Tracker("web-1", events.append, lambda: None)
    for text in texts:
        track.line(text)
    assert all(0 <= p.paths_done <= U64 for p in events if isinstance(p, Progress))
    assert track.switch_code is None or 0 <= track.switch_code <= 255


# --- probe lines (plan) -----------------------------------------------------------------------------------


@given(lines(["current", "booted", "generation", "free_kib", "missing", "have", "error"]))
def test_a_probe_answer_is_read_or_refused_in_one_line(text: str) -> None:
    try:
        state = parse_probe(text, "web-1")
    except TopdeckError as error:
        assert "\n" not in str(error)
        return
    assert 0 <= state.free_bytes <= 2**63 and 0 <= state.generation <= 2**53


# --- narinfo ----------------------------------------------------------------------------------------------

NARINFO_KEYS = ["StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize", "References",
                "Deriver", "System", "Sig", "CA"]


@given(st.lists(st.builds(lambda k, v: f"{k}: {v}", st.sampled_from(NARINFO_KEYS), st.one_of(numbers, words)),
                max_size=14).map(lambda ls: "".join(f"{line}\n" for line in ls)) | st.text())
def test_a_narinfo_is_read_or_refused_as_a_narinfo_error(text: str) -> None:
    try:
        info = parse_narinfo(text, "x.narinfo")
    except TopdeckError:
        return
    assert 0 < info.nar_size <= U64 and 0 <= info.file_size <= U64


narinfos = st.builds(
    Narinfo, store_path=store_paths, url=one_line.filter(bool), nar_hash=digests,
    nar_size=st.integers(1, U64), compression=one_line.filter(bool), file_hash=st.none() | digests,
    file_size=st.integers(0, U64), references=st.lists(store_paths, max_size=4).map(tuple),
    deriver=st.none() | store_paths, system=st.none() | one_line.filter(bool),
    sigs=st.lists(one_line, max_size=3).map(tuple), ca=st.none() | one_line.filter(bool))


@given(narinfos)
def test_a_rendered_narinfo_reads_back_equal(info: Narinfo) -> None:
    assert parse_narinfo(render_narinfo(info)) == info


# --- manifests, path-info JSON, run records: JSON from outside --------------------------------------------

huge = st.sampled_from([2**64, 10**400, -1, 2**63])
json_values = st.recursive(
    st.none() | st.booleans() | huge | st.integers(min_value=-(10**30), max_value=10**400) | st.floats() | words,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(words, inner, max_size=4), max_leaves=20)
manifest_entries = st.fixed_dictionaries(
    {"path": st.one_of(store_paths.map(str), words), "narSize": json_values, "fileSize": json_values,
     "references": st.one_of(st.lists(st.one_of(store_paths.map(lambda p: p.basename), words), max_size=3),
                              json_values)},
    optional={"narHash": st.one_of(digests.map(bytes.hex), words, json_values)})


def _json_text(document: object) -> str:
    return json.dumps(document, allow_nan=True)


@given(st.one_of(
    st.fixed_dictionaries({"format": st.just(1) | json_values, "toplevel": store_paths.map(str) | words,
                           "paths": st.lists(manifest_entries, max_size=3) | json_values}).map(_json_text),
    json_values.map(_json_text), st.text()))
@example(f'{{"format": 1, "toplevel": "/nix/store/{"0" * 32}-t", "paths": [{{"path": "/nix/store/{"0" * 32}-t", '
         f'"narSize": 1{"0" * 400}, "fileSize": 0, "references": []}}]}}')
def test_a_manifest_is_read_or_refused_as_a_cache_error(text: str) -> None:
    try:
        manifest = parse_manifest(text.encode(errors="surrogatepass"), "manifests/x.json")
    except TopdeckError:
        return
    assert all(0 < p.nar_size <= U64 and 0 <= p.file_size <= U64 for p in manifest.paths)


@given(store_paths, st.lists(st.builds(ManifestPath, store_paths, st.integers(1, U64), st.integers(0, U64),
                                       st.lists(store_paths, max_size=3).map(tuple), st.none() | digests),
                             max_size=4))
def test_a_rendered_manifest_reads_back_equal(top: StorePath, paths: list[ManifestPath]) -> None:
    manifest = Manifest(top, tuple(paths))
    assert parse_manifest(render_manifest(manifest), "m") == manifest


path_info_entries = st.fixed_dictionaries(
    {"path": store_paths.map(str) | words, "narHash": st.just("sha256-" + "A" * 43 + "=") | words,
     "narSize": json_values, "references": st.lists(store_paths.map(str), max_size=2) | json_values},
    optional={"deriver": json_values, "ca": json_values, "signatures": json_values, "version": json_values})


@given(st.one_of(st.lists(path_info_entries, max_size=3).map(_json_text),
                 st.dictionaries(store_paths.map(str), path_info_entries, max_size=3).map(_json_text),
                 json_values.map(_json_text), st.text()))
@example(f'[{{"path": "/nix/store/{"0" * 32}-t", "narHash": "sha256-{"A" * 43}=", "narSize": 1{"0" * 400}, '
         '"references": []}]')
def test_nix_path_info_json_is_read_or_refused_as_a_nix_error(text: str) -> None:
    try:
        infos = parse_path_info_json(text)
    except TopdeckError:
        return
    assert all(0 <= info.nar_size <= U64 for info in infos)


@given(st.one_of(json_values.map(_json_text), st.text(),
                 st.fixed_dictionaries({"run_id": words, "mode": st.sampled_from(["switch", "boot"]) | words,
                                        "started": json_values, "finished": json_values,
                                        "hosts": st.lists(st.dictionaries(words, json_values), max_size=2)})
                 .map(_json_text)))
def test_a_run_record_is_read_or_refused_in_one_line(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.json"
        path.write_text(text, errors="surrogatepass")
        try:
            load_run(path)
        except TopdeckError:
            pass


@given(json_values.map(_json_text))
def test_strict_json_reads_what_json_writes_when_no_key_repeats(text: str) -> None:
    assert json.dumps(strict.loads(text)) == json.dumps(json.loads(text))


@given(numbers)
def test_parse_uint_takes_ascii_digits_only(text: str) -> None:
    value = strict.parse_uint(text)
    assert value is None or (str(value) == text.lstrip("0").rjust(1, "0") and text.isascii() and 0 <= value <= U64)


# --- ssh_config values and the inventory ------------------------------------------------------------------

ssh_keys = ["Port", "HostName", "User", "ProxyJump", "IdentityFile", "HostKeyAlias", "IdentitiesOnly",
            "UserKnownHostsFile", "Match", "Include"]


@given(st.lists(st.builds(lambda k, v: f"  {k} {v}", st.sampled_from(ssh_keys), st.one_of(numbers, words)),
                max_size=6).map(lambda ls: "Host web-1\n" + "\n".join(ls) + "\n") | st.text())
def test_an_ssh_config_is_read_or_refused_as_an_ssh_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "ssh_config"
        config.write_text(text, errors="surrogatepass")
        try:
            found = route(Host("web-1", "web-1", "web"), SSHConfig(config=config))
        except TopdeckError:
            return
    assert all(1 <= hop.port <= 65535 for hop in found.hops)


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


toml_values = st.recursive(st.booleans() | huge | st.integers(min_value=-(10**30), max_value=10**400) | st.floats()
                           | words, lambda inner: st.lists(inner, max_size=3), max_leaves=8)
HOST_KEYS = ["address", "port", "user", "pointer", "tags", "sudo", "specialisation", "connect_timeout"]
CONFIG_KEYS = ["parallel", "confirm_timeout", "reboot_timeout", "lock_wait", "connect_timeout", "port", "bucket",
               "prefix"]


@given(st.dictionaries(st.sampled_from(HOST_KEYS), toml_values, max_size=5), st.sampled_from(["deploy", "ssh"]),
       st.dictionaries(st.sampled_from(CONFIG_KEYS), toml_values, max_size=3), st.text(max_size=60))
@example({"address": "10.0.0.1", "pointer": "web"}, "ssh", {"connect_timeout": 10**400}, "")
@example({"address": "10.0.0.1", "pointer": "web"}, "deploy", {"confirm_timeout": math.inf}, "")
def test_an_inventory_is_loaded_or_refused_as_an_inventory_error(host: dict[str, object], table: str,
                                                                  config: dict[str, object], raw: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        section = "".join(f"{key} = {_toml_value(value)}\n" for key, value in config.items())
        (root / "topdeck.toml").write_text(f'[cache]\nbucket = "topdeck-test"\n[{table}]\n{section}')
        (root / "web-1").mkdir()
        (root / "web-1" / "host.toml").write_text(
            "".join(f"{key} = {_toml_value(value)}\n" for key, value in host.items()), errors="surrogatepass")
        if raw:
            (root / "web-2").mkdir()
            (root / "web-2" / "host.toml").write_text(raw, errors="surrogatepass")
        try:
            inventory = load_inventory(root)
        except TopdeckError:
            return
    assert all(1 <= h.port <= 65535 for h in inventory.hosts)


# --- a host's output stream, bounded ----------------------------------------------------------------------


@given(st.lists(st.binary(max_size=300) | st.sampled_from([b"\n", b"x" * 200, b"\r\n"]), max_size=30))
def test_a_stream_hands_every_line_within_its_bounds(chunks: list[bytes]) -> None:
    got: list[str] = []
    stream = _Stream(got.append, limit=2000, line_limit=100)
    quiet = _Stream(None, limit=2000, line_limit=100)  # no callback: the bytes alone, kept the same way
    for chunk in chunks:
        stream.add(chunk)
        quiet.add(chunk)
    stream.finish()
    assert (bytes(quiet.data), quiet.truncated) == (bytes(stream.data), stream.truncated)
    whole = b"".join(chunks)
    assert len(stream.data) <= 2000 and all(len(line.encode()) <= 400 for line in got)  # 100 bytes, each maybe U+FFFD
    if len(whole) <= 2000 and all(len(line) <= 100 for line in whole.split(b"\n")):
        assert bytes(stream.data) == whole and not stream.truncated
        assert got == [line.decode(errors="replace").rstrip("\r") for line in whole.split(b"\n")][:len(got)]
        assert len(got) == whole.count(b"\n") + (not whole.endswith(b"\n") and bool(whole))
    if stream.truncated:  # the last line (a host script's result) still arrives, cut to the line bound
        parts = whole.split(b"\n")
        last = parts[-2] if parts[-1] == b"" else parts[-1]
        assert got[-1] == last[:100].decode(errors="replace").rstrip("\r")
