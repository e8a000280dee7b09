"""Tiny random-weight FLUX.2 [klein] sets, in the layout of black-forest-labs/FLUX.2-klein-4B (and -base-4B).

`base/` is the diffusers folder those repositories ship: model_index.json (a `Flux2KleinPipeline`, with
`is_distilled` for the step-distilled model), transformer/, vae/, text_encoder/ (Qwen3), tokenizer/ and
scheduler/. The architectures are the real ones at toy size; what the pipeline relies on is kept: an 8x VAE
with 2x2 latent patches (so the model works on 16-pixel cells), the text encoder's hidden states read at
layers 9, 18 and 27 (so it has 28 layers, each 16 wide), the transformer's text width three times the
encoder's. The tokenizer is byte-level BPE with no merges and Qwen's chat markers, built offline.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

from pipelines.models.model_sets import ModelSet
from pipelines.models.tiny_parts import byte_chars, seed_component

TEXT_HIDDEN = 16
TEXT_LAYERS = 28  # the pipeline stacks hidden states 9, 18 and 27
TEXT_LAYERS_READ = 3
LATENT_CHANNELS = 4  # real: 32
MAX_TOKENS = 512
NATIVE_SIDE = 64  # the VAE's sample size, which the engine takes as its working side (real: 1024)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen3's template, reduced to what the pipeline sends: user turns, the assistant header, and the empty
# thinking block that `enable_thinking=False` adds.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def write_tiny_flux2(folder: Path, *, distilled: bool, seed: int) -> ModelSet:
    """Write one tiny set into `folder` (replaced if it exists); returns it."""
    model_set = ModelSet("flux2", Path(folder))
    if model_set.folder.exists():
        shutil.rmtree(model_set.folder)
    tokenizer = qwen_tokenizer(byte_chars())
    seed_component(seed, "flux2-text_encoder")
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=2 * TEXT_HIDDEN,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=MAX_TOKENS,
            tie_word_embeddings=True,
        )
    )
    seed_component(seed, "flux2-transformer")
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_LAYERS_READ * TEXT_HIDDEN,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,
    )
    seed_component(seed, "flux2-vae")
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=NATIVE_SIDE,
    )
    pipe = Flux2KleinPipeline(
        scheduler=flow_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=distilled,
    )
    pipe.save_pretrained(model_set.base, safe_serialization=True)
    return model_set


def flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The flow-matching Euler scheduler with the resolution-dependent shift the FLUX.2 repositories configure."""
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )


def qwen_tokenizer(byte_chars: list[str]) -> Qwen2TokenizerFast:
    vocab = {char: index for index, char in enumerate(byte_chars)}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=MAX_TOKENS,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
