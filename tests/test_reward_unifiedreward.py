"""UnifiedReward end to end: the local backend on a tiny Qwen2.5-VL against the official script's own
``generate`` call, and the OpenAI-compatible backend against a scripted fake server.

A random tiny model never writes "Final Score: 3", so the test checkpoint is the tiny Qwen2.5-VL (from
``evalsuite tiny``) with verdict phrases added as single tokens and an ``lm_head`` that can only pick
them: every other row is zero and each phrase row ``r`` has a partner phrase with row ``-r``, so the
largest logit is always a phrase (|r . h| > 0) and which one depends on the images and the prompt.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite import Sample, get_reward
from evalsuite.rewards.unifiedreward import UnifiedReward, UnifiedRewardPairwise
from evalsuite.rewards.unifiedreward_rules import FLOW_GRPO_POINT_PROMPT, POINT_PROMPT, THINK_PAIR_PROMPT
from tests.reward_tester import CHECKS, RewardSpec
from tests.test_judges import FakeChatServer, completion, decode_images, status
from tests.test_reward_promptecho import _one_thread  # noqa: F401  (autouse: one CPU thread for tiny models)

POINT_PHRASES = [(f"Final Score: {k}", f"Final Score: {k}.0") for k in range(1, 6)]
PAIR_PHRASES = [("<answer>Image 1 is better.</answer>", "<answer>Image 2 is better.</answer>"),
                ("<answer>either</answer>", "I cannot tell.")]  # both unreadable: Pref-GRPO counts a tie
NEW_TOKENS = 3


def _scripted_checkpoint(base, out, phrases, template, calibration, caption, seed):
    from qwen_vl_utils import fetch_image
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(base)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base, dtype=torch.float32).eval()
    # The last position's hidden state is mostly the same for every input; rows orthogonal to the mean
    # over some requests make the choice depend on what differs between inputs (images, caption).
    states = []
    text = template.format(prompt=caption)
    for images in calibration:
        content = [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]
        chat = processor.apply_chat_template([{"role": "user", "content": content}],
                                             add_generation_prompt=True, tokenize=False)
        fitted = [fetch_image({"image": im}) for im in images]
        inputs = processor(text=[chat], images=fitted, return_tensors="pt")
        with torch.no_grad():
            states.append(model.model(**inputs).last_hidden_state[0, -1])
    typical = torch.stack(states).mean(0)
    typical = typical / typical.norm()
    rows = torch.randn(len(phrases), typical.numel(), generator=torch.Generator().manual_seed(seed))
    rows -= (rows @ typical)[:, None] * typical
    words = [w for pair in phrases for w in pair]
    processor.tokenizer.add_tokens(words)
    model.resize_token_embeddings(len(processor.tokenizer))
    ids = processor.tokenizer.convert_tokens_to_ids(words)
    with torch.no_grad():
        head = model.lm_head.weight
        head.zero_()
        head[ids[0::2]] = rows
        head[ids[1::2]] = -rows
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from evalsuite.tiny import write_tiny

    root = tmp_path_factory.mktemp("unifiedreward")
    base = write_tiny(root / "tiny", ["qwen2.5-vl"], seed=0)["qwen2.5-vl"]
    images = [s.image for s in _samples()]
    return (_scripted_checkpoint(base, root / "point", POINT_PHRASES, POINT_PROMPT, [images[:1]], "x", 1),
            _scripted_checkpoint(base, root / "pair", PAIR_PHRASES, THINK_PAIR_PROMPT,
                                 list(itertools.combinations(images[:4], 2)), "a red apple", 2))


def _img(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _samples():
    sizes = [(64, 64), (48, 80), (100, 36), (64, 64), (33, 57), (56, 56)]
    prompts = ["a cat", "a photo of two red apples on a wooden table", "", "sign", "x " * 40, "a dog"]
    return [Sample(f"s{i}", p, _img(w, h, i)) for i, ((w, h), p) in enumerate(zip(sizes, prompts))]


# -- the official script's code path, one request at a time ----------------------------------------
def official_answer(path, images, text, max_new_tokens=NEW_TOKENS):
    """qwen_point_score_image_generation.py / qwen_infer_cot_image_generation.py, verbatim in substance:
    chat template + process_vision_info + ``model.generate(**inputs, max_new_tokens=...)`` with the
    checkpoint's own generation config (top_k=1)."""
    from qwen_vl_utils import process_vision_info
    from transformers import AutoProcessor

    model = _official_model(path)
    processor = AutoProcessor.from_pretrained(path)
    messages = [{"role": "user", "content": [*({"type": "image", "image": im} for im in images),
                                             {"type": "text", "text": text}]}]
    chat = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image_inputs, video_inputs = process_vision_info(messages)
    inputs = processor(text=[chat], images=image_inputs, videos=video_inputs, padding=True,
                       return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens)
    trimmed = [o[len(i):] for i, o in zip(inputs.input_ids, out)]
    return processor.batch_decode(trimmed, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]


