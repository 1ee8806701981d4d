"""GenEval 2 Soft-TIFA scoring rules, as pure functions (no model, no files).

Read off upstream ``evaluation.py`` / ``soft_tifa_analysis.py`` (facebookresearch/GenEval2 at a6e82d2; see
``../shared/benchmarks/geneval2/README.md``):

- A question's soft score is the VQA model's probability of the correct answer's first token, summed over
  the answer's accepted spellings (``answer_forms``; the probabilities come from a soft VQA backend).
  - "How many ..." questions: ``[a, a.capitalize(), " "+a, " "+a.capitalize(), digit(a), " "+digit(a)]``
    where ``digit`` maps ``one``..``ten`` to ``"1"``..``"10"`` and anything else to ``"other"``.
  - every other question: ``["Yes", "yes", " yes", " Yes"]``, whatever the listed answer. The upstream file
    only has ``Yes`` there; ``parse_item`` rejects any other answer, which the official rule would score as
    if it were ``Yes``.
- Prompt score over its questions' soft scores: geometric mean (Soft-TIFA GM, prompt level, the headline;
  ``scipy.stats.gmean``: one zero makes it zero) or arithmetic mean (Soft-TIFA AM, atom level). Every
  question counts, including the "How many X? -> one" checks the evaluator adds for "a X".
- Benchmark score = 100 x mean over prompts of the GM (or AM).
- Per skill (object, count, attribute, position, verb) = 100 x sum of the soft scores of all questions with
  that skill / their number (a micro-average over questions, AM-style); per atomicity k = 100 x mean GM over
  the prompts with ``atom_count == k``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SKILLS = ("object", "count", "attribute", "position", "verb")
COUNT_PREFIX = "How many"
YES_FORMS = ("Yes", "yes", " yes", " Yes")
DIGITS = {w: str(i) for i, w in enumerate(
    ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"), start=1)}


def digit(answer: str) -> str:
    """Upstream's number-word map: ``"four"`` -> ``"4"``; anything else -> the literal ``"other"``."""
    return DIGITS.get(answer, "other")


def is_count_question(question: str) -> bool:
    return question.startswith(COUNT_PREFIX)


def answer_forms(question: str, answer: str) -> list[str]:
    """The spellings whose first tokens' probabilities make the question's soft score (upstream order)."""
    if is_count_question(question):
        d = digit(answer)
        return [answer, answer.capitalize(), " " + answer, " " + answer.capitalize(), d, " " + d]
    return list(YES_FORMS)


@dataclass(frozen=True)
class Item:
    """One line of ``geneval2_data.jsonl``."""

    prompt: str
    atom_count: int
    questions: tuple[tuple[str, str], ...]  # (question, answer), in file order
    skills: tuple[str, ...]  # parallel to questions


def parse_item(row: Mapping, where: str) -> Item:
    """Validate one record; ``ValueError`` naming ``where`` (file and line) on anything malformed."""
    missing = [k for k in ("prompt", "atom_count", "vqa_list", "skills") if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    prompt, vqa, skills = row["prompt"], row["vqa_list"], row["skills"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: prompt must be a non-empty string, got {prompt!r}")
    if not isinstance(row["atom_count"], int) or isinstance(row["atom_count"], bool):
        raise ValueError(f"{where}: atom_count must be an integer, got {row['atom_count']!r}")
    if not isinstance(vqa, list) or not vqa:
        raise ValueError(f"{where}: vqa_list must be a non-empty list of [question, answer] pairs")
    if not isinstance(skills, list) or len(skills) != len(vqa):
        raise ValueError(f"{where}: skills must be a list as long as vqa_list ({len(vqa)}), got {skills!r}")
    pairs = []
    for k, pair in enumerate(vqa):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"{where}: vqa_list[{k}] must be [question, answer] strings, got {pair!r}")
        question, answer = pair
        if not is_count_question(question) and answer != "Yes":
            raise ValueError(
                f"{where}: vqa_list[{k}] {question!r} has answer {answer!r}; the official rule scores every "
                "question that is not 'How many ...' as the probability of 'Yes'"
            )
        pairs.append((question, answer))
    return Item(prompt, row["atom_count"], tuple(pairs), tuple(str(s) for s in skills))


def _checked(scores: Sequence[float]) -> list[float]:
    values = [float(s) for s in scores]
    if not values:
        raise ValueError("a prompt needs at least one question score")
    bad = [s for s in values if not s >= 0.0]  # also catches NaN
    if bad:
        raise ValueError(f"soft scores must be >= 0, got {bad}")
    return values


def arithmetic_mean(scores: Sequence[float]) -> float:
    """Soft-TIFA AM of one prompt."""
    values = _checked(scores)
    return math.fsum(values) / len(values)


def geometric_mean(scores: Sequence[float]) -> float:
    """Soft-TIFA GM of one prompt (``scipy.stats.gmean``: exp of the mean log; any zero gives 0)."""
    values = _checked(scores)
    if any(s == 0.0 for s in values):
        return 0.0
    return math.exp(math.fsum(math.log(s) for s in values) / len(values))


def benchmark_score(prompt_scores: Sequence[float]) -> float:
    """100 x the mean prompt score (GM for the headline, AM for the atom-level number)."""
    if not prompt_scores:
        raise ValueError("no prompt was scored")
    return 100.0 * math.fsum(prompt_scores) / len(prompt_scores)


def skill_scores(scores: Iterable[float], skills: Iterable[str]) -> dict[str, tuple[float, int]]:
    """``{skill: (100 x mean soft score over all its questions, number of questions)}``, skills in SKILLS
    order first, then any others in first-seen order."""
    by_skill: dict[str, list[float]] = {s: [] for s in SKILLS}
    for score, skill in zip(scores, skills, strict=True):
        by_skill.setdefault(skill, []).append(float(score))
    return {k: (100.0 * math.fsum(v) / len(v), len(v)) for k, v in by_skill.items() if v}


def atomicity_scores(gms: Iterable[float], atom_counts: Iterable[int]) -> dict[int, tuple[float, int]]:
    """``{atom_count: (100 x mean GM over those prompts, number of prompts)}``, by increasing atom count."""
    by_k: dict[int, list[float]] = {}
    for gm, k in zip(gms, atom_counts, strict=True):
        by_k.setdefault(int(k), []).append(float(gm))
    return {k: (100.0 * math.fsum(v) / len(v), len(v)) for k, v in sorted(by_k.items())}
