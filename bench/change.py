"""Benchmark 3: push of the 1 %-changed closure after the base closure: the NAR bytes sent over HTTP against the
compressed size of the paths that changed (goal: equal: nothing uploaded twice, nothing that was there already).

topdeck's figure is counted on the wire (b2sdk's upload requests, by Content-Length, NAR uploads only), the
baseline is what the bucket holds for the changed paths afterwards (their NAR files' sizes in the listing), for
the paths that are in the changed closure and not in the base one (`nix path-info`).
"""

from __future__ import annotations

import secrets
import threading
from urllib.parse import unquote

from bench.common import PACKAGES, Figure, b2_cache, closures, log, median, repeats, shared_lab, signing_key, timed
from topdeck.core.cache.presence import nar_name
from topdeck.core.cache.push import push
from topdeck.core.nix import localnix
from topdeck.core.nix.store import parse_store_path


class UploadedBytes:
    """A b2sdk HTTP callback that adds up the bytes of NAR uploads (small files and large-file parts)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nar_bytes = 0
        self.other_bytes = 0
        self.lock = threading.Lock()

    def pre_request(self, method, url, headers) -> None:  # type: ignore[no-untyped-def]
        if "b2_upload_file" not in url and "b2_upload_part" not in url:
            return
        size = int(headers.get("Content-Length", 0))
        name = unquote(headers.get("X-Bz-File-Name", ""))
        nar = "b2_upload_part" in url or name.startswith(f"{self.prefix}/nar/")
        with self.lock:
            if nar:
                self.nar_bytes += size
            else:
                self.other_bytes += size

    def post_request(self, method, url, headers, response) -> None:  # type: ignore[no-untyped-def]
        pass


def run(quick: bool = False) -> list[Figure]:
    lab = shared_lab()
    built = closures()
    base, changed = parse_store_path(built.base), parse_store_path(built.changed)
    key = signing_key(lab)
    old = {info.path for info in localnix.closure([base])}
    new = localnix.closure([changed])
    changed_infos = [info for info in new if info.path not in old]
    seconds, counts, results = [], [], []
    for _ in range(repeats(quick, 3)):
        prefix = f"change-{secrets.token_hex(4)}"
        log(f"1 % change: base push to {prefix}, then the changed closure")
        push(base, b2_cache(lab, prefix), key, pointer="bench")
        cache = b2_cache(lab, prefix)
        counter = UploadedBytes(prefix)
        cache.api.session.raw_api.b2_http.add_callback(counter)
        seconds.append(timed(lambda cache=cache: results.append(push(changed, cache, key, pointer="bench"))))
        counts.append(counter)
    listing = b2_cache(lab, prefix).listing()
    expected = sum(listing[nar_name(info)].size for info in changed_infos)
    sent = counts[-1].nar_bytes
    result = results[-1]
    return [
        Figure(f"1 % change push ({len(built.changed_packages)} of {PACKAGES} packages upgraded): NAR bytes "
               "uploaded", sent, expected, "bytes", "equal", sent == expected,
               f"{result.paths_uploaded} paths uploaded, {len(changed_infos)} changed (the upgraded packages, their "
               f"dependents and the toplevel); {counts[-1].other_bytes / 1024:.0f} KiB of narinfos, manifest and "
               f"pointer besides; {median(seconds):.2f} s (median of {len(seconds)})"),
        Figure("1 % change push: paths uploaded", result.paths_uploaded, len(changed_infos), "paths", "equal",
               result.paths_uploaded == len(changed_infos)),
    ]
