"""GenEval 2 (Kamath et al., arXiv:2512.16853): 800 compositional prompts scored with Soft-TIFA.

Data: ``geneval2/geneval2_data.jsonl`` (facebookresearch/GenEval2 at a6e82d2, **CC BY-NC 4.0: non-commercial
use only**), one prompt per line with its ``vqa_list`` of (question, answer) pairs and a parallel ``skills``
list. Prompt ids are the zero-padded line index (the file has no id; upstream keys images by prompt text).

Scoring (rules in ``geneval2_rules``): every question of a prompt is asked of its image by a soft VQA backend
(scorer ``soft_vqa``; default Qwen3-VL-8B-Instruct, as the authors), which returns the probability of the
correct answer's first token summed over its spellings; the prompt score is the geometric mean of those
(Soft-TIFA GM, the headline; the per-sample ``score``) and their arithmetic mean (Soft-TIFA AM, atom level);
GenEval 2 = 100 x mean over prompts. The table adds per-skill (micro-average over questions) and
per-atomicity (mean GM) rows, as upstream ``soft_tifa_analysis.py``.

Generation protocol of the published numbers (UniRL PR #236, reproducing FlowDPPO; the presets are not applied
here): Stable Diffusion 3.5 Medium, 512 x 512, 40 steps, guidance 1.0 (no CFG), ``max_sequence_length`` 256,
``sigmas = linspace(1, 1/40, 40)``, one image per prompt, seed per image ``(42 + int.from_bytes(sha256(prompt)
[:4], "big")) % 2**31`` on a CPU generator. SD3.5-M base scores 12.4 there (GM x 100).

Numbers from different VQA models are not interchangeable: every result records the backend and model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from evalsuite.benchmark import Benchmark, PromptRecord
from evalsuite.benchmarks import geneval2_rules as rules
from evalsuite.data import resolve
from evalsuite.errors import ConfigError, EvalsuiteError
from evalsuite.images import to_rgb
from evalsuite.registry import get_scorer
from evalsuite.sample import Sample
from evalsuite.scorer import describe_vqa

DATA_KEY = "geneval2/geneval2_data.jsonl"
PROTOCOL = {
    "model": "stabilityai/stable-diffusion-3.5-medium",
    "height": 512,
    "width": 512,
    "num_inference_steps": 40,
    "guidance_scale": 1.0,
    "max_sequence_length": 256,
    "sigmas": "linspace(1.0, 1/steps, steps)",
    "images_per_prompt": 1,
    "seed": "(42 + int.from_bytes(sha256(prompt.encode()).digest()[:4], 'big') + k) % 2**31, CPU generator",
    "source": "UniRL PR #236 (FlowDPPO reproduction); SD3.5-M base = 12.4",
}
LICENSE = "CC BY-NC 4.0 (non-commercial use only), Kamath et al., GenEval 2"


def read_items(path: str | os.PathLike) -> list[rules.Item]:
    """Every record of a GenEval 2 JSONL file, in file order (``ConfigError`` naming file and line)."""
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                items.append(rules.parse_item(json.loads(line), where))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: not JSON ({e})") from e
            except ValueError as e:
                raise ConfigError(str(e)) from e
    return items


class GenEval2(Benchmark):
    """GenEval 2 with Soft-TIFA and a pluggable soft VQA backend (see the module docstring)."""

    name = "geneval2"
    images_per_prompt = 1
    data_files = (DATA_KEY,)

    def __init__(
        self,
        *,
        vqa: Any = None,
        vqa_model: str | os.PathLike | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
        vqa_options: dict[str, Any] | None = None,
        data_file: str | os.PathLike | None = None,
        data_dir: str | os.PathLike | None = None,
    ) -> None:
        self.data_file = None if data_file is None else Path(data_file)
        if self.data_file is not None and not self.data_file.is_file():
            raise ConfigError(f"GenEval 2 data_file {self.data_file} is not a file")
        self.data_dir = data_dir
        options: dict[str, Any] = {"device": device, "dtype": dtype, "batch_size": batch_size,
                                   **(vqa_options or {})}
        if vqa_model is not None:
            options["model"] = str(vqa_model)
        self.vqa = get_scorer("soft_vqa", vqa, **options)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "images_per_prompt": self.images_per_prompt,
            "data": str(self.data_file) if self.data_file else f"official {DATA_KEY} ({LICENSE})",
            "method": "Soft-TIFA: per prompt GM (headline) / AM (atom level) over its questions; "
                      "x100 mean over prompts",
            **describe_vqa(self.vqa),
            "official_vqa": "Qwen/Qwen3-VL-8B-Instruct",
            "protocol": PROTOCOL,
            "note": "VQA backends are not interchangeable: compare GenEval 2 numbers only at equal "
                    "vqa/vqa_model",
        }

    def prompts(self, data_dir: str | None = None) -> list[PromptRecord]:
        path = self.data_file or resolve(DATA_KEY, data_dir if data_dir is not None else self.data_dir)
        return [
            PromptRecord(f"{i:03d}", item.prompt, {"atom_count": item.atom_count,
                                                   "vqa_list": [list(p) for p in item.questions],
                                                   "skills": list(item.skills)})
            for i, item in enumerate(read_items(path))
        ]

    # -- scoring ------------------------------------------------------------------------------------
    def _item(self, sample: Sample) -> rules.Item:
        return rules.parse_item({"prompt": sample.prompt, **sample.metadata}, f"sample {sample.id!r}")

    def _ask(self, image: Image.Image, item: rules.Item) -> list[float]:
        spellings = [rules.answer_forms(q, a) for q, a in item.questions]
        got = self.vqa.probabilities([image] * len(spellings), [q for q, _ in item.questions], spellings)
        if len(got) != len(spellings):
            raise RuntimeError(f"soft VQA backend returned {len(got)} scores for {len(spellings)} questions")
        return [float(p) for p in got]

    def score(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        out: list[dict[str, Any] | None] = [None] * len(samples)
        todo: list[tuple[int, rules.Item, Image.Image]] = []
        for i, s in enumerate(samples):
            try:
                todo.append((i, self._item(s), to_rgb(s.image, s.id)))
            except (ValueError, TypeError) as e:
                out[i] = self._failed(s, str(e))
        try:  # one call for the whole batch: the backend batches and caches per image
            flat = self._ask_all(todo)
        except EvalsuiteError as e:
            if not isinstance(e, ConfigError):
                raise  # a missing backend is the user's setup to fix, not a per-sample failure
            flat = None
        except Exception:
            flat = None
        for i, item, image in todo:
            s = samples[i]
            try:
                scores = flat.pop(0) if flat is not None else self._ask(image, item)
                out[i] = self._record(item, scores)
            except EvalsuiteError as e:
                if not isinstance(e, ConfigError):
                    raise
                out[i] = self._failed(s, f"sample {s.id!r}: soft VQA failed: {e}")
            except Exception as e:
                out[i] = self._failed(s, f"sample {s.id!r}: soft VQA failed: {type(e).__name__}: {e}")
        return out  # type: ignore[return-value]

    def _ask_all(self, todo: list[tuple[int, rules.Item, Image.Image]]) -> list[list[float]]:
        images, questions, spellings = [], [], []
        for _, item, image in todo:
            for q, a in item.questions:
                images.append(image)
                questions.append(q)
                spellings.append(rules.answer_forms(q, a))
        got = [float(p) for p in self.vqa.probabilities(images, questions, spellings)] if questions else []
        if len(got) != len(questions):
            raise RuntimeError(f"soft VQA backend returned {len(got)} scores for {len(questions)} questions")
        per_item, pos = [], 0
        for _, item, _ in todo:
            per_item.append(got[pos : pos + len(item.questions)])
            pos += len(item.questions)
        return per_item

    def _record(self, item: rules.Item, scores: list[float]) -> dict[str, Any]:
        gm = rules.geometric_mean(scores)
        return {"score": gm, "soft_tifa_gm": gm, "soft_tifa_am": rules.arithmetic_mean(scores),
                "question_scores": scores, "skills": list(item.skills), "atom_count": item.atom_count,
                "error": None}

    def _failed(self, sample: Sample, error: str) -> dict[str, Any]:
        return {"score": None, "soft_tifa_gm": None, "soft_tifa_am": None, "question_scores": None,
                "skills": None, "atom_count": sample.metadata.get("atom_count"), "error": error}

    # -- aggregation --------------------------------------------------------------------------------
    @staticmethod
    def _ok(per_sample):
        return per_sample[per_sample["error"].isna() & per_sample["score"].notna()]

    def aggregate(self, per_sample):
        import pandas as pd

        ok = self._ok(per_sample)
        if ok.empty:
            raise RuntimeError("GenEval 2: no sample was scored (see the error column of samples.jsonl)")
        rows = [
            {"category": "GenEval2 (Soft-TIFA GM)", "level": "overall",
             "score": rules.benchmark_score(list(ok["soft_tifa_gm"])), "n": len(ok)},
            {"category": "GenEval2 (Soft-TIFA AM)", "level": "overall",
             "score": rules.benchmark_score(list(ok["soft_tifa_am"])), "n": len(ok)},
        ]
        scores = [s for row in ok["question_scores"] for s in row]
        skills = [s for row in ok["skills"] for s in row]
        for skill, (v, n) in rules.skill_scores(scores, skills).items():
            rows.append({"category": f"skill/{skill}", "level": "skill", "score": v, "n": n})
        for k, (v, n) in rules.atomicity_scores(list(ok["soft_tifa_gm"]), list(ok["atom_count"])).items():
            rows.append({"category": f"atoms/{k}", "level": "atomicity", "score": v, "n": n})
        return pd.DataFrame(rows).set_index("category")[["score", "level", "n"]]

    def summary(self, table, per_sample) -> dict[str, Any]:
        desc = describe_vqa(self.vqa)
        head: dict[str, Any] = {
            "geneval2": float(table.loc["GenEval2 (Soft-TIFA GM)", "score"]),
            "geneval2_am": float(table.loc["GenEval2 (Soft-TIFA AM)", "score"]),
            "vqa": desc["vqa"],
            "vqa_model": desc["vqa_model"],
            "n_prompts": len(self._ok(per_sample)),
            "n_failed": len(per_sample) - len(self._ok(per_sample)),
        }
        head.update({k: float(v) for k, v in table[table["level"] == "skill"]["score"].items()})
        return head
