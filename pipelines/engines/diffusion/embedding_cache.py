"""An LRU of IP-Adapter image embeddings and prompt embeddings.

Repeated objects and prompts are the common case in catalogue work; the cached tensors are the
ones the pipeline would compute itself, so a cached swap gives the same bytes as an uncached one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch


class EmbeddingCache:
    """A small LRU of embedding tensors; `size` 0 turns it off. Not thread-safe: one engine, one thread."""

    def __init__(self, size: int):
        self.size = max(0, size)
        self._entries: OrderedDict = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def get(self, key, compute: Callable):
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]
        self.misses += 1
        with torch.no_grad():
            value = compute()
        self._entries[key] = value
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)
