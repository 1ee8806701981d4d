"""PromptEcho on the tiny Qwen2.5-VL: parity with a hand-computed teacher-forced CE, and the loss mask."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite import Sample
from evalsuite.errors import ConfigError
from evalsuite.rewards.promptecho import DEFAULT_QUERY, PromptEcho, echo_reward
from tests.reward_tester import CHECKS, RewardSpec, close

LONG_CAPTION = " ".join(
    f"the {w} object number {i} sits next to a {c} sphere on a wooden shelf,"
    for i, (w, c) in enumerate(zip(["small", "large", "shiny", "matte", "striped"] * 4, ["red", "blue"] * 10))
)  # 20 clauses x 15 words = 300 words


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on shared CPUs: one thread avoids thread-sync overhead that dominates such small ops."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _img(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def samples() -> list[Sample]:
    return [
        Sample("s0", "a red cube on a wooden table", image=_img(32, 32, 0)),
        Sample("s1", "two dogs playing in the snow under a bright blue sky, photorealistic, 35mm",
               image=_img(64, 40, 1)),
        Sample("s2", "a cat", image=_img(48, 64, 2)),
    ]


@cache
def _hf(path: str):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return processor, model


def hand_logprobs(path: str, sample: Sample, query: str = DEFAULT_QUERY) -> torch.Tensor:
    """Independent reference: the whole chat text through processor + HF model, CE picked by hand."""
    from qwen_vl_utils import process_vision_info

    processor, model = _hf(path)
    messages = [{"role": "user", "content": [{"type": "image", "image": sample.image},
                                             {"type": "text", "text": query}]}]
    images, _ = process_vision_info(messages)
    prefix = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prefix + sample.prompt], images=images, return_tensors="pt")
    caption = processor.tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
    assert inputs["input_ids"][0, -len(caption):].tolist() == caption  # the caption is the sequence's tail
    with torch.no_grad():
        logits = model(**inputs).logits[0].double()
    n = len(caption)
    return torch.log_softmax(logits[-n - 1 : -1], -1).gather(1, torch.tensor(caption)[:, None])[:, 0]


@pytest.fixture(scope="module")
def qwen(tiny_dir) -> str:
    return str(tiny_dir / "qwen2.5-vl")


@pytest.fixture(scope="module")
def spec(qwen) -> RewardSpec:
    return RewardSpec(
        name="promptecho",
        make=lambda dtype="float32": PromptEcho(qwen, dtype=dtype),
        samples=samples,
        reference=lambda reward, ss: [float(hand_logprobs(qwen, s, reward.query).mean()) for s in ss],
        atol=1e-5,
        bf16_atol=0.01,  # tiny model: measured <= 3e-4
    )


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_shared_tester(check, spec):
    CHECKS[check](spec)


# -- the rule, by hand ----------------------------------------------------------------------------
def test_echo_reward_rule_by_hand():
    assert echo_reward([-1.0, -2.0, -3.0], "mean") == -2.0
    assert echo_reward([-1.0, -2.0, -3.0], "sum") == -6.0
    assert echo_reward(torch.tensor([-0.5]), "mean") == -0.5
    with pytest.raises(ValueError, match="no caption tokens"):
        echo_reward([], "mean")
    with pytest.raises(ValueError, match="reduction"):
        echo_reward([-1.0], "max")


def test_bad_options_fail_at_construction(qwen):
    with pytest.raises(ConfigError, match="reduction"):
        PromptEcho(qwen, reduction="max")
    with pytest.raises(ConfigError, match="query"):
        PromptEcho(qwen, query="  ")
    with pytest.raises(ValueError, match="min_pixels"):
        PromptEcho(qwen, min_pixels=10_000, max_pixels=100)


# -- what is scored -------------------------------------------------------------------------------
def test_mean_and_sum_differ_by_the_token_count(qwen):
    ss = samples()
    mean = PromptEcho(qwen, reduction="mean").score(ss)
    total = PromptEcho(qwen, reduction="sum").score(ss)
    tok = PromptEcho(qwen).load()._processor.tokenizer
    for s, m, t, d in zip(ss, mean.scores, total.scores, mean.details):
        n = len(tok(s.prompt, add_special_tokens=False)["input_ids"])
        assert d["n_caption_tokens"] == n
        assert math.isclose(t, m * n, rel_tol=1e-6)
        assert math.isclose(d["ce"], -m, rel_tol=1e-9)


def test_loss_covers_exactly_the_caption_tokens(qwen):
    reward = PromptEcho(qwen).load()
    tok = reward._processor.tokenizer
    ss = samples()
    batch = reward.encode(ss)
    for s, seq, start, target in zip(ss, batch.seqs, batch.starts, batch.targets):
        assert target == tok(s.prompt, add_special_tokens=False)["input_ids"]
        assert seq[start:] == target  # nothing after the caption, nothing of the template in the targets
        assert tok.decode(seq[:start]).endswith("<|im_start|>assistant\n")
        assert DEFAULT_QUERY in tok.decode(seq[:start])


def test_query_changes_the_score_not_the_counted_tokens(qwen):
    ss = samples()
    a, b = PromptEcho(qwen), PromptEcho(qwen, query="What is in this picture? Answer at length.")
    ea, eb = a.encode(ss), b.encode(ss)
    assert ea.targets == eb.targets
    assert all(sb > sa for sa, sb in zip(ea.starts, eb.starts))  # longer query, later caption start
    oa, ob = a.score(ss), b.score(ss)
    assert [d["n_caption_tokens"] for d in oa.details] == [d["n_caption_tokens"] for d in ob.details]
    assert all(abs(x - y) > 1e-6 for x, y in zip(oa.scores, ob.scores))
    for s, got in zip(ss, ob.scores):  # and the new query really is what the model saw
        assert close(got, float(hand_logprobs(qwen, s, b.query).mean()), 1e-5, 1e-4)


def test_count_end_token_adds_im_end(qwen):
    reward = PromptEcho(qwen, count_end_token=True, reduction="sum")
    ss = samples()[:2]
    batch = reward.encode(ss)
    end = reward._processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    plain = PromptEcho(qwen, reduction="sum").score(ss)
    with_end = reward.score(ss)
    for target, d0, d1, s0, s1 in zip(batch.targets, plain.details, with_end.details, plain.scores,
                                      with_end.scores):
        assert target[-1] == end
        assert d1["n_caption_tokens"] == d0["n_caption_tokens"] + 1
        assert s1 < s0  # one more (negative) log-probability in the sum


def test_details_record_what_was_asked_and_each_token_where_it_sits(qwen):
    """For the report's card: the query, and per caption token its characters in the prompt and its
    log-probability (the hand reference, to the 4 decimals recorded); the score stays their unrounded mean."""
    ss = samples()
    out = PromptEcho(qwen).score(ss)
    for s, score, d in zip(ss, out.scores, out.details):
        hand = hand_logprobs(qwen, s)
        tokens = d["caption_tokens"]
        assert d["query"] == DEFAULT_QUERY and len(tokens) == d["n_caption_tokens"] == len(hand)
        assert "".join(s.prompt[a:b] for a, b, _ in tokens) == s.prompt  # in order, gap-free, whole prompt
        assert all(abs(lp - float(h)) < 2e-4 for (_, _, lp), h in zip(tokens, hand))
        assert close(score, float(hand.mean()), 1e-5, 1e-4)
    end = PromptEcho(qwen, count_end_token=True).score(ss[:1]).details[0]["caption_tokens"]
    assert end[-1][:2] == [len(ss[0].prompt)] * 2  # <|im_end|> sits after the prompt's last character


def test_batch_invariance_mixed_lengths_and_sizes(qwen):
    ss = [
        Sample("long", LONG_CAPTION, image=_img(28, 28, 3)),
        Sample("short", "a cat", image=_img(120, 56, 4)),
        Sample("mid", "a watercolor painting of a lighthouse at dusk", image=_img(40, 90, 5)),
    ]
    reward = PromptEcho(qwen)
    together = reward.score(ss)
    assert len({d["n_sequence_tokens"] for d in together.details}) == 3
    assert len({d["n_image_tokens"] for d in together.details}) > 1
    for s, got in zip(ss, together.scores):
        assert close(reward.score([s]).scores[0], got, 1e-5, 1e-4), s.id


def test_long_caption_is_scored_in_full(qwen):
    assert len(LONG_CAPTION.split()) == 300
    s = Sample("long", LONG_CAPTION, image=_img(40, 40, 6))
    out = PromptEcho(qwen).score([s])
    reference = hand_logprobs(qwen, s)
    assert out.details[0]["n_caption_tokens"] == len(reference) > 300
    assert out.details[0]["truncated"] is False
    assert close(out.scores[0], float(reference.mean()), 1e-5, 1e-4)


def test_too_long_is_an_error_naming_the_sample(qwen):
    ss = [Sample("fits", "a cat", image=_img(32, 32, 7)),
          Sample("too-long", LONG_CAPTION, image=_img(32, 32, 8))]
    out = PromptEcho(qwen, max_length=200).score(ss)
    assert out.applicable == [True, False]
    assert "'too-long'" in out.errors[1] and "never truncates" in out.errors[1]
    assert close(out.scores[0], PromptEcho(qwen).score(ss[:1]).scores[0], 1e-5, 1e-4)


def test_empty_prompt_is_not_applicable_not_zero(qwen):
    ss = [replace(samples()[0], id="empty", prompt=""), samples()[1]]
    out = PromptEcho(qwen).score(ss)
    assert out.applicable == [False, True] and out.errors == [None, None]
    assert "no caption tokens" in out.details[0]["not_applicable"]
    assert math.isnan(out.scores[0])


def test_registry_and_settings(qwen):
    from evalsuite.registry import get_reward

    reward = get_reward("promptecho", model=qwen, reduction="sum", query="Describe.")
    assert isinstance(reward, PromptEcho)
    assert PromptEcho.default_model == "Qwen/Qwen2.5-VL-7B-Instruct"
    desc = reward.describe()
    assert desc["reduction"] == "sum" and desc["query"] == "Describe." and desc["count_end_token"] is False
