"""GenEval detector reward: Mask2Former detections + CLIP colour + GenEval's rule, in one batched pass.

What the official scorer (djghosh13/geneval ``evaluation/evaluate_images.py``) does per image, done here
for a whole batch: an instance-segmentation detector gives per-class boxes, scores and masks; objects
named by colour clauses are masked onto flat ``#999`` grey, cropped to their box and classified by CLIP
ViT-L-14 (OpenAI weights) zero-shot over GenEval's 10 colours with 3 prompt templates averaged; the pure
rule in :mod:`evalsuite.rewards.geneval_rules` turns that into a verdict, in one of three modes (``official``,
``strict``, ``partial``; see that module).

Two detector backends produce the same detections structure (``{GenEval class: [{"box", "score",
"mask"}, ...]}``, most confident first):

``transformers`` (default)
    ``Mask2FormerForUniversalSegmentation`` + its image processor, default
    ``facebook/mask2former-swin-small-coco-instance``; ``post_process_instance_segmentation`` gives masks
    and scores, boxes are the masks' extents. Same architecture as the official detector but *different
    weights*: its numbers are not the official GenEval numbers, and every result says which backend made it.
``mmdet`` (extra ``evalsuite[mmdet]``)
    mmdetection 3.3's ``mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco`` config (the 3.x name of the
    official 2.x ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco``) through ``init_detector`` and the
    config's test pipeline. Pass the checkpoint file as ``checkpoint=``; without one the weights are
    random (for tests). Images go in as BGR arrays, the channel order mmdet's file loader produces, so
    they see what the official file-path call sees.

Batching: both backends group the batch by input size and run one forward per group, so a sample's
detections never depend on what else is in the batch (Mask2Former has no padding mask: padding a smaller
image up to a larger neighbour would change its features). A batch of same-size generations, the usual
case, is one forward. All colour crops of the batch go through CLIP in one forward.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.optional import require
from evalsuite.reward import Reward, Score
from evalsuite.rewards.detection_evidence import CANDIDATE_FLOOR, geneval_evidence
from evalsuite.rewards.geneval_rules import (
    COLORS,
    MODES,
    Detection,
    Thresholds,
    color_requests,
    evaluate,
    keep_detections,
    validate_metadata,
)
from evalsuite.sample import Sample

__all__ = [
    "BACKENDS",
    "GENEVAL_OBJECT_NAMES",
    "OFFICIAL_MMDET_CONFIG",
    "ColorClassifier",
    "GenEvalReward",
    "MMDetDetector",
    "TransformersDetector",
    "color_templates",
    "crop_object",
    "geneval_class_names",
]

# GenEval's object_names.txt: the 80 COCO instance classes in COCO/mmdet index order, GenEval's spelling.
GENEVAL_OBJECT_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# COCO label spellings (HF id2label, mmdet dataset_meta) that GenEval renames.
_ALIASES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}

BACKENDS = ("transformers", "mmdet")
OFFICIAL_MMDET_CONFIG = "mask2former/mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco.py"
_MMDET_CONFIG_ALIASES = {  # the official mmdet 2.x config name -> its mmdet 3.x file
    "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco": OFFICIAL_MMDET_CONFIG,
    "mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco": OFFICIAL_MMDET_CONFIG,
}
GREY = "#999"  # the official bgcolor for pixels outside an object's mask

Detections = dict[str, list[Detection]]


def geneval_class_names(labels: Sequence[str]) -> tuple[str, ...]:
    """Map a detector's label names (index order) to GenEval's class names.

    Accepts COCO spellings (``mouse``, ``dining_table``) and GenEval's own; anything else is an error,
    since a class GenEval does not know could never satisfy (or violate) a clause.
    """
    known = set(GENEVAL_OBJECT_NAMES)
    out = []
    for label in labels:
        name = str(label).replace("_", " ").strip()
        name = _ALIASES.get(name, name)
        if name not in known:
            raise ConfigError(f"GenEval: detector class {label!r} is not one of GenEval's 80 COCO classes")
        out.append(name)
    return tuple(out)


def _group_by(keys: Sequence[Any]) -> dict[Any, list[int]]:
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


def _sorted(dets: Detections) -> Detections:
    """Each class most confident first (stable, so equal scores keep the detector's order)."""
    return {cls: sorted(lst, key=lambda d: -d["score"]) for cls, lst in dets.items()}


def _box_from_mask(mask: np.ndarray) -> list[float]:
    """mmdet's ``mask2bbox`` convention: [x_min, y_min, x_max + 1, y_max + 1] over the mask's pixels."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


# -- detector backends -------------------------------------------------------------------------------------
class TransformersDetector:
    """Mask2Former through transformers. ``detect`` returns detections scoring above ``min_score``."""

    backend = "transformers"

    def __init__(
        self,
        model_id: str,
        *,
        revision: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model_id = model_id
        self.revision = revision
        self.device = torch.device(device)
        self.dtype = dtype
        self.classnames: tuple[str, ...] = ()

    def load(self) -> TransformersDetector:
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(
            self.model_id, revision=self.revision, dtype=self.dtype
        ).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(self.model_id, revision=self.revision)
        id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        self.classnames = geneval_class_names([id2label[i] for i in range(len(id2label))])
        return self

    def preprocess(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Per-image pixel tensors ``[1, 3, h, w]`` (one at a time: no padding to a neighbour's size)."""
        return [self.processor(images=img, return_tensors="pt")["pixel_values"] for img in images]

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor):
        out = self.model(pixel_values=pixels.to(self.device, self.dtype))
        # post-process in float32 whatever the model dtype (softmax/sigmoid of bf16 logits lose the scores)
        out.class_queries_logits = out.class_queries_logits.float()
        out.masks_queries_logits = out.masks_queries_logits.float()
        return out

    def detect(self, images: Sequence[Image.Image], min_score: float) -> list[Detections]:
        pixels = self.preprocess(images)
        results: list[Detections] = [{} for _ in images]
        for _, idx in _group_by([tuple(p.shape) for p in pixels]).items():
            out = self.forward(torch.cat([pixels[i] for i in idx]))
            sizes = [(images[i].height, images[i].width) for i in idx]
            post = self.processor.post_process_instance_segmentation(
                out, threshold=min_score, target_sizes=sizes, return_binary_maps=True
            )
            for i, res in zip(idx, post):
                results[i] = self._detections(res, min_score)
        return results

    def _detections(self, result: Mapping[str, Any], min_score: float) -> Detections:
        infos = result["segments_info"]
        dets: Detections = {}
        if not infos:
            return dets
        maps = result["segmentation"].cpu().numpy() > 0.5  # [n, H, W], one binary map per segment
        for k, info in enumerate(infos):
            score = float(info["score"])
            if score <= min_score:
                continue
            mask = maps[k]
            cls = self.classnames[int(info["label_id"])]
            dets.setdefault(cls, []).append({"box": _box_from_mask(mask), "score": score, "mask": mask})
        return _sorted(dets)


