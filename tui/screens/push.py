"""Pushing a toplevel that the cache does not hold yet: paths, bytes, rate, ETA and the current path, then
what was uploaded and what it cost in B2 transactions. With a build before the push (the plan screen's
build & push), Nix's log lines too."""

from __future__ import annotations

import threading
from collections.abc import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Footer, Header, Log, ProgressBar, Static
from textual.worker import Worker

from topdeck.core.events import Emit, Event, LogLine, Progress, PushResult
from topdeck.tui.jobs import Job
from topdeck.tui.present import duration, short_system, size, store_name
from topdeck.tui.screens.base import TopdeckScreen
from topdeck.tui.text import plain, shown

Runner = Callable[[Emit, threading.Event], PushResult]


class PushScreen(TopdeckScreen):
    help_title = "push"
    DEFAULT_CSS = """
    PushScreen > Vertical { height: 1fr; padding: 1 2; }
    PushScreen #what { height: auto; margin-bottom: 1; }
    PushScreen #bar { margin-bottom: 1; }
    PushScreen #numbers { height: auto; }
    PushScreen #current { height: auto; color: $text-muted; }
    PushScreen #result { height: auto; margin-top: 1; }
    PushScreen #log { height: 1fr; margin-top: 1; display: none; }
    """
    BINDINGS = [
        Binding("c", "cancel", "Cancel push", id="push.cancel"),
        Binding("escape", "back", "Back", id="push.back"),
    ]

    def __init__(self, path: str, pointer: str | None = None, runner: Runner | None = None, *,
                 start: bool = True, what: str = "") -> None:
        super().__init__()
        self.path, self.pointer, self.what = path, pointer, what
        self.runner = runner
        self.start_job = start
        self.progress: Progress | None = None
        self.phase = "starting"
        self.result: PushResult | None = None
        self.error = ""
        self.worker: Worker[None] | None = None
        self.running = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical():
            yield Static(id="what")
            yield ProgressBar(id="bar", show_eta=False)
            yield Static(id="numbers")
            yield Static(id="current")
            yield Static(id="result")
            yield Log(id="log", max_lines=2000)
        yield Footer()

    def on_mount(self) -> None:
        text = Text()
        if self.what:
            text.append(shown(self.what), style="bold")
        else:
            text.append("Pushing ", style="bold")
            text.append(shown(short_system(self.path)), style="bold cyan")
            text.append(" to the cache\n" + shown(self.path))
        if self.pointer:
            text.append("\n" + shown(f"then pointing {self.pointer} at it"))
        self.query_one("#what", Static).update(text)
        self.show()
        if self.start_job:
            backend, path, pointer = self.topdeck.backend, self.path, self.pointer
            runner = self.runner or (lambda emit, cancel: backend.push(path, pointer, emit, cancel))
            self.running = True
            self.worker = self.start(Job("push", runner, self.push_done, self.push_failed, self.apply))

    def apply(self, event: Event) -> None:
        if isinstance(event, Progress):
            self.phase = event.phase
            self.progress = event
            self.show()
        elif isinstance(event, PushResult):
            self.result = event
            self.show()
        elif isinstance(event, LogLine):
            log = self.query_one("#log", Log)
            log.display = True
            log.write_line(shown(f"{event.host} | {event.text}" if event.host else event.text))

    def show(self) -> None:
        event = self.progress
        bar = self.query_one("#bar", ProgressBar)
        numbers = Text()
        numbers.append(shown(f"{self.phase:<9}"), style="bold")
        if event is not None:
            if event.bytes_total:
                bar.update(total=event.bytes_total, progress=event.bytes_done)
            elif event.paths_total:
                bar.update(total=event.paths_total, progress=event.paths_done)
            if event.paths_total:
                numbers.append(shown(f" paths {event.paths_done} of {event.paths_total}"))
            if event.bytes_total:
                numbers.append(shown(f" · {size(event.bytes_done)} of {size(event.bytes_total)}"))
            if event.rate:
                numbers.append(shown(f" · {size(event.rate)}/s"))
                if event.bytes_total > event.bytes_done:
                    numbers.append(shown(f" · ETA {duration((event.bytes_total - event.bytes_done) / event.rate)}"))
            self.query_one("#current", Static).update(plain(f"current: {store_name(event.current)}" if event.current
                                                      else ""))
        self.query_one("#numbers", Static).update(numbers)
        result = Text()
        if self.result is not None:
            r, t = self.result, self.result.transactions
            bar.update(total=1, progress=1)
            result.append("pushed ", style="bold green")
            result.append(shown(f"{r.paths_uploaded} of {r.paths_total} paths ({size(r.nar_bytes_uploaded)}, "
                                f"{size(r.file_bytes_uploaded)} compressed), {r.paths_skipped} already there, "
                                f"in {r.seconds:.1f} s") + "\n"
                          + shown(f"B2 transactions: class A {t.a}, class B {t.b}, class C {t.c}"))
            for pointer in r.pointers or ():
                result.append("\n" + shown(f"pointer {pointer.name}: serial {pointer.serial}"))
            if r.pointer and not r.pointers:
                result.append("\n" + shown(f"pointer {r.pointer}: serial {r.pointer_serial}"))
            result.append("\nescape: back to the plan", style="dim")
        elif self.error:
            result.append(shown(f"failed: {self.error}"), style="bold red")
        elif self.worker is not None and self.worker.is_cancelled and self.running:
            result.append("cancelling… (what is uploaded stays; a re-run finishes the job)", style="yellow")
        self.query_one("#result", Static).update(result)

    def push_done(self, result: PushResult) -> None:
        self.running = False
        self.apply(result)

    def push_failed(self, error: str, exception: BaseException) -> None:
        self.running, self.error = False, error
        self.show()

    def action_cancel(self) -> None:
        if self.running and self.worker is not None:
            self.worker.cancel()
            self.show()

    def action_back(self) -> None:
        if self.running:
            self.notify("the push is running: c cancels it", severity="warning", markup=False)
            return
        self.dismiss(self.result)

