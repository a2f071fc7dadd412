"""The toplevel factory, against the real Nix: store names, references, sizes, and switch-to-configuration
run for real in a private mount namespace whose /run is a temporary folder."""

import hashlib
import json
import os
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import zstandard
from nixtools import path_info_json

from topdeck.core.errors import NixError
from topdeck.lab.factory import (
    DEFAULT_VERSION,
    SWITCH_EXIT_CODES,
    KiB,
    MiB,
    Package,
    SystemSpec,
    add_package,
    base_packages,
    build,
    compare_versions,
    downgrade,
    remove_package,
    spec_from_json,
    spec_to_json,
    upgrade,
    with_activation,
    with_incompatible_init,
    with_specialisation,
    with_sshd_settings,
    without_ssh,
)
from topdeck.lab.nixenv import lab_env

pytestmark = pytest.mark.skipif(shutil.which("nix-build") is None, reason="needs Nix")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFRvcGRlY2sgZmFjdG9yeSB0ZXN0IGtleSAxMjM0NTY3 lab@topdeck"
SPEC = SystemSpec("web1", DEFAULT_VERSION, base_packages(20, total_size=4 * MiB), (KEY,))
KEYS_FILE = "etc/ssh/authorized_keys.d/root"


def nix(*command: str) -> str:
    return subprocess.run(command, env=lab_env(), capture_output=True, text=True, check=True).stdout


def store_name(path: str) -> str:
    return Path(path).name[33:]


def closure_by_name(toplevel: str) -> dict[str, str]:
    return {store_name(path): path for path in nix("nix-store", "-qR", toplevel).split()}


def path_infos(toplevel: str) -> dict[str, dict]:
    infos = path_info_json("-r", toplevel)
    return {store_name(info["path"]): info for info in infos}


def linked_output_name(package: Package) -> str:
    return f"{package.name}-lib" if "lib" in package.outputs else package.name


@pytest.fixture(scope="module")
def toplevels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    variants = {
        "base": SPEC,
        "upgraded": upgrade(SPEC, "openssl", "3.0.14"),
        "break-ssh": without_ssh(SPEC),
        "fail": with_activation(SPEC, "fail"),
        "reboot": with_activation(SPEC, "reboot"),
        "incompatible-init": with_incompatible_init(SPEC),
        "failed-units": with_activation(SPEC, "failed-units"),
        "slow": with_activation(SPEC, "slow", slow_seconds=1),
        "sshd": with_sshd_settings(SPEC, "ClientAliveInterval 42", "MaxAuthTries 4"),
        "specialised": with_specialisation(with_specialisation(SPEC, "rescue"), "broken", "fail"),
    }
    workdir = tmp_path_factory.mktemp("factory")
    return {name: build(spec, workdir) for name, spec in variants.items()}


# --- the built closure ------------------------------------------------------------------------


def test_closure_holds_every_output_under_its_store_name(toplevels: dict[str, str]) -> None:
    names = set(closure_by_name(toplevels["base"]))
    outputs = {name for package in SPEC.packages for name in package.output_names()}
    markers = {f"{SPEC.package('linux').name}-kernel", f"{SPEC.package('linux').name}-kernel-modules",
               f"{SPEC.package('systemd').name}-init"}  # the links that needs-reboot compares
    assert names == outputs | markers | {"system-path", "nixos-system-web1-24.05.20240601.abcdef0"}
    assert {"openssl-3.0.13", "openssl-3.0.13-lib", "openssl-3.0.13-bin", "gcc-13.2.0-lib"} <= names


def test_references_follow_the_dependencies(toplevels: dict[str, str]) -> None:
    infos = path_infos(toplevels["base"])
    for package in SPEC.packages:
        deps = {linked_output_name(SPEC.package(dep)) for dep in package.deps}
        for output, name in zip(package.outputs, package.output_names(), strict=True):
            own_lib = {f"{package.name}-lib"} if "lib" in package.outputs and output != "lib" else set()
            assert {store_name(ref) for ref in infos[name]["references"]} == deps | own_lib, name
    toplevel = toplevels["base"]
    references = nix("nix-store", "-q", "--references", toplevel).split()
    linux, systemd = SPEC.package("linux").name, SPEC.package("systemd").name
    markers = [f"{linux}-kernel", f"{linux}-kernel-modules", f"{systemd}-init"]  # what needs-reboot compares
    assert sorted(map(store_name, references)) == sorted(
        ["nixos-system-web1-24.05.20240601.abcdef0", "system-path", *markers])


