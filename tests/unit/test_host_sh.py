"""core/remote/host.sh's verbs against stub tools in a folder that stands for the host's / (tests/unit/hoststubs.py):
what each prints, its exit status, and what it did to the profile, the runs and the stubs. The lab tests
(test_deploy_lab, test_activation, test_reboot, ...) hold the end-to-end truth on native, Debian 13 and sid hosts."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from hoststubs import SHELLS, StubHost, system_path
from test_engine_units import store_path

from topdeck.core.cache.manifest import Manifest, ManifestPath, render_manifest
from topdeck.core.inventory import Host
from topdeck.core.nix.store import StorePath
from topdeck.core.remote import hostverbs

OLD, NEW = system_path("old"), system_path("new")
CACHE = "http://cache.test"
KEY = "cache.test-1:AAAA"


@pytest.fixture(params=SHELLS)
def host(tmp_path: Path, request: pytest.FixtureRequest) -> StubHost:
    stub = StubHost(tmp_path / "root", shell=request.param)
    stub.system("old", "24.11.1")
    stub.system("new", "24.11.2")
    stub.generation(1, OLD)
    stub.runs(OLD)
    return stub


def events(host: StubHost, run: str) -> list[list[str]]:
    text = host.path(f"/run/topdeck/runs/{run}/events").read_text().replace(str(host.root), "")
    return [line.split("\t") for line in text.splitlines()]


# --- status, generations, closures --------------------------------------------------------------------


def test_status_names_the_systems_the_generation_and_the_last_run(host: StubHost) -> None:
    host.path("/nix/var/nix/topdeck").mkdir(parents=True)
    host.path("/nix/var/nix/topdeck/last-run").write_text(f"r1\t2026-12-01T12:00:00Z\tdone\t{OLD}\n")
    ran = host.run("status")
    assert ran.code == 0, ran
    fields = {line[0]: line[1:] for line in ran.fields()}
    assert fields["current"] == fields["booted"] == fields["profile"] == [OLD]
    assert fields["generation"] == ["1"]
    assert fields["last-run"] == ["r1", "2026-12-01T12:00:00Z", "done", OLD]
    assert fields["needs-reboot"] == ["no"]
    assert "deploying" not in fields


def test_status_names_the_run_that_holds_the_lock(host: StubHost) -> None:
    host.path("/run/topdeck").mkdir(parents=True)
    host.path("/run/topdeck/lock.owner").write_text("run r7 since 2026-12-01T12:00:00Z")
    with host.hold_lock():
        ran = host.run("status")
    assert ["deploying", "run r7 since 2026-12-01T12:00:00Z"] in ran.fields()
    assert host.calls("flock")[-1][:2] == ["-n", str(host.path("/run/topdeck/lock"))]


def test_status_says_which_link_needs_a_reboot(host: StubHost) -> None:
    host.link(f"{OLD}/kernel", "/nix/store/kernel-1")
    host.link(f"{NEW}/kernel", "/nix/store/kernel-2")
    host.path("/nix/store/kernel-1").touch()
    host.path("/nix/store/kernel-2").touch()
    host.runs(NEW, booted=OLD)
    assert ["needs-reboot", "yes", "kernel"] in host.run("status").fields()


def test_generations_lists_each_with_its_system_and_version(host: StubHost) -> None:
    host.generation(2, NEW)
    host.answer("nix-env", "-p * --list-generations",
                "   1   2026-11-01 10:00:00   \n   2   2026-11-02 10:00:00   (current)\n")
    ran = host.run("generations")
    assert ran.code == 0
    assert ran.fields() == [
        ["generation", "1", "2026-11-01 10:00:00", OLD, "24.11.1", ""],
        ["generation", "2", "2026-11-02 10:00:00", NEW, "24.11.2", "current"],
    ]
    assert host.calls("nix-env") == [["-p", str(host.path("/nix/var/nix/profiles/system")), "--list-generations"]]


def test_closures_prints_both_closures_with_their_sizes(host: StubHost) -> None:
    old_root = str(host.path(OLD))
    host.answer("nix-store", f"--query --requisites {old_root}", f"/nix/store/a-glibc\n{OLD}\n")
    host.answer("nix-store", f"--query --requisites {NEW}", f"/nix/store/a-glibc\n{NEW}\n")
    host.answer("nix-store", "--query --size *", "1000\n100\n")
    ran = host.run("closures", NEW)
    assert ran.code == 0, ran
    assert ran.fields() == [["closure", "0", "/nix/store/a-glibc", "1000"], ["closure", "0", OLD, "100"],
                            ["closure", "1", "/nix/store/a-glibc", "1000"], ["closure", "1", NEW, "100"]]


def test_closures_of_a_path_the_store_lacks_fail(host: StubHost) -> None:
    host.answer("nix-store", "--query --requisites /nix/store/*", code=1)
    old_root = str(host.path(OLD))
    host.answer("nix-store", f"--query --requisites {old_root}", f"{OLD}\n")
    ran = host.run("closures", NEW)
    assert (ran.code, ran.result()) == (1, ["result", "failed", f"{NEW} is not in this host's store"])


# --- deploy: refused before anything changes -----------------------------------------------------------


@pytest.mark.parametrize(("args", "why"), [
    (["deploy", "r1"], "deploy RUN MODE TARGET [options]"),
    (["deploy", "r1", "reboot", "-"], "mode must be switch, boot, test or dry-activate"),
    (["deploy", "r/1", "switch", "-"], "bad run id"),
    (["deploy", "r1", "switch", "/tmp/x"], "TARGET is not a store path"),
    (["deploy", "r1", "switch", "-", "--confirm", "soon"], "--confirm must be a number of seconds"),
    (["deploy", "r1", "switch", "-", "--pointer", "../x"], "bad pointer name"),
    (["deploy", "r1", "boot", "-", "--specialisation", "x"], "--specialisation works with switch and test only"),
    (["deploy", "r1", "switch", "-", "--cache"], "option --cache needs a value"),
    (["status-of-everything"], "unknown command status-of-everything"),
])
def test_bad_arguments_exit_64_and_change_nothing(host: StubHost, args: list[str], why: str) -> None:
    ran = host.run(*args)
    assert (ran.code, ran.lines) == (64, [f"result\tfailed\ttopdeck-host: {why}"])
    assert not host.path("/run/topdeck").exists()


def test_deploy_as_another_user_than_root_is_refused(host: StubHost) -> None:
    host.answer("id", "-u", "1000")
    host.answer("id", "-un", "deployer")
    ran = host.run("deploy", "r1", "switch", NEW)
    assert ran.code == 1
    assert ran.result()[2].startswith("user deployer is not root here")


def test_deploy_while_another_holds_the_lock_exits_3(host: StubHost) -> None:
    host.path("/run/topdeck").mkdir(parents=True)
    host.path("/run/topdeck/lock.owner").write_text("run r0 since 2026-12-01T12:00:00Z")
    with host.hold_lock():
        ran = host.run("deploy", "r1", "switch", NEW, "--cache", CACHE, "--key", KEY)
    assert ran.code == 3
    assert ran.result()[2] == ("another deploy holds this host's lock (run r0 since 2026-12-01T12:00:00Z); "
                               "try again when it ends")
    assert host.calls("nix-store") == []


# --- deploy: the fetch ---------------------------------------------------------------------------------

NIX_LOG = "\n".join([
    "warning: unknown setting 'x'",
    '@nix {"action":"start","id":11,"level":0,"parent":0,"text":"copying 2 paths","type":103}',
    '@nix {"action":"result","fields":[0,2,0,0],"id":11,"type":105}',
    '@nix {"action":"start","fields":["/nix/store/abc-web-app","http://cache.test","local"],"id":12,"level":3,'
    '"parent":11,"text":"copying path","type":100}',
    '@nix {"action":"start","fields":["http://cache.test/nar/x.nar.xz"],"id":13,"level":4,"parent":12,"text":"","type":101}',
    '@nix {"action":"result","fields":[101,4000000],"id":11,"type":106}',
    '@nix {"action":"result","fields":[4000000,4000000,0,0],"id":13,"type":105}',
    '@nix {"action":"msg","level":1,"msg":"\\u001b[31;1merror:\\u001b[0m cannot \\"reach\\"\\tthe\\ncache"}',
    '@nix {"action":"msg","level":4,"msg":"chatter"}',
    '@nix {"action":"result","fields":[2,2,0,0],"id":11,"type":105}',
]) + "\n"


def test_the_fetch_turns_nix_log_into_progress_and_log_lines(host: StubHost) -> None:
    (host.root / "nix.log").write_text(NIX_LOG)
    target = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-elsewhere"
    host.answer("nix-store", f"-r {target} *--log-format internal-json*", then='cat "$ROOT/nix.log" >&2')
    ran = host.run("deploy", "r1", "switch", target, "--cache", CACHE, "--key", KEY, "--fetch-parallel", "0")
    fetched = ran.lines[ran.lines.index("phase\tfetch") + 1:]
    assert fetched[0].startswith("log\tthe fetch needs up to 0 KiB on /nix (nix-store --dry-run: nothing to fetch)")
    assert fetched[1:8] == ["log\twarning: unknown setting 'x'", "progress\t0\t2\t0\t0",
                           "current\t/nix/store/abc-web-app", "progress\t0\t2\t0\t4000000",
                           "progress\t0\t2\t4000000\t4000000",
                           'log\terror: cannot "reach" the cache', "progress\t2\t2\t4000000\t4000000"]
    # the target is no system in this root's store: refused after the fetch, before the profile
    assert ran.result() == ["result", "failed",
                            f"{target} is not a NixOS system (it has no nixos-version): nothing was changed"]
    realise = next(call for call in host.calls("nix-store") if "--log-format" in call)
    assert realise[:2] == ["-r", target]
    options = {realise[at + 1]: realise[at + 2] for at, word in enumerate(realise) if word == "--option"}
    assert (options["substituters"], options["trusted-public-keys"], options["require-sigs"]) == (CACHE, KEY, "true")
    assert not host.calls("nix-env")


# --- deploy: the fetch ahead (the manifest, the narinfos and the NARs over curl, then Nix from that folder) ------

# curl --parallel ... --config FILE as it fetches: each `url`'s file from ROOT/cache into its `output`, a line each
# (`exitcode size`), as --write-out asks
CURL_PARALLEL = r"""
for config; do :; done
sed -n 's|^url = "http://cache.test/\(.*\)"$|\1|p' "$config" > "$config.urls"
sed -n 's|^output = "\(.*\)"$|\1|p' "$config" | paste "$config.urls" - | while read -r url output; do
    if [ -f "$ROOT/cache/$url" ]; then cp "$ROOT/cache/$url" "$output" && echo "0 $(wc -c < "$output")"
    else echo "22 0"; fi
