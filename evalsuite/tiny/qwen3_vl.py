"""Tiny Qwen3-VL-8B-Instruct: ``Qwen3VLForConditionalGeneration`` + ``Qwen3VLProcessor``.

What differs from Qwen2.5-VL, and is kept here because the GenEval 2 scorer depends on it: 16 px patches
with a 2x2 merge (32 px per image token), the processor's own pixel budget (``shortest_edge`` 65536 =
256 x 256 up to ``longest_edge`` 16777216), learned vision position embeddings, DeepStack (features of chosen
vision layers added to the first decoder layers at the image positions), interleaved M-RoPE, and a chat
template with *no* default system turn.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from ._common import seeded
from .qwen_vl import qwen_generation_config, qwen_special_ids, qwen_text_token_ids, qwen_vision_token_ids
from .tokenizers import QWEN2_5_VL_CHAT_TEMPLATE, build_qwen2_tokenizer

__all__ = ["QWEN3_VL_CHAT_TEMPLATE", "write_qwen3_vl"]

_HIDDEN = 32
_HEADS = 2  # head_dim 16 -> 8 rotary frequencies, split over (temporal, height, width) by mrope_section
_MROPE_SECTION = [2, 3, 3]
# Qwen3-VL-8B-Instruct preprocessor_config.json: size {shortest_edge, longest_edge} in pixels, mean/std 0.5.
_SIZE = {"shortest_edge": 65536, "longest_edge": 16777216}
_MEAN_STD = [0.5, 0.5, 0.5]

# Qwen3-VL-Instruct's chat template for user/assistant/system turns with images (tool calls left out) is
# Qwen2.5-VL's without the default system turn; the generation prompt is the same "<|im_start|>assistant\n".
_QWEN2_5_VL_DEFAULT_SYSTEM = (
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
)
if _QWEN2_5_VL_DEFAULT_SYSTEM not in QWEN2_5_VL_CHAT_TEMPLATE:  # pragma: no cover - a changed base template
    raise RuntimeError("the Qwen2.5-VL chat template no longer holds its default system turn as expected")
QWEN3_VL_CHAT_TEMPLATE = QWEN2_5_VL_CHAT_TEMPLATE.replace(_QWEN2_5_VL_DEFAULT_SYSTEM, "")


def write_qwen3_vl(folder: Path, seed: int) -> None:
    """Tiny ``Qwen/Qwen3-VL-8B-Instruct``: ``AutoProcessor`` / ``Qwen3VLForConditionalGeneration``."""
    tokenizer = build_qwen2_tokenizer(chat_template=QWEN3_VL_CHAT_TEMPLATE)
    ids = qwen_special_ids(tokenizer)
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": _HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": _HEADS,
            "num_key_value_heads": 1,
            "head_dim": _HIDDEN // _HEADS,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": _MROPE_SECTION,
                                "mrope_interleaved": True},
            **qwen_text_token_ids(ids),
        },
        vision_config={
            "depth": 2,
            "hidden_size": _HIDDEN,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": _HIDDEN,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [0, 1],
        },
        **qwen_vision_token_ids(ids),
        tie_word_embeddings=False,
    )
    with seeded(seed, "qwen3-vl", "model"):
        model = Qwen3VLForConditionalGeneration(config)
    # Mirrors the real generation_config.json (sampling by default; GenEval 2 passes do_sample=False).
    model.generation_config = qwen_generation_config(
        ids,
        do_sample=True,
        temperature=0.7,
        top_k=20,
        top_p=0.8,
        repetition_penalty=1.0,
    )
    # Like Qwen2.5-VL, the processor requires the torchvision-backed video processor (imported only here).
    from transformers import Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessorPil(
        size=_SIZE, patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=_MEAN_STD,
        image_std=_MEAN_STD,
    )
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
