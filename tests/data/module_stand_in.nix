# A minimal stand-in for the NixOS module system, enough to evaluate topdeck's modules offline (no nixpkgs here):
# `lib` has what the modules use (mkOption, mkEnableOption, mkIf, types.str/strMatching, escapeShellArgs as
# nixpkgs' lib/strings.nix defines them), `pkgs` maps each package to a fake store path, and `config` is the
# configuration's own settings with the options' defaults. Each setting is checked against its option's type, as
# the module system would. It does not merge modules, check unknown options, or build anything.
{ configuration }:
let
  lib = rec {
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = name: mkOption { default = false; type = types.bool; description = "Whether to enable ${name}."; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    types = {
      bool = { name = "bool"; check = builtins.isBool; };
      str = { name = "str"; check = builtins.isString; };
      strMatching = pattern: { name = "strMatching ${pattern}"; check = v: builtins.isString v && builtins.match pattern v != null; };
    };
    escapeShellArg = arg: "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString arg)}'";
    escapeShellArgs = args: builtins.concatStringsSep " " (map escapeShellArg args);
  };
  pkgs = builtins.listToAttrs (map (name: { inherit name; value = "/stand-in/${name}"; })
    [ "bash" "coreutils" "curl" "openssh" "util-linux" "gnused" "gnugrep" "gawk" "findutils" "diffutils" ]);

  host = import configuration { inherit lib pkgs; config = final; };
  modules = map (path: import path) (host.imports or [ ]);
  base = { nix.package = "/stand-in/nix"; systemd.package = "/stand-in/systemd"; };
  evaluated = map (module: module { inherit lib pkgs; config = final; }) modules;

  # services.<name> of the configuration, with each declared option checked and defaulted
  withOptions = options: given: builtins.mapAttrs (key: option:
    let value = given.${key} or option.default or (throw "option ${key} is used but not defined"); in
    if option.type.check value then value
    else throw "option ${key}: ${builtins.toJSON value} is not of type ${option.type.name}") options;
  declared = builtins.foldl' (acc: m: acc // (m.options.services or { })) { } evaluated;
  final = base // { services = builtins.mapAttrs (name: options: withOptions options (host.services.${name} or { })) declared; };

  resolve = value: if (value._type or "") == "if" then (if value.condition then value.content else { }) else value;
  systemd = builtins.foldl' (acc: m: let c = resolve (m.config or (removeAttrs m [ "options" ])); in {
    services = acc.services // (c.systemd.services or { });
    timers = acc.timers // (c.systemd.timers or { });
  }) { services = { }; timers = { }; } evaluated;
in
systemd
