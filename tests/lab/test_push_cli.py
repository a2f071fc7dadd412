"""The `topdeck push` and `topdeck pointers` commands, run as a user would, against the lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def topdeck(inventory, *args, env=None):
    return subprocess.run([sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory), *args],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
                          stdin=subprocess.DEVNULL)


def test_push_host_then_pointers_history_and_rollback(lab, lab_inventory):
    first = topdeck(lab_inventory, "push", "host-1", "--json")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout.splitlines()[-1])
    assert result["event"] == "PushResult" and result["pointer"] == "web" and result["pointer_serial"] == 1
    assert result["paths_uploaded"] == result["paths_total"] > 30
    assert any(json.loads(line).get("phase") == "upload" for line in first.stdout.splitlines()[:-1])
    web = result["toplevel"]

    db = topdeck(lab_inventory, "push", "host-3")
    assert db.returncode == 0, db.stderr
    assert "pointer db: published (serial 1)" in db.stdout
    db_path = db.stdout.split()[1]

    again = topdeck(lab_inventory, "push", db_path, "--pointer", "web")
    assert "pointer web: published (serial 2)" in again.stdout
    # its manifest answers for the whole closure (class B 1); the pointer moves from web's system, whose manifest
    # the delta object from it reads (class B 2)
    assert "0 of" in again.stdout and "class B 2" in again.stdout and "a delta object of" in again.stdout

    listed = json.loads(topdeck(lab_inventory, "pointers", "--json").stdout)
    assert {name: (v["serial"], v["path"]) for name, v in listed.items()} == {"db": (1, db_path), "web": (2, db_path)}

    history = json.loads(topdeck(lab_inventory, "pointers", "web", "--history", "--json").stdout)
    assert [(v["serial"], v["path"]) for v in history] == [(2, db_path), (1, web)]

    refused = topdeck(lab_inventory, "pointers", "web", "--rollback")
    assert refused.returncode == 1 and "pass --yes" in refused.stderr
    rolled = topdeck(lab_inventory, "pointers", "web", "--rollback", "--yes")
    assert rolled.returncode == 0, rolled.stderr
    assert f"pointer web now names {web} (serial 3)" in rolled.stdout
    history = json.loads(topdeck(lab_inventory, "pointers", "web", "--history", "--json").stdout)
    assert [v["serial"] for v in history] == [3, 2, 1]


def one_line_error(result, expected):
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr


def test_bad_input_is_one_line_and_uploads_nothing(lab, lab_inventory, tmp_path):
    one_line_error(topdeck(lab_inventory, "push", "/tmp/not-a-store-path"), "is not a Nix store path")
    one_line_error(topdeck(lab_inventory, "push", "/nix/store/" + "0" * 32 + "-missing-1.0"), "not in the local store")
    one_line_error(topdeck(lab_inventory, "push", "host-1", "--pointer", "a/b"), "no '/', no '..'")
    one_line_error(topdeck(lab_inventory, "push", "mail-9"), "push mail-9: no host matches")
    wrong = {"B2_APPLICATION_KEY_ID": "nobody", "B2_APPLICATION_KEY": "secret-that-must-not-leak"}
    result = topdeck(lab_inventory, "pointers", env=wrong)
    one_line_error(result, "B2 refused the application key")
    assert "secret-that-must-not-leak" not in result.stderr + result.stdout
    bad_key = tmp_path / "bad.sec"
    bad_key.write_text("not a key")
    config = lab_inventory / "topdeck.toml"
    config.write_text(config.read_text().replace(str(lab.cache_secret_key), str(bad_key)))
    one_line_error(topdeck(lab_inventory, "push", "host-1"), "bad.sec")
    listed = topdeck(lab_inventory, "pointers", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == {}
