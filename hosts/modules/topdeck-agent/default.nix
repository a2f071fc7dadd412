# The topdeck pull agent: the host-side script that `topdeck deploy` sends over SSH (core/remote/host.sh), run by a
# systemd timer, so a host applies its pointer by itself: it reads the signed pointer from the cache, refuses
# a forged or older one, fetches the closure with signatures required, sets the profile and switches; then it runs
# the deploy's health checks (and that the cache is still reachable) and rolls the switch back when one fails. Its
# outcome is kept on the host, where `topdeck status` reads it.
#
# The module is this folder: default.nix and host.sh, a copy of topdeck's core/remote/host.sh (a test keeps them equal).
# Copy the whole folder beside configuration.nix (`cp -r hosts/modules/topdeck-agent /etc/nixos/`), then in
# configuration.nix (`topdeck agent-config HOST` prints this block with the host's values):
#   imports = [ ./topdeck-agent ];
#   services.topdeck-agent = {
#     enable = true;
#     pointer = "web";
#     cache = "https://f003.backblazeb2.com/file/BUCKET/PREFIX";
#     publicKey = "cache-1:base64...";            # the key that signs the cache and the pointers
#     signer = "ssh-ed25519 AAAA...";             # the same key in OpenSSH form
#   };
{ config, lib, pkgs, ... }:

let
  cfg = config.services.topdeck-agent;
  script = ./host.sh;
in
{
  options.services.topdeck-agent = with lib; {
    enable = mkEnableOption "the topdeck pull agent, which applies the host's pointer on a timer";
    pointer = mkOption {
      type = types.strMatching "[A-Za-z0-9._-]+";
      description = "The pointer this host follows (toplevels/<pointer>.txt in the cache).";
    };
    cache = mkOption {
      type = types.strMatching "https?://[][A-Za-z0-9.:-]+(/[A-Za-z0-9._~%+-]+)*";
      description = "The binary cache's root URL: cache.download_url of topdeck.toml, else the bucket's own "
        + "<downloadUrl>/file/<bucket>/<prefix>. Hosts need no B2 key.";
    };
    publicKey = mkOption {
      type = types.strMatching "[^:[:space:]]+:[A-Za-z0-9+/=]+";
      description = "The only key trusted for the cache's paths and the pointer (Nix format name:base64).";
    };
    signer = mkOption {
      type = types.strMatching "ssh-ed25519 [A-Za-z0-9+/=]+";
      description = "The same key as an OpenSSH public key, to verify the pointer with ssh-keygen -Y verify.";
    };
    checkCommand = mkOption {
      type = types.str;
      default = "";
      description = "A health check after each switch: a shell command that must exit 0 (the [checks] command of "
        + "topdeck.toml); a failing check rolls the switch back, as a deploy does.";
    };
    checkHttp = mkOption {
      type = types.str;
      default = "";
      description = "A health check after each switch: a URL the host must fetch (the [checks] http).";
    };
    checkUnits = mkOption {
      type = types.bool;
      default = false;
      description = "A health check after each switch: no systemd unit may have failed since (the [checks] "
        + "failed_units).";
    };
    onFailedUnits = mkOption {
      type = types.strMatching "rollback|keep";
      default = "rollback";
      description = "What a switch whose units fail to start does (deploy.on_failed_units).";
    };
    interval = mkOption {
      type = types.str;
      default = "5min";
      description = "How often to look at the pointer (systemd time span).";
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.topdeck-agent = {
      description = "topdeck pull agent: apply pointer ${cfg.pointer}";
      path = [ config.nix.package pkgs.coreutils pkgs.curl pkgs.openssh pkgs.util-linux pkgs.gnused
               pkgs.gnugrep pkgs.gawk pkgs.findutils pkgs.diffutils ];
      # A switch must never restart or stop the unit that is running it.
      restartIfChanged = false;
      stopIfChanged = false;
      serviceConfig = {
        Type = "oneshot";
        ExecStart = lib.escapeShellArgs ([
          "${pkgs.bash}/bin/sh" "${script}" "agent"
          "--pointer" cfg.pointer "--sidecar" "${cfg.cache}/toplevels/${cfg.pointer}.json"
          "--cache" cfg.cache "--key" cfg.publicKey "--signer" cfg.signer "--on-failed-units" cfg.onFailedUnits
        ] ++ (if cfg.checkCommand != "" then [ "--check-command" cfg.checkCommand ] else [ ])
          ++ (if cfg.checkHttp != "" then [ "--check-http" cfg.checkHttp ] else [ ])
          ++ (if cfg.checkUnits then [ "--check-units" ] else [ ]));
      };
    };
    systemd.timers.topdeck-agent = {
      wantedBy = [ "timers.target" ];
      timerConfig = { OnBootSec = "2min"; OnUnitActiveSec = cfg.interval; RandomizedDelaySec = "1min"; };
    };
  };
}
