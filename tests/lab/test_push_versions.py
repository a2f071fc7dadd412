"""A whole push made with each Nix the lab has (2.8 here, 2.26 and 2.34 from the images), substituted by each.

For every operator Nix, `topdeck push` builds a system with that Nix into a store of its own, pushes it to the B2
emulator and publishes its pointer; then a native host (Nix 2.8), a Debian 13 host (Nix 2.26) and a sid host
(Nix 2.34) each substitute it from the cache with signatures required.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from conftest import write_lab_inventory
from deploytools import MIXED_KINDS, three_host_lab
from labtools import public_file, substitute

from topdeck.core.nix import localnix
from topdeck.lab import images, opnix
from topdeck.lab.lab import BUCKET

OPERATORS = ("native", "trixie", "sid")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with three_host_lab(tmp_path_factory.mktemp("pushversions"), "127.0.24.11", kinds=MIXED_KINDS) as lab:
        yield lab


def operator_env(kind: str, folder) -> dict[str, str]:  # type: ignore[no-untyped-def]
    if kind == images.NATIVE:
        return opnix.native_env()
    root = images.ensure_image(kind, log=lambda *_: None).root
    return opnix.image_env(root, folder / "nix", folder / "tools")


@pytest.mark.parametrize("operator", OPERATORS)
def test_a_push_made_with_each_nix_is_substituted_by_each(lab, tmp_path, operator):
    env = operator_env(operator, tmp_path)
    prefix = f"versions-{operator}-{uuid.uuid4().hex[:6]}"
    inventory = write_lab_inventory(lab, tmp_path / "hosts", prefix, roles={"host-1": "web"})
    spec = (inventory / "web.json").read_text().replace("24.05.20240601.abcdef0", f"24.11.{uuid.uuid4().hex[:6]}")
    (inventory / "web.json").write_text(spec)

    pushed = subprocess.run([sys.executable, "-m", "topdeck.cli", "--inventory", str(inventory), "push", "host-1",
                             "--json"], capture_output=True, text=True, env=env, timeout=600)

    assert pushed.returncode == 0, pushed.stderr[-2000:]
    assert "deprecated" not in pushed.stderr
    toplevel = json.loads(pushed.stdout.splitlines()[-1])["toplevel"]
    version = ".".join(map(str, localnix.nix_version(env)))
    expected = {"native": None, "trixie": "2.26.", "sid": "2.34."}[operator]
    assert expected is None or version.startswith(expected), version
    assert public_file(lab, prefix, "toplevels/web.txt") == f"{toplevel}\n".encode()
    url = f"{lab.emulator.url}/file/{BUCKET}/{prefix}"
    key = lab.cache_public_key.read_text().strip()
    for host in MIXED_KINDS:
        code, out, err = substitute(lab, host, toplevel, url, key)
        assert code == 0, f"{host} ({MIXED_KINDS[host]}) could not substitute a push made with {operator}: {err}"
        assert lab.host(host).run(["nix-store", "--check-validity", toplevel], check=False).returncode == 0