def test_nar_sizes_match_the_requested_sizes(toplevels: dict[str, str]) -> None:
    infos = path_infos(toplevels["base"])
    for package in SPEC.packages:
        nar_size = sum(infos[name]["narSize"] for name in package.output_names())
        assert package.size <= nar_size <= package.size + 2 * KiB * len(package.outputs), package.name


def test_contents_compress_like_binaries(toplevels: dict[str, str]) -> None:
    linux = closure_by_name(toplevels["base"])["linux-6.6.30"]
    nar = subprocess.run(["nix-store", "--dump", linux], env=lab_env(), capture_output=True, check=True).stdout
    ratio = len(nar) / len(zstandard.ZstdCompressor(level=3).compress(nar))
    assert 2 <= ratio <= 3


def test_toplevel_layout(toplevels: dict[str, str]) -> None:
    toplevel = Path(toplevels["base"])
    assert toplevel.name.endswith("-nixos-system-web1-24.05.20240601.abcdef0")
    assert (toplevel / "nixos-version").read_text() == DEFAULT_VERSION
    assert store_name(os.readlink(toplevel / "sw")) == "system-path"
    assert (toplevel / KEYS_FILE).read_text() == KEY + "\n"
    assert (toplevel / "init-interface-version").read_text() == "systemd 2"
    for script in ("bin/switch-to-configuration", "bin/lab-install-bootloader", "activate", "dry-activate"):
        assert os.access(toplevel / script, os.X_OK), script
    assert (toplevel / "etc/topdeck-lab/sshd-unit-hash").read_text() == hashlib.sha256(b"").hexdigest()
    assert not (toplevel / "etc/ssh/sshd_config.d").exists() and not (toplevel / "specialisation").exists()


def test_the_sshd_fragment_and_its_unit_hash(toplevels: dict[str, str]) -> None:
    fragment = Path(toplevels["sshd"]) / "etc/ssh/sshd_config.d/topdeck-lab.conf"
    assert fragment.read_text() == "ClientAliveInterval 42\nMaxAuthTries 4\n"
    digest = (Path(toplevels["sshd"]) / "etc/topdeck-lab/sshd-unit-hash").read_text()
    assert digest == hashlib.sha256(fragment.read_bytes()).hexdigest()
    assert (Path(toplevels["sshd"]) / KEYS_FILE).exists()


def test_specialisations_are_full_toplevels_of_their_own(toplevels: dict[str, str]) -> None:
    parent = Path(toplevels["specialised"])
    assert sorted(path.name for path in (parent / "specialisation").iterdir()) == ["broken", "rescue"]
    children = {name: os.readlink(parent / "specialisation" / name) for name in ("broken", "rescue")}
    assert len({str(parent), *children.values()}) == 3
    for child in map(Path, children.values()):
        assert store_name(str(child)) == store_name(str(parent))  # NixOS names them as the parent
        assert (child / "nixos-version").read_text() == DEFAULT_VERSION
        assert os.access(child / "bin/switch-to-configuration", os.X_OK)
        assert os.readlink(child / "sw") == os.readlink(parent / "sw")
        assert not (child / "specialisation").exists()
    assert set(children.values()) <= set(nix("nix-store", "-q", "--references", str(parent)).split())


def test_the_reboot_alias_builds_the_incompatible_init_variant(toplevels: dict[str, str]) -> None:
    assert toplevels["reboot"] == toplevels["incompatible-init"]
    version = (Path(toplevels["incompatible-init"]) / "init-interface-version").read_text()
    assert version != (Path(toplevels["base"]) / "init-interface-version").read_text()


def test_break_ssh_lacks_only_the_authorized_keys(toplevels: dict[str, str]) -> None:
    assert not (Path(toplevels["break-ssh"]) / "etc/ssh").exists()
    base, broken = closure_by_name(toplevels["base"]), closure_by_name(toplevels["break-ssh"])
    assert set(base.values()) ^ set(broken.values()) == {toplevels["base"], toplevels["break-ssh"]}