done
"""


def cache_serves(host: StubHost, target: StorePath, members: list[StorePath], path_text: str | None = None) -> None:
    """The cache's manifest of `target` (its closure: `members` and itself), and a narinfo and NAR for each."""
    closure = [*members, target]
    document = render_manifest(Manifest(target, tuple(ManifestPath(p, 2000, 1000, ()) for p in closure)))
    if path_text is not None:
        document = document.replace(str(members[0]).encode(), path_text.encode())
    (host.root / "cache/manifests").mkdir(parents=True)
    (host.root / "cache/nar").mkdir()
    (host.root / f"cache/manifests/{target.hash_part}.json").write_bytes(document)
    for path in closure:
        (host.root / f"cache/{path.hash_part}.narinfo").write_text(
            f"StorePath: {path}\nURL: nar/{path.hash_part}.nar.xz\nCompression: xz\nFileSize: 1000\nNarSize: 2000\n")
        (host.root / f"cache/nar/{path.hash_part}.nar.xz").write_bytes(b"x" * 1000)
    (host.root / "curl-parallel.sh").write_text(CURL_PARALLEL)
    host.answer("curl", "--parallel *", then='. "$ROOT/curl-parallel.sh"')


def test_the_fetch_ahead_reads_the_manifest_and_fetches_what_is_missing(host: StubHost) -> None:
    target, members = store_path("nixos-system-ahead"), [store_path("glibc"), store_path("web-app")]
    cache_serves(host, target, members)
    missing = [members[1], target]  # glibc is in the store already
    host.answer("nix-store", "--check-validity --print-invalid *", "".join(f"{p}\n" for p in missing))
    ran = host.run("deploy", "r1", "switch", str(target), "--cache", CACHE, "--key", KEY)
    fetched = [line for line in ran.lines[ran.lines.index("phase\tfetch") + 1:] if not line.startswith("result")]
    assert fetched[0].startswith("log\tthe fetch needs up to ")
    assert fetched[1:] == ["progress\t1\t2\t1000\t2000", "progress\t2\t2\t2000\t2000", "progress\t0\t0\t2000\t2000"]
    urls = [call[call.index("--config") + 1] for call in host.calls("curl")]
    assert [Path(url).name for url in urls] == ["manifest.curl", "narinfos.curl", "nars.curl"]
    realise = next(call for call in host.calls("nix-store") if call[:2] == ["-r", str(target)])
    options = {realise[at + 1]: realise[at + 2] for at, word in enumerate(realise) if word == "--option"}
    assert options["substituters"] == f"file://{host.root}/nix/var/nix/topdeck/fetch"
    assert not host.path("/nix/var/nix/topdeck/fetch").exists()


