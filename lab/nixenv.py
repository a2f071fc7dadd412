"""The Nix settings the lab runs Nix with: single-user root, no sandbox, no public cache (no network here)."""

import os

LAB_NIX_CONFIG = "\n".join(
    [
        "experimental-features = nix-command",
        "sandbox = false",
        "build-users-group =",
        "substituters =",
        "narinfo-cache-negative-ttl = 0",
    ]
)


def lab_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment with the lab's NIX_CONFIG, for subprocesses that run Nix."""
    env = dict(os.environ)
    env["NIX_CONFIG"] = LAB_NIX_CONFIG
    env.update(extra or {})
    return env
