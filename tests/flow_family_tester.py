"""One conformance tester for every flow-model family (like reward_tester.py for rewards).

Each family contributes a ``FamilyCase``: a tiny checkpoint and the settings its diffusers pipeline needs.
``test_flow_families.py`` runs every check below on every case; a new family is done when it passes them:

- with the noise level at 0 our sampler equals the family's diffusers pipeline, latent for latent;
- the train-time recompute equals the recorded log-probs (ratio == 1), for both SDE kinds;
- a row's trajectory does not depend on the batch it was sampled in;
- the reference policy is the adapter-disabled transformer (KL 0 at the start, > 0 after an update);
- a LoRA saved by the policy loads in ``DiffusersGenerator`` (``evalsuite run --lora``) and renders what the
  policy renders;
- on tiny weights a brightness reward rises well beyond step 1's spread, while lr 0 stays flat.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from evalsuite.harness.flow_config import FlowLoraSettings, FlowPolicyConfig, FlowTrainConfig
from evalsuite.harness.flow_policy import FlowPolicy
from evalsuite.harness.grpo import kl_gaussian

PROMPTS = ["a red cube", "two dogs on grass", "a cat"]


@dataclass
class FamilyCase:
    """A family under test: its tiny checkpoint, policy settings and what its pipeline call needs."""

    name: str
    model: Path
    settings: dict[str, Any] = field(default_factory=dict)  # FlowPolicyConfig fields
    sources: Callable[[int], list[Image.Image]] | None = None  # editing models: n source images
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments of the pipeline call

    def config(self, **changes: Any) -> FlowPolicyConfig:
        base: dict[str, Any] = dict(
            model=str(self.model),
            dtype="float32",
            height=32,
            width=32,
            num_steps=4,
            max_sequence_length=16,
            lora=FlowLoraSettings(r=4, alpha=8),  # alpha != r: a loader that drops alpha renders wrong
        )
        base.update(self.settings)
        base.update(changes)
        return FlowPolicyConfig(**base)

    def policy(self, seed: int = 0, **changes: Any) -> FlowPolicy:
        return FlowPolicy.from_pretrained(self.config(**changes), seed=seed)

    def encode(self, policy: FlowPolicy, prompts: list[str]):
        sources = self.sources(len(prompts)) if self.sources is not None else None
        return policy.encode(prompts, sources), sources


def _perturb_lora(policy: FlowPolicy, seed: int, scale: float = 0.05) -> None:
    """Give every LoRA B a seeded non-zero value, so the adapter changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def check_noise0_parity(case: FamilyCase, policy: FlowPolicy) -> None:
    prompts, seeds = PROMPTS[:2], [3, 4]
    (cond, h, w), sources = case.encode(policy, prompts)
    traj = policy.sample(cond, seeds, height=h, width=w, noise_level=0.0, decode=False)
    assert traj.sde_steps == list(range(policy.config.num_steps))  # every step is an SDE step, with a = 0
    call = dict(
        prompt=prompts,
        negative_prompt=[policy.config.negative_prompt] * len(prompts),  # used by CFG families only
        height=h,
        width=w,
        num_inference_steps=policy.config.num_steps,
        guidance_scale=policy.config.guidance_scale,
        max_sequence_length=policy.config.max_sequence_length,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="latent",
        **case.pipeline_kwargs,
    )
    if sources is not None:
        call["image"] = sources
    ref = policy.pipeline(**call).images
    assert traj.latents[:, -1].shape == ref.shape, case.name
    torch.testing.assert_close(traj.latents[:, -1], ref.float(), rtol=0, atol=1e-6)


def check_recompute_equals_record(case: FamilyCase, policy: FlowPolicy, sde_type: str) -> None:
    policy.config.sde_type = sde_type
    try:
        (cond, h, w), _ = case.encode(policy, PROMPTS[:2])
        traj = policy.sample(cond, [1, 2], [7, 8], height=h, width=w, batch_size=1, decode=False)
        steps = traj.sde_steps
        n = policy.config.num_steps
        assert steps == (list(range(n)) if sde_type == "sde" else list(range(n - 1)))  # cps: last is Euler
        rows = torch.arange(2).repeat_interleave(len(steps))
        cols = torch.tensor(steps).repeat(2)
        out = policy.step_log_prob(policy.transformer, traj, rows, cols)  # another batch composition
        recorded = traj.log_probs[rows, cols]
        assert torch.isfinite(recorded).all()
        torch.testing.assert_close(out.log_prob.detach(), recorded, rtol=0, atol=1e-5)
        noise = (traj.latents[rows, cols + 1] - out.mean.detach()) / out.std  # the sampler's own draws
        assert 0.7 < float(noise.std()) < 1.3
    finally:
        policy.config.sde_type = "sde"


