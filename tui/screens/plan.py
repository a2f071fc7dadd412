"""The plan: for the chosen hosts and target, what a deploy would change (grouped diff, colour-coded), what
each host would fetch against its free disk, the B2 transactions, warnings. Nothing happens on any host
until the operator confirms here; the question names the host count and the mode."""

from __future__ import annotations

from collections.abc import Sequence

import humanize
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Footer, Header, Static

from topdeck.core.events import Event, Progress, PushResult
from topdeck.core.keys import grouped
from topdeck.core.operations import POINTER_TARGET, FleetPlan
from topdeck.core.planreport import delta_line, plan_view
from topdeck.core.vocabulary import Mode, PlanStatus
from topdeck.tui.jobs import Job
from topdeck.tui.present import MODES, diff_text, short_system, signed_size, size, store_name
from topdeck.tui.screens.base import TopdeckScreen
from topdeck.tui.text import plain, shown
from topdeck.tui.widgets.table import SafeTable

PLAN_COLUMNS = (("host", "host"), ("status", "status"), ("paths", "fetch"), ("download", "download"),
                ("unpacked", "unpacked"), ("free", "free /nix"), ("b2", "B2 B"))
PLAN_STATUS: dict[str, str] = {PlanStatus.CHANGE: "will change", PlanStatus.UP_TO_DATE: "up to date",
               PlanStatus.UNREACHABLE: "unreachable", PlanStatus.HOST_KEY: "host key", PlanStatus.ERROR: "error"}
PLAN_STYLES: dict[str, str] = {PlanStatus.CHANGE: "yellow", PlanStatus.UP_TO_DATE: "green"}