def test_upgrade_changes_only_the_package_and_its_dependents(toplevels: dict[str, str]) -> None:
    upgraded_spec = upgrade(SPEC, "openssl", "3.0.14")
    base = _paths_by_output(SPEC, closure_by_name(toplevels["base"]))
    upgraded = _paths_by_output(upgraded_spec, closure_by_name(toplevels["upgraded"]))
    affected = {"openssl"}
    for package in SPEC.packages:
        if affected & set(package.deps):
            affected.add(package.pname)
    changed = {pname for (pname, output), path in base.items() if upgraded[pname, output] != path}
    assert changed == affected
    assert {"coreutils", "systemd", "kmod"} <= affected and "glibc" not in affected
    assert "openssl-3.0.14-lib" in closure_by_name(toplevels["upgraded"])


def _paths_by_output(spec: SystemSpec, closure: dict[str, str]) -> dict[tuple[str, str], str]:
    return {
        (package.pname, output): closure[name]
        for package in spec.packages
        for output, name in zip(package.outputs, package.output_names(), strict=True)
    }


def test_added_and_removed_packages_and_the_build_log(tmp_path: Path) -> None:
    # A size of its own makes a new derivation, so there is something to build (and log) on every run.
    hello = Package("hello", "2.12.1", 64 * KiB + time.time_ns() % KiB, deps=("glibc",))
    lines: list[str] = []
    added = closure_by_name(build(add_package(SPEC, hello), tmp_path, log=lines.append))
    assert "hello-2.12.1" in added
    assert any("hello-2.12.1.drv" in line for line in lines)
    removed = closure_by_name(build(remove_package(SPEC, "linux"), tmp_path))
    assert not {"linux-6.6.30", "linux-6.6.30-modules"} & set(removed)
    out_links = [os.readlink(path) for path in tmp_path.iterdir() if path.is_symlink()]
    assert len(out_links) == 2 and all(target.startswith("/nix/store/") for target in out_links)


def test_a_failing_build_raises_nix_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("topdeck.lab.factory.TOPLEVEL_NIX", tmp_path / "missing.nix")
    with pytest.raises(NixError, match="nix-build of nixos-system-web1-.* failed"):
        build(SPEC, tmp_path)


# --- switch-to-configuration, run in a lab-like host ------------------------------------------


# /run is the folder given, and /nix/var its nix-var folder: the lab's bootloader keeps its entry under /nix/var.
PRIVATE_RUN = 'mkdir -p "$0/nix-var" && mount --bind "$0/nix-var" /nix/var && mount --bind "$0" /run && exec "$@"'


