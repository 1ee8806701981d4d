"""Helpers for families whose text is a variable-length token sequence with no pooled vector (Z-Image,
Qwen-Image): the sequences travel padded in ``Conditioning.prompt_embeds`` with their boolean token mask in
the ``pooled`` slot (and ``negative_pooled`` for the negative prompt). The slot is row-indexed like the
embeddings and replaced with them by ``FlowPolicy.with_prompts``, so slicing rows and re-prompting keep
embeddings and mask together; the transformer sees exactly the pipeline's unpadded tokens.
``shifted_sigmas`` is the resolution-shifted schedule these pipelines share with FLUX.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch


def pad_sequences(
    sequences: Sequence[torch.Tensor], length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) zero-padded embeddings and their (B, L) bool mask; L = ``length`` or the longest row."""
    length = max([s.shape[0] for s in sequences] + [length or 0])
    first = sequences[0]
    embeds = first.new_zeros((len(sequences), length, first.shape[-1]))
    mask = torch.zeros((len(sequences), length), dtype=torch.bool, device=first.device)
    for i, seq in enumerate(sequences):
        embeds[i, : seq.shape[0]] = seq
        mask[i, : seq.shape[0]] = True
    return embeds, mask


def unpad(embeds: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The rows' real tokens, one (L_i, D) tensor per row (what the pipelines pass the transformer)."""
    mask = mask.to(embeds.device, torch.bool)
    return [row[m] for row, m in zip(embeds, mask)]


def shifted_sigmas(scheduler: Any, sigmas: Sequence[float], image_seq_len: int) -> torch.Tensor:
    """The scheduler's schedule for ``sigmas`` with mu from the image's token count (used only when the
    scheduler's config turns on dynamic shifting, its static ``shift`` otherwise), as the FLUX, Z-Image
    and Qwen-Image pipelines call it: len(sigmas) + 1 fp32 values on the CPU ending at 0."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = scheduler.config
    mu = calculate_shift(
        image_seq_len,
        cfg.get("base_image_seq_len", 256),
        cfg.get("max_image_seq_len", 4096),
        cfg.get("base_shift", 0.5),
        cfg.get("max_shift", 1.15),
    )
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(sigmas=list(sigmas), mu=mu, device="cpu")
    return scheduler.sigmas.float().cpu()
