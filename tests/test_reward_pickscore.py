"""PickScore on the tiny CLIP checkpoint: shared tester, hand-worked formula, /26, truncation, return types.

Parity reference: an independently loaded ``CLIPModel`` + ``CLIPProcessor``, one forward per sample (as the
PickScore README scores), ``exp(logit_scale) * <t/|t|, v/|v|>`` written out by hand.
dtype: bf16 within 0.15 of fp32 on the raw scale (tiny model: exp(logit_scale) = 1/0.07 ≈ 14.3, so a cosine
within ~0.01); the logit scale itself is read in float32 in both runs.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite import Sample, get_reward
from evalsuite.rewards.pickscore import (
    DEFAULT_PROCESSOR,
    FLOW_GRPO_NORMALIZER,
    PickScore,
    cosine,
    features,
    pickscore,
)
from tests.reward_tester import CHECKS, RewardSpec

LONG = "a red cube " * 30  # 90 BPE tokens + <|startoftext|> + <|endoftext|> = 92 > 77
CUT = "a red cube " * 25  # 75 + 2 = 77: exactly what truncation keeps of LONG


def _samples() -> list[Sample]:
    rng = np.random.default_rng(1)
    sizes = [(64, 64), (48, 32), (40, 64), (32, 32), (57, 33), (64, 40)]
    prompts = ["a red cube", "a photo of two red apples on a wooden table", "", "a red cube", LONG, "x " * 40]
    return [
        Sample(f"p{i}", p, Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        for i, ((w, h), p) in enumerate(zip(sizes, prompts))
    ]


def _reference_for(folder):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPProcessor.from_pretrained(folder, backend="pil")  # the README ran 4.x: PIL resize

    def unwrap(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def reference(reward, samples: list[Sample]) -> list[float]:
        out = []
        for s in samples:  # one image, one prompt at a time
            img = unwrap(model.get_image_features(**processor(images=s.image, return_tensors="pt")))[0]
            txt_in = processor(text=[s.prompt], truncation=True, max_length=77, return_tensors="pt")
            txt = unwrap(model.get_text_features(**txt_in))[0]
            img, txt = img / img.norm(), txt / txt.norm()
            out.append(float(model.logit_scale.exp() * (img * txt).sum()))
        return out

    return reference


@pytest.fixture(scope="module")
def clip_dir(tiny_dir):
    return tiny_dir / "clip"


@pytest.fixture(scope="module")
def spec(clip_dir) -> RewardSpec:
    return RewardSpec(
        name="pickscore",
        make=lambda **kw: get_reward("pickscore", model=str(clip_dir), batch_size=4, **kw),
        samples=_samples,
        reference=_reference_for(clip_dir),
        atol=1e-4,
        rtol=1e-5,
        bf16_atol=0.15,
    )


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_shared_tester(check: str, spec: RewardSpec) -> None:
    CHECKS[check](spec)


# -- the pure rule, by hand ---------------------------------------------------------------------------
def test_rule_by_hand() -> None:
    t = torch.tensor([[3.0, 4.0], [1.0, 0.0], [2.0, 0.0]])
    v = torch.tensor([[4.0, 3.0], [0.6, 0.8], [-5.0, 0.0]])
    # cos = 24/25, 0.6, -1 ; exp(log 100) = 100
    assert cosine(t, v).tolist() == pytest.approx([0.96, 0.6, -1.0], abs=1e-6)
    assert pickscore(t, v, math.log(100.0)).tolist() == pytest.approx([96.0, 60.0, -100.0], abs=1e-4)
    assert pickscore(t, v, math.log(20.0)).tolist() == pytest.approx([19.2, 12.0, -20.0], abs=1e-5)
    # Flow-GRPO's training reward: 96 / 26, 60 / 26, -100 / 26
    assert pickscore(t, v, math.log(100.0), 26.0).tolist() == pytest.approx(
        [3.6923077, 2.3076923, -3.8461538], abs=1e-5
    )


def test_features_accepts_tensor_and_output_objects() -> None:
    x = torch.ones(2, 3)
    assert features(x, "image") is x
    assert features(SimpleNamespace(pooler_output=x), "text") is x
    assert features(SimpleNamespace(image_embeds=x, pooler_output=None), "image") is x
    with pytest.raises(TypeError, match="text_embeds"):
        features(SimpleNamespace(last_hidden_state=x), "text")


# -- the reward on the tiny model ----------------------------------------------------------------------
def test_value_is_logit_scale_times_cosine(clip_dir) -> None:
    reward = PickScore(str(clip_dir)).load()
    out = reward.score(_samples()[:3])
    scale = math.exp(float(reward.model.logit_scale))
    assert scale == pytest.approx(1 / 0.07, rel=1e-4)  # CLIP init 2.6592 = log(1/0.07)
    for value, d in zip(out.scores, out.details):
        assert -1.0 <= d["cosine"] <= 1.0
        assert value == pytest.approx(scale * d["cosine"], rel=1e-5, abs=1e-6)
        assert d["raw"] == value


def test_changing_logit_scale_rescales_scores(clip_dir, tmp_path) -> None:
    """Write a copy with logit_scale = log 20: every score becomes exactly 20 x its cosine."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_dir)
    model.logit_scale.data.fill_(math.log(20.0))
    model.save_pretrained(tmp_path)
    CLIPProcessor.from_pretrained(clip_dir).save_pretrained(tmp_path)
    samples = _samples()[:3]
    base = PickScore(str(clip_dir)).score(samples)
    scaled = PickScore(str(tmp_path)).score(samples)
    for b, s in zip(base.details, scaled.scores):
        assert s == pytest.approx(20.0 * b["cosine"], rel=1e-5, abs=1e-6)


