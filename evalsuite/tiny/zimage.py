"""Tiny Z-Image (Tongyi-MAI/Z-Image) pipeline (diffusers folder layout).

Architecturally faithful where the flow policy depends on it: a ``Qwen3Model`` text encoder (the pipeline
reads its second-to-last hidden states through the Qwen3 chat template with ``enable_thinking``, one
variable-length sequence per prompt), the single-stream S3-DiT ``ZImageTransformer2DModel`` (patch 2, noise
and context refiners, 3-axis RoPE whose axes sum to the head dim), FLUX's 16-channel 8x VAE with its
scaling/shift factors, and Z-Image's scheduler config (static shift 6.0, no dynamic shifting). Widths and
depths are shrunk so a 32 px image renders in milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from transformers import Qwen3Config, Qwen3Model

from ._common import seeded
from .flux import build_vae
from .tokenizers import build_qwen2_tokenizer

__all__ = ["QWEN3_CHAT_TEMPLATE", "TINY_ZIMAGE_TRANSFORMER", "ZIMAGE_SCHEDULER_CONFIG", "write_zimage"]

# Tongyi-MAI/Z-Image scheduler/scheduler_config.json (Z-Image-Turbo has shift 3.0).
ZIMAGE_SCHEDULER_CONFIG: dict[str, object] = {
    "num_train_timesteps": 1000,
    "use_dynamic_shifting": False,
    "shift": 6.0,
}

# Qwen3's chat template, abridged to what a text-to-image prompt uses (no tools): no default system turn,
# and an empty think block only when ``enable_thinking`` is false (ZImagePipeline passes true, so none).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)

_TEXT_HIDDEN = 32  # Z-Image: 2560 (Qwen3-4B) = the transformer's cap_feat_dim

TINY_ZIMAGE_TRANSFORMER: dict[str, object] = {
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "in_channels": 16,
    "dim": 32,  # Z-Image: 3840
    "n_layers": 2,  # Z-Image: 30
    "n_refiner_layers": 1,  # Z-Image: 2
    "n_heads": 2,  # head dim 16 = sum(axes_dims)
    "n_kv_heads": 2,
    "norm_eps": 1e-5,
    "qk_norm": True,
    "cap_feat_dim": _TEXT_HIDDEN,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": [4, 6, 6],  # Z-Image: [32, 48, 48]
    "axes_lens": [1024, 512, 512],  # Z-Image's position ranges
}


def write_zimage(folder: Path, seed: int) -> None:
    """Tiny ``Tongyi-MAI/Z-Image``: loads with ``ZImagePipeline.from_pretrained(folder)``."""
    name = "zimage"
    tokenizer = build_qwen2_tokenizer(model_max_length=131072, chat_template=QWEN3_CHAT_TEMPLATE)
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text_config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=3,  # the pipeline reads hidden_states[-2]: the last layer is not used
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as Qwen3-4B (32 / 8)
        head_dim=8,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=True,
        bos_token_id=endoftext,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=endoftext,
    )
    with seeded(seed, name, "transformer"):
        transformer = ZImageTransformer2DModel(**TINY_ZIMAGE_TRANSFORMER)
    with seeded(seed, name, "text_encoder"):
        text_encoder = Qwen3Model(text_config)
    with seeded(seed, name, "vae"):
        vae = build_vae(scaling_factor=0.3611, shift_factor=0.1159)  # FLUX's VAE, as Z-Image's
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
