"""Tiny FLUX.1-dev / FLUX.1-Kontext-dev pipelines (diffusers folder layout).

Architecturally faithful where our code depends on it: transformer ``in_channels=64`` (16 latent channels
packed 2x2) with ``guidance_embeds=True`` like FLUX.1-dev, a 4-level (8x) VAE with FLUX's scaling/shift
factors, FLUX's dynamic-shift scheduler config, the real CLIP tokenizer and a T5-style Unigram tokenizer.
Everything else (widths, depths) is shrunk so a 64 px image renders in milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from ._common import seeded
from .tokenizers import build_clip_tokenizer, build_t5_tokenizer

__all__ = [
    "FLUX_SCHEDULER_CONFIG",
    "TINY_FLUX_TRANSFORMER",
    "build_flux_components",
    "build_t5_encoder",
    "build_vae",
    "clip_text_config",
    "write_flux",
    "write_flux_kontext",
]

# FLUX.1-dev scheduler/scheduler_config.json (resolution-dependent timestep shift).
FLUX_SCHEDULER_CONFIG: dict[str, object] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

_CLIP_HIDDEN = 16  # also the transformer's pooled_projection_dim (FluxPipeline feeds CLIP's pooler_output)
_T5_D_MODEL = 32  # also the transformer's joint_attention_dim
_T5_MAX_LENGTH = 512  # FLUX.1-dev's tokenizer_2 value; FluxPipeline pads to max_sequence_length (default 512)

# The tiny transformer's config (also the GPU step benchmark's small smoke-test size).
TINY_FLUX_TRANSFORMER: dict[str, object] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": _T5_D_MODEL,
    "pooled_projection_dim": _CLIP_HIDDEN,
    "guidance_embeds": True,
    "axes_dims_rope": (4, 6, 6),  # must sum to attention_head_dim
}


def build_flux_components(seed: int, name: str) -> dict[str, object]:
    """All FluxPipeline components, each module built under its own derived seed."""
    clip_tokenizer = build_clip_tokenizer(model_max_length=77)
    t5_tokenizer = build_t5_tokenizer(model_max_length=_T5_MAX_LENGTH)

    with seeded(seed, name, "transformer"):
        transformer = FluxTransformer2DModel(**TINY_FLUX_TRANSFORMER)
    with seeded(seed, name, "text_encoder"):
        text_encoder = CLIPTextModel(clip_text_config(clip_tokenizer, _CLIP_HIDDEN))
    with seeded(seed, name, "text_encoder_2"):
        text_encoder_2 = build_t5_encoder(t5_tokenizer, _T5_D_MODEL)
    with seeded(seed, name, "vae"):
        vae = build_vae(scaling_factor=0.3611, shift_factor=0.1159)
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)
    return {
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": t5_tokenizer,
        "transformer": transformer,
    }


def clip_text_config(tokenizer: Any, hidden: int) -> CLIPTextConfig:
    """A one-layer CLIP text tower of width ``hidden`` (projection of the same width) over ``tokenizer``."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=hidden,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_t5_encoder(tokenizer: Any, d_model: int) -> T5EncoderModel:
    """A one-layer T5 v1.1 encoder (gated GELU, untied head) over ``tokenizer``'s vocabulary."""
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,  # as T5 v1.1 (saved by transformers 5 as scale_decoder_outputs)
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )


def build_vae(*, scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    """A 16-channel, 4-level (8x) VAE without quant convs, like FLUX's and SD3's, with their scaling."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),  # 4 levels -> 8x downsampling, as in FLUX's and SD3's VAE
        layers_per_block=1,
        act_fn="silu",
        latent_channels=16,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        force_upcast=True,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=True,
    )


def write_flux(folder: Path, seed: int) -> None:
    """Tiny ``black-forest-labs/FLUX.1-dev``: ``FluxPipeline.from_pretrained(folder)``."""
    FluxPipeline(**build_flux_components(seed, "flux")).save_pretrained(folder, safe_serialization=True)


def write_flux_kontext(folder: Path, seed: int) -> None:
    """Tiny ``black-forest-labs/FLUX.1-Kontext-dev``: ``FluxKontextPipeline.from_pretrained(folder)``.

    Call it with ``max_area=height*width, _auto_resize=False``; otherwise the pipeline silently resizes the
    request to about 1024x1024 px.
    """
    components = build_flux_components(seed, "flux-kontext")
    FluxKontextPipeline(**components).save_pretrained(folder, safe_serialization=True)
