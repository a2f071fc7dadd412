"""The binary cache: its interface and backends (B2, a folder), the manifest, what a push finds already there, the
push itself and the signed pointers. Depends on core/nix and the shared base, never on core/remote."""