def test_normalize_divides_by_26(clip_dir) -> None:
    samples = _samples()
    raw = PickScore(str(clip_dir)).score(samples)
    norm = PickScore(str(clip_dir), normalize=True).score(samples)
    assert FLOW_GRPO_NORMALIZER == 26.0
    for r, n, d in zip(raw.scores, norm.scores, norm.details):
        assert n == pytest.approx(r / 26.0, rel=1e-6)
        assert d["raw"] == pytest.approx(r, rel=1e-6)
    assert PickScore(str(clip_dir), normalize=True).settings()["normalizer"] == 26.0
    assert PickScore(str(clip_dir)).settings()["normalizer"] is None


def test_truncation_is_reported_and_matches_cut_prompt(clip_dir) -> None:
    img = _samples()[0].image
    out = PickScore(str(clip_dir)).score(
        [Sample("long", LONG, img), Sample("cut", CUT, img), Sample("short", "a red cube", img)]
    )
    assert [d["token_count"] for d in out.details] == [92, 77, 5]
    assert [d["truncated"] for d in out.details] == [True, False, False]
    # the 92-token prompt is scored as its first 77 tokens
    assert out.scores[0] == pytest.approx(out.scores[1], abs=1e-5)


def test_tensor_returning_model_gives_the_same_scores(clip_dir) -> None:
    """transformers < 5 returns tensors from get_*_features; wrap the model to return them and compare."""
    samples = _samples()
    reward = PickScore(str(clip_dir)).load()
    pixels = reward.processor(images=[samples[0].image], return_tensors="pt")["pixel_values"]
    assert not isinstance(reward.model.get_image_features(pixel_values=pixels), torch.Tensor)  # object path
    objects = reward.score(samples).scores

    class TensorReturning:
        def __init__(self, inner) -> None:
            self.inner = inner

        def get_image_features(self, **kw) -> torch.Tensor:
            return self.inner.get_image_features(**kw).pooler_output

        def get_text_features(self, **kw) -> torch.Tensor:
            return self.inner.get_text_features(**kw).pooler_output

    reward.model = TensorReturning(reward.model)
    tensors = reward.score(samples).scores
    assert tensors == pytest.approx(objects, abs=1e-6)


def test_shared_prompt_is_encoded_once(clip_dir) -> None:
    reward = PickScore(str(clip_dir), batch_size=8).load()
    seen: list[int] = []
    inner = reward.model.get_text_features

    def counting(**kw):
        seen.append(kw["input_ids"].shape[0])
        return inner(**kw)

    reward.model.get_text_features = counting
    img = _samples()[0].image
    group = [Sample(f"g{i}", "a red cube", img.rotate(90 * i)) for i in range(4)]
    out = reward.score([*group, Sample("other", "a blue ball", img)])
    assert seen == [2]  # one text forward, two distinct prompts
    assert len(set(out.scores[:4])) > 1  # different images, same prompt: different scores


def test_processor_choice(clip_dir) -> None:
    assert PickScore().processor_id == DEFAULT_PROCESSOR
    assert PickScore().model_id == "yuvalkirstain/PickScore_v1"
    assert PickScore(str(clip_dir)).processor_id == str(clip_dir)  # folder with its own processor files
    assert PickScore(str(clip_dir), processor="some/processor").processor_id == "some/processor"
    assert PickScore("someone/finetuned-pickscore").processor_id == DEFAULT_PROCESSOR
    described = PickScore(str(clip_dir)).describe()
    assert described["name"] == "pickscore" and described["max_text_tokens"] == 77
