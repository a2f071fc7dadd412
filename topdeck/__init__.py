"""topdeck: a keyboard-driven terminal deployer for NixOS fleets."""

__version__ = "0.1.0"
