"""Benchmark 6: the closure diff of the base and the 1 %-changed closures, by core.nix.diff, against `nix store
diff-closures` on the same pair (goal: at most its time).

topdeck's time is what a plan spends on it: `diff_closures` of two {path: NarSize} maps it already has (from the
host's probe and the manifest) and rendering the lines; Nix's includes its start-up and reading the closures from
its database, which is its whole job when asked from the command line.
"""

from __future__ import annotations

import subprocess

from bench.common import Figure, closures, log, median, repeats, shared_lab, times
from topdeck.core.nix import localnix
from topdeck.core.nix.diff import diff_closures, render_diff_closures
from topdeck.lab.nixenv import lab_env


def run(quick: bool = False) -> list[Figure]:
    shared_lab()
    built = closures()
    before = {info.path: info.nar_size for info in localnix.closure([built.base])}
    after = {info.path: info.nar_size for info in localnix.closure([built.changed])}
    ours_lines: list[str] = []

    def ours() -> None:
        ours_lines[:] = render_diff_closures(diff_closures(before, after))

    def nix() -> None:
        subprocess.run(["nix", "store", "diff-closures", built.base, built.changed], check=True, capture_output=True,
                       env=lab_env())

    count = repeats(quick, 20, 3)
    log("diff: core.nix.diff, then nix store diff-closures")
    topdeck, baseline = median(times(ours, count)), median(times(nix, count))
    nix_lines = subprocess.run(["nix", "store", "diff-closures", built.base, built.changed], check=True,
                               capture_output=True, text=True, env=lab_env()).stdout.splitlines()
    same = sorted(ours_lines) == sorted(line for line in nix_lines if line.strip())
    return [Figure(f"closure diff alone ({len(before)} → {len(after)} paths)", topdeck, baseline, "s", "≤ 1x",
                   topdeck <= baseline, f"median of {count}; nix store diff-closures includes its start-up; same "
                   f"lines as Nix: {'yes' if same else 'no'} ({len(ours_lines)} lines)")]
