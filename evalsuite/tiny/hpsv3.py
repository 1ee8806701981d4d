"""A tiny HPSv3 in the official layout: a tiny Qwen2-VL base plus ``HPSv3.safetensors`` (backbone with the
``<|Reward|>`` token added, under transformers 4.45 key names, and the default ``ranknet`` head), for the
HPSv3 reward's offline tests.

The reward token and the checkpoint file name come from ``evalsuite.rewards.hpsv3``, looked up by string when
the model is written, so importing the tiny kit imports no reward.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ._common import resolve, seeded
from .qwen_vl import reward_model_backbone, write_qwen2_vl

__all__ = ["write_hpsv3", "write_tiny_hpsv3"]


def official_key(key: str) -> str:
    """transformers 5's in-memory ``Qwen2VLForConditionalGeneration`` key -> the 4.45 name HPSv3 saved."""
    for new, old in (("model.visual.", "visual."), ("model.language_model.", "model.")):
        if key.startswith(new):
            return old + key[len(new):]
    return key  # lm_head.weight


def write_tiny_hpsv3(out_dir: str | os.PathLike[str], seed: int = 0) -> dict[str, Path]:
    """``out_dir/base`` (tiny Qwen2-VL config + processor, the stand-in for ``Qwen/Qwen2-VL-7B-Instruct``) and
    ``out_dir/checkpoint/HPSv3.safetensors`` (backbone with the vocabulary resized for ``<|Reward|>`` + the
    hidden -> 1024 -> 16 -> 2 head as ``rm_head.{0,3,5}``). Same seed -> same bytes."""
    from safetensors.torch import save_file
    from transformers import Qwen2VLForConditionalGeneration

    base, ckpt, model = reward_model_backbone(out_dir, seed, "hpsv3", write_qwen2_vl,
                                              Qwen2VLForConditionalGeneration,
                                              resolve("evalsuite.rewards.hpsv3:REWARD_TOKEN"))
    hidden = model.config.text_config.hidden_size
    with seeded(seed, "hpsv3", "head"):
        head = nn.Sequential(nn.Linear(hidden, 1024), nn.ReLU(), nn.Dropout(0.05),
                             nn.Linear(1024, 16), nn.ReLU(), nn.Linear(16, 2))
    state = {official_key(k): v.contiguous() for k, v in model.state_dict().items()}
    state.update({f"rm_head.{k}": v.contiguous() for k, v in head.state_dict().items()})
    file = resolve("evalsuite.rewards.hpsv3:CHECKPOINT_FILES")[0]
    save_file(state, str(ckpt / file))
    return {"base": base, "checkpoint": ckpt}


def write_hpsv3(folder: Path, seed: int) -> None:
    """``write_tiny``'s ``hpsv3``: ``folder/checkpoint`` (load with ``model=``) and ``folder/base``
    (``base_model=``)."""
    write_tiny_hpsv3(folder, seed)
