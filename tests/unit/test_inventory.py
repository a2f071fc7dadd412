"""The inventory loader: the demo fleet loads; every kind of bad inventory is refused with file, key and reason
(git flakes and the CLI as a process: tests/lab/test_inventory_git.py)."""

from pathlib import Path

import pytest

from topdeck.core.errors import InventoryError
from topdeck.core.inventory import load_inventory, select_hosts

REPO = Path(__file__).resolve().parents[2]
CONFIG = '[cache]\nbucket = "topdeck-test"\nprefix = "cache"\n'
HOST = 'address = "127.0.0.11"\npointer = "web"\ntags = ["web"]\n'


def write_inventory(root: Path, hosts: dict[str, str], config: str = CONFIG) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "topdeck.toml").write_text(config)
    for name, text in hosts.items():
        (root / name).mkdir()
        (root / name / "host.toml").write_text(text)
    return root


def test_demo_fleet_loads():
    inventory = load_inventory(REPO / "hosts")
    assert [h.name for h in inventory.hosts] == ["db-1", "web-1", "web-2"]
    web1 = inventory.host("web-1")
    assert (web1.address, web1.port, web1.user, web1.pointer) == ("127.0.0.11", 22, "root", "web")
    assert web1.build is not None and web1.build.kind == "nix"
    assert inventory.cache.bucket == "topdeck-lab" and inventory.cache.prefix == "cache"
    assert inventory.cache.realm == "http://127.0.0.1:17890"
    assert inventory.deploy.parallel == 8


def test_selection_by_name_glob_and_tag(tmp_path):
    inventory = write_inventory(tmp_path / "inv", {
        "web-1": HOST,
        "web-2": HOST.replace(".11", ".12"),
        "db-1": 'address = "127.0.0.13"\npointer = "db"\ntags = ["db"]\n',
    })
    inventory = load_inventory(inventory)
    names = lambda sel: [h.name for h in select_hosts(inventory, sel)]  # noqa: E731
    assert names([]) == ["db-1", "web-1", "web-2"]
    assert names(["web-*"]) == ["web-1", "web-2"]
    assert names(["@db"]) == ["db-1"]
    assert names(["@db,web-2"]) == ["db-1", "web-2"]
    assert names(["web-1", "@web"]) == ["web-1", "web-2"]
    with pytest.raises(InventoryError, match="--on mail-\\*: no host matches"):
        select_hosts(inventory, ["mail-*"])
    for empty in ([""], [","], ["", ","]):  # an empty variable in a script must not select the whole fleet
        with pytest.raises(InventoryError, match="names no host"):
            select_hosts(inventory, empty)


BAD_HOSTS = [
    ("missing address", 'pointer = "web"\n', "address: missing"),
    ("missing pointer", 'address = "127.0.0.11"\n', "pointer: missing"),
    ("unknown key", HOST + 'colour = "red"\n', "colour: unknown key"),
    ("port is text", HOST + 'port = "22"\n', "port: '22' should be an integer"),
    ("port out of range", HOST + "port = 70000\n", "port: 70000 is not a port"),
    ("bad address", 'address = "999.1.1.1"\npointer = "web"\n', "not an IP address or host name"),
    ("address with shell", 'address = "a;rm -rf /"\npointer = "web"\n', "not an IP address or host name"),
    ("pointer with slash", 'address = "127.0.0.11"\npointer = "a/b"\n', "pointer: 'a/b' must be"),
    ("pointer with dotdot", 'address = "127.0.0.11"\npointer = "a..b"\n', "pointer: 'a..b' must be"),
    ("user with shell", HOST + 'user = "root;id"\n', "user: 'root;id' is not a valid user name"),
    ("tags not a list", 'address = "127.0.0.11"\npointer = "web"\ntags = "web"\n', "tags: 'web' should be a list"),
    ("tag with space", 'address = "127.0.0.11"\npointer = "web"\ntags = ["a b"]\n', "bad tag 'a b'"),
    ("sudo is text", HOST + 'sudo = "yes"\n', "sudo: 'yes' should be true or false"),
    ("not toml", 'address = "127.0.0.11\n', "not valid TOML"),
    ("build outside folder", HOST + '[build]\nnix = "../x.nix"\n', "must be a file inside"),
    ("build twice", HOST + '[build]\nnix = "a.nix"\nnixos = "b.nix"\n', "exactly one of"),
]


