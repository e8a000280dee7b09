"""`segswap bench`: the engine against plain diffusers, full-size random-weight models on GPUs."""
