"""Helpers shared by the tiny-model writers: seeding, parameter counting and call-time references."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["component_seed", "count_parameters", "resolve", "seeded"]


def component_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed derived from the user seed and a component path, stable across processes and platforms.

    Each model and each of its components gets its own stream, so ``flux`` and ``flux-kontext`` differ and
    resizing one component never changes another's weights. (Python's ``hash()`` is salted per process, so
    it is not usable here.)
    """
    digest = hashlib.sha256(":".join((str(seed), *parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@contextlib.contextmanager
def seeded(seed: int, *parts: str) -> Iterator[None]:
    """Build modules on the CPU in float32 under a derived seed; the caller's RNG state, default dtype and
    default device are left as they were (weights must not depend on the user's torch settings)."""
    previous_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(component_seed(seed, *parts))
        torch.set_default_dtype(torch.float32)
        try:
            yield
        finally:
            torch.set_default_dtype(previous_dtype)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in module.parameters())


def resolve(ref: str) -> Any:
    """The object a ``"module:attr"`` string names, imported now (call time, never at module import).

    The tiny writers reach a reward's format constants this way, so importing the kit imports no reward.
    """
    module_name, attr = ref.split(":")
    return getattr(importlib.import_module(module_name), attr)
