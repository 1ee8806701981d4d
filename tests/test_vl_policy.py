"""The PromptLoop VL refiner policy on the tiny Qwen2.5-VL: exact log-probs, M-RoPE, LoRA, parsing.

The checks that matter for GRPO: the recorded log-probs are exactly the train-time recompute (ratio == 1),
they equal an independent computation through the processor and the model's own forward (its own M-RoPE
positions and image scatter), greedy sampling with our KV cache reproduces ``generate``, and a row's
log-probs do not depend on its batch.
"""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from evalsuite import qwen_vl as qvl
from evalsuite.harness.config import DEFAULT_SYSTEM_PROMPT, LoraSettings, PolicyConfig
from evalsuite.harness.lora import language_lora_pattern
from evalsuite.harness.vl_policy import (
    DEFAULT_VL_SYSTEM_PROMPT,
    DEFAULT_VL_USER_TEMPLATE,
    VLRefinerPolicy,
    build_vl_policy,
    hf_model,
    resolve_vl_prompting,
    vl_policy_config,
)

MAX_PIXELS = 16 * 28 * 28  # at most 16 image tokens per row: fast, and different sizes differ in tokens
PROMPTS = ["a cat", "two dogs on a red sofa in the rain, seen from above", "a blue cube"]


def _images() -> list[Image.Image]:
    # Different sizes and modes -> 4, 10 and 12 image tokens after fitting (different prompt lengths).
    return [
        Image.new("RGB", (56, 56), (200, 30, 30)),
        Image.new("RGBA", (200, 100), (10, 200, 10, 128)),
        Image.linear_gradient("L").resize((90, 120)),  # mode "L"
    ]


def _config(tiny_dir, **kw) -> PolicyConfig:
    values = {
        "model": str(tiny_dir / "qwen2.5-vl"),
        "dtype": "float32",
        "max_new_tokens": 12,
        "temperature": 1.0,
        "lora": LoraSettings(r=4, alpha=8),
    }
    values.update(kw)
    return vl_policy_config(**values)


def _build(tiny_dir, **kw) -> VLRefinerPolicy:
    torch.set_num_threads(1)
    return build_vl_policy(_config(tiny_dir, **kw), "cpu", 0, max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def policy(tiny_dir) -> VLRefinerPolicy:
    """Shared, never modified, with a random ("trained") LoRA.

    The tiny model at init is almost uniform (log-probs within 6.2 ± 0.2), so wrong positions move a
    log-prob by only ~5e-5; a non-zero adapter makes them move it by ~0.1 while float noise stays ~1e-6,
    which is what lets the 1e-5 equalities below tell right from wrong.
    """
    policy = _build(tiny_dir)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return policy


def _real(row_ids: torch.Tensor, row_mask: torch.Tensor) -> list[int]:
    return row_ids[row_mask.bool()].tolist()


def _processor_inputs(policy: VLRefinerPolicy, prompt: str, image: Image.Image) -> dict:
    """The chat turn the way a user of the processor builds it: apply_chat_template + processor(...)."""
    proc = policy.processor
    task = {"type": "text", "text": policy.user_template.format(prompt=prompt)}
    messages = [
        {"role": "system", "content": policy.system_prompt},
        {"role": "user", "content": [{"type": "image"}, task]},
    ]
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    fitted = qvl.fit_image(image, policy.min_pixels, policy.max_pixels)
    return proc(text=[text], images=[fitted], return_tensors="pt")


def _independent_logprobs(
    policy: VLRefinerPolicy, prompt: str, image: Image.Image, completion: list[int]
) -> torch.Tensor:
    """log π of ``completion`` via the processor and a plain forward in which the model computes its own
    M-RoPE positions and image scatter."""
    inputs = _processor_inputs(policy, prompt, image)
    n_prompt = inputs["input_ids"].shape[1]
    comp = torch.tensor([completion])
    ids = torch.cat([inputs["input_ids"], comp], dim=1)
    mm = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(comp)], dim=1)
    with torch.no_grad():
        out = policy.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            mm_token_type_ids=mm,
        )
    logits = out.logits[0, n_prompt - 1 : -1].float() / policy.temperature
    return torch.log_softmax(logits, -1).gather(-1, comp[0].unsqueeze(-1)).squeeze(-1)


