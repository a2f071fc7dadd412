"""TUI benchmark: start-to-first-frame with 3 and 500 hosts, refreshing the 500-host table, and how responsive
the UI stays while 20 hosts deploy.

    .venv/bin/python bench/tui.py [--repeat 5]

No lab: the inventories are real folders read by core's load_inventory; the engine is the fake of
tests/tui_fakes.py, so the figures measure the TUI alone. The deploy is the fake engine emitting real core
events from its worker thread at a rate far above a real fleet's (20 hosts x 400 fetch progress events in
about 4 s, ~2 000 events/s), while keys are pressed; the baseline is the same keys with nothing running.
First frame is measured from a fresh process (interpreter start and imports included) to the first frame of
the fleet screen, headless.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

FIRST_FRAME = r"""
import time, sys
started = time.perf_counter()
sys.path.insert(0, sys.argv[2])
import asyncio
from topdeck.core.inventory import load_inventory
from topdeck.tui.app import TopdeckApp
from tui_fakes import FakeBackend, NOW

class Backend(FakeBackend):
    def status(self, emit, cancel=None):  # the refresh stays in the background: never answers here
        time.sleep(0.5)
        return ()

async def main():
    app = TopdeckApp(Backend(load_inventory(sys.argv[1])), clock=lambda: NOW)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert screen.query_one("#hosts").row_count == len(app.inventory.hosts)
        print(time.perf_counter() - started, flush=True)
        await pilot.pause(0.6)