def test_a_manifest_naming_no_store_path_leaves_the_fetch_to_nix(host: StubHost) -> None:
    target, members = store_path("nixos-system-ahead"), [store_path("glibc")]
    cache_serves(host, target, members, path_text="/etc/passwd")
    ran = host.run("deploy", "r1", "switch", str(target), "--cache", CACHE, "--key", KEY)
    assert ("log\tfetching ahead did not work (the manifest names something that is no store path): "
            "Nix fetches from the cache itself") in ran.lines
    realise = next(call for call in host.calls("nix-store") if call[:2] == ["-r", str(target)])
    options = {realise[at + 1]: realise[at + 2] for at, word in enumerate(realise) if word == "--option"}
    assert options["substituters"] == CACHE


# --- deploy: the pointer -------------------------------------------------------------------------------


def sidecar(**fields: object) -> str:
    return json.dumps({"name": "web", "path": "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-x",
                       "serial": 7, "time": 1764590400, "sig": "x", "sshsig": "QUJD", **fields}, indent=1)


def deploy_pointer(host: StubHost, text: str, verifies: bool = True, code: int = 0) -> list[str]:
    host.answer("curl", "-fsS --max-time 30 http://cache.test/pointers/web.json", text, code=code)
    host.answer("ssh-keygen", "-Y verify *", code=0 if verifies else 255)
    ran = host.run("deploy", "r1", "switch", "-", "--pointer", "web", "--sidecar", f"{CACHE}/pointers/web.json",
                   "--signer", "ssh-ed25519 AAAAkey", "--cache", CACHE, "--key", KEY, "--fetch-parallel", "0")
    return ran.result()


