"""Screenshots of every screen of the TUI, from the lab: screenshots/<screen>.svg and .png (rsvg-convert).

    .venv/bin/python scripts/screenshots.py            # the demo lab (topdeck demo's folder and addresses)
    .venv/bin/python scripts/screenshots.py --lab-dir /tmp/shots-lab --base-address 127.0.23.11 --down

It copies the demo fleet's inventory (hosts/) to a scratch folder, sets the lab up for it with
`topdeck demo --no-tui`, publishes a newer web system so that there is something to plan, then drives the
real app headless with Textual's Pilot: fleet, plan, the deploy confirmation, a deploy running and done,
generations with a diff, pointers, the shared history (h), a command on every host (x), a push of a system the
cache lacks, an unknown host key, and the help.
Needs root (the lab)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZE = (110, 32)
DEMO_ADDRESSES = ("127.0.0.11", "127.0.0.12", "127.0.0.13")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "screenshots", help="where the pictures go")
    parser.add_argument("--lab-dir", type=Path, default=None, help="lab folder (default: the demo lab's)")
    parser.add_argument("--base-address", default="127.0.0.11", help="first host's address (default: the demo's)")
    parser.add_argument("--emulator-port", type=int, default=17890)
    parser.add_argument("--down", action="store_true", help="stop the lab afterwards")
    args = parser.parse_args()

    from topdeck.lab.nixenv import LAB_NIX_CONFIG

    os.environ["NIX_CONFIG"] = LAB_NIX_CONFIG
    if args.lab_dir is not None:
        os.environ["TOPDECK_LAB_DIR"] = str(args.lab_dir)
    lab_dir = Path(os.environ.get("TOPDECK_LAB_DIR", "/var/lib/topdeck-lab"))
    scratch = Path(tempfile.mkdtemp(prefix="topdeck-shots-"))
    os.environ["XDG_STATE_HOME"] = str(scratch / "state")  # the shots' run records go with the scratch inventory
    try:
        inventory = copy_inventory(scratch, lab_dir, args.base_address, args.emulator_port)
        topdeck(inventory, "demo", "--no-tui")
        release(inventory, "web", "2")
        args.out.mkdir(parents=True, exist_ok=True)
        asyncio.run(shoot(inventory, args.out))
    finally:
        if args.down:
            topdeck(None, "lab", "--root", str(lab_dir), "down")
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def copy_inventory(scratch: Path, lab_dir: Path, base_address: str, port: int) -> Path:
    """The demo fleet on the chosen lab folder, addresses and emulator port (a copy: hosts/ is not touched)."""
    import ipaddress

    hosts = scratch / "hosts"
    shutil.copytree(REPO / "hosts", hosts)
    (scratch / "lab").symlink_to(REPO / "lab")  # hosts/fleet.nix imports ../lab/nix/toplevel.nix
    config = hosts / "topdeck.toml"
    config.write_text(config.read_text().replace("/var/lib/topdeck-lab", str(lab_dir))
                      .replace("http://127.0.0.1:17890", f"http://127.0.0.1:{port}"))
    base = ipaddress.ip_address(base_address)
    for index, old in enumerate(DEMO_ADDRESSES):
        for host_file in hosts.glob("*/host.toml"):
            host_file.write_text(host_file.read_text().replace(f'"{old}"', f'"{base + index}"'))
    return hosts


def topdeck(inventory: Path | None, *args: str) -> str:
    command = [sys.executable, "-m", "topdeck.cli"]
    if inventory is not None:
        command += ["--inventory", str(inventory)]
    result = subprocess.run([*command, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"topdeck {' '.join(args)} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def release(inventory: Path, role: str, serial: str) -> None:
    """A newer system for `role` (one package upgraded, one added), published through `topdeck push`."""
    from topdeck.lab import factory

    spec_file = inventory / "systems" / f"{role}.json"
    spec = factory.spec_from_json(spec_file.read_text())
    spec = factory.upgrade(spec, "openssl", "3.0.14", size=121_000)
    spec = factory.add_package(spec, factory.Package(f"{role}-app", "1.0", size=200_000))
    spec = dataclasses.replace(spec, version=f"24.11.2024112{serial}.abcdef0")
    spec_file.write_text(factory.spec_to_json(spec))
    topdeck(inventory, "push", "web-1")


async def shoot(inventory_dir: Path, out: Path) -> None:
    from topdeck.core.inventory import load_inventory
    from topdeck.core.nix import localnix
    from topdeck.lab import factory
    from topdeck.tui.app import TopdeckApp
    from topdeck.tui.backend import Backend
    from topdeck.tui.screens.deploy import DeployScreen
    from topdeck.tui.screens.generations import GenerationsScreen
    from topdeck.tui.screens.history import HistoryScreen
    from topdeck.tui.screens.hostexec import ExecScreen
    from topdeck.tui.screens.hostkey import HostKeyScreen
    from topdeck.tui.screens.plan import PlanScreen
    from topdeck.tui.screens.pointers import PointersScreen
    from topdeck.tui.screens.push import PushScreen

    inventory = load_inventory(inventory_dir)
    backend = Backend(inventory)
    app = TopdeckApp(backend)
    app.sub_title = "hosts (the demo fleet)"
    async with app.run_test(size=SIZE) as pilot:
        async def until(condition: Callable[[], object], timeout: float = 300) -> None:
            deadline = time.monotonic() + timeout
            while not condition():
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out on {type(app.screen).__name__}")
                await pilot.pause(0.1)

        def save(name: str) -> None:
            svg = out / f"{name}.svg"
            app.save_screenshot(svg.name, str(out))
            to_png(svg)
            print(f"{svg} and .png", flush=True)

        await until(lambda: app.fleet.refreshed)
        await pilot.press("down", "space", "space")
        await pilot.pause(0.3)
        save("fleet")

        await pilot.press("p")
        await until(lambda: isinstance(app.screen, PlanScreen) and app.screen.fleet_plan is not None)
        await pilot.pause(0.3)
        save("plan")
        await pilot.press("d")
        await pilot.pause(0.3)
        save("plan-confirm")

        await pilot.press("y")
        await until(lambda: isinstance(app.screen, DeployScreen))
        deploy = app.screen
        # A running deploy with something to show: every host fetching with its counts, or past the fetch.
        later = ("profile", "activate", "confirm", "check", "done")
        await until(lambda: all(row.phase in later or (row.phase == "fetch" and row.paths_total)
                                for row in deploy.rows.values()) or not deploy.running)
        await pilot.pause(0.2)
        save("deploy-running")
        await until(lambda: not deploy.running)
        await pilot.pause(0.5)
        save("deploy")
        await pilot.press("escape")
        await until(lambda: app.screen.__class__.__name__ == "FleetScreen" and not app.screen.refreshing)
        await pilot.pause(0.3)
        save("fleet-after-deploy")

        await pilot.press("g")
        await until(lambda: isinstance(app.screen, GenerationsScreen)
                    and app.screen.query_one("#generations").row_count >= 2)
        await pilot.press("down", "d")
        await until(lambda: "→ generation" in str(app.screen.query_one("#diff").content))
        await pilot.pause(0.3)
        save("generations")
        await pilot.press("escape")

        await pilot.press("o")
        await until(lambda: isinstance(app.screen, PointersScreen) and app.screen.query_one("#history").row_count)
        await pilot.press("down")
        await until(lambda: app.screen.query_one("#history").row_count >= 2)
        await pilot.pause(0.3)
        save("pointers")
        await pilot.press("escape")

        # h: every operator's runs, from the bucket; enter opens one run's hosts.
        await pilot.press("h")
        await until(lambda: isinstance(app.screen, HistoryScreen) and app.screen.query_one("#runs").row_count)
        await pilot.press("enter")
        await until(lambda: app.screen.query_one("#runhosts").row_count)
        await pilot.pause(0.3)
        save("history")
        await pilot.press("escape")

        # x: a command on every host; hosts with the same output are grouped at the end.
        every = ["db-1", "web-1", "web-2"]
        command = ["sh", "-c", 'echo "$(cat /run/current-system/nixos-version)"; uname -s']
        app.push_screen(ExecScreen(every, command,
                                   lambda emit, cancel: backend.run_command(every, command, emit, cancel)))
        await until(lambda: isinstance(app.screen, ExecScreen) and not app.screen.running)
        await pilot.press("down")
        await pilot.pause(0.3)
        save("exec")
        await pilot.press("escape")

        # A system the cache lacks: the plan says so, u pushes it.
        spec_file = inventory_dir / "systems" / "web.json"
        spec = factory.add_package(factory.spec_from_json(spec_file.read_text()),
                                   factory.Package("web-extras", "0.3", size=3_000_000))
        spec_file.write_text(factory.spec_to_json(spec))
        host = inventory.host("web-1")
        assert host.build is not None
        local = str(localnix.build(host.build, log=lambda line: None))
        app.push_screen(PlanScreen(["web-1"], local))
        await until(lambda: isinstance(app.screen, PlanScreen) and (app.screen.error or app.screen.fleet_plan))
        await pilot.pause(0.3)
        save("plan-not-in-cache")
        await pilot.press("u")
        await until(lambda: isinstance(app.screen, PushScreen) and app.screen.result is not None)
        await pilot.pause(0.3)
        save("push")
        await pilot.press("escape")
        await until(lambda: isinstance(app.screen, PlanScreen) and app.screen.fleet_plan is not None)
        await pilot.press("escape")

        # An unknown host key: what the operator sees when known_hosts lacks a host.
        known = inventory_dir / "known_hosts.partial"
        pinned = Path(str(inventory.ssh.known_hosts)).read_text().splitlines()
        address = inventory.host("web-2").address
        known.write_text("".join(f"{line}\n" for line in pinned if not line.startswith(address + " ")))
        partial = Backend(dataclasses.replace(inventory, ssh=dataclasses.replace(inventory.ssh, known_hosts=known)))
        try:
            partial.check_host_key("web-2")
        except Exception as error:  # UnknownHostKey
            app.push_screen(HostKeyScreen(error))
        await pilot.pause(0.3)
        save("hostkey")
        await pilot.press("n")

        await pilot.press("question_mark")
        await pilot.pause(0.3)
        save("help")
        await pilot.press("escape")


def to_png(svg: Path) -> None:
    """rsvg-convert, after asking it to keep the spaces Textual writes as &#160; (it drops leading ones)."""
    if shutil.which("rsvg-convert") is None:
        print("rsvg-convert not found (apt-get install librsvg2-bin): SVG only", file=sys.stderr)
        return
    text = re.sub(r"<text ", '<text xml:space="preserve" ', svg.read_text())
    with tempfile.NamedTemporaryFile("w", suffix=".svg", delete=False) as fixed:
        fixed.write(text)
    try:
        subprocess.run(["rsvg-convert", fixed.name, "-o", str(svg.with_suffix(".png"))], check=True)
    finally:
        os.unlink(fixed.name)


if __name__ == "__main__":
    sys.exit(main())
