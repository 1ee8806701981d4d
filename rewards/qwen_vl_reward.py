"""The part HPSv3 and EditReward share: a Qwen-VL reward model built from a base model (config, processor)
and a checkpoint (backbone + MLP heads read at ``<|Reward|>``), with a qwen-vl-utils pixel budget.

EditReward's code grew out of HPSv3's, so both load the same way; each subclass names its backbone class,
checkpoint files and head prefix, rebuilds its own head layout and builds its own prompts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from evalsuite import qwen_vl as qvl
from evalsuite.reward import Reward

OFFICIAL_PIXELS = 256 * 28 * 28  # both inferencers' min_pixels = max_pixels (~448x448, 256 tokens)


class QwenVLRewardModel(Reward):
    """Base for the Qwen-VL reward models: settings, loading, and the forward at the reward token."""

    backend = "transformers"
    base_model_id: ClassVar[str]  # the hub model whose config and processor the checkpoint was trained on
    backbone_class: ClassVar[str]  # transformers class of the backbone without LM head
    checkpoint_files: ClassVar[tuple[str, ...]]
    head_prefix: ClassVar[str]

    def __init__(
        self,
        model: str | None = None,
        *,
        base_model: str | None = None,
        base_revision: str | None = None,
        min_pixels: int = OFFICIAL_PIXELS,
        max_pixels: int = OFFICIAL_PIXELS,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        qvl.check_pixel_budget(min_pixels, max_pixels)
        self.base_model = base_model or self.base_model_id
        self.base_revision = base_revision
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels

    def settings(self) -> dict[str, Any]:
        return {
            "base_model": self.base_model,
            "base_revision": self.base_revision,
            **self.head_settings(),
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "positions": "1-D (as the official forward)",
        }

    def head_settings(self) -> dict[str, Any]:
        """The subclass's head and prompt settings, for ``describe()``."""
        return {}

    def build_heads(self, head_state: Mapping[str, torch.Tensor]) -> list[nn.Module]:
        """The official heads from the checkpoint's head weights (keys without ``head_prefix``)."""
        raise NotImplementedError

    def _load(self) -> None:
        loaded = qvl.load_reward_model(self.backbone_class, self.model_id, self.revision,
                                       self.checkpoint_files, self.base_model, self.base_revision,
                                       self.head_prefix, self.dtype, self.name)
        heads = self.build_heads(loaded.head_state)
        self._processor, self._reward_id, self._pad_id = loaded.processor, loaded.reward_id, loaded.pad_id
        self._backbone = loaded.backbone.to(self.device)
        self._heads = nn.ModuleList(heads).to(self.device).eval()
        self._max_positions = loaded.max_positions
