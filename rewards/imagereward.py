"""ImageReward (THUDM/ImageReward, checkpoint "ImageReward-v1.0"), batched, on transformers' BLIP modules.

The official package (``image-reward``) does not import under transformers 5, so this module reads the
official checkpoint format itself -- ``ImageReward.pt`` (a flat state dict of the official ``ImageReward``
module) plus ``med_config.json`` (the BERT text encoder's config) -- and converts the official key names
(:mod:`.imagereward_checkpoint`) onto

* ``transformers.BlipVisionModel`` -- the official BLIP ViT (``blip.visual_encoder``: timm-style pre-norm
  blocks with a fused qkv projection, LayerNorm eps 1e-6, exact GELU, head dim 64);
* ``transformers.BlipTextModel`` with cross-attention layers (``blip.text_encoder``: BLIP's ``med.py`` BERT,
  no token-type embeddings, cross-attention to the image tokens in every layer), run bidirectionally;
* :class:`ImageRewardHead` -- the official ``MLP(768)``: Linear 768->1024->128->64->16->1. Its ReLUs are
  commented out in the official code and its dropouts are inactive at inference, so it is a chain of affine
  maps (the official widths are 1024, 128, 64, 16, 1; "1024->512->..." in some write-ups is wrong).

Official scoring (``ImageReward.score`` / ``inference_rank``): the prompt is tokenized by the BLIP BERT
tokenizer (bert-base-uncased plus ``[DEC]``/``[ENC]``) with ``padding="max_length", truncation=True,
max_length=35``; each image goes through ``Resize(224, bicubic)``, ``CenterCrop(224)``, ``ToTensor`` and
CLIP's mean/std; the text encoder runs on the *unmodified* ids (first token ``[CLS]``: the scorer does not
swap in ``[ENC]``) with the padding mask and an all-ones image mask; the ``[CLS]`` hidden state goes through
the MLP; the score is ``(s - 0.16717362830052426) / 1.0333394966054072``.

Differences from the official path, none of which change the numbers beyond floating-point noise: images
are scored as one batch instead of one at a time, and each sample may carry its own prompt. Because every
prompt is padded to exactly 35 tokens (as officially), batch composition cannot change a sample's inputs.

**Prompts longer than 35 tokens are truncated** (``[CLS]`` + the first 33 word pieces + ``[SEP]``), exactly
as the official scorer does: the rest of a dense prompt is not seen. Every score reports ``n_tokens`` and a
``truncated`` flag so that this is visible per sample.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from evalsuite.errors import ConfigError
from evalsuite.reward import Reward, Score
from evalsuite.rewards import imagereward_checkpoint as checkpoint
from evalsuite.sample import Sample

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "MAX_TEXT_TOKENS",
    "SCORE_MEAN",
    "SCORE_STD",
    "ImageReward",
    "ImageRewardHead",
    "ImageRewardModel",
    "normalize_score",
    "preprocess_images",
    "tokenize_prompts",
]

# Official constants (ImageReward/ImageReward.py).
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072
MAX_TEXT_TOKENS = 35
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# What the official ``init_tokenizer`` loads ("bert-base-uncased", now hosted under google-bert/).
DEFAULT_TOKENIZER = "google-bert/bert-base-uncased"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


# ----------------------------------------------------------------------------------------------- pure rules


def normalize_score(raw: float) -> float:
    """The official normalization of the MLP output: ``(s - mean) / std``."""
    return (raw - SCORE_MEAN) / SCORE_STD


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Token ids and mask exactly as the official scorer builds them (padded/truncated to 35), and each
    prompt's untruncated length (with ``[CLS]``/``[SEP]``) so truncation can be reported."""
    enc = tokenizer(
        list(prompts), padding="max_length", truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt"
    )
    full = tokenizer(list(prompts), truncation=False, verbose=False)["input_ids"]
    return enc["input_ids"], enc["attention_mask"], [len(ids) for ids in full]


