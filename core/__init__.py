"""The topdeck engine. Never imports textual, rich or the UI package (a test checks it in a subprocess)."""
