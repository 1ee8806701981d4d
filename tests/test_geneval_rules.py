"""GenEval's rule by hand: every tag in official, strict and partial mode, with the expected values worked out
from the official scorer's rule (djghosh13/geneval evaluate_images.py) and Flow-GRPO's reward server
(yifan123/reward-server gen_eval.py), not from our code.

Conventions below: boxes are [x1, y1, x2, y2] with y growing downward; a 10x10 box at x 0-10 has its
centre at (5, 5). Default thresholds: 0.3 (strictly greater), counting 0.9, max 16 per class.
"""

from __future__ import annotations

import pytest

from evalsuite.rewards.geneval_rules import (
    Thresholds,
    box_iou,
    color_requests,
    evaluate,
    judge,
    keep_detections,
    relative_position,
    validate_metadata,
)


def det(box=(0, 0, 10, 10), score=0.95):
    return {"box": list(box), "score": score, "mask": None}


DEFAULT = Thresholds()


def run(dets, meta, colors=None, thresholds=DEFAULT):
    """{mode: RuleResult} for the three modes."""
    return {m: judge(dets, meta, mode=m, colors=colors, thresholds=thresholds)
            for m in ("official", "strict", "partial")}


def check(results, official, strict, partial, failed=None):
    """official/strict: expected booleans; partial: expected value (its ``correct`` is the strict boolean)."""
    assert results["official"].mode == "official"
    assert results["strict"].mode == "strict"
    assert results["partial"].mode == "partial"
    assert results["official"].correct is official
    assert results["official"].value == (1.0 if official else 0.0)
    assert results["strict"].correct is strict
    assert results["strict"].value == (1.0 if strict else 0.0)
    assert results["partial"].correct is strict
    assert results["partial"].value == pytest.approx(partial, abs=1e-12)
    if failed is not None:
        assert results["official"].failed_clauses == tuple(failed)
    for r in results.values():  # every failure names its clause
        assert len(r.reasons) >= len(r.failed_clauses)
        for label in r.failed_clauses:
            assert any(line.startswith(label + ":") for line in r.reasons)


# -- single_object -----------------------------------------------------------------------------------------
SINGLE = {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}


def test_single_object_one_cat():
    check(run({"cat": [det()]}, SINGLE), True, True, 1.0, failed=[])


def test_single_object_two_cats_official_at_least_strict_exact():
    # official: "at least 1"; strict: exactly 1 -> fails; partial: 1 - |1 - 2| / 1 = 0
    res = run({"cat": [det(score=0.9), det(score=0.8)]}, SINGLE)
    check(res, True, False, 0.0)
    assert res["strict"].failed_clauses == ("include[0]",)
    assert "cat==1, found 2" in res["strict"].reason
    assert res["official"].counts == {"cat": 2}


def test_single_object_three_cats_partial_is_not_clamped():
    # Flow-GRPO: 1 - |1 - 3| / 1 = -1 (no clamp)
    check(run({"cat": [det(score=s) for s in (0.9, 0.8, 0.7)]}, SINGLE), True, False, -1.0)


def test_single_object_missing_and_score_exactly_at_threshold_is_dropped():
    # 0.3 is not > 0.3: no cat kept; the dog is irrelevant
    res = run({"cat": [det(score=0.3)], "dog": [det(score=0.9)]}, SINGLE)
    check(res, False, False, 0.0, failed=["include[0]"])
    assert res["official"].reason == "include[0]: expected cat>=1, found 0"
    assert res["official"].counts == {"cat": 0}


def test_threshold_is_strict_and_overridable():
    assert keep_detections({"cat": [det(score=0.3)]}, "single_object") == {}
    assert len(keep_detections({"cat": [det(score=0.3000001)]}, "single_object")["cat"]) == 1
    check(run({"cat": [det(score=0.25)]}, SINGLE, thresholds=Thresholds(threshold=0.2)), True, True, 1.0)
    check(run({"cat": [det(score=0.25)]}, SINGLE, thresholds=Thresholds(threshold=0.25)), False, False, 0.0)


# -- two_object --------------------------------------------------------------------------------------------
TWO = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]}


def test_two_object_both_present():
    # the low-score dog (0.2) is dropped, so exactly one dog is kept
    check(run({"cat": [det()], "dog": [det(score=0.31), det(score=0.2)]}, TWO), True, True, 1.0, failed=[])


def test_two_object_one_missing():
    # partial: mean(1 - 0/1, 1 - 1/1) = 0.5
    res = run({"cat": [det()]}, TWO)
    check(res, False, False, 0.5, failed=["include[1]"])
    assert res["partial"].terms == (1.0, 0.0)