class MMDetDetector:
    """The official detector stack: mmdetection 3.3 Mask2Former (config + optional checkpoint).

    ``test_scale`` overrides the test pipeline's ``Resize`` scale (official: (1333, 800)); tests use a
    small one to keep the random-weight model fast.
    """

    backend = "mmdet"

    def __init__(
        self,
        config: str | os.PathLike[str] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        test_scale: tuple[int, int] | None = None,
    ) -> None:
        if dtype != torch.float32:
            raise ConfigError(f"GenEval mmdet backend runs in float32 only, got {dtype}")
        self.config = str(config or OFFICIAL_MMDET_CONFIG)
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.device = torch.device(device)
        self.test_scale = None if test_scale is None else (int(test_scale[0]), int(test_scale[1]))
        self.classnames: tuple[str, ...] = ()

    def config_path(self) -> str:
        """A config file path: as given, else the named config shipped inside the mmdet package."""
        if os.path.isfile(self.config):
            return self.config
        mmdet = require("mmdet", "mmdet", purpose="the official GenEval detector")
        name = _MMDET_CONFIG_ALIASES.get(self.config.removesuffix(".py"), self.config)
        root = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")
        for candidate in (name, os.path.join("mask2former", name)):
            for path in (os.path.join(root, candidate), os.path.join(root, candidate + ".py")):
                if os.path.isfile(path):
                    return path
        raise ConfigError(f"GenEval mmdet backend: no config {self.config!r} (neither a file nor in {root})")

    def load(self) -> MMDetDetector:
        require("mmcv", "mmdet", purpose="the official GenEval detector (mmcv with compiled ops)")
        require("mmdet", "mmdet", purpose="the official GenEval detector")
        from mmcv.transforms import Compose
        from mmdet.apis import init_detector
        from mmdet.utils import get_test_pipeline_cfg
        from mmengine.config import Config

        cfg = Config.fromfile(self.config_path())
        pipeline = [step for step in get_test_pipeline_cfg(cfg) if "LoadAnnotations" not in step["type"]]
        if self.test_scale is not None:
            for step in pipeline:
                if step["type"].endswith("Resize"):
                    step["scale"] = self.test_scale
        pipeline[0]["type"] = "mmdet.LoadImageFromNDArray"
        if self.checkpoint is None:
            warnings.warn("GenEval mmdet backend: no checkpoint given, the detector has random weights",
                          stacklevel=2)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="checkpoint is None")
            self.model = init_detector(cfg, self.checkpoint, device=str(self.device))
        self.pipeline = Compose(pipeline)
        self.classnames = geneval_class_names(self.model.dataset_meta["classes"])
        return self

    @torch.inference_mode()
    def detect(self, images: Sequence[Image.Image], min_score: float) -> list[Detections]:
        results: list[Detections] = [{} for _ in images]
        for _, idx in _group_by([img.size for img in images]).items():
            bgr = [np.ascontiguousarray(np.asarray(images[i])[..., ::-1]) for i in idx]
            data = [self.pipeline({"img": img, "img_id": 0}) for img in bgr]
            batch = {"inputs": [d["inputs"] for d in data], "data_samples": [d["data_samples"] for d in data]}
            for i, sample in zip(idx, self.model.test_step(batch)):
                results[i] = self._detections(sample.pred_instances, min_score)
        return results

    def _detections(self, inst, min_score: float) -> Detections:
        scores = inst.scores.float().cpu().numpy()
        labels = inst.labels.cpu().numpy()
        boxes = inst.bboxes.float().cpu().numpy()
        masks = inst.masks.cpu().numpy().astype(bool) if "masks" in inst else None
        dets: Detections = {}
        for k in np.flatnonzero(scores > min_score):
            cls = self.classnames[int(labels[k])]
            dets.setdefault(cls, []).append({
                "box": [float(v) for v in boxes[k]],
                "score": float(scores[k]),
                "mask": None if masks is None else masks[k],
            })
        return _sorted(dets)