_MODELS: dict = {}


def _official_model(path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    if path not in _MODELS:
        _MODELS[path] = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return _MODELS[path]


def flow_grpo_score(answer):
    """Flow-GRPO's _extract_scores, for one answer (before its / 5)."""
    match = re.search(r"Final Score:\s*([1-5](?:\.\d+)?)", answer)
    return float(match.group(1)) if match else 0.0


def pref_grpo_win_rates(answers_by_pair, n):
    """Pref-GRPO's cal_win_rate over ``{(i, j): answer}`` (i < j)."""
    wins, count = [0.0] * n, [0] * n
    for (i, j), output in answers_by_pair.items():
        count[i] += 1
        count[j] += 1
        m = re.search(r"<answer>(.*?)</answer>", output, re.DOTALL)
        conclusion = m.group(1).strip() if m else None
        if conclusion and "Image 1 is better" in conclusion:
            wins[i] += 1
        elif conclusion and "Image 2 is better" in conclusion:
            wins[j] += 1
        else:
            wins[i] += 0.5
            wins[j] += 0.5
    return [round(wins[k] / count[k], 3) for k in range(n)]


# -- local backend: shared tester and the official code path -----------------------------------------
def _point_spec(checkpoints):
    path = checkpoints[0]
    return RewardSpec(
        name="unifiedreward",
        make=lambda dtype="float32": UnifiedReward(path, dtype=dtype, max_new_tokens=NEW_TOKENS,
                                                   batch_size=3),
        samples=_samples,
        reference=lambda reward, ss: [
            flow_grpo_score(official_answer(path, [s.image], POINT_PROMPT.format(prompt=s.prompt)))
            for s in ss
        ],
        atol=0.0,
        rtol=0.0,
    )


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_shared_tester(checkpoints, check):
    CHECKS[check](_point_spec(checkpoints))


def test_local_prompt_and_answers_are_the_official_ones(checkpoints):
    path = checkpoints[0]
    reward = get_reward("unifiedreward", model=path, max_new_tokens=NEW_TOKENS, batch_size=4)
    samples = _samples()[:4]
    out = reward.score(samples)
    reward.load()
    for s, details in zip(samples, out.details):
        chat = reward.chat_text(POINT_PROMPT.format(prompt=s.prompt), 1)
        assert chat.endswith(f"Text Caption: [{s.prompt}]<|im_end|>\n<|im_start|>assistant\n")
        assert "<|vision_start|><|image_pad|><|vision_end|>You are given a text caption" in chat
        assert details["answer"] == official_answer(path, [s.image], POINT_PROMPT.format(prompt=s.prompt))
    assert len(set(out.scores)) > 1, "the scripted model should not answer the same for every image"
    d = reward.describe()
    assert (d["model"], d["backend"], d["scale"]) == (path, "transformers", "raw Final Score, 1-5")
    normalized = UnifiedReward(path, max_new_tokens=NEW_TOKENS, normalize=True).score(samples)
    assert normalized.scores == pytest.approx([v / 5 for v in out.scores])


def test_flow_grpo_prompt_style(checkpoints):
    path = checkpoints[0]
    s = _samples()[1]
    out = UnifiedReward(path, prompt_style="flow_grpo", max_new_tokens=NEW_TOKENS).score([s])
    text = FLOW_GRPO_POINT_PROMPT.format(prompt=s.prompt)
    assert out.details[0]["answer"] == official_answer(path, [s.image], text)


def test_pairwise_local_matches_pref_grpo(checkpoints):
    path = checkpoints[1]
    group = [replace(s, prompt="a red apple", group="g") for s in _samples()[:4]]
    other = [replace(s, id=f"o{k}", prompt="a dog", group="h") for k, s in enumerate(_samples()[4:])]
    reward = UnifiedRewardPairwise(path, max_new_tokens=NEW_TOKENS, batch_size=4)
    out = reward.score([other[0], *group[:2], other[1], *group[2:]])  # groups interleaved
    text = THINK_PAIR_PROMPT.format(prompt="a red apple")
    answers = {(i, j): official_answer(path, [group[i].image, group[j].image], text)
               for i, j in itertools.combinations(range(4), 2)}
    assert out.scores[1:3] + out.scores[4:] == pref_grpo_win_rates(answers, 4)
    assert out.details[1]["comparisons"] == 3 and len(out.details[1]["judgements"]) == 3
    assert {j["answer"] for j in out.details[1]["judgements"]} <= set(answers.values())
    assert out.scores[0] == pref_grpo_win_rates({(0, 1): official_answer(
        path, [other[0].image, other[1].image], THINK_PAIR_PROMPT.format(prompt="a dog"))}, 2)[0]


def test_pairwise_group_of_one_and_bad_image(checkpoints):
    reward = UnifiedRewardPairwise(checkpoints[1], max_new_tokens=NEW_TOKENS)
    a, b, c = (replace(s, prompt="p", group="g") for s in _samples()[:3])
    bad = replace(b, id="bad-corrupt", image=b"not a png")
    out = reward.score([a, bad, c, replace(a, id="alone", group="solo")])
    assert out.errors[1] is not None and "'bad-corrupt'" in out.errors[1] and math.isnan(out.scores[1])
    assert out.applicable[0] and out.applicable[2] and out.scores[0] + out.scores[2] == pytest.approx(1.0)
    assert not out.applicable[3] and "group of one" in out.details[3]["not_applicable"]


# -- OpenAI-compatible backend against a fake server -----------------------------------------------
@pytest.fixture(scope="module")
def _server():
    s = FakeChatServer()
    yield s
    s.close()


@pytest.fixture
def server(_server):
    return _server.reset()


def _caption(body):
    return re.search(r"Text Caption: \[(.*)\]$", body["messages"][0]["content"][-1]["text"], re.S).group(1)


def _remote(cls, url, **kw):
    return cls(backend="openai", base_url=url, model="UnifiedReward", max_retries=1, backoff=0.01, **kw)


def test_openai_pointwise(server):
    replies = {"good": "cat (object): 1\nFinal Score: 4.5", "vague": "A nice picture.",
               "big": "Final Score: 10"}
    server.fallback = lambda body: completion(replies[_caption(body)])
    samples = [Sample(k, k, _img(20 + i, 16, i)) for i, k in enumerate(replies)]
    out = _remote(UnifiedReward, server.url).score(samples)
    assert out.scores[0] == 4.5 and out.details[0]["final_score"] == 4.5
    for k in (1, 2):  # not applicable, never 0, with the raw answer kept
        assert not out.applicable[k] and out.errors[k] is None and math.isnan(out.scores[k])
        assert out.details[k]["answer"] == replies[samples[k].id]
    assert "outside [1, 5]" in out.details[2]["not_applicable"]
    bodies = {_caption(b): b for _, b in server.requests}
    body = bodies["good"]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("UnifiedReward", 0.0, 512)
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"]
    assert parts[1]["text"] == POINT_PROMPT.format(prompt="good")
    assert list(decode_images(body)[0].getdata()) == list(samples[0].image.getdata())  # lossless
    assert _remote(UnifiedReward, server.url).describe()["backend"] == "openai-compatible"


def test_openai_failure_names_the_sample(server):
    server.fallback = lambda body: (status(500, "down") if _caption(body) == "doomed"
                                    else completion("Final Score: 2"))
    samples = [Sample("ok", "fine", _img(16, 16, 0)), Sample("bad-server", "doomed", _img(16, 16, 1))]
    out = _remote(UnifiedReward, server.url).score(samples)
    assert out.scores[0] == 2.0 and out.errors[0] is None
    assert "'bad-server'" in out.errors[1] and "HTTP 500" in out.errors[1]


def _brightness(image):
    return float(np.asarray(image, dtype=np.float64).mean())


def test_openai_pairwise_win_rates(server):
    """The fake judge prefers the brighter image, cannot read equal ones, and fails for one pair."""

    def judge(body):
        first, second = (_brightness(im) for im in decode_images(body))
        if {first, second} == {10.0, 250.0}:
            return status(500, "overloaded")
        if first == second:
            return completion("<think>same</think>")
        better = 1 if first > second else 2
        return completion(f"<think>...</think>\n<answer>Image {better} is better</answer>")

    server.fallback = judge
    levels = [50, 200, 10, 250, 50]
    group = [Sample(f"g{k}", "a lamp", Image.new("RGB", (16, 16), (v, v, v))) for k, v in enumerate(levels)]
    out = _remote(UnifiedRewardPairwise, server.url).score(group)
    # by hand: g0 (50) beats g2, loses g1 g3, ties g4 -> 1.5/4; g1 (200) beats g0 g2 g4, loses g3 -> 3/4;
    # g2 (10) loses g0 g1 g4, pair with g3 failed -> 0/3; g3 (250) beats g0 g1 g4 -> 3/3; g4 like g0 -> 1.5/4
    assert out.scores == [0.375, 0.75, 0.0, 1.0, 0.375]
    assert [d["comparisons"] for d in out.details] == [4, 4, 3, 3, 4]
    assert out.details[2]["failed"] == 1 and out.details[0]["unparsed"] == 1
    assert len(server.requests) == 10 + 1  # each unordered pair once, plus one retry of the failed pair
    shown = sorted(tuple(_brightness(im) for im in decode_images(b)) for _, b in server.requests)
    pairs = [(levels[i], levels[j]) for i, j in itertools.combinations(range(5), 2)] + [(10, 250)]
    assert shown == sorted(pairs)  # the lower group index is shown first (as "Image 1")
    server.reset().fallback = judge
    both = _remote(UnifiedRewardPairwise, server.url, both_orders=True, unparsed="drop").score(group)
    assert both.scores == [pytest.approx(2 / 6, abs=5e-4), 0.75, 0.0, 1.0, pytest.approx(2 / 6, abs=5e-4)]
    assert both.details[0]["comparisons"] == 6 and both.details[0]["unparsed"] == 2  # g0-g4 twice, dropped


def test_config_errors():
    from evalsuite.errors import ConfigError

    with pytest.raises(ConfigError, match="base_url"):
        UnifiedReward(backend="openai")
    with pytest.raises(ConfigError, match="backend"):
        UnifiedReward(backend="vllm")
    with pytest.raises(ConfigError, match="prompt_style"):
        UnifiedRewardPairwise(prompt_style="pointwise")
    with pytest.raises(ConfigError, match="unparsed"):
        UnifiedRewardPairwise(unparsed="zero")
    d = get_reward("unifiedreward_pairwise").describe()
    assert (d["model"], d["backend"], d["prompt_style"]) == ("CodeGoat24/UnifiedReward-Think-qwen-7b",
                                                             "transformers", "think")
