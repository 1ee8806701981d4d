"""Seeds derived from (base seed, prompt id, image index), so any subset of a run reproduces exactly."""

from __future__ import annotations

import hashlib


def derive_seed(base_seed: int, prompt_id: str, index: int) -> int:
    """A 31-bit seed that depends only on its three inputs (not on batch, shard or order)."""
    digest = hashlib.sha256(f"{base_seed}\x00{prompt_id}\x00{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# How a benchmark sample's seed is chosen: "derived" (ours: ``derive_seed`` on the prompt *id*), or
# "prompt_sha256" (GenEval 2 as pinned by UniRL PR #236: from the prompt *text*, so the noise of an image
# depends only on what it depicts, whatever the prompt file's order or ids).
SEED_RULES = ("derived", "prompt_sha256")


def prompt_sha256_seed(base_seed: int, prompt: str, index: int) -> int:
    """UniRL's GenEval 2 seed: ``(base + big-endian int of sha256(prompt)[:4] + index) % 2**31``."""
    prompt_hash = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
    return (base_seed + prompt_hash + index) % 2**31


def sample_seed(rule: str, base_seed: int, prompt_id: str, prompt: str, index: int) -> int:
    """The seed of image ``index`` of a prompt under seed rule ``rule`` (one of ``SEED_RULES``)."""
    if rule == "derived":
        return derive_seed(base_seed, prompt_id, index)
    if rule == "prompt_sha256":
        return prompt_sha256_seed(base_seed, prompt, index)
    raise ValueError(f"unknown seed rule {rule!r} (known: {', '.join(SEED_RULES)})")
