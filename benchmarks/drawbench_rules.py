"""DrawBench "paper metrics" rules (DiffusionNFT ``scripts/evaluation.py``, Flow-GRPO): pure functions.

- Prompts: DiffusionNFT's ``dataset/drawbench/test.txt`` holds the 200 DrawBench prompts 5 times each,
  shuffled; its evaluator generates one image per line and averages over all 1000 images. Here: the
  200 unique prompts (first-appearance order) x 5 images, the same set of (prompt, image) pairs.
- Metric: per reward, the mean over every image it scored (the evaluator drops its failure value -10.0;
  here a failed or not-applicable image is NaN and is dropped the same way).
- Scale: ``raw`` is what the papers print (PickScore ~22, UnifiedReward 1-5); ``flowgrpo`` is what their
  code stores and trains on: PickScore / 26 and UnifiedReward / 5, every other reward unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

# The six reward columns of DiffusionNFT's evaluation.py, in its order.
PAPER_REWARDS: tuple[str, ...] = (
    "imagereward", "pickscore", "aesthetic", "clipscore", "hpsv2", "unifiedreward",
)
# The paper's model choice where the registered reward's default differs: CLIPScore on openai ViT-L/14
# (DiffusionNFT reports CLIP logits / 100, i.e. the cosine, as this reward does).
PAPER_REWARD_OPTIONS: dict[str, dict[str, object]] = {"clipscore": {"variant": "ViT-L-14"}}
NORMALIZERS: dict[str, dict[str, float]] = {
    "raw": {},
    "flowgrpo": {"pickscore": 26.0, "unifiedreward": 5.0},
}
COPIES_PER_PROMPT = 5  # lines per unique prompt in test.txt = images per prompt in the paper metric


def normalize(reward: str, value: float | None, mode: str) -> float | None:
    """``value`` on the scale ``mode`` asks for (``None`` stays ``None``)."""
    divisor = NORMALIZERS[check_normalize(mode)].get(reward)
    if value is None or divisor is None:
        return value
    return value / divisor


def check_normalize(mode: str) -> str:
    if mode not in NORMALIZERS:
        raise ValueError(f"normalize must be one of {sorted(NORMALIZERS)}, got {mode!r}")
    return mode


def unique_prompts(lines: Iterable[str]) -> list[str]:
    """The distinct prompts of a DrawBench listing in first-appearance order (lines ``.strip()``-ed, as the
    evaluator reads them; blank lines skipped)."""
    seen: dict[str, None] = {}
    for line in lines:
        prompt = line.strip()
        if prompt:
            seen.setdefault(prompt, None)
    return list(seen)


def pick_rewards(
    requested: Sequence[str] | None, registered: Iterable[str]
) -> tuple[list[str], list[str]]:
    """(rewards to score with, paper rewards skipped because nobody registered them).

    ``requested=None`` means the paper list: an unregistered one is skipped (the caller warns). A reward
    the user names explicitly must exist: ``ValueError`` naming the registered ones."""
    known = set(registered)
    if requested is None:
        return [r for r in PAPER_REWARDS if r in known], [r for r in PAPER_REWARDS if r not in known]
    names = list(dict.fromkeys(requested))
    if not names:
        raise ValueError("rewards is empty; name at least one reward")
    unknown = [r for r in names if r not in known]
    if unknown:
        raise ValueError(f"unknown rewards {unknown}; registered: {', '.join(sorted(known))}")
    return names, []


def finite_mean(values: Iterable[float | None]) -> float:
    """Mean over the finite values (NaN when there are none)."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(kept) / len(kept) if kept else math.nan
