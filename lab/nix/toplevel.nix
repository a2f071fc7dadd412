# A NixOS-like system toplevel for the lab, built from a spec (see topdeck.lab.factory for its schema).
#
#   nix-build toplevel.nix --argstr specFile /path/spec.json
#   import ./toplevel.nix { spec = { host = "web1"; ... }; }
#
# Every derivation is builtins.derivation with /bin/sh as builder; a builder's PATH is empty, so every
# tool is called by its absolute path (the scripts below too: they run on the lab hosts, Debian 12 or 13).
#
# The toplevel, as NixOS lays one out:
#
#   bin/switch-to-configuration   the contract of NixOS's switch-to-configuration-ng (below)
#   bin/lab-install-bootloader    the system's INSTALL_BOOTLOADER command: `lab-install-bootloader TOPLEVEL`
#   activate                      the activation script (`activate TOPLEVEL`): points /run/current-system
#   dry-activate                  what `activate` would do, printed
#   init-interface-version        "systemd 2" by default, as NixOS writes it (spec: init_interface_version)
#   nixos-version, sw -> system-path
#   etc/ssh/authorized_keys.d/{root,topdeck-deployer}   the operator's keys (not in the break-ssh variant)
#   etc/ssh/sshd_config.d/topdeck-lab.conf             spec.sshd_settings, one per line (only when there are)
#   etc/topdeck-lab/sshd-unit-hash                       sha256 of that fragment: the lab's "sshd.service unit"
#   specialisation/NAME -> a full toplevel of its own (spec.specialisations: NAME -> activation kind)
#
# bin/switch-to-configuration ACTION, in the order switch-to-configuration-ng does it:
#
#   exit 1    no or unknown ACTION: the usage on stderr ("Usage: switch-to-configuration [check|switch|boot|test|
#             dry-activate]"); not root: "Error: switch-to-configuration must be run as the root user";
#             "Pre-switch checks failed"; "Failed to install bootloader" (switch, boot)
#   exit 11   "Could not acquire lock": another switch-to-configuration holds /run/nixos/switch-to-configuration.lock
#             (created 0755 /run/nixos; an exclusive, non-blocking flock; 11 is EWOULDBLOCK)
#   exit 0    check: the pre-switch checks passed (NIXOS_NO_CHECK=1 skips them). boot: the bootloader is installed
#             (with NIXOS_INSTALL_BOOTLOADER=1 "installed itself too"), nothing activated.
#   exit 100  switch, test, dry-activate: the new init-interface-version differs from /run/current-system's (a
#             current system without the file counts as ""): "Warning: the new NixOS configuration has an ‘init’
#             that is / incompatible with the current configuration.  The new configuration / won't take effect
#             until you reboot the system." (three lines, as ng prints it). NOTHING was activated and
#             /run/current-system is unchanged; on switch the bootloader was already updated (boot entry moved).
#   exit 0    dry-activate: prints what it would do (units on stderr, then the dry-activate script), changes nothing
#   exit 2    switch, test: "Failed to run activate script"; the switch still goes on (units restarted/started),
#             and the activate script did point /run/current-system (as NixOS's does, whatever snippet failed)
#   exit 4    switch, test: a unit failed to restart/start ("Failed to restart UNIT" / "Failed to start UNIT",
#             then "warning: the following units failed: UNIT, ..."); overrides 2. Activation happened.
#   exit 0    switch, test: activated.
#
# A host without /run/current-system at all (the lab's first install, where a NixOS host would have booted) skips
# the init-interface check and the unit changes: the switch activates, as stage 2 of a boot does.
#
# switch and test write /run/nixos/start-list, restart-list and reload-list (one unit a line; created at the start
# of the unit phase, empty when there is nothing) and remove them when done; units left in them by an interrupted
# run are handled by the next one. On a systemd host (/run/systemd/system exists): an sshd unit hash that differs
# from the current system's puts ssh.service (Debian's sshd unit; stopIfChanged=false, so restarted, not stopped)
# in the restart list when it is active, and it is restarted for real after the activation; every failed unit is
# reset (systemctl reset-failed) after the activation, as ng does; the failed-units variant starts a transient
# unit lab-broken.service that fails (systemd-run, Type=oneshot, /bin/false). On a native host there is no init:
# no unit is restarted, and the failed-units variant only reports lab-broken.service as failed.
#
# The boot entry itself is /nix/var/nix/topdeck-lab/boot-entry, which survives a reboot as a bootloader's entry does
# (/run does not): at boot, image hosts make the system it names the booted and current one (lab/image/configure.sh).
#
# What the lab records, in /run/lab (a host's own /run):
#   activation.log   one line per switch-to-configuration call: TIME<TAB>ACTION<TAB>TOPLEVEL<TAB>OUTCOME, OUTCOME one
#                    of ok (0), failed (1), locked (11), reboot-needed (100), activation-failed (2), units-failed (4)
#   boot-entry       -> the toplevel the host boots (moved by lab-install-bootloader, beside the persistent entry)
#   bootloader.log   one line per bootloader run: TIME<TAB>TOPLEVEL<TAB>install|update (install when
#                    NIXOS_INSTALL_BOOTLOADER=1)
# `system` must be given in a flake: pure evaluation has no builtins.currentSystem.
{ specFile ? null, spec ? builtins.fromJSON (builtins.readFile specFile), system ? builtins.currentSystem }:

let
  activations = [ "ok" "fail" "incompatible-init" "failed-units" "slow" "break-ssh" ];
  aliases = { reboot = "incompatible-init"; };
  canonical = kind: aliases.${kind} or kind;

  shellDerivation = attrs: builtins.derivation ({
    inherit system;
    builder = "/bin/sh";
  } // attrs);

  # What a dependent package refers to: the library output when there is one, as with real split packages.
  linkedOutput = drv: if builtins.elem "lib" drv.outputs then drv.lib else drv.out;

  allOutputs = drv: map (output: drv.${output}) drv.outputs;

  # Each output gets an equal share of the package's size (the first one the remainder) in one file that
  # is 2/5 random bytes and 3/5 repeated text, so zstd shrinks it about 2.5x, like real binaries.
  # Every output lists its dependencies' store paths in nix-support/lab-dependencies, so Nix records them
  # as references; the other outputs of a package with a lib output refer to it too.
  packageBuilder = ''
    set -e
    count=0
    for output in $outputs; do count=$((count + 1)); done
    share=$((size / count))
    bytes=$((size - share * (count - 1)))
    for output in $outputs; do
      eval "dir=\$$output"
      case $output in
        out | bin) file=$dir/bin/$pname ;;
        lib) file=$dir/lib/lib$pname.so ;;
        dev) file=$dir/include/$pname.h ;;
        *) file=$dir/share/$output/$pname ;;
      esac
      /bin/mkdir -p "$dir/nix-support" "''${file%/*}"
      random=$((bytes * 2 / 5))
      {
        /usr/bin/head -c $random /dev/urandom
        /usr/bin/yes "$pname-$version ($output): lab filler standing in for code and tables" \
          | /usr/bin/head -c $((bytes - random))
      } > "$file"
      for path in $dependencies; do echo "$path"; done > "$dir/nix-support/lab-dependencies"
      if [ "$output" != lib ] && [ -n "''${lib:-}" ]; then echo "$lib" >> "$dir/nix-support/lab-dependencies"; fi
      bytes=$share
    done
  '';

  packages = builtins.listToAttrs (map (package: { name = package.pname; value = mkPackage package; }) spec.packages);

  mkPackage = package: shellDerivation {
    name = "${package.pname}-${package.version}";
    inherit (package) pname version outputs;
    size = toString package.size;
    dependencies = map (pname: linkedOutput packages.${pname}) package.deps;
    args = [ "-c" packageBuilder ];
  };

  # The list of every output can outgrow the kernel's 128 KiB limit on one environment variable: a file.
  systemPath = shellDerivation {
    name = "system-path";
    packages = builtins.concatMap allOutputs (builtins.attrValues packages);
    passAsFile = [ "packages" ];
    args = [ "-c" ''
      /bin/mkdir -p $out/bin
      { /usr/bin/tr ' ' '\n' < "$packagesPath"; echo; } > $out/packages
      # sw/bin, as NixOS's system-path has it (ng refuses a current system without it): every package's programs
      while read -r package; do
        for program in "$package"/bin/*; do
          if [ -e "$program" ] && [ ! -e "$out/bin/''${program##*/}" ]; then /bin/ln -s "$program" "$out/bin/"; fi
        done
      done < $out/packages
    '' ];
  };

  # The builder puts `toplevel=`, `activation=` and `slow_seconds=` above each of the scripts below. They run
  # inside a lab host, whose /run is its own, and touch nothing outside /run but the host's systemd units.

  # Point the symlink $1 at $2 atomically: a new link under a temporary name, then a rename.
  pointFunction = ''
    point() {
      /bin/ln -sfn "$2" "$1.tmp.$$" && /bin/mv -T "$1.tmp.$$" "$1"
    }
  '';

  # $toplevel/activate: what NixOS's activation script does that the lab has: make this the running system.
  activateScript = pointFunction + ''
    status=0
    if [ "$activation" = slow ]; then /bin/sleep "$slow_seconds"; fi
    if [ "$activation" = fail ]; then
      echo "Activation script snippet 'lab-fail' failed (1) (the lab's 'fail' variant)" >&2
      status=1
    fi
    # As in NixOS, the link moves whatever snippet failed, and the script exits with the failure.
    point /run/current-system "$toplevel" || { echo "cannot update /run/current-system" >&2; exit 1; }
    # On a systemd host, the system's units into /etc/systemd/system, as NixOS's /etc does it (one link each, so the
    # host's own units stay); a unit an earlier lab system linked and this one lacks goes.
    if [ -d /run/systemd/system ]; then
      units=/etc/systemd/system
      for link in $units/*; do
        case $(/bin/readlink "$link" 2>/dev/null) in
          /nix/store/*/etc/systemd/system/*) [ -e "$toplevel/etc/systemd/system/''${link##*/}" ] || /bin/rm -f "$link" ;;
        esac
      done
      for unit in "$toplevel"/etc/systemd/system/*; do
        point "$units/''${unit##*/}" "$unit" || { echo "cannot link $unit" >&2; status=1; }
      done
    fi
    exit $status
  '';

  dryActivateScript = ''
    current=$(/bin/readlink /run/current-system) || current=nothing
    if [ "$current" = "$toplevel" ]; then
      echo "/run/current-system already is $toplevel; nothing would change"
    else
      echo "would switch /run/current-system from $current to $toplevel"
    fi
  '';

  # $toplevel/bin/lab-install-bootloader TOPLEVEL: the lab's bootloader, an entry that names what the host boots.
  installBootloaderScript = pointFunction + ''
    target=''${1:?usage: lab-install-bootloader TOPLEVEL}
    lab=/run/lab
    /bin/mkdir -p $lab || exit 1
    if [ "''${NIXOS_INSTALL_BOOTLOADER:-}" = 1 ]; then
      how=install
      echo "installing the lab's boot loader"
    else
      how=update
    fi
    entries=/nix/var/nix/topdeck-lab
    /bin/mkdir -p $entries || exit 1
    point $entries/boot-entry "$target" || { echo "cannot update $entries/boot-entry" >&2; exit 1; }
    point $lab/boot-entry "$target" || { echo "cannot update $lab/boot-entry" >&2; exit 1; }
    printf '%s\t%s\t%s\n' "$(/bin/date -u +%Y-%m-%dT%H:%M:%SZ)" "$target" "$how" >> $lab/bootloader.log
  '';

  switchToConfiguration = ''
    action=''${1:-}
    lab=/run/lab
    nixos=/run/nixos
    systemctl=/usr/bin/systemctl
    on_systemd=
    if [ -d /run/systemd/system ]; then on_systemd=1; fi

    log() {  # the lab's record: one line per call (silently none when /run/lab cannot be written)
      {
        /bin/mkdir -p $lab &&
          printf '%s\t%s\t%s\t%s\n' "$(/bin/date -u +%Y-%m-%dT%H:%M:%SZ)" "$action" "$toplevel" "$1" >> $lab/activation.log
      } 2>/dev/null
    }

    finish() {  # finish EXIT_CODE OUTCOME
      log "$2"
      exit "$1"
    }

    usage() {
      action=$(printf '%s' "$action" | /usr/bin/tr -c 'A-Za-z0-9_.-' '?')
      {
        echo "Usage: switch-to-configuration [check|switch|boot|test|dry-activate]"
        echo "check:        run pre-switch checks and exit"
        echo "switch:       make the configuration the boot default and activate now"
        echo "boot:         make the configuration the boot default"
        echo "test:         activate the configuration, but don't make it the boot default"
        echo "dry-activate: show what would be done if this configuration were activated"
      } >&2
      finish 1 failed
    }

    case $action in
      check | switch | boot | test | dry-activate) ;;
      *) usage ;;
    esac

    if [ "$(/usr/bin/id -u)" != 0 ]; then
      echo "Error: switch-to-configuration must be run as the root user" >&2
      finish 1 failed
    fi
    export NIXOS_ACTION=$action

    # --- ng's checks before the lock: a NixOS installation (/etc/NIXOS, or /etc/os-release's ID is DISTRO_ID), a
    # current system with sw/bin ------------------------------------------------------------------------
    id=$(/bin/sed -n 's/^ID="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null)
    if [ ! -f /etc/NIXOS ] && [ "$id" != "$distro_id" ]; then
      echo "This is not a NixOS installation!" >&2
      finish 1 failed
    fi
    if { [ -e /run/current-system ] || [ -L /run/current-system ]; } && [ ! -d /run/current-system/sw/bin ]; then
      echo "Error: /run/current-system/sw/bin is missing" >&2
      finish 1 failed
    fi

    # --- the lock: exclusive (non-blocking, or waited for), held until this process ends -------------
    if [ "$lock_delay" != 0 ]; then /bin/sleep "$lock_delay"; fi  # a switch slow to start: lets a test take the lock
    if ! /bin/mkdir -p $nixos 2>/dev/null || ! /bin/chmod 0755 $nixos; then
      echo "Failed to create /run/nixos directory" >&2
      finish 1 failed
    fi
    if ! (: >> $nixos/switch-to-configuration.lock) 2>/dev/null; then
      echo "Could not open lock" >&2
      finish 1 failed
    fi
    exec 9>> $nixos/switch-to-configuration.lock
    if [ "$switch_lock" = wait ]; then
      /usr/bin/flock 9  # ng of 2024 and the Perl switch: wait for whoever holds it
    elif ! /usr/bin/flock -n 9; then
      echo "Could not acquire lock" >&2
      finish 11 locked
    fi

    # --- pre-switch checks (the lab's: the toplevel is whole) ----------------------------------------
    if [ "''${NIXOS_NO_CHECK:-}" != 1 ]; then
      for file in init-interface-version activate dry-activate bin/lab-install-bootloader; do
        if [ ! -e "$toplevel/$file" ]; then
          echo "$toplevel/$file is missing" >&2
          echo "Pre-switch checks failed" >&2
          finish 1 failed
        fi
      done
    fi
    if [ "$action" = check ]; then finish 0 ok; fi

    # --- the bootloader ----------------------------------------------------------------------------
    case $action in
      switch | boot)
        "$toplevel/bin/lab-install-bootloader" "$toplevel" 9>&- || {
          echo "Failed to install bootloader" >&2
          finish 1 failed
        }
        ;;
    esac
    if [ "$action" = boot ]; then finish 0 ok; fi

    # --- can this system be activated at all? ------------------------------------------------------
    fresh=
    if [ -e /run/current-system ] || [ -L /run/current-system ]; then
      current_init=$(/bin/cat /run/current-system/init-interface-version 2>/dev/null) || current_init=
      new_init=$(/bin/cat "$toplevel/init-interface-version")
      if [ "$current_init" != "$new_init" ]; then
        {
          echo "Warning: the new NixOS configuration has an ‘init’ that is"
          echo "incompatible with the current configuration.  The new configuration"
          echo "won't take effect until you reboot the system."
          echo
        } >&2
        finish 100 reboot-needed
      fi
    else
      fresh=1  # never activated since the host came up: nothing runs yet that could be stopped or restarted
    fi

    # --- which units change ------------------------------------------------------------------------
    start_units=
    restart_units=
    reload_units=
    add() {  # add LIST UNIT: UNIT into the space-separated list in the variable LIST, once
      eval "units=\$$1"
      case " $units " in *" $2 "*) return 0 ;; esac
      if [ -n "$units" ]; then units="$units $2"; else units=$2; fi
      eval "$1=\$units"
    }
    for list in start restart reload; do  # what an interrupted run left to do
      if [ -f $nixos/$list-list ]; then
        while read -r unit; do
          # Not the lab's broken unit: only the failed-units system starts it.
          case $unit in *[!A-Za-z0-9@:._-]* | "" | lab-broken.service) continue ;; esac
          add ''${list}_units "$unit"
        done < $nixos/$list-list
      fi
    done
    if [ -n "$on_systemd" ] && [ -z "$fresh" ]; then
      old_hash=$(/bin/cat /run/current-system/etc/topdeck-lab/sshd-unit-hash 2>/dev/null) || old_hash=
      new_hash=$(/bin/cat "$toplevel/etc/topdeck-lab/sshd-unit-hash" 2>/dev/null) || new_hash=
      if [ "$old_hash" != "$new_hash" ] && $systemctl is-active --quiet ssh.service; then
        add restart_units ssh.service  # stopIfChanged = false: restarted after the activation, never stopped
      fi
    fi
    # The system's own services (etc/systemd/system): one the new system lacks is stopped before the activation, one
    # whose unit changed is restarted after it, and every one not running is started.
    stop_units=
    if [ -n "$on_systemd" ] && [ -z "$fresh" ]; then
      for unit in /run/current-system/etc/systemd/system/*.service; do
        [ -e "$unit" ] || continue
        name=''${unit##*/}
        $systemctl is-active --quiet "$name" || continue
        if [ ! -e "$toplevel/etc/systemd/system/$name" ]; then
          add stop_units "$name"
        elif ! /usr/bin/cmp -s "$unit" "$toplevel/etc/systemd/system/$name"; then
          add restart_units "$name"
        fi
      done
    fi
    if [ -n "$on_systemd" ]; then
      for unit in "$toplevel"/etc/systemd/system/*.service; do
        [ -e "$unit" ] || continue
        $systemctl is-active --quiet "''${unit##*/}" || add start_units "''${unit##*/}"
      done
    fi
    if [ "$activation" = failed-units ]; then add start_units lab-broken.service; fi

    listed() { echo "$1" | /bin/sed 's/ /, /g'; }

    if [ "$action" = dry-activate ]; then
      if [ -n "$stop_units" ]; then echo "would stop the following units: $(listed "$stop_units")" >&2; fi
      if [ -n "$restart_units" ]; then echo "would restart the following units: $(listed "$restart_units")" >&2; fi
      if [ -n "$start_units" ]; then echo "would start the following units: $(listed "$start_units")" >&2; fi
      echo "would activate the configuration..." >&2
      "$toplevel/dry-activate" "$toplevel" 9>&-
      finish 0 ok
    fi

    # --- switch | test: record, activate, then restart and start ------------------------------------
    record() {  # record LIST UNITS...
      list=$1
      shift
      : > $nixos/$list-list
      for unit in "$@"; do echo "$unit" >> $nixos/$list-list; done
    }
    record start $start_units
    record restart $restart_units
    record reload $reload_units

    exit_code=0
    if [ -n "$stop_units" ]; then
      echo "stopping the following units: $(listed "$stop_units")" >&2
      for unit in $stop_units; do $systemctl stop "$unit" 9>&- || echo "Failed to stop $unit" >&2; done
    fi
    echo "activating the configuration..." >&2
    if ! "$toplevel/activate" "$toplevel" 9>&-; then
      echo "Failed to run activate script" >&2
      exit_code=2
    fi

    failed_units=
    if [ -n "$on_systemd" ]; then
      $systemctl daemon-reload 9>&- || echo "Failed to reload the systemd manager" >&2
      $systemctl reset-failed 9>&- || echo "Failed to reset failed units" >&2
    fi
    unit_job() {  # unit_job reload|restart UNITS...: each unit, exit code 4 for one that fails
      job=$1
      shift
      [ $# -gt 0 ] || return 0
      echo "''${job}ing the following units: $(listed "$*")" >&2
      for unit in "$@"; do
        if [ -z "$on_systemd" ] || ! $systemctl "$job" "$unit" 9>&-; then
          echo "Failed to $job $unit" >&2
          exit_code=4
        fi
      done
    }
    unit_job reload $reload_units
    /bin/rm -f $nixos/reload-list
    unit_job restart $restart_units
    /bin/rm -f $nixos/restart-list
    start_unit() {
      if [ -z "$on_systemd" ]; then return 1; fi  # no init: nothing can start a unit
      case $1 in
        lab-broken.service)
          $systemctl reset-failed lab-broken.service 2>/dev/null
          /usr/bin/systemd-run --quiet --unit=lab-broken --property=Type=oneshot \
            --description="the lab's failed-units variant: a unit that fails to start" /bin/false
          ;;
        *) $systemctl start "$1" ;;
      esac
    }
    if [ -n "$start_units" ]; then
      echo "starting the following units: $(listed "$start_units")" >&2
      for unit in $start_units; do
        if ! start_unit "$unit" 9>&-; then
          echo "Failed to start $unit" >&2
          exit_code=4
          if [ -z "$on_systemd" ]; then add failed_units "$unit"; fi
        fi
      done
    fi
    /bin/rm -f $nixos/start-list

    if [ -n "$on_systemd" ]; then
      failed_units=$($systemctl list-units --state=failed --no-legend --plain --full 9>&- \
        | while read -r unit rest; do printf '%s ' "$unit"; done)
      failed_units=''${failed_units% }
    fi
    if [ -n "$failed_units" ]; then
      echo "warning: the following units failed: $(listed "$failed_units")" >&2
      if [ -n "$on_systemd" ]; then
        # shellcheck disable=SC2086 # one argument per unit
        $systemctl status --no-pager --full $failed_units >&2 9>&-
      fi
      exit_code=4
    fi

    case $exit_code in
      0) finish 0 ok ;;
      2) finish 2 activation-failed ;;
      *) finish "$exit_code" units-failed ;;
    esac
  '';

  # bin/switch-to-configuration when the spec names an external switch program (TOPDECK_LAB_SWITCH_PROGRAM): on a
  # systemd host that program, with the environment nixpkgs gives switch-to-configuration-ng; elsewhere the lab's own.
  externalSwitchWrapper = ''
    if [ -d /run/systemd/system ]; then
      OUT=$toplevel TOPLEVEL=$toplevel INSTALL_BOOTLOADER=$toplevel/bin/lab-install-bootloader SYSTEMD=/usr
      DISTRO_ID=$(/bin/sed -n 's/^ID="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null)
      LOCALE_ARCHIVE=/usr/lib/locale/locale-archive
      export OUT TOPLEVEL INSTALL_BOOTLOADER SYSTEMD DISTRO_ID LOCALE_ARCHIVE
      exec "$external" "$@"
    fi
    exec "$toplevel/bin/.lab-switch-to-configuration" "$@"
  '';

  # A small path that stands for a package's version (the kernel, its modules, systemd), "" without the package.
  versionMarker = pname: kind:
    let found = builtins.filter (package: package.pname == pname) spec.packages;
    in if found == [ ] then "" else
      let package = builtins.head found; in
      shellDerivation {
        name = "${package.pname}-${package.version}-${kind}";
        args = [ "-c" "echo ${package.pname}-${package.version} > $out" ];
      };

  mkToplevel = spec:
    let
      activation = canonical (spec.activation or "ok");
      baseInit = spec.init_interface_version or "systemd 2";
      initInterfaceVersion = if activation == "incompatible-init" then "${baseInit} (lab: incompatible)" else baseInit;
      sshdFragment = builtins.concatStringsSep "" (map (line: line + "\n") (spec.sshd_settings or [ ]));
      kinds = spec.specialisations or { };
      names = builtins.attrNames kinds;
      children = map (name:
        assert builtins.match "[A-Za-z0-9_][A-Za-z0-9_.-]*" name != null;
        mkToplevel (spec // { activation = kinds.${name}; specialisations = { }; })) names;
    in
    assert builtins.elem activation activations;
    shellDerivation {
      name = "nixos-system-${spec.host}-${spec.version}";
      inherit activation systemPath initInterfaceVersion sshdFragment;
      inherit switchToConfiguration activateScript dryActivateScript installBootloaderScript;
      switchLock = spec.switch_lock or "fail";
      lockDelay = toString (spec.lock_delay or 0);
      distroId = spec.distro_id or "debian";
      labUnits = spec.units or [ ];
      externalSwitch = let
        # the spec's, else TOPDECK_LAB_SWITCH_PROGRAM's (empty in a pure evaluation, as of a flake)
        program = if (spec.switch_program or "") != "" then spec.switch_program
          else builtins.getEnv "TOPDECK_LAB_SWITCH_PROGRAM";
      in if program == "" then "" else
        builtins.path { path = /. + program; name = "lab-external-switch-to-configuration"; };
      inherit externalSwitchWrapper;
      nixosVersion = spec.version;
      slowSeconds = toString (spec.slow_seconds or 0);
      authorizedKeys = builtins.concatStringsSep "" (map (key: key + "\n") spec.authorized_keys);
      withAuthorizedKeys = activation != "break-ssh";
      sshdUnitHash = builtins.hashString "sha256" sshdFragment;
      specialisationNames = names;
      specialisations = children;
      # As in a NixOS toplevel: what a reboot would change (topdeck's "needs reboot" compares these links). Each
      # names its package's version only, so systems with the same kernel and systemd link the same paths.
      kernel = versionMarker "linux" "kernel";
      kernelModules = versionMarker "linux" "kernel-modules";
      systemdPackage = versionMarker "systemd" "init";
      args = [ "-c" ''
        set -e
        /bin/mkdir -p $out/bin $out/etc/topdeck-lab
        printf '%s' "$nixosVersion" > $out/nixos-version
        printf '%s' "$initInterfaceVersion" > $out/init-interface-version
        /bin/ln -s $systemPath $out/sw
        if [ -n "$kernel" ]; then /bin/ln -s $kernel $out/kernel; fi
        if [ -n "$kernelModules" ]; then /bin/ln -s $kernelModules $out/kernel-modules; fi
        if [ -n "$systemdPackage" ]; then /bin/ln -s $systemdPackage $out/systemd; fi
        if [ -n "$withAuthorizedKeys" ]; then
          /bin/mkdir -p $out/etc/ssh/authorized_keys.d
          printf '%s' "$authorizedKeys" > $out/etc/ssh/authorized_keys.d/root
          printf '%s' "$authorizedKeys" > $out/etc/ssh/authorized_keys.d/topdeck-deployer
        fi
        if [ -n "$sshdFragment" ]; then
          /bin/mkdir -p $out/etc/ssh/sshd_config.d
          printf '%s' "$sshdFragment" > $out/etc/ssh/sshd_config.d/topdeck-lab.conf
        fi
        printf '%s' "$sshdUnitHash" > $out/etc/topdeck-lab/sshd-unit-hash
        script() {  # script PATH BODY
          printf '#!/bin/sh\ntoplevel=%s\nactivation=%s\nslow_seconds=%s\nswitch_lock=%s\nlock_delay=%s\ndistro_id=%s\nexternal=%s\n\n%s' \
            "$out" "$activation" "$slowSeconds" "$switchLock" "$lockDelay" "$distroId" "$externalSwitch" "$2" > "$1"
          /bin/chmod 555 "$1"
        }
        # As NixOS's: etc/fstab, the units (a unit a service of the spec, and sysinit-reactivation.target), the user
        # unit nixos-activation.service
        /bin/mkdir -p $out/etc/systemd/system $out/etc/systemd/user
        echo "# the lab's fstab: nothing to mount" > $out/etc/fstab
        printf '[Unit]\nDescription=Reactivate sysinit units\n' > $out/etc/systemd/system/sysinit-reactivation.target
        for unit in $labUnits; do
          printf '[Unit]\nDescription=the lab unit %s of %s\n\n[Service]\nExecStart=/bin/sleep infinity\n' \
            "$unit" "$out" > "$out/etc/systemd/system/$unit"
        done
        printf '[Unit]\nDescription=Run user-specific NixOS activation\n\n[Service]\nType=oneshot\nExecStart=/bin/true\n' \
          > $out/etc/systemd/user/nixos-activation.service
        if [ -n "$externalSwitch" ]; then
          script $out/bin/switch-to-configuration "$externalSwitchWrapper"
          script $out/bin/.lab-switch-to-configuration "$switchToConfiguration"
        else
          script $out/bin/switch-to-configuration "$switchToConfiguration"
        fi
        script $out/bin/lab-install-bootloader "$installBootloaderScript"
        script $out/activate "$activateScript"
        script $out/dry-activate "$dryActivateScript"
        if [ -n "$specialisationNames" ]; then
          /bin/mkdir $out/specialisation
          set -- $specialisations
          for name in $specialisationNames; do
            /bin/ln -s "$1" "$out/specialisation/$name"
            shift
          done
        fi
      '' ];
    };
in
mkToplevel spec