@pytest.mark.parametrize("text,expected", [(t, e) for _, t, e in BAD_HOSTS], ids=[i for i, _, _ in BAD_HOSTS])
def test_bad_host_is_refused_with_file_key_and_reason(tmp_path, text, expected):
    root = write_inventory(tmp_path / "inv", {"web-1": text})
    with pytest.raises(InventoryError) as error:
        load_inventory(root)
    message = str(error.value)
    assert expected in message
    assert str(root / "web-1" / "host.toml") in message
    assert "\n" not in message


BAD_CONFIGS = [
    ("no cache", "", "cache: missing"),
    ("bad bucket", '[cache]\nbucket = "a/b"\n', "bucket: 'a/b' is not a B2 bucket name"),
    ("unknown section", CONFIG + "[extra]\n", "extra: unknown key"),
    ("unknown cache key", '[cache]\nbucket = "topdeck-test"\nsecret = "x"\n', "cache.secret: unknown key"),
    ("prefix escapes", '[cache]\nbucket = "topdeck-test"\nprefix = "../x"\n', "prefix: '../x' is not a safe prefix"),
    ("both public keys", CONFIG + 'public_key = "a:b"\npublic_key_file = "k"\n', "not both"),
    ("bad parallel", CONFIG + "[deploy]\nparallel = 0\n", "deploy.parallel: 0 must be greater than 0"),
    ("bad lock_wait", CONFIG + "[deploy]\nlock_wait = -5\n", "deploy.lock_wait: -5 must be greater than 0"),
    ("lock_wait not a number", CONFIG + '[deploy]\nlock_wait = "3m"\n', "deploy.lock_wait"),
    ("bad cache type", '[cache]\ntype = "s3"\n', "cache.type: 's3' must be one of: b2, dir"),
]


@pytest.mark.parametrize("config,expected", [(c, e) for _, c, e in BAD_CONFIGS], ids=[i for i, _, _ in BAD_CONFIGS])
def test_bad_config_is_refused(tmp_path, config, expected):
    root = write_inventory(tmp_path / "inv", {"web-1": HOST}, config=config)
    with pytest.raises(InventoryError, match=None) as error:
        load_inventory(root)
    assert expected in str(error.value)
    assert "topdeck.toml" in str(error.value)


def test_two_hosts_with_one_address(tmp_path):
    root = write_inventory(tmp_path / "inv", {"web-1": HOST, "web-2": HOST})
    with pytest.raises(InventoryError, match="127.0.0.11:22 is also the address of host 'web-1'"):
        load_inventory(root)


def test_host_folder_name_with_space(tmp_path):
    root = write_inventory(tmp_path / "inv", {"web 1": HOST})
    with pytest.raises(InventoryError, match="host name 'web 1' must be"):
        load_inventory(root)


def test_empty_inventory(tmp_path):
    root = write_inventory(tmp_path / "inv", {})
    with pytest.raises(InventoryError, match="no hosts"):
        load_inventory(root)


def test_missing_inventory(tmp_path):
    with pytest.raises(InventoryError, match="inventory folder not found"):
        load_inventory(tmp_path / "nowhere")


def test_unreadable_host_file(tmp_path):
    root = write_inventory(tmp_path / "inv", {"web-1": HOST})
    (root / "web-1" / "host.toml").unlink()
    (root / "web-1" / "host.toml").mkdir()
    with pytest.raises(InventoryError, match="cannot read"):
        load_inventory(root)


@pytest.mark.parametrize("url,kept", [
    ("https://nix-cache.example.org", "https://nix-cache.example.org"),
    ("https://nix-cache.example.org/file/my-nix-cache/cache/", "https://nix-cache.example.org/file/my-nix-cache/cache"),
    ("http://127.0.35.1:8080/file/b/p", "http://127.0.35.1:8080/file/b/p"),
    ("https://[2001:db8::1]:8443/nix", "https://[2001:db8::1]:8443/nix"),
])
def test_download_url_names_the_caches_root(tmp_path, url, kept):
    inventory = load_inventory(write_inventory(tmp_path / "inv", {"web-1": HOST},
                                               CONFIG + f'download_url = "{url}"\n'))
    assert inventory.cache.download_url == kept


@pytest.mark.parametrize("url,problem", [
    ("ftp://cache.example.org", "is not the http:// or https:// URL of the cache's root"),
    ("https://cache.example.org/a b", "is not the http:// or https:// URL"),
    ("https://cache.example.org/x';touch /tmp/x", "is not the http:// or https:// URL"),
    ("https://cache.example.org/${x}", "is not the http:// or https:// URL"),
    ("https://cache.example.org/?token=1", "is not the http:// or https:// URL"),
    ("https://cache.example.org/#a", "is not the http:// or https:// URL"),
    ("https://cache.example.org//double", "is not the http:// or https:// URL"),
    ("https://bob:secret@cache.example.org", "must not carry a user or password"),
])
def test_a_bad_download_url_is_refused_with_file_and_key(tmp_path, url, problem):
    root = write_inventory(tmp_path / "inv", {"web-1": HOST}, CONFIG + f'download_url = "{url}"\n')
    with pytest.raises(InventoryError) as error:
        load_inventory(root)
    assert str(error.value).startswith(f"{root}/topdeck.toml: cache.download_url: ") and problem in str(error.value)
    assert "secret" not in str(error.value)


