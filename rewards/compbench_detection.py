"""T2I-CompBench's detector scores (2D spatial, complex spatial, numeracy) as a reward.

Detections come from the GenEval detector backends or any detector object; the official rules that turn
them into a score are in :mod:`evalsuite.rewards.compbench_rules`. The official detector is UniDet, whose
vocabulary differs from COCO's, so numbers are comparable with published ones only with UniDet plugged in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.nlp import parse, spacy_nlp
from evalsuite.reward import Reward, Score
from evalsuite.rewards.compbench_rules import (
    dedup_detections,
    numeracy_score,
    numeracy_targets,
    scale_box,
    spatial_score,
    unidet_input_size,
)
from evalsuite.rewards.detection_evidence import CANDIDATE_FLOOR, labelled_evidence
from evalsuite.sample import Sample

__all__ = ["CompBenchDetection", "Detections"]

# COCO's own spellings of three classes the GenEval backend renames: a prompt noun matches either
_COCO_SPELLING = {"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}

Detections = dict[str, list[dict[str, Any]]]  # label -> [{"box": [x0, y0, x1, y1], "score": s}, ...]


class CompBenchDetection(Reward):
    """T2I-CompBench's detector scores: ``task`` = ``spatial``, ``complex_spatial`` or ``numeracy``.

    ``detector``: ``"transformers"`` / ``"mmdet"`` (the GenEval backends, ``model`` = their model id or
    config) or your own object with ``detect(images, min_score) -> [{label: [{"box", "score"}, ...]}]``
    (e.g. a UniDet wrapper; labels are matched to prompt nouns verbatim), or a plain callable
    ``images -> same``. ``min_score``: detections kept above it (official 0.5). Boxes are mapped to UniDet's
    input frame (shorter side 479) before the rule, so its 150-pixel threshold keeps its meaning.
    ``objects``: (singulars, plurals) of ``new_objects.txt``, needed by ``numeracy``.
    """

    name = "t2i_compbench_detection"
    default_model = "facebook/mask2former-swin-small-coco-instance"
    backend = "transformers"
    TASKS: ClassVar[tuple[str, ...]] = ("spatial", "complex_spatial", "numeracy")

    def __init__(
        self,
        model: str | None = None,
        *,
        task: str = "spatial",
        detector: str | Any = "transformers",
        checkpoint: str | None = None,
        min_score: float = 0.5,
        objects: tuple[Sequence[str], Sequence[str]]
        | Callable[[], tuple[Sequence[str], Sequence[str]]]
        | None = None,
        official_frame: bool = True,
        **kwargs: Any,
    ) -> None:
        if task not in self.TASKS:
            raise ConfigError(f"{self.name}: task must be one of {self.TASKS}, got {task!r}")
        if isinstance(detector, str) and detector not in ("transformers", "mmdet"):
            raise ConfigError(f"{self.name}: detector must be 'transformers', 'mmdet' or a detector object")
        if task == "numeracy" and objects is None:
            raise ConfigError(
                f"{self.name}: numeracy needs objects=(singulars, plurals) from new_objects.txt"
            )
        super().__init__(model, **kwargs)
        self.task = task
        self.detector_spec = detector
        self.backend = detector if isinstance(detector, str) else "custom"  # type: ignore[misc]
        self.checkpoint = checkpoint
        self.min_score = float(min_score)
        self._objects_source = objects
        self.official_frame = official_frame

    def settings(self) -> dict[str, Any]:
        custom = None if isinstance(self.detector_spec, str) else type(self.detector_spec).__name__
        return {
            "task": self.task,
            "detector": self.backend,
            "detector_object": custom,
            "checkpoint": self.checkpoint,
            "min_score": self.min_score,
            "box_frame": "UniDet input (short side 479)" if self.official_frame else "image pixels",
        }

    def _load(self) -> None:
        self.nlp = spacy_nlp()
        if self._objects_source is not None:
            src = self._objects_source
            singulars, plurals = src() if callable(src) else src
            self.objects = (list(singulars), list(plurals))
        spec = self.detector_spec
        if spec == "transformers":
            from evalsuite.rewards.geneval import TransformersDetector

            self.detector: Any = TransformersDetector(
                self.model_id, revision=self.revision, device=self.device, dtype=self.dtype
            ).load()
        elif spec == "mmdet":
            from evalsuite.rewards.geneval import OFFICIAL_MMDET_CONFIG, MMDetDetector

            config = None if self.model_id == self.default_model else self.model_id
            self.detector = MMDetDetector(
                config or OFFICIAL_MMDET_CONFIG, self.checkpoint, device=self.device, dtype=self.dtype
            ).load()
        else:
            self.detector = spec

    def detect(self, images: Sequence[Image.Image]) -> list[Detections]:
        if hasattr(self.detector, "detect"):
            # built-in backends: down to the candidate floor for the evidence (the rule still reads only
            # > min_score); a custom detector is asked what it always was
            builtin = isinstance(self.detector_spec, str)
            floor = min(self.min_score, CANDIDATE_FLOOR) if builtin else self.min_score
            return self.detector.detect(images, floor)
        if callable(self.detector):
            return self.detector(images)
        raise ConfigError(f"{self.name}: detector {self.detector!r} has no detect() and is not callable")

    def _frame(self, image: Image.Image) -> tuple[float, float]:
        if not self.official_frame:
            return 1.0, 1.0
        w, h = unidet_input_size(image.width, image.height)
        return w / image.width, h / image.height

    def _score_batch(self, samples: list[Sample]) -> list[Score]:
        found = self.detect([s.image for s in samples])
        if len(found) != len(samples):
            raise RuntimeError(
                f"{self.name}: detector returned {len(found)} results for {len(samples)} images"
            )
        out = []
        for s, dets in zip(samples, found):
            sx, sy = self._frame(s.image)
            flat = sorted(
                (
                    (str(label), scale_box(d["box"], sx, sy), float(d["score"]))
                    for label, lst in dets.items()
                    for d in lst
                    if float(d["score"]) > self.min_score
                ),
                key=lambda t: -t[2],
            )
            tokens = parse(self.nlp, s.prompt).tokens
            numeracy = self.task == "numeracy"
            score = self._numeracy(tokens, flat) if numeracy else self._spatial(s, tokens, flat)
            score.details["evidence"] = self._evidence(dets, score.details, s.image.size)
            out.append(score)
        return out

    def _evidence(self, dets: Detections, details: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
        """Kept and below-threshold detections (image pixels) of the objects the verdict named."""
        by_name: Detections = {}
        for label, lst in dets.items():
            for name in {str(label), _COCO_SPELLING.get(str(label), str(label))}:
                by_name.setdefault(name, []).extend(lst)
        if self.task == "numeracy":
            names = list(details["labels"])
            wanted = dict(zip(details["labels"], details["counts"]))
            found = dict(zip(details["labels"], details["detected"]))
            failed = [n for n in names if found.get(n) != wanted.get(n)]
        else:
            names = [n for n in (details["obj1"], details["obj2"]) if n]
            hit = {details["obj1"]: details["found1"], details["obj2"]: details["found2"]}
            failed = [n for n in names if not hit[n]] or (names if details["raw"] < 0.5 else [])
        return labelled_evidence(by_name, {n: [n] for n in dict.fromkeys(names)}, threshold=self.min_score,
                                 failed=failed, size=size)

    def _spatial(self, sample: Sample, tokens, flat) -> Score:
        by_label: dict[str, list] = {}
        for label, box, score in flat:
            for name in {label, _COCO_SPELLING.get(label, label)}:
                by_label.setdefault(name, []).append((box, score))
        res = spatial_score(sample.prompt, tokens, by_label, complex_prompt=self.task == "complex_spatial")
        return Score(
            res.score,
            {
                "locality": res.locality,
                "obj1": res.obj1,
                "obj2": res.obj2,
                "found1": res.found1,
                "found2": res.found2,
                "conf1": res.conf1,
                "conf2": res.conf2,
                "position": res.position,
                "raw": res.raw,
                "reason": res.reason,
                "n_detections": len(flat),
            },
        )

    def _numeracy(self, tokens, flat) -> Score:
        singulars, plurals = self.objects  # type: ignore[misc]
        objs, counts = numeracy_targets(tokens, singulars, plurals)
        labels = dedup_detections((label, box) for label, box, _ in flat)
        res = numeracy_score(objs, counts, labels)
        return Score(
            res.score,
            {
                "objects": res.objects,
                "counts": res.counts,
                "labels": res.labels,
                "detected": res.detected,
                "reason": res.reason,
                "n_detections": len(flat),
            },
        )
