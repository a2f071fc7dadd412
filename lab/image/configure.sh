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
# NixOS's stage 2, as much of it as the lab has: at boot the system that the boot entry names (kept under /nix, as a
# bootloader's entry survives a reboot while /run does not) becomes /run/booted-system, and its activation makes it
# /run/current-system; before sshd, which reads the authorized keys through /run/current-system.
mkdir -p /usr/local/lib/topdeck-lab
cat > /usr/local/lib/topdeck-lab/stage-2 <<'STAGE2'
#!/bin/sh
entry=/nix/var/nix/topdeck-lab/boot-entry
system=$(readlink -f "$entry") || exit 0
if [ ! -x "$system/activate" ]; then
    echo "$entry names $system, which has no activate script: nothing booted" >&2
    exit 0
fi
mkdir -p /run/lab
ln -sfn "$system" /run/lab/boot-entry
ln -sfn "$system" /run/booted-system
"$system/activate" "$system" || echo "the activation of $system failed (exit $?)" >&2
exit 0
STAGE2
chmod 755 /usr/local/lib/topdeck-lab/stage-2
cat > /etc/systemd/system/topdeck-lab-stage-2.service <<'UNIT'
[Unit]
Description=lab: boot the system the boot entry names (NixOS's stage 2)
ConditionPathExists=/nix/var/nix/topdeck-lab/boot-entry
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target ssh.service topdeck-reboot-guard.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/lib/topdeck-lab/stage-2

[Install]
WantedBy=sysinit.target
UNIT
# topdeck's reboot guard, as hosts/modules/topdeck-reboot-guard.nix installs it on NixOS: after a reboot that topdeck
# asked for, it takes the run over, waits for the confirmation, and otherwise returns the host to its previous system.
cat > /etc/systemd/system/topdeck-reboot-guard.service <<'UNIT'
[Unit]
Description=topdeck: confirm this boot or return to the previous system
ConditionPathExists=/nix/var/nix/topdeck/reboot/pending
After=topdeck-lab-stage-2.service
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/bin/sh /nix/var/nix/topdeck/reboot/host.sh boot-guard
# The run's outcome (1 failed, 2 rolled back) is in its record; the guard itself did its job.
SuccessExitStatus=1 2

[Install]
WantedBy=multi-user.target
UNIT
systemctl enable topdeck-lab-stage-2.service topdeck-reboot-guard.service >/dev/null 2>&1
: > /etc/machine-id
