"""Configuration of a flow-policy run (Flow-GRPO, PromptRL, PromptLoop): dataclasses loaded from strict YAML.

One ``FlowTrainConfig`` per run; ``mode`` picks what is trained:
- "flow": Flow-GRPO on a flow model's LoRA (FLUX.1-dev, FLUX.1-Kontext, SD3.5, …), prompts as given;
- "promptrl": the prompt rewriter (rewriter.py) and the flow LoRA together from one reward and one
  group-relative advantage; ``promptrl.prompt_only`` freezes the flow model;
- "promptloop": a frozen flow model whose conditioning a multimodal LM refines at chosen denoising steps.
Sections reuse the rewriter's dataclasses (rewards, data, GRPO settings, optimizer, LM policy).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalsuite.errors import ConfigError
from evalsuite.harness.config import (
    DataConfig,
    GRPOSettings,
    OptimConfig,
    PolicyConfig,
    RewardsConfig,
    RewardSpec,
    from_dict,
    read_recipe,
)
from evalsuite.harness.sde import SDE_TYPES

MODES = ("flow", "promptrl", "promptloop")

@dataclass
class FlowLoraSettings:
    """PEFT LoRA on the transformer (B starts at 0, so the adapter-disabled reference equals the start).
    ``target_modules`` null: the model family's Flow-GRPO targets (flow_families)."""

    r: int = 32
    alpha: int = 64
    target_modules: list[str] | None = None


@dataclass
class FlowPolicyConfig:
    """The flow model and its sampler.

    ``model`` is a hub id or folder of any registered flow family (FLUX.1-dev, FLUX.1-Kontext, SD3.5, …).
    ``guidance_scale``: the guidance embedding for guidance-distilled models (FLUX.1-dev 3.5, Kontext 2.5);
    for a model without one it is the classifier-free guidance scale (with ``negative_prompt``), applied
    identically when sampling and when recomputing log-probs. ``num_steps`` is the training sampler
    (Flow-GRPO: 10); ``eval_num_steps`` renders held-out evaluations and the final samples (40).
    SDE steps are the window ``[start, start + sde_window_size)`` with start drawn per step from
    ``sde_window_range`` (Flow-GRPO "Fast"; null = every step); only SDE steps carry log-probs and train.
    ``timestep_fraction``: share of each sample's SDE steps used in the loss (drawn per sample).
    ``height``/``width`` null for an editing model: the source image's size, only ever scaled down to
    ``max_area``.
    """

    model: str = "black-forest-labs/FLUX.1-dev"
    revision: str | None = None
    family: str | None = None  # a registered flow family; null: the one driving model_index.json's class
    dtype: str = "bfloat16"
    height: int | None = 512
    width: int | None = 512
    max_area: int = 1024 * 1024
    source_area: int | None = None  # Qwen-Image-Edit: the source's resize area; null: 1024² (pipeline)
    num_steps: int = 10
    eval_num_steps: int = 28
    guidance_scale: float = 3.5
    negative_prompt: str = ""
    cfg_normalization: float = 0.0  # Z-Image: cap ‖guided v‖ at this × ‖positive v‖ (0: off; True = 1)
    cfg_truncation: float = 1.0  # Z-Image: no CFG on steps whose t = 1 − σ exceeds this (>= 1: never)
    max_sequence_length: int = 512
    noise_level: float = 0.7
    sde_type: str = "sde"  # "sde", "cps" (Flow-GRPO's cps objective) or "cps_gaussian" (its exact density)
    sde_window_size: int | None = None
    sde_window_range: list[int] | None = None
    timestep_fraction: float = 1.0
    same_noise_in_group: bool = False
    sample_batch_size: int = 8
    train_batch_size: int = 8  # (sample, step) pairs per forward+backward
    lora: FlowLoraSettings = field(default_factory=FlowLoraSettings)
    full_finetune: bool = False  # train every transformer weight (no LoRA); KL reference: a frozen copy
    gradient_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.9


@dataclass
class PromptRLSettings:
    """PromptRL: ``num_skip_refinement`` members of each group render the original prompt, so the one
    advantage contrasts refined with unrefined prompts; ``num_sde`` steps (from the start) carry SDE
    log-probs; ``prompt_only`` freezes the flow model (ODE rollouts, only the LM trains)."""

    num_skip_refinement: int = 1
    num_sde: int | None = 6
    prompt_only: bool = False


@dataclass
class PromptLoopSettings:
    """PromptLoop: at each step in ``refine_steps`` the LM policy sees the decoded x̂0 preview and the
    original prompt and writes the prompt that conditions the following steps. ``preview_size``: side of
    the preview shown to the policy (downscaled from the decoded image)."""

    refine_steps: list[int] = field(default_factory=lambda: [2])
    preview_size: int = 224
    max_pixels: int = 256 * 28 * 28


