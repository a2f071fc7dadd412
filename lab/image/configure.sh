# Runs inside a fresh debootstrap root (chroot, with /proc and /dev mounted): installs what a lab host needs and
# makes the root boot as one under systemd-nspawn. Arguments: apt options (`-o Key=Value`...), kept for later
# use by apt in the image; $TOPDECK_LAB_PACKAGES: the packages to install.
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
while [ $# -ge 2 ] && [ "$1" = -o ]; do
    printf '%s "%s";\n' "${2%%=*}" "${2#*=}" >> /etc/apt/apt.conf.d/99topdeck-lab
    shift 2
done
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d   # no service starts while installing
chmod 755 /usr/sbin/policy-rc.d
apt-get update -qq
# shellcheck disable=SC2086 # the package list (topdeck.lab.images.PACKAGES) is meant to split
apt-get install -y -qq --no-install-recommends $TOPDECK_LAB_PACKAGES >/dev/null
apt-get clean
rm -rf /usr/sbin/policy-rc.d /etc/ssh/ssh_host_* /var/lib/apt/lists/*
# Each lab host brings its own sshd_config and host key (bound in by the lab); Nix runs single-user as root.
systemctl mask nix-daemon.socket nix-daemon.service sshd-keygen.service getty@.service console-getty.service \
    systemd-networkd-wait-online.service >/dev/null 2>&1
systemctl enable ssh.service >/dev/null 2>&1
# The lab's deploy user (key logins only) with passwordless sudo, as on native hosts.
id topdeck-deployer >/dev/null 2>&1 ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /bin/sh topdeck-deployer
usermod -p '*' topdeck-deployer
printf 'topdeck-deployer ALL=(root) NOPASSWD: ALL\n' > /etc/sudoers.d/topdeck-lab
chmod 440 /etc/sudoers.d/topdeck-lab
: > /etc/machine-id