def test_prompting_defaults_and_lora_pattern() -> None:
    # A plain PolicyConfig carries the TEXT rewriter's instruction: the VL wording replaces it.
    assert resolve_vl_prompting(PolicyConfig()) == (DEFAULT_VL_SYSTEM_PROMPT, DEFAULT_VL_USER_TEMPLATE)
    own = PolicyConfig(system_prompt="S", user_template="Fix {prompt}")
    assert resolve_vl_prompting(own) == ("S", "Fix {prompt}")
    assert DEFAULT_SYSTEM_PROMPT != DEFAULT_VL_SYSTEM_PROMPT
    with pytest.raises(Exception, match="prompt"):
        resolve_vl_prompting(PolicyConfig(user_template="no placeholder"))
    pat = language_lora_pattern(["q_proj", "gate_proj"])
    assert re.fullmatch(pat, "model.language_model.layers.0.mlp.gate_proj")
    assert re.fullmatch(pat, "model.language_model.layers.1.self_attn.q_proj")
    assert not re.fullmatch(pat, "model.visual.blocks.0.mlp.gate_proj")
    assert not re.fullmatch(pat, "model.language_model.layers.0.self_attn.k_proj")
    assert not re.fullmatch(pat, "lm_head")
    assert re.fullmatch(language_lora_pattern(["q_proj", "lm_head"]), "lm_head")


def test_chat_prompt_shows_image_and_original_prompt(policy) -> None:
    enc = policy.encode(PROMPTS, _images())
    tok = policy.tokenizer
    image_id = hf_model(policy.model).config.image_token_id
    counts = (enc.input_ids == image_id).sum(1).tolist()
    assert counts == [4, 10, 12]  # different images -> different token counts
    assert enc.attention_mask[:, 0].tolist() != [1, 1, 1]  # left padding in play
    text = tok.decode(enc.input_ids[1][enc.attention_mask[1].bool()])
    assert PROMPTS[1] in text and "intermediate preview" in text and "<|vision_start|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_sample_record_recompute_ratio_is_one(policy) -> None:
    ro = policy.sample(PROMPTS, _images(), seed=3)
    assert len(ro) == 3 and ro.completion_ids.shape == ro.completion_mask.shape
    assert ro.position_ids.shape == (3, *ro.input_ids.shape)
    policy.record_logprobs(ro, micro_batch_size=2)
    policy.model.train()  # the trainer's recompute runs in train mode (dropout 0)
    new = policy.logprobs(ro)
    policy.model.eval()
    assert new.shape == ro.logp.shape and new.dtype == torch.float32 and new.requires_grad
    assert torch.isfinite(ro.logp).all()
    assert (new.detach() - ro.logp).exp().sub(1).abs().max() <= 1e-5
    # Micro-batches of a different split give the same numbers within float noise (batch invariance).
    for i in range(len(ro)):
        part = ro.rows(slice(i, i + 1))
        with torch.no_grad():
            alone = policy.logprobs(part)
        m = part.completion_mask.bool()
        assert torch.allclose(alone[m], ro.logp[i : i + 1][m], atol=1e-5, rtol=0)

    # Right padding: teacher-forced completions of different lengths (one ends early, one is long).
    comps = [_real(ro.completion_ids[0], ro.completion_mask[0])[:3], [], []]
    comps[1] = [*_real(ro.completion_ids[1], ro.completion_mask[1]), policy.end_ids[0]]
    comps[2] = [policy.end_ids[0]]
    tf = policy.teacher_forced_ids(PROMPTS, _images(), comps)
    assert tf.completion_mask.sum(1).tolist() == [len(c) for c in comps]
    assert tf.truncated.tolist() == [True, False, False]
    policy.record_logprobs(tf, micro_batch_size=3)
    with torch.no_grad():
        again = policy.logprobs(tf)
    assert (again - tf.logp).exp().sub(1).abs().max() <= 1e-5


def test_logprobs_equal_independent_forward(policy) -> None:
    ro = policy.sample(PROMPTS, _images(), seed=5)
    with torch.no_grad():
        lp = policy.logprobs(ro)
    for i, (prompt, image) in enumerate(zip(PROMPTS, _images())):
        m = ro.completion_mask[i].bool()
        ref = _independent_logprobs(policy, prompt, image, _real(ro.completion_ids[i], m))
        assert torch.allclose(lp[i][m], ref, atol=1e-5, rtol=0), (i, (lp[i][m] - ref).abs().max())
    # A row's log-probs do not depend on its batch: score row 2 alone (no left padding at all).
    comp = _real(ro.completion_ids[2], ro.completion_mask[2])
    alone = policy.teacher_forced_ids(PROMPTS[2:], _images()[2:], [comp])
    with torch.no_grad():
        lp_alone = policy.logprobs(alone)[0]
    assert torch.allclose(lp_alone, lp[2][ro.completion_mask[2].bool()], atol=1e-5, rtol=0)


