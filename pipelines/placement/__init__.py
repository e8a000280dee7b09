"""The placement stage every engine starts from: the object, or the tiled pattern, put into the scene as pixels.

    placement = place(job)          # placement.image: the scene with the object placed, full size
                                    # placement.grown: the grown mask (the only pixels that may change)
                                    # placement.reference: what the object looks like on its own (cut-out, or the
                                    # pattern; grid_reference gives its tiles as they cover the box)

`object` mode cuts the object out, removes what the mask held, fits the cut-out bottom-centre in the grown
mask, harmonises its colour and blends its edge; `pattern` mode covers the grown mask with the tiled pattern,
shaded by the original's light. `auto` is pattern when a repeat is above 1, else object. `erase` places
nothing: the grown mask is filled from its surroundings (erase.py; the fill is fill.py, PatchMatch's loops
patchmatch.py, where its patches may come from sources.py).
"""

from pipelines.placement.cutout import cut_out
from pipelines.placement.patterns import grid_reference
from pipelines.placement.stage import Placement, place, resolve_mode

__all__ = ["Placement", "cut_out", "grid_reference", "place", "resolve_mode"]