def test_download_url_is_only_for_a_b2_cache(tmp_path):
    root = write_inventory(tmp_path / "inv", {"web-1": HOST},
                           '[cache]\ntype = "dir"\npath = "c"\ndownload_url = "https://cache.example.org"\n')
    with pytest.raises(InventoryError, match=r"cache.download_url: only for type = \"b2\""):
        load_inventory(root)


DIR_CONFIG = '[cache]\ntype = "dir"\npath = "c"\n'


@pytest.mark.parametrize("url", ["file:///srv/nix-cache", "http://127.0.0.1:8080/cache/", "https://cache.example.org"])
def test_a_dir_cache_url_is_a_file_or_http_url(tmp_path, url):
    inventory = load_inventory(write_inventory(tmp_path / "inv", {"web-1": HOST}, DIR_CONFIG + f'url = "{url}"\n'))
    assert inventory.cache.url == url.rstrip("/")


@pytest.mark.parametrize("url,problem", [
    ("https://cache.example.org/${builtins.readFile /etc/shadow}", "is neither the file:// URL"),
    ("file:///srv/cache x", "is neither the file:// URL"),
    ("file://relative", "is neither the file:// URL"),
    ("https://cache.example.org/';touch /tmp/x", "is neither the file:// URL"),
    ("https://bob:secret@cache.example.org", "must not carry a user or password"),
    ("http://127.0.0.\u0663:80/c", "is neither the file:// URL"),  # an Arabic-Indic digit is no port or address
])
def test_a_dir_cache_url_is_validated_like_download_url(tmp_path, url, problem):
    root = write_inventory(tmp_path / "inv", {"web-1": HOST}, DIR_CONFIG + f'url = "{url}"\n')
    with pytest.raises(InventoryError) as error:
        load_inventory(root)
    assert str(error.value).startswith(f"{root}/topdeck.toml: cache.url: ") and problem in str(error.value)
    assert "secret" not in str(error.value)


def _flake_inventory(root: Path, secret_key: str, flake: str, secret_name: str = "secret.key") -> Path:
    write_inventory(root, {"web-1": HOST}, CONFIG + f'{secret_key} = "{secret_name}"\n\n[build]\nflake = "{flake}"\n')
    (root / secret_name).write_text("a secret\n")
    return root


@pytest.mark.parametrize("key", ["signing_key", "credentials_file", "gc_credentials_file"])
@pytest.mark.parametrize("flake", [".", "path:.", "path:{root}", "path://{root}?dir=."])
def test_a_secret_inside_a_flake_nix_copies_whole_is_refused(tmp_path, key, flake):
    root = tmp_path / "inv"
    _flake_inventory(root, key, flake.format(root=root))
    with pytest.raises(InventoryError) as error:
        load_inventory(root)
    assert f"cache.{key}: {root}/secret.key would be copied with flake {root} into" in str(error.value)




# --- [[keys]] -----------------------------------------------------------------------------------------