def test_independent_check_can_fail(policy) -> None:
    """Positions without the M-RoPE shift (plain token index) give different log-probs: the checks above
    would catch a sampler or recompute that got the rope deltas wrong."""
    ro = policy.sample(PROMPTS, _images(), seed=1)
    m = ro.completion_mask.bool()
    with torch.no_grad():
        good = policy.logprobs(ro)
        ro.position_ids = (ro.attention_mask.cumsum(-1) - 1).clamp(min=0).unsqueeze(0).expand(3, -1, -1)
        bad = policy.logprobs(ro)
    for i in range(len(ro)):
        assert (good[i][m[i]] - bad[i][m[i]]).abs().max() > 1e-2


def test_greedy_kv_cache_sampler_matches_generate(policy) -> None:
    images = _images()
    ro = policy.sample(PROMPTS, images, seed=0, greedy=True)
    for i, (prompt, image) in enumerate(zip(PROMPTS, images)):
        inputs = _processor_inputs(policy, prompt, image)
        with torch.no_grad():
            out = hf_model(policy.model).generate(
                **inputs,
                do_sample=False,
                max_new_tokens=policy.config.max_new_tokens,
                repetition_penalty=1.0,
                top_k=None,
                top_p=None,
                temperature=None,
                eos_token_id=policy.end_ids,
                pad_token_id=policy.pad_id,
            )
        expected = out[0, inputs["input_ids"].shape[1] :].tolist()
        got = _real(ro.completion_ids[i], ro.completion_mask[i])
        assert got == expected[: len(got)] and len(got) == len([t for t in expected if t != policy.pad_id])


def test_seeded_sampling(policy) -> None:
    a = policy.sample(PROMPTS, _images(), seed=11)
    b = policy.sample(PROMPTS, _images(), seed=11)
    c = policy.sample(PROMPTS, _images(), seed=12)
    assert torch.equal(a.input_ids, b.input_ids) and a.texts == b.texts
    assert not torch.equal(a.input_ids, c.input_ids)
    ends = torch.isin(a.completion_ids, torch.tensor(policy.end_ids)) & a.completion_mask.bool()
    assert (ends.any(1) == ~a.truncated).all()  # truncated <=> no end token in the completion


def test_reference_lora_gradients_and_frozen_vision(tiny_dir) -> None:
    policy = _build(tiny_dir)
    model = policy.model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and "language_model" in n for n in names)
    visual = hf_model(model).model.visual
    assert not any(p.requires_grad for p in visual.parameters())
    assert not any("lora" in n for n, _ in visual.named_modules())

    ro = policy.sample(PROMPTS, _images(), seed=2)
    policy.record_logprobs(ro, micro_batch_size=3, reference=True)
    assert torch.equal(ro.ref_logp, ro.logp)  # LoRA B = 0 at init

    lp = policy.logprobs(ro)
    (lp * ro.completion_mask).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    assert all(p.grad is None for p in visual.parameters())

    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    policy.record_logprobs(ro, micro_batch_size=3, reference=True)
    m = ro.completion_mask.bool()
    assert (ro.logp[m] - ro.ref_logp[m]).abs().max() > 1e-3
    # Policy and reference both equal an independent forward: with the adapter on, and with it off.
    comp = _real(ro.completion_ids[0], m[0])
    with_lora = _independent_logprobs(policy, PROMPTS[0], _images()[0], comp)
    with model.disable_adapter():
        without_lora = _independent_logprobs(policy, PROMPTS[0], _images()[0], comp)
    assert torch.allclose(ro.logp[0][m[0]], with_lora, atol=1e-5, rtol=0)
    assert torch.allclose(ro.ref_logp[0][m[0]], without_lora, atol=1e-5, rtol=0)


def test_sampled_image_pad_token_in_completion_is_plain_text(policy) -> None:
    """A completion containing ``<|image_pad|>`` must not be taken for an image slot (no crash)."""
    image_id = hf_model(policy.model).config.image_token_id
    tf = policy.teacher_forced_ids(PROMPTS[:2], _images()[:2], [[image_id, 5, policy.end_ids[0]], [7]])
    policy.record_logprobs(tf, micro_batch_size=2)
    assert torch.isfinite(tf.logp).all()


def test_malformed_completions_parse_to_original(policy) -> None:
    completions = [
        "no tags at all",
        "<think>fine</think><answer>a red cat on a mat</answer>",
        "<answer>x</answer><think>y</think>",
    ]
    ro = policy.teacher_forced(PROMPTS, _images(), completions)
    parsed = policy.parse(ro)
    assert [p.rendered for p in parsed] == [PROMPTS[0], "a red cat on a mat", PROMPTS[2]]
    assert [p.well_formed for p in parsed] == [False, True, False]
    with pytest.raises(ValueError, match="one image per prompt"):
        policy.sample(PROMPTS, _images()[:2], seed=0)