def test_two_object_extra_cat():
    # official passes (at least one of each); strict fails on cat; partial mean(1 - 1/1, 1) = 0.5
    res = run({"cat": [det(), det(score=0.5)], "dog": [det()]}, TWO)
    check(res, True, False, 0.5)
    assert res["strict"].failed_clauses == ("include[0]",)


# -- counting (0.9 threshold, exclude N+1) -----------------------------------------------------------------
THREE_CLOCKS = {"tag": "counting", "include": [{"class": "clock", "count": 3}],
                "exclude": [{"class": "clock", "count": 4}]}


def clocks(*scores):
    return {"clock": [det(score=s) for s in scores]}


def test_counting_exact():
    check(run(clocks(0.99, 0.95, 0.92), THREE_CLOCKS), True, True, 1.0, failed=[])


def test_counting_one_too_many_fires_the_exclude():
    # official: include (>=3) holds, exclude (>=4 kept) fires; strict: 4 != 3; partial 1 - 1/3
    res = run(clocks(0.99, 0.95, 0.92, 0.91), THREE_CLOCKS)
    check(res, False, False, 2 / 3, failed=["exclude[0]"])
    assert res["official"].reason == "exclude[0]: expected clock<4, found 4"


def test_counting_uses_the_counting_threshold():
    # 0.85 and 0.5 would pass the 0.3 threshold but not the counting one -> exactly three kept
    check(run(clocks(0.99, 0.95, 0.92, 0.85, 0.5), THREE_CLOCKS), True, True, 1.0)
    # the same detections for a non-counting tag keep all five
    assert len(keep_detections(clocks(0.99, 0.95, 0.92, 0.85, 0.5), "two_object")["clock"]) == 5
    # lowering counting_threshold to 0.8 keeps four: exclude fires, partial 1 - 1/3
    low = Thresholds(counting_threshold=0.8)
    check(run(clocks(0.99, 0.95, 0.92, 0.85, 0.5), THREE_CLOCKS, thresholds=low), False, False, 2 / 3)


def test_counting_score_at_counting_threshold_is_dropped():
    # 0.9 is not > 0.9: two kept; official fails the include; partial 1 - 1/3
    res = run(clocks(0.99, 0.95, 0.9), THREE_CLOCKS)
    check(res, False, False, 2 / 3, failed=["include[0]"])
    assert res["official"].reason == "include[0]: expected clock>=3, found 2"


def test_counting_two_short():
    # one clock: partial 1 - |3 - 1| / 3 = 1/3
    check(run(clocks(0.99), THREE_CLOCKS), False, False, 1 / 3, failed=["include[0]"])


def test_max_objects_caps_kept_detections():
    dogs = {"dog": [det(score=0.95 - i * 0.001) for i in range(20)]}
    assert len(keep_detections(dogs, "two_object")["dog"]) == 16
    assert [d["score"] for d in keep_detections(dogs, "two_object", Thresholds(max_objects=2))["dog"]] == [
        0.95, 0.949]
    # 20 dogs detected, but only 16 kept: "exactly 16" holds and the exclude (>= 17) does not fire
    meta = {"tag": "counting", "include": [{"class": "dog", "count": 16}],
            "exclude": [{"class": "dog", "count": 17}]}
    check(run(dogs, meta), True, True, 1.0)
    res = run(dogs, meta, thresholds=Thresholds(max_objects=20))
    check(res, False, False, 1 - 4 / 16, failed=["exclude[0]"])


def test_keep_sorts_by_score_and_drops_empty_classes():
    kept = keep_detections({"cat": [det(score=0.4), det(score=0.9), det(score=0.6)], "dog": [det(score=0.1)]},
                           "single_object")
    assert [d["score"] for d in kept["cat"]] == [0.9, 0.6, 0.4]
    assert "dog" not in kept


