# topdeck's reboot guard. After a reboot that topdeck asked for (`topdeck reboot`, `topdeck deploy --mode boot
# --reboot`), it takes the run over at boot, before sshd: it waits deploy.confirm_timeout for topdeck's confirmation
# through a new SSH login and, without one, returns the host to the system it ran before (the system profile and the
# boot entry back, and another reboot). topdeck refuses to reboot a host that lacks this unit.
#
# It runs only while a reboot is pending (/nix/var/nix/topdeck/reboot/pending), and runs the host script that arranged
# that reboot, which topdeck's run left beside it. Import it in every system topdeck may reboot into: the new system
# is the one whose boot it guards.
#
#   imports = [ ./topdeck-reboot-guard.nix ];
{ config, lib, pkgs, ... }:

{
  systemd.services.topdeck-reboot-guard = {
    description = "topdeck: confirm this boot or return to the previous system";
    wantedBy = [ "multi-user.target" ];
    before = [ "sshd.service" ];
    unitConfig.ConditionPathExists = "/nix/var/nix/topdeck/reboot/pending";
    path = [ config.nix.package config.systemd.package pkgs.coreutils pkgs.util-linux pkgs.gnused pkgs.gnugrep
             pkgs.gawk pkgs.findutils pkgs.diffutils ];
    # A switch must never restart or stop the unit that guards the boot.
    restartIfChanged = false;
    stopIfChanged = false;
    serviceConfig = {
      Type = "oneshot";
      ExecStart = "${pkgs.bash}/bin/sh /nix/var/nix/topdeck/reboot/host.sh boot-guard";
      # The run's outcome (1 failed, 2 rolled back) is in its record; the guard itself did its job.
      SuccessExitStatus = "1 2";
    };
  };
}
