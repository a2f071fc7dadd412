"""The WAN lab: distance and bandwidth on the lab's legs, each set on its own.

    cache   host -> cache downloads: a delaying relay (topdeck.lab.forward --rtt-ms) in front of the emulator, on
            127.0.0.1; the hosts fetch through `Lab.cache_url()` (an inventory's `[cache] url`)
    ssh     operator -> host: a delaying relay per host on port 22 of its relay address (`relay_address`); the
            operator logs in at `Lab.ssh_address(name)`, which known_hosts pins too
    api     operator -> B2 API: the emulator answers every API call (not /file/ downloads) that much later
    uplink  what the operator sends: SSH to the hosts (or their relays) and requests to the emulator's API, capped
            together by one `tc` htb class on `lo`
    downlink  what the cache sends to the hosts (the cache relay's answers, or the emulator's without one), capped
            by another htb class: the hosts share it

This kernel has `tc` with htb and tbf but no netem: latency comes from relays, rates from htb. Traffic that no filter
names is not shaped (htb's `default 0` sends it straight on). `tc` acts on this network namespace's `lo`: a lab in
its own namespace (unshare --net) shapes only its own traffic.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from dataclasses import dataclass

from topdeck.lab.errors import LabError

LEGS = ("cache", "ssh", "api")
MAX_RTT_MS = 10_000
RATE_UNITS = {"bit": 1, "kbit": 1000, "mbit": 1000_000, "gbit": 1000_000_000}
MIN_RATE = 8_000  # 8 kbit: below it htb's buffers make the cap meaningless
MAX_RATE = 10_000_000_000
UPLINK_CLASS, DOWNLINK_CLASS = "1:10", "1:20"


@dataclass(frozen=True)
class Wan:
    """Round trips (milliseconds) per leg and rate caps (bits per second; 0: none)."""

    cache_ms: int = 0
    ssh_ms: int = 0
    api_ms: int = 0
    uplink: int = 0
    downlink: int = 0

    @property
    def shaped(self) -> bool:
        return bool(self.uplink or self.downlink)

    def describe(self) -> str:
        """One line for `lab status`: the legs that have a distance or a cap."""
        parts = [f"{leg} {ms} ms" for leg, ms in (("cache", self.cache_ms), ("ssh", self.ssh_ms),
                                                   ("api", self.api_ms)) if ms]
        parts += [f"{name} {format_rate(rate)}" for name, rate in (("uplink", self.uplink),
                                                                     ("downlink", self.downlink)) if rate]
        return ", ".join(parts) or "none (loopback)"


def parse_rtt(text: str) -> dict[str, int]:
    """`cache=100ms,ssh=40ms,api=0.2s` → {"cache": 100, "ssh": 40, "api": 200}; a bad item names itself."""
    legs: dict[str, int] = {}
    for item in text.split(","):
        leg, equals, value = item.strip().partition("=")
        if not equals or leg not in LEGS:
            raise LabError(f"--rtt {item.strip()!r}: expected LEG=TIME with LEG one of {', '.join(LEGS)}",
                           setting="rtt")
        if leg in legs:
            raise LabError(f"--rtt names {leg} twice", setting="rtt")
        legs[leg] = parse_duration_ms(value, f"--rtt {leg}")
    return legs


def parse_duration_ms(text: str, what: str) -> int:
    """`100ms`, `0.1s` or `100` (milliseconds) → 100; whole milliseconds from 0 to MAX_RTT_MS."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(ms|s)?", text.strip(), re.ASCII)
    if not match:
        raise LabError(f"{what} {text!r}: not a time (say 100ms or 0.1s)", setting="rtt")
    milliseconds = float(match[1]) * (1000 if match[2] == "s" else 1)
    if not milliseconds.is_integer() or not 0 <= milliseconds <= MAX_RTT_MS:
        raise LabError(f"{what} {text!r}: whole milliseconds from 0 to {MAX_RTT_MS}", setting="rtt")
    return int(milliseconds)


def parse_rate(text: str, what: str = "rate") -> int:
    """`20mbit`, `512kbit`, `1gbit` (tc's words, bits per second) → bits per second; `0` or `none`: no cap."""
    if text.strip() in ("0", "none"):
        return 0
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(bit|kbit|mbit|gbit)", text.strip().lower(), re.ASCII)
    if not match:
        raise LabError(f"{what} {text!r}: not a rate (say 20mbit, 512kbit or 1gbit; none for no cap)", setting=what)
    rate = float(match[1]) * RATE_UNITS[match[2]]
    if not MIN_RATE <= rate <= MAX_RATE:
        raise LabError(f"{what} {text!r}: from {format_rate(MIN_RATE)} to {format_rate(MAX_RATE)}", setting=what)
    return int(rate)


def format_rate(bits: int) -> str:
    for unit, size in (("gbit", 1000_000_000), ("mbit", 1000_000), ("kbit", 1000)):
        if bits >= size:
            return f"{bits / size:g} {unit}"
    return f"{bits} bit"


def make_wan(rtt: dict[str, int] | None = None, uplink: int = 0, downlink: int = 0) -> Wan:
    rtt = rtt or {}
    return Wan(cache_ms=rtt.get("cache", 0), ssh_ms=rtt.get("ssh", 0), api_ms=rtt.get("api", 0),
               uplink=uplink, downlink=downlink)


def relay_address(host_address: str) -> str:
    """Where a host's SSH relay listens: 127.200+B.C.D for the host on 127.B.C.D (B below 50)."""
    address = ipaddress.ip_address(host_address)
    octets = address.packed
    if octets[0] != 127 or octets[1] >= 50:
        raise LabError(f"an SSH round trip needs hosts on 127.0-49.x.y, not {host_address}", setting="rtt")
    return f"127.{200 + octets[1]}.{octets[2]}.{octets[3]}"


# --- tc -------------------------------------------------------------------------------------------------------


def shape(wan: Wan, uplink_ports: tuple[int, ...], uplink_addresses: tuple[str, ...], downlink_port: int) -> None:
    """Put the caps on `lo`: the uplink class takes packets to `uplink_ports` (on any address) and to port 22 of
    `uplink_addresses`; the downlink class packets from `downlink_port`."""
    unshape()
    if not wan.shaped:
        return
    _tc(["qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "r2q", "1000"])
    for classid, rate, filters in (
        (UPLINK_CLASS, wan.uplink, [["match", "ip", "dport", str(port), "0xffff"] for port in uplink_ports]
         + [["match", "ip", "dst", f"{address}/32", "match", "ip", "dport", "22", "0xffff"]
            for address in uplink_addresses]),
        (DOWNLINK_CLASS, wan.downlink, [["match", "ip", "sport", str(downlink_port), "0xffff"]]),
    ):
        if not rate:
            continue
        burst = str(max(rate // 8 // 100, 131072))  # 10 ms of the rate, and at least two of lo's 64 KiB packets
        _tc(["class", "add", "dev", "lo", "parent", "1:", "classid", classid, "htb", "rate", f"{rate}bit",
             "ceil", f"{rate}bit", "burst", burst, "cburst", burst])
        for match in filters:
            _tc(["filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32", *match,
                 "flowid", classid])


def unshape() -> None:
    """Remove the caps (nothing to remove is fine)."""
    subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)


def shaping() -> str:
    """What `tc` says is on `lo` (for status and tests)."""
    return subprocess.run(["tc", "-s", "class", "show", "dev", "lo"], capture_output=True, text=True).stdout


def _tc(args: list[str]) -> None:
    result = subprocess.run(["tc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise LabError(f"tc {' '.join(args)}: {result.stderr.strip() or f'exit {result.returncode}'}")
