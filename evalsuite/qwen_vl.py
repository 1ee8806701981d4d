"""Qwen2.5-VL plumbing shared by the VLM rewards (PromptEcho, EditReward, VQA, judges) and the VL policy.

Each builds its own token sequences around images, so what they share is: resizing an image the
way qwen-vl-utils does (the pixel budget decides how many image tokens a sample gets), running the image
processor once for the whole batch, expanding the ``<|image_pad|>`` placeholders exactly as the processor
would, and right-padding hand-built id lists into one tensor batch. Right padding keeps every real token
at the same position as when the sample is scored alone, which is what makes per-sample numbers
independent of batch composition.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from PIL import Image

from evalsuite.errors import MissingBackendError

# qwen-vl-utils' own defaults (IMAGE_MIN_TOKEN_NUM / IMAGE_MAX_TOKEN_NUM merged 28 px patches).
DEFAULT_MIN_PIXELS = 4 * 28 * 28
DEFAULT_MAX_PIXELS = 16384 * 28 * 28
IMAGE_PAD = "<|image_pad|>"


def check_pixel_budget(min_pixels: int, max_pixels: int) -> None:
    """Reject a budget qwen-vl-utils would assert on, at construction time rather than mid-batch."""
    if min_pixels < 1 or max_pixels < min_pixels:
        raise ValueError(f"need 1 <= min_pixels <= max_pixels, got {min_pixels=}, {max_pixels=}")


def fit_image(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """Resize like ``qwen_vl_utils.process_vision_info`` does for an in-memory image with this budget.

    The processor's own resize is then a no-op (both sides are multiples of 28 inside its budget).
    """
    try:
        import qwen_vl_utils
    except ImportError as e:  # a core dependency; on a CPU-only torch it fails through torchvision
        raise MissingBackendError(
            f"qwen_vl_utils is needed for Qwen2.5-VL image preparation but cannot be imported ({e}); "
            "install qwen-vl-utils (on a CPU-only torch see scripts/cpu_compat for torchvision)"
        ) from e
    return qwen_vl_utils.fetch_image({"image": image, "min_pixels": min_pixels, "max_pixels": max_pixels})


def load_processor(path: str, revision: str | None) -> Any:
    """The Qwen2.5-VL processor, padding on the right (see the module docstring)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path, revision=revision)
    processor.tokenizer.padding_side = "right"
    return processor


def image_inputs(
    processor: Any, images: Sequence[Image.Image]
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``(pixel_values, image_grid_thw, tokens per image)`` for already-fitted images, in one call."""
    out = processor.image_processor(images=list(images), return_tensors="pt")
    grid = out["image_grid_thw"]
    merge = processor.image_processor.merge_size
    return out["pixel_values"], grid, (grid.prod(-1) // merge**2).tolist()


def expand_image_pads(text: str, counts: Iterator[int]) -> str:
    """Replace each ``<|image_pad|>`` with as many pads as its image has tokens (what the processor does)."""
    parts = text.split(IMAGE_PAD)
    out = [parts[0]]
    for part in parts[1:]:
        out.append(IMAGE_PAD * next(counts))
        out.append(part)
    return "".join(out)


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack id lists into ``(input_ids, attention_mask)``, padding on the right with ``pad_id``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def pad_token_id(processor: Any) -> int:
    tok = processor.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
