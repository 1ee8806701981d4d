"""What a detector-based verdict rests on, recorded per sample so a report can draw it over the image.

A failure string such as "include[0]: expected cat>=1, found 0" does not say whether the detector saw no
cat at all or a cat at 0.27 under a 0.3 threshold. :func:`geneval_evidence` and :func:`labelled_evidence`
return, as plain JSON-ready data, the detections the rule kept (box, score, predicted colour, the clauses
that read them and whether those failed, a coarse mask where the detector has one) and the most confident
*below-threshold* candidates of each class the prompt names. They only read detections the rule already
saw or ignored: no score depends on them.

Evidence layout (one dict per image, coordinates in image pixels, y down)::

    {"size": [w, h], "threshold": 0.3,
     "kept":  [{"class", "box", "score", "clauses", "failed", "color"?, "mask"?}, ...],
     "below": [{"class", "box", "score"}, ...]}

``mask`` is the instance mask cut to its box and pooled to at most ``MASK_CELLS`` cells a side:
``{"w", "h", "bits"}`` with ``bits`` a string of ``"0"``/``"1"`` row by row (a cell is on when at least
half its pixels are).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["BELOW_PER_CLASS", "CANDIDATE_FLOOR", "MASK_CELLS", "coarse_mask", "geneval_evidence",
           "labelled_evidence"]

CANDIDATE_FLOOR = 0.05  # detections at or under this score are noise, not worth showing as candidates
BELOW_PER_CLASS = 3  # below-threshold candidates recorded per class named in the prompt
MASK_CELLS = 24


def _box(box: Sequence[float]) -> list[float]:
    return [round(float(v), 1) for v in box[:4]]


def coarse_mask(mask: np.ndarray | None, box: Sequence[float], cells: int = MASK_CELLS) -> dict | None:
    """The mask inside its box, pooled to at most ``cells`` x ``cells`` on/off cells (None without a mask)."""
    if mask is None:
        return None
    m = np.asarray(mask, dtype=bool)
    x0, y0 = max(int(box[0]), 0), max(int(box[1]), 0)
    x1, y1 = min(int(np.ceil(box[2])), m.shape[1]), min(int(np.ceil(box[3])), m.shape[0])
    crop = m[y0:y1, x0:x1]
    if crop.size == 0:
        return None
    h, w = min(cells, crop.shape[0]), min(cells, crop.shape[1])
    rows = np.linspace(0, crop.shape[0], h + 1).astype(int)
    cols = np.linspace(0, crop.shape[1], w + 1).astype(int)
    bits = "".join(
        "1" if crop[rows[r]:rows[r + 1], cols[c]:cols[c + 1]].mean() >= 0.5 else "0"
        for r in range(h) for c in range(w)
    )
    return {"w": w, "h": h, "bits": bits}


def _below(detections: Mapping[str, Sequence[Mapping[str, Any]]], classes: Iterable[str], threshold: float,
           per_class: int) -> list[dict[str, Any]]:
    out = []
    for cls in classes:
        under = [d for d in detections.get(cls, ()) if CANDIDATE_FLOOR < float(d["score"]) <= threshold]
        under.sort(key=lambda d: -float(d["score"]))
        out += [{"class": cls, "box": _box(d["box"]), "score": round(float(d["score"]), 4)}
                for d in under[:per_class]]
    return out


def geneval_evidence(
    detections: Mapping[str, Sequence[Mapping[str, Any]]],
    kept: Mapping[str, Sequence[Mapping[str, Any]]],
    metadata: Mapping[str, Any],
    *,
    threshold: float,
    failed_clauses: Sequence[str],
    colors: Mapping[str, Sequence[str]] | None = None,
    size: tuple[int, int] | None = None,
    per_class: int = BELOW_PER_CLASS,
) -> dict[str, Any]:
    """Evidence for one GenEval verdict: the kept detections of every class a clause names (with the
    clause labels that read that class and which of them failed; the colour where the rule classified
    it) and, per named class, the ``per_class`` most confident candidates at or under ``threshold``."""
    clauses: dict[str, list[str]] = {}
    for key in ("include", "exclude"):
        for i, clause in enumerate(metadata.get(key, [])):
            clauses.setdefault(clause["class"], []).append(f"{key}[{i}]")
    failed = set(failed_clauses)
    kept_out = []
    for cls, labels in clauses.items():
        got = list((colors or {}).get(cls, ()))
        for j, det in enumerate(kept.get(cls, ())):
            item: dict[str, Any] = {"class": cls, "box": _box(det["box"]),
                                    "score": round(float(det["score"]), 4), "clauses": labels,
                                    "failed": [c for c in labels if c in failed]}
            if j < len(got):
                item["color"] = got[j]
            mask = coarse_mask(det.get("mask"), det["box"])
            if mask is not None:
                item["mask"] = mask
            kept_out.append(item)
    return {"size": list(size) if size else None, "threshold": float(threshold), "kept": kept_out,
            "below": _below(detections, clauses, threshold, per_class)}


def labelled_evidence(
    detections: Mapping[str, Sequence[Mapping[str, Any]]],
    objects: Mapping[str, Sequence[str]],
    *,
    threshold: float,
    failed: Iterable[str] = (),
    size: tuple[int, int] | None = None,
    per_class: int = BELOW_PER_CLASS,
) -> dict[str, Any]:
    """Evidence for a verdict over labelled detections (T2I-CompBench's detector categories).

    ``objects``: ``{prompt object: [detector labels that count as it]}``; ``failed``: the prompt objects
    the verdict found wanting. Kept = score above ``threshold``; below = the best candidates under it.
    """
    bad = set(failed)
    kept_out, below_out = [], []
    for name, labels in objects.items():
        dets = sorted((d for label in dict.fromkeys(labels) for d in detections.get(label, ())),
                      key=lambda d: -float(d["score"]))
        for det in dets:
            if float(det["score"]) > threshold:
                item: dict[str, Any] = {"class": name, "box": _box(det["box"]),
                                        "score": round(float(det["score"]), 4), "clauses": [name],
                                        "failed": [name] if name in bad else []}
                mask = coarse_mask(det.get("mask"), det["box"])
                if mask is not None:
                    item["mask"] = mask
                kept_out.append(item)
        below_out += _below({name: dets}, [name], threshold, per_class)
    return {"size": list(size) if size else None, "threshold": float(threshold), "kept": kept_out,
            "below": below_out}