def _resize_crop(image: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size`` with PIL bicubic (what torchvision's ``Resize`` does for PIL input), then
    torchvision's center crop; HxWx3 uint8."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    return np.asarray(image.crop((left, top, left + size, top + size)).convert("RGB"), dtype=np.uint8)


def preprocess_images(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """The official transform (resize, center crop, RGB, ``ToTensor``, CLIP mean/std) for a batch of PIL
    images: Bx3xSxS float32, bit-identical to torchvision's per image. The arithmetic runs once per batch."""
    pixels = torch.from_numpy(np.stack([_resize_crop(im, size) for im in images]))
    pixels = pixels.permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return pixels.sub(mean).div(std)


# ------------------------------------------------------------------------------------------------ the model


class ImageRewardHead(nn.Module):
    """The official MLP head without its (inactive at inference) dropouts: affine maps, no activations."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for linear in self.linears:
            features = linear(features)
        return features


class ImageRewardModel(nn.Module):
    """BLIP ViT + cross-attention BERT + MLP head; ``forward`` returns the raw (unnormalized) scores."""

    def __init__(self, vision: nn.Module, text: nn.Module, head: ImageRewardHead) -> None:
        super().__init__()
        self.vision = vision
        self.text = text
        self.head = head

    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    @classmethod
    def from_official(
        cls, state_dict: Mapping[str, torch.Tensor], med_config: Mapping[str, Any]
    ) -> tuple[ImageRewardModel, checkpoint.ConvertedCheckpoint]:
        """Build the modules from the official checkpoint; every module weight must come from it (strict)."""
        from transformers import BlipTextModel, BlipVisionModel

        conv = checkpoint.convert_imagereward_state_dict(state_dict)
        vision_config = checkpoint.vision_config(conv.vision)
        vision = BlipVisionModel(vision_config)
        text_config = checkpoint.text_config(med_config, vision_config.hidden_size)
        text = BlipTextModel(text_config, add_pooling_layer=False)
        n_head = len(conv.head) // 2
        widths = [conv.head[f"linears.{i}.weight"].shape[1] for i in range(n_head)]
        head = ImageRewardHead([*widths, conv.head[f"linears.{n_head - 1}.weight"].shape[0]])
        for module, weights in ((vision, conv.vision), (text, conv.text), (head, conv.head)):
            try:
                module.load_state_dict(weights, strict=True)
            except RuntimeError as e:  # missing or mis-shaped weights: a truncated or foreign checkpoint
                raise ConfigError(f"ImageReward checkpoint does not fit the architecture: {e}") from e
        return cls(vision, text, head).eval(), conv

    def to_runtime(self, device: torch.device, dtype: torch.dtype) -> ImageRewardModel:
        """Encoders in ``dtype``; the small head stays float32 (the official code casts features to float)."""
        self.vision.to(device=device, dtype=dtype)
        self.text.to(device=device, dtype=dtype)
        self.head.to(device=device, dtype=torch.float32)
        return self

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        # The image mask is all ones officially; passing none is the same (no key is masked).
        text = self.text(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds
        )
        return self.head(text.last_hidden_state[:, 0, :].float()).squeeze(-1)


# ----------------------------------------------------------------------------------------------- loading


def _load_tokenizer(source: str | Path):
    """The BLIP tokenizer: BERT WordPiece plus ``[DEC]`` (bos) and ``[ENC]``, as ``init_tokenizer`` has it."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(source))
    vocab = tokenizer.get_vocab()
    if "[DEC]" not in vocab or tokenizer.bos_token != "[DEC]":
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    if "[ENC]" not in vocab:
        tokenizer.add_special_tokens({"extra_special_tokens": ["[ENC]"]})
    return tokenizer


# ----------------------------------------------------------------------------------------------- the reward


class ImageReward(Reward):
    """ImageReward-v1.0 human-preference score of (prompt, image), normalized like the official scorer.

    ``model`` is a hub repo holding ``ImageReward.pt`` + ``med_config.json`` (default ``THUDM/ImageReward``),
    a local folder with those files, or the path of the weights file (``med_config.json`` beside it).
    ``tokenizer``: where the BERT tokenizer comes from; by default the checkpoint folder's tokenizer files if
    it has any, else ``google-bert/bert-base-uncased`` (the official code loads ``bert-base-uncased``).

    Prompts are truncated to 35 tokens as in the official code (details: ``truncated``, ``n_tokens``).
    Known hazard as an RL reward: image corruption / reward hacking has been reported on FLUX.
    """

    name = "imagereward"
    default_model = "THUDM/ImageReward"
    license = "Apache-2.0"  # THUDM/ImageReward model card
    backend = "transformers (BLIP modules converted from the official ImageReward.pt)"

    def __init__(self, model: str | None = None, *, tokenizer: str | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.tokenizer_id = tokenizer
        self.ignored_keys: tuple[str, ...] = ()

    def settings(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer_id or "auto",
            "max_text_tokens": MAX_TEXT_TOKENS,
            "normalization": {"mean": SCORE_MEAN, "std": SCORE_STD},
        }

    def _load(self) -> None:
        weights, med_path, folder = checkpoint.resolve_files(str(self.model_id), self.revision)
        med_config = json.loads(med_path.read_text(encoding="utf-8"))
        model, conv = ImageRewardModel.from_official(checkpoint.read_state_dict(weights), med_config)
        self.ignored_keys = conv.ignored
        self._model = model.to_runtime(self.device, self.dtype)
        source: str | Path = self.tokenizer_id or DEFAULT_TOKENIZER
        has_files = folder is not None and any((folder / f).is_file() for f in _TOKENIZER_FILES)
        if self.tokenizer_id is None and has_files:
            source = folder
        self._tokenizer = _load_tokenizer(source)
        if len(self._tokenizer) > model.text.config.vocab_size:
            raise ConfigError(
                f"ImageReward: tokenizer {source} has {len(self._tokenizer)} tokens but the text encoder "
                f"only {model.text.config.vocab_size}"
            )

    def prepare(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """Model inputs for a batch (pixel values, official 35-token ids and mask) and per-prompt lengths."""
        pixels = preprocess_images([s.image for s in samples], self._model.image_size)
        input_ids, attention_mask, n_tokens = tokenize_prompts(self._tokenizer, [s.prompt for s in samples])
        return {
            "pixel_values": pixels.to(self.device, self.dtype),
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
            "n_tokens": n_tokens,
        }

    def _score_batch(self, samples: list[Sample]) -> list[Score]:
        inputs = self.prepare(samples)
        n_tokens = inputs.pop("n_tokens")
        with torch.inference_mode():
            raw = self._model(**inputs).cpu().tolist()
        return [
            Score(normalize_score(r), {"raw_score": r, "n_tokens": n, "truncated": n > MAX_TEXT_TOKENS})
            for r, n in zip(raw, n_tokens)
        ]
