"""`exec` and `[[keys]]` against fake sessions: the argv quoted once, the grouping, the exit codes; keys sent on
stdin only, before the activation or after it, what the operator's side remembers (never the content), and a key
that cannot be read stopping everything before any host is touched. (The real hosts: tests/lab/test_exec_keys.py.)"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from test_engine_units import KEY, NEW, FakeHost
from test_engine_units import Fleet as FakeFleet

from topdeck.cli.hostexec import render_summary, result_json
from topdeck.cli.plan import render_keys
from topdeck.core import hostexec, keys
from topdeck.core.deploy import HostRules, Settings, Target, deploy
from topdeck.core.errors import DeployError, SSHError
from topdeck.core.events import LogLine
from topdeck.core.inventory import Host, Key, SSHConfig
from topdeck.core.remote.ssh import Result
from topdeck.core.vocabulary import Outcome

# --- exec -------------------------------------------------------------------------------------------


class Shell:
    """A host that answers each command with what `answer(argv)` says: (exit code, stdout lines, stderr lines)."""

    def __init__(self, answer: Callable[[list[str]], tuple[int, list[str], list[str]]]):
        self.answer, self.commands, self.stdin = answer, [], []

    def connect(self, host: Host, ssh: SSHConfig) -> Session:
        if host.address == "0.0.0.0":
            raise SSHError(f"{host.name}: connection refused")
        return Session(host, self)


class Session:
    def __init__(self, host: Host, shell: Shell):
        self.host, self.shell = host, shell

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def run(self, command: str, stdin: bytes | None = None, *, on_stdout_line=None, on_stderr_line=None,
            timeout=None, cancel=None) -> Result:
        self.shell.commands.append((self.host.name, command))
        self.shell.stdin.append(stdin)
        code, out, err = self.shell.answer([self.host.name, *shlex.split(command)])
        for line in out:
            on_stdout_line and on_stdout_line(line)
        for line in err:
            on_stderr_line and on_stderr_line(line)
        return Result(code, "".join(f"{line}\n" for line in out).encode(), "".join(f"{e}\n" for e in err).encode())


HOSTS = (Host("web-1", "10.0.0.1", "web"), Host("web-2", "10.0.0.2", "web"), Host("db-1", "10.0.0.3", "db"))


def test_exec_groups_hosts_by_exit_code_and_output():
    shell = Shell(lambda argv: (3, ["same", "db says no"], ["err"]) if argv[0] == "db-1" else (0, ["same"], []))
    events = []
    result = hostexec.exec_hosts(HOSTS, ["systemctl", "is-active", "nginx"], SSHConfig(), connect=shell.connect,
                                 emit=events.append)
    assert not result.ok and result.failed == ("db-1",)
    assert [(g.hosts, g.exit_code, g.output) for g in result.groups()] == [
        (("web-1", "web-2"), 0, ("same",)), (("db-1",), 3, ("same", "db says no", "err"))]
    assert sorted((e.host, e.text) for e in events if isinstance(e, LogLine)) == [
        ("db-1", "db says no"), ("db-1", "err"), ("db-1", "same"), ("web-1", "same"), ("web-2", "same")]
    assert render_summary(result) == ["", "exit 0: web-1, web-2 (2 hosts)", "  | same", "exit 3: db-1", "  | same",
                                      "  | db says no", "  | err", "2 of 3 host(s) exited 0; failed: db-1"]
    assert result_json(result)["groups"][1] == {"hosts": ["db-1"], "exit_code": 3, "ending": "exit 3",
                                                "output": ["same", "db says no", "err"]}


def test_exec_quotes_the_argv_once_and_uses_sudo_where_the_host_asks():
    shell = Shell(lambda argv: (0, [], []))
    hosts = (Host("web-1", "10.0.0.1", "web", user="deploy", sudo=True), Host("web-2", "10.0.0.2", "web"))
    argv = ["sh", "-c", "echo $HOME; rm -rf /tmp/x", "it's"]
    result = hostexec.exec_hosts(hosts, argv, SSHConfig(), connect=shell.connect)
    assert result.ok
    commands = dict(shell.commands)
    assert shlex.split(commands["web-1"]) == ["sudo", "-n", *argv]
    assert shlex.split(commands["web-2"]) == argv
    assert commands["web-2"] == "sh -c 'echo $HOME; rm -rf /tmp/x' 'it'\"'\"'s'"


def test_exec_an_unreachable_host_and_a_signal_are_results_not_crashes():
    shell = Shell(lambda argv: (-1, [], []))
    hosts = (Host("web-1", "0.0.0.0", "web"), Host("web-2", "10.0.0.2", "web"))
    result = hostexec.exec_hosts(hosts, ["uptime"], SSHConfig(), connect=shell.connect)
    assert [(run.host, run.exit_code, run.ending) for run in result.runs] == [
        ("web-1", None, "web-1: connection refused"), ("web-2", -1, "killed by a signal")]
    assert render_summary(result)[-1] == "0 of 2 host(s) exited 0; failed: web-1, web-2"


@pytest.mark.parametrize("argv,problem", [
    ([], "exec needs a command after `--`"),
    ([""], "the program (the first word after `--`) is empty"),
    (["echo", "a\0b"], "word 2 of the command holds a NUL byte"),
])
def test_exec_refuses_a_command_no_host_can_run(argv, problem):
    with pytest.raises(DeployError, match="exec") as error:
        hostexec.exec_hosts(HOSTS, argv, SSHConfig(), connect=Shell(lambda argv: (0, [], [])).connect)
    assert problem in str(error.value)


@pytest.mark.parametrize("timeout", [0, -1, 1e12])
def test_exec_refuses_a_bad_timeout(timeout):
    with pytest.raises(DeployError, match="timeout"):
        hostexec.check_timeout(timeout)


# --- keys -------------------------------------------------------------------------------------------

SECRET = b"s3cret-\x00-binary\n"


def _content(name: str = "db", content: bytes = SECRET, **options: str) -> keys.KeyContent:
    return keys.KeyContent(Key(name, file=Path("/x"), **options), content)


def test_upload_sends_the_content_on_stdin_only():
    shell = Shell(lambda argv: (0, [f"key\t{argv[7]}/{argv[8]}"], []))
    session = shell.connect(Host("web-1", "10.0.0.1", "web", user="deploy", sudo=True), SSHConfig())
    keys.upload(session, [_content(user="app", group="www", permissions="0440", dest_dir="/run/app")])
    (host, command), = shell.commands
    assert shell.stdin == [SECRET]
    assert SECRET.decode(errors="replace") not in command and b"s3cret" not in command.encode()
    argv = shlex.split(command)
    assert argv[:4] == ["sudo", "-n", "sh", "-c"] and argv[4] == keys.UPLOAD_SNIPPET
    assert argv[5:] == ["topdeck-key", "/run/app", "db", "app", "www", "0440"]
    assert "s3cret" not in repr(_content())


def test_upload_names_the_key_that_failed():
    shell = Shell(lambda argv: (1, ["user app does not exist on the host"], []))
    session = shell.connect(Host("web-1", "10.0.0.1", "web"), SSHConfig())
    with pytest.raises(DeployError) as error:
        keys.upload(session, [_content(user="app")])
    assert str(error.value) == "web-1: key db (/run/keys/db): user app does not exist on the host"


def test_a_key_file_that_cannot_be_read_is_one_line(tmp_path):
    key = Key("db", file=tmp_path / "gone.txt", where="topdeck.toml: keys[0] (key db)")
    with pytest.raises(DeployError) as error:
        keys.read_key(key, tmp_path)
    assert str(error.value) == (f"topdeck.toml: keys[0] (key db): cannot read {tmp_path}/gone.txt: No such file or "
                                "directory; nothing deployed")


def test_the_plan_tells_new_changed_and_unchanged_keys_by_a_keyed_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    root = tmp_path / "inventory"
    first = {"web-1": [_content("db"), _content("tls", b"cert")], "web-2": []}
    assert [p.change for p in keys.plan_keys(root, first)["web-1"]] == ["new", "new"]
    keys.remember(root, "web-1", first["web-1"])
    assert [p.change for p in keys.plan_keys(root, first)["web-1"]] == ["unchanged", "unchanged"]
    later = {"web-1": [_content("db", b"rotated"), _content("tls", b"cert", permissions="0400")]}
    assert [p.change for p in keys.plan_keys(root, later)["web-1"]] == ["changed", "changed"]
    stored = b"".join(p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file())
    assert SECRET not in stored and b"cert" not in stored
    assert render_keys(keys.plan_keys(root, first)) == [
        "web-1: keys over SSH", "  db → /run/keys/db (pre-activation, unchanged)",
        "  tls → /run/keys/tls (pre-activation, unchanged)", ""]


class KeyHost(FakeHost):
    """A fake host that also takes key uploads, noting when each came among the host script's verbs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.keys: dict[str, bytes] = {}

    def run(self, command: str, stdin: bytes | None, out: Callable[[str], None],
            cancel: threading.Event | None) -> int:
        argv = shlex.split(command)
        if argv[3] != "topdeck-key":
            return super().run(command, stdin, out, cancel)
        self.verbs.append(f"key {argv[5]}")
        self.keys[argv[5]] = stdin or b""
        out(f"key\t{argv[4]}/{argv[5]}")
        return 0