@pytest.mark.parametrize(("text", "why"), [
    (sidecar(name="db"), "pointer web: the sidecar names pointer 'db'"),
    (sidecar(path="/tmp/evil"), "pointer web: the sidecar's path is not a store path"),
    (sidecar(serial="7x"), "pointer web: the sidecar's serial is not a number"),
    (sidecar(serial=2**60), "pointer web: the sidecar's serial is above 2^53"),
    (sidecar(sshsig="not base64!"), "pointer web: the sidecar has no SSH signature"),
    (sidecar()[:-2] + ',\n "serial": 9\n}', "pointer web: the sidecar names a field twice (serial): refused"),
    ("<html>503</html>", "pointer web: the sidecar names pointer ''"),
])
def test_a_bad_sidecar_is_refused(host: StubHost, text: str, why: str) -> None:
    assert deploy_pointer(host, text) == ["result", "failed", why]
    assert not host.calls("nix-env")


def test_a_sidecar_whose_signature_fails_is_refused(host: StubHost) -> None:
    result = deploy_pointer(host, sidecar(), verifies=False)
    assert result[2] == "pointer web: the sidecar's signature does not verify with the trusted key"
    signed = host.path("/run/topdeck/runs/r1/signers").read_text()
    assert signed == "topdeck ssh-ed25519 AAAAkey\n"


def test_a_good_sidecar_names_the_target_on_one_line_too(host: StubHost) -> None:
    text = json.dumps(json.loads(sidecar(expires=99999999999)))  # one line: read as JSON, not line by line
    deploy_pointer(host, text)
    assert ["state", "target", "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-x"] in events(host, "r1")
    verify = host.calls("ssh-keygen")[0]
    assert verify[:2] == ["-Y", "verify"]


