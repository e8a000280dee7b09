"""The segswap HTTP server and CLI: contract, input resolution, auth, workers."""

__version__ = "0.1.0"
