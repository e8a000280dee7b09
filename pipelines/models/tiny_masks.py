"""Tiny random-weight selection models in the layout of their Hub repositories: SAM 2.1 (`sam2/`: config.json,
model.safetensors, preprocessor_config.json) and OWLv2 (`owlv2/`: the model, its preprocessor config and a CLIP
tokenizer's vocab.json and merges.txt). The architectures are the real ones at toy size: a four-stage Hiera
backbone with windowed and global attention at SAM 2's 1024 input, and OWLv2's CLIP towers with a 64 px input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import Owlv2Config, Owlv2ForObjectDetection, Sam2Config, Sam2Model

from pipelines.models.tiny_parts import clip_vocab, seed_component, write_clip_tokenizer

SAM2_SIDE = 1024
OWL_SIDE = 64  # real: 960
OWL_TOKENS = 16
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def write_tiny_sam2(folder: Path, seed: int) -> Path:
    folder = _fresh(folder)
    backbone = dict(
        model_type="sam2_hiera_det_model",
        hidden_size=16,
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        global_attention_blocks=[3],
    )
    config = Sam2Config(
        vision_config=dict(backbone_config=backbone, backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=32),
        prompt_encoder_config=dict(hidden_size=32, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    seed_component(seed, "sam2")
    Sam2Model(config).save_pretrained(folder)
    preprocessing = {
        "image_processor_type": "Sam2ImageProcessor",
        "size": {"height": SAM2_SIDE, "width": SAM2_SIDE},
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "do_rescale": True,
        "do_normalize": True,
    }
    _dump(folder / "preprocessor_config.json", preprocessing)
    return folder


def write_tiny_owlv2(folder: Path, seed: int) -> Path:
    folder = _fresh(folder)
    write_clip_tokenizer(folder, "!", OWL_TOKENS)
    vocab = clip_vocab()
    text = dict(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=OWL_TOKENS,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["!"],
    )
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=OWL_SIDE,
        patch_size=16,
    )
    seed_component(seed, "owlv2")
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=16))
    # Random box-head weights make every box degenerate; from zero, each patch proposes its own cell (OWLv2's
    # box bias), as a trained head roughly does.
    torch.nn.init.zeros_(model.box_head.dense2.weight)
    torch.nn.init.zeros_(model.box_head.dense2.bias)
    model.save_pretrained(folder)
    preprocessing = {
        "image_processor_type": "Owlv2ImageProcessor",
        "processor_class": "Owlv2Processor",
        "do_resize": True,
        "size": {"height": OWL_SIDE, "width": OWL_SIDE},
        "do_pad": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
    }
    _dump(folder / "preprocessor_config.json", preprocessing)
    return folder


def _fresh(folder: Path) -> Path:
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _dump(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
