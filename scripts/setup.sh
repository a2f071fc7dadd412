#!/usr/bin/env bash
# Installs what topdeck's lab, tests and demo need, idempotently: Debian packages, then a .venv.
# The lab needs root on Linux (mount namespaces, sshd on 127.0.0.x); using topdeck on a real fleet does not.
# `setup.sh --check` sets up only what `make check` needs (shellcheck and the .venv), so it runs as any user.
set -euo pipefail
cd "$(dirname "$0")/.."

# debootstrap and systemd-container build and boot the lab's image hosts (Debian roots with systemd as PID 1);
# git is what Nix reads a flake in a git repository with (and the flake tests make one).
# `make check` needs shellcheck.
DEBIAN_PACKAGES=(nix-bin openssh-server openssh-client iproute2 util-linux curl sudo passwd tmux librsvg2-bin git
                 python3-venv debootstrap systemd-container shellcheck)
if [ "${1:-}" = --check ]; then
    DEBIAN_PACKAGES=(python3-venv shellcheck)
fi

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: need root to install Debian packages: ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.topdeck-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: pip install -e '.[dev]'"
    if ! { .venv/bin/pip install --upgrade pip && .venv/bin/pip install -e '.[dev]'; } >.venv/pip.log 2>&1; then
        tail -n 30 .venv/pip.log >&2
        echo "setup: pip install failed (full log: .venv/pip.log)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