@dataclass
class FlowTrainConfig:
    """A whole flow run. ``policy``/``policy_optim`` describe the LM (PromptRL's rewriter, PromptLoop's
    refiner) and are unused in mode "flow"."""

    mode: str = "flow"
    out_dir: str = "runs/flow"
    steps: int = 100
    seed: int = 0
    save_every: int = 50
    keep_checkpoints: int | None = 3
    resume: bool = True
    resume_override: bool = False  # resume even with changed settings, recorded in the manifest's history
    eval_every: int = 0  # 0 = never: ODE renders at eval_num_steps of eval_data, scored with eval_rewards
    eval_prompts: int = 8  # the first N rows of eval_data (null eval_data: of the training prompts)
    log_images_every: int = 10
    logged_images: int = 8
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "evalsuite-flow"
    torch_threads: int | None = None
    progress: bool = True
    log_param_hash: bool = False
    flow: FlowPolicyConfig = field(default_factory=FlowPolicyConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rewards: RewardsConfig = field(
        default_factory=lambda: RewardsConfig(components=[RewardSpec("pickscore")])
    )
    eval_rewards: list[RewardSpec] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    eval_data: DataConfig | None = None  # held-out prompts, e.g. flowgrpo/geneval/test_metadata.jsonl
    grpo: GRPOSettings = field(
        default_factory=lambda: GRPOSettings(group_size=8, prompts_per_step=4, beta=0.04, clip_eps=1e-4)
    )
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4))
    policy_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-6))
    lm_clip_eps: float = 0.2  # the LM's PPO clip (grpo.clip_eps is the flow policy's, Flow-GRPO: 1e-4)
    promptrl: PromptRLSettings = field(default_factory=PromptRLSettings)
    promptloop: PromptLoopSettings = field(default_factory=PromptLoopSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def is_flow_config(data: dict[str, Any]) -> bool:
    """A YAML recipe is a flow run when it names a mode or has a ``flow`` section."""
    return isinstance(data, dict) and ("mode" in data or "flow" in data)


def load_flow_config(path: str | Path, overrides: list[str] | None = None) -> FlowTrainConfig:
    config = from_dict(FlowTrainConfig, read_recipe(path, overrides), str(path))
    validate_flow_config(config)
    return config


def validate_flow_config(config: FlowTrainConfig) -> None:
    """Errors a run would otherwise hit minutes in (or never notice)."""
    f = config.flow
    if config.mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {config.mode!r}")
    if f.sde_type not in SDE_TYPES:
        raise ConfigError(f"flow.sde_type must be one of {SDE_TYPES}, got {f.sde_type!r}")
    if f.source_area is not None and f.source_area < 32 * 32:
        raise ConfigError(f"flow.source_area must be null (the pipeline's) or >= 32*32, got {f.source_area}")
    if f.num_steps < 1 or f.eval_num_steps < 1:
        raise ConfigError("flow.num_steps and flow.eval_num_steps must be >= 1")
    if not 0.0 < f.timestep_fraction <= 1.0:
        raise ConfigError(f"flow.timestep_fraction must be in (0, 1], got {f.timestep_fraction}")
    if f.sde_window_size is not None and not 1 <= f.sde_window_size <= f.num_steps:
        raise ConfigError(f"flow.sde_window_size must be in [1, num_steps={f.num_steps}]")
    if f.sde_window_range is not None:
        lo, hi = ([*list(f.sde_window_range), None, None])[:2]
        if lo is None or hi is None or not 0 <= lo <= hi or hi + (f.sde_window_size or 1) > f.num_steps:
            raise ConfigError(
                f"flow.sde_window_range {f.sde_window_range} must be [lo, hi] with the window "
                f"[hi, hi + sde_window_size) inside the {f.num_steps} steps"
            )
    if (f.height is None) != (f.width is None):
        raise ConfigError("flow.height and flow.width must both be set or both be null")
    p = config.promptrl
    if config.mode == "promptrl" and not 0 <= p.num_skip_refinement < config.grpo.group_size:
        raise ConfigError(
            f"promptrl.num_skip_refinement ({p.num_skip_refinement}) must be in [0, group_size) so that "
            "every group has refined members"
        )
    if config.mode == "promptloop":
        bad = [s for s in config.promptloop.refine_steps if not 0 <= s < f.num_steps - 1]
        if bad or not config.promptloop.refine_steps:
            raise ConfigError(
                f"promptloop.refine_steps {config.promptloop.refine_steps} must be non-empty steps in "
                f"[0, num_steps - 1) (a refined prompt must condition at least one later step)"
            )
    if config.grpo.group_size < 2:
        raise ConfigError("grpo.group_size must be >= 2 (advantages are relative to the group)")