def _key_fleet() -> FakeFleet:
    lab = FakeFleet("web-1", "web-2")
    lab.fakes = {name: KeyHost(name, fake.systems) for name, fake in lab.fakes.items()}
    return lab


def test_deploy_uploads_pre_activation_keys_before_the_run_and_post_activation_after_it():
    lab = _key_fleet()
    contents = {"web-1": [_content("pre"), _content("post", b"later", upload="post-activation")], "web-2": []}
    settings = Settings("switch", "http://cache.invalid", KEY, 2, "run-1")
    result = deploy(lab.hosts, {h.name: Target(NEW) for h in lab.hosts}, settings, SSHConfig(),
                    HostRules(keys=contents), connect=lab.connect)
    assert result.ok
    assert lab.fakes["web-1"].verbs[0] == "key pre" and lab.fakes["web-1"].verbs[-1] == "key post"
    assert lab.fakes["web-1"].verbs.index("deploy") < lab.fakes["web-1"].verbs.index("key post")
    assert lab.fakes["web-1"].keys == {"pre": SECRET, "post": b"later"}
    assert not any(verb.startswith("key") for verb in lab.fakes["web-2"].verbs)


def test_a_failed_pre_activation_key_fails_the_host_before_its_run():
    lab = _key_fleet()

    def refuse(command, stdin, out, cancel):
        out("group www does not exist on the host")
        return 1

    lab.fakes["web-1"].run = lambda command, stdin, out, cancel: (  # type: ignore[method-assign]
        refuse(command, stdin, out, cancel) if "topdeck-key" in command else KeyHost.run(lab.fakes["web-1"], command,
                                                                                         stdin, out, cancel))
    settings = Settings("switch", "http://cache.invalid", KEY, 2, "run-1")
    result = deploy(lab.hosts[:1], {"web-1": Target(NEW)}, settings, SSHConfig(),
                    HostRules(keys={"web-1": [_content("tls", group="www")]}), connect=lab.connect)
    outcome, = result.outcomes
    assert outcome.outcome == Outcome.FAILED
    assert outcome.reason == ("web-1: key tls (/run/keys/tls): group www does not exist on the host; the host's "
                              "system was not changed")
    assert "deploy" not in lab.fakes["web-1"].verbs


