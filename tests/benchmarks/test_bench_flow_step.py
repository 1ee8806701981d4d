"""Flow-GRPO training step vs its bare compute, for every flow family (goal <= 1.10x).

The harness side is a whole ``evalsuite.harness.flow_train`` step: prompt (and source) encoding, SDE sampling
with recorded log-probs, VAE decode, the reward, advantages, the clipped-surrogate update over every
(image, SDE step) pair, logging.
The bare side is the transformer work that step cannot avoid, written without the harness: the same number of
forwards for sampling (no grad, Euler) and forward+backward for training on the same batches, plus the
optimizer step, on the same LoRA transformer and conditioning (CFG families: both branches, as the family's
velocity runs them). beta = 0 on both sides (a KL adds one reference forward per trained pair to both alike).
Each family's tiny checkpoint gets a widened transformer (256 wide, 6 blocks, 128 px -> 64 image tokens) so
that it, not Python, dominates, as the real transformers do on a GPU; ratios, not absolute CPU times, are the
point. Times are this process's CPU time (one torch thread), not wall time, so that other jobs on a shared
host do not move the ratio. Qwen-Image-Edit takes its source at 128x128 (``flow.source_area``) instead of
the pipeline's 1 MP.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from evalsuite.harness import flow_train
from evalsuite.harness.config import GRPOSettings, OptimConfig, RewardsConfig, RewardSpec
from evalsuite.harness.flow_config import FlowLoraSettings, FlowPolicyConfig, FlowTrainConfig
from evalsuite.harness.flow_policy import FlowPolicy

from ..flow_family_tester import prompt_data

STEPS = 6
G, PROMPTS, NUM_STEPS, TRAIN_BATCH, SIDE = 4, 2, 4, 8, 128
GOAL = 1.10
TRAIN_PROMPTS = ["a cat", "a dog", "a red car", "a tree"]

# Per family: the transformer widened from its tiny config (256 wide, 6 blocks; the text widths stay the tiny
# encoders'), and the policy settings its pipeline runs with (CFG families at their recipes' scales).
MEDIUM: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "flux": (
        dict(num_layers=2, num_single_layers=4, attention_head_dim=32, num_attention_heads=8,
             axes_dims_rope=(8, 12, 12)),
        dict(guidance_scale=3.5),
    ),
    "sd3": (
        dict(num_layers=6, attention_head_dim=32, num_attention_heads=8, caption_projection_dim=256,
             sample_size=SIDE // 8),
        dict(guidance_scale=4.5, negative_prompt="blurry"),
    ),
    "zimage": (
        dict(dim=256, n_layers=4, n_refiner_layers=1, n_heads=8, n_kv_heads=8, axes_dims=[8, 12, 12]),
        dict(guidance_scale=4.0, negative_prompt="blurry"),
    ),
    "qwenimage": (
        dict(num_layers=6, attention_head_dim=32, num_attention_heads=8, axes_dims_rope=(8, 12, 12)),
        dict(guidance_scale=4.0, negative_prompt=" "),
    ),
    "qwenimage-edit": (
        dict(num_layers=6, attention_head_dim=32, num_attention_heads=8, axes_dims_rope=(8, 12, 12)),
        dict(guidance_scale=4.0, negative_prompt=" ", source_area=SIDE * SIDE),
    ),
}


def _sources(n: int) -> list:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)) for _ in range(n)]


def write_medium(family: str, root: Path) -> Path:
    """The family's tiny checkpoint with its transformer rebuilt wider (random weights, seed 0)."""
    from diffusers import DiffusionPipeline

    from evalsuite.tiny import write_tiny

    folder = write_tiny(root / "tiny", [family])[family]
    pipe = DiffusionPipeline.from_pretrained(folder)
    widened = {**pipe.transformer.config, **MEDIUM[family][0]}
    torch.manual_seed(0)
    pipe.register_modules(transformer=type(pipe.transformer).from_config(widened))
    pipe.save_pretrained(root / f"{family}-medium", safe_serialization=True)
    return root / f"{family}-medium"


