"""Tiny Qwen2.5-VL-7B-Instruct and Qwen2-VL-7B-Instruct: ``*ForConditionalGeneration`` + processor.

The vision towers keep the real patch geometry (14 px patches, 2x2 spatial merge, temporal patch 2;
Qwen2.5-VL's windowed attention) and the processors keep the real pixel budget, so the number of image
tokens for a given image size is what production sees; the language models keep M-RoPE and Qwen's
special-token layout. The two releases share tokenizer, chat template, processor settings and generation
config; only the towers differ.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoProcessor,
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)

from ._common import seeded
from .tokenizers import QWEN2_5_VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS, build_qwen2_tokenizer

__all__ = [
    "qwen2_5_vl_config",
    "qwen_generation_config",
    "qwen_special_ids",
    "qwen_text_token_ids",
    "qwen_vision_token_ids",
    "qwen_vl_processor",
    "reward_model_backbone",
    "write_qwen2_5_vl",
    "write_qwen2_vl",
]

_HIDDEN = 32
_HEADS = 2  # head_dim 16 -> 8 rotary frequencies, split over (temporal, height, width) by mrope_section
_MROPE_SECTION = [2, 3, 3]
# Qwen2-VL / Qwen2.5-VL-7B-Instruct preprocessor_config.json pixel budget (min 4 merged patches, max 16384).
_MIN_PIXELS = 3136
_MAX_PIXELS = 12845056


_QWEN2_5_VISION = {"depth": 2, "hidden_size": _HIDDEN, "intermediate_size": 64, "num_heads": 2,
                   "out_hidden_size": _HIDDEN, "patch_size": 14, "spatial_merge_size": 2,
                   "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [1],
                   "tokens_per_second": 2}


def write_qwen2_5_vl(folder: Path, seed: int) -> None:
    """Tiny ``Qwen/Qwen2.5-VL-7B-Instruct``: ``AutoProcessor`` / ``Qwen2_5_VLForConditionalGeneration``."""
    _write(folder, seed, "qwen2.5-vl", Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
           Qwen2_5_VLProcessor, _QWEN2_5_VISION)


def qwen2_5_vl_config(tokenizer: Any) -> Qwen2_5_VLConfig:
    """The tiny Qwen2.5-VL config over ``tokenizer`` (also the tiny Qwen-Image pipelines' text encoder)."""
    return _config(Qwen2_5_VLConfig, tokenizer, _QWEN2_5_VISION)


def write_qwen2_vl(folder: Path, seed: int) -> None:
    """Tiny ``Qwen/Qwen2-VL-7B-Instruct``: ``AutoProcessor`` / ``Qwen2VLForConditionalGeneration`` (the
    Qwen2-VL tower: LayerNorm, QuickGELU MLP, full attention; ``hidden_size`` is the merger's output)."""
    vision = {"depth": 2, "embed_dim": _HIDDEN, "hidden_size": _HIDDEN, "mlp_ratio": 2, "num_heads": 2,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    _write(folder, seed, "qwen2-vl", Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, vision)


def _write(folder: Path, seed: int, stream: str, config_cls: Any, model_cls: Any, processor_cls: Any,
           vision_config: dict[str, Any]) -> None:
    """Tokenizer, config, seeded weights, generation config and processor shared by both releases."""
    # Like the real repos, tokenizer and processor carry the same (VL) chat template.
    tokenizer = build_qwen2_tokenizer(chat_template=QWEN2_5_VL_CHAT_TEMPLATE)
    ids = qwen_special_ids(tokenizer)
    config = _config(config_cls, tokenizer, vision_config)
    with seeded(seed, stream, "model"):
        model = model_cls(config)
    # Mirrors the real generation_config.json (near-greedy sampling; stop on <|im_end|> or <|endoftext|>).
    model.generation_config = qwen_generation_config(
        ids,
        do_sample=True,
        repetition_penalty=1.05,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
    )
    model.save_pretrained(folder, safe_serialization=True)
    qwen_vl_processor(processor_cls, tokenizer).save_pretrained(folder)


def qwen_vl_processor(processor_cls: Any, tokenizer: Any) -> Any:
    """A Qwen-VL processor over ``tokenizer`` with the real pixel budget (also Qwen-Image-Edit's)."""
    # transformers 5's Qwen2_5_VLProcessor requires a video processor, and the only one is torchvision-backed,
    # so this import needs torchvision (also true when *loading* the real processor). It is imported here, not
    # at module level, so that importing evalsuite.tiny stays light. The image processor is the PIL one; both
    # backends save the same config and AutoProcessor picks the torchvision one at load time when available.
    from transformers import Qwen2VLVideoProcessor

    return processor_cls(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=_MIN_PIXELS, max_pixels=_MAX_PIXELS),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(min_pixels=_MIN_PIXELS, max_pixels=_MAX_PIXELS),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )


def _config(config_cls: Any, tokenizer: Any, vision_config: dict[str, Any]) -> Any:
    """32-wide text model with real M-RoPE, the tokenizer's special-token ids, ``vision_config``'s tower."""
    ids = qwen_special_ids(tokenizer)
    return config_cls(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": _HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": _HEADS,
            "num_key_value_heads": 1,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": _MROPE_SECTION},
            **qwen_text_token_ids(ids),
        },
        vision_config=vision_config,
        **qwen_vision_token_ids(ids),
        tie_word_embeddings=False,
    )


def qwen_special_ids(tokenizer: Any) -> dict[str, int]:
    """The ids of Qwen's special tokens in ``tokenizer`` (the same layout in every Qwen-VL release)."""
    return {tok: tokenizer.convert_tokens_to_ids(tok) for tok in QWEN_SPECIAL_TOKENS}


def qwen_text_token_ids(ids: dict[str, int]) -> dict[str, int]:
    """A Qwen-VL language model's bos/eos/pad config fields, as every release sets them."""
    return {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"]}


def qwen_vision_token_ids(ids: dict[str, int]) -> dict[str, int]:
    """A Qwen-VL config's image/video placeholder and vision-span token fields."""
    return {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}


def qwen_generation_config(ids: dict[str, int], **sampling: Any) -> GenerationConfig:
    """A release's generation config: Qwen's shared stop tokens (<|im_end|> or <|endoftext|>, padding with
    <|endoftext|>) and that release's own ``sampling`` settings."""
    return GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        **sampling,
    )


def reward_model_backbone(out_dir: str | os.PathLike[str], seed: int, stream: str,
                          write_base: Callable[[Path, int], None], model_cls: Any,
                          reward_token: str) -> tuple[Path, Path, Any]:
    """The common start of a Qwen-VL reward model (EditReward, HPSv3): ``out_dir/base`` written by
    ``write_base``, an empty ``out_dir/checkpoint``, and the base model with its vocabulary grown by
    ``reward_token`` (the new rows drawn under this reward's own seed stream)."""
    out = Path(out_dir)
    base, ckpt = out / "base", out / "checkpoint"
    base.mkdir(parents=True, exist_ok=True)
    ckpt.mkdir(parents=True, exist_ok=True)
    write_base(base, seed)
    tokenizer = AutoProcessor.from_pretrained(base).tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": [reward_token]})
    model = model_cls.from_pretrained(base, dtype=torch.float32)
    with seeded(seed, stream, "resize"):
        model.resize_token_embeddings(len(tokenizer))
    return base, ckpt, model
