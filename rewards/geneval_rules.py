"""GenEval's correctness rule as pure functions over detections: no models, testable by hand.

The official scorer (djghosh13/geneval ``evaluation/evaluate_images.py``) judges one image from the
detector's per-class detections and a colour per object. Flow-GRPO's GenEval reward server
(yifan123/reward-server ``reward_server/gen_eval.py``) adds two training variants on the same detections.
Three modes, all from one function (:func:`evaluate`):

``official``
    The benchmark's boolean. Include clauses: the ``count`` most confident kept detections of the class
    must exist ("at least"), at least ``count`` of them must be classified as the clause's colour, and
    each must stand in the clause's relation to every object of the (earlier, matched) reference clause.
    Exclude clauses: fail when ``count`` or more detections of the class are kept.
``strict``
    Flow-GRPO's ``strict_correct``: *exactly* ``count`` kept detections per include clause, all of them of
    the clause's colour; position as in ``official``. Like Flow-GRPO, exclude clauses are not checked
    (GenEval only uses them for counting prompts, where the exact include count already implies them).
``partial``
    Flow-GRPO's ``score``: the mean of per-clause credit terms (value in the result), with ``correct`` the
    strict boolean computed in the same pass. Terms, per include clause, in order:

    * ``1 - |count - found| / count`` with ``found`` = all kept detections of the class. Not clamped:
      three cats for "a photo of a cat" give ``1 - 2/1 = -1``, as in Flow-GRPO.
    * if ``found != count`` and the clause has a colour or a position: one extra ``0.0``;
    * else, colour clause: ``1 - |count - n_colour| / count``;
    * else, position clause (when the colour part, if any, held): ``0.0`` if the reference clause failed;
      otherwise ``0.0`` at the first object pair without the relation, and then ``1.0`` in every case.
      So a failed relation contributes ``0.0`` *and* ``1.0`` (Flow-GRPO's loop appends ``1.0`` after it
      whether or not it broke out); "a dog right of a cat" with one of each but the dog on the left scores
      ``mean(1, 1, 0, 1) = 0.75``. Reproduced on purpose, so our numbers match Flow-GRPO's.

    Metadata without include clauses is refused in every mode (``ValueError``): it asks for nothing, so
    the official rule would call every image correct (partial credit: 0.0).

Detections (the structure both detector backends produce): ``{class name: [Detection, ...]}`` with each
list sorted by descending score; ``Detection`` is a dict ``{"box": [x1, y1, x2, y2], "score": float,
"mask": HxW bool array or None}`` in image pixel coordinates (y grows downward). :func:`keep_detections`
applies the score threshold, ``max_objects`` and the optional per-class overlap suppression; the rule
then only sees kept detections. Colours: ``{class name: [colour of kept object 0, 1, ...]}``, needed for
the first objects that :func:`color_requests` names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypedDict

import numpy as np

__all__ = [
    "COLORS",
    "MODES",
    "POSITIONS",
    "TAGS",
    "Detection",
    "RuleResult",
    "Thresholds",
    "box_iou",
    "color_requests",
    "evaluate",
    "judge",
    "keep_detections",
    "relative_position",
    "validate_metadata",
]

COLORS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
)  # fmt: skip
MODES: tuple[str, ...] = ("official", "strict", "partial")
POSITIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


class Detection(TypedDict):
    """One detected instance: box ``[x1, y1, x2, y2]`` in pixels, detector score, optional instance mask."""

    box: list[float]
    score: float
    mask: np.ndarray | None


@dataclass(frozen=True)
class Thresholds:
    """The official scorer's ``--options`` (same names, same defaults)."""

    threshold: float = 0.3  # keep a detection if score > this (every tag but counting)
    counting_threshold: float = 0.9  # the same for prompts tagged "counting"
    max_objects: int = 16  # at most this many kept detections per class, most confident first
    max_overlap: float = 1.0  # per-class IoU suppression; 1.0 disables it
    position_threshold: float = 0.1  # margin factor of the position rule

    def __post_init__(self) -> None:
        for name in ("threshold", "counting_threshold", "max_overlap", "position_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"GenEval threshold {name} must be a finite number, got {value!r}")
        n = self.max_objects
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"GenEval max_objects must be a non-negative int, got {self.max_objects!r}")

    def confidence(self, tag: str) -> float:
        """The score a detection must exceed for a prompt with this tag."""
        return self.counting_threshold if tag == "counting" else self.threshold

    @property
    def min_confidence(self) -> float:
        """Lowest score any tag can keep: detections at or below it never matter."""
        return min(self.threshold, self.counting_threshold)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class RuleResult:
    """The verdict on one image. ``value`` is 1.0/0.0 (official, strict) or the partial credit."""

    mode: str
    correct: bool
    value: float
    failed_clauses: tuple[str, ...] = ()  # e.g. ("include[1]", "exclude[0]"), in evaluation order
    reasons: tuple[str, ...] = ()  # one line per failure, each starting with its clause label
    counts: dict[str, int] = field(default_factory=dict)  # kept detections per class named in the metadata
    terms: tuple[float, ...] = ()  # partial-credit terms (partial mode only)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


