"""Flow-GRPO's per-prompt reward statistics: advantages against each prompt's buffered rewards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from evalsuite.errors import ConfigError


class PerPromptStatTracker:
    """Flow-GRPO's per-prompt running statistics (flow_grpo/stat_tracking.py, type "grpo").

    Each prompt keeps a buffer of all its rewards seen since the last ``clear()``; ``update`` appends the new
    rewards, then A = (r − mean(buffer)) / (std + eps) with std the biased std of the buffer, or with
    ``global_std`` the std of this call's rewards (all prompts). Flow-GRPO's training scripts call
    ``clear()`` after every update, so in practice the buffer is the current batch; leaving it uncleared
    (optionally capped by ``max_history`` rewards per prompt, oldest dropped) gives statistics across steps.
    NaN rewards are not buffered and get advantage 0 (Flow-GRPO has no notion of not-applicable).
    """

    def __init__(
        self,
        global_std: bool = False,
        eps: float = 1e-4,
        *,
        unbiased: bool = False,
        max_history: int | None = None,
    ) -> None:
        if max_history is not None and max_history < 1:
            raise ConfigError(f"max_history must be >= 1 or None, got {max_history}")
        self.global_std = global_std
        self.eps = eps
        self.unbiased = unbiased
        self.max_history = max_history
        self.buffers: dict[str, list[float]] = {}
        self.history_prompts: set[str] = set()

    def update(self, prompts: Sequence[str], rewards: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """prompts: B strings; rewards: (B,). Returns (B,) float32 advantages (float64 maths as Flow-GRPO)."""
        r = torch.as_tensor(rewards, dtype=torch.float64).detach().cpu().reshape(-1)
        if len(prompts) != r.numel():
            raise ConfigError(f"{len(prompts)} prompts for {r.numel()} rewards")
        valid = torch.isfinite(r)
        values = r.tolist()
        for prompt, value, ok in zip(prompts, values, valid.tolist()):
            self.history_prompts.add(prompt)
            buf = self.buffers.setdefault(prompt, [])
            if ok:
                buf.append(value)
        if self.max_history is not None:
            for prompt in set(prompts):
                del self.buffers[prompt][: -self.max_history]
        stats = {}
        for prompt in set(prompts):
            buf = torch.tensor(self.buffers[prompt], dtype=torch.float64)
            zero = torch.tensor(0.0, dtype=torch.float64)
            stats[prompt] = (buf.mean(), self._std(buf)) if buf.numel() else (zero, zero)
        global_std = self._std(r[valid])
        adv = torch.zeros_like(r)
        for i, (prompt, ok) in enumerate(zip(prompts, valid.tolist())):
            if ok:
                mean, std = stats[prompt]
                adv[i] = (r[i] - mean) / ((global_std if self.global_std else std) + self.eps)
        return adv.float()

    def _std(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() < (2 if self.unbiased else 1):
            return torch.tensor(0.0, dtype=torch.float64)
        return x.std(correction=1 if self.unbiased else 0)

    def stats(self) -> tuple[float, int]:
        """(average buffered rewards per prompt, prompts ever seen), as Flow-GRPO's get_stats."""
        avg = sum(len(v) for v in self.buffers.values()) / len(self.buffers) if self.buffers else 0.0
        return avg, len(self.history_prompts)

    def clear(self) -> None:
        """Forget the buffers (not the prompt history), as Flow-GRPO does after every update."""
        self.buffers = {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state; rewards are stored as Python floats (float64), so resume is exact."""
        return {
            "global_std": self.global_std,
            "eps": self.eps,
            "unbiased": self.unbiased,
            "max_history": self.max_history,
            "buffers": {k: list(v) for k, v in self.buffers.items()},
            "history_prompts": sorted(self.history_prompts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_std = bool(state["global_std"])
        self.eps = float(state["eps"])
        self.unbiased = bool(state["unbiased"])
        self.max_history = state["max_history"]
        self.buffers = {k: [float(x) for x in v] for k, v in state["buffers"].items()}
        self.history_prompts = set(state["history_prompts"])
