"""Selecting a region without painting it: a box, points or words turned into a mask.

from PIL import Image
from pipelines.masks import Selector, load_segmenter, select_mask

segmenter = load_segmenter()                      # SAM 2 when installed, else GrabCut
mask = select_mask(Image.open("room.jpg"), Selector.build(box=[120, 80, 460, 400]), segmenter)
"""

from pipelines.masks.segmenters import GrabCutSegmenter, Segmenter, SegmenterKind, load_segmenter, select_mask
from pipelines.masks.selector import Selector

__all__ = ["GrabCutSegmenter", "Segmenter", "SegmenterKind", "Selector", "load_segmenter", "select_mask"]
