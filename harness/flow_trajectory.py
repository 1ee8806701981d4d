"""What a flow rollout carries: its conditioning rows, the trajectory, and PromptLoop's refine request.

Plain data shared by the flow policy (which fills them) and the Flow-GRPO trainer (which replays them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image


@dataclass
class Conditioning:
    """Everything the transformer needs besides latents and σ, batched by row (one row per image)."""

    prompt_embeds: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor  # (B, P)
    text_ids: torch.Tensor | None = None  # (L, 3) FLUX's text positions
    img_ids: torch.Tensor | None = None  # (S [+ S_src], 3) FLUX's image positions
    guidance: torch.Tensor | None = None  # (B,) guidance embedding value, distilled models only
    negative_embeds: torch.Tensor | None = None  # CFG branch (negative prompt), CFG models only
    negative_pooled: torch.Tensor | None = None
    cfg_scale: float = 1.0
    source_latents: torch.Tensor | None = None  # (B, S_src, C) packed Kontext source tokens

    def rows(self, index: torch.Tensor | slice | list[int]) -> Conditioning:
        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        return replace(
            self,
            prompt_embeds=self.prompt_embeds[index],
            pooled=self.pooled[index],
            guidance=pick(self.guidance),
            negative_embeds=pick(self.negative_embeds),
            negative_pooled=pick(self.negative_pooled),
            source_latents=pick(self.source_latents),
        )


@dataclass
class Trajectory:
    """One batch of rollouts. ``latents[:, j]`` is the input of step j, ``latents[:, j + 1]`` its output
    (fp32, in the family's latent layout); ``log_probs[:, j]`` is NaN on ODE steps. ``sigmas`` has
    num_steps + 1 entries."""

    latents: torch.Tensor  # (B, N + 1, *latent shape) float32, e.g. FLUX (S, C), SD3 (C, h, w)
    log_probs: torch.Tensor  # (B, N) float32
    sigmas: torch.Tensor  # (N + 1,) float32
    sde_steps: list[int]
    cond: Conditioning
    height: int
    width: int
    noise_level: float
    sde_type: str
    images: list[Image.Image] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)  # PromptLoop: what was refined when

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[1]) if len(self.sigmas) > 1 else 0.0


@dataclass
class RefineRequest:
    """What a mid-trajectory hook (PromptLoop) sees at step ``step``: the decoded x̂0 previews."""

    step: int
    sigma: float
    previews: list[Image.Image]
    rows: list[int]  # the batch rows (trajectory indexes) the previews belong to


RefineHook = Callable[[RefineRequest], "list[str] | None"]
