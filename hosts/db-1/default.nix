import ../fleet.nix { role = "db"; }