asyncio.run(main())
"""


def write_inventory(root: Path, count: int) -> Path:
    root.mkdir(parents=True)
    (root / "topdeck.toml").write_text('[cache]\ntype = "dir"\npath = "cache"\nurl = "http://cache.example"\n')
    for i in range(count):
        folder = root / f"node-{i:03d}"
        folder.mkdir()
        (folder / "host.toml").write_text(
            f'address = "10.0.{i // 250}.{i % 250 + 1}"\npointer = "{"db" if i % 5 == 0 else "web"}"\n'
            f'tags = ["{"db" if i % 5 == 0 else "web"}", "rack-{i % 8}"]\n')
    return root


def first_frame(inventory: Path, repeat: int) -> list[float]:
    runs = []
    for _ in range(repeat):
        result = subprocess.run([sys.executable, "-c", FIRST_FRAME, str(inventory), str(REPO / "tests")],
                                capture_output=True, text=True, check=True, cwd=REPO)
        runs.append(float(result.stdout.split()[0]))
    return runs


async def refresh_500(inventory: Path, repeat: int) -> tuple[list[float], list[float]]:
    """(table refill alone, refill until the next frame is drawn), seconds, for 500 hosts with statuses."""
    from tui_fakes import NOW, FakeBackend

    from topdeck.core.inventory import load_inventory
    from topdeck.tui.app import TopdeckApp

    app = TopdeckApp(FakeBackend(load_inventory(inventory)), clock=lambda: NOW)
    fill, framed = [], []
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        while screen.refreshing or not app.fleet.statuses:
            await pilot.pause(0.05)
        await pilot.press(*["down"] * 30)
        for _ in range(repeat):
            started = time.perf_counter()
            screen.refresh_done(_refreshed(app))
            fill.append(screen.populate_seconds)
            await pilot.pause()  # until the app is idle again: layout and paint of the screen included
            framed.append(time.perf_counter() - started)
        assert screen.highlighted() == "node-030"
    return fill, framed


def _refreshed(app):  # type: ignore[no-untyped-def]
    from topdeck.tui.screens.fleet import Refreshed

    return Refreshed(app.backend.statuses(), app.backend.pointers(), (), 0.0)


async def responsiveness(inventory: Path, deploying: bool) -> dict[str, float]:
    """Key round trips (press to handled) and the event loop's worst stall, with or without 20 hosts deploying."""
    from tui_fakes import NOW, FakeBackend

    from topdeck.core.inventory import load_inventory
    from topdeck.tui.app import TopdeckApp
    from topdeck.tui.screens.deploy import DeployScreen

    backend = FakeBackend(load_inventory(inventory), delay=0.5, fetch_steps=400)
    app = TopdeckApp(backend, clock=lambda: NOW, refresh=False)
    hosts = [host.name for host in app.inventory.hosts]
    events = 0
    async with app.run_test(size=(120, 40)) as pilot:
        screen = DeployScreen("deploy (switch)", hosts,
                              (lambda emit, cancel: backend._run(tuple(hosts), "switch", emit, cancel))
                              if deploying else None)
        original = screen.apply

        def counting(event):  # type: ignore[no-untyped-def]
            nonlocal events
            events += 1
            original(event)

        screen.apply = counting  # type: ignore[method-assign]
        await app.push_screen(screen)
        stalls: list[float] = []
        last = time.perf_counter()

        def tick() -> None:
            nonlocal last
            now = time.perf_counter()
            stalls.append(now - last - 0.02)
            last = now

        timer = app.set_interval(0.02, tick)
        table = screen.query_one("#rows")
        keys: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < 3.0:
            row = table.cursor_row
            key = "down" if row < len(hosts) - 1 and (len(keys) // 19) % 2 == 0 else "up"
            if key == "up" and row == 0:
                key = "down"
            before = time.perf_counter()
            press(app, key)  # the way a terminal's key arrives: through the driver
            while table.cursor_row == row:
                await asyncio.sleep(0.002)
            keys.append(time.perf_counter() - before)
            await asyncio.sleep(0.03)
        timer.stop()
        still_running = screen.running
        if deploying:
            while screen.running:
                await pilot.pause(0.1)
            ok = all(row.phase == "done" for row in screen.rows.values())
        else:
            ok = True
    return {"key_median": statistics.median(keys), "key_max": max(keys), "stall_max": max(stalls),
            "events": events, "running_during_keys": still_running, "ok": ok, "keys": len(keys)}


def press(app, key: str) -> None:  # type: ignore[no-untyped-def]
    from textual import events

    event = events.Key(key, None)
    event.set_sender(app)
    app._driver.send_message(event)


def measure(repeat: int) -> dict:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory(prefix="topdeck-bench-tui-") as workdir:
        small = write_inventory(Path(workdir) / "three", 3)
        large = write_inventory(Path(workdir) / "five-hundred", 500)
        twenty = write_inventory(Path(workdir) / "twenty", 20)
        frame_3 = first_frame(small, repeat)
        frame_500 = first_frame(large, repeat)
        fill, framed = asyncio.run(refresh_500(large, repeat * 2))
        idle = asyncio.run(responsiveness(twenty, deploying=False))
        busy = asyncio.run(responsiveness(twenty, deploying=True))
    return {
        "first_frame_3_hosts_s": statistics.median(frame_3),
        "first_frame_500_hosts_s": statistics.median(frame_500),
        "refresh_500_table_fill_s": statistics.median(fill),
        "refresh_500_until_drawn_s": statistics.median(framed),
        "idle": idle,
        "deploying_20_hosts": busy,
    }


def run(quick: bool = False) -> list:  # type: ignore[type-arg]
    """The figures for `python -m bench`: the issue's goals are < 1 s to the first frame, < 100 ms a refresh."""
    from bench.common import Figure

    r = measure(2 if quick else 5)
    busy, idle = r["deploying_20_hosts"], r["idle"]
    return [
        Figure("TUI: start to first frame, 3 hosts", r["first_frame_3_hosts_s"], None, "s", "< 1 s",
               r["first_frame_3_hosts_s"] < 1.0, "a fresh process, imports included"),
        Figure("TUI: start to first frame, 500 hosts", r["first_frame_500_hosts_s"], r["first_frame_3_hosts_s"], "s",
               "< 1 s", r["first_frame_500_hosts_s"] < 1.0, "baseline: the 3-host start"),
        Figure("TUI: refresh of the 500-host table", r["refresh_500_until_drawn_s"], None, "s", "< 100 ms",
               r["refresh_500_until_drawn_s"] < 0.1, f"refill alone {r['refresh_500_table_fill_s'] * 1000:.1f} ms"),
        Figure("TUI: key round trip while 20 hosts deploy (median)", busy["key_median"], idle["key_median"], "s",
               "responsive", busy["key_median"] < 0.05 and busy["ok"],
               f"worst {busy['key_max'] * 1000:.0f} ms; {busy['events']} engine events; baseline: idle"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = measure(args.repeat)
    idle, busy = results["idle"], results["deploying_20_hosts"]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"{'figure':<52} {'topdeck':>10} {'baseline':>10}  goal")
    print(f"{'start to first frame, 3 hosts (fresh process)':<52} {results['first_frame_3_hosts_s']:>9.2f}s "
          f"{'-':>10}  < 1.5 s")
    print(f"{'start to first frame, 500 hosts (fresh process)':<52} {results['first_frame_500_hosts_s']:>9.2f}s "
          f"{results['first_frame_3_hosts_s']:>9.2f}s  < 2x the 3-host start")
    print(f"{'refresh the 500-host table (refill)':<52} {results['refresh_500_table_fill_s'] * 1000:>8.1f}ms "
          f"{'-':>10}  < 100 ms")
    print(f"{'refresh the 500-host table (until idle)':<52} {results['refresh_500_until_drawn_s'] * 1000:>8.1f}ms "
          f"{'-':>10}  < 200 ms")
    print(f"{'key round trip, median, 20 hosts deploying':<52} {busy['key_median'] * 1000:>8.1f}ms "
          f"{idle['key_median'] * 1000:>8.1f}ms  < 50 ms (baseline: idle)")
    print(f"{'key round trip, worst, 20 hosts deploying':<52} {busy['key_max'] * 1000:>8.1f}ms "
          f"{idle['key_max'] * 1000:>8.1f}ms  < 200 ms")
    print(f"{'event loop worst stall, 20 hosts deploying':<52} {busy['stall_max'] * 1000:>8.1f}ms "
          f"{idle['stall_max'] * 1000:>8.1f}ms  < 200 ms")
    print(f"  ({busy['events']} engine events handled during the deploy, {busy['keys']} keys pressed while it ran: "
          f"{busy['running_during_keys']}; every host done: {busy['ok']})")


if __name__ == "__main__":
    main()
