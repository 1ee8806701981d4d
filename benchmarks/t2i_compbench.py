"""T2I-CompBench (NeurIPS 2023) and its ++ numeracy category, scored with the official rules.

Categories and scorers (rewards reached by registry name; their rules are in
:mod:`evalsuite.rewards.compbench_rules`, the benchmark's own in :mod:`.t2i_compbench_rules`):

===========  =============================================================================================
color,       BLIP-VQA (reward ``blip_vqa``, ``Salesforce/blip-vqa-base``, HF's conversion
shape,       of the official checkpoint): product over the prompt's noun chunks of P(yes), each written
texture      with 4 decimals as the official JSON does (``official_rounding``).
spatial      detector (reward ``t2i_compbench_detection``) + the official ``2D_spatial_eval.py`` rule.
             The official detector is UniDet
             (RS200, ~700 classes); here it is the GenEval detector backend (Mask2Former, 80 COCO classes)
             or any detector you pass: nouns outside its vocabulary are never found, so the number is NOT
             comparable with published T2I-CompBench spatial scores unless you plug in UniDet.
non_spatial  CLIP ViT-B/32 (OpenAI) raw cosine (reward ``clipscore``).
complex      "3-in-1": mean of BLIP-VQA and the spatial score (complex_val_spatial) or the CLIP score of
             the adjective-stripped prompt (complex_val_action), or of all three (the rest).
numeracy     (T2I-CompBench++) detector + the official ``numeracy_eval.py`` rule (official: UniDet R50;
             the same vocabulary caveat as spatial).
===========  =============================================================================================

``3d_spatial`` (++) is not implemented: it needs UniDet plus a DPT depth model and its own rule.

Layout: the official one, ``samples/{prompt}_{n:06d}.png`` with ``n = prompt_index × images_per_prompt +
k`` (``inference_eval.py``'s running counter); with several categories, each gets its own
``{category}/samples/`` folder, the way the official scripts are run once per category. Point
``images_dir`` at a folder made by the official generation script to score it unchanged.

``color_version="pre-2025-09-03"`` evaluates the color_val.txt that papers used before upstream rewrote
five lines of it on 2025-09-03 (see the data README).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from evalsuite.benchmark import Benchmark, PromptRecord, split_sample_id
from evalsuite.benchmarks.t2i_compbench_rules import (
    COMPLEX_KINDS,
    complex_key,
    complex_kind,
    image_name,
    parse_new_objects,
    prompt_lines,
    remove_adjectives,
    three_in_one,
)
from evalsuite.data import resolve
from evalsuite.errors import ConfigError
from evalsuite.nlp import parse, spacy_nlp
from evalsuite.registry import get_reward
from evalsuite.reward import Reward, RewardOutput
from evalsuite.sample import Sample

__all__ = ["CATEGORIES", "COLOR_VERSIONS", "T2ICompBench"]

ATTRIBUTE = ("color", "shape", "texture")
CATEGORIES: tuple[str, ...] = (*ATTRIBUTE, "spatial", "non_spatial", "complex", "numeracy")
GROUPS: dict[str, tuple[str, ...]] = {
    "all": ("color", "shape", "texture", "spatial", "non_spatial", "complex"),  # T2I-CompBench (2023)
    "all++": CATEGORIES,  # + numeracy (3d_spatial not implemented)
}
COLOR_VERSIONS: dict[str, str] = {
    "current": "t2i_compbench/color_val.txt",
    "pre-2025-09-03": "t2i_compbench/previous_versions/color_val.pre-2025-09-03.txt",
}
_PREFIX = "t2i_compbench/"
_NEW_OBJECTS = f"{_PREFIX}new_objects.txt"
_COMPLEX_SPATIAL = f"{_PREFIX}complex_val_spatial.txt"
_COMPLEX_ACTION = f"{_PREFIX}complex_val_action.txt"
_UNSAFE_IN_NAMES = str.maketrans({"/": " ", "\0": " "})  # POSIX forbids only these in a file name


def _val_key(category: str, color_version: str) -> str:
    return COLOR_VERSIONS[color_version] if category == "color" else f"{_PREFIX}{category}_val.txt"


def _read(key: str, data_dir: str | None) -> str:
    return resolve(key, data_dir).read_text(encoding="utf-8")


# -- the benchmark ------------------------------------------------------------------------------------------
class T2ICompBench(Benchmark):
    """T2I-CompBench on the 300 ``*_val`` prompts of each category, 10 images per prompt.

    ``category``: one of :data:`CATEGORIES`, a list of them, ``"all"`` (the six 2023 categories) or
    ``"all++"`` (+ numeracy). ``images_per_prompt`` fixes the official file numbering; give the same number
    to ``evaluate``. Scorer options: ``blip_model``/``blip_image_size``/``official_rounding`` (BLIP-VQA),
    ``clip_model``/``clip_pretrained`` (CLIP; default OpenAI ViT-B/32), ``detector``/``detector_model``/
    ``detector_checkpoint``/``min_score`` (spatial, complex, numeracy). ``device``/``dtype``/``batch_size``
    go to every scorer. ``max_prompts``: only the first N prompts of each category (smoke tests; the
    official number uses all 300).
    """

    name = "t2i_compbench"
    images_per_prompt = 10
    data_files = (
        *(f"{_PREFIX}{c}_val.txt" for c in CATEGORIES if c != "color"),
        *COLOR_VERSIONS.values(),
        _COMPLEX_SPATIAL,
        _COMPLEX_ACTION,
        _NEW_OBJECTS,
    )

    def __init__(
        self,
        category: str | Sequence[str] = "all",
        *,
        images_per_prompt: int = 10,
        color_version: str = "current",
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 16,
        blip_model: str | None = None,
        blip_image_size: int | None = 480,
        official_rounding: bool = True,
        clip_model: str | None = None,
        clip_pretrained: str | None = None,
        detector: str | Any = "transformers",
        detector_model: str | None = None,
        detector_checkpoint: str | None = None,
        min_score: float = 0.5,
        max_prompts: int | None = None,
        data_dir: str | None = None,
    ) -> None:
        self.categories = self._categories(category)
        if color_version not in COLOR_VERSIONS:
            raise ConfigError(f"t2i_compbench: color_version must be one of {sorted(COLOR_VERSIONS)}")
        if images_per_prompt < 1:
            raise ConfigError(f"t2i_compbench: images_per_prompt must be >= 1, got {images_per_prompt}")
        self.images_per_prompt = images_per_prompt  # type: ignore[misc]  # per instance: it numbers files
        self.color_version = color_version
        if max_prompts is not None and max_prompts < 1:
            raise ConfigError(f"t2i_compbench: max_prompts must be >= 1, got {max_prompts}")
        self.max_prompts = max_prompts
        self.data_dir = data_dir
        self._prompt_data_dir = data_dir
        common = {"device": device, "dtype": dtype, "batch_size": batch_size}
        self._blip_args = {
            "model": blip_model,
            "image_size": blip_image_size,
            "official_rounding": official_rounding,
            **common,
        }
        self._clip_args = {"model": clip_model, "pretrained": clip_pretrained, **common}
        self._det_args = {
            "model": detector_model,
            "detector": detector,
            "checkpoint": detector_checkpoint,
            "min_score": min_score,
            **common,
        }
        self._scorers: dict[str, Reward] = {}

    @staticmethod
    def _categories(category: str | Sequence[str]) -> tuple[str, ...]:
        names = GROUPS.get(category, (category,)) if isinstance(category, str) else tuple(category)
        for c in names:
            if c == "3d_spatial":
                raise ConfigError(
                    "t2i_compbench: 3d_spatial is not implemented (it needs UniDet and a DPT depth "
                    "model); choose from " + ", ".join(CATEGORIES)
                )
            if c not in CATEGORIES:
                raise ConfigError(
                    f"t2i_compbench: unknown category {c!r}; choose from {CATEGORIES} or {sorted(GROUPS)}"
                )
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"t2i_compbench: categories must be distinct and non-empty, got {names!r}")
        return tuple(names)

    # -- scorers (built lazily: a category never run never loads its models) ------------------------
    def scorer(self, kind: str) -> Reward:
        """The scorer ``blip``, ``clip``, ``spatial``, ``complex_spatial`` or ``numeracy`` (built once)."""
        if kind not in self._scorers:
            self._scorers[kind] = self._make(kind)
        return self._scorers[kind]

    def _make(self, kind: str) -> Reward:
        if kind == "blip":
            return get_reward("blip_vqa", **self._blip_args)
        if kind == "clip":
            args = dict(self._clip_args)
            model, pretrained = args.pop("model"), args.pop("pretrained")
            if model is None and pretrained is None:
                # OpenAI ViT-B/32, as CLIP_similarity.py
                return get_reward("clipscore", variant="ViT-B-32", **args)
            return get_reward("clipscore", model=model, pretrained=pretrained, **args)
        if kind == "numeracy":

            def objects() -> tuple[list[str], list[str]]:
                return parse_new_objects(_read(_NEW_OBJECTS, self._prompt_data_dir))

            return get_reward("t2i_compbench_detection", task="numeracy", objects=objects, **self._det_args)
        if kind in ("spatial", "complex_spatial"):
            return get_reward("t2i_compbench_detection", task=kind, **self._det_args)
        raise ConfigError(f"t2i_compbench: unknown scorer {kind!r}")

    def _scorer_kinds(self) -> list[str]:
        kinds: list[str] = []
        for c in self.categories:
            wanted = {
                "color": ["blip"],
                "shape": ["blip"],
                "texture": ["blip"],
                "spatial": ["spatial"],
                "non_spatial": ["clip"],
                "numeracy": ["numeracy"],
                "complex": ["blip", "complex_spatial", "clip"],
            }[c]
            kinds += [k for k in wanted if k not in kinds]
        return kinds

    def describe(self) -> dict[str, Any]:
        scorers = {}
        for kind in self._scorer_kinds():
            d = self.scorer(kind).describe()
            scorers[kind] = {k: v for k, v in d.items() if k not in ("name", "class")}
        return {
            "name": self.name,
            "categories": list(self.categories),
            "images_per_prompt": self.images_per_prompt,
            "color_version": self.color_version if "color" in self.categories else None,
            "max_prompts": self.max_prompts,
            "mode": "official rules",
            "official_detector": "UniDet (RS200 spatial, R50 numeracy); ours: see scorers",
            "scorers": scorers,
        }

    # -- prompts and layout ---------------------------------------------------------------------------
    def prompts(self, data_dir: str | None = None) -> list[PromptRecord]:
        data_dir = data_dir if data_dir is not None else self.data_dir
        self._prompt_data_dir = data_dir  # the numeracy scorer reads new_objects.txt from the same place
        records: list[PromptRecord] = []
        for cat in self.categories:
            lines = prompt_lines(_read(_val_key(cat, self.color_version), data_dir))[: self.max_prompts]
            if cat == "complex":
                spatial = [complex_key(x) for x in prompt_lines(_read(_COMPLEX_SPATIAL, data_dir))]
                action = [complex_key(x) for x in prompt_lines(_read(_COMPLEX_ACTION, data_dir))]
            for i, prompt in enumerate(lines):
                meta: dict[str, Any] = {"category": cat, "index": i}
                if cat == "complex":
                    meta["complex_kind"] = complex_kind(prompt, spatial, action)
                records.append(PromptRecord(f"{cat}/{i:03d}", prompt, meta))
        return records

    def image_path(self, sample: Sample) -> str:
        record_id, k = split_sample_id(sample)
        cat = sample.metadata.get("category") or record_id.split("/")[0]
        index = sample.metadata.get("index")
        if index is None:
            index = int(record_id.rsplit("/", 1)[-1])
        if k >= self.images_per_prompt:
            raise ConfigError(
                f"t2i_compbench: image {k} of prompt {record_id!r} does not fit the official numbering of "
                f"{self.images_per_prompt} images per prompt; pass images_per_prompt to T2ICompBench(...)"
            )
        name = image_name(sample.prompt.translate(_UNSAFE_IN_NAMES), int(index) * self.images_per_prompt + k)
        if len(name.encode("utf-8")) > 255:
            raise ConfigError(f"t2i_compbench: file name for {record_id!r} is longer than 255 bytes")
        folder = "samples" if len(self.categories) == 1 else f"{cat}/samples"
        return f"{folder}/{name}"

    # -- scoring --------------------------------------------------------------------------------------
    def score(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        records: list[dict[str, Any] | None] = [None] * len(samples)
        by_cat: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            by_cat.setdefault(s.metadata.get("category", ""), []).append(i)
        for cat, idx in by_cat.items():
            group = [samples[i] for i in idx]
            if cat in ATTRIBUTE:
                rows = self._single(group, "blip", "blip")
            elif cat == "spatial":
                rows = self._single(group, "spatial", "spatial")
            elif cat == "numeracy":
                rows = self._single(group, "numeracy", "numeracy")
            elif cat == "non_spatial":
                rows = self._single(group, "clip", "clip")
            elif cat == "complex":
                rows = self._complex(group)
            else:
                rows = [
                    {"score": math.nan, "error": f"sample {s.id!r}: unknown category {cat!r}"} for s in group
                ]
            for i, row in zip(idx, rows):
                records[i] = {"category": cat, **row}
        return [r if r is not None else {} for r in records]

    def _single(self, group: list[Sample], kind: str, prefix: str) -> list[dict[str, Any]]:
        out = self.scorer(kind).score(group)
        return [_row(out, k, prefix) for k in range(len(group))]

    def _complex(self, group: list[Sample]) -> list[dict[str, Any]]:
        kinds = [s.metadata.get("complex_kind", "spatial_action") for s in group]
        blip = self.scorer("blip").score(group)
        spatial_idx = [k for k, kind in enumerate(kinds) if kind in ("spatial", "spatial_action")]
        action_idx = [k for k, kind in enumerate(kinds) if kind in ("action", "spatial_action")]
        spatial = (
            self.scorer("complex_spatial").score([group[k] for k in spatial_idx]) if spatial_idx else None
        )
        action, texts = None, []
        if action_idx:
            nlp = spacy_nlp()
            texts = [remove_adjectives(parse(nlp, group[k].prompt).tokens) for k in action_idx]
            action = self.scorer("clip").score(
                [replace(group[k], prompt=t) for k, t in zip(action_idx, texts)]
            )
        rows = []
        for k, kind in enumerate(kinds):
            if kind not in COMPLEX_KINDS:
                rows.append(
                    {"score": math.nan, "error": f"sample {group[k].id!r}: unknown complex kind {kind!r}"}
                )
                continue
            row: dict[str, Any] = {"complex_kind": kind, **_row(blip, k, "blip")}
            parts = {"attribute": blip.scores[k]}
            errors = [blip.errors[k]]
            if k in spatial_idx:
                j = spatial_idx.index(k)
                row.update(_row(spatial, j, "spatial"))  # type: ignore[arg-type]
                parts["spatial"] = spatial.scores[j]  # type: ignore[union-attr]
                errors.append(spatial.errors[j])  # type: ignore[union-attr]
            if k in action_idx:
                j = action_idx.index(k)
                row.update(_row(action, j, "clip"))  # type: ignore[arg-type]
                row["clip_text"] = texts[j]
                parts["action"] = action.scores[j]  # type: ignore[union-attr]
                errors.append(action.errors[j])  # type: ignore[union-attr]
            error = "; ".join(e for e in errors if e)
            if error or any(math.isnan(v) for v in parts.values()):
                row.update(score=math.nan, error=error or "a component score is missing")
            else:
                row.update(
                    score=three_in_one(kind, parts["attribute"], parts.get("spatial"), parts.get("action")),
                    error=None,
                )
            rows.append(row)
        return rows

    # -- tables ---------------------------------------------------------------------------------------
    def aggregate(self, per_sample):
        """Per category: mean image score (the official number), images, prompts, failed images."""
        import pandas as pd

        rows = []
        for cat in self.categories:
            part = (
                per_sample[per_sample["category"] == cat] if "category" in per_sample else per_sample.iloc[:0]
            )
            scores = pd.to_numeric(part["score"], errors="coerce") if len(part) else pd.Series(dtype=float)
            rows.append(
                {
                    "category": cat,
                    "score": float(scores.mean()) if scores.notna().any() else math.nan,
                    "n_images": len(part),
                    "n_prompts": int(part["group"].nunique()) if "group" in part and len(part) else 0,
                    "n_failed": int(scores.isna().sum()),
                }
            )
        return pd.DataFrame(rows).set_index("category")

    def summary(self, table, per_sample) -> dict[str, Any]:
        out: dict[str, Any] = {str(c): float(v) for c, v in table["score"].items()}
        if len(table) > 1:
            out["category_mean"] = float(table["score"].mean())
        out["n_failed"] = int(table["n_failed"].sum())
        return out


def _row(out: RewardOutput | None, k: int, prefix: str) -> dict[str, Any]:
    """Flat record of sample ``k`` of one scorer's output, details prefixed with the scorer's name."""
    if out is None:
        return {}
    row: dict[str, Any] = {"score": out.scores[k], f"{prefix}_score": out.scores[k], "error": out.errors[k]}
    for key, value in out.details[k].items():
        row[f"{prefix}_{key}"] = value
    if out.details[k].get("reason"):
        row["reason"] = out.details[k]["reason"]
    return row
