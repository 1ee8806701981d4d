"""T2I-CompBench's scorer rules as pure functions (Karine-Huang/T2I-CompBench, read at 1b70949).

Each function restates one piece of the official evaluation scripts, quirks included, so that it can be
tested by hand and combined with any model backend (:mod:`evalsuite.rewards.blip_vqa`,
:mod:`evalsuite.rewards.compbench_detection`):

- BLIP-VQA (``BLIPvqa_eval/BLIP_vqa.py`` + ``data/utils.py``): the first 8 spaCy noun chunks each become a
  question ``"{chunk}?"`` (lower-cased, a few punctuation marks removed); each answer is P(yes) written
  with 4 decimals; the image score is the float32 product, again written with 4 decimals.
- 2D spatial (``UniDet_eval/2D_spatial_eval.py``): the relation word is the first entry of a fixed list
  found as a substring of the prompt; the two objects are the first and last NOUN tokens (complex
  prompts: the nouns around a preposition); each object is the highest-scoring detection whose label
  equals the noun ("girl"/"boy"/"man"/"woman" -> "person"); score = 0.25·conf1 + 0.25·conf2 +
  position/2, and any score < 0.5 becomes 0. Boxes are in the detector's input frame: the image resized
  to shorter side 479 (longer side at most 480), which is what the 150-pixel distance threshold means.
  Quirk kept: "on top of" is a relation word but has no position rule, so its position score is 0.
- numeracy (``UniDet_eval/numeracy_eval.py``): "a/an/one … eight" + an object from ``new_objects.txt``
  give (object, count) targets; duplicate boxes of one label are merged; each target is worth
  ``1/len(targets)``: half for being detected, half for the exact count.

Prompt files, image names and the complex "3-in-1" combination are benchmark rules
(:mod:`evalsuite.benchmarks.t2i_compbench_rules`); tokens come from :func:`evalsuite.nlp.parse`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from evalsuite.nlp import Tok, span_text

Box = tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in pixels
# label -> [(box, confidence), ...], most confident first (the official code takes ``obj.index(name)``,
# the first detection of that label in the detector's score-sorted output)
LabelledDetections = Mapping[str, Sequence[tuple[Box, float]]]

# -- BLIP-VQA (attribute binding) ---------------------------------------------------------------------------
BLIP_MAX_QUESTIONS = 8  # BLIP_vqa.py --np_num default: noun chunks past the 8th are never asked


def pre_question(question: str, max_words: int = 50) -> str:
    """BLIP's ``pre_question``: lower-case, drop ``.!"()*#:;~``, strip trailing spaces, cap at 50 words."""
    question = "".join(c for c in question.lower() if c not in '.!"()*#:;~').rstrip(" ")
    words = question.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else question


def blip_questions(noun_chunks: Sequence[str], max_questions: int = BLIP_MAX_QUESTIONS) -> list[str]:
    """One question per noun chunk: ``pre_question(f"{chunk}?")``, the first ``max_questions`` chunks."""
    return [pre_question(f"{chunk}?") for chunk in noun_chunks[:max_questions]]


def format4(value: float) -> float:
    """A value after the official ``'{:.4f}'`` round trip through JSON text."""
    return float(f"{value:.4f}")


def attribute_score(p_yes: Sequence[float], official_rounding: bool = True) -> float:
    """BLIP-VQA image score: product of the per-question P(yes); 1.0 when no question was asked.

    ``official_rounding``: each answer is first written with 4 decimals, multiplied in float32 (the
    official reward tensor), and the product written with 4 decimals again, as ``BLIP_vqa.py`` does.
    """
    if not official_rounding:
        return float(math.prod(float(p) for p in p_yes))
    product = np.float32(1.0)
    for p in p_yes:
        product = np.float32(product * np.float32(format4(float(p))))
    return format4(float(product))


