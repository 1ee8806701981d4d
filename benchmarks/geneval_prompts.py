"""GenEval-style prompt generation (templates, COCO classes, colours, counts, relations), seeded.

Follows the sampling procedure of GenEval's prompt generator, so ``generate_suite(seed=43, per_task=100)``
with GenEval's 80 class names reproduces the official 553-line ``evaluation_metadata.jsonl`` exactly
(tested). Other seeds or class lists give training sets in the same schema (Flow-GRPO trains on such
sets; its "unseen objects" split holds out 20 classes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith("s") else "s")


class _Sampler:
    """One generator per suite; each method draws from the shared RNG in a fixed order."""

    def __init__(self, rng: np.random.Generator, classes: Sequence[str]) -> None:
        self.rng, self.classes = rng, list(classes)
        # Colour prompts never colour the first "person" class: indices are drawn from the other classes.
        self.person = self.classes.index("person") if "person" in self.classes else 0

    def single_objects(self, n: int) -> list[dict[str, Any]]:
        picks = self.rng.choice(len(self.classes), size=min(n, len(self.classes)), replace=False)
        return [
            {
                "tag": "single_object",
                "include": [{"class": self.classes[i], "count": 1}],
                "prompt": f"a photo of {article(self.classes[i])}",
            }
            for i in picks
        ]

    def two_objects(self) -> dict[str, Any]:
        a, b = (self.classes[i] for i in self.rng.choice(len(self.classes), size=2, replace=False))
        return {
            "tag": "two_object",
            "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {article(a)} and {article(b)}",
        }

    def counting(self, max_count: int = 4) -> dict[str, Any]:
        cls = self.classes[self.rng.choice(len(self.classes))]
        n = int(self.rng.integers(2, max_count, endpoint=True))
        return {
            "tag": "counting",
            "include": [{"class": cls, "count": n}],
            "exclude": [{"class": cls, "count": n + 1}],
            "prompt": f"a photo of {NUMBER_WORDS[n]} {plural(cls)}",
        }

    def _colourable(self, offsets: np.ndarray | int) -> Any:
        return (offsets + 1 + self.person) % len(self.classes)

    def colors(self) -> dict[str, Any]:
        cls = self.classes[int(self._colourable(self.rng.choice(len(self.classes) - 1)))]
        color = COLORS[self.rng.choice(len(COLORS))]
        return {
            "tag": "colors",
            "include": [{"class": cls, "count": 1, "color": color}],
            "prompt": f"a photo of {article(color)} {cls}",
        }

    def position(self) -> dict[str, Any]:
        a, b = (self.classes[i] for i in self.rng.choice(len(self.classes), size=2, replace=False))
        rel = RELATIONS[self.rng.choice(len(RELATIONS))]
        return {
            "tag": "position",
            "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of {article(a)} {rel} {article(b)}",
        }

    def color_attr(self) -> dict[str, Any]:
        ia, ib = self._colourable(self.rng.choice(len(self.classes) - 1, size=2, replace=False))
        ca, cb = (COLORS[i] for i in self.rng.choice(len(COLORS), size=2, replace=False))
        a, b = self.classes[int(ia)], self.classes[int(ib)]
        return {
            "tag": "color_attr",
            "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
            "prompt": f"a photo of {article(ca)} {a} and {article(cb)} {b}",
        }


def generate_suite(
    classes: Sequence[str] | None = None, seed: int = 43, per_task: int = 100, max_count: int = 4
) -> list[dict[str, Any]]:
    """GenEval-schema prompts: all single objects, then ``per_task`` of each other tag, de-duplicated."""
    if classes is None:
        from evalsuite.registry import registry

        classes = registry.get("rewards", "geneval").object_names
    s = _Sampler(np.random.default_rng(seed), classes)
    items = s.single_objects(len(classes))
    items += [s.two_objects() for _ in range(per_task)]
    items += [s.counting(max_count) for _ in range(per_task)]
    items += [s.colors() for _ in range(per_task)]
    items += [s.position() for _ in range(per_task)]
    items += [s.color_attr() for _ in range(per_task)]
    seen: set[str] = set()
    unique = []
    for item in items:
        key = json.dumps(item, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def to_jsonl(items: Sequence[dict[str, Any]]) -> str:
    """The official file format: one ``json.dumps`` line per prompt."""
    return "".join(json.dumps(item) + "\n" for item in items)