KEY = '[[keys]]\nname = "db-password"\nfile = "db.txt"\n'
BAD_KEYS = [
    ("both file and command", KEY + 'command = ["pass", "db"]\n', "keys[0] (key db-password): give exactly one of "
     "'file' or 'command'"),
    ("neither file nor command", '[[keys]]\nname = "db-password"\n', "give exactly one of 'file' or 'command'"),
    ("relative dest_dir", KEY + 'dest_dir = "run/keys"\n', "keys[0].dest_dir: 'run/keys' must be an absolute path"),
    ("dest_dir with dotdot", KEY + 'dest_dir = "/run/../etc"\n', "must be a plain absolute path"),
    ("dest_dir with a quote", KEY + "dest_dir = \"/run/k'eys\"\n", "must be a plain absolute path"),
    ("bad mode", KEY + 'permissions = "0800"\n', "keys[0].permissions: '0800' is not an octal file mode"),
    ("setuid mode", KEY + 'permissions = "4755"\n', "keys[0].permissions: '4755' is not an octal file mode"),
    ("mode as a number", KEY + "permissions = 600\n", "keys[0].permissions: 600 should be a string"),
    ("unknown upload", KEY + 'upload = "at-boot"\n', "keys[0].upload: 'at-boot' must be one of: pre-activation, "
     "post-activation"),
    ("name with a slash", '[[keys]]\nname = "a/b"\nfile = "x"\n', "keys[0].name: 'a/b' must be"),
    ("missing name", '[[keys]]\nfile = "x"\n', "keys[0].name: missing"),
    ("user with shell", KEY + 'user = "root;id"\n', "keys[0].user: 'root;id' is not a valid user name"),
    ("group with space", KEY + 'group = "a b"\n', "keys[0].group: 'a b' is not a valid user name"),
    ("empty argv", '[[keys]]\nname = "k"\ncommand = []\n', "keys[0].command: should be a non-empty list"),
    ("argv with a number", '[[keys]]\nname = "k"\ncommand = ["pass", 3]\n', "keys[0].command: should be"),
    ("multi-line command", '[[keys]]\nname = "k"\ncommand = "a\\nb"\n', "keys[0].command: must be a non-empty"),
    ("unknown key setting", KEY + 'text = "secret"\n', "keys[0].text: unknown key"),
    ("name twice", KEY + KEY, "keys[1] (key db-password): name 'db-password' is given twice"),
    ("keys not tables", 'keys = ["a"]\n', "keys[0]: 'a' should be a table"),
]


@pytest.mark.parametrize("text,expected", [(t, e) for _, t, e in BAD_KEYS], ids=[i for i, _, _ in BAD_KEYS])
def test_bad_key_is_refused_in_host_and_fleet_files(tmp_path, text, expected):
    host_root = write_inventory(tmp_path / "host", {"web-1": HOST + text})
    fleet_root = write_inventory(tmp_path / "fleet", {"web-1": HOST}, config=text + CONFIG)
    for root, file in ((host_root, host_root / "web-1" / "host.toml"), (fleet_root, fleet_root / "topdeck.toml")):
        with pytest.raises(InventoryError) as error:
            load_inventory(root)
        assert str(error.value).startswith(f"{file}: ") and expected in str(error.value)
        assert "\n" not in str(error.value)


def test_keys_defaults_and_a_hosts_own_key_replaces_the_fleets(tmp_path):
    fleet = KEY + '\n[[keys]]\nname = "tls"\ncommand = "pass show tls"\nupload = "post-activation"\n'
    own = HOST + '[[keys]]\nname = "db-password"\ncommand = ["cat", "own.txt"]\ndest_dir = "/var/lib/app/"\n' \
        'user = "app"\ngroup = "app"\npermissions = "0440"\n'
    root = write_inventory(tmp_path / "inv", {"web-1": own, "web-2": HOST.replace(".11", ".12")},
                           config=fleet + CONFIG)
    inventory = load_inventory(root)
    plain = inventory.keys_for(inventory.host("web-2"))
    assert [(k.name, k.dest, k.user, k.group, k.permissions, k.upload) for k in plain] == [
        ("db-password", "/run/keys/db-password", "root", "root", "0600", "pre-activation"),
        ("tls", "/run/keys/tls", "root", "root", "0600", "post-activation")]
    assert plain[0].file == root / "db.txt" and plain[1].command == ("/bin/sh", "-c", "pass show tls")
    mine = inventory.keys_for(inventory.host("web-1"))
    assert [(k.name, k.dest, k.user, k.group, k.permissions) for k in mine] == [
        ("tls", "/run/keys/tls", "root", "root", "0600"),
        ("db-password", "/var/lib/app/db-password", "app", "app", "0440")]
    assert mine[1].command == ("cat", "own.txt") and mine[1].file is None


def test_a_key_file_inside_a_flake_nix_copies_whole_is_refused(tmp_path):
    root = write_inventory(tmp_path / "inv", {"web-1": HOST}, KEY + CONFIG + '\n[build]\nflake = "path:."\n')
    (root / "db.txt").write_text("a secret\n")
    with pytest.raises(InventoryError) as error:
        load_inventory(root)
    assert f"keys db-password: {root}/db.txt would be copied with flake {root} into" in str(error.value)


def test_lock_wait_defaults_to_three_minutes_and_reads_seconds(tmp_path):
    assert load_inventory(write_inventory(tmp_path / "a", {"web-1": HOST})).deploy.lock_wait == 180
    root = write_inventory(tmp_path / "b", {"web-1": HOST}, config=CONFIG + "[deploy]\nlock_wait = 7\n")
    assert load_inventory(root).deploy.lock_wait == 7
