"""A host's SSH key that known_hosts does not pin: an unknown one is shown with its fingerprint and can be
accepted into the project's known_hosts or refused; a changed one is refused, with a warning."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from topdeck.core.errors import ChangedHostKey
from topdeck.tui.text import plain, shown


class HostKeyScreen(ModalScreen[bool]):
    """Dismisses with True when the operator accepts an unknown key; a changed key can only be closed."""

    DEFAULT_CSS = """
    HostKeyScreen { align: center middle; }
    HostKeyScreen > Vertical {
        width: 78; max-width: 98%; height: auto; max-height: 95%;
        border: thick $warning; background: $surface; padding: 1 2;
    }
    HostKeyScreen.changed > Vertical { border: thick $error; }
    HostKeyScreen .title { text-style: bold; margin-bottom: 1; }
    HostKeyScreen .keys { color: $text-muted; margin-top: 1; }
    """
    BINDINGS = [
        Binding("a", "accept", "Accept key", id="hostkey.accept"),
        Binding("n,escape", "refuse", "Refuse", id="hostkey.refuse"),
    ]

    def __init__(self, error: Any) -> None:
        super().__init__()
        self.error = error
        self.changed = isinstance(error, ChangedHostKey) or hasattr(error, "expected_fingerprint")
        if self.changed:
            self.add_class("changed")

    def compose(self) -> ComposeResult:
        error = self.error
        key_type = error.key.get_name() if hasattr(error.key, "get_name") else str(error.key)
        where = f"{error.host} ({error.address}:{error.port})"
        with Vertical():
            if self.changed:
                yield Label(plain(f"HOST KEY CHANGED: {where}", style="bold red"), classes="title")
                text = Text()
                text.append("The host presented a different key from the one pinned for it. This can be a "
                            "man-in-the-middle attack, or the host was reinstalled. topdeck refuses to connect.\n\n",
                            style="red")
                text.append(shown(f"pinned     {error.expected_fingerprint}") + "\n")
                text.append(shown(f"presented  {key_type} {error.fingerprint}") + "\n\n", style="bold")
                text.append("If the change is expected, remove the old line by hand:\n")
                name = getattr(error, "key_name", "") or (
                    error.address if error.port == 22 else f"[{error.address}]:{error.port}")
                text.append(shown(f"  ssh-keygen -R {name} -f {error.known_hosts}"), style="bold")
                yield Static(text, id="keytext")
                yield Static("[b]escape[/b] close (refused)", classes="keys")
            else:
                yield Label(plain(f"Unknown host key: {where}", style="bold yellow"), classes="title")
                text = Text()
                if getattr(error, "certificate", ""):
                    text.append(shown(f"It presented a host certificate that no @cert-authority line accepts: "
                                      f"{error.certificate}.") + "\n", style="yellow")
                    text.append("Fix the certificate (or the CA line) rather than pinning the key, or pin it: ")
                text.append(shown(f"{error.known_hosts} does not pin a key for this host yet. It presented:") + "\n\n")
                text.append(shown(f"  {key_type} {error.fingerprint}") + "\n\n", style="bold")
                text.append("Compare it with the host's own fingerprint (on the host: ssh-keygen -lf "
                            "/etc/ssh/ssh_host_ed25519_key.pub) before accepting it.")
                yield Static(text, id="keytext")
                yield Static("[b]a[/b] accept into known_hosts    [b]n[/b] refuse", classes="keys")

    def action_accept(self) -> None:
        if self.changed:
            self.app.bell()
            return
        self.dismiss(True)

    def action_refuse(self) -> None:
        self.dismiss(False)
