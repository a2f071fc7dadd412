"""Opening the inventory's cache: a folder, or a B2 bucket with the deploy key (or with gc's own key, which may
delete)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from topdeck.core.cache.folder import DirCache
from topdeck.core.cache.interface import Cache, DeletingCache
from topdeck.core.errors import CacheError
from topdeck.core.inventory import CacheConfig
from topdeck.core.statedir import b2_account_file


def open_cache(config: CacheConfig, environ: Mapping[str, str] = os.environ) -> Cache:
    if config.kind == "dir":
        assert config.path is not None
        return DirCache(config.path, config.url or f"file://{config.path}")
    from topdeck.core.cache.b2 import B2Cache

    key_id, key = b2_credentials(config, environ)
    return B2Cache(config.bucket, config.prefix, config.realm, key_id, key, download_url=config.download_url,
                   account_info=b2_account_file(config.realm, key_id, key, environ))


def open_deleting_cache(config: CacheConfig, environ: Mapping[str, str] = os.environ) -> DeletingCache:
    """The cache with the garbage collector's own key, which must be allowed to delete files."""
    if config.kind == "dir":
        assert config.path is not None
        return DirCache(config.path, config.url or f"file://{config.path}")
    from topdeck.core.cache.b2 import B2Cache

    key_id, key = gc_credentials(config, environ)
    cache = B2Cache(config.bucket, config.prefix, config.realm, key_id, key,
                    account_info=b2_account_file(config.realm, key_id, key, environ))
    if "deleteFiles" not in cache.capabilities():
        raise CacheError(f"the gc key {key_id} may not delete files (its capabilities: "
                         f"{', '.join(cache.capabilities()) or 'none'}); make one with deleteFiles for bucket "
                         f"{config.bucket}")
    return cache


def gc_credentials(config: CacheConfig, environ: Mapping[str, str]) -> tuple[str, str]:
    """The key that may delete: B2_GC_APPLICATION_KEY_ID / B2_GC_APPLICATION_KEY, else cache.gc_credentials_file.
    Never the deploy key: a deploy must not be able to delete what hosts fetch."""
    if environ.get("B2_GC_APPLICATION_KEY_ID") and environ.get("B2_GC_APPLICATION_KEY"):
        return environ["B2_GC_APPLICATION_KEY_ID"], environ["B2_GC_APPLICATION_KEY"]
    if config.gc_credentials_file is None:
        raise CacheError("no B2 key for gc: set B2_GC_APPLICATION_KEY_ID and B2_GC_APPLICATION_KEY, or "
                         "cache.gc_credentials_file in topdeck.toml (a key with deleteFiles, not the deploy key)")
    return _credentials_file(config.gc_credentials_file)


def b2_credentials(config: CacheConfig, environ: Mapping[str, str]) -> tuple[str, str]:
    """The application key: B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY, else the configured credentials file."""
    if environ.get("B2_APPLICATION_KEY_ID") and environ.get("B2_APPLICATION_KEY"):
        return environ["B2_APPLICATION_KEY_ID"], environ["B2_APPLICATION_KEY"]
    path = config.credentials_file
    if path is None:
        raise CacheError("no B2 key: set B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY, "
                         "or cache.credentials_file in topdeck.toml")
    return _credentials_file(path)


def _credentials_file(path: Path) -> tuple[str, str]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise CacheError(f"{path}: cannot read the B2 credentials: {error.strerror}") from None
    except tomllib.TOMLDecodeError:
        raise CacheError(f"{path}: the B2 credentials file is not valid TOML") from None
    if not isinstance(data.get("key_id"), str) or not isinstance(data.get("application_key"), str):
        raise CacheError(f"{path}: needs key_id and application_key (strings)")
    return data["key_id"], data["application_key"]
