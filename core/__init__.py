"""The topdeck engine. Never imports textual, rich or topdeck.tui."""
