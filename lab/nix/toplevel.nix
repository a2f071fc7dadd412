# A NixOS-like system toplevel for the lab, built from a spec (see topdeck.lab.factory for its schema).
#
#   nix-build toplevel.nix --argstr specFile /path/spec.json
#   import ./toplevel.nix { spec = { host = "web1"; ... }; }
#
# Every derivation is builtins.derivation with /bin/sh as builder; a builder's PATH is empty, so every
# tool is called by its absolute path.
{ specFile ? null, spec ? builtins.fromJSON (builtins.readFile specFile) }:

let
  activations = [ "ok" "fail" "reboot" "slow" "break-ssh" ];

  shellDerivation = attrs: builtins.derivation ({
    system = builtins.currentSystem;
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
      /bin/mkdir -p $out
      { /usr/bin/tr ' ' '\n' < "$packagesPath"; echo; } > $out/packages
    '' ];
  };

  # The body of bin/switch-to-configuration; the builder puts toplevel=, activation= and slow_seconds=
  # above it. It runs inside a lab host, whose /run is its own, and touches nothing outside /run.
  switchToConfiguration = ''
    mode=''${1:-}
    lab=/run/lab

    log() {
      printf '%s\t%s\t%s\t%s\n' "$(/bin/date -u +%Y-%m-%dT%H:%M:%SZ)" "$mode" "$toplevel" "$1" >> $lab/activation.log
    }

    fail() {
      echo "switch-to-configuration: $1" >&2
      log failed
      exit 1
    }

    # Point the symlink $1 at this toplevel atomically: a new link under a temporary name, then a rename.
    point() {
      /bin/ln -sfn "$toplevel" "$1.tmp.$$" && /bin/mv -T "$1.tmp.$$" "$1" || fail "cannot update $1"
    }

    /bin/mkdir -p $lab
    case $mode in
      switch | boot | test) ;;
      dry-activate)
        current=$(/bin/readlink /run/current-system) || current=nothing
        if [ "$current" = "$toplevel" ]; then
          echo "/run/current-system already is $toplevel; nothing would change"
        else
          echo "would switch /run/current-system from $current to $toplevel"
        fi
        log ok
        exit 0
        ;;
      *)
        mode=$(printf '%s' "$mode" | /usr/bin/tr -c 'A-Za-z0-9_.-' '?')
        fail "unknown mode '$mode'; usage: switch-to-configuration switch|boot|test|dry-activate"
        ;;
    esac

    if [ "$activation" = slow ]; then /bin/sleep "$slow_seconds"; fi
    if [ "$activation" = fail ]; then fail "activating $toplevel failed (the lab's 'fail' variant)"; fi
    case $mode in switch | boot) point $lab/boot-entry ;; esac
    case $mode in switch | test) point /run/current-system ;; esac
    if [ "$activation" = reboot ] && [ "$mode" != boot ]; then
      echo "switch-to-configuration: a reboot is needed to finish activating $toplevel" >&2
      log reboot-needed
      exit 100
    fi
    log ok
  '';

  activation = spec.activation or "ok";
in
assert builtins.elem activation activations;
shellDerivation {
  name = "nixos-system-${spec.host}-${spec.version}";
  inherit activation switchToConfiguration systemPath;
  nixosVersion = spec.version;
  slowSeconds = toString (spec.slow_seconds or 0);
  authorizedKeys = builtins.concatStringsSep "" (map (key: key + "\n") spec.authorized_keys);
  withAuthorizedKeys = activation != "break-ssh";
  args = [ "-c" ''
    set -e
    /bin/mkdir -p $out/bin
    printf '%s' "$nixosVersion" > $out/nixos-version
    /bin/ln -s $systemPath $out/sw
    if [ -n "$withAuthorizedKeys" ]; then
      /bin/mkdir -p $out/etc/ssh/authorized_keys.d
      printf '%s' "$authorizedKeys" > $out/etc/ssh/authorized_keys.d/root
      printf '%s' "$authorizedKeys" > $out/etc/ssh/authorized_keys.d/topdeck-deployer
    fi
    script=$out/bin/switch-to-configuration
    printf '#!/bin/sh\ntoplevel=%s\nactivation=%s\nslow_seconds=%s\n\n%s' \
      "$out" "$activation" "$slowSeconds" "$switchToConfiguration" > $script
    /bin/chmod 555 $script
  '' ];
}
