"""TIIF-Bench (arXiv:2506.02161): instruction following over 39 dimensions, short and long prompts.

Data: ``data/{test,testmini}_prompts/<dim>_prompts.jsonl`` (``type, short_description, long_description``)
and ``data/{test,testmini}_eval_prompts/<dim>_eval_prompts.jsonl`` (``type, yn_question_list,
yn_answer_list``; line i belongs to line i of the prompt file) from A113N-W3I/TIIF-Bench at 3aae750.
**The repository states no license**: the files are not redistributed; evalsuite downloads them from the
pinned commit and verifies each sha256 (``tiif_bench/data/...`` in ``evalsuite.data_files``), or reads a
folder in the upstream layout named by ``data_root`` (unverified; tests write synthetic files there).

Protocol (upstream ``eval/``): one image per record and length, in the official layout
``<dim>/<model_name>/<length>_description/<idx>.png`` (an upstream image folder is scored as is with
``model_name=``); one judge request per image answering all its yes/no questions (rules in ``tiif_rules``);
accuracy per dimension, the 9 group means, level means and Overall = mean of the 9 groups, per length.
``split=testmini`` reads upstream's testmini files (images numbered 0..n-1 within each testmini file: route
(a) of the README; upstream's published eval-results name them by full-set index instead).

Judge (scorer ``vlm_chat``): official GPT-4o (``judge=<OpenAI-compatible URL>``, ``judge_model=gpt-4o``:
system "You are a professional image critic.", the text then the image as a PNG data URL,
``temperature=1.0``) or Qwen2.5-VL-72B-Instruct (the documented alternative; ``judge=local`` runs it through
transformers, greedy). Upstream retries an unusable reply forever; we retry ``max_retries`` times and then
report the image as failed (left out of the denominators, like a missing image upstream).
The text-rendering OCR metrics (GNED, recall) are not part of Overall and are not computed here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from evalsuite.benchmark import Benchmark, PromptRecord, safe_name, split_sample_id
from evalsuite.benchmarks import tiif_rules as rules
from evalsuite.data import resolve
from evalsuite.errors import ConfigError
from evalsuite.images import to_rgb
from evalsuite.registry import get_scorer
from evalsuite.sample import Sample

LICENSE = (
    "none stated (not redistributable): downloaded from A113N-W3I/TIIF-Bench at 3aae750, sha256-verified"
)
OFFICIAL_API_JUDGE = "gpt-4o"
OFFICIAL_LOCAL_JUDGE = "Qwen/Qwen2.5-VL-72B-Instruct"
FOLDERS = {
    "full": ("test_prompts", "test_eval_prompts"),
    "testmini": ("testmini_prompts", "testmini_eval_prompts"),
}


def file_paths(split: str, dim: str) -> tuple[str, str]:
    """(prompt file, eval file) of a dimension, relative to the repository root."""
    prompts, evals = FOLDERS[split]
    return f"data/{prompts}/{dim}_prompts.jsonl", f"data/{evals}/{dim}_eval_prompts.jsonl"


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a file, one per non-empty line (``ConfigError`` naming the file and line)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}:{n}: not JSON ({e})") from e
    return rows


def read_dimension(prompt_path: Path, eval_path: Path, dim: str, length: str) -> list[PromptRecord]:
    """One dimension's records: prompt line i with eval line i (checked: same count, same ``type``)."""
    prompts, evals = read_jsonl(prompt_path), read_jsonl(eval_path)
    if len(prompts) != len(evals):
        raise ConfigError(f"{prompt_path} has {len(prompts)} records but {eval_path} has {len(evals)}")
    records = []
    for i, (p, e) in enumerate(zip(prompts, evals)):
        where = f"{prompt_path.name} line {i + 1} / {eval_path.name} line {i + 1}"
        text, qs, gold = p.get(f"{length}_description"), e.get("yn_question_list"), e.get("yn_answer_list")
        if p.get("type") != dim or e.get("type") != dim:
            raise ConfigError(f"{where}: type {p.get('type')!r} / {e.get('type')!r}, expected {dim!r}")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: {length}_description must be a non-empty string")
        if not isinstance(qs, list) or not qs or not isinstance(gold, list) or len(gold) != len(qs):
            raise ConfigError(f"{where}: yn_question_list and yn_answer_list must be equally long, non-empty")
        records.append(
            PromptRecord(
                f"{dim}/{i}",
                text,
                {"dimension": dim, "idx": i, "questions": qs, "answers": [str(a) for a in gold]},
            )
        )
    return records


