"""Benchmark: the 10-host changed closure against the push model at a distance (issue 24): 40 ms from the operator
to each host (the WAN lab's SSH relays) and a 20 Mbit operator uplink (tc htb on lo), on a lab of its own (10 native
hosts on 127.0.57.11 and up, the counting forwarders on 127.0.58.x). The same measurement as bench/baselines.py's
push model (topdeck: push once, then plan and deploy; colmena's and deploy-rs's way: `nix copy --to ssh://` to every
host at once, then activate), with the distance and the cap on. Goal: at most a third of the push model's time.
"""

from __future__ import annotations

from bench.baselines import PushModel
from bench.common import Figure, log, shared_lab
from bench.fleetlab import own_lab
from topdeck.lab.wan import make_wan

BASE_ADDRESS = "127.0.57.11"
FORWARD_BLOCK = "127.0.58"
HOSTS = 10
SSH_MS = 40
UPLINK = 20_000_000


def run(quick: bool = False) -> list[Figure]:
    with own_lab("wanfleet-lab", BASE_ADDRESS, HOSTS, operator_key_of=shared_lab()) as lab:
        lab.set_wan(make_wan({"ssh": SSH_MS}, uplink=UPLINK))
        log(f"wanfleet: {lab.status().wan}")
        names = [f"host-{i}" for i in range(1, HOSTS + 1)]
        figures = PushModel(lab, names, FORWARD_BLOCK, quick).figures()
    for figure in figures:
        figure.name = f"{figure.name}, {SSH_MS} ms and a 20 Mbit uplink"
        if figure.unit == "s":
            figure.goal, figure.met = "≤ 1/3", figure.topdeck * 3 <= (figure.baseline or 0)
    return figures
