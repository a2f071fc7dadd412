"""End-to-end: `topdeck exec` and `[[keys]]` on every kind of host (host-1 native, Nix 2.8, no init; host-2 Debian 13,
Nix 2.26; host-3 Debian sid, Nix 2.34; both booted with systemd), over the real SSH path of a deploy.

exec: one command on the three hosts, one of which fails; the live lines, the grouped summary and the exit code.
keys: owner, group and mode as the host's own `stat` reads them; pre-activation keys present at the health check
and post-activation ones only after it; a `command` key; a key whose command fails stops the deploy with nothing
changed; a user the host lacks; and the content never in a log, a run record, --json or a process listing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from deploytools import MIXED_KINDS, deploy_inventory, release, state, three_host_lab

from topdeck.lab.nixenv import lab_env

BASE_ADDRESS = "127.0.58.11"  # a lab of its own: the session lab holds TOPDECK_TEST_BASE_ADDRESS
CONFIRM_TIMEOUT = 8
HOSTS = list(MIXED_KINDS)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with three_host_lab(tmp_path_factory.mktemp("execkeyslab"), BASE_ADDRESS, kinds=MIXED_KINDS) as lab:
        yield lab


@pytest.fixture(scope="module")
def state_home(tmp_path_factory):
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory, state_home):
    return deploy_inventory(lab, tmp_path_factory.mktemp("execkeys") / "hosts", CONFIRM_TIMEOUT)


def run(inventory: Path, state_home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=lab_env({"XDG_STATE_HOME": str(state_home)}))


# --- exec -------------------------------------------------------------------------------------------


def test_exec_on_three_hosts_one_failing(lab, inventory, state_home):
    lab.host("host-3").sh("echo broken > /run/topdeck-exec-fail")
    try:
        script = ('echo "same on every host"; if [ -e /run/topdeck-exec-fail ]; then echo "it broke" >&2; exit 3; '
                  'fi; echo "and fine"')
        result = run(inventory, state_home, "exec", "--", "sh", "-c", script)
        machine = run(inventory, state_home, "exec", "--json", "--", "sh", "-c", script)
    finally:
        lab.host("host-3").sh("rm -f /run/topdeck-exec-fail")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for host in HOSTS:  # live: every line behind its host's name
        assert f"{host} | same on every host" in lines
    assert "host-3 | it broke" in lines
    assert "host-1 | and fine" in lines and "host-3 | and fine" not in lines
    summary = lines[lines.index(""):]
    assert summary == ["", "exit 0: host-1, host-2 (2 hosts)", "  | same on every host", "  | and fine",
                       "exit 3: host-3", "  | same on every host", "  | it broke",
                       "2 of 3 host(s) exited 0; failed: host-3"], summary
    assert machine.returncode == 1
    document = json.loads(machine.stdout.splitlines()[-1])
    assert document["ok"] is False
    assert {host["host"]: host["exit_code"] for host in document["hosts"]} == {"host-1": 0, "host-2": 0, "host-3": 3}
    assert [group["hosts"] for group in document["groups"]] == [["host-1", "host-2"], ["host-3"]]


def test_exec_all_ok_and_argv_never_resplit(lab, inventory, state_home):
    marker = f"/run/topdeck-exec-{uuid.uuid4().hex[:8]}"
    # One word with a space and a `;`: quoted once, it names a file; split again by a shell, it would run `touch`.
    result = run(inventory, state_home, "exec", "--on", "host-1,host-2", "--", "ls", f"x; touch {marker}")
    assert result.returncode == 1, result.stdout  # ls: no such file (exit 2), on both hosts
    assert "exit 2: host-1, host-2 (2 hosts)" in result.stdout
    for host in ("host-1", "host-2"):
        assert lab.host(host).sh(f"test -e {marker} && echo yes || echo no").strip() == "no"
    ok = run(inventory, state_home, "exec", "--on", "@web", "--", "cat", "/proc/sys/kernel/ostype")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[-3:] == ["exit 0: host-1, host-2 (2 hosts)", "  | Linux",
                                           "2 of 2 host(s) exited 0"]


def test_exec_timeout_and_unreachable_are_named(lab, inventory, state_home):
    result = run(inventory, state_home, "exec", "--on", "host-2", "--timeout", "1", "--", "sleep", "30")
    assert result.returncode == 1
    assert "timed out after 1 s" in result.stdout
    assert lab.host("host-2").sh("pgrep -x sleep || true").strip() == ""  # the command was stopped on the host


def test_exec_interrupted_stops_the_command_on_every_host(lab, inventory, state_home):
    import signal
    import threading
    import time

    process = subprocess.Popen([sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory), "exec", "--",
                                "sh", "-c", "echo started; exec sleep 300"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=lab_env({"XDG_STATE_HOME": str(state_home)}))
    lines: list[str] = []  # read as they come: every host has started its command before the interrupt

    def read() -> None:
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(f"{h} | started\n" in lines for h in ("host-1", "host-2", "host-3")):
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    reader.join(10)
    out, err = "".join(lines), process.stderr.read()
    assert process.returncode == 130, out + err
    assert "stopping the command on every host…" in err and "topdeck: interrupted" in err
    assert out.splitlines()[-1] == "0 of 3 host(s) exited 0; failed: host-1, host-2, host-3"
    for host in ("host-2", "host-3"):  # each image host has its own process list; none keeps the command
        assert "sleep 300" not in lab.host(host).sh("ps -eo args", check=False)


# --- keys -------------------------------------------------------------------------------------------


def _secret() -> str:
    return f"topdeck-secret-{uuid.uuid4().hex}"


def _write_keys(inventory: Path, fleet: str, per_host: dict[str, str] | None = None) -> None:
    config = inventory / "topdeck.toml"
    text = config.read_text().split("\n# keys\n")[0]
    config.write_text(f"{text}\n# keys\n{fleet}")
    for host in HOSTS:
        path = inventory / host / "host.toml"
        path.write_text(path.read_text().split("\n# keys\n")[0] + f"\n# keys\n{(per_host or {}).get(host, '')}")


def _stat(lab, host: str, path: str) -> str:
    return lab.host(host).sh(f"stat -c '%U %G %a' {path}").strip()


def _all_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


class PsPoller:
    """Reads every process's command line on a host, over and over, while an upload runs."""

    def __init__(self, lab, host: str):
        self.lab, self.host, self.seen = lab, host, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.is_set():
            self.seen.append(self.lab.host(self.host).sh("ps -eo args", check=False))

    def __enter__(self) -> PsPoller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_keys_deploy_pre_and_post_activation(lab, inventory, state_home):
    file_secret, command_secret, post_secret = _secret(), _secret(), _secret()
    (inventory / "file-key.txt").write_text(file_secret)
    (inventory / "command-key.txt").write_text(command_secret)
    (inventory / "host-2" / "post.txt").write_text(post_secret)
    _write_keys(inventory, '''
[[keys]]
name = "app-password"
file = "file-key.txt"
user = "nobody"
group = "nogroup"
permissions = "0440"

[[keys]]
name = "from-command"
command = ["cat", "command-key.txt"]
dest_dir = "/run/topdeck-secrets/app"
''', {"host-2": '''
[[keys]]
name = "after"
file = "post.txt"
upload = "post-activation"
permissions = "0400"
user = "daemon"
group = "daemon"
'''})
    for host in HOSTS:
        lab.host(host).sh("rm -rf /run/keys /run/topdeck-secrets")
    # The health check runs between the activation and the confirmation: the pre-activation keys must be there,
    # the post-activation one not yet.
    check = ("test -s /run/keys/app-password && test -s /run/topdeck-secrets/app/from-command && "
             "! test -e /run/keys/after")
    host_toml = inventory / "host-2" / "host.toml"
    original = host_toml.read_text()
    host_toml.write_text(original.replace("\n# keys\n", f'\n[check]\ncommand = "{check}"\n\n# keys\n', 1))
    try:
        plan = run(inventory, state_home, "plan", "--json")
        target = release(inventory, "web", lambda spec: spec)
        deployed = run(inventory, state_home, "deploy", "--yes", "--json")
        again = run(inventory, state_home, "plan")
    finally:
        host_toml.write_text(original)
    keys_of = json.loads(plan.stdout)["keys"]
    assert [(k["name"], k["dest"], k["upload"], k["change"]) for k in keys_of["host-2"]] == [
        ("app-password", "/run/keys/app-password", "pre-activation", "new"),
        ("from-command", "/run/topdeck-secrets/app/from-command", "pre-activation", "new"),
        ("after", "/run/keys/after", "post-activation", "new")]
    assert [k["name"] for k in keys_of["host-1"]] == ["app-password", "from-command"]
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr
    assert state(lab, "host-2")["current"] == target
    for host in HOSTS:
        files = lab.host(host)
        assert files.sh("cat /run/keys/app-password") == file_secret
        assert _stat(lab, host, "/run/keys/app-password") == "nobody nogroup 440"
        assert files.sh("cat /run/topdeck-secrets/app/from-command") == command_secret
        assert _stat(lab, host, "/run/topdeck-secrets/app/from-command") == "root root 600"
        assert files.sh("ls -A /run/keys /run/topdeck-secrets/app | grep -c topdeck-key || true").strip() == "0"
    assert _stat(lab, "host-2", "/run/keys/after") == "daemon daemon 400"
    assert lab.host("host-2").sh("cat /run/keys/after") == post_secret
    assert lab.host("host-1").sh("test -e /run/keys/after && echo yes || echo no").strip() == "no"
    assert "app-password → /run/keys/app-password (pre-activation, unchanged)" in again.stdout
    # Nowhere else: the deploy's output (--json), the run records and the state folder, the hosts' sshd logs and
    # journals.
    places = {"deploy output": deployed.stdout + deployed.stderr, "plan": plan.stdout + again.stdout,
              "state folder": _all_text(state_home),
              "sshd logs": "".join(lab.host(h).sshd_log.read_text(errors="replace") for h in HOSTS),
              "journals": "".join(lab.host(h).sh("journalctl --no-pager -o cat 2>/dev/null || true", check=False)
                                  for h in ("host-2", "host-3")),
              # host.sh's own records on the host: each run's folder and log, and its state
              "host run records": "".join(lab.host(h).sh("find /run/topdeck /nix/var/nix/topdeck -type f "
                                                         "-exec cat {} + 2>/dev/null || true", check=False)
                                          for h in HOSTS)}
    assert "switch" in places["host run records"], "the hosts' run records were not read"
    assert list((state_home / "topdeck").rglob("runs/*.json")), "no run record was written"
    for secret in (file_secret, command_secret, post_secret):
        for where, text in places.items():
            assert secret not in text, where


