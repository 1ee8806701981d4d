"""GenEval detector reward on tiny checkpoints: shared tester, independent parity, backends, plumbing.

Parity reference (independent of evalsuite.rewards.geneval): the HF Mask2Former + image processor run here per
image, ``post_process_instance_segmentation`` called here, boxes taken from the masks here, colours from
open_clip called here (mask onto #999 with numpy, crop, encode, 3-template zero-shot weights built by
hand), and a small re-implementation of the official / Flow-GRPO rule for the tags used.

The tiny Mask2Former's random weights give scores around 0.008, so the thresholds are set inside that
range (some detections kept, some dropped). Its masks are scattered over the whole image, so every box is
about the full image: through the real model, position prompts only exercise the "no relation" path;
directions are covered by an injected detector below and by tests/test_geneval_rules.py.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from evalsuite import Sample
from evalsuite.errors import ConfigError, MissingBackendError
from evalsuite.rewards.geneval import GENEVAL_OBJECT_NAMES, GenEvalReward, TransformersDetector, crop_object
from tests.reward_tester import CHECKS, RewardSpec

THRESHOLDS = {"threshold": 0.0083, "counting_threshold": 0.0082}
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
GENEVAL_SPELLING = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models are dominated by per-op overhead: two intra-op threads on a shared 2-core box run ~4x
    slower than one. Restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from evalsuite.tiny import write_tiny
    from evalsuite.tiny.open_clip import write_tiny_open_clip

    root = tmp_path_factory.mktemp("geneval-tiny")
    m2f = write_tiny(root, names=["mask2former"], seed=0)["mask2former"]
    clip = write_tiny_open_clip(root / "clip", "ViT-L-14", seed=0)
    return {"m2f": str(m2f), "clip": str(clip)}


def picture(size, seed):
    """A flat background with three coloured rectangles (deterministic)."""
    w, h = size
    rs = np.random.RandomState(seed)
    im = Image.new("RGB", size, tuple(int(v) for v in rs.randint(0, 255, 3)))
    draw = ImageDraw.Draw(im)
    for _ in range(3):
        x0, y0 = rs.randint(0, w - 10), rs.randint(0, h - 10)
        draw.rectangle([x0, y0, x0 + rs.randint(8, w // 2), y0 + rs.randint(8, h // 2)],
                       fill=tuple(int(v) for v in rs.randint(0, 255, 3)))
    return im


IMAGES = [picture((64, 48), 0), picture((48, 64), 1), picture((40, 40), 2), picture((64, 48), 3)]


class Reference:
    """Detections, colours and the rule, computed here without evalsuite.rewards.geneval."""

    def __init__(self, tiny):
        import open_clip
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(tiny["m2f"]).eval()
        self.processor = AutoImageProcessor.from_pretrained(tiny["m2f"])
        name = f"local-dir:{tiny['clip']}"
        self.clip, _, self.clip_preprocess = open_clip.create_model_and_transforms(name)
        self.clip.eval()
        self.clip_tokenizer = open_clip.get_tokenizer(name)
        self._raw = {}

    @torch.no_grad()
    def raw(self, image):
        """All detections with a non-empty mask: {class: [(score, box, mask)]}, most confident first."""
        key = id(image)
        if key not in self._raw:
            inputs = self.processor(images=[image], return_tensors="pt")
            out = self.model(pixel_values=inputs["pixel_values"])
            res = self.processor.post_process_instance_segmentation(
                out, threshold=0.0, target_sizes=[(image.height, image.width)], return_binary_maps=True)[0]
            found = {}
            for k, info in enumerate(res["segments_info"]):
                mask = res["segmentation"][k].numpy() > 0.5
                ys, xs = np.nonzero(mask)
                box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
                label = self.model.config.id2label[info["label_id"]]
                found.setdefault(GENEVAL_SPELLING.get(label, label), []).append((info["score"], box, mask))
            self._raw[key] = {c: sorted(v, key=lambda t: -t[0]) for c, v in found.items()}
        return self._raw[key]

    def kept(self, image, tag):
        cut = THRESHOLDS["counting_threshold"] if tag == "counting" else THRESHOLDS["threshold"]
        return {c: [d for d in v if d[0] > cut][:16] for c, v in self.raw(image).items()}

    def colour(self, image, cls, obj):
        return COLOURS[int(self.colour_logits(image, cls, obj).argmax())]

    @torch.no_grad()
    def colour_logits(self, image, cls, obj):
        _, box, mask = obj
        arr = np.where(mask[..., None], np.asarray(image), np.uint8(153))  # #999 outside the mask
        crop = Image.fromarray(arr.astype(np.uint8)).crop(tuple(round(v) for v in box))
        img = self.clip.encode_image(self.clip_preprocess(crop)[None])
        img = img / img.norm(dim=-1, keepdim=True)
        weights = []
        for c in COLOURS:
            texts = [f"a photo of a {c} {cls}", f"a photo of a {c}-colored {cls}", f"a photo of a {c} object"]
            emb = self.clip.encode_text(self.clip_tokenizer(texts))
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(0)
            weights.append(mean / mean.norm())
        return (img @ torch.stack(weights, 1))[0]

    def rel(self, a, b):
        (ax, ay), (bx, by) = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2), ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
        off = np.array([ax - bx, ay - by])
        size = np.array([a[2] - a[0] + b[2] - b[0], a[3] - a[1] + b[3] - b[1]])
        shrunk = np.sign(off) * np.maximum(np.abs(off) - 0.1 * size, 0)
        if np.all(np.abs(shrunk) < 1e-3):
            return set()
        dx, dy = shrunk / np.linalg.norm(off)
        return {n for n, ok in [("left of", dx < -0.5), ("right of", dx > 0.5), ("above", dy < -0.5),
                                ("below", dy > 0.5)] if ok}

    def score(self, sample, mode):
        meta, image = sample.metadata, sample.image
        kept = self.kept(image, meta["tag"])
        groups, ok, terms = [], True, []
        for c in meta["include"]:
            objs = kept.get(c["class"], [])
            n = c["count"]
            if mode == "official":
                objs = objs[:n]
                good = len(objs) >= n
            else:
                terms.append(1 - abs(n - len(objs)) / n)
                good = len(objs) == n
                if not good and ("color" in c or "position" in c):
                    terms.append(0.0)
            if good and "color" in c:
                hits = [self.colour(image, c["class"], o) for o in objs[:n]].count(c["color"])
                if mode != "official":
                    terms.append(1 - abs(n - hits) / n)
                good = hits >= n if mode == "official" else hits == n
            if good and "position" in c:
                rel, ref = c["position"]
                if groups[ref] is None:
                    good = False
                    terms.append(0.0)
                else:
                    good = all(rel in self.rel(o[1], t[1]) for o in objs for t in groups[ref])
                    terms += [] if good else [0.0]
                    terms.append(1.0)
            groups.append(objs if good else None)
            ok = ok and good
        if mode == "official":
            ok = ok and all(len(kept.get(c["class"], [])) < c["count"] for c in meta.get("exclude", []))
        if mode == "partial":
            return sum(terms) / len(terms)
        return 1.0 if ok else 0.0


@pytest.fixture(scope="module")
def reference(tiny):
    return Reference(tiny)


@pytest.fixture(scope="module")
def samples(reference):
    """Metadata chosen from the *reference* detections so that outcomes are mixed (some pass, some fail)."""
    out = []
    for i, image in enumerate(IMAGES):
        kept = reference.kept(image, "single_object")
        by_count = sorted(kept, key=lambda c: (-len(kept[c]), c))
        top = by_count[0]
        single = next((c for c in by_count if len(kept[c]) == 1), top)  # strictly true if it exists
        absent = next(c for c in GENEVAL_OBJECT_NAMES if c not in reference.raw(image))
        counted = reference.kept(image, "counting")
        c_cls = max(sorted(counted), key=lambda c: len(counted[c]), default=top)
        n = max(len(counted.get(c_cls, [])), 2)  # odd images ask for n - 1 (>= 1): the exclude then fires
        colour = reference.colour(image, top, kept[top][0])
        second = by_count[1] if len(by_count) > 1 else absent
        other = COLOURS[COLOURS.index(colour) - 1]
        metas = [
            {"tag": "single_object", "include": [{"class": single, "count": 1}]},
            {"tag": "two_object", "include": [{"class": top, "count": 1}, {"class": absent, "count": 1}]},
            {"tag": "counting", "include": [{"class": c_cls, "count": n - (i % 2)}],
             "exclude": [{"class": c_cls, "count": n - (i % 2) + 1}]},
            {"tag": "colors", "include": [{"class": top, "count": 1,
                                           "color": colour if i % 2 == 0 else other}]},
            {"tag": "position", "include": [{"class": second, "count": 1},
                                            {"class": top, "count": 1, "position": ["left of", 0]}]},
        ]
        out += [Sample(f"img{i}-{m['tag']}", f"prompt {i}", image, metadata=m) for m in metas[i % 2::2]]
    return out


def make_reward(tiny, mode="official", **kw):
    return GenEvalReward(tiny["m2f"], clip_model=tiny["clip"], mode=mode, **THRESHOLDS, **kw)


@pytest.fixture(scope="module")
def spec(tiny, reference, samples):
    return RewardSpec(
        name="geneval",
        make=lambda **kw: make_reward(tiny, **kw),
        samples=lambda: list(samples),
        reference=lambda reward, ss: [reference.score(s, "official") for s in ss],
        atol=0.0,
        rtol=0.0,
        bf16_atol=None,  # a 0/1 verdict has no meaningful bf16 tolerance; see test_bf16_runs
        extra_bad=[("no-include", Sample("bad-no-include", "p", IMAGES[0], metadata={"tag": "colors"}))],
    )


# -- shared tester -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_shared_tester(check, spec):
    CHECKS[check](spec)


def test_parity_is_not_trivial(reference, samples):
    """The reference outcomes are mixed in every mode, so parity compares something."""
    for mode in ("official", "strict", "partial"):
        values = [reference.score(s, mode) for s in samples]
        assert len(set(values)) > 1, (mode, values)


@pytest.mark.parametrize("mode", ["strict", "partial"])
def test_parity_flow_grpo_modes(mode, tiny, reference, samples):
    out = make_reward(tiny, mode).score(samples)
    assert all(out.applicable), out.errors
    for s, got, d in zip(samples, out.scores, out.details):
        assert got == pytest.approx(reference.score(s, mode), abs=1e-12), (s.id, d)
        assert d["mode"] == mode and d["detector"] == "transformers"


def test_details_name_mode_backend_counts_and_failed_clause(tiny, reference, samples):
    out = make_reward(tiny).score(samples)
    for s, value, d in zip(samples, out.scores, out.details):
        assert d["mode"] == "official" and d["detector"] == "transformers" and d["tag"] == s.metadata["tag"]
        assert d["correct"] is (value == 1.0)
        kept = reference.kept(s.image, s.metadata["tag"])
        assert d["counts"] == {c["class"]: len(kept.get(c["class"], []))
                               for c in s.metadata["include"] + s.metadata.get("exclude", [])}
        if not d["correct"]:
            assert d["failed_clauses"] and d["reason"].startswith(d["failed_clauses"][0] + ":")
        colour_clauses = [c for c in s.metadata["include"] if "color" in c and kept.get(c["class"])]
        assert sorted(d["colors"]) == sorted({c["class"] for c in colour_clauses})


def test_settings_label_mode_backend_and_thresholds(tiny):
    described = make_reward(tiny, "partial").describe()
    assert described["name"] == "geneval"
    assert described["mode"] == "partial"
    assert described["backend"] == described["detector"] == "transformers"
    assert described["threshold"] == 0.0083 and described["counting_threshold"] == 0.0082
    assert described["max_objects"] == 16 and described["position_threshold"] == 0.1


def test_missing_or_bad_metadata_is_an_error_naming_the_sample(tiny, samples):
    good = samples[0]
    bad = [
        replace(good, id="no-meta", metadata={}),
        replace(good, id="no-tag", metadata={"include": [{"class": "cat", "count": 1}]}),
        replace(good, id="later-ref", metadata={"tag": "position", "include": [
            {"class": "cat", "count": 1, "position": ["left of", 1]}, {"class": "dog", "count": 1}]}),
        replace(good, id="unknown-class", metadata={"tag": "single_object",
                                                    "include": [{"class": "mouse", "count": 1}]}),
        replace(good, id="empty-include", metadata={"tag": "single_object", "include": []}),
    ]
    out = make_reward(tiny).score([good, *bad])
    assert out.applicable[0] and out.errors[0] is None
    for k, s in enumerate(bad, start=1):
        assert not out.applicable[k] and math.isnan(out.scores[k])
        assert repr(s.id) in out.errors[k], out.errors[k]
    assert "tag" in out.errors[2] and "include[0]" in out.errors[3] and "'mouse'" in out.errors[4]
    assert "'include' is empty" in out.errors[5]


def test_bad_options_are_config_errors(tiny):
    with pytest.raises(ConfigError, match="mode"):
        GenEvalReward(mode="lenient")
    with pytest.raises(ConfigError, match="detector"):
        GenEvalReward(detector="yolo")
    with pytest.raises(ConfigError, match="max_objects"):
        GenEvalReward(max_objects=-2)


def test_one_detector_forward_per_input_size_and_one_clip_forward(tiny, samples, monkeypatch):
    reward = make_reward(tiny).load()
    forwards, clip_calls = [], []
    real_forward, real_classify = reward.detector.forward, reward.colors.classify
    monkeypatch.setattr(reward.detector, "forward",
                        lambda px: forwards.append(px.shape[0]) or real_forward(px))
    monkeypatch.setattr(reward.colors, "classify",
                        lambda items: clip_calls.append(len(items)) or real_classify(items))
    reward.score(samples)
    sizes = {(s.image.width, s.image.height) for s in samples}
    # 64x48 images share one forward; 48x64 and 40x40 get their own
    assert sorted(forwards) == sorted(sum(1 for s in samples if s.image.size == sz) for sz in sizes)
    assert len(clip_calls) == 1 and clip_calls[0] >= 1


def test_bf16_runs(tiny, samples):
    out = make_reward(tiny, dtype="bfloat16").score(samples)
    assert all(out.applicable), out.errors
    assert set(out.scores) <= {0.0, 1.0}


# -- plumbing with hand-made detections (positions and crops are known) ------------------------------------
class FakeDetector:
    """Returns fixed detections: a car on the left half, a cup on the right half of a 64x32 image."""

    backend = "fake"

    def __init__(self):
        left = np.zeros((32, 64), bool)
        left[4:28, 2:30] = True
        right = np.zeros((32, 64), bool)
        right[8:24, 40:60] = True
        self.dets = {"car": [{"box": [2.0, 4.0, 30.0, 28.0], "score": 0.9, "mask": left}],
                     "cup": [{"box": [40.0, 8.0, 60.0, 24.0], "score": 0.8, "mask": right}]}

    def detect(self, images, min_score):
        return [self.dets for _ in images]


def test_reward_with_known_boxes_judges_position_both_ways(tiny):
    reward = make_reward(tiny).load()
    reward.detector = FakeDetector()
    image = Image.new("RGB", (64, 32), (200, 30, 30))

    def meta(rel):  # "a cup <rel> a car"
        return {"tag": "position", "include": [{"class": "car", "count": 1},
                                               {"class": "cup", "count": 1, "position": [rel, 0]}]}

    samples = [Sample(rel, "p", image, metadata=meta(rel)) for rel in ("right of", "left of", "above")]
    out = reward.score(samples)
    assert out.scores == [1.0, 0.0, 0.0]
    assert out.details[1]["reason"] == "include[1]: expected cup left of include[0], found right of"
    partial = make_reward(tiny, "partial").load()
    partial.detector = FakeDetector()
    assert partial.score(samples).scores == [1.0, 0.75, 0.75]


def test_crop_object_greys_outside_the_mask_and_cuts_the_box():
    image = Image.new("RGB", (64, 32), (200, 30, 30))
    det = FakeDetector().dets["cup"][0]
    det["mask"][8:12, 40:44] = False  # a hole inside the box
    crop = crop_object(image, det)
    assert crop.size == (20, 16)
    arr = np.asarray(crop)
    assert (arr[0, 0] == 153).all() and (arr[:4, :4] == 153).all()  # the hole is #999
    assert tuple(arr[8, 10]) == (200, 30, 30)
    no_mask = crop_object(image, {**det, "mask": None})
    assert (np.asarray(no_mask) == (200, 30, 30)).all()


def test_colour_is_classified_on_the_masked_crop(tiny, reference):
    """The reward's colour for a known object equals the reference's open_clip computation."""
    reward = make_reward(tiny).load()
    reward.detector = FakeDetector()
    image = IMAGES[0].resize((64, 32))
    meta = {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                             {"class": "cup", "count": 1, "color": "blue"}]}
    d = reward.score([Sample("c", "p", image, metadata=meta)]).details[0]
    dets = FakeDetector().dets
    want = {c: [reference.colour(image, c, (o["score"], o["box"], o["mask"]))] for c, o in
            ((c, v[0]) for c, v in dets.items())}
    assert d["colors"] == want


def test_colour_logits_match_reference(tiny, reference):
    """The tiny CLIP's argmax is nearly always the same colour, so compare the logits themselves: this is
    what catches a wrong grey, mask, crop or template."""
    reward = make_reward(tiny).load()
    dets = FakeDetector().dets
    dets["cup"][0]["mask"][8:12, 40:44] = False  # a hole: those pixels must be grey
    items = [(im.resize((64, 32)), objs[0], cls) for im in IMAGES for cls, objs in dets.items()]
    got = reward.colors.logits(items)
    want = torch.stack([reference.colour_logits(im, cls, (o["score"], o["box"], o["mask"]))
                        for im, o, cls in items])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert reward.colors.classify(items) == [COLOURS[int(k)] for k in want.argmax(1)]


# -- detector backends -------------------------------------------------------------------------------------
def assert_detections_structure(dets, image):
    assert isinstance(dets, dict) and dets
    for cls, objs in dets.items():
        assert cls in GENEVAL_OBJECT_NAMES
        assert objs, cls
        scores = [o["score"] for o in objs]
        assert scores == sorted(scores, reverse=True)
        for o in objs:
            assert set(o) == {"box", "score", "mask"}
            assert isinstance(o["score"], float)
            assert isinstance(o["box"], list) and len(o["box"]) == 4
            assert all(isinstance(v, float) for v in o["box"])
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 <= x2 <= image.width and 0 <= y1 <= y2 <= image.height
            assert isinstance(o["mask"], np.ndarray) and o["mask"].dtype == bool
            assert o["mask"].shape == (image.height, image.width)


def test_detections_match_reference(tiny, reference):
    """The detection part on its own: classes, scores, boxes and masks equal the reference's."""
    detector = TransformersDetector(tiny["m2f"]).load()
    for image in IMAGES:
        got = detector.detect([image], 0.0)[0]
        want = reference.raw(image)
        assert sorted(got) == sorted(want)
        for cls, objs in want.items():
            assert [o["score"] for o in got[cls]] == [score for score, _, _ in objs], cls
            assert [o["box"] for o in got[cls]] == [box for _, box, _ in objs], cls
            for o, (_, _, mask) in zip(got[cls], objs):
                assert np.array_equal(o["mask"], mask)


