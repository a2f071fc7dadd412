"""The Textual app and the topdeck command line."""
