"""Benchmark 1: cold push of the ~1000-path closure to the B2 emulator, against `nix copy` of the same closure to a
local binary-cache folder: Nix 2.8's (this machine's) with its default compression (xz) and with zstd, and Nix 2.34's
(the lab's Debian sid image, run with topdeck.lab.opnix against a store of its own holding the same closure) with
`compression=zstd&parallel-compression=true`, what a user of a current Nix would pick instead.

topdeck's time is a whole push into an empty prefix (closure query, authorize, listing, NARs, narinfos, manifest,
pointer), over HTTP to the emulator. `nix copy --to file://DIR?compression=...` writes to a local folder, no network:
a baseline that flatters Nix.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess

from bench.common import Figure, b2_cache, closures, log, median, repeats, shared_lab, signing_key, times, work_root
from topdeck.core.cache.push import push
from topdeck.core.nix import localnix
from topdeck.core.nix.store import parse_store_path
from topdeck.lab import images, opnix
from topdeck.lab.nixenv import lab_env


def nix_copy_to_folder(path: str, compression: str, env: dict[str, str] | None = None) -> float:
    """Seconds `nix copy` takes to write `path`'s closure to a new local binary cache with `compression` (the
    store URL's query after `compression=`), with the Nix of `env` (this machine's by default)."""
    target = work_root() / f"nix-copy-{secrets.token_hex(4)}"
    try:
        return times(lambda: subprocess.run(
            ["nix", "copy", "--to", f"file://{target}?compression={compression}", path],
            check=True, capture_output=True, env=env or lab_env()), 1)[0]
    finally:
        shutil.rmtree(target, ignore_errors=True)


def sid_nix(path: str) -> tuple[dict[str, str], str]:
    """The environment that runs the sid image's Nix (2.34) against a store of its own holding `path`'s closure
    (imported from this machine's store), and its version."""
    root = images.ensure_image("sid", log=lambda *_: None).root
    folder = work_root() / "nix-sid"
    env = opnix.image_env(root, folder / "store", folder / "tools")
    closure = subprocess.run(["nix-store", "-qR", path], capture_output=True, text=True, check=True,
                             env=lab_env()).stdout.split()
    export = subprocess.Popen(["nix-store", "--export", *closure], stdout=subprocess.PIPE, env=lab_env())
    imported = subprocess.run(["nix-store", "--import"], stdin=export.stdout, capture_output=True, env=env)
    assert export.stdout is not None
    export.stdout.close()
    if export.wait() != 0 or imported.returncode != 0:
        raise RuntimeError(f"importing the closure into the sid Nix's store failed: {imported.stderr[-300:]!r}")
    return env, ".".join(map(str, localnix.nix_version(env)))


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
    log("cold push: Nix 2.34's nix copy, zstd with parallel compression")
    sid_env, sid_version = sid_nix(built.base)
    parallel = median(nix_copy_to_folder(built.base, "zstd&parallel-compression=true", sid_env)
                      for _ in range(repeats(quick, 5)))
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
        Figure(f"cold push vs Nix {sid_version} `nix copy` zstd, parallel compression", ours, parallel, "s",
               "≥ 1x as fast (ratio ≤ 1)", parallel / ours >= 1,
               f"{parallel / ours:.2f}x the speed of Nix {sid_version}'s `nix copy "
               "--to 'file://DIR?compression=zstd&parallel-compression=true'` (the Debian sid image's Nix, its own "
               f"store holding the same closure); {where}"),
    ]
