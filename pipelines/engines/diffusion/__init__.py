"""The diffusion engine: SDXL / SD1.5 inpainting with IP-Adapter, its options and fast path."""
