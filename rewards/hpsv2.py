"""HPSv2 / HPSv2.1 (Wu et al. 2023): open_clip ViT-H-14 fine-tuned on human preferences (HPD v2).

The official scorer (``hpsv2/img_score.py`` ``score``) builds open_clip ``ViT-H-14`` (laion2B-s32B-b79K
architecture, GELU), loads ``torch.load(cp)['state_dict']`` over it (hub ``xswu/HPSv2``, file
``HPS_v2.1_compressed.pt`` or ``HPS_v2_compressed.pt``) and reports the diagonal of
``image_features @ text_features.T`` with both features L2-normalised: a plain cosine, no logit scale
(≈0.2–0.35 on real images). The checkpoint replaces every weight (strict load), so we build the
architecture without downloading the laion2B base weights it would overwrite.

Image preprocessing is HPSv2's own validation transform (``light_augmentation=True``), not open_clip's
centre crop: ``ToTensor``, then the longest side resized to 224 (bicubic, on the float tensor) and the
short side padded with zeros (black, before normalisation) to a square, then the OpenAI mean/std. One
deviation: when the longest side is already 224 the official code neither resizes nor pads, so a
non-square image of that size crashes its ViT; we pad it (what it does for every other size).

Text: open_clip's ViT-H-14 tokenizer, truncated to 77 tokens with ``<|endoftext|>`` kept last, as the
official code does silently; every sample reports ``token_count`` and ``truncated``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.reward import Reward, Score
from evalsuite.rewards.clip_family import EncodedPrompts, cosine, embed_pairs
from evalsuite.rewards.clip_models import (
    CONFIG_FILE,
    encode_images,
    encode_texts,
    load_open_clip,
    resolve_checkpoint,
    tokenize,
)
from evalsuite.sample import Sample

__all__ = ["ARCHITECTURE", "BASE_PRETRAINED", "CHECKPOINTS", "HPSv2", "hps_preprocess", "hpsv2_score"]

# The official ``hps_version_map`` (hpsv2/utils.py): version -> file in the hub repo xswu/HPSv2.
CHECKPOINTS: dict[str, str] = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
ARCHITECTURE = "ViT-H-14"
BASE_PRETRAINED = "laion2B-s32B-b79K"  # what the official code downloads before overwriting every weight


def hpsv2_score(text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
    """Pure rule: per pair i, ``cos(text_i, image_i)`` — the diagonal of normalised image @ text.T."""
    return cosine(text_embeds, image_embeds)


def hps_preprocess(
    image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """HPSv2's validation transform (``ResizeMaxSize``): longest side to ``size``, zero-pad, normalise.

    Order matters and is the official one: the resize runs on the float tensor (torchvision's tensor
    bicubic, which may overshoot [0, 1]), the padding is 0 before normalisation, padding is split
    ``pad // 2`` left/top and the rest right/bottom, and sizes round with Python's ``round``.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    pixels = tvf.to_tensor(image)
    height, width = pixels.shape[1:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_size = [round(height * scale), round(width * scale)]
        pixels = tvf.resize(pixels, new_size, InterpolationMode.BICUBIC)
        height, width = new_size
    pad_h, pad_w = size - height, size - width
    if pad_h or pad_w:  # the official code skips this when scale == 1 (see the module docstring)
        pixels = tvf.pad(pixels, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return tvf.normalize(pixels, list(mean), list(std))


class HPSv2(Reward):
    """HPSv2.1 (default) or HPSv2.0 through open_clip; one image and one text forward per batch.

    ``model``: the hub repo (default ``xswu/HPSv2``), a folder holding the checkpoint, or the checkpoint
    file. A folder (or the file's folder) in open_clip's ``local-dir`` layout (``open_clip_config.json``)
    gives the architecture, as the tiny test model does; otherwise ``architecture`` (``ViT-H-14``).
    ``version``: ``"v2.1"`` or ``"v2.0"`` picks the official file name; ``checkpoint`` overrides it.
    """

    name = "hpsv2"
    default_model = "xswu/HPSv2"
    backend = "open_clip"

    def __init__(
        self,
        model: str | None = None,
        *,
        version: str = "v2.1",
        checkpoint: str | None = None,
        architecture: str = ARCHITECTURE,
        **kwargs: Any,
    ) -> None:
        if version not in CHECKPOINTS:
            raise ConfigError(f"hpsv2: unknown version {version!r}; choose from {sorted(CHECKPOINTS)}")
        super().__init__(model, **kwargs)
        self.version = version
        self.checkpoint = checkpoint or CHECKPOINTS[version]
        self.architecture = _local_architecture(str(self.model_id)) or architecture

    def settings(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "checkpoint": self.checkpoint,
            "architecture": self.architecture,
            "base_pretrained": f"{BASE_PRETRAINED} (architecture only; the checkpoint replaces every weight)",
            "preprocess": "HPSv2 ResizeMaxSize (longest side, zero pad)",
            "scale": "cosine in [-1, 1], no logit scale (about 0.2-0.35 on real images)",
            "max_text_tokens": 77,
        }

    def _load(self) -> None:
        file = resolve_checkpoint(str(self.model_id), self.checkpoint, self.revision)
        self.model, _, self.tokenizer = load_open_clip(
            self.architecture, device=self.device, dtype=self.dtype, overlay=file
        )
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(self.model)
        size = cfg["size"]
        if not isinstance(size, int):
            if size[0] != size[1]:
                raise ConfigError(f"hpsv2: the official transform needs a square input, model has {size}")
            size = size[0]
        self.image_size, self.mean, self.std = int(size), tuple(cfg["mean"]), tuple(cfg["std"])

    def _encode_prompts(self, prompts: list[str]) -> EncodedPrompts:
        tokens = tokenize(self.tokenizer, prompts)
        return EncodedPrompts(encode_texts(self.model, tokens.ids), tokens.token_counts, tokens.truncated)

    def _encode_images(self, samples: Sequence[Sample]) -> torch.Tensor:
        pixels = [hps_preprocess(s.image, self.image_size, self.mean, self.std) for s in samples]
        return encode_images(self.model, torch.stack(pixels))

    def _score_batch(self, samples: list[Sample]) -> list[Score]:
        pairs = embed_pairs(samples, self._encode_prompts, self._encode_images)
        values = hpsv2_score(pairs.text, pairs.image)
        return [Score(value, pairs.token_details(i)) for i, value in enumerate(values.tolist())]


def _local_architecture(model: str) -> str | None:
    """The folder whose ``open_clip_config.json`` describes the architecture (model folder or file's)."""
    path = Path(model).expanduser()
    folder = path.parent if path.is_file() else path
    return str(folder) if (folder / CONFIG_FILE).is_file() else None