# -- 2D spatial ---------------------------------------------------------------------------------------------
SPATIAL_WORDS: tuple[str, ...] = (
    "on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of", "on the top of",
    "on top of",
)  # fmt: skip
PERSON_WORDS: tuple[str, ...] = ("girl", "boy", "man", "woman")
COMPLEX_PREPOSITIONS: tuple[str, ...] = (
    "on top of", "on bottom of", "on the left", "on the right", "next to", "on side of", "near",
)  # fmt: skip


def find_locality(prompt: str) -> str | None:
    """The relation word: the first of :data:`SPATIAL_WORDS` that occurs anywhere in the prompt."""
    for word in SPATIAL_WORDS:
        if word in prompt:
            return word
    return None


def simple_objects(tokens: Sequence[Tok]) -> tuple[str | None, str | None]:
    """Simple prompts: first and last NOUN token (the official script crashes without one: None here)."""
    nouns = [t.text for t in tokens if t.pos == "NOUN"]
    if not nouns:
        return None, None
    return nouns[0], nouns[-1]


def complex_objects(tokens: Sequence[Tok]) -> tuple[str | None, str | None]:
    """Complex prompts: around every preposition, the nearest NOUN/PROPN before it and the nearest NOUN
    after it (else a PROPN followed by a non-PROPN); exactly two objects in all, or none."""
    objects: list[str] = []
    n = len(tokens)
    for i in range(n):
        k = next((w for w in (3, 2, 1) if span_text(tokens[i : i + w]) in COMPLEX_PREPOSITIONS), 0)
        if not k:
            continue
        for j in range(i - 1, -1, -1):
            if tokens[j].pos in ("NOUN", "PROPN"):
                objects.append(tokens[j].text)
                break
        fallback = False
        for j in range(i + k, n):
            if tokens[j].pos == "NOUN":
                objects.append(tokens[j].text)
                break
            if j == n - 1:
                fallback = True
        if fallback:
            for j in range(i + k, n):
                if j + 1 < n and tokens[j].pos == "PROPN" and tokens[j + 1].pos != "PROPN":
                    objects.append(tokens[j].text)
                    break
    if len(objects) == 2:
        return objects[0], objects[1]
    return None, None


def _as_person(word: str | None) -> str | None:
    return "person" if word in PERSON_WORDS else word


