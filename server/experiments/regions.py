"""The region of a request that selects it by box, points or words instead of a mask, made here as the server's
routes make it (pipelines.masks): for `segswap swap`, every line of a batch and a sweep's scene."""

from __future__ import annotations

import threading

from PIL import Image

from pipelines.masks import Segmenter, load_segmenter, select_mask
from server.contract import Selection
from server.settings import Settings


class RegionMasks:
    """Masks from selections, with one segmenter loaded on first use (a batch of painted masks loads none)."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._segmenter: Segmenter | None = None
        self._lock = threading.Lock()  # a batch's read-ahead threads share the one segmenter

    def add_mask(self, images: dict[str, Image.Image], request: Selection) -> str | None:
        """`images["mask_image"]` made from the request's selection; the segmenter's name, or None when the
        request selects nothing (it sent a mask)."""
        selector = request.selector()
        if selector is None:
            return None
        with self._lock:
            if self._segmenter is None:
                settings = self._settings
                self._segmenter = load_segmenter(settings.weights_dir, settings.segmenter, settings.device)
            images["mask_image"] = select_mask(images["main_image"], selector, self._segmenter)
            return self._segmenter.name