def test_an_older_serial_than_the_last_applied_is_refused(host: StubHost) -> None:
    host.path("/nix/var/nix/topdeck/pointers").mkdir(parents=True)
    host.path("/nix/var/nix/topdeck/pointers/web.serial").write_text("8\n")
    assert deploy_pointer(host, sidecar())[2] == (
        "pointer web: serial 7 is older than serial 8, the last this host applied (a replayed or downgraded pointer)")


def test_a_b2_cap_is_named_when_the_sidecar_cannot_be_read(host: StubHost) -> None:
    host.answer("curl", "-sS --max-time 15 -w *", '{\n  "code": "download_cap_exceeded",\n  "status": 403\n}\n403')
    result = deploy_pointer(host, "curl: (22) The requested URL returned error: 403", code=22)
    assert result[2].startswith("cannot read pointer web: the B2 daily download cap is exceeded (HTTP 403")


def test_the_agent_records_what_it_failed_to_apply_for_status(host: StubHost) -> None:
    host.answer("curl", "-fsS --max-time 30 http://cache.test/pointers/web.json", sidecar())
    ran = host.run("agent", "--pointer", "web", "--sidecar", f"{CACHE}/pointers/web.json", "--signer",
                   "ssh-ed25519 AAAAkey", "--cache", CACHE, "--key", KEY, "--fetch-parallel", "0")
    assert ran.code == 1
    path = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-x"
    agent = next(line[1] for line in host.run("status").fields() if line[0] == "agent")
    assert re.fullmatch(rf"agent: failed to apply web #7 \({path}\) at [0-9TZ:-]+: {path} is not a NixOS system "
                        r"\(it has no nixos-version\): nothing was changed", agent), agent


# --- deploy: the activation, detached ------------------------------------------------------------------


def switch_generation(host: StubHost) -> None:
    """nix-env as it moves the profile: --switch-generation N links the profile to generation N."""
    profile = "$ROOT/nix/var/nix/profiles/system"
    host.answer("nix-env", "-p * --switch-generation *", then=f'ln -sfn "system-$4-link" "{profile}"')
    host.answer("nix-env", "-p * --delete-generations *", then=f'rm -f "{profile}-$4-link"')


def test_a_switch_to_a_generation_activates_it(host: StubHost) -> None:
    host.generation(2, NEW)
    host.generation(1, OLD)
    switch_generation(host)
    ran = host.run("deploy", "r1", "switch", "-", "--generation", "2")
    assert ran.code == 0, ran
    kinds = [line[:2] for line in ran.fields()]
    assert kinds[:4] == [["phase", "lock"], ["state", "target"], ["state", "fetched"], ["state", "before"]]
    assert ["phase", "activate", "switch"] in ran.fields()
    assert ["state", "switch-code", "0"] in ran.fields()
    assert ran.result() == ["result", "done", f"switch of {NEW}"]
    assert ["state", "current", NEW] in ran.fields() and ["log", "switching"] in ran.fields()
    assert host.calls("switch-to-configuration") == [[str(host.path(f"{NEW}/bin/switch-to-configuration")), "switch"]]
    assert host.path("/nix/var/nix/profiles/system").readlink() == Path("system-2-link")
    last = host.path("/nix/var/nix/topdeck/last-run").read_text().split("\t")
    assert (last[0], last[2]) == ("r1", "done")
    assert not host.path("/nix/var/nix/gcroots/topdeck/r1").exists()


def test_units_that_fail_roll_the_switch_back(host: StubHost) -> None:
    broken = host.system("broken", switch_code=4)
    host.generation(2, broken)
    host.generation(1, OLD)
    switch_generation(host)
    ran = host.run("deploy", "r1", "switch", "-", "--generation", "2")
    assert ran.code == 2, ran
    assert ran.result()[:2] == ["result", "rolled-back"]
    assert ran.result()[2].startswith("units failed to start after activating")
    old_switch = str(host.path(f"{OLD}/bin/switch-to-configuration"))
    assert host.calls("switch-to-configuration")[1:] == [[old_switch, "boot"], [old_switch, "test"]]
    assert host.path("/nix/var/nix/profiles/system").readlink() == Path("system-1-link")


