"""DenseAlignBench (PromptEcho, arXiv 2604.12652): pairwise prompt adherence on 2000 dense captions.

There is no absolute score. Two runs (e.g. a fine-tuned model and its base) each render one image per
caption with ``evaluate()``; :func:`evalsuite.benchmarks.densealign_compare.compare_runs` then shows a VLM
judge each caption with the two images and asks which one follows it better (``image_a`` / ``image_b`` /
``tie``, adherence only). Reported: win / loss / tie rates of run A against run B and net = win − loss in
percentage points (published: Z-Image + PromptEcho vs base 61.5 / 34.7 / 3.8 → +26.8 pp), plus a
position-bias check; the statistics are in :mod:`evalsuite.benchmarks.densealign_rules`.

Prompt ids are the 0-based line indices of the official ``metadata.jsonl`` (written here as
``0000``…``1999``), as in the official ``dense_align_bench`` code (roooobotx/prompt_echo).

Scoring one run with ``evaluate()`` can add the judge-free PromptEcho reward as a companion absolute
metric (``companion="auto"`` uses it when it can be built; ``None`` turns it off; a ``Reward`` instance
is used as given).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalsuite.benchmark import Benchmark, PromptRecord, split_sample_id
from evalsuite.data import resolve
from evalsuite.errors import ConfigError
from evalsuite.reward import Reward
from evalsuite.sample import Sample
from evalsuite.store import atomic_write_text

log = logging.getLogger(__name__)

DATA_KEY = "densealignbench/metadata.jsonl"

def prompt_id(index: int) -> str:
    """Id of the caption on 0-based line ``index`` (zero-padded so ids sort in file order)."""
    return f"{index:04d}"


# -- the benchmark (generation + optional companion metric) ---------------------------------------
class DenseAlignBench(Benchmark):
    """The 2000 captions, one image each. Scoring is pairwise (``compare_runs``); ``score`` only adds
    the optional judge-free companion metric (PromptEcho) so a single run still has a number."""

    name = "densealignbench"
    images_per_prompt = 1
    data_files = (DATA_KEY,)

    @staticmethod
    def compare_runs(*args: Any, **kwargs: Any) -> Any:
        """Pairwise VLM judging of two runs (``densealign_compare.compare_runs``), for callers that reach
        the benchmark by registered name."""
        from evalsuite.benchmarks.densealign_compare import compare_runs

        return compare_runs(*args, **kwargs)

    def __init__(
        self,
        companion: str | Reward | None = "auto",
        *,
        companion_model: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | None = None,
        **companion_options: Any,
    ) -> None:
        self.companion: Reward | None = None
        self.companion_note: str | None = None
        if isinstance(companion, Reward):
            self.companion = companion
        elif companion in (None, "none", "off", False):
            self.companion_note = "disabled"
        elif isinstance(companion, str):
            kwargs = {
                k: v
                for k, v in {
                    "model": companion_model,
                    "device": device,
                    "dtype": dtype,
                    "batch_size": batch_size,
                }.items()
                if v is not None
            }
            name = "promptecho" if companion == "auto" else companion
            if companion_options:  # checked even for "auto": a typo is not "unavailable"
                from evalsuite.options import check_options
                from evalsuite.registry import registry

                check_options(f"densealignbench (companion {name})", registry.get("rewards", name),
                              companion_options)
            try:
                from evalsuite.registry import get_reward

                self.companion = get_reward(name, **kwargs, **companion_options)
            except Exception as e:
                if companion != "auto":
                    raise
                self.companion_note = f"unavailable ({type(e).__name__}: {e})"
                log.warning("densealignbench: no companion metric, %s cannot be built: %s", name, e)
        else:
            raise ConfigError(f"companion must be a reward name, a Reward, 'auto' or None, got {companion!r}")

    def prompts(self, data_dir: str | None = None) -> list[PromptRecord]:
        path = resolve(DATA_KEY, data_dir)
        records = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                caption = json.loads(line)["caption"]
                records.append(PromptRecord(prompt_id(i), caption, {"index": i}))
        return records

    def image_path(self, sample: Sample) -> str:
        record_id, index = split_sample_id(sample)
        return _image_name(record_id, index)

    def write_layout(self, out_dir, records: Sequence[PromptRecord]) -> None:
        """The official per-model ``metadata.jsonl`` (data_id, index, caption, filename), so a run folder
        is also an input of the official ``evaluate_pairwise.py``."""
        lines = [
            json.dumps(
                {
                    "data_id": r.id,
                    "index": r.metadata.get("index"),
                    "caption": r.prompt,
                    "filename": _image_name(r.id, 0),
                },
                ensure_ascii=False,
            )
            for r in records
        ]
        atomic_write_text(Path(out_dir) / "metadata.jsonl", "".join(line + "\n" for line in lines))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "images_per_prompt": self.images_per_prompt,
            "mode": "pairwise: verdicts come from compare_runs(); score is the companion metric only",
            "companion": self.companion.name if self.companion is not None else None,
        }
        if self.companion is not None:
            out["companion_backend"] = self.companion.backend
            out["companion_model"] = self.companion.model_id
            out["companion_settings"] = self.companion.describe()
        else:
            out["companion_note"] = self.companion_note
        return out

    def score(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        if self.companion is None:
            reason = f"no companion metric ({self.companion_note}); DenseAlignBench is judged pairwise"
            return [{"score": None, "reason": reason} for _ in samples]
        name = self.companion.name
        out = self.companion.score(samples)
        records = []
        for value, ok, details, error in zip(out.scores, out.applicable, out.details, out.errors):
            kept = value if ok else None
            rec: dict[str, Any] = {"score": kept, name: kept, "error": error}
            if details.get("not_applicable"):
                rec["reason"] = details["not_applicable"]
            rec.update({f"{name}.{k}": v for k, v in details.items() if k != "not_applicable"})
            records.append(rec)
        return records

    def aggregate(self, per_sample):
        import pandas as pd

        row: dict[str, Any] = {"n_images": len(per_sample)}
        if self.companion is not None and "score" in per_sample:
            scores = pd.to_numeric(per_sample["score"], errors="coerce")
            row[self.companion.name] = float(scores.mean()) if scores.notna().any() else math.nan
            row["n_scored"] = int(scores.notna().sum())
        table = pd.DataFrame([row], index=[self.name])
        table.index.name = "benchmark"
        return table

    def summary(self, table, per_sample) -> dict[str, Any]:
        row = table.iloc[0].to_dict()
        out: dict[str, Any] = {"n_images": int(row["n_images"])}
        if self.companion is not None:
            out[self.companion.name] = row.get(self.companion.name)
            out["n_scored"] = int(row.get("n_scored", 0))
        return out


def _image_name(record_id: str, index: int) -> str:
    from evalsuite.benchmark import safe_name

    stem = safe_name(record_id)
    return f"images/{stem}.png" if index == 0 else f"images/{stem}_{index}.png"
