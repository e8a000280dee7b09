"""The `segswap` command, one module per command group."""
