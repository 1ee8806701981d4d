"""UniGenBench scoring rules, as pure functions (no model, no files).

Read off upstream ``eval/src/eval_common.py`` (CodeGoat24/UniGenBench at 49d0bce; see
``../shared/benchmarks/unigenbench/README.md``):

- Each CSV row's ``sub_dims_*`` JSON lists the prompt's checkpoints (``Testpoints`` / ``考点``) and, in
  parallel, the span of the prompt that expresses each (``Testpoint Description`` / ``考点对应描述``).
- One judge request per image: ``build_instruction`` fills the language's template with the prompt, the
  checkpoint list as a Python list repr, a definitions block and a descriptions block.
- ``parse_reply``: the first ``<analysis>…</analysis>`` and ``<score>…</score>`` (DOTALL), each read with
  ``ast.literal_eval``; both must be as long as the checkpoint list, else the reply is unusable (retried).
- Official quirk: a parsed result is stored as JSON and read back with ``ast.literal_eval``; a result holding
  ``true``/``false``/``null``/``NaN`` (a judge answering ``[True, False]``) fails that and the row is skipped
  by ``calculate_scores``. ``survives_official_roundtrip`` reproduces the check, the benchmark leaves such
  images out.
- A checkpoint is correct iff its score ``== 1``. Primary dimension = the checkpoint name before its first
  ``-`` (English names keep the trailing space: ``"Attribute "``); names without ``-`` are their own primary
  dimension; sub-dimension = the full name. Accuracy = correct / total over every (image, checkpoint) pair of
  the class (a micro-average), rounded to 4 decimals in the official JSON.
- There is no official overall number. ``overall`` (the mean of the primary accuracies) is what third-party
  leaderboard summaries describe; it is labelled as such wherever it appears.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from evalsuite.benchmarks.unigenbench_prompts import (
    EXPLANATION_DICT_EN,
    EXPLANATION_DICT_ZH,
    SYSTEM_PROMPT_EN_TEMPLATE,
    SYSTEM_PROMPT_ZH_TEMPLATE,
)

LANGUAGES = ("en", "zh")
LENGTHS = ("short", "long")


@dataclass(frozen=True)
class Language:
    explanations: dict[str, str]
    template: str
    prompt_column: str
    subdim_column: str
    testpoint_key: str
    desc_key: str
    checkpoint_header: str
    checkpoint_desc_header: str


LANG = {
    "en": Language(
        EXPLANATION_DICT_EN,
        SYSTEM_PROMPT_EN_TEMPLATE,
        "prompt_en",
        "sub_dims_en",
        "Testpoints",
        "Testpoint Description",
        "Checkpoints Defination",
        "Checkpoints Description",
    ),
    "zh": Language(
        EXPLANATION_DICT_ZH,
        SYSTEM_PROMPT_ZH_TEMPLATE,
        "prompt_zh",
        "sub_dims_zh",
        "考点",
        "考点对应描述",
        "考点说明",
        "考点描述说明",
    ),
}

# Two JSON strings separated only by whitespace inside a list: the comma between them is missing.
_MISSING_COMMA = re.compile(r'(?<!\\)"(\s+)"')


@dataclass(frozen=True)
class Row:
    """One CSV row: the prompt and its checkpoints (``repair``: what the loader had to fix, if anything)."""

    index: int
    prompt: str
    testpoints: tuple[str, ...]
    descriptions: tuple[str, ...]
    repair: str | None = None


def repair_missing_commas(text: str) -> tuple[str, int]:
    """Insert the comma between adjacent string literals (``"a" "b"`` -> ``"a", "b"``): (text, count)."""
    return _MISSING_COMMA.subn(r'",\1"', text)


def parse_sub_dims(text: str, lang: str, where: str) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """(checkpoints, descriptions, repair) of a ``sub_dims_*`` cell; ``ValueError`` naming ``where``.

    Upstream ``json.loads`` has no error handling (the shipped en_long row 509 crashes it). Invalid JSON
    is repaired only by inserting missing commas between list strings, and only if the result then
    parses into equally long checkpoint and description lists; ``repair`` describes what was changed.
    """
    cfg = LANG[lang]
    repair = None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        fixed, n = repair_missing_commas(text)
        try:
            data = json.loads(fixed) if n else None
        except json.JSONDecodeError:
            data = None
        if data is None:
            raise ValueError(f"{where}: {cfg.subdim_column} is not JSON ({e})") from e
        spots = "; ".join(
            repr(text[max(0, m.start() - 20) : m.end() + 20]) for m in _MISSING_COMMA.finditer(text)
        )
        repair = (
            f"{where}: invalid JSON in {cfg.subdim_column} ({e}); inserted {n} missing comma(s) at {spots}"
        )
    if not isinstance(data, dict):
        raise ValueError(f"{where}: {cfg.subdim_column} must be a JSON object")
    points, descs = data.get(cfg.testpoint_key), data.get(cfg.desc_key)
    if not isinstance(points, list) or not points or not all(isinstance(p, str) for p in points):
        raise ValueError(
            f"{where}: {cfg.testpoint_key!r} must be a non-empty list of strings, got {points!r}"
        )
    if not isinstance(descs, list) or len(descs) != len(points):
        raise ValueError(
            f"{where}: {cfg.desc_key!r} must be a list as long as {cfg.testpoint_key!r} "
            f"({len(points)}), got {descs!r}"
        )
    unknown = [p for p in points if p not in cfg.explanations]
    if unknown:  # upstream build_system_prompt raises here too
        raise ValueError(
            f"{where}: checkpoint(s) {unknown} have no definition in the {lang} explanation dict"
        )
    return tuple(points), tuple(str(d) for d in descs), repair


def build_instruction(prompt: str, testpoints: Sequence[str], descriptions: Sequence[str], lang: str) -> str:
    """The judge's instruction for one image (upstream ``build_system_prompt``, character for character)."""
    cfg = LANG[lang]
    explanation = f"{cfg.checkpoint_header}:\u300c"
    for point in testpoints:
        explanation += f"\n{point}: {cfg.explanations[point]}"
    explanation += "\n\u300d"
    test_explanation = f"{cfg.checkpoint_desc_header}:\u300c"
    for point, desc in zip(testpoints, descriptions):
        test_explanation += f"\n{point}: {desc}"
    test_explanation += "\n\u300d"
    return cfg.template.format(
        prompt=prompt, testpoint=list(testpoints), explanation=explanation, test_explanation=test_explanation
    )


