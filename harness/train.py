"""GRPO training of a RePrompt-style prompt rewriter. One file, read top to bottom.

    python -m evalsuite.harness.train --config harness/recipes/geneval.yaml [--set grpo.beta=0.01 ...]
    accelerate launch -m evalsuite.harness.train --config ... # DDP, DeepSpeed ZeRO-1/2 (FSDP/ZeRO-3 refused)

One step:
  1. take the step's prompts (a pure function of the step: resume needs no data-loader state); each rank
     takes a contiguous share, so every group of G completions lives on one rank;
  2. sample G completions per prompt from the LoRA policy, keeping each token's log-prob from the logits
     it was drawn from (grpo.logprobs_from: or record them with the exact forward the loss will use),
     and the reference's (the same model with the adapter off) when beta != 0;
  3. parse them (malformed → the original prompt), render the rendered prompts with the frozen generator
     (one batched call for all the rank's groups), score each image against the ORIGINAL prompt and its
     metadata, add the format and length rewards;
  4. gather the components from all ranks, normalize and combine them (evalsuite.harness.rewards), compute
     group-relative advantages (evalsuite.harness.grpo);
  5. for each inner epoch and minibatch: recompute log-probs (first minibatch: the on-policy self-test
     against the recorded ones, ratio == 1), clipped surrogate + k3 KL, accumulate over micro-batches,
     clip, step;
  6. log (CSV, TensorBoard, wandb, sample completions as JSONL), checkpoint every N steps atomically.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from evalsuite.errors import ConfigError
from evalsuite.harness import grpo, scaffold
from evalsuite.harness.checkpoint import TRAINER_STATE, load_state, restore_rng, write_checkpoint
from evalsuite.harness.config import TrainConfig, load_config
from evalsuite.harness.full_finetune import load_full_lm_weights
from evalsuite.harness.metrics import log_param_hashes, param_hash
from evalsuite.harness.model_source import loading
from evalsuite.harness.prompts_data import load_prompts, step_prompts
from evalsuite.harness.resume import apply_optim_settings
from evalsuite.harness.rewards import RewardSet
from evalsuite.harness.rewriter import RewriterPolicy, build_policy, save_rewriter
from evalsuite.harness.rewriter_step import policy_update, rollout, sample_records, step_metrics
from evalsuite.harness.sft import sft_warm_start
from evalsuite.harness.sharding import full_model_state, full_trainable, load_sharded, save_sharded
from evalsuite.seeding import derive_seed
from evalsuite.store import atomic_write_json

# ------------------------------------------------------------------------------------------- config


def validate(config: TrainConfig, world: int) -> None:
    """Refuse settings the loop cannot honour (groups split over ranks, uneven minibatches) up front."""
    g = config.grpo
    if g.group_size < 2:
        raise ConfigError(
            f"grpo.group_size must be >= 2 (advantages are relative to the group), got {g.group_size}"
        )
    if g.prompts_per_step % world:
        raise ConfigError(
            f"grpo.prompts_per_step ({g.prompts_per_step}) must be divisible by the number of "
            f"processes ({world}) so that every group stays on one rank"
        )
    n = g.prompts_per_step // world * g.group_size
    if n % g.minibatches:
        raise ConfigError(
            f"completions per rank ({n}) must be divisible by grpo.minibatches ({g.minibatches})"
        )
    mb = n // g.minibatches
    if mb % min(g.micro_batch_size, mb):
        raise ConfigError(
            f"minibatch size {mb} must be divisible by grpo.micro_batch_size ({g.micro_batch_size})"
        )
    if g.aggregation not in grpo.AGGREGATIONS:
        raise ConfigError(f"grpo.aggregation {g.aggregation!r} is not one of {grpo.AGGREGATIONS}")
    scaffold.check_logprobs_source(config)
    if g.advantage_mode not in grpo.ADVANTAGE_MODES:
        raise ConfigError(f"grpo.advantage_mode {g.advantage_mode!r} is not one of {grpo.ADVANTAGE_MODES}")
    if config.steps < 0 or config.save_every < 1:
        raise ConfigError("steps must be >= 0 and save_every >= 1")


def build_generator(config: TrainConfig, reward_set: RewardSet, generator: Any, device: Any) -> Any:
    """The frozen text-to-image generator when a reward looks at images (``generator`` if given), else None:
    nothing looks at images, so no time is spent rendering them."""
    if not reward_set.needs_image:
        return None
    if generator is not None:
        return generator
    if not config.generator.model:
        raise ConfigError("a reward needs images but generator.model is null")
    from evalsuite.generator import DiffusersGenerator

    gc = config.generator
    with loading("generator.model", gc.model):
        return DiffusersGenerator.from_pretrained(
            gc.model,
            device=gc.device or device,
            dtype=gc.dtype,
            revision=gc.revision,
            num_inference_steps=gc.num_inference_steps,
            guidance_scale=gc.guidance_scale,
            height=gc.height,
            width=gc.width,
            batch_size=gc.batch_size,
            call_kwargs=gc.call_kwargs,
        )


# ----------------------------------------------------------------------------------------- the run


def train(
    config: TrainConfig, *, generator: Any = None, rewards: dict[str, Any] | None = None
) -> scaffold.TrainResult:
    """Run (or resume) a rewriter GRPO run. ``generator``/``rewards`` inject ready-made objects (tests,
    notebooks) instead of building them from the config."""
    # ---- setup: processes, threads, checks, output folder, seeds
    run = scaffold.start_run(config, lambda world: validate(config, world))
    accelerator, out_dir, world, rank, device = run.accelerator, run.out_dir, run.world, run.rank, run.device

    # ---- data, rewards, generator
    rows = load_prompts(config.data)
    reward_set = RewardSet(config.rewards, rewards, device=str(device))
    generator = build_generator(config, reward_set, generator, device)

    # ---- policy: optional SFT warm start (merged), LoRA, optimizer, schedule
    sft_adapter = sft_warm_start(config, accelerator, out_dir)
    policy = build_policy(
        config.policy,
        device=device,
        seed=derive_seed(config.seed, "lora", 0),
        sft_adapter=None if sft_adapter is None else str(sft_adapter),
        reference=config.grpo.beta != 0.0,
    )
    model, optimizer = scaffold.prepare_trained(run, policy.model, config.optim, frozen=policy.reference)
    scheduler = scaffold.warmup_schedule(optimizer, config.optim)
    tracker = grpo.stat_tracker(config.grpo)  # Flow-GRPO's per-prompt statistics, cleared every step

    # ---- resume
    start, ckpt = 0, scaffold.checkpoint_to_resume(run, config)
    if ckpt is not None:
        state = load_checkpoint(
            ckpt,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            accelerator=accelerator,
            sharded=run.sharded,
        )
        apply_optim_settings(optimizer, scheduler, config.optim)
        start = scaffold.resumed_step(ckpt, state, config.grpo.prompts_per_step, tracker)
    logger = scaffold.open_logs(
        run,
        config,
        start,
        lambda: scaffold.manifest(
            "rewriter-grpo",
            config,
            world,
            {
                "rewards": reward_set.describe(),
                "generator": generator.describe() if generator is not None else None,
            },
            ("transformers", "peft", "accelerate"),
        ),
    )

    # ---- the loop
    per_rank = config.grpo.prompts_per_step // world
    micro = min(config.grpo.micro_batch_size, per_rank * config.grpo.group_size // config.grpo.minibatches)
    history: list[dict[str, Any]] = []
    last_ckpt = ckpt
    bar = scaffold.progress_bar(run, config, start, "rewriter GRPO")
    for step in bar:
        t0 = time.perf_counter()
        # 1-3. prompts for this rank, sample, parse, render, score
        global_rows = step_prompts(rows, step, config.grpo.prompts_per_step, config.seed, config.data.shuffle)
        my_rows = global_rows[rank * per_rank : (rank + 1) * per_rank]
        batch = rollout(
            policy,
            my_rows,
            config=config,
            reward_set=reward_set,
            generator=generator,
            step=step,
            rank=rank,
            micro_batch_size=micro,
            world=world,
        )

        # 4. all ranks' components → normalized total → advantages (identical on every rank)
        adv = grpo.gather_advantages(
            batch.raw,
            global_rows,
            combine=reward_set.combine,
            settings=config.grpo,
            tracker=tracker,
            accelerator=accelerator,
        )

        # 5. the policy update (with the on-policy self-test on the first minibatch)
        stats = policy_update(
            batch,
            adv.advantages,
            model=model,
            policy=policy,
            optimizer=optimizer,
            accelerator=accelerator,
            config=config,
            step=step,
        )
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        if config.log_param_hash:
            log_param_hashes(out_dir, rank, step + 1, {"sha256": param_hash(accelerator.unwrap_model(model))})

        # 6. metrics (global), samples, checkpoint
        metrics = step_metrics(step + 1, lr, stats, adv, batch, accelerator)
        metrics["time/step_s"] = time.perf_counter() - t0
        history.append(metrics)
        if logger is not None:
            logger.log(metrics)
            if config.log_samples_every and (step + 1) % config.log_samples_every == 0:
                records = sample_records(
                    step + 1, batch, adv.total[adv.mine], adv.advantages, config.logged_samples
                )
                logger.samples.append(records)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl']:.3g}")
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
            last_ckpt = save_checkpoint(
                run,
                step + 1,
                policy=policy,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                state=scaffold.trainer_state(config, step + 1, world, tracker),
                sft_adapter=sft_adapter,
                keep=config.keep_checkpoints,
            )

    # ---- the trained rewriter, ready for load_rewriter
    whole = None  # sharded: every rank takes part in gathering the whole weights (rank 0 keeps a full LM)
    if run.sharded:
        whole = full_model_state(model) if config.policy.full_finetune else full_trainable(model)

    def write_final(tmp: Path) -> None:
        unwrapped = accelerator.unwrap_model(model)
        save_rewriter(
            tmp, policy, unwrapped, step=max(config.steps, start), sft_adapter=sft_adapter, state_dict=whole
        )

    final_dir = scaffold.export_final(run, write_final, logger)
    return scaffold.TrainResult(out_dir, config.steps, final_dir, last_ckpt, history)


# ---------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    run: scaffold.Run,
    step: int,
    *,
    policy: RewriterPolicy,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    sft_adapter: Path | None,
    keep: int | None,
) -> Path:
    """Adapter (+ the SFT adapter it sits on), optimizer, scheduler and trainer state, atomically
    (evalsuite.harness.checkpoint: a kill at any moment leaves the previous checkpoint as ``latest``).
    Under FSDP2 every rank writes its shards of the adapter and optimizer instead (sharding.py)."""
    accelerator = run.accelerator

    def write(tmp: Path) -> None:
        if not run.sharded:
            save_rewriter(tmp, policy, accelerator.unwrap_model(model), step=step, sft_adapter=sft_adapter)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        atomic_write_json(tmp / TRAINER_STATE, {**state, "step": step})

    def write_shards(tmp: Path) -> None:
        save_sharded(tmp, {"lm": (model, {"optimizer": optimizer})})

    return write_checkpoint(
        run.out_dir, step, accelerator, write, keep, write_shards if run.sharded else None
    )


def load_checkpoint(
    path: Path, *, model: Any, optimizer: Any, scheduler: Any, accelerator: Any, sharded: bool = False
) -> dict[str, Any]:
    """Restore adapter weights, optimizer, scheduler and this rank's RNG; return the trainer state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if sharded:
        load_sharded(path, {"lm": (model, {"optimizer": optimizer})})
    elif (path / "model").is_dir():  # a full fine-tune's weights
        load_full_lm_weights(accelerator.unwrap_model(model), path / "model")
        optimizer.load_state_dict(load_state(path / "optimizer.pt"))
    else:
        weights = load_file(str(path / "adapter" / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(accelerator.unwrap_model(model), weights)
        if getattr(result, "unexpected_keys", None):
            raise ConfigError(
                f"{path}: adapter does not match the configured LoRA ({result.unexpected_keys[:3]}…)"
            )
        optimizer.load_state_dict(load_state(path / "optimizer.pt"))
    scheduler.load_state_dict(load_state(path / "scheduler.pt"))
    restore_rng(path, accelerator.process_index)
    return json.loads((path / TRAINER_STATE).read_text())


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    return scaffold.run_cli(
        argv,
        prog="evalsuite.harness.train",
        description="GRPO training of a prompt rewriter",
        train=lambda recipe, overrides: train(load_config(recipe, overrides)),
        saved="rewriter",
    )


if __name__ == "__main__":
    sys.exit(main())
