"""The `topdeck` command line: one module per group of commands, each drawing core's results as text."""
