"""What every CLIP-style reward (PickScore, CLIPScore, HPSv2) shares: one text and one image embedding
per (prompt, image) pair, and the cosine between them.

A GRPO group shares one prompt, so each distinct prompt is encoded once and its embedding is paired with
every image that carries it. A reward brings its own encoders (open_clip or transformers, its tokenizer's
truncation) and its own formula on the cosine (a logit scale, a normaliser); the pairing and the cosine
live here once, so two rewards cannot drift apart on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from evalsuite.sample import Sample

__all__ = ["EncodedPrompts", "PairedEmbeddings", "cosine", "embed_pairs"]


class EncodedPrompts(NamedTuple):
    """A text encoder's answer for distinct prompts: embeddings plus what truncation cut, per prompt."""

    embeds: torch.Tensor  # [n_prompts, dim]
    token_counts: list[int]  # tokens before truncation, special tokens included
    truncated: list[bool]


@dataclass(frozen=True)
class PairedEmbeddings:
    """Embeddings row-aligned with the samples: ``text[i]`` is sample i's prompt, ``image[i]`` its image."""

    text: torch.Tensor  # [batch, dim]
    image: torch.Tensor  # [batch, dim]
    token_counts: list[int]
    truncated: list[bool]

    def cosine(self) -> torch.Tensor:
        """Per-sample cosine: the family's one rule."""
        return cosine(self.text, self.image)

    def token_details(self, i: int) -> dict[str, Any]:
        """Sample i's ``token_count`` / ``truncated``, so a cut prompt is never scored silently."""
        return {"token_count": self.token_counts[i], "truncated": self.truncated[i]}


def cosine(text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity in float32 (pairs, not the full text x image matrix)."""
    t = torch.nn.functional.normalize(text_embeds.float(), dim=-1)
    v = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
    return (t * v).sum(dim=-1)


def embed_pairs(
    samples: Sequence[Sample],
    encode_prompts: Callable[[list[str]], EncodedPrompts],
    encode_images: Callable[[Sequence[Sample]], torch.Tensor],
) -> PairedEmbeddings:
    """One text forward over the distinct prompts and one image forward over the batch, paired per sample."""
    prompts = list(dict.fromkeys(s.prompt for s in samples))
    where = {p: i for i, p in enumerate(prompts)}
    encoded = encode_prompts(prompts)
    image = encode_images(samples)
    index = [where[s.prompt] for s in samples]
    rows = torch.tensor(index, device=encoded.embeds.device)
    return PairedEmbeddings(
        encoded.embeds[rows],
        image,
        [encoded.token_counts[k] for k in index],
        [encoded.truncated[k] for k in index],
    )
