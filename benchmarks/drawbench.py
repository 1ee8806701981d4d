"""DrawBench "paper metrics" (DiffusionNFT / Flow-GRPO): 200 prompts x 5 images, scored by several rewards.

Prompts come from DiffusionNFT's pinned ``dataset/drawbench/test.txt`` (the 200 prompts, 5 copies each; see
``drawbench_rules``). Every reward is built once from the registry and scores every image; the per-sample
table has a column per reward (``<name>``, with ``<name>.error`` when it failed), the summary table the mean
per reward, overall and per DrawBench category when a category file is given (the upstream file has none).

Default rewards are the paper's six. The ones not registered in this install are skipped with a warning that
names them, so the benchmark still runs; a reward named explicitly in ``rewards`` must exist.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evalsuite.benchmark import Benchmark, PromptRecord
from evalsuite.benchmarks import drawbench_rules as rules
from evalsuite.data import resolve
from evalsuite.errors import ConfigError
from evalsuite.sample import Sample

PROMPTS_KEY = "drawbench/test.txt"
OVERALL = "all"
log = logging.getLogger(__name__)


def read_categories(path: str | os.PathLike) -> dict[str, str]:
    """prompt -> category from a JSONL of ``{"prompt", "category"}`` or the official sheet's CSV export
    (columns ``Prompts,Category``); categories are stripped (the sheet has ``"Gary Marcus et al. "``)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                rows = [(r["Prompts"], r["Category"]) for r in csv.DictReader(f)]
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            rows = [(r["prompt"], r["category"]) for r in map(json.loads, filter(str.strip, lines))]
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(
            f"DrawBench categories {path}: unreadable ({type(e).__name__}: {e}); expected JSONL lines "
            '{"prompt", "category"} or a CSV with columns Prompts,Category'
        ) from None
    return {str(p).strip(): str(c).strip() for p, c in rows}


def _as_list(value: Sequence[str] | str | None) -> list[str] | None:
    if value is None or not isinstance(value, str):
        return None if value is None else [str(v).strip() for v in value]
    return [v.strip() for v in value.split(",") if v.strip()]


class DrawBench(Benchmark):
    """``rewards``: registered reward names (list or ``"a,b"``; default the paper's six). ``normalize``:
    ``"raw"`` (paper tables) or ``"flowgrpo"`` (PickScore/26, UnifiedReward/5). ``reward_options``:
    ``{name: {option: value}}`` for a reward's constructor; the paper's model choice (CLIPScore ViT-L/14)
    applies unless it names a ``model``. ``categories``: a prompt -> category file for per-category rows."""

    name = "drawbench"
    images_per_prompt = rules.COPIES_PER_PROMPT
    data_files = (PROMPTS_KEY,)
    paper_rewards = rules.PAPER_REWARDS

    def __init__(
        self,
        *,
        rewards: Sequence[str] | str | None = None,
        normalize: str = "raw",
        reward_options: Mapping[str, Mapping[str, Any]] | None = None,
        categories: str | os.PathLike | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
    ) -> None:
        from evalsuite.registry import get_reward, registry

        try:
            self.normalize = rules.check_normalize(normalize)
            names, skipped = rules.pick_rewards(_as_list(rewards), registry.names("rewards"))
        except ValueError as e:
            raise ConfigError(f"drawbench: {e}") from None
        if skipped:
            log.warning("drawbench: paper rewards not registered in this install, skipped: %s",
                        ", ".join(skipped))
        self.skipped = skipped
        options = {str(k): dict(v) for k, v in (reward_options or {}).items()}
        stray = [k for k in options if k not in names]
        if stray:
            raise ConfigError(f"drawbench: reward_options for {stray}, which are not scored "
                              f"(rewards: {names})")
        scaled = [n for n in names if "normalize" in options.get(n, {})]
        if scaled:
            raise ConfigError(f"drawbench: set the scale with the benchmark's normalize option, not with "
                              f"{scaled}'s own (it would be divided twice or mislabelled)")
        self.categories_path = None if categories is None else Path(categories)
        self.rewards = {
            n: get_reward(n, device=device, dtype=dtype, batch_size=batch_size, **self._options(n, options))
            for n in names
        }

    @staticmethod
    def _options(name: str, given: dict[str, dict[str, Any]]) -> dict[str, Any]:
        mine = given.get(name, {})
        return mine if "model" in mine else {**rules.PAPER_REWARD_OPTIONS.get(name, {}), **mine}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "images_per_prompt": self.images_per_prompt,
            "normalize": self.normalize,
            "rewards": {n: r.describe() for n, r in self.rewards.items()},
            "skipped_rewards": list(self.skipped),
            "prompts": PROMPTS_KEY,
            "categories": None if self.categories_path is None else str(self.categories_path),
        }

    def prompts(self, data_dir: str | None = None) -> list[PromptRecord]:
        path = resolve(PROMPTS_KEY, data_dir)
        prompts = rules.unique_prompts(path.read_text(encoding="utf-8").splitlines())
        category = {} if self.categories_path is None else read_categories(self.categories_path)
        missing = [p for p in prompts if category and p not in category]
        if missing:
            raise ConfigError(f"DrawBench categories {self.categories_path}: no category for {len(missing)} "
                              f"prompts of {path} (e.g. {missing[0]!r})")
        return [PromptRecord(f"{i:03d}", p, {"category": category[p]} if category else {})
                for i, p in enumerate(prompts)]

    def score(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = [{"category": s.metadata.get("category")} for s in samples]
        for name, reward in self.rewards.items():
            out = reward.score(samples)
            for rec, value, ok, err, det in zip(records, out.scores, out.applicable, out.errors, out.details):
                rec[name] = rules.normalize(name, value if ok else None, self.normalize)
                rec[f"{name}.error"] = err
                if not ok and err is None:
                    rec[f"{name}.not_applicable"] = det.get("not_applicable", "not applicable")
        for rec in records:
            errors = [f"{n}: {rec[f'{n}.error']}" for n in self.rewards if rec[f"{n}.error"]]
            rec["error"] = "; ".join(errors) or None  # each reward's error already names the sample
        return records

    def aggregate(self, per_sample):
        import pandas as pd

        groups = [(OVERALL, per_sample)]
        if "category" in per_sample and per_sample["category"].notna().any():
            groups += [(str(c), g) for c, g in per_sample.groupby("category", sort=True)]
        rows = []
        for label, frame in groups:
            row: dict[str, Any] = {"category": label}
            for n in self.rewards:
                row[n] = rules.finite_mean(frame[n].tolist()) if n in frame else float("nan")
            row["images"] = len(frame)
            rows.append(row)
        return pd.DataFrame(rows).set_index("category")

    def summary(self, table, per_sample) -> dict[str, Any]:
        out: dict[str, Any] = {n: float(table.loc[OVERALL, n]) for n in self.rewards}
        out["normalize"] = self.normalize
        out["errors"] = int(per_sample["error"].notna().sum()) if "error" in per_sample else 0
        return out
