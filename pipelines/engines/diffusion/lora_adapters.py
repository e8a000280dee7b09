"""Per-request LoRAs on a loaded pipeline, switched with diffusers' adapter API.

Eager denoiser: each LoRA is loaded once, as its own adapter, the first time a request names it; a request
activates its own with `set_adapters` at its scale, and a request without one runs with `disable_lora()`,
which skips every LoRA branch: the base weights are never changed, so switching leaves no trace.

Compiled denoiser (the fast path's regional torch.compile): one adapter slot, "request", prepared with
`enable_lora_hotswap(target_rank=...)` before its first load; another LoRA is copied into the slot in place
(`load_lora_weights(..., hotswap=True)`), and no LoRA is the slot at scale 0, so the compiled graphs see the
same modules and shapes every time (the slot, and the slot at scale 0, each compile once per processing shape).
A LoRA of rank above HOTSWAP_RANK cannot be hot-swapped and is refused.

A LoRA may carry text-encoder layers too (many SD/SDXL LoRAs do; diffusers loads them with the denoiser's): the
prompt embeddings then depend on it, and `text_encoder_key` says so to the embedding cache. `before_load` runs
before each load: the SD engine undoes its fused self-attention q/k/v there, whose one matmul would skip a
LoRA's to_q/to_k/to_v layers (a LoRA added to the folder after the engine loaded).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipelines.errors import InvalidInput
from pipelines.models.loras import FOLDER, lora_names, lora_path, note_lora
from pipelines.torch_runtime import first_line

HOTSWAP_RANK = 128  # the slot's rank: every LoRA up to it swaps in without a recompile
SLOT = "request"


class LoraAdapters:
    """The LoRAs of one engine's pipeline, from its set's `loras/` folder."""

    def __init__(
        self, pipe, set_folder: Path, engine_name: str, compiled: bool, before_load: Callable[[], object] | None = None
    ):
        self.pipe, self.set_folder, self.engine_name, self.compiled = pipe, set_folder, engine_name, compiled
        self.before_load = before_load
        self.adapters: dict[str, str] = {}  # LoRA name -> adapter name (eager)
        self.in_slot: str | None = None  # the LoRA in the hot-swap slot (compiled); "" after a failed swap
        self.loads = 0
        self.refused: dict[str, tuple[tuple[int, int], str]] = {}  # LoRA name -> (its file's stamp, why it failed)

    def names(self) -> list[str]:
        """The LoRAs a request may name: the set's loras/ folder as it is now."""
        return lora_names(self.set_folder)

    def check(self, name: str) -> None:
        """An InvalidInput (field lora) when `name` is not a LoRA of the set, or one that failed to load and has
        not changed since (a request cannot make the server read a broken file again): before any work is done."""
        if not name:
            return
        path = lora_path(self.set_folder, name)
        stamp, why = self.refused.get(name, (None, ""))
        if stamp is not None and stamp == _stamp(path):
            raise InvalidInput(why, "lora")

    def use(self, name: str, scale: float) -> None:
        """Make LoRA `name` at `scale` the one the next denoise runs with ("" or scale 0: none)."""
        if self.compiled:
            self._use_slot(name, scale)
        elif not name or scale == 0:
            if self.adapters:
                self.pipe.disable_lora()
        else:
            if name not in self.adapters:
                self.loads += 1  # a fresh adapter name each load: a failed one may have left its layers behind
                self.adapters[name] = self._load(name, f"lora{self.loads}", hotswap=False)
            adapter = self.adapters[name]
            self.pipe.enable_lora()
            self.pipe.set_adapters([adapter], adapter_weights=[scale])

    def text_encoder_key(self, name: str, scale: float) -> tuple:
        """What prompt embeddings depend on besides the prompt once `use(name, scale)` ran: the LoRA and its scale
        where it reaches a text encoder; nothing for no LoRA, scale 0 or a LoRA of the denoiser alone."""
        if not name or scale == 0:
            return ()
        adapter = SLOT if self.compiled else self.adapters.get(name)
        for part in ("text_encoder", "text_encoder_2"):
            encoder = getattr(self.pipe, part, None)
            if adapter in (getattr(encoder, "peft_config", None) or {}):
                return (name, scale)
        return ()

    def _use_slot(self, name: str, scale: float) -> None:
        if not name or scale == 0:
            if self.in_slot is not None:
                self.pipe.set_adapters([SLOT], adapter_weights=[0.0])
            return
        if self.in_slot is None:
            self.pipe.enable_lora_hotswap(target_rank=HOTSWAP_RANK, check_compiled="ignore")
        if self.in_slot != name:
            hotswap = self.in_slot is not None
            self.in_slot = "" if hotswap else None  # until the copy completes, the slot holds neither LoRA
            self._load(name, SLOT, hotswap=hotswap)
            self.in_slot = name
        self.pipe.set_adapters([SLOT], adapter_weights=[scale])

    def _load(self, name: str, adapter: str, hotswap: bool) -> str:
        self.check(name)
        path = lora_path(self.set_folder, name)
        if self.before_load is not None:
            self.before_load()
        try:
            self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter, hotswap=hotswap)
        except Exception as exc:  # not a LoRA file, not for this model, a rank past the slot's: many types
            why = first_line(exc).replace(str(path.parent), FOLDER)  # the client's answer: no server paths in it
            self.refused[name] = (_stamp(path), f"cannot apply LoRA {name!r} to this model set: {why}")
            raise InvalidInput(self.refused[name][1], "lora") from exc
        note_lora(self.engine_name, name, path)
        return adapter


def _stamp(path: Path) -> tuple[int, int]:
    """What changes when the operator replaces a LoRA file: its modification time and size."""
    status = path.stat()
    return status.st_mtime_ns, status.st_size
