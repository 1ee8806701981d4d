"""EditReward: batched ``score()`` vs (a) the bare backbone forward on the same batch (goal: ratio <= 1.10)
and (b) a per-pair loop like the official inferencer (goal: >= 4x faster at batch 16).

(a) The bare side is ``Qwen2_5_VLModel`` on the already-processed 2B padded sequences (dim1 + dim2 prompts)
with every sequence's images passed as pixel values, plus the two heads: what a hand-rolled batched scorer
would run, timed without an attention mask (the fast causal kernel, as the reward runs it; ``ratio``) and
with the padding mask (as the official code passes it). The reward also pays validation, resizing,
processing and tokenization, but runs the vision tower once per image (both prompts of a pair show the
same two images).
(b) The loop is the test's per-pair reference (``hand_reward``): per pair and per prompt, qwen-vl-utils
``process_vision_info``, the processor, the vision tower and one unpadded forward, as the official
``EditRewardInferencer.reward`` does for one pair (two batches of one, two forwards).
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from evalsuite import Sample
from evalsuite import qwen_vl as qvl
from evalsuite.rewards.editreward import EDITREWARD_PIXELS, EditReward
from tests.test_reward_editreward import SMALL, _img, hand_reward

ROUNDS = 3


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.fixture(autouse=True)
def _one_thread():
    """Shared CPUs: one thread for every side avoids thread-sync overhead on tiny ops."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_er(tmp_path_factory):
    from evalsuite.tiny.editreward import write_tiny_editreward

    return write_tiny_editreward(tmp_path_factory.mktemp("editreward-bench"), seed=0)


def _samples(n: int) -> list[Sample]:
    prompts = ["add a red hat", "make it night time", "remove the dog on the left", "turn the car blue"]
    return [Sample(f"p{i}", prompts[i % 4], image=_img(48, 40 + 8 * (i % 3), i),
                   source_image=_img(48, 40 + 8 * (i % 3), 100 + i)) for i in range(n)]


def test_bench_editreward(benchmark, tiny_er):
    base, ckpt = str(tiny_er["base"]), str(tiny_er["checkpoint"])
    full = not benchmark.disabled
    n, pixels = (16, EDITREWARD_PIXELS) if full else (2, SMALL)  # a plain test run only checks that it works
    samples = _samples(n)
    reward = EditReward(ckpt, base_model=base, batch_size=n, min_pixels=pixels, max_pixels=pixels).load()
    backbone, heads = reward._backbone, reward._heads

    seqs, pixel_values, grid = reward._sequences(samples)
    ids, mask = qvl.right_pad(seqs, reward._pad_id)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    at = (ids == reward._reward_id).int().argmax(-1)
    dup_pixels, dup_grid = torch.cat([pixel_values, pixel_values]), torch.cat([grid, grid])

    @torch.inference_mode()
    def bare(attention_mask=None):
        hidden = backbone(input_ids=ids, attention_mask=attention_mask, position_ids=positions,
                          pixel_values=dup_pixels, image_grid_thw=dup_grid, use_cache=False).last_hidden_state
        pooled = hidden[torch.arange(2 * n), at]
        return heads[0](pooled[:n]), heads[1](pooled[n:])

    def bare_masked():
        return bare(mask)

    def official_loop():
        return [hand_reward(base, ckpt, s, (pixels, pixels))[0] for s in samples]

    bare(), bare_masked(), official_loop(), reward.score(samples)  # warm-up (loads the reference model once)
    rounds = ROUNDS if full else 1
    sides = (bare, bare_masked, official_loop, lambda: reward.score(samples))
    timings = [tuple(_timed(f) for f in sides) for _ in range(rounds)]
    t_bare, t_masked, t_loop, ours = (min(t[k] for t in timings) for k in range(4))
    out = benchmark.pedantic(reward.score, args=(samples,), rounds=rounds, iterations=1)

    assert all(out.applicable)
    ratio = ours / t_bare
    benchmark.extra_info.update({
        "pairs": n,
        "pixels_per_image": pixels,
        "tokens": int(mask.sum()),
        "bare_forward_s": t_bare,
        "bare_forward_with_padding_mask_s": t_masked,
        "per_pair_loop_s": t_loop,
        "reward_score_s": ours,
        "ratio": ratio,
        "speedup_vs_per_pair_loop": t_loop / ours,
    })
    assert math.isfinite(ratio) and math.isfinite(t_loop / ours)