def check_batch_invariance(case: FamilyCase, policy: FlowPolicy) -> None:
    (cond, h, w), _ = case.encode(policy, PROMPTS)
    together = policy.sample(cond, [1, 2, 3], [5, 6, 7], height=h, width=w, decode=False)
    alone = policy.sample(cond.rows([2]), [3], [7], height=h, width=w, decode=False)
    torch.testing.assert_close(together.latents[2], alone.latents[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(together.log_probs[2], alone.log_probs[0], rtol=0, atol=1e-5)
    assert not torch.allclose(together.latents[0, -1], together.latents[1, -1])


def check_reference_is_adapter_disabled(case: FamilyCase) -> None:
    policy = case.policy(seed=1)
    (cond, h, w), _ = case.encode(policy, PROMPTS[:2])
    traj = policy.sample(cond, [1, 2], height=h, width=w, decode=False)
    rows, steps = torch.tensor([0, 1, 0]), torch.tensor([0, 1, 3])

    def kl() -> torch.Tensor:
        out = policy.step_log_prob(policy.transformer, traj, rows, steps)
        with torch.no_grad(), policy.adapter_disabled():
            ref = policy.step_log_prob(policy.transformer, traj, rows, steps)
        return kl_gaussian(out.mean, ref.mean, out.std)

    assert float(kl().detach().abs().max()) == 0.0  # LoRA B starts at zero
    params = policy.trainable_parameters()
    assert params and all(p.dtype == torch.float32 for p in params)
    loss = -policy.step_log_prob(policy.transformer, traj, rows, steps).log_prob.sum()
    loss.backward()
    assert all(p.grad is not None for p in params)
    torch.optim.SGD(params, lr=1.0).step()
    assert (kl() > 0).all()
    assert policy.transformer.active_adapters()  # the context restored the adapter


def check_lora_renders_in_the_generator(case: FamilyCase, folder: Path) -> None:
    from evalsuite.generator import DiffusersGenerator, GenerationRequest

    policy = case.policy(seed=2)
    _perturb_lora(policy, seed=0)
    policy.save_lora(str(folder))
    (cond, h, w), sources = case.encode(policy, PROMPTS[:2])
    seeds = [11, 12]
    ours = policy.sample(cond, seeds, height=h, width=w, sde_steps=[]).images
    c = policy.config
    settings = dict(
        dtype="float32",
        num_inference_steps=c.num_steps,
        guidance_scale=c.guidance_scale,
        height=h,
        width=w,
        negative_prompt=c.negative_prompt,
        call_kwargs={"max_sequence_length": c.max_sequence_length},
    )
    requests = [
        GenerationRequest(p, s, source_image=sources[i] if sources else None)
        for i, (p, s) in enumerate(zip(PROMPTS[:2], seeds))
    ]
    with_lora = DiffusersGenerator.from_pretrained(str(case.model), lora=str(folder), **settings)
    theirs = with_lora.generate(requests)
    base = DiffusersGenerator.from_pretrained(str(case.model), **settings).generate(requests[:1])
    for a, b in zip(ours, theirs):
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        assert diff.max() <= 1, f"{case.name}: the generator with the saved LoRA renders differently"
    base_diff = np.abs(np.asarray(base[0], dtype=np.int16) - np.asarray(theirs[0], dtype=np.int16))
    assert base_diff.max() > 8, f"{case.name}: the LoRA does not change the render (test proves nothing)"


def prompt_data(
    prompts: list[str], out_dir: Path, sources: Callable[[int], list[Image.Image]] | None = None
) -> Any:
    """A DataConfig of the prompts as given, or (``sources``: an editing family) of a JSONL in ``out_dir``
    pairing each prompt with one source image."""
    import json

    from evalsuite.harness.config import DataConfig

    if sources is None:
        return DataConfig(prompts=prompts)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (prompt, source) in enumerate(zip(prompts, sources(len(prompts)))):
        source.save(out_dir / f"source{i}.png")
        rows.append(json.dumps({"prompt": prompt, "source_image": f"source{i}.png"}))
    (out_dir / "edits.jsonl").write_text("\n".join(rows) + "\n")
    return DataConfig(path=str(out_dir / "edits.jsonl"))


def check_learns_a_simple_reward(
    case: FamilyCase, out_dir: Path, targets: list[str] | None = None, lr: float = 5e-2, steps: int = 30
) -> None:
    """Flow-GRPO on a brightness reward: the reward rises well beyond step 1's spread; lr 0 stays flat.
    ``targets``: LoRA targets (default: the family's). Editing families train on the case's sources."""
    from evalsuite.harness import flow_train
    from evalsuite.harness.config import GRPOSettings, OptimConfig, RewardsConfig, RewardSpec

    config = FlowTrainConfig(
        mode="flow",
        out_dir=str(out_dir / "lr"),
        steps=steps,
        save_every=1000,
        tensorboard=False,
        progress=False,
        torch_threads=1,
        log_images_every=1000,
        flow=replace(case.config(noise_level=0.9, sample_batch_size=16, train_batch_size=16),
                     lora=FlowLoraSettings(r=8, alpha=8, target_modules=targets)),
        rewards=RewardsConfig(components=[RewardSpec("brightness")], normalize="none"),
        data=prompt_data(["a cat", "a dog", "a red car", "a tree"], out_dir, case.sources),
        grpo=GRPOSettings(group_size=8, prompts_per_step=2, beta=0.0, clip_eps=0.2, micro_batch_size=8),
        optim=OptimConfig(lr=lr),
    )

    def rise(metrics: list[dict]) -> tuple[float, float]:
        last = float(np.mean([m["reward/mean"] for m in metrics[-5:]]))
        return last - metrics[0]["reward/mean"], metrics[0]["reward/std"]

    learned = flow_train.train(config)
    up, spread = rise(learned.metrics)
    assert up > 5 * spread, (case.name, up, spread)
    assert all(m["selftest/max_abs_logp_diff"] < 1e-5 for m in learned.metrics)
    frozen = flow_train.train(replace(config, out_dir=str(out_dir / "lr0"), optim=OptimConfig(lr=0.0)))
    flat, spread0 = rise(frozen.metrics)
    assert abs(flat) < 2 * spread0, (case.name, flat, spread0)
