"""The Flow-GRPO and TRL reward shapes, driven through registered rewards."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite import GenerationRequest, Generator, Reward, Score
from evalsuite.adapters import flowgrpo_reward_fn, trl_reward_func


class QuotedLength(Reward):
    """Length of the quoted span; not applicable without one (like OCR). Records what it saw."""

    name = "quoted"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen = []

    def _score_batch(self, samples):
        self.seen.extend(samples)
        return [Score(float(len(s.prompt.split('"')[1]))) if s.prompt.count('"') >= 2
                else Score.not_applicable("no quoted text") for s in samples]


class WordGenerator(Generator):
    """Renders a grey level from the number of words, so the image depends on what was rendered."""

    name = "words"

    def __init__(self):
        self.requests = []

    def generate(self, requests):
        self.requests.extend(requests)
        return [Image.new("RGB", (8, 8), (min(255, 25 * len(r.prompt.split())),) * 3) for r in requests]


def test_flowgrpo_tensor_and_array_inputs_match():
    fn = flowgrpo_reward_fn("brightness")
    nchw = torch.zeros(2, 3, 4, 4)
    nchw[1] = 1.0
    details, info = fn(nchw, ["a", "b"], [{}, {}], only_strict=True)
    assert set(details) == {"brightness", "avg"}
    np.testing.assert_allclose(details["avg"], [0.0, 1.0])
    nhwc = (nchw.permute(0, 2, 3, 1) * 255).to(torch.uint8).numpy()
    np.testing.assert_allclose(fn(nhwc, ["a", "b"], [{}, {}])[0]["avg"], [0.0, 1.0])
    assert info["errors"] == [None, None]


def test_flowgrpo_multi_reports_components_and_nan_for_not_applicable():
    from evalsuite.rewards.multi import MultiReward

    multi = MultiReward({"brightness": 0.5, "quoted": 0.5}, rewards={"quoted": QuotedLength()})
    fn = flowgrpo_reward_fn(multi)
    images = torch.ones(2, 3, 4, 4)
    details, _ = fn(images, ['sign "OPEN"', "a cat"], [{"tag": "x"}, {"tag": "y"}])
    assert set(details) == {"brightness", "quoted", "avg"}
    assert details["quoted"][0] == 4.0 and math.isnan(details["quoted"][1])
    assert details["avg"][0] == pytest.approx(2.5) and details["avg"][1] == pytest.approx(1.0)
    assert multi.components["quoted"].seen[0].metadata == {"tag": "x"}


def test_trl_with_image_column_and_conversational_prompts():
    reward = QuotedLength()
    fn = trl_reward_func(reward)
    assert fn.__name__ == "quoted"
    prompts = [[{"role": "user", "content": 'write "HELLO"'}], [{"role": "user", "content": "no quote"}]]
    completions = [[{"role": "assistant", "content": "x"}], [{"role": "assistant", "content": "y"}]]
    images = [Image.new("RGB", (4, 4))] * 2
    scores = fn(prompts=prompts, completions=completions, completion_ids=[[1], [2]], images=images,
                trainer_state=None, tag=["ocr", "ocr"])
    assert scores == [5.0, None]
    assert reward.seen[0].metadata == {"tag": "ocr"} and reward.seen[0].prompt == 'write "HELLO"'


def test_trl_rewriter_renders_completion_but_scores_original_prompt():
    reward = QuotedLength()
    gen = WordGenerator()

    def answer(original, completion):
        return completion.split("<answer>")[1].split("</answer>")[0] if "<answer>" in completion else None

    fn = trl_reward_func(reward, generator=gen, completion_to_prompt=answer, seed=3)
    prompts = ['a sign "OPEN"'] * 2
    completions = ["<think>t</think><answer>a red sign that says OPEN</answer>", "malformed"]
    scores = fn(prompts, completions, metadata=[{"k": 1}, {"k": 2}])
    assert scores == [4.0, 4.0]  # scored against the original prompt
    assert [r.prompt for r in gen.requests] == ["a red sign that says OPEN", 'a sign "OPEN"']
    assert [s.rendered_prompt for s in reward.seen] == [r.prompt for r in gen.requests]
    assert [s.metadata for s in reward.seen] == [{"k": 1}, {"k": 2}]
    assert isinstance(gen.requests[0], GenerationRequest) and gen.requests[0].seed != gen.requests[1].seed
    first_seeds = [r.seed for r in gen.requests]
    fn(prompts, completions, metadata=[{}, {}])
    assert [r.seed for r in gen.requests[2:]] != first_seeds  # fresh noise on every call


def test_trl_without_images_or_generator_is_a_clear_error():
    fn = trl_reward_func("brightness")
    with pytest.raises(ValueError, match="generator"):
        fn(["p"], ["c"])