def test_max_overlap_suppression():
    # inclusive-pixel areas: [0,0,9,9] -> 100, [0,0,9,4] -> 50, intersection 50 -> IoU 0.5
    assert box_iou([0, 0, 9, 9], [0, 0, 9, 4]) == 0.5
    assert box_iou([0, 0, 9, 9], [20, 20, 29, 29]) == 0.0
    # [0,0,9,9] and [5,0,14,9]: intersection 5x10 = 50, union 150
    assert box_iou([0, 0, 9, 9], [5, 0, 14, 9]) == pytest.approx(1 / 3)
    two = {"cat": [det([0, 0, 9, 9], 0.9), det([0, 0, 9, 4], 0.8)]}
    assert len(keep_detections(two, "single_object")["cat"]) == 2  # default 1.0: no suppression
    assert len(keep_detections(two, "single_object", Thresholds(max_overlap=0.5))["cat"]) == 1  # 0.5 !< 0.5
    assert len(keep_detections(two, "single_object", Thresholds(max_overlap=0.6))["cat"]) == 2
    # suppression makes "one cat" strictly true
    check(run(two, SINGLE, thresholds=Thresholds(max_overlap=0.5)), True, True, 1.0)


# -- colors ------------------------------------------------------------------------------------------------
RED_CAR = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}


def test_colors_right_colour():
    check(run({"car": [det()]}, RED_CAR, colors={"car": ["red"]}), True, True, 1.0, failed=[])


def test_colors_wrong_colour():
    # partial: count term 1, colour term 1 - |1 - 0| / 1 = 0 -> 0.5
    res = run({"car": [det()]}, RED_CAR, colors={"car": ["blue"]})
    check(res, False, False, 0.5, failed=["include[0]"])
    assert res["official"].reason == "include[0]: expected red car>=1, found 0 red; and 1 blue"
    assert res["partial"].terms == (1.0, 0.0)


def test_colors_only_the_most_confident_objects_are_judged():
    # official looks at the top-1 car only: red first passes, blue first fails
    dets = {"car": [det(score=0.9), det(score=0.8)]}
    res = run(dets, RED_CAR, colors={"car": ["red", "blue"]})
    # strict/partial: two cars != one: count term 1 - 1/1 = 0, plus a 0.0 for the colour part -> 0
    check(res, True, False, 0.0)
    assert res["partial"].terms == (0.0, 0.0)
    check(run(dets, RED_CAR, colors={"car": ["blue", "red"]}), False, False, 0.0)


def test_colors_object_missing():
    check(run({}, RED_CAR, colors={}), False, False, 0.0, failed=["include[0]"])


def test_colors_needs_count_objects_of_the_colour():
    # (not in GenEval's prompt set, but the rule): two red cars, one classified blue
    meta = {"tag": "colors", "include": [{"class": "car", "count": 2, "color": "red"}]}
    res = run({"car": [det(score=0.9), det(score=0.8)]}, meta, colors={"car": ["red", "blue"]})
    # partial: count term 1, colour term 1 - |2 - 1| / 2 = 0.5 -> 0.75
    check(res, False, False, 0.75)
    two_red = {"car": ["red", "red"]}
    check(run({"car": [det(score=0.9), det(score=0.8)]}, meta, colors=two_red), True, True, 1.0)


def test_color_requests_per_mode():
    meta = {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                             {"class": "cup", "count": 1, "color": "blue"}]}
    kept = {"car": [det(), det()], "cup": [det()]}
    assert color_requests(kept, meta, "official") == {"car": 1, "cup": 1}
    # strict/partial never read colours when the count is not exact
    assert color_requests(kept, meta, "strict") == {"cup": 1}
    assert color_requests(kept, meta, "partial") == {"cup": 1}
    assert color_requests({}, meta, "official") == {}


def test_missing_colour_prediction_is_an_error():
    with pytest.raises(ValueError, match="colours of the first 1 'car'"):
        judge({"car": [det()]}, RED_CAR, colors={})


# -- position ----------------------------------------------------------------------------------------------
def position_meta(relation):
    """'a photo of a dog <relation> a cat': the cat is include[0], the dog points back to it."""
    return {"tag": "position", "include": [{"class": "cat", "count": 1},
                                           {"class": "dog", "count": 1, "position": [relation, 0]}]}


CAT = [0, 0, 10, 10]  # centre (5, 5)


@pytest.mark.parametrize(("dog_box", "holds"), [
    ([30, 0, 40, 10], "right of"),  # offset (30, 0): shrink 0.1*(10+10)=2 -> 28/30 = 0.93 > 0.5
    ([-40, 0, -30, 10], "left of"),  # offset (-40, 0): -38/40 = -0.95
    ([0, 30, 10, 40], "below"),  # y grows downward: offset (0, 30) -> dy = 0.93
    ([0, -30, 10, -20], "above"),  # offset (0, -30) -> dy = -0.93
])
def test_position_each_direction_on_each_axis(dog_box, holds):
    dets = {"cat": [det(CAT)], "dog": [det(dog_box)]}
    opposite = {"right of": "left of", "left of": "right of", "above": "below", "below": "above"}[holds]
    assert relative_position(dog_box, CAT) == {holds}
    check(run(dets, position_meta(holds)), True, True, 1.0, failed=[])
    # the opposite relation fails; Flow-GRPO's terms: cat 1, dog 1, 0.0 at the failure, then its 1.0 anyway
    res = run(dets, position_meta(opposite))
    check(res, False, False, 0.75, failed=["include[1]"])
    assert res["partial"].terms == (1.0, 1.0, 0.0, 1.0)
    assert res["official"].reason == f"include[1]: expected dog {opposite} include[0], found {holds}"


