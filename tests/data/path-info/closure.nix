# The closure recorded in this folder (see README.md): a, b (refers to a and to itself) and c (refers to a, b,
# a text file and a source file), built by /bin/sh. Every Nix builds the same store paths from it.
let
  mk = name: script: builtins.derivation {
    inherit name;
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir $out && ${script}" ];
  };
  a = mk "topdeck-fixture-a-1.0" "echo a > $out/a";
  b = mk "topdeck-fixture-b-2.0" "echo ${a} > $out/b; echo $out > $out/self";
  text = builtins.toFile "topdeck-fixture-note" "a text file";
in mk "topdeck-fixture-c-3.0" "echo ${a} ${b} ${text} ${./source.txt} > $out/c"
