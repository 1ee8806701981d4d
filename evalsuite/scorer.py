"""Contracts of the model scorers that are not rewards: yes/no VQA backends and pairwise judges.

Benchmarks and the comparison code build on these; the models behind them live in ``evalsuite.rewards``
and are reached by registered name (registry kind ``scorers``), so neither side imports the other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

PREFERENCES = ("image_a", "image_b", "tie")


# -- yes/no VQA ------------------------------------------------------------------------------------
@runtime_checkable
class VQABackend(Protocol):
    def answer(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[str]:
        """One answer per (image, question) pair."""
        ...


def describe_vqa(backend: Any) -> dict[str, Any]:
    """``backend.describe()`` if it has one, else its class name: always names ``vqa`` and ``vqa_model``."""
    desc = dict(backend.describe()) if hasattr(backend, "describe") else {}
    desc.setdefault("vqa", f"{type(backend).__module__}.{type(backend).__qualname__}")
    desc.setdefault("vqa_model", None)
    return desc


def check_pairs(images: Sequence[Any], questions: Sequence[str]) -> None:
    if len(images) != len(questions):
        raise ValueError(f"VQA: {len(images)} images but {len(questions)} questions (one image per question)")
    for q in questions:
        if not isinstance(q, str):
            raise TypeError(f"VQA: questions must be str, got {type(q).__name__}")


# -- pairwise judges -------------------------------------------------------------------------------
@dataclass
class Judgement:
    """One pairwise verdict. ``preference`` is None when the judge failed (never read as a tie)."""

    preference: str | None
    reasoning: str = ""
    raw: str = ""
    attempts: int = 1
    error: str | None = None
    errors: list[str] = field(default_factory=list)  # one entry per failed attempt, for debugging
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.preference is not None


class PairJudge(ABC):
    """``judge(caption, image_a, image_b)``: image_a is shown first ("Image A"), image_b second."""

    max_concurrency: int = 1  # pairs judged at once by compare_runs (thread pool size)

    @abstractmethod
    def judge(self, caption: str, image_a: Image.Image, image_b: Image.Image) -> Judgement: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Everything that changes verdicts (model, prompt version, decoding), for manifests."""
