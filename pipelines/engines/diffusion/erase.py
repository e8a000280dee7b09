"""What the diffusion engines read for an erase besides the fill they start from: the prompts.

An erase inpaints the grown mask with no object conditioning (IP-Adapter at scale 0 on SD, no reference on
FLUX.2), from the scene with the mask filled (pipelines/placement/erase.py), denoised from the start noise
`subject_strength` sets as for a swap: 1 keeps the fill's colour and layout and re-draws its detail, 0 lets the
prompt paint the region afresh. With a prompt of its own, an erase is an edit by text.
"""

from __future__ import annotations

from pipelines.job import ERASE, SwapJob

# Used when the request gives none: words for "more of what is around", and against anything new standing there.
ERASE_PROMPT = "empty background, the same surface and texture as its surroundings, seamless"
ERASE_NEGATIVE_PROMPT = "object, person, animal, text, logo, watermark, frame, border, patch, blurry"


def prompts(job: SwapJob) -> tuple[str, str]:
    """The (prompt, negative prompt) the model runs with: the job's own, or for an erase the neutral ones
    where the job gives none."""
    if job.mode != ERASE:
        return job.prompt, job.negative_prompt
    return job.prompt or ERASE_PROMPT, job.negative_prompt or ERASE_NEGATIVE_PROMPT
