"""kinko.cli: click commands. Thin: parse, call, map errors (one table, kinko.cli.errors)."""
