"""A tiny EditReward in the official layout: a tiny Qwen2.5-VL base plus the reward checkpoint (backbone with
the ``<|Reward|>`` token added, two default-shape heads), for the EditReward reward's offline tests.

The reward token comes from ``evalsuite.rewards.editreward``, looked up by string when the model is written,
so importing the tiny kit imports no reward.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ._common import resolve, seeded
from .qwen_vl import reward_model_backbone, write_qwen2_5_vl

__all__ = ["write_editreward", "write_tiny_editreward"]


def write_tiny_editreward(out_dir: str | os.PathLike[str], seed: int = 0) -> dict[str, Path]:
    """A tiny EditReward in the official layout: ``out_dir/base`` (tiny Qwen2.5-VL config + processor, the
    stand-in for ``Qwen/Qwen2.5-VL-7B-Instruct``) and ``out_dir/checkpoint/model.safetensors`` (backbone with
    the vocabulary resized for ``<|Reward|>`` + two default-shape heads). Same seed -> same bytes."""
    from safetensors.torch import save_file
    from transformers import Qwen2_5_VLForConditionalGeneration

    base, ckpt, model = reward_model_backbone(out_dir, seed, "editreward", write_qwen2_5_vl,
                                              Qwen2_5_VLForConditionalGeneration,
                                              resolve("evalsuite.rewards.editreward:REWARD_TOKEN"))
    hidden = model.config.text_config.hidden_size
    with seeded(seed, "editreward", "heads"):
        heads = nn.ModuleDict({
            f"head_{i}": nn.Sequential(nn.Linear(hidden, 1024), nn.ReLU(), nn.Dropout(0.05),
                                       nn.Linear(1024, 16), nn.ReLU(), nn.Linear(16, 2))
            for i in range(2)
        })
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state.update({f"rm_heads.{k}": v.contiguous() for k, v in heads.state_dict().items()})
    save_file(state, str(ckpt / "model.safetensors"))
    return {"base": base, "checkpoint": ckpt}


def write_editreward(folder: Path, seed: int) -> None:
    """``write_tiny``'s ``editreward``: ``folder/checkpoint`` (load with ``model=``) and ``folder/base``
    (``base_model=``)."""
    write_tiny_editreward(folder, seed)
