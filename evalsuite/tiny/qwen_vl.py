"""Tiny Qwen2.5-VL-7B-Instruct: ``Qwen2_5_VLForConditionalGeneration`` + ``Qwen2_5_VLProcessor``.

The vision tower keeps the real patch geometry (14 px patches, 2x2 spatial merge, temporal patch 2, windowed
attention) and the processor keeps the real pixel budget, so the number of image tokens for a given image size
is what production sees; the language model keeps M-RoPE and Qwen's special-token layout.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
)

from ._common import seeded
from .tokenizers import QWEN2_5_VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS, build_qwen2_tokenizer

__all__ = ["qwen2_5_vl_config", "write_qwen2_5_vl"]

_HIDDEN = 32
_HEADS = 2  # head_dim 16 -> 8 rotary frequencies, split over (temporal, height, width) by mrope_section
_MROPE_SECTION = [2, 3, 3]
# Qwen2.5-VL-7B-Instruct preprocessor_config.json pixel budget (min 4 merged patches, max 16384).
_MIN_PIXELS = 3136
_MAX_PIXELS = 12845056


def qwen2_5_vl_config(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig:
    """The tiny Qwen2.5-VL config over ``tokenizer``: real patch geometry and M-RoPE, 32 wide (also the
    text encoder of the tiny Qwen-Image pipelines)."""
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in QWEN_SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
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
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": _HIDDEN,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": _HIDDEN,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def write_qwen2_5_vl(folder: Path, seed: int) -> None:
    """Tiny ``Qwen/Qwen2.5-VL-7B-Instruct``: ``AutoProcessor`` / ``Qwen2_5_VLForConditionalGeneration``."""
    # Like the real repo, tokenizer and processor carry the same (VL) chat template.
    tokenizer = build_qwen2_tokenizer(chat_template=QWEN2_5_VL_CHAT_TEMPLATE)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in QWEN_SPECIAL_TOKENS}
    config = qwen2_5_vl_config(tokenizer)
    with seeded(seed, "qwen2.5-vl", "model"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    # Mirrors the real generation_config.json (near-greedy sampling; stop on <|im_end|> or <|endoftext|>).
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        do_sample=True,
        repetition_penalty=1.05,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
    )
    # transformers 5's Qwen2_5_VLProcessor requires a video processor, and the only one is torchvision-backed,
    # so this import needs torchvision (also true when *loading* the real processor). It is imported here, not
    # at module level, so that importing evalsuite.tiny stays light. The image processor is the PIL one; both
    # backends save the same config and AutoProcessor picks the torchvision one at load time when available.
    from transformers import Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessorPil(min_pixels=_MIN_PIXELS, max_pixels=_MAX_PIXELS)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(min_pixels=_MIN_PIXELS, max_pixels=_MAX_PIXELS),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
