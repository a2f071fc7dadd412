"""The hosts' side: SSH connections as OpenSSH makes them (routes, jump hosts, host certificates, pinned keys),
the host script (host.sh) and its verbs, the probe, and the pool that works on many hosts at once. Depends on
core/nix and the shared base, never on core/cache."""