def test_a_switch_unconfirmed_in_its_window_is_rolled_back(host: StubHost) -> None:
    host.generation(2, NEW)
    host.generation(1, OLD)
    switch_generation(host)
    ran = host.run("deploy", "r1", "switch", "-", "--generation", "2", "--confirm", "1")
    assert ran.code == 2, ran
    assert ["phase", "confirm", "1"] in ran.fields()
    assert ran.result() == ["result", "rolled-back", "no confirmation within 1s (a new SSH login could not confirm)"]
    assert host.path("/nix/var/nix/profiles/system").readlink() == Path("system-1-link")


def test_a_switch_confirmed_in_its_window_is_kept(host: StubHost) -> None:
    host.generation(2, NEW)
    host.generation(1, OLD)
    switch_generation(host)
    confirmed: list[list[str]] = []

    def confirm() -> None:
        host.wait_for("/run/topdeck/runs/r1/canary")
        confirmed.extend(host.run("confirm", "r1").lines)

    confirming = threading.Thread(target=confirm)
    confirming.start()
    ran = host.run("deploy", "r1", "switch", "-", "--generation", "2", "--confirm", "30")
    confirming.join()
    assert confirmed == ["confirm\tok"]
    assert ran.code == 0, ran
    assert ["phase", "confirmed"] in ran.fields()
    assert ran.result() == ["result", "done", f"switch of {NEW}"]
    assert host.path("/nix/var/nix/profiles/system").readlink() == Path("system-2-link")


def test_where_systemd_runs_the_activation_runs_in_a_unit_that_takes_the_lock_over(host: StubHost) -> None:
    host.path("/run/systemd/system").mkdir(parents=True)
    host.generation(2, NEW)
    host.generation(1, OLD)
    switch_generation(host)
    # systemd-run as it starts a unit: the command after its options, detached, without the deploy's lock (fd 9)
    host.answer("systemd-run", "--unit=*",
                then='shift 8; TOPDECK_DETACHED=unit setsid "$@" < /dev/null > /dev/null 2>&1 9>&- &')
    host.answer("systemctl", "is-active --quiet topdeck-activate-r1")
    ran = host.run("deploy", "r1", "switch", "-", "--generation", "2")
    assert ran.code == 0, ran
    assert ran.result() == ["result", "done", f"switch of {NEW}"]
    unit = host.calls("systemd-run")[0]
    assert unit[:8] == ["--unit=topdeck-activate-r1", "--description=topdeck activate of run r1", "--collect",
                        "--no-ask-password", "--quiet", "--service-type=exec", "--setenv=NIXOS_INSTALL_BOOTLOADER=0",
                        "--setenv=TOPDECK_DETACHED=unit"]
    assert unit[8:] == ["/bin/sh", str(host.path("/run/topdeck/runs/r1/host.sh")), "activate", "r1"]
    assert ["-w", "60", "9"] in host.calls("flock")  # the unit took the lock over
    assert not host.path("/run/topdeck/runs/r1/unit").exists()


def test_a_reboot_is_refused_where_nothing_could_guard_it(host: StubHost) -> None:
    ran = host.run("reboot", "r1", "--confirm", "60")
    assert (ran.code, ran.result()[2]) == (1, "cannot reboot: this host runs no systemd, so nothing can reboot it and "
                                              "guard the boot: nothing was changed")
    host.path("/run/systemd/system").mkdir(parents=True)
    host.answer("systemctl", "cat topdeck-reboot-guard.service", code=1)
    ran = host.run("reboot", "r1", "--confirm", "60")
    assert ran.code == 1 and "this host has no topdeck-reboot-guard.service" in ran.result()[2]
    assert not host.path("/run/topdeck").exists() and not host.calls("nix-env")


def guarded_reboot(host: StubHost, phase: str, booted: str) -> Path:
    """A run that rebooted the host into NEW (from OLD, generation 1 to 2), its `pending` at `phase`, and the
    system that booted."""
    host.generation(1, OLD)
    host.generation(2, NEW)
    switch_generation(host)
    reboot = host.path("/nix/var/nix/topdeck/reboot")
    (reboot / "run").mkdir(parents=True)
    (reboot / "pending").write_text(f"{phase} r1\n")
    root = {name: str(host.path(path)) for name, path in (("old", OLD), ("new", NEW))}
    (reboot / "run/env").write_text(
        f"run='r1' mode='boot' target='{root['new']}' confirm='0' pointer='' p_serial=''\n"
        f"prev_current='{root['old']}' prev_gen='1' prev_profile='{root['old']}' new_gen='2' created='1'\n"
        "on_failed_units='rollback' specialisation='' with_reboot='1'\nlock_wait='180'\n"
        + ("rebooted=1\n" if phase != "armed" else ""))
    (reboot / "run/events").write_text("phase\tlock\nphase\treboot\tb00t-0\n")
    host.runs(booted)
    return reboot


