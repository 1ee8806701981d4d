"""The evidence scorers record per sample for the report: which detections were kept, which were dimmed.

Hand-built detector outputs, so each expected list is worked out from the rule (score > threshold keeps).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from evalsuite import Sample
from evalsuite.rewards.compbench_detection import CompBenchDetection
from evalsuite.rewards.detection_evidence import coarse_mask, geneval_evidence, labelled_evidence
from evalsuite.rewards.geneval import GenEvalReward
from evalsuite.rewards.geneval_rules import judge, keep_detections


def det(box, score, mask=None):
    return {"box": list(box), "score": score, "mask": mask}


TWO = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]}


def test_found_zero_explains_itself_with_the_best_candidates_under_the_threshold():
    detections = {
        "cat": [det((0, 0, 10, 10), 0.27), det((5, 5, 9, 9), 0.12), det((1, 1, 2, 2), 0.08),
                det((2, 2, 3, 3), 0.07), det((3, 3, 4, 4), 0.04)],
        "dog": [det((20, 0, 40, 30), 0.91), det((0, 20, 5, 30), 0.3)],  # 0.3 is not > 0.3: dimmed
        "person": [det((0, 0, 64, 64), 0.99)],  # no clause names it: not evidence
    }
    kept = keep_detections(detections, "two_object")
    res = judge(detections, TWO)
    ev = geneval_evidence(detections, kept, TWO, threshold=0.3, failed_clauses=res.failed_clauses,
                          size=(64, 64))
    assert res.reasons == ("include[0]: expected cat>=1, found 0",)
    assert [(k["class"], k["score"], k["failed"]) for k in ev["kept"]] == [("dog", 0.91, [])]
    assert ev["kept"][0]["clauses"] == ["include[1]"]
    # three best cats (0.04 is under the candidate floor), then the dog at exactly the threshold
    assert [(b["class"], b["score"]) for b in ev["below"]] == [
        ("cat", 0.27), ("cat", 0.12), ("cat", 0.08), ("dog", 0.3)]
    assert ev["below"][0]["box"] == [0.0, 0.0, 10.0, 10.0]
    assert ev["threshold"] == 0.3 and ev["size"] == [64, 64]


def test_kept_objects_carry_colour_and_the_clause_that_failed_on_them():
    meta = {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                             {"class": "cup", "count": 1, "color": "blue"}],
            "exclude": [{"class": "cup", "count": 2}]}
    detections = {"car": [det((0, 0, 8, 8), 0.8)], "cup": [det((10, 0, 20, 8), 0.7)]}
    colors = {"car": ["red"], "cup": ["green"]}
    kept = keep_detections(detections, "color_attr")
    res = judge(detections, meta, colors=colors)
    ev = geneval_evidence(detections, kept, meta, threshold=0.3, failed_clauses=res.failed_clauses,
                          colors=colors)
    by_class = {k["class"]: k for k in ev["kept"]}
    assert by_class["car"]["color"] == "red" and by_class["car"]["failed"] == []
    assert by_class["cup"]["color"] == "green"
    assert by_class["cup"]["clauses"] == ["include[1]", "exclude[0]"]
    assert by_class["cup"]["failed"] == ["include[1]"]
    assert ev["below"] == []


def test_counting_prompts_dim_against_the_counting_threshold():
    meta = {"tag": "counting", "include": [{"class": "cat", "count": 2}]}
    detections = {"cat": [det((0, 0, 4, 4), 0.95), det((5, 5, 9, 9), 0.85)]}
    kept = keep_detections(detections, "counting")
    ev = geneval_evidence(detections, kept, meta, threshold=0.9, failed_clauses=("include[0]",))
    assert [k["score"] for k in ev["kept"]] == [0.95] and ev["kept"][0]["failed"] == ["include[0]"]
    assert [b["score"] for b in ev["below"]] == [0.85]


def test_coarse_mask_pools_the_mask_inside_its_box():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:4] = True  # left half of the 4x4 box [2, 2, 6, 6]
    got = coarse_mask(mask, [2, 2, 6, 6], cells=2)
    assert got == {"w": 2, "h": 2, "bits": "1010"}
    assert coarse_mask(mask, [2, 2, 6, 6], cells=24) == {"w": 4, "h": 4, "bits": "1100" * 4}
    assert coarse_mask(None, [0, 0, 1, 1]) is None


def test_labelled_evidence_maps_prompt_objects_to_detector_labels():
    detections = {"person": [det((0, 0, 5, 5), 0.7)], "dog": [det((9, 9, 12, 12), 0.4)]}
    ev = labelled_evidence(detections, {"girl": ["girl", "person"], "dog": ["dog"]}, threshold=0.5,
                           failed=["dog"])
    assert [(k["class"], k["score"]) for k in ev["kept"]] == [("girl", 0.7)]
    assert ev["below"] == [{"class": "dog", "box": [9.0, 9.0, 12.0, 12.0], "score": 0.4}]


class CandidateDetector:
    """Returns fixed detections above whatever floor it is asked for, and remembers the floor."""

    backend = "fake"

    def __init__(self, detections):
        self.detections, self.asked = detections, []

    def detect(self, images, min_score):
        self.asked.append(min_score)
        return [{c: [d for d in ds if d["score"] > min_score] for c, ds in self.detections.items()}
                for _ in images]


class NoColourClauses:
    def classify(self, items):
        assert not items, "no colour clause: no crop to classify"
        return []


def test_reward_records_evidence_without_moving_a_score():
    """The reward asks the detector down to the candidate floor, yet judges exactly what the rule keeps."""
    detections = {"cat": [det((0, 0, 10, 10), 0.27)], "dog": [det((20, 0, 40, 30), 0.91)]}
    reward = GenEvalReward("unused")
    reward.detector = CandidateDetector(detections)
    reward.colors = NoColourClauses()
    reward._loaded = True
    image = Image.new("RGB", (64, 64))
    out = reward.score([Sample("a", "a photo of a cat and a dog", image, metadata=TWO)])
    assert reward.detector.asked == [0.05]
    assert out.scores == [judge(detections, TWO).value] == [0.0]
    ev = out.details[0]["evidence"]
    assert [b["class"] for b in ev["below"]] == ["cat"] and ev["size"] == [64, 64]
    assert out.details[0]["reason"] == "include[0]: expected cat>=1, found 0"


class FixedDetector:
    def __init__(self, detections):
        self.detections = detections

    def detect(self, images, min_score):
        return [self.detections for _ in images]


def test_compbench_spatial_evidence_in_image_pixels():
    """Boxes stay in image pixels (the rule's UniDet frame is for its threshold only); the person at 0.3
    is under the official 0.5 and shows dimmed; the missing mouse makes the score 0 and its object failed."""
    dets = {"person": [{"box": [0, 0, 100, 100], "score": 0.9}, {"box": [0, 0, 9, 9], "score": 0.3}],
            "computer mouse": [{"box": [200, 200, 300, 300], "score": 0.45}]}
    sample = Sample("s", "a woman near a mouse", Image.new("RGB", (1024, 1024)))
    out = CompBenchDetection(detector=FixedDetector(dets)).score([sample])
    assert out.scores == [0.0]
    ev = out.details[0]["evidence"]
    assert [(k["class"], k["box"], k["failed"]) for k in ev["kept"]] == [
        ("person", [0.0, 0.0, 100.0, 100.0], [])]
    assert [(b["class"], b["score"]) for b in ev["below"]] == [("person", 0.3), ("mouse", 0.45)]
    assert ev["threshold"] == 0.5 and ev["size"] == [1024, 1024]


def test_compbench_numeracy_evidence_marks_the_wrong_count():
    dets = {"cup": [{"box": [0, 0, 10, 10], "score": 0.9}, {"box": [50, 50, 60, 60], "score": 0.8}]}
    sample = Sample("s", "three cups", Image.new("RGB", (100, 100)))
    scorer = CompBenchDetection(task="numeracy", detector=FixedDetector(dets), objects=(["cup"], ["cups"]))
    out = scorer.score([sample])
    assert out.details[0]["detected"] == [2] and out.details[0]["counts"] == [3]
    assert [k["failed"] for k in out.details[0]["evidence"]["kept"]] == [["cup"], ["cup"]]
