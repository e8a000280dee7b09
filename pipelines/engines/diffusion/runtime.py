"""The diffusion engines' step callback: progress, and previews for a progress that takes them."""

from __future__ import annotations

from pipelines.interface import ProgressFn


def step_callback(progress: ProgressFn | None, total: int, preview=None):
    """A diffusers `callback_on_step_end` that reports (step, total) to `progress`, and, when `progress` takes
    previews and `preview(latents)` is given, offers it a preview of the step (see pipelines.interface)."""
    wants_previews = preview is not None and callable(getattr(progress, "preview", None))

    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if progress is not None:
            progress(step + 1, total)
        if wants_previews:
            # No copy: each step makes new latents (scheduler step, then the inpainting blend), never in place.
            latents = callback_kwargs["latents"].detach()
            progress.preview(lambda: preview(latents))
        return callback_kwargs

    return on_step_end
