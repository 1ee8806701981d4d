"""TIIF-Bench scoring rules, as pure functions (no model, no files).

Read off upstream ``eval/eval_with_vlm.py``, ``eval/summary_results.py`` and
``eval/summary_dimension_results.py`` (A113N-W3I/TIIF-Bench at 3aae750; see
``../shared/benchmarks/tiif_bench/README.md``):

- One judge request per image with all of the record's yes/no questions (each ``.strip()``ped, joined by
  ``\\n``) in one of three instruction templates picked at random. Upstream's repository states no license, so
  ``TEMPLATES`` is our wording of the same three instructions (same content, same ``##YNQuestions##``
  placeholder); pass upstream's strings as ``templates=`` for bit-level parity. We pick the template with the
  sample's seed (upstream: unseeded ``random.choice``), so a rerun asks the same thing.
- ``parse_reply``: split the reply on ``\\n``, strip, drop empty lines, keep the lines matching
  ``^(yes|no)\\b`` (case-insensitive; "1. yes" is ignored), lower-cased; a count other than the number of
  questions makes the reply unusable (upstream retries without a cap).
- A question is correct iff ``gt.strip().lower() == pred.strip().lower()`` (over ``zip(gt, pred)``).
- Dimension accuracy (per length) = sum correct / sum questions over its images (micro-average), written
  with ``%.4f`` and read back: rounded to 4 decimals before any further mean (``round_dimensions``).
- Group = unweighted mean of its dimensions' accuracies (missing dimensions skipped); level "Basic" = mean of
  its 12 dimensions, "Advanced" = mean of its 26 dimensions (not of its 5 groups), "Real world" = real_world;
  headline Overall = mean of the 9 group scores (missing groups skipped). Fractions; papers report x100.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence

PLACEHOLDER = "##YNQuestions##"
SPLITS = ("testmini", "full")
LENGTHS = ("short", "long")

# (level, group, dimensions), in upstream's order.
GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Basic", "Attribute", ("shape+color", "color+texture", "texture+color", "shape+texture")),
    ("Basic", "Relation", ("2d_spatial_relation", "3d_spatial_relation", "action+2d", "action+3d")),
    ("Basic", "Reasoning", ("numeracy", "negation", "differentiation", "comparison")),
    (
        "Advanced",
        "Attribute+Relation",
        (
            "action+color",
            "action+texture",
            "color+2d",
            "color+3d",
            "shape+2d",
            "shape+3d",
            "texture+2d",
            "texture+3d",
        ),
    ),
    (
        "Advanced",
        "Attribute+Reasoning",
        (
            "numeracy+color",
            "numeracy+texture",
            "comparison+color",
            "comparison+texture",
            "differentiation+color",
            "differentiation+texture",
            "negation+color",
            "negation+texture",
        ),
    ),
    (
        "Advanced",
        "Relation+Reasoning",
        (
            "numeracy+2d",
            "numeracy+3d",
            "comparison+2d",
            "comparison+3d",
            "differentiation+2d",
            "differentiation+3d",
            "negation+2d",
            "negation+3d",
        ),
    ),
    ("Advanced", "Text Generation", ("text",)),
    ("Advanced", "Style Control", ("style",)),
    ("Real world", "Complex", ("real_world",)),
)
DIMENSIONS: tuple[str, ...] = tuple(d for _, _, dims in GROUPS for d in dims)
LEVELS = ("Basic", "Advanced", "Real world")

SYSTEM = "You are a professional image critic."
_RULES = (
    'Each answer goes on its own line and starts with "yes" or "no", followed by the reason.',
    "Answer in the same order as the questions.",
    "Give exactly one answer per question.",
    "Return the answers only, with nothing else.",
    "Put every answer on a separate line!",
    "The number of answers must equal the number of questions!",
)
# Our wording of upstream's three templates (see the module docstring); each starts and ends with a newline.
TEMPLATES: tuple[str, ...] = (
    "\nLook carefully at the provided image. Using only what the image shows, answer these yes or no "
    f"questions:\n\nQuestions:\n{PLACEHOLDER}\n\nRules:\n"
    + "".join(f"{i}. {r}\n" for i, r in enumerate(_RULES, start=1)),
    "\nLook carefully at the image. Using only what the image shows, answer these yes or no questions:\n\n"
    f"Questions:\n{PLACEHOLDER}\n\nRules:\n"
    + "".join(
        f"{r}{' If there is only one question, give one answer.' if i == 2 else ''}\n"
        for i, r in enumerate(_RULES)
    ),
    "\nExamine the provided image carefully and answer the yes or no questions below:\n\n"
    f"Questions:\n{PLACEHOLDER}"
    "\n\nInstructions:\n\n"
    + "".join(f"{i}. {r.replace('the reason', 'a short reason')}\n" for i, r in enumerate(_RULES, start=1)),
)

_YES_NO = re.compile(r"^(yes|no)\b", re.IGNORECASE)


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    if not templates or any(not isinstance(t, str) or PLACEHOLDER not in t for t in templates):
        raise ValueError(f"templates must be a non-empty list of strings holding {PLACEHOLDER!r}")
    return tuple(templates)


def choose_template(n_templates: int, seed: int) -> int:
    """The template index for a sample (seeded, so a rerun asks the same instruction)."""
    return random.Random(seed).randrange(n_templates)


def format_instruction(template: str, questions: Sequence[str]) -> str:
    """Upstream ``format_questions_prompt`` with the template already chosen."""
    return template.replace(PLACEHOLDER, "\n".join(q.strip() for q in questions))


def parse_reply(text: str, n_questions: int) -> list[str]:
    """The lower-cased yes/no predictions; ``ValueError`` when their count is not ``n_questions``."""
    lines = [line.strip() for line in (text or "").strip().split("\n") if line.strip()]
    preds = [m.group(1).lower() for m in (_YES_NO.match(line) for line in lines) if m]
    if len(preds) != n_questions:
        raise ValueError(f"{len(preds)} yes/no lines for {n_questions} questions")
    return preds


def is_correct(gold: str, pred: str) -> bool:
    return gold.strip().lower() == pred.strip().lower()


def count_correct(gold: Sequence[str], preds: Sequence[str]) -> int:
    """Upstream counts over ``zip(gt, pred)``: equal lengths are guaranteed by ``parse_reply``."""
    return sum(is_correct(g, p) for g, p in zip(gold, preds))


def dimension_accuracy(records: Iterable[tuple[int, int]], round_to: int | None = 4) -> float | None:
    """Sum correct / sum questions over ``(n_correct, n_questions)`` records; None when there are none."""
    correct = total = 0
    for c, t in records:
        correct, total = correct + c, total + t
    if total == 0:
        return None
    acc = correct / total
    return round(acc, round_to) if round_to is not None else acc


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def group_scores(dim_acc: Mapping[str, float | None]) -> dict[str, float | None]:
    """Each of the 9 groups: mean of its dimensions present in ``dim_acc``."""
    return {group: _mean(dim_acc.get(d) for d in dims) for _, group, dims in GROUPS}


def level_scores(dim_acc: Mapping[str, float | None]) -> dict[str, float | None]:
    """Basic / Advanced / Real world overall: the mean over the level's dimensions (not over its groups)."""
    return {
        level: _mean(dim_acc.get(d) for lv, _, dims in GROUPS if lv == level for d in dims)
        for level in LEVELS
    }


def overall(dim_acc: Mapping[str, float | None]) -> float | None:
    """The headline: mean of the 9 group scores (groups without any dimension skipped)."""
    return _mean(group_scores(dim_acc).values())
