"""Flow-GRPO training step vs its bare compute (goal <= 1.15x).

The harness side is a whole ``evalsuite.harness.flow_train`` step: prompt encoding, SDE sampling with recorded
log-probs, VAE decode, the reward, advantages, the clipped-surrogate update over every (image, SDE step)
pair, logging.
The bare side is the transformer work that step cannot avoid, written without the harness: the same number of
forwards for sampling (no grad, Euler) and forward+backward for training on the same batches, plus the
optimizer step, on the same LoRA transformer and conditioning. beta = 0 on both sides (a KL adds one reference
forward per trained pair to both alike). The transformer is widened (256 wide, 2 double + 4 single blocks,
128 px -> 64 image tokens) so that it, not Python, dominates, as FLUX's 12B transformer does on a GPU; ratios,
not absolute CPU times, are the point.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import pytest
import torch

from evalsuite.harness import flow_train
from evalsuite.harness.config import DataConfig, GRPOSettings, OptimConfig, RewardsConfig, RewardSpec
from evalsuite.harness.flow_config import FlowLoraSettings, FlowPolicyConfig, FlowTrainConfig
from evalsuite.harness.flow_policy import FlowPolicy

STEPS = 6
G, PROMPTS, NUM_STEPS, TRAIN_BATCH = 4, 2, 4, 8


def _write_medium_flux(folder: Path) -> Path:
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from evalsuite.tiny.flux import build_flux_components

    components = build_flux_components(0, "bench-flux")
    torch.manual_seed(0)
    components["transformer"] = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=4,
        attention_head_dim=32,
        num_attention_heads=8,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        guidance_embeds=True,
        axes_dims_rope=(8, 12, 12),
    )
    FluxPipeline(**components).save_pretrained(folder, safe_serialization=True)
    return folder


def _config(model: Path, out_dir: Path) -> FlowTrainConfig:
    return FlowTrainConfig(
        mode="flow",
        out_dir=str(out_dir),
        steps=STEPS,
        save_every=10_000,
        tensorboard=False,
        progress=False,
        log_images_every=0,
        flow=FlowPolicyConfig(
            model=str(model),
            dtype="float32",
            height=128,
            width=128,
            num_steps=NUM_STEPS,
            max_sequence_length=16,
            sample_batch_size=G * PROMPTS,
            train_batch_size=TRAIN_BATCH,
            lora=FlowLoraSettings(r=16, alpha=16),
        ),
        rewards=RewardsConfig(components=[RewardSpec("brightness")], normalize="none"),
        data=DataConfig(prompts=["a cat", "a dog", "a red car", "a tree"]),
        grpo=GRPOSettings(
            group_size=G, prompts_per_step=PROMPTS, beta=0.0, clip_eps=1e-4, micro_batch_size=8
        ),
        optim=OptimConfig(lr=1e-4),
    )


def _bare_steps(config: FlowTrainConfig, rounds: int) -> list[float]:
    policy = FlowPolicy.from_pretrained(config.flow, seed=0)
    model = policy.transformer
    cond, h, w = policy.encode(["a cat", "a cat", "a cat", "a cat", "a dog", "a dog", "a dog", "a dog"])
    sigmas = policy.sigmas(NUM_STEPS, h, w)
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-4)
    n = G * PROMPTS
    times = []
    for r in range(rounds):
        start = time.perf_counter()
        x = policy.initial_noise(list(range(r * n, (r + 1) * n)), h, w)
        xs = [x]
        with torch.no_grad():
            for j in range(NUM_STEPS):
                v = policy.velocity(model, x, torch.full((n,), float(sigmas[j])), cond)
                x = x + (sigmas[j + 1] - sigmas[j]) * v.float()
                xs.append(x)
        pairs = [(i, j) for i in range(n) for j in range(NUM_STEPS)]
        for s in range(0, len(pairs), TRAIN_BATCH):
            rows = torch.tensor([p[0] for p in pairs[s : s + TRAIN_BATCH]])
            steps = torch.tensor([p[1] for p in pairs[s : s + TRAIN_BATCH]])
            lat = torch.stack([xs[j][i] for i, j in zip(rows.tolist(), steps.tolist())])
            v = policy.velocity(model, lat, sigmas[steps], cond.rows(rows))
            v.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def test_bench_flow_training_step_vs_bare_compute(benchmark, tmp_path_factory) -> None:
    if benchmark.disabled:
        pytest.skip("timing run: pass --benchmark-enable")
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bench_flow")
    model = _write_medium_flux(root / "flux-medium")
    config = _config(model, root / "run")
    result = flow_train.train(config)
    harness = [m["time/step_s"] for m in result.metrics[1:]]  # the first step pays one-time warm-up
    bare = _bare_steps(config, STEPS)[1:]
    ours, baseline = statistics.median(harness), statistics.median(bare)
    ratio = ours / baseline
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    params = sum(
        p.numel() for p in FlowPolicy.from_pretrained(config.flow, lora=False).transformer.parameters()
    )
    benchmark.extra_info.update(
        {
            "transformer_params": params,
            "images_per_step": G * PROMPTS,
            "sampling_steps": NUM_STEPS,
            "trained_pairs": G * PROMPTS * NUM_STEPS,
            "train_batch": TRAIN_BATCH,
            "image_px": 128,
            "harness_step_s": ours,
            "bare_step_s": baseline,
            "ratio": ratio,
            "goal": 1.15,
        }
    )
    print(
        f"\nflow step: harness {ours:.3f} s, bare compute {baseline:.3f} s, ratio {ratio:.3f} (goal <= 1.15)"
    )
    assert math.isfinite(ratio)