def unidet_input_size(width: int, height: int, size: int = 479, max_size: int = 480) -> tuple[int, int]:
    """(width, height) after ``torchvision.transforms.Resize(size=479, max_size=480)``, UniDet's input."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    if new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


def scale_box(box: Sequence[float], sx: float, sy: float) -> Box:
    return (float(box[0]) * sx, float(box[1]) * sy, float(box[2]) * sx, float(box[3]) * sy)


def determine_position(
    locality: str | None, box1: Box, box2: Box, iou_threshold: float = 0.1, distance_threshold: float = 150.0
) -> float:
    """Official soft position score of object 1 relative to object 2 (image y grows downwards).

    ``next to``/``near``/``on side of``: 1 if the centres are closer than the threshold on either axis,
    else threshold / larger axis distance. Directional words: the centre offset must point the right way
    and be mostly along the right axis; then 1 if IoU < 0.1, else 0.1 / IoU. Anything else: 0.
    """
    c1 = ((box1[0] + box1[2]) / 2, (box1[1] + box1[3]) / 2)
    c2 = ((box2[0] + box2[2]) / 2, (box2[1] + box2[3]) / 2)
    dx = c2[0] - c1[0]
    dy = c2[1] - c1[1]
    x_overlap = max(0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    y_overlap = max(0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    intersection = x_overlap * y_overlap
    area1 = (box1[2] - box1[0]) * (box1[3] - box1[1])
    area2 = (box2[2] - box2[0]) * (box2[3] - box2[1])
    union = area1 + area2 - intersection
    iou = intersection / union if union else 0.0  # the official divides by zero for two empty boxes

    def along(main: float, other: float) -> float:
        if abs(main) > abs(other):
            return 1.0 if iou < iou_threshold else iou_threshold / iou
        return 0.0

    if locality in ("next to", "on side of", "near"):
        if abs(dx) < distance_threshold or abs(dy) < distance_threshold:
            return 1.0
        return distance_threshold / max(abs(dx), abs(dy))
    if locality == "on the right of":
        return along(dx, dy) if dx < 0 else 0.0
    if locality == "on the left of":
        return along(dx, dy) if dx > 0 else 0.0
    if locality == "on the bottom of":
        return along(dy, dx) if dy < 0 else 0.0
    if locality == "on the top of":
        return along(dy, dx) if dy > 0 else 0.0
    return 0.0  # includes "on top of" (in the relation list, but without a rule) and no relation word


@dataclass(frozen=True)
class SpatialResult:
    score: float
    raw: float  # before the < 0.5 cut
    locality: str | None
    obj1: str | None
    obj2: str | None
    found1: bool
    found2: bool
    conf1: float | None = None
    conf2: float | None = None
    position: float | None = None
    reason: str = ""


def spatial_score(
    prompt: str,
    tokens: Sequence[Tok],
    detections: LabelledDetections,
    *,
    complex_prompt: bool = False,
    iou_threshold: float = 0.1,
    distance_threshold: float = 150.0,
) -> SpatialResult:
    """Official 2D-spatial score of one image from its (label -> boxes) detections in UniDet's frame."""
    locality = find_locality(prompt)
    obj1, obj2 = complex_objects(tokens) if complex_prompt else simple_objects(tokens)
    obj1, obj2 = _as_person(obj1), _as_person(obj2)
    hit1 = obj1 is not None and bool(detections.get(obj1))
    hit2 = obj2 is not None and bool(detections.get(obj2))
    common = {"locality": locality, "obj1": obj1, "obj2": obj2, "found1": hit1, "found2": hit2}
    if hit1 and hit2:
        (box1, conf1), (box2, conf2) = detections[obj1][0], detections[obj2][0]  # type: ignore[index]
        position = determine_position(locality, box1, box2, iou_threshold, distance_threshold)
        raw = 0.25 * conf1 + 0.25 * conf2
        raw += position / 2
        reason = "" if raw >= 0.5 else "score below 0.5"
        return SpatialResult(
            raw if raw >= 0.5 else 0.0,
            raw,
            conf1=conf1,
            conf2=conf2,
            position=position,
            reason=reason,
            **common,
        )
    if hit1 or hit2:  # one object: 0.25·conf < 0.5, always cut to 0
        conf = detections[obj1 if hit1 else obj2][0][1]  # type: ignore[index]
        raw = 0.25 * conf
        missing = obj2 if hit1 else obj1
        return SpatialResult(
            0.0,
            raw,
            conf1=conf if hit1 else None,
            conf2=None if hit1 else conf,
            reason=f"{missing!r} not detected",
            **common,
        )
    why = "no objects found in the prompt" if obj1 is None else f"neither {obj1!r} nor {obj2!r} detected"
    return SpatialResult(0.0, 0.0, reason=why, **common)


# -- numeracy (T2I-CompBench++) -----------------------------------------------------------------------------
NUMBER_WORDS: tuple[str, ...] = ("a", "an", "one", "two", "three", "four", "five", "six", "seven", "eight")
_WORD_VALUES = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}
_NUMERACY_RENAMES = {
    "boy": "person",
    "girl": "person",
    "man": "person",
    "woman": "person",
    "ship": "boat",
    "telivision": "tv",
    "goldfish": "fish",
    "painting": "picture",
}


def _word_to_num(word: str) -> int | None:
    """``w2n.word_to_num`` on the official number words: a/an raise there (None here)."""
    return _WORD_VALUES.get(word)


