"""What the engines make from an object image and use again when the same object comes back: its cut-out
(GrabCut on a 2048^2 photo without alpha takes most of a second on two cores) and the reference the model
reads. Catalogue work sends the same object many times, often as another upload of the same file, so the key
is the image's content digest, not the object. Bounded in bytes; the least recently used go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from PIL import Image

from pipelines.imageops import image_digest
from pipelines.job import ERASE, SwapJob
from pipelines.placement.cutout import cut_out
from pipelines.placement.erase import place_erase
from pipelines.placement.stage import Placement, place

OBJECT_CACHE_BYTES = 256 * 2**20


class ImageCache:
    """Images by key, least recently used out past `max_bytes` (0 keeps nothing). Safe across threads; callers
    get copies, so nothing they do reaches the cache."""

    def __init__(self, max_bytes: int = OBJECT_CACHE_BYTES):
        self.max_bytes = max(0, max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], Image.Image]) -> Image.Image:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key].copy()
            self.misses += 1
        image = make()  # outside the lock: another worker's object need not wait for this one
        self._keep(key, image)
        return image.copy()

    def place(self, job: SwapJob) -> tuple[Placement, str]:
        """`place(job)` with the object's cut-out from here; also the object image's content digest, the key
        for whatever else is made from it (an erase has no object: its placement is the fill, its key "")."""
        if job.mode == ERASE:
            return place_erase(job), ""
        digest = image_digest(job.object_image)
        return place(job, cut=lambda image: self.get(("cut_out", digest), lambda: cut_out(image))), digest

    def __len__(self) -> int:
        return len(self._entries)

    def _keep(self, key: Hashable, image: Image.Image) -> None:
        size = _bytes(image)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = image
            self.bytes += size
            while self.bytes > self.max_bytes:
                self.bytes -= _bytes(self._entries.popitem(last=False)[1])


def _bytes(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())