def test_position_margin_kills_the_relation():
    # 100x100 boxes, centres 15 apart: |15| - 0.1*(100+100) < 0 -> shrunk offset 0 -> no relation at all
    cat, dog = [0, 0, 100, 100], [15, 0, 115, 100]
    assert relative_position(dog, cat) == set()
    res = run({"cat": [det(cat)], "dog": [det(dog)]}, position_meta("right of"))
    check(res, False, False, 0.75, failed=["include[1]"])
    assert "found no relation" in res["official"].reason
    # without the margin the dog's centre is simply to the right
    check(run({"cat": [det(cat)], "dog": [det(dog)]}, position_meta("right of"),
              thresholds=Thresholds(position_threshold=0.0)), True, True, 1.0)


def test_position_normalised_by_the_unshrunk_offset():
    # 40-wide boxes 10 apart: shrunk x = 10 - 0.1*80 = 2, divided by |offset| = 10 -> 0.2: not "right of"
    assert relative_position([10, 0, 50, 10], [0, 0, 40, 10]) == set()
    # offset (20, 40), 10x10 boxes: shrunk (18, 38) / 44.72 = (0.40, 0.85): below, but not right of
    assert relative_position([20, 40, 30, 50], CAT) == {"below"}
    # offset (30, 30): (28, 28) / 42.43 = (0.66, 0.66): two relations at once
    assert relative_position([30, 30, 40, 40], CAT) == {"right of", "below"}
    dets = {"cat": [det(CAT)], "dog": [det([30, 30, 40, 40])]}
    check(run(dets, position_meta("right of")), True, True, 1.0)
    check(run(dets, position_meta("below")), True, True, 1.0)
    check(run(dets, position_meta("above")), False, False, 0.75)


def test_position_reference_failure_propagates():
    # no cat: include[0] fails, so include[1] has no target, whatever the dog does
    res = run({"dog": [det([30, 0, 40, 10])]}, position_meta("right of"))
    # partial: cat 1 - 1/1 = 0, dog count 1, no-target 0.0 -> 1/3
    check(res, False, False, 1 / 3, failed=["include[0]", "include[1]"])
    assert res["official"].reasons[1] == "include[1]: no target for dog to be right of (include[0] failed)"
    assert res["partial"].terms == (0.0, 1.0, 0.0)


def test_position_reference_uses_only_the_top_objects():
    # two cats: the top one at the left, a second one right of the dog
    dets = {"cat": [det(CAT, 0.9), det([60, 0, 70, 10], 0.8)], "dog": [det([30, 0, 40, 10])]}
    res = run(dets, position_meta("right of"))
    # official compares with the top cat only -> holds; strict: two cats != 1 -> include[0] fails and the
    # dog has no target; partial: (1 - 1/1, 1, 0.0) -> 1/3
    check(res, True, False, 1 / 3)
    assert res["strict"].failed_clauses == ("include[0]", "include[1]")


def test_position_every_object_against_every_reference():
    meta = {"tag": "position", "include": [{"class": "cat", "count": 2},
                                           {"class": "dog", "count": 1, "position": ["right of", 0]}]}
    dets = {"cat": [det(CAT, 0.9), det([60, 0, 70, 10], 0.8)], "dog": [det([30, 0, 40, 10])]}
    # right of the first cat, left of the second: fails in every mode; partial (1, 1, 0, 1) -> 0.75
    check(run(dets, meta), False, False, 0.75, failed=["include[1]"])
    dets["dog"] = [det([90, 0, 100, 10])]
    check(run(dets, meta), True, True, 1.0)


def test_position_not_checked_when_count_fails():
    # two dogs (strict): count term 0, extra 0.0 for the position part; official takes the top dog
    dets = {"cat": [det(CAT)], "dog": [det([30, 0, 40, 10], 0.9), det([-40, 0, -30, 10], 0.8)]}
    res = run(dets, position_meta("right of"))
    check(res, True, False, (1 + 0 + 0) / 3)
    assert res["partial"].terms == (1.0, 0.0, 0.0)