def test_upload_keys_never_on_a_command_line(lab, inventory, state_home):
    secret = _secret()
    (inventory / "big.txt").write_text(secret * 20000)  # about 1 MiB: the upload takes a moment
    _write_keys(inventory, '[[keys]]\nname = "big"\nfile = "big.txt"\n')
    seen_upload = False
    for _ in range(8):
        with PsPoller(lab, "host-3") as poller:
            result = run(inventory, state_home, "upload-keys", "--on", "host-3", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        listing = "".join(poller.seen)
        assert secret not in listing and secret not in result.stdout + result.stderr
        seen_upload = seen_upload or "topdeck-key /run/keys big root root 0600" in listing
        if seen_upload:
            break
    assert seen_upload, "the poll never saw the upload's process: it proves nothing"
    assert json.loads(result.stdout)["hosts"] == [{"host": "host-3", "keys": ["big"], "error": ""}]
    assert lab.host("host-3").sh("cat /run/keys/big") == secret * 20000


def test_failing_key_command_stops_the_deploy_with_nothing_changed(lab, inventory, state_home):
    _write_keys(inventory, '[[keys]]\nname = "vault-token"\ncommand = "exit 7"\n')
    before = {host: state(lab, host) for host in HOSTS}
    release(inventory, "web", lambda spec: spec)
    result = run(inventory, state_home, "deploy", "--yes")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"topdeck: error: {inventory / 'topdeck.toml'}: keys[0] (key vault-token): its command exited 7 (its output "
        "is not shown: it may hold the secret); nothing deployed"]
    assert {host: state(lab, host) for host in HOSTS} == before


