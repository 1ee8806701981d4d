"""UnifiedReward's pure rules against hand-written answers and hand-counted groups, and its prompts
against the official texts (sha256 of the strings in the upstream files, computed from those files)."""

from __future__ import annotations

import hashlib

import pytest

from evalsuite.rewards import unifiedreward_rules as rules
from evalsuite.rewards.unifiedreward_rules import (
    FIRST,
    SECOND,
    TIE,
    parse_final_score,
    parse_pair_verdict,
    win_tallies,
)

# sha256 of each prompt string as written upstream (its f-string placeholder kept as the literal "{prompt}"):
OFFICIAL_SHA256 = {
    # CodeGoat24/UnifiedReward inference_qwen/image_generation/qwen_point_score_image_generation.py
    "POINT_PROMPT": "f56f919ce3bc6aab3c173a5f836defe195e17e9614753e8b4c3dc2405bd4975b",
    # yifan123/flow_grpo flow_grpo/rewards.py (unifiedreward_score_sglang), commit ac4c86e
    "FLOW_GRPO_POINT_PROMPT": "d68ab1dcf4dc3a39ec5dfab963d17fe30a6e5f713eb49f743ed88a4c8ce4317f",
    # UnifiedReward-Think inference_qwen/image_generation/qwen_infer_cot_image_generation.py
    # (= CodeGoat24/Pref-GRPO fastvideo/train_flux_pref_grpo.py `template`, commit 1f2e015)
    "THINK_PAIR_PROMPT": "342f6a4bd0efdae0ca754259d78404e534aae5f1c5527dd47f6062028305e3ff",
    # CodeGoat24/UnifiedReward inference_qwen/image_generation/qwen_pair_rank_image_generation.py
    "RANK_PAIR_PROMPT": "0fd2f5c43a06516503fde3e64ffc98fff6f3a8815b5eac8dc5f0d81cee686614",
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_SHA256))
def test_prompts_are_the_official_text(name):
    text = getattr(rules, name)
    assert hashlib.sha256(text.encode()).hexdigest() == OFFICIAL_SHA256[name]
    assert text.count("{prompt}") == 1 and text.format(prompt="a cat").endswith("Text Caption: [a cat]")


@pytest.mark.parametrize(("answer", "value"), [
    ("Key elements:\ncat (object): 1\nFinal Score: 4", 4.0),
    ("Final Score:3", 3.0),
    ("Final Score: 4.5 out of 5", 4.5),
    ("Final Score:\n 2.25", 2.25),
    ("Final Score: 5.", 5.0),  # the sentence's full stop is not a decimal
    ("Final Score: 1", 1.0),
    ("Final Score: 3/5", 3.0),
    ("Final Score: 0\nOn reflection... Final Score: 2", 2.0),  # first in-range one, as re.search does
    ("Final Score: 4\nFinal Score: 1", 4.0),
])
def test_final_score_read(answer, value):
    assert parse_final_score(answer) == rules.PointParse(value)


@pytest.mark.parametrize(("answer", "reason"), [
    ("The image shows a cat. Score: 4", "no 'Final Score"),
    ("final score: 4", "no 'Final Score"),  # case-sensitive, as the official pattern
    ("**Final Score:** 4", "no 'Final Score"),
    ("Final Score: four", "no 'Final Score"),
    ("", "no 'Final Score"),
    ("Final Score: 0", "outside [1, 5]"),
    ("Final Score: 0.5", "outside [1, 5]"),
    ("Final Score: 10", "outside [1, 5]"),  # the official regex would read 1 here
    ("Final Score: 5.5", "outside [1, 5]"),  # and 5.5 here
])
def test_final_score_not_applicable_never_zero(answer, reason):
    parsed = parse_final_score(answer)
    assert parsed.value is None and reason in parsed.reason


@pytest.mark.parametrize(("answer", "verdict"), [
    ("<think>1. ... Image 1: 31, Image 2: 28</think>\n<answer>Image 1 is better</answer>", FIRST),
    ("<think>x</think><answer> Image 2 is better </answer>", SECOND),
    ("<think>Image 1 is better in aesthetics</think><answer>Image 2 is better</answer>", SECOND),
    ("<answer>\nImage 1 is better.\n</answer>", FIRST),
    ("<answer>Image 1 is better</answer><answer>Image 2 is better</answer>", FIRST),  # the first tag
    ("<think>Image 1 is better</think>", None),  # no answer tag: unreadable
    ("<answer>Both are good</answer>", None),
    ("<answer>image 1 is better</answer>", None),  # case-sensitive, as Pref-GRPO
    ("", None),
])
def test_think_verdict(answer, verdict):
    assert parse_pair_verdict(answer, "think") == verdict


@pytest.mark.parametrize(("answer", "verdict"), [
    ("Image 1 is better.", FIRST),
    ("Considering alignment, Image 2 is better.", SECOND),
    ("Both images are equally good.", TIE),
    ("Image 1 is better than Image 2.", FIRST),
    ("Image 1 is better in color, but overall Image 2 is better.", None),  # conflicting
    ("I like the first one.", None),
])
def test_rank_verdict(answer, verdict):
    assert parse_pair_verdict(answer, "rank") == verdict


def test_unknown_style_is_an_error():
    with pytest.raises(ValueError, match="style"):
        parse_pair_verdict("x", "pointwise")


def test_group_win_rate_by_hand():
    # 4 images, 6 pairs: 0>1, 2>0, 0~3 (unreadable), 1>2, 3>1, 2 vs 3 failed (no answer)
    judged = [(0, 1, FIRST, True), (0, 2, SECOND, True), (0, 3, None, True),
              (1, 2, FIRST, True), (1, 3, SECOND, True), (2, 3, None, False)]
    tie = win_tallies(4, judged, "tie")
    # image 0: 1 + 0 + 0.5 over 3; image 1: 0 + 1 + 0 over 3; image 2: 1 + 0 over 2; image 3: 0.5 + 1 over 2
    assert [(t.wins, t.comparisons) for t in tie] == [(1.5, 3), (1.0, 3), (1.0, 2), (1.5, 2)]
    assert [t.rate(3) for t in tie] == [0.5, 0.333, 0.5, 0.75]
    assert [t.rate(None) for t in tie] == [0.5, 1 / 3, 0.5, 0.75]
    assert [(t.unparsed, t.failed) for t in tie] == [(1, 0), (0, 0), (0, 1), (1, 1)]
    drop = win_tallies(4, judged, "drop")  # the unreadable pair is left out as well
    assert [(t.wins, t.comparisons) for t in drop] == [(1.0, 2), (1.0, 3), (1.0, 2), (1.0, 1)]


def test_group_ties_and_empty_tallies():
    explicit = win_tallies(3, [(0, 1, TIE, True), (0, 2, TIE, True), (1, 2, FIRST, True)])
    assert [t.rate(3) for t in explicit] == [0.5, 0.75, 0.25]
    nothing = win_tallies(2, [(0, 1, None, False)])
    assert [t.rate(3) for t in nothing] == [None, None]  # never 0: no comparison at all
    with pytest.raises(ValueError, match="unparsed"):
        win_tallies(2, [], "zero")