def test_the_boot_guard_ends_a_run_that_booted_its_target(host: StubHost) -> None:
    reboot = guarded_reboot(host, "armed", booted=NEW)
    ran = host.run("boot-guard")
    assert ran.code == 0, ran
    assert host.path("/run/topdeck/runs/r1").resolve() == (reboot / "run").resolve()
    tail = events(host, "r1")[2:]
    assert tail[0][:2] == ["phase", "booted"] and tail[1] == ["state", "booted", NEW]
    assert tail[-1] == ["result", "done", f"booted {NEW}"]
    assert not (reboot / "pending").exists()


def test_the_boot_guard_returns_a_host_that_booted_again_unconfirmed(host: StubHost) -> None:
    reboot = guarded_reboot(host, "waiting", booted=OLD)
    ran = host.run("boot-guard")
    assert ran.code == 2, ran
    assert events(host, "r1")[-1] == ["result", "rolled-back", f"it booted again before it was confirmed; {OLD}, which "
                                                               "it runs, is its boot default again"]
    assert host.path("/nix/var/nix/profiles/system").readlink() == Path("system-1-link")
    assert ["-p", str(host.path("/nix/var/nix/profiles/system")), "--delete-generations", "2"] in host.calls("nix-env")
    old_switch = str(host.path(f"{OLD}/bin/switch-to-configuration"))
    assert host.calls("switch-to-configuration") == [[old_switch, "boot"]]
    assert not (reboot / "pending").exists()


def test_the_engine_never_passes_the_test_root_to_a_host() -> None:
    command = hostverbs.host_command(Host("web-1", "10.0.0.1", "web", sudo=True, user="deployer"), "deploy", "r1",
                                     "switch", "-")
    assert "TOPDECK_HOST" not in command and "topdeck-test-root" not in command


def test_confirm_answers_late_ok_or_rejected(host: StubHost) -> None:
    run = host.path("/run/topdeck/runs/r1")
    run.mkdir(parents=True)
    assert host.run("confirm", "r1").lines == ["confirm\tlate\tthe run is no longer waiting for confirmation"]
    (run / "canary").touch()
    rejected = host.run("confirm", "r1", "--check-command", "echo no; exit 3")
    assert (rejected.code, rejected.lines) == (1, ["confirm\trejected\tcommand 'echo no; exit 3' exited 3"])
    assert (run / "reject").read_text() == "command 'echo no; exit 3' exited 3"
    (run / "reject").unlink()
    host.answer("curl", "-fsS -o /dev/null --max-time 10 http://web.test/health", code=0)
    ok = host.run("confirm", "r1", "--check-command", "true", "--check-http", "http://web.test/health")
    assert (ok.code, ok.lines) == (0, ["confirm\tok"])
    assert not (run / "canary").exists()


def test_follow_prints_a_runs_events_and_exits_as_its_result(host: StubHost) -> None:
    run = host.path("/run/topdeck/runs/r1")
    run.mkdir(parents=True)
    (run / "events").write_text("phase\tlock\nstate\ttarget\t/nix/store/x\nresult\trolled-back\tno confirmation\n")
    ran = host.run("follow", "r1")
    assert (ran.code, ran.lines[-1]) == (2, "result\trolled-back\tno confirmation")
    assert host.run("follow", "r9").lines == ["result\tfailed\tthis host has no run r9 (rebooted since?)"]


def test_the_test_root_is_ignored_without_its_marker(tmp_path: Path) -> None:
    host = StubHost(tmp_path / "root")
    (host.root / "topdeck-test-root").unlink()
    ran = host.run("status")
    assert not any(str(host.root) in line for line in ran.lines)
    assert host.calls("id") == [] and host.calls("nix-store") == []
