"""GRPO on flow policies: Flow-GRPO (FLUX.1-dev / Kontext LoRA), PromptRL and PromptLoop. Read top to bottom.

    evalsuite train --config harness/recipes/flow_pickscore.yaml [--set grpo.beta=0.01 ...]
    accelerate launch -m evalsuite.harness.flow_train --config ...          # one process per GPU

One step:
  1. the step's prompts (a pure function of the step, so resume needs no loader state); each rank takes a
     contiguous share of whole groups;
  2. what renders each group member:
       flow       the prompt itself;
       promptrl   the rewriter's rewrite (G − num_skip_refinement members) or the prompt itself (the rest);
       promptloop the prompt, replaced mid-trajectory by the refiner's rewrites at ``refine_steps``;
  3. roll out the flow policy: SDE steps (window or first ``num_sde``) record latents and log-probs, the
     others are Euler steps; decode; score each image against the ORIGINAL prompt (and source image);
  4. gather rewards from all ranks, combine, group-relative advantages (evalsuite.harness.grpo);
  5. updates: the flow LoRA on (sample, SDE step) pairs — clipped surrogate on the step log-prob ratio plus
     β·closed-form KL to the adapter-disabled transformer, with the ratio == 1 self-test on the first
     minibatch; the LM (rewriter/refiner) with the token-level GRPO loss, every action of an episode
     carrying the episode's advantage;
  6. log (CSV, TensorBoard, wandb; image grids), checkpoint atomically, optionally evaluate held-out
     prompts with ODE sampling at ``eval_num_steps``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalsuite.errors import ConfigError
from evalsuite.harness import grpo, scaffold
from evalsuite.harness.config import RewardsConfig
from evalsuite.harness.ema import EMA
from evalsuite.harness.flow_checkpoint import load_checkpoint, save_checkpoint, save_models
from evalsuite.harness.flow_config import FlowTrainConfig, load_flow_config, validate_flow_config
from evalsuite.harness.flow_policy import FlowPolicy
from evalsuite.harness.flow_rollout import FlowBatch, evaluate_heldout, rollout
from evalsuite.harness.flow_update import flow_update, lm_update
from evalsuite.harness.metrics import (
    MetricsLog,
    log_image_grid,
    log_param_hashes,
    param_hash,
    reduce_over_ranks,
    reward_component_metrics,
)
from evalsuite.harness.prompts_data import data_folder, load_prompts, load_source, step_prompts
from evalsuite.harness.resume import apply_optim_settings
from evalsuite.harness.rewards import BUILTIN_COMPONENTS, RewardSet
from evalsuite.seeding import derive_seed
from evalsuite.store import atomic_write_json

# ------------------------------------------------------------------------------------------- config


def _check_rewards(config: FlowTrainConfig) -> None:
    builtins = [s.name for s in config.rewards.components if s.name in BUILTIN_COMPONENTS and not s.target]
    if builtins and config.mode != "promptrl":
        raise ConfigError(
            f"reward components {builtins} judge a rewriter's completions; mode {config.mode!r} has none"
        )


def build_lm(config: FlowTrainConfig, device: Any) -> Any:
    """PromptRL's rewriter (rewriter.py) or PromptLoop's multimodal refiner (vl_policy.py)."""
    seed = derive_seed(config.seed, "lm_lora", 0)
    if config.mode == "promptrl":
        from evalsuite.harness.rewriter import build_policy

        return build_policy(config.policy, device=device, seed=seed)
    if config.mode == "promptloop":
        from evalsuite.harness.vl_policy import build_vl_policy

        return build_vl_policy(
            config.policy, device=device, seed=seed, max_pixels=config.promptloop.max_pixels
        )
    return None


def check_world(config: FlowTrainConfig, world: int) -> None:
    """Every rank takes whole groups, and its images split into equal minibatches."""
    g = config.grpo
    if g.prompts_per_step % world:
        raise ConfigError(
            f"grpo.prompts_per_step ({g.prompts_per_step}) must be divisible by {world} processes"
        )
    per_rank = g.prompts_per_step // world
    if (per_rank * g.group_size) % g.minibatches:
        raise ConfigError(
            f"images per rank ({per_rank * g.group_size}) must be divisible by grpo.minibatches"
        )


# ----------------------------------------------------------------------------------------- the run


def train(
    config: FlowTrainConfig, *, rewards: dict[str, Any] | None = None, flow: FlowPolicy | None = None
) -> scaffold.TrainResult:
    """Run (or resume) a flow-policy GRPO run. ``rewards``/``flow`` inject ready-made objects (tests)."""
    # ---- setup
    validate_flow_config(config)
    _check_rewards(config)
    if config.mode == "promptrl":
        scaffold.check_logprobs_source(config)
    run = scaffold.start_run(config, lambda world: check_world(config, world))
    accelerator, out_dir, world, rank, device = run.accelerator, run.out_dir, run.world, run.rank, run.device
    g = config.grpo
    per_rank = g.prompts_per_step // world

    # ---- data, rewards, models
    rows = load_prompts(config.data)
    data_base = data_folder(config.data)
    eval_cfg = config.eval_data or config.data
    eval_rows = load_prompts(eval_cfg) if config.eval_rewards else []
    eval_base = data_folder(eval_cfg)
    reward_set = RewardSet(config.rewards, rewards, device=str(device))
    if not reward_set.needs_image:
        raise ConfigError("a flow run needs at least one image reward")
    eval_set = (
        RewardSet(
            RewardsConfig(components=list(config.eval_rewards), normalize="none"),
            device=str(device),
            where="eval_rewards",
        )
        if config.eval_rewards
        else None
    )
    train_flow = config.mode == "flow" or (config.mode == "promptrl" and not config.promptrl.prompt_only)
    if flow is None:
        flow = FlowPolicy.from_pretrained(
            config.flow, device, lora=train_flow, seed=derive_seed(config.seed, "flow_lora", 0)
        )
    lm = build_lm(config, device)
    optimizers: dict[str, Any] = {}
    schedulers: dict[str, Any] = {}
    flow_model, lm_model, ema = flow.transformer, None, None
    if train_flow:
        opt = scaffold.adamw(flow.trainable_parameters(), config.optim)
        flow_model, opt = accelerator.prepare(flow.transformer, opt)
        optimizers["flow_optimizer"] = opt
        schedulers["flow"] = scaffold.warmup_schedule(opt, config.optim)
        if config.flow.ema:
            ema = EMA(flow.trainable_parameters(), config.flow.ema_decay)
    if lm is not None:
        params = [p for p in lm.model.parameters() if p.requires_grad]
        lm_model, opt = accelerator.prepare(lm.model, scaffold.adamw(params, config.policy_optim))
        optimizers["lm_optimizer"] = opt
        schedulers["lm"] = scaffold.warmup_schedule(opt, config.policy_optim)
    tracker = grpo.stat_tracker(g)

    # ---- resume
    start, ckpt = 0, scaffold.checkpoint_to_resume(run, config)
    if ckpt is not None:
        state = load_checkpoint(
            ckpt, flow=flow, lm_model=lm_model, optimizers=optimizers, ema=ema, accelerator=accelerator
        )
        for key, sched in schedulers.items():
            sched.load_state_dict(state["schedulers"][key])
            o = config.optim if key == "flow" else config.policy_optim
            apply_optim_settings(optimizers[f"{key}_optimizer"], sched, o)
        start = scaffold.resumed_step(ckpt, state, g.prompts_per_step, tracker)
    lm_info = None if lm is None else {"model": config.policy.model, "revision": config.policy.revision}
    logger = scaffold.open_logs(
        run,
        config,
        start,
        lambda: scaffold.manifest(
            f"{config.mode}-grpo",
            config,
            world,
            {"flow": flow.describe(), "lm": lm_info, "rewards": reward_set.describe()},
            ("diffusers", "transformers", "peft", "accelerate"),
        ),
    )

    # ---- the loop
    history: list[dict[str, Any]] = []
    last_ckpt = ckpt
    bar = scaffold.progress_bar(run, config, start, f"{config.mode} GRPO")
    for step in bar:
        t0 = time.perf_counter()
        global_rows = step_prompts(rows, step, g.prompts_per_step, config.seed, config.data.shuffle)
        my_rows = global_rows[rank * per_rank : (rank + 1) * per_rank]
        sources = [load_source(r, data_base) for r in my_rows] if flow.is_edit else None
        batch = rollout(
            config, my_rows, flow=flow, lm=lm, reward_set=reward_set, step=step, rank=rank, sources=sources
        )

        # 4. rewards of all ranks → one advantage per image (identical on every rank)
        adv = grpo.gather_advantages(
            batch.raw,
            global_rows,
            combine=reward_set.combine,
            settings=g,
            tracker=tracker,
            accelerator=accelerator,
        )

        # 5. updates
        stats: dict[str, float] = {}
        if train_flow:
            stats.update(
                flow_update(
                    batch,
                    adv.advantages,
                    flow=flow,
                    model=flow_model,
                    optimizer=optimizers["flow_optimizer"],
                    accelerator=accelerator,
                    config=config,
                    step=step,
                )
            )
            if ema is not None:
                ema.update()
        if lm is not None:
            stats.update(
                lm_update(
                    batch,
                    adv.advantages,
                    lm=lm,
                    model=lm_model,
                    optimizer=optimizers["lm_optimizer"],
                    accelerator=accelerator,
                    config=config,
                    step=step,
                )
            )
        lrs = {f"lr/{k}": s.get_last_lr()[0] for k, s in schedulers.items()}
        for s in schedulers.values():
            s.step()
        if config.log_param_hash:
            hashes = {"flow": param_hash(flow.transformer) if train_flow else None}
            if lm is not None:
                hashes["lm"] = param_hash(accelerator.unwrap_model(lm_model))
            log_param_hashes(out_dir, rank, step + 1, hashes)

        # 6. metrics, images, evaluation, checkpoint
        metrics = step_metrics(step + 1, stats, lrs, adv, batch, accelerator)
        if eval_set is not None:  # every row has the eval columns (the CSV header is fixed by row 1)
            metrics.update({f"eval/{k}": math.nan for k in eval_set.weights})
        evaluating = config.eval_every and (step + 1) % config.eval_every == 0 and eval_set is not None
        if evaluating and accelerator.is_main_process:  # deterministic: one rank's renders are everyone's
            metrics.update(evaluate_heldout(config, eval_rows, flow, eval_set, ema, eval_base))
        metrics["time/step_s"] = time.perf_counter() - t0
        history.append(metrics)
        if logger is not None:
            logger.log(metrics)
            if config.log_images_every and (step + 1) % config.log_images_every == 0:
                log_images(out_dir, step + 1, batch, adv.total[adv.mine], config.logged_images, logger)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}")
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
            schedules = {k: s.state_dict() for k, s in schedulers.items()}
            last_ckpt = save_checkpoint(
                out_dir,
                step + 1,
                flow=flow,
                lm=lm,
                lm_model=lm_model,
                optimizers=optimizers,
                ema=ema,
                accelerator=accelerator,
                state=scaffold.trainer_state(config, step + 1, world, tracker, schedulers=schedules),
                keep=config.keep_checkpoints,
            )

    # ---- the trained weights, ready for evalsuite run --lora / load_rewriter
    def write_final(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_models(tmp, flow=flow, lm=lm, lm_model=lm_model, accelerator=accelerator, ema=ema)
        info = {
            "base_model": config.flow.model,
            "revision": config.flow.revision,
            "mode": config.mode,
            "steps": max(config.steps, start),
            "ema": ema is not None,
        }
        atomic_write_json(tmp / "model_info.json", info)

    final_dir = scaffold.export_final(run, write_final, logger)
    return scaffold.TrainResult(out_dir, config.steps, final_dir, last_ckpt, history)


# -------------------------------------------------------------------------------------------- logging


def step_metrics(
    step: int,
    stats: dict[str, float],
    lrs: dict[str, float],
    adv: grpo.StepAdvantages,
    batch: FlowBatch,
    accelerator: Any,
) -> dict[str, Any]:
    """Per-step numbers over all ranks: update stats averaged (extremes over ranks), reward stats."""
    s = reduce_over_ranks(stats, accelerator, extremes=("ratio_min", "ratio_max", "max_abs_logp_diff"))
    metrics: dict[str, Any] = {
        "step": step,
        **lrs,
        **s,
        **adv.metrics(),
        "refined_fraction": float(np.mean(batch.refined)),
        "sde_steps": len(batch.traj.sde_steps),
    }
    if batch.actions.parsed:
        metrics["lm/well_formed"] = float(np.mean([p.well_formed for p in batch.actions.parsed]))
    return {**metrics, **reward_component_metrics(adv.raw)}


def log_images(
    out_dir: Path, step: int, batch: FlowBatch, total: torch.Tensor, limit: int, logger: MetricsLog
) -> None:
    """A grid of this rank's first ``limit`` images (a row per group) and a record per image."""
    images = batch.traj.images[:limit]
    per_row = max(1, min(len(images), len(batch.traj) // max(len(batch.rows), 1)))
    records = [
        {
            "step": step,
            "id": s.id,
            "prompt": s.prompt,
            "rendered": batch.rendered[i],
            "refined": batch.refined[i],
            "reward": float(total[i]),
            "rewards": {k: float(v[i]) for k, v in batch.raw.items()},
            **batch.details[i],
        }
        for i, s in enumerate(batch.samples[:limit])
    ]
    log_image_grid(out_dir, step, images, per_row, records, logger)


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    return scaffold.run_cli(
        argv,
        prog="evalsuite.harness.flow_train",
        description="Flow-GRPO / PromptRL / PromptLoop",
        train=lambda recipe, overrides: train(load_flow_config(recipe, overrides)),
        saved="weights",
    )


if __name__ == "__main__":
    sys.exit(main())
