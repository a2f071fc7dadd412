"""Run one push in this process and print its peak resident memory (VmHWM) as JSON; used by benchmarks and tests.

    python bench/memory_probe.py REALM BUCKET PREFIX KEY_ID SECRET_KEY_FILE TOPLEVEL   (B2 key on stdin)
"""

import json
import sys
import time
from pathlib import Path

from topdeck.core.cache.b2 import B2Cache
from topdeck.core.cache.push import push
from topdeck.core.nix.signing import load_secret_key
from topdeck.core.nix.store import parse_store_path


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    realm, bucket, prefix, key_id, secret_key, toplevel = sys.argv[1:]
    cache = B2Cache(bucket, prefix, realm, key_id, sys.stdin.readline().strip())
    baseline = peak_rss_bytes()
    started = time.monotonic()
    result = push(parse_store_path(toplevel), cache, load_secret_key(Path(secret_key)))
    print(json.dumps({"peak_rss": peak_rss_bytes(), "rss_before_push": baseline,
                      "seconds": time.monotonic() - started, "nar_bytes": result.nar_bytes_uploaded}))


if __name__ == "__main__":
    main()
