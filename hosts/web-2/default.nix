import ../fleet.nix { role = "web"; }
