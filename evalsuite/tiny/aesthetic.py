"""A tiny LAION aesthetic predictor v2: the MLP file in the official ``sac+logos+ava1-l14-linearMSE.pth``
format (a plain state dict, keys ``layers.{0,2,4,6,7}.{weight,bias}``, 768 -> 1024 -> 128 -> 64 -> 16 -> 1)
plus its CLIP backbone in ``clip/`` (a tiny open_clip ViT-L-14, QuickGELU, projecting to 768 like the real
one, so the MLP has exactly the official shapes).

File names come from the reward (``evalsuite.rewards.aesthetic``), looked up by string when written.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch

from ._common import component_seed, resolve
from .open_clip import write_tiny_open_clip

__all__ = ["write_aesthetic"]

_REWARD = "evalsuite.rewards.aesthetic"


def write_aesthetic(folder: Path, seed: int) -> None:
    """``write_tiny``'s ``aesthetic``: the MLP checkpoint + ``clip/`` (its open_clip backbone folder).

    The first layer is unit-variance (the input is a unit vector), later ones keep the variance, so
    scores spread by O(1) between images and a wiring error cannot hide under a tolerance.
    """
    widths: tuple[int, ...] = resolve(f"{_REWARD}:MLP_WIDTHS")
    backbone = folder / resolve(f"{_REWARD}:BACKBONE_DIR")
    write_tiny_open_clip(backbone, "ViT-L-14", seed=seed, embed_dim=widths[0])
    gen = torch.Generator().manual_seed(component_seed(seed, "aesthetic", "mlp"))
    state: dict[str, torch.Tensor] = {}
    for index, (n_in, n_out) in zip(resolve(f"{_REWARD}:LINEAR_INDICES"), itertools.pairwise(widths)):
        scale = 1.0 if index == 0 else 1.0 / math.sqrt(n_in)
        state[f"layers.{index}.weight"] = scale * torch.randn(n_out, n_in, generator=gen)
        state[f"layers.{index}.bias"] = 0.1 * torch.randn(n_out, generator=gen)
    torch.save(state, folder / resolve(f"{_REWARD}:CHECKPOINT"))