# -- colour classifier -------------------------------------------------------------------------------------
def color_templates(classname: str) -> list[str]:
    """GenEval's three colour prompts for one class, with ``{c}`` left for the colour."""
    return [
        f"a photo of a {{c}} {classname}",
        f"a photo of a {{c}}-colored {classname}",
        "a photo of a {c} object",
    ]


def crop_object(image: Image.Image, det: Detection, bgcolor: str = GREY) -> Image.Image:
    """The official colour crop: pixels outside the mask painted ``bgcolor``, then cut to the box."""
    mask = det.get("mask")
    if mask is not None:
        if tuple(mask.shape) != (image.height, image.width):
            raise ValueError(f"GenEval: mask {mask.shape} != image size {(image.height, image.width)}")
        image = Image.composite(image, Image.new("RGB", image.size, bgcolor), Image.fromarray(mask))
    return image.crop(tuple(det["box"][:4]))


class ColorClassifier:
    """CLIP zero-shot colour of object crops (open_clip ViT-L-14 ``openai`` by default)."""

    def __init__(
        self,
        model: str = "ViT-L-14",
        pretrained: str | None = "openai",
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model_name = model
        self.pretrained = pretrained
        self.device = torch.device(device)
        self.dtype = dtype
        self._weights: dict[str, torch.Tensor] = {}

    def load(self) -> ColorClassifier:
        from evalsuite.rewards.clip_models import load_open_clip

        self.model, self.preprocess, self.tokenizer = load_open_clip(
            self.model_name, self.pretrained, device=self.device, dtype=self.dtype
        )
        return self

    def weights(self, classname: str) -> torch.Tensor:
        """``[embed_dim, 10]`` zero-shot weights for one object class (cached: the prompts name the class)."""
        if classname not in self._weights:
            from evalsuite.rewards.clip_models import zero_shot_classifier

            self._weights[classname] = zero_shot_classifier(
                self.model, self.tokenizer, COLORS, color_templates(classname)
            )
        return self._weights[classname]

    def pixels(self, items: Sequence[tuple[Image.Image, Detection, str]]) -> torch.Tensor:
        return torch.stack([self.preprocess(crop_object(image, det)) for image, det, _ in items])

    def logits(self, items: Sequence[tuple[Image.Image, Detection, str]]) -> torch.Tensor:
        """``[n, 10]`` cosine similarity of each crop to each colour's prompt embedding (one CLIP forward)."""
        from evalsuite.rewards.clip_models import encode_images

        emb = encode_images(self.model, self.pixels(items))
        return torch.stack([e @ self.weights(cls).to(e.device) for e, (_, _, cls) in zip(emb, items)])

    def classify(self, items: Sequence[tuple[Image.Image, Detection, str]]) -> list[str]:
        """Colour of each ``(image, detection, class)``: all crops in one CLIP forward."""
        if not items:
            return []
        return [COLORS[int(k)] for k in self.logits(items).argmax(dim=1)]


# -- the reward --------------------------------------------------------------------------------------------
class GenEvalReward(Reward):
    """GenEval's per-image verdict as a reward: 1/0 (``official``, ``strict``) or partial credit.

    ``model``: the detector (transformers: an HF id or folder; mmdet: a config path or name, default the
    official one). ``checkpoint``: mmdet weights file. ``clip_model``/``clip_pretrained``: the colour
    classifier (an open_clip architecture + tag, or a model folder). Thresholds are GenEval's options.
    """

    name = "geneval"
    default_model = "facebook/mask2former-swin-small-coco-instance"
    required_metadata = ("tag", "include")
    backend = "transformers"
    object_names = GENEVAL_OBJECT_NAMES  # the detector's vocabulary: benchmarks read it by registered name

    @staticmethod
    def check_metadata(metadata: dict[str, Any]) -> None:
        """Raise ``ValueError`` naming the problem when ``metadata`` is not a scorable GenEval record."""
        validate_metadata(metadata, GENEVAL_OBJECT_NAMES)

    def __init__(
        self,
        model: str | None = None,
        *,
        mode: str = "official",
        detector: str = "transformers",
        checkpoint: str | os.PathLike[str] | None = None,
        test_scale: tuple[int, int] | None = None,
        clip_model: str = "ViT-L-14",
        clip_pretrained: str | None = "openai",
        threshold: float = 0.3,
        counting_threshold: float = 0.9,
        max_objects: int = 16,
        max_overlap: float = 1.0,
        position_threshold: float = 0.1,
        **kwargs: Any,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"geneval: mode must be one of {MODES}, got {mode!r}")
        if detector not in BACKENDS:
            raise ConfigError(f"geneval: detector must be one of {BACKENDS}, got {detector!r}")
        if detector == "mmdet" and model is None:
            model = OFFICIAL_MMDET_CONFIG
        super().__init__(model, **kwargs)
        self.mode = mode
        self.backend = detector  # type: ignore[misc]  # per instance: which detector made the numbers
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.test_scale = test_scale
        self.clip_model = clip_model
        self.clip_pretrained = clip_pretrained
        try:
            self.thresholds = Thresholds(threshold, counting_threshold, max_objects, max_overlap,
                                         position_threshold)
        except ValueError as e:
            raise ConfigError(f"geneval: {e}") from None

    def settings(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "detector": self.backend,
            "checkpoint": self.checkpoint,
            "test_scale": self.test_scale,
            "color_model": self.clip_model,
            "color_pretrained": self.clip_pretrained,
            **self.thresholds.as_dict(),
        }

    def _load(self) -> None:
        if self.backend == "mmdet":
            self.detector: TransformersDetector | MMDetDetector = MMDetDetector(
                self.model_id, self.checkpoint, device=self.device, dtype=self.dtype,
                test_scale=self.test_scale,
            )
        else:
            self.detector = TransformersDetector(
                self.model_id, revision=self.revision, device=self.device, dtype=self.dtype
            )
        self.detector.load()
        self.colors = ColorClassifier(self.clip_model, self.clip_pretrained, device=self.device,
                                      dtype=self.dtype).load()

    def _validate(self, sample: Sample) -> Sample:
        sample = super()._validate(sample)
        try:
            validate_metadata(sample.metadata, GENEVAL_OBJECT_NAMES)
        except ValueError as e:
            raise ConfigError(f"sample {sample.id!r}: {e}") from None
        return sample

    def _score_batch(self, samples: list[Sample]) -> list[Score]:
        images = [s.image for s in samples]
        # down to the candidate floor: the rule never sees what it would not keep, the evidence does
        detections = self.detector.detect(images, min(self.thresholds.min_confidence, CANDIDATE_FLOOR))
        kept = [keep_detections(d, s.metadata["tag"], self.thresholds) for d, s in zip(detections, samples)]

        # every colour the rules will read, for the whole batch, in one CLIP forward
        wanted: list[tuple[int, str]] = []
        items: list[tuple[Image.Image, Detection, str]] = []
        for k, s in enumerate(samples):
            for cls, n in color_requests(kept[k], s.metadata, self.mode).items():
                for det in kept[k][cls][:n]:
                    wanted.append((k, cls))
                    items.append((s.image, det, cls))
        colors: list[dict[str, list[str]]] = [{} for _ in samples]
        for (k, cls), color in zip(wanted, self.colors.classify(items)):
            colors[k].setdefault(cls, []).append(color)

        scores = []
        for k, s in enumerate(samples):
            res = evaluate(kept[k], s.metadata, mode=self.mode, colors=colors[k], thresholds=self.thresholds)
            details: dict[str, Any] = {
                "mode": res.mode,
                "detector": self.backend,
                "tag": s.metadata["tag"],
                "correct": res.correct,
                "reason": res.reason,
                "failed_clauses": list(res.failed_clauses),
                "counts": res.counts,
                "colors": colors[k],
                "evidence": geneval_evidence(
                    detections[k], kept[k], s.metadata, failed_clauses=res.failed_clauses, colors=colors[k],
                    threshold=self.thresholds.confidence(s.metadata["tag"]), size=s.image.size,
                ),
            }
            if res.mode == "partial":
                details["terms"] = list(res.terms)
            scores.append(Score(res.value, details))
        return scores
