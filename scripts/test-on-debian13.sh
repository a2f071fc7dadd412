#!/usr/bin/env bash
# Runs the README's test command (`make test`) on Debian 13: inside a trixie root made with debootstrap, with
# this checkout copied in (uncommitted changes too), so the suite's own setup installs Debian 13's packages there
# (nix-bin 2.26 becomes the native Nix) and its lab runs inside. Needs root; run it alone on the machine, as the
# suite's lab uses fixed loopback addresses. Arguments go to pytest, e.g. `scripts/test-on-debian13.sh -x -k lab`.
#
#   TOPDECK_DEBIAN13_ROOT  where the root is kept between runs (default /var/cache/topdeck-lab/debian13)
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${TOPDECK_DEBIAN13_ROOT:-/var/cache/topdeck-lab/debian13}
IMAGES=${TOPDECK_IMAGE_DIR:-/var/cache/topdeck-lab/images}
MIRROR=$(.venv/bin/python -c 'from topdeck.lab.images import debian_mirror; print(debian_mirror())' 2>/dev/null \
         || echo http://deb.debian.org/debian)

if [ "$(id -u)" -ne 0 ]; then
    echo "test-on-debian13: needs root (debootstrap, chroot, and the lab inside)" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }

if [ ! -x "$ROOT/usr/bin/make" ]; then
    echo "test-on-debian13: debootstrap trixie into $ROOT (about a minute)"
    rm -rf "$ROOT.new"
    debootstrap --variant=minbase --include=python3,python3-venv,make,ca-certificates trixie "$ROOT.new" "$MIRROR" \
        >"$ROOT.log" 2>&1 || { tail -n 5 "$ROOT.log" >&2; exit 1; }
    rm -rf "$ROOT"
    mv "$ROOT.new" "$ROOT"
fi
echo "test-on-debian13: Debian $(cat "$ROOT/etc/debian_version") in $ROOT"

# The checkout as it is, without its venv and caches: the suite's setup makes a venv of Debian 13's Python there
# (kept between runs; it is made again when pyproject.toml changes).
mkdir -p "$ROOT/src/topdeck" "$ROOT$IMAGES"
find "$ROOT/src/topdeck" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
tar --exclude=./.venv --exclude=./.git --exclude='*/__pycache__' --exclude=./.pytest_cache --exclude=./.mypy_cache \
    --exclude=./.ruff_cache -cf - . | tar -xf - -C "$ROOT/src/topdeck"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The certificate authorities this machine adds for HTTPS (a proxy's, say) are trusted inside too.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    chroot "$ROOT" update-ca-certificates >/dev/null 2>&1
fi

pytest_args="$*"
case $pytest_args in *[\'\"\\]*) echo "test-on-debian13: pytest arguments may not contain quotes" >&2; exit 2 ;; esac

# A mount namespace of its own, whose root is the Debian 13 root (pivot_root, not chroot: the lab enters its
# hosts' mount namespaces, which would lead a chrooted process back to this machine's root). Whatever the run
# mounts goes away with it. The image cache is shared with this machine's (the same recipe: no rebuild).
exec unshare --mount --propagation private /bin/bash -c "
    set -e
    mount --bind '$ROOT' '$ROOT'
    mount -t proc proc '$ROOT/proc'
    mount --rbind /sys '$ROOT/sys'
    mount --rbind /dev '$ROOT/dev'
    mount -t tmpfs -o mode=0755 tmpfs '$ROOT/run'
    mount --bind '$IMAGES' '$ROOT$IMAGES'
    mkdir -p '$ROOT/.old-root'
    cd '$ROOT'
    pivot_root . .old-root
    umount --lazy /.old-root
    exec /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb PYTEST_ARGS='$pytest_args' /bin/sh -c 'cd /src/topdeck && make test'
"