def test_transformers_detector_structure_and_class_names(tiny):
    detector = TransformersDetector(tiny["m2f"]).load()
    assert detector.classnames == GENEVAL_OBJECT_NAMES  # mouse/remote/keyboard renamed the GenEval way
    image = IMAGES[0]
    dets = detector.detect([image], 0.0)[0]
    assert_detections_structure(dets, image)
    assert all(o["score"] > 0.0083 for objs in detector.detect([image], 0.0083)[0].values() for o in objs)


def test_mmdet_backend_same_structure(tiny):
    """The official config with random weights: same detections structure as the transformers backend."""
    pytest.importorskip("mmdet")
    pytest.importorskip("mmcv.ops")
    image = IMAGES[0]
    meta = {"tag": "single_object", "include": [{"class": "person", "count": 1}]}
    with pytest.warns(UserWarning, match="random weights"):
        torch.manual_seed(0)
        reward = GenEvalReward(detector="mmdet", test_scale=(64, 64), clip_model=tiny["clip"],
                               threshold=0.0).load()
    out = reward.score([Sample("mm", "p", image, metadata=meta)])
    assert out.applicable[0] and out.details[0]["detector"] == "mmdet"
    assert reward.describe()["backend"] == "mmdet"
    assert reward.model_id.endswith("mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco.py")
    assert reward.detector.classnames == GENEVAL_OBJECT_NAMES
    mm = reward.detector.detect([image], 0.0)[0]
    hf = TransformersDetector(tiny["m2f"]).load().detect([image], 0.0)[0]
    assert_detections_structure(mm, image)
    assert_detections_structure(hf, image)
    assert out.details[0]["counts"] == {"person": len(mm.get("person", []))}


def test_mmdet_backend_missing_names_the_extra(tiny, monkeypatch, samples):
    monkeypatch.setitem(sys.modules, "mmcv", None)
    monkeypatch.setitem(sys.modules, "mmdet", None)
    reward = GenEvalReward(detector="mmdet", clip_model=tiny["clip"])
    with pytest.raises(MissingBackendError, match=r"evalsuite\[mmdet\]"):
        reward.score(samples[:1])


def test_mmdet_backend_is_float32_only(tiny):
    with pytest.raises(ConfigError, match="float32"):
        GenEvalReward(detector="mmdet", dtype="bfloat16", clip_model=tiny["clip"]).load()