def numeracy_targets(
    tokens: Sequence[Tok], singulars: Sequence[str], plurals: Sequence[str]
) -> tuple[list[str], list[int]]:
    """(objects, counts) named in the prompt, as ``numeracy_eval.py`` collects them.

    The two lists can differ in length where the official ``w2n`` call fails ("a"/"an" before a plural):
    the object is kept, its count is not, and later counts shift, exactly as there.
    """
    words = [t.text for t in tokens]
    objs: list[str] = []
    nums: list[int] = []

    def count(word: str) -> None:
        value = _word_to_num(word)
        if value is not None:
            nums.append(value)

    n = len(words)
    for i, w in enumerate(words):
        if w not in NUMBER_WORDS:
            continue
        pair = f"{words[i + 1]} {words[i + 2]}" if i < n - 2 else None
        if pair is not None and (pair in singulars or pair in plurals):
            if pair in plurals and w not in ("a", "an", "one"):
                objs.append(singulars[plurals.index(pair)])
                count(w)
            else:
                nums.append(1)
                objs.append(pair)
        elif i + 1 < n and (words[i + 1] in singulars or words[i + 1] in plurals):
            nxt = words[i + 1]
            if nxt in singulars and w in ("a", "an", "one"):
                nums.append(1)
                objs.append(nxt)
            else:
                objs.append(singulars[plurals.index(nxt)] if nxt in plurals else nxt)
                count(w)
    return objs, nums


def same_object(box1: Sequence[float], box2: Sequence[float]) -> bool:
    """Official ``calculate_iou`` (inclusive-pixel areas): IoU > 0.9 or either box 90% inside the other."""
    ix = max(0.0, min(box1[2], box2[2]) - max(box1[0], box2[0]) + 1)
    iy = max(0.0, min(box1[3], box2[3]) - max(box1[1], box2[1]) + 1)
    inter = ix * iy
    a1 = (box1[2] - box1[0] + 1) * (box1[3] - box1[1] + 1)
    a2 = (box2[2] - box2[0] + 1) * (box2[3] - box2[1] + 1)
    iou = inter / float(a1 + a2 - inter)
    return iou > 0.9 or inter / float(a1) > 0.9 or inter / float(a2) > 0.9


def dedup_detections(detections: Iterable[tuple[str, Sequence[float]]]) -> list[str]:
    """Labels of the detections left after dropping same-label near-duplicates (input in score order)."""
    labels: list[str] = []
    boxes: list[Sequence[float]] = []
    for label, box in detections:
        if any(lab == label and same_object(box, kept) for lab, kept in zip(labels, boxes)):
            continue
        labels.append(label)
        boxes.append(box)
    return labels


@dataclass(frozen=True)
class NumeracyResult:
    score: float
    objects: list[str]  # targets as named in the prompt (singular)
    counts: list[int]  # wanted counts (may be shorter than objects, see numeracy_targets)
    labels: list[str] = field(default_factory=list)  # targets after the official renames (boy -> person)
    detected: list[int] = field(default_factory=list)  # deduplicated detections per target
    reason: str = ""


def numeracy_score(objects: Sequence[str], counts: Sequence[int], labels: Sequence[str]) -> NumeracyResult:
    """Each target: half its weight if detected, the other half if the deduplicated count is exact."""
    if not objects:
        return NumeracyResult(0.0, [], list(counts), reason="no counted object found in the prompt")
    new_obj = list(labels)
    weight = 1.0 / len(objects)
    score = 0.0
    names: list[str] = []
    detected: list[int] = []
    notes = []
    for i, obj in enumerate(objects):
        obj = _NUMERACY_RENAMES.get(obj, obj)
        if obj not in new_obj:  # official: a detected label containing the name is renamed to it
            new_obj = [obj if obj in label else label for label in new_obj]
        found = new_obj.count(obj)
        names.append(obj)
        detected.append(found)
        if found:
            score += 0.5 * weight
            if i < len(counts) and found == counts[i]:
                score += 0.5 * weight
            elif i >= len(counts):
                notes.append(f"no count for {obj!r}")
    return NumeracyResult(score, list(objects), list(counts), names, detected, "; ".join(notes))
