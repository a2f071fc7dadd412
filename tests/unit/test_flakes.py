"""core.nix.flakes against a scripted Nix (localnix's runner faked): one evaluation per flake, one `nix build` for all,
the `^out` suffix by version, and Nix's errors said plainly (tests/lab/test_flake.py runs the real Nix)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from topdeck.core.errors import NixError
from topdeck.core.inventory import Build
from topdeck.core.nix import flakes, localnix


def drv(name: str) -> str:
    return f"/nix/store/{'d' * 32}-nixos-system-{name}.drv"


def out(name: str) -> str:
    return f"/nix/store/{'0' * 32}-nixos-system-{name}"


class ScriptedNix:
    """Answers `nix eval` with the flake's configurations and `nix build --json` with an output per derivation."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, version: tuple[int, int, int], configurations: list[str],
                 eval_error: str = ""):
        self.commands: list[list[str]] = []
        self.configurations, self.eval_error = configurations, eval_error
        monkeypatch.setattr(localnix, "detect_nix", lambda env=None: localnix.NixVersion("Nix", version))
        monkeypatch.setattr(localnix, "run_logged", self.run)

    def run(self, command: list[str], *, what: str, log, cancel, env) -> str:
        self.commands.append(command)
        if "eval" in command:
            if self.eval_error:
                raise NixError(self.eval_error)
            names = command[command.index("--apply") + 1].split("[ ")[1].split(" ]")[0].replace('"', "").split()
            missing = [n for n in names if n not in self.configurations]
            return json.dumps({"available": self.configurations, "missing": missing,
                               "drvs": [drv(n) if n not in missing else None for n in names]})
        derivations = [d.removesuffix("^out") for d in command if d.startswith("/nix/store/")]
        return json.dumps([{"drvPath": d, "outputs": {"out": out(d.split("nixos-system-")[1].removesuffix(".drv"))}}
                           for d in derivations])


def flake_dir(tmp_path: Path) -> Path:
    (tmp_path / "flake.nix").write_text("{ outputs = _: { }; }\n")
    return tmp_path


def builds(flake: Path, *names: str) -> list[Build]:
    return [Build("flake", flake=str(flake), name=name, where=f"hosts/{name}/host.toml: build.flake") for name in names]


def test_no_builds_ask_nothing_of_nix() -> None:
    assert flakes.build_flakes([], log=print) == {}


@pytest.mark.parametrize(("version", "suffix"), [((2, 8, 0), ""), ((2, 13, 0), "^out"), ((2, 34, 8), "^out")])
def test_one_evaluation_and_one_build_for_every_host_of_a_flake(monkeypatch, tmp_path, version, suffix) -> None:
    nix = ScriptedNix(monkeypatch, version, ["web", "db"])
    wanted = builds(flake_dir(tmp_path), "web", "db", "web")  # a build asked twice is built once
    built = flakes.build_flakes(wanted, log=print)
    assert {build.name: str(path) for build, path in built.items()} == {"web": out("web"), "db": out("db")}
    assert len(nix.commands) == 2 and "eval" in nix.commands[0]
    assert nix.commands[1][-2:] == sorted([drv("db") + suffix, drv("web") + suffix])


def test_a_missing_configuration_names_the_host_and_what_the_flake_has(monkeypatch, tmp_path) -> None:
    ScriptedNix(monkeypatch, (2, 26, 3), ["web"])
    with pytest.raises(NixError) as caught:
        flakes.build_flakes(builds(flake_dir(tmp_path), "web", "mail"), log=print)
    assert str(caught.value) == (f"hosts/mail/host.toml: build.flake: flake {tmp_path} has no "
                                 "nixosConfigurations.mail (it has: web)")


@pytest.mark.parametrize(("folder", "message"), [
    ("nowhere", "no such folder"),
    ("empty", "has no flake.nix"),
])
def test_a_local_flake_must_be_a_folder_with_a_flake_nix(monkeypatch, tmp_path, folder, message) -> None:
    ScriptedNix(monkeypatch, (2, 8, 0), ["web"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NixError, match=f"^hosts/web/host.toml: build.flake: flake {tmp_path / folder}.*{message}$"):
        flakes.build_flakes(builds(tmp_path / folder, "web"), log=print)


@pytest.mark.parametrize(("nix_says", "topdeck_says"), [
    ("access to absolute path '/etc/secret' is forbidden in pure evaluation mode (use '--impure' to override)",
     "flake {flake} reads /etc/secret, outside the flake, which pure evaluation forbids (put it into the flake)"),
    ("flake 'path:/x' does not provide attribute 'nixosConfigurations'", "flake {flake} has no nixosConfigurations"),
    ("undefined variable 'pkgs'", "evaluating flake {flake} failed: undefined variable 'pkgs'"),
])
def test_evaluation_errors_are_said_plainly(monkeypatch, tmp_path, nix_says: str, topdeck_says: str) -> None:
    flake = flake_dir(tmp_path)
    ScriptedNix(monkeypatch, (2, 26, 3), ["web"], eval_error=nix_says)
    with pytest.raises(NixError) as caught:
        flakes.build_flakes(builds(flake, "web"), log=print)
    assert str(caught.value) == "hosts/web/host.toml: build.flake: " + topdeck_says.format(flake=flake)


def test_a_file_git_does_not_track_is_named_with_the_command_that_fixes_it(monkeypatch, tmp_path) -> None:
    flake = flake_dir(tmp_path)
    (flake / "hardware.nix").write_text("{ }\n")
    nix_says = f"getting status of '/nix/store/{'s' * 32}-source/hardware.nix': No such file or directory"  # 2.8
    ScriptedNix(monkeypatch, (2, 8, 0), ["web"], eval_error=nix_says)
    with pytest.raises(NixError) as caught:
        flakes.build_flakes(builds(flake, "web"), log=print)
    assert str(caught.value) == (f"hosts/web/host.toml: build.flake: {flake / 'hardware.nix'} is not tracked by git: "
                                 "a flake in a git repository sees only its tracked files (git add hardware.nix)")


def test_a_build_that_is_not_a_flake_configuration_is_refused(monkeypatch) -> None:
    ScriptedNix(monkeypatch, (2, 8, 0), [])
    with pytest.raises(NixError, match="^x: not a flake build of a configuration name$"):
        flakes.build_flakes([Build("flake", flake="/f", name="bad name", where="x")], log=print)
