"""PickScore (Kirstain et al. 2023): a CLIP ViT-H-14 fine-tuned on Pick-a-Pic human preferences.

score = exp(logit_scale) · cos(text_embed, image_embed), exactly the PickScore README's formula, raw by
default (≈18–24 on real images; papers report raw numbers). ``normalize=True`` divides by 26, the scaling
Flow-GRPO trains with (a reward of roughly [0, 1]).

Prompts longer than CLIP's 77 tokens (``<|startoftext|>`` and ``<|endoftext|>`` included) are truncated,
as the official code does (``truncation=True, max_length=77``); every sample reports ``token_count``
(before truncation) and ``truncated`` so dense prompts are never cut silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from evalsuite.reward import Reward, Score
from evalsuite.rewards.clip_family import EncodedPrompts, cosine, embed_pairs
from evalsuite.sample import Sample

__all__ = [
    "DEFAULT_PROCESSOR", "FLOW_GRPO_NORMALIZER", "MAX_TOKENS", "PickScore", "cosine", "features", "pickscore",
]

DEFAULT_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
FLOW_GRPO_NORMALIZER = 26.0
MAX_TOKENS = 77  # CLIP's text context, special tokens included


def features(output: Any, kind: str) -> torch.Tensor:
    """The projected embedding from ``get_{image,text}_features``, whichever type transformers returned.

    transformers < 5 returns the tensor; transformers 5 returns a ``BaseModelOutputWithPooling`` whose
    ``pooler_output`` holds the *projected* embedding (some models name it ``image_embeds``/``text_embeds``).
    """
    if isinstance(output, torch.Tensor):
        return output
    for attr in (f"{kind}_embeds", "pooler_output"):
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(
        f"get_{kind}_features returned {type(output).__name__} with no {kind}_embeds / pooler_output tensor"
    )


def pickscore(
    text_embeds: torch.Tensor, image_embeds: torch.Tensor, logit_scale: float, normalizer: float | None = None
) -> torch.Tensor:
    """Pure rule: per pair i, ``exp(logit_scale) · cos(text_i, image_i)`` (÷ ``normalizer`` if given).

    ``logit_scale`` is the model's *log* scale (the parameter), as stored in the checkpoint.
    """
    scores = math.exp(logit_scale) * cosine(text_embeds, image_embeds)
    return scores / normalizer if normalizer else scores


class PickScore(Reward):
    """PickScore_v1 through transformers' ``CLIPModel``; batched (one image and one text forward per batch).

    ``processor``: where the image processor + tokenizer come from. Default: the model folder itself when it
    has processor files (a local copy, the tiny test model), else ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``
    as the official code does (PickScore_v1 ships no processor).
    """

    name = "pickscore"
    default_model = "yuvalkirstain/PickScore_v1"
    backend = "transformers"

    def __init__(
        self,
        model: str | None = None,
        *,
        processor: str | None = None,
        normalize: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.processor_id = processor or self._default_processor(self.model_id)
        self.normalize = bool(normalize)

    @staticmethod
    def _default_processor(model_id: str) -> str:
        folder = Path(model_id)
        if (folder / "preprocessor_config.json").is_file() or (folder / "processor_config.json").is_file():
            return model_id
        return DEFAULT_PROCESSOR

    def settings(self) -> dict[str, Any]:
        return {
            "processor": self.processor_id,
            "normalize": self.normalize,
            "normalizer": FLOW_GRPO_NORMALIZER if self.normalize else None,
            "max_text_tokens": MAX_TOKENS,
        }

    def _load(self) -> None:
        from transformers import AutoProcessor, CLIPModel

        proc_revision = self.revision if self.processor_id == self.model_id else None
        # PIL resizing, as the README's transformers 4.x processor did: v5's default torchvision backend
        # lands one uint8 level off on some pixels (2e-4 relative in the score; docs/parity.md)
        self.processor = AutoProcessor.from_pretrained(
            self.processor_id, revision=proc_revision, backend="pil"
        )
        model = CLIPModel.from_pretrained(self.model_id, revision=self.revision, dtype=torch.float32)
        # Read the scale in float32 before any cast: in bf16, log(100) rounds to 4.59 and exp() drifts by 1 %.
        self.logit_scale = float(model.logit_scale.detach())
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)

    @torch.inference_mode()
    def _encode_prompts(self, prompts: list[str]) -> EncodedPrompts:
        """Text embeds per distinct prompt, cut to 77 tokens as the official code does; uncut token counts."""
        uncut = self.processor.tokenizer(prompts, truncation=False, padding=False, verbose=False)["input_ids"]
        counts = [len(ids) for ids in uncut]
        texts = self.processor(
            text=prompts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        ids, mask = texts["input_ids"].to(self.device), texts["attention_mask"].to(self.device)
        embeds = features(self.model.get_text_features(input_ids=ids, attention_mask=mask), "text")
        return EncodedPrompts(embeds, counts, [n > MAX_TOKENS for n in counts])

    @torch.inference_mode()
    def _encode_images(self, samples: Sequence[Sample]) -> torch.Tensor:
        images = self.processor(images=[s.image for s in samples], return_tensors="pt")
        pixels = images["pixel_values"].to(device=self.device, dtype=self.dtype)
        return features(self.model.get_image_features(pixel_values=pixels), "image")

    def _score_batch(self, samples: list[Sample]) -> list[Score]:
        pairs = embed_pairs(samples, self._encode_prompts, self._encode_images)
        raw = pickscore(pairs.text, pairs.image, self.logit_scale)
        values = raw / FLOW_GRPO_NORMALIZER if self.normalize else raw
        cos = pairs.cosine()
        return [
            Score(value, {"raw": r, "cosine": c, **pairs.token_details(i)})
            for i, (value, r, c) in enumerate(zip(values.tolist(), raw.tolist(), cos.tolist()))
        ]
