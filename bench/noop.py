"""Benchmark 2: a no-op push (the closure is already in the bucket): B2 transactions and time, against a per-path
existence check, as `nix copy` does it.

topdeck's runs keep b2sdk's account info between them, as `topdeck push` does in the state folder: every run after
the first needs no authorize. The closure's manifest answers for every path, so the bucket's size does not count
(tests/lab/test_push_cost.py shows the same cost at 1,000 and 20,000 names).

The baseline is the real `nix copy --to http://<emulator>/file/<bucket>/<prefix>` of the same closure: with every
path present it uploads nothing, and only asks for each path's narinfo (one class B download per path). Both sides
are billed by the emulator (server-side counters, per class). Nix's narinfo disk cache is bypassed
(`narinfo-cache-positive-ttl = 0`, a fresh cache folder), as on a first run.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

from bench.common import (
    Figure,
    b2_cache,
    closures,
    log,
    median,
    repeats,
    shared_lab,
    signing_key,
    timed_and_counted,
    work_root,
)
from topdeck.core.cache.b2 import B2Cache
from topdeck.core.cache.push import push
from topdeck.core.nix.store import parse_store_path
from topdeck.lab.lab import BUCKET
from topdeck.lab.nixenv import lab_env


def kept_cache(lab, prefix: str, account_info: Path) -> B2Cache:  # type: ignore[no-untyped-def]
    """The lab's bucket under `prefix`, with the authorization kept in `account_info` between runs."""
    return B2Cache(BUCKET, prefix, lab.emulator.url, *lab.b2_key(), account_info=account_info)


def nix_copy_noop(url: str, path: str) -> None:
    cache_home = work_root() / f"nix-cache-home-{secrets.token_hex(4)}"
    subprocess.run(["nix", "copy", "--option", "narinfo-cache-positive-ttl", "0", "--to", url, path],
                   check=True, capture_output=True, env=lab_env({"XDG_CACHE_HOME": str(cache_home)}))


def run(quick: bool = False) -> list[Figure]:
    lab = shared_lab()
    built = closures()
    toplevel = parse_store_path(built.base)
    key = signing_key(lab)
    prefix = f"noop-{secrets.token_hex(4)}"
    account_info = work_root() / f"b2-account-{prefix}.sqlite"
    log("no-op push: first push")
    push(toplevel, kept_cache(lab, prefix, account_info), key, pointer="bench")
    names = len(b2_cache(lab, prefix).listing())

    results = []
    ours_runs = [timed_and_counted(lab, lambda: results.append(push(toplevel, kept_cache(lab, prefix, account_info),
                                                                    key, pointer="bench")))
                 for _ in range(repeats(quick, 5))]
    log("no-op push: nix copy to the same prefix over HTTP")
    url = f"{lab.emulator.url}/file/{BUCKET}/{prefix}"
    nix_runs = [timed_and_counted(lab, lambda: nix_copy_noop(url, built.base)) for _ in range(repeats(quick, 3))]
    ours_times, nix_times = [t for t, _ in ours_runs], [t for t, _ in nix_runs]
    ours, theirs = ours_runs[-1][1], nix_runs[-1][1]
    uploaded = sum(r.paths_uploaded for r in results)
    return [
        Figure("no-op push: B2 class B transactions", ours["B"], theirs["B"], "", "≤ 1", ours["B"] <= 1,
               f"the closure's manifest, one download; baseline: `nix copy` to the same bucket over HTTP, one "
               f"narinfo download per path ({built.base_paths} paths); the bucket prefix holds {names} names"),
        Figure("no-op push: B2 class C transactions", ours["C"], theirs["C"], "", "≤ 1", ours["C"] <= 1,
               f"one listing of the pointers (toplevels/), at any bucket size (here {names} names; a listing of "
               f"the narinfos would cost ⌈narinfos / 1000⌉, plus 1 to authorize); the authorization is kept "
               f"between runs"),
        Figure("no-op push: class A (uploads)", ours["A"], theirs["A"], "", "0", ours["A"] == 0 and uploaded == 0),
        Figure("no-op push: time", median(ours_times), median(nix_times), "s", "< 1 s", median(ours_times) < 1,
               "includes `nix path-info` of the closure; the authorization kept from the run before"),
    ]
