"""Benchmark 1: cold push of the ~1000-path closure to the B2 emulator, against `nix copy` of the same closure to a
local binary-cache folder, with Nix's default compression (xz) and with zstd.

topdeck's time is a whole push into an empty prefix (closure query, authorize, listing, NARs, narinfos, manifest,
pointer), over HTTP to the emulator. `nix copy --to file://DIR?compression=...` writes to a local folder, no network:
a baseline that flatters Nix.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess

from bench.common import Figure, b2_cache, closures, log, median, repeats, shared_lab, signing_key, times, work_root
from topdeck.core.push import push
from topdeck.core.store import parse_store_path
from topdeck.lab.nixenv import lab_env


def nix_copy_to_folder(path: str, compression: str) -> float:
    """Seconds `nix copy` takes to write `path`'s closure to a new local binary cache with `compression`."""
    target = work_root() / f"nix-copy-{compression}-{secrets.token_hex(4)}"
    try:
        return times(lambda: subprocess.run(
            ["nix", "copy", "--to", f"file://{target}?compression={compression}", path],
            check=True, capture_output=True, env=lab_env()), 1)[0]
    finally:
        shutil.rmtree(target, ignore_errors=True)


def run(quick: bool = False) -> list[Figure]:
    lab = shared_lab()
    built = closures()
    toplevel = parse_store_path(built.base)
    key = signing_key(lab)
    results = []

    def cold_push() -> None:
        results.append(push(toplevel, b2_cache(lab, f"cold-{secrets.token_hex(4)}"), key, pointer="bench"))

    log("cold push: topdeck")
    ours = median(times(cold_push, repeats(quick, 5)))
    log("cold push: nix copy, zstd")
    zstd = median(nix_copy_to_folder(built.base, "zstd") for _ in range(repeats(quick, 5)))
    log("cold push: nix copy, xz (slow)")
    xz = median(nix_copy_to_folder(built.base, "xz") for _ in range(repeats(quick, 3)))
    last = results[-1]
    size = f"{last.paths_total} paths, {last.nar_bytes_uploaded / 2**20:.0f} MiB of NAR"
    where = "topdeck uploads over HTTP to the emulator; `nix copy` writes to a local folder"
    return [
        Figure(f"cold push ({size}) vs `nix copy` xz", ours, xz, "s", "≥ 3x faster (ratio ≤ 0.33)",
               xz / ours >= 3, f"{xz / ours:.1f}x faster than xz; {where}; medians of {len(results)} / "
               f"{repeats(quick, 3)} runs"),
        Figure("cold push vs `nix copy` zstd", ours, zstd, "s", "≥ 1x as fast (ratio ≤ 1)", zstd / ours >= 1,
               f"{zstd / ours:.2f}x the speed of `nix copy ?compression=zstd`; "
               f"{last.file_bytes_uploaded / 2**20:.0f} MiB uploaded"),
    ]