# -- color_attr --------------------------------------------------------------------------------------------
ATTR = {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                         {"class": "cup", "count": 1, "color": "blue"}]}
ATTR_DETS = {"car": [det()], "cup": [det([20, 0, 30, 10])]}


def test_color_attr_both_right():
    res = run(ATTR_DETS, ATTR, colors={"car": ["red"], "cup": ["blue"]})
    check(res, True, True, 1.0, failed=[])
    assert res["partial"].terms == (1.0, 1.0, 1.0, 1.0)


def test_color_attr_one_wrong():
    check(run(ATTR_DETS, ATTR, colors={"car": ["red"], "cup": ["green"]}), False, False, 0.75,
          failed=["include[1]"])


def test_color_attr_swapped_colours():
    # colour attribution: a blue car and a red cup is wrong on both clauses; partial (1, 0, 1, 0)
    check(run(ATTR_DETS, ATTR, colors={"car": ["blue"], "cup": ["red"]}), False, False, 0.5,
          failed=["include[0]", "include[1]"])


def test_color_attr_object_missing():
    # no cup: (1, 1) for the car, (1 - 1/1, 0.0) for the cup -> 0.5
    check(run({"car": [det()]}, ATTR, colors={"car": ["red"]}), False, False, 0.5, failed=["include[1]"])


# -- misc --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["official", "strict", "partial"])
def test_metadata_without_include_clauses_is_refused_in_every_mode(mode):
    # It asks for nothing: the official rule would call every image correct, partial credit 0.0.
    meta = {"tag": "single_object", "include": []}
    with pytest.raises(ValueError, match="'include' is empty"):
        evaluate({"cat": [det()]}, meta, mode=mode, colors={"cat": ["red"]})


def test_evaluate_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        evaluate({}, SINGLE, mode="lenient")


@pytest.mark.parametrize(("meta", "message"), [
    ({"include": [{"class": "cat", "count": 1}]}, "'tag'"),
    ({"tag": "single_object"}, "no 'include'"),
    ({"tag": "x", "include": [{"class": "cat", "count": 0}]}, r"include\[0\]: 'count'"),
    ({"tag": "x", "include": [{"class": "cat", "count": 1, "color": "teal"}]}, "colour 'teal'"),
    ({"tag": "x", "include": [{"class": "cat", "count": 1, "position": ["left of", 0]}]}, "earlier include"),
    ({"tag": "x", "include": [{"class": "cat", "count": 1},
                              {"class": "dog", "count": 1, "position": ["beside", 0]}]}, "'beside'"),
    ({"tag": "x", "include": [{"class": "mouse", "count": 1}]}, "unknown class 'mouse'"),
    ({"tag": "x", "include": []}, "'include' is empty"),
    ({"tag": "x", "include": [{"class": "dog", "count": 1}], "exclude": [{"class": "cat"}]},
     r"exclude\[0\]: 'count'"),
])
def test_validate_metadata_names_the_problem(meta, message):
    with pytest.raises(ValueError, match=message):
        validate_metadata(meta, classnames=["cat", "dog", "computer mouse"])


def test_validate_metadata_accepts_every_official_record(data_dir):
    import json

    from evalsuite.rewards.geneval import GENEVAL_OBJECT_NAMES

    names = [line.strip() for line in (data_dir / "geneval" / "object_names.txt").read_text().splitlines()]
    assert tuple(names) == GENEVAL_OBJECT_NAMES
    lines = (data_dir / "geneval" / "evaluation_metadata.jsonl").read_text().splitlines()
    assert len(lines) == 553
    for line in lines:
        validate_metadata(json.loads(line), GENEVAL_OBJECT_NAMES)
    # Flow-GRPO's GenEval training/test metadata use the same classes and clauses
    for path in sorted((data_dir / "flowgrpo").glob("geneval*/*.jsonl")):
        for line in path.read_text().splitlines():
            validate_metadata(json.loads(line), GENEVAL_OBJECT_NAMES)


def test_thresholds_validate():
    with pytest.raises(ValueError, match="max_objects"):
        Thresholds(max_objects=-1)
    with pytest.raises(ValueError, match="threshold"):
        Thresholds(threshold=float("nan"))
    assert Thresholds().min_confidence == 0.3
    assert Thresholds(counting_threshold=0.1).min_confidence == 0.1