def test_key_for_a_user_the_host_lacks(lab, inventory, state_home):
    for host in HOSTS:
        lab.host(host).sh("rm -f /run/keys/ghost")
    (inventory / "ghost.txt").write_text(_secret())
    _write_keys(inventory, '[[keys]]\nname = "ghost"\nfile = "ghost.txt"\nuser = "nosuchuser"\n')
    result = run(inventory, state_home, "upload-keys")
    assert result.returncode == 1
    errors = sorted(result.stderr.strip().splitlines())
    assert errors == [f"topdeck: error: {host}: key ghost (/run/keys/ghost): user nosuchuser does not exist on the "
                      "host" for host in HOSTS]
    for host in HOSTS:
        assert lab.host(host).sh("ls -A /run/keys | grep -c -e ghost -e topdeck-key || true").strip() == "0"


# --- through sudo, as a non-root deploy user ----------------------------------------------------------


@pytest.fixture
def as_deployer(inventory):
    """Every host logs in as the lab's deploy user (passwordless sudo) for the test."""
    originals = {host: (inventory / host / "host.toml").read_text() for host in HOSTS}
    for host, text in originals.items():
        (inventory / host / "host.toml").write_text('user = "topdeck-deployer"\nsudo = true\n' + text)
    yield
    for host, text in originals.items():
        (inventory / host / "host.toml").write_text(text)


