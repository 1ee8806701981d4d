"""Tiny Stable Diffusion 3.5 (Medium layout) pipeline (diffusers folder layout).

Architecturally faithful where the flow policy depends on it: three text encoders (CLIP-L and CLIP-G as
``CLIPTextModelWithProjection``, whose penultimate hidden states are concatenated and zero-padded to T5's
width, and whose projected pooled outputs are concatenated into ``pooled_projection_dim``; T5 v1.1), an
MMDiT-X transformer with 16 latent channels, patch size 2, RMS qk-norm and a dual-attention first block like
SD3.5-Medium, a 16-channel 8x VAE with SD3's scaling/shift factors, and SD3.5's scheduler config (static
shift 3.0). Widths and depths are shrunk so a 32 px image renders in milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextModelWithProjection

from ._common import seeded
from .flux import build_t5_encoder, build_vae, clip_text_config
from .tokenizers import build_clip_tokenizer, build_t5_tokenizer

__all__ = ["SD3_SCHEDULER_CONFIG", "TINY_SD3_TRANSFORMER", "write_sd3"]

# stabilityai/stable-diffusion-3.5-medium scheduler/scheduler_config.json (static shift, no dynamic shifting).
SD3_SCHEDULER_CONFIG: dict[str, object] = {"num_train_timesteps": 1000, "shift": 3.0}

_CLIP_L_HIDDEN = 8  # SD3.5: 768
_CLIP_G_HIDDEN = 16  # SD3.5: 1280
_T5_D_MODEL = 32  # SD3.5: 4096 = joint_attention_dim; CLIP-L ⊕ CLIP-G (24 wide) is zero-padded to it

TINY_SD3_TRANSFORMER: dict[str, object] = {
    "sample_size": 4,  # latent side: the pipeline's default size is 4 x 8 = 32 px
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": _T5_D_MODEL,
    "caption_projection_dim": 16,  # = heads x head dim, as in SD3.5
    "pooled_projection_dim": _CLIP_L_HIDDEN + _CLIP_G_HIDDEN,
    "pos_embed_max_size": 16,
    "dual_attention_layers": (0,),  # SD3.5-Medium's MMDiT-X blocks
    "qk_norm": "rms_norm",
}


def write_sd3(folder: Path, seed: int) -> None:
    """Tiny ``stabilityai/stable-diffusion-3.5-medium``: loads with
    ``StableDiffusion3Pipeline.from_pretrained(folder)``."""
    name = "sd3"
    clip_tokenizer = build_clip_tokenizer(model_max_length=77)
    t5_tokenizer = build_t5_tokenizer(model_max_length=512)
    with seeded(seed, name, "transformer"):
        transformer = SD3Transformer2DModel(**TINY_SD3_TRANSFORMER)
    with seeded(seed, name, "text_encoder"):
        clip_l = CLIPTextModelWithProjection(clip_text_config(clip_tokenizer, _CLIP_L_HIDDEN))
    with seeded(seed, name, "text_encoder_2"):
        clip_g = CLIPTextModelWithProjection(clip_text_config(clip_tokenizer, _CLIP_G_HIDDEN))
    with seeded(seed, name, "text_encoder_3"):
        t5 = build_t5_encoder(t5_tokenizer, _T5_D_MODEL)
    with seeded(seed, name, "vae"):
        vae = build_vae(scaling_factor=1.5305, shift_factor=0.0609)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=clip_l,
        tokenizer=clip_tokenizer,
        text_encoder_2=clip_g,
        tokenizer_2=clip_tokenizer,
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
