"""The benchmark contract: prompts with metadata, images per prompt, per-sample scoring, aggregation.

Tasks are data plus small hooks (lm-evaluation-harness style): a benchmark reads its prompt files
through ``evalsuite.data``, scores each sample with rules from the reward library, and aggregates
the per-sample table into the official summary table.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from evalsuite.sample import Sample
from evalsuite.seeding import sample_seed

_UNSAFE = str.maketrans({c: "_" for c in '/\\:*?"<>|\0'})


def safe_name(text: str, max_len: int = 200) -> str:
    """A file-name-safe version of ``text`` (path separators and reserved characters replaced)."""
    name = text.translate(_UNSAFE).strip() or "_"
    return name[:max_len]


def split_sample_id(sample: Sample) -> tuple[str, int]:
    """(prompt record id, image index) of a sample made by ``Benchmark.samples``."""
    record_id, _, index = sample.id.rpartition("/")
    return record_id, int(index)


@dataclass(frozen=True)
class PromptRecord:
    """One benchmark prompt; ``id`` is stable across runs and names the output folder or file."""

    id: str
    prompt: str
    metadata: dict[str, Any] = field(default_factory=dict)


class Benchmark(ABC):
    name: ClassVar[str] = ""
    images_per_prompt: ClassVar[int] = 4
    data_files: ClassVar[tuple[str, ...]] = ()  # keys of evalsuite.data.DATA_FILES it reads

    @abstractmethod
    def prompts(self, data_dir: str | None = None) -> list[PromptRecord]:
        """All prompts, in the benchmark's official order."""

    @abstractmethod
    def score(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        """One flat record per sample (keys become columns of the per-sample table)."""

    @abstractmethod
    def aggregate(self, per_sample):
        """The official summary table (a ``pandas.DataFrame``) from the per-sample table."""

    def describe(self) -> dict[str, Any]:
        """Backend and mode of every scorer, so a result says what produced it."""
        return {"name": self.name, "images_per_prompt": self.images_per_prompt}

    def summary(self, table, per_sample) -> dict[str, Any]:
        """Headline numbers for results.json and the leaderboard (default: the table's mean columns)."""
        numeric = table.select_dtypes("number")
        return {str(c): float(numeric[c].mean()) for c in numeric.columns}

    # -- layout: where images live, so official folder layouts can be read and written ----------
    def image_path(self, sample: Sample) -> str:
        """Path of a sample's image relative to the run (or images) directory."""
        record_id, index = split_sample_id(sample)
        return f"images/{safe_name(record_id)}/{index:04d}.png"

    def write_layout(self, out_dir, records: Sequence[PromptRecord]) -> None:
        """Write whatever else the official layout needs next to the images (default: nothing)."""
        del out_dir, records

    def samples(
        self, records: Sequence[PromptRecord], *, base_seed: int = 0, images_per_prompt: int | None = None,
        seed_rule: str = "derived",
    ) -> list[Sample]:
        """Empty samples (no image yet), seeded per (prompt, image index) by ``seed_rule``
        (``evalsuite.seeding.SEED_RULES``: derived from the prompt id, or a protocol's rule)."""
        n = images_per_prompt or self.images_per_prompt
        return [
            Sample(
                id=f"{r.id}/{k}",
                prompt=r.prompt,
                metadata=dict(r.metadata),
                seed=sample_seed(seed_rule, base_seed, r.id, r.prompt, k),
                group=r.id,
            )
            for r in records
            for k in range(n)
        ]
