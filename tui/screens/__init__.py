"""The TUI's screens, one file each."""
