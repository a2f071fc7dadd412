# The demo fleet's toplevels: NixOS-like systems from the lab's factory (lab/nix/toplevel.nix), one per
# role. systems/<role>.json is the role's package set (a factory spec); the authorized SSH keys are the lab
# operator's public key, read from $TOPDECK_LAB_DIR (default /var/lib/topdeck-lab), which `topdeck lab up`
# writes. Hosts that follow one pointer share a role, and so build one and the same toplevel.
#
#   hosts/web-1/default.nix:  import ../fleet.nix { role = "web"; }
{ role }:

let
  labDir =
    let fromEnv = builtins.getEnv "TOPDECK_LAB_DIR";
    in if fromEnv != "" then fromEnv else "/var/lib/topdeck-lab";

  # One key per non-empty line of the operator's id_ed25519.pub.
  keyFile = labDir + "/id_ed25519.pub";
  keyText =
    if builtins.pathExists keyFile then builtins.readFile keyFile
    else throw "${keyFile} not found: run `topdeck lab up` first, or set TOPDECK_LAB_DIR to the lab's folder";
  keyLines = builtins.split "\n" keyText;
  authorizedKeys = builtins.filter (line: builtins.isString line && line != "") keyLines;

  spec = builtins.fromJSON (builtins.readFile (./systems + "/${role}.json"));
in
import ../lab/nix/toplevel.nix { spec = spec // { authorized_keys = authorizedKeys; }; }
