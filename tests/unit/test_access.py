"""core.cache.access: which cache an inventory opens, and which key: the environment first, then the files it names;
the garbage collector's key is never the deploy key."""

from __future__ import annotations

from pathlib import Path

import pytest

from topdeck.core.cache.access import b2_credentials, gc_credentials, open_cache, open_deleting_cache
from topdeck.core.cache.folder import DirCache
from topdeck.core.errors import CacheError
from topdeck.core.inventory import CacheConfig

DEPLOY_ENV = {"B2_APPLICATION_KEY_ID": "env-id", "B2_APPLICATION_KEY": "env-key"}
GC_ENV = {"B2_GC_APPLICATION_KEY_ID": "gc-id", "B2_GC_APPLICATION_KEY": "gc-key"}


def credentials(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_folder_cache_opens_as_one_with_its_url(tmp_path: Path) -> None:
    plain = open_cache(CacheConfig("dir", path=tmp_path))
    assert isinstance(plain, DirCache) and plain.substituter_url == f"file://{tmp_path}"
    served = open_deleting_cache(CacheConfig("dir", path=tmp_path, url="http://cache.lan"))
    assert isinstance(served, DirCache) and served.substituter_url == "http://cache.lan"


def test_the_environment_comes_before_the_files(tmp_path: Path) -> None:
    file = credentials(tmp_path, "b2.toml", 'key_id = "file-id"\napplication_key = "file-key"\n')
    config = CacheConfig("b2", credentials_file=file, gc_credentials_file=file)
    assert b2_credentials(config, DEPLOY_ENV) == ("env-id", "env-key")
    assert b2_credentials(config, {"B2_APPLICATION_KEY_ID": "only-the-id"}) == ("file-id", "file-key")
    assert gc_credentials(config, GC_ENV) == ("gc-id", "gc-key")
    assert gc_credentials(config, {}) == ("file-id", "file-key")


def test_gc_never_falls_back_to_the_deploy_key(tmp_path: Path) -> None:
    file = credentials(tmp_path, "b2.toml", 'key_id = "file-id"\napplication_key = "file-key"\n')
    with pytest.raises(CacheError, match="no B2 key for gc: set B2_GC_APPLICATION_KEY_ID"):
        gc_credentials(CacheConfig("b2", credentials_file=file), DEPLOY_ENV)
    with pytest.raises(CacheError, match="no B2 key: set B2_APPLICATION_KEY_ID"):
        b2_credentials(CacheConfig("b2"), GC_ENV)


@pytest.mark.parametrize(("text", "message"), [
    (None, "cannot read the B2 credentials: No such file or directory"),
    ("key_id = ", "the B2 credentials file is not valid TOML"),
    ('key_id = "id"\n', "needs key_id and application_key (strings)"),
    ('key_id = 7\napplication_key = "k"\n', "needs key_id and application_key (strings)"),
])
def test_a_bad_credentials_file_is_one_line_naming_it_and_never_its_content(tmp_path: Path, text, message) -> None:
    path = tmp_path / "b2.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(CacheError) as caught:
        b2_credentials(CacheConfig("b2", credentials_file=path), {})
    assert str(caught.value) == f"{path}: {message}"
