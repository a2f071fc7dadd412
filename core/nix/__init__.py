"""Nix itself, as topdeck reads and runs it: store paths, narinfos, signatures, the local Nix (closures, NARs,
builds), flakes and closure diffs. Depends on the shared base of core/ only (errors, strict, inventory), never on
the cache or the remote side."""
