"""What the tiny model builders share: per-component seeding and the byte-level vocabulary."""

from __future__ import annotations

import zlib

import torch


def seed_component(seed: int, component: str) -> None:
    """Seed torch for one component: deterministic, and distinct per component."""
    torch.manual_seed(seed + zlib.crc32(component.encode()))


def byte_chars() -> list[str]:
    """The 256 printable stand-ins CLIP (like GPT-2) uses for raw bytes, in vocabulary order.

    Printable bytes stand for themselves; the other 68 map to chr(256 + n).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = 256 - len(printable)
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(others)]