class PlanScreen(TopdeckScreen):
    help_title = "plan"
    DEFAULT_CSS = """
    PlanScreen #summary { height: auto; padding: 0 1; background: $boost; }
    PlanScreen #hosts { height: auto; max-height: 8; }
    PlanScreen #diffbox { height: 1fr; border-top: solid $primary; }
    PlanScreen #diff { padding: 0 1; }
    PlanScreen #statusline { height: auto; max-height: 4; background: $panel; padding: 0 1; }
    """
    BINDINGS = [
        Binding("d", "deploy", "Deploy…", id="plan.deploy"),
        Binding("m", "mode", "Mode", id="plan.mode"),
        Binding("t", "target", "Target", id="plan.target"),
        Binding("u", "push", "Push", id="plan.push"),
        Binding("b", "release", "Build & push", id="plan.release"),
        Binding("r", "replan", "Re-plan", id="plan.replan"),
        Binding("k", "host_key", "Host key", show=False, id="plan.host-key"),
        Binding("escape", "back", "Back", id="plan.back"),
    ]

    def __init__(self, hosts: Sequence[str], target: str | None = None, *, fleet_plan: FleetPlan | None = None,
                 mode: Mode = Mode.SWITCH) -> None:
        super().__init__()
        self.hosts = list(hosts)
        self.target = target  # a store path, `pointer:NAME` (through that pointer), or None for each host's own
        self.fleet_plan = fleet_plan
        self.mode = mode
        self.planning = False
        self.progress = ""
        self.error = ""
        self.missing_target = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="summary")
        yield SafeTable.with_columns(PLAN_COLUMNS, id="hosts")
        with VerticalScroll(id="diffbox"):
            yield Static(id="diff")
        yield Static(id="statusline")
        yield Footer()

    def on_mount(self) -> None:
        if self.fleet_plan is None:
            self.action_replan()
        else:
            self.show()
        self.query_one("#hosts", SafeTable).focus()

    # --- planning ----------------------------------------------------------------------------------

    def action_replan(self) -> None:
        if self.planning:
            return
        backend, hosts, target = self.topdeck.backend, list(self.hosts), self.target
        self.planning, self.progress, self.error, self.missing_target = True, "", "", False
        self.fleet_plan = None
        self.show()
        self.start(Job("plan", lambda emit, cancel: backend.plan(hosts, target, emit, cancel), self.plan_done,
                       self.plan_failed, self.plan_progress))

    def plan_progress(self, event: Event) -> None:
        if isinstance(event, Progress) and event.paths_total:
            self.progress = f"{event.paths_done}/{event.paths_total} hosts probed"
            self.show_summary()

    def plan_done(self, result: FleetPlan) -> None:
        self.planning, self.fleet_plan = False, result
        self.show()

    def plan_failed(self, error: str, exception: BaseException) -> None:
        self.planning, self.error = False, error
        self.missing_target = bool(self.target) and not str(self.target).startswith(POINTER_TARGET) \
            and "not in the cache" in error
        self.show()

    # --- showing -----------------------------------------------------------------------------------

    def target_label(self) -> str:
        if self.target and self.target.startswith(POINTER_TARGET):
            return f"through pointer {self.target[len(POINTER_TARGET):]} (each host checks its signature and serial)"
        if self.target:
            return f"{short_system(self.target)} ({self.target})"
        pointers = sorted({self.topdeck.inventory.host(name).pointer for name in self.hosts
                           if name in {h.name for h in self.topdeck.inventory.hosts}})
        return "each host's pointer (" + ", ".join(pointers) + ")"

    def show(self) -> None:
        self.show_summary()
        self.show_hosts()
        self.show_diff()
        self.show_status()

    def show_summary(self) -> None:
        text = Text()
        text.append(shown(f"Plan for {len(self.hosts)} host(s)"), style="bold")
        text.append(shown(f": {', '.join(self.hosts[:8])}{(' …' if len(self.hosts) > 8 else '')}") + "\n")
        text.append("target ")
        text.append(shown(self.target_label()), style="bold")
        text.append("   mode ")
        text.append(shown(self.mode), style="bold magenta")
        if self.planning:
            text.append(shown(f"   planning… {self.progress}"), style="yellow")
        self.query_one("#summary", Static).update(text)

    def show_hosts(self) -> None:
        table = self.query_one("#hosts", SafeTable)
        table.clear()
        if self.fleet_plan is None:
            return
        for host in self.fleet_plan.plan.hosts:
            status = plain(PLAN_STATUS.get(host.status, host.status),
                          style=PLAN_STYLES.get(host.status, "red"))
            if host.state is None:
                table.add_row(host.host, status, "-", "-", "-", "-", "-", key=host.host)
                continue
            free = plain(size(host.state.free_bytes), style="" if host.fits else "bold red")
            table.add_row(host.host, status, shown(str(host.fetch_paths)), size(host.download_bytes),
                          size(host.unpacked_bytes), free, shown(str(host.class_b)), key=host.host)

    def show_diff(self) -> None:
        pane = self.query_one("#diff", Static)
        if self.fleet_plan is None:
            if self.error:
                text = plain(f"No plan: {self.error}", style="red")
                text.append("\n\n")
                if self.missing_target:
                    text.append("This system is not in the cache yet. Press u to push it (only what the cache "
                                "lacks is uploaded); the plan is made again afterwards.", style="bold yellow")
                pane.update(text)
                return
            pane.update(plain("planning: one SSH round trip per host…" if self.planning else "", style="dim"))
            return
        view = plan_view(self.fleet_plan.plan)
        text = Text()
        for group in view.groups:
            text.append(shown(", ".join(group.hosts)), style="bold")
            current = short_system(group.current) if group.current else "nothing"
            text.append(shown(f": {current} → {short_system(group.target)}") + "\n")
            if group.up_to_date:
                text.append("  already on the target: nothing to fetch\n\n", style="green")
                continue
            text.append_text(diff_text(group.diff))
            closure = group.closure
            text.append(shown(f"  closure: {closure.paths_before} → {closure.paths_after} paths, "
                              f"{size(closure.bytes_before)} → {size(closure.bytes_after)} "
                              f"({signed_size(closure.bytes_delta)})") + "\n", style="dim")
            text.append(shown(f"  fetch: {group.fetch_paths} paths, {size(group.download_bytes)} download, "
                        f"{size(group.unpacked_bytes)} unpacked; {size(group.free_bytes)} free on /nix"))
            if not group.fits:
                text.append("  DOES NOT FIT", style="bold red")
            if delta_line(group):
                text.append("\n")
                text.append(shown(f"  {delta_line(group)}"), style="cyan")
            text.append("\n\n")
        for hosts, keys in grouped(self.fleet_plan.keys):
            text.append(shown(", ".join(hosts)), style="bold")
            text.append(": keys over SSH\n")
            for key in keys:
                text.append(shown(f"  {key.name} → {key.dest} ({key.upload}, {key.change})") + "\n",
                            style="yellow" if key.change != "unchanged" else "dim")
            text.append("\n")
        for host in view.unplanned:
            text.append(shown(host.reason) + "\n", style="red")
            if host.host_key:
                text.append("  press k on this host to see its key and accept or refuse it\n", style="yellow")
        pane.update(text)

    def show_status(self) -> None:
        line = Text()
        if self.error:
            line.append(shown(self.error), style="red")
            if self.missing_target:
                line.append("  press u to push it to the cache", style="bold yellow")
        elif self.fleet_plan is not None:
            view = plan_view(self.fleet_plan.plan)
            line.append(shown(f"B2: about {humanize.intcomma(view.class_b)} class B transactions for the pulls "
                        f"(free allowance {humanize.intcomma(view.free_class_b)} a day)"))
            for note in view.warnings:
                line.append("\n" + shown(f"warning: {note}"), style="bold yellow")
            ready = self.deployable()
            if ready:
                line.append("\n" + shown(f"d deploys {len(ready)} host(s) in {self.mode} mode, after you confirm"),
                            style="dim")
        self.query_one("#statusline", Static).update(line)

    # --- choices -----------------------------------------------------------------------------------

    def action_mode(self) -> None:
        self.mode = MODES[(MODES.index(self.mode) + 1) % len(MODES)]
        self.show_summary()
        self.show_status()

    def action_target(self) -> None:
        from topdeck.tui.widgets.dialogs import ChoiceScreen, PromptScreen

        choices: list[tuple[str, str | Text]] = [("", "each host's own pointer")]
        for name, version in self.topdeck.fleet.pointers.items():
            label = plain(f"pointer {name} → {store_name(version.path)} (serial {version.serial})" if version.verified
                          else f"pointer {name}: {version.problem}")
            choices.append((f"{POINTER_TARGET}{name}", label))
        choices.append(("path", "a toplevel store path…"))

        def typed(path: str | None) -> None:
            if path:
                self.set_target(path)

        def chosen(choice: str | None) -> None:
            if choice is None:
                return
            if choice == "path":
                self.app.push_screen(PromptScreen("Plan towards which toplevel (a /nix/store path)?",
                                                  placeholder="/nix/store/…-nixos-system-…",
                                                  value=self.target or ""), typed)
            elif choice.startswith(POINTER_TARGET):
                self.set_target(choice)  # planned and deployed through the pointer: the host verifies it
            else:
                self.set_target(None)

        self.app.push_screen(ChoiceScreen("Deploy which system?", choices), chosen)

    def set_target(self, target: str | None) -> None:
        self.target = target
        self.action_replan()

    def action_push(self) -> None:
        from topdeck.tui.screens.push import PushScreen

        if not self.target or self.target.startswith(POINTER_TARGET):
            self.notify("the pointers' systems are in the cache already; choose a store path with t to push one",
                        severity="warning", markup=False)
            return

        def pushed(result: PushResult | None) -> None:
            if result is not None:
                self.action_replan()

        self.app.push_screen(PushScreen(self.target), pushed)

    def action_release(self) -> None:
        """Build the planned hosts' own systems, push what the cache lacks, publish their pointers, re-plan."""
        from topdeck.tui.screens.push import PushScreen

        if self.planning:
            return
        backend, hosts = self.topdeck.backend, list(self.hosts)

        def released(result: PushResult | None) -> None:
            if result is not None:
                self.set_target(None)  # the hosts' pointers name what was just built

        what = f"Building and pushing {len(hosts)} host(s): {', '.join(hosts[:8])}{' …' if len(hosts) > 8 else ''}"
        self.app.push_screen(PushScreen("", runner=lambda emit, cancel: backend.release(hosts, emit, cancel),
                                        what=what), released)

    def action_host_key(self) -> None:
        table = self.query_one("#hosts", SafeTable)
        if table.row_count:
            row = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            if row:
                self.check_host_key(str(row))

    def host_key_accepted(self, host: str) -> None:
        self.action_replan()

    # --- deploy ------------------------------------------------------------------------------------

    def deployable(self) -> list[str]:
        if self.fleet_plan is None:
            return []
        return [host.host for host in self.fleet_plan.plan.hosts if host.planned]

    def action_deploy(self) -> None:
        from topdeck.tui.widgets.dialogs import ConfirmScreen

        if self.planning or self.fleet_plan is None:
            self.notify("no plan yet" if not self.error else self.error, severity="warning", markup=False)
            return
        hosts = self.deployable()
        if not hosts:
            self.notify("no host could be planned: nothing to deploy", severity="error", markup=False)
            return
        plan = self.fleet_plan.plan
        download = sum(h.download_bytes for h in plan.hosts if h.planned)
        question = Text()
        plural = "s" if len(hosts) != 1 else ""
        question.append(shown(f"Deploy to {len(hosts)} host{plural} in {self.mode} mode?") + "\n",
                        style="bold")
        question.append(shown(f"{', '.join(hosts)}") + "\n")
        question.append(shown(f"{size(download)} to download in all, about {plan.class_b} B2 class B transactions."))
        skipped = [h.host for h in plan.hosts if not h.planned]
        if skipped:
            question.append("\n" + shown(f"Not planned, left alone: {', '.join(skipped)}"), style="yellow")
        if plan.warnings:
            question.append("\n" + shown(f"{len(plan.warnings)} warning(s): see the plan"), style="bold yellow")

        def answered(yes: bool | None) -> None:
            if yes:
                self.start_deploy(hosts)

        self.app.push_screen(ConfirmScreen(question, title=shown(f"Deploy ({self.mode})")), answered)

    def start_deploy(self, hosts: list[str]) -> None:
        from topdeck.tui.screens.deploy import DeployScreen

        backend, fleet_plan, mode = self.topdeck.backend, self.fleet_plan, self.mode
        assert fleet_plan is not None  # deploy is offered only once a plan is shown
        screen = DeployScreen(f"deploy ({mode})", hosts,
                              lambda emit, cancel: backend.deploy(fleet_plan, mode, emit, cancel), mode=mode)
        self.app.push_screen(screen, lambda result: self.dismiss(result))

    def action_back(self) -> None:
        self.dismiss(None)
