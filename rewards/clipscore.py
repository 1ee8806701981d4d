"""CLIPScore as the text-to-image benchmarks compute it: the raw cosine of OpenAI CLIP embeddings.

T2I-CompBench's non-spatial category (``CLIPScore_eval/CLIP_similarity.py``) loads OpenAI ``ViT-B/32``,
preprocesses with resize-shortest-side-224 (bicubic) + centre crop + OpenAI mean/std, L2-normalises both
embeddings and reports their dot product: no ×100 logit scale and no ×2.5 / clamp-at-0 (that is Hessel et
al.'s reference-free CLIPScore, a different number). ``variant="ViT-L-14"`` gives the same cosine with the
OpenAI ViT-L-14 that GenEval's colour test uses. Both load through open_clip (see ``clip_models``
for the QuickGELU fix that makes open_clip 3.x build OpenAI's network).

Text: T2I-CompBench calls ``clip.tokenize(prompt)`` without ``truncate=True``, so a prompt over 77 tokens
crashes the official script. We truncate to 77 tokens (``<|endoftext|>`` kept last, as ``truncate=True``
does) and report ``token_count`` and ``truncated`` per sample. T2I-CompBench's ``--complex`` mode (spaCy
adjective removal) is a prompt transform, not part of this reward.

Precision: ``clip.load`` on a GPU runs OpenAI's fp16 weights (LayerNorm in fp32); ``dtype="float16"`` is
the same open_clip mixed precision. The default float32 is what the official script gives on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from evalsuite.errors import ConfigError
from evalsuite.reward import Reward, Score
from evalsuite.rewards.clip_family import EncodedPrompts, cosine, embed_pairs
from evalsuite.rewards.clip_models import (
    encode_images,
    encode_texts,
    load_open_clip,
    local_model_dir,
    tokenize,
)
from evalsuite.sample import Sample

__all__ = ["VARIANTS", "CLIPScore", "clipscore"]

# variant -> (open_clip architecture, pretrained tag); the first is the default.
VARIANTS: dict[str, tuple[str, str]] = {
    "ViT-B-32": ("ViT-B-32", "openai"),  # T2I-CompBench non-spatial (OpenAI clip.load("ViT-B/32"))
    "ViT-L-14": ("ViT-L-14", "openai"),  # GenEval's colour classifier backbone
}


def clipscore(text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
    """Pure rule: per pair i, ``cos(text_i, image_i)`` in float32 — the raw value, no scale, no clamp."""
    return cosine(text_embeds, image_embeds)


class CLIPScore(Reward):
    """Raw CLIP image–text cosine through open_clip; one image and one text forward per batch.

    ``variant``: ``"ViT-B-32"`` (default, T2I-CompBench) or ``"ViT-L-14"``, both OpenAI weights.
    ``model``: instead, any open_clip architecture name (with ``pretrained``: a tag or a checkpoint file),
    or a folder in open_clip's ``local-dir`` layout (e.g. ``evalsuite.tiny.open_clip.write_tiny_open_clip``).
    ``quick_gelu``: None follows the pretrained tag (see :func:`.clip_models.load_open_clip`).
    """

    name = "clipscore"
    default_model = "ViT-B-32"
    backend = "open_clip"

    def __init__(
        self,
        model: str | None = None,
        *,
        variant: str | None = None,
        pretrained: str | None = None,
        quick_gelu: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if variant is not None:
            if variant not in VARIANTS:
                raise ConfigError(f"clipscore: unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
            if model is not None:
                raise ConfigError("clipscore: give either variant or model, not both")
            model, tag = VARIANTS[variant]
            pretrained = pretrained or tag
        super().__init__(model, **kwargs)
        if self.revision is not None:
            raise ConfigError("clipscore: open_clip weights are named by tag or file, not by revision")
        self.variant = variant
        self.is_folder = local_model_dir(self.model_id) is not None
        self.pretrained = None if self.is_folder else (pretrained or "openai")
        self.quick_gelu = quick_gelu

    def settings(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "pretrained": self.pretrained,
            "quick_gelu": self.quick_gelu,
            "value": "raw cosine",
            "max_text_tokens": 77,
        }

    def _load(self) -> None:
        self.model, self.preprocess, self.tokenizer = load_open_clip(
            self.model_id, self.pretrained, device=self.device, dtype=self.dtype, quick_gelu=self.quick_gelu
        )

    def _encode_prompts(self, prompts: list[str]) -> EncodedPrompts:
        tokens = tokenize(self.tokenizer, prompts)
        return EncodedPrompts(encode_texts(self.model, tokens.ids), tokens.token_counts, tokens.truncated)

    def _encode_images(self, samples: Sequence[Sample]) -> torch.Tensor:
        return encode_images(self.model, torch.stack([self.preprocess(s.image) for s in samples]))

    def _score_batch(self, samples: list[Sample]) -> list[Score]:
        pairs = embed_pairs(samples, self._encode_prompts, self._encode_images)
        values = clipscore(pairs.text, pairs.image)
        return [Score(value, pairs.token_details(i)) for i, value in enumerate(values.tolist())]