def _config(family: str, model: Path, out_dir: Path) -> FlowTrainConfig:
    edit = family.endswith("-edit")
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
            height=SIDE,
            width=SIDE,
            num_steps=NUM_STEPS,
            max_sequence_length=16,
            sample_batch_size=G * PROMPTS,
            train_batch_size=TRAIN_BATCH,
            lora=FlowLoraSettings(r=16, alpha=16),
            **MEDIUM[family][1],
        ),
        rewards=RewardsConfig(components=[RewardSpec("brightness")], normalize="none"),
        data=prompt_data(TRAIN_PROMPTS, out_dir.parent / "data", _sources if edit else None),
        grpo=GRPOSettings(
            group_size=G, prompts_per_step=PROMPTS, beta=0.0, clip_eps=1e-4, micro_batch_size=8
        ),
        optim=OptimConfig(lr=1e-4),
    )


def _bare_steps(config: FlowTrainConfig, rounds: int) -> list[float]:
    policy = FlowPolicy.from_pretrained(config.flow, seed=0)
    model = policy.transformer
    prompts = [p for p in TRAIN_PROMPTS[:PROMPTS] for _ in range(G)]
    cond, h, w = policy.encode(prompts, _sources(len(prompts)) if policy.is_edit else None)
    sigmas = policy.sigmas(NUM_STEPS, h, w)
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-4)
    n = G * PROMPTS
    times = []
    for r in range(rounds):
        start = time.process_time()
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
        times.append(time.process_time() - start)
    return times


def _train_step_cpu_times(config: FlowTrainConfig, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``flow_train.train(config)``, returning each step's CPU time: the trainer's step loop iterates its
    progress bar, so marks taken as it hands out each step (and when it runs out) bound every step."""
    from evalsuite.harness import scaffold

    marks: list[float] = []
    progress_bar = scaffold.progress_bar

    class Timed:
        """The trainer's bar (``set_postfix`` and the rest), marking the CPU clock at every step."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.bar = progress_bar(*args, **kwargs)

        def __iter__(self):
            for step in self.bar:
                marks.append(time.process_time())
                yield step
            marks.append(time.process_time())

        def __getattr__(self, name: str) -> Any:
            return getattr(self.bar, name)

    monkeypatch.setattr(scaffold, "progress_bar", Timed)
    flow_train.train(config)
    return [b - a for a, b in itertools.pairwise(marks)]


@pytest.mark.parametrize("family", list(MEDIUM))
def test_bench_flow_training_step_vs_bare_compute(family, benchmark, tmp_path_factory, monkeypatch) -> None:
    if benchmark.disabled:
        pytest.skip("timing run: pass --benchmark-enable")
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp(f"bench_flow_{family}")
    config = _config(family, write_medium(family, root), root / "run")
    harness = _train_step_cpu_times(config, monkeypatch)[1:]  # the first step pays one-time warm-up
    assert len(harness) == STEPS - 1
    bare = _bare_steps(config, STEPS)[1:]
    ours, baseline = statistics.median(harness), statistics.median(bare)
    ratio = ours / baseline
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    params = sum(
        p.numel() for p in FlowPolicy.from_pretrained(config.flow, lora=False).transformer.parameters()
    )
    benchmark.extra_info.update(
        {
            "family": family,
            "transformer_params": params,
            "images_per_step": G * PROMPTS,
            "sampling_steps": NUM_STEPS,
            "trained_pairs": G * PROMPTS * NUM_STEPS,
            "train_batch": TRAIN_BATCH,
            "image_px": SIDE,
            "harness_step_s": ours,
            "bare_step_s": baseline,
            "ratio": ratio,
            "goal": GOAL,
        }
    )
    print(
        f"\n{family} flow step: harness {ours:.3f} s, bare compute {baseline:.3f} s, ratio {ratio:.3f} "
        f"(goal <= {GOAL}), transformer {params / 1e6:.1f}M"
    )
    assert math.isfinite(ratio)
