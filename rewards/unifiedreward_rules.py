"""UnifiedReward's prompts and answer rules (pure): "Final Score" parsing and Pref-GRPO's group win rate.

The prompt texts are the model's input format (the checkpoints were trained on them), so they are kept
verbatim from the official sources:

- ``POINT_PROMPT``: CodeGoat24/UnifiedReward ``inference_qwen/image_generation/
  qwen_point_score_image_generation.py`` (model ``CodeGoat24/UnifiedReward-qwen-7b``).
- ``FLOW_GRPO_POINT_PROMPT``: Flow-GRPO ``flow_grpo/rewards.py`` ``unifiedreward_score_sglang`` (sent to
  ``UnifiedReward-7b-v1.5``, a LLaVA-OneVision model, through SGLang; the leading ``<image>\\n`` is part of
  its text). Same criteria, without the "extract key elements" instruction.
- ``THINK_PAIR_PROMPT``: UnifiedReward-Think
  ``inference_qwen/image_generation/qwen_infer_cot_image_generation.py`` (model
  ``CodeGoat24/UnifiedReward-Think-qwen-7b``), identical to the template of Pref-GRPO's
  ``train_flux_pref_grpo.py`` at its release (2025-09).
- ``RANK_PAIR_PROMPT``: CodeGoat24/UnifiedReward
  ``inference_qwen/image_generation/qwen_pair_rank_image_generation.py``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

POINT_PROMPT = (
    "You are given a text caption and a generated image based on that caption. Your task is to "
    "evaluate this image based on two key criteria:\n1. Alignment with the Caption: Assess how well "
    "this image aligns with the provided caption. Consider the accuracy of depicted objects, their "
    "relationships, and attributes as described in the caption.\n2. Overall Image Quality: Examine the "
    "visual quality of this image, including clarity, detail preservation, color accuracy, and overall "
    "aesthetic appeal.\nExtract key elements from the provided text caption, evaluate their presence "
    "in the generated image using the format: 'element (type): value' (where value=0 means not "
    "generated, and value=1 means generated), and assign a score from 1 to 5 after 'Final "
    "Score:'.\nYour task is provided as follows:\nText Caption: [{prompt}]"
)
FLOW_GRPO_POINT_PROMPT = (
    "<image>\nYou are given a text caption and a generated image based on that caption. Your task is "
    "to evaluate this image based on two key criteria:\n1. Alignment with the Caption: Assess how well "
    "this image aligns with the provided caption. Consider the accuracy of depicted objects, their "
    "relationships, and attributes as described in the caption.\n2. Overall Image Quality: Examine the "
    "visual quality of this image, including clarity, detail preservation, color accuracy, and overall "
    "aesthetic appeal.\nBased on the above criteria, assign a score from 1 to 5 after 'Final "
    "Score:'.\nYour task is provided as follows:\nText Caption: [{prompt}]"
)
THINK_PAIR_PROMPT = (
    "Given a caption and two images generated based on this caption, please analyze in detail the two "
    "provided images. Evaluate them on various dimensions such as semantic consistency (how closely "
    "the image content aligns with the caption), aesthetics (composition, color usage, artistic "
    "expression), authenticity (realism and attention to detail), and any other factors you deem "
    "relevant. For each evaluation dimension, provide a score between 1-10 for both images (e.g., "
    "Image 1: 8/10, Image 2: 6/10) and provide a concise rationale for the score. Calculate the total "
    "score for each image by summing all dimension scores. Use a chain-of-thought process to detail "
    "your reasoning steps, and enclose all your detailed reasoning within <think> and </think> tags. "
    "Then, in the <answer> tag, output exactly one of the following strings: 'Image 1 is better' or "
    "'Image 2 is better' based on the total scores. No additional text is allowed in the <answer> "
    "section.\n\nExample output format:\n<think>\n1. Semantic consistency: Image 1 (9/10) - ...; Image "
    "2 (7/10) - ...\n2. Aesthetics: Image 2 (8/10) - ...; Image 1 (8/10) - ...\n3. Authenticity: Image "
    "1 (8/10) - ...; Image 2 (5/10) - ...\n[Additional dimensions if any]: Image 2 (8/10) - ...; Image "
    "1 (6/10) - ...\nTotal score:\nImage 1: 9+8+8+6=31\nImage 2: 7+8+5+8=28\n</think>\n<answer>Image 1 "
    "is better</answer>\n**Note: In the example above, scores and the final answer are placeholders "
    "meant only to demonstrate the format. Your actual evaluation should be based on the quality of "
    "two given images.**\n\nYour task is provided as follows:\nText Caption: [{prompt}]"
)
RANK_PAIR_PROMPT = (
    "You are given a text caption and two generated images based on that caption. Your task is to "
    "evaluate and compare these images based on two key criteria:\n1. Alignment with the Caption: "
    "Assess how well each image aligns with the provided caption. Consider the accuracy of depicted "
    "objects, their relationships, and attributes as described in the caption.\n2. Overall Image "
    "Quality: Examine the visual quality of each image, including clarity, detail preservation, color "
    "accuracy, and overall aesthetic appeal.\nCompare both images using the above criteria and select "
    "the one that better aligns with the caption while exhibiting superior visual quality.\nProvide a "
    "clear conclusion such as \"Image 1 is better.\", \"Image 2 is better.\" and \"Both images are equally "
    "good.\"\nYour task is provided as follows:\nText Caption: [{prompt}]"
)
POINT_PROMPTS = {"unifiedreward": POINT_PROMPT, "flow_grpo": FLOW_GRPO_POINT_PROMPT}
PAIR_PROMPTS = {"think": THINK_PAIR_PROMPT, "rank": RANK_PAIR_PROMPT}

SCORE_MIN, SCORE_MAX = 1.0, 5.0
# The official pattern is r"Final Score:\s*([1-5](?:\.\d+)?)"; capturing the whole number instead keeps
# "Final Score: 10" from reading as 1 (the official regex stops after the first digit).
_FINAL_SCORE = re.compile(r"Final Score:\s*(\d+(?:\.\d+)?)")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

FIRST, SECOND, TIE = 1, 2, 0  # pair verdicts; None: no verdict could be read
UNPARSED_POLICIES = ("tie", "drop")


@dataclass(frozen=True)
class PointParse:
    """A pointwise answer read: ``value`` in [1, 5], or None with the reason it is not applicable."""

    value: float | None
    reason: str | None = None


def parse_final_score(answer: str) -> PointParse:
    """The first ``Final Score: x`` with 1 <= x <= 5 (as the official ``re.search``); never a default 0.

    No "Final Score:" followed by a number, or only out-of-range numbers, is not applicable (the official
    scorers return 0.0 there, which would read as the worst possible image).
    """
    found = [float(m.group(1)) for m in _FINAL_SCORE.finditer(answer)]
    for value in found:
        if SCORE_MIN <= value <= SCORE_MAX:
            return PointParse(value)
    if found:
        return PointParse(None, f"Final Score {found[0]:g} outside [1, 5]")
    return PointParse(None, "no 'Final Score: <number>' in the answer")


def parse_pair_verdict(answer: str, style: str = "think") -> int | None:
    """Which image of a pair the answer prefers: ``FIRST``, ``SECOND``, ``TIE``, or None (unreadable).

    ``think`` (Pref-GRPO's rule): the first ``<answer>...</answer>``, stripped; "Image 1 is better" in it
    -> first, else "Image 2 is better" -> second, else unreadable. ``rank`` (the official pair-rank script
    prints the answer and has no parser; this rule is ours): exactly one of "Image 1 is better",
    "Image 2 is better", "equally good" anywhere in the answer, else unreadable.
    """
    if style == "think":
        m = _ANSWER_TAG.search(answer)
        conclusion = m.group(1).strip() if m else ""
        if "Image 1 is better" in conclusion:
            return FIRST
        if "Image 2 is better" in conclusion:
            return SECOND
        return None
    if style == "rank":
        said = {v for phrase, v in (("Image 1 is better", FIRST), ("Image 2 is better", SECOND),
                                    ("equally good", TIE)) if phrase in answer}
        return said.pop() if len(said) == 1 else None
    raise ValueError(f"pair style must be one of {sorted(PAIR_PROMPTS)}, got {style!r}")


@dataclass
class WinTally:
    """One image's record inside its group."""

    wins: float = 0.0
    comparisons: int = 0
    unparsed: int = 0
    failed: int = 0

    def rate(self, digits: int | None) -> float | None:
        if self.comparisons == 0:
            return None
        rate = self.wins / self.comparisons
        return rate if digits is None else round(rate, digits)


def win_tallies(
    n: int, judged: Sequence[tuple[int, int, int | None, bool]], unparsed: str = "tie"
) -> list[WinTally]:
    """Pref-GRPO's group rule: ``(first, second, verdict, ok)`` per judged pair -> each image's tally.

    A verdict gives the winner 1 (a tie 0.5 each) and counts one comparison for both images. An
    unreadable verdict counts as a tie with ``unparsed="tie"`` (official) or is left out with ``"drop"``.
    A pair whose request failed (``ok`` False: no answer at all) is always left out.
    """
    if unparsed not in UNPARSED_POLICIES:
        raise ValueError(f"unparsed must be one of {UNPARSED_POLICIES}, got {unparsed!r}")
    tallies = [WinTally() for _ in range(n)]
    for first, second, verdict, ok in judged:
        a, b = tallies[first], tallies[second]
        if not ok:
            a.failed += 1
            b.failed += 1
            continue
        if verdict is None:
            a.unparsed += 1
            b.unparsed += 1
            if unparsed == "drop":
                continue
            verdict = TIE
        a.comparisons += 1
        b.comparisons += 1
        if verdict == FIRST:
            a.wins += 1
        elif verdict == SECOND:
            b.wins += 1
        else:
            a.wins += 0.5
            b.wins += 0.5
    return tallies
