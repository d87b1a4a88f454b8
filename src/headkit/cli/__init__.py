"""The `headkit` command line: subcommands generated from function signatures (jsonargparse)."""
