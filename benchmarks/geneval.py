"""GenEval: 553 prompts × 4 images, scored as the official evaluator scores them.

Scoring goes through the reward library's GenEval reward in ``official`` mode (its rule engine is tested
case by case against the official rule). Outputs the per-task table, overall (unweighted mean of the
six tasks), % correct images and % correct prompts. Images are read and written in the official layout
``<outdir>/<00000>/metadata.jsonl`` + ``samples/0000.png``…, so folders made by the official generation
script can be scored here and ours by the official evaluator.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalsuite.benchmark import Benchmark, PromptRecord, split_sample_id
from evalsuite.benchmarks.geneval_prompts import TAGS
from evalsuite.data import resolve
from evalsuite.errors import ConfigError
from evalsuite.sample import Sample
from evalsuite.store import atomic_write_text

METADATA_FILE = "geneval/evaluation_metadata.jsonl"


def read_metadata(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metadata file in GenEval's schema, each validated (a record that asks for nothing,
    or for a class the detector does not know, would be scored wrongly without a word)."""
    from evalsuite.registry import registry

    check_metadata = registry.get("rewards", "geneval").check_metadata
    records = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {n} (prompt {len(records):05d})"
        try:
            record = json.loads(line)
            check_metadata(record)
        except ValueError as e:  # json.JSONDecodeError is a ValueError too
            raise ConfigError(f"{where}: invalid GenEval metadata: {e}") from None
        if not isinstance(record.get("prompt"), str):
            raise ConfigError(f"{where}: invalid GenEval metadata: needs a 'prompt' string")
        records.append(record)
    return records


class GenEval(Benchmark):
    name = "geneval"
    images_per_prompt = 4
    data_files = (METADATA_FILE,)

    @staticmethod
    def generate_prompts(seed: int = 43, per_task: int = 100) -> list[dict[str, Any]]:
        """GenEval-schema prompts from the seeded generator (``geneval_prompts.generate_suite``): training
        sets and the offline demo reach it through the registry."""
        from evalsuite.benchmarks.geneval_prompts import generate_suite

        return generate_suite(seed=seed, per_task=per_task)

    def __init__(
        self,
        *,
        metadata: str | None = None,
        mode: str = "official",
        detector: str = "transformers",
        detector_model: str | None = None,
        checkpoint: str | None = None,
        clip_model: str = "ViT-L-14",
        clip_pretrained: str | None = "openai",
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
        threshold: float | None = None,
        counting_threshold: float | None = None,
        max_objects: int | None = None,
        max_overlap: float | None = None,
        position_threshold: float | None = None,
        test_scale: tuple[int, int] | None = None,
        revision: str | None = None,
    ) -> None:
        """``metadata``: another file in GenEval's schema (e.g. a generated training set) instead of the
        official prompts. ``mode``: the rule (``official``, ``strict``, ``partial``; see
        the GenEval reward's rules). Thresholds (and ``test_scale``, ``revision``) left at None are the
        reward's defaults (the official ones); each is a named option so a misspelled one is an error."""
        from evalsuite.registry import get_reward

        optional = {k: v for k, v in {
            "threshold": threshold, "counting_threshold": counting_threshold, "max_objects": max_objects,
            "max_overlap": max_overlap, "position_threshold": position_threshold, "test_scale": test_scale,
            "revision": revision}.items() if v is not None}
        self.metadata_path = metadata
        self.reward = get_reward(
            "geneval",
            model=detector_model,
            mode=mode,
            detector=detector,
            checkpoint=checkpoint,
            clip_model=clip_model,
            clip_pretrained=clip_pretrained,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            **optional,
        )

    def describe(self) -> dict[str, Any]:
        r = self.reward.describe()
        return {
            "name": self.name,
            "images_per_prompt": self.images_per_prompt,
            "mode": r["mode"],
            "detector": r["detector"],
            "detector_model": r["model"],
            "color_model": r["color_model"],
            "prompts": self.metadata_path or METADATA_FILE,
        }

    def prompts(self, data_dir: str | None = None) -> list[PromptRecord]:
        path = self.metadata_path or resolve(METADATA_FILE, data_dir)
        return [PromptRecord(f"{i:05d}", m["prompt"], m) for i, m in enumerate(read_metadata(path))]

    def image_path(self, sample: Sample) -> str:
        record_id, index = split_sample_id(sample)
        return f"{record_id}/samples/{index:04d}.png"

    def write_layout(self, out_dir, records: Sequence[PromptRecord]) -> None:
        for r in records:
            path = Path(out_dir) / r.id / "metadata.jsonl"
            if not path.exists():
                atomic_write_text(path, json.dumps(r.metadata) + "\n")

    def score(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        out = self.reward.score(samples)
        records = []
        for s, value, err, det in zip(samples, out.scores, out.errors, out.details):
            records.append(
                {
                    "tag": s.metadata.get("tag"),
                    "correct": bool(det.get("correct", False)) if err is None else False,
                    "score": value,
                    "reason": det.get("reason") or err,
                    "error": err,
                    "evidence": det.get("evidence"),  # what the verdict rests on, drawn by the report
                }
            )
        return records

    def aggregate(self, per_sample):
        import pandas as pd

        table = per_sample.groupby("tag")["correct"].agg(accuracy="mean", images="size")
        order = [t for t in TAGS if t in table.index] + [t for t in table.index if t not in TAGS]
        table = table.loc[order]
        table.index.name = "task"
        return pd.DataFrame(table)

    def summary(self, table, per_sample) -> dict[str, Any]:
        by_prompt = per_sample.groupby("group")["correct"].any()
        out: dict[str, Any] = {
            "overall": float(table["accuracy"].mean()),
            "correct_images": float(per_sample["correct"].mean()),
            "correct_prompts": float(by_prompt.mean()),
        }
        out.update({task: float(acc) for task, acc in table["accuracy"].items()})
        out["errors"] = int(per_sample["error"].notna().sum())
        return out
