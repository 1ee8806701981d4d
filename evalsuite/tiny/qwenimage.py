"""Tiny Qwen-Image / Qwen-Image-2512 / Qwen-Image-Edit pipelines (diffusers folder layout; one architecture).

Architecturally faithful where the flow policy depends on it: a ``Qwen2_5_VLForConditionalGeneration`` text
encoder (the tiny Qwen2.5-VL's config: M-RoPE, Qwen's special tokens; the pipeline reads its last hidden
states of the templated prompt and drops the template's first 34 tokens — 34 is the real tokenizer's
count, so with this small BPE the kept span starts elsewhere in the template), the MMDiT
``QwenImageTransformer2DModel`` (64 packed input channels, 3-axis RoPE, ``joint_attention_dim`` = the text
encoder's width), Qwen-Image's own causal-3D VAE ``AutoencoderKLQwenImage`` (16 latent channels, 8x, per-
channel latents mean/std) and its scheduler config (dynamic exponential shift, terminal sigma 0.02).
Widths and depths are shrunk so a 32 px image renders in milliseconds on a CPU. Qwen-Image-Edit adds the
``Qwen2VLProcessor`` (the real pixel budget) through which its text encoder sees the source image.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPipeline,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLProcessor

from ._common import seeded
from .qwen_vl import qwen2_5_vl_config, qwen_vl_processor
from .tokenizers import QWEN2_5_VL_CHAT_TEMPLATE, build_qwen2_tokenizer

__all__ = [
    "QWENIMAGE_SCHEDULER_CONFIG",
    "TINY_QWENIMAGE_TRANSFORMER",
    "write_qwenimage",
    "write_qwenimage_2512",
    "write_qwenimage_edit",
]

# Qwen/Qwen-Image scheduler/scheduler_config.json (the same in Qwen-Image-2512).
QWENIMAGE_SCHEDULER_CONFIG: dict[str, object] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

# Random decoder weights map latents to nearly flat images (pixel std ~0.2 of [-1, 1]); scaling the output
# conv makes a change of the latents visible in the pixels, as with the real VAE.
_DECODER_GAIN = 3.0

TINY_QWENIMAGE_TRANSFORMER: dict[str, object] = {
    "patch_size": 2,
    "in_channels": 64,  # 16 latent channels packed 2x2
    "out_channels": 16,
    "num_layers": 2,  # Qwen-Image: 60
    "attention_head_dim": 16,  # Qwen-Image: 128
    "num_attention_heads": 2,  # Qwen-Image: 24
    "joint_attention_dim": 32,  # the tiny Qwen2.5-VL's width (Qwen-Image: 3584)
    "guidance_embeds": False,
    "axes_dims_rope": (4, 6, 6),  # must sum to attention_head_dim (Qwen-Image: 16, 56, 56)
}


def _write(folder: Path, seed: int, name: str, edit: bool = False) -> None:
    tokenizer = build_qwen2_tokenizer(chat_template=QWEN2_5_VL_CHAT_TEMPLATE)
    with seeded(seed, name, "transformer"):
        transformer = QwenImageTransformer2DModel(**TINY_QWENIMAGE_TRANSFORMER)
    with seeded(seed, name, "text_encoder"):
        text_encoder = Qwen2_5_VLForConditionalGeneration(qwen2_5_vl_config(tokenizer))
    with seeded(seed, name, "vae"):
        vae = AutoencoderKLQwenImage(  # Qwen-Image: base_dim 96, 2 res blocks; the default latents mean/std
            base_dim=8,
            z_dim=16,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
        with torch.no_grad():  # a random decoder is nearly constant; give it a trained decoder's gain
            vae.decoder.conv_out.weight.mul_(_DECODER_GAIN)
    parts = dict(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWENIMAGE_SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    if edit:  # Qwen/Qwen-Image-Edit's model_index.json: processor = transformers Qwen2VLProcessor
        pipe = QwenImageEditPipeline(processor=qwen_vl_processor(Qwen2VLProcessor, tokenizer), **parts)
    else:
        pipe = QwenImagePipeline(**parts)
    pipe.save_pretrained(folder, safe_serialization=True)


def write_qwenimage(folder: Path, seed: int) -> None:
    """Tiny ``Qwen/Qwen-Image``: loads with ``QwenImagePipeline.from_pretrained(folder)``."""
    _write(folder, seed, "qwenimage")


def write_qwenimage_2512(folder: Path, seed: int) -> None:
    """Tiny ``Qwen/Qwen-Image-2512``: the same architecture with other (seeded) weights."""
    _write(folder, seed, "qwenimage-2512")


def write_qwenimage_edit(folder: Path, seed: int) -> None:
    """Tiny ``Qwen/Qwen-Image-Edit``: loads with ``QwenImageEditPipeline.from_pretrained(folder)``."""
    _write(folder, seed, "qwenimage-edit", edit=True)