# --- the command line: bad input is one line, before the inventory is read -----------------------------------

CLI_ROWS = [
    (["exec"], 1, "topdeck: error: exec needs a command after `--` (as: topdeck exec --on web-1 -- uptime)"),
    (["exec", "--"], 1, "topdeck: error: exec needs a command after `--`"),
    (["exec", "--", ""], 1, "topdeck: error: exec: the program (the first word after `--`) is empty"),
    (["exec", "--timeout", "0", "--", "uptime"], 1, "topdeck: error: --timeout 0: must be more than 0 seconds"),
    (["exec", "--timeout", "nan", "--", "uptime"], 1, "topdeck: error: --timeout nan: must be more than 0"),
    (["exec", "--parallel", "0", "--", "uptime"], 2, "exec: argument --parallel: '0': give a number of hosts"),
    (["exec", "--parallel", "²", "--", "uptime"], 2, "exec: argument --parallel: '²': give a number of hosts"),
    (["exec", "--on", ",", "--", "uptime"], 2, "exec: argument --on: ',' names no host"),
    (["upload-keys", "--on", ""], 2, "upload-keys: argument --on: '' names no host"),
]


@pytest.mark.parametrize(("argv", "code", "expected"), CLI_ROWS, ids=[" ".join(argv) for argv, _, _ in CLI_ROWS])
def test_bad_exec_and_upload_keys_arguments_are_one_line(argv, code, expected, tmp_path, capsys):
    from topdeck.cli.main import main

    missing = tmp_path / "no-inventory-here"
    try:
        result = main(["--inventory", str(missing), *argv])
    except SystemExit as exit_:
        result = exit_.code
    assert result == code
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and expected in err, err
    assert str(missing) not in err


def test_a_failed_post_activation_key_fails_the_host_that_was_activated():
    lab = _key_fleet()
    fake = lab.fakes["web-1"]

    def run(command, stdin, out, cancel):
        if "topdeck-key" in command and " late " in f" {command} ":
            fake.verbs.append("key late refused")
            out("group www does not exist on the host")
            return 1
        return KeyHost.run(fake, command, stdin, out, cancel)

    fake.run = run  # type: ignore[method-assign]
    settings = Settings("switch", "http://cache.invalid", KEY, 2, "run-1")
    result = deploy(lab.hosts[:1], {"web-1": Target(NEW)}, settings, SSHConfig(),
                    HostRules(keys={"web-1": [_content("early"),
                                              _content("late", group="www", upload="post-activation")]}),
                    connect=lab.connect)
    outcome, = result.outcomes
    assert fake.current == str(NEW) and fake.verbs[-1] == "key late refused"
    assert outcome.outcome == Outcome.FAILED and outcome.after == str(NEW)
    assert outcome.reason == ("activated, but the post-activation keys were not all uploaded: web-1: key late "
                              "(/run/keys/late): group www does not exist on the host")
