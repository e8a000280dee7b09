"""The engines: composite (placement only) and diffusion, and choosing one."""
