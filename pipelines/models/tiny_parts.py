"""What the tiny model builders share: per-component seeding, the byte-level vocabularies, a CLIP tokenizer."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

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


def clip_vocab() -> dict[str, int]:
    """A byte-level CLIP vocabulary with no merges: every byte, alone and word-final."""
    chars = byte_chars()
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def write_clip_tokenizer(folder: Path, pad_token: str, max_tokens: int) -> None:
    """The CLIP tokenizer files the real repos ship: vocab.json, merges.txt and two configs."""
    folder.mkdir(parents=True, exist_ok=True)
    _dump_json(folder / "vocab.json", clip_vocab())
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": pad_token,
        "unk_token": "<|endoftext|>",
    }
    _dump_json(folder / "special_tokens_map.json", special)
    config = {
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": max_tokens,
        "tokenizer_class": "CLIPTokenizer",
        **special,
    }
    _dump_json(folder / "tokenizer_config.json", config)


def _dump_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