def test_exec_and_keys_through_sudo(lab, inventory, state_home, as_deployer):
    result = run(inventory, state_home, "exec", "--json", "--", "id", "-un")
    assert result.returncode == 0, result.stdout + result.stderr
    hosts = json.loads(result.stdout.splitlines()[-1])["hosts"]
    # sshd may add "Could not chdir to home directory /nonexistent" on stderr: the deploy user has no home.
    assert {h["host"]: (h["exit_code"], h["output"][-1]) for h in hosts} == {host: (0, "root") for host in HOSTS}
    plain = run(inventory, state_home, "exec", "--", "id", "-un")
    assert plain.returncode == 0 and plain.stdout.splitlines()[-1] == "3 of 3 host(s) exited 0"
    secret = _secret()
    (inventory / "sudo.txt").write_text(secret)
    _write_keys(inventory, '[[keys]]\nname = "via-sudo"\nfile = "sudo.txt"\ngroup = "daemon"\npermissions = "640"\n')
    uploaded = run(inventory, state_home, "upload-keys")
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    for host in HOSTS:
        assert _stat(lab, host, "/run/keys/via-sudo") == "root daemon 640"
        assert lab.host(host).sh("cat /run/keys/via-sudo") == secret
    assert "Accepted publickey for topdeck-deployer" in lab.host("host-1").sshd_log.read_text(errors="replace")


def test_the_upload_snippet_is_posix_sh_and_shellcheck_clean(tmp_path):
    from topdeck.core.keys import UPLOAD_SNIPPET

    script = tmp_path / "upload.sh"
    script.write_text("#!/bin/sh\n" + UPLOAD_SNIPPET)
    checked = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


# --- the real TUI: x on the selected hosts ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_tui_x_runs_a_command_on_the_selected_hosts(lab, inventory):
    from topdeck.core.inventory import load_inventory
    from topdeck.tui.app import TopdeckApp
    from topdeck.tui.backend import Backend
    from topdeck.tui.screens.hostexec import ExecScreen
    from topdeck.tui.widgets.dialogs import PromptScreen

    lab.host("host-3").sh("echo broken > /run/topdeck-exec-fail")
    app = TopdeckApp(Backend(load_inventory(inventory)), refresh=False)
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.press("a", "x")
            for _ in range(100):
                if isinstance(app.screen, PromptScreen):
                    break
                await pilot.pause(0.05)
            await pilot.press(*"sh -c 'echo [b]hello; test -e /run/topdeck-exec-fail && exit 4; exit 0'", "enter")
            for _ in range(600):
                if isinstance(app.screen, ExecScreen) and not app.screen.running:
                    break
                await pilot.pause(0.05)
            screen = app.screen
            assert isinstance(screen, ExecScreen) and not screen.running
            table = screen.query_one("#rows")
            rows = {key.value: [getattr(c, "plain", str(c)) for c in table.get_row(key)] for key in table.rows}
            assert rows == {"host-1": ["host-1", "exit 0", "1", "[b]hello"],
                            "host-2": ["host-2", "exit 0", "1", "[b]hello"],
                            "host-3": ["host-3", "exit 4", "1", "[b]hello"]}
            assert list(screen.query_one("#log").lines) == ["[b]hello"]
            assert screen.result is not None and screen.result.failed == ("host-3",)
    finally:
        lab.host("host-3").sh("rm -f /run/topdeck-exec-fail")
