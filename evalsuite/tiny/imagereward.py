"""A tiny ImageReward checkpoint in the official format (``ImageReward.pt`` + ``med_config.json`` + BLIP's
BERT tokenizer), for the ImageReward reward's offline tests.

File names and the official layout constants come from ``evalsuite.rewards.imagereward_checkpoint``, looked
up by string when a checkpoint is written, so importing the tiny kit imports no reward.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ._common import component_seed, resolve
from .tokenizers import build_bert_tokenizer

__all__ = ["write_imagereward", "write_tiny_imagereward"]

_FORMAT = "evalsuite.rewards.imagereward_checkpoint"


def _official(name: str) -> Any:
    """A constant of the official format, from the reward's checkpoint module (looked up now, by string)."""
    return resolve(f"{_FORMAT}:{name}")


def _generator(seed: int, *parts: str) -> torch.Generator:
    return torch.Generator().manual_seed(component_seed(seed, "imagereward", *parts))


def _official_state_dict(
    gen: torch.Generator, *, vision_width: int, vision_layers: int, image_size: int, patch_size: int,
    text_width: int, text_layers: int, vocab_size: int, max_positions: int, head_widths: Sequence[int],
    head_linear_indices: Sequence[int], proj_dim: int,
) -> dict[str, torch.Tensor]:
    """Random weights under the official ``ImageReward`` module's key names and shapes.

    Scales keep activations O(1) (unit-variance linears, LayerNorm gains near 1) so that scores differ
    clearly between images and prompts and a wrong wiring cannot hide under a tolerance.
    """
    sd: dict[str, torch.Tensor] = {}

    def linear(name: str, n_in: int, n_out: int) -> None:
        sd[f"{name}.weight"] = torch.randn(n_out, n_in, generator=gen) / math.sqrt(n_in)
        sd[f"{name}.bias"] = 0.1 * torch.randn(n_out, generator=gen)

    def norm(name: str, n: int) -> None:
        sd[f"{name}.weight"] = 1.0 + 0.1 * torch.randn(n, generator=gen)
        sd[f"{name}.bias"] = 0.1 * torch.randn(n, generator=gen)

    v, n_patches = "blip.visual_encoder", (image_size // patch_size) ** 2
    sd[f"{v}.cls_token"] = torch.randn(1, 1, vision_width, generator=gen)
    sd[f"{v}.pos_embed"] = 0.5 * torch.randn(1, n_patches + 1, vision_width, generator=gen)
    fan_in = 3 * patch_size * patch_size
    sd[f"{v}.patch_embed.proj.weight"] = torch.randn(
        vision_width, 3, patch_size, patch_size, generator=gen
    ) / math.sqrt(fan_in)
    sd[f"{v}.patch_embed.proj.bias"] = 0.1 * torch.randn(vision_width, generator=gen)
    for i in range(vision_layers):
        b = f"{v}.blocks.{i}"
        norm(f"{b}.norm1", vision_width)
        linear(f"{b}.attn.qkv", vision_width, 3 * vision_width)
        linear(f"{b}.attn.proj", vision_width, vision_width)
        norm(f"{b}.norm2", vision_width)
        linear(f"{b}.mlp.fc1", vision_width, 4 * vision_width)
        linear(f"{b}.mlp.fc2", 4 * vision_width, vision_width)
    norm(f"{v}.norm", vision_width)

    t = "blip.text_encoder"
    sd[f"{t}.embeddings.position_ids"] = torch.arange(max_positions).unsqueeze(0)
    sd[f"{t}.embeddings.word_embeddings.weight"] = torch.randn(vocab_size, text_width, generator=gen)
    sd[f"{t}.embeddings.position_embeddings.weight"] = 0.5 * torch.randn(
        max_positions, text_width, generator=gen
    )
    norm(f"{t}.embeddings.LayerNorm", text_width)
    for i in range(text_layers):
        b = f"{t}.encoder.layer.{i}"
        for kind, kv_width in (("attention", text_width), ("crossattention", vision_width)):
            linear(f"{b}.{kind}.self.query", text_width, text_width)
            linear(f"{b}.{kind}.self.key", kv_width, text_width)
            linear(f"{b}.{kind}.self.value", kv_width, text_width)
            linear(f"{b}.{kind}.output.dense", text_width, text_width)
            norm(f"{b}.{kind}.output.LayerNorm", text_width)
        linear(f"{b}.intermediate.dense", text_width, 4 * text_width)
        linear(f"{b}.output.dense", 4 * text_width, text_width)
        norm(f"{b}.output.LayerNorm", text_width)

    linear("blip.vision_proj", vision_width, proj_dim)
    linear("blip.text_proj", text_width, proj_dim)
    for index, (n_in, n_out) in zip(head_linear_indices, itertools.pairwise([text_width, *head_widths])):
        linear(f"mlp.layers.{index}", n_in, n_out)
    return sd


def write_tiny_imagereward(
    out_dir: str | Path,
    seed: int = 0,
    *,
    vision_width: int = 128,
    vision_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    text_width: int = 32,
    text_layers: int = 2,
    text_heads: int = 2,
    proj_dim: int = 16,
) -> Path:
    """Write a tiny ImageReward checkpoint *in the official format* into ``out_dir``; return the folder.

    Files: ``ImageReward.pt`` (official key names; the official MLP widths 1024/128/64/16/1),
    ``med_config.json`` (the official keys with tiny sizes) and the tokenizer files (uncased BERT WordPiece
    with ``[DEC]``/``[ENC]``, built offline). The ViT head dim is 64 as in the official ViTs, so
    ``vision_width`` must be a multiple of 64. ``proj_dim``: the (unscored) ITC projections' width, 256 in the
    official model, whose ``BLIP_Pretrain`` fixes it. Same arguments -> byte-identical files.
    """
    if vision_width % _official("VIT_HEAD_DIM") or text_width % text_heads or image_size % patch_size:
        raise ValueError("need vision_width % 64 == text_width % text_heads == image_size % patch_size == 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_bert_tokenizer(model_max_length=512, extra_special_tokens=("[DEC]", "[ENC]"))
    tokenizer.bos_token = "[DEC]"
    max_positions = 64
    med_config = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": text_width,
        "initializer_range": 0.02,
        "intermediate_size": 4 * text_width,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": max_positions,
        "model_type": "bert",
        "num_attention_heads": text_heads,
        "num_hidden_layers": text_layers,
        "pad_token_id": tokenizer.pad_token_id,
        "type_vocab_size": 2,
        "vocab_size": len(tokenizer),
        "encoder_width": vision_width,
        "add_cross_attention": True,
    }
    state = _official_state_dict(
        _generator(seed, "weights"),
        vision_width=vision_width, vision_layers=vision_layers, image_size=image_size,
        patch_size=patch_size, text_width=text_width, text_layers=text_layers, vocab_size=len(tokenizer),
        max_positions=max_positions, head_widths=(1024, 128, 64, 16, 1),
        head_linear_indices=_official("HEAD_LINEAR_INDICES"), proj_dim=proj_dim,
    )
    buffer = io.BytesIO()  # a buffer, not a path: the archive's root name would otherwise be the file stem
    torch.save(state, buffer)
    (out / _official("WEIGHTS_PT")).write_bytes(buffer.getvalue())
    (out / _official("MED_CONFIG")).write_text(json.dumps(med_config, indent=2) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(out)
    return out


def write_imagereward(folder: Path, seed: int) -> None:
    """``write_tiny``'s ``imagereward``: the default tiny sizes."""
    write_tiny_imagereward(folder, seed)
