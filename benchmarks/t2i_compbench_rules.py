"""T2I-CompBench's benchmark rules as pure functions (Karine-Huang/T2I-CompBench, read at 1b70949).

- file layout (``GORS_finetune/inference_eval.py``): images ``samples/{prompt}_{n:06d}.png`` with ``n``
  a running counter over the whole prompt file (prompt ``i``, image ``k`` -> ``n = i * 10 + k``);
  the scorers read the prompt back as ``name.split("_")[0]``.
- ``new_objects.txt`` (``numeracy_eval.py``): ``"singular - plural"`` lines, the objects numeracy counts.
- complex "3-in-1" (``3_in_1_eval/3_in_1.py``): the mean of BLIP-VQA and the spatial score (prompts in
  ``complex_val_spatial``) or the CLIP score (``complex_val_action``), or of all three otherwise;
  membership is by ``line.split(".")[0].lower()``. The CLIP score of complex prompts is taken on the
  prompt with its adjectives removed (``CLIP_similarity.py --complex``).

The scorer rules (BLIP-VQA questions and rounding, 2D spatial, numeracy) live with the scorers in
:mod:`evalsuite.rewards.compbench_rules`; tokens come from :func:`evalsuite.nlp.parse`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from evalsuite.nlp import Tok


# -- prompt files and image names --------------------------------------------------------------------------
def prompt_lines(text: str) -> list[str]:
    """The prompts of one list file, as ``inference_eval.py`` reads them (CRLF and a missing last newline
    are fine: ``splitlines``; anything after a tab is dropped)."""
    return [line.split("\t")[0] for line in text.splitlines()]


def image_name(prompt: str, number: int) -> str:
    """Official sample file name ``{prompt}_{number:06d}.png`` (``number`` runs over the whole file)."""
    if number < 0:
        raise ValueError(f"image number must be >= 0, got {number}")
    return f"{prompt}_{number:06d}.png"


def parse_image_name(name: str) -> tuple[str, int]:
    """(prompt, number) the way the official scorers read a file name back (first and last ``_`` field)."""
    stem = name.rsplit("/", 1)[-1]
    return stem.split("_")[0], int(stem.split("_")[-1].split(".")[0])


def parse_new_objects(text: str) -> tuple[list[str], list[str]]:
    """(singulars, plurals) from ``new_objects.txt`` lines ``"singular - plural"``."""
    pairs = [line.split(" - ") for line in text.splitlines()]
    return [p[0].strip().lower() for p in pairs], [p[1].strip().lower() for p in pairs]


# -- complex ------------------------------------------------------------------------------------------------
COMPLEX_KINDS: tuple[str, ...] = ("spatial", "action", "spatial_action")


def complex_key(line: str) -> str:
    """How ``3_in_1.py`` compares prompts: the text before the first ``.``, lower-cased."""
    return line.strip("\n").split(".")[0].lower()


def complex_kind(prompt: str, spatial_keys: Iterable[str], action_keys: Iterable[str]) -> str:
    """``spatial`` (BLIP + spatial), ``action`` (BLIP + CLIP) or ``spatial_action`` (all three)."""
    key = complex_key(prompt)
    if key in set(spatial_keys):
        return "spatial"
    if key in set(action_keys):
        return "action"
    return "spatial_action"


def three_in_one(kind: str, attribute: float, spatial: float | None, action: float | None) -> float:
    """The 3-in-1 score, with the official operation order."""
    if kind == "spatial":
        return (spatial + attribute) * 0.5  # type: ignore[operator]
    if kind == "action":
        return (action + attribute) * 0.5  # type: ignore[operator]
    if kind == "spatial_action":
        return (attribute + spatial + action) / 3  # type: ignore[operator]
    raise ValueError(f"unknown complex kind {kind!r}; expected one of {COMPLEX_KINDS}")


def remove_adjectives(tokens: Sequence[Tok]) -> str:
    """The CLIP text for complex prompts: every non-ADJ token, joined by single spaces."""
    return " ".join(t.text for t in tokens if t.pos != "ADJ")