class TIIFBench(Benchmark):
    """TIIF-Bench with a pluggable yes/no judge (see the module docstring)."""

    name = "tiif_bench"
    images_per_prompt = 1
    data_files = tuple(
        f"tiif_bench/{p}" for s in rules.SPLITS for d in rules.DIMENSIONS for p in file_paths(s, d)
    )

    def __init__(
        self,
        *,
        split: str = "testmini",
        length: str = "short",
        judge: Any = "local",
        judge_model: str | os.PathLike | None = None,
        judge_options: dict[str, Any] | None = None,
        max_retries: int = 10,
        templates: Sequence[str] | None = None,
        round_dimensions: bool = True,
        model_name: str = "evalsuite",
        device: str = "cpu",
        dtype: str = "bfloat16",
        data_root: str | os.PathLike | None = None,
        data_dir: str | os.PathLike | None = None,
    ) -> None:
        if split not in rules.SPLITS or length not in rules.LENGTHS:
            raise ConfigError(
                f"TIIF-Bench split must be one of {rules.SPLITS} and length one of {rules.LENGTHS}, "
                f"got {split!r}, {length!r}"
            )
        try:
            self.templates = rules.check_templates(templates if templates is not None else rules.TEMPLATES)
        except ValueError as e:
            raise ConfigError(f"TIIF-Bench {e}") from None
        self.split, self.length, self.model_name = split, length, safe_name(model_name)
        self.round_dimensions = round_dimensions
        self.data_root = None if data_root is None else Path(data_root)
        if self.data_root is not None and not (self.data_root / "data").is_dir():
            raise ConfigError(
                f"TIIF-Bench data_root {self.data_root} has no data/ folder (the upstream layout)"
            )
        self.data_dir = data_dir
        options: dict[str, Any] = dict(judge_options or {})
        if judge == "local":
            options = {"device": device, "dtype": dtype, **options}
            model = str(judge_model or OFFICIAL_LOCAL_JUDGE)
        else:
            if isinstance(judge, str):
                options = {
                    "system": rules.SYSTEM,
                    "temperature": 1.0,
                    "max_retries": max_retries,
                    "backoff": 2.0,
                    **options,
                }
            model = str(judge_model or OFFICIAL_API_JUDGE)
        self.judge = get_scorer("vlm_chat", judge, model, **options)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "images_per_prompt": self.images_per_prompt,
            "split": self.split,
            "length": self.length,
            "data": f"{self.data_root} (unverified)"
            if self.data_root
            else f"official tiif_bench/data ({LICENSE})",
            "templates": "ours (upstream wording not redistributable)"
            if self.templates == rules.TEMPLATES
            else f"{len(self.templates)} custom",
            "round_dimensions": self.round_dimensions,
            "judge": self.judge.describe() if hasattr(self.judge, "describe") else repr(self.judge),
            "official_judge": f"{OFFICIAL_API_JUDGE} (temperature 1.0) or {OFFICIAL_LOCAL_JUDGE}",
            "note": "judges are not interchangeable: compare TIIF-Bench numbers only at equal judge/model",
        }

    def _path(self, rel: str, data_dir: str | os.PathLike | None) -> Path:
        if self.data_root is not None:
            return self.data_root / rel
        return resolve(f"tiif_bench/{rel}", data_dir if data_dir is not None else self.data_dir)

    def prompts(self, data_dir: str | None = None) -> list[PromptRecord]:
        records: list[PromptRecord] = []
        for dim in rules.DIMENSIONS:
            prompt_rel, eval_rel = file_paths(self.split, dim)
            if self.data_root is not None and not (self.data_root / prompt_rel).is_file():
                continue  # a partial custom set (tests, a subset): only the dimensions present
            records += read_dimension(
                self._path(prompt_rel, data_dir), self._path(eval_rel, data_dir), dim, self.length
            )
        if not records:
            raise ConfigError(f"TIIF-Bench: no {self.split} prompt files under {self.data_root}")
        return records

    def image_path(self, sample: Sample) -> str:
        record_id, _ = split_sample_id(sample)
        dim, _, idx = record_id.rpartition("/")
        return f"{safe_name(dim)}/{self.model_name}/{self.length}_description/{idx}.png"

    # -- scoring ------------------------------------------------------------------------------------
    def score(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        replies = self.judge.ask_all([partial(self._request, s) for s in samples])  # concurrent for APIs
        return [self._record(s, r) for s, r in zip(samples, replies)]

    def template_index(self, sample: Sample) -> int:
        return rules.choose_template(len(self.templates), sample.seed if sample.seed is not None else 0)

    def _request(self, sample: Sample) -> tuple[Any, str, Any]:
        """(image, instruction, parse) for the judge; raises on a bad image or record."""
        questions = list(sample.metadata["questions"])
        text = rules.format_instruction(self.templates[self.template_index(sample)], questions)
        return to_rgb(sample.image, sample.id), text, lambda raw: rules.parse_reply(raw, len(questions))

    def _record(self, sample: Sample, reply: Any) -> dict[str, Any]:
        meta = sample.metadata
        gold = list(meta.get("answers") or [])
        record: dict[str, Any] = {
            "score": None,
            "dimension": meta.get("dimension"),
            "n_questions": len(gold),
            "n_correct": None,
            "preds": None,
            "template": self.template_index(sample),
            "attempts": reply.attempts,
            "raw": reply.raw,
            "error": None,
        }
        if reply.value is None:
            record["error"] = f"sample {sample.id!r}: {reply.failure}"
            return record
        correct = rules.count_correct(gold, reply.value)
        hits = [rules.is_correct(g, p) for g, p in zip(gold, reply.value)]  # per question, for the report
        record.update(score=correct / len(gold), preds=reply.value, n_correct=correct, hits=hits)
        return record

    # -- aggregation --------------------------------------------------------------------------------
    def dimension_accuracies(self, per_sample) -> dict[str, float | None]:
        ok = per_sample[per_sample["score"].notna()]
        round_to = 4 if self.round_dimensions else None
        return {
            d: rules.dimension_accuracy(
                zip(
                    ok.loc[ok["dimension"] == d, "n_correct"].astype(int),
                    ok.loc[ok["dimension"] == d, "n_questions"].astype(int),
                ),
                round_to,
            )
            for d in rules.DIMENSIONS
        }

    def aggregate(self, per_sample):
        import pandas as pd

        acc = self.dimension_accuracies(per_sample)
        head = rules.overall(acc)
        if head is None:
            raise RuntimeError("TIIF-Bench: no image was judged (see the error column of samples.jsonl)")
        ok = per_sample[per_sample["score"].notna()]
        rows = [{"category": "Overall", "level": "overall", "score": 100 * head, "n": len(ok)}]
        rows += [
            {"category": f"level/{k}", "level": "level", "score": 100 * v, "n": None}
            for k, v in rules.level_scores(acc).items()
            if v is not None
        ]
        rows += [
            {"category": f"group/{k}", "level": "group", "score": 100 * v, "n": None}
            for k, v in rules.group_scores(acc).items()
            if v is not None
        ]
        rows += [
            {
                "category": f"dim/{d}",
                "level": "dimension",
                "score": 100 * v,
                "n": int(ok.loc[ok["dimension"] == d, "n_questions"].sum()),
            }
            for d, v in acc.items()
            if v is not None
        ]
        return pd.DataFrame(rows).set_index("category")[["score", "level", "n"]]

    def summary(self, table, per_sample) -> dict[str, Any]:
        ok = per_sample["score"].notna()
        head: dict[str, Any] = {
            f"tiif_overall_{self.length}": float(table.loc["Overall", "score"]),
            "split": self.split,
            "length": self.length,
            "judge": self.describe()["judge"],
            "n_images": int(ok.sum()),
            "n_failed": int((~ok).sum()),
        }
        head.update({k: float(v) for k, v in table[table["level"].isin(["level", "group"])]["score"].items()})
        return head
