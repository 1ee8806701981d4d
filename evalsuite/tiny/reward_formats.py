"""Tiny checkpoints in the formats some rewards load besides transformers folders (open_clip, the official
ImageReward ``.pt`` layout, EditReward's backbone + heads). Each writer lives next to its reward's loader;
these adapters give them the ``writer(folder, seed)`` shape ``write_tiny`` expects."""

from __future__ import annotations

from pathlib import Path


def write_open_clip_vit_l_14(folder: Path, seed: int) -> None:
    from evalsuite.rewards.clip_models import write_tiny_open_clip

    write_tiny_open_clip(folder, "ViT-L-14", seed=seed)


def write_open_clip_vit_b_32(folder: Path, seed: int) -> None:
    from evalsuite.rewards.clip_models import write_tiny_open_clip

    write_tiny_open_clip(folder, "ViT-B-32", seed=seed)


def write_imagereward(folder: Path, seed: int) -> None:
    from evalsuite.rewards.imagereward import write_tiny_imagereward

    write_tiny_imagereward(folder, seed)


def write_editreward(folder: Path, seed: int) -> None:
    """``folder/checkpoint`` (load with ``model=``) and ``folder/base`` (``base_model=``)."""
    from evalsuite.rewards.editreward import write_tiny_editreward

    write_tiny_editreward(folder, seed)