_ANALYSIS = re.compile(r"<analysis>(.*?)</analysis>", re.DOTALL)
_SCORE = re.compile(r"<score>(.*?)</score>", re.DOTALL)


def parse_reply(text: str, n_checkpoints: int) -> tuple[list, list]:
    """(analysis, scores) from a judge reply; ``ValueError`` when upstream would retry the request."""
    a, s = _ANALYSIS.search(text or ""), _SCORE.search(text or "")
    if a is None or s is None:
        raise ValueError("<analysis> or <score> tags not found in the reply")
    try:
        analysis = ast.literal_eval(a.group(1).strip())
        scores = ast.literal_eval(s.group(1).strip())
        lengths = (len(analysis), len(scores))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise ValueError(f"cannot read the analysis/score lists: {type(e).__name__}: {e}") from None
    if lengths != (n_checkpoints, n_checkpoints):
        raise ValueError(
            f"length mismatch: {n_checkpoints} checkpoints, {lengths[0]} analyses, {lengths[1]} scores"
        )
    return list(analysis), list(scores)


def survives_official_roundtrip(prompt: str, testpoints: Sequence[str], analysis: list, scores: list) -> bool:
    """Whether upstream's JSON dump + ``ast.literal_eval`` read-back succeeds (else the row is skipped)."""
    try:
        dumped = json.dumps(
            {"prompt": prompt, "testpoint": list(testpoints), "analysis": analysis, "score": scores},
            ensure_ascii=False,
            indent=4,
        )
        ast.literal_eval(dumped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True


def is_correct(score: object) -> bool:
    """Upstream: ``score == 1`` (so ``1`` and ``1.0`` count; ``"1"`` and ``0.5`` do not)."""
    return score == 1


def primary_dimension(checkpoint: str) -> str:
    """The part before the first ``-`` (spaces kept, as upstream), or the whole name."""
    return checkpoint.split("-", 1)[0] if "-" in checkpoint else checkpoint


@dataclass
class Tally:
    """Correct / total per primary and sub dimension (upstream order: primary first seen, sub sorted)."""

    primary: dict[str, list[int]] = field(default_factory=dict)
    sub: dict[str, list[int]] = field(default_factory=dict)

    def add(self, testpoints: Sequence[str], scores: Sequence[object]) -> None:
        for cp, score in zip(testpoints, scores):
            for table, key in ((self.primary, primary_dimension(cp)), (self.sub, cp)):
                counts = table.setdefault(key, [0, 0])
                counts[1] += 1
                counts[0] += int(is_correct(score))

    @classmethod
    def of(cls, rows: Iterable[tuple[Sequence[str], Sequence[object]]]) -> Tally:
        tally = cls()
        for testpoints, scores in rows:
            tally.add(testpoints, scores)
        tally.sub = dict(sorted(tally.sub.items()))
        return tally


def accuracy(correct: int, total: int) -> float:
    """correct / total (0 when empty, as upstream)."""
    return correct / total if total > 0 else 0.0


def official_json(tally: Tally) -> dict[str, dict[str, dict[str, float]]]:
    """Upstream ``calculate_scores``' output: accuracies rounded to 4 decimals."""
    return {
        name: {
            k: {"correct": c, "total": t, "accuracy": round(accuracy(c, t), 4)} for k, (c, t) in table.items()
        }
        for name, table in (("primary_dimensions", tally.primary), ("sub_dimensions", tally.sub))
    }


def overall(tally: Tally) -> float:
    """Mean of the primary-dimension accuracies (unrounded): NOT computed by the official code."""
    accs = [accuracy(c, t) for c, t in tally.primary.values()]
    if not accs:
        raise ValueError("no scored checkpoint")
    return sum(accs) / len(accs)
