"""Subcommands of ``segsuite``; each module is found automatically (see segsuite.cli)."""