# -- metadata ----------------------------------------------------------------------------------------------
def validate_metadata(metadata: Mapping[str, Any], classnames: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` saying what is wrong with a GenEval metadata record (tag, include, exclude).

    ``classnames``: when given, every clause's class must be one of them (a misspelt class would
    otherwise silently never be detected, e.g. "mouse" for GenEval's "computer mouse").
    """
    if not isinstance(metadata, Mapping):
        raise ValueError(f"GenEval metadata must be a mapping, got {type(metadata).__name__}")
    tag = metadata.get("tag")
    if not isinstance(tag, str):
        raise ValueError(f"GenEval metadata 'tag' must be a string, got {tag!r}")
    known = set(classnames) if classnames is not None else None
    for key in ("include", "exclude"):
        clauses = metadata.get(key, [])
        if key == "include" and "include" not in metadata:
            raise ValueError("GenEval metadata has no 'include' clauses")
        if not isinstance(clauses, Sequence) or isinstance(clauses, (str, bytes)):
            raise ValueError(f"GenEval metadata {key!r} must be a list of clauses, got {clauses!r}")
        if key == "include":
            _require_include(clauses)
        for i, clause in enumerate(clauses):
            label = f"{key}[{i}]"
            if not isinstance(clause, Mapping):
                raise ValueError(f"GenEval {label} must be a mapping, got {clause!r}")
            cls, count = clause.get("class"), clause.get("count")
            if not isinstance(cls, str):
                raise ValueError(f"GenEval {label}: 'class' must be a string, got {cls!r}")
            if known is not None and cls not in known:
                raise ValueError(f"GenEval {label}: unknown class {cls!r} (not a class of the detector)")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ValueError(f"GenEval {label}: 'count' must be a positive int, got {count!r}")
            if key == "exclude":
                continue
            if "color" in clause and clause["color"] not in COLORS:
                raise ValueError(f"GenEval {label}: colour {clause['color']!r} is not one of {COLORS}")
            if "position" in clause:
                pos = clause["position"]
                if not (isinstance(pos, Sequence) and not isinstance(pos, str) and len(pos) == 2):
                    raise ValueError(f"GenEval {label}: 'position' must be [relation, index], got {pos!r}")
                rel, ref = pos
                if rel not in POSITIONS:
                    raise ValueError(f"GenEval {label}: relation {rel!r} is not one of {POSITIONS}")
                if not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref < i:
                    raise ValueError(f"GenEval {label}: position reference {ref!r} is not an earlier include")


def _require_include(clauses: Any) -> None:
    if not clauses:
        raise ValueError(
            "GenEval metadata 'include' is empty: it requires nothing, so every image would be judged correct"
        )


# -- detections --------------------------------------------------------------------------------------------
def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU with the official scorer's inclusive-pixel areas ((x2 - x1 + 1) * (y2 - y1 + 1))."""

    def area(b: Sequence[float]) -> float:
        return max(b[2] - b[0] + 1, 0) * max(b[3] - b[1] + 1, 0)

    inter = area([max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]),
                  min(box_a[3], box_b[3])])
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0.0


def keep_detections(
    detections: Mapping[str, Sequence[Detection]], tag: str, thresholds: Thresholds = Thresholds()
) -> dict[str, list[Detection]]:
    """The detections the rule looks at: score strictly above the tag's threshold, at most ``max_objects``
    per class by descending score, then (only if ``max_overlap < 1``) greedy suppression of any detection
    whose IoU with a more confident kept one of its class reaches ``max_overlap``. Empty classes are dropped.

    Ties in score keep the input order (the official argsort leaves their order unspecified).
    """
    confidence = thresholds.confidence(tag)
    kept: dict[str, list[Detection]] = {}
    for cls, dets in detections.items():
        order = sorted(range(len(dets)), key=lambda j: -float(dets[j]["score"]))
        order = [j for j in order if float(dets[j]["score"]) > confidence][: thresholds.max_objects]
        out: list[Detection] = []
        while order:
            best = order.pop(0)
            out.append(dets[best])
            if thresholds.max_overlap != 1:
                box = dets[best]["box"]
                order = [j for j in order if box_iou(box, dets[j]["box"]) < thresholds.max_overlap]
        if out:
            kept[cls] = out
    return kept


def relative_position(
    box_a: Sequence[float], box_b: Sequence[float], position_threshold: float = 0.1
) -> set[str]:
    """Relations of box A to box B: centre offset shrunk per axis by ``position_threshold`` × the summed
    box sizes (clamped at 0, sign kept), divided by the *unshrunk* offset's length, each axis compared
    with ±0.5. Several relations can hold; none when the shrunk offset is about zero."""
    ax, ay = (box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2
    bx, by = (box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2
    wa, ha = abs(box_a[2] - box_a[0]), abs(box_a[3] - box_a[1])
    wb, hb = abs(box_b[2] - box_b[0]), abs(box_b[3] - box_b[1])
    ox, oy = ax - bx, ay - by
    sx = math.copysign(max(abs(ox) - position_threshold * (wa + wb), 0.0), ox) if ox else 0.0
    sy = math.copysign(max(abs(oy) - position_threshold * (ha + hb), 0.0), oy) if oy else 0.0
    if abs(sx) < 1e-3 and abs(sy) < 1e-3:
        return set()
    norm = math.hypot(ox, oy)
    dx, dy = sx / norm, sy / norm
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def color_requests(
    kept: Mapping[str, Sequence[Detection]], metadata: Mapping[str, Any], mode: str
) -> dict[str, int]:
    """``{class: n}``: the rule in ``mode`` reads the colours of the first ``n`` kept objects of ``class``.

    Official classifies a colour clause's objects whenever at least ``count`` are kept; strict and
    partial only when exactly ``count`` are.
    """
    _check_mode(mode)
    need: dict[str, int] = {}
    for clause in metadata.get("include", []):
        if "color" not in clause:
            continue
        n = len(kept.get(clause["class"], ()))
        count = clause["count"]
        if n >= count if mode == "official" else n == count:
            need[clause["class"]] = max(need.get(clause["class"], 0), count)
    return need


# -- the rule ----------------------------------------------------------------------------------------------
def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"GenEval mode must be one of {MODES}, got {mode!r}")


def _colors_of(colors: Mapping[str, Sequence[str]] | None, cls: str, n: int, label: str) -> list[str]:
    got = list((colors or {}).get(cls, ()))[:n]
    if len(got) < n:
        raise ValueError(f"GenEval {label}: colours of the first {n} {cls!r} objects needed, got {len(got)}")
    return got


def _color_summary(colors: Sequence[str]) -> str:
    return ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)


def _position_failure(objects, targets, relation: str, position_threshold: float) -> str | None:
    """None if every object has ``relation`` to every target, else the relations of the first failing pair."""
    for obj in objects:
        for target in targets:
            rels = relative_position(obj["box"], target["box"], position_threshold)
            if relation not in rels:
                return " and ".join(r for r in POSITIONS if r in rels) or "no relation"
    return None


def _position_reason(clause, found, groups, position_threshold: float) -> str | None:
    """Why a position clause fails (its reference include failed, or a pair lacks the relation); None if
    it holds. Both rule families word it the same way."""
    cls, (relation, ref) = clause["class"], clause["position"]
    if groups[ref] is None:
        return f"no target for {cls} to be {relation} (include[{ref}] failed)"
    found_rel = _position_failure(found, groups[ref], relation, position_threshold)
    if found_rel is not None:
        return f"expected {cls} {relation} include[{ref}], found {found_rel}"
    return None


def evaluate(
    kept: Mapping[str, Sequence[Detection]],
    metadata: Mapping[str, Any],
    *,
    mode: str = "official",
    colors: Mapping[str, Sequence[str]] | None = None,
    thresholds: Thresholds = Thresholds(),
) -> RuleResult:
    """Judge one image from its kept detections (see the module docstring for the three modes)."""
    _check_mode(mode)
    _require_include(metadata.get("include"))
    if mode == "official":
        return _evaluate_official(kept, metadata, colors, thresholds)
    return _evaluate_flow_grpo(kept, metadata, colors, thresholds, mode)


def judge(
    detections: Mapping[str, Sequence[Detection]],
    metadata: Mapping[str, Any],
    *,
    mode: str = "official",
    colors: Mapping[str, Sequence[str]] | None = None,
    thresholds: Thresholds = Thresholds(),
) -> RuleResult:
    """:func:`keep_detections` then :func:`evaluate` (``colors`` index the *kept* objects)."""
    kept = keep_detections(detections, metadata["tag"], thresholds)
    return evaluate(kept, metadata, mode=mode, colors=colors, thresholds=thresholds)


def _counts(kept: Mapping[str, Sequence[Detection]], metadata: Mapping[str, Any]) -> dict[str, int]:
    names = [c["class"] for key in ("include", "exclude") for c in metadata.get(key, [])]
    return {name: len(kept.get(name, ())) for name in dict.fromkeys(names)}


def _evaluate_official(kept, metadata, colors, thresholds: Thresholds) -> RuleResult:
    failed: list[str] = []
    reasons: list[str] = []
    groups: list[Sequence[Detection] | None] = []

    def fail(label: str, why: str) -> None:
        failed.append(label)
        reasons.append(f"{label}: {why}")

    for i, clause in enumerate(metadata.get("include", [])):
        label, cls, count = f"include[{i}]", clause["class"], clause["count"]
        found = list(kept.get(cls, ()))[:count]
        matched = True
        if len(found) < count:
            matched = False
            fail(label, f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in clause:
                got = _colors_of(colors, cls, count, label)
                if got.count(clause["color"]) < count:
                    matched = False
                    fail(label, f"expected {clause['color']} {cls}>={count}, found "
                                f"{got.count(clause['color'])} {clause['color']}; and {_color_summary(got)}")
            if "position" in clause and matched:
                why = _position_reason(clause, found, groups, thresholds.position_threshold)
                if why is not None:
                    matched = False
                    fail(label, why)
        groups.append(found if matched else None)
    for i, clause in enumerate(metadata.get("exclude", [])):
        cls, count = clause["class"], clause["count"]
        n = len(kept.get(cls, ()))
        if n >= count:
            fail(f"exclude[{i}]", f"expected {cls}<{count}, found {n}")
    correct = not failed
    return RuleResult("official", correct, 1.0 if correct else 0.0, tuple(failed), tuple(reasons),
                      _counts(kept, metadata))


def _evaluate_flow_grpo(kept, metadata, colors, thresholds: Thresholds, mode: str) -> RuleResult:
    failed: list[str] = []
    reasons: list[str] = []
    terms: list[float] = []
    groups: list[Sequence[Detection] | None] = []

    def fail(label: str, why: str) -> None:
        if label not in failed:
            failed.append(label)
        reasons.append(f"{label}: {why}")

    for i, clause in enumerate(metadata.get("include", [])):
        label, cls, count = f"include[{i}]", clause["class"], clause["count"]
        found = list(kept.get(cls, ()))
        terms.append(1 - abs(count - len(found)) / count)
        matched = True
        if len(found) != count:
            matched = False
            fail(label, f"expected {cls}=={count}, found {len(found)}")
            if "color" in clause or "position" in clause:
                terms.append(0.0)
        else:
            if "color" in clause:
                got = _colors_of(colors, cls, count, label)
                n_color = got.count(clause["color"])
                terms.append(1 - abs(count - n_color) / count)
                if n_color != count:
                    matched = False
                    fail(label, f"expected {clause['color']} {cls}=={count}, found {n_color} "
                                f"{clause['color']}; and {_color_summary(got)}")
            if "position" in clause and matched:
                why = _position_reason(clause, found, groups, thresholds.position_threshold)
                if why is not None:
                    matched = False
                    fail(label, why)
                    terms.append(0.0)
                if groups[clause["position"][1]] is not None:  # a target exists: Flow-GRPO appends 1.0
                    terms.append(1.0)  # after its pair loop, failed or not
        groups.append(found if matched else None)
    correct = not failed
    if mode == "strict":
        return RuleResult("strict", correct, 1.0 if correct else 0.0, tuple(failed), tuple(reasons),
                          _counts(kept, metadata))
    value = sum(terms) / len(terms) if terms else 0.0
    return RuleResult("partial", correct, value, tuple(failed), tuple(reasons), _counts(kept, metadata),
                      tuple(terms))
