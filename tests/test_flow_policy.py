"""FLUX / Kontext flow policies on tiny checkpoints: pipeline parity, ratio == 1 at every step, KL, sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.harness.flow_config import FlowLoraSettings, FlowPolicyConfig
from evalsuite.harness.flow_policy import FlowPolicy, choose_sde_steps, choose_train_steps

TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "proj_mlp", "proj_out", "ff.net.2"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _config(model, **changes) -> FlowPolicyConfig:
    base = dict(
        model=str(model),
        dtype="float32",
        height=32,
        width=32,
        num_steps=4,
        max_sequence_length=16,
        lora=FlowLoraSettings(r=4, alpha=4, target_modules=TARGETS),
    )
    base.update(changes)
    return FlowPolicyConfig(**base)


@pytest.fixture(scope="module")
def flux(tiny_dir):
    return FlowPolicy.from_pretrained(_config(tiny_dir / "flux"), seed=0)


@pytest.fixture(scope="module")
def kontext(tiny_dir):
    return FlowPolicy.from_pretrained(_config(tiny_dir / "flux-kontext", guidance_scale=2.5), seed=0)


def _source(seed: int, size=(40, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_ode_sampling_equals_the_diffusers_pipeline(flux):
    prompts, seeds = ["a red cube", "a dog on grass"], [3, 4]
    cond, h, w = flux.encode(prompts)
    traj = flux.sample(cond, seeds, height=h, width=w, sde_steps=[], decode=False)
    ref = flux.pipeline(
        prompt=prompts,
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=3.5,
        max_sequence_length=16,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="latent",
    ).images
    torch.testing.assert_close(traj.latents[:, -1], ref.float(), rtol=0, atol=1e-6)
    assert torch.isnan(traj.log_probs).all()


def test_kontext_ode_sampling_equals_the_diffusers_pipeline(kontext):
    src = _source(0, (32, 32))
    cond, h, w = kontext.encode(["make it red"], [src])
    traj = kontext.sample(cond, [5], height=h, width=w, sde_steps=[], decode=False)
    ref = kontext.pipeline(
        image=src,
        prompt="make it red",
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=2.5,
        max_sequence_length=16,
        generator=torch.Generator().manual_seed(5),
        output_type="latent",
        max_area=32 * 32,
        _auto_resize=False,
    ).images
    torch.testing.assert_close(traj.latents[:, -1], ref.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("which", ["flux", "kontext"])
@pytest.mark.parametrize("sde_type", ["sde", "cps"])
def test_recorded_log_probs_equal_the_recompute_at_every_step(which, sde_type, request):
    policy = request.getfixturevalue(which)
    policy.config.sde_type = sde_type
    try:
        sources = [_source(1), _source(2)] if policy.is_edit else None
        cond, h, w = policy.encode(["a cat", "two dogs"], sources)
        traj = policy.sample(cond, [1, 2], [7, 8], height=h, width=w, batch_size=1)
        steps = traj.sde_steps
        assert steps == ([0, 1, 2, 3] if sde_type == "sde" else [0, 1, 2])  # cps: the last step is Euler
        rows = torch.arange(2).repeat_interleave(len(steps))
        cols = torch.tensor(steps).repeat(2)
        out = policy.step_log_prob(policy.transformer, traj, rows, cols)  # another batch composition
        recorded = traj.log_probs[rows, cols]
        assert torch.isfinite(recorded).all()
        torch.testing.assert_close(out.log_prob.detach(), recorded, rtol=0, atol=1e-5)
        # the recomputed x' is the recorded one: the sampler really drew from that Gaussian
        noise = (traj.latents[rows, cols + 1] - out.mean.detach()) / out.std
        assert 0.8 < float(noise.std()) < 1.2
    finally:
        policy.config.sde_type = "sde"


def test_same_seed_same_trajectory_and_rows_do_not_depend_on_the_batch(flux):
    cond, h, w = flux.encode(["a cat", "a cat", "a dog"])
    a = flux.sample(cond, [1, 1, 2], [5, 6, 7], height=h, width=w, decode=False)
    b = flux.sample(cond.rows([2]), [2], [7], height=h, width=w, decode=False)
    torch.testing.assert_close(a.latents[2], b.latents[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(a.latents[0, 0], a.latents[1, 0])  # same initial noise (same seed)
    assert not torch.allclose(a.latents[0, -1], a.latents[1, -1])  # different SDE noise


def test_cfg_path_for_a_model_without_guidance_embedding(tiny_dir, tmp_path):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    pipe = FluxPipeline.from_pretrained(tiny_dir / "flux")
    t = pipe.transformer
    cfg = dict(t.config)
    cfg["guidance_embeds"] = False
    torch.manual_seed(0)
    pipe.transformer = FluxTransformer2DModel.from_config(cfg)
    pipe.save_pretrained(tmp_path / "flux-cfg")
    policy = FlowPolicy.from_pretrained(_config(tmp_path / "flux-cfg", guidance_scale=4.0), seed=0)
    assert not policy.distilled
    cond, h, w = policy.encode(["a cat"])
    assert cond.guidance is None and cond.negative_embeds is not None
    # v = v_neg + s (v_pos − v_neg), from two separate forwards
    x = policy.initial_noise([1], h, w)
    sigma = torch.tensor([0.7])
    v = policy.velocity(policy.transformer, x, sigma, cond)
    plain = cond.rows([0])
    plain.negative_embeds = None
    v_pos = policy.velocity(policy.transformer, x, sigma, plain)
    neg = cond.rows([0])
    neg.prompt_embeds, neg.pooled, neg.negative_embeds = cond.negative_embeds, cond.negative_pooled, None
    v_neg = policy.velocity(policy.transformer, x, sigma, neg)
    torch.testing.assert_close(v, v_neg + 4.0 * (v_pos - v_neg), rtol=1e-5, atol=1e-5)
    traj = policy.sample(cond, [1], height=h, width=w, decode=False)
    out = policy.step_log_prob(policy.transformer, traj, torch.tensor([0]), torch.tensor([2]))
    torch.testing.assert_close(out.log_prob, traj.log_probs[[0], [2]], rtol=0, atol=1e-5)


def test_kontext_keeps_the_source_size_and_never_upsizes(tiny_dir):
    policy = FlowPolicy.from_pretrained(
        _config(tiny_dir / "flux-kontext", height=None, width=None, max_area=48 * 40), lora=False
    )
    assert policy.output_size(_source(0, (40, 48))) == (48, 32)  # multiples of 16, never larger
    big = _source(0, (400, 300))
    h, w = policy.output_size(big)
    assert h * w <= 48 * 40 and h <= 300 and w <= 400
    cond, h, w = policy.encode(["make it blue"], [_source(0, (40, 48))])
    traj = policy.sample(cond, [0], height=h, width=w)
    assert traj.images[0].size == (32, 48)
    with pytest.raises(ConfigError, match="source image"):
        policy.encode(["no source"])
    with pytest.raises(ConfigError, match=r"source images \[1\]"):  # would upsize the smaller one
        policy.encode(["a", "b"], [_source(0, (40, 48)), _source(1, (16, 16))])


def test_sde_window_and_timestep_fraction():
    cfg = FlowPolicyConfig(num_steps=10, sde_window_size=2, sde_window_range=[0, 4])
    starts = {choose_sde_steps(cfg, np.random.default_rng(s))[0] for s in range(50)}
    assert starts == {0, 1, 2, 3, 4}
    assert choose_sde_steps(FlowPolicyConfig(num_steps=3), np.random.default_rng(0)) == [0, 1, 2]
    picked = choose_train_steps([2, 3, 4, 5], 3, 0.5, np.random.default_rng(0))
    assert all(len(p) == 2 and set(p) <= {2, 3, 4, 5} for p in picked)


def test_prompt_refinement_changes_the_conditioning_mid_trajectory(flux):
    cond, h, w = flux.encode(["a cat", "a dog"])
    seen = []

    def refine(req):
        seen.append((req.step, len(req.previews), req.rows))
        return ["a bright yellow sun", "a blue sea"]

    plain = flux.sample(cond, [1, 2], height=h, width=w, sde_steps=[], decode=False)
    refined = flux.sample(
        cond, [1, 2], height=h, width=w, sde_steps=[], refine=refine, refine_steps=[1], decode=False
    )
    assert seen == [(1, 2, [0, 1])]
    assert refined.actions == [{"step": 1, "rows": [0, 1], "prompts": ["a bright yellow sun", "a blue sea"]}]
    torch.testing.assert_close(refined.latents[:, :3], plain.latents[:, :3])  # steps 0..1 unchanged
    assert not torch.allclose(refined.latents[:, 3], plain.latents[:, 3])  # step 2 sees the new prompt


def test_lora_round_trip_in_diffusers_format(flux, tmp_path):
    params = flux.trainable_parameters()
    with torch.no_grad():
        for p in params:
            p.add_(0.01)
    flux.save_lora(str(tmp_path / "lora"))
    before = {k: v.clone() for k, v in flux.lora_state_dict().items()}
    with torch.no_grad():
        for p in params:
            p.zero_()
    flux.load_lora(str(tmp_path / "lora"))
    after = flux.lora_state_dict()
    assert before.keys() == after.keys()
    for k in before:
        torch.testing.assert_close(before[k], after[k])
    with torch.no_grad():  # restore the shared module-scoped policy to B = 0 for other tests
        for n, p in flux.transformer.named_parameters():
            if "lora_B" in n:
                p.zero_()


def test_gradient_checkpointing_gives_the_same_log_probs_and_gradients(tiny_dir):
    plain = FlowPolicy.from_pretrained(_config(tiny_dir / "flux"), seed=3)
    ckpt = FlowPolicy.from_pretrained(_config(tiny_dir / "flux", gradient_checkpointing=True), seed=3)
    assert ckpt.transformer.is_gradient_checkpointing
    grads = []
    for policy in (plain, ckpt):
        with torch.no_grad():
            for n, p in policy.transformer.named_parameters():
                if "lora_B" in n:
                    p.fill_(0.01)
        cond, h, w = policy.encode(["a cat"])
        traj = policy.sample(cond, [1], height=h, width=w, decode=False)
        policy.transformer.train()  # checkpointing is active in train mode only
        out = policy.step_log_prob(policy.transformer, traj, torch.tensor([0, 0]), torch.tensor([0, 2]))
        policy.transformer.eval()
        torch.testing.assert_close(out.log_prob.detach(), traj.log_probs[[0, 0], [0, 2]], rtol=0, atol=1e-5)
        out.log_prob.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.trainable_parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_loading_passes_the_dtype_argument_diffusers_wants(tiny_dir):
    """diffusers >= 0.40 deprecates ``torch_dtype``: training runs must not print that warning (-q promises
    warnings only, and this one is ours to avoid)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FlowPolicy.from_pretrained(_config(tiny_dir / "flux"), seed=0)
    assert not [str(w.message) for w in caught if "torch_dtype" in str(w.message)]
