"""Helpers the end-to-end tests share: SSH into lab hosts as an operator would, with pinned host keys."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import paramiko

from topdeck.lab.lab import BUCKET, Lab


def connect(lab: Lab, name: str, known_hosts: Path | None = None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_system_host_keys(str(known_hosts or lab.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(lab.host(name).address, username="root", key_filename=str(lab.client_key),
                   look_for_keys=False, allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10)
    return client


def ssh_run(lab: Lab, name: str, command: str) -> tuple[int, str, str]:
    client = connect(lab, name)
    try:
        _, stdout, stderr = client.exec_command(command, timeout=120)
        out, err = stdout.read().decode(), stderr.read().decode()
        return stdout.channel.recv_exit_status(), out, err
    finally:
        client.close()


def substitute(lab: Lab, host: str, path: str, url: str, public_key: str) -> tuple[int, str, str]:
    return ssh_run(lab, host, (
        f"nix-store -r {path} --option substituters '{url}' --option trusted-public-keys '{public_key}' "
        "--option require-sigs true --option narinfo-cache-negative-ttl 0"
    ))


def public_file(lab: Lab, prefix: str, name: str) -> bytes | None:
    """A file of the cache as hosts see it (public download), or None if B2 answers 404."""
    try:
        with urllib.request.urlopen(f"{lab.emulator.url}/file/{BUCKET}/{prefix}/{name}", timeout=10) as answer:
            return answer.read()
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise
