"""The rewriter policy: parsing rules, format/length rewards, normalization, exact log-probs, loading."""

from __future__ import annotations

import math

import pytest
import torch

from evalsuite.harness import grpo
from evalsuite.harness.completion_format import ParsedCompletion, parse_completion
from evalsuite.harness.config import PolicyConfig, RewardsConfig, RewardSpec
from evalsuite.harness.rewards import RewardSet, combine, format_reward, length_reward, normalize_component
from evalsuite.harness.rewriter import (
    build_policy,
    completion_logprobs,
    load_rewriter,
    save_rewriter,
)

ORIGINAL = "a photo of a cat"


# ------------------------------------------------------------------------------------------ parser


@pytest.mark.parametrize(
    ("text", "rewrite", "error"),
    [
        (
            "<think>one cat</think><answer>a fluffy cat on a red chair</answer>",
            "a fluffy cat on a red chair",
            None,
        ),
        ("\n<think>\nx\n</think>\n<answer>\n a  cat\n on  mat </answer>\n", "a cat on mat", None),
        ("<think></think><answer>a cat</answer>", "a cat", None),  # empty reasoning is allowed
        ("a cat on a mat", None, "missing <think> </think> <answer> </answer>"),
        ("<think>x</think> a cat", None, "missing <answer> </answer>"),
        ("<think>x</think><answer>a cat", None, "missing </answer>"),
        ("<think>x <think>y</think></think><answer>a</answer>", None, "duplicate or nested <think> </think>"),
        (
            "<think>x</think><answer>a <answer>b</answer></answer>",
            None,
            "duplicate or nested <answer> </answer>",
        ),
        (
            "<think>x</think><answer>a</answer><answer>b</answer>",
            None,
            "duplicate or nested <answer> </answer>",
        ),
        ("<think>x</think><answer>   </answer>", None, "empty answer"),
        ("Sure! <think>x</think><answer>a cat</answer>", None, "extra text before <think>"),
        ("<think>x</think><answer>a cat</answer> Hope this helps.", None, "extra text after </answer>"),
        ("<think>x</think> so: <answer>a cat</answer>", None, "extra text between </think> and <answer>"),
        ("<answer>a cat</answer><think>x</think>", None, "tags out of order"),
    ],
)
def test_parser_and_format_reward(text, rewrite, error):
    p = parse_completion(text, ORIGINAL)
    assert p.error == error
    assert p.rewrite == rewrite
    assert p.well_formed is (error is None)
    assert format_reward(p) == (1.0 if error is None else -1.0)
    # Malformed output falls back to the original prompt; well-formed renders the rewrite.
    assert p.rendered == (rewrite if error is None else ORIGINAL)


def test_parser_includes_the_prefilled_response_prefix():
    p = parse_completion(" two cats</think><answer>two cats on a sofa</answer>", ORIGINAL, prefix="<think>")
    assert p.well_formed and p.rewrite == "two cats on a sofa" and p.think == "two cats"
    assert p.text.startswith("<think>")
    assert not parse_completion("<think>x</think><answer>a</answer>", ORIGINAL, prefix="<think>").well_formed


def _rewrite_of(n_words: int) -> ParsedCompletion:
    return parse_completion(f"<think></think><answer>{' '.join(['cat'] * n_words)}</answer>", ORIGINAL)


@pytest.mark.parametrize(
    ("n", "expected"), [(1, -1.0), (14, -1.0), (15, 1.0), (40, 1.0), (77, 1.0), (78, -1.0)]
)
def test_length_reward_boundaries(n, expected):
    assert length_reward(_rewrite_of(n)) == expected


def test_length_reward_without_rewrite_is_zero_and_bounds_are_configurable():
    assert length_reward(parse_completion("no tags", ORIGINAL)) == 0.0
    assert length_reward(_rewrite_of(15), 16, 76) == -1.0  # RePrompt's code: 15 < n < 77
    assert length_reward(_rewrite_of(76), 16, 76) == 1.0


# ----------------------------------------------------------------------------------- normalization


def test_batch_standardization_by_hand():
    z = normalize_component(torch.tensor([3.0, 1.0, 1.0, 3.0]))  # mean 2, population std 1
    assert z.tolist() == [1.0, -1.0, -1.0, 1.0]
    z = normalize_component(torch.tensor([2.0, math.nan, 4.0]))  # NaN -> the mean -> 0
    assert z.tolist() == [-1.0, 0.0, 1.0]
    assert normalize_component(torch.tensor([5.0, 5.0])).tolist() == [0.0, 0.0]  # constant: no signal
    assert normalize_component(torch.tensor([math.nan, math.nan])).tolist() == [0.0, 0.0]
    assert normalize_component(torch.tensor([2.0, math.nan, 4.0]), "none").tolist() == [2.0, 3.0, 4.0]


def test_combine_weights_standardized_components():
    a = torch.tensor([3.0, 1.0, 1.0, 3.0])
    b = torch.tensor([0.0, 0.0, 0.0, 4.0])  # mean 1, std sqrt(3)
    total, normed = combine({"a": a, "b": b}, {"a": 2.0, "b": 0.5})
    r3 = math.sqrt(3.0)
    expected = [2 - 0.5 / r3, -2 - 0.5 / r3, -2 - 0.5 / r3, 2 + 1.5 / r3]
    assert total.tolist() == pytest.approx(expected, abs=1e-12)
    assert normed["b"].tolist() == pytest.approx([-1 / r3, -1 / r3, -1 / r3, 3 / r3], abs=1e-12)
    raw, _ = combine({"a": a}, {"a": 2.0}, "none")
    assert raw.tolist() == [6.0, 2.0, 2.0, 6.0]


def test_reward_set_builtins_score_the_parsed_completion():
    from evalsuite.sample import Sample

    rs = RewardSet(RewardsConfig(components=[RewardSpec("format"), RewardSpec("length", 2.0)]))
    parsed = [_rewrite_of(20), _rewrite_of(3), parse_completion("junk", ORIGINAL)]
    samples = [Sample(id=str(i), prompt=ORIGINAL, rendered_prompt=p.rendered) for i, p in enumerate(parsed)]
    raw, _ = rs.raw(samples, parsed)
    assert raw["format"].tolist() == [1.0, 1.0, -1.0]
    assert raw["length"].tolist() == [1.0, -1.0, 0.0]
    assert not rs.needs_image and rs.weights == {"format": 1.0, "length": 2.0}


# ------------------------------------------------------------------------------------------ policy


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    from evalsuite.tiny import write_tiny

    out = tmp_path_factory.mktemp("tiny-lm")
    return write_tiny(out, names=["qwen2-lm"], seed=0)["qwen2-lm"]


def _config(lm_dir, **kw) -> PolicyConfig:
    base = dict(
        model=str(lm_dir),
        dtype="float32",
        system_prompt="Rewrite the prompt.",
        max_new_tokens=12,
        temperature=1.0,
    )
    return PolicyConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def policy(lm_dir):
    torch.set_num_threads(1)
    return build_policy(_config(lm_dir), seed=0)


PROMPTS = ["a photo of a cat", "two dogs playing in the green grass under a blue sky"]  # different lengths


def test_chat_prompt_uses_the_template_and_prefix(lm_dir):
    pol = build_policy(_config(lm_dir, response_prefix="<think>"), lora=False)
    text = pol.chat_text("a cat")
    assert text.startswith("<|im_start|>system\nRewrite the prompt.<|im_end|>")
    assert "<|im_start|>user\na cat<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n<think>")


def test_sampling_is_seeded_and_grouped(policy):
    a = policy.sample(PROMPTS, 3, seed=7)
    b = policy.sample(PROMPTS, 3, seed=7)
    c = policy.sample(PROMPTS, 3, seed=8)
    assert torch.equal(a.input_ids, b.input_ids) and a.texts == b.texts
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.prompts == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    ends = torch.isin(a.completion_ids, torch.tensor(policy.end_ids))
    for row, m, trunc in zip(ends, a.completion_mask, a.truncated):
        # the mask covers the tokens up to and including the first end token, nothing after it
        n = int(m.sum())
        assert bool(m[:n].all()) and not bool(m[n:].any())
        assert bool(trunc) == (not bool(row[:n].any()))


def test_recorded_logprobs_equal_the_train_time_recompute(policy):
    """The on-policy invariant: same function, same padded micro-batches, eval mode -> identical numbers."""
    ro = policy.sample(PROMPTS, 4, seed=1)
    policy.record_logprobs(ro, micro_batch_size=4, reference=True)
    policy.model.eval()
    for start in (0, 4):
        part = ro.rows(slice(start, start + 4))
        new = policy.logprobs(part)  # grad enabled, as in the update
        assert new.requires_grad
        assert torch.equal(new.detach(), part.logp)
        grpo.ratio_self_test(new, part.logp, part.completion_mask, tol=0.0)
    # A fresh LoRA (B = 0) is the reference exactly.
    assert torch.equal(ro.ref_logp, ro.logp)
    # A different temperature at recompute breaks the ratio, and the self-test says so.
    part = ro.rows(slice(0, 4))
    with pytest.raises(grpo.OnPolicyError, match="self-test failed"):
        grpo.ratio_self_test(policy.logprobs(part, temperature=1.5), part.logp, part.completion_mask)


@pytest.fixture(scope="module")
def trained(lm_dir):
    """A policy whose LoRA is not the identity (B != 0), so that adapter on and off differ."""
    pol = build_policy(_config(lm_dir), seed=0)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    pol.model.eval()
    return pol


def test_sampler_logprobs_match_the_train_time_forward(trained):
    """``sample`` records log π from the logits each token was drawn from: no extra forward. The KV-cache
    sampler and the one-pass train-time forward agree to float rounding (we measured <= 1.5e-6 in fp32 on
    the tiny and a 24M-parameter model; 2e-3 to 1.6e-2 in bf16, hence logprobs_from=auto)."""
    ro = trained.sample(PROMPTS, 4, seed=3)
    assert ro.sampler_logp is not None and ro.logp is ro.sampler_logp
    assert ro.sampler_logp.dtype == torch.float32 and ro.sampler_logp.shape == ro.completion_ids.shape
    m = ro.completion_mask.bool()
    assert (ro.sampler_logp[~m] == 0).all() and (ro.sampler_logp[m] < 0).all()
    recompute = trained.logprobs(ro)
    worst = float((recompute.detach() - ro.sampler_logp).abs()[m].max())
    assert 0 <= worst <= 1e-5, worst
    grpo.ratio_self_test(recompute, ro.logp, ro.completion_mask, tol=1e-5)
    with pytest.raises(grpo.OnPolicyError):  # and it is a real test: a temperature change breaks it
        grpo.ratio_self_test(trained.logprobs(ro, temperature=1.3), ro.logp, ro.completion_mask, tol=1e-5)
    # record_logprobs replaces logp with the train-time forward's values and keeps the sampler's
    trained.record_logprobs(ro, micro_batch_size=4)
    assert ro.logp is not ro.sampler_logp and torch.equal(
        ro.rows(slice(0, 4)).sampler_logp, ro.sampler_logp[:4]
    )
    greedy = trained.sample(PROMPTS, 1, seed=0, greedy=True)  # T = 0: log-softmax of the raw logits
    with torch.no_grad():
        full = completion_logprobs(
            trained.model, greedy.input_ids, greedy.attention_mask, greedy.prompt_len, 0.0
        )
    gm = greedy.completion_mask.bool()
    assert float((full - greedy.sampler_logp).abs()[gm].max()) <= 1e-5


def test_lean_lora_forwards_are_bit_identical_to_peft(trained):
    """The sampler and the reference run PEFT's LoRA linears as plain ops: same bits, state restored."""
    from evalsuite.harness.lora import lean_lora, reference_policy

    ids, mask = trained.encode_prompts(PROMPTS)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    model = trained.model
    with torch.no_grad():
        peft_out = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        with model.disable_adapter():
            peft_ref = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        with lean_lora(model) as complete:
            assert complete
            lean_out = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        with reference_policy(model):
            lean_ref = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert torch.equal(lean_out, peft_out) and torch.equal(lean_ref, peft_ref)
    assert not torch.equal(peft_out, peft_ref)  # the adapter matters
    assert not any("forward" in vars(m) for m in model.modules())  # every patch removed
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert not any(m.disable_adapters for m in model.modules() if isinstance(m, BaseTunerLayer))
    # A sampled rollout is the same with PEFT's own forwards.
    with torch.no_grad():
        lean = trained.sample(PROMPTS, 2, seed=5)
    import evalsuite.harness.lora as lora
    original = lora._lean_forward
    try:
        lora._lean_forward = lambda module, adapter: None  # nothing patched: PEFT's forward everywhere
        plain = trained.sample(PROMPTS, 2, seed=5)
    finally:
        lora._lean_forward = original
    assert torch.equal(lean.input_ids, plain.input_ids) and torch.equal(lean.sampler_logp, plain.sampler_logp)


def test_reference_needs_a_peft_model(lm_dir):
    from evalsuite.errors import ConfigError
    from evalsuite.harness.lora import reference_policy

    plain = build_policy(_config(lm_dir), lora=False)
    with pytest.raises(ConfigError, match="needs a PEFT model"), reference_policy(plain.model):
        pass


def test_shared_prompt_forward_equals_the_one_pass_forward(trained):
    """Rows of one group share their prompt: it runs once and its KV cache is indexed out to the group.
    Log-probs agree with the one-pass forward to float rounding, gradients too; train mode and batches
    without repeated prompts take the one-pass forward."""
    ro = trained.sample(PROMPTS, 3, seed=2)
    params = [p for p in trained.model.parameters() if p.requires_grad]
    m = ro.completion_mask

    def run(share: bool):
        logp = completion_logprobs(
            trained.model, ro.input_ids, ro.attention_mask, ro.prompt_len, 1.0, share_prompts=share
        )
        grads = torch.autograd.grad((logp * m).sum(), params)
        return logp.detach(), torch.cat([g.flatten() for g in grads])

    calls = []
    hook = trained.model.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append(kwargs), with_kwargs=True
    )
    try:
        one, g_one = run(False)
        assert [c["input_ids"].shape[0] for c in calls] == [6]  # one pass over the whole rows
        calls.clear()
        shared, g_shared = run(True)
        assert [c["input_ids"].shape[0] for c in calls] == [2, 6]  # a different computation...
        calls.clear()
        assert float((one - shared).abs()[m.bool()].max()) <= 1e-5  # ...of the same numbers
        assert float((g_one - g_shared).abs().max()) <= 1e-5 * float(g_one.abs().max())
        completion_logprobs(trained.model, ro.input_ids, ro.attention_mask, ro.prompt_len, 1.0)
        assert [c["input_ids"].shape[0] for c in calls] == [2, 6]  # 2 distinct prompts, then 6 completions
        calls.clear()
        single = ro.rows(slice(0, 6, 3))  # one row per prompt: nothing to share
        completion_logprobs(trained.model, single.input_ids, single.attention_mask, single.prompt_len, 1.0)
        assert len(calls) == 1
        calls.clear()
        trained.model.train()
        completion_logprobs(trained.model, ro.input_ids, ro.attention_mask, ro.prompt_len, 1.0)
        assert len(calls) == 1  # train mode (dropout, gradient checkpointing) runs the one-pass forward
    finally:
        trained.model.eval()
        hook.remove()


def test_draw_follows_the_probabilities_and_never_picks_a_zero():
    from evalsuite.harness.token_draw import draw_tokens as _draw

    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(1, 40, generator=gen) * 2, -1)
    probs[0, [0, 7, 39]] = 0.0
    probs = probs / probs.sum()
    n = 200_000
    counts = torch.bincount(_draw(probs.expand(n, -1), gen), minlength=40).double()
    p = probs[0].double()
    assert counts[p == 0].sum() == 0
    z = (counts / n - p).abs() / (p * (1 - p) / n).sqrt()
    assert float(z[p > 0].max()) < 4.5  # 37 cells: a 4.5-sigma cell has probability ~2.5e-4
    one_hot = torch.zeros(3, 10)
    one_hot[:, [0, 4, 9]] = torch.eye(3)
    assert _draw(one_hot, gen).tolist() == [0, 4, 9]


def test_greedy_tokens_are_the_argmax_of_the_full_forward(policy):
    """Incremental sampling (KV cache, left padding, position ids) agrees with the one-pass forward."""
    ro = policy.sample(PROMPTS, 1, seed=0, greedy=True)
    with torch.no_grad():
        out = policy.model(
            input_ids=ro.input_ids,
            attention_mask=ro.attention_mask,
            position_ids=(ro.attention_mask.cumsum(-1) - 1).clamp(min=0),
        )
    pred = out.logits[:, ro.prompt_len - 1 : -1].argmax(-1)
    m = ro.completion_mask.bool()
    assert torch.equal(pred[m], ro.completion_ids[m])


def test_teacher_forced_rollout_masks_the_completion_and_end_token(policy):
    ro = policy.teacher_forced(["a cat"], ["<think></think><answer>a red cat</answer>"])
    ids = ro.completion_ids[0][ro.completion_mask[0].bool()].tolist()
    assert ids[-1] == policy.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert policy.tokenizer.decode(ids[:-1]) == "<think></think><answer>a red cat</answer>"


def test_load_rewriter_from_saved_adapter_and_from_plain_model(policy, lm_dir, tmp_path):
    save_rewriter(tmp_path / "rw", policy, step=3)
    rewriter = load_rewriter(tmp_path / "rw")
    out = rewriter.rewrite(PROMPTS, seed=0)
    assert out == rewriter.rewrite(PROMPTS, seed=0)  # greedy: deterministic
    detailed = rewriter.rewrite_detailed(PROMPTS)
    assert out == [p.rendered for p in detailed]
    assert all(p.rendered == o for p, o in zip(detailed, PROMPTS) if not p.well_formed)  # fallback
    # The saved adapter gives the same greedy completions as the in-memory policy.
    policy.model.eval()
    same = policy.parse(policy.sample(PROMPTS, 1, 0, greedy=True))
    assert [p.text for p in detailed] == [p.text for p in same]
    baseline = load_rewriter(lm_dir, max_new_tokens=8)
    assert len(baseline.rewrite(PROMPTS)) == 2 and baseline.describe()["base_model"] == str(lm_dir)
