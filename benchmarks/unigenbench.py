"""UniGenBench / UniGenBench++ (arXiv:2508.20751, arXiv:2510.18701): 600 prompts x EN/ZH x short/long.

Data: ``unigenbench/test_prompts_{en,en_long,zh,zh_long}.csv`` (CodeGoat24/UniGenBench at 49d0bce, CC BY 4.0),
columns ``index, prompt_<lang>, sub_dims_<lang>``; ``sub_dims`` is JSON naming each prompt's checkpoints (1-5
per short prompt, 4-10 per long one) out of 27 sub-dimensions in 10 primary dimensions.

Protocol (upstream ``eval/src/eval_common.py``): 4 images per prompt, ``{index}_{j}.png`` (this layout, so an
official ``eval_data/<category>/<model>/`` folder is scored as is); one judge request per image with the
upstream instruction (``unigenbench_prompts``, verbatim) asking for a 0/1 score per checkpoint; an unusable
reply is retried (10 retries upstream), and an image whose reply never parses is left out of every
denominator, as upstream does. Rules (parsing, dimension keys, micro-averaged accuracy) in
``unigenbench_rules``. The judge is pluggable (scorer ``vlm_chat``): ``judge=<OpenAI-compatible URL>`` with
``judge_model=gemini-2.5-pro`` (the official judge, ``max_tokens=4096``, no temperature) or ``judge=local``
with a released offline judge (``CodeGoat24/UniGenBench-EvalModel-qwen3vl-32b-v1``, greedy, image before the
text as upstream's vLLM route). Judges are not interchangeable: every result names the one used.

Upstream quirk repaired here, not in the file: ``test_prompts_en_long.csv`` row 509 has invalid JSON (a comma
missing between ``"Grammar - Negation"`` and ``"Attribute - Color"``); the official script crashes on it. The
loader inserts the comma (5 checkpoints, as zh_long row 509) and reports it in ``describe()`` (so in the run's
manifest) and in that prompt's metadata.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from evalsuite.benchmark import Benchmark, PromptRecord, split_sample_id
from evalsuite.benchmarks import unigenbench_rules as rules
from evalsuite.data import resolve
from evalsuite.errors import ConfigError
from evalsuite.images import to_rgb
from evalsuite.registry import get_scorer
from evalsuite.sample import Sample

LICENSE = "CC BY 4.0, Copyright (C) 2025 Tencent; attribution: Wang et al., UniGenBench++"
OFFICIAL_API_JUDGE = "gemini-2.5-pro"
OFFICIAL_LOCAL_JUDGE = "CodeGoat24/UniGenBench-EvalModel-qwen3vl-32b-v1"
KNOWN_REPAIRS = {
    ("en", "long"): [
        "test_prompts_en_long.csv index 509: invalid JSON in sub_dims_en (a comma missing between "
        '"Grammar - Negation" and "Attribute - Color"); the comma is inserted when loading, '
        "giving 5 checkpoints and 5 descriptions (as zh_long row 509)"
    ],
}
OVERALL_NOTE = (
    "UniGenBench's code computes no overall score; 'overall' here is the mean of the primary-dimension "
    "accuracies (how third-party leaderboard summaries describe it, not verified upstream)"
)


def data_key(language: str, length: str) -> str:
    return f"unigenbench/test_prompts_{language}{'_long' if length == 'long' else ''}.csv"


def read_rows(path: str | os.PathLike, language: str) -> list[rules.Row]:
    """Every row of a UniGenBench CSV in file order (``ConfigError`` naming the file and index)."""
    cfg = rules.LANG[language]
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [
            c for c in ("index", cfg.prompt_column, cfg.subdim_column) if c not in (reader.fieldnames or [])
        ]
        if missing:
            raise ConfigError(f"UniGenBench file {path}: missing column(s) {missing} (language={language!r})")
        rows = []
        for line in reader:
            where = f"{Path(path).name} index {line['index']}"  # no directory: the manifest stays portable
            try:
                points, descs, repair = rules.parse_sub_dims(line[cfg.subdim_column], language, where)
                rows.append(rules.Row(int(line["index"]), line[cfg.prompt_column], points, descs, repair))
            except ValueError as e:
                raise ConfigError(f"{e} (file {path})") from e
    return rows


class UniGenBench(Benchmark):
    """UniGenBench with a pluggable 0/1 checkpoint judge (see the module docstring)."""

    name = "unigenbench"
    images_per_prompt = 4
    data_files = tuple(data_key(lang, n) for lang in rules.LANGUAGES for n in rules.LENGTHS)

    def __init__(
        self,
        *,
        language: str = "en",
        length: str = "short",
        judge: Any = "local",
        judge_model: str | os.PathLike | None = None,
        judge_options: dict[str, Any] | None = None,
        max_retries: int = 10,
        device: str = "cpu",
        dtype: str = "bfloat16",
        csv_file: str | os.PathLike | None = None,
        data_dir: str | os.PathLike | None = None,
    ) -> None:
        if language not in rules.LANGUAGES or length not in rules.LENGTHS:
            raise ConfigError(
                f"UniGenBench language must be one of {rules.LANGUAGES} and length one of "
                f"{rules.LENGTHS}, got {language!r}, {length!r}"
            )
        self.language, self.length = language, length
        self.data_files = (data_key(language, length),)
        self.csv_file = None if csv_file is None else Path(csv_file)
        if self.csv_file is not None and not self.csv_file.is_file():
            raise ConfigError(f"UniGenBench csv_file {self.csv_file} is not a file")
        self.data_dir = data_dir
        self.repairs: list[str] | None = None  # what the last load repaired
        options: dict[str, Any] = dict(judge_options or {})
        if judge == "local":
            options = {
                "device": device,
                "dtype": dtype,
                "image_first": True,
                "max_new_tokens": 4096,
                **options,
            }
            model = str(judge_model or OFFICIAL_LOCAL_JUDGE)
        else:
            if isinstance(judge, str):
                options = {"max_tokens": 4096, "max_retries": max_retries, **options}
            model = str(judge_model or OFFICIAL_API_JUDGE)
        self.judge = get_scorer("vlm_chat", judge, model, **options)

    def describe(self) -> dict[str, Any]:
        source = str(self.csv_file) if self.csv_file else f"official {self.data_files[0]} ({LICENSE})"
        repairs = self.repairs if self.repairs is not None or self.csv_file else None
        return {
            "name": self.name,
            "images_per_prompt": self.images_per_prompt,
            "language": self.language,
            "length": self.length,
            "data": source,
            "repairs": repairs
            if repairs is not None
            else KNOWN_REPAIRS.get((self.language, self.length), []),
            "judge": self.judge.describe() if hasattr(self.judge, "describe") else repr(self.judge),
            "official_judge": f"{OFFICIAL_API_JUDGE} (API) or {OFFICIAL_LOCAL_JUDGE} (offline, vLLM)",
            "overall": OVERALL_NOTE,
            "note": "judges are not interchangeable: compare UniGenBench numbers only at equal judge/model",
        }

    def prompts(self, data_dir: str | None = None) -> list[PromptRecord]:
        path = self.csv_file or resolve(
            self.data_files[0], data_dir if data_dir is not None else self.data_dir
        )
        rows = read_rows(path, self.language)
        self.repairs = [r.repair for r in rows if r.repair]
        return [
            PromptRecord(
                str(r.index),
                r.prompt,
                {
                    "index": r.index,
                    "testpoints": list(r.testpoints),
                    "descriptions": list(r.descriptions),
                    **({"repair": r.repair} if r.repair else {}),
                },
            )
            for r in rows
        ]

    def image_path(self, sample: Sample) -> str:
        record_id, k = split_sample_id(sample)
        return f"{record_id}_{k}.png"

    # -- scoring ------------------------------------------------------------------------------------
    def score(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        replies = self.judge.ask_all([partial(self._request, s) for s in samples])  # concurrent for APIs
        return [self._record(s, r) for s, r in zip(samples, replies)]

    def _request(self, sample: Sample) -> tuple[Any, str, Any]:
        """(image, instruction, parse) for the judge; raises on a bad image or record."""
        points = list(sample.metadata.get("testpoints") or [])
        if not points:
            raise ValueError("no checkpoints in its metadata")
        descs = list(sample.metadata.get("descriptions") or [])
        text = rules.build_instruction(sample.prompt, points, descs, self.language)
        return to_rgb(sample.image, sample.id), text, lambda raw: rules.parse_reply(raw, len(points))

    def _record(self, sample: Sample, reply: Any) -> dict[str, Any]:
        points = list(sample.metadata.get("testpoints") or [])
        record: dict[str, Any] = {
            "score": None,
            "index": sample.metadata.get("index"),
            "testpoints": points,
            "scores": None,
            "n_checkpoints": len(points),
            "n_correct": None,
            "attempts": reply.attempts,
            "left_out": None,
            "raw": reply.raw,
            "error": None,
        }
        if reply.value is None:  # upstream: result_json null, the row is skipped
            record["error"] = f"sample {sample.id!r}: {reply.failure}"
            return record
        analysis, scores = reply.value
        if not rules.survives_official_roundtrip(sample.prompt, points, analysis, scores):
            record["left_out"] = (
                "the official scorer cannot read this result back (true/false/null/NaN in the "
                "reply) and skips the image"
            )
            return record
        correct = [rules.is_correct(s) for s in scores]
        record.update(
            score=sum(correct) / len(correct),
            scores=[s if isinstance(s, (int, float)) else str(s) for s in scores],
            n_correct=sum(correct),
        )
        return record

    # -- aggregation --------------------------------------------------------------------------------
    @staticmethod
    def _scored(per_sample):
        return per_sample[per_sample["score"].notna()]

    def tally(self, per_sample) -> rules.Tally:
        ok = self._scored(per_sample)
        return rules.Tally.of(zip(ok["testpoints"], ok["scores"]))

    def aggregate(self, per_sample):
        import pandas as pd

        tally = self.tally(per_sample)
        if not tally.primary:
            raise RuntimeError("UniGenBench: no image was judged (see the error column of samples.jsonl)")
        n_images = len(self._scored(per_sample))
        rows = [
            {
                "category": "overall (mean of primary, unofficial)",
                "level": "overall",
                "score": 100 * rules.overall(tally),
                "correct": None,
                "n": n_images,
            }
        ]
        for level, table in (("primary", tally.primary), ("sub", tally.sub)):
            for key, (c, t) in table.items():
                rows.append(
                    {
                        "category": f"{level}/{key.strip()}",
                        "level": level,
                        "score": 100 * rules.accuracy(c, t),
                        "correct": c,
                        "n": t,
                    }
                )
        return pd.DataFrame(rows).set_index("category")[["score", "level", "correct", "n"]]

    def summary(self, table, per_sample) -> dict[str, Any]:
        scored = self._scored(per_sample)
        head: dict[str, Any] = {
            "unigenbench_overall": float(table.iloc[0]["score"]),
            "language": self.language,
            "length": self.length,
            "judge": self.describe()["judge"],
            "n_images": len(scored),
            "n_failed": int(per_sample["error"].notna().sum()),
            "n_left_out": int(per_sample["left_out"].notna().sum()) if "left_out" in per_sample else 0,
            "overall_note": OVERALL_NOTE,
        }
        head.update({k: float(v) for k, v in table[table["level"] == "primary"]["score"].items()})
        return head
