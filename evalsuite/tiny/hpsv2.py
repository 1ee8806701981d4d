"""A tiny HPSv2.1 model: an open_clip ``local-dir`` folder mimicking laion's ViT-H-14 (the "base" weights)
plus ``HPS_v2.1_compressed.pt`` in the official format, ``{'state_dict': <every weight>}``, saved from
differently seeded weights so that a test can tell the fine-tuned checkpoint was loaded over the base.

The checkpoint's file name comes from the reward (``evalsuite.rewards.hpsv2``), looked up by string.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ._common import resolve, seeded
from .open_clip import tiny_model_cfg, write_tiny_open_clip

__all__ = ["write_hpsv2"]


def write_hpsv2(folder: Path, seed: int) -> None:
    """``write_tiny``'s ``hpsv2``: base folder + the official-format HPS v2.1 checkpoint beside it."""
    import open_clip

    write_tiny_open_clip(folder, "ViT-H-14", seed=seed)
    with seeded(seed, "hpsv2", "v2.1"):
        tuned = open_clip.CLIP(**tiny_model_cfg("ViT-H-14"))
    state = {k: v.detach().contiguous().clone() for k, v in tuned.state_dict().items()}
    name = resolve("evalsuite.rewards.hpsv2:CHECKPOINTS")["v2.1"]
    torch.save({"state_dict": state}, folder / name)