def activate(run: Path, toplevel: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run switch-to-configuration in a private mount namespace whose /run is `run`."""
    command = ["unshare", "-m", "--propagation", "private", "sh", "-c", PRIVATE_RUN, str(run)]
    command += [f"{toplevel}/bin/switch-to-configuration", *args]
    return subprocess.run(command, capture_output=True, text=True)


def link(path: Path) -> str | None:
    return os.readlink(path) if path.is_symlink() else None


def log_lines(run: Path) -> list[list[str]]:
    return [line.split("\t") for line in (run / "lab/activation.log").read_text().splitlines()]


@needs_root
def test_switch_points_current_system_and_boot_entry(toplevels: dict[str, str], tmp_path: Path) -> None:
    base, upgraded = toplevels["base"], toplevels["upgraded"]
    assert activate(tmp_path, base, "switch").returncode == 0
    assert link(tmp_path / "current-system") == link(tmp_path / "lab/boot-entry") == base
    assert activate(tmp_path, upgraded, "switch").returncode == 0
    assert link(tmp_path / "current-system") == link(tmp_path / "lab/boot-entry") == upgraded
    assert link(tmp_path / "nix-var/nix/topdeck-lab/boot-entry") == upgraded, "the entry that survives a reboot"
    assert not [path for path in tmp_path.rglob("*") if ".tmp." in path.name]
    assert [line[1:] for line in log_lines(tmp_path)] == [["switch", base, "ok"], ["switch", upgraded, "ok"]]
    assert [line.split("\t")[1:] for line in (tmp_path / "lab/bootloader.log").read_text().splitlines()] == \
        [[base, "update"], [upgraded, "update"]]
    assert sorted(os.listdir(tmp_path / "nixos")) == ["switch-to-configuration.lock"]  # the lists are gone
    assert (tmp_path / "nixos").stat().st_mode & 0o777 == 0o755


@needs_root
def test_test_moves_only_current_system_and_boot_only_the_boot_entry(toplevels: dict[str, str], tmp_path: Path) -> None:
    base, upgraded = toplevels["base"], toplevels["upgraded"]
    assert activate(tmp_path, base, "boot").returncode == 0
    assert link(tmp_path / "lab/boot-entry") == base and link(tmp_path / "current-system") is None
    assert activate(tmp_path, upgraded, "test").returncode == 0
    assert link(tmp_path / "lab/boot-entry") == base and link(tmp_path / "current-system") == upgraded


@needs_root
def test_dry_activate_changes_nothing(toplevels: dict[str, str], tmp_path: Path) -> None:
    base, upgraded = toplevels["base"], toplevels["upgraded"]
    first = activate(tmp_path, upgraded, "dry-activate")
    assert first.returncode == 0
    assert first.stdout == f"would switch /run/current-system from nothing to {upgraded}\n"
    assert "would activate the configuration..." in first.stderr
    assert not (tmp_path / "current-system").exists() and not (tmp_path / "lab/boot-entry").exists()
    activate(tmp_path, base, "switch")
    second = activate(tmp_path, upgraded, "dry-activate")
    assert second.stdout == f"would switch /run/current-system from {base} to {upgraded}\n"
    assert link(tmp_path / "current-system") == link(tmp_path / "lab/boot-entry") == base
    assert log_lines(tmp_path)[-1][1:] == ["dry-activate", upgraded, "ok"]
    assert sorted(os.listdir(tmp_path / "nixos")) == ["switch-to-configuration.lock"]


@needs_root
def test_check_runs_the_pre_switch_checks_only(toplevels: dict[str, str], tmp_path: Path) -> None:
    result = activate(tmp_path, toplevels["upgraded"], "check")
    assert result.returncode == 0
    assert not (tmp_path / "current-system").exists() and not (tmp_path / "lab/boot-entry").exists()
    assert log_lines(tmp_path)[-1][1:] == ["check", toplevels["upgraded"], "ok"]


@needs_root
@pytest.mark.parametrize(("mode", "code", "current", "boot"), [
    ("switch", 2, "fail", "fail"),  # the activate script moved /run/current-system, then failed, as NixOS's does
    ("test", 2, "fail", "base"),
    ("boot", 0, "base", "fail"),  # boot never runs the activate script
])
def test_a_failing_activate_script_exits_2_and_the_switch_goes_on(
    toplevels: dict[str, str], tmp_path: Path, mode: str, code: int, current: str, boot: str
) -> None:
    base, failing = toplevels["base"], toplevels["fail"]
    activate(tmp_path, base, "switch")
    result = activate(tmp_path, failing, mode)
    assert result.returncode == code, result.stderr
    assert ("Failed to run activate script" in result.stderr) == (code == 2)
    assert link(tmp_path / "current-system") == toplevels[current]
    assert link(tmp_path / "lab/boot-entry") == toplevels[boot]
    assert log_lines(tmp_path)[-1][1:] == [mode, failing, SWITCH_EXIT_CODES[code]]
    assert sorted(os.listdir(tmp_path / "nixos")) == ["switch-to-configuration.lock"]


@needs_root
@pytest.mark.parametrize("mode", ["switch", "test", "dry-activate"])
def test_an_incompatible_init_exits_100_and_activates_nothing(
    toplevels: dict[str, str], tmp_path: Path, mode: str
) -> None:
    base, incompatible = toplevels["base"], toplevels["incompatible-init"]
    activate(tmp_path, base, "switch")
    result = activate(tmp_path, incompatible, mode)
    assert result.returncode == 100
    assert result.stderr.startswith("Warning: the new NixOS configuration has an ‘init’ that is\n"
                                    "incompatible with the current configuration.  The new configuration\n"
                                    "won't take effect until you reboot the system.\n")
    assert link(tmp_path / "current-system") == base
    assert link(tmp_path / "lab/boot-entry") == (incompatible if mode == "switch" else base)
    assert log_lines(tmp_path)[-1][1:] == [mode, incompatible, "reboot-needed"]
    assert activate(tmp_path, incompatible, "boot").returncode == 0


@needs_root
def test_failed_units_without_systemd_exit_4_after_activating(toplevels: dict[str, str], tmp_path: Path) -> None:
    activate(tmp_path, toplevels["base"], "switch")
    result = activate(tmp_path, toplevels["failed-units"], "switch")
    assert result.returncode == 4
    assert "Failed to start lab-broken.service" in result.stderr
    assert "warning: the following units failed: lab-broken.service" in result.stderr
    assert link(tmp_path / "current-system") == toplevels["failed-units"]
    assert log_lines(tmp_path)[-1][3] == "units-failed"


@needs_root
def test_install_bootloader_is_recorded(toplevels: dict[str, str], tmp_path: Path) -> None:
    command = ["env", "NIXOS_INSTALL_BOOTLOADER=1", f"{toplevels['base']}/bin/switch-to-configuration", "boot"]
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", PRIVATE_RUN, str(tmp_path),
                             *command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "installing the lab's boot loader" in result.stdout
    assert (tmp_path / "lab/bootloader.log").read_text().split("\t")[1:] == [toplevels["base"], "install\n"]
    assert link(tmp_path / "lab/boot-entry") == toplevels["base"] and link(tmp_path / "current-system") is None


@needs_root
def test_a_specialisation_switches_to_its_own_toplevel(toplevels: dict[str, str], tmp_path: Path) -> None:
    parent = toplevels["specialised"]
    rescue = os.readlink(f"{parent}/specialisation/rescue")
    assert activate(tmp_path, f"{parent}/specialisation/rescue", "switch").returncode == 0
    assert link(tmp_path / "current-system") == link(tmp_path / "lab/boot-entry") == rescue
    broken = activate(tmp_path, f"{parent}/specialisation/broken", "test")
    assert broken.returncode == 2
    assert link(tmp_path / "current-system") == os.readlink(f"{parent}/specialisation/broken")


@needs_root
def test_slow_variant_sleeps_before_switching(toplevels: dict[str, str], tmp_path: Path) -> None:
    started = time.monotonic()
    assert activate(tmp_path, toplevels["slow"], "switch").returncode == 0
    assert time.monotonic() - started >= 1
    assert link(tmp_path / "current-system") == toplevels["slow"]


@needs_root
def test_break_ssh_variant_locks_out_until_the_previous_system_returns(
    toplevels: dict[str, str], tmp_path: Path
) -> None:
    activate(tmp_path, toplevels["base"], "switch")
    assert (tmp_path / "current-system" / KEYS_FILE).read_text() == KEY + "\n"
    assert activate(tmp_path, toplevels["break-ssh"], "switch").returncode == 0
    assert not (tmp_path / "current-system" / KEYS_FILE).exists()
    activate(tmp_path, toplevels["base"], "switch")
    assert (tmp_path / "current-system" / KEYS_FILE).exists()


@needs_root
def test_unknown_mode_is_a_usage_error(toplevels: dict[str, str], tmp_path: Path) -> None:
    for args in [("reboot",), ()]:
        result = activate(tmp_path, toplevels["base"], *args)
        assert result.returncode == 1
    assert result.stderr.startswith("Usage: switch-to-configuration [check|switch|boot|test|dry-activate]\n")
    assert not (tmp_path / "current-system").exists() and not (tmp_path / "lab/boot-entry").exists()
    assert [line[1::2] for line in log_lines(tmp_path)] == [["reboot", "failed"], ["", "failed"]]


@needs_root
def test_the_log_has_one_line_per_call(toplevels: dict[str, str], tmp_path: Path) -> None:
    calls = [
        ("base", "switch"),
        ("upgraded", "dry-activate"),
        ("upgraded", "test"),
        ("fail", "boot"),
        ("reboot", "test"),
        ("base", "bogus"),
        ("fail", "test"),
        ("failed-units", "switch"),
        ("base", "check"),
    ]
    for variant, mode in calls:
        activate(tmp_path, toplevels[variant], mode)
    lines = log_lines(tmp_path)
    assert [(line[1], line[2]) for line in lines] == [(mode, toplevels[variant]) for variant, mode in calls]
    assert [line[3] for line in lines] == \
        ["ok", "ok", "ok", "ok", "reboot-needed", "failed", "activation-failed", "units-failed", "ok"]
    for line in lines:
        assert len(line) == 4
        assert abs(datetime.strptime(line[0], "%Y-%m-%dT%H:%M:%S%z").timestamp() - time.time()) < 60


# --- specs without Nix ------------------------------------------------------------------------


def test_base_packages_are_deterministic_realistic_and_sized() -> None:
    packages = base_packages(1000, seed=1, total_size=100 * MiB)
    assert packages == base_packages(1000, seed=1, total_size=100 * MiB) != base_packages(1000, seed=2)
    assert len({p.pname for p in packages}) == 1000 and packages[0].name == "glibc-2.39"
    assert abs(sum(p.size for p in packages) - 100 * MiB) < MiB
    prefixes = ("perl5.38.2-", "python3.11-", "lib")
    assert all(any(p.pname.startswith(prefix) for p in packages[100:]) for prefix in prefixes)
    SystemSpec("big", DEFAULT_VERSION, packages, ())  # validates the DAG: every dep listed before use
    for count in (1, 20, 51):
        SystemSpec("small", DEFAULT_VERSION, base_packages(count), ())


def test_spec_json_round_trip() -> None:
    spec = with_activation(SPEC, "slow", slow_seconds=2.5)
    assert spec_from_json(spec_to_json(spec)) == spec
    full = with_specialisation(with_sshd_settings(spec, "ClientAliveInterval 42"), "rescue", "reboot")
    assert spec_from_json(spec_to_json(full)) == full
    assert json.loads(spec_to_json(full))["specialisations"] == {"rescue": "incompatible-init"}
    assert json.loads(spec_to_json(full))["init_interface_version"] == "systemd 2"
    older = {k: v for k, v in json.loads(spec_to_json(spec)).items()
             if k not in ("init_interface_version", "sshd_settings", "specialisations")}
    assert spec_from_json(json.dumps(older)) == spec  # a spec written before those fields existed
    data = json.loads(spec_to_json(spec))
    assert data["packages"][3] == {
        "pname": "openssl",
        "version": "3.0.13",
        "size": SPEC.package("openssl").size,
        "outputs": ["out", "lib", "bin"],
        "deps": ["glibc"],
    }


def test_variants_are_pure_and_checked() -> None:
    before = spec_to_json(SPEC)
    assert downgrade(SPEC, "openssl", "3.0.12").package("openssl").version == "3.0.12"
    bash = upgrade(SPEC, "bash", "5.2p32", size=5).package("bash")
    assert (bash.name, bash.size, bash.deps) == ("bash-5.2p32", 5, ("glibc",))
    assert spec_to_json(SPEC) == before
    with pytest.raises(ValueError, match="not newer"):
        upgrade(SPEC, "openssl", "3.0.9")
    with pytest.raises(ValueError, match="not older"):
        downgrade(SPEC, "openssl", "3.0.13")
    with pytest.raises(ValueError, match="cannot remove glibc"):
        remove_package(SPEC, "glibc")
    with pytest.raises(ValueError, match="not listed before it"):
        add_package(SPEC, Package("nginx", "1.26.0", 1, deps=("pcre2",)))
    with pytest.raises(ValueError, match="listed twice"):
        add_package(SPEC, Package("glibc", "2.40", 1))
    with pytest.raises(ValueError, match="unknown activation"):
        with_activation(SPEC, "explode")
    with pytest.raises(ValueError, match="unknown activation"):
        with_specialisation(SPEC, "rescue", "explode")
    with pytest.raises(ValueError, match="not a valid specialisation name"):
        with_specialisation(SPEC, "../etc")
    with pytest.raises(ValueError, match="one non-empty line"):
        with_sshd_settings(SPEC, "PermitRootLogin yes\nPasswordAuthentication yes")
    assert with_activation(SPEC, "reboot").activation == "incompatible-init"
    assert with_specialisation(with_specialisation(SPEC, "b", "fail"), "a").specialisations == \
        (("a", "ok"), ("b", "fail"))
    assert with_specialisation(with_specialisation(SPEC, "a", "fail"), "a").specialisations == (("a", "ok"),)
    with pytest.raises(ValueError, match="not a valid store path name"):
        SystemSpec("web 1", DEFAULT_VERSION, (), ())


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("3.0.13", "3.0.14"),
        ("3.0.9", "3.0.13"),
        ("9.7", "9.7p1"),
        ("1.0pre1", "1.0"),
        ("5.2p26", "5.2p32"),
        ("2.39", "2.39-52"),
        ("2024a", "2024b"),
        ("1.0a", "1.0.1"),
    ],
)
def test_compare_versions_orders_like_nix(older: str, newer: str) -> None:
    assert compare_versions(older, newer) == -1
    assert compare_versions(newer, older) == 1
    assert compare_versions(newer, newer) == 0
